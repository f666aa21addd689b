"""Fail small (a delegate that cannot convert some ops gets them excluded, not the whole graph
sent to the fallback) and the exact rewrites for TensorRT, with CPU test delegates."""

from __future__ import annotations

import logging
import operator

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.node import _get_qualified_name

import _delegates
import trt_multidev_backend as tm
from trt_multidev_backend.build import MAX_EXCLUDED, MAX_PIECE_BUILDS
from trt_multidev_backend.rewrites import _DROPOUTS


class Refused(RuntimeError):
    def __init__(self, op: str) -> None:
        super().__init__(f"no converter for {op}")
        self.op = op


class Refusing:
    """Stands in for Torch-TensorRT: raises on the first node whose op it refuses, unless the
    pipeline excluded that op (then, like torch_executed_ops, those nodes run in PyTorch)."""

    def __init__(self, refuses: set, *, same_op_forever: bool = False) -> None:
        self.refuses = {_get_qualified_name(op) for op in refuses}
        self.same_op_forever = same_op_forever
        self.calls: list[tuple[str, ...]] = []

    def __call__(self, gm, example_inputs, *, device, settings):
        self.calls.append(settings.excluded_ops)
        for node in gm.graph.nodes:
            if node.op != "call_function":
                continue
            name = _get_qualified_name(node.target)
            if name in self.refuses and (self.same_op_forever or name not in settings.excluded_ops):
                raise Refused(name)
        return gm

    @staticmethod
    def failing_op(exc):
        return exc.op if isinstance(exc, Refused) else None


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return torch.sigmoid(torch.relu(self.fc(x)) * 2) + torch.tanh(x)


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("trt_multidev") and r.levelname == "WARNING"]


def test_only_the_refused_ops_leave_the_delegate_and_the_result_is_cached(caplog):
    delegate = Refusing({torch.relu, torch.tanh})
    model, x = Net().eval(), torch.randn(4, 8)
    compiled = torch.compile(model, backend="trt_multidev", options={"delegate": delegate})
    with torch.no_grad():
        assert torch.allclose(compiled(x), model(x))
    assert delegate.calls == [(), ("torch.relu",), ("torch.relu", "torch.tanh")]
    messages = warnings_of(caplog)
    assert len(messages) == 2 and all("fallback" not in m for m in messages)
    assert "could not convert torch.relu on cpu (Refused: no converter for torch.relu)" in messages[0]
    assert "run in PyTorch on cpu and the rest in TensorRT engines" in messages[0]
    assert "op(s) of the compiled graph run in PyTorch (the graph had" in messages[0]
    assert tm.stats()["cpu"]["compiles"] == 1 and tm.stats()["cpu"]["fallbacks"] == 0
    # The same graph again (another model of the same architecture): the final partition is reused.
    torch.compile(Net().eval(), backend="trt_multidev", options={"delegate": delegate})(x)
    assert len(delegate.calls) == 3 and tm.stats()["cpu"]["cache_hits"] == 1
    assert len(warnings_of(caplog)) == 2  # once per op and device


def test_every_graph_s_log_line_says_what_it_left_to_pytorch_after_the_warning_was_given(caplog):
    caplog.set_level("INFO", logger="trt_multidev")
    delegate = Refusing({torch.relu})
    x = torch.randn(4, 8)
    for model in (Net().eval(), Chain()):  # two graphs, the same refused op
        torch.compile(model, backend="trt_multidev", options={"delegate": delegate})(x)
    built = [r.getMessage() for r in caplog.records if r.levelname == "INFO" and " by test_build:Refusing in " in
             r.getMessage()]
    assert len(built) == 2 and len(warnings_of(caplog)) == 1
    assert all(m.endswith("; left to PyTorch: torch.relu (Refused: no converter for torch.relu)") for m in built)


def test_strict_raises_at_the_first_refused_op():
    delegate = Refusing({torch.relu})
    with pytest.raises(tm.TrtMultidevError, match="no converter for torch.relu"):
        tm.backend(*_captured(), options={"delegate": delegate, "strict": True})
    assert delegate.calls == [()]


def test_an_op_refused_again_ends_the_search_in_the_fallback(caplog):
    delegate = Refusing({torch.relu}, same_op_forever=True)
    compiled = tm.backend(*_captured(), options={"delegate": delegate})
    assert delegate.calls == [(), ("torch.relu",)]
    assert compiled.fallback is not None and tm.stats()["cpu"]["fallbacks"] == 1
    assert any("running the eager fallback" in m for m in warnings_of(caplog))


class Chain(nn.Module):
    def forward(self, x):
        for op in (torch.relu, torch.sigmoid, torch.tanh, torch.sin, torch.cos, torch.exp, torch.abs,
                   torch.neg, torch.square, torch.sqrt):
            x = op(x)
        return x


def test_the_search_is_bounded():
    ops = {torch.relu, torch.sigmoid, torch.tanh, torch.sin, torch.cos, torch.exp, torch.abs, torch.neg,
           torch.square, torch.sqrt}
    delegate = Refusing(ops)
    compiled = tm.backend(*_captured(Chain()), options={"delegate": delegate})
    assert len(delegate.calls) == MAX_EXCLUDED + 1 and len(delegate.calls[-1]) == MAX_EXCLUDED
    assert compiled.fallback is not None


Opaque = _delegates.Opaque


class Layers(nn.Module):
    """Ten small layers, one of them (the seventh) with an op an Opaque delegate refuses."""

    def __init__(self) -> None:
        super().__init__()
        self.fcs = nn.ModuleList(nn.Linear(8, 8) for _ in range(10))

    def forward(self, x):
        for i, fc in enumerate(self.fcs):
            x = torch.exp(fc(x)) / 4 if i == 6 else torch.tanh(fc(x))
        return x


def test_a_failure_no_op_is_named_for_is_searched_by_halves(caplog):
    delegate = Opaque({"exp"})
    model, x = Layers().eval(), torch.randn(4, 8)
    compiled = torch.compile(model, backend="trt_multidev", options={"delegate": delegate, "min_block_size": 1})
    with torch.no_grad():
        assert torch.allclose(compiled(x), model(x))
    # The whole graph (21 ops) failed, then each half; the failing half was cut until the piece
    # holding exp was too small to cut: everything else was built.
    assert delegate.calls[0] == 21 and len(delegate.calls) <= 1 + MAX_PIECE_BUILDS
    assert all("exp" not in names for names in delegate.built)
    built_ops = sum(len(names) for names in delegate.built)
    assert 21 - built_ops < 8  # what runs in PyTorch: the piece with exp, below twice MIN_PIECE_OPS
    (message,) = warnings_of(caplog)
    assert "could not build graph graph(x) of 21 ops as a whole on cpu (RuntimeError: TensorRT could not " \
           "create an execution context" in message
    assert "the pieces that still failed run in PyTorch on cpu" in message and "exp" in message
    assert "fallback" not in message
    assert tm.stats()["cpu"]["compiles"] == 1 and tm.stats()["cpu"]["fallbacks"] == 0
    calls = len(delegate.calls)
    torch.compile(Layers().eval(), backend="trt_multidev", options={"delegate": delegate, "min_block_size": 1})(x)
    assert len(delegate.calls) == calls and tm.stats()["cpu"]["cache_hits"] == 1  # the search is paid once


class EveryLayer(nn.Module):
    """BERT's case: the op TensorRT refuses (here exp, standing in for attention) in each of its
    four layers."""

    def __init__(self) -> None:
        super().__init__()
        self.fcs = nn.ModuleList(nn.Linear(8, 8) for _ in range(4))

    def forward(self, x):
        for fc in self.fcs:
            x = torch.tanh(torch.exp(fc(x)) / 4 + x)
        return x


def test_an_op_failing_in_every_layer_is_cut_around_once_suspected():
    delegate = Opaque({"exp"})
    model, x = EveryLayer().eval(), torch.randn(4, 8)
    compiled = torch.compile(model, backend="trt_multidev", options={"delegate": delegate, "min_block_size": 1})
    with torch.no_grad():
        assert torch.allclose(compiled(x), model(x))
    # Halving alone leaves pieces of up to 7 ops around each exp; once exp is suspected (and
    # confirmed by failing alone), only the four exp calls stay out of the delegate. 12 builds:
    # the whole, two halvings, a leaf, linear then exp tried alone, six pieces.
    assert len(delegate.calls) <= 12
    assert all("exp" not in names for names in delegate.built)
    built = [name for names in delegate.built for name in names]
    assert all(built.count(op) == 4 for op in ("truediv", "add", "tanh"))
    assert built.count("linear") >= 4  # one more when it was suspected first and built alone


def test_pieces_are_stored_in_the_disk_cache_with_what_they_left_to_pytorch(caplog):
    delegate = _delegates.opaque_exp  # a name another process finds: the disk cache applies
    options = {"delegate": "_delegates:opaque_exp", "min_block_size": 1}
    model, x = Layers().eval(), torch.randn(4, 8)
    with torch.no_grad():
        ref = model(x)
        torch.compile(model, backend="trt_multidev", options=options)(x)
        calls = len(delegate.calls)
        torch._dynamo.reset()
        tm.reset()  # as a new process: only the disk cache remains
        caplog.clear()
        out = torch.compile(model, backend="trt_multidev", options=options)(x)
    assert torch.allclose(out, ref)
    assert len(delegate.calls) == calls and tm.stats()["cpu"]["disk_hits"] == 1
    assert any("built in pieces instead" in m and "exp" in m for m in warnings_of(caplog))


def test_strict_raises_at_a_failure_no_op_is_named_for():
    delegate = Opaque({"exp"})
    with pytest.raises(tm.TrtMultidevError, match="execution context"):
        tm.backend(*_captured(Layers().eval()), options={"delegate": delegate, "strict": True})
    assert len(delegate.calls) == 1


def test_a_failure_every_piece_meets_ends_in_the_fallback_boundedly(caplog):
    delegate = Opaque({"linear", "tanh", "exp", "truediv"})  # every op: no piece can build
    compiled = tm.backend(*_captured(Layers().eval()), options={"delegate": delegate, "min_block_size": 1})
    assert compiled.fallback is not None and "execution context" in compiled.fallback
    assert 1 < len(delegate.calls) <= 1 + MAX_PIECE_BUILDS and not delegate.built
    assert any("running the eager fallback" in m for m in warnings_of(caplog))


class WritesInPlace(Layers):
    def forward(self, x):
        y = torch.tanh(self.fcs[0](x))
        y.mul_(2)
        return super().forward(y)


class WritesThroughAView(Layers):
    """The write goes to a view only the write reads; its base, read later, sees it."""

    def forward(self, x):
        base = torch.tanh(self.fcs[0](x)) * 2
        view = base.view(8, 4)
        view += 1
        return super().forward(base)


@pytest.mark.parametrize("model", [WritesInPlace, WritesThroughAView])
def test_a_graph_that_writes_in_place_is_not_cut(model):
    delegate = Opaque({"exp"})
    compiled = tm.backend(*_captured(model().eval()), options={"delegate": delegate, "min_block_size": 1})
    assert len(delegate.calls) == 1 and compiled.fallback is not None


class WritesAFreshTensor(Layers):
    """T5's pattern (relative_buckets += ...): an in-place add on a tensor only the write reads."""

    def forward(self, x):
        y = torch.tanh(self.fcs[0](x)) * 2
        y += torch.sigmoid(x)  # the graph's only add
        return super().forward(y)


def test_a_write_to_a_fresh_tensor_nothing_else_reads_is_made_out_of_place_and_cut():
    delegate, model, x = Opaque({"exp"}), WritesAFreshTensor().eval(), torch.randn(4, 8)
    compiled = torch.compile(model, backend="trt_multidev", options={"delegate": delegate, "min_block_size": 1})
    with torch.no_grad():
        assert torch.equal(compiled(x), model(x))
    assert tm.stats()["cpu"]["fallbacks"] == 0 and len(delegate.calls) > 1
    built = [name for names in delegate.built for name in names]
    assert "exp" not in built and "iadd" not in built and built.count("add") == 1


class WidensInPlace(Layers):
    """`y += x` keeps y's dtype (fp16 here); `y + x` would give fp32: it stays in place."""

    def forward(self, x):
        y = torch.tanh(self.fcs[0](x)).half()
        y += x
        return super().forward(y.float())


def test_an_update_whose_out_of_place_form_changes_the_dtype_stays_in_place():
    delegate = Opaque({"exp"})
    compiled = tm.backend(*_captured(WidensInPlace().eval()), options={"delegate": delegate, "min_block_size": 1})
    assert len(delegate.calls) == 1 and compiled.fallback is not None  # in place: not cut


def _captured(model: nn.Module | None = None):
    from helpers import capture

    return capture(model or Net().eval(), torch.randn(4, 8))


# -- exact rewrites ---------------------------------------------------------------------------
class Positions(nn.Module):
    """GPT-2's pattern: position ids from arange (int64) into a position embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens, self.positions = nn.Embedding(50, 16), nn.Embedding(32, 16)

    def forward(self, ids):
        pos = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0)
        return self.tokens(ids) + self.positions(pos)


class Recording:
    def __init__(self) -> None:
        self.code = ""
        self.calls: list = []

    def __call__(self, gm, example_inputs, *, device, settings):
        self.code = gm.code
        self.calls = [n.target for n in gm.graph.nodes if n.op == "call_function"]
        return gm


def test_int64_embedding_indices_reach_the_delegate_as_int32_and_results_are_exact():
    delegate, model = Recording(), Positions().eval()
    ids = torch.randint(0, 50, (2, 12))
    with torch.no_grad():
        out = torch.compile(model, backend="trt_multidev", options={"delegate": delegate})(ids)
        assert torch.equal(out, model(ids))
    # the position ids, built from arange only; the token ids come from the caller and stay int64
    assert delegate.code.count("torch.int32") == 1


def test_indices_from_inputs_or_state_are_left_alone():
    class Buffered(nn.Module):  # BERT's pattern: position ids kept in a buffer
        def __init__(self) -> None:
            super().__init__()
            self.positions = nn.Embedding(32, 16)
            self.register_buffer("ids", torch.arange(32).unsqueeze(0))

        def forward(self, x):
            return self.positions(self.ids[:, : x.shape[1]]) + x

    delegate = Recording()
    torch.compile(Buffered().eval(), backend="trt_multidev", options={"delegate": delegate})(torch.randn(2, 12, 16))
    assert "torch.int32" not in delegate.code


def test_a_delegate_can_say_what_excluding_an_op_does(caplog):
    delegate = Refusing({torch.relu})
    delegate.exclusion_note = lambda op: "relu is traced another way" if op == "torch.relu" else None
    torch.compile(Net().eval(), backend="trt_multidev", options={"delegate": delegate})(torch.randn(4, 8))
    (message,) = warnings_of(caplog)
    assert "could not convert torch.relu on cpu (Refused: no converter for torch.relu); relu is traced another way" \
           in message and "run in PyTorch on cpu" not in message


class Dropouts(nn.Module):
    """GPT-2's pattern: dropout after embeddings, attention and MLP (a no-op in eval mode)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc, self.drop = nn.Linear(3, 3), nn.Dropout(0.1)

    def forward(self, x):
        y = self.drop(self.fc(x)) + F.dropout(x, 0.2, training=self.training)
        return F.dropout2d(torch.dropout(y, 0.3, self.training), 0.1, self.training) + F.alpha_dropout(x, 0.1)


def test_dropout_outside_training_is_removed_and_results_are_exact():
    delegate, model = Recording(), Dropouts().eval()
    x = torch.randn(4, 8, 3)
    with torch.no_grad():
        out = torch.compile(model, backend="trt_multidev", options={"delegate": delegate})(x)
    assert torch.equal(out, model(x)) and not set(delegate.calls) & set(_DROPOUTS)


def test_dropout_in_training_is_kept():
    delegate = Recording()
    torch.compile(Dropouts().train(), backend="trt_multidev", options={"delegate": delegate})(torch.randn(4, 8, 3))
    # all but alpha_dropout, whose training flag defaults to False
    assert [c for c in delegate.calls if c in _DROPOUTS] == [F.dropout, F.dropout, torch.dropout, F.dropout2d]


class FirstCacheStep(nn.Module):
    """Hugging Face's KV cache at its first step: cat([torch.tensor([]), new keys], dim=-2)."""

    def __init__(self, empty_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.empty_dtype = empty_dtype

    def forward(self, x):
        keys = x.view(2, 4, 3, 2).transpose(1, 2)
        empty = torch.tensor([], dtype=self.empty_dtype or x.dtype, device=x.device)
        return torch.cat([empty, keys], dim=-2) * 2


def test_empty_tensors_a_concatenation_skips_are_left_out_and_results_are_exact():
    delegate, model, x = Recording(), FirstCacheStep(), torch.randn(2, 24)
    out = torch.compile(model, backend="trt_multidev", options={"delegate": delegate})(x)
    assert torch.equal(out, model(x)) and out.is_contiguous() == model(x).is_contiguous()
    assert torch.tensor not in delegate.calls and torch.cat in delegate.calls


def test_an_empty_tensor_that_changes_the_dtype_is_kept():
    delegate, model, x = Recording(), FirstCacheStep(torch.float64), torch.randn(2, 24)
    out = torch.compile(model, backend="trt_multidev", options={"delegate": delegate})(x)
    assert out.dtype == torch.float64 and torch.equal(out, model(x)) and torch.tensor in delegate.calls


def _wrapping_getitem(value, index):
    """x[index] the way Torch-TensorRT 2.11's slice converter reads a constant bound beyond the
    dimension: modulo its size (-63 on 16 starts at 1), where PyTorch clamps (starts at 0)."""
    entries = list(index) if isinstance(index, tuple) else [index]
    dim = 0
    for i, entry in enumerate(entries):
        if entry is Ellipsis:
            dim += value.dim() - sum(e is not None and e is not Ellipsis for e in entries)
            continue
        if isinstance(entry, slice):
            n = value.shape[dim]
            entries[i] = slice(*(b % n if type(b) is int and not -n <= b <= n else b
                                 for b in (entry.start, entry.stop)), entry.step)
        dim += entry is not None
    return value[tuple(entries)]


class Wrapping(Recording):
    """Stands in for Torch-TensorRT: runs the graph reading slice bounds as its converter does."""

    def __call__(self, gm, example_inputs, *, device, settings):
        super().__call__(gm, example_inputs, device=device, settings=settings)
        self.slices = [n.args[1] for n in gm.graph.nodes if n.target is operator.getitem]
        for node in gm.graph.nodes:
            if node.target is operator.getitem:
                node.target = _wrapping_getitem
        gm.recompile()
        return gm


class WindowCache(nn.Module):
    """A sliding-window KV cache's update (Hugging Face's DynamicSlidingWindowLayer keeps the
    last window - 1 positions: full[:, :, -63:] for a window of 64), and a stop past the end."""

    def forward(self, x):
        full = torch.tanh(x) * 2
        return full.sum(-1), full[:, :, -63:], full[..., 2:100]


@pytest.mark.parametrize("dynamic", [False, True])
def test_slice_bounds_beyond_a_dimension_are_clamped_as_pytorch_clamps_them(dynamic, caplog):
    """Mistral's and Gemma 2's generate() failed on Torch-TensorRT: 15 cached positions instead
    of 16 after the prompt, then a shape error. Clamped, the bounds mean the same on every side."""
    caplog.set_level(logging.INFO, logger="trt_multidev")
    delegate, model = Wrapping(), WindowCache()
    compiled = torch.compile(model, backend="trt_multidev", options={"delegate": delegate})
    for n in (16, 20, 40, 5) if dynamic else (16,):
        x = torch.randn(2, 3, n)
        if dynamic and n == 16:
            torch._dynamo.mark_dynamic(x, 2, min=2, max=62)
        out, ref = compiled(x), model(x)
        assert all(torch.equal(a, b) for a, b in zip(out, ref)), n
    assert tm.stats()["cpu"]["compiles"] == 1 and tm.stats()["cpu"]["fallbacks"] == 0
    assert [s[-1] for s in delegate.slices] == ([slice(0, None), slice(2, 16)] if not dynamic
                                                 else [slice(0, None), slice(2, None)])
    assert "slice bounds beyond the dimension clamped as PyTorch does (-63:None -> 0:None on dim 2 of " \
        + ("16)" if not dynamic else "s") in caplog.text


def test_slice_bounds_inside_every_size_are_left_alone():
    """-4: on a dimension of at least 5 means the last four for every size: not pinned to one."""
    delegate = Wrapping()
    compiled = torch.compile(lambda x: (x * 2)[:, -4:] + (x * 3)[:, 1:4].sum(), backend="trt_multidev",
                             options={"delegate": delegate})
    first = torch.randn(2, 16)
    torch._dynamo.mark_dynamic(first, 1, min=5, max=100)
    for n in (16, 9, 30):
        x = first if n == 16 else torch.randn(2, n)
        assert torch.equal(compiled(x), (x * 2)[:, -4:] + (x * 3)[:, 1:4].sum())
    assert [s[-1] for s in delegate.slices] == [slice(-4, None), slice(1, 4)]


def test_a_slice_no_one_bound_fits_runs_in_pytorch_after_the_rest():
    """A size with no guard either way (here an unbacked one in [2, 100]): -63 starts at 0 below
    63 and at n - 63 above, so the slice runs in PyTorch, after the one device segment."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    from trt_multidev_backend.device import DevicePlan
    from trt_multidev_backend.graphinfo import IN_PYTORCH
    from trt_multidev_backend.rewrites import rewrite_for_tensorrt
    from trt_multidev_backend.segments import split_by_device

    env = ShapeEnv()
    n = env.create_unbacked_symint()
    env.constrain_symbol_range(n.node.expr, compiler_min=2, compiler_max=100)
    with FakeTensorMode(shape_env=env) as mode:
        example = torch.empty(2, n)
        graph = torch.fx.Graph()
        x = graph.placeholder("x")
        full = graph.call_function(torch.mul, (graph.call_function(torch.tanh, (x,)), 2))
        window = graph.call_function(operator.getitem, (full, (slice(None), slice(-63, None))))
        total = graph.call_function(torch.sum, (full,))
        graph.output((window, total))
        x.meta["val"], full.meta["val"] = example, example * 2
        window.meta["val"], total.meta["val"] = example[:, -63:], example.sum()
    gm = torch.fx.GraphModule(torch.nn.Module(), graph)
    notes = rewrite_for_tensorrt(gm)
    assert window.meta[IN_PYTORCH] and any("runs in PyTorch: slice bounds" in note for note in notes)
    segmented = split_by_device(gm, [example], DevicePlan(torch.device("cpu"), "test", torch.device("cpu"), (), ("cpu",)))
    assert len(segmented.device_segments) == 1 and len(segmented.host_segments) == 1
    # The build line's layout: each segment in order, or summed per place where there are many.
    assert segmented.describe() == "submod_0 on cpu (3 ops), submod_1 in PyTorch (1 ops)"
    assert segmented.describe(most=1) == "1 on cpu (3 ops), 1 in PyTorch (1 ops)"
    (name, _, _), = segmented.device_segments
    assert operator.getitem not in [node.target for node in getattr(segmented.gm, name).graph.nodes]
    for size in (16, 70):
        real = torch.randn(2, size)
        out = segmented.gm(real)
        assert torch.equal(out[0], (torch.tanh(real) * 2)[:, -63:]) and torch.equal(out[1], (torch.tanh(real) * 2).sum())
    del mode


@pytest.mark.parametrize("fn, dims", [(F.dropout, 2), (F.dropout1d, 3), (F.dropout2d, 4), (F.dropout3d, 5),
                                      (F.alpha_dropout, 2), (F.feature_alpha_dropout, 4), (torch.dropout, 2),
                                      (torch.alpha_dropout, 2), (torch.feature_dropout, 4),
                                      (torch.feature_alpha_dropout, 4)])
def test_eager_dropout_outside_training_returns_its_input_itself(fn, dims):
    """What the removal rests on: the same tensor object, so aliasing is as in eager too."""
    x = torch.randn(*(2, 3, 4, 4, 4)[:dims])
    assert fn(x, 0.5, False) is x


def test_cudnn_attention_is_left_out_of_tracing_only_inside_the_block():
    from trt_multidev_backend.delegate import CUDNN_ATTENTION, TorchTensorRTDelegate, _without_cudnn_attention

    before = (torch.backends.cuda.cudnn_sdp_enabled(), torch.backends.cuda.flash_sdp_enabled(),
              torch.backends.cuda.mem_efficient_sdp_enabled(), torch.backends.cuda.math_sdp_enabled())
    with _without_cudnn_attention():
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()
        assert torch.backends.cuda.math_sdp_enabled()
    assert (torch.backends.cuda.cudnn_sdp_enabled(), torch.backends.cuda.flash_sdp_enabled(),
            torch.backends.cuda.mem_efficient_sdp_enabled(), torch.backends.cuda.math_sdp_enabled()) == before
    assert "another kernel" in TorchTensorRTDelegate.exclusion_note(CUDNN_ATTENTION)
    assert TorchTensorRTDelegate.exclusion_note("torch.ops.aten.embedding.default") is None


class Slices(nn.Module):
    def forward(self, x):
        y = torch.tanh(x)[:, :4]  # a view whose strides reach past its own 32 elements
        return torch.exp(torch.sin(y) + torch.cos(y) * torch.neg(torch.abs(y)))


def test_pieces_take_views_that_reach_past_their_own_size():
    """A cut may pass a slice of a wider tensor to the next piece; its example is built from the
    metadata (real tensors, no fake mode): storage for all the strides reach (BERT on an H200
    fell back with "setStorage ... out of bounds" before)."""
    from helpers import capture

    from trt_multidev_backend.build import call_delegate
    from trt_multidev_backend.settings import resolve_settings

    gm, _ = capture(Slices(), torch.randn(8, 64))
    delegate = Opaque({"exp"})
    built = call_delegate(delegate, gm, [torch.randn(8, 64)], torch.device("cpu"),
                          resolve_settings({"min_block_size": 1}, environ={}))
    x = torch.randn(8, 64)
    out = built.callable(x)
    assert torch.allclose(out[0] if isinstance(out, (tuple, list)) else out, Slices()(x))
    assert len(delegate.calls) > 1 and built.left


def test_ops_left_in_pytorch_count_method_calls_too():
    """The share of a graph left in PyTorch counts its ops as op_count does: dynamo records
    x.view(...) and x.transpose(...) as method calls (BERT's pieces were under-counted)."""
    from helpers import capture

    from trt_multidev_backend.build import pytorch_ops

    gm, _ = capture(lambda x: torch.tanh(x.view(4, 2, 4).transpose(1, 2)), torch.randn(4, 8))
    assert pytorch_ops(gm, ()) == 3


def test_pieces_of_a_graph_for_cuda1_are_built_for_cuda1_with_its_tensors_only(fake_mode):
    """The search by halves keeps the device promise: every piece goes to the delegate for the
    graph's GPU, with example inputs on that GPU only (FakeTensor devices; the engine-like
    delegate refuses any other device and propagates the examples through each piece)."""
    from helpers import EngineLikeDelegate, fake, on_fake_device

    class OpaqueEngineLike(EngineLikeDelegate):
        def __call__(self, gm, example_inputs, *, device, settings):
            if any(getattr(n.target, "__name__", "") == "exp" for n in gm.graph.nodes):
                self.calls.append(None)
                raise RuntimeError("TensorRT could not create an execution context for '_run_on_acc_1'")
            return super().__call__(gm, example_inputs, device=device, settings=settings)

        @staticmethod
        def failing_op(exc):
            return None

    delegate = OpaqueEngineLike()
    model = on_fake_device(Layers().requires_grad_(False), "cuda:1", fake_mode)
    out = torch.compile(model, backend="trt_multidev", options={"delegate": delegate, "min_block_size": 1})(
        fake(fake_mode, 4, 8, device="cuda:1"))
    built = [c for c in delegate.calls if c is not None]
    assert out.device == torch.device("cuda", 1) and len(built) >= 2
    assert all(c.device == torch.device("cuda", 1) and set(c.input_devices) <= {torch.device("cuda", 1)}
               for c in built)
    assert tm.stats()["cuda:1"]["compiles"] == 1 and tm.stats()["cuda:1"]["fallbacks"] == 0


class DynamicLayers(nn.Module):
    """Sizes read once and used in every layer: pieces of a dynamic graph pass them along."""

    def __init__(self) -> None:
        super().__init__()
        self.fcs = nn.ModuleList(nn.Linear(8, 8) for _ in range(4))

    def forward(self, x):
        n = x.shape[0]
        for i, fc in enumerate(self.fcs):
            x = torch.exp(fc(x)) / 4 if i == 2 else torch.tanh(fc(x))
            x = x.view(n, 2, 4).reshape(n, 8)
        return x


def test_pieces_of_a_dynamic_graph_run_every_batch_size():
    delegate, model = Opaque({"exp"}), DynamicLayers().eval()
    compiled = torch.compile(model, backend="trt_multidev", options={"delegate": delegate, "min_block_size": 1})
    first = torch.randn(4, 8)
    torch._dynamo.mark_dynamic(first, 0)
    with torch.no_grad():
        for x in (first, torch.randn(6, 8), torch.randn(9, 8), torch.randn(3, 8)):
            assert torch.allclose(compiled(x), model(x))
    assert len(delegate.built) >= 2 and all("exp" not in names for names in delegate.built)
    assert tm.stats()["cpu"]["compiles"] == 1  # one dynamic graph, built once in pieces


class ValuesCache(nn.Module):
    """A decode step's values: concatenated with the new one, then expanded to every query head
    (GQA's repeat_kv). Dynamo reads the concatenation's length as torch.sym_sum([1, s])."""

    def forward(self, values, new):
        values = torch.cat([values, torch.tanh(new)], dim=-2)
        b, h, s, d = values.shape
        return values[:, :, None].expand(b, h, 2, s, d).reshape(b, h * 2, s, d) * 3


def test_a_sum_of_numbers_reaches_the_delegate_as_additions_and_results_are_exact():
    """Torch-TensorRT 2.11 has no converter for torch.sym_sum: Qwen2's decode step ran it in
    PyTorch between three engines (H200, session 18)."""
    delegate, model = Recording(), ValuesCache()
    compiled = torch.compile(model, backend="trt_multidev", options={"delegate": delegate}, dynamic=True)
    for n in (5, 9, 2):
        args = torch.randn(1, 2, n, 4), torch.randn(1, 2, 1, 4)
        assert torch.equal(compiled(*args), model(*args))
    assert torch.sym_sum not in delegate.calls and operator.add in delegate.calls
    assert tm.stats()["cpu"]["compiles"] == 1 and tm.stats()["cpu"]["fallbacks"] == 0
