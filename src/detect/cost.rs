//! Arithmetic cost of analysing a frame, in floating-point operations (a multiply-add counts 2),
//! for benchmarks: the factorised matcher's matrix products, as [`super::patch::max_similarity`]
//! runs them, and the analytic cost of a vision transformer, to check a count taken from an
//! ONNX graph (`models/count_flops.py`).

use super::features::PatchFeatures;
use super::patch::MemoryBank;

/// How many blocks (reference images or tiles) of `bank` the matcher visits: the blocks that
/// hold at least one bank row and that `allow` admits (a tile neighbourhood's filter, block
/// index in, as `Neighbourhood::allows`). A coreset-reduced bank visits only the blocks it kept
/// rows of.
pub fn matched_blocks(bank: &MemoryBank, allow: impl Fn(usize) -> bool) -> usize {
    let cells = (bank.grid_height * bank.grid_width * bank.upsample * bank.upsample) as u32;
    if cells == 0 {
        return 0;
    }
    bank.rows
        .chunk_by(|a, b| a / cells == b / cells)
        .filter(|rows| allow((rows[0] / cells) as usize))
        .count()
}

/// FLOPs of the matrix products of matching one query grid against the blocks of `bank` that
/// `allow` admits, all stages, as the matcher runs them: per visited block and stage one product
/// of the raw grids, `2 * grid_cells^2 * dim` (grid_cells = the bank's token grid height x
/// width, before upsampling); for a sparse bank ([`MemoryBank::is_sparse`]) one product of the
/// raw query grid by the kept rows, `2 * grid_cells * rows * dim`. The interpolation, norms and
/// row maxima around the products are not counted.
///
/// Panics if the query's grid or dimension is not the bank's (as the matcher does).
pub fn matching_flops(
    query: &PatchFeatures,
    bank: &MemoryBank,
    allow: impl Fn(usize) -> bool,
) -> u64 {
    assert_eq!(
        (query.grid_height, query.grid_width, query.dim),
        (bank.grid_height, bank.grid_width, bank.dim),
        "grid mismatch"
    );
    let cells = (bank.grid_height * bank.grid_width) as u64;
    let per_stage = if bank.is_sparse() {
        let upsampled = cells as u32 * (bank.upsample * bank.upsample) as u32;
        let rows = bank
            .rows
            .iter()
            .filter(|&&row| allow((row / upsampled) as usize))
            .count() as u64;
        2 * cells * rows * bank.dim as u64
    } else {
        2 * cells * cells * bank.dim as u64 * matched_blocks(bank, allow) as u64
    };
    per_stage * bank.stages() as u64
}

/// The shape of a plain vision transformer (ViT, as DINOv2) for [`vit_flops`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VitShape {
    /// Input channels (3 for RGB).
    pub channels: usize,
    /// Patch side in pixels (14 for DINOv2).
    pub patch: usize,
    /// Patch grid height and width (input size / patch).
    pub grid: (usize, usize),
    /// Tokens before the patch tokens (class token, registers).
    pub prefix_tokens: usize,
    /// Embedding width.
    pub dim: usize,
    /// Transformer blocks run.
    pub depth: usize,
    /// Hidden width of each block's MLP (4 x `dim` for ViT-S/B/L).
    pub mlp_hidden: usize,
}

/// FLOPs of one image through a ViT's matrix products: the patch embedding (a convolution,
/// `2 * patches * channels * patch^2 * dim`) and per block the query/key/value projections
/// (`2 * T * dim * 3 dim`), the attention scores and their product with the values
/// (`2 * 2 * T^2 * dim`), the output projection (`2 * T * dim^2`) and the MLP
/// (`2 * 2 * T * dim * mlp_hidden`), with `T` = patches + prefix tokens. Norms, softmax,
/// activations and additions (about 1% more) are not counted.
pub fn vit_flops(shape: &VitShape) -> u64 {
    let patches = (shape.grid.0 * shape.grid.1) as u64;
    let t = patches + shape.prefix_tokens as u64;
    let d = shape.dim as u64;
    let embed = 2 * patches * (shape.channels * shape.patch * shape.patch) as u64 * d;
    let per_block =
        2 * t * d * 3 * d + 4 * t * t * d + 2 * t * d * d + 4 * t * d * shape.mlp_hidden as u64;
    embed + shape.depth as u64 * per_block
}

#[cfg(test)]
mod tests {
    use super::*;

    fn features(gh: usize, gw: usize, dim: usize, stages: usize) -> PatchFeatures {
        PatchFeatures {
            grid_height: gh,
            grid_width: gw,
            upsample: 2,
            dim,
            tokens: vec![vec![0.5; gh * gw * dim]; stages],
        }
    }

    #[test]
    fn matching_flops_count_the_blocks_the_matcher_visits() {
        // 3 blocks of a 4x4 grid (64 upsampled cells each), 2 stages, dim 8.
        let mut bank = MemoryBank::new(2, 8, 4, 4, 2);
        for _ in 0..3 {
            bank.push(&features(4, 4, 8, 2));
        }
        let query = features(4, 4, 8, 2);
        assert_eq!(matched_blocks(&bank, |_| true), 3);
        // Per block and stage: 2 * 16 * 16 * 8 = 4096.
        assert_eq!(matching_flops(&query, &bank, |_| true), 3 * 2 * 4096);
        // Blocks a tile neighbourhood leaves out cost nothing.
        assert_eq!(matching_flops(&query, &bank, |b| b != 1), 2 * 2 * 4096);
        // 64 rows kept in blocks 0 and 2 only (more than the 48 raw tokens): block 1 is not
        // visited.
        let reduced = bank.select(&(0..32).chain(128..160).collect::<Vec<_>>());
        assert!(!reduced.is_sparse());
        assert_eq!(matched_blocks(&reduced, |_| true), 2);
        assert_eq!(matching_flops(&query, &reduced, |_| true), 2 * 2 * 4096);
        // 4 rows: sparse, one product by the kept rows, 2 * 16 * rows * 8 per stage.
        let small = bank.select(&[5, 63, 130, 190]);
        assert!(small.is_sparse());
        assert_eq!(matching_flops(&query, &small, |_| true), 2 * 2 * 16 * 4 * 8);
        assert_eq!(
            matching_flops(&query, &small, |b| b == 2),
            2 * 2 * 16 * 2 * 8
        );
    }

    #[test]
    fn vit_s14_at_224_is_about_twelve_gflop() {
        // DINOv2 ViT-S/14 at 224 px: 16x16 patches + class token, 12 blocks of width 384.
        let shape = VitShape {
            channels: 3,
            patch: 14,
            grid: (16, 16),
            prefix_tokens: 1,
            dim: 384,
            depth: 12,
            mlp_hidden: 1536,
        };
        // Hand-computed: embed 2*256*588*384 = 115,605,504; per block
        // 2*257*384*1152 + 4*257^2*384 + 2*257*384^2 + 4*257*384*1536 = 1,010,959,872.
        assert_eq!(vit_flops(&shape), 115_605_504 + 12 * 1_010_959_872);
        // At 448 px the token count is 4x, the attention 16x: more than 4x the FLOPs.
        let big = VitShape {
            grid: (32, 32),
            ..shape
        };
        assert!(vit_flops(&big) > 4 * vit_flops(&shape));
    }
}
