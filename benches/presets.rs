//! Every preset benchmarked in one run (`make bench`, or `cargo bench --bench presets`).
//!
//! For each preset of `enroll::PRESETS` (so a preset added there appears here by itself), the
//! best textile preset (`multiscale-embedding --tiles 3x3 --calibration median-mad`) and, when
//! their folders exist in the data directory, the extra models of [`EXTRA_MODELS`]:
//!
//! * a profile enrolled through the library as `logsad eval` does: the textile set
//!   (`.deps/data/textile`, plain layout) with 4 shots, the first 4 nominal images by name as
//!   references and the last 20 of the training half as validation; `logsad` on the synthetic
//!   logic scenes instead (`kit`, written to a temporary folder as `logsad synth --loco` does;
//!   its 10 validation images);
//! * frames/s in-process (`Inspector::inspect`, one frame after the other) and in a pipeline
//!   (`appsrc ! logsad ! fakesink`, the element's defaults), on the same test frames;
//! * the mean time per stage, as the library reports it in `FrameResult::timings`;
//! * FLOPs per frame: the backbone's (one image counted on the ONNX graph by
//!   `models/count_flops.py`, times the inferences a frame needs) and the matcher's matrix
//!   products (`FrameResult::matching_flops`); and the GFLOP/s each reaches (backbone FLOPs over
//!   the inference time, matching FLOPs over the nearest-neighbour time) as a share of the
//!   machine's GEMM peak, measured in the same run: the better of a large `matrixmultiply`
//!   SGEMM (what the matcher calls) and ONNX Runtime's own MatMul (through the set-up's Python).
//!
//! And whether ONNX Runtime gains from batching: one `Backbone::run` of 1, 4 and 5 inputs (the
//! tiles of 2x2 + whole frame), time per input.
//!
//! One markdown table is printed for the README; everything also goes to
//! `target/bench-presets.json`. Timings on a shared machine are noisy: compare rows of one run.
//!
//! Environment: `BENCH_FRAMES` (timed frames per preset and setup, default 6), `BENCH_PRESETS`
//! (comma list of keys to run: the preset names, `textile-best` and `fast-3x3`; default all),
//! `BENCH_MODEL` (manifest of the main model; default the default model, and for a preset
//! with a model of its own, such as `fast`, that model), `BENCH_DEVICE` (cpu,
//! cuda, tensorrt; default cpu) and `BENCH_THREADS` (ONNX Runtime intra-op threads, 0 = its
//! choice), `BENCH_BATCH_REPS` (repetitions of each batch size, best kept; default 3),
//! `BENCH_SKIP` (comma list of `pipeline`, `peak`, `batching`, `extra-models`).

// Each bench uses part of the shared helpers.
#[allow(dead_code)]
mod common;

use common::{AppPipeline, EngineChoice};
use gst::prelude::*;
use gstlogsad::detect::calibrate::CalibrationMethod;
use gstlogsad::detect::cost::{vit_flops, VitShape};
use gstlogsad::detect::preprocess::RgbImage;
use gstlogsad::detect::tiling::Tiling;
use gstlogsad::engine::{self, Backbone, Manifest};
use gstlogsad::enroll::{self, enroll_with, EnrollOptions};
use gstlogsad::eval::dataset::{self, Layout, LoadOptions, Protocol};
use gstlogsad::imageio::load_rgb;
use gstlogsad::inspector::{Extractor, Inspector, JudgeOptions, StageTimings};
use gstlogsad::synth::loco::{write_loco_scenes, LocoOptions, SceneCategory};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Models benchmarked besides the main one when their folder exists under `<data>/models`, and
/// the presets each runs (the same keys as `BENCH_PRESETS`).
const EXTRA_MODELS: &[(&str, &[&str])] = &[
    (
        "dinov2-vits14-224-int8",
        &["faithful", "multiscale-embedding"],
    ),
    ("dinov2-vits14-448", &["faithful"]),
];

/// Key of the best textile preset.
const TEXTILE_BEST: &str = "textile-best";
/// Key of the `fast` preset with the best textile preset's 3x3 tiles.
const TEXTILE_BEST_FAST: &str = "fast-3x3";
/// Shots, as the README's results.
const SHOTS: usize = 4;
/// Side of the square matrices of the GEMM peak.
const PEAK_SIZE: usize = 2048;

/// Which images a preset is enrolled and measured on.
#[derive(Clone, Copy, PartialEq)]
enum Scenes {
    Textile,
    /// The synthetic logic scenes (kit).
    Logic,
}

/// One row of the table: a preset with its options on one model.
struct Variant {
    /// The preset as `logsad enroll` options.
    label: String,
    preset: String,
    tiles: Option<u32>,
    calibration: CalibrationMethod,
    coreset_ratio: Option<f32>,
    manifest: PathBuf,
    scenes: Scenes,
}

impl Variant {
    /// The row of `key` on `manifest`; `own_model`: a preset with a model of its own
    /// (`enroll::preset_defaults`) runs that one, where it exists, instead.
    fn new(key: &str, manifest: &Path, own_model: bool) -> Self {
        let scenes = if key == "logsad" {
            Scenes::Logic
        } else {
            Scenes::Textile
        };
        let (preset, tiles, calibration, label) = if key == TEXTILE_BEST {
            (
                "multiscale-embedding",
                Some(3),
                CalibrationMethod::MedianMad,
                "multiscale-embedding --tiles 3x3 --calibration median-mad".to_string(),
            )
        } else if key == TEXTILE_BEST_FAST {
            let calibration = enroll::preset_defaults("fast").calibration;
            ("fast", Some(3), calibration, "fast --tiles 3x3".to_string())
        } else {
            let calibration = enroll::preset_defaults(key).calibration;
            (key, None, calibration, key.to_string())
        };
        let defaults = enroll::preset_defaults(preset);
        let manifest = defaults
            .model
            .filter(|_| own_model)
            .and_then(engine::installed_model)
            .unwrap_or_else(|| manifest.to_path_buf());
        Variant {
            label,
            preset: preset.to_string(),
            tiles,
            calibration,
            coreset_ratio: defaults.coreset_ratio,
            manifest,
            scenes,
        }
    }
}

/// References, validation and test frames of one kind of scene, as `logsad eval` chooses them.
struct SceneSet {
    references: Vec<PathBuf>,
    validation: Vec<PathBuf>,
    /// `frames` timed frames and one more for warming up, spread over the test samples.
    frames: Vec<RgbImage>,
    warm_up: RgbImage,
}

impl SceneSet {
    fn load(root: &Path, layout: Layout, frames: usize) -> Self {
        let data = dataset::load(root, Some(layout), &LoadOptions::default())
            .unwrap_or_else(|e| panic!("loading {}: {e}", root.display()));
        let category = &data.categories[0];
        let protocol = Protocol {
            shots: Some(SHOTS),
            ..Protocol::default()
        };
        let (references, validation) =
            dataset::references_and_validation(category, &protocol).expect("protocol");
        let test = &category.test;
        assert!(test.len() > frames, "{} test images needed", frames + 1);
        let step = test.len() / (frames + 1);
        let mut images: Vec<RgbImage> = (0..=frames)
            .map(|i| load_rgb(&test[i * step].path).expect("test frame"))
            .collect();
        let warm_up = images.pop().expect("a warm-up frame");
        SceneSet {
            references,
            validation,
            frames: images,
            warm_up,
        }
    }
}

/// What one variant measured.
struct Row {
    label: String,
    model: String,
    inferences: usize,
    backbone_flops: Option<f64>,
    matching_flops: f64,
    in_process_fps: f64,
    pipeline_fps: Option<f64>,
    /// Mean per frame.
    timings: StageTimings,
}

impl Row {
    fn ms(d: Duration) -> f64 {
        d.as_secs_f64() * 1e3
    }

    /// GFLOP/s of `flops` per frame done in `per_frame`.
    fn rate(flops: f64, per_frame: Duration) -> f64 {
        flops / per_frame.as_secs_f64().max(1e-12) / 1e9
    }

    fn backbone_rate(&self) -> Option<f64> {
        self.backbone_flops
            .map(|f| Self::rate(f, self.timings.inference))
    }

    fn matching_rate(&self) -> f64 {
        Self::rate(self.matching_flops, self.timings.nearest_neighbour)
    }

    fn markdown(&self, peak: Option<f64>) -> String {
        let t = &self.timings;
        let logic = t.parts + t.interest + t.composition;
        let share = |rate: Option<f64>| match (rate, peak) {
            (Some(r), Some(p)) => format!("{r:.0} ({:.0}%)", 100.0 * r / p),
            (Some(r), None) => format!("{r:.0}"),
            _ => "n/a".into(),
        };
        format!(
            "| {} | {} | {} | {} + {:.3} | {:.2} | {} | {:.1} / {:.1} / {:.1} / {:.2} / {:.2} / {:.1} | {} | {} |",
            self.label,
            self.model,
            self.inferences,
            self.backbone_flops
                .map_or("n/a".into(), |f| format!("{:.2}", f / 1e9)),
            self.matching_flops / 1e9,
            self.in_process_fps,
            self.pipeline_fps.map_or("skipped".into(), |f| format!("{f:.2}")),
            Self::ms(t.preprocess),
            Self::ms(t.inference),
            Self::ms(t.nearest_neighbour),
            Self::ms(t.stitching),
            Self::ms(t.scoring),
            Self::ms(logic),
            share(self.backbone_rate()),
            share(Some(self.matching_rate())),
        )
    }

    fn json(&self, peak: Option<f64>) -> serde_json::Value {
        let t = &self.timings;
        let pct = |r: Option<f64>| r.zip(peak).map(|(r, p)| 100.0 * r / p);
        json!({
            "preset": self.label,
            "model": self.model,
            "inferences_per_frame": self.inferences,
            "backbone_gflop_per_frame": self.backbone_flops.map(|f| f / 1e9),
            "matching_gflop_per_frame": self.matching_flops / 1e9,
            "in_process_fps": self.in_process_fps,
            "pipeline_fps": self.pipeline_fps,
            "ms": {
                "preprocess": Self::ms(t.preprocess),
                "inference": Self::ms(t.inference),
                "nearest_neighbour": Self::ms(t.nearest_neighbour),
                "stitching": Self::ms(t.stitching),
                "scoring": Self::ms(t.scoring),
                "parts": Self::ms(t.parts),
                "interest": Self::ms(t.interest),
                "composition": Self::ms(t.composition),
                "total": Self::ms(t.total()),
            },
            "backbone_gflops": self.backbone_rate(),
            "backbone_pct_of_peak": pct(self.backbone_rate()),
            "matching_gflops": self.matching_rate(),
            "matching_pct_of_peak": pct(Some(self.matching_rate())),
        })
    }
}

/// FLOPs of one image through the model, counted on its ONNX graph by `models/count_flops.py`
/// with the set-up's Python; `None` (with a note) where that cannot run.
fn backbone_flops(manifest: &Path) -> Option<f64> {
    let python = engine::data_dir().join("venv/bin/python");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/count_flops.py");
    let output = std::process::Command::new(&python)
        .arg(&script)
        .arg(manifest)
        .output();
    match output {
        Ok(out) if out.status.success() => {
            let value: serde_json::Value =
                serde_json::from_slice(&out.stdout).expect("count_flops.py prints JSON");
            value["flops"].as_f64()
        }
        Ok(out) => {
            println!(
                "note: count_flops.py failed on {}: {}",
                manifest.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
            None
        }
        Err(e) => {
            println!(
                "note: no backbone FLOP count ({} cannot run: {e})",
                python.display()
            );
            None
        }
    }
}

/// GFLOP/s of the best of 3 `matrixmultiply` SGEMMs of `n x n x n`, as the matcher calls it.
fn sgemm_peak(n: usize) -> f64 {
    let a: Vec<f32> = (0..n * n).map(|i| (i % 17) as f32 * 0.01).collect();
    let b: Vec<f32> = (0..n * n).map(|i| (i % 13) as f32 * 0.01).collect();
    let mut c = vec![0.0f32; n * n];
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let start = Instant::now();
        // SAFETY: a, b and c hold n*n values each; the strides describe row-major n x n.
        unsafe {
            matrixmultiply::sgemm(
                n,
                n,
                n,
                1.0,
                a.as_ptr(),
                n as isize,
                1,
                b.as_ptr(),
                1,
                n as isize,
                0.0,
                c.as_mut_ptr(),
                n as isize,
                1,
            );
        }
        best = best.min(start.elapsed());
    }
    assert!(c.iter().all(|v| v.is_finite()));
    2.0 * (n * n * n) as f64 / best.as_secs_f64() / 1e9
}

/// GFLOP/s of ONNX Runtime's MatMul of `n x n x n` (best of 5, `count_flops.py --ort-matmul`),
/// or `None` with a note.
fn ort_matmul_peak(n: usize) -> Option<f64> {
    let python = engine::data_dir().join("venv/bin/python");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/count_flops.py");
    let threads = std::env::var("BENCH_THREADS").unwrap_or_else(|_| "0".into());
    let out = std::process::Command::new(&python)
        .arg(&script)
        .args(["--ort-matmul", &n.to_string(), "--threads", &threads])
        .output();
    match out {
        Ok(out) if out.status.success() => {
            let value: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            value["gflops"].as_f64()
        }
        Ok(out) => {
            println!(
                "note: ONNX Runtime MatMul peak not measured: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            None
        }
        Err(e) => {
            println!("note: ONNX Runtime MatMul peak not measured ({e})");
            None
        }
    }
}

/// Inferences of the backbone per frame of `frame` size: the tiles of each distinct tiling.
fn inferences(inspector: &Inspector, frame: (u32, u32)) -> usize {
    let mut distinct: Vec<Tiling> = Vec::new();
    for tiling in inspector.tilings() {
        if !distinct.contains(&tiling) {
            distinct.push(tiling);
        }
    }
    distinct
        .iter()
        .map(|t| t.tiles(frame.0, frame.1).len())
        .sum()
}

/// Enrolls `variant` with `extractor`, then measures it in-process and in a pipeline.
fn measure(
    variant: &Variant,
    extractor: &mut Extractor,
    scenes: &SceneSet,
    engine: &EngineChoice,
    flops: Option<f64>,
    skip_pipeline: bool,
) -> Row {
    let manifest = Manifest::load(&variant.manifest).expect("manifest");
    let tiling = variant.tiles.map(|n| Tiling {
        rows: n,
        cols: n,
        ..Tiling::whole()
    });
    let options = EnrollOptions {
        detectors: enroll::preset(&variant.preset, tiling).expect("preset"),
        calibration: variant.calibration,
        coreset_ratio: variant.coreset_ratio,
        engine: engine.options(),
        ..EnrollOptions::default()
    };
    let started = Instant::now();
    let (profile, warnings) = enroll_with(
        extractor,
        &scenes.references,
        &scenes.validation,
        &options,
        &mut |_, _, _| {},
    )
    .expect("enrollment");
    for w in warnings {
        eprintln!("warning (enroll {}): {w}", variant.label);
    }
    eprintln!(
        "{} on {}: enrolled in {:.1} s",
        variant.label,
        manifest.name,
        started.elapsed().as_secs_f64()
    );
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("bench.logsad");
    profile.save(&path).expect("saving the profile");
    let inspector = Inspector::new(profile);
    let judge = JudgeOptions::default();

    inspector
        .inspect(extractor, &scenes.warm_up, &judge)
        .expect("warm-up frame");
    let mut timings = StageTimings::default();
    let mut matching_flops = 0.0;
    let start = Instant::now();
    for frame in &scenes.frames {
        let result = inspector.inspect(extractor, frame, &judge).expect("frame");
        timings.add(&result.timings);
        matching_flops += result.matching_flops as f64;
    }
    let elapsed = start.elapsed();
    let n = scenes.frames.len();
    let in_process_fps = n as f64 / elapsed.as_secs_f64();
    let mean = mean_timings(&timings, n);

    let pipeline_fps = (!skip_pipeline).then(|| {
        let mut all = vec![scenes.warm_up.clone()];
        all.extend(scenes.frames.iter().cloned());
        let info = common::video_info(&all);
        let mut pipeline = AppPipeline::launch(
            "appsrc name=src format=time ! logsad name=logsad ! fakesink name=sink",
            &info,
            |p| {
                let logsad = p.by_name("logsad").unwrap();
                logsad.set_property("profile", path.display().to_string());
                logsad.set_property("model", variant.manifest.display().to_string());
                engine.configure(&logsad);
            },
        );
        pipeline.chunk(&all[..1]);
        let took = pipeline.chunk(&scenes.frames);
        let arrivals = pipeline.finish();
        assert_eq!(arrivals.analysed, all.len(), "every frame analysed");
        n as f64 / took.as_secs_f64()
    });
    let size = (scenes.frames[0].width, scenes.frames[0].height);
    Row {
        label: variant.label.clone(),
        model: manifest.name.clone(),
        inferences: inferences(&inspector, size),
        backbone_flops: flops.map(|f| f * inferences(&inspector, size) as f64),
        matching_flops: matching_flops / n as f64,
        in_process_fps,
        pipeline_fps,
        timings: mean,
    }
}

fn mean_timings(sum: &StageTimings, n: usize) -> StageTimings {
    let n = n.max(1) as u32;
    StageTimings {
        preprocess: sum.preprocess / n,
        inference: sum.inference / n,
        nearest_neighbour: sum.nearest_neighbour / n,
        stitching: sum.stitching / n,
        scoring: sum.scoring / n,
        parts: sum.parts / n,
        interest: sum.interest / n,
        composition: sum.composition / n,
    }
}

/// Time per input of one `Backbone::run` of `batch` inputs, best of `reps`, batch sizes
/// interleaved.
fn batching(manifest: &Path, engine: &EngineChoice, sizes: &[usize], reps: usize) -> Vec<f64> {
    let m = Manifest::load(manifest).expect("manifest");
    let (mut backbone, _) = Backbone::load(m, &engine.options()).expect("backbone");
    let plane = 3 * backbone.manifest().input.width * backbone.manifest().input.height;
    let mut best = vec![Duration::MAX; sizes.len()];
    for round in 0..=reps {
        for (i, &b) in sizes.iter().enumerate() {
            let pixels = vec![0.1f32; b * plane];
            let start = Instant::now();
            backbone.run(pixels, b).expect("inference");
            // Round 0 warms each batch shape up.
            if round > 0 {
                best[i] = best[i].min(start.elapsed());
            }
        }
    }
    best.iter()
        .zip(sizes)
        .map(|(t, &b)| t.as_secs_f64() * 1e3 / b as f64)
        .collect()
}

fn main() {
    gst::init().expect("gst::init");
    gstlogsad::plugin_register_static().expect("registering the logsad plugin");
    let engine = EngineChoice::from_env();
    let frames = common::env_usize("BENCH_FRAMES", 6).max(1);
    let reps = common::env_usize("BENCH_BATCH_REPS", 3).max(1);
    let wanted: Option<Vec<String>> = std::env::var("BENCH_PRESETS")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .map(|v| v.split(',').map(|p| p.trim().to_string()).collect());
    let selected = |key: &str| wanted.as_ref().is_none_or(|w| w.iter().any(|p| p == key));
    let chosen_model = std::env::var_os("BENCH_MODEL").map(PathBuf::from);
    // Without BENCH_MODEL, presets with a model of their own (fast: int8) run it.
    let own_models = chosen_model.is_none();
    let main_model = chosen_model.unwrap_or_else(engine::default_model);

    let mut keys: Vec<&str> = enroll::PRESETS.to_vec();
    keys.push(TEXTILE_BEST);
    keys.push(TEXTILE_BEST_FAST);
    // (model, presets, whether a preset's own model may replace it)
    let mut models: Vec<(PathBuf, Vec<&str>, bool)> = vec![(main_model.clone(), keys, own_models)];
    if common::skipped("extra-models") {
        println!("note: extra models skipped (BENCH_SKIP)");
    } else {
        for (name, presets) in EXTRA_MODELS {
            let manifest = engine::data_dir().join(format!("models/{name}/manifest.json"));
            if manifest.is_file() {
                models.push((manifest, presets.to_vec(), false));
            } else {
                println!(
                    "note: model {name} not benchmarked: {} does not exist",
                    manifest.display()
                );
            }
        }
    }
    let variants: Vec<Variant> = models
        .iter()
        .flat_map(|(manifest, keys, own)| {
            keys.iter()
                .filter(|k| selected(k))
                .map(|k| Variant::new(k, manifest, *own))
        })
        .collect();

    let textile_root = engine::data_dir().join("data/textile");
    let textile = variants
        .iter()
        .any(|v| v.scenes == Scenes::Textile)
        .then(|| SceneSet::load(&textile_root, Layout::Plain, frames));
    let loco_dir = tempfile::tempdir().expect("temporary directory");
    let logic = variants.iter().any(|v| v.scenes == Scenes::Logic).then(|| {
        let options = LocoOptions {
            categories: vec![SceneCategory::Kit],
            ..LocoOptions::default()
        };
        write_loco_scenes(loco_dir.path(), &options).expect("writing the logic scenes");
        SceneSet::load(loco_dir.path(), Layout::MvtecLoco, frames)
    });

    let started = Instant::now();
    let skip_peak = common::skipped("peak");
    let sgemm = (!skip_peak).then(|| sgemm_peak(PEAK_SIZE));
    let ort = if skip_peak {
        None
    } else {
        ort_matmul_peak(PEAK_SIZE)
    };
    let peak = match (sgemm, ort) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };

    let mut rows = Vec::new();
    let mut flop_counts: Vec<(PathBuf, Option<f64>)> = Vec::new();
    let mut loaded: Option<(PathBuf, Extractor)> = None;
    for variant in &variants {
        if loaded.as_ref().is_none_or(|(m, _)| *m != variant.manifest) {
            let (extractor, warnings) =
                Extractor::load(&variant.manifest, &engine.options()).expect("loading the model");
            for w in warnings {
                println!("note: {w}");
            }
            loaded = Some((variant.manifest.clone(), extractor));
        }
        let flops = match flop_counts.iter().find(|(m, _)| *m == variant.manifest) {
            Some((_, f)) => *f,
            None => {
                let f = backbone_flops(&variant.manifest);
                flop_counts.push((variant.manifest.clone(), f));
                f
            }
        };
        let scenes = match variant.scenes {
            Scenes::Textile => textile.as_ref(),
            Scenes::Logic => logic.as_ref(),
        }
        .expect("scenes loaded for every variant");
        let extractor = &mut loaded.as_mut().expect("a model").1;
        let row = measure(
            variant,
            extractor,
            scenes,
            &engine,
            flops,
            common::skipped("pipeline"),
        );
        eprintln!(
            "{}: {:.2} frames/s in-process",
            row.label, row.in_process_fps
        );
        rows.push(row);
    }
    drop(loaded);

    let batch_sizes = [1, 4, 5];
    let batch =
        (!common::skipped("batching")).then(|| batching(&main_model, &engine, &batch_sizes, reps));

    println!();
    println!(
        "Presets, {} frames each ({} device, threads {}; {} test frames of the textile set, \
         `logsad` on the kit logic scenes; {:.0} s):",
        frames,
        engine.device_nick,
        engine.threads_label(),
        frames,
        started.elapsed().as_secs_f64()
    );
    println!();
    println!(
        "| preset | model | inferences / frame | GFLOP / frame (backbone + matching) | frames/s \
         in-process | frames/s pipeline | ms: preprocess / inference / nearest neighbour / \
         stitching / scoring / logic | backbone GFLOP/s (% of peak) | matching GFLOP/s (% of \
         peak) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for row in &rows {
        println!("{}", row.markdown(peak));
    }
    println!();
    let fmt = |v: Option<f64>| v.map_or("not measured".into(), |v| format!("{v:.1} GFLOP/s"));
    println!(
        "GEMM peak ({PEAK_SIZE}^3, best of the runs): matrixmultiply SGEMM {}, ONNX Runtime \
         MatMul {}; peak taken: {}.",
        fmt(sgemm),
        fmt(ort),
        fmt(peak)
    );
    for (manifest, flops) in &flop_counts {
        let Ok(m) = Manifest::load(manifest) else {
            continue;
        };
        // DINOv2 graphs here are cut after block 12 with 4x MLPs (ViT-S and ViT-B).
        let analytic = (m.family == "dinov2").then(|| {
            vit_flops(&VitShape {
                channels: 3,
                patch: m.tokens.patch_size,
                grid: (m.tokens.grid_height, m.tokens.grid_width),
                prefix_tokens: m.tokens.prefix_tokens,
                dim: m.feature_dim,
                depth: 12,
                mlp_hidden: 4 * m.feature_dim,
            }) as f64
        });
        println!(
            "Backbone {}: {} per image on the ONNX graph{}.",
            m.name,
            flops.map_or("n/a".into(), |f| format!("{:.3} GFLOP", f / 1e9)),
            analytic.map_or(String::new(), |a| format!(
                " (analytic ViT, 12 blocks: {:.3} GFLOP)",
                a / 1e9
            ))
        );
    }
    if let Some(per_input) = &batch {
        println!();
        println!("| inputs in one `Backbone::run` | ms per input | speed per input vs batch 1 |");
        println!("|---|---|---|");
        for (b, ms) in batch_sizes.iter().zip(per_input) {
            println!("| {b} | {ms:.1} | {:.1}% |", 100.0 * per_input[0] / ms);
        }
    }

    let report = json!({
        "frames": frames,
        "device": engine.device_nick,
        "threads": engine.threads,
        "peak_gflops": { "sgemm": sgemm, "ort_matmul": ort, "peak": peak },
        "presets": rows.iter().map(|r| r.json(peak)).collect::<Vec<_>>(),
        "batching": batch.map(|b| batch_sizes.iter().zip(b).map(|(s, ms)| json!({"inputs": s, "ms_per_input": ms})).collect::<Vec<_>>()),
    });
    let out = common::target_dir().join("bench-presets.json");
    std::fs::write(&out, serde_json::to_string_pretty(&report).unwrap())
        .unwrap_or_else(|e| panic!("writing {}: {e}", out.display()));
    println!("\n(written to {})", out.display());
}
