"""Fallbacks: warned once per (reason, device), counted, refused by strict; results stay eager's."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn as nn

import trt_multidev_backend as tm
from helpers import EngineLikeDelegate, capture, counters, fake, on_fake_device, TwoLinear as Net

needs_no_trt = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU fallback path")


def warnings_of(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name.startswith("trt_multidev")]


@needs_no_trt
def test_default_delegate_without_gpu_warns_once_and_runs_eager(caplog):
    model = Net().eval()
    x = torch.randn(4, 8)
    compiled = torch.compile(model, backend="trt_multidev")
    other = nn.Sequential(nn.Linear(8, 3), nn.Tanh()).eval()  # another graph, same reason and device
    with torch.no_grad():
        for _ in range(3):
            torch.testing.assert_close(compiled(x), model(x))
        torch.testing.assert_close(torch.compile(other, backend="trt_multidev")(x), other(x))
    (message,) = warnings_of(caplog)  # one warning for both graphs
    assert "TensorRT needs a CUDA device" in message and "eager fallback" in message
    assert "device=cuda:N" in message  # the remedy
    assert tm.stats() == {"cpu": counters(fallbacks=2)}  # one per graph; later calls reuse it


@needs_no_trt
def test_a_cuda_device_setting_without_cuda_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("TRT_MULTIDEV_DEVICE", "cuda:7")
    with pytest.raises(tm.SettingsError, match=r"device cuda:7 \(setting device=cuda:7 \(env TRT_MULTIDEV_DEVICE\)\) "
                                                r"names a CUDA device, but none is visible here"):
        torch.compile(Net().eval(), backend="trt_multidev")(torch.randn(4, 8))
    assert tm.stats() == {}  # nothing filed under cuda:7


@needs_no_trt
def test_the_eager_fallback_hands_dynamo_the_graphs_forward_not_the_module():
    gm, inputs = capture(Net().eval(), torch.randn(4, 8))
    compiled = tm.backend(gm, inputs)
    assert not isinstance(compiled, torch.nn.Module)  # a module call costs a few µs more each time
    assert isinstance(compiled.__self__, torch.fx.GraphModule) and compiled.__name__ == "forward"


@needs_no_trt
def test_cuda_target_without_cuda_names_the_reason(caplog, fake_mode):
    model = on_fake_device(Net(), "cuda:1", fake_mode)
    out = torch.compile(model, backend="trt_multidev")(fake(fake_mode, 4, 8, device="cuda:1"))
    assert out.device == torch.device("cuda", 1)  # eager on the captured graph: its own devices
    (message,) = warnings_of(caplog)
    assert "CUDA is not usable here" in message and "[cuda:1]" in message
    assert tm.stats() == {"cuda:1": counters(fallbacks=1)}


@needs_no_trt
def test_strict_turns_the_fallback_into_an_error():
    compiled = torch.compile(Net(), backend="trt_multidev", options={"strict": True})
    with pytest.raises(Exception) as err:
        compiled(torch.randn(2, 8))
    assert isinstance(_root(err.value), tm.TrtMultidevError)
    assert "strict is on" in str(err.value) and "device=cuda:N" in str(err.value)


def _root(exc: BaseException) -> BaseException:
    seen = exc
    while getattr(seen, "__cause__", None) is not None or getattr(seen, "inner_exception", None) is not None:
        seen = getattr(seen, "inner_exception", None) or seen.__cause__
        if isinstance(seen, (tm.TrtMultidevError, ValueError)):
            return seen
    return seen


def test_a_failing_delegate_falls_back_on_the_placed_graph(caplog, fake_mode):
    model = on_fake_device(Net(), "cuda:1", fake_mode)
    delegate = EngineLikeDelegate(fail=RuntimeError("engine build exploded\nsecond line"))
    compiled = torch.compile(model, backend="trt_multidev", options={"delegate": delegate})
    for n in (4, 4):
        assert compiled(fake(fake_mode, n, 8, device="cuda:1")).device == torch.device("cuda", 1)
    (message,) = warnings_of(caplog)
    assert "raised RuntimeError: engine build exploded" in message and "second line" not in message
    assert "strict=1" in message
    assert tm.stats()["cuda:1"]["fallbacks"] == 1


def test_the_same_failure_on_another_gpu_is_warned_again_there_once(caplog, fake_mode):
    """Once per reason and device: a user with models on two GPUs learns about each GPU."""
    delegate = EngineLikeDelegate(fail=RuntimeError("engine build exploded"))
    for device in ("cuda:1", "cuda:3", "cuda:1", "cuda:3"):
        tm.backend(*capture(on_fake_device(Net(), device, fake_mode), fake(fake_mode, 4, 8, device=device)),
                   options={"delegate": delegate})
    found = warnings_of(caplog)
    assert len(found) == 2 and all("engine build exploded" in m for m in found)
    assert ["[cuda:1]" in found[0], "[cuda:3]" in found[1]] == [True, True]
    assert tm.stats()["cuda:1"] == tm.stats()["cuda:3"] == counters(fallbacks=1, cache_hits=1)


def test_strict_reraises_the_delegate_error_with_its_cause(fake_mode):
    model = on_fake_device(Net(), "cuda:1", fake_mode)
    boom = RuntimeError("engine build exploded")
    delegate = EngineLikeDelegate(fail=boom)
    gm, inputs = capture(model, fake(fake_mode, 4, 8, device="cuda:1"))
    with pytest.raises(tm.TrtMultidevError, match="engine build exploded") as err:
        tm.backend(gm, inputs, options={"delegate": delegate, "strict": True})
    assert err.value.__cause__ is boom


def test_settings_errors_are_never_swallowed_by_the_fallback():
    gm, inputs = capture(Net(), torch.randn(2, 8))
    with pytest.raises(tm.SettingsError, match="delegate"):
        tm.backend(gm, inputs, options={"delegate": "_delegates:not_callable"})
    with pytest.raises(tm.SettingsError, match="cannot load"):
        tm.backend(gm, inputs, options={"delegate": "_delegates:missing"})
    with pytest.raises(tm.SettingsError, match="unknown option 'strcit'"):
        tm.backend(gm, inputs, options={"strcit": True})


def test_bad_option_surfaces_at_first_compile_through_torch_compile():
    compiled = torch.compile(Net(), backend="trt_multidev", options={"fallback": "tvm"})
    with pytest.raises(Exception) as err:
        compiled(torch.randn(2, 8))
    assert isinstance(_root(err.value), ValueError)
    assert "invalid value 'tvm' for setting 'fallback'" in str(err.value)


def test_unknown_environment_variable_warns_once(caplog, monkeypatch):
    monkeypatch.setenv("TRT_MULTIDEV_STRIKT", "1")
    model = Net()
    compiled = torch.compile(model, backend="trt_multidev", options={"delegate": "_delegates:run_graph"})
    compiled(torch.randn(2, 8))
    compiled(torch.randn(3, 8))
    assert [m for m in warnings_of(caplog) if "TRT_MULTIDEV_STRIKT" in m] == [
        "trt_multidev: ignoring unknown environment variable TRT_MULTIDEV_STRIKT (not a trt_multidev setting; a typo?)"
    ]


@pytest.mark.slow
def test_inductor_fallback_matches_eager(caplog):
    if torch.cuda.is_available():
        pytest.skip("checks the no-GPU fallback path")
    model = Net().eval()
    x = torch.randn(4, 8)
    with torch.no_grad():
        out = torch.compile(model, backend="trt_multidev", options={"fallback": "inductor"})(x)
        torch.testing.assert_close(out, model(x))
    assert any("inductor fallback" in m for m in warnings_of(caplog))


def test_settings_and_plan_are_logged_at_the_chosen_level(caplog):
    caplog.set_level(logging.DEBUG, logger="trt_multidev")
    torch.compile(Net(), backend="trt_multidev",
                  options={"delegate": "_delegates:run_graph", "log_level": "warning"})(torch.randn(2, 8))
    messages = warnings_of(caplog)
    assert any(m.startswith("settings: device=auto (default)") and "log_level=warning (options)" in m
               for m in messages)
    assert any("target cpu (rule: graph tensors (cpu))" in m for m in messages)


def test_a_failure_on_a_dynamic_graph_names_its_symbolic_sizes(caplog):
    model = Net().eval()
    compiled = torch.compile(model, backend="trt_multidev", dynamic=True, options={"delegate": "_delegates:broken"})
    x = torch.randn(4, 8)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))
    (message,) = warnings_of(caplog)
    assert "engine build exploded (on a graph with symbolic sizes: x: dim 0 in [2, inf]) [cpu]" in message


def test_torch_tensorrt_failures_on_dynamic_graphs_say_how_to_bound_the_sizes():
    """The remedy names the two ways around Torch-TensorRT's open profile; static graphs and
    other delegates keep the plain remedy."""
    from trt_multidev_backend.graphinfo import classify_args
    from trt_multidev_backend.notices import build_failure
    from trt_multidev_backend.settings import resolve_settings

    seen = []

    def record(gm, inputs):
        seen.append(classify_args(gm, inputs))
        return gm.forward
    torch._dynamo.reset()
    with torch.no_grad():
        torch.compile(Net(), backend=record, dynamic=True)(torch.randn(4, 8))
        torch.compile(Net(), backend=record, dynamic=False)(torch.randn(4, 8))
    dynamic, static = seen
    settings = resolve_settings({}, environ={})
    error = RuntimeError("no engine")
    reason, remedy = build_failure(error, "torch_tensorrt", settings, dynamic, torch_tensorrt=True)
    assert reason == ("the torch_tensorrt delegate raised RuntimeError: no engine "
                      "(on a graph with symbolic sizes: x: dim 0 in [2, inf])")
    assert "mark_dynamic(x, dim, min=..., max=...)" in remedy and "dynamic=False" in remedy
    assert "mark_dynamic" not in build_failure(error, "custom", settings, dynamic, torch_tensorrt=False)[1]
    reason, remedy = build_failure(error, "torch_tensorrt", settings, static, torch_tensorrt=True)
    assert "symbolic" not in reason and remedy.startswith("set strict=1")


class DropsUpdates(EngineLikeDelegate):
    """A delegate that, like Torch-TensorRT 2.11, would not write in-place updates back: it runs
    the graph on copies of its inputs."""

    keeps_in_place_updates = False

    def __call__(self, gm, example_inputs, *, device, settings):
        forward = super().__call__(gm, example_inputs, device=device, settings=settings)
        return lambda *args: forward(*(a.clone() if isinstance(a, torch.Tensor) else a for a in args))


class Counting(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.register_buffer("seen", torch.zeros(1))

    def forward(self, x):
        self.seen.add_(1)
        return self.fc(x)


def _dropping(fn):
    """`fn` compiled through DropsUpdates, and an input with the twin eager updates."""
    delegate = DropsUpdates()
    compiled = torch.compile(fn, backend="trt_multidev", options={"delegate": delegate, "device": "cpu"})
    x = torch.randn(3, 4)
    return delegate, compiled, x, x.clone()


@pytest.mark.parametrize("make", [lambda: (lambda x: x.add_(1) * 2), Counting])
def test_updates_of_inputs_or_buffers_run_in_pytorch_after_a_delegate_that_drops_them(caplog, make):
    fn = make()
    delegate, compiled, x, expected_x = _dropping(fn)
    for _ in range(2):
        ref = fn(expected_x) if not isinstance(fn, nn.Module) else None
        out = compiled(x)
        if ref is not None:
            torch.testing.assert_close(out, ref)
            torch.testing.assert_close(x, expected_x)  # the update reached the caller's tensor
    if isinstance(fn, Counting):
        assert fn.seen.item() == 2  # and the module's buffer
    assert len(delegate.calls) == 1 and "add_" not in delegate.calls[0].code  # built once, the update not in it
    assert warnings_of(caplog) == [] and tm.stats()["cpu"]["fallbacks"] == 0


@pytest.mark.parametrize("make, updated, why", [
    (lambda: (lambda x: x[0].add_(1) * 2), "'x'", "updated through a view"),
    (lambda: (lambda x: (x.transpose(0, 1), x.mul_(2))[0] + 1), "'x'", "a view of it, is read after an update"),
    (lambda: (lambda x: x.copy_(x * 3).sum()), "'x'", "has no out-of-place form"),
])
def test_updates_that_cannot_move_after_the_delegate_fall_back_with_the_reason(caplog, make, updated, why):
    fn = make()
    delegate, compiled, x, expected_x = _dropping(fn)
    for _ in range(2):
        torch.testing.assert_close(compiled(x), fn(expected_x))
        torch.testing.assert_close(x, expected_x)
    assert delegate.calls == []
    warned = [w for w in warnings_of(caplog) if "in place" in w]
    assert len(warned) == 1 and updated in warned[0] and why in warned[0] and "would not write back" in warned[0]
    assert tm.stats()["cpu"]["fallbacks"] == 1


def test_delegates_that_keep_updates_still_compile_such_graphs():
    delegate = EngineLikeDelegate()
    compiled = torch.compile(lambda x: x.add_(1) * 2, backend="trt_multidev", options={"delegate": delegate, "device": "cpu"})
    compiled(torch.randn(3, 4))
    assert len(delegate.calls) == 1
