"""In-memory per-device cache of compiled graphs, its keys, and the per-device counters.

A key covers everything that can change a compiled result: the placed graph's code and
constants, the input specs (shape, dtype, stride, device, dynamic dims), the target device,
every result-affecting setting and the delegate. The same graph with the same inputs on the
same device compiles once; another device compiles its own.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import defaultdict
from typing import Any, Iterable, Sequence

import torch
import torch.fx

from .graphinfo import fetch_attr
from .settings import Settings

__all__ = ["graph_fingerprint", "input_specs", "cache_key", "disk_key", "names_device", "CompiledCache", "Stats",
           "COUNTERS"]

COUNTERS = ("compiles", "cache_hits", "disk_hits", "cross_device_reuses", "fallbacks",
            "corrupt_entries", "lock_waits", "cuda_graphs", "uncaptured", "static_engines")


def _tensor_meta(t: torch.Tensor) -> str:
    return f"{tuple(str(s) for s in t.shape)}|{tuple(str(s) for s in t.stride())}|{t.dtype}|{t.device}"


def graph_fingerprint(gm: torch.fx.GraphModule) -> str:
    """Code plus what the code refers to: constants by identity (so two models' constants never
    share a result in one process) and submodules by type and configuration."""
    h = hashlib.sha256(gm.code.encode())
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            value = fetch_attr(gm, str(node.target))
            if isinstance(value, torch.Tensor):
                version = getattr(value, "_version", 0) if not value.is_inference() else -1
                h.update(f"{node.target}:{_tensor_meta(value)}:{id(value):x}:{version}".encode())
            else:
                h.update(f"{node.target}:{type(value).__qualname__}:{id(value):x}".encode())
        elif node.op == "call_module":
            module = gm.get_submodule(str(node.target))
            h.update(f"{node.target}:{type(module).__qualname__}:{module.extra_repr()}:{id(module):x}".encode())
    return h.hexdigest()


def input_specs(example_inputs: Iterable[Any]) -> list[str]:
    specs = []
    for x in example_inputs:
        if isinstance(x, torch.Tensor):
            dynamic = sorted(getattr(x, "_dynamo_dynamic_indices", ()) or ())
            specs.append(f"T{_tensor_meta(x)}|grad={x.requires_grad}|dyn={dynamic}")
        elif isinstance(x, torch.SymInt):
            specs.append(f"S{x.node.expr}")
        else:
            specs.append(f"C{type(x).__name__}:{x!r}")
    return specs


def cache_key(
    gm: torch.fx.GraphModule,
    example_inputs: Sequence[Any],
    device: torch.device,
    settings: Settings,
    delegate: str,
) -> str:
    h = hashlib.sha256()
    for part in (graph_fingerprint(gm), *input_specs(example_inputs), str(device),
                 settings.result_token(), settings.runtime_token(), delegate, torch.__version__):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def _content_digest(t: torch.Tensor) -> str:
    """What a constant holds (FakeTensors have no data: their metadata stands in)."""
    from torch._subclasses.fake_tensor import FakeTensor

    if isinstance(t, FakeTensor):
        return "fake:" + _tensor_meta(t)
    data = t.detach().to("cpu").contiguous().clone()
    return hashlib.sha256(bytes(data.untyped_storage())).hexdigest()


def names_device(code: str, device: torch.device) -> bool:
    """Whether generated graph code names `device` (as torch.device or as a string)."""
    return repr(device) in code or f"'{device}'" in code


def disk_key(
    gm: torch.fx.GraphModule,
    example_inputs: Sequence[Any],
    device: torch.device,
    settings: Settings,
    delegate: str,
    versions: dict[str, str],
) -> tuple[str, bool]:
    """A key that is the same in every process: constants by content, not identity. Parameters
    need no fingerprint: dynamo passes them as graph inputs, so no compiled result holds them.

    Returns (key, names_device). The key holds no GPU index, so one build serves every GPU of
    the same model (the namespace holds the GPU identity). A graph whose code names its device (a
    factory call placed on cuda:1: `names_device`) is keyed as if it named "the target", and its
    build is moved to another GPU when loaded there (reuse.relocated).
    """
    code = gm.code
    device_specific = device.type == "cuda" and names_device(code, device)
    if device_specific:
        code = code.replace(repr(device), "<target>").replace(f"'{device}'", "'<target>'")
    h = hashlib.sha256(code.encode())
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            value = fetch_attr(gm, str(node.target))
            if isinstance(value, torch.Tensor):
                h.update(f"{node.target}:{_tensor_meta(value)}:{_content_digest(value)}".encode())
        elif node.op == "call_module":
            module = gm.get_submodule(str(node.target))
            h.update(f"{node.target}:{type(module).__qualname__}:{module.extra_repr()}".encode())
            for name, t in list(module.named_parameters()) + list(module.named_buffers()):
                h.update(f"{name}:{_tensor_meta(t)}:{_content_digest(t)}".encode())
    where = device.type
    specs = [spec.replace(f"|{device}|", f"|{where}|") for spec in input_specs(example_inputs)]
    for part in (*specs, where, settings.result_token(), delegate, json.dumps(versions, sort_keys=True)):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest(), device_specific


class CompiledCache:
    """key -> compiled callable, for one backend instance; emptied by reset()."""

    def __init__(self) -> None:
        self._entries: dict[str, Any] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> Any:
        with self._lock:
            return self._entries.get(key)

    def put(self, key: str, value: Any) -> None:
        with self._lock:
            self._entries[key] = value

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


class Stats:
    """Counters per device label (see COUNTERS)."""

    def __init__(self) -> None:
        self._counts: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(COUNTERS, 0))
        self._lock = threading.Lock()

    def bump(self, device: str, counter: str) -> None:
        with self._lock:
            self._counts[device][counter] += 1

    def snapshot(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {device: dict(counts) for device, counts in sorted(self._counts.items())}

    def clear(self) -> None:
        with self._lock:
            self._counts.clear()
