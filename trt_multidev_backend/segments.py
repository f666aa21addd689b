"""Host segments: keep deliberate host work out of what the delegate compiles.

Torch-TensorRT's partitioner ignores device placement: an explicit ``.to("cpu")`` branch is pulled
into an engine that then receives CPU tensors and fails ("Expected inputs[i].is_cuda()"). When a
placed graph computes anything off the target device, it is split, in graph order, into runs of
target-device nodes and runs of host nodes; only the target runs go to the delegate, and host
runs stay as plain PyTorch. Graphs with no host work are not split.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.fx
from torch._subclasses.fake_tensor import FakeTensor
from torch.fx.passes.split_module import split_module

from .device import DevicePlan
from .graphinfo import meta_value
from .placement import is_move

__all__ = ["Segmented", "split_host_work"]

log = logging.getLogger("trt_multidev.segments")


@dataclass
class Segmented:
    gm: torch.fx.GraphModule                        # calls submod_0, submod_1, ... in order
    target_segments: list[tuple[str, list[Any]]]    # (submodule name, example inputs) to compile
    host_segments: list[str]


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
    if plan.override and plan.natural is not None and device.type == plan.natural.type and (
        device.index == plan.natural.index or device.type == "cpu"
    ):
        return plan.target  # relocated by the device override; the metadata predates it
    return device


def split_host_work(gm: torch.fx.GraphModule, examples: Sequence[Any], plan: DevicePlan) -> Segmented | None:
    """Split `gm` into target and host runs, or return None when there is no host work."""
    target = plan.target
    if target is None or target.type != "cuda":
        return None
    classes: dict[torch.fx.Node, bool] = {}
    on_target = True
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "output"):
            continue
        device = _node_device(node, plan)
        if device is not None:
            on_target = device == target
            if on_target and is_move(node):
                # A copy from the host belongs to the host side, so device segments only ever
                # receive device tensors (an engine refuses host inputs).
                sources = [_node_device(a, plan) for a in node.all_input_nodes]
                on_target = all(d is None or d == target for d in sources)
        classes[node] = on_target
    if all(classes.values()) or not any(classes.values()):
        return None

    partition: dict[torch.fx.Node, int] = {}
    current, previous = 0, None
    for node, cls in classes.items():
        if previous is not None and cls != previous:
            current += 1
        partition[node] = current
        previous = cls
    split = split_module(gm, gm, lambda n: partition[n], keep_original_order=True)

    values: dict[str, Any] = {}
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for node, example in zip(placeholders, examples):
        values[node.name] = example
    fake_mode = next((x.fake_mode for x in examples if isinstance(x, FakeTensor)), None)
    for node in gm.graph.nodes:
        if node.name not in values:
            values[node.name] = _example_like(meta_value(node), fake_mode)

    first_cls = {partition[n]: classes[n] for n in classes}
    targets, hosts = [], []
    for name, module in split.named_children():
        if not name.startswith("submod_"):
            continue
        index = int(name.split("_", 1)[1])
        if first_cls.get(index, True):
            inputs = [values.get(p.name) for p in module.graph.nodes if p.op == "placeholder"]
            targets.append((name, inputs))
        else:
            hosts.append(name)
    return Segmented(split, targets, hosts)


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
    return torch.zeros(sizes, dtype=value.dtype, device=value.device).as_strided(sizes, strides)


def install(segmented: Segmented, name: str, compiled: Callable[..., Any]) -> None:
    """Put a compiled target segment where its submodule was."""
    module = compiled if isinstance(compiled, torch.nn.Module) else _Callable(compiled)
    setattr(segmented.gm, name, module)
