//! The anomaly metadata that travels with each buffer.
//!
//! It is a `GstCustomMeta` named [`META_NAME`] whose `GstStructure` holds plain fields, so C code
//! (`gst_buffer_get_custom_meta` + `gst_custom_meta_get_structure`) and Python pad probes
//! (`buffer.get_custom_meta("LogsadAnomalyMeta").get_structure()`) read it without our Rust types.
//!
//! Fields of the structure (name `logsad/anomaly`):
//! - `score` (double): fused raw score; `calibrated` (double): sigmoid of the calibrated score;
//! - `anomalous` (boolean): `calibrated >= threshold`; `threshold` (double);
//! - `stale` (boolean): true when this frame was not analysed and carries the result of frame
//!   `frame` (or, when no frame was analysed yet, a placeholder with scores 0 and no map);
//!   `frame` (guint64): the frame the result was computed on;
//! - `skipped` (string, only on frames not analysed): why: `interval` (the `interval`
//!   property), `busy` (the analysis was behind a live source: `drop-policy=skip`) or `late`
//!   (downstream QoS said the frame was already late: `qos=true`);
//! - `detectors` (string): comma separated detector names; for each name N, `N-score` and
//!   `N-calibrated` (double);
//! - `map-width`, `map-height` (guint) and `map` (GBytes): the anomaly map, row-major native-endian
//!   float32, covering the whole frame, in the raw score units of the reported patch detector
//!   (the units of `score` only for a profile with one detector; with several, `score` is the
//!   fused calibrated value);
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
//! - `rules` (`GstValueArray` of `GstStructure`s named `rule`): the composition rules that fired
//!   on the frame (paper eq. 4; any one sets the fused score to 1.0, eq. 5), in the order the
//!   profile lists them, each with `name` (string), `measured` (double: the count, ratio or
//!   number of misplaced instances measured; NaN when it could not be measured), `min` and
//!   `max` (double: the allowed range, inclusive; `-inf`/`+inf` where unbounded, which
//!   `gst_structure_get_double` and Python's `get_double` return as IEEE infinities), `message`
//!   (string: one line such as `pins: 14, expected 15`) and `instances` (`GstValueArray` of
//!   `GstStructure`s named `instance` with `x`, `y`, `width`, `height`, double, relative to the
//!   frame like `regions`: the boxes of the instances of the parts the rule concerns). Read the
//!   same way as `regions`. Empty when no rule fired; absent from metas written by older
//!   versions (readers then see no rules).

use gst::glib;

/// Name under which the custom meta is registered.
pub const META_NAME: &str = "LogsadAnomalyMeta";
const STRUCTURE_NAME: &str = "logsad/anomaly";
/// The region-of-interest type of anomaly regions, and the name of their parameter structure.
pub const ROI_TYPE: &str = "anomaly";
/// Name of each structure in the `regions` array.
const REGION_STRUCTURE_NAME: &str = "region";
/// Name of each structure in the `rules` array.
const RULE_STRUCTURE_NAME: &str = "rule";
/// Name of each structure in a rule's `instances` array.
const INSTANCE_STRUCTURE_NAME: &str = "instance";

/// Registers the custom meta; safe to call more than once.
pub fn register() {
    if !gst::meta::CustomMeta::is_registered(META_NAME) {
        // Tagged "video" only: the map covers the whole frame in relative coordinates, so it stays
        // valid through colour conversion and scaling, and elements such as videoconvert keep it.
        gst::meta::CustomMeta::register(META_NAME, &["video"]);
    }
}

pub use crate::detectors::DetectorScore;
use crate::inspector::{FrameResult, RuleFinding};

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

/// A box in coordinates relative to the frame, so that it holds after scaling.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RelativeBox {
    /// Left edge, as a fraction of the frame width (0..1).
    pub x: f64,
    /// Top edge, as a fraction of the frame height (0..1).
    pub y: f64,
    /// Width, as a fraction of the frame width.
    pub width: f64,
    /// Height, as a fraction of the frame height.
    pub height: f64,
}

impl RelativeBox {
    /// The box of the pixel rectangle `(x, y, w, h)` of a `frame_w` x `frame_h` frame (a zero
    /// size counts as 1).
    pub fn from_pixels(rect: (u32, u32, u32, u32), frame_w: u32, frame_h: u32) -> Self {
        let (fw, fh) = (frame_w.max(1) as f64, frame_h.max(1) as f64);
        RelativeBox {
            x: rect.0 as f64 / fw,
            y: rect.1 as f64 / fh,
            width: rect.2 as f64 / fw,
            height: rect.3 as f64 / fh,
        }
    }

    /// The pixel rectangle `(x, y, w, h)` of this box in a `frame_w` x `frame_h` frame: each
    /// edge rounded to the nearest pixel and clipped to the frame (so a box stays put when the
    /// frame size did not change). Non-finite coordinates give an empty rectangle.
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

    /// A structure named `name` with fields `x`, `y`, `width`, `height` (double).
    fn builder(self, name: &str) -> gst::structure::Builder {
        gst::Structure::builder(name)
            .field("x", self.x)
            .field("y", self.y)
            .field("width", self.width)
            .field("height", self.height)
    }

    /// Reads `x`, `y`, `width`, `height` of `s`; errors name `what` and the field.
    fn from_fields(s: &gst::StructureRef, what: &str) -> Result<Self, glib::BoolError> {
        let field = |name: &str| {
            s.get::<f64>(name)
                .map_err(|e| glib::bool_error!("anomaly meta field {what}, {name}: {e}"))
        };
        Ok(RelativeBox {
            x: field("x")?,
            y: field("y")?,
            width: field("width")?,
            height: field("height")?,
        })
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
        let b = RelativeBox::from_pixels(rect, frame_w, frame_h);
        AnomalyRegion {
            x: b.x,
            y: b.y,
            width: b.width,
            height: b.height,
            score,
        }
    }

    /// The region's box, without its score.
    pub fn relative_box(&self) -> RelativeBox {
        RelativeBox {
            x: self.x,
            y: self.y,
            width: self.width,
            height: self.height,
        }
    }

    /// The pixel rectangle `(x, y, w, h)` of this region in a `frame_w` x `frame_h` frame, as
    /// [`RelativeBox::to_pixels`] computes it.
    pub fn to_pixels(&self, frame_w: u32, frame_h: u32) -> (u32, u32, u32, u32) {
        self.relative_box().to_pixels(frame_w, frame_h)
    }

    fn to_structure(self) -> gst::Structure {
        self.relative_box()
            .builder(REGION_STRUCTURE_NAME)
            .field("score", self.score)
            .build()
    }

    fn from_value(value: &glib::SendValue) -> Result<Self, glib::BoolError> {
        let s = value
            .get::<gst::Structure>()
            .map_err(|e| glib::bool_error!("anomaly meta field regions: {e}"))?;
        let b = RelativeBox::from_fields(&s, "regions")?;
        Ok(AnomalyRegion {
            x: b.x,
            y: b.y,
            width: b.width,
            height: b.height,
            score: s
                .get::<f64>("score")
                .map_err(|e| glib::bool_error!("anomaly meta field regions, score: {e}"))?,
        })
    }
}

/// A composition rule that fired on the frame (paper eq. 4), as carried in the meta's `rules`
/// field.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleHit {
    /// The rule's name, as in the profile or rule file.
    pub name: String,
    /// The measured value (a count, a ratio, a number of misplaced instances); NaN when it
    /// could not be measured.
    pub measured: f64,
    /// Lower end of the allowed range, inclusive; `-inf` when unbounded.
    pub min: f64,
    /// Upper end of the allowed range, inclusive; `+inf` when unbounded.
    pub max: f64,
    /// One line for people, such as `pins: 14, expected 15`.
    pub message: String,
    /// Boxes of the instances of the parts the rule concerns, relative to the frame.
    pub instances: Vec<RelativeBox>,
}

impl RuleHit {
    /// The hit of `finding`, whose instance boxes are in the pixels of a `frame` of
    /// (width, height).
    pub fn from_finding(finding: &RuleFinding, frame: (u32, u32)) -> Self {
        let rule = &finding.rule;
        RuleHit {
            name: rule.name.clone(),
            measured: rule.measured,
            min: rule.min,
            max: rule.max,
            message: rule.message.clone(),
            instances: finding
                .instances
                .iter()
                .map(|&rect| RelativeBox::from_pixels(rect, frame.0, frame.1))
                .collect(),
        }
    }

    fn to_structure(&self) -> gst::Structure {
        gst::Structure::builder(RULE_STRUCTURE_NAME)
            .field("name", self.name.as_str())
            .field("measured", self.measured)
            .field("min", self.min)
            .field("max", self.max)
            .field("message", self.message.as_str())
            .field(
                "instances",
                gst::Array::new(
                    self.instances
                        .iter()
                        .map(|b| b.builder(INSTANCE_STRUCTURE_NAME).build()),
                ),
            )
            .build()
    }

    fn from_value(value: &glib::SendValue) -> Result<Self, glib::BoolError> {
        let s = value
            .get::<gst::Structure>()
            .map_err(|e| glib::bool_error!("anomaly meta field rules: {e}"))?;
        let number = |name: &str| {
            s.get::<f64>(name)
                .map_err(|e| glib::bool_error!("anomaly meta field rules, {name}: {e}"))
        };
        let text = |name: &str| {
            s.get::<String>(name)
                .map_err(|e| glib::bool_error!("anomaly meta field rules, {name}: {e}"))
        };
        let instances = s
            .get::<gst::Array>("instances")
            .map_err(|e| glib::bool_error!("anomaly meta field rules, instances: {e}"))?
            .iter()
            .map(|v| {
                let b = v
                    .get::<gst::Structure>()
                    .map_err(|e| glib::bool_error!("anomaly meta field rules, instances: {e}"))?;
                RelativeBox::from_fields(&b, "rules, instances")
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RuleHit {
            name: text("name")?,
            measured: number("measured")?,
            min: number("min")?,
            max: number("max")?,
            message: text("message")?,
            instances,
        })
    }
}

/// The `rules` field of the meta (see the module doc): one `rule` structure per hit.
pub fn rules_array(rules: &[RuleHit]) -> gst::Array {
    gst::Array::new(rules.iter().map(RuleHit::to_structure))
}

/// Why a frame went downstream without being analysed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// Between two analysed frames of the `interval` property.
    Interval,
    /// The analysis was behind (`drop-policy=skip`).
    Busy,
    /// Downstream QoS said the frame was late already (`qos=true`).
    Late,
}

impl SkipReason {
    /// The name in the meta's `skipped` field and in JSON lines.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::Interval => "interval",
            SkipReason::Busy => "busy",
            SkipReason::Late => "late",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        [SkipReason::Interval, SkipReason::Busy, SkipReason::Late]
            .into_iter()
            .find(|r| r.as_str() == name)
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
    /// Why this frame was not analysed; `None` for an analysed frame.
    pub skipped: Option<SkipReason>,
    pub frame: u64,
    pub detectors: Vec<DetectorScore>,
    pub map: Option<AnomalyMap>,
    pub map_threshold: f64,
    /// Whether the analysed frame was deinterlaced first.
    pub deinterlaced: bool,
    /// The anomalous regions, strongest first; `None` when the meta has no `regions` field
    /// (written by an older version).
    pub regions: Option<Vec<AnomalyRegion>>,
    /// The composition rules that fired, in profile order; empty when none did or the meta
    /// has no `rules` field (written by an older version).
    pub rules: Vec<RuleHit>,
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
            skipped: None,
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
            rules: result
                .rules
                .iter()
                .map(|finding| RuleHit::from_finding(finding, result.frame_size))
                .collect(),
        }
    }

    /// The meta of frame `frame` passed on unanalysed for `reason` when no earlier result
    /// exists to carry: not anomalous, scores 0, no map, no regions; judged against `threshold`.
    pub fn placeholder(frame: u64, threshold: f64, reason: SkipReason) -> Self {
        AnomalyResult {
            score: 0.0,
            calibrated: 0.0,
            anomalous: false,
            threshold,
            stale: true,
            skipped: Some(reason),
            frame,
            detectors: Vec::new(),
            map: None,
            map_threshold: 0.0,
            deinterlaced: false,
            regions: Some(Vec::new()),
            rules: Vec::new(),
        }
    }

    /// This result carried to a frame not analysed for `reason`.
    pub fn carried(&self, reason: SkipReason) -> Self {
        AnomalyResult {
            stale: true,
            skipped: Some(reason),
            ..self.clone()
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
        if let Some(reason) = self.skipped {
            s.set("skipped", reason.as_str());
        }
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
        s.set("rules", rules_array(&self.rules));
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
        let rules = if s.has_field("rules") {
            s.get::<gst::Array>("rules")
                .map_err(|e| glib::bool_error!("anomaly meta field rules: {e}"))?
                .iter()
                .map(RuleHit::from_value)
                .collect::<Result<Vec<_>, _>>()?
        } else {
            Vec::new()
        };
        Ok(AnomalyResult {
            score: field("score")?,
            calibrated: field("calibrated")?,
            anomalous: s
                .get("anomalous")
                .map_err(|e| glib::bool_error!("anomaly meta field anomalous: {e}"))?,
            threshold: field("threshold")?,
            stale: s.get("stale").unwrap_or(false),
            skipped: s.get::<&str>("skipped").ok().and_then(SkipReason::parse),
            frame: s.get("frame").unwrap_or(0),
            detectors,
            map,
            map_threshold: field("map-threshold")?,
            deinterlaced: s.get("deinterlaced").unwrap_or(false),
            regions,
            rules,
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
            skipped: None,
            frame: 3,
            detectors: vec![],
            map: None,
            map_threshold: 0.4,
            deinterlaced: true,
            regions,
            rules: vec![],
        }
    }

    #[test]
    fn skip_reasons_round_trip_and_analysed_frames_have_none() {
        gst::init().unwrap();
        let analysed = result(None);
        assert!(!analysed.to_structure().has_field("skipped"));
        assert_eq!(
            AnomalyResult::from_structure(&analysed.to_structure())
                .unwrap()
                .skipped,
            None
        );
        for reason in [SkipReason::Interval, SkipReason::Busy, SkipReason::Late] {
            let carried = analysed.carried(reason);
            let s = carried.to_structure();
            assert_eq!(s.get::<&str>("skipped").unwrap(), reason.as_str());
            let back = AnomalyResult::from_structure(&s).unwrap();
            assert_eq!(back.skipped, Some(reason));
            assert!(back.stale);
            assert_eq!(back.score, analysed.score);
            let placeholder = AnomalyResult::placeholder(9, 0.8, reason);
            let back = AnomalyResult::from_structure(&placeholder.to_structure()).unwrap();
            assert_eq!((back.frame, back.stale, back.anomalous), (9, true, false));
            assert_eq!(back.skipped, Some(reason));
            assert!(back.map.is_none());
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
    fn fired_rules_round_trip_through_the_structure() {
        gst::init().unwrap();
        let finding = RuleFinding {
            rule: crate::detect::rules::FiredRule {
                name: "pins".into(),
                measured: 14.0,
                min: 15.0,
                max: 15.0,
                message: "pins: 14, expected 15".into(),
                parts: vec![2],
            },
            instances: vec![(16, 12, 8, 24), (0, 0, 64, 48)],
        };
        let pins = RuleHit::from_finding(&finding, (64, 48));
        assert_eq!(pins.name, "pins");
        assert_eq!(pins.message, "pins: 14, expected 15");
        assert_eq!(
            pins.instances[0],
            RelativeBox {
                x: 0.25,
                y: 0.25,
                width: 0.125,
                height: 0.5
            }
        );
        assert_eq!(pins.instances[1].to_pixels(64, 48), (0, 0, 64, 48));
        // Unbounded above, nothing measurable, no instances.
        let area = RuleHit {
            name: "area(cable)".into(),
            measured: f64::NAN,
            min: 0.8,
            max: f64::INFINITY,
            message: "area(cable): NaN, expected at least 0.80".into(),
            instances: vec![],
        };
        let mut with_rules = result(None);
        with_rules.rules = vec![pins.clone(), area];
        let s = with_rules.to_structure();

        // Stock types only: an array of structures named "rule", each holding an array of
        // structures named "instance".
        let array = s.get::<gst::Array>("rules").unwrap();
        assert_eq!(array.len(), 2);
        let first = array[0].get::<gst::Structure>().unwrap();
        assert_eq!(first.name(), "rule");
        assert_eq!(
            first.get::<&str>("message").unwrap(),
            "pins: 14, expected 15"
        );
        assert_eq!(first.get::<f64>("measured").unwrap(), 14.0);
        let instances = first.get::<gst::Array>("instances").unwrap();
        assert_eq!(instances.len(), 2);
        let instance = instances[0].get::<gst::Structure>().unwrap();
        assert_eq!(instance.name(), "instance");
        assert_eq!(instance.get::<f64>("width").unwrap(), 0.125);
        let second = array[1].get::<gst::Structure>().unwrap();
        assert_eq!(second.get::<f64>("max").unwrap(), f64::INFINITY);

        let back = AnomalyResult::from_structure(&s).unwrap();
        assert_eq!(back.rules.len(), 2);
        assert_eq!(back.rules[0], pins);
        let area = &back.rules[1];
        assert!(area.measured.is_nan());
        assert_eq!((area.min, area.max), (0.8, f64::INFINITY));
        assert!(area.instances.is_empty());

        // No rule fired: an empty array, read back as no rules.
        let s = result(None).to_structure();
        assert_eq!(s.get::<gst::Array>("rules").unwrap().len(), 0);
        assert!(AnomalyResult::from_structure(&s).unwrap().rules.is_empty());

        // An older writer: no field, no rules.
        let mut old = with_rules.to_structure();
        old.remove_field("rules");
        assert!(AnomalyResult::from_structure(&old)
            .unwrap()
            .rules
            .is_empty());

        // Malformed rules are errors naming the field.
        let mut bad = old.clone();
        bad.set("rules", "pins");
        let err = AnomalyResult::from_structure(&bad).unwrap_err();
        assert!(err.to_string().contains("rules"), "{err}");
        let mut bad = old.clone();
        let mut rule = first.clone();
        rule.remove_field("max");
        bad.set("rules", gst::Array::new([rule]));
        let err = AnomalyResult::from_structure(&bad).unwrap_err();
        assert!(err.to_string().contains("rules, max"), "{err}");
        let mut bad = old;
        let mut rule = first;
        rule.set(
            "instances",
            gst::Array::new([gst::Structure::builder("instance").field("x", 0.1).build()]),
        );
        bad.set("rules", gst::Array::new([rule]));
        let err = AnomalyResult::from_structure(&bad).unwrap_err();
        assert!(err.to_string().contains("rules, instances, y"), "{err}");
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
