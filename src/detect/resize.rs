//! Bilinear resampling of float grids, with the two PyTorch conventions the reference code uses.
//!
//! - [`upsample_bilinear_align_corners`]: the token grid is upsampled (32x32 -> 64x64) with
//!   `F.interpolate(mode="bilinear", align_corners=True)`; reproducing it keeps patch features,
//!   and so memory banks and scores, comparable with the reference implementation.
//! - [`resize_bilinear_map`]: anomaly maps are resized to frame or mask size with half-pixel
//!   centres (`align_corners=False`, no antialias), the usual image-resize convention.
//!
//! Coordinates and weights are computed in `f32` with the same formulas as PyTorch's CPU kernels,
//! so results agree to rounding.

/// Source taps for one output coordinate: lower index, upper index, weight of the upper one.
pub(crate) type Tap = (usize, usize, f32);

pub(crate) fn taps_align_corners(input: usize, output: usize) -> Vec<Tap> {
    let scale = if output > 1 {
        (input - 1) as f32 / (output - 1) as f32
    } else {
        0.0
    };
    (0..output)
        .map(|o| {
            let src = scale * o as f32;
            let i0 = (src as usize).min(input - 1);
            let i1 = if i0 < input - 1 { i0 + 1 } else { i0 };
            (i0, i1, src - i0 as f32)
        })
        .collect()
}

fn taps_half_pixel(input: usize, output: usize) -> Vec<Tap> {
    let scale = input as f32 / output as f32;
    (0..output)
        .map(|o| {
            let src = (scale * (o as f32 + 0.5) - 0.5).max(0.0);
            let i0 = (src as usize).min(input - 1);
            let i1 = if i0 < input - 1 { i0 + 1 } else { i0 };
            (i0, i1, src - i0 as f32)
        })
        .collect()
}

/// Upsamples (or resamples) an HWC grid of `h x w` cells with `channels` values each to
/// `out_h x out_w`, bilinearly with `align_corners=True`: output coordinate `i` maps to input
/// coordinate `i * (in - 1) / (out - 1)` (0 when `out == 1`), so corner cells are preserved.
///
/// Equivalent to PyTorch
/// `F.interpolate(x.permute(2, 0, 1)[None], size=(out_h, out_w), mode="bilinear",
/// align_corners=True)[0].permute(1, 2, 0)` for `x` of shape `(h, w, channels)`: each channel is
/// interpolated independently, only the memory layout differs from NCHW.
///
/// # Panics
/// If `src.len() != h * w * channels`, or the input is empty while the output is not.
pub fn upsample_bilinear_align_corners(
    src: &[f32],
    h: usize,
    w: usize,
    channels: usize,
    out_h: usize,
    out_w: usize,
) -> Vec<f32> {
    assert_eq!(src.len(), h * w * channels, "source size mismatch");
    if out_h == 0 || out_w == 0 || channels == 0 {
        return Vec::new();
    }
    assert!(h > 0 && w > 0, "cannot resample an empty grid");
    let ys = taps_align_corners(h, out_h);
    let xs = taps_align_corners(w, out_w);
    let c = channels;
    let mut out = vec![0.0f32; out_h * out_w * c];
    let pixel = |y: usize, x: usize| &src[(y * w + x) * c..(y * w + x + 1) * c];
    for (oy, &(y0, y1, ty)) in ys.iter().enumerate() {
        let (h0l, h1l) = (1.0 - ty, ty);
        for (ox, &(x0, x1, tx)) in xs.iter().enumerate() {
            let (w0l, w1l) = (1.0 - tx, tx);
            let (a, b, cc, d) = (pixel(y0, x0), pixel(y0, x1), pixel(y1, x0), pixel(y1, x1));
            let dst = &mut out[(oy * out_w + ox) * c..(oy * out_w + ox + 1) * c];
            for k in 0..c {
                // PyTorch's evaluation order.
                dst[k] = h0l * (w0l * a[k] + w1l * b[k]) + h1l * (w0l * cc[k] + w1l * d[k]);
            }
        }
    }
    out
}

/// Resizes a single-channel row-major `w x h` map to `out_w x out_h`, bilinearly with half-pixel
/// centres: output cell `i` samples input coordinate `(i + 0.5) * in / out - 0.5`, clamped to the
/// grid (PyTorch `align_corners=False`, `antialias=False`). Downscaling therefore interpolates
/// between the nearest input cells rather than averaging whole areas.
///
/// # Panics
/// If `src.len() != w * h`, or the input is empty while the output is not.
pub fn resize_bilinear_map(
    src: &[f32],
    w: usize,
    h: usize,
    out_w: usize,
    out_h: usize,
) -> Vec<f32> {
    assert_eq!(src.len(), w * h, "map size mismatch");
    if out_h == 0 || out_w == 0 {
        return Vec::new();
    }
    assert!(h > 0 && w > 0, "cannot resize an empty map");
    if (w, h) == (out_w, out_h) {
        return src.to_vec();
    }
    let ys = taps_half_pixel(h, out_h);
    let xs = taps_half_pixel(w, out_w);
    let mut out = Vec::with_capacity(out_w * out_h);
    for &(y0, y1, ty) in &ys {
        let (h0l, h1l) = (1.0 - ty, ty);
        let (r0, r1) = (&src[y0 * w..(y0 + 1) * w], &src[y1 * w..(y1 + 1) * w]);
        for &(x0, x1, tx) in &xs {
            let (w0l, w1l) = (1.0 - tx, tx);
            out.push(h0l * (w0l * r0[x0] + w1l * r0[x1]) + h1l * (w0l * r1[x0] + w1l * r1[x1]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_close(got: &[f32], want: &[f32], tol: f32) {
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= tol, "index {i}: {g} vs {w}\n{got:?}");
        }
    }

    const SQUARE: [f32; 4] = [0.0, 1.0, 2.0, 3.0]; // [[0, 1], [2, 3]]

    #[test]
    fn align_corners_2x2_to_3x3() {
        let out = upsample_bilinear_align_corners(&SQUARE, 2, 2, 1, 3, 3);
        assert_close(&out, &[0.0, 0.5, 1.0, 1.0, 1.5, 2.0, 2.0, 2.5, 3.0], 1e-7);
    }

    #[test]
    fn align_corners_2x2_to_4x4() {
        // Coordinates i/3: value = 2 * y/3 + x/3.
        let out = upsample_bilinear_align_corners(&SQUARE, 2, 2, 1, 4, 4);
        let mut want = Vec::new();
        for y in 0..4 {
            for x in 0..4 {
                want.push(2.0 * y as f32 / 3.0 + x as f32 / 3.0);
            }
        }
        assert_close(&out, &want, 1e-6);
        assert_eq!(out[0], 0.0);
        assert_eq!(out[3], 1.0);
        assert_eq!(out[12], 2.0);
        assert_eq!(out[15], 3.0);
    }

    #[test]
    fn align_corners_multichannel_hwc() {
        // Channel 1 = 10 * channel 0 + 1, channel 2 = -channel 0: interpolation is per channel.
        let src: Vec<f32> = SQUARE
            .iter()
            .flat_map(|&v| [v, 10.0 * v + 1.0, -v])
            .collect();
        let out = upsample_bilinear_align_corners(&src, 2, 2, 3, 3, 3);
        let single = upsample_bilinear_align_corners(&SQUARE, 2, 2, 1, 3, 3);
        for (p, &v) in single.iter().enumerate() {
            assert_close(&out[p * 3..p * 3 + 3], &[v, 10.0 * v + 1.0, -v], 1e-5);
        }
    }

    #[test]
    fn align_corners_reproduces_linear_functions() {
        // Bilinear interpolation is exact on a*y + b*x + c; the sample point is
        // (i * (h-1)/(oh-1), j * (w-1)/(ow-1)).
        let (h, w, oh, ow) = (4, 5, 8, 13);
        let f = |y: f32, x: f32| 0.7 * y - 0.3 * x + 2.0;
        let src: Vec<f32> = (0..h * w)
            .map(|i| f((i / w) as f32, (i % w) as f32))
            .collect();
        let out = upsample_bilinear_align_corners(&src, h, w, 1, oh, ow);
        for i in 0..oh {
            for j in 0..ow {
                let y = i as f32 * (h - 1) as f32 / (oh - 1) as f32;
                let x = j as f32 * (w - 1) as f32 / (ow - 1) as f32;
                assert!((out[i * ow + j] - f(y, x)).abs() < 1e-5);
            }
        }
        // Corners preserved.
        assert_eq!(out[0], src[0]);
        assert_eq!(out[ow - 1], src[w - 1]);
        assert_eq!(out[(oh - 1) * ow], src[(h - 1) * w]);
        assert_eq!(out[oh * ow - 1], src[h * w - 1]);
    }

    #[test]
    fn align_corners_identity_and_degenerate() {
        let src: Vec<f32> = (0..12).map(|i| i as f32 * 0.25).collect();
        assert_eq!(upsample_bilinear_align_corners(&src, 3, 2, 2, 3, 2), src);
        // One output cell samples the first input cell (scale 0, as PyTorch).
        assert_eq!(
            upsample_bilinear_align_corners(&SQUARE, 2, 2, 1, 1, 1),
            vec![0.0]
        );
        // A single input row is repeated.
        let out = upsample_bilinear_align_corners(&[1.0, 3.0], 1, 2, 1, 2, 3);
        assert_close(&out, &[1.0, 2.0, 3.0, 1.0, 2.0, 3.0], 1e-7);
        assert!(upsample_bilinear_align_corners(&SQUARE, 2, 2, 1, 0, 5).is_empty());
    }

    #[test]
    fn half_pixel_2x2_to_4x4() {
        // Source coordinates (i + 0.5) / 2 - 0.5 = -0.25 (clamped to 0), 0.25, 0.75, 1.25
        // (upper tap clamped): weights 0, 0.25, 0.75, 1.
        let r = [0.0, 0.25, 0.75, 1.0];
        let out = resize_bilinear_map(&SQUARE, 2, 2, 4, 4);
        let want: Vec<f32> = (0..16).map(|i| 2.0 * r[i / 4] + r[i % 4]).collect();
        assert_close(&out, &want, 1e-7);
    }

    #[test]
    fn half_pixel_downscale() {
        // 4x4 -> 2x2 samples at 0.5 and 2.5: the mean of each 2x2 block for a linear ramp.
        let src: Vec<f32> = (0..16).map(|i| i as f32).collect();
        let out = resize_bilinear_map(&src, 4, 4, 2, 2);
        assert_close(&out, &[2.5, 4.5, 10.5, 12.5], 1e-6);
        // 2x2 -> 1x1 samples the centre.
        assert_close(&resize_bilinear_map(&SQUARE, 2, 2, 1, 1), &[1.5], 1e-7);
        // Non-square: 3 wide x 1 high -> 6 wide x 2 high.
        let out = resize_bilinear_map(&[0.0, 3.0, 6.0], 3, 1, 6, 2);
        // x sources: -0.25->0, 0.25, 0.75, 1.25, 1.75, 2.25 (upper tap clamped at 2).
        let row = [0.0, 0.75, 2.25, 3.75, 5.25, 6.0];
        let want: Vec<f32> = row.iter().chain(row.iter()).copied().collect();
        assert_close(&out, &want, 1e-6);
    }

    #[test]
    fn half_pixel_identity_and_linear_interior() {
        let src: Vec<f32> = (0..15).map(|i| (i * 37 % 11) as f32).collect();
        assert_eq!(resize_bilinear_map(&src, 5, 3, 5, 3), src);
        // Exact on linear functions away from the clamped border.
        let (w, h, ow, oh) = (6, 4, 15, 10);
        let f = |y: f32, x: f32| 1.5 * x - 0.5 * y + 0.25;
        let src: Vec<f32> = (0..w * h)
            .map(|i| f((i / w) as f32, (i % w) as f32))
            .collect();
        let out = resize_bilinear_map(&src, w, h, ow, oh);
        for i in 0..oh {
            for j in 0..ow {
                let y = (i as f32 + 0.5) * h as f32 / oh as f32 - 0.5;
                let x = (j as f32 + 0.5) * w as f32 / ow as f32 - 0.5;
                let (yc, xc) = (y.clamp(0.0, (h - 1) as f32), x.clamp(0.0, (w - 1) as f32));
                assert!((out[i * ow + j] - f(yc, xc)).abs() < 1e-5, "({i}, {j})");
            }
        }
    }

    #[test]
    #[should_panic(expected = "map size mismatch")]
    fn size_mismatch_panics() {
        resize_bilinear_map(&[0.0; 5], 2, 2, 4, 4);
    }
}
