"""CUDA graphs (setting `cuda_graphs`, on with mode="reduce-overhead"): a compiled graph's launch,
captured per input shape on its own device and replayed, so a call costs one graph launch
instead of a Python call and a kernel launch per op and per engine.

Decided at compile time (`capture_plan`): graphs with symbolic sizes are not captured (TensorRT
ties a captured launch to the shapes its execution context holds; TensorRT-RTX captures such
engines itself, per shape), nor graphs that run on the CPU. A caller input the graph changes in
place (a static KV cache's tensors) is used where it lives, as module state is: a replay writes
it again, where a copy would take the update instead.

At call time (`CudaGraphs`): the first call with an input shape runs uncaptured (it warms up what
initialises lazily: cuBLAS handles, TensorRT's first enqueue), the second captures and replays.
Caller inputs are copied into the captured graph's input buffers; module state (parameters,
buffers) and inputs changed in place are used where they live, so in-place updates of them reach
every replay, and one that moved (a new address) is captured again; if that happens right after a
capture more than `limit` times (a new tensor at every call), the graph runs uncaptured, with one
warning. Outputs are copied out of the graph's buffers on
every call: nothing handed to a caller is overwritten by a later replay. One lock per compiled
graph; a call on another stream than the previous one first waits for that stream's work, because
the graph's buffers and the engines' scratch memory are shared.
"""

from __future__ import annotations

import logging
import operator
import threading
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.fx
from torch.utils import _pytree as pytree

from .build import first_line_of
from .graphinfo import ArgInfo, Role, changed_in_place, symbolic_sizes
from .guard import current_stream
from .runtime import tensor_version

__all__ = ["CapturePlan", "CudaGraphs", "ShapePolicy", "capture_plan", "signature"]

log = logging.getLogger("trt_multidev.cudagraphs")
_data_ptr = torch.Tensor.data_ptr

@dataclass(frozen=True)
class CapturePlan:
    """`static`: argument indices used where they live (module state, inputs changed in place);
    `names`: every argument's name, for messages; `refusal`: why the graph is not captured, or
    None; `kind`: the refusal's kind (cpu, dynamic), for warning once per kind; `updated`: the
    inputs changed in place among `static`, whose shapes stay in the key (dynamo guards module
    state's, not theirs under a static engine of a graph with dynamic shapes)."""

    static: tuple[int, ...]
    names: tuple[str, ...]
    refusal: str | None = None
    kind: str = ""
    updated: tuple[int, ...] = ()


def capture_plan(gm: torch.fx.GraphModule, infos: Sequence[ArgInfo], device: torch.device, *,
                 fixed_shapes: bool = False) -> CapturePlan:
    """Whether and how a graph placed on `device` can be captured (see the module docstring).
    `fixed_shapes`: for a static engine built for one shape of a graph with symbolic sizes."""
    static = tuple(i.index for i in infos if i.role is Role.STATE)
    names = tuple(i.name for i in infos)
    if device.type != "cuda":
        return CapturePlan(static, names, f"it runs on {device}, and CUDA graphs need a GPU", "cpu")
    symbolic = [] if fixed_shapes else symbolic_sizes(infos)
    if symbolic:
        return CapturePlan(static, names, f"it has dynamic shapes ({'; '.join(symbolic)}), and TensorRT ties a "
                           "captured launch to the shapes its execution context holds (TensorRT-RTX captures those "
                           "engines per shape itself); the static engines built for shapes it meets often are "
                           "captured (setting static_shapes, unless 0), and dynamic=False captures one graph per "
                           "shape", "dynamic")
    changed = set(changed_in_place(gm, infos, (Role.INPUT,)))  # used where they live: a replay writes them
    updated = tuple(i.index for i in infos if i.name in changed and i.index not in static)
    return CapturePlan(tuple(sorted(static + updated)), names, updated=updated)


def signature(args: Sequence[Any]) -> tuple:
    """What a captured graph is specific to: each tensor's shape and dtype, each other value."""
    parts: list[Any] = []
    for a in args:
        if isinstance(a, torch.Tensor):
            parts.append((a.shape, a.dtype))
        else:
            try:
                hash(a)
                parts.append((type(a), a))
            except TypeError:
                parts.append((type(a), repr(a)))
    return tuple(parts)


class ShapePolicy:
    """What to do with a call of a given signature: "run" (uncaptured), "warm" (the first call of
    a signature: run it uncaptured, and capture at the next), "capture", or "replay". At most
    `limit` signatures are captured; a refusal (a failed capture) stops capturing altogether."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.refusal: str | None = None
        self._warmed: set[tuple] = set()
        self._captured: set[tuple] = set()

    def decide(self, key: tuple) -> str:
        if key in self._captured:
            return "replay"
        if self.refusal is not None:
            return "run"
        if key not in self._warmed:
            self._warmed.add(key)
            return "warm"
        if len(self._captured) >= self.limit:
            return "run"
        return "capture"

    def captured(self, key: tuple) -> None:
        self._captured.add(key)

    def forget(self, key: tuple) -> None:
        """A captured graph that no longer fits (module state moved): capture it again."""
        self._captured.discard(key)

    def refuse(self, why: str) -> None:
        self.refusal = why
        self._captured.clear()

    @property
    def full(self) -> bool:
        return len(self._captured) >= self.limit


def _picker(indices: list[int]) -> Callable[[Sequence[Any]], tuple]:
    """args -> the tuple of the args at `indices` (itemgetter alone returns a bare item for one)."""
    if len(indices) > 1:
        return operator.itemgetter(*indices)
    if indices:
        only = indices[0]
        return lambda args: (args[only],)
    return lambda args: ()


class _Captured:
    """One captured launch: its graph, input buffers (copies of caller inputs, module state as
    is) and output buffers."""

    def __init__(self, fn: Callable[..., Any], args: Sequence[Any], static: frozenset[int], stream: Any) -> None:
        self.inputs = [a if i in static or not isinstance(a, torch.Tensor) else a.clone() for i, a in enumerate(args)]
        self.copied = [(self.inputs[i], i) for i, a in enumerate(args) if isinstance(a, torch.Tensor) and i not in static]
        # Module state is checked by address on every replay: one C-level pass over all of it.
        self._pinned = _picker([i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and i in static])
        self._pointers = list(map(_data_ptr, self._pinned(args)))
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: other threads may allocate or synchronize meanwhile; this one may not.
        with torch.cuda.graph(self.graph, stream=stream, capture_error_mode="thread_local"):
            out = fn(*self.inputs)
        self.outputs, self.spec = pytree.tree_flatten(out)

    def aliasing(self) -> str | None:
        """Why copying outputs out would differ from eager: an output that is (a view of) an input
        or of another output. None when every output has storage of its own."""
        seen: dict[int, str] = {}
        for i, x in enumerate(self.inputs):
            if isinstance(x, torch.Tensor):
                seen[x.untyped_storage().data_ptr()] = f"input {i}"
        for j, y in enumerate(self.outputs):
            if isinstance(y, torch.Tensor):
                ptr = y.untyped_storage().data_ptr()
                if ptr in seen:
                    return f"output {j} shares memory with {seen[ptr]}"
                seen[ptr] = f"output {j}"
        return None

    def fits(self, args: Sequence[Any]) -> bool:
        return list(map(_data_ptr, self._pinned(args))) == self._pointers

    def replay(self, args: Sequence[Any]) -> Any:
        for buffer, i in self.copied:
            buffer.copy_(args[i])
        self.graph.replay()
        return pytree.tree_unflatten([o.clone() if isinstance(o, torch.Tensor) else o for o in self.outputs],
                                     self.spec)


class CudaGraphs:
    """`fn` (a compiled graph on `device`, called with that device current) captured per input
    signature. `warn(key, message)` warns once per key; `count(counter)` counts captures
    ("cuda_graphs") and a graph given up ("uncaptured")."""

    def __init__(self, fn: Callable[..., Any], device: torch.device, plan: CapturePlan, *, limit: int,
                 warn: Callable[[tuple[str, str], str], None], label: str,
                 count: Callable[[str], None] = lambda counter: None) -> None:
        self.fn = fn
        self.device = device
        self.label = label
        self.policy = ShapePolicy(limit)
        self.captures = 0
        self._static = frozenset(plan.static)
        # The signature covers the caller's inputs (those used where they live too): module state
        # keeps its shapes (dynamo guards them) and is checked by address instead.
        self._keyed = _picker([i for i in range(len(plan.names)) if i not in self._static or i in plan.updated])
        self._names = plan.names
        self._warn = warn
        self._count = count
        self._graphs: dict[tuple, _Captured] = {}
        self._told_limit = False
        self._steady = 0  # replays since what is used where it lives last moved
        self._churn = 0  # moves soon after a capture
        self._lock = threading.Lock()
        self._last: torch.cuda.Stream | None = None  # the stream of the latest call
        self._stream: torch.cuda.Stream | None = None

    def __repr__(self) -> str:
        return f"<CUDA graphs of {self.label}: {len(self._graphs)} captured>"

    def __call__(self, *args: Any) -> Any:
        key = signature(self._keyed(args))
        with self._lock:
            stream = current_stream(self.device)  # one object per stream
            last = self._last
            if last is not None and last is not stream and last != stream:
                stream.wait_stream(last)  # everything enqueued there so far, the latest call included
            self._last = stream
            return self._call(key, args)

    def _call(self, key: tuple, args: Sequence[Any]) -> Any:
        action = self.policy.decide(key)
        if action == "replay":
            entry = self._graphs[key]
            if entry.fits(args):
                self._steady += 1
                return entry.replay(args)
            del self._graphs[key]  # module state moved: capture again at once (it was warm)
            self.policy.forget(key)
            # Moved again right after a capture (fewer than 2 replays since): a new tensor at every
            # call, where capturing costs more than it saves. A static KV cache moves once per
            # generate() call, after many replays: never counted.
            self._churn += self._steady < 2
            self._steady = 0
            if self._churn > self.policy.limit:
                self._refuse(f"the tensors it uses where they live (module state, inputs it changes in place) came at "
                             f"new addresses right after being captured {self._churn} times; each time it would be "
                             "captured again")
                return self.fn(*args)
            action = self.policy.decide(key)
        if action == "warm":
            return self._warm(args)
        if action == "capture":
            return self._capture(key, args)
        if self.policy.full and self.policy.refusal is None and not self._told_limit:
            self._told_limit = True
            self._warn(("cuda-graph-limit", self.label),
                       f"trt_multidev: CUDA graphs: {self.label} met more than {self.policy.limit} input shapes; "
                       f"further shapes run uncaptured (cuda_graph_max_shapes={self.policy.limit}).")
        return self.fn(*args)

    def _warm(self, args: Sequence[Any]) -> Any:
        copied = [(i, a) for i, a in enumerate(args) if isinstance(a, torch.Tensor) and i not in self._static]
        before = [tensor_version(a) for _, a in copied]
        out = self.fn(*args)
        for (i, a), was in zip(copied, before):
            if was != -1 and tensor_version(a) != was:  # what the graph's metadata did not tell
                name = self._names[i] if i < len(self._names) else f"argument {i}"
                self._refuse(f"it changed its input {name!r} in place, and a replay would change the graph's copy")
                break
        return out

    def _capture(self, key: tuple, args: Sequence[Any]) -> Any:
        if self._stream is None:
            self._stream = torch.cuda.Stream(self.device)
        try:
            entry = _Captured(self.fn, args, self._static, self._stream)
        except Exception as exc:
            log.debug("capturing %s failed", self.label, exc_info=True)
            self._refuse(f"capturing it failed ({first_line_of(exc)})")
            return self.fn(*args)
        alias = entry.aliasing()
        if alias is not None:
            self._refuse(f"{alias}, and outputs copied out of a graph would not")
            return self.fn(*args)
        self._graphs[key] = entry
        self.policy.captured(key)
        self.captures += 1
        self._count("cuda_graphs")
        log.debug("captured %s for %s", self.label, key)
        return entry.replay(args)  # capturing ran nothing: this call's work is the first replay

    def _refuse(self, why: str) -> None:
        self.policy.refuse(why)
        self._count("uncaptured")
        self._graphs.clear()
        self._warn(("cuda-graph-refused", self.label),
                   f"trt_multidev: CUDA graphs: {self.label} runs uncaptured: {why}.")

