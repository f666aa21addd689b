"""One delegate build: on a copy of the placed graph, under the target's guard, failing small.

When the delegate cannot convert an op (a Torch-TensorRT converter raises), the whole graph
need not go to the fallback: a delegate that can name the op (``failing_op(exc)``) is called
again with that op in ``settings.excluded_ops``, so only those nodes run in PyTorch on the target
and the rest is still built into engines. At most ``MAX_EXCLUDED`` ops are excluded, each once;
``strict`` forbids it (the first failure raises). The result records what was excluded, and
the caches keep the final result, so the search is paid once.
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
from .placement import graph_copy
from .runtime import SelectArgs
from .settings import Settings

__all__ = ["Built", "call_delegate", "check_engine_devices", "pytorch_ops", "first_line", "MAX_EXCLUDED"]

MAX_EXCLUDED = 8


@dataclass
class Built:
    """A delegate's result: the callable to run, the delegate's own object (for its disk-cache
    `dumps`), the argument indices it kept (None: all), and the ops it could not convert, with
    the reason, which run in PyTorch instead."""

    callable: Callable[..., Any]
    inner: Any
    kept: list[int] | None
    excluded: list[tuple[str, str]] = field(default_factory=list)


def call_delegate(delegate: Any, gm: torch.fx.GraphModule, inputs: Sequence[Any], device: torch.device,
                  settings: Settings) -> Built:
    """Call a delegate on a graph it may mutate (callers hold the target's guard).

    Torch-TensorRT drops unused SymInt placeholders (dynamic shapes) from the graph it is given;
    the caller still passes them, so the result is adapted to take exactly the arguments that
    survived."""
    finder = None if settings.strict else getattr(delegate, "failing_op", None)
    excluded: list[tuple[str, str]] = []
    while True:
        attempt = graph_copy(gm) if finder is not None else gm
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


def pytorch_ops(compiled: Any, engine_types: Sequence[str]) -> int | None:
    """How many ops of a compiled graph run in PyTorch: call_function nodes (getitem aside) of
    every graph in it that is not an engine. None when the result is not an inspectable module."""
    if not isinstance(compiled, torch.nn.Module):
        return None
    count = 0
    for _, module in compiled.named_modules():
        if type(module).__name__ in engine_types or not isinstance(module, torch.fx.GraphModule):
            continue
        count += sum(1 for n in module.graph.nodes if n.op == "call_function" and n.target is not operator.getitem)
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
