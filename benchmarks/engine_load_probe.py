"""Where a warm start's engine load goes, phase by phase, each in a fresh process.

    python benchmarks/engine_load_probe.py all --out DIR [--model resnet50_fp16_b32]

`build` compiles MODEL through trt_multidev (the same engine the disk cache stores) and saves the
largest engine with its binding names. Each `load` child then times, in a new process, after CUDA
and cuBLAS are initialised: Torch-TensorRT's C++ engine module (what a disk-cache hit does today),
or TensorRT's Python API phase by phase (runtime, deserialize, execution context, first and second
run), without and with TensorRT-RTX's runtime cache (`IRuntimeCache`: JIT-compiled kernels kept
across processes). Prints one JSON line per child.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import pickle
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)


def build(model_name: str, engine_path: str, cache_dir: str) -> None:
    import torch
    import torch_tensorrt  # noqa: F401

    import gpu_bench
    import trt_multidev_backend as tm

    os.environ["TRT_MULTIDEV_CACHE_DIR"] = cache_dir
    make, shape, dtype = gpu_bench.MODELS[model_name]
    model = make().eval().cuda().to(dtype)
    x = torch.randn(*shape, device="cuda").to(dtype)
    with torch.no_grad():
        torch.compile(model, backend=tm.backend, options={"min_block_size": 1})(x)
    engines = [o for o in gc.get_objects() if type(o).__name__ == "TorchTensorRTModule"]
    best = max(engines, key=lambda m: len(m.serialized_engine))
    with open(engine_path, "wb") as f:
        pickle.dump({"engine": bytes(best.serialized_engine), "inputs": list(best.input_binding_names),
                     "outputs": list(best.output_binding_names), "count": len(engines)}, f)
    print(json.dumps({"phase": "build", "engines": len(engines), "bytes": len(best.serialized_engine),
                      "inputs": len(best.input_binding_names)}))


def load(engine_path: str, mode: str, runtime_cache: str) -> None:
    t0 = time.perf_counter()
    import torch

    torch.zeros(1, device="cuda")
    a = torch.randn(64, 64, device="cuda")
    (a @ a).sum().item()  # CUDA context and cuBLAS are not TensorRT's cost
    import torch_tensorrt  # noqa: F401  (makes `tensorrt` resolve to the installed edition)
    import tensorrt as trt

    row: dict = {"phase": "load", "mode": mode, "imports_s": time.perf_counter() - t0}
    with open(engine_path, "rb") as f:
        saved = pickle.load(f)
    t = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        torch.cuda.synchronize()
        now = time.perf_counter()
        row[name] = round(now - t, 4)
        t = now

    if mode == "cpp":
        from torch_tensorrt._Device import Device
        from torch_tensorrt.dynamo import CompilationSettings
        from torch_tensorrt.dynamo.runtime import TorchTensorRTModule

        module = TorchTensorRTModule(saved["engine"], saved["inputs"], saved["outputs"], name="probe",
                                     settings=CompilationSettings(device=Device(gpu_id=0)))
        lap("construct_s")
        engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(saved["engine"])
        args = [_tensor(engine, n) for n in saved["inputs"]]
        t = time.perf_counter()
        module(*args)
        lap("first_run_s")
        module(*args)
        lap("second_run_s")
    else:
        logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(logger)
        lap("runtime_s")
        engine = runtime.deserialize_cuda_engine(saved["engine"])
        lap("deserialize_s")
        cache = None
        if mode == "py":
            context = engine.create_execution_context()
        else:
            config = engine.create_runtime_config()
            cache = config.create_runtime_cache()
            if mode == "py-cache-read":
                with open(runtime_cache, "rb") as f:
                    data = f.read()
                row["cache_bytes"] = len(data)
                row["cache_deserialize_ok"] = bool(cache.deserialize(data))
            row["set_cache_ok"] = bool(config.set_runtime_cache(cache))
            lap("cache_setup_s")
            context = engine.create_execution_context(config)
        lap("context_s")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        tensors = {n: _tensor(engine, n) for n in names}
        for n, v in tensors.items():
            if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT:
                context.set_input_shape(n, tuple(v.shape))
            context.set_tensor_address(n, v.data_ptr())
        stream = torch.cuda.current_stream()
        lap("bind_s")
        context.execute_async_v3(stream.cuda_stream)
        lap("first_run_s")
        context.execute_async_v3(stream.cuda_stream)
        lap("second_run_s")
        second = engine.create_execution_context()
        lap("second_context_s")
        del second
        if mode == "py-cache-write":
            blob = cache.serialize()
            with open(runtime_cache, "wb") as f:
                f.write(memoryview(blob))
            row["cache_bytes"] = os.path.getsize(runtime_cache)
            lap("cache_write_s")
    print(json.dumps(row))


def _tensor(engine, name):
    import torch

    from trt_multidev_backend.engine import _torch_dtype

    shape = tuple(max(int(d), 1) for d in engine.get_tensor_shape(name))
    return torch.zeros(shape, dtype=_torch_dtype(engine.get_tensor_dtype(name)), device="cuda")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["all", "build", "load"])
    parser.add_argument("--out", default="/tmp/engine_probe")
    parser.add_argument("--model", default="resnet50_fp16_b32")
    parser.add_argument("--mode", default="py")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    engine_path = os.path.join(args.out, f"{args.model}.engine.pkl")
    runtime_cache = os.path.join(args.out, f"{args.model}.runtime_cache")
    if args.what == "build":
        build(args.model, engine_path, os.path.join(args.out, "cache"))
    elif args.what == "load":
        load(engine_path, args.mode, runtime_cache)
    else:
        me = [sys.executable, os.path.abspath(__file__)]
        common = ["--out", args.out, "--model", args.model]
        subprocess.run(me + ["build"] + common, check=True)
        for mode in ["cpp", "py", "py-cache-write", "py-cache-read", "py-cache-read", "cpp"]:
            subprocess.run(me + ["load", "--mode", mode] + common, check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
