//! What the benches share: settings from the environment, the textile frames, a profile
//! enrolled with the library, and `appsrc ! ... ! fakesink` pipelines fed from memory.

use gst::prelude::*;
use gstlogsad::detect::preprocess::RgbImage;
use gstlogsad::engine::{self, Device, EngineOptions};
use gstlogsad::enroll::{enroll, EnrollOptions};
use gstlogsad::imageio::load_rgb;
use gstlogsad::meta::AnomalyResult;
use gstlogsad::profile::Profile;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Enrollment references (textile_0001 ..) and validation images (the next ones).
pub const REFERENCES: usize = 4;
pub const VALIDATION: usize = 4;

/// A whole number from the environment, or `default` when unset or empty.
pub fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        _ => default,
    }
}

/// Whether `BENCH_SKIP` (a comma list shared by every bench) names `part`.
pub fn skipped(part: &str) -> bool {
    std::env::var("BENCH_SKIP")
        .unwrap_or_default()
        .split(',')
        .any(|p| p.trim() == part)
}

/// The device and threads every configuration of a bench runs with: `BENCH_DEVICE` (cpu, cuda,
/// tensorrt; default cpu), `BENCH_THREADS` (ONNX Runtime intra-op threads, 0 = its choice), and
/// for TensorRT `BENCH_FP16` (1 or 0; default 1) and `BENCH_ENGINE_CACHE` (the engine cache
/// folder; default none: engines are built at every start).
pub struct EngineChoice {
    pub device: Device,
    pub device_nick: String,
    pub threads: usize,
    pub fp16: bool,
    pub engine_cache_dir: Option<PathBuf>,
}

impl EngineChoice {
    pub fn from_env() -> Self {
        let device_nick = std::env::var("BENCH_DEVICE").unwrap_or_else(|_| "cpu".into());
        let device: Device = device_nick.parse().expect("BENCH_DEVICE");
        EngineChoice {
            device,
            device_nick,
            threads: env_usize("BENCH_THREADS", 0),
            fp16: env_usize("BENCH_FP16", 1) != 0,
            engine_cache_dir: std::env::var_os("BENCH_ENGINE_CACHE").map(PathBuf::from),
        }
    }

    pub fn options(&self) -> EngineOptions {
        EngineOptions {
            device: self.device,
            threads: self.threads,
            fp16: self.fp16,
            engine_cache_dir: self.engine_cache_dir.clone(),
            ..EngineOptions::default()
        }
    }

    /// Sets a `logsad` element's `device`, `threads`, `fp16` and `engine-cache-dir` to these.
    pub fn configure(&self, logsad: &gst::Element) {
        logsad.set_property("threads", self.threads as u32);
        logsad.set_property_from_str("device", &self.device_nick);
        logsad.set_property("fp16", self.fp16);
        if let Some(dir) = &self.engine_cache_dir {
            logsad.set_property("engine-cache-dir", dir.display().to_string());
        }
    }

    /// "default" or the thread count, for reports.
    pub fn threads_label(&self) -> String {
        if self.threads == 0 {
            "default".to_string()
        } else {
            self.threads.to_string()
        }
    }
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

/// The nominal textile image `index` (from 1) in the data directory.
pub fn textile(index: usize) -> PathBuf {
    engine::data_dir().join(format!("data/textile/nominal/textile_{index:04}.jpg"))
}

/// Nominal textile frames not used for enrollment: `range` counts from the first of them.
pub fn frames(range: std::ops::Range<usize>) -> Vec<RgbImage> {
    let first = REFERENCES + VALIDATION + 1;
    range
        .map(|i| load_rgb(&textile(first + i)).expect("frame"))
        .collect()
}

/// A profile of the default model, enrolled with the library and saved to a temporary file.
pub struct BenchProfile {
    pub profile: Profile,
    pub path: PathBuf,
    /// The folder of `path`, removed with it when dropped.
    pub dir: tempfile::TempDir,
}

/// Enrolls the faithful preset (whole frame) on textile references 1..=4, validation 5..=8.
pub fn enroll_profile(manifest: &Path, options: &EngineOptions) -> BenchProfile {
    let references: Vec<PathBuf> = (1..=REFERENCES).map(textile).collect();
    let validation: Vec<PathBuf> = (REFERENCES + 1..=REFERENCES + VALIDATION)
        .map(textile)
        .collect();
    let options = EnrollOptions {
        engine: options.clone(),
        ..EnrollOptions::default()
    };
    let (profile, warnings) = enroll(
        manifest,
        &references,
        &validation,
        &options,
        &mut |_, _, _| {},
    )
    .expect("enrollment");
    for w in warnings {
        eprintln!("warning (enroll): {w}");
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("bench.logsad");
    profile.save(&path).expect("saving the profile");
    BenchProfile { profile, path, dir }
}

/// `frame` as a GStreamer RGB buffer (rows padded to the stride GStreamer expects), stamped as
/// frame `index` at 30 fps.
pub fn to_buffer(image: &RgbImage, info: &gst_video::VideoInfo, index: usize) -> gst::Buffer {
    let stride = info.stride()[0] as usize;
    let row = image.width as usize * 3;
    let mut data = vec![0u8; info.size()];
    for (y, src) in image.pixels.chunks_exact(row).enumerate() {
        data[y * stride..y * stride + row].copy_from_slice(src);
    }
    let mut buffer = gst::Buffer::from_mut_slice(data);
    {
        let b = buffer.get_mut().unwrap();
        let frame = gst::ClockTime::from_nseconds(1_000_000_000 / 30);
        b.set_pts(frame * index as u64);
        b.set_duration(frame);
    }
    buffer
}

/// RGB at 30 fps in the size of `frames` (which must all have one size).
pub fn video_info(frames: &[RgbImage]) -> gst_video::VideoInfo {
    let (w, h) = (frames[0].width, frames[0].height);
    assert!(
        frames.iter().all(|f| f.width == w && f.height == h),
        "all frames must have the same size"
    );
    gst_video::VideoInfo::builder(gst_video::VideoFormat::Rgb, w, h)
        .fps(gst::Fraction::new(30, 1))
        .build()
        .expect("video info")
}

/// What reached the sink of an [`AppPipeline`].
#[derive(Default, Debug, Clone, Copy)]
pub struct Arrivals {
    /// Buffers.
    pub count: usize,
    /// Buffers whose `LogsadAnomalyMeta` says they were analysed (not skipped).
    pub analysed: usize,
    /// Buffers whose PTS was below the one before.
    pub out_of_order: usize,
    last_pts: Option<gst::ClockTime>,
}

/// An `appsrc name=src ! ... ! fakesink name=sink` pipeline, playing, fed from memory: the
/// sink's pad counts what arrives ([`Arrivals`]) so that a caller can wait for its frames.
pub struct AppPipeline {
    pub pipeline: gst::Pipeline,
    pub src: gst::Element,
    bus: gst::Bus,
    info: gst_video::VideoInfo,
    arrived: Arc<(Mutex<Arrivals>, Condvar)>,
    /// Buffers pushed so far.
    pub pushed: usize,
}

impl AppPipeline {
    /// Builds `description` (which names its `appsrc` "src" and its `fakesink` "sink"), sets
    /// the source's caps to `info`, lets `configure` set properties, and sets it PLAYING.
    pub fn launch(
        description: &str,
        info: &gst_video::VideoInfo,
        configure: impl FnOnce(&gst::Pipeline),
    ) -> Self {
        let pipeline = gst::parse::launch(description)
            .expect("pipeline")
            .downcast::<gst::Pipeline>()
            .expect("a pipeline");
        let src = pipeline.by_name("src").expect("an appsrc named src");
        src.set_property("caps", info.to_caps().unwrap());
        configure(&pipeline);
        let sink = pipeline.by_name("sink").expect("a fakesink named sink");
        let arrived = Arc::new((Mutex::new(Arrivals::default()), Condvar::new()));
        {
            let arrived = arrived.clone();
            sink.static_pad("sink").unwrap().add_probe(
                gst::PadProbeType::BUFFER,
                move |_, probe| {
                    let Some(buffer) = probe.buffer() else {
                        return gst::PadProbeReturn::Ok;
                    };
                    let analysed = matches!(
                        AnomalyResult::from_buffer(buffer),
                        Some(Ok(r)) if r.skipped.is_none()
                    );
                    let (arrivals, cond) = &*arrived;
                    let mut a = arrivals.lock().unwrap();
                    a.count += 1;
                    a.analysed += usize::from(analysed);
                    if let Some(pts) = buffer.pts() {
                        if a.last_pts.is_some_and(|last| pts < last) {
                            a.out_of_order += 1;
                        }
                        a.last_pts = Some(pts);
                    }
                    cond.notify_all();
                    gst::PadProbeReturn::Ok
                },
            );
        }
        let bus = pipeline.bus().unwrap();
        pipeline
            .set_state(gst::State::Playing)
            .expect("pipeline to PLAYING");
        AppPipeline {
            pipeline,
            src,
            bus,
            info: info.clone(),
            arrived,
            pushed: 0,
        }
    }

    /// Panics with the pipeline's error, if one was posted.
    pub fn check_errors(&self) {
        if let Some(msg) = self
            .bus
            .timed_pop_filtered(gst::ClockTime::ZERO, &[gst::MessageType::Error])
        {
            if let gst::MessageView::Error(e) = msg.view() {
                panic!("pipeline error: {} ({:?})", e.error(), e.debug());
            }
        }
    }

    /// `frames` as buffers stamped as the next frames of the stream, to push in this order.
    pub fn buffers(&self, frames: &[RgbImage]) -> Vec<gst::Buffer> {
        frames
            .iter()
            .enumerate()
            .map(|(i, f)| to_buffer(f, &self.info, self.pushed + i))
            .collect()
    }

    /// The caps' video info.
    pub fn info(&self) -> &gst_video::VideoInfo {
        &self.info
    }

    /// Pushes one buffer as it is.
    pub fn push_buffer(&mut self, buffer: gst::Buffer) {
        let ret = self
            .src
            .emit_by_name::<gst::FlowReturn>("push-buffer", &[&buffer]);
        assert_eq!(ret, gst::FlowReturn::Ok, "push-buffer");
        self.pushed += 1;
    }

    /// Waits until `target` buffers have reached the sink (checking for errors meanwhile).
    pub fn wait_for(&self, target: usize) {
        let (arrivals, cond) = &*self.arrived;
        let mut a = arrivals.lock().unwrap();
        while a.count < target {
            a = cond.wait_timeout(a, Duration::from_millis(200)).unwrap().0;
            if a.count < target {
                self.check_errors();
            }
        }
    }

    /// Pushes `frames` and waits until they are through; returns the time from the first push
    /// to the last arrival. Buffers are made before the clock starts; each is handed over with
    /// its only reference, so that an in-place element does not have to copy it.
    pub fn chunk(&mut self, frames: &[RgbImage]) -> Duration {
        let buffers = self.buffers(frames);
        let start = Instant::now();
        for buffer in buffers {
            self.push_buffer(buffer);
        }
        self.wait_for(self.pushed);
        start.elapsed()
    }

    /// What has reached the sink so far.
    pub fn arrivals(&self) -> Arrivals {
        *self.arrived.0.lock().unwrap()
    }

    /// Ends the stream with EOS, checks that every buffer pushed arrived, in order, and stops
    /// the pipeline. Returns what arrived.
    pub fn finish(self) -> Arrivals {
        let _ = self
            .src
            .emit_by_name::<gst::FlowReturn>("end-of-stream", &[]);
        let msg = self
            .bus
            .timed_pop_filtered(
                gst::ClockTime::from_seconds(60),
                &[gst::MessageType::Eos, gst::MessageType::Error],
            )
            .expect("EOS");
        if let gst::MessageView::Error(e) = msg.view() {
            panic!("pipeline error: {} ({:?})", e.error(), e.debug());
        }
        let arrivals = self.arrivals();
        assert_eq!(arrivals.count, self.pushed, "frames reaching the sink");
        assert_eq!(arrivals.out_of_order, 0, "frames reordered");
        self.pipeline.set_state(gst::State::Null).unwrap();
        arrivals
    }
}

/// Median of `values` (0 when empty).
pub fn median(values: &[f64]) -> f64 {
    percentile(values, 0.5)
}

/// The `q` quantile (0..=1) of `values`, nearest rank (0 when empty).
pub fn percentile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}
