//! From an anomaly map to an image score, and the map post-processing options.
//!
//! The authors take the maximum of the raw map. Options measured by `logsad eval`: the mean of
//! the map (a whole-frame texture change raises every cell a little), the mean of the k highest
//! cells (less sensitive to one noisy patch), and Gaussian smoothing of the map first, as
//! PatchCore does.

use serde::{Deserialize, Serialize};

/// How a map becomes one image score.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "k")]
pub enum Reduction {
    /// The highest cell (the reference).
    #[default]
    Max,
    /// The mean of all cells.
    Mean,
    /// The mean of the k highest cells.
    TopKMean(usize),
}

impl std::str::FromStr for Reduction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "max" => Ok(Reduction::Max),
            "mean" => Ok(Reduction::Mean),
            other => other
                .strip_prefix("top")
                .and_then(|k| k.parse().ok())
                .filter(|&k: &usize| k > 0)
                .map(Reduction::TopKMean)
                .ok_or_else(|| format!("unknown score {other:?}: max, mean or topK (e.g. top10)")),
        }
    }
}

impl std::fmt::Display for Reduction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reduction::Max => write!(f, "max"),
            Reduction::Mean => write!(f, "mean"),
            Reduction::TopKMean(k) => write!(f, "top{k}"),
        }
    }
}

/// The image score of a map under `reduction`.
pub fn reduce(map: &[f32], reduction: Reduction) -> f64 {
    match reduction {
        Reduction::Max => map.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64,
        Reduction::Mean => map.iter().map(|&v| v as f64).sum::<f64>() / map.len() as f64,
        Reduction::TopKMean(k) => {
            let k = k.clamp(1, map.len());
            let mut values = map.to_vec();
            values.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
            values[..k].iter().map(|&v| v as f64).sum::<f64>() / k as f64
        }
    }
}

/// Separable Gaussian blur of a `width x height` map, `sigma` in cells, edges clamped. The
/// kernel is truncated at 4 sigma, as PatchCore's (scipy) filter is.
pub fn gaussian_blur(map: &[f32], width: usize, height: usize, sigma: f32) -> Vec<f32> {
    if sigma <= 0.0 {
        return map.to_vec();
    }
    let radius = (4.0 * sigma).ceil() as isize;
    let mut kernel: Vec<f32> = (-radius..=radius)
        .map(|i| (-(i * i) as f32 / (2.0 * sigma * sigma)).exp())
        .collect();
    let total: f32 = kernel.iter().sum();
    kernel.iter_mut().for_each(|k| *k /= total);
    let clamp = |i: isize, n: usize| i.clamp(0, n as isize - 1) as usize;
    let mut rows = vec![0.0f32; map.len()];
    for y in 0..height {
        for x in 0..width {
            rows[y * width + x] = kernel
                .iter()
                .enumerate()
                .map(|(t, k)| k * map[y * width + clamp(x as isize + t as isize - radius, width)])
                .sum();
        }
    }
    let mut out = vec![0.0f32; map.len()];
    for y in 0..height {
        for x in 0..width {
            out[y * width + x] = kernel
                .iter()
                .enumerate()
                .map(|(t, k)| k * rows[clamp(y as isize + t as isize - radius, height) * width + x])
                .sum();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reductions_by_hand() {
        let map = [0.1, 0.9, 0.3, 0.5];
        assert_eq!(reduce(&map, Reduction::Max), 0.9f32 as f64);
        assert!((reduce(&map, Reduction::Mean) - 0.45).abs() < 1e-6);
        assert!((reduce(&map, Reduction::TopKMean(2)) - 0.7).abs() < 1e-6);
        // k beyond the map is the mean; k = 1 is the max.
        assert!((reduce(&map, Reduction::TopKMean(10)) - 0.45).abs() < 1e-6);
        assert_eq!(
            reduce(&map, Reduction::TopKMean(1)),
            reduce(&map, Reduction::Max)
        );
    }

    #[test]
    fn parses_and_prints() {
        for text in ["max", "mean", "top10"] {
            assert_eq!(text.parse::<Reduction>().unwrap().to_string(), text);
        }
        assert!("top0".parse::<Reduction>().is_err());
        assert!("median".parse::<Reduction>().is_err());
    }

    #[test]
    fn blur_keeps_constants_and_mass_and_spreads_a_spike() {
        let constant = vec![0.25f32; 7 * 5];
        for v in gaussian_blur(&constant, 7, 5, 1.5) {
            assert!((v - 0.25).abs() < 1e-6);
        }
        // A spike in the middle of a map much larger than the kernel keeps its mass and becomes
        // the sampled Gaussian: the centre holds 1 / (sum of the 1-D kernel)^2.
        let (w, h) = (41, 41);
        let mut spike = vec![0.0f32; w * h];
        spike[20 * w + 20] = 1.0;
        let blurred = gaussian_blur(&spike, w, h, 2.0);
        let mass: f32 = blurred.iter().sum();
        assert!((mass - 1.0).abs() < 1e-4, "{mass}");
        let norm: f32 = (-8..=8).map(|i: i32| (-(i * i) as f32 / 8.0).exp()).sum();
        assert!((blurred[20 * w + 20] - 1.0 / (norm * norm)).abs() < 1e-6);
        assert!((blurred[20 * w + 22] - (-0.5f32).exp() / (norm * norm)).abs() < 1e-6);
        assert_eq!(gaussian_blur(&spike, w, h, 0.0), spike);
    }
}
