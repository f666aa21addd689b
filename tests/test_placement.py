"""Placement before propagation, against FakeTensor devices.

Each scenario compiles through torch.compile(backend="trt_multidev") with a delegate that behaves
like an engine (every tensor input on the target) and propagates FakeTensors, so a placement
mistake raises the same device-mismatch error a GPU run would.
"""

from __future__ import annotations

import operator

import pytest
import torch
import torch.fx
import torch.nn as nn
from torch._subclasses.fake_tensor import FakeTensor

import trt_multidev_backend as tm
from helpers import counters, EngineLikeDelegate, capture, fake, on_fake_device
from trt_multidev_backend.device import resolve_device
from trt_multidev_backend.graphinfo import classify_args
from trt_multidev_backend.placement import place
from trt_multidev_backend.settings import resolve_settings

CUDA1 = torch.device("cuda", 1)


class TableModel(nn.Module):
    """The measured H100 failure: a plain CPU tensor attribute moved inside forward."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.table = torch.arange(4.0)

    def forward(self, x):
        return self.fc(x) + self.table.to(x.device)


def compile_with(model, delegate, **options):
    return torch.compile(model, backend="trt_multidev", options={"delegate": delegate, **options})


def test_cpu_attribute_moved_once_at_compile_time(fake_mode):
    model = TableModel()
    on_fake_device(model.fc, "cuda:1", fake_mode)
    delegate = EngineLikeDelegate()
    x = fake(fake_mode, 2, 4, device="cuda:1")
    out = compile_with(model, delegate)(x)
    assert out.device == CUDA1 and out.shape == (2, 4)
    (call,) = delegate.calls
    assert call.device == CUDA1
    assert all(d == CUDA1 for d in call.input_devices)  # the table reached the engine on cuda:1
    assert model.table.device.type == "cpu"  # the user's module is untouched


def test_without_placement_the_engine_sees_a_cpu_input(fake_mode):
    """Control: the same graph handed straight to the engine-like delegate fails as TensorRT does."""
    model = TableModel()
    on_fake_device(model.fc, "cuda:1", fake_mode)
    delegate = EngineLikeDelegate()

    def plain(gm, example_inputs, **_):
        return delegate(gm, example_inputs, device=CUDA1, settings=None)

    with pytest.raises(Exception, match=r"Expected inputs\[\d\] on cuda:1 but got cpu"):
        torch.compile(model, backend=plain)(fake(fake_mode, 2, 4, device="cuda:1"))


def test_state_copy_is_reused_across_calls_and_refreshed_after_mutation(fake_mode):
    model = TableModel()
    on_fake_device(model.fc, "cuda:1", fake_mode)
    gm, inputs = capture(model, fake(fake_mode, 2, 4, device="cuda:1"))
    compiled = tm.backend(gm, inputs, options={"delegate": EngineLikeDelegate()})
    index = next(i for i, x in enumerate(inputs) if x is model.table)
    args = list(inputs)
    compiled(*args)
    first = compiled._state[index][2]
    compiled(*args)
    assert compiled._state[index][2] is first  # no copy per call
    model.table.add_(1)  # in-place change: the copy must follow, as eager would read it
    compiled(*args)
    assert compiled._state[index][2] is not first


def current_device_graph(with_cuda_call: bool) -> torch.fx.GraphModule:
    # `torch.zeros(4, device="cuda")` and `y.cuda()` mean "the current device", which under our
    # guard is the target; in FakeTensor propagation "cuda" becomes cuda:0.
    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    out = graph.call_function(operator.add, (x, graph.call_function(torch.zeros, (4,), {"device": "cuda"})))
    if with_cuda_call:
        out = graph.call_function(operator.add, (out, graph.call_method("cuda", (graph.placeholder("y"),))))
    graph.output((out,))
    return torch.fx.GraphModule(nn.Module(), graph)


def test_current_device_factories_and_cuda_calls_resolve_to_target(fake_mode):
    x = fake(fake_mode, 4, device="cuda:1")
    with pytest.raises(Exception, match="cuda:1 and cuda:0|cuda:0 and cuda:1"):
        current_device_graph(False)(x)  # what propagation does without placement
    placed = place_for(current_device_graph(True), [x, torch.randn(4)])
    (result,) = placed.gm(*placed.example_inputs)
    assert result.device == CUDA1
    assert [a.kind for a in placed.actions] == ["check", "move"]  # y is moved by the graph itself


def place_for(gm, inputs, **options):
    infos = classify_args(gm, inputs)
    plan = resolve_device(gm, infos, resolve_settings(options, environ={}))
    return place(gm, infos, plan)


def test_device_override_relocates_a_cpu_model_and_returns_on_cpu(fake_mode):
    class Mask(nn.Module):  # S06/S07 flavour: params on CPU, a factory without a device
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x):
            pos = torch.arange(x.shape[-1])
            return torch.where(pos < 4, self.fc(x), torch.zeros_like(x)).cpu(), x.sum()

    model = Mask().requires_grad_(False)
    delegate = EngineLikeDelegate()
    x = torch.randn(2, 8)
    compiled = compile_with(model, delegate, device="cuda:1")
    out, total = compiled(x)
    (call,) = delegate.calls
    assert all(d == CUDA1 for d in call.input_devices)  # params and x reached cuda:1
    assert "device(type='cuda', index=1)" in call.code  # arange and .cpu() rewritten
    assert out.device.type == "cpu" and total.device.type == "cpu"  # eager's devices
    assert isinstance(out, FakeTensor)  # computed on the (fake) GPU, then moved back
    assert model.fc.weight.device.type == "cpu"


def test_deliberate_host_work_stays_on_the_host(fake_mode):
    class Host(nn.Module):  # S12: a small piece of work kept on the CPU on purpose
        def __init__(self):
            super().__init__()
            self.gpu = nn.Linear(4, 4)
            self.host = nn.Linear(4, 4)

        def forward(self, x):
            y = self.gpu(x)
            return self.host((y * 2).to("cpu")), y

    model = Host().requires_grad_(False)
    on_fake_device(model.gpu, "cuda:1", fake_mode)
    delegate = EngineLikeDelegate()  # refuses CPU inputs, as an engine does
    host_out, dev_out = compile_with(model, delegate)(fake(fake_mode, 2, 4, device="cuda:1"))
    assert host_out.device.type == "cpu" and dev_out.device == CUDA1
    (call,) = delegate.calls  # only the device segment reached the delegate
    assert call.device == CUDA1 and all(d == CUDA1 for d in call.input_devices)
    assert "to(" not in call.code and "cpu" not in call.code
    assert tm.stats() == {"cuda:1": counters(compiles=1)}


def test_cpu_scalar_state_joins_the_target(fake_mode):
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.scale = torch.tensor(0.5)  # 0-dim CPU: eager mixes it with CUDA tensors

        def forward(self, x):
            return self.fc(x) * self.scale

    model = Scaled()
    on_fake_device(model.fc, "cuda:1", fake_mode)
    delegate = EngineLikeDelegate()
    assert compile_with(model, delegate)(fake(fake_mode, 2, 4, device="cuda:1")).device == CUDA1
    assert all(d == CUDA1 for d in delegate.calls[0].input_devices)


def test_cpu_scalar_state_that_host_work_also_reads_stays_on_the_cpu(fake_mode):
    """Moved to the GPU, the scalar would be copied back for the host work at every call (a
    device-to-host copy waits for the GPU); eager leaves it on the CPU, and so does placement."""
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.scale = torch.tensor(0.5)

        def forward(self, x):
            return self.fc(x) * self.scale, self.scale.to("cpu") * 3

    model = Scaled()
    on_fake_device(model.fc, "cuda:1", fake_mode)
    delegate = EngineLikeDelegate()
    compiled = compile_with(model, delegate)
    scaled, host = compiled(fake(fake_mode, 2, 4, device="cuda:1"))
    assert scaled.device == CUDA1 and host.device == torch.device("cpu")
    assert torch.device("cpu") in delegate.calls[0].input_devices  # the scale, where eager keeps it


def test_input_the_graph_moves_is_moved_by_the_wrapper(fake_mode):
    class Mover(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x.to(self.fc.weight.device))

    model = Mover()
    on_fake_device(model.fc, "cuda:1", fake_mode)
    gm, inputs = capture(model, torch.randn(2, 4))
    delegate = EngineLikeDelegate()
    compiled = tm.backend(gm, inputs, options={"delegate": delegate})
    assert all(d == CUDA1 for d in delegate.calls[0].input_devices)
    assert [(a.kind, a.name, str(a.device)) for a in compiled.actions] == [("move", "x", "cuda:1")]
    x_index = compiled.actions[0].index
    assert inputs[x_index].device.type == "cpu"
    (out,) = compiled(*inputs)  # the CPU x goes in; the wrapper moves it, as eager's .to() would
    assert out.device == CUDA1


def test_constants_on_the_wrong_device_are_moved_once(fake_mode):
    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    const = graph.get_attr("table")
    moved = graph.call_method("to", (const, CUDA1))
    graph.output((graph.call_function(operator.add, (x, moved)),))
    root = nn.Module()
    root.register_buffer("table", torch.arange(4.0))
    gm = torch.fx.GraphModule(root, graph)
    placed = place_for(gm, [fake(fake_mode, 4, device="cuda:1")])
    names = [n.target for n in placed.gm.graph.nodes if n.op == "get_attr"]
    assert names == ["_trt_multidev_const0"]
    assert placed.gm._trt_multidev_const0.device == CUDA1
    assert gm.table.device.type == "cpu"  # the caller's graph module keeps its own constant
    assert [n.target for n in gm.graph.nodes if n.op == "get_attr"] == ["table"]


def test_the_callers_graph_is_never_mutated(fake_mode):
    gm, inputs = capture(lambda x: x.sum() + torch.zeros(1, device=x.device), torch.randn(3))
    before = gm.code
    place_for(gm, inputs, device="cuda:1")
    assert gm.code == before


def test_constant_host_values_are_built_on_the_target(fake_mode):
    class Masked(nn.Module):  # S06: a mask from factories that name no device, then moved
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x):
            n = x.shape[-1]
            mask = torch.triu(torch.ones(n, n), 1).bool().to(x.device)
            return self.fc(x).masked_fill(mask, 0.0) + torch.arange(n).to(x.device)

    model = on_fake_device(Masked(), "cuda:1", fake_mode)
    delegate = EngineLikeDelegate()
    out = compile_with(model, delegate)(fake(fake_mode, 2, 8, 8, device="cuda:1"))
    assert out.device == CUDA1
    (call,) = delegate.calls  # one graph, not split into host and device segments
    assert call.code.count("device = device(type='cuda', index=1)") == 2  # ones and arange


def test_host_round_trip_gives_device_segments_only_device_inputs(fake_mode):
    class RoundTrip(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.host, self.b = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            y = self.host(self.a(x).to("cpu"))
            return self.b(y.to(x.device) * 2)

    model = RoundTrip().requires_grad_(False)
    on_fake_device(model.a, "cuda:1", fake_mode)
    on_fake_device(model.b, "cuda:1", fake_mode)
    delegate = EngineLikeDelegate()  # would raise on any CPU input
    out = compile_with(model, delegate)(fake(fake_mode, 2, 4, device="cuda:1"))
    assert out.device == CUDA1
    assert len(delegate.calls) == 2 and all(c.device == CUDA1 for c in delegate.calls)


def test_placeholders_a_delegate_drops_are_not_passed():
    def drop_unused(gm, example_inputs, *, device, settings):
        # What Torch-TensorRT does with unused SymInt placeholders under dynamic shapes.
        for node in [n for n in gm.graph.nodes if n.op == "placeholder" and not n.users]:
            gm.graph.erase_node(node)
        gm.recompile()
        return gm.forward

    def f(x, unused):
        return x * 2

    gm = torch.fx.symbolic_trace(f)  # keeps the unused placeholder, as dynamo keeps SymInts
    compiled = tm.backend(gm, [torch.ones(3), torch.zeros(2)], options={"delegate": drop_unused})
    assert torch.equal(compiled(torch.ones(3), torch.zeros(2)), torch.full((3,), 2.0))
    assert compiled.fn.kept == (0,)


# --- devices computed inside the graph ------------------------------------------------------
# torch.fx.symbolic_trace (and other tools that hand graphs straight to the backend) records
# `t.device` as a getattr(t, "device") node and `torch.device(...)` as a call, where dynamo
# writes the device itself. Placement resolves both as it resolves a literal device.


def on_target(call, target=CUDA1) -> bool:
    """Everything the delegate received is on `target`: example inputs and the graph's tensors."""
    return all(d == target for d in call.input_devices) and all(
        d == target for d in call.state_devices.values())


@pytest.mark.parametrize("kind", ["move", "state"])
def test_input_or_state_moved_to_a_computed_device_reaches_the_target(fake_mode, kind):
    def f(x, scale):
        return x * scale.to(x.device)

    gm = torch.fx.symbolic_trace(f)
    scale = torch.arange(4.0) if kind == "move" else nn.Parameter(torch.arange(4.0), requires_grad=False)
    delegate = EngineLikeDelegate()
    compiled = tm.backend(gm, [fake(fake_mode, 2, 4, device="cuda:1"), scale], options={"delegate": delegate})
    (call,) = delegate.calls
    assert call.input_devices == [CUDA1, CUDA1]  # before: scale reached the engine on the CPU
    assert [(a.kind, a.name, a.device) for a in compiled.actions] == [("check", "x", CUDA1), (kind, "scale", CUDA1)]
    assert tm.stats() == {"cuda:1": counters(compiles=1)}
    assert compiled(fake(fake_mode, 2, 4, device="cuda:1"), scale).device == CUDA1


class ComputedDevices(nn.Module):
    """CPU module state moved with devices the graph computes, and factories on them."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 4), requires_grad=False)
        self.table = torch.arange(4.0)                  # a plain tensor attribute: get_attr
        self.register_buffer("bias", torch.ones(4))

    def forward(self, x):
        y = nn.functional.linear(x, self.weight.to(x.device))
        y = y + self.table.to(x) + self.bias.to(torch.device(x.device.type, x.device.index))
        return y + torch.zeros(4, device=torch.device(x.device.type))  # "cuda": the current device


def test_module_state_and_factories_follow_devices_computed_in_the_graph(fake_mode):
    gm = torch.fx.symbolic_trace(ComputedDevices())
    before = gm.code
    computed = [n for n in gm.graph.nodes if n.target is getattr and n.args[1] == "device"]
    assert len(computed) == 4 and any(n.target is torch.device for n in gm.graph.nodes)
    delegate = EngineLikeDelegate()
    compiled = tm.backend(gm, [fake(fake_mode, 2, 4, device="cuda:1")], options={"delegate": delegate})
    (call,) = delegate.calls
    assert call.device == CUDA1 and on_target(call), call.state_devices
    assert len(call.state_devices) == 3  # weight, table, bias: each copied to cuda:1 once
    assert "zeros(4, device = device(type='cuda', index=1))" in call.code  # not cuda:0
    assert tm.stats() == {"cuda:1": counters(compiles=1)}
    assert compiled(fake(fake_mode, 2, 4, device="cuda:1")).device == CUDA1
    assert gm.code == before and gm.table.device.type == "cpu"  # the caller's graph is untouched


def test_device_override_moves_everything_computed_devices_name(fake_mode):
    class OnGpu0(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(fake(fake_mode, 4, 4, device="cuda:0"), requires_grad=False)
            self.table = torch.arange(4.0)  # CPU, moved to wherever x is
            self.offset = torch.ones(4)

        def forward(self, x, scale):
            y = nn.functional.linear(x, self.weight) + self.table.to(x.device) + self.offset.to(x)
            return y * scale.to(x.device) + torch.zeros(4, device=x.device)

    gm = torch.fx.symbolic_trace(OnGpu0())
    delegate = EngineLikeDelegate()
    x = fake(fake_mode, 2, 4, device="cuda:0")
    compiled = tm.backend(gm, [x, torch.arange(4.0)], options={"delegate": delegate, "device": "cuda:1"})
    (call,) = delegate.calls
    assert on_target(call), (call.input_devices, call.state_devices)
    assert len(call.state_devices) == 3  # weight, table and offset, each copied to cuda:1 once
    assert "index=0" not in call.code and ".device" not in call.code  # x.device now names cuda:1
    assert [(a.kind, a.name) for a in compiled.actions] == [("move", "x"), ("move", "scale")]
    assert tm.stats() == {"cuda:1": counters(compiles=1)}


def test_torch_device_calls_with_literal_arguments_resolve_like_literals(fake_mode):
    graph = torch.fx.Graph()
    x, y = graph.placeholder("x"), graph.placeholder("y")
    here = graph.call_function(torch.device, ("cuda",))  # the current device: the target
    ones = graph.call_function(torch.ones, (4,), {"device": here})
    moved = graph.call_method("to", (y, here))
    graph.output((graph.call_function(operator.add, (graph.call_function(operator.add, (x, ones)), moved)),))
    gm = torch.fx.GraphModule(nn.Module(), graph)
    placed = place_for(gm, [fake(fake_mode, 4, device="cuda:1"), torch.randn(4)])
    assert [(a.kind, a.name, a.device) for a in placed.actions] == [("check", "x", CUDA1), ("move", "y", CUDA1)]
    assert placed.example_inputs[1].device == CUDA1
    (result,) = placed.gm(*placed.example_inputs)  # before: "cuda" became cuda:0, a device mismatch
    assert result.device == CUDA1
    assert not any(n.target is torch.device for n in placed.gm.graph.nodes)

