/**
 * SECTION:element-anomalyrecord
 * @see_also: logsad, anomalyoverlay, anomalypublish
 *
 * Keeps the last seconds of encoded video (H.264 or H.265 as `h264parse`/`h265parse` output
 * it) in a ring of whole GOPs and writes one playable clip per anomalous event, from the
 * verdicts `logsad` attached as `LogsadAnomalyMeta` (which `x264enc`/`x265enc` and the parsers
 * carry over to the encoded pictures). Clips hold `pre-seconds` before the first anomalous
 * picture (from the key frame at or before that time) and `post-seconds` after the last one; an
 * anomaly before the open clip's end extends it, so overlapping events make one clip.
 *
 * Clips go to the folder `location` as `STREAM-YYYYMMDDTHHMMSS.mmmZ.mp4` (or `.mkv` with
 * `container=matroska`), named after `stream-name` and the clip's first picture in UTC. Each is
 * muxed by its own internal pipeline (`appsrc ! h264parse ! mp4mux ! filesink`), so the streaming
 * thread only hands over buffers. When a clip is complete the element posts an element message
 * `logsad-clip` and appends a line to `clips.jsonl` in the same folder, both with the clip's
 * path, stream name, start and end (running time and UTC), event start and end, peak scores,
 * anomalous pictures, pictures and merged events.
 *
 * A clip that cannot be written (unwritable folder, full disk) is a warning naming the file and
 * the cause; the stream keeps flowing and the next event tries again. EOS and stopping finish
 * the open clip (shorter, still playable) before the element's EOS goes on; a flush finishes it
 * too and starts the ring afresh.
 *
 * ## Example launch line
 *
 * |[
 * gst-launch-1.0 -e v4l2src ! videoconvert ! logsad profile=line3.logsad ! anomalyoverlay ! \
 *     videoconvert ! x264enc key-int-max=30 ! h264parse ! \
 *     anomalyrecord location=clips/cam1 stream-name=cam1 pre-seconds=5 post-seconds=5
 * ]|
 */
use crate::sync::lock;
use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::prelude::*;
use gst_base::subclass::prelude::*;

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use super::plan::{
    clip_file_name, Action, ClipRecord, ClipSummary, Config, Planner, Unit, Verdict,
};
use super::Container;
use crate::meta::AnomalyResult;

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "anomalyrecord",
        gst::DebugColorFlags::empty(),
        Some("LogSAD defect clip recorder"),
    )
});

const DEFAULT_LOCATION: &str = "clips";
const DEFAULT_PRE_SECONDS: f64 = 5.0;
const DEFAULT_POST_SECONDS: f64 = 5.0;
const DEFAULT_MAX_RING_BYTES: u64 = 256 * 1024 * 1024;
/// Longest `pre-seconds`/`post-seconds`: one hour.
const MAX_SECONDS: f64 = 3600.0;
/// The name of the clip index in the clip folder.
pub const INDEX_NAME: &str = "clips.jsonl";
/// How long finishing a clip may take after its last picture (muxing what is queued and
/// writing the index of an MP4): longer means a stuck file system; the clip is given up.
const FINISH_TIMEOUT: gst::ClockTime = gst::ClockTime::from_seconds(60);

#[derive(Debug, Clone)]
struct Settings {
    location: String,
    stream_name: Option<String>,
    container: Container,
    pre_seconds: f64,
    post_seconds: f64,
    max_ring_bytes: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            location: DEFAULT_LOCATION.to_string(),
            stream_name: None,
            container: Container::default(),
            pre_seconds: DEFAULT_PRE_SECONDS,
            post_seconds: DEFAULT_POST_SECONDS,
            max_ring_bytes: DEFAULT_MAX_RING_BYTES,
        }
    }
}

/// The internal pipeline writing one clip.
struct ClipWriter {
    pipeline: gst::Pipeline,
    appsrc: gst_app::AppSrc,
    path: PathBuf,
    /// Raw DTS (else PTS) of the clip's first picture: subtracted from every timestamp so that
    /// the clip starts at 0.
    base: gst::ClockTime,
}

/// The first error message on `bus`, if one was posted.
fn bus_error(bus: &gst::Bus) -> Option<String> {
    bus.pop_filtered(&[gst::MessageType::Error])
        .and_then(|m| match m.view() {
            gst::MessageView::Error(e) => Some(match e.debug() {
                Some(d) => format!("{} ({d})", e.error()),
                None => e.error().to_string(),
            }),
            _ => None,
        })
}

impl ClipWriter {
    /// Builds and starts `appsrc ! PARSER ! MUXER ! filesink location=path` for `caps`; the
    /// clip's timestamps start at `first` (the first picture's raw DTS or PTS).
    fn start(
        caps: &gst::Caps,
        container: Container,
        path: &Path,
        first: gst::ClockTime,
    ) -> Result<ClipWriter, String> {
        let parser = match caps.structure(0).map(|s| s.name().as_str()) {
            Some("video/x-h265") => "h265parse",
            _ => "h264parse",
        };
        let make = |factory: &str| {
            gst::ElementFactory::make(factory)
                .build()
                .map_err(|e| format!("cannot create {factory}: {e}"))
        };
        let appsrc = gst_app::AppSrc::builder()
            .caps(caps)
            .format(gst::Format::Time)
            .max_bytes(0)
            .build();
        let parse = make(parser)?;
        let mux = make(container.muxer())?;
        let sink = gst::ElementFactory::make("filesink")
            .property("location", path.to_string_lossy().as_ref())
            .property("sync", false)
            .property("async", false)
            .build()
            .map_err(|e| format!("cannot create filesink: {e}"))?;
        let pipeline = gst::Pipeline::with_name("anomalyrecord-clip");
        pipeline
            .add_many([appsrc.upcast_ref(), &parse, &mux, &sink])
            .map_err(|e| e.to_string())?;
        gst::Element::link_many([appsrc.upcast_ref(), &parse, &mux, &sink])
            .map_err(|e| format!("cannot link {parser} to {}: {e}", container.muxer()))?;
        let writer = ClipWriter {
            pipeline,
            appsrc,
            path: path.to_owned(),
            base: first,
        };
        if writer.pipeline.set_state(gst::State::Playing).is_err() {
            let cause = writer
                .pipeline
                .bus()
                .and_then(|b| bus_error(&b))
                .unwrap_or_else(|| "the clip pipeline did not start".into());
            let _ = writer.pipeline.set_state(gst::State::Null);
            return Err(cause);
        }
        Ok(writer)
    }

    /// Queues `buffer` (re-stamped to the clip's time) for the clip; fails with the cause when
    /// the clip pipeline has failed.
    fn push(&self, buffer: &gst::Buffer) -> Result<(), String> {
        if let Some(cause) = self.pipeline.bus().and_then(|b| bus_error(&b)) {
            return Err(cause);
        }
        let mut copy = buffer.copy();
        {
            let b = copy.make_mut();
            let shift = |t: Option<gst::ClockTime>| t.map(|t| t.saturating_sub(self.base));
            b.set_pts(shift(buffer.pts()));
            b.set_dts(shift(buffer.dts()));
        }
        self.appsrc
            .push_buffer(copy)
            .map(|_| ())
            .map_err(|e| format!("the clip pipeline refused data: {e:?}"))
    }

    /// Ends the clip and waits until it is written; fails with the cause.
    fn finish(self) -> Result<PathBuf, (PathBuf, String)> {
        let result = self.wait_written();
        let _ = self.pipeline.set_state(gst::State::Null);
        match result {
            Ok(()) => Ok(self.path),
            Err(cause) => Err((self.path, cause)),
        }
    }

    fn wait_written(&self) -> Result<(), String> {
        self.appsrc
            .end_of_stream()
            .map_err(|e| format!("the clip pipeline refused the end of stream: {e:?}"))?;
        let bus = self.pipeline.bus().ok_or("the clip pipeline has no bus")?;
        match bus.timed_pop_filtered(
            FINISH_TIMEOUT,
            &[gst::MessageType::Eos, gst::MessageType::Error],
        ) {
            Some(m) => match m.view() {
                gst::MessageView::Eos(_) => Ok(()),
                gst::MessageView::Error(e) => Err(match e.debug() {
                    Some(d) => format!("{} ({d})", e.error()),
                    None => e.error().to_string(),
                }),
                _ => unreachable!("filtered on EOS and errors"),
            },
            None => Err(format!(
                "the clip was not written within {} s",
                FINISH_TIMEOUT.seconds()
            )),
        }
    }

    /// Gives the clip up: stops its pipeline and removes the partial file.
    fn abandon(self) {
        let _ = self.pipeline.set_state(gst::State::Null);
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Created in `start`, dropped in `stop`.
struct State {
    planner: Planner<gst::Buffer>,
    /// The open clip's writer; `None` when no clip is open or the open one failed.
    writer: Option<ClipWriter>,
    /// Threads finishing closed clips.
    finishing: Vec<JoinHandle<()>>,
    /// (running time, Unix time) of the first picture, both ns: the wall clock of running time
    /// `t` is `unix + (t - running)`.
    anchor: Option<(u64, i64)>,
    folder: PathBuf,
    stream: String,
    container: Container,
    /// The ring overflow warning was posted.
    warned_overflow: bool,
}

impl State {
    fn wall(&self, running: u64) -> i64 {
        match self.anchor {
            Some((rt, unix)) => unix + (running as i64 - rt as i64),
            None => unix_now(),
        }
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

#[derive(Default)]
pub struct AnomalyRecord {
    settings: Mutex<Settings>,
    state: Mutex<Option<State>>,
    /// The negotiated caps, given to each clip's `appsrc`.
    caps: Mutex<Option<gst::Caps>>,
    /// Serialises appends to the index from the finishing threads.
    index_lock: Arc<Mutex<()>>,
}

/// What a finishing thread needs besides the writer.
struct Finish {
    element: glib::WeakRef<super::AnomalyRecord>,
    index: PathBuf,
    index_lock: Arc<Mutex<()>>,
    stream: String,
    summary: ClipSummary,
    /// Unix time (ns) of running time 0.
    wall_offset: i64,
}

impl Finish {
    fn run(self, writer: ClipWriter) {
        let element = self.element.upgrade();
        match writer.finish() {
            Ok(path) => {
                let offset = self.wall_offset;
                let record = ClipRecord::new(
                    path.to_string_lossy().into_owned(),
                    self.stream,
                    &self.summary,
                    |rt| offset + rt as i64,
                );
                let written = {
                    let _guard = lock(&self.index_lock);
                    OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&self.index)
                        .and_then(|mut f| writeln!(f, "{}", record.to_json_line()))
                };
                let Some(element) = element else { return };
                if let Err(err) = written {
                    gst::element_warning!(
                        element,
                        gst::ResourceError::Write,
                        (
                            "Could not add clip {} to the index {}: {}",
                            record.path,
                            self.index.display(),
                            err
                        )
                    );
                }
                gst::info!(CAT, obj = element, "Clip {} written", record.path);
                let s = gst::Structure::builder("logsad-clip")
                    .field("path", &record.path)
                    .field("stream-name", &record.stream)
                    .field("start", record.start)
                    .field("end", record.end)
                    .field("start-wall", &record.start_wall)
                    .field("end-wall", &record.end_wall)
                    .field("event-start", record.event_start)
                    .field("event-end", record.event_end)
                    .field("peak-score", record.peak_score)
                    .field("peak-calibrated", record.peak_calibrated)
                    .field("anomalous-frames", record.anomalous_frames)
                    .field("frames", record.frames)
                    .field("events", record.events)
                    .build();
                let _ =
                    element.post_message(gst::message::Element::builder(s).src(&element).build());
            }
            Err((path, cause)) => {
                let _ = std::fs::remove_file(&path);
                if let Some(element) = element {
                    gst::element_warning!(
                        element,
                        gst::ResourceError::Write,
                        ("Could not write clip {}: {}", path.display(), cause)
                    );
                }
            }
        }
    }
}

impl AnomalyRecord {
    /// Carries out the planner's actions. Never blocks for longer than handing buffers over.
    fn apply(&self, state: &mut State, actions: Vec<Action<gst::Buffer>>) {
        for action in actions {
            match action {
                Action::Open { units, start } => self.open(state, &units, start),
                Action::Append(buffer) => {
                    if let Some(writer) = &state.writer {
                        if let Err(cause) = writer.push(&buffer) {
                            self.clip_failed(state, &cause);
                        }
                    }
                }
                Action::Close(summary) => self.close(state, summary),
                Action::Lost {
                    event_start,
                    event_end,
                } => {
                    gst::element_imp_warning!(
                        self,
                        gst::StreamError::Failed,
                        (
                            "An anomalous event ({} to {}) of {} could not be recorded: no key \
                             frame arrived before its post time ended (make key frames more \
                             frequent, e.g. x264enc key-int-max)",
                            gst::ClockTime::from_nseconds(event_start),
                            gst::ClockTime::from_nseconds(event_end),
                            state.stream
                        )
                    );
                }
                Action::RingOverflow { bytes } => {
                    if !state.warned_overflow {
                        state.warned_overflow = true;
                        gst::element_imp_warning!(
                            self,
                            gst::StreamError::Failed,
                            (
                                "One GOP of {} took {} bytes, over max-ring-bytes: dropped, so \
                                 the next clips may start late (make key frames more frequent, \
                                 e.g. x264enc key-int-max, or raise max-ring-bytes)",
                                state.stream,
                                bytes
                            )
                        );
                    }
                }
            }
        }
    }

    fn open(&self, state: &mut State, units: &[gst::Buffer], start: u64) {
        let Some(caps) = lock(&self.caps).clone() else {
            return;
        };
        let Some(first) = units.first().and_then(|b| b.dts().or(b.pts())) else {
            gst::warning!(CAT, imp = self, "The clip's first picture has no timestamp");
            return;
        };
        let name = clip_file_name(
            &state.stream,
            state.wall(start),
            state.container.extension(),
        );
        let path = state.folder.join(name);
        gst::info!(CAT, imp = self, "Opening clip {}", path.display());
        let writer = std::fs::create_dir_all(&state.folder)
            .map_err(|e| format!("cannot create the folder {}: {e}", state.folder.display()))
            .and_then(|_| ClipWriter::start(&caps, state.container, &path, first));
        match writer {
            Ok(writer) => {
                state.writer = Some(writer);
                for buffer in units {
                    let Some(writer) = &state.writer else { break };
                    if let Err(cause) = writer.push(buffer) {
                        self.clip_failed(state, &cause);
                    }
                }
            }
            Err(cause) => {
                gst::element_imp_warning!(
                    self,
                    gst::ResourceError::OpenWrite,
                    ("Could not write clip {}: {}", path.display(), cause)
                );
            }
        }
    }

    /// The open clip failed: warns, gives it up (the rest of the event is not recorded).
    fn clip_failed(&self, state: &mut State, cause: &str) {
        if let Some(writer) = state.writer.take() {
            gst::element_imp_warning!(
                self,
                gst::ResourceError::Write,
                ("Could not write clip {}: {}", writer.path.display(), cause)
            );
            writer.abandon();
        }
    }

    fn close(&self, state: &mut State, summary: ClipSummary) {
        let Some(writer) = state.writer.take() else {
            return;
        };
        let finish = Finish {
            element: self.obj().downgrade(),
            index: state.folder.join(INDEX_NAME),
            index_lock: self.index_lock.clone(),
            stream: state.stream.clone(),
            summary,
            wall_offset: state.wall(0),
        };
        match std::thread::Builder::new()
            .name("anomalyrecord-clip".into())
            .spawn(move || finish.run(writer))
        {
            Ok(handle) => state.finishing.push(handle),
            Err(err) => gst::element_imp_warning!(
                self,
                gst::CoreError::Thread,
                ("Could not start a thread to finish a clip: {}", err)
            ),
        }
        state.finishing.retain(|h| !h.is_finished());
    }

    /// Closes the open clip (EOS, flush, stop) and waits for every clip to be written.
    fn finish_all(&self) {
        let handles = {
            let mut guard = lock(&self.state);
            let Some(state) = guard.as_mut() else { return };
            if let Some(action) = state.planner.finish() {
                self.apply(state, vec![action]);
            }
            std::mem::take(&mut state.finishing)
        };
        for handle in handles {
            if handle.join().is_err() {
                gst::error!(CAT, imp = self, "A clip thread panicked");
            }
        }
    }
}

#[glib::object_subclass]
impl ObjectSubclass for AnomalyRecord {
    const NAME: &'static str = "GstAnomalyRecord";
    type Type = super::AnomalyRecord;
    type ParentType = gst_base::BaseSink;
}

impl ObjectImpl for AnomalyRecord {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            vec![
                glib::ParamSpecString::builder("location")
                    .nick("Location")
                    .blurb(
                        "Folder of the clips and of their index clips.jsonl (created when the \
                         first clip is written)",
                    )
                    .default_value(Some(DEFAULT_LOCATION))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("stream-name")
                    .nick("Stream name")
                    .blurb(
                        "Name of the stream in clip file names, messages and the index (the \
                         element name when unset)",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder::<Container>("container")
                    .nick("Container")
                    .blurb("Container of the clips")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecDouble::builder("pre-seconds")
                    .nick("Seconds before")
                    .blurb(
                        "Video kept before the first anomalous frame (the clip starts at the key \
                         frame at or before that time, so up to one GOP more)",
                    )
                    .minimum(0.0)
                    .maximum(MAX_SECONDS)
                    .default_value(DEFAULT_PRE_SECONDS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecDouble::builder("post-seconds")
                    .nick("Seconds after")
                    .blurb(
                        "Video kept after the last anomalous frame; an anomaly within this time \
                         extends the same clip",
                    )
                    .minimum(0.0)
                    .maximum(MAX_SECONDS)
                    .default_value(DEFAULT_POST_SECONDS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt64::builder("max-ring-bytes")
                    .nick("Maximum ring bytes")
                    .blurb(
                        "Most bytes of encoded video kept for pre-roll; the oldest whole GOPs go \
                         first",
                    )
                    .minimum(1)
                    .default_value(DEFAULT_MAX_RING_BYTES)
                    .mutable_ready()
                    .build(),
            ]
        });
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let mut settings = lock(&self.settings);
        match pspec.name() {
            "location" => {
                settings.location = value
                    .get::<Option<String>>()
                    .expect("type checked upstream")
                    .unwrap_or_else(|| DEFAULT_LOCATION.to_string())
            }
            "stream-name" => settings.stream_name = value.get().expect("type checked upstream"),
            "container" => settings.container = value.get().expect("type checked upstream"),
            "pre-seconds" => settings.pre_seconds = value.get().expect("type checked upstream"),
            "post-seconds" => settings.post_seconds = value.get().expect("type checked upstream"),
            "max-ring-bytes" => {
                settings.max_ring_bytes = value.get().expect("type checked upstream")
            }
            name => unreachable!("unknown property {name}"),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let settings = lock(&self.settings);
        match pspec.name() {
            "location" => settings.location.to_value(),
            "stream-name" => settings.stream_name.to_value(),
            "container" => settings.container.to_value(),
            "pre-seconds" => settings.pre_seconds.to_value(),
            "post-seconds" => settings.post_seconds.to_value(),
            "max-ring-bytes" => settings.max_ring_bytes.to_value(),
            name => unreachable!("unknown property {name}"),
        }
    }

    fn constructed(&self) {
        self.parent_constructed();
        // A recorder, like filesink: no reason to wait for the clock.
        self.obj().set_sync(false);
    }
}

impl GstObjectImpl for AnomalyRecord {}

impl ElementImpl for AnomalyRecord {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static METADATA: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "LogSAD defect clip recorder",
                "Sink/Video",
                "Keeps the last seconds of encoded video and writes one clip (MP4 or Matroska) \
                 per anomalous event found by logsad, with a JSON-lines index",
                "gst-logsad authors",
            )
        });
        Some(&*METADATA)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            // avc/hvc1 first: a parser then hands over its headers in codec_data, so a clip
            // starting mid-stream always has them.
            let caps = gst::Caps::builder("video/x-h264")
                .field(
                    "stream-format",
                    gst::List::new(["avc", "avc3", "byte-stream"]),
                )
                .field("alignment", "au")
                .build();
            let h265 = gst::Caps::builder("video/x-h265")
                .field(
                    "stream-format",
                    gst::List::new(["hvc1", "hev1", "byte-stream"]),
                )
                .field("alignment", "au")
                .build();
            let mut caps = caps;
            caps.merge(h265);
            vec![gst::PadTemplate::new(
                "sink",
                gst::PadDirection::Sink,
                gst::PadPresence::Always,
                &caps,
            )
            .expect("valid sink pad template")]
        });
        TEMPLATES.as_ref()
    }
}

impl BaseSinkImpl for AnomalyRecord {
    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let settings = lock(&self.settings).clone();
        let seconds = |s: f64| (s * 1e9).round() as u64;
        let state = State {
            planner: Planner::new(Config {
                pre: seconds(settings.pre_seconds),
                post: seconds(settings.post_seconds),
                max_ring_bytes: usize::try_from(settings.max_ring_bytes).unwrap_or(usize::MAX),
            }),
            writer: None,
            finishing: Vec::new(),
            anchor: None,
            folder: PathBuf::from(&settings.location),
            stream: settings
                .stream_name
                .unwrap_or_else(|| self.obj().name().to_string()),
            container: settings.container,
            warned_overflow: false,
        };
        *lock(&self.state) = Some(state);
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        self.finish_all();
        *lock(&self.state) = None;
        *lock(&self.caps) = None;
        Ok(())
    }

    fn set_caps(&self, caps: &gst::Caps) -> Result<(), gst::LoggableError> {
        gst::debug!(CAT, imp = self, "Caps {caps}");
        if caps
            .structure(0)
            .and_then(|s| s.get::<&str>("stream-format").ok())
            == Some("byte-stream")
        {
            gst::info!(
                CAT,
                imp = self,
                "byte-stream input: a clip is playable only if its first key frame carries \
                 the parameter sets (h264parse config-interval=-1)"
            );
        }
        let mut current = lock(&self.caps);
        if current.as_ref().is_some_and(|c| c != caps) {
            // New caps (e.g. new parameter sets): the pictures kept so far belong to the old
            // ones, so the open clip ends here and the ring starts again.
            drop(current);
            self.finish_all();
            current = lock(&self.caps);
        }
        *current = Some(caps.clone());
        Ok(())
    }

    fn render(&self, buffer: &gst::Buffer) -> Result<gst::FlowSuccess, gst::FlowError> {
        let segment = self.obj().segment();
        let running = |t: Option<gst::ClockTime>| {
            let segment = segment.downcast_ref::<gst::ClockTime>()?;
            segment.to_running_time(t?).map(|t| t.nseconds())
        };
        let verdict = match AnomalyResult::from_buffer(buffer) {
            None => Verdict::Unknown,
            Some(Ok(r)) if r.stale => Verdict::Stale,
            Some(Ok(r)) => Verdict::Analysed {
                anomalous: r.anomalous,
                score: r.score,
                calibrated: r.calibrated,
            },
            Some(Err(err)) => {
                gst::warning!(CAT, imp = self, "Unreadable anomaly meta: {err}");
                Verdict::Unknown
            }
        };
        let unit = Unit {
            payload: buffer.clone(),
            pts: running(buffer.pts()),
            dts: running(buffer.dts()),
            duration: buffer.duration().map(|d| d.nseconds()),
            keyframe: !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT),
            size: buffer.size(),
            verdict,
        };
        let mut guard = lock(&self.state);
        let Some(state) = guard.as_mut() else {
            return Err(gst::FlowError::Flushing);
        };
        if state.anchor.is_none() {
            if let Some(t) = unit.pts.or(unit.dts) {
                state.anchor = Some((t, unix_now()));
            }
        }
        let actions = state.planner.push(unit);
        self.apply(state, actions);
        Ok(gst::FlowSuccess::Ok)
    }

    fn event(&self, event: gst::Event) -> bool {
        match event.view() {
            // Before the EOS message: every clip is written and announced first.
            gst::EventView::Eos(_) => self.finish_all(),
            // Running time starts again after a flush: so does the wall-clock mapping.
            gst::EventView::FlushStop(_) => {
                self.finish_all();
                if let Some(state) = lock(&self.state).as_mut() {
                    state.anchor = None;
                }
            }
            _ => {}
        }
        self.parent_event(event)
    }
}
