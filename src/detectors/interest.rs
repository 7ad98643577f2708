//! The interest detector (paper eq. 2-3): the frame's part instances matched one to one against
//! the union of the reference images' instances (Hungarian assignment on 1 - cosine of the
//! instances' mean features), the summed cost over min(N_frame, N_ref), averaged over stages.
//! See [`crate::detect::interest`] for the algorithm.

use crate::detect::features::PatchFeatures;
use crate::detect::interest::{embed_instances, interest_score, InstanceEmbeddings};
use crate::detect::parts::{project_instances, Instance, LabelMap};
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

/// The raw interest score of a frame's instances (of the label map `labels`) on its
/// whole-frame `features` against the reference instances; 1.0 when either side has no instance (as the reference code). Errors
/// name instances or embeddings that do not fit the features.
pub fn score(
    features: &PatchFeatures,
    labels: &LabelMap,
    instances: &[Instance],
    references: &InstanceEmbeddings,
) -> Result<f64, String> {
    let frame = embed(features, labels, instances)?;
    interest_score(&frame, references).map_err(|e| e.to_string())
}

/// The embeddings of `instances` of the label map `labels` on the frame's whole-frame
/// `features`; instances at pixel resolution are first carried onto the feature grid
/// ([`project_instances`]).
pub fn embed(
    features: &PatchFeatures,
    labels: &LabelMap,
    instances: &[Instance],
) -> Result<InstanceEmbeddings, String> {
    let on_grid = project_instances(
        instances,
        (labels.width, labels.height),
        (features.width(), features.height()),
    );
    embed_instances(features, &on_grid).map_err(|e| e.to_string())
}
