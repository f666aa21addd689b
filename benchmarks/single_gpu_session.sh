#!/usr/bin/env bash
# The one-GPU run (nvidia-h200), after ../shared/gpu's device_setup.sh (source /tmp/trt_env.sh first).
#   bash benchmarks/single_gpu_session.sh tests      # all of tests/gpu in one process (373 s on an H100, 2026-12-05)
#   bash benchmarks/single_gpu_session.sh decoders   # real_models.py gpt2,llama with generate()
#   bash benchmarks/single_gpu_session.sh encoders   # real_models.py bert,t5 (the search in pieces)
#   bash benchmarks/single_gpu_session.sh vision     # real_models.py vit_s16,convnext_t,resnet50,mobilenetv3_l
#   bash benchmarks/single_gpu_session.sh kernels    # kernel_cache_probe.py --two-processes
#   bash benchmarks/single_gpu_session.sh attention  # attention_probe.py: which attention forms TensorRT builds
#   bash benchmarks/single_gpu_session.sh probes     # T5's attention forms (default kernel) and dynamic=True's failure
#   bash benchmarks/single_gpu_session.sh llama mobilenet t5 t5_decomposed   # one model each (attention decomposed)
#   bash benchmarks/single_gpu_session.sh llama_no_tf32   # Llama with Torch-TensorRT's disable_tf32
#   bash benchmarks/single_gpu_session.sh dynamic_true   # the dynamic=True catalog scenario alone
#   bash benchmarks/single_gpu_session.sh llama_decomposed   # Llama with attention decomposed (its error's source?)
#   bash benchmarks/single_gpu_session.sh shapes   # dynamic_shapes.py: automatic, bounded (mark_dynamic), dynamic=True, static
#   bash benchmarks/single_gpu_session.sh precision   # GPT-2 with one op family at a time left to PyTorch, ResNet-50
#                                                     # with batch norm folded in fp32 (where TensorRT's fp16 error comes from)
#   bash benchmarks/single_gpu_session.sh convnext   # ConvNeXt-T, and with optimization_level 5
#   bash benchmarks/single_gpu_session.sh convnext_ops   # ConvNeXt-T with layer norm, GELU or convolutions left to PyTorch
#   bash benchmarks/single_gpu_session.sh precision_short   # GPT-2 with layer norm in PyTorch; ResNet-50 bn folded
#   bash benchmarks/single_gpu_session.sh static_graphs   # the same with cuda_graphs (static engines captured)
#   bash benchmarks/single_gpu_session.sh profile   # engine_profile_probe.py: ConvNeXt-T's engine, layer by layer
#   bash benchmarks/single_gpu_session.sh kernels_b1   # the same for ResNet-18 b1: GPU time per call against inductor's
#   bash benchmarks/single_gpu_session.sh llama_precision   # Llama with one op family at a time left to PyTorch
#   bash benchmarks/single_gpu_session.sh llama_parts   # llama_parts_probe.py: Llama's fp16 error part by part
#   bash benchmarks/single_gpu_session.sh fp32_acc   # GPT-2 and Llama with fp32_accumulation and without
#   bash benchmarks/single_gpu_session.sh static_shapes   # dynamic_shapes.py: static engines for recurring batches or not
#   bash benchmarks/single_gpu_session.sh families   # real_models.py qwen2,qwen3,mistral,gemma,gemma2,phi3 (no generate())
#   bash benchmarks/single_gpu_session.sh families_generate   # generate() for qwen2, mistral and gemma2
#   bash benchmarks/single_gpu_session.sh slices   # slice bounds beyond a dimension: torch_tensorrt and trt_multidev
#   bash benchmarks/single_gpu_session.sh decode_probe   # decode_graph_probe.py: mistral, gemma2, qwen2; qwen2 and
#                                                        # gemma2 again with unread number arguments kept (an A/B)
#   bash benchmarks/single_gpu_session.sh static_cache   # generate() with the static KV cache: gpt2, llama, against
#                                                        # inductor and transformers' own compilation (hf_compile)
#   bash benchmarks/single_gpu_session.sh static_cache_graphs   # the same with trt_multidev's CUDA graphs on
#   bash benchmarks/single_gpu_session.sh generate_profile   # generate_profile.py gpt2: host and kernel time per token
#   bash benchmarks/single_gpu_session.sh bind   # bind_probe.py gpt2,llama: the engine runner's pieces per decode step
#   bash benchmarks/single_gpu_session.sh tests decoders   # several phases in one call (about 6 min)
# Results under $OUT (default /tmp/out). One device call runs at most 10 minutes: about 7 min for
# tests + decoders, 5 min for encoders + attention + kernels, 7 min for vision.
set -uo pipefail
out=${OUT:-/tmp/out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export TRT_MULTIDEV_CACHE_DIR=${TRT_MULTIDEV_CACHE_DIR:-$(mktemp -d /tmp/trt_multidev_cache.XXXX)}
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >/dev/null 2>&1
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader
PHASES="bind static_cache static_cache_graphs generate_profile families families_generate slices decode_probe llama_parts fp32_acc profile kernels_b1 llama_precision static_shapes static_graphs convnext_ops precision_short tests decoders encoders vision kernels attention probes llama llama_no_tf32 llama_decomposed mobilenet t5 t5_decomposed dynamic_true masks shapes precision convnext"
noise='logger passed into|DeprecationWarning|timing_cache|unparsable type|strongly typed|no max bound|warnings.warn|^INFO'

models() {  # name, models, time limit, extra arguments
  mkdir -p "$out/$1"
  timeout "$3" python3 benchmarks/real_models.py --out "$out/$1" --models "$2" \
    --backends eager,trt_multidev,inductor --iters 20 --rounds 2 "${@:4}" 2>&1 | grep -vE "$noise" > "$out/$1/log"
  grep -E "^[a-z0-9_]+ +(eager|trt_multidev|inductor|generate)|in pieces|could not convert|left to PyTorch" "$out/$1/log" \
    | sort -u | cut -c1-400
}

profile() {  # model, layers shown, time limit, extra arguments
  timeout "$3" python3 benchmarks/engine_profile_probe.py --out "$out/profile_$1" --model "$1" --top "$2" --inductor "${@:4}" 2>&1 \
    | grep -vE "$noise" | grep -E "^ |engine|$1|inductor|trt_multidev|Error|error" | cut -c1-330 | head -$((3 * $2 + 15))
}

run() {
  case "$1" in
    tests)
      # -v: each test's name and outcome as it ends, so a run cut by the limit still says which failed
      timeout 470 python3 -m pytest tests/gpu -v --tb=short -rfEx -p no:cacheprovider 2>&1 \
        | grep -v "logger passed into" | tee "$out/gpu_tests.log" | grep -E "FAILED|ERROR|passed|failed" | tail -20 ;;
    decoders) models decoders gpt2,llama 280 --options '{"log_level": "warning"}' ;;  # every graph's build line
    families) models families qwen2,qwen3,mistral,gemma,gemma2,phi3 480 --skip-generate --options '{"log_level": "warning"}' ;;
    static_cache)
      models static_cache gpt2,llama 300 --skip-forward --cache static --backends eager,trt_multidev,inductor,hf_compile \
        --generate-runs 5 --options '{"log_level": "warning"}' ;;
    static_cache_graphs)
      models static_cache_graphs gpt2,llama 300 --skip-forward --cache static --backends eager,trt_multidev,hf_compile \
        --generate-runs 5 --options '{"log_level": "warning", "cuda_graphs": true}' ;;
    generate_profile)
      timeout 300 python3 benchmarks/generate_profile.py --out "$out/generate_profile" --models gpt2 --runs 8 \
        --options '{"log_level": "warning"}' 2>&1 | grep -E "^gpt2 " | cut -c1-400 ;;
    bind)
      timeout 240 python3 benchmarks/bind_probe.py --out "$out/bind" --models gpt2,llama --runs 3 \
        --options '{"log_level": "error"}' 2>&1 | grep -E "^(gpt2|llama) |Error" | cut -c1-1200 ;;
    families_generate)
      models families_generate qwen2,mistral,gemma2 500 --options '{"log_level": "warning"}' ;;
    slices)
      timeout 240 python3 benchmarks/slice_bounds_probe.py --out "$out" 2>&1 | grep "^{" | cut -c1-400 ;;
    decode_probe)  # the decode steps' graphs, with unread number arguments dropped and kept (an A/B)
      PYTHONPATH=$PWD/tests:$PYTHONPATH timeout 200 python3 benchmarks/decode_graph_probe.py --out "$out/decode_probe" \
        --models mistral,gemma2,qwen2 2>&1 | grep -E "^(mistral|gemma2|qwen2) " | cut -c1-300
      # a disk cache of its own: loading the first run's entries would tell nothing about builds
      TRT_MULTIDEV_CACHE_DIR=$(mktemp -d /tmp/trt_multidev_cache.XXXX) PYTHONPATH=$PWD/tests:$PYTHONPATH \
        timeout 200 python3 benchmarks/decode_graph_probe.py --out "$out/decode_probe_kept" \
        --models qwen2,gemma2 --keep-unread-numbers 2>&1 | grep -E "^(gemma2|qwen2) " | cut -c1-300 ;;
    encoders) models encoders bert,t5 200 --skip-generate --options '{"log_level": "warning"}' ;;
    vision) models vision vit_s16,convnext_t,resnet50,mobilenetv3_l 400 ;;
    kernels)
      timeout 60 python3 benchmarks/kernel_cache_probe.py --out "$out" --two-processes 2>&1 | grep "^{" | cut -c1-700 ;;
    attention)
      timeout 300 python3 benchmarks/attention_probe.py --out "$out" --kernels default,no_cudnn 2>&1 | grep "^{" \
        | cut -c1-400 ;;
    probes)
      timeout 150 python3 benchmarks/attention_probe.py --out "$out" --masks t5,head_bias,input_additive,padding \
        --kernels default 2>&1 | grep "^{" | cut -c1-400
      timeout 90 python3 benchmarks/dynamic_true_probe.py --out "$out" 2>&1 | grep "^{" | cut -c1-1500 ;;
    llama) models llama llama 200 --options '{"log_level": "warning"}' ;;
    llama_no_tf32)  # does TF32 in the rotary matmul (fp32, inv_freq @ positions) explain Llama's error?
      models llama_no_tf32 llama 200 --options '{"log_level": "warning", "trt": {"disable_tf32": true}}' ;;
    llama_decomposed)  # is TensorRT's fused attention where Llama's error over inductor's comes from?
      models llama_decomposed llama 200 --skip-generate --options '{"log_level": "warning", "trt": {"decompose_attention": true}}' ;;
    mobilenet) models mobilenet mobilenetv3_l 120 ;;
    precision)  # which TensorRT layers add the fp16 error? (does use_fp32_acc reach TensorRT-RTX at all?)
      python3 -c "import tensorrt as trt; n = trt.Builder(trt.Logger()).create_network(0); \
print('strongly typed flag of a default network:', n.get_flag(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))"
      for ops in native_layer_norm addmm tanh _scaled_dot_product_efficient_attention,_scaled_dot_product_flash_attention,_scaled_dot_product_cudnn_attention; do
        list=$(echo "$ops" | tr ',' '\n' | sed 's/.*/"torch.ops.aten.&.default"/' | paste -sd, -)
        models "precision_${ops%%,*}" gpt2 100 --skip-generate --backends eager,trt_multidev \
          --options "{\"trt\": {\"torch_executed_ops\": [$list]}}"
      done
      models precision_bn_folded resnet50,resnet50_bn_folded 150 --backends eager,trt_multidev ;;
    convnext)  # ConvNeXt-T behind inductor in session 8: does TensorRT's optimization level change it?
      models convnext convnext_t 150
      models convnext_opt5 convnext_t 150 --backends eager,trt_multidev --options '{"optimization_level": 5}' ;;
    profile)  # where ConvNeXt-T's engine spends its time (TensorRT's per-layer profile), and inductor's kernels
      profile convnext_t 25 240 ;;
    kernels_b1)  # ResNet-18 b1 (issue 12: behind inductor's reduce-overhead): GPU time per call, TensorRT's and inductor's
      profile resnet18_b1 15 180 --options '{"cuda_graphs": true}' --inductor-mode reduce-overhead ;;
    llama_precision)  # Llama's fp16 error (2.5x inductor's, its generate() tokens part at step 27): one op family
      # at a time left to PyTorch (rotary sin/cos in fp32, matrix products, RMSNorm's rsqrt/mean, SiLU, attention)
      # (full overload names: Torch-TensorRT matches torch_executed_ops against them after its lowering)
      for family in rotary:sin.default,cos.default matmul:mm.default,bmm.default,addmm.default,linear.default \
          rmsnorm:pow.Tensor_Scalar,mean.dim,rsqrt.default,sqrt.default,reciprocal.default silu:silu.default,sigmoid.default \
          attention:_scaled_dot_product_efficient_attention.default,_scaled_dot_product_flash_attention.default,_scaled_dot_product_cudnn_attention.default; do
        list=$(echo "${family#*:}" | tr ',' '\n' | sed 's/.*/"torch.ops.aten.&"/' | paste -sd, -)
        models "llama_without_${family%%:*}" llama 100 --skip-generate --backends eager,trt_multidev \
          --options "{\"trt\": {\"torch_executed_ops\": [$list]}}"
      done ;;
    llama_parts)  # which part of Llama carries the extra fp16 error (fp32_accumulation left its logits bit-identical)
      timeout 400 python3 benchmarks/llama_parts_probe.py --out "$out" 2>&1 | grep "^{" | cut -c1-600 ;;
    fp32_acc)  # fp32_accumulation against the default on GPT-2 and Llama (error, speed, generate() tokens), one call
      models decoders_default gpt2,llama 200 --backends eager,trt_multidev
      models decoders_fp32_acc gpt2,llama 200 --backends eager,trt_multidev --options '{"fp32_accumulation": true}' ;;
    static_shapes)  # static engines for recurring batches (static_shapes, the default) against the dynamic engine alone
      timeout 420 python3 benchmarks/dynamic_shapes.py --out "$out" --variants eager,eager+nostatic,static,inductor \
        2>&1 | grep -E "step|failed" | cut -c1-220 ;;
    static_graphs)  # the same with CUDA graphs: static engines captured (static_shapes) against dynamic=False's
      timeout 420 python3 benchmarks/dynamic_shapes.py --out "$out" --variants eager+graphs,static+graphs,inductor \
        2>&1 | grep -E "step|failed" | cut -c1-220 ;;
    convnext_ops)  # ConvNeXt-T no faster than eager in TensorRT (session 9): which op family is slow there?
      for ops in native_layer_norm gelu convolution; do
        models "convnext_without_$ops" convnext_t 100 --backends trt_multidev \
          --options "{\"trt\": {\"torch_executed_ops\": [\"torch.ops.aten.$ops.default\"]}}"
      done ;;
    precision_short)  # layer norm in PyTorch on GPT-2; ResNet-50 with batch norm folded in fp32
      models precision_native_layer_norm gpt2 100 --skip-generate --backends eager,trt_multidev \
        --options '{"trt": {"torch_executed_ops": ["torch.ops.aten.native_layer_norm.default"]}}'
      models precision_bn_folded resnet50,resnet50_bn_folded 150 --backends eager,trt_multidev ;;
    shapes)  # does the profile's range matter? (automatic dynamic shapes leave its maximum open)
      timeout 300 python3 benchmarks/dynamic_shapes.py --out "$out" --variants eager,eager+bounded,eager+dynamic,static \
        2>&1 | grep -E "step|failed" | cut -c1-200 ;;
    t5) models t5 t5 200 --skip-generate --options '{"log_level": "warning"}' ;;
    masks)  # what Torch-TensorRT receives for T5's forms and a padding mask, with full tracebacks
      timeout 120 python3 benchmarks/attention_probe.py --out "$out" --masks t5,padding,head_bias --kernels default \
        --debug > "$out/masks_debug.log" 2>&1
      grep -E "^\{|^#|trt_multidev" "$out/masks_debug.log" | cut -c1-300 | head -60
      timeout 90 python3 -m pytest "tests/gpu/test_cuda_graphs.py::test_replays_see_a_mask_prefix_state_change" -q \
        -p no:cacheprovider 2>&1 | tee "$out/mask_cuda_graphs.log" | grep -E "^E |passed|failed" | head -20 ;;
    dynamic_true)  # the dynamic=True catalog scenario (an xfail until session 8)
      timeout 60 python3 -m pytest "tests/gpu/test_gpu_core.py::test_catalog_scenario_matches_eager[dynamic=True]" -q \
        -p no:cacheprovider --runxfail 2>&1 \
        | grep -v "logger passed into" | tee "$out/dynamic_true.log" | grep -E "^E |passed|failed" | head -30 ;;
    t5_decomposed)
      models t5_decomposed t5 200 --skip-generate --options '{"log_level": "warning", "trt": {"decompose_attention": true}}' ;;
    *) echo "unknown phase $1: $PHASES" >&2; return 2 ;;
  esac
}
[ $# -gt 0 ] || { echo "usage: $0 PHASE... ($PHASES)" >&2; exit 2; }
for phase in "$@"; do  # every name checked before anything runs
  case " $PHASES " in *" $phase "*) ;; *) run "$phase"; exit 2 ;; esac
done
for phase in "$@"; do run "$phase"; done
