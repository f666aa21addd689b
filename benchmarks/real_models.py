"""Real models on TensorRT: eager, trt_multidev, plain torch_tensorrt and inductor, in one run.

    python benchmarks/real_models.py --out DIR [--models gpt2,llama,...] [--iters 50] [--rounds 3]
        [--device cuda:N] [--min-block-size 1] [--backends eager,trt_multidev,...] [--skip-generate]

Models, all fp16 and eval, with random weights from small configs (nothing is downloaded), built
lazily by name: gpt2 (GPT2LMHeadModel, 4 layers, 512 wide, batch 4 x 128), llama
(LlamaForCausalLM, 4 layers, hidden 512, 8 heads, intermediate 1376, batch 4 x 128), bert
(BertModel, 4 layers, batch 8 x 128), t5 (T5Model, 4 + 4 layers, encoder 4 x 128, decoder
4 x 64), vit_s16 and convnext_t (timm, batch 16), resnet50 and mobilenetv3_l (torchvision,
batch 32); resnet50_bn_folded (not in the default list) is resnet50 with batch norm folded into
its convolutions in float32 before the cast; qwen2, qwen3, mistral, gemma, gemma2 and phi3 (not
in the default list: DECODER_FAMILIES) are those families' causal LMs at llama's size with 2
key/value heads and a vocabulary of 32000, batch 4 x 128. transformers models run with use_cache=False behind a wrapper that returns one tensor
(logits or last_hidden_state), so every backend compiles the same tensor-in, tensor-out forward.

Placement: model and inputs on cuda:1 with cuda:0 current when two or more GPUs are visible,
else cuda:0 (recorded as "cuda:0 (one GPU)"); --device overrides. Plain torch_tensorrt is
compiled and called inside torch.cuda.device(<model's device>), which it needs; the other
backends are called with the current device left as it is.

Per (model, backend): first-call seconds (compile included; TensorRT timing cache cleared before
each TensorRT build, trt_multidev's disk cache off), relative error against eager
(||out - ref|| / ||ref|| in float32), the same against the model run in float32 with TF32 off
(`rel_error_fp32`: eager fp16's own is the size of error fp16 gives), and the median latency
(CUDA events on the model device's current stream, 10 warm-up calls, --iters calls per round,
median over --rounds rounds whose backend order rotates). For trt_multidev also its counters
(trt_multidev_backend.stats() for the device) and where the ops ran (SHARE_DEFINITION below). For the causal LMs, also HF generate():
32 new tokens, greedy, use_cache=True, with the forward compiled (GENERATE_METHOD below), whether
the tokens equal eager's, and milliseconds per new token.

A model or backend that fails is recorded (error's first line) and the run goes on. Writes
DIR/real_models.json after every model and prints a table at the end. Ratios between backends are
only meaningful within one run.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import gc
import importlib.metadata
import json
import operator
import os
import random
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Collection, Sequence

import torch
import torch.fx
import torch.nn as nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import gpu_bench  # noqa: E402  (also puts the repository root on sys.path)
import trt_multidev_backend as tm  # noqa: E402
from trt_multidev_backend.specialize import dynamic_of  # noqa: E402

# hf_compile: generate() only, transformers' own compilation of the decode steps (a static cache on a
# GPU: torch.compile(mode="reduce-overhead"), inductor with CUDA graphs); every other row passes
# disable_compile=True, so that it measures its own backend alone.
GENERATE_ONLY = ("hf_compile",)
BACKENDS = ("eager", "trt_multidev", "torch_tensorrt", "inductor", *GENERATE_ONLY)
GENERATE_BACKENDS = ("eager", "trt_multidev", "inductor", *GENERATE_ONLY)
ENGINE_TYPES = ("TorchTensorRTModule", "PythonTorchTensorRTModule", "TensorRTEngine")
WARMUP = 10
SEED = 0
PROMPT_TOKENS = 16
NEW_TOKENS = 32
GENERATE_RUNS = 3
SHARE_DEFINITION = (
    "share_in_trt = 1 - pytorch_ops / dynamo_ops, clamped to [0, 1], summed over the dynamo graphs "
    "trt_multidev compiled. dynamo_ops: call_function and call_method nodes (operator.getitem "
    "excluded) of each graph dynamo handed to the backend. pytorch_ops: the same count over every "
    "torch.fx.GraphModule in what trt_multidev returned that is not inside a TensorRT engine module "
    "(TorchTensorRTModule, PythonTorchTensorRTModule, TensorRTEngine): the partitioned graph's own "
    "nodes and Torch-TensorRT's _run_on_gpu_N segments, at aten level after Torch-TensorRT's "
    "lowering (dynamo_ops are torch-level: the two levels differ, hence the clamp); a graph that ran "
    "trt_multidev's fallback counts all its ops as PyTorch. null when a compiled graph could not "
    "be inspected."
)
GENERATE_METHOD = (
    "model.forward = torch.compile(model.forward, backend=...) on the HF causal LM (inductor: "
    "default mode; trt_multidev: the same options as the latency runs), then model.generate(prompt, "
    "attention_mask=ones, max_new_tokens=32, min_new_tokens=32, do_sample=False, use_cache=True, "
    "pad_token_id=eos_token_id=vocab_size-1, disable_compile=True except for hf_compile) with "
    "transformers' default cache (DynamicCache, or cache_implementation as the JSON says) and "
    "dynamo's default shapes (static first, automatic dynamic after a shape change); the prompt is "
    "16 random token ids, batch 1, never containing vocab_size-1. ms_per_token: generate() wall "
    "time / 32 new tokens (prefill included), median of 3 runs after one warm-up run (first_run_s, "
    "compiles included). same_tokens: every run's new tokens equal eager's first run exactly; "
    "random weights make near-ties between logits, so a mismatch can be fp16 rounding."
)


# --- models ---------------------------------------------------------------------------------
@dataclass
class Case:
    module: nn.Module                 # tensor in, tensor out: what every backend compiles
    inputs: tuple[torch.Tensor, ...]
    config: dict[str, Any]            # what was built, for the JSON
    lm: nn.Module | None = None       # the HF causal LM whose generate() is measured
    vocab: int = 0


class HFTensor(nn.Module):
    """Calls a transformers model with keyword tensors and returns one field of its output."""

    def __init__(self, model: nn.Module, names: Sequence[str], output: str, **fixed: Any) -> None:
        super().__init__()
        self.model = model
        self.names = tuple(names)
        self.output = output
        self.fixed = fixed

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return getattr(self.model(**dict(zip(self.names, tensors)), **self.fixed), self.output)


def _token_ids(vocab: int, shape: tuple[int, ...], dev: torch.device) -> torch.Tensor:
    """Random ids below vocab - 1 (that id is generate()'s pad/eos), drawn on the CPU so every
    device gets the same ones."""
    return torch.randint(0, vocab - 1, shape).to(dev)


def _images(batch: int, dev: torch.device) -> torch.Tensor:
    return torch.randn(batch, 3, 224, 224).to(dev, torch.float16)


def _fp16(module: nn.Module, dev: torch.device) -> nn.Module:
    return module.eval().to(device=dev, dtype=torch.float16)


def gpt2(dev: torch.device) -> Case:
    from transformers import GPT2Config, GPT2LMHeadModel

    # initializer_range 0.1 (default 0.02): greedy decoding of the default init repeats a few
    # tokens, which would make the token comparison of generate() say little.
    config = dict(n_layer=4, n_embd=512, n_head=8, n_positions=1024, initializer_range=0.1)
    lm = _fp16(GPT2LMHeadModel(GPT2Config(**config)), dev)
    vocab = lm.config.vocab_size
    return Case(HFTensor(lm, ["input_ids"], "logits", use_cache=False), (_token_ids(vocab, (4, 128), dev),),
                {"class": "GPT2LMHeadModel", "vocab_size": vocab, **config}, lm, vocab)


LLAMA_CONFIG = dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=4, num_attention_heads=8,
                    num_key_value_heads=8, max_position_embeddings=1024, initializer_range=0.1)


def llama(dev: torch.device) -> Case:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LLAMA_CONFIG
    lm = _fp16(LlamaForCausalLM(LlamaConfig(**config)), dev)
    vocab = lm.config.vocab_size
    return Case(HFTensor(lm, ["input_ids"], "logits", use_cache=False), (_token_ids(vocab, (4, 128), dev),),
                {"class": "LlamaForCausalLM", "vocab_size": vocab, **config}, lm, vocab)


# Other decoder families at Llama's size, with grouped-query attention (2 key/value heads for 8)
# and a common vocabulary of 32000, each with what sets it apart (see tests/gpu/test_real_models.py).
DECODER_FAMILIES: dict[str, dict[str, Any]] = {
    "qwen2": {},
    "qwen3": {"head_dim": 64},
    "mistral": {"sliding_window": 64},
    "gemma": {"head_dim": 64},
    "gemma2": {"head_dim": 64, "sliding_window": 64},
    "phi3": {"pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2},
}


def _decoder(family: str) -> Callable[[torch.device], Case]:
    def build(dev: torch.device) -> Case:
        from transformers import AutoConfig, AutoModelForCausalLM

        config = {**LLAMA_CONFIG, "num_key_value_heads": 2, "vocab_size": 32000, **DECODER_FAMILIES[family]}
        lm = _fp16(AutoModelForCausalLM.from_config(AutoConfig.for_model(family, **config)), dev)
        return Case(HFTensor(lm, ["input_ids"], "logits", use_cache=False), (_token_ids(32000, (4, 128), dev),),
                    {"class": type(lm).__name__, **config}, lm, 32000)

    return build


def bert(dev: torch.device) -> Case:
    from transformers import BertConfig, BertModel

    config = dict(hidden_size=512, num_hidden_layers=4, num_attention_heads=8, intermediate_size=2048)
    model = _fp16(BertModel(BertConfig(**config)), dev)
    vocab = model.config.vocab_size
    return Case(HFTensor(model, ["input_ids"], "last_hidden_state"), (_token_ids(vocab, (8, 128), dev),),
                {"class": "BertModel", "vocab_size": vocab, **config})


def t5(dev: torch.device) -> Case:
    from transformers import T5Config, T5Model

    config = dict(d_model=512, d_kv=64, d_ff=2048, num_layers=4, num_decoder_layers=4, num_heads=8)
    model = _fp16(T5Model(T5Config(**config)), dev)
    vocab = model.config.vocab_size
    inputs = (_token_ids(vocab, (4, 128), dev), _token_ids(vocab, (4, 64), dev))
    return Case(HFTensor(model, ["input_ids", "decoder_input_ids"], "last_hidden_state", use_cache=False),
                inputs, {"class": "T5Model", "vocab_size": vocab, **config})


def _calibrated(model: nn.Module, batch: int, dev: torch.device) -> nn.Module:
    """fp16 in eval mode, with batch-norm statistics measured on random images first (fp32, train
    mode, cumulative average). With initial statistics (mean 0, variance 1) activations grow layer
    by layer and MobileNetV3's fp16 output overflows to inf, leaving nothing to compare."""
    model = model.to(dev).train()
    for bn in (m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)):
        bn.reset_running_stats()
        bn.momentum = None
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(batch, 3, 224, 224, device=dev))
    return _fp16(model, dev)


def _timm(name: str, batch: int) -> Callable[[torch.device], Case]:
    def build(dev: torch.device) -> Case:
        import timm

        model = _calibrated(timm.create_model(name, pretrained=False), batch, dev)
        return Case(model, (_images(batch, dev),), {"timm": name, "batch_norm": "calibrated"})
    return build


def _torchvision(name: str, batch: int) -> Callable[[torch.device], Case]:
    def build(dev: torch.device) -> Case:
        import torchvision

        model = _calibrated(torchvision.models.get_model(name, weights=None), batch, dev)
        return Case(model, (_images(batch, dev),), {"torchvision": name, "batch_norm": "calibrated"})
    return build


def _batch_norm_folded(name: str, batch: int) -> Callable[[torch.device], Case]:
    """A torchvision model as `_torchvision` builds it, each batch norm then folded into its
    convolution in float32 (torch.fx.experimental.optimization.fuse) before the cast to fp16:
    TensorRT-RTX builds batch norm as separate fp16 layers, and this variant tells whether that is
    where its extra error comes from (the model differs from the unfolded one only by rounding)."""
    def build(dev: torch.device) -> Case:
        from torch.fx.experimental.optimization import fuse

        case = _torchvision(name, batch)(dev)
        folded = fuse(case.module.float().eval())
        return Case(_fp16(folded, dev), case.inputs, {**case.config, "batch_norm": "calibrated, folded in fp32"})
    return build


MODELS: dict[str, Callable[[torch.device], Case]] = {
    "gpt2": gpt2,
    "llama": llama,
    "bert": bert,
    "t5": t5,
    "vit_s16": _timm("vit_small_patch16_224", 16),
    "convnext_t": _timm("convnext_tiny", 16),
    "resnet50": _torchvision("resnet50", 32),
    "resnet18_b1": _torchvision("resnet18", 1),  # small_batch.py's case, for engine_profile_probe.py
    "mobilenetv3_l": _torchvision("mobilenet_v3_large", 32),
    "resnet50_bn_folded": _batch_norm_folded("resnet50", 32),
    **{family: _decoder(family) for family in DECODER_FAMILIES},
}
EXTRA_MODELS = ("resnet50_bn_folded", "resnet18_b1", *DECODER_FAMILIES)  # run only when named


# --- where trt_multidev's ops run -------------------------------------------------------------
def count_ops(gm: torch.fx.GraphModule) -> int:
    """Ops of one graph: call_function and call_method nodes, tuple indexing excluded."""
    return sum(1 for n in gm.graph.nodes
               if n.op in ("call_function", "call_method") and n.target is not operator.getitem)


def _op_name(node: torch.fx.Node) -> str:
    return node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))


def _walk(module: nn.Module, names: collections.Counter) -> tuple[int, int]:
    """(engines, ops running in PyTorch) under `module`, counting the latter's op names in
    `names`; nothing inside an engine is PyTorch's."""
    if type(module).__name__ in ENGINE_TYPES:
        return 1, 0
    engines, ops = 0, 0
    if isinstance(module, torch.fx.GraphModule):
        ops = count_ops(module)
        names.update(_op_name(n) for n in module.graph.nodes
                     if n.op in ("call_function", "call_method") and n.target is not operator.getitem)
    for child in module.children():
        e, o = _walk(child, names)
        engines, ops = engines + e, ops + o
    return engines, ops


def where_ops_run(compiled: Any, dynamo_ops: int) -> dict[str, Any]:
    """Engines and PyTorch ops of what trt_multidev returned for one graph (None: not inspectable)."""
    guarded = type(compiled).__name__ == "GuardedCallable"
    fallback = compiled.fallback if guarded else None
    if fallback is not None:
        return {"engines": 0, "pytorch_ops": dynamo_ops, "fallback": fallback}
    inner = compiled.fn if guarded else compiled
    while type(inner).__name__ == "CudaGraphs":  # cuda_graphs: the graph captured is inside
        inner = inner.fn
    inner = dynamic_of(inner)
    if not isinstance(inner, nn.Module):
        return {"engines": None, "pytorch_ops": None, "fallback": None}
    names: collections.Counter = collections.Counter()
    engines, ops = _walk(inner, names)
    return {"engines": engines, "pytorch_ops": ops, "fallback": None, "pytorch_op_names": dict(names)}


def counting_backend(options: dict[str, Any], graphs: list[dict[str, Any]]) -> Callable[..., Any]:
    """A torch.compile backend: trt_multidev with `options`, recording in `graphs` where each
    dynamo graph's ops ended up."""

    def trt_multidev_counted(gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> Callable[..., Any]:
        dynamo_ops = count_ops(gm)  # before the backend sees it: it may rewrite the graph
        compiled = tm.backend(gm, example_inputs, options=options)
        graphs.append({"dynamo_ops": dynamo_ops, **where_ops_run(compiled, dynamo_ops)})
        return compiled

    return trt_multidev_counted


def share_summary(graphs: list[dict[str, Any]]) -> dict[str, Any]:
    dynamo_ops = sum(g["dynamo_ops"] for g in graphs)
    known = bool(graphs) and all(g["pytorch_ops"] is not None for g in graphs)
    pytorch_ops = sum(g["pytorch_ops"] for g in graphs) if known else None
    share = None
    if pytorch_ops is not None and dynamo_ops:
        share = min(1.0, max(0.0, 1.0 - pytorch_ops / dynamo_ops))
    fallbacks = sorted({g["fallback"] for g in graphs if g["fallback"]})
    return {
        "graphs": len(graphs),
        "dynamo_ops": dynamo_ops,
        "pytorch_ops": pytorch_ops,
        "share_in_trt": share,
        "engines": sum(g["engines"] for g in graphs) if known else None,
        "fallback": "; ".join(fallbacks) or None,
        "per_graph": graphs,
    }


# --- running --------------------------------------------------------------------------------
def seed_everything(seed: int = SEED) -> None:
    random.seed(seed)
    torch.manual_seed(seed)  # every CUDA device too


def first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}"


def prepare(backend: str, module: nn.Module, dev: torch.device, trt_options: dict[str, Any],
            graphs: list[dict[str, Any]]) -> Callable[..., Any]:
    """What to call for `backend`; compilation happens at the first call."""
    if backend == "eager":
        return module
    if backend == "trt_multidev":
        return torch.compile(module, backend=counting_backend(trt_options, graphs))
    if backend == "inductor":
        return torch.compile(module)
    import torch_tensorrt  # noqa: F401  (registers the backend)

    compiled = torch.compile(module, backend="torch_tensorrt",
                             options={"device": dev, "min_block_size": trt_options["min_block_size"]})

    def on_device(*args: Any) -> Any:  # plain torch_tensorrt needs the model's device current
        with torch.cuda.device(dev):
            return compiled(*args)

    return on_device


def median_ms_on(dev: torch.device, fn: Callable[[], Any], iters: int, warmup: int) -> float:
    """gpu_bench.median_latency_ms for a device that need not be current: its events record on
    (and it synchronizes) the current device, which sees none of a cuda:1 model's work. Here the
    events go on `dev`'s current stream, where eager, inductor and trt_multidev order their work."""
    stream = torch.cuda.current_stream(dev)
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize(dev)
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    for start, end in zip(starts, ends):
        start.record(stream)
        fn()
        end.record(stream)
    torch.cuda.synchronize(dev)
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends))


def relative_error(out: Any, ref: torch.Tensor) -> float | None:
    """gpu_bench.rel_error (float32), None when not finite."""
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"the output is a {type(out).__name__}, eager's a tensor")
    value = gpu_bench.rel_error(out.to(ref.device), ref)
    return value if value == value and abs(value) != float("inf") else None


def device_stats(dev: torch.device) -> dict[str, int]:
    return tm.stats().get(str(dev), {})


def fp32_reference(case: Case) -> torch.Tensor | None:
    """The same model and inputs in float32 with TF32 off: the arithmetic every fp16 backend
    (eager's included) rounds. Each backend's distance from it, beside eager fp16's own, says
    whether its error is the size fp16 gives (`rel_error_fp32`); None when it cannot be made."""
    import copy

    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        model = copy.deepcopy(case.module).float()
        inputs = [t.float() if t.is_floating_point() else t for t in case.inputs]
        return model(*inputs).float()
    except Exception as exc:  # noqa: BLE001 - recorded as missing, the run goes on
        print(f"fp32 reference: {first_line(exc)}", file=sys.stderr)
        return None
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags
        free_memory()


def compile_all(case: Case, dev: torch.device, backends: Sequence[str], trt_options: dict[str, Any],
                graphs: list[dict[str, Any]], rows: dict[str, dict[str, Any]]) -> dict[str, Callable[[], Any]]:
    """First call of every backend (eager first: the reference), recorded in `rows`; returns a
    no-argument call for each backend that worked."""
    calls: dict[str, Callable[[], Any]] = {}
    ref: torch.Tensor | None = None
    exact = fp32_reference(case)
    for backend in backends:
        row = rows[backend] = {}
        if backend in ("trt_multidev", "torch_tensorrt"):
            gpu_bench._clear_timing_cache()
        if backend == "trt_multidev":
            tm.reset()
        try:
            fn = prepare(backend, case.module, dev, trt_options, graphs)
            torch.cuda.synchronize(dev)
            start = time.perf_counter()
            out = fn(*case.inputs)
            torch.cuda.synchronize(dev)
            row["first_call_s"] = round(time.perf_counter() - start, 3)
            if backend == "eager":
                ref = out
            if ref is not None:
                row["rel_error"] = relative_error(out, ref)
                if out.device != ref.device:
                    row["output_device"] = str(out.device)
            if exact is not None:
                row["rel_error_fp32"] = relative_error(out, exact)
            calls[backend] = lambda fn=fn: fn(*case.inputs)
        except Exception as exc:  # a backend failing is a result too
            row["error"] = first_line(exc)
    return calls


def time_rounds(calls: dict[str, Callable[[], Any]], dev: torch.device, iters: int, rounds: int,
                rows: dict[str, dict[str, Any]]) -> None:
    """Median latency per backend, in rounds whose order rotates (A B C D, B C D A, ...), so drift
    during the run spreads over all backends alike. A backend failing here drops out."""
    timed = list(calls)
    latencies: dict[str, list[float]] = {b: [] for b in timed}
    for r in range(rounds if timed else 0):
        for backend in timed[r % len(timed):] + timed[: r % len(timed)]:
            if backend not in calls:
                continue
            try:
                latencies[backend].append(median_ms_on(dev, calls[backend], iters, WARMUP))
            except Exception as exc:
                rows[backend]["error"] = f"timing: {first_line(exc)}"
                del calls[backend]
    for backend, values in latencies.items():
        if values:
            rows[backend]["median_ms"] = round(statistics.median(values), 4)
            rows[backend]["median_ms_per_round"] = [round(v, 4) for v in values]


def run_model(name: str, dev: torch.device, backends: Sequence[str], trt_options: dict[str, Any],
              iters: int, rounds: int, generate_runs: int, cache: str | None = None) -> dict[str, Any]:
    started = time.perf_counter()
    seed_everything()
    try:
        case = MODELS[name](dev)
    except Exception as exc:
        return {"error": f"building the model: {first_line(exc)}"}
    rows: dict[str, dict[str, Any]] = {}
    result: dict[str, Any] = {
        "config": case.config,
        "inputs": [f"{tuple(t.shape)} {str(t.dtype).removeprefix('torch.')}" for t in case.inputs],
        "backends": rows,
    }
    graphs: list[dict[str, Any]] = []
    if iters > 0:  # 0: generate() only
        with torch.no_grad():
            calls = compile_all(case, dev, [b for b in backends if b not in GENERATE_ONLY], trt_options, graphs, rows)
            time_rounds(calls, dev, iters, rounds, rows)
        if "trt_multidev" in rows:
            rows["trt_multidev"]["stats"] = device_stats(dev)
            rows["trt_multidev"]["ops"] = share_summary(graphs)
        del calls
    if generate_runs and case.lm is not None:
        free_memory()  # the latency phase's compiled graphs and engines go first
        result["generate"] = run_generate(case.lm, case.vocab, dev, [b for b in backends if b in GENERATE_BACKENDS],
                                          trt_options, generate_runs, cache)
    result["current_device_after"] = f"cuda:{torch.cuda.current_device()}"  # did anything leave it switched?
    result["wall_s"] = round(time.perf_counter() - started, 1)
    return result


def timed_generate(lm: nn.Module, prompt: torch.Tensor, dev: torch.device,
                   cache: str | None = None, hf_compile: bool = False) -> tuple[torch.Tensor, float]:
    """The new tokens of one greedy generate() call and its wall seconds. `cache`: transformers'
    cache_implementation ("static": the static KV cache), None for its default (DynamicCache).
    transformers compiles the decode steps itself with a static cache on a GPU (inductor,
    reduce-overhead) unless told not to: only with `hf_compile`."""
    stop = lm.config.vocab_size - 1
    extra: dict[str, Any] = {"disable_compile": not hf_compile}
    if cache is not None:
        extra["cache_implementation"] = cache
    torch.cuda.synchronize(dev)
    start = time.perf_counter()
    out = lm.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=NEW_TOKENS,
                      min_new_tokens=NEW_TOKENS, do_sample=False, use_cache=True, pad_token_id=stop,
                      eos_token_id=stop, **extra)
    torch.cuda.synchronize(dev)
    return out[:, prompt.shape[1]:], time.perf_counter() - start


def run_generate(lm: nn.Module, vocab: int, dev: torch.device, backends: Sequence[str],
                 trt_options: dict[str, Any], repeats: int = GENERATE_RUNS, cache: str | None = None) -> dict[str, Any]:
    """generate() with each backend's compiled forward; eager (first) is the reference."""
    seed_everything()
    prompt = _token_ids(vocab, (1, PROMPT_TOKENS), dev)
    result: dict[str, Any] = {"method": GENERATE_METHOD, "cache_implementation": cache, "backends": {}}
    reference: torch.Tensor | None = None
    for backend in backends:
        row = result["backends"][backend] = {}
        graphs: list[dict[str, Any]] = []
        torch._dynamo.reset()  # each backend starts from no compiled code (and a full recompile budget)
        try:
            if backend == "trt_multidev":
                tm.reset()
                gpu_bench._clear_timing_cache()
                lm.forward = torch.compile(lm.forward, backend=counting_backend(trt_options, graphs))
            elif backend == "inductor":
                lm.forward = torch.compile(lm.forward)
            hf = backend == "hf_compile"
            tokens, first_s = timed_generate(lm, prompt, dev, cache, hf)
            row["first_run_s"] = round(first_s, 3)
            runs = [timed_generate(lm, prompt, dev, cache, hf) for _ in range(max(1, repeats))]
            row["new_tokens"] = tokens.shape[1]
            row["ms_per_token"] = round(statistics.median(s for _, s in runs) * 1000 / NEW_TOKENS, 3)
            row["runs_ms_per_token"] = [round(s * 1000 / NEW_TOKENS, 3) for _, s in runs]
            if backend == "eager":
                reference = tokens
            if reference is not None:
                row["same_tokens"] = all(t.shape == reference.shape and torch.equal(t, reference)
                                         for t in [tokens, *(t for t, _ in runs)])
                row["matching_prefix"] = matching_prefix(tokens, reference)
                if row["matching_prefix"] < min(tokens.shape[1], reference.shape[1]):
                    row["first_difference"] = first_difference(lm, prompt, tokens, reference, row["matching_prefix"])
        except Exception as exc:
            row["error"] = first_line(exc)
        finally:
            vars(lm).pop("forward", None)  # back to the class's forward
        if backend == "trt_multidev":
            row["stats"] = device_stats(dev)
            row["ops"] = share_summary(graphs)
    return result


def matching_prefix(tokens: torch.Tensor, reference: torch.Tensor) -> int:
    """How many leading new tokens equal the reference's."""
    n = min(tokens.shape[1], reference.shape[1])
    differs = (tokens[:, :n] != reference[:, :n]).any(0).nonzero()
    return int(differs[0]) if len(differs) else n


def first_difference(lm: nn.Module, prompt: torch.Tensor, tokens: torch.Tensor, reference: torch.Tensor,
                     step: int) -> dict[str, Any]:
    """Where a compiled generate() left eager's tokens: eager's own logits for that step (eager's
    prefix, eager forward), and how far the compiled choice was below eager's. A gap that is small
    against the logits' spread is a near-tie fp16 rounding can flip, not a wrong model."""
    prefix = torch.cat([prompt, reference[:, :step]], dim=1)
    with torch.no_grad():
        logits = type(lm).forward(lm, prefix, use_cache=False).logits[0, -1].float()
    chosen, expected = int(tokens[0, step]), int(reference[0, step])
    top2 = logits.topk(2).values
    return {"step": step, "eager_token": expected, "token": chosen,
            "eager_gap_to_token": round(float(logits[expected] - logits[chosen]), 5),
            "eager_top2_gap": round(float(top2[0] - top2[1]), 5),
            "logit_std": round(float(logits.std()), 5)}


def free_memory() -> None:
    torch._dynamo.reset()
    tm.reset()
    gc.collect()
    torch.cuda.empty_cache()


# --- reporting -------------------------------------------------------------------------------
def choose_device(requested: str | None) -> tuple[torch.device, str]:
    count = torch.cuda.device_count()
    if count == 0:
        raise SystemExit("real_models.py needs a CUDA GPU; none is visible")
    if requested is not None:
        dev = torch.device(requested)
        if dev.type != "cuda" or dev.index is None or dev.index >= count:
            raise SystemExit(f"--device {requested}: expected cuda:N with N < {count} (GPUs visible)")
        return dev, f"{dev} (--device; cuda:{torch.cuda.current_device()} current)"
    if count >= 2:
        torch.cuda.set_device(0)
        return torch.device("cuda", 1), "cuda:1 (cuda:0 current)"
    return torch.device("cuda", 0), "cuda:0 (one GPU)"


def environment(dev: torch.device) -> dict[str, Any]:
    def version(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    env = gpu_bench.environment()
    env.update({name: version(name) for name in ("transformers", "timm", "torchvision", "accelerate")})
    env["trt_multidev_backend"] = tm.__version__
    env["model_gpu"] = torch.cuda.get_device_name(dev)
    return env


def git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=os.path.dirname(HERE), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def table(models: dict[str, dict[str, Any]]) -> str:
    def fmt(value: Any, spec: str) -> str:
        return format(value, spec) if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"

    lines = [f"{'model':<14} {'backend':<22} {'first s':>8} {'ms':>10} {'rel err':>8} {'vs fp32':>8} "
             f"{'share':>6}  note"]
    for model, result in models.items():
        if "error" in result:
            lines.append(f"{model:<14} {'-':<22} {'-':>8} {'-':>10} {'-':>8} {'-':>8} {'-':>6}  {result['error']}")
        for backend, row in result.get("backends", {}).items():
            ops, counters = row.get("ops", {}), row.get("stats")
            note = row.get("error") or (ops.get("fallback") and f"fallback: {ops['fallback']}") or (
                f"engines {ops.get('engines')}, compiles {counters.get('compiles', 0)}, "
                f"fallbacks {counters.get('fallbacks', 0)}" if counters is not None else "")
            lines.append(f"{model:<14} {backend:<22} {fmt(row.get('first_call_s'), '.2f'):>8} "
                         f"{fmt(row.get('median_ms'), '.3f'):>10} {fmt(row.get('rel_error'), '.1e'):>8} "
                         f"{fmt(row.get('rel_error_fp32'), '.1e'):>8} {fmt(ops.get('share_in_trt'), '.2f'):>6}  {note}")
        for backend, row in result.get("generate", {}).get("backends", {}).items():
            ops = row.get("ops", {})
            fallback = f"; fallback: {ops['fallback']}" if ops.get("fallback") else ""
            diff = row.get("first_difference")
            gap = (f"; eager's logit gap there {diff['eager_gap_to_token']} (logit std {diff['logit_std']})"
                   if diff else "")
            note = row.get("error") or (f"same_tokens {row.get('same_tokens')}, "
                                        f"matching {row.get('matching_prefix')}/{NEW_TOKENS}{gap}{fallback}")
            lines.append(f"{model:<14} {'generate:' + backend:<22} {fmt(row.get('first_run_s'), '.2f'):>8} "
                         f"{fmt(row.get('ms_per_token'), '.3f'):>10} {'ms/tok':>8} {'':>8} "
                         f"{fmt(ops.get('share_in_trt'), '.2f'):>6}  {note}")
    return "\n".join(lines)


def parse_list(text: str, known: Collection[str], what: str) -> list[str]:
    names = [n for n in (s.strip() for s in text.split(",")) if n]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)} (known: {', '.join(known)})")
    return list(dict.fromkeys(names))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="directory for real_models.json")
    parser.add_argument("--models", default=",".join(m for m in MODELS if m not in EXTRA_MODELS),
                        help="comma list of " + ", ".join(MODELS))
    parser.add_argument("--backends", default=",".join(BACKENDS),
                        help="comma list of " + ", ".join(BACKENDS) + " (eager always runs: it is the reference)")
    parser.add_argument("--iters", type=int, default=50, help="timed calls per round (default 50)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--device", default=None, help="cuda:N for model and inputs (default: see the docstring)")
    parser.add_argument("--min-block-size", type=int, default=1, help="min_block_size for both TensorRT backends")
    parser.add_argument("--skip-generate", action="store_true", help="no generate() runs for the causal LMs")
    parser.add_argument("--cache", default=None, choices=["static"],
                        help="generate()'s cache_implementation (default: transformers' DynamicCache)")
    parser.add_argument("--skip-forward", action="store_true", help="only generate() (no latency rounds)")
    parser.add_argument("--generate-runs", type=int, default=GENERATE_RUNS,
                        help=f"timed generate() calls per backend after the first (default {GENERATE_RUNS})")
    parser.add_argument("--options", default="{}", type=json.loads,
                        help='more trt_multidev options, as JSON (e.g. \'{"trt": {"attn_bias_is_causal": true}}\')')
    args = parser.parse_args()
    models = parse_list(args.models, MODELS, "model")
    backends = ["eager"] + [b for b in parse_list(args.backends, BACKENDS, "backend") if b != "eager"]
    dev, placement = choose_device(args.device)
    # The disk cache off: first calls are cold builds, as plain torch_tensorrt's are.
    trt_options = {"min_block_size": args.min_block_size, "cache": False, **args.options}
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "real_models.json")
    status = git("status", "--porcelain")
    doc: dict[str, Any] = {
        "environment": environment(dev),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "placement": placement,
        "settings": {"backends": backends, "iters": args.iters, "rounds": args.rounds, "warmup": WARMUP,
                     "trt_multidev_options": trt_options, "torch_tensorrt_options":
                         {"device": str(dev), "min_block_size": args.min_block_size},
                     "generate": not args.skip_generate, "generate_runs": args.generate_runs,
                     "cache_implementation": args.cache, "seed": SEED},
        "share_definition": SHARE_DEFINITION,
        "models": {},
    }
    print(json.dumps(doc["environment"]), placement, flush=True)
    for name in models:
        print(f"--- {name}", flush=True)
        try:
            doc["models"][name] = run_model(name, dev, backends, trt_options, 0 if args.skip_forward else args.iters,
                                            args.rounds,
                                            0 if args.skip_generate else max(1, args.generate_runs), args.cache)
        except Exception as exc:  # anything run_model did not expect: keep going with the next model
            doc["models"][name] = {"error": first_line(exc)}
        free_memory()
        with open(path, "w") as f:
            json.dump(doc, f, indent=1)
        print(table({name: doc["models"][name]}) + f"\n({doc['models'][name].get('wall_s', '-')} s)", flush=True)
    print(table(doc["models"]))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
