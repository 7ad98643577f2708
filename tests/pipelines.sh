#!/usr/bin/env bash
# tests/pipelines.sh: runs every script in pipelines/ on short input and checks what it writes.
#
#   demo.sh           3 nominal + 2 local frames, default model, 2x2 tiles, 1 reference image
#   logic-demo.sh     3 good trays + 2 logical anomalies, default model, logsad preset
#   live-camera.sh    videotestsrc + fakesink, 5 buffers, tiny model; then 30 buffers at 30 fps
#                     with the default model, where drop-policy=skip must skip frames
#   record-defects.sh 5 textile images at 2 fps, tiny model, every frame anomalous: one clip
#   multi-camera.sh   the textile demo, 4 cameras x 4 frames, demo profile, no display: JSON lines,
#                     a clip of camera 2's local defect, the 2x2 mosaic written to mosaic.mp4
#   multi-camera-headless.sh  the same headless, publishing to a Mosquitto started on loopback;
#                     then 4 live test cameras x 30 frames at 30 fps, frames skipped, none lost
#   read-meta.py      videotestsrc with the tiny model; a local defect with the default model
#   read-meta.c       compiled with gcc, the same two runs
#   message formats   every JSON line above, the MQTT status messages and `logsad score` lines
#                     against the JSON Schemas of docs/schema/ (tests/validate_schema.py)
#
# Every output must exist, be non-empty and valid (JSON lines parse with the expected fields,
# mp4 files demux). Prints "N passed, M failed" last and exits non-zero if anything failed.
# Takes about two minutes on two cores. Settings: LOGSAD_BIN, LOGSAD_PLUGIN_DIR (as the
# scripts), KEEP_TMP=1 keeps the work folder, PYTHON_GI (Python with PyGObject) [/usr/bin/python3].

set -uo pipefail # not -e: a failing check is counted, not fatal

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export LOGSAD_BIN=${LOGSAD_BIN:-$REPO/target/release/logsad}
export LOGSAD_PLUGIN_DIR=${LOGSAD_PLUGIN_DIR:-$REPO/target/release}
export GST_PLUGIN_PATH="$LOGSAD_PLUGIN_DIR${GST_PLUGIN_PATH:+:$GST_PLUGIN_PATH}"
DATA=${LOGSAD_DATA_DIR:-$REPO/.deps}/data/textile
TINY_MODEL=${LOGSAD_DATA_DIR:-$REPO/.deps}/models/tiny/manifest.json
PYTHON_GI=${PYTHON_GI:-/usr/bin/python3}
P=$REPO/pipelines

work=$(mktemp -d "${TMPDIR:-/tmp}/logsad-pipelines.XXXXXX")
if [[ ${KEEP_TMP:-0} == 1 ]]; then
    echo "work folder: $work"
else
    trap 'rm -rf "$work"' EXIT
fi

passed=0
failed=0
pass() {
    passed=$((passed + 1))
    echo "PASS $1"
}
fail() {
    failed=$((failed + 1))
    echo "FAIL $1${2:+: $2}"
}

# run NAME TIMEOUT LOG COMMAND...: runs a script with a time limit (a hung pipeline fails the
# test instead of blocking it) and keeps its output for the failure message.
run() {
    local name=$1 limit=$2 log=$3
    shift 3
    local start=$SECONDS
    if timeout "$limit" "$@" >"$log" 2>&1; then
        echo "     ($name: $((SECONDS - start)) s)"
        return 0
    fi
    local rc=$?
    ((rc == 124)) && echo "     ($name: timed out after $limit s)"
    echo "     --- last lines of $name's output:"
    tail -n 15 "$log" | sed 's/^/     | /'
    return 1
}

# check_jsonl FILE MIN MAX FIELD...: every line parses, MIN..MAX lines, each has the fields.
check_jsonl() {
    python3 - "$@" <<'EOF'
import json, sys
path, lo, hi, fields = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
lines = [l for l in open(path) if l.strip()]
if not lo <= len(lines) <= hi:
    sys.exit(f"{path}: {len(lines)} lines, expected {lo}..{hi}")
for n, line in enumerate(lines, 1):
    d = json.loads(line)
    missing = [f for f in fields if f not in d]
    if missing:
        sys.exit(f"{path} line {n}: missing {missing}")
EOF
}

# check_mp4 FILE: the file demuxes completely (the moov atom was written).
check_mp4() {
    [[ -s $1 ]] && gst-launch-1.0 -q filesrc location="$1" ! qtdemux ! h264parse ! fakesink >/dev/null 2>&1
}

# check_meta FILE MIN MAX: read-meta output: meta fields present, map length = width x height.
check_meta() {
    python3 - "$@" <<'EOF'
import json, sys
path, lo, hi = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
lines = [json.loads(l) for l in open(path) if l.strip()]
if not lo <= len(lines) <= hi:
    sys.exit(f"{len(lines)} lines, expected {lo}..{hi}")
for d in lines:
    for f in ("meta", "score", "calibrated", "anomalous", "threshold", "map-threshold", "stale",
              "frame", "detectors", "map-width", "map-height", "map_len", "regions"):
        if f not in d:
            sys.exit(f"missing field {f} in {d}")
    if d["meta"] is not True:
        sys.exit("a buffer without LogsadAnomalyMeta")
    if d["map_len"] != d["map-width"] * d["map-height"] or d["map_len"] == 0:
        sys.exit(f"map of {d['map_len']} values for {d['map-width']}x{d['map-height']}")
    if "map" in d and len(d["map"]) != d["map_len"]:
        sys.exit("--full-map printed the wrong number of values")
    if not isinstance(d["regions"], list):
        sys.exit("regions is not a list")
EOF
}

total_start=$SECONDS

# --- preconditions -----------------------------------------------------------------------------
if [[ ! -x $LOGSAD_BIN ]] || ! gst-inspect-1.0 logsad >/dev/null 2>&1; then
    fail "build" "no $LOGSAD_BIN or plugin in $LOGSAD_PLUGIN_DIR (run: cargo build --release)"
    echo "$passed passed, $failed failed"
    exit 1
fi

# --- every element property documented in docs/elements.md ------------------------------------
if "$REPO/tests/docs-elements.sh" >"$work/docs-elements.txt" 2>&1; then
    pass "$(tail -n 1 "$work/docs-elements.txt")"
else
    fail "docs-elements.sh" "$(grep -v '^docs-elements: [0-9]* missing' "$work/docs-elements.txt" | tr '\n' ';')"
fi

# --- --help of every script --------------------------------------------------------------------
for script in "$P"/*.sh; do
    name=$(basename "$script")
    if "$script" --help >"$work/help.txt" 2>&1 && grep -q "Usage" "$work/help.txt"; then
        pass "$name --help"
    else
        fail "$name --help"
    fi
done
if "$PYTHON_GI" "$P/read-meta.py" --help >/dev/null 2>&1; then
    pass "read-meta.py --help"
else
    fail "read-meta.py --help" "needs $PYTHON_GI with python3-gi"
fi

# A tiny-model profile, for the checks that are about the plumbing rather than detection.
nominal=$DATA/nominal
tiny=$work/tiny.logsad
if "$LOGSAD_BIN" enroll --model "$TINY_MODEL" --validation "$nominal/textile_0003.jpg" \
    "$nominal/textile_0004.jpg" --out "$tiny" "$nominal/textile_0001.jpg" \
    "$nominal/textile_0002.jpg" >"$work/enroll-tiny.log" 2>&1; then
    pass "enroll tiny profile"
else
    fail "enroll tiny profile" "$(tail -n 3 "$work/enroll-tiny.log")"
fi

# --- demo.sh -----------------------------------------------------------------------------------
demo=$work/demo
if run demo.sh 400 "$work/demo.log" env OUT="$demo" DEMO_FRAMES=3,2,0 SHOTS=1 VALIDATION=2 \
    "$P/demo.sh"; then
    pass "demo.sh runs"
else
    fail "demo.sh runs"
fi
if check_mp4 "$demo/demo.mp4"; then pass "demo.mp4 demuxes"; else fail "demo.mp4 demuxes"; fi
if msg=$(check_jsonl "$demo/demo.jsonl" 5 5 timestamp frame stream analysed score calibrated \
    anomalous threshold stale regions map 2>&1); then
    pass "demo.jsonl: 5 valid lines"
else
    fail "demo.jsonl" "$msg"
fi
if [[ $(grep -vc '^#' "$demo/demo-frames.txt" 2>/dev/null) == 5 ]] &&
    grep -q ' local$' "$demo/demo-frames.txt"; then
    pass "demo-frames.txt lists 5 frames"
else
    fail "demo-frames.txt lists 5 frames"
fi
if grep -q "AUROC" "$work/demo.log" && grep -qE "^  local +[0-9]" "$work/demo.log"; then
    pass "demo.sh prints the summary"
else
    fail "demo.sh prints the summary"
fi

# --- logic-demo.sh -----------------------------------------------------------------------------
logic=$work/logic
if run logic-demo.sh 300 "$work/logic.log" env OUT="$logic" "$P/logic-demo.sh"; then
    pass "logic-demo.sh runs"
else
    fail "logic-demo.sh runs"
fi
if msg=$(check_jsonl "$logic/logic.jsonl" 5 5 frame analysed calibrated anomalous rules 2>&1); then
    pass "logic.jsonl: 5 valid lines"
else
    fail "logic.jsonl" "$msg"
fi
# Frames 0-2 are good trays (no rule fires), frame 3 a missing pin (a rule fires, score 1: the
# count of pins, or the foreground components).
if msg=$(python3 - "$logic/logic.jsonl" 2>&1 <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
assert all(not l["rules"] for l in lines[:3]), [l["rules"] for l in lines[:3]]
missing = lines[3]
assert missing["calibrated"] == 1.0 and missing["anomalous"], missing
assert any(r["name"].startswith(("count(", "components")) for r in missing["rules"]), missing["rules"]
PY
); then
    pass "logic.jsonl: the missing pin fires a rule, good trays none"
else
    fail "logic.jsonl rules" "$msg"
fi
if [[ -s $logic/overlay_003.png && -s $logic/tray-rules.json ]]; then
    pass "logic-demo.sh writes the overlay frames and the rule file"
else
    fail "logic-demo.sh writes the overlay frames and the rule file"
fi

# --- live-camera.sh ----------------------------------------------------------------------------
live=$work/live
if run live-camera.sh 60 "$work/live.log" env SOURCE="videotestsrc is-live=true pattern=ball" \
    SINK=fakesink NUM_BUFFERS=5 OUT="$live" MODEL="$TINY_MODEL" "$P/live-camera.sh" "$tiny"; then
    pass "live-camera.sh runs"
else
    fail "live-camera.sh runs"
fi
if msg=$(check_jsonl "$live/live.jsonl" 1 5 timestamp frame stream analysed score anomalous 2>&1); then
    pass "live.jsonl: valid lines"
else
    fail "live.jsonl" "$msg"
fi
# A detector slower than the source: 30 frames in one second, each analysis far longer than
# 1/30 s on a CPU with the demo profile, so most frames go on unanalysed ("skipped": "busy"); every
# frame still comes out, in order, and the pipeline ends.
if [[ -f $demo/demo.logsad ]] &&
    run "live-camera.sh (slow detector)" 120 "$work/live-slow.log" env \
        SOURCE="videotestsrc is-live=true pattern=ball ! video/x-raw,width=250,height=250,framerate=30/1" \
        SINK=fakesink NUM_BUFFERS=30 JSONL="$live/slow.jsonl" "$P/live-camera.sh" "$demo/demo.logsad" &&
    msg=$(check_jsonl "$live/slow.jsonl" 30 30 frame analysed score 2>&1) &&
    msg=$(python3 - "$live/slow.jsonl" <<'PY' 2>&1
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
frames = [l["frame"] for l in lines]
assert frames == list(range(30)), f"frames out of order or lost: {frames}"
busy = sum(l.get("skipped") == "busy" for l in lines)
fresh = sum(l.get("stale") is False for l in lines)
assert busy > 0 and fresh > 0, f"{fresh} analysed, {busy} skipped busy"
print(f"{fresh} analysed, {busy} skipped busy")
PY
); then
    pass "live-camera.sh with a slow detector: 30 of 30 frames out, $msg"
else
    fail "live-camera.sh with a slow detector" "${msg:-}"
fi

# --- record-defects.sh -------------------------------------------------------------------------
frames=$work/frames
mkdir -p "$frames"
cp "$nominal/textile_0100.jpg" "$frames/a1.jpg"
cp "$DATA/local/textile_0001.jpg" "$frames/a2.jpg"
cp "$nominal/textile_0101.jpg" "$frames/a3.jpg"
cp "$DATA/local/textile_0002.jpg" "$frames/a4.jpg"
cp "$nominal/textile_0102.jpg" "$frames/a5.jpg"
rec=$work/record
# THRESHOLD=0: every frame is anomalous (the tiny model is for plumbing, not detection), so the
# events merge into one clip from the first frame to the last (2.5 s).
if run record-defects.sh 60 "$work/record.log" env PROFILE="$tiny" MODEL="$TINY_MODEL" \
    THRESHOLD=0 PRE_SECONDS=1 POST_SECONDS=1 OUT="$rec" "$P/record-defects.sh" "$frames"; then
    pass "record-defects.sh runs"
else
    fail "record-defects.sh runs"
fi
clips=("$rec"/record-*.mp4)
if ((${#clips[@]} == 1)) && [[ -f ${clips[0]} ]] && check_mp4 "${clips[0]}"; then
    pass "record-defects.sh: one clip, demuxes"
else
    fail "record-defects.sh clips" "expected one playable record-*.mp4, got ${clips[*]}"
fi
if msg=$(check_jsonl "$rec/record.jsonl" 5 5 timestamp analysed anomalous regions 2>&1) &&
    msg=$(check_jsonl "$rec/clips.jsonl" 1 1 path stream start end start_wall end_wall \
        peak_score anomalous_frames events 2>&1) &&
    msg=$(python3 - "$rec/clips.jsonl" 2>&1 <<'PY'
import json, sys
c = json.loads(open(sys.argv[1]).readline())
assert (c["start"], c["end"], c["anomalous_frames"], c["frames"]) == (0, 2_500_000_000, 5, 5), c
PY
    ); then
    pass "record.jsonl and clips.jsonl valid, the clip covers the 5 frames"
else
    fail "record-defects.sh JSON lines" "$msg"
fi

# --- multi-camera.sh, multi-camera-headless.sh --------------------------------------------------
# check_cameras OUT FRAMES MODE: OUT/cam1..4.jsonl hold FRAMES lines each, frames 0..FRAMES-1 in
# order with their camera's stream name. MODE files: every frame analysed (drop-policy waits for
# files); live: at least one analysed per camera, every other frame carries the last result
# marked skipped (the analysis of 4 cameras at 30 fps cannot keep up on a CPU), none lost.
check_cameras() {
    python3 - "$@" <<'EOF'
import json, sys
out, frames, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
report = []
for cam in range(1, 5):
    path = f"{out}/cam{cam}.jsonl"
    lines = [json.loads(l) for l in open(path) if l.strip()]
    if [d["frame"] for d in lines] != list(range(frames)):
        sys.exit(f"{path}: frames {[d['frame'] for d in lines]}, expected 0..{frames - 1}")
    if any(d["stream"] != f"cam{cam}" for d in lines):
        sys.exit(f"{path}: a line of another stream")
    fresh = [d for d in lines if d["analysed"] and not d["stale"]]
    skipped = [d for d in lines if d not in fresh]
    if mode == "files" and skipped:
        sys.exit(f"{path}: {len(skipped)} frames not analysed, expected all with files")
    if mode == "live":
        if not fresh:
            sys.exit(f"{path}: no frame analysed")
        if not skipped or any(d.get("skipped") not in ("busy", "late") for d in skipped):
            sys.exit(f"{path}: expected frames skipped as busy or late, got "
                     f"{sorted({str(d.get('skipped')) for d in skipped})}")
    report.append(f"cam{cam} {len(fresh)}/{frames}")
print("analysed: " + ", ".join(report))
EOF
}

# check_defect_clip OUT: camera 2's frame 3 (local/textile_0001, which the demo profile flags,
# as the read-meta check below also relies on) is anomalous, and clips/cam2/clips.jsonl lists a
# playable clip of camera 2 whose event covers it (1.5 s at 2 fps).
check_defect_clip() {
    python3 - "$1" <<'EOF'
import json, os, sys
out = sys.argv[1]
frame3 = [json.loads(l) for l in open(f"{out}/cam2.jsonl")][3]
if not frame3["anomalous"]:
    sys.exit(f"camera 2's local defect (frame 3) not flagged: calibrated {frame3['calibrated']}")
clips = [json.loads(l) for l in open(f"{out}/clips/cam2/clips.jsonl")]
hits = [c for c in clips if c["stream"] == "cam2" and c["event_start"] <= 1_500_000_000 <= c["event_end"]]
if not hits:
    sys.exit(f"no clip of cam2 covers the defect at 1.5 s: {clips}")
if not os.path.isfile(hits[0]["path"]):
    sys.exit(f"the clip {hits[0]['path']} is listed but missing")
print(hits[0]["path"])
EOF
}

multicam=$work/multi-camera
if [[ ! -f $demo/demo.logsad ]]; then
    fail "multi-camera.sh runs" "no profile from demo.sh"
elif run multi-camera.sh 300 "$work/multicam.log" env -u DISPLAY -u WAYLAND_DISPLAY OUT="$multicam" \
    PROFILE="$demo/demo.logsad" FRAMES=4 "$P/multi-camera.sh"; then
    pass "multi-camera.sh runs"
else
    fail "multi-camera.sh runs"
fi
if msg=$(check_cameras "$multicam" 4 files 2>&1); then
    pass "multi-camera.sh: 4 JSON-lines files of 4 frames ($msg)"
else
    fail "multi-camera.sh JSON lines" "$msg"
fi
if clip=$(check_defect_clip "$multicam" 2>&1) && check_mp4 "$clip"; then
    pass "multi-camera.sh: a playable clip of camera 2's defect, in clips/cam2/clips.jsonl"
else
    fail "multi-camera.sh clip" "$clip"
fi
# The 2x2 mosaic of 480x360 tiles, one picture per frame time of the 4 cameras.
mosaic=$multicam/mosaic.mp4
pictures=$(gst-launch-1.0 filesrc location="$mosaic" ! qtdemux ! fakesink silent=false -v 2>&1 |
    grep -c 'last-message = chain')
size=$(gst-launch-1.0 filesrc location="$mosaic" ! qtdemux ! h264parse ! fakesink -v 2>&1 |
    grep -o 'width=(int)[0-9]*, height=(int)[0-9]*' | head -n 1)
if check_mp4 "$mosaic" && [[ $pictures == 4 && $size == 'width=(int)960, height=(int)720' ]]; then
    pass "multi-camera.sh: the compositor wrote 4 pictures of 960x720 to mosaic.mp4"
else
    fail "multi-camera.sh mosaic" "$pictures pictures, $size"
fi

# Headless, publishing to a Mosquitto of our own on a free loopback port (not the system one).
headless=$work/multi-camera-headless
broker=
if command -v mosquitto >/dev/null && command -v mosquitto_sub >/dev/null; then
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    printf 'listener %s 127.0.0.1\nallow_anonymous true\nlog_dest file %s\nlog_type all\n' \
        "$port" "$work/mosquitto.log" >"$work/mosquitto.conf"
    mosquitto -c "$work/mosquitto.conf" >/dev/null 2>&1 &
    broker=$!
    for _ in $(seq 50); do
        grep -q "Opening ipv4 listen socket on port $port" "$work/mosquitto.log" 2>/dev/null && break
        sleep 0.1
    done
    # The data topics (logsad/camN); the cameras' online status (logsad/camN/status) apart.
    mosquitto_sub -h 127.0.0.1 -p "$port" -t 'logsad/+' -q 1 -v -C 16 -W 300 >"$work/mqtt.out" 2>&1 &
    subscriber=$!
    mosquitto_sub -h 127.0.0.1 -p "$port" -t 'logsad/+/status' -q 1 -C 8 -W 300 \
        >"$work/status.out" 2>&1 &
    status_subscriber=$!
    for _ in $(seq 50); do
        [[ $(grep -c "Received SUBSCRIBE" "$work/mosquitto.log" 2>/dev/null) -ge 2 ]] && break
        sleep 0.1
    done
fi
if [[ -z $broker ]]; then
    fail "multi-camera-headless.sh runs" "no mosquitto, mosquitto_sub (scripts/setup-deps.sh installs them)"
elif [[ ! -f $demo/demo.logsad ]]; then
    fail "multi-camera-headless.sh runs" "no profile from demo.sh"
elif run multi-camera-headless.sh 300 "$work/multicam-headless.log" env OUT="$headless" \
    PROFILE="$demo/demo.logsad" FRAMES=4 MQTT_URL="mqtt://127.0.0.1:$port" \
    "$P/multi-camera-headless.sh"; then
    pass "multi-camera-headless.sh runs (MQTT_URL set)"
else
    fail "multi-camera-headless.sh runs"
fi
if msg=$(check_cameras "$headless" 4 files 2>&1) && [[ ! -e $headless/mosaic.mp4 ]]; then
    pass "multi-camera-headless.sh: 4 JSON-lines files of 4 frames, no mosaic ($msg)"
else
    fail "multi-camera-headless.sh JSON lines" "$msg"
fi
if clip=$(check_defect_clip "$headless" 2>&1) && check_mp4 "$clip"; then
    pass "multi-camera-headless.sh: a playable clip of camera 2's defect"
else
    fail "multi-camera-headless.sh clip" "$clip"
fi
if [[ -n $broker ]]; then
    # The lines are confirmed before EOS goes on; give the subscriber a moment to print them.
    for _ in $(seq 100); do
        kill -0 "$subscriber" 2>/dev/null || kill -0 "$status_subscriber" 2>/dev/null || break
        sleep 0.1
    done
    kill "$subscriber" "$status_subscriber" "$broker" 2>/dev/null
    wait "$subscriber" "$status_subscriber" "$broker" 2>/dev/null
fi
# Every JSON line of every camera reached the broker on topic logsad/camN, byte for byte, in order.
if msg=$(python3 - "$headless" "$work/mqtt.out" 2>&1 <<'EOF'
import sys
out, received = sys.argv[1], [l.rstrip("\n") for l in open(sys.argv[2])]
for cam in range(1, 5):
    lines = [l.rstrip("\n") for l in open(f"{out}/cam{cam}.jsonl")]
    topic = f"logsad/cam{cam}"
    got = [l[len(topic) + 1:] for l in received if l.startswith(topic + " ")]
    if got != lines:
        sys.exit(f"{topic}: {len(got)} messages, not the {len(lines)} lines of cam{cam}.jsonl")
EOF
); then
    pass "multi-camera-headless.sh: the 16 JSON lines on MQTT, one topic per camera, as in the files"
else
    fail "multi-camera-headless.sh MQTT" "$msg"
fi

# 4 live cameras faster than the analysis: frames are skipped (drop-policy auto), none lost.
live4=$work/multi-camera-live
if [[ -f $demo/demo.logsad ]] &&
    run "multi-camera-headless.sh (4 live cameras)" 300 "$work/multicam-live.log" env OUT="$live4" \
        PROFILE="$demo/demo.logsad" NUM_BUFFERS=30 "$P/multi-camera-headless.sh" test test test test &&
    msg=$(check_cameras "$live4" 30 live 2>&1); then
    pass "multi-camera-headless.sh, 4 live cameras x 30 frames, none lost ($msg)"
else
    fail "multi-camera-headless.sh, 4 live cameras" "${msg:-}"
fi

# --- read-meta.py ------------------------------------------------------------------------------
if run read-meta.py 60 "$work/meta-py.out" "$PYTHON_GI" "$P/read-meta.py" "$tiny" \
    --model "$TINY_MODEL" --num-buffers 3 --full-map &&
    msg=$(check_meta "$work/meta-py.out" 3 3 2>&1); then
    pass "read-meta.py: 3 buffers, fields present, map length = width x height"
else
    fail "read-meta.py" "${msg:-}"
fi

# --- read-meta.c -------------------------------------------------------------------------------
# The build line documented in read-meta.c.
if (cd "$work" && gcc "$P/read-meta.c" $(pkg-config --cflags --libs gstreamer-1.0 gstreamer-video-1.0) \
    -o read-meta) >"$work/gcc.log" 2>&1; then
    pass "read-meta.c compiles"
    if run read-meta.c 60 "$work/meta-c.out" "$work/read-meta" "$tiny" videotestsrc "$TINY_MODEL" &&
        msg=$(check_meta "$work/meta-c.out" 5 5 2>&1); then
        pass "read-meta (C): 5 buffers, fields present, map length = width x height"
    else
        fail "read-meta (C)" "${msg:-}"
    fi
else
    fail "read-meta.c compiles" "$(tail -n 5 "$work/gcc.log")"
fi

# Regions on a real defect (default model): C walks every region meta; Python sees the count and
# at least the first one (see read-meta.py on why it may not reach the others).
defect=$DATA/local/textile_0001.jpg
if [[ -f $demo/demo.logsad && -x $work/read-meta ]] &&
    run "read-meta on a defect" 60 "$work/defect-c.out" "$work/read-meta" "$demo/demo.logsad" "$defect" &&
    run "read-meta.py on a defect" 60 "$work/defect-py.out" "$PYTHON_GI" "$P/read-meta.py" \
        "$demo/demo.logsad" "$defect" &&
    msg=$(python3 - "$work/defect-c.out" "$work/defect-py.out" 2>&1 <<'EOF'
import json, sys
c = json.loads(open(sys.argv[1]).readline())
py = json.loads(open(sys.argv[2]).readline())
if not c["anomalous"] or not c["regions"]:
    sys.exit(f"expected an anomalous frame with regions, got {c['anomalous']}, {len(c['regions'])}")
if py["region_count"] != len(c["regions"]):
    sys.exit(f"Python counts {py['region_count']} regions, C reads {len(c['regions'])}")
if not py["regions"] or py["regions"][0]["score"] is None:
    sys.exit("Python did not read the first region and its score")
if abs(py["score"] - c["score"]) > 1e-9:
    sys.exit("C and Python disagree on the score")
print(f"{len(c['regions'])} regions in C, {len(py['regions'])} reachable from Python")
EOF
    ); then
    pass "regions on a local defect: $msg"
else
    fail "regions on a local defect" "${msg:-}"
fi

# --- message formats -----------------------------------------------------------------------------
# Every JSON line written above, the cameras' MQTT status messages and the lines of `logsad score`
# (an unreadable file included) follow the JSON Schemas of docs/schema/.
VENV_PY=${LOGSAD_DATA_DIR:-$REPO/.deps}/venv/bin/python
validate() { "$VENV_PY" "$REPO/tests/validate_schema.py" "$REPO/docs/schema/$1" "${@:2}" 2>&1; }
lines=()
for f in "$demo/demo.jsonl" "$logic/logic.jsonl" "$live/live.jsonl" "$rec/record.jsonl" \
    "$headless"/cam*.jsonl; do
    [[ -s $f ]] && lines+=("$f")
done
if ((${#lines[@]} >= 5)) && msg=$(validate anomalypublish-line.schema.json "${lines[@]}"); then
    pass "anomalypublish lines follow docs/schema (${#lines[@]} files, $msg)"
else
    fail "anomalypublish lines against docs/schema" "${msg:-only ${#lines[@]} files written}"
fi
if [[ -s $work/status.out ]] && msg=$(validate mqtt-status.schema.json "$work/status.out") &&
    msg=$(python3 - "$work/status.out" 2>&1 <<'EOF'
import json, sys
seen = {}
for line in open(sys.argv[1]):
    s = json.loads(line)
    seen.setdefault(s["stream"], []).append((s["online"], s.get("reason")))
want = {f"cam{i}": [(True, None), (False, "stopped")] for i in range(1, 5)}
if seen != want:
    sys.exit(f"status messages {seen}, expected online then stopped per camera")
EOF
    ); then
    pass "MQTT status: each camera online, then stopped, as docs/schema says"
else
    fail "MQTT status messages" "${msg:-no status.out}"
fi
mkdir -p "$work/score-in"
cp "$DATA/nominal/textile_0001.jpg" "$work/score-in/nominal.jpg" 2>/dev/null
cp "$DATA/local/textile_0001.jpg" "$work/score-in/local.jpg" 2>/dev/null
: >"$work/score-in/empty.png"
if [[ -f $demo/demo.logsad ]]; then
    "$LOGSAD_BIN" score --profile "$demo/demo.logsad" "$work/score-in" >"$work/score.jsonl" \
        2>"$work/score.err"
    rc=$?
fi
if [[ ${rc:-} == 1 ]] && [[ $(wc -l <"$work/score.jsonl") == 3 ]] &&
    msg=$(validate score-line.schema.json "$work/score.jsonl"); then
    pass "logsad score lines (an unreadable file among them) follow docs/schema: $msg"
else
    fail "logsad score lines against docs/schema" "${msg:-status ${rc:-none}, $(cat "$work/score.err" 2>/dev/null)}"
fi

echo "total $((SECONDS - total_start)) s"
echo "$passed passed, $failed failed"
((failed == 0))
