#!/usr/bin/env python3
"""Read the logsad anomaly metadata from Python, without any of the plugin's Rust types.

    read_meta.py PROFILE MODEL [NUM_BUFFERS]

Runs `videotestsrc num-buffers=N ! video/x-raw,width=64,height=64 ! logsad ! fakesink` and, in
a pad probe on the fakesink, reads each buffer's `LogsadAnomalyMeta` custom meta: the fields of
its structure and the anomaly map (GBytes of native-endian float32). Prints one JSON object per
buffer on standard output; non-finite map values are printed as null. Exits non-zero on a
pipeline error. Used by tests/logsad.rs (`metadata_is_readable_from_python`), which points
GST_PLUGIN_PATH at the built plugin.
"""

import json
import math
import struct
import sys

import gi

gi.require_version("Gst", "1.0")
from gi.repository import Gst  # noqa: E402


def field(structure, name):
    """A structure field as a plain Python value, or None if it is missing."""
    if not structure.has_field(name):
        return None
    return structure.get_value(name)


def read(buffer):
    meta = buffer.get_custom_meta("LogsadAnomalyMeta")
    if meta is None:
        return {"meta": False}
    s = meta.get_structure()
    out = {"meta": True, "name": s.get_name()}
    for name in ("score", "calibrated", "threshold", "map-threshold", "patch-score",
                 "patch-calibrated"):
        out[name] = field(s, name)
    for name in ("anomalous", "stale", "frame", "detectors", "map-width", "map-height"):
        out[name] = field(s, name)
    out["frame"] = int(out["frame"]) if out["frame"] is not None else None
    data = field(s, "map")
    if data is not None:
        raw = data.get_data()
        values = struct.unpack("=%df" % (len(raw) // 4), raw)
        out["map-bytes"] = len(raw)
        out["map"] = [v if math.isfinite(v) else None for v in values]
    else:
        out["map"] = None
    return out


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    profile, model = argv[1], argv[2]
    buffers = int(argv[3]) if len(argv) > 3 else 3
    Gst.init(None)
    pipeline = Gst.parse_launch(
        "videotestsrc num-buffers=%d ! video/x-raw,width=64,height=64 ! "
        "logsad name=detector ! fakesink name=sink" % buffers)
    detector = pipeline.get_by_name("detector")
    detector.set_property("profile", profile)
    detector.set_property("model", model)

    results = []

    def probe(_pad, info):
        results.append(read(info.get_buffer()))
        return Gst.PadProbeReturn.OK

    sinkpad = pipeline.get_by_name("sink").get_static_pad("sink")
    sinkpad.add_probe(Gst.PadProbeType.BUFFER, probe)

    pipeline.set_state(Gst.State.PLAYING)
    bus = pipeline.get_bus()
    message = bus.timed_pop_filtered(60 * Gst.SECOND,
                                      Gst.MessageType.ERROR | Gst.MessageType.EOS)
    pipeline.set_state(Gst.State.NULL)
    if message is None:
        print("timed out waiting for EOS", file=sys.stderr)
        return 1
    if message.type == Gst.MessageType.ERROR:
        error, debug = message.parse_error()
        print("pipeline error: %s (%s)" % (error.message, debug), file=sys.stderr)
        return 1
    for result in results:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
