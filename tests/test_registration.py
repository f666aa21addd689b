"""Registration by entry point, the light import, and reset() reached from torch._dynamo.reset()."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from importlib.metadata import EntryPoint

import torch

import trt_multidev_backend as tm


def run_python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_fresh_interpreter_finds_the_backend_by_name_without_importing_it():
    out = run_python("""
        import sys, torch
        assert "trt_multidev_backend" not in sys.modules
        model = torch.nn.Linear(4, 4)
        x = torch.randn(2, 4)
        out = torch.compile(model, backend="trt_multidev", options={"delegate": "torch_tensorrt"})(x)
        assert torch.allclose(out, model(x))
        print("loaded", "trt_multidev_backend" in sys.modules, "trt_multidev" in torch._dynamo.list_backends())
    """)
    assert out.split()[-3:] == ["loaded", "True", "True"]


def test_import_is_light():
    out = run_python("""
        import sys, torch
        import trt_multidev_backend
        heavy = [m for m in ("torch_tensorrt", "tensorrt", "torch._dynamo", "torch._inductor") if m in sys.modules]
        print(heavy, torch.cuda.is_initialized())
    """)
    assert out.strip() == "[] False"


def test_register_is_idempotent_and_never_duplicates_the_entry_point():
    out = run_python("""
        import torch, trt_multidev_backend as tm
        tm.register(); tm.register()
        fn = torch._dynamo.backends.registry.lookup_backend("trt_multidev")
        print(fn is tm.backend)
    """)
    assert out.strip() == "True"


def test_register_without_entry_point_registers_directly(monkeypatch):
    from torch._dynamo.backends import registry

    monkeypatch.setattr(registry, "_BACKENDS", dict(registry._BACKENDS))
    monkeypatch.setattr(registry, "_COMPILER_FNS", dict(registry._COMPILER_FNS))
    registry._BACKENDS.pop("trt_multidev_test", None)
    tm.register("trt_multidev_test")
    tm.register("trt_multidev_test")  # the duplicate-name assertion must not fire
    assert registry.lookup_backend("trt_multidev_test") is tm.backend


def test_entry_point_resolves_to_the_backend_object():
    from importlib.metadata import entry_points

    (ep,) = [e for e in entry_points(group="torch_dynamo_backends") if e.name == "trt_multidev"]
    assert ep.load() is tm.backend
    assert EntryPoint(ep.name, ep.value, ep.group).load() is tm.backend


def test_backend_takes_options_and_mode_as_torch_compile_passes_them(monkeypatch):
    import _delegates

    _delegates.SEEN_SETTINGS.clear()
    monkeypatch.setenv("TRT_MULTIDEV_DELEGATE", "_delegates:record_settings")
    torch.compile(torch.nn.Linear(2, 2), backend="trt_multidev", mode="max-autotune")(torch.randn(1, 2))
    torch.compile(torch.nn.Linear(2, 2), backend="trt_multidev", options={"min_block_size": 2})(torch.randn(1, 2))
    first, second = _delegates.SEEN_SETTINGS
    assert (first.mode, first.optimization_level, first.sources["optimization_level"]) == (
        "max-autotune", 5, "mode=max-autotune")
    assert first.sources["delegate"] == "env TRT_MULTIDEV_DELEGATE"
    assert (second.min_block_size, second.optimization_level) == (2, None)


def test_dynamo_reset_reaches_backend_reset():
    torch.compile(torch.nn.Linear(2, 2), backend="trt_multidev",
                  options={"delegate": "_delegates:run_graph"})(torch.randn(1, 2))
    assert tm.stats()["cpu"]["compiles"] == 1 and len(tm.backend._cache) == 1
    torch._dynamo.reset()
    assert tm.stats() == {} and len(tm.backend._cache) == 0


def test_reduce_overhead_on_the_cpu_says_once_why_nothing_is_captured(caplog, monkeypatch):
    monkeypatch.setenv("TRT_MULTIDEV_DELEGATE", "_delegates:run_graph")
    for width in (2, 3):  # two graphs, two backend calls
        torch.compile(torch.nn.Linear(width, width), backend="trt_multidev", mode="reduce-overhead")(
            torch.randn(1, width))
    warned = [r.getMessage() for r in caplog.records if "CUDA graphs" in r.getMessage() and r.levelname == "WARNING"]
    assert len(warned) == 1 and "runs uncaptured: it runs on cpu, and CUDA graphs need a GPU" in warned[0]
    assert tm.stats()["cpu"]["compiles"] == 2
