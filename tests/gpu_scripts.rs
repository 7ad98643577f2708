//! The GPU path's scripts on a machine without a GPU: `make bench-gpu` says what is missing and
//! exits 0, and `scripts/gpu-bundle.sh` packs small stand-in files into checked chunks that
//! unpack to the same bytes (a corrupt or missing chunk is refused before anything is written,
//! a chunk size over 64 MiB is refused).

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const STREAM: &str = "gpu-bundle.tar.zst";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn text(output: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Bytes that zstd cannot shrink (xorshift), so that the stream spans several small chunks.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// Stand-ins for everything the pack collects, keyed by where each lands in the bundle.
struct Payload {
    dir: tempfile::TempDir,
    files: Vec<(&'static str, Vec<u8>)>,
}

impl Payload {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let files = vec![
            ("release/logsad", "bin/logsad", noise(300_000, 1)),
            (
                "release/libgstlogsad.so",
                "gst/logsad/libgstlogsad.so",
                noise(40_000, 2),
            ),
            ("bench-exe", "bin/bench", noise(120_000, 3)),
            (
                "ort/libonnxruntime.so.1.31.1",
                "onnxruntime-gpu/libonnxruntime.so.1.31.1",
                noise(90_000, 4),
            ),
            (
                "ort/libonnxruntime_providers_cuda.so",
                "onnxruntime-gpu/libonnxruntime_providers_cuda.so",
                noise(150_000, 5),
            ),
            (
                "ort/libonnxruntime_providers_shared.so",
                "onnxruntime-gpu/libonnxruntime_providers_shared.so",
                b"shared".to_vec(),
            ),
            (
                "ort/libonnxruntime_providers_tensorrt.so",
                "onnxruntime-gpu/libonnxruntime_providers_tensorrt.so",
                noise(20_000, 6),
            ),
            (
                "data/models/dinov2-vits14-224/manifest.json",
                "data/models/dinov2-vits14-224/manifest.json",
                b"{\"name\": \"stand-in\"}".to_vec(),
            ),
            (
                "data/models/dinov2-vits14-224/model.onnx",
                "data/models/dinov2-vits14-224/model.onnx",
                noise(60_000, 7),
            ),
            (
                "data/data/textile/nominal/textile_0001.jpg",
                "data/data/textile/nominal/textile_0001.jpg",
                noise(3_000, 8),
            ),
            (
                "data/data/textile/nominal/textile_0002.jpg",
                "data/data/textile/nominal/textile_0002.jpg",
                noise(3_000, 9),
            ),
        ];
        let mut kept = Vec::new();
        for (source, dest, bytes) in files {
            write(&dir.path().join(source), &bytes);
            kept.push((dest, bytes));
        }
        // An image beyond GPU_BUNDLE_IMAGES=2 stays out of the bundle.
        write(
            &dir.path()
                .join("data/data/textile/nominal/textile_0003.jpg"),
            b"left out",
        );
        Payload { dir, files: kept }
    }

    fn pack(&self, out: &Path, chunk: &str) -> Output {
        let p = self.dir.path();
        Command::new(repo().join("scripts/gpu-bundle.sh"))
            .arg("pack")
            .arg(out)
            .env("GPU_BUNDLE_RELEASE_DIR", p.join("release"))
            .env("GPU_BUNDLE_BENCH_EXE", p.join("bench-exe"))
            .env("GPU_BUNDLE_ORT_DIR", p.join("ort"))
            .env("LOGSAD_DATA_DIR", p.join("data"))
            .env("GPU_BUNDLE_GST", "0")
            .env("GPU_BUNDLE_IMAGES", "2")
            .env("GPU_BUNDLE_CHUNK", chunk)
            .env("ZSTD_LEVEL", "3")
            .output()
            .unwrap()
    }
}

fn unpack(dir: &Path, dest: &Path) -> Output {
    Command::new(repo().join("scripts/gpu-bundle.sh"))
        .arg("unpack")
        .arg(dir)
        .arg(dest)
        .output()
        .unwrap()
}

fn chunks(out: &Path) -> Vec<PathBuf> {
    let mut list: Vec<PathBuf> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(STREAM))
        .collect();
    list.sort();
    list
}

fn copy_dir(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-r")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
}

fn is_empty_dir(dir: &Path) -> bool {
    !dir.exists() || std::fs::read_dir(dir).unwrap().next().is_none()
}

#[test]
fn bench_gpu_without_a_gpu_build_says_what_is_missing_and_exits_0() {
    let empty = tempfile::tempdir().unwrap();
    let output = Command::new("make")
        .args(["-s", "bench-gpu"])
        .current_dir(repo())
        .env("ORT_GPU_DIR", empty.path())
        .env("GPU_VENV", empty.path())
        .env_remove("BUNDLE")
        .output()
        .unwrap();
    let all = text(&output);
    assert!(output.status.success(), "{all}");
    assert!(
        all.contains("no GPU run on this machine. Missing:"),
        "{all}"
    );
    assert!(all.contains("the GPU build of ONNX Runtime"), "{all}");
    assert!(all.contains("onnxruntime-gpu[cuda,cudnn]==1.31.1"), "{all}");
    assert!(all.contains("Nothing was measured; exiting 0."), "{all}");
    let gpu = Command::new("nvidia-smi")
        .arg("-L")
        .output()
        .is_ok_and(|o| o.status.success());
    assert_eq!(all.contains("an NVIDIA GPU and its driver"), !gpu, "{all}");
}

#[test]
fn pack_and_unpack_round_trip_in_checked_chunks() {
    let payload = Payload::new();
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("bundle");
    let packed = payload.pack(&out, "64K");
    assert!(packed.status.success(), "{}", text(&packed));

    // Chunks: several, none over the limit, each listed in order with its sha256.
    let list = chunks(&out);
    assert!(list.len() >= 5, "{} chunks", list.len());
    let sums = std::fs::read_to_string(out.join("CHUNKS.sha256")).unwrap();
    let lines: Vec<&str> = sums.lines().collect();
    assert_eq!(lines.len(), list.len());
    for (line, chunk) in lines.iter().zip(&list) {
        let bytes = std::fs::read(chunk).unwrap();
        assert!(
            bytes.len() <= 64 * 1024,
            "{} is {} bytes",
            chunk.display(),
            bytes.len()
        );
        let name = chunk.file_name().unwrap().to_string_lossy();
        assert_eq!(*line, format!("{}  {name}", sha256(&bytes)));
    }
    assert!(out.join("tools/zstd").is_file());

    let dest = work.path().join("unpacked");
    let unpacked = unpack(&out, &dest);
    assert!(unpacked.status.success(), "{}", text(&unpacked));
    for (path, bytes) in &payload.files {
        let got = std::fs::read(dest.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert!(got == *bytes, "{path} differs after the round trip");
    }
    assert!(!dest
        .join("data/data/textile/nominal/textile_0003.jpg")
        .exists());
    assert_eq!(
        std::fs::read_link(dest.join("onnxruntime-gpu/libonnxruntime.so")).unwrap(),
        Path::new("libonnxruntime.so.1.31.1")
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dest.join("bundle.json")).unwrap()).unwrap();
    assert_eq!(manifest["onnxruntime_gpu"], "1.31.1");
    assert_eq!(
        manifest["files"]["bin/bench"],
        sha256(&payload.files.iter().find(|f| f.0 == "bin/bench").unwrap().1)
    );

    // bench-gpu finds the bundle's ONNX Runtime (the stand-in has no GPU libraries behind it).
    let empty = tempfile::tempdir().unwrap();
    let bench = Command::new(repo().join("scripts/bench-gpu.sh"))
        .env("BUNDLE", &dest)
        .env("GPU_VENV", empty.path())
        .env_remove("ORT_GPU_DIR")
        .output()
        .unwrap();
    let all = text(&bench);
    assert!(
        all.contains(&format!(
            "ONNX Runtime GPU build: {}/onnxruntime-gpu",
            dest.display()
        )),
        "{all}"
    );
}

#[test]
fn unpack_refuses_a_corrupt_or_missing_chunk_before_writing_anything() {
    let payload = Payload::new();
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("bundle");
    let packed = payload.pack(&out, "64K");
    assert!(packed.status.success(), "{}", text(&packed));

    let corrupt = work.path().join("corrupt");
    copy_dir(&out, &corrupt);
    let victim = chunks(&corrupt)[1].clone();
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[100] ^= 0x01;
    std::fs::write(&victim, bytes).unwrap();
    let dest = work.path().join("dest-corrupt");
    let refused = unpack(&corrupt, &dest);
    let all = text(&refused);
    assert!(!refused.status.success(), "{all}");
    assert!(all.contains(&format!("{STREAM}.001: FAILED")), "{all}");
    assert!(all.contains("nothing was unpacked"), "{all}");
    assert!(is_empty_dir(&dest), "files were written: {all}");

    let missing = work.path().join("missing");
    copy_dir(&out, &missing);
    std::fs::remove_file(chunks(&missing)[2].clone()).unwrap();
    let dest = work.path().join("dest-missing");
    let refused = unpack(&missing, &dest);
    let all = text(&refused);
    assert!(!refused.status.success(), "{all}");
    assert!(
        all.contains(&format!("chunk {STREAM}.002 is missing")),
        "{all}"
    );
    assert!(is_empty_dir(&dest), "files were written: {all}");
}

#[test]
fn pack_refuses_chunks_over_64_mib() {
    let payload = Payload::new();
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("bundle");
    let refused = payload.pack(&out, "65M");
    let all = text(&refused);
    assert!(!refused.status.success(), "{all}");
    assert!(
        all.contains("GPU_BUNDLE_CHUNK=65M: chunks must be 1 byte to 64 MiB"),
        "{all}"
    );
    assert!(!out.exists() || chunks(&out).is_empty());
}
