//! GStreamer-free algorithms: deinterlacing, preprocessing, patch features, nearest-neighbour
//! matching, interest matching, coreset, calibration, copies among enrollment inputs, tiling,
//! regions, segmentation (the mask generator), metrics and the arithmetic cost of a frame.
pub mod calibrate;
pub mod copies;
pub mod coreset;
pub mod cost;
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
pub mod segment;
pub mod tiling;
