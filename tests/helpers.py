"""Helpers shared by the CPU tests. Two fakes only, as the project allows: FakeTensor devices
(cuda:N without a GPU) and a test delegate standing in for Torch-TensorRT."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
import torch.nn as nn
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

from trt_multidev_backend.cache import COUNTERS
from trt_multidev_backend.placement import graph_copy


def counters(**nonzero: int) -> dict[str, int]:
    """One device's stats() entry: the given counters, every other one zero."""
    unknown = set(nonzero) - set(COUNTERS)
    assert not unknown, unknown
    return {name: nonzero.get(name, 0) for name in COUNTERS}


def on_fake_device(module: nn.Module, device: str, mode: FakeTensorMode, dtype=None) -> nn.Module:
    """Put a module's parameters and buffers on a fake device (cuda:N exists without a GPU)."""
    module.requires_grad_(False)
    for sub in module.modules():
        for name, param in list(sub.named_parameters(recurse=False)):
            moved = mode.from_tensor(param.detach()).to(device=device, dtype=dtype or param.dtype)
            setattr(sub, name, nn.Parameter(moved, requires_grad=False))
        for name, buf in list(sub.named_buffers(recurse=False)):
            sub.register_buffer(name, mode.from_tensor(buf).to(device))
    return module


def fake(mode: FakeTensorMode, *shape: int, device: str, dtype=torch.float32) -> FakeTensor:
    with mode:
        return torch.empty(*shape, device=device, dtype=dtype)


@dataclass
class Call:
    device: torch.device
    input_devices: list
    code: str
    settings: Any
    state_devices: dict = field(default_factory=dict)  # the graph's own tensors: name -> device


def graph_tensor_devices(gm: torch.fx.GraphModule) -> dict[str, torch.device]:
    """Where the tensors a graph holds itself are: parameters, buffers, tensor attributes."""
    found = {name: t.device for name, t in [*gm.named_parameters(), *gm.named_buffers()]}
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            value = gm
            for part in str(node.target).split("."):
                value = getattr(value, part)
            if isinstance(value, torch.Tensor):
                found[str(node.target)] = value.device
    return found


class EngineLikeDelegate:
    """Stands in for Torch-TensorRT on the CPU.

    Like a TensorRT engine it refuses tensor inputs that are not on the target device (unless
    `allow_host`), it propagates the example inputs through the graph (FakeTensors raise the real
    device-mismatch error when placement is wrong), and it returns the graph to run.
    """

    def __init__(self, allow_host: bool = False, fail: BaseException | None = None):
        self.allow_host = allow_host
        self.fail = fail
        self.calls: list[Call] = []

    def __call__(self, gm, example_inputs, *, device, settings):
        devices = [x.device if isinstance(x, torch.Tensor) else None for x in example_inputs]
        self.calls.append(Call(device, devices, gm.code, settings, graph_tensor_devices(gm)))
        if self.fail is not None:
            raise self.fail
        if not self.allow_host:
            for i, d in enumerate(devices):
                if d is not None and d != device:
                    raise RuntimeError(f"Expected inputs[{i}] on {device} but got {d}")
        fakes = [x for x in example_inputs if isinstance(x, FakeTensor)]
        mode = fakes[0].fake_mode if fakes else None  # the inputs' own mode, not dynamo's
        with mode if mode is not None else contextlib.nullcontext():
            gm(*example_inputs)
        return gm.forward


def capture(fn, *args):
    """The graph and example inputs dynamo hands a backend for fn(*args)."""
    seen = {}

    def grab(gm, example_inputs, **_):
        # A copy: dynamo strips placeholder metadata (grapharg) from its own graph after compiling.
        seen["gm"], seen["inputs"] = graph_copy(gm), list(example_inputs)
        return gm.forward

    torch.compile(fn, backend=grab)(*args)
    return seen["gm"], seen["inputs"]


class TwoLinear(nn.Module):
    """Two linear layers with a ReLU: the small model many CPU tests compile."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 8)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


class SplitAcrossGpus(nn.Module):
    """Pipeline placement: layer `a` on one GPU, layer `b` on another (S03)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        return self.b(self.a(x).to("cuda:1"))


def split_across_fake_gpus(mode: FakeTensorMode) -> SplitAcrossGpus:
    model = SplitAcrossGpus().requires_grad_(False)
    on_fake_device(model.a, "cuda:0", mode)
    on_fake_device(model.b, "cuda:1", mode)
    return model
