"""A TensorRT engine runner that keeps its JIT-compiled kernels across processes.

TensorRT-RTX compiles an engine's kernels for the GPU when an execution context is created: about
4 s for ResNet-50 on an H100, i.e. most of a warm start (benchmarks/engine_load_probe.py). Its
runtime cache (``IRuntimeCache``) keeps those kernels; loaded back, the context takes 0.1-0.2 s.
Torch-TensorRT 2.11's engine modules create their contexts without one, so for engines whose
shapes are all static trt_multidev runs them itself: this module deserializes the engine on the
current device, creates the context with the runtime cache, and pickles as (engine, names, cache),
so a disk-cache entry carries its kernels. Everything else stays with Torch-TensorRT's runtime.

Calls: inputs are bound by address only when an address changed (parameters keep theirs), outputs
are allocated per call on the caller's stream, and the engine runs on its own stream, ordered
after the caller's work and before the caller's next (as Torch-TensorRT's C++ runtime does). One
lock per engine: an execution context's scratch memory serves one enqueue at a time.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Sequence

import torch

__all__ = ["TensorRTEngine", "runtime_cache_supported", "unsupported_reason"]

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


_RUNTIME: dict[str, Any] = {}
_RUNTIME_LOCK = threading.Lock()


def _runtime() -> Any:
    with _RUNTIME_LOCK:
        if "runtime" not in _RUNTIME:
            trt = _tensorrt()
            _RUNTIME["runtime"] = trt.Runtime(trt.Logger(trt.Logger.WARNING))
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


def unsupported_reason(engine: Any, input_names: Sequence[str], output_names: Sequence[str]) -> str | None:
    """Why this runner cannot run a deserialized engine (then Torch-TensorRT's runtime does), or None."""
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    if sorted(names) != sorted([*input_names, *output_names]):
        return "its bindings differ from the names Torch-TensorRT recorded"
    for name in names:
        if any(int(d) < 0 for d in engine.get_tensor_shape(name)):
            return f"binding {name!r} has a dynamic shape"
        if engine.is_shape_inference_io(name):
            return f"binding {name!r} is a shape tensor"
        try:
            _torch_dtype(engine.get_tensor_dtype(name))
        except TypeError as exc:
            return str(exc)
    return None


class TensorRTEngine(torch.nn.Module):
    """Runs one static-shape TensorRT engine on the device current at construction."""

    def __init__(self, serialized_engine: bytes, input_names: Sequence[str], output_names: Sequence[str],
                 *, name: str = "", runtime_cache: bytes = b"") -> None:
        super().__init__()
        self.name = name
        self.serialized_engine = bytes(serialized_engine)
        self.input_names = list(input_names)
        self.output_names = list(output_names)
        self.device = torch.device("cuda", torch.cuda.current_device())
        self.runtime_cache_loaded = False  # True when this context's kernels came from a runtime cache
        self._lock = threading.Lock()
        engine = _runtime().deserialize_cuda_engine(self.serialized_engine)
        if engine is None:
            raise RuntimeError(f"TensorRT could not deserialize engine {name!r} on {self.device}")
        reason = unsupported_reason(engine, self.input_names, self.output_names)
        if reason is not None:
            raise ValueError(f"engine {name!r}: {reason}")
        config = engine.create_runtime_config()
        self._cache = config.create_runtime_cache()
        if runtime_cache:
            self.runtime_cache_loaded = bool(self._cache.deserialize(runtime_cache))
            if not self.runtime_cache_loaded:
                log.warning("engine %r: TensorRT refused its stored kernel cache (%d bytes); "
                            "compiling the kernels again", name, len(runtime_cache))
        config.set_runtime_cache(self._cache)
        context = engine.create_execution_context(config)
        if context is None:
            raise RuntimeError(f"TensorRT could not create an execution context for {name!r} on {self.device}")
        self._engine, self._context = engine, context
        self._inputs = [(tuple(engine.get_tensor_shape(n)), _torch_dtype(engine.get_tensor_dtype(n)))
                        for n in self.input_names]
        self._outputs = [(tuple(engine.get_tensor_shape(n)), _torch_dtype(engine.get_tensor_dtype(n)))
                         for n in self.output_names]
        for n, (shape, _) in zip(self.input_names, self._inputs):
            context.set_input_shape(n, shape)
        self._bound: list[int] = []
        self._stream = torch.cuda.Stream(self.device)

    def kernel_cache(self) -> bytes:
        """The kernels this engine's context compiled or loaded, as TensorRT serializes them."""
        with self._lock:
            return bytes(memoryview(self._cache.serialize()))

    def __reduce__(self) -> Any:
        return _rebuild, (self.serialized_engine, self.input_names, self.output_names, self.name,
                          self.kernel_cache())

    def extra_repr(self) -> str:
        return f"name={self.name!r}, device={self.device}, inputs={len(self.input_names)}, outputs={len(self.output_names)}"

    def forward(self, *inputs: Any) -> Any:
        if len(inputs) != len(self._inputs):
            raise TypeError(f"engine {self.name!r} takes {len(self._inputs)} inputs, got {len(inputs)}")
        try:
            contiguous = all(map(_is_contiguous, inputs))
        except TypeError:  # a Python number where the engine takes a 0-d tensor
            inputs = tuple(x if isinstance(x, torch.Tensor) else torch.tensor(x, device=self.device) for x in inputs)
            contiguous = all(map(_is_contiguous, inputs))
        if not contiguous:
            inputs = tuple(x.contiguous() for x in inputs)
        ptrs = list(map(_data_ptr, inputs))
        device = self.device
        outputs = [torch.empty(shape, dtype=dtype, device=device) for shape, dtype in self._outputs]
        caller = torch.cuda.current_stream(device)
        context = self._context
        with self._lock:
            if ptrs != self._bound:
                self._bind(inputs, ptrs)
            for n, out in zip(self.output_names, outputs):
                context.set_tensor_address(n, out.data_ptr())
            self._stream.wait_stream(caller)
            ok = context.execute_async_v3(self._stream.cuda_stream)
            caller.wait_stream(self._stream)
        if not ok:
            raise RuntimeError(f"TensorRT failed to run engine {self.name!r} on {device}")
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def _bind(self, inputs: Sequence[torch.Tensor], ptrs: list[int]) -> None:
        old = self._bound
        self._bound = []  # a failure below leaves nothing half-bound
        for i, (n, x, (shape, dtype)) in enumerate(zip(self.input_names, inputs, self._inputs)):
            if old and old[i] == ptrs[i]:
                continue
            if x.device != self.device or x.dtype != dtype or tuple(x.shape) != shape:
                raise RuntimeError(
                    f"engine {self.name!r} input {n!r}: expected {dtype} {list(shape)} on {self.device}, "
                    f"got {x.dtype} {list(x.shape)} on {x.device}")
            self._context.set_tensor_address(n, ptrs[i])
        self._bound = ptrs


def _rebuild(serialized_engine: bytes, input_names: list, output_names: list, name: str,
             runtime_cache: bytes) -> TensorRTEngine:
    """Unpickling: rebuilds the engine on the current device (callers hold the target's guard)."""
    return TensorRTEngine(serialized_engine, input_names, output_names, name=name, runtime_cache=runtime_cache)
