"""What a captured graph holds: its placeholders with their example values and roles (caller
input or module state), the tensors it reaches through attributes, and the FakeTensor metadata
recorded on its nodes. Device resolution, placement and cache keys all read graphs through here.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
import torch.fx

__all__ = ["Role", "ArgInfo", "classify_args", "meta_value", "fetch_attr", "attr_tensors", "op_count",
           "symbolic_sizes"]


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


def meta_value(node: torch.fx.Node) -> Any:
    """The FakeTensor (or SymInt) recorded for a node: 'val' (aot/export) or 'example_value' (dynamo)."""
    meta = node.meta
    return meta["val"] if "val" in meta else meta.get("example_value")


def _source_of(node: torch.fx.Node) -> Any:
    grapharg = node.meta.get("grapharg")
    return getattr(grapharg, "source", None)


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
        source = _source_of(node)
        role = Role.INPUT
        name = str(node.target)
        if source is not None:
            try:
                name = _pretty_source(source.name)
            except Exception:  # a source kind without a printable name
                pass
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
        value = meta_value(info.node)
        if value is None:
            value = info.example
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
