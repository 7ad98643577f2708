#!/usr/bin/env bash
# tests/pipelines.sh: runs every script in pipelines/ on short input and checks what it writes.
#
#   demo.sh           3 nominal + 2 local frames, default model, 2x2 tiles, 1 reference image
#   logic-demo.sh     3 good trays + 2 logical anomalies, default model, logsad preset
#   live-camera.sh    videotestsrc + fakesink, 5 buffers, tiny model; then 30 buffers at 30 fps
#                     with the default model, where the leaky queue must drop frames
#   record-defects.sh 5 textile images at 2 fps, tiny model, every frame anomalous: one clip
#   read-meta.py      videotestsrc with the tiny model; a local defect with the default model
#   read-meta.c       compiled with gcc, the same two runs
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
# Frames 0-2 are good trays (no rule fires), frame 3 a missing pin (a count rule fires, score 1).
if msg=$(python3 - "$logic/logic.jsonl" 2>&1 <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
assert all(not l["rules"] for l in lines[:3]), [l["rules"] for l in lines[:3]]
missing = lines[3]
assert missing["calibrated"] == 1.0 and missing["anomalous"], missing
assert any(r["name"].startswith("count(") for r in missing["rules"]), missing["rules"]
PY
); then
    pass "logic.jsonl: the missing pin fires a count rule, good trays none"
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
# The leaky queue with a detector slower than the source: 30 frames in one second, each taking
# far longer than 1/30 s on a CPU with the default model and 2x2 tiles, so most are dropped
# (never more lines than frames, and the pipeline must still end).
if [[ -f $demo/demo.logsad ]] &&
    run "live-camera.sh (slow detector)" 120 "$work/live-slow.log" env \
        SOURCE="videotestsrc is-live=true pattern=ball ! video/x-raw,width=250,height=250,framerate=30/1" \
        SINK=fakesink NUM_BUFFERS=30 JSONL="$live/slow.jsonl" "$P/live-camera.sh" "$demo/demo.logsad" &&
    msg=$(check_jsonl "$live/slow.jsonl" 1 30 frame analysed score 2>&1); then
    pass "live-camera.sh with a slow detector ($(wc -l <"$live/slow.jsonl") of 30 frames analysed)"
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

echo "total $((SECONDS - total_start)) s"
echo "$passed passed, $failed failed"
((failed == 0))
