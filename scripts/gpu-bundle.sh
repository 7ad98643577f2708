#!/usr/bin/env bash
# Moves what `make bench-gpu` needs to a GPU machine that cannot reach a package registry.
#
#   scripts/gpu-bundle.sh pack OUT_DIR      here (registry access): builds the bundle in OUT_DIR
#   scripts/gpu-bundle.sh unpack DIR [DEST] there: checks every chunk, lays the bundle out in
#                                            DEST (default DIR); then `BUNDLE=DEST make bench-gpu`
#
# The bundle (one tar stream, `zstd -19 -T0`, split into chunks of at most 64 MiB):
#   bin/logsad, bin/bench        the release CLI and the prebuilt bench executable (debug info
#                                stripped, symbols kept)
#   gst/plugins/                 the GStreamer plugins the bench pipelines use
#   gst/logsad/libgstlogsad.so   the plugin, for gst-launch-1.0 (GST_PLUGIN_PATH); kept out of
#                                gst/plugins because the bench registers it statically
#   gst/lib/                     the shared libraries those and bin/bench need beyond glibc and
#                                libstdc++, copied from this machine (GStreamer 1.22, GLib, ...)
#   onnxruntime-gpu/             libonnxruntime.so.VERSION (+ libonnxruntime.so), its CUDA,
#                                TensorRT and shared providers, from the PyPI wheel onnxruntime-gpu
#   data/models/dinov2-vits14-224/, data/data/textile/nominal/ (the first GPU_BUNDLE_IMAGES)
#   cuda-libs/                   only with GPU_BUNDLE_CUDA_WHEELS: the .so files of those wheels
#   bundle.json                  what is in it: versions, bench name, git commit, sha256 per file
# Beside the chunks: CHUNKS.sha256 (sha256sum format, one line per chunk, in order) and tools/
# (a zstd executable and the libraries it needs, for a GPU machine without zstd).
#
# Settings (the defaults pack the real thing; tests point them at small stand-ins):
#   GPU_BUNDLE_RELEASE_DIR  folder with logsad and libgstlogsad.so [target/release, built first
#                           with cargo build --release --locked]
#   GPU_BUNDLE_BENCH_EXE    the bench executable [built by cargo: scripts/bench-gpu.sh --bench-exe]
#   GPU_BUNDLE_ORT_DIR      folder with the onnxruntime-gpu libraries [extracted from the wheel,
#                           downloaded with pip into .deps/wheels]
#   GPU_BUNDLE_GST          1: bundle the GStreamer closure, 0: leave it to the GPU machine [1]
#   GPU_BUNDLE_IMAGES       nominal textile images to include [100]
#   GPU_BUNDLE_CUDA_WHEELS  folder of NVIDIA wheels (nvidia-cublas, nvidia-cudnn-cu13, ...,
#                           tensorrt-cu13-libs) whose libraries go into cuda-libs/ [none]
#   GPU_BUNDLE_CHUNK        chunk size for split, at most 64M [64M]
#   ZSTD_LEVEL              [19]
#   LOGSAD_DATA_DIR         where the model and images come from [.deps]
set -euo pipefail
shopt -s extglob # the chunk-name pattern in unpack

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ORT_GPU_VERSION=1.31.1 # the newest onnxruntime-gpu on PyPI; API level 31 = the ort crate's api-31
MAX_CHUNK=$((64 * 1024 * 1024))
STREAM=gpu-bundle.tar.zst
# The GStreamer plugins of the bench pipelines (appsrc, fakesink, queue, videoconvert, tee,
# videotestsrc); libgstlogsad.so comes from the release folder.
GST_PLUGINS=(coreelements app videoconvertscale videotestsrc)
# Libraries every Linux GPU machine has; everything else an executable needs is bundled.
SYSTEM_LIBS='^(linux-vdso|ld-linux|libc|libm|libdl|librt|libpthread|libgcc_s|libstdc\+\+|libresolv|libutil)[.-]'

die() {
    echo "gpu-bundle: $*" >&2
    exit 1
}
usage() {
    sed -n '2,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

# The chunk size in bytes from GPU_BUNDLE_CHUNK (K, M suffixes, powers of 1024).
chunk_bytes() {
    local spec=${GPU_BUNDLE_CHUNK:-64M} n
    n=$(numfmt --from=iec "$spec" 2>/dev/null) || die "GPU_BUNDLE_CHUNK=$spec is not a size (e.g. 64M)"
    ((n > 0 && n <= MAX_CHUNK)) || die "GPU_BUNDLE_CHUNK=$spec: chunks must be 1 byte to 64 MiB"
    echo "$n"
}

# copy_elf SRC DEST: copies SRC; an ELF file loses its debug sections (symbols stay).
copy_elf() {
    if [[ $(head -c 4 "$1" | od -An -c | tr -d ' ') == '177ELF' ]]; then
        objcopy --strip-debug "$1" "$2"
    else
        cp "$1" "$2"
    fi
}

# closure FILE...: the non-system shared libraries the files need, one resolved path per line.
closure() {
    local f
    for f in "$@"; do
        ldd "$f" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// { print $1, $3 }' || true
    done | grep -Ev "$SYSTEM_LIBS" | sort -u | awk '{ print $2 }'
}

# The onnxruntime-gpu libraries: GPU_BUNDLE_ORT_DIR, else extracted from the PyPI wheel.
ort_dir() {
    if [[ -n ${GPU_BUNDLE_ORT_DIR:-} ]]; then
        echo "$GPU_BUNDLE_ORT_DIR"
        return
    fi
    local deps=${LOGSAD_DATA_DIR:-$REPO/.deps} wheel dir
    dir=$deps/onnxruntime-gpu-$ORT_GPU_VERSION
    if [[ ! -e $dir/libonnxruntime_providers_cuda.so ]]; then
        wheel=$(ls "$deps"/wheels/onnxruntime_gpu-"$ORT_GPU_VERSION"-*.whl 2>/dev/null | head -n1 || true)
        if [[ -z $wheel ]]; then
            echo "gpu-bundle: downloading onnxruntime-gpu $ORT_GPU_VERSION (about 250 MB)" >&2
            "$deps/venv/bin/python" -m pip download -q --disable-pip-version-check --no-deps \
                --only-binary=:all: -d "$deps/wheels" "onnxruntime-gpu==$ORT_GPU_VERSION" >&2 ||
                die "cannot download onnxruntime-gpu $ORT_GPU_VERSION (set GPU_BUNDLE_ORT_DIR)"
            wheel=$(ls "$deps"/wheels/onnxruntime_gpu-"$ORT_GPU_VERSION"-*.whl | head -n1)
        fi
        rm -rf "$dir.partial"
        unzip -q -j -o "$wheel" "onnxruntime/capi/libonnxruntime.so.$ORT_GPU_VERSION" \
            'onnxruntime/capi/libonnxruntime_providers_*.so' -d "$dir.partial" >&2
        mv "$dir.partial" "$dir"
    fi
    echo "$dir"
}

pack() {
    local out=$1 chunk release bench ort data start n
    chunk=$(chunk_bytes)
    start=$SECONDS
    release=${GPU_BUNDLE_RELEASE_DIR:-}
    if [[ -z $release ]]; then
        (cd "$REPO" && cargo build --release --locked) >&2 || die "cargo build --release failed"
        release=$REPO/target/release
    fi
    data=${LOGSAD_DATA_DIR:-$REPO/.deps}
    [[ -f $release/logsad && -f $release/libgstlogsad.so ]] ||
        die "$release lacks logsad or libgstlogsad.so: run \`cargo build --release --locked\`"
    bench=${GPU_BUNDLE_BENCH_EXE:-}
    if [[ -z $bench ]]; then
        bench=$("$REPO/scripts/bench-gpu.sh" --bench-exe) || die "cannot build the bench executable"
    fi
    [[ -f $bench ]] || die "bench executable $bench does not exist"
    ort=$(ort_dir)
    local lib
    lib=$(cd "$ort" && ls libonnxruntime.so.* 2>/dev/null | head -n1 || true)
    [[ -n $lib && -f $ort/libonnxruntime_providers_cuda.so && -f $ort/libonnxruntime_providers_shared.so ]] ||
        die "$ort lacks libonnxruntime.so.VERSION, libonnxruntime_providers_cuda.so or _shared.so"
    local model=$data/models/dinov2-vits14-224
    [[ -f $model/manifest.json && -f $model/model.onnx ]] || die "$model is incomplete: run \`make deps\`"

    mkdir -p "$out"
    rm -f "$out/$STREAM".* "$out/CHUNKS.sha256"
    STAGE=$(mktemp -d "${TMPDIR:-/tmp}/gpu-bundle.XXXXXX")
    trap 'rm -rf "$STAGE"' EXIT
    local stage=$STAGE
    mkdir -p "$stage"/{bin,gst/plugins,gst/logsad,gst/lib,onnxruntime-gpu,data/models,data/data/textile/nominal}

    copy_elf "$release/logsad" "$stage/bin/logsad"
    copy_elf "$bench" "$stage/bin/bench"
    copy_elf "$release/libgstlogsad.so" "$stage/gst/logsad/libgstlogsad.so"
    local f
    for f in "$ort"/libonnxruntime.so.* "$ort"/libonnxruntime_providers_*.so; do
        cp "$f" "$stage/onnxruntime-gpu/"
    done
    ln -s "$lib" "$stage/onnxruntime-gpu/libonnxruntime.so"
    cp -r "$model" "$stage/data/models/"
    local images=${GPU_BUNDLE_IMAGES:-100} i
    for ((i = 1; i <= images; i++)); do
        f=$(printf '%s/data/textile/nominal/textile_%04d.jpg' "$data" "$i")
        [[ -f $f ]] || die "$f is missing (GPU_BUNDLE_IMAGES=$images)"
        cp "$f" "$stage/data/data/textile/nominal/"
    done

    if [[ ${GPU_BUNDLE_GST:-1} == 1 ]]; then
        local plugdir plugins=()
        plugdir=$(pkg-config --variable=pluginsdir gstreamer-1.0) || die "pkg-config finds no GStreamer"
        for f in "${GST_PLUGINS[@]}"; do
            [[ -f $plugdir/libgst$f.so ]] || die "GStreamer plugin $plugdir/libgst$f.so is missing"
            cp "$plugdir/libgst$f.so" "$stage/gst/plugins/"
            plugins+=("$plugdir/libgst$f.so")
        done
        for f in $(closure "$bench" "$release/libgstlogsad.so" "${plugins[@]}"); do
            copy_elf "$f" "$stage/gst/lib/$(basename "$f")"
        done
    fi

    if [[ -n ${GPU_BUNDLE_CUDA_WHEELS:-} ]]; then
        mkdir -p "$stage/cuda-libs"
        local wheel
        for wheel in "$GPU_BUNDLE_CUDA_WHEELS"/*.whl; do
            [[ -f $wheel ]] || die "no wheels in GPU_BUNDLE_CUDA_WHEELS=$GPU_BUNDLE_CUDA_WHEELS"
            unzip -q -j -o "$wheel" '*.so*' -x '*/include/*' -d "$stage/cuda-libs"
        done
    fi

    "${PYTHON:-python3}" - "$stage" "$ORT_GPU_VERSION" "$(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)" <<'EOF'
import hashlib, json, os, sys, time
stage, ort, commit = sys.argv[1:4]
files = {}
for root, _, names in os.walk(stage):
    for name in names:
        path = os.path.join(root, name)
        if not os.path.islink(path):
            files[os.path.relpath(path, stage)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
json.dump({"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "git_commit": commit,
           "onnxruntime_gpu": ort, "bench": "bin/bench", "files": dict(sorted(files.items()))},
          open(os.path.join(stage, "bundle.json"), "w"), indent=1)
EOF

    echo "gpu-bundle: compressing $(du -sh --apparent-size "$stage" | cut -f1) with zstd -${ZSTD_LEVEL:-19} -T0" >&2
    tar -C "$stage" -cf - . | zstd -q -"${ZSTD_LEVEL:-19}" -T0 |
        split -b "$chunk" -d -a 3 - "$out/$STREAM."
    (cd "$out" && sha256sum "$STREAM".* >CHUNKS.sha256)

    # zstd for a GPU machine without it: the executable and its libraries beyond glibc.
    mkdir -p "$out/tools"
    cp "$(command -v zstd)" "$out/tools/zstd"
    for f in $(closure "$(command -v zstd)"); do cp -L "$f" "$out/tools/"; done
    (cd "$out" && sha256sum tools/* >TOOLS.sha256)

    n=$(wc -l <"$out/CHUNKS.sha256")
    echo "gpu-bundle: $n chunk(s) in $out ($(du -sh "$out" | cut -f1)) in $((SECONDS - start)) s:"
    (cd "$out" && ls -l "$STREAM".* | awk '{ print "  " $NF, $5 }')
    echo "copy $out to the GPU machine, then: scripts/gpu-bundle.sh unpack DIR && BUNDLE=DIR make bench-gpu"
}

unpack() {
    local dir=$1 dest=${2:-$1} name line zstd=zstd
    [[ -f $dir/CHUNKS.sha256 ]] || die "$dir/CHUNKS.sha256 is missing: not a bundle folder"
    # Every listed chunk: present, within the size limit, the recorded sha256; and no stray chunk.
    local chunks=()
    while read -r line; do
        name=${line#*  }
        [[ $name == "$STREAM".+([0-9]) ]] || die "CHUNKS.sha256 names an unexpected file: $name"
        [[ -f $dir/$name ]] || die "chunk $name is missing"
        (($(stat -c %s "$dir/$name") <= MAX_CHUNK)) || die "chunk $name is larger than 64 MiB"
        chunks+=("$dir/$name")
    done <"$dir/CHUNKS.sha256"
    ((${#chunks[@]} > 0)) || die "CHUNKS.sha256 lists no chunk"
    for name in "$dir/$STREAM".*; do
        grep -qF "  ${name##*/}" "$dir/CHUNKS.sha256" || die "chunk ${name##*/} is not in CHUNKS.sha256"
    done
    if ! (cd "$dir" && sha256sum --quiet -c CHUNKS.sha256 >&2); then
        die "a chunk does not match its sha256 (named above): copy it again; nothing was unpacked"
    fi
    if ! command -v zstd >/dev/null; then
        (cd "$dir" && sha256sum --quiet -c TOOLS.sha256 >&2) || die "tools/ does not match TOOLS.sha256"
        zstd="env LD_LIBRARY_PATH=$dir/tools $dir/tools/zstd"
    fi
    mkdir -p "$dest"
    cat "${chunks[@]}" | $zstd -q -d -c | tar -C "$dest" -xf - ||
        die "cannot decompress the bundle into $dest"
    echo "gpu-bundle: unpacked into $dest ($(du -sh "$dest" | cut -f1)); now: BUNDLE=$dest make bench-gpu"
}

case ${1:-} in
pack) [[ $# == 2 ]] || usage; pack "$2" ;;
unpack) [[ $# == 2 || $# == 3 ]] || usage; unpack "$2" "${3:-$2}" ;;
*) usage ;;
esac
