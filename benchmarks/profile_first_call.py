"""Profile one first call in a fresh process (diagnostics for the disk cache's warm path).

    python benchmarks/profile_first_call.py MODEL CACHE_DIR [N]

Builds or loads through trt_multidev's disk cache at CACHE_DIR and prints the N functions with
the most cumulative time during the first call (dynamo tracing, the backend, loading).
"""

from __future__ import annotations

import cProfile
import os
import pstats
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)


def main() -> int:
    model_name, cache_dir = sys.argv[1], sys.argv[2]
    top = int(sys.argv[3]) if len(sys.argv) > 3 else 40
    import torch
    import torch_tensorrt  # noqa: F401

    import gpu_bench
    import trt_multidev_backend as tm

    os.environ["TRT_MULTIDEV_CACHE_DIR"] = cache_dir
    build, shape, dtype = gpu_bench.MODELS[model_name]
    model = build().eval().cuda().to(dtype)
    x = torch.randn(*shape, device="cuda").to(dtype)
    compiled = torch.compile(model, backend=tm.backend, options={"min_block_size": 1})
    profiler = cProfile.Profile()
    with torch.no_grad():
        start = time.perf_counter()
        profiler.enable()
        compiled(x)
        torch.cuda.synchronize()
        profiler.disable()
    print(f"first call {time.perf_counter() - start:.2f} s; counters {tm.stats()}")
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
