"""The `trt_multidev` backend: resolve, place, key, look up, build under the guard, return a
guarded callable. Fallbacks are warned once per (reason, device), counted, and refused by `strict`.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.fx

import filelock

from .cache import CompiledCache, Stats, cache_key, disk_key
from .delegate import TorchTensorRTDelegate, delegate_versions, load_delegate, stable_identity
from .diskcache import CorruptEntry, DiskCache, identity_of
from .device import DevicePlan, check_visible, resolve_device
from .graphinfo import Role, classify_args
from .guard import cuda_usable, device_guard
from .errors import EngineDeviceError, TrtMultidevError, through_dynamo
from .placement import Placement, graph_copy, place
from .progress import current as current_progress, track
from .runtime import GuardedCallable, SelectArgs
from .segments import install, split_host_work
from .settings import Settings, SettingsError, resolve_settings, unknown_env_vars

__all__ = ["TrtMultidevBackend", "backend", "register", "BACKEND_NAME"]

BACKEND_NAME = "trt_multidev"
log = logging.getLogger("trt_multidev.pipeline")
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


@dataclass(frozen=True)
class _DiskPlan:
    store: DiskCache
    namespace: str
    key: str
    delegate: str
    versions: dict


class TrtMultidevBackend:
    """A torch.compile backend that builds Torch-TensorRT engines on the graph's own GPU.

    One instance holds the in-memory cache, the counters and the warn-once registry;
    ``torch._dynamo.reset()`` reaches :meth:`reset` and empties all three.
    """

    compiler_name = BACKEND_NAME

    def __init__(self) -> None:
        self._cache = CompiledCache()
        self._stats = Stats()
        self._warned: set[tuple[str, str]] = set()
        self._logged_settings: set[str] = set()
        self._lock = threading.Lock()
        self._default_delegate = TorchTensorRTDelegate()
        self._blobs: dict[tuple[str, str], tuple[bytes, dict]] = {}  # serialized results, for other GPUs
        self._broken_roots: set[str] = set()

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
        self._report_settings(settings)
        if settings.mode == "reduce-overhead":
            self._warn_once(("mode", "reduce-overhead"),
                            "trt_multidev: mode='reduce-overhead' asks for CUDA graphs, which trt_multidev does not "
                            "capture; it compiles as mode='default'.")
        infos = classify_args(gm, example_inputs)
        ops = sum(1 for n in gm.graph.nodes if n.op in ("call_function", "call_method", "call_module"))
        gm._trt_multidev_name = (f"graph({', '.join(i.name for i in infos if i.role is Role.INPUT)[:60]}) "
                                 f"of {ops} ops")
        plan = resolve_device(gm, infos, settings)
        label = str(plan.target) if plan.target is not None else ",".join(plan.state_devices or plan.input_devices)
        self._log(settings, "graph %s: %s", _graph_name(gm), plan.describe())

        if plan.problem is not None:
            return self._fallback(gm, example_inputs, settings, plan, label, "mixed-devices",
                                  plan.problem + " (one target per graph)",
                                  "put the graph's state on one GPU, or set device=cuda:N")
        assert plan.target is not None
        check_visible(plan.target, plan.rule)

        delegate, identity = self._delegate(settings)
        if isinstance(delegate, TorchTensorRTDelegate):
            problem = delegate.unavailable(plan.target)
            if problem is not None:
                return self._fallback(gm, example_inputs, settings, plan, label, problem.key,
                                      problem.reason, problem.remedy)
            note = delegate.precision_note(settings)
            if note:
                self._warn_once(("precision", label), f"trt_multidev: {note}.")

        placement = place(gm, infos, plan)
        placement.gm._trt_multidev_name = gm._trt_multidev_name
        for line in placement.notes:
            self._log(settings, "  placed %s", line)
        key = cache_key(placement.gm, placement.example_inputs, plan.target, settings, identity)
        hit = self._cache.get(key)
        if hit is not None:
            self._stats.bump(label, "cache_hits")
            self._log(settings, "graph %s: in-memory cache hit on %s", _graph_name(gm), label)
            return hit

        start = time.perf_counter()
        try:
            with track(_graph_name(gm), label, settings) as shown:  # progress of slow builds and loads
                compiled, how = self._obtain(delegate, identity, placement, plan, settings, label)
                _check_engine_devices(delegate, compiled, plan.target)
                shown.finish(how, delegate.describe(compiled)
                             if isinstance(delegate, TorchTensorRTDelegate) else None)
        except SettingsError:
            raise
        except Exception as exc:
            log.debug("delegate %s failed on %s", identity, label, exc_info=True)
            remedy = ("the delegate's own traceback is chained below" if settings.strict else
                      "set strict=1 (TRT_MULTIDEV_STRICT=1) to raise instead, with the full traceback")
            wrapper = self._fallback(gm, example_inputs, settings, plan, label,
                                     f"delegate-error:{type(exc).__name__}",
                                     _first_line(exc) if isinstance(exc, EngineDeviceError) else
                                     f"the {_short(identity)} delegate raised {type(exc).__name__}: {_first_line(exc)}",
                                     remedy, placement=placement, cause=exc)
            self._cache.put(key, wrapper)
            return wrapper
        engines = ""
        if isinstance(delegate, TorchTensorRTDelegate):
            if delegate.count_engines(compiled) == 0:
                self._warn_once(("no-engine", label),
                                f"trt_multidev: Torch-TensorRT built no engine for a graph on {label} "
                                f"(too few supported ops for min_block_size={settings.min_block_size}); "
                                "it runs in PyTorch. Lower min_block_size to convert small graphs.")
            engines = f" ({delegate.describe(compiled)})"
        self._log(settings, "graph %s: %s on %s by %s in %.2f s%s", _graph_name(gm), how, label,
                  _short(identity), time.perf_counter() - start, engines)
        wrapper = self._wrap(compiled, plan, placement, settings, label, _short(identity),
                             serialize=not getattr(delegate, "thread_safe", True))
        self._cache.put(key, wrapper)
        return wrapper

    def reset(self) -> None:
        """Forget every compiled result, counter and warn-once record (torch._dynamo.reset()).
        The disk cache stays: it is for later processes."""
        self._cache.clear()
        self._stats.clear()
        with self._lock:
            self._warned.clear()
            self._logged_settings.clear()
            self._blobs.clear()
            self._broken_roots.clear()

    def stats(self) -> dict[str, dict[str, int]]:
        """Counters per device: compiles (delegate builds in this process), cache_hits (reused
        from memory, built for this device), disk_hits (read from the disk cache),
        cross_device_reuses (a build made for another GPU, loaded here from memory or disk),
        fallbacks, corrupt_entries, lock_waits."""
        return self._stats.snapshot()

    # -- pieces --------------------------------------------------------------------------
    def _delegate(self, settings: Settings) -> tuple[Any, str]:
        if settings.delegate is None:
            return self._default_delegate, "torch_tensorrt"
        return load_delegate(settings.delegate)

    def _obtain(self, delegate: Any, identity: str, placement: Placement, plan: DevicePlan,
                settings: Settings, label: str) -> tuple[Callable[..., Any], str]:
        """The compiled graph: from the disk cache (or another GPU's build) when possible, else built."""
        segmented = split_host_work(placement.gm, placement.example_inputs, plan)
        disk = None if segmented is not None else self._disk_plan(delegate, placement, plan, settings, label)
        if disk is not None:
            return self._through_disk(disk, delegate, placement, plan, settings, label)
        if segmented is None:
            compiled, _, _ = self._build(delegate, placement, plan, settings, label)
            return compiled, "built"
        with device_guard(plan.target):
            for name, inputs in segmented.target_segments:
                part, _, _ = _call_delegate(delegate, getattr(segmented.gm, name), inputs, plan.target, settings)
                install(segmented, name, part)
        self._stats.bump(label, "compiles")
        return segmented.gm, (f"built ({len(segmented.target_segments)} device segment(s); host segment(s) "
                              f"{', '.join(segmented.host_segments)} stay in PyTorch; not disk-cached)")

    def _build(self, delegate: Any, placement: Placement, plan: DevicePlan, settings: Settings,
               label: str) -> tuple[Callable[..., Any], Any, list[int] | None]:
        """The delegate on a copy of the whole placed graph, under the target's guard; counted."""
        current_progress().phase("building")
        with device_guard(plan.target):
            built = _call_delegate(delegate, graph_copy(placement.gm), placement.example_inputs, plan.target,
                                   settings)
        self._stats.bump(label, "compiles")
        return built

    # -- disk cache ------------------------------------------------------------------------
    def _disk_plan(self, delegate: Any, placement: Placement, plan: DevicePlan, settings: Settings,
                   label: str) -> _DiskPlan | None:
        assert plan.target is not None
        if not settings.cache or not (hasattr(delegate, "dumps") and hasattr(delegate, "loads")):
            return None
        stable = stable_identity(settings.delegate, delegate)
        if stable is None:
            return None  # a lambda or closure: no name that means the same thing in another process
        if plan.target.type == "cuda" and not cuda_usable():
            return None  # FakeTensor devices: no GPU to identify
        root = str(settings.cache_dir)
        with self._lock:
            if root in self._broken_roots:
                return None
        versions = delegate_versions(delegate)
        store = DiskCache(root, settings.cache_size)
        namespace = store.namespace(versions, identity_of(plan.target))
        key, _ = disk_key(placement.gm, placement.example_inputs, plan.target, settings, stable, versions)
        return _DiskPlan(store, namespace, key, stable, versions)

    def _through_disk(self, disk: _DiskPlan, delegate: Any, placement: Placement, plan: DevicePlan,
                      settings: Settings, label: str) -> tuple[Callable[..., Any], str]:
        assert plan.target is not None
        with self._lock:
            known = self._blobs.get((disk.namespace, disk.key))
        if known is not None:
            payload, meta = known
            compiled = self._load(delegate, payload, meta, plan.target, settings)
            reused = meta.get("device") != str(plan.target)
            self._stats.bump(label, "cross_device_reuses" if reused else "cache_hits")
            return compiled, f"loaded the build made for {meta.get('device')}" if reused else "reused"
        locked = True
        try:
            lock = disk.store.lock(disk.namespace, disk.key)
            try:
                lock.acquire(timeout=0)
            except filelock.Timeout:
                self._stats.bump(label, "lock_waits")
                self._log(settings, "waiting for another process building the same graph (%s)", disk.key[:12])
                current_progress().phase("waiting for another process's build")
                try:
                    lock.acquire(timeout=settings.cache_lock_timeout)
                except filelock.Timeout:
                    # A holder that died on a filesystem that keeps its lock, or a build slower than
                    # the timeout: build anyway; the entry is written atomically either way.
                    locked = False
                    self._warn_once(("lock-timeout", label),
                                    f"trt_multidev: waited {settings.cache_lock_timeout:.0f} s for the lock on disk "
                                    f"cache entry {disk.key[:12]}; building without it "
                                    "(TRT_MULTIDEV_CACHE_LOCK_TIMEOUT sets the wait).")
        except OSError as exc:
            self._disk_broken(disk.store.root, exc, label)
            compiled, _, _ = self._build(delegate, placement, plan, settings, label)
            return compiled, "built (disk cache unavailable)"
        try:
            compiled, how, payload, meta = self._load_or_build(disk, delegate, placement, plan, settings, label)
        finally:
            if locked:
                lock.release()
        if payload is not None:
            with self._lock:
                self._blobs[(disk.namespace, disk.key)] = (payload, meta)
        return compiled, how

    def _load_or_build(self, disk: _DiskPlan, delegate: Any, placement: Placement, plan: DevicePlan,
                       settings: Settings, label: str) -> tuple[Any, str, bytes | None, dict]:
        assert plan.target is not None
        try:
            found = disk.store.read(disk.namespace, disk.key)
        except CorruptEntry as exc:
            self._corrupt(disk, label, str(exc))
            found = None
        except OSError as exc:
            self._disk_broken(disk.store.root, exc, label)
            found = None
        if found is not None:
            payload, meta = found
            try:
                compiled = self._load(delegate, payload, meta, plan.target, settings)
                self._stats.bump(label, "disk_hits")
                if meta.get("device") != str(plan.target):
                    self._stats.bump(label, "cross_device_reuses")
                return compiled, "loaded from the disk cache", payload, meta
            except Exception as exc:  # unreadable despite its checksum: rebuild and replace it
                log.debug("loading disk cache entry %s failed", disk.key[:12], exc_info=True)
                self._corrupt(disk, label, f"{type(exc).__name__}: {_first_line(exc)}")
        compiled, inner, kept = self._build(delegate, placement, plan, settings, label)
        meta = {"graph": _graph_name(placement.gm), "delegate": disk.delegate, "device": str(plan.target),
                "versions": disk.versions, "kept": kept}
        try:
            payload = delegate.dumps(inner)
        except Exception as exc:
            self._warn_once((f"dumps-error:{type(exc).__name__}", label),
                            f"trt_multidev: could not serialize a compiled graph for the disk cache "
                            f"({type(exc).__name__}: {_first_line(exc)}); it stays in memory only.", exc_info=True)
            return compiled, "built (not disk-cached)", None, meta
        try:
            path = disk.store.write(disk.namespace, disk.key, payload, meta)
            disk.store.evict(keep={path})
        except OSError as exc:
            self._disk_broken(disk.store.root, exc, label)
        return compiled, "built and stored in the disk cache", payload, meta

    def _load(self, delegate: Any, payload: bytes, meta: dict, device: torch.device,
              settings: Settings) -> Callable[..., Any]:
        current_progress().phase("loading")
        with device_guard(device):
            compiled = delegate.loads(payload, device=device, settings=settings)
        kept = meta.get("kept")
        return SelectArgs(compiled, kept) if kept is not None else compiled

    def _corrupt(self, disk: _DiskPlan, label: str, why: str) -> None:
        self._stats.bump(label, "corrupt_entries")
        log.warning("trt_multidev: disk cache entry %s is damaged (%s); rebuilding it", disk.key[:12], why)
        try:
            disk.store.remove(disk.namespace, disk.key)
        except OSError:
            pass

    def _disk_broken(self, root: Any, exc: OSError, label: str) -> None:
        with self._lock:
            self._broken_roots.add(str(root))
        self._warn_once(("disk-cache", str(root)),
                        f"trt_multidev: the disk cache at {root} cannot be used ({type(exc).__name__}: {exc}); "
                        "compiling without it. Set TRT_MULTIDEV_CACHE_DIR to a writable directory, "
                        "or TRT_MULTIDEV_CACHE=0.")

    def _wrap(self, compiled: Callable[..., Any], plan: DevicePlan, placement: Placement, settings: Settings,
              label: str, delegate: str, *, serialize: bool, fallback: str | None = None) -> GuardedCallable:
        assert plan.target is not None
        # State moved at compile time is the first cached copy (real tensors only, not fakes).
        seed = {i: (source, placement.example_inputs[i]) for i, source in placement.originals.items()
                if _is_real(placement.example_inputs[i])}
        return GuardedCallable(
            compiled, plan.target, placement.actions, placement.output_moves,
            input_policy=settings.input_policy, serialize=serialize, label=label,
            delegate=delegate, fallback=fallback, notes=placement.notes, seed_state=seed,
        )

    def _fallback(self, gm: torch.fx.GraphModule, example_inputs: Sequence[Any], settings: Settings,
                  plan: DevicePlan, label: str, key: str, reason: str, remedy: str, *,
                  placement: Placement | None = None, cause: BaseException | None = None) -> Callable[..., Any]:
        message = f"trt_multidev: {reason} [{label}]"
        if settings.strict:
            raise TrtMultidevError(f"{message}. strict is on, so no fallback runs. Remedy: {remedy}.") from cause
        self._warn_once((key, label), f"{message}; running the {settings.fallback} fallback instead. "
                                      f"Remedy: {remedy}. (Warned once per reason and device.)")
        self._stats.bump(label, "fallbacks")
        target = plan.target
        on_target = placement is not None and target is not None and (target.type == "cpu" or cuda_usable())
        if not on_target:
            # The graph runs as captured, on its own devices: nothing here can honour the target.
            return self._fallback_compile(settings, gm, example_inputs, label)
        assert placement is not None and target is not None
        with device_guard(target):
            compiled = self._fallback_compile(settings, graph_copy(placement.gm), placement.example_inputs, label)
        return self._wrap(compiled, plan, placement, settings, label, "torch_tensorrt",
                          serialize=False, fallback=f"{settings.fallback} ({reason})")

    def _fallback_compile(self, settings: Settings, gm: torch.fx.GraphModule, example_inputs: Sequence[Any],
                          label: str) -> Callable[..., Any]:
        if settings.fallback == "inductor":
            try:
                from torch._inductor.compile_fx import compile_fx

                return compile_fx(gm, list(example_inputs))
            except Exception as exc:
                if settings.strict:
                    raise
                self._warn_once((f"inductor-error:{type(exc).__name__}", label),
                                f"trt_multidev: the inductor fallback failed on {label} "
                                f"({type(exc).__name__}: {_first_line(exc)}); running eager instead.")
        return gm

    def _warn_once(self, key: tuple[str, str], message: str, exc_info: bool = False) -> None:
        with self._lock:
            if key in self._warned:
                return
            self._warned.add(key)
        log.warning(message, exc_info=exc_info)

    def _report_settings(self, settings: Settings) -> None:
        rows = settings.describe()
        token = repr(rows)
        with self._lock:
            if token in self._logged_settings:
                return
            self._logged_settings.add(token)
        for name in unknown_env_vars():
            self._warn_once(("unknown-env", name), f"trt_multidev: ignoring unknown environment variable {name} "
                                                   "(not a trt_multidev setting; a typo?)")
        self._log(settings, "settings: %s", "; ".join(f"{n}={v} ({s})" for n, v, s in rows))

    @staticmethod
    def _log(settings: Settings, msg: str, *args: Any) -> None:
        log.log(_LEVELS[settings.log_level], msg, *args)


def _check_engine_devices(delegate: Any, compiled: Any, target: torch.device | None) -> None:
    """Every engine a delegate made or loaded must be on the target: one built on another GPU
    would read the wrong memory (an illegal access) or compute nothing useful."""
    report = getattr(delegate, "engine_devices", None)
    if report is None or target is None or target.type != "cuda":
        return
    wrong = [(name, device) for name, device in report(compiled) if device is not None and device != target]
    if wrong:
        names = ", ".join(f"{name!r} on {device}" for name, device in wrong)
        raise EngineDeviceError(f"engine(s) {names}, but this graph was compiled for {target}; "
                                "something switched the CUDA device during the build")


def _call_delegate(delegate: Any, gm: torch.fx.GraphModule, inputs: Sequence[Any], device: torch.device,
                   settings: Settings) -> tuple[Callable[..., Any], Any, list[int] | None]:
    """Call a delegate on a graph it may mutate. Torch-TensorRT drops unused SymInt placeholders
    (dynamic shapes) from the graph it is given; the caller still passes them, so the result is
    adapted to take exactly the arguments that survived. Returns (callable, the delegate's own
    result, the kept indices or None)."""
    before = [n for n in gm.graph.nodes if n.op == "placeholder"]
    try:
        inner = delegate(gm, list(inputs), device=device, settings=settings)
    except BaseException as exc:
        # What the failed build made (engines, builders) dies with its frames: now, while the
        # caller holds the target's guard, rather than whenever the traceback is dropped.
        traceback.clear_frames(exc.__traceback__)
        raise
    after = {n for n in gm.graph.nodes if n.op == "placeholder"}
    kept = [i for i, node in enumerate(before) if node in after]
    if len(kept) == len(before):
        return inner, inner, None
    return SelectArgs(inner, kept), inner, kept


def _is_real(value: Any) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(value, torch.Tensor) and not isinstance(value, FakeTensor)


def _graph_name(gm: torch.fx.GraphModule) -> str:
    """A short readable label: the caller inputs and the op count (logs, cache listings)."""
    return getattr(gm, "_trt_multidev_name", None) or type(gm).__name__


def _short(identity: str) -> str:
    return identity.split("@", 1)[0]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else "(no message)"


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
