//! Matching against brute force: the factorised matcher on full and coreset-reduced blocks,
//! non-square grids and every upsampling; tile neighbourhoods against a brute force over the
//! allowed blocks; the `auto` neighbourhood's choice on synthetic scenes.

use gstlogsad::detect::calibrate::{Calibration, CalibrationMethod};
use gstlogsad::detect::features::PatchFeatures;
use gstlogsad::detect::patch::{anomaly_map_with, max_similarity_with, MatchScratch, MemoryBank};
use gstlogsad::detect::tiling::{Neighbourhood, Tiling};
use gstlogsad::enroll::choose_neighbourhood;

/// Deterministic values in [-1, 1).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    fn values(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next()).collect()
    }
}

fn features(
    grid: (usize, usize),
    up: usize,
    dim: usize,
    stages: usize,
    seed: u64,
) -> PatchFeatures {
    let mut rng = Lcg(seed);
    PatchFeatures {
        grid_height: grid.0,
        grid_width: grid.1,
        upsample: up,
        dim,
        tokens: (0..stages)
            .map(|_| rng.values(grid.0 * grid.1 * dim))
            .collect(),
    }
}

/// Explicit upsampled, normalised features, every allowed bank row compared with every cell.
fn brute_force(
    query: &PatchFeatures,
    bank: &MemoryBank,
    stage: usize,
    allow: &dyn Fn(usize) -> bool,
) -> Vec<f32> {
    let cells = (bank.grid_height * bank.grid_width * bank.upsample * bank.upsample) as u32;
    let rows = bank.normalised_rows(stage);
    let q = query.normalised(stage);
    q.chunks_exact(query.dim)
        .map(|qi| {
            let best = rows
                .chunks_exact(bank.dim)
                .zip(&bank.rows)
                .filter(|(_, &row)| allow((row / cells) as usize))
                .map(|(bj, _)| qi.iter().zip(bj).map(|(x, y)| x * y).sum::<f32>())
                .fold(f32::NEG_INFINITY, f32::max);
            if best.is_finite() {
                best
            } else {
                0.0
            }
        })
        .collect()
}

fn assert_close(a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() < 1e-5, "cell {i}: {x} vs {y}");
    }
}

#[test]
fn full_and_reduced_blocks_match_brute_force_on_non_square_grids() {
    let mut scratch = MatchScratch::default();
    for (grid, up) in [((3, 5), 2), ((5, 3), 3), ((4, 4), 1), ((2, 7), 2)] {
        let dim = 9;
        let mut bank = MemoryBank::new(2, dim, grid.0, grid.1, up);
        for seed in 0..3 {
            bank.push(&features(grid, up, dim, 2, seed));
        }
        // Block 0 whole, block 1 reduced to every third row, block 2 dropped entirely.
        let cells = grid.0 * grid.1 * up * up;
        let keep: Vec<usize> = (0..cells).chain((cells..2 * cells).step_by(3)).collect();
        let reduced = bank.select(&keep);
        let query = features(grid, up, dim, 2, 42);
        for b in [&bank, &reduced] {
            for stage in 0..2 {
                let fast = max_similarity_with(&query, b, stage, &|_| true, &mut scratch);
                assert_close(&fast, &brute_force(&query, b, stage, &|_| true));
            }
        }
    }
}

#[test]
fn tile_neighbourhood_matches_brute_force_over_allowed_blocks() {
    // 3x3 tiles, 2 reference images: blocks 0..9 and 9..18; a coreset-like reduction too.
    let tiling = Tiling {
        rows: 3,
        cols: 3,
        ..Tiling::whole()
    };
    let (grid, up, dim) = ((4, 3), 2, 6);
    let mut bank = MemoryBank::new(1, dim, grid.0, grid.1, up);
    for seed in 0..18 {
        bank.push(&features(grid, up, dim, 1, seed));
    }
    let reduced = bank.select(&(0..bank.len()).filter(|i| i % 5 != 0).collect::<Vec<_>>());
    let mut scratch = MatchScratch::default();
    for b in [&bank, &reduced] {
        for r in [0, 1] {
            let neighbourhood = Neighbourhood::Within(r);
            for tile in [0, 4, 5] {
                let query = features(grid, up, dim, 1, 100 + tile as u64);
                let allow = |block: usize| neighbourhood.allows(&tiling, tile, block);
                let fast = max_similarity_with(&query, b, 0, &allow, &mut scratch);
                assert_close(&fast, &brute_force(&query, b, 0, &allow));
            }
        }
    }
    // The allowed blocks by hand: tile 0 (top left) with R = 0 sees blocks 0 and 9; with
    // R = 1 also tiles 1, 3, 4 of each image; tile 4 (centre) with R = 1 sees all.
    let allowed = |r, tile| -> Vec<usize> {
        (0..18)
            .filter(|&b| Neighbourhood::Within(r).allows(&tiling, tile, b))
            .collect()
    };
    assert_eq!(allowed(0, 0), vec![0, 9]);
    assert_eq!(allowed(1, 0), vec![0, 1, 3, 4, 9, 10, 12, 13]);
    assert_eq!(allowed(1, 4), (0..18).collect::<Vec<_>>());
    assert_eq!(Neighbourhood::candidates(&tiling), 0..2);
    assert_eq!(Neighbourhood::candidates(&Tiling::whole()), 0..0);
}

/// A scene of `rows x cols` tiles: tile `t` of an image shows pattern `pattern(t)` plus noise.
fn scene(
    tiling: &Tiling,
    patterns: &[Vec<f32>],
    pattern: impl Fn(usize) -> usize,
    noise: f32,
    seed: u64,
) -> Vec<PatchFeatures> {
    let mut rng = Lcg(seed);
    let tiles = (tiling.rows * tiling.cols) as usize;
    (0..tiles)
        .map(|t| PatchFeatures {
            grid_height: 2,
            grid_width: 2,
            upsample: 2,
            dim: 16,
            tokens: vec![patterns[pattern(t)]
                .iter()
                .map(|v| v + noise * rng.next())
                .collect()],
        })
        .collect()
}

/// The raw score (map maximum over tiles) of each validation scene under a neighbourhood.
fn scores(
    tiling: &Tiling,
    bank: &MemoryBank,
    validation: &[Vec<PatchFeatures>],
    neighbourhood: Neighbourhood,
) -> Vec<f64> {
    let mut scratch = MatchScratch::default();
    validation
        .iter()
        .map(|tiles| {
            tiles
                .iter()
                .enumerate()
                .flat_map(|(t, tile)| {
                    let allow = |b: usize| neighbourhood.allows(tiling, t, b);
                    anomaly_map_with(tile, bank, &allow, &mut scratch)
                })
                .fold(f32::NEG_INFINITY, f32::max) as f64
        })
        .collect()
}

fn auto_choice(tiling: &Tiling, shuffled: impl Fn(usize) -> usize + Copy) -> Neighbourhood {
    let tiles = (tiling.rows * tiling.cols) as usize;
    let mut rng = Lcg(7);
    let patterns: Vec<Vec<f32>> = (0..tiles).map(|_| rng.values(4 * 16)).collect();
    let mut bank = MemoryBank::new(1, 16, 2, 2, 2);
    for image in 0..3 {
        for tile in scene(tiling, &patterns, |t| t, 0.05, image) {
            bank.push(&tile);
        }
    }
    // Validation scenes: each tile shows the pattern of tile `shuffled(t)` of the references.
    let validation: Vec<_> = (0..6)
        .map(|i| scene(tiling, &patterns, shuffled, 0.05, 100 + i))
        .collect();
    let all = scores(tiling, &bank, &validation, Neighbourhood::All);
    let candidates = Neighbourhood::candidates(tiling)
        .map(|r| scores(tiling, &bank, &validation, Neighbourhood::Within(r)))
        .collect();
    let spread = Calibration::fit_with(&all, CalibrationMethod::MeanStd)
        .unwrap()
        .std;
    choose_neighbourhood(&all, candidates, spread).0
}

#[test]
fn auto_neighbourhood_adapts_to_where_the_nearest_tiles_are() {
    let square = |n| Tiling {
        rows: n,
        cols: n,
        ..Tiling::whole()
    };
    // Fixed camera: every tile's nearest reference tiles are at its own position.
    assert_eq!(auto_choice(&square(3), |t| t), Neighbourhood::Within(0));
    // Parts moved: a 3x3 scene mirrored left to right needs distance 2 on the outer columns,
    // which is every tile of a 3x3 grid.
    assert_eq!(
        auto_choice(&square(3), |t| t / 3 * 3 + 2 - t % 3),
        Neighbourhood::All
    );
    // A 2x2 scene with its tiles swapped diagonally: nothing short of all tiles.
    assert_eq!(auto_choice(&square(2), |t| 3 - t), Neighbourhood::All);
}
