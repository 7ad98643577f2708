//! Enrollment: reference images -> memory banks; validation images -> calibration; both ->
//! profile. Also the presets of detectors.

use crate::detect::calibrate::{outliers, Calibration, CalibrationError, CalibrationMethod};
use crate::detect::copies::{is_near_copy, pixel_digest, PixelDigest, NEAR_COPY_DISTANCE};
use crate::detect::coreset::greedy_coreset;
use crate::detect::patch::MemoryBank;
use crate::detect::score::Reduction;
use crate::detect::tiling::Tiling;
use crate::detectors::patch::{self, PatchSpec, Pooling};
use crate::detectors::{DetectorSpec, EnrolledDetector, Learned};
use crate::engine::EngineOptions;
use crate::imageio::load_rgb;
use crate::inspector::{tiles_of, Extractor, InspectError, REFERENCE_UPSAMPLE};
use crate::profile::{Profile, ProfileHeader};
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

/// Detectors by preset name. `tiling` is the user's tiling, if any.
///
/// - `faithful`: one patch detector, the reference's (whole frame unless `tiling` is given).
/// - `multiscale`: a local patch detector (the maximum of a tiled map, 2x2 tiles unless `tiling`
///   is given) for small defects, and a global one (the mean of the whole-frame map) for changes
///   that cover the frame; each calibrated, fused by the largest calibrated score (eq. 5).
/// - `multiscale-embedding`: the same local detector, and as global one the distance of the
///   whole frame's mean-pooled tokens to the nearest reference frame's (per stage, averaged).
pub fn preset(name: &str, tiling: Option<Tiling>) -> Result<Vec<DetectorSpec>, String> {
    let local = |tiling: Option<Tiling>| PatchSpec {
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
    let patches = match name {
        "faithful" => vec![PatchSpec {
            tiling: tiling.unwrap_or_else(Tiling::whole),
            ..PatchSpec::faithful()
        }],
        "multiscale" => vec![
            local(tiling),
            PatchSpec {
                name: "patch-global".into(),
                score: Reduction::Mean,
                ..PatchSpec::faithful()
            },
        ],
        "multiscale-embedding" => vec![
            local(tiling),
            PatchSpec {
                name: "embedding-global".into(),
                pooling: Pooling::Mean,
                ..PatchSpec::faithful()
            },
        ],
        other => return Err(format!("unknown preset {other:?} (one of {PRESETS:?})")),
    };
    Ok(patches.into_iter().map(DetectorSpec::Patch).collect())
}

#[derive(Debug, Clone)]
pub struct EnrollOptions {
    pub detectors: Vec<DetectorSpec>,
    pub coreset_ratio: Option<f32>,
    pub threshold: f64,
    pub seed: u64,
    pub engine: EngineOptions,
    /// How each detector's validation scores are summarised.
    pub calibration: CalibrationMethod,
}

impl Default for EnrollOptions {
    fn default() -> Self {
        EnrollOptions {
            detectors: vec![DetectorSpec::Patch(PatchSpec::faithful())],
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

/// Builds a profile. `progress(phase, done, total)` is called after each image.
pub fn enroll(
    manifest_path: &Path,
    references: &[PathBuf],
    validation: &[PathBuf],
    options: &EnrollOptions,
    progress: &mut dyn FnMut(Phase, usize, usize),
) -> Result<(Profile, Vec<String>), InspectError> {
    let (mut extractor, mut warnings) = Extractor::load(manifest_path, &options.engine)?;
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
/// and a detector whose validation scores do not spread (see [`Calibration::fit_with`]). Warns
/// about references that are copies of each other and validation images that match the
/// references almost exactly ([`is_near_copy`] on every patch-matching detector) and validation
/// scores far from the others ([`outliers`]).
pub fn enroll_with(
    extractor: &mut Extractor,
    references: &[PathBuf],
    validation: &[PathBuf],
    options: &EnrollOptions,
    progress: &mut dyn FnMut(Phase, usize, usize),
) -> Result<(Profile, Vec<String>), InspectError> {
    if references.is_empty() {
        return Err(InspectError::Image("no reference images".into()));
    }
    if validation.len() < 2 {
        return Err(too_few_validation_images(
            validation.len(),
            validation.len(),
        ));
    }
    let mut warnings = Vec::new();
    let patch_specs: Vec<&PatchSpec> = options
        .detectors
        .iter()
        .map(|d| match d {
            DetectorSpec::Patch(spec) => spec,
        })
        .collect();
    if patch_specs.is_empty() {
        return Err(InspectError::Image(
            "no patch detector: every profile needs one (its map is the one reported)".into(),
        ));
    }
    for spec in &patch_specs {
        spec.tiling
            .validate()
            .map_err(|e| InspectError::Image(format!("detector {}: tiling: {e}", spec.name)))?;
    }
    let manifest = extractor.backbone().manifest();
    let (dim, stages) = (manifest.feature_dim, manifest.stage_outputs.len());
    let grid = (manifest.tokens.grid_height, manifest.tokens.grid_width);
    let new_bank = |pooling: Pooling| {
        let ((h, w), upsample) = pooling.bank_grid(grid, REFERENCE_UPSAMPLE);
        MemoryBank::new(stages, dim, h, w, upsample)
    };
    // One bank per distinct (tiling, pooling), built group by group; detectors that agree on
    // both share it. `bank_of[i]` is patch detector i's bank.
    let mut kinds: Vec<&PatchSpec> = Vec::new();
    let bank_of: Vec<usize> = patch_specs
        .iter()
        .map(|spec| match kinds.iter().position(|k| k.same_bank(spec)) {
            Some(i) => i,
            None => {
                kinds.push(spec);
                kinds.len() - 1
            }
        })
        .collect();
    let tilings = || kinds.iter().map(|k| &k.tiling);
    let mut banks: Vec<MemoryBank> = kinds.iter().map(|k| new_bank(k.pooling)).collect();
    let mut reference_digests: Vec<PixelDigest> = Vec::with_capacity(references.len());
    for (group_index, group) in references.chunks(CORESET_GROUP).enumerate() {
        let mut group_banks: Vec<MemoryBank> = kinds.iter().map(|k| new_bank(k.pooling)).collect();
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
            let features = extractor.features_by_tiling(tilings(), &[&image])?;
            for (kind, bank) in kinds.iter().zip(&mut group_banks) {
                for tile in tiles_of(&features, &kind.tiling, 0) {
                    match kind.pooling {
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
        for ((kind, group_bank), bank) in kinds.iter().zip(group_banks).zip(&mut banks) {
            // Pooled banks hold one vector per reference tile: nothing to reduce.
            let reduced = match (options.coreset_ratio, kind.pooling) {
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
    // Each validation image is decoded once: checked for copies, then scored. Exact copies of
    // an earlier validation image count once (only the first is scored and listed).
    let mut scores = vec![Vec::with_capacity(validation.len()); patch_specs.len()];
    let mut distinct: Vec<PathBuf> = Vec::with_capacity(validation.len());
    let mut validation_digests: Vec<PixelDigest> = Vec::with_capacity(validation.len());
    for (i, path) in validation.iter().enumerate() {
        let image = load_rgb(path)?;
        let digest = pixel_digest(&image);
        if let Some(r) = reference_digests.iter().position(|d| *d == digest) {
            return Err(InspectError::Image(format!(
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
        let features = extractor.features_by_tiling(tilings(), &[&image])?;
        // Near copy: every patch of every patch-matching detector found in the bank.
        let mut near_copy = None;
        for ((spec, &bank), detector_scores) in patch_specs.iter().zip(&bank_of).zip(&mut scores) {
            let tiles = tiles_of(&features, &spec.tiling, 0);
            let result = patch::score(spec, &banks[bank], tiles, &image, extractor.input_size())
                .map_err(InspectError::Image)?;
            if spec.pooling == Pooling::None {
                near_copy = Some(near_copy.unwrap_or(true) && is_near_copy(&result.map));
            }
            detector_scores.push(result.raw);
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
    let detectors = patch_specs
        .iter()
        .zip(&bank_of)
        .zip(scores)
        .map(|((spec, &bank), validation_scores)| {
            let calibration = Calibration::fit_with(&validation_scores, options.calibration)
                .map_err(|e| {
                    let fix = match e {
                        CalibrationError::NoSpread { .. } => {
                            "; the validation images score alike on this detector: use more, \
                             varied anomaly-free images for --validation, not copies of each \
                             other or of the references"
                        }
                        _ => "",
                    };
                    InspectError::Image(format!("calibration of detector {}: {e}{fix}", spec.name))
                })?;
            for (i, deviations) in outliers(&validation_scores) {
                warnings.push(format!(
                    "validation image {} scores {:.1} robust deviations {} the others on detector \
                     {}: an anomalous or damaged image, or a copy of a reference, widens the \
                     spread and mutes real defects; check it or leave it out of --validation \
                     (or use --calibration median-mad)",
                    validation[i].display(),
                    deviations.abs(),
                    if deviations > 0.0 { "above" } else { "below" },
                    spec.name
                ));
            }
            Ok(EnrolledDetector {
                learned: Learned::Patch {
                    spec: (*spec).clone(),
                    bank,
                },
                calibration: Some(calibration),
                validation_scores,
            })
        })
        .collect::<Result<Vec<_>, InspectError>>()?;
    let names = |paths: &[PathBuf]| paths.iter().map(|p| p.display().to_string()).collect();
    let header = ProfileHeader {
        model: extractor.backbone().identity().clone(),
        upsample: REFERENCE_UPSAMPLE,
        feature_dim: dim,
        stages,
        detectors,
        threshold: options.threshold,
        coreset_ratio: options.coreset_ratio,
        references: names(references),
        validation: names(&validation),
        created_by: concat!("logsad ", env!("CARGO_PKG_VERSION")).into(),
    };
    let profile = Profile { header, banks };
    Ok((profile, warnings))
}

/// The refusal of a calibration on `distinct` distinct validation images out of `given`.
fn too_few_validation_images(distinct: usize, given: usize) -> InspectError {
    let copies = given - distinct;
    let copies = if copies > 0 {
        format!(" ({copies} of the {given} given are copies)")
    } else {
        String::new()
    };
    InspectError::Image(format!(
        "calibration needs at least 2 distinct validation images, got {distinct}{copies}: add \
         other anomaly-free images to --validation"
    ))
}
