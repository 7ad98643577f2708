//! The mask generator stage: class-agnostic segments of a frame at frame resolution, which the
//! part stage then labels (paper section 3.2: SAM's automatic masks, painted with the labels of
//! the open-vocabulary segmentation, then split into connected components per label).
//!
//! A [`MaskGenerator`] turns a frame into a [`SegmentMap`]: a partition of the working image
//! (the frame resized to [`GraphSegmenter::long_side`] px on its long side) into segments. A
//! generator of overlapping masks (SAM) paints them into a partition, largest first, so that
//! smaller masks stay on top, and leaves unpainted pixels in one segment of their own.
//!
//! The built-in generator needs no model: [`GraphSegmenter`] runs the graph-based segmentation
//! of Felzenszwalb and Huttenlocher (IJCV 2004) on the CIELAB image, then merges adjacent
//! segments of near colour (a part split by a highlight or a shadow becomes one segment again).

use crate::detect::preprocess::RgbImage;
use serde::{Deserialize, Serialize};

/// A partition of a `width x height` image into `count` segments.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentMap {
    pub width: usize,
    pub height: usize,
    /// Segment index per pixel, row-major, each below `count`; every index in `0..count` is
    /// used.
    pub segments: Vec<u32>,
    pub count: usize,
}

impl SegmentMap {
    /// Pixels per segment (`count` values).
    pub fn areas(&self) -> Vec<usize> {
        let mut areas = vec![0usize; self.count];
        for &s in &self.segments {
            areas[s as usize] += 1;
        }
        areas
    }

    /// Renumbers the segments 0.. in order of their first pixel (row-major) from any labels
    /// given per pixel.
    fn compact(width: usize, height: usize, labels: &[usize]) -> SegmentMap {
        let mut index = std::collections::HashMap::new();
        let segments = labels
            .iter()
            .map(|&l| {
                let next = index.len() as u32;
                *index.entry(l).or_insert(next)
            })
            .collect();
        SegmentMap {
            width,
            height,
            segments,
            count: index.len(),
        }
    }
}

/// Why a frame could not be segmented.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SegmentError {
    #[error("mask generator setting {name} = {value} is out of range: {allowed}")]
    Setting {
        name: &'static str,
        value: f64,
        allowed: &'static str,
    },
    #[error("a {width}x{height} RGB image needs {expected} bytes, it holds {bytes}")]
    ImageSize {
        width: u32,
        height: u32,
        bytes: usize,
        expected: usize,
    },
}

/// Class-agnostic masks of a frame at frame resolution. Implementations: [`GraphSegmenter`]
/// (built in) and SAM through the model contract.
pub trait MaskGenerator {
    /// The frame's segments, on the working image of [`MaskGenerator::working_size`].
    fn segment(&self, image: &RgbImage) -> Result<SegmentMap, SegmentError>;

    /// The (width, height) of the segment map of a `width x height` frame.
    fn working_size(&self, width: u32, height: u32) -> (usize, usize);
}

/// The built-in mask generator (Felzenszwalb-Huttenlocher graph segmentation on CIELAB, then
/// merging of adjacent segments of near colour). Stored in the profile; the defaults were
/// chosen on the tuning family of `logsad synth --loco` (README, "Logical anomalies").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GraphSegmenter {
    /// Long side of the working image, px: the frame is resized to it, keeping its aspect
    /// ratio (at least 448, the resolution at which parts of 20-30 px stay whole).
    pub long_side: u32,
    /// Gaussian smoothing before segmentation, px of the working image.
    pub sigma: f32,
    /// The scale `k` of the segmentation criterion (eq. 5 of the paper above), in CIELAB
    /// distance x pixels: larger gives larger segments.
    pub scale: f32,
    /// Smallest segment, px of the working image; smaller ones join their most similar
    /// neighbour.
    pub min_size: usize,
    /// Adjacent segments whose mean colours are closer than this (CIELAB distance with the
    /// lightness weighted by `lightness_weight`) are merged.
    pub merge_distance: f32,
    /// Weight of lightness differences in the merging distance: below 1, shading and
    /// highlights of one part matter less than a change of hue.
    pub lightness_weight: f32,
}

impl Default for GraphSegmenter {
    fn default() -> Self {
        GraphSegmenter {
            long_side: 448,
            sigma: 0.8,
            scale: 300.0,
            min_size: 24,
            merge_distance: 8.0,
            lightness_weight: 0.5,
        }
    }
}

impl GraphSegmenter {
    /// Checks every setting.
    pub fn validate(&self) -> Result<(), SegmentError> {
        let check = |name, value: f64, ok: bool, allowed| {
            if ok {
                Ok(())
            } else {
                Err(SegmentError::Setting {
                    name,
                    value,
                    allowed,
                })
            }
        };
        check(
            "long_side",
            self.long_side as f64,
            (16..=4096).contains(&self.long_side),
            "16 to 4096 px",
        )?;
        check(
            "sigma",
            self.sigma as f64,
            self.sigma.is_finite() && (0.0..=10.0).contains(&self.sigma),
            "0 to 10 px",
        )?;
        check(
            "scale",
            self.scale as f64,
            self.scale.is_finite() && self.scale >= 0.0,
            "a finite number >= 0",
        )?;
        check(
            "merge_distance",
            self.merge_distance as f64,
            self.merge_distance.is_finite() && self.merge_distance >= 0.0,
            "a finite number >= 0",
        )?;
        check(
            "lightness_weight",
            self.lightness_weight as f64,
            self.lightness_weight.is_finite() && self.lightness_weight >= 0.0,
            "a finite number >= 0",
        )
    }
}

impl MaskGenerator for GraphSegmenter {
    fn working_size(&self, width: u32, height: u32) -> (usize, usize) {
        working_size(width, height, self.long_side)
    }

    fn segment(&self, image: &RgbImage) -> Result<SegmentMap, SegmentError> {
        self.validate()?;
        let (width, height) = self.working_size(image.width, image.height);
        let lab = lab_image(image, width, height)?;
        self.segment_lab(&lab, width, height)
    }
}

impl GraphSegmenter {
    /// [`MaskGenerator::segment`] of a frame already resized to its working size and converted
    /// to CIELAB ([`lab_image`]), for callers that need the colours too.
    pub fn segment_lab(
        &self,
        lab: &[[f32; 3]],
        width: usize,
        height: usize,
    ) -> Result<SegmentMap, SegmentError> {
        self.validate()?;
        let smooth = gaussian_blur(lab, width, height, self.sigma);
        let graph = felzenszwalb(&smooth, width, height, self.scale, self.min_size);
        Ok(merge_similar(
            &graph,
            lab,
            self.merge_distance,
            self.lightness_weight,
        ))
    }
}

/// The size of a `width x height` frame scaled to `long_side` px on its long side, the short
/// side rounded (at least 1).
pub fn working_size(width: u32, height: u32, long_side: u32) -> (usize, usize) {
    let long = width.max(height).max(1) as f64;
    let scale = long_side as f64 / long;
    let w = ((width as f64 * scale).round() as usize).max(1);
    let h = ((height as f64 * scale).round() as usize).max(1);
    (w, h)
}

/// The frame resized (triangle filter) to `width x height` and converted from sRGB (D65) to
/// CIELAB: L in 0..100, a and b roughly -128..127. Row-major, one `[L, a, b]` per pixel.
///
/// Errors when the image's bytes do not fill its size.
pub fn lab_image(
    image: &RgbImage,
    width: usize,
    height: usize,
) -> Result<Vec<[f32; 3]>, SegmentError> {
    let expected = image.width as usize * image.height as usize * 3;
    let buffer = image::RgbImage::from_raw(image.width, image.height, image.pixels.clone())
        .filter(|_| image.pixels.len() == expected)
        .ok_or(SegmentError::ImageSize {
            width: image.width,
            height: image.height,
            bytes: image.pixels.len(),
            expected,
        })?;
    let resized = if (buffer.width() as usize, buffer.height() as usize) == (width, height) {
        buffer
    } else {
        image::imageops::resize(
            &buffer,
            width as u32,
            height as u32,
            image::imageops::FilterType::Triangle,
        )
    };
    Ok(resized.pixels().map(|p| srgb_to_lab(p.0)).collect())
}

/// One sRGB colour (8 bits per channel) in CIELAB (D65 white).
pub fn srgb_to_lab(rgb: [u8; 3]) -> [f32; 3] {
    static LINEAR: std::sync::OnceLock<[f32; 256]> = std::sync::OnceLock::new();
    let linear = LINEAR.get_or_init(|| {
        std::array::from_fn(|i| {
            let c = i as f32 / 255.0;
            if c <= 0.04045 {
                c / 12.92
            } else {
                ((c + 0.055) / 1.055).powf(2.4)
            }
        })
    });
    let (r, g, b) = (
        linear[rgb[0] as usize],
        linear[rgb[1] as usize],
        linear[rgb[2] as usize],
    );
    let x = (0.4124 * r + 0.3576 * g + 0.1805 * b) / 0.95047;
    let y = 0.2126 * r + 0.7152 * g + 0.0722 * b;
    let z = (0.0193 * r + 0.1192 * g + 0.9505 * b) / 1.08883;
    let f = |t: f32| {
        if t > 216.0 / 24389.0 {
            t.cbrt()
        } else {
            (24389.0 / 27.0 * t + 16.0) / 116.0
        }
    };
    let (fx, fy, fz) = (f(x), f(y), f(z));
    [116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)]
}

/// Separable Gaussian blur of a `width x height` 3-channel image (edges clamped); `sigma` 0
/// returns a copy.
pub fn gaussian_blur(image: &[[f32; 3]], width: usize, height: usize, sigma: f32) -> Vec<[f32; 3]> {
    if sigma <= 0.0 {
        return image.to_vec();
    }
    let radius = (sigma * 3.0).ceil() as isize;
    let kernel: Vec<f32> = (-radius..=radius)
        .map(|i| (-(i * i) as f32 / (2.0 * sigma * sigma)).exp())
        .collect();
    let total: f32 = kernel.iter().sum();
    let kernel: Vec<f32> = kernel.iter().map(|k| k / total).collect();
    let pass = |src: &[[f32; 3]], horizontal: bool| -> Vec<[f32; 3]> {
        let mut out = vec![[0.0f32; 3]; src.len()];
        for y in 0..height {
            for x in 0..width {
                let mut acc = [0.0f32; 3];
                for (k, &weight) in kernel.iter().enumerate() {
                    let offset = k as isize - radius;
                    let (sx, sy) = if horizontal {
                        (
                            (x as isize + offset).clamp(0, width as isize - 1) as usize,
                            y,
                        )
                    } else {
                        (
                            x,
                            (y as isize + offset).clamp(0, height as isize - 1) as usize,
                        )
                    };
                    let p = src[sy * width + sx];
                    acc.iter_mut().zip(p).for_each(|(a, v)| *a += weight * v);
                }
                out[y * width + x] = acc;
            }
        }
        out
    };
    pass(&pass(image, true), false)
}

/// Union-find over pixels or segments, with each set's size and largest internal edge.
struct DisjointSets {
    parent: Vec<usize>,
    size: Vec<usize>,
    /// Largest edge weight inside the set's minimum spanning tree ("Int(C)").
    internal: Vec<f32>,
}

impl DisjointSets {
    fn new(n: usize) -> Self {
        DisjointSets {
            parent: (0..n).collect(),
            size: vec![1; n],
            internal: vec![0.0; n],
        }
    }

    fn find(&mut self, mut x: usize) -> usize {
        while self.parent[x] != x {
            self.parent[x] = self.parent[self.parent[x]];
            x = self.parent[x];
        }
        x
    }

    /// Joins the sets of roots `a` and `b` through an edge of `weight`; returns the new root.
    fn union(&mut self, a: usize, b: usize, weight: f32) -> usize {
        let (big, small) = if self.size[a] >= self.size[b] {
            (a, b)
        } else {
            (b, a)
        };
        self.parent[small] = big;
        self.size[big] += self.size[small];
        self.internal[big] = self.internal[big].max(self.internal[small]).max(weight);
        big
    }
}

fn distance(a: [f32; 3], b: [f32; 3]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f32>()
        .sqrt()
}

/// Graph-based segmentation (Felzenszwalb and Huttenlocher 2004, algorithm 1) of a
/// `width x height` image: pixels are nodes, 8-neighbours are joined by edges weighted by their
/// colour distance; edges are taken in increasing weight, and two segments merge when the edge
/// is no heavier than either's largest internal edge plus `scale / size`. Segments below
/// `min_size` pixels then join a neighbour (lightest edge first).
pub fn felzenszwalb(
    image: &[[f32; 3]],
    width: usize,
    height: usize,
    scale: f32,
    min_size: usize,
) -> SegmentMap {
    let mut edges: Vec<(f32, u32, u32)> = Vec::with_capacity(width * height * 4);
    for y in 0..height {
        for x in 0..width {
            let a = y * width + x;
            let mut link = |bx: usize, by: usize| {
                let b = by * width + bx;
                edges.push((distance(image[a], image[b]), a as u32, b as u32));
            };
            if x + 1 < width {
                link(x + 1, y);
            }
            if y + 1 < height {
                link(x, y + 1);
                if x + 1 < width {
                    link(x + 1, y + 1);
                }
                if x > 0 {
                    link(x - 1, y + 1);
                }
            }
        }
    }
    // Non-negative floats order as their bit patterns; ties in pixel order keep it
    // deterministic.
    edges.sort_unstable_by_key(|&(w, a, b)| ((w.to_bits() as u64) << 32 | a as u64, b));
    let mut sets = DisjointSets::new(width * height);
    for &(weight, a, b) in &edges {
        let (ra, rb) = (sets.find(a as usize), sets.find(b as usize));
        if ra == rb {
            continue;
        }
        let limit = |r: usize, sets: &DisjointSets| sets.internal[r] + scale / sets.size[r] as f32;
        if weight <= limit(ra, &sets) && weight <= limit(rb, &sets) {
            sets.union(ra, rb, weight);
        }
    }
    for &(weight, a, b) in &edges {
        let (ra, rb) = (sets.find(a as usize), sets.find(b as usize));
        if ra != rb && (sets.size[ra] < min_size || sets.size[rb] < min_size) {
            sets.union(ra, rb, weight);
        }
    }
    let labels: Vec<usize> = (0..width * height).map(|p| sets.find(p)).collect();
    SegmentMap::compact(width, height, &labels)
}

/// Merges adjacent segments (4-neighbours) whose mean colours in `image` are closer than
/// `max_distance` (lightness differences weighted by `lightness_weight`), closest pair first;
/// means are updated as segments merge, and passes repeat until no pair merges.
pub fn merge_similar(
    map: &SegmentMap,
    image: &[[f32; 3]],
    max_distance: f32,
    lightness_weight: f32,
) -> SegmentMap {
    let n = map.count;
    let mut sum = vec![[0.0f64; 3]; n];
    for (&s, p) in map.segments.iter().zip(image) {
        sum[s as usize]
            .iter_mut()
            .zip(p)
            .for_each(|(a, &v)| *a += v as f64);
    }
    let mut pairs = std::collections::BTreeSet::new();
    let (w, h) = (map.width, map.height);
    for y in 0..h {
        for x in 0..w {
            let a = map.segments[y * w + x];
            for (bx, by) in [(x + 1, y), (x, y + 1)] {
                if bx < w && by < h {
                    let b = map.segments[by * w + bx];
                    if a != b {
                        pairs.insert((a.min(b), a.max(b)));
                    }
                }
            }
        }
    }
    let mut sets = DisjointSets::new(n);
    for (s, area) in map.areas().into_iter().enumerate() {
        sets.size[s] = area;
    }
    let mean = |sets: &mut DisjointSets, sum: &[[f64; 3]], s: usize| {
        let r = sets.find(s);
        let size = sets.size[r].max(1) as f64;
        let m = sum[r];
        [
            (m[0] / size) as f32 * lightness_weight,
            (m[1] / size) as f32,
            (m[2] / size) as f32,
        ]
    };
    loop {
        let mut candidates: Vec<(f32, usize, usize)> = pairs
            .iter()
            .filter_map(|&(a, b)| {
                let (a, b) = (a as usize, b as usize);
                (sets.find(a) != sets.find(b)).then(|| {
                    let d = distance(mean(&mut sets, &sum, a), mean(&mut sets, &sum, b));
                    (d, a, b)
                })
            })
            .filter(|c| c.0 < max_distance)
            .collect();
        if candidates.is_empty() {
            break;
        }
        candidates.sort_unstable_by(|x, y| x.0.total_cmp(&y.0).then((x.1, x.2).cmp(&(y.1, y.2))));
        let mut merged = false;
        for (_, a, b) in candidates {
            let (ra, rb) = (sets.find(a), sets.find(b));
            if ra == rb {
                continue;
            }
            // The means may have moved since the pair was listed.
            if distance(mean(&mut sets, &sum, ra), mean(&mut sets, &sum, rb)) >= max_distance {
                continue;
            }
            let (sa, sb) = (sum[ra], sum[rb]);
            let root = sets.union(ra, rb, 0.0);
            sum[root] = [sa[0] + sb[0], sa[1] + sb[1], sa[2] + sb[2]];
            merged = true;
        }
        if !merged {
            break;
        }
    }
    let labels: Vec<usize> = map
        .segments
        .iter()
        .map(|&s| sets.find(s as usize))
        .collect();
    SegmentMap::compact(w, h, &labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `w x h` image from a function of (x, y) giving RGB.
    fn image(w: u32, h: u32, colour: impl Fn(u32, u32) -> [u8; 3]) -> RgbImage {
        let mut pixels = Vec::with_capacity((w * h * 3) as usize);
        for y in 0..h {
            for x in 0..w {
                pixels.extend(colour(x, y));
            }
        }
        RgbImage::new(w, h, pixels).unwrap()
    }

    fn segment_at(map: &SegmentMap, x: usize, y: usize) -> u32 {
        map.segments[y * map.width + x]
    }

    #[test]
    fn lab_of_primaries_matches_published_values() {
        // Published sRGB -> CIELAB (D65) values, to 0.1.
        let cases = [
            ([255, 255, 255], [100.0, 0.0, 0.0]),
            ([0, 0, 0], [0.0, 0.0, 0.0]),
            ([255, 0, 0], [53.24, 80.09, 67.20]),
            ([0, 255, 0], [87.73, -86.18, 83.18]),
            ([0, 0, 255], [32.30, 79.19, -107.86]),
        ];
        for (rgb, want) in cases {
            let got = srgb_to_lab(rgb);
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() < 0.15, "{rgb:?}: {got:?}, want {want:?}");
            }
        }
    }

    #[test]
    fn working_size_keeps_the_aspect_ratio() {
        assert_eq!(working_size(224, 224, 448), (448, 448));
        assert_eq!(working_size(1920, 1080, 448), (448, 252));
        assert_eq!(working_size(100, 400, 448), (112, 448));
        assert_eq!(working_size(5000, 1, 448), (448, 1));
    }

    #[test]
    fn blur_keeps_a_flat_image_and_the_mean() {
        let flat = vec![[10.0f32, -3.0, 7.0]; 20 * 10];
        for p in gaussian_blur(&flat, 20, 10, 1.5) {
            for (a, b) in p.iter().zip([10.0, -3.0, 7.0]) {
                assert!((a - b).abs() < 1e-4);
            }
        }
        // One bright pixel in the middle spreads symmetrically, its total kept.
        let mut spot = vec![[0.0f32; 3]; 15 * 15];
        spot[7 * 15 + 7] = [100.0, 0.0, 0.0];
        let blurred = gaussian_blur(&spot, 15, 15, 1.0);
        let total: f32 = blurred.iter().map(|p| p[0]).sum();
        assert!((total - 100.0).abs() < 1e-3, "{total}");
        assert!((blurred[7 * 15 + 6][0] - blurred[7 * 15 + 8][0]).abs() < 1e-5);
        assert!((blurred[6 * 15 + 7][0] - blurred[7 * 15 + 6][0]).abs() < 1e-5);
        assert!(blurred[7 * 15 + 7][0] > blurred[7 * 15 + 8][0]);
    }

    #[test]
    fn discs_on_a_background_are_one_segment_each() {
        // Three 12 px discs of three colours on grey, with a shading gradient.
        let centres = [(20.0f32, 20.0f32), (60.0, 24.0), (40.0, 50.0)];
        let colours = [[200u8, 40, 40], [40, 60, 200], [230, 200, 40]];
        let img = image(80, 64, |x, y| {
            let shade = x as f32 * 0.3;
            for (c, colour) in centres.iter().zip(colours) {
                if ((x as f32 - c.0).powi(2) + (y as f32 - c.1).powi(2)).sqrt() < 6.0 {
                    return colour.map(|v| (v as f32 - shade).clamp(0.0, 255.0) as u8);
                }
            }
            [(120.0 + shade) as u8; 3]
        });
        let segmenter = GraphSegmenter {
            long_side: 80,
            ..GraphSegmenter::default()
        };
        let map = segmenter.segment(&img).unwrap();
        assert_eq!((map.width, map.height), (80, 64));
        assert_eq!(map.count, 4, "background + 3 discs");
        let discs: Vec<u32> = centres
            .iter()
            .map(|c| segment_at(&map, c.0 as usize, c.1 as usize))
            .collect();
        let background = segment_at(&map, 0, 0);
        assert_eq!(segment_at(&map, 79, 63), background);
        let mut all = discs.clone();
        all.push(background);
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 4, "{discs:?} {background}");
        // Each disc's segment is about its area (pi 6^2 = 113 px).
        let areas = map.areas();
        for d in discs {
            let area = areas[d as usize];
            assert!((90..=140).contains(&area), "disc area {area}");
        }
    }

    #[test]
    fn merging_joins_a_shadowed_half_but_not_another_hue() {
        // Left half: one part in light and shadow (same hue, lightness differs by 8);
        // right half: another hue.
        let img = image(40, 20, |x, _| match x {
            0..=9 => [180, 60, 60],
            10..=19 => [160, 45, 45],
            _ => [60, 60, 180],
        });
        let lab = lab_image(&img, 40, 20).unwrap();
        // Three clean stripes before merging.
        let graph = felzenszwalb(&lab, 40, 20, 1.0, 1);
        assert_eq!(graph.count, 3);
        let merged = merge_similar(&graph, &lab, 8.0, 0.5);
        assert_eq!(merged.count, 2);
        assert_eq!(segment_at(&merged, 2, 5), segment_at(&merged, 15, 5));
        assert_ne!(segment_at(&merged, 15, 5), segment_at(&merged, 30, 5));
        // With full lightness weight and a tight distance, the shadow stays apart.
        assert_eq!(merge_similar(&graph, &lab, 3.0, 1.0).count, 3);
    }

    #[test]
    fn small_segments_join_a_neighbour() {
        // A 2x2 speck on a flat field: its own segment unless min_size exceeds 4.
        let img = image(20, 20, |x, y| {
            if (9..11).contains(&x) && (9..11).contains(&y) {
                [0, 0, 0]
            } else {
                [255, 255, 255]
            }
        });
        let lab = lab_image(&img, 20, 20).unwrap();
        assert_eq!(felzenszwalb(&lab, 20, 20, 1.0, 1).count, 2);
        assert_eq!(felzenszwalb(&lab, 20, 20, 1.0, 5).count, 1);
    }

    #[test]
    fn bad_settings_and_images_are_errors() {
        let img = image(8, 8, |_, _| [0, 0, 0]);
        let bad = GraphSegmenter {
            sigma: f32::NAN,
            ..GraphSegmenter::default()
        };
        assert!(matches!(
            bad.segment(&img),
            Err(SegmentError::Setting { name: "sigma", .. })
        ));
        let tiny = GraphSegmenter {
            long_side: 2,
            ..GraphSegmenter::default()
        };
        assert!(matches!(
            tiny.segment(&img),
            Err(SegmentError::Setting {
                name: "long_side",
                ..
            })
        ));
        let broken = RgbImage {
            width: 8,
            height: 8,
            pixels: vec![0; 10],
        };
        assert!(matches!(
            GraphSegmenter::default().segment(&broken),
            Err(SegmentError::ImageSize { bytes: 10, .. })
        ));
    }
}
