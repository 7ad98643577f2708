//! The enrolled reference set on disk: everything the detector needs at run time.
//!
//! File layout (little-endian): magic `LOGSADPF`, u32 format version, u64 header length, the
//! header as JSON, then per detector branch its memory bank (u64 token grid height and width,
//! u64 row count and the rows as u32, u64 token value count and the raw tokens as f32, stage
//! after stage), and a CRC-32 of everything before it. A truncated, corrupt or foreign file fails to load with a message
//! saying which part is wrong.

use crate::detect::calibrate::Calibration;
use crate::detect::patch::MemoryBank;
use crate::detect::score::Reduction;
use crate::detect::tiling::Tiling;
use crate::engine::ModelIdentity;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"LOGSADPF";
/// Version 4 added a tile's resize, a branch's pooling and the calibration method; version 5 a
/// tile's resampling (float by default, where every earlier profile resampled 8-bit pixels). An
/// older build must refuse such a file rather than read it without them.
pub const FORMAT_VERSION: u32 = 5;
/// Version 3 and 4 files lack only those fields, which default to the behaviour they were built
/// with: the reference's squash, no pooling, mean-std, and 8-bit resampling.
const OLDEST_READABLE_VERSION: u32 = 3;

/// What a branch matches against its bank.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// Every patch vector (the reference's patch detector).
    #[default]
    None,
    /// One vector per tile and stage, the mean of its tokens: the nearest reference tile by
    /// overall appearance, which sees changes spread over the whole tile.
    Mean,
}

impl Pooling {
    /// The bank's token grid and upsampling for a model grid and the reference's upsampling.
    pub fn bank_grid(self, model_grid: (usize, usize), upsample: usize) -> ((usize, usize), usize) {
        match self {
            Pooling::None => (model_grid, upsample),
            Pooling::Mean => ((1, 1), 1),
        }
    }
}

/// One detector branch: how frames are cut, what is matched, how its map becomes a score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BranchSpec {
    /// Reported as the detector's name in metadata, e.g. "patch".
    pub name: String,
    /// How frames are cut into model inputs; enrollment and detection must agree.
    pub tiling: Tiling,
    /// How the map becomes the image score (the reference takes the maximum).
    pub score: Reduction,
    /// Gaussian smoothing of the map before scoring, sigma in map cells (0: none, the reference).
    pub smoothing: f32,
    /// Absent from profiles written before pooling existed: none.
    #[serde(default)]
    pub pooling: Pooling,
}

impl BranchSpec {
    /// The reference detector: whole frame, maximum of the raw map.
    pub fn faithful() -> Self {
        BranchSpec {
            name: "patch".into(),
            tiling: Tiling::whole(),
            score: Reduction::Max,
            smoothing: 0.0,
            pooling: Pooling::None,
        }
    }
}

/// A branch as enrolled: its settings and its calibration over the validation images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Branch {
    pub spec: BranchSpec,
    pub calibration: Calibration,
    /// Raw validation scores, kept so that thresholds can be re-derived without the images.
    pub validation_scores: Vec<f64>,
}

/// How the profile was built and is to be applied; stored as the file's JSON header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProfileHeader {
    /// The backbone the banks were computed with; checked against the model at load time.
    pub model: ModelIdentity,
    /// Token grid upsampling factor before matching (2 in the reference).
    pub upsample: usize,
    pub feature_dim: usize,
    pub stages: usize,
    /// The detectors, fused as the paper fuses its detectors (eq. 5): the sigmoid of the largest
    /// calibrated score. The first branch's map is the one reported.
    pub branches: Vec<Branch>,
    /// Verdict threshold on the fused calibrated score (0..1).
    pub threshold: f64,
    /// Coreset ratio used to reduce the banks, if any.
    pub coreset_ratio: Option<f32>,
    pub references: Vec<String>,
    pub validation: Vec<String>,
    pub created_by: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub header: ProfileHeader,
    /// One memory bank per branch, in the header's order.
    pub banks: Vec<MemoryBank>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("cannot read profile {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid logsad profile: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "profile {path} was built for model {expected} (sha256 {expected_sha}), but the model loaded \
         is {actual} (sha256 {actual_sha}); enroll again with this model or load the profile's model"
    )]
    WrongModel {
        path: PathBuf,
        expected: String,
        expected_sha: String,
        actual: String,
        actual_sha: String,
    },
}

impl Profile {
    pub fn save(&self, path: &Path) -> Result<(), ProfileError> {
        let header = serde_json::to_vec_pretty(&self.header).expect("profile header serialises");
        let mut out = Vec::with_capacity(32 + header.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(header.len() as u64).to_le_bytes());
        out.extend_from_slice(&header);
        for bank in &self.banks {
            let values: usize = bank.tokens.iter().map(Vec::len).sum();
            out.reserve(32 + bank.len() * 4 + values * 4);
            for n in [bank.grid_height, bank.grid_width, bank.len()] {
                out.extend_from_slice(&(n as u64).to_le_bytes());
            }
            for row in &bank.rows {
                out.extend_from_slice(&row.to_le_bytes());
            }
            out.extend_from_slice(&(values as u64).to_le_bytes());
            for v in bank.tokens.iter().flatten() {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        // Write then rename, so a reader never sees half a profile.
        let tmp = path.with_extension("tmp");
        let io = |source| ProfileError::Io {
            path: path.to_path_buf(),
            source,
        };
        std::fs::write(&tmp, &out).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    pub fn load(path: &Path) -> Result<Self, ProfileError> {
        let bytes = std::fs::read(path).map_err(|source| ProfileError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&bytes).map_err(|reason| ProfileError::Corrupt {
            path: path.to_path_buf(),
            reason,
        })
    }

    fn parse(bytes: &[u8]) -> Result<Self, String> {
        let mut reader = Reader { bytes, at: 0 };
        if reader.take(8)? != MAGIC {
            return Err("it does not start with the LOGSADPF signature".into());
        }
        let version = u32::from_le_bytes(reader.take(4)?.try_into().unwrap());
        if !(OLDEST_READABLE_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(format!(
                "format version {version}, this build reads versions \
                 {OLDEST_READABLE_VERSION} to {FORMAT_VERSION}"
            ));
        }
        if bytes.len() < 4 {
            return Err("truncated".into());
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().unwrap()) {
            return Err("checksum mismatch: the file is truncated or damaged".into());
        }
        let header_len = reader.u64()? as usize;
        let header: ProfileHeader =
            serde_json::from_slice(reader.take(header_len)?).map_err(|e| format!("header: {e}"))?;
        if header.branches.is_empty() {
            return Err("it has no detector branches".into());
        }
        let mut banks = Vec::with_capacity(header.branches.len());
        for branch in &header.branches {
            let name = &branch.spec.name;
            let bank = branch
                .spec
                .tiling
                .validate()
                .and_then(|()| read_bank(&mut reader, &header, branch.spec.pooling))
                .map_err(|e| format!("branch {name}: {e}"))?;
            banks.push(bank);
        }
        if reader.at != body.len() {
            return Err("unexpected bytes after the memory banks".into());
        }
        Ok(Profile { header, banks })
    }

    /// Fails unless the profile was built with exactly this model.
    pub fn check_model(&self, path: &Path, model: &ModelIdentity) -> Result<(), ProfileError> {
        if &self.header.model == model {
            return Ok(());
        }
        Err(ProfileError::WrongModel {
            path: path.to_path_buf(),
            expected: self.header.model.name.clone(),
            expected_sha: self.header.model.sha256.clone(),
            actual: model.name.clone(),
            actual_sha: model.sha256.clone(),
        })
    }
}

fn read_bank(
    reader: &mut Reader,
    header: &ProfileHeader,
    pooling: Pooling,
) -> Result<MemoryBank, String> {
    let grid = (reader.u64()? as usize, reader.u64()? as usize);
    let row_count = reader.u64()? as usize;
    let rows: Vec<u32> = reader
        .take(row_count.checked_mul(4).ok_or("row count overflows")?)?
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let values = reader.u64()? as usize;
    if header.stages == 0 || values == 0 || values % header.stages != 0 {
        return Err(format!(
            "{values} token values do not split into {} stages",
            header.stages
        ));
    }
    let tokens: Vec<f32> = reader
        .take(values.checked_mul(4).ok_or("bank size overflows")?)?
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    if tokens.iter().any(|v| !v.is_finite()) {
        return Err("the memory bank holds non-finite values".into());
    }
    let stages = tokens
        .chunks_exact(values / header.stages)
        .map(<[f32]>::to_vec)
        .collect();
    let (_, upsample) = pooling.bank_grid(grid, header.upsample);
    MemoryBank::from_parts(header.feature_dim, grid, upsample, stages, rows)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| format!("truncated at byte {}", self.at))?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::features::PatchFeatures;
    use crate::detect::preprocess::Resample;
    use crate::detect::tiling::Resize;

    fn sample() -> Profile {
        Profile {
            header: ProfileHeader {
                model: ModelIdentity {
                    name: "tiny".into(),
                    sha256: "ab".into(),
                },
                upsample: 2,
                feature_dim: 2,
                stages: 2,
                branches: vec![
                    Branch {
                        spec: BranchSpec::faithful(),
                        calibration: Calibration::fit(&[0.1, 0.2, 0.3]).unwrap(),
                        validation_scores: vec![0.1, 0.2, 0.3],
                    },
                    Branch {
                        spec: BranchSpec {
                            name: "other".into(),
                            tiling: Tiling {
                                rows: 2,
                                cols: 3,
                                overlap: 0.25,
                                resize: Resize::Letterbox,
                                resample: Resample::U8,
                            },
                            score: Reduction::TopKMean(3),
                            smoothing: 4.0,
                            pooling: Pooling::None,
                        },
                        calibration: Calibration::fit(&[0.5, 0.7]).unwrap(),
                        validation_scores: vec![0.5, 0.7],
                    },
                ],
                threshold: 0.95,
                coreset_ratio: None,
                references: vec!["a.png".into()],
                validation: vec!["b.png".into()],
                created_by: "test".into(),
            },
            banks: vec![bank(3), bank(1)],
        }
    }

    /// A bank of 2x1 grids of dimension 2, upsampled x2, with `blocks` blocks.
    fn bank(blocks: usize) -> MemoryBank {
        let mut bank = MemoryBank::new(2, 2, 2, 1, 2);
        for b in 0..blocks {
            let v = b as f32 + 1.0;
            bank.push(&PatchFeatures {
                grid_height: 2,
                grid_width: 1,
                upsample: 2,
                dim: 2,
                tokens: vec![vec![v, 0.5, 0.0, v], vec![0.25, v, v, 1.0]],
            });
        }
        bank.select(&[0, 3, 5])
    }

    #[test]
    fn round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.logsad");
        sample().save(&path).unwrap();
        assert_eq!(Profile::load(&path).unwrap(), sample());
    }

    #[test]
    fn rejects_damage_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.logsad");
        sample().save(&path).unwrap();
        let good = std::fs::read(&path).unwrap();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"PNG\x89 not a profile at all".to_vec(), "signature"),
            (good[..good.len() - 9].to_vec(), "checksum"),
            (
                {
                    let mut b = good.clone();
                    let n = b.len();
                    b[n - 10] ^= 0xff;
                    b
                },
                "checksum",
            ),
            (
                {
                    let mut b = good.clone();
                    b[8] = 99;
                    b
                },
                "format version 99",
            ),
            (Vec::new(), "truncated"),
        ];
        for (bytes, reason) in cases {
            std::fs::write(&path, &bytes).unwrap();
            let err = Profile::load(&path).unwrap_err().to_string();
            assert!(err.contains(reason), "{err:?} should mention {reason:?}");
            assert!(err.contains("p.logsad"), "{err:?} should name the file");
        }
    }

    #[test]
    fn reads_version_3_without_the_new_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v3.logsad");
        let profile = sample();
        profile.save(&path).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[8..12].copy_from_slice(&3u32.to_le_bytes());
        let n = bytes.len();
        let crc = crc32fast::hash(&bytes[..n - 4]);
        bytes[n - 4..].copy_from_slice(&crc.to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(Profile::load(&path).unwrap(), profile);
        // A version-3 branch, as written before resize and pooling existed.
        let spec: BranchSpec = serde_json::from_str(
            r#"{"name":"patch","tiling":{"rows":2,"cols":2,"overlap":0.0},
                "score":{"kind":"max"},"smoothing":0.0}"#,
        )
        .unwrap();
        assert_eq!(spec.pooling, Pooling::None);
        assert_eq!(spec.tiling.resize, Resize::Squash);
        // Format 3 and 4 profiles were built on 8-bit resampling and keep it; new ones record
        // theirs (the faithful default is float).
        assert_eq!(spec.tiling.resample, Resample::U8);
        assert_eq!(
            sample().header.branches[0].spec.tiling.resample,
            Resample::F32
        );
    }

    #[test]
    fn reads_version_4_as_8_bit_resampling() {
        let mut profile = sample();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v4.logsad");
        profile.save(&path).unwrap();
        // Rewrite the header as a format-4 build wrote it: no resample field.
        let bytes = std::fs::read(&path).unwrap();
        let header_len = u64::from_le_bytes(bytes[12..20].try_into().unwrap()) as usize;
        let mut header: serde_json::Value =
            serde_json::from_slice(&bytes[20..20 + header_len]).unwrap();
        for branch in header["branches"].as_array_mut().unwrap() {
            branch["spec"]["tiling"]
                .as_object_mut()
                .unwrap()
                .remove("resample")
                .unwrap();
        }
        let header = serde_json::to_vec(&header).unwrap();
        let mut old = b"LOGSADPF".to_vec();
        old.extend_from_slice(&4u32.to_le_bytes());
        old.extend_from_slice(&(header.len() as u64).to_le_bytes());
        old.extend_from_slice(&header);
        old.extend_from_slice(&bytes[20 + header_len..bytes.len() - 4]);
        let crc = crc32fast::hash(&old);
        old.extend_from_slice(&crc.to_le_bytes());
        std::fs::write(&path, &old).unwrap();
        for branch in &mut profile.header.branches {
            branch.spec.tiling.resample = Resample::U8;
        }
        assert_eq!(Profile::load(&path).unwrap(), profile);
    }

    #[test]
    fn model_check_names_both_models() {
        let p = sample();
        let other = ModelIdentity {
            name: "big".into(),
            sha256: "cd".into(),
        };
        let err = p
            .check_model(Path::new("x"), &other)
            .unwrap_err()
            .to_string();
        assert!(err.contains("tiny") && err.contains("big"), "{err}");
        assert!(p.check_model(Path::new("x"), &p.header.model).is_ok());
    }
}
