"""trt_multidev: a torch.compile backend that builds Torch-TensorRT engines on the model's own GPU.

    torch.compile(model, backend="trt_multidev")

Importing this package is light: it imports neither torch_tensorrt nor tensorrt and does not
initialise CUDA. The backend is registered through the ``torch_dynamo_backends`` entry point;
from a source checkout call :func:`register` once, or pass :data:`backend` itself.
"""

from __future__ import annotations

from ._version import __version__
from .pipeline import BACKEND_NAME, TrtMultidevBackend, backend, register
from .replicas import Replica, replicate
from .errors import InputDeviceError, SettingsError, TrtMultidevError
from .settings import SETTING_SPECS, Settings, resolve_settings

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
    "SettingsError",
]


def stats() -> dict[str, dict[str, int]]:
    """Counters per device ('cuda:1', 'cpu', ...): compiles, cache_hits, fallbacks."""
    return backend.stats()


def reset() -> None:
    """Empty the in-memory cache and the counters (``torch._dynamo.reset()`` does this too)."""
    backend.reset()
