//! Synthetic evaluation sets with exact ground-truth masks, for measuring what needs masks
//! (pixel AUROC, how well region boxes frame defects) on images that ship none.
//!
//! [`write_structural_set`] paints local damage onto anomaly-free source images and writes an
//! MVTec AD layout that `logsad eval` reads:
//!
//! ```text
//! ROOT/CATEGORY/train/good/NNNN.png              anomaly-free (references, then validation)
//! ROOT/CATEGORY/test/good/NNNN.png               anomaly-free, held out
//! ROOT/CATEGORY/test/<kind>/NNNN.png             one painted defect each
//! ROOT/CATEGORY/ground_truth/<kind>/NNNN_mask.png  255 where the defect was painted, else 0
//! ```
//!
//! Every output is PNG (lossless), good and defective alike, so that no compression difference
//! separates the two. The same seed and sources give byte-identical sets.
//!
//! [`loco`] renders whole scenes with known logic (counts, class pairings, positions, fill
//! levels) in the MVTec LOCO layout, logical and structural anomalies alike; [`family_b`] is a
//! second, independent family of such scenes (other products, sizes and rendering), a held-out
//! test for detectors tuned on the first.

use image::{GrayImage, Luma, RgbImage};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};

pub mod family_b;
pub mod loco;

/// Distance of a defect's centre from the frame's edges, px: more than the longest half-extent
/// of any defect (a scratch's 30 px plus its width).
pub const MARGIN: f32 = 32.0;
/// Smallest source image side, px.
pub const MIN_SIZE: u32 = 96;

/// Kinds of local damage, each painted with exact mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefectKind {
    /// A small ellipse of salt-and-pepper noise, 6-10 x 16-24 px (the textile set's own local
    /// defects look like this).
    Speck,
    /// A thin straight line, 1-3 px wide and 25-60 px long, darker or brighter than the surface.
    Scratch,
    /// A soft-edged dark ellipse, 16-32 px across, at 40-60% of the surface's brightness in its
    /// centre; the mask is where it darkens by at least half of that.
    Stain,
}

impl DefectKind {
    pub const ALL: [DefectKind; 3] = [DefectKind::Speck, DefectKind::Scratch, DefectKind::Stain];

    /// The test folder name.
    pub fn name(self) -> &'static str {
        match self {
            DefectKind::Speck => "speck",
            DefectKind::Scratch => "scratch",
            DefectKind::Stain => "stain",
        }
    }
}

/// How many images go where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StructuralSetOptions {
    /// Seed of every random choice (defect placement, shape, polarity).
    pub seed: u64,
    /// Anomaly-free training images (`train/good`): `logsad eval` takes references from the
    /// start and its validation images from the end.
    pub train: usize,
    /// Images per test folder (`test/good` and each defect kind).
    pub per_kind: usize,
}

/// What [`write_structural_set`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StructuralSetSummary {
    pub train: usize,
    pub good: usize,
    pub defective: usize,
}

/// Paints one defect of `kind` onto `image` and returns its mask (255 inside, else 0).
///
/// The defect's centre lies at least [`MARGIN`] px from every edge, so every defect lies wholly
/// inside the frame.
///
/// # Panics
/// If `image` is smaller than [`MIN_SIZE`] in either dimension.
pub fn paint_defect(image: &mut RgbImage, kind: DefectKind, rng: &mut StdRng) -> GrayImage {
    let (w, h) = image.dimensions();
    let mut mask = GrayImage::new(w, h);
    assert!(
        w >= MIN_SIZE && h >= MIN_SIZE,
        "{w}x{h} is below {MIN_SIZE} px"
    );
    let centre = (
        rng.random_range(MARGIN..w as f32 - MARGIN),
        rng.random_range(MARGIN..h as f32 - MARGIN),
    );
    let angle: f32 = rng.random_range(0.0..std::f32::consts::PI);
    let (sin, cos) = angle.sin_cos();
    // Coordinates of pixel (x, y) in the defect's own frame: u along its length, v across.
    let local = |x: u32, y: u32| {
        let (dx, dy) = (x as f32 + 0.5 - centre.0, y as f32 + 0.5 - centre.1);
        (dx * cos + dy * sin, -dx * sin + dy * cos)
    };
    match kind {
        DefectKind::Speck => {
            let (long, short) = (rng.random_range(8.0..12.0), rng.random_range(3.0..5.0));
            for_pixels_near(w, h, centre, long, |x, y| {
                let (u, v) = local(x, y);
                if (u / long).powi(2) + (v / short).powi(2) <= 1.0 {
                    let value = if rng.random_bool(0.5) {
                        rng.random_range(0..60u8)
                    } else {
                        rng.random_range(200..=255u8)
                    };
                    image.put_pixel(x, y, image::Rgb([value; 3]));
                    mask.put_pixel(x, y, Luma([255]));
                }
            });
        }
        DefectKind::Scratch => {
            let half_length = rng.random_range(12.5..30.0);
            let half_width = rng.random_range(0.5..1.5);
            let bright = rng.random_bool(0.5);
            for_pixels_near(w, h, centre, half_length + 2.0, |x, y| {
                let (u, v) = local(x, y);
                if u.abs() <= half_length && v.abs() <= half_width {
                    let p = image.get_pixel_mut(x, y);
                    for c in &mut p.0 {
                        let value = *c as f32;
                        *c = if bright {
                            value + (255.0 - value) * 0.6
                        } else {
                            value * 0.35
                        }
                        .round() as u8;
                    }
                    mask.put_pixel(x, y, Luma([255]));
                }
            });
        }
        DefectKind::Stain => {
            let (a, b): (f32, f32) = (rng.random_range(8.0..16.0), rng.random_range(8.0..16.0));
            let depth = rng.random_range(0.4..0.6);
            for_pixels_near(w, h, centre, a.max(b) + 2.0, |x, y| {
                let (u, v) = local(x, y);
                let r = ((u / a).powi(2) + (v / b).powi(2)).sqrt();
                // Full strength inside 70% of the radius, fading to nothing at the edge.
                let strength = ((1.0 - r) / 0.3).clamp(0.0, 1.0);
                if strength > 0.0 {
                    let p = image.get_pixel_mut(x, y);
                    for c in &mut p.0 {
                        *c = (*c as f32 * (1.0 - depth * strength)).round() as u8;
                    }
                    if strength >= 0.5 {
                        mask.put_pixel(x, y, Luma([255]));
                    }
                }
            });
        }
    }
    mask
}

/// Calls `f(x, y)` for every pixel of the square of half-side `radius` around `centre`, clipped
/// to the frame.
fn for_pixels_near(w: u32, h: u32, centre: (f32, f32), radius: f32, mut f: impl FnMut(u32, u32)) {
    let x0 = (centre.0 - radius).floor().max(0.0) as u32;
    let y0 = (centre.1 - radius).floor().max(0.0) as u32;
    let x1 = ((centre.0 + radius).ceil() as u32).min(w);
    let y1 = ((centre.1 + radius).ceil() as u32).min(h);
    for y in y0..y1 {
        for x in x0..x1 {
            f(x, y);
        }
    }
}

/// Writes an MVTec AD layout under `root/category` from anomaly-free `sources` (taken in the
/// order given: `train` for training, `per_kind` held out as good, then `per_kind` per defect
/// kind, each painted with one defect). Errors name the file at fault; there must be enough
/// sources and each at least [`MIN_SIZE`] px wide and high.
pub fn write_structural_set(
    sources: &[PathBuf],
    root: &Path,
    category: &str,
    options: &StructuralSetOptions,
) -> Result<StructuralSetSummary, String> {
    let needed = options.train + options.per_kind * (1 + DefectKind::ALL.len());
    if sources.len() < needed {
        return Err(format!(
            "{} source images, the set needs {needed} ({} training + {} per test folder x {})",
            sources.len(),
            options.train,
            options.per_kind,
            1 + DefectKind::ALL.len()
        ));
    }
    let base = root.join(category);
    let mut rng = StdRng::seed_from_u64(options.seed);
    let mut next = sources.iter();
    let mut take = |folder: PathBuf, count: usize, kind: Option<DefectKind>, rng: &mut StdRng| {
        std::fs::create_dir_all(&folder)
            .map_err(|e| format!("cannot create {}: {e}", folder.display()))?;
        for index in 0..count {
            let source = next.next().expect("counted above");
            let mut image = image::open(source)
                .map_err(|e| format!("{}: {e}", source.display()))?
                .to_rgb8();
            if image.width() < MIN_SIZE || image.height() < MIN_SIZE {
                return Err(format!(
                    "{}: {}x{} is smaller than {MIN_SIZE}x{MIN_SIZE}",
                    source.display(),
                    image.width(),
                    image.height()
                ));
            }
            let name = format!("{index:04}");
            if let Some(kind) = kind {
                let mask = paint_defect(&mut image, kind, rng);
                let mask_dir = base.join("ground_truth").join(kind.name());
                std::fs::create_dir_all(&mask_dir)
                    .map_err(|e| format!("cannot create {}: {e}", mask_dir.display()))?;
                let mask_path = mask_dir.join(format!("{name}_mask.png"));
                mask.save(&mask_path)
                    .map_err(|e| format!("cannot write {}: {e}", mask_path.display()))?;
            }
            let path = folder.join(format!("{name}.png"));
            image
                .save(&path)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
        Ok::<(), String>(())
    };
    take(base.join("train/good"), options.train, None, &mut rng)?;
    take(base.join("test/good"), options.per_kind, None, &mut rng)?;
    for kind in DefectKind::ALL {
        take(
            base.join("test").join(kind.name()),
            options.per_kind,
            Some(kind),
            &mut rng,
        )?;
    }
    Ok(StructuralSetSummary {
        train: options.train,
        good: options.per_kind,
        defective: options.per_kind * DefectKind::ALL.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grey(w: u32, h: u32, value: u8) -> RgbImage {
        RgbImage::from_pixel(w, h, image::Rgb([value; 3]))
    }

    /// Pixels that changed, and pixels in the mask, for a painted uniform image.
    fn changed_and_masked(image: &RgbImage, mask: &GrayImage, value: u8) -> (usize, usize, usize) {
        let mut changed = 0;
        let mut masked = 0;
        let mut changed_outside = 0;
        for (p, m) in image.pixels().zip(mask.pixels()) {
            let c = p.0 != [value; 3];
            changed += c as usize;
            masked += (m.0[0] == 255) as usize;
            changed_outside += (c && m.0[0] == 0) as usize;
        }
        (changed, masked, changed_outside)
    }

    #[test]
    fn speck_and_scratch_change_exactly_their_mask() {
        for kind in [DefectKind::Speck, DefectKind::Scratch] {
            for seed in 0..20 {
                let mut rng = StdRng::seed_from_u64(seed);
                let mut image = grey(128, 96, 128);
                let mask = paint_defect(&mut image, kind, &mut rng);
                let (changed, masked, outside) = changed_and_masked(&image, &mask, 128);
                assert_eq!(
                    outside, 0,
                    "{kind:?} seed {seed} changed pixels off its mask"
                );
                // A speck pixel can draw a value in 200..=255 or 0..60, never 128: all change.
                assert_eq!(changed, masked, "{kind:?} seed {seed}");
                // Sizes from the documented ranges: ellipse pi*a*b, line length x width.
                let (lo, hi) = match kind {
                    DefectKind::Speck => (60, 420),
                    _ => (20, 190),
                };
                assert!(
                    (lo..=hi).contains(&masked),
                    "{kind:?} seed {seed}: {masked} px"
                );
            }
        }
    }

    #[test]
    fn stain_mask_is_the_strongly_darkened_core() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut image = grey(128, 128, 200);
        let mask = paint_defect(&mut image, DefectKind::Stain, &mut rng);
        let (changed, masked, _) = changed_and_masked(&image, &mask, 200);
        assert!(
            masked > 100 && changed > masked,
            "{masked} masked, {changed} changed"
        );
        // Inside the mask the surface is darkened by at least 0.4 * 0.5 = 20%.
        for (p, m) in image.pixels().zip(mask.pixels()) {
            if m.0[0] == 255 {
                assert!(p.0[0] <= 160, "masked pixel only {} dark", p.0[0]);
            }
        }
    }

    #[test]
    fn defects_stay_inside_the_margin() {
        for kind in DefectKind::ALL {
            for seed in 0..20 {
                let mut rng = StdRng::seed_from_u64(seed);
                let mut image = grey(MIN_SIZE, MIN_SIZE, 100);
                let mask = paint_defect(&mut image, kind, &mut rng);
                let inside = 1..MIN_SIZE - 1;
                for (x, y, m) in mask.enumerate_pixels() {
                    if m.0[0] == 255 {
                        assert!(
                            inside.contains(&x) && inside.contains(&y),
                            "{kind:?} at {x},{y}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn writes_the_mvtec_layout_deterministically() {
        let dir = tempfile::tempdir().unwrap();
        let sources: Vec<PathBuf> = (0..7)
            .map(|i| {
                let path = dir.path().join(format!("src{i}.png"));
                grey(100, 96, 30 * i as u8).save(&path).unwrap();
                path
            })
            .collect();
        let options = StructuralSetOptions {
            seed: 3,
            train: 2,
            per_kind: 1,
        };
        let root = dir.path().join("a");
        let summary = write_structural_set(&sources, &root, "cat", &options).unwrap();
        assert_eq!(
            summary,
            StructuralSetSummary {
                train: 2,
                good: 1,
                defective: 3
            }
        );
        for file in [
            "train/good/0000.png",
            "train/good/0001.png",
            "test/good/0000.png",
            "test/speck/0000.png",
            "test/scratch/0000.png",
            "test/stain/0000.png",
            "ground_truth/speck/0000_mask.png",
            "ground_truth/stain/0000_mask.png",
        ] {
            assert!(root.join("cat").join(file).is_file(), "{file} missing");
        }
        // Sources are consumed in order: the held-out good image is source 2, untouched.
        let good = image::open(root.join("cat/test/good/0000.png"))
            .unwrap()
            .to_rgb8();
        assert_eq!(good, grey(100, 96, 60));
        let again = dir.path().join("b");
        write_structural_set(&sources, &again, "cat", &options).unwrap();
        let read = |r: &Path| std::fs::read(r.join("cat/test/scratch/0000.png")).unwrap();
        assert_eq!(read(&root), read(&again));
        // Too few sources is an error that says how many are needed.
        let err = write_structural_set(&sources[..5], &root, "cat", &options).unwrap_err();
        assert!(err.contains("needs 6"), "{err}");
    }
}
