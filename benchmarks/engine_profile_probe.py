"""Where an engine's time goes: TensorRT's per-layer profile of the engines trt_multidev builds
for one model of real_models.py (ConvNeXt-T was no faster than eager in TensorRT, session 9).

    python benchmarks/engine_profile_probe.py --out DIR [--model convnext_t] [--iters 20] [--top 30]
        [--options JSON] [--inductor [--inductor-mode reduce-overhead]]

The model on cuda:0 in fp16, compiled by trt_multidev (disk cache off); every engine the runner
holds gets a TensorRT IProfiler; after warm-up, --iters calls are profiled. Prints the layers
with the most time per call (TensorRT-RTX fuses many ops into one layer; names say which), the
sum over layers against the call's median latency, and what the engine inspector tells of each
layer. Then the CUDA kernels of trt_multidev's calls as torch.profiler sees them (no per-layer
synchronisation, so their sum is the GPU time of a call, comparable across backends). With
--inductor, also the kernels of inductor's compile of the same model (the same --iters calls), to
see which parts TensorRT loses on and whether a call is bound by its kernels or by the host.
Writes DIR/engine_profile.json.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
from typing import Any

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import gpu_bench  # noqa: E402  (puts the repository root on sys.path)
import real_models  # noqa: E402
import trt_multidev_backend as tm  # noqa: E402
from trt_multidev_backend.specialize import dynamic_of  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", default="convnext_t")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--options", default="{}", help="trt_multidev options, JSON")
    parser.add_argument("--inductor", action="store_true", help="also profile inductor's kernels")
    parser.add_argument("--inductor-mode", default="default", help="torch.compile mode for inductor")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    from trt_multidev_backend.engine import _tensorrt

    trt = _tensorrt()  # tensorrt, or TensorRT-RTX under its own name

    dev = torch.device("cuda", 0)
    case = real_models.MODELS[args.model](dev)
    graphs: list[Any] = []

    def capture(gm, example_inputs, **kwargs):
        fn = tm.backend(gm, example_inputs, **kwargs)
        graphs.append(fn)
        return fn

    options = {"cache": False, **json.loads(args.options)}
    compiled = torch.compile(case.module, backend=capture, options=options)
    with torch.no_grad():
        compiled(*case.inputs)
        latency = gpu_bench.median_latency_ms(lambda: compiled(*case.inputs), 30, warmup=10)
    runners = [dynamic_of(getattr(g, "fn", None)) for g in graphs]
    runners = [getattr(r, "fn", r) for r in runners]  # a CudaGraphs wrapper holds the runner as .fn
    engines = [m for r in runners if hasattr(r, "modules") for m in r.modules()
               if type(m).__name__ == "TensorRTEngine"]
    print(f"{args.model}: {len(engines)} engine(s) in the runner, median {latency:.3f} ms per call", flush=True)

    class Profiler(trt.IProfiler):
        def __init__(self) -> None:
            super().__init__()
            self.ms: collections.Counter = collections.Counter()
            self.calls: collections.Counter = collections.Counter()

        def report_layer_time(self, layer_name: str, ms: float) -> None:
            self.ms[layer_name] += ms
            self.calls[layer_name] += 1

    result: dict[str, Any] = {"env": gpu_bench.environment(), "model": args.model, "median_ms": latency,
                              "options": options, "engines": []}
    # before any IProfiler is attached (TensorRT-RTX refuses to detach one)
    result["trt_multidev_kernels"] = cuda_kernels("trt_multidev", lambda: compiled(*case.inputs), latency,
                                                  args.iters, args.top)
    for number, engine in enumerate(engines):
        profiler = Profiler()
        engine._context.profiler = profiler
        with torch.no_grad():
            for _ in range(args.iters):
                compiled(*case.inputs)
            torch.cuda.synchronize()
        per_call = {name: ms / args.iters for name, ms in profiler.ms.items()}
        total = sum(per_call.values())
        layers: dict[str, Any] = {}
        try:
            inspector = engine._engine.create_engine_inspector()
            info = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
            for layer in info.get("Layers", []):
                if isinstance(layer, dict):
                    layers[layer.get("Name", "?")] = {k: layer[k] for k in ("LayerType", "Metadata", "TacticName")
                                                      if k in layer}
                else:
                    layers[str(layer)] = {}
        except Exception as exc:  # noqa: BLE001 - the inspector is optional
            layers = {"error": f"{type(exc).__name__}: {exc}"}
        top = sorted(per_call.items(), key=lambda item: -item[1])[:args.top]
        print(f"engine {number} ({engine.name}): {len(per_call)} profiled layers, {total:.3f} ms per call "
              f"in layers; inspector lists {len(layers)}", flush=True)
        for name, ms in top:
            print(f"  {ms:8.4f} ms  {100 * ms / max(total, 1e-9):5.1f} %  {name[:160]}  "
                  f"{json.dumps(layers.get(name, {}))[:160]}", flush=True)
        result["engines"].append({"name": engine.name, "layer_ms_per_call": dict(top), "total_ms": total,
                                  "layers_profiled": len(per_call), "inspector": layers})
        try:
            engine._context.profiler = None
        except Exception:  # noqa: BLE001 - some bindings refuse None; the probe ends here anyway
            pass
    if args.inductor:
        torch._dynamo.reset()
        inductor = torch.compile(case.module, mode=args.inductor_mode)
        with torch.no_grad():
            inductor(*case.inputs)
            ind_latency = gpu_bench.median_latency_ms(lambda: inductor(*case.inputs), 30, warmup=10)
        result["inductor"] = cuda_kernels(f"inductor ({args.inductor_mode})", lambda: inductor(*case.inputs), ind_latency,
                                          args.iters, args.top)
    with open(os.path.join(args.out, "engine_profile.json"), "w") as f:
        json.dump(result, f, indent=1, default=str)
    return 0


def cuda_kernels(label: str, call: Any, latency: float, iters: int, top: int) -> dict[str, Any]:
    """The CUDA kernels of `iters` calls of `call`, by time per call (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad():
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(iters):
                call()
            torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_time_total > 0]
    kernels = sorted(((e.key, e.device_time_total / 1e3 / iters) for e in events), key=lambda item: -item[1])
    launches = sum(e.count for e in events) / iters
    total = sum(ms for _, ms in kernels)
    print(f"{label}: median {latency:.3f} ms per call, {total:.3f} ms per call in {len(kernels)} kernels "
          f"({launches:.0f} launches per call)", flush=True)
    for name, ms in kernels[:top]:
        print(f"  {ms:8.4f} ms  {100 * ms / max(total, 1e-9):5.1f} %  {name[:160]}", flush=True)
    return {"median_ms": latency, "total_ms": total, "launches_per_call": launches,
            "kernel_ms_per_call": dict(kernels[:top])}


if __name__ == "__main__":
    sys.exit(main())
