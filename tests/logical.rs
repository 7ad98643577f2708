//! The `logsad` preset (patch, interest and composition detectors on parts at pixel resolution)
//! end to end with the default DINOv2 model, on the synthetic logic scenes of
//! `logsad synth --loco` (family a: tray, kit, bottle):
//!
//! - every logical anomaly kind of every category but the known misses ranks above the good
//!   scenes (AUROC of the fused ranking score per kind, at least 0.7), and learned rules fire
//!   on at most four good scenes in ten (a guard: 12% measured, the goal 2% is not met);
//! - a fired rule sets the final score to 1.0 (paper eq. 5) and boxes its parts' instances;
//! - the `logsad` element posts the fired rules in its `logsad-anomaly` bus message;
//! - learned rules survive a write / read round trip, and a bad rule file is refused naming the
//!   file and the field.
//!
//! Needs the DINOv2 model that `make deps` prepares (fails without it).

mod common;

use gst::prelude::*;
use gstlogsad::detect::metrics::auroc;
use gstlogsad::detect::parts::PartOptions;
use gstlogsad::detect::rules::write_rules;
use gstlogsad::detectors::Learned;
use gstlogsad::engine::EngineOptions;
use gstlogsad::enroll::{enroll_with, preset, EnrollOptions};
use gstlogsad::imageio::load_rgb;
use gstlogsad::inspector::{Extractor, FrameResult, Inspector, JudgeOptions};
use gstlogsad::profile::Profile;
use gstlogsad::synth::loco::{write_loco_scenes, LocoOptions, SceneCategory};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn images(dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    paths
}

fn dinov2() -> PathBuf {
    let manifest = common::deps().join("models/dinov2-vits14-224/manifest.json");
    assert!(
        manifest.is_file(),
        "{} is missing: run `make deps`",
        manifest.display()
    );
    manifest
}

/// The preset as `logsad enroll --preset logsad` sets it up.
fn logsad_options() -> EnrollOptions {
    EnrollOptions {
        detectors: preset("logsad", None).unwrap(),
        parts: PartOptions::pixels(),
        ..EnrollOptions::default()
    }
}

fn enroll(extractor: &mut Extractor, category: &Path, options: &EnrollOptions) -> Profile {
    enroll_with(
        extractor,
        &images(&category.join("train/good")),
        &images(&category.join("validation/good")),
        options,
        &mut |_, _, _| {},
    )
    .unwrap()
    .0
}

/// Each test image of a category's `logic.json` (relative path -> logical anomaly kind, `None`
/// for good images).
fn answer_key(category: &Path) -> Vec<(PathBuf, Option<String>)> {
    let text = std::fs::read_to_string(category.join("logic.json")).unwrap();
    let logic: serde_json::Value = serde_json::from_str(&text).unwrap();
    logic["test"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                category.join(t["image"].as_str().unwrap()),
                t["anomaly"].as_str().map(str::to_string),
            )
        })
        .collect()
}

/// Logical anomaly kinds the preset does not catch yet (README, "Logical anomalies"): a pin of
/// the other metal (0.55 on the seed-0 scenes: both metals fall into one class) and a clamp
/// count that does not match the cable's colour (0.86 on the seed-0 scenes, 0.56 on seed 3).
/// Every other kind must rank above the good scenes.
const KNOWN_MISSES: [&str; 2] = ["odd_metal_pin", "wrong_clamp_count"];

#[test]
fn every_logical_kind_ranks_above_good_scenes_and_rules_stay_quiet_on_them() {
    let dir = tempfile::tempdir().unwrap();
    let options = LocoOptions {
        seed: 0,
        train: 4,
        validation: 10,
        good: 10,
        logical: 12,
        structural: 0,
        categories: SceneCategory::ALL.to_vec(),
    };
    write_loco_scenes(dir.path(), &options).unwrap();
    let (mut extractor, _) = Extractor::load(&dinov2(), &EngineOptions::default()).unwrap();
    let judging = JudgeOptions::default();
    for category in SceneCategory::ALL {
        let root = dir.path().join(category.name());
        let profile = enroll(&mut extractor, &root, &logsad_options());
        let parts = profile.header.parts.as_ref().expect("parts learned");
        assert!(parts.masks.is_some(), "parts at pixel resolution");
        let inspector = Inspector::new(profile.clone());
        let mut good = Vec::new();
        let mut good_fired = 0;
        let mut by_kind: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for (path, kind) in answer_key(&root) {
            let image = load_rgb(&path).unwrap();
            let result: FrameResult = inspector.inspect(&mut extractor, &image, &judging).unwrap();
            match kind {
                None if path.to_string_lossy().contains("/good/") => {
                    good_fired += usize::from(!result.rules.is_empty());
                    good.push(result.ranking_score());
                }
                Some(kind) => by_kind
                    .entry(kind)
                    .or_default()
                    .push(result.ranking_score()),
                None => {}
            }
        }
        assert_eq!(good.len(), 10);
        // The goal is 2% (README: 7 of 60 good seed-0 scenes measured): this only guards
        // against the rules getting worse.
        assert!(
            good_fired <= 4,
            "{}: rules fired on {good_fired} of 10 good scenes",
            category.name()
        );
        let mut kinds: Vec<String> = category
            .logical_anomalies()
            .iter()
            .map(|k| {
                serde_json::to_value(k)
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        kinds.sort_unstable();
        kinds.dedup();
        assert_eq!(
            by_kind.keys().cloned().collect::<Vec<_>>(),
            kinds,
            "every kind of {} was tested",
            category.name()
        );
        for (kind, scores) in by_kind
            .iter()
            .filter(|(k, _)| !KNOWN_MISSES.contains(&k.as_str()))
        {
            let values: Vec<f64> = good.iter().chain(scores).copied().collect();
            let labels: Vec<bool> = good
                .iter()
                .map(|_| false)
                .chain(scores.iter().map(|_| true))
                .collect();
            let area = auroc(&values, &labels).unwrap();
            assert!(
                area >= 0.7,
                "{} {kind}: AUROC {area:.3} against the good scenes ({scores:?} vs {good:?})",
                category.name()
            );
        }
    }
}

/// A fired rule makes the final score 1.0 and the frame anomalous, boxes its parts, reaches
/// the bus message of the element; learned rules survive a round trip through a rule file.
#[test]
fn a_missing_pin_fires_a_rule_in_the_result_and_on_the_bus() {
    let dir = tempfile::tempdir().unwrap();
    let options = LocoOptions {
        seed: 0,
        train: 4,
        validation: 10,
        good: 2,
        logical: 4,
        structural: 0,
        categories: vec![SceneCategory::Tray],
    };
    write_loco_scenes(dir.path(), &options).unwrap();
    let tray = dir.path().join("tray");
    let manifest = dinov2();
    let (mut extractor, _) = Extractor::load(&manifest, &EngineOptions::default()).unwrap();
    let enroll_options = logsad_options();
    let profile = enroll(&mut extractor, &tray, &enroll_options);
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
    let missing: Vec<PathBuf> = answer_key(&tray)
        .into_iter()
        .filter(|(_, kind)| kind.as_deref() == Some("missing_pin"))
        .map(|(path, _)| path)
        .collect();
    assert!(!missing.is_empty());
    for path in &missing {
        let result = inspector
            .inspect(&mut extractor, &load_rgb(path).unwrap(), &judging)
            .unwrap();
        assert!(
            !result.rules.is_empty(),
            "{}: a rule fires on a missing pin",
            path.display()
        );
        // Paper eq. 5: a fired rule makes the final score 1.0, and the frame anomalous.
        assert_eq!(result.calibrated, 1.0);
        assert!(result.anomalous);
        assert_eq!(result.ranking_score(), f64::INFINITY);
        assert_eq!(result.detectors[2].raw, result.rules.len() as f64);
        // A fired rule on parts names their instances, boxed inside the frame.
        for finding in result.rules.iter().filter(|r| !r.rule.parts.is_empty()) {
            assert!(!finding.instances.is_empty(), "{:?}", finding.rule);
            for &(x, y, w, h) in &finding.instances {
                assert!(w > 0 && h > 0 && x + w <= 256 && y + h <= 256);
            }
        }
    }
    let expected: Vec<String> = inspector
        .inspect(&mut extractor, &load_rgb(&missing[0]).unwrap(), &judging)
        .unwrap()
        .rules
        .iter()
        .map(|r| r.rule.name.clone())
        .collect();

    // The element posts the fired rules on the bus.
    let profile_path = dir.path().join("tray.logsad");
    profile.save(&profile_path).unwrap();
    common::init();
    let pipeline = gst::parse::launch(&format!(
        "filesrc location={} ! pngdec ! videoconvert ! logsad profile={} model={} ! fakesink",
        missing[0].display(),
        profile_path.display(),
        manifest.display()
    ))
    .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let bus = pipeline.bus().unwrap();
    let mut rules_posted = None;
    loop {
        let message = bus
            .timed_pop(gst::ClockTime::from_seconds(60))
            .expect("timed out waiting for EOS");
        match message.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(e) => panic!("pipeline error: {}", e.error()),
            gst::MessageView::Element(e) => {
                if let Some(s) = e.structure().filter(|s| s.name() == "logsad-anomaly") {
                    assert_eq!(s.get::<f64>("calibrated").unwrap(), 1.0);
                    rules_posted = Some(s.get::<gst::Array>("rules").unwrap());
                }
            }
            _ => {}
        }
    }
    pipeline.set_state(gst::State::Null).unwrap();
    let posted = rules_posted.expect("a logsad-anomaly message");
    let names: Vec<String> = posted
        .iter()
        .map(|v| {
            let s = v.get::<gst::Structure>().unwrap();
            assert_eq!(s.name(), "rule");
            assert!(!s.get::<String>("message").unwrap().is_empty());
            s.get::<String>("name").unwrap()
        })
        .collect();
    assert_eq!(
        names, expected,
        "the bus message lists the rules that fired"
    );

    // The learned rules written as a rule file and read back (--rules-out / --rules) judge
    // the same.
    let rules_path = dir.path().join("tray.json");
    std::fs::write(&rules_path, write_rules(&rules)).unwrap();
    let with_file = EnrollOptions {
        rules: Some(rules_path.clone()),
        parts: PartOptions {
            parts: Some(parts.parts()),
            ..enroll_options.parts.clone()
        },
        ..enroll_options.clone()
    };
    let again = enroll(&mut extractor, &tray, &with_file);
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
