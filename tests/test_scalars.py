"""Numbers in a graph run in PyTorch beside the engines (scalars.py): a Python int dynamo made
dynamic (no tensor's size) and what depends on it, and the numbers a graph returns."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn as nn

import trt_multidev_backend as tm
from _delegates import TensorsOnly


class State:
    """A cache's Python int that grows every call (Hugging Face's sliding-window layer keeps
    `cumulative_length`): dynamo passes it as a number once it has changed."""

    def __init__(self) -> None:
        self.length = 0


class Window(nn.Module):
    def forward(self, x, state):
        state.length += 1
        k = state.length
        mask = torch.arange(k, device=x.device) < k - 1  # a tensor whose shape is the number
        return torch.tanh(x).sum(-1) * mask.float().sum() * 2, k + 1


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("trt_multidev") and r.levelno >= logging.WARNING]


def test_a_number_no_tensor_gives_and_what_depends_on_it_run_in_pytorch(caplog):
    delegate, model = TensorsOnly(), Window()
    compiled = torch.compile(model, backend="trt_multidev", options={"delegate": delegate, "min_block_size": 1})
    ours, theirs = State(), State()
    for _ in range(5):
        x = torch.randn(2, 4)
        (out, k), (ref, k_ref) = compiled(x, ours), model(x, theirs)
        assert type(k) is int and k == k_ref and torch.allclose(out, ref)
    counts = tm.stats()["cpu"]
    assert counts["compiles"] == 2 and counts["fallbacks"] == 0 and _warnings(caplog) == []
    # the graph for the changing number: its engine part is handed tensors only
    assert len(delegate.graphs) == 2 and all(issubclass(t, torch.Tensor) for t in delegate.inputs[1])
    assert "arange" not in delegate.graphs[1].code and "tanh" in delegate.graphs[1].code


def test_numbers_a_graph_returns_stay_numbers():
    delegate = TensorsOnly()

    def sizes(x):
        return torch.relu(x) * 2, x.shape[0] * 3

    compiled = torch.compile(sizes, backend="trt_multidev", options={"delegate": delegate, "min_block_size": 1})
    for n in (3, 4, 7):
        x = torch.randn(n, 5)
        out, size = compiled(x)
        assert type(size) is int and size == 3 * n and torch.equal(out, torch.relu(x) * 2)
    assert tm.stats()["cpu"]["fallbacks"] == 0


def test_a_graph_whose_every_op_reads_the_number_runs_in_pytorch_without_the_delegate(caplog):
    delegate = TensorsOnly()

    def positions(x, state):
        state.length += 1
        return torch.arange(state.length, device=x.device)

    compiled = torch.compile(positions, backend="trt_multidev", options={"delegate": delegate, "min_block_size": 1})
    ours = State()
    for k in range(1, 5):
        assert torch.equal(compiled(torch.randn(2, 3), ours), torch.arange(k))
    assert len(delegate.graphs) == 1  # the first call's graph (the number still a constant) only
    assert tm.stats()["cpu"]["fallbacks"] == 0 and _warnings(caplog) == []


def _cache_like(x, state):
    """Hugging Face's sliding-window cache keeps its length as an int, equal to its keys' length:
    dynamo gives the int the size's symbol."""
    k = state.length
    if k == x.shape[0]:
        return (torch.tanh(x) * (torch.arange(k, device=x.device) < k - 1).float()[:, None]).sum(-1)
    return x.sum(-1)


def test_a_number_dynamo_found_equal_to_a_size_is_read_from_that_size(caplog):
    """Mistral's decode step (H200, session 17): `cumulative_length` carried the cached keys'
    symbol; marked as a foreign number, every op whose shape carried it (the attention) ran in
    PyTorch. Read from the size instead, the engine gets all of it."""
    delegate = TensorsOnly()
    compiled = torch.compile(_cache_like, backend="trt_multidev", options={"delegate": delegate, "min_block_size": 1})
    ours, theirs = State(), State()
    for n in (2, 3, 4, 5):
        ours.length = theirs.length = n
        x = torch.randn(n, 4)
        torch.testing.assert_close(compiled(x, ours), _cache_like(x, theirs))
    assert tm.stats()["cpu"]["fallbacks"] == 0 and _warnings(caplog) == []
    dynamic = delegate.graphs[-1]
    assert any(n.op == "placeholder" and n.type is torch.SymInt for n in dynamic.graph.nodes)  # the dynamic graph
    assert "arange" in dynamic.code and "tanh" in dynamic.code  # nothing left out of the engine


def _reads_a_size_beside_the_number(x, state):
    state.length += 1
    y = torch.tanh(x)
    n = y.shape[0] + 1  # a number from a size, where the engine's work is
    k = state.length + n  # reads the changing number: PyTorch
    return y.sum(-1) * (torch.arange(k, device=x.device) < n).float().sum()


def test_a_number_an_engine_piece_would_compute_is_computed_again_where_it_is_read():
    """H200, session 16: a number computed in an engine piece reached `torch.sym_max` in the next,
    PyTorch, piece as a tensor (AssertionError). Only tensors cross pieces now: the reader
    computes the number again from the size."""
    delegate = TensorsOnly()
    compiled = torch.compile(_reads_a_size_beside_the_number, backend="trt_multidev",
                             options={"delegate": delegate, "min_block_size": 1})
    ours, theirs = State(), State()
    for n in (2, 3, 4, 5, 6):
        x = torch.randn(n, 4)
        torch.testing.assert_close(compiled(x, ours), _reads_a_size_beside_the_number(x, theirs))
    assert tm.stats()["cpu"]["fallbacks"] == 0
    assert any("tanh" in g.code for g in delegate.graphs[1:])
    assert delegate.returned_numbers == []  # no engine hands a number on


def _clamped_offset(x):
    offset = torch.sym_max(x.shape[0] - 3, 0)  # a sliding window's first kept position
    return torch.tanh(x) * (torch.arange(x.shape[0], device=x.device) + offset).float()[:, None]


def test_number_ops_torch_tensorrt_cannot_convert_run_in_pytorch_with_the_sizes_they_read(caplog):
    """Mistral's decode step (H200, session 17): Torch-TensorRT 2.11 left `torch.sym_max` to
    PyTorch between its engines, and the number an engine computed for it came as a tensor
    (AssertionError). It runs in PyTorch ahead of the engine, with the sizes it reads."""
    delegate = TensorsOnly()
    compiled = torch.compile(_clamped_offset, backend="trt_multidev", dynamic=True,
                             options={"delegate": delegate, "min_block_size": 1})
    for n in (2, 5, 9):
        x = torch.randn(n, 4)
        torch.testing.assert_close(compiled(x), _clamped_offset(x))
    assert tm.stats()["cpu"]["fallbacks"] == 0 and _warnings(caplog) == []
    assert len(delegate.graphs) == 1 and "tanh" in delegate.graphs[0].code
    assert "sym_max" not in delegate.graphs[0].code


def test_a_number_dynamo_fixed_is_read_as_that_constant():
    """Mistral's and Gemma 2's first decode step (H200, session 17): dynamo passed the cache's
    `cumulative_length` as a SymInt whose value it had fixed (16), still read by the mask's ops;
    Torch-TensorRT then raised on its source. Its readers get the constant, exact under dynamo's
    guards, and the input is left unread."""
    from trt_multidev_backend.graphinfo import meta_value
    from trt_multidev_backend.scalars import numbers_in_pytorch

    captured = []

    def grab(gm, example_inputs):
        captured.append(gm)
        return gm.forward

    def scaled(x, state):
        state.length += 1
        return x * (state.length - 1)

    compiled, state = torch.compile(scaled, backend=grab), State()
    for _ in range(3):
        compiled(torch.randn(2, 3), state)
    gm = captured[-1]
    number = next(n for n in gm.graph.nodes if n.op == "placeholder" and isinstance(meta_value(n), torch.SymInt))
    key = "val" if "val" in number.meta else "example_value"
    number.meta[key] = torch.SymInt(meta_value(number).node.wrap_int(5))  # as dynamo left it there
    notes = numbers_in_pytorch(gm)
    assert not number.users and any("constant 5" in n for n in notes)
    x = torch.randn(2, 3)
    args = [x if isinstance(meta_value(n), torch.Tensor) else 99 for n in gm.graph.nodes if n.op == "placeholder"]
    torch.testing.assert_close(gm(*args)[0], x * 5)  # the input (99 here) is no longer read


def test_ops_reading_a_number_are_not_moved_across_an_update_in_place():
    """Ops left to PyTorch are gathered into few pieces only in graphs that write nothing in
    place: gathered across `x.add_(1)`, one of them would read x as it was on the other side.
    (A delegate that keeps in-place updates, so the write stays in the graph.)"""
    def step(x, n):
        before = x + n
        x.add_(1)
        after = x * n
        return before.sin(), after.cos()

    compiled = torch.compile(step, backend="trt_multidev",
                             options={"delegate": "_delegates:run_graph", "device": "cpu", "min_block_size": 1})
    for n in (1, 2, 3):  # dynamic from the second call
        x = torch.randn(4)
        ref = x.clone()
        out, expected = compiled(x, n), step(ref, n)
        assert torch.equal(out[0], expected[0]) and torch.equal(out[1], expected[1]) and torch.equal(x, ref)
    assert tm.stats()["cpu"]["fallbacks"] == 0


def _cache_like_2d(x, state):
    k = state.length  # equal to the second size, not the first
    if k == x.shape[1]:
        return (torch.tanh(x) * (torch.arange(k, device=x.device) < k - 1).float()).sum(-1)
    return x.sum(-1)


def test_a_number_equal_to_one_of_several_sizes_is_read_from_that_one():
    delegate = TensorsOnly()
    compiled = torch.compile(_cache_like_2d, backend="trt_multidev", options={"delegate": delegate, "min_block_size": 1})
    ours, theirs = State(), State()
    for rows, n in ((3, 2), (5, 4), (2, 6), (7, 3)):  # both sizes change, so both are dynamic
        ours.length = theirs.length = n
        x = torch.randn(rows, n)
        torch.testing.assert_close(compiled(x, ours), _cache_like_2d(x, theirs))
    assert tm.stats()["cpu"]["fallbacks"] == 0
    assert "arange" in delegate.graphs[-1].code  # read from the size, the engine computes the mask
