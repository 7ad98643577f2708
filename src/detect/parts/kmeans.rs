//! k-means clustering (Euclidean, k-means++ seeding, Lloyd iterations, restarts) and the mean
//! silhouette coefficient used to choose the number of clusters.
//!
//! Points are the rows of a row-major `n x dim` matrix. Callers check the shapes (at least `k`
//! points, `dim > 0`); squared distances come from `|x|^2 + |c|^2 - 2 x.c` with the dot products
//! as one matrix product.

use crate::detect::patch::matmul_transposed;
use rand::rngs::StdRng;
use rand::Rng;

/// Lloyd iterations stop here even if assignments still change.
pub const MAX_ITERATIONS: usize = 100;

/// One k-means solution.
#[derive(Debug, Clone, PartialEq)]
pub struct Clustering {
    /// Row-major `k x dim` cluster centres.
    pub centres: Vec<f32>,
    /// Nearest centre per point (`n`).
    pub assignments: Vec<usize>,
    /// Sum of squared Euclidean distances of the points to their nearest centre.
    pub inertia: f64,
}

/// k-means with k-means++ seeding: `restarts` (at least 1) independent runs of Lloyd iterations
/// until the assignments stop changing or [`MAX_ITERATIONS`], keeping the lowest inertia.
/// Deterministic for the state of `rng`.
pub fn kmeans(
    points: &[f32],
    dim: usize,
    k: usize,
    restarts: usize,
    rng: &mut StdRng,
) -> Clustering {
    let norms = squared_norms(points, dim);
    let mut run = || {
        let seeds = kmeans_plus_plus(points, &norms, dim, k, rng);
        lloyd(points, &norms, dim, seeds)
    };
    let mut best = run();
    for _ in 1..restarts {
        let next = run();
        if next.inertia < best.inertia {
            best = next;
        }
    }
    best
}

/// k-means++ seeding (Arthur and Vassilvitskii 2007): the first centre uniformly, each further
/// one with probability proportional to its squared distance to the nearest chosen centre.
fn kmeans_plus_plus(
    points: &[f32],
    norms: &[f32],
    dim: usize,
    k: usize,
    rng: &mut StdRng,
) -> Vec<f32> {
    let n = norms.len();
    let mut centres = Vec::with_capacity(k * dim);
    let first = rng.random_range(0..n);
    centres.extend_from_slice(row(points, dim, first));
    let mut nearest: Vec<f64> = (0..n)
        .map(|i| squared_distance(row(points, dim, i), row(points, dim, first)))
        .collect();
    while centres.len() < k * dim {
        let total: f64 = nearest.iter().sum();
        let chosen = if total > 0.0 {
            let mut target = rng.random::<f64>() * total;
            let mut chosen = n - 1;
            for (i, d) in nearest.iter().enumerate() {
                if target < *d {
                    chosen = i;
                    break;
                }
                target -= d;
            }
            chosen
        } else {
            // Every point coincides with a chosen centre: any point will do.
            rng.random_range(0..n)
        };
        let centre = row(points, dim, chosen).to_vec();
        for (i, d) in nearest.iter_mut().enumerate() {
            *d = d.min(squared_distance(row(points, dim, i), &centre));
        }
        centres.extend_from_slice(&centre);
    }
    centres
}

/// Lloyd iterations from the given centres.
fn lloyd(points: &[f32], norms: &[f32], dim: usize, mut centres: Vec<f32>) -> Clustering {
    let k = centres.len() / dim;
    let mut assignments = vec![usize::MAX; norms.len()];
    for _ in 0..MAX_ITERATIONS {
        let (next, distances) = nearest_centres(points, norms, dim, &centres);
        if next == assignments {
            break;
        }
        assignments = next;
        update_centres(points, dim, k, &assignments, &distances, &mut centres);
    }
    let (assignments, distances) = nearest_centres(points, norms, dim, &centres);
    Clustering {
        centres,
        assignments,
        inertia: distances.iter().map(|&d| d as f64).sum(),
    }
}

/// Centres become the means of their points. An empty cluster takes the point farthest from
/// its centre (each empty cluster a different one), as scikit-learn does.
fn update_centres(
    points: &[f32],
    dim: usize,
    k: usize,
    assignments: &[usize],
    distances: &[f32],
    centres: &mut [f32],
) {
    let mut sums = vec![0.0f64; k * dim];
    let mut counts = vec![0usize; k];
    for (i, &c) in assignments.iter().enumerate() {
        counts[c] += 1;
        let sum = &mut sums[c * dim..(c + 1) * dim];
        sum.iter_mut()
            .zip(row(points, dim, i))
            .for_each(|(s, &x)| *s += x as f64);
    }
    let mut donors = Vec::new().into_iter();
    if counts.contains(&0) {
        let mut farthest: Vec<usize> = (0..assignments.len()).collect();
        farthest.sort_by(|&a, &b| distances[b].total_cmp(&distances[a]).then(a.cmp(&b)));
        donors = farthest.into_iter();
    }
    for c in 0..k {
        let centre = &mut centres[c * dim..(c + 1) * dim];
        if counts[c] > 0 {
            let sum = &sums[c * dim..(c + 1) * dim];
            centre
                .iter_mut()
                .zip(sum)
                .for_each(|(m, &s)| *m = (s / counts[c] as f64) as f32);
        } else if let Some(donor) = donors.next() {
            centre.copy_from_slice(row(points, dim, donor));
        }
    }
}

/// Nearest centre and squared distance to it for every point (ties: the lower centre index).
pub fn nearest_centres(
    points: &[f32],
    norms: &[f32],
    dim: usize,
    centres: &[f32],
) -> (Vec<usize>, Vec<f32>) {
    let (n, k) = (norms.len(), centres.len() / dim);
    let centre_norms = squared_norms(centres, dim);
    let mut dots = vec![0.0f32; n * k];
    matmul_transposed(points, centres, n, dim, k, &mut dots);
    let mut nearest = Vec::with_capacity(n);
    let mut distances = Vec::with_capacity(n);
    for (i, row) in dots.chunks_exact(k).enumerate() {
        let (best, distance) = row
            .iter()
            .zip(&centre_norms)
            .map(|(dot, c)| (norms[i] + c - 2.0 * dot).max(0.0))
            .enumerate()
            .fold(
                (0, f32::INFINITY),
                |acc, (c, d)| if d < acc.1 { (c, d) } else { acc },
            );
        nearest.push(best);
        distances.push(distance);
    }
    (nearest, distances)
}

/// The Euclidean distances between the points `sample` (row-major `m x m`, `m = sample.len()`).
pub fn pairwise_distances(points: &[f32], dim: usize, sample: &[usize]) -> Vec<f32> {
    let m = sample.len();
    let rows: Vec<f32> = sample
        .iter()
        .flat_map(|&i| row(points, dim, i).iter().copied())
        .collect();
    let norms = squared_norms(&rows, dim);
    let mut distances = vec![0.0f32; m * m];
    matmul_transposed(&rows, &rows, m, dim, m, &mut distances);
    for i in 0..m {
        for j in 0..m {
            let d = &mut distances[i * m + j];
            *d = if i == j {
                0.0
            } else {
                (norms[i] + norms[j] - 2.0 * *d).max(0.0).sqrt()
            };
        }
    }
    distances
}

/// Mean silhouette coefficient (Rousseeuw 1987) of a clustering of `m` points given their
/// pairwise distances (`m x m`) and cluster labels (`< k`): per point `s = (b - a) / max(a, b)`
/// with `a` its mean distance to the other points of its cluster and `b` the lowest mean distance
/// to the points of another cluster; `s = 0` for a point alone in its cluster (scikit-learn's
/// convention). `None` when fewer than two clusters are present.
pub fn mean_silhouette(distances: &[f32], labels: &[usize], k: usize) -> Option<f64> {
    let m = labels.len();
    let mut sizes = vec![0usize; k];
    labels.iter().for_each(|&l| sizes[l] += 1);
    if sizes.iter().filter(|&&s| s > 0).count() < 2 {
        return None;
    }
    let mut total = 0.0f64;
    let mut sums = vec![0.0f64; k];
    for i in 0..m {
        sums.iter_mut().for_each(|s| *s = 0.0);
        for (j, &l) in labels.iter().enumerate() {
            sums[l] += distances[i * m + j] as f64;
        }
        let own = labels[i];
        if sizes[own] < 2 {
            continue;
        }
        let a = sums[own] / (sizes[own] - 1) as f64;
        let b = (0..k)
            .filter(|&c| c != own && sizes[c] > 0)
            .map(|c| sums[c] / sizes[c] as f64)
            .fold(f64::INFINITY, f64::min);
        let denominator = a.max(b);
        if denominator > 0.0 {
            total += (b - a) / denominator;
        }
    }
    Some(total / m as f64)
}

/// The squared length of every `dim`-long row.
pub fn squared_norms(values: &[f32], dim: usize) -> Vec<f32> {
    values
        .chunks_exact(dim)
        .map(|r| r.iter().map(|v| v * v).sum())
        .collect()
}

fn row(points: &[f32], dim: usize, i: usize) -> &[f32] {
    &points[i * dim..(i + 1) * dim]
}

fn squared_distance(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// `per` points around each of `centres` (2-d), uniform noise of half-width `spread`.
    fn blobs(centres: &[[f32; 2]], per: usize, spread: f32, seed: u64) -> (Vec<f32>, Vec<usize>) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut points = Vec::new();
        let mut truth = Vec::new();
        for _ in 0..per {
            for (c, centre) in centres.iter().enumerate() {
                points.push(centre[0] + rng.random_range(-spread..spread));
                points.push(centre[1] + rng.random_range(-spread..spread));
                truth.push(c);
            }
        }
        (points, truth)
    }

    /// True when `a` and `b` are the same partition (labels up to a permutation).
    fn same_partition(a: &[usize], b: &[usize]) -> bool {
        let mut map = std::collections::HashMap::new();
        let mut back = std::collections::HashMap::new();
        a.iter()
            .zip(b)
            .all(|(x, y)| *map.entry(x).or_insert(y) == y && *back.entry(y).or_insert(x) == x)
    }

    #[test]
    fn recovers_three_separated_clusters_deterministically() {
        let (points, truth) = blobs(&[[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], 40, 1.0, 1);
        let run = kmeans(&points, 2, 3, 4, &mut StdRng::seed_from_u64(7));
        assert!(same_partition(&run.assignments, &truth));
        let again = kmeans(&points, 2, 3, 4, &mut StdRng::seed_from_u64(7));
        assert_eq!(run, again);
        // Centres are the cluster means; inertia their summed squared distances.
        let mut want = 0.0f64;
        for (i, &c) in run.assignments.iter().enumerate() {
            let centre = &run.centres[c * 2..c * 2 + 2];
            let n = run.assignments.iter().filter(|&&x| x == c).count() as f32;
            let mean_x: f32 = (0..truth.len())
                .filter(|&j| run.assignments[j] == c)
                .map(|j| points[j * 2])
                .sum::<f32>()
                / n;
            assert!((centre[0] - mean_x).abs() < 1e-4);
            want += squared_distance(&points[i * 2..i * 2 + 2], centre);
        }
        assert!((run.inertia - want).abs() < 1e-3 * want);
    }

    #[test]
    fn empty_clusters_are_refilled() {
        // Two distinct points, k = 2, but both seeds on the same point would leave a cluster
        // empty: identical points make k-means++ fall back to any point.
        let points = vec![0.0, 0.0, 0.0, 0.0, 5.0, 5.0];
        let run = kmeans(&points, 2, 2, 3, &mut StdRng::seed_from_u64(3));
        assert!(same_partition(&run.assignments, &[0, 0, 1]));
        assert!(run.inertia < 1e-9);
    }

    #[test]
    fn nearest_centres_match_brute_force() {
        let (points, _) = blobs(&[[0.0, 0.0], [3.0, 1.0]], 10, 2.0, 5);
        let centres = vec![0.5, 0.5, 2.0, 1.0, -1.0, 3.0];
        let (nearest, distances) =
            nearest_centres(&points, &squared_norms(&points, 2), 2, &centres);
        for i in 0..points.len() / 2 {
            let d: Vec<f64> = (0..3)
                .map(|c| squared_distance(&points[i * 2..i * 2 + 2], &centres[c * 2..c * 2 + 2]))
                .collect();
            let best = (0..3).min_by(|&a, &b| d[a].total_cmp(&d[b])).unwrap();
            assert_eq!(nearest[i], best);
            assert!((distances[i] as f64 - d[best]).abs() < 1e-4);
        }
    }

    #[test]
    fn silhouette_matches_brute_force() {
        let (points, _) = blobs(&[[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]], 5, 2.5, 9);
        let labels: Vec<usize> = (0..15).map(|i| (i * 7) % 3).collect();
        let sample: Vec<usize> = (0..15).collect();
        let distances = pairwise_distances(&points, 2, &sample);
        let got = mean_silhouette(&distances, &labels, 3).unwrap();
        let d = |i: usize, j: usize| {
            squared_distance(&points[i * 2..i * 2 + 2], &points[j * 2..j * 2 + 2]).sqrt()
        };
        let mut want = 0.0;
        for i in 0..15 {
            let mean_to = |c: usize| {
                let others: Vec<usize> = (0..15).filter(|&j| j != i && labels[j] == c).collect();
                others.iter().map(|&j| d(i, j)).sum::<f64>() / others.len() as f64
            };
            let a = mean_to(labels[i]);
            let b = (0..3)
                .filter(|&c| c != labels[i])
                .map(mean_to)
                .fold(f64::INFINITY, f64::min);
            want += (b - a) / a.max(b);
        }
        want /= 15.0;
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        // Hand-computed: two pairs on a line, {0, 1} and {10, 11}.
        let line = [0.0f32, 1.0, 10.0, 11.0];
        let distances = pairwise_distances(&line, 1, &[0, 1, 2, 3]);
        let s = mean_silhouette(&distances, &[0, 0, 1, 1], 2).unwrap();
        // s(0) = (10.5 - 1) / 10.5, s(1) = (9.5 - 1) / 9.5, symmetric for 2 and 3.
        let want = ((9.5 / 10.5) + (8.5 / 9.5)) / 2.0;
        assert!((s - want).abs() < 1e-6, "{s} vs {want}");
        assert_eq!(mean_silhouette(&distances, &[0, 0, 0, 0], 2), None);
    }
}
