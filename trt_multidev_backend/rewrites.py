"""Exact rewrites of a placed graph for what TensorRT refuses.

Each rewrite changes how a value is represented, never what is computed:

- embedding indices in int64 that the graph computes from constants only (the position ids of
  GPT-2-style models, from ``arange``) become int32. Torch-TensorRT 2.11-2.13 fold them into a
  constant and refuse it (``RuntimeError: The embedding op has indices_tensor dtype=int64``);
  indices fed by inputs or state reach TensorRT as tensors, where int64 is accepted, and stay as
  they are. An index is below `num_embeddings` (or embedding raises), and a table has fewer than
  2**31 rows, so the cast is exact.

- dropout outside training (``nn.Dropout`` of a model in eval mode) is removed: eager returns its
  input itself then, so every use reads the input. Left in, it reaches Torch-TensorRT as a copy
  (``aten.clone``), which Torch-TensorRT 2.11 cannot convert where it copies an engine input with
  dynamic shapes; it then runs in PyTorch between engines (GPT-2's decode steps on an H200: 10
  copies, 14 engines).

- one-dimensional empty tensors in a concatenation (``torch.cat([torch.tensor([]), k])``: the
  first step of Hugging Face's KV cache) are dropped: ``cat`` skips them anyway, and TensorRT
  refuses empty tensors (GPT-2's prompt pass on an H200 left 8 such concatenations in PyTorch,
  between 5 engines). Only where another tensor remains and the others alone give the result's
  dtype (an empty tensor still takes part in type promotion).

- an attention mask the graph builds from constants only (Hugging Face's causal mask, from
  ``arange`` comparisons) is evaluated when the graph is compiled: a mask that keeps every position
  is removed, and a causal one (``tril`` of a square L x L score matrix, as a boolean mask or as
  0 / -inf) becomes ``is_causal=True``, the same mask as PyTorch defines it. Torch-TensorRT 2.11
  folds such a mask into a constant and its attention converters then fail on it
  (``add_cast(): incompatible function arguments``), so GPT-2's, Llama's and BERT's attention ran
  in PyTorch between engines (an H200: 5 engines for GPT-2's 4 layers). Any other mask, and masks
  built from inputs or state, stay as they are.

- an in-place update of a fresh tensor that nothing but the update reads (T5's
  ``relative_buckets += ...``) becomes its out-of-place form, where that gives the same dtype and
  shape: no one can see the difference. A graph that writes in place is not cut into pieces when a
  build fails (graphinfo.writes_in_place), and Torch-TensorRT refuses a piece that mutates its
  input (``aot_export_joint_simple does not support input mutations``), so T5 fell back whole.

- an integer slice bound beyond its dimension (``x[:, :, -63:]`` on a dimension of 16: a
  sliding-window KV cache's first steps) becomes the bound PyTorch clamps it to, where that bound
  is the same for every size the dimension can take (static, or within dynamo's range for it).
  Torch-TensorRT 2.11 wraps such a bound instead of clamping it (-63 on 16 started at 1, not 0:
  15 positions came back where eager gives 16, an H200, session 16). A slice no single bound
  fits is marked to run in PyTorch (graphinfo.IN_PYTORCH).

- a sum of numbers as one call (``torch.sym_sum([1, s40])``: dynamo reads a concatenation's size
  that way, as in the cached values' length a Qwen2 or Mistral decode step expands its values to)
  becomes a chain of ``+``. Torch-TensorRT 2.11 has no converter for ``torch.sym_sum``, so each
  left PyTorch between engines (Qwen2's decode step on an H200, session 18: three engines instead
  of one); ``+`` on numbers it converts.

- ``index_copy`` along a dimension (how Hugging Face's static KV cache writes a step's keys and
  values) becomes ``scatter`` with the index spread over the source's shape: the same elements
  put in the same places. Torch-TensorRT 2.11 lowers index_copy to index_put, whose converter
  failed on it ("Cannot broadcast ...", H200, session 19), and it runs scatter.

What the Torch-TensorRT delegate alone does for Torch-TensorRT 2.11's own passes is in
lowering.py.
"""

from __future__ import annotations

import collections
import functools
import operator
from typing import Any, NamedTuple, Sequence

import torch
import torch.fx

from .graphinfo import (IN_PYTORCH, ArgInfo, Role, attention_mask, is_attention, meta_value, out_of_place_form,
                        out_of_place_value, set_attention_mask, size_bounds, storage_of)

__all__ = ["rewrite_for_tensorrt", "pin_state_scalars", "Pin"]

_INT32_ROWS = 2**31 - 1
# embedding call -> (position of the indices, position of the table) among its arguments
_EMBEDDINGS = {
    torch.nn.functional.embedding: (0, 1),
    torch.embedding: (1, 0),
    torch.ops.aten.embedding.default: (1, 0),
}


_F = torch.nn.functional
# dropout call -> (position of its training flag, its keyword, its default)
_DROPOUTS = {
    _F.dropout: (2, "training", True), _F.dropout1d: (2, "training", True),
    _F.dropout2d: (2, "training", True), _F.dropout3d: (2, "training", True),
    _F.alpha_dropout: (2, "training", False), _F.feature_alpha_dropout: (2, "training", False),
    torch.dropout: (2, "train", None), torch.alpha_dropout: (2, "train", None),
    torch.feature_dropout: (2, "train", None), torch.feature_alpha_dropout: (2, "train", None),
}


_CONCATS = (torch.cat, torch.concat, torch.concatenate, torch.ops.aten.cat.default)
_FACTORIES = (torch.tensor, torch.empty, torch.zeros)


def rewrite_for_tensorrt(gm: torch.fx.GraphModule) -> list[str]:
    """Apply the rewrites to `gm` in place (a placed copy); returns a note per rewrite."""
    notes = (_drop_eval_dropouts(gm) + _drop_empty_concat_inputs(gm) + _constant_attention_masks(gm)
             + _fresh_updates_out_of_place(gm) + _slices_within_bounds(gm) + _number_sums_as_adds(gm)
             + _index_copies_as_scatters(gm))
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in _EMBEDDINGS:
            continue
        at, table_at = _EMBEDDINGS[node.target]
        if len(node.args) <= max(at, table_at):
            continue
        indices, table = node.args[at], node.args[table_at]
        index_value, table_value = _value(indices), _value(table)
        if not isinstance(index_value, torch.Tensor) or index_value.dtype != torch.int64:
            continue
        if not isinstance(table_value, torch.Tensor) or table_value.dim() < 1 or table_value.shape[0] > _INT32_ROWS:
            continue
        if not isinstance(indices, torch.fx.Node) or _reads_placeholders(indices):
            continue  # indices fed by the graph's inputs or state reach TensorRT as tensors: int64 is fine
        with gm.graph.inserting_before(node):
            cast = gm.graph.call_method("to", (indices, torch.int32))
        cast.meta["example_value"] = _as_int32(index_value)
        node.update_arg(at, cast)
        notes.append(f"embedding {node.name}: int64 indices cast to int32 (exact: below {table_value.shape[0]} rows)")
    if notes:
        gm.recompile()
    return notes


class Pin(NamedTuple):
    index: int    # the placeholder's position
    name: str     # where it comes from: "self.norm.eps"
    value: Any    # the Python number the graph now holds


def pin_state_scalars(gm: torch.fx.GraphModule, infos: Sequence[ArgInfo]) -> list[Pin]:
    """Module scalars dynamo passes as 0-d CPU tensors read with ``.item()`` (with dynamic=True,
    float attributes such as LayerNorm's eps stay unspecialized) become constants in `gm` (a
    placed copy whose placeholders are `infos`' in order). Torch-TensorRT 2.11's export cannot
    read a tensor's value while tracing (DataDependentOutputException on _local_scalar_dense),
    so such graphs used to fall back whole. The caller checks at every call that the attribute
    still holds the value (a change must not go unnoticed). Caller inputs are left alone."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    pins: list[Pin] = []
    for info, node in zip(infos, placeholders):
        example = info.example
        if (info.role is not Role.STATE or not isinstance(example, torch.Tensor)
                or isinstance(example, torch.nn.Parameter) or example.dim() != 0 or example.device.type != "cpu"
                or not (example.is_floating_point() or example.dtype in _INTEGERS)):
            continue
        reads = list(node.users)
        if not reads or any(r.op != "call_method" or r.target != "item" for r in reads):
            continue
        try:
            value = example.item()
        except Exception:  # a fake or meta tensor: no value to pin
            continue
        for read in reads:
            for user in list(read.users):
                user.args = torch.fx.node.map_arg(user.args, lambda n, r=read: value if n is r else n)
                user.kwargs = torch.fx.node.map_arg(user.kwargs, lambda n, r=read: value if n is r else n)
            gm.graph.erase_node(read)
        pins.append(Pin(info.index, info.name, value))
    if pins:
        gm.recompile()
    return pins


_INTEGERS = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool)


def _drop_eval_dropouts(gm: torch.fx.GraphModule) -> list[str]:
    """Remove dropout calls whose training flag is a constant False: their uses read the input."""
    notes = []
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in _DROPOUTS or not node.args:
            continue
        at, keyword, default = _DROPOUTS[node.target]
        training = node.args[at] if len(node.args) > at else node.kwargs.get(keyword, default)
        if training is not False or not isinstance(node.args[0], torch.fx.Node):
            continue
        node.replace_all_uses_with(node.args[0])
        gm.graph.erase_node(node)
        notes.append(f"{node.name}: dropout outside training removed (eager returns its input)")
    if notes:
        gm.recompile()
    return notes


def _drop_empty_concat_inputs(gm: torch.fx.GraphModule) -> list[str]:
    """Leave out of each concatenation the 1-D empty tensors it skips, where the others alone
    give the result's dtype."""
    notes = []
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in _CONCATS:
            continue
        in_kwargs = "tensors" in node.kwargs
        tensors = node.kwargs["tensors"] if in_kwargs else (node.args[0] if node.args else None)
        result = meta_value(node)
        if not isinstance(tensors, (list, tuple)) or not isinstance(result, torch.Tensor):
            continue
        kept = [t for t in tensors if not _skipped_by_cat(t)]
        if not kept or len(kept) == len(tensors) or _promoted(kept) != result.dtype:
            continue  # nothing to leave out, or the empty tensors decide the result's dtype
        if in_kwargs:
            node.update_kwarg("tensors", kept)
        else:
            node.update_arg(0, kept)
        for gone in set(tensors) - set(kept):
            if not gone.users and gone.op == "call_function" and gone.target in _FACTORIES:
                gm.graph.erase_node(gone)
        notes.append(f"{node.name}: {len(tensors) - len(kept)} empty input(s) left out (cat skips them)")
    if notes:
        gm.recompile()
    return notes


_MASK_ELEMENTS = 2**26  # a constant mask (each step building it) is evaluated up to this many stored elements


def _constant_attention_masks(gm: torch.fx.GraphModule) -> list[str]:
    """Attention masks built from constants only: removed where they keep every position,
    `is_causal=True` where they are the causal mask of a square score matrix."""
    notes, values = [], {}
    for node in list(gm.graph.nodes):
        if not is_attention(node) or len(node.args) < 3:
            continue
        mask = attention_mask(node)
        causal = node.kwargs.get("is_causal", node.args[5] if len(node.args) > 5 else False)
        if not isinstance(mask, torch.fx.Node) or causal is not False:
            continue
        if mask not in values:
            values[mask] = _evaluate(gm, mask)
        kind = _mask_kind(values[mask], _value(node.args[0]), _value(node.args[1]))
        if kind is None:
            continue
        set_attention_mask(node, None)
        if kind == "causal":
            if len(node.args) > 5:
                node.update_arg(5, True)
            else:
                node.update_kwarg("is_causal", True)
        notes.append(f"{node.name}: constant attention mask " + ("replaced by is_causal=True (the same mask)"
                                                                 if kind == "causal" else "that keeps every position removed"))
    for mask in reversed(list(values)):  # what built the masks, where nothing else reads it
        _erase_unused(gm, mask)
    if notes:
        gm.recompile()
    return notes


def _mask_kind(mask: torch.Tensor | None, query: Any, key: Any) -> str | None:
    """"keep-all", "causal" or None (any other mask, or sizes not known)."""
    if mask is None or not isinstance(query, torch.Tensor) or not isinstance(key, torch.Tensor):
        return None
    length, keys = query.shape[-2], key.shape[-2]
    if not isinstance(length, int) or not isinstance(keys, int):
        return None
    if mask.dtype == torch.bool:
        keep, drop = True, False
    elif mask.is_floating_point():
        keep, drop = 0.0, float("-inf")
    else:
        return None
    mask = _distinct(mask)
    if bool((mask == keep).all()):
        return "keep-all"
    if length != keys or tuple(mask.shape[-2:]) != (length, keys):
        return None
    lower = torch.ones(length, keys, dtype=torch.bool).tril()
    expected = torch.full((length, keys), drop, dtype=mask.dtype).masked_fill(lower, keep)
    return "causal" if bool((mask == expected).all()) else None


def _stored(value: torch.Tensor) -> int | None:
    """How many elements a tensor really holds: its size along the dimensions it is not expanded
    in (an `expand` to the batch is a view); None for symbolic sizes."""
    count = 1
    for size, stride in zip(value.shape, value.stride()):
        if not isinstance(size, int) or not isinstance(stride, int):
            return None
        count *= size if stride != 0 else 1
    return count


def _distinct(value: torch.Tensor) -> torch.Tensor:
    """`value` without the copies an expand made: one slice along each dimension of stride 0.
    Comparing that slice is comparing every copy, and compares broadcast as before."""
    for dim, stride in enumerate(value.stride()):
        if stride == 0 and value.shape[dim] > 1:
            value = value.narrow(dim, 0, 1)
    return value


def _evaluate(gm: torch.fx.GraphModule, mask: torch.fx.Node) -> torch.Tensor | None:
    """The value of a node built from constants only, computed on the CPU (its devices replaced:
    the values are the same). None where it reads the graph's inputs or state, or a step is too
    large, unknown or fails."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    seen: set[torch.fx.Node] = set()
    todo = [mask]
    while todo:
        node = todo.pop()
        if node in seen:
            continue
        seen.add(node)
        value = meta_value(node)
        if node.op not in ("call_function", "call_method") or (node.op == "call_method" and node.target == "cuda"):
            return None
        if isinstance(value, torch.Tensor) and (_stored(value) or _MASK_ELEMENTS + 1) > _MASK_ELEMENTS:
            return None
        todo.extend(node.all_input_nodes)
    graph = torch.fx.Graph()
    env: dict[torch.fx.Node, torch.fx.Node] = {}
    for node in gm.graph.nodes:  # graph order
        if node in seen:
            env[node] = graph.node_copy(node, lambda n: env[n])
            env[node].args, env[node].kwargs = _on_cpu(env[node].args), _on_cpu(env[node].kwargs)
    graph.output(env[mask])
    try:
        with unset_fake_temporarily(), torch.no_grad():
            value = torch.fx.GraphModule(torch.nn.Module(), graph)()
    except Exception:  # noqa: BLE001 - a mask that cannot be evaluated here is left as it is
        return None
    return value if isinstance(value, torch.Tensor) else None


def _on_cpu(arg: Any) -> Any:
    """Arguments with every device replaced by the CPU."""
    if isinstance(arg, torch.device):
        return torch.device("cpu")
    if isinstance(arg, str) and arg.split(":")[0] in ("cuda", "cpu"):
        return "cpu"
    if isinstance(arg, dict):
        return {k: _on_cpu(v) for k, v in arg.items()}
    if isinstance(arg, (list, tuple)):
        return type(arg)(_on_cpu(v) for v in arg)
    return arg


def _erase_unused(gm: torch.fx.GraphModule, node: torch.fx.Node) -> None:
    """Remove `node` and what only it used, where nothing reads them any more."""
    todo, erased = [node], set()
    while todo:
        current = todo.pop()
        if current in erased or current.users or current.op not in ("call_function", "call_method"):
            continue
        inputs = current.all_input_nodes
        gm.graph.erase_node(current)
        erased.add(current)
        todo.extend(inputs)


def _fresh_updates_out_of_place(gm: torch.fx.GraphModule) -> list[str]:
    """In-place updates of a tensor the graph made itself, read by nothing but the update and
    sharing its memory with no other value, turned into their out-of-place form where that gives
    the same dtype and shape."""
    notes, storages = [], None
    for node in list(gm.graph.nodes):
        replacement = out_of_place_form(node)
        if replacement is None:
            continue
        written = node.args[0] if node.args else None
        if (not isinstance(written, torch.fx.Node) or written.op not in ("call_function", "call_method")
                or len(written.users) != 1 or node.kwargs.get("out") is not None):
            continue
        if storages is None:  # how many values of the graph use each storage
            storages = collections.Counter(s for s in map(storage_of, gm.graph.nodes) if s is not None)
        storage = storage_of(written)
        if storage is None or storages[storage] > 2:  # a third value sharing it: a view someone reads
            continue
        if out_of_place_value(node, replacement) is None:
            continue
        node.target = replacement
        notes.append(f"{node.name}: in-place update of a tensor only it reads made out of place")
    if notes:
        gm.recompile()
    return notes


def _slices_within_bounds(gm: torch.fx.GraphModule) -> list[str]:
    """Slice bounds of `x[...]` that may lie beyond a dimension, replaced by the bound PyTorch
    clamps them to where that is the same for every size the dimension can take (Torch-TensorRT
    2.11 wraps -63 on a dimension of 16 to 1, where PyTorch starts at 0: a sliding-window KV
    cache lost a position). A slice no one bound fits runs in PyTorch (IN_PYTORCH)."""
    notes = []
    output = next(n for n in reversed(gm.graph.nodes) if n.op == "output")
    for node in list(gm.graph.nodes):  # a node may move to the end
        if node.op != "call_function" or node.target is not operator.getitem or len(node.args) != 2:
            continue
        base, index = node.args
        value = _value(base)
        if not isinstance(value, torch.Tensor):
            continue
        entries = list(index) if isinstance(index, tuple) else [index]
        dims = _indexed_dims(entries, value.dim())
        if dims is None:
            continue
        changed, unresolved = [], []
        for at, dim in dims:
            size, entry = value.shape[dim], entries[at]
            if not all(b is None or type(b) is int for b in (entry.start, entry.stop)):
                continue  # a computed bound: Torch-TensorRT takes it as a tensor
            low, high = size_bounds(size)
            start, stop = (_clamped(entry.start, low, high, size, stop=False),
                           _clamped(entry.stop, low, high, size, stop=True))
            where = f"on dim {dim} of {size}" + ("" if type(size) is int else f" in [{low}, {high or 'inf'}]")
            if _UNRESOLVED in (start, stop):
                unresolved.append(f"{entry.start}:{entry.stop} {where}")
            elif (start, stop) != (entry.start, entry.stop):
                entries[at] = slice(start, stop, entry.step)
                changed.append(f"{entry.start}:{entry.stop} -> {start}:{stop} {where}")
        if changed:
            node.update_arg(1, tuple(entries) if isinstance(index, tuple) else entries[0])
            notes.append(f"{node.name}: slice bounds beyond the dimension clamped as PyTorch does ({'; '.join(changed)})")
        if unresolved:
            node.meta[IN_PYTORCH] = f"slice bounds that may lie beyond the dimension ({'; '.join(unresolved)})"
            if set(node.users) == {output}:
                output.prepend(node)  # read by outputs only: after the engine, which stays whole
            notes.append(f"{node.name}: runs in PyTorch: {node.meta[IN_PYTORCH]}")
    if notes:
        gm.recompile()
    return notes


_UNRESOLVED = object()  # no one bound is right for every size a dimension can take


def _number_sums_as_adds(gm: torch.fx.GraphModule) -> list[str]:
    """``torch.sym_sum([a, b, ...])`` becomes ``(a + b) + ...``: the same number (an int's or a
    SymInt's sum), in the form Torch-TensorRT converts."""
    notes = []
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not torch.sym_sum or node.kwargs or len(node.args) != 1:
            continue
        terms = node.args[0]
        if not isinstance(terms, (list, tuple)) or len(terms) < 2 or any(_value(t) is None for t in terms):
            continue
        total, value = terms[0], _value(terms[0])
        with gm.graph.inserting_before(node):
            for term in terms[1:]:
                total = gm.graph.call_function(operator.add, (total, term))
                value = value + _value(term)
                total.meta["example_value"] = value
        total.meta.update(node.meta)  # the sum's own value (its symbols as dynamo made them)
        node.replace_all_uses_with(total)
        gm.graph.erase_node(node)
        notes.append(f"{node.name}: torch.sym_sum of {len(terms)} numbers as + ({total.name})")
    return notes


_INDEX_COPIES = {"index_copy": "scatter", "index_copy_": "scatter_"}


def _index_copies_as_scatters(gm: torch.fx.GraphModule) -> list[str]:
    """``x.index_copy(d, index, source)`` (and ``index_copy_``, ``torch.index_copy``) becomes
    ``x.scatter(d, index.view(1, .., -1, .., 1).expand_as(source), source)``: both put
    ``source.select(d, k)`` at ``index[k]`` along `d` (and leave which one wins undefined where
    `index` repeats). Torch-TensorRT 2.11 lowers index_copy to index_put, whose converter failed
    on it ("Cannot broadcast (1, 8, 16, 64) to (16, 1, 8, 64)": a static KV cache's update, H200,
    session 19); scatter it converts. Updates marked to run in PyTorch stay as they are."""
    notes = []
    for node in list(gm.graph.nodes):
        if node.meta.get(IN_PYTORCH) or node.kwargs:
            continue
        if node.op == "call_method" and node.target in _INDEX_COPIES:
            method = _INDEX_COPIES[node.target]
        elif node.op == "call_function" and node.target is torch.index_copy:
            method = "scatter"
        else:
            continue
        if len(node.args) != 4 or not isinstance(node.args[1], int):
            continue
        base, dim, index, source = node.args
        b, i, src = _value(base), _value(index), _value(source)
        if not (isinstance(b, torch.Tensor) and isinstance(i, torch.Tensor) and isinstance(src, torch.Tensor)
                and i.dim() == 1 and i.dtype == torch.int64 and b.dim() >= 1 and src.dim() == b.dim()):
            continue
        dim = dim % b.dim()
        shape = [1] * b.dim()
        shape[dim] = -1
        mode = getattr(src, "fake_mode", None)
        with gm.graph.inserting_before(node):
            view = gm.graph.call_method("view", (index, shape))
            spread = gm.graph.call_method("expand_as", (view, source))
        if mode is not None:
            with mode:
                view.meta["example_value"] = i.view(shape)
                spread.meta["example_value"] = view.meta["example_value"].expand_as(src)
        node.op, node.target, node.args = "call_method", method, (base, dim, spread, source)
        notes.append(f"{node.name}: index_copy along dimension {dim} as scatter")
    if notes:
        gm.recompile()
    return notes


def _clamped(bound: int | None, low: int | None, high: int | None, size: Any, *, stop: bool) -> Any:
    """A slice bound as PyTorch reads it on a dimension of `size` in [low, high]: unchanged where
    it lies inside for every size, 0 or the end where it lies beyond for every size."""
    if bound is None or (low is not None and abs(bound) <= low):
        return bound
    if bound < 0 and high is not None and -bound >= high:
        return 0  # before the start, for every size
    if bound >= 0 and high is not None and bound >= high:  # past the end, for every size
        if type(size) is int:
            return size
        if stop:
            return None
    return _UNRESOLVED


def _indexed_dims(entries: Sequence[Any], ndim: int) -> list[tuple[int, int]] | None:
    """(position in the index, dimension) of each slice in a basic index of a tensor with `ndim`
    dimensions; None for an index with anything but slices, integers, None and one Ellipsis."""
    if any(e is not None and e is not Ellipsis and not isinstance(e, slice) and type(e) is not int for e in entries):
        return None
    consumed = sum(1 for e in entries if isinstance(e, slice) or type(e) is int)
    ellipses = [i for i, e in enumerate(entries) if e is Ellipsis]
    if len(ellipses) > 1 or consumed > ndim:
        return None
    dims, dim = [], 0
    for i, entry in enumerate(entries):
        if entry is Ellipsis:
            dim += ndim - consumed
        elif isinstance(entry, slice):
            dims.append((i, dim))
            dim += 1
        elif entry is not None:
            dim += 1
    return dims


def _skipped_by_cat(arg: Any) -> bool:
    value = _value(arg)
    return (isinstance(arg, torch.fx.Node) and isinstance(value, torch.Tensor) and value.dim() == 1
            and isinstance(value.shape[0], int) and value.shape[0] == 0)


def _promoted(tensors: Sequence[Any]) -> torch.dtype | None:
    """The dtype concatenating these gives, or None where a value is unknown."""
    dtypes = [getattr(_value(t), "dtype", None) for t in tensors]
    if None in dtypes:
        return None
    return functools.reduce(torch.promote_types, dtypes)


def _reads_placeholders(node: torch.fx.Node) -> bool:
    """Whether a value depends on the graph's inputs or state, or only on constants and factory
    calls (which Torch-TensorRT folds into constants)."""
    seen, todo = set(), [node]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        if current.op in ("placeholder", "get_attr"):
            return True
        todo.extend(current.all_input_nodes)
    return False


def _value(arg: Any) -> Any:
    return meta_value(arg) if isinstance(arg, torch.fx.Node) else arg


def _as_int32(value: torch.Tensor) -> Any:
    mode = getattr(value, "fake_mode", None)
    if mode is None:
        return None
    with mode:
        return value.to(torch.int32)
