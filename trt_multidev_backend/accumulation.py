"""fp32 accumulation for fp16 and bf16 matrix products (setting `fp32_accumulation`).

PyTorch's fp16 and bf16 matrix products accumulate in fp32 and round once. The kernels
TensorRT-RTX chooses for them round more: on an H200, Llama's fp16 logits were 2.3x further from
fp32 than eager's (1.2e-2 against 5.3e-3) and back at eager's level with the products left to
PyTorch (5.6e-3), and its greedy tokens left eager's at step 27 of 32. Torch-TensorRT's own
`use_fp32_acc` casts the inputs of each product to fp32 only in networks it flags strongly typed,
which it does not flag for TensorRT-RTX (2.11), so there it does nothing.

This rewrite does the same in the graph, before Torch-TensorRT sees it: each product's fp16/bf16
tensor inputs are cast to fp32 (exact), the product runs in fp32 (where TF32 is allowed, on TF32
tensor cores, whose 10-bit mantissa holds fp16 and bf16 values exactly; accumulation in fp32),
and its result is cast back to the input dtype (one rounding, as PyTorch's kernels round).
A product without a bias gets a bias of fp32 zeros (exact): without it TensorRT-RTX folds the
casts away and runs its fp16 product again (measured, H200; `_with_zero_bias`).
"""

from __future__ import annotations

import collections
import operator
from typing import Any

import torch
import torch.fx

from .graphinfo import fetch_attr, meta_value

__all__ = ["accumulate_in_fp32"]

_F = torch.nn.functional
_aten = torch.ops.aten
_FUNCTIONS: dict[Any, str] = {
    _F.linear: "linear", torch.matmul: "matmul", operator.matmul: "matmul", torch.mm: "mm",
    torch.bmm: "bmm", torch.addmm: "addmm", torch.baddbmm: "baddbmm", torch.addbmm: "addbmm",
    _aten.linear.default: "linear", _aten.matmul.default: "matmul", _aten.mm.default: "mm",
    _aten.bmm.default: "bmm", _aten.addmm.default: "addmm", _aten.baddbmm.default: "baddbmm",
}
_METHODS = {"matmul": "matmul", "__matmul__": "matmul", "mm": "mm", "bmm": "bmm"}
_LOW = (torch.float16, torch.bfloat16)


def _product(node: torch.fx.Node) -> str | None:
    if node.op == "call_function":
        try:
            return _FUNCTIONS.get(node.target)
        except TypeError:  # an unhashable target
            return None
    if node.op == "call_method" and isinstance(node.target, str):
        return _METHODS.get(node.target)
    return None


def _value(gm: torch.fx.GraphModule, node: torch.fx.Node) -> Any:
    """What tracing recorded for `node`, or for a constant the tensor itself."""
    value = meta_value(node)
    return fetch_attr(gm, str(node.target)) if value is None and node.op == "get_attr" else value


def _cast_value(value: Any, dtype: torch.dtype) -> Any:
    """`value` (a FakeTensor or a tensor) as `dtype`, for the metadata of an inserted cast."""
    if not isinstance(value, torch.Tensor):
        return None
    mode = getattr(value, "fake_mode", None)
    if mode is None:
        return value.to(dtype)
    with mode:
        return value.to(dtype)


def _set_value(node: torch.fx.Node, value: Any) -> None:
    node.meta["val" if "val" in node.meta else "example_value"] = value


_BIASED = {"addmm", "baddbmm", "addbmm"}


def _has_bias(node: torch.fx.Node, kind: str) -> bool:
    if kind in _BIASED:
        return True
    if kind == "linear":
        bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
        return bias is not None
    return False


def _with_zero_bias(gm: torch.fx.GraphModule, node: torch.fx.Node, kind: str,
                    result: torch.Tensor) -> torch.fx.Node | None:
    """A product without a bias gets an fp32 bias of zeros (exact: x + 0 is x).

    Measured on an H200 with TensorRT-RTX 1.4: cast, product, cast back folds into the same fp16
    kernel as the plain product, whose error grows with K (2.4e-3 from fp32 at K = 4096 against
    eager's 3.5e-4), so the casts alone changed nothing; with a bias between product and cast
    the product is kept in fp32 and the error is eager's. Returns the node whose value is cast
    back, or None where a symbolic last size leaves no constant bias to give."""
    if _has_bias(node, kind):
        return node
    width = result.shape[-1] if result.dim() else None
    if not isinstance(width, int):
        return None
    with gm.graph.inserting_before(node):
        zeros = gm.graph.call_function(torch.zeros, (width,), {"dtype": torch.float32, "device": result.device})
    _set_value(zeros, _cast_value(result.new_empty((width,)), torch.float32))
    if kind == "linear" and ("bias" in node.kwargs or len(node.args) >= 2):  # takes it itself, as addmm does
        if "bias" in node.kwargs:
            node.kwargs = {**node.kwargs, "bias": zeros}
        else:
            node.args = (*node.args[:2], zeros)
        return node
    with gm.graph.inserting_after(node):
        added = gm.graph.call_function(operator.add, (node, zeros))
    _set_value(added, _cast_value(result, torch.float32))
    return added


def accumulate_in_fp32(gm: torch.fx.GraphModule) -> list[str]:
    """Rewrite `gm` in place so that its fp16/bf16 matrix products take fp32 inputs and round
    their result once; returns one note (products per kind), or none where nothing changed."""
    counts: collections.Counter[str] = collections.Counter()
    unbiased = 0  # products whose symbolic last size allowed no zero bias
    for node in list(gm.graph.nodes):
        kind = _product(node)
        result = meta_value(node) if kind else None
        if not isinstance(result, torch.Tensor) or result.dtype not in _LOW:
            continue
        low, casts = result.dtype, {}
        inputs = [a for a in (*node.args, *node.kwargs.values()) if isinstance(a, torch.fx.Node)]
        values = {a: _value(gm, a) for a in inputs}
        if any(v is None for v in values.values()):
            continue  # an input of unknown dtype: widening the others could mix dtypes

        def widened(arg: Any) -> Any:
            value = values.get(arg) if isinstance(arg, torch.fx.Node) else None
            if not isinstance(value, torch.Tensor) or value.dtype != low:
                return arg
            if arg not in casts:  # x @ x: one cast
                with gm.graph.inserting_before(node):
                    casts[arg] = gm.graph.call_method("to", (arg, torch.float32))
                _set_value(casts[arg], _cast_value(value, torch.float32))
            return casts[arg]

        node.args = tuple(widened(a) for a in node.args)
        node.kwargs = {k: widened(v) for k, v in node.kwargs.items()}
        if not casts:
            continue
        _set_value(node, _cast_value(result, torch.float32))
        biased = _with_zero_bias(gm, node, kind, result)
        unbiased += biased is None
        last = biased or node
        with gm.graph.inserting_after(last):
            back = gm.graph.call_method("to", (last, low))
        node.replace_all_uses_with(back, delete_user_cb=lambda user: user is not back and user is not last)
        _set_value(back, result)
        counts[kind] += 1
    if not counts:
        return []
    gm.graph.lint()
    gm.recompile()
    listed = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    note = f"fp32 accumulation: {listed} computed from fp32 inputs, rounded once"
    if unbiased:
        note += (f"; {unbiased} of them with a symbolic last size got no zero bias, and TensorRT-RTX may run "
                 "those as fp16 products")
    return [note]
