//! The detector: frame -> tiles -> backbone -> patch features -> anomaly map -> score.
//! Shared by the `logsad` element and the `logsad` command; knows nothing of GStreamer.

use crate::detect::calibrate::Calibration;
use crate::detect::features::{patch_features, Grid, PatchFeatures};
use crate::detect::patch::{anomaly_map, max_score, MemoryBank};
use crate::detect::preprocess::{Preprocessor, RgbImage};
use crate::detect::tiling::{Stitcher, Tiling};
use crate::engine::{Backbone, EngineError, EngineOptions, Manifest};
use crate::profile::{Profile, ProfileError};
use std::path::Path;

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
}

/// Turns images into per-tile patch features with one backbone.
pub struct Extractor {
    backbone: Backbone,
    preprocessor: Preprocessor,
    tiling: Tiling,
    upsample: usize,
}

impl Extractor {
    pub fn new(backbone: Backbone, tiling: Tiling, upsample: usize) -> Self {
        let preprocessor = Preprocessor::new(&backbone.manifest().input);
        Extractor {
            backbone,
            preprocessor,
            tiling,
            upsample,
        }
    }

    pub fn backbone(&self) -> &Backbone {
        &self.backbone
    }

    pub fn tiling(&self) -> &Tiling {
        &self.tiling
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
    pub fn features(&mut self, image: &RgbImage) -> Result<Vec<PatchFeatures>, DetectorError> {
        let tiles = self.tiling.tiles(image.width, image.height);
        let m = self.backbone.manifest();
        let mut pixels = Vec::with_capacity(tiles.len() * 3 * m.input.width * m.input.height);
        for tile in &tiles {
            self.preprocessor
                .push_tile(image, tile, &mut pixels)
                .map_err(DetectorError::Image)?;
        }
        let outputs = self.backbone.run(pixels, tiles.len())?;
        let grid = self.grid();
        Ok((0..tiles.len())
            .map(|i| patch_features(&outputs.stages, i, grid, self.upsample))
            .collect())
    }
}

/// The result of analysing one image.
#[derive(Debug, Clone)]
pub struct Analysis {
    /// Raw patch score: the maximum of the map.
    pub score: f64,
    /// The stitched anomaly map, covering the whole image.
    pub map: Vec<f32>,
    pub map_width: usize,
    pub map_height: usize,
}

/// The anomaly map of an image, stitched from its tiles.
pub fn analyse(
    extractor: &mut Extractor,
    bank: &MemoryBank,
    image: &RgbImage,
) -> Result<Analysis, DetectorError> {
    let features = extractor.features(image)?;
    let (grid_w, grid_h) = (features[0].width, features[0].height);
    let mut stitcher = Stitcher::new(
        extractor.tiling(),
        image.width,
        image.height,
        grid_w,
        grid_h,
    )
    .map_err(DetectorError::Image)?;
    for (i, tile) in features.iter().enumerate() {
        stitcher.add(i, &anomaly_map(tile, bank));
    }
    let (map, map_width, map_height) = stitcher.finish();
    Ok(Analysis {
        score: max_score(&map) as f64,
        map,
        map_width,
        map_height,
    })
}

/// A verdict on one analysis under a profile's calibration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    pub calibrated: f64,
    pub anomalous: bool,
    /// The raw map value at which a cell counts as anomalous under the same threshold.
    pub map_threshold: f64,
}

pub fn judge(calibration: &Calibration, threshold: f64, score: f64) -> Verdict {
    let calibrated = calibration.calibrated(score);
    Verdict {
        calibrated,
        anomalous: calibrated >= threshold,
        map_threshold: calibration.raw_at(threshold),
    }
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
        let incompatible = |reason: String| DetectorError::Incompatible {
            path: profile_path.display().to_string(),
            model: manifest.name.clone(),
            reason,
        };
        if h.feature_dim != manifest.feature_dim || h.stages != manifest.stage_outputs.len() {
            return Err(incompatible(format!(
                "profile has {} stages of dimension {}, model has {} of {}",
                h.stages,
                h.feature_dim,
                manifest.stage_outputs.len(),
                manifest.feature_dim
            )));
        }
        let (backbone, warnings) = Backbone::load(manifest, options)?;
        profile.check_model(profile_path, backbone.identity())?;
        let extractor = Extractor::new(backbone, h.tiling.clone(), h.upsample);
        Ok((Detector { extractor, profile }, warnings))
    }

    pub fn analyse(&mut self, image: &RgbImage) -> Result<Analysis, DetectorError> {
        analyse(&mut self.extractor, &self.profile.bank, image)
    }

    pub fn judge(&self, score: f64, threshold: Option<f64>) -> Verdict {
        let h = &self.profile.header;
        judge(&h.calibration, threshold.unwrap_or(h.threshold), score)
    }
}
