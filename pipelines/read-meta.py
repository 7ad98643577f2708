#!/usr/bin/python3
"""Read logsad's anomaly metadata in a pad probe, from Python, without the plugin's Rust types.

    read-meta.py PROFILE [INPUT] [--model MANIFEST] [--num-buffers N] [--start-index I] [--full-map]

INPUT is `videotestsrc` (the default: N frames of a test pattern), a video or image file
(decodebin), or a numbered image pattern such as `frames/frame_%04d.jpg` (multifilesrc, N images
from number I).

Runs `INPUT ! videoconvert ! logsad profile=PROFILE ! fakesink` and, in a probe on logsad's source
pad, prints one JSON object per buffer:

- the fields of the `LogsadAnomalyMeta` custom meta, read with
  `buffer.get_custom_meta("LogsadAnomalyMeta").get_structure()`: score, calibrated, anomalous,
  threshold, map-threshold, stale, frame, detectors (and each detector's `NAME-score` and
  `NAME-calibrated`), map-width, map-height, deinterlaced;
- `meta_regions`: the meta's `regions` field, every anomalous region with its box relative to
  the frame (x, y, width, height in 0..1) and score. It is a GstValueArray of GstStructures,
  which PyGObject cannot convert itself: `structure.get_array("regions")` hands it over as a
  GObject.ValueArray, read with `get_nth(i)` (deprecated by GLib, still working). These boxes
  survive videoconvert and videoscale after logsad;
- `rules`: the meta's `rules` field, the composition rules that fired, each with name, measured,
  min, max (null where unbounded), message and `instances` (boxes relative to the frame of the
  instances of the parts it concerns); arrays of structures read like `regions` (the rule's
  `instances` with `rule.get_array("instances")`). Empty when none fired;
- the anomaly map (a GLib.Bytes of native-endian float32, row-major, map-width x map-height):
  `map_len` (number of values), `map_min`, `map_max`, `map_mean`, and with --full-map the values;
- the `GstVideoRegionOfInterestMeta`s of type "anomaly" (the same regions in pixels, for other
  consumers): `region_count` (all of them, from `Gst.Buffer.get_n_meta`) and `regions` (those
  Python can reach, see below).

ROI metas from Python: the 1.22 bindings cannot walk a buffer's metas. `iterate_meta` is not
exposed (its `gpointer *` state cannot be passed), and `foreach_meta`/`remove_meta` need a
writable buffer, which no buffer seen from PyGObject is (the bindings hold extra references).
The only way in is `GstVideo.buffer_get_video_region_of_interest_meta_id(buffer, id)`, which
returns the first ROI meta with that id. This script asks for ids 0, 1, 2, ... (logsad numbers
its regions from 0). `meta_regions` needs none of this.

Needs Debian's python3 with python3-gi and gir1.2-gstreamer-1.0 (hence /usr/bin/python3), and
GST_PLUGIN_PATH pointing at the folder of libgstlogsad.so (default here: ../target/release).
"""

import argparse
import json
import math
import os
import struct
import sys
import warnings

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstVideo", "1.0")
from gi.repository import GLib, Gst, GstVideo  # noqa: E402

META_NAME = "LogsadAnomalyMeta"
ROI_TYPE = "anomaly"


def field(structure, name):
    """A structure field as a plain Python value, or None when it is missing."""
    return structure.get_value(name) if structure.has_field(name) else None


def finite(v):
    """JSON has no NaN or infinity: write them as null."""
    return v if v is None or math.isfinite(v) else None


def read_regions(buffer):
    """The anomaly regions Python can reach: see the module docstring."""
    api = GstVideo.video_region_of_interest_meta_api_get_type()
    count = buffer.get_n_meta(api)
    regions = []
    for roi_id in range(count + 1):
        roi = GstVideo.buffer_get_video_region_of_interest_meta_id(buffer, roi_id)
        if roi is None:
            continue
        if GLib.quark_to_string(roi.roi_type) != ROI_TYPE:
            continue
        param = roi.get_param(ROI_TYPE)
        score = None
        if param is not None and param.has_field("score"):
            score = finite(param.get_value("score"))
        regions.append({"id": roi.id, "x": roi.x, "y": roi.y, "width": roi.w, "height": roi.h,
                        "score": score})
        if len(regions) == count:
            break
    return count, regions


def read_meta_regions(structure):
    """The custom meta's `regions` array as a list of dicts (None when the field is missing)."""
    if not structure.has_field("regions"):
        return None
    ok, array = structure.get_array("regions")
    if not ok:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        items = [array.get_nth(i) for i in range(array.n_values)]
    return [{name: finite(region.get_value(name))
             for name in ("x", "y", "width", "height", "score")} for region in items]


def value_array(structure, name):
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


def read_rules(structure):
    """The custom meta's fired `rules` as a list of dicts (empty when the field is missing)."""
    out = []
    for rule in value_array(structure, "rules"):
        item = {"name": rule.get_value("name"), "message": rule.get_value("message")}
        for name in ("measured", "min", "max"):
            item[name] = finite(rule.get_value(name))
        item["instances"] = [{name: finite(box.get_value(name))
                              for name in ("x", "y", "width", "height")}
                             for box in value_array(rule, "instances")]
        out.append(item)
    return out


def read(buffer, full_map):
    out = {"pts": None if buffer.pts == Gst.CLOCK_TIME_NONE else buffer.pts}
    meta = buffer.get_custom_meta(META_NAME)
    if meta is None:
        out["meta"] = False
        return out
    s = meta.get_structure()
    out["meta"] = True
    for name in ("score", "calibrated", "threshold", "map-threshold"):
        out[name] = finite(field(s, name))
    for name in ("anomalous", "stale", "frame", "detectors", "map-width", "map-height",
                 "deinterlaced"):
        out[name] = field(s, name)
    out["meta_regions"] = read_meta_regions(s)
    out["rules"] = read_rules(s)
    detectors = [d for d in (out["detectors"] or "").split(",") if d]
    out["detector_scores"] = {
        d: {"score": finite(field(s, f"{d}-score")),
            "calibrated": finite(field(s, f"{d}-calibrated"))}
        for d in detectors
    }
    data = field(s, "map")  # GLib.Bytes
    if data is not None:
        raw = data.get_data()
        values = struct.unpack("=%df" % (len(raw) // 4), raw)  # native-endian float32
        good = [v for v in values if math.isfinite(v)]
        out["map_len"] = len(values)
        out["map_min"] = min(good) if good else None
        out["map_max"] = max(good) if good else None
        out["map_mean"] = sum(good) / len(good) if good else None
        if full_map:
            out["map"] = [finite(v) for v in values]
    out["region_count"], out["regions"] = read_regions(buffer)
    return out


def source_fragment(source, num_buffers, start_index):
    if source == "videotestsrc":
        return (f"videotestsrc num-buffers={num_buffers} pattern=ball ! "
                "video/x-raw,width=320,height=240,framerate=10/1")
    if "%" in source:
        caps = "image/png" if source.lower().endswith(".png") else "image/jpeg"
        return (f'multifilesrc location="{source}" start-index={start_index} '
                f"index={start_index} num-buffers={num_buffers} "
                f"caps={caps},framerate=2/1 ! decodebin")
    if not os.path.isfile(source):
        sys.exit(f"read-meta.py: {source} is neither videotestsrc, a file nor a %d pattern")
    return f'filesrc location="{source}" ! decodebin'


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profile", help="profile written by `logsad enroll`")
    parser.add_argument("input", nargs="?", default="videotestsrc",
                        help="videotestsrc (default), a video/image file, or a %%d image pattern")
    parser.add_argument("--model", help="model manifest, when the profile needs a non-default one")
    parser.add_argument("--num-buffers", type=int, default=5,
                        help="frames of videotestsrc or of an image pattern (default 5)")
    parser.add_argument("--start-index", type=int, default=0,
                        help="first number of an image pattern (default 0)")
    parser.add_argument("--full-map", action="store_true", help="print every map value")
    args = parser.parse_args()

    if "GST_PLUGIN_PATH" not in os.environ:
        here = os.path.dirname(os.path.abspath(__file__))
        os.environ["GST_PLUGIN_PATH"] = os.environ.get(
            "LOGSAD_PLUGIN_DIR", os.path.join(here, "..", "target", "release"))
    Gst.init(None)

    model = f' model="{args.model}"' if args.model else ""
    description = (f"{source_fragment(args.input, args.num_buffers, args.start_index)} ! videoconvert ! "
                   f'logsad name=detector profile="{args.profile}"{model} ! fakesink')
    try:
        pipeline = Gst.parse_launch(description)
    except GLib.Error as e:
        sys.exit(f"read-meta.py: cannot build the pipeline (is the logsad plugin on "
                 f"GST_PLUGIN_PATH?): {e.message}")

    def probe(_pad, info):
        print(json.dumps(read(info.get_buffer(), args.full_map)), flush=True)
        return Gst.PadProbeReturn.OK

    pad = pipeline.get_by_name("detector").get_static_pad("src")
    pad.add_probe(Gst.PadProbeType.BUFFER, probe)

    pipeline.set_state(Gst.State.PLAYING)
    bus = pipeline.get_bus()
    msg = bus.timed_pop_filtered(Gst.CLOCK_TIME_NONE, Gst.MessageType.EOS | Gst.MessageType.ERROR)
    pipeline.set_state(Gst.State.NULL)
    if msg.type == Gst.MessageType.ERROR:
        err, debug = msg.parse_error()
        sys.exit(f"read-meta.py: {err.message} ({debug})")


if __name__ == "__main__":
    main()
