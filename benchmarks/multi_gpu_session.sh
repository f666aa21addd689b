#!/usr/bin/env bash
# The two-GPU run (nvidia-h200-x2), after ../shared/gpu's device_setup.sh (source /tmp/trt_env.sh first).
#   bash benchmarks/multi_gpu_session.sh            # on two GPUs
#   MULTI_GPU_DRY_RUN=1 bash benchmarks/multi_gpu_session.sh   # script check on one GPU
# NVLink multicast stays off, as that machine requires.
set -uo pipefail
out=${OUT:-/tmp/out}
mkdir -p "$out"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export TRT_MULTIDEV_CACHE_DIR=${TRT_MULTIDEV_CACHE_DIR:-$(mktemp -d /tmp/trt_multidev_cache.XXXX)}
[ -d .whl ] && python3 -m pip install -q --no-index --no-deps .whl/*.whl >/dev/null 2>&1
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >/dev/null 2>&1
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader
timeout 400 python3 -m pytest tests/gpu/test_multi_gpu.py -v -rA -p no:cacheprovider 2>&1 | tee "$out/multi_gpu_tests.log" \
  | grep -E "PASSED|FAILED|SKIPPED|ERROR|passed|failed" | tail -20
if [ "${MULTI_GPU_DRY_RUN:-0}" != 1 ]; then
  CUDA_VISIBLE_DEVICES=1 timeout 400 python3 -m pytest tests/gpu -q -p no:cacheprovider 2>&1 \
    | tee "$out/one_visible_gpu_tests.log" | grep -E "passed|failed" | tail -3
fi
timeout 600 python3 benchmarks/multi_gpu_bench.py --out "$out/multi_gpu" ${MGPU_ARGS:-} 2>&1 | tee "$out/multi_gpu_bench.log" | tail -4
