"""Exceptions raised by trt_multidev, and how they reach a ``torch.compile`` caller as themselves."""

from __future__ import annotations

import functools
import sys
import threading
import traceback
from typing import Any, Callable, TypeVar

from .settings import SettingsError

__all__ = ["TrtMultidevError", "InputDeviceError", "EngineDeviceError", "SettingsError", "through_dynamo"]

_F = TypeVar("_F", bound=Callable[..., Any])


class TrtMultidevError(RuntimeError):
    """TensorRT could not serve a graph and `strict` forbids the fallback, or the graph cannot run."""


class InputDeviceError(TrtMultidevError):
    """A caller's tensor arrived on another device than the one its graph was compiled for."""


class EngineDeviceError(TrtMultidevError):
    """A delegate produced (or loaded) an engine on another GPU than the graph's target."""


def through_dynamo(fn: _F) -> _F:
    """Make a backend's SettingsError and TrtMultidevError reach the ``torch.compile`` caller as
    themselves.

    Dynamo wraps whatever a backend raises in ``BackendCompilerFailed`` (not a ValueError, no
    ``__cause__``, ours only in ``.inner_exception``) and appends advice meant for PyTorch bug
    reports, except for its ``ShortenTraceback`` family, which it re-raises as is, with the
    dynamo frames cut (torch 2.6 and later; checked on 2.11 and 2.13). So while dynamo compiles,
    one of our errors leaves as an instance of a subclass of its own class and of
    ``ShortenTraceback``: ``except SettingsError`` (or ``ValueError``, ``TrtMultidevError``) catches
    it and the traceback ends with our message. Called directly, or on a torch without
    ``ShortenTraceback``, the plain class is raised unchanged.
    """

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (SettingsError, TrtMultidevError) as exc:
            passing = _passing(exc)
            if passing is None:
                raise
            raise passing from exc.__cause__

    return call  # type: ignore[return-value]


def _passing(exc: BaseException) -> BaseException | None:
    """`exc` as an instance dynamo lets through, or None outside a dynamo compile."""
    if "torch._dynamo" not in sys.modules:
        return None  # nobody is compiling: importing dynamo here would only cost time
    try:
        from torch._dynamo.exc import ShortenTraceback
        from torch._guards import TracingContext
    except ImportError:
        return None
    if isinstance(exc, ShortenTraceback) or TracingContext.try_get() is None:
        return None  # already passing (a nested compile), or the backend was called directly
    passing = _passing_class(type(exc), ShortenTraceback)(*exc.args)
    passing.__dict__.update(exc.__dict__)
    tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None  # from fn's frame on
    # Dynamo cuts the traceback above this frame: the user's call, then our frames.
    passing.first_useful_frame = tb.tb_frame if tb is not None else None
    cause = exc.__cause__
    if cause is not None and hasattr(passing, "add_note"):
        # Dynamo re-raises with `from None`, which drops the chained cause: keep its traceback.
        passing.add_note("Caused by (torch.compile does not show chained exceptions):\n"
                         + "".join(traceback.format_exception(cause)).rstrip())
    return passing.with_traceback(tb)


_PASSING: dict[type, type] = {}
_PASSING_LOCK = threading.Lock()


def _passing_class(cls: type, shorten: type) -> type:
    """A subclass of `cls` and of dynamo's ShortenTraceback, made once per class. It reads as
    `cls` in tracebacks and pickles as `cls`."""
    with _PASSING_LOCK:
        made = _PASSING.get(cls)
        if made is not None:
            return made

        def __init__(self: Any, *args: Any) -> None:
            shorten.__init__(self, *args, first_useful_frame=None)

        def __str__(self: Any) -> str:
            return cls.__str__(self).rstrip("\n")  # dynamo appends a newline to the message

        def __reduce__(self: Any) -> tuple[Any, ...]:
            return cls, (str(self),)

        def _no_stack(self: Any) -> Any:
            raise AttributeError("real_stack")

        def _ignore(self: Any, value: Any) -> None:
            pass

        made = type(cls.__name__, (cls, shorten), {
            "__module__": cls.__module__,
            "__qualname__": cls.__qualname__,
            "__doc__": cls.__doc__,
            "__init__": __init__,
            "__str__": __str__,
            "__reduce__": __reduce__,
            # Dynamo attaches a user stack to exceptions leaving its tracing contexts and then
            # appends "Set TORCHDYNAMO_VERBOSE=1 ... if you're reporting a bug to PyTorch" to the
            # message. Neither helps with a setting or a strict-mode failure: no stack is kept.
            "real_stack": property(_no_stack, _ignore),
        })
        _PASSING[cls] = made
        return made
