"""CPU micro-benchmark: what the trt_multidev wrapper adds to each call.

    python benchmarks/wrapper_overhead.py

A trivial delegate returns a function that only returns its input, so whatever a call costs on
top of calling that function directly is the wrapper's: argument actions, the device guard (a
no-op without CUDA), the lock, output handling. Prints the per-call times and the difference,
measured in one run (best of several rounds, to damp this machine's noise). Target: under 5 µs.
Also: a pinned module scalar's check, a graph with dynamic shapes whose call shape has a static
engine (specialize.py's lookup) or is only counted, and a mask prefix (T5's bias) computed against its memo hit and
with its constant work folded (what a memo miss costs).
"""

from __future__ import annotations

import json
import os
import sys
import timeit

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from trt_multidev_backend.masks import MaskPrefix, _fold_constants  # noqa: E402
from trt_multidev_backend.placement import ArgAction  # noqa: E402
from trt_multidev_backend.runtime import GuardedCallable  # noqa: E402
from trt_multidev_backend.specialize import Specialized, StaticPlan  # noqa: E402


def trivial(*args):
    return args


def per_call_us(fn, args, number=20000, repeat=7) -> float:
    return min(timeit.repeat(lambda: fn(*args), number=number, repeat=repeat)) / number * 1e6


def t5_bias_prefix() -> tuple[torch.fx.GraphModule, torch.Tensor]:
    """The kind of graph trt_multidev runs ahead of an engine: T5's position bias."""
    def bias(table):
        distance = torch.arange(128)[None, :] - torch.arange(128)[:, None]
        values = torch.nn.functional.embedding(distance.abs().clamp(max=31), table)
        return values.permute(2, 0, 1).unsqueeze(0).contiguous()
    return torch.fx.symbolic_trace(bias), torch.randn(32, 8)


def main() -> int:
    x = torch.randn(8, 8)
    params = [torch.randn(8, 8) for _ in range(160)]  # dynamo passes parameters as arguments
    args = (x, *params)
    cpu = torch.device("cpu")
    cases = {
        "plain (no actions)": GuardedCallable(trivial, cpu),
        "one input check": GuardedCallable(trivial, cpu, [ArgAction("check", 0, cpu, "x")]),
        "input check + lock (default delegate)": GuardedCallable(
            trivial, cpu, [ArgAction("check", 0, cpu, "x")], serialize=True),
        "input check + cached state swap": GuardedCallable(
            trivial, cpu, [ArgAction("check", 0, cpu, "x"), ArgAction("state", 1, cpu, "table")]),
    }
    if torch.cuda.is_available():  # the real guard: exchange and restore the current device
        cuda = torch.device("cuda", 0)
        cases["cuda:0 guard + input check + lock"] = GuardedCallable(
            trivial, cuda, [ArgAction("check", 0, cpu, "x")], serialize=True)
    eps = torch.tensor(1e-5, dtype=torch.float64)
    cases["input check + pinned scalar check"] = GuardedCallable(
        trivial, cpu, [ArgAction("check", 0, cpu, "x"), ArgAction("pinned", 1, cpu, "self.norm.eps", 1e-5)])
    # A dynamic graph (input 0's batch symbolic): its shape has a static engine (after three calls),
    # or its static build failed, so each call is looked up and counted under the lock.
    plan = StaticPlan(shaped=(0,), sizes=(), inputs=(0,))
    hit = Specialized(trivial, plan, cpu, 4, lambda example: (trivial, "built"), lambda *a: None, lambda *a: None)

    def refused(example):
        raise RuntimeError("no static engine")

    counted = Specialized(trivial, plan, cpu, 4, refused, lambda *a: None, lambda *a: None)
    for _ in range(3):
        hit(*args), counted(*args)
    assert hit.shapes and not counted.shapes
    cases["input check + static engine lookup (dynamic graph)"] = GuardedCallable(
        hit, cpu, [ArgAction("check", 0, cpu, "x")])
    cases["input check + shape counted (dynamic graph)"] = GuardedCallable(
        counted, cpu, [ArgAction("check", 0, cpu, "x")])
    base = per_call_us(trivial, args)
    results = {"direct call (baseline)": base}
    for name, wrapper in cases.items():
        results[name] = per_call_us(wrapper, (x, eps, *params) if "pinned" in name else args)
    # A mask prefix (T5's bias from a 32 x 8 table, 128 tokens): computed at every call, and
    # MaskPrefix's memo hit while the table stays as it is.
    prefix, table = t5_bias_prefix()
    results["mask prefix computed (direct)"] = per_call_us(prefix, (table,), number=2000)
    results["mask prefix, memo hit"] = per_call_us(MaskPrefix(prefix), (table,), number=2000)
    folded, _ = t5_bias_prefix()
    _fold_constants(folded)  # as split_mask_prefix leaves it: the distances computed once
    results["mask prefix, constants folded (direct)"] = per_call_us(folded, (table,), number=2000)
    print(f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}")
    print(f"{'case':52} {'µs/call':>8} {'added µs':>9}")
    for name, us in results.items():
        print(f"{name:52} {us:8.2f} {us - base:9.2f}")
    worst = max(us - base for name, us in results.items() if "mask prefix" not in name)
    print(f"largest added cost of the wrapper: {worst:.2f} µs (target < 5 µs): {'met' if worst < 5 else 'MISSED'}")
    if "--json" in sys.argv:
        print(json.dumps({k: round(v, 3) for k, v in results.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
