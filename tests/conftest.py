"""Fixtures: every test starts as a fresh process would."""

from __future__ import annotations

import os
import sys

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import trt_multidev_backend as tm

sys.path.insert(0, os.path.dirname(__file__))  # helpers, and "_delegates:..." delegate strings
tm.register()


@pytest.fixture(autouse=True)
def _fresh(monkeypatch, tmp_path_factory):
    """Every test starts as a fresh process would: no dynamo caches, no env settings, and its
    own empty disk cache (never the user's)."""
    for name in list(os.environ):
        if name.startswith("TRT_MULTIDEV_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("TRT_MULTIDEV_CACHE_DIR", str(tmp_path_factory.mktemp("trt_multidev_cache")))
    torch._dynamo.reset()
    tm.reset()
    yield
    torch._dynamo.reset()
    tm.reset()


@pytest.fixture
def fake_mode():
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    with mode, torch.no_grad():
        yield mode
