"""In-memory per-device cache, keys and counters."""

from __future__ import annotations

import os
import subprocess
import sys

import torch
import torch.nn as nn

import _delegates
import trt_multidev_backend as tm
from helpers import counters, EngineLikeDelegate, capture, fake, on_fake_device


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(x).relu()


def run(model, x, delegate, **options):
    return torch.compile(model, backend="trt_multidev", options={"delegate": delegate, **options})(x)


def compile_captured(model, x, delegate, **options):
    gm, inputs = capture(model, x)
    return tm.backend(gm, inputs, options={"delegate": delegate, **options})


def test_same_graph_same_device_compiles_once(fake_mode):
    delegate = EngineLikeDelegate()
    a = on_fake_device(Net(), "cuda:1", fake_mode)
    b = on_fake_device(Net(), "cuda:1", fake_mode)  # same architecture, other weights
    x = fake(fake_mode, 2, 4, device="cuda:1")
    first = compile_captured(a, x, delegate)
    second = compile_captured(b, x, delegate)
    assert second is first and len(delegate.calls) == 1
    assert tm.stats() == {"cuda:1": counters(compiles=1, cache_hits=1)}


def test_each_device_compiles_its_own(fake_mode):
    delegate = EngineLikeDelegate()
    for device in ("cuda:1", "cuda:3", "cuda:1"):
        compile_captured(on_fake_device(Net(), device, fake_mode), fake(fake_mode, 2, 4, device=device), delegate)
    assert [str(c.device) for c in delegate.calls] == ["cuda:1", "cuda:3"]
    assert tm.stats()["cuda:1"]["cache_hits"] == 1 and tm.stats()["cuda:3"]["compiles"] == 1


def test_key_changes_with_shape_dtype_and_settings(fake_mode):
    delegate = EngineLikeDelegate()
    net = on_fake_device(Net(), "cuda:1", fake_mode)
    x = fake(fake_mode, 2, 4, device="cuda:1")
    compile_captured(net, x, delegate)
    compile_captured(net, fake(fake_mode, 5, 4, device="cuda:1"), delegate)
    compile_captured(net, x, delegate, min_block_size=1)
    compile_captured(net, x, delegate, precision="fp16")
    compile_captured(net, x, EngineLikeDelegate())  # another delegate object
    half = on_fake_device(Net(), "cuda:1", fake_mode, dtype=torch.float16)
    compile_captured(half, fake(fake_mode, 2, 4, device="cuda:1", dtype=torch.float16), delegate)
    assert len(delegate.calls) == 5 and tm.stats()["cuda:1"]["cache_hits"] == 0


def test_reporting_settings_do_not_split_the_cache(fake_mode):
    delegate = EngineLikeDelegate()
    net = on_fake_device(Net(), "cuda:1", fake_mode)
    x = fake(fake_mode, 2, 4, device="cuda:1")
    compile_captured(net, x, delegate)
    compile_captured(net, x, delegate, log_level="debug")
    assert len(delegate.calls) == 1


def test_dynamo_reset_empties_the_cache(fake_mode):
    delegate = EngineLikeDelegate()
    net = on_fake_device(Net(), "cuda:1", fake_mode)
    x = fake(fake_mode, 2, 4, device="cuda:1")
    run(net, x, delegate)
    assert tm.stats()["cuda:1"]["compiles"] == 1
    torch._dynamo.reset()  # reaches backend.reset()
    assert tm.stats() == {}
    run(net, x, delegate)
    assert len(delegate.calls) == 2


def test_the_key_names_the_target_even_where_nothing_else_in_it_does():
    """A graph of no tensors (nothing in its code or inputs names a device) compiled for two
    GPUs: two keys, so one GPU's build is never handed to the other from memory."""
    from trt_multidev_backend.cache import cache_key
    from trt_multidev_backend.settings import resolve_settings

    gm = torch.fx.symbolic_trace(lambda n: (n + 1,))
    settings = resolve_settings({}, environ={})
    keys = {cache_key(gm, [3], torch.device("cuda", i), settings, "d") for i in (0, 1, 0)}
    assert len(keys) == 2


def test_named_delegate_key_is_the_same_in_every_process():
    script = (
        "import torch, trt_multidev_backend as tm\n"
        "from trt_multidev_backend.cache import cache_key\n"
        "from trt_multidev_backend.settings import resolve_settings\n"
        "gm = torch.fx.symbolic_trace(lambda x: (x.sin() + 1,))\n"
        "s = resolve_settings({'delegate': '_delegates:run_graph', 'trt': {'torch_executed_ops': {'a','b','c','d'}}})\n"
        "print(cache_key(gm, [torch.empty(2, 3)], torch.device('cuda', 1), s, s.delegate))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.path.dirname(_delegates.__file__)}
    keys = set()
    for seed in ("1", "2", "3"):  # different hash seeds reorder sets
        env["PYTHONHASHSEED"] = seed
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
        keys.add(out.stdout.strip().splitlines()[-1])
    assert len(keys) == 1


def test_named_delegate_is_called_with_device_and_settings():
    _delegates.CALLS.clear()
    out = run(Net(), torch.randn(2, 4), "_delegates:run_graph", precision="fp16,fp32")
    assert out.shape == (2, 4)
    assert _delegates.CALLS == [("cpu", ("fp32", "fp16"))]
    assert tm.stats() == {"cpu": counters(compiles=1)}


def test_the_in_memory_key_follows_a_constant_written_in_place_grad_and_dynamic_dims():
    """What can change a compiled result without changing the graph's code: a constant updated
    in place (its values are baked into an engine), inputs that require grad, dims marked dynamic."""
    from trt_multidev_backend.cache import cache_key
    from trt_multidev_backend.settings import resolve_settings

    g = torch.fx.Graph()
    x = g.placeholder("x")
    g.output((g.call_function(torch.add, (x, g.get_attr("c"))),))
    root = nn.Module()
    root.register_buffer("c", torch.ones(4))
    gm = torch.fx.GraphModule(root, g)
    settings = resolve_settings({}, environ={})
    cpu = torch.device("cpu")

    def key(*inputs):
        return cache_key(gm, list(inputs), cpu, settings, "d")

    plain = torch.zeros(2, 4)
    base = key(plain)
    assert key(torch.zeros(2, 4)) == base  # another tensor of the same spec: same key
    assert key(torch.zeros(2, 4, requires_grad=True)) != base
    marked = torch.zeros(2, 4)
    torch._dynamo.mark_dynamic(marked, 0)
    assert key(marked) != base
    gm.c.add_(1)  # same tensor, new values
    assert key(plain) != base
