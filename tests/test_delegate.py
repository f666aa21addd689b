"""The Torch-TensorRT delegate's decisions that do not need TensorRT: when trt_multidev's engine
runner takes over, the scoped deferral of Torch-TensorRT's engine setup, and the options it is
handed."""

from __future__ import annotations

import threading

import pytest

from trt_multidev_backend import delegate as d
from trt_multidev_backend.settings import resolve_settings


def runner_ready() -> d.TorchTensorRTDelegate:
    """A delegate on a machine whose TensorRT keeps JIT kernels (TensorRT-RTX); that one fact is
    the only thing set by hand, the decision itself is the delegate's."""
    delegate = d.TorchTensorRTDelegate()
    delegate._runner_supported = True
    return delegate


@pytest.mark.parametrize("options", [
    {"engine_runtime": "torch_tensorrt"},
    {"trt": {"use_python_runtime": True}},
    {"trt": {"lazy_engine_init": True}},
    {"trt": {"enable_weight_streaming": True}},
])
def test_runner_stands_aside_when_asked(options):
    assert runner_ready().runner_applies(resolve_settings({}, environ={}))
    assert not runner_ready().runner_applies(resolve_settings(options, environ={}))


def test_runner_needs_a_tensorrt_that_keeps_kernels():
    delegate = d.TorchTensorRTDelegate()
    delegate._runner_supported = False
    assert not delegate.runner_applies(resolve_settings({}, environ={}))


def test_setup_deferral_is_scoped_to_the_block_and_the_thread():
    calls = []

    class EngineModule:  # the shape of Torch-TensorRT's Python engine module: setup_engine()
        def setup_engine(self):
            calls.append(threading.current_thread().name)

    def other_thread():
        t = threading.Thread(target=EngineModule().setup_engine, name="other")
        t.start()
        t.join()

    with d._deferring_setup(EngineModule):
        EngineModule().setup_engine()  # deferred
        other_thread()  # not deferred: another thread
        with pytest.raises(RuntimeError):
            with d._deferring_setup(EngineModule):  # installed once, still scoped
                raise RuntimeError("build failed")
    EngineModule().setup_engine()
    assert calls == ["other", threading.current_thread().name]


def _fake_compilation_settings(monkeypatch, *, with_attn_field: bool = True, version: str = "2.11.0",
                               backend=None) -> None:
    """Stands in for Torch-TensorRT: its CompilationSettings (whose fields are what options_for
    reads), its version, and, if given, its dynamo backend function."""
    import dataclasses
    import sys
    import types

    fields = [("device", object, None), ("min_block_size", int, 5), ("workspace_size", int, 0),
              ("pass_through_build_failures", bool, False), ("optimization_level", object, None),
              ("torch_executed_ops", object, None), ("use_python_runtime", object, None),
              ("lazy_engine_init", bool, False), ("decompose_attention", bool, False)]
    if with_attn_field:
        fields.append(("attn_bias_is_causal", bool, True))
    settings_class = dataclasses.make_dataclass("CompilationSettings", fields)
    package, dynamo = types.ModuleType("torch_tensorrt"), types.ModuleType("torch_tensorrt.dynamo")
    package.__version__ = version
    dynamo.CompilationSettings = settings_class
    package.dynamo = dynamo
    monkeypatch.setitem(sys.modules, "torch_tensorrt", package)
    monkeypatch.setitem(sys.modules, "torch_tensorrt.dynamo", dynamo)
    if backend is not None:
        backends = types.ModuleType("torch_tensorrt.dynamo.backend.backends")
        backends.torch_tensorrt_backend = backend
        monkeypatch.setitem(sys.modules, "torch_tensorrt.dynamo.backend", types.ModuleType("backend"))
        monkeypatch.setitem(sys.modules, "torch_tensorrt.dynamo.backend.backends", backends)


def test_attention_bias_is_not_assumed_causal(monkeypatch):
    """Torch-TensorRT 2.11's default (True) ignores the values of memory-efficient attention's
    bias; on an H200, GPT-2's generate() then gave other tokens than eager."""
    import torch

    _fake_compilation_settings(monkeypatch)
    delegate, device = d.TorchTensorRTDelegate(), torch.device("cuda", 1)
    assert delegate.options_for(device, resolve_settings({}, environ={}))["attn_bias_is_causal"] is False
    asked = resolve_settings({"trt": {"attn_bias_is_causal": True}}, environ={})
    assert delegate.options_for(device, asked)["attn_bias_is_causal"] is True


def test_a_torch_tensorrt_without_that_setting_is_not_handed_it(monkeypatch):
    import torch

    _fake_compilation_settings(monkeypatch, with_attn_field=False)
    options = d.TorchTensorRTDelegate().options_for(torch.device("cuda", 0), resolve_settings({}, environ={}))
    assert "attn_bias_is_causal" not in options and options["min_block_size"] == 5


@pytest.mark.parametrize("queries, kv_heads, uneven", [(6, 2, False), (1, 2, True), (6, 1, True)])
def test_uneven_attention_is_seen_in_the_graph(queries, kv_heads, uneven):
    """A decode step (1 query over 6 keys) or grouped keys (1 head of keys for 2 of queries):
    shapes Torch-TensorRT 2.11's attention converters refuse, so the delegate decomposes them."""
    import torch
    import torch.nn.functional as F

    from helpers import capture

    def attend(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=kv_heads != 2)

    gm, _ = capture(attend, torch.randn(1, 2, queries, 4), torch.randn(1, kv_heads, 6, 4),
                    torch.randn(1, kv_heads, 6, 4))
    assert d.uneven_attention(gm) is uneven


@pytest.mark.parametrize("version, refuses", [("2.11.0", True), ("2.10.0+cu130", True), ("2.12.0", False),
                                              ("2.13.0rc13", False), ("3.0.0", False)])
def test_only_torch_tensorrt_before_2_12_gets_uneven_attention_decomposed(version, refuses):
    """2.12 accepts queries and keys of different shapes (its validator compares keys and values
    only); decomposing there would only slow attention down."""
    assert d.refuses_uneven_attention(version) is refuses


class StandInBackend:
    """Torch-TensorRT's dynamo backend, standing in: records whether each build was asked to
    decompose attention and whether the graph it got still holds attention, fails decomposed
    builds if told to, and returns the graph (which then runs in PyTorch)."""

    def __init__(self, fail_decomposed: bool = False) -> None:
        self.fail_decomposed = fail_decomposed
        self.builds: list[tuple[bool, bool]] = []

    def __call__(self, gm, inputs, *, options):
        import torch.nn.functional as F

        decomposed = options.get("decompose_attention", False)
        self.builds.append((decomposed, any(n.target is F.scaled_dot_product_attention for n in gm.graph.nodes)))
        if decomposed and self.fail_decomposed:
            for node in gm.graph.nodes:  # a failed build may leave its graph changed: that must not matter
                if node.target is F.scaled_dot_product_attention:
                    node.args = (node.args[0],) * 3
            gm.recompile()
            raise RuntimeError("TensorRT could not create an execution context for '_run_on_acc_0'")
        return gm


def _decode_step(queries: int = 1):
    import torch
    import torch.nn.functional as F

    from helpers import capture

    def attend(q, k, v):
        return F.scaled_dot_product_attention(q, k, v) * 2

    q, k, v = torch.randn(1, 2, queries, 4), torch.randn(1, 2, 6, 4), torch.randn(1, 2, 6, 4)
    gm, inputs = capture(attend, q, k, v)
    return gm, inputs, attend(q, k, v)


@pytest.mark.parametrize("fail_decomposed, builds", [(False, [(True, True)]),
                                                     (True, [(True, True), (False, True)])])
def test_a_decode_step_is_built_decomposed_or_else_whole(monkeypatch, fail_decomposed, builds):
    import torch

    backend = StandInBackend(fail_decomposed)
    _fake_compilation_settings(monkeypatch, backend=backend)
    delegate = d.TorchTensorRTDelegate()
    delegate._runner_supported = False
    gm, inputs, expected = _decode_step()
    compiled = delegate(gm, inputs, device=torch.device("cuda", 0), settings=resolve_settings({}, environ={}))
    assert backend.builds == builds
    assert torch.allclose(compiled(*inputs)[0], expected)


@pytest.mark.parametrize("queries, options, version", [
    (6, {}, "2.11.0"),                                     # queries and keys alike: nothing to decompose
    (1, {"trt": {"decompose_attention": False}}, "2.11.0"),  # the user's choice wins
    (1, {}, "2.12.0"),                                     # converted as it is from 2.12 on
])
def test_attention_is_not_decomposed_otherwise(monkeypatch, queries, options, version):
    import torch

    backend = StandInBackend()
    _fake_compilation_settings(monkeypatch, backend=backend, version=version)
    delegate = d.TorchTensorRTDelegate()
    delegate._runner_supported = False
    gm, inputs, _ = _decode_step(queries)
    delegate(gm, inputs, device=torch.device("cuda", 0), settings=resolve_settings(options, environ={}))
    assert backend.builds == [(False, True)]


def test_the_build_recipe_namespaces_the_disk_cache(monkeypatch, tmp_path):
    """Entries built by an older recipe (before masks were computed ahead, say) are not loaded:
    the recipe is part of the versions that name the disk cache's namespace."""
    import sys
    import types

    from trt_multidev_backend.diskcache import DiskCache

    _fake_compilation_settings(monkeypatch)
    tensorrt = types.ModuleType("tensorrt")
    tensorrt.__version__ = "1.4.0"
    monkeypatch.setitem(sys.modules, "tensorrt", tensorrt)
    store = DiskCache(tmp_path, 2**30)
    now = store.namespace(d.TorchTensorRTDelegate().versions(), "gpu")
    monkeypatch.setattr(d, "BUILD_RECIPE", d.BUILD_RECIPE + 1)
    assert store.namespace(d.TorchTensorRTDelegate().versions(), "gpu") != now
