"""One model across several GPUs: a graph whose state spans GPUs is compiled as one stage per GPU
(FakeTensor devices: cuda:0..cuda:3 exist here without a GPU; the engine-like test delegate
refuses any input on another device than its target)."""

from __future__ import annotations

import logging

import torch
import torch.nn as nn

import trt_multidev_backend as tm
from helpers import EngineLikeDelegate, counters, fake, on_fake_device, split_across_fake_gpus


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("trt_multidev")]


def test_two_stages_one_delegate_call_per_gpu_with_only_its_tensors(caplog, fake_mode):
    caplog.set_level(logging.INFO, logger="trt_multidev")
    delegate = EngineLikeDelegate()
    model = split_across_fake_gpus(fake_mode)
    out = torch.compile(model, backend="trt_multidev", options={"delegate": delegate})(
        fake(fake_mode, 2, 4, device="cuda:0"))
    assert out.device == torch.device("cuda", 1)
    assert [c.device for c in delegate.calls] == [torch.device("cuda", 0), torch.device("cuda", 1)]
    for call in delegate.calls:
        assert set(call.input_devices) == {call.device}  # weights and activations of that GPU only
        assert "to(" not in call.code  # the copy between GPUs is not in any stage
    assert tm.stats() == {"cuda:0": counters(compiles=1), "cuda:1": counters(compiles=1)}
    assert warnings_of(caplog) == []
    (plan,) = [r.getMessage() for r in caplog.records if "stage(s)" in r.getMessage()]
    assert "spans cuda:0,cuda:1: 2 stage(s): submod_0 on cuda:0 (1 ops), submod_1 in PyTorch (1 ops), " \
           "submod_2 on cuda:1 (1 ops)" in plan


class ThreeGpus(nn.Module):
    """cuda:0 -> host work -> cuda:1 -> cuda:2, as a hand-placed pipeline."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        h = torch.relu(self.a(x)).cpu()
        h = (h * 2).sin()                     # deliberate host work between stages
        h = torch.tanh(self.b(h.to("cuda:1")))
        return self.c(h.to("cuda:2")) + 1


def test_three_stages_with_host_work_between_them(fake_mode):
    delegate = EngineLikeDelegate()
    model = ThreeGpus().requires_grad_(False)
    for layer, device in ((model.a, "cuda:0"), (model.b, "cuda:1"), (model.c, "cuda:2")):
        on_fake_device(layer, device, fake_mode)
    out = torch.compile(model, backend="trt_multidev", options={"delegate": delegate})(
        fake(fake_mode, 2, 4, device="cuda:0"))
    assert out.device == torch.device("cuda", 2)
    assert [str(c.device) for c in delegate.calls] == ["cuda:0", "cuda:1", "cuda:2"]
    for call in delegate.calls:
        assert set(call.input_devices) == {call.device}
        assert "sin" not in call.code and "cpu" not in call.code  # host work stays in PyTorch
    assert sorted(tm.stats()) == ["cuda:0", "cuda:1", "cuda:2"]


def test_each_stage_has_its_own_cache_entry(fake_mode):
    from helpers import capture

    delegate = EngineLikeDelegate()
    x = fake(fake_mode, 2, 4, device="cuda:0")
    for _ in range(2):  # two models of the same architecture, captured apart
        gm, inputs = capture(split_across_fake_gpus(fake_mode), x)
        tm.backend(gm, inputs, options={"delegate": delegate})
    assert len(delegate.calls) == 2  # the second model's stages both came from the in-memory cache
    assert tm.stats() == {"cuda:0": counters(compiles=1, cache_hits=1), "cuda:1": counters(compiles=1, cache_hits=1)}


def test_a_failing_stage_falls_back_alone(caplog, fake_mode):
    class FailsOnSecondGpu(EngineLikeDelegate):
        def __call__(self, gm, example_inputs, *, device, settings):
            if device == torch.device("cuda", 1):
                self.calls.append(None)
                raise RuntimeError("no converter on this stage")
            return super().__call__(gm, example_inputs, device=device, settings=settings)

    delegate = FailsOnSecondGpu()
    out = torch.compile(split_across_fake_gpus(fake_mode), backend="trt_multidev", options={"delegate": delegate})(
        fake(fake_mode, 2, 4, device="cuda:0"))
    assert out.device == torch.device("cuda", 1)
    assert tm.stats() == {"cuda:0": counters(compiles=1), "cuda:1": counters(fallbacks=1)}
    (message,) = warnings_of(caplog)
    assert "no converter on this stage [cuda:1]" in message


def test_the_device_setting_still_puts_everything_on_one_gpu(fake_mode):
    delegate = EngineLikeDelegate()
    out = torch.compile(split_across_fake_gpus(fake_mode), backend="trt_multidev",
                        options={"delegate": delegate, "device": "cuda:3"})(fake(fake_mode, 2, 4, device="cuda:0"))
    (call,) = delegate.calls
    assert call.device == torch.device("cuda", 3)
    assert set(call.input_devices) == {torch.device("cuda", 3)}  # every tensor of the graph moved there
    assert out is not None


def test_strict_raises_from_a_failing_stage_through_torch_compile(fake_mode):
    import pytest

    with pytest.raises(tm.TrtMultidevError, match=r"engine build exploded \[cuda:0\]"):
        torch.compile(split_across_fake_gpus(fake_mode), backend="trt_multidev",
                      options={"delegate": "_delegates:broken", "strict": True})(fake(fake_mode, 2, 4, device="cuda:0"))
