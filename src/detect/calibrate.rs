//! Score calibration and fusion (LogSAD paper eq. 5).
//!
//! Raw detector scores live on unrelated scales, so each is standardised against its own
//! statistics over anomaly-free validation images (z-score with the unbiased std, as the reference
//! code does) before the detectors are fused by taking the maximum and squashing with a sigmoid.

use serde::{Deserialize, Serialize};

/// Smallest spread (standard deviation, or scaled MAD) of validation scores a calibration stands
/// on.
///
/// Raw scores are cosine distances (0 to about 1) computed in float32, whose rounding noise is
/// about 1e-6; below 1e-5 the spread says nothing about the images, only about rounding, and a
/// frame's calibrated score would swing by a tenth of a standard deviation per 1e-6 of noise and
/// saturate at the first real difference. Real validation sets spread far wider (about 1e-2 on
/// the textile set). [`Calibration::fit_with`] refuses a smaller spread; a calibration read from
/// elsewhere is divided by at least this much.
pub const MIN_SPREAD: f64 = 1e-5;

/// Scale factor that makes the median absolute deviation of normally distributed scores
/// estimate their standard deviation.
const MAD_TO_STD: f64 = 1.482_602_218_505_602;

/// How the centre and spread of the validation scores are estimated.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum CalibrationMethod {
    /// Mean and unbiased standard deviation (the reference).
    #[default]
    MeanStd,
    /// Median and 1.4826 x the median absolute deviation: one odd validation image cannot
    /// inflate the spread and mute the branch.
    MedianMad,
}

impl std::str::FromStr for CalibrationMethod {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "mean-std" => Ok(CalibrationMethod::MeanStd),
            "median-mad" => Ok(CalibrationMethod::MedianMad),
            other => Err(format!(
                "unknown calibration {other:?} (mean-std or median-mad)"
            )),
        }
    }
}

/// Centre and spread of a detector's scores on anomaly-free images.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub struct Calibration {
    /// The mean (or, for median-mad, the median).
    pub mean: f64,
    /// Unbiased (n - 1) sample standard deviation (or 1.4826 x the median absolute deviation);
    /// at least [`MIN_SPREAD`] when produced by `fit`.
    pub std: f64,
    /// Number of scores the statistics came from.
    pub count: usize,
    /// Absent from profiles written before robust calibration existed: mean-std.
    #[serde(default)]
    pub method: CalibrationMethod,
}

/// The median of a non-empty slice (the mean of the middle two for an even length).
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// Why a [`Calibration`] could not be fitted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CalibrationError {
    #[error("calibration needs at least 2 scores, got {0}")]
    TooFew(usize),
    #[error("calibration score {index} is not finite ({value})")]
    NonFinite { index: usize, value: f64 },
    #[error(
        "the validation scores spread by {spread:.1e}, below {MIN_SPREAD:.0e} (float rounding): \
         too little to scale a calibrated score"
    )]
    NoSpread { spread: f64 },
}

impl Calibration {
    /// Fits mean and unbiased std; see [`Calibration::fit_with`].
    pub fn fit(scores: &[f64]) -> Result<Self, CalibrationError> {
        Self::fit_with(scores, CalibrationMethod::MeanStd)
    }

    /// Fits centre and spread by `method`. Errors on fewer than 2 scores, a non-finite score,
    /// or a spread below [`MIN_SPREAD`].
    pub fn fit_with(scores: &[f64], method: CalibrationMethod) -> Result<Self, CalibrationError> {
        if scores.len() < 2 {
            return Err(CalibrationError::TooFew(scores.len()));
        }
        if let Some((index, &value)) = scores.iter().enumerate().find(|(_, s)| !s.is_finite()) {
            return Err(CalibrationError::NonFinite { index, value });
        }
        let (mean, std) = match method {
            CalibrationMethod::MeanStd => {
                let n = scores.len() as f64;
                let mean = scores.iter().sum::<f64>() / n;
                // Two-pass variance: exact enough for scores clustered far from zero.
                let ss: f64 = scores.iter().map(|s| (s - mean) * (s - mean)).sum();
                (mean, (ss / (n - 1.0)).sqrt())
            }
            CalibrationMethod::MedianMad => {
                let centre = median(&mut scores.to_vec());
                let mut deviations: Vec<f64> = scores.iter().map(|s| (s - centre).abs()).collect();
                (centre, MAD_TO_STD * median(&mut deviations))
            }
        };
        if std < MIN_SPREAD {
            return Err(CalibrationError::NoSpread { spread: std });
        }
        Ok(Calibration {
            mean,
            std,
            count: scores.len(),
            method,
        })
    }

    /// Whether the spread is below [`MIN_SPREAD`] (or not a number): such a calibration, read
    /// from an old profile, is divided by [`MIN_SPREAD`] instead.
    pub fn spread_too_small(&self) -> bool {
        self.std.is_nan() || self.std < MIN_SPREAD
    }

    /// The std actually divided by (guards deserialised values below the floor).
    fn scale(&self) -> f64 {
        if self.spread_too_small() {
            MIN_SPREAD
        } else {
            self.std
        }
    }

    /// Standardised score `(s - mean) / std`.
    pub fn z(&self, s: f64) -> f64 {
        (s - self.mean) / self.scale()
    }

    /// Calibrated score in [0, 1]: `sigmoid(z(s))`.
    pub fn calibrated(&self, s: f64) -> f64 {
        sigmoid(self.z(s))
    }

    /// Inverse of [`Calibration::calibrated`]: the raw score whose calibrated value is
    /// `calibrated`, so a threshold on calibrated scores can be applied to raw anomaly maps.
    /// Returns -inf for `calibrated <= 0`, +inf for `calibrated >= 1`, NaN for NaN.
    pub fn raw_at(&self, calibrated: f64) -> f64 {
        if calibrated.is_nan() {
            return f64::NAN;
        }
        if calibrated <= 0.0 {
            return f64::NEG_INFINITY;
        }
        if calibrated >= 1.0 {
            return f64::INFINITY;
        }
        let logit = (calibrated / (1.0 - calibrated)).ln();
        self.mean + logit * self.scale()
    }
}

/// Distance from the median, in robust standard deviations (1.4826 x MAD), beyond which a
/// validation score is an outlier: about 2e-9 of normally distributed scores lie so far out, so
/// such a score comes from a different image (anomalous, damaged, or a copy of a reference), and
/// it alone widens the mean-std spread.
pub const OUTLIER_DEVIATIONS: f64 = 6.0;

/// The scores further than [`OUTLIER_DEVIATIONS`] robust standard deviations from the median of
/// `scores`, as `(index, signed deviations)`. Empty for fewer than 3 scores or a robust spread
/// below [`MIN_SPREAD`] (nothing to measure against).
pub fn outliers(scores: &[f64]) -> Vec<(usize, f64)> {
    if scores.len() < 3 {
        return Vec::new();
    }
    let Ok(robust) = Calibration::fit_with(scores, CalibrationMethod::MedianMad) else {
        return Vec::new();
    };
    scores
        .iter()
        .map(|&s| robust.z(s))
        .enumerate()
        .filter(|(_, z)| z.abs() > OUTLIER_DEVIATIONS)
        .collect()
}

/// Logistic function, computed without overflow for large |x|.
pub fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// The fused verdict score of one frame (paper eq. 5): `(fused_z, calibrated)`, where
/// `fused_z` is the largest standardised score of the calibrated detectors (`None` entries are
/// the uncalibrated composition detector, NaN entries are ignored; -inf when none is left) and
/// `calibrated` is `sigmoid(fused_z)` (the max of the detectors' sigmoids, the sigmoid being
/// monotonic), or 1.0 when any composition rule fired (`rules_fired > 0`).
pub fn fuse(zs: &[Option<f64>], rules_fired: usize) -> (f64, f64) {
    let fused_z = zs
        .iter()
        .flatten()
        .copied()
        .fold(f64::NEG_INFINITY, f64::max);
    let calibrated = if rules_fired > 0 {
        1.0
    } else {
        sigmoid(fused_z)
    };
    (fused_z, calibrated)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn fit_hand_computed() {
        let c = Calibration::fit(&[1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!(c.mean, 2.5);
        // Unbiased: sum of squares 5 over n-1 = 3.
        assert!(close(c.std, (5.0f64 / 3.0).sqrt(), 1e-15));
        assert_eq!(c.count, 4);
        assert!(close(c.z(5.0), 2.5 / (5.0f64 / 3.0).sqrt(), 1e-12));
        assert!(close(c.z(1.2909944487358056 + 2.5), 1.0, 1e-12));
        assert_eq!(c.calibrated(2.5), 0.5);

        let c = Calibration::fit(&[10.0, 12.0]).unwrap();
        assert_eq!(c.mean, 11.0);
        assert!(close(c.std, 2.0f64.sqrt(), 1e-15));
    }

    #[test]
    fn median_mad_hand_computed() {
        // Median 3; deviations 2 1 0 1 97 -> median 1; one outlier moves neither.
        let c = Calibration::fit_with(&[1.0, 2.0, 3.0, 4.0, 100.0], CalibrationMethod::MedianMad)
            .unwrap();
        assert_eq!(c.method, CalibrationMethod::MedianMad);
        assert!(close(c.mean, 3.0, 1e-12));
        assert!(close(c.std, MAD_TO_STD, 1e-12));
        // Even count: median (2 + 4) / 2 = 3; deviations 2 1 1 3 -> 1.5.
        let even =
            Calibration::fit_with(&[4.0, 1.0, 2.0, 6.0], CalibrationMethod::MedianMad).unwrap();
        assert!(close(even.mean, 3.0, 1e-12));
        assert!(close(even.std, 1.5 * MAD_TO_STD, 1e-12));
        // The mean and std of the same scores are pulled by the outlier.
        let plain = Calibration::fit(&[1.0, 2.0, 3.0, 4.0, 100.0]).unwrap();
        assert!(close(plain.mean, 22.0, 1e-12) && plain.std > 40.0);
        assert_eq!("median-mad".parse(), Ok(CalibrationMethod::MedianMad));
        assert!("mad".parse::<CalibrationMethod>().is_err());
        // Profiles written before the method existed read as mean-std.
        let old: Calibration = serde_json::from_str(r#"{"mean":1.0,"std":2.0,"count":3}"#).unwrap();
        assert_eq!(old.method, CalibrationMethod::MeanStd);
    }

    #[test]
    fn fit_errors() {
        assert_eq!(Calibration::fit(&[]), Err(CalibrationError::TooFew(0)));
        assert_eq!(Calibration::fit(&[1.0]), Err(CalibrationError::TooFew(1)));
        assert!(matches!(
            Calibration::fit(&[1.0, f64::NAN, 2.0]),
            Err(CalibrationError::NonFinite { index: 1, .. })
        ));
        assert!(matches!(
            Calibration::fit(&[1.0, 2.0, f64::INFINITY]),
            Err(CalibrationError::NonFinite { index: 2, .. })
        ));
    }

    #[test]
    fn refuses_a_spread_of_float_noise() {
        let no_spread = |scores: &[f64], method| match Calibration::fit_with(scores, method) {
            Err(CalibrationError::NoSpread { spread }) => spread,
            other => panic!("{scores:?}: {other:?}"),
        };
        assert_eq!(no_spread(&[0.3, 0.3, 0.3], CalibrationMethod::MeanStd), 0.0);
        // 0.3 +- 4e-6: mean 0.3, squares 2 x 16e-12 over n - 1 = 2 -> std 4e-6, below 1e-5.
        let std = no_spread(&[0.3 - 4e-6, 0.3, 0.3 + 4e-6], CalibrationMethod::MeanStd);
        assert!(close(std, 4e-6, 1e-12), "{std}");
        // Three of five equal: MAD 0 though the std is not.
        let scores = [0.2, 0.3, 0.3, 0.3, 0.5];
        assert_eq!(no_spread(&scores, CalibrationMethod::MedianMad), 0.0);
        assert!(Calibration::fit(&scores).is_ok());
        // 0.3 +- 2e-5: std 2e-5, above the floor.
        let c = Calibration::fit(&[0.3 - 2e-5, 0.3, 0.3 + 2e-5]).unwrap();
        assert!(close(c.std, 2e-5, 1e-12) && !c.spread_too_small());
        let message = CalibrationError::NoSpread { spread: 4e-6 }.to_string();
        assert!(
            message.contains("4.0e-6") && message.contains("1e-5"),
            "{message}"
        );
    }

    #[test]
    fn a_stored_spread_below_the_floor_is_raised_to_it() {
        // As read from a profile written before the floor existed.
        for std in [0.0, 1e-12, f64::NAN] {
            let c = Calibration {
                mean: 1.0,
                std,
                count: 2,
                method: CalibrationMethod::MeanStd,
            };
            assert!(c.spread_too_small());
            assert!(close(c.z(1.0 + 2e-5), 2.0, 1e-6), "{std}");
            assert_eq!(c.calibrated(1.0), 0.5);
            assert!(close(c.raw_at(sigmoid(1.0)), 1.0 + 1e-5, 1e-12));
        }
    }

    #[test]
    fn outliers_hand_computed() {
        // Median 0.10; deviations 0.01 0.01 0 0.01 0.01 0 0.40 -> MAD 0.01, robust std
        // 0.014826. 0.50 is 0.40 / 0.014826 = 26.98 deviations out; 0.11 only 0.67.
        let scores = [0.09, 0.11, 0.10, 0.09, 0.11, 0.10, 0.50];
        let found = outliers(&scores);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, 6);
        assert!(close(found[0].1, 0.40 / (0.01 * MAD_TO_STD), 1e-9));
        // Below the median too, as a copy of a reference scores about 0. Median 0.10,
        // deviations 0.10 0.01 0 0.01 0.01 -> MAD 0.01: 0.0 is -6.74 deviations out.
        let found = outliers(&[0.0, 0.11, 0.10, 0.09, 0.11]);
        assert_eq!(found.iter().map(|f| f.0).collect::<Vec<_>>(), [0]);
        assert!(found[0].1 < -6.0);
        // 0.16 is 0.06 / 0.014826 = 4.05 deviations out: kept.
        assert!(outliers(&[0.09, 0.11, 0.10, 0.09, 0.11, 0.10, 0.16]).is_empty());
        // Too few scores, or no spread to measure against.
        assert!(outliers(&[0.1, 0.9]).is_empty());
        assert!(outliers(&[0.1, 0.1, 0.1, 0.9]).is_empty());
    }

    #[test]
    fn sigmoid_values() {
        assert_eq!(sigmoid(0.0), 0.5);
        assert!(close(sigmoid(3.0f64.ln()), 0.75, 1e-15));
        assert!(close(sigmoid(-(3.0f64.ln())), 0.25, 1e-15));
        assert!(close(sigmoid(1.0), 0.7310585786300049, 1e-15));
        assert_eq!(sigmoid(1000.0), 1.0);
        assert_eq!(sigmoid(-1000.0), 0.0);
        assert!(sigmoid(-30.0) > 0.0 && sigmoid(-30.0) < 1e-13);
        assert_eq!(sigmoid(f64::INFINITY), 1.0);
        assert_eq!(sigmoid(f64::NEG_INFINITY), 0.0);
    }

    #[test]
    fn raw_at_inverts_calibrated() {
        let c = Calibration {
            mean: 0.275,
            std: 0.0247,
            count: 10,
            method: CalibrationMethod::MeanStd,
        };
        assert!(close(c.raw_at(0.5), 0.275, 1e-15));
        // sigmoid(ln 3) = 0.75 -> raw = mean + ln(3) * std
        assert!(close(c.raw_at(0.75), 0.275 + 3.0f64.ln() * 0.0247, 1e-12));
        for s in [0.1, 0.2, 0.275, 0.3, 0.35, 0.4] {
            assert!(close(c.raw_at(c.calibrated(s)), s, 1e-9), "s={s}");
        }
        assert_eq!(c.raw_at(0.0), f64::NEG_INFINITY);
        assert_eq!(c.raw_at(1.0), f64::INFINITY);
        assert!(c.raw_at(f64::NAN).is_nan());
    }

    #[test]
    fn fusion_is_the_largest_calibrated_score_or_one_when_a_rule_fired() {
        // sigmoid(ln 3) = 3 / 4, computed by hand.
        let (z, p) = fuse(&[Some(-2.0), Some(3.0f64.ln()), Some(0.1)], 0);
        assert_eq!(z, 3.0f64.ln());
        assert!(close(p, 0.75, 1e-15));
        // The uncalibrated composition detector (None) does not take part in the max.
        let (z, p) = fuse(&[Some(0.0), None], 0);
        assert_eq!((z, p), (0.0, 0.5));
        // A fired rule sets the score to 1 whatever the others say, and keeps fused_z.
        let (z, p) = fuse(&[Some(-4.0), None, Some(-3.0)], 2);
        assert_eq!((z, p), (-3.0, 1.0));
        // NaN ignored; nothing left gives -inf and 0.
        let (z, p) = fuse(&[Some(f64::NAN), Some(1.0)], 0);
        assert_eq!(z, 1.0);
        assert!(close(p, 1.0 / (1.0 + (-1.0f64).exp()), 1e-15));
        assert_eq!(fuse(&[None], 0), (f64::NEG_INFINITY, 0.0));
        assert_eq!(fuse(&[], 1), (f64::NEG_INFINITY, 1.0));
    }

    #[test]
    fn serde_roundtrip() {
        let c = Calibration::fit(&[0.2, 0.25, 0.31]).unwrap();
        let json = serde_json::to_string(&c).unwrap();
        assert!(
            json.contains("\"mean\"") && json.contains("\"std\"") && json.contains("\"count\":3")
        );
        let back: Calibration = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c);
    }
}
