"""The callable handed back to dynamo: runs a compiled graph on its own device, on every call.

Per call: apply the argument actions worked out at compile time (check caller inputs, move the
ones the graph moves, swap module state for its cached copy on the target), make the target
current for the call and restore the caller's device after it, and move outputs back where
eager returns them. The caller's current stream on the target device is left alone, so the work
runs on it. Everything else was decided at compile time, to keep this path short.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Sequence

import torch

from . import guard as _guard
from .guard import guard_index
from .errors import InputDeviceError, TrtMultidevError
from .placement import ArgAction

__all__ = ["GuardedCallable", "SelectArgs", "select_kept", "tensor_version"]

_CHECK, _MOVE, _STATE, _PINNED = 0, 1, 2, 3
_KINDS = {"check": _CHECK, "move": _MOVE, "state": _STATE, "pinned": _PINNED}


def _replace(values: Sequence[Any], i: int, value: Any) -> list[Any]:
    out = values if isinstance(values, list) else list(values)
    out[i] = value
    return out


def tensor_version(tensor: torch.Tensor) -> int:
    try:
        return tensor._version
    except RuntimeError:  # inference tensors keep no version counter
        return -1


class GuardedCallable:
    """A compiled graph bound to one device. Safe to call from several threads."""

    __slots__ = (
        "fn", "device", "label", "delegate", "fallback", "notes", "actions",
        "_index", "_actions", "_move_inputs", "_outputs", "_lock", "_state", "__weakref__",
    )

    def __init__(
        self,
        fn: Callable[..., Any],
        device: torch.device,
        actions: Sequence[ArgAction] = (),
        output_moves: Sequence[tuple[int, torch.device]] = (),
        *,
        input_policy: str = "error",
        serialize: bool = False,
        label: str = "",
        delegate: str = "",
        fallback: str | None = None,
        notes: Sequence[str] = (),
        seed_state: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None,
    ):
        self.fn = fn
        self.device = device
        self.label = label
        self.delegate = delegate
        self.fallback = fallback  # None when the delegate's result runs; else why it does not
        self.notes = tuple(notes)
        self._index = guard_index(device)
        self.actions = tuple(actions)
        self._actions = tuple((_KINDS[a.kind], a.index, a.device if a.kind != "pinned" else a.value, a.name)
                              for a in actions)
        self._move_inputs = input_policy == "move"
        self._outputs = tuple(output_moves)
        self._lock = threading.Lock() if serialize else None
        # index -> (source tensor, its version, copy on the target); replaced whole, never edited.
        self._state: dict[int, tuple[torch.Tensor, int, torch.Tensor]] = {}
        for index, (source, copy) in (seed_state or {}).items():
            self._state[index] = (source, tensor_version(source), copy)

    def __repr__(self) -> str:
        via = self.delegate + (f", fallback: {self.fallback}" if self.fallback else "")
        return f"<trt_multidev compiled graph {self.label!r} on {self.device} via {via}>"

    def __call__(self, *args: Any) -> Any:
        if self._actions:
            args = self._prepare(args)
        index = self._index
        if index >= 0:  # a light guard.device_guard: a call is on the hot path
            cuda = _guard.CUDA
            # c10's exchange (it checks the runtime's device) and, on the way out, the exchange that
            # leaving torch.cuda.device does (no context made on a GPU that had none): two calls,
            # no Python frame between, as engines do not switch devices while they run.
            previous = cuda._exchange(index)
            try:
                out = self._run(args)
            finally:
                cuda._maybe_exchange(previous)
        else:
            out = self._run(args)
        if self._outputs:
            out = self._move_outputs(out)
        return out

    def _run(self, args: Sequence[Any]) -> Any:
        lock = self._lock
        if lock is None:
            return self.fn(*args)
        with lock:
            return self.fn(*args)

    def _prepare(self, args: tuple[Any, ...]) -> Sequence[Any]:
        values: Sequence[Any] = args  # copied only when something is replaced
        for kind, i, device, name in self._actions:
            value = args[i]
            if not isinstance(value, torch.Tensor):
                continue
            if kind == _STATE:
                values = _replace(values, i, self._state_copy(i, value, device))
            elif kind == _PINNED:  # `device` holds the value the graph was compiled with
                if value.item() != device:
                    raise TrtMultidevError(
                        f"trt_multidev: '{name}' was {device!r} when this graph was compiled and is now "
                        f"{value.item()!r}; the engine holds it as a constant (Torch-TensorRT cannot read it at "
                        f"run time). Call torch._dynamo.reset() to compile again with the new value.")
            elif value.device != device:
                if kind == _MOVE or self._move_inputs:
                    values = _replace(values, i, value.to(device))
                else:
                    raise InputDeviceError(
                        f"trt_multidev: argument '{name}' is on {value.device}, but this graph was "
                        f"compiled for {device}. Move it first (e.g. {name}.to('{device}')), or set "
                        f"input_policy='move' (options or TRT_MULTIDEV_INPUT_POLICY=move) to copy it "
                        f"on every call."
                    )
        return values

    def _state_copy(self, i: int, value: torch.Tensor, device: torch.device) -> torch.Tensor:
        entry = self._state.get(i)
        if entry is not None and entry[0] is value and entry[1] == tensor_version(value):
            return entry[2]
        copy = value.detach().to(device)
        self._state[i] = (value, tensor_version(value), copy)
        return copy

    def _move_outputs(self, out: Any) -> Any:
        if not isinstance(out, (tuple, list)):
            return out
        values = list(out)
        for i, device in self._outputs:
            if i < len(values) and isinstance(values[i], torch.Tensor):
                values[i] = values[i].to(device)
        return tuple(values) if isinstance(out, tuple) else values


class SelectArgs(torch.nn.Module):
    """Passes on only the arguments at `kept` (those a delegate left in its graph)."""

    def __init__(self, inner: Callable[..., Any], kept: Sequence[int]):
        super().__init__()
        self.inner = inner
        self.kept = tuple(kept)

    def forward(self, *args: Any) -> Any:
        return self.inner(*[args[i] for i in self.kept])


def select_kept(inner: Callable[..., Any], before: Sequence[Any], gm: Any) -> tuple[Callable[..., Any], list[int] | None]:
    """`inner`, taking only the arguments whose placeholders (`before`, listed before a delegate
    ran) are still in `gm` (Torch-TensorRT drops sizes it reads from tensors instead), and the
    indices kept; (inner, None) when it kept them all."""
    after = {n for n in gm.graph.nodes if n.op == "placeholder"}
    kept = [i for i, node in enumerate(before) if node in after]
    if len(kept) == len(before):
        return inner, None
    return SelectArgs(inner, kept), kept
