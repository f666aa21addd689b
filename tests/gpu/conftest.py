"""GPU tests: need a CUDA GPU and an importable torch_tensorrt; skipped elsewhere."""

from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))


def _trt_importable() -> bool:
    try:
        import torch_tensorrt  # noqa: F401
    except Exception:
        return False
    return True


def pytest_collection_modifyitems(config, items):
    gpu_ok = torch.cuda.is_available() and _trt_importable()
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for item in items:
        if "tests/gpu" not in str(item.fspath).replace(os.sep, "/"):
            continue
        item.add_marker(pytest.mark.gpu)
        if not gpu_ok:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU and torch_tensorrt"))
        elif item.get_closest_marker("multi_gpu") and gpus < 2 and os.environ.get("MULTI_GPU_DRY_RUN") != "1":
            item.add_marker(pytest.mark.skip(reason="needs two or more CUDA GPUs (MULTI_GPU_DRY_RUN=1: cuda:0 twice)"))
