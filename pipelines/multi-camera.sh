#!/usr/bin/env bash
# multi-camera.sh: several cameras (4 in the demo) into ONE shared logsad model, the annotated
# cameras tiled in one window, one defect-clip folder and one JSON-lines file per camera.
#
#   for each camera N (stream camN):
#   SOURCE ! videoconvert ! RGB ! logsad model-instance-id=ID batch-size=CAMERAS ! anomalyoverlay
#     ! tee -> queue ! anomalypublish location=OUT/camN.jsonl [mqtt-url=MQTT_URL] ! fakesink
#           -> queue ! videoconvert ! I420 ! x264enc ! h264parse ! anomalyrecord location=OUT/clips/camN
#           -> queue ! videoscale ! TILE_WIDTHxTILE_HEIGHT ! textoverlay camN ! compositor (grid)
#   compositor ! videoconvert ! SINK            (no compositor branch with HEADLESS=1)
#
# One model for all cameras: every logsad element names the same model-instance-id, so the
# process loads the backbone once and one inference worker batches the frames of all cameras
# (up to batch-size frames per ONNX Runtime call). Each camera keeps its own profile state,
# results and frame order.
#
# No leaky queue in front of logsad (compare live-camera.sh): inference runs off the streaming
# thread, and with a live source drop-policy=auto skips frames that arrive while MAX_IN_FLIGHT
# frames of that camera are being analysed: they go on unanalysed (JSON line "analysed": false,
# "skipped": "busy"), so no frame is lost and latency does not grow. With files and image folders
# it waits instead, so every frame is analysed.
#
# The overlay sits before the tee, so clips and the mosaic are both annotated; anomalypublish
# reads the LogsadAnomalyMeta, which the overlay keeps. x264enc runs with tune=zerolatency: no
# lookahead, so the recording branch never holds frames back while the other branches' sinks
# have prerolled (which would hang the tee before PLAYING), and a live camera is not delayed.
# The JSON-lines queue is unbounded (lines are small) for the same reason.

set -euo pipefail

usage() {
    cat <<'EOF'
Usage: pipelines/multi-camera.sh [--help] [CAMERA...]

Runs several cameras (one per argument; with none, 4 "cameras" playing textile images) through
one shared logsad model: the annotated cameras tiled in one window (compositor), one folder of
defect clips and one JSON-lines file per camera, optionally published to MQTT. Stops on Ctrl-C
(EOS: open clips are finished and indexed, files complete) or at the end of the inputs.

A CAMERA is one of:
  /dev/videoN            a V4L2 camera (v4l2src)
  rtsp://... rtsps://... an RTSP stream (rtspsrc latency=RTSP_LATENCY, video only, decodebin)
  FOLDER                 a folder of .jpg or .png images, played at FPS in name order
  FILE                   a video file (filesrc ! decodebin)
  test                   a moving test picture (videotestsrc is-live=true, a pattern per camera)
  "FRAGMENT"             any gst-launch source fragment, e.g. "videotestsrc pattern=ball ! video/x-raw,width=640,height=480"

Without CAMERA arguments: the textile demo. Camera 1 and 3 see nominal textile images, camera
2 nominal ones with a local defect every 8th frame (frames 3, 11, ...), camera 4 the same with
global defects; FRAMES images each, at FPS. With no PROFILE it enrolls one with the `fast`
preset, the live-rate one (int8 backbone, docs/results.md "The fast preset"; $OUT/multi-camera.logsad,
4 references, 20 validation images, under a minute).

Settings (environment variables, defaults in brackets):
  PROFILE            profile written by `logsad enroll` [required with CAMERA arguments]
  PROFILE1, PROFILE2, ...  camera N's own profile (another product, the same model) [PROFILE]
  HEADLESS           1: no compositor and no window, only clips and JSON lines [0]
                     (pipelines/multi-camera-headless.sh is this script with HEADLESS=1)
  SINK               sink of the tiled picture [autovideosink sync=false when DISPLAY or
                     WAYLAND_DISPLAY is set, else an H.264 file $OUT/mosaic.mp4]; e.g. fakesink
  TILE_WIDTH, TILE_HEIGHT  size of one camera in the mosaic (aspect ratio kept) [480, 360]
  OUT                output folder: camN.jsonl, clips/camN/, mosaic.mp4 [out/multi-camera]
  STREAM_PREFIX      stream names are PREFIX1, PREFIX2, ... [cam]
  NUM_BUFFERS        stop each camera after this many frames (num-buffers of the source element:
                     devices, test pictures, folders and fragments; files and RTSP streams play
                     to their end) []
  FPS                frame rate of image folders and of the textile demo [2]
  FRAMES             images per camera in the textile demo [20]
  DATA               textile data for the demo [${LOGSAD_DATA_DIR:-$REPO/.deps}/data/textile]
  RTSP_LATENCY       rtspsrc jitter buffer, ms [200]
  INSTANCE_ID        model-instance-id shared by the cameras [multi-camera]
  BATCH_SIZE         most frames of all cameras per inference call [number of cameras]
  BATCH_TIMEOUT      µs to wait for more frames after the first of a batch; 0: only frames
                     already waiting, -1: a full batch, or as full as the cameras
                     still sending can make it [0]
  MAX_IN_FLIGHT      frames of one camera being analysed at once (0: 1 live, 2 otherwise) [0]
  DROP_POLICY        auto (skip when live, wait with files), skip or wait [auto]
  INTERVAL           analyse every Nth frame of each camera [1]
  THRESHOLD          verdict threshold on the calibrated score, negative = the profile's [-1]
  PRE_SECONDS        video kept before an event in a clip [2]
  POST_SECONDS       video kept after an event; an anomaly within it extends the clip [2]
  CONTAINER          clip container, mp4 or matroska [mp4]
  KEY_INT_MAX        frames between key frames, where clips can start [FPS for image folders, else 30]
  QUANTIZER          x264 constant quantizer of clips and mosaic (lower = better) [20]
  MQTT_URL           also publish every JSON line to this broker, mqtt://host[:port] or mqtts:// []
  MQTT_TOPIC         topic template, {stream} = camera's stream name [logsad/{stream}]
  PUBLISH_OPTIONS    more anomalypublish properties, e.g.
                     "mqtt-username=line3 mqtt-password=secret mqtt-ca-file=ca.pem" []
  OVERLAY_OPTIONS    more anomalyoverlay properties, e.g. "colormap=turbo opacity=0.3" []
  MODEL              model manifest, if the profile was not built with the default model []
  LOGSAD_BIN         logsad command, for the demo's enrollment [$REPO/target/release/logsad]
  LOGSAD_PLUGIN_DIR  folder holding libgstlogsad.so [$REPO/target/release]
  DEVICE             cpu, cuda or tensorrt [cpu]
  THREADS            ONNX Runtime threads, 0 = its default [0]

Examples:
  pipelines/multi-camera.sh                                    # textile demo, 4 cameras
  PROFILE=line3.logsad pipelines/multi-camera.sh /dev/video0 /dev/video2 \
      rtsp://10.0.0.7/stream1 rtsp://10.0.0.8/stream1
  PROFILE=line3.logsad HEADLESS=1 MQTT_URL=mqtt://localhost pipelines/multi-camera.sh test test test test
EOF
}

case "${1:-}" in
-h | --help)
    usage
    exit 0
    ;;
esac

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PROFILE=${PROFILE:-}
HEADLESS=${HEADLESS:-0}
TILE_WIDTH=${TILE_WIDTH:-480}
TILE_HEIGHT=${TILE_HEIGHT:-360}
OUT=${OUT:-out/multi-camera}
STREAM_PREFIX=${STREAM_PREFIX:-cam}
NUM_BUFFERS=${NUM_BUFFERS:-}
FPS=${FPS:-2}
FRAMES=${FRAMES:-20}
DATA=${DATA:-${LOGSAD_DATA_DIR:-$REPO/.deps}/data/textile}
RTSP_LATENCY=${RTSP_LATENCY:-200}
INSTANCE_ID=${INSTANCE_ID:-multi-camera}
BATCH_TIMEOUT=${BATCH_TIMEOUT:-0}
MAX_IN_FLIGHT=${MAX_IN_FLIGHT:-0}
DROP_POLICY=${DROP_POLICY:-auto}
INTERVAL=${INTERVAL:-1}
THRESHOLD=${THRESHOLD:--1}
PRE_SECONDS=${PRE_SECONDS:-2}
POST_SECONDS=${POST_SECONDS:-2}
CONTAINER=${CONTAINER:-mp4}
KEY_INT_MAX=${KEY_INT_MAX:-}
QUANTIZER=${QUANTIZER:-20}
MQTT_URL=${MQTT_URL:-}
MQTT_TOPIC=${MQTT_TOPIC:-'logsad/{stream}'}
PUBLISH_OPTIONS=${PUBLISH_OPTIONS:-}
OVERLAY_OPTIONS=${OVERLAY_OPTIONS:-}
MODEL=${MODEL:-}
LOGSAD_BIN=${LOGSAD_BIN:-$REPO/target/release/logsad}
LOGSAD_PLUGIN_DIR=${LOGSAD_PLUGIN_DIR:-$REPO/target/release}
DEVICE=${DEVICE:-cpu}
THREADS=${THREADS:-0}

export GST_PLUGIN_PATH="$LOGSAD_PLUGIN_DIR${GST_PLUGIN_PATH:+:$GST_PLUGIN_PATH}"

die() {
    echo "multi-camera.sh: $*" >&2
    exit 1
}

[[ $HEADLESS == 0 || $HEADLESS == 1 ]] || die "HEADLESS must be 0 or 1, not '$HEADLESS'"
[[ $CONTAINER == mp4 || $CONTAINER == matroska ]] || die "CONTAINER must be mp4 or matroska"
[[ $DROP_POLICY =~ ^(auto|skip|wait)$ ]] || die "DROP_POLICY must be auto, skip or wait"
[[ -z $NUM_BUFFERS || $NUM_BUFFERS =~ ^[1-9][0-9]*$ ]] || die "NUM_BUFFERS must be a positive number"
gst-inspect-1.0 logsad >/dev/null 2>&1 ||
    die "GStreamer cannot load the logsad plugin from $LOGSAD_PLUGIN_DIR (run: cargo build --release)"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/logsad-multi-camera.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$OUT"

cameras=("$@")

# --- the textile demo: 4 image folders as 4 cameras ----------------------------------------------
if ((${#cameras[@]} == 0)); then
    for kind in nominal local global; do
        [[ -d $DATA/$kind ]] || die "no $DATA/$kind (run: scripts/setup-deps.sh)"
    done
    DATA=$(cd "$DATA" && pwd) # the links below must not depend on the working directory
    [[ $FRAMES =~ ^[1-9][0-9]*$ ]] && ((FRAMES <= 200)) || die "FRAMES must be 1..200"
    image() { printf '%s/%s/textile_%04d.jpg' "$DATA" "$1" "$2"; }
    if [[ -z $PROFILE ]]; then
        [[ -x $LOGSAD_BIN ]] || die "no logsad command at $LOGSAD_BIN (run: cargo build --release)"
        PROFILE=$OUT/multi-camera.logsad
        refs=() vals=()
        for ((i = 1; i <= 4; i++)); do refs+=("$(image nominal "$i")"); done
        for ((i = 5; i <= 24; i++)); do vals+=("$(image nominal "$i")"); done
        echo "== enrolling 4 reference images, 20 validation images into $PROFILE"
        "$LOGSAD_BIN" enroll ${MODEL:+--model "$MODEL"} --device "$DEVICE" --threads "$THREADS" \
            --preset fast \
            --validation "${vals[@]}" --out "$PROFILE" "${refs[@]}"
    fi
    # Nominal test images from 101 on (never a reference or validation image of a profile enrolled
    # on the first 100), a different range per camera; defects from 1 on.
    for cam in 1 2 3 4; do
        dir=$tmp/textile-cam$cam
        mkdir -p "$dir"
        for ((i = 0; i < FRAMES; i++)); do
            src=$(image nominal $((cam * 200 - 99 + i)))
            if ((i % 8 == 3)) && ((cam == 2 || cam == 4)); then
                kind=local
                ((cam == 4)) && kind=global
                src=$(image "$kind" $((i / 8 + 1)))
            fi
            ln -s "$src" "$dir/$(printf 'frame_%05d.jpg' "$i")"
        done
        cameras+=("$dir")
    done
    echo "== textile demo: $FRAMES frames per camera at $FPS fps; camera 2 with local defects, camera 4 with global defects (frames 3, 11, 19, ...)"
fi

n=${#cameras[@]}
# Each camera's profile: PROFILEn, else PROFILE. Cameras on different products share the model.
profiles=()
for ((c = 1; c <= n; c++)); do
    var=PROFILE$c
    profile=${!var:-$PROFILE}
    [[ -n $profile ]] || die "no profile for camera $c: set PROFILE or $var (make one with: logsad enroll ... --out P.logsad)"
    [[ -f $profile ]] || die "profile $profile (camera $c) does not exist"
    profiles+=("$profile")
done

BATCH_SIZE=${BATCH_SIZE:-$n}

# source_for N SPEC: sets $source (a gst-launch fragment) and $key_int for camera N.
# $limit is num-buffers=NUM_BUFFERS, which belongs to the source element itself.
source_for() {
    local cam=$1 spec=$2 limit=${NUM_BUFFERS:+num-buffers=$NUM_BUFFERS}
    key_int=${KEY_INT_MAX:-30}
    case "$spec" in
    rtsp://* | rtsps://*)
        # rtspsrc makes one pad per stream; the caps filter picks the video one.
        source="rtspsrc location=\"$spec\" latency=$RTSP_LATENCY ! application/x-rtp,media=video ! decodebin"
        ;;
    /dev/video*)
        [[ -e $spec ]] || die "camera $cam: no device $spec"
        source="v4l2src device=\"$spec\" $limit"
        ;;
    test)
        # A different moving picture per camera: ball, snow, smpte, checkers-8, ...
        local patterns=(ball snow smpte checkers-8 circular zone-plate gamut spokes)
        source="videotestsrc is-live=true pattern=${patterns[$(((cam - 1) % 8))]} $limit ! video/x-raw,width=640,height=480,framerate=30/1"
        ;;
    *)
        if [[ -d $spec ]]; then
            # multifilesrc wants numbered names: link the images, sorted, as frame_00000.EXT.
            local dir=$tmp/cam$cam images i=0 ext caps decoder
            mapfile -t images < <(find "$spec" -maxdepth 1 \( -type f -o -type l \) \
                \( -iname '*.jpg' -o -iname '*.jpeg' -o -iname '*.png' \) | sort)
            ((${#images[@]} > 0)) || die "camera $cam: no .jpg or .png images in $spec"
            case "${images[0],,}" in
            *.png) ext=png caps=image/png decoder=pngdec ;;
            *) ext=jpg caps=image/jpeg decoder=jpegdec ;;
            esac
            mkdir -p "$dir"
            for img in "${images[@]}"; do
                ln -s "$(cd "$(dirname "$img")" && pwd)/$(basename "$img")" "$dir/$(printf 'frame_%05d' $i).$ext"
                i=$((i + 1))
            done
            source="multifilesrc location=\"$dir/frame_%05d.$ext\" index=0 $limit caps=$caps,framerate=$FPS/1 ! $decoder"
            key_int=${KEY_INT_MAX:-$FPS}
        elif [[ -f $spec ]]; then
            # Literal quotes keep a path with spaces in one piece through gst-launch's parser.
            source="filesrc location=\"$spec\" ! decodebin"
        elif [[ $spec == *[\ =!]* ]] || gst-inspect-1.0 --exists "$spec"; then
            source=$spec
            if [[ -n $limit && $source == *'!'* ]]; then
                source="${source%%!*} $limit !${source#*!}"
            elif [[ -n $limit ]]; then
                source="$source $limit"
            fi
        else
            die "camera $cam: '$spec' is no device, RTSP URL, folder, file, 'test' or pipeline fragment"
        fi
        ;;
    esac
}

# --- the pipeline ----------------------------------------------------------------------------------
cols=1
while ((cols * cols < n)); do cols=$((cols + 1)); done
mosaic=
if [[ $HEADLESS == 0 ]]; then
    if [[ -z ${SINK:-} ]]; then
        if [[ -n ${DISPLAY:-} || -n ${WAYLAND_DISPLAY:-} ]]; then
            SINK="autovideosink sync=false"
        else
            mosaic=$OUT/mosaic.mp4
            rm -f "$mosaic"
            SINK="x264enc tune=zerolatency speed-preset=veryfast pass=qual quantizer=$QUANTIZER ! mp4mux ! filesink location=\"$mosaic\""
        fi
    fi
    pipeline="compositor name=mix background=black"
    for ((c = 0; c < n; c++)); do
        pipeline+=" sink_$c::xpos=$((c % cols * TILE_WIDTH)) sink_$c::ypos=$((c / cols * TILE_HEIGHT))"
    done
    pipeline+=" ! videoconvert ! $SINK"
else
    pipeline=
fi

publish_mqtt=
[[ -n $MQTT_URL ]] && publish_mqtt="mqtt-url=\"$MQTT_URL\" mqtt-topic=\"$MQTT_TOPIC\""
names=()
for ((c = 0; c < n; c++)); do
    cam=$((c + 1))
    name=$STREAM_PREFIX$cam
    names+=("$name")
    source_for "$cam" "${cameras[$c]}"
    rm -f "$OUT/$name.jsonl"
    pipeline+=" $source ! videoconvert ! video/x-raw,format=RGB !"
    pipeline+=" logsad name=logsad_$name profile=\"${profiles[$c]}\" ${MODEL:+model=\"$MODEL\"}"
    pipeline+=" model-instance-id=\"$INSTANCE_ID\" batch-size=$BATCH_SIZE batch-timeout=$BATCH_TIMEOUT"
    pipeline+=" max-in-flight=$MAX_IN_FLIGHT drop-policy=$DROP_POLICY interval=$INTERVAL"
    pipeline+=" threshold=$THRESHOLD device=$DEVICE threads=$THREADS !"
    pipeline+=" anomalyoverlay $OVERLAY_OPTIONS ! tee name=t$cam"
    pipeline+=" t$cam. ! queue max-size-buffers=0 max-size-bytes=0 max-size-time=0 !"
    pipeline+=" anomalypublish location=\"$OUT/$name.jsonl\" stream-name=\"$name\" $publish_mqtt $PUBLISH_OPTIONS !"
    pipeline+=" fakesink sync=false"
    pipeline+=" t$cam. ! queue ! videoconvert ! video/x-raw,format=I420 !"
    pipeline+=" x264enc tune=zerolatency speed-preset=veryfast pass=qual quantizer=$QUANTIZER key-int-max=$key_int !"
    pipeline+=" h264parse ! anomalyrecord location=\"$OUT/clips/$name\" stream-name=\"$name\""
    pipeline+=" container=$CONTAINER pre-seconds=$PRE_SECONDS post-seconds=$POST_SECONDS"
    if [[ $HEADLESS == 0 ]]; then
        pipeline+=" t$cam. ! queue ! videoscale ! videoconvert !"
        pipeline+=" video/x-raw,width=$TILE_WIDTH,height=$TILE_HEIGHT,pixel-aspect-ratio=1/1 !"
        pipeline+=" textoverlay text=\"$name\" valignment=bottom halignment=left font-desc=\"Sans 12\" ! mix.sink_$c"
    fi
done

echo "== $n camera(s) into model instance '$INSTANCE_ID' (batch-size $BATCH_SIZE); output in $OUT"
log=$tmp/gst.log
# -e: Ctrl-C sends EOS, so open clips are finished and indexed and the JSON lines are complete.
# -m: the clips' logsad-clip messages, for the summary. The pipeline is split into words on
# purpose and gst-launch joins them again, so the literal quotes keep a path with spaces in one
# piece; set -f keeps a path with * or ? from being expanded.
set -f
# shellcheck disable=SC2086
if ! gst-launch-1.0 -e -m $pipeline >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    die "the pipeline failed"
fi
set +f
if grep -q 'WARNING' "$log"; then grep -A2 'WARNING' "$log" >&2; fi

# --- summary ---------------------------------------------------------------------------------------
for name in "${names[@]}"; do
    jsonl=$OUT/$name.jsonl
    frames=$(grep -c . "$jsonl" || true)
    # A frame left unanalysed (skipped, or between INTERVALs) carries the last result, stale.
    analysed=$(grep -c '"stale":false' "$jsonl" || true)
    anomalous=$(grep -c '"anomalous":true' "$jsonl" || true)
    clips=$(grep 'logsad-clip, path=' "$log" | grep -cF "$OUT/clips/$name/" || true)
    echo "$name: $frames frames, $analysed analysed, $anomalous anomalous; $clips clip(s) in $OUT/clips/$name"
done
[[ -n $mosaic ]] && echo "mosaic (no display): $mosaic"
exit 0
