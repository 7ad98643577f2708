//! A picture of the part labels for `logsad info --parts`.

use super::{LabelMap, PartError};
use crate::detect::preprocess::RgbImage;

/// Height of one legend row in pixels (8-pixel glyphs and swatches, 2 pixels above and below).
const LEGEND_ROW: u32 = 12;
/// Opacity of a part's tint over the image.
const TINT: f32 = 0.5;
const LEGEND_BACKGROUND: [u8; 3] = [32, 32, 32];
const LEGEND_TEXT: [u8; 3] = [255, 255, 255];

/// The colour of part `part`: `colorous::TABLEAU10[part % 10]` (distinct for up to 10 parts).
pub fn part_colour(part: u16) -> [u8; 3] {
    colorous::TABLEAU10[part as usize % colorous::TABLEAU10.len()].as_array()
}

/// `image` with every cell of a non-background part tinted in [`part_colour`] at 50% opacity
/// (each pixel takes the label of the cell it falls in; the label grid is stretched over the
/// whole image), the background untouched, above a legend: one 12-pixel row per part but the
/// background, with its colour swatch and name (`names[i]`, `part<i>` where `names` has none).
/// The result is `image.width` wide and `image.height + 12 * rows + 4` high.
///
/// Errors when the label map does not hold `width * height` labels, or `image.pixels` does not
/// hold `width * height * 3` bytes.
pub fn render_parts(
    labels: &LabelMap,
    image: &RgbImage,
    names: &[String],
) -> Result<image::RgbImage, PartError> {
    if labels.width.checked_mul(labels.height) != Some(labels.labels.len())
        || labels.labels.is_empty()
    {
        return Err(PartError::LabelCount {
            labels: labels.labels.len(),
            width: labels.width,
            height: labels.height,
        });
    }
    let expected = image.width as usize * image.height as usize * 3;
    if image.pixels.len() != expected || expected == 0 {
        return Err(PartError::ImageSize {
            width: image.width,
            height: image.height,
            bytes: image.pixels.len(),
            expected,
        });
    }
    let parts = labels
        .labels
        .iter()
        .map(|&l| l as usize + 1)
        .max()
        .unwrap_or(0)
        .max(names.len());
    let legend: Vec<u16> = (0..parts as u16)
        .filter(|&p| p != labels.background)
        .collect();
    let (width, height) = (image.width, image.height);
    let legend_height = LEGEND_ROW * legend.len() as u32 + 4;
    let mut out =
        image::RgbImage::from_pixel(width, height + legend_height, image::Rgb(LEGEND_BACKGROUND));
    for y in 0..height {
        let cy = (y as usize * labels.height) / height as usize;
        for x in 0..width {
            let cx = (x as usize * labels.width) / width as usize;
            let i = (y as usize * width as usize + x as usize) * 3;
            let mut pixel = [image.pixels[i], image.pixels[i + 1], image.pixels[i + 2]];
            let part = labels.labels[cy * labels.width + cx];
            if part != labels.background {
                let colour = part_colour(part);
                for (p, c) in pixel.iter_mut().zip(colour) {
                    *p = (*p as f32 * (1.0 - TINT) + c as f32 * TINT).round() as u8;
                }
            }
            out.put_pixel(x, y, image::Rgb(pixel));
        }
    }
    for (row, &part) in legend.iter().enumerate() {
        let top = height + 2 + LEGEND_ROW * row as u32 + 2;
        fill(&mut out, 2, top, 8, 8, part_colour(part));
        let name = names
            .get(part as usize)
            .cloned()
            .unwrap_or_else(|| format!("part{part}"));
        text(&mut out, 14, top, &name, LEGEND_TEXT);
    }
    Ok(out)
}

/// A `w x h` rectangle at `(x, y)`, clipped to the picture.
fn fill(out: &mut image::RgbImage, x: u32, y: u32, w: u32, h: u32, colour: [u8; 3]) {
    for py in y..(y + h).min(out.height()) {
        for px in x..(x + w).min(out.width()) {
            out.put_pixel(px, py, image::Rgb(colour));
        }
    }
}

/// ASCII text (others become `?`) in the 8x8 font, top-left corner at `(x, y)`, clipped.
fn text(out: &mut image::RgbImage, x: u32, y: u32, text: &str, colour: [u8; 3]) {
    for (dx, dy) in crate::glyphs::lit_pixels(text) {
        let (px, py) = (x as i64 + dx, y as i64 + dy);
        if px < out.width() as i64 && py < out.height() as i64 {
            out.put_pixel(px as u32, py as u32, image::Rgb(colour));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tints_parts_and_lists_them() {
        // A 2x1 label map over a 4x2 grey image: left half background, right half part 2.
        let labels = LabelMap {
            width: 2,
            height: 1,
            labels: vec![0, 2],
            background: 0,
        };
        let image = RgbImage::new(4, 2, vec![100; 4 * 2 * 3]).unwrap();
        let names: Vec<String> = ["background", "part1", "part2"].map(String::from).to_vec();
        let out = render_parts(&labels, &image, &names).unwrap();
        // Parts 1 and 2 in the legend: 2 rows.
        assert_eq!(out.dimensions(), (4, 2 + 2 * 12 + 4));
        assert_eq!(out.get_pixel(1, 1).0, [100, 100, 100]);
        let c = part_colour(2);
        let want = c.map(|c| ((100.0 + c as f32) / 2.0).round() as u8);
        assert_eq!(out.get_pixel(2, 0).0, want);
        assert_eq!(out.get_pixel(3, 1).0, want);
        // Part 1's swatch starts the legend.
        assert_eq!(out.get_pixel(2, 2 + 4).0, part_colour(1));
        assert_ne!(part_colour(1), part_colour(2));
    }

    #[test]
    fn bad_sizes_are_errors() {
        let labels = LabelMap {
            width: 2,
            height: 2,
            labels: vec![0; 3],
            background: 0,
        };
        let image = RgbImage::new(2, 2, vec![0; 12]).unwrap();
        assert!(matches!(
            render_parts(&labels, &image, &[]),
            Err(PartError::LabelCount { labels: 3, .. })
        ));
        let labels = LabelMap {
            labels: vec![0; 4],
            ..labels
        };
        let broken = RgbImage {
            width: 2,
            height: 2,
            pixels: vec![0; 5],
        };
        assert!(matches!(
            render_parts(&labels, &broken, &[]),
            Err(PartError::ImageSize { bytes: 5, .. })
        ));
    }
}
