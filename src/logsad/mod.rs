//! The `logsad` detector element.

use gst::glib;
use gst::prelude::*;

mod convert;
mod flight;
mod imp;

glib::wrapper! {
    pub struct Logsad(ObjectSubclass<imp::Logsad>) @extends gst::Element, gst::Object;
}

/// Where inference runs; mirrors [`crate::engine::Device`] as a GStreamer enum.
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstLogsadDevice")]
pub enum LogsadDevice {
    #[default]
    #[enum_value(name = "CPU", nick = "cpu")]
    Cpu = 0,
    #[enum_value(name = "CUDA (falls back to CPU when unavailable)", nick = "cuda")]
    Cuda = 1,
    #[enum_value(
        name = "TensorRT (falls back to CUDA, then CPU, when unavailable)",
        nick = "tensorrt"
    )]
    Tensorrt = 2,
}

impl From<LogsadDevice> for crate::engine::Device {
    fn from(d: LogsadDevice) -> Self {
        match d {
            LogsadDevice::Cpu => crate::engine::Device::Cpu,
            LogsadDevice::Cuda => crate::engine::Device::Cuda,
            LogsadDevice::Tensorrt => crate::engine::Device::Tensorrt,
        }
    }
}

/// What to do with a frame that arrives while `max-in-flight` frames are being analysed.
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstLogsadDropPolicy")]
pub enum LogsadDropPolicy {
    #[default]
    #[enum_value(
        name = "skip with a live source, wait with any other (such as a file)",
        nick = "auto"
    )]
    Auto = 0,
    #[enum_value(
        name = "Pass it on unanalysed, marked skipped=busy: latency stays bounded",
        nick = "skip"
    )]
    Skip = 1,
    #[enum_value(
        name = "Block upstream until there is room: every frame analysed",
        nick = "wait"
    )]
    Wait = 2,
}

/// Whose peak the `region-peak-fraction` refers to; mirrors
/// [`crate::detect::regions::PeakScope`] as a GStreamer enum.
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstLogsadPeakScope")]
pub enum LogsadPeakScope {
    #[default]
    #[enum_value(
        name = "The frame's highest cell: only responses near the strongest",
        nick = "frame"
    )]
    Frame = 0,
    #[enum_value(
        name = "Each region's own peak: a box for every defect",
        nick = "region"
    )]
    Region = 1,
}

impl From<LogsadPeakScope> for crate::detect::regions::PeakScope {
    fn from(s: LogsadPeakScope) -> Self {
        match s {
            LogsadPeakScope::Frame => crate::detect::regions::PeakScope::Frame,
            LogsadPeakScope::Region => crate::detect::regions::PeakScope::Region,
        }
    }
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(
        Some(plugin),
        "logsad",
        gst::Rank::NONE,
        Logsad::static_type(),
    )
}
