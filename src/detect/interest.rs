//! The interest detector (LogSAD paper eq. 2-3): a frame's part instances matched one to one
//! against the reference images' instances by minimum-cost bipartite assignment.
//!
//! As the authors compute it (`shared/docs/reference-implementation.md`, "Interest detector"):
//! per instance and per stage, the upsampled, L2-normalised patch features inside the instance's
//! mask are averaged and the mean is L2-normalised again; the cost of pairing a frame instance
//! with a reference instance is 1 - cosine; a rectangular minimum-cost assignment pairs
//! min(N_frame, N_ref) of them; the stage's score is the summed cost of the pairs over
//! min(N_frame, N_ref), and the image score is the mean over stages. No instance on either side
//! gives 1.0. The reference side is the union of the instances of all reference images.
//!
//! Instances left unpaired (the surplus of the larger side) cost nothing: a missing or extra
//! instance raises the score only when it changes which pairs are best. Counting instances is
//! the composition rules' job (eq. 4).
//!
//! The assignment is the `lsap` crate: a line-by-line port of SciPy's
//! `linear_sum_assignment` (Crouse's shortest augmenting path variant of Jonker-Volgenant),
//! the routine the authors call. It solves rectangular problems on `f64` costs directly, with
//! SciPy's tie-breaking; `pathfinding`'s Kuhn-Munkres, the other candidate, needs totally
//! ordered (integer) weights and rows <= columns, so costs would have to be transposed and
//! quantised, and the result would be optimal only up to the quantum.

use serde::{Deserialize, Serialize};

use super::features::{normalise_rows, PatchFeatures};
use super::parts::Instance;

/// What can go wrong in the interest detector.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InterestError {
    /// A cost matrix whose length is not `rows * cols`.
    #[error("cost matrix has {len} entries, expected {rows} x {cols}")]
    CostShape {
        len: usize,
        rows: usize,
        cols: usize,
    },
    /// A NaN or infinite cost (from NaN or infinite features).
    #[error("cost matrix holds a NaN or infinite entry")]
    NonFiniteCost,
    /// An instance without cells has no mean feature.
    #[error("instance {instance} has no cells")]
    EmptyInstance { instance: usize },
    /// A cell index outside the upsampled grid of the features.
    #[error("instance {instance} has cell {cell}, outside the {cells}-cell feature grid")]
    CellOutOfRange {
        instance: usize,
        cell: u32,
        cells: usize,
    },
    /// Patch features whose token matrix does not match their grid.
    #[error("stage {stage} has {len} token values, expected {expected}")]
    FeatureShape {
        stage: usize,
        len: usize,
        expected: usize,
    },
    /// Embeddings whose stage vectors do not hold `count * dim` values.
    #[error("embedding stage {stage} has {len} values, expected {count} x {dim}")]
    EmbeddingShape {
        stage: usize,
        len: usize,
        count: usize,
        dim: usize,
    },
    /// Two sets of embeddings from different feature layouts (model or stage choice).
    #[error("embeddings differ in layout: {left_stages} stages x {left_dim} dims vs {right_stages} x {right_dim}")]
    LayoutMismatch {
        left_stages: usize,
        left_dim: usize,
        right_stages: usize,
        right_dim: usize,
    },
    /// Features or embeddings of dimension zero: no cosine is defined.
    #[error("feature dimension is zero")]
    ZeroDim,
    /// Embeddings without any stage: the mean over stages is undefined.
    #[error("embeddings have no stage")]
    NoStages,
}

/// One L2-normalised feature vector per instance and stage: the interest set of eq. 2
/// (P for a frame, Q for the union of the reference images).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceEmbeddings {
    /// Per stage, a `count x dim` row-major matrix; each row is an instance's mean feature,
    /// L2-normalised (unit length, or zero where the mean was zero).
    pub stages: Vec<Vec<f32>>,
    /// Number of instances (rows of every stage).
    pub count: usize,
    /// Feature dimension (columns of every stage).
    pub dim: usize,
}

impl InstanceEmbeddings {
    /// No instance, for `stages` stages of `dim`-dimensional features: the start of a union.
    pub fn empty(stages: usize, dim: usize) -> Self {
        InstanceEmbeddings {
            stages: vec![Vec::new(); stages],
            count: 0,
            dim,
        }
    }

    /// Checks that the dimension is positive and every stage holds `count * dim` values
    /// (embeddings read from a profile may not).
    ///
    /// # Errors
    /// [`InterestError::ZeroDim`] for dimension zero, [`InterestError::EmbeddingShape`] for the
    /// first stage of the wrong length.
    pub fn validate(&self) -> Result<(), InterestError> {
        if self.dim == 0 {
            return Err(InterestError::ZeroDim);
        }
        for (stage, values) in self.stages.iter().enumerate() {
            if Some(values.len()) != self.count.checked_mul(self.dim) {
                return Err(InterestError::EmbeddingShape {
                    stage,
                    len: values.len(),
                    count: self.count,
                    dim: self.dim,
                });
            }
        }
        Ok(())
    }

    /// Appends `other`'s instances after this set's (the union over reference images).
    ///
    /// # Errors
    /// [`InterestError::ZeroDim`] or [`InterestError::EmbeddingShape`] when either set is malformed,
    /// [`InterestError::LayoutMismatch`] when their stage counts or dimensions differ; `self`
    /// is unchanged then.
    pub fn append(&mut self, other: &InstanceEmbeddings) -> Result<(), InterestError> {
        self.validate()?;
        other.validate()?;
        check_layout(self, other)?;
        for (mine, theirs) in self.stages.iter_mut().zip(&other.stages) {
            mine.extend_from_slice(theirs);
        }
        self.count += other.count;
        Ok(())
    }
}

fn check_layout(
    left: &InstanceEmbeddings,
    right: &InstanceEmbeddings,
) -> Result<(), InterestError> {
    if left.stages.len() != right.stages.len() || left.dim != right.dim {
        return Err(InterestError::LayoutMismatch {
            left_stages: left.stages.len(),
            left_dim: left.dim,
            right_stages: right.stages.len(),
            right_dim: right.dim,
        });
    }
    Ok(())
}

/// The interest set of one image: for every instance (in order) and every stage, the mean of
/// the stage's upsampled, L2-normalised patch vectors ([`PatchFeatures::normalised`]) over the
/// instance's cells, L2-normalised (reference implementation, "Interest detector").
///
/// `instances` index cells of the upsampled grid (`features.height() x features.width()`,
/// row-major), the grid the part stage labels.
///
/// # Errors
/// [`InterestError::ZeroDim`] for features of dimension zero,
/// [`InterestError::FeatureShape`] when a stage's tokens do not fill the token grid,
/// [`InterestError::EmptyInstance`] for an instance without cells,
/// [`InterestError::CellOutOfRange`] for a cell outside the upsampled grid.
pub fn embed_instances(
    features: &PatchFeatures,
    instances: &[Instance],
) -> Result<InstanceEmbeddings, InterestError> {
    let dim = features.dim;
    if dim == 0 {
        return Err(InterestError::ZeroDim);
    }
    let expected = features.grid_height * features.grid_width * dim;
    for (stage, tokens) in features.tokens.iter().enumerate() {
        if tokens.len() != expected {
            return Err(InterestError::FeatureShape {
                stage,
                len: tokens.len(),
                expected,
            });
        }
    }
    let cells = features.patches();
    for (index, instance) in instances.iter().enumerate() {
        if instance.cells.is_empty() {
            return Err(InterestError::EmptyInstance { instance: index });
        }
        if let Some(&cell) = instance.cells.iter().find(|&&c| c as usize >= cells) {
            return Err(InterestError::CellOutOfRange {
                instance: index,
                cell,
                cells,
            });
        }
    }

    let stages = (0..features.tokens.len())
        .map(|stage| {
            let patches = features.normalised(stage);
            let mut means = vec![0.0f32; instances.len() * dim];
            for (mean, instance) in means.chunks_exact_mut(dim).zip(instances) {
                for &cell in &instance.cells {
                    let start = cell as usize * dim;
                    let patch = &patches[start..start + dim];
                    mean.iter_mut().zip(patch).for_each(|(m, p)| *m += p);
                }
                let area = instance.cells.len() as f32;
                mean.iter_mut().for_each(|m| *m /= area);
            }
            normalise_rows(&mut means, dim);
            means
        })
        .collect();
    Ok(InstanceEmbeddings {
        stages,
        count: instances.len(),
        dim,
    })
}

/// A rectangular minimum-cost assignment: min(rows, cols) (row, column) pairs, no row or column
/// used twice, whose summed cost is the least possible (paper eq. 3, the Hungarian step; SciPy's
/// `linear_sum_assignment` through the `lsap` crate). Pairs come sorted by row.
///
/// `cost` is a `rows x cols` row-major matrix. An empty side gives no pairs.
///
/// # Errors
/// [`InterestError::CostShape`] when `cost.len() != rows * cols`,
/// [`InterestError::NonFiniteCost`] for a NaN or infinite entry.
pub fn min_cost_assignment(
    cost: &[f64],
    rows: usize,
    cols: usize,
) -> Result<Vec<(usize, usize)>, InterestError> {
    if Some(cost.len()) != rows.checked_mul(cols) {
        return Err(InterestError::CostShape {
            len: cost.len(),
            rows,
            cols,
        });
    }
    if cost.iter().any(|c| !c.is_finite()) {
        return Err(InterestError::NonFiniteCost);
    }
    let cost = cost.to_vec();
    // Every entry is finite, so the solver finds a full assignment; its errors (NaN or
    // infinite entries, infeasibility) cannot occur, but are mapped rather than unwrapped.
    let (row_indices, col_indices) =
        lsap::solve(rows, cols, &cost, false).map_err(|_| InterestError::NonFiniteCost)?;
    let mut pairs: Vec<(usize, usize)> = row_indices.into_iter().zip(col_indices).collect();
    pairs.sort_unstable();
    Ok(pairs)
}

/// The interest detector's anomaly score of a frame (paper eq. 2-3, as the reference computes
/// it): per stage, the summed cost (1 - cosine) of the minimum-cost assignment between the
/// frame's and the reference's instances divided by min(N_frame, N_ref); the mean over stages.
/// 1.0 when either side has no instance. Dimensionless, 0 for identical sets, 1 for orthogonal
/// ones, at most 2.
///
/// # Errors
/// [`InterestError::ZeroDim`] or [`InterestError::EmbeddingShape`] for malformed embeddings,
/// [`InterestError::LayoutMismatch`] when the two sides differ in stages or dimension,
/// [`InterestError::NoStages`] when there is no stage to average over,
/// [`InterestError::NonFiniteCost`] when a feature is NaN or infinite.
pub fn interest_score(
    frame: &InstanceEmbeddings,
    reference: &InstanceEmbeddings,
) -> Result<f64, InterestError> {
    frame.validate()?;
    reference.validate()?;
    check_layout(frame, reference)?;
    if frame.stages.is_empty() {
        return Err(InterestError::NoStages);
    }
    if frame.count == 0 || reference.count == 0 {
        return Ok(1.0);
    }
    let (rows, cols, dim) = (frame.count, reference.count, frame.dim);
    let mut cost = vec![0.0f64; rows * cols];
    let mut total = 0.0;
    for (p, q) in frame.stages.iter().zip(&reference.stages) {
        for (row, p_i) in cost.chunks_exact_mut(cols).zip(p.chunks_exact(dim)) {
            for (c, q_j) in row.iter_mut().zip(q.chunks_exact(dim)) {
                *c = 1.0 - dot(p_i, q_j);
            }
        }
        let pairs = min_cost_assignment(&cost, rows, cols)?;
        let summed: f64 = pairs.iter().map(|&(i, j)| cost[i * cols + j]).sum();
        total += summed / rows.min(cols) as f64;
    }
    Ok(total / frame.stages.len() as f64)
}

/// The dot product of two equally long vectors, accumulated in `f64` over eight independent
/// lanes (a sequential sum would keep the compiler from vectorising it).
fn dot(a: &[f32], b: &[f32]) -> f64 {
    const LANES: usize = 8;
    let mut lanes = [0.0f64; LANES];
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f64 = a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    for (x, y) in a_chunks.zip(b_chunks) {
        for lane in 0..LANES {
            lanes[lane] += f64::from(x[lane]) * f64::from(y[lane]);
        }
    }
    lanes.iter().sum::<f64>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// The least summed cost over every injection of the smaller side into the larger.
    fn brute_force(cost: &[f64], rows: usize, cols: usize) -> f64 {
        fn search(
            at: &dyn Fn(usize, usize) -> f64,
            small: usize,
            large: usize,
            next: usize,
            used: &mut Vec<bool>,
        ) -> f64 {
            if next == small {
                return 0.0;
            }
            let mut best = f64::INFINITY;
            for j in 0..large {
                if !used[j] {
                    used[j] = true;
                    best = best.min(at(next, j) + search(at, small, large, next + 1, used));
                    used[j] = false;
                }
            }
            best
        }
        if rows <= cols {
            search(
                &|i, j| cost[i * cols + j],
                rows,
                cols,
                0,
                &mut vec![false; cols],
            )
        } else {
            search(
                &|j, i| cost[i * cols + j],
                cols,
                rows,
                0,
                &mut vec![false; rows],
            )
        }
    }

    fn check_assignment(cost: &[f64], rows: usize, cols: usize) {
        let pairs = min_cost_assignment(cost, rows, cols).unwrap();
        assert_eq!(pairs.len(), rows.min(cols), "{rows}x{cols}");
        let mut row_used = vec![false; rows];
        let mut col_used = vec![false; cols];
        for &(i, j) in &pairs {
            assert!(!row_used[i] && !col_used[j], "{rows}x{cols}: {pairs:?}");
            row_used[i] = true;
            col_used[j] = true;
        }
        let total: f64 = pairs.iter().map(|&(i, j)| cost[i * cols + j]).sum();
        let best = brute_force(cost, rows, cols);
        assert!(
            (total - best).abs() < 1e-12,
            "{rows}x{cols}: {total} vs {best}"
        );
    }

    #[test]
    fn assignment_matches_brute_force_on_random_matrices() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut shapes: Vec<(usize, usize)> =
            (1..=5).flat_map(|r| (1..=7).map(move |c| (r, c))).collect();
        shapes.extend((6..=7).flat_map(|r| (1..=5).map(move |c| (r, c))));
        for (rows, cols) in shapes {
            for trial in 0..20 {
                let cost: Vec<f64> = (0..rows * cols)
                    .map(|_| {
                        if trial % 4 == 0 {
                            // Small integers: many ties.
                            f64::from(rng.random_range(0..3u8))
                        } else {
                            // Cosine distances, some negative-cosine (cost above 1).
                            rng.random_range(0.0..2.0)
                        }
                    })
                    .collect();
                check_assignment(&cost, rows, cols);
            }
        }
    }

    #[test]
    fn assignment_of_a_known_matrix() {
        // Row 1 takes column 0 (cost 0) and row 0 column 1 (2): 2 beats 1 + 4; row 2 (5
        // everywhere) stays unpaired.
        let cost = [
            1.0, 2.0, //
            0.0, 4.0, //
            5.0, 5.0,
        ];
        assert_eq!(
            min_cost_assignment(&cost, 3, 2).unwrap(),
            vec![(0, 1), (1, 0)]
        );
        assert_eq!(min_cost_assignment(&[], 0, 4).unwrap(), vec![]);
        assert_eq!(min_cost_assignment(&[], 3, 0).unwrap(), vec![]);
    }

    #[test]
    fn assignment_rejects_bad_input() {
        assert_eq!(
            min_cost_assignment(&[1.0, 2.0, 3.0], 2, 2),
            Err(InterestError::CostShape {
                len: 3,
                rows: 2,
                cols: 2
            })
        );
        assert_eq!(
            min_cost_assignment(&[1.0, f64::NAN], 1, 2),
            Err(InterestError::NonFiniteCost)
        );
        assert_eq!(
            min_cost_assignment(&[f64::INFINITY], 1, 1),
            Err(InterestError::NonFiniteCost)
        );
        assert!(min_cost_assignment(&[], usize::MAX, 2).is_err());
    }

    #[test]
    fn lane_dot_equals_the_plain_sum() {
        let mut rng = StdRng::seed_from_u64(5);
        for len in [0, 1, 7, 8, 9, 19, 384] {
            let a: Vec<f32> = (0..len).map(|_| rng.random_range(-1.0..1.0)).collect();
            let b: Vec<f32> = (0..len).map(|_| rng.random_range(-1.0..1.0)).collect();
            let plain: f64 = a
                .iter()
                .zip(&b)
                .map(|(x, y)| f64::from(*x) * f64::from(*y))
                .sum();
            assert!((dot(&a, &b) - plain).abs() < 1e-12, "{len}");
        }
        assert_eq!(dot(&[1.0; 9], &[2.0; 9]), 18.0);
    }

    /// Embeddings from per-stage lists of instance vectors (normalised here).
    fn embeddings(stages: &[&[&[f32]]]) -> InstanceEmbeddings {
        let count = stages[0].len();
        let dim = stages[0][0].len();
        let stages = stages
            .iter()
            .map(|stage| {
                assert_eq!(stage.len(), count);
                let mut rows: Vec<f32> = stage.iter().flat_map(|v| v.iter().copied()).collect();
                normalise_rows(&mut rows, dim);
                rows
            })
            .collect();
        InstanceEmbeddings { stages, count, dim }
    }

    const E1: &[f32] = &[1.0, 0.0, 0.0];
    const E2: &[f32] = &[0.0, 1.0, 0.0];
    const E3: &[f32] = &[0.0, 0.0, 1.0];
    /// Cosine 0.6 with E1 and 0.8 with E2: costs 0.4 and 0.2.
    const U: &[f32] = &[0.6, 0.8, 0.0];

    #[test]
    fn identical_sets_score_zero() {
        let a: &[f32] = &[0.3, -0.2, 0.9];
        let b: &[f32] = &[-0.5, 0.5, 0.1];
        let reference = embeddings(&[&[E1, a, b], &[b, E3, U]]);
        // The same instances in another order.
        let frame = embeddings(&[&[b, E1, a], &[U, b, E3]]);
        let score = interest_score(&frame, &reference).unwrap();
        assert!(score.abs() < 1e-6, "{score}");
    }

    #[test]
    fn orthogonal_sets_score_one() {
        let frame = embeddings(&[&[E1, E2]]);
        let reference = embeddings(&[&[E3]]);
        assert_eq!(interest_score(&frame, &reference).unwrap(), 1.0);
    }

    #[test]
    fn score_divides_by_the_smaller_side_and_averages_stages() {
        let reference = embeddings(&[&[E1, E2], &[E1, E2]]);
        // Stage 0: (E1, E1) 0 + (U, E2) 0.2 beats (E1, E2) 1 + (U, E1) 0.4: 0.2 / 2 = 0.1.
        // Stage 1: identical, 0. Mean 0.05.
        let frame = embeddings(&[&[E1, U], &[E1, E2]]);
        let score = interest_score(&frame, &reference).unwrap();
        assert!((score - 0.05).abs() < 1e-6, "{score}");

        // One frame instance: U pairs with E2 (0.2) on stage 0 and E3 with either (1) on
        // stage 1, each over min(1, 2) = 1: (0.2 + 1) / 2.
        let single = embeddings(&[&[U], &[E3]]);
        let score = interest_score(&single, &reference).unwrap();
        assert!((score - 0.6).abs() < 1e-6, "{score}");
    }

    #[test]
    fn an_extra_frame_instance_counts_only_through_the_pairs_it_changes() {
        let reference = embeddings(&[&[E1, E2], &[E1, E2]]);
        // As above, 0.05, plus an instance unlike any reference one: pairing it would cost 1
        // per stage, so the optimum leaves it out and the score stays 0.05.
        let foreign = embeddings(&[&[E1, U, E3], &[E1, E2, E3]]);
        let score = interest_score(&foreign, &reference).unwrap();
        assert!((score - 0.05).abs() < 1e-6, "{score}");
        // An extra instance matching E2 exactly takes U's place on stage 0 (cost 0 instead of
        // 0.2): the score drops to 0.
        let matching = embeddings(&[&[E1, U, E2], &[E1, E2, E3]]);
        let score = interest_score(&matching, &reference).unwrap();
        assert!(score.abs() < 1e-6, "{score}");
    }

    #[test]
    fn an_empty_side_scores_one() {
        let some = embeddings(&[&[E1, E2], &[E1, E2]]);
        let none = InstanceEmbeddings::empty(2, 3);
        assert_eq!(interest_score(&none, &some).unwrap(), 1.0);
        assert_eq!(interest_score(&some, &none).unwrap(), 1.0);
        assert_eq!(interest_score(&none, &none).unwrap(), 1.0);
    }

    #[test]
    fn score_rejects_mismatched_or_malformed_embeddings() {
        let three_dims = embeddings(&[&[E1]]);
        let two_dims = embeddings(&[&[&[1.0, 0.0]]]);
        assert!(matches!(
            interest_score(&three_dims, &two_dims),
            Err(InterestError::LayoutMismatch { .. })
        ));
        let two_stages = embeddings(&[&[E1], &[E2]]);
        assert!(matches!(
            interest_score(&three_dims, &two_stages),
            Err(InterestError::LayoutMismatch { .. })
        ));
        let mut short = three_dims.clone();
        short.stages[0].pop();
        assert!(matches!(
            interest_score(&short, &three_dims),
            Err(InterestError::EmbeddingShape {
                stage: 0,
                len: 2,
                count: 1,
                dim: 3
            })
        ));
        let no_stages = InstanceEmbeddings::empty(0, 3);
        assert_eq!(
            interest_score(&no_stages, &no_stages),
            Err(InterestError::NoStages)
        );
        let mut nan = three_dims.clone();
        nan.stages[0][0] = f32::NAN;
        assert_eq!(
            interest_score(&nan, &three_dims),
            Err(InterestError::NonFiniteCost)
        );
    }

    #[test]
    fn append_forms_the_union_in_order() {
        let mut union = InstanceEmbeddings::empty(2, 3);
        union.append(&embeddings(&[&[E1], &[E2]])).unwrap();
        union.append(&embeddings(&[&[E2, E3], &[E3, E1]])).unwrap();
        assert_eq!(union.count, 3);
        assert_eq!(union.stages[0], [E1, E2, E3].concat());
        assert_eq!(union.stages[1], [E2, E3, E1].concat());

        let before = union.clone();
        assert!(matches!(
            union.append(&embeddings(&[&[E1]])),
            Err(InterestError::LayoutMismatch { .. })
        ));
        assert_eq!(union, before);
    }

    fn instance(cells: &[u32]) -> Instance {
        Instance {
            part: 1,
            cells: cells.to_vec(),
            centroid: (0.0, 0.0),
        }
    }

    /// A 2x2 token grid of 2-d tokens, upsampled x2 to 4x4 (align_corners: rows and columns
    /// at 0, 1/3, 2/3, 1 of the token grid). Stage 0 varies along x: cell (y, x) is
    /// (1 - x/3, x/3). Stage 1 varies along y: cell (y, x) is (3 - y, y/3).
    fn two_by_two() -> PatchFeatures {
        PatchFeatures {
            grid_height: 2,
            grid_width: 2,
            upsample: 2,
            dim: 2,
            tokens: vec![
                vec![1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0],
                vec![3.0, 0.0, 3.0, 0.0, 0.0, 1.0, 0.0, 1.0],
            ],
        }
    }

    #[test]
    fn embedding_is_the_normalised_mean_of_normalised_patches() {
        // Instance a: cells (0, 0) and (0, 1); instance b: the diagonal (1, 1), (2, 2), (3, 3).
        let instances = [instance(&[0, 1]), instance(&[5, 10, 15])];
        let embedded = embed_instances(&two_by_two(), &instances).unwrap();
        assert_eq!(
            (embedded.count, embedded.dim, embedded.stages.len()),
            (2, 2, 2)
        );
        // Stage 0, a: mean of (1, 0) and (2, 1)/sqrt(5), normalised. (Averaging the raw
        // vectors first would give (5, 1)/sqrt(26) = (0.9806, 0.1961).)
        // Stage 0, b: mean of (2, 1)/sqrt(5), (1, 2)/sqrt(5), (0, 1), normalised.
        // Stage 1, a: both cells (3, 0): (1, 0).
        // Stage 1, b: mean of (6, 1)/sqrt(37), (3, 2)/sqrt(13), (0, 1), normalised.
        let expected: [[f64; 4]; 2] = [
            [0.973_248_99, 0.229_752_92, 0.497_133_13, 0.867_674_28],
            [1.0, 0.0, 0.726_678_01, 0.686_978_22],
        ];
        for (stage, want) in expected.iter().enumerate() {
            for (got, want) in embedded.stages[stage].iter().zip(want) {
                assert!(
                    (f64::from(*got) - want).abs() < 1e-6,
                    "stage {stage}: {:?}",
                    embedded.stages[stage]
                );
            }
        }
    }

    #[test]
    fn embedding_rejects_bad_instances_and_features() {
        let features = two_by_two();
        assert_eq!(
            embed_instances(&features, &[instance(&[0]), instance(&[])]),
            Err(InterestError::EmptyInstance { instance: 1 })
        );
        assert_eq!(
            embed_instances(&features, &[instance(&[3, 16])]),
            Err(InterestError::CellOutOfRange {
                instance: 0,
                cell: 16,
                cells: 16
            })
        );
        let mut short = features.clone();
        short.tokens[1].pop();
        assert_eq!(
            embed_instances(&short, &[instance(&[0])]),
            Err(InterestError::FeatureShape {
                stage: 1,
                len: 7,
                expected: 8
            })
        );
        let none = embed_instances(&features, &[]).unwrap();
        assert_eq!(none, InstanceEmbeddings::empty(2, 2));
    }

    /// The deployment size (20 frame x 80 reference instances, 4 stages, 384 dims): each
    /// stage's optimum lies between the mean of the frame instances' nearest costs (every
    /// frame instance is paired, at no less than its nearest) and a greedy assignment's cost.
    #[test]
    fn score_at_deployment_size_lies_between_bounds() {
        let (frames, refs, stages, dim) = (20, 80, 4, 384);
        let mut rng = StdRng::seed_from_u64(11);
        let mut random = |count: usize| {
            let stages = (0..stages)
                .map(|_| {
                    let mut rows: Vec<f32> = (0..count * dim)
                        .map(|_| rng.random_range(-1.0..1.0))
                        .collect();
                    normalise_rows(&mut rows, dim);
                    rows
                })
                .collect();
            InstanceEmbeddings { stages, count, dim }
        };
        let frame = random(frames);
        let reference = random(refs);
        let score = interest_score(&frame, &reference).unwrap();

        let (mut lower, mut greedy) = (0.0, 0.0);
        for (p, q) in frame.stages.iter().zip(&reference.stages) {
            let cost: Vec<Vec<f64>> = p
                .chunks_exact(dim)
                .map(|a| {
                    q.chunks_exact(dim)
                        .map(|b| {
                            1.0 - a
                                .iter()
                                .zip(b)
                                .map(|(x, y)| f64::from(*x) * f64::from(*y))
                                .sum::<f64>()
                        })
                        .collect()
                })
                .collect();
            let mut taken = vec![false; refs];
            for row in &cost {
                lower += row.iter().copied().fold(f64::INFINITY, f64::min) / frames as f64;
                let (j, c) = row.iter().enumerate().filter(|(j, _)| !taken[*j]).fold(
                    (0, f64::INFINITY),
                    |best, (j, &c)| if c < best.1 { (j, c) } else { best },
                );
                taken[j] = true;
                greedy += c / frames as f64;
            }
        }
        let (lower, greedy) = (lower / stages as f64, greedy / stages as f64);
        assert!(
            lower <= score + 1e-12 && score <= greedy + 1e-12,
            "{lower} {score} {greedy}"
        );
        assert!(
            lower < greedy,
            "random sets should make greedy suboptimal somewhere"
        );
    }
}
