//! Parts at pixel resolution: the segments of a [`MaskGenerator`] labelled by part class, as
//! LogSAD labels SAM's masks (paper section 3.2): the backbone only says *what* each segment
//! is, the segments say *where* it is, at frame resolution.
//!
//! Each segment is described by its [`segment_features`]: the mean of the backbone's cell
//! features over the segment's pixels (what it is) and its mean CIELAB colour (small parts
//! cover less than one token, so the token features mix them with their surroundings; their
//! colour does not). Part classes are the clusters of the reference images' segments under
//! average-linkage agglomerative clustering, cut at a distance ([`MaskStage::cluster_distance`]):
//! the number of classes follows from how far apart the parts are, with no criterion that
//! prefers few large clusters, so a class of 15 small pins stands as well as the background.

use super::{
    background_first, centroid_cells, part_names, LabelMap, PartError, PartModel, PartOptions,
};
use crate::detect::features::{normalise_rows, PatchFeatures};
use crate::detect::preprocess::RgbImage;
use crate::detect::segment::{lab_image, GraphSegmenter, MaskGenerator, SegmentMap};
use serde::{Deserialize, Serialize};

/// Segments beyond this many (over all references) are clustered as an even subsample; the
/// others take the class of their nearest centre.
pub const MAX_CLUSTERED_SEGMENTS: usize = 3000;

/// The default weight of a segment's colour in its features at pixel resolution (the CLI's
/// `--part-colour`), chosen on the tuning family of `logsad synth --loco`.
pub const MASK_COLOUR_WEIGHT: f32 = 1.0;

/// How a part model at pixel resolution segments and labels frames. Stored in the profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MaskStage {
    /// The mask generator (built in: graph segmentation).
    pub segmenter: GraphSegmenter,
    /// Average-linkage cut: clusters of segment features whose segments lie on average closer
    /// than this (Euclidean, in the [`segment_features`] space) are one part class.
    pub cluster_distance: f32,
    /// Smallest part instance, px of the working image (a 15 px part covers about 170).
    pub min_area: usize,
}

impl MaskStage {
    /// The most instances of one part a frame can hold: the working image (at most
    /// `long_side` squared pixels) over the smallest instance, `min_area`.
    pub fn max_instances(&self) -> u64 {
        u64::from(self.segmenter.long_side).pow(2) / self.min_area.max(1) as u64
    }
}

impl Default for MaskStage {
    fn default() -> Self {
        MaskStage {
            segmenter: GraphSegmenter::default(),
            cluster_distance: 0.9,
            min_area: 40,
        }
    }
}

/// The feature vector of every segment (row-major `map.count x (dim + 3)`, `dim` = the cell
/// features' width): the L2-normalised mean of `cells` (the `grid_width x grid_height` cell
/// features of the frame, row-major `dim` values each) over the segment's pixels, each pixel
/// taking the cell it falls in; then `colour_weight x` the segment's mean CIELAB colour of `lab`
/// (one per pixel of the map) as `[L / 2, a, b] / 50` (lightness counts half: shading).
pub fn segment_features(
    map: &SegmentMap,
    lab: &[[f32; 3]],
    cells: &[f32],
    grid: (usize, usize),
    dim: usize,
    colour_weight: f32,
) -> Vec<f32> {
    let (gw, gh) = grid;
    let (w, h) = (map.width, map.height);
    // Pixels per (segment, cell), so each cell vector is added once per segment.
    let mut pairs: Vec<(u32, u32)> = Vec::with_capacity(w * h);
    let mut colour = vec![[0.0f64; 3]; map.count];
    let mut area = vec![0usize; map.count];
    for y in 0..h {
        let cy = (y * gh / h).min(gh - 1);
        for x in 0..w {
            let cx = (x * gw / w).min(gw - 1);
            let s = map.segments[y * w + x];
            pairs.push((s, (cy * gw + cx) as u32));
            let p = lab[y * w + x];
            colour[s as usize]
                .iter_mut()
                .zip(p)
                .for_each(|(c, v)| *c += v as f64);
            area[s as usize] += 1;
        }
    }
    pairs.sort_unstable();
    let mut features = vec![0.0f32; map.count * dim];
    let mut i = 0;
    while i < pairs.len() {
        let mut j = i;
        while j < pairs.len() && pairs[j] == pairs[i] {
            j += 1;
        }
        let (segment, cell) = (pairs[i].0 as usize, pairs[i].1 as usize);
        let weight = (j - i) as f32;
        let out = &mut features[segment * dim..(segment + 1) * dim];
        let cell = &cells[cell * dim..(cell + 1) * dim];
        out.iter_mut().zip(cell).for_each(|(o, c)| *o += weight * c);
        i = j;
    }
    normalise_rows(&mut features, dim);
    let mut out = Vec::with_capacity(map.count * (dim + 3));
    for s in 0..map.count {
        out.extend_from_slice(&features[s * dim..(s + 1) * dim]);
        let n = area[s].max(1) as f64;
        let [l, a, b] = colour[s].map(|c| (c / n) as f32);
        out.extend([l / 2.0, a, b].map(|v| v / 50.0 * colour_weight));
    }
    out
}

/// One merge of average-linkage clustering: clusters `a` and `b` (indices of the
/// [`average_linkage`] numbering) joined at `height`, the mean distance between their points.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Merge {
    pub a: usize,
    pub b: usize,
    pub height: f64,
}

/// Average-linkage (UPGMA) agglomerative clustering of the rows of `points` (`n x dim`,
/// Euclidean), by the nearest-neighbour chain algorithm (O(n^2) time and memory). Returns the
/// `n - 1` merges sorted by height; cluster `a` of a merge is the lower index of the points it
/// contains first, so that the merges read as joins of point sets (see [`cut`]).
pub fn average_linkage(points: &[f32], dim: usize) -> Vec<Merge> {
    let n = points.len() / dim.max(1);
    if n < 2 {
        return Vec::new();
    }
    let mut distance = vec![0.0f64; n * n];
    for i in 0..n {
        for j in i + 1..n {
            let d = points[i * dim..(i + 1) * dim]
                .iter()
                .zip(&points[j * dim..(j + 1) * dim])
                .map(|(a, b)| ((a - b) * (a - b)) as f64)
                .sum::<f64>()
                .sqrt();
            distance[i * n + j] = d;
            distance[j * n + i] = d;
        }
    }
    let mut size = vec![1usize; n];
    let mut active = vec![true; n];
    let mut merges = Vec::with_capacity(n - 1);
    let mut chain: Vec<usize> = Vec::new();
    let mut remaining = n;
    while remaining > 1 {
        if chain.is_empty() {
            chain.push((0..n).find(|&i| active[i]).expect("two clusters remain"));
        }
        let a = *chain.last().expect("chain is not empty");
        let previous = chain.len().checked_sub(2).map(|i| chain[i]);
        // The nearest active cluster; the previous link wins ties, so the chain ends.
        let mut best = previous;
        for c in (0..n).filter(|&c| c != a && active[c]) {
            let better = match best {
                None => true,
                Some(b) => distance[a * n + c] < distance[a * n + b],
            };
            if better {
                best = Some(c);
            }
        }
        let b = best.expect("another cluster is active");
        if Some(b) != previous {
            chain.push(b);
            continue;
        }
        chain.truncate(chain.len() - 2);
        let (keep, gone) = (a.min(b), a.max(b));
        merges.push(Merge {
            a: keep,
            b: gone,
            height: distance[a * n + b],
        });
        let (sk, sg) = (size[keep] as f64, size[gone] as f64);
        for c in (0..n).filter(|&c| active[c] && c != keep && c != gone) {
            let d = (sk * distance[keep * n + c] + sg * distance[gone * n + c]) / (sk + sg);
            distance[keep * n + c] = d;
            distance[c * n + keep] = d;
        }
        size[keep] += size[gone];
        active[gone] = false;
        remaining -= 1;
    }
    merges.sort_by(|x, y| x.height.total_cmp(&y.height));
    merges
}

/// The clusters of `n` points after the `merges` of [`average_linkage`] below `height`, and
/// then more (lowest first) while more than `max_clusters` remain: a cluster index per point,
/// numbered 0.. by first point.
pub fn cut(n: usize, merges: &[Merge], height: f64, max_clusters: usize) -> Vec<usize> {
    let mut parent: Vec<usize> = (0..n).collect();
    fn find(parent: &mut [usize], mut x: usize) -> usize {
        while parent[x] != x {
            parent[x] = parent[parent[x]];
            x = parent[x];
        }
        x
    }
    let mut clusters = n;
    for merge in merges {
        if merge.height >= height && clusters <= max_clusters.max(1) {
            break;
        }
        let (a, b) = (find(&mut parent, merge.a), find(&mut parent, merge.b));
        if a != b {
            parent[a.max(b)] = a.min(b);
            clusters -= 1;
        }
    }
    let mut number = std::collections::HashMap::new();
    (0..n)
        .map(|p| {
            let root = find(&mut parent, p);
            let next = number.len();
            *number.entry(root).or_insert(next)
        })
        .collect()
}

/// One reference image as the mask stage sees it: its segments and their features.
struct SegmentedImage {
    map: SegmentMap,
    features: Vec<f32>,
}

/// The segments of `image` and their [`segment_features`] on the frame's `features`.
fn segmented(
    stage: &MaskStage,
    stages: &[usize],
    colour_weight: f32,
    features: &PatchFeatures,
    image: &RgbImage,
) -> Result<SegmentedImage, PartError> {
    let (width, height) = stage.segmenter.working_size(image.width, image.height);
    let lab = lab_image(image, width, height)
        .map_err(|e| PartError::InvalidModel(format!("mask generator: {e}")))?;
    let map = stage
        .segmenter
        .segment_lab(&lab, width, height)
        .map_err(|e| PartError::InvalidModel(format!("mask generator: {e}")))?;
    let cells = super::cell_features(features, stages)?;
    let dim = features.dim * stages.len();
    let features = segment_features(
        &map,
        &lab,
        &cells,
        (features.width(), features.height()),
        dim,
        colour_weight,
    );
    Ok(SegmentedImage { map, features })
}

/// Learns part classes at pixel resolution (`options.masks` set) from the references' features
/// and images (one each, same grid):
///
/// 1. each reference is segmented ([`MaskStage::segmenter`]) and each segment described by
///    [`segment_features`] (weight `options.colour_weight`);
/// 2. the segments of all references are clustered by [`average_linkage`], cut at
///    [`MaskStage::cluster_distance`] (or, with `options.parts: Some(k)`, where k clusters
///    remain; at most `options.max_parts` either way);
/// 3. the background is the class covering the most border pixels, placed first; the other
///    classes follow by decreasing area over the references. Centres are the mean features of
///    each class's segments.
///
/// Instances are then the connected components of each class's pixels of at least
/// [`MaskStage::min_area`] pixels of the working image ([`PartModel::instances`]; the model's
/// `min_cells`).
pub fn learn_mask_parts(
    references: &[PatchFeatures],
    images: &[RgbImage],
    options: &PartOptions,
) -> Result<PartModel, PartError> {
    let stage = options
        .masks
        .clone()
        .ok_or_else(|| PartError::InvalidModel("no mask stage chosen".into()))?;
    stage
        .segmenter
        .validate()
        .map_err(|e| PartError::InvalidModel(e.to_string()))?;
    let first = references.first().ok_or(PartError::NoReferences)?;
    if images.len() != references.len() {
        return Err(PartError::InvalidModel(format!(
            "{} images for {} reference feature sets",
            images.len(),
            references.len()
        )));
    }
    let (width, height) = (first.width(), first.height());
    let mut segmented_images = Vec::with_capacity(references.len());
    for (index, (features, image)) in references.iter().zip(images).enumerate() {
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
        segmented_images.push(segmented(
            &stage,
            &options.stages,
            options.colour_weight,
            features,
            image,
        )?);
    }
    let dim = first.dim * options.stages.len() + 3;
    let all: Vec<f32> = segmented_images
        .iter()
        .flat_map(|s| s.features.iter().copied())
        .collect();
    let total = all.len() / dim;
    let sample: Vec<usize> = if total <= MAX_CLUSTERED_SEGMENTS {
        (0..total).collect()
    } else {
        (0..MAX_CLUSTERED_SEGMENTS)
            .map(|i| i * total / MAX_CLUSTERED_SEGMENTS)
            .collect()
    };
    let points: Vec<f32> = sample
        .iter()
        .flat_map(|&i| all[i * dim..(i + 1) * dim].iter().copied())
        .collect();
    let merges = average_linkage(&points, dim);
    let (height_cut, max_clusters) = match options.parts {
        Some(k) => {
            if !(2..=sample.len()).contains(&k) {
                return Err(PartError::PartCount {
                    parts: k,
                    cells: sample.len(),
                });
            }
            // No height stops the merging: only the count.
            (f64::NEG_INFINITY, k)
        }
        None => {
            if options.max_parts < 2 {
                return Err(PartError::MaxParts(options.max_parts));
            }
            (stage.cluster_distance as f64, options.max_parts)
        }
    };
    let labels = cut(sample.len(), &merges, height_cut, max_clusters);
    let k = labels.iter().max().map_or(0, |m| m + 1);
    if k < 2 {
        return Err(PartError::Indistinct);
    }
    let mut centres = vec![0.0f32; k * dim];
    let mut members = vec![0usize; k];
    for (point, &label) in labels.iter().enumerate() {
        members[label] += 1;
        centres[label * dim..(label + 1) * dim]
            .iter_mut()
            .zip(&points[point * dim..(point + 1) * dim])
            .for_each(|(c, p)| *c += p);
    }
    for (label, &count) in members.iter().enumerate() {
        centres[label * dim..(label + 1) * dim]
            .iter_mut()
            .for_each(|c| *c /= count as f32);
    }
    // Border pixels and area per class, every segment (clustered or not) by its nearest centre.
    let mut border = vec![0usize; k];
    let mut area = vec![0usize; k];
    for image in &segmented_images {
        let classes = nearest(&image.features, dim, &centres);
        let (w, h) = (image.map.width, image.map.height);
        for (p, &s) in image.map.segments.iter().enumerate() {
            let class = classes[s as usize];
            area[class] += 1;
            let (x, y) = (p % w, p / w);
            if x == 0 || y == 0 || x + 1 == w || y + 1 == h {
                border[class] += 1;
            }
        }
    }
    let order = background_first(&border, &area);
    Ok(PartModel {
        centres: order
            .iter()
            .map(|&c| centres[c * dim..(c + 1) * dim].to_vec())
            .collect(),
        background: 0,
        names: part_names(k),
        stages: options.stages.clone(),
        min_cells: stage.min_area,
        connectivity: options.connectivity,
        morphology: options.morphology,
        dilation: options.dilation,
        erosion: options.erosion,
        width,
        height,
        colour_weight: options.colour_weight,
        masks: Some(stage),
    })
}

/// The nearest centre (Euclidean) of each row of `points`.
fn nearest(points: &[f32], dim: usize, centres: &[f32]) -> Vec<usize> {
    points
        .chunks_exact(dim)
        .map(|p| {
            centres
                .chunks_exact(dim)
                .map(|c| p.iter().zip(c).map(|(a, b)| (a - b) * (a - b)).sum::<f32>())
                .enumerate()
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .map_or(0, |(i, _)| i)
        })
        .collect()
}

impl PartModel {
    /// The part of every pixel of the working image of a model at pixel resolution: each
    /// segment of `image` takes the class of the nearest centre to its [`segment_features`]
    /// on `features` (the frame's whole-frame features, on the model's grid).
    ///
    /// Errors: a model without a mask stage, features of another grid or dimension.
    pub fn label_pixels(
        &self,
        stage: &MaskStage,
        features: &PatchFeatures,
        image: &RgbImage,
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
        let given = features.dim * self.stages.len() + 3;
        if given != self.dim() {
            return Err(PartError::DimMismatch {
                model: self.dim(),
                features: given,
                stages: self.stages.clone(),
            });
        }
        let image = segmented(stage, &self.stages, self.colour_weight, features, image)?;
        let classes = nearest(&image.features, self.dim(), &self.centres.concat());
        Ok(LabelMap {
            width: image.map.width,
            height: image.map.height,
            labels: image
                .map
                .segments
                .iter()
                .map(|&s| classes[s as usize] as u16)
                .collect(),
            background: self.background,
        })
    }
}

/// `instances` of a label map `from` (width, height) carried onto a grid `to` (width, height):
/// each instance keeps the cells of `to` that its pixels fall in (ascending, each once), its
/// centroid scaled. Used to embed pixel-resolution instances on the backbone's cell grid.
pub fn project_instances(
    instances: &[super::Instance],
    from: (usize, usize),
    to: (usize, usize),
) -> Vec<super::Instance> {
    if from == to {
        return instances.to_vec();
    }
    let (fw, fh) = (from.0.max(1), from.1.max(1));
    instances
        .iter()
        .map(|instance| {
            let mut cells: Vec<u32> = instance
                .cells
                .iter()
                .map(|&c| {
                    let (x, y) = (c as usize % fw, c as usize / fw);
                    let (cx, cy) = ((x * to.0 / fw).min(to.0 - 1), (y * to.1 / fh).min(to.1 - 1));
                    (cy * to.0 + cx) as u32
                })
                .collect();
            cells.sort_unstable();
            cells.dedup();
            super::Instance {
                part: instance.part,
                centroid: centroid_cells(&cells, to.0),
                cells,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn average_linkage_matches_hand_computed_heights() {
        // Points on a line at 0, 1, 5, 11: merges {0,1} at 1, {0,1}+{5} at (5 + 4) / 2 = 4.5,
        // then + {11} at (11 + 10 + 6) / 3 = 9.
        let merges = average_linkage(&[0.0, 1.0, 5.0, 11.0], 1);
        let heights: Vec<f64> = merges.iter().map(|m| m.height).collect();
        assert_eq!(heights, vec![1.0, 4.5, 9.0]);
        assert_eq!(cut(4, &merges, 2.0, 10), vec![0, 0, 1, 2]);
        assert_eq!(cut(4, &merges, 5.0, 10), vec![0, 0, 0, 1]);
        assert_eq!(cut(4, &merges, 100.0, 10), vec![0, 0, 0, 0]);
        // A cap on the number of clusters goes on merging past the height; with no height,
        // merging stops at the cap (a fixed number of parts).
        assert_eq!(cut(4, &merges, 0.5, 2), vec![0, 0, 0, 1]);
        assert_eq!(cut(4, &merges, f64::NEG_INFINITY, 3), vec![0, 0, 1, 2]);
        assert_eq!(cut(4, &merges, f64::NEG_INFINITY, 4), vec![0, 1, 2, 3]);
    }

    #[test]
    fn average_linkage_agrees_with_brute_force() {
        // Brute force: repeatedly join the two clusters of least mean pairwise distance.
        let mut state = 7u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % 1000) as f32 / 100.0
        };
        let dim = 2;
        let points: Vec<f32> = (0..24 * dim).map(|_| next()).collect();
        let n = points.len() / dim;
        let d = |i: usize, j: usize| {
            ((points[i * 2] - points[j * 2]).powi(2)
                + (points[i * 2 + 1] - points[j * 2 + 1]).powi(2))
            .sqrt() as f64
        };
        let mut clusters: Vec<Vec<usize>> = (0..n).map(|i| vec![i]).collect();
        let mut brute = Vec::new();
        while clusters.len() > 1 {
            let mut best = (f64::INFINITY, 0, 0);
            for a in 0..clusters.len() {
                for b in a + 1..clusters.len() {
                    let sum: f64 = clusters[a]
                        .iter()
                        .flat_map(|&i| clusters[b].iter().map(move |&j| (i, j)))
                        .map(|(i, j)| d(i, j))
                        .sum();
                    let mean = sum / (clusters[a].len() * clusters[b].len()) as f64;
                    if mean < best.0 {
                        best = (mean, a, b);
                    }
                }
            }
            brute.push(best.0);
            let joined = clusters.remove(best.2);
            clusters[best.1].extend(joined);
        }
        let fast: Vec<f64> = average_linkage(&points, dim)
            .iter()
            .map(|m| m.height)
            .collect();
        assert_eq!(fast.len(), brute.len());
        for (f, b) in fast.iter().zip(&brute) {
            // The points are f32: heights agree to f32 precision.
            assert!((f - b).abs() < 1e-6 * b.max(1.0), "{fast:?}\n{brute:?}");
        }
    }

    #[test]
    fn segment_features_average_cells_and_colour() {
        // A 4x2 map of two segments (left, right) over a 2x1 grid of 2-d cell features.
        let map = SegmentMap {
            width: 4,
            height: 2,
            segments: vec![0, 0, 0, 1, 0, 0, 0, 1],
            count: 2,
        };
        let lab = vec![[50.0, 10.0, -10.0]; 8];
        let cells = [1.0, 0.0, 0.0, 1.0];
        let f = segment_features(&map, &lab, &cells, (2, 1), 2, 1.0);
        // Segment 0: 4 pixels in cell 0, 2 in cell 1 -> (4, 2) normalised.
        let n = (20.0f32).sqrt();
        let want0 = [4.0 / n, 2.0 / n, 25.0 / 50.0, 10.0 / 50.0, -10.0 / 50.0];
        let want1 = [0.0, 1.0, 0.5, 0.2, -0.2];
        for (g, w) in f[..5].iter().zip(want0).chain(f[5..].iter().zip(want1)) {
            assert!((g - w).abs() < 1e-6, "{f:?}");
        }
    }

    #[test]
    fn projected_instances_keep_their_cells_once() {
        let instance = super::super::Instance {
            part: 3,
            // Pixels (0,0), (1,0), (3,3) of a 4x4 map.
            cells: vec![0, 1, 15],
            centroid: (0.0, 0.0),
        };
        let projected = project_instances(&[instance], (4, 4), (2, 2));
        assert_eq!(projected[0].cells, vec![0, 3]);
        assert_eq!(projected[0].part, 3);
        assert_eq!(projected[0].centroid, (1.0, 1.0));
    }
}
