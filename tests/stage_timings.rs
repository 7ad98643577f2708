//! The per-stage timings and matching FLOPs that `Inspector::inspect` returns with each frame
//! (what `benches/presets.rs` reports), on the tiny test model.

mod common;

use gstlogsad::detect::calibrate::CalibrationMethod;
use gstlogsad::engine::EngineOptions;
use gstlogsad::enroll::{enroll_with, preset, EnrollOptions};
use gstlogsad::imageio::load_rgb;
use gstlogsad::inspector::{Extractor, Inspector, JudgeOptions};
use std::path::PathBuf;
use std::time::Duration;

#[test]
fn timings_split_the_frame_and_flops_count_every_matched_block() {
    let textile = common::require_textile().join("nominal");
    let nominal = |i: usize| textile.join(format!("textile_{i:04}.jpg"));
    let references: Vec<PathBuf> = (1..=4).map(nominal).collect();
    let validation: Vec<PathBuf> = (5..=8).map(nominal).collect();
    let (mut extractor, _) =
        Extractor::load(&common::tiny_manifest(), &EngineOptions::default()).unwrap();
    // 2x2 tiles matched patch by patch, and the whole frame's pooled embedding.
    let options = EnrollOptions {
        detectors: preset("multiscale-embedding", None).unwrap(),
        calibration: CalibrationMethod::MedianMad,
        ..EnrollOptions::default()
    };
    let (profile, _) = enroll_with(
        &mut extractor,
        &references,
        &validation,
        &options,
        &mut |_, _, _| {},
    )
    .unwrap();
    let inspector = Inspector::new(profile);
    let image = load_rgb(&nominal(9)).unwrap();
    let result = inspector
        .inspect(&mut extractor, &image, &JudgeOptions::default())
        .unwrap();

    // Tiny model: 2x2 token grid (4 cells), 8 dims, 4 stages. The local detector's bank holds
    // 4 references x 4 tiles = 16 blocks; each of the frame's 4 tiles is matched against all of
    // them: 4 tiles x 16 blocks x 4 stages x 2 * 4^2 * 8. The pooled detector: one 1x1 grid,
    // 4 blocks: 4 x 4 stages x 2 * 1 * 8.
    let local = 4 * 16 * 4 * (2 * 16 * 8);
    let pooled = 4 * 4 * (2 * 8);
    assert_eq!(result.matching_flops, local + pooled);

    let t = result.timings;
    assert!(t.preprocess > Duration::ZERO, "{t:?}");
    assert!(t.inference > Duration::ZERO, "{t:?}");
    assert!(t.nearest_neighbour > Duration::ZERO, "{t:?}");
    assert!(t.stitching > Duration::ZERO, "{t:?}");
    assert!(t.scoring > Duration::ZERO, "{t:?}");
    // No parts: the logic stages took no time.
    assert_eq!(
        (t.parts, t.interest, t.composition),
        (Duration::ZERO, Duration::ZERO, Duration::ZERO)
    );
    assert_eq!(t.model(), t.preprocess + t.inference);
    assert_eq!(t.patch(), t.nearest_neighbour + t.stitching + t.scoring);
    assert_eq!(t.matching(), t.patch());
    assert_eq!(t.total(), t.model() + t.matching());

    // A batch of two frames: each carries half of the batch's preprocessing and inference, so
    // the two shares are equal.
    let other = load_rgb(&nominal(10)).unwrap();
    let both = inspector
        .inspect_batch(&mut extractor, &[&image, &other], &JudgeOptions::default())
        .unwrap();
    assert_eq!(both[0].timings.model(), both[1].timings.model());
    assert!(both[0].timings.inference > Duration::ZERO);
    assert_eq!(both[1].matching_flops, local + pooled);
}
