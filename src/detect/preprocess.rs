//! From pixels to the model's input tensor: crop a tile, resize it with antialiased bilinear
//! filtering into its placement in the model input (the whole input, aspect ratio not kept, as
//! the reference does; or letterboxed), scale to [0, 1] and normalise per channel into NCHW.
//! Input pixels outside the placement are 0: the normalisation mean.
//!
//! Resizing works on 8-bit pixels (fast, SIMD); the reference resizes floats, which differs by at
//! most half a grey level.

use super::tiling::{Placement, Tile};
use crate::engine::manifest::InputSpec;
use fast_image_resize as fir;

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

/// Turns tiles of images into normalised tensors; keeps its scratch buffers between calls.
pub struct Preprocessor {
    input: InputSpec,
    resizer: fir::Resizer,
    /// The resized tile, of its placement's size.
    resized: fir::images::Image<'static>,
}

impl Preprocessor {
    pub fn new(input: &InputSpec) -> Self {
        Preprocessor {
            input: input.clone(),
            resizer: fir::Resizer::new(),
            resized: fir::images::Image::new(
                input.width as u32,
                input.height as u32,
                fir::PixelType::U8x3,
            ),
        }
    }

    /// Appends the `3 * height * width` CHW values of `tile` of `image`, resized into
    /// `placement`, to `out`.
    pub fn push_tile(
        &mut self,
        image: &RgbImage,
        tile: &Tile,
        placement: &Placement,
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
        if (self.resized.width(), self.resized.height()) != (placement.width, placement.height) {
            self.resized =
                fir::images::Image::new(placement.width, placement.height, fir::PixelType::U8x3);
        }
        let source = fir::images::ImageRef::new(
            image.width,
            image.height,
            &image.pixels,
            fir::PixelType::U8x3,
        )
        .map_err(|e| e.to_string())?;
        // Tile rectangles are f32: the last tile of a row can end a rounding error past the edge.
        let (x, y) = (tile.x.max(0.0) as f64, tile.y.max(0.0) as f64);
        let width = (tile.width as f64).min(image.width as f64 - x);
        let height = (tile.height as f64).min(image.height as f64 - y);
        let options = fir::ResizeOptions::new()
            .resize_alg(fir::ResizeAlg::Convolution(fir::FilterType::Bilinear))
            .crop(x, y, width, height);
        self.resizer
            .resize(&source, &mut self.resized, &options)
            .map_err(|e| e.to_string())?;
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
            let rows = self.resized.buffer().chunks_exact(3 * placed_width);
            for (y, source_row) in rows.enumerate() {
                let row_start = (y0 + y) * self.input.width + x0;
                let dst_row = &mut dst[row_start..row_start + placed_width];
                for (d, px) in dst_row.iter_mut().zip(source_row.chunks_exact(3)) {
                    *d = px[source_channel] as f32 * scale - offset;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn everywhere(width: u32, height: u32) -> Placement {
        Placement {
            x: 0,
            y: 0,
            width,
            height,
        }
    }

    #[test]
    fn letterbox_fills_the_margins_with_the_mean() {
        let image = RgbImage::new(4, 2, [255u8, 0, 51].repeat(8)).unwrap();
        let mut p = Preprocessor::new(&spec(4, 4, "RGB"));
        let whole = Tile {
            x: 0.0,
            y: 0.0,
            width: 4.0,
            height: 2.0,
        };
        let placement = Placement {
            x: 0,
            y: 1,
            width: 4,
            height: 2,
        };
        let mut out = vec![9.0]; // earlier content stays
        p.push_tile(&image, &whole, &placement, &mut out).unwrap();
        assert_eq!(out.len(), 1 + 3 * 16);
        assert_eq!(out[0], 9.0);
        for (c, want) in [1.0f32, -1.0, 0.2].iter().enumerate() {
            let plane = &out[1 + c * 16..1 + (c + 1) * 16];
            for (i, v) in plane.iter().enumerate() {
                let inside = (4..12).contains(&i);
                let want = if inside { *want } else { 0.0 };
                assert!((v - want).abs() < 1e-5, "channel {c}: {plane:?}");
            }
        }
        let too_big = Placement { y: 3, ..placement };
        assert!(p.push_tile(&image, &whole, &too_big, &mut out).is_err());
    }

    #[test]
    fn uniform_image_normalises_per_channel() {
        let image = RgbImage::new(5, 3, [255u8, 0, 51].repeat(15)).unwrap();
        let mut p = Preprocessor::new(&spec(4, 2, "RGB"));
        let mut out = Vec::new();
        let whole = Tile {
            x: 0.0,
            y: 0.0,
            width: 5.0,
            height: 3.0,
        };
        p.push_tile(&image, &whole, &everywhere(4, 2), &mut out)
            .unwrap();
        assert_eq!(out.len(), 3 * 8);
        // (1 - 0.5) / 0.5 = 1; (0 - 0.25) / 0.25 = -1; (0.2 - 0) / 1 = 0.2
        assert!(out[..8].iter().all(|v| (v - 1.0).abs() < 1e-5));
        assert!(out[8..16].iter().all(|v| (v + 1.0).abs() < 1e-5));
        assert!(out[16..].iter().all(|v| (v - 0.2).abs() < 1e-5));
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
        let mut p = Preprocessor::new(&spec(2, 2, "BGR"));
        let mut out = Vec::new();
        let right = Tile {
            x: 4.0,
            y: 0.0,
            width: 4.0,
            height: 4.0,
        };
        p.push_tile(&image, &right, &everywhere(2, 2), &mut out)
            .unwrap();
        // The filter reads neighbouring pixels across the tile edge (as resizing the whole frame
        // would), so only output column 1, whose support lies inside the blue half, is pure.
        // Tensor channel 0 is blue = 1.0 -> (1 - 0.5) / 0.5 = 1; channel 2 is red = 0.
        for row in 0..2 {
            assert!((out[row * 2 + 1] - 1.0).abs() < 1e-5, "{out:?}");
            assert!(out[8 + row * 2 + 1].abs() < 1e-5, "{out:?}");
        }
        // Column 0 mixes in some red from the left half: blue below 1, red above 0.
        assert!(out[0] < 0.99 && out[8] > 0.01, "{out:?}");
    }

    #[test]
    fn every_tile_of_uneven_grids_fits_the_frame() {
        // 250 px in thirds: the last tile ends at 166.67 + 83.33, a rounding error past 250.
        let image = RgbImage::new(250, 250, vec![128; 250 * 250 * 3]).unwrap();
        let mut p = Preprocessor::new(&spec(14, 14, "RGB"));
        for (n, overlap) in [(3, 0.0), (3, 0.3), (6, 0.3), (7, 0.3)] {
            let tiling = crate::detect::tiling::Tiling {
                rows: n,
                cols: n,
                overlap,
                ..crate::detect::tiling::Tiling::whole()
            };
            for tile in tiling.tiles(250, 250) {
                let mut out = Vec::new();
                p.push_tile(&image, &tile, &everywhere(14, 14), &mut out)
                    .unwrap_or_else(|e| panic!("{n}x{n} tile {tile:?}: {e}"));
            }
        }
    }

    #[test]
    fn rejects_inconsistent_buffers() {
        assert!(RgbImage::new(2, 2, vec![0; 11]).is_err());
        assert!(RgbImage::new(0, 2, vec![]).is_err());
    }
}
