#!/usr/bin/env bash
# One device call on a one-GPU machine (nvidia-h200), after ../shared/gpu's device_setup.sh
# (source /tmp/trt_env.sh first): what session 4 left unrun, in order of need.
#   bash benchmarks/single_gpu_session.sh     # results under $OUT (default /tmp/out)
# 1. all of tests/gpu in one process (new: test_cuda_graphs.py's stats check, the kernel-growth test)
# 2. real_models.py gpt2,llama with generate(): decode graphs after the size-argument rewrite
# 3. small_batch.py: the rows of trt_multidev's own layers (host cost per replay)
set -uo pipefail
out=${OUT:-/tmp/out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export TRT_MULTIDEV_CACHE_DIR=${TRT_MULTIDEV_CACHE_DIR:-$(mktemp -d /tmp/trt_multidev_cache.XXXX)}
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >/dev/null 2>&1
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader
timeout 170 python3 -m pytest tests/gpu -q -rfEx -p no:cacheprovider 2>&1 | grep -v "logger passed into" \
  | tee "$out/gpu_tests.log" | grep -E "FAILED|ERROR|passed|failed" | tail -12
timeout 200 python3 benchmarks/real_models.py --out "$out" --models gpt2,llama --backends eager,trt_multidev,inductor \
  --iters 30 2>&1 | grep -v "logger passed into" | tee "$out/real_models.log" | tail -12
timeout 170 python3 benchmarks/small_batch.py --out "$out" 2>&1 | grep -E "^(tiny|resnet).*(host_us|median_ms) [0-9]" \
  | tee "$out/small_batch.log"
