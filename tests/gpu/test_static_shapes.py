"""Static engines for the shapes a dynamic graph meets often (setting static_shapes), on a real
GPU: built by Torch-TensorRT during the call that makes a shape recurring, on the graph's GPU,
eager-equal, and run for their shape only; the caller's current device is never changed.
Speed: dynamic_shapes.py."""

from __future__ import annotations

import pytest
import torch

import trt_multidev_backend as tm
from scenarios import DEV, Mlp, rel_error
from trt_multidev_backend.delegate import TorchTensorRTDelegate
from trt_multidev_backend.specialize import Specialized


def _compiled(model, **options):
    """torch.compile through trt_multidev, and the list that collects what it returns per graph."""
    graphs = []

    def capture(gm, example_inputs, **kwargs):
        graphs.append(tm.backend(gm, example_inputs, **kwargs))
        return graphs[-1]

    return torch.compile(model, backend=capture, options={"min_block_size": 1, "cache": False, **options}), graphs


@pytest.mark.parametrize("runtime", ["auto", "torch_tensorrt"])
def test_a_recurring_shape_runs_a_static_engine(runtime):
    model = Mlp().eval().to(DEV)
    compiled, graphs = _compiled(model, engine_runtime=runtime)
    current = torch.cuda.current_device()
    with torch.no_grad():
        for batch in (8, 16, 16, 16, 24):  # 8: a static graph; 16 recompiles it dynamic, met 3 times
            x = torch.randn(batch, 256, device=DEV)
            assert rel_error(compiled(x), model(x)) < 1e-2
        assert torch.cuda.current_device() == current
        specialized = [g.fn for g in graphs if isinstance(g.fn, Specialized)]
        assert len(specialized) == 1 and len(specialized[0].shapes) == 1
        assert tm.stats()[str(DEV)]["static_engines"] == 1
        (key,) = specialized[0].shapes
        static = specialized[0]._static[key]
        engines = TorchTensorRTDelegate.engine_devices(static)
        assert engines and all(device == DEV for _, device in engines)
        for batch in (16, 24, 16, 40):  # the static engine for 16, the dynamic one for the rest
            x = torch.randn(batch, 256, device=DEV)
            assert rel_error(compiled(x), model(x)) < 1e-2
    assert torch.cuda.current_device() == current


def test_with_cuda_graphs_static_engines_are_captured_and_replayed():
    from trt_multidev_backend.cudagraphs import CudaGraphs

    model = Mlp().eval().to(DEV)
    compiled, graphs = _compiled(model, cuda_graphs=True)
    with torch.no_grad():
        for batch in (8, 16, 16, 16):
            compiled(torch.randn(batch, 256, device=DEV))
        outs = []
        for _ in range(4):  # warm, capture, replay, replay
            x = torch.randn(16, 256, device=DEV)
            outs.append((compiled(x), model(x)))
    (specialized,) = [g.fn for g in graphs if isinstance(g.fn, Specialized)]
    (static,) = specialized._static.values()
    assert isinstance(static, CudaGraphs) and static.captures == 1
    assert all(rel_error(out, ref) < 1e-2 for out, ref in outs)
    assert len({out.data_ptr() for out, _ in outs}) == 4  # replays hand out their own outputs
