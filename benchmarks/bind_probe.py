"""Where the engine runner's host time goes in a decode step (issue 12, issue 14's generate()).

    python benchmarks/bind_probe.py --out DIR [--models gpt2] [--runs 3] [--options JSON]

generate_profile.py (H100, session 22) found `TensorRTEngine._bind` the largest trt_multidev
function under cProfile in GPT-2's and Llama's generate() with the default (dynamic) KV cache:
0.72 and 0.80 ms of self time per token, `_set_shapes` 0.15 to 0.17. cProfile cannot see inside
TensorRT's Python bindings (they are called through an instance method, not a builtin), so this
times the runner's pieces with the clock instead: generate() as real_models.py runs it through
trt_multidev, with `forward`, `_bind` and `_set_shapes` of every engine timed (wall µs per call)
and the inputs rebound per call counted. Then, on the engine called most (the decode step), on
its own objects after generate() ends: TensorRT's set_tensor_address alone for every input, the
runner's checks alone, set_input_shape and get_tensor_shape alone (µs per call, medians).
Then the same inputs again: a whole forward (nothing rebound or reshaped) and execute_async_v3
alone. Writes DIR/bind_probe.json (GPU, versions, date, commit).
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import statistics
import sys
import time
from typing import Any

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import real_models as rm  # noqa: E402  (puts the repository root on sys.path)
import trt_multidev_backend as tm  # noqa: E402
from trt_multidev_backend import engine as engine_module  # noqa: E402


class Timers:
    """Per engine: calls and wall seconds of forward, _bind and _set_shapes; inputs rebound."""

    def __init__(self) -> None:
        self.seconds: dict[tuple[int, str], list[float]] = collections.defaultdict(list)
        self.rebound: dict[int, list[int]] = collections.defaultdict(list)
        self.engines: dict[int, Any] = {}
        self.last_inputs: dict[int, tuple] = {}

    def install(self) -> list[tuple[str, Any]]:
        cls = engine_module.TensorRTEngine
        saved = [(name, getattr(cls, name)) for name in ("forward", "_bind", "_set_shapes")]
        timers = self

        def timed(name: str, original: Any) -> Any:
            def wrapper(engine: Any, *args: Any) -> Any:
                start = time.perf_counter()
                try:
                    return original(engine, *args)
                finally:
                    timers.seconds[(id(engine), name)].append(time.perf_counter() - start)
                    timers.engines[id(engine)] = engine
                    if name == "forward":
                        timers.last_inputs[id(engine)] = args
                    elif name == "_bind":
                        old, new = engine_bound_before.get(id(engine)), args[1]
                        timers.rebound[id(engine)].append(
                            len(new) if not old else sum(a != b for a, b in zip(old, new)))
            return wrapper

        engine_bound_before: dict[int, list[int]] = {}
        bind = cls._bind

        def remember(engine: Any, inputs: Any, ptrs: list[int]) -> None:
            engine_bound_before[id(engine)] = list(engine._bound)
            bind(engine, inputs, ptrs)

        cls.forward = timed("forward", cls.forward)
        cls._bind = timed("_bind", remember)
        cls._set_shapes = timed("_set_shapes", cls._set_shapes)
        return saved

    @staticmethod
    def restore(saved: list[tuple[str, Any]]) -> None:
        for name, value in saved:
            setattr(engine_module.TensorRTEngine, name, value)


def median_us(fn: Any, repeat: int = 200) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(1e6 * statistics.median(times), 2)


def alone(engine: Any, inputs: tuple) -> dict[str, Any]:
    """The decode engine's pieces alone, on its own context, leaving it as it was."""
    context = engine._context
    names = list(engine.input_names)
    ptrs = [x.data_ptr() if isinstance(x, torch.Tensor) else 0 for x in inputs]
    specs = list(engine._inputs)
    device = engine.device

    def addresses() -> None:
        for n, p in zip(names, ptrs):
            if p:
                context.set_tensor_address(n, p)

    def checks() -> None:
        for x, (shape, dtype) in zip(inputs, specs):
            if isinstance(x, torch.Tensor):
                (x.device != device or x.dtype != dtype or x.dim() != len(shape)
                 or any(d >= 0 and d != e for d, e in zip(shape, x.shape)))

    shapes = [(engine.input_names[i], tuple(inputs[i].shape)) for i in engine._dynamic
              if isinstance(inputs[i], torch.Tensor)]

    def set_shapes() -> None:
        for n, s in shapes:
            context.set_input_shape(n, s)

    def output_shapes() -> None:
        for n in engine.output_names:
            context.get_tensor_shape(n)

    kept = engine.forward(*inputs)  # binds these inputs and fresh outputs; kept alive below
    stream = engine._stream

    def execute() -> None:
        context.execute_async_v3(stream.cuda_stream)

    same_shape_forward = median_us(lambda: engine.forward(*inputs), 30)
    torch.cuda.synchronize(device)
    execute_alone = median_us(execute, 30)
    torch.cuda.synchronize(device)
    del kept
    with engine._lock:
        row = {
            "forward_same_inputs_us": same_shape_forward, "execute_async_v3_us": execute_alone,
            "inputs": len(names), "dynamic_inputs": len(engine._dynamic), "outputs": len(engine.output_names),
            "set_tensor_address_all_us": median_us(addresses),
            "checks_all_us": median_us(checks),
            "set_input_shape_all_us": median_us(set_shapes),
            "get_tensor_shape_outputs_us": median_us(output_shapes),
        }
        engine._bound = []  # the next call binds again
        engine._shapes = ()
    row["set_tensor_address_per_input_us"] = round(row["set_tensor_address_all_us"] / max(1, len(names)), 2)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--models", default="gpt2")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cache", default=None, choices=["static"])
    parser.add_argument("--options", default="{}", type=json.loads)
    args = parser.parse_args()
    dev, placement = rm.choose_device(None)
    options = {"cache": False, **args.options}
    os.makedirs(args.out, exist_ok=True)
    doc: dict[str, Any] = {
        "environment": rm.environment(dev), "placement": placement,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": rm.git("rev-parse", "HEAD"), "trt_multidev_options": options, "models": {},
    }
    for name in rm.parse_list(args.models, rm.MODELS, "model"):
        case = rm.MODELS[name](dev)
        rm.seed_everything()
        prompt = rm._token_ids(case.vocab, (1, rm.PROMPT_TOKENS), dev)
        torch._dynamo.reset()
        tm.reset()
        case.lm.forward = torch.compile(case.lm.forward, backend="trt_multidev", options=options)
        rm.timed_generate(case.lm, prompt, dev, args.cache)  # builds
        timers = Timers()
        saved = timers.install()
        try:
            host = []
            for _ in range(args.runs):
                host.append(rm.timed_generate(case.lm, prompt, dev, args.cache)[1])
        finally:
            timers.restore(saved)
        engines = []
        for key, engine in timers.engines.items():
            row = {"name": engine.name}
            for part in ("forward", "_bind", "_set_shapes"):
                s = timers.seconds.get((key, part), [])
                row[part] = {"calls": len(s), "median_us": round(1e6 * statistics.median(s), 2) if s else None}
            r = timers.rebound.get(key, [])
            row["inputs_rebound_per_bind"] = round(statistics.mean(r), 2) if r else 0
            engines.append(row)
        engines.sort(key=lambda r: -r["forward"]["calls"])
        result: dict[str, Any] = {"ms_per_token": [round(1000 * s / rm.NEW_TOKENS, 3) for s in host],
                                  "engines": engines}
        if engines:
            busiest = max(timers.engines, key=lambda k: len(timers.seconds[(k, "forward")]))
            result["decode_engine_alone"] = alone(timers.engines[busiest], timers.last_inputs[busiest])
        else:
            result["error"] = "no TensorRTEngine ran (no GPU, or Torch-TensorRT missing)"
        doc["models"][name] = result
        print(name, json.dumps(result), flush=True)
        vars(case.lm).pop("forward", None)
        del case
        rm.free_memory()
    with open(os.path.join(args.out, "bind_probe.json"), "w") as f:
        json.dump(doc, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
