#!/usr/bin/env bash
# record-defects.sh: keeps only the defects of an input (a video file, a folder of images or a
# live source): one annotated clip per anomalous event, plus one JSON line per frame.
#
#   INPUT ! videoconvert ! RGB ! logsad ! tee
#     tee -> queue ! anomalypublish (JSON lines) ! fakesink
#     tee -> queue ! anomalyoverlay ! videoconvert ! x264enc ! h264parse ! anomalyrecord
#
# logsad gets RGB, the overlay's format: in GStreamer 1.22 a conversion between logsad and the
# overlay keeps the region boxes but drops their scores, and the boxes would lose their labels.
#
# anomalyrecord keeps the last PRE_SECONDS of encoded video (whole GOPs) and writes a clip from
# PRE_SECONDS before the first anomalous frame to POST_SECONDS after the last one; anomalies
# closer together than that share one clip. Clips are named STREAM_NAME-<UTC time>.mp4 (or .mkv)
# in OUT, listed in OUT/clips.jsonl (path, start, end, peak score, ...). The verdicts reach it
# through x264enc and h264parse as the LogsadAnomalyMeta of each picture.
#
# A clip starts on a key frame: the encoder makes one every KEY_INT_MAX frames (about a second
# by default), so a clip has between PRE_SECONDS and PRE_SECONDS + 1 s before the event.

set -euo pipefail

usage() {
    cat <<'EOF'
Usage: pipelines/record-defects.sh [--help] [INPUT]

Keeps one annotated clip per anomalous event (PRE_SECONDS before it to POST_SECONDS after it,
overlapping events merged), with one JSON line per frame and an index of the clips (clips.jsonl).

Settings (environment variables, defaults in brackets):
  PROFILE            profile written by `logsad enroll` [required]
  INPUT              (or the first argument) a video file, or a folder of .jpg or .png images
                     played at FPS in name order; ignored when SOURCE is set
  SOURCE             a source pipeline fragment instead of INPUT, e.g. "v4l2src" or
                     "videotestsrc is-live=true num-buffers=300" []
  FPS                frame rate of a folder of images [2]
  PRE_SECONDS        video kept before an event [5]
  POST_SECONDS       video kept after an event; an anomaly within it extends the clip [5]
  CONTAINER          mp4 or matroska [mp4]
  KEY_INT_MAX        frames between key frames, where clips can start [FPS for a folder, else 30]
  THRESHOLD          verdict threshold on the calibrated score, negative = the profile's [-1]
  OUT                clip folder, with the index clips.jsonl [out/record]
  JSONL              JSON lines file [$OUT/record.jsonl]
  STREAM_NAME        name of the stream in clip names and JSON lines [record]
  INTERVAL           analyse every Nth frame [1]
  MODEL              model manifest, if the profile was not built with the default model []
  LOGSAD_PLUGIN_DIR  folder holding libgstlogsad.so [$REPO/target/release]
  DEVICE             cpu, cuda or tensorrt [cpu]
  THREADS            ONNX Runtime threads, 0 = its default [0]
  QUANTIZER          x264 constant quantizer (lower = better quality) [20]

Example:
  PROFILE=out/demo.logsad PRE_SECONDS=2 POST_SECONDS=3 pipelines/record-defects.sh line3.mp4
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
PROFILE=${PROFILE:-}
INPUT=${1:-${INPUT:-}}
SOURCE=${SOURCE:-}
FPS=${FPS:-2}
PRE_SECONDS=${PRE_SECONDS:-5}
POST_SECONDS=${POST_SECONDS:-5}
CONTAINER=${CONTAINER:-mp4}
THRESHOLD=${THRESHOLD:--1}
OUT=${OUT:-out/record}
JSONL=${JSONL:-$OUT/record.jsonl}
STREAM_NAME=${STREAM_NAME:-record}
INTERVAL=${INTERVAL:-1}
MODEL=${MODEL:-}
LOGSAD_PLUGIN_DIR=${LOGSAD_PLUGIN_DIR:-$REPO/target/release}
DEVICE=${DEVICE:-cpu}
THREADS=${THREADS:-0}
QUANTIZER=${QUANTIZER:-20}
KEY_INT_MAX=${KEY_INT_MAX:-}

export GST_PLUGIN_PATH="$LOGSAD_PLUGIN_DIR${GST_PLUGIN_PATH:+:$GST_PLUGIN_PATH}"

die() {
    echo "record-defects.sh: $*" >&2
    exit 1
}

[[ -n $PROFILE ]] || die "no profile: set PROFILE (make one with: logsad enroll ... --out P.logsad)"
[[ -f $PROFILE ]] || die "profile $PROFILE does not exist"
[[ $CONTAINER == mp4 || $CONTAINER == matroska ]] || die "CONTAINER must be mp4 or matroska"
gst-inspect-1.0 logsad >/dev/null 2>&1 ||
    die "GStreamer cannot load the logsad plugin from $LOGSAD_PLUGIN_DIR (run: cargo build --release)"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/logsad-record.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

if [[ -n $SOURCE ]]; then
    source=$SOURCE
elif [[ -d $INPUT ]]; then
    # multifilesrc wants numbered names: link the images, sorted, as frame_00000.EXT.
    mapfile -t images < <(find "$INPUT" -maxdepth 1 -type f \( -iname '*.jpg' -o -iname '*.jpeg' -o -iname '*.png' \) | sort)
    ((${#images[@]} > 0)) || die "no .jpg or .png images in $INPUT"
    case "${images[0],,}" in
    *.png) ext=png caps=image/png decoder=pngdec ;;
    *) ext=jpg caps=image/jpeg decoder=jpegdec ;;
    esac
    i=0
    for img in "${images[@]}"; do
        ln -s "$(cd "$(dirname "$img")" && pwd)/$(basename "$img")" "$tmp/$(printf 'frame_%05d' $i).$ext"
        i=$((i + 1))
    done
    source="multifilesrc location=\"$tmp/frame_%05d.$ext\" index=0 caps=$caps,framerate=$FPS/1 ! $decoder"
    KEY_INT_MAX=${KEY_INT_MAX:-$FPS}
elif [[ -f $INPUT ]]; then
    # Literal quotes keep a path with spaces in one piece through gst-launch's parser.
    source="filesrc location=\"$INPUT\" ! decodebin"
else
    die "no input: give a video file or image folder (INPUT or first argument), or SOURCE"
fi

KEY_INT_MAX=${KEY_INT_MAX:-30}
mkdir -p "$OUT" "$(dirname "$JSONL")"
log=$tmp/gst.log

# The JSON-lines branch's queue is unbounded: x264enc holds frames (lookahead) before its first
# output, and while the encoding branch waits for it, the prerolled fakesink would block a
# bounded queue and then the tee: the pipeline would hang before PLAYING. JSON lines are small.
# -e: on Ctrl-C the pipeline gets EOS, so the open clip is finished and indexed.
# shellcheck disable=SC2086
gst-launch-1.0 -e -m \
    $source ! videoconvert ! video/x-raw,format=RGB ! \
    logsad profile="$PROFILE" ${MODEL:+model="$MODEL"} interval="$INTERVAL" \
    threshold="$THRESHOLD" device="$DEVICE" threads="$THREADS" ! \
    tee name=t \
    t. ! queue max-size-buffers=0 max-size-bytes=0 max-size-time=0 ! \
    anomalypublish location="$JSONL" stream-name="$STREAM_NAME" ! fakesink sync=false \
    t. ! queue ! anomalyoverlay ! videoconvert ! video/x-raw,format=I420 ! \
    x264enc speed-preset=veryfast pass=qual quantizer="$QUANTIZER" key-int-max="$KEY_INT_MAX" ! h264parse ! \
    anomalyrecord location="$OUT" stream-name="$STREAM_NAME" container="$CONTAINER" \
    pre-seconds="$PRE_SECONDS" post-seconds="$POST_SECONDS" \
    >"$log" 2>&1 || {
    tail -n 30 "$log" >&2
    die "the pipeline failed"
}

# The clips of this run, from anomalyrecord's logsad-clip messages (clips.jsonl also lists the
# clips of earlier runs into the same folder).
clips=$(grep -c 'logsad-clip, path=' "$log" || true)
if grep -q 'WARNING' "$log"; then grep -A2 'WARNING' "$log" >&2; fi
frames=$(grep -c . "$JSONL" || true)
anomalous=$(grep -c '"anomalous":true' "$JSONL" || true)
echo "$frames frames, $anomalous anomalous; $clips clip(s) in $OUT (index: $OUT/clips.jsonl)"
grep -o 'logsad-clip, path=(string)[^,]*' "$log" | sed 's/.*(string)/  /' || true
