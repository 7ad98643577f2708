//! Inference: the ONNX Runtime environment, execution providers, model manifests and the backbone
//! session. Nothing outside this module talks to ONNX Runtime.

pub mod manifest;

pub use manifest::Manifest;

use ort::ep::{ExecutionProviderDispatch, TensorRT, CPU, CUDA};
use ort::session::Session;
use ort::value::{Tensor, ValueType};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Where `make deps` put ONNX Runtime and the default model, baked in at build time.
const BUILD_DATA_DIR: &str = env!("LOGSAD_BUILD_DATA_DIR");
/// The default backbone, relative to the data directory.
pub const DEFAULT_MODEL: &str = "models/dinov2-vits14-224/manifest.json";
/// The name of the default backbone quantised to int8 at set-up (`models/quantize_int8.py`):
/// the `fast` preset's model.
pub const INT8_MODEL: &str = "dinov2-vits14-224-int8";

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(
        "cannot load the ONNX Runtime library {path}: {reason}. Run `make deps` or set \
         ORT_DYLIB_PATH to libonnxruntime.so from the PyPI wheel `onnxruntime` (onnxruntime/capi/)"
    )]
    Library { path: PathBuf, reason: String },
    #[error(transparent)]
    Manifest(#[from] manifest::ManifestError),
    #[error("cannot load model {path}: {reason}")]
    Model { path: PathBuf, reason: String },
    #[error("model {path} does not match its manifest: {reason}")]
    Mismatch { path: PathBuf, reason: String },
    #[error("inference failed: {0}")]
    Run(String),
}

/// The data directory: `LOGSAD_DATA_DIR`, else the one `make deps` filled for this build.
pub fn data_dir() -> PathBuf {
    std::env::var_os("LOGSAD_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(BUILD_DATA_DIR))
}

/// The ONNX Runtime library: `ORT_DYLIB_PATH`, else the one in the data directory.
pub fn library_path() -> PathBuf {
    std::env::var_os("ORT_DYLIB_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| data_dir().join("onnxruntime/libonnxruntime.so"))
}

/// The default model manifest: `LOGSAD_MODEL`, else the one in the data directory.
pub fn default_model() -> PathBuf {
    std::env::var_os("LOGSAD_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| data_dir().join(DEFAULT_MODEL))
}

/// The model to run a profile with when none is given: `LOGSAD_MODEL` if set, else the data
/// directory's `models/<name>/manifest.json` for the model name the profile records (such as
/// `dinov2-vits14-224-int8`) where that folder exists, else the default model. The caller still
/// checks the model's identity against the profile.
pub fn model_for_profile(recorded_name: &str) -> PathBuf {
    if std::env::var_os("LOGSAD_MODEL").is_some() {
        return default_model();
    }
    installed_model(recorded_name).unwrap_or_else(default_model)
}

/// The manifest of the model named `name` in the data directory (`models/<name>/manifest.json`),
/// where it exists; `None` also for a name that is not one plain folder name.
pub fn installed_model(name: &str) -> Option<PathBuf> {
    let plain = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && !name.starts_with('.');
    let path = data_dir().join("models").join(name).join("manifest.json");
    (plain && path.is_file()).then_some(path)
}

/// The process-wide ONNX Runtime environment (ONNX Runtime allows only one per process).
fn environment() -> Result<ort::environment::Environment, EngineError> {
    static ENV: OnceLock<Result<ort::environment::Environment, EngineError>> = OnceLock::new();
    let result = ENV.get_or_init(|| {
        let path = library_path();
        let library_error = |reason: String| EngineError::Library {
            path: path.clone(),
            reason,
        };
        if !path.exists() {
            return Err(library_error("no such file".into()));
        }
        ort::init_from(&path)
            .map_err(|e| library_error(e.to_string()))?
            .with_name("logsad")
            .build()
            .map_err(|e| library_error(e.to_string()))
    });
    match result {
        Ok(env) => Ok(env.clone()),
        Err(EngineError::Library { path, reason }) => Err(EngineError::Library {
            path: path.clone(),
            reason: reason.clone(),
        }),
        Err(other) => Err(EngineError::Run(other.to_string())),
    }
}

/// Which hardware runs the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    #[default]
    Cpu,
    Cuda,
    Tensorrt,
}

impl std::str::FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda),
            "tensorrt" | "trt" => Ok(Device::Tensorrt),
            other => Err(format!("unknown device {other:?} (cpu, cuda, tensorrt)")),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineOptions {
    pub device: Device,
    pub gpu_id: u32,
    /// TensorRT only: build fp16 engines.
    pub fp16: bool,
    /// TensorRT only: the folder where built engines and the timing cache are kept (an engine
    /// takes minutes to build; with a cache the next start loads it in seconds). Created when
    /// missing; `None` builds engines at every start.
    pub engine_cache_dir: Option<PathBuf>,
    /// Threads inside one operator; 0 lets ONNX Runtime choose.
    pub threads: usize,
}

/// The identity of a model as recorded in profiles: a profile only runs with the same weights.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ModelIdentity {
    pub name: String,
    pub sha256: String,
}

impl ModelIdentity {
    pub fn of(manifest: &Manifest) -> Result<Self, EngineError> {
        Ok(ModelIdentity {
            name: manifest.name.clone(),
            sha256: file_sha256(&manifest.onnx).map_err(|e| EngineError::Model {
                path: manifest.onnx.clone(),
                reason: e.to_string(),
            })?,
        })
    }
}

fn file_sha256(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut chunk = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        hasher.update(&chunk[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Stage outputs of one batch: `stages[s]` holds `batch * tokens * feature_dim` values.
pub struct StageOutputs {
    pub batch: usize,
    pub tokens: usize,
    pub feature_dim: usize,
    pub stages: Vec<Vec<f32>>,
}

/// A backbone session that turns normalised NCHW batches into stage tokens.
pub struct Backbone {
    session: Session,
    manifest: Manifest,
    identity: ModelIdentity,
    provider: String,
}

impl Backbone {
    /// Loads the model a manifest describes. Returns the backbone and warnings for the caller to
    /// report (an execution provider that is not available falls back to CPU).
    pub fn load(
        manifest: Manifest,
        options: &EngineOptions,
    ) -> Result<(Self, Vec<String>), EngineError> {
        let env = environment()?;
        let path = manifest.onnx.clone();
        let model_error = |reason: String| EngineError::Model {
            path: path.clone(),
            reason,
        };
        if !path.is_file() {
            return Err(model_error("no such file".into()));
        }
        let identity = ModelIdentity::of(&manifest)?;
        let mut warnings = Vec::new();
        // Without spinning, ONNX Runtime's idle threads leave the cores to the matching step
        // that follows every inference (one-off probe on 2 cores: about 30% more frames/s).
        let mut builder = Session::builder(&env)
            .and_then(|b| b.with_intra_op_spinning(false).map_err(|e| e.into()))
            .map_err(|e| model_error(e.to_string()))?;
        if options.threads > 0 {
            builder = builder
                .with_intra_threads(options.threads)
                .map_err(|e| model_error(e.to_string()))?;
        }
        // Accelerators in order of preference, each registered on its own so that one that is
        // missing is reported and the next one tried; CPU always comes last.
        let mut provider = None;
        let mut failed = Vec::new();
        for (name, dispatch) in accelerators(options, &mut warnings) {
            match builder.with_execution_providers([dispatch.error_on_failure()]) {
                Ok(b) => {
                    builder = b;
                    provider.get_or_insert(name);
                }
                Err(e) => {
                    failed.push(format!("execution provider {name} is not available ({e})"));
                    builder = e.recover();
                }
            }
        }
        let provider = provider.unwrap_or("cpu").to_string();
        // One warning per provider that failed, saying where the model runs instead.
        for message in failed {
            warnings.push(format!("{message}; running on {}", provider.to_uppercase()));
        }
        builder = builder
            .with_execution_providers([CPU::default().build()])
            .map_err(|e| model_error(e.to_string()))?;
        let session = builder
            .commit_from_file(&path)
            .map_err(|e| model_error(e.to_string()))?;
        let backbone = Backbone {
            session,
            manifest,
            identity,
            provider,
        };
        backbone.check_contract()?;
        Ok((backbone, warnings))
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn identity(&self) -> &ModelIdentity {
        &self.identity
    }

    /// The execution provider in use: "cpu", "cuda" or "tensorrt".
    pub fn provider(&self) -> &str {
        &self.provider
    }

    /// Checks that the graph has the input and outputs the manifest declares, with compatible
    /// shapes, so that a wrong manifest fails at load time rather than at the first frame.
    fn check_contract(&self) -> Result<(), EngineError> {
        let m = &self.manifest;
        let mismatch = |reason: String| EngineError::Mismatch {
            path: m.onnx.clone(),
            reason,
        };
        let input = self
            .session
            .inputs()
            .iter()
            .find(|i| i.name() == m.input.name)
            .ok_or_else(|| mismatch(format!("no input named {:?}", m.input.name)))?;
        let want_in = [-1, 3, m.input.height as i64, m.input.width as i64];
        check_shape(input.dtype(), &want_in)
            .map_err(|r| mismatch(format!("input {:?}: {r}", m.input.name)))?;
        let want_out = [-1, m.tokens_per_image() as i64, m.feature_dim as i64];
        for name in &m.stage_outputs {
            let output = self
                .session
                .outputs()
                .iter()
                .find(|o| o.name() == name)
                .ok_or_else(|| mismatch(format!("no output named {name:?}")))?;
            check_shape(output.dtype(), &want_out)
                .map_err(|r| mismatch(format!("output {name:?}: {r}")))?;
        }
        Ok(())
    }

    /// Runs one batch: `pixels` holds `batch` normalised images in NCHW order.
    pub fn run(&mut self, pixels: Vec<f32>, batch: usize) -> Result<StageOutputs, EngineError> {
        let m = &self.manifest;
        let shape = [batch, 3, m.input.height, m.input.width];
        if pixels.len() != shape.iter().product::<usize>() {
            return Err(EngineError::Run(format!(
                "batch holds {} values, expected {:?}",
                pixels.len(),
                shape
            )));
        }
        let tokens = m.tokens_per_image();
        let feature_dim = m.feature_dim;
        let input_name = m.input.name.clone();
        let output_names = m.stage_outputs.clone();
        let tensor =
            Tensor::from_array((shape, pixels)).map_err(|e| EngineError::Run(e.to_string()))?;
        let outputs = self
            .session
            .run(ort::inputs![input_name => tensor])
            .map_err(|e| EngineError::Run(e.to_string()))?;
        let mut stages = Vec::with_capacity(output_names.len());
        for name in &output_names {
            let value = outputs
                .get(name)
                .ok_or_else(|| EngineError::Run(format!("output {name:?} missing")))?;
            let (out_shape, data) = value
                .try_extract_tensor::<f32>()
                .map_err(|e| EngineError::Run(format!("output {name:?}: {e}")))?;
            let dims: Vec<i64> = out_shape.iter().copied().collect();
            if dims != [batch as i64, tokens as i64, feature_dim as i64] {
                return Err(EngineError::Run(format!(
                    "output {name:?} has shape {dims:?}, expected [{batch}, {tokens}, {feature_dim}]"
                )));
            }
            stages.push(data.to_vec());
        }
        Ok(StageOutputs {
            batch,
            tokens,
            feature_dim,
            stages,
        })
    }
}

/// The execution providers a device asks for, most preferred first (CPU, always last, is not
/// listed). TensorRT is followed by CUDA, which takes the nodes TensorRT leaves out (and the
/// whole model when TensorRT cannot be loaded), so they do not go back to the CPU. With `fp16`,
/// TensorRT keeps layer normalisations in fp32 (a ViT's LayerNorm overflows in fp16). A cache
/// folder that cannot be created is reported in `warnings`; TensorRT then builds its engines
/// at every start.
fn accelerators(
    options: &EngineOptions,
    warnings: &mut Vec<String>,
) -> Vec<(&'static str, ExecutionProviderDispatch)> {
    let id = options.gpu_id as i32;
    let cuda = ("cuda", CUDA::default().with_device_id(id).build());
    match options.device {
        Device::Cpu => Vec::new(),
        Device::Cuda => vec![cuda],
        Device::Tensorrt => {
            let mut trt = TensorRT::default()
                .with_device_id(id)
                .with_fp16(options.fp16)
                .with_layer_norm_fp32_fallback(options.fp16);
            if let Some(dir) = &options.engine_cache_dir {
                match std::fs::create_dir_all(dir) {
                    Ok(()) => {
                        trt = trt
                            .with_engine_cache(true)
                            .with_engine_cache_path(dir.display())
                            .with_timing_cache(true)
                            .with_timing_cache_path(dir.display());
                    }
                    Err(e) => warnings.push(format!(
                        "cannot create the TensorRT engine cache {}: {e}; engines are not cached",
                        dir.display()
                    )),
                }
            }
            vec![("tensorrt", trt.build()), cuda]
        }
    }
}

/// Compares a declared tensor shape with the expected one; -1 in `want` matches anything, and a
/// symbolic (dynamic) dimension in the model matches anything.
fn check_shape(dtype: &ValueType, want: &[i64]) -> Result<(), String> {
    let ValueType::Tensor { ty, shape, .. } = dtype else {
        return Err("is not a tensor".into());
    };
    if *ty != ort::value::TensorElementType::Float32 {
        return Err(format!("element type is {ty:?}, expected float32"));
    }
    if shape.len() != want.len() {
        return Err(format!(
            "has {} dimensions, expected {}",
            shape.len(),
            want.len()
        ));
    }
    for (axis, (&have, &want)) in shape.iter().zip(want).enumerate() {
        if want >= 0 && have >= 0 && have != want {
            return Err(format!(
                "dimension {axis} is {have}, the manifest implies {want} (shape {:?})",
                shape.iter().collect::<Vec<_>>()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(options: &EngineOptions) -> (Vec<&'static str>, Vec<String>) {
        let mut warnings = Vec::new();
        let list = accelerators(options, &mut warnings);
        (list.into_iter().map(|(name, _)| name).collect(), warnings)
    }

    #[test]
    fn tensorrt_is_backed_by_cuda_and_cpu_needs_no_accelerator() {
        let with = |device| EngineOptions {
            device,
            ..EngineOptions::default()
        };
        assert_eq!(names(&with(Device::Cpu)).0, Vec::<&str>::new());
        assert_eq!(names(&with(Device::Cuda)).0, vec!["cuda"]);
        assert_eq!(names(&with(Device::Tensorrt)).0, vec!["tensorrt", "cuda"]);
    }

    #[test]
    fn an_engine_cache_that_cannot_be_created_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"x").unwrap();
        let (list, warnings) = names(&EngineOptions {
            device: Device::Tensorrt,
            engine_cache_dir: Some(file.join("engines")),
            ..EngineOptions::default()
        });
        assert_eq!(list, vec!["tensorrt", "cuda"]);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("a-file/engines") && warnings[0].contains("not cached"),
            "{warnings:?}"
        );
    }

    /// With the CPU build of ONNX Runtime (`make deps`) both GPU providers fail to register and
    /// the model runs on CPU with one warning each; with the GPU build on a GPU machine
    /// (`ORT_DYLIB_PATH`) TensorRT is taken without a warning. Either way the cache folder is
    /// created.
    #[test]
    fn tensorrt_falls_back_through_cuda_to_cpu_with_a_warning_per_provider() {
        let manifest = data_dir().join("models/tiny/manifest.json");
        let manifest = Manifest::load(&manifest).expect("the tiny model: run `make deps`");
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache/engines");
        let options = EngineOptions {
            device: Device::Tensorrt,
            fp16: true,
            engine_cache_dir: Some(cache.clone()),
            ..EngineOptions::default()
        };
        let (backbone, warnings) = Backbone::load(manifest, &options).expect("load");
        assert!(cache.is_dir());
        match backbone.provider() {
            "cpu" => {
                assert_eq!(warnings.len(), 2, "{warnings:?}");
                for (warning, name) in warnings.iter().zip(["tensorrt", "cuda"]) {
                    assert!(
                        warning.starts_with(&format!("execution provider {name} is not available"))
                            && warning.ends_with("; running on CPU"),
                        "{warning}"
                    );
                }
            }
            other => {
                assert_eq!(other, "tensorrt", "{warnings:?}");
                assert!(warnings.is_empty(), "{warnings:?}");
            }
        }
    }
}
