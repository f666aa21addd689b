"""What users are told, and how often: each warning once per (reason, device) until reset (among
them what a build left to PyTorch), the resolved settings once per distinct set, reports at the
level the `log_level` setting names. trt_multidev never changes a logger's level; it chooses the
level of its own records."""

from __future__ import annotations

import logging
import threading
from typing import Any, Sequence

import torch.fx

from .build import Built, first_line, first_line_of, pytorch_ops
from .delegate import ENGINE_MODULES
from .errors import EngineDeviceError
from .graphinfo import ArgInfo, op_count, symbolic_sizes
from .reuse import graph_name
from .settings import Settings, unknown_env_vars

__all__ = ["Notices", "build_failure"]

log = logging.getLogger("trt_multidev.pipeline")  # the name users have filtered on since 0.1
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class Notices:
    """The warn-once registry and the settings report of one backend instance."""

    def __init__(self) -> None:
        self._warned: set[tuple[str, str]] = set()
        self._settings_seen: set[str] = set()
        self._lock = threading.Lock()

    def clear(self) -> None:
        with self._lock:
            self._warned.clear()
            self._settings_seen.clear()

    def warn_once(self, key: tuple[str, str], message: str, exc_info: bool = False) -> None:
        with self._lock:
            if key in self._warned:
                return
            self._warned.add(key)
        log.warning(message, exc_info=exc_info)

    def report_settings(self, settings: Settings) -> None:
        """The resolved settings with their sources, once per distinct set; unknown
        TRT_MULTIDEV_* variables (typos, most likely) warned once each."""
        rows = settings.describe()
        token = repr(rows)
        with self._lock:
            if token in self._settings_seen:
                return
            self._settings_seen.add(token)
        for name in unknown_env_vars():
            self.warn_once(("unknown-env", name), f"trt_multidev: ignoring unknown environment variable {name} "
                                                  "(not a trt_multidev setting; a typo?)")
        self.log(settings, "settings: %s", "; ".join(f"{n}={v} ({s})" for n, v, s in rows))

    def report_built(self, built: Built, gm: torch.fx.GraphModule, label: str, delegate: str,
                     delegate_obj: Any) -> None:
        """One warning per (op, device) the delegate could not convert, and per (reason, device)
        for pieces a search by halves left to PyTorch: those run in PyTorch on the target, the
        rest in its engines."""
        if not built.excluded and not built.left:
            return
        left = pytorch_ops(built.callable, ENGINE_MODULES)
        share = (f"; {left} op(s) of the compiled graph run in PyTorch (the graph had {op_count(gm)})"
                 if left is not None else "")
        if built.left:
            why = built.left[0][2]
            pieces = "; ".join(f"{ops} op(s): {names}" for ops, names, _ in built.left)
            self.warn_once((f"pieces:{why}", label),
                           f"trt_multidev: {delegate} could not build graph {graph_name(gm)} as a whole on "
                           f"{label} ({why}); it was built in pieces instead, and the pieces that still "
                           f"failed run in PyTorch on {label} ({pieces}){share}. (strict=1 raises instead; "
                           "warned once per reason and device.)")
        for op, reason in built.excluded:
            note = getattr(delegate_obj, "exclusion_note", lambda _: None)(op)
            instead = note or f"those nodes run in PyTorch on {label} and the rest in TensorRT engines"
            self.warn_once((f"excluded:{op}", label),
                           f"trt_multidev: {delegate} could not convert {op} on {label} ({reason}); {instead}"
                           f"{share}. (strict=1 raises instead; warned once per op and device.)")

    @staticmethod
    def left_summary(built: Built) -> str:
        """What this build left to PyTorch, for its log line (the warnings say it once per op and
        device; this says it for every graph)."""
        parts = [f"{op.rsplit('.', 2)[-2] if op.startswith('torch.ops.') else op} ({reason[:80]})"
                 for op, reason in built.excluded]
        parts += [f"{ops} op(s): {names} ({why[:80]})" for ops, names, why in built.left]
        return "; left to PyTorch: " + "; ".join(parts) if parts else ""

    @staticmethod
    def log(settings: Settings, msg: str, *args: Any) -> None:
        log.log(_LEVELS[settings.log_level], msg, *args)


def build_failure(exc: BaseException, delegate: str, settings: Settings, infos: Sequence[ArgInfo], *,
                  torch_tensorrt: bool) -> tuple[str, str]:
    """(reason, remedy) of the warning for a build that raised `exc`: what failed, on a graph
    with symbolic sizes what they are (a dynamic graph's failure most likely comes from them),
    and what to do."""
    remedy = ("the delegate's own traceback is chained below" if settings.strict else
              "set strict=1 (TRT_MULTIDEV_STRICT=1) to raise instead, with the full traceback")
    reason = (first_line(exc) if isinstance(exc, EngineDeviceError) else
              f"the {delegate} delegate raised {first_line_of(exc)}")
    symbolic = symbolic_sizes(infos)
    if symbolic:
        reason += f" (on a graph with symbolic sizes: {'; '.join(symbolic)})"
        if torch_tensorrt:
            remedy = ("Torch-TensorRT profiles a dimension with no upper bound up to 2^16 times its minimum: "
                      "bound each dynamic dimension with torch._dynamo.mark_dynamic(x, dim, min=..., max=...), "
                      "or compile with dynamic=False (one static engine per shape); " + remedy)
    return reason, remedy
