/**
 * SECTION:element-anomalypublish
 * @see_also: logsad, anomalyoverlay
 *
 * Writes the LogSAD anomaly result of every buffer as one JSON line ("JSON lines" format) to a
 * file or to standard output, in the spirit of DL Streamer's `gvametapublish file-format=json-lines`.
 *
 * The element is an always-in-place passthrough: buffers, caps and events go through unchanged.
 * Its pads accept `ANY` caps, so it can sit anywhere after the analysing element (typically right
 * after `logsad`, or after `videoconvert`/`videoscale`, which keep the anomaly meta).
 *
 * Each line is one JSON object:
 *
 * ```json
 * {"timestamp": 33333333, "pts": "0:00:00.033", "wall_time": "2026-12-08T01:23:56.123Z",
 *  "frame": 1, "stream": "cam0", "analysed": true,
 *  "score": 0.82, "calibrated": 0.97, "anomalous": true, "threshold": 0.5, "stale": false,
 *  "analysed_frame": 1, "detectors": {"patch": {"score": 0.82, "calibrated": 0.97}},
 *  "regions": [{"x": 10, "y": 20, "width": 32, "height": 16, "score": 0.9}],
 *  "rules": [{"name": "pins", "measured": 14, "min": 15, "max": 15,
 *             "message": "pins: 14, expected 15"}],
 *  "map": {"width": 16, "height": 16}}
 * ```
 *
 * - `timestamp`: buffer PTS in nanoseconds, or `null`; `pts`: the same as `h:mm:ss.mmm`, or `null`;
 * - `wall_time`: when this element made the line, UTC, RFC 3339 with milliseconds
 *   (`2026-12-08T01:23:56.123Z`): the time on the line's clock, for joining with other systems
 *   (the frame's capture time is `timestamp` in stream time);
 * - `frame`: running count of the buffers this element has seen since it started (from 0; frames
 *   filtered out by `only-anomalous`/`skip-unanalysed` still count, so gaps show them);
 * - `stream`: the `stream-name` property (the element name when unset);
 * - `analysed`: whether the buffer carries an anomaly result. When it is `false`, none of
 *   `score` … `map` are present;
 * - `score`, `calibrated`, `anomalous`, `threshold`, `stale`, `analysed_frame`, `detectors`:
 *   straight from the anomaly meta (`analysed_frame` is the frame the result was computed on;
 *   `stale` is true when the result was carried over from it);
 * - `skipped`: only on frames `logsad` did not analyse: why (`interval`, `busy` or `late`);
 * - `regions`: the regions of the anomaly meta's `regions` field, strongest first, as pixel
 *   boxes of the current frame (the meta's relative boxes scaled to the negotiated video size,
 *   so they follow `videoscale`) with their `score`. When the meta has no `regions` field (an
 *   older writer), or the caps are not raw video of a known size, the
 *   `GstVideoRegionOfInterestMeta`s of ROI type `anomaly` are used, with the `score` of their
 *   `anomaly` parameter structure (`null` when absent: GStreamer 1.22's `videoconvert` and
 *   `videoscale` drop it). Always present, maybe empty;
 * - `rules`: the composition rules that fired on the analysed frame (the anomaly meta's `rules`
 *   field; any one makes the fused score 1.0), each with its `name`, the `measured` value, the
 *   allowed range `min`..`max` (inclusive; `null` where unbounded) and its one-line `message`.
 *   Present whenever `analysed` is, an empty array when no rule fired;
 * - `map`: size of the anomaly map when the result has one. With `include-map=true` it also holds
 *   `threshold` (the raw map threshold) and `values` (row-major, rounded to 4 decimals);
 * - `dropped_before`: only present when lines were dropped since the previous written line
 *   (see below): how many.
 *
 * Non-finite numbers are written as `null`.
 *
 * ## Never blocking the pipeline for long
 *
 * Lines go to a writer thread through a queue of `max-queue` lines. When the queue is full the
 * streaming thread waits up to `max-block` milliseconds; if it is still full the line is dropped,
 * counted, a warning naming the count and the file is posted, and the next line that gets through
 * carries `"dropped_before": N`. The total is readable from the `dropped` property. Nothing is
 * dropped silently (a line waiting for room when a flush or shutdown starts is dropped the same
 * way). On EOS, every queued line is written (and fsynced with `sync-on-eos=true`) before the EOS
 * goes downstream, so a pipeline that reached EOS has the complete file. Flush events do not
 * discard queued lines. A write error (disk full, …) is posted as an element error naming the
 * file, and the element then fails with a flow error.
 *
 * The writer thread is joined on stop, after it wrote every queued line. Only if the output is
 * stuck (no progress at all for 5 seconds: a hung network file system, a FIFO nobody reads) do
 * EOS and stop stop waiting, with a warning giving the number of lines not written yet, so that
 * the pipeline can still be shut down.
 *
 * ## Publishing to an MQTT broker
 *
 * With `mqtt-url` set, every line written (byte for byte the same, the same lines) is also
 * published to `mqtt-topic` (`{stream}` becomes the stream name) at `mqtt-qos` 0 or 1, over TCP
 * or TLS (`mqtts://` with `mqtt-ca-file`), with `mqtt-username`/`mqtt-password`. A publisher
 * thread owns the connection; the streaming thread only appends to a backlog of at most
 * `mqtt-backlog` lines. A line leaves the backlog when the broker acknowledged it (QoS 1) or once
 * it is written to the socket (QoS 0); after a lost connection the unconfirmed lines are sent
 * again, in order (at least once: a line whose PUBACK was lost can arrive twice). A full backlog
 * drops its oldest line, counted in `mqtt-dropped` and warned about. EOS waits up to
 * `mqtt-drain-timeout` ms for the backlog to drain. A broker that is down warns once and is
 * retried; one that refuses the credentials is an element error (`GST_RESOURCE_ERROR_NOT_AUTHORIZED`).
 * With `mqtt-url` set and `location` unset, nothing is written locally. Brokers that require
 * client certificates (mutual TLS) get `mqtt-cert-file` and `mqtt-key-file`.
 *
 * Each camera has a retained online status on `mqtt-status-topic` (`logsad/{stream}/status`):
 * `{"stream": "cam0", "online": true, "wall_time": …}` on every connection,
 * `{"stream": "cam0", "online": false, "reason": "stopped", "wall_time": …}` on a clean stop, and
 * `{"stream": "cam0", "online": false, "reason": "connection lost"}` as the last will the broker
 * publishes when the connection dies without a goodbye (a crash, a cable pulled).
 *
 * ## Example launch line
 *
 * |[
 * gst-launch-1.0 filesrc location=parts.mp4 ! decodebin ! videoconvert ! logsad ! \
 *     anomalypublish location=results.jsonl stream-name=line-3 ! fakesink
 * ]|
 *
 * Prints one line per frame on standard output (the default location) and keeps only anomalous
 * frames:
 *
 * |[
 * gst-launch-1.0 -q v4l2src ! videoconvert ! logsad ! anomalypublish only-anomalous=true ! fakesink
 * ]|
 */
use crate::sync::lock;
use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::prelude::*;
use gst_base::subclass::prelude::*;

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, LazyLock, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::backlog::{expand_topic, BrokerUrl};
use super::mqtt::{self, Publisher, Report};
use crate::meta::{AnomalyResult, DetectorScore};

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "anomalypublish",
        gst::DebugColorFlags::empty(),
        Some("LogSAD anomaly JSON-lines publisher"),
    )
});

const DEFAULT_MAX_QUEUE: u32 = 1000;
const DEFAULT_MAX_BLOCK: u32 = 1000;
const DEFAULT_SYNC_ON_EOS: bool = false;
const DEFAULT_ONLY_ANOMALOUS: bool = false;
const DEFAULT_SKIP_UNANALYSED: bool = false;
const DEFAULT_INCLUDE_MAP: bool = false;
const DEFAULT_APPEND: bool = false;
const DEFAULT_MQTT_TOPIC: &str = "logsad/{stream}";
const DEFAULT_MQTT_STATUS_TOPIC: &str = "logsad/{stream}/status";
const DEFAULT_MQTT_QOS: u32 = 1;
const DEFAULT_MQTT_BACKLOG: u32 = 10_000;
const DEFAULT_MQTT_DRAIN_TIMEOUT: u32 = 5000;

/// ROI type (and parameter structure name) of the regions this element reports.
use crate::meta::ROI_TYPE;
/// While lines keep being dropped, at most one "still dropping" warning per this interval.
const WARNING_INTERVAL: Duration = Duration::from_secs(1);
/// At EOS and on stop the element waits for the writer as long as it makes progress; it gives up
/// when the writer made none for this long (a hung network file system, a FIFO nobody reads).
const STALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How often waits re-check for flushes and shutdowns.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

#[derive(Debug, Clone)]
struct Settings {
    location: Option<String>,
    stream_name: Option<String>,
    max_queue: u32,
    max_block: u32,
    sync_on_eos: bool,
    only_anomalous: bool,
    skip_unanalysed: bool,
    include_map: bool,
    append: bool,
    mqtt_url: Option<String>,
    mqtt_topic: String,
    mqtt_qos: u32,
    mqtt_username: Option<String>,
    mqtt_password: Option<String>,
    mqtt_ca_file: Option<String>,
    mqtt_cert_file: Option<String>,
    mqtt_key_file: Option<String>,
    mqtt_client_id: Option<String>,
    mqtt_status_topic: String,
    mqtt_backlog: u32,
    mqtt_drain_timeout: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            location: None,
            stream_name: None,
            max_queue: DEFAULT_MAX_QUEUE,
            max_block: DEFAULT_MAX_BLOCK,
            sync_on_eos: DEFAULT_SYNC_ON_EOS,
            only_anomalous: DEFAULT_ONLY_ANOMALOUS,
            skip_unanalysed: DEFAULT_SKIP_UNANALYSED,
            include_map: DEFAULT_INCLUDE_MAP,
            append: DEFAULT_APPEND,
            mqtt_url: None,
            mqtt_topic: DEFAULT_MQTT_TOPIC.to_string(),
            mqtt_qos: DEFAULT_MQTT_QOS,
            mqtt_username: None,
            mqtt_password: None,
            mqtt_ca_file: None,
            mqtt_cert_file: None,
            mqtt_key_file: None,
            mqtt_client_id: None,
            mqtt_status_topic: DEFAULT_MQTT_STATUS_TOPIC.to_string(),
            mqtt_backlog: DEFAULT_MQTT_BACKLOG,
            mqtt_drain_timeout: DEFAULT_MQTT_DRAIN_TIMEOUT,
        }
    }
}

/// What goes through the queue to the writer thread.
enum Msg {
    Line(String),
    /// Write everything queued before this, flush (and fsync when `sync`), then reply.
    Drain {
        sync: bool,
        reply: SyncSender<Result<(), String>>,
    },
}

/// Lets other threads wait for the writer: it bumps `count` and notifies every time it takes a
/// message out of the queue (making room), finishes handling one, and when it exits.
#[derive(Default)]
struct Progress {
    count: Mutex<u64>,
    cond: Condvar,
}

impl Progress {
    fn bump(&self) {
        *lock(&self.count) += 1;
        self.cond.notify_all();
    }
}

/// Shared between the element and its writer thread.
#[derive(Default)]
struct Shared {
    progress: Progress,
    /// Set once the writer has failed and posted an error.
    failed: AtomicBool,
    /// Lines written so far.
    written: AtomicU64,
}

/// How a wait for the writer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    Done,
    TimedOut,
    /// The writer made no progress for `STALL_TIMEOUT`.
    Stalled,
    /// A flush or a shutdown started.
    Interrupted,
}

enum Output {
    /// No local output: `location` unset while `mqtt-url` is set.
    Discard,
    Stdout,
    File {
        writer: BufWriter<File>,
        /// fsync only makes sense (and only works) on regular files.
        regular: bool,
    },
}

impl Output {
    fn open(location: Option<&str>, append: bool, mqtt: bool) -> io::Result<Output> {
        match location {
            None if mqtt => Ok(Output::Discard),
            None | Some("-") => Ok(Output::Stdout),
            Some(path) => {
                let mut options = OpenOptions::new();
                options.create(true);
                if append {
                    options.append(true);
                } else {
                    options.write(true).truncate(true);
                }
                let file = options.open(path)?;
                let regular = file.metadata()?.is_file();
                Ok(Output::File {
                    writer: BufWriter::new(file),
                    regular,
                })
            }
        }
    }

    fn write_line(&mut self, line: &str) -> io::Result<()> {
        match self {
            Output::Discard => Ok(()),
            Output::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(line.as_bytes())?;
                out.write_all(b"\n")
            }
            Output::File { writer, .. } => {
                writer.write_all(line.as_bytes())?;
                writer.write_all(b"\n")
            }
        }
    }

    fn flush(&mut self, sync: bool) -> io::Result<()> {
        match self {
            Output::Discard => Ok(()),
            Output::Stdout => io::stdout().lock().flush(),
            Output::File { writer, regular } => {
                writer.flush()?;
                if sync && *regular {
                    writer.get_ref().sync_all()?;
                }
                Ok(())
            }
        }
    }
}

/// Human readable name of the output, for messages.
fn describe(location: Option<&str>, mqtt: bool) -> String {
    match location {
        None if mqtt => "no local output".to_string(),
        None | Some("-") => "standard output".to_string(),
        Some(path) => format!("'{path}'"),
    }
}

/// The writer thread: writes lines until the queue's senders are all gone (after writing what
/// was queued), or until a write fails, which it posts as an element error.
fn writer_loop(
    rx: Receiver<Msg>,
    mut output: Output,
    shared: Arc<Shared>,
    element: glib::WeakRef<super::AnomalyPublish>,
    target: String,
) {
    let fail = |what: &str, err: io::Error| {
        shared.failed.store(true, Ordering::SeqCst);
        gst::error!(CAT, "Failed to {what} {target}: {err}");
        if let Some(element) = element.upgrade() {
            gst::element_error!(
                element,
                gst::ResourceError::Write,
                ("Could not {} {}: {}", what, target, err),
                ["{:?}", err]
            );
        }
    };

    'outer: while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(msg) = next {
            shared.progress.bump();
            match msg {
                Msg::Line(line) => {
                    if let Err(err) = output.write_line(&line) {
                        fail("write to", err);
                        break 'outer;
                    }
                    shared.written.fetch_add(1, Ordering::SeqCst);
                }
                Msg::Drain { sync, reply } => {
                    let res = output.flush(sync);
                    let _ = reply.send(res.as_ref().map(|_| ()).map_err(|e| e.to_string()));
                    if let Err(err) = res {
                        fail(if sync { "sync" } else { "flush" }, err);
                        break 'outer;
                    }
                }
            }
            shared.progress.bump();
            next = rx.try_recv().ok();
        }
        // Queue empty: make what was written visible to readers of the file.
        if let Err(err) = output.flush(false) {
            fail("flush", err);
            break;
        }
    }
    if !shared.failed.load(Ordering::SeqCst) {
        if let Err(err) = output.flush(false) {
            fail("flush", err);
        }
    }
    drop(rx);
    // Wake up waiters so that they notice the writer is gone.
    shared.progress.bump();
}

/// Which warning about dropped lines to post.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DropReport {
    /// Lines are being dropped (first drop, then at most once per `WARNING_INTERVAL`).
    Ongoing,
    /// A line got through again and carries `dropped_before`.
    Resumed,
    /// Dropped lines that no later line will report (EOS, stop).
    AtEnd,
}

/// The MQTT output of a started element.
struct MqttOutput {
    publisher: Arc<Publisher>,
    /// The broker's URL, for messages.
    broker: String,
    /// `mqtt-backlog`.
    capacity: usize,
    /// `mqtt-drain-timeout`.
    drain_timeout: Duration,
    /// Lines dropped from the backlog since the last warning about it.
    unreported: u64,
    last_warning: Option<Instant>,
}

struct State {
    sender: Option<SyncSender<Msg>>,
    thread: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
    /// Output name for messages ("'path'" or "standard output").
    target: String,
    /// Running buffer counter.
    frame: u64,
    /// Lines put in the queue so far.
    queued: u64,
    /// Lines dropped since the last line that got through.
    pending_dropped: u64,
    last_warning: Option<Instant>,
    mqtt: Option<MqttOutput>,
}

#[derive(Default)]
pub struct AnomalyPublish {
    settings: Mutex<Settings>,
    state: Mutex<Option<State>>,
    /// Width and height of the negotiated raw video, which the meta's relative region boxes are
    /// scaled to; `None` for other caps.
    frame_size: Mutex<Option<(u32, u32)>>,
    /// Lines dropped since start (the `dropped` property).
    dropped: AtomicU64,
    /// Lines the MQTT output dropped since start (the `mqtt-dropped` property).
    mqtt_dropped: AtomicU64,
    /// Set from a flush start or the PAUSED->READY change until the flush stop or the next start:
    /// waits for the writer give up.
    unblock: AtomicBool,
}

/// `detectors` object: detector name -> {score, calibrated}, in the meta's order.
struct Detectors<'a>(&'a [DetectorScore]);

#[derive(Serialize)]
struct DetectorRecord {
    score: f64,
    calibrated: f64,
}

impl Serialize for Detectors<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for d in self.0 {
            map.serialize_entry(
                &d.name,
                &DetectorRecord {
                    score: d.raw,
                    calibrated: d.calibrated,
                },
            )?;
        }
        map.end()
    }
}

#[derive(Serialize)]
struct Region {
    x: u32,
    y: u32,
    width: u32,
    height: u32,
    score: Option<f64>,
}

/// A fired composition rule; non-finite numbers (unbounded ends) serialise as `null`.
#[derive(Serialize)]
struct RuleRecord<'a> {
    name: &'a str,
    measured: f64,
    min: f64,
    max: f64,
    message: &'a str,
}

#[derive(Serialize)]
struct MapRecord {
    width: u32,
    height: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    threshold: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    values: Option<Vec<f64>>,
}

/// One output line; `None` fields are left out.
#[derive(Serialize)]
struct Record<'a> {
    timestamp: Option<u64>,
    pts: Option<String>,
    wall_time: String,
    frame: u64,
    stream: &'a str,
    analysed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    dropped_before: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    score: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    calibrated: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    anomalous: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    threshold: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stale: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    skipped: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    analysed_frame: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detectors: Option<Detectors<'a>>,
    regions: Vec<Region>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rules: Option<Vec<RuleRecord<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    map: Option<MapRecord>,
}

/// `h:mm:ss.mmm`
fn format_pts(ns: u64) -> String {
    let ms = ns / 1_000_000;
    format!(
        "{}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        (ms / 60_000) % 60,
        (ms / 1000) % 60,
        ms % 1000
    )
}

fn round4(v: f32) -> f64 {
    (f64::from(v) * 10_000.0).round() / 10_000.0
}

/// The regions of `result` in a `size` frame, else the buffer's anomaly ROI metas.
fn regions(
    buffer: &gst::BufferRef,
    result: Option<&AnomalyResult>,
    size: Option<(u32, u32)>,
) -> Vec<Region> {
    if let (Some(regions), Some((w, h))) = (result.and_then(|r| r.regions.as_ref()), size) {
        return regions
            .iter()
            .map(|r| {
                let (x, y, width, height) = r.to_pixels(w, h);
                Region {
                    x,
                    y,
                    width,
                    height,
                    score: Some(r.score),
                }
            })
            .collect();
    }
    buffer
        .iter_meta::<gst_video::VideoRegionOfInterestMeta>()
        .filter(|roi| roi.roi_type() == ROI_TYPE)
        .map(|roi| {
            let (x, y, width, height) = roi.rect();
            let score = roi.param(ROI_TYPE).and_then(|s| s.get::<f64>("score").ok());
            Region {
                x,
                y,
                width,
                height,
                score,
            }
        })
        .collect()
}

impl AnomalyPublish {
    /// Posts a warning about dropped lines. Never called with the state locked.
    fn warn_dropped(&self, target: &str, dropped: u64, kind: DropReport) {
        let total = self.dropped.load(Ordering::SeqCst);
        let details = gst::Structure::builder("logsad/dropped-lines")
            .field("dropped", dropped)
            .field("total", total)
            .field("location", target)
            .field("ongoing", kind == DropReport::Ongoing)
            .build();
        let message = match kind {
            DropReport::Ongoing => format!(
                "Dropping JSON lines because writing to {target} is too slow: {dropped} dropped \
                 so far ({total} in total)"
            ),
            DropReport::Resumed => format!(
                "Dropped {dropped} JSON line(s) ({total} in total) because writing to {target} \
                 was too slow; the next line carries \"dropped_before\": {dropped}"
            ),
            DropReport::AtEnd => format!(
                "Dropped {dropped} JSON line(s) ({total} in total) at the end of the stream \
                 because writing to {target} was too slow"
            ),
        };
        gst::element_imp_warning!(
            self,
            gst::ResourceError::Write,
            ("{}", message),
            details: details
        );
    }

    /// The writer thread is gone: make sure an error was posted.
    fn writer_gone(&self, shared: &Shared, target: &str) -> gst::FlowError {
        if !shared.failed.swap(true, Ordering::SeqCst) {
            gst::element_imp_error!(
                self,
                gst::ResourceError::Write,
                ("The writer for {} stopped unexpectedly", target)
            );
        }
        gst::FlowError::Error
    }

    /// The stream name: `stream-name`, else the element name.
    fn stream_name(&self, settings: &Settings) -> String {
        match &settings.stream_name {
            Some(s) => s.clone(),
            None => self.obj().name().to_string(),
        }
    }

    /// Checks the `mqtt-*` properties (URL, topic, TLS file, credentials) and makes the
    /// publisher's configuration; errors name the property and the cause.
    fn mqtt_config(
        &self,
        settings: &Settings,
        url: &str,
    ) -> Result<mqtt::Config, gst::ErrorMessage> {
        let url = BrokerUrl::parse(url).map_err(|e| {
            gst::error_msg!(gst::ResourceError::Settings, ("Invalid mqtt-url: {}", e))
        })?;
        let stream = self.stream_name(settings);
        let topic = expand_topic(&settings.mqtt_topic, &stream).map_err(|e| {
            gst::error_msg!(
                gst::ResourceError::Settings,
                (
                    "Invalid mqtt-topic '{}' for stream '{}': {}",
                    settings.mqtt_topic,
                    stream,
                    e
                )
            )
        })?;
        let client_auth = match (
            settings.mqtt_cert_file.as_deref(),
            settings.mqtt_key_file.as_deref(),
        ) {
            (Some(cert), Some(key)) if url.tls => Some((Path::new(cert), Path::new(key))),
            (Some(_), Some(_)) => {
                return Err(gst::error_msg!(
                    gst::ResourceError::Settings,
                    (
                        "mqtt-cert-file and mqtt-key-file are set but mqtt-url {} is plain \
                         TCP: client certificates need mqtts://",
                        url
                    )
                ))
            }
            (Some(_), None) | (None, Some(_)) => {
                return Err(gst::error_msg!(
                    gst::ResourceError::Settings,
                    ("mqtt-cert-file and mqtt-key-file go together: set both or neither")
                ))
            }
            (None, None) => None,
        };
        let tls = match (url.tls, settings.mqtt_ca_file.as_deref()) {
            (true, Some(path)) => Some(mqtt::tls_config(Path::new(path), client_auth).map_err(
                |e| {
                    gst::error_msg!(
                        gst::ResourceError::OpenRead,
                        ("Could not set up TLS (mqtt-ca-file, mqtt-cert-file, mqtt-key-file): {}", e)
                    )
                },
            )?),
            (true, None) => {
                return Err(gst::error_msg!(
                    gst::ResourceError::Settings,
                    (
                        "mqtt-url {} asks for TLS (mqtts://) but mqtt-ca-file is not set: name \
                         the PEM file of the CA that signed the broker's certificate",
                        url
                    )
                ))
            }
            (false, Some(path)) => {
                return Err(gst::error_msg!(
                    gst::ResourceError::Settings,
                    (
                        "mqtt-ca-file '{}' is set but mqtt-url {} is plain TCP: use mqtts:// \
                         for TLS",
                        path,
                        url
                    )
                ))
            }
            (false, None) => None,
        };
        let credentials = match (&settings.mqtt_username, &settings.mqtt_password) {
            (Some(user), password) => Some((user.clone(), password.clone().unwrap_or_default())),
            (None, Some(_)) => {
                return Err(gst::error_msg!(
                    gst::ResourceError::Settings,
                    ("mqtt-password is set without mqtt-username (MQTT 3.1.1 needs both)")
                ))
            }
            (None, None) => None,
        };
        let client_id = settings
            .mqtt_client_id
            .clone()
            .unwrap_or_else(|| format!("logsad-{stream}-{}", std::process::id()));
        let status = match settings.mqtt_status_topic.as_str() {
            "" => None,
            pattern => Some(mqtt::StatusConfig {
                topic: expand_topic(pattern, &stream).map_err(|e| {
                    gst::error_msg!(
                        gst::ResourceError::Settings,
                        (
                            "Invalid mqtt-status-topic '{}' for stream '{}': {}",
                            pattern,
                            stream,
                            e
                        )
                    )
                })?,
                stream: stream.clone(),
            }),
        };
        Ok(mqtt::Config {
            url,
            topic,
            at_least_once: settings.mqtt_qos >= 1,
            credentials,
            tls,
            client_id,
            status,
            backlog: settings.mqtt_backlog.max(1) as usize,
        })
    }

    /// Starts the MQTT publisher; its reports become bus messages.
    fn start_mqtt(&self, config: mqtt::Config) -> Result<MqttOutput, gst::ErrorMessage> {
        let broker = config.url.to_string();
        let capacity = config.backlog;
        let element = self.obj().downgrade();
        let name = broker.clone();
        let report = move |report: Report| {
            let Some(element) = element.upgrade() else {
                return;
            };
            match report {
                Report::Unreachable {
                    error,
                    connected_before,
                    waiting,
                } => {
                    let details = gst::Structure::builder("logsad/mqtt-unreachable")
                        .field("broker", &name)
                        .field("error", &error)
                        .field("waiting", waiting as u64)
                        .build();
                    let what = if connected_before {
                        "Lost the connection to"
                    } else {
                        "Cannot connect to"
                    };
                    gst::element_warning!(
                        element,
                        gst::ResourceError::Write,
                        (
                            "{} MQTT broker {} ({}); retrying, keeping up to {} lines ({} \
                             waiting)",
                            what,
                            name,
                            error,
                            capacity,
                            waiting
                        ),
                        details: details
                    );
                }
                Report::Retrying { error } => {
                    gst::debug!(
                        CAT,
                        obj = element,
                        "MQTT broker {name} still unreachable: {error}"
                    );
                }
                Report::Connected {
                    after_outage,
                    waiting,
                } => {
                    if after_outage {
                        gst::element_info!(
                            element,
                            gst::ResourceError::Write,
                            (
                                "Connected to MQTT broker {} again; sending {} waiting line(s)",
                                name,
                                waiting
                            )
                        );
                    } else {
                        gst::info!(CAT, obj = element, "Connected to MQTT broker {name}");
                    }
                }
                Report::Refused { reason } => {
                    gst::element_error!(
                        element,
                        gst::ResourceError::NotAuthorized,
                        ("MQTT broker {} refused the connection: {}", name, reason)
                    );
                }
                Report::Failed { reason } => {
                    gst::element_error!(
                        element,
                        gst::ResourceError::Failed,
                        ("Cannot publish to MQTT broker {}: {}", name, reason)
                    );
                }
            }
        };
        let publisher = Publisher::start(config, Box::new(report)).map_err(|err| {
            gst::error_msg!(
                gst::CoreError::Failed,
                (
                    "Could not start the MQTT publisher thread for {}: {}",
                    broker,
                    err
                )
            )
        })?;
        let drain_timeout =
            Duration::from_millis(u64::from(lock(&self.settings).mqtt_drain_timeout));
        Ok(MqttOutput {
            publisher: Arc::new(publisher),
            broker,
            capacity,
            drain_timeout,
            unreported: 0,
            last_warning: None,
        })
    }

    /// Posts a warning about lines the MQTT backlog dropped. Never called with the state locked.
    fn warn_mqtt_dropped(&self, broker: &str, capacity: usize, dropped: u64) {
        let total = self.mqtt_dropped.load(Ordering::SeqCst);
        let details = gst::Structure::builder("logsad/mqtt-dropped")
            .field("dropped", dropped)
            .field("total", total)
            .field("broker", broker)
            .build();
        gst::element_imp_warning!(
            self,
            gst::ResourceError::Write,
            (
                "MQTT broker {} is unreachable or too slow and the backlog of {} lines is full: \
                 dropped the oldest {} line(s) ({} in total)",
                broker,
                capacity,
                dropped,
                total
            ),
            details: details
        );
    }

    /// Hands `line` to the MQTT publisher and warns (at most once per `WARNING_INTERVAL` while
    /// it goes on) when the backlog drops its oldest line.
    fn publish_mqtt(&self, line: &str) -> Result<(), gst::FlowError> {
        let report = {
            let mut state = lock(&self.state);
            let Some(out) = state.as_mut().and_then(|s| s.mqtt.as_mut()) else {
                return Ok(());
            };
            if out.publisher.failed() {
                // The publisher posted the error.
                return Err(gst::FlowError::Error);
            }
            if !out.publisher.push(line) {
                return Ok(());
            }
            self.mqtt_dropped.fetch_add(1, Ordering::SeqCst);
            out.unreported += 1;
            let due = out
                .last_warning
                .is_none_or(|t| t.elapsed() >= WARNING_INTERVAL);
            if !due {
                return Ok(());
            }
            out.last_warning = Some(Instant::now());
            (
                out.broker.clone(),
                out.capacity,
                std::mem::take(&mut out.unreported),
            )
        };
        self.warn_mqtt_dropped(&report.0, report.1, report.2);
        Ok(())
    }

    /// At EOS: reports the dropped lines not warned about yet, then waits (at most
    /// `mqtt-drain-timeout`, less if a flush or shutdown starts) for the broker to confirm every
    /// line, and warns about those it did not.
    fn drain_mqtt(&self) {
        let (publisher, broker, capacity, timeout, unreported) = {
            let mut state = lock(&self.state);
            let Some(out) = state.as_mut().and_then(|s| s.mqtt.as_mut()) else {
                return;
            };
            (
                out.publisher.clone(),
                out.broker.clone(),
                out.capacity,
                out.drain_timeout,
                std::mem::take(&mut out.unreported),
            )
        };
        if unreported > 0 {
            self.warn_mqtt_dropped(&broker, capacity, unreported);
        }
        let left = publisher.wait_drained(timeout, || self.unblock.load(Ordering::SeqCst));
        if left > 0 && !publisher.failed() {
            gst::element_imp_warning!(
                self,
                gst::ResourceError::Write,
                (
                    "EOS: {} JSON line(s) not confirmed by MQTT broker {} after {} ms; still \
                     trying until the element stops, then they count in mqtt-dropped",
                    left,
                    broker,
                    timeout.as_millis()
                )
            );
        } else {
            gst::debug!(CAT, imp = self, "MQTT backlog drained ({left} left)");
        }
    }

    /// On stop: waits for the broker to confirm the waiting lines (at most
    /// `mqtt-drain-timeout`, only while connected), stops the publisher, and counts and warns
    /// about what is left.
    fn stop_mqtt(&self, out: MqttOutput) {
        if out.publisher.connected() {
            out.publisher.wait_drained(out.drain_timeout, || false);
        }
        let (left, _) = out.publisher.stop();
        if out.unreported > 0 {
            self.warn_mqtt_dropped(&out.broker, out.capacity, out.unreported);
        }
        if left > 0 {
            let total = self.mqtt_dropped.fetch_add(left as u64, Ordering::SeqCst) + left as u64;
            gst::element_imp_warning!(
                self,
                gst::ResourceError::Write,
                (
                    "Stopped with {} JSON line(s) not confirmed by MQTT broker {}: they are lost \
                     ({} dropped in total)",
                    left,
                    out.broker,
                    total
                )
            );
        }
    }

    fn build_line(
        &self,
        buffer: &gst::BufferRef,
        settings: &Settings,
        frame: u64,
        dropped_before: u64,
    ) -> Option<String> {
        let result = match AnomalyResult::from_buffer(buffer) {
            None => None,
            Some(Ok(result)) => Some(result),
            Some(Err(err)) => {
                gst::warning!(CAT, imp = self, "Ignoring malformed anomaly meta: {err}");
                None
            }
        };
        match &result {
            None if settings.skip_unanalysed || settings.only_anomalous => return None,
            Some(r) if settings.only_anomalous && !r.anomalous => return None,
            _ => {}
        }

        let name;
        let stream = match &settings.stream_name {
            Some(s) => s.as_str(),
            None => {
                name = self.obj().name();
                name.as_str()
            }
        };
        let pts = buffer.pts();
        let r = result.as_ref();
        let map = r.and_then(|r| {
            let m = r.map.as_ref()?;
            Some(MapRecord {
                width: m.width,
                height: m.height,
                threshold: settings.include_map.then_some(r.map_threshold),
                values: settings
                    .include_map
                    .then(|| m.values().into_iter().map(round4).collect()),
            })
        });
        let record = Record {
            timestamp: pts.map(|t| t.nseconds()),
            pts: pts.map(|t| format_pts(t.nseconds())),
            wall_time: crate::utc::now(),
            frame,
            stream,
            analysed: r.is_some(),
            dropped_before: (dropped_before > 0).then_some(dropped_before),
            score: r.map(|r| r.score),
            calibrated: r.map(|r| r.calibrated),
            anomalous: r.map(|r| r.anomalous),
            threshold: r.map(|r| r.threshold),
            stale: r.map(|r| r.stale),
            skipped: r.and_then(|r| r.skipped).map(|reason| reason.as_str()),
            analysed_frame: r.map(|r| r.frame),
            detectors: r.map(|r| Detectors(&r.detectors)),
            regions: regions(buffer, r, *lock(&self.frame_size)),
            rules: r.map(|r| {
                r.rules
                    .iter()
                    .map(|rule| RuleRecord {
                        name: &rule.name,
                        measured: rule.measured,
                        min: rule.min,
                        max: rule.max,
                        message: &rule.message,
                    })
                    .collect()
            }),
            map,
        };
        match serde_json::to_string(&record) {
            Ok(line) => Some(line),
            Err(err) => {
                // Cannot happen with these types; still, never panic.
                gst::error!(CAT, imp = self, "Failed to serialize line: {err}");
                None
            }
        }
    }

    /// Waits until `ready()` returns true, re-checking it whenever the writer makes progress.
    /// Gives up at `deadline`, after `STALL_TIMEOUT` without progress when `stall` is set, and
    /// when a flush or shutdown starts if `interruptible`.
    fn wait_for_writer(
        &self,
        shared: &Shared,
        deadline: Option<Instant>,
        stall: bool,
        interruptible: bool,
        mut ready: impl FnMut() -> bool,
    ) -> Wait {
        let mut seen = *lock(&shared.progress.count);
        let mut last_progress = Instant::now();
        loop {
            if ready() {
                return Wait::Done;
            }
            if interruptible && self.unblock.load(Ordering::SeqCst) {
                return Wait::Interrupted;
            }
            let now = Instant::now();
            let mut timeout = POLL_INTERVAL;
            if let Some(deadline) = deadline {
                if now >= deadline {
                    return Wait::TimedOut;
                }
                timeout = timeout.min(deadline - now);
            }
            if stall && now.duration_since(last_progress) >= STALL_TIMEOUT {
                return Wait::Stalled;
            }
            let count = lock(&shared.progress.count);
            let (count, _) = shared
                .progress
                .cond
                .wait_timeout_while(count, timeout, |c| *c == seen)
                .unwrap_or_else(|e| e.into_inner());
            if *count != seen {
                seen = *count;
                last_progress = Instant::now();
            }
        }
    }

    /// Writes everything queued so far (fsyncs with `sync`) and waits until it is done, as long
    /// as the writer makes progress and no flush or shutdown starts.
    fn drain(&self, sync: bool) {
        let (sender, shared, target, pending, queued) = {
            let mut state = lock(&self.state);
            let Some(state) = state.as_mut() else {
                return;
            };
            let Some(sender) = state.sender.clone() else {
                return;
            };
            let pending = std::mem::take(&mut state.pending_dropped);
            (
                sender,
                state.shared.clone(),
                state.target.clone(),
                pending,
                state.queued,
            )
        };
        if pending > 0 {
            // No line follows to carry "dropped_before": say it now.
            self.warn_dropped(&target, pending, DropReport::AtEnd);
        }
        if shared.failed.load(Ordering::SeqCst) {
            return;
        }
        gst::debug!(CAT, imp = self, "Draining queued lines (sync: {sync})");

        let (reply_tx, reply_rx) = mpsc::sync_channel(1);
        let mut msg = Some(Msg::Drain {
            sync,
            reply: reply_tx,
        });
        let mut gone = false;
        let mut outcome = self.wait_for_writer(&shared, None, true, true, || match msg.take() {
            None => true,
            Some(m) => match sender.try_send(m) {
                Ok(()) => true,
                Err(TrySendError::Full(m)) => {
                    msg = Some(m);
                    false
                }
                Err(TrySendError::Disconnected(_)) => {
                    gone = true;
                    true
                }
            },
        });
        let mut result = None;
        if outcome == Wait::Done && !gone {
            outcome =
                self.wait_for_writer(&shared, None, true, true, || match reply_rx.try_recv() {
                    Ok(res) => {
                        result = Some(res);
                        true
                    }
                    Err(mpsc::TryRecvError::Empty) => false,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        gone = true;
                        true
                    }
                });
        }
        match (outcome, result) {
            (Wait::Done, Some(Ok(()))) => gst::debug!(CAT, imp = self, "All lines written"),
            // The writer posted the error itself.
            (Wait::Done, Some(Err(err))) => gst::debug!(CAT, imp = self, "Draining failed: {err}"),
            (Wait::Done, None) => {
                if gone {
                    let _ = self.writer_gone(&shared, &target);
                }
            }
            (Wait::Stalled, _) => {
                let unwritten = queued.saturating_sub(shared.written.load(Ordering::SeqCst));
                gst::element_imp_warning!(
                    self,
                    gst::ResourceError::Write,
                    (
                        "Writing to {} made no progress for {} s: forwarding EOS with {} \
                         line(s) not written yet",
                        target,
                        STALL_TIMEOUT.as_secs(),
                        unwritten
                    )
                );
            }
            (outcome, _) => {
                gst::debug!(
                    CAT,
                    imp = self,
                    "Stopped waiting for the writer: {outcome:?}"
                )
            }
        }
    }
}

#[glib::object_subclass]
impl ObjectSubclass for AnomalyPublish {
    const NAME: &'static str = "GstAnomalyPublish";
    type Type = super::AnomalyPublish;
    type ParentType = gst_base::BaseTransform;
}

impl ObjectImpl for AnomalyPublish {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            vec![
                glib::ParamSpecString::builder("location")
                    .nick("Location")
                    .blurb(
                        "File to write the JSON lines to; \"-\" or unset writes to standard \
                         output. Truncated on start unless append=true",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("append")
                    .nick("Append")
                    .blurb("Append to an existing file instead of truncating it")
                    .default_value(DEFAULT_APPEND)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("stream-name")
                    .nick("Stream name")
                    .blurb("Value of the \"stream\" field of every line (unset: the element name)")
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt::builder("max-queue")
                    .nick("Maximum queue")
                    .blurb("Maximum number of lines waiting for the writer thread")
                    .minimum(1)
                    .maximum(i32::MAX as u32)
                    .default_value(DEFAULT_MAX_QUEUE)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("max-block")
                    .nick("Maximum block")
                    .blurb(
                        "Milliseconds to wait for room when the queue is full before dropping \
                         the line (counted, warned about, and reported as \"dropped_before\" \
                         on the next line)",
                    )
                    .default_value(DEFAULT_MAX_BLOCK)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecBoolean::builder("sync-on-eos")
                    .nick("Sync on EOS")
                    .blurb("fsync the file at EOS, after writing all queued lines")
                    .default_value(DEFAULT_SYNC_ON_EOS)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecBoolean::builder("only-anomalous")
                    .nick("Only anomalous")
                    .blurb("Only write lines for frames whose result is anomalous")
                    .default_value(DEFAULT_ONLY_ANOMALOUS)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecBoolean::builder("skip-unanalysed")
                    .nick("Skip unanalysed")
                    .blurb("Write no line for frames without an anomaly result")
                    .default_value(DEFAULT_SKIP_UNANALYSED)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecBoolean::builder("include-map")
                    .nick("Include map")
                    .blurb(
                        "Add the anomaly map values (row-major, raw score units, 4 decimals) \
                         and its threshold to the \"map\" object",
                    )
                    .default_value(DEFAULT_INCLUDE_MAP)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt64::builder("dropped")
                    .nick("Dropped")
                    .blurb("Number of lines dropped since start because the writer was too slow")
                    .read_only()
                    .build(),
                glib::ParamSpecString::builder("mqtt-url")
                    .nick("MQTT URL")
                    .blurb(
                        "Also publish every line to this MQTT broker: mqtt://host[:port] (TCP, \
                         port 1883 by default) or mqtts://host[:port] (TLS, 8883, needs \
                         mqtt-ca-file). Unset: no MQTT. With mqtt-url set and location unset, \
                         nothing is written locally",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("mqtt-topic")
                    .nick("MQTT topic")
                    .blurb("Topic to publish to; {stream} becomes the stream name (fixed at start)")
                    .default_value(Some(DEFAULT_MQTT_TOPIC))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("mqtt-qos")
                    .nick("MQTT QoS")
                    .blurb(
                        "0: at most once (a line leaves the backlog once written to the \
                         socket); 1: at least once (once the broker acknowledged it)",
                    )
                    .maximum(1)
                    .default_value(DEFAULT_MQTT_QOS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("mqtt-username")
                    .nick("MQTT user name")
                    .blurb("User name to connect with (unset: anonymous)")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("mqtt-password")
                    .nick("MQTT password")
                    .blurb("Password to connect with (write-only; needs mqtt-username)")
                    .write_only()
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("mqtt-ca-file")
                    .nick("MQTT CA file")
                    .blurb(
                        "PEM file of the CA certificate(s) that the broker's certificate must \
                         chain to; required by mqtts://, read at start",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("mqtt-cert-file")
                    .nick("MQTT client certificate file")
                    .blurb(
                        "PEM file of this client's certificate (chain), for brokers that \
                         require client certificates (mutual TLS); needs mqtts:// and \
                         mqtt-key-file, read at start",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("mqtt-key-file")
                    .nick("MQTT client key file")
                    .blurb(
                        "PEM file of the private key of mqtt-cert-file (PKCS#8, PKCS#1 or \
                         SEC1, unencrypted), read at start",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("mqtt-status-topic")
                    .nick("MQTT status topic")
                    .blurb(
                        "Topic of this camera's retained online status: {\"online\": true} \
                         when connected, {\"online\": false, \"reason\": \"stopped\"} on a \
                         clean stop, and the same with \"connection lost\" as the last will \
                         the broker sends when the connection dies; {stream} becomes the \
                         stream name; empty: no status and no last will",
                    )
                    .default_value(Some(DEFAULT_MQTT_STATUS_TOPIC))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("mqtt-client-id")
                    .nick("MQTT client id")
                    .blurb("Client id (unset: logsad-<stream name>-<process id>)")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("mqtt-backlog")
                    .nick("MQTT backlog")
                    .blurb(
                        "Most lines kept while the broker is unreachable or slow; when full the \
                         oldest line is dropped, counted in mqtt-dropped and warned about",
                    )
                    .minimum(1)
                    .maximum(i32::MAX as u32)
                    .default_value(DEFAULT_MQTT_BACKLOG)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("mqtt-drain-timeout")
                    .nick("MQTT drain timeout")
                    .blurb(
                        "Milliseconds EOS (and stop, while connected) waits for the broker to \
                         confirm the waiting lines",
                    )
                    .default_value(DEFAULT_MQTT_DRAIN_TIMEOUT)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt64::builder("mqtt-dropped")
                    .nick("MQTT dropped")
                    .blurb(
                        "Number of lines the MQTT output lost since start: dropped from a full \
                         backlog, or not confirmed when the element stopped",
                    )
                    .read_only()
                    .build(),
            ]
        });
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let mut settings = lock(&self.settings);
        match pspec.name() {
            "location" => {
                settings.location = value.get::<Option<String>>().ok().flatten();
            }
            "append" => settings.append = value.get().unwrap_or(DEFAULT_APPEND),
            "stream-name" => {
                settings.stream_name = value.get::<Option<String>>().ok().flatten();
            }
            "max-queue" => settings.max_queue = value.get().unwrap_or(DEFAULT_MAX_QUEUE),
            "max-block" => settings.max_block = value.get().unwrap_or(DEFAULT_MAX_BLOCK),
            "sync-on-eos" => settings.sync_on_eos = value.get().unwrap_or(DEFAULT_SYNC_ON_EOS),
            "only-anomalous" => {
                settings.only_anomalous = value.get().unwrap_or(DEFAULT_ONLY_ANOMALOUS)
            }
            "skip-unanalysed" => {
                settings.skip_unanalysed = value.get().unwrap_or(DEFAULT_SKIP_UNANALYSED)
            }
            "include-map" => settings.include_map = value.get().unwrap_or(DEFAULT_INCLUDE_MAP),
            "mqtt-url" => settings.mqtt_url = value.get::<Option<String>>().ok().flatten(),
            "mqtt-topic" => {
                settings.mqtt_topic = value
                    .get::<Option<String>>()
                    .ok()
                    .flatten()
                    .unwrap_or_else(|| DEFAULT_MQTT_TOPIC.to_string())
            }
            "mqtt-qos" => settings.mqtt_qos = value.get().unwrap_or(DEFAULT_MQTT_QOS),
            "mqtt-username" => {
                settings.mqtt_username = value.get::<Option<String>>().ok().flatten()
            }
            "mqtt-password" => {
                settings.mqtt_password = value.get::<Option<String>>().ok().flatten()
            }
            "mqtt-ca-file" => settings.mqtt_ca_file = value.get::<Option<String>>().ok().flatten(),
            "mqtt-cert-file" => {
                settings.mqtt_cert_file = value.get::<Option<String>>().ok().flatten()
            }
            "mqtt-key-file" => {
                settings.mqtt_key_file = value.get::<Option<String>>().ok().flatten()
            }
            "mqtt-status-topic" => {
                settings.mqtt_status_topic = value
                    .get::<Option<String>>()
                    .ok()
                    .flatten()
                    .unwrap_or_else(|| DEFAULT_MQTT_STATUS_TOPIC.to_string())
            }
            "mqtt-client-id" => {
                settings.mqtt_client_id = value.get::<Option<String>>().ok().flatten()
            }
            "mqtt-backlog" => settings.mqtt_backlog = value.get().unwrap_or(DEFAULT_MQTT_BACKLOG),
            "mqtt-drain-timeout" => {
                settings.mqtt_drain_timeout = value.get().unwrap_or(DEFAULT_MQTT_DRAIN_TIMEOUT)
            }
            other => gst::warning!(CAT, imp = self, "Unknown property {other}"),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let settings = lock(&self.settings);
        match pspec.name() {
            "location" => settings.location.to_value(),
            "append" => settings.append.to_value(),
            "stream-name" => settings.stream_name.to_value(),
            "max-queue" => settings.max_queue.to_value(),
            "max-block" => settings.max_block.to_value(),
            "sync-on-eos" => settings.sync_on_eos.to_value(),
            "only-anomalous" => settings.only_anomalous.to_value(),
            "skip-unanalysed" => settings.skip_unanalysed.to_value(),
            "include-map" => settings.include_map.to_value(),
            "dropped" => self.dropped.load(Ordering::SeqCst).to_value(),
            "mqtt-url" => settings.mqtt_url.to_value(),
            "mqtt-topic" => settings.mqtt_topic.to_value(),
            "mqtt-qos" => settings.mqtt_qos.to_value(),
            "mqtt-username" => settings.mqtt_username.to_value(),
            "mqtt-ca-file" => settings.mqtt_ca_file.to_value(),
            "mqtt-cert-file" => settings.mqtt_cert_file.to_value(),
            "mqtt-key-file" => settings.mqtt_key_file.to_value(),
            "mqtt-status-topic" => settings.mqtt_status_topic.to_value(),
            "mqtt-client-id" => settings.mqtt_client_id.to_value(),
            "mqtt-backlog" => settings.mqtt_backlog.to_value(),
            "mqtt-drain-timeout" => settings.mqtt_drain_timeout.to_value(),
            "mqtt-dropped" => self.mqtt_dropped.load(Ordering::SeqCst).to_value(),
            // GObject only asks for the properties listed above.
            _ => pspec.default_value().clone(),
        }
    }

    fn constructed(&self) {
        self.parent_constructed();
        self.obj().set_passthrough(true);
    }
}

impl GstObjectImpl for AnomalyPublish {}

impl ElementImpl for AnomalyPublish {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static ELEMENT_METADATA: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "Anomaly result publisher",
                "Filter/Metadata",
                "Writes the LogSAD anomaly result of every buffer as one JSON line to a file \
                 or standard output, and optionally publishes it to an MQTT broker",
                "gst-logsad authors",
            )
        });
        Some(&*ELEMENT_METADATA)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static PAD_TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            let caps = gst::Caps::new_any();
            let make = |name, direction| {
                gst::PadTemplate::new(name, direction, gst::PadPresence::Always, &caps)
                    .expect("static pad template")
            };
            vec![
                make("src", gst::PadDirection::Src),
                make("sink", gst::PadDirection::Sink),
            ]
        });
        PAD_TEMPLATES.as_ref()
    }

    fn change_state(
        &self,
        transition: gst::StateChange,
    ) -> Result<gst::StateChangeSuccess, gst::StateChangeError> {
        if transition == gst::StateChange::PausedToReady {
            // Let a streaming thread waiting for the writer (EOS, full queue) go, so that the
            // pads can be deactivated.
            self.unblock.store(true, Ordering::SeqCst);
        }
        self.parent_change_state(transition)
    }
}

impl BaseTransformImpl for AnomalyPublish {
    const MODE: gst_base::subclass::BaseTransformMode =
        gst_base::subclass::BaseTransformMode::AlwaysInPlace;
    const PASSTHROUGH_ON_SAME_CAPS: bool = true;
    const TRANSFORM_IP_ON_PASSTHROUGH: bool = true;

    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let settings = lock(&self.settings).clone();
        let location = settings.location.as_deref();
        let mqtt_url = settings.mqtt_url.as_deref();
        let target = describe(location, mqtt_url.is_some());
        // Check the MQTT settings before creating the file.
        let mqtt_config = mqtt_url
            .map(|url| self.mqtt_config(&settings, url))
            .transpose()?;

        let output =
            Output::open(location, settings.append, mqtt_url.is_some()).map_err(|err| {
                gst::error_msg!(
                    gst::ResourceError::OpenWrite,
                    ("Could not open {} for writing: {}", target, err),
                    ["{:?}", err]
                )
            })?;

        let shared = Arc::new(Shared::default());
        let (sender, receiver) = mpsc::sync_channel(settings.max_queue.max(1) as usize);
        let thread = {
            let shared = shared.clone();
            let element = self.obj().downgrade();
            let thread_target = target.clone();
            std::thread::Builder::new()
                .name("anomalypublish-writer".into())
                .spawn(move || writer_loop(receiver, output, shared, element, thread_target))
                .map_err(|err| {
                    gst::error_msg!(
                        gst::CoreError::Failed,
                        ("Could not start the writer thread for {}: {}", target, err)
                    )
                })?
        };

        let mqtt = mqtt_config.map(|c| self.start_mqtt(c)).transpose()?;
        self.dropped.store(0, Ordering::SeqCst);
        self.mqtt_dropped.store(0, Ordering::SeqCst);
        self.unblock.store(false, Ordering::SeqCst);
        *lock(&self.frame_size) = None;
        *lock(&self.state) = Some(State {
            sender: Some(sender),
            thread: Some(thread),
            shared,
            target,
            frame: 0,
            queued: 0,
            pending_dropped: 0,
            last_warning: None,
            mqtt,
        });
        gst::info!(
            CAT,
            imp = self,
            "Started, writing to {}{}",
            describe(location, mqtt_url.is_some()),
            mqtt_url
                .map(|u| format!(" and MQTT broker {u}"))
                .unwrap_or_default()
        );
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        let Some(mut state) = lock(&self.state).take() else {
            return Ok(());
        };
        if let Some(out) = state.mqtt.take() {
            self.stop_mqtt(out);
        }
        if state.pending_dropped > 0 {
            self.warn_dropped(&state.target, state.pending_dropped, DropReport::AtEnd);
        }
        // Closing the queue makes the writer write what is queued and exit.
        drop(state.sender.take());
        let Some(thread) = state.thread.take() else {
            return Ok(());
        };
        let outcome =
            self.wait_for_writer(&state.shared, None, true, false, || thread.is_finished());
        if outcome != Wait::Done {
            // Joining would hang the state change, maybe for ever: leave the thread to finish
            // on its own (it still writes the queued lines if the output ever unblocks).
            let unwritten = state
                .queued
                .saturating_sub(state.shared.written.load(Ordering::SeqCst));
            gst::element_imp_warning!(
                self,
                gst::ResourceError::Write,
                (
                    "Writing to {} made no progress for {} s: stopping without waiting for {} \
                     queued line(s), which are lost unless the output unblocks",
                    state.target,
                    STALL_TIMEOUT.as_secs(),
                    unwritten
                )
            );
            return Ok(());
        }
        if thread.join().is_err() {
            return Err(gst::error_msg!(
                gst::CoreError::Failed,
                ("The writer thread for {} panicked", state.target)
            ));
        }
        gst::info!(CAT, imp = self, "Stopped");
        Ok(())
    }

    fn set_caps(&self, incaps: &gst::Caps, _outcaps: &gst::Caps) -> Result<(), gst::LoggableError> {
        // Any caps pass; raw video caps give the frame size that regions are scaled to.
        *lock(&self.frame_size) = gst_video::VideoInfo::from_caps(incaps)
            .ok()
            .map(|info| (info.width(), info.height()));
        Ok(())
    }

    fn sink_event(&self, event: gst::Event) -> bool {
        // Queued lines are kept and written across flushes; a flush only stops waits for the
        // writer so that it is not held up.
        match event.view() {
            gst::EventView::Eos(_) => {
                let sync = lock(&self.settings).sync_on_eos;
                self.drain(sync);
                self.drain_mqtt();
            }
            gst::EventView::FlushStart(_) => self.unblock.store(true, Ordering::SeqCst),
            gst::EventView::FlushStop(_) => self.unblock.store(false, Ordering::SeqCst),
            _ => {}
        }
        self.parent_sink_event(event)
    }

    fn transform_ip_passthrough(
        &self,
        buf: &gst::Buffer,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        let settings = lock(&self.settings).clone();
        let (frame, pending, sender, shared, target) = {
            let mut state = lock(&self.state);
            let Some(state) = state.as_mut() else {
                gst::element_imp_error!(self, gst::CoreError::Negotiation, ["Not started"]);
                return Err(gst::FlowError::Error);
            };
            let frame = state.frame;
            state.frame += 1;
            let Some(sender) = state.sender.clone() else {
                return Err(gst::FlowError::Flushing);
            };
            (
                frame,
                state.pending_dropped,
                sender,
                state.shared.clone(),
                state.target.clone(),
            )
        };
        if shared.failed.load(Ordering::SeqCst) {
            return Err(gst::FlowError::Error);
        }

        let Some(line) = self.build_line(buf, &settings, frame, pending) else {
            return Ok(gst::FlowSuccess::Ok);
        };

        // The MQTT output gets exactly the lines that the file gets.
        let mqtt_line = settings.mqtt_url.is_some().then(|| line.clone());
        let deadline = Instant::now() + Duration::from_millis(u64::from(settings.max_block));
        let mut msg = Some(Msg::Line(line));
        let mut gone = false;
        // Gives up at max-block, or at once if a flush or shutdown starts (the line then counts
        // as dropped).
        let outcome =
            self.wait_for_writer(&shared, Some(deadline), false, true, || match msg.take() {
                None => true,
                Some(m) => match sender.try_send(m) {
                    Ok(()) => true,
                    Err(TrySendError::Full(m)) => {
                        msg = Some(m);
                        false
                    }
                    Err(TrySendError::Disconnected(_)) => {
                        gone = true;
                        true
                    }
                },
            });
        if gone {
            return Err(self.writer_gone(&shared, &target));
        }
        let accepted = outcome == Wait::Done;

        let report = {
            let mut state = lock(&self.state);
            let Some(state) = state.as_mut() else {
                return Ok(gst::FlowSuccess::Ok);
            };
            if accepted {
                state.queued += 1;
                let dropped = std::mem::take(&mut state.pending_dropped);
                state.last_warning = None;
                (dropped > 0).then_some((dropped, DropReport::Resumed))
            } else {
                state.pending_dropped += 1;
                self.dropped.fetch_add(1, Ordering::SeqCst);
                gst::debug!(
                    CAT,
                    imp = self,
                    "Queue full for {} ms, dropped the line of frame {frame}",
                    settings.max_block
                );
                let due = state
                    .last_warning
                    .is_none_or(|t| t.elapsed() >= WARNING_INTERVAL);
                if state.pending_dropped == 1 || due {
                    state.last_warning = Some(Instant::now());
                    Some((state.pending_dropped, DropReport::Ongoing))
                } else {
                    None
                }
            }
        };
        if let Some((dropped, kind)) = report {
            self.warn_dropped(&target, dropped, kind);
        }
        if let (true, Some(line)) = (accepted, mqtt_line) {
            self.publish_mqtt(&line)?;
        }
        Ok(gst::FlowSuccess::Ok)
    }
}
