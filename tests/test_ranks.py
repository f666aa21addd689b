"""Several processes and ranks sharing one disk cache: one build, the rest wait and load."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import filelock
import pytest
import torch

import trt_multidev_backend as tm
from helpers import counters
from test_diskcache import SCRIPT, run_process

TESTS = os.path.dirname(__file__)


def _env(cache_dir: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRT_MULTIDEV_")}
    env.update({"PYTHONPATH": TESTS, "TRT_MULTIDEV_CACHE_DIR": str(cache_dir), **extra})
    return env


def test_torchrun_four_ranks_build_once(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "4",
           os.path.join(TESTS, "_torchrun_worker.py")]
    results = tmp_path / "results"
    results.mkdir()
    out = subprocess.run(cmd, env=_env(tmp_path / "cache", SERIALIZING_BUILD_SECONDS="2", OMP_NUM_THREADS="1",
                                       RESULT_DIR=str(results)),
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    ranks = [json.loads((results / f"rank{r}.json").read_text()) for r in range(4)]
    assert [r["local_rank"] for r in ranks] == ["0", "1", "2", "3"]
    assert all(r["ok"] for r in ranks) and all(r["out"] == ranks[0]["out"] for r in ranks)
    assert sum(r["stats"]["compiles"] for r in ranks) == 1
    assert sum(r["stats"]["disk_hits"] for r in ranks) == 3


def test_a_killed_lock_holder_does_not_block_the_others(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", SCRIPT], env=_env(tmp_path, SERIALIZING_BUILD_SECONDS="120"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lock = _wait_until_held(tmp_path, holder, deadline=time.time() + 120)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    start = time.time()
    result = run_process(tmp_path)
    assert result["ok"] and result["stats"] == counters(compiles=1)  # no wait, no entry to load
    assert time.time() - start < 60  # the dead holder's lock went with it
    with filelock.FileLock(str(lock), timeout=0):
        pass  # free


def _wait_until_held(root: Path, holder: subprocess.Popen, deadline: float) -> Path:
    """The entry lock `holder` holds (inside its slow build); fails if it never takes one."""
    while time.time() < deadline:
        assert holder.poll() is None, holder.communicate()[1][-3000:]
        for lock in root.rglob("*.lock"):
            try:
                with filelock.FileLock(str(lock), timeout=0):
                    pass
            except filelock.Timeout:
                return lock
        time.sleep(0.2)
    raise AssertionError(f"no entry lock held under {root} within the deadline")


def test_a_lock_held_too_long_times_out_and_the_build_goes_on(tmp_path):
    run_process(tmp_path)  # creates the entry and its lock file
    (entry,) = list(tmp_path.rglob("*.entry"))
    entry.unlink()
    with filelock.FileLock(str(entry.with_suffix(".lock"))):  # a holder that never lets go
        result = run_process(tmp_path, TRT_MULTIDEV_CACHE_LOCK_TIMEOUT="1")
    assert result["ok"] and result["stats"]["compiles"] == 1 and result["stats"]["lock_waits"] == 1
    assert "waited 1 s for the lock" in result["stderr"]
    assert entry.exists()  # written atomically all the same


def test_replicas_build_once_and_match_eager(tmp_path, monkeypatch):
    monkeypatch.setenv("TRT_MULTIDEV_CACHE_DIR", str(tmp_path))
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Tanh()).eval()
    x = torch.randn(3, 4)
    replicas = tm.replicate(model, ["cpu", "cpu"], example_inputs=(x,),
                            options={"delegate": "_delegates:serializing"})
    assert [str(r.device) for r in replicas] == ["cpu", "cpu"]
    with torch.no_grad():
        for replica in replicas:
            torch.testing.assert_close(replica(x), model(x))
    assert tm.stats()["cpu"]["compiles"] == 1  # one device here: dynamo reuses the first compile
    assert all(r.module is not model for r in replicas)


def test_replicate_needs_devices_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(ValueError, match="no visible GPU; pass devices"):
        tm.replicate(torch.nn.Linear(2, 2))
