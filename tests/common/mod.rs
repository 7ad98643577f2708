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

/// The tiny test model (28x28 input, 2x2 token grid, 8 channels, 4 stages, seed 0).
pub fn tiny_manifest() -> PathBuf {
    let path = deps().join("models/tiny/manifest.json");
    assert!(
        path.is_file() && path.with_file_name("model.onnx").is_file(),
        "{} is missing: run `make deps` (or models/make_test_model.py --out .deps/models/tiny)",
        path.display()
    );
    path
}

/// Writes a tiny test model with `models/make_test_model.py` into `out`; returns its manifest.
pub fn make_tiny_model(out: &Path, seed: u32) -> PathBuf {
    let python = deps().join("venv/bin/python");
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
