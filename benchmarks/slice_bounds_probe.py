"""Slice bounds beyond a dimension, on Torch-TensorRT and through trt_multidev (issue 14).

    python benchmarks/slice_bounds_probe.py --out DIR

Hugging Face's sliding-window KV cache keeps `full[:, :, -(window - 1):]`: a start beyond the
dimension while the sequence is shorter than the window, which PyTorch clamps to 0. Mistral's and
Gemma 2's generate() failed through trt_multidev on session 15's H200 (15 cached positions instead
of 16 after a 16-token prompt, then a shape error at the next step). This probe takes the slice
alone, fp16 on cuda:0: `x[:, :, -63:]` and `x[..., 2:100]` of a (1, 2, n, 32) tensor, static
(n = 16) and dynamic (n = 16, then 20 and 40 under mark_dynamic 2..62), through plain
`torch_tensorrt` and through trt_multidev. Per backend and n: the output shapes against eager's,
and whether the values are equal. Writes DIR/slice_bounds_probe.json (GPU, versions, date).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import gpu_bench  # noqa: E402  (puts the repository root on sys.path)
import trt_multidev_backend as tm  # noqa: E402
from trt_multidev_backend.build import first_line_of  # noqa: E402


class WindowCache(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        full = x * 2
        return full.sum(-1), full[:, :, -63:], full[..., 2:100]


def run(backend: str, dynamic: bool) -> list[dict[str, Any]]:
    torch._dynamo.reset()
    tm.reset()
    model = WindowCache()
    options = {"min_block_size": 1, **({"cache": False} if backend == "trt_multidev" else {})}
    compiled = torch.compile(model, backend=backend, options=options)
    rows = []
    for n in (16, 20, 40) if dynamic else (16,):
        x = torch.randn(1, 2, n, 32, device="cuda", dtype=torch.float16)
        if dynamic and n == 16:
            torch._dynamo.mark_dynamic(x, 2, min=2, max=62)
        row: dict[str, Any] = {"backend": backend, "dynamic": dynamic, "n": n}
        try:
            with torch.no_grad():
                out, ref = compiled(x), model(x)
            row["shapes"] = [list(o.shape) for o in out]
            row["eager_shapes"] = [list(r.shape) for r in ref]
            row["equal"] = all(o.shape == r.shape and torch.equal(o, r) for o, r in zip(out[1:], ref[1:]))
        except Exception as exc:  # noqa: BLE001 - what it raised is the finding
            row["error"] = f"{type(exc).__name__}: {first_line_of(exc)}"[:400]
        rows.append(row)
    if backend == "trt_multidev":
        rows[-1]["stats"] = tm.stats()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    import torch_tensorrt  # noqa: F401  (registers the torch_tensorrt backend)

    record = gpu_bench.Record(os.path.join(args.out, "slice_bounds_probe.json"))
    for backend in ("torch_tensorrt", "trt_multidev"):
        for dynamic in (False, True):
            for row in run(backend, dynamic):
                record.add(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
