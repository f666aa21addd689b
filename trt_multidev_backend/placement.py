"""Placement: put the graph's tensors on the target device before anything propagates FakeTensors.

Works on a copy of the graph (the caller's graph and modules are never mutated) and produces:
- example inputs on the target for the delegate (real tensors moved, FakeTensors moved inside
  their own fake mode; a fake's data is never read);
- per-argument actions for the runtime wrapper: check an input's device, move an input the graph
  itself moves, or swap a piece of module state for a copy made once on the target;
- the outputs to move back to where eager returns them (device override on a CPU model).

What moves: state and inputs whose every use is a move to the target (``t.to(x.device)``), CPU
scalars (0-dim) feeding target-device ops, factory calls that mean "the current device", and,
under a ``device`` override, everything on the graph's own device. Deliberate host work (tensors
used by host ops, explicit ``.to("cpu")`` in a CUDA graph) stays on the host. A device the graph
computes (``getattr(x, "device")`` and ``torch.device(...)`` nodes, as torch.fx.symbolic_trace
records ``x.device``) resolves exactly as the same device written out would.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
import torch.fx
from torch._subclasses.fake_tensor import FakeTensor

from .device import DevicePlan
from .graphinfo import ArgInfo, Role, fetch_attr, meta_value
from .guard import cuda_usable

__all__ = ["ArgAction", "Placement", "place", "graph_copy", "is_move"]

log = logging.getLogger("trt_multidev.placement")

_aten = torch.ops.aten

# Ops that move a tensor between devices, by how their destination is spelled.
_MOVE_METHODS = {"to", "cuda", "cpu"}
_MOVE_FUNCTIONS = {torch.Tensor.to: "to", torch.Tensor.cuda: "cuda", torch.Tensor.cpu: "cpu"}
_ATEN_MOVES = {
    _aten._to_copy.default: "kwarg",
    _aten.to.device: "arg1",
    _aten.to.dtype_layout: "kwarg",
}
# Factories whose result lands on the default device when no `device` is given.
_FACTORIES = {
    torch.zeros, torch.ones, torch.empty, torch.full, torch.arange, torch.rand, torch.randn,
    torch.randint, torch.eye, torch.linspace, torch.logspace, torch.tensor, torch.scalar_tensor,
    torch.empty_strided, torch.as_tensor,
    _aten.zeros.default, _aten.ones.default, _aten.empty.memory_format, _aten.full.default,
    _aten.arange.default, _aten.arange.start, _aten.arange.start_step, _aten.scalar_tensor.default,
    _aten.empty_strided.default, _aten.rand.default, _aten.randn.default,
}


@dataclass(frozen=True)
class ArgAction:
    """What the runtime wrapper does with positional argument `index` on every call.

    kind: "check"  - a caller input expected on `device` (error or move per input_policy);
          "move"   - a caller input the graph itself moves to `device` (moved, as eager would);
          "state"  - module state swapped for a copy on `device`, made once and reused;
          "pinned" - a module scalar the graph was compiled with as the constant `value`: checked
                     to be unchanged (see rewrites.pin_state_scalars).
    """

    kind: str
    index: int
    device: torch.device
    name: str
    value: Any = None


@dataclass
class Placement:
    gm: torch.fx.GraphModule
    example_inputs: list[Any]
    actions: list[ArgAction] = field(default_factory=list)
    output_moves: list[tuple[int, torch.device]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    originals: dict[int, Any] = field(default_factory=dict)  # relocated state: index -> caller's tensor
    infos: list[ArgInfo] = field(default_factory=list)  # the placeholders, as nodes of `gm`

    def pin(self, index: int, name: str, value: Any, device: torch.device) -> None:
        """Argument `index` is now a constant in the graph: it is checked at every call to still
        hold `value`, and no longer moved or copied."""
        self.actions = [a for a in self.actions if a.index != index] + [ArgAction("pinned", index, device, name, value)]
        self.originals.pop(index, None)
        self.notes.append(f"{name}: read with .item(), pinned to {value!r} (checked at every call)")

    def passed_as_they_are(self, input_policy: str) -> set[int]:
        """The arguments every call hands the graph as the caller's own tensor, never a copy made
        for it (state copied to the target, inputs the graph moves or input_policy=move would)."""
        copied = {a.index for a in self.actions
                  if a.kind in ("move", "state", "pinned") or (a.kind == "check" and input_policy == "move")}
        return set(range(len(self.example_inputs))) - copied


# Known devices of tensor nodes that carry no metadata (graphs from torch.fx.symbolic_trace,
# hand-built graphs): placeholders from their example inputs, get_attr nodes from the attribute.
_Known = Mapping[torch.fx.Node, torch.device]
_UNKNOWN = object()


def _as_device(value: Any, known: _Known | None = None) -> torch.device | None:
    """The device a graph spells, or None when `value` is not one (or cannot be known here).

    Literals (``torch.device``, ``"cuda:1"``, an index) and devices computed inside the graph
    resolve alike: ``getattr(t, "device")`` nodes (``t.device`` traced by symbolic_trace) give the
    device of ``t``, and ``torch.device(...)`` nodes are evaluated from resolvable arguments.
    """
    if isinstance(value, torch.fx.Node):
        return _device_node_value(value, known)
    if isinstance(value, torch.device):
        return value
    if isinstance(value, str):
        try:
            return torch.device(value)
        except RuntimeError:
            return None
    if isinstance(value, int) and not isinstance(value, bool):
        return torch.device("cuda", value)
    return None


def _is_device_node(node: torch.fx.Node) -> bool:
    """True for nodes that compute a device: getattr(t, "device") and torch.device(...)."""
    if node.op != "call_function":
        return False
    if node.target is getattr:
        return len(node.args) == 2 and node.args[1] == "device"
    return node.target is torch.device


def _device_node_value(node: torch.fx.Node, known: _Known | None) -> torch.device | None:
    if not _is_device_node(node):
        return None
    if node.target is getattr:
        return _tensor_device(node.args[0], known)
    args = [_device_part(a, known) for a in node.args]
    kwargs = {k: _device_part(v, known) for k, v in node.kwargs.items()}
    if any(a is _UNKNOWN for a in [*args, *kwargs.values()]):
        return None
    if len(args) == 1 and not kwargs:
        return _as_device(args[0])  # an index means cuda:N here too, as in every other spelling
    try:
        return torch.device(*args, **kwargs)
    except (RuntimeError, TypeError, ValueError):
        return None


def _device_part(value: Any, known: _Known | None) -> Any:
    """An argument of torch.device(...): a literal, a device node, or getattr(device, "type"/"index")."""
    if not isinstance(value, torch.fx.Node):
        return value
    if (value.op == "call_function" and value.target is getattr and len(value.args) == 2
            and value.args[1] in ("type", "index")):
        device = _as_device(value.args[0], known)
        return _UNKNOWN if device is None else getattr(device, str(value.args[1]))
    device = _as_device(value, known)
    return _UNKNOWN if device is None else device


def _tensor_device(value: Any, known: _Known | None = None) -> torch.device | None:
    if isinstance(value, torch.fx.Node):
        node, value = value, meta_value(value)
        if not isinstance(value, torch.Tensor) and known is not None:
            return known.get(node)
    return value.device if isinstance(value, torch.Tensor) else None


def _move_spec(node: torch.fx.Node, known: _Known | None = None) -> tuple[str, Any] | None:
    """(style, raw destination) when `node` moves a tensor between devices, else None."""
    if node.op == "call_method" and node.target in _MOVE_METHODS:
        style = str(node.target)
        args = node.args[1:]
    elif node.op == "call_function" and node.target in _MOVE_FUNCTIONS:
        style = _MOVE_FUNCTIONS[node.target]
        args = node.args[1:]
    elif node.op == "call_function" and node.target in _ATEN_MOVES:
        if _ATEN_MOVES[node.target] == "kwarg":
            return ("kwarg", node.kwargs.get("device")) if node.kwargs.get("device") is not None else None
        return ("arg1", node.args[1] if len(node.args) > 1 else None)
    else:
        return None
    if style == "cpu":
        return ("cpu", "cpu")
    if style == "cuda":
        raw = node.kwargs.get("device", args[0] if args else None)
        return ("cuda", "cuda" if raw is None else (f"cuda:{raw}" if isinstance(raw, int) else raw))
    if "device" in node.kwargs:
        return ("to-kwarg", node.kwargs["device"])
    for arg in args:
        if isinstance(arg, torch.fx.Node) and _is_device_node(arg):
            return ("to-arg", arg)  # t.to(x.device): a device computed in the graph
        if isinstance(arg, torch.fx.Node):
            device = _tensor_device(arg, known)
            return ("to-tensor", device) if device is not None else None
        if _as_device(arg) is not None and not isinstance(arg, torch.dtype):
            return ("to-arg", arg)
    return None


def is_move(node: torch.fx.Node) -> bool:
    """True when `node` copies a tensor between devices (to, cuda, cpu, _to_copy...)."""
    return node.op in ("call_function", "call_method") and _move_spec(node) is not None


def _move_destination(node: torch.fx.Node, known: _Known | None = None) -> torch.device | None:
    spec = _move_spec(node, known)
    return None if spec is None else _as_device(spec[1], known)


class _Rewriter:
    """Decides which device spellings resolve to the target."""

    def __init__(self, plan: DevicePlan):
        assert plan.target is not None
        self.target = plan.target
        self.plan = plan

    def resolve(self, device: torch.device | None) -> torch.device | None:
        """The device to use instead of `device`, or None to keep it."""
        if device is None:
            device = torch.get_default_device()
        if device.type == "cuda" and device.index is None and self.target.type == "cuda":
            return self.target  # "the current CUDA device" is the target under the guard
        if self.plan.relocates(device):
            return self.target
        return None


def _same(a: torch.device, b: torch.device) -> bool:
    if a.type != b.type:
        return False
    return a.index == b.index or a.type == "cpu"


def graph_copy(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """A new GraphModule with its own graph (node meta copied shallowly), sharing gm's attributes."""
    graph = torch.fx.Graph(tracer_cls=getattr(gm.graph, "_tracer_cls", None))
    graph._codegen = copy.deepcopy(gm.graph._codegen)
    val_map: dict[torch.fx.Node, torch.fx.Node] = {}
    result = graph.graph_copy(gm.graph, val_map, return_output_node=True)
    assert result is not None
    out, old_output = result  # type: ignore[misc]
    new_output = graph.output(out, type_expr=getattr(old_output, "type", None))
    new_output.meta = copy.copy(old_output.meta)
    new = torch.fx.GraphModule(gm, graph, class_name=type(gm).__name__)
    new.meta = copy.copy(getattr(gm, "meta", {}))
    return new


def _fake_mode_of(values: Sequence[Any]) -> Any:
    for value in values:
        if isinstance(value, FakeTensor):
            return value.fake_mode
    from torch._guards import detect_fake_mode

    return detect_fake_mode()


def _move_example(value: torch.Tensor, device: torch.device, fake_mode: Any) -> torch.Tensor:
    """Move an example tensor without reading fake data; real tensors go through a fake mode
    when CUDA cannot run here (FakeTensor devices in CPU tests)."""
    if isinstance(value, FakeTensor):
        with value.fake_mode:
            return value.to(device)
    if device.type == "cpu" or cuda_usable():
        return value.to(device)
    if fake_mode is None:
        raise RuntimeError(f"cannot place a real tensor on {device}: CUDA is not available here")
    with fake_mode:
        return fake_mode.from_tensor(value).to(device)


def _moved_meta(node: torch.fx.Node, device: torch.device) -> None:
    for key in ("val", "example_value"):
        value = node.meta.get(key)
        if isinstance(value, FakeTensor):
            with value.fake_mode:
                node.meta[key] = value.to(device)


class _Placer:
    def __init__(self, gm: torch.fx.GraphModule, infos: Sequence[ArgInfo], plan: DevicePlan):
        self.source_gm = gm
        self.gm = graph_copy(gm)
        self.plan = plan
        self.target = plan.target
        self.rewriter = _Rewriter(plan)
        placeholders = [n for n in self.gm.graph.nodes if n.op == "placeholder"]
        self.infos = [
            ArgInfo(i.index, placeholders[i.index], i.role, i.name, i.example) for i in infos
        ]
        self.fake_mode = _fake_mode_of([i.example for i in infos])
        self.notes: list[str] = []
        # Where tensors without metadata are: `x.device` in a symbolic_trace graph resolves from here.
        self.known: dict[torch.fx.Node, torch.device] = {
            i.node: i.example.device for i in self.infos if isinstance(i.example, torch.Tensor)
        }
        for node in self.gm.graph.nodes:
            if node.op == "get_attr":
                value = fetch_attr(self.gm, str(node.target))
                if isinstance(value, torch.Tensor):
                    self.known[node] = value.device

    # --- device spellings inside the graph -------------------------------------------------
    def rewrite_devices(self) -> None:
        for node in list(self.gm.graph.nodes):
            if node.op not in ("call_function", "call_method"):
                continue
            spec = _move_spec(node, self.known)
            if spec is not None:
                self._rewrite_move(node, spec)
            elif "device" in node.kwargs or node.target in _FACTORIES:
                raw = node.kwargs.get("device")
                if raw is None and node.target not in _FACTORIES:
                    continue  # e.g. *_like(x, device=None): follows its input
                old = _as_device(raw, self.known) if raw is not None else None  # None: the default device
                if old is None and isinstance(raw, torch.fx.Node):
                    continue  # a device computed from something unknown here: left as it is
                new = self.rewriter.resolve(old)
                if new is not None and new != old:
                    node.kwargs = {**node.kwargs, "device": new}
                    self.notes.append(f"{node.name}: device {_spelled(raw, old)} -> {new}")
        _erase_unused_device_nodes(self.gm.graph)

    def _rewrite_move(self, node: torch.fx.Node, spec: tuple[str, Any]) -> None:
        style, raw = spec
        if style == "to-tensor":
            return  # follows another tensor, which is placed itself
        old = _as_device(raw, self.known)
        if old is None and isinstance(raw, torch.fx.Node):
            return  # a device computed from something unknown here: left as it is
        new = self.rewriter.resolve(old)
        if new is None or (old is not None and old == new):
            return
        if style in ("cuda", "cpu"):
            node.target = "to" if node.op == "call_method" else torch.Tensor.to
            node.args = (node.args[0], new)
            node.kwargs = {k: v for k, v in node.kwargs.items() if k not in ("device",)}
        elif style in ("to-kwarg", "kwarg"):
            node.kwargs = {**node.kwargs, "device": new}
        else:  # positional destination
            node.args = tuple(new if a is raw else a for a in node.args)
        self.notes.append(f"{node.name}: {style} {_spelled(raw, old)} -> {new}")

    # --- which wrong-device tensors follow the graph to the target ---------------------------
    def _destination(self, node: torch.fx.Node) -> torch.device | None:
        """Where a move sends its tensor in the placed graph (None: not a move, or unknown).
        Literal destinations are rewritten already; one that follows a tensor or a device
        computed in the graph resolves the same way."""
        device = _move_destination(node, self.known)
        return None if device is None else (self.rewriter.resolve(device) or device)

    def _should_relocate(self, node: torch.fx.Node, value: torch.Tensor) -> bool:
        device = value.device
        if _same(device, self.target):
            return False
        if self.plan.relocates(device):
            return True
        users = list(node.users)
        if not users:
            return False
        if all(self._destination(u) == self.target for u in users):
            return True  # every use is a move to the target
        if device.type == "cpu" and value.dim() == 0 and self.target.type != "cpu":
            # A CPU scalar mixes with device tensors in eager; engines want it on the device.
            for u in users:
                if _move_spec(u, self.known) is not None:
                    if self._destination(u) != self.target:
                        return False
                    continue
                out = _tensor_device(u)
                if out is None or not _same(out, self.target):
                    return False
            return True
        return False

    def relocate_constant_islands(self) -> None:
        """Host values built only from factories (e.g. a mask from ``torch.ones(n, n)``) and used
        only after a move to the target are built on the target instead: same values, no host
        segment, no per-call copy, and Torch-TensorRT can fold them."""
        if self.target.type == "cpu" or self.plan.override:
            return  # an override already rewrote the graph's own device
        const: dict[torch.fx.Node, bool] = {}
        for node in self.gm.graph.nodes:
            device = _tensor_device(node)
            if node.op not in ("call_function", "call_method") or device is None or _same(device, self.target):
                continue
            if _move_spec(node) is not None:
                continue
            inputs = [a for a in node.all_input_nodes if _tensor_device(a) is not None]
            const[node] = node.target in _FACTORIES or (bool(inputs) and all(const.get(a, False) for a in inputs))
        islands = _components([n for n, c in const.items() if c])
        for island in islands:
            exits_ok = all(
                u in island or self._destination(u) == self.target
                for n in island for u in n.users
            )
            if not exits_ok:
                continue
            for node in island:
                if node.target in _FACTORIES:
                    node.kwargs = {**node.kwargs, "device": self.target}
                _moved_meta(node, self.target)
            names = ", ".join(n.name for n in island)
            self.notes.append(f"constant host values {names}: built on {self.target} instead")

    def place_args(self) -> tuple[list[Any], list[ArgAction]]:
        self.originals: dict[int, Any] = {}
        examples: list[Any] = []
        actions: list[ArgAction] = []
        for info in self.infos:
            value = info.example
            if not isinstance(value, torch.Tensor):
                examples.append(value)
                continue
            relocate = self._should_relocate(info.node, value)
            if relocate:
                examples.append(_move_example(value, self.target, self.fake_mode))
                _moved_meta(info.node, self.target)
                kind = "state" if info.role is Role.STATE else "move"
                if kind == "state":
                    self.originals[info.index] = value
                actions.append(ArgAction(kind, info.index, self.target, info.name))
                self.notes.append(f"{info.name}: {value.device} -> {self.target} ({kind})")
            else:
                examples.append(value)
                if info.role is Role.INPUT:
                    actions.append(ArgAction("check", info.index, value.device, info.name))
        return examples, actions

    def place_attrs(self) -> None:
        counter = 0
        for node in list(self.gm.graph.nodes):
            if node.op == "get_attr":
                value = fetch_attr(self.gm, str(node.target))
                if not isinstance(value, torch.Tensor) or not self._should_relocate(node, value):
                    continue
                try:
                    moved = _move_example(value, self.target, self.fake_mode)
                except RuntimeError as exc:
                    self.notes.append(f"{node.target}: left on {value.device} ({exc})")
                    continue
                name = f"_trt_multidev_const{counter}"
                counter += 1
                self.gm.register_buffer(name, moved, persistent=False)
                self.notes.append(f"{node.target}: {value.device} -> {self.target} (constant, once)")
                node.target = name
                _moved_meta(node, self.target)
            elif node.op == "call_module" and self.plan.override:
                module = self.gm.get_submodule(str(node.target))
                tensors = list(module.parameters()) + list(module.buffers())
                if not tensors or not any(self.plan.relocates(t.device) for t in tensors):
                    continue
                if isinstance(tensors[0], FakeTensor) or not (self.target.type == "cpu" or cuda_usable()):
                    self.notes.append(f"{node.target}: submodule left on {tensors[0].device}")
                    continue
                name = f"_trt_multidev_mod{counter}"
                counter += 1
                self.gm.add_submodule(name, copy.deepcopy(module).to(self.target))
                self.notes.append(f"{node.target}: submodule copied to {self.target}")
                node.target = name

    def output_moves(self) -> list[tuple[int, torch.device]]:
        if not self.plan.override:
            return []
        output = next(n for n in self.gm.graph.nodes if n.op == "output")
        results = output.args[0]
        if not isinstance(results, (tuple, list)):
            return []
        moves = []
        for i, node in enumerate(results):
            device = _tensor_device(node) if isinstance(node, torch.fx.Node) else None
            if device is not None and not _same(device, self.target):
                moves.append((i, device))
        return moves


def _spelled(raw: Any, device: torch.device | None) -> str:
    """How a note shows a destination: the literal, or a computed device with its value."""
    if raw is None:
        return "default"
    return f"{raw.name} ({device})" if isinstance(raw, torch.fx.Node) else str(raw)


def _erase_unused_device_nodes(graph: torch.fx.Graph) -> None:
    """Drop device computations that rewriting left without users (`x.device` replaced by the
    target): pure, and a leftover read of a tensor's device would keep that tensor where it is."""
    for node in reversed(list(graph.nodes)):
        if node.users or node.op != "call_function" or node.target not in (getattr, torch.device):
            continue
        if node.target is torch.device or (len(node.args) == 2 and node.args[1] in ("device", "type", "index")):
            graph.erase_node(node)


def _components(nodes: list[torch.fx.Node]) -> list[list[torch.fx.Node]]:
    """Connected groups of `nodes` (edges between them in either direction), in graph order."""
    members = set(nodes)
    order = {n: i for i, n in enumerate(nodes)}
    seen: set[torch.fx.Node] = set()
    groups = []
    for start in nodes:
        if start in seen:
            continue
        group, stack = [], [start]
        seen.add(start)
        while stack:
            node = stack.pop()
            group.append(node)
            for other in list(node.users) + node.all_input_nodes:
                if other in members and other not in seen:
                    seen.add(other)
                    stack.append(other)
        groups.append(sorted(group, key=order.__getitem__))
    return groups


def place(gm: torch.fx.GraphModule, infos: Sequence[ArgInfo], plan: DevicePlan) -> Placement:
    """Place a copy of `gm` on ``plan.target``; see the module docstring for what moves."""
    placer = _Placer(gm, infos, plan)
    # Output devices are read from the original metadata, before anything is rewritten.
    output_moves = placer.output_moves()
    placer.rewrite_devices()
    placer.relocate_constant_islands()
    examples, actions = placer.place_args()
    placer.place_attrs()
    placer.gm.graph.lint()
    placer.gm.recompile()
    return Placement(placer.gm, examples, actions, output_moves, placer.notes, placer.originals, placer.infos)

