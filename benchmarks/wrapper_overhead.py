"""CPU micro-benchmark: what the trt_multidev wrapper adds to each call.

    python benchmarks/wrapper_overhead.py

A trivial delegate returns a function that only returns its input, so whatever a call costs on
top of calling that function directly is the wrapper's: argument actions, the device guard (a
no-op without CUDA), the lock, output handling. Prints the per-call times and the difference,
measured in one run (best of several rounds, to damp this machine's noise). Target: under 5 µs.
"""

from __future__ import annotations

import json
import os
import sys
import timeit

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from trt_multidev_backend.placement import ArgAction  # noqa: E402
from trt_multidev_backend.runtime import GuardedCallable  # noqa: E402


def trivial(*args):
    return args


def per_call_us(fn, args, number=20000, repeat=7) -> float:
    return min(timeit.repeat(lambda: fn(*args), number=number, repeat=repeat)) / number * 1e6


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
    base = per_call_us(trivial, args)
    results = {"direct call (baseline)": base}
    for name, wrapper in cases.items():
        results[name] = per_call_us(wrapper, args)
    print(f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}")
    print(f"{'case':42} {'µs/call':>8} {'added µs':>9}")
    for name, us in results.items():
        print(f"{name:42} {us:8.2f} {us - base:9.2f}")
    worst = max(us - base for us in results.values())
    print(f"largest added cost: {worst:.2f} µs (target < 5 µs): {'met' if worst < 5 else 'MISSED'}")
    if "--json" in sys.argv:
        print(json.dumps({k: round(v, 3) for k, v in results.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
