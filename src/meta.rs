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
//! - `map-threshold` (double): the raw map value at which a cell counts as anomalous.

use gst::glib;

/// Name under which the custom meta is registered.
pub const META_NAME: &str = "LogsadAnomalyMeta";
const STRUCTURE_NAME: &str = "logsad/anomaly";

/// Registers the custom meta; safe to call more than once.
pub fn register() {
    if !gst::meta::CustomMeta::is_registered(META_NAME) {
        // Tagged "video" only: the map covers the whole frame in relative coordinates, so it stays
        // valid through colour conversion and scaling, and elements such as videoconvert keep it.
        gst::meta::CustomMeta::register(META_NAME, &["video"]);
    }
}

/// One detector's contribution to the fused score.
#[derive(Debug, Clone, PartialEq)]
pub struct DetectorScore {
    pub name: String,
    pub raw: f64,
    pub calibrated: f64,
}

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
}

impl AnomalyResult {
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
        })
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
