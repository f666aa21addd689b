"""The `trt_multidev` backend: resolve, place, key, look up, build under the guard, return a
guarded callable (for a graph with dynamic shapes, one that also builds static engines for the
shapes it meets often). Fallbacks are warned once per (reason, device), counted, and refused by
`strict`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.fx

from .accumulation import accumulate_in_fp32
from .build import Built, call_delegate, check_engine_devices, first_line_of
from .cache import CompiledCache, Stats, cache_key
from .delegate import TorchTensorRTDelegate, load_delegate
from .cudagraphs import CudaGraphs, capture_plan
from .device import DevicePlan, check_visible, resolve_device
from .engine import engine_options
from .errors import through_dynamo
from .fallback import Fallback
from .graphinfo import Role, changed_in_place, classify_args, op_count
from .guard import device_guard
from .placement import Placement, graph_copy, place
from .progress import current as current_progress, track
from .reuse import Reuse, graph_name
from .rewrites import pin_state_scalars, rewrite_for_tensorrt
from .scalars import numbers_in_pytorch
from .segments import install, split_by_device
from .specialize import Specialized, static_plan
from .updates import updates_of_placed_graph
from .notices import Notices, build_failure
from .settings import Settings, SettingsError, resolve_settings
from .wrapper import Wrapper

__all__ = ["TrtMultidevBackend", "backend", "register", "BACKEND_NAME"]

BACKEND_NAME = "trt_multidev"
log = logging.getLogger("trt_multidev.pipeline")


class TrtMultidevBackend:
    """A torch.compile backend that builds Torch-TensorRT engines on the graph's own GPU.

    One instance holds the in-memory cache, the counters and the warn-once registry;
    ``torch._dynamo.reset()`` reaches :meth:`reset` and empties all three.
    """

    compiler_name = BACKEND_NAME

    def __init__(self) -> None:
        self._cache = CompiledCache()
        self._stats = Stats()
        self._notices = Notices()
        self._warn_once = self._notices.warn_once
        self._log = self._notices.log
        self._default_delegate = TorchTensorRTDelegate()
        self._reuse = Reuse(self._stats, self._warn_once, self._log)
        self._wrapper = Wrapper(self._stats, self._warn_once)
        self._fallback = Fallback(self._stats, self._warn_once, self._wrapper)

    # -- public --------------------------------------------------------------------------
    @through_dynamo  # our errors reach torch.compile's caller as themselves, not BackendCompilerFailed
    def __call__(
        self,
        gm: torch.fx.GraphModule,
        example_inputs: Sequence[Any],
        options: Mapping[str, Any] | None = None,
        mode: str | None = None,
    ) -> Callable[..., Any]:
        settings = resolve_settings(options, mode)
        self._notices.report_settings(settings)
        infos = classify_args(gm, example_inputs)
        gm._trt_multidev_name = (f"graph({', '.join(i.name for i in infos if i.role is Role.INPUT)[:60]}) "
                                 f"of {op_count(gm)} ops")
        plan = resolve_device(gm, infos, settings)
        label = str(plan.target) if plan.target is not None else ",".join(plan.state_devices or plan.input_devices)
        self._log(settings, "graph %s: %s", graph_name(gm), plan.describe())

        if plan.problem is not None:
            staged = None if getattr(gm, "_trt_multidev_stage", False) else self._stages(
                gm, example_inputs, options, mode, settings, plan, label)
            if staged is not None:
                return staged
            return self._fallback(gm, example_inputs, settings, plan, label, "mixed-devices",
                                  plan.problem + " (no split into one stage per GPU was possible)",
                                  "put the graph's state on one GPU, or set device=cuda:N")
        assert plan.target is not None
        capture = capture_plan(gm, infos, plan.target) if settings.cuda_graphs else None
        delegate, identity = self._delegate(settings)
        # Custom delegates may target FakeTensor devices (as the CPU tests do); TensorRT needs real ones.
        check_visible(plan.target, plan.rule, needs_cuda=isinstance(delegate, TorchTensorRTDelegate))
        if isinstance(delegate, TorchTensorRTDelegate):
            problem = delegate.unavailable(plan.target)
            if problem is not None:
                return self._fallback(gm, example_inputs, settings, plan, label, problem.key,
                                      problem.reason, problem.remedy, capture=capture)
            note = delegate.precision_note(settings)
            if note:
                self._warn_once(("precision", label), f"trt_multidev: {note}.")

        placement = place(gm, infos, plan)
        placement.gm._trt_multidev_name = gm._trt_multidev_name
        changed = [] if getattr(delegate, "keeps_in_place_updates", True) else changed_in_place(gm, infos)
        if changed:  # the updates done in PyTorch after the engines, where that is exact
            left = updates_of_placed_graph(placement, changed, settings.input_policy)
            if left:  # nothing silently wrong: the fallback writes the updates, the delegate would not
                return self._fallback(gm, example_inputs, settings, plan, label, "in-place-update",
                                      f"the graph updates {', '.join(left)} in place, which the "
                                      f"{_short(identity)} delegate would not write back",
                                      "return the new value from the model instead of updating an input or buffer "
                                      "in place", placement=placement, capture=capture)
        for pin in pin_state_scalars(placement.gm, infos):
            placement.pin(pin.index, pin.name, pin.value, plan.target)
        notes = placement.notes + rewrite_for_tensorrt(placement.gm) + numbers_in_pytorch(placement.gm)
        if settings.fp32_accumulation:  # Torch-TensorRT's use_fp32_acc, which 2.11 ignores on TensorRT-RTX
            notes += accumulate_in_fp32(placement.gm)
        for line in notes:
            self._log(settings, "  placed %s", line)
        key = cache_key(placement.gm, placement.example_inputs, plan.target, settings, identity)
        hit = self._cache.get(key)
        if hit is not None:
            self._stats.bump(label, "cache_hits")
            self._log(settings, "graph %s: in-memory cache hit on %s", graph_name(gm), label)
            return hit

        start = time.perf_counter()
        try:
            with track(graph_name(gm), label, settings) as shown, engine_options(  # progress of slow builds
                    kernel_specialization=settings.kernel_specialization,  # and loads; TensorRT-RTX's
                    internal_cuda_graphs=settings.cuda_graphs):  # options for the engines set up here
                built, how = self._obtain(delegate, placement, plan, settings, label)
                compiled = built.callable
                check_engine_devices(delegate, compiled, plan.target)
                shown.finish(how, delegate.describe(compiled)
                             if isinstance(delegate, TorchTensorRTDelegate) else None)
        except SettingsError:
            raise
        except Exception as exc:
            log.debug("delegate %s failed on %s", identity, label, exc_info=True)
            reason, remedy = build_failure(exc, _short(identity), settings, infos,
                                           torch_tensorrt=isinstance(delegate, TorchTensorRTDelegate))
            wrapper = self._fallback(gm, example_inputs, settings, plan, label,
                                     f"delegate-error:{type(exc).__name__}", reason,
                                     remedy, placement=placement, cause=exc, capture=capture)
            self._cache.put(key, wrapper)
            return wrapper
        engines = ""
        if isinstance(delegate, TorchTensorRTDelegate):
            if delegate.count_engines(compiled) == 0 and not built.in_pytorch:
                self._warn_once(("no-engine", label),
                                f"trt_multidev: Torch-TensorRT built no engine for a graph on {label} "
                                f"(too few supported ops for min_block_size={settings.min_block_size}); "
                                "it runs in PyTorch. Lower min_block_size to convert small graphs.")
            engines = f" ({delegate.describe(compiled)})"
        self._notices.report_built(built, gm, label, _short(identity), delegate)
        self._log(settings, "graph %s: %s on %s by %s in %.2f s%s%s", graph_name(gm), how, label,
                  _short(identity), time.perf_counter() - start, engines, self._notices.left_summary(built))
        compiled = self._specialized(compiled, built, gm, infos, delegate, placement, plan, settings, label)
        wrapper = self._wrapper(compiled, plan, placement, settings, label, _short(identity),
                                serialize=not getattr(delegate, "thread_safe", True), capture=capture)
        self._cache.put(key, wrapper)
        return wrapper

    def reset(self) -> None:
        """Forget every compiled result, counter and warn-once record (torch._dynamo.reset()).
        The disk cache stays: it is for later processes, and entries whose graphs compiled
        kernels since they were stored are written back first."""
        self._reuse.save_learned()
        self._cache.clear()
        self._stats.clear()
        self._notices.clear()
        self._reuse.clear()

    def stats(self) -> dict[str, dict[str, int]]:
        """Counters per device: compiles (delegate builds in this process), cache_hits (reused
        from memory, built for this device), disk_hits (read from the disk cache),
        cross_device_reuses (a build made for another GPU, loaded here from memory or disk),
        fallbacks, corrupt_entries, lock_waits, cuda_graphs (input shapes captured in CUDA
        graphs), uncaptured (compiled graphs that cuda_graphs left uncaptured), static_engines
        (static engines built or loaded for shapes a dynamic graph met often)."""
        return self._stats.snapshot()

    # -- pieces --------------------------------------------------------------------------
    def _delegate(self, settings: Settings) -> tuple[Any, str]:
        if settings.delegate is None:
            return self._default_delegate, "torch_tensorrt"
        return load_delegate(settings.delegate)

    def _obtain(self, delegate: Any, placement: Placement, plan: DevicePlan, settings: Settings,
                label: str, *, counted: bool = True) -> tuple[Built, str]:
        """The compiled graph: from the disk cache (or another GPU's build) when possible, else built.
        `counted`: False for static engines, which are counted apart."""
        segmented = split_by_device(placement.gm, placement.example_inputs, plan)
        if segmented is None:
            def build() -> Built:
                return self._build(delegate, placement, plan, settings, label, counted=counted)

            disk = self._reuse.plan(delegate, placement, plan, settings)
            if disk is not None:
                return self._reuse.obtain(disk, delegate, build, placement, plan, settings, label, counted=counted)
            return build(), "built"
        excluded: list[tuple[str, str]] = []
        left: list[tuple[int, str, str]] = []
        built = 0  # device segments built here (the others came from a cache)
        layout = segmented.describe(most=6)  # before the delegate's results take the segments' places
        with device_guard(plan.target):
            for name, _, inputs in segmented.device_segments:
                piece = getattr(segmented.gm, name)
                piece._trt_multidev_name = f"{graph_name(placement.gm)} {name}"  # its disk-cache entry's label
                part, here = self._obtain_piece(delegate, piece, list(inputs), plan, settings, label)
                built += here
                install(segmented.gm, name, part.callable)
                excluded += part.excluded
                left += part.left
        if not segmented.device_segments:  # nothing for the delegate: numbers only (scalars.py)
            return Built(segmented.gm, segmented.gm, None, segmented=True, in_pytorch=True), "run in PyTorch"
        if built and counted:
            self._stats.bump(label, "compiles")
        how = ("built" if built == len(segmented.device_segments) else "loaded" if not built
               else f"{built} built, the others loaded")
        return Built(segmented.gm, segmented.gm, None, excluded, left, segmented=True), f"{how} (segments: {layout})"

    def _obtain_piece(self, delegate: Any, piece: torch.fx.GraphModule, inputs: list[Any], plan: DevicePlan,
                      settings: Settings, label: str) -> tuple[Built, bool]:
        """A device segment from the disk cache like a whole graph, else built here (then True).
        The host segments around it are split off again in every process."""
        built: list[Built] = []

        def build() -> Built:
            built.append(call_delegate(delegate, piece, inputs, plan.target, settings))
            return built[0]

        placed = Placement(piece, inputs)
        disk = self._reuse.plan(delegate, placed, plan, settings)
        part = build() if disk is None else self._reuse.obtain(disk, delegate, build, placed, plan, settings, label)[0]
        return part, bool(built)

    def _stages(self, gm: torch.fx.GraphModule, example_inputs: Sequence[Any], options: Mapping[str, Any] | None,
                mode: str | None, settings: Settings, plan: DevicePlan, label: str) -> Callable[..., Any] | None:
        """A graph whose work spans GPUs (pipeline placement, an accelerate device_map): one stage
        per run of work on one GPU, each compiled as a graph of its own (its own target, guard,
        cache entries, counters and, if it must, fallback); the copies between GPUs and any host
        work between stages run in PyTorch. None when the graph cannot be split that way."""
        segmented = split_by_device(gm, example_inputs, plan)
        if segmented is None:
            return None
        self._log(settings, "graph %s spans %s: %d stage(s): %s; copies between GPUs and host work run in "
                  "PyTorch", graph_name(gm), label, len(segmented.device_segments), segmented.describe())
        for name, _, inputs in segmented.device_segments:
            stage = getattr(segmented.gm, name)
            stage._trt_multidev_stage = True  # a stage is never split again
            install(segmented.gm, name, self(stage, inputs, options, mode))
        return segmented.gm.forward

    def _build(self, delegate: Any, placement: Placement, plan: DevicePlan, settings: Settings,
               label: str, *, counted: bool = True) -> Built:
        """The delegate on a copy of the whole placed graph, under the target's guard; counted
        (static builds are counted apart, as static_engines)."""
        current_progress().phase("building")
        with device_guard(plan.target):
            built = call_delegate(delegate, graph_copy(placement.gm), placement.example_inputs, plan.target,
                                  settings)
        if counted:
            self._stats.bump(label, "compiles")
        return built

    def _specialized(self, compiled: Callable[..., Any], built: Built, gm: torch.fx.GraphModule,
                     infos: Sequence[Any], delegate: Any, placement: Placement, plan: DevicePlan,
                     settings: Settings, label: str) -> Callable[..., Any]:
        """A graph with dynamic shapes runs static engines for the shapes it meets often, built
        during the call that makes a shape recurring (specialize.py) and, with cuda_graphs,
        captured; other graphs are returned as they are."""
        if settings.static_shapes == 0 or built.segmented:
            return compiled
        shapes = static_plan(placement.gm, infos)
        if shapes is None:
            return compiled
        name = f"graph {graph_name(placement.gm)} on {label}"
        if shapes.refusal is not None:
            self._log(settings, "%s: no static engines for the shapes it meets often: %s", name, shapes.refusal)
            return compiled
        assert plan.target is not None
        capture = capture_plan(gm, infos, plan.target, fixed_shapes=True) if settings.cuda_graphs else None

        def build(args: list[Any]) -> tuple[Callable[..., Any], str]:
            static = dataclasses.replace(placement, example_inputs=args)
            with track(f"{graph_name(placement.gm)}, static engine for {_shape_text(shapes.key(args))}", label,
                       settings) as shown, engine_options(kernel_specialization=settings.kernel_specialization,
                                                         internal_cuda_graphs=settings.cuda_graphs):
                made, how = self._obtain(delegate, static, plan, settings, label, counted=False)
                check_engine_devices(delegate, made.callable, plan.target)
                shown.finish(how, None)
            if capture is not None and capture.refusal is None:
                return CudaGraphs(made.callable, plan.target, capture, limit=1, warn=self._warn_once,
                                  label=f"{name}, static engine",
                                  count=lambda counter: self._stats.bump(label, counter)), how + " (to be captured)"
            return made.callable, how

        def ready(key: tuple, how: str, seconds: float) -> None:
            self._stats.bump(label, "static_engines")
            self._log(settings, "%s: static engine for %s %s in %.2f s; calls of that shape run it", name,
                      _shape_text(key), how, seconds)

        def failed(key: tuple, exc: BaseException) -> None:
            log.debug("static build of %s at %s failed", name, _shape_text(key), exc_info=True)
            self._warn_once((f"static-build:{type(exc).__name__}", label),
                            f"trt_multidev: no static engine for {name} at {_shape_text(key)} "
                            f"({first_line_of(exc)}); the dynamic engine keeps serving that shape. "
                            "(Warned once per reason and device.)")

        return Specialized(compiled, shapes, plan.target, settings.static_shapes, build, ready, failed)


def _shape_text(key: tuple) -> str:
    """A static engine's call shape for messages: "input shape(s) [8, 3, 224, 224]" (size
    arguments, which the shapes already say, only where no tensor does)."""
    shapes = [str(list(part[0])) for part in key if isinstance(part, tuple)]
    if shapes:
        more = f" and {len(shapes) - 3} more" if len(shapes) > 3 else ""
        return f"input shape{'s' if len(shapes) > 1 else ''} {', '.join(shapes[:3])}{more}"
    return "sizes " + ", ".join(str(part) for part in key)


def _short(identity: str) -> str:
    return identity.split("@", 1)[0]


backend = TrtMultidevBackend()


def register(name: str = BACKEND_NAME) -> None:
    """Register the backend by name without the entry point (e.g. from a source checkout).

    Installed packages need no call: the ``torch_dynamo_backends`` entry point does it lazily.
    Safe to call more than once.
    """
    from torch._dynamo.backends.registry import _COMPILER_FNS, list_backends, register_backend

    if name in _COMPILER_FNS:
        return
    if name in list_backends(exclude_tags=()):
        return  # known through the entry point; dynamo loads it on first use
    register_backend(compiler_fn=backend, name=name)
