//! Greedy k-center coreset selection, as PatchCore uses to shrink a memory bank.
//!
//! The greedy rule (repeatedly take the point farthest from everything taken so far) is the
//! classic 2-approximation of the k-center problem: every input point ends up within twice the
//! optimal covering radius of the coreset, so nearest-neighbour distances to the coreset stay close
//! to those against the full bank. Distances are Euclidean, optionally measured after a sparse
//! random projection (Johnson–Lindenstrauss) to make each step cheaper, as PatchCore does.

use ndarray::ArrayView2;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Work (rows x dims) below which one thread is used: spawning costs more than it saves.
const PARALLEL_MIN_WORK: usize = 1 << 18;

/// Selects `max(1, ceil(ratio * n))` rows of `features` (clamped to `n`) by greedy k-center.
///
/// Returns row indices in selection order, all distinct. The first pick is drawn uniformly from
/// the `seed`ed generator, so the result is deterministic for a given seed. When the count
/// reaches `n` (e.g. `ratio >= 1`) every index is returned in order `0..n` without any distance
/// work. With `projection_dim = Some(p)` and `p < d` the distances are computed in a `p`-dimensional
/// very sparse random projection (Li, Hastie and Church 2006) drawn from the same seed; otherwise
/// in the original space. Ties go to the lowest index. Cost: O(n·k·d') plus O(n·d) for the
/// projection, with an incremental min-distance vector (no n×n matrix).
///
/// A non-finite or non-positive `ratio` selects one row. An empty input returns an empty vector.
/// Rows containing NaN still yield `k` distinct indices, but their placement is unspecified.
pub fn greedy_coreset(
    features: ArrayView2<f32>,
    ratio: f32,
    projection_dim: Option<usize>,
    seed: u64,
) -> Vec<usize> {
    let n = features.nrows();
    if n == 0 {
        return Vec::new();
    }
    let k = coreset_size(n, ratio);
    if k >= n {
        return (0..n).collect();
    }

    let mut rng = StdRng::seed_from_u64(seed);
    let first = rng.random_range(0..n);
    let d = features.ncols();
    let (data, dim) = match projection_dim {
        Some(p) if p > 0 && p < d => {
            let proj = SparseProjection::new(d, p, &mut rng);
            (proj.apply(features), p)
        }
        _ => (to_contiguous(features), d),
    };
    greedy_on(&data, n, dim, k, first)
}

/// Number of rows a coreset of `ratio` keeps out of `n`: `max(1, ceil(ratio * n))`, at most `n`.
pub fn coreset_size(n: usize, ratio: f32) -> usize {
    if n == 0 {
        return 0;
    }
    let r = ratio as f64;
    if !r.is_finite() || r <= 0.0 {
        return 1;
    }
    // Tolerate the f32 rounding of `ratio` (0.1f32 * 40 is 4.00000006, meant as 4).
    let x = r * n as f64;
    let k = (x - x * 1e-6).ceil();
    if k >= n as f64 {
        n
    } else {
        (k as usize).max(1)
    }
}

fn to_contiguous(features: ArrayView2<f32>) -> Vec<f32> {
    let mut out = Vec::with_capacity(features.len());
    for row in features.rows() {
        out.extend(row.iter().copied());
    }
    out
}

/// A very sparse random projection: each output dimension sums a few signed input entries.
///
/// Entry (i, j) is `+-sqrt(s / p)` with probability `1 / (2s)` each and 0 otherwise, with
/// `s = sqrt(d)`; this keeps squared distances unbiased while touching only ~`d/s` inputs per
/// output.
struct SparseProjection {
    /// Per output dimension: (input index, sign) pairs.
    columns: Vec<Vec<(usize, f32)>>,
    scale: f32,
}

impl SparseProjection {
    fn new(d: usize, p: usize, rng: &mut StdRng) -> Self {
        let s = (d as f64).sqrt().max(1.0);
        let density = 1.0 / s;
        let columns = (0..p)
            .map(|_| {
                let mut col = Vec::new();
                for i in 0..d {
                    if rng.random::<f64>() < density {
                        let sign = if rng.random::<bool>() { 1.0 } else { -1.0 };
                        col.push((i, sign));
                    }
                }
                col
            })
            .collect();
        SparseProjection {
            columns,
            scale: (s / p as f64).sqrt() as f32,
        }
    }

    fn apply(&self, features: ArrayView2<f32>) -> Vec<f32> {
        let p = self.columns.len();
        let mut out = vec![0.0f32; features.nrows() * p];
        for (row, dst) in features.rows().into_iter().zip(out.chunks_exact_mut(p)) {
            for (o, col) in dst.iter_mut().zip(&self.columns) {
                let acc: f32 = col.iter().map(|&(i, sign)| sign * row[i]).sum();
                *o = acc * self.scale;
            }
        }
        out
    }
}

/// Squared Euclidean distance with several accumulators so the loop vectorises.
#[inline]
fn sq_dist(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for j in 0..8 {
            let t = x[j] - y[j];
            acc[j] += t * t;
        }
    }
    let mut tail = 0.0f32;
    for (x, y) in ra.iter().zip(rb) {
        let t = x - y;
        tail += t * t;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// Updates `min_d[i] = min(min_d[i], |x_i - c|^2)` for a chunk starting at row `start` and returns
/// the chunk's farthest row (lowest index on ties), if any row is still eligible.
fn update_chunk(
    data: &[f32],
    dim: usize,
    start: usize,
    min_d: &mut [f32],
    centre: &[f32],
) -> Option<(usize, f32)> {
    let mut best: Option<(usize, f32)> = None;
    for (off, md) in min_d.iter_mut().enumerate() {
        if *md == f32::NEG_INFINITY {
            continue; // already selected
        }
        let i = start + off;
        let dist = sq_dist(&data[i * dim..(i + 1) * dim], centre);
        if dist < *md {
            *md = dist;
        }
        if best.is_none_or(|(_, b)| *md > b || (b.is_nan() && !md.is_nan())) {
            best = Some((i, *md));
        }
    }
    best
}

/// Combines chunk winners in index order, keeping the lowest index on ties and skipping NaN.
fn better(a: Option<(usize, f32)>, b: Option<(usize, f32)>) -> Option<(usize, f32)> {
    match (a, b) {
        (None, x) | (x, None) => x,
        (Some(x), Some(y)) => {
            if y.1 > x.1 || (x.1.is_nan() && !y.1.is_nan()) {
                Some(y)
            } else {
                Some(x)
            }
        }
    }
}

fn greedy_on(data: &[f32], n: usize, dim: usize, k: usize, first: usize) -> Vec<usize> {
    let mut selected = Vec::with_capacity(k);
    // Squared distance to the nearest selected row; NEG_INFINITY marks selected rows.
    let mut min_d = vec![f32::INFINITY; n];
    let threads = if n * dim >= PARALLEL_MIN_WORK {
        std::thread::available_parallelism()
            .map(|t| t.get())
            .unwrap_or(1)
            .min(n / 1024)
            .max(1)
    } else {
        1
    };
    let chunk = n.div_ceil(threads);

    let mut next = first;
    loop {
        selected.push(next);
        min_d[next] = f32::NEG_INFINITY;
        if selected.len() == k {
            break;
        }
        let centre = &data[next * dim..(next + 1) * dim];
        let best = if threads == 1 {
            update_chunk(data, dim, 0, &mut min_d, centre)
        } else {
            std::thread::scope(|scope| {
                let handles: Vec<_> = min_d
                    .chunks_mut(chunk)
                    .enumerate()
                    .map(|(c, md)| {
                        scope.spawn(move || update_chunk(data, dim, c * chunk, md, centre))
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("coreset worker panicked"))
                    .fold(None, better)
            })
        };
        next = match best {
            Some((i, _)) => i,
            // Unreachable while k < n, kept as a defensive fallback.
            None => (0..n).find(|&i| min_d[i] != f32::NEG_INFINITY).unwrap(),
        };
    }
    selected
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    fn random_points(n: usize, d: usize, seed: u64) -> Array2<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        Array2::from_shape_fn((n, d), |_| rng.random_range(-1.0f32..1.0))
    }

    fn dist(a: &[f32], b: &[f32]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| ((x - y) as f64).powi(2))
            .sum::<f64>()
            .sqrt()
    }

    /// Largest distance from any point to its nearest member of `set`.
    fn covering_radius(x: &Array2<f32>, set: &[usize]) -> f64 {
        let rows: Vec<&[f32]> = x
            .rows()
            .into_iter()
            .map(|r| r.to_slice().unwrap())
            .collect();
        rows.iter()
            .map(|p| {
                set.iter()
                    .map(|&s| dist(p, rows[s]))
                    .fold(f64::INFINITY, f64::min)
            })
            .fold(0.0, f64::max)
    }

    /// Textbook greedy: recompute every point's distance to the whole set at every step.
    fn naive_greedy(x: &Array2<f32>, k: usize, first: usize) -> Vec<usize> {
        let rows: Vec<&[f32]> = x
            .rows()
            .into_iter()
            .map(|r| r.to_slice().unwrap())
            .collect();
        let mut set = vec![first];
        while set.len() < k {
            let mut best = (usize::MAX, f64::NEG_INFINITY);
            for (i, p) in rows.iter().enumerate() {
                if set.contains(&i) {
                    continue;
                }
                let d = set
                    .iter()
                    .map(|&s| dist(p, rows[s]))
                    .fold(f64::INFINITY, f64::min);
                if d > best.1 {
                    best = (i, d);
                }
            }
            set.push(best.0);
        }
        set
    }

    fn combinations(n: usize, k: usize) -> Vec<Vec<usize>> {
        fn rec(start: usize, n: usize, k: usize, cur: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
            if cur.len() == k {
                out.push(cur.clone());
                return;
            }
            for i in start..n {
                cur.push(i);
                rec(i + 1, n, k, cur, out);
                cur.pop();
            }
        }
        let mut out = Vec::new();
        rec(0, n, k, &mut Vec::new(), &mut out);
        out
    }

    fn first_pick(n: usize, seed: u64) -> usize {
        StdRng::seed_from_u64(seed).random_range(0..n)
    }

    #[test]
    fn sizes() {
        assert_eq!(coreset_size(10, 0.25), 3);
        assert_eq!(coreset_size(8, 0.25), 2);
        assert_eq!(coreset_size(10, 0.0), 1);
        assert_eq!(coreset_size(10, 1e-6), 1);
        assert_eq!(coreset_size(10, f32::NAN), 1);
        assert_eq!(coreset_size(10, 1.0), 10);
        assert_eq!(coreset_size(10, 3.0), 10);
        assert_eq!(coreset_size(0, 0.5), 0);
        let x = random_points(40, 5, 1);
        assert_eq!(greedy_coreset(x.view(), 0.1, None, 0).len(), 4);
        assert_eq!(greedy_coreset(x.view(), 0.0, None, 0).len(), 1);
        assert!(greedy_coreset(Array2::<f32>::zeros((0, 3)).view(), 0.5, None, 0).is_empty());
    }

    #[test]
    fn ratio_one_returns_all() {
        let x = random_points(17, 4, 2);
        assert_eq!(
            greedy_coreset(x.view(), 1.0, None, 9),
            (0..17).collect::<Vec<_>>()
        );
        assert_eq!(
            greedy_coreset(x.view(), 1.0, Some(2), 9),
            (0..17).collect::<Vec<_>>()
        );
    }

    #[test]
    fn hand_made_line() {
        // Points on a line at 0, 1, 2, 10, 11; start at index 0 (value 0).
        let x = Array2::from_shape_vec((5, 1), vec![0.0f32, 1.0, 2.0, 10.0, 11.0]).unwrap();
        assert_eq!(greedy_on(x.as_slice().unwrap(), 5, 1, 3, 0), vec![0, 4, 2]);
        // From 1.0 the farthest is 11; then 0, 2 and 10 are all at distance 1: the lowest index wins.
        assert_eq!(greedy_on(x.as_slice().unwrap(), 5, 1, 3, 1), vec![1, 4, 0]);
    }

    #[test]
    fn matches_naive_greedy() {
        for (seed, n, d, ratio) in [(3u64, 30, 3, 0.2f32), (4, 50, 7, 0.5), (5, 64, 16, 0.1)] {
            let x = random_points(n, d, seed);
            let got = greedy_coreset(x.view(), ratio, None, seed);
            let want = naive_greedy(&x, coreset_size(n, ratio), first_pick(n, seed));
            assert_eq!(got, want, "seed {seed}");
        }
    }

    #[test]
    fn parallel_path_matches_naive() {
        // n * d above PARALLEL_MIN_WORK so the threaded update runs (when cores exist).
        let (n, d) = (4096, 64);
        let x = random_points(n, d, 11);
        let got = greedy_coreset(x.view(), 0.005, None, 11);
        let data = to_contiguous(x.view());
        let single = {
            // Same computation forced onto one chunk.
            let k = coreset_size(n, 0.005);
            let mut sel = vec![first_pick(n, 11)];
            let mut md = vec![f32::INFINITY; n];
            md[sel[0]] = f32::NEG_INFINITY;
            while sel.len() < k {
                let c = *sel.last().unwrap();
                let (i, _) = update_chunk(&data, d, 0, &mut md, &data[c * d..(c + 1) * d]).unwrap();
                md[i] = f32::NEG_INFINITY;
                sel.push(i);
            }
            sel
        };
        assert_eq!(got, single);
        assert_eq!(got.len(), 21);
        assert_eq!(got, naive_greedy(&x, 21, first_pick(n, 11)));
    }

    #[test]
    fn two_approximation_against_brute_force_k_center() {
        for seed in 0..5u64 {
            let x = random_points(11, 2, 100 + seed);
            for k in 1..=4 {
                let ratio = k as f32 / 11.0;
                let got = greedy_coreset(x.view(), ratio, None, seed);
                assert_eq!(got.len(), k);
                let optimal = combinations(11, k)
                    .iter()
                    .map(|s| covering_radius(&x, s))
                    .fold(f64::INFINITY, f64::min);
                let r = covering_radius(&x, &got);
                assert!(r >= optimal - 1e-9);
                assert!(r <= 2.0 * optimal + 1e-6, "k={k} r={r} opt={optimal}");
            }
        }
    }

    #[test]
    fn covering_radius_bound() {
        // The greedy radius bound is the distance of the last pick to the earlier picks: no point
        // is farther than that from the final set, and all picks are at least that far apart.
        let x = random_points(200, 5, 7);
        let sel = greedy_coreset(x.view(), 0.1, None, 3);
        let rows: Vec<&[f32]> = x
            .rows()
            .into_iter()
            .map(|r| r.to_slice().unwrap())
            .collect();
        let last = *sel.last().unwrap();
        let bound = sel[..sel.len() - 1]
            .iter()
            .map(|&s| dist(rows[last], rows[s]))
            .fold(f64::INFINITY, f64::min);
        assert!(covering_radius(&x, &sel) <= bound + 1e-5);
        for (a, &i) in sel.iter().enumerate() {
            for &j in &sel[a + 1..] {
                assert!(dist(rows[i], rows[j]) >= bound - 1e-5);
            }
        }
    }

    #[test]
    fn deterministic_and_distinct() {
        let x = random_points(100, 8, 5);
        let a = greedy_coreset(x.view(), 0.3, Some(4), 42);
        let b = greedy_coreset(x.view(), 0.3, Some(4), 42);
        assert_eq!(a, b);
        let mut firsts: Vec<usize> = (0..10)
            .map(|s| greedy_coreset(x.view(), 0.3, None, s)[0])
            .collect();
        firsts.dedup();
        assert!(firsts.len() > 1, "first pick should depend on the seed");
        let mut sorted = a.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 30);
    }

    #[test]
    fn duplicates_and_nan_still_give_distinct_indices() {
        let x = Array2::<f32>::ones((10, 3));
        let sel = greedy_coreset(x.view(), 0.5, None, 1);
        let mut s = sel.clone();
        s.sort_unstable();
        s.dedup();
        assert_eq!(s.len(), 5);

        let mut y = random_points(10, 3, 2);
        y[[4, 1]] = f32::NAN;
        let sel = greedy_coreset(y.view(), 0.6, None, 1);
        let mut s = sel.clone();
        s.sort_unstable();
        s.dedup();
        assert_eq!(s.len(), 6);
    }

    #[test]
    fn projected_selection_is_greedy_in_projected_space() {
        let (n, d, p, seed) = (60, 32, 8, 9u64);
        let x = random_points(n, d, seed);
        let got = greedy_coreset(x.view(), 0.2, Some(p), seed);
        let mut rng = StdRng::seed_from_u64(seed);
        let first: usize = rng.random_range(0..n);
        let proj = SparseProjection::new(d, p, &mut rng);
        let projected = Array2::from_shape_vec((n, p), proj.apply(x.view())).unwrap();
        assert_eq!(got, naive_greedy(&projected, coreset_size(n, 0.2), first));
        // A projection dimension not below d means "no projection".
        assert_eq!(
            greedy_coreset(x.view(), 0.2, Some(d), seed),
            greedy_coreset(x.view(), 0.2, None, seed)
        );
    }

    #[test]
    fn projection_matches_dense_product_and_keeps_distances() {
        let (n, d, p) = (20, 400, 300);
        let x = random_points(n, d, 13);
        let mut rng = StdRng::seed_from_u64(21);
        let proj = SparseProjection::new(d, p, &mut rng);
        let mut dense = Array2::<f32>::zeros((d, p));
        for (j, col) in proj.columns.iter().enumerate() {
            for &(i, sign) in col {
                dense[[i, j]] = sign * proj.scale;
            }
        }
        let want = x.dot(&dense);
        let got = proj.apply(x.view());
        for (a, b) in got.iter().zip(want.iter()) {
            assert!((a - b).abs() < 1e-4);
        }
        // Johnson-Lindenstrauss: squared distances preserved on average (fixed seed).
        let y = Array2::from_shape_vec((n, p), got).unwrap();
        let mut ratios = Vec::new();
        for i in 0..n {
            for j in i + 1..n {
                let a = dist(x.row(i).to_slice().unwrap(), x.row(j).to_slice().unwrap());
                let b = dist(y.row(i).to_slice().unwrap(), y.row(j).to_slice().unwrap());
                ratios.push(b / a);
            }
        }
        let mean = ratios.iter().sum::<f64>() / ratios.len() as f64;
        assert!((mean - 1.0).abs() < 0.1, "mean ratio {mean}");
        assert!(ratios.iter().all(|r| (0.6..1.4).contains(r)));
    }

    #[test]
    fn non_contiguous_view() {
        let x = random_points(30, 6, 4);
        let t = x.t().to_owned(); // 6 x 30
        let view = t.t(); // 30 x 6, column-major view
        assert_eq!(
            greedy_coreset(view, 0.2, None, 3),
            greedy_coreset(x.view(), 0.2, None, 3)
        );
    }

    #[test]
    fn sq_dist_matches_simple_sum() {
        let a: Vec<f32> = (0..19).map(|i| i as f32 * 0.5).collect();
        let b: Vec<f32> = (0..19).map(|i| (i * i) as f32 * 0.1).collect();
        let want: f32 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum();
        assert!((sq_dist(&a, &b) - want).abs() <= want * 1e-6);
    }
}
