#!/usr/bin/env bash
# The several-GPU run (nvidia-h200-x2 or -x4), after ../shared/gpu's device_setup.sh (source /tmp/trt_env.sh first).
#   bash benchmarks/multi_gpu_session.sh tests    # all of tests/gpu in one process, then under CUDA_VISIBLE_DEVICES=1
#   bash benchmarks/multi_gpu_session.sh soak     # benchmarks/multi_gpu_soak.py, 300 steps on every GPU
#   bash benchmarks/multi_gpu_session.sh bench    # N-GPU replicas/compile/latency, then the pipelined models
#   MULTI_GPU_DRY_RUN=1 bash benchmarks/multi_gpu_session.sh tests   # script check on one GPU
# Each phase fits one device call (< 10 min). NVLink multicast stays off, as those machines require.
set -uo pipefail
phase=${1:?tests, soak or bench}
out=${OUT:-/tmp/out}
mkdir -p "$out"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export TRT_MULTIDEV_CACHE_DIR=${TRT_MULTIDEV_CACHE_DIR:-$(mktemp -d /tmp/trt_multidev_cache.XXXX)}
[ -d .whl ] && python3 -m pip install -q --no-index --no-deps .whl/*.whl >/dev/null 2>&1
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >/dev/null 2>&1
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader
gpus=$(nvidia-smi -L | wc -l)
case "$phase" in
  tests)
    timeout 330 python3 -m pytest tests/gpu -v -rA -p no:cacheprovider 2>&1 | grep -v "logger passed into" \
      | tee "$out/gpu_tests_x$gpus.log" | grep -E "FAILED|ERROR|passed|failed" | tail -20
    if [ "${MULTI_GPU_DRY_RUN:-0}" != 1 ]; then
      CUDA_VISIBLE_DEVICES=1 timeout 200 python3 -m pytest tests/gpu -q -p no:cacheprovider 2>&1 \
        | grep -v "logger passed into" | tee "$out/gpu_tests_visible_1.log" | grep -E "passed|failed" | tail -3
    fi
    ;;
  soak)
    timeout 560 python3 benchmarks/multi_gpu_soak.py --out "$out" --steps "${SOAK_STEPS:-300}" --seed "${SOAK_SEED:-0}" 2>&1 \
      | grep -v "logger passed into" | tee "$out/multi_gpu_soak.log" | grep -E "^step|^\{" | tail -16
    ;;
  bench)
    timeout 330 python3 benchmarks/multi_gpu_bench.py --out "$out" ${MGPU_ARGS:-} 2>&1 | tee "$out/multi_gpu_bench.log" | tail -3
    timeout 240 python3 benchmarks/pipeline_bench.py --out "$out" 2>&1 | grep -v "logger passed into" \
      | tee "$out/pipeline_bench.log" | grep -E "^(two_stage|transformer)" | tail -4
    ;;
esac
