"""Draw bench.png from a bench.json written by gpu_bench.py (run anywhere with matplotlib).

    python benchmarks/chart.py benchmarks/results/<run>/bench.json
"""

from __future__ import annotations

import json
import os
import sys


def main(path: str) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(path) as f:
        data = json.load(f)
    rows = [r for r in data["rows"] if "median_ms" in r]
    models = list(dict.fromkeys(r["model"] for r in rows))
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(4 * len(models), 3.6))
    for ax, model in zip(axes, models):
        values = [next((r["median_ms"] for r in rows if r["model"] == model and r["backend"] == b), 0) for b in backends]
        bars = ax.bar(range(len(backends)), values, color=["#999999", "#5b8def", "#e8a33d", "#2e9e5b"][: len(backends)])
        ax.set_xticks(range(len(backends)), backends, rotation=30, ha="right", fontsize=8)
        ax.set_title(model, fontsize=9)
        ax.set_ylabel("median latency (ms)", fontsize=8)
        for bar, value in zip(bars, values):
            ax.annotate(f"{value:.2f}", (bar.get_x() + bar.get_width() / 2, value), ha="center", va="bottom", fontsize=7)
    env = data["environment"]
    fig.suptitle(f"{env['gpu']} · torch {env['torch']} · torch_tensorrt {env['torch_tensorrt']} · {env['date']}", fontsize=8)
    fig.tight_layout()
    out = os.path.join(os.path.dirname(path), "bench.png")
    fig.savefig(out, dpi=110)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
