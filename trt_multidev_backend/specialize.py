"""Static engines for the shapes a dynamic graph keeps meeting (setting ``static_shapes``).

A dynamic engine serves a range of shapes with one TensorRT profile, and runs slower than a
static engine built for one shape (H200, ResNet-18 fp16: 1.28-1.8x at the same batch,
benchmarks/results/2026-12-02-h200-s8). So the calls of a compiled graph with symbolic sizes are
counted per shape: a shape met :data:`STATIC_AFTER` times within :data:`WINDOW` calls gets a
static engine, built for the graph's GPU on a background thread while the dynamic engine keeps
serving that shape, and from then on calls of that shape run the static engine (a decode loop,
which meets each length once per sequence, gets none). At most ``static_shapes`` static engines per
graph; none for graphs whose module state is over :data:`MAX_STATE_BYTES`, since every engine
holds its own copy of the weights. A static build that fails is warned about once and not tried
again for that shape. A build on the background thread runs only while no other build does
(``build.BUILD_GATE``), so the builds a user did not ask for never run beside theirs;
``trt_multidev_backend.wait_for_builds()`` waits for those under way, ``reset()`` drops those not
started and waits for the one running.
"""

from __future__ import annotations

import atexit
import collections
import logging
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.fx

from .build import BUILD_GATE
from .graphinfo import ArgInfo, Role, attr_tensors, meta_value
from .guard import device_guard

__all__ = ["STATIC_AFTER", "WINDOW", "MAX_STATE_BYTES", "StaticPlan", "static_plan", "Specialized", "Builder",
           "dynamic_of"]

log = logging.getLogger("trt_multidev.specialize")

STATIC_AFTER = 3               # calls of one shape before it gets a static engine
MAX_STATE_BYTES = 512 * 2**20  # graphs holding more module state get no static engines
WINDOW = 64                    # ...within this many calls: a decode loop, which meets each length once
                               # per sequence, builds none


@dataclass(frozen=True)
class StaticPlan:
    """Which arguments a call's shape is read from (`shaped`: tensors with symbolic sizes;
    `sizes`: SymInt arguments), which are caller inputs (`inputs`: a build needs only their
    metadata, so empty tensors stand in for them), and why no static engines are built
    (`refusal`, None when they are)."""

    shaped: tuple[int, ...]
    sizes: tuple[int, ...]
    inputs: tuple[int, ...]
    refusal: str | None = None

    def key(self, args: Sequence[Any]) -> tuple:
        """What a static engine is specific to: the shaped arguments' sizes and strides, the sizes."""
        return (tuple((args[i].shape, args[i].stride()) for i in self.shaped)
                + tuple(args[i] for i in self.sizes))


def _is_symbolic(value: Any) -> bool:
    if isinstance(value, torch.SymInt):
        return True
    return isinstance(value, torch.Tensor) and any(isinstance(d, torch.SymInt) for d in value.shape)


def _state_bytes(gm: torch.fx.GraphModule, infos: Sequence[ArgInfo]) -> int:
    total = sum(t.numel() * t.element_size() for t in attr_tensors(gm))
    for info in infos:
        if info.role is Role.STATE and isinstance(info.example, torch.Tensor):
            total += info.example.numel() * info.example.element_size()
    return total


def static_plan(gm: torch.fx.GraphModule, infos: Sequence[ArgInfo]) -> StaticPlan | None:
    """None for a graph without symbolic sizes (nothing to specialize)."""
    shaped, sizes = [], []
    for info in infos:
        if info.role is not Role.INPUT:
            continue
        value = meta_value(info.node)
        value = info.example if value is None else value
        if not _is_symbolic(value) and not _is_symbolic(info.example):
            continue
        (sizes if isinstance(value, torch.SymInt) or isinstance(info.example, (int, torch.SymInt))
         else shaped).append(info.index)
    if not shaped and not sizes:
        return None
    inputs = tuple(i.index for i in infos if i.role is Role.INPUT and isinstance(i.example, torch.Tensor))
    held = _state_bytes(gm, infos)
    refusal = None
    if held > MAX_STATE_BYTES:
        refusal = (f"its module state holds {held / 2**20:.0f} MiB, over the {MAX_STATE_BYTES // 2**20} MiB "
                   "up to which each static engine's own copy of the weights is worth its speed")
    return StaticPlan(tuple(shaped), tuple(sizes), inputs, refusal)


@dataclass(frozen=True)
class _Empty:
    """A caller input's metadata: an empty tensor like it is made on the builder's thread."""

    shape: torch.Size
    stride: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device

    def make(self) -> torch.Tensor:
        return torch.empty_strided(self.shape, self.stride, dtype=self.dtype, device=self.device)


class Specialized:
    """A compiled dynamic graph that runs static engines for the shapes it meets often.

    `build(args)` makes the static engine for the call shape of `args` (on the builder's thread)
    and returns (callable, how); `ready(key, how, seconds)` and `failed(key, exc)` report.
    """

    def __init__(self, dynamic: Callable[..., Any], plan: StaticPlan, device: torch.device, limit: int,
                 builder: "Builder", build: Callable[[list[Any]], tuple[Callable[..., Any], str]],
                 ready: Callable[[tuple, str, float], None], failed: Callable[[tuple, BaseException], None]):
        self.dynamic = dynamic
        self.plan = plan
        self.device = device
        self.limit = limit
        self._builder = builder
        self._build = build
        self._ready = ready
        self._failed = failed
        self._static: dict[tuple, Callable[..., Any]] = {}
        self._counts: dict[tuple, int] = {}  # per shape, in the current window of calls
        self._calls = 0
        self._asked: set[tuple] = set()  # built, being built, waiting, or failed: never asked again
        self._lock = threading.Lock()
        self._open = limit > 0

    def __call__(self, *args: Any) -> Any:
        key = self.plan.key(args)
        static = self._static.get(key)
        if static is not None:
            return static(*args)
        if self._open:
            self._count(key, args)
        return self.dynamic(*args)

    @property
    def shapes(self) -> list[tuple]:
        """The call shapes that run a static engine now."""
        return list(self._static)

    def _count(self, key: tuple, args: Sequence[Any]) -> None:
        with self._lock:
            if key in self._asked or not self._open:
                return
            self._calls += 1
            if self._calls > WINDOW:
                self._calls = 1
                self._counts.clear()
            seen = self._counts.get(key, 0) + 1
            if seen < STATIC_AFTER:
                self._counts[key] = seen
                return
            self._counts.pop(key, None)
            self._asked.add(key)
            if len(self._asked) >= self.limit:
                self._open = False
                self._counts.clear()
        inputs = set(self.plan.inputs)
        spec = [_Empty(a.shape, a.stride(), a.dtype, a.device) if i in inputs and isinstance(a, torch.Tensor) else a
                for i, a in enumerate(args)]
        self._builder.submit(_Job(weakref.ref(self), key, spec, torch.is_grad_enabled()))

    def _make(self, key: tuple, spec: list[Any], grad: bool = False) -> None:
        """Build on the builder's thread, under the target's guard and the caller's grad mode."""
        import time

        start = time.perf_counter()
        try:
            with BUILD_GATE.alone(), device_guard(self.device), torch.set_grad_enabled(grad):
                args = [a.make() if isinstance(a, _Empty) else a for a in spec]
                static, how = self._build(args)
        except Exception as exc:  # the dynamic engine keeps serving this shape
            self._failed(key, exc)
            return
        self._static[key] = static
        self._ready(key, how, time.perf_counter() - start)

    def _forget(self, key: tuple) -> None:
        """A build dropped before it started (reset): the shape may be asked for again."""
        with self._lock:
            self._asked.discard(key)
            self._open = self.limit > len(self._asked)


def dynamic_of(fn: Any) -> Any:
    """The delegate's own result under a Specialized wrapper (for tools that inspect engines)."""
    return fn.dynamic if isinstance(fn, Specialized) else fn


class _Job:
    __slots__ = ("owner", "key", "spec", "grad")

    def __init__(self, owner: "weakref.ref[Specialized]", key: tuple, spec: list[Any], grad: bool = False):
        self.owner, self.key, self.spec, self.grad = owner, key, spec, grad

    def run(self) -> None:
        owner = self.owner()
        if owner is not None:  # a graph dynamo dropped needs no engine
            owner._make(self.key, self.spec, self.grad)

    def drop(self) -> None:
        owner = self.owner()
        if owner is not None:
            owner._forget(self.key)


class Builder:
    """One background thread that runs static builds one at a time, in the order asked."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._jobs: collections.deque[_Job] = collections.deque()
        self._running = 0
        self._thread: threading.Thread | None = None
        self._closed = False

    def submit(self, job: _Job) -> None:
        with self._cv:
            if self._closed:
                job.drop()
                return
            self._jobs.append(job)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="trt_multidev-static-builds", daemon=True)
                self._thread.start()
                atexit.register(self.close)  # drop what waits, finish the build under way
            self._cv.notify_all()

    def _work(self) -> None:
        while True:
            with self._cv:
                while not self._jobs:
                    if self._closed:
                        return
                    self._cv.wait()
                job = self._jobs.popleft()
                self._running += 1
            try:
                job.run()
            except BaseException:  # noqa: BLE001 - reported by the job; the thread keeps serving
                log.debug("a static build raised", exc_info=True)
            finally:
                job = None  # type: ignore[assignment]  # what it built is the graph's, not this frame's
                with self._cv:
                    self._running -= 1
                    self._cv.notify_all()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until no build waits or runs; False if `timeout` seconds passed first."""
        with self._cv:
            return self._cv.wait_for(lambda: not self._jobs and not self._running, timeout)

    def cancel(self) -> int:
        """Drop the builds not started (their shapes may be asked for again); wait for the one
        running. Returns how many were dropped."""
        with self._cv:
            dropped = list(self._jobs)
            self._jobs.clear()
        for job in dropped:
            job.drop()
        self.wait()
        return len(dropped)

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self.cancel()
