//! Region boxes on a real defect: the demo's textile speck (`local/textile_0001.jpg`, about
//! 11x23 px at (162, 196)) with the demo's profile (4 references, 20 validation images,
//! `multiscale-embedding`, 2x2 tiles, median/MAD calibration) and the DINOv2 ViT-S/14 backbone.
//!
//! Needs what `make deps` prepares in `.deps/` (fails naming the model or data it cannot find).

use gstlogsad::detect::calibrate::CalibrationMethod;
use gstlogsad::detect::regions::RegionOptions;
use gstlogsad::engine::EngineOptions;
use gstlogsad::enroll::{enroll, preset, EnrollOptions};
use gstlogsad::imageio::load_rgb;
use gstlogsad::inspector::{self, frame_regions, JudgeOptions};
use std::path::PathBuf;

mod common;
use common::{require_dinov2, require_textile};

/// The speck's extent in frame pixels (left, top, right, bottom, inclusive), read off the image.
const SPECK: (u32, u32, u32, u32) = (162, 196, 172, 218);

#[test]
fn one_box_frames_the_demo_speck() {
    let manifest = require_dinov2();
    let textile = require_textile();
    let nominal = |i: u32| textile.join(format!("nominal/textile_{i:04}.jpg"));
    let references: Vec<PathBuf> = (1..=4).map(nominal).collect();
    let validation: Vec<PathBuf> = (5..=24).map(nominal).collect();
    let options = EnrollOptions {
        detectors: preset("multiscale-embedding", None).unwrap(),
        calibration: CalibrationMethod::MedianMad,
        ..EnrollOptions::default()
    };
    let (profile, _) = enroll(
        &manifest,
        &references,
        &validation,
        &options,
        &mut |_, _, _| {},
    )
    .expect("enrollment");
    let dir = tempfile::tempdir().unwrap();
    let profile_path = dir.path().join("demo.logsad");
    profile.save(&profile_path).unwrap();
    let (mut extractor, inspector, _) =
        inspector::load(&profile_path, &manifest, &EngineOptions::default()).unwrap();

    let image = load_rgb(&textile.join("local/textile_0001.jpg")).unwrap();
    let judging = JudgeOptions {
        threshold: None,
        regions: Some(RegionOptions::default()),
    };
    let result = inspector.inspect(&mut extractor, &image, &judging).unwrap();
    assert!(result.anomalous, "the speck frame is flagged");
    let boxes = &result.regions;
    assert_eq!(boxes.len(), 1, "one box, got {boxes:?}");
    let (x, y, w, h) = boxes[0].rect;
    let (left, top, right, bottom) = SPECK;
    let centre = ((left + right) / 2, (top + bottom) / 2);
    assert!(
        (x..x + w).contains(&centre.0) && (y..y + h).contains(&centre.1),
        "box {:?} misses the speck's centre {centre:?}",
        boxes[0].rect
    );
    // A ViT patch is 14 px of a 224 px tile, 7.8 px of a 125 px frame tile: a box that frames
    // the 11x23 px speck stays within a few patches of it.
    assert!(
        w <= 48 && h <= 48,
        "box {:?} is far larger than the speck",
        boxes[0].rect
    );

    // Every cell above the threshold (the earlier boxes) reaches far beyond it.
    let before = frame_regions(
        &result.map,
        result.map_threshold,
        result.frame_size,
        &RegionOptions::above_threshold(1),
    );
    let largest = before.iter().map(|r| r.rect.2 * r.rect.3).max().unwrap();
    assert!(largest > 2 * w * h, "earlier boxes {before:?}");
}
