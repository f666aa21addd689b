"""Settings: one frozen dataclass, defaults in one table, each key resolved on its own.

Precedence per key: ``torch.compile(options=...)`` > ``TRT_MULTIDEV_<KEY>`` > ``mode=`` > default.
Everything is validated here, so a bad value fails at the first compile with a message that
names the setting (or the variable), the value and what is accepted. Nothing is kept in module
globals: every compile resolves its own ``Settings``.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping

__all__ = [
    "ENV_PREFIX",
    "SETTING_SPECS",
    "MANAGED_TRT_KEYS",
    "Settings",
    "SettingsError",
    "resolve_settings",
    "unknown_env_vars",
]

ENV_PREFIX = "TRT_MULTIDEV_"

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
_PRECISION_ORDER = ("fp32", "fp16", "bf16")
_PRECISION_ALIASES = {
    "fp32": "fp32", "float32": "fp32", "float": "fp32", "f32": "fp32",
    "fp16": "fp16", "float16": "fp16", "half": "fp16", "f16": "fp16",
    "bf16": "bf16", "bfloat16": "bf16",
}
_SIZE_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

# Torch-TensorRT settings that a top-level setting owns; passing them through `trt` would be
# ambiguous, so they are refused with a pointer to the right setting.
MANAGED_TRT_KEYS: Mapping[str, str] = MappingProxyType({
    "device": "device",
    "enabled_precisions": "precision",
    "min_block_size": "min_block_size",
    "workspace_size": "workspace_size",
    "optimization_level": "optimization_level",
    "pass_through_build_failures": "strict",
    "use_fp32_acc": "fp32_accumulation",  # which Torch-TensorRT 2.11 ignores on TensorRT-RTX
})


class SettingsError(ValueError):
    """A setting has a bad value; the message names the setting, the value and what is accepted."""


class _Invalid(ValueError):
    """A parser's complaint; resolve_settings adds the setting name and where the value came from."""


def _parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        v = value.strip().lower()
        if v in _TRUE:
            return True
        if v in _FALSE:
            return False
    raise _Invalid("expected a boolean: 1/true/yes/on or 0/false/no/off")


def _parse_int(value: Any, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool):
        raise _Invalid(f"expected an integer >= {lo}" + (f" and <= {hi}" if hi is not None else ""))
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        value = int(value)
    if not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        raise _Invalid(f"expected an integer >= {lo}" + (f" and <= {hi}" if hi is not None else ""))
    return value


def _parse_device(value: Any) -> str | None:
    accepted = "expected 'cuda' (the current CUDA device), 'cuda:N', an index N, or 'cpu'"
    if value is None:
        return None
    if isinstance(value, bool):
        raise _Invalid(accepted)
    if isinstance(value, int):
        if value < 0:
            raise _Invalid(accepted)
        return f"cuda:{value}"
    text = str(value).strip().lower()  # torch.device and str both land here
    if text == "":
        return None
    if re.fullmatch(r"\d+", text):
        return f"cuda:{int(text)}"
    if text in ("cuda", "cpu"):
        return text
    m = re.fullmatch(r"cuda:(\d+)", text)
    if m:
        return f"cuda:{int(m.group(1))}"
    raise _Invalid(accepted)


def _parse_precision(value: Any) -> tuple[str, ...]:
    accepted = "expected fp32, fp16, bf16 or a comma-separated list of them"
    if isinstance(value, str):
        items: list[Any] = [p for p in value.split(",") if p.strip()]
    elif isinstance(value, (list, tuple, set, frozenset)):
        items = list(value)
    else:
        items = [value]
    names = set()
    for item in items:
        key = str(item).strip().lower().removeprefix("torch.")
        if key not in _PRECISION_ALIASES:
            raise _Invalid(accepted)
        names.add(_PRECISION_ALIASES[key])
    if not names:
        raise _Invalid(accepted)
    return tuple(p for p in _PRECISION_ORDER if p in names)


def _parse_choice(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = str(value).strip().lower()
        if text not in choices:
            raise _Invalid("expected one of " + ", ".join(choices))
        return text
    return parse


def _parse_size(value: Any) -> int:
    accepted = "expected a byte count such as 1073741824, 1GiB or 512MB"
    if isinstance(value, bool):
        raise _Invalid(accepted)
    if isinstance(value, int):
        if value < 0:
            raise _Invalid(accepted)
        return value
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b|b)?\s*", str(value).lower())
    if not m:
        raise _Invalid(accepted)
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2) or ""])


def _parse_optional_level(value: Any) -> int | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "default")):
        return None
    return _parse_int(value, 0, 5)


def _parse_delegate(value: Any) -> Any:
    accepted = "expected 'torch_tensorrt', a 'module:function' string or a callable"
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if text in ("", "torch_tensorrt", "default"):
            return None
        if re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*", text):
            return text
        raise _Invalid(accepted)
    if callable(value):
        return value
    raise _Invalid(accepted)


def _parse_trt(value: Any) -> Mapping[str, Any]:
    accepted = "expected a mapping of Torch-TensorRT CompilationSettings fields (a JSON object in the environment)"
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError as exc:
            raise _Invalid(f"{accepted}; JSON error: {exc}") from None
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise _Invalid(accepted)
    for key in value:
        if key in MANAGED_TRT_KEYS:
            raise _Invalid(f"'{key}' is owned by the top-level setting '{MANAGED_TRT_KEYS[key]}'; set that instead")
    return MappingProxyType(dict(value))


def _parse_seconds(value: Any) -> float:
    accepted = "expected a number of seconds >= 0"
    if isinstance(value, bool):
        raise _Invalid(accepted)
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise _Invalid(accepted) from None
    if not seconds >= 0:  # also refuses NaN
        raise _Invalid(accepted)
    return seconds


def _parse_path(value: Any) -> str | None:
    if value is None or str(value).strip() == "":
        return None
    return os.path.abspath(os.path.expanduser(str(value)))


def default_cache_dir() -> str:
    import platformdirs

    return platformdirs.user_cache_dir("trt_multidev", appauthor=False)


def _parse_log_level(value: Any) -> str:
    return _parse_choice("debug", "info", "warning", "error")(value)


def _parse_progress(value: Any) -> str:
    """auto/on/off; the boolean words too, since TRT_MULTIDEV_PROGRESS=0 plainly means off."""
    accepted = "expected one of auto, on, off (or a boolean: 1/true/yes or 0/false/no)"
    if isinstance(value, bool):
        return "on" if value else "off"
    text = str(value).strip().lower()
    if text in ("auto", "on", "off"):
        return text
    if text in _TRUE:
        return "on"
    if text in _FALSE:
        return "off"
    raise _Invalid(accepted)


@dataclass(frozen=True)
class _Spec:
    name: str
    default: Any
    parse: Callable[[Any], Any]
    help: str
    # False for keys that only change how results are reported or run, never what is compiled.
    affects_result: bool = True
    # True for keys that change how a compiled graph runs (CUDA graphs, TensorRT-RTX runtime
    # options): part of the in-memory key, not of the disk cache's, whose entries serve them all.
    runtime: bool = False

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


SETTING_SPECS: tuple[_Spec, ...] = (
    _Spec("device", None, _parse_device,
          "Target device: cuda:N, N, cuda (current device) or cpu. Unset: taken from the graph."),
    _Spec("precision", ("fp32",), _parse_precision,
          "Kernel precisions TensorRT may use: fp32, fp16, bf16 or a comma list."),
    _Spec("strict", False, _parse_bool,
          "Never run without TensorRT silently: raise where the fallback would run."),
    _Spec("fallback", "eager", _parse_choice("eager", "inductor"),
          "What runs when TensorRT cannot: eager or inductor."),
    _Spec("delegate", None, _parse_delegate,
          "Compiler to call: torch_tensorrt (default), 'module:function' or a callable."),
    _Spec("input_policy", "error", _parse_choice("error", "move"),
          "An input on the wrong device: error (clear message) or move (copy it)."),
    _Spec("min_block_size", 5, lambda v: _parse_int(v, 1),
          "Smallest number of ops TensorRT takes as one engine."),
    _Spec("workspace_size", 0, _parse_size,
          "TensorRT builder workspace in bytes (0: TensorRT decides); 1GiB-style sizes accepted."),
    _Spec("optimization_level", None, _parse_optional_level,
          "TensorRT builder optimization level 0-5 (unset: TensorRT's default; max-autotune: 5)."),
    _Spec("fp32_accumulation", False, _parse_bool,
          "Matrix products (linear, matmul, bmm, addmm) of fp16/bf16 tensors computed from fp32 copies "
          "of their inputs and rounded once, as PyTorch's kernels do (TensorRT-RTX's fp16 products "
          "round more); slower. Torch-TensorRT's use_fp32_acc, done in the graph, so on every edition."),
    _Spec("engine_runtime", "auto", _parse_choice("auto", "torch_tensorrt"),
          "Who runs engines: auto (trt_multidev's runner, which keeps TensorRT-RTX's "
          "JIT-compiled kernels in the disk cache, where TensorRT offers that; else Torch-TensorRT) "
          "or torch_tensorrt (always Torch-TensorRT's runtime)."),
    _Spec("cuda_graphs", False, _parse_bool,
          "Capture each compiled graph's launch in a CUDA graph per input shape and replay it "
          "(on with mode='reduce-overhead'). Graphs with dynamic shapes are not captured; "
          "TensorRT-RTX captures their engines itself.", affects_result=False, runtime=True),
    _Spec("cuda_graph_max_shapes", 8, lambda v: _parse_int(v, 1),
          "The most input shapes captured per compiled graph; further shapes run uncaptured.",
          affects_result=False, runtime=True),
    _Spec("kernel_specialization", "eager", _parse_choice("auto", "lazy", "eager", "none"),
          "When TensorRT-RTX compiles kernels specialized for each shape a dynamic engine meets: eager "
          "(at the first call with that shape; measured as fast or faster than TensorRT's default at "
          "every batch), lazy (in the background; generic kernels meanwhile), none (generic kernels "
          "only), auto (TensorRT's default).", affects_result=False, runtime=True),
    _Spec("static_shapes", 4, lambda v: _parse_int(v, 0, 64),
          "The most static engines built per graph with dynamic shapes, one for each input shape met "
          "3 times within 64 calls (and in 1 of 8 of them), built during that call (static engines "
          "run faster than dynamic ones); 0: none. Graphs holding over 512 MiB of module state get none.",
          affects_result=False, runtime=True),
    _Spec("log_level", "info", _parse_log_level,
          "Level at which trt_multidev reports settings, device plans and cache hits.", affects_result=False),
    _Spec("progress", "auto", _parse_progress,
          "Progress of builds and loads that last over a second, on stderr: auto (a live display on a "
          "terminal, one start and one end line elsewhere), on (the live display even where stderr is "
          "not a terminal) or off.", affects_result=False),
    _Spec("cache", True, _parse_bool,
          "Keep compiled graphs on disk for later processes and other GPUs of the same model.", affects_result=False),
    _Spec("cache_dir", None, lambda v: _parse_path(v),
          "Disk cache directory (default: the user cache directory, e.g. ~/.cache/trt_multidev).",
          affects_result=False),
    _Spec("cache_size", 10 * 2**30, _parse_size,
          "Disk cache size limit; least recently used entries are evicted beyond it.", affects_result=False),
    _Spec("cache_lock_timeout", 1800.0, lambda v: _parse_seconds(v),
          "Seconds to wait for another process building the same entry before building anyway "
          "(a rank that died holding a lock on a shared filesystem).", affects_result=False),
    _Spec("trt", MappingProxyType({}), _parse_trt,
          "Other Torch-TensorRT CompilationSettings fields, passed through after validation (JSON in the environment)."),
)
_SPEC_BY_NAME = {s.name: s for s in SETTING_SPECS}
_D = {s.name: s.default for s in SETTING_SPECS}  # the dataclass below takes its defaults from here


@dataclass(frozen=True)
class Settings:
    """The resolved settings of one compile. ``sources`` says where each value came from."""

    device: str | None = _D["device"]
    precision: tuple[str, ...] = _D["precision"]
    strict: bool = _D["strict"]
    fallback: str = _D["fallback"]
    delegate: Any = _D["delegate"]
    input_policy: str = _D["input_policy"]
    min_block_size: int = _D["min_block_size"]
    workspace_size: int = _D["workspace_size"]
    optimization_level: int | None = _D["optimization_level"]
    fp32_accumulation: bool = _D["fp32_accumulation"]
    engine_runtime: str = _D["engine_runtime"]
    cuda_graphs: bool = _D["cuda_graphs"]
    cuda_graph_max_shapes: int = _D["cuda_graph_max_shapes"]
    kernel_specialization: str = _D["kernel_specialization"]
    static_shapes: int = _D["static_shapes"]
    log_level: str = _D["log_level"]
    progress: str = _D["progress"]
    cache: bool = _D["cache"]
    cache_dir: str | None = _D["cache_dir"]
    cache_size: int = _D["cache_size"]
    cache_lock_timeout: float = _D["cache_lock_timeout"]
    trt: Mapping[str, Any] = field(default_factory=lambda: _D["trt"])
    mode: str | None = None
    sources: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), compare=False, repr=False)
    # Not a user setting: ops the delegate could not convert in an earlier attempt at this graph
    # (qualified names, e.g. "torch.ops.aten.embedding.default"); they run in PyTorch (build.py).
    excluded_ops: tuple[str, ...] = ()

    def describe(self) -> list[tuple[str, str, str]]:
        """(name, value, source) rows, for logs and the CLI."""
        rows = []
        for spec in SETTING_SPECS:
            value = getattr(self, spec.name)
            if spec.name == "trt":
                for key in sorted(value):
                    rows.append((f"trt.{key}", repr(value[key]), self.sources.get(f"trt.{key}", "default")))
                if not value:
                    rows.append(("trt", "{}", self.sources.get("trt", "default")))
                continue
            if spec.name == "precision":
                shown = ",".join(value)
            elif spec.name == "delegate":
                shown = _delegate_label(value)
            else:
                shown = "auto" if value is None else str(value)
            rows.append((spec.name, shown, self.sources.get(spec.name, "default")))
        return rows

    def result_token(self) -> str:
        """A stable string of every setting that can change a compiled result (for cache keys)."""
        parts = {}
        for spec in SETTING_SPECS:
            if not spec.affects_result or spec.name == "delegate":
                continue
            value = getattr(self, spec.name)
            if spec.name == "trt":
                value = {k: _stable_repr(v) for k, v in sorted(value.items())}
            parts[spec.name] = value
        return json.dumps(parts, sort_keys=True, default=_stable_repr)

    def runtime_token(self) -> str:
        """The settings that change how a compiled graph runs, not what is built (in-memory keys)."""
        return json.dumps({s.name: getattr(self, s.name) for s in SETTING_SPECS if s.runtime}, sort_keys=True)


def _delegate_label(value: Any) -> str:
    if value is None:
        return "torch_tensorrt"
    if isinstance(value, str):
        return value
    return f"{getattr(value, '__module__', '?')}:{getattr(value, '__qualname__', type(value).__qualname__)}"


def _stable_repr(value: Any) -> str:
    """repr() with sets sorted, so equal settings give equal keys in every process."""
    if isinstance(value, (set, frozenset)):
        return "{" + ", ".join(sorted(_stable_repr(v) for v in value)) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_stable_repr(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k!r}: {_stable_repr(v)}" for k, v in sorted(value.items())) + "}"
    return repr(value)


def _bad_value(name: str, value: Any, origin: str, why: str) -> SettingsError:
    return SettingsError(f"trt_multidev: invalid value {value!r} for setting '{name}' (from {origin}): {why}")


def resolve_settings(
    options: Mapping[str, Any] | None = None,
    mode: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Resolve every key on its own: options > environment > mode > default. Raises ValueError."""
    environ = os.environ if environ is None else environ
    if options is None:
        options = {}
    if not isinstance(options, Mapping):
        raise SettingsError(f"trt_multidev: options must be a dict, got {type(options).__name__}")
    unknown = [k for k in options if k not in _SPEC_BY_NAME]
    if unknown:
        key = unknown[0]
        hint = difflib.get_close_matches(str(key), list(_SPEC_BY_NAME), n=1)
        raise SettingsError(
            f"trt_multidev: unknown option {key!r}"
            + (f" (did you mean {hint[0]!r}?)" if hint else "")
            + "; accepted options: " + ", ".join(_SPEC_BY_NAME)
            + ". Other Torch-TensorRT settings go under options={'trt': {...}}."
        )
    if mode is not None and mode not in _MODES:
        raise SettingsError(f"trt_multidev: unsupported mode {mode!r}; accepted modes: " + ", ".join(_MODES))

    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for spec in SETTING_SPECS:
        if spec.name == "trt":
            continue
        if spec.name in options:
            raw, origin, label = options[spec.name], f"options[{spec.name!r}]", "options"
        elif environ.get(spec.env, "").strip() != "":
            raw, origin, label = environ[spec.env], spec.env, "env " + spec.env
        elif spec.name == "optimization_level" and mode in ("max-autotune", "max-autotune-no-cudagraphs"):
            values[spec.name], sources[spec.name] = 5, f"mode={mode}"
            continue
        elif spec.name == "cuda_graphs" and mode == "reduce-overhead":
            values[spec.name], sources[spec.name] = True, f"mode={mode}"
            continue
        else:
            values[spec.name], sources[spec.name] = spec.default, "default"
            continue
        try:
            values[spec.name] = spec.parse(raw)
        except _Invalid as exc:
            raise _bad_value(spec.name, raw, origin, str(exc)) from None
        sources[spec.name] = label

    # `trt` merges per sub-key: an options entry beats the same entry from TRT_MULTIDEV_TRT.
    trt_spec = _SPEC_BY_NAME["trt"]
    merged: dict[str, Any] = {}
    if environ.get(trt_spec.env, "").strip():
        try:
            env_trt = trt_spec.parse(environ[trt_spec.env])
        except _Invalid as exc:
            raise _bad_value("trt", environ[trt_spec.env], trt_spec.env, str(exc)) from None
        for key, val in env_trt.items():
            merged[key], sources[f"trt.{key}"] = val, "env " + trt_spec.env
    if "trt" in options:
        try:
            opt_trt = trt_spec.parse(options["trt"])
        except _Invalid as exc:
            raise _bad_value("trt", options["trt"], "options['trt']", str(exc)) from None
        for key, val in opt_trt.items():
            merged[key], sources[f"trt.{key}"] = val, "options"
    if values["cache_dir"] is None:
        values["cache_dir"] = default_cache_dir()
    values["trt"] = MappingProxyType(merged)
    origins = sorted({sources[f"trt.{k}"] for k in merged})
    sources["trt"] = " + ".join(origins) if origins else "default"
    return Settings(**values, mode=mode, sources=MappingProxyType(sources))


def unknown_env_vars(environ: Mapping[str, str] | None = None, known: tuple[str, ...] = ()) -> list[str]:
    """TRT_MULTIDEV_* variables that no setting reads: most likely typos, worth one warning."""
    environ = os.environ if environ is None else environ
    names = {s.env for s in SETTING_SPECS} | set(known)
    return sorted(k for k in environ if k.startswith(ENV_PREFIX) and k not in names)


def settings_fields() -> list[str]:
    return [f.name for f in dataclasses.fields(Settings)]
