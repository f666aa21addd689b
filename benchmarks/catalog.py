"""The single-GPU device-failure catalog, run with one backend per process.

    python benchmarks/catalog.py run --backend trt_multidev --out DIR
    python benchmarks/catalog.py run --backend torch_tensorrt --out DIR
    python benchmarks/catalog.py table --out DIR        # catalog.md from both JSON files

One process per backend, so a backend that breaks the CUDA context cannot spoil the other's row.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "gpu"))


def cmd_run(args: argparse.Namespace) -> int:
    import torch

    from scenarios import CATALOG

    rows = {}
    for key, (title, run) in CATALOG.items():
        torch._dynamo.reset()
        outcome = run(args.backend)
        rows[key] = {"title": title, "ok": outcome.ok, "detail": outcome.detail,
                     "rel_error": outcome.rel_error, "out_device": outcome.out_device}
        print(f"{args.backend:15} {key:8} {'PASS' if outcome.ok else 'FAIL'}  {outcome.detail}", flush=True)
        try:
            torch.cuda.synchronize()
        except Exception as exc:  # a sticky CUDA error: later rows would only echo it
            rows[key]["detail"] += f" (CUDA context broken afterwards: {exc})"
            break
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"catalog_{args.backend}.json"), "w") as f:
        json.dump(rows, f, indent=1)
    return 0


def cmd_table(args: argparse.Namespace) -> int:
    data = {}
    for backend in ("trt_multidev", "torch_tensorrt"):
        path = os.path.join(args.out, f"catalog_{backend}.json")
        if os.path.exists(path):
            with open(path) as f:
                data[backend] = json.load(f)
    keys = list(dict.fromkeys(k for rows in data.values() for k in rows))
    lines = ["| scenario | what | trt_multidev | plain torch_tensorrt |", "|---|---|---|---|"]
    for key in keys:
        cells = []
        for backend in ("trt_multidev", "torch_tensorrt"):
            row = data.get(backend, {}).get(key)
            if row is None:
                cells.append("not run")
            else:
                detail = row["detail"].replace("|", "\\|").replace("\n", " ")
                cells.append(("pass" if row["ok"] else "**fail**") + (f": {detail}" if detail else ""))
        title = next(rows[key]["title"] for rows in data.values() if key in rows)
        lines.append(f"| {key} | {title} | {cells[0]} | {cells[1]} |")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(args.out, "catalog.md"), "w") as f:
        f.write(text)
    print(text)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run")
    run.add_argument("--backend", choices=("trt_multidev", "torch_tensorrt"), required=True)
    run.add_argument("--out", required=True)
    run.set_defaults(fn=cmd_run)
    table = sub.add_parser("table")
    table.add_argument("--out", required=True)
    table.set_defaults(fn=cmd_table)
    args = parser.parse_args()
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
