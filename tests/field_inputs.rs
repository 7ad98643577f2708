//! Files that real lines produce, through `gstlogsad::imageio` and the built `logsad` command:
//! EXIF orientation (all 8 values), a JPEG cut short, content and extension that disagree, an
//! empty file, and a reader that closes the output pipe early. Every file is made at test time
//! from the textile images of `make deps` or from synthetic pixels.
//!
//! Needs the tiny model and the textile images of `make deps`; the tests fail naming what is
//! missing without them.

use std::io::{BufRead, BufReader, Cursor};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use gstlogsad::enroll::{enroll, EnrollOptions};
use gstlogsad::imageio;
use image::{DynamicImage, ImageFormat, Luma, RgbImage};

mod common;
use common::{require_textile_nominal, tiny_manifest};

/// The nominal textile JPEGs (250x250, about 21 KB each), sorted; fails the test without them.
fn textile() -> Vec<PathBuf> {
    require_textile_nominal(8)
}

fn logsad(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_logsad"))
        .args(args)
        .output()
        .expect("running logsad")
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A profile of the tiny model from textile images 1-2 (references) and 3-4 (validation),
/// enrolled through the library.
fn profile(dir: &Path, model: &Path, textile: &[PathBuf]) -> PathBuf {
    let (profile, _) = enroll(
        model,
        &textile[0..2],
        &textile[2..4],
        &EnrollOptions::default(),
        &mut |_, _, _| {},
    )
    .unwrap();
    let path = dir.join("textile.logsad");
    profile.save(&path).unwrap();
    path
}

/// The JSON lines `logsad score` printed.
fn json_lines(output: &Output) -> Vec<serde_json::Value> {
    String::from_utf8(output.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn score_of(line: &serde_json::Value) -> f64 {
    line["score"]
        .as_f64()
        .unwrap_or_else(|| panic!("no score: {line}"))
}

fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, format).unwrap();
    out.into_inner()
}

// ---------------------------------------------------------------------------------------------
// EXIF, written by hand
// ---------------------------------------------------------------------------------------------

/// A TIFF structure (as EXIF holds it) with one IFD entry: Orientation (tag 0x0112, SHORT, 1
/// value). `big_endian` picks "MM" or "II" byte order.
fn tiff_orientation(orientation: u16, big_endian: bool) -> Vec<u8> {
    let u16b = |v: u16| {
        if big_endian {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    };
    let u32b = |v: u32| {
        if big_endian {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    };
    let mut t = Vec::new();
    t.extend_from_slice(if big_endian { b"MM" } else { b"II" });
    t.extend_from_slice(&u16b(42));
    t.extend_from_slice(&u32b(8)); // offset of IFD0
    t.extend_from_slice(&u16b(1)); // one entry
    t.extend_from_slice(&u16b(0x0112)); // Orientation
    t.extend_from_slice(&u16b(3)); // SHORT
    t.extend_from_slice(&u32b(1)); // one value
    t.extend_from_slice(&u16b(orientation));
    t.extend_from_slice(&[0, 0]); // the value field is 4 bytes
    t.extend_from_slice(&u32b(0)); // no next IFD
    t
}

/// `jpeg` with an APP1 "Exif" segment holding `orientation` right after SOI.
fn jpeg_with_orientation(jpeg: &[u8], orientation: u16, big_endian: bool) -> Vec<u8> {
    assert_eq!(&jpeg[..2], [0xff, 0xd8]);
    let mut payload = b"Exif\0\0".to_vec();
    payload.extend(tiff_orientation(orientation, big_endian));
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xff, 0xe1]);
    out.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
    out.extend(payload);
    out.extend_from_slice(&jpeg[2..]);
    out
}

/// `png` with an eXIf chunk holding `orientation` right after IHDR (before IDAT, as the PNG
/// rules ask).
fn png_with_orientation(png: &[u8], orientation: u16, big_endian: bool) -> Vec<u8> {
    // Signature (8) + IHDR (4 length + 4 type + 13 data + 4 CRC).
    let after_ihdr = 8 + 25;
    assert_eq!(&png[12..16], b"IHDR");
    let data = tiff_orientation(orientation, big_endian);
    let mut chunk = (data.len() as u32).to_be_bytes().to_vec();
    let mut typed = b"eXIf".to_vec();
    typed.extend(&data);
    chunk.extend(&typed);
    chunk.extend_from_slice(&crc32fast::hash(&typed).to_be_bytes());
    let mut out = png[..after_ihdr].to_vec();
    out.extend(chunk);
    out.extend_from_slice(&png[after_ihdr..]);
    out
}

/// The 90-degree clockwise turn, by hand: the top row of the result is the left column of the
/// original read bottom-up.
fn clockwise(image: &RgbImage) -> RgbImage {
    let (w, h) = image.dimensions();
    RgbImage::from_fn(h, w, |x, y| *image.get_pixel(y, h - 1 - x))
}

/// A textile JPEG tagged with orientation 6 decodes as the clockwise turn of the same file
/// without the tag, pixel for pixel, and scores as the image whose pixels really are turned.
#[test]
fn exif_orientation_6_is_the_clockwise_quarter_turn() {
    let model = tiny_manifest();
    let textile = textile();
    let dir = tempfile::tempdir().unwrap();
    // 200 wide, 250 high, as a portrait phone photo: the turn changes the shape too.
    let upright = image::open(&textile[6]).unwrap().crop_imm(0, 0, 200, 250);
    let plain_jpeg = encode(&upright, ImageFormat::Jpeg);
    let plain = dir.path().join("plain.jpg");
    std::fs::write(&plain, &plain_jpeg).unwrap();
    let tagged = dir.path().join("orientation-6.jpg");
    std::fs::write(&tagged, jpeg_with_orientation(&plain_jpeg, 6, true)).unwrap();

    let stored = imageio::load(&plain).unwrap().into_rgb8();
    assert_eq!(stored.dimensions(), (200, 250));
    let shown = imageio::load(&tagged).unwrap().into_rgb8();
    assert_eq!(shown.dimensions(), (250, 200));
    assert!(
        shown == clockwise(&stored),
        "pixels differ from the hand-made turn"
    );
    assert_eq!(imageio::dimensions(&tagged).unwrap(), (250, 200));

    // The really turned pixels, stored losslessly.
    let turned = dir.path().join("turned.png");
    std::fs::write(
        &turned,
        encode(
            &DynamicImage::ImageRgb8(clockwise(&stored)),
            ImageFormat::Png,
        ),
    )
    .unwrap();
    let profile = profile(dir.path(), &model, &textile);
    let output = logsad(&[
        "score",
        "--model",
        s(&model),
        "--profile",
        s(&profile),
        s(&tagged),
        s(&turned),
        s(&plain),
    ]);
    assert!(output.status.success(), "{output:?}");
    let lines = json_lines(&output);
    assert_eq!(lines.len(), 3);
    assert_eq!(score_of(&lines[0]), score_of(&lines[1]));
    // The turn matters to the model, so the test would see the tag ignored.
    assert_ne!(score_of(&lines[0]), score_of(&lines[2]));
}

/// All 8 EXIF orientations on a 3x2 grey image, against the hand-worked pixel order. Stored:
/// ```text
/// a b c
/// d e f
/// ```
#[test]
fn every_exif_orientation_on_an_asymmetric_image() {
    let [a, b, c, d, e, f] = [10u8, 20, 30, 40, 50, 60];
    let stored = image::GrayImage::from_fn(3, 2, |x, y| {
        Luma([[[a, b, c], [d, e, f]][y as usize][x as usize]])
    });
    let png = encode(&DynamicImage::ImageLuma8(stored), ImageFormat::Png);
    // (orientation, width, height, pixels row by row as a viewer shows them)
    let cases: [(u16, u32, u32, [u8; 6]); 8] = [
        (1, 3, 2, [a, b, c, d, e, f]), // as stored
        (2, 3, 2, [c, b, a, f, e, d]), // mirrored left-right
        (3, 3, 2, [f, e, d, c, b, a]), // turned 180 degrees
        (4, 3, 2, [d, e, f, a, b, c]), // mirrored top-bottom
        (5, 2, 3, [a, d, b, e, c, f]), // transposed (mirrored about the main diagonal)
        (6, 2, 3, [d, a, e, b, f, c]), // turned 90 degrees clockwise
        (7, 2, 3, [f, c, e, b, d, a]), // transversed (mirrored about the other diagonal)
        (8, 2, 3, [c, f, b, e, a, d]), // turned 90 degrees counter-clockwise
    ];
    let dir = tempfile::tempdir().unwrap();
    for (orientation, w, h, pixels) in cases {
        for big_endian in [true, false] {
            let path = dir.path().join(format!("o{orientation}-{big_endian}.png"));
            std::fs::write(&path, png_with_orientation(&png, orientation, big_endian)).unwrap();
            let shown = imageio::load(&path).unwrap().into_luma8();
            assert_eq!(shown.dimensions(), (w, h), "orientation {orientation}");
            assert_eq!(shown.as_raw()[..], pixels, "orientation {orientation}");
            assert_eq!(imageio::dimensions(&path).unwrap(), (w, h));
        }
    }
}

/// The first 4,000 bytes of a textile JPEG: the loader names it as truncated, `score` goes on
/// with the other files and exits non-zero with the count, `enroll` refuses it by name.
#[test]
fn truncated_jpeg() {
    let model = tiny_manifest();
    let textile = textile();
    let dir = tempfile::tempdir().unwrap();
    let whole = std::fs::read(&textile[5]).unwrap();
    assert!(whole.len() > 8_000, "{} bytes", whole.len());
    let cut = dir.path().join("cut.jpg");
    std::fs::write(&cut, &whole[..4_000]).unwrap();

    let error = imageio::load(&cut).unwrap_err();
    assert_eq!(error.kind(), "truncated", "{error}");
    assert_eq!(error.path(), cut);
    assert_eq!(
        error.to_string(),
        format!(
            "{}: truncated JPEG: the file ends after 4000 bytes, inside the scan data, before \
             the end-of-image marker",
            cut.display()
        )
    );

    let profile = profile(dir.path(), &model, &textile);
    let output = logsad(&[
        "score",
        "--model",
        s(&model),
        "--profile",
        s(&profile),
        s(&textile[6]),
        s(&cut),
        s(&textile[7]),
    ]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let lines = json_lines(&output);
    assert_eq!(lines.len(), 3);
    assert!(score_of(&lines[0]).is_finite());
    assert_eq!(lines[1]["path"], s(&cut));
    assert_eq!(lines[1]["error"]["kind"], "truncated");
    assert_eq!(lines[1]["error"]["message"], error.to_string());
    assert!(lines[1].get("score").is_none());
    assert_eq!(lines[2]["path"], s(&textile[7]));
    assert!(score_of(&lines[2]).is_finite());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("error: 1 of 3 images could not be read"),
        "{stderr}"
    );

    // As a validation image and as a reference image.
    let out = dir.path().join("refused.logsad");
    for (references, validation) in [
        (vec![&textile[0]], vec![&textile[2], &cut]),
        (vec![&cut], vec![&textile[2], &textile[3]]),
    ] {
        let mut args = vec!["enroll", "--model", s(&model), "--out", s(&out)];
        args.push("--validation");
        args.extend(validation.iter().map(|p| s(p)));
        args.push("--");
        args.extend(references.iter().map(|p| s(p)));
        let output = logsad(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains(&format!("error: {}: truncated JPEG", cut.display())),
            "{stderr}"
        );
        assert!(!out.exists(), "no profile is written");
    }
}

/// A JPEG named `.png` and a PNG named `.jpg` decode by content, through the loader and the
/// command (as files given by name and inside a folder).
#[test]
fn content_decides_the_format() {
    let model = tiny_manifest();
    let textile = textile();
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let jpeg_as_png = images.join("a-jpeg.png");
    std::fs::copy(&textile[4], &jpeg_as_png).unwrap();
    let png_as_jpg = images.join("b-png.jpg");
    let decoded = image::open(&textile[5]).unwrap();
    std::fs::write(&png_as_jpg, encode(&decoded, ImageFormat::Png)).unwrap();

    assert_eq!(
        imageio::load(&jpeg_as_png).unwrap(),
        imageio::load(&textile[4]).unwrap()
    );
    assert_eq!(imageio::load(&png_as_jpg).unwrap(), decoded);

    let profile = profile(dir.path(), &model, &textile);
    let score = |inputs: &[&Path]| {
        let mut args = vec!["score", "--model", s(&model), "--profile", s(&profile)];
        args.extend(inputs.iter().map(|p| s(p)));
        let output = logsad(&args);
        assert!(output.status.success(), "{output:?}");
        json_lines(&output)
    };
    let named = score(&[&jpeg_as_png, &png_as_jpg, &textile[4], &textile[5]]);
    assert_eq!(score_of(&named[0]), score_of(&named[2]));
    assert_eq!(score_of(&named[1]), score_of(&named[3]));
    let listed = score(&[&images]);
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0]["path"], s(&jpeg_as_png));
    assert_eq!(score_of(&listed[0]), score_of(&named[0]));
    assert_eq!(score_of(&listed[1]), score_of(&named[1]));
}

/// An empty file in a folder is named as empty, and the files after it are still scored, with
/// the scores they get on their own.
#[test]
fn empty_file_in_a_folder() {
    let model = tiny_manifest();
    let textile = textile();
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    std::fs::copy(&textile[4], images.join("1.jpg")).unwrap();
    std::fs::write(images.join("2.png"), b"").unwrap();
    std::fs::copy(&textile[5], images.join("3.jpg")).unwrap();
    std::fs::copy(&textile[6], images.join("4.jpg")).unwrap();
    std::fs::write(images.join("5.png"), b"not an image").unwrap();

    let profile = profile(dir.path(), &model, &textile);
    let score = |input: &Path| {
        logsad(&[
            "score",
            "--model",
            s(&model),
            "--profile",
            s(&profile),
            s(input),
        ])
    };
    let output = score(&images);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let lines = json_lines(&output);
    let paths: Vec<&str> = lines.iter().map(|l| l["path"].as_str().unwrap()).collect();
    let expected: Vec<String> = ["1.jpg", "2.png", "3.jpg", "4.jpg", "5.png"]
        .iter()
        .map(|n| images.join(n).display().to_string())
        .collect();
    assert_eq!(paths, expected);
    assert_eq!(lines[1]["error"]["kind"], "empty");
    assert_eq!(
        lines[1]["error"]["message"],
        format!("{}: empty file (0 bytes)", images.join("2.png").display())
    );
    assert_eq!(lines[4]["error"]["kind"], "unknown-format");
    for (i, source) in [(0, &textile[4]), (2, &textile[5]), (3, &textile[6])] {
        let alone = json_lines(&score(source));
        assert_eq!(score_of(&lines[i]), score_of(&alone[0]), "{}", paths[i]);
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("error: 2 of 5 images could not be read"),
        "{stderr}"
    );
}

/// `logsad score DIR | head -1`: the reader closes the pipe after the first line; the command
/// stops quietly with exit status 0.
#[test]
fn closed_pipe_ends_quietly() {
    let model = tiny_manifest();
    let textile = textile();
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    // More output than a pipe holds (64 KiB on Linux), so the command must write after the
    // reader has gone: 300 lines of well over 256 bytes (long names).
    let tile = DynamicImage::ImageRgb8(RgbImage::from_fn(8, 8, |x, y| {
        image::Rgb([(x * 30) as u8, (y * 30) as u8, 90])
    }));
    let bytes = encode(&tile, ImageFormat::Png);
    let long = "x".repeat(200);
    for i in 0..300 {
        std::fs::write(images.join(format!("{i:03}-{long}.png")), &bytes).unwrap();
    }
    let profile = profile(dir.path(), &model, &textile);
    let mut child = Command::new(env!("CARGO_BIN_EXE_logsad"))
        .args(["score", "--model", s(&model), "--profile", s(&profile)])
        .arg(&images)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    reader.read_line(&mut first).unwrap();
    let line: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert!(score_of(&line).is_finite());
    assert!(first.len() > 256, "{} bytes", first.len());
    drop(reader);
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("Broken pipe"), "{stderr}");
    assert!(!stderr.contains("error"), "{stderr}");
    assert_eq!(output.status.code(), Some(0), "{stderr}");
}

/// `logsad eval` leaves unreadable test images out, lists them in report.json, names them on
/// standard error, and exits non-zero with the count after writing its report.
#[test]
fn eval_leaves_out_unreadable_test_images() {
    let model = tiny_manifest();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("fabric");
    gstlogsad::eval::dataset::testing::write_miniature(
        &root,
        gstlogsad::eval::dataset::Layout::Plain,
    )
    .unwrap();
    let empty = root.join("scratch/009.png");
    std::fs::write(&empty, b"").unwrap();
    let cut = root.join("stain/009.png");
    let whole = std::fs::read(root.join("stain/000.png")).unwrap();
    std::fs::write(&cut, &whole[..whole.len() / 2]).unwrap();
    let out = dir.path().join("out");
    let output = logsad(&[
        "eval",
        "--shots",
        "2",
        "--validation-count",
        "2",
        "--model",
        s(&model),
        "--out",
        s(&out),
        s(&root),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "error: {}: empty file (0 bytes) (left out)",
            empty.display()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("error: {}: truncated PNG", cut.display())),
        "{stderr}"
    );
    // The miniature's 8 test images and the 2 added.
    assert!(
        stderr.contains("error: 2 of 10 test images could not be read"),
        "{stderr}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let category = &json["draws"][0]["categories"][0];
    assert_eq!(category["images"], 8, "the unreadable images are left out");
    let unreadable = category["settings"]["unreadable"].as_array().unwrap();
    let listed: Vec<(&str, &str)> = unreadable
        .iter()
        .map(|u| (u["path"].as_str().unwrap(), u["kind"].as_str().unwrap()))
        .collect();
    assert_eq!(
        listed,
        [(s(&empty), "empty"), (s(&cut), "truncated")],
        "in path order"
    );
}

/// Runs `logsad` with `args`, killing it after `seconds`: a hang fails the test instead of
/// stopping the suite.
fn logsad_within(args: &[&str], seconds: u64) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_logsad"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running logsad");
    let pid = child.id();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(child.wait_with_output());
    });
    match receiver.recv_timeout(std::time::Duration::from_secs(seconds)) {
        Ok(output) => output.expect("waiting for logsad"),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("logsad {args:?} hung for {seconds} s");
        }
    }
}

/// Makes, in `dir`, the special files a folder of images can hold: a named pipe, a dangling
/// link and a link loop, each with an image extension; returns (file name, what the loader
/// says it is).
fn special_files(dir: &Path) -> Vec<(&'static str, &'static str)> {
    let fifo = std::ffi::CString::new(dir.join("2-pipe.png").to_str().unwrap()).unwrap();
    // SAFETY: `fifo` is a valid NUL-terminated path for the duration of the call.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0, "mkfifo");
    std::os::unix::fs::symlink(dir.join("gone.png"), dir.join("3-dangling.png")).unwrap();
    std::os::unix::fs::symlink(dir.join("4-loop.png"), dir.join("5-loop.png")).unwrap();
    std::os::unix::fs::symlink(dir.join("5-loop.png"), dir.join("4-loop.png")).unwrap();
    vec![
        ("2-pipe.png", "a named pipe (FIFO)"),
        (
            "3-dangling.png",
            "a dangling symbolic link (its target does not exist)",
        ),
        ("4-loop.png", "a symbolic link loop"),
        ("5-loop.png", "a symbolic link loop"),
    ]
}

/// A named pipe, a dangling link and a link loop in a folder: `logsad score` neither hangs nor
/// skips them silently, but gives each an error line naming what it is, scores the others and
/// exits with status 1.
#[test]
fn special_files_in_a_folder_are_named_not_opened() {
    let model = tiny_manifest();
    let textile = textile();
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    std::fs::copy(&textile[4], images.join("1.jpg")).unwrap();
    let special = special_files(&images);
    let profile = profile(dir.path(), &model, &textile);
    let output = logsad_within(
        &[
            "score",
            "--model",
            s(&model),
            "--profile",
            s(&profile),
            s(&images),
        ],
        120,
    );
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let lines = json_lines(&output);
    assert_eq!(lines.len(), 5, "{lines:?}");
    assert!(score_of(&lines[0]).is_finite());
    for ((name, what), line) in special.iter().zip(&lines[1..]) {
        let path = images.join(name);
        assert_eq!(line["path"], path.display().to_string());
        assert_eq!(line["error"]["kind"], "not-a-file", "{name}");
        assert_eq!(
            line["error"]["message"],
            format!("{}: not an image file: {what}", path.display())
        );
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("error: 4 of 5 images could not be read"),
        "{stderr}"
    );
}

/// The same special files among the test images of `logsad eval`: each is left out, named on
/// standard error and listed in report.json; no hang.
#[test]
fn eval_names_special_files_it_leaves_out() {
    let model = tiny_manifest();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("fabric");
    gstlogsad::eval::dataset::testing::write_miniature(
        &root,
        gstlogsad::eval::dataset::Layout::Plain,
    )
    .unwrap();
    let special = special_files(&root.join("scratch"));
    let out = dir.path().join("out");
    let output = logsad_within(
        &[
            "eval",
            "--shots",
            "2",
            "--validation-count",
            "2",
            "--model",
            s(&model),
            "--out",
            s(&out),
            s(&root),
        ],
        300,
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    for (name, what) in &special {
        let path = root.join("scratch").join(name);
        assert!(
            stderr.contains(&format!(
                "error: {}: not an image file: {what} (left out)",
                path.display()
            )),
            "{name}: {stderr}"
        );
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let unreadable = json["draws"][0]["categories"][0]["settings"]["unreadable"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["kind"].as_str().unwrap())
        .collect::<Vec<_>>();
    assert_eq!(unreadable, ["not-a-file"; 4]);
}

/// `logsad score --fail-on-anomaly` exits with status 3 when an image is anomalous and 0 when
/// none is; without the flag a defect does not change the status. An empty folder and a
/// missing file are errors that say so.
#[test]
fn score_exit_status_tells_anomalies() {
    let model = tiny_manifest();
    let textile = textile();
    let dir = tempfile::tempdir().unwrap();
    let profile = profile(dir.path(), &model, &textile);
    let image = s(&textile[5]);
    let score = |extra: &[&str]| {
        let mut args = vec!["score", "--model", s(&model), "--profile", s(&profile)];
        args.extend_from_slice(extra);
        logsad(&args)
    };
    // Threshold 0: every calibrated score reaches it; 1: a nominal image's does not.
    let anomalous = score(&["--threshold", "0", "--fail-on-anomaly", image]);
    assert_eq!(json_lines(&anomalous)[0]["anomalous"], true);
    assert_eq!(anomalous.status.code(), Some(3), "{anomalous:?}");
    let stderr = String::from_utf8_lossy(&anomalous.stderr);
    assert!(stderr.contains("1 of 1 images anomalous"), "{stderr}");
    let normal = score(&["--threshold", "1", "--fail-on-anomaly", image]);
    assert_eq!(json_lines(&normal)[0]["anomalous"], false);
    assert_eq!(normal.status.code(), Some(0), "{normal:?}");
    assert_eq!(score(&["--threshold", "0", image]).status.code(), Some(0));

    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let output = score(&[s(&empty)]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("error: no image files ("), "{stderr}");
    let missing = dir.path().join("missing.png");
    let output = score(&[s(&missing)]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "error: {}: no such file or folder",
            missing.display()
        )),
        "{stderr}"
    );
}
