#!/usr/bin/env python3
"""Read the logsad anomaly metadata from Python, without any of the plugin's Rust types.

    read_meta.py PROFILE MODEL [NUM_BUFFERS [THRESHOLD [REGION_PEAK_FRACTION]]]

Runs `videotestsrc num-buffers=N ! video/x-raw,width=64,height=64 ! logsad [threshold=T region-peak-fraction=F] !
videoscale ! video/x-raw,width=96,height=96 ! fakesink` and, in a pad probe on the fakesink,
reads each buffer's `LogsadAnomalyMeta` custom meta: the fields of its structure, the anomaly
map (GBytes of native-endian float32), the regions and the fired rules (arrays of structures,
read with `Gst.Structure.get_array`; each rule's `instances` too). Prints one JSON object per buffer on standard output; non-finite
numbers are printed as null. Exits non-zero on a pipeline error. Used by tests/logsad.rs
(`metadata_is_readable_from_python`), which points GST_PLUGIN_PATH at the built plugin.
"""

import json
import math
import struct
import sys
import warnings

import gi

gi.require_version("Gst", "1.0")
from gi.repository import Gst  # noqa: E402


def field(structure, name):
    """A structure field as a plain Python value, or None if it is missing."""
    if not structure.has_field(name):
        return None
    return structure.get_value(name)


def regions(structure):
    """The `regions` array of structures as a list of dicts, or None if the field is missing."""
    if not structure.has_field("regions"):
        return None
    # PyGObject cannot convert a GstValueArray itself; gst_structure_get_array hands it over as
    # a GObject.ValueArray, whose get_nth GLib marks deprecated (it still works).
    ok, array = structure.get_array("regions")
    if not ok:
        return None
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        items = [array.get_nth(i) for i in range(array.n_values)]
    for region in items:
        out.append({name: region.get_value(name)
                    for name in ("x", "y", "width", "height", "score")})
    return out


def finite(value):
    """JSON has no infinity nor NaN: None instead."""
    return value if value is None or math.isfinite(value) else None


def structures(structure, name):
    """The GstStructures of the GstValueArray field `name` (an empty list when missing)."""
    if not structure.has_field(name):
        return []
    ok, array = structure.get_array(name)
    if not ok:
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        # Copies: the items belong to `array`, which is freed on return.
        return [array.get_nth(i).copy() for i in range(array.n_values)]


def rules(structure):
    """The fired `rules` as a list of dicts, unbounded ends as None (empty when missing)."""
    out = []
    for rule in structures(structure, "rules"):
        item = {"name": rule.get_value("name"), "message": rule.get_value("message")}
        for name in ("measured", "min", "max"):
            item[name] = finite(rule.get_value(name))
        item["instances"] = [{name: box.get_value(name) for name in ("x", "y", "width", "height")}
                             for box in structures(rule, "instances")]
        out.append(item)
    return out


def read(buffer):
    meta = buffer.get_custom_meta("LogsadAnomalyMeta")
    if meta is None:
        return {"meta": False}
    s = meta.get_structure()
    out = {"meta": True, "name": s.get_name()}
    for name in ("score", "calibrated", "threshold", "map-threshold", "patch-score",
                 "patch-calibrated"):
        value = field(s, name)
        # JSON has no infinity (threshold 0 gives a map threshold of -inf): null instead.
        out[name] = value if value is None or math.isfinite(value) else None
    for name in ("anomalous", "stale", "frame", "detectors", "map-width", "map-height",
                 "deinterlaced"):
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
    out["regions"] = regions(s)
    out["rules"] = rules(s)
    return out


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    profile, model = argv[1], argv[2]
    buffers = int(argv[3]) if len(argv) > 3 else 3
    Gst.init(None)
    # videoscale after logsad: the regions must survive it.
    pipeline = Gst.parse_launch(
        "videotestsrc num-buffers=%d ! video/x-raw,width=64,height=64 ! "
        "logsad name=detector ! videoscale ! video/x-raw,width=96,height=96 ! "
        "fakesink name=sink" % buffers)
    detector = pipeline.get_by_name("detector")
    detector.set_property("profile", profile)
    detector.set_property("model", model)
    if len(argv) > 4:
        detector.set_property("threshold", float(argv[4]))
    if len(argv) > 5:
        detector.set_property("region-peak-fraction", float(argv[5]))

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
