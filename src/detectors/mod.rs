//! The paper's detectors, one module each, behind one tagged spec:
//!
//! - [`patch`]: patch matching against a memory bank (paper eq. 1), structural anomalies;
//!
//! Each detector turns the frame's features into a raw score; the [`crate::inspector`] calibrates
//! and fuses them (eq. 5).

pub mod patch;

use crate::detect::calibrate::Calibration;
use crate::profile::ProfileHeader;
use patch::PatchSpec;
use serde::{Deserialize, Serialize};

/// What a detector is set to do, chosen at enrollment (see [`crate::enroll::preset`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum DetectorSpec {
    /// Patch matching (eq. 1).
    Patch(PatchSpec),
}

impl DetectorSpec {
    /// The name reported in metadata.
    pub fn name(&self) -> &str {
        match self {
            DetectorSpec::Patch(spec) => &spec.name,
        }
    }
}

/// What a detector learned from the reference images, with its spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Learned {
    /// A patch detector and the index of its memory bank in [`crate::profile::Profile::banks`].
    Patch { spec: PatchSpec, bank: usize },
}

/// One detector as enrolled: its spec and what it learned, its calibration and the validation
/// scores the calibration was fitted on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrolledDetector {
    pub learned: Learned,
    /// `None` for a detector whose score is not calibrated.
    pub calibration: Option<Calibration>,
    /// Raw validation scores, kept so that thresholds can be re-derived without the images.
    pub validation_scores: Vec<f64>,
}

impl EnrolledDetector {
    pub fn name(&self) -> &str {
        match &self.learned {
            Learned::Patch { spec, .. } => &spec.name,
        }
    }

    /// The spec alone.
    pub fn spec(&self) -> DetectorSpec {
        match &self.learned {
            Learned::Patch { spec, .. } => DetectorSpec::Patch(spec.clone()),
        }
    }

    /// Checks what a profile reader cannot check through the types.
    pub fn validate(&self, header: &ProfileHeader) -> Result<(), String> {
        let _ = header;
        match &self.learned {
            Learned::Patch { .. } if self.calibration.is_none() => {
                Err("a patch detector without calibration".into())
            }
            Learned::Patch { .. } => Ok(()),
        }
    }
}

/// One detector's scores on one frame.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DetectorScore {
    pub name: String,
    /// Raw score in the detector's own units.
    pub raw: f64,
    /// sigmoid of the calibrated score (1.0 or 0.0 for the composition detector: a rule fired
    /// or not).
    pub calibrated: f64,
}
