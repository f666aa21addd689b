"""Replicas: one compiled copy of a model per GPU, for data-parallel serving in one process.

The first replica builds its engines; the others, on GPUs of the same model, load that build
instead of rebuilding it (through the disk cache's in-process copy), so N identical GPUs cost
about one build plus N-1 loads. In a serving stack with one worker process per GPU, give each
worker ``torch.compile(model, backend="trt_multidev")`` on its own GPU instead: the workers share
the disk cache, and the first one to build a graph builds it for all.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch

__all__ = ["Replica", "replicate"]


@dataclass
class Replica:
    device: torch.device
    module: torch.nn.Module          # this replica's copy of the model, on `device`
    compiled: Callable[..., Any]     # torch.compile(module, backend=trt_multidev)

    def __call__(self, *args: Any) -> Any:
        """Run on this replica's GPU; tensor arguments are copied there first if they are elsewhere."""
        moved = [a.to(self.device, non_blocking=True) if isinstance(a, torch.Tensor) and a.device != self.device
                 else a for a in args]
        return self.compiled(*moved)


def replicate(
    model: torch.nn.Module,
    devices: Iterable[str | int | torch.device] | None = None,
    *,
    example_inputs: Sequence[Any] | None = None,
    options: Mapping[str, Any] | None = None,
) -> list[Replica]:
    """A compiled replica of `model` on each device (default: every visible GPU).

    With `example_inputs`, each replica is compiled right away (in order, so the first builds and
    the rest load); otherwise on its first call. `model` itself is not moved or changed.
    """
    from .pipeline import backend

    if devices is None:
        if not torch.cuda.is_available():
            raise ValueError("trt_multidev.replicate: no visible GPU; pass devices=[...] explicitly")
        devices = range(torch.cuda.device_count())
    targets = [torch.device("cuda", d) if isinstance(d, int) else torch.device(d) for d in devices]
    if not targets:
        raise ValueError("trt_multidev.replicate: devices is empty")
    replicas = []
    for device in targets:
        module = copy.deepcopy(model).to(device)
        compiled = torch.compile(module, backend=backend, options=dict(options or {}))
        replica = Replica(device, module, compiled)
        if example_inputs is not None:
            with torch.no_grad():
                replica(*example_inputs)
        replicas.append(replica)
    return replicas
