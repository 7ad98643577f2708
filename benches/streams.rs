//! Many streams, live sources and memory (`make bench`, or `cargo bench --bench streams`), with
//! the default model (DINOv2 ViT-S/14), the faithful preset enrolled on textile images 1-4
//! (validation 5-8) and nominal textile frames from 9 on:
//!
//! 1. **streams**: aggregate frames/s of 1, 2, 4 and 8 streams through one shared instance
//!    (`appsrc ! logsad model-instance-id=... batch-size=B drop-policy=wait ! fakesink` per
//!    stream, one pipeline each, all in this process, non-live), with batch-size 1 and with
//!    batch-size = the number of streams, against one stream alone with a private instance. All
//!    setups are started (models loaded, warmed up) first, then fed the same number of frames in
//!    total per round (split evenly between their streams, each stream other frames) in
//!    rotating order, so that a burst of load on a shared machine hits all of them alike; the
//!    best round is kept. Every frame must come out analysed and in order.
//! 2. **latency**: a live source at 30 frames/s (`appsrc is-live=true do-timestamp=true`, fed
//!    on time by this thread) into `logsad drop-policy=skip ! fakesink sync=false`. A pad probe
//!    on `logsad`'s source pad takes (pipeline running time now) - (buffer running time) for
//!    every frame; the figures are over analysed frames (median, 99th percentile, maximum, and
//!    the least-squares slope over the run), compared with the analysis time: the median time
//!    of one frame alone through an idle `appsrc ! logsad ! fakesink` (non-live, private
//!    instance). Frames in and out are counted (none may be lost or reordered), and the skipped.
//! 3. **memory**: resident memory (VmRSS of this process) sampled every second while 4 streams
//!    run through one instance (batch-size 4, drop-policy wait, appsrc blocking with at most 2
//!    frames queued) for `BENCH_MEMORY_FRAMES` frames in total; the slope (least squares, MB per
//!    1000 frames) after a warm-up of the first fifth of the frames, the largest rise between
//!    two samples after it (a step, such as an allocator's new arena, against steady growth),
//!    and the RSS before the pipelines, at the end of the warm-up, at the end and at the peak.
//!
//! Prints one table and writes `out/bench-streams.json`.
//!
//! Environment: `BENCH_STREAMS` (stream counts, default `1,2,4,8`), `BENCH_STREAM_FRAMES`
//! (frames per setup per round, all streams together; default 48), `BENCH_ROUNDS` (default 2),
//! `BENCH_BATCH_TIMEOUT_US` (the `batch-timeout` of the shared instances, default 0: batch the
//! frames already waiting), `BENCH_LATENCY_SECONDS` (length of the live run, default 60;
//! `make bench` runs 600), `BENCH_LIVE_FPS` (default 30), `BENCH_LIVE_MAX_IN_FLIGHT` (the live
//! element's `max-in-flight`; default: the element's, 0 = 1 for a live source),
//! `BENCH_MEMORY_FRAMES` (default 4000),
//! `BENCH_THREADS`, `BENCH_DEVICE` (as for the throughput bench), `BENCH_SKIP` (comma list of
//! `streams`, `latency`, `memory` to leave parts out).

// Each bench uses part of the shared helpers.
#[allow(dead_code)]
mod common;

use common::{AppPipeline, EngineChoice};
use gst::prelude::*;
use gstlogsad::detect::preprocess::RgbImage;
use gstlogsad::engine::{self, Manifest};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WARMUP_FRAMES: usize = 2;
/// Frames timed one by one for the analysis time.
const ANALYSIS_SAMPLES: usize = 10;
/// Streams of the memory run.
const MEMORY_STREAMS: usize = 4;

struct Config {
    stream_counts: Vec<usize>,
    frames: usize,
    rounds: usize,
    batch_timeout_us: i64,
    latency_seconds: usize,
    fps: usize,
    /// `max-in-flight` of the live run; 0 leaves the element's default.
    live_max_in_flight: usize,
    memory_frames: usize,
    engine: EngineChoice,
    skip_streams: bool,
    skip_latency: bool,
    skip_memory: bool,
}

impl Config {
    fn from_env() -> Self {
        use common::env_usize;
        let counts = std::env::var("BENCH_STREAMS").unwrap_or_default();
        let stream_counts = if counts.trim().is_empty() {
            vec![1, 2, 4, 8]
        } else {
            counts
                .split(',')
                .map(|c| match c.trim().parse::<usize>() {
                    Ok(n) if n > 0 => n,
                    _ => panic!("BENCH_STREAMS={counts:?}: expected stream counts such as 1,2,4,8"),
                })
                .collect()
        };
        let batch_timeout_us = match std::env::var("BENCH_BATCH_TIMEOUT_US") {
            Ok(v) if !v.trim().is_empty() => v
                .trim()
                .parse::<i64>()
                .ok()
                .filter(|t| *t >= -1)
                .unwrap_or_else(|| {
                    panic!("BENCH_BATCH_TIMEOUT_US={v:?}: expected microseconds or -1")
                }),
            _ => 0,
        };
        Config {
            stream_counts,
            frames: env_usize("BENCH_STREAM_FRAMES", 48).max(1),
            rounds: env_usize("BENCH_ROUNDS", 2).max(1),
            batch_timeout_us,
            latency_seconds: env_usize("BENCH_LATENCY_SECONDS", 60).max(1),
            fps: env_usize("BENCH_LIVE_FPS", 30).max(1),
            live_max_in_flight: env_usize("BENCH_LIVE_MAX_IN_FLIGHT", 0),
            memory_frames: env_usize("BENCH_MEMORY_FRAMES", 4000).max(MEMORY_STREAMS),
            engine: EngineChoice::from_env(),
            skip_streams: common::skipped("streams"),
            skip_latency: common::skipped("latency"),
            skip_memory: common::skipped("memory"),
        }
    }
}

/// What every `logsad` of the bench is given.
struct Inputs {
    profile: PathBuf,
    manifest: PathBuf,
    info: gst_video::VideoInfo,
    /// Frames to feed, each stream from another offset.
    pool: Vec<RgbImage>,
    warmup: Vec<RgbImage>,
}

/// `appsrc ! logsad ! fakesink` with `source` the appsrc's properties and `logsad` extra
/// properties of the element (in gst-launch syntax).
fn launch(cfg: &Config, inputs: &Inputs, source: &str, logsad: &str) -> AppPipeline {
    let description = format!(
        "appsrc name=src format=time {source} ! logsad name=det {logsad} \
         ! fakesink name=sink sync=false async=false"
    );
    AppPipeline::launch(&description, &inputs.info, |p| {
        let det = p.by_name("det").unwrap();
        det.set_property("profile", inputs.profile.display().to_string());
        det.set_property("model", inputs.manifest.display().to_string());
        cfg.engine.configure(&det);
    })
}

/// Least-squares slope of `ys` over `xs` (NaN with fewer than 2 distinct x).
fn slope(xs: &[f64], ys: &[f64]) -> f64 {
    let n = xs.len() as f64;
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let sxy: f64 = xs.iter().zip(ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let sxx: f64 = xs.iter().map(|x| (x - mx) * (x - mx)).sum();
    if xs.len() < 2 || sxx == 0.0 {
        f64::NAN
    } else {
        sxy / sxx
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Streams through one instance

/// One setup: `streams` pipelines, with a private instance or one shared instance batching
/// `batch` frames.
struct Setup {
    label: String,
    streams: usize,
    batch: usize,
    shared: bool,
    pipelines: Vec<AppPipeline>,
    /// Aggregate frames/s per round.
    rounds: Vec<f64>,
}

impl Setup {
    fn start(cfg: &Config, inputs: &Inputs, streams: usize, batch: usize, shared: bool) -> Self {
        let (label, instance) = if shared {
            let id = format!("bench-{streams}x-b{batch}");
            (
                format!("{streams} stream(s), shared, batch {batch}"),
                format!(
                    "model-instance-id={id} batch-size={batch} batch-timeout={}",
                    cfg.batch_timeout_us
                ),
            )
        } else {
            (
                format!("{streams} stream(s), private instance"),
                String::new(),
            )
        };
        let pipelines = (0..streams)
            .map(|_| {
                let mut p = launch(
                    cfg,
                    inputs,
                    "is-live=false block=false max-bytes=0",
                    &format!("drop-policy=wait {instance}"),
                );
                p.chunk(&inputs.warmup);
                p
            })
            .collect();
        Setup {
            label,
            streams,
            batch,
            shared,
            pipelines,
            rounds: Vec::new(),
        }
    }

    /// Feeds each stream its share of the pool (stream s the s-th slice) and waits until all
    /// are through; records the aggregate frames/s.
    fn round(&mut self, pool: &[RgbImage]) {
        let per = (pool.len() / self.streams).max(1);
        let buffers: Vec<Vec<gst::Buffer>> = self
            .pipelines
            .iter()
            .enumerate()
            .map(|(s, p)| {
                let first = (s * per) % pool.len();
                p.buffers(&pool[first..(first + per).min(pool.len())])
            })
            .collect();
        let frames: usize = buffers.iter().map(Vec::len).sum();
        let start = Instant::now();
        for (p, buffers) in self.pipelines.iter_mut().zip(buffers) {
            for b in buffers {
                p.push_buffer(b);
            }
        }
        for p in &self.pipelines {
            p.wait_for(p.pushed);
        }
        self.rounds
            .push(frames as f64 / start.elapsed().as_secs_f64());
    }

    fn best(&self) -> f64 {
        self.rounds.iter().copied().fold(0.0, f64::max)
    }

    /// Ends every stream; with drop-policy wait every frame must have been analysed.
    fn finish(self) -> Self {
        let Setup {
            label,
            streams,
            batch,
            shared,
            pipelines,
            rounds,
        } = self;
        for p in pipelines {
            let pushed = p.pushed;
            let arrived = p.finish();
            assert_eq!(arrived.analysed, pushed, "{label}: frames analysed");
        }
        Setup {
            label,
            streams,
            batch,
            shared,
            pipelines: Vec::new(),
            rounds,
        }
    }
}

fn measure_streams(cfg: &Config, inputs: &Inputs) -> Vec<Setup> {
    let t = Instant::now();
    let mut setups = vec![Setup::start(cfg, inputs, 1, 1, false)];
    for &n in &cfg.stream_counts {
        setups.push(Setup::start(cfg, inputs, n, 1, true));
        if n > 1 {
            setups.push(Setup::start(cfg, inputs, n, n, true));
        }
    }
    eprintln!(
        "streams: {} setups started in {:.1} s",
        setups.len(),
        t.elapsed().as_secs_f64()
    );
    for round in 0..cfg.rounds {
        for k in 0..setups.len() {
            let i = (k + round) % setups.len();
            setups[i].round(&inputs.pool);
        }
        eprintln!(
            "round {}: {}",
            round + 1,
            setups
                .iter()
                .map(|s| format!("{}x b{} {:.2}", s.streams, s.batch, s.rounds[round]))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    setups.into_iter().map(Setup::finish).collect()
}

// ---------------------------------------------------------------------------------------------
// 2. Latency of a live source

struct LiveSample {
    /// The buffer's running time (its capture), seconds.
    capture_s: f64,
    latency_ms: f64,
    analysed: bool,
}

struct Latency {
    analysis_ms: f64,
    samples: Vec<LiveSample>,
    pushed: usize,
    arrived: usize,
    analysed: usize,
    /// What the latency query on logsad's source pad answered at the end (min), ms.
    reported_ms: Option<f64>,
    /// Frames pushed per second of the run (the feeder can fall behind on a busy machine).
    input_fps: f64,
}

impl Latency {
    fn analysed_ms(&self) -> Vec<f64> {
        self.samples
            .iter()
            .filter(|s| s.analysed)
            .map(|s| s.latency_ms)
            .collect()
    }

    /// Least-squares slope of the analysed frames' latency over capture time, ms per minute.
    fn slope_ms_per_min(&self) -> f64 {
        let (xs, ys): (Vec<f64>, Vec<f64>) = self
            .samples
            .iter()
            .filter(|s| s.analysed)
            .map(|s| (s.capture_s, s.latency_ms))
            .unzip();
        60.0 * slope(&xs, &ys)
    }

    /// The analysed frames' median latency in each minute of capture time, ms.
    fn median_by_minute(&self) -> Vec<f64> {
        let mut minutes: Vec<Vec<f64>> = Vec::new();
        for s in self.samples.iter().filter(|s| s.analysed) {
            let m = (s.capture_s / 60.0) as usize;
            if minutes.len() <= m {
                minutes.resize(m + 1, Vec::new());
            }
            minutes[m].push(s.latency_ms);
        }
        minutes.iter().map(|m| common::median(m)).collect()
    }

    fn json(&self) -> serde_json::Value {
        let a = self.analysed_ms();
        let all: Vec<f64> = self.samples.iter().map(|s| s.latency_ms).collect();
        let p99 = common::percentile(&a, 0.99);
        json!({
            "analysis_time_ms": self.analysis_ms,
            "analysed_median_ms": common::median(&a),
            "analysed_p99_ms": p99,
            "analysed_max_ms": common::percentile(&a, 1.0),
            "p99_over_analysis_time": p99 / self.analysis_ms,
            "slope_ms_per_minute": self.slope_ms_per_min(),
            "analysed_median_by_minute_ms": self.median_by_minute(),
            "all_frames_median_ms": common::median(&all),
            "all_frames_p99_ms": common::percentile(&all, 0.99),
            "frames_in": self.pushed,
            "frames_out": self.arrived,
            "frames_analysed": self.analysed,
            "frames_skipped": self.arrived - self.analysed,
            "reported_latency_ms": self.reported_ms,
            "input_fps": self.input_fps,
        })
    }
}

/// The median time of one frame alone through an idle `appsrc ! logsad ! fakesink`, ms.
fn analysis_time(cfg: &Config, inputs: &Inputs) -> f64 {
    let mut single = launch(cfg, inputs, "is-live=false block=false max-bytes=0", "");
    single.chunk(&inputs.warmup);
    let times: Vec<f64> = (0..ANALYSIS_SAMPLES)
        .map(|i| {
            let frame = &inputs.pool[i % inputs.pool.len()..][..1];
            single.chunk(frame).as_secs_f64() * 1e3
        })
        .collect();
    single.finish();
    common::median(&times)
}

fn measure_latency(cfg: &Config, inputs: &Inputs) -> Latency {
    let analysis_ms = analysis_time(cfg, inputs);
    eprintln!(
        "latency: analysis time {analysis_ms:.1} ms; live run of {} s",
        cfg.latency_seconds
    );
    let samples = Arc::new(Mutex::new(Vec::new()));
    let unstamped = Arc::new(Mutex::new(0usize));
    let mut live = {
        let samples = samples.clone();
        let unstamped = unstamped.clone();
        let description = "appsrc name=src format=time is-live=true do-timestamp=true \
             block=false max-bytes=0 ! logsad name=det drop-policy=skip \
             ! fakesink name=sink sync=false async=false";
        AppPipeline::launch(description, &inputs.info, move |p| {
            let det = p.by_name("det").unwrap();
            if cfg.live_max_in_flight > 0 {
                det.set_property("max-in-flight", cfg.live_max_in_flight as u32);
            }
            det.set_property("profile", inputs.profile.display().to_string());
            det.set_property("model", inputs.manifest.display().to_string());
            cfg.engine.configure(&det);
            let pipeline = p.downgrade();
            det.static_pad("src").unwrap().add_probe(
                gst::PadProbeType::BUFFER,
                move |pad, probe| {
                    let Some(buffer) = probe.buffer() else {
                        return gst::PadProbeReturn::Ok;
                    };
                    let now = pipeline.upgrade().and_then(|p| p.current_running_time());
                    let captured = pad.sticky_event::<gst::event::Segment>(0).and_then(|e| {
                        let segment = e.segment().downcast_ref::<gst::ClockTime>()?.clone();
                        buffer.pts().and_then(|pts| segment.to_running_time(pts))
                    });
                    match (now, captured) {
                        (Some(now), Some(captured)) => {
                            let analysed = matches!(
                                gstlogsad::meta::AnomalyResult::from_buffer(buffer),
                                Some(Ok(r)) if r.skipped.is_none()
                            );
                            samples.lock().unwrap().push(LiveSample {
                                capture_s: captured.nseconds() as f64 / 1e9,
                                latency_ms: (now.nseconds() as f64 - captured.nseconds() as f64)
                                    / 1e6,
                                analysed,
                            });
                        }
                        _ => *unstamped.lock().unwrap() += 1,
                    }
                    gst::PadProbeReturn::Ok
                },
            );
        })
    };
    live.pipeline
        .state(gst::ClockTime::from_seconds(30))
        .0
        .expect("live pipeline to PLAYING");
    let period = Duration::from_secs_f64(1.0 / cfg.fps as f64);
    let total = cfg.latency_seconds * cfg.fps;
    let start = Instant::now();
    let mut next_report = 60;
    for k in 0..total {
        let due = start + period * k as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        // No timestamps: the live source stamps each buffer with the running time it takes it.
        let mut buffer = common::to_buffer(&inputs.pool[k % inputs.pool.len()], live.info(), k);
        {
            let b = buffer.get_mut().unwrap();
            b.set_pts(None);
            b.set_dts(None);
        }
        live.push_buffer(buffer);
        if k % cfg.fps == 0 {
            live.check_errors();
            if k / cfg.fps >= next_report {
                next_report += 60;
                eprintln!("latency: {} s of {}", k / cfg.fps, cfg.latency_seconds);
            }
        }
    }
    let input_fps = total as f64 / start.elapsed().as_secs_f64();
    // Asked of logsad's source pad: a fakesink with sync=false answers "not live, 0".
    let mut query = gst::query::Latency::new();
    let reported_ms = live
        .pipeline
        .by_name("det")
        .and_then(|det| det.static_pad("src"))
        .is_some_and(|pad| pad.query(&mut query))
        .then(|| query.result().1.nseconds() as f64 / 1e6);
    let pushed = live.pushed;
    let arrived = live.finish();
    let unstamped = *unstamped.lock().unwrap();
    assert_eq!(unstamped, 0, "frames without a running time after logsad");
    let samples = std::mem::take(&mut *samples.lock().unwrap());
    assert_eq!(
        samples.len(),
        arrived.count,
        "frames seen by the latency probe"
    );
    Latency {
        analysis_ms,
        samples,
        pushed,
        arrived: arrived.count,
        analysed: arrived.analysed,
        reported_ms,
        input_fps,
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Memory over many frames

/// This process's resident memory, MB.
fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kb / 1024.0
}

struct MemorySample {
    seconds: f64,
    frames: usize,
    rss_mb: f64,
}

struct Memory {
    frames: usize,
    warmup_frames: usize,
    before_mb: f64,
    samples: Vec<MemorySample>,
    seconds: f64,
}

impl Memory {
    fn after_warmup(&self) -> impl Iterator<Item = &MemorySample> {
        self.samples
            .iter()
            .filter(move |s| s.frames >= self.warmup_frames)
    }

    /// MB per 1000 frames after the warm-up (least squares).
    fn slope(&self) -> f64 {
        let (xs, ys): (Vec<f64>, Vec<f64>) = self
            .after_warmup()
            .map(|s| (s.frames as f64 / 1000.0, s.rss_mb))
            .unzip();
        slope(&xs, &ys)
    }

    fn start_mb(&self) -> f64 {
        self.after_warmup().next().map_or(f64::NAN, |s| s.rss_mb)
    }

    fn end_mb(&self) -> f64 {
        self.samples.last().map_or(f64::NAN, |s| s.rss_mb)
    }

    /// The largest rise between two samples after the warm-up, MB: tells steps (an allocator
    /// taking a new arena) from steady growth.
    fn largest_step_mb(&self) -> f64 {
        let rss: Vec<f64> = self.after_warmup().map(|s| s.rss_mb).collect();
        rss.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max)
    }

    fn peak_mb(&self) -> f64 {
        self.samples
            .iter()
            .map(|s| s.rss_mb)
            .fold(f64::NAN, f64::max)
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "streams": MEMORY_STREAMS,
            "frames": self.frames,
            "warmup_frames": self.warmup_frames,
            "rss_before_pipelines_mb": self.before_mb,
            "rss_after_warmup_mb": self.start_mb(),
            "rss_end_mb": self.end_mb(),
            "rss_peak_mb": self.peak_mb(),
            "slope_mb_per_1000_frames": self.slope(),
            "largest_step_mb": self.largest_step_mb(),
            "samples_after_warmup": self.after_warmup().count(),
            "frames_per_second": self.frames as f64 / self.seconds,
            "samples": self.samples.iter()
                .map(|s| json!([s.seconds, s.frames, s.rss_mb]))
                .collect::<Vec<_>>(),
        })
    }
}

fn measure_memory(cfg: &Config, inputs: &Inputs) -> Memory {
    let before_mb = rss_mb();
    let per = cfg.memory_frames / MEMORY_STREAMS;
    let queued = 2 * inputs.info.size();
    let pipelines: Vec<AppPipeline> = (0..MEMORY_STREAMS)
        .map(|_| {
            let mut p = launch(
                cfg,
                inputs,
                &format!("is-live=false block=true max-bytes={queued}"),
                &format!(
                    "drop-policy=wait model-instance-id=bench-memory batch-size={MEMORY_STREAMS} \
                     batch-timeout={}",
                    cfg.batch_timeout_us
                ),
            );
            p.chunk(&inputs.warmup);
            p
        })
        .collect();
    let out = |ps: &[AppPipeline]| -> usize {
        ps.iter()
            .map(|p| p.arrivals().count - inputs.warmup.len())
            .sum()
    };
    let pool = Arc::new(inputs.pool.clone());
    let start = Instant::now();
    let pushers: Vec<_> = pipelines
        .iter()
        .enumerate()
        .map(|(s, p)| {
            let (src, info, first, pool) =
                (p.src.clone(), p.info().clone(), p.pushed, pool.clone());
            std::thread::spawn(move || {
                for i in 0..per {
                    let image = &pool[(s * per + i) % pool.len()];
                    let buffer = common::to_buffer(image, &info, first + i);
                    let ret = src.emit_by_name::<gst::FlowReturn>("push-buffer", &[&buffer]);
                    assert_eq!(ret, gst::FlowReturn::Ok, "push-buffer");
                }
            })
        })
        .collect();
    let mut samples = Vec::new();
    let mut next_report = 60.0;
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let frames = out(&pipelines);
        let seconds = start.elapsed().as_secs_f64();
        samples.push(MemorySample {
            seconds,
            frames,
            rss_mb: rss_mb(),
        });
        for p in &pipelines {
            p.check_errors();
        }
        if seconds >= next_report {
            next_report += 60.0;
            eprintln!("memory: {frames} of {} frames", per * MEMORY_STREAMS);
        }
        if frames >= per * MEMORY_STREAMS {
            break;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    for pusher in pushers {
        pusher.join().expect("pushing thread");
    }
    for mut p in pipelines {
        p.pushed += per;
        let pushed = p.pushed;
        let arrived = p.finish();
        assert_eq!(arrived.analysed, pushed, "memory run: frames analysed");
    }
    Memory {
        frames: per * MEMORY_STREAMS,
        warmup_frames: per * MEMORY_STREAMS / 5,
        before_mb,
        samples,
        seconds,
    }
}

// ---------------------------------------------------------------------------------------------

fn main() {
    // `cargo bench` passes `--bench`; there is nothing to filter.
    let cfg = Config::from_env();
    let started = Instant::now();
    let manifest_path = engine::default_model();
    let manifest = Manifest::load(&manifest_path).expect("model manifest");
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!(
        "gst-logsad streams: model {} on {}, {cpus} CPUs, ORT threads {}",
        manifest.name,
        cfg.engine.device_nick,
        cfg.engine.threads_label()
    );
    gst::init().expect("gst::init");
    gstlogsad::plugin_register_static().expect("registering the logsad plugin");

    let t = Instant::now();
    let profile = common::enroll_profile(&manifest_path, &cfg.engine.options());
    let pool = common::frames(WARMUP_FRAMES..WARMUP_FRAMES + cfg.frames);
    let inputs = Inputs {
        profile: profile.path.clone(),
        manifest: manifest_path.clone(),
        info: common::video_info(&pool),
        warmup: common::frames(0..WARMUP_FRAMES),
        pool,
    };
    let (fw, fh) = (inputs.info.width(), inputs.info.height());
    println!(
        "profile: faithful preset, {} references + {} validation, bank {} rows ({:.1} s); \
         frames {fw}x{fh} RGB",
        common::REFERENCES,
        common::VALIDATION,
        profile.profile.banks[0].len(),
        t.elapsed().as_secs_f64()
    );

    let setups = (!cfg.skip_streams).then(|| measure_streams(&cfg, &inputs));
    let latency = (!cfg.skip_latency).then(|| measure_latency(&cfg, &inputs));
    let memory = (!cfg.skip_memory).then(|| measure_memory(&cfg, &inputs));

    // The table.
    println!();
    let row = |name: &str, value: String| println!("  {name:<52} {value}");
    let mut streams_json = Vec::new();
    if let Some(setups) = &setups {
        let alone = setups[0].best();
        println!(
            "aggregate frames/s, drop-policy wait, {} frames per setup and round, best of {} \
             rounds (batch-timeout {} µs)",
            cfg.frames, cfg.rounds, cfg.batch_timeout_us
        );
        println!(
            "  {:<40} {:>9} {:>9} {:>11} {:>13}",
            "setup", "frames/s", "median", "vs 1 alone", "vs batch 1"
        );
        for s in setups {
            let batch1 = setups
                .iter()
                .find(|o| o.shared && o.streams == s.streams && o.batch == 1)
                .map(|o| o.best());
            let vs_batch1 = batch1.filter(|_| s.batch > 1).map(|b| s.best() / b);
            println!(
                "  {:<40} {:>9.2} {:>9.2} {:>10.1}% {:>13}",
                s.label,
                s.best(),
                common::median(&s.rounds),
                100.0 * s.best() / alone,
                vs_batch1.map_or(String::new(), |r| format!("{:.1}%", 100.0 * r)),
            );
            streams_json.push(json!({
                "streams": s.streams,
                "shared": s.shared,
                "batch_size": s.batch,
                "best_fps": s.best(),
                "median_fps": common::median(&s.rounds),
                "rounds_fps": s.rounds,
                "vs_one_stream_alone": s.best() / alone,
                "vs_batch_1": vs_batch1,
            }));
        }
    }
    if let Some(l) = &latency {
        let a = l.analysed_ms();
        let p99 = common::percentile(&a, 0.99);
        println!(
            "live {} frames/s for {} s, drop-policy skip, max-in-flight {}, latency capture -> \
             metadata",
            cfg.fps,
            cfg.latency_seconds,
            if cfg.live_max_in_flight == 0 {
                "default".to_string()
            } else {
                cfg.live_max_in_flight.to_string()
            }
        );
        row(
            "analysis time (one frame alone, idle element)",
            format!("{:.1} ms", l.analysis_ms),
        );
        row(
            "analysed frames: median / p99 / max",
            format!(
                "{:.1} / {:.1} / {:.1} ms",
                common::median(&a),
                p99,
                common::percentile(&a, 1.0)
            ),
        );
        row(
            "p99 / analysis time (goal < 2)",
            format!("{:.2}", p99 / l.analysis_ms),
        );
        row(
            "slope over the run (least squares)",
            format!("{:+.3} ms per minute", l.slope_ms_per_min()),
        );
        let all: Vec<f64> = l.samples.iter().map(|s| s.latency_ms).collect();
        row(
            "all frames (skipped too): median / p99",
            format!(
                "{:.1} / {:.1} ms",
                common::median(&all),
                common::percentile(&all, 0.99)
            ),
        );
        row(
            "frames in / out / analysed / skipped",
            format!(
                "{} / {} / {} / {} (input {:.1} frames/s)",
                l.pushed,
                l.arrived,
                l.analysed,
                l.arrived - l.analysed,
                l.input_fps
            ),
        );
        row(
            "latency reported (query on logsad's source pad)",
            l.reported_ms
                .map_or("no answer".into(), |ms| format!("{ms:.1} ms")),
        );
    }
    if let Some(m) = &memory {
        println!(
            "resident memory, {MEMORY_STREAMS} streams through one instance (batch \
             {MEMORY_STREAMS}), {} frames",
            m.frames
        );
        row(
            "RSS before pipelines / after warm-up / end / peak",
            format!(
                "{:.0} / {:.0} / {:.0} / {:.0} MB",
                m.before_mb,
                m.start_mb(),
                m.end_mb(),
                m.peak_mb()
            ),
        );
        row(
            &format!(
                "slope after {} frames ({} samples)",
                m.warmup_frames,
                m.after_warmup().count()
            ),
            format!("{:+.3} MB per 1000 frames", m.slope()),
        );
        row(
            "largest rise between two samples after warm-up",
            format!("{:.1} MB", m.largest_step_mb()),
        );
        row(
            "frames/s during the run",
            format!("{:.2}", m.frames as f64 / m.seconds),
        );
    }
    let total = started.elapsed().as_secs_f64();
    let out_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("out");
    let out = out_dir.join("bench-streams.json");
    println!("\nwhole run {total:.0} s; figures in {}", out.display());
    let report = json!({
        "command": "cargo bench --bench streams",
        "model": manifest.name,
        "device": cfg.engine.device_nick,
        "cpus": cpus,
        "ort_threads": cfg.engine.threads,
        "frame_size": [fw, fh],
        "streams": setups.as_ref().map(|_| json!({
            "frames_per_setup_and_round": cfg.frames,
            "rounds": cfg.rounds,
            "batch_timeout_us": cfg.batch_timeout_us,
            "setups": streams_json,
        })),
        "latency": latency.as_ref().map(|l| {
            let mut j = l.json();
            j["fps"] = json!(cfg.fps);
            j["seconds"] = json!(cfg.latency_seconds);
            j["max_in_flight"] = json!(cfg.live_max_in_flight);
            j
        }),
        "memory": memory.as_ref().map(Memory::json),
        "seconds": total,
    });
    std::fs::create_dir_all(&out_dir).expect("creating out/");
    std::fs::write(&out, serde_json::to_vec_pretty(&report).unwrap())
        .expect("writing bench-streams.json");
}
