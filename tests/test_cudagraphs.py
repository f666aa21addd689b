"""CUDA graphs (issue 12): which graphs are captured, what the key holds, the per-shape policy.
Capturing and replaying themselves need a GPU: tests/gpu/test_cuda_graphs.py."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn as nn

import trt_multidev_backend as tm
from helpers import EngineLikeDelegate, capture, fake, on_fake_device
from trt_multidev_backend.cache import cache_key, disk_key
from trt_multidev_backend.cudagraphs import CudaGraphs, ShapePolicy, capture_plan, signature
from trt_multidev_backend.graphinfo import Role, changed_in_place, classify_args
from trt_multidev_backend.settings import SettingsError, resolve_settings

GPU = torch.device("cuda", 1)


class Buffered(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.register_buffer("calls", torch.zeros(1))

    def forward(self, x):
        self.calls.add_(1)  # module state changed in place: the buffer is used where it lives
        y = self.fc(x)
        y.relu_()  # an intermediate changed in place, as ResNet's ReLU(inplace=True) does
        return y


def plan_for(fn, *args, device=GPU):
    gm, inputs = capture(fn, *args)
    return capture_plan(gm, classify_args(gm, inputs), device), gm, inputs


def test_a_static_graph_is_captured_with_its_module_state_where_it_lives():
    model = Buffered()
    plan, gm, inputs = plan_for(model, torch.randn(2, 4))
    assert plan.refusal is None
    infos = classify_args(gm, inputs)
    state = {i.index for i in infos if i.name in ("self.calls", "self.fc.weight", "self.fc.bias")}
    assert state and set(plan.static) == state
    assert "x" in plan.names and infos[plan.names.index("x")].index not in plan.static


@pytest.mark.parametrize("body, changed", [
    (lambda x: x.add_(1) * 2, ["x"]),
    (lambda x: x.view(-1).mul_(2).sum(), ["x"]),      # through a view
    (lambda x: x[0].zero_() + 1, ["x"]),               # through an indexing view
    (lambda x: (x * 2).relu_(), []),                   # a new tensor, not the input
])
def test_inputs_changed_in_place_are_found_through_views(body, changed):
    gm, inputs = capture(body, torch.randn(3, 4))
    assert changed_in_place(gm, classify_args(gm, inputs), (Role.INPUT,)) == changed


@pytest.mark.parametrize("body", [lambda x, y: x.add_(1) * y, lambda x, y: x.view(-1).mul_(2).sum() + y])
def test_an_input_the_graph_changes_in_place_is_used_where_it_lives_and_the_others_copied(body):
    """A replay writes the caller's tensor as eager does (a static KV cache's tensors), where a
    copy in the graph's buffers would take the update instead."""
    plan, gm, inputs = plan_for(body, torch.randn(3, 4), torch.randn(3, 4))
    assert plan.refusal is None
    index = {i.name: i.index for i in classify_args(gm, inputs)}
    assert index["x"] in plan.static and index["y"] not in plan.static
    assert plan.updated == (index["x"],)
    graphs = CudaGraphs(lambda *args: None, GPU, plan, limit=2, warn=lambda key, message: None, label="g")
    args = [None] * len(plan.names)
    args[index["x"]], args[index["y"]] = torch.zeros(3, 4), torch.zeros(3, 4)
    key = signature(graphs._keyed(args))
    args[index["x"]] = torch.zeros(5, 4)
    assert signature(graphs._keyed(args)) != key  # its shape stays in the key: another shape is captured apart


def test_dynamic_and_cpu_graphs_are_not_captured():
    x = torch.randn(3, 4)
    torch._dynamo.mark_dynamic(x, 0, min=2, max=64)
    plan, _, _ = plan_for(lambda t: t * 2, x)
    assert plan.kind == "dynamic" and "dim 0 in [2, 64]" in plan.refusal and "dynamic=False" in plan.refusal
    plan, _, _ = plan_for(lambda t: t * 2, torch.randn(3, 4), device=torch.device("cpu"))
    assert plan.kind == "cpu" and "need a GPU" in plan.refusal


def test_signature_holds_shapes_dtypes_and_values():
    a = signature([torch.zeros(2, 3), 4, None])
    assert a == signature([torch.ones(2, 3), 4, None])
    assert a != signature([torch.zeros(3, 3), 4, None])
    assert a != signature([torch.zeros(2, 3, dtype=torch.half), 4, None])
    assert a != signature([torch.zeros(2, 3), 5, None])
    assert signature([[1, 2]]) == signature([[1, 2]])  # unhashable values by repr


def test_policy_warms_then_captures_then_replays_up_to_the_limit():
    policy = ShapePolicy(limit=2)
    assert [policy.decide("a"), policy.decide("a")] == ["warm", "capture"]
    policy.captured("a")
    assert policy.decide("a") == "replay"
    assert [policy.decide("b"), policy.decide("b")] == ["warm", "capture"]
    policy.captured("b")
    assert [policy.decide("c"), policy.decide("c"), policy.decide("c")] == ["warm", "run", "run"]
    assert policy.full
    policy.forget("b")  # its module state moved: captured again
    assert policy.decide("b") == "capture"


def test_policy_stops_capturing_after_a_refusal():
    policy = ShapePolicy(limit=8)
    policy.decide("a"), policy.decide("a")
    policy.captured("a")
    policy.refuse("capturing it failed")
    assert [policy.decide("a"), policy.decide("b"), policy.decide("b")] == ["run", "run", "run"]


def test_mode_reduce_overhead_turns_cuda_graphs_on_unless_set():
    s = resolve_settings({}, "reduce-overhead", environ={})
    assert s.cuda_graphs and s.sources["cuda_graphs"] == "mode=reduce-overhead"
    assert not resolve_settings({"cuda_graphs": False}, "reduce-overhead", environ={}).cuda_graphs
    assert not resolve_settings({}, "reduce-overhead", environ={"TRT_MULTIDEV_CUDA_GRAPHS": "0"}).cuda_graphs
    assert resolve_settings({}, None, environ={"TRT_MULTIDEV_CUDA_GRAPHS": "yes"}).cuda_graphs
    assert not resolve_settings({}, "default", environ={}).cuda_graphs


@pytest.mark.parametrize("options, named", [
    ({"cuda_graph_max_shapes": 0}, "cuda_graph_max_shapes"),
    ({"kernel_specialization": "sometimes"}, "kernel_specialization"),
    ({"cuda_graphs": "maybe"}, "cuda_graphs"),
])
def test_bad_values_name_the_setting(options, named):
    with pytest.raises(SettingsError, match=named):
        resolve_settings(options, environ={})


def test_runtime_settings_split_the_in_memory_key_but_not_the_disk_key(fake_mode):
    net = on_fake_device(nn.Linear(4, 4), "cuda:1", fake_mode)
    gm, inputs = capture(net, fake(fake_mode, 2, 4, device="cuda:1"))
    plain, graphs = resolve_settings({}, environ={}), resolve_settings({"cuda_graphs": True}, environ={})
    special = resolve_settings({"kernel_specialization": "lazy"}, environ={})
    keys = {cache_key(gm, inputs, GPU, s, "d") for s in (plain, graphs, special)}
    assert len(keys) == 3
    assert len({disk_key(gm, inputs, GPU, s, "d", {})[0] for s in (plain, graphs, special)}) == 1


def test_the_backend_wraps_static_graphs_and_warns_once_for_the_others(fake_mode, caplog):
    delegate = EngineLikeDelegate()
    net = on_fake_device(nn.Linear(4, 4), "cuda:1", fake_mode)
    gm, inputs = capture(net, fake(fake_mode, 2, 4, device="cuda:1"))
    plain = tm.backend(gm, inputs, options={"delegate": delegate})
    wrapped = tm.backend(gm, inputs, options={"delegate": delegate, "cuda_graphs": True})
    assert not isinstance(plain.fn, CudaGraphs)
    assert isinstance(wrapped.fn, CudaGraphs) and wrapped.fn.device == GPU and len(delegate.calls) == 2
    assert wrapped.fn.policy.limit == 8
    assert tm.stats()["cuda:1"]["uncaptured"] == 0

    caplog.set_level(logging.WARNING, logger="trt_multidev")
    changes = capture(lambda x: x.add_(1) * 2, torch.randn(3, 4))
    for _ in range(2):
        out = tm.backend(*changes, options={"delegate": delegate, "cuda_graphs": True, "device": "cpu"})
        assert not isinstance(out.fn, CudaGraphs)
    warned = [r.getMessage() for r in caplog.records if "CUDA graphs" in r.getMessage()]
    assert len(warned) == 1 and "runs uncaptured" in warned[0] and "need a GPU" in warned[0]
    assert tm.stats()["cpu"]["uncaptured"] == 1  # the second compile was an in-memory hit
