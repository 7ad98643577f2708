//! The patch detector (paper eq. 1): each query patch scores 1 - its highest cosine similarity to
//! the memory bank, per stage; the map is the mean over stages and the image score its maximum.
//!
//! Features are unit vectors, so cosine similarity is a dot product and the exact nearest
//! neighbour of every query is found with blocked matrix products (`matrixmultiply::sgemm`)
//! followed by a row maximum, never a per-patch loop over the bank.

use super::features::PatchFeatures;
use serde::{Deserialize, Serialize};

/// Bank rows multiplied at once: bounds the scratch product to `queries * BANK_BLOCK` floats.
const BANK_BLOCK: usize = 2048;

/// Reference patch features, one matrix per stage, all with the same rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryBank {
    pub dim: usize,
    pub rows: usize,
    /// `rows * dim` unit-length vectors per stage.
    pub stages: Vec<Vec<f32>>,
}

impl MemoryBank {
    pub fn new(stage_count: usize, dim: usize) -> Self {
        MemoryBank {
            dim,
            rows: 0,
            stages: vec![Vec::new(); stage_count],
        }
    }

    /// Appends every patch of `features`.
    pub fn push(&mut self, features: &PatchFeatures) {
        assert_eq!(features.dim, self.dim, "feature dimension mismatch");
        assert_eq!(
            features.stages.len(),
            self.stages.len(),
            "stage count mismatch"
        );
        for (bank, stage) in self.stages.iter_mut().zip(&features.stages) {
            bank.extend_from_slice(stage);
        }
        self.rows += features.patches();
    }

    /// Appends every row of `other`.
    pub fn append(&mut self, other: &MemoryBank) {
        assert_eq!(other.dim, self.dim, "feature dimension mismatch");
        for (bank, stage) in self.stages.iter_mut().zip(&other.stages) {
            bank.extend_from_slice(stage);
        }
        self.rows += other.rows;
    }

    /// Keeps only the given rows (in that order), in every stage.
    pub fn select(&self, rows: &[usize]) -> MemoryBank {
        let stages = self
            .stages
            .iter()
            .map(|stage| {
                rows.iter()
                    .flat_map(|&r| &stage[r * self.dim..(r + 1) * self.dim])
                    .copied()
                    .collect()
            })
            .collect();
        MemoryBank {
            dim: self.dim,
            rows: rows.len(),
            stages,
        }
    }

    /// All stages side by side: `rows * (stages * dim)`, the space coreset selection works in.
    pub fn concatenated(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.rows * self.dim * self.stages.len());
        for r in 0..self.rows {
            for stage in &self.stages {
                out.extend_from_slice(&stage[r * self.dim..(r + 1) * self.dim]);
            }
        }
        out
    }
}

/// For each of the `n` query rows, the highest dot product with any of the `m` bank rows.
pub fn max_similarity(queries: &[f32], bank: &[f32], dim: usize) -> Vec<f32> {
    let n = queries.len() / dim;
    let m = bank.len() / dim;
    let mut best = vec![f32::NEG_INFINITY; n];
    let block = BANK_BLOCK.min(m.max(1));
    let mut product = vec![0.0f32; n * block];
    for start in (0..m).step_by(block) {
        let rows = block.min(m - start);
        let bank_block = &bank[start * dim..(start + rows) * dim];
        // product (n x rows) = queries (n x dim) * bank_block^T (dim x rows); the transpose is
        // expressed through strides, without copying.
        unsafe {
            matrixmultiply::sgemm(
                n,
                dim,
                rows,
                1.0,
                queries.as_ptr(),
                dim as isize,
                1,
                bank_block.as_ptr(),
                1,
                dim as isize,
                0.0,
                product.as_mut_ptr(),
                rows as isize,
                1,
            );
        }
        for (b, row) in best.iter_mut().zip(product.chunks_exact(rows)) {
            let row_max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            *b = b.max(row_max);
        }
    }
    best
}

/// The anomaly map of one image or tile: per patch, the mean over stages of
/// 1 - max cosine similarity to the bank. Row-major, `features.height * features.width`.
pub fn anomaly_map(features: &PatchFeatures, bank: &MemoryBank) -> Vec<f32> {
    assert_eq!(features.dim, bank.dim, "feature dimension mismatch");
    assert_eq!(
        features.stages.len(),
        bank.stages.len(),
        "stage count mismatch"
    );
    let mut map = vec![0.0f32; features.patches()];
    let stages = features.stages.len() as f32;
    for (query, reference) in features.stages.iter().zip(&bank.stages) {
        let similarity = max_similarity(query, reference, features.dim);
        for (cell, s) in map.iter_mut().zip(similarity) {
            *cell += (1.0 - s) / stages;
        }
    }
    map
}

/// Image score: the maximum of the map (the authors' choice).
pub fn max_score(map: &[f32]) -> f32 {
    map.iter().copied().fold(f32::NEG_INFINITY, f32::max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::features::normalise_rows;
    use rand::{Rng, SeedableRng};

    fn random_unit_rows(n: usize, dim: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut v: Vec<f32> = (0..n * dim).map(|_| rng.random_range(-1.0..1.0)).collect();
        normalise_rows(&mut v, dim);
        v
    }

    fn brute_force(queries: &[f32], bank: &[f32], dim: usize) -> Vec<f32> {
        queries
            .chunks_exact(dim)
            .map(|q| {
                bank.chunks_exact(dim)
                    .map(|b| q.iter().zip(b).map(|(x, y)| x * y).sum::<f32>())
                    .fold(f32::NEG_INFINITY, f32::max)
            })
            .collect()
    }

    #[test]
    fn nearest_neighbour_matches_brute_force_across_blocks() {
        let dim = 24;
        // More bank rows than one block, and not a multiple of it.
        let bank = random_unit_rows(BANK_BLOCK + 333, dim, 1);
        let queries = random_unit_rows(97, dim, 2);
        let fast = max_similarity(&queries, &bank, dim);
        let slow = brute_force(&queries, &bank, dim);
        for (a, b) in fast.iter().zip(&slow) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    #[test]
    fn map_is_zero_for_patches_in_the_bank_and_mean_over_stages() {
        let dim = 3;
        let features = PatchFeatures {
            height: 1,
            width: 2,
            dim,
            stages: vec![
                vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
                vec![0.0, 0.0, 1.0, 0.0, 0.0, 1.0],
            ],
        };
        let mut bank = MemoryBank::new(2, dim);
        bank.push(&PatchFeatures {
            height: 1,
            width: 1,
            dim,
            stages: vec![vec![1.0, 0.0, 0.0], vec![0.0, 0.0, 1.0]],
        });
        let map = anomaly_map(&features, &bank);
        // Patch 0 is in the bank in both stages; patch 1 is orthogonal in stage 0 (cost 1) and
        // identical in stage 1 (cost 0): mean 0.5.
        assert!((map[0] - 0.0).abs() < 1e-6);
        assert!((map[1] - 0.5).abs() < 1e-6);
        assert_eq!(max_score(&map), map[1]);
    }

    #[test]
    fn select_and_concatenate_keep_rows_aligned() {
        let dim = 2;
        let mut bank = MemoryBank::new(2, dim);
        bank.push(&PatchFeatures {
            height: 1,
            width: 3,
            dim,
            stages: vec![
                vec![1., 2., 3., 4., 5., 6.],
                vec![7., 8., 9., 10., 11., 12.],
            ],
        });
        let picked = bank.select(&[2, 0]);
        assert_eq!(picked.rows, 2);
        assert_eq!(picked.stages[0], vec![5., 6., 1., 2.]);
        assert_eq!(picked.stages[1], vec![11., 12., 7., 8.]);
        assert_eq!(
            picked.concatenated(),
            vec![5., 6., 11., 12., 1., 2., 7., 8.]
        );
    }
}
