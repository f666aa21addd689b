"""Small batches (issue 12): host cost per call and batch-1 latency, with and without CUDA graphs.

    python benchmarks/small_batch.py --out DIR [--backends ...] [--rounds 3]

Models on cuda:0: the tiny MLP of gpu_bench.py (fp32, batch 1) and ResNet-18 (torchvision, fp16,
batch 1). Backends:
  eager
  trt_multidev            default mode
  trt_multidev_graphs     options={"cuda_graphs": True}, what mode="reduce-overhead" turns on
  torch_tensorrt          plain Torch-TensorRT (torch.compile backend)
  torch_tensorrt_graphs   the same with torch_tensorrt.runtime.set_cudagraphs_mode(True)
  inductor_graphs         torch.compile(mode="reduce-overhead")
  graph_replay_floor      the eager model captured by hand in one CUDA graph, replayed with one copy
                          in and one copy out: the least any CUDA-graph path costs per call
  trt_multidev_layers, trt_multidev_graphs_layers
                          trt_multidev's own layers without dynamo's: the callable trt_multidev
                          returned, called with the arguments dynamo passed it (what trt_multidev
                          adds to a call, and what a replay costs through it)
Per (model, backend): the tiny MLP's host microseconds per call (gpu_bench.host_us_per_call:
calls issued back to back, synchronized at the end of each batch of calls) and ResNet-18's median
milliseconds per call (CUDA events), the median over --rounds rounds whose backend order rotates,
and the relative error against eager. Writes DIR/small_batch.json after each model.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
from typing import Any, Callable

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import gpu_bench  # noqa: E402  (puts the repository root on sys.path)
import trt_multidev_backend as tm  # noqa: E402

BACKENDS = ("eager", "trt_multidev", "trt_multidev_graphs", "torch_tensorrt", "torch_tensorrt_graphs",
            "inductor_graphs", "graph_replay_floor", "trt_multidev_layers", "trt_multidev_graphs_layers")


def resnet18() -> torch.nn.Module:
    import torchvision

    return torchvision.models.resnet18(weights=None)


MODELS: dict[str, tuple[Callable[[], torch.nn.Module], tuple[int, ...], torch.dtype, str]] = {
    "tiny_mlp_b1": (gpu_bench.tiny_mlp, (1, 64), torch.float32, "host_us"),
    "resnet18_fp16_b1": (resnet18, (1, 3, 224, 224), torch.float16, "median_ms"),
}


@contextlib.contextmanager
def tt_graphs(on: bool):
    """Torch-TensorRT's own CUDA-graph mode around a call (a global switch in 2.11)."""
    if not on:
        yield
        return
    import torch_tensorrt

    torch_tensorrt.runtime.set_cudagraphs_mode(True)
    try:
        yield
    finally:
        torch_tensorrt.runtime.set_cudagraphs_mode(False)


def layers_only(model: torch.nn.Module, x: torch.Tensor, graphs: bool) -> Callable[..., Any]:
    """The callable trt_multidev returned for the model's graph, bound to the arguments dynamo
    passed it on the first call (the same tensors every call, as the other rows use)."""
    tm.reset()
    _, fn, args = gpu_bench.with_its_callable(model, x, cuda_graphs=graphs)

    def call(_x: Any = None) -> Any:
        out = fn(*args)
        return out[0] if isinstance(out, (tuple, list)) else out  # dynamo's graphs return tuples
    return call


def replay_floor(model: torch.nn.Module, x: torch.Tensor) -> Callable[..., Any]:
    """`model` captured in a CUDA graph by hand (warmed on a side stream first, as PyTorch's
    CUDA-graph notes ask), replayed with `x` copied in and the output copied out, as
    trt_multidev's replays do: what a call costs without dynamo and without trt_multidev."""
    static = x.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.no_grad(), torch.cuda.stream(side):
        for _ in range(3):
            model(static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        out = model(static)

    def call(x_: torch.Tensor) -> torch.Tensor:
        static.copy_(x_)
        graph.replay()
        return out.clone()
    return call


def compiled_for(backend: str, model: torch.nn.Module, x: torch.Tensor) -> Callable[..., Any]:
    if backend.endswith("_layers"):
        return layers_only(model, x, graphs="graphs" in backend)
    if backend == "eager":
        return model
    if backend == "graph_replay_floor":
        return replay_floor(model, x)
    if backend == "inductor_graphs":
        return torch.compile(model, mode="reduce-overhead")
    if backend.startswith("torch_tensorrt"):
        import torch_tensorrt  # noqa: F401

        return torch.compile(model, backend="torch_tensorrt", options={"min_block_size": 1})
    tm.reset()
    # torch.compile takes mode or options, not both: options={"cuda_graphs": True} is what
    # mode="reduce-overhead" sets.
    return torch.compile(model, backend="trt_multidev", options={"min_block_size": 1, "cache": False,
                                                                  "cuda_graphs": backend.endswith("_graphs")})


def measure(kind: str, fn: Callable[[], Any]) -> float:
    if kind == "host_us":
        return gpu_bench.host_us_per_call(fn, calls=2000)
    return gpu_bench.median_latency_ms(fn, iters=100, warmup=20)


def run_model(name: str, backends: list[str], rounds: int) -> dict[str, Any]:
    build, shape, dtype, kind = MODELS[name]
    torch.manual_seed(0)
    model = build().to("cuda", dtype).eval()
    x = torch.randn(*shape, device="cuda", dtype=dtype)
    with torch.no_grad():
        ref = model(x)
    rows: dict[str, Any] = {}
    calls: dict[str, Callable[[], Any]] = {}
    for backend in backends:
        torch._dynamo.reset()
        try:
            fn = compiled_for(backend, model, x)
            graphs = backend == "torch_tensorrt_graphs"

            def call(fn=fn, graphs=graphs):
                with torch.no_grad(), tt_graphs(graphs):
                    return fn(x)

            out = [call() for _ in range(3)][-1]  # warm; the CUDA-graph backends capture here
            torch.cuda.synchronize()
            rows[backend] = {"rel_err": gpu_bench.rel_error(out, ref), kind: []}
            calls[backend] = call
        except Exception as exc:
            rows[backend] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
        print(name, backend, rows[backend], flush=True)
    live = [b for b in backends if b in calls]
    for r in range(rounds):
        for backend in live[r % len(live):] + live[:r % len(live)]:
            rows[backend][kind].append(measure(kind, calls[backend]))
    for backend in live:
        rows[backend]["median"] = statistics.median(rows[backend][kind])
        print(f"{name:18s} {backend:22s} {kind} {rows[backend]['median']:.4f}", flush=True)
    return {"unit": kind, "backends": rows}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=HERE).stdout.strip()
    result: dict[str, Any] = {"env": gpu_bench.environment(), "git_commit": commit, "models": {}}
    for name in args.models.split(","):
        result["models"][name] = run_model(name, args.backends.split(","), args.rounds)
        with open(os.path.join(args.out, "small_batch.json"), "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
