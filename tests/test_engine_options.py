"""TensorRT-RTX runtime options for the engines set up inside a build or a load (engine.py):
scoped to the build's context, validated, applied by the pipeline from the settings."""

from __future__ import annotations

import threading

import pytest

from trt_multidev_backend import engine
from trt_multidev_backend.engine import engine_options


def test_options_are_scoped_and_restored():
    assert engine._OPTIONS.get() == {}
    with engine_options(kernel_specialization="eager", internal_cuda_graphs=True):
        assert engine._OPTIONS.get() == {"kernel_specialization": "eager",
                                         "internal_cuda_graphs": "whole_graph_capture"}
        with engine_options():  # auto: TensorRT's defaults
            assert engine._OPTIONS.get() == {}
        assert engine._OPTIONS.get()["kernel_specialization"] == "eager"
    assert engine._OPTIONS.get() == {}


def test_options_of_one_thread_do_not_reach_another():
    seen = []
    with engine_options(kernel_specialization="none"):
        worker = threading.Thread(target=lambda: seen.append(dict(engine._OPTIONS.get())))
        worker.start()
        worker.join()
    assert seen == [{}]


def test_a_bad_value_names_what_is_accepted():
    with pytest.raises(ValueError, match="expected auto or one of lazy, eager, none"):
        with engine_options(kernel_specialization="sometimes"):
            pass


def test_the_pipeline_sets_up_engines_under_the_settings_options(fake_mode):
    import torch.nn as nn

    import trt_multidev_backend as tm
    from helpers import capture, fake, on_fake_device

    seen = []

    def delegate(gm, example_inputs, *, device, settings):
        seen.append(dict(engine._OPTIONS.get()))
        return gm.forward

    net = on_fake_device(nn.Linear(4, 4), "cuda:1", fake_mode)
    gm, inputs = capture(net, fake(fake_mode, 2, 4, device="cuda:1"))
    tm.backend(gm, inputs, options={"delegate": delegate, "kernel_specialization": "lazy", "cuda_graphs": True})
    tm.backend(gm, inputs, options={"delegate": delegate})
    assert seen == [{"kernel_specialization": "lazy", "internal_cuda_graphs": "whole_graph_capture"},
                    {"kernel_specialization": "eager"}]
