"""One model across several GPUs: per-call latency of a pipelined model, compiled whole by
trt_multidev (one stage per GPU), against eager, inductor, and the same stages compiled one by
one and called in sequence with explicit copies (the hand-made way). One run, interleaved.

    python benchmarks/pipeline_bench.py --out DIR [--gpus N] [--iters 100]

Models: a two-stage MLP (cuda:0 -> cuda:1) and a transformer stack of 8 layers spread over N
GPUs (N = every visible GPU, at most 4), fp16. Target: trt_multidev <= 1.05 x the sum of stages,
and ahead of inductor. MULTI_GPU_DRY_RUN=1 puts every stage on cuda:0 (a script check only).
Writes DIR/pipeline.json (GPU names, versions, date, commit, raw medians).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
from typing import Any, Callable

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

import trt_multidev_backend as tm  # noqa: E402

DRY = os.environ.get("MULTI_GPU_DRY_RUN") == "1"


class Pipelined(nn.Module):
    """Stages on their devices, the activation copied from one to the next."""

    def __init__(self, stages: list[nn.Module], devices: list[torch.device]) -> None:
        super().__init__()
        self.stages = nn.ModuleList(s.to(d) for s, d in zip(stages, devices))
        self.devices = devices

    def forward(self, x):
        for stage, device in zip(self.stages, self.devices):
            x = stage(x.to(device))
        return x


def mlp_stages() -> list[nn.Module]:
    return [nn.Sequential(nn.Linear(1024, 4096), nn.GELU(), nn.Linear(4096, 1024)) for _ in range(2)]


def transformer_stages(count: int) -> list[nn.Module]:
    layers = [nn.TransformerEncoderLayer(512, 8, 2048, batch_first=True, dropout=0.0) for _ in range(8)]
    return [nn.Sequential(*layers[i * 8 // count:(i + 1) * 8 // count]) for i in range(count)]


def median_ms(fn: Callable[[], Any], devices: list[torch.device], iters: int) -> float:
    import time

    for _ in range(10):
        fn()
    times = []
    for _ in range(iters):
        for d in devices:
            torch.cuda.synchronize(d)
        start = time.perf_counter()
        fn()
        for d in devices:
            torch.cuda.synchronize(d)
        times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    return times[len(times) // 2]


def measure(name: str, stages: list[nn.Module], devices: list[torch.device], shape: tuple, iters: int) -> dict:
    model = Pipelined(stages, devices).eval().half()
    x = torch.randn(*shape, device=devices[0], dtype=torch.half)
    options = {"min_block_size": 1}
    result: dict[str, Any] = {"devices": [str(d) for d in devices], "shape": list(shape)}
    with torch.no_grad():
        ref = model(x)
        runs: dict[str, Callable[[], Any]] = {"eager": lambda: model(x)}
        try:
            whole = torch.compile(model, backend="trt_multidev", options=options)
            out = whole(x)
            result["trt_multidev_rel_error"] = float((out.float() - ref.float()).norm() / ref.float().norm())
            result["trt_multidev_stats"] = tm.stats()
            runs["trt_multidev"] = lambda: whole(x)
        except Exception as exc:
            result["trt_multidev_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        try:
            each = [torch.compile(s, backend="trt_multidev", options=options) for s in model.stages]

            def by_stage():
                h = x
                for stage, device in zip(each, devices):
                    h = stage(h.to(device))
                return h

            by_stage()
            runs["sum_of_stages"] = by_stage
        except Exception as exc:
            result["sum_of_stages_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        try:
            inductor = torch.compile(model)
            inductor(x)
            runs["inductor"] = lambda: inductor(x)
        except Exception as exc:
            result["inductor_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        rounds: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(3):  # interleaved rounds: the machine's drift hits every backend alike
            for key, fn in runs.items():
                rounds[key].append(median_ms(fn, devices, iters))
    result["median_ms_per_round"] = rounds
    result["median_ms"] = {k: sorted(v)[1] for k, v in rounds.items()}
    ms = result["median_ms"]
    if "trt_multidev" in ms and "sum_of_stages" in ms:
        result["ratio_to_sum_of_stages"] = ms["trt_multidev"] / ms["sum_of_stages"]
    if "trt_multidev" in ms and "inductor" in ms:
        result["ratio_to_inductor"] = ms["trt_multidev"] / ms["inductor"]
    print(name, json.dumps({k: result.get(k) for k in ("median_ms", "ratio_to_sum_of_stages", "ratio_to_inductor")}),
          flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--gpus", type=int, default=0, help="how many GPUs (default: every visible one, at most 4)")
    parser.add_argument("--iters", type=int, default=100)
    args = parser.parse_args()
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    count = args.gpus or min(visible, 4)
    if DRY:
        count = max(count, 2)
    elif count < 2:
        print(f"pipeline_bench: needs two or more GPUs ({visible} visible; MULTI_GPU_DRY_RUN=1 checks the script)")
        return 2
    devices = [torch.device("cuda", 0 if DRY else i) for i in range(count)]
    os.makedirs(args.out, exist_ok=True)
    import torch_tensorrt

    torch.cuda.set_device(devices[0])
    results = {
        "two_stage_mlp": measure("two_stage_mlp", mlp_stages(), devices[:2], (64, 1024), args.iters),
        "transformer_stack": measure("transformer_stack", transformer_stages(count), devices, (8, 256, 512),
                                     args.iters),
    }
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=HERE).stdout.strip()
    record = {
        "gpus": count, "dry_run": DRY, "gpu_names": sorted({torch.cuda.get_device_name(d) for d in devices}),
        "versions": {"torch": torch.__version__, "torch_tensorrt": torch_tensorrt.__version__},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": commit or None, "models": results,
    }
    with open(os.path.join(args.out, "pipeline.json"), "w") as f:
        json.dump(record, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
