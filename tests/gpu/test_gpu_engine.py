"""trt_multidev's engine runner (engine.py) on a real GPU: it runs static-shape engines with
TensorRT-RTX's kernel cache, matches eager and Torch-TensorRT's runtime, binds inputs by address."""

from __future__ import annotations

import logging
import threading

import pytest
import torch

import trt_multidev_backend as tm
from scenarios import DEV, Mlp, rel_error
from trt_multidev_backend.engine import TensorRTEngine, runtime_cache_supported
from trt_multidev_backend.specialize import dynamic_of

pytestmark = pytest.mark.skipif(not runtime_cache_supported(),
                                reason="this TensorRT keeps no JIT kernels: Torch-TensorRT's runtime runs every engine")


def compiled_modules(model, x, **options):
    """Compile through trt_multidev and return (output, the engine modules of the compiled graph)."""
    graphs = []

    def capture(gm, example_inputs, **kwargs):
        fn = tm.backend(gm, example_inputs, **kwargs)
        graphs.append(fn)
        return fn

    compiled = torch.compile(model, backend=capture, options={"min_block_size": 1, **options})
    with torch.no_grad():
        out = compiled(x)
    engines = [m for g in graphs if isinstance(dynamic_of(g.fn), torch.nn.Module) for m in dynamic_of(g.fn).modules()
               if type(m).__name__ in ("TensorRTEngine", "TorchTensorRTModule", "PythonTorchTensorRTModule")]
    return compiled, out, engines


def test_static_engines_run_in_the_runner_or_where_asked_in_torch_tensorrts():
    model = Mlp().eval().to(DEV)
    x = torch.randn(16, 256, device=DEV)
    ref = model(x)
    _, out, engines = compiled_modules(model, x)
    assert engines and {type(m).__name__ for m in engines} == {"TensorRTEngine"}
    assert all(m.device == DEV and not m.runtime_cache_loaded for m in engines)
    torch._dynamo.reset()
    _, out_tt, engines_tt = compiled_modules(model, x, engine_runtime="torch_tensorrt", cache=False)
    assert engines_tt and {type(m).__name__ for m in engines_tt} == {"TorchTensorRTModule"}
    assert rel_error(out, ref) < 1e-2 and rel_error(out_tt, ref) < 1e-2
    assert rel_error(out, out_tt) < 1e-3


def test_runner_rebinds_inputs_when_their_addresses_change_and_sees_in_place_updates():
    model = Mlp().eval().to(DEV)
    compiled, _, _ = compiled_modules(model, torch.randn(16, 256, device=DEV))
    with torch.no_grad():
        for _ in range(4):
            x = torch.randn(16, 256, device=DEV)  # new address each time
            assert rel_error(compiled(x), model(x)) < 1e-2
        x.mul_(3)  # same address, new values
        assert rel_error(compiled(x), model(x)) < 1e-2
        model.net[0].weight.mul_(0.5)  # a parameter changed in place: engines read it, nothing baked in
        assert rel_error(compiled(x), model(x)) < 1e-2


def test_runner_checks_what_it_binds():
    model = Mlp().eval().to(DEV)
    _, _, engines = compiled_modules(model, torch.randn(16, 256, device=DEV))
    engine = engines[0]
    shapes = [tuple(s) for s, _ in engine._inputs]
    args = [torch.randn(s, device=DEV) for s in shapes]
    good = engine(*args)
    square = [i for i, s in enumerate(shapes) if len(s) == 2 and s[0] == s[1]]
    if square:  # a transposed view: same shape, other strides, must be copied, not misread
        i = square[0]
        args_t = list(args)
        args_t[i] = args[i].t().contiguous().t()
        assert not args_t[i].is_contiguous()
        out = engine(*args_t)
        first = good[0] if isinstance(good, tuple) else good
        again = out[0] if isinstance(out, tuple) else out
        assert torch.equal(first, again)
    with pytest.raises(RuntimeError, match=r"expected torch.float32 .* on cuda:0, got torch.float32 .* on cpu"):
        engine(*[a.cpu() if i == 0 else a for i, a in enumerate(args)])
    with pytest.raises(TypeError, match="takes"):
        engine(*args[:-1])
    assert engine(*args) is not None  # a refused call leaves the engine usable


def test_runner_orders_calls_across_streams_and_tells_tensorrts_messages_to_logging(caplog):
    """A call on another stream than the one before waits for it (an execution context's scratch
    memory serves one enqueue at a time), threads on streams of their own get their own results,
    and TensorRT's messages about the runner's engines go to logging (trt_multidev.tensorrt)
    instead of straight onto stderr."""
    caplog.set_level(logging.DEBUG, logger="trt_multidev.tensorrt")
    model = Mlp().eval().to(DEV)
    _, _, engines = compiled_modules(model, torch.randn(16, 256, device=DEV), cache=False)
    assert any(r.name == "trt_multidev.tensorrt" for r in caplog.records)  # "Loaded engine size: ..."
    engine = engines[0]
    args = [torch.randn(tuple(s), device=DEV) for s, _ in engine._inputs]
    first = engine(*args)  # on the default stream
    torch.cuda.synchronize(DEV)
    one, two = torch.cuda.Stream(DEV), torch.cuda.Stream(DEV)
    mark, after = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    with torch.cuda.stream(one):
        torch.cuda._sleep(int(0.1 * 1.98e9))  # about 100 ms of GPU time on `one`
        a = engine(*args)
        mark.record(one)
    with torch.cuda.stream(two):
        b = engine(*args)
        after.record(two)
    torch.cuda.synchronize(DEV)
    assert mark.elapsed_time(after) >= 0, "the call on the second stream ended before the first's"
    for out in (a, b):
        assert torch.equal(out[0] if isinstance(out, tuple) else out, first[0] if isinstance(first, tuple) else first)
    results: list[bool] = []

    def worker(seed: int) -> None:
        gen = torch.Generator(device=DEV).manual_seed(seed)
        with torch.no_grad(), torch.cuda.stream(torch.cuda.Stream(DEV)):
            for _ in range(50):
                x = [torch.randn(a.shape, device=DEV, generator=gen) for a in args]
                want = engine(*x)
                got = engine(*x)
                torch.cuda.current_stream(DEV).synchronize()
                results.append(torch.equal(want[0] if isinstance(want, tuple) else want,
                                           got[0] if isinstance(got, tuple) else got))

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 200 and all(results)


def test_a_failed_load_says_what_tensorrt_said():
    """TensorRT reports a failed deserialization only as None; its logged error becomes the
    exception's second line."""
    with torch.cuda.device(DEV), pytest.raises(
            RuntimeError, match=r"could not deserialize engine 'junk' on cuda:\d+\nTensorRT said: \S"):
        TensorRTEngine(b"not a TensorRT engine" * 64, ["x"], ["y"], name="junk", device=DEV)


def test_runner_pickles_with_its_kernels():
    from trt_multidev_backend.delegate import TorchTensorRTDelegate
    from trt_multidev_backend.settings import resolve_settings

    model = Mlp().eval().to(DEV)
    x = torch.randn(16, 256, device=DEV)
    _, _, engines = compiled_modules(model, x)
    delegate = TorchTensorRTDelegate()
    blob = delegate.dumps(engines[0])
    with torch.cuda.device(DEV):
        loaded = delegate.loads(blob, device=DEV, settings=resolve_settings({}, environ={}))
    assert isinstance(loaded, TensorRTEngine) and loaded.runtime_cache_loaded
    args = [torch.randn(tuple(s), device=DEV) for s, _ in engines[0]._inputs]
    a, b = engines[0](*args), loaded(*args)
    assert torch.equal(a[0] if isinstance(a, tuple) else a, b[0] if isinstance(b, tuple) else b)


def test_runner_runs_dynamic_batches_and_keeps_their_kernels():
    from trt_multidev_backend.delegate import TorchTensorRTDelegate
    from trt_multidev_backend.settings import resolve_settings

    model = Mlp().eval().to(DEV)
    base = torch.randn(40, 256, device=DEV)
    x = base[:8].clone()
    torch._dynamo.mark_dynamic(x, 0, min=1, max=40)
    compiled, _, engines = compiled_modules(model, x)
    assert engines and {type(m).__name__ for m in engines} == {"TensorRTEngine"}
    assert any(m._dynamic for m in engines)
    with torch.no_grad():
        for n in (2, 5, 33, 5, 40):  # views of one buffer: same address, other shapes
            view = base[:n]
            assert rel_error(compiled(view), model(view)) < 1e-2, n
    engine = next(m for m in engines if m._dynamic)
    shapes = [tuple(4 if d < 0 else d for d in s) for s, _ in engine._inputs]
    args = [torch.randn(s, device=DEV) for s in shapes]
    expected = engine(*args)
    too_big = [torch.randn(tuple(41 if d < 0 else d for d in s), device=DEV) for s, _ in engine._inputs]
    with pytest.raises(RuntimeError, match="outside the range it was built for"):
        engine(*too_big)
    delegate = TorchTensorRTDelegate()
    with torch.cuda.device(DEV):
        loaded = delegate.loads(delegate.dumps(engine), device=DEV, settings=resolve_settings({}, environ={}))
    assert loaded.runtime_cache_loaded
    again = loaded(*args)
    first = expected[0] if isinstance(expected, tuple) else expected
    assert torch.equal(first, again[0] if isinstance(again, tuple) else again)


def test_kernels_compiled_after_a_store_are_seen_as_grown():
    """The disk-cache write-back (reuse.py) asks each engine whether TensorRT-RTX compiled kernels
    since it was last stored: a dynamic engine meeting new batch sizes must say yes, and no again
    once pickled. A convolutional network: measured (benchmarks/kernel_cache_probe.py, H200), its
    kernel cache grows with each new batch size (ResNet-18: 72 KB each, under every kernel
    specialization strategy), an MLP's does not."""
    from trt_multidev_backend.delegate import TorchTensorRTDelegate

    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet18(weights=None).eval().half().to(DEV)
    x = torch.randn(8, 3, 224, 224, device=DEV, dtype=torch.half)
    torch._dynamo.mark_dynamic(x, 0, min=1, max=64)
    compiled, _, engines = compiled_modules(model, x, cache=False)
    engine = next(m for m in engines if m.dynamic)
    delegate = TorchTensorRTDelegate()
    delegate.dumps(engine)  # stored: nothing grown since
    assert not engine.kernels_grown()
    with torch.no_grad():
        for n in (3, 17):
            compiled(torch.randn(n, 3, 224, 224, device=DEV, dtype=torch.half))
    assert engine.kernels_grown() and delegate.needs_saving(engine)
    delegate.dumps(engine)
    assert not engine.kernels_grown()
