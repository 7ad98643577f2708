//! Parts without text: the part classes of a product learned by clustering the reference
//! images' patch features, a part label per cell of a frame, and each part's instances
//! (connected components), as the LogSAD reference finds them after segmentation.
//!
//! The grid is the upsampled patch grid of the features given ([`PatchFeatures::width`] x
//! [`PatchFeatures::height`]); a [`PartModel`] labels only features of the grid it was learned at.
//! Clustering: [`learn_parts`]; labelling: [`PartModel::label`]; instances:
//! [`PartModel::instances`] with [`components`], [`dilate`] and [`erode`]; a picture:
//! [`render_parts`].

mod kmeans;
mod masks;
mod morphology;
mod render;

pub use masks::{
    average_linkage, cut, learn_mask_parts, project_instances, segment_features, MaskStage, Merge,
    MASK_COLOUR_WEIGHT, MAX_CLUSTERED_SEGMENTS,
};
pub use morphology::{components, dilate, erode};
pub use render::{part_colour, render_parts};

use super::features::{normalise_rows, PatchFeatures};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

/// One part class per cell of the part grid (row-major, `width * height`).
#[derive(Debug, Clone, PartialEq)]
pub struct LabelMap {
    pub width: usize,
    pub height: usize,
    /// Part index per cell; [`LabelMap::background`] marks the background.
    pub labels: Vec<u16>,
    /// The background part's index.
    pub background: u16,
}

/// Which neighbours join cells into one component.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Connectivity {
    /// Edge neighbours only.
    Four,
    /// Edge and corner neighbours (the reference counts pins 8-connected).
    #[default]
    Eight,
}

/// One connected instance of a part on the part grid.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    /// Part index.
    pub part: u16,
    /// Indices of its cells in the [`LabelMap`], ascending.
    pub cells: Vec<u32>,
    /// Centre of mass in cells (x, y), cell centres at +0.5.
    pub centroid: (f32, f32),
}

impl Instance {
    /// Area in cells.
    pub fn area(&self) -> usize {
        self.cells.len()
    }
}

/// Cells of the silhouette subsample when the number of parts is chosen automatically.
pub const SILHOUETTE_SAMPLE: usize = 2000;

/// Why parts could not be learned, labelled, grouped or drawn.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PartError {
    #[error("no reference images to learn the parts from")]
    NoReferences,
    #[error("no feature stages chosen for the part features")]
    NoStages,
    #[error("feature stage {stage} does not exist: the features have {stages} stages")]
    StageOutOfRange { stage: usize, stages: usize },
    #[error(
        "stage {stage} holds {values} values, but a {height}x{width} token grid of {dim}-d \
         tokens needs {expected}"
    )]
    TokenCount {
        stage: usize,
        values: usize,
        width: usize,
        height: usize,
        dim: usize,
        expected: usize,
    },
    #[error(
        "reference {index} has a {width}x{height} grid of {dim}-d features, reference 0 a \
         {first_width}x{first_height} grid of {first_dim}-d features"
    )]
    MismatchedReferences {
        index: usize,
        width: usize,
        height: usize,
        dim: usize,
        first_width: usize,
        first_height: usize,
        first_dim: usize,
    },
    #[error(
        "{parts} parts asked for: at least 2 (the background and one part) and at most the \
         {cells} cells of the references (and {max})",
        max = u16::MAX
    )]
    PartCount { parts: usize, cells: usize },
    #[error("max_parts is {0}, but automatic part counts start at 2")]
    MaxParts(usize),
    #[error("the reference features do not separate into 2 clusters (all cells alike)")]
    Indistinct,
    #[error(
        "the part model was learned on a {model_width}x{model_height} grid, the features give \
         {width}x{height}"
    )]
    GridMismatch {
        model_width: usize,
        model_height: usize,
        width: usize,
        height: usize,
    },
    #[error(
        "the part model's centres are {model}-dimensional, but stages {stages:?} of these \
         features give {features}-dimensional cells (learned with another model?)"
    )]
    DimMismatch {
        model: usize,
        features: usize,
        stages: Vec<usize>,
    },
    #[error("a label map of {width}x{height} cells holds {labels} labels")]
    LabelCount {
        labels: usize,
        width: usize,
        height: usize,
    },
    #[error("a mask of {cells} cells does not cover a {width}x{height} grid")]
    MaskSize {
        cells: usize,
        width: usize,
        height: usize,
    },
    #[error("a {width}x{height} RGB image needs {expected} bytes, it holds {bytes}")]
    ImageSize {
        width: u32,
        height: u32,
        bytes: usize,
        expected: usize,
    },
    #[error("invalid part model: {0}")]
    InvalidModel(String),
}

/// The order of the optional morphology applied to each part's mask before its components.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Morphology {
    /// Dilation by `dilation` then erosion by `erosion` (a closing when the radii are equal:
    /// joins pieces up to `2 * radius` cells apart). With `erosion` 0 a plain dilation, as the
    /// reference's 3x3 dilation of the pin mask.
    #[default]
    Closing,
    /// Erosion by `erosion` then dilation by `dilation` (an opening when the radii are equal:
    /// removes bridges and specks thinner than `2 * radius + 1` cells).
    Opening,
}

/// How [`learn_parts`] clusters and how instances are formed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PartOptions {
    /// Number of part classes including the background; `None` chooses it automatically (see
    /// [`learn_parts`]).
    pub parts: Option<usize>,
    /// Feature stages concatenated into the clustering features (default the first two, as the
    /// authors cluster CLIP stage 1+2 features).
    pub stages: Vec<usize>,
    /// Seed of the k-means++ seeding.
    pub seed: u64,
    /// k-means runs per number of parts; the lowest inertia is kept.
    pub restarts: usize,
    /// Smallest instance kept, in cells (default 9: the reference drops components of <= 8
    /// cells of its 64x64 grid); also the smallest mean cell count per reference image of a
    /// kept part.
    pub min_cells: usize,
    pub connectivity: Connectivity,
    pub morphology: Morphology,
    /// Dilation radius in cells (square of `2r + 1`), 0 = none.
    pub dilation: usize,
    /// Erosion radius in cells (square of `2r + 1`), 0 = none.
    pub erosion: usize,
    /// Largest number of parts (including the background) the automatic choice tries.
    pub max_parts: usize,
    /// Weight of each cell's mean colour (RGB, 0..1 per channel), appended to the unit-length
    /// feature vector of the cell: parts that differ mainly in colour (a yellow and a blue
    /// cable, an orange and a purple juice) fall into different classes. 0: features alone (the
    /// reference clusters CLIP features, which carry colour more strongly than DINOv2's).
    /// At pixel resolution (`masks`), the weight of each segment's mean CIELAB colour.
    pub colour_weight: f32,
    /// Parts at pixel resolution: the mask stage that segments frames, whose segments are
    /// clustered and labelled ([`learn_mask_parts`]); `None`: cells of the token grid are.
    pub masks: Option<MaskStage>,
}

impl PartOptions {
    /// Parts at pixel resolution with the default mask stage and colour weight
    /// ([`MASK_COLOUR_WEIGHT`]): what `logsad enroll --preset logsad` uses unless told otherwise.
    pub fn pixels() -> Self {
        PartOptions {
            colour_weight: MASK_COLOUR_WEIGHT,
            masks: Some(MaskStage::default()),
            ..PartOptions::default()
        }
    }
}

impl Default for PartOptions {
    fn default() -> Self {
        PartOptions {
            parts: None,
            stages: vec![0, 1],
            seed: 0,
            restarts: 4,
            min_cells: 9,
            connectivity: Connectivity::default(),
            morphology: Morphology::default(),
            dilation: 0,
            erosion: 0,
            max_parts: 8,
            colour_weight: 0.0,
            masks: None,
        }
    }
}

/// The part classes of a product: k-means centres of the reference images' cell features
/// ([`cell_features`]), one of them the background, and how instances are formed. Stored in the
/// profile's JSON header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartModel {
    /// Cluster centres, `parts x dim` in the [`cell_features`] space of `stages`. Index 0 is the
    /// background as learned, the others follow by decreasing cell count in the references.
    pub centres: Vec<Vec<f32>>,
    /// Index of the background part.
    pub background: u16,
    /// One name per part: `part<i>`, the background `background`.
    pub names: Vec<String>,
    /// Feature stages concatenated into the cell features.
    pub stages: Vec<usize>,
    /// Smallest instance kept, in cells.
    pub min_cells: usize,
    pub connectivity: Connectivity,
    #[serde(default)]
    pub morphology: Morphology,
    /// Dilation radius in cells, 0 = none.
    #[serde(default)]
    pub dilation: usize,
    /// Erosion radius in cells, 0 = none.
    #[serde(default)]
    pub erosion: usize,
    /// The upsampled patch grid (cells) the parts were learned at and label at.
    pub width: usize,
    pub height: usize,
    /// Weight of the cells' mean colour in the clustering features ([`PartOptions`]); the
    /// centres then end in 3 colour components.
    #[serde(default)]
    pub colour_weight: f32,
    /// Parts at pixel resolution: frames are segmented by this mask stage and the segments
    /// labelled ([`PartModel::label_pixels`]); the label map then has the mask generator's
    /// working size, and `min_cells` counts its pixels. `None`: cells of the grid are labelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masks: Option<MaskStage>,
}

/// The mean colour of every cell of a `width x height` grid laid over the whole `image` (the
/// frame as the model sees it when squashed): row-major, 3 values (R, G, B in 0..1) per cell.
pub fn cell_colours(
    image: &crate::detect::preprocess::RgbImage,
    width: usize,
    height: usize,
) -> Vec<f32> {
    let (w, h) = (image.width as usize, image.height as usize);
    let mut out = Vec::with_capacity(width * height * 3);
    for cy in 0..height {
        let (y0, y1) = (
            cy * h / height,
            ((cy + 1) * h / height).max(cy * h / height + 1).min(h),
        );
        for cx in 0..width {
            let (x0, x1) = (
                cx * w / width,
                ((cx + 1) * w / width).max(cx * w / width + 1).min(w),
            );
            let mut sum = [0u64; 3];
            for y in y0..y1 {
                let row = &image.pixels[(y * w + x0) * 3..(y * w + x1) * 3];
                for px in row.chunks_exact(3) {
                    sum.iter_mut().zip(px).for_each(|(s, &v)| *s += v as u64);
                }
            }
            let n = ((y1 - y0) * (x1 - x0)).max(1) as f32 * 255.0;
            out.extend(sum.iter().map(|&s| s as f32 / n));
        }
    }
    out
}

/// Appends `weight x` each cell's colour (3 values) to its `dim` features.
fn append_colours(cells: &[f32], dim: usize, colours: &[f32], weight: f32) -> Vec<f32> {
    let mut out = Vec::with_capacity(cells.len() / dim * (dim + 3));
    for (cell, colour) in cells.chunks_exact(dim).zip(colours.chunks_exact(3)) {
        out.extend_from_slice(cell);
        out.extend(colour.iter().map(|c| c * weight));
    }
    out
}

/// The clustering features of every cell of the upsampled patch grid: per chosen stage the
/// L2-normalised upsampled patch vector ([`PatchFeatures::normalised`]), concatenated in the
/// order of `stages` and L2-normalised again (a zero vector stays zero). Row-major
/// `patches() x (dim * stages.len())`.
///
/// Errors when no stage is chosen, a stage does not exist or holds the wrong number of values.
pub fn cell_features(features: &PatchFeatures, stages: &[usize]) -> Result<Vec<f32>, PartError> {
    if stages.is_empty() {
        return Err(PartError::NoStages);
    }
    let dim = features.dim;
    let expected = features.grid_height * features.grid_width * dim;
    let mut per_stage = Vec::with_capacity(stages.len());
    for &stage in stages {
        let tokens = features
            .tokens
            .get(stage)
            .ok_or(PartError::StageOutOfRange {
                stage,
                stages: features.tokens.len(),
            })?;
        if tokens.len() != expected || expected == 0 || features.upsample == 0 {
            return Err(PartError::TokenCount {
                stage,
                values: tokens.len(),
                width: features.grid_width,
                height: features.grid_height,
                dim,
                expected,
            });
        }
        per_stage.push(features.normalised(stage));
    }
    let width = dim * stages.len();
    let mut cells = Vec::with_capacity(features.patches() * width);
    for cell in 0..features.patches() {
        for stage in &per_stage {
            cells.extend_from_slice(&stage[cell * dim..(cell + 1) * dim]);
        }
    }
    normalise_rows(&mut cells, width);
    Ok(cells)
}

/// Learns the part classes from the reference images' features (all of the same grid and
/// dimension):
///
/// 1. k-means (Euclidean) on the [`cell_features`] of every cell of every reference, k-means++
///    seeding from `seed`, Lloyd iterations until the assignments stop changing (at most 100),
///    `restarts` runs keeping the lowest inertia (the reference: k-means on CLIP stage 1+2
///    features, reference-implementation.md "Open-vocabulary segmentation").
/// 2. With `parts: None`, k is chosen in `2..=max_parts` by the highest mean silhouette
///    coefficient (Euclidean, on at most [`SILHOUETTE_SAMPLE`] cells evenly spaced over all
///    reference cells; ties: the smaller k). Each k is clustered with its own seed derived from
///    `seed` and k, so a fixed `parts: Some(k)` gives the same clusters as the automatic choice
///    of k.
/// 3. A cluster covering fewer than `min_cells` cells per reference image on average is merged
///    into the cluster with the nearest centre (the centre becomes the mean of both), cells are
///    reassigned, and this repeats (smallest first) while more than 2 clusters remain.
/// 4. The background is the cluster holding the most cells on the border of the grids (ties:
///    the most cells), placed first; the other parts follow by decreasing cell count.
///
/// Errors: no references, mismatched grids, bad stages, `parts` outside `2..=cells`,
/// `max_parts < 2` with automatic parts, or references whose cells are all alike.
pub fn learn_parts(
    references: &[PatchFeatures],
    options: &PartOptions,
) -> Result<PartModel, PartError> {
    let options = PartOptions {
        colour_weight: 0.0,
        masks: None,
        ..options.clone()
    };
    learn_parts_with_colours(references, &[], &options)
}

/// [`learn_parts`] with each reference's [`cell_colours`] (one `Vec` per reference) weighted by
/// `options.colour_weight` in the clustering features (ignored when 0).
pub fn learn_parts_with_colours(
    references: &[PatchFeatures],
    colours: &[Vec<f32>],
    options: &PartOptions,
) -> Result<PartModel, PartError> {
    let use_colour = options.colour_weight > 0.0;
    if use_colour && colours.len() != references.len() {
        return Err(PartError::InvalidModel(format!(
            "{} colour grids for {} references",
            colours.len(),
            references.len()
        )));
    }
    let first = references.first().ok_or(PartError::NoReferences)?;
    let (width, height) = (first.width(), first.height());
    let mut points = Vec::new();
    for (index, features) in references.iter().enumerate() {
        if (features.width(), features.height(), features.dim) != (width, height, first.dim) {
            return Err(PartError::MismatchedReferences {
                index,
                width: features.width(),
                height: features.height(),
                dim: features.dim,
                first_width: width,
                first_height: height,
                first_dim: first.dim,
            });
        }
        let cells = cell_features(features, &options.stages)?;
        if use_colour {
            let dim = first.dim * options.stages.len();
            if colours[index].len() != features.patches() * 3 {
                return Err(PartError::InvalidModel(format!(
                    "reference {index}: {} colour values for {} cells",
                    colours[index].len(),
                    features.patches()
                )));
            }
            points.extend(append_colours(
                &cells,
                dim,
                &colours[index],
                options.colour_weight,
            ));
        } else {
            points.extend(cells);
        }
    }
    let dim = first.dim * options.stages.len() + if use_colour { 3 } else { 0 };
    let cells = points.len() / dim;
    let max_parts = cells.min(u16::MAX as usize);
    let seeded = |k: usize| {
        StdRng::seed_from_u64(options.seed ^ (k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
    };
    let clustering = match options.parts {
        Some(k) => {
            if !(2..=max_parts).contains(&k) {
                return Err(PartError::PartCount { parts: k, cells });
            }
            kmeans::kmeans(&points, dim, k, options.restarts, &mut seeded(k))
        }
        None => {
            if options.max_parts < 2 {
                return Err(PartError::MaxParts(options.max_parts));
            }
            let sample: Vec<usize> = if cells <= SILHOUETTE_SAMPLE {
                (0..cells).collect()
            } else {
                (0..SILHOUETTE_SAMPLE)
                    .map(|i| i * cells / SILHOUETTE_SAMPLE)
                    .collect()
            };
            let distances = kmeans::pairwise_distances(&points, dim, &sample);
            let mut best: Option<(f64, kmeans::Clustering)> = None;
            for k in 2..=options.max_parts.min(max_parts) {
                let run = kmeans::kmeans(&points, dim, k, options.restarts, &mut seeded(k));
                let labels: Vec<usize> = sample.iter().map(|&i| run.assignments[i]).collect();
                let score =
                    kmeans::mean_silhouette(&distances, &labels, k).unwrap_or(f64::NEG_INFINITY);
                if best.as_ref().is_none_or(|(s, _)| score > *s) {
                    best = Some((score, run));
                }
            }
            best.ok_or(PartError::PartCount { parts: 2, cells })?.1
        }
    };
    let norms = kmeans::squared_norms(&points, dim);
    let (centres, assignments) = merge_small(
        &points,
        &norms,
        dim,
        clustering.centres,
        clustering.assignments,
        options.min_cells.saturating_mul(references.len()),
    );
    let k = centres.len() / dim;
    let mut counts = vec![0usize; k];
    let mut border = vec![0usize; k];
    for (i, &c) in assignments.iter().enumerate() {
        counts[c] += 1;
        let (x, y) = (i % width, (i / width) % height);
        if x == 0 || y == 0 || x + 1 == width || y + 1 == height {
            border[c] += 1;
        }
    }
    if counts.contains(&0) {
        return Err(PartError::Indistinct);
    }
    let order = background_first(&border, &counts);
    Ok(PartModel {
        centres: order
            .iter()
            .map(|&c| centres[c * dim..(c + 1) * dim].to_vec())
            .collect(),
        background: 0,
        names: part_names(k),
        stages: options.stages.clone(),
        min_cells: options.min_cells,
        connectivity: options.connectivity,
        morphology: options.morphology,
        dilation: options.dilation,
        erosion: options.erosion,
        width,
        height,
        colour_weight: if use_colour {
            options.colour_weight
        } else {
            0.0
        },
        masks: None,
    })
}

/// The order parts are stored in: the background first (the class with the most `border`
/// cells or pixels; ties: the larger `area`, then the lower index), then the others by
/// decreasing `area` (ties: lower index). Both slices hold one value per class.
fn background_first(border: &[usize], area: &[usize]) -> Vec<usize> {
    let k = area.len();
    let background = (0..k)
        .max_by_key(|&c| (border[c], area[c], std::cmp::Reverse(c)))
        .unwrap_or(0);
    let mut order: Vec<usize> = (0..k).filter(|&c| c != background).collect();
    order.sort_by_key(|&c| (std::cmp::Reverse(area[c]), c));
    order.insert(0, background);
    order
}

/// The names of `k` parts in stored order: `background`, `part1`, `part2`, ...
pub fn part_names(k: usize) -> Vec<String> {
    (0..k)
        .map(|i| match i {
            0 => "background".to_string(),
            _ => format!("part{i}"),
        })
        .collect()
}

/// Merges clusters of fewer than `threshold` cells into the cluster with the nearest centre
/// (smallest first, the centre becoming the cell-weighted mean of both), reassigning all cells
/// after each merge, while more than 2 clusters remain.
fn merge_small(
    points: &[f32],
    norms: &[f32],
    dim: usize,
    mut centres: Vec<f32>,
    mut assignments: Vec<usize>,
    threshold: usize,
) -> (Vec<f32>, Vec<usize>) {
    loop {
        let k = centres.len() / dim;
        let mut counts = vec![0usize; k];
        assignments.iter().for_each(|&c| counts[c] += 1);
        let smallest = (0..k).min_by_key(|&c| (counts[c], c)).unwrap_or(0);
        if k <= 2 || counts[smallest] >= threshold {
            return (centres, assignments);
        }
        let centre = |c: usize| &centres[c * dim..(c + 1) * dim];
        let distance =
            |a: &[f32], b: &[f32]| -> f32 { a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum() };
        let target = (0..k)
            .filter(|&c| c != smallest)
            .min_by(|&a, &b| {
                distance(centre(a), centre(smallest))
                    .total_cmp(&distance(centre(b), centre(smallest)))
            })
            .unwrap_or(0);
        let (ns, nt) = (counts[smallest] as f32, counts[target] as f32);
        if ns + nt > 0.0 {
            let merged: Vec<f32> = centre(smallest)
                .iter()
                .zip(centre(target))
                .map(|(s, t)| (s * ns + t * nt) / (ns + nt))
                .collect();
            centres[target * dim..(target + 1) * dim].copy_from_slice(&merged);
        }
        centres.drain(smallest * dim..(smallest + 1) * dim);
        assignments = kmeans::nearest_centres(points, norms, dim, &centres).0;
    }
}

impl PartModel {
    /// The most instances of one part a frame can hold: the cells of the largest label map
    /// this model labels (the mask stage's working image is at most `long_side` squared)
    /// over the smallest instance kept. A count rule asking for more can never be met.
    pub fn max_instances(&self) -> u64 {
        match &self.masks {
            Some(stage) => stage.max_instances(),
            None => (self.width * self.height / self.min_cells.max(1)) as u64,
        }
    }

    /// Number of parts, the background included.
    pub fn parts(&self) -> usize {
        self.centres.len()
    }

    /// Dimension of the cell features (and centres).
    pub fn dim(&self) -> usize {
        self.centres.first().map_or(0, Vec::len)
    }

    /// Checks a model read from a profile: at least 2 parts (at most 65535) of one non-zero
    /// dimension, finite centres, a background and a name per part, stages and a non-empty grid.
    pub fn validate(&self) -> Result<(), PartError> {
        let invalid = |what: String| Err(PartError::InvalidModel(what));
        let dim = self.dim();
        if !(2..=u16::MAX as usize).contains(&self.parts()) {
            return invalid(format!("{} parts, 2 to {} needed", self.parts(), u16::MAX));
        }
        if dim == 0 || self.centres.iter().any(|c| c.len() != dim) {
            return invalid("centres of different or zero dimensions".into());
        }
        if self.centres.iter().flatten().any(|v| !v.is_finite()) {
            return invalid("a centre is not finite".into());
        }
        if self.background as usize >= self.parts() {
            return invalid(format!(
                "background {} of {} parts",
                self.background,
                self.parts()
            ));
        }
        if self.names.len() != self.parts() {
            return invalid(format!(
                "{} names for {} parts",
                self.names.len(),
                self.parts()
            ));
        }
        if self.stages.is_empty() {
            return invalid("no feature stages".into());
        }
        if self.width == 0 || self.height == 0 {
            return invalid(format!("empty grid {}x{}", self.width, self.height));
        }
        Ok(())
    }

    /// The part of every cell of the upsampled patch grid: the nearest centre (Euclidean) to its
    /// [`cell_features`]. Errors when the model is invalid, or the features' grid or dimension
    /// (over the model's stages) differ from the model's.
    pub fn label(&self, features: &PatchFeatures) -> Result<LabelMap, PartError> {
        self.label_with_colours(features, &[])
    }

    /// [`Self::label`] for a model learned with colour: `colours` are the frame's
    /// [`cell_colours`] on the model's grid (ignored by a model without colour).
    pub fn label_with_colours(
        &self,
        features: &PatchFeatures,
        colours: &[f32],
    ) -> Result<LabelMap, PartError> {
        self.validate()?;
        if (features.width(), features.height()) != (self.width, self.height) {
            return Err(PartError::GridMismatch {
                model_width: self.width,
                model_height: self.height,
                width: features.width(),
                height: features.height(),
            });
        }
        let dim = self.dim();
        let use_colour = self.colour_weight > 0.0;
        let given = features.dim * self.stages.len() + if use_colour { 3 } else { 0 };
        if given != dim {
            return Err(PartError::DimMismatch {
                model: dim,
                features: given,
                stages: self.stages.clone(),
            });
        }
        let mut cells = cell_features(features, &self.stages)?;
        if use_colour {
            if colours.len() != features.patches() * 3 {
                return Err(PartError::InvalidModel(format!(
                    "the parts were learned with colour: {} colour values for {} cells",
                    colours.len(),
                    features.patches()
                )));
            }
            cells = append_colours(&cells, dim - 3, colours, self.colour_weight);
        }
        let centres: Vec<f32> = self.centres.concat();
        let (nearest, _) =
            kmeans::nearest_centres(&cells, &kmeans::squared_norms(&cells, dim), dim, &centres);
        Ok(LabelMap {
            width: self.width,
            height: self.height,
            labels: nearest.into_iter().map(|c| c as u16).collect(),
            background: self.background,
        })
    }

    /// The instances of every part but the background: the part's mask, the configured
    /// morphology ([`Morphology`], radii `dilation` and `erosion`; see [`dilate`], [`erode`]),
    /// connected components under `connectivity` of at least `min_cells` cells ([`components`]).
    /// An instance's cells are those of the processed mask. Ordered by part, then by first cell.
    /// Errors when the label map does not hold `width * height` labels.
    pub fn instances(&self, labels: &LabelMap) -> Result<Vec<Instance>, PartError> {
        let (width, height) = (labels.width, labels.height);
        if width.checked_mul(height) != Some(labels.labels.len()) {
            return Err(PartError::LabelCount {
                labels: labels.labels.len(),
                width,
                height,
            });
        }
        let mut found = Vec::new();
        for part in 0..self.parts() as u16 {
            if part == labels.background {
                continue;
            }
            let mask: Vec<bool> = labels.labels.iter().map(|&l| l == part).collect();
            let mask = self.process_mask(mask, width, height)?;
            for cells in components(&mask, width, height, self.connectivity, self.min_cells)? {
                found.push(Instance {
                    part,
                    centroid: centroid_cells(&cells, width),
                    cells,
                });
            }
        }
        Ok(found)
    }

    /// The configured dilation and erosion of one mask, in [`Morphology`] order.
    fn process_mask(
        &self,
        mask: Vec<bool>,
        width: usize,
        height: usize,
    ) -> Result<Vec<bool>, PartError> {
        let dilated = |mask: Vec<bool>| match self.dilation {
            0 => Ok(mask),
            radius => dilate(&mask, width, height, radius),
        };
        let eroded = |mask: Vec<bool>| match self.erosion {
            0 => Ok(mask),
            radius => erode(&mask, width, height, radius),
        };
        match self.morphology {
            Morphology::Closing => eroded(dilated(mask)?),
            Morphology::Opening => dilated(eroded(mask)?),
        }
    }
}

/// Centre of mass of cells (indices on a grid `width` wide), cell centres at +0.5.
fn centroid_cells(cells: &[u32], width: usize) -> (f32, f32) {
    let n = cells.len().max(1) as f64;
    let (sx, sy) = cells.iter().fold((0.0f64, 0.0f64), |(sx, sy), &c| {
        let c = c as usize;
        (sx + (c % width) as f64 + 0.5, sy + (c / width) as f64 + 0.5)
    });
    ((sx / n) as f32, (sy / n) as f32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    const DIM: usize = 8;

    /// Features of a scene drawn as rows of part letters (`a`..`h`), no upsampling, two stages:
    /// each letter's tokens are one basis vector per stage (a different one in stage 1) plus
    /// uniform noise of half-width 0.1.
    fn scene(rows: &[&str], seed: u64) -> PatchFeatures {
        let mut rng = StdRng::seed_from_u64(seed);
        let letters: Vec<usize> = rows
            .iter()
            .flat_map(|r| r.bytes().map(|b| (b - b'a') as usize))
            .collect();
        let tokens = (0..2)
            .map(|stage| {
                letters
                    .iter()
                    .flat_map(|&l| {
                        let axis = (l + 3 * stage) % DIM;
                        (0..DIM)
                            .map(|d| f32::from(d == axis) + rng.random_range(-0.1..0.1))
                            .collect::<Vec<_>>()
                    })
                    .collect()
            })
            .collect();
        PatchFeatures {
            grid_height: rows.len(),
            grid_width: rows[0].len(),
            upsample: 1,
            dim: DIM,
            tokens,
        }
    }

    fn letters(rows: &[&str]) -> Vec<u8> {
        rows.iter().flat_map(|r| r.bytes()).collect()
    }

    /// True when the labels are the letters up to a one-to-one renaming.
    fn same_partition(labels: &[u16], truth: &[u8]) -> bool {
        let mut forward = std::collections::HashMap::new();
        let mut back = std::collections::HashMap::new();
        labels
            .iter()
            .zip(truth)
            .all(|(l, t)| *forward.entry(l).or_insert(t) == t && *back.entry(t).or_insert(l) == l)
    }

    const THREE: [&str; 8] = [
        "aaaaaaaa", //
        "abbbaaaa", "abbbaaaa", "abbbacca", "aaaaacca", "aaaaacca", "aaaaacca", "aaaaaaaa",
    ];

    const FOUR: [&str; 8] = [
        "aaaaaaaa", //
        "abbbaaaa", "abbbaaaa", "abbbacca", "aaaaacca", "adddacca", "adddacca", "aaaaaaaa",
    ];

    fn options(parts: Option<usize>) -> PartOptions {
        PartOptions {
            parts,
            min_cells: 1,
            ..PartOptions::default()
        }
    }

    #[test]
    fn learns_three_parts_exactly_and_deterministically() {
        let references = [scene(&THREE, 1), scene(&THREE, 2)];
        let model = learn_parts(&references, &options(Some(3))).unwrap();
        assert_eq!(model.parts(), 3);
        assert_eq!(model.dim(), 2 * DIM);
        assert_eq!((model.width, model.height), (8, 8));
        assert_eq!(model.names, ["background", "part1", "part2"]);
        for features in references.iter().chain([&scene(&THREE, 3)]) {
            let labels = model.label(features).unwrap();
            assert!(same_partition(&labels.labels, &letters(&THREE)));
            // The border letter `a` is the background; `b` (9 cells) outnumbers `c` (8).
            assert_eq!(labels.labels[0], model.background);
            assert_eq!(labels.labels[9], 1);
            assert_eq!(labels.labels[29], 2);
        }
        assert_eq!(learn_parts(&references, &options(Some(3))).unwrap(), model);
        let json = serde_json::to_string(&model).unwrap();
        assert_eq!(serde_json::from_str::<PartModel>(&json).unwrap(), model);
    }

    #[test]
    fn chooses_the_number_of_parts_by_silhouette() {
        let three = learn_parts(&[scene(&THREE, 4), scene(&THREE, 5)], &options(None)).unwrap();
        assert_eq!(three.parts(), 3);
        let four = learn_parts(&[scene(&FOUR, 6), scene(&FOUR, 7)], &options(None)).unwrap();
        assert_eq!(four.parts(), 4);
        let labels = four.label(&scene(&FOUR, 8)).unwrap();
        assert!(same_partition(&labels.labels, &letters(&FOUR)));
        // The automatic choice gives the same model as asking for its number of parts.
        let fixed = learn_parts(&[scene(&FOUR, 6), scene(&FOUR, 7)], &options(Some(4))).unwrap();
        assert_eq!(fixed, four);
    }

    #[test]
    fn background_is_the_border_part_even_when_smaller() {
        // The border ring `a` (28 cells) is smaller than the inside `b` (36 cells).
        let rows = [
            "aaaaaaaa", //
            "abbbbbba", "abbbbbba", "abbbbbba", "abbbbbba", "abbbbbba", "abbbbbba", "aaaaaaaa",
        ];
        let model = learn_parts(&[scene(&rows, 9)], &options(Some(2))).unwrap();
        let labels = model.label(&scene(&rows, 10)).unwrap();
        assert_eq!(model.background, 0);
        for (label, letter) in labels.labels.iter().zip(letters(&rows)) {
            assert_eq!(*label == model.background, letter == b'a');
        }
    }

    #[test]
    fn parts_smaller_than_min_cells_merge_into_the_nearest() {
        // `c` covers 2 cells per image: below min_cells 3, so 3 asked parts become 2.
        let rows = [
            "aaaaaa", //
            "abbbba", "abbbba", "aaaaaa", "acaaca",
        ];
        let references = [scene(&rows, 11), scene(&rows, 12)];
        let kept = learn_parts(&references, &options(Some(3))).unwrap();
        assert_eq!(kept.parts(), 3);
        let merged = learn_parts(
            &references,
            &PartOptions {
                min_cells: 3,
                ..options(Some(3))
            },
        )
        .unwrap();
        assert_eq!(merged.parts(), 2);
        // `a` and `b` keep their cells; the two `c` cells go together to one of them.
        let labels = merged.label(&references[0]).unwrap();
        let truth = letters(&rows);
        let of = |letter: u8| -> Vec<u16> {
            let mut found: Vec<u16> = (0..truth.len())
                .filter(|&i| truth[i] == letter)
                .map(|i| labels.labels[i])
                .collect();
            found.dedup();
            found
        };
        assert_eq!((of(b'a'), of(b'b')), (vec![0], vec![1]));
        assert_eq!(of(b'c').len(), 1);
    }

    #[test]
    fn cell_features_normalise_stages_then_the_concatenation() {
        let features = PatchFeatures {
            grid_height: 1,
            grid_width: 1,
            upsample: 1,
            dim: 2,
            tokens: vec![vec![3.0, 4.0], vec![0.0, 2.0], vec![1.0, 0.0]],
        };
        let s = std::f32::consts::FRAC_1_SQRT_2;
        let got = cell_features(&features, &[0, 1]).unwrap();
        let want = [0.6 * s, 0.8 * s, 0.0, s];
        assert!(
            got.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6),
            "{got:?}"
        );
        let got = cell_features(&features, &[2, 0]).unwrap();
        let want = [s, 0.0, 0.6 * s, 0.8 * s];
        assert!(
            got.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6),
            "{got:?}"
        );
        assert_eq!(
            cell_features(&features, &[3]),
            Err(PartError::StageOutOfRange {
                stage: 3,
                stages: 3
            })
        );
        assert_eq!(cell_features(&features, &[]), Err(PartError::NoStages));
    }

    #[test]
    fn bad_inputs_are_errors() {
        let references = [scene(&THREE, 1)];
        assert_eq!(
            learn_parts(&[], &options(None)),
            Err(PartError::NoReferences)
        );
        assert!(matches!(
            learn_parts(&references, &options(Some(1))),
            Err(PartError::PartCount { parts: 1, .. })
        ));
        assert!(matches!(
            learn_parts(&[scene(&THREE, 1), scene(&FOUR[..7], 2)], &options(None)),
            Err(PartError::MismatchedReferences {
                index: 1,
                height: 7,
                ..
            })
        ));
        let same = [scene(&["aaaa"; 4], 1)];
        let alike = PatchFeatures {
            tokens: vec![vec![1.0; 16 * DIM]; 2],
            ..same[0].clone()
        };
        assert_eq!(
            learn_parts(&[alike], &options(Some(2))),
            Err(PartError::Indistinct)
        );

        let model = learn_parts(&references, &options(Some(3))).unwrap();
        let narrow = PatchFeatures {
            dim: 4,
            tokens: vec![vec![0.5; 64 * 4]; 2],
            ..references[0].clone()
        };
        assert_eq!(
            model.label(&narrow),
            Err(PartError::DimMismatch {
                model: 16,
                features: 8,
                stages: vec![0, 1]
            })
        );
        assert!(matches!(
            model.label(&scene(&FOUR[..7], 3)),
            Err(PartError::GridMismatch { height: 7, .. })
        ));
        let broken = PartModel {
            background: 5,
            ..model.clone()
        };
        assert!(matches!(
            broken.label(&references[0]),
            Err(PartError::InvalidModel(_))
        ));
        let short = LabelMap {
            width: 3,
            height: 3,
            labels: vec![1; 8],
            background: 0,
        };
        assert!(matches!(
            model.instances(&short),
            Err(PartError::LabelCount { labels: 8, .. })
        ));
    }

    /// A model with the given instance settings (centres unused by `instances`).
    fn grouping(min_cells: usize, morphology: Morphology, radius: usize) -> PartModel {
        PartModel {
            centres: vec![vec![0.0, 1.0]; 3],
            background: 0,
            names: vec!["background".into(), "part1".into(), "part2".into()],
            stages: vec![0],
            min_cells,
            connectivity: Connectivity::Eight,
            morphology,
            dilation: radius,
            erosion: radius,
            width: 0,
            height: 0,
            colour_weight: 0.0,
            masks: None,
        }
    }

    fn label_map(rows: &[&str]) -> LabelMap {
        LabelMap {
            width: rows[0].len(),
            height: rows.len(),
            labels: rows
                .iter()
                .flat_map(|r| r.bytes().map(|b| u16::from(b - b'0')))
                .collect(),
            background: 0,
        }
    }

    #[test]
    fn instances_with_hand_computed_centroids() {
        let labels = label_map(&[
            "11000", //
            "10022", "00020", "20000",
        ]);
        let found = grouping(2, Morphology::Closing, 0)
            .instances(&labels)
            .unwrap();
        // Part 1: cells 0, 1, 5 at (0.5, 0.5), (1.5, 0.5), (0.5, 1.5).
        // Part 2: cells 8, 9, 13 at (3.5, 1.5), (4.5, 1.5), (3.5, 2.5); cell 15 is below 2 cells.
        assert_eq!(
            found,
            vec![
                Instance {
                    part: 1,
                    cells: vec![0, 1, 5],
                    centroid: (2.5 / 3.0, 2.5 / 3.0),
                },
                Instance {
                    part: 2,
                    cells: vec![8, 9, 13],
                    centroid: (11.5 / 3.0, 5.5 / 3.0),
                },
            ]
        );
        assert_eq!(found[0].area(), 3);
    }

    #[test]
    fn closing_joins_and_opening_splits_instances() {
        let gap = label_map(&[
            "000000000", //
            "000000000",
            "001101100",
            "001101100",
            "000000000",
            "000000000",
        ]);
        assert_eq!(
            grouping(1, Morphology::Closing, 0)
                .instances(&gap)
                .unwrap()
                .len(),
            2
        );
        let closed = grouping(1, Morphology::Closing, 1).instances(&gap).unwrap();
        assert_eq!(closed.len(), 1);
        assert_eq!(
            closed[0].cells,
            vec![20, 21, 22, 23, 24, 29, 30, 31, 32, 33]
        );
        assert_eq!(closed[0].centroid, (4.5, 3.0));

        let bridge = label_map(&[
            "0000000000", //
            "0111001110",
            "0111111110",
            "0111001110",
            "0000000000",
        ]);
        assert_eq!(
            grouping(1, Morphology::Opening, 0)
                .instances(&bridge)
                .unwrap()
                .len(),
            1
        );
        let opened = grouping(1, Morphology::Opening, 1)
            .instances(&bridge)
            .unwrap();
        assert_eq!(opened.len(), 2);
        assert_eq!(opened[0].cells, vec![11, 12, 13, 21, 22, 23, 31, 32, 33]);
        assert_eq!(opened[1].centroid, (7.5, 2.5));
    }
}
