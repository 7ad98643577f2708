//! Enrollment: reference images -> memory bank; validation images -> calibration; both -> profile.

use crate::detect::calibrate::Calibration;
use crate::detect::coreset::greedy_coreset;
use crate::detect::patch::MemoryBank;
use crate::detect::preprocess::RgbImage;
use crate::detect::tiling::Tiling;
use crate::detector::{analyse, DetectorError, Extractor, REFERENCE_UPSAMPLE};
use crate::engine::{Backbone, EngineOptions, Manifest};
use crate::profile::{Profile, ProfileHeader};
use std::path::{Path, PathBuf};

/// Full-data enrollment reduces the bank group by group, as the authors do, so memory stays
/// bounded by one group's patches.
pub const CORESET_GROUP: usize = 4;
/// PatchCore projects features to this many dimensions before the k-center search.
const CORESET_PROJECTION: usize = 128;
/// Default verdict threshold: sigmoid(3), a raw score three validation standard deviations above
/// the validation mean.
pub const DEFAULT_THRESHOLD: f64 = 0.952_574_126_822_433_2;

#[derive(Debug, Clone)]
pub struct EnrollOptions {
    pub tiling: Tiling,
    pub coreset_ratio: Option<f32>,
    pub threshold: f64,
    pub seed: u64,
    pub engine: EngineOptions,
}

impl Default for EnrollOptions {
    fn default() -> Self {
        EnrollOptions {
            tiling: Tiling::whole(),
            coreset_ratio: None,
            threshold: DEFAULT_THRESHOLD,
            seed: 0,
            engine: EngineOptions::default(),
        }
    }
}

/// What enrollment is doing, for progress reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    References,
    Validation,
}

/// Decodes an image file into packed RGB.
pub fn load_image(path: &Path) -> Result<RgbImage, DetectorError> {
    let decoded = image::open(path)
        .map_err(|e| DetectorError::Image(format!("{}: {e}", path.display())))?
        .to_rgb8();
    let (w, h) = decoded.dimensions();
    RgbImage::new(w, h, decoded.into_raw()).map_err(DetectorError::Image)
}

/// Builds a profile. `progress(phase, done, total)` is called after each image.
pub fn enroll(
    manifest_path: &Path,
    references: &[PathBuf],
    validation: &[PathBuf],
    options: &EnrollOptions,
    progress: &mut dyn FnMut(Phase, usize, usize),
) -> Result<(Profile, Vec<String>), DetectorError> {
    if references.is_empty() {
        return Err(DetectorError::Image("no reference images".into()));
    }
    if validation.len() < 2 {
        return Err(DetectorError::Image(
            "calibration needs at least 2 validation images".into(),
        ));
    }
    options
        .tiling
        .validate()
        .map_err(|e| DetectorError::Image(format!("tiling: {e}")))?;
    let manifest = Manifest::load(manifest_path).map_err(crate::engine::EngineError::from)?;
    let (backbone, warnings) = Backbone::load(manifest, &options.engine)?;
    let identity = backbone.identity().clone();
    let (dim, stages) = (
        backbone.manifest().feature_dim,
        backbone.manifest().stage_outputs.len(),
    );
    let mut extractor = Extractor::new(backbone, options.tiling.clone(), REFERENCE_UPSAMPLE);

    let mut bank = MemoryBank::new(stages, dim);
    for (group_index, group) in references.chunks(CORESET_GROUP).enumerate() {
        let mut group_bank = MemoryBank::new(stages, dim);
        for (i, path) in group.iter().enumerate() {
            for tile in extractor.features(&load_image(path)?)? {
                group_bank.push(&tile);
            }
            progress(
                Phase::References,
                group_index * CORESET_GROUP + i + 1,
                references.len(),
            );
        }
        if let Some(ratio) = options.coreset_ratio {
            let all = group_bank.concatenated();
            let view = ndarray::ArrayView2::from_shape((group_bank.rows, stages * dim), &all)
                .expect("bank rows are contiguous");
            let keep = greedy_coreset(
                view,
                ratio,
                Some(CORESET_PROJECTION),
                options.seed + group_index as u64,
            );
            group_bank = group_bank.select(&keep);
        }
        for (stage, part) in bank.stages.iter_mut().zip(&group_bank.stages) {
            stage.extend_from_slice(part);
        }
        bank.rows += group_bank.rows;
    }

    let mut scores = Vec::with_capacity(validation.len());
    for (i, path) in validation.iter().enumerate() {
        scores.push(analyse(&mut extractor, &bank, &load_image(path)?)?.score);
        progress(Phase::Validation, i + 1, validation.len());
    }
    let calibration =
        Calibration::fit(&scores).map_err(|e| DetectorError::Image(format!("calibration: {e}")))?;
    let names = |paths: &[PathBuf]| paths.iter().map(|p| p.display().to_string()).collect();
    let header = ProfileHeader {
        model: identity,
        tiling: options.tiling.clone(),
        upsample: REFERENCE_UPSAMPLE,
        feature_dim: dim,
        stages,
        calibration,
        threshold: options.threshold,
        coreset_ratio: options.coreset_ratio,
        references: names(references),
        validation: names(validation),
        validation_scores: scores,
        created_by: concat!("logsad ", env!("CARGO_PKG_VERSION")).into(),
    };
    Ok((Profile { header, bank }, warnings))
}
