"""What TensorRT-RTX keeps in an engine's runtime (kernel) cache as a dynamic engine meets new
shapes (issue 12: should a disk-cache entry be written back after shapes met later?).

    python benchmarks/kernel_cache_probe.py --out DIR [--strategies eager,lazy,none]

For a small MLP (fp32) and ResNet-18 (fp16), batch dimension marked dynamic (1..64), built by
trt_multidev with each kernel specialization strategy: the size of the serialized kernel cache
after the build and after the first call at each new batch (and 2 s later, for `lazy`, whose
kernels compile in the background), with that first call's milliseconds and the median of 20
calls after it. Writes DIR/kernel_cache_probe.json (GPU, versions, date, commit).

    python benchmarks/kernel_cache_probe.py --out DIR --two-processes

A warm second process: ResNet-18 (eager specialization) run twice, each in a new process sharing
one disk cache; the first builds and meets the batches, and at exit writes back the kernels
compiled since it stored the engine; the second loads it. Per process, as above, plus whether the
engine's kernels came from the cache. Writes DIR/kernel_cache_two_processes.json.
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
from typing import Any

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import gpu_bench  # noqa: E402  (puts the repository root on sys.path)
import trt_multidev_backend as tm  # noqa: E402
from trt_multidev_backend.specialize import dynamic_of  # noqa: E402

BATCHES = (3, 17, 50, 17, 3)


class Mlp(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(256, 1024), torch.nn.Linear(1024, 256)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.nn.functional.gelu(self.fc1(x))) + x


def model_and_input(name: str, batch: int) -> tuple[torch.nn.Module, Any]:
    if name == "mlp":
        return Mlp().cuda().eval(), lambda n: torch.randn(n, 256, device="cuda")
    import torchvision

    model = torchvision.models.resnet18(weights=None).cuda().half().eval()
    return model, lambda n: torch.randn(n, 3, 224, 224, device="cuda", dtype=torch.half)


def engines_of(graphs: list[Any]) -> list[Any]:
    return [m for g in graphs if isinstance(dynamic_of(getattr(g, "fn", None)), torch.nn.Module)
            for m in dynamic_of(g.fn).modules() if type(m).__name__ == "TensorRTEngine"]


def probe(name: str, strategy: str, cache_dir: str | None = None) -> dict[str, Any]:
    torch._dynamo.reset()
    tm.reset()
    model, make = model_and_input(name, 8)
    graphs: list[Any] = []

    def capture(gm: Any, example_inputs: Any, **kwargs: Any) -> Any:
        fn = tm.backend(gm, example_inputs, **kwargs)
        graphs.append(fn)
        return fn

    cache = {"cache": True, "cache_dir": cache_dir} if cache_dir else {"cache": False}
    compiled = torch.compile(model, backend=capture, options={
        "min_block_size": 1, "kernel_specialization": strategy, **cache})
    x = make(8)
    torch._dynamo.mark_dynamic(x, 0, min=1, max=64)
    row: dict[str, Any] = {"model": name, "strategy": strategy, "steps": []}
    with torch.no_grad():
        compiled(x)
        torch.cuda.synchronize()
        engines = [e for e in engines_of(graphs) if e.dynamic]
        if not engines:
            row["error"] = "no dynamic TensorRTEngine"
            return row
        sizes = lambda: [len(e.kernel_cache()) for e in engines]  # noqa: E731
        row["after_build"] = sizes()
        row["kernels_loaded"] = [e.runtime_cache_loaded for e in engines]
        for n in BATCHES:
            xn = make(n)
            start = time.perf_counter()
            compiled(xn)
            torch.cuda.synchronize()
            first_ms = (time.perf_counter() - start) * 1000
            after = sizes()
            time.sleep(2 if strategy == "lazy" else 0)
            later = sizes()
            times = []
            for _ in range(20):
                start = time.perf_counter()
                compiled(xn)
                torch.cuda.synchronize()
                times.append((time.perf_counter() - start) * 1000)
            row["steps"].append({"batch": n, "first_ms": round(first_ms, 3), "kernels_after": after,
                                 "kernels_2s_later": later, "median_ms": round(statistics.median(times), 4),
                                 "kernels_after_20": sizes()})
    return row


def two_processes(out: str) -> int:
    record = gpu_bench.Record(os.path.join(out, "kernel_cache_two_processes.json"))  # a row per process
    with tempfile.TemporaryDirectory(prefix="trt_multidev_probe_") as cache_dir:
        for _ in range(2):
            done = subprocess.run([sys.executable, __file__, "--out", out, "--child-cache-dir", cache_dir],
                                  capture_output=True, text=True)
            lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
            record.add(json.loads(lines[-1]) if lines else {"error": done.stderr[-600:]})
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--strategies", default="eager,lazy,none")
    parser.add_argument("--models", default="mlp,resnet18")
    parser.add_argument("--two-processes", action="store_true", help="the warm-second-process run")
    parser.add_argument("--child-cache-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_cache_dir:  # one process of --two-processes: its row on stdout's last line
        print(json.dumps(probe("resnet18", "eager", args.child_cache_dir)), flush=True)
        return 0
    os.makedirs(args.out, exist_ok=True)
    if args.two_processes:
        return two_processes(args.out)
    record = gpu_bench.Record(os.path.join(args.out, "kernel_cache_probe.json"))
    for name in args.models.split(","):
        for strategy in args.strategies.split(","):
            try:
                row = probe(name, strategy)
            except Exception as exc:  # a probe: record and go on
                row = {"model": name, "strategy": strategy, "error": f"{type(exc).__name__}: {exc}"[:300]}
            record.add(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
