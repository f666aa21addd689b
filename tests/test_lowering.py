"""lowering.py: copies of graph inputs that Torch-TensorRT's own pass keeps (the input also gives
its size) are dropped, except where that would change what the graph computes or returns."""

import torch
import torch.fx

from trt_multidev_backend.lowering import input_copies_dropped

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


def test_a_copy_of_an_input_written_in_place_stays():
    def build(graph, keys, new, copy):
        graph.call_function(aten.add_.Tensor, (keys, 1.0))
        return (graph.call_function(aten.mul.Tensor, (copy, new)),)

    gm = _graph(build)
    args = _inputs()
    expected = gm(*[a.clone() for a in args])[0]
    input_copies_dropped(gm)
    assert _clones(gm) == 1
    assert torch.equal(gm(*[a.clone() for a in args])[0], expected)


def test_a_copy_written_in_place_stays():
    def build(graph, keys, new, copy):
        written = graph.call_function(aten.mul_.Tensor, (copy, 2.0))
        return (graph.call_function(aten.add.Tensor, (keys, written)),)

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
