from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
import torch


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("TRT_MULTIDEV_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "trt_multidev_backend", *args],
                          capture_output=True, text=True, env=full_env, timeout=300)


def test_info_shows_versions_gpus_and_setting_sources():
    result = cli("info", env={"TRT_MULTIDEV_DEVICE": "cuda:1", "TRT_MULTIDEV_TRT": '{"hardware_compatible": true}',
                              "TRT_MULTIDEV_DEVCE": "2"})
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"torch           {torch.__version__}" in out
    assert "torch_tensorrt" in out and "tensorrt" in out
    if not torch.cuda.is_available():
        assert "none (CPU-only build of torch)" in out
    lines = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith("  ") and line.split()}
    assert lines["device"] == ["cuda:1", "env", "TRT_MULTIDEV_DEVICE"]
    assert lines["trt.hardware_compatible"] == ["True", "env", "TRT_MULTIDEV_TRT"]
    assert lines["fallback"] == ["eager", "default"]
    assert "TRT_MULTIDEV_DEVCE is not a trt_multidev setting" in out
    if importlib.util.find_spec("torch_tensorrt") is None:
        assert "engines run by: nothing yet: torch_tensorrt is not installed" in out
    asked = cli("info", env={"TRT_MULTIDEV_ENGINE_RUNTIME": "torch_tensorrt"})
    assert "engines run by: Torch-TensorRT's runtime (engine_runtime=torch_tensorrt)" in asked.stdout
    assert lines["progress"] == ["auto", "default"]
    if importlib.util.find_spec("rich") is not None:
        assert "builds shown as: a live display where stderr is a terminal (rich " in out
    silent = cli("info", env={"TRT_MULTIDEV_PROGRESS": "0"})
    assert "builds shown as: nothing (progress=off)" in silent.stdout


def test_info_rejects_a_bad_environment_clearly():
    result = cli("info", env={"TRT_MULTIDEV_FALLBACK": "tvm"})
    assert result.returncode == 2
    assert "invalid value 'tvm' for setting 'fallback' (from TRT_MULTIDEV_FALLBACK)" in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path of the demo")
def test_demo_without_gpu_says_so_and_runs_the_fallback():
    result = cli("demo", "--iters", "3", "--batch", "4")
    assert result.returncode == 0, result.stderr
    assert "no GPU here" in result.stdout
    assert "relative error vs eager: 0.00e+00" in result.stdout
    assert "'fallbacks': 1" in result.stdout
    assert "running the eager fallback" in result.stderr


def test_console_script_is_installed():
    import shutil

    exe = shutil.which("trt-multidev", path=os.path.dirname(sys.executable))
    assert exe is not None
    result = subprocess.run([exe, "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("trt-multidev ")


def test_cache_commands_list_stats_prune_clear(tmp_path):
    from trt_multidev_backend.diskcache import DiskCache

    store = DiskCache(tmp_path, 10**9)
    ns = store.namespace({"torch": "2.x"}, "sm90-test-gpu")
    for i in range(3):
        store.write(ns, f"{i}" * 64, bytes(2048), {"graph": f"graph(x) of {i} ops", "device": "cuda:1"})
    env = {"TRT_MULTIDEV_CACHE_DIR": str(tmp_path)}
    listed = cli("cache", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.count("sm90-test-gpu") == 3 and "graph(x) of 2 ops" in listed.stdout
    stats = cli("cache", "stats", env=env).stdout
    assert "entries: 3" in stats and "limit: 10.0 GiB" in stats and "v1/torch-2.x/sm90-test-gpu  3" in stats
    pruned = cli("cache", "prune", "--max-size", "5000", env=env).stdout
    assert "removed 1 least recently used entries" in pruned
    assert "removed 2 entries" in cli("cache", "clear", env=env).stdout
    assert "(empty)" in cli("cache", "list", env=env).stdout


def test_info_says_what_device_cuda_means_under_torchrun():
    result = cli("info", env={"LOCAL_RANK": "2"})
    assert result.returncode == 0, result.stderr
    if not torch.cuda.is_available():
        assert "device=cuda means: cuda:2 (LOCAL_RANK=2)" in result.stdout
