"""Where the engine runner enqueues (issue 12): on a stream of its own, or on the caller's?

    python benchmarks/stream_probe.py --out DIR [--rounds 3]

trt_multidev's runner (engine.TensorRTEngine.forward) enqueues every engine on a stream of its
own, ordered after the caller's stream and before it by two event records and two waits per call,
as Torch-TensorRT's runtime does. Rows marked "(direct)" swap in, in the same process, the form
tried in session 13: enqueue on the caller's stream (the engine's own for callers on the legacy
default stream, where TensorRT-RTX failed to capture its own CUDA graphs), a call on another
stream waiting for the latest one. Each model's rows are interleaved over rounds, on the engine
trt_multidev built, called directly:
- tiny MLP, batch 1 (host-bound): host us per call; its dynamic form (batch 2 and 3 alternately);
  two streams taking turns (every call a stream switch);
- ResNet-50 fp16, batch 32 (GPU-bound): ms per call (CUDA events on the calling stream);
- for every row, host ms to issue one call behind a 20 ms GPU sleep on its stream: about 20
  means the call waited for the GPU (the row "synchronize" shows what waiting looks like);
- a switch of stream (the sequence whose wait failed once with the direct form inside the GPU
  suite, session 13), timed on the tiny MLP and on an MLP with GELU and layer norm.
Writes DIR/stream_probe.json (GPU, versions, date).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import statistics
import sys
import time
from typing import Any, Callable, Iterator

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import gpu_bench  # noqa: E402  (puts the repository root on sys.path)
import trt_multidev_backend as tm  # noqa: E402
from trt_multidev_backend import engine as engine_module, guard  # noqa: E402

Engine = engine_module.TensorRTEngine


def _direct_forward(self: Any, *inputs: Any) -> Any:
    """TensorRTEngine.forward enqueueing on the caller's stream (a stream of the engine's own
    for callers on the legacy default stream), a call on another stream than the latest one
    waiting for it: the form tried in session 13 (static and dynamic inputs, as used here)."""
    if "_direct" not in self.__dict__:
        self._direct = [None, torch.cuda.Event()]  # the latest enqueue's stream, an event
    ptrs = [x.data_ptr() for x in inputs]
    shapes = tuple(tuple(inputs[i].shape) for i in self._dynamic)
    caller = guard.current_stream(self.device)
    with self._lock:
        if shapes != self._shapes:
            self._set_shapes(shapes)
        if ptrs != self._bound:
            self._bind(inputs, ptrs)
        outputs = [torch.empty(shape, dtype=dtype, device=self.device)
                   for shape, (_, dtype) in zip(self._output_shapes[shapes], self._outputs)]
        for n, out in zip(self.output_names, outputs):
            self._context.set_tensor_address(n, out.data_ptr())
        run = caller if caller.cuda_stream else self._stream
        last, switch = self._direct
        if last is not None and last is not run and last != run:
            switch.record(last)
            run.wait_event(switch)
        self._direct[0] = run
        if run is caller:
            assert self._context.execute_async_v3(run.cuda_stream)
        else:
            self._ready.record(caller)
            run.wait_event(self._ready)
            assert self._context.execute_async_v3(run.cuda_stream)
            self._done.record(run)
            caller.wait_event(self._done)
    return outputs[0] if len(outputs) == 1 else tuple(outputs)


@contextlib.contextmanager
def direct() -> Iterator[None]:
    saved = Engine.forward
    Engine.forward = _direct_forward
    try:
        yield
    finally:
        Engine.forward = saved
        for eng in [o for o in list(guard._LIVE) if isinstance(o, Engine)]:
            if "_direct" in eng.__dict__:  # the runner's next call waits for the latest direct one
                last = eng._direct[0]
                if last is not None:
                    eng._stream.wait_stream(last)


def engine_of(model: torch.nn.Module, x: torch.Tensor) -> tuple[Any, tuple[Any, ...]]:
    """The one engine trt_multidev builds for `model` and the arguments its first call got."""
    live = {id(o) for o in list(guard._LIVE)}
    _, call, call_args = gpu_bench.with_its_callable(model, x)
    new = [o for o in list(guard._LIVE) if isinstance(o, Engine) and id(o) not in live]
    assert len(new) == 1, new
    eng, seen = new[0], []
    forward = eng.forward
    eng.forward = lambda *a: (seen.append(a), forward(*a))[1]
    with torch.no_grad():
        call(*call_args)
    del eng.forward
    return eng, seen[0]


class Mlp256(torch.nn.Module):
    """tests/gpu/scenarios.py's Mlp: GELU and layer norm, which TensorRT-RTX fuses with cuDNN."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.GELU(), torch.nn.Linear(256, 256),
                                       torch.nn.LayerNorm(256))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) + x


def blocks_ms(fn: Callable[[], Any], stream: torch.cuda.Stream) -> float:
    """Host ms to issue `fn` on `stream` behind a 20 ms GPU sleep there."""
    torch.cuda.synchronize()
    with torch.cuda.stream(stream):
        torch.cuda._sleep(int(20e-3 * 1.98e9))  # cycles at about 2 GHz
        start = time.perf_counter()
        fn()
        took = (time.perf_counter() - start) * 1e3
    torch.cuda.synchronize()
    return took


def switch_sequence(eng: Any, args: tuple[Any, ...], dev: torch.device) -> dict[str, Any]:
    """A call on stream one behind a 200 ms GPU sleep, then one on stream two, timed: host ms per
    call, and whether each had finished 50 ms later (the second must wait for the first)."""
    one, two = torch.cuda.Stream(dev), torch.cuda.Stream(dev)
    eng(*args)
    torch.cuda.synchronize()
    seen: dict[str, Any] = {}
    with torch.cuda.stream(one):
        torch.cuda._sleep(int(0.2 * 1.98e9))
        start = time.perf_counter()
        eng(*args)
        seen["one_ms"] = (time.perf_counter() - start) * 1e3
        mark = torch.cuda.Event()
        mark.record(one)
    with torch.cuda.stream(two):
        start = time.perf_counter()
        eng(*args)
        seen["two_ms"] = (time.perf_counter() - start) * 1e3
        after = torch.cuda.Event()
        after.record(two)
    seen["one_done_at_once"] = mark.query()
    time.sleep(0.05)
    seen["one_done_at_50ms"], seen["two_done_at_50ms"] = mark.query(), after.query()
    start = time.perf_counter()
    torch.cuda.synchronize()
    seen["synchronize_ms"] = (time.perf_counter() - start) * 1e3
    return seen


def on(stream: torch.cuda.Stream, fn: Callable[[], Any]) -> Callable[[], Any]:
    def run() -> Any:
        with torch.cuda.stream(stream):
            return fn()
    return run


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    args_ = parser.parse_args()
    tm.register()
    heard: list[str] = []  # what TensorRT said about the engines run here (trt_multidev routes it to logging)
    tensorrt_log = logging.getLogger("trt_multidev.tensorrt")
    tensorrt_log.setLevel(logging.DEBUG)  # a probe's own choice: the library never sets levels
    tensorrt_log.addHandler(type("Heard", (logging.Handler,), {"emit": lambda self, r: heard.append(
        f"{r.levelname}: {r.getMessage()[:160]}")})())
    torch.manual_seed(0)
    dev = torch.device("cuda:0")
    default, mine, other = torch.cuda.default_stream(dev), torch.cuda.Stream(dev), torch.cuda.Stream(dev)
    mlp = gpu_bench.tiny_mlp().to(dev).eval()
    x = torch.randn(1, 64, device=dev)
    static, static_args = engine_of(mlp, x)
    xd = torch.randn(2, 64, device=dev)
    torch._dynamo.mark_dynamic(xd, 0, min=1, max=64)
    dynamic, d2 = engine_of(gpu_bench.tiny_mlp().to(dev).eval(), xd)
    assert dynamic.dynamic
    d3 = tuple(torch.randn((3, *a.shape[1:]), device=dev) if i in dynamic._dynamic else a for i, a in enumerate(d2))
    turn = [0]

    def dynamic_call() -> Any:
        turn[0] ^= 1
        return dynamic(*(d3 if turn[0] else d2))

    def two_streams() -> Any:
        turn[0] ^= 1
        with torch.cuda.stream(other if turn[0] else mine):
            return static(*static_args)

    wide, wide_args = engine_of(Mlp256().to(dev).eval(), torch.randn(16, 256, device=dev))
    resnet = gpu_bench.resnet50().to(dev).half().eval()
    big, big_args = engine_of(resnet, torch.randn(32, 3, 224, 224, device=dev, dtype=torch.float16))

    host: dict[str, tuple[Callable[[], Any], torch.cuda.Stream]] = {
        "mlp b1, default stream": (lambda: static(*static_args), default),
        "mlp b1, caller's stream": (on(mine, lambda: static(*static_args)), mine),
        "mlp dynamic b2/b3, default stream": (dynamic_call, default),
        "mlp b1, two streams taking turns": (two_streams, mine),
        "synchronize": (torch.cuda.synchronize, default),
    }
    gpu: dict[str, tuple[Callable[[], Any], torch.cuda.Stream]] = {
        "resnet50 fp16 b32, default stream": (lambda: big(*big_args), default),
        "resnet50 fp16 b32, caller's stream": (lambda: big(*big_args), mine),
    }
    rows: dict[str, dict[str, Any]] = {}
    sequences = {}
    with torch.no_grad():
        for was in (True, False):  # a fresh stream pair each: default, then behind a sleep on one, then two
            with direct() if was else contextlib.nullcontext():
                for label, (eng, eng_args) in {"tiny mlp": (static, static_args), "mlp256 gelu layernorm":
                                               (wide, wide_args)}.items():
                    sequences[f"{label}, {'direct' if was else 'runner'}"] = switch_sequence(eng, eng_args, dev)
        for name, seq in sequences.items():
            print("switch sequence", name, seq, flush=True)
        for name, (fn, _) in {**host, **gpu}.items():  # the same results either way
            if name == "synchronize":
                continue
            turn[0] = 0
            with direct():
                was = fn()
            turn[0] = 0
            now = fn()
            torch.cuda.synchronize()
            assert torch.allclose(was, now, rtol=0, atol=0, equal_nan=True), name
        names = [(n, b) for n in [*host, *gpu] for b in (False, True) if not (n == "synchronize" and b)]
        for r in range(args_.rounds):
            for name, was in names[r % len(names):] + names[:r % len(names)]:
                fn, stream = {**host, **gpu}[name]
                row = rows.setdefault(name + (" (direct)" if was else ""), {"value": [], "issue_ms_behind_sleep": []})
                with direct() if was else contextlib.nullcontext():
                    if name in host:
                        row["value"].append(gpu_bench.host_us_per_call(fn, calls=5000))
                    else:
                        with torch.cuda.stream(stream):
                            row["value"].append(gpu_bench.median_latency_ms(fn, iters=50, warmup=5))
                    row["issue_ms_behind_sleep"].append(blocks_ms(fn, stream))
    for name, row in rows.items():
        row["median"] = statistics.median(row["value"])
        row["unit"] = "ms per call" if name.startswith("resnet") else "host us per call"
        print(f"{name:46s} {row['median']:8.3f} {row['unit']:16s} behind a 20 ms sleep: "
              f"{max(row['issue_ms_behind_sleep']):6.2f} ms", flush=True)
    for line in sorted(set(heard)):
        print("trt_multidev.tensorrt", line)
    os.makedirs(args_.out, exist_ok=True)
    with open(os.path.join(args_.out, "stream_probe.json"), "w") as f:
        json.dump({"env": gpu_bench.environment(), "rows": rows, "switch_sequences": sequences, "tensorrt_said": sorted(set(heard))}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
