//! The `logsad` command: enroll reference images into a profile, score images against it.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use gstlogsad::detect::calibrate::CalibrationMethod;
use gstlogsad::detect::parts::{render_parts, MaskStage, PartOptions, MASK_COLOUR_WEIGHT};
use gstlogsad::detect::preprocess::Resample;
use gstlogsad::detect::regions::{PeakScope, RegionOptions};
use gstlogsad::detect::rules::write_rules;
use gstlogsad::detect::score::Reduction;
use gstlogsad::detect::tiling::{Neighbourhood, Resize, Tiling};
use gstlogsad::detectors::{DetectorSpec, Learned};
use gstlogsad::engine::{self, Device, EngineOptions};
use gstlogsad::enroll::{enroll, preset, preset_defaults, EnrollOptions, Phase, DEFAULT_THRESHOLD};
use gstlogsad::eval::dataset::{self, Layout, LoadOptions, DEFAULT_VALIDATION_COUNT};
use gstlogsad::eval::report::{Report, ScoredImage};
use gstlogsad::eval::run::{
    evaluate, summary_table, write_roc, Detectors, EvalOptions, EvalProgress, EvalRecord,
    DEFAULT_BATCH,
};
use gstlogsad::imageio;
use gstlogsad::inspector::{self, JudgeOptions};
use gstlogsad::synth::family_b::{write_family_b, FamilyBOptions};
use gstlogsad::synth::loco::{write_loco_scenes, LocoOptions};
use gstlogsad::synth::{write_structural_set, StructuralSetOptions};
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Standard output was closed by its reader (`logsad score DIR | head -1`): the command stops
/// at once, quietly, with exit status 0.
#[derive(Debug, thiserror::Error)]
#[error("standard output was closed")]
struct StdoutClosed;

/// Writes a line to standard output; a closed pipe becomes [`StdoutClosed`].
fn print_line(line: std::fmt::Arguments) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{line}").and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        Err(e) => Err(anyhow::Error::new(e).context("cannot write to standard output")),
    }
}

/// `println!` through [`print_line`], returning its error from the calling function.
macro_rules! out {
    ($($arg:tt)*) => {
        print_line(format_args!($($arg)*))?
    };
}

#[derive(Parser)]
#[command(
    name = "logsad",
    version,
    about = "Training-free anomaly detection (LogSAD)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build a profile from anomaly-free reference images and validation images.
    Enroll(EnrollArgs),
    /// Score images against a profile: one JSON object per image on standard output.
    Score(ScoreArgs),
    /// Print a profile's header (model, tiling, calibration, threshold) as JSON, and a summary
    /// of its parts and rules on standard error; or, with --parts, draw an image's parts.
    Info(InfoArgs),
    /// Evaluate on a dataset (MVTec AD, MVTec LOCO, VisA or a plain folder of good and defect
    /// folders): enroll each category, score its test images, print image/pixel AUROC and
    /// F1-max, write report.json and ROC plots.
    Eval(EvalArgs),
    /// Write a synthetic evaluation set with exact masks (MVTec AD layout): local damage
    /// (specks, scratches, stains) painted onto anomaly-free images, for the measurements that
    /// need masks (pixel AUROC, region boxes) on images that ship none; or, with --loco,
    /// rendered scenes with logical and structural anomalies (MVTec LOCO layout).
    Synth(SynthArgs),
}

#[derive(Args)]
struct SynthArgs {
    /// Seed of every random choice (defect placement, shape and polarity; with --loco, the
    /// whole scene).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write synthetic scenes with known logic (tray, kit, bottle) in the MVTec LOCO layout
    /// instead of painting defects onto source images: logical and structural anomalies with
    /// ground truth, and each category's answer key in logic.json.
    #[arg(long, conflicts_with_all = ["skip", "per_kind", "category", "sources"])]
    loco: bool,
    /// With --loco: the family of scenes, a (tray, kit, bottle) or b (blister, terminals,
    /// tubes: other products and looks, a held-out test; defaults 10 train, 20 validation, 30
    /// good, 30 logical and 20 structural test images) [default: a].
    #[arg(long, value_enum, requires = "loco")]
    family: Option<SceneFamily>,
    /// Leave out the first N source images (to build disjoint tuning and test sets).
    #[arg(long, value_name = "N", default_value_t = 0)]
    skip: usize,
    /// Anomaly-free training images (train/good): `logsad eval` takes references from the
    /// start and validation images from the end [default: 24; with --loco 10].
    #[arg(long, value_name = "N")]
    train: Option<usize>,
    /// Images in test/good and in each defect folder [default: 30].
    #[arg(long, value_name = "N")]
    per_kind: Option<usize>,
    /// With --loco: images in validation/good [default: 10].
    #[arg(long, value_name = "N", requires = "loco")]
    validation: Option<usize>,
    /// With --loco: images in test/good, test/logical_anomalies and
    /// test/structural_anomalies, each [default: 20].
    #[arg(long, value_name = "N", requires = "loco")]
    per_test: Option<usize>,
    /// Category folder name under the output root.
    #[arg(long, default_value = "synthetic")]
    category: String,
    /// Output root (the dataset root for `logsad eval`).
    #[arg(long)]
    out: PathBuf,
    /// Anomaly-free source images or folders (used in sorted order).
    #[arg(required_unless_present = "loco")]
    sources: Vec<PathBuf>,
}

/// A family of synthetic logic scenes (`synth --loco --family`).
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum SceneFamily {
    A,
    B,
}

#[derive(Args)]
struct InfoArgs {
    profile: PathBuf,
    /// Label IMAGE's patches with the profile's parts and draw them (each part tinted, with a
    /// legend) into --out; needs the profile's model. The profile must have parts
    /// (enrolled with --preset logsad).
    #[arg(long, value_name = "IMAGE", requires = "out")]
    parts: Option<PathBuf>,
    /// The picture --parts writes (PNG).
    #[arg(long, value_name = "FILE.png", requires = "parts")]
    out: Option<PathBuf>,
    #[command(flatten)]
    engine: EngineArgs,
}

#[derive(Args)]
struct EngineArgs {
    /// Model manifest (JSON beside the ONNX file); default: the prepared DINOv2 ViT-S/14 when
    /// enrolling, and the model a profile names (in the data directory's models/) when
    /// scoring with a profile.
    #[arg(long)]
    model: Option<PathBuf>,
    /// cpu, cuda or tensorrt (an unavailable provider falls back, TensorRT to CUDA and CUDA to
    /// CPU, with a warning).
    #[arg(long, default_value = "cpu")]
    device: Device,
    #[arg(long, default_value_t = 0)]
    gpu_id: u32,
    /// Threads ONNX Runtime may use within an operator (0: its default).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

impl EngineArgs {
    fn options(&self) -> EngineOptions {
        EngineOptions {
            device: self.device,
            gpu_id: self.gpu_id,
            threads: self.threads,
            ..Default::default()
        }
    }

    /// `--model`, else the model of `preset` (the `fast` preset's int8 backbone, when the set-up
    /// has made it; a warning names it when not), else the default model.
    fn manifest_for_preset(&self, preset: &str) -> PathBuf {
        if let Some(model) = &self.model {
            return model.clone();
        }
        match preset_defaults(preset).model {
            Some(own) if std::env::var_os("LOGSAD_MODEL").is_none() => engine::installed_model(own)
                .unwrap_or_else(|| {
                    eprintln!(
                        "warning: preset {preset}: its model {own} is not in {} (run `make \
                         deps`); using the default model",
                        engine::data_dir().join("models").display()
                    );
                    engine::default_model()
                }),
            _ => engine::default_model(),
        }
    }

    /// `--model`, else the model `profile` was built with (see [`engine::model_for_profile`]).
    fn manifest_for(&self, profile: &Path) -> Result<PathBuf> {
        match &self.model {
            Some(model) => Ok(model.clone()),
            None => Ok(engine::model_for_profile(
                &gstlogsad::profile::Profile::recorded_model(profile)?.name,
            )),
        }
    }
}

/// Where the part stage finds parts (`--part-stage`).
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum PartStage {
    Pixels,
    Tokens,
}

/// The detector options shared by `enroll` and `eval`.
#[derive(Args, Clone)]
struct DetectorArgs {
    /// Detectors: faithful (the reference patch detector), multiscale (a tiled local maximum
    /// fused with a whole-frame global mean, each calibrated), multiscale-embedding (the
    /// tiled local maximum fused with the distance of the frame's mean-pooled features to the
    /// nearest reference frame's), fast (multiscale-embedding with the local branch's tile
    /// neighbourhood chosen on the validation images, the int8 model, median/MAD calibration
    /// and a 5% coreset, where not set otherwise) or logsad (the paper's patch, interest and
    /// composition detectors on parts learned from the references, fused as its eq. 5).
    #[arg(long, default_value = "faithful")]
    preset: String,
    /// Number of part classes, background included, for the logsad preset (default: the
    /// clustering's cut, --part-distance, or the rule file's `parts`; with --part-stage tokens,
    /// the mean silhouette of k-means over 2..=8).
    #[arg(long)]
    parts: Option<usize>,
    /// Where parts are found: pixels (segments of the frame at --segment-size px, labelled by
    /// their features and colour, as the paper labels SAM's masks) or tokens (cells of the
    /// backbone's upsampled token grid, clustered by k-means).
    #[arg(long, value_enum, default_value = "pixels")]
    part_stage: PartStage,
    /// Weight of each part's mean colour in the part clustering, 0: features alone (default: 1
    /// at pixel resolution, 0 on tokens).
    #[arg(long)]
    part_colour: Option<f32>,
    /// Pixel resolution: long side of the image the parts are segmented on, px.
    #[arg(long, default_value_t = MaskStage::default().segmenter.long_side)]
    segment_size: u32,
    /// Pixel resolution: the segmentation's scale (larger: larger segments).
    #[arg(long, default_value_t = MaskStage::default().segmenter.scale)]
    segment_scale: f32,
    /// Pixel resolution: adjacent segments closer in mean colour than this CIELAB distance
    /// merge (a part split by shading becomes one).
    #[arg(long, default_value_t = MaskStage::default().segmenter.merge_distance)]
    segment_merge: f32,
    /// Pixel resolution: segments whose features lie on average closer than this are one part
    /// class (the clustering's cut).
    #[arg(long, default_value_t = MaskStage::default().cluster_distance)]
    part_distance: f32,
    /// Pixel resolution: smallest part instance, px of the segmented image.
    #[arg(long, default_value_t = MaskStage::default().min_area)]
    min_part_area: usize,
    /// Image score of the first branch: max (the reference), mean, or topK (mean of the K
    /// highest map cells).
    #[arg(long)]
    score: Option<Reduction>,
    /// Gaussian smoothing of every branch's map before scoring, sigma in map cells.
    #[arg(long, default_value_t = 0.0)]
    smoothing: f32,
    /// Tile grid ROWSxCOLS (default 1x1: the faithful whole-frame resize; 2x2 for the local
    /// branch of the multiscale preset).
    #[arg(long, conflicts_with = "upscale")]
    tiles: Option<String>,
    /// Fraction of a tile shared with its neighbour.
    #[arg(long, default_value_t = 0.0)]
    overlap: f32,
    /// Upscale frames by this factor and cut them into tiles of the model's input size; the grid
    /// is worked out from the first reference image and recorded in the profile.
    #[arg(long)]
    upscale: Option<f32>,
    /// How frames (or tiles) are fitted into the model input: squash (the reference: stretched,
    /// aspect ratio lost) or letterbox (aspect ratio kept, margins at the normalisation mean);
    /// applies to every branch.
    #[arg(long, default_value = "squash")]
    resize: Resize,
    /// How frames (or tiles) are resampled to the model input: f32 (the reference:
    /// antialiased bilinear on float pixels) or u8 (the same filter on 8-bit pixels, rounded to
    /// whole grey levels: faster, raw scores up to a few 1e-3 off); applies to every branch.
    #[arg(long, default_value = "f32")]
    resample: Resample,
    /// Which reference tiles each tile is matched against (tiled branches): all (the
    /// reference), R (the tiles at most R tile steps away, 0: the same position only, for fixed
    /// cameras) or auto (the smallest R the validation images allow, chosen at enrollment and
    /// recorded in the profile).
    /// Default: all, auto for the fast preset.
    #[arg(long)]
    tile_neighbourhood: Option<Neighbourhood>,
    /// How each branch's validation scores are summarised for calibration: mean-std (the
    /// reference) or median-mad (median and 1.4826 x median absolute deviation, robust to an
    /// odd validation image). Default: median-mad for the fast preset, else mean-std.
    #[arg(long)]
    calibration: Option<CalibrationMethod>,
}

impl DetectorArgs {
    fn calibration(&self) -> CalibrationMethod {
        self.calibration
            .unwrap_or(preset_defaults(&self.preset).calibration)
    }

    /// `--coreset-ratio` as given, else the preset's.
    fn coreset_ratio(&self, given: Option<f32>) -> Option<f32> {
        given.or(preset_defaults(&self.preset).coreset_ratio)
    }

    fn part_options(&self) -> Result<PartOptions> {
        if self.parts.is_some_and(|k| k < 2) {
            bail!("--parts counts the background too: at least 2");
        }
        let masks = match self.part_stage {
            PartStage::Tokens => None,
            PartStage::Pixels => {
                let mut stage = MaskStage {
                    cluster_distance: self.part_distance,
                    min_area: self.min_part_area,
                    ..MaskStage::default()
                };
                stage.segmenter.long_side = self.segment_size;
                stage.segmenter.scale = self.segment_scale;
                stage.segmenter.merge_distance = self.segment_merge;
                stage.segmenter.validate()?;
                if !(self.part_distance.is_finite() && self.part_distance > 0.0) {
                    bail!("--part-distance {} must be above 0", self.part_distance);
                }
                Some(stage)
            }
        };
        let colour = self.part_colour.unwrap_or(match masks {
            Some(_) => MASK_COLOUR_WEIGHT,
            None => PartOptions::default().colour_weight,
        });
        if !(colour.is_finite() && colour >= 0.0) {
            bail!("--part-colour {colour} must be 0 or more");
        }
        Ok(PartOptions {
            parts: self.parts,
            colour_weight: colour,
            masks,
            ..PartOptions::default()
        })
    }
}

#[derive(Args)]
struct EnrollArgs {
    #[command(flatten)]
    engine: EngineArgs,
    /// Use the first K reference images by sorted name (the authors' k-shot protocol).
    #[arg(long)]
    shots: Option<usize>,
    /// Reduce the memory bank with greedy k-center coreset, groups of 4 images (e.g. 0.25).
    #[arg(long)]
    coreset_ratio: Option<f32>,
    /// Anomaly-free validation images or folders, for calibration (at least 2).
    #[arg(long, required = true, num_args = 1.., action = clap::ArgAction::Append)]
    validation: Vec<PathBuf>,
    /// Where to write the profile.
    #[arg(long)]
    out: PathBuf,
    /// Verdict threshold on the calibrated score, 0..1 (default: sigmoid(3)).
    #[arg(long, default_value_t = DEFAULT_THRESHOLD)]
    threshold: f64,
    #[command(flatten)]
    detector: DetectorArgs,
    /// Seed of the coreset's random projection.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Composition rules to use instead of learned ones (a `meta/<category>.json` file; see
    /// meta/README.md): hand-edited rules win.
    #[arg(long)]
    rules: Option<PathBuf>,
    /// Write the composition rules (learned, or read with --rules) to this file, to edit and
    /// read back with --rules.
    #[arg(long)]
    rules_out: Option<PathBuf>,
    /// Reference images or folders.
    #[arg(required = true)]
    references: Vec<PathBuf>,
}

#[derive(Args)]
struct ScoreArgs {
    #[command(flatten)]
    engine: EngineArgs,
    #[arg(long)]
    profile: PathBuf,
    /// Write each image's anomaly map as a 16-bit grey PNG into this folder.
    #[arg(long)]
    maps: Option<PathBuf>,
    /// Override the profile's verdict threshold.
    #[arg(long)]
    threshold: Option<f64>,
    /// Exit with status 3 when any image is judged anomalous (status 1, for images that could
    /// not be read or any other error, comes first), so that a script can act on a defect.
    #[arg(long)]
    fail_on_anomaly: bool,
    /// Images or folders.
    #[arg(required = true)]
    images: Vec<PathBuf>,
}

/// The exit status of `logsad score --fail-on-anomaly` when an image is anomalous.
const EXIT_ANOMALOUS: i32 = 3;

#[derive(Args)]
struct EvalArgs {
    #[command(flatten)]
    engine: EngineArgs,
    #[command(flatten)]
    detector: DetectorArgs,
    /// Dataset layout: mvtec-ad, mvtec-loco, visa or plain (default: detected).
    #[arg(long)]
    layout: Option<Layout>,
    /// A folder of rule files named after the categories (such as meta/): a category's
    /// `<category>.json`, where present, replaces its learned composition rules.
    #[arg(long, value_name = "DIR")]
    rules_dir: Option<PathBuf>,
    /// Evaluate only this category (repeatable; default: all).
    #[arg(long = "category", value_name = "NAME", action = clap::ArgAction::Append)]
    categories: Vec<String>,
    /// Good folder of the plain layout (default: good, nominal, normal or ok).
    #[arg(long, value_name = "FOLDER")]
    good: Option<String>,
    /// K reference images per category (default: all of the reference pool).
    #[arg(long, value_name = "K")]
    shots: Option<usize>,
    /// Draw the K references at random with this seed (default: the first K by name, the
    /// authors' protocol).
    #[arg(long, value_name = "S")]
    seed: Option<u64>,
    /// Number of draws, seeds S, S+1, ...; prints mean ± std over the draws (needs --seed).
    #[arg(long, value_name = "N", default_value_t = 1)]
    draws: usize,
    /// Validation images taken from the end of the training images, for calibration, when the
    /// dataset has no validation split (MVTec LOCO has one).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_VALIDATION_COUNT)]
    validation_count: usize,
    /// Quick run on a subset: only the first N test images (by name) of each defect type,
    /// good included. Not comparable with published numbers.
    #[arg(long, value_name = "N")]
    test_limit: Option<usize>,
    /// Pass over the first N test images (by name) of each defect type, good included, before
    /// --test-limit applies: `--test-skip 60 --test-limit 60` is a tuning split disjoint from
    /// `--test-limit 60`.
    #[arg(long, value_name = "N", default_value_t = 0)]
    test_skip: usize,
    /// Reduce the memory banks with greedy k-center coreset, groups of 4 images (e.g. 0.25).
    #[arg(long, value_name = "R")]
    coreset_ratio: Option<f32>,
    /// Where to write report.json and roc_<category>.png.
    #[arg(long, value_name = "DIR", default_value = "out/eval")]
    out: PathBuf,
    /// Skip the pixel-level metrics (faster, less memory).
    #[arg(long)]
    no_pixel: bool,
    /// Test images per inference (decoding runs ahead on a second thread).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_BATCH)]
    batch: usize,
    /// Region boxes measured against the masks: cut each region to the cells above this
    /// fraction of the way from its tile's median to the peak (0 keeps every cell above
    /// the threshold); several comma-separated values are measured side by side.
    #[arg(
        long,
        value_name = "F,...",
        value_delimiter = ',',
        default_value = "0.5"
    )]
    region_peak_fraction: Vec<f32>,
    /// Region boxes measured against the masks: merge overlapping boxes (on), keep them apart
    /// (off), or measure both.
    #[arg(long, value_name = "on|off|both", default_value = "on")]
    region_merge: RegionMerge,
    /// Region boxes measured against the masks: whose peak the fraction refers to, each
    /// region's own (region) or the frame's highest cell (frame); comma-separated for both.
    #[arg(
        long,
        value_name = "region|frame",
        value_delimiter = ',',
        default_value = "frame"
    )]
    region_peak_scope: Vec<PeakScope>,
    /// Dataset root (or one category folder of MVTec AD / LOCO).
    root: PathBuf,
}

const IMAGE_EXTENSIONS: [&str; 6] = ["png", "jpg", "jpeg", "bmp", "tif", "tiff"];

/// Expands folders into their image files (by extension), sorted by name; files named
/// explicitly are kept in the order given whatever their extension (the loader reads the
/// content).
fn expand(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(input)
                .with_context(|| format!("cannot list {}", input.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                        IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str())
                    })
                })
                .collect();
            files.sort();
            out.extend(files);
        } else if input.symlink_metadata().is_ok() {
            // A file, or something else the loader refuses by name and cause.
            out.push(input.clone());
        } else {
            bail!("{}: no such file or folder", input.display());
        }
    }
    Ok(out)
}

/// The tiling the user asked for, if any.
fn parse_tiling(
    args: &DetectorArgs,
    manifest: &Path,
    first_reference: &Path,
) -> Result<Option<Tiling>> {
    let tiling = if let Some(upscale) = args.upscale {
        if !(upscale.is_finite() && upscale > 0.0) {
            bail!("--upscale {upscale} must be a positive factor");
        }
        let manifest = engine::Manifest::load(manifest)?;
        let (w, h) = imageio::dimensions(first_reference)?;
        let input = (manifest.input.width, manifest.input.height);
        Tiling::for_upscale(upscale, args.overlap, (w, h), input)
    } else if let Some(tiles) = &args.tiles {
        let (rows, cols) = tiles
            .split_once(['x', 'X'])
            .and_then(|(r, c)| Some((r.parse().ok()?, c.parse().ok()?)))
            .with_context(|| format!("--tiles {tiles:?} is not ROWSxCOLS"))?;
        Tiling {
            rows,
            cols,
            overlap: args.overlap,
            ..Tiling::whole()
        }
    } else {
        return Ok(None);
    };
    tiling.validate().map_err(anyhow::Error::msg)?;
    Ok(Some(tiling))
}

/// The detectors the enroll options describe.
fn detectors(
    args: &DetectorArgs,
    manifest: &Path,
    first_reference: &Path,
) -> Result<Vec<DetectorSpec>> {
    let mut detectors = preset(&args.preset, parse_tiling(args, manifest, first_reference)?)
        .map_err(anyhow::Error::msg)?;
    if !(args.smoothing.is_finite() && args.smoothing >= 0.0) {
        bail!(
            "--smoothing {} must be a sigma of 0 or more",
            args.smoothing
        );
    }
    let mut first = true;
    for detector in &mut detectors {
        if let DetectorSpec::Patch(spec) = detector {
            if let (Some(score), true) = (args.score, first) {
                spec.score = score;
            }
            first = false;
            spec.smoothing = args.smoothing;
            spec.tiling.resize = args.resize;
            spec.tiling.resample = args.resample;
            if let Some(neighbourhood) = args.tile_neighbourhood {
                spec.neighbourhood = neighbourhood;
            }
        }
    }
    Ok(detectors)
}

fn bar(len: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg:12} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

fn run_enroll(args: EnrollArgs) -> Result<()> {
    if let Some(r) = args.coreset_ratio {
        if !(r.is_finite() && r > 0.0 && r <= 1.0) {
            bail!("--coreset-ratio {r} must lie in (0, 1]");
        }
    }
    check_threshold(args.threshold)?;
    let mut references = expand(&args.references)?;
    if references.is_empty() {
        bail!("no reference images found in {:?}", args.references);
    }
    if let Some(k) = args.shots {
        if k == 0 || k > references.len() {
            bail!(
                "--shots {k}: {} reference images available",
                references.len()
            );
        }
        references.truncate(k);
    }
    let validation = expand(&args.validation)?;
    let manifest = args.engine.manifest_for_preset(&args.detector.preset);
    let options = EnrollOptions {
        detectors: detectors(&args.detector, &manifest, &references[0])?,
        coreset_ratio: args.detector.coreset_ratio(args.coreset_ratio),
        threshold: args.threshold,
        seed: args.seed,
        engine: args.engine.options(),
        calibration: args.detector.calibration(),
        parts: args.detector.part_options()?,
        rules: args.rules.clone(),
        ..EnrollOptions::default()
    };
    let refs_bar = bar(references.len(), "references");
    let val_bar = bar(validation.len(), "validation");
    let (profile, warnings) = enroll(
        &manifest,
        &references,
        &validation,
        &options,
        &mut |phase, done, _| match phase {
            Phase::References => refs_bar.set_position(done as u64),
            Phase::Validation => {
                refs_bar.finish();
                val_bar.set_position(done as u64)
            }
        },
    )?;
    val_bar.finish();
    for w in warnings {
        eprintln!("warning: {w}");
    }
    profile.save(&args.out)?;
    if let Some(path) = &args.rules_out {
        let rules = profile
            .header
            .detectors
            .iter()
            .find_map(|d| match &d.learned {
                Learned::Composition { rules, .. } => Some(rules),
                _ => None,
            });
        let Some(rules) = rules else {
            bail!("--rules-out: the profile has no composition detector (use --preset logsad)");
        };
        std::fs::write(path, write_rules(rules))
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("rules written to {}", path.display());
    }
    eprintln!(
        "profile {}: {} reference images, model {}",
        args.out.display(),
        references.len(),
        profile.header.model.name
    );
    for (detector, spec, bank) in profile.header.patch_detectors() {
        let c = detector
            .calibration
            .as_ref()
            .expect("patch detectors are calibrated");
        let neighbourhood = match spec.neighbourhood {
            Neighbourhood::Within(r) => format!(", reference tiles within {r}"),
            _ => String::new(),
        };
        eprintln!(
            "  {}: {}x{} tiles{neighbourhood}, score {}, bank of {} patches, validation mean \
             {:.4} std {:.4}",
            spec.name,
            spec.tiling.rows,
            spec.tiling.cols,
            spec.score,
            profile.banks[bank].len(),
            c.mean,
            c.std
        );
    }
    Ok(())
}

fn check_threshold(threshold: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&threshold) {
        bail!("--threshold {threshold} must lie in 0..1 (it applies to the calibrated score)");
    }
    Ok(())
}

/// Scores the images; returns the exit status: 0, or [`EXIT_ANOMALOUS`] with
/// `--fail-on-anomaly` when an image is anomalous.
fn run_score(args: ScoreArgs) -> Result<i32> {
    if let Some(t) = args.threshold {
        check_threshold(t)?;
    }
    let images = expand(&args.images)?;
    if images.is_empty() {
        bail!(
            "no image files ({}) in {}",
            IMAGE_EXTENSIONS.map(|e| format!(".{e}")).join(", "),
            args.images
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let (mut extractor, inspector, warnings) = inspector::load(
        &args.profile,
        &args.engine.manifest_for(&args.profile)?,
        &args.engine.options(),
    )?;
    // Regions as the element finds them with its default properties.
    let judging = JudgeOptions {
        threshold: args.threshold,
        regions: Some(RegionOptions::default()),
    };
    for w in warnings {
        eprintln!("warning: {w}");
    }
    if let Some(dir) = &args.maps {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let progress = bar(images.len(), "scoring");
    let mut unreadable = 0;
    let mut anomalous = 0;
    for path in &images {
        let image = match imageio::load_rgb(path) {
            Ok(image) => image,
            Err(e) => {
                // One JSON line for the file, and the command goes on with the others.
                unreadable += 1;
                let line = serde_json::json!({
                    "path": path.display().to_string(),
                    "error": {"kind": e.kind(), "message": e.to_string()},
                });
                progress.suspend(|| {
                    eprintln!("error: {e}");
                    print_line(format_args!("{line}"))
                })?;
                progress.inc(1);
                continue;
            }
        };
        let result = inspector.inspect(&mut extractor, &image, &judging)?;
        anomalous += usize::from(result.anomalous);
        let map = &result.map;
        let detectors: serde_json::Map<String, serde_json::Value> = result
            .detectors
            .iter()
            .map(|d| {
                let scores = serde_json::json!({"score": d.raw, "calibrated": d.calibrated});
                (d.name.clone(), scores)
            })
            .collect();
        let mut line = serde_json::json!({
            "path": path.display().to_string(),
            "score": result.score,
            "calibrated": result.calibrated,
            "anomalous": result.anomalous,
            "threshold": result.threshold,
            "detectors": detectors,
            "regions": result.regions.iter().map(|r| {
                let (x, y, width, height) = r.rect;
                serde_json::json!({"x": x, "y": y, "width": width, "height": height, "score": r.score})
            }).collect::<Vec<_>>(),
            "rules": result.rules.iter().map(|r| &r.rule).collect::<Vec<_>>(),
            "map_mean": map.map.iter().map(|&v| v as f64).sum::<f64>() / map.map.len() as f64,
        });
        if let Some(dir) = &args.maps {
            let map_path = dir.join(map_name(path));
            save_map(&map_path, &map.map, map.map_width, map.map_height)?;
            line["map"] = map_path.display().to_string().into();
        }
        progress.suspend(|| print_line(format_args!("{line}")))?;
        progress.inc(1);
    }
    progress.finish_and_clear();
    if unreadable > 0 {
        bail!("{unreadable} of {} images could not be read", images.len());
    }
    if args.fail_on_anomaly && anomalous > 0 {
        eprintln!("{anomalous} of {} images anomalous", images.len());
        return Ok(EXIT_ANOMALOUS);
    }
    Ok(0)
}

fn run_eval(args: EvalArgs) -> Result<()> {
    let load_options = LoadOptions {
        categories: args.categories.clone(),
        good_folder: args.good.clone(),
    };
    // Dataset errors name the path at fault.
    let dataset = dataset::load(&args.root, args.layout, &load_options)?;
    let manifest = args.engine.manifest_for_preset(&args.detector.preset);
    let branch_manifest = manifest.clone();
    let detector = args.detector.clone();
    let options = EvalOptions {
        shots: args.shots,
        seed: args.seed,
        draws: args.draws,
        validation_count: args.validation_count,
        test_limit: args.test_limit,
        test_skip: args.test_skip,
        preset: args.detector.preset.clone(),
        detectors: Detectors::PerCategory(Box::new(move |first_reference| {
            detectors(&detector, &branch_manifest, first_reference).map_err(|e| format!("{e:#}"))
        })),
        coreset_ratio: args.detector.coreset_ratio(args.coreset_ratio),
        parts: args.detector.part_options()?,
        rules_dir: args.rules_dir.clone(),
        engine: args.engine.options(),
        pixel: !args.no_pixel,
        batch: args.batch,
        calibration: args.detector.calibration(),
        regions: region_settings(
            &args.region_peak_fraction,
            &args.region_peak_scope,
            args.region_merge,
        )?,
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;

    let progress = bar(0, "loading");
    let mut first_draw: Vec<(String, Vec<ScoredImage>)> = Vec::new();
    // Test images per draw, and those that could not be read (each draw meets them again).
    let mut test_images = 0;
    let mut unreadable: HashSet<PathBuf> = HashSet::new();
    let reports = evaluate(&manifest, &dataset, &options, &mut |event| match event {
        EvalProgress::Start { images, draws, .. } => {
            test_images = images / draws.max(1);
            progress.set_length(images as u64)
        }
        EvalProgress::Unreadable { error, .. } => {
            if unreadable.insert(error.path().to_path_buf()) {
                progress.suspend(|| eprintln!("error: {error} (left out)"));
            }
            progress.inc(1);
        }
        EvalProgress::Warning(w) => progress.suspend(|| eprintln!("warning: {w}")),
        EvalProgress::Enrolling {
            category,
            phase,
            done,
            total,
            ..
        } => {
            let what = match phase {
                Phase::References => "references",
                Phase::Validation => "validation",
            };
            progress.set_message(format!("{category}: {what} {done}/{total}"));
        }
        EvalProgress::Image { category, .. } => {
            progress.set_message(category.to_string());
            progress.inc(1);
        }
        EvalProgress::CategoryDone {
            draw,
            report,
            scores,
            ..
        } => {
            if draw == 0 {
                first_draw.push((report.category.clone(), scores.to_vec()));
            }
        }
    })?;
    progress.finish_and_clear();

    // Files first: a reader that closes standard output early (`| head`) must not cost the
    // report.
    let record = EvalRecord::new(&dataset, &options, reports.clone());
    let json_path = args.out.join("report.json");
    std::fs::write(&json_path, record.to_json())
        .with_context(|| format!("cannot write {}", json_path.display()))?;
    eprintln!("wrote {}", json_path.display());
    for (category, scores) in &first_draw {
        let path = write_roc(&args.out, category, scores).map_err(anyhow::Error::msg)?;
        eprintln!("wrote {}", path.display());
    }
    let seeds = options.draw_seeds();
    for (draw, (report, seed)) in reports.iter().zip(&seeds).enumerate() {
        if let (true, Some(seed)) = (reports.len() > 1, seed) {
            out!("draw {}/{}, seed {seed}", draw + 1, reports.len());
        }
        out!("{}", report.table());
        let split_by_type = report.categories.iter().any(|c| c.defects.len() > 1);
        if split_by_type && report.defect_rows() <= MAX_DEFECT_ROWS_SHOWN {
            out!("{}", report.defect_table());
        }
        if let Some(table) = report.detector_table() {
            out!("{table}");
        }
        if let Some(table) = report.subtype_table() {
            out!("{table}");
        }
        if let Some(table) = report.boxes_table() {
            out!("region boxes against the masks\n{table}");
        }
        out!("{}\n", time_split(report));
    }
    if record.draws.len() > 1 {
        out!(
            "image AUROC and F1-max, mean ± std over {} draws",
            record.draws.len()
        );
        out!("{}", summary_table(&record.summary));
    }
    if !unreadable.is_empty() {
        bail!(
            "{} of {test_images} test images could not be read (listed as `unreadable` in {})",
            unreadable.len(),
            json_path.display()
        );
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum RegionMerge {
    On,
    Off,
    Both,
}

/// Every combination of peak fraction and merging asked for.
fn region_settings(
    fractions: &[f32],
    scopes: &[PeakScope],
    merge: RegionMerge,
) -> Result<Vec<RegionOptions>> {
    let merges: &[bool] = match merge {
        RegionMerge::On => &[true],
        RegionMerge::Off => &[false],
        RegionMerge::Both => &[false, true],
    };
    let mut settings = Vec::new();
    for &peak_fraction in fractions {
        if !(0.0..=1.0).contains(&peak_fraction) {
            bail!("--region-peak-fraction {peak_fraction} must lie in 0..1");
        }
        for &peak_scope in scopes {
            for &merge_overlapping in merges {
                settings.push(RegionOptions {
                    peak_fraction,
                    peak_scope,
                    merge_overlapping,
                    min_area: 1,
                });
            }
        }
    }
    Ok(settings)
}

/// Longer per-defect tables are left to report.json.
const MAX_DEFECT_ROWS_SHOWN: usize = 40;

/// Time per test image, split into model (preprocessing and inference) and matching.
fn time_split(report: &Report) -> String {
    let images: usize = report.categories.iter().map(|c| c.images).sum();
    let per_image = |seconds: f64| seconds * 1000.0 / images.max(1) as f64;
    let model: f64 = report.categories.iter().map(|c| c.timing.model_s).sum();
    let matching: f64 = report.categories.iter().map(|c| c.timing.matching_s).sum();
    let stage = |f: fn(&gstlogsad::eval::report::Timing) -> f64| {
        per_image(report.categories.iter().map(|c| f(&c.timing)).sum())
    };
    let logical = stage(|t| t.parts_s + t.interest_s + t.composition_s);
    let breakdown = if logical > 0.0 {
        format!(
            " = patch {:.1} + parts {:.1} + interest {:.1} + composition {:.1}",
            stage(|t| t.patch_s),
            stage(|t| t.parts_s),
            stage(|t| t.interest_s),
            stage(|t| t.composition_s)
        )
    } else {
        String::new()
    };
    format!(
        "time per test image: model {:.1} ms, matching {:.1} ms{breakdown} ({} images)",
        per_image(model),
        per_image(matching),
        images
    )
}

fn map_name(image: &Path) -> String {
    let stem = image
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("image");
    format!("{stem}_map.png")
}

/// Saves a map as 16-bit grey: 0 = distance 0, 65535 = distance 1 (cosine distances of unit
/// vectors lie in 0..2; anomalies rarely exceed 1).
fn save_map(path: &Path, map: &[f32], width: usize, height: usize) -> Result<()> {
    let pixels: Vec<u16> = map
        .iter()
        .map(|v| (v.clamp(0.0, 1.0) * 65535.0).round() as u16)
        .collect();
    let img =
        image::ImageBuffer::<image::Luma<u16>, _>::from_raw(width as u32, height as u32, pixels)
            .context("map size")?;
    img.save(path)
        .with_context(|| format!("cannot write {}", path.display()))
}

fn run_synth(args: SynthArgs) -> Result<()> {
    if args.loco {
        return run_synth_loco(&args);
    }
    let sources = expand(&args.sources)?;
    let sources = sources.get(args.skip..).unwrap_or_default();
    let options = StructuralSetOptions {
        seed: args.seed,
        train: args.train.unwrap_or(24),
        per_kind: args.per_kind.unwrap_or(30),
    };
    let summary = write_structural_set(sources, &args.out, &args.category, &options)
        .map_err(anyhow::Error::msg)?;
    eprintln!(
        "wrote {}: {} training, {} good and {} defective test images with masks",
        args.out.join(&args.category).display(),
        summary.train,
        summary.good,
        summary.defective
    );
    Ok(())
}

fn run_synth_loco(args: &SynthArgs) -> Result<()> {
    let (categories, images, masks) = if args.family == Some(SceneFamily::B) {
        let defaults = FamilyBOptions::default();
        let options = FamilyBOptions {
            seed: args.seed,
            train: args.train.unwrap_or(defaults.train),
            validation: args.validation.unwrap_or(defaults.validation),
            good: args.per_test.unwrap_or(defaults.good),
            logical: args.per_test.unwrap_or(defaults.logical),
            structural: args.per_test.unwrap_or(defaults.structural),
            ..defaults
        };
        let s = write_family_b(&args.out, &options).with_context(|| {
            format!("cannot write the family b scenes to {}", args.out.display())
        })?;
        (s.categories, s.images, s.masks)
    } else {
        let defaults = LocoOptions::default();
        let per_test = args.per_test.unwrap_or(defaults.good);
        let options = LocoOptions {
            seed: args.seed,
            train: args.train.unwrap_or(defaults.train),
            validation: args.validation.unwrap_or(defaults.validation),
            good: per_test,
            logical: per_test,
            structural: per_test,
            ..defaults
        };
        let s = write_loco_scenes(&args.out, &options)
            .with_context(|| format!("cannot write the LOCO scenes to {}", args.out.display()))?;
        (s.categories, s.images, s.masks)
    };
    eprintln!(
        "wrote {}: {categories} categories, {images} images, {masks} ground-truth masks (MVTec LOCO layout)",
        args.out.display(),
    );
    Ok(())
}

fn run_info(args: &InfoArgs) -> Result<()> {
    match (&args.parts, &args.out) {
        (Some(image), Some(out)) => draw_parts(args, image, out),
        _ => {
            let profile = gstlogsad::profile::Profile::load(&args.profile)?;
            out!("{}", serde_json::to_string_pretty(&profile.header)?);
            eprint!("{}", parts_summary(&profile.header));
            Ok(())
        }
    }
}

/// The fix for a profile without parts.
const NO_PARTS_FIX: &str = "enroll it again with --preset logsad to learn parts and rules";

/// A few lines for people: the parts (number and names) and each rule's name.
fn parts_summary(header: &gstlogsad::profile::ProfileHeader) -> String {
    let Some(parts) = &header.parts else {
        return format!("parts: none ({NO_PARTS_FIX})\n");
    };
    let mut text = format!(
        "parts: {}, background included: {}\n",
        parts.names.len(),
        parts.names.join(", ")
    );
    for detector in &header.detectors {
        if let Learned::Composition { rules, .. } = &detector.learned {
            text += &format!(
                "rules of detector {}: {}\n",
                detector.name(),
                rules.rules.len()
            );
            for rule in &rules.rules {
                text += &format!("  {} ({})\n", rule.name(), rule.kind());
            }
        }
    }
    text
}

/// `logsad info PROFILE --parts IMAGE --out FILE`: the part labels of IMAGE drawn over it.
fn draw_parts(args: &InfoArgs, image_path: &Path, out: &Path) -> Result<()> {
    let (mut extractor, inspector, warnings) = inspector::load(
        &args.profile,
        &args.engine.manifest_for(&args.profile)?,
        &args.engine.options(),
    )?;
    for w in warnings {
        eprintln!("warning: {w}");
    }
    let header = &inspector.profile.header;
    let Some(parts) = &header.parts else {
        bail!(
            "profile {} has no parts to draw: {NO_PARTS_FIX}",
            args.profile.display()
        );
    };
    let image = imageio::load_rgb(image_path)?;
    let features = extractor.features(&image, &inspector::part_tiling(header))?;
    let whole = features
        .first()
        .context("the part stage's tiling gave no tile")?;
    let layout = inspector::PartLayout::of(parts, whole, &image)?;
    let picture = render_parts(&layout.labels, &image, &parts.names)?;
    picture
        .save(out)
        .with_context(|| format!("cannot write {}", out.display()))?;
    eprintln!(
        "wrote {}: {} parts on a {}x{} grid, {} instances",
        out.display(),
        parts.names.len(),
        layout.labels.width,
        layout.labels.height,
        layout.instances.len()
    );
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Enroll(args) => run_enroll(args).map(|()| 0),
        Command::Score(args) => run_score(args),
        Command::Eval(args) => run_eval(args).map(|()| 0),
        Command::Info(args) => run_info(&args).map(|()| 0),
        Command::Synth(args) => run_synth(args).map(|()| 0),
    };
    match result {
        Ok(0) => {}
        Ok(status) => std::process::exit(status),
        Err(e) if e.is::<StdoutClosed>() => {}
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}
