"""trt_multidev: a torch.compile backend that builds Torch-TensorRT engines on the model's own GPU.

    torch.compile(model, backend="trt_multidev")

Importing this package is light: it imports neither torch_tensorrt nor tensorrt and does not
initialise CUDA. The backend is registered through the ``torch_dynamo_backends`` entry point;
from a source checkout call :func:`register` once, or pass :data:`backend` itself.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import EngineDeviceError, InputDeviceError, SettingsError, TrtMultidevError
from .settings import SETTING_SPECS, Settings, resolve_settings

if TYPE_CHECKING:
    from .pipeline import BACKEND_NAME, TrtMultidevBackend, backend, register
    from .replicas import Replica, replicate

# Names from the modules that import torch, loaded on first use (PEP 562): the package itself
# imports no torch, so the command line can set its warning filters before torch loads.
_LAZY = {
    "BACKEND_NAME": "pipeline", "TrtMultidevBackend": "pipeline", "backend": "pipeline",
    "register": "pipeline", "Replica": "replicas", "replicate": "replicas",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})

__all__ = [
    "__version__",
    "BACKEND_NAME",
    "backend",
    "register",
    "replicate",
    "Replica",
    "reset",
    "stats",
    "Settings",
    "SETTING_SPECS",
    "resolve_settings",
    "TrtMultidevBackend",
    "TrtMultidevError",
    "InputDeviceError",
    "EngineDeviceError",
    "SettingsError",
]


def stats() -> dict[str, dict[str, int]]:
    """Counters per device ('cuda:1', 'cpu', ...): compiles, cache_hits, fallbacks."""
    from .pipeline import backend

    return backend.stats()


def reset() -> None:
    """Empty the in-memory cache and the counters (``torch._dynamo.reset()`` does this too)."""
    from .pipeline import backend

    backend.reset()
