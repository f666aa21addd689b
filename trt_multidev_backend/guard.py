"""Device guards and releases: the CUDA device that is really current, switched for a scope and
restored after it, also when TensorRT objects are released; and the caller's current stream on a
device, as the per-call paths read it.

PyTorch keeps its own view of the current device. To avoid creating CUDA contexts, leaving a
``torch.cuda.device`` block may only *note* the device to restore (c10's ``targetDeviceIndex``)
while the CUDA runtime stays on another GPU. TensorRT and Torch-TensorRT read the runtime, and
some of their objects switch it without switching back (Torch-TensorRT's C++ engine calls
``cudaSetDevice`` when it is made; releasing engines switches to their GPU). So a guard here
reads and restores both: PyTorch's view and the runtime's real device.

Everything goes through :data:`CUDA` (a :class:`CudaDevices`). CPU tests put a fake runtime
there, whose TensorRT-like objects switch "the current device" when released, and watch what a
guard, a release or a build does to it.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import gc
import logging
import threading
import weakref
from typing import Any, Callable, Iterator

import torch

__all__ = [
    "CudaDevices",
    "CUDA",
    "cuda_usable",
    "guard_index",
    "device_guard",
    "release_on",
    "release_held",
    "Releaser",
    "watch_collections",
    "real_device",
    "current_stream",
]

log = logging.getLogger("trt_multidev.guard")


class CudaDevices:
    """The current-device operations of the CUDA runtime and of PyTorch, in one place.

    ``view()`` is PyTorch's current device (``torch.cuda.current_device()``); ``real()`` is the
    CUDA runtime's (``cudaGetDevice``), which TensorRT uses. They differ after PyTorch noted a
    device lazily, or after a library switched the runtime behind PyTorch's back. The
    underscored primitives are all a fake runtime (CPU tests) replaces.
    """

    def __init__(self) -> None:
        self._cudart: Any = None
        self._get: Any = None
        self._lib_loaded = False
        self._slots = threading.local()  # a c_int per thread for cudaGetDevice to write into
        self._view: Callable[[], int] = getattr(torch._C, "_cuda_getDevice", lambda: -1)
        self._exchange: Callable[[int], int] = getattr(torch._C, "_cuda_exchangeDevice", lambda index: -1)
        self._maybe_exchange: Callable[[int], int] = getattr(torch._C, "_cuda_maybeExchangeDevice",
                                                             self._exchange)
        self._has_context: Callable[[int], bool] = getattr(torch._C, "_cuda_hasPrimaryContext", lambda index: True)

    def available(self) -> bool:
        """True when real CUDA work can run here (a CUDA build that sees at least one GPU)."""
        return torch.cuda.is_available()

    def initialized(self) -> bool:
        return torch.cuda.is_initialized()

    def view(self) -> int:
        return self._view()

    def real(self) -> int:
        """The CUDA runtime's current device, or PyTorch's view when the runtime cannot be asked."""
        index = self._get_real()
        return index if index >= 0 else self._view()

    def enter(self, index: int) -> None:
        """Make `index` current for PyTorch and for the runtime (c10's exchange always leaves
        the runtime on `index`, also when PyTorch had only noted another device)."""
        self._exchange(index)

    def restore(self, view: int, real: int) -> None:
        """Give back the runtime's device, then PyTorch's view, as they were. Like leaving
        ``torch.cuda.device``, this creates no CUDA context on a GPU that had none. (When PyTorch
        had only noted a GPU that has a context by now, the runtime follows PyTorch's view.)"""
        if real >= 0 and self._get_real() != real and self._has_context(real):
            self._set_real(real)
        if self._view() != view:
            self._maybe_exchange(view)

    # -- the runtime's own calls -----------------------------------------------------------
    def _get_real(self) -> int:
        get = self._get if self._lib_loaded else self._load()
        if get is None:
            return -1
        slot = self._slots.__dict__.get("slot")
        if slot is None:
            value = ctypes.c_int(-1)
            slot = self._slots.slot = (value, ctypes.byref(value))
        return slot[0].value if get(slot[1]) == 0 else -1

    def _set_real(self, index: int) -> None:
        if self._cudart is not None:
            self._cudart.cudaSetDevice(index)

    def _load(self) -> Any:
        """cudaGetDevice of the libcudart that PyTorch loaded: the device every CUDA runtime in
        the process sees, TensorRT's included, since they share the driver's current context."""
        self._cudart = _load_cudart()
        self._get = self._cudart.cudaGetDevice if self._cudart is not None else None
        self._lib_loaded = True
        return self._get


def _load_cudart() -> Any:
    if torch.version.cuda is None:
        return None
    paths = []
    try:
        with open("/proc/self/maps") as maps:
            paths = sorted({line.split()[-1] for line in maps if "libcudart.so" in line and "/" in line})
    except OSError:
        pass
    major = torch.version.cuda.split(".")[0]
    for name in [*paths, f"libcudart.so.{major}", "libcudart.so"]:
        try:
            lib = ctypes.CDLL(name)
            _ = (lib.cudaGetDevice, lib.cudaSetDevice)  # both present, or try the next
            return lib
        except (OSError, AttributeError):
            continue
    log.debug("libcudart not found; guards use PyTorch's view of the current device only")
    return None


CUDA = CudaDevices()


def cuda_usable() -> bool:
    """True when real CUDA work can run here (a CUDA build that sees at least one GPU)."""
    return CUDA.available()


def real_device() -> int:
    """The CUDA runtime's current device (what TensorRT builds and loads on)."""
    return CUDA.real()


def guard_index(device: torch.device | None) -> int:
    """The CUDA index a guard for `device` makes current, or -1 when there is nothing to guard
    (CPU targets, FakeTensor devices where CUDA cannot run)."""
    if device is None or device.type != "cuda" or device.index is None or not CUDA.available():
        return -1
    return device.index


_stream_data: Callable[[int], tuple[int, int, int]] | None = getattr(torch._C, "_cuda_getCurrentStream", None)
_STREAMS: dict[tuple[int, int, int], Any] = {}  # (stream id, device index, device type) -> torch.cuda.Stream


def current_stream(device: torch.device) -> Any:
    """``torch.cuda.current_stream(device)`` for paths run on every call, where CUDA is set up
    (engine runs, CUDA-graph replays): the same stream, as one Stream object per stream instead
    of a new one per call, so the same stream is also the same object. On an H200 host
    (session 12) a replayed call took 32.8 us of host time this way against 39.4 us before."""
    if _stream_data is None or device.index is None:
        return torch.cuda.current_stream(device)
    data = _stream_data(device.index)
    stream = _STREAMS.get(data)
    if stream is None:
        if len(_STREAMS) >= 256:  # bounded: a server that makes a stream per request
            _STREAMS.clear()
        stream = _STREAMS[data] = torch.cuda.Stream(stream_id=data[0], device_index=data[1], device_type=data[2])
    return stream


@contextlib.contextmanager
def device_guard(device: torch.device | None) -> Iterator[None]:
    """Make `device` current for the block (for PyTorch and the CUDA runtime) and give back the
    caller's device after it, also when something inside switched it."""
    index = guard_index(device)
    if index < 0:
        yield
        return
    cuda = CUDA
    view, real = cuda.view(), cuda.real()
    if view != index or real != index:
        cuda.enter(index)
    try:
        yield
    finally:
        cuda.restore(view, real)


def release_on(device: torch.device | None, objects: list[Any]) -> None:
    """Drop `objects` (TensorRT engines, contexts, caches; the caller's last references), in
    order, with `device` current: releasing a TensorRT object may switch the device to its own,
    and the guard switches back."""
    with device_guard(device):
        while objects:
            objects.pop(0)


def release_held(device: torch.device | None, holder: dict, names: tuple[str, ...]) -> None:
    """Take what an owner holds under `names` out of its `holder` dict and release it on `device`
    (`release_on`); on an error (a CUDA error, interpreter shutdown) the objects are dropped anyway."""
    objects = [holder.pop(n) for n in names if n in holder]
    try:
        release_on(device, objects)
    finally:
        objects.clear()


class Releaser:
    """Releases the TensorRT objects an owner (a Torch-TensorRT engine module) holds under
    `names`, on `device`, when the owner is collected (or at interpreter exit).

    It sits in the owner's ``__dict__`` and holds that dict, so the two go in one garbage
    collection. Python runs finalizers before it clears anything (PEP 442): this one still finds
    the objects in the dict, takes them out and drops the last references inside the guard,
    whatever order the collector clears the rest in."""

    __slots__ = ("device", "holder", "names", "__weakref__")

    def __init__(self, device: torch.device, holder: dict, names: tuple[str, ...]) -> None:
        self.device = device
        self.holder = holder
        self.names = names
        _LIVE.add(self)

    def release(self) -> None:
        release_held(self.device, self.holder, self.names)

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:  # interpreter shutdown, a CUDA error: nothing left to protect
            pass

    def __reduce__(self) -> Any:
        return (_empty_releaser, ())

    def __deepcopy__(self, memo: dict) -> "Releaser":
        return _empty_releaser()


def _empty_releaser() -> Releaser:
    return Releaser(torch.device("cpu"), {}, ())


_LIVE: "weakref.WeakSet[Any]" = weakref.WeakSet()


def track(owner: Any) -> None:
    """Remember an object with a ``release()`` method, to release it at interpreter exit
    (while CUDA and TensorRT are still loaded)."""
    _LIVE.add(owner)


@atexit.register
def _release_all() -> None:
    for owner in list(_LIVE):
        try:
            owner.release()
        except Exception:
            pass


# -- a safety net for what trt_multidev does not own ---------------------------------------------
_WATCH = threading.local()
_WATCHING = False
_WATCH_LOCK = threading.Lock()
restored_after_collections = 0  # how often a collection left another device current (then restored)


def watch_collections() -> None:
    """After every garbage collection, give back the device that was current before it.

    Objects trt_multidev does not own (Torch-TensorRT's build-time objects, a user's engines)
    may switch the device when they are collected, at any point of any thread: in the middle of
    the next build, too. Installed once, when the first engine is built or loaded."""
    global _WATCHING
    with _WATCH_LOCK:
        if _WATCHING:
            return
        _WATCHING = True
        gc.callbacks.append(_on_collection)


def _on_collection(phase: str, info: dict) -> None:
    global restored_after_collections
    try:
        if phase == "start":
            if CUDA.initialized():
                _WATCH.before = (CUDA.view(), CUDA.real())
            else:
                _WATCH.before = None
            return
        before = getattr(_WATCH, "before", None)
        _WATCH.before = None
        if before is not None and (CUDA.view(), CUDA.real()) != before:
            restored_after_collections += 1
            CUDA.restore(*before)
    except Exception:  # never let a collection fail
        pass
