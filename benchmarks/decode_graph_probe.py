"""What the decode steps of a sliding-window generate() hand the backend: every graph's number
inputs (their sources, symbols, ranges), which nodes scalars.py marks for PyTorch, and how the
build went, for Mistral and Gemma 2 (the configs of tests/gpu/test_real_models.py's GENERATE).

    python benchmarks/decode_graph_probe.py --out DIR [--models mistral,gemma2,qwen2] [--device cuda:0]
                                            [--keep-unread-numbers]

Writes DIR/<model>.txt (one section per graph, plus the graph a converter raised in and what
Torch-TensorRT's partitioner left out, where either happened) and DIR/<model>.json (tokens equal, graphs,
fallbacks, what ran in PyTorch). Runs with the real Torch-TensorRT delegate; on a machine without
one, --delegate picks another (`tests/_delegates.py:run_graph` names the CPU stand-in).
--keep-unread-numbers hands Torch-TensorRT the number arguments nothing reads, as before session 17
(lowering.unread_numbers_dropped off): an A/B for what that pass changes (Qwen2's decode step met an
`aten.clone` Torch-TensorRT refused on session 17's H200, not on session 15's).
"""

from __future__ import annotations

import argparse
import json
import logging
import pathlib
import sys
import traceback

import torch
from torch.multiprocessing.reductions import StorageWeakRef

import trt_multidev_backend as tm
from trt_multidev_backend import pipeline as _pipeline
from trt_multidev_backend.graphinfo import IN_PYTORCH, meta_value, source_name

CONFIGS = {
    "mistral": {"sliding_window": 64},
    "gemma2": {"head_dim": 32, "sliding_window": 64},
    "qwen2": {},
}


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor{tuple(value.shape)} {str(value.dtype).removeprefix('torch.')}"
    if isinstance(value, (torch.SymInt, torch.SymFloat, torch.SymBool)):
        node = value.node
        ranges = node.shape_env.var_to_range if node.shape_env is not None else {}
        bounds = {str(s): str(ranges.get(s)) for s in node.expr.free_symbols}
        return f"{type(value).__name__}({node.expr}, hint={node.hint}, ranges={bounds})"
    return f"{type(value).__name__}({value!r})"[:120]


def dump(gm: torch.fx.GraphModule, title: str) -> str:
    lines = [f"== {title}: {len(gm.graph.nodes)} nodes"]
    for node in gm.graph.nodes:
        value = meta_value(node)
        mark = node.meta.get(IN_PYTORCH)
        if node.op == "placeholder":
            if isinstance(value, torch.Tensor) and not mark:
                continue
            lines.append(f"  in   {node.name}: {_describe(value)} source={source_name(node)}")
        elif node.op != "output":
            target = getattr(node.target, "__name__", str(node.target))
            args = ", ".join(a.name for a in node.all_input_nodes)
            lines.append(f"  {'PT' if mark else '  '}   {node.name} = {target}({args}): {_describe(value)}"
                         + (f"  [{mark}]" if mark else ""))
    output = next(n for n in gm.graph.nodes if n.op == "output")
    storages = {}
    for node in gm.graph.nodes:
        value = meta_value(node)
        if node.op == "placeholder" and isinstance(value, torch.Tensor):
            try:
                storages[StorageWeakRef(value.untyped_storage())] = node.name
            except Exception:  # noqa: BLE001 - a probe: storage not inspectable
                pass
    for node in output.all_input_nodes:
        value = meta_value(node)
        alias = None
        if isinstance(value, torch.Tensor):
            try:
                alias = storages.get(StorageWeakRef(value.untyped_storage()))
            except Exception:  # noqa: BLE001
                alias = "?"
        lines.append(f"  out  {node.name}: {_describe(value)}" + (f"  ALIASES INPUT {alias}" if alias else ""))
    return "\n".join(lines)


def _record_failing_graphs(sections: list[str]) -> None:
    """Where Torch-TensorRT's converter raises, the graph it was converting (after its own
    lowering and partitioning), with the failing node's inputs and users: which `aten.clone` it
    refuses, and why (a copy of its graph's input that is also its output, with dynamic shapes)."""
    try:
        from trt_multidev_backend.delegate import TorchTensorRTDelegate
    except ImportError:
        return
    original = TorchTensorRTDelegate.failing_op

    def failing_op(exc: BaseException) -> str | None:
        node = TorchTensorRTDelegate.failing_node(exc)
        if node is not None:
            users = ", ".join(f"{u.name} ({u.op})" for u in node.users)
            inputs = ", ".join(f"{a.name} ({a.op})" for a in node.all_input_nodes)
            sections.append(f"== failing node {node.name} = {node.target}: inputs {inputs}; users {users}\n"
                            + str(node.graph)[:20000])
        return original(exc)

    TorchTensorRTDelegate.failing_op = staticmethod(failing_op)


def _record_partitions(sections: list[str]) -> None:
    """Torch-TensorRT's partitioner summary wherever it left ops out of its engines ("Unsupported or
    Excluded Nodes", logged at debug level): which ops split a graph (torch.sym_sum, session 18)."""

    class _Partitions(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            message = record.getMessage()
            if "Unsupported or Excluded Nodes" in message:
                left = message.split("Unsupported or Excluded Nodes", 1)[1].strip(" :\n")
                if left:
                    sections.append("== Torch-TensorRT's partitioner left out:\n" + left[:4000])

    partitioning = logging.getLogger("torch_tensorrt.dynamo.partitioning")
    partitioning.setLevel(logging.DEBUG)  # a probe: this logger only, for its summary
    partitioning.addHandler(_Partitions(logging.DEBUG))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--models", default="mistral,gemma2")
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--delegate", default=None)
    parser.add_argument("--new-tokens", type=int, default=12)
    parser.add_argument("--keep-unread-numbers", action="store_true")
    args = parser.parse_args()
    if args.keep_unread_numbers:
        from trt_multidev_backend import delegate as _delegate

        _delegate.unread_numbers_dropped = lambda gm, inputs: 0
    import transformers

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    sections: list[str] = []
    original = _pipeline.numbers_in_pytorch

    def spy(gm: torch.fx.GraphModule) -> list[str]:
        notes = original(gm)
        sections.append(dump(gm, f"graph {len(sections)} as the delegate gets it ({'; '.join(notes) or 'nothing marked'})"))
        return notes

    _pipeline.numbers_in_pytorch = spy
    _record_failing_graphs(sections)
    _record_partitions(sections)
    warned: list[str] = []

    class _Warnings(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.WARNING:
                warned.append(record.getMessage()[:600])

    logging.getLogger("trt_multidev").addHandler(_Warnings())
    options = {"delegate": args.delegate} if args.delegate else {}
    for name in args.models.split(","):
        sections.clear()
        warned.clear()
        torch.manual_seed(0)
        config = transformers.AutoConfig.for_model(
            name, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=8,
            num_key_value_heads=2, vocab_size=1000, max_position_embeddings=128, initializer_range=0.1,
            **CONFIGS[name])
        lm = transformers.AutoModelForCausalLM.from_config(config).eval().to(device)
        if device.type == "cuda":
            lm = lm.half()
        prompt = torch.randint(0, 1000, (1, 16), device=device)
        kwargs = dict(attention_mask=torch.ones_like(prompt), max_new_tokens=args.new_tokens,
                      min_new_tokens=args.new_tokens, do_sample=False, use_cache=True, pad_token_id=999,
                      eos_token_id=999)
        result: dict = {"model": name, "torch": torch.__version__, "transformers": transformers.__version__,
                        "unread_numbers_dropped": not args.keep_unread_numbers}
        torch._dynamo.reset()
        tm.reset()
        with torch.no_grad():
            ref = lm.generate(prompt, **kwargs)
            lm.forward = torch.compile(lm.forward, backend="trt_multidev", options=options)
            try:
                got = lm.generate(prompt, **kwargs)
                result["tokens_equal"] = bool(torch.equal(got, ref))
            except Exception as exc:  # the probe records what failed
                result["error"] = "".join(traceback.format_exception_only(exc)).strip()[:2000]
                sections.append(traceback.format_exc()[-6000:])
            finally:
                vars(lm).pop("forward", None)
        result["stats"] = tm.stats()
        result["warnings"] = list(warned)  # trt_multidev's: ops left to PyTorch, fallbacks
        (out / f"{name}.txt").write_text("\n\n".join(sections) + "\n")
        (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
        print(name, json.dumps(result)[:600], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
