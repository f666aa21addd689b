"""Segments: split a placed graph by device, so each delegate call sees one GPU's work only.

Torch-TensorRT's partitioner ignores device placement: an explicit ``.to("cpu")`` branch is pulled
into an engine that then receives CPU tensors and fails ("Expected inputs[i].is_cuda()"), and a
graph whose layers sit on two GPUs cannot be built at all. So a graph is split, in graph order,
into runs of nodes on one GPU (device segments, compiled for that GPU) and runs of nodes that stay
in PyTorch: deliberate host work, and the copies between GPUs (PyTorch orders a cross-device copy
with events between the two devices' current streams, without a host synchronization).

Two cases: a graph with one target whose host work must stay out of its engines (only target
segments; graphs with no host work are not split), and a graph whose state spans several GPUs
(one device segment per run of work on each GPU: pipeline placement, ``device_map``).

Every split here (segments, the search in pieces, the mask prefix) passes only tensors from a piece
to another: a number computed from sizes is computed again where it is read (`numbers_recomputed`),
since an engine hands numbers back as tensors.
"""

from __future__ import annotations

import logging
import operator
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Sequence

import torch
import torch.fx
from torch._subclasses.fake_tensor import FakeTensor
from torch.fx.passes.split_module import split_module

from .device import DevicePlan
from .graphinfo import IN_PYTORCH, from_sizes, is_number, meta_value, op_count
from .placement import graph_copy, is_move

__all__ = ["Segmented", "split_by_device", "runs", "split_graph", "numbers_recomputed", "piece_number", "install"]

log = logging.getLogger("trt_multidev.segments")


@dataclass
class Segmented:
    gm: torch.fx.GraphModule                                       # calls submod_0, submod_1, ... in order
    device_segments: list[tuple[str, torch.device, list[Any]]]     # (submodule, its GPU, example inputs)
    host_segments: list[str]                                       # run in PyTorch: host work, transfers

    def describe(self, most: int | None = None) -> str:
        """The stages, in order, for the plan log line: 'submod_0 on cuda:0 (12 ops), ...'; over
        `most` of them, summed per place instead: '9 on cuda:0 (155 ops), 9 in PyTorch (29 ops)'."""
        parts = []
        for name, module in self.gm.named_children():
            if not isinstance(module, torch.fx.GraphModule):
                continue
            device = next((f"on {d}" for seg, d, _ in self.device_segments if seg == name), "in PyTorch")
            parts.append((name, device, op_count(module)))
        if most is None or len(parts) <= most:
            return ", ".join(f"{name} {device} ({ops} ops)" for name, device, ops in parts)
        totals: dict[str, list[int]] = {}
        for _, device, ops in parts:
            count = totals.setdefault(device, [0, 0])
            count[0] += 1
            count[1] += ops
        return ", ".join(f"{n} {device} ({ops} ops)" for device, (n, ops) in totals.items())


class _Callable(torch.nn.Module):
    """Lets any compiled callable sit where a submodule was."""

    def __init__(self, fn: Callable[..., Any]):
        super().__init__()
        self.fn = fn

    def forward(self, *args: Any) -> Any:
        return self.fn(*args)


def _node_device(node: torch.fx.Node, plan: DevicePlan) -> torch.device | None:
    value = meta_value(node)
    if isinstance(value, (tuple, list)):
        value = next((v for v in value if isinstance(v, torch.Tensor)), None)
    if not isinstance(value, torch.Tensor):
        return None
    device = value.device
    if plan.relocates(device):
        return plan.target  # relocated by the device override; the metadata predates it
    return device


def split_by_device(gm: torch.fx.GraphModule, examples: Sequence[Any], plan: DevicePlan) -> Segmented | None:
    """Split `gm` into device segments and PyTorch segments; None when no split is needed (one
    target and no host work) or possible (no GPU work at all)."""
    target = plan.target
    marked = any(n.meta.get(IN_PYTORCH) for n in gm.graph.nodes)
    if target is not None and target.type != "cuda" and not marked:
        return None  # on the host only what a rewrite sends to PyTorch is split off (a test delegate's target)
    classes: dict[torch.fx.Node, torch.device | None] = {}  # the segment's GPU, or None: PyTorch
    current: torch.device | None = target
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "output"):
            continue
        device = _node_device(node, plan)
        if node.meta.get(IN_PYTORCH):  # a rewrite found TensorRT would get it wrong (rewrites.py)
            classes[node] = None
            continue
        if device is not None:
            current = device if (device == target if target is not None else device.type == "cuda") else None
            if current is not None and is_move(node):
                # A copy from the host or from another GPU stays in PyTorch, so a device segment
                # only ever receives tensors on its own GPU (an engine refuses the others).
                sources = [_node_device(a, plan) for a in node.all_input_nodes]
                if any(d is not None and d != current for d in sources):
                    current = None
        classes[node] = current
    gpus = {c for c in classes.values() if c is not None}
    if (not gpus and not marked) or (target is not None and all(c is not None for c in classes.values())):
        return None  # (only marked PyTorch work: one host segment, no device segment)

    partition, device_of = runs(gm, lambda node, seen: classes[node])
    split, pieces = split_graph(gm, examples, partition)
    devices, hosts = [], []
    for name, inputs in pieces.items():
        device = device_of.get(piece_number(name))
        if device is not None:
            devices.append((name, device, inputs))
        else:
            hosts.append(name)
    return Segmented(split, devices, hosts)


def runs(gm: torch.fx.GraphModule, label: Callable[[torch.fx.Node, int], Hashable]
         ) -> tuple[dict[torch.fx.Node, int], dict[int, Hashable]]:
    """Every node of `gm` (placeholders and output aside) numbered by the run of equal labels it
    falls in, in graph order (`label(node, ops before it)`), and each number's label; a tuple's
    items stay with the op that made the tuple."""
    pieces: dict[torch.fx.Node, int] = {}
    labels: dict[int, Hashable] = {}
    seen, index, previous = 0, -1, object()
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "output"):
            continue
        source = node.args[0] if node.args else None
        if (node.op == "call_function" and node.target is operator.getitem and source in pieces
                and not isinstance(meta_value(source), torch.Tensor)):  # a tuple's item, not indexing
            pieces[node] = pieces[source]
            continue
        current = label(node, seen)
        if index < 0 or current != previous:
            index += 1
            labels[index] = previous = current
        pieces[node] = index
        seen += node.op in ("call_function", "call_method", "call_module")
    return pieces, labels


def piece_number(name: str) -> int:
    """The number of a split graph's submodule ("submod_3" -> 3), as `runs` numbered it."""
    return int(name.rsplit("_", 1)[1])


def split_graph(gm: torch.fx.GraphModule, examples: Sequence[Any], partition: dict[torch.fx.Node, int],
                known: dict[str, Any] | None = None) -> tuple[torch.fx.GraphModule, dict[str, list[Any]]]:
    """`gm` cut into submodules submod_<n> by `partition` (every node but placeholders and the
    output, numbered in graph order), and each submodule's example inputs, in order: the values
    `known` gives by node name, else made from the nodes' metadata. Numbers do not cross between
    pieces (`numbers_recomputed`)."""
    gm, partition = numbers_recomputed(gm, partition)
    split = split_module(gm, gm, lambda n: partition[n], keep_original_order=True)
    values: dict[str, Any] = dict(known or {})
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for node, example in zip(placeholders, examples):
        values[node.name] = example
    fake_mode = next((x.fake_mode for x in examples if isinstance(x, FakeTensor)), None)
    for node in gm.graph.nodes:
        if node.name not in values:
            values[node.name] = _example_like(meta_value(node), fake_mode)
    pieces = {name: [values.get(p.name) for p in module.graph.nodes if p.op == "placeholder"]
              for name, module in split.named_children() if name.startswith("submod_")}
    return split, pieces


def numbers_recomputed(gm: torch.fx.GraphModule, partition: dict[torch.fx.Node, int]
                       ) -> tuple[torch.fx.GraphModule, dict[torch.fx.Node, int]]:
    """`gm` (a copy, when it changes) and its partition, where a number one piece computes from
    sizes and another piece reads is computed again in the reader, from the same sizes. An engine
    hands numbers back as tensors (Torch-TensorRT 2.11: ``torch.sym_max`` in the next piece got a
    tensor, Mistral's decode step on an H200, session 16), so only tensors cross: the sizes are
    read from them where they arrive. Numbers marked to run in PyTorch still cross (into an
    engine, as its inputs)."""
    def crosses(node: torch.fx.Node) -> bool:
        return from_sizes(node) and any(u in partition and partition[u] != partition[node] for u in node.users)

    if not any(crosses(n) for n in partition):
        return gm, partition
    gm = graph_copy(gm)
    by_name = {n.name: n for n in gm.graph.nodes}
    partition = {by_name[n.name]: piece for n, piece in partition.items()}
    copies: dict[tuple[torch.fx.Node, int], torch.fx.Node] = {}

    def local(node: torch.fx.Node, piece: int, before: torch.fx.Node) -> torch.fx.Node:
        """`node`'s value as `piece` sees it: itself, or its copy inserted ahead of `before`."""
        if partition.get(node, piece) == piece or not from_sizes(node):
            return node
        if (node, piece) not in copies:
            args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs), lambda a: local(a, piece, before)
                                                 if is_number(a) else a)
            with gm.graph.inserting_before(before):
                again = gm.graph.create_node(node.op, node.target, args, kwargs, name=f"{node.name}_again")
            again.meta = dict(node.meta)
            partition[again] = piece
            copies[node, piece] = again
        return copies[node, piece]

    for user in list(gm.graph.nodes):  # in graph order: a copy precedes every later reader in its piece
        if user not in partition:
            continue
        for arg in list(user.all_input_nodes):
            if is_number(arg):
                mine = local(arg, partition[user], user)
                if mine is not arg:
                    user.replace_input_with(arg, mine)
    for node in reversed(list(gm.graph.nodes)):
        if node in partition and not node.users and from_sizes(node):
            gm.graph.erase_node(node)
            del partition[node]
    gm.graph.lint()
    gm.recompile()
    return gm, partition


def _hint(size: Any) -> int:
    if isinstance(size, torch.SymInt):
        return int(size.node.hint) if size.node.hint is not None else 1
    return int(size)


def _example_like(value: Any, fake_mode: Any) -> Any:
    """An example for an intermediate value, built from its metadata without adding guards:
    a FakeTensor of the examples' own mode, else zeros on the value's device."""
    if not isinstance(value, torch.Tensor):
        return value
    sizes = [_hint(s) for s in value.shape]
    strides = [_hint(s) for s in value.stride()]
    if fake_mode is not None:
        with fake_mode:
            return torch.empty_strided(sizes, strides, dtype=value.dtype, device=value.device)
    # A view's strides may reach past its own element count (a slice of a wider tensor): the
    # storage holds everything the strides reach.
    extent = 1 + sum((n - 1) * st for n, st in zip(sizes, strides)) if all(sizes) else 0
    return torch.zeros(extent, dtype=value.dtype, device=value.device).as_strided(sizes, strides)


def install(gm: torch.fx.GraphModule, name: str, compiled: Callable[..., Any]) -> None:
    """Put a compiled piece of a split graph where its submodule was."""
    setattr(gm, name, compiled if isinstance(compiled, torch.nn.Module) else _Callable(compiled))
