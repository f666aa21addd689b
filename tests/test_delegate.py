"""The Torch-TensorRT delegate's decisions that do not need TensorRT: when trt_multidev's engine
runner takes over, and the scoped deferral of Torch-TensorRT's engine setup."""

from __future__ import annotations

import threading

import pytest

from trt_multidev_backend import delegate as d
from trt_multidev_backend.settings import resolve_settings


def runner_ready() -> d.TorchTensorRTDelegate:
    """A delegate on a machine whose TensorRT keeps JIT kernels (TensorRT-RTX); that one fact is
    the only thing set by hand, the decision itself is the delegate's."""
    delegate = d.TorchTensorRTDelegate()
    delegate._runner_supported = True
    return delegate


@pytest.mark.parametrize("options", [
    {"engine_runtime": "torch_tensorrt"},
    {"trt": {"use_python_runtime": True}},
    {"trt": {"lazy_engine_init": True}},
    {"trt": {"enable_weight_streaming": True}},
])
def test_runner_stands_aside_when_asked(options):
    assert runner_ready().runner_applies(resolve_settings({}, environ={}))
    assert not runner_ready().runner_applies(resolve_settings(options, environ={}))


def test_runner_needs_a_tensorrt_that_keeps_kernels():
    delegate = d.TorchTensorRTDelegate()
    delegate._runner_supported = False
    assert not delegate.runner_applies(resolve_settings({}, environ={}))


def test_setup_deferral_is_scoped_to_the_block_and_the_thread():
    calls = []

    class EngineModule:  # the shape of Torch-TensorRT's Python engine module: setup_engine()
        def setup_engine(self):
            calls.append(threading.current_thread().name)

    def other_thread():
        t = threading.Thread(target=EngineModule().setup_engine, name="other")
        t.start()
        t.join()

    with d._deferring_setup(EngineModule):
        EngineModule().setup_engine()  # deferred
        other_thread()  # not deferred: another thread
        with pytest.raises(RuntimeError):
            with d._deferring_setup(EngineModule):  # installed once, still scoped
                raise RuntimeError("build failed")
    EngineModule().setup_engine()
    assert calls == ["other", threading.current_thread().name]
