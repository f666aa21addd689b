"""What dynamo gets back for a compiled graph: the graph, captured in CUDA graphs per input shape
where the `cuda_graphs` setting asks for it and the graph allows it (else warned why, once),
inside the callable that guards its device and places its inputs (runtime.py). Builds and
fallbacks are handed back the same way, so both honour the target and the input policy."""

from __future__ import annotations

from typing import Any, Callable

import torch

from .cache import Stats
from .cudagraphs import CapturePlan, CudaGraphs
from .device import DevicePlan
from .placement import Placement
from .reuse import graph_name
from .runtime import GuardedCallable
from .settings import Settings

__all__ = ["Wrapper"]


class Wrapper:
    """Wraps compiled graphs for one backend instance (its counters and warn-once registry)."""

    def __init__(self, stats: Stats, warn_once: Callable[[tuple[str, str], str], None]) -> None:
        self._stats = stats
        self._warn_once = warn_once

    def __call__(self, compiled: Callable[..., Any], plan: DevicePlan, placement: Placement, settings: Settings,
                 label: str, delegate: str, *, serialize: bool, fallback: str | None = None,
                 capture: CapturePlan | None = None) -> GuardedCallable:
        assert plan.target is not None
        if capture is not None:  # cuda_graphs: replayed per input shape, or told why not, once
            name = f"graph {graph_name(placement.gm)} on {label}"
            if capture.refusal is None:
                compiled = CudaGraphs(compiled, plan.target, capture, limit=settings.cuda_graph_max_shapes,
                                      warn=self._warn_once, label=name,
                                      count=lambda counter: self._stats.bump(label, counter))
            else:
                self._stats.bump(label, "uncaptured")
                self._warn_once(("cuda-graphs:" + capture.kind, label),
                                f"trt_multidev: CUDA graphs: {name} runs uncaptured: {capture.refusal}. "
                                "(Warned once per reason and device.)")
        # State moved at compile time is the first cached copy (real tensors only, not fakes).
        seed = {i: (source, placement.example_inputs[i]) for i, source in placement.originals.items()
                if _is_real(placement.example_inputs[i])}
        return GuardedCallable(
            compiled, plan.target, placement.actions, placement.output_moves,
            input_policy=settings.input_policy, serialize=serialize, label=label,
            delegate=delegate, fallback=fallback, notes=placement.notes, seed_state=seed,
        )


def _is_real(value: Any) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(value, torch.Tensor) and not isinstance(value, FakeTensor)
