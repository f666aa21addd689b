"""A TensorRT engine runner that keeps its JIT-compiled kernels across processes.

TensorRT-RTX compiles an engine's kernels for the GPU when an execution context is created: about
4 s for ResNet-50 on an H100, i.e. most of a warm start (benchmarks/engine_load_probe.py). Its
runtime cache (``IRuntimeCache``) keeps those kernels; loaded back, the context takes 0.1-0.2 s.
Torch-TensorRT 2.11's engine modules create their contexts without one, so trt_multidev runs
engines itself: this module deserializes the engine on the current device, creates the context
with the runtime cache, and pickles as (engine, names, cache), so a disk-cache entry carries the
kernels compiled by then; kernels TensorRT specializes later for shapes met at run time are
stored again when trt_multidev resets and at exit (reuse.py). Shape tensors and data-dependent output shapes stay with Torch-TensorRT.

Calls: inputs are bound by address only when an address changed (parameters keep theirs), dynamic
dimensions are set only when they changed, outputs are allocated per call on the caller's stream,
and the engine runs on its own stream, ordered after the caller's work and before the caller's
next. One lock per engine: an execution context's scratch memory serves one enqueue at a time.
(Enqueued on the caller's stream instead, session 13, H200: on the legacy default stream
TensorRT-RTX failed to run dynamic engines with its own CUDA graphs; on callers' own streams it
was faster, but one cross-stream wait failed once in the GPU suite: benchmarks/stream_probe.py.)
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
from typing import Any, Iterator, Mapping, Sequence

import torch

from .guard import current_stream, device_guard, real_device, release_held, track, watch_collections

__all__ = ["MESSAGES", "TensorRTEngine", "TensorRTMessages", "engine_options", "runtime_cache_supported",
           "unsupported_reason"]

log = logging.getLogger("trt_multidev.engine")

_is_contiguous = torch.Tensor.is_contiguous
_data_ptr = torch.Tensor.data_ptr


def _tensorrt() -> Any:
    import torch_tensorrt  # noqa: F401  (binds `tensorrt` to the installed edition)
    import tensorrt

    return tensorrt


def runtime_cache_supported() -> bool:
    """Whether the installed TensorRT can keep JIT-compiled kernels (TensorRT-RTX's runtime cache)."""
    try:
        trt = _tensorrt()
    except Exception:
        return False
    return hasattr(getattr(trt, "ICudaEngine", None), "create_runtime_config") and hasattr(
        getattr(trt, "IRuntimeConfig", None), "create_runtime_cache")


_TRT_OBJECTS = ("_context", "_cache", "_engine")  # released in this order
_RUNTIME: dict[str, Any] = {}
_RUNTIME_LOCK = threading.Lock()


# TensorRT-RTX runtime options for the contexts created inside `engine_options` (a build, a load
# from the disk cache): they change how kernels are chosen and launched, never what is computed,
# so they are not part of a cache entry and a stored engine takes the options of the process
# that loads it.
_OPTIONS: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar("trt_multidev_engine_options",
                                                                            default={})
_SPECIALIZATION = ("lazy", "eager", "none")


@contextlib.contextmanager
def engine_options(*, kernel_specialization: str = "auto", internal_cuda_graphs: bool = False) -> Iterator[None]:
    """Options for the engines set up inside: `kernel_specialization` (lazy, eager or none: when
    TensorRT-RTX compiles kernels specialized for the shapes a dynamic engine meets; auto leaves
    TensorRT's default) and `internal_cuda_graphs` (TensorRT-RTX captures and replays each
    dynamic engine's launch itself, per shape)."""
    options = {}
    if kernel_specialization != "auto":
        if kernel_specialization not in _SPECIALIZATION:
            raise ValueError(f"kernel_specialization={kernel_specialization!r}; expected auto or one of "
                             + ", ".join(_SPECIALIZATION))
        options["kernel_specialization"] = kernel_specialization
    if internal_cuda_graphs:
        options["internal_cuda_graphs"] = "whole_graph_capture"
    token = _OPTIONS.set(options)
    try:
        yield
    finally:
        _OPTIONS.reset(token)


def _enum_member(trt: Any, enum_name: str, member: str) -> Any:
    kind = getattr(trt, enum_name, None)
    value = getattr(kind, member.upper(), None) if kind is not None else None
    if value is None:
        raise RuntimeError(f"this TensorRT has no {enum_name}.{member.upper()}")
    return value


_WARNED_OPTIONS: set[str] = set()


# option -> (runtime-config attribute, TensorRT enum of its values)
_RUNTIME_CONFIG = {
    "kernel_specialization": ("dynamic_shapes_kernel_specialization_strategy",
                              "DynamicShapesKernelSpecializationStrategy"),
    "internal_cuda_graphs": ("cuda_graph_strategy", "CudaGraphStrategy"),
}


def _configure(config: Any, name: str, dynamic: bool) -> list[str]:
    """Apply the current engine options to a runtime config; what was applied, for the log.
    Both options act on dynamic shapes only. Options the installed TensorRT lacks are warned
    once and skipped (they change speed only)."""
    options = _OPTIONS.get()
    if not dynamic or not options:
        return []
    trt = _tensorrt()
    applied = []
    for key, value in options.items():
        attr, enum_name = _RUNTIME_CONFIG[key]
        try:
            if not hasattr(config, attr):
                raise RuntimeError(f"this TensorRT's runtime config has no {attr}")
            setattr(config, attr, _enum_member(trt, enum_name, value))
            applied.append(f"{attr}={value}")
        except Exception as exc:
            if key not in _WARNED_OPTIONS:
                _WARNED_OPTIONS.add(key)
                log.warning("trt_multidev: %s=%s cannot take effect (%s); engines run without it", key, value, exc)
    if applied:
        log.debug("engine %r: %s", name, ", ".join(applied))
    return applied


class TensorRTMessages:
    """Where TensorRT's messages about the runner's engines go: the logger
    ``trt_multidev.tensorrt`` rather than stderr. Errors, and the first of each distinct warning,
    at their level; a warning met again at DEBUG (a runtime warning TensorRT gives at every call
    would otherwise come at every call). TensorRT reports a failed load, context or enqueue only
    as None or False, so the latest error on each thread is kept for the exception raised next."""

    def __init__(self, most: int = 1024) -> None:
        self._warned: set[str] = set()
        self._most = most  # distinct warnings remembered; beyond that, new ones all pass
        self._local = threading.local()
        self.log = logging.getLogger("trt_multidev.tensorrt")

    def emit(self, level: int, msg: str) -> None:
        if level >= logging.ERROR:
            self._local.error = msg
        elif level == logging.WARNING:
            if msg in self._warned:
                level = logging.DEBUG
            elif len(self._warned) < self._most:
                self._warned.add(msg)
        self.log.log(level, "TensorRT: %s", msg)

    def forget(self) -> None:
        """Before a call whose failure may follow: an earlier error is not its cause."""
        self._local.error = None

    def said(self) -> str:
        """The latest error on this thread, as a second line for an exception ('' if none); taken."""
        msg, self._local.error = getattr(self._local, "error", None), None
        return f"\nTensorRT said: {msg}" if msg else ""


MESSAGES = TensorRTMessages()


def _logger(trt: Any) -> Any:
    """A TensorRT logger handing its messages to MESSAGES; VERBOSE ones are dropped unread."""
    severity = trt.ILogger.Severity
    levels = {severity.INTERNAL_ERROR: logging.ERROR, severity.ERROR: logging.ERROR,
              severity.WARNING: logging.WARNING, severity.INFO: logging.DEBUG}

    class RuntimeLogger(trt.ILogger):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, level: Any, msg: str) -> None:
            found = levels.get(level)
            if found is not None:
                MESSAGES.emit(found, msg)

    return RuntimeLogger()


def _runtime() -> Any:
    with _RUNTIME_LOCK:
        if "runtime" not in _RUNTIME:
            trt = _tensorrt()
            _RUNTIME["logger"] = _logger(trt)  # TensorRT keeps a reference only: held here
            _RUNTIME["runtime"] = trt.Runtime(_RUNTIME["logger"])
        return _RUNTIME["runtime"]


def _torch_dtype(trt_dtype: Any) -> torch.dtype:
    trt = _tensorrt()
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32,
             trt.int8: torch.int8, trt.bool: torch.bool}
    for name, dtype in (("bfloat16", torch.bfloat16), ("int64", torch.int64), ("uint8", torch.uint8)):
        if hasattr(trt, name):
            table[getattr(trt, name)] = dtype
    if trt_dtype not in table:
        raise TypeError(f"TensorRT dtype {trt_dtype} has no torch equivalent here")
    return table[trt_dtype]


def unsupported_reason(engine: Any, input_names: Sequence[str], output_names: Sequence[str],
                       *, data_dependent: bool = False) -> str | None:
    """Why this runner cannot run a deserialized engine (then Torch-TensorRT's runtime does), or None.
    `data_dependent`: outputs whose shapes depend on values (Torch-TensorRT's output allocator)."""
    if data_dependent:
        return "its output shapes depend on the data"
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    if sorted(names) != sorted([*input_names, *output_names]):
        return "its bindings differ from the names Torch-TensorRT recorded"
    for name in names:
        if engine.is_shape_inference_io(name):
            return f"binding {name!r} is a shape tensor"
        try:
            _torch_dtype(engine.get_tensor_dtype(name))
        except TypeError as exc:
            return str(exc)
    return None


class TensorRTEngine(torch.nn.Module):
    """Runs one TensorRT engine on the device current at construction. Dynamic dimensions (an
    optimization profile) are set per call when they change; output shapes follow from them."""

    def __init__(self, serialized_engine: bytes, input_names: Sequence[str], output_names: Sequence[str],
                 *, name: str = "", runtime_cache: bytes = b"", data_dependent: bool = False,
                 device: torch.device | None = None) -> None:
        super().__init__()
        self.name = name
        self.serialized_engine = bytes(serialized_engine)
        self.input_names = list(input_names)
        self.output_names = list(output_names)
        # Without a device: the one the caller's guard made current (for TensorRT: the runtime's).
        self.device = torch.device("cuda", real_device() if device is None else device.index)
        self.runtime_cache_loaded = False  # True when this context's kernels came from a runtime cache
        self._lock = threading.Lock()
        watch_collections()
        with device_guard(self.device):
            try:
                self._setup(runtime_cache, data_dependent)
            except BaseException:
                self.release()  # what was made so far goes on its own device, now
                raise
        track(self)

    def _setup(self, runtime_cache: bytes, data_dependent: bool) -> None:
        name = self.name
        if real_device() != self.device.index:
            raise RuntimeError(f"engine {name!r}: the CUDA runtime is on cuda:{real_device()}, not {self.device}")
        runtime = _runtime()
        MESSAGES.forget()
        engine = self._engine = runtime.deserialize_cuda_engine(self.serialized_engine)
        if engine is None:
            raise RuntimeError(f"TensorRT could not deserialize engine {name!r} on {self.device}{MESSAGES.said()}")
        reason = unsupported_reason(engine, self.input_names, self.output_names, data_dependent=data_dependent)
        if reason is not None:
            raise ValueError(f"engine {name!r}: {reason}")
        self._inputs = [(tuple(engine.get_tensor_shape(n)), _torch_dtype(engine.get_tensor_dtype(n)))
                        for n in self.input_names]
        self._outputs = [(tuple(engine.get_tensor_shape(n)), _torch_dtype(engine.get_tensor_dtype(n)))
                         for n in self.output_names]
        # Dynamic inputs (a -1 in the engine's shape) get their shape per call; the others once.
        self._dynamic = [i for i, (shape, _) in enumerate(self._inputs) if any(d < 0 for d in shape)]
        config = engine.create_runtime_config()
        self.runtime_options = tuple(_configure(config, name, bool(self._dynamic)))
        self._cache = config.create_runtime_cache()
        if runtime_cache:
            self.runtime_cache_loaded = bool(self._cache.deserialize(runtime_cache))
            if not self.runtime_cache_loaded:
                log.warning("engine %r: TensorRT refused its stored kernel cache (%d bytes); "
                            "compiling the kernels again", name, len(runtime_cache))
        config.set_runtime_cache(self._cache)
        MESSAGES.forget()
        context = self._context = engine.create_execution_context(config)
        del config
        if context is None:
            raise RuntimeError(f"TensorRT could not create an execution context for {name!r} on {self.device}"
                               f"{MESSAGES.said()}")
        for i, (n, (shape, _)) in enumerate(zip(self.input_names, self._inputs)):
            if i not in self._dynamic:
                context.set_input_shape(n, shape)
        self._shapes: tuple = ()  # the dynamic inputs' shapes the context holds now
        self._output_shapes = {(): [shape for shape, _ in self._outputs]} if not self._dynamic else {}
        self._bound: list[int] = []
        self._stream = torch.cuda.Stream(self.device)
        # Reused under the lock: a wait is enqueued against the event's latest record.
        self._ready, self._done = torch.cuda.Event(), torch.cuda.Event()
        self._placeholder = torch.empty(1, device=self.device)  # an address for empty tensors
        # The size of the kernels last stored (loaded with the engine, or pickled since): more
        # now means TensorRT compiled kernels after that (shapes met later), worth storing again.
        # Taken from the bytes loaded rather than serialized again: a load stays as fast as it was.
        self._stored_kernels = len(runtime_cache) if self.runtime_cache_loaded else 0

    @property
    def dynamic(self) -> bool:
        """Whether some input's shape is set per call (an optimization profile)."""
        return bool(self._dynamic)

    def release(self) -> None:
        """Release the TensorRT objects (context, kernel cache, engine, in that order) on this
        engine's own device; the caller's device stays current. Runs when the engine is
        collected and at interpreter exit; idempotent. A released engine cannot run."""
        release_held(self.device, self.__dict__, _TRT_OBJECTS)

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:  # a half-built engine, or interpreter shutdown
            pass

    def kernel_cache(self) -> bytes:
        """The kernels this engine's context compiled or loaded, as TensorRT serializes them."""
        with self._lock:
            return bytes(memoryview(self._cache.serialize()))

    def kernels_grown(self) -> bool:
        """Whether the context holds kernels compiled since they were last stored (pickled or
        loaded): kernels TensorRT-RTX specialized for shapes met after the build."""
        return len(self.kernel_cache()) > self._stored_kernels

    def __reduce__(self) -> Any:
        kernels = self.kernel_cache()
        self._stored_kernels = len(kernels)
        return _rebuild, (self.serialized_engine, self.input_names, self.output_names, self.name, kernels)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, device={self.device}, inputs={len(self.input_names)}, outputs={len(self.output_names)}"

    def forward(self, *inputs: Any) -> Any:
        if len(inputs) != len(self._inputs):
            raise TypeError(f"engine {self.name!r} takes {len(self._inputs)} inputs, got {len(inputs)}")
        try:
            contiguous = all(map(_is_contiguous, inputs))
        except TypeError:  # a Python number (a SymInt's value) where the engine takes a tensor of one element
            inputs = tuple(x if isinstance(x, torch.Tensor) else self._scalar(x, i) for i, x in enumerate(inputs))
            contiguous = all(map(_is_contiguous, inputs))
        if not contiguous:
            inputs = tuple(x.contiguous() for x in inputs)
        ptrs = list(map(_data_ptr, inputs))
        shapes = tuple(tuple(inputs[i].shape) for i in self._dynamic)
        device = self.device
        caller = current_stream(device)
        context = self._context
        with self._lock:
            if shapes != self._shapes:
                self._set_shapes(shapes)
            if ptrs != self._bound:
                self._bind(inputs, ptrs)
            outputs = [torch.empty(shape, dtype=dtype, device=device)
                       for shape, (_, dtype) in zip(self._output_shapes[shapes], self._outputs)]
            for n, out in zip(self.output_names, outputs):
                context.set_tensor_address(n, out.data_ptr() or self._placeholder.data_ptr())
            self._ready.record(caller)
            self._stream.wait_event(self._ready)
            MESSAGES.forget()
            ok = context.execute_async_v3(self._stream.cuda_stream)
            self._done.record(self._stream)
            caller.wait_event(self._done)
        if not ok:
            raise RuntimeError(f"TensorRT failed to run engine {self.name!r} on {device}{MESSAGES.said()}")
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def _scalar(self, value: Any, i: int) -> torch.Tensor:
        """A Python number as input `i`: 0-d, or [1] where the engine declares that (Torch-TensorRT
        gives a SymInt input one dimension of size 1)."""
        shape, dtype = self._inputs[i]
        return torch.tensor(value, dtype=dtype, device=self.device).reshape(shape if shape == (1,) else ())

    def _set_shapes(self, shapes: tuple) -> None:
        self._shapes = ()  # a failure below leaves the shapes to be set again
        for i, shape in zip(self._dynamic, shapes):
            name = self.input_names[i]
            if len(shape) != len(self._inputs[i][0]) or not self._context.set_input_shape(name, shape):
                low, _, high = self._engine.get_tensor_profile_shape(name, 0)
                raise RuntimeError(f"engine {self.name!r} input {name!r}: shape {list(shape)} is outside the "
                                   f"range it was built for, {list(low)} to {list(high)}")
        if shapes not in self._output_shapes:
            if len(self._output_shapes) >= 4096:  # bounded: shapes seen by a long-running server
                self._output_shapes.clear()
            found = [tuple(self._context.get_tensor_shape(n)) for n in self.output_names]
            if any(d < 0 for shape in found for d in shape):
                raise RuntimeError(f"engine {self.name!r}: TensorRT cannot tell its output shapes "
                                   f"for input shapes {[list(x) for x in shapes]}")
            self._output_shapes[shapes] = found
        self._shapes = shapes

    def _bind(self, inputs: Sequence[torch.Tensor], ptrs: list[int]) -> None:
        old = self._bound
        self._bound = []  # a failure below leaves nothing half-bound
        for i, (n, x, (shape, dtype)) in enumerate(zip(self.input_names, inputs, self._inputs)):
            if old and old[i] == ptrs[i]:
                continue
            if (x.device != self.device or x.dtype != dtype or x.dim() != len(shape)
                    or any(d >= 0 and d != e for d, e in zip(shape, x.shape))):
                raise RuntimeError(
                    f"engine {self.name!r} input {n!r}: expected {dtype} {list(shape)} on {self.device}, "
                    f"got {x.dtype} {list(x.shape)} on {x.device}")
            self._context.set_tensor_address(n, ptrs[i] or self._placeholder.data_ptr())
        self._bound = ptrs


def _rebuild(serialized_engine: bytes, input_names: list, output_names: list, name: str,
             runtime_cache: bytes) -> TensorRTEngine:
    """Unpickling: rebuilds the engine on the current device (callers hold the target's guard,
    which makes it current for PyTorch and the CUDA runtime alike)."""
    return TensorRTEngine(serialized_engine, input_names, output_names, name=name, runtime_cache=runtime_cache)
