//! GStreamer-free algorithms: deinterlacing, preprocessing, patch features, nearest-neighbour
//! matching, interest matching, coreset, calibration, copies among enrollment inputs, tiling,
//! regions and metrics.
pub mod calibrate;
pub mod copies;
pub mod coreset;
pub mod deinterlace;
pub mod features;
pub mod interest;
pub mod metrics;
pub mod parts;
pub mod patch;
pub mod preprocess;
pub mod regions;
pub mod resize;
pub mod rules;
pub mod score;
pub mod tiling;
