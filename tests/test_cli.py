from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from trt_multidev_backend import __version__
from trt_multidev_backend.cli import main


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
    assert result.returncode == 0 and result.stdout == f"trt-multidev {__version__}\n"
    assert "Failed to initialize NumPy" not in result.stderr


def test_cache_commands_list_stats_prune_clear(tmp_path):
    from trt_multidev_backend.diskcache import DiskCache

    store = DiskCache(tmp_path, 10**9)
    ns = store.namespace({"torch": "2.x"}, "sm90-test-gpu")
    for i, last_use in zip(range(3), (2000, 1000, 3000)):  # entry 1 is the least recently used
        path = store.write(ns, f"{i}" * 64, bytes(2048), {"graph": f"graph(x) of {i} ops", "device": "cuda:1"})
        os.utime(path, (last_use, last_use))
    env = {"TRT_MULTIDEV_CACHE_DIR": str(tmp_path)}
    listed = cli("cache", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.count("sm90-test-gpu") == 3 and "graph(x) of 2 ops" in listed.stdout
    stats = cli("cache", "stats", env=env).stdout
    assert "entries: 3" in stats and "limit: 10.0 GiB" in stats and "v1/torch-2.x/sm90-test-gpu  3" in stats
    size = next(store.entries()).size  # every entry has the same size here
    pruned = cli("cache", "prune", "--max-size", "5000", env=env).stdout
    assert pruned.strip() == (f"removed 1 least recently used entries ({size / 1024:.1f} KiB); "
                              f"{2 * size / 1024:.1f} KiB left of 4.9 KiB")
    assert sorted(e.key[0] for e in store.entries()) == ["0", "2"]
    assert cli("cache", "clear", env=env).stdout.strip() == f"removed 2 entries from {tmp_path}"
    assert "(empty)" in cli("cache", "list", env=env).stdout and list(store.entries()) == []


@pytest.mark.parametrize("action", ["list", "stats", "clear", "prune"])
def test_cache_commands_report_an_unusable_directory(tmp_path, monkeypatch, capsys, action):
    (tmp_path / "afile").write_text("not a directory")
    bad = tmp_path / "afile" / "sub"
    monkeypatch.setenv("TRT_MULTIDEV_CACHE_DIR", str(bad))
    assert main(["cache", action]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (f"error: disk cache directory {bad} (env TRT_MULTIDEV_CACHE_DIR) cannot be used: "
                   f"[Errno 20] Not a directory: '{bad}'\n")
    assert main(["cache", action, "--dir", str(tmp_path / "afile")]) == 1
    assert f"disk cache directory {tmp_path / 'afile'} (--dir) cannot be used: [Errno 20] Not a directory" in (
        capsys.readouterr().err)
    assert (tmp_path / "afile").read_text() == "not a directory"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads any directory")
def test_cache_list_reports_a_directory_without_permissions(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0)
    try:
        assert main(["cache", "list", "--dir", str(locked)]) == 1
    finally:
        locked.chmod(0o700)
    assert f"disk cache directory {locked} (--dir) cannot be used: [Errno 13] Permission denied" in (
        capsys.readouterr().err)


def test_prune_with_a_malformed_size_is_a_usage_error(tmp_path):
    result = cli("cache", "prune", "--max-size", "lots", env={"TRT_MULTIDEV_CACHE_DIR": str(tmp_path)})
    assert result.returncode == 2 and result.stdout == ""
    assert "Traceback" not in result.stderr and "_Invalid" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "trt-multidev cache: error: argument --max-size: invalid value 'lots': "
        "expected bytes, or sizes like 20GB / 512MiB")


@pytest.mark.parametrize("size, shown", [("512MiB", "512.0 MiB"), ("20GB", "18.6 GiB"), ("5000", "4.9 KiB")])
def test_prune_accepts_bytes_and_sizes(tmp_path, capsys, size, shown):
    assert main(["cache", "prune", "--dir", str(tmp_path), "--max-size", size]) == 0
    assert capsys.readouterr().out.strip() == f"removed 0 least recently used entries (0 B); 0 B left of {shown}"


def _usage_error(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(list(argv))
    assert exit_.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize("argv, message", [
    (("--device", "gpu"), "argument --device: invalid value 'gpu': expected 'cuda' (the current CUDA device), "
                          "'cuda:N', an index N, or 'cpu'"),
    (("--batch", "0"), "argument --batch: invalid value '0': expected an integer >= 1"),
    (("--batch", "two"), "argument --batch: invalid value 'two': expected an integer >= 1"),
    (("--iters", "-1"), "argument --iters: invalid value '-1': expected an integer >= 1"),
])
def test_demo_rejects_bad_arguments_clearly(capsys, argv, message):
    assert _usage_error(capsys, "demo", *argv) == f"trt-multidev demo: error: {message}"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda:7", "cuda", "0"])
def test_demo_on_a_gpu_that_is_not_here_says_why(capsys, device):
    why = ("this torch is a CPU-only build" if torch.version.cuda is None
           else f"this torch is built for CUDA {torch.version.cuda}, but no GPU is visible")
    assert _usage_error(capsys, "demo", "--device", device) == (
        f"trt-multidev demo: error: argument --device: invalid value '{device}': no CUDA device here: {why}")


@pytest.mark.skipif(importlib.util.find_spec("numpy") is not None,
                    reason="numpy is installed: torch has no NumPy warning to silence")
def test_cli_is_silent_about_missing_numpy_and_only_that():
    result = cli("info")
    assert result.returncode == 0, result.stderr
    assert "Failed to initialize NumPy" not in result.stderr
    assert result.stderr == ""
    other = subprocess.run([sys.executable, "-c", "import trt_multidev_backend.cli, warnings; warnings.warn('other')"],
                           capture_output=True, text=True, timeout=300)
    assert "UserWarning: other" in other.stderr  # every other warning still shows


def test_info_says_what_device_cuda_means_under_torchrun():
    result = cli("info", env={"LOCAL_RANK": "2"})
    assert result.returncode == 0, result.stderr
    # cuda:LOCAL_RANK when that many GPUs are visible (or none: a CPU machine), else the current one.
    count = torch.cuda.device_count() if torch.cuda.is_available() else None
    meaning = "cuda:2 (LOCAL_RANK=2)" if count is None or count > 2 else "cuda:0 (current device)"
    assert f"device=cuda means: {meaning}" in result.stdout.splitlines()


@pytest.mark.skipif(torch.cuda.device_count() >= 2, reason="checks a machine with fewer than two GPUs")
def test_demo_pipeline_needs_two_gpus(capsys):
    from trt_multidev_backend.cli import main

    assert main(["demo", "--pipeline"]) == 2
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    assert capsys.readouterr().err.strip() == (
        f"trt-multidev demo: error: --pipeline needs two or more visible GPUs ({count} visible)")


def test_the_pipeline_demo_model_puts_each_stage_on_its_device():
    from trt_multidev_backend.cli import _PipelineDemo

    devices = [torch.device("cpu"), torch.device("meta"), torch.device("cpu")]
    model = _PipelineDemo(devices)
    assert [next(s.parameters()).device.type for s in model.stages if list(s.parameters())] == ["cpu", "meta", "cpu"]
    assert sum(len(s) for s in model.stages) == 6  # every layer of the demo MLP, once
