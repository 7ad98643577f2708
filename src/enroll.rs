//! Enrollment: reference images -> memory banks; validation images -> calibration; both ->
//! profile. Also the presets of detector branches.

use crate::detect::calibrate::{outliers, Calibration, CalibrationError, CalibrationMethod};
use crate::detect::copies::{is_near_copy, pixel_digest, PixelDigest, NEAR_COPY_DISTANCE};
use crate::detect::coreset::greedy_coreset;
use crate::detect::patch::MemoryBank;
use crate::detect::score::Reduction;
use crate::detect::tiling::Tiling;
use crate::detector::{
    features_by_tiling, score_branch, tiles_of, DetectorError, Extractor, REFERENCE_UPSAMPLE,
};
use crate::engine::{Backbone, EngineOptions, Manifest};
use crate::imageio::load_rgb;
use crate::profile::{Branch, BranchSpec, Pooling, Profile, ProfileHeader};
use std::path::{Path, PathBuf};

/// Full-data enrollment reduces the bank group by group, as the authors do, so memory stays
/// bounded by one group's patches.
pub const CORESET_GROUP: usize = 4;
/// PatchCore projects features to this many dimensions before the k-center search.
const CORESET_PROJECTION: usize = 128;
/// Default verdict threshold: sigmoid(3), a score three validation standard deviations above
/// the validation mean.
pub const DEFAULT_THRESHOLD: f64 = 0.952_574_126_822_433_2;
/// Names accepted by [`preset`].
pub const PRESETS: [&str; 3] = ["faithful", "multiscale", "multiscale-embedding"];

/// Detector branches by preset name. `tiling` is the user's tiling, if any.
///
/// - `faithful`: one branch, the reference detector (whole frame unless `tiling` is given).
/// - `multiscale`: a local branch (the maximum of a tiled map, 2x2 tiles unless `tiling` is
///   given) for small defects, and a global branch (the mean of the whole-frame map) for changes
///   that cover the frame; each calibrated, fused by the largest calibrated score (eq. 5).
/// - `multiscale-embedding`: the same local branch, and as global branch the distance of the
///   whole frame's mean-pooled tokens to the nearest reference frame's (per stage, averaged).
pub fn preset(name: &str, tiling: Option<Tiling>) -> Result<Vec<BranchSpec>, String> {
    let local = |tiling: Option<Tiling>| BranchSpec {
        name: "patch-local".into(),
        tiling: tiling.unwrap_or(Tiling {
            rows: 2,
            cols: 2,
            ..Tiling::whole()
        }),
        score: Reduction::Max,
        smoothing: 0.0,
        pooling: Pooling::None,
    };
    match name {
        "faithful" => Ok(vec![BranchSpec {
            tiling: tiling.unwrap_or_else(Tiling::whole),
            ..BranchSpec::faithful()
        }]),
        "multiscale" => Ok(vec![
            local(tiling),
            BranchSpec {
                name: "patch-global".into(),
                score: Reduction::Mean,
                ..BranchSpec::faithful()
            },
        ]),
        "multiscale-embedding" => Ok(vec![
            local(tiling),
            BranchSpec {
                name: "embedding-global".into(),
                pooling: Pooling::Mean,
                ..BranchSpec::faithful()
            },
        ]),
        other => Err(format!("unknown preset {other:?} (one of {PRESETS:?})")),
    }
}

#[derive(Debug, Clone)]
pub struct EnrollOptions {
    pub branches: Vec<BranchSpec>,
    pub coreset_ratio: Option<f32>,
    pub threshold: f64,
    pub seed: u64,
    pub engine: EngineOptions,
    /// How each branch's validation scores are summarised.
    pub calibration: CalibrationMethod,
}

impl Default for EnrollOptions {
    fn default() -> Self {
        EnrollOptions {
            branches: vec![BranchSpec::faithful()],
            coreset_ratio: None,
            threshold: DEFAULT_THRESHOLD,
            seed: 0,
            engine: EngineOptions::default(),
            calibration: CalibrationMethod::MeanStd,
        }
    }
}

/// What enrollment is doing, for progress reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    References,
    Validation,
}

/// Loads the model of `manifest_path` for enrollment.
pub fn load_extractor(
    manifest_path: &Path,
    engine: &EngineOptions,
) -> Result<(Extractor, Vec<String>), DetectorError> {
    let manifest = Manifest::load(manifest_path).map_err(crate::engine::EngineError::from)?;
    let (backbone, warnings) = Backbone::load(manifest, engine)?;
    Ok((Extractor::new(backbone, REFERENCE_UPSAMPLE), warnings))
}

/// Builds a profile. `progress(phase, done, total)` is called after each image.
pub fn enroll(
    manifest_path: &Path,
    references: &[PathBuf],
    validation: &[PathBuf],
    options: &EnrollOptions,
    progress: &mut dyn FnMut(Phase, usize, usize),
) -> Result<(Profile, Vec<String>), DetectorError> {
    let (mut extractor, mut warnings) = load_extractor(manifest_path, &options.engine)?;
    let (profile, more) = enroll_with(&mut extractor, references, validation, options, progress)?;
    warnings.extend(more);
    Ok((profile, warnings))
}

/// Builds a profile with an already loaded model (evaluation reuses one across categories).
/// Returns it with warnings about the inputs.
///
/// Refuses inputs a calibration cannot stand on, naming the files and the fix: fewer than 2
/// distinct validation images (exact copies among them count once, and only the first is
/// scored and listed in the profile), a validation image with the same pixels as a reference,
/// and a branch whose validation scores do not spread (see [`Calibration::fit_with`]). Warns
/// about references that are copies of each other and validation images that match the
/// references almost exactly ([`is_near_copy`] on every patch-matching branch) and validation
/// scores far from the others ([`outliers`]).
pub fn enroll_with(
    extractor: &mut Extractor,
    references: &[PathBuf],
    validation: &[PathBuf],
    options: &EnrollOptions,
    progress: &mut dyn FnMut(Phase, usize, usize),
) -> Result<(Profile, Vec<String>), DetectorError> {
    if references.is_empty() {
        return Err(DetectorError::Image("no reference images".into()));
    }
    if validation.len() < 2 {
        return Err(too_few_validation_images(
            validation.len(),
            validation.len(),
        ));
    }
    let mut warnings = Vec::new();
    if options.branches.is_empty() {
        return Err(DetectorError::Image("no detector branches".into()));
    }
    for spec in &options.branches {
        spec.tiling
            .validate()
            .map_err(|e| DetectorError::Image(format!("branch {}: tiling: {e}", spec.name)))?;
    }
    let manifest = extractor.backbone().manifest();
    let (dim, stages) = (manifest.feature_dim, manifest.stage_outputs.len());
    let grid = (manifest.tokens.grid_height, manifest.tokens.grid_width);
    let new_bank = |pooling: Pooling| {
        let ((h, w), upsample) = pooling.bank_grid(grid, REFERENCE_UPSAMPLE);
        MemoryBank::new(stages, dim, h, w, upsample)
    };
    let specs: Vec<&BranchSpec> = options.branches.iter().collect();
    // A bank per distinct (tiling, pooling), built group by group.
    let mut kinds: Vec<(Tiling, Pooling)> = Vec::new();
    for spec in &specs {
        let kind = (spec.tiling.clone(), spec.pooling);
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    let mut banks: Vec<MemoryBank> = kinds.iter().map(|(_, p)| new_bank(*p)).collect();
    let mut reference_digests: Vec<PixelDigest> = Vec::with_capacity(references.len());
    for (group_index, group) in references.chunks(CORESET_GROUP).enumerate() {
        let mut group_banks: Vec<MemoryBank> = kinds.iter().map(|(_, p)| new_bank(*p)).collect();
        for (i, path) in group.iter().enumerate() {
            let image = load_rgb(path)?;
            let digest = pixel_digest(&image);
            if let Some(r) = reference_digests.iter().position(|d| *d == digest) {
                warnings.push(format!(
                    "reference {} is a copy of reference {} (same pixels): it adds nothing to the \
                     bank; use another anomaly-free image",
                    path.display(),
                    references[r].display()
                ));
            }
            reference_digests.push(digest);
            let features = features_by_tiling(extractor, &specs, &[&image])?;
            for ((tiling, pooling), bank) in kinds.iter().zip(&mut group_banks) {
                for tile in tiles_of(&features, tiling, 0) {
                    match pooling {
                        Pooling::None => bank.push(tile),
                        Pooling::Mean => bank.push(&tile.mean_pooled()),
                    }
                }
            }
            progress(
                Phase::References,
                group_index * CORESET_GROUP + i + 1,
                references.len(),
            );
        }
        for (((_, pooling), group_bank), bank) in kinds.iter().zip(group_banks).zip(&mut banks) {
            // Pooled banks hold one vector per reference tile: nothing to reduce.
            let reduced = match (options.coreset_ratio, pooling) {
                (Some(ratio), Pooling::None) => {
                    let all = group_bank.concatenated();
                    let view =
                        ndarray::ArrayView2::from_shape((group_bank.len(), stages * dim), &all)
                            .expect("bank rows are contiguous");
                    let seed = options.seed + group_index as u64;
                    group_bank.select(&greedy_coreset(view, ratio, Some(CORESET_PROJECTION), seed))
                }
                _ => group_bank,
            };
            bank.append(&reduced);
        }
    }
    let bank_for = |spec: &BranchSpec| {
        let kind = (spec.tiling.clone(), spec.pooling);
        let index = kinds.iter().position(|k| *k == kind);
        banks[index.expect("a bank for every branch")].clone()
    };
    let branch_banks: Vec<MemoryBank> = options.branches.iter().map(bank_for).collect();

    // Each validation image is decoded once: checked for copies, then scored. Exact copies of
    // an earlier validation image count once (only the first is scored and listed).
    let mut scores = vec![Vec::with_capacity(validation.len()); options.branches.len()];
    let mut distinct: Vec<PathBuf> = Vec::with_capacity(validation.len());
    let mut validation_digests: Vec<PixelDigest> = Vec::with_capacity(validation.len());
    for (i, path) in validation.iter().enumerate() {
        let image = load_rgb(path)?;
        let digest = pixel_digest(&image);
        if let Some(r) = reference_digests.iter().position(|d| *d == digest) {
            return Err(DetectorError::Image(format!(
                "validation image {} is a copy of reference {} (same pixels): use other \
                 anomaly-free images for --validation",
                path.display(),
                references[r].display()
            )));
        }
        if let Some(first) = validation_digests.iter().position(|d| *d == digest) {
            warnings.push(format!(
                "validation image {} is a copy of validation image {} (same pixels): it is \
                 counted once",
                path.display(),
                distinct[first].display()
            ));
            progress(Phase::Validation, i + 1, validation.len());
            continue;
        }
        validation_digests.push(digest);
        distinct.push(path.clone());
        let features = features_by_tiling(extractor, &specs, &[&image])?;
        // Near copy: every patch of every patch-matching branch found in the bank.
        let mut near_copy = None;
        for ((spec, bank), branch_scores) in specs.iter().zip(&branch_banks).zip(&mut scores) {
            let tiles = tiles_of(&features, &spec.tiling, 0);
            let result = score_branch(spec, bank, tiles, &image, extractor.input_size())?;
            if spec.pooling == Pooling::None {
                near_copy = Some(near_copy.unwrap_or(true) && is_near_copy(&result.map));
            }
            branch_scores.push(result.raw);
        }
        if near_copy == Some(true) {
            warnings.push(format!(
                "validation image {} matches the references almost exactly (every patch within \
                 cosine distance {NEAR_COPY_DISTANCE} of the bank): it is probably a copy of a \
                 reference; use other anomaly-free images for --validation",
                path.display()
            ));
        }
        progress(Phase::Validation, i + 1, validation.len());
    }
    if distinct.len() < 2 {
        return Err(too_few_validation_images(distinct.len(), validation.len()));
    }
    let validation = distinct;
    let branches = options
        .branches
        .iter()
        .zip(scores)
        .map(|(spec, validation_scores)| {
            let calibration = Calibration::fit_with(&validation_scores, options.calibration)
                .map_err(|e| {
                    let fix = match e {
                        CalibrationError::NoSpread { .. } => {
                            "; the validation images score alike on this branch: use more, \
                             varied anomaly-free images for --validation, not copies of each \
                             other or of the references"
                        }
                        _ => "",
                    };
                    DetectorError::Image(format!("calibration of branch {}: {e}{fix}", spec.name))
                })?;
            for (i, deviations) in outliers(&validation_scores) {
                warnings.push(format!(
                    "validation image {} scores {:.1} robust deviations {} the others on branch \
                     {}: an anomalous or damaged image, or a copy of a reference, widens the \
                     spread and mutes real defects; check it or leave it out of --validation \
                     (or use --calibration median-mad)",
                    validation[i].display(),
                    deviations.abs(),
                    if deviations > 0.0 { "above" } else { "below" },
                    spec.name
                ));
            }
            Ok(Branch {
                spec: spec.clone(),
                calibration,
                validation_scores,
            })
        })
        .collect::<Result<Vec<_>, DetectorError>>()?;
    let names = |paths: &[PathBuf]| paths.iter().map(|p| p.display().to_string()).collect();
    let header = ProfileHeader {
        model: extractor.backbone().identity().clone(),
        upsample: REFERENCE_UPSAMPLE,
        feature_dim: dim,
        stages,
        branches,
        threshold: options.threshold,
        coreset_ratio: options.coreset_ratio,
        references: names(references),
        validation: names(&validation),
        created_by: concat!("logsad ", env!("CARGO_PKG_VERSION")).into(),
    };
    let profile = Profile {
        header,
        banks: branch_banks,
    };
    Ok((profile, warnings))
}

/// The refusal of a calibration on `distinct` distinct validation images out of `given`.
fn too_few_validation_images(distinct: usize, given: usize) -> DetectorError {
    let copies = given - distinct;
    let copies = if copies > 0 {
        format!(" ({copies} of the {given} given are copies)")
    } else {
        String::new()
    };
    DetectorError::Image(format!(
        "calibration needs at least 2 distinct validation images, got {distinct}{copies}: add \
         other anomaly-free images to --validation"
    ))
}
