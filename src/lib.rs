#![allow(clippy::non_send_fields_in_send_ty)]
//! gst-logsad: training-free anomaly detection (LogSAD) as GStreamer elements.
//!
//! The GStreamer-free parts (`detect`, `engine`, `profile`) are also used by the `logsad`
//! command line tool.

use gst::glib;

pub mod detect;
pub mod detectors;
pub mod engine;
pub mod enroll;
pub mod eval;
pub mod fsname;
pub mod glyphs;
pub mod imageio;
pub mod inspector;
pub mod meta;
pub mod profile;
pub mod sync;
pub mod synth;
pub mod utc;
pub mod worker;

mod anomalyoverlay;
mod anomalypublish;
mod anomalyrecord;
mod logsad;

fn plugin_init(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    meta::register();
    logsad::register(plugin)?;
    anomalyoverlay::register(plugin)?;
    anomalypublish::register(plugin)?;
    anomalyrecord::register(plugin)?;
    Ok(())
}

gst::plugin_define!(
    logsad,
    env!("CARGO_PKG_DESCRIPTION"),
    plugin_init,
    concat!(env!("CARGO_PKG_VERSION"), "-", env!("COMMIT_ID")),
    "MIT/X11",
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_REPOSITORY"),
    env!("BUILD_REL_DATE")
);
