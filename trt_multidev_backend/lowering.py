"""What the Torch-TensorRT delegate does for Torch-TensorRT 2.11's own lowering, before it and inside it.

Before it, on the graph the delegate hands over (each exact: the same numbers, read elsewhere):

- a size argument dynamo adds for a dynamic dimension is read from its tensor where that tensor
  came through a list or a dict, which Torch-TensorRT's `remove_sym_nodes` cannot look up
  (`sizes_from_their_tensors`);
- number arguments the graph no longer reads are dropped, with their example inputs, which the
  same pass pops by stale positions once there are two or more (`unread_numbers_dropped`).

Inside it, only while trt_multidev builds: Torch-TensorRT copies every graph input before its
export step (``repair_input_aliasing``) and removes each copy after it where the input has no other
reader (``remove_input_alias_fixing_clones``). With dynamic shapes the export reads sizes from the
inputs themselves (``aten.sym_size``), so the copies of a KV cache's keys and values stay. Where
Torch-TensorRT's partitioner then puts such a copy in one engine and its readers in a later one,
the copy is that engine's input handed straight out, which Torch-TensorRT 2.11 cannot convert with
dynamic shapes (``UnsupportedOperatorException`` on ``aten.clone``: Qwen2's decode steps on an
H200, sessions 17 and 18, ran the copies in PyTorch between engines). A copy of an input nothing
writes to holds what the input holds, so its readers read the input (`input_copies_dropped`). A
copy that is the graph's own output stays: an engine cannot return its input as an output.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import threading
from typing import Any, Iterator

import torch
import torch.fx

from .graphinfo import NUMBERS, meta_value

__all__ = ["sizes_from_their_tensors", "unread_numbers_dropped", "input_copies_dropped", "added_to_lowering"]

log = logging.getLogger("trt_multidev.lowering")

_CLONE = torch.ops.aten.clone.default
_lock = threading.Lock()
_builds = 0  # builds inside `added_to_lowering` now: the pass leaves the list when the last ends


def sizes_from_their_tensors(gm: torch.fx.GraphModule) -> list[str]:
    """For Torch-TensorRT 2.11: its `remove_sym_nodes` pass replaces each size argument (a SymInt
    placeholder dynamo adds for a dynamic dimension, recorded as `x.size()[i]`) by `sym_size(x, i)`,
    finding `x` through `source.base.local_name`. A tensor that came through a list or a dict
    (`tensors[0]`, `**kwargs`: HF decode steps, a Sequential with `mark_dynamic`) has no local name,
    and the pass raises AttributeError, so the graph went to the fallback. This does that
    replacement first, matching the tensor by its source, and drops the source record of those size
    arguments, which the pass then leaves alone (and removes, once unused). Exact: the same size,
    read from the tensor. Returns a note per size argument. Mutates `gm` (a copy)."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    tensors: dict[Any, torch.fx.Node] = {}
    for node in placeholders:
        source = getattr(node.meta.get("grapharg"), "source", None)
        if source is not None and isinstance(meta_value(node), torch.Tensor):
            try:
                tensors[source] = node
            except TypeError:  # an unhashable source: not one to match
                pass
    first_op = next((n for n in gm.graph.nodes if n.op != "placeholder"), None)
    notes = []
    for node in placeholders:
        source = getattr(node.meta.get("grapharg"), "source", None)
        base = getattr(source, "base", None)
        if base is None or hasattr(base, "local_name") or not isinstance(getattr(source, "idx", None), int):
            continue  # Torch-TensorRT finds these itself
        try:
            tensor = tensors.get(base)
        except TypeError:
            tensor = None
        if tensor is not None and node.users and first_op is not None:
            with gm.graph.inserting_before(first_op):
                size = gm.graph.call_function(torch.ops.aten.sym_size.int, (tensor, source.idx))
            size.meta["val"] = meta_value(node)
            node.replace_all_uses_with(size)
        node.meta = {k: v for k, v in node.meta.items() if k != "grapharg"}
        notes.append(f"size argument {node.name} ({source.name}) read from its tensor"
                     if tensor is not None else f"size argument {node.name} ({source.name}) passed as is")
    if notes:
        gm.graph.lint()
        gm.recompile()
    return notes


def unread_numbers_dropped(gm: torch.fx.GraphModule, inputs: list[Any]) -> int:
    """For Torch-TensorRT 2.11: its `remove_sym_nodes` pass erases the SymInt placeholders nothing
    reads and pops each one's example input by the placeholder's position, counted before any was
    popped, so with two or more it pops the wrong inputs or past the end (`IndexError: pop index
    out of range`: Mistral's decode step on an H200, session 17, after its sizes were read from
    their tensors). This drops them first, from `gm` and from `inputs` alike (the caller's
    select_kept then passes only the arguments kept). Returns how many were dropped."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    unread = [i for i, node in enumerate(placeholders) if not node.users and i < len(inputs)
              and isinstance(meta_value(node), NUMBERS)]
    for i in reversed(unread):
        gm.graph.erase_node(placeholders[i])
        del inputs[i]
    if unread:
        gm.graph.lint()
        gm.recompile()
    return len(unread)


def input_copies_dropped(gm: torch.fx.GraphModule, settings: Any = None) -> torch.fx.GraphModule:
    """Readers of a plain copy of a graph input read the input instead; returns `gm`.

    Only where nothing writes in place to the input or to the copy, and the copy is no output of
    the graph (Torch-TensorRT's own pass keeps those for the same reason). A copy with a memory
    format is kept: it may be the one place a layout is made contiguous."""
    dropped = 0
    output = next(n for n in gm.graph.nodes if n.op == "output")
    for node in list(gm.graph.nodes):
        if node.op != "placeholder" or _written(node):
            continue
        for copy in [u for u in node.users if u.target is _CLONE and not u.kwargs]:
            if output in copy.users or _written(copy):
                continue
            copy.replace_all_uses_with(node)
            gm.graph.erase_node(copy)
            dropped += 1
    if dropped:
        gm.graph.lint()
        gm.recompile()
        log.debug("dropped %d copies of graph inputs that Torch-TensorRT's own pass kept", dropped)
    return gm


def _written(node: torch.fx.Node) -> bool:
    """Whether an in-place op (a mutable schema: ``add_``, ``copy_``) takes `node`."""
    for user in node.users:
        schema = getattr(user.target, "_schema", None)
        if schema is not None and schema.is_mutable:
            return True
    return False


def _post_lowering_passes() -> Any:
    """Torch-TensorRT's list of passes run after its export step, or None where this
    torch_tensorrt keeps it elsewhere (then nothing is added, and builds go as before)."""
    try:
        module = importlib.import_module("torch_tensorrt.dynamo.lowering.passes._aten_lowering_pass")
    except ImportError:
        return None
    manager = getattr(module, "ATEN_POST_LOWERING_PASSES", None)
    return manager if isinstance(getattr(manager, "passes", None), list) else None


@contextlib.contextmanager
def added_to_lowering() -> Iterator[None]:
    """`input_copies_dropped` runs in Torch-TensorRT's lowering while this is entered, right after
    Torch-TensorRT's own removal of such copies; other users of torch_tensorrt in the process
    never see it once trt_multidev's builds end."""
    global _builds
    manager = _post_lowering_passes()
    if manager is None:
        yield
        return
    # The list is replaced, never changed in place: a build of plain torch_tensorrt on another
    # thread that is going through the old list meanwhile neither skips nor repeats a pass.
    with _lock:
        passes = list(manager.passes)
        if input_copies_dropped not in passes:
            after = [i for i, p in enumerate(passes) if getattr(p, "__name__", "") == "remove_input_alias_fixing_clones"]
            passes.insert(after[0] + 1 if after else 0, input_copies_dropped)
            _replace(manager, passes)
        _builds += 1
    try:
        yield
    finally:
        with _lock:
            _builds -= 1
            if not _builds and input_copies_dropped in manager.passes:
                _replace(manager, [p for p in manager.passes if p is not input_copies_dropped])


def _replace(manager: Any, passes: list) -> None:
    """Give `manager` (a torch.fx PassManager) a new list of passes, as Torch-TensorRT's own
    `insert_debug_pass_before` does: checked again against its constraints at the next call."""
    manager.passes = passes
    if hasattr(manager, "_validated"):
        manager._validated = False
