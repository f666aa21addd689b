"""Guards and releases against a fake CUDA runtime (FakeTensor-style: devices without a GPU).

The fake keeps what PyTorch and the CUDA runtime keep: the runtime's current device, PyTorch's
lazily noted device (c10's targetDeviceIndex) and which GPUs have a context. Its TensorRT-like
objects switch the runtime's device when released, as Torch-TensorRT's engines do.
"""

from __future__ import annotations

import ctypes
import gc

import pytest
import torch

import trt_multidev_backend as tm
from trt_multidev_backend import guard
from trt_multidev_backend.guard import CudaDevices, Releaser, device_guard, release_on
from trt_multidev_backend.runtime import GuardedCallable


class FakeCuda(CudaDevices):
    """c10's current-device rules (CUDAFunctions.cpp) over a fake runtime."""

    def __init__(self, real: int = 0, noted: int = -1, contexts=(0,)) -> None:
        super().__init__()
        self.runtime = real          # cudaGetDevice
        self.noted = noted           # targetDeviceIndex: PyTorch's lazily noted device, -1 if none
        self.contexts = set(contexts)
        self._view = lambda: self.noted if self.noted >= 0 else self.runtime
        self._has_context = lambda index: index in self.contexts

        def exchange(to: int) -> int:
            current, self.noted = self.noted, -1
            if current < 0:
                current = self.runtime
                if current == to:
                    return current
            self._set_real(to)
            return current

        def maybe_exchange(to: int) -> int:
            current = self.runtime
            if to != current:
                if to in self.contexts:
                    self.noted = -1
                    self._set_real(to)
                else:
                    self.noted = to
            return current

        self._exchange, self._maybe_exchange = exchange, maybe_exchange

    def available(self) -> bool:
        return True

    def initialized(self) -> bool:
        return True

    def _get_real(self) -> int:
        return self.runtime

    def _set_real(self, index: int) -> None:
        self.runtime = index
        self.contexts.add(index)

    def state(self) -> tuple[int, int]:
        return self.view(), self.real()


_DESTRUCTOR = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_capsule_new = ctypes.pythonapi.PyCapsule_New
_capsule_new.restype = ctypes.py_object
_capsule_new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
RELEASED_ON: list = []   # (the object's device, the runtime's device when it was destroyed)
_CALLBACKS: list = []


def fake_trt_object(cuda: FakeCuda, device: int):
    """Like a TensorRT engine or Torch-TensorRT's C++ engine: a native object destroyed when its
    last reference goes (no Python finalizer, so the collector never calls it early) that
    switches the runtime to its own device then, and does not switch back."""

    def destroy(_: int) -> None:
        RELEASED_ON.append((device, cuda.runtime))
        cuda._set_real(device)

    callback = _DESTRUCTOR(destroy)
    _CALLBACKS.append(callback)
    return _capsule_new(1, None, ctypes.cast(callback, ctypes.c_void_p))


@pytest.fixture
def cuda(monkeypatch):
    fake = FakeCuda(real=0, contexts=(0, 1, 2, 3))
    monkeypatch.setattr(guard, "CUDA", fake)
    RELEASED_ON.clear()
    return fake


def test_guard_switches_the_real_device_even_when_pytorch_only_noted_the_target(cuda):
    # A process that worked on cuda:1 only: PyTorch noted cuda:0 (no context), the runtime is on 1.
    cuda.runtime, cuda.noted, cuda.contexts = 1, 0, {1}
    with device_guard(torch.device("cuda", 0)):
        assert cuda.state() == (0, 0)  # TensorRT would build here: the runtime is on cuda:0
    # cuda:0 has a context now, so PyTorch cannot just note it again: the runtime agrees with
    # the view the caller had (torch.cuda.current_device() unchanged).
    assert cuda.state() == (0, 0)


def test_guard_gives_back_a_noted_device_and_the_runtimes_exactly(cuda):
    cuda.runtime, cuda.noted, cuda.contexts = 1, 0, {1, 2}
    with device_guard(torch.device("cuda", 2)):
        assert cuda.state() == (2, 2)
    assert cuda.state() == (0, 1) and 0 not in cuda.contexts  # no context made on cuda:0


def test_guard_restores_after_the_block_switched_the_device_also_on_error(cuda):
    with pytest.raises(ValueError):
        with device_guard(torch.device("cuda", 2)):
            cuda._set_real(3)          # a library switched and did not switch back
            raise ValueError("build failed")
    assert cuda.state() == (0, 0)


def test_release_runs_on_the_objects_device_and_keeps_the_callers(cuda):
    objects = [fake_trt_object(cuda, 1)]
    release_on(torch.device("cuda", 1), objects)
    assert RELEASED_ON == [(1, 1)] and objects == []
    assert cuda.state() == (0, 0)


def test_a_releaser_dropped_by_garbage_collection_releases_on_its_device(cuda):
    class Owner:  # an engine module in a reference cycle, as GraphModules are
        pass

    for cycle in (True, False):
        RELEASED_ON.clear()
        owner = Owner()
        owner.engine = fake_trt_object(cuda, 1)
        owner.releaser = Releaser(torch.device("cuda", 1), owner.__dict__, ("engine",))
        if cycle:
            owner.me = owner
        del owner
        gc.collect()
        assert RELEASED_ON == [(1, 1)]
        assert cuda.state() == (0, 0)


def test_collections_give_back_the_device_whatever_they_released(cuda):
    guard.watch_collections()

    class Cycle:
        pass

    before = guard.restored_after_collections
    with device_guard(torch.device("cuda", 2)):  # e.g. in the middle of a build for cuda:2
        node = Cycle()
        node.me, node.engine = node, fake_trt_object(cuda, 1)  # not ours: no releaser
        del node
        gc.collect()
        assert cuda.state() == (2, 2)  # the build goes on where it was
    assert RELEASED_ON == [(1, 2)]
    assert guard.restored_after_collections == before + 1
    assert cuda.state() == (0, 0)


def test_compiled_call_runs_on_its_device_and_restores_the_callers_after_a_switch(cuda):
    seen = []

    def engine(x):
        seen.append(cuda.state())
        cuda._set_real(3)  # an engine runtime that leaves its own device current
        return x

    call = GuardedCallable(engine, torch.device("cuda", 1))
    call(torch.zeros(1))
    assert seen == [(1, 1)]
    assert cuda.state() == (0, 0)


def test_compiled_call_keeps_a_device_pytorch_only_noted(cuda):
    seen = []
    call = GuardedCallable(lambda x: seen.append(cuda.state()), torch.device("cuda", 1))
    cuda.runtime, cuda.noted, cuda.contexts = 1, 0, {1}  # a process that only ever used cuda:1
    call(torch.zeros(1))
    assert seen == [(1, 1)]
    assert cuda.state() == (0, 1) and cuda.contexts == {1}  # no context made on cuda:0


def test_compiled_call_restores_the_callers_device_on_error(cuda):
    def engine(x):
        cuda._set_real(2)
        raise RuntimeError("engine failed")

    call = GuardedCallable(engine, torch.device("cuda", 1))
    with pytest.raises(RuntimeError, match="engine failed"):
        call(torch.zeros(1))
    assert cuda.state() == (0, 0)


# -- the post-build device check, through the backend with a CPU test delegate ---------------
class WrongDeviceDelegate:
    """Builds fine but reports an engine on another GPU than the target, as Torch-TensorRT's
    did when a release switched the device in the middle of a build."""

    def __init__(self, where: str) -> None:
        self.where = torch.device(where)

    def __call__(self, gm, example_inputs, *, device, settings):
        return gm.forward

    def engine_devices(self, compiled):
        return [("_run_on_acc_0", self.where)]


def compile_on(fake_mode, device: str, delegate, **options):
    from helpers import capture, fake, on_fake_device

    net = on_fake_device(torch.nn.Linear(4, 4), device, fake_mode)
    gm, inputs = capture(net, fake(fake_mode, 2, 4, device=device))
    return tm.backend(gm, inputs, options={"delegate": delegate, **options})


def test_an_engine_on_another_gpu_is_a_clear_error_with_strict(fake_mode):
    with pytest.raises(tm.TrtMultidevError, match=r"'_run_on_acc_0' on cuda:1, but this graph was compiled for cuda:0"):
        compile_on(fake_mode, "cuda:0", WrongDeviceDelegate("cuda:1"), strict=True)


def test_an_engine_on_another_gpu_warns_once_and_runs_the_fallback(fake_mode, caplog):
    delegate = WrongDeviceDelegate("cuda:1")
    compile_on(fake_mode, "cuda:0", delegate)
    compile_on(fake_mode, "cuda:0", delegate, strict=False, min_block_size=2)  # another key, same warning
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "'_run_on_acc_0' on cuda:1" in warnings[0] and "fallback" in warnings[0]
    assert tm.stats()["cuda:0"]["fallbacks"] == 2 and tm.stats()["cuda:0"]["compiles"] == 2


def test_engines_on_the_target_pass_the_check(fake_mode):
    compile_on(fake_mode, "cuda:0", WrongDeviceDelegate("cuda:0"), strict=True)
    assert tm.stats()["cuda:0"]["fallbacks"] == 0 and tm.stats()["cuda:0"]["compiles"] == 1


# -- the Torch-TensorRT delegate's side, without Torch-TensorRT ------------------------------
def test_torch_tensorrt_engine_modules_release_their_engines_on_the_target(cuda):
    from trt_multidev_backend.delegate import own_engines

    class TorchTensorRTModule(torch.nn.Module):  # Torch-TensorRT's C++ engine module, by its name
        def __init__(self) -> None:
            super().__init__()
            self.engine = fake_trt_object(cuda, 2)

    compiled = torch.nn.Sequential(TorchTensorRTModule())
    own_engines(compiled, torch.device("cuda", 2))
    del compiled
    gc.collect()
    assert RELEASED_ON == [(2, 2)] and cuda.state() == (0, 0)


def test_the_device_a_cpp_engine_chose_is_read_from_its_description():
    from trt_multidev_backend.delegate import engine_device

    class Engine:
        def __str__(self) -> str:
            return "Torch-TensorRT TensorRT Engine:\n  Name: _run_on_acc_0\n  Device: Device(ID: 1, Name: NVIDIA H200, SM Capability: 9.0, Type: GPU)"

    class TorchTensorRTModule(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.engine = Engine()

    assert engine_device(TorchTensorRTModule()) == torch.device("cuda", 1)


def test_engine_devices_name_each_engine_and_read_a_python_engine_module_s_device():
    from trt_multidev_backend.delegate import TorchTensorRTDelegate

    class PythonTorchTensorRTModule(torch.nn.Module):  # Torch-TensorRT's: `device` is an index once set up
        def __init__(self, device) -> None:
            super().__init__()
            self.engine = object()
            self.device = device

    outer = torch.nn.Module()
    outer._run_on_acc_0 = PythonTorchTensorRTModule(1)
    outer._run_on_acc_2 = PythonTorchTensorRTModule(None)  # not set up: its device cannot be read
    assert TorchTensorRTDelegate.engine_devices(outer) == [
        ("_run_on_acc_0", torch.device("cuda", 1)), ("_run_on_acc_2", None)]
    # A graph that is one engine names it "engine" in messages.
    assert TorchTensorRTDelegate.engine_devices(PythonTorchTensorRTModule(3)) == [("engine", torch.device("cuda", 3))]


def test_the_op_whose_conversion_failed_is_found_in_the_traceback():
    from trt_multidev_backend.delegate import TorchTensorRTDelegate

    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    node = graph.call_function(torch.ops.aten.embedding.default, (x, x))

    class TRTInterpreter:  # like Torch-TensorRT's: it holds the node it is converting
        def run_node(self, n):
            self._cur_node = n
            raise RuntimeError("The `embedding` op has indices_tensor dtype=int64")

    try:
        TRTInterpreter().run_node(node)
    except RuntimeError as exc:
        assert TorchTensorRTDelegate.failing_op(exc) == "torch.ops.aten.embedding.default"
        assert TorchTensorRTDelegate.failing_node(exc) is node  # with its graph: what the probe dumps
    try:
        raise RuntimeError("builder failed")  # no node being converted: not one op's failure
    except RuntimeError as exc:
        assert TorchTensorRTDelegate.failing_op(exc) is None

