//! A second, independent family of synthetic logic scenes ("family b"), in the MVTec LOCO
//! layout: a held-out test of generalisation for detectors tuned on the first family
//! ([`super::loco`]). Other products, sizes, materials, lighting and rendering code; only the
//! generic damage painter [`paint_defect`] and the output layout are shared.
//!
//! [`write_family_b`] writes, per [`Category`]:
//!
//! ```text
//! ROOT/<category>/train/good/NNN.png
//! ROOT/<category>/validation/good/NNN.png
//! ROOT/<category>/test/good/NNN.png
//! ROOT/<category>/test/logical_anomalies/NNN.png
//! ROOT/<category>/test/structural_anomalies/NNN.png
//! ROOT/<category>/ground_truth/{logical_anomalies,structural_anomalies}/NNN/000.png
//! ROOT/<category>/logic.json
//! ROOT/<category>/defects_config.json
//! ```
//!
//! read by `eval::dataset` as [`Layout::MvtecLoco`](crate::eval::dataset::Layout). Masks are
//! binary: 255 where anomalous, else 0. `logic.json` has the shape `super::loco` writes
//! (`category`, `rules`, `test`: per test image its path relative to the category folder, its
//! logical [`Anomaly`] in snake case or null, and the rules it breaks); structural images have
//! `anomaly: null` and break no rule. `defects_config.json` is MVTec LOCO's list of
//! `{defect_name, pixel_value, saturation_threshold, relative_saturation}`: one entry per
//! logical subtype and per [`Damage`] kind of the category, all with pixel value 255 (the masks
//! do not encode the subtype; `logic.json` does) and saturation at the whole mask (relative,
//! 1.0).
//!
//! # Scenes
//! Frames are [`FRAME_SIZE`] (448) px square; parts are 15-60 px across. The categories:
//!
//! * **blister**: a foil blister card (316 x 224 px) with 2 x 5 clear pockets (46 x 38 px),
//!   one tablet per pocket, all of one kind: white round tablets with a score line (22 px),
//!   red and cream capsules (31 x 15 px) or yellow ovals (26 x 17 px). Logical anomalies:
//!   `missing` (a pocket empty), `extra` (an eleventh tablet loose on the foil between the
//!   rows or below them), `wrong_kind` (one tablet of another kind), `misplaced` (a tablet out
//!   of its pocket, loose on the foil).
//! * **terminals**: five terminal blocks (34 x 60 px) side by side on a DIN rail between two end
//!   stops, each block grey, blue, orange or green-yellow (drawn at random per block), each
//!   with a wire (15 px wide) coming from the top of the frame into a ferrule in its top. A
//!   wire's colour must be its block's. Logical anomalies: `mismatched_pair` (one wire of
//!   another colour than its block), `missing` (one block without its wire and ferrule),
//!   `misplaced` (one block, with its wire, 24-30 px above or below the line of the others).
//! * **tubes**: three clear tubes (48 px wide) in a plastic rack, each holding coffee beans,
//!   rice or red lentils (drawn at random per tube) to 50-60% of its height, closed by a cap
//!   (56 x 26 px) whose colour names the content (red coffee, blue rice, green lentils).
//!   Logical anomalies: `wrong_fill` (one tube at 24-32% or 80-88%), `wrong_kind` (one
//!   tube's content is not its cap's), `missing` (one cap absent, the tube open).
//!
//! Logical masks cover every changed pixel: the part, its shadow and its anti-aliased edge (and
//! for a moved part, where it was and where it is). Structural anomalies, cycling through
//! [`Damage`]: `scratch`, `stain` and `speck` from [`paint_defect`], enlarged 2x (painted at half
//! resolution in a 192 px window, centred near a part 85% of the time); `crack`, a jagged dark
//! line 2-3 px wide and 25-60 px long over a part; `chip`, a bite of 10-20 px out of one part's
//! edge (a tablet, a block's corner or a cap), what lies under it showing. Their masks are the
//! changed pixels (a stain's mask also takes the core [`paint_defect`] marks).
//!
//! Nominal variation in every image, from the same ranges in every folder: the object's
//! position (+-15 px), rotation (+-5 degrees) and scale (0.97-1.03); each part's position
//! (+-1.5-3 px) and colour (+-6 per channel); the background, one of three materials drawn at
//! random (wood planks, slate, woven felt), each with its own colour range and texture;
//! lighting (gain 0.88-1.12, a linear gradient of up to 12% across half the frame, vignetting
//! of up to 15% at the corners, a colour cast of +-4% per channel), defocus (a 3 x 3 blur mixed
//! in at 0-60%), and sensor noise (nearly Gaussian: read noise of sigma 1.5-2.5 grey levels
//! plus shot noise of sigma 0.2 sqrt(level)). Blister kinds cycle with the image index, so any
//! first k >= 3 training images show every kind; block colours and tube contents are drawn per
//! part.
//!
//! Each image draws from its own generator, seeded from the seed, the category, the folder
//! and the index (mixed with a constant of this family, so that family a and b of one seed are
//! unrelated): the same options give byte-identical files. Images are rendered on all cores.

use super::{paint_defect, DefectKind, MIN_SIZE};
use image::{GrayImage, Luma, Rgb, RgbImage};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::f32::consts::PI;
use std::fs;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Width and height of every frame, px.
pub const FRAME_SIZE: u32 = 448;
const HALF_FRAME: f32 = FRAME_SIZE as f32 / 2.0;

// ---------------------------------------------------------------------------------------
// What is written

/// A category of family b.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    Blister,
    Terminals,
    Tubes,
}

impl Category {
    pub const ALL: [Category; 3] = [Category::Blister, Category::Terminals, Category::Tubes];

    /// The category folder name.
    pub fn name(self) -> &'static str {
        match self {
            Category::Blister => "blister",
            Category::Terminals => "terminals",
            Category::Tubes => "tubes",
        }
    }

    /// The rules every good scene of the category keeps.
    pub fn rules(self) -> &'static [Rule] {
        match self {
            Category::Blister => &[
                Rule::TabletCount,
                Rule::TabletsInPockets,
                Rule::OneTabletKind,
            ],
            Category::Terminals => &[
                Rule::WireMatchesBlock,
                Rule::EveryBlockWired,
                Rule::BlocksInLine,
            ],
            Category::Tubes => &[
                Rule::ContentMatchesCap,
                Rule::FillLevel,
                Rule::EveryTubeCapped,
            ],
        }
    }

    /// The logical anomalies of the category, in the order `test/logical_anomalies` cycles
    /// through them.
    pub fn logical_anomalies(self) -> &'static [Anomaly] {
        use Anomaly::*;
        match self {
            Category::Blister => &[Missing, Extra, WrongKind, Misplaced],
            Category::Terminals => &[MismatchedPair, Missing, Misplaced],
            Category::Tubes => &[WrongFill, WrongKind, Missing],
        }
    }
}

/// A rule of a category's logic, checked on the scene description.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// blister: exactly 10 tablets.
    TabletCount,
    /// blister: every tablet within [`POCKET_TOLERANCE`] px of a pocket centre, one per pocket.
    TabletsInPockets,
    /// blister: all tablets of one kind.
    OneTabletKind,
    /// terminals: every wire has its block's colour.
    WireMatchesBlock,
    /// terminals: every block has its wire.
    EveryBlockWired,
    /// terminals: every block within [`LINE_TOLERANCE`] px of the rail's centre line.
    BlocksInLine,
    /// tubes: every cap's colour names its tube's content (checked where there is a cap).
    ContentMatchesCap,
    /// tubes: every tube filled within [`FILL_RANGE`] of its height.
    FillLevel,
    /// tubes: every tube has its cap.
    EveryTubeCapped,
}

impl Rule {
    /// The rule's name (snake case, as in `logic.json`).
    pub fn name(self) -> &'static str {
        match self {
            Rule::TabletCount => "tablet_count",
            Rule::TabletsInPockets => "tablets_in_pockets",
            Rule::OneTabletKind => "one_tablet_kind",
            Rule::WireMatchesBlock => "wire_matches_block",
            Rule::EveryBlockWired => "every_block_wired",
            Rule::BlocksInLine => "blocks_in_line",
            Rule::ContentMatchesCap => "content_matches_cap",
            Rule::FillLevel => "fill_level",
            Rule::EveryTubeCapped => "every_tube_capped",
        }
    }
}

/// A logical anomaly subtype: one part changed in a good scene.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Anomaly {
    /// A part absent: a tablet (its pocket empty), a wire with its ferrule, a cap.
    Missing,
    /// An extra part: an eleventh tablet loose on the foil.
    Extra,
    /// A part of another kind: a tablet of another kind, a tube content not its cap's.
    WrongKind,
    /// A part out of place: a tablet out of its pocket, a block off the line.
    Misplaced,
    /// Two parts that go together do not match: a wire of another colour than its block.
    MismatchedPair,
    /// A wrong amount: a tube under- or overfilled.
    WrongFill,
}

impl Anomaly {
    /// The subtype's name (snake case, as in `logic.json` and `defects_config.json`).
    pub fn name(self) -> &'static str {
        match self {
            Anomaly::Missing => "missing",
            Anomaly::Extra => "extra",
            Anomaly::WrongKind => "wrong_kind",
            Anomaly::Misplaced => "misplaced",
            Anomaly::MismatchedPair => "mismatched_pair",
            Anomaly::WrongFill => "wrong_fill",
        }
    }

    /// The rules a scene of `category` with this anomaly breaks (all of them, and no other).
    pub fn breaks(self, category: Category) -> &'static [Rule] {
        use Anomaly::*;
        match (category, self) {
            (Category::Blister, Missing) => &[Rule::TabletCount],
            (Category::Blister, Extra) => &[Rule::TabletCount, Rule::TabletsInPockets],
            (Category::Blister, WrongKind) => &[Rule::OneTabletKind],
            (Category::Blister, Misplaced) => &[Rule::TabletsInPockets],
            (Category::Terminals, MismatchedPair) => &[Rule::WireMatchesBlock],
            (Category::Terminals, Missing) => &[Rule::EveryBlockWired],
            (Category::Terminals, Misplaced) => &[Rule::BlocksInLine],
            (Category::Tubes, WrongFill) => &[Rule::FillLevel],
            (Category::Tubes, WrongKind) => &[Rule::ContentMatchesCap],
            (Category::Tubes, Missing) => &[Rule::EveryTubeCapped],
            _ => &[],
        }
    }
}

/// A structural anomaly kind; `test/structural_anomalies` cycles through [`Damage::ALL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Damage {
    Scratch,
    Stain,
    Speck,
    Crack,
    Chip,
}

impl Damage {
    pub const ALL: [Damage; 5] = [
        Damage::Scratch,
        Damage::Stain,
        Damage::Crack,
        Damage::Chip,
        Damage::Speck,
    ];

    /// The kind's name (as in `defects_config.json`).
    pub fn name(self) -> &'static str {
        match self {
            Damage::Scratch => "scratch",
            Damage::Stain => "stain",
            Damage::Speck => "speck",
            Damage::Crack => "crack",
            Damage::Chip => "chip",
        }
    }
}

/// How many images of each folder, and which categories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyBOptions {
    /// Seed of every random choice.
    pub seed: u64,
    /// Images in `train/good`; at least 1.
    pub train: usize,
    /// Images in `validation/good`.
    pub validation: usize,
    /// Images in `test/good`.
    pub good: usize,
    /// Images in `test/logical_anomalies`, cycling through the category's subtypes.
    pub logical: usize,
    /// Images in `test/structural_anomalies`, cycling through [`Damage::ALL`].
    pub structural: usize,
    /// Categories to write; at least one.
    pub categories: Vec<Category>,
}

impl Default for FamilyBOptions {
    /// Seed 0; 10 train, 20 validation, 30 good, 30 logical and 20 structural test images;
    /// every category.
    fn default() -> Self {
        FamilyBOptions {
            seed: 0,
            train: 10,
            validation: 20,
            good: 30,
            logical: 30,
            structural: 20,
            categories: Category::ALL.to_vec(),
        }
    }
}

/// What [`write_family_b`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyBSummary {
    pub categories: usize,
    /// PNG images, masks excluded.
    pub images: usize,
    /// Ground-truth mask files.
    pub masks: usize,
}

/// Writes the scenes of `options.categories` under `root` (created if needed; files of the
/// same names are overwritten). Errors: `InvalidInput` for no category or no training image,
/// else the file system's error with the path at fault in its message.
pub fn write_family_b(root: &Path, options: &FamilyBOptions) -> io::Result<FamilyBSummary> {
    if options.categories.is_empty() || options.train == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "family b scenes need at least one category and one training image",
        ));
    }
    let folders = [
        (Folder::Train, options.train),
        (Folder::Validation, options.validation),
        (Folder::TestGood, options.good),
        (Folder::Logical, options.logical),
        (Folder::Structural, options.structural),
    ];
    let mut jobs = Vec::new();
    for &category in &options.categories {
        let dir = root.join(category.name());
        for (folder, count) in folders {
            create_dir(&dir.join(folder.path()))?;
            if folder.is_anomalous() {
                for index in 0..count {
                    create_dir(&mask_dir(&dir, folder, index))?;
                }
            }
            jobs.extend((0..count).map(|index| (category, folder, index)));
        }
    }
    let results = parallel_map(&jobs, |&(category, folder, index)| {
        let mut rng = image_rng(options.seed, category, folder, index);
        let sample = render_sample(category, folder, index, &mut rng);
        let dir = root.join(category.name());
        save(
            &sample.image,
            &dir.join(folder.path()).join(format!("{index:03}.png")),
        )?;
        if let Some(mask) = &sample.mask {
            save(mask, &mask_dir(&dir, folder, index).join("000.png"))?;
        }
        Ok::<_, io::Error>(KeyEntry {
            image: format!("{}/{index:03}.png", folder.path()),
            anomaly: sample.anomaly,
            broken_rules: sample.broken_rules,
        })
    });
    let mut summary = FamilyBSummary {
        categories: 0,
        images: 0,
        masks: 0,
    };
    let mut results = jobs.iter().zip(results);
    for &category in &options.categories {
        let mut key = Vec::new();
        for (&(_, folder, _), result) in results.by_ref().take(
            folders.iter().map(|f| f.1).sum::<usize>(), // this category's jobs, in order
        ) {
            let entry = result?;
            summary.images += 1;
            summary.masks += folder.is_anomalous() as usize;
            if folder.is_test() {
                key.push(entry);
            }
        }
        let dir = root.join(category.name());
        let logic = Logic {
            category,
            rules: category.rules(),
            test: key,
        };
        write_json(&dir.join("logic.json"), &logic)?;
        let config: Vec<DefectConfig> = category
            .logical_anomalies()
            .iter()
            .map(|a| a.name())
            .chain(Damage::ALL.iter().map(|d| d.name()))
            .map(|name| DefectConfig {
                defect_name: name,
                pixel_value: 255,
                saturation_threshold: 1.0,
                relative_saturation: true,
            })
            .collect();
        write_json(&dir.join("defects_config.json"), &config)?;
        summary.categories += 1;
    }
    Ok(summary)
}

/// `logic.json`: the answer key of one category.
#[derive(Serialize)]
struct Logic {
    category: Category,
    rules: &'static [Rule],
    test: Vec<KeyEntry>,
}

#[derive(Serialize)]
struct KeyEntry {
    /// Relative to the category folder.
    image: String,
    /// `None` for good and structural images.
    anomaly: Option<Anomaly>,
    broken_rules: Vec<Rule>,
}

/// One entry of `defects_config.json`, as MVTec LOCO writes it.
#[derive(Serialize)]
struct DefectConfig {
    defect_name: &'static str,
    pixel_value: u8,
    saturation_threshold: f32,
    relative_saturation: bool,
}

fn at(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

fn create_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir).map_err(|e| at(dir, e))
}

fn mask_dir(category_dir: &Path, folder: Folder, index: usize) -> std::path::PathBuf {
    category_dir
        .join("ground_truth")
        .join(folder.ground_truth_name())
        .join(format!("{index:03}"))
}

fn write_json<T: Serialize + ?Sized>(path: &Path, value: &T) -> io::Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(io::Error::other)?;
    fs::write(path, text + "\n").map_err(|e| at(path, e))
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

/// `f` over `items` on every core; results in the items' order.
fn parallel_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 16)
        .min(items.len().max(1));
    let next = AtomicUsize::new(0);
    let (f, next) = (&f, &next);
    let mut out: Vec<Option<R>> = (0..items.len()).map(|_| None).collect();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(move || {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= items.len() {
                            break done;
                        }
                        done.push((i, f(&items[i])));
                    }
                })
            })
            .collect();
        for worker in workers {
            for (i, r) in worker.join().expect("a rendering thread panicked") {
                out[i] = Some(r);
            }
        }
    });
    out.into_iter()
        .map(|r| r.expect("every item is taken once"))
        .collect()
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

    fn ground_truth_name(self) -> &'static str {
        match self {
            Folder::Logical => "logical_anomalies",
            _ => "structural_anomalies",
        }
    }

    fn is_test(self) -> bool {
        matches!(
            self,
            Folder::TestGood | Folder::Logical | Folder::Structural
        )
    }

    fn is_anomalous(self) -> bool {
        matches!(self, Folder::Logical | Folder::Structural)
    }
}

/// SplitMix64's output function: a well-mixed hash of `x`.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Separates this family's generators from family a's of the same seed.
const FAMILY_TAG: u64 = 0xB0B0_F00D_5EED_000B;

/// The generator of one image, independent of every other image's.
fn image_rng(seed: u64, category: Category, folder: Folder, index: usize) -> StdRng {
    let slot = ((category as u64) << 56) | ((folder as u64) << 48) | index as u64;
    StdRng::seed_from_u64(mix(mix(seed ^ FAMILY_TAG) ^ mix(slot)))
}

/// One rendered image with what it shows.
struct Sample {
    image: RgbImage,
    mask: Option<GrayImage>,
    anomaly: Option<Anomaly>,
    broken_rules: Vec<Rule>,
}

fn render_sample(category: Category, folder: Folder, index: usize, rng: &mut StdRng) -> Sample {
    let subtypes = category.logical_anomalies();
    let anomaly = (folder == Folder::Logical).then(|| subtypes[index % subtypes.len()]);
    let damage = (folder == Folder::Structural).then(|| Damage::ALL[index % Damage::ALL.len()]);
    let mut scene = Scene::sample(category, index, rng);
    if let Some(anomaly) = anomaly {
        scene.apply(anomaly, rng);
    }
    if damage == Some(Damage::Chip) {
        scene.chip = Some(scene.pick_chip(rng));
    }
    let mut image = scene.photograph();
    let mask = match damage {
        None => anomaly.map(|_| scene.anomaly_mask()),
        Some(Damage::Chip) => Some(scene.anomaly_mask()),
        Some(Damage::Crack) => {
            let target = scene.damage_target(rng);
            Some(paint_crack(&mut image, target, rng))
        }
        Some(kind) => {
            let target = scene.damage_target(rng);
            let kind = match kind {
                Damage::Scratch => DefectKind::Scratch,
                Damage::Stain => DefectKind::Stain,
                _ => DefectKind::Speck,
            };
            Some(paint_enlarged(&mut image, target, kind, rng))
        }
    };
    add_sensor_noise(&mut image, scene.look.read_noise, rng);
    Sample {
        image,
        mask,
        anomaly,
        broken_rules: scene.broken_rules(),
    }
}

// ---------------------------------------------------------------------------------------
// Structural damage

/// Half-resolution window [`paint_defect`] paints in, px (its minimum size).
const WINDOW: u32 = MIN_SIZE;
/// A changed pixel joins a painted defect's mask when a channel moved by this many levels
/// (a stain's fading rim; [`paint_defect`]'s own mask is its core).
const CHANGE_IN_MASK: i16 = 6;

/// Paints one [`paint_defect`] defect of `kind` at twice its size: on a 2 x 2 box-averaged
/// copy of the 192 px window around `target`, each painted pixel's change applied to its four
/// pixels. Returns the full-frame mask: [`paint_defect`]'s mask, enlarged, plus every pixel
/// changed by at least [`CHANGE_IN_MASK`].
fn paint_enlarged(
    image: &mut RgbImage,
    target: P2,
    kind: DefectKind,
    rng: &mut StdRng,
) -> GrayImage {
    let side = 2 * WINDOW;
    let corner = |c: f32| {
        (c - side as f32 / 2.0)
            .round()
            .clamp(0.0, (FRAME_SIZE - side) as f32) as u32
    };
    let (x0, y0) = (corner(target[0]), corner(target[1]));
    let small = RgbImage::from_fn(WINDOW, WINDOW, |x, y| {
        let mut sum = [0u32; 3];
        for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
            let p = image.get_pixel(x0 + 2 * x + dx, y0 + 2 * y + dy);
            for (s, &v) in sum.iter_mut().zip(&p.0) {
                *s += v as u32;
            }
        }
        Rgb(sum.map(|s| ((s + 2) / 4) as u8))
    });
    let mut painted = small.clone();
    let core = paint_defect(&mut painted, kind, rng);
    let mut mask = GrayImage::new(FRAME_SIZE, FRAME_SIZE);
    for y in 0..side {
        for x in 0..side {
            let (sx, sy) = (x / 2, y / 2);
            let (before, after) = (small.get_pixel(sx, sy), painted.get_pixel(sx, sy));
            let change: [i16; 3] = std::array::from_fn(|k| after.0[k] as i16 - before.0[k] as i16);
            let px = image.get_pixel_mut(x0 + x, y0 + y);
            let mut moved = 0;
            for (v, &c) in px.0.iter_mut().zip(&change) {
                let new = (*v as i16 + c).clamp(0, 255);
                moved = moved.max((new - *v as i16).abs());
                *v = new as u8;
            }
            if core.get_pixel(sx, sy).0[0] == 255 || moved >= CHANGE_IN_MASK {
                mask.put_pixel(x0 + x, y0 + y, Luma([255]));
            }
        }
    }
    mask
}

/// Paints a crack: a jagged polyline of 5-7 steps of 5-9 px from near `target`, 1.8-2.8 px
/// wide, each pixel it covers darkened to 25-40%. Returns its exact mask.
fn paint_crack(image: &mut RgbImage, target: P2, rng: &mut StdRng) -> GrayImage {
    let mut points = vec![add(target, jitter(rng, 4.0))];
    let mut heading = rng.random_range(0.0..2.0 * PI);
    for _ in 0..rng.random_range(5..=7) {
        heading += rng.random_range(-0.7..0.7f32);
        let step = rng.random_range(5.0..9.0f32);
        let last = points[points.len() - 1];
        points.push(add(last, [step * heading.cos(), step * heading.sin()]));
    }
    let half_width = rng.random_range(0.9..1.4f32);
    let keep = rng.random_range(0.25..0.4f32);
    let crack = Shape::Path {
        points,
        r: half_width,
    };
    let mut mask = GrayImage::new(FRAME_SIZE, FRAME_SIZE);
    let identity = Pose::identity();
    if let Some((x0, x1, y0, y1)) = pixel_box(&crack, &identity, 1.0) {
        for y in y0..y1 {
            for x in x0..x1 {
                if crack.distance(centre_of(x, y)) <= 0.0 {
                    let px = image.get_pixel_mut(x, y);
                    px.0 = px.0.map(|v| (v as f32 * keep).round() as u8);
                    mask.put_pixel(x, y, Luma([255]));
                }
            }
        }
    }
    mask
}

/// Read noise of sigma `read` plus shot noise (sigma 0.2 sqrt(level)), per channel; each
/// draw is a sum of four uniforms (nearly Gaussian, within +-3.5 sigma) from a hash of a seed
/// drawn from `rng` and the sample's position.
fn add_sensor_noise(image: &mut RgbImage, read: f32, rng: &mut StdRng) {
    let sigma: Vec<f32> = (0..256)
        .map(|level| (read * read + 0.04 * level as f32).sqrt())
        .collect();
    let seed: u64 = rng.random();
    for (i, c) in image.iter_mut().enumerate() {
        let h = mix(seed.wrapping_add(i as u64));
        let sum = (h & 0xFFFF) + ((h >> 16) & 0xFFFF) + ((h >> 32) & 0xFFFF) + (h >> 48);
        let n = (sum as f32 / 65536.0 - 2.0) * 3f32.sqrt();
        *c = to_u8(*c as f32 + sigma[*c as usize] * n);
    }
}

/// `v` rounded to the nearest 8-bit level (halves up), clamped.
fn to_u8(v: f32) -> u8 {
    (v + 0.5).clamp(0.0, 255.0) as u8
}

// ---------------------------------------------------------------------------------------
// Geometry

type P2 = [f32; 2];
type Colour = [f32; 3];

fn add(a: P2, b: P2) -> P2 {
    [a[0] + b[0], a[1] + b[1]]
}

fn sub(a: P2, b: P2) -> P2 {
    [a[0] - b[0], a[1] - b[1]]
}

fn mul(a: P2, k: f32) -> P2 {
    [a[0] * k, a[1] * k]
}

fn norm(a: P2) -> f32 {
    (a[0] * a[0] + a[1] * a[1]).sqrt()
}

/// Sine and cosine of `angle`.
fn sin_cos(angle: f32) -> P2 {
    let (s, c) = angle.sin_cos();
    [s, c]
}

/// `p` turned back by the angle of sine and cosine `sc`.
fn unturn(p: P2, [s, c]: P2) -> P2 {
    [c * p[0] + s * p[1], -s * p[0] + c * p[1]]
}

fn turn(p: P2, angle: f32) -> P2 {
    let (s, c) = angle.sin_cos();
    [c * p[0] - s * p[1], s * p[0] + c * p[1]]
}

fn dot(a: P2, b: P2) -> f32 {
    a[0] * b[0] + a[1] * b[1]
}

fn jitter(rng: &mut StdRng, r: f32) -> P2 {
    [rng.random_range(-r..r), rng.random_range(-r..r)]
}

fn centre_of(x: u32, y: u32) -> P2 {
    [x as f32 + 0.5, y as f32 + 0.5]
}

fn segment_distance(p: P2, a: P2, b: P2) -> f32 {
    let (pa, ba) = (sub(p, a), sub(b, a));
    let t = (dot(pa, ba) / dot(ba, ba).max(1e-9)).clamp(0.0, 1.0);
    norm(sub(pa, mul(ba, t)))
}

/// Scene to frame: `p` lies at `centre + scale R(angle) p`.
#[derive(Debug, Clone, Copy)]
struct Pose {
    centre: P2,
    scale: f32,
    /// Sine and cosine of the angle.
    turn: P2,
}

impl Pose {
    /// The frame centre +-15 px, +-5 degrees, scale 0.97-1.03.
    fn sample(rng: &mut StdRng) -> Pose {
        let centre = add([HALF_FRAME; 2], jitter(rng, 15.0));
        let angle = rng.random_range(-5.0..5.0f32).to_radians();
        Pose::new(centre, angle, rng.random_range(0.97..1.03))
    }

    fn new(centre: P2, angle: f32, scale: f32) -> Pose {
        let (s, c) = angle.sin_cos();
        Pose {
            centre,
            scale,
            turn: [s, c],
        }
    }

    /// Scene coordinates are frame coordinates.
    fn identity() -> Pose {
        Pose::new([0.0; 2], 0.0, 1.0)
    }

    fn to_frame(self, p: P2) -> P2 {
        let [s, c] = self.turn;
        let k = self.scale;
        add(
            self.centre,
            [k * (c * p[0] - s * p[1]), k * (s * p[0] + c * p[1])],
        )
    }

    fn to_scene(self, q: P2) -> P2 {
        let [s, c] = self.turn;
        let (d, k) = (sub(q, self.centre), 1.0 / self.scale);
        [k * (c * d[0] + s * d[1]), k * (-s * d[0] + c * d[1])]
    }
}

/// A shape in scene coordinates, by its signed distance (negative inside).
#[derive(Debug, Clone)]
enum Shape {
    Circle {
        c: P2,
        r: f32,
    },
    /// Radii along the axes turned by the angle of sine and cosine `turn` (the distance is
    /// approximate off the edge).
    Ellipse {
        c: P2,
        radii: P2,
        turn: P2,
    },
    /// A rectangle of half-extents `half` turned like an ellipse, corners rounded by `round`.
    Rect {
        c: P2,
        half: P2,
        turn: P2,
        round: f32,
    },
    /// A stroke of radius `r` along a polyline (one point: a disc).
    Path {
        points: Vec<P2>,
        r: f32,
    },
    /// A [`Shape::Path`] whose points' y increase (at least two points): found faster.
    Column {
        points: Vec<P2>,
        r: f32,
    },
    /// The part of `inner` with `top <= y <= bottom` (scene y).
    Slab {
        inner: Box<Shape>,
        top: f32,
        bottom: f32,
    },
    /// `inner` less `hole`.
    Cut {
        inner: Box<Shape>,
        hole: Box<Shape>,
    },
    /// Where both are.
    Both(Box<Shape>, Box<Shape>),
    /// `inner` grown by `by` px (shrunk when negative).
    Grown {
        inner: Box<Shape>,
        by: f32,
    },
    /// `inner` moved by `by`.
    Moved {
        inner: Box<Shape>,
        by: P2,
    },
    /// Where any is.
    Union(Vec<Shape>),
}

impl Shape {
    fn rect(c: P2, half: P2, angle: f32, round: f32) -> Shape {
        Shape::Rect {
            c,
            half,
            turn: sin_cos(angle),
            round,
        }
    }

    fn ellipse(c: P2, radii: P2, angle: f32) -> Shape {
        Shape::Ellipse {
            c,
            radii,
            turn: sin_cos(angle),
        }
    }

    fn capsule(a: P2, b: P2, r: f32) -> Shape {
        Shape::Path {
            points: vec![a, b],
            r,
        }
    }

    fn grown(self, by: f32) -> Shape {
        Shape::Grown {
            inner: Box::new(self),
            by,
        }
    }

    fn moved(self, by: P2) -> Shape {
        Shape::Moved {
            inner: Box::new(self),
            by,
        }
    }

    fn cut(self, hole: Shape) -> Shape {
        Shape::Cut {
            inner: Box::new(self),
            hole: Box::new(hole),
        }
    }

    fn and(self, other: Shape) -> Shape {
        Shape::Both(Box::new(self), Box::new(other))
    }

    fn slab(self, top: f32, bottom: f32) -> Shape {
        Shape::Slab {
            inner: Box::new(self),
            top,
            bottom,
        }
    }

    fn distance(&self, p: P2) -> f32 {
        match self {
            Shape::Circle { c, r } => norm(sub(p, *c)) - r,
            Shape::Ellipse { c, radii, turn } => {
                let q = unturn(sub(p, *c), *turn);
                let k0 = norm([q[0] / radii[0], q[1] / radii[1]]);
                let k1 = norm([q[0] / (radii[0] * radii[0]), q[1] / (radii[1] * radii[1])]);
                if k1 < 1e-9 {
                    -radii[0].min(radii[1])
                } else {
                    k0 * (k0 - 1.0) / k1
                }
            }
            Shape::Rect {
                c,
                half,
                turn,
                round,
            } => {
                let q = unturn(sub(p, *c), *turn);
                let d = [q[0].abs() - half[0] + round, q[1].abs() - half[1] + round];
                norm([d[0].max(0.0), d[1].max(0.0)]) + d[0].max(d[1]).min(0.0) - round
            }
            Shape::Path { points, r } => {
                if points.len() == 1 {
                    return norm(sub(p, points[0])) - r;
                }
                let mut best = f32::INFINITY;
                for w in points.windows(2) {
                    // Skip a segment whose box is farther than the nearest so far.
                    let dx = (w[0][0].min(w[1][0]) - p[0]).max(p[0] - w[0][0].max(w[1][0]));
                    let dy = (w[0][1].min(w[1][1]) - p[1]).max(p[1] - w[0][1].max(w[1][1]));
                    let (dx, dy) = (dx.max(0.0), dy.max(0.0));
                    if dx * dx + dy * dy < best * best {
                        best = best.min(segment_distance(p, w[0], w[1]));
                    }
                }
                best - r
            }
            Shape::Column { points, r } => {
                // From the segment at p's height outwards, while a segment can be nearer.
                let last = points.len() - 2;
                let start = points
                    .partition_point(|q| q[1] <= p[1])
                    .saturating_sub(1)
                    .min(last);
                let mut best = f32::INFINITY;
                for j in (0..=start).rev() {
                    if p[1] - points[j + 1][1] >= best {
                        break;
                    }
                    best = best.min(segment_distance(p, points[j], points[j + 1]));
                }
                for j in start + 1..=last {
                    if points[j][1] - p[1] >= best {
                        break;
                    }
                    best = best.min(segment_distance(p, points[j], points[j + 1]));
                }
                best - r
            }
            Shape::Slab { inner, top, bottom } => {
                inner.distance(p).max(top - p[1]).max(p[1] - bottom)
            }
            Shape::Cut { inner, hole } => inner.distance(p).max(-hole.distance(p)),
            Shape::Both(a, b) => a.distance(p).max(b.distance(p)),
            Shape::Grown { inner, by } => inner.distance(p) - by,
            Shape::Moved { inner, by } => inner.distance(sub(p, *by)),
            Shape::Union(shapes) => shapes
                .iter()
                .map(|s| s.distance(p))
                .fold(f32::INFINITY, f32::min),
        }
    }

    /// A scene box (min, max) holding the shape; `None` when it is empty.
    fn bounds(&self) -> Option<(P2, P2)> {
        let square = |c: P2, r: f32| Some(([c[0] - r, c[1] - r], [c[0] + r, c[1] + r]));
        match self {
            Shape::Circle { c, r } => square(*c, *r),
            Shape::Ellipse { c, radii, .. } => square(*c, radii[0].max(radii[1])),
            Shape::Rect { c, half, .. } => square(*c, norm(*half)),
            Shape::Path { points, r } | Shape::Column { points, r } => {
                let mut lo = [f32::INFINITY; 2];
                let mut hi = [f32::NEG_INFINITY; 2];
                for p in points {
                    for k in 0..2 {
                        lo[k] = lo[k].min(p[k] - r);
                        hi[k] = hi[k].max(p[k] + r);
                    }
                }
                Some((lo, hi))
            }
            Shape::Slab { inner, top, bottom } => {
                let (lo, hi) = inner.bounds()?;
                let (y0, y1) = (lo[1].max(*top), hi[1].min(*bottom));
                (y0 <= y1).then_some(([lo[0], y0], [hi[0], y1]))
            }
            Shape::Cut { inner, .. } => inner.bounds(),
            Shape::Both(a, b) => {
                let ((alo, ahi), (blo, bhi)) = (a.bounds()?, b.bounds()?);
                let lo = [alo[0].max(blo[0]), alo[1].max(blo[1])];
                let hi = [ahi[0].min(bhi[0]), ahi[1].min(bhi[1])];
                (lo[0] <= hi[0] && lo[1] <= hi[1]).then_some((lo, hi))
            }
            Shape::Grown { inner, by } => {
                let (lo, hi) = inner.bounds()?;
                let by = by.max(0.0);
                Some(([lo[0] - by, lo[1] - by], [hi[0] + by, hi[1] + by]))
            }
            Shape::Moved { inner, by } => {
                let (lo, hi) = inner.bounds()?;
                Some((add(lo, *by), add(hi, *by)))
            }
            Shape::Union(shapes) => shapes.iter().filter_map(|s| s.bounds()).reduce(|a, b| {
                (
                    [a.0[0].min(b.0[0]), a.0[1].min(b.0[1])],
                    [a.1[0].max(b.1[0]), a.1[1].max(b.1[1])],
                )
            }),
        }
    }
}

/// Frame pixels (x0..x1, y0..y1) that may hold `shape` under `pose`, widened by `margin` frame
/// px; `None` when none do.
fn pixel_box(shape: &Shape, pose: &Pose, margin: f32) -> Option<(u32, u32, u32, u32)> {
    let (lo, hi) = shape.bounds()?;
    let corners = [lo, [hi[0], lo[1]], [lo[0], hi[1]], hi].map(|c| pose.to_frame(c));
    let size = FRAME_SIZE as f32;
    let range = |k: usize| {
        let min = corners.iter().map(|c| c[k]).fold(f32::INFINITY, f32::min);
        let max = corners
            .iter()
            .map(|c| c[k])
            .fold(f32::NEG_INFINITY, f32::max);
        (
            (min - margin - 1.0).floor().clamp(0.0, size) as u32,
            (max + margin + 1.0).ceil().clamp(0.0, size) as u32,
        )
    };
    let ((x0, x1), (y0, y1)) = (range(0), range(1));
    (x0 < x1 && y0 < y1).then_some((x0, x1, y0, y1))
}

/// Sets the pixels whose centre lies in `shape` to 255.
fn rasterise(mask: &mut GrayImage, pose: &Pose, shape: &Shape) {
    if let Some((x0, x1, y0, y1)) = pixel_box(shape, pose, 0.0) {
        for y in y0..y1 {
            for x in x0..x1 {
                if shape.distance(pose.to_scene(centre_of(x, y))) <= 0.0 {
                    mask.put_pixel(x, y, Luma([255]));
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Painting

/// Linear RGB, 0..255 per channel, [`FRAME_SIZE`]^2 pixels.
struct Canvas {
    px: Vec<Colour>,
}

fn shade(c: Colour, k: f32) -> Colour {
    c.map(|v| v * k)
}

fn plus(a: Colour, b: Colour) -> Colour {
    [a[0] + b[0], a[1] + b[1], a[2] + b[2]]
}

fn tint(rng: &mut StdRng, r: f32) -> Colour {
    std::array::from_fn(|_| rng.random_range(-r..r))
}

impl Canvas {
    /// Blends `shape` in at `opacity`, anti-aliased over 1 px; `colour(p, d)` is the colour at
    /// scene point `p`, `d` frame px inside the edge.
    fn paint(
        &mut self,
        pose: &Pose,
        shape: &Shape,
        opacity: f32,
        colour: impl Fn(P2, f32) -> Colour,
    ) {
        let Some((x0, x1, y0, y1)) = pixel_box(shape, pose, 1.0) else {
            return;
        };
        for y in y0..y1 {
            for x in x0..x1 {
                let p = pose.to_scene(centre_of(x, y));
                let d = -shape.distance(p) * pose.scale;
                let alpha = (d + 0.5).clamp(0.0, 1.0) * opacity;
                if alpha > 0.0 {
                    let c = colour(p, d);
                    let px = &mut self.px[(y * FRAME_SIZE + x) as usize];
                    for k in 0..3 {
                        px[k] += alpha * (c[k] - px[k]);
                    }
                }
            }
        }
    }

    fn flat(&mut self, pose: &Pose, shape: &Shape, opacity: f32, colour: Colour) {
        self.paint(pose, shape, opacity, |_, _| colour);
    }

    /// A soft shadow: darkens by up to `opacity`, fading over `blur` frame px either side of
    /// the shape's edge.
    fn shadow(&mut self, pose: &Pose, shape: &Shape, blur: f32, opacity: f32) {
        let Some((x0, x1, y0, y1)) = pixel_box(shape, pose, blur + 1.0) else {
            return;
        };
        for y in y0..y1 {
            for x in x0..x1 {
                let d = -shape.distance(pose.to_scene(centre_of(x, y))) * pose.scale;
                let t = ((d + blur) / (2.0 * blur)).clamp(0.0, 1.0);
                let alpha = opacity * t * t * (3.0 - 2.0 * t);
                if alpha > 0.0 {
                    let px = &mut self.px[(y * FRAME_SIZE + x) as usize];
                    *px = shade(*px, 1.0 - alpha);
                }
            }
        }
    }
}

/// A random value in -1..1 per lattice point `(i, j)` of `seed`.
fn lattice(seed: u64, i: i32, j: i32) -> f32 {
    let h =
        mix(seed
            ^ (((i as u32 as u64) << 32) | j as u32 as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93));
    (h >> 40) as f32 / (1u64 << 23) as f32 - 1.0
}

/// Smooth value noise in -1..1 over a box: [`lattice`] values of `seed`, one cell per unit,
/// interpolated with a quintic fade; the lattice is tabulated once for the box.
struct Noise {
    i0: i32,
    j0: i32,
    width: usize,
    height: usize,
    values: Vec<f32>,
}

impl Noise {
    /// Noise for points in `x.0..=x.1` by `y.0..=y.1` (points outside are clamped to the box).
    fn new(seed: u64, x: (f32, f32), y: (f32, f32)) -> Noise {
        let (i0, i1) = (x.0.floor() as i32 - 1, x.1.ceil() as i32 + 1);
        let (j0, j1) = (y.0.floor() as i32 - 1, y.1.ceil() as i32 + 1);
        let values = (j0..=j1)
            .flat_map(|j| (i0..=i1).map(move |i| lattice(seed, i, j)))
            .collect();
        Noise {
            i0,
            j0,
            width: (i1 - i0 + 1) as usize,
            height: (j1 - j0 + 1) as usize,
            values,
        }
    }

    /// Noise over the frame's pixels mapped by the linear `f` (extremes at the corners).
    fn over_frame(seed: u64, f: impl Fn(f32, f32) -> (f32, f32)) -> Noise {
        let size = FRAME_SIZE as f32;
        let corners = [(0.0, 0.0), (size, 0.0), (0.0, size), (size, size)].map(|(x, y)| f(x, y));
        let range = |k: fn(&(f32, f32)) -> f32| {
            let v = corners.iter().map(k);
            (
                v.clone().fold(f32::INFINITY, f32::min),
                v.fold(f32::NEG_INFINITY, f32::max),
            )
        };
        Noise::new(seed, range(|c| c.0), range(|c| c.1))
    }

    fn at(&self, x: f32, y: f32) -> f32 {
        let fx = (x - self.i0 as f32).clamp(0.0, (self.width - 2) as f32);
        let fy = (y - self.j0 as f32).clamp(0.0, (self.height - 2) as f32);
        let (i, j) = (
            (fx as usize).min(self.width - 2),
            (fy as usize).min(self.height - 2),
        );
        let fade = |t: f32| t * t * t * (t * (t * 6.0 - 15.0) + 10.0);
        let (u, v) = (fade(fx - i as f32), fade(fy - j as f32));
        let at = |i: usize, j: usize| self.values[j * self.width + i];
        let top = at(i, j) + u * (at(i + 1, j) - at(i, j));
        let bottom = at(i, j + 1) + u * (at(i + 1, j + 1) - at(i, j + 1));
        top + v * (bottom - top)
    }
}

/// A background material.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Material {
    /// Planks with ring grain and fibres, light oak to walnut.
    Wood,
    /// Dark stone with blotches and glinting specks.
    Slate,
    /// A woven cloth in one of four colours.
    Felt,
}

/// The background and the lighting of one image.
#[derive(Debug, Clone)]
struct Look {
    material: Material,
    base: Colour,
    seed: u64,
    /// Wood: grain direction (radians), ring period and plank width (px).
    grain: f32,
    period: f32,
    plank: f32,
    gain: f32,
    gradient_angle: f32,
    gradient: f32,
    vignette: f32,
    cast: Colour,
    /// Weight of the 3 x 3 blur.
    blur: f32,
    /// Sigma of the read noise, grey levels.
    read_noise: f32,
}

impl Look {
    fn sample(rng: &mut StdRng) -> Look {
        let material = [Material::Wood, Material::Slate, Material::Felt][rng.random_range(0..3)];
        let base = match material {
            Material::Wood => {
                let t = rng.random_range(0.0..1.0f32);
                let (light, dark) = ([190.0, 146.0, 98.0], [112.0, 74.0, 48.0]);
                std::array::from_fn(|k| dark[k] + t * (light[k] - dark[k]))
            }
            Material::Slate => shade([66.0, 70.0, 77.0], rng.random_range(0.85..1.15)),
            Material::Felt => {
                let colours = [
                    [46.0, 90.0, 66.0],
                    [44.0, 58.0, 98.0],
                    [74.0, 72.0, 76.0],
                    [108.0, 48.0, 56.0],
                ];
                colours[rng.random_range(0..colours.len())]
            }
        };
        let base = plus(base, tint(rng, 8.0));
        let grain =
            rng.random_range(-0.35..0.35f32) + if rng.random_bool(0.5) { PI / 2.0 } else { 0.0 };
        Look {
            material,
            base,
            seed: rng.random(),
            grain,
            period: rng.random_range(9.0..16.0),
            plank: rng.random_range(90.0..140.0),
            gain: rng.random_range(0.88..1.12),
            gradient_angle: rng.random_range(0.0..2.0 * PI),
            gradient: rng.random_range(0.0..0.12),
            vignette: rng.random_range(0.0..0.15),
            cast: std::array::from_fn(|_| rng.random_range(0.96..1.04)),
            blur: rng.random_range(0.0..0.6),
            read_noise: rng.random_range(1.5..2.5),
        }
    }

    fn background(&self) -> Canvas {
        let s = self.seed;
        let (sin, cos) = self.grain.sin_cos();
        let uv = |x: f32, y: f32| (x * cos + y * sin, -x * sin + y * cos);
        let scaled = |sx: f32, sy: f32| move |x: f32, y: f32| (x / sx, y / sy);
        let [a, b, c] = match self.material {
            Material::Wood => [
                Noise::over_frame(s, |x, y| {
                    let (u, v) = uv(x, y);
                    (u / 160.0, v / 45.0)
                }),
                Noise::over_frame(s ^ 1, |x, y| {
                    let (u, v) = uv(x, y);
                    (u / 40.0, v / 1.6)
                }),
                Noise::new(s ^ 2, (0.0, 0.0), (0.0, 0.0)),
            ],
            Material::Slate => [
                Noise::over_frame(s, scaled(70.0, 70.0)),
                Noise::over_frame(s ^ 1, scaled(18.0, 18.0)),
                Noise::over_frame(s ^ 2, scaled(4.0, 4.0)),
            ],
            Material::Felt => [
                Noise::over_frame(s, scaled(3.0, 3.0)),
                Noise::over_frame(s ^ 1, scaled(50.0, 50.0)),
                Noise::new(s ^ 2, (0.0, 0.0), (0.0, 0.0)),
            ],
        };
        let mut px = Vec::with_capacity((FRAME_SIZE * FRAME_SIZE) as usize);
        for y in 0..FRAME_SIZE {
            for x in 0..FRAME_SIZE {
                let (fx, fy) = (x as f32 + 0.5, y as f32 + 0.5);
                let colour = match self.material {
                    Material::Wood => {
                        let (u, v) = (fx * cos + fy * sin, -fx * sin + fy * cos);
                        let warp = 2.2 * a.at(u / 160.0, v / 45.0);
                        let ring = 0.5 + 0.5 * (2.0 * PI * (v / self.period + warp)).sin();
                        let fibre = b.at(u / 40.0, v / 1.6);
                        let row = ((v + 1000.0) / self.plank).floor();
                        let seam = if v + 1000.0 - row * self.plank < 1.6 {
                            0.55
                        } else {
                            1.0
                        };
                        let row = row as i32;
                        let tone = 1.0 + 0.06 * lattice(s ^ 2, row, 0);
                        shade(
                            self.base,
                            (0.84 + 0.14 * ring * ring + 0.05 * fibre) * seam * tone,
                        )
                    }
                    Material::Slate => {
                        let n = 0.6 * a.at(fx / 70.0, fy / 70.0)
                            + 0.3 * b.at(fx / 18.0, fy / 18.0)
                            + 0.15 * c.at(fx / 4.0, fy / 4.0);
                        let glint = lattice(s ^ 3, x as i32, y as i32) > 0.985;
                        let c = shade(self.base, 1.0 + 0.14 * n);
                        if glint {
                            plus(c, [28.0; 3])
                        } else {
                            c
                        }
                    }
                    Material::Felt => {
                        let weave = (fx * PI / 2.2).sin() * (fy * PI / 2.2).sin();
                        let n = 0.5 * a.at(fx / 3.0, fy / 3.0) + 0.5 * b.at(fx / 50.0, fy / 50.0);
                        shade(self.base, 1.0 + 0.05 * weave + 0.08 * n)
                    }
                };
                px.push(colour);
            }
        }
        Canvas { px }
    }

    /// The canvas under this lighting, defocused, rounded to 8 bits.
    fn expose(&self, canvas: &Canvas) -> RgbImage {
        let n = FRAME_SIZE as usize;
        let (sin, cos) = self.gradient_angle.sin_cos();
        let lit: Vec<Colour> = (0..n * n)
            .map(|i| {
                let (x, y) = (
                    (i % n) as f32 + 0.5 - HALF_FRAME,
                    (i / n) as f32 + 0.5 - HALF_FRAME,
                );
                let t = (x * cos + y * sin) / HALF_FRAME;
                let r2 = (x * x + y * y) / (2.0 * HALF_FRAME * HALF_FRAME);
                let light = self.gain * (1.0 + self.gradient * t) * (1.0 - self.vignette * r2);
                std::array::from_fn(|k| canvas.px[i][k] * light * self.cast[k])
            })
            .collect();
        // The 3 x 3 binomial blur, one axis at a time, edges repeated.
        let smooth = |a: Colour, b: Colour, c: Colour| -> Colour {
            std::array::from_fn(|k| 0.25 * (a[k] + 2.0 * b[k] + c[k]))
        };
        let across: Vec<Colour> = (0..n * n)
            .map(|i| {
                let x = i % n;
                let (left, right) = (i - (x > 0) as usize, i + (x + 1 < n) as usize);
                smooth(lit[left], lit[i], lit[right])
            })
            .collect();
        RgbImage::from_fn(FRAME_SIZE, FRAME_SIZE, |x, y| {
            let i = y as usize * n + x as usize;
            let (up, down) = (
                if y > 0 { i - n } else { i },
                if (y as usize) + 1 < n { i + n } else { i },
            );
            let blurred = smooth(across[up], across[i], across[down]);
            let c = lit[i];
            Rgb(std::array::from_fn(|k| {
                to_u8(c[k] + self.blur * (blurred[k] - c[k]))
            }))
        })
    }
}

// ---------------------------------------------------------------------------------------
// Products

/// Distance from a pocket centre within which a tablet is in its pocket, px.
pub const POCKET_TOLERANCE: f32 = 6.0;
/// Distance from the rail's centre line within which a block is in line, px.
pub const LINE_TOLERANCE: f32 = 8.0;
/// Allowed fill, as a fraction of a tube's height.
pub const FILL_RANGE: std::ops::RangeInclusive<f32> = 0.40..=0.70;

const CARD_HALF: P2 = [158.0, 112.0];
const POCKET_HALF: P2 = [23.0, 19.0];
const POCKET_PITCH: f32 = 56.0;
const POCKET_ROWS: [f32; 2] = [-30.0, 44.0];
const BAND_Y: f32 = -92.0;
/// Widths of the light marks printed in the card's band (the product's lettering).
const LETTERING: [f32; 16] = [
    10.0, 6.0, 8.0, 13.0, 5.0, 9.0, 7.0, 11.0, 6.0, 10.0, 8.0, 5.0, 12.0, 7.0, 9.0, 6.0,
];
/// Margin of a tablet's mark: its shadow (offset 3 px, blur 2 px), anti-aliasing (0.5 px) and
/// defocus (1.4 px).
const TABLET_MARK: f32 = 7.0;

const RAIL_Y: f32 = 52.0;
const RAIL_HALF: P2 = [182.0, 17.0];
const BLOCK_HALF: P2 = [17.0, 30.0];
const BLOCK_PITCH: f32 = 38.0;
const END_STOP_X: f32 = 108.0;
const WIRE_R: f32 = 7.5;
/// Wires start above the frame, sampled on a fixed grid of scene y.
const WIRE_TOP: f32 = -282.0;
const WIRE_STEP: f32 = 6.0;
/// Over this length above the ferrule a wire's sway fades out, px.
const WIRE_FADE: f32 = 30.0;

const TUBE_X: [f32; 3] = [-92.0, 0.0, 92.0];
const TUBE_R: f32 = 24.0;
const TUBE_INNER: f32 = 20.5;
const TUBE_TOP: f32 = -114.0;
const TUBE_AXIS: [f32; 2] = [-112.0, 118.0];
/// Content level at fill 0 and the height of fill 1, px.
const FILL_BOTTOM: f32 = 138.0;
const FILL_SPAN: f32 = 248.0;
const CAP_Y: f32 = -124.0;
const CAP_HALF: P2 = [28.0, 13.0];
const CROSSBAR: (P2, P2) = ([0.0, 100.0], [159.0, 8.0]);
const BASE: (P2, P2) = ([0.0, 140.0], [165.0, 12.0]);
const POST_X: f32 = 150.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TabletKind {
    Round,
    Capsule,
    Oval,
}

impl TabletKind {
    const ALL: [TabletKind; 3] = [TabletKind::Round, TabletKind::Capsule, TabletKind::Oval];

    fn colour(self) -> Colour {
        match self {
            TabletKind::Round => [238.0, 236.0, 228.0],
            TabletKind::Capsule => [192.0, 44.0, 50.0],
            TabletKind::Oval => [228.0, 194.0, 64.0],
        }
    }

    fn footprint(self, c: P2, angle: f32) -> Shape {
        match self {
            TabletKind::Round => Shape::Circle { c, r: 11.0 },
            TabletKind::Capsule => {
                let half = turn([8.0, 0.0], angle);
                Shape::capsule(sub(c, half), add(c, half), 7.5)
            }
            TabletKind::Oval => Shape::ellipse(c, [13.0, 8.5], angle),
        }
    }
}

#[derive(Debug, Clone)]
struct Tablet {
    c: P2,
    angle: f32,
    kind: TabletKind,
    tint: Colour,
}

impl Tablet {
    fn footprint(&self) -> Shape {
        self.kind.footprint(self.c, self.angle)
    }
}

/// A block's (and a wire's) colour code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Code {
    Grey,
    Blue,
    Orange,
    GreenYellow,
}

impl Code {
    const ALL: [Code; 4] = [Code::Grey, Code::Blue, Code::Orange, Code::GreenYellow];

    /// The colour at `q` (coordinates in the part, for the green-yellow stripes).
    fn colour(self, q: P2) -> Colour {
        match self {
            Code::Grey => [146.0, 148.0, 150.0],
            Code::Blue => [46.0, 96.0, 178.0],
            Code::Orange => [226.0, 122.0, 38.0],
            Code::GreenYellow => {
                if ((q[0] + q[1] + 1000.0) / 6.0).floor() as i32 % 2 == 0 {
                    [58.0, 148.0, 72.0]
                } else {
                    [222.0, 198.0, 48.0]
                }
            }
        }
    }

    fn other(self, rng: &mut StdRng) -> Code {
        let others: Vec<Code> = Code::ALL.into_iter().filter(|&c| c != self).collect();
        others[rng.random_range(0..others.len())]
    }
}

#[derive(Debug, Clone)]
struct Wire {
    code: Code,
    tint: Colour,
    amplitude: f32,
    period: f32,
    phase: f32,
}

#[derive(Debug, Clone)]
struct Block {
    c: P2,
    code: Code,
    tint: Colour,
    screw: f32,
    wire: Option<Wire>,
}

impl Block {
    fn body(&self) -> Shape {
        Shape::rect(self.c, BLOCK_HALF, 0.0, 2.0)
    }

    fn top(&self) -> f32 {
        self.c[1] - BLOCK_HALF[1]
    }

    fn ferrule(&self) -> Shape {
        Shape::rect([self.c[0], self.top() - 5.0], [4.5, 9.0], 0.0, 1.5)
    }

    /// The wire's centre line: from above the frame, on a fixed grid of y, swaying, straight
    /// for the last [`WIRE_FADE`] px into the ferrule.
    fn wire_line(&self, wire: &Wire) -> Vec<P2> {
        let entry = self.top() - 13.0;
        let sway = |y: f32| {
            let fade = ((entry - y) / WIRE_FADE).clamp(0.0, 1.0);
            wire.amplitude * (2.0 * PI * y / wire.period + wire.phase).sin() * fade
        };
        let mut points: Vec<P2> = (0..)
            .map(|k| WIRE_TOP + k as f32 * WIRE_STEP)
            .take_while(|&y| y < entry)
            .map(|y| [self.c[0] + sway(y), y])
            .collect();
        points.push([self.c[0], entry]);
        points
    }

    fn wire_shape(&self, wire: &Wire) -> Shape {
        Shape::Column {
            points: self.wire_line(wire),
            r: WIRE_R,
        }
    }
}

/// A tube's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grain {
    Coffee,
    Rice,
    Lentil,
}

impl Grain {
    const ALL: [Grain; 3] = [Grain::Coffee, Grain::Rice, Grain::Lentil];

    fn colour(self) -> Colour {
        match self {
            Grain::Coffee => [104.0, 62.0, 34.0],
            Grain::Rice => [232.0, 226.0, 206.0],
            Grain::Lentil => [210.0, 104.0, 46.0],
        }
    }

    /// The colour of the cap that names it.
    fn cap_colour(self) -> Colour {
        match self {
            Grain::Coffee => [182.0, 40.0, 40.0],
            Grain::Rice => [40.0, 82.0, 172.0],
            Grain::Lentil => [48.0, 140.0, 70.0],
        }
    }

    /// Spacing of the grains, px.
    fn step(self) -> f32 {
        match self {
            Grain::Coffee => 6.4,
            Grain::Rice => 3.8,
            Grain::Lentil => 4.6,
        }
    }

    fn grain(self, c: P2, angle: f32) -> Shape {
        match self {
            Grain::Coffee => Shape::ellipse(c, [4.2, 3.0], angle),
            Grain::Rice => Shape::ellipse(c, [3.4, 1.5], angle),
            Grain::Lentil => Shape::Circle { c, r: 2.7 },
        }
    }

    fn other(self, rng: &mut StdRng) -> Grain {
        let others: Vec<Grain> = Grain::ALL.into_iter().filter(|&g| g != self).collect();
        others[rng.random_range(0..others.len())]
    }
}

#[derive(Debug, Clone)]
struct Tube {
    x: f32,
    dy: f32,
    content: Grain,
    /// The content its cap names; `None` when the cap is missing.
    cap: Option<Grain>,
    fill: f32,
    /// Seed of the grains' layout.
    seed: u64,
    tint: Colour,
    cap_angle: f32,
}

impl Tube {
    fn level(&self, fill: f32) -> f32 {
        FILL_BOTTOM + self.dy - fill * FILL_SPAN
    }

    fn outer(&self) -> Shape {
        Shape::capsule(
            [self.x, TUBE_AXIS[0] + self.dy],
            [self.x, TUBE_AXIS[1] + self.dy],
            TUBE_R,
        )
        .slab(TUBE_TOP + self.dy, f32::INFINITY)
    }

    fn inner(&self) -> Shape {
        Shape::capsule(
            [self.x, TUBE_AXIS[0] + self.dy],
            [self.x, TUBE_AXIS[1] + self.dy],
            TUBE_INNER,
        )
        .slab(TUBE_TOP + self.dy, f32::INFINITY)
    }

    fn cap_shape(&self) -> Shape {
        Shape::rect([self.x, CAP_Y + self.dy], CAP_HALF, self.cap_angle, 4.0)
    }

    /// Grain centres, turns and brightness over the whole tube, from the tube's seed (so that
    /// they do not depend on the level).
    fn grains(&self) -> Vec<(P2, f32, f32)> {
        let mut rng = StdRng::seed_from_u64(self.seed);
        let step = self.content.step();
        let mut out = Vec::new();
        let mut row = 0;
        let mut y = FILL_BOTTOM + self.dy;
        while y > TUBE_TOP + self.dy - step {
            let offset = if row % 2 == 0 { 0.0 } else { step / 2.0 };
            let mut x = self.x - TUBE_INNER - offset;
            while x < self.x + TUBE_INNER + step {
                let c = add([x, y], jitter(&mut rng, 0.45 * step));
                out.push((c, rng.random_range(0.0..PI), rng.random_range(0.82..1.12)));
                x += step;
            }
            y -= 0.87 * step;
            row += 1;
        }
        out
    }
}

#[derive(Debug, Clone)]
enum Contents {
    Blister {
        tablets: Vec<Tablet>,
        foil: Colour,
        print: Colour,
    },
    Terminals {
        blocks: Vec<Block>,
        steel: Colour,
    },
    Tubes {
        tubes: Vec<Tube>,
        rack: Colour,
    },
}

/// Structural damage that breaks a part: `hole` is cut out of part `part` (a tablet, block or
/// cap index); `mark` is its ground truth.
#[derive(Debug, Clone)]
struct Chip {
    part: usize,
    hole: Shape,
    mark: Shape,
}

fn pockets() -> [P2; 10] {
    std::array::from_fn(|i| {
        [
            (i % 5) as f32 * POCKET_PITCH - 2.0 * POCKET_PITCH,
            POCKET_ROWS[i / 5],
        ]
    })
}

fn pocket_shape(c: P2) -> Shape {
    Shape::rect(c, POCKET_HALF, 0.0, 13.0)
}

/// A place on the foil outside every pocket: in the gap between the rows or below them.
fn loose_spot(rng: &mut StdRng) -> P2 {
    let y = if rng.random_bool(0.5) {
        rng.random_range(5.0..9.0)
    } else {
        rng.random_range(84.0..90.0)
    };
    [rng.random_range(-125.0..125.0), y]
}

/// A scene: what it shows, where, under which look, and the shapes marking its anomaly.
#[derive(Debug, Clone)]
struct Scene {
    pose: Pose,
    look: Look,
    contents: Contents,
    marked: Vec<Shape>,
    chip: Option<Chip>,
}

impl Scene {
    /// A good scene of `category`; `index` picks the blister's tablet kind in turn.
    fn sample(category: Category, index: usize, rng: &mut StdRng) -> Scene {
        let pose = Pose::sample(rng);
        let look = Look::sample(rng);
        let contents = match category {
            Category::Blister => {
                let kind = TabletKind::ALL[index % 3];
                let tablets = pockets()
                    .iter()
                    .map(|&p| Tablet {
                        c: add(p, jitter(rng, 2.5)),
                        angle: if kind == TabletKind::Round {
                            rng.random_range(0.0..PI)
                        } else {
                            rng.random_range(-0.15..0.15)
                        },
                        kind,
                        tint: tint(rng, 6.0),
                    })
                    .collect();
                Contents::Blister {
                    tablets,
                    foil: plus([150.0, 156.0, 166.0], tint(rng, 6.0)),
                    print: plus([34.0, 110.0, 128.0], tint(rng, 6.0)),
                }
            }
            Category::Terminals => {
                let blocks = (0..5)
                    .map(|i| {
                        let code = Code::ALL[rng.random_range(0..Code::ALL.len())];
                        Block {
                            c: add(
                                [(i as f32 - 2.0) * BLOCK_PITCH, RAIL_Y],
                                [rng.random_range(-1.2..1.2), rng.random_range(-1.5..1.5)],
                            ),
                            code,
                            tint: tint(rng, 6.0),
                            screw: rng.random_range(0.0..PI),
                            wire: Some(Wire {
                                code,
                                tint: tint(rng, 6.0),
                                amplitude: rng.random_range(2.0..6.0),
                                period: rng.random_range(110.0..220.0),
                                phase: rng.random_range(0.0..2.0 * PI),
                            }),
                        }
                    })
                    .collect();
                Contents::Terminals {
                    blocks,
                    steel: plus([172.0, 176.0, 182.0], tint(rng, 6.0)),
                }
            }
            Category::Tubes => {
                let tubes = TUBE_X
                    .iter()
                    .map(|&x| {
                        let content = Grain::ALL[rng.random_range(0..Grain::ALL.len())];
                        Tube {
                            x: x + rng.random_range(-3.0..3.0),
                            dy: rng.random_range(-1.5..1.5),
                            content,
                            cap: Some(content),
                            fill: rng.random_range(0.50..0.60),
                            seed: rng.random(),
                            tint: tint(rng, 6.0),
                            cap_angle: rng.random_range(-2.0..2.0f32).to_radians(),
                        }
                    })
                    .collect();
                Contents::Tubes {
                    tubes,
                    rack: plus([222.0, 224.0, 218.0], tint(rng, 6.0)),
                }
            }
        };
        Scene {
            pose,
            look,
            contents,
            marked: Vec::new(),
            chip: None,
        }
    }

    fn category(&self) -> Category {
        match self.contents {
            Contents::Blister { .. } => Category::Blister,
            Contents::Terminals { .. } => Category::Terminals,
            Contents::Tubes { .. } => Category::Tubes,
        }
    }

    /// Changes one part to show `anomaly` (one of the category's) and marks where.
    fn apply(&mut self, anomaly: Anomaly, rng: &mut StdRng) {
        let marked = &mut self.marked;
        match &mut self.contents {
            Contents::Blister { tablets, .. } => {
                let k = rng.random_range(0..tablets.len());
                let old = tablets[k].footprint();
                match anomaly {
                    Anomaly::Missing => {
                        tablets.remove(k);
                        marked.push(old.grown(TABLET_MARK));
                    }
                    Anomaly::Extra => {
                        let extra = Tablet {
                            c: loose_spot(rng),
                            angle: rng.random_range(0.0..PI),
                            ..tablets[k].clone()
                        };
                        marked.push(extra.footprint().grown(TABLET_MARK));
                        tablets.push(extra);
                    }
                    Anomaly::WrongKind => {
                        let kinds: Vec<TabletKind> = TabletKind::ALL
                            .into_iter()
                            .filter(|&t| t != tablets[k].kind)
                            .collect();
                        tablets[k].kind = kinds[rng.random_range(0..kinds.len())];
                        marked.push(
                            Shape::Union(vec![old, tablets[k].footprint()]).grown(TABLET_MARK),
                        );
                    }
                    Anomaly::Misplaced => {
                        tablets[k].c = loose_spot(rng);
                        tablets[k].angle = rng.random_range(0.0..PI);
                        marked.push(old.grown(TABLET_MARK));
                        marked.push(tablets[k].footprint().grown(TABLET_MARK));
                    }
                    _ => panic!("{anomaly:?} is not a blister anomaly"),
                }
            }
            Contents::Terminals { blocks, .. } => {
                let k = rng.random_range(0..blocks.len());
                let block = &mut blocks[k];
                let wire = block.wire.clone().expect("good scenes have every wire");
                match anomaly {
                    Anomaly::MismatchedPair => {
                        let code = block.code.other(rng);
                        block.wire.as_mut().expect("checked").code = code;
                        marked.push(block.wire_shape(&wire).grown(3.0));
                    }
                    Anomaly::Missing => {
                        marked.push(block.wire_shape(&wire).grown(12.0));
                        marked.push(block.ferrule().grown(4.0));
                        block.wire = None;
                    }
                    Anomaly::Misplaced => {
                        let shift = rng.random_range(24.0..30.0f32);
                        let old_c = block.c;
                        block.c[1] += if rng.random_bool(0.5) { shift } else { -shift };
                        // Both places, and the wire above either over its last WIRE_FADE px
                        // (its sway fades out there), one grid step, its radius and the
                        // defocus, with its shadow: one column.
                        let top = old_c[1].min(block.c[1])
                            - BLOCK_HALF[1]
                            - 13.0
                            - WIRE_FADE
                            - WIRE_STEP
                            - WIRE_R
                            - 6.0;
                        let bottom = old_c[1].max(block.c[1]) + BLOCK_HALF[1] + 12.0;
                        marked.push(Shape::rect(
                            [block.c[0] + 2.0, (top + bottom) / 2.0],
                            [BLOCK_HALF[0] + 11.0, (bottom - top) / 2.0],
                            0.0,
                            0.0,
                        ));
                    }
                    _ => panic!("{anomaly:?} is not a terminals anomaly"),
                }
            }
            Contents::Tubes { tubes, .. } => {
                let k = rng.random_range(0..tubes.len());
                let tube = &mut tubes[k];
                match anomaly {
                    Anomaly::WrongFill => {
                        let old = tube.level(tube.fill);
                        tube.fill = if rng.random_bool(0.5) {
                            rng.random_range(0.24..0.32)
                        } else {
                            rng.random_range(0.80..0.88)
                        };
                        let new = tube.level(tube.fill);
                        let (top, bottom) = (old.min(new) - 9.0, old.max(new) + 9.0);
                        marked.push(tube.inner().grown(3.0).slab(top, bottom));
                    }
                    Anomaly::WrongKind => {
                        tube.content = tube.content.other(rng);
                        let top = tube.level(tube.fill) - 9.0;
                        let (crossbar, base) = (
                            Shape::rect(CROSSBAR.0, CROSSBAR.1, 0.0, 2.0).grown(-2.0),
                            Shape::rect(BASE.0, BASE.1, 0.0, 3.0).grown(-2.0),
                        );
                        marked.push(
                            tube.inner()
                                .grown(3.0)
                                .slab(top, f32::INFINITY)
                                .cut(Shape::Union(vec![crossbar, base])),
                        );
                    }
                    Anomaly::Missing => {
                        tube.cap = None;
                        marked.push(tube.cap_shape().grown(10.0));
                    }
                    _ => panic!("{anomaly:?} is not a tubes anomaly"),
                }
            }
        }
    }

    /// A bite out of one part's edge: 5-10 px radius, centred 1.5 px inside its edge.
    fn pick_chip(&self, rng: &mut StdRng) -> Chip {
        let (part, shape, centre, radius) = match &self.contents {
            Contents::Blister { tablets, .. } => {
                let k = rng.random_range(0..tablets.len());
                (
                    k,
                    tablets[k].footprint(),
                    tablets[k].c,
                    rng.random_range(5.0..7.0),
                )
            }
            Contents::Terminals { blocks, .. } => {
                let k = rng.random_range(0..blocks.len());
                (
                    k,
                    blocks[k].body(),
                    blocks[k].c,
                    rng.random_range(7.0..10.0),
                )
            }
            Contents::Tubes { tubes, .. } => {
                let k = rng.random_range(0..tubes.len());
                let cap = tubes[k].cap_shape();
                (
                    k,
                    cap,
                    [tubes[k].x, CAP_Y + tubes[k].dy],
                    rng.random_range(7.0..10.0),
                )
            }
        };
        let direction = turn([1.0, 0.0], rng.random_range(0.0..2.0 * PI));
        // The edge along `direction`, by bisection on the distance.
        let (mut inside, mut outside) = (0.0f32, 80.0f32);
        for _ in 0..30 {
            let mid = (inside + outside) / 2.0;
            if shape.distance(add(centre, mul(direction, mid))) <= 0.0 {
                inside = mid;
            } else {
                outside = mid;
            }
        }
        let hole = Shape::Circle {
            c: add(centre, mul(direction, inside - 1.5)),
            r: radius,
        };
        // The part's new edge is bevelled (up to 1.6 px), anti-aliased (0.5 px) and defocused
        // (1.4 px) around the bite; on the part's side an ellipse's distance is approximate.
        let mark = hole.clone().grown(4.0).and(shape.grown(5.0));
        Chip { part, hole, mark }
    }

    /// The rules of its category the scene breaks, in the category's order.
    fn broken_rules(&self) -> Vec<Rule> {
        let holds = |rule: Rule| match (&self.contents, rule) {
            (Contents::Blister { tablets, .. }, Rule::TabletCount) => tablets.len() == 10,
            (Contents::Blister { tablets, .. }, Rule::TabletsInPockets) => {
                let mut used = [false; 10];
                tablets.iter().all(|t| {
                    match pockets()
                        .iter()
                        .position(|&p| norm(sub(t.c, p)) <= POCKET_TOLERANCE)
                    {
                        Some(i) if !used[i] => {
                            used[i] = true;
                            true
                        }
                        _ => false,
                    }
                })
            }
            (Contents::Blister { tablets, .. }, Rule::OneTabletKind) => {
                tablets.windows(2).all(|w| w[0].kind == w[1].kind)
            }
            (Contents::Terminals { blocks, .. }, Rule::WireMatchesBlock) => blocks
                .iter()
                .all(|b| b.wire.as_ref().is_none_or(|w| w.code == b.code)),
            (Contents::Terminals { blocks, .. }, Rule::EveryBlockWired) => {
                blocks.iter().all(|b| b.wire.is_some())
            }
            (Contents::Terminals { blocks, .. }, Rule::BlocksInLine) => blocks
                .iter()
                .all(|b| (b.c[1] - RAIL_Y).abs() <= LINE_TOLERANCE),
            (Contents::Tubes { tubes, .. }, Rule::ContentMatchesCap) => tubes
                .iter()
                .all(|t| t.cap.is_none_or(|cap| cap == t.content)),
            (Contents::Tubes { tubes, .. }, Rule::FillLevel) => {
                tubes.iter().all(|t| FILL_RANGE.contains(&t.fill))
            }
            (Contents::Tubes { tubes, .. }, Rule::EveryTubeCapped) => {
                tubes.iter().all(|t| t.cap.is_some())
            }
            _ => true,
        };
        self.category()
            .rules()
            .iter()
            .copied()
            .filter(|&r| !holds(r))
            .collect()
    }

    /// The anomaly's ground truth: 255 inside the marked shapes (and the chip's mark).
    fn anomaly_mask(&self) -> GrayImage {
        let mut mask = GrayImage::new(FRAME_SIZE, FRAME_SIZE);
        for shape in self.marked.iter().chain(self.chip.iter().map(|c| &c.mark)) {
            rasterise(&mut mask, &self.pose, shape);
        }
        mask
    }

    /// Where structural damage goes, frame px: a part (85%) or anywhere on the object.
    fn damage_target(&self, rng: &mut StdRng) -> P2 {
        let parts: Vec<P2> = match &self.contents {
            Contents::Blister { tablets, .. } => tablets.iter().map(|t| t.c).collect(),
            Contents::Terminals { blocks, .. } => blocks
                .iter()
                .flat_map(|b| [b.c, [b.c[0], b.top() - 45.0]])
                .collect(),
            Contents::Tubes { tubes, .. } => tubes
                .iter()
                .flat_map(|t| {
                    [
                        [t.x, CAP_Y + t.dy],
                        [t.x, (t.level(t.fill) + CROSSBAR.0[1]) / 2.0],
                        [t.x, -60.0 + t.dy],
                    ]
                })
                .collect(),
        };
        let scene = if rng.random_bool(0.85) {
            parts[rng.random_range(0..parts.len())]
        } else {
            let half = match self.contents {
                Contents::Blister { .. } => CARD_HALF,
                Contents::Terminals { .. } => [RAIL_HALF[0], 40.0],
                Contents::Tubes { .. } => [POST_X, 120.0],
            };
            let centre = match self.contents {
                Contents::Terminals { .. } => [0.0, RAIL_Y],
                _ => [0.0, 0.0],
            };
            add(
                centre,
                [
                    rng.random_range(-half[0]..half[0]),
                    rng.random_range(-half[1]..half[1]),
                ],
            )
        };
        self.pose.to_frame(scene)
    }

    /// `shape` of part `part`, less the chip's hole when the chip is on that part.
    fn cut(&self, part: usize, shape: Shape) -> Shape {
        match &self.chip {
            Some(chip) if chip.part == part => shape.cut(chip.hole.clone()),
            _ => shape,
        }
    }

    /// The scene under its look, before sensor noise.
    fn photograph(&self) -> RgbImage {
        let mut canvas = self.look.background();
        match &self.contents {
            Contents::Blister {
                tablets,
                foil,
                print,
            } => self.draw_blister(&mut canvas, tablets, *foil, *print),
            Contents::Terminals { blocks, steel } => {
                self.draw_terminals(&mut canvas, blocks, *steel)
            }
            Contents::Tubes { tubes, rack } => self.draw_tubes(&mut canvas, tubes, *rack),
        }
        self.look.expose(&canvas)
    }

    fn draw_blister(&self, canvas: &mut Canvas, tablets: &[Tablet], foil: Colour, print: Colour) {
        let pose = &self.pose;
        let seed = self.look.seed ^ 0xF011;
        let (w, h) = (CARD_HALF[0] + 2.0, CARD_HALF[1] + 2.0);
        let streaks = Noise::new(seed, (-w / 45.0, w / 45.0), (-h / 1.3, h / 1.3));
        let blotches = Noise::new(seed ^ 1, (-w / 120.0, w / 120.0), (-h / 60.0, h / 60.0));
        let card = Shape::rect([0.0; 2], CARD_HALF, 0.0, 12.0);
        canvas.shadow(pose, &card.clone().moved([6.0, 8.0]), 6.0, 0.45);
        canvas.paint(pose, &card, 1.0, |p, d| {
            let brushed = 0.05 * streaks.at(p[0] / 45.0, p[1] / 1.3)
                + 0.04 * blotches.at(p[0] / 120.0, p[1] / 60.0);
            shade(foil, (1.0 + brushed) * if d < 2.0 { 0.78 } else { 1.0 })
        });
        canvas.flat(
            pose,
            &Shape::rect([0.0, BAND_Y], [146.0, 9.0], 0.0, 2.0),
            1.0,
            print,
        );
        let mut x = -136.0;
        for w in LETTERING {
            canvas.flat(
                pose,
                &Shape::rect([x + w / 2.0, BAND_Y], [w / 2.0, 3.5], 0.0, 0.5),
                0.9,
                [236.0, 236.0, 226.0],
            );
            x += w + 5.0;
        }
        for &c in &pockets() {
            let pocket = pocket_shape(c);
            canvas.paint(pose, &pocket, 1.0, |_, d| {
                shade(foil, 0.7 + 0.1 * (d / 6.0).min(1.0))
            });
            let rim = pocket.clone().grown(1.8).cut(pocket);
            canvas.flat(pose, &rim, 0.8, [226.0, 232.0, 238.0]);
        }
        for (i, t) in tablets.iter().enumerate() {
            canvas.shadow(pose, &t.footprint().moved([1.5, 2.5]), 2.0, 0.4);
            let colour = plus(t.kind.colour(), t.tint);
            let body = self.cut(i, t.footprint());
            let light = add(t.c, [-4.0, -4.0]);
            match t.kind {
                TabletKind::Round | TabletKind::Oval => {
                    canvas.paint(pose, &body, 1.0, |p, d| {
                        let r = (norm(sub(p, light)) / 20.0).min(1.0);
                        shade(colour, (1.08 - 0.22 * r) * if d < 1.6 { 0.86 } else { 1.0 })
                    });
                    let mark = if t.kind == TabletKind::Round {
                        Shape::rect(t.c, [8.0, 0.8], t.angle, 0.4)
                    } else {
                        Shape::Circle { c: t.c, r: 2.6 }
                    };
                    canvas.flat(pose, &self.cut(i, mark), 1.0, shade(colour, 0.74));
                }
                TabletKind::Capsule => {
                    let axis = turn([1.0, 0.0], t.angle);
                    let cream = plus([234.0, 224.0, 196.0], t.tint);
                    canvas.paint(pose, &body, 1.0, |p, _| {
                        let q = sub(p, t.c);
                        let (u, v) = (dot(q, axis), dot(q, [-axis[1], axis[0]]) / 7.5);
                        let half = if u < 0.0 { colour } else { cream };
                        let seam = if u.abs() < 0.7 { 0.8 } else { 1.0 };
                        shade(half, (1.12 - 0.4 * v * v) * seam)
                    });
                }
            }
        }
        for c in pockets() {
            let glint = Shape::ellipse(add(c, [-9.0, -8.0]), [7.0, 2.6], -0.5);
            canvas.flat(pose, &glint, 0.45, [255.0; 3]);
        }
    }

    fn draw_terminals(&self, canvas: &mut Canvas, blocks: &[Block], steel: Colour) {
        let pose = &self.pose;
        let rail = Shape::rect([0.0, RAIL_Y], RAIL_HALF, 0.0, 2.0);
        canvas.shadow(pose, &rail.clone().moved([4.0, 6.0]), 5.0, 0.4);
        canvas.paint(pose, &rail, 1.0, |p, d| {
            let across = (p[1] - RAIL_Y).abs();
            let k = if (9.0..11.0).contains(&across) {
                0.7
            } else if across > 14.0 {
                1.1
            } else {
                1.0
            };
            shade(steel, k * if d < 1.2 { 0.75 } else { 1.0 })
        });
        for i in 0..16 {
            let slot = Shape::rect([-172.0 + 23.0 * i as f32, RAIL_Y], [7.0, 3.0], 0.0, 2.5);
            canvas.flat(pose, &slot, 1.0, shade(steel, 0.35));
        }
        for side in [-1.0, 1.0] {
            let stop = Shape::rect([side * END_STOP_X, RAIL_Y], [7.0, 25.0], 0.0, 2.0);
            canvas.shadow(pose, &stop.clone().moved([3.0, 4.0]), 3.0, 0.4);
            canvas.paint(pose, &stop, 1.0, |_, d| {
                shade([70.0, 72.0, 76.0], if d < 1.5 { 1.3 } else { 1.0 })
            });
        }
        for b in blocks {
            canvas.shadow(pose, &b.body().moved([3.0, 4.0]), 3.0, 0.4);
        }
        for (i, b) in blocks.iter().enumerate() {
            let c = b.c;
            canvas.paint(pose, &self.cut(i, b.body()), 1.0, |p, d| {
                let q = sub(p, c);
                let lit = 1.06 - 0.12 * q[0] / BLOCK_HALF[0] + if q[1] < -27.0 { 0.1 } else { 0.0 };
                shade(
                    plus(b.code.colour(q), b.tint),
                    lit * if d < 1.4 { 0.7 } else { 1.0 },
                )
            });
            let top = b.top();
            let hole = Shape::rect([c[0], top + 6.0], [6.0, 3.0], 0.0, 1.0);
            canvas.flat(pose, &self.cut(i, hole), 1.0, [28.0, 28.0, 30.0]);
            let screw = Shape::Circle {
                c: [c[0], top + 20.0],
                r: 7.0,
            };
            let screw_c = [c[0], top + 20.0];
            canvas.paint(pose, &self.cut(i, screw), 1.0, |p, d| {
                let r = norm(sub(p, add(screw_c, [-2.5, -2.5]))) / 10.0;
                shade(
                    steel,
                    (1.1 - 0.3 * r.min(1.0)) * if d < 1.0 { 0.6 } else { 1.0 },
                )
            });
            let slot = Shape::rect(screw_c, [5.5, 1.1], b.screw, 0.5);
            canvas.flat(pose, &self.cut(i, slot), 1.0, shade(steel, 0.3));
            let tag = Shape::rect([c[0], top + 46.0], [12.0, 6.0], 0.0, 1.0);
            canvas.flat(pose, &self.cut(i, tag), 1.0, [232.0, 232.0, 226.0]);
            let number = Shape::rect([c[0], top + 46.0], [3.0, 3.0], 0.0, 0.5);
            canvas.flat(pose, &self.cut(i, number), 1.0, [40.0, 40.0, 44.0]);
        }
        for b in blocks {
            if let Some(w) = &b.wire {
                let line = b.wire_shape(w);
                canvas.shadow(pose, &line.moved([5.0, 4.0]), 3.0, 0.3);
            }
        }
        for b in blocks {
            if let Some(w) = &b.wire {
                let line = b.wire_shape(w);
                // Stripes fixed to the wire's column, not to its block's height: a block moved
                // up or down changes only the wire's end.
                let start = [b.c[0], RAIL_Y];
                canvas.paint(pose, &line, 1.0, |p, d| {
                    let s = (d / WIRE_R).min(1.0);
                    let round = 0.72 + 0.42 * (1.0 - (1.0 - s) * (1.0 - s));
                    shade(plus(w.code.colour(sub(p, start)), w.tint), round)
                });
                let ferrule = b.ferrule();
                let fc = [b.c[0], b.top() - 5.0];
                canvas.paint(pose, &ferrule, 1.0, |p, _| {
                    let q = sub(p, fc);
                    let ring = if (q[1] + 20.0).rem_euclid(4.0) < 1.0 {
                        0.8
                    } else {
                        1.0
                    };
                    shade(steel, (1.15 - 0.25 * (q[0] / 4.5).abs()) * ring)
                });
            }
        }
    }

    fn draw_tubes(&self, canvas: &mut Canvas, tubes: &[Tube], rack: Colour) {
        let pose = &self.pose;
        let plastic = |canvas: &mut Canvas, shape: &Shape| {
            canvas.shadow(pose, &shape.clone().moved([5.0, 6.0]), 5.0, 0.35);
            canvas.paint(pose, shape, 1.0, |_, d| {
                shade(rack, if d < 2.0 { 0.82 } else { 1.0 })
            });
        };
        for side in [-1.0, 1.0] {
            plastic(
                canvas,
                &Shape::rect([side * POST_X, 48.0], [9.0, 104.0], 0.0, 3.0),
            );
        }
        for t in tubes {
            canvas.shadow(pose, &t.outer().moved([7.0, 4.0]), 5.0, 0.28);
        }
        for (i, t) in tubes.iter().enumerate() {
            let glass = [226.0, 236.0, 242.0];
            canvas.flat(pose, &t.outer(), 0.22, glass);
            let level = t.level(t.fill);
            let inner = t.inner();
            let colour = plus(t.content.colour(), t.tint);
            canvas.flat(
                pose,
                &inner.clone().slab(level, f32::INFINITY),
                1.0,
                shade(colour, 0.55),
            );
            for (c, angle, bright) in t.grains() {
                if c[1] < level + 1.5 {
                    continue;
                }
                let grain = t.content.grain(c, angle).and(inner.clone());
                canvas.paint(pose, &grain, 1.0, |_, d| {
                    shade(colour, bright * (0.8 + 0.35 * (d / 2.5).clamp(0.0, 1.0)))
                });
                if t.content == Grain::Coffee {
                    let crease = Shape::rect(c, [3.2, 0.5], angle, 0.2).and(inner.clone());
                    canvas.flat(pose, &crease, 1.0, shade(colour, 0.5));
                }
            }
            let wall = t.outer().cut(inner.clone());
            canvas.flat(pose, &wall, 0.45, [200.0, 212.0, 220.0]);
            let streak = Shape::rect([t.x - 12.0, t.dy], [2.2, 100.0], 0.0, 2.0);
            canvas.flat(pose, &streak, 0.35, [255.0; 3]);
            let rim = Shape::ellipse([t.x, TUBE_TOP + t.dy], [TUBE_R, 5.0], 0.0).cut(
                Shape::ellipse([t.x, TUBE_TOP + t.dy], [TUBE_INNER, 3.2], 0.0),
            );
            canvas.flat(pose, &rim, 0.8, [214.0, 224.0, 230.0]);
            if let Some(cap) = t.cap {
                canvas.shadow(pose, &t.cap_shape().moved([3.0, 3.0]), 3.0, 0.3);
                let cap_colour = plus(cap.cap_colour(), t.tint);
                let (cc, sc) = ([t.x, CAP_Y + t.dy], sin_cos(t.cap_angle));
                canvas.paint(pose, &self.cut(i, t.cap_shape()), 1.0, |p, d| {
                    let q = unturn(sub(p, cc), sc);
                    let ridge = if (q[0] + 28.0).rem_euclid(4.5) < 1.5 {
                        0.8
                    } else {
                        1.0
                    };
                    let top = if q[1] < -9.0 { 1.12 } else { 1.0 };
                    shade(cap_colour, ridge * top * if d < 1.3 { 0.7 } else { 1.0 })
                });
            }
        }
        plastic(canvas, &Shape::rect(CROSSBAR.0, CROSSBAR.1, 0.0, 2.0));
        plastic(canvas, &Shape::rect(BASE.0, BASE.1, 0.0, 3.0));
    }

    /// The object's outline, every part included but the wires (which come from beyond the
    /// frame): what must stay inside the frame.
    #[cfg(test)]
    fn outline(&self) -> Vec<Shape> {
        match &self.contents {
            Contents::Blister { tablets, .. } => {
                let mut v = vec![Shape::rect([0.0; 2], CARD_HALF, 0.0, 12.0)
                    .moved([6.0, 8.0])
                    .grown(6.0)];
                v.extend(tablets.iter().map(|t| t.footprint()));
                v
            }
            Contents::Terminals { blocks, .. } => {
                let mut v = vec![Shape::rect([0.0, RAIL_Y], RAIL_HALF, 0.0, 2.0)
                    .moved([4.0, 6.0])
                    .grown(5.0)];
                v.extend(blocks.iter().map(|b| b.body().grown(3.0)));
                v
            }
            Contents::Tubes { tubes, .. } => {
                let mut v = vec![
                    Shape::rect(BASE.0, BASE.1, 0.0, 3.0)
                        .moved([5.0, 6.0])
                        .grown(5.0),
                    Shape::rect([POST_X, 48.0], [9.0, 104.0], 0.0, 3.0)
                        .moved([5.0, 6.0])
                        .grown(5.0),
                    Shape::rect([-POST_X, 48.0], [9.0, 104.0], 0.0, 3.0),
                ];
                v.extend(tubes.iter().map(|t| t.cap_shape().grown(3.0)));
                v
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::dataset::{self, Layout, LoadOptions, Split};
    use std::collections::{BTreeMap, BTreeSet};

    fn small() -> FamilyBOptions {
        FamilyBOptions {
            seed: 3,
            train: 2,
            validation: 1,
            good: 2,
            logical: 4,
            structural: 5,
            categories: Category::ALL.to_vec(),
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

    /// Pixels that differ between two renders.
    fn differing(a: &RgbImage, b: &RgbImage) -> Vec<(u32, u32)> {
        a.enumerate_pixels()
            .filter(|&(x, y, p)| p != b.get_pixel(x, y))
            .map(|(x, y, _)| (x, y))
            .collect()
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_images() {
        let dir = tempfile::tempdir().unwrap();
        let options = small();
        write_family_b(&dir.path().join("a"), &options).unwrap();
        write_family_b(&dir.path().join("b"), &options).unwrap();
        write_family_b(
            &dir.path().join("c"),
            &FamilyBOptions { seed: 4, ..small() },
        )
        .unwrap();
        let (a, b, c) = (
            every_file(&dir.path().join("a")),
            every_file(&dir.path().join("b")),
            every_file(&dir.path().join("c")),
        );
        // Per category 14 images, 9 masks, logic.json and defects_config.json.
        assert_eq!(a.len(), 3 * 25);
        assert_eq!(a, b);
        let names = |v: &[(String, Vec<u8>)]| v.iter().map(|f| f.0.clone()).collect::<Vec<_>>();
        assert_eq!(names(&a), names(&c));
        let images_differing = a
            .iter()
            .zip(&c)
            .filter(|(x, y)| x.0.ends_with(".png") && !x.0.contains("ground_truth") && x.1 != y.1)
            .count();
        assert_eq!(
            images_differing,
            3 * 14,
            "every image changes with the seed"
        );
    }

    #[test]
    fn the_loader_reads_the_layout_and_the_key_names_every_subtype() {
        let dir = tempfile::tempdir().unwrap();
        let summary = write_family_b(dir.path(), &small()).unwrap();
        assert_eq!(
            summary,
            FamilyBSummary {
                categories: 3,
                images: 42,
                masks: 27
            }
        );
        assert_eq!(
            dataset::detect_layout(dir.path()).unwrap(),
            Layout::MvtecLoco
        );
        let ds =
            dataset::load(dir.path(), Some(Layout::MvtecLoco), &LoadOptions::default()).unwrap();
        let names: Vec<&str> = ds.categories.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["blister", "terminals", "tubes"]);
        for c in &ds.categories {
            assert_eq!(
                (c.train.len(), c.validation.len(), c.test.len()),
                (2, 1, 11),
                "{}",
                c.name
            );
            let count = |split: Option<Split>| c.test.iter().filter(|s| s.split == split).count();
            assert_eq!(
                (
                    count(None),
                    count(Some(Split::Logical)),
                    count(Some(Split::Structural))
                ),
                (2, 4, 5)
            );
            for s in &c.test {
                assert_eq!(s.anomalous, s.split.is_some());
                assert_eq!(s.masks.len(), s.anomalous as usize, "{}", s.path.display());
                let img = image::open(&s.path).unwrap();
                assert_eq!((img.width(), img.height()), (FRAME_SIZE, FRAME_SIZE));
                for m in &s.masks {
                    let mask = image::open(m).unwrap().to_luma8();
                    assert_eq!(mask.dimensions(), (FRAME_SIZE, FRAME_SIZE));
                    assert!(mask.pixels().all(|p| p.0[0] == 0 || p.0[0] == 255));
                    let on = mask.pixels().filter(|p| p.0[0] == 255).count();
                    assert!((40..60_000).contains(&on), "{}: {on} px", m.display());
                }
            }
        }
        let mut all_subtypes = BTreeSet::new();
        for category in Category::ALL {
            let dir = dir.path().join(category.name());
            let logic: serde_json::Value =
                serde_json::from_str(&fs::read_to_string(dir.join("logic.json")).unwrap()).unwrap();
            assert_eq!(logic["category"], category.name());
            let rules: Vec<&str> = category.rules().iter().map(|r| r.name()).collect();
            assert_eq!(logic["rules"], serde_json::json!(rules));
            let test = logic["test"].as_array().unwrap();
            assert_eq!(test.len(), 11);
            let mut seen = BTreeMap::new();
            for entry in test {
                let image = entry["image"].as_str().unwrap();
                assert!(dir.join(image).is_file(), "{image}");
                let broken = entry["broken_rules"].as_array().unwrap();
                match entry["anomaly"].as_str() {
                    Some(name) => {
                        assert!(image.starts_with("test/logical_anomalies/"), "{image}");
                        let anomaly = *category
                            .logical_anomalies()
                            .iter()
                            .find(|a| a.name() == name)
                            .unwrap_or_else(|| panic!("{name} is not a {category:?} subtype"));
                        let expected: Vec<&str> =
                            anomaly.breaks(category).iter().map(|r| r.name()).collect();
                        assert!(!expected.is_empty());
                        assert_eq!(
                            entry["broken_rules"],
                            serde_json::json!(expected),
                            "{image}"
                        );
                        *seen.entry(name.to_string()).or_insert(0) += 1;
                    }
                    None => {
                        assert!(!image.starts_with("test/logical_anomalies/"), "{image}");
                        assert!(broken.is_empty(), "{image}");
                    }
                }
            }
            // 4 logical images cycle through at most 4 subtypes: each appears.
            let wanted: BTreeSet<String> = category
                .logical_anomalies()
                .iter()
                .map(|a| a.name().to_string())
                .collect();
            assert_eq!(
                seen.keys().cloned().collect::<BTreeSet<_>>(),
                wanted,
                "{category:?}"
            );
            all_subtypes.extend(wanted);
            let config: serde_json::Value =
                serde_json::from_str(&fs::read_to_string(dir.join("defects_config.json")).unwrap())
                    .unwrap();
            let config = config.as_array().unwrap();
            let names: Vec<&str> = config
                .iter()
                .map(|d| d["defect_name"].as_str().unwrap())
                .collect();
            let expected: Vec<&str> = category
                .logical_anomalies()
                .iter()
                .map(|a| a.name())
                .chain(Damage::ALL.iter().map(|d| d.name()))
                .collect();
            assert_eq!(names, expected);
            for d in config {
                assert_eq!(d["pixel_value"], 255);
                assert_eq!(d["relative_saturation"], true);
                assert_eq!(d["saturation_threshold"], 1.0);
            }
        }
        let required = [
            "missing",
            "extra",
            "wrong_kind",
            "misplaced",
            "mismatched_pair",
            "wrong_fill",
        ];
        assert_eq!(
            all_subtypes,
            required
                .iter()
                .map(|s| s.to_string())
                .collect::<BTreeSet<_>>()
        );
        assert!(write_family_b(
            dir.path(),
            &FamilyBOptions {
                train: 0,
                ..small()
            }
        )
        .is_err());
        assert!(write_family_b(
            dir.path(),
            &FamilyBOptions {
                categories: vec![],
                ..small()
            }
        )
        .is_err());
    }

    #[test]
    fn default_counts_spread_the_logical_images_over_every_subtype() {
        let options = FamilyBOptions::default();
        assert_eq!(
            (
                options.train,
                options.validation,
                options.good,
                options.logical,
                options.structural
            ),
            (10, 20, 30, 30, 20)
        );
        for category in Category::ALL {
            let subtypes = category.logical_anomalies();
            let mut counts = vec![0; subtypes.len()];
            for index in 0..options.logical {
                let mut rng = image_rng(0, category, Folder::Logical, index);
                let sample = render_sample(category, Folder::Logical, index, &mut rng);
                let i = subtypes
                    .iter()
                    .position(|&a| Some(a) == sample.anomaly)
                    .unwrap();
                counts[i] += 1;
                assert_eq!(sample.broken_rules, subtypes[i].breaks(category));
            }
            // As even as the cycle allows: 8/8/7/7 or 10/10/10.
            let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
            assert!(max - min <= 1 && *min >= 7, "{category:?}: {counts:?}");
        }
    }

    #[test]
    fn good_scenes_keep_every_rule_and_anomalies_break_exactly_theirs() {
        for category in Category::ALL {
            for seed in 0..150u64 {
                let mut rng = StdRng::seed_from_u64(seed);
                let good = Scene::sample(category, seed as usize, &mut rng);
                assert_eq!(good.broken_rules(), [], "{category:?} seed {seed}");
                for &anomaly in category.logical_anomalies() {
                    let mut scene = good.clone();
                    scene.apply(anomaly, &mut rng);
                    assert_eq!(
                        scene.broken_rules(),
                        anomaly.breaks(category),
                        "{category:?} {anomaly:?} seed {seed}"
                    );
                    assert!(!scene.marked.is_empty());
                }
            }
        }
    }

    /// Renders `good` and `changed` under one look and checks that they differ, and only in
    /// `changed`'s mask, and in at least `share` of it.
    fn assert_change_is_masked(good: &Scene, changed: &Scene, share: f64, what: &str) {
        let mask = changed.anomaly_mask();
        let (a, b) = (good.photograph(), changed.photograph());
        let diff = differing(&a, &b);
        let outside: Vec<_> = diff
            .iter()
            .filter(|&&(x, y)| mask.get_pixel(x, y).0[0] == 0)
            .collect();
        assert!(
            outside.is_empty(),
            "{what}: {} changed px off the mask, e.g. {:?}",
            outside.len(),
            &outside[..outside.len().min(5)]
        );
        let on = mask.pixels().filter(|p| p.0[0] == 255).count();
        assert!(
            diff.len() as f64 >= share * on as f64,
            "{what}: {} of {on} mask px changed",
            diff.len()
        );
    }

    #[test]
    fn logical_masks_cover_every_changed_pixel() {
        for category in Category::ALL {
            for seed in 0..6u64 {
                for &anomaly in category.logical_anomalies() {
                    let mut rng = StdRng::seed_from_u64(seed * 31 + anomaly as u64);
                    let good = Scene::sample(category, seed as usize, &mut rng);
                    let mut changed = good.clone();
                    changed.apply(anomaly, &mut rng);
                    assert_change_is_masked(
                        &good,
                        &changed,
                        0.2,
                        &format!("{category:?} {anomaly:?} seed {seed}"),
                    );
                }
            }
        }
    }

    #[test]
    fn chip_masks_cover_every_changed_pixel() {
        for category in Category::ALL {
            for seed in 0..10u64 {
                let mut rng = StdRng::seed_from_u64(seed);
                let good = Scene::sample(category, seed as usize, &mut rng);
                let mut chipped = good.clone();
                chipped.chip = Some(good.pick_chip(&mut rng));
                // A bite of radius >= 5 px, about half inside the part.
                let mask = chipped.anomaly_mask();
                let on = mask.pixels().filter(|p| p.0[0] == 255).count();
                assert!(on >= 40, "{category:?} seed {seed}: {on} px");
                assert_change_is_masked(
                    &good,
                    &chipped,
                    0.2,
                    &format!("{category:?} chip seed {seed}"),
                );
            }
        }
    }

    #[test]
    fn painted_damage_masks_are_exact() {
        let mut rng = StdRng::seed_from_u64(11);
        let scene = Scene::sample(Category::Terminals, 0, &mut rng);
        let clean = scene.photograph();
        for kind in [DefectKind::Speck, DefectKind::Scratch, DefectKind::Stain] {
            for _ in 0..5 {
                let mut damaged = clean.clone();
                let target = scene.damage_target(&mut rng);
                let mask = paint_enlarged(&mut damaged, target, kind, &mut rng);
                let mut masked = 0;
                for (x, y, m) in mask.enumerate_pixels() {
                    let (a, b) = (clean.get_pixel(x, y), damaged.get_pixel(x, y));
                    if m.0[0] == 0 {
                        let moved = (0..3)
                            .map(|k| (a.0[k] as i16 - b.0[k] as i16).abs())
                            .max()
                            .unwrap();
                        // Speck and scratch change nothing off their mask; a stain's faint rim
                        // moves less than CHANGE_IN_MASK.
                        if kind == DefectKind::Stain {
                            assert!(moved < CHANGE_IN_MASK, "{kind:?} at {x},{y}");
                        } else {
                            assert_eq!(moved, 0, "{kind:?} at {x},{y}");
                        }
                    } else {
                        masked += 1;
                    }
                }
                // The smallest scratch: 25 x 1 px at half resolution, enlarged 2 x 2.
                assert!(masked >= 80, "{kind:?}: {masked} px");
            }
        }
        for _ in 0..10 {
            let mut damaged = clean.clone();
            let target = scene.damage_target(&mut rng);
            let mask = paint_crack(&mut damaged, target, &mut rng);
            let diff = differing(&clean, &damaged);
            assert!(diff.iter().all(|&(x, y)| mask.get_pixel(x, y).0[0] == 255));
            let on = mask.pixels().filter(|p| p.0[0] == 255).count();
            // 25-63 px long, 1.8-2.8 px wide; nearly every covered pixel darkens.
            assert!((40..400).contains(&on), "crack: {on} px");
            assert!(
                diff.len() * 10 >= on * 9,
                "crack: {} of {on} changed",
                diff.len()
            );
        }
    }

    #[test]
    fn objects_stay_inside_the_frame_and_parts_are_15_to_60_px() {
        for category in Category::ALL {
            for seed in 0..40u64 {
                let mut rng = StdRng::seed_from_u64(seed);
                let mut scene = Scene::sample(category, seed as usize, &mut rng);
                let anomalies = category.logical_anomalies();
                scene.apply(anomalies[seed as usize % anomalies.len()], &mut rng);
                let last = FRAME_SIZE - 1;
                let border = |x: u32, y: u32| x == 0 || y == 0 || x == last || y == last;
                let mut object = GrayImage::new(FRAME_SIZE, FRAME_SIZE);
                for shape in scene.outline() {
                    rasterise(&mut object, &scene.pose, &shape);
                }
                assert!(object.pixels().any(|m| m.0[0] == 255));
                for (x, y, m) in object.enumerate_pixels() {
                    assert!(
                        m.0[0] == 0 || !border(x, y),
                        "{category:?} seed {seed} at {x},{y}"
                    );
                }
                // A logical mask reaches the border only along a wire, at the top.
                let marks = scene.anomaly_mask();
                for (x, y, m) in marks.enumerate_pixels() {
                    if m.0[0] == 255 && border(x, y) {
                        assert!(
                            category == Category::Terminals && y == 0,
                            "{category:?} seed {seed} mark at {x},{y}"
                        );
                    }
                }
            }
        }
        // Extents (width, height) of the parts, px at scale 1.
        let extent = |shape: &Shape| {
            let (lo, hi) = shape.bounds().unwrap();
            let mut w = (0.0f32, 0.0f32);
            // Extents of the part centred on the origin, to 0.25 px: scan its bounding box.
            let mut y = lo[1];
            while y <= hi[1] {
                let mut x = lo[0];
                while x <= hi[0] {
                    if shape.distance([x, y]) <= 0.0 {
                        w.0 = w.0.max(x);
                        w.1 = w.1.max(y);
                    }
                    x += 0.25;
                }
                y += 0.25;
            }
            (2.0 * w.0, 2.0 * w.1)
        };
        let parts = [
            TabletKind::Round.footprint([0.0; 2], 0.0),
            TabletKind::Capsule.footprint([0.0; 2], 0.0),
            TabletKind::Oval.footprint([0.0; 2], 0.0),
            Shape::rect([0.0; 2], BLOCK_HALF, 0.0, 2.0),
            Shape::capsule([0.0, -100.0], [0.0, 100.0], WIRE_R).slab(-20.0, 20.0),
            Shape::rect([0.0; 2], CAP_HALF, 0.0, 4.0),
            Shape::rect([0.0; 2], [TUBE_R, 30.0], 0.0, 0.0),
            pocket_shape([0.0; 2]),
        ];
        for part in &parts {
            let (w, h) = extent(part);
            let (small, large) = (w.min(h), w.max(h));
            assert!((14.5..=60.0).contains(&small), "{part:?}: {w} x {h}");
            assert!(
                large <= 60.1 || matches!(part, Shape::Slab { .. }),
                "{part:?}: {w} x {h}"
            );
        }
    }

    #[test]
    fn nominal_images_vary() {
        for category in Category::ALL {
            let mut images = Vec::new();
            let mut materials = BTreeSet::new();
            for index in 0..12 {
                // Same blister kind (index % 3 == 0); compared before sensor noise.
                let index = index * 3;
                let mut rng = image_rng(0, category, Folder::Train, index);
                let scene = Scene::sample(category, index, &mut rng);
                images.push(scene.photograph());
                materials.insert(format!("{:?}", scene.look.material));
            }
            assert!(materials.len() >= 2, "{category:?}: {materials:?}");
            for i in 0..images.len() {
                for j in i + 1..images.len() {
                    let (a, b) = (images[i].as_raw(), images[j].as_raw());
                    let mean_abs = a
                        .iter()
                        .zip(b)
                        .map(|(&x, &y)| (x as f64 - y as f64).abs())
                        .sum::<f64>()
                        / a.len() as f64;
                    assert!(
                        mean_abs > 4.0,
                        "{category:?} {i} {j}: mean difference {mean_abs}"
                    );
                }
            }
        }
    }
}
