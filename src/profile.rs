//! The enrolled reference set on disk: everything the detector needs at run time.
//!
//! File layout (little-endian): magic `LOGSADPF`, u32 format version, u64 header length, the
//! header as JSON, u64 count of memory banks (format 6 on; before, one bank per branch), then each memory bank (u64 token grid height and width,
//! u64 row count and the rows as u32, u64 token value count and the raw tokens as f32, stage
//! after stage), and a CRC-32 of everything before it. A truncated, corrupt or foreign file fails to load with a message
//! saying which part is wrong.

use crate::detect::calibrate::Calibration;
use crate::detect::parts::PartModel;
use crate::detect::patch::MemoryBank;
pub use crate::detectors::patch::{PatchSpec, Pooling};
pub use crate::detectors::{EnrolledDetector, Learned};
use crate::engine::ModelIdentity;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"LOGSADPF";
/// Version 4 added a tile's resize, a branch's pooling and the calibration method; version 5 a
/// tile's resampling (float by default, where every earlier profile resampled 8-bit pixels);
/// version 6 replaced the patch branches with tagged detectors (patch, interest, composition)
/// that name their bank, the count of banks after the header, and the learned parts. An older
/// build must refuse such a file rather than read it without them.
pub const FORMAT_VERSION: u32 = 6;
/// Version 3 and 4 files lack only those fields, which default to the behaviour they were built
/// with: the reference's squash, no pooling, mean-std, and 8-bit resampling.
const OLDEST_READABLE_VERSION: u32 = 3;

/// How the profile was built and is to be applied; stored as the file's JSON header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProfileHeader {
    /// The backbone the banks were computed with; checked against the model at load time.
    pub model: ModelIdentity,
    /// Token grid upsampling factor before matching (2 in the reference).
    pub upsample: usize,
    pub feature_dim: usize,
    pub stages: usize,
    /// The detectors, fused as the paper fuses them (eq. 5): the sigmoid of the largest
    /// calibrated score, or 1.0 when a composition rule fired. The first patch detector's map
    /// is the one reported.
    pub detectors: Vec<EnrolledDetector>,
    /// The parts of the product learned from the references (interest and composition
    /// detectors); the part stage runs on the whole-frame features at the model's input size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parts: Option<PartModel>,
    /// Verdict threshold on the fused calibrated score (0..1).
    pub threshold: f64,
    /// Coreset ratio used to reduce the banks, if any.
    pub coreset_ratio: Option<f32>,
    pub references: Vec<String>,
    pub validation: Vec<String>,
    pub created_by: String,
}

impl ProfileHeader {
    /// The patch detectors with their bank indices, in order.
    pub fn patch_detectors(&self) -> impl Iterator<Item = (&EnrolledDetector, &PatchSpec, usize)> {
        self.detectors.iter().filter_map(|d| match &d.learned {
            Learned::Patch { spec, bank } => Some((d, spec, *bank)),
            _ => None,
        })
    }
}

/// The header of format 3 to 5 profiles: patch detector branches, one bank each.
#[derive(Deserialize)]
struct LegacyHeader {
    model: ModelIdentity,
    upsample: usize,
    feature_dim: usize,
    stages: usize,
    branches: Vec<LegacyBranch>,
    threshold: f64,
    coreset_ratio: Option<f32>,
    references: Vec<String>,
    validation: Vec<String>,
    created_by: String,
}

#[derive(Deserialize)]
struct LegacyBranch {
    spec: PatchSpec,
    calibration: Calibration,
    validation_scores: Vec<f64>,
}

impl From<LegacyHeader> for ProfileHeader {
    fn from(old: LegacyHeader) -> Self {
        ProfileHeader {
            model: old.model,
            upsample: old.upsample,
            feature_dim: old.feature_dim,
            stages: old.stages,
            detectors: old
                .branches
                .into_iter()
                .enumerate()
                .map(|(bank, b)| EnrolledDetector {
                    learned: Learned::Patch { spec: b.spec, bank },
                    calibration: Some(b.calibration),
                    validation_scores: b.validation_scores,
                })
                .collect(),
            parts: None,
            threshold: old.threshold,
            coreset_ratio: old.coreset_ratio,
            references: old.references,
            validation: old.validation,
            created_by: old.created_by,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub header: ProfileHeader,
    /// The patch detectors' memory banks; a detector names its bank by index, so a bank that
    /// two detectors share is stored once.
    pub banks: Vec<MemoryBank>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// The OS error is part of the message, not a `source`, so that error chains (`{:#}`)
    /// do not print it twice.
    #[error("cannot read profile {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
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
        out.extend_from_slice(&(self.banks.len() as u64).to_le_bytes());
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
        let io = |error| ProfileError::Io {
            path: path.to_path_buf(),
            error,
        };
        std::fs::write(&tmp, &out).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    pub fn load(path: &Path) -> Result<Self, ProfileError> {
        let bytes = std::fs::read(path).map_err(|error| ProfileError::Io {
            path: path.to_path_buf(),
            error,
        })?;
        Self::parse(&bytes).map_err(|reason| ProfileError::Corrupt {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// The model a profile file was built with, read from its header alone (the banks, often
    /// megabytes, are not read or checked; [`Profile::load`] checks everything). Errors name
    /// the file and what is wrong with its start.
    pub fn recorded_model(path: &Path) -> Result<ModelIdentity, ProfileError> {
        use std::io::Read;
        let corrupt = |reason: String| ProfileError::Corrupt {
            path: path.to_path_buf(),
            reason,
        };
        let io = |error| ProfileError::Io {
            path: path.to_path_buf(),
            error,
        };
        let mut file = std::fs::File::open(path).map_err(io)?;
        let mut start = [0u8; 20];
        file.read_exact(&mut start)
            .map_err(|_| corrupt("truncated before the header".into()))?;
        if &start[..8] != MAGIC {
            return Err(corrupt(
                "it does not start with the LOGSADPF signature".into(),
            ));
        }
        // Bytes 8..12 hold the format version; every version records the model the same way.
        let header_len = u64::from_le_bytes(start[12..20].try_into().unwrap());
        let file_len = file.metadata().map_err(io)?.len();
        if header_len > file_len {
            return Err(corrupt(format!(
                "a header of {header_len} bytes does not fit in the file"
            )));
        }
        let mut header = vec![0u8; header_len as usize];
        file.read_exact(&mut header)
            .map_err(|_| corrupt("truncated in the header".into()))?;
        #[derive(Deserialize)]
        struct ModelOnly {
            model: ModelIdentity,
        }
        serde_json::from_slice::<ModelOnly>(&header)
            .map(|h| h.model)
            .map_err(|e| corrupt(format!("header: {e}")))
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
        let header_bytes = reader.take(header_len)?;
        let (header, bank_count) = if version >= 6 {
            let header: ProfileHeader =
                serde_json::from_slice(header_bytes).map_err(|e| format!("header: {e}"))?;
            (header, reader.u64()? as usize)
        } else {
            let header: LegacyHeader =
                serde_json::from_slice(header_bytes).map_err(|e| format!("header: {e}"))?;
            let count = header.branches.len();
            (ProfileHeader::from(header), count)
        };
        // Every bank takes at least its four u64 counts: a count beyond that is damage (and
        // must not size an allocation).
        let remaining = bytes.len().saturating_sub(reader.at + 4);
        if bank_count > remaining / 32 {
            return Err(format!(
                "{bank_count} memory banks do not fit in the {remaining} bytes left"
            ));
        }
        if header.patch_detectors().next().is_none() {
            return Err("it has no patch detector".into());
        }
        // Every bank is read with the pooling of the (first) patch detector that uses it.
        let mut poolings: Vec<Option<Pooling>> = vec![None; bank_count];
        for (_, spec, bank) in header.patch_detectors() {
            spec.tiling
                .validate()
                .map_err(|e| format!("detector {}: {e}", spec.name))?;
            let slot = poolings.get_mut(bank).ok_or_else(|| {
                format!(
                    "detector {} uses bank {bank}, the file has {bank_count}",
                    spec.name
                )
            })?;
            slot.get_or_insert(spec.pooling);
        }
        let mut banks = Vec::with_capacity(bank_count);
        for (index, pooling) in poolings.into_iter().enumerate() {
            let pooling = pooling.ok_or_else(|| format!("bank {index} is used by no detector"))?;
            let bank = read_bank(&mut reader, &header, pooling)
                .map_err(|e| format!("bank {index}: {e}"))?;
            banks.push(bank);
        }
        for detector in &header.detectors {
            detector
                .validate(&header)
                .map_err(|e| format!("detector {}: {e}", detector.name()))?;
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
    use crate::detect::score::Reduction;
    use crate::detect::tiling::{Resize, Tiling};

    fn patch(spec: PatchSpec, bank: usize, scores: &[f64]) -> EnrolledDetector {
        EnrolledDetector {
            learned: Learned::Patch { spec, bank },
            calibration: Some(Calibration::fit(scores).unwrap()),
            validation_scores: scores.to_vec(),
        }
    }

    fn other_spec() -> PatchSpec {
        PatchSpec {
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
            neighbourhood: crate::detect::tiling::Neighbourhood::Within(1),
        }
    }

    /// Two patch detectors with a bank each.
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
                detectors: vec![
                    patch(PatchSpec::faithful(), 0, &[0.1, 0.2, 0.3]),
                    patch(other_spec(), 1, &[0.5, 0.7]),
                ],
                parts: None,
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
    fn a_bank_shared_by_two_detectors_is_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let (one, two) = (dir.path().join("one"), dir.path().join("two"));
        let mut profile = sample();
        profile.header.detectors.truncate(1);
        profile.banks.truncate(1);
        profile.save(&one).unwrap();
        let mut shared = PatchSpec::faithful();
        shared.name = "patch-mean".into();
        shared.score = Reduction::Mean;
        profile.header.detectors.push(patch(shared, 0, &[0.2, 0.4]));
        profile.save(&two).unwrap();
        // The file holds one bank: the second file's bytes after its header are the first's.
        let banks = |p: &Path| {
            let bytes = std::fs::read(p).unwrap();
            let header_len = u64::from_le_bytes(bytes[12..20].try_into().unwrap()) as usize;
            bytes[20 + header_len..bytes.len() - 4].to_vec()
        };
        assert_eq!(banks(&one), banks(&two));
        let back = Profile::load(&two).unwrap();
        assert_eq!(back.banks.len(), 1);
        assert_eq!(back, profile);
        // A detector naming a bank the file lacks is refused.
        profile
            .header
            .detectors
            .push(patch(PatchSpec::faithful(), 5, &[0.2, 0.4]));
        profile.save(&two).unwrap();
        let err = Profile::load(&two).unwrap_err().to_string();
        assert!(err.contains("uses bank 5, the file has 1"), "{err}");
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

    /// `profile` as a format 3 to 5 build wrote it: patch branches with a bank each, no bank
    /// count; `edit` changes each branch's JSON first.
    fn legacy_file(
        profile: &Profile,
        version: u32,
        edit: impl Fn(&mut serde_json::Value),
    ) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p");
        profile.save(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let header_len = u64::from_le_bytes(bytes[12..20].try_into().unwrap()) as usize;
        let header: serde_json::Value =
            serde_json::from_slice(&bytes[20..20 + header_len]).unwrap();
        let mut old = header.clone();
        let branches: Vec<serde_json::Value> = header["detectors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                let mut spec = d["learned"]["spec"].clone();
                edit(&mut spec);
                serde_json::json!({
                    "spec": spec,
                    "calibration": d["calibration"],
                    "validation_scores": d["validation_scores"],
                })
            })
            .collect();
        let object = old.as_object_mut().unwrap();
        object.remove("detectors");
        object.insert("branches".into(), branches.into());
        let old_header = serde_json::to_vec(&old).unwrap();
        let mut out = b"LOGSADPF".to_vec();
        out.extend_from_slice(&version.to_le_bytes());
        out.extend_from_slice(&(old_header.len() as u64).to_le_bytes());
        out.extend_from_slice(&old_header);
        // The banks, without the count that format 6 puts before them.
        out.extend_from_slice(&bytes[20 + header_len + 8..bytes.len() - 4]);
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    #[test]
    fn reads_version_5_branches_as_patch_detectors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v5.logsad");
        std::fs::write(&path, legacy_file(&sample(), 5, |_| {})).unwrap();
        assert_eq!(Profile::load(&path).unwrap(), sample());
    }

    #[test]
    fn reads_version_3_without_the_new_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v3.logsad");
        // A version-3 branch, as written before resize, resampling and pooling existed.
        let bytes = legacy_file(&sample(), 3, |spec| {
            let object = spec.as_object_mut().unwrap();
            object.remove("pooling");
            let tiling = object["tiling"].as_object_mut().unwrap();
            tiling.remove("resize");
            tiling.remove("resample");
        });
        std::fs::write(&path, bytes).unwrap();
        let loaded = Profile::load(&path).unwrap();
        let (_, spec, _) = loaded.header.patch_detectors().nth(1).unwrap();
        assert_eq!(spec.pooling, Pooling::None);
        assert_eq!(spec.tiling.resize, Resize::Squash);
        // Format 3 and 4 profiles were built on 8-bit resampling and keep it; new ones record
        // theirs (the faithful default is float).
        assert_eq!(spec.tiling.resample, Resample::U8);
        assert_eq!(PatchSpec::faithful().tiling.resample, Resample::F32);
    }

    #[test]
    fn reads_version_4_as_8_bit_resampling() {
        let mut profile = sample();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v4.logsad");
        let bytes = legacy_file(&profile, 4, |spec| {
            spec["tiling"]
                .as_object_mut()
                .unwrap()
                .remove("resample")
                .unwrap();
        });
        std::fs::write(&path, bytes).unwrap();
        for detector in &mut profile.header.detectors {
            if let Learned::Patch { spec, .. } = &mut detector.learned {
                spec.tiling.resample = Resample::U8;
            }
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

    /// The profile reader on damaged input: random bytes, and a valid file with bytes flipped,
    /// cut or inserted anywhere (the checksum made right again, so that the damage reaches the
    /// header and bank readers) never panic. `PROPTEST_CASES` sets the number of cases (default 256);
    /// `PROPTEST_CASES=1000000 cargo test --release --locked --lib profile::tests::fuzz`.
    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        fn config() -> ProptestConfig {
            let cases = std::env::var("PROPTEST_CASES")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(256);
            ProptestConfig {
                cases,
                failure_persistence: None,
                ..ProptestConfig::default()
            }
        }

        fn valid_bytes() -> Vec<u8> {
            static BYTES: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
            BYTES
                .get_or_init(|| {
                    let dir = tempfile::tempdir().unwrap();
                    let path = dir.path().join("p");
                    sample().save(&path).unwrap();
                    std::fs::read(&path).unwrap()
                })
                .clone()
        }

        /// Parses `bytes` with the checksum made right, so that the damage reaches the header
        /// and bank readers instead of stopping at the checksum.
        fn parse_resealed(mut bytes: Vec<u8>) {
            if bytes.len() >= 4 {
                let n = bytes.len() - 4;
                let crc = crc32fast::hash(&bytes[..n]);
                bytes[n..].copy_from_slice(&crc.to_le_bytes());
            }
            let _ = Profile::parse(&bytes);
        }

        proptest! {
            #![proptest_config(config())]

            #[test]
            fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
                let _ = Profile::parse(&bytes);
                let mut signed = b"LOGSADPF\x06\0\0\0".to_vec();
                signed.extend_from_slice(&bytes);
                parse_resealed(signed);
            }

            #[test]
            fn damaged_profiles_never_panic(
                edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 1..6)
            ) {
                let mut bytes = valid_bytes();
                for (at, value, how) in edits {
                    if bytes.is_empty() {
                        break;
                    }
                    let at = at % bytes.len();
                    match how {
                        0 => bytes[at] ^= value | 1,
                        1 => bytes.truncate(at),
                        _ => bytes.insert(at, value),
                    }
                }
                parse_resealed(bytes);
            }
        }
    }
}
