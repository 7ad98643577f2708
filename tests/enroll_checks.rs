//! Enrollment refuses inputs a calibration cannot stand on and warns about doubtful ones, each
//! message naming the files and the fix; `--resample` is recorded in the profile. Runs the tiny
//! test model on textile images (`.deps/models/tiny`, `.deps/data/textile`, prepared by
//! `make deps`); copies are made at test time.

use gstlogsad::detect::calibrate::CalibrationMethod;
use gstlogsad::engine::EngineOptions;
use gstlogsad::enroll::{enroll, EnrollOptions};
use gstlogsad::inspector;
use gstlogsad::profile::Profile;
use std::path::{Path, PathBuf};
use std::process::Command;

fn deps() -> PathBuf {
    std::env::var_os("LOGSAD_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".deps"))
}

fn tiny_manifest() -> PathBuf {
    let path = deps().join("models/tiny/manifest.json");
    assert!(
        path.is_file(),
        "{} is missing: run `make deps`",
        path.display()
    );
    path
}

/// Nominal textile image `i` (JPEG, 250x250).
fn nominal(i: u32) -> PathBuf {
    let path = deps().join(format!("data/textile/nominal/textile_{i:04}.jpg"));
    assert!(
        path.is_file(),
        "{} is missing: run `make deps`",
        path.display()
    );
    path
}

/// The same pixels as `source`, saved as PNG at `out`.
fn png_copy(source: &Path, out: PathBuf) -> PathBuf {
    image::open(source).unwrap().to_rgb8().save(&out).unwrap();
    out
}

/// `source` re-encoded as JPEG at `quality`: a near copy, not the same pixels.
fn jpeg_copy(source: &Path, quality: u8, out: PathBuf) -> PathBuf {
    let rgb = image::open(source).unwrap().to_rgb8();
    let mut file = std::fs::File::create(&out).unwrap();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut file, quality)
        .encode_image(&rgb)
        .unwrap();
    out
}

fn run(
    references: &[PathBuf],
    validation: &[PathBuf],
    calibration: CalibrationMethod,
) -> Result<(Profile, Vec<String>), String> {
    let options = EnrollOptions {
        calibration,
        ..EnrollOptions::default()
    };
    enroll(
        &tiny_manifest(),
        references,
        validation,
        &options,
        &mut |_, _, _| {},
    )
    .map_err(|e| e.to_string())
}

fn show(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn a_validation_image_with_the_pixels_of_a_reference_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let copy = png_copy(&nominal(2), dir.path().join("copy.png"));
    let references = [nominal(1), nominal(2)];
    let err = run(
        &references,
        &[nominal(5), copy.clone()],
        CalibrationMethod::MeanStd,
    )
    .unwrap_err();
    let want = format!(
        "validation image {} is a copy of reference {} (same pixels): use other anomaly-free \
         images for --validation",
        show(&copy),
        show(&nominal(2))
    );
    assert!(err.contains(&want), "{err}");
}

#[test]
fn fewer_than_two_distinct_validation_images_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let copy = png_copy(&nominal(5), dir.path().join("copy.png"));
    let references = [nominal(1), nominal(2)];
    let err = run(&references, &[nominal(5), copy], CalibrationMethod::MeanStd).unwrap_err();
    assert!(
        err.contains(
            "calibration needs at least 2 distinct validation images, got 1 (1 of the 2 given \
             are copies): add other anomaly-free images to --validation"
        ),
        "{err}"
    );
    let err = run(&references, &[nominal(5)], CalibrationMethod::MeanStd).unwrap_err();
    assert!(
        err.contains("at least 2 distinct validation images, got 1:"),
        "{err}"
    );
}

#[test]
fn copies_among_validation_images_count_once() {
    let dir = tempfile::tempdir().unwrap();
    let copy = png_copy(&nominal(6), dir.path().join("copy.png"));
    let validation = [nominal(5), nominal(6), copy.clone()];
    let (profile, warnings) = run(
        &[nominal(1), nominal(2)],
        &validation,
        CalibrationMethod::MeanStd,
    )
    .unwrap();
    let want = format!(
        "validation image {} is a copy of validation image {} (same pixels): it is counted once",
        show(&copy),
        show(&nominal(6))
    );
    assert_eq!(warnings, [want]);
    assert_eq!(
        profile.header.validation,
        [show(&nominal(5)), show(&nominal(6))]
    );
    let detector = &profile.header.detectors[0];
    assert_eq!(detector.validation_scores.len(), 2);
    assert_eq!(detector.calibration.as_ref().unwrap().count, 2);
}

#[test]
fn references_that_are_copies_of_each_other_are_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let copy = png_copy(&nominal(1), dir.path().join("copy.png"));
    let (profile, warnings) = run(
        &[nominal(1), nominal(2), copy.clone()],
        &[nominal(5), nominal(6)],
        CalibrationMethod::MeanStd,
    )
    .unwrap();
    let want = format!(
        "reference {} is a copy of reference {} (same pixels): it adds nothing to the bank; use \
         another anomaly-free image",
        show(&copy),
        show(&nominal(1))
    );
    assert_eq!(warnings, [want]);
    assert_eq!(profile.header.references.len(), 3);
}

#[test]
fn a_validation_image_matching_the_references_everywhere_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    // Re-encoded, so not the same pixels: found by its map, every patch almost in the bank.
    let near = jpeg_copy(&nominal(1), 90, dir.path().join("near.jpg"));
    let (_, warnings) = run(
        &[nominal(1), nominal(2)],
        &[nominal(5), near.clone(), nominal(6)],
        CalibrationMethod::MeanStd,
    )
    .unwrap();
    let want = format!(
        "validation image {} matches the references almost exactly (every patch within cosine \
         distance 0.01 of the bank): it is probably a copy of a reference; use other \
         anomaly-free images for --validation",
        show(&near)
    );
    // The distinct images 5 and 6 are not flagged.
    assert_eq!(warnings, [want]);
}

#[test]
fn a_validation_image_far_from_the_others_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    // A frame of flat colour, as a damaged or blank capture decodes.
    let flat = dir.path().join("flat.png");
    image::RgbImage::from_pixel(250, 250, image::Rgb([200, 30, 30]))
        .save(&flat)
        .unwrap();
    // Textile 8 is left out: the tiny model (random features) scores it far out too.
    let mut validation: Vec<PathBuf> = (5..8).chain(9..13).map(nominal).collect();
    validation.push(flat.clone());
    let (profile, warnings) = run(
        &[nominal(1), nominal(2)],
        &validation,
        CalibrationMethod::MeanStd,
    )
    .unwrap();
    let scores = &profile.header.detectors[0].validation_scores;
    assert_eq!(warnings.len(), 1, "{warnings:?} {scores:?}");
    let want = format!("validation image {} scores ", show(&flat));
    assert!(
        warnings[0].starts_with(&want)
            && warnings[0].contains("robust deviations above the others on detector patch")
            && warnings[0].ends_with(
                "check it or leave it out of --validation (or use --calibration median-mad)"
            ),
        "{warnings:?}"
    );
    // With median/MAD already in use the warning does not suggest it.
    let (_, robust) = run(
        &[nominal(1), nominal(2)],
        &validation,
        CalibrationMethod::MedianMad,
    )
    .unwrap();
    assert_eq!(robust.len(), 1, "{robust:?}");
    assert!(
        robust[0].starts_with(&want) && robust[0].ends_with("leave it out of --validation"),
        "{robust:?}"
    );
}

#[test]
fn a_spread_of_float_noise_is_refused_naming_the_detector() {
    let dir = tempfile::tempdir().unwrap();
    // Copies of a reference with one grey level changed in one pixel: not the same pixels, but
    // both score 0 to float rounding.
    let tweaked = |x: u32, name: &str| {
        let mut rgb = image::open(nominal(1)).unwrap().to_rgb8();
        rgb.get_pixel_mut(x, 100).0[0] ^= 1;
        let out = dir.path().join(name);
        rgb.save(&out).unwrap();
        out
    };
    let validation = [tweaked(10, "a.png"), tweaked(200, "b.png")];
    for method in [CalibrationMethod::MeanStd, CalibrationMethod::MedianMad] {
        let err = run(&[nominal(1), nominal(2)], &validation, method).unwrap_err();
        assert!(
            err.contains("calibration of detector patch: the validation scores spread by")
                && err.contains("below 1e-5 (float rounding)")
                && err.contains("use more, varied anomaly-free images for --validation"),
            "{err}"
        );
    }
}

#[test]
fn a_profile_with_a_spread_of_noise_warns_when_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let (mut profile, _) = run(
        &[nominal(1), nominal(2)],
        &[nominal(5), nominal(6)],
        CalibrationMethod::MeanStd,
    )
    .unwrap();
    let path = dir.path().join("p.logsad");
    profile.save(&path).unwrap();
    let (_, _, warnings) =
        inspector::load(&path, &tiny_manifest(), &EngineOptions::default()).unwrap();
    assert!(
        warnings.iter().all(|w| !w.contains("spread")),
        "{warnings:?}"
    );
    // As an older build could write it.
    profile.header.detectors[0]
        .calibration
        .as_mut()
        .unwrap()
        .std = 1e-9;
    profile.save(&path).unwrap();
    let (_, _, warnings) =
        inspector::load(&path, &tiny_manifest(), &EngineOptions::default()).unwrap();
    let want = format!(
        "profile {}: detector patch was calibrated on validation scores that spread by 1.0e-9",
        show(&path)
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with(&want) && w.contains("enroll again")),
        "{warnings:?}"
    );
}

#[test]
fn the_command_records_the_resampling() {
    let dir = tempfile::tempdir().unwrap();
    for (args, want) in [(&[][..], "f32"), (&["--resample", "u8"][..], "u8")] {
        let out = dir.path().join(format!("{want}.logsad"));
        let status = Command::new(env!("CARGO_BIN_EXE_logsad"))
            .args(["enroll", "--model"])
            .arg(tiny_manifest())
            .args(args)
            .arg("--validation")
            .args([nominal(5), nominal(6)])
            .arg("--out")
            .arg(&out)
            .args([nominal(1), nominal(2)])
            .output()
            .unwrap();
        assert!(
            status.status.success(),
            "{}",
            String::from_utf8_lossy(&status.stderr)
        );
        let profile = Profile::load(&out).unwrap();
        let (_, spec, _) = profile.header.patch_detectors().next().unwrap();
        let resample = spec.tiling.resample;
        assert_eq!(resample.to_string(), want);
    }
    let bad = Command::new(env!("CARGO_BIN_EXE_logsad"))
        .args([
            "enroll",
            "--resample",
            "u16",
            "--validation",
            "a",
            "--out",
            "b",
            "c",
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("unknown resample \"u16\" (f32 or u8)"),
        "{stderr}"
    );
}

#[test]
fn the_fast_preset_brings_its_model_calibration_coreset_and_neighbourhood() {
    use gstlogsad::detect::coreset::coreset_size;
    use gstlogsad::detect::tiling::Neighbourhood;
    use gstlogsad::enroll::FAST_CORESET_RATIO;
    let int8 = deps().join("models/dinov2-vits14-224-int8/manifest.json");
    assert!(
        int8.is_file(),
        "{} is missing: run `make deps`",
        show(&int8)
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fast.logsad");
    let enrolled = Command::new(env!("CARGO_BIN_EXE_logsad"))
        .args(["enroll", "--preset", "fast", "--validation"])
        .args([nominal(5), nominal(6), nominal(7)])
        .arg("--out")
        .arg(&out)
        .args([nominal(1), nominal(2)])
        .env_remove("LOGSAD_MODEL")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&enrolled.stderr);
    assert!(enrolled.status.success(), "{stderr}");
    assert!(stderr.contains("model dinov2-vits14-224-int8"), "{stderr}");
    let profile = Profile::load(&out).unwrap();
    assert_eq!(profile.header.model.name, "dinov2-vits14-224-int8");
    assert_eq!(profile.header.coreset_ratio, Some(FAST_CORESET_RATIO));
    let mut patch = profile.header.patch_detectors();
    let (local, local_spec, local_bank) = patch.next().unwrap();
    let (global, global_spec, global_bank) = patch.next().unwrap();
    assert_eq!(
        (local_spec.tiling.rows, local_spec.tiling.cols),
        (2, 2),
        "a 2x2 local branch"
    );
    // `auto` is resolved at enrollment: the profile says what runs.
    assert_ne!(local_spec.neighbourhood, Neighbourhood::Auto);
    for detector in [local, global] {
        let method = detector.calibration.as_ref().unwrap().method;
        assert_eq!(method, CalibrationMethod::MedianMad);
    }
    // The local bank: a twentieth of 2 references x 4 tiles x 32 x 32 cells, so sparse.
    let bank = &profile.banks[local_bank];
    let all = 2 * 4 * 32 * 32;
    assert_eq!(bank.len(), coreset_size(all, FAST_CORESET_RATIO));
    assert_eq!(bank.len(), 410);
    assert!(bank.is_sparse());
    // The pooled whole-frame branch keeps one vector per reference.
    assert_eq!(global_spec.tiling.rows, 1);
    assert_eq!(profile.banks[global_bank].len(), 2);
}

/// A rule file is checked before any expensive step: with a model that does not even exist,
/// `logsad enroll --rules` names the rule file's fault, not the model. A part index of 2000
/// (2001 part classes) and a count no frame can reach (2^64) are refused.
#[test]
fn a_bad_rule_file_is_refused_before_the_model_loads() {
    let dir = tempfile::tempdir().unwrap();
    let refuse = |rules: &str| -> String {
        let path = dir.path().join("rules.json");
        std::fs::write(&path, rules).unwrap();
        let output = Command::new(env!("CARGO_BIN_EXE_logsad"))
            .args(["enroll", "--preset", "logsad", "--model"])
            .arg(dir.path().join("no-such-model/manifest.json"))
            .arg("--rules")
            .arg(&path)
            .arg("--out")
            .arg(dir.path().join("p.logsad"))
            .args([nominal(1), nominal(2)])
            .arg("--validation")
            .args([nominal(3), nominal(4)])
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(1), "{output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr).to_string();
        assert!(!stderr.contains("no-such-model"), "{stderr}");
        stderr
    };
    let stderr = refuse(r#"{"category": "kit", "parts": {"pin": 2000}, "rules": []}"#);
    assert!(
        stderr.contains("its parts map names index 2000, which asks for 2001 part classes"),
        "{stderr}"
    );
    let stderr = refuse(
        r#"{"category": "kit", "parts": {"pin": 1},
            "rules": [{"kind": "count", "part": "pin", "equal": 18446744073709551616}]}"#,
    );
    assert!(stderr.contains("rules[0].equal"), "{stderr}");
    assert!(stderr.contains("can never be reached"), "{stderr}");
}
