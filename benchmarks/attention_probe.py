"""Which forms of attention TensorRT builds, and how fast (issue 14: BERT's and GPT-2's attention).

    python benchmarks/attention_probe.py --out DIR [--masks ...] [--kernels ...] [--causal-bias off,on]

One attention layer (batch 4, 8 heads, 128 tokens, head size 64, fp16, on cuda:0) through
trt_multidev with strict=1 (a failure raises instead of being searched around), for each mask:
none with is_causal ("causal"); built in the graph from constants, as Hugging Face builds them
(a boolean causal mask "bool", an additive 0/-inf causal mask "additive", an additive padding mask
that is not causal "padding"; trt_multidev's rewrites turn the first two into is_causal and leave
the third); passed in as an input ("input": a boolean [4, 1, 128, 128] mask, causal with the
first 8 keys of each row masked out); and a decode step ("decode": one query over 129 keys, a
boolean [4, 1, 1, 129] input mask with 8 keys masked out, as Hugging Face's generate() passes
it); T5's forms with scale 1.0 ("t5": a bias per head looked up in an embedding by constant
distances, put through a constant keep-all `where`, as transformers' T5 builds it; "head_bias":
a [4, 8, 128, 128] fp16 bias passed in), and for each kernel scaled_dot_product_attention is traced to (PyTorch's choice; every
kernel but cuDNN's; math only), with Torch-TensorRT's attn_bias_is_causal off (trt_multidev's
default) and, if asked, on. Per case: built or the error's first line, engines and ops left in
PyTorch, relative error against eager, and the median ms of 50 calls. Writes
DIR/attention_probe.json (GPU, versions, date).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Any

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import gpu_bench  # noqa: E402  (puts the repository root on sys.path)
import trt_multidev_backend as tm  # noqa: E402
from trt_multidev_backend.build import first_line_of  # noqa: E402

B, H, S, D = 4, 8, 128, 64
ENGINES = ("TensorRTEngine", "PythonTorchTensorRTModule", "TorchTensorRTModule")


class Attention(torch.nn.Module):
    def __init__(self, mask: str) -> None:
        super().__init__()
        self.mask = mask
        self.qkv, self.out = torch.nn.Linear(H * D, 3 * H * D), torch.nn.Linear(H * D, H * D)
        self.relative = torch.nn.Embedding(32, H)  # "t5": a learned bias per head and distance

    def forward(self, x: torch.Tensor, given: torch.Tensor | None = None) -> torch.Tensor:
        keys = x.shape[1]
        q, k, v = self.qkv(x).view(B, keys, 3, H, D).permute(2, 0, 3, 1, 4)
        if self.mask == "decode":
            q = q[:, :, -1:]  # the newest token's query over every key
        causal = torch.ones(S, S, dtype=torch.bool, device=x.device).tril()
        if self.mask == "causal":
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif self.mask == "bool":
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=causal)
        elif self.mask == "additive":
            bias = torch.zeros(S, S, dtype=x.dtype, device=x.device).masked_fill(~causal, float("-inf"))
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        elif self.mask == "padding":  # the last 32 keys masked out for every query (not causal)
            keep = torch.arange(S, device=x.device) < S - 32
            bias = torch.zeros(S, dtype=x.dtype, device=x.device).masked_fill(~keep, float("-inf"))
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.expand(S, S))
        elif self.mask == "t5":  # T5's position bias: parameters indexed by constant distances
            distance = torch.arange(S, device=x.device)[None, :] - torch.arange(S, device=x.device)[:, None]
            buckets = distance.abs().clamp(max=31)
            bias = self.relative(buckets).permute(2, 0, 1).unsqueeze(0)  # [1, H, S, S]
            keep = (torch.arange(S, device=x.device) >= 0)[None, None, :, None].expand(B, -1, S, S)
            bias = torch.where(keep, bias, torch.finfo(x.dtype).min)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)
        elif self.mask == "head_bias":  # T5's form passed in: a float bias per head
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=given, scale=1.0)
        else:  # "input", "input_additive", "decode": the mask comes from the caller
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=given)
        return self.out(y.transpose(1, 2).reshape(B, q.shape[2], H * D))


def inputs(mask: str) -> tuple[torch.Tensor, ...]:
    """The layer's arguments: tokens, and the mask where the caller passes one."""
    keys = S + 1 if mask == "decode" else S
    x = torch.randn(B, keys, H * D, device="cuda", dtype=torch.half)
    if mask in ("input", "input_additive"):
        given = torch.ones(S, S, dtype=torch.bool, device="cuda").tril().expand(B, 1, S, S).clone()
        given[..., :8] = False
        given[..., :8, :8] |= torch.eye(8, dtype=torch.bool, device="cuda")  # every row keeps a key
        if mask == "input_additive":
            given = torch.zeros(given.shape, dtype=torch.half, device="cuda").masked_fill(~given, float("-inf"))
        return x, given
    if mask == "head_bias":
        return x, torch.randn(B, H, S, S, device="cuda", dtype=torch.half)
    if mask == "decode":
        given = torch.ones(B, 1, 1, keys, dtype=torch.bool, device="cuda")
        given[..., :8] = False
        return x, given
    return (x,)


def kernels(name: str) -> Any:
    from contextlib import nullcontext

    from torch.nn.attention import SDPBackend, sdpa_kernel

    if name == "default":
        return nullcontext()
    if name == "no_cudnn":
        return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])
    return sdpa_kernel([SDPBackend.MATH])


def left_in_pytorch(compiled: Any) -> tuple[int, list[str]]:
    fn = getattr(compiled, "fn", compiled)
    engines, names = 0, []
    stack = [fn] if isinstance(fn, torch.nn.Module) else []
    while stack:
        module = stack.pop()
        if type(module).__name__ in ENGINES:
            engines += 1
            continue
        if isinstance(module, torch.fx.GraphModule):
            names += [str(getattr(n.target, "__name__", n.target)) for n in module.graph.nodes
                      if n.op in ("call_function", "call_method")]
        stack += list(module.children())
    return engines, names


def case(mask: str, kernel: str, causal_bias: bool) -> dict[str, Any]:
    torch._dynamo.reset()
    tm.reset()
    torch.manual_seed(0)
    model = Attention(mask).cuda().half().eval()
    args = inputs(mask)
    row: dict[str, Any] = {"mask": mask, "kernel": kernel, "attn_bias_is_causal": causal_bias}
    graphs: list[Any] = []

    def capture(gm: Any, example_inputs: Any, **kwargs: Any) -> Any:
        fn = tm.backend(gm, example_inputs, **kwargs)
        graphs.append(fn)
        return fn

    options = {"strict": True, "cache": False, "min_block_size": 1, "trt": {"attn_bias_is_causal": causal_bias}}
    with torch.no_grad():
        ref = model(*args)
        compiled = torch.compile(model, backend=capture, options=options)
        try:
            with kernels(kernel):
                out = compiled(*args)
        except Exception as exc:
            row["error"] = first_line_of(exc)
            if DEBUG:
                traceback.print_exception(exc)
            return row
        row["rel_error"] = gpu_bench.rel_error(out, ref)
        engines, names = zip(*(left_in_pytorch(g) for g in graphs)) if graphs else ((), ())
        row["engines"] = sum(engines)
        row["left_in_pytorch"] = sorted({n for group in names for n in group})
        row["median_ms"] = round(gpu_bench.median_latency_ms(lambda: compiled(*args), iters=50, warmup=10), 4)
    return row


DEBUG = False


def debug() -> None:
    """--debug: what Torch-TensorRT is handed (placeholders with shapes and strides, then ops),
    trt_multidev's INFO lines, full tracebacks of failures."""
    global DEBUG
    import logging

    from torch_tensorrt.dynamo.backend import backends

    DEBUG = True
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("trt_multidev").setLevel(logging.INFO)  # this script's own output, not the library's
    original = backends.torch_tensorrt_backend

    def shown(gm: Any, inputs: Any, **kwargs: Any) -> Any:
        print("# torch_tensorrt receives:", flush=True)
        for node, value in zip([n for n in gm.graph.nodes if n.op == "placeholder"], inputs):
            layout = (tuple(value.shape), tuple(value.stride()), str(value.dtype)) if isinstance(value, torch.Tensor) else value
            print(f"#   {node.name}: {layout}", flush=True)
        print("#   ops: " + ", ".join(str(getattr(n.target, "__name__", n.target)) for n in gm.graph.nodes
                                     if n.op == "call_function"), flush=True)
        return original(gm, inputs, **kwargs)

    backends.torch_tensorrt_backend = shown


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--masks", default="causal,bool,additive,padding,input,input_additive,decode,t5,head_bias")
    parser.add_argument("--kernels", default="default,no_cudnn,math")
    parser.add_argument("--causal-bias", default="off", help="attn_bias_is_causal values: off, on or off,on")
    parser.add_argument("--debug", action="store_true",
                        help="print each graph Torch-TensorRT receives, trt_multidev's INFO lines and full tracebacks")
    args = parser.parse_args()
    if args.debug:
        debug()
    os.makedirs(args.out, exist_ok=True)
    record = gpu_bench.Record(os.path.join(args.out, "attention_probe.json"))
    for mask in args.masks.split(","):
        for kernel in args.kernels.split(","):
            for causal_bias in (value == "on" for value in args.causal_bias.split(",")):
                record.add(case(mask, kernel, causal_bias))
    return 0


if __name__ == "__main__":
    sys.exit(main())
