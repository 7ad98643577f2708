//! SECTION:element-logsad
//!
//! Training-free anomaly detection (LogSAD). Each analysed frame is cut into tiles as the profile
//! says, run through the profile's backbone, matched patch by patch against the profile's memory
//! bank of anomaly-free references, and judged with the profile's calibration. The result is
//! attached to the buffer as a `LogsadAnomalyMeta` custom meta (scores, verdict and anomaly map;
//! see `meta.rs` for the fields), plus one `GstVideoRegionOfInterestMeta` of type "anomaly" per
//! connected region above the threshold. Anomalous frames also post a `logsad-anomaly` element
//! message on the bus.
//!
//! ## Example launch line
//! ```text
//! gst-launch-1.0 filesrc location=line.mp4 ! decodebin ! videoconvert ! \
//!     logsad profile=textile.logsad interval=2 ! videoconvert ! anomalyoverlay ! autovideosink
//! ```
//!
//! ## Threads, sharing and live sources
//! The backbone runs in an inference worker thread ([`crate::worker`]); the matching and the
//! judging of each frame run in this element's source pad task; the streaming thread only
//! converts the frame and queues it. So the matching of frame N overlaps the inference of frame
//! N+1, and buffers and serialized events leave in the order they came. At most
//! `max-in-flight` frames are being analysed at once (by default 1 with a live source, for the
//! lowest latency, and 2 otherwise, for throughput); a frame arriving when that many are
//! (`drop-policy`) either waits for room (`wait`) or is passed on unanalysed, with the last
//! result marked `stale` and `skipped=busy` (`skip`). No frame is ever dropped or reordered.
//!
//! Elements with the same `model-instance-id` share one loaded model and one worker, in one
//! pipeline or several of the same process; the worker batches their frames (`batch-size`,
//! `batch-timeout`). Each element keeps its own profile. Adding a stream is adding an element
//! (with the same `model-instance-id`) to a playing pipeline; removing it is setting it to
//! NULL; the model is freed when the last element using it stops.
//!
//! The element answers the latency query with `max-in-flight` analysis times (measured on a
//! warm-up frame at start, then on the stream; a `latency` message asks the pipeline to ask
//! again when it grows by a quarter). With `qos=true`, frames that downstream QoS events say
//! are late already are passed on unanalysed (`skipped=late`).
//!
//! `profile` can be changed while playing, and the `reload` action signal reads the same file
//! again: the new profile loads beside the old one, then replaces it between two frames (every
//! frame is judged wholly by one of them); a profile that fails to load leaves the old one in
//! place with a warning. Each attempt posts a `logsad-profile` element message (`path`
//! string, `loaded` boolean, `error` string when it failed).
//!
//! Interlaced input is deinterlaced before analysis, so combing is not taken for a change of
//! texture: with `interlace-mode=interleaved` every frame, with `mixed` the buffers flagged
//! interlaced. The converted RGB frame is "bob" deinterlaced: the lines of the field that comes
//! first in time stay (the top field with `field-order=top-field-first`, the bottom one with
//! `bottom-field-first`; otherwise the buffer's TFF flag decides: top when set, bottom when
//! not), and each line of the other field becomes the mean of the lines above and below it.
//! The video that goes downstream is untouched; the meta's `deinterlaced` field says whether
//! the analysed frame was deinterlaced. `interlace-mode=alternate` (one field per buffer) is
//! refused with an error: put `deinterlace` before `logsad` for such streams.

use crate::detect::deinterlace::Field;
use crate::detect::preprocess::RgbImage;
use crate::detect::regions::{RegionOptions, DEFAULT_PEAK_FRACTION};
use crate::engine::{self, EngineError, EngineOptions, Manifest};
use crate::inspector::{check_stages, FrameFeatures, InspectError, Inspector, JudgeOptions};
use crate::meta::{AnomalyResult, SkipReason};
use crate::profile::{Profile, ProfileError};
use crate::sync::lock;
use crate::worker::{Batching, InferenceWorker, StreamMember, WorkerError};
use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use super::convert::Converter;
use super::flight::{InFlight, Item, Stopped};
use super::{LogsadDevice, LogsadDropPolicy, LogsadPeakScope};

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "logsad",
        gst::DebugColorFlags::empty(),
        Some("LogSAD anomaly detector"),
    )
});

const DEFAULT_INTERVAL: u32 = 1;
/// A negative threshold means: use the profile's.
const DEFAULT_THRESHOLD: f64 = -1.0;
/// 0: chosen by the source, see [`in_flight_limit`].
const DEFAULT_MAX_IN_FLIGHT: u32 = 0;
const DEFAULT_BATCH_SIZE: u32 = 1;
const DEFAULT_BATCH_TIMEOUT_US: i64 = 0;

/// How many frames of a stream may be analysed at once: the `max-in-flight` setting, or for 0,
/// 1 with a live source (the lowest latency: two frames in flight share the CPU, and a
/// 99th-percentile latency of two analysis times needs one) and 2 otherwise (the matching of
/// one frame overlaps the inference of the next: the most frames per second).
fn in_flight_limit(setting: u32, live: bool) -> usize {
    match setting {
        0 if live => 1,
        0 => 2,
        n => n as usize,
    }
}

#[derive(Debug, Clone)]
struct Settings {
    profile: Option<PathBuf>,
    model: Option<PathBuf>,
    device: LogsadDevice,
    gpu_id: u32,
    fp16: bool,
    engine_cache_dir: Option<PathBuf>,
    threads: u32,
    threshold: f64,
    interval: u32,
    min_region_area: u32,
    region_peak_fraction: f64,
    region_peak_scope: LogsadPeakScope,
    merge_regions: bool,
    model_instance_id: Option<String>,
    batch_size: u32,
    batch_timeout_us: i64,
    max_in_flight: u32,
    drop_policy: LogsadDropPolicy,
    qos: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            profile: None,
            model: None,
            device: LogsadDevice::Cpu,
            gpu_id: 0,
            fp16: false,
            engine_cache_dir: None,
            threads: 0,
            threshold: DEFAULT_THRESHOLD,
            interval: DEFAULT_INTERVAL,
            min_region_area: 1,
            region_peak_fraction: DEFAULT_PEAK_FRACTION as f64,
            region_peak_scope: LogsadPeakScope::Frame,
            merge_regions: true,
            model_instance_id: None,
            batch_size: DEFAULT_BATCH_SIZE,
            batch_timeout_us: DEFAULT_BATCH_TIMEOUT_US,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            drop_policy: LogsadDropPolicy::Auto,
            qos: false,
        }
    }
}

impl Settings {
    fn judging(&self) -> JudgeOptions {
        JudgeOptions {
            threshold: (self.threshold >= 0.0).then_some(self.threshold),
            regions: Some(RegionOptions {
                peak_fraction: self.region_peak_fraction as f32,
                peak_scope: self.region_peak_scope.into(),
                merge_overlapping: self.merge_regions,
                min_area: self.min_region_area as usize,
            }),
        }
    }

    fn batching(&self) -> Batching {
        Batching {
            batch_size: self.batch_size.max(1) as usize,
            batch_timeout: u64::try_from(self.batch_timeout_us)
                .ok()
                .map(Duration::from_micros),
        }
    }
}

/// What the streaming thread keeps between frames.
struct State {
    /// This stream's place on the inference worker, shared or not.
    member: StreamMember,
    /// The profile frames are judged with now; replaced whole by a profile swap.
    inspector: Arc<Inspector>,
    /// The file `inspector` was loaded from.
    profile_path: PathBuf,
    converter: Option<Converter>,
    frames: u64,
    /// No frame was analysed since the start, new caps or a flush: analyse the next one.
    need_fresh: bool,
    /// Whether upstream is live (asked once, at the first frame), for `drop-policy=auto` and
    /// `max-in-flight=0`.
    live: Option<bool>,
    segment: gst::FormattedSegment<gst::ClockTime>,
    /// Whether the INFO line about deinterlacing was logged.
    told_deinterlacing: bool,
}

/// A frame waiting in the element, in stream order.
struct Frame {
    buffer: gst::Buffer,
    index: u64,
    frame_size: (u32, u32),
    work: Work,
}

enum Work {
    /// Sent to the worker; judged once its features are back.
    Analyse {
        image: Arc<RgbImage>,
        deinterlaced: bool,
        inspector: Arc<Inspector>,
        judging: JudgeOptions,
        submitted: Instant,
        features: Option<Result<FrameFeatures, InspectError>>,
    },
    /// Passed on with the last result, for this reason.
    Skip(SkipReason),
}

/// The frames in flight and the serialized events between them, on their way out.
type Queue = InFlight<Box<Frame>, gst::Event, gst::FlowError>;

impl From<Stopped<gst::FlowError>> for gst::FlowError {
    fn from(stopped: Stopped<gst::FlowError>) -> Self {
        match stopped {
            Stopped::Flushing => gst::FlowError::Flushing,
            Stopped::Failed(err) => err,
        }
    }
}

pub struct Logsad {
    sinkpad: gst::Pad,
    srcpad: gst::Pad,
    settings: Mutex<Settings>,
    state: Mutex<Option<State>>,
    /// Shared with the worker's replies.
    queue: Arc<Queue>,
    /// The last result in stream order, carried to frames not analysed; written by the source
    /// pad task only.
    last: Mutex<Option<AnomalyResult>>,
    /// The earliest running time downstream QoS still wants analysed.
    qos_earliest: Mutex<Option<gst::ClockTime>>,
    /// Counts profile swaps asked for, so that only the latest one is applied.
    swap_generation: Mutex<u64>,
    /// The execution provider in use, apart from `state` so that reading it never waits.
    provider: Mutex<Option<String>>,
}

#[glib::object_subclass]
impl ObjectSubclass for Logsad {
    const NAME: &'static str = "GstLogsad";
    type Type = super::Logsad;
    type ParentType = gst::Element;

    fn with_class(klass: &Self::Class) -> Self {
        let templ = klass.pad_template("sink").unwrap();
        let sinkpad = gst::Pad::builder_from_template(&templ)
            .chain_function(|pad, parent, buffer| {
                Logsad::catch_panic_pad_function(
                    parent,
                    || Err(gst::FlowError::Error),
                    |imp| imp.sink_chain(pad, buffer),
                )
            })
            .event_function(|pad, parent, event| {
                Logsad::catch_panic_pad_function(parent, || false, |imp| imp.sink_event(pad, event))
            })
            .query_function(|pad, parent, query| {
                Logsad::catch_panic_pad_function(parent, || false, |imp| imp.sink_query(pad, query))
            })
            .flags(gst::PadFlags::PROXY_CAPS | gst::PadFlags::PROXY_ALLOCATION)
            .build();
        let templ = klass.pad_template("src").unwrap();
        let srcpad = gst::Pad::builder_from_template(&templ)
            .event_function(|pad, parent, event| {
                Logsad::catch_panic_pad_function(parent, || false, |imp| imp.src_event(pad, event))
            })
            .query_function(|pad, parent, query| {
                Logsad::catch_panic_pad_function(parent, || false, |imp| imp.src_query(pad, query))
            })
            .activatemode_function(|pad, parent, mode, active| {
                Logsad::catch_panic_pad_function(
                    parent,
                    || Err(gst::loggable_error!(CAT, "panic activating the source pad")),
                    |imp| imp.src_activatemode(pad, mode, active),
                )
            })
            .flags(gst::PadFlags::PROXY_CAPS | gst::PadFlags::PROXY_ALLOCATION)
            .build();
        Logsad {
            sinkpad,
            srcpad,
            settings: Mutex::default(),
            state: Mutex::default(),
            queue: Arc::new(Queue::new(in_flight_limit(DEFAULT_MAX_IN_FLIGHT, false))),
            last: Mutex::default(),
            qos_earliest: Mutex::default(),
            swap_generation: Mutex::default(),
            provider: Mutex::default(),
        }
    }
}

impl ObjectImpl for Logsad {
    fn constructed(&self) {
        self.parent_constructed();
        let obj = self.obj();
        obj.add_pad(&self.sinkpad).unwrap();
        obj.add_pad(&self.srcpad).unwrap();
    }

    fn signals() -> &'static [glib::subclass::Signal] {
        static SIGNALS: LazyLock<Vec<glib::subclass::Signal>> = LazyLock::new(|| {
            vec![glib::subclass::Signal::builder("reload")
                .action()
                .class_handler(|args| {
                    let element = args[0].get::<super::Logsad>().expect("signal receiver");
                    element.imp().swap_profile(None);
                    None
                })
                .build()]
        });
        SIGNALS.as_ref()
    }

    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            vec![
                glib::ParamSpecString::builder("profile")
                    .nick("Profile")
                    .blurb(
                        "Profile file written by `logsad enroll` (memory bank, calibration, \
                         tiling, model identity); changing it while playing swaps profiles \
                         between two frames",
                    )
                    .mutable_playing()
                    .build(),
                glib::ParamSpecString::builder("model")
                    .nick("Model manifest")
                    .blurb("Model manifest JSON; must be the model the profile was built with. Unset: LOGSAD_MODEL, else the model the profile names in the data directory's models/ folder, else the default model")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("device", LogsadDevice::Cpu)
                    .nick("Device")
                    .blurb("Execution provider; an unavailable one falls back (TensorRT to CUDA, CUDA to CPU) with a warning")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("gpu-id")
                    .nick("GPU id")
                    .blurb("GPU to run on with the cuda and tensorrt devices")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("fp16")
                    .nick("FP16")
                    .blurb("Build half-precision TensorRT engines")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("engine-cache-dir")
                    .nick("Engine cache directory")
                    .blurb("Where TensorRT keeps built engines so that later starts skip the build")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("threads")
                    .nick("Threads")
                    .blurb("Threads ONNX Runtime may use within an operator (0: its default)")
                    .maximum(1024)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("model-instance-id")
                    .nick("Model instance id")
                    .blurb(
                        "Elements of one process with the same id share one loaded model and \
                         one inference worker (the first one's model, device and batching \
                         apply); unset: a model of its own",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("batch-size")
                    .nick("Batch size")
                    .blurb("The most frames, from all streams of the instance, in one inference")
                    .minimum(1)
                    .maximum(1024)
                    .default_value(DEFAULT_BATCH_SIZE)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecInt64::builder("batch-timeout")
                    .nick("Batch timeout")
                    .blurb(
                        "Microseconds to wait for more frames after the first of a batch \
                         (0: batch only frames already waiting; -1: wait until the batch is \
                         full or no stream still sending can add a frame: streams that reached \
                         EOS, flushed, failed or left are not waited for)",
                    )
                    .minimum(-1)
                    .default_value(DEFAULT_BATCH_TIMEOUT_US)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("max-in-flight")
                    .nick("Maximum frames in flight")
                    .blurb(
                        "Frames of this stream being analysed at once (as DL Streamer's nireq); \
                         2 overlaps the matching of one frame with the inference of the next \
                         (throughput), 1 keeps the latency lowest; 0: 1 with a live source, 2 \
                         otherwise",
                    )
                    .minimum(0)
                    .maximum(64)
                    .default_value(DEFAULT_MAX_IN_FLIGHT)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("drop-policy", LogsadDropPolicy::Auto)
                    .nick("Drop policy")
                    .blurb(
                        "A frame arriving while max-in-flight frames are analysed: skip (pass \
                         it on unanalysed), wait (block upstream), auto (skip when live)",
                    )
                    .mutable_playing()
                    .build(),
                glib::ParamSpecBoolean::builder("qos")
                    .nick("QoS")
                    .blurb("Pass on unanalysed the frames downstream QoS says are late")
                    .default_value(false)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecDouble::builder("threshold")
                    .nick("Threshold")
                    .blurb("Verdict threshold on the calibrated score, 0..1; negative uses the profile's")
                    .minimum(-1.0)
                    .maximum(1.0)
                    .default_value(DEFAULT_THRESHOLD)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt::builder("interval")
                    .nick("Interval")
                    .blurb("Analyse every Nth frame; the others carry the last result, marked stale")
                    .minimum(1)
                    .default_value(DEFAULT_INTERVAL)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt::builder("min-region-area")
                    .nick("Minimum region area")
                    .blurb("Smallest region, in anomaly-map cells, reported as a region of interest")
                    .minimum(1)
                    .default_value(1)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecDouble::builder("region-peak-fraction")
                    .nick("Region peak fraction")
                    .blurb(
                        "Cut each region to the map cells above this fraction of the way from its \
                         tile's median to the peak (0: every cell above the threshold)",
                    )
                    .minimum(0.0)
                    .maximum(1.0)
                    .default_value(DEFAULT_PEAK_FRACTION as f64)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecEnum::builder_with_default(
                    "region-peak-scope",
                    LogsadPeakScope::Frame,
                )
                .nick("Region peak scope")
                .blurb("Whose peak region-peak-fraction refers to: the frame's or each region's")
                .mutable_playing()
                .build(),
                glib::ParamSpecBoolean::builder("merge-regions")
                    .nick("Merge regions")
                    .blurb("Merge regions whose boxes overlap into one")
                    .default_value(true)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecString::builder("provider")
                    .nick("Provider")
                    .blurb("Execution provider in use once started: cpu, cuda or tensorrt")
                    .read_only()
                    .build(),
            ]
        });
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let mut s = lock(&self.settings);
        let path = |v: &glib::Value| v.get::<Option<String>>().unwrap().map(PathBuf::from);
        match pspec.name() {
            "profile" => {
                s.profile = path(value);
                let started = lock(&self.state).is_some();
                if let Some(profile) = s.profile.clone().filter(|_| started) {
                    drop(s);
                    self.swap_profile(Some(profile));
                }
            }
            "model" => s.model = path(value),
            "device" => s.device = value.get().unwrap(),
            "gpu-id" => s.gpu_id = value.get().unwrap(),
            "fp16" => s.fp16 = value.get().unwrap(),
            "engine-cache-dir" => s.engine_cache_dir = path(value),
            "threads" => s.threads = value.get().unwrap(),
            "model-instance-id" => {
                s.model_instance_id = value
                    .get::<Option<String>>()
                    .unwrap()
                    .filter(|id| !id.is_empty())
            }
            "batch-size" => s.batch_size = value.get().unwrap(),
            "batch-timeout" => s.batch_timeout_us = value.get().unwrap(),
            "max-in-flight" => s.max_in_flight = value.get().unwrap(),
            "drop-policy" => s.drop_policy = value.get().unwrap(),
            "qos" => s.qos = value.get().unwrap(),
            "threshold" => s.threshold = value.get().unwrap(),
            "interval" => s.interval = value.get().unwrap(),
            "min-region-area" => s.min_region_area = value.get().unwrap(),
            "region-peak-fraction" => s.region_peak_fraction = value.get().unwrap(),
            "region-peak-scope" => s.region_peak_scope = value.get().unwrap(),
            "merge-regions" => s.merge_regions = value.get().unwrap(),
            other => unreachable!("unknown property {other}"),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let s = lock(&self.settings);
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string()).to_value();
        match pspec.name() {
            "profile" => path(&s.profile),
            "model" => path(&s.model),
            "device" => s.device.to_value(),
            "gpu-id" => s.gpu_id.to_value(),
            "fp16" => s.fp16.to_value(),
            "engine-cache-dir" => path(&s.engine_cache_dir),
            "threads" => s.threads.to_value(),
            "model-instance-id" => s.model_instance_id.to_value(),
            "batch-size" => s.batch_size.to_value(),
            "batch-timeout" => s.batch_timeout_us.to_value(),
            "max-in-flight" => s.max_in_flight.to_value(),
            "drop-policy" => s.drop_policy.to_value(),
            "qos" => s.qos.to_value(),
            "threshold" => s.threshold.to_value(),
            "interval" => s.interval.to_value(),
            "min-region-area" => s.min_region_area.to_value(),
            "region-peak-fraction" => s.region_peak_fraction.to_value(),
            "region-peak-scope" => s.region_peak_scope.to_value(),
            "merge-regions" => s.merge_regions.to_value(),
            "provider" => lock(&self.provider).to_value(),
            other => unreachable!("unknown property {other}"),
        }
    }
}

impl GstObjectImpl for Logsad {}

impl ElementImpl for Logsad {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static METADATA: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "LogSAD anomaly detector",
                "Filter/Analyzer/Video",
                "Training-free anomaly detection: scores, verdict and anomaly map as metadata",
                "gst-logsad developers",
            )
        });
        Some(&*METADATA)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            use gst_video::VideoFormat::*;
            let formats = [
                Rgb, Bgr, Rgbx, Bgrx, Xrgb, Xbgr, Rgba, Bgra, Argb, Abgr, I420, Yv12, Nv12, Nv21,
                Yuy2, Uyvy, Y444, Y42b, Gray8,
            ];
            let mut caps = gst_video::VideoCapsBuilder::new()
                .format_list(formats)
                .build();
            // Alternate-field caps are accepted only to be refused with an error that says
            // what to do, instead of an anonymous negotiation failure.
            caps.merge(
                gst_video::VideoCapsBuilder::new()
                    .features([gst_video::CAPS_FEATURE_FORMAT_INTERLACED])
                    .format_list(formats)
                    .field("interlace-mode", "alternate")
                    .build(),
            );
            vec![
                gst::PadTemplate::new(
                    "src",
                    gst::PadDirection::Src,
                    gst::PadPresence::Always,
                    &caps,
                )
                .unwrap(),
                gst::PadTemplate::new(
                    "sink",
                    gst::PadDirection::Sink,
                    gst::PadPresence::Always,
                    &caps,
                )
                .unwrap(),
            ]
        });
        TEMPLATES.as_ref()
    }

    fn change_state(
        &self,
        transition: gst::StateChange,
    ) -> Result<gst::StateChangeSuccess, gst::StateChangeError> {
        if transition == gst::StateChange::ReadyToPaused {
            if let Err(message) = self.start() {
                self.post_error_message(message);
                return Err(gst::StateChangeError);
            }
        }
        let success = self.parent_change_state(transition)?;
        if transition == gst::StateChange::PausedToReady {
            self.stop();
        }
        Ok(success)
    }
}

impl Logsad {
    /// Loads (or joins) the model and loads the profile.
    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let settings = lock(&self.settings).clone();
        let profile = settings.profile.clone().ok_or_else(|| {
            gst::error_msg!(
                gst::ResourceError::NotFound,
                ("No profile set: set the `profile` property to a file written by `logsad enroll`")
            )
        })?;
        let options = EngineOptions {
            device: settings.device.into(),
            gpu_id: settings.gpu_id,
            fp16: settings.fp16,
            engine_cache_dir: settings.engine_cache_dir.clone(),
            threads: settings.threads as usize,
        };
        let batching = settings.batching();
        let loaded = std::panic::catch_unwind(|| -> Result<_, WorkerError> {
            // The profile is read and checked against the manifest before the model loads.
            let read = Profile::load(&profile).map_err(InspectError::from)?;
            let model = settings
                .model
                .clone()
                .unwrap_or_else(|| engine::model_for_profile(&read.header.model.name));
            let manifest = Manifest::load(&model)
                .map_err(EngineError::from)
                .map_err(InspectError::from)?;
            check_stages(&read, &profile, &manifest, &model)?;
            let (worker, mut warnings) = match &settings.model_instance_id {
                Some(id) => InferenceWorker::shared(id, &model, &options, batching)?,
                None => {
                    let (worker, warnings) = InferenceWorker::start(&model, &options, batching)?;
                    (Arc::new(worker), warnings)
                }
            };
            let (inspector, more) = Inspector::for_model(
                read,
                &profile,
                worker.manifest(),
                worker.identity(),
                worker.upsample(),
            )?;
            warnings.extend(more);
            Ok((worker, inspector, warnings))
        })
        .map_err(|_| gst::error_msg!(gst::LibraryError::Init, ("Loading the profile panicked")))?;
        let (worker, inspector, warnings) = loaded.map_err(|e| match e {
            WorkerError::DifferentModel { .. } => {
                gst::error_msg!(gst::LibraryError::Settings, ("{}", e))
            }
            _ => gst::error_msg!(gst::ResourceError::OpenRead, ("{}", e)),
        })?;
        for w in warnings {
            gst::element_imp_warning!(self, gst::LibraryError::Init, ("{}", w));
        }
        gst::info!(
            CAT,
            imp = self,
            "loaded profile {} with model {} on {}{}",
            profile.display(),
            worker.manifest().name,
            worker.provider(),
            settings
                .model_instance_id
                .as_ref()
                .map(|id| format!(" (model-instance-id {id})"))
                .unwrap_or_default()
        );
        let inspector = Arc::new(inspector);
        let warm_up = self.warm_up(&worker, &inspector, &settings.judging());
        *lock(&self.provider) = Some(worker.provider().to_string());
        self.queue.reset_latency(warm_up);
        *lock(&self.last) = None;
        *lock(&self.qos_earliest) = None;
        let member = StreamMember::join(worker, in_flight_limit(settings.max_in_flight, false));
        *lock(&self.state) = Some(State {
            member,
            inspector,
            profile_path: profile,
            converter: None,
            frames: 0,
            need_fresh: true,
            live: None,
            segment: gst::FormattedSegment::new(),
            told_deinterlacing: false,
        });
        Ok(())
    }

    /// Analyses a grey frame of the model's input size, so that the first real frame does not
    /// pay for the runtime's first call, and the latency query has an analysis time to give.
    fn warm_up(
        &self,
        worker: &InferenceWorker,
        inspector: &Inspector,
        judging: &JudgeOptions,
    ) -> Option<Duration> {
        let (width, height) = crate::inspector::input_size(worker.manifest());
        let pixels = vec![128u8; (width * height * 3) as usize];
        let image = Arc::new(RgbImage::new(width, height, pixels).ok()?);
        let start = Instant::now();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let features = worker.features_now(image.clone(), inspector.tilings().into())?;
            inspector.judge_features(&features, &image, judging)
        }));
        match outcome {
            Ok(Ok(_)) => Some(start.elapsed()),
            Ok(Err(e)) => {
                gst::warning!(CAT, imp = self, "warm-up frame failed: {e}");
                None
            }
            Err(_) => {
                gst::warning!(CAT, imp = self, "warm-up frame panicked");
                None
            }
        }
    }

    fn stop(&self) {
        *lock(&self.state) = None;
        *lock(&self.provider) = None;
        self.queue.clear();
        *lock(&self.last) = None;
    }

    /// Loads `path` (or the current profile again when `None`) in a thread of its own and
    /// swaps it in; posts `logsad-profile`.
    fn swap_profile(&self, path: Option<PathBuf>) {
        let Some(path) = path.or_else(|| lock(&self.settings).profile.clone()) else {
            gst::element_imp_warning!(
                self,
                gst::ResourceError::NotFound,
                ("reload: no profile set")
            );
            return;
        };
        let Some(worker) = lock(&self.state)
            .as_ref()
            .map(|s| s.member.worker().clone())
        else {
            // Not started: the profile is loaded at start.
            return;
        };
        let generation = {
            let mut g = lock(&self.swap_generation);
            *g += 1;
            *g
        };
        let element = self.obj().downgrade();
        let path_shown = path.display().to_string();
        let spawned = std::thread::Builder::new()
            .name("logsad-profile".into())
            .spawn(move || {
                let loaded = std::panic::catch_unwind(|| worker.load_profile(&path))
                    .unwrap_or_else(|_| {
                        Err(InspectError::Profile(ProfileError::Corrupt {
                            path: path.clone(),
                            reason: "loading it panicked".into(),
                        }))
                    });
                if let Some(element) = element.upgrade() {
                    element.imp().finish_swap(&path, generation, loaded);
                }
            });
        if let Err(e) = spawned {
            gst::element_imp_warning!(
                self,
                gst::CoreError::Thread,
                ("cannot start loading profile {}: {}", path_shown, e)
            );
        }
    }

    fn finish_swap(
        &self,
        path: &Path,
        generation: u64,
        loaded: Result<(Inspector, Vec<String>), InspectError>,
    ) {
        let outcome = match loaded {
            Ok((inspector, warnings)) => {
                for w in warnings {
                    gst::element_imp_warning!(self, gst::LibraryError::Init, ("{}", w));
                }
                let latest = *lock(&self.swap_generation) == generation;
                let mut state = lock(&self.state);
                match state.as_mut().filter(|_| latest) {
                    Some(state) => {
                        state.inspector = Arc::new(inspector);
                        state.profile_path = path.to_path_buf();
                        state.need_fresh = true;
                        gst::info!(CAT, imp = self, "profile {} swapped in", path.display());
                        Ok(())
                    }
                    None => Err("superseded by a later profile change, or stopped".to_string()),
                }
            }
            Err(e) => {
                gst::element_imp_warning!(
                    self,
                    gst::ResourceError::OpenRead,
                    (
                        "profile {} not swapped in, the previous one stays: {}",
                        path.display(),
                        e
                    )
                );
                // The property names the profile in use, so that `reload` or a restart does
                // not pick up the file that failed.
                let in_use = lock(&self.state).as_ref().map(|s| s.profile_path.clone());
                if let Some(in_use) = in_use {
                    let mut settings = lock(&self.settings);
                    if settings.profile.as_deref() == Some(path) && in_use != path {
                        settings.profile = Some(in_use);
                        drop(settings);
                        self.obj().notify("profile");
                    }
                }
                Err(e.to_string())
            }
        };
        let mut s = gst::Structure::builder("logsad-profile")
            .field("path", path.display().to_string())
            .field("loaded", outcome.is_ok())
            .build();
        if let Err(e) = outcome {
            s.set("error", e);
        }
        let _ = self
            .obj()
            .post_message(gst::message::Element::builder(s).src(&*self.obj()).build());
    }

    fn set_caps(&self, caps: &gst::Caps) -> bool {
        let Ok(info) = gst_video::VideoInfo::from_caps(caps) else {
            gst::element_imp_error!(
                self,
                gst::StreamError::Format,
                ("unsupported caps {}", caps)
            );
            return false;
        };
        if info.interlace_mode() == gst_video::VideoInterlaceMode::Alternate {
            gst::element_imp_error!(
                self,
                gst::StreamError::Format,
                ("interlace-mode=alternate (one field per buffer) is not supported: put \
                     `deinterlace` before logsad"),
                ["caps {}", caps]
            );
            return false;
        }
        let converter = match Converter::new(&info) {
            Ok(c) => c,
            Err(e) => {
                gst::element_imp_error!(
                    self,
                    gst::StreamError::Format,
                    ("cannot convert {} to RGB: {}", caps, e)
                );
                return false;
            }
        };
        let mut state = lock(&self.state);
        let Some(state) = state.as_mut() else {
            return false;
        };
        state.converter = Some(converter);
        // A carried result's regions are in the old frame's pixels: analyse the next frame.
        state.need_fresh = true;
        true
    }

    fn sink_event(&self, pad: &gst::Pad, event: gst::Event) -> bool {
        use gst::EventView;
        match event.view() {
            EventView::FlushStart(_) => {
                self.stream_idle();
                let forwarded = self.srcpad.push_event(event);
                self.queue.start_flushing();
                let _ = self.srcpad.pause_task();
                forwarded
            }
            EventView::FlushStop(_) => {
                // The carried result describes a frame from before the seek (the task is
                // paused: it cannot set another before the flush ends).
                *lock(&self.last) = None;
                // Frames and the segment go; sticky events not pushed yet (caps, tags,
                // stream-start) still hold after the flush and go downstream first.
                self.queue.stop_flushing(|e| {
                    e.is_sticky()
                        && !matches!(e.type_(), gst::EventType::Segment | gst::EventType::Eos)
                });
                if let Some(state) = lock(&self.state).as_mut() {
                    state.need_fresh = true;
                }
                *lock(&self.qos_earliest) = None;
                let forwarded = self.srcpad.push_event(event);
                if self.srcpad.is_active() {
                    self.start_task();
                }
                forwarded
            }
            EventView::Caps(c) => {
                let caps = c.caps_owned();
                self.set_caps(&caps) && self.queue.push(Item::Event(event))
            }
            EventView::Segment(s) => {
                if let Some(state) = lock(&self.state).as_mut() {
                    if let Ok(segment) = s.segment().clone().downcast::<gst::ClockTime>() {
                        state.segment = segment;
                    }
                }
                self.queue.push(Item::Event(event))
            }
            EventView::Eos(_) => {
                self.stream_idle();
                self.queue.push(Item::Event(event))
            }
            _ if event.is_serialized() => self.queue.push(Item::Event(event)),
            _ => gst::Pad::event_default(pad, Some(&*self.obj()), event),
        }
    }

    /// Tells the inference worker that this stream sends no frames for now (EOS, flush,
    /// error), so that batches without a timeout stop waiting for it.
    fn stream_idle(&self) {
        if let Some(state) = lock(&self.state).as_ref() {
            state.member.idle();
        }
    }

    fn sink_query(&self, pad: &gst::Pad, query: &mut gst::QueryRef) -> bool {
        if query.is_serialized() {
            // Answered once the frames before it are out (an allocation or drain query must
            // see the stream as downstream will); not at all when flushing or failed.
            if self.queue.wait_drained().is_err() {
                return false;
            }
        }
        gst::Pad::query_default(pad, Some(&*self.obj()), query)
    }

    fn src_event(&self, pad: &gst::Pad, event: gst::Event) -> bool {
        if let gst::EventView::Qos(qos) = event.view() {
            let (_, _, diff, timestamp) = qos.get();
            if let Some(timestamp) = timestamp {
                // Frames before this running time would arrive late: not worth analysing.
                let earliest = if diff > 0 {
                    timestamp.saturating_add(gst::ClockTime::from_nseconds(diff as u64))
                } else {
                    timestamp.saturating_sub(gst::ClockTime::from_nseconds(diff.unsigned_abs()))
                };
                // Recorded only while QoS is on: a deadline from before must not apply later.
                if lock(&self.settings).qos {
                    *lock(&self.qos_earliest) = Some(earliest);
                }
            }
        }
        gst::Pad::event_default(pad, Some(&*self.obj()), event)
    }

    fn src_query(&self, pad: &gst::Pad, query: &mut gst::QueryRef) -> bool {
        if let gst::QueryViewMut::Latency(q) = query.view_mut() {
            let mut upstream = gst::query::Latency::new();
            if !self.sinkpad.peer_query(&mut upstream) {
                return false;
            }
            let (live, min, max) = upstream.result();
            let setting = lock(&self.settings).max_in_flight;
            // The latency this element adds: `max-in-flight` analysis times.
            let ours = self.queue.report_latency(in_flight_limit(setting, live));
            let ours = gst::ClockTime::from_nseconds(ours.as_nanos() as u64);
            gst::debug!(
                CAT,
                imp = self,
                "adding {ours} of latency to upstream's {min}"
            );
            q.set(live, min + ours, max.map(|m| m + ours));
            return true;
        }
        gst::Pad::query_default(pad, Some(&*self.obj()), query)
    }

    fn src_activatemode(
        &self,
        _pad: &gst::Pad,
        mode: gst::PadMode,
        active: bool,
    ) -> Result<(), gst::LoggableError> {
        if mode != gst::PadMode::Push {
            return Err(gst::loggable_error!(CAT, "only push mode is supported"));
        }
        if active {
            self.queue.resume();
            self.start_task();
        } else {
            self.queue.start_flushing();
            self.srcpad
                .stop_task()
                .map_err(|e| gst::loggable_error!(CAT, "cannot stop the task: {e}"))?;
        }
        Ok(())
    }

    fn start_task(&self) {
        let element = self.obj().downgrade();
        let pad = self.srcpad.downgrade();
        let started = self.srcpad.start_task(move || match element.upgrade() {
            Some(element) => element.imp().push_next(),
            None => {
                if let Some(pad) = pad.upgrade() {
                    let _ = pad.pause_task();
                }
            }
        });
        if let Err(e) = started {
            gst::element_imp_error!(
                self,
                gst::CoreError::Thread,
                ("cannot start the output task: {}", e)
            );
        }
    }

    /// The source pad task: pushes the next item once it is ready, in stream order.
    fn push_next(&self) {
        let Some(item) = self.queue.next() else {
            let _ = self.srcpad.pause_task();
            return;
        };
        let flow = match item {
            Item::Event(event) => {
                let eos = matches!(event.view(), gst::EventView::Eos(_));
                if matches!(event.view(), gst::EventView::Caps(_)) {
                    *lock(&self.last) = None;
                }
                self.srcpad.push_event(event);
                if eos {
                    Err(gst::FlowError::Eos)
                } else {
                    Ok(gst::FlowSuccess::Ok)
                }
            }
            Item::Frame(frame) => self.finish_frame(*frame),
        };
        // Serialized queries wait for the queue to empty and the last item to be pushed; a
        // failure (not EOS, which only ends the stream) is returned to upstream.
        let failure = flow.err().filter(|&err| err != gst::FlowError::Eos);
        let flushing = self.queue.pushed(failure);
        if let Err(err) = flow {
            match err {
                gst::FlowError::Eos | gst::FlowError::Flushing => {}
                _ if flushing => {}
                gst::FlowError::NotLinked
                | gst::FlowError::NotNegotiated
                | gst::FlowError::Error => {
                    gst::element_imp_error!(
                        self,
                        gst::StreamError::Failed,
                        ("Internal data flow error."),
                        ["streaming task paused, reason {:?}", err]
                    );
                }
                _ => {}
            }
            if err != gst::FlowError::Eos {
                self.stream_idle();
                let _ = self.srcpad.pause_task();
            }
        }
    }

    /// Judges `frame` (or gives it the last result), attaches the meta and pushes it.
    fn finish_frame(&self, frame: Frame) -> Result<gst::FlowSuccess, gst::FlowError> {
        let Frame {
            mut buffer,
            index,
            frame_size,
            work,
        } = frame;
        let result = match work {
            Work::Skip(reason) => {
                let carried = lock(&self.last).as_ref().map(|last| last.carried(reason));
                // Not holding `last`: `threshold_now` takes the settings and state locks, and
                // `last` is never held while taking another.
                carried.unwrap_or_else(|| {
                    AnomalyResult::placeholder(index, self.threshold_now(), reason)
                })
            }
            Work::Analyse {
                image,
                deinterlaced,
                inspector,
                judging,
                submitted,
                features,
            } => {
                let judged =
                    features
                        .expect("a ready frame has its features")
                        .and_then(|features| {
                            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                inspector.judge_features(&features, &image, &judging)
                            }))
                            .unwrap_or_else(|_| {
                                Err(InspectError::Inference("the detectors panicked".into()))
                            })
                        });
                let done = self.queue.frame_done(submitted.elapsed());
                let judged = judged.map_err(|e| {
                    gst::element_imp_error!(
                        self,
                        gst::LibraryError::Failed,
                        ("analysis of frame {} failed: {}", index, e)
                    );
                    gst::FlowError::Error
                })?;
                let result = AnomalyResult::from_frame(&judged, index, deinterlaced);
                *lock(&self.last) = Some(result.clone());
                if let Some(grown) = done {
                    gst::debug!(CAT, imp = self, "analysis takes {grown:?}: latency changed");
                    let _ = self
                        .obj()
                        .post_message(gst::message::Latency::builder().src(&*self.obj()).build());
                }
                if result.anomalous {
                    self.post_anomaly(&buffer, &result);
                }
                result
            }
        };
        let buf = buffer.make_mut();
        result.attach_with_rois(buf, frame_size).map_err(|e| {
            gst::element_imp_error!(
                self,
                gst::CoreError::Failed,
                ("cannot attach metadata: {}", e)
            );
            gst::FlowError::Error
        })?;
        self.srcpad.push(buffer)
    }

    fn threshold_now(&self) -> f64 {
        let threshold = lock(&self.settings).threshold;
        if threshold >= 0.0 {
            return threshold;
        }
        lock(&self.state)
            .as_ref()
            .map(|s| s.inspector.profile.header.threshold)
            .unwrap_or(0.5)
    }

    fn sink_chain(
        &self,
        _pad: &gst::Pad,
        buffer: gst::Buffer,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        self.queue.flow()?;
        let settings = lock(&self.settings).clone();
        let mut guard = lock(&self.state);
        let state = guard.as_mut().ok_or(gst::FlowError::Flushing)?;
        let index = state.frames;
        state.frames += 1;
        let converter = state.converter.as_mut().ok_or_else(|| {
            gst::element_imp_error!(self, gst::CoreError::Negotiation, ("no caps negotiated"));
            gst::FlowError::NotNegotiated
        })?;
        let frame_size = (converter.in_info.width(), converter.in_info.height());

        let late = settings.qos && {
            let running = state.segment.to_running_time(buffer.pts());
            let earliest = *lock(&self.qos_earliest);
            matches!((running, earliest), (Some(r), Some(e)) if r < e)
        };
        let interval = settings.interval.max(1) as u64;
        let mut skip = if late {
            Some(SkipReason::Late)
        } else if !state.need_fresh && index % interval != 0 {
            Some(SkipReason::Interval)
        } else {
            None
        };
        if skip.is_none() {
            let live = match state.live {
                Some(live) => live,
                None => {
                    let mut q = gst::query::Latency::new();
                    let live = self.sinkpad.peer_query(&mut q) && q.result().0;
                    state.live = Some(live);
                    live
                }
            };
            let policy = match settings.drop_policy {
                LogsadDropPolicy::Auto if live => LogsadDropPolicy::Skip,
                LogsadDropPolicy::Auto => LogsadDropPolicy::Wait,
                other => other,
            };
            let max = in_flight_limit(settings.max_in_flight, live);
            state.member.set_capacity(max);
            if policy == LogsadDropPolicy::Skip {
                if !self.queue.has_room(max) {
                    skip = Some(SkipReason::Busy);
                }
            } else {
                // The streaming thread waits here, not holding the state lock, for room.
                drop(guard);
                self.queue.wait_for_room(max)?;
                guard = lock(&self.state);
            }
        }
        let state = guard.as_mut().ok_or(gst::FlowError::Flushing)?;

        let Some(reason) = skip else {
            return self.submit(state, buffer, index, frame_size, &settings);
        };
        drop(guard);
        let frame = Frame {
            buffer,
            index,
            frame_size,
            work: Work::Skip(reason),
        };
        if !self.queue.push(Item::Frame(Box::new(frame))) {
            return Err(gst::FlowError::Flushing);
        }
        Ok(gst::FlowSuccess::Ok)
    }

    /// Converts the frame, queues it and sends it to the worker.
    fn submit(
        &self,
        state: &mut State,
        buffer: gst::Buffer,
        index: u64,
        frame_size: (u32, u32),
        settings: &Settings,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        let converter = state
            .converter
            .as_mut()
            .ok_or(gst::FlowError::NotNegotiated)?;
        let (image, field) = converter.convert(&buffer).map_err(|e| {
            gst::element_imp_error!(
                self,
                gst::StreamError::Format,
                ("cannot read frame {}: {}", index, e)
            );
            gst::FlowError::Error
        })?;
        if let Some(field) = field.filter(|_| !state.told_deinterlacing) {
            state.told_deinterlacing = true;
            gst::info!(
                CAT,
                imp = self,
                "interlaced input: frames are deinterlaced (bob, keeping the {} field) before \
                 analysis; the video itself goes on untouched",
                match field {
                    Field::Top => "top",
                    Field::Bottom => "bottom",
                }
            );
        }
        state.need_fresh = false;
        let image = Arc::new(image);
        let inspector = state.inspector.clone();
        let tilings: Arc<[_]> = inspector.tilings().into();
        let frame = Frame {
            buffer,
            index,
            frame_size,
            work: Work::Analyse {
                image: image.clone(),
                deinterlaced: field.is_some(),
                inspector,
                judging: settings.judging(),
                submitted: Instant::now(),
                features: None,
            },
        };
        let ticket = self
            .queue
            .submit(Box::new(frame))
            .ok_or(gst::FlowError::Flushing)?;
        // Sent after queueing: the reply may come at once.
        let queue = self.queue.clone();
        state.member.submit(
            image,
            tilings,
            Box::new(move |answer| {
                queue.answer(ticket, |frame| {
                    if let Work::Analyse { features, .. } = &mut frame.work {
                        *features = Some(answer);
                    }
                })
            }),
        );
        Ok(gst::FlowSuccess::Ok)
    }

    /// Posts the `logsad-anomaly` element message: `frame` (guint64), `timestamp` (guint64 PTS
    /// in ns, `G_MAXUINT64` when none), `score`, `calibrated` (double), `regions` (guint, how
    /// many) and `rules` (the fired rules, an array of `rule` structures as in the meta's
    /// `rules` field).
    fn post_anomaly(&self, buf: &gst::BufferRef, result: &AnomalyResult) {
        let s = gst::Structure::builder("logsad-anomaly")
            .field("frame", result.frame)
            .field(
                "timestamp",
                buf.pts().map(|t| t.nseconds()).unwrap_or(u64::MAX),
            )
            .field("score", result.score)
            .field("calibrated", result.calibrated)
            .field(
                "regions",
                result.regions.as_ref().map_or(0, Vec::len) as u32,
            )
            .field("rules", crate::meta::rules_array(&result.rules))
            .build();
        let _ = self
            .obj()
            .post_message(gst::message::Element::builder(s).src(&*self.obj()).build());
    }
}
