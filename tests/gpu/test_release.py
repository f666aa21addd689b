"""S19: the right GPU for the whole life of a process. Engines are released on their own GPU,
releasing never changes the caller's current device (PyTorch's or the CUDA runtime's), and what
one compile leaves behind never sends the next one's engines to another GPU. Both engine runtimes.

The reproductions need two GPUs (marker multi_gpu); the release test runs on one.
"""

from __future__ import annotations

import gc
import os
import weakref

import pytest
import torch

import trt_multidev_backend as tm
from scenarios import Mlp, rel_error
from trt_multidev_backend.guard import real_device

DRY = os.environ.get("MULTI_GPU_DRY_RUN") == "1"
FIRST = torch.device("cuda", 0)
SECOND = torch.device("cuda", 0 if DRY else 1)
RUNTIMES = pytest.mark.parametrize("runtime", ["auto", "torch_tensorrt"])


def compile_and_check(device: torch.device, runtime: str) -> None:
    """Compile an MLP on `device` and run it: eager-equal, on `device`, one build, no fallback."""
    model = Mlp().eval().to(device)
    x = torch.randn(16, 256, device=device)
    before = tm.stats().get(str(device), {}).get("fallbacks", 0)
    with torch.no_grad():
        out = torch.compile(model, backend="trt_multidev",
                            options={"min_block_size": 1, "engine_runtime": runtime})(x)
        assert out.device == device and rel_error(out, model(x)) < 1e-2
    assert tm.stats()[str(device)]["fallbacks"] == before  # no engine on another GPU, no build failure


def release_everything() -> None:
    torch._dynamo.reset()
    gc.collect()


def current() -> tuple[int, int]:
    return torch.cuda.current_device(), real_device()


@pytest.mark.multi_gpu
@RUNTIMES
def test_s19_releasing_second_gpu_engines_keeps_the_callers_device(runtime):
    torch.cuda.set_device(FIRST)
    compile_and_check(SECOND, runtime)
    assert current() == (FIRST.index, FIRST.index)
    release_everything()
    assert current() == (FIRST.index, FIRST.index)


@pytest.mark.multi_gpu
@RUNTIMES
def test_second_gpu_then_reset_then_first_gpu(runtime):
    torch.cuda.set_device(FIRST)
    compile_and_check(SECOND, runtime)
    torch._dynamo.reset()
    compile_and_check(FIRST, runtime)  # was built on cuda:1 (runner: wrong input device; C++: illegal access)
    release_everything()
    assert current() == (FIRST.index, FIRST.index)


@pytest.mark.multi_gpu
@RUNTIMES
def test_first_gpu_then_reset_then_second_gpu(runtime):
    torch.cuda.set_device(FIRST)
    compile_and_check(FIRST, runtime)
    release_everything()
    compile_and_check(SECOND, runtime)  # was: ICudaEngine::serialize failed, then a TypeError
    release_everything()
    assert current() == (FIRST.index, FIRST.index)


@RUNTIMES
def test_engines_are_released_after_reset_and_collection(runtime):
    """Nothing trt_multidev built outlives torch._dynamo.reset() and a collection (no leak, and
    the release path ran), and the device is unchanged throughout."""
    from trt_multidev_backend import guard

    start = current()
    known = {id(owner) for owner in list(guard._LIVE)}
    model = Mlp().eval().to(FIRST)
    x = torch.randn(16, 256, device=FIRST)
    compiled = torch.compile(model, backend="trt_multidev", options={"min_block_size": 1, "engine_runtime": runtime})
    with torch.no_grad():
        compiled(x)
    # trt_multidev's runner engines, or the releasers of Torch-TensorRT's engine modules
    refs = [weakref.ref(owner) for owner in list(guard._LIVE) if id(owner) not in known]
    assert refs, "no engine (or releaser) was registered"
    del compiled
    release_everything()
    assert [r() for r in refs if r() is not None] == []
    assert current() == start
