#!/usr/bin/env bash
# logic-demo.sh: a logical anomaly flagged, and the rule that fired named in the overlay.
#
# 1. Writes the synthetic scenes (`logsad synth --loco`, seed 0) and takes the tray: 9 pins, one
#    per slot.
# 2. Enrolls the `logsad` preset (patch, interest and composition detectors on parts learned from
#    4 good trays, calibrated and rules learned on 10 validation trays); writes the learned rules
#    as an editable rule file.
# 3. Runs good trays and logical anomalies (a missing pin, an extra pin) through
#    logsad ! tee ! (anomalypublish -> JSON lines) + (anomalyoverlay -> PNG frames): the overlay's
#    badge names the fired rule (e.g. "count(part2): 8, expected 9") and outlines the instances of
#    the part concerned.
# 4. Prints, per frame, the fused score and the fired rules.
#
# Outputs (in $OUT): tray.logsad (profile), tray-rules.json (learned rules), logic.jsonl (one JSON
# line per frame), overlay_NNN.png (annotated frames), logic-frames.txt (frame, source, kind).

set -euo pipefail

usage() {
    cat <<'USAGE'
Usage: pipelines/logic-demo.sh [--help]

Settings (environment variables, defaults in brackets):
  OUT                output folder [out/logic]
  LOGSAD_BIN         logsad command [$REPO/target/release/logsad]
  LOGSAD_PLUGIN_DIR  folder holding libgstlogsad.so [$REPO/target/release]
  GOOD_FRAMES        good trays shown first [3]
  LOGICAL_FRAMES     logical anomalies shown after them [2]
USAGE
}
[[ ${1:-} == --help ]] && { usage; exit 0; }

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${OUT:-out/logic}
LOGSAD_BIN=${LOGSAD_BIN:-$REPO/target/release/logsad}
LOGSAD_PLUGIN_DIR=${LOGSAD_PLUGIN_DIR:-$REPO/target/release}
export GST_PLUGIN_PATH="$LOGSAD_PLUGIN_DIR${GST_PLUGIN_PATH:+:$GST_PLUGIN_PATH}"
GOOD_FRAMES=${GOOD_FRAMES:-3}
LOGICAL_FRAMES=${LOGICAL_FRAMES:-2}

mkdir -p "$OUT"
scenes=$OUT/scenes
echo "== writing the synthetic scenes"
"$LOGSAD_BIN" synth --loco --seed 0 --out "$scenes" >/dev/null
tray=$scenes/tray

echo "== enrolling the logsad preset on 4 good trays"
"$LOGSAD_BIN" enroll --preset logsad --shots 4 --out "$OUT/tray.logsad" \
    --rules-out "$OUT/tray-rules.json" --validation "$tray/validation/good" -- "$tray/train/good"

frames=$OUT/frames
rm -rf "$frames" && mkdir -p "$frames"
list=$OUT/logic-frames.txt
echo "# frame source kind" >"$list"
n=0
add() {
    local source=$1 kind=$2
    cp "$source" "$frames/$(printf '%03d' "$n").png"
    echo "$n $source $kind" >>"$list"
    n=$((n + 1))
}
for i in $(seq 0 $((GOOD_FRAMES - 1))); do add "$tray/test/good/$(printf '%03d' "$i").png" good; done
for i in $(seq 0 $((LOGICAL_FRAMES - 1))); do
    add "$tray/test/logical_anomalies/$(printf '%03d' "$i").png" logical
done

echo "== running the pipeline"
rm -f "$OUT"/overlay_*.png "$OUT/logic.jsonl"
gst-launch-1.0 -q -e \
    multifilesrc location="$frames/%03d.png" index=0 caps="image/png,framerate=1/1" ! \
    pngdec ! videoconvert ! video/x-raw,format=RGB ! \
    logsad profile="$OUT/tray.logsad" ! tee name=t \
    t. ! queue max-size-buffers=0 max-size-bytes=0 max-size-time=0 ! \
    anomalypublish location="$OUT/logic.jsonl" stream-name=tray ! fakesink sync=false \
    t. ! queue ! anomalyoverlay ! videoconvert ! pngenc ! \
    multifilesink location="$OUT/overlay_%03d.png"

echo "== frames"
python3 - "$OUT/logic.jsonl" "$list" <<'PY'
import json, sys
kinds = [l.split()[2] for l in open(sys.argv[2]) if not l.startswith("#")]
for line, kind in zip(open(sys.argv[1]), kinds):
    r = json.loads(line)
    rules = "; ".join(x["message"] for x in r.get("rules", [])) or "-"
    print(f"frame {r['frame']}  {kind:8} calibrated {r['calibrated']:.3f}  "
          f"{'ANOMALOUS' if r['anomalous'] else 'ok':9}  rules: {rules}")
PY
