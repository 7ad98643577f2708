fn main() {
    gst_plugin_version_helper::info();
    // The set-up (`make deps`) places ONNX Runtime and the default model in one data directory.
    // Its absolute path is baked in so that the plugin and the `logsad` command find them on
    // their own; environment variables still override at run time.
    println!("cargo:rerun-if-env-changed=LOGSAD_DATA_DIR");
    let dir = std::env::var("LOGSAD_DATA_DIR")
        .unwrap_or_else(|_| format!("{}/.deps", std::env::var("CARGO_MANIFEST_DIR").unwrap()));
    println!("cargo:rustc-env=LOGSAD_BUILD_DATA_DIR={dir}");
}
