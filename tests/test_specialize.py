"""Static engines for the shapes a dynamic graph meets often (setting static_shapes): built during
the call that meets a shape the STATIC_AFTER-th time within WINDOW calls (and in 1 of SHARE of
them), run from then on for that shape only; bounded, refused for large module state, failures
warned once, never retried."""

from __future__ import annotations

import logging
import threading

import pytest
import torch

import _delegates
import trt_multidev_backend as tm
from trt_multidev_backend import specialize

OPTIONS = {"delegate": "_delegates:tagging", "cache": False}


@pytest.fixture(autouse=True)
def _clean():
    for record in (_delegates.BUILDS, _delegates.RUNS, _delegates.REFUSE_STATIC, _delegates.STATIC_BUILD_THREADS,
                   _delegates.STATIC_BUILD_GRAD):
        record.clear()
    yield


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).eval()


def _calls(compiled, model, batches):
    """Call with each batch size in turn; every output must equal eager's."""
    with torch.no_grad():
        for b in batches:
            x = torch.randn(b, 4)
            torch.testing.assert_close(compiled(x), model(x))


def _dynamic(model, **options):
    compiled = torch.compile(model, backend="trt_multidev", options={**OPTIONS, **options})
    _calls(compiled, model, [2])  # static first graph; the next shape recompiles it dynamic
    return compiled


def test_a_shape_met_three_times_gets_a_static_engine_built_for_it():
    model = _model()
    compiled = _dynamic(model)
    _calls(compiled, model, [3, 5, 3, 5])  # dynamic graph built at 3; each shape met twice
    assert [tag for tag, _ in _delegates.BUILDS] == ["static", "dynamic"]  # the first graph, then dynamic
    _calls(compiled, model, [3])  # third call of batch 3: its static engine is built and run
    assert _delegates.RUNS[-1] == "static"
    tag, shapes = _delegates.BUILDS[-1]
    assert tag == "static" and (3, 4) in shapes and (5, 4) not in shapes  # built for batch 3
    assert _delegates.STATIC_BUILD_THREADS[-1] == threading.current_thread().name  # no builder thread
    assert _delegates.STATIC_BUILD_GRAD[-1] is False  # the calls ran under no_grad, so did the build
    del _delegates.RUNS[:]
    _calls(compiled, model, [3, 7, 3, 7])  # batch 7 met twice: not yet
    assert _delegates.RUNS == ["static", "dynamic", "static", "dynamic"]
    assert tm.stats()["cpu"]["static_engines"] == 1
    assert tm.stats()["cpu"]["compiles"] == 2  # static builds are counted apart


def test_at_most_static_shapes_engines_per_graph_and_none_with_zero():
    model = _model()
    compiled = _dynamic(model, static_shapes=1)
    _calls(compiled, model, [3, 3, 3, 4, 4, 4, 4])
    del _delegates.RUNS[:]
    _calls(compiled, model, [3, 4])
    assert _delegates.RUNS == ["static", "dynamic"]
    assert tm.stats()["cpu"]["static_engines"] == 1

    torch._dynamo.reset()
    off = _dynamic(model, static_shapes=0)
    _calls(off, model, [3] * 6)
    assert "static" not in _delegates.RUNS[-6:]
    assert tm.stats().get("cpu", {}).get("static_engines", 0) == 0


def test_a_failed_static_build_is_warned_once_and_not_tried_again(caplog):
    _delegates.REFUSE_STATIC.append("this converter needs dynamic shapes")
    model = _model()
    compiled = _dynamic(model)
    with caplog.at_level(logging.WARNING, logger="trt_multidev"):
        _calls(compiled, model, [3] * 8 + [4] * 8)
        _calls(compiled, model, [3, 4])
    statics = [tag for tag, _ in _delegates.BUILDS if tag == "static"]
    assert len(statics) == 1 + 2  # the first graph; then one try each for batch 3 and batch 4
    warned = [r.getMessage() for r in caplog.records if "no static engine" in r.getMessage()]
    assert len(warned) == 1 and "this converter needs dynamic shapes" in warned[0]
    assert "the dynamic engine keeps serving" in warned[0]
    assert _delegates.RUNS[-2:] == ["dynamic", "dynamic"]


def test_graphs_holding_much_state_get_no_static_engines(monkeypatch, caplog):
    monkeypatch.setattr(specialize, "MAX_STATE_BYTES", 100)  # the model holds 4*8+8+8*3+3 floats
    model = _model()
    with caplog.at_level(logging.INFO, logger="trt_multidev"):
        compiled = _dynamic(model)
        _calls(compiled, model, [3] * 6)
    assert "static" not in _delegates.RUNS[-5:]
    assert any("no static engines" in r.getMessage() and "MiB" in r.getMessage() for r in caplog.records)


def test_setting_is_validated():
    with pytest.raises(tm.SettingsError, match="static_shapes.*integer >= 0 and <= 64"):
        tm.resolve_settings({"static_shapes": -1})
    assert tm.resolve_settings({}, environ={"TRT_MULTIDEV_STATIC_SHAPES": "0"}).static_shapes == 0


def test_static_engines_are_kept_in_the_disk_cache_for_later_processes():
    serializing, model = _delegates.serializing, _model()
    made = []
    for _ in range(2):  # the second round starts as a later process would: nothing in memory
        torch._dynamo.reset()
        before = serializing.builds
        compiled = torch.compile(model, backend="trt_multidev", options={"delegate": "_delegates:serializing"})
        _calls(compiled, model, [2, 3, 3, 3])
        made.append(serializing.builds - before)
    assert made == [3, 0]  # first graph, dynamic graph, static engine; then all three loaded from disk
    assert tm.stats()["cpu"]["static_engines"] == 1
    assert tm.stats()["cpu"]["disk_hits"] == 2  # the static engine's load is counted apart


def test_a_shape_met_once_per_window_of_calls_gets_none():
    """A decode loop meets each length once per sequence: no static engine is worth it. Batch
    sizes that take turns (a server's) do get them."""
    model = _model()
    compiled = _dynamic(model)
    for count in (specialize.WINDOW // 2 + 1, 20):  # 33 lengths: at most twice per window; 20: thrice
        lengths = list(range(3, 3 + count))  # each seen once per pass, as a decode loop's are
        _calls(compiled, model, lengths * 3)
    assert "static" not in [tag for tag, _ in _delegates.BUILDS[1:]]
    torch._dynamo.reset()
    compiled = _dynamic(model)
    _calls(compiled, model, [4, 8, 16, 32] * 3)  # four batch sizes in turn: each a quarter of the calls
    assert tm.stats()["cpu"]["static_engines"] == 4


def test_a_static_build_runs_under_its_gpus_guard_and_gives_the_device_back(monkeypatch):
    from test_guard import FakeCuda

    from trt_multidev_backend import guard

    cuda = FakeCuda(real=0, contexts=(0, 1))
    monkeypatch.setattr(guard, "CUDA", cuda)
    seen = []

    def build(args):
        seen.append((cuda.state(), args))
        cuda._set_real(3)  # a library that switched the device and did not switch back
        return (lambda *a: "static"), "built"

    graph = specialize.Specialized(lambda *a: "dynamic", specialize.StaticPlan((), (0,), ()), torch.device("cuda", 1),
                                   2, build, ready=lambda *a: None, failed=lambda key, exc: seen.append(exc))
    assert [graph(7) for _ in range(3)] == ["dynamic", "dynamic", "static"]  # the third call built it
    assert seen == [((1, 1), [7])]  # built with cuda:1 current, for the size it was called with
    assert cuda.state() == (0, 0)
    assert graph(7) == "static" and graph(8) == "dynamic"


def _specialized(build, limit=4):
    """A Specialized graph over one caller input with a symbolic batch, on the CPU."""
    plan = specialize.StaticPlan(shaped=(0,), sizes=(), inputs=(0,))
    return specialize.Specialized(lambda *a: "dynamic", plan, torch.device("cpu"), limit, build,
                                  ready=lambda *a: None, failed=lambda key, exc: None)


def test_counts_start_again_every_window_so_a_long_run_neither_grows_them_nor_blocks_a_new_shape():
    """A long-running server: after many calls of shapes met once each (a decode loop's), a
    batch size that starts to recur still gets its engine at its third call, and the counts held
    stay within one window of calls."""
    built = []
    graph = _specialized(lambda args: (built.append(tuple(args[0].shape)) or (lambda *a: "static"), "built"))
    for n in range(10 * specialize.WINDOW):  # each length once
        assert graph(torch.empty(1, n + 100)) == "dynamic"
    assert len(graph._counts) <= specialize.WINDOW
    assert [graph(torch.empty(2, 8)) for _ in range(4)] == ["dynamic", "dynamic", "static", "static"]
    assert built == [(2, 8)]


def test_a_static_build_gets_stand_ins_for_the_callers_inputs_and_keeps_none_of_them_alive():
    import gc
    import weakref

    kept = []

    def build(args):
        kept.append(args)  # as a delegate may keep its example inputs
        return (lambda *a: "static"), "built"

    graph = _specialized(build)
    x = torch.randn(3, 4).t()  # strided: a stand-in must have the same strides
    ref = weakref.ref(x)
    assert [graph(x) for _ in range(3)] == ["dynamic", "dynamic", "static"]
    (stand_in,) = kept[0]
    assert stand_in is not x and stand_in.data_ptr() != x.data_ptr()
    assert (stand_in.shape, stand_in.stride(), stand_in.dtype, stand_in.device) == (
        x.shape, x.stride(), x.dtype, x.device)
    del x
    gc.collect()
    assert ref() is None


def test_a_graph_without_dynamic_shapes_gets_no_static_engine_however_often_its_shape_recurs():
    model = _model()
    compiled = torch.compile(model, backend="trt_multidev", options=OPTIONS)
    _calls(compiled, model, [2] * 6)
    assert [tag for tag, _ in _delegates.BUILDS] == ["static"]  # its one build, nothing more
    assert tm.stats()["cpu"]["static_engines"] == 0
