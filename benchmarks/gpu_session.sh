#!/usr/bin/env bash
# Runs ON the lent GPU machine, after ../shared/gpu's device_setup.sh (source /tmp/trt_env.sh first).
#   bash benchmarks/gpu_session.sh tests      # tests/gpu + the catalog, both backends
#   bash benchmarks/gpu_session.sh bench      # benchmarks/gpu_bench.py + wrapper overhead
#   bash benchmarks/gpu_session.sh cache      # benchmarks/cache_bench.py (fresh processes)
# Logs and results go to $OUT (they come back to the developer's machine).
set -uo pipefail
phase=${1:?tests, bench, cache, resnet-fp32 or all}
out=${OUT:-/tmp/out}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export TRT_MULTIDEV_CACHE_DIR=${TRT_MULTIDEV_CACHE_DIR:-$(mktemp -d /tmp/trt_multidev_cache.XXXX)}
[ -d .whl ] && python3 -m pip install -q --no-index --no-deps .whl/*.whl >/dev/null 2>&1
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >/dev/null 2>&1 \
  && echo "installed trt-multidev-backend (entry point available)" \
  || echo "pip install -e failed; using PYTHONPATH and trt_multidev_backend.register()"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, torchvision, torch_tensorrt; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'torch_tensorrt', torch_tensorrt.__version__)"
case "$phase" in
  all)
    bash "$0" tests; bash "$0" bench; exit 0
    ;;
  cache)
    # Three runs per row take ~5 min per model: one model per device call, e.g.
    # CACHE_MODELS=attention_fp16_b16 bash benchmarks/gpu_session.sh cache
    timeout 560 python3 benchmarks/cache_bench.py --out "$out/cache" --models "${CACHE_MODELS:-resnet50_fp16_b32}" \
      --repeats "${CACHE_REPEATS:-3}" 2>&1 | tee "$out/cache.log" | grep -v "^{" | tail -25
    ;;
  resnet-fp32)
    timeout 300 python3 benchmarks/gpu_bench.py --out "$out/resnet-fp32" --models resnet50_fp32_b32 \
      --backends torch_tensorrt,trt_multidev 2>&1 | tee "$out/resnet-fp32.log" | grep "^|" | tail -12
    ;;
  tests)
    timeout 120 python3 -m pytest tests/gpu/test_gpu_cache.py -x -q -p no:cacheprovider 2>&1 | tee "$out/gpu_cache_first.log" | grep -E "passed|failed|Error|Traceback|^E " | head -20
    timeout 330 python3 -m pytest tests/gpu -v -rA -p no:cacheprovider 2>&1 | tee "$out/gpu_tests.log" | grep -E "PASSED|FAILED|SKIPPED|ERROR|passed|failed|Error" | tail -40
    mkdir -p "$out/catalog"
    for b in trt_multidev torch_tensorrt; do
      timeout 150 python3 benchmarks/catalog.py run --backend "$b" --out "$out/catalog" 2>&1 | tee "$out/catalog/$b.log" | grep -E "PASS|FAIL"
    done
    python3 benchmarks/catalog.py table --out "$out/catalog" >/dev/null
    ;;
  bench)
    python3 benchmarks/wrapper_overhead.py 2>&1 | tee "$out/wrapper_overhead.txt"
    timeout 480 python3 benchmarks/gpu_bench.py --out "$out/bench" ${BENCH_ARGS:-} 2>&1 | tee "$out/bench.log" | grep -v "^{" | tail -30
    ;;
esac
