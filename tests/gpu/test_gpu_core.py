"""The core backend on a real GPU with real Torch-TensorRT (run on the lent GPU machine)."""

from __future__ import annotations

import logging

import pytest
import torch

import trt_multidev_backend as tm
from scenarios import CATALOG, DEV, Mlp, rel_error


# Scenarios known to fail, with the measured reason (xfail, not strict: an XPASS says fixed).
# dynamic=True left it on H200 session 8 (57d3b72): module scalars are pinned (rewrites.py).
KNOWN: dict[str, str] = {}


@pytest.mark.parametrize("scenario", [pytest.param(k, marks=pytest.mark.xfail(reason=KNOWN[k], strict=False))
                                      if k in KNOWN else k for k in CATALOG])
def test_catalog_scenario_matches_eager(scenario, caplog):
    _, run = CATALOG[scenario]
    outcome = run("trt_multidev")
    assert outcome.ok, outcome.detail
    warnings = [r.getMessage() for r in caplog.records
                if r.name.startswith("trt_multidev") and r.levelno >= logging.WARNING]
    assert warnings == [], warnings  # no fallback, no graph left without an engine


def test_engines_are_built_on_the_models_gpu(caplog):
    caplog.set_level(logging.INFO, logger="trt_multidev")
    model = Mlp().eval().to(DEV)
    x = torch.randn(16, 256, device=DEV)
    with torch.no_grad():
        out = torch.compile(model, backend="trt_multidev", options={"min_block_size": 1})(x)
    assert rel_error(out, model(x)) < 1e-2
    counts = tm.stats()[str(DEV)]
    assert counts["compiles"] >= 1 and counts["fallbacks"] == 0
    assert not [r for r in caplog.records if "built no engine" in r.getMessage()]


def test_resnet50_fp16_matches_eager():
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet50().eval().half().to(DEV)
    x = torch.randn(8, 3, 224, 224, device=DEV, dtype=torch.float16)
    with torch.no_grad():
        ref = model(x)
        out = torch.compile(model, backend="trt_multidev")(x)
    assert out.dtype == torch.float16 and out.device == DEV
    assert rel_error(out, ref) < 2e-2
    assert tm.stats()[str(DEV)]["fallbacks"] == 0


def test_out_of_range_device_is_a_clear_error():
    model = Mlp(8).eval().to(DEV)
    bad = f"cuda:{torch.cuda.device_count()}"
    with pytest.raises(Exception, match=rf"device {bad} .* is out of range: {torch.cuda.device_count()} CUDA device"):
        torch.compile(model, backend="trt_multidev", options={"device": bad})(torch.randn(2, 8, device=DEV))


def test_guard_restores_the_callers_device_even_on_error():
    from trt_multidev_backend.guard import device_guard

    before = torch.cuda.current_device()
    with pytest.raises(RuntimeError):
        with device_guard(torch.device("cuda", torch.cuda.device_count() - 1)):
            raise RuntimeError("inside")
    assert torch.cuda.current_device() == before


class WindowCache(torch.nn.Module):
    """A sliding-window KV cache's update (Hugging Face keeps full[:, :, -(window - 1):]) and a
    stop past the end: bounds beyond the dimension, which PyTorch clamps."""

    def forward(self, x):
        full = x * 2
        return full.sum(-1), full[:, :, -63:], full[..., 2:100]


@pytest.mark.parametrize("dynamic", [False, True])
def test_slice_bounds_beyond_the_dimension_give_eagers_values(dynamic):
    """Torch-TensorRT 2.11 wraps a constant bound beyond the dimension (-63 on 16 starts at 1):
    through trt_multidev the engine returns eager's slices, static and dynamic."""
    model = WindowCache()
    compiled = torch.compile(model, backend="trt_multidev", options={"min_block_size": 1, "cache": False})
    with torch.no_grad():
        for n in (16, 20, 40) if dynamic else (16,):
            x = torch.randn(1, 2, n, 32, device=DEV, dtype=torch.float16)
            if dynamic and n == 16:
                torch._dynamo.mark_dynamic(x, 2, min=2, max=62)
            out, ref = compiled(x), model(x)
            assert [o.shape for o in out] == [r.shape for r in ref], n
            assert all(torch.equal(o, r) for o, r in zip(out[1:], ref[1:])), n
    counts = tm.stats()[str(DEV)]
    assert counts["compiles"] == 1 and counts["fallbacks"] == 0
