//! The `logsad` preset (patch, interest and composition detectors on learned parts) on
//! synthetic tray scenes (`logsad synth --loco`, category tray: 9 pins, one per slot) with the
//! default DINOv2 model: rules learned at enrollment fire on a missing pin and stay quiet on
//! good trays, a fired rule sets the final score to 1.0 (paper eq. 5), learned rules survive
//! a write / read round trip, and a bad rule file is refused naming the file and the field.
//!
//! Needs the DINOv2 model that `make deps` prepares (skips without it).

use gstlogsad::detect::rules::write_rules;
use gstlogsad::detectors::Learned;
use gstlogsad::engine::EngineOptions;
use gstlogsad::enroll::{enroll_with, preset, EnrollOptions};
use gstlogsad::imageio::load_rgb;
use gstlogsad::inspector::{Extractor, Inspector, JudgeOptions};
use gstlogsad::synth::loco::{write_loco_scenes, LocoOptions, SceneCategory};
use std::path::{Path, PathBuf};

fn deps() -> PathBuf {
    std::env::var_os("LOGSAD_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".deps"))
}

fn images(dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    paths
}

#[test]
fn rules_fire_on_a_missing_pin_and_stay_quiet_on_good_trays() {
    let manifest = deps().join("models/dinov2-vits14-224/manifest.json");
    if !manifest.exists() {
        eprintln!(
            "skipping: no DINOv2 model in {} (run make deps)",
            deps().display()
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let options = LocoOptions {
        seed: 0,
        train: 4,
        validation: 10,
        good: 6,
        logical: 4,
        structural: 0,
        categories: vec![SceneCategory::Tray],
    };
    write_loco_scenes(dir.path(), &options).unwrap();
    let tray = dir.path().join("tray");
    let logic: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tray.join("logic.json")).unwrap()).unwrap();

    let (mut extractor, _) = Extractor::load(&manifest, &EngineOptions::default()).unwrap();
    let enroll_options = EnrollOptions {
        detectors: preset("logsad", None).unwrap(),
        ..EnrollOptions::default()
    };
    let (profile, _) = enroll_with(
        &mut extractor,
        &images(&tray.join("train/good")),
        &images(&tray.join("validation/good")),
        &enroll_options,
        &mut |_, _, _| {},
    )
    .unwrap();
    let names: Vec<&str> = profile.header.detectors.iter().map(|d| d.name()).collect();
    assert_eq!(names, ["patch", "interest", "composition"]);
    let parts = profile.header.parts.clone().expect("parts learned");
    let rules = profile
        .header
        .detectors
        .iter()
        .find_map(|d| match &d.learned {
            Learned::Composition { rules, .. } => Some(rules.clone()),
            _ => None,
        })
        .unwrap();
    assert!(!rules.rules.is_empty(), "rules were learned");

    let inspector = Inspector::new(profile.clone());
    let judging = JudgeOptions::default();
    for path in images(&tray.join("test/good")) {
        let result = inspector
            .inspect(&mut extractor, &load_rgb(&path).unwrap(), &judging)
            .unwrap();
        assert!(
            result.rules.is_empty(),
            "{}: {:?}",
            path.display(),
            result.rules
        );
        assert!(result.calibrated < 1.0);
        assert_eq!(
            result.detectors[2].raw, 0.0,
            "composition counts no fired rule"
        );
    }
    let missing: Vec<PathBuf> = logic["test"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["anomaly"] == "missing_pin")
        .map(|t| tray.join(t["image"].as_str().unwrap()))
        .collect();
    assert!(!missing.is_empty());
    for path in &missing {
        let result = inspector
            .inspect(&mut extractor, &load_rgb(path).unwrap(), &judging)
            .unwrap();
        assert!(
            result
                .rules
                .iter()
                .any(|r| r.rule.name.starts_with("count(")),
            "{}: a count rule fires on a missing pin, got {:?}",
            path.display(),
            result.rules
        );
        // Paper eq. 5: a fired rule makes the final score 1.0, and the frame anomalous.
        assert_eq!(result.calibrated, 1.0);
        assert!(result.anomalous);
        assert_eq!(result.ranking_score(), f64::INFINITY);
        assert_eq!(result.detectors[2].raw, result.rules.len() as f64);
        // The fired rule names its parts' instances, boxed inside the frame.
        let finding = result
            .rules
            .iter()
            .find(|r| r.rule.name.starts_with("count("))
            .unwrap();
        assert!(!finding.instances.is_empty());
        for &(x, y, w, h) in &finding.instances {
            assert!(w > 0 && h > 0 && x + w <= 256 && y + h <= 256);
        }
    }

    // The learned rules written as a rule file and read back (--rules-out / --rules) judge
    // the same.
    let rules_path = dir.path().join("tray.json");
    std::fs::write(&rules_path, write_rules(&rules)).unwrap();
    let with_file = EnrollOptions {
        rules: Some(rules_path.clone()),
        parts: gstlogsad::detect::parts::PartOptions {
            parts: Some(parts.parts()),
            ..Default::default()
        },
        ..enroll_options.clone()
    };
    let (again, _) = enroll_with(
        &mut extractor,
        &images(&tray.join("train/good")),
        &images(&tray.join("validation/good")),
        &with_file,
        &mut |_, _, _| {},
    )
    .unwrap();
    let again_rules = again
        .header
        .detectors
        .iter()
        .find_map(|d| match &d.learned {
            Learned::Composition { rules, .. } => Some(rules.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(again_rules, rules);

    // A rule on a part the profile lacks is refused, naming the file and the field.
    let text = std::fs::read_to_string(&rules_path).unwrap();
    let mut value: serde_json::Value = serde_json::from_str(&text).unwrap();
    value["rules"][0]["part"] = "part99".into();
    std::fs::write(&rules_path, value.to_string()).unwrap();
    let err = enroll_with(
        &mut extractor,
        &images(&tray.join("train/good")),
        &images(&tray.join("validation/good")),
        &with_file,
        &mut |_, _, _| {},
    )
    .expect_err("an unknown part is refused")
    .to_string();
    assert!(
        err.contains("tray.json") && err.contains("rules[0].part") && err.contains("part99"),
        "{err}"
    );
}
