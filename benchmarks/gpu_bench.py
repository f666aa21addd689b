"""GPU benchmark: eager, inductor, plain torch_tensorrt and trt_multidev, in one run on one GPU.

    python benchmarks/gpu_bench.py --out DIR [--models resnet50_fp32,...] [--backends ...]

Figures per (model, backend): first-call seconds (compile included, TensorRT timing cache cleared
before each TensorRT build), steady-state median latency (CUDA events, warm-up, 100 iterations per
round, median over 5 interleaved rounds), relative error against fp32 eager, and for the tiny MLP
the host microseconds per call. Writes bench.json and bench.md, stamped with GPU, versions
and date. Ratios between backends are only meaningful within one run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
import sys
import time
from typing import Any, Callable

import torch
import torch.nn as nn

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

BACKENDS = ("eager", "inductor", "torch_tensorrt", "trt_multidev")


class Block(nn.Module):
    """Attention written by hand, so no fused fast path is what gets timed."""

    def __init__(self, width: int = 1024, heads: int = 16) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.ff1, self.ff2 = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

    def forward(self, x):
        b, s, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(d // self.heads))
        y = (att.softmax(-1) @ v).transpose(1, 2).reshape(b, s, d)
        x = x + self.proj(y)
        return x + self.ff2(torch.nn.functional.gelu(self.ff1(self.ln2(x))))


def attention_stack() -> nn.Module:
    return nn.Sequential(*[Block() for _ in range(6)])


def tiny_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 16))


def resnet50() -> nn.Module:
    import torchvision

    return torchvision.models.resnet50()


MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], torch.dtype]] = {
    "resnet50_fp32_b32": (resnet50, (32, 3, 224, 224), torch.float32),
    "resnet50_fp16_b32": (resnet50, (32, 3, 224, 224), torch.float16),
    "attention_fp16_b16": (attention_stack, (16, 256, 1024), torch.float16),
    "tiny_mlp_b1": (tiny_mlp, (1, 64), torch.float32),
}


def compile_for(backend: str, model: nn.Module) -> Callable[..., Any]:
    if backend == "eager":
        return model
    if backend == "inductor":
        return torch.compile(model)
    if backend == "torch_tensorrt":
        import torch_tensorrt  # noqa: F401  (registers the backend)

        return torch.compile(model, backend="torch_tensorrt", options={"min_block_size": 1})
    import trt_multidev_backend as tm

    tm.reset()  # a second build of the same model must build, not hit the in-memory cache
    return torch.compile(model, backend=tm.backend, options={"min_block_size": 1, "cache": False})


def median_latency_ms(fn: Callable[[], Any], iters: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    for i in range(iters):
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends))


def with_its_callable(model: nn.Module, x: torch.Tensor, calls: int = 1,
                      **options: Any) -> tuple[Callable[..., Any], Callable[..., Any], tuple[Any, ...]]:
    """`model` compiled through trt_multidev (min_block_size 1, no disk cache, `options`) and
    called `calls` times with `x`; returns (the compiled model, the callable trt_multidev returned
    for its graph, the arguments dynamo passed that callable on the first call), so that the
    callable can be timed without dynamo. The compiled model's calls pass through one more
    Python frame, which records those arguments."""
    import trt_multidev_backend as tm

    seen: dict[str, Any] = {}

    def hook(gm: Any, example_inputs: Any, **kwargs: Any) -> Callable[..., Any]:
        fn = tm.backend(gm, example_inputs, **kwargs)

        def record(*args: Any) -> Any:
            seen.setdefault("call", (fn, args))
            return fn(*args)
        return record

    compiled = torch.compile(model, backend=hook, options={"min_block_size": 1, "cache": False, **options})
    with torch.no_grad():
        for _ in range(calls):
            compiled(x)
    fn, args = seen["call"]
    return compiled, fn, args


def host_us_per_call(fn: Callable[[], Any], calls: int = 2000) -> float:
    """Host time to issue one call; the tiny MLP keeps the GPU from being the bottleneck."""
    for _ in range(50):
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls // 5):
            fn()
        samples.append((time.perf_counter() - start) / (calls // 5) * 1e6)
        torch.cuda.synchronize()
    return statistics.median(samples)


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.float(), ref.float()
    return float((out - ref).norm() / ref.norm())


def _clear_timing_cache() -> None:
    """Each TensorRT build starts cold, so first-call times compare fairly between backends."""
    try:
        from torch_tensorrt.dynamo import _defaults

        path = getattr(_defaults, "TIMING_CACHE_PATH", None)
    except Exception:
        return
    if path and os.path.exists(path):
        os.remove(path)


def run_model(name: str, backends: list[str], iters: int, rounds: int) -> list[dict[str, Any]]:
    """Compile every backend, then time them in interleaved rounds (A B C D, B C D A, ...), so
    clock and thermal drift during the run spread over all backends alike."""
    build, shape, dtype = MODELS[name]
    torch.manual_seed(0)
    torch._dynamo.reset()
    dev = torch.device("cuda", 0)
    reference_model = build().eval().to(dev)
    x32 = torch.randn(*shape, device=dev)
    x = x32.to(dtype)
    with torch.no_grad():
        ref = reference_model(x32)
    rows: dict[str, dict[str, Any]] = {}
    fns: dict[str, Callable[..., Any]] = {}
    labels = list(dict.fromkeys(backends))  # a backend named twice would reuse dynamo's first compile
    for label, backend in zip(labels, labels):
        row: dict[str, Any] = {"model": name, "backend": label}
        rows[label] = row
        model = build().eval().to(dev)
        model.load_state_dict(reference_model.state_dict())
        model = model.to(dtype)
        if backend in ("torch_tensorrt", "trt_multidev"):
            _clear_timing_cache()
        try:
            with torch.no_grad():
                fn = compile_for(backend, model)
                torch.cuda.synchronize()
                start = time.perf_counter()
                out = fn(x)
                torch.cuda.synchronize()
                row["first_call_s"] = time.perf_counter() - start
                row["rel_error_vs_fp32_eager"] = rel_error(out, ref)
                fns[label] = fn
        except Exception as exc:  # a backend failing is a result too
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
    timed = [label for label in labels if label in fns]
    latencies: dict[str, list[float]] = {b: [] for b in timed}
    hosts: dict[str, list[float]] = {b: [] for b in timed}
    with torch.no_grad():
        for r in range(rounds):
            for backend in timed[r % len(timed):] + timed[: r % len(timed)]:
                fn = fns[backend]
                latencies[backend].append(median_latency_ms(lambda: fn(x), iters, warmup=10))
                if name.startswith("tiny_mlp"):
                    hosts[backend].append(host_us_per_call(lambda: fn(x), calls=1000))
    for backend in timed:
        rows[backend]["median_ms"] = statistics.median(latencies[backend])
        rows[backend]["median_ms_per_round"] = [round(v, 4) for v in latencies[backend]]
        if hosts[backend]:
            rows[backend]["host_us_per_call"] = statistics.median(hosts[backend])
    if "trt_multidev" in rows:
        import trt_multidev_backend as tm

        rows["trt_multidev"]["counters"] = tm.stats()
    for row in rows.values():
        print(json.dumps(row), flush=True)
    return list(rows.values())


class Record:
    """A probe's JSON file: the environment (with the date), then rows, each printed as it comes
    and the file rewritten after it, so a run cut short keeps what it measured."""

    def __init__(self, path: str, **fields: Any) -> None:
        self.path = path
        self.doc: dict[str, Any] = {"environment": environment(), **fields, "rows": []}

    def add(self, row: dict[str, Any]) -> None:
        self.doc["rows"].append(row)
        print(json.dumps(row), flush=True)
        with open(self.path, "w") as f:
            json.dump(self.doc, f, indent=1)


def environment() -> dict[str, Any]:
    import importlib.metadata as md

    def version(*names: str) -> str:
        for n in names:
            try:
                return md.version(n)
            except md.PackageNotFoundError:
                pass
        return "not installed"

    props = torch.cuda.get_device_properties(0) if torch.cuda.is_available() else None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "gpu": (f"{props.name} (SM {props.major}.{props.minor}, {props.total_memory / 2**30:.0f} GiB)" if props
                else "none (a CPU dry run)"),
        "gpus_visible": torch.cuda.device_count(),
        "torch": torch.__version__,
        "torch_tensorrt": version("torch-tensorrt", "torch-tensorrt-rtx"),
        "tensorrt": version("tensorrt", "tensorrt-rtx-cu13-bindings", "tensorrt-rtx"),
        "python": sys.version.split()[0],
    }


def markdown(env: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    lines = [
        "# GPU benchmark",
        "",
        "Stamp: " + ", ".join(f"{k} {v}" for k, v in env.items()),
        "",
        "| model | backend | first call (s) | median (ms) | rel. error vs fp32 eager | host µs/call | note |",
        "|---|---|---:|---:|---:|---:|---|",
    ]

    def fmt(value: Any, spec: str) -> str:
        return format(value, spec) if isinstance(value, (int, float)) else "–"

    for r in rows:
        lines.append(
            f"| {r['model']} | {r['backend']} | {fmt(r.get('first_call_s'), '.2f')} | {fmt(r.get('median_ms'), '.3f')} "
            f"| {fmt(r.get('rel_error_vs_fp32_eager'), '.1e')} | {fmt(r.get('host_us_per_call'), '.1f')} "
            f"| {r.get('error', '')} |")
    lines += ["", "## Ratios (same run)", "", "| model | trt_multidev / torch_tensorrt median | target |", "|---|---:|---|"]
    by = {(r["model"], r["backend"]): r for r in rows}
    for model in dict.fromkeys(r["model"] for r in rows):
        a, b = by.get((model, "trt_multidev"), {}), by.get((model, "torch_tensorrt"), {})
        if "median_ms" in a and "median_ms" in b:
            target = "≤ 1.02" if not model.startswith("tiny") else "host µs within 5"
            lines.append(f"| {model} | {a['median_ms'] / b['median_ms']:.3f} | {target} |")
        if "host_us_per_call" in a and "host_us_per_call" in b:
            lines.append(f"| {model} host µs/call | {a['host_us_per_call'] - b['host_us_per_call']:+.1f} µs "
                         "(difference) | ≤ +5 µs |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    env = environment()
    print(json.dumps(env), flush=True)
    backends = args.backends.split(",")
    rows = [row for m in args.models.split(",") for row in run_model(m, backends, args.iters, args.rounds)]
    with open(os.path.join(args.out, "bench.json"), "w") as f:
        json.dump({"environment": env, "rows": rows}, f, indent=1)
    with open(os.path.join(args.out, "bench.md"), "w") as f:
        f.write(markdown(env, rows))
    print(markdown(env, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
