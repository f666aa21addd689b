"""trt_multidev's engine runner against Torch-TensorRT's C++ engine module, on the same engine.

    python benchmarks/engine_overhead.py [--rounds 5] [--out FILE.json]

For each model, one engine is built through trt_multidev (so it is a `TensorRTEngine`), and a
Torch-TensorRT `TorchTensorRTModule` is made from the same serialized engine. Both are called with
the same inputs, in interleaved rounds:
  host µs/call   calls enqueued back to back, one synchronize at the end (tiny MLP: GPU time is small,
                 so this is what each runtime costs on the CPU per call)
  latency ms     one call then synchronize, median (ResNet-50: 268 inputs, weights included)
Ratios are runner / C++ module from this run only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)


def engines_for(model, x):
    import torch

    import trt_multidev_backend as tm
    from trt_multidev_backend.specialize import dynamic_of

    graphs = []

    def capture(gm, example_inputs, **kwargs):
        fn = tm.backend(gm, example_inputs, **kwargs)
        graphs.append(fn)
        return fn

    with torch.no_grad():
        torch.compile(model, backend=capture, options={"min_block_size": 1, "cache": False})(x)
    runner = max((m for g in graphs for m in dynamic_of(g.fn).modules() if type(m).__name__ == "TensorRTEngine"),
                 key=lambda m: len(m.input_names))
    from torch_tensorrt._Device import Device
    from torch_tensorrt.dynamo import CompilationSettings
    from torch_tensorrt.dynamo.runtime import TorchTensorRTModule

    cpp = TorchTensorRTModule(runner.serialized_engine, runner.input_names, runner.output_names, name="cpp",
                              settings=CompilationSettings(device=Device(gpu_id=runner.device.index)))
    cpp.set_output_tensors_as_unowned(True)  # as trt_multidev sets every engine
    # Uniform [0, 1): weights too (a negative batch-norm variance would make NaN outputs).
    args = [torch.rand(s, device=runner.device).to(d) for s, d in runner._inputs]
    return runner, cpp, args


def host_us(fn, args, calls=2000):
    import torch

    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn(*args)
    host = time.perf_counter() - start
    torch.cuda.synchronize()
    return host / calls * 1e6


def latency_ms(fn, args, calls=200):
    import torch

    times = []
    for _ in range(calls):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn(*args)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out")
    args = parser.parse_args()
    import torch

    import gpu_bench

    results = {"environment": gpu_bench.environment(), "rows": []}
    plan = [("tiny_mlp_b1", host_us, "host µs/call"), ("resnet50_fp16_b32", latency_ms, "latency ms")]
    for name, measure, unit in plan:
        make, shape, dtype = gpu_bench.MODELS[name]
        model = make().eval().cuda().to(dtype)
        runner, cpp, inputs = engines_for(model, torch.randn(*shape, device="cuda").to(dtype))
        with torch.no_grad():
            a, b = runner(*inputs), cpp(*inputs)
            same = all(torch.allclose(p, q, rtol=0, atol=0, equal_nan=True) for p, q in zip(a if isinstance(a, tuple) else (a,),
                                                          b if isinstance(b, tuple) else (b,)))
            for fn in (runner, cpp):  # warm-up
                measure(fn, inputs)
            per = {"runner": [], "cpp": []}
            for _ in range(args.rounds):
                per["runner"].append(measure(runner, inputs))
                per["cpp"].append(measure(cpp, inputs))
        row = {"model": name, "unit": unit, "inputs": len(inputs), "outputs_equal": same,
               "runner": statistics.median(per["runner"]), "cpp": statistics.median(per["cpp"]), "rounds": per}
        row["ratio"] = row["runner"] / row["cpp"]
        results["rows"].append(row)
        print(f"| {name} | {len(inputs)} inputs | {unit} | runner {row['runner']:.3f} | "
              f"Torch-TensorRT C++ {row['cpp']:.3f} | ratio {row['ratio']:.3f} | outputs equal {same} |", flush=True)
    print("Stamp: " + ", ".join(f"{k} {v}" for k, v in results["environment"].items()))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
