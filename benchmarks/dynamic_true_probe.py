"""Where `torch.compile(dynamic=True)` stops Torch-TensorRT (issue 12, item 3).

    python benchmarks/dynamic_true_probe.py --out DIR

A two-layer MLP (256 → 512 → 256, fp32, cuda:0) compiled three ways through trt_multidev with
strict=1 (a failure raises instead of falling back): dynamo's automatic dynamic shapes (batch 2,
then 5: the second graph is dynamic), `mark_dynamic(x, 0, min=1, max=64)`, and `dynamic=True`
(batch 2 first). Per way: built or not, the graphs' placeholders (SymInt or tensor, with sizes),
and for a failure the exception's type, first line and innermost 14 frames. Writes
DIR/dynamic_true_probe.json (GPU, versions, date).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Any

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import gpu_bench  # noqa: E402  (puts the repository root on sys.path)
import trt_multidev_backend as tm  # noqa: E402
from trt_multidev_backend.build import first_line_of  # noqa: E402


def placeholders(gm: torch.fx.GraphModule) -> list[str]:
    out = []
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            value = node.meta.get("example_value")
            out.append(f"{node.name}: {tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__}")
    return out


def way(name: str) -> dict[str, Any]:
    torch._dynamo.reset()
    tm.reset()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 256)).cuda().eval()
    graphs: list[list[str]] = []

    def capture(gm: Any, example_inputs: Any, **kwargs: Any) -> Any:
        graphs.append(placeholders(gm))
        return tm.backend(gm, example_inputs, **kwargs)

    options = {"strict": True, "cache": False, "min_block_size": 1}
    compiled = torch.compile(model, backend=capture, options=options, dynamic=True if name == "dynamic=True" else None)
    row: dict[str, Any] = {"way": name, "graphs": graphs}
    worst = 0.0
    try:
        with torch.no_grad():
            for batch in (2, 5, 16):
                x = torch.randn(batch, 256, device="cuda")
                if name == "mark_dynamic":
                    torch._dynamo.mark_dynamic(x, 0, min=1, max=64)
                worst = max(worst, gpu_bench.rel_error(compiled(x), model(x)))
    except Exception as exc:
        cause = exc.__cause__ or exc
        row["error"] = f"{type(exc).__name__}: {first_line_of(exc)}"
        row["cause"] = f"{type(cause).__name__}: {first_line_of(cause)}"
        frames = traceback.extract_tb(cause.__traceback__)[-14:]
        row["frames"] = [f"{os.path.basename(f.filename)}:{f.lineno} {f.name}" for f in frames]
        return row
    row["worst_rel_error"] = worst
    row["stats"] = tm.stats()
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    record = gpu_bench.Record(os.path.join(args.out, "dynamic_true_probe.json"))
    for name in ("automatic", "mark_dynamic", "dynamic=True"):
        record.add(way(name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
