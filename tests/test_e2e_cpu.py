"""End to end on the CPU: real dynamo graphs, real CPU delegates, compared with eager."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import _delegates
import trt_multidev_backend as tm
from helpers import counters


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.register_buffer("scale", torch.tensor(0.5))

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        seq = y.flatten(2).transpose(1, 2)
        mask = torch.triu(torch.ones(seq.shape[1], seq.shape[1], dtype=torch.bool, device=x.device), 1)
        attended, _ = self.attn(seq, seq, seq, attn_mask=mask, need_weights=False)
        return attended.mean(1) * self.scale


@pytest.mark.parametrize("delegate", ["_delegates:run_graph", "torch_tensorrt"])
def test_matches_eager_through_a_delegate_or_the_fallback(delegate):
    model = Block().eval()
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        expected = model(x)
        out = torch.compile(model, backend="trt_multidev", options={"delegate": delegate})(x)
    torch.testing.assert_close(out, expected)
    # One graph. Torch-TensorRT never serves a CPU target (with or without a GPU): the fallback.
    expected_counts = counters(fallbacks=1) if delegate == "torch_tensorrt" else counters(compiles=1)
    assert tm.stats() == {"cpu": expected_counts}


def test_dynamic_shapes_reach_the_delegate_as_symbols():
    seen = []

    def delegate(gm, example_inputs, *, device, settings):
        seen.append([type(x).__name__ for x in example_inputs])
        return gm.forward

    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU()).eval()
    compiled = torch.compile(model, backend="trt_multidev", dynamic=True, options={"delegate": delegate})
    with torch.no_grad():
        for batch in (2, 3, 7):
            x = torch.randn(batch, 4)
            torch.testing.assert_close(compiled(x), model(x))
    assert len(seen) == 1 and "SymInt" in seen[0]  # one compile serves every batch size


def test_a_cpu_model_with_a_cpu_device_setting_is_not_moved():
    _delegates.CALLS.clear()
    model = nn.Linear(3, 3)
    torch.compile(model, backend="trt_multidev", options={"delegate": "_delegates:run_graph", "device": "cpu"})(
        torch.randn(1, 3))
    assert _delegates.CALLS == [("cpu", ("fp32",))]


class Normed(nn.Module):
    """Linear, GELU, LayerNorm: with dynamic=True dynamo passes the norm's eps as a 0-d tensor
    read with .item(), which Torch-TensorRT 2.11's export cannot read (H200, session 7)."""

    def __init__(self):
        super().__init__()
        self.fc, self.norm = nn.Linear(8, 8), nn.LayerNorm(8)

    def forward(self, x, scale=None):
        y = self.norm(torch.nn.functional.gelu(self.fc(x)))
        return y if scale is None else y * scale


def _no_item_delegate(seen):
    """Stands in for Torch-TensorRT's export: refuses a graph that reads a tensor's value."""
    def delegate(gm, example_inputs, *, device, settings):
        if any(n.op == "call_method" and n.target == "item" for n in gm.graph.nodes):
            raise RuntimeError("DataDependentOutputException: aten._local_scalar_dense.default")
        seen.append(gm)
        return gm.forward
    return delegate


def test_a_module_scalar_read_with_item_is_pinned_and_checked():
    torch._dynamo.reset()
    tm.reset()
    seen = []
    model = Normed().eval()
    compiled = torch.compile(model, backend="trt_multidev", dynamic=True,
                             options={"delegate": _no_item_delegate(seen), "strict": True})
    with torch.no_grad():
        for batch in (2, 5):
            x = torch.randn(batch, 8)
            torch.testing.assert_close(compiled(x), model(x))
        assert len(seen) == 1 and tm.stats()["cpu"]["fallbacks"] == 0
        model.norm.eps = 0.5  # dynamo compiles again (the runtime's check is the net where it would not)
        x = torch.randn(3, 8)
        torch.testing.assert_close(compiled(x), model(x))
    assert len(seen) == 2 and all(not any(n.op == "call_method" and n.target == "item" for n in g.graph.nodes)
                                  for g in seen)


def test_a_callers_scalar_is_not_pinned():
    torch._dynamo.reset()
    tm.reset()
    seen = []
    model = Normed().eval()
    compiled = torch.compile(model, backend="trt_multidev", dynamic=True, options={"delegate": _no_item_delegate(seen)})
    with torch.no_grad():
        for scale in (0.5, 2.0):
            x = torch.randn(3, 8)
            torch.testing.assert_close(compiled(x, scale), model(x, scale))  # the fallback: right for any scale
    assert seen == [] and tm.stats()["cpu"]["fallbacks"] == 1
