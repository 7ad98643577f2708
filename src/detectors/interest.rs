//! The interest detector (paper eq. 2-3): the frame's part instances matched one to one against
//! the union of the reference images' instances (Hungarian assignment on 1 - cosine of the
//! instances' mean features), the summed cost over min(N_frame, N_ref), averaged over stages.
//! See [`crate::detect::interest`] for the algorithm.

use crate::detect::features::PatchFeatures;
use crate::detect::interest::{embed_instances, interest_score, InstanceEmbeddings};
use crate::detect::parts::Instance;
use serde::{Deserialize, Serialize};

/// An interest detector's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InterestSpec {
    /// Reported as the detector's name in metadata, e.g. "interest".
    pub name: String,
}

impl Default for InterestSpec {
    fn default() -> Self {
        InterestSpec {
            name: "interest".into(),
        }
    }
}

/// The raw interest score of a frame's instances on its whole-frame `features` against the
/// reference instances; 1.0 when either side has no instance (as the reference code). Errors
/// name instances or embeddings that do not fit the features.
pub fn score(
    features: &PatchFeatures,
    instances: &[Instance],
    references: &InstanceEmbeddings,
) -> Result<f64, String> {
    let frame = embed_instances(features, instances).map_err(|e| e.to_string())?;
    interest_score(&frame, references).map_err(|e| e.to_string())
}
