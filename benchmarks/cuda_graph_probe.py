"""Questions the CUDA-graph design (issue 12) needs answered on a real GPU, answered in one run.

    python benchmarks/cuda_graph_probe.py --out DIR

1. What TensorRT-RTX's runtime config offers here (names of the CUDA-graph and kernel
   specialization knobs and their enum members).
2. Can the launch of a compiled graph with trt_multidev's engine runner be captured with
   torch.cuda.graph and replayed, and does a replay match eager? Host microseconds per call:
   eager, the compiled call, a replay with one input copy and one output copy.
3. A dynamic engine (batch marked dynamic): capture batch 4 and batch 8, run batch 16
   uncaptured (the context's shapes change), then replay 4 and 8: still right?
Writes DIR/cuda_graph_probe.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import gpu_bench  # noqa: E402  (puts the repository root on sys.path)
import trt_multidev_backend  # noqa: E402,F401


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))


def api() -> dict:
    import torch_tensorrt  # noqa: F401
    import tensorrt as trt

    out = {"runtime_config": [n for n in dir(getattr(trt, "IRuntimeConfig", object)) if not n.startswith("__")]}
    for name in dir(trt):
        if "Strategy" in name or "Graph" in name:
            kind = getattr(trt, name)
            out[name] = [m for m in dir(kind) if m.isupper()]
    return out


def host_us(fn, n: int = 2000) -> float:
    for _ in range(50):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / n * 1e6


def static_mlp(results: dict) -> None:
    torch._dynamo.reset()
    mlp = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64)).cuda().half().eval()
    x = torch.randn(1, 64, device="cuda", dtype=torch.half)
    compiled = torch.compile(mlp, backend="trt_multidev", options={"min_block_size": 1, "cache": False})
    with torch.no_grad():
        ref = mlp(x)
        for _ in range(3):
            compiled(x)
        static_x = x.clone()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                static_out = compiled(static_x)
        except Exception as exc:
            results["static_capture"] = f"failed: {type(exc).__name__}: {exc}"
            return
        x2 = torch.randn_like(x)
        static_x.copy_(x2)
        graph.replay()
        torch.cuda.synchronize()
        results["static_capture"] = {"replay_rel_err": rel(static_out, mlp(x2))}

        def replay():
            static_x.copy_(x)
            graph.replay()
            return static_out.clone()

        results["static_host_us"] = {
            "eager": host_us(lambda: mlp(x)),
            "trt_multidev": host_us(lambda: compiled(x)),
            "replay_copy_in_clone_out": host_us(replay),
            "replay_only": host_us(graph.replay),
        }
        results["static_capture"]["ref_rel_err"] = rel(replay(), ref)


def dynamic_mlp(results: dict) -> None:
    torch._dynamo.reset()
    mlp = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.GELU(), torch.nn.Linear(128, 64)).cuda().half().eval()
    compiled = torch.compile(mlp, backend="trt_multidev", options={"min_block_size": 1, "cache": False}, dynamic=False)
    out: dict = {}
    with torch.no_grad():
        xs = {b: torch.randn(b, 64, device="cuda", dtype=torch.half) for b in (4, 8, 16)}
        for x in xs.values():
            torch._dynamo.mark_dynamic(x, 0, min=1, max=64)
        for b in (4, 8, 16, 4, 8):
            compiled(xs[b])
        graphs = {}
        for b in (4, 8):
            g = torch.cuda.CUDAGraph()
            static = xs[b].clone()
            try:
                with torch.cuda.graph(g, capture_error_mode="thread_local"):
                    y = compiled(static)
            except Exception as exc:
                out[f"capture_{b}"] = f"failed: {type(exc).__name__}: {exc}"
                results["dynamic"] = out
                return
            graphs[b] = (g, static, y)
        for step, b in enumerate((4, 8, 16, 4, 16, 8)):
            fresh = torch.randn(b, 64, device="cuda", dtype=torch.half)
            if b in graphs:
                g, static, y = graphs[b]
                static.copy_(fresh)
                g.replay()
                got = y.clone()
            else:
                got = compiled(fresh)
            torch.cuda.synchronize()
            out[f"step{step}_b{b}{'_replay' if b in graphs else '_uncaptured'}"] = rel(got, mlp(fresh))
    results["dynamic"] = out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    results: dict = {"env": gpu_bench.environment() if hasattr(gpu_bench, "environment") else {}}
    for name, step in (("api", lambda: results.__setitem__("api", api())), ("static", lambda: static_mlp(results)),
                       ("dynamic", lambda: dynamic_mlp(results))):
        try:
            step()
        except Exception as exc:
            results[name + "_error"] = f"{type(exc).__name__}: {exc}"
        print(name, json.dumps({k: v for k, v in results.items() if k != "env"}, indent=1)[:3000], flush=True)
        with open(os.path.join(args.out, "cuda_graph_probe.json"), "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
