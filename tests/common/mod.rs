//! Helpers shared by the element tests: GStreamer set-up, paths and the tiny test model.
// Each test crate uses its own subset.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Once;

static INIT: Once = Once::new();

pub fn init() {
    INIT.call_once(|| {
        gst::init().unwrap();
        gstlogsad::plugin_register_static().expect("registering the logsad plugin");
    });
}

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn deps() -> PathBuf {
    std::env::var_os("LOGSAD_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".deps"))
}

// What `make deps` (scripts/setup-deps.sh) prepares. A test that needs one of these and cannot
// find it fails naming it: it never passes without having run. `make test` runs the set-up first.

/// Fails the test: `what` (at `path`) is missing, and `make deps` prepares it.
#[track_caller]
pub fn missing(what: &str, path: &Path) -> ! {
    panic!(
        "missing {what}: {} does not exist. Run `make deps` (scripts/setup-deps.sh), which \
         prepares it in .deps/ (or $LOGSAD_DATA_DIR).",
        path.display()
    )
}

/// The manifest of the model in `.deps/models/<name>`, after checking that it and its
/// `model.onnx` are there.
#[track_caller]
pub fn require_model(name: &str) -> PathBuf {
    let path = deps().join("models").join(name).join("manifest.json");
    for file in [path.clone(), path.with_file_name("model.onnx")] {
        if !file.is_file() {
            missing(&format!("the model {name}"), &file);
        }
    }
    path
}

/// The tiny test model (28x28 input, 2x2 token grid, 8 channels, 4 stages, seed 0).
#[track_caller]
pub fn tiny_manifest() -> PathBuf {
    require_model("tiny")
}

/// The default backbone, DINOv2 ViT-S/14 at 224 px: its manifest.
#[track_caller]
pub fn require_dinov2() -> PathBuf {
    require_model("dinov2-vits14-224")
}

/// The textile sample images: `.deps/data/textile`, after checking that its `nominal`, `local`
/// and `global` folders are there.
#[track_caller]
pub fn require_textile() -> PathBuf {
    let root = deps().join("data/textile");
    for kind in ["nominal", "local", "global"] {
        let dir = root.join(kind);
        if !dir.is_dir() {
            missing("the textile images", &dir);
        }
    }
    root
}

/// The nominal textile JPEGs, sorted by name (at least `count` of them).
#[track_caller]
pub fn require_textile_nominal(count: usize) -> Vec<PathBuf> {
    let dir = require_textile().join("nominal");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(
        files.len() >= count,
        "{} holds {} images, {count} are needed: run `make deps` (scripts/setup-deps.sh)",
        dir.display(),
        files.len()
    );
    files
}

/// The project's Python, `.deps/venv/bin/python`.
#[track_caller]
pub fn require_python() -> PathBuf {
    let python = deps().join("venv/bin/python");
    if !python.is_file() {
        missing("the project's Python (venv)", &python);
    }
    python
}

/// The project's Python, after checking that it imports every module of `modules`.
#[track_caller]
pub fn require_python_modules(modules: &[&str]) -> PathBuf {
    let python = require_python();
    let import = format!("import {}", modules.join(", "));
    let output = std::process::Command::new(&python)
        .args(["-c", &import])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    assert!(
        output.status.success(),
        "{} cannot `{import}`: run `make deps` (scripts/setup-deps.sh), which installs them:\n{}",
        python.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    python
}

/// Writes a tiny test model with `models/make_test_model.py` into `out`; returns its manifest.
pub fn make_tiny_model(out: &Path, seed: u32) -> PathBuf {
    let python = require_python();
    let status = std::process::Command::new(&python)
        .arg(root().join("models/make_test_model.py"))
        .arg("--out")
        .arg(out)
        .arg("--seed")
        .arg(seed.to_string())
        .arg("--no-verify")
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    assert!(status.success(), "make_test_model.py failed: {status}");
    out.join("manifest.json")
}

/// A small deterministic generator, so that the images are the same on every run.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u32 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as u32
    }
}

/// The plugin library: the one cargo built with this test binary (`target/<profile>/deps`, where
/// the cdylib lands; cargo copies it up one level only on `cargo build`), else the one
/// `cargo build --release` left in `target/release`; fails the test naming them without one.
pub fn built_plugin() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let deps_dir = exe.parent().expect("the test binary's folder");
    let candidates = [
        deps_dir.join("libgstlogsad.so"),
        deps_dir
            .parent()
            .unwrap_or(deps_dir)
            .join("libgstlogsad.so"),
        root().join("target/release/libgstlogsad.so"),
    ];
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "the plugin library is missing: none of {candidates:?} exists. Run `make build` \
                 (`make deps` and `cargo build --release --locked`); `make test` does it first."
            )
        })
}
