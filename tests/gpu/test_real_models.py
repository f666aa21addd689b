"""Decoder LMs from Hugging Face configs (random weights, nothing downloaded) through trt_multidev:
engines are built (no fallback), the output matches eager within fp16 tolerance, on the model's
GPU (cuda:1 with cuda:0 current where two GPUs are visible). Skipped without transformers."""

from __future__ import annotations

import pytest
import torch

import trt_multidev_backend as tm
from scenarios import rel_error

transformers = pytest.importorskip("transformers")
DEVICE = torch.device("cuda", 1 if torch.cuda.device_count() > 1 else 0)


def _check(model: torch.nn.Module) -> None:
    torch.cuda.set_device(0)
    model = model.eval().half().to(DEVICE)
    ids = torch.randint(0, model.config.vocab_size, (2, 64), device=DEVICE)
    with torch.no_grad():
        ref = model(ids, use_cache=False).logits
        out = torch.compile(model, backend="trt_multidev", options={"min_block_size": 1})(ids, use_cache=False).logits
    assert out.device == DEVICE and rel_error(out, ref) < 2e-2
    counts = tm.stats()[str(DEVICE)]
    assert counts["compiles"] >= 1 and counts["fallbacks"] == 0
    assert torch.cuda.current_device() == 0


def test_gpt2_runs_in_tensorrt_engines():
    torch.manual_seed(0)
    _check(transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_embd=256, n_head=4, vocab_size=1000,
                                                                n_positions=128)))


def test_llama_runs_in_tensorrt_engines():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=256, intermediate_size=688, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=4, vocab_size=1000, max_position_embeddings=128)
    _check(transformers.LlamaForCausalLM(config))
