"""Which part of Llama carries TensorRT-RTX's extra fp16 error (issue 14)?

    python benchmarks/llama_parts_probe.py --out DIR

Session 10 (H200): Llama's fp16 logits from the engines were 1.2e-2 from fp32 against eager's
5.3e-3, and back at eager's level with every matrix product left to PyTorch; session 11: the
`fp32_accumulation` rewrite left Llama's logits bit-identical (GPT-2's came to eager's level):
either its casts do not reach the kernels or the products' accumulation is not the cause. Here
bare fp16 products (K 512 and 4096, with and without bias) and each part of a 4-layer Llama (the
shape `real_models.py` uses) are compiled alone, in fp16, from the fp32 model's own input to that
part: rotary embedding, RMSNorm, MLP, attention, one decoder layer, final norm + LM head, the
whole model. Per part and variant (default; `fp32_accumulation`; products left to PyTorch), the
relative error against the fp32 part of eager fp16 and of the engines, and whether the output is
bit-identical to the default's. Then, paired in one process (rounds interleaved), GPT-2's and
Llama's latency with and without `fp32_accumulation`.
Writes DIR/llama_parts_probe.json (GPU, versions, date).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from typing import Any, Callable

import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import gpu_bench  # noqa: E402  (puts the repository root on sys.path)
import real_models  # noqa: E402
import trt_multidev_backend as tm  # noqa: E402

PRODUCTS = [f"torch.ops.aten.{op}" for op in ("mm.default", "bmm.default", "addmm.default", "linear.default")]
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "fp32_accumulation": {"fp32_accumulation": True},
    "products_in_pytorch": {"trt": {"torch_executed_ops": PRODUCTS}},
}


class Part(nn.Module):
    """One part of the model as a function of tensors, returning one flat tensor."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        out = self.fn(*args)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        return torch.cat([o.reshape(-1).float() for o in outs])


def llama_pair(dev: torch.device) -> tuple[nn.Module, nn.Module]:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    exact = LlamaForCausalLM(LlamaConfig(**real_models.LLAMA_CONFIG)).eval()
    # bare products beside the model, to see how one fp16 product accumulates as K grows
    exact.product_k512 = nn.Linear(512, 1376, bias=False)
    exact.product_k4096 = nn.Linear(4096, 1024, bias=False)
    exact.product_k4096_bias = nn.Linear(4096, 1024)
    exact = exact.to(dev)
    return exact, copy.deepcopy(exact).half()


def parts(m: nn.Module, ids: torch.Tensor) -> dict[str, tuple[Callable[..., Any], tuple[torch.Tensor, ...]]]:
    """Each part of `m` (the fp32 or the fp16 Llama) with the names of its inputs in
    `inputs_of` (or the tensor itself), so that both copies start from the fp32 model's values."""
    base, layer = m.model, m.model.layers[0]
    positions = torch.arange(ids.shape[1], device=ids.device)[None].expand(ids.shape[0], -1)
    return {
        "rotary": (lambda x, p: base.rotary_emb(x, p), ("h0", positions)),
        "rmsnorm": (lambda h: layer.input_layernorm(h), ("h0",)),
        "mlp": (lambda h: layer.mlp(h), ("n0",)),
        "attention": (lambda h, c, s: layer.self_attn(h, position_embeddings=(c, s))[0], ("n0", "cos", "sin")),
        "decoder_layer": (lambda h, c, s: layer(h, position_embeddings=(c, s)), ("h0", "cos", "sin")),
        "norm_and_head": (lambda h: m.lm_head(base.norm(h)), ("h_last",)),
        "model": (lambda i: m(i, use_cache=False).logits, (ids,)),
        "product_k512": (lambda x: m.product_k512(x), ("x512",)),
        "product_k4096": (lambda x: m.product_k4096(x), ("x4096",)),
        "product_k4096_bias": (lambda x: m.product_k4096_bias(x), ("x4096",)),
    }


def inputs_of(exact: nn.Module, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        out = exact(ids, use_cache=False, output_hidden_states=True)
        h0, h_last = out.hidden_states[0], out.hidden_states[-2]  # the last entry is after the final norm
        n0 = exact.model.layers[0].input_layernorm(h0)
        positions = torch.arange(ids.shape[1], device=ids.device)[None].expand(ids.shape[0], -1)
        cos, sin = exact.model.rotary_emb(h0, positions)
    generator = torch.Generator(device=ids.device).manual_seed(1)
    x512, x4096 = (torch.randn(512, k, device=ids.device, generator=generator) for k in (512, 4096))
    return {"h0": h0, "h_last": h_last, "n0": n0, "cos": cos, "sin": sin, "x512": x512, "x4096": x4096}


def run_part(name: str, exact: nn.Module, half: nn.Module, ids: torch.Tensor,
             extra: dict[str, Any]) -> list[dict[str, Any]]:
    values = inputs_of(exact, ids)

    def args_for(model: nn.Module, dtype: torch.dtype) -> tuple[Callable[..., Any], list[Any]]:
        fn, names = parts(model, ids)[name]
        args = [values[n].to(dtype) if isinstance(n, str) and values[n].is_floating_point() else
                (values[n] if isinstance(n, str) else n) for n in names]
        return fn, args

    fn32, args32 = args_for(exact, torch.float32)
    fn16, args16 = args_for(half, torch.float16)
    with torch.no_grad():
        reference = Part(fn32)(*args32)
        eager = Part(fn16)(*args16)
    rows = []
    for variant, options in VARIANTS.items():
        torch._dynamo.reset()
        tm.reset()
        row: dict[str, Any] = {"part": name, "variant": variant,
                               "eager_vs_fp32": gpu_bench.rel_error(eager, reference)}
        try:
            compiled = torch.compile(Part(fn16), backend="trt_multidev",
                                     options={"min_block_size": 1, "cache": False, **extra, **options})
            with torch.no_grad():
                out = compiled(*args16)
        except Exception as exc:  # a row, not the end of the probe
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
            rows.append(row)
            continue
        stats = next(iter(tm.stats().values()), {})
        row.update(trt_vs_fp32=gpu_bench.rel_error(out, reference), trt_vs_eager=gpu_bench.rel_error(out, eager),
                   bit_identical_to_default=None, compiles=stats.get("compiles"), fallbacks=stats.get("fallbacks"))
        row["_out"] = out
        rows.append(row)
    default = next((r.get("_out") for r in rows if r["variant"] == "default"), None)
    for r in rows:
        out = r.pop("_out", None)
        if out is not None and default is not None:
            r["bit_identical_to_default"] = bool(torch.equal(out, default))
    return rows


def paired_latency(model_name: str, iters: int, rounds: int) -> dict[str, Any]:
    """Median ms of the whole model with and without fp32_accumulation, rounds interleaved."""
    dev = torch.device("cuda:0")
    torch.manual_seed(0)
    case = getattr(real_models, model_name)(dev)  # the models and inputs of real_models.py
    model, ids = case.lm, case.inputs[0]
    torch._dynamo.reset()
    tm.reset()
    fns = {}
    for variant in ("default", "fp32_accumulation"):
        compiled = torch.compile(copy.deepcopy(model), backend="trt_multidev",
                                 options={"min_block_size": 1, "cache": False, **VARIANTS[variant]})

        def call(compiled: Any = compiled) -> Any:
            return compiled(ids, use_cache=False).logits
        with torch.no_grad():
            call()
        fns[variant] = call
    medians: dict[str, list[float]] = {v: [] for v in fns}
    with torch.no_grad():
        for _ in range(rounds):
            for variant, fn in fns.items():
                medians[variant].append(gpu_bench.median_latency_ms(fn, iters, warmup=10))
    best = {v: min(ms) for v, ms in medians.items()}
    return {"latency": model_name, "median_ms_per_round": medians, "best_ms": best,
            "ratio_fp32_accumulation": best["fp32_accumulation"] / best["default"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--parts", default="product_k512,product_k4096,product_k4096_bias,rotary,rmsnorm,mlp,attention,decoder_layer,"
                        "norm_and_head,model")
    parser.add_argument("--latency", default="gpt2,llama", help="models timed with and without fp32_accumulation")
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--options", default="{}", help="JSON merged into every variant's options (a dry run "
                        "on the CPU: '{\"delegate\": \"_delegates:run_graph\"}' with tests/ on PYTHONPATH)")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    tm.register()  # a source checkout has no entry point installed
    record = gpu_bench.Record(os.path.join(args.out, "llama_parts_probe.json"), variants=VARIANTS)
    dev = torch.device(args.device)
    exact, half = llama_pair(dev)
    ids = torch.randint(0, exact.config.vocab_size, (4, 128), device=dev)
    for name in filter(None, args.parts.split(",")):
        for row in run_part(name, exact, half, ids, json.loads(args.options)):
            record.add(row)
    for name in filter(None, args.latency.split(",")):
        record.add(paired_latency(name, args.iters, args.rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
