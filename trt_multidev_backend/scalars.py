"""Numbers in a graph that run in PyTorch, beside the engines.

Dynamo hands a backend numbers as well as tensors: SymInt inputs for a dynamic dimension's size,
SymInt inputs for a Python int it made dynamic after it changed between calls, and numbers the
graph computes and returns. Torch-TensorRT 2.11 takes tensors, and two of these go wrong there
(Mistral's and Gemma 2's generate() on an H200, session 16, Hugging Face's sliding-window cache):

- an input number that is no tensor's size (the cache's ``cumulative_length``) makes its
  ``remove_sym_nodes`` pass raise (``AttributeError: 'GetItemSource' object has no attribute
  'local_name'``), and in a piece whose values it bounds, the range Torch-TensorRT reads for a
  shape is unbounded below (``AttributeError: 'Infinity' object has no attribute '_mpf_'``);
- a number the graph returns comes back from an engine as a tensor (the mask sizes ``kv_length``
  and ``q_offset`` came back as ``tensor([18])``, and ``torch.arange`` then raised in the model's
  own code).

So the nodes that read such an input or a value that depends on it (a number, or a tensor whose
shape does), and the numbers a graph returns, are marked IN_PYTORCH: segments.py runs them in
PyTorch on the target, and the engines get tensors whose shapes they can read. Sizes of tensors
stay with Torch-TensorRT, which reads them from the tensors. Exact: the same ops on the same values.

Session 17's H200 probe (benchmarks/decode_graph_probe.py) added three rules. Dynamo may fix such
an input's value (its SymInt a constant, ``16``) and still pass it: its readers get the constant.
It may find the input equal to a size (``cumulative_length`` carries the cached keys' symbol): its
readers get that size, and tensors whose shapes carry the symbol stay in the engines. Other inputs
of this kind keep the rule above, whether their values are symbols or not. And number ops
Torch-TensorRT 2.11 has no converter for (``torch.sym_max`` over the cache's length, in the
sliding window's mask) are marked with what reads their numbers and what they read that is made
from sizes alone, so no engine computes a number for them.
"""

from __future__ import annotations

import collections
from typing import Any

import torch
import torch.fx

from .graphinfo import IN_PYTORCH, NUMBERS, SYMBOLIC, from_sizes, is_number, meta_value, source_name, source_of, writes_in_place

__all__ = ["numbers_in_pytorch"]

# Number functions dynamo records that Torch-TensorRT 2.11's converter registry lacks (it has
# torch.sym_not, operator arithmetic and aten.sym_size).
_NO_CONVERTER = {torch.sym_max, torch.sym_min, torch.sym_ite, torch.sym_float, torch.sym_int}
_FACTORIES = {torch.arange, torch.ones, torch.zeros, torch.full, torch.empty}


def numbers_in_pytorch(gm: torch.fx.GraphModule) -> list[str]:
    """Mark the nodes of `gm` that read an input number no tensor's size gives (after reading
    such inputs where dynamo knows their value), or anything that depends on one, the number ops
    Torch-TensorRT cannot convert with what they read and what reads them, and the numbers `gm`
    returns; move them to the top (those that read only the inputs and each other) or the end
    (those only the output reads), so that the engines stay whole. Returns a note per kind of node
    read or marked."""
    output = next(n for n in reversed(gm.graph.nodes) if n.op == "output")
    notes = _read_where_known(gm)
    inputs = {node: name for node, name in _foreign_inputs(gm).items() if node.users}  # placeholder -> its name
    sizes = set().union(*(_symbols(meta_value(n)) for n in gm.graph.nodes
                          if n.op == "placeholder" and n not in inputs))
    # A symbol a size also carries is bounded by it (dynamo found them equal): not foreign.
    foreign = {s: name for node, name in inputs.items() for s in _symbols(meta_value(node)) if s not in sizes}
    reads: dict[torch.fx.Node, set[str]] = {}  # marked node -> the input numbers it depends on
    reads_unconverted: dict[torch.fx.Node, str] = {}  # marked node -> the number op it is or reads
    marked = []
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "output", "get_attr"):
            continue
        read = {foreign[s] for n in (node, *node.all_input_nodes) for s in _symbols(meta_value(n)) if s in foreign}
        for arg in node.all_input_nodes:
            if arg in inputs:
                read.add(inputs[arg])
            elif arg in reads and isinstance(meta_value(arg), NUMBERS):
                read |= reads[arg]  # a number computed from one, even where its value is fixed
        unconverted = _unconverted(node) or next((reads_unconverted[a] for a in node.all_input_nodes
                                                  if a in reads_unconverted and is_number(a)), None)
        if read:
            reads[node] = read
            node.meta[IN_PYTORCH] = f"reads the number {', '.join(sorted(read))}, which is no tensor's size"
        elif unconverted:
            reads_unconverted[node] = unconverted
            node.meta[IN_PYTORCH] = f"computes or reads a number with {unconverted}, which Torch-TensorRT 2.11 cannot convert"
        elif output in node.users and isinstance(meta_value(node), NUMBERS):
            node.meta[IN_PYTORCH] = "a number the graph returns (an engine would return a tensor)"
        else:
            continue
        marked.append(node)
    marked += _sizes_read(marked, reads_unconverted)
    if marked and not writes_in_place(gm, written_back=False):  # moved past a write, a node would read another value
        order = {n: i for i, n in enumerate(gm.graph.nodes)}
        _gather(gm, sorted(marked, key=order.__getitem__), output)
    for reason, count in collections.Counter(n.meta[IN_PYTORCH] for n in marked).items():
        notes.append(f"{count} op(s) run in PyTorch: {reason}" + (_CACHE_LENGTH if ".max_cache_len" in reason else ""))
    if notes:  # something was read elsewhere or marked
        gm.graph.lint()
        gm.recompile()
    return notes


# Hugging Face's static cache made dynamic by a new length (a recompile): its prompt pass reads the length.
_CACHE_LENGTH = (" (a static KV cache whose length changed between generate() calls: pass max_cache_len= to "
                 "generate(), or set generation_config.max_cache_len, at the longest length you serve, and the "
                 "graphs keep one cache shape)")


def _unconverted(node: torch.fx.Node) -> str | None:
    """The name of a number op Torch-TensorRT 2.11 cannot convert, if `node` is one. Its
    partitioner leaves such an op to PyTorch between its engines, and the numbers an engine
    computes for it arrive as tensors: ``torch.sym_max`` raised AssertionError in Mistral's
    decode step (H200, session 17)."""
    if node.op == "call_function" and node.target in _NO_CONVERTER and is_number(node):
        return f"torch.{node.target.__name__}"
    return None


def _sizes_read(marked: list[torch.fx.Node], unconverted: dict[torch.fx.Node, str]) -> list[torch.fx.Node]:
    """What the nodes marked for a number op Torch-TensorRT cannot convert read that is made from
    sizes alone (numbers, and tensors a factory makes from numbers: ``torch.arange(n)``),
    recursively: marked too, so that they run in PyTorch with their reader (moved up with it)
    instead of in an engine that would hand them over."""
    found: list[torch.fx.Node] = []
    todo = [a for n in marked if n in unconverted for a in n.all_input_nodes]
    while todo:
        node = todo.pop()
        if node.meta.get(IN_PYTORCH):
            continue
        if from_sizes(node):
            node.meta[IN_PYTORCH] = "a number made from sizes, read by a number op left to PyTorch"
        elif _factory(node):
            node.meta[IN_PYTORCH] = "a tensor made from sizes alone, read beside a number op left to PyTorch"
        else:
            continue
        found.append(node)
        todo += node.all_input_nodes
    return found


def _factory(node: torch.fx.Node) -> bool:
    return (node.op == "call_function" and node.target in _FACTORIES
            and all(is_number(a) for a in node.all_input_nodes))


def _foreign_inputs(gm: torch.fx.GraphModule) -> dict[torch.fx.Node, str]:
    """The number placeholders that are no tensor's size, by name; dynamo may have fixed one's
    value (its symbol replaced by a constant) and still pass it, which Torch-TensorRT refuses."""
    return {node: source_name(node) for node in gm.graph.nodes
            if node.op == "placeholder" and isinstance(meta_value(node), SYMBOLIC) and not _is_size(node)}


def _read_where_known(gm: torch.fx.GraphModule) -> list[str]:
    """Input numbers whose value dynamo fixed (a constant) or found equal to a tensor's size (one
    symbol) are read from there instead: the constant, or the size. Exact wherever the graph runs
    (dynamo's guards hold), and the input is left unread."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    first_op = next((n for n in gm.graph.nodes if n.op != "placeholder"), None)
    notes = []
    for node, name in _foreign_inputs(gm).items():
        expr = meta_value(node).node.expr
        if not node.users or first_op is None:
            continue
        if not expr.free_symbols and expr.is_number:
            kind = {torch.SymInt: int, torch.SymFloat: float, torch.SymBool: bool}[type(meta_value(node))]
            node.replace_all_uses_with(kind(expr))  # type: ignore[arg-type]
            notes.append(f"number {name} read as the constant {kind(expr)} dynamo fixed it to")
            continue
        size = _size_of(placeholders, expr, first_op, gm)
        if size is not None:
            node.replace_all_uses_with(size[0])
            notes.append(f"number {name} read from {size[1]}, which dynamo found equal to it")
    return notes


def _size_of(placeholders: list[torch.fx.Node], expr: Any, first_op: torch.fx.Node, gm: torch.fx.GraphModule
             ) -> tuple[torch.fx.Node, str] | None:
    """A node giving the size that is exactly `expr` (a symbol): a size input that is that
    symbol, else `sym_size` of a tensor input with a dimension of that size."""
    if not getattr(expr, "is_Symbol", False):
        return None
    for node in placeholders:
        value = meta_value(node)
        if isinstance(value, torch.SymInt) and _is_size(node) and value.node.expr == expr:
            return node, source_name(node)
    for node in placeholders:
        value = meta_value(node)
        if isinstance(value, torch.Tensor):
            for dim, size in enumerate(value.shape):
                if isinstance(size, torch.SymInt) and size.node.expr == expr:
                    with gm.graph.inserting_before(first_op):
                        read = gm.graph.call_function(torch.ops.aten.sym_size.int, (node, dim))
                    read.meta["val"] = size
                    return read, f"{source_name(node)}.size({dim})"
    return None


def _gather(gm: torch.fx.GraphModule, marked: list[torch.fx.Node], output: torch.fx.Node) -> None:
    """Marked nodes that read only placeholders and earlier moved nodes go to the top, in order;
    of the rest, those only the output reads go to the end."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if not placeholders:
        return
    anchor, moved = placeholders[-1], set(placeholders)
    for node in marked:
        if all(a in moved for a in node.all_input_nodes):
            anchor.append(node)
            anchor = node
            moved.add(node)
    for node in marked:
        if node not in moved and set(node.users) == {output}:
            output.prepend(node)


def _is_size(node: torch.fx.Node) -> bool:
    """A size argument (`x.size()[i]`), which Torch-TensorRT reads from its tensor."""
    source = source_of(node)
    return isinstance(getattr(source, "idx", None), int) and hasattr(source, "base")


def _symbols(value: Any) -> set:
    if isinstance(value, SYMBOLIC):
        return set(value.node.expr.free_symbols)
    if isinstance(value, torch.Tensor):
        return {s for d in value.shape if isinstance(d, torch.SymInt) for s in d.node.expr.free_symbols}
    if isinstance(value, (tuple, list)):
        return set().union(*map(_symbols, value)) if value else set()
    return set()
