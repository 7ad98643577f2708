//! Evaluation metrics for anomaly scores: AUROC, ROC curve and F1-max.
//!
//! Higher scores mean "more anomalous" and `true` labels are anomalies. Equal scores are never
//! split by a threshold (a threshold can only fall between distinct values), so results do not
//! depend on the input order of tied samples.
//!
//! All functions return `None` (or an empty curve) when the slices differ in length or a score is
//! NaN, since no ordering-based metric is defined then.

use std::cmp::Ordering;

/// Positive and negative counts, or `None` for mismatched lengths or NaN scores.
fn class_counts(scores: &[f64], labels: &[bool]) -> Option<(usize, usize)> {
    if scores.len() != labels.len() || scores.iter().any(|s| s.is_nan()) {
        return None;
    }
    let pos = labels.iter().filter(|&&l| l).count();
    Some((pos, labels.len() - pos))
}

/// Indices sorted by descending score (NaN excluded by the caller).
fn order_desc(scores: &[f64]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].partial_cmp(&scores[a]).unwrap_or(Ordering::Equal));
    idx
}

/// Cumulative (true positives, false positives) after each group of tied scores, from the
/// highest score down: one entry per distinct score value.
fn tie_grouped_counts(scores: &[f64], labels: &[bool]) -> Vec<(usize, usize)> {
    let idx = order_desc(scores);
    let mut out = Vec::new();
    let (mut tp, mut fp) = (0usize, 0usize);
    let mut i = 0;
    while i < idx.len() {
        let v = scores[idx[i]];
        while i < idx.len() && scores[idx[i]] == v {
            if labels[idx[i]] {
                tp += 1;
            } else {
                fp += 1;
            }
            i += 1;
        }
        out.push((tp, fp));
    }
    out
}

/// Area under the ROC curve: the probability that a random anomaly scores higher than a random
/// normal sample, ties counting 1/2 (Mann-Whitney U with midranks).
///
/// `None` if either class is empty, lengths differ, or a score is NaN.
pub fn auroc(scores: &[f64], labels: &[bool]) -> Option<f64> {
    let (pos, neg) = class_counts(scores, labels)?;
    if pos == 0 || neg == 0 {
        return None;
    }
    // Ascending order; each tie group gets the mean of the 1-based ranks it spans.
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].partial_cmp(&scores[b]).unwrap_or(Ordering::Equal));
    let mut rank_sum_pos = 0.0f64;
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j < idx.len() && scores[idx[j]] == scores[idx[i]] {
            j += 1;
        }
        let midrank = (i + 1 + j) as f64 / 2.0; // mean of ranks i+1 ..= j
        let group_pos = idx[i..j].iter().filter(|&&k| labels[k]).count();
        rank_sum_pos += midrank * group_pos as f64;
        i = j;
    }
    let (p, n) = (pos as f64, neg as f64);
    let u = rank_sum_pos - p * (p + 1.0) / 2.0;
    Some(u / (p * n))
}

/// ROC curve as (false positive rate, true positive rate) points, from (0, 0) to (1, 1), one point
/// per distinct score value (thresholds only between distinct values).
///
/// Empty if either class is empty, lengths differ, or a score is NaN. The trapezoidal area under
/// the returned curve equals [`auroc`].
pub fn roc_curve(scores: &[f64], labels: &[bool]) -> Vec<(f64, f64)> {
    let Some((pos, neg)) = class_counts(scores, labels) else {
        return Vec::new();
    };
    if pos == 0 || neg == 0 {
        return Vec::new();
    }
    let mut curve = vec![(0.0, 0.0)];
    curve.extend(
        tie_grouped_counts(scores, labels)
            .into_iter()
            .map(|(tp, fp)| (fp as f64 / neg as f64, tp as f64 / pos as f64)),
    );
    curve
}

/// Best F1 score over all thresholds "anomalous if score >= t", t ranging over the distinct
/// score values (tied samples are always classified together).
///
/// `None` if there are no positive samples (F1 is undefined), lengths differ, or a score is NaN.
/// Without negatives the answer is 1 (flag everything).
pub fn f1_max(scores: &[f64], labels: &[bool]) -> Option<f64> {
    let (pos, _) = class_counts(scores, labels)?;
    if pos == 0 {
        return None;
    }
    let best = tie_grouped_counts(scores, labels)
        .into_iter()
        .map(|(tp, fp)| {
            let fn_ = pos - tp;
            2.0 * tp as f64 / (2 * tp + fp + fn_) as f64
        })
        .fold(0.0, f64::max);
    Some(best)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    /// Pairwise definition of AUROC.
    fn brute_auroc(scores: &[f64], labels: &[bool]) -> f64 {
        let mut acc = 0.0;
        let mut pairs = 0.0;
        for (i, &li) in labels.iter().enumerate() {
            for (j, &lj) in labels.iter().enumerate() {
                if li && !lj {
                    pairs += 1.0;
                    acc += match scores[i].partial_cmp(&scores[j]).unwrap() {
                        Ordering::Greater => 1.0,
                        Ordering::Equal => 0.5,
                        Ordering::Less => 0.0,
                    };
                }
            }
        }
        acc / pairs
    }

    /// F1 for every distinct value as threshold, computed directly.
    fn brute_f1_max(scores: &[f64], labels: &[bool]) -> f64 {
        let mut best: f64 = 0.0;
        for &t in scores {
            let mut tp = 0.0;
            let mut fp = 0.0;
            let mut fn_ = 0.0;
            for (&s, &l) in scores.iter().zip(labels) {
                match (s >= t, l) {
                    (true, true) => tp += 1.0,
                    (true, false) => fp += 1.0,
                    (false, true) => fn_ += 1.0,
                    _ => {}
                }
            }
            let precision = tp / (tp + fp);
            let recall = tp / (tp + fn_);
            if tp > 0.0 {
                best = best.max(2.0 * precision * recall / (precision + recall));
            }
        }
        best
    }

    fn trapezoid(curve: &[(f64, f64)]) -> f64 {
        curve
            .windows(2)
            .map(|w| (w[1].0 - w[0].0) * (w[1].1 + w[0].1) / 2.0)
            .sum()
    }

    #[test]
    fn auroc_hand_computed() {
        // Perfect and inverted.
        let s = [0.1, 0.2, 0.8, 0.9];
        let l = [false, false, true, true];
        assert_eq!(auroc(&s, &l), Some(1.0));
        let inv = [true, true, false, false];
        assert_eq!(auroc(&s, &inv), Some(0.0));
        // Pairs (pos 0.3, 0.9) vs (neg 0.1, 0.5): 0.3>0.1 yes, 0.3>0.5 no, 0.9 both -> 3/4.
        assert_eq!(
            auroc(&[0.1, 0.3, 0.5, 0.9], &[false, true, false, true]),
            Some(0.75)
        );
        // Ties: pos {0.5, 0.5}, neg {0.5, 0.2}: 0.5 vs 0.5 = 1/2 twice, 0.5 > 0.2 twice -> 3/4.
        assert_eq!(
            auroc(&[0.5, 0.5, 0.5, 0.2], &[true, true, false, false]),
            Some(0.75)
        );
        // All tied: 1/2.
        assert_eq!(
            auroc(&[1.0; 5], &[true, false, true, false, false]),
            Some(0.5)
        );
    }

    #[test]
    fn auroc_none_cases() {
        assert_eq!(auroc(&[0.1, 0.2], &[true, true]), None);
        assert_eq!(auroc(&[0.1, 0.2], &[false, false]), None);
        assert_eq!(auroc(&[], &[]), None);
        assert_eq!(auroc(&[0.1, 0.2], &[true]), None);
        assert_eq!(auroc(&[0.1, f64::NAN], &[true, false]), None);
        // Infinities are fine.
        assert_eq!(
            auroc(&[f64::NEG_INFINITY, f64::INFINITY], &[false, true]),
            Some(1.0)
        );
    }

    #[test]
    fn roc_curve_hand_computed() {
        // Descending: 0.9 (P), 0.5 (N), 0.3 (P), 0.1 (N).
        let c = roc_curve(&[0.1, 0.3, 0.5, 0.9], &[false, true, false, true]);
        assert_eq!(
            c,
            vec![(0.0, 0.0), (0.0, 0.5), (0.5, 0.5), (0.5, 1.0), (1.0, 1.0)]
        );
        // A tie group yields one diagonal step: 0.5 holds 2 P and 1 N.
        let c = roc_curve(&[0.5, 0.5, 0.5, 0.2], &[true, true, false, false]);
        assert_eq!(c, vec![(0.0, 0.0), (0.5, 1.0), (1.0, 1.0)]);
        assert!(close(trapezoid(&c), 0.75));
        assert!(roc_curve(&[0.1, 0.2], &[true, true]).is_empty());
        assert!(roc_curve(&[0.1], &[true, false]).is_empty());
    }

    #[test]
    fn f1_hand_computed() {
        let s = [0.1, 0.3, 0.5, 0.9];
        let l = [false, true, false, true];
        // t=0.9: tp1 fp0 fn1 -> 2/3; t=0.5: tp1 fp1 fn1 -> 1/2; t=0.3: tp2 fp1 -> 4/5; t=0.1: 2/3.
        assert!(close(f1_max(&s, &l).unwrap(), 0.8));
        // Perfect separation.
        assert_eq!(
            f1_max(&[0.1, 0.2, 0.8, 0.9], &[false, false, true, true]),
            Some(1.0)
        );
        // Tie between a positive and a negative cannot be split: best is t=0.5 (tp1 fp1 fn0).
        assert!(close(
            f1_max(&[0.5, 0.5], &[true, false]).unwrap(),
            2.0 / 3.0
        ));
        // Inverted scores: flagging everything is best, 2*2/(2*2+2) = 2/3.
        assert!(close(
            f1_max(&[0.9, 0.8, 0.2, 0.1], &[false, false, true, true]).unwrap(),
            2.0 / 3.0
        ));
        // Single class.
        assert_eq!(f1_max(&[0.3, 0.4], &[true, true]), Some(1.0));
        assert_eq!(f1_max(&[0.3, 0.4], &[false, false]), None);
        assert_eq!(f1_max(&[0.3, f64::NAN], &[true, false]), None);
        assert_eq!(f1_max(&[0.3], &[true, false]), None);
    }

    #[test]
    fn random_against_brute_force() {
        let mut rng = StdRng::seed_from_u64(17);
        for round in 0..50 {
            let n = rng.random_range(2..40);
            // Few distinct values so ties are common.
            let levels = rng.random_range(1..8);
            let scores: Vec<f64> = (0..n)
                .map(|_| rng.random_range(0..levels) as f64 / 4.0)
                .collect();
            let labels: Vec<bool> = (0..n).map(|_| rng.random_bool(0.4)).collect();
            let has_pos = labels.iter().any(|&l| l);
            let has_neg = labels.iter().any(|&l| !l);
            let a = auroc(&scores, &labels);
            let c = roc_curve(&scores, &labels);
            if has_pos && has_neg {
                let a = a.unwrap();
                assert!(close(a, brute_auroc(&scores, &labels)), "round {round}");
                assert!(close(trapezoid(&c), a), "round {round}");
                assert_eq!(c.first(), Some(&(0.0, 0.0)));
                assert_eq!(c.last(), Some(&(1.0, 1.0)));
                assert!(c.windows(2).all(|w| w[1].0 >= w[0].0 && w[1].1 >= w[0].1));
            } else {
                assert_eq!(a, None);
                assert!(c.is_empty());
            }
            if has_pos {
                let f = f1_max(&scores, &labels).unwrap();
                assert!(close(f, brute_f1_max(&scores, &labels)), "round {round}");
            } else {
                assert_eq!(f1_max(&scores, &labels), None);
            }
        }
    }

    #[test]
    fn order_independent() {
        let s = [0.2, 0.7, 0.7, 0.1, 0.7, 0.4];
        let l = [false, true, false, false, true, true];
        let mut perm: Vec<usize> = (0..6).collect();
        perm.reverse();
        let s2: Vec<f64> = perm.iter().map(|&i| s[i]).collect();
        let l2: Vec<bool> = perm.iter().map(|&i| l[i]).collect();
        assert_eq!(auroc(&s, &l), auroc(&s2, &l2));
        assert_eq!(roc_curve(&s, &l), roc_curve(&s2, &l2));
        assert_eq!(f1_max(&s, &l), f1_max(&s2, &l2));
    }
}
