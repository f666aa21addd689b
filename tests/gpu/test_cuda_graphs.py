"""CUDA graphs (mode="reduce-overhead", setting cuda_graphs) on a real GPU: captured once per
shape on the model's GPU (cuda:1 with cuda:0 current where two GPUs are visible), replays match
eager, outputs are never overwritten, in-place parameter updates are seen, several threads on their
own streams get their own results, and graphs that cannot be captured run uncaptured."""

from __future__ import annotations

import logging
import threading

import pytest
import torch

import trt_multidev_backend as tm
from scenarios import Mlp, rel_error
from trt_multidev_backend.cudagraphs import CudaGraphs
from trt_multidev_backend.guard import current_stream
from trt_multidev_backend.masks import MaskPrefix

DEVICE = torch.device("cuda", 1 if torch.cuda.device_count() > 1 else 0)


def compile_keeping(model, mode=None, **options):
    """torch.compile through trt_multidev, keeping the guarded callables it returns. torch.compile
    takes mode or options, not both: with a mode, settings come from the environment."""
    graphs = []

    def backend(gm, example_inputs, **kwargs):
        fn = tm.backend(gm, example_inputs, **kwargs)
        graphs.append(fn)
        return fn

    if mode is not None:
        return torch.compile(model, backend=backend, mode=mode), graphs
    return torch.compile(model, backend=backend, options={"min_block_size": 1, "cache": False, **options}), graphs


@pytest.mark.parametrize("engine_runtime", ["auto", "torch_tensorrt"])
def test_reduce_overhead_captures_once_and_replays_what_eager_computes(engine_runtime, monkeypatch):
    for name, value in (("MIN_BLOCK_SIZE", "1"), ("CACHE", "0"), ("ENGINE_RUNTIME", engine_runtime)):
        monkeypatch.setenv("TRT_MULTIDEV_" + name, value)
    torch._dynamo.reset()
    torch.cuda.set_device(0)
    torch.manual_seed(0)
    model = Mlp().eval().half().to(DEVICE)
    compiled, graphs = compile_keeping(model, mode="reduce-overhead")
    xs = [torch.randn(8, 256, device=DEVICE, dtype=torch.half) for _ in range(5)]
    with torch.no_grad():
        outs = [compiled(x) for x in xs]  # warm, capture + replay, then replays
        refs = [model(x) for x in xs]
        assert all(rel_error(o, r) < 1e-2 for o, r in zip(outs, refs))  # earlier outputs not overwritten
        wrapped = [g.fn for g in graphs if isinstance(g.fn, CudaGraphs)]
        assert len(wrapped) == 1 and wrapped[0].captures == 1 and wrapped[0].device == DEVICE
        assert tm.stats()[str(DEVICE)]["cuda_graphs"] == 1
        model.net[0].weight.mul_(0.5)  # a parameter changed in place: replays read it where it lives
        assert rel_error(compiled(xs[0]), model(xs[0])) < 1e-2
        assert wrapped[0].captures == 1
    assert torch.cuda.current_device() == 0


class PositionBias(torch.nn.Module):
    """One attention layer with T5's kind of mask: a learned bias per head, looked up by constant
    distances (computed by trt_multidev's mask prefix, ahead of the engine)."""

    def __init__(self, heads: int = 4, size: int = 32) -> None:
        super().__init__()
        self.heads, self.size = heads, size
        self.qkv = torch.nn.Linear(64, 3 * 64)
        self.relative = torch.nn.Embedding(16, heads)

    def forward(self, x):
        batch, tokens = x.shape[:2]
        q, k, v = self.qkv(x).view(batch, tokens, 3, self.heads, 64 // self.heads).permute(2, 0, 3, 1, 4)
        distance = torch.arange(tokens, device=x.device)[None, :] - torch.arange(tokens, device=x.device)[:, None]
        bias = self.relative(distance.abs().clamp(max=15)).permute(2, 0, 1).unsqueeze(0)
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias.expand(batch, -1, -1, -1))
        return y.transpose(1, 2).reshape(batch, tokens, 64)


def test_replays_see_a_mask_prefix_state_change():
    """With CUDA graphs the mask prefix runs inside the captured graph: after the bias table
    changes in place, replays compute the new mask (not the one held from before)."""
    torch._dynamo.reset()
    torch.cuda.set_device(0)
    torch.manual_seed(0)
    model = PositionBias().eval().half().to(DEVICE)
    compiled, graphs = compile_keeping(model, cuda_graphs=True)
    x = torch.randn(2, 32, 64, device=DEVICE, dtype=torch.half)
    with torch.no_grad():
        for _ in range(3):
            assert rel_error(compiled(x), model(x)) < 1e-2
        assert [g.fn.captures for g in graphs if isinstance(g.fn, CudaGraphs)] == [1]
        assert any(isinstance(m, MaskPrefix) for g in graphs for m in g.fn.fn.modules())  # the bias went ahead
        model.relative.weight.mul_(4)
        assert rel_error(compiled(x), model(x)) < 1e-2
    assert torch.cuda.current_device() == 0


def test_threads_on_their_own_streams_get_their_own_results():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = Mlp().eval().half().to(DEVICE)
    compiled, _ = compile_keeping(model, cuda_graphs=True)
    x0 = torch.randn(8, 256, device=DEVICE, dtype=torch.half)
    with torch.no_grad():
        compiled(x0), compiled(x0)  # captured
    errors: list[float] = []

    def worker(seed: int) -> None:
        gen = torch.Generator(device=DEVICE).manual_seed(seed)
        with torch.no_grad(), torch.cuda.stream(torch.cuda.Stream(DEVICE)):
            for _ in range(20):
                x = torch.randn(8, 256, device=DEVICE, dtype=torch.half, generator=gen)
                out = compiled(x)
                torch.cuda.current_stream(DEVICE).synchronize()
                errors.append(rel_error(out, model(x)))

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 80 and max(errors) < 1e-2


def test_current_stream_is_the_callers_stream_as_one_object_per_stream():
    """What the engine runner and the replays read on every call: torch's current stream on the
    graph's GPU (not the current device's), the same object for the same stream."""
    other = torch.device("cuda", 0)
    default = current_stream(DEVICE)
    assert default == torch.cuda.current_stream(DEVICE) and default is current_stream(DEVICE)
    side = torch.cuda.Stream(DEVICE)
    with torch.cuda.stream(side):
        got = current_stream(DEVICE)
        assert got == side and got.cuda_stream == side.cuda_stream and got is current_stream(DEVICE)
        if DEVICE != other:  # the current device's stream is another one
            assert current_stream(other) == torch.cuda.current_stream(other) != got
    external = torch.cuda.ExternalStream(side.cuda_stream, device=DEVICE)
    with torch.cuda.stream(external):
        assert current_stream(DEVICE).cuda_stream == side.cuda_stream
    assert current_stream(DEVICE) is default


def test_a_graph_that_changes_its_input_is_captured_with_the_input_where_it_lives(caplog):
    """A replay writes the caller's own tensor, as eager does (a static KV cache), and one that
    comes at a new address at every call is captured again only up to the limit (a cache that
    moves once per generate(), after many replays, is captured again each time)."""
    torch._dynamo.reset()
    caplog.set_level(logging.WARNING, logger="trt_multidev")

    def step(x, w):
        x.add_(1)
        return x @ w

    w = torch.randn(64, 64, device=DEVICE)
    compiled, graphs = compile_keeping(step, cuda_graphs=True, cuda_graph_max_shapes=2)
    a = torch.randn(16, 64, device=DEVICE)
    b = a.clone()
    for _ in range(4):  # warm, capture, replay, replay
        out, ref = compiled(a, w), step(b, w)
        assert rel_error(out, ref) < 1e-2 and rel_error(a, b) == 0
    captured, = [g.fn for g in graphs if isinstance(g.fn, CudaGraphs)]
    assert captured.captures == 1 and all(g.fallback is None for g in graphs)
    # Torch-TensorRT would drop the update (measured on an H200): it is done again on the input in
    # PyTorch after the engine (updates.py), inside the captured launch.
    messages = [r.getMessage() for r in caplog.records]
    assert not any("would not write back" in m or "runs uncaptured" in m for m in messages)
    for _ in range(4):  # a new tensor at every call: captured again (once after steady replays, then twice
        c = torch.randn(16, 64, device=DEVICE)  # right after a capture), then left uncaptured
        d = c.clone()
        out, ref = compiled(c, w), step(d, w)
        assert rel_error(out, ref) < 1e-2 and rel_error(c, d) == 0
    assert captured.captures == 4
    assert any("new addresses" in r.getMessage() for r in caplog.records)


def test_dynamic_graphs_run_right_uncaptured_with_one_warning(caplog):
    torch._dynamo.reset()
    caplog.set_level(logging.WARNING, logger="trt_multidev")
    model = Mlp().eval().half().to(DEVICE)
    compiled, graphs = compile_keeping(model, cuda_graphs=True)
    with torch.no_grad():
        for batch in (4, 8, 16, 8, 4):
            x = torch.randn(batch, 256, device=DEVICE, dtype=torch.half)
            torch._dynamo.mark_dynamic(x, 0, min=1, max=64)
            assert rel_error(compiled(x), model(x)) < 1e-2
    warned = [r.getMessage() for r in caplog.records if "dynamic shapes" in r.getMessage()]
    assert len(warned) == 1
