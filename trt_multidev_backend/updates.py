"""In-place updates of a graph's inputs, done again on the inputs in PyTorch after the engines.

Torch-TensorRT 2.11 compiles a functional copy of a graph and does not write an update of a graph
input back (an H200: after ``x.add_(1)`` in the graph, x was unchanged), so a graph updating an
input went to the fallback whole. Hugging Face's static KV cache (``cache_implementation="static"``,
the cache its torch.compile guide uses) does so in every decode step: ``index_copy_`` writes the
step's keys and values into the cache tensors it passes in, ``add_`` counts their length.

Here each such update becomes its out-of-place form, which the rest of the graph reads in the
input's place, and is done again, in place and with the same arguments, on the input itself at
the end of the graph, marked to run in PyTorch (graphinfo.IN_PYTORCH): segments.py runs it after
the engine, which hands over what the update writes (a decode step's keys, not the cache). Done
again in their order, on the input as it was before the first of them, the updates leave it as
eager leaves it, and a graph that returns the input returns the input itself.

Only where that is exact: updates of the input itself (not through a view) whose out-of-place
form gives the same dtype and shape, of an input no other input shares memory with, that the
caller's own tensor arrives as (no copy to another device), with no view of it taken before an
update and read after it (eager's view would see the update). Anything else still goes to the
fallback, with its reason.
"""

from __future__ import annotations

from typing import Any, Collection, Sequence

import torch
import torch.fx

from .graphinfo import (IN_PYTORCH, WRITTEN_BACK, ArgInfo, meta_value, mutated_args, out_of_place_form,
                        out_of_place_value, storage_of)
from .placement import Placement

__all__ = ["updates_after_the_engines", "updates_of_placed_graph"]


def updates_of_placed_graph(placement: Placement, names: Sequence[str], input_policy: str) -> list[str]:
    """updates_after_the_engines on a placement's copy of the graph, its notes added to the
    placement's; returns the names left, with their reasons."""
    notes, left = updates_after_the_engines(placement.gm, placement.infos, names,
                                            placement.passed_as_they_are(input_policy))
    placement.notes += notes
    return left


def updates_after_the_engines(gm: torch.fx.GraphModule, infos: Sequence[ArgInfo], names: Sequence[str],
                              passed: Collection[int]) -> tuple[list[str], list[str]]:
    """Rewrite `gm` (a placed copy) so that the updates of the inputs `names` (graphinfo.changed_in_place)
    run in PyTorch after the rest, where that is exact (see the module docstring). `passed`: the
    indices of the inputs that reach the graph as the caller's own tensors. Returns a note per
    input handled, and the names left (with the reason, for the fallback's warning)."""
    by_name = {info.name: info for info in infos}
    storages: dict[Any, int] = {}
    for info in infos:
        storage = storage_of(info.node)
        if storage is not None:
            storages[storage] = storages.get(storage, 0) + 1
    notes, left = [], []
    for name in names:
        info = by_name.get(name)
        why = _refusal(gm, info, storages, passed)
        if why is not None:
            left.append(f"{name!r} ({why})")
            continue
        count = _rewrite(gm, info.node)
        notes.append(f"{name}: {count} in-place update(s) computed out of place and done again on it in PyTorch "
                     "after the engine (Torch-TensorRT would not write them back)")
    if notes:
        gm.graph.lint()
        gm.recompile()
    return notes, left


def _writes(gm: torch.fx.GraphModule, placeholder: torch.fx.Node
            ) -> tuple[list[torch.fx.Node], list[torch.fx.Node], set[torch.fx.Node]]:
    """The updates of `placeholder` itself (each returns it: later ones may update their result,
    or the input under another name), and the other nodes whose value shares its memory (views of
    it), in graph order; and every node that is the input itself."""
    same, writes, views = {placeholder}, [], []
    storage = storage_of(placeholder)
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "output"):
            continue
        written = mutated_args(node)
        if written and written[0] in same:
            writes.append(node)
            same.add(node)
        elif not written and _shares(node, storage) and _same_geometry(node, placeholder):
            same.add(node)  # the input itself under another name: x.to(its own dtype), x.contiguous()
        elif written and any(w is placeholder or _shares(w, storage) for w in written):
            views.append(node)  # a write through a view
        elif _shares(node, storage):
            views.append(node)
    return writes, views, same


def _shares(node: torch.fx.Node, storage: Any) -> bool:
    """Whether `node`'s value lives in `storage` (None: unknown, shares nothing)."""
    own = storage_of(node)
    return storage is not None and own is not None and own == storage


def _same_geometry(node: torch.fx.Node, other: torch.fx.Node) -> bool:
    """Whether two tensors of one memory are the same elements in the same order and type."""
    a, b = meta_value(node), meta_value(other)
    try:
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and a.stride() == b.stride() and a.storage_offset() == b.storage_offset())
    except Exception:  # noqa: BLE001 - symbolic sizes that cannot be compared: not the same
        return False


def _refusal(gm: torch.fx.GraphModule, info: ArgInfo | None, storages: dict[Any, int],
             passed: Collection[int]) -> str | None:
    """Why the updates of this input cannot be moved after the engines; None when they can."""
    if info is None:
        return "not a graph input"
    storage = storage_of(info.node)
    if storage is None:
        return "its memory is not known"
    if storages.get(storage, 0) > 1:
        return "another input shares its memory"
    if info.index not in passed:
        return "it reaches the graph as a copy made for the target device (state copied there, an input the graph " \
               "moves, or input_policy=move), which an update after the engine would change instead"
    writes, views, _ = _writes(gm, info.node)
    if not writes:
        return "it is updated through a view"
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    last = order[writes[-1]]
    for view in views:
        if mutated_args(view):
            return f"{view.name} updates it through a view"
        if order[view] < last and any(order[u] > order[writes[0]] for u in view.users):
            return f"{view.name}, a view of it, is read after an update"
    for write in writes:
        form = out_of_place_form(write)
        if form is None or len(mutated_args(write)) != 1 or "out" in write.kwargs:
            return f"{write.name} ({_target(write)}) has no out-of-place form"
        if out_of_place_value(write, form) is None:
            return f"{write.name} ({_target(write)}) out of place would give another dtype or shape"
    return None


def _rewrite(gm: torch.fx.GraphModule, placeholder: torch.fx.Node) -> int:
    """Each update of `placeholder` made out of place and read by what came after it in its place;
    the updates done again on `placeholder`, in order, at the end of the graph."""
    writes, _, same = _writes(gm, placeholder)
    replays: list[tuple[str, Any, tuple, dict]] = []  # (op kind, in-place target, other args, kwargs)
    current: torch.fx.Node = placeholder
    output = next(n for n in reversed(gm.graph.nodes) if n.op == "output")
    for node in list(gm.graph.nodes):
        if node is output:
            break
        if current is not placeholder:  # reads of the input after an update read its new value
            node.args = torch.fx.node.map_arg(node.args, lambda a: current if a in same else a)
            node.kwargs = torch.fx.node.map_arg(node.kwargs, lambda a: current if a in same else a)
        if node in writes:
            form = out_of_place_form(node)
            value = out_of_place_value(node, form)
            replays.append((node.op, node.target, tuple(node.args[1:]), dict(node.kwargs)))
            node.target = form
            node.args = (current, *node.args[1:])
            for key in ("example_value", "val"):
                if key in node.meta:
                    node.meta[key] = value  # its own memory now
            current = node
    last: torch.fx.Node = placeholder
    with gm.graph.inserting_before(output):
        for op, target, args, kwargs in replays:
            last = gm.graph.create_node(op, target, (last, *args), kwargs)
            last.meta[IN_PYTORCH] = (f"an update of the input {placeholder.name}, done again on it after the engine "
                                     "(Torch-TensorRT would not write it back)")
            last.meta[WRITTEN_BACK] = True
            value = meta_value(placeholder)
            if value is not None:
                last.meta["example_value"] = value
    # A graph returning the input (or an update's result, the input itself) returns the input, updated.
    output.args = torch.fx.node.map_arg(output.args, lambda a: last if a in same else a)
    return len(replays)


def _target(node: torch.fx.Node) -> str:
    return node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
