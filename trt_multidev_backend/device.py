"""Device resolution and guards.

The target is decided from, in order: the ``device`` setting; the one CUDA device holding the
graph's module state; the CUDA device of the example inputs; the graph's own device (CPU graphs
stay CPU); the current (default) device for graphs with no tensors at all. The current CUDA device
is never used when the graph says otherwise. Guards are scoped (``torch.cuda.device``-style
exchange and restore), never a global ``set_device``.
"""

from __future__ import annotations

import contextlib
import enum
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.fx

from .settings import Settings

__all__ = [
    "Role",
    "ArgInfo",
    "DevicePlan",
    "classify_args",
    "resolve_device",
    "device_guard",
    "cuda_usable",
    "check_visible",
    "meta_value",
    "fetch_attr",
    "current_cuda_device",
    "guard_index",
    "get_device",
    "exchange_device",
]


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


@dataclass(frozen=True)
class DevicePlan:
    """Where a graph runs, why, and where its tensors naturally live."""

    target: torch.device | None
    rule: str
    natural: torch.device | None      # the device the graph says, before any `device` setting
    state_devices: tuple[str, ...]
    input_devices: tuple[str, ...]
    problem: str | None = None        # set when no single target exists (state on several GPUs)

    @property
    def override(self) -> bool:
        """True when the `device` setting moves the graph away from its own device."""
        return (self.target is not None and self.natural is not None and self.natural != self.target)

    def describe(self) -> str:
        if self.problem:
            return self.problem
        text = f"target {self.target} (rule: {self.rule})"
        if self.override:
            text += f"; graph relocated from {self.natural}"
        return text


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


def _attr_tensors(gm: torch.fx.GraphModule) -> Iterator[torch.Tensor]:
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


def _default_device() -> torch.device:
    device = torch.get_default_device()
    if device.type == "cuda" and device.index is None:
        device, _ = current_cuda_device()
    return device


def current_cuda_device() -> tuple[torch.device, str]:
    """What "the current CUDA device" means for this process, and why.

    A process launched by torchrun (or any launcher that sets LOCAL_RANK) means its own GPU,
    cuda:LOCAL_RANK, when that many GPUs are visible; with one GPU per rank (CUDA_VISIBLE_DEVICES
    narrowed by the launcher) that is the current device.
    """
    import os

    usable = cuda_usable()
    count = torch.cuda.device_count() if usable else None
    local_rank = os.environ.get("LOCAL_RANK", "")
    if local_rank.isdigit() and (count is None or int(local_rank) < count):
        return torch.device("cuda", int(local_rank)), f"LOCAL_RANK={local_rank}"
    index = torch.cuda.current_device() if usable else 0
    return torch.device("cuda", index), "current device"


def cuda_usable() -> bool:
    """True when real CUDA work can run here (a CUDA build that sees at least one GPU)."""
    return torch.cuda.is_available()


def _setting_device(settings: Settings) -> tuple[torch.device, str] | None:
    if settings.device is None:
        return None
    source = settings.sources.get("device", "setting")
    if settings.device == "cuda":
        device, why = current_cuda_device()
        return device, f"setting device=cuda ({source}) -> {device} ({why})"
    return torch.device(settings.device), f"setting device={settings.device} ({source})"


def _sorted_devices(devices: set[torch.device]) -> list[torch.device]:
    return sorted(devices, key=lambda d: (d.type, -1 if d.index is None else d.index))


def resolve_device(gm: torch.fx.GraphModule, infos: Sequence[ArgInfo], settings: Settings) -> DevicePlan:
    """Apply the resolution rules. Pure: no CUDA call unless the setting says 'cuda'."""
    state: set[torch.device] = set()
    inputs: set[torch.device] = set()
    for info in infos:
        if info.device is not None and info.device.type != "meta":
            (state if info.role is Role.STATE else inputs).add(info.device)
    for tensor in _attr_tensors(gm):
        if tensor.device.type != "meta":
            state.add(tensor.device)
    state_cuda = _sorted_devices({d for d in state if d.type == "cuda"})
    input_cuda = _sorted_devices({d for d in inputs if d.type == "cuda"})
    state_names = tuple(str(d) for d in _sorted_devices(state))
    input_names = tuple(str(d) for d in _sorted_devices(inputs))

    natural: torch.device | None
    rule: str
    problem = None
    if len(state_cuda) == 1:
        natural, rule = state_cuda[0], "module state"
    elif len(state_cuda) > 1:
        natural, rule = None, "module state"
        problem = "module state spans " + ", ".join(str(d) for d in state_cuda)
    elif len(input_cuda) == 1:
        natural, rule = input_cuda[0], "example inputs"
    elif len(input_cuda) > 1:
        natural, rule = None, "example inputs"
        problem = "example inputs span " + ", ".join(str(d) for d in input_cuda)
    elif state or inputs:
        devices = _sorted_devices(state | inputs)
        natural, rule = devices[0], f"graph tensors ({devices[0]})"
    else:
        natural = _default_device()
        why = current_cuda_device()[1] if natural.type == "cuda" else "default device"
        rule = f"{why} (the graph holds no tensors)"

    explicit = _setting_device(settings)
    if explicit is not None:
        device, rule = explicit
        return DevicePlan(device, rule, natural, state_names, input_names, None)
    return DevicePlan(natural if problem is None else None, rule, natural, state_names, input_names, problem)


def check_visible(device: torch.device, origin: str) -> None:
    """Raise a clear ValueError when a CUDA index is not among the visible GPUs."""
    if device.type != "cuda" or not cuda_usable():
        return
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        import os

        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise ValueError(
            f"trt_multidev: device {device} ({origin}) is out of range: {count} CUDA device(s) visible "
            f"(cuda:0..cuda:{count - 1})"
            + (f"; CUDA_VISIBLE_DEVICES={visible!r} renumbers them from 0" if visible is not None else "")
        )


# The raw calls behind torch.cuda.device: its Python context manager costs a few µs, which the
# per-call path of a compiled graph avoids. CPU-only builds lack them and never enter a guard.
get_device: Callable[[], int] = getattr(torch._C, "_cuda_getDevice", lambda: -1)
exchange_device: Callable[[int], int] = getattr(torch._C, "_cuda_exchangeDevice", lambda index: -1)


def guard_index(device: torch.device | None) -> int:
    """The CUDA index a guard for `device` makes current, or -1 when there is nothing to guard
    (CPU targets, FakeTensor devices where CUDA cannot run)."""
    if device is None or device.type != "cuda" or device.index is None or not cuda_usable():
        return -1
    return device.index


@contextlib.contextmanager
def device_guard(device: torch.device | None) -> Iterator[None]:
    """Make `device` current for the block and restore the caller's device after it."""
    index = guard_index(device)
    if index < 0 or get_device() == index:
        yield
        return
    previous = exchange_device(index)
    try:
        yield
    finally:
        exchange_device(previous)
