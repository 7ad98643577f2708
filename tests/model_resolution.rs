//! A profile names the model it was built with. With no model given, `logsad score` and the
//! `logsad` element load that model from the data directory's `models/<name>/` (where the
//! set-up puts the int8 and 448-px variants), not the default model.
//!
//! This binary holds one test: it points the process at a data directory of its own through
//! `LOGSAD_DATA_DIR` before anything reads it.

mod common;

use common::{deps, init, make_tiny_model, Rng};
use gst::prelude::*;
use gstlogsad::engine::{self, Manifest, DEFAULT_MODEL};
use gstlogsad::enroll::{enroll, EnrollOptions};
use gstlogsad::profile::Profile;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `count` noise images of 32x32 pixels named `{kind}_{i}.png` in `dir`.
fn noise_images(dir: &Path, kind: &str, count: usize, rng: &mut Rng) -> Vec<PathBuf> {
    (0..count)
        .map(|i| {
            let pixels = (0..32 * 32 * 3).map(|_| (rng.next() % 256) as u8).collect();
            let path = dir.join(format!("{kind}_{i}.png"));
            image::RgbImage::from_raw(32, 32, pixels)
                .unwrap()
                .save(&path)
                .unwrap();
            path
        })
        .collect()
}

/// Runs `videotestsrc ! logsad profile=… ! fakesink` for 2 frames: `None` on EOS, else the
/// error message.
fn run_element(profile: &Path) -> Option<String> {
    init();
    let pipeline = gst::parse::launch(
        "videotestsrc num-buffers=2 ! video/x-raw,width=32,height=32 ! logsad name=d ! fakesink",
    )
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    pipeline
        .by_name("d")
        .unwrap()
        .set_property("profile", profile.to_str().unwrap());
    let _ = pipeline.set_state(gst::State::Playing);
    let bus = pipeline.bus().unwrap();
    let outcome = loop {
        let message = bus
            .timed_pop(gst::ClockTime::from_seconds(60))
            .expect("timed out waiting for EOS or an error");
        match message.view() {
            gst::MessageView::Eos(_) => break None,
            gst::MessageView::Error(e) => break Some(e.error().to_string()),
            _ => {}
        }
    };
    pipeline.set_state(gst::State::Null).unwrap();
    outcome
}

#[test]
fn a_profile_runs_with_the_model_it_names() {
    let library = deps().join("onnxruntime/libonnxruntime.so");
    let data = tempfile::tempdir().unwrap();
    // A tiny model with a seed of its own, so its name is not the default tiny model's; the
    // data directory holds it under its name and has no default model.
    let staging = data.path().join("staging");
    let staged = make_tiny_model(&staging, 7);
    let name = Manifest::load(&staged).unwrap().name;
    let folder = data.path().join("models").join(&name);
    std::fs::create_dir_all(folder.parent().unwrap()).unwrap();
    std::fs::rename(&staging, &folder).unwrap();
    let manifest = folder.join("manifest.json");

    let mut rng = Rng(0x5eed);
    let references = noise_images(data.path(), "ref", 3, &mut rng);
    let validation = noise_images(data.path(), "val", 4, &mut rng);
    let (profile, _) = enroll(
        &manifest,
        &references,
        &validation,
        &EnrollOptions::default(),
        &mut |_, _, _| {},
    )
    .expect("enrolling with the tiny model");
    let profile_path = data.path().join("named.logsad");
    profile.save(&profile_path).unwrap();
    assert_eq!(
        Profile::recorded_model(&profile_path).unwrap(),
        profile.header.model
    );

    // Only this test runs in this binary, and nothing has read these variables yet.
    std::env::set_var("LOGSAD_DATA_DIR", data.path());
    std::env::set_var("ORT_DYLIB_PATH", &library);
    std::env::remove_var("LOGSAD_MODEL");
    let default_model = data.path().join(DEFAULT_MODEL);
    assert_eq!(engine::model_for_profile(&name), manifest);
    // Unknown names and names that would leave models/ fall back to the default model.
    assert_eq!(engine::model_for_profile("no-such-model"), default_model);
    assert_eq!(engine::model_for_profile("../models/x"), default_model);
    assert_eq!(engine::model_for_profile(""), default_model);

    let score = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_logsad"))
            .arg("score")
            .args(extra)
            .arg("--profile")
            .arg(&profile_path)
            .arg(&validation[0])
            .output()
            .expect("running logsad")
    };
    let found = score(&[]);
    assert!(
        found.status.success(),
        "{}",
        String::from_utf8_lossy(&found.stderr)
    );
    assert_eq!(run_element(&profile_path), None);

    // An explicit model still wins: here the default one, which this data directory lacks.
    let explicit = score(&["--model", default_model.to_str().unwrap()]);
    assert!(!explicit.status.success());
    let stderr = String::from_utf8_lossy(&explicit.stderr);
    assert!(stderr.contains(DEFAULT_MODEL), "{stderr}");

    // Without the named folder, the default model is tried and its absence named.
    std::fs::rename(&folder, data.path().join("moved")).unwrap();
    let missing = score(&[]);
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains(DEFAULT_MODEL), "{stderr}");
    let error = run_element(&profile_path).expect("an error without the model");
    assert!(error.contains(DEFAULT_MODEL), "{error}");

    // A file that is not a profile is named with the cause.
    let junk = data.path().join("junk.logsad");
    std::fs::write(&junk, b"not a profile at all, just text").unwrap();
    let error = Profile::recorded_model(&junk).unwrap_err().to_string();
    assert!(
        error.contains("junk.logsad") && error.contains("LOGSADPF"),
        "{error}"
    );
}
