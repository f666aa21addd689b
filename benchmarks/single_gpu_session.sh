#!/usr/bin/env bash
# One device call on a one-GPU machine (nvidia-h200), after ../shared/gpu's device_setup.sh
# (source /tmp/trt_env.sh first): the GPU checks of the latest changes, in order of need.
#   bash benchmarks/single_gpu_session.sh     # results under $OUT (default /tmp/out)
# 1. all of tests/gpu in one process
# 2. real_models.py gpt2,llama with generate(): attention traced without cuDNN's kernel
# 3. real_models.py bert,t5: builds that fail at execution-context creation, searched by halves
# 4. kernel_cache_probe.py --two-processes: does a warm second process compile kernels again?
set -uo pipefail
out=${OUT:-/tmp/out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export TRT_MULTIDEV_CACHE_DIR=${TRT_MULTIDEV_CACHE_DIR:-$(mktemp -d /tmp/trt_multidev_cache.XXXX)}
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >/dev/null 2>&1
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader
noise='logger passed into|DeprecationWarning|timing_cache|unparsable type|strongly typed|no max bound|warnings.warn|^INFO'
timeout 200 python3 -m pytest tests/gpu -q -rfEx -p no:cacheprovider 2>&1 | grep -v "logger passed into" \
  | tee "$out/gpu_tests.log" | grep -E "FAILED|ERROR|passed|failed" | tail -12
mkdir -p "$out/decoders" "$out/encoders"
timeout 190 python3 benchmarks/real_models.py --out "$out/decoders" --models gpt2,llama \
  --backends eager,trt_multidev,inductor --iters 20 --rounds 2 2>&1 | grep -vE "$noise" > "$out/decoders/log"
grep -E "^(gpt2|llama) " "$out/decoders/log" | sort -u
timeout 130 python3 benchmarks/real_models.py --out "$out/encoders" --models bert,t5 --skip-generate \
  --backends eager,trt_multidev,inductor --iters 20 --rounds 2 2>&1 | grep -vE "$noise" > "$out/encoders/log"
grep -E "^(bert|t5) |in pieces" "$out/encoders/log" | sort -u | cut -c1-600
timeout 60 python3 benchmarks/kernel_cache_probe.py --out "$out" --two-processes 2>&1 | grep "^{" | cut -c1-700
