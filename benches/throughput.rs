//! Throughput of gst-logsad, measured in one run on the same frames (`make bench`, or
//! `cargo bench --bench throughput`):
//!
//! * frames/s of bare ONNX Runtime calls of the backbone (`Backbone::run`, batch 1, input
//!   preprocessed outside the timed region), of the in-process detector (`Inspector::inspect`:
//!   preprocessing, backbone, nearest-neighbour matching, stitching) and of the `logsad` element
//!   in a pipeline (`appsrc ! logsad ! fakesink`, and the same with `anomalyoverlay`);
//! * the nearest-neighbour step of one stage on real features (a frame's 16x16 token grid
//!   upsampled x2 = 1024 query cells against the profile's bank, 4 reference blocks = 4096 rows,
//!   and against the references cut 2x2, 16 blocks = 16384 rows): the dense matcher
//!   (`dense_max_similarity` on explicit upsampled, normalised rows) in GFLOP/s against a plain
//!   `matrixmultiply::sgemm` of the same shape on the same machine, and the exact factorised
//!   matcher (`max_similarity`) with its effective GFLOP/s (the dense arithmetic, 2 n m d, over
//!   its time) and speed-up over dense.
//!
//! The only assertions are correctness checks: the factorised and the dense matcher agree
//! within 1e-4 on every cell of every stage. The figures are printed as a table and written to
//! `target/bench.json`.
//!
//! The configurations are loaded side by side (separate sessions of the same model, same thread
//! settings), warmed up, and fed the same frames in chunks in rotating order, so that a burst of
//! load on a shared machine hits all of them alike; overheads are given from the best rounds and
//! as the median of per-chunk paired ratios.
//!
//! Environment: `BENCH_FRAMES` (frames per timed pass, default 40), `BENCH_ROUNDS` (timed passes
//! per configuration, best kept; default 2), `BENCH_CHUNK` (frames each configuration processes
//! before the next takes over, default 5), `BENCH_NN_REPS` (repetitions of each
//! nearest-neighbour measurement, best kept; default 10), `BENCH_THREADS` (ONNX Runtime
//! intra-op threads for every configuration; default 0 = ONNX Runtime's choice),
//! `BENCH_DEVICE` (cpu, cuda, tensorrt; default cpu), `BENCH_SKIP` (comma list of `pipeline`,
//! `nn` to skip parts). `MATMUL_NUM_THREADS` sets matrixmultiply's threads as usual.

// Each bench uses part of the shared helpers.
#[allow(dead_code)]
mod common;

use common::{AppPipeline, EngineChoice, REFERENCES, VALIDATION};
use gst::prelude::*;
use gstlogsad::detect::features::{patch_features, Grid, PatchFeatures};
use gstlogsad::detect::patch::{anomaly_map, dense_max_similarity, max_similarity, MemoryBank};
use gstlogsad::detect::preprocess::{Preprocessor, RgbImage};
use gstlogsad::detect::score::{reduce, Reduction};
use gstlogsad::detect::tiling::{Stitcher, Tiling};
use gstlogsad::engine::{self, Backbone, EngineOptions, Manifest};
use gstlogsad::imageio::load_rgb;
use gstlogsad::inspector::{self, Extractor, Inspector, JudgeOptions};
use gstlogsad::profile::Profile;
use serde_json::json;
use std::ops::Range;
use std::path::Path;
use std::time::{Duration, Instant};

const WARMUP_FRAMES: usize = 2;
/// Frames of the per-step breakdown of the detector (per round).
const BREAKDOWN_FRAMES: usize = 10;

struct Config {
    frames: usize,
    rounds: usize,
    chunk: usize,
    nn_reps: usize,
    engine: EngineChoice,
    skip_pipeline: bool,
    skip_nn: bool,
}

impl Config {
    fn from_env() -> Self {
        use common::env_usize;
        Config {
            frames: env_usize("BENCH_FRAMES", 40).max(1),
            rounds: env_usize("BENCH_ROUNDS", 2).max(1),
            chunk: env_usize("BENCH_CHUNK", 5).max(1),
            nn_reps: env_usize("BENCH_NN_REPS", 10).max(1),
            engine: EngineChoice::from_env(),
            skip_pipeline: common::skipped("pipeline"),
            skip_nn: common::skipped("nn"),
        }
    }
}

/// The best (highest) frames/s over rounds, with every round kept for the report.
#[derive(Default, Clone)]
struct Rate {
    rounds: Vec<f64>,
}

impl Rate {
    fn add(&mut self, frames: usize, elapsed: Duration) {
        self.rounds.push(frames as f64 / elapsed.as_secs_f64());
    }
    fn best(&self) -> f64 {
        self.rounds.iter().copied().fold(0.0, f64::max)
    }
    fn median(&self) -> f64 {
        let mut r = self.rounds.clone();
        r.sort_by(|a, b| a.partial_cmp(b).unwrap());
        if r.is_empty() {
            return 0.0;
        }
        let mid = r.len() / 2;
        if r.len() % 2 == 1 {
            r[mid]
        } else {
            (r[mid - 1] + r[mid]) / 2.0
        }
    }
    fn json(&self) -> serde_json::Value {
        json!({ "best_fps": self.best(), "median_fps": self.median(), "rounds_fps": self.rounds })
    }
}

// ---------------------------------------------------------------------------------------------
// Bare ONNX Runtime

struct Bare {
    backbone: Backbone,
    /// Each frame preprocessed once, outside any timed region.
    tensors: Vec<Vec<f32>>,
}

impl Bare {
    fn new(
        manifest_path: &Path,
        options: &EngineOptions,
        frames: &[RgbImage],
        warmup: &[RgbImage],
    ) -> Self {
        let manifest = Manifest::load(manifest_path).expect("model manifest");
        let (mut backbone, warnings) = Backbone::load(manifest, options).expect("backbone");
        for w in warnings {
            eprintln!("warning (bare backbone): {w}");
        }
        let input = &backbone.manifest().input;
        let input_size = (input.width as u32, input.height as u32);
        let mut pre = Preprocessor::new(input);
        let whole = Tiling::whole();
        let mut prepare = |image: &RgbImage| {
            let tiles = whole.tiles(image.width, image.height);
            let placement = whole.placement(image.width, image.height, input_size);
            let mut out = Vec::new();
            pre.push_tile(image, &tiles[0], &placement, whole.resample, &mut out)
                .expect("preprocess");
            out
        };
        let tensors = frames.iter().map(&mut prepare).collect();
        for image in warmup {
            backbone.run(prepare(image), 1).expect("backbone run");
        }
        Bare { backbone, tensors }
    }

    fn chunk(&mut self, range: Range<usize>) -> Duration {
        // `run` takes its input by value: copy outside the timed region.
        let inputs = self.tensors[range].to_vec();
        let start = Instant::now();
        for t in inputs {
            std::hint::black_box(self.backbone.run(t, 1).expect("backbone run"));
        }
        start.elapsed()
    }
}

// ---------------------------------------------------------------------------------------------
// In-process detector

fn detector_chunk(detector: &mut (Extractor, Inspector), frames: &[RgbImage]) -> Duration {
    let (extractor, inspector) = detector;
    let start = Instant::now();
    for f in frames {
        let result = inspector.inspect(extractor, f, &JudgeOptions::default());
        std::hint::black_box(result.expect("inspect"));
    }
    start.elapsed()
}

/// Where the detector's time goes: the steps of `Inspector::inspect` (whole-frame tiling) timed one
/// by one with the public building blocks, on the bare backbone. Totals over all frames.
#[derive(Default, Clone, Copy)]
struct Breakdown {
    frames: usize,
    preprocess: Duration,
    backbone: Duration,
    features: Duration,
    matching: Duration,
    stitching: Duration,
}

impl Breakdown {
    fn total(&self) -> Duration {
        self.preprocess + self.backbone + self.features + self.matching + self.stitching
    }
    fn per_frame_ms(&self, d: Duration) -> f64 {
        d.as_secs_f64() * 1e3 / self.frames.max(1) as f64
    }
    /// Keeps the faster of two passes over the same frames.
    fn best(self, o: Breakdown) -> Breakdown {
        if o.total() < self.total() {
            o
        } else {
            self
        }
    }
    fn add(&mut self, o: Breakdown) {
        self.frames += o.frames;
        self.preprocess += o.preprocess;
        self.backbone += o.backbone;
        self.features += o.features;
        self.matching += o.matching;
        self.stitching += o.stitching;
    }
}

fn breakdown_chunk(
    backbone: &mut Backbone,
    bank: &MemoryBank,
    upsample: usize,
    frames: &[RgbImage],
) -> Breakdown {
    let m = backbone.manifest().clone();
    let grid = grid_of(&m);
    let whole = Tiling::whole();
    let mut pre = Preprocessor::new(&m.input);
    let mut b = Breakdown::default();
    for image in frames {
        b.frames += 1;
        let t = Instant::now();
        let tiles = whole.tiles(image.width, image.height);
        let input_size = (m.input.width as u32, m.input.height as u32);
        let placement = whole.placement(image.width, image.height, input_size);
        let mut pixels = Vec::with_capacity(3 * m.input.width * m.input.height);
        pre.push_tile(image, &tiles[0], &placement, whole.resample, &mut pixels)
            .expect("preprocess");
        b.preprocess += t.elapsed();
        let t = Instant::now();
        let outputs = backbone.run(pixels, 1).expect("backbone run");
        b.backbone += t.elapsed();
        let t = Instant::now();
        let features = patch_features(&outputs.stages, 0, grid, upsample);
        b.features += t.elapsed();
        let t = Instant::now();
        let map = anomaly_map(&features, bank);
        b.matching += t.elapsed();
        let t = Instant::now();
        let mut stitcher = Stitcher::new(
            &whole,
            (image.width, image.height),
            (features.width(), features.height()),
            input_size,
        )
        .expect("stitcher");
        stitcher.add(0, &map);
        let (stitched, _, _) = stitcher.finish();
        std::hint::black_box(reduce(&stitched, Reduction::Max));
        b.stitching += t.elapsed();
    }
    b
}

// ---------------------------------------------------------------------------------------------
// Pipeline

/// `appsrc ! logsad [! anomalyoverlay] ! fakesink`, started once (model loaded, warmed up) and
/// fed chunk by chunk: a chunk's time runs from its first push until its last buffer has reached
/// the sink.
fn pipeline_runner(
    cfg: &Config,
    profile: &Path,
    manifest: &Path,
    overlay: bool,
    frames: &[RgbImage],
    warmup: &[RgbImage],
) -> AppPipeline {
    let description = format!(
        "appsrc name=src format=time is-live=false block=false max-bytes=0 ! logsad name=det \
         {} ! fakesink name=sink sync=false async=false",
        if overlay { "! anomalyoverlay" } else { "" }
    );
    let mut runner = AppPipeline::launch(&description, &common::video_info(frames), |p| {
        let det = p.by_name("det").unwrap();
        det.set_property("profile", profile.display().to_string());
        det.set_property("model", manifest.display().to_string());
        cfg.engine.configure(&det);
    });
    runner.chunk(warmup);
    runner
}

// ---------------------------------------------------------------------------------------------
// Nearest neighbour: dense and factorised exact matching against a plain matrix product

/// The token grid of the model's stage outputs.
fn grid_of(m: &Manifest) -> Grid {
    Grid {
        prefix_tokens: m.tokens.prefix_tokens,
        height: m.tokens.grid_height,
        width: m.tokens.grid_width,
        dim: m.feature_dim,
    }
}

/// The patch features of every tile of `image` under `tiling` (one backbone call per tile,
/// batch 1), as the detector forms them.
fn tile_features(
    backbone: &mut Backbone,
    upsample: usize,
    image: &RgbImage,
    tiling: &Tiling,
) -> Vec<PatchFeatures> {
    let m = backbone.manifest().clone();
    let grid = grid_of(&m);
    let mut pre = Preprocessor::new(&m.input);
    let input_size = (m.input.width as u32, m.input.height as u32);
    let placement = tiling.placement(image.width, image.height, input_size);
    tiling
        .tiles(image.width, image.height)
        .iter()
        .map(|tile| {
            let mut pixels = Vec::with_capacity(3 * m.input.width * m.input.height);
            pre.push_tile(image, tile, &placement, tiling.resample, &mut pixels)
                .expect("preprocess");
            let outputs = backbone.run(pixels, 1).expect("backbone run");
            patch_features(&outputs.stages, 0, grid, upsample)
        })
        .collect()
}

fn time(mut f: impl FnMut()) -> Duration {
    let start = Instant::now();
    f();
    start.elapsed()
}

/// One nearest-neighbour shape, one stage: `n` query cells, `m` bank rows, `d` dimensions.
struct NnResult {
    label: String,
    n: usize,
    m: usize,
    d: usize,
    blocks: usize,
    /// `dense_max_similarity` on explicit upsampled, normalised rows (prepared outside).
    dense: Duration,
    /// `max_similarity`: the exact matching factorised through the upsampling.
    factorised: Duration,
    /// The factorised matcher's matrix products alone: one plain sgemm of the raw query grid
    /// against each block's raw grid (`blocks` x `grid x d . d x grid`); the rest of its time is
    /// interpolation, norms and the row maximum.
    raw_gemms: Duration,
    /// Plain sgemm, B given as the bank transposed through strides (what the dense path does).
    gemm_strided: Duration,
    /// Plain sgemm, B a row-major d x m matrix.
    gemm_rowmajor: Duration,
    /// Largest |factorised - dense| over every query cell of every stage.
    max_abs_diff: f32,
    stages_checked: usize,
}

impl NnResult {
    /// The dense computation's arithmetic: 2 n m d.
    fn flops(&self) -> f64 {
        2.0 * self.n as f64 * self.m as f64 * self.d as f64
    }
    /// GFLOP/s, or for the factorised matcher the effective rate: the dense arithmetic over its
    /// time (how fast it delivers the same exact result).
    fn gflops(&self, t: Duration) -> f64 {
        self.flops() / t.as_secs_f64() / 1e9
    }
    fn gemm(&self) -> Duration {
        self.gemm_strided.min(self.gemm_rowmajor)
    }
    /// Time of the plain GEMM over time of `t`: the fraction of GEMM speed `t` reaches.
    fn vs_gemm(&self, t: Duration) -> f64 {
        self.gemm().as_secs_f64() / t.as_secs_f64()
    }
    fn speedup(&self) -> f64 {
        self.dense.as_secs_f64() / self.factorised.as_secs_f64()
    }
    fn json(&self) -> serde_json::Value {
        json!({
            "bank": self.label,
            "n": self.n, "m": self.m, "d": self.d, "blocks": self.blocks,
            "dense_ms": self.dense.as_secs_f64() * 1e3,
            "dense_gflops": self.gflops(self.dense),
            "dense_over_gemm": self.vs_gemm(self.dense),
            "factorised_ms": self.factorised.as_secs_f64() * 1e3,
            "factorised_effective_gflops": self.gflops(self.factorised),
            "factorised_over_gemm": self.vs_gemm(self.factorised),
            "factorised_speedup_over_dense": self.speedup(),
            "factorised_raw_gemms_ms": self.raw_gemms.as_secs_f64() * 1e3,
            "gemm_strided_ms": self.gemm_strided.as_secs_f64() * 1e3,
            "gemm_strided_gflops": self.gflops(self.gemm_strided),
            "gemm_rowmajor_ms": self.gemm_rowmajor.as_secs_f64() * 1e3,
            "gemm_rowmajor_gflops": self.gflops(self.gemm_rowmajor),
            "max_abs_diff_factorised_vs_dense": self.max_abs_diff,
            "stages_checked": self.stages_checked,
        })
    }
}

#[allow(clippy::too_many_arguments)]
fn sgemm(
    n: usize,
    d: usize,
    m: usize,
    a: &[f32],
    b: &[f32],
    rsb: isize,
    csb: isize,
    c: &mut [f32],
) {
    assert!(a.len() >= n * d && b.len() >= d * m && c.len() >= n * m);
    // SAFETY: the slices hold at least n*d, d*m and n*m values and the strides describe
    // layouts within them.
    unsafe {
        matrixmultiply::sgemm(
            n,
            d,
            m,
            1.0,
            a.as_ptr(),
            d as isize,
            1,
            b.as_ptr(),
            rsb,
            csb,
            0.0,
            c.as_mut_ptr(),
            m as isize,
            1,
        );
    }
}

/// Times the dense and the factorised matcher of one stage (stage 0; every stage has the same
/// shape) against plain GEMMs of the same shape, interleaved, best of `reps` after a warm-up;
/// then checks on every stage that both matchers agree within 1e-4.
fn measure_nn(label: &str, query: &PatchFeatures, bank: &MemoryBank, reps: usize) -> NnResult {
    const TOLERANCE: f32 = 1e-4;
    let (n, m, d) = (query.patches(), bank.len(), bank.dim);
    let stage = 0;
    let queries = query.normalised(stage);
    let rows = bank.normalised_rows(stage);
    // The same bank as a row-major d x m matrix.
    let mut rows_t = vec![0.0f32; d * m];
    for r in 0..m {
        for k in 0..d {
            rows_t[k * m + r] = rows[r * d + k];
        }
    }
    let mut out = vec![0.0f32; n * m];
    let grid = bank.grid_height * bank.grid_width;
    let raw_query = &query.tokens[stage];
    let raw_blocks: Vec<&[f32]> = bank.tokens[stage].chunks_exact(grid * d).collect();
    let mut raw_out = vec![0.0f32; grid * grid];
    let (mut dense_best, mut fact_best) = (Vec::new(), Vec::new());
    // Interleaved, so that drift in the machine's load hits every measurement alike. The first
    // repetition is a warm-up (thread pool start, page faults of scratch buffers).
    let mut best = [Duration::MAX; 5];
    for rep in 0..=reps {
        let t = [
            time(|| {
                dense_best = dense_max_similarity(&queries, &rows, d);
                std::hint::black_box(&dense_best);
            }),
            time(|| {
                fact_best = max_similarity(query, bank, stage);
                std::hint::black_box(&fact_best);
            }),
            time(|| {
                sgemm(n, d, m, &queries, &rows, 1, d as isize, &mut out);
                std::hint::black_box(&out);
            }),
            time(|| {
                sgemm(n, d, m, &queries, &rows_t, m as isize, 1, &mut out);
                std::hint::black_box(&out);
            }),
            time(|| {
                for block in &raw_blocks {
                    sgemm(grid, d, grid, raw_query, block, 1, d as isize, &mut raw_out);
                    std::hint::black_box(&raw_out);
                }
            }),
        ];
        if rep > 0 {
            for (b, t) in best.iter_mut().zip(t) {
                *b = (*b).min(t);
            }
        }
    }
    // Sanity: the dense result is the row maximum of the full product.
    for (i, row) in out.chunks_exact(m).enumerate().step_by(97) {
        let want = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        assert!(
            (want - dense_best[i]).abs() < TOLERANCE,
            "dense_max_similarity disagrees with sgemm at cell {i}"
        );
    }
    drop((out, rows_t, raw_out));
    // Exactness: factorised == dense on every cell of every stage.
    let mut max_abs_diff = 0.0f32;
    for s in 0..bank.stages() {
        let fact = max_similarity(query, bank, s);
        let dense = dense_max_similarity(&query.normalised(s), &bank.normalised_rows(s), d);
        assert_eq!(fact.len(), dense.len());
        for (i, (f, g)) in fact.iter().zip(&dense).enumerate() {
            let diff = (f - g).abs();
            assert!(
                diff < TOLERANCE,
                "{label}, stage {s}, cell {i}: factorised {f} vs dense {g}"
            );
            max_abs_diff = max_abs_diff.max(diff);
        }
    }
    NnResult {
        label: label.to_string(),
        n,
        m,
        d,
        blocks: bank.blocks(),
        dense: best[0],
        factorised: best[1],
        gemm_strided: best[2],
        gemm_rowmajor: best[3],
        raw_gemms: best[4],
        max_abs_diff,
        stages_checked: bank.stages(),
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
    let matmul_threads = std::env::var("MATMUL_NUM_THREADS").unwrap_or_else(|_| "default".into());

    println!(
        "gst-logsad throughput: model {} on {}, {} CPUs, ORT threads {}, MATMUL_NUM_THREADS {}",
        manifest.name,
        cfg.engine.device_nick,
        cpus,
        cfg.engine.threads_label(),
        matmul_threads
    );

    // 1. Profile: 4 references + 4 validation images, whole-frame tiling.
    let t = Instant::now();
    let references: Vec<_> = (1..=REFERENCES).map(common::textile).collect();
    // `_profile_dir` holds the profile file until the end.
    let common::BenchProfile {
        profile,
        path: profile_path,
        dir: _profile_dir,
    } = common::enroll_profile(&manifest_path, &cfg.engine.options());
    let bank_rows = profile.banks[0].len();
    let Profile { header, mut banks } = profile;
    let bank = banks.remove(0);
    println!(
        "profile: {REFERENCES} references + {VALIDATION} validation, whole frame, bank {bank_rows} rows ({:.1} s)",
        t.elapsed().as_secs_f64()
    );

    // 2. Frames: nominal textile images not used for enrollment.
    let frames = common::frames(WARMUP_FRAMES..WARMUP_FRAMES + cfg.frames);
    let warmup = common::frames(0..WARMUP_FRAMES);
    let (fw, fh) = (frames[0].width, frames[0].height);
    println!(
        "frames: {} timed (+{WARMUP_FRAMES} warm-up) {fw}x{fh} RGB, {} interleaved rounds, best kept",
        cfg.frames, cfg.rounds
    );

    // 3./4. Backbone alone, detector, pipelines: separately loaded sessions of the same model,
    // all warmed up, then fed the same frames chunk by chunk in rotating order, so that a burst
    // of load on the machine hits every configuration alike.
    let engine_options = cfg.engine.options();
    let mut bare = Bare::new(&manifest_path, &engine_options, &frames, &warmup);
    let (extractor, inspector, warnings) =
        inspector::load(&profile_path, &manifest_path, &engine_options).expect("detector");
    let mut detector = (extractor, inspector);
    for w in warnings {
        eprintln!("warning (detector): {w}");
    }
    detector_chunk(&mut detector, &warmup);
    let mut pipelines = Vec::new();
    if !cfg.skip_pipeline {
        gst::init().expect("gst::init");
        gstlogsad::plugin_register_static().expect("registering the logsad plugin");
        for overlay in [false, true] {
            pipelines.push(pipeline_runner(
                &cfg,
                &profile_path,
                &manifest_path,
                overlay,
                &frames,
                &warmup,
            ));
        }
    }
    // Runner 0: bare, 1: detector, 2: pipeline, 3: pipeline with overlay, 4: step breakdown
    // (first chunks only).
    let runners = 2 + pipelines.len() + 1;
    let mut rates = vec![Rate::default(); 4];
    let mut breakdown: Option<Breakdown> = None;
    // Per (round, chunk): each configuration's time on the same frames, back to back.
    let mut paired: Vec<[f64; 4]> = Vec::new();
    let chunks: Vec<Range<usize>> = (0..cfg.frames)
        .step_by(cfg.chunk)
        .map(|s| s..(s + cfg.chunk).min(cfg.frames))
        .collect();
    for round in 0..cfg.rounds {
        let mut elapsed = [Duration::ZERO; 4];
        let mut steps = Breakdown::default();
        for (c, range) in chunks.iter().enumerate() {
            let before = elapsed;
            for k in 0..runners {
                let runner = (k + c + round) % runners;
                match runner {
                    0 => elapsed[0] += bare.chunk(range.clone()),
                    1 => elapsed[1] += detector_chunk(&mut detector, &frames[range.clone()]),
                    r if r < runners - 1 => {
                        elapsed[r] += pipelines[r - 2].chunk(&frames[range.clone()])
                    }
                    _ => {
                        if range.start < BREAKDOWN_FRAMES {
                            let end = range.end.min(BREAKDOWN_FRAMES);
                            steps.add(breakdown_chunk(
                                &mut bare.backbone,
                                &bank,
                                header.upsample,
                                &frames[range.start..end],
                            ));
                        }
                    }
                }
            }
            let mut t = [f64::NAN; 4];
            for r in 0..2 + pipelines.len() {
                t[r] = (elapsed[r] - before[r]).as_secs_f64();
            }
            paired.push(t);
        }
        for r in 0..2 + pipelines.len() {
            rates[r].add(cfg.frames, elapsed[r]);
        }
        breakdown = Some(breakdown.map_or(steps, |old| old.best(steps)));
        eprintln!(
            "round {}: bare {:.2}  detector {:.2}  pipeline {:.2}  +overlay {:.2} frames/s",
            round + 1,
            rates[0].rounds[round],
            rates[1].rounds[round],
            rates[2].rounds.get(round).copied().unwrap_or(f64::NAN),
            rates[3].rounds.get(round).copied().unwrap_or(f64::NAN),
        );
    }
    for p in pipelines {
        p.finish();
    }
    drop(detector);
    // 5. Nearest neighbour, one stage, real features: the first timed frame as the query
    // (16x16 tokens upsampled x2 = 1024 cells) against the profile's bank (the references whole,
    // 4 blocks) and against the references cut 2x2 (16 blocks, the multiscale local branch).
    // Backbone calls on the bare session, outside every timed region.
    let nn: Vec<NnResult> = if cfg.skip_nn {
        Vec::new()
    } else {
        let t = Instant::now();
        let whole = Tiling::whole();
        let quarters = Tiling {
            rows: 2,
            cols: 2,
            ..Tiling::whole()
        };
        let query =
            tile_features(&mut bare.backbone, header.upsample, &frames[0], &whole).remove(0);
        let mut tiled = MemoryBank::new(
            bank.stages(),
            bank.dim,
            bank.grid_height,
            bank.grid_width,
            bank.upsample,
        );
        for path in &references {
            let image = load_rgb(path).expect("reference image");
            for features in tile_features(&mut bare.backbone, header.upsample, &image, &quarters) {
                tiled.push(&features);
            }
        }
        let nn = vec![
            measure_nn("profile bank (whole)", &query, &bank, cfg.nn_reps),
            measure_nn(
                "references 2x2 tiles",
                &query,
                &tiled,
                (cfg.nn_reps / 2).max(3),
            ),
        ];
        eprintln!(
            "nearest neighbour measured in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        nn
    };
    drop(bare);
    let [r_bare, r_det, r_pipe, r_over]: [Rate; 4] = rates.try_into().ok().unwrap();

    // Report.
    let bare_fps = r_bare.best();
    let det_fps = r_det.best();
    let pipe_fps = r_pipe.best();
    let over_fps = r_over.best();
    let ms = |fps: f64| 1000.0 / fps;
    println!();
    println!(
        "{:<44} {:>9} {:>9} {:>9} {:>9}",
        "frames (same frames, batch 1)", "best f/s", "median", "ms/frame", "vs bare"
    );
    let row = |name: &str, r: &Rate| {
        if r.rounds.is_empty() {
            return;
        }
        println!(
            "{:<44} {:>9.2} {:>9.2} {:>9.1} {:>8.1}%",
            name,
            r.best(),
            r.median(),
            ms(r.best()),
            100.0 * r.best() / bare_fps
        );
    };
    row("bare ONNX Runtime (Backbone::run)", &r_bare);
    row("detector in-process (Inspector::inspect)", &r_det);
    row("appsrc ! logsad ! fakesink", &r_pipe);
    row("appsrc ! logsad ! anomalyoverlay ! fakesink", &r_over);
    println!();
    // Overhead of X against Y: 1 - fps(X)/fps(Y), from the best rounds and, more robust to bursts
    // of load, as the median over chunks of the paired ratio t(Y)/t(X) on the same frames.
    let paired_ratio = |x: usize, y: usize| {
        let mut r: Vec<f64> = paired.iter().map(|t| t[y] / t[x]).collect();
        r.sort_by(|a, b| a.partial_cmp(b).unwrap());
        r[r.len() / 2]
    };
    let fps = [bare_fps, det_fps, pipe_fps, over_fps];
    let mut overheads = Vec::new();
    let mut overhead_row = |label: &str, key: &str, x: usize, y: usize| {
        let best = 1.0 - fps[x] / fps[y];
        let chunked = 1.0 - paired_ratio(x, y);
        println!(
            "{:<52} {:>9.1}% {:>9.1}% {:>+9.1}",
            label,
            100.0 * best,
            100.0 * chunked,
            ms(fps[x]) - ms(fps[y])
        );
        overheads.push((
            key.to_string(),
            json!({ "best_rounds": best, "paired_median": chunked }),
        ));
    };
    println!(
        "{:<52} {:>10} {:>10} {:>9}",
        "overhead = 1 - fps ratio", "best rnds", "paired", "ms/frame"
    );
    overhead_row("algorithm: detector vs bare backbone", "algorithm", 1, 0);
    if !cfg.skip_pipeline {
        overhead_row("GStreamer: pipeline vs detector", "gstreamer", 2, 1);
        overhead_row(
            "total:     pipeline vs bare backbone (goal <= 10%)",
            "pipeline_vs_bare",
            2,
            0,
        );
        overhead_row(
            "overlay:   +anomalyoverlay vs pipeline",
            "overlay_vs_pipeline",
            3,
            2,
        );
        overhead_row(
            "           +anomalyoverlay vs bare backbone",
            "overlay_vs_bare",
            3,
            0,
        );
    }
    if let Some(b) = breakdown {
        let per = |d: Duration| b.per_frame_ms(d);
        println!(
            "\ndetector steps, ms/frame (best round, first {} frames, one session): preprocess {:.1}, \
             backbone {:.1}, features {:.1}, NN matching {:.1}, stitching {:.1}; sum {:.1}",
            b.frames,
            per(b.preprocess),
            per(b.backbone),
            per(b.features),
            per(b.matching),
            per(b.stitching),
            per(b.total())
        );
    }
    if !nn.is_empty() {
        let shape = |r: &NnResult| {
            format!(
                "{} x {} . {} x {} ({} blocks)",
                r.n, r.d, r.d, r.m, r.blocks
            )
        };
        println!();
        println!(
            "{:<40} {:>9} {:>9} {:>9} {:>9} {:>10}",
            "nearest neighbour, per stage",
            "dense ms",
            "dense GF/s",
            "GEMM ms",
            "GEMM GF/s",
            "dense/GEMM"
        );
        for r in &nn {
            println!(
                "{:<40} {:>9.2} {:>9.1} {:>9.2} {:>9.1} {:>9.1}%",
                shape(r),
                r.dense.as_secs_f64() * 1e3,
                r.gflops(r.dense),
                r.gemm().as_secs_f64() * 1e3,
                r.gflops(r.gemm()),
                100.0 * r.vs_gemm(r.dense)
            );
        }
        println!(
            "(dense: dense_max_similarity on explicit upsampled, normalised rows; GEMM: the faster \
             of B as strided transpose {} and row-major {} GF/s; goal dense NN >= 70% of GEMM)",
            nn.iter()
                .map(|r| format!("{:.1}", r.gflops(r.gemm_strided)))
                .collect::<Vec<_>>()
                .join("/"),
            nn.iter()
                .map(|r| format!("{:.1}", r.gflops(r.gemm_rowmajor)))
                .collect::<Vec<_>>()
                .join("/"),
        );
        println!();
        println!(
            "{:<40} {:>9} {:>9} {:>9} {:>9} {:>10} {:>9}",
            "exact factorised (max_similarity)",
            "ms",
            "eff. GF/s",
            "vs GEMM",
            "vs dense",
            "max |diff|",
            "GEMMs ms"
        );
        for r in &nn {
            println!(
                "{:<40} {:>9.2} {:>9.1} {:>8.0}% {:>8.1}x {:>10.1e} {:>9.2}",
                shape(r),
                r.factorised.as_secs_f64() * 1e3,
                r.gflops(r.factorised),
                100.0 * r.vs_gemm(r.factorised),
                r.speedup(),
                r.max_abs_diff,
                r.raw_gemms.as_secs_f64() * 1e3
            );
        }
        println!(
            "(effective GF/s: the dense 2nmd over the factorised time; max |diff|: factorised vs \
             dense over every cell of all {} stages, asserted < 1e-4; GEMMs ms: its raw-grid \
             matrix products alone, the rest is interpolation, norms and row maxima)",
            nn[0].stages_checked
        );
        let stages = manifest.stage_outputs.len() as f64;
        let matching = breakdown
            .map(|b| {
                format!(
                    "; measured in the detector steps {:.1} ms",
                    b.per_frame_ms(b.matching)
                )
            })
            .unwrap_or_default();
        println!(
            "NN per frame ({stages} stages, bank {bank_rows} rows): factorised {:.1} ms, dense {:.1} ms, \
             of the detector's {:.1} ms{matching}",
            stages * nn[0].factorised.as_secs_f64() * 1e3,
            stages * nn[0].dense.as_secs_f64() * 1e3,
            ms(det_fps)
        );
    }
    let total = started.elapsed().as_secs_f64();
    println!(
        "\nwhole run {total:.0} s; figures in {}",
        common::target_dir().join("bench.json").display()
    );

    let nn_json: Vec<serde_json::Value> = nn.iter().map(NnResult::json).collect();
    let report = json!({
        "command": "cargo bench --bench throughput",
        "model": manifest.name,
        "device": cfg.engine.device_nick,
        "cpus": cpus,
        "ort_threads": cfg.engine.threads,
        "matmul_num_threads": matmul_threads,
        "frames": cfg.frames,
        "frame_size": [fw, fh],
        "rounds": cfg.rounds,
        "bank_rows": bank_rows,
        "bare": r_bare.json(),
        "detector": r_det.json(),
        "pipeline": if cfg.skip_pipeline { serde_json::Value::Null } else { r_pipe.json() },
        "pipeline_overlay": if cfg.skip_pipeline { serde_json::Value::Null } else { r_over.json() },
        "overhead": serde_json::Value::Object(overheads.into_iter().collect()),
        "nearest_neighbour": nn_json,
        "detector_steps_ms_per_frame": breakdown.map(|b| {
            let per = |d: Duration| b.per_frame_ms(d);
            json!({
                "frames": b.frames,
                "preprocess": per(b.preprocess),
                "backbone": per(b.backbone),
                "features": per(b.features),
                "nn_matching": per(b.matching),
                "stitching": per(b.stitching),
            })
        }),
        "seconds": total,
    });
    let out = common::target_dir().join("bench.json");
    std::fs::create_dir_all(common::target_dir()).ok();
    std::fs::write(&out, serde_json::to_vec_pretty(&report).unwrap()).expect("writing bench.json");
}
