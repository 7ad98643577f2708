//! The model contract: a JSON manifest beside each ONNX file (see `models/README.md`).

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const MANIFEST_FORMAT: &str = "logsad-model/1";

/// How the pixels of a frame become the model's input tensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputSpec {
    /// Name of the graph input.
    pub name: String,
    pub width: usize,
    pub height: usize,
    /// Only "NCHW" is supported.
    pub layout: String,
    /// Channel order of the tensor: "RGB" or "BGR".
    pub channels: String,
    /// Per channel, applied to values in [0, 1]: (v - mean) / std.
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// The tokens each stage output holds: `[batch, prefix_tokens + grid_h * grid_w, feature_dim]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenLayout {
    /// Class and register tokens before the patch tokens (dropped).
    pub prefix_tokens: usize,
    pub grid_height: usize,
    pub grid_width: usize,
    pub patch_size: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    /// Stable identifier recorded in profiles, e.g. "dinov2-vits14-224".
    pub name: String,
    /// "dinov2" or "clip": tells which detectors may use the model.
    pub family: String,
    /// ONNX file, relative to the manifest.
    pub onnx: PathBuf,
    pub input: InputSpec,
    /// Graph outputs of the hierarchical stages, shallow to deep.
    pub stage_outputs: Vec<String>,
    pub tokens: TokenLayout,
    pub feature_dim: usize,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read model manifest {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("model manifest {path} is not valid: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

impl Manifest {
    /// Reads and validates a manifest; the ONNX path is made absolute.
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let invalid = |reason: String| ManifestError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let mut manifest: Manifest =
            serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        manifest.validate().map_err(invalid)?;
        if manifest.onnx.is_relative() {
            let dir = path.parent().unwrap_or(Path::new("."));
            manifest.onnx = dir.join(&manifest.onnx);
        }
        Ok(manifest)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.format != MANIFEST_FORMAT {
            return Err(format!(
                "format is {:?}, expected {MANIFEST_FORMAT:?}",
                self.format
            ));
        }
        let i = &self.input;
        if i.layout != "NCHW" {
            return Err(format!(
                "input layout {:?} is not supported (NCHW only)",
                i.layout
            ));
        }
        if i.channels != "RGB" && i.channels != "BGR" {
            return Err(format!(
                "input channels {:?} must be RGB or BGR",
                i.channels
            ));
        }
        if i.width == 0 || i.height == 0 {
            return Err("input size must not be zero".into());
        }
        if i.std.iter().any(|s| *s <= 0.0 || !s.is_finite()) {
            return Err("input std must be positive".into());
        }
        if self.stage_outputs.is_empty() {
            return Err("no stage outputs declared".into());
        }
        let t = &self.tokens;
        if t.grid_height == 0 || t.grid_width == 0 || self.feature_dim == 0 {
            return Err("token grid and feature dimension must not be zero".into());
        }
        if t.patch_size * t.grid_height != i.height || t.patch_size * t.grid_width != i.width {
            return Err(format!(
                "token grid {}x{} with patch size {} does not cover the input {}x{}",
                t.grid_height, t.grid_width, t.patch_size, i.height, i.width
            ));
        }
        Ok(())
    }

    /// Number of tokens per stage output, prefix tokens included.
    pub fn tokens_per_image(&self) -> usize {
        self.tokens.prefix_tokens + self.tokens.grid_height * self.tokens.grid_width
    }
}
