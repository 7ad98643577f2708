//! `anomalyoverlay`: draws the anomaly results attached by `logsad` onto the video.
//!
//! See [`imp`] for the element documentation.

use gst::glib;
use gst::prelude::*;

mod imp;

/// Perceptual colour map used to colourise the anomaly heat map.
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstAnomalyOverlayColormap")]
pub enum Colormap {
    #[enum_value(name = "Inferno: black, purple, orange, pale yellow", nick = "inferno")]
    Inferno = 0,
    #[enum_value(name = "Viridis: dark blue, green, yellow", nick = "viridis")]
    Viridis = 1,
    #[enum_value(name = "Magma: black, purple, pink, pale yellow", nick = "magma")]
    Magma = 2,
    #[enum_value(name = "Turbo: blue, cyan, green, yellow, red", nick = "turbo")]
    Turbo = 3,
}

glib::wrapper! {
    pub struct AnomalyOverlay(ObjectSubclass<imp::AnomalyOverlay>)
        @extends gst_video::VideoFilter, gst_base::BaseTransform, gst::Element, gst::Object;
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    Colormap::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    gst::Element::register(
        Some(plugin),
        "anomalyoverlay",
        gst::Rank::NONE,
        AnomalyOverlay::static_type(),
    )
}
