"""Hugging Face decoders' generate() with a KV cache (the eight families of the GPU suite), on the
CPU, through a delegate that meets numbers as Torch-TensorRT 2.11 does (tests/_delegates.py
TensorsOnly). Their decode steps hand the backend what broke on the GPU: the sliding-window cache's
length as a number (fixed by dynamo to a constant, or equal to the cached keys' length),
`torch.sym_max` over it, numbers returned, and `torch.sym_sum` (the cached values' length)."""

from __future__ import annotations

import logging

import pytest
import torch

import trt_multidev_backend as tm
from _delegates import TensorsOnly

transformers = pytest.importorskip("transformers")

FAMILIES = {
    "mistral": {"sliding_window": 16},
    "gemma2": {"head_dim": 16, "sliding_window": 16},
    "qwen2": {},
    "llama": {},
    "qwen3": {"head_dim": 16},
    "gemma": {"head_dim": 16},
    "phi3": {"pad_token_id": 0},
    "gpt2": None,  # its own config names
}


def _lm(family: str) -> torch.nn.Module:
    if family == "gpt2":
        return transformers.GPT2LMHeadModel(transformers.GPT2Config(
            n_layer=2, n_embd=64, n_head=4, vocab_size=100, n_positions=64, initializer_range=0.1)).eval()
    config = transformers.AutoConfig.for_model(
        family, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=100, max_position_embeddings=64, initializer_range=0.1,
        **FAMILIES[family])
    return transformers.AutoModelForCausalLM.from_config(config).eval()


def _generate(lm: torch.nn.Module, delegate: TensorsOnly, new_tokens: int, **extra) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager's tokens and trt_multidev's (with `delegate`), for one random prompt of 8 tokens."""
    prompt = torch.randint(0, 100, (1, 8))
    kwargs = dict(attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                  do_sample=False, use_cache=True, pad_token_id=99, eos_token_id=99, **extra)
    with torch.no_grad():
        ref = lm.generate(prompt, **kwargs)
        lm.forward = torch.compile(lm.forward, backend="trt_multidev",
                                   options={"delegate": delegate, "min_block_size": 1})
        try:
            return lm.generate(prompt, **kwargs), ref
        finally:
            vars(lm).pop("forward", None)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_generate_with_a_cache_gives_eagers_tokens_and_engines_get_the_attention(family, caplog):
    torch.manual_seed(0)
    delegate = TensorsOnly()
    out, ref = _generate(_lm(family), delegate, 5)
    assert torch.equal(out, ref)
    counts = tm.stats()["cpu"]
    assert counts["compiles"] >= 2 and counts["fallbacks"] == 0  # the prompt pass and the decode steps
    assert [r.getMessage() for r in caplog.records if r.name.startswith("trt_multidev")
            and r.levelno >= logging.WARNING] == []
    assert delegate.returned_numbers == []  # no engine hands a number on
    assert len(delegate.graphs) >= counts["compiles"]
    assert all("scaled_dot_product_attention" in g.code for g in delegate.graphs)  # not left to PyTorch


def test_a_decode_step_whose_sizes_a_delegate_refuses_is_searched_to_an_end():
    """Gemma 2's decode step, with a delegate that refuses the cached keys' sizes wherever they are
    read (Torch-TensorRT 2.11 without trt_multidev's own passes): each piece reading a number
    computes it again, so a cut could give back a piece as large as the one cut, and the search
    recursed without end. It ends, and generate() still gives eager's tokens."""
    torch.manual_seed(0)
    out, ref = _generate(_lm("gemma2"), TensorsOnly(prepared=False), 4)
    assert torch.equal(out, ref) and tm.stats()["cpu"]["fallbacks"] == 0


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_generate_with_a_static_cache_gives_eagers_tokens_with_the_cache_written_after_the_engine(family, caplog):
    """Hugging Face's static KV cache (cache_implementation="static"): each decode step writes its
    keys and values into the cache tensors it is passed (index_copy_) and counts them (add_). The
    stand-in, like Torch-TensorRT, would not write those updates back; they run in PyTorch after
    it (updates.py), and what it gets writes the cache with scatter (rewrites.py)."""
    torch.manual_seed(0)
    delegate = TensorsOnly()
    out, ref = _generate(_lm(family), delegate, 5, cache_implementation="static")
    assert torch.equal(out, ref)
    counts = tm.stats()["cpu"]
    assert counts["compiles"] >= 2 and counts["fallbacks"] == 0
    assert [r.getMessage() for r in caplog.records if r.name.startswith("trt_multidev")
            and r.levelno >= logging.WARNING] == []
    codes = [g.code for g in delegate.graphs]
    assert not any("index_copy" in c or "add_(" in c for c in codes[1:])  # the decode steps' updates: outside
    assert all("scatter" in c for c in codes)  # the cache as the engine reads it



@pytest.mark.parametrize("cache", [None, "static"])
@pytest.mark.parametrize("family", ["gpt2", "gemma2"])
def test_a_left_padded_batch_with_beam_search_gives_eagers_tokens(family, cache):
    """What a server runs: two prompts, one left-padded (its mask, from the caller's tensor, reaches
    the graphs as an input), beam search (transformers reorders the cache between steps), with
    the default and the static cache (written after the engine, in PyTorch)."""
    torch.manual_seed(0)
    lm = _lm(family)
    prompt = torch.randint(1, 99, (2, 8))
    mask = torch.ones_like(prompt)
    mask[1, :3] = 0
    prompt[1, :3] = 0
    extra = {} if cache is None else {"cache_implementation": cache}
    kwargs = dict(attention_mask=mask, max_new_tokens=5, min_new_tokens=5, do_sample=False, num_beams=2,
                  use_cache=True, pad_token_id=0, eos_token_id=99, **extra)
    with torch.no_grad():
        ref = lm.generate(prompt, **kwargs)
        lm.forward = torch.compile(lm.forward, backend="trt_multidev",
                                   options={"delegate": TensorsOnly(), "min_block_size": 1})
        out = lm.generate(prompt, **kwargs)
    assert torch.equal(out, ref)
    counts = tm.stats()["cpu"]
    assert counts["compiles"] >= 2 and counts["fallbacks"] == 0


def test_transformers_compiles_the_static_cache_decode_steps_with_trt_multidev_when_named():
    """transformers' own way to choose the compiler of generate()'s decode steps with a static
    cache: generation_config.compile_config = CompileConfig(backend="trt_multidev", ...). (It
    compiles them only on accelerators unless told to compile on every device, as here.)"""
    torch.manual_seed(0)
    lm = _lm("llama")
    prompt = torch.randint(0, 100, (1, 8))
    kwargs = dict(attention_mask=torch.ones_like(prompt), max_new_tokens=5, min_new_tokens=5, do_sample=False,
                  use_cache=True, pad_token_id=99, eos_token_id=99, cache_implementation="static")
    with torch.no_grad():
        ref = lm.generate(prompt, **kwargs)
        config = transformers.CompileConfig(backend="trt_multidev", mode=None,
                                            options={"delegate": TensorsOnly(), "min_block_size": 1})
        config._compile_all_devices = True
        lm.generation_config.compile_config = config
        out = lm.generate(prompt, **kwargs)
    assert torch.equal(out, ref)
    counts = tm.stats()["cpu"]
    assert counts["compiles"] == 1 and counts["fallbacks"] == 0  # the decode step (the prompt pass runs eager)


def test_a_static_cache_that_changes_length_is_told_to_keep_one(caplog):
    """A longer request sizes a new static cache (transformers keeps the longest length so far):
    the graphs recompile with the length dynamic, and the prompt pass, which builds the cache
    from that length, leaves that work to PyTorch. Still eager's tokens; the info line says how
    to keep one length."""
    caplog.set_level(logging.INFO, logger="trt_multidev")
    torch.manual_seed(0)
    lm = _lm("llama")
    compiled = torch.compile(lm.forward, backend="trt_multidev",
                             options={"delegate": TensorsOnly(), "min_block_size": 1})
    for new in (3, 7, 9):
        prompt = torch.randint(1, 99, (1, 8))
        kwargs = dict(attention_mask=torch.ones_like(prompt), max_new_tokens=new, min_new_tokens=new, do_sample=False,
                      use_cache=True, pad_token_id=0, eos_token_id=99, cache_implementation="static")
        with torch.no_grad():
            vars(lm).pop("forward", None)
            ref = lm.generate(prompt, **kwargs)
            lm.forward = compiled
            assert torch.equal(lm.generate(prompt, **kwargs), ref)
    assert tm.stats()["cpu"]["fallbacks"] == 0
    hints = [r.getMessage() for r in caplog.records if "pass max_cache_len= to generate()" in r.getMessage()]
    assert hints and all("max_cache_len, which is no tensor's size" in h for h in hints)
