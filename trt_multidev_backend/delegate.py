"""Delegates: what actually compiles a placed graph.

A delegate is any callable ``delegate(gm, example_inputs, *, device, settings) -> callable``.
It is called inside a ``torch.cuda.device(device)`` guard with a graph whose tensors are already
on ``device``. The default is Torch-TensorRT's dynamo path with ``device`` set explicitly;
``torch_tensorrt`` is imported only when that delegate first compiles, never at package import.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import importlib
import importlib.util
import logging
import re
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol, Sequence

import torch
import torch.fx

from . import engine as _engine
from .graphinfo import is_attention, meta_value, op_count
from .guard import Releaser, cuda_usable, real_device, watch_collections
from .lowering import added_to_lowering, sizes_from_their_tensors, unread_numbers_dropped
from .masks import split_mask_prefix
from .placement import graph_copy
from .repeats import collapsed_repeats
from .runtime import select_kept
from .segments import install
from .settings import Settings, SettingsError

__all__ = [
    "stable_identity",
    "delegate_versions",
    "Delegate",
    "Unavailable",
    "TorchTensorRTDelegate",
    "load_delegate",
    "delegate_identity",
    "INSTALL_HINT",
    "ENGINE_MODULES",
    "engine_device",
    "own_engines",
]

log = logging.getLogger("trt_multidev.delegate")

INSTALL_HINT = 'pip install "trt-multidev-backend[tensorrt]"'
_PRECISION_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Options Torch-TensorRT's torch.compile path reads besides CompilationSettings fields.
_EXTRA_TRT_KEYS = ("engine_cache_dir", "engine_cache_size", "custom_engine_cache", "debug")
ENGINE_MODULES = ("TorchTensorRTModule", "PythonTorchTensorRTModule", "TensorRTEngine")
# Torch-TensorRT settings under which its own runtime keeps the engines (trt_multidev's runner,
# engine.py, does not take over): the user asked for a runtime feature or a different lifecycle.
_OWN_RUNTIME_KEYS = ("use_python_runtime", "lazy_engine_init", "enable_cross_compile_for_windows", "dryrun",
                     "enable_weight_streaming", "debug", "cache_built_engines", "reuse_cached_engines")
_DEFERRAL = threading.local()
# Hopper GPUs trace scaled_dot_product_attention to cuDNN's kernel, which Torch-TensorRT 2.11 cannot
# convert ("add_cast(): incompatible function arguments"); its other kernels it can.
CUDNN_ATTENTION = "torch.ops.aten._scaled_dot_product_cudnn_attention.default"


class Delegate(Protocol):
    def __call__(
        self, gm: torch.fx.GraphModule, example_inputs: Sequence[Any], *, device: torch.device, settings: Settings
    ) -> Callable[..., Any]: ...


@dataclass(frozen=True)
class Unavailable:
    """Why the default delegate cannot serve a target, and what the user can do about it."""

    key: str
    reason: str
    remedy: str


def load_delegate(spec: Any) -> tuple[Callable[..., Any], str]:
    """Turn the `delegate` setting into (callable, identity). Raises SettingsError."""
    if spec is None:
        return TorchTensorRTDelegate(), "torch_tensorrt"
    if callable(spec) and not isinstance(spec, str):
        return spec, delegate_identity(spec)
    module_name, _, attr_path = str(spec).partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr_path.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise SettingsError(
            f"trt_multidev: invalid value {spec!r} for setting 'delegate': cannot load it ({exc}); "
            "expected 'module:function' naming an importable callable"
        ) from None
    if not callable(obj):
        raise SettingsError(
            f"trt_multidev: invalid value {spec!r} for setting 'delegate': {type(obj).__name__} is not callable"
        )
    return obj, str(spec)


def stable_identity(spec: Any, fn: Any) -> str | None:
    """A name that means the same delegate in every process, or None (then no disk cache)."""
    if spec is None:
        return "torch_tensorrt"
    if isinstance(spec, str):
        return spec
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    if not module or not qualname or "<" in qualname:
        return None
    try:
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        return None
    return f"{module}:{qualname}" if obj is fn else None


def delegate_versions(delegate: Any) -> dict[str, str]:
    """Library versions a delegate's results depend on (they namespace the disk cache)."""
    versions = getattr(delegate, "versions", None)
    found = dict(versions()) if callable(versions) else {}
    found.setdefault("torch", torch.__version__)
    return found


def delegate_identity(fn: Any) -> str:
    """A name for cache keys: 'module:qualname' plus the object's id, since two callables can
    share a qualname (lambdas, closures). Delegates named by string use the string instead."""
    module = getattr(fn, "__module__", type(fn).__module__)
    qualname = getattr(fn, "__qualname__", type(fn).__qualname__)
    return f"{module}:{qualname}@{id(fn):x}"


# What this delegate does to a graph before and around Torch-TensorRT (masks computed ahead,
# attention decomposed, ...): part of the disk cache's namespace, so entries built the older way
# are built again rather than loaded. Bump it when that changes.
BUILD_RECIPE = 4  # 2: masks computed ahead (session 7); 3: their constant work computed when compiling;
# 4: copies of inputs dropped in Torch-TensorRT's lowering (lowering.py), unread numbers dropped


class TorchTensorRTDelegate:
    """Torch-TensorRT's dynamo backend, told the target device instead of the current one."""

    name = "torch_tensorrt"
    # Torch-TensorRT's Python runtime has no lock and intermediate engines reuse their output
    # buffers, so the wrapper serializes calls to one compiled graph.
    thread_safe = False
    # Torch-TensorRT 2.11 compiles a functional copy of the graph and does not write in-place
    # updates of graph inputs back (measured on an H200: after x.add_(1) in the graph, x was
    # unchanged); the pipeline sends such graphs to the fallback instead.
    keeps_in_place_updates = False

    def __init__(self) -> None:
        self._module: Any = None
        self._import_error: str | None = None
        self._runner_supported: bool | None = None

    # -- availability ----------------------------------------------------------------------
    def unavailable(self, device: torch.device) -> Unavailable | None:
        if device.type != "cuda":
            return Unavailable(
                f"{device.type}-target",
                f"the target device is {device} and TensorRT needs a CUDA device",
                "move the model to a GPU, or set device=cuda:N (options or TRT_MULTIDEV_DEVICE)",
            )
        if not cuda_usable():
            build = "a CPU-only build of torch" if torch.version.cuda is None else "no visible GPU"
            return Unavailable(
                "no-cuda",
                f"CUDA is not usable here ({build})",
                "run on a machine with an NVIDIA GPU and a CUDA build of torch",
            )
        return self._import_problem()

    def _import_problem(self) -> Unavailable | None:
        if self._module is not None:
            return None
        if self._import_error is None:
            if importlib.util.find_spec("torch_tensorrt") is None:
                self._import_error = "Torch-TensorRT is not installed"
            else:
                try:
                    self._module = importlib.import_module("torch_tensorrt")
                    return None
                except Exception as exc:  # broken native libraries raise OSError and friends
                    self._import_error = f"importing torch_tensorrt failed ({type(exc).__name__}: {exc})"
        return Unavailable("torch-tensorrt-missing", self._import_error, "install it: " + INSTALL_HINT)

    # -- compile ---------------------------------------------------------------------------
    def options_for(self, device: torch.device, settings: Settings, *, runner: bool = False) -> dict[str, Any]:
        """The options handed to Torch-TensorRT: validated pass-through plus our own keys. With
        `runner`, engines come back as Python modules whose setup trt_multidev does itself."""
        fields = options_fields()
        accepted = sorted(fields | set(_EXTRA_TRT_KEYS))
        for key in settings.trt:
            if key not in accepted:
                hint = difflib.get_close_matches(key, accepted, n=1)
                source = settings.sources.get(f"trt.{key}", "options")
                raise SettingsError(
                    f"trt_multidev: unknown Torch-TensorRT setting 'trt.{key}' (from {source})"
                    + (f"; did you mean {hint[0]!r}?" if hint else "")
                    + f"; the installed torch_tensorrt accepts: {', '.join(accepted)}"
                )
        options: dict[str, Any] = {
            "device": torch.device("cuda", device.index),
            "min_block_size": settings.min_block_size,
            "workspace_size": settings.workspace_size,
            "pass_through_build_failures": True,  # failures come back to us: warned, counted, fallback
        }
        if settings.optimization_level is not None:
            options["optimization_level"] = settings.optimization_level
        if "enabled_precisions" in fields:
            options["enabled_precisions"] = {_PRECISION_DTYPES[p] for p in settings.precision}
            if settings.precision != ("fp32",) and "use_explicit_typing" in fields and "use_explicit_typing" not in settings.trt:
                options["use_explicit_typing"] = False  # precision flags only act on weakly typed networks
        if "attn_bias_is_causal" in fields:
            # Torch-TensorRT 2.11 defaults to True: the attention bias of memory-efficient
            # attention is taken to be a causal mask and its values are ignored, which is wrong
            # for a decode step's or a padding mask (measured: GPT-2 generate() with attention
            # traced to that kernel gave other tokens from the first one). With False such
            # attention runs in PyTorch; trt={"attn_bias_is_causal": True} asks for it anyway.
            options["attn_bias_is_causal"] = False
        options.update(settings.trt)
        if settings.excluded_ops:  # ops an earlier attempt could not convert (build.py): PyTorch runs them
            options["torch_executed_ops"] = {*settings.trt.get("torch_executed_ops", ()), *settings.excluded_ops}
        if runner:
            options.update(use_python_runtime=True, lazy_engine_init=True)
        return {k: v for k, v in options.items() if k in fields or k in _EXTRA_TRT_KEYS}

    def precision_note(self, settings: Settings) -> str | None:
        """Why a non-fp32 `precision` cannot take effect with the installed TensorRT, if it cannot."""
        if settings.precision == ("fp32",):
            return None
        fields = options_fields()
        features = getattr(importlib.import_module("torch_tensorrt._features"), "ENABLED_FEATURES", None)
        if "enabled_precisions" not in fields or getattr(features, "tensorrt_rtx", False):
            return (
                f"precision={','.join(settings.precision)} has no effect with this TensorRT "
                "(strongly typed networks): the model's own dtypes decide; cast it, e.g. model.half()"
            )
        return None

    def runner_applies(self, settings: Settings) -> bool:
        """Whether trt_multidev's engine runner (engine.py) runs this graph's engines: asked for
        (engine_runtime=auto), useful (TensorRT keeps JIT kernels: TensorRT-RTX), and no
        Torch-TensorRT setting that wants Torch-TensorRT's own runtime. Engines it cannot run
        (shape tensors, data-dependent shapes) still go to Torch-TensorRT's runtime, one by one."""
        if settings.engine_runtime != "auto" or any(settings.trt.get(k) for k in _OWN_RUNTIME_KEYS):
            return False
        if self._runner_supported is None:
            self._runner_supported = _engine.runtime_cache_supported()
        return self._runner_supported

    def __call__(
        self, gm: torch.fx.GraphModule, example_inputs: Sequence[Any], *, device: torch.device, settings: Settings
    ) -> Callable[..., Any]:
        from torch._guards import TracingContext, detect_fake_mode, tracing
        from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
        from torch_tensorrt.dynamo.backend.backends import torch_tensorrt_backend

        prefixed = split_mask_prefix(gm, example_inputs)
        if prefixed is not None:  # masks from constants and state: computed in PyTorch, passed in
            log.info("graph on %s: %d op(s) computing attention masks from constants and module state run in "
                     "PyTorch ahead of the engine (again only when that state or their sizes change)", device,
                     prefixed.ops)
            rest = getattr(prefixed.whole, prefixed.rest)
            before = [n for n in rest.graph.nodes if n.op == "placeholder"]
            compiled, _ = select_kept(self(rest, prefixed.rest_inputs, device=device, settings=settings), before, rest)
            install(prefixed.whole, prefixed.rest, compiled)
            return prefixed.whole
        runner = self.runner_applies(settings)
        options = self.options_for(device, settings, runner=runner)
        inputs = [_materialize(x, device) if isinstance(x, FakeTensor) else x for x in example_inputs]
        sizes_from_their_tensors(gm)  # Torch-TensorRT 2.11 cannot find tensors passed in lists or dicts
        unread_numbers_dropped(gm, inputs)  # nor pop two unread number arguments right
        output = next(n for n in gm.graph.nodes if n.op == "output")
        single = not isinstance(output.args[0], (tuple, list))
        if single:  # Torch-TensorRT's export step wants a tuple of outputs
            output.args = ((output.args[0],),)
            gm.recompile()
        if runner:
            from torch_tensorrt.dynamo.runtime import PythonTorchTensorRTModule
        attention = (_without_cudnn_attention() if CUDNN_ATTENTION in settings.excluded_ops
                     else contextlib.nullcontext())
        decompose = ("decompose_attention" not in settings.trt and "decompose_attention" in options_fields()
                     and refuses_uneven_attention() and uneven_attention(gm))
        original = graph_copy(gm) if decompose else gm

        built = f"a graph of {op_count(gm)} ops on {device}"
        quiet = settings.log_level != "debug"

        def build(graph: torch.fx.GraphModule, options: dict[str, Any]) -> Any:
            with _deferring_setup(PythonTorchTensorRTModule) if runner else contextlib.nullcontext(), attention, \
                    added_to_lowering(), collapsed_repeats(built, enabled=quiet):  # its warnings once each
                if detect_fake_mode(inputs) is None:
                    # Called outside dynamo (aot tools, direct use): Torch-TensorRT needs a fake mode.
                    with tracing(TracingContext(FakeTensorMode(allow_non_fake_inputs=True))):
                        return torch_tensorrt_backend(graph, list(inputs), options=options)
                return torch_tensorrt_backend(graph, list(inputs), options=options)  # it pops from the list

        if decompose:
            # Torch-TensorRT 2.11 converts attention only where queries, keys and values have one
            # shape; a decode step's single query over the cached keys stayed in PyTorch between
            # engines. Decomposed (matmul, softmax, matmul: PyTorch's own reference form) it
            # can be built; if that build fails, the attention kernels are built as before.
            try:
                compiled = build(gm, {**options, "decompose_attention": True})
            except Exception as exc:  # noqa: BLE001 - the undecomposed build decides
                op = self.failing_op(exc)
                log.info("graph with uneven attention on %s: the decomposed build failed (%s%s); building "
                         "it with attention kept whole", device, type(exc).__name__, f" converting {op}" if op else "")
                compiled = build(original, options)
        else:
            compiled = build(gm, options)
        if runner:
            compiled = _adopt_engines(compiled, device)
        own_engines(compiled, device)
        # Intermediate engines keep their outputs in buffers reused across calls; callers on
        # different streams or threads would race on them, so every engine allocates its outputs.
        if isinstance(compiled, torch.nn.Module):
            for module in compiled.modules():
                if type(module).__name__ in ENGINE_MODULES and hasattr(module, "set_output_tensors_as_unowned"):
                    module.set_output_tensors_as_unowned(True)
        return _First(compiled) if single else compiled

    @staticmethod
    def exclusion_note(op: str) -> str | None:
        """What excluding `op` does, where it is not "its nodes run in PyTorch"."""
        if op == CUDNN_ATTENTION:
            return ("attention is traced again with the other scaled_dot_product_attention kernels, which "
                    "TensorRT converts (the same attention, another kernel)")
        return None

    @staticmethod
    def failing_node(exc: BaseException) -> torch.fx.Node | None:
        """The node Torch-TensorRT was converting when it raised `exc`, in the graph it converts
        (after its own lowering and partitioning), or None. Torch-TensorRT attaches nothing to the
        exception, but its interpreter's frame in the traceback holds that node."""
        node = None
        tb = exc.__traceback__
        while tb is not None:
            current = getattr(tb.tb_frame.f_locals.get("self"), "_cur_node", None)
            if isinstance(current, torch.fx.Node):
                node = current
            tb = tb.tb_next
        return node

    @staticmethod
    def failing_op(exc: BaseException) -> str | None:
        """The op whose conversion raised `exc`, as Torch-TensorRT's torch_executed_ops names it
        ("torch.ops.aten.embedding.default"), or None when no node was being converted (then the
        failure is not one op's)."""
        from torch.fx.node import _get_qualified_name

        node = TorchTensorRTDelegate.failing_node(exc)
        if node is None or node.op != "call_function":
            return None
        try:
            return _get_qualified_name(node.target)
        except Exception:
            return None

    # -- disk cache protocol -----------------------------------------------------------------
    def versions(self) -> dict[str, str]:
        import tensorrt

        module = self._module or importlib.import_module("torch_tensorrt")
        return {"torch": torch.__version__, "torch_tensorrt": module.__version__,
                "tensorrt": f"{getattr(tensorrt, '_package_name', 'tensorrt')}-{tensorrt.__version__}",
                "recipe": str(BUILD_RECIPE)}

    def dumps(self, compiled: Any) -> bytes:
        """The compiled graph (partition plus engines) as bytes. Engines travel as Torch-TensorRT's
        own serialized state, not as live CUDA objects, and carry no model weights: in the
        torch.compile path parameters are engine inputs."""
        import io

        buffer = io.BytesIO()
        torch.save(compiled, buffer, pickle_module=_EnginePickle)
        return buffer.getvalue()

    def loads(self, blob: bytes, *, device: torch.device, settings: Settings) -> Any:
        """Rebuild a compiled graph on `device` (called under its guard, so engines bind there)."""
        import io

        compiled = torch.load(io.BytesIO(blob), map_location=device, weights_only=False)
        own_engines(compiled, device)
        return compiled

    @staticmethod
    def needs_saving(compiled: Any) -> bool:
        """Whether an engine of `compiled` compiled kernels since it was last stored."""
        return any(isinstance(m, _engine.TensorRTEngine) and m.kernels_grown() for _, m in _engine_modules(compiled))

    @staticmethod
    def engine_devices(compiled: Any) -> list[tuple[str, torch.device | None]]:
        """(name, device) of every engine in a compiled graph: the device it really runs on,
        as its runtime recorded it (None where that cannot be read)."""
        return [(name, engine_device(m)) for name, m in _engine_modules(compiled)]

    @staticmethod
    def describe(compiled: Any) -> str:
        """Who runs the engines of a compiled graph, for the build/load log line."""
        engines = [m for _, m in _engine_modules(compiled)]
        runners = [m for m in engines if isinstance(m, _engine.TensorRTEngine)]
        others = len(engines) - len(runners)
        parts = []
        if runners:
            cached = sum(1 for m in runners if m.runtime_cache_loaded)
            parts.append(f"{len(runners)} by trt_multidev's runner"
                         + (f", kernels of {cached} loaded from the cache" if cached else ", kernels compiled"))
        if others:
            parts.append(f"{others} by Torch-TensorRT's runtime")
        return "engines: " + "; ".join(parts) if parts else "no engine"

    @staticmethod
    def count_engines(compiled: Any) -> int:
        return len(_engine_modules(compiled))


def options_fields() -> set[str]:
    """The settings the installed Torch-TensorRT's CompilationSettings has."""
    from torch_tensorrt.dynamo import CompilationSettings

    return {f.name for f in dataclasses.fields(CompilationSettings)}


def refuses_uneven_attention(version: str | None = None) -> bool:
    """Whether the installed Torch-TensorRT refuses attention whose queries and keys differ in
    shape: 2.11 and earlier; 2.12 converts it (only keys and values must match)."""
    if version is None:
        version = importlib.import_module("torch_tensorrt").__version__
    numbers = [int(part) for part in re.findall(r"\d+", version)[:2]]
    return len(numbers) == 2 and tuple(numbers) < (2, 12)


def uneven_attention(gm: torch.fx.GraphModule) -> bool:
    """Whether some attention call's queries, keys and values differ in shape (a decode step: one
    new query over the cached keys), which Torch-TensorRT 2.11's attention converters refuse."""
    for node in gm.graph.nodes:
        if not is_attention(node):
            continue
        shapes = [getattr(meta_value(a), "shape", None) for a in node.args[:3]]
        if len(shapes) == 3 and None not in shapes and len({tuple(map(str, s)) for s in shapes}) > 1:
            return True
    return False


def _without_cudnn_attention() -> Any:
    """Trace scaled_dot_product_attention with every kernel but cuDNN's (flash, memory-efficient,
    math: the same attention). PyTorch's kernel choice is process-wide, so for the length of the
    build other threads' eager attention avoids cuDNN's kernel too."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


class _First(torch.nn.Module):
    """Returns the only output of a graph that was made to return a 1-tuple."""

    def __init__(self, inner: Callable[..., Any]):
        super().__init__()
        self.inner = inner

    def forward(self, *args: Any) -> Any:
        return self.inner(*args)[0]


@contextlib.contextmanager
def _deferring_setup(cls: type) -> Iterator[None]:
    """While active on this thread, `cls.setup_engine` (Torch-TensorRT's Python engine module)
    does nothing: trt_multidev sets those engines up itself, once, with a kernel cache
    (`_adopt_engines`). Without it Torch-TensorRT would compile every engine's kernels once for
    nothing (about 4 s for ResNet-50 with TensorRT-RTX). Other threads are unaffected, and
    outside the block the method behaves as Torch-TensorRT wrote it."""
    original = cls.setup_engine
    if not getattr(original, "_trt_multidev_deferral", False):
        def setup_engine(self: Any) -> None:
            if getattr(_DEFERRAL, "active", False):
                return
            original(self)

        setup_engine._trt_multidev_deferral = True  # type: ignore[attr-defined]
        setup_engine.__doc__ = original.__doc__
        cls.setup_engine = setup_engine
    previous = getattr(_DEFERRAL, "active", False)
    _DEFERRAL.active = True
    try:
        yield
    finally:
        _DEFERRAL.active = previous


def _engine_modules(compiled: Any) -> list[tuple[str, torch.nn.Module]]:
    if not isinstance(compiled, torch.nn.Module):
        return []
    return [(name or "engine", m) for name, m in compiled.named_modules() if type(m).__name__ in ENGINE_MODULES]


def engine_device(module: Any) -> torch.device | None:
    """The CUDA device an engine module is bound to, read from the engine itself."""
    if isinstance(module, _engine.TensorRTEngine):
        return module.device
    engine = getattr(module, "engine", None)
    if engine is None:
        return None
    if type(module).__name__ == "PythonTorchTensorRTModule":
        index = getattr(module, "device", None)  # set from the current device when it was set up
        return torch.device("cuda", index) if isinstance(index, int) else None
    return _cpp_engine_device(engine)


def _cpp_engine_device(engine: Any) -> torch.device | None:
    """The device Torch-TensorRT's C++ engine chose (and switched to) when it was made: it
    prefers the runtime's current device to the one it was asked for. Its description says
    "Device: Device(ID: <n>, ...)" (no getter exists in 2.11)."""
    import re

    try:
        found = re.search(r"Device\(ID: (\d+)", str(engine))
    except Exception:
        found = None
    if found is None:
        log.debug("could not read the device of a Torch-TensorRT engine")
        return None
    return torch.device("cuda", int(found.group(1)))


# Torch-TensorRT engine modules' TensorRT objects, released on their device in this order.
_RELEASED_ATTRS = ("context", "engine", "runtime")


def own_engines(compiled: Any, device: torch.device) -> None:
    """Make every Torch-TensorRT engine module in `compiled` release its TensorRT objects on
    `device` when it is collected (its C++ engine switches the current device when it goes).
    trt_multidev's runner releases itself."""
    for _, module in _engine_modules(compiled):
        held = module.__dict__
        if isinstance(module, _engine.TensorRTEngine) or "_trt_multidev_releaser" in held:
            continue
        names = tuple(n for n in _RELEASED_ATTRS if held.get(n) is not None)
        if names:
            held["_trt_multidev_releaser"] = Releaser(device, held, names)
    watch_collections()


def _adopt_engines(compiled: Any, device: torch.device) -> Any:
    """Swap the (not yet set up) Python engine modules for trt_multidev's runner, or, where it
    cannot run an engine, for Torch-TensorRT's C++ engine module, as Torch-TensorRT would have."""
    if not isinstance(compiled, torch.nn.Module):
        return compiled
    if type(compiled).__name__ == "PythonTorchTensorRTModule":
        return _adopt(compiled, device)
    for parent in list(compiled.modules()):
        for child_name, child in list(parent.named_children()):
            if type(child).__name__ == "PythonTorchTensorRTModule" and getattr(child, "engine", None) is None:
                setattr(parent, child_name, _adopt(child, device))
    return compiled


def _adopt(module: Any, device: torch.device) -> torch.nn.Module:
    try:
        return _engine.TensorRTEngine(module.serialized_engine, module.input_names, module.output_names,
                                      name=module.name, data_dependent=bool(module.requires_output_allocator),
                                      device=device)
    except ValueError as exc:  # a shape tensor, a data-dependent shape: Torch-TensorRT's runtime runs it
        log.debug("engine %r stays with Torch-TensorRT's runtime: %s", module.name, exc)
    features = getattr(importlib.import_module("torch_tensorrt._features"), "ENABLED_FEATURES", None)
    if not getattr(features, "torch_tensorrt_runtime", True):  # no C++ runtime: its Python one
        module.setup_engine()
        return module
    settings = dataclasses.replace(module.settings, use_python_runtime=False, lazy_engine_init=False)
    kwargs = {"name": module.name, "settings": settings, "weight_name_map": module.weight_name_map,
              "requires_output_allocator": module.requires_output_allocator,
              "symbolic_shape_expressions": module.symbolic_shape_expressions}
    return _rebuild_engine_module("torch_tensorrt.dynamo.runtime", bytes(module.serialized_engine),
                                  list(module.input_names), list(module.output_names), kwargs,
                                  False)  # the delegate marks every engine's outputs unowned after this


class _EnginePickle:
    """A pickle module for torch.save that stores Torch-TensorRT's C++ engine modules by their
    constructor arguments and rebuilds them on load (trt_multidev's runner pickles itself)."""

    import pickle as _pickle

    Unpickler = _pickle.Unpickler
    load = _pickle.load
    dump = _pickle.dump
    loads = _pickle.loads
    dumps = _pickle.dumps

    class Pickler(_pickle.Pickler):
        def reducer_override(self, obj: Any) -> Any:
            if type(obj).__name__ != "TorchTensorRTModule" or getattr(obj, "serialized_engine", None) is None:
                return NotImplemented
            # Rebuilt from its constructor arguments, as Torch-TensorRT itself builds it after a
            # compile: the live C++ engine is never pickled (its get_extra_state path fails in
            # 2.11: `if self.engine:` asks the C++ engine for __len__).
            engine = getattr(obj, "engine", None)
            unowned = bool(engine.are_output_tensors_unowned()) if engine is not None else False
            kwargs = {
                "name": obj.name,
                "settings": obj.settings,
                "weight_name_map": obj.weight_name_map,
                "requires_output_allocator": obj.requires_output_allocator,
                "symbolic_shape_expressions": obj.symbolic_shape_expressions,
            }
            return _rebuild_engine_module, (type(obj).__module__, bytes(obj.serialized_engine),
                                            list(obj.input_binding_names), list(obj.output_binding_names),
                                            kwargs, unowned)


def _rebuild_engine_module(module_name: str, engine: bytes, inputs: list, outputs: list, kwargs: dict,
                           unowned: bool) -> Any:
    """Called while unpickling, under the target's device guard: the engine is deserialized on
    the current device, which is recorded as the engine's device."""
    import dataclasses

    from torch_tensorrt._Device import Device

    settings = kwargs["settings"]
    if torch.cuda.is_available():
        settings = dataclasses.replace(settings, device=Device(gpu_id=real_device()))
    module = importlib.import_module(module_name)
    rebuilt = module.TorchTensorRTModule(engine, inputs, outputs, **{**kwargs, "settings": settings})
    if unowned:
        rebuilt.set_output_tensors_as_unowned(True)
    return rebuilt


def _materialize(fake: Any, device: torch.device) -> torch.Tensor:
    """A real tensor with a fake's metadata (zeros), for Torch-TensorRT's input specs."""
    sizes = [int(s) for s in fake.shape]
    strides = [int(s) for s in fake.stride()]
    return torch.empty_strided(sizes, strides, dtype=fake.dtype, device=device).zero_()
