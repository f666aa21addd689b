"""N-GPU figures: replica throughput, compile time with cross-GPU reuse, latency per GPU.

    python benchmarks/multi_gpu_bench.py --out DIR [--model resnet50_fp16_b32] [--gpus N]

N is every visible GPU unless --gpus says otherwise.
- throughput: one replica per GPU, one thread per GPU, against one GPU alone (target >= 0.95 x N);
- compile time: replicate() on N GPUs against one GPU, each in a fresh process with an empty
  cache (target <= 1.5x: one build plus N - 1 loads, not N builds);
- latency: steady-state median on each GPU against cuda:0 (target within 2 %).
MULTI_GPU_DRY_RUN=1 uses cuda:0 N times (N = 2 by default), to check the script on one GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)
DRY = os.environ.get("MULTI_GPU_DRY_RUN") == "1"


def devices(n: int) -> list[str]:
    return ["cuda:0"] * n if DRY else [f"cuda:{i}" for i in range(n)]


def child_compile(model_name: str, count: int) -> None:
    import torch

    import gpu_bench
    import trt_multidev_backend as tm

    build, shape, dtype = gpu_bench.MODELS[model_name]
    model = build().eval().to(dtype)
    x = torch.randn(*shape).to(dtype)
    start = time.perf_counter()
    tm.replicate(model, devices(count), example_inputs=(x,), options={"min_block_size": 1})
    torch.cuda.synchronize()
    print("RESULT " + json.dumps({"seconds": time.perf_counter() - start, "stats": tm.stats()}), flush=True)


def compile_seconds(model_name: str, count: int) -> dict:
    env = {**os.environ, "TRT_MULTIDEV_CACHE_DIR": tempfile.mkdtemp(prefix="mgpu-")}
    out = subprocess.run([sys.executable, __file__, "child", model_name, str(count)], env=env,
                         capture_output=True, text=True, timeout=900)
    lines = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
    if not lines:
        return {"error": (out.stderr.strip().splitlines() or ["?"])[-1][:300]}
    return json.loads(lines[-1][len("RESULT "):])


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        child_compile(sys.argv[2], int(sys.argv[3]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", default="resnet50_fp16_b32")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--gpus", type=int, default=0, help="how many GPUs (default: every visible one)")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    import torch

    count = args.gpus or (2 if DRY else torch.cuda.device_count())

    import gpu_bench
    import trt_multidev_backend as tm

    env = {**gpu_bench.environment(), "dry_run": DRY}
    one, many = compile_seconds(args.model, 1), compile_seconds(args.model, count)
    build, shape, dtype = gpu_bench.MODELS[args.model]
    model = build().eval().to(dtype)
    x = torch.randn(*shape).to(dtype)
    replicas = tm.replicate(model, devices(count), example_inputs=(x,), options={"min_block_size": 1})
    inputs = [x.to(r.device) for r in replicas]
    latency = {}
    with torch.no_grad():
        for r, xi in zip(replicas, inputs):
            with torch.cuda.device(r.device):
                latency[str(r.device) + ("" if not DRY else f"#{len(latency)}")] = gpu_bench.median_latency_ms(
                    lambda: r(xi), 100, 20)

    def run(selected: list[int]) -> float:
        counts = [0] * len(replicas)
        stop = time.perf_counter() + args.seconds

        def worker(i: int) -> None:
            with torch.no_grad():
                while time.perf_counter() < stop:
                    replicas[i](inputs[i])
                    counts[i] += 1
                torch.cuda.synchronize(replicas[i].device)

        threads = [threading.Thread(target=worker, args=(i,)) for i in selected]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return sum(counts) * shape[0] / (time.perf_counter() - start)

    single, every = run([0]), run(list(range(count)))
    lat = list(latency.values())
    result = {
        "environment": env, "gpus": count,
        "compile_one_gpu": one, "compile_n_gpus": many,
        "compile_ratio": many.get("seconds", float("nan")) / one.get("seconds", float("nan")),
        "latency_ms": latency, "latency_ratio_over_first": [v / lat[0] for v in lat],
        "throughput_one_gpu": single, "throughput_n_gpus": every, "throughput_ratio": every / single,
        "throughput_per_gpu_share": every / single / count,
    }
    with open(os.path.join(args.out, f"multi_gpu_x{count}.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps({k: v for k, v in result.items() if k != "environment"}, indent=1))
    worst = max(abs(r - 1) for r in result["latency_ratio_over_first"])
    print(f"{count} GPUs: throughput x{result['throughput_ratio']:.2f} (target >= {0.95 * count:.2f}); "
          f"compile x{result['compile_ratio']:.2f} (target <= 1.5); latency within {worst:.1%} of cuda:0 "
          "(target <= 2 %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
