//! Enrollment: reference images -> memory banks; validation images -> calibration; both ->
//! profile. Also the presets of detectors.

use crate::detect::calibrate::{outliers, Calibration, CalibrationError, CalibrationMethod};
use crate::detect::copies::{is_near_copy, pixel_digest, PixelDigest, NEAR_COPY_DISTANCE};
use crate::detect::coreset::greedy_coreset;
use crate::detect::interest::InstanceEmbeddings;
use crate::detect::parts::{
    cell_colours, learn_mask_parts, learn_parts_with_colours, part_names, PartModel, PartOptions,
};
use crate::detect::patch::MemoryBank;
use crate::detect::rules::{
    learn_held_out_rules, learn_rules, parse_rules, LearnOptions, ReferenceStats, RuleFile,
};
use crate::detect::score::Reduction;
use crate::detect::tiling::{Neighbourhood, Tiling};
use crate::detectors::composition::{fired_rules, CompositionSpec};
use crate::detectors::interest::{self, InterestSpec};
use crate::detectors::patch::{self, PatchSpec, Pooling};
use crate::detectors::{DetectorSpec, EnrolledDetector, Learned};
use crate::engine::EngineOptions;
use crate::imageio::load_rgb;
use crate::inspector::{tiles_of, Extractor, InspectError, PartLayout, REFERENCE_UPSAMPLE};
use crate::profile::{Profile, ProfileHeader};
use std::path::{Path, PathBuf};

/// Full-data enrollment reduces the bank group by group, as the authors do, so memory stays
/// bounded by one group's patches.
pub const CORESET_GROUP: usize = 4;
/// `--tile-neighbourhood auto` keeps the smallest tile distance whose validation scores rise, on
/// average, by at most this fraction of the all-tiles validation spread (the calibration's
/// unit): a tenth of a deviation against a verdict threshold about three deviations out.
pub const NEIGHBOURHOOD_TOLERANCE: f64 = 0.1;
/// PatchCore projects features to this many dimensions before the k-center search.
const CORESET_PROJECTION: usize = 128;
/// Default verdict threshold: sigmoid(3), a score three validation standard deviations above
/// the validation mean.
pub const DEFAULT_THRESHOLD: f64 = 0.952_574_126_822_433_2;
/// Names accepted by [`preset`].
pub const PRESETS: [&str; 5] = [
    "faithful",
    "multiscale",
    "multiscale-embedding",
    "fast",
    "logsad",
];
/// The `fast` preset's coreset: a twentieth of the tiled branch's patches, below one bank row per
/// raw token, so matching multiplies by the kept rows (see `MemoryBank::is_sparse`).
pub const FAST_CORESET_RATIO: f32 = 0.05;

/// What a preset sets besides its detectors; each applies where the user gives no value of
/// their own.
#[derive(Debug, Clone, PartialEq)]
pub struct PresetDefaults {
    pub calibration: CalibrationMethod,
    pub coreset_ratio: Option<f32>,
    /// The name of the preset's own model (see `engine::installed_model`), where it has one.
    pub model: Option<&'static str>,
}

/// The defaults of preset `name`: for `fast` median/MAD calibration, the coreset of
/// [`FAST_CORESET_RATIO`] and the int8 backbone ([`crate::engine::INT8_MODEL`]); for the
/// others the reference's (mean and standard deviation, no coreset, the default model).
pub fn preset_defaults(name: &str) -> PresetDefaults {
    match name {
        "fast" => PresetDefaults {
            calibration: CalibrationMethod::MedianMad,
            coreset_ratio: Some(FAST_CORESET_RATIO),
            model: Some(crate::engine::INT8_MODEL),
        },
        _ => PresetDefaults {
            calibration: CalibrationMethod::MeanStd,
            coreset_ratio: None,
            model: None,
        },
    }
}

/// Detectors by preset name. `tiling` is the user's tiling, if any.
///
/// - `faithful`: one patch detector, the reference's (whole frame unless `tiling` is given).
/// - `multiscale`: a local patch detector (the maximum of a tiled map, 2x2 tiles unless `tiling`
///   is given) for small defects, and a global one (the mean of the whole-frame map) for changes
///   that cover the frame; each calibrated, fused by the largest calibrated score (eq. 5).
/// - `multiscale-embedding`: the same local detector, and as global one the distance of the
///   whole frame's mean-pooled tokens to the nearest reference frame's (per stage, averaged).
/// - `fast`: the detectors of `multiscale-embedding`, the local branch matching only the
///   reference tiles its `auto` tile neighbourhood keeps; [`preset_defaults`] adds median/MAD
///   calibration, a coreset that makes the local bank sparse and the int8 backbone.
/// - `logsad`: the paper's three detectors: the faithful patch detector (eq. 1), the interest
///   detector (eq. 2-3) and the composition rules (eq. 4) on the parts learned from the
///   references, fused as eq. 5.
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
        neighbourhood: Neighbourhood::All,
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
        "fast" => vec![
            PatchSpec {
                neighbourhood: Neighbourhood::Auto,
                ..local(tiling)
            },
            PatchSpec {
                name: "embedding-global".into(),
                pooling: Pooling::Mean,
                ..PatchSpec::faithful()
            },
        ],
        "logsad" => {
            let patch = PatchSpec {
                tiling: tiling.unwrap_or_else(Tiling::whole),
                ..PatchSpec::faithful()
            };
            return Ok(vec![
                DetectorSpec::Patch(patch),
                DetectorSpec::Interest(InterestSpec::default()),
                DetectorSpec::Composition(CompositionSpec::default()),
            ]);
        }
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
    /// How the parts are learned (interest and composition detectors).
    pub parts: PartOptions,
    /// How composition rules are learned from the references and validation images.
    pub rule_learning: LearnOptions,
    /// A rule file to use instead of learned rules (hand-edited rules win); its `parts` map
    /// also sets the number of parts when `parts.parts` is not given.
    pub rules: Option<PathBuf>,
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
            parts: PartOptions::default(),
            rule_learning: LearnOptions::default(),
            rules: None,
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
    // A bad rule file is refused before the model loads.
    check_rule_file(options)?;
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
        return Err(InspectError::Enrollment("no reference images".into()));
    }
    let rule_file = check_rule_file(options)?;
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
        .filter_map(|d| match d {
            DetectorSpec::Patch(spec) => Some(spec),
            _ => None,
        })
        .collect();
    let needs_parts = options.detectors.iter().any(DetectorSpec::needs_parts);
    if patch_specs.is_empty() {
        return Err(InspectError::Enrollment(
            "no patch detector: every profile needs one (its map is the one reported)".into(),
        ));
    }
    for spec in &patch_specs {
        spec.tiling.validate().map_err(|e| {
            InspectError::Enrollment(format!("detector {}: tiling: {e}", spec.name))
        })?;
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
    // The part stage runs on the whole frame, resized and resampled as the first patch
    // detector's frames (see `inspector::part_tiling`).
    let mut part_tiling = Tiling::whole();
    part_tiling.resize = patch_specs[0].tiling.resize;
    part_tiling.resample = patch_specs[0].tiling.resample;
    let mut all_tilings: Vec<Tiling> = kinds.iter().map(|k| k.tiling.clone()).collect();
    if needs_parts {
        all_tilings.push(part_tiling.clone());
    }
    let tilings = || all_tilings.iter();
    let mut reference_features = Vec::new();
    let mut reference_colours = Vec::new();
    // Kept for the part layouts once the parts are learned.
    let mut reference_images = Vec::new();
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
            let (features, _) = extractor.features_by_tiling(tilings(), &[&image])?;
            if needs_parts {
                let whole = tiles_of(&features, &part_tiling, 0)[0].clone();
                reference_colours.push(cell_colours(&image, whole.width(), whole.height()));
                reference_features.push(whole);
                reference_images.push(image.clone());
            }
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
    let parts = if needs_parts {
        Some(enroll_parts(
            &reference_features,
            &reference_colours,
            &reference_images,
            rule_file,
            options,
        )?)
    } else {
        None
    };
    let mut layouts: Vec<PartLayout> = Vec::new();
    let mut reference_instances = None;
    if let Some((parts, _)) = &parts {
        let mut union = InstanceEmbeddings::empty(stages, dim);
        for (features, image) in reference_features.iter().zip(&reference_images) {
            let layout = PartLayout::of(parts, features, image)?;
            let embeddings = interest::embed(features, &layout.labels, &layout.instances)
                .map_err(InspectError::Parts)?;
            union
                .append(&embeddings)
                .map_err(|e| InspectError::Parts(e.to_string()))?;
            layouts.push(layout);
        }
        if union.count == 0 {
            return Err(InspectError::Parts(
                "no part instance found on any reference image: the parts learned are all \
                 background or smaller than the smallest instance; set the number of parts \
                 (--parts) or use the faithful preset"
                    .into(),
            ));
        }
        reference_instances = Some(union);
    }
    let mut interest_scores = Vec::with_capacity(validation.len());

    // Each validation image is decoded once: checked for copies, then scored. Exact copies of
    // an earlier validation image count once (only the first is scored and listed).
    let mut scores = vec![Vec::with_capacity(validation.len()); patch_specs.len()];
    // Per patch detector with `auto` neighbourhood, per candidate distance, the validation scores.
    let mut candidate_scores: Vec<Vec<Vec<f64>>> = patch_specs
        .iter()
        .map(|spec| match spec.neighbourhood {
            Neighbourhood::Auto => vec![Vec::new(); Neighbourhood::candidates(&spec.tiling).len()],
            _ => Vec::new(),
        })
        .collect();
    let mut distinct: Vec<PathBuf> = Vec::with_capacity(validation.len());
    let mut validation_digests: Vec<PixelDigest> = Vec::with_capacity(validation.len());
    for (i, path) in validation.iter().enumerate() {
        let image = load_rgb(path)?;
        let digest = pixel_digest(&image);
        if let Some(r) = reference_digests.iter().position(|d| *d == digest) {
            return Err(InspectError::Enrollment(format!(
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
        let (features, _) = extractor.features_by_tiling(tilings(), &[&image])?;
        // Near copy: every patch of every patch-matching detector found in the bank.
        let mut near_copy = None;
        for (((spec, &bank), detector_scores), candidates) in patch_specs
            .iter()
            .zip(&bank_of)
            .zip(&mut scores)
            .zip(&mut candidate_scores)
        {
            let tiles = tiles_of(&features, &spec.tiling, 0);
            let score_with = |neighbourhood| {
                let spec = PatchSpec {
                    neighbourhood,
                    ..(*spec).clone()
                };
                patch::score(&spec, &banks[bank], tiles, &image, extractor.input_size())
                    .map_err(InspectError::Image)
            };
            let auto = spec.neighbourhood == Neighbourhood::Auto;
            let result = score_with(if auto {
                Neighbourhood::All
            } else {
                spec.neighbourhood
            })?;
            if spec.pooling == Pooling::None {
                near_copy = Some(near_copy.unwrap_or(true) && is_near_copy(&result.map));
            }
            detector_scores.push(result.raw);
            if auto {
                for (r, scores) in
                    Neighbourhood::candidates(&spec.tiling).zip(candidates.iter_mut())
                {
                    scores.push(score_with(Neighbourhood::Within(r))?.raw);
                }
            }
        }
        if let (Some((parts, _)), Some(references)) = (&parts, &reference_instances) {
            let whole = &tiles_of(&features, &part_tiling, 0)[0];
            let layout = PartLayout::of(parts, whole, &image)?;
            let score = interest::score(whole, &layout.labels, &layout.instances, references)
                .map_err(InspectError::Parts)?;
            interest_scores.push(score);
            layouts.push(layout);
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
    let calibrate = |name: &str, validation_scores: &[f64], warnings: &mut Vec<String>| {
        let calibration =
            Calibration::fit_with(validation_scores, options.calibration).map_err(|e| {
                let fix = match e {
                    CalibrationError::NoSpread { .. } => {
                        "; the validation images score alike on this detector: use more, \
                         varied anomaly-free images for --validation, not copies of each \
                         other or of the references"
                    }
                    _ => "",
                };
                InspectError::Enrollment(format!("calibration of detector {name}: {e}{fix}"))
            })?;
        // Median/MAD already keeps one odd image from widening the spread much.
        let remedy = match options.calibration {
            CalibrationMethod::MeanStd => " (or use --calibration median-mad)",
            CalibrationMethod::MedianMad => "",
        };
        for (i, deviations) in outliers(validation_scores) {
            warnings.push(format!(
                "validation image {} scores {:.1} robust deviations {} the others on detector \
                 {name}: an anomalous or damaged image, or a copy of a reference, widens the \
                 spread and mutes real defects; check it or leave it out of \
                 --validation{remedy}",
                validation[i].display(),
                deviations.abs(),
                if deviations > 0.0 { "above" } else { "below" },
            ));
        }
        Ok::<_, InspectError>(calibration)
    };
    // Resolve `auto` neighbourhoods: the chosen distance, and its validation scores.
    let mut resolved: Vec<PatchSpec> = Vec::with_capacity(patch_specs.len());
    for ((spec, all), candidates) in patch_specs.iter().zip(&mut scores).zip(candidate_scores) {
        let mut spec = (*spec).clone();
        if spec.neighbourhood == Neighbourhood::Auto {
            let spread = Calibration::fit_with(all, options.calibration)
                .map(|c| c.std)
                .unwrap_or(0.0);
            let (neighbourhood, chosen) = choose_neighbourhood(all, candidates, spread);
            spec.neighbourhood = neighbourhood;
            *all = chosen;
        }
        resolved.push(spec);
    }
    let mut patch_results = resolved.iter().zip(&bank_of).zip(scores);
    let mut detectors = Vec::with_capacity(options.detectors.len());
    for spec in &options.detectors {
        let detector = match spec {
            DetectorSpec::Patch(_) => {
                let ((spec, &bank), validation_scores) =
                    patch_results.next().expect("a result per patch detector");
                EnrolledDetector {
                    calibration: Some(calibrate(&spec.name, &validation_scores, &mut warnings)?),
                    learned: Learned::Patch {
                        spec: spec.clone(),
                        bank,
                    },
                    validation_scores,
                }
            }
            DetectorSpec::Interest(spec) => EnrolledDetector {
                calibration: Some(calibrate(&spec.name, &interest_scores, &mut warnings)?),
                learned: Learned::Interest {
                    spec: spec.clone(),
                    references: reference_instances.clone().expect("parts were learned"),
                },
                validation_scores: interest_scores.clone(),
            },
            DetectorSpec::Composition(spec) => {
                let (parts, file) = parts.as_ref().expect("parts were learned");
                let views: Vec<_> = layouts.iter().map(|l| l.view(&parts.names)).collect();
                let (rules, stats) = match file {
                    Some(rules) => (rules.clone(), ReferenceStats::from_layouts(&views)),
                    None => {
                        let learning = rule_learning(options, parts);
                        let learned = match learning.max_held_out_fires {
                            Some(max) => learn_held_out_rules(&views, &parts.names, &learning, max)
                                .map(|(rules, stats, unstable)| {
                                    if !unstable.is_empty() {
                                        let names: Vec<String> = unstable
                                            .iter()
                                            .map(|u| {
                                                format!(
                                                    "{} ({} of {})",
                                                    u.name, u.fired, u.held_out
                                                )
                                            })
                                            .collect();
                                        warnings.push(format!(
                                            "{} learned rules left out: they fired on good images \
                                             they did not learn from: {}",
                                            unstable.len(),
                                            names.join(", ")
                                        ));
                                    }
                                    (rules, stats)
                                }),
                            None => learn_rules(&views, &parts.names, &learning),
                        };
                        learned.map_err(|e| InspectError::Parts(format!("learning rules: {e}")))?
                    }
                };
                let mut fired_counts = Vec::with_capacity(validation.len());
                for (layout, path) in layouts[references.len()..].iter().zip(&validation) {
                    let fired = fired_rules(&rules, &stats, &layout.view(&parts.names));
                    if !fired.is_empty() {
                        let names: Vec<&str> = fired.iter().map(|f| f.message.as_str()).collect();
                        warnings.push(format!(
                            "validation image {} breaks rules of the rule file: {}; every \
                             frame like it will be flagged",
                            path.display(),
                            names.join("; ")
                        ));
                    }
                    fired_counts.push(fired.len() as f64);
                }
                EnrolledDetector {
                    calibration: None,
                    learned: Learned::Composition {
                        spec: spec.clone(),
                        rules,
                        stats,
                    },
                    validation_scores: fired_counts,
                }
            }
        };
        detectors.push(detector);
    }
    let names = |paths: &[PathBuf]| paths.iter().map(|p| p.display().to_string()).collect();
    let header = ProfileHeader {
        model: extractor.backbone().identity().clone(),
        upsample: REFERENCE_UPSAMPLE,
        feature_dim: dim,
        stages,
        detectors,
        parts: parts.map(|(parts, _)| parts),
        threshold: options.threshold,
        coreset_ratio: options.coreset_ratio,
        references: names(references),
        validation: names(&validation),
        created_by: concat!("logsad ", env!("CARGO_PKG_VERSION")).into(),
    };
    let profile = Profile { header, banks };
    Ok((profile, warnings))
}

/// The rule learning options for `parts`: at pixel resolution, the foreground components the
/// `components` rule counts are at least an instance's smallest area (a stray pixel is noise).
fn rule_learning(options: &EnrollOptions, parts: &PartModel) -> LearnOptions {
    let mut learning = options.rule_learning.clone();
    if parts.masks.is_some() {
        learning.min_component_cells = learning.min_component_cells.max(parts.min_cells);
    }
    learning
}

/// The `auto` tile neighbourhood: the smallest distance R (candidates in order 0, 1, ...) whose
/// validation scores exceed the all-tiles scores `all` by at most [`NEIGHBOURHOOD_TOLERANCE`] x
/// `spread` on average, with its scores; `All` and `all` when none does. Restricting the tiles
/// can only raise a score (fewer candidates for each nearest neighbour), so the mean increase
/// measures what the restriction loses on anomaly-free images.
pub fn choose_neighbourhood(
    all: &[f64],
    candidates: Vec<Vec<f64>>,
    spread: f64,
) -> (Neighbourhood, Vec<f64>) {
    for (r, scores) in candidates.into_iter().enumerate() {
        let increase =
            scores.iter().zip(all).map(|(s, a)| s - a).sum::<f64>() / all.len().max(1) as f64;
        if increase <= NEIGHBOURHOOD_TOLERANCE * spread {
            return (Neighbourhood::Within(r as u32), scores);
        }
    }
    (Neighbourhood::All, all.to_vec())
}

/// The refusal of a calibration on `distinct` distinct validation images out of `given`.
fn too_few_validation_images(distinct: usize, given: usize) -> InspectError {
    let copies = given - distinct;
    let copies = if copies > 0 {
        format!(" ({copies} of the {given} given are copies)")
    } else {
        String::new()
    };
    InspectError::Enrollment(format!(
        "calibration needs at least 2 distinct validation images, got {distinct}{copies}: add \
         other anomaly-free images to --validation"
    ))
}

/// The most part classes a profile can learn, the background included: more than a few
/// references can tell apart. A rule file's `parts` map asking for more (a mistyped index) is
/// refused before any clustering.
pub const MAX_PART_CLASSES: usize = 64;

/// A rule file read and checked against the part names the profile will have.
struct CheckedRuleFile {
    path: PathBuf,
    text: String,
    /// The part count (background included) the file's `parts` map sets, if any.
    parts: Option<usize>,
}

/// Reads `options.rules` and checks it before any expensive step (model, features,
/// clustering): the part count follows from `--parts`, else from the largest part index the
/// file's `parts` map names, else it is at most the automatic choice's largest; the names of
/// that many parts and, at pixel resolution, the most instances a frame can hold are checked
/// as [`parse_rules`] does. `None` without a rule file.
///
/// Errors ([`InspectError::Parts`]): an unreadable file, more than [`MAX_PART_CLASSES`]
/// part classes, and every [`parse_rules`] error that does not need the learned parts.
fn check_rule_file(options: &EnrollOptions) -> Result<Option<CheckedRuleFile>, InspectError> {
    let Some(path) = &options.rules else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        InspectError::Parts(format!("cannot read rule file {}: {e}", path.display()))
    })?;
    let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let largest_index = value
        .get("parts")
        .and_then(|p| p.as_object())
        .and_then(|map| map.values().filter_map(|v| v.as_u64()).max());
    let parts = options
        .parts
        .parts
        .map(|k| k as u64)
        .or(largest_index.map(|i| i.saturating_add(1)));
    let most_parts = parts.unwrap_or(options.parts.max_parts as u64);
    if most_parts > MAX_PART_CLASSES as u64 {
        let why = match (options.parts.parts, largest_index) {
            (Some(_), _) => "--parts asks".to_string(),
            (None, Some(i)) => format!("its parts map names index {i}, which asks"),
            (None, None) => "the automatic choice tries".to_string(),
        };
        return Err(InspectError::Parts(format!(
            "rule file {}: {why} for {most_parts} part classes (background included); at most \
             {MAX_PART_CLASSES} can be learned",
            path.display()
        )));
    }
    let max_instances = options
        .parts
        .masks
        .as_ref()
        .map(|stage| stage.max_instances());
    parse_rules(&text, path, &part_names(most_parts as usize), max_instances)
        .map_err(|e| InspectError::Parts(e.to_string()))?;
    Ok(Some(CheckedRuleFile {
        path: path.clone(),
        text,
        parts: parts.map(|k| k as usize),
    }))
}

/// Learns the parts from the references' whole-frame features, and reads the rule file if one
/// is given (its `parts` map sets the number of parts when the options do not).
fn enroll_parts(
    reference_features: &[crate::detect::features::PatchFeatures],
    reference_colours: &[Vec<f32>],
    reference_images: &[crate::detect::preprocess::RgbImage],
    rule_file: Option<CheckedRuleFile>,
    options: &EnrollOptions,
) -> Result<(PartModel, Option<RuleFile>), InspectError> {
    let mut part_options = options.parts.clone();
    if let Some(file) = &rule_file {
        part_options.parts = file.parts;
    }
    let parts = match part_options.masks {
        Some(_) => learn_mask_parts(reference_features, reference_images, &part_options),
        None => learn_parts_with_colours(reference_features, reference_colours, &part_options),
    }
    .map_err(|e| InspectError::Parts(format!("learning parts: {e}")))?;
    let rules = rule_file
        .map(|file| {
            parse_rules(
                &file.text,
                &file.path,
                &parts.names,
                Some(parts.max_instances()),
            )
        })
        .transpose()
        .map_err(|e| InspectError::Parts(e.to_string()))?;
    Ok((parts, rules))
}
