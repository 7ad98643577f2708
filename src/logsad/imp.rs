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
//! Interlaced input is deinterlaced before analysis, so combing is not taken for a change of
//! texture: with `interlace-mode=interleaved` every frame, with `mixed` the buffers flagged
//! interlaced. The converted RGB frame is "bob" deinterlaced: the lines of the field that comes
//! first in time stay (the top field with `field-order=top-field-first`, the bottom one with
//! `bottom-field-first`; otherwise the buffer's TFF flag decides: top when set, bottom when
//! not), and each line of the other field becomes the mean of the lines above and below it.
//! The video that goes downstream is untouched; the meta's `deinterlaced` field says whether
//! the analysed frame was deinterlaced. `interlace-mode=alternate` (one field per buffer) is
//! refused with an error: put `deinterlace` before `logsad` for such streams.
//!
//! Inference runs in the streaming thread, one frame at a time: the thread is never blocked for
//! longer than one inference. Put a leaky queue before the element on live sources, or raise
//! `interval`, when frames arrive faster than they can be analysed.

use crate::detect::deinterlace::{self, Field};
use crate::detect::preprocess::RgbImage;
use crate::detect::regions::{RegionOptions, DEFAULT_PEAK_FRACTION};
use crate::engine::{self, EngineOptions};
use crate::inspector::{self, Extractor, Inspector, JudgeOptions};
use crate::meta::AnomalyResult;
use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::subclass::prelude::*;
use std::path::PathBuf;
use std::sync::{LazyLock, Mutex};

use super::{LogsadDevice, LogsadPeakScope};

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
        }
    }
}

/// Converts negotiated frames to packed RGB for the detector, deinterlacing interlaced ones.
struct Converter {
    in_info: gst_video::VideoInfo,
    rgb_info: gst_video::VideoInfo,
    converter: gst_video::VideoConverter,
    rgb: gst::Buffer,
}

/// The field a bob deinterlace of `buffer` keeps, or `None` when the frame is progressive.
fn field_to_keep(info: &gst_video::VideoInfo, buffer: &gst::BufferRef) -> Option<Field> {
    use gst_video::prelude::*;
    use gst_video::{VideoBufferFlags, VideoFieldOrder, VideoInterlaceMode};
    let flags = buffer.video_flags();
    let interlaced = match info.interlace_mode() {
        VideoInterlaceMode::Interleaved => true,
        VideoInterlaceMode::Mixed => flags.contains(VideoBufferFlags::INTERLACED),
        _ => false,
    };
    if !interlaced {
        return None;
    }
    // The field captured first: the caps' field order, else the buffer's TFF flag.
    Some(match info.field_order() {
        VideoFieldOrder::TopFieldFirst => Field::Top,
        VideoFieldOrder::BottomFieldFirst => Field::Bottom,
        _ if flags.contains(VideoBufferFlags::TFF) => Field::Top,
        _ => Field::Bottom,
    })
}

impl Converter {
    fn new(in_info: &gst_video::VideoInfo) -> Result<Self, glib::BoolError> {
        let rgb_info = gst_video::VideoInfo::builder(
            gst_video::VideoFormat::Rgb,
            in_info.width(),
            in_info.height(),
        )
        .fps(in_info.fps())
        .interlace_mode(in_info.interlace_mode())
        .build()?;
        let converter = gst_video::VideoConverter::new(in_info, &rgb_info, None)?;
        let rgb = gst::Buffer::with_size(rgb_info.size())
            .map_err(|_| glib::bool_error!("cannot allocate the RGB frame"))?;
        Ok(Converter {
            in_info: in_info.clone(),
            rgb_info,
            converter,
            rgb,
        })
    }

    /// The frame as packed RGB, and the field kept if it was deinterlaced.
    fn convert(&mut self, buffer: &gst::BufferRef) -> Result<(RgbImage, Option<Field>), String> {
        let src = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer, &self.in_info)
            .map_err(|_| "cannot map the input frame".to_string())?;
        let rgb = self.rgb.make_mut();
        let mut dst = gst_video::VideoFrameRef::from_buffer_ref_writable(rgb, &self.rgb_info)
            .map_err(|_| "cannot map the RGB frame".to_string())?;
        self.converter.frame_ref(&src, &mut dst);
        let (w, h) = (
            self.rgb_info.width() as usize,
            self.rgb_info.height() as usize,
        );
        let stride = self.rgb_info.stride()[0] as usize;
        let data = dst.plane_data(0).map_err(|e| e.to_string())?;
        // GStreamer pads RGB rows to 4 bytes; the detector wants them packed.
        let mut pixels = Vec::with_capacity(w * h * 3);
        for row in data.chunks(stride).take(h) {
            pixels.extend_from_slice(&row[..w * 3]);
        }
        let field = field_to_keep(&self.in_info, buffer);
        if let Some(field) = field {
            deinterlace::bob(&mut pixels, w * 3, h, field)?;
        }
        Ok((RgbImage::new(w as u32, h as u32, pixels)?, field))
    }
}

struct State {
    /// The loaded backbone.
    extractor: Extractor,
    /// The profile's detectors.
    inspector: Inspector,
    converter: Option<Converter>,
    frames: u64,
    /// The last fresh result, carried to frames that are not analysed.
    last: Option<AnomalyResult>,
    /// Whether the INFO line about deinterlacing was logged.
    told_deinterlacing: bool,
}

#[derive(Default)]
pub struct Logsad {
    settings: Mutex<Settings>,
    state: Mutex<Option<State>>,
    /// The execution provider in use, apart from `state` so that reading it never waits for an
    /// inference.
    provider: Mutex<Option<String>>,
}

#[glib::object_subclass]
impl ObjectSubclass for Logsad {
    const NAME: &'static str = "GstLogsad";
    type Type = super::Logsad;
    type ParentType = gst_base::BaseTransform;
}

impl ObjectImpl for Logsad {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            vec![
                glib::ParamSpecString::builder("profile")
                    .nick("Profile")
                    .blurb("Profile file written by `logsad enroll` (memory bank, calibration, tiling, model identity)")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("model")
                    .nick("Model manifest")
                    .blurb("Model manifest JSON overriding the default model; must be the model the profile was built with")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("device", LogsadDevice::Cpu)
                    .nick("Device")
                    .blurb("Execution provider; an unavailable one falls back to CPU with a warning")
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
        let mut s = self.settings.lock().unwrap();
        let path = |v: &glib::Value| v.get::<Option<String>>().unwrap().map(PathBuf::from);
        match pspec.name() {
            "profile" => s.profile = path(value),
            "model" => s.model = path(value),
            "device" => s.device = value.get().unwrap(),
            "gpu-id" => s.gpu_id = value.get().unwrap(),
            "fp16" => s.fp16 = value.get().unwrap(),
            "engine-cache-dir" => s.engine_cache_dir = path(value),
            "threads" => s.threads = value.get().unwrap(),
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
        let s = self.settings.lock().unwrap();
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string()).to_value();
        match pspec.name() {
            "profile" => path(&s.profile),
            "model" => path(&s.model),
            "device" => s.device.to_value(),
            "gpu-id" => s.gpu_id.to_value(),
            "fp16" => s.fp16.to_value(),
            "engine-cache-dir" => path(&s.engine_cache_dir),
            "threads" => s.threads.to_value(),
            "threshold" => s.threshold.to_value(),
            "interval" => s.interval.to_value(),
            "min-region-area" => s.min_region_area.to_value(),
            "region-peak-fraction" => s.region_peak_fraction.to_value(),
            "region-peak-scope" => s.region_peak_scope.to_value(),
            "merge-regions" => s.merge_regions.to_value(),
            "provider" => self.provider.lock().unwrap().to_value(),
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
            // Alternate-field caps are accepted only to be refused in set_caps with an error
            // that says what to do, instead of an anonymous negotiation failure.
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
}

impl BaseTransformImpl for Logsad {
    const MODE: gst_base::subclass::BaseTransformMode =
        gst_base::subclass::BaseTransformMode::AlwaysInPlace;
    const PASSTHROUGH_ON_SAME_CAPS: bool = false;
    const TRANSFORM_IP_ON_PASSTHROUGH: bool = false;

    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let settings = self.settings.lock().unwrap().clone();
        let profile = settings.profile.ok_or_else(|| {
            gst::error_msg!(
                gst::ResourceError::NotFound,
                ("No profile set: set the `profile` property to a file written by `logsad enroll`")
            )
        })?;
        let model = settings.model.unwrap_or_else(engine::default_model);
        let options = EngineOptions {
            device: settings.device.into(),
            gpu_id: settings.gpu_id,
            fp16: settings.fp16,
            engine_cache_dir: settings.engine_cache_dir,
            threads: settings.threads as usize,
        };
        let loaded = std::panic::catch_unwind(|| inspector::load(&profile, &model, &options))
            .map_err(|_| {
                gst::error_msg!(gst::LibraryError::Init, ("Loading the profile panicked"))
            })?;
        let (extractor, inspector, warnings) =
            loaded.map_err(|e| gst::error_msg!(gst::ResourceError::OpenRead, ("{}", e)))?;
        for w in warnings {
            gst::element_imp_warning!(self, gst::LibraryError::Init, ("{}", w));
        }
        gst::info!(
            CAT,
            imp = self,
            "loaded profile {} with model {} on {}",
            profile.display(),
            extractor.backbone().manifest().name,
            extractor.backbone().provider()
        );
        *self.provider.lock().unwrap() = Some(extractor.backbone().provider().to_string());
        *self.state.lock().unwrap() = Some(State {
            extractor,
            inspector,
            converter: None,
            frames: 0,
            last: None,
            told_deinterlacing: false,
        });
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        *self.state.lock().unwrap() = None;
        *self.provider.lock().unwrap() = None;
        Ok(())
    }

    fn set_caps(&self, incaps: &gst::Caps, _outcaps: &gst::Caps) -> Result<(), gst::LoggableError> {
        let info = gst_video::VideoInfo::from_caps(incaps)
            .map_err(|_| gst::loggable_error!(CAT, "unsupported caps {incaps}"))?;
        if info.interlace_mode() == gst_video::VideoInterlaceMode::Alternate {
            gst::element_imp_error!(
                self,
                gst::StreamError::Format,
                ("interlace-mode=alternate (one field per buffer) is not supported: put \
                     `deinterlace` before logsad"),
                ["caps {}", incaps]
            );
            return Err(gst::loggable_error!(
                CAT,
                "interlace-mode=alternate is not supported"
            ));
        }
        let converter = Converter::new(&info)
            .map_err(|e| gst::loggable_error!(CAT, "cannot convert {incaps} to RGB: {e}"))?;
        let mut state = self.state.lock().unwrap();
        let state = state
            .as_mut()
            .ok_or_else(|| gst::loggable_error!(CAT, "caps set before start"))?;
        state.converter = Some(converter);
        // A carried result's regions are in the old frame's pixels: analyse the next frame.
        state.last = None;
        Ok(())
    }

    fn sink_event(&self, event: gst::Event) -> bool {
        // After a flush (a seek) the carried result describes a frame from before the seek.
        if let gst::EventView::FlushStop(_) = event.view() {
            if let Some(state) = self.state.lock().unwrap().as_mut() {
                state.last = None;
            }
        }
        self.parent_sink_event(event)
    }

    fn transform_ip(&self, buf: &mut gst::BufferRef) -> Result<gst::FlowSuccess, gst::FlowError> {
        let (interval, threshold, region_options) = {
            let s = self.settings.lock().unwrap();
            let region_options = RegionOptions {
                peak_fraction: s.region_peak_fraction as f32,
                peak_scope: s.region_peak_scope.into(),
                merge_overlapping: s.merge_regions,
                min_area: s.min_region_area as usize,
            };
            (s.interval.max(1) as u64, s.threshold, region_options)
        };
        let mut guard = self.state.lock().unwrap();
        let state = guard.as_mut().ok_or(gst::FlowError::Flushing)?;
        let frame = state.frames;
        state.frames += 1;

        let carried = match &state.last {
            Some(last) if frame % interval != 0 => Some(last.clone()),
            _ => None,
        };
        let (result, fresh) = match carried {
            Some(mut result) => {
                result.stale = true;
                (result, false)
            }
            None => {
                let judging = JudgeOptions {
                    threshold: (threshold >= 0.0).then_some(threshold),
                    regions: Some(region_options),
                };
                let result = self.analyse(state, buf, frame, &judging)?;
                state.last = Some(result.clone());
                (result, true)
            }
        };
        let frame_size = state
            .converter
            .as_ref()
            .map(|c| (c.in_info.width(), c.in_info.height()))
            .unwrap_or_default();
        // Posted without the lock: a synchronous bus handler may read our properties.
        drop(guard);
        if fresh && result.anomalous {
            self.post_anomaly(buf, &result);
        }

        result.attach_with_rois(buf, frame_size).map_err(|e| {
            gst::element_imp_error!(
                self,
                gst::CoreError::Failed,
                ("cannot attach metadata: {}", e)
            );
            gst::FlowError::Error
        })?;
        Ok(gst::FlowSuccess::Ok)
    }
}

impl Logsad {
    fn analyse(
        &self,
        state: &mut State,
        buf: &gst::BufferRef,
        frame: u64,
        judging: &JudgeOptions,
    ) -> Result<AnomalyResult, gst::FlowError> {
        let converter = state.converter.as_mut().ok_or_else(|| {
            gst::element_imp_error!(self, gst::CoreError::Negotiation, ("no caps negotiated"));
            gst::FlowError::NotNegotiated
        })?;
        let (image, field) = converter.convert(buf).map_err(|e| {
            gst::element_imp_error!(
                self,
                gst::StreamError::Format,
                ("cannot read frame {}: {}", frame, e)
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
        let (inspector, extractor) = (&state.inspector, &mut state.extractor);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            inspector.inspect(extractor, &image, judging)
        }))
        .map_err(|_| {
            gst::element_imp_error!(
                self,
                gst::LibraryError::Failed,
                ("analysis of frame {} panicked", frame)
            );
            gst::FlowError::Error
        })?
        .map_err(|e| {
            gst::element_imp_error!(
                self,
                gst::LibraryError::Failed,
                ("analysis of frame {} failed: {}", frame, e)
            );
            gst::FlowError::Error
        })?;
        Ok(AnomalyResult::from_frame(&result, frame, field.is_some()))
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
