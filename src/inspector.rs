//! The inspection pipeline: frame -> tiles -> backbone -> patch features -> detectors ->
//! calibrated, fused verdict -> one [`FrameResult`]. Shared by the `logsad` element and the
//! `logsad` command; knows nothing of GStreamer.
//!
//! What is shared is apart from what is per profile: an [`Extractor`] owns the loaded backbone
//! and can serve several profiles; an [`Inspector`] owns one profile (banks, parts, rules,
//! calibration) and borrows the extractor for each frame.

use crate::detect::calibrate::{fuse, sigmoid, MIN_SPREAD};
use crate::detect::features::{patch_features, Grid, PatchFeatures};
use crate::detect::parts::{cell_colours, Instance, LabelMap, PartModel};
use crate::detect::preprocess::{Preprocessor, RgbImage};
use crate::detect::regions::{anomaly_regions, RegionOptions};
use crate::detect::rules::{FiredRule, FrameLayout};
use crate::detect::tiling::Tiling;
use crate::detectors::composition::{fired_rules, instances_of};
use crate::detectors::patch::{self, PatchResult};
use crate::detectors::{interest, DetectorScore, Learned};
use crate::engine::{Backbone, EngineError, EngineOptions, Manifest};
use crate::profile::{Profile, ProfileError};
use std::path::Path;
use std::time::{Duration, Instant};

/// Token grid upsampling before matching, as in the reference (32x32 -> 64x64).
pub const REFERENCE_UPSAMPLE: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Profile(#[from] ProfileError),
    #[error("profile {path} does not fit model {model}: {reason}")]
    Incompatible {
        path: String,
        model: String,
        reason: String,
    },
    #[error("bad image: {0}")]
    Image(String),
    /// Inputs or options an enrollment cannot stand on (no references, too few validation
    /// images, a bad tiling, a calibration without spread); the message names the fix.
    #[error("{0}")]
    Enrollment(String),
    /// The inference worker could not answer (it stopped, or the features it gave do not
    /// match the profile).
    #[error("inference: {0}")]
    Inference(String),
    /// An image file that could not be read (names the file and the cause).
    #[error(transparent)]
    Load(#[from] crate::imageio::LoadError),
    #[error("part stage: {0}")]
    Parts(String),
}

/// Where the time of analysing one frame went (for a batch, each frame's share of the
/// preprocessing and the inference).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StageTimings {
    /// Cutting tiles, resizing and normalising them into the model's input.
    pub preprocess: Duration,
    /// The backbone's inference, with its outputs unpacked into patch features.
    pub inference: Duration,
    /// The patch detectors' pooling and nearest-neighbour search.
    pub nearest_neighbour: Duration,
    /// The patch detectors' tile maps put into one map each, and their smoothing.
    pub stitching: Duration,
    /// Map reductions, calibration, fusion (eq. 5) and region boxes.
    pub scoring: Duration,
    /// The part stage: a part label per cell, and each part's instances.
    pub parts: Duration,
    /// The interest detector: instance embeddings and their assignment.
    pub interest: Duration,
    /// The composition rules.
    pub composition: Duration,
}

impl StageTimings {
    /// Preprocessing and the backbone.
    pub fn model(&self) -> Duration {
        self.preprocess + self.inference
    }

    /// The patch detectors: nearest-neighbour search, stitching, and scoring (with the
    /// calibration, fusion and regions, which take microseconds).
    pub fn patch(&self) -> Duration {
        self.nearest_neighbour + self.stitching + self.scoring
    }

    /// Everything after the backbone.
    pub fn matching(&self) -> Duration {
        self.patch() + self.parts + self.interest + self.composition
    }

    /// The whole analysis: [`StageTimings::model`] + [`StageTimings::matching`].
    pub fn total(&self) -> Duration {
        self.model() + self.matching()
    }

    pub fn add(&mut self, other: &StageTimings) {
        self.preprocess += other.preprocess;
        self.inference += other.inference;
        self.nearest_neighbour += other.nearest_neighbour;
        self.stitching += other.stitching;
        self.scoring += other.scoring;
        self.parts += other.parts;
        self.interest += other.interest;
        self.composition += other.composition;
    }
}

/// The time the backbone side of an analysis took: preprocessing and inference.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ModelTime {
    /// Cutting tiles, resizing and normalising them into the model's input.
    pub preprocess: Duration,
    /// The inference, with its outputs unpacked into patch features.
    pub inference: Duration,
}

impl ModelTime {
    pub fn add(&mut self, other: &ModelTime) {
        self.preprocess += other.preprocess;
        self.inference += other.inference;
    }

    /// Each of `n` frames' share (the whole for `n` = 0).
    pub fn per_frame(&self, n: usize) -> ModelTime {
        let n = n.max(1) as u32;
        ModelTime {
            preprocess: self.preprocess / n,
            inference: self.inference / n,
        }
    }
}

/// The part layout of one frame: a part label per cell of the part grid and each part's
/// instances (see [`crate::detect::parts`]).
#[derive(Debug, Clone)]
pub struct PartLayout {
    pub labels: LabelMap,
    pub instances: Vec<Instance>,
}

impl PartLayout {
    /// The part layout of a frame from its whole-frame features and the frame itself (segmented
    /// by a model at pixel resolution; its colours for a grid model learned with colour).
    pub fn of(
        parts: &PartModel,
        features: &PatchFeatures,
        image: &RgbImage,
    ) -> Result<Self, InspectError> {
        let labels = match &parts.masks {
            Some(stage) => parts.label_pixels(stage, features, image),
            None => {
                let colours = if parts.colour_weight > 0.0 {
                    cell_colours(image, features.width(), features.height())
                } else {
                    Vec::new()
                };
                parts.label_with_colours(features, &colours)
            }
        }
        .map_err(|e| InspectError::Parts(e.to_string()))?;
        let instances = parts
            .instances(&labels)
            .map_err(|e| InspectError::Parts(e.to_string()))?;
        Ok(PartLayout { labels, instances })
    }

    /// The layout as the rules read it.
    pub fn view<'a>(&'a self, names: &'a [String]) -> FrameLayout<'a> {
        FrameLayout {
            labels: &self.labels,
            instances: &self.instances,
            names,
        }
    }

    /// The bounding box of `instance` in the pixels of a `frame` of (width, height): every
    /// pixel its cells touch.
    pub fn instance_box(&self, instance: &Instance, frame: (u32, u32)) -> (u32, u32, u32, u32) {
        let width = self.labels.width.max(1);
        let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
        for &cell in &instance.cells {
            let (x, y) = (cell as usize % width, cell as usize / width);
            (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x + 1), y1.max(y + 1));
        }
        if x0 == usize::MAX {
            return (0, 0, 0, 0);
        }
        let sx = frame.0 as f64 / width as f64;
        let sy = frame.1 as f64 / self.labels.height.max(1) as f64;
        let left = ((x0 as f64 * sx).floor() as u32).min(frame.0);
        let top = ((y0 as f64 * sy).floor() as u32).min(frame.1);
        let right = ((x1 as f64 * sx).ceil() as u32).min(frame.0);
        let bottom = ((y1 as f64 * sy).ceil() as u32).min(frame.1);
        (left, top, right - left, bottom - top)
    }
}

/// A composition rule that fired, with the instances of the parts it concerns.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleFinding {
    pub rule: FiredRule,
    /// Boxes (left, top, width, height in frame pixels) of the instances of the rule's parts.
    pub instances: Vec<(u32, u32, u32, u32)>,
}

/// Turns images into per-tile patch features with one backbone: the part that several
/// profiles (and later several streams) can share.
pub struct Extractor {
    backbone: Backbone,
    preprocessor: Preprocessor,
    upsample: usize,
}

/// Features of a batch of images per distinct tiling: `(tiling, [image][tile])`.
pub type FeaturesByTiling = Vec<(Tiling, Vec<Vec<PatchFeatures>>)>;

impl Extractor {
    pub fn new(backbone: Backbone, upsample: usize) -> Self {
        let preprocessor = Preprocessor::new(&backbone.manifest().input);
        Extractor {
            backbone,
            preprocessor,
            upsample,
        }
    }

    /// Loads the model `manifest_path` describes, with the reference's upsampling. Returns
    /// warnings (such as a provider falling back to CPU) for the caller.
    pub fn load(
        manifest_path: &Path,
        options: &EngineOptions,
    ) -> Result<(Self, Vec<String>), InspectError> {
        let manifest = Manifest::load(manifest_path).map_err(EngineError::from)?;
        let (backbone, warnings) = Backbone::load(manifest, options)?;
        Ok((Extractor::new(backbone, REFERENCE_UPSAMPLE), warnings))
    }

    pub fn backbone(&self) -> &Backbone {
        &self.backbone
    }

    /// The model's input width and height in pixels.
    pub fn input_size(&self) -> (u32, u32) {
        input_size(self.backbone.manifest())
    }

    /// How many times the token grid is upsampled before matching.
    pub fn upsample(&self) -> usize {
        self.upsample
    }

    fn grid(&self) -> Grid {
        let m = self.backbone.manifest();
        Grid {
            prefix_tokens: m.tokens.prefix_tokens,
            height: m.tokens.grid_height,
            width: m.tokens.grid_width,
            dim: m.feature_dim,
        }
    }

    /// Features of every tile of `image`, tiles batched into one inference.
    pub fn features(
        &mut self,
        image: &RgbImage,
        tiling: &Tiling,
    ) -> Result<Vec<PatchFeatures>, InspectError> {
        Ok(self.features_of_batch(&[image], tiling)?.0.remove(0))
    }

    /// Features of every tile of every image (`[image][tile]`), all in one inference, and the
    /// time the whole batch took.
    pub fn features_of_batch(
        &mut self,
        images: &[&RgbImage],
        tiling: &Tiling,
    ) -> Result<(Vec<Vec<PatchFeatures>>, ModelTime), InspectError> {
        let start = Instant::now();
        let input = self.input_size();
        let plane = (input.0 * input.1) as usize;
        let mut tile_counts = Vec::with_capacity(images.len());
        let mut pixels = Vec::new();
        for image in images {
            let tiles = tiling.tiles(image.width, image.height);
            let placement = tiling.placement(image.width, image.height, input);
            pixels.reserve(tiles.len() * 3 * plane);
            for tile in &tiles {
                self.preprocessor
                    .push_tile(image, tile, &placement, tiling.resample, &mut pixels)
                    .map_err(InspectError::Image)?;
            }
            tile_counts.push(tiles.len());
        }
        let total = tile_counts.iter().sum();
        let preprocessed = Instant::now();
        let outputs = self.backbone.run(pixels, total)?;
        let grid = self.grid();
        let mut next = 0;
        let features = tile_counts
            .iter()
            .map(|&count| {
                let first = next;
                next += count;
                (first..next)
                    .map(|i| patch_features(&outputs.stages, i, grid, self.upsample))
                    .collect()
            })
            .collect();
        let time = ModelTime {
            preprocess: preprocessed - start,
            inference: preprocessed.elapsed(),
        };
        Ok((features, time))
    }

    /// Features of a batch of images under each distinct tiling of `tilings`, so that
    /// detectors sharing a tiling run the backbone once, and the time the whole batch took.
    pub fn features_by_tiling<'a>(
        &mut self,
        tilings: impl IntoIterator<Item = &'a Tiling>,
        images: &[&RgbImage],
    ) -> Result<(FeaturesByTiling, ModelTime), InspectError> {
        let mut cache: FeaturesByTiling = Vec::new();
        let mut time = ModelTime::default();
        for tiling in tilings {
            if !cache.iter().any(|(t, _)| t == tiling) {
                let (features, spent) = self.features_of_batch(images, tiling)?;
                time.add(&spent);
                cache.push((tiling.clone(), features));
            }
        }
        Ok((cache, time))
    }
}

/// A model's input width and height in pixels.
pub fn input_size(manifest: &Manifest) -> (u32, u32) {
    let input = &manifest.input;
    (input.width as u32, input.height as u32)
}

/// The backbone's output for one frame, ready for [`Inspector::judge_features`].
#[derive(Debug, Clone)]
pub struct FrameFeatures {
    /// The features of each tile of the frame, per tiling: `(tiling, [tile])`.
    pub by_tiling: Vec<(Tiling, Vec<PatchFeatures>)>,
    /// The model's input width and height in pixels.
    pub input_size: (u32, u32),
    /// This frame's share of preprocessing and inference.
    pub model_time: ModelTime,
}

impl FrameFeatures {
    /// A batch's features split into each image's, in the batch's order (moved, not copied:
    /// a tile's features are megabytes).
    pub fn split(
        features: FeaturesByTiling,
        images: usize,
        input_size: (u32, u32),
        model_time: ModelTime,
    ) -> Vec<Self> {
        let mut frames: Vec<FrameFeatures> = (0..images)
            .map(|_| FrameFeatures {
                by_tiling: Vec::with_capacity(features.len()),
                input_size,
                model_time,
            })
            .collect();
        for (tiling, per_image) in features {
            for (frame, tiles) in frames.iter_mut().zip(per_image) {
                frame.by_tiling.push((tiling.clone(), tiles));
            }
        }
        frames
    }
}

/// The tile features of image `index` of a batch under `tiling`.
pub fn tiles_of<'a>(
    features: &'a FeaturesByTiling,
    tiling: &Tiling,
    index: usize,
) -> &'a [PatchFeatures] {
    &features
        .iter()
        .find(|(t, _)| t == tiling)
        .expect("features computed for every tiling")
        .1[index]
}

/// A region of a frame where the map shows an anomaly.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrameRegion {
    /// Left, top, width, height in frame pixels.
    pub rect: (u32, u32, u32, u32),
    /// The largest map value inside, raw map units.
    pub score: f64,
}

/// The anomaly regions of `map` (see [`anomaly_regions`]) with `map_threshold` (raw map units)
/// as seed threshold, as boxes in the pixels of a `frame` of (width, height); a box covers
/// every frame pixel its map cells touch.
pub fn frame_regions(
    map: &PatchResult,
    map_threshold: f64,
    frame: (u32, u32),
    options: &RegionOptions,
) -> Vec<FrameRegion> {
    let (frame_w, frame_h) = frame;
    let sx = frame_w as f64 / map.map_width as f64;
    let sy = frame_h as f64 / map.map_height as f64;
    anomaly_regions(
        &map.map,
        map.map_width,
        map.map_height,
        map.tiles,
        map_threshold as f32,
        options,
    )
    .into_iter()
    .map(|r| {
        let x0 = ((r.x as f64 * sx).floor() as u32).min(frame_w);
        let y0 = ((r.y as f64 * sy).floor() as u32).min(frame_h);
        let x1 = (((r.x + r.width) as f64 * sx).ceil() as u32).min(frame_w);
        let y1 = (((r.y + r.height) as f64 * sy).ceil() as u32).min(frame_h);
        FrameRegion {
            rect: (x0, y0, x1 - x0, y1 - y0),
            score: r.max as f64,
        }
    })
    .collect()
}

/// How a frame is judged.
#[derive(Debug, Clone, Default)]
pub struct JudgeOptions {
    /// Verdict threshold on the calibrated score; `None` uses the profile's.
    pub threshold: Option<f64>,
    /// How anomaly regions are cut from the map; `None` computes none.
    pub regions: Option<RegionOptions>,
}

/// Everything the inspection of one frame found; the element, `logsad score` and `logsad eval`
/// report it as it is, and [`crate::meta`] encodes it for buffers.
#[derive(Debug, Clone)]
pub struct FrameResult {
    /// The reported raw score: the single detector's raw score; with several detectors, whose
    /// raw scores have different units, the fused calibrated score `fused_z`.
    pub score: f64,
    /// The largest calibrated detector score, (raw - mean) / std (paper eq. 5 before the sigmoid).
    pub fused_z: f64,
    /// sigmoid(`fused_z`) (paper eq. 5).
    pub calibrated: f64,
    pub anomalous: bool,
    /// The threshold `calibrated` was judged against.
    pub threshold: f64,
    /// Every detector's raw and calibrated score, in the profile's order.
    pub detectors: Vec<DetectorScore>,
    /// Every detector's calibrated score z, `None` for an uncalibrated one (composition).
    pub detector_z: Vec<Option<f64>>,
    /// The reported anomaly map: the first patch detector's.
    pub map: PatchResult,
    /// The raw value of the reported map at which a cell counts as anomalous.
    pub map_threshold: f64,
    /// The frame's width and height in pixels.
    pub frame_size: (u32, u32),
    /// The anomalous regions in frame pixels, strongest first (empty unless asked for).
    pub regions: Vec<FrameRegion>,
    /// The composition rules that fired (a fired rule sets `calibrated` to 1.0, eq. 5).
    pub rules: Vec<RuleFinding>,
    /// Where this frame's time went.
    pub timings: StageTimings,
    /// FLOPs of the matrix products of every patch detector's matching on this frame (see
    /// [`crate::detect::cost::matching_flops`]).
    pub matching_flops: u64,
}

impl FrameResult {
    /// The score that ranks frames for metrics such as AUROC: the fused calibrated score, or
    /// infinity when a rule fired (the paper's final score of 1.0).
    pub fn ranking_score(&self) -> f64 {
        if self.rules.is_empty() {
            self.fused_z
        } else {
            f64::INFINITY
        }
    }

    /// Each detector's score for ranking frames: the calibrated score z for calibrated
    /// detectors, the number of fired rules for the composition detector; by name.
    pub fn detector_ranking_scores(&self) -> Vec<(String, f64)> {
        self.detectors
            .iter()
            .zip(&self.detector_z)
            .map(|(d, z)| (d.name.clone(), z.unwrap_or(d.raw)))
            .collect()
    }
}

/// The tiling of the part stage: the whole frame at the model's input size, resized and
/// resampled as the first patch detector's frames (so that a faithful patch detector and the
/// part stage share one backbone pass). On the default model that gives a 32x32 part grid (the
/// 16x16 token grid upsampled x2), each cell 1/32 of the frame's width and height.
pub fn part_tiling(header: &crate::profile::ProfileHeader) -> Tiling {
    let mut tiling = Tiling::whole();
    if let Some((_, first, _)) = header.patch_detectors().next() {
        tiling.resize = first.tiling.resize;
        tiling.resample = first.tiling.resample;
    }
    tiling
}

/// One profile ready to inspect frames with a borrowed [`Extractor`].
pub struct Inspector {
    pub profile: Profile,
}

/// Loads `profile_path` and the model `manifest_path` describes, checking they belong together.
/// Returns warnings (such as a provider falling back to CPU) for the caller.
pub fn load(
    profile_path: &Path,
    manifest_path: &Path,
    options: &EngineOptions,
) -> Result<(Extractor, Inspector, Vec<String>), InspectError> {
    let profile = Profile::load(profile_path)?;
    let manifest = Manifest::load(manifest_path).map_err(EngineError::from)?;
    check_stages(&profile, profile_path, &manifest, manifest_path)?;
    let upsample = profile.header.upsample;
    let (backbone, mut warnings) = Backbone::load(manifest, options)?;
    let extractor = Extractor::new(backbone, upsample);
    let (inspector, more) = Inspector::for_extractor(profile, profile_path, &extractor)?;
    warnings.extend(more);
    Ok((extractor, inspector, warnings))
}

/// Loads `profile_path` for an already loaded model (described by `manifest`, read from
/// `manifest_path`, with `identity` and token `upsample`), checking they belong together as
/// [`load`] does. Returns warnings for the caller.
pub fn load_profile(
    profile_path: &Path,
    manifest_path: &Path,
    manifest: &Manifest,
    identity: &crate::engine::ModelIdentity,
    upsample: usize,
) -> Result<(Inspector, Vec<String>), InspectError> {
    let profile = Profile::load(profile_path)?;
    check_stages(&profile, profile_path, manifest, manifest_path)?;
    Inspector::for_model(profile, profile_path, manifest, identity, upsample)
}

/// A profile's stage count and feature dimension against a model's manifest: a quick, cheap
/// refusal of a profile built for another kind of model, before the model is loaded.
///
/// Errors: [`InspectError::Incompatible`] naming both.
pub fn check_stages(
    profile: &Profile,
    profile_path: &Path,
    manifest: &Manifest,
    manifest_path: &Path,
) -> Result<(), InspectError> {
    let h = &profile.header;
    if h.feature_dim != manifest.feature_dim || h.stages != manifest.stage_outputs.len() {
        return Err(InspectError::Incompatible {
            path: profile_path.display().to_string(),
            model: format!("{} ({})", manifest.name, manifest_path.display()),
            reason: format!(
                "profile has {} stages of dimension {}, model has {} of {}",
                h.stages,
                h.feature_dim,
                manifest.stage_outputs.len(),
                manifest.feature_dim
            ),
        });
    }
    Ok(())
}

impl Inspector {
    /// A profile built in memory (enrollment, evaluation) with the extractor that built it.
    pub fn new(profile: Profile) -> Self {
        Inspector { profile }
    }

    /// Checks that `profile` (read from `profile_path`) fits the extractor's model: same model
    /// identity, token grids that the banks were built on. Returns warnings about a profile
    /// that loads but means little (a calibration spread below [`MIN_SPREAD`]).
    pub fn for_extractor(
        profile: Profile,
        profile_path: &Path,
        extractor: &Extractor,
    ) -> Result<(Self, Vec<String>), InspectError> {
        let backbone = extractor.backbone();
        Self::for_model(
            profile,
            profile_path,
            backbone.manifest(),
            backbone.identity(),
            extractor.upsample,
        )
    }

    /// [`Inspector::for_extractor`] for an extractor known by its model's manifest, identity
    /// and token upsampling (one owned by a [`crate::worker::InferenceWorker`]).
    pub fn for_model(
        profile: Profile,
        profile_path: &Path,
        manifest: &Manifest,
        identity: &crate::engine::ModelIdentity,
        upsample: usize,
    ) -> Result<(Self, Vec<String>), InspectError> {
        profile.check_model(profile_path, identity)?;
        let h = &profile.header;
        if h.upsample != upsample {
            return Err(InspectError::Incompatible {
                path: profile_path.display().to_string(),
                model: manifest.name.clone(),
                reason: format!(
                    "profile built with token upsampling x{}, the extractor upsamples x{upsample}",
                    h.upsample
                ),
            });
        }
        let mut warnings = Vec::new();
        // Profiles from before the spread floor may hold a spread of float noise.
        for detector in &h.detectors {
            if let Some(calibration) = detector
                .calibration
                .as_ref()
                .filter(|c| c.spread_too_small())
            {
                warnings.push(format!(
                    "profile {}: detector {} was calibrated on validation scores that spread by \
                     {:.1e}, below {MIN_SPREAD:.0e} (float rounding); its calibrated scores \
                     divide by {MIN_SPREAD:.0e} instead and mean little: enroll again with more, \
                     varied anomaly-free images for --validation",
                    profile_path.display(),
                    detector.name(),
                    calibration.std
                ));
            }
        }
        // The same weights run at another input size (a manifest for a dynamic-size model) give
        // another token grid.
        let model_grid = (manifest.tokens.grid_height, manifest.tokens.grid_width);
        for (_, spec, bank) in h.patch_detectors() {
            let bank = &profile.banks[bank];
            let (expected, _) = spec.pooling.bank_grid(model_grid, h.upsample);
            if (bank.grid_height, bank.grid_width) != expected {
                return Err(InspectError::Incompatible {
                    path: profile_path.display().to_string(),
                    model: manifest.name.clone(),
                    reason: format!(
                        "detector {}: profile token grid {}x{}, model grid {}x{}",
                        spec.name, bank.grid_height, bank.grid_width, model_grid.0, model_grid.1
                    ),
                });
            }
        }
        if let Some(parts) = &h.parts {
            let expected = (model_grid.1 * h.upsample, model_grid.0 * h.upsample);
            if (parts.width, parts.height) != expected {
                return Err(InspectError::Incompatible {
                    path: profile_path.display().to_string(),
                    model: manifest.name.clone(),
                    reason: format!(
                        "parts learned on a {}x{} grid, the model gives {}x{}",
                        parts.width, parts.height, expected.0, expected.1
                    ),
                });
            }
        }
        Ok((Inspector { profile }, warnings))
    }

    /// The tilings the backbone must run for this profile, each once: the patch detectors',
    /// and the part stage's.
    pub fn tilings(&self) -> Vec<Tiling> {
        let header = &self.profile.header;
        let mut tilings: Vec<Tiling> = header
            .patch_detectors()
            .map(|(_, spec, _)| spec.tiling.clone())
            .collect();
        if header.parts.is_some() {
            tilings.push(part_tiling(header));
        }
        tilings
    }

    /// Inspects one frame.
    pub fn inspect(
        &self,
        extractor: &mut Extractor,
        image: &RgbImage,
        options: &JudgeOptions,
    ) -> Result<FrameResult, InspectError> {
        Ok(self.inspect_batch(extractor, &[image], options)?.remove(0))
    }

    /// Inspects several frames with one inference per distinct tiling; each result carries its
    /// share of the backbone's time.
    pub fn inspect_batch(
        &self,
        extractor: &mut Extractor,
        images: &[&RgbImage],
        options: &JudgeOptions,
    ) -> Result<Vec<FrameResult>, InspectError> {
        let (features, time) = extractor.features_by_tiling(&self.tilings(), images)?;
        let model_time = time.per_frame(images.len());
        FrameFeatures::split(features, images.len(), extractor.input_size(), model_time)
            .iter()
            .zip(images)
            .map(|(frame, image)| self.judge_features(frame, image, options))
            .collect()
    }

    /// Runs the detectors on one frame's features (computed under [`Inspector::tilings`] by any
    /// extractor of the profile's model, such as a shared [`crate::worker`]) and judges it.
    ///
    /// Errors: features lacking one of the profile's tilings, or a detector that fails.
    pub fn judge_features(
        &self,
        frame: &FrameFeatures,
        image: &RgbImage,
        options: &JudgeOptions,
    ) -> Result<FrameResult, InspectError> {
        let header = &self.profile.header;
        let features = &frame.by_tiling;
        let tiles = |tiling: &Tiling| {
            features
                .iter()
                .find(|(t, _)| t == tiling)
                .map(|(_, tiles)| tiles.as_slice())
                .ok_or_else(|| {
                    InspectError::Inference(format!(
                        "no features for the tiling {tiling:?} the profile needs"
                    ))
                })
        };
        let input = frame.input_size;
        let mut timings = StageTimings {
            preprocess: frame.model_time.preprocess,
            inference: frame.model_time.inference,
            ..StageTimings::default()
        };
        let layout = match &header.parts {
            Some(parts) => {
                let start = Instant::now();
                let whole = tiles(&part_tiling(header))?.first().ok_or_else(|| {
                    InspectError::Parts("no whole-frame features for the part stage".into())
                })?;
                let layout = PartLayout::of(parts, whole, image)?;
                timings.parts = start.elapsed();
                Some((parts, whole, layout))
            }
            None => None,
        };
        let mut maps: Vec<PatchResult> = Vec::new();
        let mut scores = Vec::with_capacity(header.detectors.len());
        let mut zs = Vec::with_capacity(scores.capacity());
        let mut rules = Vec::new();
        for detector in &header.detectors {
            let start = Instant::now();
            let raw = match (&detector.learned, &layout) {
                (Learned::Patch { spec, bank }, _) => {
                    let bank = &self.profile.banks[*bank];
                    let result = patch::score(spec, bank, tiles(&spec.tiling)?, image, input)
                        .map_err(InspectError::Image)?;
                    let raw = result.raw;
                    timings.nearest_neighbour += result.timings.nearest_neighbour;
                    timings.stitching += result.timings.stitching;
                    timings.scoring += result.timings.scoring;
                    maps.push(result);
                    raw
                }
                (Learned::Interest { references, .. }, Some((_, whole, layout))) => {
                    let raw = interest::score(whole, &layout.labels, &layout.instances, references)
                        .map_err(InspectError::Parts)?;
                    timings.interest += start.elapsed();
                    raw
                }
                (
                    Learned::Composition {
                        rules: file, stats, ..
                    },
                    Some((parts, _, layout)),
                ) => {
                    let fired = fired_rules(file, stats, &layout.view(&parts.names));
                    let frame = (image.width, image.height);
                    rules.extend(fired.into_iter().map(|rule| {
                        RuleFinding {
                            instances: instances_of(&rule, &layout.instances)
                                .into_iter()
                                .map(|i| layout.instance_box(i, frame))
                                .collect(),
                            rule,
                        }
                    }));
                    timings.composition += start.elapsed();
                    rules.len() as f64
                }
                (_, None) => {
                    return Err(InspectError::Parts(format!(
                        "detector {} needs the profile's parts, which it lacks",
                        detector.name()
                    )))
                }
            };
            let calibration = Instant::now();
            let (z, calibrated) = match (&detector.calibration, &detector.learned) {
                (Some(c), _) => (Some(c.z(raw)), sigmoid(c.z(raw))),
                (None, _) => (None, if raw > 0.0 { 1.0 } else { 0.0 }),
            };
            zs.push(z);
            scores.push(DetectorScore {
                name: detector.name().to_owned(),
                raw,
                calibrated,
            });
            timings.scoring += calibration.elapsed();
        }
        Ok(self.judge(scores, zs, maps, rules, image, timings, options))
    }

    /// Fuses the detectors' scores into the verdict (paper eq. 5) and cuts the regions.
    #[allow(clippy::too_many_arguments)]
    fn judge(
        &self,
        detectors: Vec<DetectorScore>,
        detector_z: Vec<Option<f64>>,
        mut maps: Vec<PatchResult>,
        rules: Vec<RuleFinding>,
        image: &RgbImage,
        mut timings: StageTimings,
        options: &JudgeOptions,
    ) -> FrameResult {
        let start = Instant::now();
        let header = &self.profile.header;
        let threshold = options.threshold.unwrap_or(header.threshold);
        let (fused_z, calibrated) = fuse(&detector_z, rules.len());
        let (first_patch, _, _) = header
            .patch_detectors()
            .next()
            .expect("a profile has a patch detector");
        let map_threshold = first_patch
            .calibration
            .as_ref()
            .expect("patch detectors are calibrated")
            .raw_at(threshold);
        let matching_flops = maps.iter().map(|m| m.matching_flops).sum();
        let map = maps.swap_remove(0);
        let frame_size = (image.width, image.height);
        let regions = options
            .regions
            .as_ref()
            .map(|o| frame_regions(&map, map_threshold, frame_size, o))
            .unwrap_or_default();
        let score = match detectors.as_slice() {
            [one] => one.raw,
            _ => fused_z,
        };
        timings.scoring += start.elapsed();
        FrameResult {
            score,
            fused_z,
            calibrated,
            anomalous: calibrated >= threshold,
            threshold,
            detectors,
            detector_z,
            map,
            map_threshold,
            frame_size,
            regions,
            rules,
            timings,
            matching_flops,
        }
    }
}
