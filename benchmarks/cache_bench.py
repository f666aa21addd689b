"""Disk cache on the GPU: first-call seconds in fresh processes, cold against warm, and against
Torch-TensorRT's own engine cache.

    python benchmarks/cache_bench.py --out DIR [--models resnet50_fp16_b32,attention_fp16_b16] [--repeats 3]

A model name with the suffix `:dynamic` (e.g. resnet50_fp16_b32:dynamic) marks the batch dimension
dynamic (1 to the batch size), so the engines have an optimization profile.

Every figure comes from its own fresh process (one child per measurement), so a warm start pays
what a real restart pays: imports aside, dynamo tracing plus loading. Rows:
  trt_multidev cold        empty cache directory: trace, build, store
  trt_multidev warm        the same directory, a new process: trace, load
  torch_tensorrt           plain backend, no engine cache
  torch_tensorrt cache cold / warm   cache_built_engines + reuse_cached_engines
                           (immutable_weights=False, as its engine cache requires)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)


def child(mode: str, model_name: str, cache_dir: str) -> None:
    start_process = time.perf_counter()
    import torch
    import torch_tensorrt  # imported before the timed call in every mode: a process-start cost

    import gpu_bench

    imports_s = time.perf_counter() - start_process
    name, _, variant = model_name.partition(":")
    build, shape, dtype = gpu_bench.MODELS[name]
    torch.manual_seed(0)
    dev = torch.device("cuda", 0)
    model = build().eval().to(dev).to(dtype)
    x = torch.randn(*shape, device=dev).to(dtype)
    if variant == "dynamic":  # a batch range: one TensorRT optimization profile
        torch._dynamo.mark_dynamic(x, 0, min=1, max=shape[0])
    backend_s: list[float] = []

    def timed(inner):
        def backend(gm, example_inputs, **kwargs):
            start = time.perf_counter()
            try:
                return inner(gm, example_inputs, **kwargs)
            finally:
                backend_s.append(time.perf_counter() - start)
        return backend

    if mode.startswith("trt_multidev"):
        import trt_multidev_backend as tm

        os.environ["TRT_MULTIDEV_CACHE_DIR"] = cache_dir
        compiled = torch.compile(model, backend=timed(tm.backend), options={"min_block_size": 1})
    else:
        from torch_tensorrt.dynamo.backend.backends import torch_tensorrt_backend

        options: dict = {"min_block_size": 1}
        if "cache" in mode:
            options.update(cache_built_engines=True, reuse_cached_engines=True, immutable_weights=False,
                           engine_cache_dir=cache_dir)
        compiled = torch.compile(model, backend=timed(torch_tensorrt_backend), options=options)
    with torch.no_grad():
        ref = model(x)
        torch.cuda.synchronize()
        start = time.perf_counter()
        out = compiled(x)
        torch.cuda.synchronize()
        first = time.perf_counter() - start
        err = float((out.float() - ref.float()).norm() / ref.float().norm())
    stats = None
    if mode.startswith("trt_multidev"):
        import trt_multidev_backend as tm

        stats = tm.stats()
    print("RESULT " + json.dumps({"first_call_s": first, "backend_s": sum(backend_s), "imports_s": imports_s,
                                  "rel_error_vs_eager": err, "stats": stats}), flush=True)


def run_child(mode: str, model: str, cache_dir: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, "child", mode, model, cache_dir],
                          capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": tail[:300]}
    return json.loads(lines[-1][len("RESULT "):])


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        child(*sys.argv[2:5])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--models", default="resnet50_fp16_b32,attention_fp16_b16")
    parser.add_argument("--repeats", type=int, default=3,
                        help="fresh processes per trt_multidev row (cold: each with an empty directory)")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    import gpu_bench

    env = gpu_bench.environment()
    run_child("torch_tensorrt", "tiny_mlp_b1", tempfile.mkdtemp())  # discarded: loads libraries into the page cache
    rows = []
    for model in args.models.split(","):
        theirs = tempfile.mkdtemp(prefix="tt-cache-")
        # Interleaved so that drift in the machine touches every row alike; every cold run of
        # ours starts from an empty directory, every warm run reads the last cold run's entry.
        plan = [("torch_tensorrt", theirs), ("torch_tensorrt cache cold", theirs)]
        for _ in range(args.repeats):
            ours = tempfile.mkdtemp(prefix="tm-cache-")
            plan += [("trt_multidev cold", ours), ("trt_multidev warm", ours), ("torch_tensorrt cache warm", theirs)]
        for mode, directory in plan:
            result = {"model": model, "mode": mode, **run_child(mode, model, directory)}
            print(json.dumps(result), flush=True)
            rows.append(result)
    lines = ["# Disk cache: first call in a fresh process", "",
             "Stamp: " + ", ".join(f"{k} {v}" for k, v in env.items()), "",
             "| model | mode | first call (s) | in the backend (s) | dynamo and the rest (s) | rel. error vs eager | trt_multidev counters |",
             "|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        counters = r.get("stats") or {}
        short = {d: {k: v for k, v in c.items() if v} for d, c in counters.items()} if counters else ""
        first = f"{r['first_call_s']:.2f}" if "first_call_s" in r else "–"
        inside = f"{r['backend_s']:.2f}" if "backend_s" in r else "–"
        rest = f"{r['first_call_s'] - r['backend_s']:.2f}" if "backend_s" in r else "–"
        err = f"{r['rel_error_vs_eager']:.1e}" if "rel_error_vs_eager" in r else r.get("error", "")
        lines.append(f"| {r['model']} | {r['mode']} | {first} | {inside} | {rest} | {err} | {short} |")
    lines += ["", "Medians over the runs of each row (first call, seconds; n = runs):", "",
              "| model | trt_multidev cold | trt_multidev warm | torch_tensorrt cache warm | cold / warm "
              "| in the backend: cold / warm | torch_tensorrt cache warm / trt_multidev warm |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for model in args.models.split(","):
        by: dict[str, list[dict]] = {}
        for r in rows:
            if r["model"] == model and "first_call_s" in r:
                by.setdefault(r["mode"], []).append(r)
        if "trt_multidev cold" in by and "trt_multidev warm" in by:
            def med(mode: str, key: str = "first_call_s") -> float:
                return statistics.median(r[key] for r in by.get(mode, [{key: float("nan")}]))

            cold, warm, theirs = med("trt_multidev cold"), med("trt_multidev warm"), med("torch_tensorrt cache warm")
            n = len(by["trt_multidev warm"])
            lines.append(f"| {model} | {cold:.2f} | {warm:.2f} (n={n}) | {theirs:.2f} | {cold / warm:.2f}× | "
                         f"{med('trt_multidev cold', 'backend_s') / med('trt_multidev warm', 'backend_s'):.1f}× | "
                         f"{theirs / warm:.2f}× |")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(args.out, "cache.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out, "cache.json"), "w") as f:
        json.dump({"environment": env, "rows": rows}, f, indent=1)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
