"""Which nodes make Torch-TensorRT repeat "Detected unparsable type in node formatting", and how
many of its warnings reach the log per build (issue 14; repeats.py).

    python benchmarks/repeated_warnings_probe.py --out DIR

A 4-layer Llama (real_models.py's, 4 x 128, fp16) is compiled through trt_multidev three times:
as is (repeats collapsed), with `log_level=debug` (every repeat shown) and with
`fp32_accumulation`. Per variant: Torch-TensorRT WARNING records that reached the log, the
"unparsable" ones among them, and the first node of each kind that made its formatter warn.
Writes DIR/repeated_warnings.json (GPU, versions, date).
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import sys
from typing import Any

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import gpu_bench  # noqa: E402  (puts the repository root on sys.path)
import real_models  # noqa: E402
import trt_multidev_backend as tm  # noqa: E402

VARIANTS = {"default": {}, "log_level_debug": {"log_level": "debug"}, "fp32_accumulation": {"fp32_accumulation": True}}


class Records(logging.Handler):
    """Torch-TensorRT's WARNING records that got through its loggers' filters."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("torch_tensorrt"):
            self.texts.append(record.getMessage())


def kind(value: Any) -> str:
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return f"{type(value).__name__}[{', '.join(type(e).__name__ for e in value)}]"
    return type(value).__name__


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    tm.register()
    from torch_tensorrt.dynamo.conversion import _TRTInterpreter as interpreter, converter_utils

    formatting = converter_utils.get_node_io
    nodes: dict[str, str] = {}

    def watched(node: torch.fx.Node, constants: Any) -> str:
        values = [node.meta.get("val")] + [a.meta.get("val") for a in node.args if isinstance(a, torch.fx.Node)]
        if any(isinstance(v, (list, tuple)) and any(e is None for e in v) for v in values):
            nodes.setdefault(str(node.target), f"{node.format_node()[:200]} | val: {kind(values[0])}")
        return formatting(node, constants)

    interpreter.get_node_io = watched
    records = Records()
    logging.getLogger().addHandler(records)
    rows = {}
    for name, options in VARIANTS.items():
        records.texts.clear()
        nodes.clear()
        torch._dynamo.reset()
        case = real_models.llama(torch.device("cuda:0"))
        compiled = torch.compile(case.module, backend="trt_multidev", options={"cache": False, **options})
        with torch.no_grad():
            compiled(*case.inputs)
        counts = collections.Counter(records.texts)
        rows[name] = {"warnings": len(records.texts), "unparsable": sum(n for t, n in counts.items() if "unparsable" in t),
                      "compiles": tm.stats()["cuda:0"]["compiles"], "most_repeated": counts.most_common(3),
                      "nodes_with_none_in_their_values": nodes.copy()}
        print(name, json.dumps(rows[name])[:1500], flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "repeated_warnings.json"), "w") as f:
        json.dump({"env": gpu_bench.environment(), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
