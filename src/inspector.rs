//! The inspection pipeline: frame -> tiles -> backbone -> patch features -> detectors ->
//! calibrated, fused verdict -> one [`FrameResult`]. Shared by the `logsad` element and the
//! `logsad` command; knows nothing of GStreamer.
//!
//! What is shared is apart from what is per profile: an [`Extractor`] owns the loaded backbone
//! and can serve several profiles; an [`Inspector`] owns one profile (banks, parts, rules,
//! calibration) and borrows the extractor for each frame.

use crate::detect::calibrate::{sigmoid, MIN_SPREAD};
use crate::detect::features::{patch_features, Grid, PatchFeatures};
use crate::detect::preprocess::{Preprocessor, RgbImage};
use crate::detect::regions::{anomaly_regions, RegionOptions};
use crate::detect::tiling::Tiling;
use crate::detectors::patch::{self, PatchResult};
use crate::detectors::{DetectorScore, Learned};
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
    /// An image file that could not be read (names the file and the cause).
    #[error(transparent)]
    Load(#[from] crate::imageio::LoadError),
}

/// Where the time of analysing one frame went (for a batch, each frame's share).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StageTimings {
    /// Preprocessing and the backbone.
    pub model: Duration,
    /// The patch detectors: nearest-neighbour matching, stitching and scoring.
    pub patch: Duration,
}

impl StageTimings {
    /// Everything after the backbone.
    pub fn matching(&self) -> Duration {
        self.patch
    }

    pub fn add(&mut self, other: &StageTimings) {
        self.model += other.model;
        self.patch += other.patch;
    }
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
        let input = &self.backbone.manifest().input;
        (input.width as u32, input.height as u32)
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
        Ok(self.features_of_batch(&[image], tiling)?.remove(0))
    }

    /// Features of every tile of every image (`[image][tile]`), all in one inference.
    pub fn features_of_batch(
        &mut self,
        images: &[&RgbImage],
        tiling: &Tiling,
    ) -> Result<Vec<Vec<PatchFeatures>>, InspectError> {
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
        Ok(features)
    }

    /// Features of a batch of images under each distinct tiling of `tilings`, so that
    /// detectors sharing a tiling run the backbone once.
    pub fn features_by_tiling<'a>(
        &mut self,
        tilings: impl IntoIterator<Item = &'a Tiling>,
        images: &[&RgbImage],
    ) -> Result<FeaturesByTiling, InspectError> {
        let mut cache: FeaturesByTiling = Vec::new();
        for tiling in tilings {
            if !cache.iter().any(|(t, _)| t == tiling) {
                let features = self.features_of_batch(images, tiling)?;
                cache.push((tiling.clone(), features));
            }
        }
        Ok(cache)
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
    /// The reported anomaly map: the first patch detector's.
    pub map: PatchResult,
    /// The raw value of the reported map at which a cell counts as anomalous.
    pub map_threshold: f64,
    /// The frame's width and height in pixels.
    pub frame_size: (u32, u32),
    /// The anomalous regions in frame pixels, strongest first (empty unless asked for).
    pub regions: Vec<FrameRegion>,
    /// Where this frame's time went.
    pub timings: StageTimings,
}

impl FrameResult {
    /// The score that ranks frames for metrics such as AUROC: the fused calibrated score.
    pub fn ranking_score(&self) -> f64 {
        self.fused_z
    }
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
    let (backbone, mut warnings) = Backbone::load(manifest, options)?;
    let extractor = Extractor::new(backbone, h.upsample);
    let (inspector, more) = Inspector::for_extractor(profile, profile_path, &extractor)?;
    warnings.extend(more);
    Ok((extractor, inspector, warnings))
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
        profile.check_model(profile_path, backbone.identity())?;
        let h = &profile.header;
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
        let model_grid = (
            backbone.manifest().tokens.grid_height,
            backbone.manifest().tokens.grid_width,
        );
        for (_, spec, bank) in h.patch_detectors() {
            let bank = &profile.banks[bank];
            let (expected, _) = spec.pooling.bank_grid(model_grid, h.upsample);
            if (bank.grid_height, bank.grid_width) != expected {
                return Err(InspectError::Incompatible {
                    path: profile_path.display().to_string(),
                    model: backbone.manifest().name.clone(),
                    reason: format!(
                        "detector {}: profile token grid {}x{}, model grid {}x{}",
                        spec.name, bank.grid_height, bank.grid_width, model_grid.0, model_grid.1
                    ),
                });
            }
        }
        Ok((Inspector { profile }, warnings))
    }

    /// The tilings the backbone must run for this profile, each once.
    fn tilings(&self) -> impl Iterator<Item = &Tiling> {
        self.profile
            .header
            .patch_detectors()
            .map(|(_, spec, _)| &spec.tiling)
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
        let start = Instant::now();
        let features = extractor.features_by_tiling(self.tilings(), images)?;
        let model_time = start.elapsed() / images.len().max(1) as u32;
        let input = extractor.input_size();
        let mut results = Vec::with_capacity(images.len());
        for (index, image) in images.iter().enumerate() {
            let mut timings = StageTimings {
                model: model_time,
                ..StageTimings::default()
            };
            let start = Instant::now();
            let mut maps: Vec<PatchResult> = Vec::new();
            let mut scores = Vec::with_capacity(self.profile.header.detectors.len());
            let mut zs = Vec::with_capacity(scores.capacity());
            for detector in &self.profile.header.detectors {
                let raw = match &detector.learned {
                    Learned::Patch { spec, bank } => {
                        let tiles = tiles_of(&features, &spec.tiling, index);
                        let bank = &self.profile.banks[*bank];
                        let result = patch::score(spec, bank, tiles, image, input)
                            .map_err(InspectError::Image)?;
                        let raw = result.raw;
                        maps.push(result);
                        raw
                    }
                };
                let (z, calibrated) = match &detector.calibration {
                    Some(c) => (c.z(raw), sigmoid(c.z(raw))),
                    None => (f64::NEG_INFINITY, 0.0),
                };
                zs.push(z);
                scores.push(DetectorScore {
                    name: detector.name().to_owned(),
                    raw,
                    calibrated,
                });
            }
            timings.patch = start.elapsed();
            results.push(self.judge(scores, zs, maps, image, timings, options));
        }
        Ok(results)
    }

    /// Fuses the detectors' scores into the verdict (paper eq. 5) and cuts the regions.
    fn judge(
        &self,
        detectors: Vec<DetectorScore>,
        zs: Vec<f64>,
        mut maps: Vec<PatchResult>,
        image: &RgbImage,
        timings: StageTimings,
        options: &JudgeOptions,
    ) -> FrameResult {
        let header = &self.profile.header;
        let threshold = options.threshold.unwrap_or(header.threshold);
        let fused_z = zs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let calibrated = sigmoid(fused_z);
        let (first_patch, _, _) = header
            .patch_detectors()
            .next()
            .expect("a profile has a patch detector");
        let map_threshold = first_patch
            .calibration
            .as_ref()
            .expect("patch detectors are calibrated")
            .raw_at(threshold);
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
        FrameResult {
            score,
            fused_z,
            calibrated,
            anomalous: calibrated >= threshold,
            threshold,
            detectors,
            map,
            map_threshold,
            frame_size,
            regions,
            timings,
        }
    }
}
