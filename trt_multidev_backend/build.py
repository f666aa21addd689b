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
on the target) or ``MAX_PIECE_BUILDS`` builds were spent. Each such piece makes its rarest op not
yet seen built a suspect; a failing piece that holds a suspect is then cut around it instead
(each suspect left to PyTorch unbuilt), so a failure repeated in every layer (BERT's attention)
costs a few builds per layer rather than a bisection per layer. Graphs that write a tensor in
place are not cut (a functionalizing delegate would keep the write inside its piece).
"""

from __future__ import annotations

import collections
import dataclasses
import operator
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.fx

from .errors import EngineDeviceError
from .graphinfo import op_count, target_name, writes_in_place
from .placement import graph_copy
from .runtime import select_kept
from .segments import install, piece_number, runs, split_graph
from .settings import Settings

__all__ = ["Built", "call_delegate", "check_engine_devices", "pytorch_ops", "first_line", "first_line_of",
           "MAX_EXCLUDED", "MAX_PIECE_BUILDS", "MIN_PIECE_OPS"]

MAX_EXCLUDED = 8
MAX_PIECE_BUILDS = 16  # delegate calls one search by halves may make
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
    segmented: bool = False  # host work split out: device segments built apart (specialize.py skips these)
    in_pytorch: bool = False  # every op runs in PyTorch by our own choice (scalars.py): no delegate call


def call_delegate(delegate: Any, gm: torch.fx.GraphModule, inputs: Sequence[Any], device: torch.device,
                  settings: Settings, *, _search: _Search | None = None, _shallow: bool = False) -> Built:
    """Call a delegate on a graph it may mutate (callers hold the target's guard), failing small
    unless `strict`: ops it names excluded, else a search in pieces (`_search`: the one under way;
    `_shallow`: a trial that raises instead of searching).

    Torch-TensorRT drops unused SymInt placeholders (dynamic shapes) from the graph it is given;
    the caller still passes them, so the result is adapted to take exactly the arguments that
    survived."""
    finder = None if settings.strict else getattr(delegate, "failing_op", None)
    excluded: list[tuple[str, str]] = []
    while True:
        attempt = graph_copy(gm) if not settings.strict else gm  # retries start again from `gm`
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
            if op is None and not settings.strict and not _shallow:
                search = _Search(MAX_PIECE_BUILDS, collections.Counter(_names(gm))) if _search is None else _search
                return _in_pieces(delegate, gm, inputs, device, asked, exc, search, excluded)
            if op is None or op in known or len(excluded) >= MAX_EXCLUDED:
                raise
            excluded.append((op, first_line_of(exc)))
            continue
        except BaseException as exc:
            traceback.clear_frames(exc.__traceback__)
            raise
        break
    adapted, kept = select_kept(inner, before, attempt)
    return Built(adapted, inner, kept, excluded)


@dataclass
class _Search:
    """What one search by halves may still spend and has learned: builds left, how often each op
    occurs in the whole graph, ops seen in pieces that built, the ops of each failing piece too
    small to cut (leaves), suspects (of each leaf, its rarest op not seen built) and the suspects
    confirmed by failing alone."""

    builds: int
    frequency: collections.Counter
    built: set[str] = field(default_factory=set)
    leaves: list[list[str]] = field(default_factory=list)
    suspects: set[str] = field(default_factory=set)
    confirmed: set[str] = field(default_factory=set)

    def learn(self, piece: torch.fx.GraphModule | None = None) -> None:
        """Take in a failing piece too small to cut (None: think again about the leaves seen)."""
        if piece is not None:
            self.leaves.append(_names(piece))
        for names in self.leaves:
            if self.suspects & set(names):
                continue  # explained by a suspect already
            candidates = [n for n in names if n not in self.built]
            if candidates:
                self.suspects.add(min(candidates, key=lambda n: self.frequency[n]))

    def cleared(self, names: set[str]) -> None:
        """Ops that built alone or in a whole piece are no suspects."""
        self.built |= names
        if self.suspects & names:
            self.suspects -= names
            self.learn()


def _in_pieces(delegate: Any, gm: torch.fx.GraphModule, inputs: Sequence[Any], device: torch.device,
               settings: Settings, failure: Exception, search: _Search,
               excluded: list[tuple[str, str]]) -> Built:
    """After `failure` on the whole of `gm`: its pieces built apart (each searched the same way),
    the pieces that still fail left to PyTorch. Raises `failure` when `gm` writes in place, is too
    small to cut, the budget is spent, or no piece could be built."""
    if search.builds <= 0 or writes_in_place(gm):
        raise failure
    split, pieces, suspected = _cut(delegate, gm, inputs, device, settings, failure, search)
    left: list[tuple[int, str, str]] = []
    built_any = False
    for name, piece_inputs in pieces.items():
        piece = getattr(split, name)
        if piece_number(name) in suspected and set(_names(piece)) <= search.confirmed:
            part, why = None, first_line_of(failure)  # it failed alone: not built again
        else:
            part, why = _build_piece(delegate, piece, piece_inputs, device, settings, failure, search)
        if part is None:  # the piece stays as it is: a graph PyTorch runs
            left.append((op_count(piece), op_names(piece), why))
            continue
        install(split, name, part.callable)
        excluded = excluded + [e for e in part.excluded if e not in excluded]
        left += part.left
        built_any = True
    if not built_any:
        raise failure
    return Built(split, split, None, excluded, left)


def _cut(delegate: Any, gm: torch.fx.GraphModule, inputs: Sequence[Any], device: torch.device,
         settings: Settings, failure: Exception, search: _Search
         ) -> tuple[torch.fx.GraphModule, dict[str, list[Any]], set[int]]:
    """`gm` split for the search, with the numbers of the pieces that are suspects only: where it
    holds a suspect, the runs between suspects and each run of suspects apart (tried alone once:
    if it builds, the suspicion is dropped and `gm` cut again); else two halves."""
    while True:
        cut = _around(gm, search.suspects)
        if cut is None:
            if op_count(gm) < _floor(settings):
                raise failure
            partition, suspected = _halves(gm), set()
        else:
            partition, suspected = cut
            if set(partition.values()) <= suspected:
                raise failure  # nothing but suspects: what failed
        split, pieces = split_graph(gm, inputs, partition)
        if any(op_count(getattr(split, name)) >= op_count(gm) for name in pieces):
            raise failure  # no smaller piece: what a piece reads of numbers is computed in it again
        trial = next((name for name in pieces if piece_number(name) in suspected
                      and not set(_names(getattr(split, name))) <= search.confirmed), None)
        if trial is None or search.builds <= 0:
            return split, pieces, suspected
        names = set(_names(getattr(split, trial)))
        search.builds -= 1
        try:  # the suspects alone: do they fail?
            call_delegate(delegate, getattr(split, trial), pieces[trial], device, settings, _shallow=True)
        except Exception as exc:
            traceback.clear_frames(exc.__traceback__)
            search.confirmed |= names
            return split, pieces, suspected
        search.cleared(names)  # they built: cut again with what is suspected now


def _build_piece(delegate: Any, piece: torch.fx.GraphModule, inputs: Sequence[Any], device: torch.device,
                 settings: Settings, failure: Exception, search: _Search) -> tuple[Built | None, str]:
    """One piece built (searched in turn if it fails), or None and why not."""
    names = set(_names(piece))
    try:
        if names & search.confirmed:  # it would fail whole: straight to its pieces
            part = _in_pieces(delegate, piece, inputs, device, settings, failure, search, [])
        elif search.builds <= 0:
            raise failure
        else:
            search.builds -= 1
            part = call_delegate(delegate, piece, inputs, device, settings, _search=search)
    except Exception as exc:
        traceback.clear_frames(exc.__traceback__)
        if op_count(piece) >= _floor(settings):
            return None, first_line_of(exc)
        search.learn(piece)  # too small to halve: what it holds may name a suspect
        if not names & search.suspects or names <= search.suspects:
            return None, first_line_of(exc)
        try:
            part = _in_pieces(delegate, piece, inputs, device, settings, exc, search, [])
        except Exception as again:
            traceback.clear_frames(again.__traceback__)
            return None, first_line_of(exc)
    if not part.left:
        search.cleared(names)
    return part, ""


def _floor(settings: Settings) -> int:
    """A failing piece with fewer ops is not halved."""
    return 2 * max(MIN_PIECE_OPS, settings.min_block_size)


def first_line_of(exc: BaseException) -> str:
    """"Type: first line" of an exception, for one-line reasons."""
    return f"{type(exc).__name__}: {first_line(exc)}"


def _names(gm: torch.fx.GraphModule) -> list[str]:
    """The ops of a graph by name, in order, tuple indexing aside."""
    return [target_name(node) for node in gm.graph.nodes
            if node.op in ("call_function", "call_method", "call_module") and node.target is not operator.getitem]


def op_names(gm: torch.fx.GraphModule, most: int = 6) -> str:
    """The distinct ops of a graph, in order, for messages: "linear, gelu, layer_norm, ..."."""
    names = list(dict.fromkeys(_names(gm)))
    return ", ".join(names[:most]) + (", ..." if len(names) > most else "")


def _halves(gm: torch.fx.GraphModule) -> dict[torch.fx.Node, int]:
    """`gm` in two pieces, cut in graph order at the middle op."""
    middle = op_count(gm) // 2
    return runs(gm, lambda node, seen: seen >= middle)[0]


def _around(gm: torch.fx.GraphModule, suspects: set[str]) -> tuple[dict[torch.fx.Node, int], set[int]] | None:
    """`gm` in runs between its suspected ops, each run of suspects a piece of its own (their
    numbers returned too); None when `gm` holds no suspected op."""
    if not suspects & set(_names(gm)):
        return None
    pieces, labels = runs(gm, lambda node, seen: target_name(node) in suspects)
    return pieces, {index for index, suspect in labels.items() if suspect}


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
