/*
 * read-meta.c: read logsad's anomaly metadata in a pad probe, from C, without the plugin's
 * Rust types. The C twin of read-meta.py.
 *
 * Build:
 *   gcc read-meta.c $(pkg-config --cflags --libs gstreamer-1.0 gstreamer-video-1.0) -o read-meta
 *
 * Run (GST_PLUGIN_PATH must point at the folder holding libgstlogsad.so):
 *   GST_PLUGIN_PATH=target/release ./read-meta PROFILE [INPUT] [MODEL]
 *
 * INPUT is "videotestsrc" (the default: NUM_BUFFERS frames of a test pattern, env NUM_BUFFERS,
 * default 5) or a video/image file (decodebin). MODEL is a model manifest, needed only when
 * the profile was not built with the default model.
 *
 * Runs `INPUT ! videoconvert ! logsad ! fakesink` and prints one JSON object per buffer:
 * - the LogsadAnomalyMeta custom meta (gst_buffer_get_custom_meta +
 *   gst_custom_meta_get_structure): score, calibrated, anomalous, threshold, map-threshold,
 *   stale, frame, detectors, map-width, map-height, deinterlaced;
 * - meta_regions: the meta's "regions" field, a GstValueArray of GstStructures (gst_value_array_*
 *   and gst_value_get_structure), each region's box relative to the frame (x, y, width, height
 *   in 0..1) and its score; these survive videoconvert and videoscale after logsad;
 * - the anomaly map, a GBytes of native-endian float32 (gst_structure_get with G_TYPE_BYTES):
 *   map_len (number of values), map_min, map_max, map_mean;
 * - every GstVideoRegionOfInterestMeta of type "anomaly" (gst_buffer_iterate_meta_filtered),
 *   the same regions in pixels, with the "score" of its "anomaly" parameter structure.
 */
#include <gst/gst.h>
#include <gst/video/video.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define META_NAME "LogsadAnomalyMeta"
#define ROI_TYPE "anomaly"

/* JSON has no NaN or infinity: print them as null. */
static void
print_number (const char *name, gdouble v)
{
  if (isfinite (v))
    printf ("\"%s\":%.17g", name, v);
  else
    printf ("\"%s\":null", name);
}

static GstPadProbeReturn
probe (GstPad * pad, GstPadProbeInfo * info, gpointer user_data)
{
  GstBuffer *buf = GST_PAD_PROBE_INFO_BUFFER (info);
  GstCustomMeta *meta;
  const GstStructure *s;
  gdouble score = NAN, calibrated = NAN, threshold = NAN, map_threshold = NAN;
  gboolean anomalous = FALSE, stale = FALSE, deinterlaced = FALSE;
  const GValue *meta_regions;
  guint64 frame = 0;
  guint map_w = 0, map_h = 0;
  const gchar *detectors;
  GBytes *map = NULL;
  gpointer state = NULL;
  GstMeta *m;
  gboolean first = TRUE;

  if (GST_BUFFER_PTS_IS_VALID (buf))
    printf ("{\"pts\":%" G_GUINT64_FORMAT, GST_BUFFER_PTS (buf));
  else
    printf ("{\"pts\":null");

  meta = gst_buffer_get_custom_meta (buf, META_NAME);
  if (meta == NULL) {
    printf (",\"meta\":false}\n");
    fflush (stdout);
    return GST_PAD_PROBE_OK;
  }
  s = gst_custom_meta_get_structure (meta);
  gst_structure_get (s,
      "score", G_TYPE_DOUBLE, &score,
      "calibrated", G_TYPE_DOUBLE, &calibrated,
      "anomalous", G_TYPE_BOOLEAN, &anomalous,
      "threshold", G_TYPE_DOUBLE, &threshold,
      "map-threshold", G_TYPE_DOUBLE, &map_threshold,
      "stale", G_TYPE_BOOLEAN, &stale, "frame", G_TYPE_UINT64, &frame, NULL);
  gst_structure_get_boolean (s, "deinterlaced", &deinterlaced);
  printf (",\"meta\":true,");
  print_number ("score", score);
  printf (",");
  print_number ("calibrated", calibrated);
  printf (",\"anomalous\":%s,", anomalous ? "true" : "false");
  print_number ("threshold", threshold);
  printf (",");
  print_number ("map-threshold", map_threshold);
  printf (",\"stale\":%s,\"frame\":%" G_GUINT64_FORMAT, stale ? "true" : "false", frame);
  /* Detector names are plain identifiers ("patch"): no JSON escaping needed. */
  detectors = gst_structure_get_string (s, "detectors");
  printf (",\"detectors\":\"%s\"", detectors ? detectors : "");
  printf (",\"deinterlaced\":%s", deinterlaced ? "true" : "false");

  /* The regions, relative to the frame: an array of "region" structures. */
  meta_regions = gst_structure_get_value (s, "regions");
  if (meta_regions && GST_VALUE_HOLDS_ARRAY (meta_regions)) {
    guint i, n = gst_value_array_get_size (meta_regions);

    printf (",\"meta_regions\":[");
    for (i = 0; i < n; i++) {
      const GValue *v = gst_value_array_get_value (meta_regions, i);
      const GstStructure *r = GST_VALUE_HOLDS_STRUCTURE (v) ? gst_value_get_structure (v) : NULL;
      gdouble x = NAN, y = NAN, w = NAN, h = NAN, region_score = NAN;

      if (r)
        gst_structure_get (r, "x", G_TYPE_DOUBLE, &x, "y", G_TYPE_DOUBLE, &y,
            "width", G_TYPE_DOUBLE, &w, "height", G_TYPE_DOUBLE, &h,
            "score", G_TYPE_DOUBLE, &region_score, NULL);
      printf ("%s{", i ? "," : "");
      print_number ("x", x);
      printf (",");
      print_number ("y", y);
      printf (",");
      print_number ("width", w);
      printf (",");
      print_number ("height", h);
      printf (",");
      print_number ("score", region_score);
      printf ("}");
    }
    printf ("]");
  }

  /* The map: width x height native-endian float32, row-major, covering the whole frame. */
  if (gst_structure_get (s, "map-width", G_TYPE_UINT, &map_w,
          "map-height", G_TYPE_UINT, &map_h, "map", G_TYPE_BYTES, &map, NULL)) {
    gsize size;
    const float *values = g_bytes_get_data (map, &size);
    gsize n = size / sizeof (float), i, finite = 0;
    gdouble lo = INFINITY, hi = -INFINITY, sum = 0;

    for (i = 0; i < n; i++) {
      float v;
      /* GBytes data need not be aligned for float: copy each value out. */
      memcpy (&v, (const guint8 *) values + i * sizeof (float), sizeof v);
      if (!isfinite (v))
        continue;
      lo = MIN (lo, v);
      hi = MAX (hi, v);
      sum += v;
      finite++;
    }
    printf (",\"map-width\":%u,\"map-height\":%u,\"map_len\":%" G_GSIZE_FORMAT ",",
        map_w, map_h, n);
    print_number ("map_min", finite ? lo : NAN);
    printf (",");
    print_number ("map_max", finite ? hi : NAN);
    printf (",");
    print_number ("map_mean", finite ? sum / finite : NAN);
    g_bytes_unref (map);
  }

  /* Every region-of-interest meta of type "anomaly". */
  printf (",\"regions\":[");
  while ((m = gst_buffer_iterate_meta_filtered (buf, &state,
              GST_VIDEO_REGION_OF_INTEREST_META_API_TYPE))) {
    GstVideoRegionOfInterestMeta *roi = (GstVideoRegionOfInterestMeta *) m;
    GstStructure *param;
    gdouble region_score = NAN;

    if (roi->roi_type != g_quark_from_static_string (ROI_TYPE))
      continue;
    param = gst_video_region_of_interest_meta_get_param (roi, ROI_TYPE);
    if (param)
      gst_structure_get_double (param, "score", &region_score);
    printf ("%s{\"id\":%d,\"x\":%u,\"y\":%u,\"width\":%u,\"height\":%u,",
        first ? "" : ",", roi->id, roi->x, roi->y, roi->w, roi->h);
    print_number ("score", region_score);
    printf ("}");
    first = FALSE;
  }
  printf ("]}\n");
  fflush (stdout);
  return GST_PAD_PROBE_OK;
}

int
main (int argc, char **argv)
{
  const gchar *profile, *input, *model;
  const gchar *num_buffers = g_getenv ("NUM_BUFFERS");
  gchar *source, *description, *model_prop;
  GstElement *pipeline, *detector;
  GstPad *pad;
  GstBus *bus;
  GstMessage *msg;
  GError *error = NULL;
  int status = 0;

  gst_init (&argc, &argv);
  if (argc < 2 || argc > 4) {
    fprintf (stderr, "usage: %s PROFILE [INPUT: videotestsrc | FILE] [MODEL]\n", argv[0]);
    return 2;
  }
  profile = argv[1];
  input = argc > 2 ? argv[2] : "videotestsrc";
  model = argc > 3 ? argv[3] : NULL;

  if (strcmp (input, "videotestsrc") == 0)
    source = g_strdup_printf ("videotestsrc num-buffers=%s pattern=ball ! "
        "video/x-raw,width=320,height=240,framerate=10/1", num_buffers ? num_buffers : "5");
  else
    source = g_strdup_printf ("filesrc location=\"%s\" ! decodebin", input);
  model_prop = model ? g_strdup_printf (" model=\"%s\"", model) : g_strdup ("");
  description = g_strdup_printf ("%s ! videoconvert ! logsad name=detector "
      "profile=\"%s\"%s ! fakesink", source, profile, model_prop);

  pipeline = gst_parse_launch (description, &error);
  g_free (source);
  g_free (model_prop);
  g_free (description);
  if (pipeline == NULL || error != NULL) {
    fprintf (stderr, "read-meta: cannot build the pipeline (is the logsad plugin on "
        "GST_PLUGIN_PATH?): %s\n", error ? error->message : "unknown error");
    g_clear_error (&error);
    return 1;
  }

  detector = gst_bin_get_by_name (GST_BIN (pipeline), "detector");
  pad = gst_element_get_static_pad (detector, "src");
  gst_pad_add_probe (pad, GST_PAD_PROBE_TYPE_BUFFER, probe, NULL, NULL);
  gst_object_unref (pad);
  gst_object_unref (detector);

  gst_element_set_state (pipeline, GST_STATE_PLAYING);
  bus = gst_element_get_bus (pipeline);
  msg = gst_bus_timed_pop_filtered (bus, GST_CLOCK_TIME_NONE,
      GST_MESSAGE_EOS | GST_MESSAGE_ERROR);
  if (GST_MESSAGE_TYPE (msg) == GST_MESSAGE_ERROR) {
    gchar *debug = NULL;
    gst_message_parse_error (msg, &error, &debug);
    fprintf (stderr, "read-meta: %s (%s)\n", error->message, debug ? debug : "");
    g_clear_error (&error);
    g_free (debug);
    status = 1;
  }
  gst_message_unref (msg);
  gst_object_unref (bus);
  gst_element_set_state (pipeline, GST_STATE_NULL);
  gst_object_unref (pipeline);
  return status;
}
