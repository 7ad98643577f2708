//! `anomalypublish`: writes one JSON line per buffer describing its anomaly result.
//!
//! See the element documentation in [`imp`] for the properties and the line format.

use gst::glib;
use gst::prelude::*;

mod backlog;
mod imp;
mod mqtt;

glib::wrapper! {
    /// Passthrough element writing the anomaly metadata of every buffer as JSON lines.
    pub struct AnomalyPublish(ObjectSubclass<imp::AnomalyPublish>)
        @extends gst_base::BaseTransform, gst::Element, gst::Object;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(
        Some(plugin),
        "anomalypublish",
        gst::Rank::NONE,
        AnomalyPublish::static_type(),
    )
}
