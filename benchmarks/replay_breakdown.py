"""Where a replayed call's host time goes (issue 12): the tiny MLP at batch 1 with cuda_graphs.

    python benchmarks/replay_breakdown.py --out DIR [--rounds 3]

Session 12 (H200) measured, in one run: a hand-made CUDA graph of the eager MLP replayed with one
copy in and one out costs 33 us of host time per call, trt_multidev's own callable with CUDA
graphs (no dynamo) 56 us, the same through dynamo 103 us. Here the pieces of trt_multidev's
replay path are timed alone, on the objects trt_multidev built, interleaved over rounds:
the captured graph's replay with its copies (the floor), each piece of bookkeeping around it, the
CUDA-graph layer, the guarded callable handed to dynamo, and the dynamo call; the same without
CUDA graphs (trt_multidev's engine runner). Rows marked "(before)" swap trt_multidev's
current_stream (one Stream object per stream) for torch.cuda.current_stream (a new object per
call, what trt_multidev used before session 12), in the same process. Host microseconds per
call (gpu_bench.host_us_per_call). Writes DIR/replay_breakdown.json (GPU, versions, date).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
from typing import Any, Callable

import torch
from torch.utils import _pytree as pytree

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import gpu_bench  # noqa: E402  (puts the repository root on sys.path)
import trt_multidev_backend as tm  # noqa: E402
from trt_multidev_backend import cudagraphs, engine, guard  # noqa: E402


@contextlib.contextmanager
def before() -> Any:
    """trt_multidev's hot paths with a new Stream object per call, as before session 12."""
    saved = cudagraphs.current_stream, engine.current_stream
    cudagraphs.current_stream = engine.current_stream = torch.cuda.current_stream
    try:
        yield
    finally:
        cudagraphs.current_stream, engine.current_stream = saved


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    args_ = parser.parse_args()
    tm.register()
    torch.manual_seed(0)
    dev = torch.device("cuda:0")
    model = gpu_bench.tiny_mlp().to(dev).eval()
    x = torch.randn(1, 64, device=dev)
    _, engine_call, engine_args = gpu_bench.with_its_callable(model, x)
    torch._dynamo.reset()
    compiled, guarded, args = gpu_bench.with_its_callable(model, x, calls=3, cuda_graphs=True)  # warm, capture, replay
    graphs = guarded.fn
    assert isinstance(graphs, cudagraphs.CudaGraphs), type(graphs)
    (key, entry), = graphs._graphs.items()
    cuda = guard.CUDA
    outs = entry.outputs

    def floor() -> Any:
        for buffer, i in entry.copied:
            buffer.copy_(args[i])
        entry.graph.replay()
        return [o.clone() for o in outs]

    def exchange() -> None:
        cuda._maybe_exchange(cuda._exchange(0))

    pieces: dict[str, Callable[[], Any]] = {
        "replay_with_copies (floor)": floor,
        "entry.replay (floor + unflatten)": lambda: entry.replay(args),
        "signature": lambda: cudagraphs.signature(graphs._keyed(args)),
        "policy.decide": lambda: graphs.policy.decide(key),
        "entry.fits": lambda: entry.fits(args),
        "torch.cuda.current_stream(device)": lambda: torch.cuda.current_stream(dev),
        "guard.current_stream(device)": lambda: guard.current_stream(dev),
        "tree_unflatten": lambda: pytree.tree_unflatten(outs, entry.spec),
        "device exchange pair": exchange,
        "CudaGraphs call": lambda: graphs(*args),
        "CudaGraphs call (before)": lambda: graphs(*args),
        "GuardedCallable call": lambda: guarded(*args),
        "GuardedCallable call (before)": lambda: guarded(*args),
        "through dynamo": lambda: compiled(x),
        "through dynamo (before)": lambda: compiled(x),
        "uncaptured GuardedCallable call": lambda: engine_call(*engine_args),
        "uncaptured GuardedCallable call (before)": lambda: engine_call(*engine_args),
        "eager": lambda: model(x),
    }
    samples: dict[str, list[float]] = {name: [] for name in pieces}
    names = list(pieces)
    with torch.no_grad():
        for r in range(args_.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                with before() if name.endswith("(before)") else contextlib.nullcontext():  # for the whole row
                    samples[name].append(gpu_bench.host_us_per_call(pieces[name], calls=5000))
    rows = {name: {"host_us": s, "median": statistics.median(s)} for name, s in samples.items()}
    for name, row in rows.items():
        print(f"{name:36s} {row['median']:8.2f} us", flush=True)
    os.makedirs(args_.out, exist_ok=True)
    with open(os.path.join(args_.out, "replay_breakdown.json"), "w") as f:
        json.dump({"env": gpu_bench.environment(), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
