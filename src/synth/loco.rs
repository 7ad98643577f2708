//! Synthetic scenes with known logic, written in the MVTec LOCO layout.
//!
//! [`write_loco_scenes`] renders, per [`SceneCategory`]:
//!
//! ```text
//! ROOT/<category>/train/good/NNN.png
//! ROOT/<category>/validation/good/NNN.png
//! ROOT/<category>/test/good/NNN.png
//! ROOT/<category>/test/logical_anomalies/NNN.png
//! ROOT/<category>/test/structural_anomalies/NNN.png
//! ROOT/<category>/ground_truth/{logical_anomalies,structural_anomalies}/NNN/000.png
//! ROOT/<category>/logic.json
//! ```
//!
//! which `eval::dataset` reads as [`Layout::MvtecLoco`](crate::eval::dataset::Layout). Masks
//! are 255 where anomalous, else 0. `logic.json` lists the category's [`Rule`]s and, per test
//! image, the [`LogicalAnomaly`] it shows and the rules it breaks (an answer key for rule
//! checkers; the dataset loader ignores it).
//!
//! # Scenes
//! Frames are [`FRAME_SIZE`] px square. Every part is at least [`MIN_PART_SIZE`] px across
//! (12% of the side: 2 x 2 tokens of a ViT-S/14 at 224 px input), so a 16 x 16 token grid sees
//! it. The categories:
//!
//! * **tray**: a flat tray with a 3 x 3 grid of slots, one pin per slot, all pins brass or all
//!   steel. Logical
//!   anomalies: a missing pin, an extra pin between slots, a pin moved out of its slot, one pin
//!   of the other metal.
//! * **kit**: a cable across the frame centre whose colour sets its clamp count (yellow 2,
//!   blue 3, red 4). Logical anomalies: a clamp count of another colour, clamps with no cable,
//!   a cable that misses the centre.
//! * **bottle**: a bottle of orange, green or purple liquid whose label symbol (disc, ring,
//!   cross) names the liquid, filled to 62-72% with the label centred on the body. Logical
//!   anomalies: the label of another liquid, overfilled (86-93%), underfilled (38-46%), a
//!   shifted or tilted label.
//!
//! Structural anomalies are local damage from [`paint_defect`] (speck, scratch or stain, each
//! with its exact mask), enlarged 2x (painted at half resolution), on a good scene, centred on a
//! part in 60% of cases and anywhere else otherwise.
//!
//! Nominal variation in every image, from the same ranges in every folder so that no global
//! cue separates anomalies: the scene's position (+-6 px), rotation (+-3 degrees) and scale
//! (0.97-1.03), each part's position (+-2-3 px) and colour (+-6 per channel), a value-noise
//! background texture, lighting (gain 0.92-1.08, a linear gradient of up to 8% across half the
//! frame, a colour cast of +-3% per channel) and Gaussian sensor noise (sigma 3 grey levels).
//! Good images cycle through their category's kinds (metals, cable colours, liquids), so any
//! first k >= 3 training images show every kind.
//!
//! Each image draws from its own generator, seeded from the options' seed, the category, the
//! folder and the index: the same options give byte-identical files.

use super::{paint_defect, DefectKind};
use image::{GrayImage, Luma, Rgb, RgbImage};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::f32::consts::PI;
use std::fs;
use std::io;
use std::path::Path;

/// Width and height of every frame, px.
pub const FRAME_SIZE: u32 = 256;
/// Smallest extent of any part at the smallest scene scale, px (12% of [`FRAME_SIZE`]).
pub const MIN_PART_SIZE: f32 = 0.12 * FRAME_SIZE as f32;

/// A category of scenes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SceneCategory {
    Tray,
    Kit,
    Bottle,
}

impl SceneCategory {
    pub const ALL: [SceneCategory; 3] = [
        SceneCategory::Tray,
        SceneCategory::Kit,
        SceneCategory::Bottle,
    ];

    /// The category folder name.
    pub fn name(self) -> &'static str {
        match self {
            SceneCategory::Tray => "tray",
            SceneCategory::Kit => "kit",
            SceneCategory::Bottle => "bottle",
        }
    }

    /// The rules every good scene of the category satisfies.
    pub fn rules(self) -> &'static [Rule] {
        match self {
            SceneCategory::Tray => &[Rule::PinCount, Rule::PinsInSlots, Rule::OnePinMetal],
            SceneCategory::Kit => &[
                Rule::CablePresent,
                Rule::ClampCountMatchesCable,
                Rule::CableCrossesCentre,
            ],
            SceneCategory::Bottle => &[
                Rule::LabelMatchesLiquid,
                Rule::FillLevel,
                Rule::LabelPlacement,
            ],
        }
    }

    /// The logical anomalies of the category, in the order `test/logical_anomalies` cycles
    /// through them.
    pub fn logical_anomalies(self) -> &'static [LogicalAnomaly] {
        use LogicalAnomaly::*;
        match self {
            SceneCategory::Tray => &[MissingPin, ExtraPin, DisplacedPin, OddMetalPin],
            SceneCategory::Kit => &[WrongClampCount, MissingCable, OffCentreCable],
            SceneCategory::Bottle => &[MismatchedLabel, Overfilled, Underfilled, MisplacedLabel],
        }
    }
}

/// A rule of a category's logic, checked on the scene description (not on pixels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// tray: exactly 9 pins.
    PinCount,
    /// tray: every pin's centre lies within [`SLOT_TOLERANCE`] (scene px) of a slot centre.
    PinsInSlots,
    /// tray: all pins are of one metal.
    OnePinMetal,
    /// kit: the cable is there.
    CablePresent,
    /// kit: the clamp count is the cable colour's (yellow 2, blue 3, red 4); checked when the
    /// cable is there.
    ClampCountMatchesCable,
    /// kit: the cable's centre line passes within [`CENTRE_TOLERANCE`] frame px of the frame
    /// centre; checked when the cable is there.
    CableCrossesCentre,
    /// bottle: the label's symbol is the liquid's.
    LabelMatchesLiquid,
    /// bottle: the liquid fills [`FILL_RANGE`] of the body's inner height.
    FillLevel,
    /// bottle: the label sits within [`LABEL_SHIFT_TOLERANCE`] px and
    /// [`LABEL_TILT_TOLERANCE`] degrees of its place.
    LabelPlacement,
}

impl Rule {
    /// The rule's name (snake case, as in `logic.json`).
    pub fn name(self) -> &'static str {
        match self {
            Rule::PinCount => "pin_count",
            Rule::PinsInSlots => "pins_in_slots",
            Rule::OnePinMetal => "one_pin_metal",
            Rule::CablePresent => "cable_present",
            Rule::ClampCountMatchesCable => "clamp_count_matches_cable",
            Rule::CableCrossesCentre => "cable_crosses_centre",
            Rule::LabelMatchesLiquid => "label_matches_liquid",
            Rule::FillLevel => "fill_level",
            Rule::LabelPlacement => "label_placement",
        }
    }
}

/// A logical anomaly: what was changed in a good scene, and the rules that breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogicalAnomaly {
    /// tray: one slot empty (8 pins). Mask: the empty slot.
    MissingPin,
    /// tray: a tenth pin between four slots. Mask: that pin.
    ExtraPin,
    /// tray: a pin moved from its slot to between four slots. Mask: the pin and its empty slot.
    DisplacedPin,
    /// tray: one pin of the other metal. Mask: that pin.
    OddMetalPin,
    /// kit: the clamp count of another cable colour. Mask: the clamps.
    WrongClampCount,
    /// kit: the clamps without their cable. Mask: where the cable would lie.
    MissingCable,
    /// kit: the cable (with its clamps) 45-60 px off the frame centre. Mask: the cable.
    OffCentreCable,
    /// bottle: the label of another liquid. Mask: the label.
    MismatchedLabel,
    /// bottle: filled to 86-93%. Mask: the liquid above the nominal level.
    Overfilled,
    /// bottle: filled to 38-46%. Mask: the empty part below the nominal level.
    Underfilled,
    /// bottle: the label 30-40 px up or 28-34 px down, or tilted 18-28 degrees. Mask: the
    /// label where it is and where it belongs.
    MisplacedLabel,
}

impl LogicalAnomaly {
    /// The rules a scene with this anomaly breaks (all of them, and no other).
    pub fn breaks(self) -> &'static [Rule] {
        use LogicalAnomaly::*;
        match self {
            MissingPin => &[Rule::PinCount],
            ExtraPin => &[Rule::PinCount, Rule::PinsInSlots],
            DisplacedPin => &[Rule::PinsInSlots],
            OddMetalPin => &[Rule::OnePinMetal],
            WrongClampCount => &[Rule::ClampCountMatchesCable],
            MissingCable => &[Rule::CablePresent],
            OffCentreCable => &[Rule::CableCrossesCentre],
            MismatchedLabel => &[Rule::LabelMatchesLiquid],
            Overfilled | Underfilled => &[Rule::FillLevel],
            MisplacedLabel => &[Rule::LabelPlacement],
        }
    }
}

/// How many images of each folder, and which categories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocoOptions {
    /// Seed of every random choice.
    pub seed: u64,
    /// Images in `train/good`; at least 1.
    pub train: usize,
    /// Images in `validation/good`.
    pub validation: usize,
    /// Images in `test/good`.
    pub good: usize,
    /// Images in `test/logical_anomalies`, cycling through the category's anomalies.
    pub logical: usize,
    /// Images in `test/structural_anomalies`, cycling through speck, scratch and stain.
    pub structural: usize,
    /// Categories to write; at least one.
    pub categories: Vec<SceneCategory>,
}

impl Default for LocoOptions {
    /// Seed 0; 10 train, 10 validation, 20 good, 20 logical and 20 structural test images;
    /// every category.
    fn default() -> Self {
        LocoOptions {
            seed: 0,
            train: 10,
            validation: 10,
            good: 20,
            logical: 20,
            structural: 20,
            categories: SceneCategory::ALL.to_vec(),
        }
    }
}

/// What [`write_loco_scenes`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocoSummary {
    pub categories: usize,
    /// PNG images, masks excluded.
    pub images: usize,
    /// Ground-truth mask files.
    pub masks: usize,
}

/// Writes the scenes of `options.categories` under `root` (created if needed; existing files
/// of the same names are overwritten). Errors: `InvalidInput` for no category or no training
/// image, else the file system's error with the path at fault in its message.
pub fn write_loco_scenes(root: &Path, options: &LocoOptions) -> io::Result<LocoSummary> {
    if options.categories.is_empty() || options.train == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "LOCO scenes need at least one category and one training image",
        ));
    }
    let mut summary = LocoSummary {
        categories: 0,
        images: 0,
        masks: 0,
    };
    for &category in &options.categories {
        let dir = root.join(category.name());
        let mut key = Vec::new();
        let folders = [
            (Folder::Train, options.train),
            (Folder::Validation, options.validation),
            (Folder::TestGood, options.good),
            (Folder::Logical, options.logical),
            (Folder::Structural, options.structural),
        ];
        for (folder, count) in folders {
            let image_dir = dir.join(folder.path());
            create_dir(&image_dir)?;
            for index in 0..count {
                let mut rng = image_rng(options.seed, category, folder, index);
                let sample = render_sample(category, folder, index, &mut rng);
                let name = format!("{index:03}");
                save(&sample.image, &image_dir.join(format!("{name}.png")))?;
                summary.images += 1;
                if let Some(mask) = &sample.mask {
                    let mask_dir = dir.join("ground_truth").join(folder.name()).join(&name);
                    create_dir(&mask_dir)?;
                    save(mask, &mask_dir.join("000.png"))?;
                    summary.masks += 1;
                }
                if folder.is_test() {
                    key.push(KeyEntry {
                        image: format!("{}/{name}.png", folder.path()),
                        anomaly: sample.anomaly,
                        broken_rules: sample.broken_rules,
                    });
                }
            }
        }
        let logic = Logic {
            category,
            rules: category.rules(),
            test: key,
        };
        let path = dir.join("logic.json");
        let text = serde_json::to_string_pretty(&logic).map_err(io::Error::other)?;
        fs::write(&path, text + "\n").map_err(|e| at(&path, e))?;
        summary.categories += 1;
    }
    Ok(summary)
}

/// `logic.json`: the answer key of one category.
#[derive(Serialize)]
struct Logic {
    category: SceneCategory,
    rules: &'static [Rule],
    test: Vec<KeyEntry>,
}

#[derive(Serialize)]
struct KeyEntry {
    /// Relative to the category folder.
    image: String,
    /// `None` for good and structural images.
    anomaly: Option<LogicalAnomaly>,
    broken_rules: Vec<Rule>,
}

fn at(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

fn create_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir).map_err(|e| at(dir, e))
}

fn save<P: image::PixelWithColorType>(
    img: &image::ImageBuffer<P, Vec<P::Subpixel>>,
    path: &Path,
) -> io::Result<()>
where
    [P::Subpixel]: image::EncodableLayout,
{
    img.save_with_format(path, image::ImageFormat::Png)
        .map_err(|e| at(path, io::Error::other(e)))
}

/// The five image folders of a LOCO category.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Folder {
    Train,
    Validation,
    TestGood,
    Logical,
    Structural,
}

impl Folder {
    fn path(self) -> &'static str {
        match self {
            Folder::Train => "train/good",
            Folder::Validation => "validation/good",
            Folder::TestGood => "test/good",
            Folder::Logical => "test/logical_anomalies",
            Folder::Structural => "test/structural_anomalies",
        }
    }

    /// The ground-truth folder name.
    fn name(self) -> &'static str {
        self.path().rsplit('/').next().unwrap_or_default()
    }

    fn is_test(self) -> bool {
        matches!(
            self,
            Folder::TestGood | Folder::Logical | Folder::Structural
        )
    }
}

/// SplitMix64's finaliser: a well-mixed 64-bit hash of `x`.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The generator of one image, independent of every other image's.
fn image_rng(seed: u64, category: SceneCategory, folder: Folder, index: usize) -> StdRng {
    let slot = ((category as u64) << 56) | ((folder as u64) << 48) | index as u64;
    StdRng::seed_from_u64(mix(seed ^ mix(slot)))
}

/// One rendered image with what it shows.
struct Sample {
    image: RgbImage,
    /// The ground truth of an anomalous image.
    mask: Option<GrayImage>,
    anomaly: Option<LogicalAnomaly>,
    broken_rules: Vec<Rule>,
}

fn render_sample(
    category: SceneCategory,
    folder: Folder,
    index: usize,
    rng: &mut StdRng,
) -> Sample {
    let anomalies = category.logical_anomalies();
    let anomaly = (folder == Folder::Logical).then(|| anomalies[index % anomalies.len()]);
    let scene = Scene::sample(category, index, anomaly, rng);
    let mut image = scene.render(rng);
    let mut mask = anomaly.map(|_| scene.anomaly_mask());
    if folder == Folder::Structural {
        let kind = DefectKind::ALL[index % DefectKind::ALL.len()];
        mask = Some(damage(&mut image, &scene.part_centres(), kind, rng));
    }
    add_sensor_noise(&mut image, rng);
    Sample {
        image,
        mask,
        anomaly,
        broken_rules: scene.broken_rules(),
    }
}

/// Side of the half-resolution window [`paint_defect`] paints in: its minimum size.
const DAMAGE_WINDOW: u32 = super::MIN_SIZE;
/// Enlargement of [`paint_defect`]'s damage: it paints on a half-resolution copy of a
/// `DAMAGE_SCALE * DAMAGE_WINDOW` px window, and the change is applied 2 x 2 px per painted
/// pixel (speck 12-20 x 32-48 px, scratch 50-120 px long and 2-6 px wide, stain 32-64 px
/// across: a few ViT tokens each, like the structural damage of MVTec LOCO). The defect's
/// centre lies within 32 px of the window's centre.
const DAMAGE_SCALE: u32 = 2;

/// Paints one enlarged defect of `kind` (see [`DAMAGE_SCALE`]), centred near a part centre
/// (60%) or anywhere (40%), and returns its full-frame mask (the half-resolution mask,
/// enlarged). Pixels change only where [`paint_defect`] changed their half-resolution pixel.
fn damage(
    image: &mut RgbImage,
    parts: &[[f32; 2]],
    kind: DefectKind,
    rng: &mut StdRng,
) -> GrayImage {
    let (w, h) = image.dimensions();
    let side = DAMAGE_WINDOW * DAMAGE_SCALE;
    let half = side as f32 / 2.0;
    let target = if !parts.is_empty() && rng.random_bool(0.6) {
        parts[rng.random_range(0..parts.len())]
    } else {
        [
            rng.random_range(half..w as f32 - half),
            rng.random_range(half..h as f32 - half),
        ]
    };
    let x0 = (target[0] - half).round().clamp(0.0, (w - side) as f32) as u32;
    let y0 = (target[1] - half).round().clamp(0.0, (h - side) as f32) as u32;
    let small = RgbImage::from_fn(DAMAGE_WINDOW, DAMAGE_WINDOW, |x, y| {
        *image.get_pixel(x0 + x * DAMAGE_SCALE, y0 + y * DAMAGE_SCALE)
    });
    let mut painted = small.clone();
    let small_mask = paint_defect(&mut painted, kind, rng);
    let mut mask = GrayImage::new(w, h);
    for y in 0..side {
        for x in 0..side {
            let (sx, sy) = (x / DAMAGE_SCALE, y / DAMAGE_SCALE);
            let (before, after) = (small.get_pixel(sx, sy), painted.get_pixel(sx, sy));
            if before != after {
                let px = image.get_pixel_mut(x0 + x, y0 + y);
                for k in 0..3 {
                    let change = after.0[k] as i16 - before.0[k] as i16;
                    px.0[k] = (px.0[k] as i16 + change).clamp(0, 255) as u8;
                }
            }
            mask.put_pixel(x0 + x, y0 + y, *small_mask.get_pixel(sx, sy));
        }
    }
    mask
}

// ---------------------------------------------------------------------------------------
// Geometry

type P2 = [f32; 2];

fn add(a: P2, b: P2) -> P2 {
    [a[0] + b[0], a[1] + b[1]]
}

fn sub(a: P2, b: P2) -> P2 {
    [a[0] - b[0], a[1] - b[1]]
}

fn length(a: P2) -> f32 {
    a[0].hypot(a[1])
}

fn rotate(p: P2, angle: f32) -> P2 {
    let (s, c) = angle.sin_cos();
    [c * p[0] - s * p[1], s * p[0] + c * p[1]]
}

/// Distance from `p` to the segment `a`-`b`.
fn segment_distance(p: P2, a: P2, b: P2) -> f32 {
    let (pa, ba) = (sub(p, a), sub(b, a));
    let t = ((pa[0] * ba[0] + pa[1] * ba[1]) / (ba[0] * ba[0] + ba[1] * ba[1]).max(1e-6))
        .clamp(0.0, 1.0);
    length(sub(pa, [ba[0] * t, ba[1] * t]))
}

/// Distance from `p` to the polyline `points`.
fn polyline_distance(p: P2, points: &[P2]) -> f32 {
    points
        .windows(2)
        .map(|w| segment_distance(p, w[0], w[1]))
        .fold(f32::INFINITY, f32::min)
}

/// Where a scene lies in the frame: scene point `p` is at `centre + scale * R(angle) p`.
#[derive(Debug, Clone, Copy)]
struct Pose {
    centre: P2,
    angle: f32,
    scale: f32,
}

impl Pose {
    /// The frame centre +-6 px, +-3 degrees, scale 0.97-1.03.
    fn jittered(rng: &mut StdRng) -> Pose {
        let c = FRAME_SIZE as f32 / 2.0;
        Pose {
            centre: [
                c + rng.random_range(-6.0..6.0),
                c + rng.random_range(-6.0..6.0),
            ],
            angle: rng.random_range(-3.0..3.0f32).to_radians(),
            scale: rng.random_range(0.97..1.03),
        }
    }

    fn to_frame(self, p: P2) -> P2 {
        let r = rotate(p, self.angle);
        [
            self.centre[0] + self.scale * r[0],
            self.centre[1] + self.scale * r[1],
        ]
    }

    fn to_scene(self, q: P2) -> P2 {
        let r = rotate(sub(q, self.centre), -self.angle);
        [r[0] / self.scale, r[1] / self.scale]
    }
}

/// A shape in scene coordinates, given by its signed distance (negative inside).
#[derive(Debug, Clone)]
enum Shape {
    Disc {
        centre: P2,
        radius: f32,
    },
    Ring {
        centre: P2,
        radius: f32,
        half_width: f32,
    },
    /// A rectangle of half-extents `half` turned by `angle`, corners rounded by `corner`.
    Rect {
        centre: P2,
        half: P2,
        angle: f32,
        corner: f32,
    },
    /// Two bars crossing at right angles, turned by `angle`.
    Cross {
        centre: P2,
        half_length: f32,
        half_width: f32,
        angle: f32,
    },
    /// A stroke of half-width `half_width` along a polyline.
    Stroke {
        points: Vec<P2>,
        half_width: f32,
    },
    /// The part of `shape` with `top <= y <= bottom`.
    Band {
        shape: Box<Shape>,
        top: f32,
        bottom: f32,
    },
}

impl Shape {
    fn distance(&self, p: P2) -> f32 {
        match self {
            Shape::Disc { centre, radius } => length(sub(p, *centre)) - radius,
            Shape::Ring {
                centre,
                radius,
                half_width,
            } => (length(sub(p, *centre)) - radius).abs() - half_width,
            Shape::Rect {
                centre,
                half,
                angle,
                corner,
            } => {
                let q = rotate(sub(p, *centre), -angle);
                let d = [q[0].abs() - half[0] + corner, q[1].abs() - half[1] + corner];
                length([d[0].max(0.0), d[1].max(0.0)]) + d[0].max(d[1]).min(0.0) - corner
            }
            Shape::Cross {
                centre,
                half_length,
                half_width,
                angle,
            } => {
                let bar = |angle| Shape::Rect {
                    centre: *centre,
                    half: [*half_length, *half_width],
                    angle,
                    corner: 1.0,
                };
                bar(*angle)
                    .distance(p)
                    .min(bar(angle + PI / 2.0).distance(p))
            }
            Shape::Stroke { points, half_width } => polyline_distance(p, points) - half_width,
            Shape::Band { shape, top, bottom } => {
                shape.distance(p).max(top - p[1]).max(p[1] - bottom)
            }
        }
    }

    /// Scene-coordinate box (min corner, max corner) that holds the shape.
    fn bounds(&self) -> (P2, P2) {
        let square = |c: P2, r: f32| ([c[0] - r, c[1] - r], [c[0] + r, c[1] + r]);
        match self {
            Shape::Disc { centre, radius } => square(*centre, *radius),
            Shape::Ring {
                centre,
                radius,
                half_width,
            } => square(*centre, radius + half_width),
            Shape::Rect { centre, half, .. } => square(*centre, length(*half)),
            Shape::Cross {
                centre,
                half_length,
                half_width,
                ..
            } => square(*centre, length([*half_length, *half_width])),
            Shape::Stroke { points, half_width } => {
                let mut lo = [f32::INFINITY; 2];
                let mut hi = [f32::NEG_INFINITY; 2];
                for p in points {
                    for k in 0..2 {
                        lo[k] = lo[k].min(p[k] - half_width);
                        hi[k] = hi[k].max(p[k] + half_width);
                    }
                }
                (lo, hi)
            }
            Shape::Band { shape, top, bottom } => {
                let (lo, hi) = shape.bounds();
                ([lo[0], lo[1].max(*top)], [hi[0], hi[1].min(*bottom)])
            }
        }
    }

    /// Frame pixels (x0..x1, y0..y1) that may hold the shape under `pose`.
    fn frame_pixels(&self, pose: &Pose) -> (u32, u32, u32, u32) {
        let (lo, hi) = self.bounds();
        let corners = [lo, [hi[0], lo[1]], [lo[0], hi[1]], hi].map(|c| pose.to_frame(c));
        let range = |k: usize| {
            let min = corners.iter().map(|c| c[k]).fold(f32::INFINITY, f32::min);
            let max = corners
                .iter()
                .map(|c| c[k])
                .fold(f32::NEG_INFINITY, f32::max);
            let size = FRAME_SIZE as f32;
            (
                (min - 2.0).floor().clamp(0.0, size) as u32,
                (max + 2.0).ceil().clamp(0.0, size) as u32,
            )
        };
        let ((x0, x1), (y0, y1)) = (range(0), range(1));
        (x0, x1, y0, y1)
    }
}

// ---------------------------------------------------------------------------------------
// Painting

type Colour = [f32; 3];

/// A linear RGB canvas of [`FRAME_SIZE`]^2 pixels, 0..255 per channel.
struct Canvas {
    pixels: Vec<Colour>,
}

impl Canvas {
    /// Blends `shape` in with `opacity`; `colour(p, d)` gives the colour at scene point `p`,
    /// `d` frame px inside the edge (>= 0 inside). Edges are anti-aliased over 1 px.
    fn paint(
        &mut self,
        pose: &Pose,
        shape: &Shape,
        opacity: f32,
        colour: impl Fn(P2, f32) -> Colour,
    ) {
        let (x0, x1, y0, y1) = shape.frame_pixels(pose);
        for y in y0..y1 {
            for x in x0..x1 {
                let p = pose.to_scene([x as f32 + 0.5, y as f32 + 0.5]);
                let depth = -shape.distance(p) * pose.scale;
                let alpha = (depth + 0.5).clamp(0.0, 1.0) * opacity;
                if alpha > 0.0 {
                    let c = colour(p, depth);
                    let px = &mut self.pixels[(y * FRAME_SIZE + x) as usize];
                    for k in 0..3 {
                        px[k] += alpha * (c[k] - px[k]);
                    }
                }
            }
        }
    }

    /// `paint` with one flat colour.
    fn fill(&mut self, pose: &Pose, shape: &Shape, opacity: f32, colour: Colour) {
        self.paint(pose, shape, opacity, |_, _| colour);
    }
}

/// Sets the pixels whose centre lies inside `shape` to 255.
fn rasterise(mask: &mut GrayImage, pose: &Pose, shape: &Shape) {
    let (x0, x1, y0, y1) = shape.frame_pixels(pose);
    for y in y0..y1 {
        for x in x0..x1 {
            if shape.distance(pose.to_scene([x as f32 + 0.5, y as f32 + 0.5])) <= 0.0 {
                mask.put_pixel(x, y, Luma([255]));
            }
        }
    }
}

fn scaled(c: Colour, f: f32) -> Colour {
    c.map(|v| v * f)
}

/// `base` with +-6 per channel.
fn jitter_colour(base: Colour, rng: &mut StdRng) -> Colour {
    base.map(|v| v + rng.random_range(-6.0..6.0))
}

/// Smooth value noise in -1..1 with `cells` = (columns, rows) random lattice values.
fn value_noise(cells: (usize, usize), rng: &mut StdRng) -> impl Fn(f32, f32) -> f32 {
    let (nx, ny) = cells;
    let lattice: Vec<f32> = (0..(nx + 1) * (ny + 1))
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    move |x, y| {
        let fx = x / FRAME_SIZE as f32 * nx as f32;
        let fy = y / FRAME_SIZE as f32 * ny as f32;
        let (ix, iy) = ((fx as usize).min(nx - 1), (fy as usize).min(ny - 1));
        let smooth = |t: f32| t * t * (3.0 - 2.0 * t);
        let (tx, ty) = (smooth(fx - ix as f32), smooth(fy - iy as f32));
        let at = |i: usize, j: usize| lattice[j * (nx + 1) + i];
        let top = at(ix, iy) + tx * (at(ix + 1, iy) - at(ix, iy));
        let bottom = at(ix, iy + 1) + tx * (at(ix + 1, iy + 1) - at(ix, iy + 1));
        top + ty * (bottom - top)
    }
}

/// A textured background: `base` (jittered) plus two octaves of value noise of `amplitude`
/// grey levels; `cells` sets the coarse octave (the fine one has 4x the cells).
fn background(base: Colour, cells: (usize, usize), amplitude: f32, rng: &mut StdRng) -> Canvas {
    let base = jitter_colour(base, rng);
    let coarse = value_noise(cells, rng);
    let fine = value_noise((cells.0 * 4, cells.1 * 4), rng);
    let mut pixels = Vec::with_capacity((FRAME_SIZE * FRAME_SIZE) as usize);
    for y in 0..FRAME_SIZE {
        for x in 0..FRAME_SIZE {
            let (fx, fy) = (x as f32 + 0.5, y as f32 + 0.5);
            let v = amplitude * (coarse(fx, fy) + 0.5 * fine(fx, fy));
            pixels.push(base.map(|c| c + v));
        }
    }
    Canvas { pixels }
}

/// Lighting (gain, gradient, colour cast) applied to the canvas, rounded to 8 bits.
fn expose(canvas: &Canvas, rng: &mut StdRng) -> RgbImage {
    let gain = rng.random_range(0.92..1.08f32);
    let direction = rng.random_range(0.0..2.0 * PI);
    let strength = rng.random_range(0.0..0.08f32);
    let cast: [f32; 3] = std::array::from_fn(|_| rng.random_range(0.97..1.03));
    let half = FRAME_SIZE as f32 / 2.0;
    let (s, c) = direction.sin_cos();
    RgbImage::from_fn(FRAME_SIZE, FRAME_SIZE, |x, y| {
        let t = ((x as f32 + 0.5 - half) * c + (y as f32 + 0.5 - half) * s) / half;
        let light = gain * (1.0 + strength * t);
        let px = canvas.pixels[(y * FRAME_SIZE + x) as usize];
        Rgb(std::array::from_fn(|k| {
            (px[k] * light * cast[k]).round().clamp(0.0, 255.0) as u8
        }))
    })
}

/// Standard deviation of the sensor noise, grey levels.
const NOISE_SIGMA: f32 = 3.0;

/// Adds independent Gaussian noise of [`NOISE_SIGMA`] to every channel (Box-Muller).
fn add_sensor_noise(image: &mut RgbImage, rng: &mut StdRng) {
    for px in image.pixels_mut() {
        for c in &mut px.0 {
            let u: f32 = 1.0 - rng.random::<f32>();
            let v: f32 = rng.random();
            let n = (-2.0 * u.ln()).sqrt() * (2.0 * PI * v).cos() * NOISE_SIGMA;
            *c = (*c as f32 + n).round().clamp(0.0, 255.0) as u8;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Scenes

/// Distance from a slot centre within which a pin counts as in its slot, scene px.
pub const SLOT_TOLERANCE: f32 = 6.0;
/// Distance from the frame centre within which the cable counts as crossing it, frame px.
pub const CENTRE_TOLERANCE: f32 = 20.0;
/// Allowed fill level, as a fraction of the body's inner height.
pub const FILL_RANGE: std::ops::RangeInclusive<f32> = 0.55..=0.8;
/// Allowed label shift from its place, scene px.
pub const LABEL_SHIFT_TOLERANCE: f32 = 8.0;
/// Allowed label tilt, degrees.
pub const LABEL_TILT_TOLERANCE: f32 = 8.0;

const TRAY_HALF: f32 = 104.0;
const SLOT_PITCH: f32 = 66.0;
const PIN_RADIUS: f32 = 16.0;
/// Radius of a pin's ground truth: the pin, its anti-aliased edge and its shadow.
const PIN_MARK: f32 = PIN_RADIUS + 4.0;

const CABLE_HALF_WIDTH: f32 = 8.0;
const CABLE_REACH: f32 = 92.0;
const CLAMP_HALF: P2 = [16.0, 19.0];
const PLUG_HALF: P2 = [16.0, 17.0];

const BODY_CENTRE: P2 = [0.0, 24.0];
const BODY_HALF: P2 = [44.0, 82.0];
const INNER_HALF: P2 = [39.0, 77.0];
const LABEL_CENTRE: P2 = [0.0, 50.0];
const LABEL_HALF: P2 = [33.0, 27.0];
const SYMBOL_RADIUS: f32 = 16.0;
const NOMINAL_FILL: f32 = 0.67;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Metal {
    Brass,
    Steel,
}

impl Metal {
    fn colour(self) -> Colour {
        match self {
            Metal::Brass => [196.0, 158.0, 72.0],
            Metal::Steel => [172.0, 178.0, 186.0],
        }
    }

    fn other(self) -> Metal {
        match self {
            Metal::Brass => Metal::Steel,
            Metal::Steel => Metal::Brass,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CableColour {
    Yellow,
    Blue,
    Red,
}

impl CableColour {
    const ALL: [CableColour; 3] = [CableColour::Yellow, CableColour::Blue, CableColour::Red];

    fn clamps(self) -> usize {
        match self {
            CableColour::Yellow => 2,
            CableColour::Blue => 3,
            CableColour::Red => 4,
        }
    }

    fn colour(self) -> Colour {
        match self {
            CableColour::Yellow => [222.0, 196.0, 48.0],
            CableColour::Blue => [48.0, 92.0, 190.0],
            CableColour::Red => [196.0, 46.0, 40.0],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Liquid {
    Orange,
    Green,
    Purple,
}

impl Liquid {
    const ALL: [Liquid; 3] = [Liquid::Orange, Liquid::Green, Liquid::Purple];

    fn colour(self) -> Colour {
        match self {
            Liquid::Orange => [232.0, 138.0, 34.0],
            Liquid::Green => [84.0, 168.0, 60.0],
            Liquid::Purple => [124.0, 56.0, 156.0],
        }
    }

    /// The label symbol, centred at `centre`, turned with the label by `angle`.
    fn symbol(self, centre: P2, angle: f32) -> Shape {
        match self {
            Liquid::Orange => Shape::Disc {
                centre,
                radius: SYMBOL_RADIUS,
            },
            Liquid::Green => Shape::Ring {
                centre,
                radius: SYMBOL_RADIUS - 4.0,
                half_width: 4.0,
            },
            Liquid::Purple => Shape::Cross {
                centre,
                half_length: SYMBOL_RADIUS,
                half_width: 5.0,
                angle: angle + PI / 4.0,
            },
        }
    }
}

#[derive(Debug, Clone)]
struct Pin {
    centre: P2,
    metal: Metal,
}

/// What a scene shows, in scene coordinates.
#[derive(Debug, Clone)]
enum Contents {
    Tray {
        slots: Vec<P2>,
        pins: Vec<Pin>,
    },
    Kit {
        colour: CableColour,
        /// The cable's centre line, from one plug to the other.
        cable: Vec<P2>,
        cable_present: bool,
        /// Clamp centres and directions (radians).
        clamps: Vec<(P2, f32)>,
    },
    Bottle {
        liquid: Liquid,
        label: Liquid,
        /// Fraction of the body's inner height.
        fill: f32,
        label_shift: P2,
        /// Radians.
        label_tilt: f32,
    },
}

/// A scene: its contents, where they lie in the frame, and the shapes that mark its logical
/// anomaly.
#[derive(Debug, Clone)]
struct Scene {
    pose: Pose,
    contents: Contents,
    marked: Vec<Shape>,
}

fn jitter(rng: &mut StdRng, r: f32) -> P2 {
    [rng.random_range(-r..r), rng.random_range(-r..r)]
}

/// One of the four points between 2 x 2 slots, +-3 px.
fn between_slots(rng: &mut StdRng) -> P2 {
    let h = SLOT_PITCH / 2.0;
    let sx = if rng.random_bool(0.5) { h } else { -h };
    let sy = if rng.random_bool(0.5) { h } else { -h };
    add([sx, sy], jitter(rng, 3.0))
}

/// Quadratic Bezier from `(-CABLE_REACH, y0)` to `(CABLE_REACH, y1)` through `(0, mid)`, as a
/// 33-point polyline.
fn cable_line(y0: f32, y1: f32, mid: f32) -> Vec<P2> {
    let (p0, p2) = ([-CABLE_REACH, y0], [CABLE_REACH, y1]);
    let p1 = [0.0, 2.0 * mid - 0.5 * (y0 + y1)];
    (0..=32)
        .map(|i| {
            let t = i as f32 / 32.0;
            let (a, b, c) = ((1.0 - t) * (1.0 - t), 2.0 * t * (1.0 - t), t * t);
            [
                a * p0[0] + b * p1[0] + c * p2[0],
                a * p0[1] + b * p1[1] + c * p2[1],
            ]
        })
        .collect()
}

/// The point and direction at fraction `t` of a polyline's vertices.
fn along(points: &[P2], t: f32) -> (P2, f32) {
    let last = points.len() - 1;
    let f = t.clamp(0.0, 1.0) * last as f32;
    let i = (f as usize).min(last - 1);
    let (a, b) = (points[i], points[i + 1]);
    let u = f - i as f32;
    let d = sub(b, a);
    ([a[0] + u * d[0], a[1] + u * d[1]], d[1].atan2(d[0]))
}

/// The connectors at both ends of a cable, in line with it.
fn plugs(cable: &[P2]) -> [Shape; 2] {
    let last = cable.len() - 1;
    [(cable[0], cable[1]), (cable[last], cable[last - 1])].map(|(end, next)| {
        let out = sub(end, next);
        Shape::Rect {
            centre: end,
            half: PLUG_HALF,
            angle: out[1].atan2(out[0]),
            corner: 3.0,
        }
    })
}

fn clamp_shape(centre: P2, angle: f32) -> Shape {
    Shape::Rect {
        centre,
        half: CLAMP_HALF,
        angle,
        corner: 4.0,
    }
}

fn label_shape(shift: P2, tilt: f32) -> Shape {
    Shape::Rect {
        centre: add(LABEL_CENTRE, shift),
        half: LABEL_HALF,
        angle: tilt,
        corner: 3.0,
    }
}

/// Liquid top, scene y, at fill fraction `fill`.
fn liquid_top(fill: f32) -> f32 {
    BODY_CENTRE[1] + INNER_HALF[1] - fill * 2.0 * INNER_HALF[1]
}

fn inner_body() -> Shape {
    Shape::Rect {
        centre: BODY_CENTRE,
        half: INNER_HALF,
        angle: 0.0,
        corner: 12.0,
    }
}

impl Scene {
    /// A scene of `category`: good when `anomaly` is `None`. `index` picks the good kind
    /// (metal, cable colour, liquid) in turn.
    fn sample(
        category: SceneCategory,
        index: usize,
        anomaly: Option<LogicalAnomaly>,
        rng: &mut StdRng,
    ) -> Scene {
        let pose = Pose::jittered(rng);
        let mut marked = Vec::new();
        let contents = match category {
            SceneCategory::Tray => {
                let slots: Vec<P2> = (0..9)
                    .map(|i| [(i % 3) as f32 - 1.0, (i / 3) as f32 - 1.0].map(|v| v * SLOT_PITCH))
                    .collect();
                let metal = [Metal::Brass, Metal::Steel][index % 2];
                let mut pins: Vec<Pin> = slots
                    .iter()
                    .map(|&s| Pin {
                        centre: add(s, jitter(rng, 2.0)),
                        metal,
                    })
                    .collect();
                let k = rng.random_range(0..9);
                let slot_mark = Shape::Disc {
                    centre: slots[k],
                    radius: PIN_MARK,
                };
                match anomaly {
                    Some(LogicalAnomaly::MissingPin) => {
                        pins.remove(k);
                        marked.push(slot_mark);
                    }
                    Some(LogicalAnomaly::ExtraPin) => {
                        let centre = between_slots(rng);
                        pins.push(Pin { centre, metal });
                        marked.push(Shape::Disc {
                            centre,
                            radius: PIN_MARK,
                        });
                    }
                    Some(LogicalAnomaly::DisplacedPin) => {
                        let centre = between_slots(rng);
                        pins[k].centre = centre;
                        marked.push(slot_mark);
                        marked.push(Shape::Disc {
                            centre,
                            radius: PIN_MARK,
                        });
                    }
                    Some(LogicalAnomaly::OddMetalPin) => {
                        pins[k].metal = metal.other();
                        marked.push(Shape::Disc {
                            centre: pins[k].centre,
                            radius: PIN_MARK,
                        });
                    }
                    _ => {}
                }
                Contents::Tray { slots, pins }
            }
            SceneCategory::Kit => {
                let colour = CableColour::ALL[index % 3];
                let (y0, y1) = (rng.random_range(-15.0..15.0), rng.random_range(-15.0..15.0));
                let mut mid = rng.random_range(-5.0..5.0f32);
                let mut count = colour.clamps();
                let mut cable_present = true;
                match anomaly {
                    Some(LogicalAnomaly::WrongClampCount) => {
                        let others: Vec<CableColour> = CableColour::ALL
                            .into_iter()
                            .filter(|&c| c != colour)
                            .collect();
                        count = others[rng.random_range(0..others.len())].clamps();
                    }
                    Some(LogicalAnomaly::MissingCable) => cable_present = false,
                    Some(LogicalAnomaly::OffCentreCable) => {
                        let off = rng.random_range(45.0..60.0f32);
                        mid = if rng.random_bool(0.5) { off } else { -off };
                    }
                    _ => {}
                }
                // Ends kept within +-70 px, so that an off-centre cable stays in the frame.
                let (y0, y1) = ((y0 + mid).clamp(-70.0, 70.0), (y1 + mid).clamp(-70.0, 70.0));
                let cable = cable_line(y0, y1, mid);
                let clamps: Vec<(P2, f32)> = (0..count)
                    .map(|i| {
                        let t = (i + 1) as f32 / (count + 1) as f32 + rng.random_range(-0.02..0.02);
                        along(&cable, t)
                    })
                    .collect();
                match anomaly {
                    Some(LogicalAnomaly::WrongClampCount) => {
                        marked.extend(clamps.iter().map(|&(c, a)| clamp_shape(c, a)));
                    }
                    Some(LogicalAnomaly::MissingCable | LogicalAnomaly::OffCentreCable) => {
                        marked.push(Shape::Stroke {
                            points: cable.clone(),
                            half_width: CABLE_HALF_WIDTH,
                        });
                        marked.extend(plugs(&cable));
                    }
                    _ => {}
                }
                Contents::Kit {
                    colour,
                    cable,
                    cable_present,
                    clamps,
                }
            }
            SceneCategory::Bottle => {
                let liquid = Liquid::ALL[index % 3];
                let mut label = liquid;
                let mut fill = rng.random_range(0.62..0.72f32);
                let mut label_shift = jitter(rng, 3.0);
                let mut label_tilt = rng.random_range(-2.0..2.0f32).to_radians();
                let nominal_label = label_shape(label_shift, label_tilt);
                match anomaly {
                    Some(LogicalAnomaly::MismatchedLabel) => {
                        let others: Vec<Liquid> =
                            Liquid::ALL.into_iter().filter(|&l| l != liquid).collect();
                        label = others[rng.random_range(0..others.len())];
                        marked.push(nominal_label);
                    }
                    Some(LogicalAnomaly::Overfilled | LogicalAnomaly::Underfilled) => {
                        fill = if anomaly == Some(LogicalAnomaly::Overfilled) {
                            rng.random_range(0.86..0.93)
                        } else {
                            rng.random_range(0.38..0.46)
                        };
                        let (a, b) = (liquid_top(fill), liquid_top(NOMINAL_FILL));
                        marked.push(Shape::Band {
                            shape: Box::new(inner_body()),
                            top: a.min(b),
                            bottom: a.max(b),
                        });
                    }
                    Some(LogicalAnomaly::MisplacedLabel) => {
                        if rng.random_bool(0.5) {
                            // Up towards the neck, or down over the body's bottom edge
                            // (less far, so that it stays in the frame).
                            label_shift[1] += if rng.random_bool(0.5) {
                                -rng.random_range(30.0..40.0f32)
                            } else {
                                rng.random_range(28.0..34.0f32)
                            };
                        } else {
                            let tilt = rng.random_range(18.0..28.0f32).to_radians();
                            label_tilt = if rng.random_bool(0.5) { tilt } else { -tilt };
                        }
                        marked.push(nominal_label);
                        marked.push(label_shape(label_shift, label_tilt));
                    }
                    _ => {}
                }
                Contents::Bottle {
                    liquid,
                    label,
                    fill,
                    label_shift,
                    label_tilt,
                }
            }
        };
        Scene {
            pose,
            contents,
            marked,
        }
    }

    /// The rules of its category that the scene breaks, in the category's order.
    fn broken_rules(&self) -> Vec<Rule> {
        let holds = |rule: Rule| -> bool {
            match (&self.contents, rule) {
                (Contents::Tray { pins, .. }, Rule::PinCount) => pins.len() == 9,
                (Contents::Tray { slots, pins }, Rule::PinsInSlots) => pins.iter().all(|p| {
                    slots
                        .iter()
                        .any(|&s| length(sub(p.centre, s)) <= SLOT_TOLERANCE)
                }),
                (Contents::Tray { pins, .. }, Rule::OnePinMetal) => {
                    pins.windows(2).all(|w| w[0].metal == w[1].metal)
                }
                (Contents::Kit { cable_present, .. }, Rule::CablePresent) => *cable_present,
                (
                    Contents::Kit {
                        colour,
                        cable_present,
                        clamps,
                        ..
                    },
                    Rule::ClampCountMatchesCable,
                ) => !cable_present || clamps.len() == colour.clamps(),
                (
                    Contents::Kit {
                        cable,
                        cable_present,
                        ..
                    },
                    Rule::CableCrossesCentre,
                ) => {
                    let line: Vec<P2> = cable.iter().map(|&p| self.pose.to_frame(p)).collect();
                    let centre = [FRAME_SIZE as f32 / 2.0; 2];
                    !cable_present || polyline_distance(centre, &line) <= CENTRE_TOLERANCE
                }
                (Contents::Bottle { liquid, label, .. }, Rule::LabelMatchesLiquid) => {
                    liquid == label
                }
                (Contents::Bottle { fill, .. }, Rule::FillLevel) => FILL_RANGE.contains(fill),
                (
                    Contents::Bottle {
                        label_shift,
                        label_tilt,
                        ..
                    },
                    Rule::LabelPlacement,
                ) => {
                    length(*label_shift) <= LABEL_SHIFT_TOLERANCE
                        && label_tilt.to_degrees().abs() <= LABEL_TILT_TOLERANCE
                }
                // A rule of another category.
                _ => true,
            }
        };
        let category = match self.contents {
            Contents::Tray { .. } => SceneCategory::Tray,
            Contents::Kit { .. } => SceneCategory::Kit,
            Contents::Bottle { .. } => SceneCategory::Bottle,
        };
        category
            .rules()
            .iter()
            .copied()
            .filter(|&r| !holds(r))
            .collect()
    }

    /// Frame positions of the parts (where structural damage goes when it hits a part).
    fn part_centres(&self) -> Vec<P2> {
        let scene: Vec<P2> = match &self.contents {
            Contents::Tray { pins, .. } => pins.iter().map(|p| p.centre).collect(),
            Contents::Kit { cable, clamps, .. } => {
                let mut v: Vec<P2> = clamps.iter().map(|c| c.0).collect();
                v.extend([cable[8], cable[16], cable[24]]);
                v
            }
            Contents::Bottle {
                label_shift, fill, ..
            } => vec![
                add(LABEL_CENTRE, *label_shift),
                [
                    0.0,
                    (liquid_top(*fill) + LABEL_CENTRE[1] - LABEL_HALF[1]) / 2.0,
                ],
                [0.0, -74.0],
            ],
        };
        scene.into_iter().map(|p| self.pose.to_frame(p)).collect()
    }

    /// The logical anomaly's ground truth: 255 inside the marked shapes.
    fn anomaly_mask(&self) -> GrayImage {
        let mut mask = GrayImage::new(FRAME_SIZE, FRAME_SIZE);
        for shape in &self.marked {
            rasterise(&mut mask, &self.pose, shape);
        }
        mask
    }

    /// The scene under random lighting, without sensor noise.
    fn render(&self, rng: &mut StdRng) -> RgbImage {
        let pose = &self.pose;
        let mut canvas = match &self.contents {
            Contents::Tray { pins, .. } => {
                let mut canvas = background([72.0, 74.0, 78.0], (6, 6), 10.0, rng);
                let tray = jitter_colour([92.0, 118.0, 150.0], rng);
                let outer = Shape::Rect {
                    centre: [0.0; 2],
                    half: [TRAY_HALF; 2],
                    angle: 0.0,
                    corner: 14.0,
                };
                canvas.paint(pose, &outer, 1.0, |_, d| {
                    scaled(tray, if d < 5.0 { 1.12 } else { 1.0 })
                });
                // Flat tray, no recesses: a missing pin leaves tray surface, as between the pins.
                for pin in pins {
                    let shadow = Shape::Disc {
                        centre: add(pin.centre, [2.5, 2.5]),
                        radius: PIN_RADIUS + 1.0,
                    };
                    canvas.fill(pose, &shadow, 0.35, [0.0; 3]);
                    let base = jitter_colour(pin.metal.colour(), rng);
                    let highlight = add(pin.centre, [-0.35 * PIN_RADIUS, -0.35 * PIN_RADIUS]);
                    let body = Shape::Disc {
                        centre: pin.centre,
                        radius: PIN_RADIUS,
                    };
                    canvas.paint(pose, &body, 1.0, |p, _| {
                        let r = length(sub(p, highlight)) / (1.6 * PIN_RADIUS);
                        scaled(base, 1.2 - 0.45 * r.min(1.0))
                    });
                    canvas.fill(
                        pose,
                        &Shape::Disc {
                            centre: pin.centre,
                            radius: 4.0,
                        },
                        1.0,
                        scaled(base, 0.35),
                    );
                }
                canvas
            }
            Contents::Kit {
                colour,
                cable,
                cable_present,
                clamps,
            } => {
                let mut canvas = background([186.0, 182.0, 172.0], (8, 8), 9.0, rng);
                if *cable_present {
                    let base = jitter_colour(colour.colour(), rng);
                    let stroke = Shape::Stroke {
                        points: cable.clone(),
                        half_width: CABLE_HALF_WIDTH,
                    };
                    canvas.paint(pose, &stroke, 1.0, |_, d| {
                        let across = 1.0 - (d / CABLE_HALF_WIDTH).min(1.0);
                        scaled(base, 1.1 - 0.45 * across * across)
                    });
                    let plug = jitter_colour([44.0, 44.0, 48.0], rng);
                    for shape in plugs(cable) {
                        canvas.paint(pose, &shape, 1.0, |_, d| {
                            scaled(plug, if d < 2.5 { 1.5 } else { 1.0 })
                        });
                    }
                }
                let metal = jitter_colour([150.0, 152.0, 158.0], rng);
                for &(centre, angle) in clamps {
                    canvas.paint(pose, &clamp_shape(centre, angle), 1.0, |_, d| {
                        scaled(metal, if d < 3.0 { 0.75 } else { 1.0 })
                    });
                    canvas.fill(
                        pose,
                        &Shape::Disc {
                            centre,
                            radius: 5.0,
                        },
                        1.0,
                        scaled(metal, 0.45),
                    );
                }
                canvas
            }
            Contents::Bottle {
                liquid,
                label,
                fill,
                label_shift,
                label_tilt,
            } => {
                let mut canvas = background([150.0, 110.0, 76.0], (3, 14), 14.0, rng);
                let glass = jitter_colour([208.0, 220.0, 228.0], rng);
                let body = Shape::Rect {
                    centre: BODY_CENTRE,
                    half: BODY_HALF,
                    angle: 0.0,
                    corner: 16.0,
                };
                let neck = Shape::Rect {
                    centre: [0.0, -74.0],
                    half: [15.0, 20.0],
                    angle: 0.0,
                    corner: 4.0,
                };
                for shape in [&body, &neck] {
                    canvas.paint(pose, shape, 0.55, |_, d| {
                        scaled(glass, if d < 3.0 { 0.7 } else { 1.0 })
                    });
                }
                let colour = jitter_colour(liquid.colour(), rng);
                let liquid_shape = Shape::Band {
                    shape: Box::new(inner_body()),
                    top: liquid_top(*fill),
                    bottom: f32::INFINITY,
                };
                canvas.paint(pose, &liquid_shape, 0.92, |p, _| {
                    let x = p[0] / INNER_HALF[0];
                    scaled(colour, 1.05 - 0.3 * x * x)
                });
                let cap = Shape::Rect {
                    centre: [0.0, -98.0],
                    half: [18.0, 9.0],
                    angle: 0.0,
                    corner: 3.0,
                };
                canvas.fill(pose, &cap, 1.0, jitter_colour([58.0, 60.0, 66.0], rng));
                let paper = jitter_colour([236.0, 231.0, 214.0], rng);
                canvas.paint(
                    pose,
                    &label_shape(*label_shift, *label_tilt),
                    1.0,
                    |_, d| scaled(paper, if d < 2.0 { 0.85 } else { 1.0 }),
                );
                let symbol = label.symbol(add(LABEL_CENTRE, *label_shift), *label_tilt);
                canvas.fill(pose, &symbol, 1.0, jitter_colour(label.colour(), rng));
                canvas
            }
        };
        // Fine grain in the objects too: the same noise field over the whole canvas.
        let grain = value_noise((64, 64), rng);
        for (i, px) in canvas.pixels.iter_mut().enumerate() {
            let (x, y) = (
                (i as u32 % FRAME_SIZE) as f32,
                (i as u32 / FRAME_SIZE) as f32,
            );
            let g = 3.0 * grain(x, y);
            *px = px.map(|v| v + g);
        }
        expose(&canvas, rng)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::dataset::{self, Layout, LoadOptions, Split};

    fn small() -> LocoOptions {
        LocoOptions {
            seed: 5,
            train: 3,
            validation: 2,
            good: 2,
            logical: 4,
            structural: 3,
            categories: SceneCategory::ALL.to_vec(),
        }
    }

    fn every_file(root: &Path) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    let rel = path
                        .strip_prefix(root)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned();
                    out.push((rel, fs::read(&path).unwrap()));
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_images() {
        let dir = tempfile::tempdir().unwrap();
        let options = LocoOptions {
            categories: vec![SceneCategory::Kit],
            ..small()
        };
        write_loco_scenes(&dir.path().join("a"), &options).unwrap();
        write_loco_scenes(&dir.path().join("b"), &options).unwrap();
        write_loco_scenes(&dir.path().join("c"), &LocoOptions { seed: 6, ..options }).unwrap();
        let (a, b, c) = (
            every_file(&dir.path().join("a")),
            every_file(&dir.path().join("b")),
            every_file(&dir.path().join("c")),
        );
        // 14 images, 7 masks, logic.json.
        assert_eq!(a.len(), 22);
        assert_eq!(a, b);
        let names = |v: &[(String, Vec<u8>)]| v.iter().map(|f| f.0.clone()).collect::<Vec<_>>();
        assert_eq!(names(&a), names(&c));
        let differing = a.iter().zip(&c).filter(|(x, y)| x.1 != y.1).count();
        assert!(
            differing >= 14,
            "only {differing} files differ with another seed"
        );
    }

    #[test]
    fn the_loader_reads_the_loco_layout() {
        let dir = tempfile::tempdir().unwrap();
        let summary = write_loco_scenes(dir.path(), &small()).unwrap();
        assert_eq!(
            summary,
            LocoSummary {
                categories: 3,
                images: 42,
                masks: 21
            }
        );
        assert_eq!(
            dataset::detect_layout(dir.path()).unwrap(),
            Layout::MvtecLoco
        );
        let ds = dataset::load(dir.path(), None, &LoadOptions::default()).unwrap();
        assert_eq!(ds.layout, Layout::MvtecLoco);
        let names: Vec<&str> = ds.categories.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["bottle", "kit", "tray"]);
        for c in &ds.categories {
            assert_eq!(
                (c.train.len(), c.validation.len(), c.test.len()),
                (3, 2, 9),
                "{}",
                c.name
            );
            let count = |split: Option<Split>| c.test.iter().filter(|s| s.split == split).count();
            assert_eq!(count(None), 2);
            assert_eq!(count(Some(Split::Logical)), 4);
            assert_eq!(count(Some(Split::Structural)), 3);
            for s in &c.test {
                assert_eq!(s.anomalous, s.split.is_some());
                assert_eq!(s.masks.len(), s.anomalous as usize, "{}", s.path.display());
                let img = image::open(&s.path).unwrap();
                assert_eq!((img.width(), img.height()), (FRAME_SIZE, FRAME_SIZE));
                for m in &s.masks {
                    let mask = image::open(m).unwrap().to_luma8();
                    assert_eq!(mask.dimensions(), (FRAME_SIZE, FRAME_SIZE));
                    assert!(mask.pixels().all(|p| p.0[0] == 0 || p.0[0] == 255));
                    assert!(
                        mask.pixels().any(|p| p.0[0] == 255),
                        "{} empty",
                        m.display()
                    );
                }
            }
        }
        let logic: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(dir.path().join("tray/logic.json")).unwrap())
                .unwrap();
        let first = &logic["test"][2];
        assert_eq!(first["image"], "test/logical_anomalies/000.png");
        assert_eq!(first["anomaly"], "missing_pin");
        assert_eq!(first["broken_rules"], serde_json::json!(["pin_count"]));
        assert!(write_loco_scenes(
            dir.path(),
            &LocoOptions {
                train: 0,
                ..small()
            }
        )
        .is_err());
    }

    #[test]
    fn good_scenes_keep_every_rule_and_anomalies_break_exactly_theirs() {
        for category in SceneCategory::ALL {
            for seed in 0..200u64 {
                let mut rng = StdRng::seed_from_u64(seed);
                let good = Scene::sample(category, seed as usize, None, &mut rng);
                assert_eq!(good.broken_rules(), [], "{category:?} seed {seed}");
                assert!(good.marked.is_empty());
                for &anomaly in category.logical_anomalies() {
                    let scene = Scene::sample(category, seed as usize, Some(anomaly), &mut rng);
                    assert_eq!(
                        scene.broken_rules(),
                        anomaly.breaks(),
                        "{anomaly:?} seed {seed}"
                    );
                }
            }
        }
    }

    #[test]
    fn rule_checks_measure_what_they_say() {
        // Hand-built scenes at the identity pose: the checks on the thresholds' two sides.
        let pose = Pose {
            centre: [128.0; 2],
            angle: 0.0,
            scale: 1.0,
        };
        let slots: Vec<P2> = (0..9)
            .map(|i| [(i % 3) as f32 * 66.0, (i / 3) as f32 * 66.0])
            .collect();
        let mut pins: Vec<Pin> = slots
            .iter()
            .map(|&c| Pin {
                centre: c,
                metal: Metal::Steel,
            })
            .collect();
        pins[4].centre[0] += SLOT_TOLERANCE - 0.1;
        let tray = |pins: Vec<Pin>| Scene {
            pose,
            contents: Contents::Tray {
                slots: slots.clone(),
                pins,
            },
            marked: vec![],
        };
        assert_eq!(tray(pins.clone()).broken_rules(), []);
        pins[4].centre[0] += 0.2;
        assert_eq!(tray(pins.clone()).broken_rules(), [Rule::PinsInSlots]);
        pins.truncate(8);
        pins[0].metal = Metal::Brass;
        assert_eq!(
            tray(pins).broken_rules(),
            [Rule::PinCount, Rule::PinsInSlots, Rule::OnePinMetal]
        );

        // A straight cable 19 and 21 px below the frame centre.
        let kit = |y: f32, clamps: usize, present: bool| Scene {
            pose,
            contents: Contents::Kit {
                colour: CableColour::Blue,
                cable: vec![[-100.0, y], [100.0, y]],
                cable_present: present,
                clamps: vec![([0.0, y], 0.0); clamps],
            },
            marked: vec![],
        };
        assert_eq!(kit(19.0, 3, true).broken_rules(), []);
        assert_eq!(
            kit(21.0, 3, true).broken_rules(),
            [Rule::CableCrossesCentre]
        );
        assert_eq!(
            kit(0.0, 4, true).broken_rules(),
            [Rule::ClampCountMatchesCable]
        );
        assert_eq!(kit(40.0, 2, false).broken_rules(), [Rule::CablePresent]);

        let bottle = |fill: f32, shift: P2, tilt_deg: f32| Scene {
            pose,
            contents: Contents::Bottle {
                liquid: Liquid::Green,
                label: Liquid::Green,
                fill,
                label_shift: shift,
                label_tilt: tilt_deg.to_radians(),
            },
            marked: vec![],
        };
        assert_eq!(bottle(0.55, [6.0, 5.0], 7.9).broken_rules(), []);
        assert_eq!(
            bottle(0.54, [0.0; 2], 0.0).broken_rules(),
            [Rule::FillLevel]
        );
        assert_eq!(
            bottle(0.81, [0.0; 2], 0.0).broken_rules(),
            [Rule::FillLevel]
        );
        assert_eq!(
            bottle(0.7, [6.0, 6.0], 0.0).broken_rules(),
            [Rule::LabelPlacement]
        );
        assert_eq!(
            bottle(0.7, [0.0; 2], -8.1).broken_rules(),
            [Rule::LabelPlacement]
        );
    }

    #[test]
    fn masks_cover_the_changed_region() {
        for category in SceneCategory::ALL {
            for (i, &anomaly) in category.logical_anomalies().iter().enumerate() {
                let mut rng = StdRng::seed_from_u64(i as u64);
                let scene = Scene::sample(category, i, Some(anomaly), &mut rng);
                let mask = scene.anomaly_mask();
                let on = mask.pixels().filter(|p| p.0[0] == 255).count();
                // The smallest mark is a pin (pi 16^2 = 804 px at scale 1).
                assert!((700..40_000).contains(&on), "{anomaly:?}: {on} px");
                // The mask is where the good scene differs: render both with one lighting.
                let mut good = scene.clone();
                match (&mut good.contents, anomaly) {
                    (Contents::Bottle { label, liquid, .. }, LogicalAnomaly::MismatchedLabel) => {
                        *label = *liquid
                    }
                    (Contents::Tray { pins, .. }, LogicalAnomaly::OddMetalPin) => {
                        let brass = pins.iter().filter(|p| p.metal == Metal::Brass).count();
                        let majority = if brass > 4 {
                            Metal::Brass
                        } else {
                            Metal::Steel
                        };
                        pins.iter_mut().for_each(|p| p.metal = majority);
                    }
                    _ => continue,
                }
                let a = scene.render(&mut StdRng::seed_from_u64(99));
                let b = good.render(&mut StdRng::seed_from_u64(99));
                for (x, y, m) in mask.enumerate_pixels() {
                    if m.0[0] == 0 {
                        assert_eq!(
                            a.get_pixel(x, y),
                            b.get_pixel(x, y),
                            "{anomaly:?} at {x},{y}"
                        );
                    }
                }
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn structural_damage_mask_is_exact() {
        let mut rng = StdRng::seed_from_u64(3);
        let scene = Scene::sample(SceneCategory::Tray, 0, None, &mut rng);
        for kind in [DefectKind::Speck, DefectKind::Scratch] {
            let clean = scene.render(&mut StdRng::seed_from_u64(1));
            let mut damaged = clean.clone();
            let mask = damage(&mut damaged, &scene.part_centres(), kind, &mut rng);
            let mut masked = 0;
            for (x, y, m) in mask.enumerate_pixels() {
                if m.0[0] == 0 {
                    assert_eq!(clean.get_pixel(x, y), damaged.get_pixel(x, y), "{kind:?}");
                } else {
                    masked += 1;
                }
            }
            // The smallest half-resolution scratch (20 px), enlarged 2 x 2.
            assert!(masked >= 80, "{kind:?}: {masked} px");
        }
    }

    #[test]
    fn parts_are_large_enough_and_inside_the_frame() {
        let smallest_scale = 0.97;
        // Pin diameter, a clamp's and a plug's short side, the label symbol.
        for size in [
            2.0 * PIN_RADIUS,
            2.0 * CLAMP_HALF[0],
            2.0 * SYMBOL_RADIUS,
            2.0 * PLUG_HALF[0],
        ] {
            assert!(size * smallest_scale >= MIN_PART_SIZE, "{size}");
        }
        // Every painted pixel of every scene stays in the frame: the object's mask (all parts
        // marked) never touches the border.
        for category in SceneCategory::ALL {
            for seed in 0..30u64 {
                let mut rng = StdRng::seed_from_u64(seed);
                let anomalies = category.logical_anomalies();
                let anomaly = anomalies[seed as usize % anomalies.len()];
                let scene = Scene::sample(category, 0, Some(anomaly), &mut rng);
                let outline = match &scene.contents {
                    Contents::Tray { .. } => vec![Shape::Rect {
                        centre: [0.0; 2],
                        half: [TRAY_HALF; 2],
                        angle: 0.0,
                        corner: 14.0,
                    }],
                    Contents::Kit { cable, .. } => {
                        let mut shapes = plugs(cable).to_vec();
                        shapes.push(Shape::Stroke {
                            points: cable.clone(),
                            half_width: CLAMP_HALF[1],
                        });
                        shapes
                    }
                    Contents::Bottle {
                        label_shift,
                        label_tilt,
                        ..
                    } => vec![
                        Shape::Rect {
                            centre: [0.0, 0.0],
                            half: [44.0, 107.0],
                            angle: 0.0,
                            corner: 0.0,
                        },
                        label_shape(*label_shift, *label_tilt),
                    ],
                };
                let mut mask = GrayImage::new(FRAME_SIZE, FRAME_SIZE);
                for shape in &outline {
                    rasterise(&mut mask, &scene.pose, shape);
                }
                let last = FRAME_SIZE - 1;
                for (x, y, m) in mask.enumerate_pixels() {
                    if m.0[0] == 255 {
                        assert!(
                            x > 0 && y > 0 && x < last && y < last,
                            "{anomaly:?} seed {seed} at {x},{y}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn nominal_images_vary() {
        let mut images = Vec::new();
        for index in 0..3 {
            let mut rng = image_rng(0, SceneCategory::Bottle, Folder::Train, index * 3);
            images.push(
                render_sample(SceneCategory::Bottle, Folder::Train, index * 3, &mut rng).image,
            );
        }
        // Same liquid (index % 3 == 0), different jitter, lighting and noise.
        for pair in [(0, 1), (0, 2), (1, 2)] {
            let (a, b) = (&images[pair.0], &images[pair.1]);
            let mean_abs: f64 = a
                .as_raw()
                .iter()
                .zip(b.as_raw())
                .map(|(&x, &y)| (x as f64 - y as f64).abs())
                .sum::<f64>()
                / a.as_raw().len() as f64;
            assert!(mean_abs > 3.0, "{pair:?}: mean difference {mean_abs}");
        }
    }
}
