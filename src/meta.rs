//! The anomaly metadata that travels with each buffer.
//!
//! It is a `GstCustomMeta` named [`META_NAME`] whose `GstStructure` holds plain fields, so C code
//! (`gst_buffer_get_custom_meta` + `gst_custom_meta_get_structure`) and Python pad probes
//! (`buffer.get_custom_meta("LogsadAnomalyMeta").get_structure()`) read it without our Rust types.
//!
//! Fields of the structure (name `logsad/anomaly`):
//! - `score` (double): fused raw score; `calibrated` (double): sigmoid of the calibrated score;
//! - `anomalous` (boolean): `calibrated >= threshold`; `threshold` (double);
//! - `stale` (boolean): true when this frame was not analysed (see the `interval` property) and
//!   carries the result of frame `frame`; `frame` (guint64): the frame the result was computed on;
//! - `detectors` (string): comma separated detector names; for each name N, `N-score` and
//!   `N-calibrated` (double);
//! - `map-width`, `map-height` (guint) and `map` (GBytes): the anomaly map, row-major native-endian
//!   float32, covering the whole frame, in raw score units (same units as `score`);
//! - `map-threshold` (double): the raw map value at which a cell counts as anomalous;
//! - `deinterlaced` (boolean): the analysed frame was interlaced and deinterlaced (bob) first;
//! - `regions` (`GstValueArray` of `GstStructure`s named `region`): the connected regions above
//!   `map-threshold`, strongest first, each with `x`, `y`, `width`, `height` (double, relative to
//!   the frame: 0..1 of its width or height, so they hold after scaling) and `score` (double, the
//!   region's peak map value, raw score units). C reads it with `gst_structure_get_value` and
//!   `gst_value_array_get_size`/`gst_value_array_get_value`/`gst_value_get_structure`; Python
//!   (PyGObject, no gst-python needed) with `structure.get_array("regions")`, whose
//!   `GObject.ValueArray` gives each `Gst.Structure` through `get_nth(i)`. Absent from metas
//!   written by older versions (readers then fall back to the region-of-interest metas).

use gst::glib;

/// Name under which the custom meta is registered.
pub const META_NAME: &str = "LogsadAnomalyMeta";
const STRUCTURE_NAME: &str = "logsad/anomaly";
/// The region-of-interest type of anomaly regions, and the name of their parameter structure.
pub const ROI_TYPE: &str = "anomaly";
/// Name of each structure in the `regions` array.
const REGION_STRUCTURE_NAME: &str = "region";

/// Registers the custom meta; safe to call more than once.
pub fn register() {
    if !gst::meta::CustomMeta::is_registered(META_NAME) {
        // Tagged "video" only: the map covers the whole frame in relative coordinates, so it stays
        // valid through colour conversion and scaling, and elements such as videoconvert keep it.
        gst::meta::CustomMeta::register(META_NAME, &["video"]);
    }
}

pub use crate::detectors::DetectorScore;
use crate::inspector::FrameResult;

/// An anomaly map: `width * height` float32 values, row-major, covering the whole frame.
#[derive(Debug, Clone)]
pub struct AnomalyMap {
    pub width: u32,
    pub height: u32,
    /// Native-endian float32 values; reference counted so that carried results share it.
    pub data: glib::Bytes,
}

impl AnomalyMap {
    pub fn from_values(width: u32, height: u32, values: &[f32]) -> Self {
        assert_eq!(values.len(), (width * height) as usize, "map size mismatch");
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_ne_bytes()).collect();
        AnomalyMap {
            width,
            height,
            data: glib::Bytes::from_owned(bytes),
        }
    }

    pub fn values(&self) -> Vec<f32> {
        self.data
            .chunks_exact(4)
            .map(|c| f32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }
}

/// An anomalous region of the frame, in coordinates relative to the frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AnomalyRegion {
    /// Left edge, as a fraction of the frame width (0..1).
    pub x: f64,
    /// Top edge, as a fraction of the frame height (0..1).
    pub y: f64,
    /// Width, as a fraction of the frame width.
    pub width: f64,
    /// Height, as a fraction of the frame height.
    pub height: f64,
    /// The region's peak map value (raw score units).
    pub score: f64,
}

impl AnomalyRegion {
    /// The region of the pixel rectangle `(x, y, w, h)` of a `frame_w` x `frame_h` frame.
    pub fn from_pixels(rect: (u32, u32, u32, u32), frame_w: u32, frame_h: u32, score: f64) -> Self {
        let (fw, fh) = (frame_w.max(1) as f64, frame_h.max(1) as f64);
        AnomalyRegion {
            x: rect.0 as f64 / fw,
            y: rect.1 as f64 / fh,
            width: rect.2 as f64 / fw,
            height: rect.3 as f64 / fh,
            score,
        }
    }

    /// The pixel rectangle `(x, y, w, h)` of this region in a `frame_w` x `frame_h` frame: each
    /// edge rounded to the nearest pixel and clipped to the frame (so a region stays put when
    /// the frame size did not change). Non-finite coordinates give an empty rectangle.
    pub fn to_pixels(&self, frame_w: u32, frame_h: u32) -> (u32, u32, u32, u32) {
        let edge = |v: f64, size: u32| {
            if v.is_finite() {
                (v * size as f64).round().clamp(0.0, size as f64) as u32
            } else {
                0
            }
        };
        let (x0, y0) = (edge(self.x, frame_w), edge(self.y, frame_h));
        let x1 = edge(self.x + self.width, frame_w).max(x0);
        let y1 = edge(self.y + self.height, frame_h).max(y0);
        (x0, y0, x1 - x0, y1 - y0)
    }

    fn to_structure(self) -> gst::Structure {
        gst::Structure::builder(REGION_STRUCTURE_NAME)
            .field("x", self.x)
            .field("y", self.y)
            .field("width", self.width)
            .field("height", self.height)
            .field("score", self.score)
            .build()
    }

    fn from_value(value: &glib::SendValue) -> Result<Self, glib::BoolError> {
        let s = value
            .get::<gst::Structure>()
            .map_err(|e| glib::bool_error!("anomaly meta field regions: {e}"))?;
        let field = |name: &str| {
            s.get::<f64>(name)
                .map_err(|e| glib::bool_error!("anomaly meta field regions, {name}: {e}"))
        };
        Ok(AnomalyRegion {
            x: field("x")?,
            y: field("y")?,
            width: field("width")?,
            height: field("height")?,
            score: field("score")?,
        })
    }
}

/// The result of analysing one frame, as attached to buffers.
#[derive(Debug, Clone)]
pub struct AnomalyResult {
    pub score: f64,
    pub calibrated: f64,
    pub anomalous: bool,
    pub threshold: f64,
    pub stale: bool,
    pub frame: u64,
    pub detectors: Vec<DetectorScore>,
    pub map: Option<AnomalyMap>,
    pub map_threshold: f64,
    /// Whether the analysed frame was deinterlaced first.
    pub deinterlaced: bool,
    /// The anomalous regions, strongest first; `None` when the meta has no `regions` field
    /// (written by an older version).
    pub regions: Option<Vec<AnomalyRegion>>,
}

impl AnomalyResult {
    /// The metadata of an inspected frame: frame number `frame` in the stream, deinterlaced
    /// before the inspection or not.
    pub fn from_frame(result: &FrameResult, frame: u64, deinterlaced: bool) -> Self {
        let (width, height) = result.frame_size;
        let map = &result.map;
        AnomalyResult {
            score: result.score,
            calibrated: result.calibrated,
            anomalous: result.anomalous,
            threshold: result.threshold,
            stale: false,
            frame,
            detectors: result.detectors.clone(),
            map: Some(AnomalyMap::from_values(
                map.map_width as u32,
                map.map_height as u32,
                &map.map,
            )),
            map_threshold: result.map_threshold,
            deinterlaced,
            regions: Some(
                result
                    .regions
                    .iter()
                    .map(|r| AnomalyRegion::from_pixels(r.rect, width, height, r.score))
                    .collect(),
            ),
        }
    }

    pub fn to_structure(&self) -> gst::Structure {
        let names: Vec<&str> = self.detectors.iter().map(|d| d.name.as_str()).collect();
        let mut s = gst::Structure::builder(STRUCTURE_NAME)
            .field("score", self.score)
            .field("calibrated", self.calibrated)
            .field("anomalous", self.anomalous)
            .field("threshold", self.threshold)
            .field("stale", self.stale)
            .field("frame", self.frame)
            .field("detectors", names.join(","))
            .field("map-threshold", self.map_threshold)
            .field("deinterlaced", self.deinterlaced)
            .build();
        for d in &self.detectors {
            s.set(format!("{}-score", d.name), d.raw);
            s.set(format!("{}-calibrated", d.name), d.calibrated);
        }
        if let Some(map) = &self.map {
            s.set("map-width", map.width);
            s.set("map-height", map.height);
            s.set("map", &map.data);
        }
        if let Some(regions) = &self.regions {
            s.set(
                "regions",
                gst::Array::new(regions.iter().map(|r| r.to_structure())),
            );
        }
        s
    }

    pub fn from_structure(s: &gst::StructureRef) -> Result<Self, glib::BoolError> {
        let field = |name: &str| {
            s.get::<f64>(name)
                .map_err(|e| glib::bool_error!("anomaly meta field {name}: {e}"))
        };
        let detectors = s
            .get::<&str>("detectors")
            .map_err(|e| glib::bool_error!("anomaly meta field detectors: {e}"))?
            .split(',')
            .filter(|n| !n.is_empty())
            .map(|name| {
                Ok(DetectorScore {
                    name: name.to_string(),
                    raw: field(&format!("{name}-score"))?,
                    calibrated: field(&format!("{name}-calibrated"))?,
                })
            })
            .collect::<Result<Vec<_>, glib::BoolError>>()?;
        let map = match (
            s.get::<u32>("map-width"),
            s.get::<u32>("map-height"),
            s.get::<glib::Bytes>("map"),
        ) {
            (Ok(width), Ok(height), Ok(data)) if data.len() == (width * height * 4) as usize => {
                Some(AnomalyMap {
                    width,
                    height,
                    data,
                })
            }
            _ => None,
        };
        let regions = if s.has_field("regions") {
            let array = s
                .get::<gst::Array>("regions")
                .map_err(|e| glib::bool_error!("anomaly meta field regions: {e}"))?;
            Some(
                array
                    .iter()
                    .map(AnomalyRegion::from_value)
                    .collect::<Result<Vec<_>, _>>()?,
            )
        } else {
            None
        };
        Ok(AnomalyResult {
            score: field("score")?,
            calibrated: field("calibrated")?,
            anomalous: s
                .get("anomalous")
                .map_err(|e| glib::bool_error!("anomaly meta field anomalous: {e}"))?,
            threshold: field("threshold")?,
            stale: s.get("stale").unwrap_or(false),
            frame: s.get("frame").unwrap_or(0),
            detectors,
            map,
            map_threshold: field("map-threshold")?,
            deinterlaced: s.get("deinterlaced").unwrap_or(false),
            regions,
        })
    }

    /// Attaches this result to `buffer` (a frame of `frame_size` pixels) as [`Self::attach`]
    /// does, plus one region-of-interest meta of type [`ROI_TYPE`] per region, carrying an
    /// `anomaly` structure with its `score` (ids 0.., strongest first).
    pub fn attach_with_rois(
        &self,
        buffer: &mut gst::BufferRef,
        frame_size: (u32, u32),
    ) -> Result<(), glib::BoolError> {
        self.attach(buffer)?;
        for (id, region) in self.regions.iter().flatten().enumerate() {
            let rect = region.to_pixels(frame_size.0, frame_size.1);
            let mut roi = gst_video::VideoRegionOfInterestMeta::add(buffer, ROI_TYPE, rect);
            // Distinct ids let readers without a meta iterator (PyGObject) reach every region.
            roi.set_id(id as i32);
            roi.add_param(
                gst::Structure::builder(ROI_TYPE)
                    .field("score", region.score)
                    .build(),
            );
        }
        Ok(())
    }

    /// Attaches this result to `buffer`, replacing an earlier anomaly meta if there is one.
    pub fn attach(&self, buffer: &mut gst::BufferRef) -> Result<(), glib::BoolError> {
        register();
        let mut meta = match gst::meta::CustomMeta::from_mut_buffer(buffer, META_NAME) {
            Ok(meta) => meta,
            Err(_) => gst::meta::CustomMeta::add(buffer, META_NAME)?,
        };
        let s = meta.mut_structure();
        s.remove_all_fields();
        s.set_name(STRUCTURE_NAME);
        for (name, value) in self.to_structure().iter() {
            s.set_value(name, value.clone());
        }
        Ok(())
    }

    /// Reads the result attached to `buffer`, if any.
    pub fn from_buffer(buffer: &gst::BufferRef) -> Option<Result<Self, glib::BoolError>> {
        if !gst::meta::CustomMeta::is_registered(META_NAME) {
            return None;
        }
        let meta = gst::meta::CustomMeta::from_buffer(buffer, META_NAME).ok()?;
        Some(Self::from_structure(meta.structure()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(regions: Option<Vec<AnomalyRegion>>) -> AnomalyResult {
        AnomalyResult {
            score: 0.5,
            calibrated: 0.9,
            anomalous: true,
            threshold: 0.8,
            stale: false,
            frame: 3,
            detectors: vec![],
            map: None,
            map_threshold: 0.4,
            deinterlaced: true,
            regions,
        }
    }

    #[test]
    fn regions_and_deinterlaced_round_trip_through_the_structure() {
        gst::init().unwrap();
        let regions = vec![
            AnomalyRegion::from_pixels((10, 20, 30, 8), 64, 48, 0.75),
            AnomalyRegion::from_pixels((0, 0, 64, 48), 64, 48, 0.5),
        ];
        assert_eq!(regions[0].x, 10.0 / 64.0);
        assert_eq!(regions[0].height, 8.0 / 48.0);
        let s = result(Some(regions.clone())).to_structure();
        // Stock types only: an array of structures named "region".
        let array = s.get::<gst::Array>("regions").unwrap();
        assert_eq!(array.len(), 2);
        let first = array[0].get::<gst::Structure>().unwrap();
        assert_eq!(first.name(), "region");
        assert_eq!(first.get::<f64>("score").unwrap(), 0.75);
        assert!(s.get::<bool>("deinterlaced").unwrap());

        let back = AnomalyResult::from_structure(&s).unwrap();
        assert_eq!(back.regions, Some(regions));
        assert!(back.deinterlaced);

        // Without the fields (an older writer): no regions, not deinterlaced.
        let mut old = result(None).to_structure();
        old.remove_field("deinterlaced");
        let back = AnomalyResult::from_structure(&old).unwrap();
        assert_eq!(back.regions, None);
        assert!(!back.deinterlaced);

        // A malformed regions field is an error naming it.
        let mut bad = old.clone();
        bad.set("regions", gst::Array::new([1.0f64]));
        let err = AnomalyResult::from_structure(&bad).unwrap_err();
        assert!(err.to_string().contains("regions"), "{err}");
        let mut bad = old;
        bad.set(
            "regions",
            gst::Array::new([gst::Structure::builder("region").field("x", 0.1).build()]),
        );
        let err = AnomalyResult::from_structure(&bad).unwrap_err();
        assert!(err.to_string().contains("regions, y"), "{err}");
    }

    #[test]
    fn regions_scale_to_pixels() {
        let r = AnomalyRegion::from_pixels((3, 5, 7, 11), 17, 23, 1.0);
        // The same frame size gives the same rectangle back.
        assert_eq!(r.to_pixels(17, 23), (3, 5, 7, 11));
        // Twice the size: every edge doubles.
        assert_eq!(r.to_pixels(34, 46), (6, 10, 14, 22));
        // 64x48 -> 40x30: x 16..40 -> 10..25, y 12..36 -> 7.5..22.5 -> 8..23 (half rounds up).
        let r = AnomalyRegion::from_pixels((16, 12, 24, 24), 64, 48, 1.0);
        assert_eq!(r.to_pixels(40, 30), (10, 8, 15, 15));
        // Out-of-range and non-finite coordinates are clipped, never panic.
        let wild = AnomalyRegion {
            x: -0.5,
            y: f64::NAN,
            width: 2.0,
            height: 0.5,
            score: 0.0,
        };
        assert_eq!(wild.to_pixels(10, 10), (0, 0, 10, 0));
    }
}
