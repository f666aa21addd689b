"""lowering.py: sizes read from their tensors and unread number arguments dropped before
Torch-TensorRT 2.11's `remove_sym_nodes`; copies of graph inputs that its own pass keeps (the input
also gives its size) dropped, except where that would change what the graph computes or returns."""

import pytest
import torch
import torch.fx

from trt_multidev_backend.lowering import input_copies_dropped
from trt_multidev_backend.placement import graph_copy

aten = torch.ops.aten


def _graph(build) -> torch.fx.GraphModule:
    graph = torch.fx.Graph()
    keys = graph.placeholder("keys")
    new = graph.placeholder("new")
    copy = graph.call_function(aten.clone.default, (keys,))
    graph.output(build(graph, keys, new, copy))
    return torch.fx.GraphModule(torch.nn.Module(), graph)


def _clones(gm: torch.fx.GraphModule) -> int:
    return sum(n.target is aten.clone.default for n in gm.graph.nodes)


def _inputs():
    return torch.randn(1, 2, 5, 4), torch.randn(1, 2, 1, 4)


def test_a_copy_read_beside_the_inputs_size_is_dropped_and_the_result_is_the_same():
    # Qwen2's decode step as Torch-TensorRT lowers it: the cached keys give their length
    # (sym_size) and their copy is concatenated with the new keys
    def build(graph, keys, new, copy):
        length = graph.call_function(aten.sym_size.int, (keys, 2))
        return (graph.call_function(aten.cat.default, ([copy, new], -2)), length)

    gm = _graph(build)
    args = _inputs()
    expected = gm(*args)
    input_copies_dropped(gm)
    assert _clones(gm) == 0
    cat = next(n for n in gm.graph.nodes if n.target is aten.cat.default)
    assert cat.args[0][0].op == "placeholder"
    got = gm(*args)
    assert torch.equal(got[0], expected[0]) and got[1] == expected[1]


def test_a_copy_the_graph_returns_stays():
    # an engine cannot hand its input back as an output: Torch-TensorRT's converter forces a layer
    def build(graph, keys, new, copy):
        graph.call_function(aten.sym_size.int, (keys, 2))
        return (copy, graph.call_function(aten.add.Tensor, (copy, new)))

    gm = _graph(build)
    input_copies_dropped(gm)
    assert _clones(gm) == 1


def _input_written(graph, keys, new, copy):
    graph.call_function(aten.add_.Tensor, (keys, 1.0))
    return (graph.call_function(aten.mul.Tensor, (copy, new)),)


def _copy_written(graph, keys, new, copy):
    written = graph.call_function(aten.mul_.Tensor, (copy, 2.0))
    return (graph.call_function(aten.add.Tensor, (keys, written)),)


@pytest.mark.parametrize("build", [_input_written, _copy_written])
def test_a_copy_of_an_input_or_a_copy_written_in_place_stays(build):
    gm = _graph(build)
    args = _inputs()
    expected = gm(*[a.clone() for a in args])[0]
    input_copies_dropped(gm)
    assert _clones(gm) == 1
    assert torch.equal(gm(*[a.clone() for a in args])[0], expected)


def test_a_copy_with_a_memory_format_stays():
    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    copy = graph.call_function(aten.clone.default, (x,), {"memory_format": torch.contiguous_format})
    graph.output((graph.call_function(aten.relu.default, (copy,)),))
    gm = torch.fx.GraphModule(torch.nn.Module(), graph)
    input_copies_dropped(gm)
    assert _clones(gm) == 1


def _dynamic_graph(fn, *args, **kwargs):
    seen = {}

    def grab(gm, example_inputs, **_):
        seen["gm"], seen["inputs"] = graph_copy(gm), list(example_inputs)
        return gm.forward

    torch.compile(fn, backend=grab, dynamic=True)(*args, **kwargs)
    return seen["gm"], seen["inputs"]


def _symint_placeholders(gm):
    return [n for n in gm.graph.nodes if n.op == "placeholder" and n.type is torch.SymInt]


@pytest.mark.parametrize("fn, args, kwargs", [
    (lambda tensors: tensors[0] * tensors[0].shape[0] + tensors[0].shape[1], ([torch.randn(3, 4)],), {}),
    (lambda x, **kw: x * kw["y"].shape[0] + kw["y"].sum(), (torch.randn(3, 4),), {"y": torch.randn(5, 2)}),
])
def test_sizes_of_tensors_in_lists_and_dicts_are_read_from_the_tensors(fn, args, kwargs):
    """Torch-TensorRT 2.11 looks a size argument's tensor up by `source.base.local_name`, which a
    tensor from a list or a dict lacks (AttributeError: HF decode steps fell back). After the
    rewrite no size argument it would look up is left, and the graph computes the same."""
    from trt_multidev_backend.lowering import sizes_from_their_tensors

    gm, inputs = _dynamic_graph(fn, *args, **kwargs)
    callers = [*args[0]] if isinstance(args[0], list) else [*args, *kwargs.values()]

    def real(example):  # the caller's value behind an example input
        if isinstance(example, torch.SymInt):
            return int(example.node.hint)
        shape = tuple(int(d.node.hint) if isinstance(d, torch.SymInt) else d for d in example.shape)
        return next(t for t in callers if tuple(t.shape) == shape)

    values = [real(x) for x in inputs]
    expected = gm(*values)
    notes = sizes_from_their_tensors(gm)
    assert any("read from its tensor" in n for n in notes)
    for node in _symint_placeholders(gm):
        base = getattr(getattr(node.meta.get("grapharg"), "source", None), "base", None)
        assert base is None or hasattr(base, "local_name")  # nothing left for 2.11's lookup to trip on
    torch.testing.assert_close(gm(*values), expected)


def test_sizes_of_local_tensors_are_left_to_torch_tensorrt():
    from trt_multidev_backend.lowering import sizes_from_their_tensors

    gm, _ = _dynamic_graph(lambda x: x * x.shape[0], torch.randn(3, 4))
    before = gm.code
    assert sizes_from_their_tensors(gm) == [] and gm.code == before


def test_number_arguments_nothing_reads_are_dropped_with_their_inputs():
    """Torch-TensorRT 2.11 pops each unread SymInt argument's example by a position counted before
    any pop: with two or more it took the wrong ones or raised IndexError (Mistral's decode step,
    H200, session 17). They are dropped first, from the graph and the inputs alike."""
    from trt_multidev_backend.lowering import unread_numbers_dropped

    x, y = torch.randn(3, 4), torch.randn(5, 2)
    gm, inputs = _dynamic_graph(lambda a, b: a * 2 + b.sum(), x, y)
    unread = [n for n in _symint_placeholders(gm) if not n.users]
    assert len(unread) >= 2  # the case 2.11 gets wrong
    examples = list(inputs)
    assert unread_numbers_dropped(gm, examples) == len(unread)
    kept = [n for n in gm.graph.nodes if n.op == "placeholder"]
    assert not any(n in kept for n in unread) and len(examples) == len(kept)
    assert all(isinstance(e, torch.Tensor) for e in examples)  # what is left lines up with the tensors
    torch.testing.assert_close(gm(x, y)[0], x * 2 + y.sum())
    assert unread_numbers_dropped(gm, examples) == 0


def test_the_pass_is_in_torch_tensorrts_list_only_while_builds_run(monkeypatch):
    """Torch-TensorRT's list of passes after its export (a torch.fx PassManager, as its
    DynamoPassManager is): the pass goes in right after Torch-TensorRT's own removal of copies,
    stays while any build is inside, and leaves when the last one ends, an error included; the
    list is replaced, not changed, so another thread going through it is not disturbed."""
    from torch.fx.passes.pass_manager import PassManager  # what Torch-TensorRT's DynamoPassManager extends

    from trt_multidev_backend import lowering

    def remove_input_alias_fixing_clones(gm, settings):
        return gm

    def constant_fold(gm, settings):
        return gm

    manager = PassManager([remove_input_alias_fixing_clones, constant_fold])
    monkeypatch.setattr(lowering, "_post_lowering_passes", lambda: manager)
    before = manager.passes
    with lowering.added_to_lowering():
        assert manager.passes == [remove_input_alias_fixing_clones, input_copies_dropped, constant_fold]
        assert before == [remove_input_alias_fixing_clones, constant_fold]  # a list being gone through stays
        with lowering.added_to_lowering():  # a second build meanwhile (another thread, a nested build)
            pass
        assert input_copies_dropped in manager.passes
    assert manager.passes == [remove_input_alias_fixing_clones, constant_fold]
    with pytest.raises(RuntimeError), lowering.added_to_lowering():
        raise RuntimeError("a failed build")
    assert manager.passes == [remove_input_alias_fixing_clones, constant_fold]
