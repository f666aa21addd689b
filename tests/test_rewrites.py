"""Exact rewrites of attention masks built from constants (rewrites.py): what the delegate is
handed, and that results do not change."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import trt_multidev_backend as tm
from helpers import fake, on_fake_device

B, H, S, D = 2, 2, 6, 4


class Recording:
    """A test delegate that runs the graph it is handed and keeps each attention call's mask
    and is_causal, and the ops it was handed."""

    def __init__(self) -> None:
        self.attention: list[tuple[object, object]] = []
        self.ops: list[str] = []

    def __call__(self, gm, example_inputs, *, device, settings):
        for node in gm.graph.nodes:
            if node.target is F.scaled_dot_product_attention:
                self.attention.append((node.kwargs.get("attn_mask"), node.kwargs.get("is_causal", False)))
        self.ops = [getattr(n.target, "__name__", str(n.target)) for n in gm.graph.nodes
                    if n.op in ("call_function", "call_method")]
        return gm


class MaskedAttention(nn.Module):
    """Attention whose mask is built in the graph the way Hugging Face builds it (GPT-2, Llama:
    kv index <= q index; BERT without a padding mask: q index >= 0, every position kept), or
    another constant mask (a sliding window's among them), or one passed in."""

    def __init__(self, mask: str, queries: int = S) -> None:
        super().__init__()
        self.mask, self.queries = mask, queries
        self.q, self.k, self.v = (nn.Linear(H * D, H * D) for _ in range(3))

    def forward(self, x, given=None):
        B, S = x.shape[:2]  # noqa: N806 - the module's sizes, or a larger input's
        q, k, v = (fc(x).view(B, S, H, D).transpose(1, 2) for fc in (self.q, self.k, self.v))
        q = q.narrow(2, S - self.queries, self.queries)
        rows = torch.arange(S - self.queries, S, device=x.device).view(1, 1, -1, 1)
        cols = torch.arange(S, device=x.device).view(1, 1, 1, -1)
        if self.mask == "hf_causal":
            mask = (cols <= rows).expand(B, -1, self.queries, S)
        elif self.mask == "hf_keep_all":
            mask = (rows >= 0).expand(B, -1, self.queries, S)
        elif self.mask == "additive_causal":
            mask = torch.zeros(self.queries, S, device=x.device).masked_fill(cols.view(1, -1) > rows.view(-1, 1), float("-inf"))
        elif self.mask == "min_causal":  # the dtype's lowest value instead of -inf: close, not the same
            mask = torch.zeros(self.queries, S, device=x.device).masked_fill(cols.view(1, -1) > rows.view(-1, 1),
                                                                              torch.finfo(x.dtype).min)
        elif self.mask == "sliding":  # Mistral's, Gemma 2's: causal, and only the 3 latest keys
            mask = ((cols <= rows) & (cols > rows - 3)).expand(B, -1, self.queries, S)
        elif self.mask == "padding":
            mask = (cols < S - 2).expand(B, -1, self.queries, S)
        else:  # "given"
            mask = given
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _run(mask: str, queries: int = S, **options):
    delegate, model = Recording(), MaskedAttention(mask, queries).eval()
    x = torch.randn(B, S, H * D)
    args = (x, torch.rand(B, 1, queries, S) > 0.3) if mask == "given" else (x,)
    with torch.no_grad():
        ref = model(*args)
        out = torch.compile(model, backend="trt_multidev", options={"delegate": delegate, **options})(*args)
    return delegate, out, ref


@pytest.mark.parametrize("mask", ["hf_causal", "additive_causal"])
def test_a_constant_causal_mask_becomes_is_causal_and_results_are_exact(mask):
    delegate, out, ref = _run(mask)
    assert delegate.attention == [(None, True)]
    assert torch.equal(out, ref)
    assert "arange" not in delegate.ops  # what built the mask is gone with it


@pytest.mark.parametrize("mask, queries", [("hf_keep_all", S),
                                           ("hf_causal", 1)])  # a decode step: its one query sees every key
def test_a_constant_mask_that_keeps_every_position_is_removed(mask, queries):
    delegate, out, ref = _run(mask, queries)
    assert delegate.attention == [(None, False)] and torch.equal(out, ref)


@pytest.mark.parametrize("mask, queries", [("padding", S), ("min_causal", S), ("given", S), ("sliding", S),
                                           ("hf_causal", 3)])  # 3 queries over 6 keys: not a square tril
def test_other_masks_reach_the_delegate_as_they_are(mask, queries):
    delegate, out, ref = _run(mask, queries)
    ((given, causal),) = delegate.attention
    assert isinstance(given, torch.fx.Node) and causal is False
    assert torch.equal(out, ref)


def test_a_mask_built_on_a_fake_gpu_is_evaluated_without_one(fake_mode):
    """On cuda:1 (fake: no GPU here) the mask is built with device=cuda:1; its value is read on
    the CPU, and the delegate still gets a graph for cuda:1 with is_causal."""
    delegate = Recording()
    model = on_fake_device(MaskedAttention("hf_causal").eval(), "cuda:1", fake_mode)
    out = torch.compile(model, backend="trt_multidev", options={"delegate": delegate})(
        fake(fake_mode, B, S, H * D, device="cuda:1"))
    assert out.device == torch.device("cuda", 1)
    assert delegate.attention == [(None, True)]
    assert tm.stats()["cuda:1"]["fallbacks"] == 0


def test_a_large_mask_expanded_to_the_batch_is_evaluated_by_what_it_stores(fake_mode):
    """Batch 64 x 2048 tokens: the expanded mask has 2**28 elements but stores 2**22 (one 2048 x
    2048 matrix); it is read once, not per batch row (fake inputs: nothing else runs)."""
    delegate = Recording()
    model = on_fake_device(MaskedAttention("hf_causal", 2048).eval(), "cuda:1", fake_mode)
    torch.compile(model, backend="trt_multidev", options={"delegate": delegate})(
        fake(fake_mode, 64, 2048, H * D, device="cuda:1"))
    assert delegate.attention == [(None, True)]


class CacheWrite(nn.Module):
    """A static KV cache's write, as Hugging Face's StaticCache does it (index_copy_ along the
    sequence dimension), in place on a tensor the graph made, and out of place."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, keys, position, new):
        cache = torch.zeros_like(keys)
        cache.index_copy_(self.dim, position, new)
        return cache * 2, keys.index_copy(self.dim, position, new + 1), torch.index_copy(keys, self.dim, position, new)


@pytest.mark.parametrize("dim, positions", [(2, [5]), (2, [0, 3, 1]), (-2, [2]), (0, [1, 0])])
def test_index_copies_reach_the_delegate_as_scatters_with_the_same_results(dim, positions):
    torch.manual_seed(0)
    keys = torch.randn(2, 3, 6, 4)
    position = torch.tensor(positions)
    shape = list(keys.shape)
    shape[dim] = len(positions)
    new = torch.randn(shape)
    model, delegate = CacheWrite(dim), Recording()
    out = torch.compile(model, backend="trt_multidev", options={"delegate": delegate, "device": "cpu"})(keys, position, new)
    for got, want in zip(out, model(keys, position, new)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert "index_copy" not in " ".join(delegate.ops) and delegate.ops.count("scatter_") == 1
    assert delegate.ops.count("scatter") == 2
