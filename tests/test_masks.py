"""Attention masks computed from constants and module state run in PyTorch ahead of the engine,
which receives them as inputs (T5's position bias; a constant padding mask)."""

import pytest
import torch
import torch.nn.functional as F

from helpers import capture
from test_delegate import StandInBackend, _fake_compilation_settings
from trt_multidev_backend import delegate as d
from trt_multidev_backend import masks
from trt_multidev_backend.graphinfo import op_count
from trt_multidev_backend.masks import mask_prefix, split_mask_prefix
from trt_multidev_backend.settings import resolve_settings

B, H, S, D = 2, 4, 16, 8


class Attention(torch.nn.Module):
    """One attention call whose mask comes from `kind`: "t5" (a learned bias per head looked up
    by constant distances, as transformers' T5 builds it), "padding" and "sliding" (constants only), "input"
    (built from the caller's tensor), "dropout" (state, but random), "inplace" (state, written in
    place)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.relative = torch.nn.Embedding(8, H)

    def forward(self, q, k, v, lengths):
        distance = torch.arange(S)[None, :] - torch.arange(S)[:, None]
        if self.kind == "t5":
            bias = self.relative(distance.abs().clamp(max=7)).permute(2, 0, 1).unsqueeze(0)
            keep = (torch.arange(S) >= 0)[None, None, :, None].expand(B, -1, S, S)
            mask = torch.where(keep, bias, torch.finfo(q.dtype).min)
        elif self.kind == "sliding":  # Mistral's, Gemma 2's: causal, the 4 latest keys, joined with `&`
            mask = (distance <= 0) & (distance > -4)
        elif self.kind == "padding":
            mask = torch.zeros(S).masked_fill(torch.arange(S) >= S - 4, float("-inf")).expand(S, S)
        elif self.kind == "input":
            mask = (torch.arange(S)[None, :] < lengths[:, None])[:, None, None, :]
        elif self.kind == "dropout":
            mask = F.dropout(self.relative.weight.sum(), p=0.5, training=True) + distance.float()
        else:  # "inplace"
            mask = distance.float()
            mask.mul_(self.relative.weight.sum())
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0) * 2


def _captured(kind: str):
    torch.manual_seed(0)
    model = Attention(kind).eval()
    args = (torch.randn(B, H, S, D), torch.randn(B, H, S, D), torch.randn(B, H, S, D), torch.tensor([S, S - 3]))
    with torch.no_grad():
        gm, inputs = capture(model, *args)
        return gm, inputs, model(*args)


def _recording_delegate(monkeypatch, backend=None):
    """The Torch-TensorRT delegate with `backend` (default: StandInBackend) standing in for
    Torch-TensorRT's, and the graphs that backend receives."""
    backend = backend or StandInBackend()
    seen = []

    def record(gm, inputs, *, options):
        seen.append(gm)
        return backend(gm, inputs, options=options)

    _fake_compilation_settings(monkeypatch, backend=record)
    delegate = d.TorchTensorRTDelegate()
    delegate._runner_supported = False

    def build(gm, inputs):
        return delegate(gm, inputs, device=torch.device("cuda", 0), settings=resolve_settings({}, environ={}))
    return build, seen


def _built_by_stand_in(monkeypatch, kind: str):
    build, seen = _recording_delegate(monkeypatch)
    gm, inputs, expected = _captured(kind)
    return seen, build(gm, inputs), inputs, expected


def _mask_source(gm):
    attention = next(n for n in gm.graph.nodes if n.target is F.scaled_dot_product_attention)
    return attention.kwargs["attn_mask"]


@pytest.mark.parametrize("kind", ["t5", "padding", "sliding"])
def test_masks_from_constants_and_state_reach_the_delegate_as_inputs(monkeypatch, kind):
    seen, compiled, inputs, expected = _built_by_stand_in(monkeypatch, kind)
    assert len(seen) == 1
    assert _mask_source(seen[0]).op == "placeholder"  # computed ahead, passed in
    names = {str(getattr(n.target, "__name__", n.target)) for n in seen[0].graph.nodes}
    assert not names & {"embedding", "where", "masked_fill", "expand", "zeros", "and_"}  # the masks' work went ahead
    with torch.no_grad():
        assert torch.equal(compiled(*inputs)[0], expected)  # the prefix runs on every call, exactly


@pytest.mark.parametrize("kind", ["input", "dropout", "inplace"])
def test_other_masks_stay_in_the_graph(monkeypatch, kind):
    seen, _, _, _ = _built_by_stand_in(monkeypatch, kind)
    assert len(seen) == 1
    assert _mask_source(seen[0]).op != "placeholder"


def test_the_prefix_is_exactly_the_masks_work():
    gm, inputs, _ = _captured("t5")
    names = {str(getattr(n.target, "__name__", n.target)) for n in mask_prefix(gm, inputs)}
    assert "embedding" in names and "where" in names
    assert "scaled_dot_product_attention" not in names and "mul" not in names  # the attention and after
    prefixed = split_mask_prefix(gm, inputs)
    assert prefixed is not None and prefixed.ops == op_count(prefixed.whole.submod_0.prefix)
    rest = getattr(prefixed.whole, prefixed.rest)
    names = [n.name for n in rest.graph.nodes if n.op == "placeholder"]
    assert len(prefixed.rest_inputs) == len(names)
    # The rest's example for the mask is the mask itself (not zeros made from metadata).
    table = next(x for x in inputs if isinstance(x, torch.nn.Parameter))
    example = prefixed.rest_inputs[names.index(_mask_source(rest).name)]
    assert torch.equal(example, prefixed.whole.submod_0(table)) and example.abs().sum() > 0
    assert example.is_contiguous()  # made dense once, in the prefix (not at every engine call)


def _targets(gm):
    return {str(getattr(n.target, "__name__", n.target)) for n in gm.graph.nodes
            if n.op in ("call_function", "call_method")}


def test_what_reads_no_input_and_no_state_is_computed_once_at_compile_time():
    """T5's distances (aranges, a difference, abs, clamp) depend on sizes known when compiling:
    the prefix keeps them as a constant and is left with the table lookup and what follows."""
    gm, inputs, _ = _captured("t5")
    before = len(mask_prefix(gm, inputs))
    prefixed = split_mask_prefix(gm, inputs)
    prefix = prefixed.whole.submod_0.prefix
    assert not _targets(prefix) & {"arange", "sub", "abs", "clamp", "ge", "getitem"}
    assert "embedding" in _targets(prefix) and prefixed.ops < before - 5
    distance = torch.arange(S)[None, :] - torch.arange(S)[:, None]
    kept = [b for _, b in prefix.named_buffers()]
    assert any(b.shape == distance.shape and torch.equal(b, distance.abs().clamp(max=7)) for b in kept)


def test_constants_too_large_to_keep_stay_in_the_prefix(monkeypatch):
    """Nothing is lost when a constant is larger than MAX_FOLDED_BYTES: the prefix computes it,
    as before."""
    gm, inputs, _ = _captured("t5")
    monkeypatch.setattr(masks, "MAX_FOLDED_BYTES", 8)
    prefix = split_mask_prefix(gm, inputs).whole.submod_0.prefix
    assert "arange" in _targets(prefix) and not list(prefix.buffers())


def test_an_expanded_constant_counts_by_the_memory_it_holds(monkeypatch):
    """T5's keep mask is expanded to [B, 1, S, S] from S booleans: it is kept (as the view it is)
    under a bound that the distances table, stored in full, exceeds."""
    gm, inputs, _ = _captured("t5")
    monkeypatch.setattr(masks, "MAX_FOLDED_BYTES", 300)  # 512 elements expanded from 16 bytes; 2 KiB table
    prefix = split_mask_prefix(gm, inputs).whole.submod_0.prefix
    (kept,) = list(prefix.buffers())
    assert kept.dtype == torch.bool and kept.numel() == B * S * S and 0 in kept.stride()
    assert "arange" in _targets(prefix)  # the table is computed by the prefix, as before


def test_constants_are_real_values_even_inside_a_tracing_context():
    """Folded under an active FakeTensorMode (an aot compiler's context), the constants are still
    computed for real: a fake one would fail at the first call."""
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    graph = torch.fx.Graph()
    table = graph.placeholder("table")
    steps = graph.call_method("clamp", (graph.call_function(torch.arange, (4,)),), {"max": 2})
    graph.output(graph.call_function(F.embedding, (steps, table)))
    prefix = torch.fx.GraphModule(torch.nn.Module(), graph)
    with FakeTensorMode():
        masks._fold_constants(prefix)
    assert list(prefix.buffers()) and not any(isinstance(b, FakeTensor) for b in prefix.buffers())
    weights = torch.randn(3, 5)
    assert torch.equal(prefix(weights), F.embedding(torch.arange(4).clamp(max=2), weights))


class ReturnsItsMask(torch.nn.Module):
    """A constant padding mask the model also returns (as T5 returns its position bias)."""

    def forward(self, q):
        mask = torch.zeros(S, S).masked_fill(torch.arange(S) >= S - 2, float("-inf"))
        return F.scaled_dot_product_attention(q, q, q, attn_mask=mask), mask


def test_a_returned_mask_is_the_callers_own_tensor():
    """A returned mask is computed afresh at every call, never a constant the prefix keeps: a
    caller writing to it must not change later results."""
    q = torch.randn(1, 2, S, 4)
    with torch.no_grad():
        gm, inputs = capture(ReturnsItsMask().eval(), q)
        whole = split_mask_prefix(gm, inputs).whole
        first, mask = whole(*inputs)
        mask.zero_()
        again, fresh = whole(*inputs)
    assert fresh is not mask and torch.equal(again, first) and fresh[0, -1].item() == float("-inf")


def test_constants_that_cannot_be_computed_here_stay_in_the_prefix():
    """A constant on a device this machine lacks is left to the prefix, which computes it where
    it runs."""
    graph = torch.fx.Graph()
    table = graph.placeholder("table")
    missing = torch.device("cuda", torch.cuda.device_count())  # one past the last GPU, if any
    steps = graph.call_function(torch.arange, (S,), {"device": missing})
    graph.output(graph.call_function(F.embedding, (steps, table)))
    prefix = torch.fx.GraphModule(torch.nn.Module(), graph)
    code = prefix.code
    masks._fold_constants(prefix)
    assert prefix.code == code and not list(prefix.buffers())


def test_a_lower_rank_mask_reaches_the_engine_with_the_queries_rank(monkeypatch):
    """Torch-TensorRT 2.11 does not broadcast a [queries, keys] mask: it gets [1, 1, queries, keys]."""
    seen, compiled, inputs, expected = _built_by_stand_in(monkeypatch, "padding")
    mask = _mask_source(seen[0])
    value = mask.meta.get("example_value", mask.meta.get("val"))
    assert value.shape == (1, 1, S, S) and value.is_contiguous()
    with torch.no_grad():
        assert torch.equal(compiled(*inputs)[0], expected)


def test_the_prefix_runs_again_when_its_state_changes(monkeypatch):
    """Computed once while the state stays as it is; a write to the bias table (training, a
    loaded state dict) is seen at the next call."""
    _, compiled, inputs, expected = _built_by_stand_in(monkeypatch, "t5")
    prefix = compiled.submod_0
    calls = []
    monkeypatch.setattr(prefix.prefix, "forward", _counted(prefix.prefix.forward, calls))
    with torch.no_grad():
        assert torch.equal(compiled(*inputs)[0], expected)
        assert torch.equal(compiled(*inputs)[0], expected)
        assert len(calls) == 1
        table = next(x for x in inputs if isinstance(x, torch.nn.Parameter))
        table.mul_(3)
        changed = compiled(*inputs)[0]
    assert len(calls) == 2 and not torch.equal(changed, expected)
    with torch.no_grad():  # another tensor in its place (load_state_dict(assign=True), say): computed again
        other = torch.nn.Parameter(table.clone())
        while other._version < table._version:
            other.add_(0)  # the same version count: only who it is differs
        swapped = [other if x is table else x for x in inputs]
        assert torch.equal(compiled(*swapped)[0], changed)
    assert len(calls) == 3
    reference = Attention("t5").eval()
    reference.relative.weight = table
    with torch.no_grad():
        assert torch.equal(changed, reference(*inputs[1:4], torch.tensor([S, S - 3])))


def _counted(fn, calls):
    def counted(*args):
        calls.append(1)
        return fn(*args)
    return counted


def test_a_stored_graph_keeps_the_prefix_and_not_its_results(monkeypatch):
    """The disk cache stores the compiled graph: the prefix goes with it, what it computed last
    does not (it belongs to this process's state)."""
    import io

    _, compiled, inputs, expected = _built_by_stand_in(monkeypatch, "t5")
    with torch.no_grad():
        compiled(*inputs)
    buffer = io.BytesIO()
    torch.save(compiled, buffer)
    loaded = torch.load(io.BytesIO(buffer.getvalue()), weights_only=False)
    assert compiled.submod_0._memo is not None and loaded.submod_0._memo is None
    with torch.no_grad():
        assert torch.equal(loaded(*inputs)[0], expected)


class TwoLayers(torch.nn.Module):
    """Two attention calls sharing one position bias, as T5's layers share the first layer's."""

    def __init__(self) -> None:
        super().__init__()
        self.relative = torch.nn.Embedding(8, H)

    def forward(self, q, k, v):
        distance = torch.arange(S)[None, :] - torch.arange(S)[:, None]
        bias = self.relative(distance.abs().clamp(max=7)).permute(2, 0, 1)  # [H, S, S], a permuted view
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return F.scaled_dot_product_attention(y, k, v, attn_mask=bias)


def test_a_shared_mask_is_handed_over_once(monkeypatch):
    build, seen = _recording_delegate(monkeypatch)
    torch.manual_seed(0)
    model = TwoLayers().eval()
    args = tuple(torch.randn(B, H, S, D) for _ in range(3))
    with torch.no_grad():
        gm, inputs = capture(model, *args)
        compiled = build(gm, inputs)
        # The same mask values; PyTorch's CPU attention rounds a dense [1, H, S, S] mask and a
        # permuted [H, S, S] view in a different order (last bits).
        torch.testing.assert_close(compiled(*inputs)[0], model(*args), rtol=1e-6, atol=1e-6)
    masks = {_mask_source(seen[0])} | {n.kwargs["attn_mask"] for n in seen[0].graph.nodes
                                       if n.target is F.scaled_dot_product_attention}
    assert len(masks) == 1 and next(iter(masks)).op == "placeholder"


class LengthBias(torch.nn.Module):
    """T5's bias for whatever length comes: dynamic shapes make its sizes symbolic."""

    def __init__(self) -> None:
        super().__init__()
        self.relative = torch.nn.Embedding(8, H)

    def forward(self, q, k, v):
        n = q.shape[2]
        distance = torch.arange(n)[None, :] - torch.arange(n)[:, None]
        bias = self.relative(distance.abs().clamp(max=7)).permute(2, 0, 1)  # [H, n, n]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return y.transpose(1, 2).reshape(B, n, H * D)  # the rest needs the length too


def test_masks_with_symbolic_sizes_go_ahead_too(monkeypatch):
    """After a length change dynamo's graph has symbolic sizes: the mask still goes ahead (its
    prefix takes the sizes), and the sizes Torch-TensorRT drops from the rest are not passed."""

    def stand_in(gm, inputs, *, options):
        """As Torch-TensorRT's export: each size read from a tensor instead, then dropped."""
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        tensors = [n for n in placeholders if isinstance(n.meta.get("example_value"), torch.Tensor)]
        for node in placeholders:
            size = node.meta.get("example_value")
            if not isinstance(size, torch.SymInt):
                continue
            owner, dim = next((t, i) for t in tensors for i, s in enumerate(t.meta["example_value"].shape)
                              if isinstance(s, torch.SymInt) and s.node.expr == size.node.expr)
            with gm.graph.inserting_after(tensors[-1]):
                read = gm.graph.call_function(torch.ops.aten.sym_size.int, (owner, dim))
            node.replace_all_uses_with(read)
            gm.graph.erase_node(node)
        gm.recompile()
        return gm

    build, seen = _recording_delegate(monkeypatch, stand_in)
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = LengthBias().eval()
    compiled = torch.compile(model, backend=build)
    with torch.no_grad():
        for n in (16, 24, 32, 16):
            args = tuple(torch.randn(B, H, n, D) for _ in range(3))
            torch.testing.assert_close(compiled(*args), model(*args), rtol=1e-6, atol=1e-6)
    assert len(seen) == 2  # static, then dynamic
    dynamic = seen[1]
    assert not any(isinstance(n.meta.get("example_value"), torch.SymInt) for n in dynamic.graph.nodes
                   if n.op == "placeholder")  # its size was dropped: the rest is called without it
    assert _mask_source(dynamic).op == "placeholder"
    assert not any("embedding" in str(n.target) for n in dynamic.graph.nodes)


def test_a_and_b_is_not_a_write_and_a_iand_b_is():
    """operator.and_ (`a & b`, how transformers joins a sliding window to the causal mask) ends in
    "_" like torch's in-place ops, but writes nothing; taken for a write, it kept Mistral's and
    Gemma 2's masks inside the engine, where Torch-TensorRT 2.11 failed to convert their attention
    (H200, session 14)."""
    import operator

    from trt_multidev_backend.graphinfo import writes_in_place

    graph = torch.fx.Graph()
    a, b = graph.placeholder("a"), graph.placeholder("b")
    graph.output(graph.call_function(operator.and_, (a, b)))
    assert not writes_in_place(torch.fx.GraphModule({}, graph))
    graph = torch.fx.Graph()
    a, b = graph.placeholder("a"), graph.placeholder("b")
    graph.output(graph.call_function(operator.iand, (a, b)))
    assert writes_in_place(torch.fx.GraphModule({}, graph))
