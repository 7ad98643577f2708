#!/usr/bin/env bash
# `make bench-gpu`: the presets bench on the GPU, once with ONNX Runtime's CUDA provider and once
# with TensorRT (fp16, engines cached), printing the bench's own table for each.
#
# Where no GPU, no GPU build of ONNX Runtime or no CUDA libraries are found it says what is
# missing and how to install it, and exits 0. It exits 1 when a run fails or when the model
# fell back to the CPU (the table would not be a GPU measurement).
#
# Where things are looked for (first found wins):
#   ONNX Runtime GPU  ORT_GPU_DIR; $BUNDLE/onnxruntime-gpu; onnxruntime/capi in GPU_VENV
#                     (.deps/venv-gpu, see docs/gpu.md): libonnxruntime.so.* beside
#                     libonnxruntime_providers_cuda.so (and _tensorrt.so for TensorRT)
#   CUDA, cuDNN, TensorRT libraries  CUDA_LIB_DIRS (colon list); $BUNDLE/cuda-libs; the NVIDIA
#                     wheels in GPU_VENV (nvidia/*/lib, tensorrt_libs); the system (ldconfig)
#   bench executable  $BUNDLE/bin/bench; else built with cargo (the bench named below)
# Settings: BUNDLE (an unpacked scripts/gpu-bundle.sh folder: everything is taken from it),
# BENCH_DEVICES [cuda tensorrt], TRT_ENGINE_CACHE (TensorRT engines and timing cache; kept
# between runs so that only the first run builds) [out/bench-gpu/trt-engines], BENCH_OUT (logs,
# the bench's JSON) [out/bench-gpu], BENCH_FP16 [1]; BENCH_PRESETS, BENCH_FRAMES, BENCH_MODEL
# and the other BENCH_* settings go to the bench unchanged.
#   scripts/bench-gpu.sh --bench-exe   builds the bench and prints its executable's path
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# The bench that is run: the presets table (benches/presets.rs), as `make bench` prints it on CPU.
BENCH_NAME=presets
ORT_GPU_VERSION=1.31.1
TRT_VERSION=10.16.1.11
GPU_VENV=${GPU_VENV:-$REPO/.deps/venv-gpu}
OUT=$(realpath -m "${BENCH_OUT:-$REPO/out/bench-gpu}")
CACHE=$(realpath -m "${TRT_ENGINE_CACHE:-$OUT/trt-engines}")

# Builds the bench (release profile) and prints its executable.
bench_exe() {
    (cd "$REPO" && cargo bench --locked --no-run --bench "$BENCH_NAME" --message-format=json) |
        python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == sys.argv[1] and m.get("executable"):
        print(m["executable"])' "$BENCH_NAME" | tail -n 1 | grep .
}
if [[ ${1:-} == --bench-exe ]]; then
    bench_exe
    exit
fi

site_packages() { compgen -G "$GPU_VENV/lib/python3*/site-packages" | head -n1; }

# The folder with the GPU build of ONNX Runtime, or nothing.
find_ort() {
    local d sp
    sp=$(site_packages)
    for d in ${ORT_GPU_DIR:-} ${BUNDLE:+$BUNDLE/onnxruntime-gpu} ${sp:+$sp/onnxruntime/capi}; do
        if [[ -f $d/libonnxruntime_providers_cuda.so ]] && compgen -G "$d/libonnxruntime.so.*" >/dev/null; then
            echo "$d"
            return
        fi
    done
}

# The folders where CUDA, cuDNN and TensorRT libraries may be, as a colon list.
cuda_dirs() {
    local dirs=() sp d
    [[ -n ${CUDA_LIB_DIRS:-} ]] && dirs+=("$CUDA_LIB_DIRS")
    [[ -n ${BUNDLE:-} && -d $BUNDLE/cuda-libs ]] && dirs+=("$BUNDLE/cuda-libs")
    sp=$(site_packages)
    if [[ -n $sp ]]; then
        for d in "$sp"/nvidia/*/lib "$sp"/tensorrt_libs; do [[ -d $d ]] && dirs+=("$d"); done
    fi
    local IFS=:
    echo "${dirs[*]}"
}

# unresolved LIBPATH FILE: the libraries FILE needs that the loader does not find.
unresolved() {
    LD_LIBRARY_PATH=$1${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} ldd "$2" 2>/dev/null |
        awk '$3 == "not" { print $1 }' | sort -u | tr '\n' ' '
}

# findable LIBPATH SONAME: whether the loader would find a library that is opened at run time.
findable() {
    local d IFS=:
    for d in $1 ${LD_LIBRARY_PATH:-}; do [[ -n $d && -e $d/$2 ]] && return 0; done
    ldconfig -p 2>/dev/null | grep -q " $2 "
}

missing=()
gpu=""
if command -v nvidia-smi >/dev/null && gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total \
    --format=csv,noheader 2>/dev/null) && [[ -n $gpu ]]; then
    :
elif findable "" libcuda.so.1; then
    gpu="(nvidia-smi not found; libcuda.so.1 present)"
else
    gpu=""
    missing+=("an NVIDIA GPU and its driver: neither nvidia-smi nor libcuda.so.1 was found.
      Install the NVIDIA driver (r580 or newer for CUDA 13) on a machine with an NVIDIA GPU")
fi

ort=$(find_ort)
libpath=$(cuda_dirs)
trt=0
if [[ -z $ort ]]; then
    missing+=("the GPU build of ONNX Runtime (libonnxruntime.so.* beside libonnxruntime_providers_cuda.so).
      Online:  python3 -m venv .deps/venv-gpu && .deps/venv-gpu/bin/pip install \\
                 'onnxruntime-gpu[cuda,cudnn]==$ORT_GPU_VERSION' tensorrt-cu13-libs==$TRT_VERSION
      Offline: scripts/gpu-bundle.sh pack DIR on a machine with PyPI access, copy DIR, then
               scripts/gpu-bundle.sh unpack DIR && BUNDLE=DIR make bench-gpu
      Or set ORT_GPU_DIR to a folder holding those libraries")
else
    need=$(unresolved "$libpath" "$ort/libonnxruntime_providers_cuda.so")
    # libcuda.so.1 is the driver, reported above; cuDNN is opened at run time.
    need=${need//libcuda.so.1 /}
    findable "$libpath" libcudnn.so.9 || need+="libcudnn.so.9 "
    if [[ -n $need ]]; then
        missing+=("CUDA libraries for $ort/libonnxruntime_providers_cuda.so: ${need% }.
      Online:  .deps/venv-gpu/bin/pip install 'onnxruntime-gpu[cuda,cudnn]==$ORT_GPU_VERSION'
               (the NVIDIA CUDA 13 wheels: nvidia-cuda-runtime, nvidia-cublas, nvidia-curand,
               nvidia-cufft, nvidia-cuda-nvrtc, nvidia-cudnn-cu13)
      Or a CUDA 13 toolkit and cuDNN 9 on the system, or CUDA_LIB_DIRS naming their folders,
      or a bundle packed with GPU_BUNDLE_CUDA_WHEELS")
    fi
    if [[ -f $ort/libonnxruntime_providers_tensorrt.so ]] &&
        [[ -z $(unresolved "$libpath" "$ort/libonnxruntime_providers_tensorrt.so") ]]; then
        trt=1
    fi
fi

echo "bench-gpu: GPU: ${gpu:-none}"
echo "bench-gpu: ONNX Runtime GPU build: ${ort:-not found}"
if ((${#missing[@]} > 0)); then
    echo "bench-gpu: no GPU run on this machine. Missing:"
    for m in "${missing[@]}"; do echo "  - $m"; done
    echo "bench-gpu: see docs/gpu.md. Nothing was measured; exiting 0."
    exit 0
fi

devices=${BENCH_DEVICES:-cuda tensorrt}
if [[ $devices == *tensorrt* && $trt == 0 ]]; then
    echo "bench-gpu: TensorRT skipped: $ort/libonnxruntime_providers_tensorrt.so lacks" \
        "$(unresolved "$libpath" "$ort/libonnxruntime_providers_tensorrt.so")." \
        "Install tensorrt-cu13-libs==$TRT_VERSION into .deps/venv-gpu (or TensorRT 10 on the system)."
    devices=${devices//tensorrt/}
fi

# What the bench runs with: the bundle's executable, data and GStreamer, or this checkout's.
runenv=(ORT_DYLIB_PATH="$(compgen -G "$ort/libonnxruntime.so.*" | head -n1)")
if [[ -n ${BUNDLE:-} ]]; then
    exe=$BUNDLE/bin/bench
    runenv+=(LOGSAD_DATA_DIR="$BUNDLE/data")
    if [[ -d $BUNDLE/gst/lib ]]; then
        libpath=$BUNDLE/gst/lib${libpath:+:$libpath}
        runenv+=(GST_PLUGIN_SYSTEM_PATH_1_0="$BUNDLE/gst/plugins" GST_PLUGIN_PATH_1_0=""
            GST_REGISTRY_1_0="$OUT/gst-registry.bin" GST_REGISTRY_FORK=no)
    fi
else
    echo "bench-gpu: building the $BENCH_NAME bench"
    exe=$(bench_exe) || {
        echo "bench-gpu: cannot build the $BENCH_NAME bench" >&2
        exit 1
    }
fi
runenv+=(LD_LIBRARY_PATH="$ort${libpath:+:$libpath}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    BENCH_ENGINE_CACHE="$CACHE" BENCH_FP16="${BENCH_FP16:-1}")
mkdir -p "$OUT" "$CACHE"

status=0
for device in $devices; do
    log=$OUT/$device.log
    echo
    echo "== bench-gpu: $BENCH_NAME, BENCH_DEVICE=$device, GPU $gpu =="
    if [[ $device == tensorrt ]]; then
        engines=$(compgen -G "$CACHE/*.engine" | wc -l)
        if ((engines > 0)); then
            echo "TensorRT fp16=${BENCH_FP16:-1}: $engines cached engine(s) in $CACHE are reused"
        else
            echo "TensorRT fp16=${BENCH_FP16:-1}: no engine in $CACHE yet: this run builds them" \
                "(minutes, during the bench's warm-up, outside the timed frames)"
        fi
    fi
    env "${runenv[@]}" BENCH_DEVICE="$device" CARGO_TARGET_DIR="$OUT/$device" "$exe" --bench 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    if ((rc != 0)); then
        echo "bench-gpu: FAILED: the $device run exited with $rc (log: $log)"
        status=1
    elif grep -q "is not available" "$log"; then
        echo "bench-gpu: FAILED: a provider fell back (warnings above); these rows are not $device" \
            "measurements (log: $log)"
        status=1
    fi
done
echo "bench-gpu: logs and JSON in $OUT; TensorRT engines in $CACHE"
exit $status
