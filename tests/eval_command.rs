//! `logsad eval` end to end: miniature datasets in every layout are evaluated in-process with
//! `gstlogsad::eval::run::evaluate` and the tiny test model, and the built `logsad` binary is run
//! on the plain miniature (tables, report.json, ROC plot, errors).
//!
//! Needs the tiny model of `make deps` (`.deps/models/tiny`); the tests that run a model fail
//! naming it without it.

use std::path::{Path, PathBuf};
use std::process::Command;

use gstlogsad::eval::dataset::testing::write_miniature;
use gstlogsad::eval::dataset::{
    load, references_and_validation, Dataset, Layout, LoadOptions, Protocol,
};
use gstlogsad::eval::report::{CategoryReport, Report, ScoredImage};
use gstlogsad::eval::run::{evaluate, summarise, EvalOptions, EvalProgress};

mod common;
use common::tiny_manifest;

fn miniature(dir: &Path, layout: Layout) -> Dataset {
    let root = dir.join(layout.name());
    write_miniature(&root, layout).unwrap();
    let dataset = load(&root, None, &LoadOptions::default()).unwrap();
    assert_eq!(dataset.layout, layout);
    dataset
}

/// Per-image scores of each (draw, category), in the order they finished.
type Scores = Vec<(usize, String, Vec<ScoredImage>)>;

fn run(model: &Path, dataset: &Dataset, options: &EvalOptions) -> (Vec<Report>, Scores) {
    let mut scores = Vec::new();
    let mut started = None;
    let mut images = 0;
    let reports = evaluate(model, dataset, options, &mut |event| match event {
        EvalProgress::Start { images, .. } => started = Some(images),
        EvalProgress::Image { .. } => images += 1,
        EvalProgress::CategoryDone {
            draw,
            report,
            scores: s,
            ..
        } => scores.push((draw, report.category.clone(), s.to_vec())),
        _ => {}
    })
    .unwrap();
    assert_eq!(started, Some(images), "progress counts every test image");
    (reports, scores)
}

fn in_unit(v: Option<f64>, what: &str) -> f64 {
    let v = v.unwrap_or_else(|| panic!("{what} is undefined"));
    assert!((0.0..=1.0).contains(&v), "{what} = {v}");
    v
}

/// Image counts, defined metrics in [0, 1], LOCO splits and pixel metrics where expected.
fn check_category(
    c: &CategoryReport,
    images: usize,
    anomalies: usize,
    layout: Layout,
    pixel: bool,
) {
    let name = &c.category;
    assert_eq!((c.images, c.anomalies), (images, anomalies), "{name}");
    in_unit(c.image_auroc, "image AUROC");
    in_unit(c.image_f1_max, "image F1-max");
    if layout == Layout::MvtecLoco {
        for (split, m) in [("logical", c.logical), ("structural", c.structural)] {
            let m = m.unwrap_or_else(|| panic!("{name}: no {split} metrics"));
            assert_eq!((m.images, m.anomalies), (4, 2), "{name} {split}");
            in_unit(m.auroc, split);
            in_unit(m.f1_max, split);
        }
    } else {
        assert!(c.logical.is_none() && c.structural.is_none(), "{name}");
    }
    if pixel {
        let p = c
            .pixel
            .unwrap_or_else(|| panic!("{name}: no pixel metrics"));
        assert_eq!(p.pixels, images as u64 * 32 * 32, "{name}: every pixel");
        in_unit(p.auroc, "pixel AUROC");
        in_unit(p.f1_max, "pixel F1-max");
    } else {
        assert!(c.pixel.is_none(), "{name}: unexpected pixel metrics");
    }
    let t = &c.timing;
    assert!(
        t.model_s > 0.0 && t.matching_s > 0.0 && t.per_image_ms > 0.0,
        "{t:?}"
    );
    let s = &c.settings;
    assert_eq!(s["preset"], "faithful");
    assert_eq!(s["model"], "tiny-dinov2-28x28-p14-d8-s0");
    assert_eq!(s["detectors"][0]["kind"], "patch");
    assert_eq!(s["detectors"][0]["name"], "patch");
    assert!(s["validation_images"].as_u64().unwrap() >= 2, "{s}");
}

/// Every layout: categories, image and anomaly counts, metrics, and the bright squares ranked
/// above the good images.
#[test]
fn every_layout() {
    let model = tiny_manifest();
    let dir = tempfile::tempdir().unwrap();
    let options = EvalOptions {
        validation_count: 2,
        ..EvalOptions::default()
    };
    // (layout, categories, test images, anomalies, pixel metrics)
    let cases: [(Layout, &[&str], usize, usize, bool); 4] = [
        (Layout::MvtecAd, &["tile", "wood"], 5, 3, true),
        (Layout::MvtecLoco, &["breakfast_box"], 6, 4, true),
        (Layout::Visa, &["candle", "pcb1"], 5, 3, true),
        (Layout::Plain, &["plain"], 8, 4, false),
    ];
    for (layout, names, images, anomalies, pixel) in cases {
        let dataset = miniature(dir.path(), layout);
        let (reports, scores) = run(&model, &dataset, &options);
        assert_eq!(reports.len(), 1, "{layout}: one draw without a seed");
        let report = &reports[0];
        let got: Vec<&str> = report
            .categories
            .iter()
            .map(|c| c.category.as_str())
            .collect();
        assert_eq!(got, names, "{layout}");
        for c in &report.categories {
            check_category(c, images, anomalies, layout, pixel);
            eprintln!(
                "{layout} {}: image AUROC {:?}, F1 {:?}, pixel {:?}",
                c.category, c.image_auroc, c.image_f1_max, c.pixel
            );
            // The bright squares stand out: perfectly separated from the good images.
            assert!(c.image_auroc.unwrap() >= 0.99, "{layout} {}", c.category);
            assert!(c.image_f1_max.unwrap() >= 0.99, "{layout} {}", c.category);
            if let Some(p) = c.pixel {
                assert!(p.auroc.unwrap() >= 0.7, "{layout} {}: {p:?}", c.category);
            }
        }
        assert_eq!(report.mean.categories, names.len());
        assert_eq!(report.mean.images, images * names.len());
        assert_eq!(report.mean.pixel_auroc.is_some(), pixel, "{layout}");
        for (_, category, s) in &scores {
            assert_eq!(s.len(), images, "{category}");
            let splits: Vec<Option<&str>> = s
                .iter()
                .filter(|x| x.anomalous)
                .map(|x| x.split.as_deref())
                .collect();
            if layout == Layout::MvtecLoco {
                assert_eq!(
                    splits,
                    [
                        Some("logical"),
                        Some("logical"),
                        Some("structural"),
                        Some("structural")
                    ]
                );
            } else {
                assert!(splits.iter().all(Option::is_none), "{splits:?}");
            }
        }
    }
}

/// `--no-pixel` drops the pixel metrics; `--test-limit` keeps the first N of each defect type.
#[test]
fn no_pixel_and_test_limit() {
    let model = tiny_manifest();
    let dir = tempfile::tempdir().unwrap();
    let dataset = miniature(dir.path(), Layout::MvtecAd);
    let options = EvalOptions {
        validation_count: 3,
        shots: Some(2),
        test_limit: Some(1),
        pixel: false,
        ..EvalOptions::default()
    };
    let (reports, scores) = run(&model, &dataset, &options);
    for c in &reports[0].categories {
        // crack, good, hole: one each.
        assert_eq!((c.images, c.anomalies), (3, 2), "{}", c.category);
        assert!(c.pixel.is_none());
        assert_eq!(c.settings["shots"], 2);
        assert_eq!(c.settings["references"], 2);
        assert_eq!(c.settings["validation_images"], 3);
        assert_eq!(c.settings["test_limit"], 1);
    }
    let files: Vec<String> = scores[0]
        .2
        .iter()
        .map(|s| {
            Path::new(&s.path)
                .strip_prefix(&dataset.root)
                .unwrap()
                .display()
                .to_string()
        })
        .collect();
    assert_eq!(
        files,
        [
            "tile/test/crack/000.png",
            "tile/test/good/000.png",
            "tile/test/hole/000.png"
        ]
    );
}

/// Batches of several test images (one inference per batch, decoding on a second thread) give
/// the scores of one image at a time, in the same order, and a batch of 0 is refused.
#[test]
fn batches_score_as_single_images() {
    let model = tiny_manifest();
    let dir = tempfile::tempdir().unwrap();
    let dataset = miniature(dir.path(), Layout::MvtecAd);
    let with_batch = |batch: usize| EvalOptions {
        validation_count: 3,
        shots: Some(2),
        preset: "multiscale".into(),
        detectors: gstlogsad::eval::run::Detectors::Fixed(
            gstlogsad::enroll::preset("multiscale", None).unwrap(),
        ),
        batch,
        ..EvalOptions::default()
    };
    let (single_reports, single) = run(&model, &dataset, &with_batch(1));
    let (batched_reports, batched) = run(&model, &dataset, &with_batch(3));
    assert_eq!(single.len(), batched.len());
    for ((_, category, one), (_, _, many)) in single.iter().zip(&batched) {
        assert_eq!(one.len(), many.len(), "{category}");
        for (a, b) in one.iter().zip(many) {
            assert_eq!(a.path, b.path);
            assert!(
                (a.score - b.score).abs() <= 1e-4 * a.score.abs().max(1.0),
                "{a:?} {b:?}"
            );
        }
    }
    let pixel = |r: &[Report]| r[0].categories[0].pixel.and_then(|p| p.auroc).unwrap();
    assert!((pixel(&single_reports) - pixel(&batched_reports)).abs() < 1e-3);
    let error = evaluate(&model, &dataset, &with_batch(0), &mut |_| {}).unwrap_err();
    assert!(error.to_string().contains("--batch 0"), "{error}");
}

/// Seeded draws pick different references (so different scores), and the same seed gives the
/// same numbers again.
#[test]
fn seeded_draws() {
    let model = tiny_manifest();
    let dir = tempfile::tempdir().unwrap();
    let dataset = miniature(dir.path(), Layout::MvtecAd);
    let options = EvalOptions {
        shots: Some(1),
        seed: Some(10),
        draws: 3,
        validation_count: 3,
        ..EvalOptions::default()
    };
    let (reports, scores) = run(&model, &dataset, &options);
    assert_eq!(reports.len(), 3);
    for (d, report) in reports.iter().enumerate() {
        for c in &report.categories {
            assert_eq!(c.settings["seed"], 10 + d as u64);
            in_unit(c.image_auroc, "image AUROC");
        }
    }
    let of = |draw: usize, category: &str| -> Vec<f64> {
        scores
            .iter()
            .find(|(d, c, _)| *d == draw && c == category)
            .unwrap()
            .2
            .iter()
            .map(|s| s.score)
            .collect()
    };
    // 1 of 5 references per draw: draws with different references score differently, and
    // seeds 10, 11, 12 do not all pick the same image.
    for category in &dataset.categories {
        let refs: Vec<Vec<PathBuf>> = (0..3u64)
            .map(|d| {
                let protocol = Protocol {
                    shots: Some(1),
                    seed: Some(10 + d),
                    validation_count: 3,
                };
                references_and_validation(category, &protocol).unwrap().0
            })
            .collect();
        assert!(refs[0] != refs[1] || refs[1] != refs[2], "{refs:?}");
        for a in 0..3 {
            for b in a + 1..3 {
                assert_eq!(
                    of(a, &category.name) == of(b, &category.name),
                    refs[a] == refs[b],
                    "{}: draws {a} and {b}",
                    category.name
                );
            }
        }
    }

    let summary = summarise(&reports);
    let names: Vec<&str> = summary.iter().map(|s| s.category.as_str()).collect();
    assert_eq!(names, ["tile", "wood", "mean"]);
    for s in &summary {
        assert_eq!((s.draws, s.image_auroc.n), (3, 3), "{s:?}");
        in_unit(s.image_auroc.mean, "mean image AUROC");
        assert!(s.image_auroc.std.unwrap() >= 0.0);
    }

    // Seed 11 alone reproduces the second draw exactly.
    let again = EvalOptions {
        seed: Some(11),
        draws: 1,
        ..options
    };
    let (reports2, scores2) = run(&model, &dataset, &again);
    for category in ["tile", "wood"] {
        let s2: Vec<f64> = scores2
            .iter()
            .find(|(_, c, _)| c == category)
            .unwrap()
            .2
            .iter()
            .map(|s| s.score)
            .collect();
        assert_eq!(s2, of(1, category), "{category}");
    }
    for (a, b) in reports[1].categories.iter().zip(&reports2[0].categories) {
        assert_eq!(a.image_auroc, b.image_auroc);
        assert_eq!(a.image_f1_max, b.image_f1_max);
        assert_eq!(a.pixel, b.pixel);
    }
}

fn logsad(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_logsad"))
        .args(args)
        .output()
        .expect("running logsad")
}

/// The command on the plain miniature: table on stdout, report.json, ROC plot; several draws
/// add the mean ± std summary.
#[test]
fn command_on_plain_miniature() {
    let model = tiny_manifest();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("fabric");
    write_miniature(&root, Layout::Plain).unwrap();
    let out = dir.path().join("out");
    let (root_s, out_s, model_s) = (
        root.to_str().unwrap(),
        out.to_str().unwrap(),
        model.to_str().unwrap(),
    );
    // The plain miniature has 4 training images: 2 for validation leave 2 references.
    let output = logsad(&[
        "eval",
        "--shots",
        "2",
        "--validation-count",
        "2",
        "--model",
        model_s,
        "--out",
        out_s,
        root_s,
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("fabric"), "{stdout}");
    assert!(stdout.contains("mean"), "{stdout}");
    assert!(stdout.contains("image AUROC"), "{stdout}");
    assert!(!stdout.contains('±'), "one draw, no summary: {stdout}");
    // Two defect types: the per-type table follows, then the time split.
    assert!(stdout.contains("defect type"), "{stdout}");
    let scratch = stdout.lines().find(|l| l.contains("scratch")).unwrap();
    assert_eq!(
        scratch.split_whitespace().take(3).collect::<Vec<_>>(),
        ["fabric", "scratch", "6"]
    );
    assert!(stdout.contains("time per test image: model"), "{stdout}");

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["layout"], "plain");
    assert_eq!(json["model"], "tiny-dinov2-28x28-p14-d8-s0");
    assert_eq!(json["preset"], "faithful");
    assert_eq!(json["shots"], 2);
    let draws = json["draws"].as_array().unwrap();
    assert_eq!(draws.len(), 1);
    assert_eq!(draws[0]["seed"], serde_json::Value::Null);
    let c = &draws[0]["categories"][0];
    assert_eq!(c["category"], "fabric");
    assert_eq!(c["images"], 8);
    assert_eq!(c["anomalies"], 4);
    assert!(c["pixel"].is_null());
    assert!(c["image_auroc"].as_f64().is_some());
    let defects: Vec<(&str, u64)> = c["defects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["defect"].as_str().unwrap(), d["images"].as_u64().unwrap()))
        .collect();
    assert_eq!(defects, [("scratch", 6), ("stain", 6)]);
    assert_eq!(c["settings"]["references"], 2);
    assert_eq!(c["settings"]["validation_images"], 2);
    assert_eq!(draws[0]["mean"]["categories"], 1);
    assert_eq!(json["summary"][0]["category"], "fabric");
    assert_eq!(json["summary"][1]["category"], "mean");
    let png = out.join("roc_fabric.png");
    assert_eq!(image::image_dimensions(&png).unwrap(), (480, 480));

    // Two seeded draws of 1 reference each: per-draw tables and the summary.
    let out2 = dir.path().join("out2");
    let output = logsad(&[
        "eval",
        "--shots",
        "1",
        "--seed",
        "0",
        "--draws",
        "2",
        "--validation-count",
        "2",
        "--preset",
        "multiscale",
        "--resize",
        "letterbox",
        "--calibration",
        "median-mad",
        "--model",
        model_s,
        "--out",
        out2.to_str().unwrap(),
        root_s,
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("seed 0") && stdout.contains("seed 1"),
        "{stdout}"
    );
    assert!(
        stdout.contains("over 2 draws") && stdout.contains('±'),
        "{stdout}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out2.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["draws"].as_array().unwrap().len(), 2);
    assert_eq!(json["draws"][1]["seed"], 1);
    assert_eq!(json["summary"][0]["image_auroc"]["n"], 2);
    let detectors = &json["draws"][0]["categories"][0]["settings"]["detectors"];
    assert_eq!(detectors.as_array().unwrap().len(), 2, "{detectors}");
    for detector in detectors.as_array().unwrap() {
        assert_eq!(detector["tiling"]["resize"], "letterbox", "{detector}");
    }
    let settings = &json["draws"][0]["categories"][0]["settings"];
    assert_eq!(settings["calibration"], "median-mad");
}

/// The pooled-embedding branch survives a profile round trip: a reference image's pooled
/// features are in the bank, so its embedding distance is 0, and a different image's is not.
#[test]
fn embedding_branch_through_a_profile() {
    let model = tiny_manifest();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("fabric");
    write_miniature(&root, Layout::Plain).unwrap();
    let profile = dir.path().join("p.logsad");
    let good = |i: u32| root.join(format!("good/{i:03}.png")).display().to_string();
    let output = logsad(&[
        "enroll",
        "--preset",
        "multiscale-embedding",
        "--calibration",
        "median-mad",
        "--model",
        model.to_str().unwrap(),
        "--validation",
        &good(2),
        &good(3),
        "--out",
        profile.to_str().unwrap(),
        &good(0),
        &good(1),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let info = logsad(&["info", profile.to_str().unwrap()]);
    let header: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    let learned = |i: usize| &header["detectors"][i]["learned"];
    assert_eq!(learned(1)["kind"], "patch");
    assert_eq!(learned(1)["spec"]["name"], "embedding-global");
    assert_eq!(learned(1)["spec"]["pooling"], "mean");
    assert_eq!(learned(0)["spec"]["pooling"], "none");
    // Different pooling: a bank each.
    assert_eq!(
        (learned(0)["bank"].clone(), learned(1)["bank"].clone()),
        (0.into(), 1.into())
    );
    // Two validation scores: median = their mean, MAD = half their distance.
    for branch in header["detectors"].as_array().unwrap() {
        let calibration = &branch["calibration"];
        assert_eq!(calibration["method"], "median-mad");
        let scores: Vec<f64> = branch["validation_scores"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let (a, b) = (scores[0], scores[1]);
        let centre = calibration["mean"].as_f64().unwrap();
        let spread = calibration["std"].as_f64().unwrap();
        assert!((centre - (a + b) / 2.0).abs() < 1e-12, "{branch}");
        assert!((spread - (1.482_602_218_505_602 * (a - b).abs() / 2.0).max(1e-12)).abs() < 1e-12);
    }

    let defect = root.join("scratch/000.png").display().to_string();
    let output = logsad(&[
        "score",
        "--model",
        model.to_str().unwrap(),
        "--profile",
        profile.to_str().unwrap(),
        &good(0),
        &defect,
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let embedding = |line: &serde_json::Value| {
        line["detectors"]["embedding-global"]["score"]
            .as_f64()
            .unwrap()
    };
    assert!(embedding(&lines[0]).abs() < 1e-5, "{}", lines[0]);

    // Brute force: per stage, 1 - the largest cosine between the mean tokens of the defect
    // image and of each reference, averaged over the stages.
    let (mut extractor, _) =
        gstlogsad::inspector::Extractor::load(&model, &Default::default()).unwrap();
    let whole = gstlogsad::detect::tiling::Tiling::whole();
    let mut mean_tokens = |path: &str| {
        let image = gstlogsad::imageio::load_rgb(Path::new(path)).unwrap();
        let features = extractor.features(&image, &whole).unwrap().remove(0);
        features
            .tokens
            .iter()
            .map(|stage| {
                let cells = (stage.len() / features.dim) as f64;
                (0..features.dim)
                    .map(|d| {
                        let sum: f64 = stage
                            .iter()
                            .skip(d)
                            .step_by(features.dim)
                            .map(|&v| v as f64)
                            .sum();
                        sum / cells
                    })
                    .collect::<Vec<f64>>()
            })
            .collect::<Vec<_>>()
    };
    let cosine = |a: &[f64], b: &[f64]| {
        let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
        dot / (norm(a) * norm(b))
    };
    let query = mean_tokens(&defect);
    let references = [mean_tokens(&good(0)), mean_tokens(&good(1))];
    let expected = (0..query.len())
        .map(|stage| {
            let best = references
                .iter()
                .map(|r| cosine(&query[stage], &r[stage]))
                .fold(f64::NEG_INFINITY, f64::max);
            1.0 - best
        })
        .sum::<f64>()
        / query.len() as f64;
    assert!(
        expected > 1e-4,
        "the defect must differ from the references"
    );
    assert!(
        (embedding(&lines[1]) - expected).abs() < 1e-5,
        "{} vs brute force {expected}",
        lines[1]
    );
}

/// A root that does not exist fails with a message naming it; so does a bad option.
#[test]
fn command_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-dataset");
    let output = logsad(&[
        "eval",
        "--out",
        dir.path().to_str().unwrap(),
        missing.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains(missing.to_str().unwrap()), "{stderr}");

    let root = dir.path().join("plain");
    write_miniature(&root, Layout::Plain).unwrap();
    let output = logsad(&[
        "eval",
        "--draws",
        "3",
        "--out",
        dir.path().join("out").to_str().unwrap(),
        root.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("need a seed"), "{stderr}");
}

/// `logsad synth` writes an MVTec AD set with masks, and `logsad eval` measures region boxes
/// against its masks' components, one row per region setting.
#[test]
fn synthetic_set_and_region_boxes() {
    let model = tiny_manifest();
    let dir = tempfile::tempdir().unwrap();
    // Noise sources, large enough for the defects (96 px and up).
    let sources = dir.path().join("sources");
    std::fs::create_dir_all(&sources).unwrap();
    let mut seed = 7u32;
    for i in 0..12 {
        let image = image::RgbImage::from_fn(120, 100, |_, _| {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            image::Rgb([100 + (seed >> 27) as u8; 3])
        });
        image.save(sources.join(format!("s{i:02}.png"))).unwrap();
    }
    let root = dir.path().join("synth");
    let output = logsad(&[
        "synth",
        "--train",
        "4",
        "--per-kind",
        "2",
        "--category",
        "cloth",
        "--out",
        root.to_str().unwrap(),
        sources.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{output:?}");
    for kind in ["speck", "scratch", "stain"] {
        for name in ["0000", "0001"] {
            let mask = root.join(format!("cloth/ground_truth/{kind}/{name}_mask.png"));
            assert!(mask.is_file(), "{} missing", mask.display());
        }
    }

    let out = dir.path().join("out");
    let output = logsad(&[
        "eval",
        "--layout",
        "mvtec-ad",
        "--shots",
        "2",
        "--validation-count",
        "2",
        "--region-peak-fraction",
        "0,0.5",
        "--model",
        model.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        root.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(
        stdout.contains("region boxes against the masks"),
        "{stdout}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let boxes = json["draws"][0]["categories"][0]["boxes"]
        .as_array()
        .unwrap();
    assert_eq!(boxes.len(), 2, "{boxes:?}");
    for (b, fraction) in boxes.iter().zip([0.0, 0.5]) {
        assert_eq!(b["peak_fraction"].as_f64(), Some(fraction));
        assert_eq!(b["peak_scope"], "frame");
        assert_eq!(b["merge_overlapping"], true);
        // One connected defect per defective image: 3 kinds x 2 images.
        assert_eq!(b["components"], 6, "{b}");
        let iou = b["mean_iou"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&iou), "{b}");
        assert!(b["boxes_per_good_image"].as_f64().is_some(), "{b}");
    }

    let output = logsad(&[
        "eval",
        "--region-peak-fraction",
        "1.5",
        "--model",
        model.to_str().unwrap(),
        root.to_str().unwrap(),
    ]);
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("--region-peak-fraction 1.5"),
        "{output:?}"
    );
}

/// A reader that closes standard output before `logsad eval` prints its tables (`| head`)
/// ends the command quietly, and the report and ROC plot are written all the same.
#[test]
fn closed_stdout_keeps_the_report() {
    let model = tiny_manifest();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("fabric");
    write_miniature(&root, Layout::Plain).unwrap();
    let out = dir.path().join("out");
    let mut child = Command::new(env!("CARGO_BIN_EXE_logsad"))
        .args(["eval", "--shots", "2", "--validation-count", "2", "--model"])
        .arg(&model)
        .arg("--out")
        .arg(&out)
        .arg(&root)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Close the read end before the command writes anything.
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["draws"][0]["categories"][0]["category"], "fabric");
    assert!(out.join("roc_fabric.png").is_file());
}
