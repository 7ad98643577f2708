//! From pixels to the model's input tensor: crop a tile, resize it with antialiased bilinear
//! filtering into its placement in the model input (the whole input, aspect ratio not kept, as
//! the reference does; or letterboxed), scale to [0, 1] and normalise per channel into NCHW.
//! Input pixels outside the placement are 0: the normalisation mean.
//!
//! Resampling ([`Resample`]) is in floating point by default, as the reference resizes its float
//! tensor (`F.interpolate(mode="bilinear", antialias=True, align_corners=False)`): a triangle
//! filter of half-width `max(scale, 1)` source pixels around each output pixel's centre
//! `(i + 0.5) * scale` (half-pixel centres), weights normalised to sum 1, so windows cut by the
//! image border are renormalised; for upscaling this is plain half-pixel bilinear with clamped
//! borders. The 8-bit option resizes the bytes with SIMD and rounds them to whole grey levels
//! before normalising (up to half a grey level off the reference).
//!
//! A tile is a sub-pixel window of the frame: the filter is centred inside the window but reads
//! the frame's pixels across the window's edge, as resizing the whole frame would.

use super::tiling::{Placement, Tile};
use crate::engine::manifest::InputSpec;
use fast_image_resize as fir;
use serde::{Deserialize, Serialize};

/// How a tile's pixels are resampled to the model input.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Resample {
    /// Antialiased bilinear on float pixels, as the reference (the default).
    #[default]
    F32,
    /// Antialiased bilinear on 8-bit pixels (SIMD), rounded before normalisation: faster, up to
    /// half a grey level off the reference. Every profile before format 5 was built this way.
    U8,
}

impl Resample {
    /// What a profile that does not record its resampling (before format 5) was built with.
    pub fn before_format_5() -> Self {
        Resample::U8
    }
}

impl std::str::FromStr for Resample {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(Resample::F32),
            "u8" => Ok(Resample::U8),
            other => Err(format!("unknown resample {other:?} (f32 or u8)")),
        }
    }
}

impl std::fmt::Display for Resample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Resample::F32 => "f32",
            Resample::U8 => "u8",
        })
    }
}

/// A packed 8-bit RGB image (3 bytes per pixel, no row padding).
#[derive(Debug, Clone, PartialEq)]
pub struct RgbImage {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
}

impl RgbImage {
    pub fn new(width: u32, height: u32, pixels: Vec<u8>) -> Result<Self, String> {
        if width == 0 || height == 0 {
            return Err(format!("image size {width}x{height} is empty"));
        }
        if pixels.len() != width as usize * height as usize * 3 {
            return Err(format!(
                "{} bytes do not hold a {width}x{height} RGB image",
                pixels.len()
            ));
        }
        Ok(RgbImage {
            width,
            height,
            pixels,
        })
    }
}

/// The antialiased bilinear filter along one axis: for each output pixel, the first source
/// pixel it reads and its normalised weights.
#[derive(Debug, Clone, PartialEq)]
struct AxisFilter {
    /// Per output pixel: first source index and number of taps.
    bounds: Vec<(usize, usize)>,
    /// `taps` weights per output pixel (the unused tail is 0).
    weights: Vec<f32>,
    taps: usize,
}

impl AxisFilter {
    /// Filter resampling the window `[start, start + len)` of an axis of `size` pixels to `out`
    /// pixels. Output pixel `i` is centred at `c = start + (i + 0.5) * len / out`; source pixel
    /// `j` (centre `j + 0.5`) weighs `max(0, 1 - |j + 0.5 - c| / support)` with
    /// `support = max(len / out, 1)`, for `j` in `[0, size)`, normalised to sum 1. The window
    /// must lie within the axis and `out` be positive.
    fn new(size: u32, start: f64, len: f64, out: u32) -> Self {
        let scale = len / out as f64;
        let support = scale.max(1.0);
        let mut spans = Vec::with_capacity(out as usize);
        for i in 0..out {
            let centre = start + (i as f64 + 0.5) * scale;
            let first = (centre - support).floor().max(0.0) as usize;
            let end = ((centre + support).ceil() as usize).min(size as usize);
            let mut weights: Vec<f64> = (first..end)
                .map(|j| (1.0 - ((j as f64 + 0.5 - centre) / support).abs()).max(0.0))
                .collect();
            // Drop the zero weights at both ends of the window.
            let lead = weights.iter().take_while(|&&w| w == 0.0).count();
            let trail = weights.iter().rev().take_while(|&&w| w == 0.0).count();
            weights.truncate(weights.len() - trail.min(weights.len() - lead));
            weights.drain(..lead);
            let total: f64 = weights.iter().sum();
            let normalised: Vec<f64> = weights.iter().map(|w| w / total).collect();
            spans.push((first + lead, normalised));
        }
        let taps = spans.iter().map(|(_, w)| w.len()).max().unwrap_or(0);
        let mut filter = AxisFilter {
            bounds: Vec::with_capacity(spans.len()),
            weights: Vec::with_capacity(spans.len() * taps),
            taps,
        };
        for (first, weights) in spans {
            let count = weights.len();
            filter.bounds.push((first, count));
            filter.weights.extend(weights.iter().map(|&w| w as f32));
            filter
                .weights
                .extend(std::iter::repeat_n(0.0, taps - count));
        }
        filter
    }

    /// The weights of output pixel `i`, with its first source index.
    fn of(&self, i: usize) -> (usize, &[f32]) {
        let (first, count) = self.bounds[i];
        (first, &self.weights[i * self.taps..i * self.taps + count])
    }

    /// The source range read by any output pixel.
    fn span(&self) -> std::ops::Range<usize> {
        let first = self.bounds.iter().map(|b| b.0).min().unwrap_or(0);
        let end = self.bounds.iter().map(|b| b.0 + b.1).max().unwrap_or(0);
        first..end
    }
}

/// Resamples the window `(x, y, width, height)` of `image` to `out_w x out_h` packed RGB
/// floats (grey levels, 0..255) in `resized`. Columns first, one output row at a time through
/// `line` (scratch): along y the filter reads whole contiguous source rows, which vectorises.
fn resample_f32(
    image: &RgbImage,
    (x, y, width, height): (f64, f64, f64, f64),
    (out_w, out_h): (u32, u32),
    line: &mut Vec<f32>,
    resized: &mut Vec<f32>,
) {
    let columns = AxisFilter::new(image.width, x, width, out_w);
    let lines = AxisFilter::new(image.height, y, height, out_h);
    let span = columns.span();
    let stride = 3 * image.width as usize;
    let row_len = 3 * out_w as usize;
    resized.clear();
    resized.resize(out_h as usize * row_len, 0.0);
    line.resize(3 * span.len(), 0.0);
    for (o, dst) in resized.chunks_exact_mut(row_len).enumerate() {
        line.fill(0.0);
        let (first, weights) = lines.of(o);
        for (k, &w) in weights.iter().enumerate() {
            let row = (first + k) * stride;
            let source = &image.pixels[row + 3 * span.start..row + 3 * span.end];
            for (d, &s) in line.iter_mut().zip(source) {
                *d += w * s as f32;
            }
        }
        for (i, px) in dst.chunks_exact_mut(3).enumerate() {
            let (first, weights) = columns.of(i);
            let mut sum = [0.0f32; 3];
            for (w, s) in weights
                .iter()
                .zip(line[3 * (first - span.start)..].chunks_exact(3))
            {
                for c in 0..3 {
                    sum[c] += w * s[c];
                }
            }
            px.copy_from_slice(&sum);
        }
    }
}

/// Turns tiles of images into normalised tensors; keeps its scratch buffers between calls.
pub struct Preprocessor {
    input: InputSpec,
    resizer: fir::Resizer,
    /// The tile resized on 8-bit pixels, of its placement's size.
    resized_u8: fir::images::Image<'static>,
    /// The tile resized on floats (packed RGB grey levels), and one row filtered along y.
    resized_f32: Vec<f32>,
    line_f32: Vec<f32>,
}

impl Preprocessor {
    pub fn new(input: &InputSpec) -> Self {
        Preprocessor {
            input: input.clone(),
            resizer: fir::Resizer::new(),
            resized_u8: fir::images::Image::new(
                input.width as u32,
                input.height as u32,
                fir::PixelType::U8x3,
            ),
            resized_f32: Vec::new(),
            line_f32: Vec::new(),
        }
    }

    /// Appends the `3 * height * width` CHW values of `tile` of `image`, resampled by
    /// `resample` into `placement`, to `out`. Errors if the placement does not fit the input.
    pub fn push_tile(
        &mut self,
        image: &RgbImage,
        tile: &Tile,
        placement: &Placement,
        resample: Resample,
        out: &mut Vec<f32>,
    ) -> Result<(), String> {
        let (width, height) = (self.input.width as u32, self.input.height as u32);
        if placement.width == 0
            || placement.height == 0
            || placement.x + placement.width > width
            || placement.y + placement.height > height
        {
            return Err(format!(
                "placement {placement:?} does not fit the {width}x{height} input"
            ));
        }
        // Tile rectangles are f32: the last tile of a row can end a rounding error past the edge.
        let (x, y) = (tile.x.max(0.0) as f64, tile.y.max(0.0) as f64);
        let window = (
            x,
            y,
            (tile.width as f64).min(image.width as f64 - x),
            (tile.height as f64).min(image.height as f64 - y),
        );
        match resample {
            Resample::F32 => {
                resample_f32(
                    image,
                    window,
                    (placement.width, placement.height),
                    &mut self.line_f32,
                    &mut self.resized_f32,
                );
                self.normalise(&self.resized_f32, placement, out);
            }
            Resample::U8 => {
                self.resize_u8(image, window, placement)?;
                self.normalise(self.resized_u8.buffer(), placement, out);
            }
        }
        Ok(())
    }

    fn resize_u8(
        &mut self,
        image: &RgbImage,
        (x, y, width, height): (f64, f64, f64, f64),
        placement: &Placement,
    ) -> Result<(), String> {
        if (self.resized_u8.width(), self.resized_u8.height())
            != (placement.width, placement.height)
        {
            self.resized_u8 =
                fir::images::Image::new(placement.width, placement.height, fir::PixelType::U8x3);
        }
        let source = fir::images::ImageRef::new(
            image.width,
            image.height,
            &image.pixels,
            fir::PixelType::U8x3,
        )
        .map_err(|e| e.to_string())?;
        let options = fir::ResizeOptions::new()
            .resize_alg(fir::ResizeAlg::Convolution(fir::FilterType::Bilinear))
            .crop(x, y, width, height);
        self.resizer
            .resize(&source, &mut self.resized_u8, &options)
            .map_err(|e| e.to_string())
    }

    /// Appends the CHW tensor of the resized tile `resized` (packed RGB grey levels) placed at
    /// `placement`, normalised with the manifest's mean and std, margins 0.
    fn normalise<T: Copy + Into<f32>>(
        &self,
        resized: &[T],
        placement: &Placement,
        out: &mut Vec<f32>,
    ) {
        let plane = self.input.width * self.input.height;
        let start = out.len();
        out.resize(start + 3 * plane, 0.0);
        let (x0, y0) = (placement.x as usize, placement.y as usize);
        let placed_width = placement.width as usize;
        let tensor = &mut out[start..];
        // Channel c of the tensor takes RGB channel `order[c]`.
        let order = if self.input.channels == "BGR" {
            [2, 1, 0]
        } else {
            [0, 1, 2]
        };
        for (c, &source_channel) in order.iter().enumerate() {
            let scale = 1.0 / (255.0 * self.input.std[c]);
            let offset = self.input.mean[c] / self.input.std[c];
            let dst = &mut tensor[c * plane..(c + 1) * plane];
            let rows = resized.chunks_exact(3 * placed_width);
            for (y, source_row) in rows.enumerate() {
                let row_start = (y0 + y) * self.input.width + x0;
                let dst_row = &mut dst[row_start..row_start + placed_width];
                for (d, px) in dst_row.iter_mut().zip(source_row.chunks_exact(3)) {
                    *d = px[source_channel].into() * scale - offset;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    const BOTH: [Resample; 2] = [Resample::F32, Resample::U8];

    fn spec(width: usize, height: usize, channels: &str) -> InputSpec {
        InputSpec {
            name: "x".into(),
            width,
            height,
            layout: "NCHW".into(),
            channels: channels.into(),
            mean: [0.5, 0.25, 0.0],
            std: [0.5, 0.25, 1.0],
        }
    }

    /// No normalisation: the tensor holds the resampled pixels in [0, 1].
    fn plain(width: usize, height: usize) -> InputSpec {
        InputSpec {
            mean: [0.0; 3],
            std: [1.0; 3],
            ..spec(width, height, "RGB")
        }
    }

    fn everywhere(width: u32, height: u32) -> Placement {
        Placement {
            x: 0,
            y: 0,
            width,
            height,
        }
    }

    fn whole(image: &RgbImage) -> Tile {
        Tile {
            x: 0.0,
            y: 0.0,
            width: image.width as f32,
            height: image.height as f32,
        }
    }

    /// The CHW tensor of `tile` of `image` resampled to `out_w x out_h`, unnormalised.
    fn resampled(
        image: &RgbImage,
        tile: &Tile,
        (out_w, out_h): (u32, u32),
        r: Resample,
    ) -> Vec<f32> {
        let mut p = Preprocessor::new(&plain(out_w as usize, out_h as usize));
        let mut out = Vec::new();
        p.push_tile(image, tile, &everywhere(out_w, out_h), r, &mut out)
            .unwrap();
        out
    }

    /// An image whose red channel is `grey` (row-major), green 255 - grey, blue 7.
    fn grey_image(width: u32, height: u32, grey: &[u8]) -> RgbImage {
        let pixels = grey.iter().flat_map(|&g| [g, 255 - g, 7]).collect();
        RgbImage::new(width, height, pixels).unwrap()
    }

    fn assert_close(got: &[f32], want: &[f64], tol: f64, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (*g as f64 - w).abs() <= tol,
                "{what}: index {i}: {g} vs {w}"
            );
        }
    }

    // Hand-computed antialiased bilinear weights (torch `antialias=True`): output pixel i centred
    // at c = (i + 0.5) * scale, support s = max(scale, 1), source pixel j weighs
    // max(0, 1 - |j + 0.5 - c| / s), normalised.
    //
    // 6 -> 4: scale 1.5, s 1.5.
    //   i=0, c=0.75: j=0 |-0.25|/1.5 = 1/6 -> 5/6; j=1 0.75/1.5 -> 1/2; j=2 1.75/1.5 > 1 -> 0.
    //          sum 4/3 -> 5/8, 3/8.
    //   i=1, c=2.25: j=1 -> 1/2; j=2 0.25/1.5 -> 5/6; j=3 1.25/1.5 -> 1/6; sum 3/2
    //          -> 1/3, 5/9, 1/9.
    //   i=2, c=3.75: mirror of i=1 over j = 2..4 -> 1/9, 5/9, 1/3.
    //   i=3, c=5.25: j=4 -> 1/2, j=5 -> 5/6 -> 3/8, 5/8.
    const W6TO4: [[f64; 6]; 4] = [
        [5.0 / 8.0, 3.0 / 8.0, 0.0, 0.0, 0.0, 0.0],
        [0.0, 1.0 / 3.0, 5.0 / 9.0, 1.0 / 9.0, 0.0, 0.0],
        [0.0, 0.0, 1.0 / 9.0, 5.0 / 9.0, 1.0 / 3.0, 0.0],
        [0.0, 0.0, 0.0, 0.0, 3.0 / 8.0, 5.0 / 8.0],
    ];
    // 5 -> 2: scale 2.5, s 2.5.
    //   i=0, c=1.25: j=0 0.75/2.5 -> 0.7; j=1 0.25/2.5 -> 0.9; j=2 1.25/2.5 -> 0.5;
    //          j=3 2.25/2.5 -> 0.1; j=4 -> 0. Sum 2.2 -> 7/22, 9/22, 5/22, 1/22, 0.
    //   i=1, c=3.75: the mirror image.
    const W5TO2: [[f64; 5]; 2] = [
        [7.0 / 22.0, 9.0 / 22.0, 5.0 / 22.0, 1.0 / 22.0, 0.0],
        [0.0, 1.0 / 22.0, 5.0 / 22.0, 9.0 / 22.0, 7.0 / 22.0],
    ];
    // 3 -> 5 (upscaling): scale 0.6, s 1: half-pixel bilinear, clamped at the borders.
    //   i=0, c=0.3: j=0 -> 0.8, j=1 |1.5-0.3| > 1 -> 0: pixel 0 alone.
    //   i=1, c=0.9: j=0 0.4 -> 0.6; j=1 0.6 -> 0.4.
    //   i=2, c=1.5: j=1 -> 1 (j=0, j=2 at distance 1 -> 0).
    //   i=3, c=2.1: j=1 -> 0.4; j=2 -> 0.6.
    //   i=4, c=2.7: j=2 -> 0.8 alone: pixel 2.
    const W3TO5: [[f64; 3]; 5] = [
        [1.0, 0.0, 0.0],
        [0.6, 0.4, 0.0],
        [0.0, 1.0, 0.0],
        [0.0, 0.4, 0.6],
        [0.0, 0.0, 1.0],
    ];

    fn apply<const N: usize>(weights: &[[f64; N]], row: &[u8]) -> Vec<f64> {
        weights
            .iter()
            .map(|w| w.iter().zip(row).map(|(w, &v)| w * v as f64 / 255.0).sum())
            .collect()
    }

    #[test]
    fn float_resampling_matches_hand_computed_weights_in_1d() {
        let row6 = [0u8, 90, 0, 255, 30, 60];
        let row5 = [200u8, 10, 100, 0, 250];
        let row3 = [10u8, 250, 40];
        for (row, weights, out) in [
            (&row6[..], apply(&W6TO4, &row6), 4),
            (&row5[..], apply(&W5TO2, &row5), 2),
            (&row3[..], apply(&W3TO5, &row3), 5),
        ] {
            let n = row.len() as u32;
            // Along x (a single row) and along y (a single column).
            let horizontal = grey_image(n, 1, row);
            let got = resampled(&horizontal, &whole(&horizontal), (out, 1), Resample::F32);
            let red = &got[..out as usize];
            assert_close(red, &weights, 1e-6, &format!("{n} -> {out} along x"));
            let green: Vec<f64> = weights.iter().map(|v| 1.0 - v).collect();
            assert_close(&got[out as usize..2 * out as usize], &green, 1e-6, "green");
            assert_close(
                &got[2 * out as usize..],
                &vec![7.0 / 255.0; out as usize],
                1e-6,
                "blue",
            );
            let vertical = grey_image(1, n, row);
            let got = resampled(&vertical, &whole(&vertical), (1, out), Resample::F32);
            assert_close(
                &got[..out as usize],
                &weights,
                1e-6,
                &format!("{n} -> {out} along y"),
            );
        }
    }

    #[test]
    fn float_resampling_matches_hand_computed_weights_in_2d() {
        // 6 wide x 5 high -> 4 x 2: out[i][j] = sum over k, l of W5TO2[i][k] W6TO4[j][l] in[k][l].
        let grey: Vec<u8> = (0..30u32)
            .map(|p| ((p % 6) * 37 + (p / 6) * 53 + (p * p) % 11) as u8)
            .collect();
        let image = grey_image(6, 5, &grey);
        let mut want = Vec::new();
        for wy in &W5TO2 {
            for wx in &W6TO4 {
                let mut v = 0.0;
                for (k, a) in wy.iter().enumerate() {
                    for (l, b) in wx.iter().enumerate() {
                        v += a * b * grey[k * 6 + l] as f64 / 255.0;
                    }
                }
                want.push(v);
            }
        }
        let got = resampled(&image, &whole(&image), (4, 2), Resample::F32);
        assert_close(&got[..8], &want, 1e-6, "6x5 -> 4x2");
        // 3x3 -> 5x5 upscaling.
        let grey = [0u8, 100, 200, 50, 255, 25, 120, 30, 90];
        let image = grey_image(3, 3, &grey);
        let mut want = Vec::new();
        for wy in &W3TO5 {
            for wx in &W3TO5 {
                let mut v = 0.0;
                for (k, a) in wy.iter().enumerate() {
                    for (l, b) in wx.iter().enumerate() {
                        v += a * b * grey[k * 3 + l] as f64 / 255.0;
                    }
                }
                want.push(v);
            }
        }
        let got = resampled(&image, &whole(&image), (5, 5), Resample::F32);
        assert_close(&got[..25], &want, 1e-6, "3x3 -> 5x5");
    }

    /// torch's `_upsample_bilinear2d_aa` weights along one axis, written from its formula
    /// (window bounds by truncation of `centre -/+ support + 0.5`), extended to a window
    /// `[start, start + len)` of the axis.
    fn torch_weights(size: usize, start: f64, len: f64, out: usize, i: usize) -> Vec<(usize, f64)> {
        let scale = len / out as f64;
        let support = if scale >= 1.0 { scale } else { 1.0 };
        let invscale = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
        let centre = start + scale * (i as f64 + 0.5);
        let xmin = ((centre - support + 0.5) as i64).max(0) as usize;
        let xmax = ((centre + support + 0.5) as i64).min(size as i64) as usize;
        let filter = |x: f64| if x.abs() < 1.0 { 1.0 - x.abs() } else { 0.0 };
        let w: Vec<(usize, f64)> = (xmin..xmax)
            .map(|j| (j, filter((j as f64 - centre + 0.5) * invscale)))
            .collect();
        let total: f64 = w.iter().map(|p| p.1).sum();
        w.into_iter().map(|(j, v)| (j, v / total)).collect()
    }

    /// Brute force: every output pixel as the full 2-D weighted sum, in f64, over the tile's
    /// window cut at the frame's edge.
    fn brute_force(image: &RgbImage, tile: &Tile, (out_w, out_h): (usize, usize)) -> Vec<f64> {
        let (w, h) = (image.width as usize, image.height as usize);
        let (x, y) = (tile.x as f64, tile.y as f64);
        let width = (x + tile.width as f64).min(w as f64) - x;
        let height = (y + tile.height as f64).min(h as f64) - y;
        let mut out = vec![0.0; 3 * out_w * out_h];
        for oy in 0..out_h {
            let wy = torch_weights(h, y, height, out_h, oy);
            for ox in 0..out_w {
                let wx = torch_weights(w, x, width, out_w, ox);
                for c in 0..3 {
                    let mut v = 0.0;
                    for &(y, a) in &wy {
                        for &(x, b) in &wx {
                            v += a * b * image.pixels[(y * w + x) * 3 + c] as f64 / 255.0;
                        }
                    }
                    out[c * out_w * out_h + oy * out_w + ox] = v;
                }
            }
        }
        out
    }

    #[test]
    fn float_resampling_matches_brute_force_torch_formula() {
        let mut rng = StdRng::seed_from_u64(8);
        for case in 0..40 {
            let (w, h) = (rng.random_range(1..60u32), rng.random_range(1..60u32));
            let pixels = (0..w * h * 3).map(|_| rng.random::<u8>()).collect();
            let image = RgbImage::new(w, h, pixels).unwrap();
            // Half the cases the whole image, half a sub-pixel crop.
            let tile = if case % 2 == 0 {
                whole(&image)
            } else {
                let tw = rng.random_range(0.5..=w as f32);
                let th = rng.random_range(0.5..=h as f32);
                Tile {
                    x: rng.random_range(0.0..=w as f32 - tw),
                    y: rng.random_range(0.0..=h as f32 - th),
                    width: tw,
                    height: th,
                }
            };
            let out = (rng.random_range(1..50u32), rng.random_range(1..50u32));
            let got = resampled(&image, &tile, out, Resample::F32);
            let want = brute_force(&image, &tile, (out.0 as usize, out.1 as usize));
            assert_close(
                &got,
                &want,
                1e-6,
                &format!("case {case}: {w}x{h} {tile:?} -> {out:?}"),
            );
        }
        // The model's case: a 250x250 frame to 224x224, and a 3x3 tile of it upscaled.
        let pixels = (0..250 * 250 * 3).map(|_| rng.random::<u8>()).collect();
        let frame = RgbImage::new(250, 250, pixels).unwrap();
        let third = 250.0 / 3.0;
        for tile in [
            whole(&frame),
            Tile {
                x: third,
                y: 2.0 * third,
                width: third,
                height: third,
            },
        ] {
            let got = resampled(&frame, &tile, (224, 224), Resample::F32);
            assert_close(
                &got,
                &brute_force(&frame, &tile, (224, 224)),
                1e-6,
                &format!("{tile:?}"),
            );
        }
    }

    #[test]
    fn float_resampling_normalises_and_letterboxes() {
        // Normalisation and placement around the float resample: ((v - mean) / std) inside the
        // placement, 0 outside.
        let mut rng = StdRng::seed_from_u64(3);
        let pixels = (0..9 * 4 * 3).map(|_| rng.random::<u8>()).collect();
        let image = RgbImage::new(9, 4, pixels).unwrap();
        let input = spec(6, 6, "BGR");
        let placement = Placement {
            x: 0,
            y: 1,
            width: 6,
            height: 3,
        };
        let mut p = Preprocessor::new(&input);
        let mut out = Vec::new();
        p.push_tile(&image, &whole(&image), &placement, Resample::F32, &mut out)
            .unwrap();
        let raw = brute_force(&image, &whole(&image), (6, 3));
        for c in 0..3 {
            let source = 2 - c; // BGR
            for y in 0..6 {
                for x in 0..6 {
                    let got = out[c * 36 + y * 6 + x] as f64;
                    let want = if (1..4).contains(&y) {
                        let v = raw[source * 18 + (y - 1) * 6 + x];
                        (v - input.mean[c] as f64) / input.std[c] as f64
                    } else {
                        0.0
                    };
                    assert!(
                        (got - want).abs() < 1e-5,
                        "channel {c} ({x}, {y}): {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn u8_resampling_produces_the_old_tensor() {
        // Grey levels the 8-bit path gave before float resampling existed (fast_image_resize,
        // U8x3, bilinear convolution), for a whole 7x5 image and a sub-pixel crop, to 4x3.
        let pixels: Vec<u8> = (0..7 * 5 * 3)
            .map(|i: u32| ((i * 97 + 13) % 256) as u8)
            .collect();
        let image = RgbImage::new(7, 5, pixels).unwrap();
        let crop = Tile {
            x: 1.5,
            y: 0.5,
            width: 4.25,
            height: 3.5,
        };
        let old: [(Tile, [u8; 36]); 2] = [
            (
                whole(&image),
                [
                    26, 81, 145, 200, 114, 64, 128, 183, 126, 47, 111, 166, 123, 178, 191, 53, 106,
                    161, 185, 60, 89, 144, 208, 129, 208, 70, 83, 138, 201, 156, 66, 121, 186, 169,
                    49, 104,
                ],
            ),
            (
                crop,
                [
                    60, 97, 134, 171, 47, 84, 121, 158, 34, 71, 108, 145, 157, 194, 231, 91, 144,
                    181, 218, 78, 131, 168, 205, 211, 119, 35, 72, 109, 199, 96, 59, 96, 228, 116,
                    46, 83,
                ],
            ),
        ];
        for (tile, grey) in old {
            let got = resampled(&image, &tile, (4, 3), Resample::U8);
            let want: Vec<f32> = grey.iter().map(|&g| g as f32 * (1.0 / 255.0)).collect();
            assert_eq!(got, want, "{tile:?}");
            // The float path differs, by less than a grey level.
            let float = resampled(&image, &tile, (4, 3), Resample::F32);
            let gap = float
                .iter()
                .zip(&got)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(gap > 0.0 && gap <= 1.0 / 255.0, "{tile:?}: {gap}");
        }
    }

    #[test]
    fn resample_names() {
        assert_eq!("f32".parse(), Ok(Resample::F32));
        assert_eq!("u8".parse(), Ok(Resample::U8));
        assert!("u16".parse::<Resample>().is_err());
        assert_eq!(Resample::default(), Resample::F32);
        assert_eq!(Resample::U8.to_string(), "u8");
    }

    #[test]
    fn letterbox_fills_the_margins_with_the_mean() {
        for r in BOTH {
            let image = RgbImage::new(4, 2, [255u8, 0, 51].repeat(8)).unwrap();
            let mut p = Preprocessor::new(&spec(4, 4, "RGB"));
            let placement = Placement {
                x: 0,
                y: 1,
                width: 4,
                height: 2,
            };
            let mut out = vec![9.0]; // earlier content stays
            p.push_tile(&image, &whole(&image), &placement, r, &mut out)
                .unwrap();
            assert_eq!(out.len(), 1 + 3 * 16);
            assert_eq!(out[0], 9.0);
            for (c, want) in [1.0f32, -1.0, 0.2].iter().enumerate() {
                let plane = &out[1 + c * 16..1 + (c + 1) * 16];
                for (i, v) in plane.iter().enumerate() {
                    let inside = (4..12).contains(&i);
                    let want = if inside { *want } else { 0.0 };
                    assert!((v - want).abs() < 1e-5, "{r}: channel {c}: {plane:?}");
                }
            }
            let too_big = Placement { y: 3, ..placement };
            assert!(p
                .push_tile(&image, &whole(&image), &too_big, r, &mut out)
                .is_err());
        }
    }

    #[test]
    fn uniform_image_normalises_per_channel() {
        for r in BOTH {
            let image = RgbImage::new(5, 3, [255u8, 0, 51].repeat(15)).unwrap();
            let mut p = Preprocessor::new(&spec(4, 2, "RGB"));
            let mut out = Vec::new();
            p.push_tile(&image, &whole(&image), &everywhere(4, 2), r, &mut out)
                .unwrap();
            assert_eq!(out.len(), 3 * 8);
            // (1 - 0.5) / 0.5 = 1; (0 - 0.25) / 0.25 = -1; (0.2 - 0) / 1 = 0.2
            assert!(out[..8].iter().all(|v| (v - 1.0).abs() < 1e-5), "{r}");
            assert!(out[8..16].iter().all(|v| (v + 1.0).abs() < 1e-5), "{r}");
            assert!(out[16..].iter().all(|v| (v - 0.2).abs() < 1e-5), "{r}");
        }
    }

    #[test]
    fn crop_selects_the_tile_and_bgr_swaps_channels() {
        // Left half red, right half blue.
        let mut pixels = Vec::new();
        for _y in 0..4 {
            for x in 0..8 {
                pixels.extend_from_slice(if x < 4 { &[255, 0, 0] } else { &[0, 0, 255] });
            }
        }
        let image = RgbImage::new(8, 4, pixels).unwrap();
        for r in BOTH {
            let mut p = Preprocessor::new(&spec(2, 2, "BGR"));
            let mut out = Vec::new();
            let right = Tile {
                x: 4.0,
                y: 0.0,
                width: 4.0,
                height: 4.0,
            };
            p.push_tile(&image, &right, &everywhere(2, 2), r, &mut out)
                .unwrap();
            // The filter reads neighbouring pixels across the tile edge (as resizing the whole
            // frame would), so only output column 1, whose support lies inside the blue half, is
            // pure. Tensor channel 0 is blue = 1.0 -> (1 - 0.5) / 0.5 = 1; channel 2 is red = 0.
            for row in 0..2 {
                assert!((out[row * 2 + 1] - 1.0).abs() < 1e-5, "{r}: {out:?}");
                assert!(out[8 + row * 2 + 1].abs() < 1e-5, "{r}: {out:?}");
            }
            // Column 0 (centre 5, support 2: pixels 3..6, weights 1/4, 3/4, 3/4, 1/4 over 2)
            // takes 1/8 red from pixel 3: blue 7/8 -> 0.75, red 1/8 -> 0.125.
            assert!(
                (out[0] - 0.75).abs() < 0.01 && (out[8] - 0.125).abs() < 0.01,
                "{r}: {out:?}"
            );
        }
    }

    #[test]
    fn every_tile_of_uneven_grids_fits_the_frame() {
        // 250 px in thirds: the last tile ends at 166.67 + 83.33, a rounding error past 250.
        let image = RgbImage::new(250, 250, vec![128; 250 * 250 * 3]).unwrap();
        let mut p = Preprocessor::new(&spec(14, 14, "RGB"));
        for r in BOTH {
            for (n, overlap) in [(3, 0.0), (3, 0.3), (6, 0.3), (7, 0.3)] {
                let tiling = crate::detect::tiling::Tiling {
                    rows: n,
                    cols: n,
                    overlap,
                    ..crate::detect::tiling::Tiling::whole()
                };
                for tile in tiling.tiles(250, 250) {
                    let mut out = Vec::new();
                    p.push_tile(&image, &tile, &everywhere(14, 14), r, &mut out)
                        .unwrap_or_else(|e| panic!("{r} {n}x{n} tile {tile:?}: {e}"));
                    // A uniform frame stays uniform: (128/255 - 0.5) / 0.5.
                    let want = (128.0 / 255.0 - 0.5) / 0.5;
                    assert!(
                        out[..196].iter().all(|v| (v - want).abs() < 1e-5),
                        "{r} {tile:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn rejects_inconsistent_buffers() {
        assert!(RgbImage::new(2, 2, vec![0; 11]).is_err());
        assert!(RgbImage::new(0, 2, vec![]).is_err());
    }
}
