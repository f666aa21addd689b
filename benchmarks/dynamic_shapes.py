"""Changing batch sizes (issue 12): a dynamic engine against static engines and inductor, in one run.

    python benchmarks/dynamic_shapes.py --out DIR [--model resnet18] [--batches 8,16,24,8,32]
        [--variants auto,eager,eager+graphs,static,inductor] [--iters 30]

ResNet-18 fp16 (torchvision, random weights) on cuda:0. Each variant calls the model with the
batches in order, as a server meeting new batch sizes would; per batch: the first call's
milliseconds (compiles included) and the median of --iters calls after 10 warm-up calls
(CUDA events), three times, their median. Variants:
  auto, lazy, eager, none  trt_multidev, default torch.compile (automatic dynamic shapes: the
                           first shape change recompiles a dynamic engine), with that TensorRT-RTX
                           kernel specialization (auto: TensorRT's default)
  eager+graphs             as eager, and TensorRT-RTX's own CUDA graphs for dynamic engines
  eager+bounded            as eager, the batch marked dynamic from the first call with
                           torch._dynamo.mark_dynamic(x, 0, min=2, max=<largest batch>): one engine
                           whose profile is that range (automatic dynamic shapes leave the maximum
                           open, and Torch-TensorRT 2.11 then profiles up to 2^16 × the minimum)
  eager+dynamic            as eager, with torch.compile(dynamic=True): dynamic from the first call
  eager+nostatic           as eager, with static_shapes=0: the dynamic engine serves every batch
                           (the default builds a static engine at a batch's third call: each step
                           makes calls 2 and 3 before timing, `static_build_ms`)
  static                   trt_multidev with dynamic=False: one static engine per batch
  static+graphs            as static, each batch's graph captured in a CUDA graph by trt_multidev
  inductor                 torch.compile default (automatic dynamic shapes)
trt_multidev's disk cache is off in every variant. Writes DIR/dynamic_shapes.json (GPU,
versions, date, commit, raw medians) after every variant.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import gpu_bench  # noqa: E402  (puts the repository root on sys.path)
import trt_multidev_backend as tm  # noqa: E402
from trt_multidev_backend.specialize import STATIC_AFTER  # noqa: E402

SPECIALIZATIONS = ("auto", "lazy", "eager", "none")


def model_for(name: str) -> torch.nn.Module:
    import torchvision

    return getattr(torchvision.models, name)(weights=None).cuda().half().eval()


def compiled_for(variant: str, model: torch.nn.Module) -> Callable[..., Any]:
    torch._dynamo.reset()
    if variant == "inductor":
        return torch.compile(model)
    options: dict[str, Any] = {"cache": False, "min_block_size": 1}
    if variant in ("static", "static+graphs"):
        options["cuda_graphs"] = variant.endswith("graphs")
        return torch.compile(model, backend="trt_multidev", options=options, dynamic=False)
    specialization, *flags = variant.split("+")
    unknown = set(flags) - {"graphs", "bounded", "dynamic", "nostatic"}
    if specialization not in SPECIALIZATIONS or unknown:
        raise ValueError(f"unknown variant {variant!r}")
    options["kernel_specialization"] = specialization
    if "graphs" in flags:
        options["cuda_graphs"] = True
    if "nostatic" in flags:
        options["static_shapes"] = 0
    return torch.compile(model, backend="trt_multidev", options=options, dynamic=True if "dynamic" in flags else None)


def run_variant(variant: str, model: torch.nn.Module, batches: list[int], iters: int,
                ref: dict[int, torch.Tensor], inputs: dict[int, torch.Tensor]) -> list[dict[str, Any]]:
    compiled = compiled_for(variant, model)
    rows = []
    with torch.no_grad():
        for step, batch in enumerate(batches):
            x = inputs[batch]
            if "bounded" in variant.split("+"):
                x = x.clone()  # marks stay with the tensor: a fresh one per step
                torch._dynamo.mark_dynamic(x, 0, min=2, max=max(batches))
            torch.cuda.synchronize()
            start = time.perf_counter()
            out = compiled(x)
            torch.cuda.synchronize()
            first = (time.perf_counter() - start) * 1e3
            start = time.perf_counter()
            for _ in range(STATIC_AFTER - 1):  # the batch's third call builds its static engine (static_shapes)
                compiled(x)
            torch.cuda.synchronize()
            building = (time.perf_counter() - start) * 1e3
            # Three timed runs per batch, their median: one run of a ~1 ms model is noisy here.
            median = statistics.median(gpu_bench.median_latency_ms(lambda: compiled(x), iters, warmup=10)
                                       for _ in range(3))
            rows.append({"step": step, "batch": batch, "first_call_ms": round(first, 3),
                         "static_build_ms": round(building, 3),
                         "median_ms": round(median, 4), "rel_err": gpu_bench.rel_error(out, ref[batch])})
            print(f"{variant:14s} step {step} batch {batch:3d}: first {first:9.1f} ms, calls 2-3 (a static engine "
                  f"built) {building:8.1f} ms, median {median:.4f} ms, "
                  f"rel err {rows[-1]['rel_err']:.1e}", flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--batches", default="8,16,24,8,32")
    parser.add_argument("--variants", default="auto,eager,eager+graphs,static,inductor")
    parser.add_argument("--iters", type=int, default=30)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    batches = [int(b) for b in args.batches.split(",")]
    torch.manual_seed(0)
    model = model_for(args.model)
    inputs = {b: torch.randn(b, 3, 224, 224, device="cuda", dtype=torch.half) for b in set(batches)}
    with torch.no_grad():
        ref = {b: model(x) for b, x in inputs.items()}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=HERE).stdout.strip()
    result: dict[str, Any] = {"env": gpu_bench.environment(), "git_commit": commit, "model": f"{args.model} fp16",
                              "batches": batches, "iters": args.iters, "variants": {}}
    for variant in args.variants.split(","):
        try:
            result["variants"][variant] = run_variant(variant, model, batches, args.iters, ref, inputs)
        except Exception as exc:
            result["variants"][variant] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
            print(variant, "failed:", result["variants"][variant]["error"], flush=True)
        result["stats"] = tm.stats()
        with open(os.path.join(args.out, "dynamic_shapes.json"), "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
