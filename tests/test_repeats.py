"""Torch-TensorRT's repeated warnings during a build are shown once each and counted (repeats.py)."""

from __future__ import annotations

import logging
import threading

from trt_multidev_backend.repeats import collapsed_repeats

FORMATTER = "torch_tensorrt.dynamo.conversion.converter_utils"  # where Torch-TensorRT 2.11 repeats itself
TEXT = "Detected unparsable type in node formatting: <class 'NoneType'>"


def messages(caplog, name: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == name]


def test_a_warning_repeated_during_a_build_is_shown_once_and_counted(caplog):
    caplog.set_level(logging.INFO)
    formatter, partitioner = logging.getLogger(FORMATTER), logging.getLogger("torch_tensorrt.dynamo.partitioning")
    with collapsed_repeats("a graph of 270 ops on cuda:1"):
        for _ in range(24):
            formatter.warning(TEXT)
        partitioner.warning("Dynamic input arg3_1 has no max bound")
        partitioner.warning("Dynamic input arg4_1 has no max bound")  # another text: shown
        for _ in range(3):
            formatter.info("Converted node x")  # below WARNING: untouched
    assert messages(caplog, FORMATTER) == [TEXT] + ["Converted node x"] * 3
    assert len(messages(caplog, "torch_tensorrt.dynamo.partitioning")) == 2
    summary, = messages(caplog, "trt_multidev.repeats")
    assert "a graph of 270 ops on cuda:1" in summary and "repeated 1 warning(s)" in summary
    assert repr(TEXT) + " 23 more times" in summary and "log_level=debug" in summary


def test_after_the_build_and_when_disabled_every_record_passes(caplog):
    formatter = logging.getLogger(FORMATTER)
    with collapsed_repeats("a graph"):
        formatter.warning(TEXT)
    formatter.warning(TEXT)  # the filter is gone
    with collapsed_repeats("a graph", enabled=False):  # log_level=debug
        formatter.warning(TEXT)
        formatter.warning(TEXT)
    assert messages(caplog, FORMATTER) == [TEXT] * 4
    assert messages(caplog, "trt_multidev.repeats") == []  # nothing collapsed, nothing to report
    assert not logging.getLogger(FORMATTER).filters


def test_other_loggers_and_other_threads_are_left_alone(caplog):
    ours, formatter = logging.getLogger("trt_multidev.pipeline"), logging.getLogger(FORMATTER)

    def elsewhere() -> None:  # another thread's records while this thread builds
        formatter.warning(TEXT)
        formatter.warning(TEXT)

    with collapsed_repeats("a graph"):
        ours.warning("not Torch-TensorRT's")
        ours.warning("not Torch-TensorRT's")
        thread = threading.Thread(target=elsewhere)
        thread.start()
        thread.join()
    assert messages(caplog, "trt_multidev.pipeline") == ["not Torch-TensorRT's"] * 2
    assert messages(caplog, FORMATTER) == [TEXT] * 2
