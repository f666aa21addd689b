from __future__ import annotations

import dataclasses

import pytest
import torch

from trt_multidev_backend.settings import (
    SETTING_SPECS,
    SettingsError,
    resolve_settings,
    unknown_env_vars,
)


# The defaults the README's settings table promises, written out: a changed default fails here.
README_DEFAULTS = {
    "device": None, "precision": ("fp32",), "strict": False, "fallback": "eager", "delegate": None,
    "input_policy": "error", "min_block_size": 5, "workspace_size": 0, "optimization_level": None,
    "engine_runtime": "auto", "log_level": "info", "cache": True, "cache_size": 10 * 2**30,
    "cache_lock_timeout": 1800.0, "trt": {}, "progress": "auto", "cuda_graphs": False,
    "cuda_graph_max_shapes": 8, "kernel_specialization": "eager", "static_shapes": 4, "fp32_accumulation": False,
}


def test_defaults_are_the_documented_ones(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # the README: $XDG_CACHE_HOME/trt_multidev
    s = resolve_settings({}, environ={})
    assert {spec.name for spec in SETTING_SPECS} == {*README_DEFAULTS, "cache_dir"}
    for name, value in README_DEFAULTS.items():
        assert getattr(s, name) == value, name
    assert s.cache_dir == str(tmp_path / "trt_multidev")
    assert all(s.sources[spec.name] == "default" for spec in SETTING_SPECS)


@pytest.mark.parametrize(
    "options, env, expected, source",
    [
        ({"device": "cuda:2"}, {"TRT_MULTIDEV_DEVICE": "cuda:1"}, "cuda:2", "options"),
        ({}, {"TRT_MULTIDEV_DEVICE": "cuda:1"}, "cuda:1", "env TRT_MULTIDEV_DEVICE"),
        ({}, {}, None, "default"),
        ({}, {"TRT_MULTIDEV_DEVICE": "   "}, None, "default"),  # blank variables count as unset
    ],
)
def test_precedence_options_over_env_over_default(options, env, expected, source):
    s = resolve_settings(options, environ=env)
    assert s.device == expected
    assert s.sources["device"] == source


def test_each_key_resolves_on_its_own():
    env = {"TRT_MULTIDEV_STRICT": "yes", "TRT_MULTIDEV_PRECISION": "fp16"}
    s = resolve_settings({"precision": "bf16"}, environ=env)
    assert s.precision == ("bf16",) and s.sources["precision"] == "options"
    assert s.strict is True and s.sources["strict"] == "env TRT_MULTIDEV_STRICT"


@pytest.mark.parametrize(
    "raw, expected",
    [("cuda:3", "cuda:3"), ("3", "cuda:3"), (2, "cuda:2"), ("cuda", "cuda"), ("CPU", "cpu"),
     (torch.device("cuda", 1), "cuda:1"), (" cuda:01 ", "cuda:1")],
)
def test_device_forms(raw, expected):
    assert resolve_settings({"device": raw}, environ={}).device == expected


@pytest.mark.parametrize("raw", ["gpu", "cuda:x", "cuda:-1", -1, True, "1.5", "meta"])
def test_bad_device_names_setting_value_and_accepted(raw):
    with pytest.raises(SettingsError) as err:
        resolve_settings({"device": raw}, environ={})
    text = str(err.value)
    assert "'device'" in text and repr(raw) in text and "cuda:N" in text


def test_bad_env_value_names_the_variable():
    with pytest.raises(SettingsError, match="TRT_MULTIDEV_MIN_BLOCK_SIZE") as err:
        resolve_settings({}, environ={"TRT_MULTIDEV_MIN_BLOCK_SIZE": "zero"})
    assert "'zero'" in str(err.value) and "integer >= 1" in str(err.value)


@pytest.mark.parametrize("word, value", [("1", True), ("TRUE", True), ("yes", True), ("On", True),
                                         ("0", False), ("false", False), ("NO", False), ("off", False)])
def test_booleans(word, value):
    assert resolve_settings({}, environ={"TRT_MULTIDEV_STRICT": word}).strict is value


@pytest.mark.parametrize("word", ["2", "y", "enabled", "", "truthy"])
def test_other_boolean_words_are_errors(word):
    if word == "":
        assert resolve_settings({}, environ={"TRT_MULTIDEV_STRICT": word}).strict is False  # blank = unset
        return
    with pytest.raises(SettingsError, match="1/true/yes/on or 0/false/no/off"):
        resolve_settings({}, environ={"TRT_MULTIDEV_STRICT": word})


def test_boolean_option_rejects_non_bool_numbers():
    with pytest.raises(SettingsError):
        resolve_settings({"strict": 2}, environ={})


def test_precision_lists_are_normalised():
    s = resolve_settings({}, environ={"TRT_MULTIDEV_PRECISION": "bf16, FP16,fp32,half"})
    assert s.precision == ("fp32", "fp16", "bf16")
    assert resolve_settings({"precision": [torch.float16]}, environ={}).precision == ("fp16",)
    for bad in ("fp8", "", ",", "int8"):
        with pytest.raises(SettingsError, match="fp32, fp16, bf16"):
            resolve_settings({"precision": bad}, environ={})


@pytest.mark.parametrize("key, good, bad, accepted", [
    ("fallback", "INDUCTOR", "tvm", "eager, inductor"),
    ("input_policy", "move", "copy", "error, move"),
    ("log_level", "debug", "verbose", "debug, info, warning, error"),
    ("engine_runtime", "Torch_TensorRT", "python", "auto, torch_tensorrt"),
    ("progress", "ON", "loud", "auto, on, off"),
])
def test_choices(key, good, bad, accepted):
    assert getattr(resolve_settings({key: good}, environ={}), key) == good.lower()
    with pytest.raises(SettingsError, match=accepted):
        resolve_settings({key: bad}, environ={})


@pytest.mark.parametrize("raw, expected", [("auto", "auto"), (" Off ", "off"), ("0", "off"), ("no", "off"),
                                           (False, "off"), ("1", "on"), ("yes", "on"), (True, "on")])
def test_progress_takes_its_words_and_booleans(raw, expected):
    assert resolve_settings({"progress": raw}, environ={}).progress == expected


@pytest.mark.parametrize("raw", ["loud", "2", "bar", "", None])
def test_bad_progress_values_name_the_setting_the_value_and_what_is_accepted(raw):
    with pytest.raises(SettingsError) as err:
        resolve_settings({"progress": raw}, environ={})
    text = str(err.value)
    assert "'progress'" in text and repr(raw) in text and "expected one of auto, on, off" in text
    with pytest.raises(SettingsError, match="invalid value 'tqdm' for setting 'progress' .from TRT_MULTIDEV_PROGRESS."):
        resolve_settings({}, environ={"TRT_MULTIDEV_PROGRESS": "tqdm"})


def test_numbers_and_sizes():
    env = {"TRT_MULTIDEV_WORKSPACE_SIZE": "2GiB", "TRT_MULTIDEV_OPTIMIZATION_LEVEL": "4",
           "TRT_MULTIDEV_MIN_BLOCK_SIZE": "1"}
    s = resolve_settings({}, environ=env)
    assert (s.workspace_size, s.optimization_level, s.min_block_size) == (2 * 2**30, 4, 1)
    assert resolve_settings({"workspace_size": "512MB"}, environ={}).workspace_size == 512 * 10**6
    for key, bad in (("optimization_level", 6), ("optimization_level", "max"), ("min_block_size", 0),
                     ("workspace_size", "lots"), ("workspace_size", -1), ("min_block_size", True)):
        with pytest.raises(SettingsError, match=key):
            resolve_settings({key: bad}, environ={})


def test_unknown_option_is_rejected_with_a_suggestion():
    with pytest.raises(SettingsError) as err:
        resolve_settings({"devcie": "cuda:1"}, environ={})
    text = str(err.value)
    assert "'devcie'" in text and "did you mean 'device'" in text and "input_policy" in text


def test_options_must_be_a_mapping():
    with pytest.raises(SettingsError, match="dict"):
        resolve_settings(["device"], environ={})  # type: ignore[arg-type]


def test_trt_passthrough_merges_per_key_and_refuses_owned_keys():
    env = {"TRT_MULTIDEV_TRT": '{"hardware_compatible": true, "use_fast_partitioner": false}'}
    s = resolve_settings({"trt": {"use_fast_partitioner": True}}, environ=env)
    assert dict(s.trt) == {"hardware_compatible": True, "use_fast_partitioner": True}
    assert s.sources["trt.hardware_compatible"] == "env TRT_MULTIDEV_TRT"
    assert s.sources["trt.use_fast_partitioner"] == "options"
    with pytest.raises(SettingsError, match="TRT_MULTIDEV_TRT.*JSON"):
        resolve_settings({}, environ={"TRT_MULTIDEV_TRT": "{hardware_compatible: 1}"})
    with pytest.raises(SettingsError, match="'enabled_precisions' is owned by the top-level setting 'precision'"):
        resolve_settings({"trt": {"enabled_precisions": {torch.float16}}}, environ={})
    with pytest.raises(SettingsError, match="mapping"):
        resolve_settings({"trt": [1, 2]}, environ={})


def test_delegate_forms():
    assert resolve_settings({"delegate": "torch_tensorrt"}, environ={}).delegate is None
    assert resolve_settings({}, environ={"TRT_MULTIDEV_DELEGATE": "pkg.mod:fn"}).delegate == "pkg.mod:fn"
    fn = lambda gm, xs, **kw: gm  # noqa: E731
    assert resolve_settings({"delegate": fn}, environ={}).delegate is fn
    with pytest.raises(SettingsError, match="module:function"):
        resolve_settings({"delegate": "not a path"}, environ={})


def test_modes():
    s = resolve_settings(None, mode="max-autotune", environ={})
    assert s.optimization_level == 5 and s.sources["optimization_level"] == "mode=max-autotune"
    # An explicit value still wins over what the mode implies.
    s = resolve_settings({}, mode="max-autotune", environ={"TRT_MULTIDEV_OPTIMIZATION_LEVEL": "2"})
    assert s.optimization_level == 2
    assert resolve_settings({}, mode="reduce-overhead", environ={}).optimization_level is None
    with pytest.raises(SettingsError, match="unsupported mode 'fastest'.*max-autotune"):
        resolve_settings({}, mode="fastest", environ={})


def test_result_token_ignores_reporting_and_is_order_stable():
    a = resolve_settings({"log_level": "debug", "trt": {"torch_executed_ops": {"b", "a", "c"}}}, environ={})
    b = resolve_settings({"trt": {"torch_executed_ops": {"c", "a", "b"}}}, environ={})
    assert a.result_token() == b.result_token()
    c = resolve_settings({"min_block_size": 1}, environ={})
    assert c.result_token() != b.result_token()
    # Progress only changes what is shown while building, never what is built.
    plain = resolve_settings({}, environ={}).result_token()
    assert resolve_settings({"progress": "off"}, environ={}).result_token() == plain


def test_settings_is_frozen_and_describes_sources():
    s = resolve_settings({"device": 1}, environ={"TRT_MULTIDEV_FALLBACK": "inductor"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.device = "cpu"  # type: ignore[misc]
    rows = {name: (value, source) for name, value, source in s.describe()}
    assert rows["device"] == ("cuda:1", "options")
    assert rows["fallback"] == ("inductor", "env TRT_MULTIDEV_FALLBACK")
    assert rows["delegate"] == ("torch_tensorrt", "default")


def test_unknown_env_vars_are_reported():
    env = {"TRT_MULTIDEV_DEVCE": "1", "TRT_MULTIDEV_DEVICE": "1", "OTHER": "x"}
    assert unknown_env_vars(env) == ["TRT_MULTIDEV_DEVCE"]
