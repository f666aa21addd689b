"""The disk cache with real Torch-TensorRT engines (run on the lent GPU machine)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap

import torch

import trt_multidev_backend as tm
from scenarios import DEV, Mlp, rel_error

CHILD = textwrap.dedent("""
    import json, torch, trt_multidev_backend as tm, sys
    sys.path.insert(0, "tests/gpu")
    from scenarios import Mlp, rel_error
    torch.manual_seed(int(sys.argv[1]))
    model = Mlp().eval().to("cuda:0")
    x = torch.randn(16, 256, device="cuda:0")
    with torch.no_grad():
        out = torch.compile(model, backend="trt_multidev", options={"min_block_size": 1})(x)
        import gc
        kernels = [m.runtime_cache_loaded for m in gc.get_objects() if type(m).__name__ == "TensorRTEngine"]
        print("RESULT", json.dumps({"err": rel_error(out, model(x)), "stats": tm.stats()["cuda:0"],
                                    "kernels_from_cache": kernels}))
""")


def child(seed: int, cache_dir: str) -> dict:
    env = {**os.environ, "TRT_MULTIDEV_CACHE_DIR": cache_dir}
    out = subprocess.run([sys.executable, "-c", CHILD, str(seed)], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def test_engines_round_trip_through_a_new_process(tmp_path):
    cold = child(0, str(tmp_path))
    warm = child(1, str(tmp_path))  # other weights: parameters are engine inputs, never baked in
    assert cold["stats"]["compiles"] == 1 and cold["err"] < 1e-2
    assert warm["stats"]["compiles"] == 0 and warm["stats"]["disk_hits"] == 1
    assert warm["err"] < 1e-2
    from trt_multidev_backend.engine import runtime_cache_supported

    if runtime_cache_supported():  # TensorRT-RTX: the entry carries the JIT-compiled kernels
        assert cold["kernels_from_cache"] and not any(cold["kernels_from_cache"])
        assert warm["kernels_from_cache"] and all(warm["kernels_from_cache"])


def test_reload_in_process_after_reset(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="trt_multidev")
    monkeypatch.setenv("TRT_MULTIDEV_CACHE_DIR", str(tmp_path))
    model = Mlp().eval().to(DEV)
    x = torch.randn(8, 256, device=DEV)
    with torch.no_grad():
        first = torch.compile(model, backend="trt_multidev", options={"min_block_size": 1})(x)
        torch._dynamo.reset()
        again = torch.compile(model, backend="trt_multidev", options={"min_block_size": 1})(x)
    assert tm.stats()[str(DEV)]["disk_hits"] == 1
    assert rel_error(again, first) < 1e-3
    from trt_multidev_backend.engine import runtime_cache_supported

    if runtime_cache_supported():  # the log line says who runs the engines and where kernels came from
        lines = [r.getMessage() for r in caplog.records if "by trt_multidev's runner" in r.getMessage()]
        assert any("kernels compiled" in m for m in lines), lines
        assert any("loaded from the cache" in m for m in lines), lines


def test_replicas_on_every_visible_gpu_match_eager():
    model = Mlp().eval()
    x = torch.randn(8, 256)
    replicas = tm.replicate(model, example_inputs=(x,), options={"min_block_size": 1})
    assert [r.device.index for r in replicas] == list(range(torch.cuda.device_count()))
    with torch.no_grad():
        ref = model(x)
        for replica in replicas:
            out = replica(x)
            assert out.device == replica.device and rel_error(out, ref) < 1e-2
    counts = tm.stats()
    assert sum(c["compiles"] for c in counts.values()) == 1  # the others load the first build
