#!/usr/bin/env bash
# multi-camera-headless.sh: multi-camera.sh without the tiled window (HEADLESS=1): several
# cameras into one shared logsad model, one folder of defect clips and one JSON-lines file per
# camera, and every line to MQTT when MQTT_URL is set. Same arguments and settings; --help
# shows them.
#
#   pipelines/multi-camera-headless.sh                      # the textile demo, 4 cameras
#   PROFILE=line3.logsad MQTT_URL=mqtt://broker pipelines/multi-camera-headless.sh \
#       rtsp://10.0.0.7/stream1 rtsp://10.0.0.8/stream1 /dev/video0 /dev/video2
HEADLESS=1 exec "$(dirname "${BASH_SOURCE[0]}")/multi-camera.sh" "$@"
