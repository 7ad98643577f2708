//! Running an evaluation, GStreamer-free: for every draw of reference images and every category
//! of a [`Dataset`], enroll once (reference features computed once per category and draw), then
//! analyse each test image once and turn the scores into a [`Report`].
//!
//! * The image score is the fused calibrated score
//!   ([`crate::inspector::FrameResult::ranking_score`]: infinite when a composition rule fired);
//!   the pixel metrics use the reported anomaly map (the first patch detector's) against the
//!   union of the sample's masks (normal images: every pixel normal; anomalous images without any mask are left out). The
//!   plain layout has no masks, so it gets no pixel metrics; neither does a run with
//!   [`EvalOptions::pixel`] off.
//! * Draws: with a seed `S` and `N` draws, the references of draw `i` are drawn with seed
//!   `S + i`; without a seed there is one draw, the first `k` by name (the LogSAD authors'
//!   protocol). See [`references_and_validation`].
//! * [`EvalOptions::test_limit`] keeps only the first `N` test images (by path) of each defect
//!   type, `good` included: a subset for quick runs, whose numbers are not comparable with
//!   published ones.
//!
//! Besides [`evaluate`], this module summarises several draws (mean ± unbiased standard
//! deviation per category), prints that summary, and draws the ROC curves of a category.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use image::GrayImage;
use serde::{Deserialize, Serialize};

use super::dataset::{
    references_and_validation, Dataset, DatasetError, Layout, Protocol, Sample, Split,
    DEFAULT_VALIDATION_COUNT,
};
use super::report::{
    aligned_table, plot_roc, union_masks, BoxAccumulator, CategoryReport, PixelAccumulator,
    PixelBox, PixelMetrics, RegionBoxes, Report, ScoredImage, Timing,
};
use crate::detect::calibrate::CalibrationMethod;
use crate::detect::metrics;
use crate::detect::preprocess::RgbImage;
use crate::detect::regions::RegionOptions;
use crate::detectors::DetectorSpec;
use crate::engine::EngineOptions;
use crate::enroll::{enroll_with, preset, EnrollOptions, Phase, DEFAULT_THRESHOLD};
use crate::imageio::{self, LoadError};
use crate::inspector::{
    frame_regions, Extractor, FrameResult, InspectError, Inspector, JudgeOptions, StageTimings,
};

/// Works out a category's detectors from its first reference image (an upscale tiling
/// depends on the image size).
pub type DetectorsFn = dyn Fn(&Path) -> Result<Vec<DetectorSpec>, String>;

/// The detectors of an evaluation.
pub enum Detectors {
    /// The same detectors for every category.
    Fixed(Vec<DetectorSpec>),
    /// Detectors worked out per category and draw from the first reference image.
    PerCategory(Box<DetectorsFn>),
}

impl fmt::Debug for Detectors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Detectors::Fixed(b) => f.debug_tuple("Fixed").field(b).finish(),
            Detectors::PerCategory(_) => f.write_str("PerCategory(..)"),
        }
    }
}

/// Test images per inference by default.
pub const DEFAULT_BATCH: usize = 4;
/// Largest batch accepted: every tile of every image of a batch is in memory at once.
pub const MAX_BATCH: usize = 64;

/// How to evaluate.
#[derive(Debug)]
pub struct EvalOptions {
    /// Reference images per category; `None` = the whole reference pool (full data).
    pub shots: Option<usize>,
    /// Seed of the first draw; `None` = the first `shots` images by name (one draw only).
    pub seed: Option<u64>,
    /// Number of draws, seeds `seed`, `seed + 1`, ...; more than one needs a seed.
    pub draws: usize,
    /// Validation images taken from the end of the training images when the dataset has no
    /// validation split of its own.
    pub validation_count: usize,
    /// Keep only the first `N` test images of each defect type (`good` included).
    pub test_limit: Option<usize>,
    /// Pass over the first `N` test images of each defect type (by path) before
    /// [`EvalOptions::test_limit`] applies: with a limit, a tuning split disjoint from the
    /// protocol's test images (`--test-skip 60 --test-limit 60` beside `--test-limit 60`).
    pub test_skip: usize,
    /// Preset name, recorded in the settings (the detectors are [`EvalOptions::detectors`]).
    pub preset: String,
    pub detectors: Detectors,
    /// How parts are learned (presets with the interest or composition detector).
    pub parts: crate::detect::parts::PartOptions,
    /// A folder of rule files `<category>.json` (such as the project's `meta/`): a category's
    /// file, where present, replaces the learned rules.
    pub rules_dir: Option<PathBuf>,
    /// Greedy coreset reduction of the memory banks (the coreset seed is the draw's seed).
    pub coreset_ratio: Option<f32>,
    pub engine: EngineOptions,
    /// Compute pixel metrics where the dataset has masks.
    pub pixel: bool,
    /// Test images per inference.
    pub batch: usize,
    /// How each branch's validation scores are summarised.
    pub calibration: CalibrationMethod,
    /// Region settings whose boxes are measured against the masks (with `pixel`), each in
    /// its own row of box metrics.
    pub regions: Vec<RegionOptions>,
}

impl Default for EvalOptions {
    /// The authors' protocol with the faithful preset: full data, one draw, pixel metrics.
    fn default() -> Self {
        EvalOptions {
            shots: None,
            seed: None,
            draws: 1,
            validation_count: DEFAULT_VALIDATION_COUNT,
            test_limit: None,
            test_skip: 0,
            preset: "faithful".into(),
            detectors: Detectors::Fixed(preset("faithful", None).expect("known preset")),
            parts: Default::default(),
            rules_dir: None,
            coreset_ratio: None,
            engine: EngineOptions::default(),
            pixel: true,
            batch: DEFAULT_BATCH,
            calibration: CalibrationMethod::MeanStd,
            regions: vec![RegionOptions::default()],
        }
    }
}

impl EvalOptions {
    /// The seed of each draw (`[None]` without a seed).
    pub fn draw_seeds(&self) -> Vec<Option<u64>> {
        match self.seed {
            None => vec![None],
            Some(s) => (0..self.draws as u64)
                .map(|i| Some(s.wrapping_add(i)))
                .collect(),
        }
    }

    fn check(&self) -> Result<(), EvalError> {
        if self.draws == 0 {
            return Err(EvalError::Invalid("--draws must be at least 1".into()));
        }
        if self.draws > 1 && self.seed.is_none() {
            return Err(EvalError::Invalid(format!(
                "{} draws need a seed (--seed): without one the references are the first k \
                 images by name, the same every draw",
                self.draws
            )));
        }
        if !(1..=MAX_BATCH).contains(&self.batch) {
            return Err(EvalError::Invalid(format!(
                "--batch {} must be in [1, {MAX_BATCH}]",
                self.batch
            )));
        }
        if self.test_limit == Some(0) {
            return Err(EvalError::Invalid("--test-limit must be at least 1".into()));
        }
        if let Some(r) = self.coreset_ratio {
            if !(r.is_finite() && r > 0.0 && r <= 1.0) {
                return Err(EvalError::Invalid(format!(
                    "--coreset-ratio {r} must be in (0, 1]"
                )));
            }
        }
        Ok(())
    }
}

/// Errors of an evaluation.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error(transparent)]
    Detector(#[from] InspectError),
    #[error("{0}")]
    Invalid(String),
    #[error("{}: {message}", path.display())]
    Mask { path: PathBuf, message: String },
    /// A ground-truth mask that could not be read.
    #[error("mask {0}")]
    MaskFile(LoadError),
}

/// What an evaluation is doing, for progress reports.
#[derive(Debug)]
pub enum EvalProgress<'a> {
    /// Before any work: the test images to analyse over all draws and categories.
    Start {
        images: usize,
        draws: usize,
        categories: usize,
    },
    /// A warning of the model loader (such as a device falling back to the CPU).
    Warning(&'a str),
    /// After each reference or validation image of an enrollment.
    Enrolling {
        draw: usize,
        category: &'a str,
        phase: Phase,
        done: usize,
        total: usize,
    },
    /// After each test image; `done` of `total` in this category and draw.
    Image {
        draw: usize,
        category: &'a str,
        done: usize,
        total: usize,
    },
    /// A test image that could not be read: it is left out of the metrics (and listed in the
    /// category's settings as `unreadable`); the evaluation goes on. Reported in every draw.
    Unreadable {
        draw: usize,
        category: &'a str,
        error: &'a LoadError,
    },
    /// A category of a draw is finished.
    CategoryDone {
        draw: usize,
        seed: Option<u64>,
        report: &'a CategoryReport,
        scores: &'a [ScoredImage],
    },
}

/// The first `limit` test samples (by path) of each defect type, `good` included, in path
/// order; all of them without a limit.
pub fn limit_test(samples: &[Sample], skip: usize, limit: Option<usize>) -> Vec<Sample> {
    let mut sorted: Vec<&Sample> = samples.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    let mut seen: HashMap<&str, usize> = HashMap::new();
    sorted
        .into_iter()
        .filter(|s| {
            let n = seen.entry(s.defect.as_str()).or_default();
            *n += 1;
            *n > skip && limit.is_none_or(|limit| *n <= skip + limit)
        })
        .cloned()
        .collect()
}

/// Evaluates `dataset` with the model of `manifest`: one [`Report`] per draw.
///
/// The protocol of every category and draw is checked before the model is loaded, so a
/// category with too few images fails at once.
pub fn evaluate(
    manifest: &Path,
    dataset: &Dataset,
    options: &EvalOptions,
    progress: &mut dyn FnMut(EvalProgress<'_>),
) -> Result<Vec<Report>, EvalError> {
    options.check()?;
    if dataset.categories.is_empty() {
        return Err(EvalError::Invalid(format!(
            "{}: no categories to evaluate",
            dataset.root.display()
        )));
    }
    let seeds = options.draw_seeds();
    let mut plans = Vec::with_capacity(seeds.len());
    for &seed in &seeds {
        let protocol = Protocol {
            shots: options.shots,
            seed,
            validation_count: options.validation_count,
        };
        let draw = dataset
            .categories
            .iter()
            .map(|c| references_and_validation(c, &protocol))
            .collect::<Result<Vec<_>, _>>()?;
        plans.push(draw);
    }
    let tests: Vec<Vec<Sample>> = dataset
        .categories
        .iter()
        .map(|c| limit_test(&c.test, options.test_skip, options.test_limit))
        .collect();
    let per_draw: usize = tests.iter().map(Vec::len).sum();
    progress(EvalProgress::Start {
        images: per_draw * seeds.len(),
        draws: seeds.len(),
        categories: dataset.categories.len(),
    });
    let pixel = options.pixel && dataset.layout != Layout::Plain;

    let (mut extractor, warnings) = Extractor::load(manifest, &options.engine)?;
    for w in &warnings {
        progress(EvalProgress::Warning(w));
    }
    let model = extractor.backbone().identity().name.clone();

    let mut reports = Vec::with_capacity(seeds.len());
    for (draw, (&seed, plan)) in seeds.iter().zip(&plans).enumerate() {
        let mut categories = Vec::with_capacity(dataset.categories.len());
        for ((category, (references, validation)), test) in
            dataset.categories.iter().zip(plan).zip(&tests)
        {
            let name = category.name.as_str();
            let detectors = match &options.detectors {
                Detectors::Fixed(b) => b.clone(),
                Detectors::PerCategory(f) => f(&references[0])
                    .map_err(|e| EvalError::Invalid(format!("category '{name}': {e}")))?,
            };
            let enroll_options = EnrollOptions {
                detectors: detectors.clone(),
                coreset_ratio: options.coreset_ratio,
                threshold: DEFAULT_THRESHOLD,
                seed: seed.unwrap_or(0),
                engine: options.engine.clone(),
                calibration: options.calibration,
                parts: options.parts.clone(),
                rules: options
                    .rules_dir
                    .as_ref()
                    .map(|dir| dir.join(format!("{name}.json")))
                    .filter(|file| file.exists()),
                ..EnrollOptions::default()
            };
            let start = Instant::now();
            let (profile, enroll_warnings) = enroll_with(
                &mut extractor,
                references,
                validation,
                &enroll_options,
                &mut |phase, done, total| {
                    progress(EvalProgress::Enrolling {
                        draw,
                        category: name,
                        phase,
                        done,
                        total,
                    })
                },
            )?;
            for w in &enroll_warnings {
                progress(EvalProgress::Warning(&format!("category '{name}': {w}")));
            }
            let enroll_s = start.elapsed().as_secs_f64();
            let inspector = Inspector::new(profile);
            let pixel = pixel.then_some(options.regions.as_slice());
            let scored = score_category(
                &inspector,
                &mut extractor,
                test,
                pixel,
                options.batch,
                &mut |event| match event {
                    Ok(done) => progress(EvalProgress::Image {
                        draw,
                        category: name,
                        done,
                        total: test.len(),
                    }),
                    Err(error) => progress(EvalProgress::Unreadable {
                        draw,
                        category: name,
                        error,
                    }),
                },
            );
            let scored = scored?;
            let settings = serde_json::json!({
                "model": model,
                "preset": options.preset,
                "detectors": detectors,
                "shots": options.shots,
                "seed": seed,
                "references": references.len(),
                "validation_images": validation.len(),
                "test_limit": options.test_limit,
                "test_skip": options.test_skip,
                "coreset_ratio": options.coreset_ratio,
                "calibration": options.calibration,
                "enroll_s": enroll_s,
                "pixel_images": scored.pixel_images,
                "unreadable": scored.unreadable.iter().map(|e| serde_json::json!({
                    "path": e.path().display().to_string(),
                    "kind": e.kind(),
                    "message": e.to_string(),
                })).collect::<Vec<_>>(),
            });
            let mut report = CategoryReport::from_scores(
                name,
                &scored.scores,
                scored.pixel,
                scored.timing,
                settings,
            );
            report.boxes = scored.boxes;
            progress(EvalProgress::CategoryDone {
                draw,
                seed,
                report: &report,
                scores: &scored.scores,
            });
            categories.push(report);
        }
        reports.push(Report::new(categories));
    }
    Ok(reports)
}

struct Scored {
    scores: Vec<ScoredImage>,
    pixel: Option<PixelMetrics>,
    /// Images that took part in the pixel metrics.
    pixel_images: Option<usize>,
    boxes: Vec<RegionBoxes>,
    /// Test images that could not be read, left out.
    unreadable: Vec<LoadError>,
    timing: Timing,
}

/// Analyses each test image once, `batch` images per inference, while a second thread decodes
/// the next images. An image that cannot be read is left out: `on_image` gets its error, and
/// the number of images scored so far after each scored one. With `pixel` (region settings),
/// also the pixel metrics and the box metrics of each region setting.
fn score_category(
    inspector: &Inspector,
    extractor: &mut Extractor,
    test: &[Sample],
    pixel: Option<&[RegionOptions]>,
    batch: usize,
    on_image: &mut dyn FnMut(Result<usize, &LoadError>),
) -> Result<Scored, EvalError> {
    let mut timings = StageTimings::default();
    let mut accumulator = pixel.map(|_| PixelAccumulator::new());
    let mut boxes = vec![BoxAccumulator::default(); pixel.map_or(0, <[_]>::len)];
    let mut pixel_images = 0;
    let mut scores = Vec::with_capacity(test.len());
    let mut unreadable = Vec::new();
    let start = Instant::now();
    std::thread::scope(|scope| -> Result<(), EvalError> {
        let (decoded, receiver) = std::sync::mpsc::sync_channel(2 * batch);
        scope.spawn(move || {
            for sample in test {
                // A closed channel means scoring stopped on an error: stop decoding too.
                if decoded.send(imageio::load_rgb(&sample.path)).is_err() {
                    break;
                }
            }
        });
        for samples in test.chunks(batch) {
            let mut readable = Vec::with_capacity(samples.len());
            let mut images = Vec::with_capacity(samples.len());
            for sample in samples {
                match receiver.recv() {
                    Ok(Ok(image)) => {
                        readable.push(sample);
                        images.push(image);
                    }
                    Ok(Err(error)) => {
                        on_image(Err(&error));
                        unreadable.push(error);
                    }
                    Err(_) => {
                        return Err(EvalError::Invalid(format!(
                            "the image decoder stopped before {}",
                            sample.path.display()
                        )))
                    }
                }
            }
            if images.is_empty() {
                continue;
            }
            let refs: Vec<&RgbImage> = images.iter().collect();
            let results = inspector.inspect_batch(extractor, &refs, &JudgeOptions::default())?;
            for (sample, result) in readable.into_iter().zip(&results) {
                timings.add(&result.timings);
                if let (Some(acc), Some(regions)) = (accumulator.as_mut(), pixel) {
                    let frame = result.frame_size;
                    if let Some(mask) = add_pixels(acc, result, sample, frame)? {
                        pixel_images += 1;
                        for (options, acc) in regions.iter().zip(&mut boxes) {
                            let found: Vec<PixelBox> =
                                frame_regions(&result.map, result.map_threshold, frame, options)
                                    .iter()
                                    .map(|r| r.rect)
                                    .collect();
                            acc.add(mask.as_ref(), &found, frame);
                        }
                    }
                }
                scores.push(ScoredImage {
                    path: sample.path.display().to_string(),
                    anomalous: sample.anomalous,
                    defect: sample.defect.clone(),
                    split: sample.split.map(|s| s.name().to_string()),
                    subtype: sample.subtype.clone(),
                    score: result.ranking_score(),
                    detectors: result.detector_ranking_scores().into_iter().collect(),
                    rules: result
                        .rules
                        .iter()
                        .map(|r| r.rule.message.clone())
                        .collect(),
                });
                on_image(Ok(scores.len()));
            }
        }
        Ok(())
    })?;
    let busy = start.elapsed();
    let timing = Timing {
        model_s: timings.model().as_secs_f64(),
        matching_s: timings.matching().as_secs_f64(),
        patch_s: timings.patch().as_secs_f64(),
        parts_s: timings.parts.as_secs_f64(),
        interest_s: timings.interest.as_secs_f64(),
        composition_s: timings.composition.as_secs_f64(),
        per_image_ms: if test.is_empty() {
            0.0
        } else {
            busy.as_secs_f64() * 1000.0 / test.len() as f64
        },
    };
    Ok(Scored {
        scores,
        pixel: accumulator.map(PixelAccumulator::finish),
        pixel_images: pixel.map(|_| pixel_images),
        boxes: pixel
            .unwrap_or_default()
            .iter()
            .zip(&boxes)
            .map(|(options, acc)| RegionBoxes {
                peak_fraction: options.peak_fraction,
                peak_scope: options.peak_scope.to_string(),
                merge_overlapping: options.merge_overlapping,
                metrics: acc.finish(),
            })
            .collect(),
        unreadable,
        timing,
    })
}

/// Adds the reported map of one test image and returns `Some` of its union mask (`None`
/// inside for a good image), or `None` for an anomalous image without masks (left out: its
/// anomalous pixels are unknown).
fn add_pixels(
    acc: &mut PixelAccumulator,
    result: &FrameResult,
    sample: &Sample,
    size: (u32, u32),
) -> Result<Option<Option<GrayImage>>, EvalError> {
    let mask = if sample.masks.is_empty() {
        if sample.anomalous {
            return Ok(None);
        }
        None
    } else {
        let masks = sample
            .masks
            .iter()
            .map(|path| imageio::load(path).map(|m| m.into_luma8()))
            .collect::<Result<Vec<GrayImage>, _>>()
            .map_err(EvalError::MaskFile)?;
        let union = union_masks(&masks).map_err(|message| EvalError::Mask {
            path: sample.masks[0].clone(),
            message,
        })?;
        Some(union)
    };
    let map = &result.map;
    acc.add(&map.map, map.map_width, map.map_height, mask.as_ref(), size)
        .map_err(|message| EvalError::Mask {
            path: sample.masks.first().unwrap_or(&sample.path).clone(),
            message: format!("{message} (test image {})", sample.path.display()),
        })?;
    Ok(Some(mask))
}

// ---------------------------------------------------------------------------------------
// Several draws

/// Mean and unbiased standard deviation of a metric over draws (values that are undefined in
/// a draw are left out; `std` needs two values).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct MeanStd {
    pub mean: Option<f64>,
    pub std: Option<f64>,
    /// Draws where the metric is defined.
    pub n: usize,
}

impl MeanStd {
    pub fn of(values: impl IntoIterator<Item = Option<f64>>) -> Self {
        let v: Vec<f64> = values
            .into_iter()
            .flatten()
            .filter(|v| v.is_finite())
            .collect();
        let n = v.len();
        if n == 0 {
            return MeanStd::default();
        }
        let mean = v.iter().sum::<f64>() / n as f64;
        let std = (n > 1).then(|| {
            (v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1) as f64).sqrt()
        });
        MeanStd {
            mean: Some(mean),
            std,
            n,
        }
    }

    /// `97.3 ± 1.2` in percent, `-` where undefined.
    pub fn percent(&self) -> String {
        match (self.mean, self.std) {
            (Some(m), Some(s)) => format!("{:.1} ± {:.1}", m * 100.0, s * 100.0),
            (Some(m), None) => format!("{:.1}", m * 100.0),
            _ => "-".into(),
        }
    }
}

/// One category (or the mean row, named `mean`) over all draws.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CategorySummary {
    pub category: String,
    pub draws: usize,
    pub image_auroc: MeanStd,
    pub image_f1_max: MeanStd,
}

/// Per category (in the first draw's order) and for the mean row: image AUROC and F1-max,
/// mean ± unbiased standard deviation over the draws.
pub fn summarise(reports: &[Report]) -> Vec<CategorySummary> {
    let Some(first) = reports.first() else {
        return Vec::new();
    };
    let mut out: Vec<CategorySummary> = first
        .categories
        .iter()
        .map(|c| {
            let same: Vec<&CategoryReport> = reports
                .iter()
                .filter_map(|r| r.categories.iter().find(|x| x.category == c.category))
                .collect();
            CategorySummary {
                category: c.category.clone(),
                draws: same.len(),
                image_auroc: MeanStd::of(same.iter().map(|x| x.image_auroc)),
                image_f1_max: MeanStd::of(same.iter().map(|x| x.image_f1_max)),
            }
        })
        .collect();
    out.push(CategorySummary {
        category: "mean".into(),
        draws: reports.len(),
        image_auroc: MeanStd::of(reports.iter().map(|r| r.mean.image_auroc)),
        image_f1_max: MeanStd::of(reports.iter().map(|r| r.mean.image_f1_max)),
    });
    out
}

/// Aligned table of a summary: category, draws, image AUROC and F1-max as `mean ± std` in
/// percent; a dashed rule after the header and before the `mean` row.
pub fn summary_table(summary: &[CategorySummary]) -> String {
    let header = [
        "category".to_string(),
        "draws".into(),
        "image AUROC".into(),
        "F1-max".into(),
    ];
    let mut rows: Vec<[String; 4]> = summary
        .iter()
        .map(|s| {
            [
                s.category.clone(),
                s.draws.to_string(),
                s.image_auroc.percent(),
                s.image_f1_max.percent(),
            ]
        })
        .collect();
    let footer = match rows.last() {
        Some(last) if last[0] == "mean" => rows.pop(),
        _ => None,
    };
    aligned_table(1, &header, &rows, footer.as_ref())
}

/// One draw as recorded in `report.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrawRecord {
    pub draw: usize,
    pub seed: Option<u64>,
    #[serde(flatten)]
    pub report: Report,
}

/// Everything an evaluation run writes to `report.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    pub root: String,
    pub layout: Layout,
    pub model: String,
    pub preset: String,
    pub shots: Option<usize>,
    pub validation_count: usize,
    pub test_limit: Option<usize>,
    /// Absent from reports written before it existed: 0.
    #[serde(default)]
    pub test_skip: usize,
    pub draws: Vec<DrawRecord>,
    pub summary: Vec<CategorySummary>,
}

impl EvalRecord {
    /// The record of `reports` (one per draw, as [`evaluate`] returns them); the model name is
    /// taken from the reports' settings.
    pub fn new(dataset: &Dataset, options: &EvalOptions, reports: Vec<Report>) -> Self {
        let summary = summarise(&reports);
        let model = reports
            .iter()
            .flat_map(|r| &r.categories)
            .find_map(|c| c.settings.get("model").and_then(|m| m.as_str()))
            .unwrap_or_default()
            .to_string();
        EvalRecord {
            root: dataset.root.display().to_string(),
            layout: dataset.layout,
            model,
            preset: options.preset.clone(),
            shots: options.shots,
            validation_count: options.validation_count,
            test_limit: options.test_limit,
            test_skip: options.test_skip,
            draws: options
                .draw_seeds()
                .into_iter()
                .zip(reports)
                .enumerate()
                .map(|(draw, (seed, report))| DrawRecord { draw, seed, report })
                .collect(),
            summary,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("record serialises")
    }
}

// ---------------------------------------------------------------------------------------
// ROC plots

/// ROC curves of a category's scores: `image` over all test images, and for MVTec LOCO also
/// `logical` and `structural` (each with all normal images). Undefined curves are left out.
pub fn roc_curves(scores: &[ScoredImage]) -> Vec<(String, Vec<(f64, f64)>)> {
    let curve = |keep: &dyn Fn(&ScoredImage) -> bool| {
        let (s, l): (Vec<f64>, Vec<bool>) = scores
            .iter()
            .filter(|x| keep(x))
            .map(|x| (x.score, x.anomalous))
            .unzip();
        metrics::roc_curve(&s, &l)
    };
    let mut out = vec![("image".to_string(), curve(&|_| true))];
    for split in Split::ALL {
        let name = split.name();
        let is = |x: &ScoredImage| x.split.as_deref() == Some(name);
        if scores.iter().any(|x| x.anomalous && is(x)) {
            out.push((name.to_string(), curve(&|x| !x.anomalous || is(x))));
        }
    }
    out.retain(|(_, c)| !c.is_empty());
    out
}

/// `roc_<category>.png` with characters other than ASCII letters, digits, `-`, `_` and `.`
/// replaced by `_`.
pub fn roc_file_name(category: &str) -> String {
    format!("roc_{}.png", crate::fsname::safe_file_name_part(category))
}

/// Writes the ROC plot of a category into `dir`; returns its path.
pub fn write_roc(dir: &Path, category: &str, scores: &[ScoredImage]) -> Result<PathBuf, String> {
    let path = dir.join(roc_file_name(category));
    plot_roc(
        &path,
        &format!("{category}: image ROC"),
        &roc_curves(scores),
    )?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(path: &str, defect: &str) -> Sample {
        Sample {
            path: PathBuf::from(path),
            anomalous: defect != "good",
            defect: defect.into(),
            split: None,
            masks: Vec::new(),
            subtype: None,
        }
    }

    #[test]
    fn test_limit_per_defect() {
        let samples = vec![
            sample("c/good/002.png", "good"),
            sample("c/crack/000.png", "crack"),
            sample("c/good/000.png", "good"),
            sample("c/good/001.png", "good"),
            sample("c/hole/000.png", "hole"),
            sample("c/crack/001.png", "crack"),
        ];
        let names = |v: Vec<Sample>| -> Vec<String> {
            v.into_iter()
                .map(|s| s.path.display().to_string())
                .collect()
        };
        assert_eq!(
            names(limit_test(&samples, 0, Some(1))),
            ["c/crack/000.png", "c/good/000.png", "c/hole/000.png"]
        );
        assert_eq!(
            names(limit_test(&samples, 0, Some(2))),
            [
                "c/crack/000.png",
                "c/crack/001.png",
                "c/good/000.png",
                "c/good/001.png",
                "c/hole/000.png"
            ]
        );
        assert_eq!(limit_test(&samples, 0, None).len(), 6);
        // A tuning split: the images after the first one of each type, disjoint from it.
        assert_eq!(
            names(limit_test(&samples, 1, Some(1))),
            ["c/crack/001.png", "c/good/001.png"]
        );
        assert_eq!(
            names(limit_test(&samples, 1, None)),
            ["c/crack/001.png", "c/good/001.png", "c/good/002.png"]
        );
    }

    #[test]
    fn mean_and_unbiased_std() {
        let m = MeanStd::of([Some(0.9), Some(0.8), None, Some(1.0)]);
        assert_eq!(m.n, 3);
        assert!((m.mean.unwrap() - 0.9).abs() < 1e-12);
        assert!((m.std.unwrap() - 0.1).abs() < 1e-12);
        assert_eq!(m.percent(), "90.0 ± 10.0");
        let one = MeanStd::of([Some(0.5)]);
        assert_eq!(
            (one.mean, one.std, one.percent().as_str()),
            (Some(0.5), None, "50.0")
        );
        assert_eq!(MeanStd::of([None]).percent(), "-");
    }

    #[test]
    fn roc_curves_with_loco_splits() {
        let img = |score: f64, split: Option<&str>| ScoredImage {
            path: format!("{score}.png"),
            anomalous: split.is_some(),
            defect: split.unwrap_or("good").into(),
            split: split.map(str::to_string),
            subtype: None,
            score,
            detectors: Default::default(),
            rules: Vec::new(),
        };
        let scores = [
            img(0.1, None),
            img(0.2, None),
            img(0.9, Some("logical")),
            img(0.15, Some("structural")),
        ];
        let curves = roc_curves(&scores);
        let names: Vec<&str> = curves.iter().map(|c| c.0.as_str()).collect();
        assert_eq!(names, ["image", "logical", "structural"]);
        assert_eq!(
            curves[1].1,
            vec![(0.0, 0.0), (0.0, 1.0), (0.5, 1.0), (1.0, 1.0)]
        );
        // Without splits only the image curve; without normal images none.
        assert_eq!(
            roc_curves(
                &scores[..3]
                    .iter()
                    .map(|s| ScoredImage {
                        split: None,
                        ..s.clone()
                    })
                    .collect::<Vec<_>>()
            )
            .len(),
            1
        );
        assert!(roc_curves(&scores[2..]).is_empty());
    }

    #[test]
    fn seeds_of_draws() {
        let mut o = EvalOptions {
            seed: Some(5),
            draws: 3,
            ..EvalOptions::default()
        };
        assert_eq!(o.draw_seeds(), [Some(5), Some(6), Some(7)]);
        o.seed = None;
        assert_eq!(o.draw_seeds(), [None]);
        assert!(o.check().unwrap_err().to_string().contains("need a seed"));
        assert_eq!(roc_file_name("a b/c"), "roc_a_b_c.png");
    }
}
