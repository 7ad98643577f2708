//! `anomalyrecord`: keeps the last seconds of encoded video and writes one clip per anomalous
//! event, from the verdicts `logsad` attached.
//!
//! See the element documentation in [`imp`] for the properties, the clip rules and the index;
//! the planning itself, GStreamer-free, is [`plan`].

use gst::glib;
use gst::prelude::*;

mod imp;
pub(crate) mod plan;

glib::wrapper! {
    /// Sink writing one playable clip per anomalous event, with a JSON-lines index.
    pub struct AnomalyRecord(ObjectSubclass<imp::AnomalyRecord>)
        @extends gst_base::BaseSink, gst::Element, gst::Object;
}

/// The container of the clips (`container` property).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstAnomalyRecordContainer")]
pub enum Container {
    /// MP4 (`mp4mux`), `.mp4`.
    #[default]
    #[enum_value(name = "MP4 (mp4mux), .mp4", nick = "mp4")]
    Mp4 = 0,
    /// Matroska (`matroskamux`), `.mkv`.
    #[enum_value(name = "Matroska (matroskamux), .mkv", nick = "matroska")]
    Matroska = 1,
}

impl Container {
    /// The muxer's factory name.
    fn muxer(self) -> &'static str {
        match self {
            Container::Mp4 => "mp4mux",
            Container::Matroska => "matroskamux",
        }
    }

    /// The file extension, without the dot.
    fn extension(self) -> &'static str {
        match self {
            Container::Mp4 => "mp4",
            Container::Matroska => "mkv",
        }
    }
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(
        Some(plugin),
        "anomalyrecord",
        gst::Rank::NONE,
        AnomalyRecord::static_type(),
    )
}
