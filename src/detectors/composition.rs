//! The composition detector (paper eq. 4): declarative rules on the frame's part layout
//! (counts, areas, class pairings, positions, ...; see [`crate::detect::rules`]). A fired rule
//! sets the final score to 1.0; the detector is not calibrated.

use crate::detect::parts::Instance;
use crate::detect::rules::{evaluate, FiredRule, FrameLayout, ReferenceStats, RuleFile};
use serde::{Deserialize, Serialize};

/// A composition detector's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompositionSpec {
    /// Reported as the detector's name in metadata, e.g. "composition".
    pub name: String,
}

impl Default for CompositionSpec {
    fn default() -> Self {
        CompositionSpec {
            name: "composition".into(),
        }
    }
}

/// The name of the rule that fires when the part stage finds no instance of any part.
pub const NO_PARTS_RULE: &str = "parts";

/// The rules that fire on a frame's layout. A frame without any part instance fires
/// [`NO_PARTS_RULE`] (the interest detector cannot match it either).
pub fn fired_rules(
    rules: &RuleFile,
    stats: &ReferenceStats,
    layout: &FrameLayout,
) -> Vec<FiredRule> {
    let mut fired = evaluate(rules, layout, stats);
    if layout.instances.is_empty() {
        fired.insert(
            0,
            FiredRule {
                name: NO_PARTS_RULE.into(),
                measured: 0.0,
                min: 1.0,
                max: f64::INFINITY,
                message: "no part found: 0 instances of any part".into(),
                parts: Vec::new(),
            },
        );
    }
    fired
}

/// The instances of the parts a fired rule concerns.
pub fn instances_of<'a>(rule: &FiredRule, instances: &'a [Instance]) -> Vec<&'a Instance> {
    instances
        .iter()
        .filter(|i| rule.parts.contains(&i.part))
        .collect()
}
