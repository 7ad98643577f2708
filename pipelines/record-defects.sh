#!/usr/bin/env bash
# record-defects.sh: records the annotated video of an input (a video file, a folder of images or
# a live source) into rolling mp4 segments, plus one JSON line per frame.
#
#   INPUT ! videoconvert ! RGB ! logsad ! tee
#     tee -> queue ! anomalypublish (JSON lines) ! fakesink
#     tee -> queue ! anomalyoverlay ! videoconvert ! x264enc ! splitmuxsink (segment_%05d.mp4)
#
# logsad gets RGB, the overlay's format: in GStreamer 1.22 a conversion between logsad and the
# overlay keeps the region boxes but drops their scores, and the boxes would lose their labels.
#
# Every segment is annotated (heat map, verdict badge, region boxes on every frame): the segments
# are the whole recording, not only the anomalous parts. Which segments hold anomalies is in the
# JSON lines: each line has the frame's timestamp and verdict, and at the end this script writes
# segments.jsonl, one line per segment file with its time span and how many of its frames were
# anomalous (from splitmuxsink's fragment messages), and prints the segments that hold anomalies.
# KEEP=anomalous deletes the other segment files at the end.
#
# splitmuxsink cuts only at key frames: a segment ends at the first key frame after
# SEGMENT_SECONDS, so the encoder makes one every KEY_INT_MAX frames (about a second by default).
# (splitmuxsink's send-keyframe-requests had no effect on x264enc in GStreamer 1.22 here.)

set -euo pipefail

usage() {
    cat <<'EOF'
Usage: pipelines/record-defects.sh [--help] [INPUT]

Records annotated video in mp4 segments of SEGMENT_SECONDS, with one JSON line per frame and a
per-segment index (segments.jsonl) saying which segments hold anomalous frames.

Settings (environment variables, defaults in brackets):
  PROFILE            profile written by `logsad enroll` [required]
  INPUT              (or the first argument) a video file, or a folder of .jpg or .png images
                     played at FPS in name order; ignored when SOURCE is set
  SOURCE             a source pipeline fragment instead of INPUT, e.g. "v4l2src" or
                     "videotestsrc is-live=true num-buffers=300" []
  FPS                frame rate of a folder of images [2]
  SEGMENT_SECONDS    length of each segment [60]
  KEY_INT_MAX        frames between key frames, i.e. cut points [FPS for a folder, else 30]
  MAX_FILES          keep at most this many segment files, oldest deleted (0 = all) [0]
  KEEP               all, or anomalous: delete segments without anomalous frames at the end [all]
  OUT                output folder [out/record]
  JSONL              JSON lines file [$OUT/record.jsonl]
  STREAM_NAME        "stream" field of the JSON lines [record]
  INTERVAL           analyse every Nth frame [1]
  MODEL              model manifest, if the profile was not built with the default model []
  LOGSAD_PLUGIN_DIR  folder holding libgstlogsad.so [$REPO/target/release]
  DEVICE             cpu, cuda or tensorrt [cpu]
  THREADS            ONNX Runtime threads, 0 = its default [0]
  QUANTIZER          x264 constant quantizer (lower = better quality) [20]

Example:
  PROFILE=out/demo.logsad SEGMENT_SECONDS=10 pipelines/record-defects.sh line3.mp4
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
SEGMENT_SECONDS=${SEGMENT_SECONDS:-60}
MAX_FILES=${MAX_FILES:-0}
KEEP=${KEEP:-all}
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
[[ $KEEP == all || $KEEP == anomalous ]] || die "KEEP must be all or anomalous"
gst-inspect-1.0 logsad >/dev/null 2>&1 ||
    die "GStreamer cannot load the logsad plugin from $LOGSAD_PLUGIN_DIR (run: cargo build --release)"
command -v python3 >/dev/null || die "python3 is needed for the segment index"

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
rm -f "$OUT"/segment_*.mp4 "$OUT/segments.jsonl"
log=$tmp/gst.log

# The JSON-lines branch's queue is unbounded: x264enc holds frames (lookahead) before its first
# output, and while the splitmuxsink branch waits for it, the prerolled fakesink would block a
# bounded queue and then the tee: the pipeline would hang before PLAYING. JSON lines are small.
# splitmuxsink async-handling=true: in GStreamer 1.22, when the whole input has gone through
# before the pipeline reached PLAYING (short or fast input: splitmuxsink does not block while
# prerolling), the end-of-stream got lost about one run in three and gst-launch waited forever.
# With the bin handling its own state changes the pipeline is PLAYING before data flows.
# -m prints the bus messages, among them splitmuxsink's fragment-opened/closed, which give each
# segment's file and running-time span for the index.
# shellcheck disable=SC2086
gst-launch-1.0 -e -m \
    $source ! videoconvert ! video/x-raw,format=RGB ! \
    logsad profile="$PROFILE" ${MODEL:+model="$MODEL"} interval="$INTERVAL" \
    device="$DEVICE" threads="$THREADS" ! \
    tee name=t \
    t. ! queue max-size-buffers=0 max-size-bytes=0 max-size-time=0 ! \
    anomalypublish location="$JSONL" stream-name="$STREAM_NAME" ! fakesink sync=false \
    t. ! queue ! anomalyoverlay ! videoconvert ! video/x-raw,format=I420 ! \
    x264enc speed-preset=veryfast pass=qual quantizer="$QUANTIZER" key-int-max="$KEY_INT_MAX" ! h264parse ! \
    splitmuxsink name=mux async-handling=true location="$OUT/segment_%05d.mp4" muxer=mp4mux \
    max-size-time=$((SEGMENT_SECONDS * 1000000000)) max-size-bytes=0 \
    max-files="$MAX_FILES" \
    >"$log" 2>&1 || {
    tail -n 30 "$log" >&2
    die "the pipeline failed"
}

python3 - "$log" "$JSONL" "$OUT/segments.jsonl" "$KEEP" <<'EOF'
import json
import os
import re
import sys

log, jsonl, index, keep = sys.argv[1:5]
# Bus messages as gst-launch -m prints them, e.g.
#   ... (element): splitmuxsink-fragment-closed, location=(string)out/segment_00000.mp4,
#   running-time=(guint64)2000000000, ...
pattern = re.compile(r"splitmuxsink-fragment-(opened|closed), location=\(string\)\"?([^,\"]+)\"?,"
                     r" running-time=\(guint64\)(\d+)")
segments = {}
for line in open(log, errors="replace"):
    m = pattern.search(line)
    if m:
        kind, location, t = m.group(1), m.group(2), int(m.group(3))
        seg = segments.setdefault(location, {"segment": location, "start": None, "end": None})
        seg["start" if kind == "opened" else "end"] = t

frames = [json.loads(line) for line in open(jsonl) if line.strip()]
ordered = sorted(segments.values(), key=lambda s: s["start"] or 0)
for n, seg in enumerate(ordered):
    # The last segment runs to the end: its closing running time is the last frame's start.
    end = ordered[n + 1]["start"] if n + 1 < len(ordered) else None
    inside = [f for f in frames if f.get("timestamp") is not None and f.get("analysed")
              and f["timestamp"] >= seg["start"] and (end is None or f["timestamp"] < end)]
    seg["frames"] = len(inside)
    seg["anomalous_frames"] = sum(1 for f in inside if f["anomalous"])
    seg["max_calibrated"] = max((f["calibrated"] for f in inside), default=None)
    seg["exists"] = os.path.exists(seg["segment"])

with open(index, "w") as out:
    for seg in ordered:
        out.write(json.dumps(seg) + "\n")

flagged = [s for s in ordered if s["anomalous_frames"]]
print(f"{len(ordered)} segments, {len(frames)} frames, "
      f"{sum(s['anomalous_frames'] for s in ordered)} anomalous frames; index in {index}")
for s in ordered:
    mark = "ANOMALY" if s["anomalous_frames"] else "ok     "
    print(f"  {mark} {s['segment']}  {s['start'] / 1e9:8.2f}s .. "
          f"{(s['end'] or 0) / 1e9:8.2f}s  {s['anomalous_frames']}/{s['frames']} frames anomalous")
    if keep == "anomalous" and not s["anomalous_frames"] and s["exists"]:
        os.remove(s["segment"])
if keep == "anomalous":
    print(f"kept the {len(flagged)} segments with anomalies (KEEP=anomalous)")
EOF
