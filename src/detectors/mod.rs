//! The paper's detectors, one module each, behind one tagged spec:
//!
//! - [`patch`]: patch matching against a memory bank (paper eq. 1), structural anomalies;
//! - [`interest`]: the frame's part instances matched to the references' (eq. 2-3);
//! - [`composition`]: rules on the parts' counts, areas, pairings and positions (eq. 4).
//!
//! Each detector turns the frame's features (and, for the last two, its part layout) into a raw
//! score; the [`crate::inspector`] calibrates and fuses them (eq. 5).

pub mod composition;
pub mod interest;
pub mod patch;

use crate::detect::calibrate::Calibration;
use crate::detect::interest::InstanceEmbeddings;
use crate::detect::rules::{ReferenceStats, RuleFile};
use crate::profile::ProfileHeader;
use composition::CompositionSpec;
use interest::InterestSpec;
use patch::PatchSpec;
use serde::{Deserialize, Serialize};

/// What a detector is set to do, chosen at enrollment (see [`crate::enroll::preset`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum DetectorSpec {
    /// Patch matching (eq. 1).
    Patch(PatchSpec),
    /// Instance matching (eq. 2-3); needs the part stage.
    Interest(InterestSpec),
    /// Composition rules (eq. 4); needs the part stage.
    Composition(CompositionSpec),
}

impl DetectorSpec {
    /// Whether the detector works on the part layout.
    pub fn needs_parts(&self) -> bool {
        !matches!(self, DetectorSpec::Patch(_))
    }
}

/// What a detector learned from the reference images, with its spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Learned {
    /// A patch detector and the index of its memory bank in [`crate::profile::Profile::banks`].
    Patch { spec: PatchSpec, bank: usize },
    /// An interest detector and its bank: the union of the reference images' instances.
    Interest {
        spec: InterestSpec,
        references: InstanceEmbeddings,
    },
    /// A composition detector, its rules (learned, or read from a rule file) and the reference
    /// statistics the relative rules divide by.
    Composition {
        spec: CompositionSpec,
        rules: RuleFile,
        stats: ReferenceStats,
    },
}

/// One detector as enrolled: its spec and what it learned, its calibration and the validation
/// scores the calibration was fitted on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrolledDetector {
    pub learned: Learned,
    /// `None` for a detector whose score is not calibrated (composition).
    pub calibration: Option<Calibration>,
    /// Raw validation scores, kept so that thresholds can be re-derived without the images.
    pub validation_scores: Vec<f64>,
}

impl EnrolledDetector {
    pub fn name(&self) -> &str {
        match &self.learned {
            Learned::Patch { spec, .. } => &spec.name,
            Learned::Interest { spec, .. } => &spec.name,
            Learned::Composition { spec, .. } => &spec.name,
        }
    }

    /// Checks what a profile reader cannot check through the types.
    pub fn validate(&self, header: &ProfileHeader) -> Result<(), String> {
        let calibrated = self.calibration.is_some();
        match &self.learned {
            Learned::Patch { .. } if !calibrated => {
                Err("a patch detector without calibration".into())
            }
            Learned::Patch { .. } => Ok(()),
            Learned::Interest { references, .. } => {
                let parts = header
                    .parts
                    .as_ref()
                    .ok_or("an interest detector without parts")?;
                if !calibrated {
                    return Err("an interest detector without calibration".into());
                }
                references.validate().map_err(|e| e.to_string())?;
                if references.stages.len() != header.stages || references.dim != header.feature_dim
                {
                    return Err(format!(
                        "reference instances of {} stages of dimension {}, the profile's model has \
                         {} of {}",
                        references.stages.len(),
                        references.dim,
                        header.stages,
                        header.feature_dim
                    ));
                }
                parts.validate().map_err(|e| e.to_string())
            }
            Learned::Composition { rules, .. } => {
                let parts = header
                    .parts
                    .as_ref()
                    .ok_or("a composition detector without parts")?;
                let count = parts.parts();
                match rules
                    .parts
                    .iter()
                    .find(|(_, &index)| index as usize >= count)
                {
                    Some((name, index)) => Err(format!(
                        "rule part {name} is part {index}, the profile has {count} parts"
                    )),
                    None => Ok(()),
                }
            }
        }
    }
}

/// One detector's scores on one frame.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DetectorScore {
    pub name: String,
    /// Raw score in the detector's own units (composition: the number of fired rules).
    pub raw: f64,
    /// sigmoid of the calibrated score (composition: 1.0 when a rule fired, else 0.0).
    pub calibrated: f64,
}
