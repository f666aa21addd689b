"""Exceptions raised by trt_multidev."""

from __future__ import annotations

from .settings import SettingsError

__all__ = ["TrtMultidevError", "InputDeviceError", "EngineDeviceError", "SettingsError"]


class TrtMultidevError(RuntimeError):
    """TensorRT could not serve a graph and `strict` forbids the fallback, or the graph cannot run."""


class InputDeviceError(TrtMultidevError):
    """A caller's tensor arrived on another device than the one its graph was compiled for."""


class EngineDeviceError(TrtMultidevError):
    """A delegate produced (or loaded) an engine on another GPU than the graph's target."""
