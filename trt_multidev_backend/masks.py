"""Attention masks made without the caller's tensors: computed in PyTorch, handed to the engine.

A mask a graph computes from constants and module state alone (T5's position bias: a learned
bias per head looked up by constant distances; a constant padding mask) fails on Torch-TensorRT
2.11 with TensorRT-RTX when it is the engine's own work: folded to a constant, Torch-TensorRT's
attention converter calls `add_cast` on a `torch.Tensor` (TypeError); computed inside the engine,
TensorRT's fused attention fails when the execution context is created ("cuDNN graph compilation
failed"). Passed in, dense and with the queries' rank, the same attention builds into one engine
(benchmarks/attention_probe.py, H200; a permuted view, or a [queries, keys] mask, still fails).
So a small PyTorch prefix computes those masks on the target ahead of the engine (exact: the same
ops on the same values), again only when the state it reads changes, and the rest of the graph
goes to the delegate with the masks as inputs. What in the prefix depends on no input and no
state at all (T5's bucketed distances: aranges, logs, comparisons) is computed once, at compile
time, and kept as a constant, so the prefix is left with the lookup. Sizes are not data: a mask
whose shape follows a dynamic dimension goes ahead too (its prefix takes the size). Masks that
depend on the values of the caller's tensors, masks that are already inputs or state, and graphs
with in-place writes are left as they are.
"""

from __future__ import annotations

import functools
import logging
import operator
import weakref
from typing import Any, NamedTuple, Sequence

import torch
import torch.fx
from torch._subclasses.fake_tensor import FakeTensor, unset_fake_temporarily

from .graphinfo import (Role, attention_mask, classify_args, is_attention, meta_value, op_count, set_attention_mask,
                        target_name, writes_in_place)
from .segments import split_graph

__all__ = ["split_mask_prefix", "mask_prefix", "MaskPrefix", "Prefixed", "MAX_PREFIX_OPS"]

log = logging.getLogger("trt_multidev.masks")

MAX_PREFIX_OPS = 128  # the prefix runs on every call: masks costing more stay in the engine
MAX_FOLDED_BYTES = 16 << 20  # memory of one constant the prefix keeps (on the GPU, in the disk cache) at most
_RANDOM = ("rand", "dropout", "bernoulli", "normal", "uniform", "multinomial")
_UNSET = ("empty",)  # memory whose values are not defined: nothing to fold


def _pure(node: torch.fx.Node) -> bool:
    """Safe to run ahead of everything else, every call: no randomness, no side effect (graphs
    that write in place are not split at all)."""
    if node.op == "get_attr":
        return True
    if node.op not in ("call_function", "call_method"):
        return False
    return not node.is_impure() and not any(word in target_name(node) for word in _RANDOM)


def mask_prefix(gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> list[torch.fx.Node]:
    """The nodes (graph order) that compute attention masks from constants and state only."""
    # The caller's tensors are data; a size dynamo passes for a dynamic dimension is not.
    inputs = {info.node for info in classify_args(gm, example_inputs)
              if info.role is Role.INPUT and not isinstance(info.example, torch.SymInt)}
    chosen: set[torch.fx.Node] = set()
    for node in gm.graph.nodes:
        if not is_attention(node):
            continue
        mask = attention_mask(node)
        if not isinstance(mask, torch.fx.Node) or mask.op == "placeholder" or mask in chosen:
            continue
        closure: set[torch.fx.Node] = set()
        stack, usable = [mask], True
        while stack and usable:
            current = stack.pop()
            if current in closure or current in chosen or current.op == "placeholder":
                usable = current not in inputs
                continue
            usable = _pure(current)
            closure.add(current)
            stack += current.all_input_nodes
        if usable and len(chosen) + len(closure) <= MAX_PREFIX_OPS:
            chosen |= closure
    # The items of a tuple the prefix makes go with it.
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target is operator.getitem and node.args[0] in chosen:
            chosen.add(node)
    return [n for n in gm.graph.nodes if n in chosen]


class MaskPrefix(torch.nn.Module):
    """The prefix, computed again only when its arguments changed: module state (another tensor,
    or the same one written in place: its version counter moved) or sizes. Its outputs are read
    only by the rest of the graph, never returned, so nothing can change them in between. While
    a CUDA graph is captured it runs in full, so replays never use masks of older state."""

    def __init__(self, prefix: torch.fx.GraphModule) -> None:
        super().__init__()
        self.prefix = prefix
        self._memo: tuple[tuple, Any, _Ready | None] | None = None  # (key, outputs, ready): swapped whole

    def forward(self, *args: Any) -> Any:
        if _cuda() and torch.cuda.is_current_stream_capturing():
            return self.prefix(*args)  # a CUDA graph replays the masks' kernels: each replay reads the state anew
        memo = self._memo
        if memo is not None and _holds(memo[0], args):
            if memo[2] is not None:  # computed on another caller's stream, perhaps
                torch.cuda.current_stream(memo[2].device).wait_event(memo[2].event)
            return memo[1]
        out = self.prefix(*args)
        key = _state_key(args)
        if key is not None:
            self._memo = (key, out, _Ready.after(out))
        return out

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_memo": None}


@functools.lru_cache(maxsize=None)
def _cuda() -> bool:
    return torch.cuda.is_available()


class _Ready:
    def __init__(self, device: torch.device, event: Any) -> None:
        self.device, self.event = device, event

    @staticmethod
    def after(out: Any) -> "_Ready | None":
        values = out if isinstance(out, (tuple, list)) else (out,)
        device = next((v.device for v in values if isinstance(v, torch.Tensor) and v.is_cuda), None)
        if device is None:
            return None
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(device))
        return _Ready(device, event)


def _state_key(args: Sequence[Any]) -> tuple | None:
    """Who (a weak reference: an id could be reused), which version and where each argument is;
    None where that cannot be told (inference tensors keep no version)."""
    key = []
    for arg in args:
        if isinstance(arg, int):  # a dynamic size: masks are kept for the last sizes seen
            key.append((None, arg, None))
            continue
        if not isinstance(arg, torch.Tensor):
            return None
        try:
            key.append((weakref.ref(arg), arg._version, arg.data_ptr()))
        except (RuntimeError, TypeError):
            return None
    return tuple(key)


def _holds(key: tuple, args: Sequence[Any]) -> bool:
    """Whether `args` are what `key` recorded: the same sizes, the same tensors at the same
    version and address."""
    if len(key) != len(args):
        return False
    for (ref, version, address), arg in zip(key, args):
        if ref is None:
            if isinstance(arg, torch.Tensor) or arg != version:
                return False
        elif ref() is not arg or version != arg._version or address != arg.data_ptr():
            return False
    return True


def _fold_constants(prefix: torch.fx.GraphModule) -> None:
    """Compute now, and keep as constants of `prefix`, its work that reads no argument (sizes
    known at compile time): each call, and each change of state, then costs only what depends on
    the state. Exact: the same ops on the same values, once. Left as it is where the values cannot
    be computed here (a device this machine lacks), and a value whose memory would be large."""
    graph = prefix.graph
    constant: set[torch.fx.Node] = set()
    for node in graph.nodes:
        if (node.op in ("call_function", "call_method") and not any(word in target_name(node) for word in _UNSET)
                and all(arg in constant for arg in node.all_input_nodes)):
            constant.add(node)
    frontier = [n for n in graph.nodes if n in constant and any(user not in constant for user in n.users)]
    if not frontier:
        return
    interpreter = torch.fx.Interpreter(prefix)
    with unset_fake_temporarily(), torch.no_grad():  # real values, also inside a tracing context
        try:
            for node in graph.nodes:
                if node in constant:
                    interpreter.env[node] = interpreter.run_node(node)
        except Exception as exc:  # noqa: BLE001 - e.g. a device this machine lacks: the ops stay in the prefix
            log.debug("mask prefix: constants not computed at compile time (%s: %s)", type(exc).__name__, exc)
            return
        kept = [(node, interpreter.env[node].detach()) for node in frontier if _keepable(interpreter.env[node])]
    for i, (node, value) in enumerate(kept):
        name = f"_constant_{i}"
        prefix.register_buffer(name, value)
        with graph.inserting_before(node):
            attr = graph.get_attr(name)
        attr.meta = {key: node.meta[key] for key in ("example_value", "val") if key in node.meta}
        node.replace_all_uses_with(attr, delete_user_cb=lambda user: user not in constant)
    if not kept:
        return
    for node in reversed(list(graph.nodes)):  # what only the folded values read goes
        if node in constant and not node.users:
            graph.erase_node(node)
    graph.lint()
    prefix.recompile()


def _keepable(value: Any) -> bool:
    """A real tensor small enough to keep (an expanded view counts by its storage)."""
    return (isinstance(value, torch.Tensor) and not isinstance(value, FakeTensor)
            and value.untyped_storage().nbytes() <= MAX_FOLDED_BYTES)


def _as_engine_inputs(gm: torch.fx.GraphModule, chosen: set[torch.fx.Node]) -> list[torch.fx.Node]:
    """Each hoisted mask as the engine wants it: with the queries' rank (Torch-TensorRT 2.11's
    converter does not broadcast a [keys] or [queries, keys] mask; leading ones are what PyTorch's
    broadcasting adds) and contiguous (an expanded mask would be copied at every call, not once).
    Returns the nodes added, which belong to the prefix."""
    added: list[torch.fx.Node] = []
    made: dict[tuple[torch.fx.Node, int], torch.fx.Node] = {}  # one per mask and rank (T5 reuses its bias)
    for node in list(gm.graph.nodes):
        if not is_attention(node) or attention_mask(node) not in chosen:
            continue
        mask, query = attention_mask(node), meta_value(node.args[0])
        value = meta_value(mask)
        if not isinstance(query, torch.Tensor) or value.dim() > query.dim():
            continue
        missing = query.dim() - value.dim()
        if missing == 0 and value.is_contiguous():
            continue
        dense = made.get((mask, missing))
        if dense is None:
            last, example = mask, value
            for _ in range(missing):  # leading ones, sizes symbolic or not
                with gm.graph.inserting_after(last):
                    last = gm.graph.call_method("unsqueeze", (last, 0))
                example = example.unsqueeze(0)
                last.meta["example_value"] = example
                added.append(last)
            with gm.graph.inserting_after(last):
                dense = made[mask, missing] = gm.graph.call_method("contiguous", (last,))
            dense.meta["example_value"] = example.contiguous()
            added.append(dense)
        set_attention_mask(node, dense)
    return added


def _evaluated(gm: torch.fx.GraphModule, prefix: list[torch.fx.Node], placeholders: list[torch.fx.Node],
               example_inputs: Sequence[Any]) -> dict[str, Any]:
    """The prefix's values for real example inputs, by node name: the rest's examples are then
    the masks it will be given, on the device they will be on. Nothing for fake examples."""
    if any(isinstance(x, (FakeTensor, torch.SymInt)) for x in example_inputs):
        return {}  # made from the metadata instead (symbolic sizes stay symbolic there)
    interpreter = torch.fx.Interpreter(gm)
    interpreter.env = dict(zip(placeholders, example_inputs))
    with torch.no_grad():
        for node in prefix:
            interpreter.env[node] = interpreter.run_node(node)
    return {node.name: interpreter.env[node] for node in prefix}


class Prefixed(NamedTuple):
    whole: torch.fx.GraphModule  # calls submod_0 (the prefix), then submod_1 (the rest)
    rest: str                    # "submod_1", for the delegate
    rest_inputs: list[Any]       # its example inputs, the masks among them
    ops: int                     # the prefix's ops


def split_mask_prefix(gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> Prefixed | None:
    """`gm` as a PyTorch prefix computing its state-only masks and the rest, which receives the
    masks as inputs; None when no mask qualifies. `gm` is reordered in place (the prefix moved to
    the top)."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if writes_in_place(gm):
        return None  # a write after the prefix ran (to a mask, or through a view of one) would be lost
    prefix = mask_prefix(gm, example_inputs)
    if not prefix:
        return None
    chosen = set(prefix)
    leaving = [n for n in prefix if any(user not in chosen for user in n.users)]
    if any(not isinstance(meta_value(n), torch.Tensor) for n in leaving):
        return None  # the rest's example inputs are made from this metadata
    prefix += _as_engine_inputs(gm, chosen)
    chosen = set(prefix)
    anchor = placeholders[-1]
    for node in prefix:  # every input of a prefix node is a placeholder or an earlier prefix node
        anchor.append(node)
        anchor = node
    gm.graph.lint()
    gm.recompile()
    split, pieces = split_graph(gm, example_inputs, {n: 0 if n in chosen else 1 for n in gm.graph.nodes
                                                     if n.op not in ("placeholder", "output")},
                                known=_evaluated(gm, prefix, placeholders, example_inputs))
    if set(pieces) != {"submod_0", "submod_1"}:
        return None
    output = next(n for n in gm.graph.nodes if n.op == "output")
    if not chosen & set(output.all_input_nodes):  # returned masks are computed every call, afresh
        _fold_constants(split.submod_0)  # (a kept constant handed to the caller could be written to)
        split.submod_0 = MaskPrefix(split.submod_0)
    ops = op_count(getattr(split.submod_0, "prefix", split.submod_0))
    return Prefixed(split, "submod_1", pieces["submod_1"], ops)
