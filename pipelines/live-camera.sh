#!/usr/bin/env bash
# live-camera.sh: anomaly detection on a live camera, shown on screen with the overlay, results
# written as JSON lines.
#
#   SOURCE ! videoconvert ! RGB ! logsad drop-policy=skip ! tee
#     tee -> queue ! anomalypublish (JSON lines) ! fakesink
#     tee -> queue ! anomalyoverlay ! videoconvert ! SINK
#
# A camera delivers frames at its own pace (say 30 fps) whether or not anyone keeps up, and an
# analysis takes tens to hundreds of milliseconds on a CPU. logsad runs it off the streaming
# thread with at most `max-in-flight` frames at once; with `drop-policy=skip` a frame that
# arrives while that many are being analysed goes on unanalysed (it carries the last result,
# `"skipped": "busy"` in the JSON lines, badge "(held)"), so every frame reaches the screen and
# the file, in order, and the delay stays bounded. logsad adds its analysis time to the latency
# query, so the display sink can synchronise: every frame is shown, late by that latency.
# Raise `INTERVAL` to analyse only every Nth frame.
#
# Frames are converted to RGB before logsad, not between logsad and the overlay: in GStreamer 1.22
# a conversion keeps the region boxes but drops their scores, so the boxes would lose their labels.

set -euo pipefail

usage() {
    cat <<'EOF'
Usage: pipelines/live-camera.sh [--help] [PROFILE]

Runs logsad on a live source with the overlay on screen and JSON lines in a file; stops on
Ctrl-C (the file is complete: -e sends EOS) or after NUM_BUFFERS frames.

Settings (environment variables, defaults in brackets):
  PROFILE            profile written by `logsad enroll` (or the first argument) [required]
  CAMERA             V4L2 device of the default source [/dev/video0]
  SOURCE             source pipeline fragment [v4l2src device=$CAMERA]
                     e.g. SOURCE="videotestsrc is-live=true pattern=ball"
  SINK               display sink [autovideosink]; headless: SINK=fakesink
  NUM_BUFFERS        stop after this many source frames (sets num-buffers on the source) []
  INTERVAL           analyse every Nth frame [1]
  OUT                output folder [out]
  JSONL              JSON lines file [$OUT/live.jsonl]; "-" prints them
  STREAM_NAME        "stream" field of the JSON lines [camera]
  MODEL              model manifest, if the profile was not built with the default model []
  LOGSAD_PLUGIN_DIR  folder holding libgstlogsad.so [$REPO/target/release]
  DEVICE             cpu, cuda or tensorrt [cpu]
  THREADS            ONNX Runtime threads, 0 = its default [0]
  OVERLAY_OPTIONS    extra anomalyoverlay properties, e.g. "colormap=turbo opacity=0.3" []

Example without a camera or display:
  SOURCE="videotestsrc is-live=true pattern=ball" SINK=fakesink NUM_BUFFERS=50 \
    pipelines/live-camera.sh out/demo.logsad
EOF
}

case "${1:-}" in
-h | --help)
    usage
    exit 0
    ;;
esac
(($# <= 1)) || {
    usage >&2
    exit 2
}

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PROFILE=${1:-${PROFILE:-}}
CAMERA=${CAMERA:-/dev/video0}
SOURCE=${SOURCE:-v4l2src device=$CAMERA}
SINK=${SINK:-autovideosink}
NUM_BUFFERS=${NUM_BUFFERS:-}
INTERVAL=${INTERVAL:-1}
OUT=${OUT:-out}
JSONL=${JSONL:-$OUT/live.jsonl}
STREAM_NAME=${STREAM_NAME:-camera}
MODEL=${MODEL:-}
LOGSAD_PLUGIN_DIR=${LOGSAD_PLUGIN_DIR:-$REPO/target/release}
DEVICE=${DEVICE:-cpu}
THREADS=${THREADS:-0}
OVERLAY_OPTIONS=${OVERLAY_OPTIONS:-}

export GST_PLUGIN_PATH="$LOGSAD_PLUGIN_DIR${GST_PLUGIN_PATH:+:$GST_PLUGIN_PATH}"

die() {
    echo "live-camera.sh: $*" >&2
    exit 1
}

[[ -n $PROFILE ]] || die "no profile: set PROFILE or pass it as argument (make one with: logsad enroll ... --out P.logsad)"
[[ -f $PROFILE ]] || die "profile $PROFILE does not exist"
gst-inspect-1.0 logsad >/dev/null 2>&1 ||
    die "GStreamer cannot load the logsad plugin from $LOGSAD_PLUGIN_DIR (run: cargo build --release)"

# num-buffers belongs to the source element itself: the first element of the fragment.
source=$SOURCE
if [[ -n $NUM_BUFFERS ]]; then
    if [[ $source == *'!'* ]]; then
        source="${source%%!*} num-buffers=$NUM_BUFFERS !${source#*!}"
    else
        source="$source num-buffers=$NUM_BUFFERS"
    fi
fi
[[ $JSONL == - ]] || mkdir -p "$(dirname "$JSONL")"

# The fragments are split into words on purpose (they hold several elements and properties).
# shellcheck disable=SC2086
exec gst-launch-1.0 -e \
    $source ! videoconvert ! video/x-raw,format=RGB ! \
    logsad profile="$PROFILE" ${MODEL:+model="$MODEL"} interval="$INTERVAL" \
    device="$DEVICE" threads="$THREADS" drop-policy=skip ! \
    tee name=t \
    t. ! queue ! anomalypublish location="$JSONL" stream-name="$STREAM_NAME" ! fakesink sync=false \
    t. ! queue ! anomalyoverlay $OVERLAY_OPTIONS ! videoconvert ! $SINK
