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
