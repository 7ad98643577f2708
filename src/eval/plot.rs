//! ROC curve plots as PNG: white background, light grid, axes with ticks, the chance diagonal,
//! one coloured polyline per curve and a legend with each curve's label and AUROC, text drawn
//! with the `font8x8` bitmap font.

use std::path::Path;

use image::{ImageFormat, Rgb, RgbImage};

/// Image side in pixels.
pub const PLOT_SIZE: u32 = 480;
/// Left edge of the plot area (FPR 0).
pub const PLOT_LEFT: i64 = 56;
/// Top edge of the plot area (TPR 1).
pub const PLOT_TOP: i64 = 32;
/// Plot area side minus one: FPR 1 is at `PLOT_LEFT + PLOT_SPAN`, TPR 0 at `PLOT_TOP + PLOT_SPAN`.
pub const PLOT_SPAN: i64 = 400;

const WHITE: [u8; 3] = [255, 255, 255];
const BLACK: [u8; 3] = [0, 0, 0];
const GRID: [u8; 3] = [225, 225, 225];
const DIAGONAL: [u8; 3] = [150, 150, 150];
const LEGEND_BORDER: [u8; 3] = [120, 120, 120];

/// Colour of the `i`-th curve (Tableau 10, cycling after 10 curves).
pub fn curve_color(i: usize) -> [u8; 3] {
    colorous::TABLEAU10[i % colorous::TABLEAU10.len()].as_array()
}

/// Image x of a false positive rate (clamped to [0, 1]).
pub fn plot_x(fpr: f64) -> i64 {
    PLOT_LEFT + (fpr.clamp(0.0, 1.0) * PLOT_SPAN as f64).round() as i64
}

/// Image y of a true positive rate (clamped to [0, 1]).
pub fn plot_y(tpr: f64) -> i64 {
    PLOT_TOP + PLOT_SPAN - (tpr.clamp(0.0, 1.0) * PLOT_SPAN as f64).round() as i64
}

/// Trapezoidal area under a curve given as (FPR, TPR) points in order.
fn area(curve: &[(f64, f64)]) -> f64 {
    curve
        .windows(2)
        .map(|w| (w[1].0 - w[0].0) * (w[1].1 + w[0].1) / 2.0)
        .sum()
}

struct Canvas(RgbImage);

impl Canvas {
    fn set(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x >= 0 && y >= 0 && x < self.0.width() as i64 && y < self.0.height() as i64 {
            self.0.put_pixel(x as u32, y as u32, Rgb(c));
        }
    }

    fn fill_rect(&mut self, x: i64, y: i64, w: i64, h: i64, c: [u8; 3]) {
        for yy in y..y + h {
            for xx in x..x + w {
                self.set(xx, yy, c);
            }
        }
    }

    fn outline(&mut self, x: i64, y: i64, w: i64, h: i64, c: [u8; 3]) {
        self.fill_rect(x, y, w, 1, c);
        self.fill_rect(x, y + h - 1, w, 1, c);
        self.fill_rect(x, y, 1, h, c);
        self.fill_rect(x + w - 1, y, 1, h, c);
    }

    /// Bresenham line with a square pen of side `2 * radius + 1`; with `dash = Some((on, off))`
    /// only the first `on` of every `on + off` steps are drawn.
    fn line(
        &mut self,
        (x0, y0): (i64, i64),
        (x1, y1): (i64, i64),
        radius: i64,
        c: [u8; 3],
        dash: Option<(i64, i64)>,
    ) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        let mut step = 0i64;
        loop {
            let on = dash.is_none_or(|(a, b)| step % (a + b) < a);
            if on {
                self.fill_rect(x - radius, y - radius, 2 * radius + 1, 2 * radius + 1, c);
            }
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
            step += 1;
        }
    }

    /// ASCII text (others become `?`), top-left corner at `(x, y)`, 8 px per character.
    fn text(&mut self, x: i64, y: i64, text: &str, c: [u8; 3]) {
        for (px, py) in crate::glyphs::lit_pixels(text) {
            self.set(x + px, y + py, c);
        }
    }
}

/// Keeps at most `max` characters, marking a cut with `..`.
fn fit(text: &str, max: usize) -> String {
    let n = text.chars().count();
    if n <= max {
        text.to_string()
    } else {
        let keep = max.saturating_sub(2);
        text.chars()
            .take(keep)
            .chain("..".chars())
            .take(max)
            .collect()
    }
}

/// Draws the ROC plot described in [`plot_roc`] and returns it.
pub fn render_roc(title: &str, curves: &[(String, Vec<(f64, f64)>)]) -> RgbImage {
    let mut cv = Canvas(RgbImage::from_pixel(PLOT_SIZE, PLOT_SIZE, Rgb(WHITE)));
    let (left, top, span) = (PLOT_LEFT, PLOT_TOP, PLOT_SPAN);
    let (right, bottom) = (left + span, top + span);
    let size = PLOT_SIZE as i64;

    // Grid and ticks every 0.2, tick labels below and left of the axes.
    for k in 0..=5 {
        let v = k as f64 / 5.0;
        let (x, y) = (plot_x(v), plot_y(v));
        if k > 0 && k < 5 {
            cv.fill_rect(x, top, 1, span + 1, GRID);
            cv.fill_rect(left, y, span + 1, 1, GRID);
        }
        cv.fill_rect(x, bottom + 1, 1, 4, BLACK);
        cv.fill_rect(left - 4, y, 4, 1, BLACK);
        let label = format!("{v:.1}");
        cv.text(x - 12, bottom + 8, &label, BLACK);
        cv.text(left - 6 - 24, y - 4, &label, BLACK);
    }
    cv.line((left, bottom), (right, top), 0, DIAGONAL, Some((4, 4)));
    cv.outline(left, top, span + 1, span + 1, BLACK);

    // Axis titles and plot title.
    let xlabel = "false positive rate";
    cv.text(
        left + span / 2 - 4 * xlabel.len() as i64,
        bottom + 24,
        xlabel,
        BLACK,
    );
    let ylabel = "true positive rate";
    let y0 = top + span / 2 - 5 * ylabel.len() as i64;
    for (i, ch) in ylabel.chars().enumerate() {
        cv.text(6, y0 + 10 * i as i64, &ch.to_string(), BLACK);
    }
    let title = fit(title, (size as usize - 16) / 8);
    cv.text(
        size / 2 - 4 * title.chars().count() as i64,
        10,
        &title,
        BLACK,
    );

    // Curves, later ones on top.
    for (i, (_, pts)) in curves.iter().enumerate() {
        let pts: Vec<(i64, i64)> = pts
            .iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .map(|&(x, y)| (plot_x(x), plot_y(y)))
            .collect();
        let c = curve_color(i);
        match pts.len() {
            0 => {}
            1 => cv.line(pts[0], pts[0], 1, c, None),
            _ => {
                for w in pts.windows(2) {
                    cv.line(w[0], w[1], 1, c, None);
                }
            }
        }
    }

    // Legend in the bottom-right corner of the plot area (below a good ROC curve).
    if !curves.is_empty() {
        let (pad, swatch, line_h) = (6i64, 20i64, 12i64);
        let max_chars = ((span - 2 * pad - swatch - 8 - 8) / 8) as usize;
        let entries: Vec<String> = curves
            .iter()
            .map(|(label, pts)| {
                let auc = area(pts);
                let auc = if auc.is_finite() {
                    format!(" ({:.1}%)", auc * 100.0)
                } else {
                    String::new()
                };
                let label_max = max_chars.saturating_sub(auc.len()).max(4);
                fit(&format!("{}{auc}", fit(label, label_max)), max_chars)
            })
            .collect();
        let text_w = entries.iter().map(|e| e.chars().count()).max().unwrap_or(0) as i64 * 8;
        let w = 2 * pad + swatch + 8 + text_w;
        let h = 2 * pad + line_h * entries.len() as i64 - 4;
        let (x, y) = (right - 8 - w, bottom - 8 - h);
        cv.fill_rect(x, y, w, h, WHITE);
        cv.outline(x, y, w, h, LEGEND_BORDER);
        for (i, e) in entries.iter().enumerate() {
            let ly = y + pad + line_h * i as i64;
            cv.fill_rect(x + pad, ly + 2, swatch, 4, curve_color(i));
            cv.text(x + pad + swatch + 8, ly, e, BLACK);
        }
    }
    cv.0
}

/// Writes a `PLOT_SIZE` x `PLOT_SIZE` PNG of ROC curves to `path`: each curve is a list of
/// (FPR, TPR) points in drawing order (as [`crate::detect::metrics::roc_curve`] returns them),
/// drawn as a 3-pixel-wide polyline in [`curve_color`]`(index)`; the legend shows each label and
/// the curve's trapezoidal AUROC in percent. Long labels and titles are shortened with `..`.
pub fn plot_roc(
    path: &Path,
    title: &str,
    curves: &[(String, Vec<(f64, f64)>)],
) -> Result<(), String> {
    render_roc(title, curves)
        .save_with_format(path, ImageFormat::Png)
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn area_of_curves() {
        assert_eq!(area(&[(0.0, 0.0), (0.0, 1.0), (1.0, 1.0)]), 1.0);
        assert_eq!(area(&[(0.0, 0.0), (1.0, 1.0)]), 0.5);
        assert_eq!(fit("abcdef", 4), "ab..");
        assert_eq!(fit("abc", 4), "abc");
    }

    #[test]
    fn plot_png_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("roc.png");
        let perfect = vec![(0.0, 0.0), (0.0, 1.0), (1.0, 1.0)];
        let step =
            crate::detect::metrics::roc_curve(&[0.1, 0.3, 0.5, 0.9], &[false, true, false, true]);
        let curves = vec![("perfect".to_string(), perfect), ("step".to_string(), step)];
        plot_roc(&path, "ROC bottle", &curves).unwrap();

        let img = image::open(&path).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (PLOT_SIZE, PLOT_SIZE));
        let px = |x: i64, y: i64| img.get_pixel(x as u32, y as u32).0;
        let (c0, c1) = (curve_color(0), curve_color(1));
        assert_ne!(c0, c1);
        // The perfect classifier runs up the FPR = 0 column (over the axis) and along TPR = 1
        // (the step curve, drawn later, covers FPR = 0 only up to TPR 0.5 and TPR = 1 from 0.5).
        for tpr in [0.6, 0.7, 0.9] {
            assert_eq!(px(plot_x(0.0), plot_y(tpr)), c0, "tpr {tpr}");
            assert_eq!(px(plot_x(0.0) + 1, plot_y(tpr)), c0, "tpr {tpr}");
        }
        assert_eq!(px(plot_x(0.3), plot_y(1.0)), c0);
        // The step curve's horizontal segment at TPR 0.5 between FPR 0 and 0.5, and its
        // vertical segment at FPR 0.5.
        assert_eq!(px(plot_x(0.25), plot_y(0.5)), c1);
        assert_eq!(px(plot_x(0.5), plot_y(0.75)), c1);
        // Background: above the diagonal, off the grid, away from curves and legend; margins.
        assert_eq!(px(plot_x(0.3), plot_y(0.9)), WHITE);
        assert_eq!(px(plot_x(0.9), plot_y(0.7)), WHITE);
        assert_eq!(px(PLOT_SIZE as i64 - 1, 0), WHITE);
        assert_eq!(px(PLOT_SIZE as i64 - 1, PLOT_SIZE as i64 - 1), WHITE);
        // Axis box (bottom and right edges, clear of curves); the diagonal is dashed 4 on, 4 off
        // from (0, 0).
        assert_eq!(px(plot_x(0.3), plot_y(0.0)), BLACK);
        assert_eq!(px(plot_x(1.0), plot_y(0.5)), BLACK);
        assert_eq!(px(PLOT_LEFT + 321, PLOT_TOP + PLOT_SPAN - 321), DIAGONAL);
        assert_eq!(px(PLOT_LEFT + 325, PLOT_TOP + PLOT_SPAN - 325), WHITE);
        let count = |c: [u8; 3]| img.pixels().filter(|p| p.0 == c).count();
        assert!(count(c0) > 800 && count(c1) > 600);
        assert!(count(BLACK) > 1000, "axes and text");
        // Writing to a missing directory fails cleanly.
        assert!(plot_roc(&dir.path().join("no/such/roc.png"), "x", &curves).is_err());
    }

    #[test]
    fn plot_without_curves_and_long_labels() {
        let img = render_roc("", &[]);
        assert_eq!(img.dimensions(), (PLOT_SIZE, PLOT_SIZE));
        let long = "x".repeat(200);
        let curves: Vec<(String, Vec<(f64, f64)>)> = (0..12)
            .map(|i| {
                (
                    long.clone(),
                    vec![(0.0, 0.0), (i as f64 / 12.0, 1.0), (1.0, 1.0)],
                )
            })
            .collect();
        let img = render_roc(&long, &curves);
        assert_eq!(img.dimensions(), (PLOT_SIZE, PLOT_SIZE));
    }
}
