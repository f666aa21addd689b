"""One delegate build: on a copy of the placed graph, under the target's guard, failing small.

When the delegate cannot convert an op (a Torch-TensorRT converter raises), the whole graph
need not go to the fallback: a delegate that can name the op (``failing_op(exc)``) is called
again with that op in ``settings.excluded_ops``, so only those nodes run in PyTorch on the target
and the rest is still built into engines. At most ``MAX_EXCLUDED`` ops are excluded, each once;
``strict`` forbids it (the first failure raises). The result records what was excluded, and
the caches keep the final result, so the search is paid once.

A failure no op can be named for (TensorRT refusing an engine when it creates its execution
context, say) is searched by halves: the graph is cut in two in graph order, each half built
apart, a failing half cut again, until a failing piece is too small to cut (it runs in PyTorch,
on the target) or ``MAX_PIECE_BUILDS`` builds were spent. Graphs that write a tensor in place
are not cut (a functionalizing delegate would keep the write inside its piece).
"""

from __future__ import annotations

import dataclasses
import operator
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.fx

from .errors import EngineDeviceError
from .graphinfo import op_count, writes_in_place
from .placement import graph_copy
from .runtime import SelectArgs
from .segments import install, split_graph
from .settings import Settings

__all__ = ["Built", "call_delegate", "check_engine_devices", "pytorch_ops", "first_line", "MAX_EXCLUDED",
           "MAX_PIECE_BUILDS", "MIN_PIECE_OPS"]

MAX_EXCLUDED = 8
MAX_PIECE_BUILDS = 12  # delegate calls one search by halves may make
MIN_PIECE_OPS = 4      # a failing piece with fewer than twice this many ops is not cut again


@dataclass
class Built:
    """A delegate's result: the callable to run, the delegate's own object (for its disk-cache
    `dumps`), the argument indices it kept (None: all), the ops it could not convert, with the
    reason, which run in PyTorch instead, and the pieces a search by halves left to PyTorch."""

    callable: Callable[..., Any]
    inner: Any
    kept: list[int] | None
    excluded: list[tuple[str, str]] = field(default_factory=list)
    left: list[tuple[int, str, str]] = field(default_factory=list)  # pieces run in PyTorch: (ops, their names, why)


def call_delegate(delegate: Any, gm: torch.fx.GraphModule, inputs: Sequence[Any], device: torch.device,
                  settings: Settings, *, _budget: list[int] | None = None) -> Built:
    """Call a delegate on a graph it may mutate (callers hold the target's guard).

    Torch-TensorRT drops unused SymInt placeholders (dynamic shapes) from the graph it is given;
    the caller still passes them, so the result is adapted to take exactly the arguments that
    survived."""
    finder = None if settings.strict else getattr(delegate, "failing_op", None)
    excluded: list[tuple[str, str]] = []
    while True:
        attempt = graph_copy(gm) if not settings.strict else gm
        before = [n for n in attempt.graph.nodes if n.op == "placeholder"]
        asked = settings if not excluded else dataclasses.replace(
            settings, excluded_ops=tuple(op for op, _ in excluded))
        try:
            inner = delegate(attempt, list(inputs), device=device, settings=asked)
        except Exception as exc:
            op = finder(exc) if finder is not None else None
            known = [name for name, _ in excluded]
            # What the failed build made (engines, builders) dies with its frames: now, while the
            # caller holds the target's guard, rather than whenever the traceback is dropped.
            traceback.clear_frames(exc.__traceback__)
            if op is None and not settings.strict:
                return _in_pieces(delegate, gm, inputs, device, asked, exc,
                                  [MAX_PIECE_BUILDS] if _budget is None else _budget, excluded)
            if op is None or op in known or len(excluded) >= MAX_EXCLUDED:
                raise
            excluded.append((op, f"{type(exc).__name__}: {first_line(exc)}"))
            continue
        except BaseException as exc:
            traceback.clear_frames(exc.__traceback__)
            raise
        break
    after = {n for n in attempt.graph.nodes if n.op == "placeholder"}
    kept = [i for i, node in enumerate(before) if node in after]
    if len(kept) == len(before):
        return Built(inner, inner, None, excluded)
    return Built(SelectArgs(inner, kept), inner, kept, excluded)


def _in_pieces(delegate: Any, gm: torch.fx.GraphModule, inputs: Sequence[Any], device: torch.device,
               settings: Settings, failure: Exception, budget: list[int],
               excluded: list[tuple[str, str]]) -> Built:
    """After `failure` on the whole of `gm`: its two halves built apart (each searched the same
    way), the pieces that still fail left to PyTorch. Raises `failure` when `gm` is too small to
    cut, writes in place, the budget is spent, or no piece could be built."""
    if op_count(gm) < 2 * max(MIN_PIECE_OPS, settings.min_block_size) or budget[0] <= 0 or writes_in_place(gm):
        raise failure
    split, pieces = split_graph(gm, inputs, _halves(gm))
    why = f"{type(failure).__name__}: {first_line(failure)}"
    left: list[tuple[int, str, str]] = []
    built_any = False
    for name, piece_inputs in pieces.items():
        piece = getattr(split, name)
        if budget[0] <= 0:
            left.append((op_count(piece), op_names(piece), why))
            continue
        budget[0] -= 1
        try:
            part = call_delegate(delegate, piece, piece_inputs, device, settings, _budget=budget)
        except Exception as exc:  # the piece stays as it is: a graph PyTorch runs
            traceback.clear_frames(exc.__traceback__)
            left.append((op_count(piece), op_names(piece), f"{type(exc).__name__}: {first_line(exc)}"))
            continue
        install(split, name, part.callable)
        excluded = excluded + [e for e in part.excluded if e not in excluded]
        left += part.left
        built_any = True
    if not built_any:
        raise failure
    return Built(split, split, None, excluded, left)


def op_names(gm: torch.fx.GraphModule, most: int = 6) -> str:
    """The distinct ops of a graph, in order, for messages: "linear, gelu, layer_norm, ..."."""
    names: list[str] = []
    for node in gm.graph.nodes:
        if node.op in ("call_function", "call_method", "call_module") and node.target is not operator.getitem:
            name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
            if name not in names:
                names.append(name)
    return ", ".join(names[:most]) + (", ..." if len(names) > most else "")


def _halves(gm: torch.fx.GraphModule) -> dict[torch.fx.Node, int]:
    """Every node of `gm` (placeholders and output aside) in half 0 or 1, cut in graph order at
    the middle op; a tuple's items stay with the op that made the tuple."""
    middle = op_count(gm) // 2
    half: dict[torch.fx.Node, int] = {}
    seen = 0
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "output"):
            continue
        source = node.args[0] if node.args else None
        if node.op == "call_function" and node.target is operator.getitem and source in half:
            half[node] = half[source]
            continue
        half[node] = 0 if seen < middle else 1
        seen += node.op in ("call_function", "call_method", "call_module")
    return half


def pytorch_ops(compiled: Any, engine_types: Sequence[str]) -> int | None:
    """How many ops of a compiled graph run in PyTorch: function and method calls (getitem
    aside) of every graph in it that is not an engine, counted as `op_count` counts a dynamo
    graph's. None when the result is not an inspectable module."""
    if not isinstance(compiled, torch.nn.Module):
        return None
    count = 0
    for _, module in compiled.named_modules():
        if type(module).__name__ in engine_types or not isinstance(module, torch.fx.GraphModule):
            continue
        count += sum(1 for n in module.graph.nodes
                     if n.op in ("call_function", "call_method") and n.target is not operator.getitem)
    return count


def check_engine_devices(delegate: Any, compiled: Any, target: torch.device | None) -> None:
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


def first_line(exc: BaseException) -> str:
    """An exception's first line, for one-line warnings."""
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else "(no message)"
