"""What a captured graph holds: its placeholders with their example values and roles (caller
input or module state), the tensors it reaches through attributes, and the FakeTensor metadata
recorded on its nodes. Device resolution, placement and cache keys all read graphs through here.
"""

from __future__ import annotations

import enum
import operator
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
import torch.fx

__all__ = ["IN_PYTORCH", "SYMBOLIC", "NUMBERS", "is_number", "from_sizes", "size_bounds", "source_of", "source_name", "Role", "ArgInfo", "classify_args", "meta_value", "storage_of", "fetch_attr", "attr_tensors", "op_count",
           "symbolic_sizes", "changed_in_place", "writes_in_place", "is_attention", "attention_mask",
           "set_attention_mask", "target_name", "out_of_place_form", "out_of_place_value", "mutated_args", "WRITTEN_BACK"]

_INPLACE_OPERATORS = {operator.setitem, operator.iadd, operator.isub, operator.imul, operator.itruediv,
                      operator.ifloordiv, operator.imod, operator.ipow, operator.iand, operator.ior,
                      operator.ixor, operator.ilshift, operator.irshift, operator.imatmul}
# The operator module's out-of-place functions whose names end in "_" like in-place torch ops do.
_OPERATORS = {operator.and_, operator.or_, operator.not_, operator.is_}


class Role(enum.Enum):
    INPUT = "input"   # passed by the caller on every call
    STATE = "state"   # module state (parameters, buffers, tensor attributes) or globals


@dataclass(frozen=True)
class ArgInfo:
    """One placeholder of the graph with the example value dynamo (or a caller) gave for it."""

    index: int
    node: torch.fx.Node
    role: Role
    name: str
    example: Any

    @property
    def device(self) -> torch.device | None:
        return self.example.device if isinstance(self.example, torch.Tensor) else None

    @property
    def value(self) -> Any:
        """What tracing recorded for the placeholder (symbolic sizes included), else the example."""
        value = meta_value(self.node)
        return self.example if value is None else value


def meta_value(node: torch.fx.Node) -> Any:
    """The FakeTensor (or SymInt) recorded for a node: 'val' (aot/export) or 'example_value' (dynamo)."""
    meta = node.meta
    return meta["val"] if "val" in meta else meta.get("example_value")


def source_of(node: torch.fx.Node) -> Any:
    """Where dynamo took a placeholder from (``meta['grapharg'].source``), or None."""
    grapharg = node.meta.get("grapharg")
    return getattr(grapharg, "source", None)


def source_name(node: torch.fx.Node) -> str:
    """A placeholder's name as the user wrote it (``self.fc.weight``, ``x``), or its own name."""
    source = source_of(node)
    if source is not None:
        try:
            return _pretty_source(source.name)
        except Exception:  # noqa: BLE001 - a source kind without a printable name
            pass
    return str(node.target)


def _pretty_source(name: str) -> str:
    """L['self']._modules['fc']._parameters['weight'] -> self.fc.weight; L['x'] -> x."""
    import re

    text = re.sub(r"^[LG]\['([^']+)'\]", r"\1", name)
    text = re.sub(r"\._(?:modules|parameters|buffers)\['([^']+)'\]", r".\1", text)
    return text


def classify_args(gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> list[ArgInfo]:
    """Pair placeholders with example inputs and tell caller inputs from module state.

    Dynamo records where each placeholder came from (``meta['grapharg'].source``): locals are
    inputs, attributes of modules and globals are state. Graphs without that record (aot tools,
    hand-built graphs) count ``nn.Parameter`` examples as state and everything else as input.
    """
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    infos = []
    for index, node in enumerate(placeholders):
        example = example_inputs[index] if index < len(example_inputs) else meta_value(node)
        source = source_of(node)
        role = Role.INPUT
        name = source_name(node)
        if source is not None:
            guard_source = getattr(source, "guard_source", None)
            kind = getattr(guard_source() if callable(guard_source) else guard_source, "name", "")
            if "NN_MODULE" in kind or kind.startswith("GLOBAL") or kind == "CONSTANT":
                role = Role.STATE
        elif isinstance(example, torch.nn.Parameter):
            role = Role.STATE
        infos.append(ArgInfo(index, node, role, name, example))
    return infos


def attr_tensors(gm: torch.fx.GraphModule) -> Iterator[torch.Tensor]:
    yield from gm.parameters()
    yield from gm.buffers()
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            value = fetch_attr(gm, str(node.target))
            if isinstance(value, torch.Tensor):
                yield value


def fetch_attr(gm: torch.nn.Module, target: str) -> Any:
    """The object a get_attr target ("sub.weight") names, or None."""
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def target_name(node: torch.fx.Node) -> str:
    """The name of what a node calls: a method's or module's name, a function's `__name__`."""
    return node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))


def op_count(gm: torch.fx.GraphModule) -> int:
    """The graph's operations (calls of functions, methods and modules), for names and logs."""
    return sum(1 for n in gm.graph.nodes if n.op in ("call_function", "call_method", "call_module"))


def symbolic_sizes(infos: Sequence[ArgInfo]) -> list[str]:
    """The caller inputs whose sizes are symbolic (dynamic=True, automatic dynamic shapes,
    mark_dynamic), with the range each may take: "x: dim 0 in [2, inf]". Sizes pinned to one
    value are left out; size arguments (SymInt placeholders) only when no tensor names them."""
    dims, sizes = [], []
    for info in infos:
        if info.role is not Role.INPUT:
            continue
        value = info.value
        if isinstance(value, torch.SymInt):
            text = _range(value)
            if text is not None:
                sizes.append(f"{info.name} {text}")
        elif isinstance(value, torch.Tensor):
            found = [(i, _range(s)) for i, s in enumerate(value.shape) if isinstance(s, torch.SymInt)]
            found = [f"dim {i} {text}" for i, text in found if text is not None]
            if found:
                dims.append(f"{info.name}: {', '.join(found)}")
    return dims or sizes


IN_PYTORCH = "trt_multidev_in_pytorch"  # node.meta key: why this node must run in PyTorch (segments.py)
WRITTEN_BACK = "trt_multidev_written_back"  # node.meta key: an input's update done again after the engines (updates.py)


def size_bounds(size: Any) -> tuple[int | None, int | None]:
    """The least and the greatest value a size can take (the guards dynamo put on it): the int
    itself twice; None for an end that is unbounded or unknown."""
    if type(size) is int:
        return size, size
    try:
        bounds = size.node.shape_env.bound_sympy(size.node.expr)
    except Exception:  # noqa: BLE001 - no shape environment
        return None, None

    def end(value: Any) -> int | None:
        return int(value) if type(value) is int or getattr(value, "is_Integer", False) else None  # not oo

    return end(bounds.lower), end(bounds.upper)


def _range(size: torch.SymInt) -> str | None:
    """"in [low, high]" for a symbolic size ("inf" when unbounded), None when pinned to one value."""
    node = size.node
    try:
        bounds = node.shape_env.bound_sympy(node.expr)
    except Exception:
        return "(symbolic)"
    low, high = bounds.lower, bounds.upper
    if low == high:
        return None
    return f"in [{low}, {high if str(high) not in ('oo', 'int_oo') else 'inf'}]"


def mutated_args(node: torch.fx.Node) -> list[Any]:
    """The arguments `node` writes to in place, as far as the graph tells."""
    target = node.target
    written: list[Any] = []
    if node.op == "call_method":
        if isinstance(target, str) and (target.endswith("_") and not target.startswith("_")
                                        or target == "__setitem__"):
            written.append(node.args[0])
    elif node.op == "call_function":
        schema = getattr(target, "_schema", None)
        if schema is not None:  # an aten op: its schema marks what it writes
            for i, arg in enumerate(schema.arguments):
                if arg.alias_info is not None and arg.alias_info.is_write:
                    written.append(node.args[i] if i < len(node.args) else node.kwargs.get(arg.name))
        elif target in _INPLACE_OPERATORS:
            written.append(node.args[0])
        elif target not in _OPERATORS:  # operator.and_ is `a & b`; its in-place form is operator.iand
            name = getattr(target, "__name__", "")
            if name.endswith("_") and not name.startswith("_") and node.args:
                written.append(node.args[0])  # torch.relu_, torch.Tensor.add_, ...
    if "out" in node.kwargs:
        written.append(node.kwargs["out"])
    return [a for a in written if isinstance(a, torch.fx.Node)]


def writes_in_place(gm: torch.fx.GraphModule, *, written_back: bool = True) -> bool:
    """Whether some op of the graph writes a tensor in place. Such a graph is not cut into pieces
    compiled apart: a delegate that functionalizes a piece would keep the write inside it.
    `written_back=False`: the inputs' updates updates.py put at the end of the graph (read by
    nothing but each other and the output) do not count."""
    return any((mutated_args(n) or n.kwargs.get("inplace") is True) and (written_back or not n.meta.get(WRITTEN_BACK))
               for n in gm.graph.nodes)


# in-place operator -> its out-of-place form (call_function targets)
_OUT_OF_PLACE = {operator.iadd: operator.add, operator.isub: operator.sub, operator.imul: operator.mul,
                 operator.itruediv: operator.truediv, operator.ifloordiv: operator.floordiv,
                 operator.imod: operator.mod, operator.ipow: operator.pow, operator.iand: operator.and_,
                 operator.ior: operator.or_, operator.ixor: operator.xor}


def out_of_place_form(node: torch.fx.Node) -> Any:
    """The out-of-place target of an in-place update (``x.add_(y)`` -> ``"add"``, ``x += y`` ->
    ``operator.add``), for a node of the same op kind; None for anything else (``copy_`` and
    ``__setitem__`` have none)."""
    if node.op == "call_function" and node.target in _OUT_OF_PLACE:
        return _OUT_OF_PLACE[node.target]
    if (node.op == "call_method" and isinstance(node.target, str) and node.target.endswith("_")
            and not node.target.startswith("_") and hasattr(torch.Tensor, node.target[:-1])):
        return node.target[:-1]
    return None


def out_of_place_value(node: torch.fx.Node, replacement: Any) -> torch.Tensor | None:
    """The FakeTensor `replacement` gives for `node`'s arguments, where it has the in-place
    result's dtype and shape (in place keeps the tensor's own dtype; out of place may promote or
    broadcast); None where it differs or cannot be told."""
    result = meta_value(node)
    mode = getattr(result, "fake_mode", None)
    if not isinstance(result, torch.Tensor) or mode is None:
        return None
    args = torch.fx.node.map_arg(node.args, meta_value)
    kwargs = torch.fx.node.map_arg(node.kwargs, meta_value)
    try:
        with mode:
            out = (replacement(*args, **kwargs) if callable(replacement)
                   else getattr(args[0], replacement)(*args[1:], **kwargs))
    except Exception:  # noqa: BLE001 - not something to rewrite
        return None
    if not isinstance(out, torch.Tensor) or out.dtype != result.dtype or tuple(map(str, out.shape)) != tuple(
            map(str, result.shape)):
        return None
    return out


_ATTENTION = {torch.nn.functional.scaled_dot_product_attention, torch.ops.aten.scaled_dot_product_attention.default}


def is_attention(node: torch.fx.Node) -> bool:
    """A scaled_dot_product_attention call (query, key, value, attn_mask, dropout_p, is_causal, ...)."""
    return node.op == "call_function" and node.target in _ATTENTION


def attention_mask(node: torch.fx.Node) -> Any:
    """The mask an attention call is given, by keyword or by position; None if none."""
    return node.kwargs["attn_mask"] if "attn_mask" in node.kwargs else (node.args[3] if len(node.args) > 3 else None)


def set_attention_mask(node: torch.fx.Node, mask: Any) -> None:
    """Give an attention call another mask where it took its mask (None: no mask)."""
    if "attn_mask" in node.kwargs or len(node.args) <= 3:
        node.update_kwarg("attn_mask", mask)
    else:
        node.update_arg(3, mask)


def storage_of(node: torch.fx.Node) -> Any:
    """The memory a node's value lives in, as dynamo's metadata tells (views share it); None when unknown."""
    from torch.multiprocessing.reductions import StorageWeakRef

    value = meta_value(node)
    if not isinstance(value, torch.Tensor):
        return None
    try:
        return StorageWeakRef(value.untyped_storage())
    except Exception:  # a tensor subclass without storage
        return None


def changed_in_place(gm: torch.fx.GraphModule, infos: Sequence[ArgInfo],
                     roles: Sequence[Role] = (Role.INPUT, Role.STATE)) -> list[str]:
    """Names of the placeholders of these roles that the graph writes to in place, directly or
    through a view: FakeTensor views share their base's storage, so dynamo's metadata tells."""
    inputs = {info.node: info.name for info in infos if info.role in roles}
    storages = {}
    for node, name in inputs.items():
        storage = storage_of(node)
        if storage is not None:
            storages[storage] = name
    found: list[str] = []
    for node in gm.graph.nodes:
        for arg in mutated_args(node):
            name = inputs.get(arg)
            if name is None:
                storage = storage_of(arg)
                name = storages.get(storage) if storage is not None else None
            if name is not None and name not in found:
                found.append(name)
    return found


_SIZE_METHODS = {"size", "numel", "dim", "stride", "storage_offset"}
_SIZE_OPS = {torch.ops.aten.sym_size.int, torch.ops.aten.sym_numel.default, torch.ops.aten.sym_stride.int,
             torch.ops.aten.sym_storage_offset.default, torch.ops.aten.sym_size.default}


SYMBOLIC = (torch.SymInt, torch.SymFloat, torch.SymBool)
NUMBERS = (*SYMBOLIC, int, float, bool)  # the values of number nodes and arguments


def is_number(node: Any) -> bool:
    """A node whose value is a number (or a torch.Size), not a tensor."""
    return isinstance(node, torch.fx.Node) and isinstance(meta_value(node), (*NUMBERS, torch.Size))


def from_sizes(node: torch.fx.Node) -> bool:
    """A number computed from numbers and from tensors' sizes only (no tensor's data), and not
    marked IN_PYTORCH: the same value wherever it is computed again."""
    if node.op not in ("call_function", "call_method") or not is_number(node) or node.meta.get(IN_PYTORCH):
        return False
    sizes = node.target in _SIZE_OPS or (node.op == "call_method" and node.target in _SIZE_METHODS)
    return all(is_number(a) or (sizes and isinstance(meta_value(a), torch.Tensor)) for a in node.all_input_nodes)
