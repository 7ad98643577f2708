//! The patch detector (paper eq. 1): each query patch scores 1 - its highest cosine similarity to
//! the memory bank, per stage; the map is the mean over stages and the image score its maximum.
//!
//! The reference compares upsampled (x2, bilinear) and L2-normalised token grids. Upsampling is
//! linear and normalising only rescales a row, so the similarity of upsampled cells `i` and `j`
//! is `sum_a sum_c W[i,a] V[j,c] (q_a . r_c) / (|u_i| |v_j|)`: one matrix product of the RAW
//! token grids (4x fewer rows on each side, 16x less arithmetic), then bilinear interpolation
//! of that small similarity matrix along both axes, then a row maximum scaled by the norms. The
//! result is the exact nearest neighbour of the reference, never a per-patch loop over the bank.

use super::features::{normalise_rows, row_norms, PatchFeatures};
use super::resize::{taps_align_corners, upsample_bilinear_align_corners, Tap};

/// Reference patches: the raw token grids of the reference images (or tiles), one block each,
/// and the bank rows as positions of the upsampled grids of those blocks.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryBank {
    pub dim: usize,
    pub grid_height: usize,
    pub grid_width: usize,
    pub upsample: usize,
    /// Per stage, `blocks * grid_height * grid_width * dim` raw tokens.
    pub tokens: Vec<Vec<f32>>,
    /// Bank rows, ascending: `block * upsampled cells + cell`.
    pub rows: Vec<u32>,
    /// Per stage and row, 1 / the length of the row's upsampled vector (derived from the above).
    inverse_norms: Vec<Vec<f32>>,
    /// Per stage, the rows upsampled and normalised (`len() * dim`) when the bank is reduced
    /// below one row per raw token on average ([`MemoryBank::is_sparse`]), else empty: then
    /// multiplying the raw query grid by these rows costs less than the raw grid products of
    /// the factorised path (derived from the above).
    explicit: Vec<Vec<f32>>,
}

impl MemoryBank {
    pub fn new(
        stages: usize,
        dim: usize,
        grid_height: usize,
        grid_width: usize,
        upsample: usize,
    ) -> Self {
        MemoryBank {
            dim,
            grid_height,
            grid_width,
            upsample,
            tokens: vec![Vec::new(); stages],
            rows: Vec::new(),
            inverse_norms: vec![Vec::new(); stages],
            explicit: Vec::new(),
        }
    }

    /// Rebuilds a bank from stored tokens and rows, checking that they fit together.
    pub fn from_parts(
        dim: usize,
        (grid_height, grid_width): (usize, usize),
        upsample: usize,
        tokens: Vec<Vec<f32>>,
        rows: Vec<u32>,
    ) -> Result<Self, String> {
        let too_large = || "the token grid is too large".to_string();
        let cells = [grid_width, upsample, upsample]
            .iter()
            .try_fold(grid_height, |n, &f| n.checked_mul(f))
            .ok_or_else(too_large)?;
        let block = grid_height
            .checked_mul(grid_width)
            .and_then(|n| n.checked_mul(dim))
            .ok_or_else(too_large)?;
        if block == 0 || upsample == 0 || tokens.is_empty() {
            return Err("empty grid, dimension or stage list".into());
        }
        let blocks = tokens[0].len() / block;
        if tokens
            .iter()
            .any(|t| t.len() != blocks * block || t.len() % block != 0)
        {
            return Err("stage token counts do not match the grid".into());
        }
        if rows.is_empty() || rows.windows(2).any(|w| w[0] >= w[1]) {
            return Err("bank rows must be a non-empty ascending list".into());
        }
        if *rows.last().unwrap() as usize >= blocks * cells {
            return Err("a bank row lies outside the stored grids".into());
        }
        let mut bank = MemoryBank {
            dim,
            grid_height,
            grid_width,
            upsample,
            tokens,
            rows,
            inverse_norms: Vec::new(),
            explicit: Vec::new(),
        };
        bank.inverse_norms = (0..bank.tokens.len())
            .map(|s| bank.inverse_norms_of(s))
            .collect();
        bank.derive_explicit();
        Ok(bank)
    }

    pub fn stages(&self) -> usize {
        self.tokens.len()
    }

    /// Number of bank rows (patches).
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    fn grid_cells(&self) -> usize {
        self.grid_height * self.grid_width
    }

    fn upsampled_cells(&self) -> usize {
        self.grid_cells() * self.upsample * self.upsample
    }

    pub fn blocks(&self) -> usize {
        self.tokens[0].len() / (self.grid_cells() * self.dim)
    }

    /// Appends every upsampled patch of `features` as a new block.
    pub fn push(&mut self, features: &PatchFeatures) {
        assert_eq!(features.dim, self.dim, "feature dimension mismatch");
        assert_eq!(features.tokens.len(), self.stages(), "stage count mismatch");
        assert_eq!(
            (features.grid_height, features.grid_width, features.upsample),
            (self.grid_height, self.grid_width, self.upsample),
            "grid mismatch"
        );
        let first = (self.blocks() * self.upsampled_cells()) as u32;
        for (stage, tokens) in features.tokens.iter().enumerate() {
            self.tokens[stage].extend_from_slice(tokens);
            let norms = row_norms(&features.upsampled(stage), self.dim);
            self.inverse_norms[stage].extend(norms.into_iter().map(inverse));
        }
        self.rows
            .extend(first..first + self.upsampled_cells() as u32);
        self.derive_explicit();
    }

    /// Appends the blocks and rows of `other`.
    pub fn append(&mut self, other: &MemoryBank) {
        assert_eq!(other.dim, self.dim, "feature dimension mismatch");
        let offset = (self.blocks() * self.upsampled_cells()) as u32;
        for (bank, stage) in self.tokens.iter_mut().zip(&other.tokens) {
            bank.extend_from_slice(stage);
        }
        self.rows.extend(other.rows.iter().map(|r| r + offset));
        for (mine, theirs) in self.inverse_norms.iter_mut().zip(&other.inverse_norms) {
            mine.extend_from_slice(theirs);
        }
        self.derive_explicit();
    }

    /// Keeps only the given rows (indices into the current rows).
    pub fn select(&self, keep: &[usize]) -> MemoryBank {
        let mut keep = keep.to_vec();
        keep.sort_unstable();
        keep.dedup();
        let mut bank = MemoryBank {
            rows: keep.iter().map(|&k| self.rows[k]).collect(),
            inverse_norms: self
                .inverse_norms
                .iter()
                .map(|norms| keep.iter().map(|&k| norms[k]).collect())
                .collect(),
            explicit: Vec::new(),
            ..self.clone()
        };
        bank.derive_explicit();
        bank
    }

    /// Whether the bank keeps fewer rows than its blocks hold raw tokens (a coreset of less
    /// than 1 / upsample^2 of the patches): matching then multiplies by the kept rows
    /// themselves instead of by the raw grids.
    pub fn is_sparse(&self) -> bool {
        !self.tokens.is_empty() && self.len() < self.blocks() * self.grid_cells()
    }

    /// Fills or clears [`MemoryBank::explicit`] to match [`MemoryBank::is_sparse`].
    fn derive_explicit(&mut self) {
        self.explicit = if self.is_sparse() {
            (0..self.stages())
                .map(|s| self.normalised_rows(s))
                .collect()
        } else {
            Vec::new()
        };
    }

    fn inverse_norms_of(&self, stage: usize) -> Vec<f32> {
        self.rows_of_stage(stage, |up| row_norms(up, self.dim))
            .into_iter()
            .map(inverse)
            .collect()
    }

    /// For every row, `per_row` values taken from the upsampled grid of its block (the rows of
    /// `per_grid(upsampled block)`, which returns one value or `dim` values per cell).
    fn rows_of_stage<T: Copy>(&self, stage: usize, per_grid: impl Fn(&[f32]) -> Vec<T>) -> Vec<T> {
        let block_len = self.grid_cells() * self.dim;
        let cells = self.upsampled_cells();
        let mut out = Vec::new();
        for rows in self
            .rows
            .chunk_by(|a, b| a / cells as u32 == b / cells as u32)
        {
            let block = rows[0] as usize / cells;
            let raw = &self.tokens[stage][block * block_len..(block + 1) * block_len];
            let values = per_grid(&self.upsample_grid(raw, self.dim));
            let width = values.len() / cells;
            for &row in rows {
                let cell = row as usize % cells;
                out.extend_from_slice(&values[cell * width..(cell + 1) * width]);
            }
        }
        out
    }

    fn upsample_grid(&self, grid: &[f32], channels: usize) -> Vec<f32> {
        let (h, w, u) = (self.grid_height, self.grid_width, self.upsample);
        if u == 1 {
            return grid.to_vec();
        }
        upsample_bilinear_align_corners(grid, h, w, channels, h * u, w * u)
    }

    /// The reference's bank of one stage: every row upsampled and normalised (`len() * dim`).
    pub fn normalised_rows(&self, stage: usize) -> Vec<f32> {
        self.rows_of_stage(stage, |up| {
            let mut up = up.to_vec();
            normalise_rows(&mut up, self.dim);
            up
        })
    }

    /// All stages side by side, normalised: `len() * (stages * dim)`, the space coreset
    /// selection works in.
    pub fn concatenated(&self) -> Vec<f32> {
        let stages: Vec<Vec<f32>> = (0..self.stages())
            .map(|s| self.normalised_rows(s))
            .collect();
        let mut out = Vec::with_capacity(self.len() * self.dim * stages.len());
        for r in 0..self.len() {
            for stage in &stages {
                out.extend_from_slice(&stage[r * self.dim..(r + 1) * self.dim]);
            }
        }
        out
    }
}

/// 1 / a norm; 0 for a zero vector (whose similarity to anything is 0).
fn inverse(norm: f32) -> f32 {
    if norm > 0.0 {
        1.0 / norm
    } else {
        0.0
    }
}

/// `c = a * b^T` for row-major `a` (`n x k`) and `b` (`m x k`): `c` is `n x m` (also used by
/// the part stage's k-means). Panics if a slice is shorter than its shape.
pub(crate) fn matmul_transposed(a: &[f32], b: &[f32], n: usize, k: usize, m: usize, c: &mut [f32]) {
    // SAFETY: the slices hold n*k, m*k and n*m values; strides describe row-major layouts, the
    // transpose of `b` is expressed through its strides.
    assert!(a.len() >= n * k && b.len() >= m * k && c.len() >= n * m);
    unsafe {
        matrixmultiply::sgemm(
            n,
            k,
            m,
            1.0,
            a.as_ptr(),
            k as isize,
            1,
            b.as_ptr(),
            1,
            k as isize,
            0.0,
            c.as_mut_ptr(),
            m as isize,
            1,
        );
    }
}

/// Reusable buffers of the matcher, so that matching allocates nothing per block or stage.
/// One per thread; [`anomaly_map_with`] and [`max_similarity_with`] take it.
#[derive(Debug, Default)]
pub struct MatchScratch {
    /// Raw similarities of one block, `grid x grid`.
    raw: Vec<f32>,
    /// Bank side interpolated along x, `grid x (grid_height * upsampled width)`.
    along_x: Vec<f32>,
    /// Bank side interpolated and scaled by the bank's inverse norms, `grid x kept rows`.
    bank_side: Vec<f32>,
    /// Query side interpolated along x, for one chunk of bank rows.
    query_x: Vec<f32>,
    /// Per bank row of a reduced block: its four taps (raw cell, weight / norm).
    taps: Vec<[(usize, f32); 4]>,
    /// Best scaled similarity so far per upsampled query cell.
    best: Vec<f32>,
    /// Per block with rows: (block, first row, end row).
    spans: Vec<(usize, usize, usize)>,
}

/// Bank rows are taken this many at a time on the query side, so that the query side's
/// intermediate (`grid_height * upsampled width * CHUNK` values) stays in the L2 cache.
const CHUNK: usize = 256;

/// The geometry of one matching: raw grid, upsampled grid and the bilinear taps between them.
struct Geometry {
    gh: usize,
    gw: usize,
    up_w: usize,
    ys: Vec<Tap>,
    xs: Vec<Tap>,
}

impl Geometry {
    fn of(bank: &MemoryBank) -> Self {
        let (gh, gw, u) = (bank.grid_height, bank.grid_width, bank.upsample);
        Geometry {
            gh,
            gw,
            up_w: gw * u,
            ys: taps_align_corners(gh, gh * u),
            xs: taps_align_corners(gw, gw * u),
        }
    }

    fn grid(&self) -> usize {
        self.gh * self.gw
    }

    fn cells(&self) -> usize {
        self.ys.len() * self.xs.len()
    }
}

/// For each upsampled cell of `query`, its highest cosine similarity to the bank in `stage`
/// (`query.patches()` values, row-major). Allocates its buffers; see [`max_similarity_with`].
pub fn max_similarity(query: &PatchFeatures, bank: &MemoryBank, stage: usize) -> Vec<f32> {
    max_similarity_with(query, bank, stage, &|_| true, &mut MatchScratch::default())
}

/// Fills `spans` with (block, first row, end row) for every block of the bank that keeps rows.
fn block_spans(bank: &MemoryBank, spans: &mut Vec<(usize, usize, usize)>) {
    let cells = bank.upsampled_cells() as u32;
    spans.clear();
    let mut start = 0;
    for rows in bank.rows.chunk_by(|a, b| a / cells == b / cells) {
        spans.push((rows[0] as usize / cells as usize, start, start + rows.len()));
        start += rows.len();
    }
}

/// [`max_similarity`] against the blocks for which `allow(block)` holds (a block is one
/// reference image or tile, in the order they were pushed), with reusable buffers. When no
/// allowed block keeps a row, every cell gets similarity 0.
///
/// The bank side is interpolated separably (along x, then along y, two taps each) for blocks
/// that keep all their rows, and per row (four taps, cost proportional to the kept rows) for
/// coreset-reduced ones; the query side is interpolated along x, then blended along y while
/// taking each cell's maximum; the query's norm divides the maximum at the end.
pub fn max_similarity_with(
    query: &PatchFeatures,
    bank: &MemoryBank,
    stage: usize,
    allow: &dyn Fn(usize) -> bool,
    scratch: &mut MatchScratch,
) -> Vec<f32> {
    assert_eq!(query.dim, bank.dim, "feature dimension mismatch");
    assert_eq!(
        (query.grid_height, query.grid_width, query.upsample),
        (bank.grid_height, bank.grid_width, bank.upsample),
        "grid mismatch"
    );
    let geometry = Geometry::of(bank);
    let (grid, cells, dim) = (geometry.grid(), geometry.cells(), bank.dim);
    let q = &query.tokens[stage];
    let inverse = &bank.inverse_norms[stage];
    let mut spans = std::mem::take(&mut scratch.spans);
    block_spans(bank, &mut spans);
    scratch.best.clear();
    scratch.best.resize(cells, f32::NEG_INFINITY);
    scratch.raw.resize(grid * grid, 0.0);
    let mut matched = false;
    if bank.is_sparse() {
        let mut best = std::mem::take(&mut scratch.best);
        matched = sparse_best(&geometry, bank, stage, q, &spans, allow, scratch, &mut best);
        scratch.best = best;
    } else {
        for &(block, start, end) in &spans {
            if !allow(block) {
                continue;
            }
            matched = true;
            let r = &bank.tokens[stage][block * grid * dim..(block + 1) * grid * dim];
            // raw[a, c] = q_a . r_c for the raw grids.
            matmul_transposed(q, r, grid, dim, grid, &mut scratch.raw);
            let rows = &bank.rows[start..end];
            glue(&geometry, rows, &inverse[start..end], scratch);
        }
    }
    scratch.spans = spans;
    let query_norms = row_norms(&query.upsampled(stage), dim);
    scratch
        .best
        .iter()
        .zip(query_norms)
        .map(|(&b, n)| if n > 0.0 && matched { b / n } else { 0.0 })
        .collect()
}

/// The anomaly maps of several tiles against the same blocks of a sparse bank
/// ([`MemoryBank::is_sparse`]; the blocks `allow` admits, whatever the tile): per stage the
/// tiles' raw grids are stacked into one matrix product with the kept rows (one larger product
/// runs nearer the GEMM peak than one per tile), then each tile's query side is interpolated as
/// in [`max_similarity_with`]. The same maps as [`anomaly_map_with`] per tile.
///
/// Panics if the bank is not sparse, or a tile's grid or dimension is not the bank's.
pub fn sparse_anomaly_maps(
    tiles: &[PatchFeatures],
    bank: &MemoryBank,
    allow: &dyn Fn(usize) -> bool,
    scratch: &mut MatchScratch,
) -> Vec<Vec<f32>> {
    assert!(bank.is_sparse(), "a sparse bank");
    let geometry = Geometry::of(bank);
    let (grid, cells, dim) = (geometry.grid(), geometry.cells(), bank.dim);
    for tile in tiles {
        assert_eq!(tile.dim, dim, "feature dimension mismatch");
        assert_eq!(
            (tile.grid_height, tile.grid_width, tile.upsample),
            (bank.grid_height, bank.grid_width, bank.upsample),
            "grid mismatch"
        );
        assert_eq!(tile.tokens.len(), bank.stages(), "stage count mismatch");
    }
    let mut spans = std::mem::take(&mut scratch.spans);
    block_spans(bank, &mut spans);
    let stages = bank.stages() as f32;
    let mut maps = vec![vec![0.0f32; cells]; tiles.len()];
    let mut best = vec![f32::NEG_INFINITY; tiles.len() * cells];
    let mut stacked = Vec::with_capacity(tiles.len() * grid * dim);
    for stage in 0..bank.stages() {
        stacked.clear();
        for tile in tiles {
            stacked.extend_from_slice(&tile.tokens[stage]);
        }
        best.fill(f32::NEG_INFINITY);
        let matched = sparse_best(
            &geometry, bank, stage, &stacked, &spans, allow, scratch, &mut best,
        );
        for ((map, best), tile) in maps.iter_mut().zip(best.chunks_exact(cells)).zip(tiles) {
            let norms = row_norms(&tile.upsampled(stage), dim);
            for ((cell, &b), n) in map.iter_mut().zip(best).zip(norms) {
                let similarity = if n > 0.0 && matched { b / n } else { 0.0 };
                *cell += (1.0 - similarity) / stages;
            }
        }
    }
    scratch.spans = spans;
    maps
}

/// The sparse bank's part of matching in `stage` for the query grids stacked in `queries`
/// (`count x grid x dim`): per run of consecutive allowed blocks one product of all grids by the
/// kept rows, `t[a, k] = q_a . v_k / |v_k|`, then each grid's query side into its slice of `best`
/// (`count x cells`). Returns whether any block was allowed.
#[allow(clippy::too_many_arguments)]
fn sparse_best(
    geometry: &Geometry,
    bank: &MemoryBank,
    stage: usize,
    queries: &[f32],
    spans: &[(usize, usize, usize)],
    allow: &dyn Fn(usize) -> bool,
    scratch: &mut MatchScratch,
    best: &mut [f32],
) -> bool {
    let (grid, cells, dim) = (geometry.grid(), geometry.cells(), bank.dim);
    let count = queries.len() / (grid * dim);
    let mut matched = false;
    for run in spans.chunk_by(|a, b| allow(a.0) == allow(b.0)) {
        if !allow(run[0].0) {
            continue;
        }
        matched = true;
        let (start, end) = (run[0].1, run[run.len() - 1].2);
        let k = end - start;
        scratch.bank_side.resize(count * grid * k, 0.0);
        matmul_transposed(
            queries,
            &bank.explicit[stage][start * dim..end * dim],
            count * grid,
            dim,
            k,
            &mut scratch.bank_side,
        );
        for (t, best) in scratch
            .bank_side
            .chunks_exact(grid * k)
            .zip(best.chunks_exact_mut(cells))
        {
            query_pass(geometry, t, k, best, &mut scratch.query_x);
        }
    }
    matched
}

/// [`query_side_of`], compiled for AVX2+FMA where the processor has them (as [`glue`]).
fn query_pass(geometry: &Geometry, t: &[f32], k: usize, best: &mut [f32], buffer: &mut Vec<f32>) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the processor has the features the function is compiled for.
        unsafe { query_pass_avx2(geometry, t, k, best, buffer) };
        return;
    }
    query_side_of(geometry, t, k, best, buffer);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn query_pass_avx2(
    geometry: &Geometry,
    t: &[f32],
    k: usize,
    best: &mut [f32],
    buffer: &mut Vec<f32>,
) {
    query_side_of(geometry, t, k, best, buffer);
}

/// Everything after one block's matrix product (`scratch.raw`): interpolation along the bank
/// side for these `rows` of the block and their `inverse` norms, then along the query side,
/// and the running maximum into `scratch.best`. Compiled twice on x86-64: for AVX2+FMA (chosen
/// at run time when the processor has them) and for the baseline; both give the same results
/// (Rust never fuses a multiply and an add on its own).
fn glue(geometry: &Geometry, rows: &[u32], inverse: &[f32], scratch: &mut MatchScratch) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the processor has the features the function is compiled for.
        unsafe { glue_avx2(geometry, rows, inverse, scratch) };
        return;
    }
    glue_body(geometry, rows, inverse, scratch);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn glue_avx2(
    geometry: &Geometry,
    rows: &[u32],
    inverse: &[f32],
    scratch: &mut MatchScratch,
) {
    glue_body(geometry, rows, inverse, scratch);
}

#[inline(always)]
fn glue_body(geometry: &Geometry, rows: &[u32], inverse: &[f32], scratch: &mut MatchScratch) {
    let Geometry { gh, gw, up_w, .. } = *geometry;
    let (ys, xs) = (&geometry.ys[..], &geometry.xs[..]);
    let (grid, cells) = (geometry.grid(), geometry.cells());
    let k = rows.len();
    let raw = &scratch.raw[..grid * grid];
    let t = &mut scratch.bank_side;
    t.resize(grid * k, 0.0);
    if k == cells {
        // Every row of the block: separable, along x (2 taps) then along y (2 taps).
        let x = &mut scratch.along_x;
        x.resize(grid * gh * up_w, 0.0);
        for (line, out) in raw.chunks_exact(grid).zip(x.chunks_exact_mut(gh * up_w)) {
            for (src, dst) in line.chunks_exact(gw).zip(out.chunks_exact_mut(up_w)) {
                for (d, &(x0, x1, tx)) in dst.iter_mut().zip(xs) {
                    *d = (1.0 - tx) * src[x0] + tx * src[x1];
                }
            }
        }
        for (x, out) in x.chunks_exact(gh * up_w).zip(t.chunks_exact_mut(cells)) {
            for ((&(y0, y1, ty), dst), inv) in ys
                .iter()
                .zip(out.chunks_exact_mut(up_w))
                .zip(inverse.chunks_exact(up_w))
            {
                let (r0, r1) = (&x[y0 * up_w..][..up_w], &x[y1 * up_w..][..up_w]);
                for (((d, a), b), s) in dst.iter_mut().zip(r0).zip(r1).zip(inv) {
                    *d = ((1.0 - ty) * a + ty * b) * s;
                }
            }
        }
    } else {
        // A coreset-reduced block: four taps per kept row.
        let up_w32 = up_w as u32;
        let cells32 = cells as u32;
        scratch.taps.clear();
        scratch
            .taps
            .extend(rows.iter().zip(inverse).map(|(&row, &inv)| {
                let cell = row % cells32;
                let (y0, y1, ty) = ys[(cell / up_w32) as usize];
                let (x0, x1, tx) = xs[(cell % up_w32) as usize];
                [
                    (y0 * gw + x0, (1.0 - ty) * (1.0 - tx) * inv),
                    (y0 * gw + x1, (1.0 - ty) * tx * inv),
                    (y1 * gw + x0, ty * (1.0 - tx) * inv),
                    (y1 * gw + x1, ty * tx * inv),
                ]
            }));
        for (line, out) in raw.chunks_exact(grid).zip(t.chunks_exact_mut(k)) {
            for (d, tap) in out.iter_mut().zip(&scratch.taps) {
                *d = tap[0].1 * line[tap[0].0]
                    + tap[1].1 * line[tap[1].0]
                    + tap[2].1 * line[tap[2].0]
                    + tap[3].1 * line[tap[3].0];
            }
        }
    }
    query_side_of(
        geometry,
        &scratch.bank_side,
        k,
        &mut scratch.best[..cells],
        &mut scratch.query_x,
    );
}

/// The query side for `k` bank rows in `t` (`grid x k`), a chunk of bank rows at a time: along
/// x into `query_x`, then along y, keeping each cell's maximum in `best` (`cells` values)
/// without forming the interpolated matrix.
#[inline(always)]
fn query_side_of(
    geometry: &Geometry,
    t: &[f32],
    k: usize,
    best: &mut [f32],
    query_x: &mut Vec<f32>,
) {
    let Geometry { gh, gw, up_w, .. } = *geometry;
    let (ys, xs) = (&geometry.ys[..], &geometry.xs[..]);
    for k0 in (0..k).step_by(CHUNK) {
        let kc = CHUNK.min(k - k0);
        let p = &mut *query_x;
        p.resize(gh * up_w * kc, 0.0);
        for (ay, out) in p.chunks_exact_mut(up_w * kc).enumerate() {
            for (&(x0, x1, tx), dst) in xs.iter().zip(out.chunks_exact_mut(kc)) {
                let a = &t[(ay * gw + x0) * k + k0..][..kc];
                let b = &t[(ay * gw + x1) * k + k0..][..kc];
                for ((d, a), b) in dst.iter_mut().zip(a).zip(b) {
                    *d = (1.0 - tx) * a + tx * b;
                }
            }
        }
        for (&(y0, y1, ty), best) in ys.iter().zip(best.chunks_exact_mut(up_w)) {
            let (r0, r1) = (
                &p[y0 * up_w * kc..][..up_w * kc],
                &p[y1 * up_w * kc..][..up_w * kc],
            );
            for ((b, a), c) in best
                .iter_mut()
                .zip(r0.chunks_exact(kc))
                .zip(r1.chunks_exact(kc))
            {
                *b = b.max(blend_max(a, c, 1.0 - ty, ty));
            }
        }
    }
}

/// The largest value of `wa * a + wb * b` over two equally long rows; sixteen lanes at a time
/// so that the compiler vectorises it.
#[inline(always)]
fn blend_max(a: &[f32], b: &[f32], wa: f32, wb: f32) -> f32 {
    const LANES: usize = 16;
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let (mut ca, mut cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    for (a, b) in (&mut ca).zip(&mut cb) {
        for j in 0..LANES {
            let v = wa * a[j] + wb * b[j];
            lanes[j] = if v > lanes[j] { v } else { lanes[j] };
        }
    }
    let tail = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(a, b)| wa * a + wb * b);
    // Halve the lanes until one is left (compares, not `f32::max`, so that it vectorises).
    let mut width = LANES;
    while width > 1 {
        width /= 2;
        for j in 0..width {
            let other = lanes[j + width];
            lanes[j] = if other > lanes[j] { other } else { lanes[j] };
        }
    }
    tail.fold(lanes[0], |m, v| if v > m { v } else { m })
}

/// For each of the `n` query rows, the highest dot product with any of the `m` bank rows: the
/// dense nearest neighbour over explicit (upsampled, normalised) features, by blocked matrix
/// products. Kept as the reference the factorised matching is tested and measured against.
pub fn dense_max_similarity(queries: &[f32], bank: &[f32], dim: usize) -> Vec<f32> {
    const BANK_BLOCK: usize = 2048;
    let n = queries.len() / dim;
    let m = bank.len() / dim;
    let mut best = vec![f32::NEG_INFINITY; n];
    let block = BANK_BLOCK.min(m.max(1));
    let mut product = vec![0.0f32; n * block];
    for start in (0..m).step_by(block) {
        let rows = block.min(m - start);
        matmul_transposed(
            queries,
            &bank[start * dim..(start + rows) * dim],
            n,
            dim,
            rows,
            &mut product,
        );
        for (b, row) in best.iter_mut().zip(product.chunks_exact(rows)) {
            *b = b.max(row.iter().copied().fold(f32::NEG_INFINITY, f32::max));
        }
    }
    best
}

/// The anomaly map of one image or tile: per upsampled cell, the mean over stages of
/// 1 - max cosine similarity to the bank. Row-major, `features.height() * features.width()`.
pub fn anomaly_map(features: &PatchFeatures, bank: &MemoryBank) -> Vec<f32> {
    anomaly_map_with(features, bank, &|_| true, &mut MatchScratch::default())
}

/// [`anomaly_map`] against the blocks for which `allow(block)` holds (see
/// [`max_similarity_with`]), with reusable buffers.
pub fn anomaly_map_with(
    features: &PatchFeatures,
    bank: &MemoryBank,
    allow: &dyn Fn(usize) -> bool,
    scratch: &mut MatchScratch,
) -> Vec<f32> {
    assert_eq!(features.tokens.len(), bank.stages(), "stage count mismatch");
    let stages = bank.stages() as f32;
    let mut map = vec![0.0f32; features.patches()];
    for stage in 0..bank.stages() {
        let similarity = max_similarity_with(features, bank, stage, allow, scratch);
        for (cell, s) in map.iter_mut().zip(similarity) {
            *cell += (1.0 - s) / stages;
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random_features(
        gh: usize,
        gw: usize,
        up: usize,
        dim: usize,
        stages: usize,
        seed: u64,
    ) -> PatchFeatures {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        PatchFeatures {
            grid_height: gh,
            grid_width: gw,
            upsample: up,
            dim,
            tokens: (0..stages)
                .map(|_| {
                    (0..gh * gw * dim)
                        .map(|_| rng.random_range(-1.0..1.0))
                        .collect()
                })
                .collect(),
        }
    }

    /// The reference computation: explicit upsampled, normalised features, every pair compared.
    fn brute_force(query: &PatchFeatures, bank: &MemoryBank, stage: usize) -> Vec<f32> {
        let q = query.normalised(stage);
        let b = bank.normalised_rows(stage);
        q.chunks_exact(query.dim)
            .map(|qi| {
                b.chunks_exact(bank.dim)
                    .map(|bj| qi.iter().zip(bj).map(|(x, y)| x * y).sum::<f32>())
                    .fold(f32::NEG_INFINITY, f32::max)
            })
            .collect()
    }

    fn assert_close(a: &[f32], b: &[f32], tolerance: f32) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < tolerance, "{x} vs {y}");
        }
    }

    #[test]
    fn factorised_matching_equals_brute_force() {
        // Non-square grid, three reference blocks, upsampling x2 and x3 and none.
        for up in [2, 3, 1] {
            let mut bank = MemoryBank::new(2, 12, 3, 4, up);
            for seed in 0..3 {
                bank.push(&random_features(3, 4, up, 12, 2, seed));
            }
            assert_eq!(bank.len(), 3 * 12 * up * up);
            let query = random_features(3, 4, up, 12, 2, 99);
            for stage in 0..2 {
                let fast = max_similarity(&query, &bank, stage);
                assert_close(&fast, &brute_force(&query, &bank, stage), 1e-5);
            }
        }
    }

    #[test]
    fn selected_rows_match_brute_force_and_dense() {
        let mut bank = MemoryBank::new(1, 8, 4, 4, 2);
        for seed in 0..2 {
            bank.push(&random_features(4, 4, 2, 8, 1, seed));
        }
        let keep: Vec<usize> = (0..bank.len())
            .filter(|i| i % 7 == 3 || *i == 100)
            .collect();
        let small = bank.select(&keep);
        assert_eq!(small.len(), keep.len());
        // 19 of 128 rows, fewer than the 2 x 16 raw tokens: matched through the kept rows.
        assert!(small.is_sparse() && !bank.is_sparse());
        let query = random_features(4, 4, 2, 8, 1, 7);
        let fast = max_similarity(&query, &small, 0);
        assert_close(&fast, &brute_force(&query, &small, 0), 1e-5);
        // The sparse path with a block filter: as brute force over block 1's kept rows.
        let block_1: Vec<usize> = (0..small.len()).filter(|&i| small.rows[i] >= 64).collect();
        let filtered = max_similarity_with(
            &query,
            &small,
            0,
            &|block| block == 1,
            &mut MatchScratch::default(),
        );
        let only_1 = small.select(&block_1);
        assert_close(&filtered, &brute_force(&query, &only_1, 0), 1e-5);
        // Half the rows: above one per raw token, the per-row taps of the factorised path.
        let half = bank.select(&(0..bank.len()).step_by(2).collect::<Vec<_>>());
        assert!(!half.is_sparse());
        assert_close(
            &max_similarity(&query, &half, 0),
            &brute_force(&query, &half, 0),
            1e-5,
        );
        let dense = dense_max_similarity(&query.normalised(0), &small.normalised_rows(0), 8);
        assert_close(&fast, &dense, 1e-5);
        // Rebuilding from the stored parts gives the same bank.
        let rebuilt =
            MemoryBank::from_parts(8, (4, 4), 2, small.tokens.clone(), small.rows.clone()).unwrap();
        assert_eq!(rebuilt, small);
    }

    #[test]
    fn stacked_sparse_maps_equal_the_maps_of_each_tile() {
        let mut bank = MemoryBank::new(2, 8, 4, 3, 2);
        for seed in 0..3 {
            bank.push(&random_features(4, 3, 2, 8, 2, seed));
        }
        let keep: Vec<usize> = (0..bank.len()).filter(|i| i % 5 == 1).collect();
        let sparse = bank.select(&keep);
        assert!(sparse.is_sparse());
        let tiles: Vec<PatchFeatures> = (10..14)
            .map(|seed| random_features(4, 3, 2, 8, 2, seed))
            .collect();
        let mut scratch = MatchScratch::default();
        for allow in [&(|_| true) as &dyn Fn(usize) -> bool, &|block| block != 1] {
            let stacked = sparse_anomaly_maps(&tiles, &sparse, allow, &mut scratch);
            assert_eq!(stacked.len(), tiles.len());
            for (tile, map) in tiles.iter().zip(&stacked) {
                let alone = anomaly_map_with(tile, &sparse, allow, &mut MatchScratch::default());
                assert_close(map, &alone, 1e-5);
            }
        }
    }

    #[test]
    fn map_is_zero_for_a_reference_and_mean_over_stages() {
        let reference = random_features(2, 3, 2, 5, 2, 1);
        let mut bank = MemoryBank::new(2, 5, 2, 3, 2);
        bank.push(&reference);
        let map = anomaly_map(&reference, &bank);
        assert!(map.iter().all(|v| v.abs() < 1e-5), "{map:?}");
        // A query equal to the reference in stage 0 and to its negation in stage 1: each cell's
        // best stage-1 similarity is some value s, and the map is (0 + 1 - s) / 2.
        let mut query = reference.clone();
        query.tokens[1].iter_mut().for_each(|v| *v = -*v);
        let map = anomaly_map(&query, &bank);
        let stage1 = brute_force(&query, &bank, 1);
        for (m, s) in map.iter().zip(stage1) {
            assert!((m - (1.0 - s) / 2.0).abs() < 1e-5);
        }
    }

    #[test]
    fn append_and_parts_validation() {
        let mut a = MemoryBank::new(1, 4, 2, 2, 2);
        a.push(&random_features(2, 2, 2, 4, 1, 1));
        let mut b = MemoryBank::new(1, 4, 2, 2, 2);
        b.push(&random_features(2, 2, 2, 4, 1, 2));
        let mut both = a.clone();
        both.append(&b);
        assert_eq!(both.len(), 32);
        assert_eq!(both.blocks(), 2);
        assert_eq!(both.normalised_rows(0)[16 * 4..], b.normalised_rows(0)[..]);
        assert!(MemoryBank::from_parts(4, (2, 2), 2, vec![vec![0.0; 16]], vec![16]).is_err());
        assert!(MemoryBank::from_parts(4, (2, 2), 2, vec![vec![0.0; 16]], vec![3, 2]).is_err());
        assert!(MemoryBank::from_parts(4, (2, 2), 2, vec![vec![0.0; 15]], vec![0]).is_err());
    }
}
