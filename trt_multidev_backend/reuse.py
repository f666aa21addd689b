"""Compiled graphs kept for later: on disk for other processes, and in this process for other
GPUs of the same model (a build made for cuda:0 is loaded on cuda:1 instead of rebuilt).

The pipeline asks for a `DiskPlan` (where the entry lives) and then for the compiled graph:
this process's copy of the entry, the entry on disk, or a build, made once across processes
under the entry's lock and stored. Damaged entries are counted, removed and rebuilt; an unusable
directory is warned about once and left alone for the rest of the process.

A build made for one GPU is loaded on another with its engines bound there (the delegate's
`loads`) and the device its PyTorch code names (factory calls placed on the target:
`arange(..., device=cuda:0)`) changed to the new one; where that cannot be made sure, the graph is
built for the new GPU instead.

What a compiled graph learns while it runs (TensorRT-RTX compiles kernels for shapes met after
the build) is stored again: entries this process wrote or loaded are written back, whole and
atomically, when trt_multidev resets and at interpreter exit, if the delegate says they grew
(`needs_saving(compiled)`). A later process then loads those kernels instead of compiling them.
"""

from __future__ import annotations

import atexit
import logging
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Callable

import filelock
import torch
import torch.fx
from torch.fx.node import map_aggregate

from .build import Built, first_line_of
from .cache import Stats, disk_key, names_device
from .delegate import delegate_versions, stable_identity
from .device import DevicePlan
from .diskcache import CorruptEntry, DiskCache, identity_of
from .guard import cuda_usable, device_guard
from .placement import Placement
from .progress import current as current_progress
from .runtime import SelectArgs
from .settings import Settings

__all__ = ["DiskPlan", "Reuse", "graph_name", "relocated"]

log = logging.getLogger("trt_multidev.reuse")


@dataclass(frozen=True)
class DiskPlan:
    store: DiskCache
    namespace: str
    key: str
    delegate: str
    versions: dict
    names_device: bool = False  # the graph's code names its GPU: moved when loaded on another


@dataclass(frozen=True)
class _Held:
    """An entry whose compiled graph lives in this process: written back if it learns."""

    disk: DiskPlan
    delegate: Any
    compiled: "weakref.ref[Any]"
    device: torch.device
    meta: dict


class Reuse:
    """The disk cache and this process's copies of its entries, for one backend instance."""

    def __init__(self, stats: Stats, warn_once: Callable[..., None], log_at: Callable[..., None]) -> None:
        self._stats = stats
        self._warn_once = warn_once
        self._log = log_at
        self._lock = threading.Lock()
        self._blobs: dict[tuple[str, str], tuple[bytes, dict]] = {}  # serialized results, for other GPUs
        self._broken_roots: set[str] = set()
        self._held: list[_Held] = []
        self._exit_hook = False

    def clear(self) -> None:
        """Forget this process's copies and broken directories (reset()); the disk stays."""
        with self._lock:
            self._blobs.clear()
            self._broken_roots.clear()
            self._held.clear()

    def save_learned(self) -> int:
        """Write back the entries whose compiled graphs grew since they were stored (new
        kernels); how many were written. Failures are logged, never raised: the entry on disk
        stays valid as it was."""
        with self._lock:
            held = list(self._held)
        written = 0
        for entry in held:
            compiled = entry.compiled()
            if compiled is None:
                continue
            try:
                with device_guard(entry.device):
                    if not entry.delegate.needs_saving(compiled):
                        continue
                    payload = entry.delegate.dumps(compiled)
                entry.disk.store.write(entry.disk.namespace, entry.disk.key, payload, entry.meta)
                written += 1
                log.info("trt_multidev: stored the kernels graph %s compiled since its build (disk cache entry %s)",
                         entry.meta.get("graph", "?"), entry.disk.key[:12])
            except Exception:
                log.debug("writing back disk cache entry %s failed", entry.disk.key[:12], exc_info=True)
        return written

    def _hold(self, disk: DiskPlan, delegate: Any, compiled: Any, device: torch.device, meta: dict) -> None:
        if not hasattr(delegate, "needs_saving"):
            return
        try:
            ref = weakref.ref(compiled)
        except TypeError:  # not weak-referenceable: nothing to watch
            return
        with self._lock:
            self._held = [h for h in self._held if h.compiled() is not None]  # graphs since dropped
            self._held.append(_Held(disk, delegate, ref, device, meta))
            if not self._exit_hook:  # registered after the engines' release hook, so it runs first
                self._exit_hook = True
                atexit.register(_save_at_exit, weakref.ref(self))

    def plan(self, delegate: Any, placement: Placement, plan: DevicePlan, settings: Settings) -> DiskPlan | None:
        """Where this graph's entry lives, or None when the disk cache does not apply."""
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
        key, names = disk_key(placement.gm, placement.example_inputs, plan.target, settings, stable, versions)
        return DiskPlan(store, namespace, key, stable, versions, names)

    def obtain(self, disk: DiskPlan, delegate: Any, build: Callable[[], Built], placement: Placement,
               plan: DevicePlan, settings: Settings, label: str, *, counted: bool = True) -> tuple[Built, str]:
        """The compiled graph from this process's copy of the entry (another GPU's build), from
        disk, or built (once across processes: under the entry's lock) and stored. `counted`:
        False for static engines (specialize.py), which are counted apart."""
        assert plan.target is not None
        bump = self._stats.bump if counted else _uncounted
        with self._lock:
            known = self._blobs.get((disk.namespace, disk.key))
        if known is not None:
            payload, meta = known
            loaded = self.load(delegate, payload, meta, plan.target, settings)
            if loaded is not None:
                self._hold(disk, delegate, loaded.inner, plan.target, meta)
                reused = meta.get("device") != str(plan.target)
                bump(label, "cross_device_reuses" if reused else "cache_hits")
                return loaded, f"loaded the build made for {meta.get('device')}" if reused else "reused"
        locked = True
        try:
            lock = disk.store.lock(disk.namespace, disk.key)
            try:
                lock.acquire(timeout=0)
            except filelock.Timeout:
                bump(label, "lock_waits")
                current_progress().phase("waiting for another process's build")
                self._log(settings, "waiting for another process building the same graph (%s)", disk.key[:12])
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
            return build(), "built (disk cache unavailable)"
        try:
            built, how, payload, meta = self._load_or_build(disk, delegate, build, placement, plan, settings,
                                                            label, bump)
        finally:
            if locked:
                lock.release()
        if payload is not None:
            with self._lock:
                self._blobs[(disk.namespace, disk.key)] = (payload, meta)
        return built, how

    def _load_or_build(self, disk: DiskPlan, delegate: Any, build: Callable[[], Built], placement: Placement,
                       plan: DevicePlan, settings: Settings, label: str,
                       bump: Callable[[str, str], None]) -> tuple[Built, str, bytes | None, dict]:
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
                loaded = self.load(delegate, payload, meta, plan.target, settings)
                if loaded is not None:
                    self._hold(disk, delegate, loaded.inner, plan.target, meta)
                    bump(label, "disk_hits")
                    if meta.get("device") != str(plan.target):
                        bump(label, "cross_device_reuses")
                    return loaded, "loaded from the disk cache", payload, meta
            except Exception as exc:  # unreadable despite its checksum: rebuild and replace it
                log.debug("loading disk cache entry %s failed", disk.key[:12], exc_info=True)
                self._corrupt(disk, label, first_line_of(exc))
        built = build()
        meta = {"graph": graph_name(placement.gm), "delegate": disk.delegate, "device": str(plan.target),
                "names_device": disk.names_device,
                "versions": disk.versions, "kept": built.kept, "excluded": built.excluded, "left": built.left}
        try:
            payload = delegate.dumps(built.inner)
        except Exception as exc:
            self._warn_once((f"dumps-error:{type(exc).__name__}", label),
                            f"trt_multidev: could not serialize a compiled graph for the disk cache "
                            f"({first_line_of(exc)}); it stays in memory only.", exc_info=True)
            return built, "built (not disk-cached)", None, meta
        try:
            path = disk.store.write(disk.namespace, disk.key, payload, meta)
            disk.store.evict(keep={path})
        except OSError as exc:
            self._disk_broken(disk.store.root, exc, label)
        self._hold(disk, delegate, built.inner, plan.target, meta)
        return built, "built and stored in the disk cache", payload, meta

    def load(self, delegate: Any, payload: bytes, meta: dict, device: torch.device,
             settings: Settings) -> Built | None:
        """An entry's compiled graph, rebuilt on `device` under its guard; None where its code names
        the GPU it was built for, another one, and could not be moved to this one (then it is built
        here)."""
        current_progress().phase("loading")
        source = meta.get("device")
        moving = bool(meta.get("names_device")) and source is not None and source != str(device)
        try:
            with device_guard(device):
                inner = delegate.loads(payload, device=device, settings=settings)
        except Exception as exc:
            if not moving:
                raise  # the caller counts the entry as damaged
            # Loading traces the graph's code again, which runs its factory calls on the device
            # they name: one this process may not have. Not damage: it is built here instead.
            self._log(settings, "the build made for %s could not be loaded on %s (%s); building for %s", source,
                      device, first_line_of(exc), device)
            return None
        if moving:
            inner = relocated(inner, torch.device(source), device)
            if inner is None:
                self._log(settings, "the build made for %s names that device in code that could not be moved to "
                          "%s; building for %s", source, device, device)
                return None
        kept = meta.get("kept")
        excluded = [tuple(pair) for pair in meta.get("excluded", [])]
        left = [tuple(piece) for piece in meta.get("left", [])]
        return Built(SelectArgs(inner, kept) if kept is not None else inner, inner, kept, excluded, left)

    def _corrupt(self, disk: DiskPlan, label: str, why: str) -> None:
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


def _uncounted(label: str, counter: str) -> None:
    pass


def _save_at_exit(ref: "weakref.ref[Reuse]") -> None:
    reuse = ref()
    if reuse is not None:
        reuse.save_learned()


def relocated(compiled: Any, source: torch.device, target: torch.device) -> Any:
    """`compiled`, built for `source`, with every device its graph code names as `source` (torch
    devices or strings in the ops' arguments) changed to `target`, as placement would have made it
    for `target`, and the tensors its graphs read that are on `source` moved there (loading a graph
    module traces its code again, which computes a factory call of constant arguments on the device
    it names, outside `map_location`); None where that cannot be made sure: a result that is not a
    module, or code that still names `source`."""
    if not isinstance(compiled, torch.nn.Module):
        return None

    swapped: list[bool] = []

    def swap(value: Any) -> Any:
        if (isinstance(value, torch.device) and value == source) or (isinstance(value, str) and value == str(source)):
            swapped.append(True)
            return target if isinstance(value, torch.device) else str(target)
        return value

    for module in compiled.modules():
        if not isinstance(module, torch.fx.GraphModule):
            continue
        swapped.clear()
        for node in module.graph.nodes:
            before = len(swapped)
            args, kwargs = map_aggregate(node.args, swap), map_aggregate(node.kwargs, swap)
            if len(swapped) > before:
                node.args, node.kwargs = args, kwargs
        if swapped:
            module.recompile()
        if names_device(module.code, source):
            return None
        for node in module.graph.nodes:
            if node.op == "get_attr":
                _move_attribute(module, str(node.target), source, target)
    return compiled


def _move_attribute(module: torch.nn.Module, qualname: str, source: torch.device, target: torch.device) -> None:
    """The tensor `module.<qualname>` on `target` where it is on `source` (buffer, parameter or
    plain attribute alike)."""
    owner_name, _, name = qualname.rpartition(".")
    owner = module.get_submodule(owner_name) if owner_name else module
    value = getattr(owner, name, None)
    if not isinstance(value, torch.Tensor) or value.device != source:
        return
    moved = value.detach().to(target)
    if name in owner._parameters:
        owner._parameters[name] = torch.nn.Parameter(moved, requires_grad=value.requires_grad)
    elif name in owner._buffers:
        owner._buffers[name] = moved
    else:
        setattr(owner, name, moved)


def graph_name(gm: torch.fx.GraphModule) -> str:
    """A short readable label: the caller inputs and the op count (logs, cache listings)."""
    return getattr(gm, "_trt_multidev_name", None) or type(gm).__name__
