//! `logsad info` on a profile with parts and rules (`--preset logsad`, enrolled on generated
//! MVTec LOCO scenes with the tiny test model): the parts and rules summary, the picture of an
//! image's parts from `--parts`, the errors of a profile without parts; and `logsad eval` with
//! several detectors: the per-detector table and the per-image detector scores and fired rules
//! of report.json.
//!
//! Needs the tiny model of `make deps` (`.deps/models/tiny`); the tests fail naming it without
//! it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use gstlogsad::detect::parts::render_parts;
use gstlogsad::detectors::Learned;
use gstlogsad::engine::EngineOptions;
use gstlogsad::imageio;
use gstlogsad::inspector::{self, PartLayout};
use gstlogsad::profile::Profile;

mod common;
use common::tiny_manifest;

fn logsad(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_logsad"))
        .args(args)
        .output()
        .expect("running logsad")
}

fn succeeded(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{stderr}");
    stderr
}

fn text(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Small generated LOCO scenes under `dir/loco` (the bottle category is the one whose parts
/// the tiny model's 4x4 grid resolves).
fn scenes(dir: &Path) -> PathBuf {
    let root = dir.join("loco");
    succeeded(&logsad(&[
        "synth",
        "--loco",
        "--train",
        "4",
        "--validation",
        "3",
        "--per-test",
        "2",
        "--out",
        text(&root),
    ]));
    root
}

fn enroll(model: &Path, category: &Path, preset: &str, out: &Path) {
    succeeded(&logsad(&[
        "enroll",
        "--preset",
        preset,
        "--model",
        text(model),
        "--validation",
        text(&category.join("validation/good")),
        "--out",
        text(out),
        text(&category.join("train/good")),
    ]));
}

#[test]
fn info_summary_and_parts_picture() {
    let model = tiny_manifest();
    let dir = tempfile::tempdir().unwrap();
    let bottle = scenes(dir.path()).join("bottle");
    let profile_path = dir.path().join("bottle.logsad");
    enroll(&model, &bottle, "logsad", &profile_path);

    // The header on stdout as before; parts and rule names on stderr.
    let output = logsad(&["info", text(&profile_path)]);
    let stderr = succeeded(&output);
    let header: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let profile = Profile::load(&profile_path).unwrap();
    let parts = profile
        .header
        .parts
        .as_ref()
        .expect("logsad profiles have parts");
    assert_eq!(
        header["parts"]["names"].as_array().unwrap().len(),
        parts.names.len()
    );
    let mut expected = format!(
        "parts: {}, background included: {}\n",
        parts.names.len(),
        parts.names.join(", ")
    );
    let mut rules = 0;
    for detector in &profile.header.detectors {
        if let Learned::Composition { rules: file, .. } = &detector.learned {
            expected += &format!(
                "rules of detector {}: {}\n",
                detector.name(),
                file.rules.len()
            );
            for rule in &file.rules {
                expected += &format!("  {} ({})\n", rule.name(), rule.kind());
            }
            rules += file.rules.len();
        }
    }
    assert!(rules > 0, "learned rules expected: {stderr}");
    assert_eq!(stderr, expected);

    // --parts: the picture is the image with a legend row per non-background part, and it is
    // what the library renders for the image's part layout.
    let image_path = bottle.join("test/good/000.png");
    let picture_path = dir.path().join("parts.png");
    let stderr = succeeded(&logsad(&[
        "info",
        text(&profile_path),
        "--parts",
        text(&image_path),
        "--out",
        text(&picture_path),
        "--model",
        text(&model),
    ]));
    assert!(stderr.contains("wrote"), "{stderr}");
    let picture = image::open(&picture_path).unwrap().into_rgb8();
    let image = imageio::load_rgb(&image_path).unwrap();
    let legend_rows = parts.names.len() as u32 - 1;
    assert_eq!(
        picture.dimensions(),
        (image.width, image.height + 12 * legend_rows + 4)
    );
    let (mut extractor, inspector, _) =
        inspector::load(&profile_path, &model, &EngineOptions::default()).unwrap();
    let header = &inspector.profile.header;
    let features = extractor
        .features(&image, &inspector::part_tiling(header))
        .unwrap();
    let layout = PartLayout::of(parts, &features[0], &image).unwrap();
    let expected = render_parts(&layout.labels, &image, &parts.names).unwrap();
    assert!(picture == expected, "the picture differs from render_parts");
    // Some cell is tinted: the picture is not the image with a legend below.
    assert!(picture.as_raw()[..image.pixels.len()] != image.pixels[..]);

    // A profile without parts: the summary says so, --parts names the fix.
    let faithful = dir.path().join("faithful.logsad");
    enroll(&model, &bottle, "faithful", &faithful);
    let output = logsad(&["info", text(&faithful)]);
    let stderr = succeeded(&output);
    assert!(stderr.starts_with("parts: none"), "{stderr}");
    assert!(stderr.contains("--preset logsad"), "{stderr}");
    let output = logsad(&[
        "info",
        text(&faithful),
        "--parts",
        text(&image_path),
        "--out",
        text(&dir.path().join("none.png")),
        "--model",
        text(&model),
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("has no parts") && stderr.contains("--preset logsad"),
        "{stderr}"
    );
    assert!(!dir.path().join("none.png").exists());
    // --parts needs --out.
    let output = logsad(&["info", text(&profile_path), "--parts", text(&image_path)]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--out"));
}

/// `logsad eval --preset logsad`: a table row per detector and one for the fused score, and
/// report.json holds every image's detector scores and fired rules and each detector's AUROC.
#[test]
fn eval_reports_each_detector() {
    let model = tiny_manifest();
    let dir = tempfile::tempdir().unwrap();
    let root = scenes(dir.path());
    let out = dir.path().join("eval");
    let output = logsad(&[
        "eval",
        "--preset",
        "logsad",
        "--model",
        text(&model),
        "--category",
        "bottle",
        "--out",
        text(&out),
        text(&root),
    ]);
    succeeded(&output);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let table: Vec<Vec<&str>> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("category  detector"))
        .take_while(|l| !l.is_empty())
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        table[0],
        [
            "category",
            "detector",
            "image",
            "AUROC",
            "logical",
            "structural"
        ],
        "{stdout}"
    );
    let names: Vec<&str> = table[2..].iter().map(|row| row[1]).collect();
    assert_eq!(
        names,
        ["composition", "interest", "patch", "fused"],
        "{stdout}"
    );

    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let category = &record["draws"][0]["categories"][0];
    let images = category["per_image"].as_array().unwrap();
    assert_eq!(images.len(), 6);
    for image in images {
        let detectors = image["detectors"].as_object().unwrap();
        let keys: Vec<&str> = detectors.keys().map(String::as_str).collect();
        assert_eq!(keys, ["composition", "interest", "patch"], "{image}");
        let fired = image["rules"].as_array().unwrap().len();
        // The composition detector's score is the number of fired rules, and a fired rule
        // makes the fused score infinite.
        assert_eq!(detectors["composition"], fired as f64, "{image}");
        assert_eq!(fired > 0, image["score"] == "inf", "{image}");
    }
    // Each detector's AUROC (the table's percentages) from its own scores.
    for (i, row) in table[2..5].iter().enumerate() {
        let d = &category["detectors"][i];
        assert_eq!(d["detector"], row[1]);
        let auroc = d["image_auroc"].as_f64().unwrap();
        assert_eq!(format!("{:.1}", auroc * 100.0), row[2]);
        assert!(d["logical_auroc"].is_number() && d["structural_auroc"].is_number());
    }
}
