//! Patch features from stage tokens, as the LogSAD reference computes them: drop the prefix
//! (class/register) tokens, upsample the token grid x2 (bilinear, align_corners=True) and
//! L2-normalise every patch vector of every stage.

use super::resize::upsample_bilinear_align_corners;

/// The per-stage patch features of one image (or tile).
#[derive(Debug, Clone, PartialEq)]
pub struct PatchFeatures {
    /// Grid of patches after upsampling.
    pub height: usize,
    pub width: usize,
    pub dim: usize,
    /// One `height * width * dim` row-major matrix per stage; every row has unit length.
    pub stages: Vec<Vec<f32>>,
}

impl PatchFeatures {
    pub fn patches(&self) -> usize {
        self.height * self.width
    }
}

/// Token layout of one stage output.
#[derive(Debug, Clone, Copy)]
pub struct Grid {
    pub prefix_tokens: usize,
    pub height: usize,
    pub width: usize,
    pub dim: usize,
}

impl Grid {
    pub fn tokens(&self) -> usize {
        self.prefix_tokens + self.height * self.width
    }
}

/// Builds the features of image `index` of a batch from its stage outputs
/// (each `batch * grid.tokens() * grid.dim` values).
pub fn patch_features(
    stages: &[Vec<f32>],
    index: usize,
    grid: Grid,
    upsample: usize,
) -> PatchFeatures {
    let per_image = grid.tokens() * grid.dim;
    let (out_h, out_w) = (grid.height * upsample, grid.width * upsample);
    let stages = stages
        .iter()
        .map(|stage| {
            let image = &stage[index * per_image..(index + 1) * per_image];
            let patches = &image[grid.prefix_tokens * grid.dim..];
            let mut features = if upsample == 1 {
                patches.to_vec()
            } else {
                upsample_bilinear_align_corners(
                    patches,
                    grid.height,
                    grid.width,
                    grid.dim,
                    out_h,
                    out_w,
                )
            };
            normalise_rows(&mut features, grid.dim);
            features
        })
        .collect();
    PatchFeatures {
        height: out_h,
        width: out_w,
        dim: grid.dim,
        stages,
    }
}

/// Scales every `dim`-long row to unit length (rows of zeros stay zero).
pub fn normalise_rows(values: &mut [f32], dim: usize) {
    for row in values.chunks_exact_mut(dim) {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        if norm > 0.0 {
            row.iter_mut().for_each(|v| *v /= norm);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_prefix_and_normalises() {
        // 1 prefix token, 1x2 grid, dim 2, one stage, batch of 2: pick image 1.
        let grid = Grid {
            prefix_tokens: 1,
            height: 1,
            width: 2,
            dim: 2,
        };
        let image0 = [9.0, 9.0, 1.0, 0.0, 0.0, 1.0];
        let image1 = [7.0, 7.0, 3.0, 4.0, 0.0, 2.0];
        let stage: Vec<f32> = image0.iter().chain(&image1).copied().collect();
        let f = patch_features(&[stage], 1, grid, 1);
        assert_eq!((f.height, f.width, f.dim), (1, 2, 2));
        let want = [0.6, 0.8, 0.0, 1.0];
        for (a, b) in f.stages[0].iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{:?}", f.stages[0]);
        }
    }

    #[test]
    fn upsamples_before_normalising() {
        // A 1x2 grid upsampled x2 to 2x4 with align_corners: columns at 0, 1/3, 2/3, 1.
        let grid = Grid {
            prefix_tokens: 0,
            height: 1,
            width: 2,
            dim: 2,
        };
        let stage = vec![1.0, 0.0, 0.0, 1.0];
        let f = patch_features(&[stage], 0, grid, 2);
        assert_eq!((f.height, f.width), (2, 4));
        // Column 1 interpolates to (2/3, 1/3) before normalisation.
        let (a, b) = (2.0f32 / 3.0, 1.0f32 / 3.0);
        let n = (a * a + b * b).sqrt();
        assert!((f.stages[0][2] - a / n).abs() < 1e-6);
        assert!((f.stages[0][3] - b / n).abs() < 1e-6);
        // Both rows are equal: the source has one row.
        assert_eq!(f.stages[0][..8], f.stages[0][8..]);
    }
}
