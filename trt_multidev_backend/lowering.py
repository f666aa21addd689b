"""A pass trt_multidev adds to Torch-TensorRT's own lowering, only while trt_multidev builds.

Torch-TensorRT copies every graph input before its export step (``repair_input_aliasing``) and
removes each copy after it where the input has no other reader (``remove_input_alias_fixing_clones``).
With dynamic shapes the export reads sizes from the inputs themselves (``aten.sym_size``), so the
copies of a KV cache's keys and values stay. Where Torch-TensorRT's partitioner then puts such a copy
in one engine and its readers in a later one, the copy is that engine's input handed straight out,
which Torch-TensorRT 2.11 cannot convert with dynamic shapes (``UnsupportedOperatorException`` on
``aten.clone``: Qwen2's decode steps on an H200, sessions 17 and 18, ran the copies in PyTorch
between engines). A copy of an input nothing writes to holds what the input holds, so its readers
read the input (`input_copies_dropped`). A copy that is the graph's own output stays: an engine
cannot return its input as an output.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import threading
from typing import Any, Iterator

import torch
import torch.fx

log = logging.getLogger("trt_multidev.lowering")

_CLONE = torch.ops.aten.clone.default
_lock = threading.Lock()
_builds = 0  # builds inside `added_to_lowering` now: the pass leaves the list when the last ends


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
    with _lock:
        if input_copies_dropped not in manager.passes:
            after = [i for i, p in enumerate(manager.passes)
                     if getattr(p, "__name__", "") == "remove_input_alias_fixing_clones"]
            manager.passes.insert(after[0] + 1 if after else 0, input_copies_dropped)
        _builds += 1
    try:
        yield
    finally:
        with _lock:
            _builds -= 1
            if not _builds and input_copies_dropped in manager.passes:
                manager.passes.remove(input_copies_dropped)
