"""The fallback: a graph trt_multidev does not build (no usable GPU or Torch-TensorRT, mixed
devices, a build that failed, updates a delegate would drop) runs in PyTorch, eager or inductor
(setting `fallback`). Warned once per (reason, device) with its remedy, counted, refused by
`strict`. Where the graph was placed, it runs on the target under the same guard and input policy
as a build would; else as captured, on its own devices."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch.fx

from .build import first_line_of
from .cache import Stats
from .cudagraphs import CapturePlan
from .device import DevicePlan
from .errors import TrtMultidevError
from .guard import cuda_usable, device_guard
from .placement import Placement, graph_copy
from .settings import Settings
from .wrapper import Wrapper

__all__ = ["Fallback"]


class Fallback:
    """Falls back for one backend instance (its counters, warn-once registry and wrapper)."""

    def __init__(self, stats: Stats, warn_once: Callable[[tuple[str, str], str], None], wrap: Wrapper) -> None:
        self._stats = stats
        self._warn_once = warn_once
        self._wrap = wrap

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: Sequence[Any], settings: Settings,
                 plan: DevicePlan, label: str, key: str, reason: str, remedy: str, *,
                 placement: Placement | None = None, cause: BaseException | None = None,
                 capture: CapturePlan | None = None) -> Callable[..., Any]:
        message = f"trt_multidev: {reason} [{label}]"
        if settings.strict:
            raise TrtMultidevError(f"{message}. strict is on, so no fallback runs. Remedy: {remedy}.") from cause
        self._warn_once((key, label), f"{message}; running the {settings.fallback} fallback instead. "
                                      f"Remedy: {remedy}. (Warned once per reason and device.)")
        self._stats.bump(label, "fallbacks")
        target = plan.target
        on_target = placement is not None and target is not None and (target.type == "cpu" or cuda_usable())
        if not on_target:
            # The graph runs as captured, on its own devices: nothing here can honour the target.
            return self._compile(settings, gm, example_inputs, label)
        assert placement is not None and target is not None
        with device_guard(target):
            compiled = self._compile(settings, graph_copy(placement.gm), placement.example_inputs, label)
        return self._wrap(compiled, plan, placement, settings, label, "torch_tensorrt",
                          serialize=False, fallback=f"{settings.fallback} ({reason})", capture=capture)

    def _compile(self, settings: Settings, gm: torch.fx.GraphModule, example_inputs: Sequence[Any],
                 label: str) -> Callable[..., Any]:
        if settings.fallback == "inductor":
            try:
                from torch._inductor.compile_fx import compile_fx

                return compile_fx(gm, list(example_inputs))
            except Exception as exc:
                if settings.strict:
                    raise
                self._warn_once((f"inductor-error:{type(exc).__name__}", label),
                                f"trt_multidev: the inductor fallback failed on {label} "
                                f"({first_line_of(exc)}); running eager instead.")
        return gm.forward  # not the module: its __call__ would add hooks and dispatch to every call
