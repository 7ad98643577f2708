//! Evaluation reporting, GStreamer-free: per-image scores, exact pixel-level metrics over whole
//! test sets, per-category reports with the MVTec LOCO logical/structural splits, defect types,
//! anomaly subtypes (with the share a composition rule caught) and detectors, a mean row,
//! aligned terminal tables and JSON.
//!
//! Image-level metrics come from [`crate::detect::metrics`]. Pixel-level metrics are computed by
//! [`PixelAccumulator`], which gives the same exact AUROC and F1-max as those functions over the
//! concatenation of all pixels, in 2 bytes per pixel.

use std::collections::BTreeMap;
use std::fmt;

use image::GrayImage;
use serde::{Deserialize, Serialize};

use crate::detect::metrics;
use crate::detect::resize::resize_bilinear_map;

pub use super::plot::{plot_roc, render_roc};

/// The result for one test image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoredImage {
    /// Image path (as listed by the dataset).
    pub path: String,
    /// Ground truth: `true` for a defective image.
    pub anomalous: bool,
    /// Defect type (the test folder name, `"good"` for normal images).
    pub defect: String,
    /// MVTec LOCO anomaly kind of a defective image: `"logical"` or `"structural"`; `None` for
    /// normal images and datasets without the distinction.
    pub split: Option<String>,
    /// Anomaly subtype of a defective image ([`crate::eval::dataset::Sample::subtype`]: such as
    /// `missing_pin`, from `defects_config.json` and the masks or from `logic.json`); `None`
    /// for normal images, unlabelled ones and reports written before subtypes.
    #[serde(default)]
    pub subtype: Option<String>,
    /// Image anomaly score, higher is more anomalous: the fused ranking score
    /// ([`crate::inspector::FrameResult::ranking_score`]), `inf` when a composition rule fired.
    /// Non-finite values are written to JSON as the strings `"inf"`, `"-inf"` and `"NaN"`.
    #[serde(with = "json_f64")]
    pub score: f64,
    /// Each detector's ranking score by detector name
    /// ([`crate::inspector::FrameResult::detector_ranking_scores`]): the calibrated score z, or
    /// the number of fired rules for the composition detector. Empty in reports written before
    /// per-detector scores.
    #[serde(default, with = "json_f64_map")]
    pub detectors: BTreeMap<String, f64>,
    /// The message of every composition rule that fired (such as `pins: 14, expected 15`),
    /// in the detector's order; empty when none fired.
    #[serde(default)]
    pub rules: Vec<String>,
}

/// Serde for an `f64` that may be infinite or NaN, which JSON numbers cannot hold: finite
/// values as numbers, the others as the strings `"inf"`, `"-inf"` and `"NaN"`.
mod json_f64 {
    use serde::{de, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        match *v {
            v if v.is_finite() => s.serialize_f64(v),
            v if v.is_nan() => s.serialize_str("NaN"),
            v if v > 0.0 => s.serialize_str("inf"),
            _ => s.serialize_str("-inf"),
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    pub(super) enum Repr {
        Number(f64),
        Name(String),
    }

    impl Repr {
        pub(super) fn value<E: de::Error>(self) -> Result<f64, E> {
            match self {
                Repr::Number(v) => Ok(v),
                Repr::Name(name) => match name.as_str() {
                    "inf" => Ok(f64::INFINITY),
                    "-inf" => Ok(f64::NEG_INFINITY),
                    "NaN" => Ok(f64::NAN),
                    _ => Err(E::custom(format!(
                        "expected a number, \"inf\", \"-inf\" or \"NaN\", found \"{name}\""
                    ))),
                },
            }
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Repr::deserialize(d)?.value()
    }
}

/// [`json_f64`] for the values of a map.
mod json_f64_map {
    use std::collections::BTreeMap;

    use serde::ser::SerializeMap;
    use serde::{Deserialize, Deserializer, Serializer};

    use super::json_f64::Repr;

    struct Value(f64);

    impl serde::Serialize for Value {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            super::json_f64::serialize(&self.0, s)
        }
    }

    pub fn serialize<S: Serializer>(m: &BTreeMap<String, f64>, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(m.len()))?;
        for (k, &v) in m {
            map.serialize_entry(k, &Value(v))?;
        }
        map.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, f64>, D::Error> {
        BTreeMap::<String, Repr>::deserialize(d)?
            .into_iter()
            .map(|(k, v)| Ok((k, v.value()?)))
            .collect()
    }
}

/// Pixel-wise union of ground-truth masks of equal size: 255 where any mask is nonzero, else 0.
///
/// Errors when `masks` is empty or the sizes differ.
pub fn union_masks(masks: &[GrayImage]) -> Result<GrayImage, String> {
    let first = masks.first().ok_or("no masks to union")?;
    let (w, h) = first.dimensions();
    let mut out = GrayImage::new(w, h);
    for (i, m) in masks.iter().enumerate() {
        if m.dimensions() != (w, h) {
            return Err(format!(
                "mask {i} is {}x{}, mask 0 is {w}x{h}",
                m.width(),
                m.height()
            ));
        }
        let dst: &mut [u8] = &mut out;
        for (o, &v) in dst.iter_mut().zip(m.as_raw()) {
            if v != 0 {
                *o = 255;
            }
        }
    }
    Ok(out)
}

/// Pixel-level metrics over all pixels of all test images of a category.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PixelMetrics {
    /// Pixel AUROC; `None` without anomalous or without normal pixels, or with a NaN score.
    pub auroc: Option<f64>,
    /// Pixel F1-max; `None` without anomalous pixels or with a NaN score.
    pub f1_max: Option<f64>,
    /// Number of pixels evaluated.
    pub pixels: u64,
}

const BUCKETS: usize = 1 << 16;
/// Buckets with more samples than this are ordered by counting instead of sorting.
const COUNTING_MIN: usize = 1 << 16;

/// Order-preserving map of a (non-NaN) `f32` to `u32`: `a < b` iff `key(a) < key(b)` and
/// `a == b` iff `key(a) == key(b)` (`-0.0` and `0.0` share a key).
fn order_key(s: f32) -> u32 {
    let s = if s == 0.0 { 0.0f32 } else { s };
    let bits = s.to_bits();
    if bits & 0x8000_0000 != 0 {
        !bits
    } else {
        bits | 0x8000_0000
    }
}

/// Accumulates (score, label) pairs for exact pixel AUROC and F1-max over many images.
///
/// Each score is stored as the low 16 bits of its order-preserving key in one of 2^16 buckets
/// (indexed by the high 16 bits), one list per label: 2 bytes per pixel, and [`finish`] orders
/// the values bucket by bucket (a radix sort), so the result is the same as sorting all pixels.
/// Ties (equal `f32` values) are never split by a threshold, as in [`crate::detect::metrics`].
///
/// [`finish`]: PixelAccumulator::finish
pub struct PixelAccumulator {
    /// `buckets[high 16 bits] = [normal low halves, anomalous low halves]`.
    buckets: Vec<[Vec<u16>; 2]>,
    pixels: u64,
    anomalous: u64,
    nan: bool,
}

impl Default for PixelAccumulator {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for PixelAccumulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PixelAccumulator")
            .field("pixels", &self.pixels)
            .field("anomalous", &self.anomalous)
            .field("nan", &self.nan)
            .finish_non_exhaustive()
    }
}

impl PixelAccumulator {
    pub fn new() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| [Vec::new(), Vec::new()]).collect(),
            pixels: 0,
            anomalous: 0,
            nan: false,
        }
    }

    /// Pixels accumulated so far.
    pub fn pixels(&self) -> u64 {
        self.pixels
    }

    /// Anomalous pixels accumulated so far.
    pub fn anomalous_pixels(&self) -> u64 {
        self.anomalous
    }

    #[inline]
    fn push(&mut self, score: f32, anomalous: bool) {
        self.pixels += 1;
        self.anomalous += anomalous as u64;
        if score.is_nan() {
            self.nan = true;
            return;
        }
        let k = order_key(score);
        self.buckets[(k >> 16) as usize][anomalous as usize].push(k as u16);
    }

    /// Adds one test image: its anomaly map (`map_w x map_h`, row-major) is resized bilinearly
    /// with half-pixel centres to `size` = (width, height) of the image, and each pixel is
    /// labelled by `mask` (nonzero = anomalous; `None` = all normal). A given mask must be
    /// `size`; union several masks first with [`union_masks`].
    pub fn add(
        &mut self,
        map: &[f32],
        map_w: usize,
        map_h: usize,
        mask: Option<&GrayImage>,
        size: (u32, u32),
    ) -> Result<(), String> {
        if map_w == 0 || map_h == 0 || map.len() != map_w * map_h {
            return Err(format!(
                "anomaly map has {} values, expected {map_w}x{map_h} (nonempty)",
                map.len()
            ));
        }
        if let Some(m) = mask {
            if m.dimensions() != size {
                return Err(format!(
                    "mask is {}x{}, image is {}x{}",
                    m.width(),
                    m.height(),
                    size.0,
                    size.1
                ));
            }
        }
        let resized = resize_bilinear_map(map, map_w, map_h, size.0 as usize, size.1 as usize);
        self.add_pixels(&resized, mask.map(|m| m.as_raw().as_slice()))
    }

    /// Adds pixels whose scores are already aligned with the labels: `labels[i] != 0` marks
    /// `scores[i]` anomalous; `None` = all normal.
    pub fn add_pixels(&mut self, scores: &[f32], labels: Option<&[u8]>) -> Result<(), String> {
        match labels {
            Some(l) => {
                if l.len() != scores.len() {
                    return Err(format!("{} scores but {} labels", scores.len(), l.len()));
                }
                for (&s, &v) in scores.iter().zip(l) {
                    self.push(s, v != 0);
                }
            }
            None => {
                for &s in scores {
                    self.push(s, false);
                }
            }
        }
        Ok(())
    }

    /// Moves all pixels of `other` into `self` (e.g. after accumulating in parallel).
    pub fn merge(&mut self, mut other: PixelAccumulator) {
        self.pixels += other.pixels;
        self.anomalous += other.anomalous;
        self.nan |= other.nan;
        for (dst, src) in self.buckets.iter_mut().zip(other.buckets.iter_mut()) {
            for c in 0..2 {
                if dst[c].is_empty() {
                    dst[c] = std::mem::take(&mut src[c]);
                } else {
                    dst[c].extend_from_slice(&src[c]);
                }
            }
        }
    }

    /// Exact pixel AUROC (ties count 1/2) and F1-max (thresholds between distinct values) over
    /// all accumulated pixels; frees the storage bucket by bucket while sweeping.
    pub fn finish(mut self) -> PixelMetrics {
        let pixels = self.pixels;
        let pos = self.anomalous;
        let neg = pixels - pos;
        if self.nan || pos == 0 {
            return PixelMetrics {
                auroc: None,
                f1_max: None,
                pixels,
            };
        }
        // Descending sweep over distinct values: `fp`/`tp` count samples above the current group.
        let (mut tp, mut fp) = (0u64, 0u64);
        let mut auc2: u128 = 0; // 2 * (pairs ranked correctly + ties / 2)
        let mut best_f1 = 0.0f64;
        for hi in (0..BUCKETS).rev() {
            let [mut nb, mut pb] = std::mem::take(&mut self.buckets[hi]);
            if nb.is_empty() && pb.is_empty() {
                continue;
            }
            groups_desc(&mut nb, &mut pb, |gn, gp| {
                let neg_below = neg - fp - gn;
                auc2 += gp as u128 * (2 * neg_below as u128 + gn as u128);
                tp += gp;
                fp += gn;
                let f1 = 2.0 * tp as f64 / (tp + fp + pos) as f64;
                best_f1 = best_f1.max(f1);
            });
        }
        let auroc = (neg > 0).then(|| auc2 as f64 / (2 * pos as u128 * neg as u128) as f64);
        PixelMetrics {
            auroc,
            f1_max: Some(best_f1),
            pixels,
        }
    }
}

/// Calls `f(normal count, anomalous count)` once per distinct value of the union of `neg` and
/// `pos`, from the largest value down.
fn groups_desc(neg: &mut [u16], pos: &mut [u16], mut f: impl FnMut(u64, u64)) {
    if neg.len() + pos.len() > COUNTING_MIN {
        let mut cn = vec![0u64; 1 << 16];
        let mut cp = vec![0u64; 1 << 16];
        for &v in neg.iter() {
            cn[v as usize] += 1;
        }
        for &v in pos.iter() {
            cp[v as usize] += 1;
        }
        for v in (0..1usize << 16).rev() {
            if cn[v] != 0 || cp[v] != 0 {
                f(cn[v], cp[v]);
            }
        }
        return;
    }
    neg.sort_unstable();
    pos.sort_unstable();
    let (mut i, mut j) = (neg.len(), pos.len());
    while i > 0 || j > 0 {
        let v = match (i > 0, j > 0) {
            (true, true) => neg[i - 1].max(pos[j - 1]),
            (true, false) => neg[i - 1],
            _ => pos[j - 1],
        };
        let (mut gn, mut gp) = (0u64, 0u64);
        while i > 0 && neg[i - 1] == v {
            gn += 1;
            i -= 1;
        }
        while j > 0 && pos[j - 1] == v {
            gp += 1;
            j -= 1;
        }
        f(gn, gp);
    }
}

/// How well reported region boxes frame the ground-truth defects of a set of images.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BoxMetrics {
    /// Ground-truth defects: 8-connected components of the masks, over all defective images.
    pub components: usize,
    /// Mean over the components of the best intersection over union between a reported box and
    /// the component's bounding box (0 for a component no box overlaps).
    pub mean_iou: Option<f64>,
    /// Fraction of the components whose best IoU is at least 0.5.
    pub found_at_iou_50: Option<f64>,
    /// Mean number of boxes reported on a defective image with masks.
    pub boxes_per_defective_image: Option<f64>,
    /// Mean number of boxes reported on a good image (all of them false).
    pub boxes_per_good_image: Option<f64>,
}

/// [`BoxMetrics`] under one region setting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegionBoxes {
    /// [`crate::detect::regions::RegionOptions::peak_fraction`].
    pub peak_fraction: f32,
    /// [`crate::detect::regions::RegionOptions::peak_scope`]: `region` or `frame`.
    pub peak_scope: String,
    /// [`crate::detect::regions::RegionOptions::merge_overlapping`].
    pub merge_overlapping: bool,
    #[serde(flatten)]
    pub metrics: BoxMetrics,
}

/// A box: left, top, width, height in pixels.
pub type PixelBox = (u32, u32, u32, u32);

/// Intersection over union of two boxes (0 when both are empty).
pub fn box_iou(a: PixelBox, b: PixelBox) -> f64 {
    let overlap = |a0: u32, a_len: u32, b0: u32, b_len: u32| {
        (a0 + a_len).min(b0 + b_len).saturating_sub(a0.max(b0)) as f64
    };
    let intersection = overlap(a.0, a.2, b.0, b.2) * overlap(a.1, a.3, b.1, b.3);
    let union = (a.2 as f64 * a.3 as f64) + (b.2 as f64 * b.3 as f64) - intersection;
    if union > 0.0 {
        intersection / union
    } else {
        0.0
    }
}

/// The bounding boxes of the 8-connected components of a mask's nonzero pixels.
pub fn mask_components(mask: &GrayImage) -> Vec<PixelBox> {
    let values: Vec<f32> = mask
        .as_raw()
        .iter()
        .map(|&v| (v != 0) as u8 as f32)
        .collect();
    let (w, h) = (mask.width() as usize, mask.height() as usize);
    crate::detect::regions::regions_above(&values, w, h, 0.5, 1)
        .into_iter()
        .map(|r| (r.x, r.y, r.width, r.height))
        .collect()
}

/// Gathers [`BoxMetrics`] image by image.
#[derive(Debug, Clone, Default)]
pub struct BoxAccumulator {
    best_ious: Vec<f64>,
    defective_images: usize,
    defective_boxes: usize,
    good_images: usize,
    good_boxes: usize,
}

impl BoxAccumulator {
    /// Adds one image: its union mask (`None` for a good image) and the boxes reported on it,
    /// in the pixels of a frame of `frame` (width, height); boxes are scaled to the mask's size
    /// when it differs.
    pub fn add(&mut self, mask: Option<&GrayImage>, boxes: &[PixelBox], frame: (u32, u32)) {
        let Some(mask) = mask else {
            self.good_images += 1;
            self.good_boxes += boxes.len();
            return;
        };
        let (sx, sy) = (
            mask.width() as f64 / frame.0.max(1) as f64,
            mask.height() as f64 / frame.1.max(1) as f64,
        );
        let scaled: Vec<PixelBox> = boxes
            .iter()
            .map(|&(x, y, w, h)| {
                let x0 = (x as f64 * sx).floor() as u32;
                let y0 = (y as f64 * sy).floor() as u32;
                let x1 = ((x + w) as f64 * sx).ceil() as u32;
                let y1 = ((y + h) as f64 * sy).ceil() as u32;
                (x0, y0, x1 - x0, y1 - y0)
            })
            .collect();
        self.defective_images += 1;
        self.defective_boxes += boxes.len();
        for component in mask_components(mask) {
            let best = scaled
                .iter()
                .map(|&b| box_iou(component, b))
                .fold(0.0, f64::max);
            self.best_ious.push(best);
        }
    }

    pub fn finish(&self) -> BoxMetrics {
        let n = self.best_ious.len();
        let mean = |total: f64, count: usize| (count > 0).then(|| total / count as f64);
        BoxMetrics {
            components: n,
            mean_iou: mean(self.best_ious.iter().sum(), n),
            found_at_iou_50: mean(
                self.best_ious.iter().filter(|&&iou| iou >= 0.5).count() as f64,
                n,
            ),
            boxes_per_defective_image: mean(self.defective_boxes as f64, self.defective_images),
            boxes_per_good_image: mean(self.good_boxes as f64, self.good_images),
        }
    }
}

/// Image-level metrics on a subset of a category (MVTec LOCO logical or structural anomalies,
/// together with all normal images).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SplitMetrics {
    pub images: usize,
    pub anomalies: usize,
    pub auroc: Option<f64>,
    pub f1_max: Option<f64>,
}

impl SplitMetrics {
    fn of<'a>(images: impl Iterator<Item = &'a ScoredImage>) -> Self {
        let (scores, labels): (Vec<f64>, Vec<bool>) =
            images.map(|s| (s.score, s.anomalous)).unzip();
        Self {
            images: scores.len(),
            anomalies: labels.iter().filter(|&&l| l).count(),
            auroc: metrics::auroc(&scores, &labels),
            f1_max: metrics::f1_max(&scores, &labels),
        }
    }
}

/// Image AUROC of one detector's own scores ([`ScoredImage::detectors`]), over a category's
/// test images that carry a score of that detector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectorMetrics {
    /// Detector name (`patch`, `interest`, `composition`, ...).
    pub detector: String,
    /// Test images with a score of this detector.
    pub images: usize,
    /// Image AUROC (ties count 1/2); `None` without anomalous or normal images or with a NaN.
    pub image_auroc: Option<f64>,
    /// AUROC over the normal images plus the logical anomalies; `None` when the category has
    /// no logical anomalies.
    pub logical_auroc: Option<f64>,
    /// AUROC over the normal images plus the structural anomalies; `None` when the category
    /// has no structural anomalies.
    pub structural_auroc: Option<f64>,
}

impl DetectorMetrics {
    /// One entry per detector named in `scores`, in name order.
    fn of_all(scores: &[ScoredImage]) -> Vec<Self> {
        let mut names: Vec<&str> = scores
            .iter()
            .flat_map(|s| s.detectors.keys().map(String::as_str))
            .collect();
        names.sort_unstable();
        names.dedup();
        names
            .into_iter()
            .map(|name| {
                let auroc = |keep: &dyn Fn(&ScoredImage) -> bool| {
                    let (values, labels): (Vec<f64>, Vec<bool>) = scores
                        .iter()
                        .filter(|s| keep(s))
                        .filter_map(|s| Some((*s.detectors.get(name)?, s.anomalous)))
                        .unzip();
                    (values.len(), metrics::auroc(&values, &labels))
                };
                let split = |split: &str| {
                    let present = scores.iter().any(|s| s.anomalous && is_split(s, split));
                    present
                        .then(|| auroc(&|s| !s.anomalous || is_split(s, split)).1)
                        .flatten()
                };
                let (images, image_auroc) = auroc(&|_| true);
                DetectorMetrics {
                    detector: name.to_string(),
                    images,
                    image_auroc,
                    logical_auroc: split("logical"),
                    structural_auroc: split("structural"),
                }
            })
            .collect()
    }
}

/// Image-level metrics of one defect type: the category's normal images plus the images of
/// that type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DefectMetrics {
    pub defect: String,
    #[serde(flatten)]
    pub metrics: SplitMetrics,
}

/// Image-level metrics of one anomaly subtype ([`ScoredImage::subtype`]): the category's
/// normal images plus the anomalous images of that subtype and split, as [`DefectMetrics`]
/// does for defect types; and how many of those anomalous images a composition rule caught.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubtypeMetrics {
    /// Subtype name (several defects of one image joined with `+`, sorted).
    pub subtype: String,
    /// `"logical"` or `"structural"` (MVTec LOCO); `None` for images without a split. A
    /// subtype found in two splits gets one entry per split.
    pub split: Option<String>,
    /// `images` (normal plus this subtype's), `anomalies` (this subtype's), `auroc`, `f1_max`.
    #[serde(flatten)]
    pub metrics: SplitMetrics,
    /// Fraction of this subtype's anomalous images on which a composition rule fired
    /// ([`ScoredImage::rules`] non-empty); `None` when no image of the category has a
    /// `composition` detector score (the preset has no composition detector).
    pub caught_by_rules: Option<f64>,
}

impl SubtypeMetrics {
    /// One entry per (split, subtype) of the anomalous images that carry a subtype, ordered by
    /// split (`logical`, `structural`, none) and then by name.
    fn of_all(scores: &[ScoredImage]) -> Vec<Self> {
        let rank = |split: &Option<String>| match split.as_deref() {
            Some(s) if s.eq_ignore_ascii_case("logical") => 0,
            Some(s) if s.eq_ignore_ascii_case("structural") => 1,
            Some(_) => 2,
            None => 3,
        };
        let mut keys: Vec<(&Option<String>, &str)> = scores
            .iter()
            .filter(|s| s.anomalous)
            .filter_map(|s| Some((&s.split, s.subtype.as_deref()?)))
            .collect();
        keys.sort_by(|a, b| (rank(a.0), a.0, a.1).cmp(&(rank(b.0), b.0, b.1)));
        keys.dedup();
        let rules_ran = scores
            .iter()
            .any(|s| s.detectors.contains_key("composition"));
        keys.into_iter()
            .map(|(split, name)| {
                let own = |s: &ScoredImage| {
                    s.anomalous && s.split == *split && s.subtype.as_deref() == Some(name)
                };
                let metrics = SplitMetrics::of(scores.iter().filter(|s| !s.anomalous || own(s)));
                let caught = scores
                    .iter()
                    .filter(|s| own(s) && !s.rules.is_empty())
                    .count();
                SubtypeMetrics {
                    subtype: name.to_string(),
                    split: split.clone(),
                    caught_by_rules: rules_ran
                        .then(|| caught as f64 / metrics.anomalies.max(1) as f64),
                    metrics,
                }
            })
            .collect()
    }
}

/// Wall-clock timings of a category run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    /// Seconds spent in model inference (feature extraction).
    pub model_s: f64,
    /// Seconds spent in memory-bank matching and scoring.
    pub matching_s: f64,
    /// Of `matching_s`, seconds in each stage after the backbone: the patch detectors, the part
    /// stage (labels and instances), the interest detector and the composition rules (absent
    /// from reports of older versions: 0).
    #[serde(default)]
    pub patch_s: f64,
    #[serde(default)]
    pub parts_s: f64,
    #[serde(default)]
    pub interest_s: f64,
    #[serde(default)]
    pub composition_s: f64,
    /// Mean end-to-end milliseconds per test image.
    pub per_image_ms: f64,
}

/// Results of one category.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CategoryReport {
    pub category: String,
    /// Test images.
    pub images: usize,
    /// Defective test images.
    pub anomalies: usize,
    pub image_auroc: Option<f64>,
    pub image_f1_max: Option<f64>,
    /// Normal images plus logical anomalies; `None` when there are no logical anomalies.
    pub logical: Option<SplitMetrics>,
    /// Normal images plus structural anomalies; `None` when there are no structural anomalies.
    pub structural: Option<SplitMetrics>,
    /// One entry per defect type, in order of first appearance.
    #[serde(default)]
    pub defects: Vec<DefectMetrics>,
    /// One entry per anomaly subtype and split ([`SubtypeMetrics::of_all`] order); empty when
    /// no image carries a subtype, and in reports written before subtypes.
    #[serde(default)]
    pub subtypes: Vec<SubtypeMetrics>,
    /// Each detector's own image AUROC (overall and per LOCO split), in name order; empty
    /// when the images carry no per-detector scores.
    #[serde(default)]
    pub detectors: Vec<DetectorMetrics>,
    pub pixel: Option<PixelMetrics>,
    /// How well the region boxes frame the masks' defects, per region setting evaluated; empty
    /// without masks.
    #[serde(default)]
    pub boxes: Vec<RegionBoxes>,
    pub timing: Timing,
    /// Free-form run settings (model, resolution, thresholds...).
    pub settings: serde_json::Value,
    /// Every test image's scores and fired rules, in the order they were scored.
    #[serde(default)]
    pub per_image: Vec<ScoredImage>,
}

fn is_split(s: &ScoredImage, name: &str) -> bool {
    s.split
        .as_deref()
        .is_some_and(|x| x.eq_ignore_ascii_case(name))
}

impl CategoryReport {
    /// Computes image-level metrics from per-image scores, overall, per defect type, per anomaly
    /// subtype and per detector. Normal images count in both LOCO splits, in every defect type
    /// and in every subtype; a split is reported only
    /// when some anomalous image carries it. The scores are kept in [`CategoryReport::per_image`].
    pub fn from_scores(
        category: impl Into<String>,
        scores: &[ScoredImage],
        pixel: Option<PixelMetrics>,
        timing: Timing,
        settings: serde_json::Value,
    ) -> Self {
        let all = SplitMetrics::of(scores.iter());
        let split = |name: &str| {
            scores
                .iter()
                .any(|s| s.anomalous && is_split(s, name))
                .then(|| {
                    SplitMetrics::of(scores.iter().filter(|s| !s.anomalous || is_split(s, name)))
                })
        };
        let mut defect_names: Vec<&str> = Vec::new();
        for s in scores.iter().filter(|s| s.anomalous) {
            if !defect_names.contains(&s.defect.as_str()) {
                defect_names.push(&s.defect);
            }
        }
        let defects = defect_names
            .into_iter()
            .map(|name| DefectMetrics {
                defect: name.to_string(),
                metrics: SplitMetrics::of(
                    scores.iter().filter(|s| !s.anomalous || s.defect == name),
                ),
            })
            .collect();
        Self {
            category: category.into(),
            images: all.images,
            anomalies: all.anomalies,
            image_auroc: all.auroc,
            image_f1_max: all.f1_max,
            logical: split("logical"),
            structural: split("structural"),
            defects,
            subtypes: SubtypeMetrics::of_all(scores),
            detectors: DetectorMetrics::of_all(scores),
            pixel,
            boxes: Vec::new(),
            timing,
            settings,
            per_image: scores.to_vec(),
        }
    }
}

/// Each metric averaged over the categories where it is defined (`None` where it is nowhere).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct MeanRow {
    pub categories: usize,
    /// Total test images over all categories.
    pub images: usize,
    pub image_auroc: Option<f64>,
    pub image_f1_max: Option<f64>,
    pub logical_auroc: Option<f64>,
    pub logical_f1_max: Option<f64>,
    pub structural_auroc: Option<f64>,
    pub structural_f1_max: Option<f64>,
    pub pixel_auroc: Option<f64>,
    pub pixel_f1_max: Option<f64>,
    /// Mean of the categories' ms per image (finite values only).
    pub per_image_ms: Option<f64>,
}

fn mean_of(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let (sum, n) = values
        .flatten()
        .filter(|v| v.is_finite())
        .fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / n as f64)
}

impl MeanRow {
    pub fn of(categories: &[CategoryReport]) -> Self {
        let m = |f: &dyn Fn(&CategoryReport) -> Option<f64>| mean_of(categories.iter().map(f));
        Self {
            categories: categories.len(),
            images: categories.iter().map(|c| c.images).sum(),
            image_auroc: m(&|c| c.image_auroc),
            image_f1_max: m(&|c| c.image_f1_max),
            logical_auroc: m(&|c| c.logical.and_then(|s| s.auroc)),
            logical_f1_max: m(&|c| c.logical.and_then(|s| s.f1_max)),
            structural_auroc: m(&|c| c.structural.and_then(|s| s.auroc)),
            structural_f1_max: m(&|c| c.structural.and_then(|s| s.f1_max)),
            pixel_auroc: m(&|c| c.pixel.and_then(|p| p.auroc)),
            pixel_f1_max: m(&|c| c.pixel.and_then(|p| p.f1_max)),
            per_image_ms: m(&|c| (c.images > 0).then_some(c.timing.per_image_ms)),
        }
    }
}

/// A whole evaluation run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub categories: Vec<CategoryReport>,
    pub mean: MeanRow,
}

/// Percentage with one decimal (`0.9876` -> `98.8`), `-` when undefined.
fn pct(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{:.1}", v * 100.0),
        _ => "-".to_string(),
    }
}

fn ms(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.1}"),
        _ => "-".to_string(),
    }
}

const HEADER: [&str; 9] = [
    "category",
    "images",
    "image AUROC",
    "F1-max",
    "logical AUROC",
    "structural AUROC",
    "pixel AUROC",
    "pixel F1-max",
    "ms/image",
];

impl Report {
    /// Builds a report, computing the mean row.
    pub fn new(categories: Vec<CategoryReport>) -> Self {
        let mean = MeanRow::of(&categories);
        Self { categories, mean }
    }

    /// Pretty-printed JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("report serialises")
    }

    pub fn from_json(s: &str) -> Result<Self, String> {
        serde_json::from_str(s).map_err(|e| e.to_string())
    }

    /// Aligned table: one row per category and a final `mean` row; metrics in percent with one
    /// decimal, `-` where undefined. The category column is left-aligned, the rest right-aligned,
    /// columns are separated by two spaces, and dashed rules follow the header and precede the
    /// mean row. Every line ends with a newline.
    pub fn table(&self) -> String {
        let row = |c: &CategoryReport| -> [String; 9] {
            [
                c.category.clone(),
                c.images.to_string(),
                pct(c.image_auroc),
                pct(c.image_f1_max),
                pct(c.logical.and_then(|s| s.auroc)),
                pct(c.structural.and_then(|s| s.auroc)),
                pct(c.pixel.and_then(|p| p.auroc)),
                pct(c.pixel.and_then(|p| p.f1_max)),
                ms((c.images > 0).then_some(c.timing.per_image_ms)),
            ]
        };
        let m = &self.mean;
        let mean_row = [
            "mean".to_string(),
            m.images.to_string(),
            pct(m.image_auroc),
            pct(m.image_f1_max),
            pct(m.logical_auroc),
            pct(m.structural_auroc),
            pct(m.pixel_auroc),
            pct(m.pixel_f1_max),
            ms(m.per_image_ms),
        ];
        let header = HEADER.map(str::to_string);
        let body: Vec<[String; 9]> = self.categories.iter().map(row).collect();
        aligned_table(1, &header, &body, Some(&mean_row))
    }

    /// Region boxes against the masks, one row per category with masks and region setting
    /// (category, peak fraction and scope, merging, defects, mean IoU and found at IoU >= 0.5 in percent,
    /// boxes per defective and per good image); `None` when no category has masks.
    pub fn boxes_table(&self) -> Option<String> {
        let count = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
        let body: Vec<[String; 9]> = self
            .categories
            .iter()
            .flat_map(|c| c.boxes.iter().map(move |b| (c, b)))
            .filter(|(_, b)| b.metrics.components > 0)
            .map(|(c, b)| {
                let m = &b.metrics;
                [
                    c.category.clone(),
                    b.peak_fraction.to_string(),
                    b.peak_scope.clone(),
                    if b.merge_overlapping { "yes" } else { "no" }.to_string(),
                    m.components.to_string(),
                    pct(m.mean_iou),
                    pct(m.found_at_iou_50),
                    count(m.boxes_per_defective_image),
                    count(m.boxes_per_good_image),
                ]
            })
            .collect();
        if body.is_empty() {
            return None;
        }
        let header = [
            "category",
            "peak fraction",
            "of peak",
            "merged",
            "defects",
            "box IoU",
            "found (IoU>=0.5)",
            "boxes/defective",
            "boxes/good",
        ]
        .map(String::from);
        Some(aligned_table(1, &header, &body, None))
    }

    /// Defect types as rows (category, defect, images, image AUROC, F1-max), each over the
    /// category's normal images plus that type; the same alignment as [`Report::table`].
    pub fn defect_table(&self) -> String {
        let header =
            ["category", "defect type", "images", "image AUROC", "F1-max"].map(String::from);
        let body: Vec<[String; 5]> = self
            .categories
            .iter()
            .flat_map(|c| {
                c.defects.iter().map(|d| {
                    [
                        c.category.clone(),
                        d.defect.clone(),
                        d.metrics.images.to_string(),
                        pct(d.metrics.auroc),
                        pct(d.metrics.f1_max),
                    ]
                })
            })
            .collect();
        aligned_table(2, &header, &body, None)
    }

    /// Each detector's image AUROC next to the fused one (rows: category, detector, image
    /// AUROC, logical, structural; the fused score's row is named `fused`), in percent with
    /// the alignment of [`Report::defect_table`]; `None` unless some category ran more than
    /// one detector.
    pub fn detector_table(&self) -> Option<String> {
        if !self.categories.iter().any(|c| c.detectors.len() > 1) {
            return None;
        }
        let header = [
            "category",
            "detector",
            "image AUROC",
            "logical",
            "structural",
        ]
        .map(String::from);
        let body: Vec<[String; 5]> = self
            .categories
            .iter()
            .filter(|c| !c.detectors.is_empty())
            .flat_map(|c| {
                let fused = [
                    c.category.clone(),
                    "fused".to_string(),
                    pct(c.image_auroc),
                    pct(c.logical.and_then(|s| s.auroc)),
                    pct(c.structural.and_then(|s| s.auroc)),
                ];
                c.detectors
                    .iter()
                    .map(|d| {
                        [
                            c.category.clone(),
                            d.detector.clone(),
                            pct(d.image_auroc),
                            pct(d.logical_auroc),
                            pct(d.structural_auroc),
                        ]
                    })
                    .chain(std::iter::once(fused))
            })
            .collect();
        Some(aligned_table(2, &header, &body, None))
    }

    /// Anomaly subtypes as rows (category, split, subtype, images, image AUROC, F1-max, caught
    /// by rules), each over the category's normal images plus that subtype's; in percent with
    /// the alignment of [`Report::defect_table`] (three name columns), `-` where undefined
    /// (caught by rules: no composition detector). `None` when no category has subtypes.
    pub fn subtype_table(&self) -> Option<String> {
        let header = [
            "category",
            "split",
            "subtype",
            "images",
            "image AUROC",
            "F1-max",
            "caught by rules",
        ]
        .map(String::from);
        let body: Vec<[String; 7]> = self
            .categories
            .iter()
            .flat_map(|c| {
                c.subtypes.iter().map(|t| {
                    [
                        c.category.clone(),
                        t.split.clone().unwrap_or_else(|| "-".into()),
                        t.subtype.clone(),
                        t.metrics.images.to_string(),
                        pct(t.metrics.auroc),
                        pct(t.metrics.f1_max),
                        pct(t.caught_by_rules),
                    ]
                })
            })
            .collect();
        (!body.is_empty()).then(|| aligned_table(3, &header, &body, None))
    }

    /// Rows in [`Report::defect_table`].
    pub fn defect_rows(&self) -> usize {
        self.categories.iter().map(|c| c.defects.len()).sum()
    }
}

/// Lines of cells separated by two spaces, the first `left_columns` columns (names)
/// left-aligned and the others right-aligned; a dashed rule after the header and before the footer row. Every line ends
/// with a newline, without trailing spaces.
pub fn aligned_table<const N: usize>(
    left_columns: usize,
    header: &[String; N],
    body: &[[String; N]],
    footer: Option<&[String; N]>,
) -> String {
    let mut widths = [0usize; N];
    for r in std::iter::once(header).chain(body).chain(footer) {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |r: &[String; N]| -> String {
        let cells: Vec<String> = r
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(i, (cell, w))| {
                if i < left_columns {
                    format!("{cell:<w$}")
                } else {
                    format!("{cell:>w$}")
                }
            })
            .collect();
        format!("{}\n", cells.join("  ").trim_end())
    };
    let rule = format!(
        "{}\n",
        "-".repeat(widths.iter().sum::<usize>() + 2 * N.saturating_sub(1))
    );
    let mut out = line(header);
    out.push_str(&rule);
    for r in body {
        out.push_str(&line(r));
    }
    if let Some(footer) = footer {
        out.push_str(&rule);
        out.push_str(&line(footer));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn close(a: Option<f64>, b: Option<f64>) -> bool {
        match (a, b) {
            (Some(a), Some(b)) => (a - b).abs() < 1e-12,
            (None, None) => true,
            _ => false,
        }
    }

    fn img(score: f64, anomalous: bool, split: Option<&str>) -> ScoredImage {
        ScoredImage {
            path: format!("{score}.png"),
            anomalous,
            defect: if anomalous { "defect" } else { "good" }.to_string(),
            split: split.map(str::to_string),
            subtype: None,
            score,
            detectors: BTreeMap::new(),
            rules: Vec::new(),
        }
    }

    #[test]
    fn order_key_is_monotonic() {
        let v = [
            f32::NEG_INFINITY,
            f32::MIN,
            -1.5,
            -1.0e-40, // subnormal
            0.0,
            1.0e-40,
            f32::MIN_POSITIVE,
            0.25,
            1.0,
            f32::MAX,
            f32::INFINITY,
        ];
        for w in v.windows(2) {
            assert!(order_key(w[0]) < order_key(w[1]), "{} vs {}", w[0], w[1]);
        }
        assert_eq!(order_key(-0.0), order_key(0.0));
    }

    #[test]
    fn union_of_masks() {
        let a = GrayImage::from_raw(3, 1, vec![0, 7, 0]).unwrap();
        let b = GrayImage::from_raw(3, 1, vec![0, 0, 1]).unwrap();
        let u = union_masks(&[a.clone(), b]).unwrap();
        assert_eq!(u.as_raw(), &vec![0, 255, 255]);
        assert_eq!(
            union_masks(std::slice::from_ref(&a)).unwrap().as_raw(),
            &vec![0, 255, 0]
        );
        assert!(union_masks(&[]).is_err());
        assert!(union_masks(&[a, GrayImage::new(1, 3)]).is_err());
    }

    #[test]
    fn pixel_hand_computed() {
        // Descending 0.8 P, 0.4 N, 0.35 P, 0.1 N: AUROC 3/4; F1 at t=0.35: tp2 fp1 -> 4/5.
        let mut acc = PixelAccumulator::new();
        acc.add_pixels(&[0.1, 0.4], Some(&[0, 0])).unwrap();
        acc.add_pixels(&[0.35, 0.8], Some(&[1, 255])).unwrap();
        let m = acc.finish();
        assert_eq!(m.pixels, 4);
        assert!(close(m.auroc, Some(0.75)));
        assert!(close(m.f1_max, Some(0.8)));
        assert!(PixelAccumulator::new()
            .add_pixels(&[0.1], Some(&[0, 1]))
            .is_err());
    }

    #[test]
    fn pixel_map_is_resized_to_mask() {
        // 2x2 map [[0, 1], [2, 3]] resized to 4x4 with half-pixel centres: taps 0, 1/4, 3/4, 1
        // per axis, value = 2 * ty + tx. Rows: [0, .25, .75, 1], [.5, .75, 1.25, 1.5],
        // [1.5, 1.75, 2.25, 2.5], [2, 2.25, 2.75, 3]. The bottom half is anomalous: of the 64
        // (anomalous, normal) pairs only 1.5 vs 1.5 ties -> AUROC (63 + 1/2) / 64. F1-max is at
        // t = 1.5: tp 8, fp 1 -> 16/17 (t = 1.75 gives tp 7, fp 0 -> 14/15).
        let map = [0.0f32, 1.0, 2.0, 3.0];
        let mut mask = GrayImage::new(4, 4);
        for y in 2..4 {
            for x in 0..4 {
                mask.put_pixel(x, y, image::Luma([255]));
            }
        }
        let mut acc = PixelAccumulator::new();
        acc.add(&map, 2, 2, Some(&mask), (4, 4)).unwrap();
        let m = acc.finish();
        assert_eq!(m.pixels, 16);
        assert_eq!(m.auroc, Some(63.5 / 64.0));
        assert!(close(m.f1_max, Some(16.0 / 17.0)));

        let mut acc = PixelAccumulator::new();
        assert!(acc.add(&map, 2, 2, Some(&mask), (4, 5)).is_err());
        assert!(acc.add(&map, 3, 2, None, (4, 4)).is_err());
        assert!(acc.add(&map, 0, 0, None, (4, 4)).is_err());
        assert_eq!(acc.pixels(), 0);
    }

    #[test]
    fn pixel_all_normal_and_degenerate() {
        let mut acc = PixelAccumulator::new();
        acc.add(&[0.1, 0.2, 0.3, 0.4], 2, 2, None, (5, 3)).unwrap();
        let m = acc.finish();
        assert_eq!(
            m,
            PixelMetrics {
                auroc: None,
                f1_max: None,
                pixels: 15
            }
        );
        // All anomalous: AUROC undefined, F1-max 1 (as detect::metrics).
        let mut acc = PixelAccumulator::new();
        acc.add_pixels(&[0.3, 0.1], Some(&[1, 1])).unwrap();
        let m = acc.finish();
        assert_eq!((m.auroc, m.f1_max), (None, Some(1.0)));
        // A NaN makes both undefined.
        let mut acc = PixelAccumulator::new();
        acc.add_pixels(&[0.3, f32::NAN, 0.1], Some(&[1, 0, 0]))
            .unwrap();
        let m = acc.finish();
        assert_eq!((m.auroc, m.f1_max, m.pixels), (None, None, 3));
        // Empty.
        let m = PixelAccumulator::new().finish();
        assert_eq!((m.auroc, m.f1_max, m.pixels), (None, None, 0));
    }

    /// Random images (some without mask), few distinct levels (ties, including -0.0 vs 0.0 and
    /// negative values), against detect::metrics over the concatenated resized pixels.
    #[test]
    fn pixel_random_against_reference() {
        let mut rng = StdRng::seed_from_u64(5);
        for round in 0..40 {
            let mut acc = PixelAccumulator::new();
            let mut half = PixelAccumulator::new(); // second half, merged at the end
            let (mut ref_s, mut ref_l) = (Vec::new(), Vec::new());
            let levels = rng.random_range(1..10);
            let n_images = rng.random_range(1..5);
            for i in 0..n_images {
                let (mw, mh) = (rng.random_range(1..5), rng.random_range(1..5));
                let map: Vec<f32> = (0..mw * mh)
                    .map(|_| match rng.random_range(0..levels) {
                        0 => -0.0,
                        1 => 0.0,
                        k => (k as f32 - 4.0) / 3.0,
                    })
                    .collect();
                let (w, h) = (rng.random_range(1..9u32), rng.random_range(1..9u32));
                let mask = rng.random_bool(0.7).then(|| {
                    let p = rng.random_range(0.0..1.0);
                    GrayImage::from_fn(w, h, |_, _| image::Luma([rng.random_bool(p) as u8 * 200]))
                });
                let target = if i % 2 == 0 { &mut acc } else { &mut half };
                target.add(&map, mw, mh, mask.as_ref(), (w, h)).unwrap();
                let resized = resize_bilinear_map(&map, mw, mh, w as usize, h as usize);
                ref_s.extend(resized.iter().map(|&v| v as f64));
                match &mask {
                    Some(m) => ref_l.extend(m.as_raw().iter().map(|&v| v != 0)),
                    None => ref_l.extend(std::iter::repeat_n(false, resized.len())),
                }
            }
            acc.merge(half);
            let m = acc.finish();
            assert_eq!(m.pixels, ref_s.len() as u64);
            assert!(
                close(m.auroc, metrics::auroc(&ref_s, &ref_l)),
                "round {round}"
            );
            assert!(
                close(m.f1_max, metrics::f1_max(&ref_s, &ref_l)),
                "round {round}"
            );
        }
    }

    /// Enough pixels in single buckets to take the counting path.
    #[test]
    fn pixel_large_buckets_against_reference() {
        let mut rng = StdRng::seed_from_u64(9);
        let n = 150_000;
        // Values within [1, 1.0078) share the high 16 key bits; a few in other buckets.
        let scores: Vec<f32> = (0..n)
            .map(|i| {
                if i % 1000 == 0 {
                    rng.random_range(0.0..4.0)
                } else {
                    1.0 + rng.random_range(0..3000) as f32 * 1e-6
                }
            })
            .collect();
        let labels: Vec<u8> = scores
            .iter()
            .map(|&s| rng.random_bool(if s > 1.0015 { 0.7 } else { 0.2 }) as u8)
            .collect();
        let mut acc = PixelAccumulator::new();
        acc.add_pixels(&scores, Some(&labels)).unwrap();
        let m = acc.finish();
        let s64: Vec<f64> = scores.iter().map(|&v| v as f64).collect();
        let l: Vec<bool> = labels.iter().map(|&v| v != 0).collect();
        assert!(close(m.auroc, metrics::auroc(&s64, &l)));
        assert!(close(m.f1_max, metrics::f1_max(&s64, &l)));
        assert!(m.auroc.unwrap() > 0.6);
    }

    fn loco_scores() -> Vec<ScoredImage> {
        vec![
            img(0.1, false, None),
            img(0.2, false, None),
            img(0.3, false, None),
            img(0.25, true, Some("logical")),
            img(0.9, true, Some("logical")),
            img(0.35, true, Some("structural")),
            img(0.05, true, Some("structural")),
        ]
    }

    #[test]
    fn category_from_scores_hand_computed() {
        let timing = Timing {
            model_s: 1.0,
            matching_s: 0.5,
            per_image_ms: 20.0,
            ..Timing::default()
        };
        let c = CategoryReport::from_scores(
            "juice_bottle",
            &loco_scores(),
            None,
            timing,
            serde_json::json!({"k": 3}),
        );
        assert_eq!((c.images, c.anomalies), (7, 4));
        // Pairs won: 0.25 beats 2 normals, 0.9 and 0.35 beat 3, 0.05 none: 8 / 12.
        assert!(close(c.image_auroc, Some(8.0 / 12.0)));
        // Descending P P N P N N P: best at t=0.25, tp 3 fp 1 fn 1 -> 6/8.
        assert!(close(c.image_f1_max, Some(0.75)));
        let l = c.logical.unwrap();
        assert_eq!((l.images, l.anomalies), (5, 2));
        // 0.25 beats 2, 0.9 beats 3: 5/6. F1 at t=0.25: tp 2 fp 1 -> 4/5.
        assert!(close(l.auroc, Some(5.0 / 6.0)));
        assert!(close(l.f1_max, Some(0.8)));
        let s = c.structural.unwrap();
        assert_eq!((s.images, s.anomalies), (5, 2));
        // 0.35 beats 3, 0.05 none: 3/6. F1 at t=0.35: tp 1 fp 0 fn 1 -> 2/3.
        assert!(close(s.auroc, Some(0.5)));
        assert!(close(s.f1_max, Some(2.0 / 3.0)));
        assert_eq!(c.timing, timing);

        // MVTec AD style: no splits.
        let ad: Vec<ScoredImage> = vec![img(0.1, false, None), img(0.6, true, None)];
        let c = CategoryReport::from_scores(
            "bottle",
            &ad,
            None,
            Timing::default(),
            serde_json::Value::Null,
        );
        assert_eq!((c.image_auroc, c.image_f1_max), (Some(1.0), Some(1.0)));
        assert!(c.logical.is_none() && c.structural.is_none());
    }

    #[test]
    fn per_defect_metrics_hand_computed() {
        let typed = |score: f64, defect: &str| ScoredImage {
            defect: defect.into(),
            ..img(score, defect != "good", None)
        };
        let scores = [
            typed(0.1, "good"),
            typed(0.3, "good"),
            typed(0.2, "local"),
            typed(0.9, "global"),
            typed(0.4, "local"),
            typed(0.3, "global"),
        ];
        let c = CategoryReport::from_scores(
            "textile",
            &scores,
            None,
            Timing::default(),
            serde_json::Value::Null,
        );
        let names: Vec<&str> = c.defects.iter().map(|d| d.defect.as_str()).collect();
        assert_eq!(names, ["local", "global"]);
        let local = c.defects[0].metrics;
        assert_eq!((local.images, local.anomalies), (4, 2));
        // 0.2 beats 0.1; 0.4 beats both: 3/4. F1: threshold 0.2 catches both with one false
        // alarm (2/2.5 = 0.8); threshold 0.4: tp 1, fn 1 (2/3).
        assert!(close(local.auroc, Some(0.75)));
        assert!(close(local.f1_max, Some(0.8)));
        let global = c.defects[1].metrics;
        // 0.9 beats both, 0.3 beats 0.1 and ties 0.3: 3.5/4.
        assert!(close(global.auroc, Some(3.5 / 4.0)));
        let t = Report::new(vec![c]).defect_table();
        let expected = "\
category  defect type  images  image AUROC  F1-max
--------------------------------------------------
textile   local             4         75.0    80.0
textile   global            4         87.5    80.0
";
        assert_eq!(t, expected, "\n{t}");
    }

    fn sample_report() -> Report {
        let a = CategoryReport::from_scores(
            "juice_bottle",
            &loco_scores(),
            None,
            Timing {
                model_s: 1.0,
                matching_s: 0.5,
                per_image_ms: 20.0,
                ..Timing::default()
            },
            serde_json::json!({"k": 3}),
        );
        let ad: Vec<ScoredImage> = vec![
            img(0.1, false, None),
            img(0.6, true, None),
            img(0.7, true, None),
        ];
        let b = CategoryReport::from_scores(
            "bottle",
            &ad,
            Some(PixelMetrics {
                auroc: Some(0.98765),
                f1_max: Some(0.5),
                pixels: 12,
            }),
            Timing {
                model_s: 0.1,
                matching_s: 0.1,
                per_image_ms: 10.5,
                ..Timing::default()
            },
            serde_json::Value::Null,
        );
        Report::new(vec![a, b])
    }

    #[test]
    fn mean_row_over_defined_categories() {
        let r = sample_report();
        let m = r.mean;
        assert_eq!((m.categories, m.images), (2, 10));
        assert!(close(m.image_auroc, Some((8.0 / 12.0 + 1.0) / 2.0)));
        assert!(close(m.image_f1_max, Some((0.75 + 1.0) / 2.0)));
        // Only juice_bottle has splits, only bottle pixel metrics.
        assert!(close(m.logical_auroc, Some(5.0 / 6.0)));
        assert!(close(m.structural_auroc, Some(0.5)));
        assert!(close(m.structural_f1_max, Some(2.0 / 3.0)));
        assert!(close(m.pixel_auroc, Some(0.98765)));
        assert!(close(m.pixel_f1_max, Some(0.5)));
        assert!(close(m.per_image_ms, Some(15.25)));
        let empty = Report::new(Vec::new());
        assert_eq!(empty.mean, MeanRow::default());
    }

    #[test]
    fn table_layout() {
        let t = sample_report().table();
        // juice_bottle: 66.7 / 75.0 / 83.3 / 50.0; bottle: 100.0 / 100.0, pixel 98.8 / 50.0.
        // Rules span 95 column characters + 8 separators of 2 = 111.
        // mean: image (66.67+100)/2 = 83.3, F1 87.5, ms (20 + 10.5)/2 = 15.25 -> "15.2" (the f64
        // nearest 15.25 is exact and Rust rounds half to even).
        let expected = "\
category      images  image AUROC  F1-max  logical AUROC  structural AUROC  pixel AUROC  pixel F1-max  ms/image
---------------------------------------------------------------------------------------------------------------
juice_bottle       7         66.7    75.0           83.3              50.0            -             -      20.0
bottle             3        100.0   100.0              -                 -         98.8          50.0      10.5
---------------------------------------------------------------------------------------------------------------
mean              10         83.3    87.5           83.3              50.0         98.8          50.0      15.2
";
        assert_eq!(t, expected, "\n{t}");
        let undefined = Report::new(vec![CategoryReport::from_scores(
            "x",
            &[img(0.5, false, None)],
            None,
            Timing::default(),
            serde_json::Value::Null,
        )]);
        let t = undefined.table();
        let row = t.lines().nth(2).unwrap();
        assert_eq!(
            row.split_whitespace().collect::<Vec<_>>(),
            ["x", "1", "-", "-", "-", "-", "-", "-", "0.0"]
        );
    }

    #[test]
    fn json_round_trip() {
        let r = sample_report();
        let j = r.to_json();
        let back = Report::from_json(&j).unwrap();
        assert_eq!(back, r);
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(v["categories"][0]["category"], "juice_bottle");
        assert_eq!(v["categories"][0]["pixel"], serde_json::Value::Null);
        assert_eq!(v["categories"][1]["pixel"]["pixels"], 12);
        assert_eq!(v["categories"][0]["settings"]["k"], 3);
        assert_eq!(v["mean"]["images"], 10);
        assert!(Report::from_json("{").is_err());
    }

    /// A LOCO category scored by a patch, an interest and a composition detector; the interest
    /// detector has no score on the last image.
    fn detector_scores() -> Vec<ScoredImage> {
        let inf = f64::INFINITY;
        let rows = [
            // fused, split, patch, interest, composition (fired rules)
            (0.1, None, 0.1, Some(0.0), 0.0),
            (0.5, None, 0.5, Some(1.0), 0.0),
            (inf, None, 0.3, Some(-1.0), 1.0),
            (inf, Some("logical"), 0.2, Some(2.0), 1.0),
            (inf, Some("logical"), 0.4, Some(0.5), 2.0),
            (0.9, Some("structural"), 0.9, Some(-2.0), 0.0),
            (0.6, Some("structural"), 0.6, None::<f64>, 0.0),
        ];
        rows.iter()
            .enumerate()
            .map(|(i, &(fused, split, patch, interest, composition))| {
                let mut detectors = BTreeMap::from([
                    ("patch".to_string(), patch),
                    ("composition".to_string(), composition),
                ]);
                if let Some(z) = interest {
                    detectors.insert("interest".to_string(), z);
                }
                ScoredImage {
                    path: format!("{i}.png"),
                    detectors,
                    rules: vec!["pins: 14, expected 15".to_string(); composition as usize],
                    ..img(fused, split.is_some(), split)
                }
            })
            .collect()
    }

    #[test]
    fn per_detector_auroc_hand_computed() {
        let c = CategoryReport::from_scores(
            "tray",
            &detector_scores(),
            None,
            Timing::default(),
            serde_json::Value::Null,
        );
        let names: Vec<&str> = c.detectors.iter().map(|d| d.detector.as_str()).collect();
        assert_eq!(names, ["composition", "interest", "patch"]);
        let (composition, interest, patch) = (&c.detectors[0], &c.detectors[1], &c.detectors[2]);
        // Normals 0, 0, 1 fired rules. Logical 1 (beats two, ties one) and 2 (beats three);
        // structural 0 and 0 (tie two each): (2.5 + 3 + 1 + 1) / 12.
        assert_eq!(composition.images, 7);
        assert!(close(composition.image_auroc, Some(7.5 / 12.0)));
        assert!(close(composition.logical_auroc, Some(5.5 / 6.0)));
        assert!(close(composition.structural_auroc, Some(2.0 / 6.0)));
        // Normals 0, 1, -1; logical 2 (beats 3), 0.5 (beats 2); structural -2 (none); the last
        // image has no interest score.
        assert_eq!(interest.images, 6);
        assert!(close(interest.image_auroc, Some(5.0 / 9.0)));
        assert!(close(interest.logical_auroc, Some(5.0 / 6.0)));
        assert!(close(interest.structural_auroc, Some(0.0)));
        // Normals 0.1, 0.5, 0.3; logical 0.2 (beats 1), 0.4 (beats 2); structural 0.9 and 0.6
        // (beat 3 each).
        assert!(close(patch.image_auroc, Some(9.0 / 12.0)));
        assert!(close(patch.logical_auroc, Some(3.0 / 6.0)));
        assert!(close(patch.structural_auroc, Some(1.0)));
        // Fused: normals 0.1, 0.5, inf; inf, inf (beat 2, tie 1 each), 0.9, 0.6 (beat 2 each).
        assert!(close(c.image_auroc, Some(9.0 / 12.0)));
        assert!(close(c.logical.unwrap().auroc, Some(5.0 / 6.0)));
        assert!(close(c.structural.unwrap().auroc, Some(4.0 / 6.0)));

        // Without LOCO splits: overall AUROC only.
        let plain: Vec<ScoredImage> = detector_scores()
            .into_iter()
            .map(|s| ScoredImage { split: None, ..s })
            .collect();
        let c = CategoryReport::from_scores(
            "tray",
            &plain,
            None,
            Timing::default(),
            serde_json::Value::Null,
        );
        let patch = &c.detectors[2];
        assert!(close(patch.image_auroc, Some(9.0 / 12.0)));
        assert_eq!((patch.logical_auroc, patch.structural_auroc), (None, None));
    }

    #[test]
    fn detector_table_layout() {
        let tray = CategoryReport::from_scores(
            "tray",
            &detector_scores(),
            None,
            Timing::default(),
            serde_json::Value::Null,
        );
        // A category with one detector gets rows too; one without per-detector scores none.
        let single: Vec<ScoredImage> = [(0.1, false), (0.7, true)]
            .iter()
            .map(|&(score, anomalous)| ScoredImage {
                detectors: BTreeMap::from([("patch".to_string(), score)]),
                ..img(score, anomalous, None)
            })
            .collect();
        let bottle = CategoryReport::from_scores(
            "bottle",
            &single,
            None,
            Timing::default(),
            serde_json::Value::Null,
        );
        let old = CategoryReport::from_scores(
            "old",
            &[img(0.1, false, None), img(0.7, true, None)],
            None,
            Timing::default(),
            serde_json::Value::Null,
        );
        let t = Report::new(vec![tray, bottle.clone(), old])
            .detector_table()
            .unwrap();
        let expected = "\
category  detector     image AUROC  logical  structural
-------------------------------------------------------
tray      composition         62.5     91.7        33.3
tray      interest            55.6     83.3         0.0
tray      patch               75.0     50.0       100.0
tray      fused               75.0     83.3        66.7
bottle    patch              100.0        -           -
bottle    fused              100.0        -           -
";
        assert_eq!(t, expected, "\n{t}");
        // No category with more than one detector: no table.
        assert_eq!(Report::new(vec![bottle]).detector_table(), None);
    }

    /// Infinite scores (a fired rule) survive JSON, and a report.json from before per-detector
    /// scores still parses.
    #[test]
    fn json_with_detectors_and_old_files() {
        let c = CategoryReport::from_scores(
            "tray",
            &detector_scores(),
            None,
            Timing::default(),
            serde_json::Value::Null,
        );
        let r = Report::new(vec![c]);
        let j = r.to_json();
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        let image = &v["categories"][0]["per_image"][4];
        assert_eq!(image["score"], "inf");
        assert_eq!(image["detectors"]["composition"], 2.0);
        assert_eq!(image["rules"][1], "pins: 14, expected 15");
        assert_eq!(v["categories"][0]["detectors"][2]["detector"], "patch");
        assert_eq!(Report::from_json(&j).unwrap(), r);

        let mut old = v.clone();
        let category = old["categories"][0].as_object_mut().unwrap();
        category.remove("detectors");
        category.remove("per_image");
        let back = Report::from_json(&old.to_string()).unwrap();
        assert!(back.categories[0].detectors.is_empty() && back.categories[0].per_image.is_empty());
        let image = serde_json::json!({
            "path": "a.png", "anomalous": false, "defect": "good", "split": null, "score": 0.5
        });
        let parsed: ScoredImage = serde_json::from_value(image).unwrap();
        assert_eq!(
            parsed,
            ScoredImage {
                path: "a.png".into(),
                ..img(0.5, false, None)
            }
        );
        for (text, value) in [("\"-inf\"", f64::NEG_INFINITY), ("3", 3.0)] {
            let image: ScoredImage = serde_json::from_str(&format!(
                r#"{{"path": "a", "anomalous": true, "defect": "x", "split": null, "score": {text}}}"#
            ))
            .unwrap();
            assert_eq!(image.score, value);
        }
        let nan: ScoredImage = serde_json::from_str(
            r#"{"path": "a", "anomalous": true, "defect": "x", "split": null, "score": "NaN"}"#,
        )
        .unwrap();
        assert!(nan.score.is_nan());
        let error = serde_json::from_str::<ScoredImage>(
            r#"{"path": "a", "anomalous": true, "defect": "x", "split": null, "score": "big"}"#,
        )
        .unwrap_err();
        assert!(error.to_string().contains("found \"big\""), "{error}");
    }

    /// A LOCO category with subtypes: (score, split, subtype, a rule fired). The composition
    /// detector ran on every image (its score: the number of fired rules).
    fn subtype_scores(composition: bool) -> Vec<ScoredImage> {
        let inf = f64::INFINITY;
        let rows: [(f64, Option<&str>, Option<&str>, bool); 8] = [
            (0.1, None, None, false),
            (0.3, None, None, false),
            (inf, None, None, true),
            (inf, Some("logical"), Some("missing"), true),
            (0.2, Some("logical"), Some("missing"), false),
            (0.4, Some("logical"), Some("extra"), false),
            (0.35, Some("structural"), Some("missing"), false),
            (0.9, Some("structural"), Some("scratch"), false),
        ];
        let mut scores: Vec<ScoredImage> = rows
            .iter()
            .enumerate()
            .map(|(i, &(score, split, subtype, fired))| ScoredImage {
                path: format!("{i}.png"),
                subtype: subtype.map(str::to_string),
                detectors: if composition {
                    BTreeMap::from([("composition".to_string(), fired as u8 as f64)])
                } else {
                    BTreeMap::new()
                },
                rules: if fired {
                    vec!["pins: 8, expected 9".to_string()]
                } else {
                    Vec::new()
                },
                ..img(score, split.is_some(), split)
            })
            .collect();
        // An anomalous image without a subtype takes part in no subtype's metrics.
        scores.push(img(0.05, true, Some("structural")));
        scores
    }

    #[test]
    fn per_subtype_metrics_hand_computed() {
        let c = CategoryReport::from_scores(
            "tray",
            &subtype_scores(true),
            None,
            Timing::default(),
            serde_json::Value::Null,
        );
        // (split, subtype, images, anomalies, caught by rules)
        type Row<'a> = (Option<&'a str>, &'a str, usize, usize, Option<f64>);
        let rows: Vec<Row> = c
            .subtypes
            .iter()
            .map(|t| {
                (
                    t.split.as_deref(),
                    t.subtype.as_str(),
                    t.metrics.images,
                    t.metrics.anomalies,
                    t.caught_by_rules,
                )
            })
            .collect();
        // Logical before structural, then by name; `missing` once per split.
        assert_eq!(
            rows,
            [
                (Some("logical"), "extra", 4, 1, Some(0.0)),
                (Some("logical"), "missing", 5, 2, Some(0.5)),
                (Some("structural"), "missing", 4, 1, Some(0.0)),
                (Some("structural"), "scratch", 4, 1, Some(0.0)),
            ]
        );
        // Normals 0.1, 0.3, inf. logical extra 0.4 beats two of three: 2/3, F1 at 0.4: tp 1,
        // fp 1 -> 2/3. logical missing: inf ties inf and beats two (2.5), 0.2 beats one: 3.5/6;
        // F1 at 0.2: tp 2, fp 2 -> 4/6. structural missing 0.35 and scratch 0.9: 2/3 each.
        let auroc: Vec<Option<f64>> = c.subtypes.iter().map(|t| t.metrics.auroc).collect();
        let expected = [2.0 / 3.0, 3.5 / 6.0, 2.0 / 3.0, 2.0 / 3.0];
        for (got, want) in auroc.iter().zip(expected) {
            assert!(close(*got, Some(want)), "{auroc:?}");
        }
        for t in &c.subtypes {
            assert!(close(t.metrics.f1_max, Some(2.0 / 3.0)), "{t:?}");
        }

        // Without a composition detector: caught_by_rules is undefined, the AUROC the same.
        let c = CategoryReport::from_scores(
            "tray",
            &subtype_scores(false),
            None,
            Timing::default(),
            serde_json::Value::Null,
        );
        assert_eq!(c.subtypes.len(), 4);
        assert!(c.subtypes.iter().all(|t| t.caught_by_rules.is_none()));
        assert!(close(c.subtypes[1].metrics.auroc, Some(3.5 / 6.0)));

        // No subtypes at all: none.
        let c = CategoryReport::from_scores(
            "juice_bottle",
            &loco_scores(),
            None,
            Timing::default(),
            serde_json::Value::Null,
        );
        assert!(c.subtypes.is_empty());

        // Images without a split (MVTec AD style) come after the split ones.
        let mut scores = subtype_scores(true);
        scores.push(ScoredImage {
            subtype: Some("crack".into()),
            ..img(0.2, true, None)
        });
        let c = CategoryReport::from_scores(
            "tray",
            &scores,
            None,
            Timing::default(),
            serde_json::Value::Null,
        );
        let last = c.subtypes.last().unwrap();
        assert_eq!(
            (last.split.as_deref(), last.subtype.as_str()),
            (None, "crack")
        );
        // 0.2 beats 0.1 only: 1/3; no rule fired on it.
        assert!(close(last.metrics.auroc, Some(1.0 / 3.0)));
        assert_eq!(last.caught_by_rules, Some(0.0));
    }

    #[test]
    fn subtype_table_and_json() {
        let tray = CategoryReport::from_scores(
            "tray",
            &subtype_scores(true),
            None,
            Timing::default(),
            serde_json::Value::Null,
        );
        let plain = CategoryReport::from_scores(
            "kit",
            &subtype_scores(false)[..6],
            None,
            Timing::default(),
            serde_json::Value::Null,
        );
        let r = Report::new(vec![tray, plain]);
        let t = r.subtype_table().unwrap();
        // Widths: 8, 10 (structural), 7, 6, 11, 6, 15; 63 + 6 separators of 2 = 75.
        let expected = "\
category  split       subtype  images  image AUROC  F1-max  caught by rules
---------------------------------------------------------------------------
tray      logical     extra         4         66.7    66.7              0.0
tray      logical     missing       5         58.3    66.7             50.0
tray      structural  missing       4         66.7    66.7              0.0
tray      structural  scratch       4         66.7    66.7              0.0
kit       logical     extra         4         66.7    66.7                -
kit       logical     missing       5         58.3    66.7                -
";
        assert_eq!(t, expected, "\n{t}");
        assert_eq!(Report::new(Vec::new()).subtype_table(), None);

        let j = r.to_json();
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        let missing = &v["categories"][0]["subtypes"][1];
        assert_eq!(missing["subtype"], "missing");
        assert_eq!(missing["split"], "logical");
        assert_eq!(missing["images"], 5);
        assert_eq!(missing["anomalies"], 2);
        assert_eq!(missing["caught_by_rules"], 0.5);
        assert!((missing["auroc"].as_f64().unwrap() - 3.5 / 6.0).abs() < 1e-12);
        assert_eq!(
            v["categories"][1]["subtypes"][0]["caught_by_rules"],
            serde_json::Value::Null
        );
        assert_eq!(v["categories"][0]["per_image"][3]["subtype"], "missing");
        assert_eq!(
            v["categories"][0]["per_image"][0]["subtype"],
            serde_json::Value::Null
        );
        assert_eq!(Report::from_json(&j).unwrap(), r);

        // A report.json from before subtypes: no `subtypes`, no `subtype` per image.
        let mut old = v.clone();
        let category = old["categories"][0].as_object_mut().unwrap();
        category.remove("subtypes");
        for image in category["per_image"].as_array_mut().unwrap() {
            image.as_object_mut().unwrap().remove("subtype");
        }
        let back = Report::from_json(&old.to_string()).unwrap();
        assert!(back.categories[0].subtypes.is_empty());
        assert!(back.categories[0]
            .per_image
            .iter()
            .all(|s| s.subtype.is_none()));
        assert_eq!(back.categories[0].per_image.len(), 9);
    }

    #[test]
    fn box_iou_by_hand() {
        // 4x4 at the origin and 4x4 shifted by (2, 2): intersection 2x2 = 4, union 16 + 16 - 4.
        assert!((box_iou((0, 0, 4, 4), (2, 2, 4, 4)) - 4.0 / 28.0).abs() < 1e-12);
        assert_eq!(box_iou((0, 0, 4, 4), (0, 0, 4, 4)), 1.0);
        assert_eq!(box_iou((0, 0, 4, 4), (4, 0, 4, 4)), 0.0); // touching edges share no pixel
        assert_eq!(box_iou((0, 0, 0, 0), (0, 0, 0, 0)), 0.0);
        // A box inside another: 2x3 in 10x10.
        assert!((box_iou((1, 1, 2, 3), (0, 0, 10, 10)) - 0.06).abs() < 1e-12);
    }

    #[test]
    fn boxes_against_mask_components() {
        // Two defects: a 3x2 block at (1, 1) and a diagonal pair at (7, 6)-(8, 7).
        let mut mask = GrayImage::new(10, 10);
        for (x, y) in [
            (1, 1),
            (2, 1),
            (3, 1),
            (1, 2),
            (2, 2),
            (3, 2),
            (7, 6),
            (8, 7),
        ] {
            mask.put_pixel(x, y, image::Luma([255]));
        }
        let mut components = mask_components(&mask);
        components.sort();
        assert_eq!(components, vec![(1, 1, 3, 2), (7, 6, 2, 2)]);

        let mut acc = BoxAccumulator::default();
        // The block framed exactly; the pair missed; one false box far away. The frame is twice
        // the mask's size, so boxes are halved.
        acc.add(Some(&mask), &[(2, 2, 6, 4), (0, 16, 2, 2)], (20, 20));
        acc.add(None, &[(0, 0, 1, 1), (5, 5, 1, 1)], (10, 10));
        acc.add(None, &[], (10, 10));
        let m = acc.finish();
        assert_eq!(m.components, 2);
        assert_eq!(m.mean_iou, Some(0.5));
        assert_eq!(m.found_at_iou_50, Some(0.5));
        assert_eq!(m.boxes_per_defective_image, Some(2.0));
        assert_eq!(m.boxes_per_good_image, Some(1.0));
        assert_eq!(BoxAccumulator::default().finish().mean_iou, None);
    }
}
