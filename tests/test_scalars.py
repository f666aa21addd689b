"""Numbers in a graph run in PyTorch beside the engines (scalars.py): a Python int dynamo made
dynamic (no tensor's size) and what depends on it, and the numbers a graph returns."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn as nn

import trt_multidev_backend as tm


class TensorsOnly:
    """Stands in for Torch-TensorRT 2.11 where numbers meet it (H200, session 16): a number input
    that is no tensor's size makes it raise (its remove_sym_nodes reads `source.base.local_name`
    and `source.idx`), and its engines hand numbers back as tensors."""

    def __init__(self) -> None:
        self.graphs: list[torch.fx.GraphModule] = []
        self.inputs: list[list[type]] = []

    def __call__(self, gm, example_inputs, *, device, settings):
        self.graphs.append(gm)
        self.inputs.append([type(x) for x in example_inputs])
        for node in gm.graph.nodes:
            source = getattr(node.meta.get("grapharg"), "source", None)
            if node.op == "placeholder" and source is not None and node.type is torch.SymInt and not (
                    hasattr(getattr(source, "base", None), "local_name") and isinstance(getattr(source, "idx", None), int)):
                raise AttributeError(f"{type(getattr(source, 'base', None)).__name__!r} object has no attribute 'local_name'")

        def run(*args):
            out = gm(*args)
            as_tensor = [torch.tensor(o) if isinstance(o, (int, float, bool)) else o for o in out]
            return type(out)(as_tensor) if isinstance(out, (tuple, list)) else out

        return run


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
