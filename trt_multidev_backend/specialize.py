"""Static engines for the shapes a dynamic graph keeps meeting (setting ``static_shapes``).

A dynamic engine serves a range of shapes with one TensorRT profile, and runs slower than a
static engine built for one shape (H200, ResNet-18 fp16: 1.27-1.8x at the same batch,
benchmarks/results/2026-12-03-h200-s9). So the calls of a compiled graph with symbolic sizes are
counted per shape: a shape met :data:`STATIC_AFTER` times within :data:`WINDOW` calls, and in at
least 1 of :data:`SHARE` of them, gets a static engine, built for the graph's GPU during that
call (a stall like a recompile), and from then on calls of that shape run it; a decode loop,
which meets each length once per sequence, gets none. At most ``static_shapes`` static engines
per graph; none for graphs whose module state is over :data:`MAX_STATE_BYTES`, since every
engine holds its own copy of the weights. A static build that fails is warned about once and
not tried again for that shape.

Why not in the background: a build traces the graph with torch.fx, whose "tracing now" flag is
one process-wide global, and while it is set every call of a torch.compile'd function on any
other thread raises "Detected that you are using FX to symbolically trace a dynamo-optimized
function" (GPT-2's generate() raised it on the H200 in session 9 while static engines were built
on a background thread).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.fx

from .graphinfo import ArgInfo, Role, attr_tensors
from .guard import device_guard

__all__ = ["STATIC_AFTER", "WINDOW", "SHARE", "MAX_STATE_BYTES", "StaticPlan", "static_plan", "Specialized",
           "dynamic_of"]

STATIC_AFTER = 3               # calls of one shape before it gets a static engine
MAX_STATE_BYTES = 512 * 2**20  # graphs holding more module state get no static engines
WINDOW = 64                    # ...within this many calls of the graph,
SHARE = 8                      # ...making at least 1/SHARE of them: a decode loop, which meets each
                               # length once per sequence, builds none


@dataclass(frozen=True)
class StaticPlan:
    """Which arguments a call's shape is read from (`shaped`: tensors with symbolic sizes;
    `sizes`: SymInt arguments), which are caller inputs (`inputs`: empty tensors stand in for
    them in a build), and why no static engines are built (`refusal`, None when they are)."""

    shaped: tuple[int, ...]
    sizes: tuple[int, ...]
    inputs: tuple[int, ...]
    refusal: str | None = None

    def key(self, args: Sequence[Any]) -> tuple:
        """What a static engine is specific to: the shaped arguments' sizes and strides, the sizes."""
        return self.keyer()(args)

    def keyer(self) -> Callable[[Sequence[Any]], tuple]:
        """`key` as one closure, for the per-call path (a generator per call cost about 1 µs)."""
        shaped, sizes = self.shaped, self.sizes
        if len(shaped) == 1:
            (i,) = shaped
            if not sizes:
                return lambda args: ((args[i].shape, args[i].stride()),)
            return lambda args: ((args[i].shape, args[i].stride()), *[args[j] for j in sizes])
        return lambda args: (*[(args[i].shape, args[i].stride()) for i in shaped], *[args[j] for j in sizes])


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
        if info.role is Role.INPUT and _is_symbolic(info.value):
            (shaped if isinstance(info.example, torch.Tensor) else sizes).append(info.index)
    if not shaped and not sizes:
        return None
    inputs = tuple(i.index for i in infos if i.role is Role.INPUT and isinstance(i.example, torch.Tensor))
    held = _state_bytes(gm, infos)
    refusal = None
    if held > MAX_STATE_BYTES:
        refusal = (f"its module state holds {held / 2**20:.0f} MiB, over the {MAX_STATE_BYTES // 2**20} MiB "
                   "up to which each static engine's own copy of the weights is worth its speed")
    return StaticPlan(tuple(shaped), tuple(sizes), inputs, refusal)


class Specialized:
    """A compiled dynamic graph that runs static engines for the shapes it meets often.

    `build(args)` makes the static engine for the call shape of `args` and returns (callable,
    how); `ready(key, how, seconds)` and `failed(key, exc)` report. Safe to call from several
    threads: one of them builds a shape's engine, the others run the dynamic engine meanwhile.
    """

    def __init__(self, dynamic: Callable[..., Any], plan: StaticPlan, device: torch.device, limit: int,
                 build: Callable[[list[Any]], tuple[Callable[..., Any], str]],
                 ready: Callable[[tuple, str, float], None], failed: Callable[[tuple, BaseException], None]):
        self.dynamic = dynamic
        self.plan = plan
        self._key = plan.keyer()
        self.device = device
        self.limit = limit
        self._build = build
        self._ready = ready
        self._failed = failed
        self._static: dict[tuple, Callable[..., Any]] = {}
        self._counts: dict[tuple, int] = {}  # per shape, in the current window of calls
        self._calls = 0
        self._asked: set[tuple] = set()  # built, being built or failed: never asked for again
        self._lock = threading.Lock()
        self._open = limit > 0

    def __call__(self, *args: Any) -> Any:
        key = self._key(args)
        static = self._static.get(key)
        if static is not None:
            return static(*args)
        if self._open and self._due(key):
            static = self._make(key, args)
            if static is not None:
                return static(*args)
        return self.dynamic(*args)

    @property
    def shapes(self) -> list[tuple]:
        """The call shapes that run a static engine now."""
        return list(self._static)

    def _due(self, key: tuple) -> bool:
        """Count a call of `key`; True once for the call that makes it recurring."""
        with self._lock:
            if key in self._asked or not self._open:
                return False
            self._calls += 1
            if self._calls > WINDOW:
                self._calls = 1
                self._counts.clear()
            seen = self._counts.get(key, 0) + 1
            if seen < STATIC_AFTER or seen * SHARE < self._calls:
                self._counts[key] = seen
                return False
            if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
                return False  # the caller captures a CUDA graph: no build inside it
            self._counts.pop(key, None)
            self._asked.add(key)
            if len(self._asked) >= self.limit:
                self._open = False
                self._counts.clear()
            return True

    def _make(self, key: tuple, args: Sequence[Any]) -> Callable[..., Any] | None:
        inputs = set(self.plan.inputs)
        start = time.perf_counter()
        try:
            with device_guard(self.device):
                # Empty tensors stand in for the caller's inputs: a build needs their shapes, not
                # their values, and must not keep the caller's tensors alive.
                example = [torch.empty_strided(a.shape, a.stride(), dtype=a.dtype, device=a.device)
                           if i in inputs and isinstance(a, torch.Tensor) else a for i, a in enumerate(args)]
                static, how = self._build(example)
        except Exception as exc:  # the dynamic engine keeps serving this shape
            self._failed(key, exc)
            return None
        self._static[key] = static
        self._ready(key, how, time.perf_counter() - start)
        return static


def dynamic_of(fn: Any) -> Any:
    """The delegate's own result under a Specialized wrapper (for tools that inspect engines)."""
    return fn.dynamic if isinstance(fn, Specialized) else fn
