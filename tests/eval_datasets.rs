//! Dataset layouts of `gstlogsad::eval::dataset`: miniature datasets in each distributed
//! layout are written to a temporary folder, loaded, and checked exactly.

use std::fs;
use std::path::{Path, PathBuf};

use gstlogsad::eval::dataset::testing::{self, write_miniature};
use gstlogsad::eval::dataset::{
    detect_layout, load, references_and_validation, Category, Dataset, Layout, LoadOptions,
    Protocol, Sample, Split,
};

mod common;

fn rel(path: &Path, root: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or_else(|_| panic!("{} not under {}", path.display(), root.display()))
        .to_string_lossy()
        .replace('\\', "/")
}

fn rels(paths: &[PathBuf], root: &Path) -> Vec<String> {
    paths.iter().map(|p| rel(p, root)).collect()
}

/// (path, anomalous, defect, split, masks) of each test sample, paths relative to `root`.
type Row = (String, bool, String, Option<Split>, Vec<String>);

fn rows(samples: &[Sample], root: &Path) -> Vec<Row> {
    samples
        .iter()
        .map(|s| {
            (
                rel(&s.path, root),
                s.anomalous,
                s.defect.clone(),
                s.split,
                rels(&s.masks, root),
            )
        })
        .collect()
}

fn row(path: &str, anomalous: bool, defect: &str, split: Option<Split>, masks: &[&str]) -> Row {
    (
        path.to_string(),
        anomalous,
        defect.to_string(),
        split,
        masks.iter().map(|m| m.to_string()).collect(),
    )
}

fn numbered(prefix: &str, range: std::ops::Range<usize>, width: usize, ext: &str) -> Vec<String> {
    range
        .map(|i| format!("{prefix}{i:0width$}.{ext}"))
        .collect()
}

fn category_names(ds: &Dataset) -> Vec<&str> {
    ds.categories.iter().map(|c| c.name.as_str()).collect()
}

fn miniature(layout: Layout) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    write_miniature(&root, layout).unwrap();
    (dir, root)
}

fn load_all(root: &Path) -> Dataset {
    load(root, None, &LoadOptions::default()).unwrap()
}

fn err_string<T: std::fmt::Debug>(r: Result<T, impl std::fmt::Display>) -> String {
    r.unwrap_err().to_string()
}

// ---------------------------------------------------------------------------------------
// Detection

#[test]
fn detects_each_miniature_layout() {
    for layout in Layout::ALL {
        let (_dir, root) = miniature(layout);
        assert_eq!(detect_layout(&root).unwrap(), layout, "{layout}");
        assert_eq!(load_all(&root).layout, layout);
    }
}

#[test]
fn detects_mvtec_from_one_category_folder() {
    let (_dir, root) = miniature(Layout::MvtecAd);
    assert_eq!(detect_layout(&root.join("wood")).unwrap(), Layout::MvtecAd);
    let (_dir, root) = miniature(Layout::MvtecLoco);
    assert_eq!(
        detect_layout(&root.join("breakfast_box")).unwrap(),
        Layout::MvtecLoco
    );
}

#[test]
fn undetectable_layout_lists_what_was_looked_for() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("images")).unwrap();
    fs::write(dir.path().join("images/a.png"), b"").unwrap();
    let err = err_string(detect_layout(dir.path()));
    assert!(
        err.starts_with(&format!(
            "cannot detect the dataset layout of {}",
            dir.path().display()
        )),
        "{err}"
    );
    for needle in [
        "split_csv/1cls.csv",
        "train/good",
        "validation/good",
        "nominal",
        "plain",
    ] {
        assert!(err.contains(needle), "{needle} in {err}");
    }
}

#[test]
fn missing_root_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let err = err_string(load(&missing, None, &LoadOptions::default()));
    assert_eq!(
        err,
        format!("{}: missing folder (does not exist)", missing.display())
    );
    let err = err_string(detect_layout(&missing));
    assert!(err.contains("nope"), "{err}");
}

// ---------------------------------------------------------------------------------------
// MVTec AD

#[test]
fn mvtec_ad_structure() {
    let (_dir, root) = miniature(Layout::MvtecAd);
    let ds = load_all(&root);
    assert_eq!(ds.root, root);
    assert_eq!(category_names(&ds), ["tile", "wood"]);
    for c in &ds.categories {
        let n = &c.name;
        assert_eq!(
            rels(&c.train, &root),
            numbered(&format!("{n}/train/good/"), 0..testing::TRAIN, 3, "png")
        );
        assert!(c.validation.is_empty());
        let gt = |kind: &str, i: usize| format!("{n}/ground_truth/{kind}/{i:03}_mask.png");
        assert_eq!(
            rows(&c.test, &root),
            vec![
                row(
                    &format!("{n}/test/crack/000.png"),
                    true,
                    "crack",
                    None,
                    &[&gt("crack", 0)]
                ),
                row(
                    &format!("{n}/test/crack/001.png"),
                    true,
                    "crack",
                    None,
                    &[&gt("crack", 1)]
                ),
                row(&format!("{n}/test/good/000.png"), false, "good", None, &[]),
                row(&format!("{n}/test/good/001.png"), false, "good", None, &[]),
                row(
                    &format!("{n}/test/hole/000.png"),
                    true,
                    "hole",
                    None,
                    &[&gt("hole", 0)]
                ),
            ],
            "{n}"
        );
    }
}

#[test]
fn mvtec_ad_single_category_root_and_filter() {
    let (_dir, root) = miniature(Layout::MvtecAd);
    let one = load(&root.join("wood"), None, &LoadOptions::default()).unwrap();
    assert_eq!(category_names(&one), ["wood"]);
    assert_eq!(one.categories[0], load_all(&root).categories[1]);

    let opts = LoadOptions {
        categories: vec!["wood".into()],
        ..Default::default()
    };
    let ds = load(&root, Some(Layout::MvtecAd), &opts).unwrap();
    assert_eq!(category_names(&ds), ["wood"]);

    let opts = LoadOptions {
        categories: vec!["bottle".into()],
        ..Default::default()
    };
    let err = err_string(load(&root, None, &opts));
    assert_eq!(
        err,
        format!(
            "{}: no category 'bottle' (available: tile, wood)",
            root.display()
        )
    );
}

#[test]
fn mvtec_ad_missing_mask_leaves_the_list_empty() {
    let (_dir, root) = miniature(Layout::MvtecAd);
    fs::remove_file(root.join("tile/ground_truth/crack/001_mask.png")).unwrap();
    let ds = load_all(&root);
    let s = &ds.categories[0].test[1];
    assert_eq!(rel(&s.path, &root), "tile/test/crack/001.png");
    assert!(s.anomalous && s.masks.is_empty());
}

#[test]
fn mvtec_ad_ignores_non_image_files() {
    let (_dir, root) = miniature(Layout::MvtecAd);
    fs::write(root.join("tile/train/good/notes.txt"), "x").unwrap();
    fs::write(root.join("tile/train/good/.hidden.png"), "x").unwrap();
    fs::copy(
        root.join("tile/train/good/000.png"),
        root.join("tile/train/good/extra.PNG"),
    )
    .unwrap();
    let ds = load_all(&root);
    let train = rels(&ds.categories[0].train, &root);
    assert_eq!(train.len(), testing::TRAIN + 1);
    assert_eq!(train.last().unwrap(), "tile/train/good/extra.PNG");
}

#[test]
fn mvtec_broken_category_names_the_missing_folder() {
    let (_dir, root) = miniature(Layout::MvtecAd);
    fs::remove_dir_all(root.join("wood/train")).unwrap();
    // Detection still finds `tile`, loading complains about `wood`.
    assert_eq!(detect_layout(&root).unwrap(), Layout::MvtecAd);
    let err = err_string(load(&root, None, &LoadOptions::default()));
    assert_eq!(
        err,
        format!(
            "{}: missing folder (does not exist)",
            root.join("wood/train/good").display()
        )
    );

    // Loading a plain folder as MVTec AD.
    let (_dir, plain) = miniature(Layout::Plain);
    let err = err_string(load(&plain, Some(Layout::MvtecAd), &LoadOptions::default()));
    assert!(
        err.starts_with(&format!("{}: missing mvtec-ad category", plain.display())),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------
// MVTec LOCO

#[test]
fn mvtec_loco_structure() {
    let (_dir, root) = miniature(Layout::MvtecLoco);
    let ds = load_all(&root);
    assert_eq!(category_names(&ds), ["breakfast_box"]);
    let c = &ds.categories[0];
    let b = "breakfast_box";
    assert_eq!(
        rels(&c.train, &root),
        numbered(&format!("{b}/train/good/"), 0..testing::TRAIN, 3, "png")
    );
    assert_eq!(
        rels(&c.validation, &root),
        numbered(
            &format!("{b}/validation/good/"),
            0..testing::LOCO_VALIDATION,
            3,
            "png"
        )
    );
    let l = Some(Split::Logical);
    let s = Some(Split::Structural);
    assert_eq!(
        rows(&c.test, &root),
        vec![
            row(&format!("{b}/test/good/000.png"), false, "good", None, &[]),
            row(&format!("{b}/test/good/001.png"), false, "good", None, &[]),
            row(
                &format!("{b}/test/logical_anomalies/000.png"),
                true,
                "logical_anomalies",
                l,
                &[
                    &format!("{b}/ground_truth/logical_anomalies/000/000.png"),
                    &format!("{b}/ground_truth/logical_anomalies/000/001.png"),
                ],
            ),
            row(
                &format!("{b}/test/logical_anomalies/001.png"),
                true,
                "logical_anomalies",
                l,
                &[
                    &format!("{b}/ground_truth/logical_anomalies/001/000.png"),
                    &format!("{b}/ground_truth/logical_anomalies/001/001.png"),
                ],
            ),
            row(
                &format!("{b}/test/structural_anomalies/000.png"),
                true,
                "structural_anomalies",
                s,
                &[&format!(
                    "{b}/ground_truth/structural_anomalies/000/000.png"
                )],
            ),
            row(
                &format!("{b}/test/structural_anomalies/001.png"),
                true,
                "structural_anomalies",
                s,
                &[&format!(
                    "{b}/ground_truth/structural_anomalies/001/000.png"
                )],
            ),
        ]
    );
    // Good samples take part in both splits.
    let count = |split| c.test.iter().filter(|x| x.belongs_to(split)).count();
    assert_eq!(count(Split::Logical), 4);
    assert_eq!(count(Split::Structural), 4);
}

#[test]
fn mvtec_loco_uses_its_validation_folder() {
    let (_dir, root) = miniature(Layout::MvtecLoco);
    let c = &load_all(&root).categories[0];
    // validation_count is ignored when the dataset has a validation split.
    let full = Protocol {
        shots: None,
        seed: None,
        validation_count: 20,
    };
    let (refs, val) = references_and_validation(c, &full).unwrap();
    assert_eq!(refs, c.train);
    assert_eq!(val, c.validation);
    let k = Protocol {
        shots: Some(testing::TRAIN),
        ..full
    };
    assert_eq!(references_and_validation(c, &k).unwrap().0, c.train);
    let too_many = Protocol {
        shots: Some(testing::TRAIN + 1),
        ..full
    };
    let err = err_string(references_and_validation(c, &too_many));
    assert_eq!(
        err,
        "category 'breakfast_box': 9-shot needs 9 reference images but only 8 are available"
    );
}

#[test]
fn mvtec_loco_missing_validation_and_unknown_test_folder() {
    let (_dir, root) = miniature(Layout::MvtecLoco);
    fs::create_dir_all(root.join("breakfast_box/test/other")).unwrap();
    let err = err_string(load(&root, None, &LoadOptions::default()));
    assert!(
        err.starts_with(&root.join("breakfast_box/test/other").display().to_string()),
        "{err}"
    );
    assert!(err.contains("unexpected MVTec LOCO test folder"), "{err}");
    fs::remove_dir_all(root.join("breakfast_box/test/other")).unwrap();

    fs::remove_dir_all(root.join("breakfast_box/validation")).unwrap();
    // Without validation/good it is MVTec AD ...
    assert_eq!(detect_layout(&root).unwrap(), Layout::MvtecAd);
    // ... and loading it as MVTec LOCO names the missing folder.
    let err = err_string(load(
        &root,
        Some(Layout::MvtecLoco),
        &LoadOptions::default(),
    ));
    assert_eq!(
        err,
        format!(
            "{}: missing folder (does not exist)",
            root.join("breakfast_box/validation/good").display()
        )
    );
}

// ---------------------------------------------------------------------------------------
// VisA

#[test]
fn visa_structure() {
    let (_dir, root) = miniature(Layout::Visa);
    let ds = load_all(&root);
    assert_eq!(category_names(&ds), ["candle", "pcb1"]);
    for c in &ds.categories {
        let o = &c.name;
        assert_eq!(
            rels(&c.train, &root),
            numbered(
                &format!("{o}/Data/Images/Normal/"),
                0..testing::VISA_TRAIN,
                4,
                "JPG"
            )
        );
        assert!(c.validation.is_empty());
        let anomaly = |i: usize| {
            row(
                &format!("{o}/Data/Images/Anomaly/{i:03}.JPG"),
                true,
                "anomaly",
                None,
                &[&format!("{o}/Data/Masks/Anomaly/{i:03}.png")],
            )
        };
        let normal = |i: usize| {
            row(
                &format!("{o}/Data/Images/Normal/{i:04}.JPG"),
                false,
                "good",
                None,
                &[],
            )
        };
        let n = testing::VISA_TRAIN;
        assert_eq!(
            rows(&c.test, &root),
            vec![anomaly(0), anomaly(1), anomaly(2), normal(n), normal(n + 1)],
            "{o}"
        );
    }
}

fn rewrite_csv(root: &Path, f: impl FnOnce(String) -> String) {
    let path = root.join("split_csv/1cls.csv");
    let text = fs::read_to_string(&path).unwrap();
    fs::write(&path, f(text)).unwrap();
}

#[test]
fn visa_columns_by_name_with_quoting() {
    let (_dir, root) = miniature(Layout::Visa);
    let reference = load_all(&root);
    // Reorder the columns, add one, quote some fields, use CRLF line ends.
    rewrite_csv(&root, |text| {
        let mut out = String::from("\"image\",label,extra,object,mask,split\r\n");
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split(',').collect();
            out.push_str(&format!(
                "\"{}\",{},\"a, \"\"b\"\"\",{},{},{}\r\n",
                f[3], f[2], f[0], f[4], f[1]
            ));
        }
        out
    });
    assert_eq!(load_all(&root), reference);
}

#[test]
fn visa_missing_column_is_an_error() {
    let (_dir, root) = miniature(Layout::Visa);
    rewrite_csv(&root, |text| {
        text.replacen(
            "object,split,label,image,mask",
            "object,split,label,image",
            1,
        )
    });
    let err = err_string(load(&root, None, &LoadOptions::default()));
    assert_eq!(
        err,
        format!(
            "{}: missing column 'mask' (the header has: object,split,label,image)",
            root.join("split_csv/1cls.csv").display()
        )
    );
}

#[test]
fn visa_missing_listed_mask_or_image_is_an_error() {
    let (_dir, root) = miniature(Layout::Visa);
    fs::remove_file(root.join("candle/Data/Masks/Anomaly/001.png")).unwrap();
    let err = err_string(load(&root, None, &LoadOptions::default()));
    let csv = root.join("split_csv/1cls.csv");
    // pcb1 has 8 + 3 rows, then candle's 8 normal rows: the mask of anomaly 001 is on line 22.
    assert_eq!(
        err,
        format!(
            "{}: listed in {} (line 22) but does not exist",
            root.join("candle/Data/Masks/Anomaly/001.png").display(),
            csv.display()
        )
    );

    let (_dir, root) = miniature(Layout::Visa);
    fs::remove_file(root.join("pcb1/Data/Images/Normal/0000.JPG")).unwrap();
    let err = err_string(load(&root, None, &LoadOptions::default()));
    assert!(
        err.starts_with(
            &root
                .join("pcb1/Data/Images/Normal/0000.JPG")
                .display()
                .to_string()
        ),
        "{err}"
    );
    assert!(err.ends_with("but does not exist"), "{err}");
}

#[test]
fn visa_bad_values_are_errors_with_line_numbers() {
    let (_dir, root) = miniature(Layout::Visa);
    rewrite_csv(&root, |text| {
        text.replacen(",test,anomaly,", ",test,broken,", 1)
    });
    let err = err_string(load(&root, None, &LoadOptions::default()));
    let csv = root.join("split_csv/1cls.csv").display().to_string();
    assert_eq!(
        err,
        format!("{csv}, line 10: label 'broken' (expected normal or anomaly)")
    );

    let (_dir, root) = miniature(Layout::Visa);
    rewrite_csv(&root, |text| text.replacen(",train,", ",val,", 1));
    let err = err_string(load(&root, None, &LoadOptions::default()));
    assert!(
        err.ends_with("split 'val' (expected train or test)"),
        "{err}"
    );

    let (_dir, root) = miniature(Layout::Visa);
    rewrite_csv(&root, |text| text + "candle,test\n");
    let err = err_string(load(&root, None, &LoadOptions::default()));
    assert!(err.contains("line 24: 2 fields, expected 5"), "{err}");

    let (_dir, root) = miniature(Layout::Visa);
    rewrite_csv(&root, |text| text + "candle,test,normal,\"unterminated\n");
    let err = err_string(load(&root, None, &LoadOptions::default()));
    assert!(err.contains("line 24: unterminated quoted field"), "{err}");
}

#[test]
fn visa_category_filter() {
    let (_dir, root) = miniature(Layout::Visa);
    let opts = LoadOptions {
        categories: vec!["pcb1".into()],
        ..Default::default()
    };
    let ds = load(&root, Some(Layout::Visa), &opts).unwrap();
    assert_eq!(category_names(&ds), ["pcb1"]);
    let opts = LoadOptions {
        categories: vec!["fryum".into()],
        ..Default::default()
    };
    assert!(err_string(load(&root, None, &opts))
        .ends_with("no category 'fryum' (available: candle, pcb1)"));
}

// ---------------------------------------------------------------------------------------
// Plain

#[test]
fn plain_structure_and_half_split() {
    let (_dir, root) = miniature(Layout::Plain);
    let ds = load_all(&root);
    assert_eq!(category_names(&ds), ["data"]);
    let c = &ds.categories[0];
    let half = testing::TRAIN / 2;
    assert_eq!(rels(&c.train, &root), numbered("good/", 0..half, 3, "png"));
    assert!(c.validation.is_empty());
    let mut expected: Vec<Row> = numbered("good/", half..testing::TRAIN, 3, "png")
        .iter()
        .map(|p| row(p, false, "good", None, &[]))
        .collect();
    for kind in ["scratch", "stain"] {
        for i in 0..2 {
            expected.push(row(&format!("{kind}/{i:03}.png"), true, kind, None, &[]));
        }
    }
    assert_eq!(rows(&c.test, &root), expected);
}

#[test]
fn plain_odd_count_gives_train_the_larger_half() {
    let (_dir, root) = miniature(Layout::Plain);
    fs::remove_file(root.join("good/007.png")).unwrap();
    let c = &load_all(&root).categories[0];
    assert_eq!(rels(&c.train, &root), numbered("good/", 0..4, 3, "png"));
    assert_eq!(c.test.iter().filter(|s| !s.anomalous).count(), 3);
}

#[test]
fn plain_good_folder_names() {
    let (_dir, root) = miniature(Layout::Plain);
    // Case-insensitive default names.
    fs::rename(root.join("good"), root.join("Nominal")).unwrap();
    let ds = load_all(&root);
    assert_eq!(rels(&ds.categories[0].train, &root)[0], "Nominal/000.png");
    assert_eq!(
        ds.categories[0].test.iter().filter(|s| s.anomalous).count(),
        4
    );

    // A custom good folder is needed for detection and loading.
    fs::rename(root.join("Nominal"), root.join("pass")).unwrap();
    assert!(detect_layout(&root).is_err());
    let err = err_string(load(&root, Some(Layout::Plain), &LoadOptions::default()));
    assert!(
        err.starts_with(&format!("{}: missing plain dataset", root.display())),
        "{err}"
    );
    assert!(err.contains("good, nominal, normal, ok"), "{err}");
    let opts = LoadOptions {
        good_folder: Some("PASS".into()),
        ..Default::default()
    };
    let ds = load(&root, None, &opts).unwrap();
    assert_eq!(ds.layout, Layout::Plain);
    assert_eq!(rels(&ds.categories[0].train, &root)[0], "pass/000.png");
    let opts = LoadOptions {
        good_folder: Some("fine".into()),
        ..Default::default()
    };
    assert!(err_string(load(&root, Some(Layout::Plain), &opts)).contains("good folder ('fine')"));
}

#[test]
fn plain_sub_roots_give_one_category_each() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("sets");
    write_miniature(&root.join("fabric"), Layout::Plain).unwrap();
    write_miniature(&root.join("carpet"), Layout::Plain).unwrap();
    fs::remove_dir_all(root.join("carpet/stain")).unwrap();
    assert_eq!(detect_layout(&root).unwrap(), Layout::Plain);
    let ds = load_all(&root);
    assert_eq!(category_names(&ds), ["carpet", "fabric"]);
    assert_eq!(ds.categories[0].test.len(), testing::TRAIN / 2 + 2);
    assert_eq!(ds.categories[1].test.len(), testing::TRAIN / 2 + 4);
    assert_eq!(
        rel(&ds.categories[0].train[0], &root),
        "carpet/good/000.png"
    );

    // A sub-folder that is not of that shape: not a plain dataset.
    fs::create_dir_all(root.join("notes")).unwrap();
    assert!(detect_layout(&root).is_err());
}

#[test]
fn plain_protocol_takes_validation_from_the_train_half() {
    let (_dir, root) = miniature(Layout::Plain);
    let c = &load_all(&root).categories[0];
    let p = Protocol {
        shots: None,
        seed: None,
        validation_count: 2,
    };
    let (refs, val) = references_and_validation(c, &p).unwrap();
    assert_eq!(rels(&refs, &root), ["good/000.png", "good/001.png"]);
    assert_eq!(rels(&val, &root), ["good/002.png", "good/003.png"]);
    let err = err_string(references_and_validation(c, &Protocol::default()));
    assert_eq!(
        err,
        "category 'data': 4 training image(s): taking the last 20 for validation leaves none for references"
    );
}

/// The textile set of the project (`make deps` fetches it): 1000 nominal, 500 local, 500 global.
#[test]
fn textile_set() {
    let root = common::require_textile();
    assert_eq!(detect_layout(&root).unwrap(), Layout::Plain);
    let ds = load_all(&root);
    assert_eq!(category_names(&ds), ["textile"]);
    let c: &Category = &ds.categories[0];
    assert_eq!(c.train.len(), 500);
    assert_eq!(rel(&c.train[0], &root), "nominal/textile_0001.jpg");
    let count = |d: &str| c.test.iter().filter(|s| s.defect == d).count();
    assert_eq!(
        (count("good"), count("local"), count("global")),
        (500, 500, 500)
    );
    assert_eq!(c.test.len(), 1500);
}

// ---------------------------------------------------------------------------------------
// Protocol

#[test]
fn protocol_k_shot_rules_on_a_loaded_category() {
    let (_dir, root) = miniature(Layout::MvtecAd);
    let c = &load_all(&root).categories[0];
    let pool = &c.train[..testing::TRAIN - 3];
    let first = Protocol {
        shots: Some(2),
        seed: None,
        validation_count: 3,
    };
    let (refs, val) = references_and_validation(c, &first).unwrap();
    assert_eq!(refs, pool[..2].to_vec());
    assert_eq!(val, c.train[testing::TRAIN - 3..].to_vec());

    let seeded = Protocol {
        seed: Some(42),
        ..first
    };
    let (a, val_a) = references_and_validation(c, &seeded).unwrap();
    assert_eq!(val_a, val);
    assert_eq!(a, references_and_validation(c, &seeded).unwrap().0);
    assert_eq!(a.len(), 2);
    assert!(a[0] < a[1] && a.iter().all(|p| pool.contains(p)), "{a:?}");

    let too_many = Protocol {
        shots: Some(6),
        ..first
    };
    assert_eq!(
        err_string(references_and_validation(c, &too_many)),
        "category 'tile': 6-shot needs 6 reference images but only 5 are available \
         (8 training images minus 3 for validation)"
    );
}

// ---------------------------------------------------------------------------------------
// Miniature images

#[test]
fn miniature_images_and_masks() {
    let (_dir, root) = miniature(Layout::MvtecAd);
    let good = image::open(root.join("tile/train/good/000.png")).unwrap();
    assert_eq!((good.width(), good.height()), (32, 32));
    assert_eq!(good.color(), image::ColorType::Rgb8);
    let good = good.to_rgb8();
    let (lo, hi) = good
        .pixels()
        .fold((255u8, 0u8), |(lo, hi), p| (lo.min(p[0]), hi.max(p[0])));
    assert!(
        lo >= 100 && hi <= 140 && hi > lo,
        "near-uniform texture: {lo}..{hi}"
    );

    let bad = image::open(root.join("tile/test/crack/000.png"))
        .unwrap()
        .to_rgb8();
    let mask = image::open(root.join("tile/ground_truth/crack/000_mask.png"))
        .unwrap()
        .to_luma8();
    assert_eq!(mask.dimensions(), (32, 32));
    let marked = mask.pixels().filter(|p| p[0] == 255).count();
    assert_eq!(marked, 64, "an 8x8 square");
    assert!(mask.pixels().all(|p| p[0] == 0 || p[0] == 255));
    for (x, y, m) in mask.enumerate_pixels() {
        let bright = bad.get_pixel(x, y)[0] > 200;
        assert_eq!(bright, m[0] == 255, "pixel {x},{y}");
    }

    // VisA images are JPEG.
    let (_dir, root) = miniature(Layout::Visa);
    let bytes = fs::read(root.join("candle/Data/Images/Normal/0000.JPG")).unwrap();
    assert_eq!(&bytes[..2], &[0xFF, 0xD8]);
}
