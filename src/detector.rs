//! The detector: frame -> tiles -> backbone -> patch features -> anomaly maps -> scores ->
//! calibrated, fused verdict. Shared by the `logsad` element and the `logsad` command; knows
//! nothing of GStreamer.

use crate::detect::calibrate::{fuse_max, sigmoid, MIN_SPREAD};
use crate::detect::features::{patch_features, Grid, PatchFeatures};
use crate::detect::patch::{anomaly_map, MemoryBank};
use crate::detect::preprocess::{Preprocessor, RgbImage};
use crate::detect::regions::{anomaly_regions, RegionOptions};
use crate::detect::score::{gaussian_blur, reduce};
use crate::detect::tiling::{Stitcher, Tiling};
use crate::engine::{Backbone, EngineError, EngineOptions, Manifest};
use crate::profile::{BranchSpec, Pooling, Profile, ProfileError};
use std::path::Path;
use std::time::{Duration, Instant};

/// Token grid upsampling before matching, as in the reference (32x32 -> 64x64).
pub const REFERENCE_UPSAMPLE: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum DetectorError {
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

/// Where the time of analysing images went.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timing {
    /// Preprocessing and the backbone.
    pub model: Duration,
    /// Nearest-neighbour matching, stitching and scoring.
    pub matching: Duration,
}

/// Turns images into per-tile patch features with one backbone.
pub struct Extractor {
    backbone: Backbone,
    preprocessor: Preprocessor,
    upsample: usize,
    pub timing: Timing,
}

impl Extractor {
    pub fn new(backbone: Backbone, upsample: usize) -> Self {
        let preprocessor = Preprocessor::new(&backbone.manifest().input);
        Extractor {
            backbone,
            preprocessor,
            upsample,
            timing: Timing::default(),
        }
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
    ) -> Result<Vec<PatchFeatures>, DetectorError> {
        Ok(self.features_of_batch(&[image], tiling)?.remove(0))
    }

    /// Features of every tile of every image (`[image][tile]`), all in one inference.
    pub fn features_of_batch(
        &mut self,
        images: &[&RgbImage],
        tiling: &Tiling,
    ) -> Result<Vec<Vec<PatchFeatures>>, DetectorError> {
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
                    .map_err(DetectorError::Image)?;
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
        self.timing.model += start.elapsed();
        Ok(features)
    }
}

/// One branch's result on one image.
#[derive(Debug, Clone)]
pub struct BranchResult {
    /// Raw image score under the branch's reduction.
    pub raw: f64,
    /// The stitched (and, if asked, smoothed) anomaly map, covering the whole image.
    pub map: Vec<f32>,
    pub map_width: usize,
    pub map_height: usize,
    /// The tile grid (rows, cols) the map was stitched from.
    pub tiles: (usize, usize),
}

/// Scores the tile features of one image against a branch's bank; `input` is the model's
/// input size the tiles went through.
pub fn score_branch(
    spec: &BranchSpec,
    bank: &MemoryBank,
    tiles: &[PatchFeatures],
    image: &RgbImage,
    input: (u32, u32),
) -> Result<BranchResult, DetectorError> {
    let pooled: Vec<PatchFeatures>;
    let tiles = match spec.pooling {
        Pooling::None => tiles,
        Pooling::Mean => {
            pooled = tiles.iter().map(PatchFeatures::mean_pooled).collect();
            &pooled
        }
    };
    let grid = (tiles[0].width(), tiles[0].height());
    let mut stitcher = Stitcher::new(&spec.tiling, (image.width, image.height), grid, input)
        .map_err(DetectorError::Image)?;
    for (i, tile) in tiles.iter().enumerate() {
        stitcher.add(i, &anomaly_map(tile, bank));
    }
    let (map, map_width, map_height) = stitcher.finish();
    let map = gaussian_blur(&map, map_width, map_height, spec.smoothing);
    Ok(BranchResult {
        raw: reduce(&map, spec.score),
        map,
        map_width,
        map_height,
        tiles: (spec.tiling.rows as usize, spec.tiling.cols as usize),
    })
}

/// Features of a batch of images per distinct tiling (`[image][tile]`), so that branches
/// sharing a tiling run the backbone once.
pub fn features_by_tiling(
    extractor: &mut Extractor,
    specs: &[&BranchSpec],
    images: &[&RgbImage],
) -> Result<Vec<(Tiling, Vec<Vec<PatchFeatures>>)>, DetectorError> {
    let mut cache: Vec<(Tiling, Vec<Vec<PatchFeatures>>)> = Vec::new();
    for spec in specs {
        if !cache.iter().any(|(t, _)| *t == spec.tiling) {
            let features = extractor.features_of_batch(images, &spec.tiling)?;
            cache.push((spec.tiling.clone(), features));
        }
    }
    Ok(cache)
}

/// The tile features of image `index` of a batch under `tiling`.
pub fn tiles_of<'a>(
    features: &'a [(Tiling, Vec<Vec<PatchFeatures>>)],
    tiling: &Tiling,
    index: usize,
) -> &'a [PatchFeatures] {
    &features
        .iter()
        .find(|(t, _)| t == tiling)
        .expect("features computed for every tiling")
        .1[index]
}

/// The result of analysing one image: every branch, and their fusion.
#[derive(Debug, Clone)]
pub struct Analysis {
    pub branches: Vec<BranchResult>,
    /// Each branch's calibrated score, (raw - mean) / std.
    pub z: Vec<f64>,
}

impl Analysis {
    /// The fused score (paper eq. 5): the largest calibrated branch score.
    pub fn fused_z(&self) -> f64 {
        self.z.iter().copied().fold(f64::NEG_INFINITY, f64::max)
    }

    /// The reported raw score: the single branch's raw score; with several branches, whose raw
    /// scores have different units, the fused calibrated score.
    pub fn score(&self) -> f64 {
        match self.branches.as_slice() {
            [one] => one.raw,
            _ => self.fused_z(),
        }
    }

    /// The reported map: the first branch's.
    pub fn map(&self) -> &BranchResult {
        &self.branches[0]
    }
}

/// A verdict on one analysis under a threshold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    /// sigmoid of the fused calibrated score.
    pub calibrated: f64,
    pub anomalous: bool,
    pub threshold: f64,
    /// The raw value of the reported map at which a cell counts as anomalous.
    pub map_threshold: f64,
}

/// One branch's scores on one image, for reports.
#[derive(Debug, Clone, PartialEq)]
pub struct BranchScore {
    pub name: String,
    pub raw: f64,
    /// sigmoid of the branch's calibrated score.
    pub calibrated: f64,
}

/// A region of a frame where the map shows an anomaly.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrameRegion {
    /// Left, top, width, height in frame pixels.
    pub rect: (u32, u32, u32, u32),
    /// The largest map value inside, raw map units.
    pub score: f64,
}

/// The anomaly regions of `map` (see [`anomaly_regions`]) with `map_threshold` (raw map units,
/// [`Verdict::map_threshold`]) as seed threshold, as boxes in the pixels of a `frame` of
/// (width, height); a box covers every frame pixel its map cells touch.
pub fn frame_regions(
    map: &BranchResult,
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

/// A loaded profile with the backbone it was built for.
pub struct Detector {
    pub extractor: Extractor,
    pub profile: Profile,
}

impl Detector {
    /// Loads `profile_path` and the model `manifest_path` describes, checking they belong
    /// together. Returns warnings (such as a provider falling back to CPU) for the caller.
    pub fn load(
        profile_path: &Path,
        manifest_path: &Path,
        options: &EngineOptions,
    ) -> Result<(Self, Vec<String>), DetectorError> {
        let profile = Profile::load(profile_path)?;
        let manifest = Manifest::load(manifest_path).map_err(EngineError::from)?;
        let h = &profile.header;
        if h.feature_dim != manifest.feature_dim || h.stages != manifest.stage_outputs.len() {
            return Err(DetectorError::Incompatible {
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
        profile.check_model(profile_path, backbone.identity())?;
        // Profiles from before the spread floor may hold a spread of float noise.
        for branch in h
            .branches
            .iter()
            .filter(|b| b.calibration.spread_too_small())
        {
            warnings.push(format!(
                "profile {}: branch {} was calibrated on validation scores that spread by {:.1e}, \
                 below {MIN_SPREAD:.0e} (float rounding); its calibrated scores divide by \
                 {MIN_SPREAD:.0e} instead and mean little: enroll again with more, varied \
                 anomaly-free images for --validation",
                profile_path.display(),
                branch.spec.name,
                branch.calibration.std
            ));
        }
        // The same weights run at another input size (a manifest for a dynamic-size model) give
        // another token grid.
        let model_grid = (
            backbone.manifest().tokens.grid_height,
            backbone.manifest().tokens.grid_width,
        );
        for (branch, bank) in h.branches.iter().zip(&profile.banks) {
            let (expected, _) = branch.spec.pooling.bank_grid(model_grid, h.upsample);
            if (bank.grid_height, bank.grid_width) != expected {
                return Err(DetectorError::Incompatible {
                    path: profile_path.display().to_string(),
                    model: format!("{} ({})", backbone.manifest().name, manifest_path.display()),
                    reason: format!(
                        "branch {}: profile token grid {}x{}, model grid {}x{}",
                        branch.spec.name,
                        bank.grid_height,
                        bank.grid_width,
                        model_grid.0,
                        model_grid.1
                    ),
                });
            }
        }
        let extractor = Extractor::new(backbone, h.upsample);
        Ok((Detector { extractor, profile }, warnings))
    }

    pub fn analyse(&mut self, image: &RgbImage) -> Result<Analysis, DetectorError> {
        Ok(self.analyse_batch(&[image])?.remove(0))
    }

    /// Analyses several images with one inference per distinct tiling.
    pub fn analyse_batch(&mut self, images: &[&RgbImage]) -> Result<Vec<Analysis>, DetectorError> {
        let branches = &self.profile.header.branches;
        let specs: Vec<&BranchSpec> = branches.iter().map(|b| &b.spec).collect();
        let features = features_by_tiling(&mut self.extractor, &specs, images)?;
        let start = Instant::now();
        let input = self.extractor.input_size();
        let mut analyses = Vec::with_capacity(images.len());
        for (index, image) in images.iter().enumerate() {
            let mut results = Vec::with_capacity(branches.len());
            for (branch, bank) in branches.iter().zip(&self.profile.banks) {
                let tiles = tiles_of(&features, &branch.spec.tiling, index);
                results.push(score_branch(&branch.spec, bank, tiles, image, input)?);
            }
            let z = branches
                .iter()
                .zip(&results)
                .map(|(b, r)| b.calibration.z(r.raw))
                .collect();
            analyses.push(Analysis {
                branches: results,
                z,
            });
        }
        self.extractor.timing.matching += start.elapsed();
        Ok(analyses)
    }

    /// Each branch's raw and calibrated score.
    pub fn branch_scores(&self, analysis: &Analysis) -> Vec<BranchScore> {
        self.profile
            .header
            .branches
            .iter()
            .zip(&analysis.branches)
            .zip(&analysis.z)
            .map(|((branch, result), &z)| BranchScore {
                name: branch.spec.name.clone(),
                raw: result.raw,
                calibrated: sigmoid(z),
            })
            .collect()
    }

    /// The verdict under `threshold` (on the calibrated score), or the profile's.
    pub fn judge(&self, analysis: &Analysis, threshold: Option<f64>) -> Verdict {
        let threshold = threshold.unwrap_or(self.profile.header.threshold);
        let calibrated = fuse_max(&analysis.z);
        Verdict {
            calibrated,
            anomalous: calibrated >= threshold,
            threshold,
            map_threshold: self.profile.header.branches[0]
                .calibration
                .raw_at(threshold),
        }
    }
}
