"""Device resolution: which device a captured graph runs on, and why.

The target is decided from, in order: the ``device`` setting; the one CUDA device holding the
graph's module state; the CUDA device of the example inputs; the graph's own device (CPU graphs
stay CPU); the current (default) device for graphs with no tensors at all. The current CUDA device
is never used when the graph says otherwise. Making the target current is guard.py's job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.fx

from .graphinfo import ArgInfo, Role, attr_tensors
from .guard import cuda_usable
from .settings import Settings, SettingsError

__all__ = ["DevicePlan", "resolve_device", "check_visible", "current_cuda_device"]


@dataclass(frozen=True)
class DevicePlan:
    """Where a graph runs, why, and where its tensors naturally live."""

    target: torch.device | None
    rule: str
    natural: torch.device | None      # the device the graph says, before any `device` setting
    state_devices: tuple[str, ...]
    input_devices: tuple[str, ...]
    problem: str | None = None        # set when no single target exists (state on several GPUs)
    spans: tuple[torch.device, ...] = ()  # the GPUs a graph's state or inputs span (no natural device)

    @property
    def override(self) -> bool:
        """True when the `device` setting moves the graph away from its own device (or devices)."""
        if self.target is None:
            return False
        return (self.natural is not None and self.natural != self.target) or any(d != self.target for d in self.spans)

    def relocates(self, device: torch.device) -> bool:
        """Whether the `device` setting moves the graph's tensors on `device` to the target (any
        CPU index counts as the CPU)."""
        if not self.override:
            return False
        sources = (self.natural,) if self.natural is not None else self.spans
        return any(device.type == s.type and (device.index == s.index or s.type == "cpu")
                   for s in sources if s != self.target)

    def describe(self) -> str:
        if self.problem:
            return self.problem
        text = f"target {self.target} (rule: {self.rule})"
        if self.override:
            text += f"; graph relocated from {self.natural or ', '.join(str(d) for d in self.spans)}"
        return text


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
    for tensor in attr_tensors(gm):
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
        spans = tuple(state_cuda if len(state_cuda) > 1 else input_cuda) if problem is not None else ()
        return DevicePlan(device, rule, natural, state_names, input_names, None, spans)
    return DevicePlan(natural if problem is None else None, rule, natural, state_names, input_names, problem)


def check_visible(device: torch.device, origin: str, *, needs_cuda: bool = False) -> None:
    """Raise a clear SettingsError (a ValueError) when a CUDA index is not among the visible GPUs:
    only a `device` setting (or LOCAL_RANK) can name one, and it then reaches torch.compile's caller.
    Without CUDA, a setting naming a GPU is an error only when the compiler `needs_cuda`: other
    delegates may work on FakeTensor devices."""
    if device.type != "cuda":
        return
    if not cuda_usable():
        if needs_cuda and origin.startswith("setting"):
            build = "a CPU-only build of torch" if torch.version.cuda is None else "no visible GPU"
            raise SettingsError(f"trt_multidev: device {device} ({origin}) names a CUDA device, but none is "
                                f"visible here ({build}): 0 CUDA devices; accepted here: 'cpu', or unset")
        return
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        import os

        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise SettingsError(
            f"trt_multidev: device {device} ({origin}) is out of range: {count} CUDA device(s) visible "
            f"(cuda:0..cuda:{count - 1})"
            + (f"; CUDA_VISIBLE_DEVICES={visible!r} renumbers them from 0" if visible is not None else "")
        )
