"""Our errors reach a torch.compile caller as themselves: `except SettingsError` and
`except TrtMultidevError` work, and the traceback ends with our message, not dynamo's advice."""

from __future__ import annotations

import pickle
import sys
import traceback

import pytest
import torch
import torch._dynamo.exc

import trt_multidev_backend as tm
from helpers import capture, TwoLinear as Net

dynamo_passes_ours = pytest.mark.skipif(
    not hasattr(torch._dynamo.exc, "ShortenTraceback"),
    reason="this torch wraps every backend error in BackendCompilerFailed")


def last_line(exc: BaseException) -> str:
    """What a user reads first: the last line of the traceback before any note."""
    lines = traceback.format_exception_only(type(exc), exc)
    return lines[0].rstrip("\n")


@dynamo_passes_ours
def test_a_bad_option_is_a_settings_error_through_torch_compile():
    compiled = torch.compile(Net(), backend="trt_multidev", options={"min_block_size": "lots"})
    with pytest.raises(tm.SettingsError) as err:
        compiled(torch.randn(2, 8))
    assert isinstance(err.value, ValueError)
    assert last_line(err.value) == (
        "trt_multidev_backend.settings.SettingsError: trt_multidev: invalid value 'lots' for setting "
        "'min_block_size' (from options['min_block_size']): expected an integer >= 1")
    shown = "".join(traceback.format_exception(err.value))
    assert "reporting a bug to PyTorch" not in shown and "BackendCompilerFailed" not in shown
    assert str(err.value).endswith("expected an integer >= 1")  # nothing appended by dynamo
    assert "output_graph.py" not in shown  # dynamo's own frames are cut: the user's call, then ours


@dynamo_passes_ours
def test_a_bad_environment_value_and_an_unknown_option_are_settings_errors(monkeypatch):
    monkeypatch.setenv("TRT_MULTIDEV_PROGRESS", "loud")
    with pytest.raises(tm.SettingsError, match=r"invalid value 'loud' for setting 'progress' "
                                               r"\(from TRT_MULTIDEV_PROGRESS\): expected one of auto, on, off"):
        torch.compile(Net(), backend="trt_multidev")(torch.randn(2, 8))
    monkeypatch.delenv("TRT_MULTIDEV_PROGRESS")
    torch._dynamo.reset()
    with pytest.raises(tm.SettingsError, match="unknown option 'strcit' \\(did you mean 'strict'\\?\\)"):
        torch.compile(Net(), backend="trt_multidev", options={"strcit": True})(torch.randn(2, 8))
    torch._dynamo.reset()
    with pytest.raises(tm.SettingsError, match="setting 'delegate': cannot load it"):
        torch.compile(Net(), backend="trt_multidev", options={"delegate": "_delegates:missing"})(torch.randn(2, 8))


@dynamo_passes_ours
def test_a_strict_failure_is_a_trt_multidev_error_through_torch_compile():
    compiled = torch.compile(Net(), backend="trt_multidev", options={"delegate": "_delegates:broken", "strict": True})
    with pytest.raises(tm.TrtMultidevError) as err:
        compiled(torch.randn(2, 8))
    assert isinstance(err.value, RuntimeError)
    assert last_line(err.value).startswith(
        "trt_multidev_backend.errors.TrtMultidevError: trt_multidev: the _delegates:broken delegate raised "
        "RuntimeError: engine build exploded [cpu]. strict is on, so no fallback runs.")
    if sys.version_info >= (3, 11):  # dynamo drops the chained cause; its traceback comes as a note
        (note,) = err.value.__notes__
        assert "Caused by" in note and note.endswith("RuntimeError: engine build exploded")
        assert "in broken" in note  # the delegate's own frame


@dynamo_passes_ours
def test_a_strict_fallback_without_tensorrt_is_a_trt_multidev_error():
    if torch.cuda.is_available():
        pytest.skip("checks the no-GPU fallback path")
    compiled = torch.compile(Net(), backend="trt_multidev", options={"strict": True})
    with pytest.raises(tm.TrtMultidevError, match="strict is on.*device=cuda:N"):
        compiled(torch.randn(2, 8))


def test_called_directly_the_plain_classes_are_raised():
    gm, inputs = capture(Net(), torch.randn(2, 8))
    with pytest.raises(tm.SettingsError) as err:
        tm.backend(gm, inputs, options={"min_block_size": "lots"})
    assert type(err.value) is tm.SettingsError
    with pytest.raises(tm.TrtMultidevError) as err:
        tm.backend(gm, inputs, options={"delegate": "_delegates:broken", "strict": True})
    assert type(err.value) is tm.TrtMultidevError
    assert str(err.value.__cause__) == "engine build exploded"


@dynamo_passes_ours
def test_an_error_from_torch_compile_pickles_as_the_plain_class():
    with pytest.raises(tm.SettingsError) as err:
        torch.compile(Net(), backend="trt_multidev", options={"min_block_size": 0})(torch.randn(2, 8))
    copy = pickle.loads(pickle.dumps(err.value))
    assert type(copy) is tm.SettingsError and str(copy) == str(err.value)


def test_a_device_setting_beyond_the_visible_gpus_is_a_settings_error(monkeypatch):
    from trt_multidev_backend import device

    monkeypatch.setattr(device, "cuda_usable", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(tm.SettingsError, match=r"device cuda:3 \(setting device=cuda:3\) is out of range: "
                                               r"2 CUDA device\(s\) visible \(cuda:0..cuda:1\)"):
        device.check_visible(torch.device("cuda", 3), "setting device=cuda:3")
