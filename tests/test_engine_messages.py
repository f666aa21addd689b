"""TensorRT's messages about the runner's engines (engine.TensorRTMessages): into logging, each
distinct warning once at WARNING, the latest error of a thread kept for the exception that
follows. The TensorRT logger class that feeds it needs TensorRT (GPU test in test_gpu_engine)."""

from __future__ import annotations

import logging
import threading

from trt_multidev_backend.engine import TensorRTMessages

NAME = "trt_multidev.tensorrt"


def _records(caplog):
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == NAME]


def test_a_warning_met_again_comes_at_debug_and_errors_always_at_their_level(caplog):
    caplog.set_level(logging.DEBUG, logger=NAME)
    messages = TensorRTMessages()
    for _ in range(3):
        messages.emit(logging.WARNING, "Using default stream in enqueueV3()")
        messages.emit(logging.ERROR, "enqueueV3: Error Code 1")
    messages.emit(logging.WARNING, "another warning")
    messages.emit(logging.DEBUG, "Loaded engine size: 7 MiB")
    assert _records(caplog) == [
        (logging.WARNING, "TensorRT: Using default stream in enqueueV3()"),
        (logging.ERROR, "TensorRT: enqueueV3: Error Code 1"),
        (logging.DEBUG, "TensorRT: Using default stream in enqueueV3()"),
        (logging.ERROR, "TensorRT: enqueueV3: Error Code 1"),
        (logging.DEBUG, "TensorRT: Using default stream in enqueueV3()"),
        (logging.ERROR, "TensorRT: enqueueV3: Error Code 1"),
        (logging.WARNING, "TensorRT: another warning"),
        (logging.DEBUG, "TensorRT: Loaded engine size: 7 MiB"),
    ]


def test_beyond_its_memory_new_warnings_still_come_at_warning(caplog):
    caplog.set_level(logging.DEBUG, logger=NAME)
    messages = TensorRTMessages(most=2)
    for text in ("a", "b", "c", "c", "a"):
        messages.emit(logging.WARNING, text)
    assert [level for level, _ in _records(caplog)] == [logging.WARNING, logging.WARNING, logging.WARNING,
                                                        logging.WARNING, logging.DEBUG]


def test_the_latest_error_of_this_thread_is_said_once_and_forgotten_before_a_call():
    messages = TensorRTMessages()
    assert messages.said() == ""
    messages.emit(logging.ERROR, "first")
    messages.emit(logging.ERROR, "IExecutionContext::enqueueV3: Error Code 1: Myelin")
    messages.emit(logging.WARNING, "not an error")
    assert messages.said() == "\nTensorRT said: IExecutionContext::enqueueV3: Error Code 1: Myelin"
    assert messages.said() == ""  # taken
    messages.emit(logging.ERROR, "stale")
    messages.forget()  # a new call starts: an earlier error is not its cause
    assert messages.said() == ""

    messages.emit(logging.ERROR, "on this thread")
    heard = []
    other = threading.Thread(target=lambda: (heard.append(messages.said()),
                                             messages.emit(logging.ERROR, "on another thread"),
                                             heard.append(messages.said())))
    other.start()
    other.join()
    assert heard == ["", "\nTensorRT said: on another thread"]
    assert messages.said() == "\nTensorRT said: on this thread"  # each thread's own
