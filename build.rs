use std::path::PathBuf;

fn main() {
    gst_plugin_version_helper::info();
    // The set-up (`make deps`) places ONNX Runtime and the default model in one data directory.
    // Its absolute path is baked in so that the plugin and the `logsad` command find them on
    // their own; environment variables still override at run time.
    println!("cargo:rerun-if-env-changed=LOGSAD_DATA_DIR");
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let dir = std::env::var_os("LOGSAD_DATA_DIR")
        .map(|d| manifest_dir.join(d))
        .unwrap_or_else(|| manifest_dir.join(".deps"));
    println!("cargo:rustc-env=LOGSAD_BUILD_DATA_DIR={}", dir.display());
}
