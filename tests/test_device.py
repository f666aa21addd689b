"""Device resolution against FakeTensor devices (cuda:N exists here without a GPU)."""

from __future__ import annotations

import torch
import torch.nn as nn

from helpers import capture, fake, on_fake_device, split_across_fake_gpus
from trt_multidev_backend import device, guard
from trt_multidev_backend.device import resolve_device
from trt_multidev_backend.graphinfo import Role, classify_args
from trt_multidev_backend.guard import device_guard
from trt_multidev_backend.settings import resolve_settings


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.register_buffer("offset", torch.zeros(4))

    def forward(self, x, extra):
        return self.fc(x) + self.offset + extra[0]


def plan_for(gm, inputs, **options):
    infos = classify_args(gm, inputs)
    return infos, resolve_device(gm, infos, resolve_settings(options, environ={}))


def test_roles_come_from_dynamo_sources(fake_mode):
    net = on_fake_device(Net(), "cuda:1", fake_mode)
    gm, inputs = capture(net, fake(fake_mode, 2, 4, device="cuda:1"), [fake(fake_mode, 4, device="cuda:1")])
    infos = classify_args(gm, inputs)
    roles = {info.name: info.role for info in infos}
    assert roles["x"] is Role.INPUT and roles["extra[0]"] is Role.INPUT
    assert roles["self.fc.weight"] is Role.STATE and roles["self.offset"] is Role.STATE


def test_module_state_decides_not_the_inputs_or_current_device(fake_mode):
    net = on_fake_device(Net(), "cuda:3", fake_mode)

    def f(x, extra):  # inputs reach cuda:3 through explicit moves, so eager runs too
        return net(x.to("cuda:3"), [extra[0].to("cuda:3")])

    gm, inputs = capture(f, fake(fake_mode, 2, 4, device="cuda:1"), [fake(fake_mode, 4, device="cuda:1")])
    _, plan = plan_for(gm, inputs)
    assert plan.target == torch.device("cuda", 3)
    assert plan.rule == "module state" and not plan.override
    assert plan.input_devices == ("cuda:1",)


def test_example_inputs_decide_without_cuda_state(fake_mode):
    gm, inputs = capture(lambda x: x.sin() * 2, fake(fake_mode, 3, device="cuda:2"))
    _, plan = plan_for(gm, inputs)
    assert (plan.target, plan.rule) == (torch.device("cuda", 2), "example inputs")


def test_cpu_graph_stays_cpu():
    gm, inputs = capture(Net(), torch.randn(2, 4), [torch.randn(4)])
    _, plan = plan_for(gm, inputs)
    assert plan.target == torch.device("cpu")
    assert "graph tensors" in plan.rule


def test_graph_without_tensors_uses_current_default_device():
    gm, inputs = capture(lambda n: torch.ones(n) * 2, 3)
    _, plan = plan_for(gm, inputs)
    assert plan.target == torch.device("cpu") and plan.rule == "default device (the graph holds no tensors)"


def test_setting_overrides_and_marks_relocation(fake_mode):
    gm, inputs = capture(Net(), torch.randn(2, 4), [torch.randn(4)])
    _, plan = plan_for(gm, inputs, device="cuda:1")
    assert plan.target == torch.device("cuda", 1) and plan.natural == torch.device("cpu")
    assert plan.override and "setting device=cuda:1" in plan.rule
    _, same = plan_for(gm, inputs, device="cpu")
    assert not same.override


def test_state_on_two_gpus_is_a_problem(fake_mode):
    net = split_across_fake_gpus(fake_mode)
    gm, inputs = capture(net, fake(fake_mode, 2, 4, device="cuda:0"))
    _, plan = plan_for(gm, inputs)
    assert plan.target is None and plan.problem == "module state spans cuda:0, cuda:1"


def test_device_guard_is_a_no_op_without_cuda(monkeypatch):
    """FakeTensor devices: nothing to make current. (Guards with CUDA: tests/test_guard.py.)"""
    from test_guard import FakeCuda

    cuda, calls = FakeCuda(), []
    cuda.available = lambda: False
    cuda._exchange = cuda._maybe_exchange = calls.append
    monkeypatch.setattr(guard, "CUDA", cuda)
    ran = []
    for target in (torch.device("cuda", 5), torch.device("cpu"), None):
        with device_guard(target):
            ran.append(target)
    assert len(ran) == 3 and calls == [] and cuda.state() == (0, 0)


def test_plain_cuda_under_torchrun_means_the_ranks_gpu(monkeypatch):
    monkeypatch.setattr(device, "cuda_usable", lambda: False)  # the same answer on any machine
    gm, inputs = capture(Net(), torch.randn(2, 4), [torch.randn(4)])  # a model still on the CPU
    monkeypatch.setenv("LOCAL_RANK", "3")
    _, plan = plan_for(gm, inputs, device="cuda")
    assert plan.target == torch.device("cuda", 3)
    assert plan.rule == "setting device=cuda (options) -> cuda:3 (LOCAL_RANK=3)"
    monkeypatch.delenv("LOCAL_RANK")
    _, plan = plan_for(gm, inputs, device="cuda")
    assert plan.target == torch.device("cuda", 0)
    assert plan.rule == "setting device=cuda (options) -> cuda:0 (current device)"
