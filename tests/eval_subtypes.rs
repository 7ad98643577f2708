//! Anomaly subtypes in the evaluation: read from MVTec LOCO's `defects_config.json` and masks or
//! from the `logic.json` of `logsad synth --loco` scenes, carried through `evaluate` into the
//! per-image scores and the per-subtype metrics, and printed by `logsad eval`.
//!
//! The tests that run a model need the tiny model of `make deps` (`.deps/models/tiny`) and fail
//! naming it without it.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use gstlogsad::eval::dataset::testing::write_miniature;
use gstlogsad::eval::dataset::{load, Layout, LoadOptions, Split, DEFECTS_CONFIG};
use gstlogsad::eval::report::Report;
use gstlogsad::eval::run::{evaluate, EvalOptions};
use gstlogsad::synth::loco::{write_loco_scenes, LocoOptions, SceneCategory};

/// The tiny test model's manifest; panics naming it when `make deps` has not prepared it.
fn tiny_manifest() -> PathBuf {
    let deps = std::env::var_os("LOGSAD_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".deps"));
    let path = deps.join("models/tiny/manifest.json");
    for file in [path.clone(), path.with_file_name("model.onnx")] {
        assert!(
            file.is_file(),
            "the tiny model is missing: {} does not exist. Run `make deps`.",
            file.display()
        );
    }
    path
}

/// Sets every non-zero pixel of the mask at `path` to `value`.
fn recolour(path: &Path, value: u8) {
    let mut mask = image::open(path).unwrap().into_luma8();
    let mut changed = 0;
    for p in mask.pixels_mut() {
        if p.0[0] != 0 {
            p.0[0] = value;
            changed += 1;
        }
    }
    assert!(changed > 0, "{} is empty", path.display());
    mask.save(path).unwrap();
}

/// The LOCO miniature (`breakfast_box`) with a `defects_config.json` of three defects and its
/// masks recoloured: logical 000 `extra_banana+missing_almonds` (two masks, 255 and 200),
/// logical 001 `extra_banana` (200), structural 000 `box_damaged` (100), structural 001 none
/// (an unlisted value).
fn loco_with_defects_config(root: &Path) {
    write_miniature(root, Layout::MvtecLoco).unwrap();
    let cat = root.join("breakfast_box");
    fs::write(
        cat.join(DEFECTS_CONFIG),
        r#"[
    {"defect_name": "missing_almonds", "pixel_value": 255, "saturation_threshold": 2500,
     "relative_saturation": false},
    {"defect_name": "extra_banana", "pixel_value": 200, "saturation_threshold": 1.0,
     "relative_saturation": true},
    {"defect_name": "box_damaged", "pixel_value": 100, "saturation_threshold": 1.0,
     "relative_saturation": true}
]"#,
    )
    .unwrap();
    let gt = cat.join("ground_truth");
    recolour(&gt.join("logical_anomalies/000/001.png"), 200);
    recolour(&gt.join("logical_anomalies/001/000.png"), 200);
    recolour(&gt.join("logical_anomalies/001/001.png"), 200);
    recolour(&gt.join("structural_anomalies/000/000.png"), 100);
    recolour(&gt.join("structural_anomalies/001/000.png"), 42);
}

/// (file name relative to the category's `test`, subtype) of each test image.
fn expected_loco() -> BTreeMap<String, Option<String>> {
    [
        ("good/000.png", None),
        ("good/001.png", None),
        (
            "logical_anomalies/000.png",
            Some("extra_banana+missing_almonds"),
        ),
        ("logical_anomalies/001.png", Some("extra_banana")),
        ("structural_anomalies/000.png", Some("box_damaged")),
        ("structural_anomalies/001.png", None),
    ]
    .into_iter()
    .map(|(p, t)| (p.to_string(), t.map(str::to_string)))
    .collect()
}

fn test_rel(path: &str, category_dir: &Path) -> String {
    Path::new(path)
        .strip_prefix(category_dir.join("test"))
        .unwrap_or_else(|_| panic!("{path} outside {}", category_dir.display()))
        .to_string_lossy()
        .replace('\\', "/")
}

/// The scenes of `logsad synth --loco` (no `defects_config.json`): every logical image's
/// subtype is its `anomaly` in `logic.json`; good and structural images have none.
#[test]
fn synth_scenes_subtypes_from_logic_json() {
    let dir = tempfile::tempdir().unwrap();
    let options = LocoOptions {
        train: 1,
        validation: 2,
        good: 1,
        logical: 5,
        structural: 2,
        categories: vec![SceneCategory::Tray],
        ..LocoOptions::default()
    };
    write_loco_scenes(dir.path(), &options).unwrap();
    let cat = dir.path().join("tray");
    assert!(!cat.join(DEFECTS_CONFIG).exists());
    let key: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(cat.join("logic.json")).unwrap()).unwrap();
    let from_key: BTreeMap<String, Option<String>> = key["test"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["image"].as_str().unwrap().to_string(),
                e["anomaly"].as_str().map(str::to_string),
            )
        })
        .collect();
    assert_eq!(from_key.len(), 8);

    let ds = load(dir.path(), None, &LoadOptions::default()).unwrap();
    assert_eq!(ds.layout, Layout::MvtecLoco);
    let test = &ds.categories[0].test;
    assert_eq!(test.len(), 8);
    let mut logical = Vec::new();
    for s in test {
        let rel = s
            .path
            .strip_prefix(&cat)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        match s.split {
            Some(Split::Logical) => {
                let subtype = s.subtype.clone().unwrap_or_else(|| panic!("{rel}: none"));
                assert_eq!(from_key[&rel].as_deref(), Some(subtype.as_str()), "{rel}");
                logical.push(subtype);
            }
            _ => assert_eq!(s.subtype, None, "{rel}"),
        }
    }
    // Five logical images cycle through the tray's four anomalies.
    assert_eq!(
        logical,
        [
            "missing_pin",
            "extra_pin",
            "displaced_pin",
            "odd_metal_pin",
            "missing_pin"
        ]
    );
}

/// `evaluate` carries each sample's subtype into its scores and reports per-subtype metrics;
/// the faithful preset has no composition detector, so `caught_by_rules` is undefined.
#[test]
fn evaluate_reports_subtypes() {
    let model = tiny_manifest();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("loco");
    loco_with_defects_config(&root);
    let dataset = load(&root, None, &LoadOptions::default()).unwrap();
    let options = EvalOptions {
        shots: Some(2),
        ..EvalOptions::default()
    };
    let reports = evaluate(&model, &dataset, &options, &mut |_| {}).unwrap();
    let c = &reports[0].categories[0];
    let cat = root.join("breakfast_box");
    let per_image: BTreeMap<String, Option<String>> = c
        .per_image
        .iter()
        .map(|s| (test_rel(&s.path, &cat), s.subtype.clone()))
        .collect();
    assert_eq!(per_image, expected_loco());

    let rows: Vec<(Option<&str>, &str, usize, usize)> = c
        .subtypes
        .iter()
        .map(|t| {
            (
                t.split.as_deref(),
                t.subtype.as_str(),
                t.metrics.images,
                t.metrics.anomalies,
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            (Some("logical"), "extra_banana", 3, 1),
            (Some("logical"), "extra_banana+missing_almonds", 3, 1),
            (Some("structural"), "box_damaged", 3, 1),
        ]
    );
    // Each subtype's AUROC is its one image's rank among the two good images.
    let score = |rel: &str| {
        c.per_image
            .iter()
            .find(|s| test_rel(&s.path, &cat) == rel)
            .unwrap()
            .score
    };
    let good = [score("good/000.png"), score("good/001.png")];
    let rank = |x: f64| {
        good.iter()
            .map(|&g| match x.partial_cmp(&g).unwrap() {
                std::cmp::Ordering::Greater => 1.0,
                std::cmp::Ordering::Equal => 0.5,
                std::cmp::Ordering::Less => 0.0,
            })
            .sum::<f64>()
            / 2.0
    };
    for (t, image) in c.subtypes.iter().zip([
        "logical_anomalies/001.png",
        "logical_anomalies/000.png",
        "structural_anomalies/000.png",
    ]) {
        let auroc = t.metrics.auroc.expect("defined");
        assert!((auroc - rank(score(image))).abs() < 1e-12, "{t:?}");
        assert_eq!(t.caught_by_rules, None, "{t:?}");
    }
    assert!(c.per_image.iter().all(|s| s.rules.is_empty()));
}

/// `logsad eval` prints the subtype table and writes the subtypes into report.json.
#[test]
fn command_prints_subtypes() {
    let model = tiny_manifest();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("loco");
    loco_with_defects_config(&root);
    let out = dir.path().join("out");
    let output = Command::new(env!("CARGO_BIN_EXE_logsad"))
        .args(["eval", "--shots", "2", "--model"])
        .arg(&model)
        .arg("--out")
        .arg(&out)
        .arg(&root)
        .output()
        .expect("running logsad");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let header = stdout
        .lines()
        .find(|l| l.starts_with("category") && l.contains("subtype"))
        .unwrap_or_else(|| panic!("no subtype table:\n{stdout}"));
    assert_eq!(
        header
            .split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect::<Vec<_>>(),
        [
            "category",
            "split",
            "subtype",
            "images",
            "image AUROC",
            "F1-max",
            "caught by rules"
        ]
    );
    let json: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let report: Report =
        serde_json::from_value(json["draws"][0].clone()).expect("a draw reads as a Report");
    let c = &report.categories[0];
    assert_eq!(c.subtypes.len(), 3);
    for t in &c.subtypes {
        let row = stdout
            .lines()
            .find(|l| {
                let cells: Vec<&str> = l.split_whitespace().collect();
                cells.len() == 7 && cells[1] == t.split.as_deref().unwrap() && cells[2] == t.subtype
            })
            .unwrap_or_else(|| panic!("no row for {}:\n{stdout}", t.subtype));
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells[0], "breakfast_box");
        assert_eq!(cells[3], "3");
        let auroc = t.metrics.auroc.expect("defined");
        assert_eq!(cells[4], format!("{:.1}", auroc * 100.0), "{row}");
        assert_eq!(cells[6], "-", "no composition detector: {row}");
    }
    let first = &json["draws"][0]["categories"][0]["subtypes"][0];
    assert_eq!(first["subtype"], "extra_banana");
    assert_eq!(first["split"], "logical");
    assert_eq!(first["images"], 3);
    assert_eq!(first["anomalies"], 1);
    assert!(first["caught_by_rules"].is_null());
}
