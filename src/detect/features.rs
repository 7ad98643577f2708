//! Patch features from stage tokens, as the LogSAD reference computes them: drop the prefix
//! (class/register) tokens, upsample the token grid x2 (bilinear, align_corners=True) and
//! L2-normalise every patch vector of every stage.
//!
//! The raw tokens are kept and the upsampled, normalised vectors are formed only where needed:
//! upsampling is linear, so the matching step (`patch`) works on the raw grid, 4x smaller per
//! axis pair, and rescales by the norms of the upsampled vectors.

use super::resize::upsample_bilinear_align_corners;

/// The per-stage patch tokens of one image (or tile).
#[derive(Debug, Clone, PartialEq)]
pub struct PatchFeatures {
    /// Token grid as the model gave it.
    pub grid_height: usize,
    pub grid_width: usize,
    /// Upsampling factor of the grid before matching (2 in the reference).
    pub upsample: usize,
    pub dim: usize,
    /// One `grid_height * grid_width * dim` row-major matrix of raw tokens per stage.
    pub tokens: Vec<Vec<f32>>,
}

impl PatchFeatures {
    /// Height of the upsampled grid: the anomaly map's height.
    pub fn height(&self) -> usize {
        self.grid_height * self.upsample
    }

    pub fn width(&self) -> usize {
        self.grid_width * self.upsample
    }

    /// Cells of the upsampled grid.
    pub fn patches(&self) -> usize {
        self.height() * self.width()
    }

    /// The upsampled (not normalised) vectors of one stage: `patches() * dim`.
    pub fn upsampled(&self, stage: usize) -> Vec<f32> {
        let tokens = &self.tokens[stage];
        if self.upsample == 1 {
            return tokens.clone();
        }
        upsample_bilinear_align_corners(
            tokens,
            self.grid_height,
            self.grid_width,
            self.dim,
            self.height(),
            self.width(),
        )
    }

    /// One vector per stage: the mean of the raw tokens over the grid (a 1x1 grid, no
    /// upsampling), an embedding of the whole tile for matching tiles rather than patches.
    pub fn mean_pooled(&self) -> PatchFeatures {
        let cells = (self.grid_height * self.grid_width) as f32;
        let tokens = self
            .tokens
            .iter()
            .map(|stage| {
                let mut mean = vec![0.0f32; self.dim];
                for token in stage.chunks_exact(self.dim) {
                    mean.iter_mut().zip(token).for_each(|(m, t)| *m += t);
                }
                mean.iter_mut().for_each(|m| *m /= cells);
                mean
            })
            .collect();
        PatchFeatures {
            grid_height: 1,
            grid_width: 1,
            upsample: 1,
            dim: self.dim,
            tokens,
        }
    }

    /// The reference's patch features of one stage: upsampled and L2-normalised.
    pub fn normalised(&self, stage: usize) -> Vec<f32> {
        let mut rows = self.upsampled(stage);
        normalise_rows(&mut rows, self.dim);
        rows
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

/// The features of image `index` of a batch from its stage outputs
/// (each `batch * grid.tokens() * grid.dim` values).
pub fn patch_features(
    stages: &[Vec<f32>],
    index: usize,
    grid: Grid,
    upsample: usize,
) -> PatchFeatures {
    let per_image = grid.tokens() * grid.dim;
    let tokens = stages
        .iter()
        .map(|stage| {
            let image = &stage[index * per_image..(index + 1) * per_image];
            image[grid.prefix_tokens * grid.dim..].to_vec()
        })
        .collect();
    PatchFeatures {
        grid_height: grid.height,
        grid_width: grid.width,
        upsample,
        dim: grid.dim,
        tokens,
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

/// The length of every `dim`-long row.
pub fn row_norms(values: &[f32], dim: usize) -> Vec<f32> {
    values
        .chunks_exact(dim)
        .map(|row| row.iter().map(|v| v * v).sum::<f32>().sqrt())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_pooling_averages_the_grid_per_stage() {
        let features = PatchFeatures {
            grid_height: 1,
            grid_width: 2,
            upsample: 2,
            dim: 2,
            tokens: vec![vec![1.0, 2.0, 3.0, 6.0], vec![0.0, -2.0, 4.0, 0.0]],
        };
        let pooled = features.mean_pooled();
        assert_eq!(
            (
                pooled.grid_height,
                pooled.grid_width,
                pooled.upsample,
                pooled.dim
            ),
            (1, 1, 1, 2)
        );
        assert_eq!(pooled.tokens, vec![vec![2.0, 4.0], vec![2.0, -1.0]]);
        assert_eq!(pooled.patches(), 1);
    }

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
        assert_eq!((f.height(), f.width(), f.dim), (1, 2, 2));
        assert_eq!(f.tokens[0], vec![3.0, 4.0, 0.0, 2.0]);
        let want = [0.6, 0.8, 0.0, 1.0];
        for (a, b) in f.normalised(0).iter().zip(want) {
            assert!((a - b).abs() < 1e-6);
        }
        assert_eq!(row_norms(&f.tokens[0], 2), vec![5.0, 2.0]);
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
        assert_eq!((f.height(), f.width()), (2, 4));
        let up = f.normalised(0);
        // Column 1 interpolates to (2/3, 1/3) before normalisation.
        let (a, b) = (2.0f32 / 3.0, 1.0f32 / 3.0);
        let n = (a * a + b * b).sqrt();
        assert!((up[2] - a / n).abs() < 1e-6);
        assert!((up[3] - b / n).abs() < 1e-6);
        // Both rows are equal: the source has one row.
        assert_eq!(up[..8], up[8..]);
    }
}
