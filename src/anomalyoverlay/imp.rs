/**
 * SECTION:element-anomalyoverlay
 *
 * `anomalyoverlay` draws the anomaly results that the `logsad` detector attaches to buffers:
 *
 * - a **heat map**: the anomaly map of the `LogsadAnomalyMeta` (which covers the whole frame) is
 *   bilinearly upsampled to the frame, normalised, colourised with a perceptual colour map
 *   (`colormap`) and alpha-blended over the video with `opacity`;
 * - a **badge** in the top-left corner: `ANOMALY 0.97` on red or `OK 0.12` on green (the
 *   calibrated score), followed by ` (held)` when the result was carried over from an earlier
 *   frame (`stale`); under it, one line per composition rule that fired (the meta's `rules`
 *   field), giving the rule's message, such as `pins: 14, expected 15`;
 * - **region boxes**: an outline for each region of the `LogsadAnomalyMeta`'s `regions` field
 *   (boxes relative to the frame, scaled to the current frame size, so they survive
 *   `videoconvert` and `videoscale` between `logsad` and the overlay), labelled with its score.
 *   When the meta has no `regions` field (an older writer), the `GstVideoRegionOfInterestMeta`s
 *   of type `anomaly` are drawn instead, labelled with the `score` field of their `anomaly`
 *   parameter structure (GStreamer 1.22's `videoconvert`/`videoscale` drop that structure).
 * - **instance boxes** (`outline-instances`): a magenta outline around each instance of the parts
 *   that a fired rule concerns (the rule's `instances` in the meta, scaled to the current frame
 *   size), so that a missing or extra part can be found in the picture.
 *
 * Normalisation of the heat map: a map value `v` becomes
 * `t = clamp((v - low) / (high - low), 0, 1)` and `t` indexes the colour map. When
 * `map-max` > `map-min`, `low` and `high` are those two properties (raw map units).
 * Otherwise (the default, both 0) the range is automatic per frame: `low = 0.5 * map-threshold`
 * and `high = max(1.5 * map-threshold, largest map value)`, so the
 * anomaly threshold sits in the middle of the colour map; if the map threshold is not positive
 * the map's own minimum and maximum are used. With `only-above-threshold`, pixels whose
 * interpolated value is below the map threshold are left untouched.
 *
 * Buffers without anomaly metadata (or when nothing is enabled) pass through untouched, without
 * being made writable.
 *
 * ## Example launch line
 * |[
 * gst-launch-1.0 v4l2src ! videoconvert ! logsad profile=bottle.logsad ! videoconvert ! \
 *     anomalyoverlay colormap=turbo opacity=0.5 ! videoconvert ! autovideosink
 * ]|
 */
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LazyLock, Mutex};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::subclass::prelude::*;
use gst_video::prelude::*;
use gst_video::subclass::prelude::*;

use super::Colormap;
use crate::meta::{AnomalyMap, AnomalyResult};

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "anomalyoverlay",
        gst::DebugColorFlags::empty(),
        Some("Anomaly result overlay"),
    )
});

/// ROI type drawn by this element.
use crate::meta::ROI_TYPE;

const DEFAULT_COLORMAP: Colormap = Colormap::Inferno;
const DEFAULT_OPACITY: f64 = 0.45;
const DEFAULT_MAP_MIN: f64 = 0.0;
const DEFAULT_MAP_MAX: f64 = 0.0;
const DEFAULT_ONLY_ABOVE_THRESHOLD: bool = false;
const DEFAULT_SHOW_HEATMAP: bool = true;
const DEFAULT_SHOW_BADGE: bool = true;
const DEFAULT_SHOW_REGIONS: bool = true;
const DEFAULT_BADGE_SCALE: u32 = 0;
const MAX_BADGE_SCALE: u32 = 64;
const DEFAULT_REGION_COLOR: u32 = 0x00e5ff;
const DEFAULT_OUTLINE_INSTANCES: bool = true;
/// Outline colour of the instances of the parts a fired rule concerns: magenta, apart from the
/// cyan region boxes, the badge colours and the colour maps' ends.
const INSTANCE_COLOR: [u8; 3] = [255, 0, 255];

/// Badge background for anomalous results.
pub(crate) const BADGE_RED: [u8; 3] = [210, 30, 30];
/// Badge background for normal results.
pub(crate) const BADGE_GREEN: [u8; 3] = [30, 150, 60];
const WHITE: [u8; 3] = [255, 255, 255];
const BLACK: [u8; 3] = [0, 0, 0];

#[derive(Debug, Clone, Copy)]
struct Settings {
    colormap: Colormap,
    opacity: f64,
    map_min: f64,
    map_max: f64,
    only_above_threshold: bool,
    show_heatmap: bool,
    show_badge: bool,
    show_regions: bool,
    badge_scale: u32,
    region_color: u32,
    outline_instances: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            colormap: DEFAULT_COLORMAP,
            opacity: DEFAULT_OPACITY,
            map_min: DEFAULT_MAP_MIN,
            map_max: DEFAULT_MAP_MAX,
            only_above_threshold: DEFAULT_ONLY_ABOVE_THRESHOLD,
            show_heatmap: DEFAULT_SHOW_HEATMAP,
            show_badge: DEFAULT_SHOW_BADGE,
            show_regions: DEFAULT_SHOW_REGIONS,
            badge_scale: DEFAULT_BADGE_SCALE,
            region_color: DEFAULT_REGION_COLOR,
            outline_instances: DEFAULT_OUTLINE_INSTANCES,
        }
    }
}

/// Bilinear sampling positions along one axis: for each output pixel the two source cells and
/// the weight of the second one.
#[derive(Debug, Default)]
struct Axis {
    /// (output size, map size) the table was computed for.
    key: (usize, usize),
    idx: Vec<(u32, u32)>,
    frac: Vec<f32>,
}

impl Axis {
    fn update(&mut self, out_len: usize, map_len: usize) {
        if self.key == (out_len, map_len) && self.idx.len() == out_len {
            return;
        }
        self.key = (out_len, map_len);
        self.idx.clear();
        self.frac.clear();
        let last = map_len.saturating_sub(1) as f32;
        let ratio = map_len as f32 / out_len.max(1) as f32;
        for i in 0..out_len {
            // Pixel centres mapped onto cell centres.
            let s = ((i as f32 + 0.5) * ratio - 0.5).clamp(0.0, last);
            let i0 = (s.floor() as usize).min(map_len.saturating_sub(1));
            let i1 = (i0 + 1).min(map_len.saturating_sub(1));
            self.idx.push((i0 as u32, i1 as u32));
            self.frac.push(s - i0 as f32);
        }
    }
}

/// An anomaly region: pixel rectangle `(x, y, w, h)` and its score, if given.
type Region = ((u32, u32, u32, u32), Option<f64>);

struct State {
    lut: [[u8; 3]; 256],
    lut_colormap: Option<Colormap>,
    cols: Axis,
    rows: Axis,
    /// Normalised map values (t units, unclamped), reused between frames.
    cells: Vec<f32>,
    /// One map row interpolated vertically, reused between rows.
    row: Vec<f32>,
    /// Anomaly regions of the current buffer: rectangle and score.
    regions: Vec<Region>,
    /// Boxes of the instances concerned by fired rules in the current buffer, frame pixels.
    instances: Vec<(u32, u32, u32, u32)>,
    text: String,
}

impl Default for State {
    fn default() -> Self {
        State {
            lut: [[0; 3]; 256],
            lut_colormap: None,
            cols: Axis::default(),
            rows: Axis::default(),
            cells: Vec::new(),
            row: Vec::new(),
            regions: Vec::new(),
            instances: Vec::new(),
            text: String::new(),
        }
    }
}

impl State {
    fn ensure_lut(&mut self, colormap: Colormap) {
        if self.lut_colormap == Some(colormap) {
            return;
        }
        let gradient = match colormap {
            Colormap::Inferno => colorous::INFERNO,
            Colormap::Viridis => colorous::VIRIDIS,
            Colormap::Magma => colorous::MAGMA,
            Colormap::Turbo => colorous::TURBO,
        };
        for (i, entry) in self.lut.iter_mut().enumerate() {
            *entry = gradient.eval_continuous(i as f64 / 255.0).as_array();
        }
        self.lut_colormap = Some(colormap);
    }
}

#[derive(Default)]
pub struct AnomalyOverlay {
    settings: Mutex<Settings>,
    state: Mutex<State>,
    warned_bad_meta: AtomicBool,
}

/// Byte positions of the colour channels of a packed RGB format.
#[derive(Debug, Clone, Copy)]
struct Layout {
    bpp: usize,
    r: usize,
    g: usize,
    b: usize,
    a: Option<usize>,
}

impl Layout {
    fn for_format(format: gst_video::VideoFormat) -> Option<Layout> {
        use gst_video::VideoFormat as F;
        let l = |bpp, r, g, b, a| Some(Layout { bpp, r, g, b, a });
        match format {
            F::Rgba => l(4, 0, 1, 2, Some(3)),
            F::Bgra => l(4, 2, 1, 0, Some(3)),
            F::Rgbx => l(4, 0, 1, 2, None),
            F::Bgrx => l(4, 2, 1, 0, None),
            F::Xrgb => l(4, 1, 2, 3, None),
            F::Xbgr => l(4, 3, 2, 1, None),
            F::Argb => l(4, 1, 2, 3, Some(0)),
            F::Abgr => l(4, 3, 2, 1, Some(0)),
            F::Rgb => l(3, 0, 1, 2, None),
            F::Bgr => l(3, 2, 1, 0, None),
            _ => None,
        }
    }
}

/// A mapped packed-RGB frame; every drawing operation is clipped to it.
struct Canvas<'a> {
    data: &'a mut [u8],
    stride: usize,
    width: usize,
    height: usize,
    layout: Layout,
}

impl Canvas<'_> {
    #[inline]
    fn put(px: &mut [u8], layout: Layout, c: [u8; 3]) {
        px[layout.r] = c[0];
        px[layout.g] = c[1];
        px[layout.b] = c[2];
        if let Some(a) = layout.a {
            px[a] = 255;
        }
    }

    /// Fills the rectangle `(x, y, w, h)` (may lie partly or wholly outside the frame).
    fn fill_rect(&mut self, x: i64, y: i64, w: i64, h: i64, c: [u8; 3]) {
        let x0 = x.clamp(0, self.width as i64) as usize;
        let y0 = y.clamp(0, self.height as i64) as usize;
        let x1 = x.saturating_add(w).clamp(0, self.width as i64) as usize;
        let y1 = y.saturating_add(h).clamp(0, self.height as i64) as usize;
        if x0 >= x1 || y0 >= y1 {
            return;
        }
        let layout = self.layout;
        for row in y0..y1 {
            let start = row * self.stride + x0 * layout.bpp;
            let end = row * self.stride + x1 * layout.bpp;
            for px in self.data[start..end].chunks_exact_mut(layout.bpp) {
                Self::put(px, layout, c);
            }
        }
    }

    /// Outlines the rectangle with lines `thickness` wide, drawn inside its edges.
    fn outline_rect(&mut self, x: i64, y: i64, w: i64, h: i64, thickness: i64, c: [u8; 3]) {
        if w <= 0 || h <= 0 {
            return;
        }
        let t = thickness.max(1);
        let tw = t.min(w);
        let th = t.min(h);
        self.fill_rect(x, y, w, th, c);
        self.fill_rect(x, y + h - th, w, th, c);
        self.fill_rect(x, y, tw, h, c);
        self.fill_rect(x + w - tw, y, tw, h, c);
    }

    /// Draws `text` (ASCII; anything else becomes `?`) with its top-left corner at `(x, y)`,
    /// each font pixel being a `scale` x `scale` square.
    fn draw_text(&mut self, x: i64, y: i64, text: &str, scale: i64, c: [u8; 3]) {
        for (px, py) in crate::glyphs::lit_pixels(text) {
            self.fill_rect(x + px * scale, y + py * scale, scale, scale, c);
        }
    }

    /// Draws a text box: `text` on a filled background with `pad` pixels of padding.
    fn label(&mut self, x: i64, y: i64, text: &str, scale: i64, bg: [u8; 3], fg: [u8; 3]) {
        let pad = label_pad(scale);
        let (w, h) = label_size(text, scale);
        self.fill_rect(x, y, w, h, bg);
        self.draw_text(x + pad, y + pad, text, scale, fg);
    }

    /// Blends the upsampled, colourised map over the frame.
    ///
    /// `cells` are normalised map values (`t` units, unclamped); pixels whose interpolated value
    /// is below `cut` are left untouched. `alpha` is the opacity in 1/256 units.
    #[allow(clippy::too_many_arguments)]
    fn blend_heatmap(
        &mut self,
        cells: &[f32],
        map_width: usize,
        cols: &Axis,
        rows: &Axis,
        row_buf: &mut Vec<f32>,
        lut: &[[u8; 3]; 256],
        alpha: u32,
        cut: f32,
    ) {
        let layout = self.layout;
        // Per byte of a pixel: out = (pre[i][k] + in * keep[k]) >> 8, where `pre` holds the
        // colour-map colour (or opaque alpha) times the opacity, rounded; padding bytes keep
        // their value (keep = 256, pre = 0).
        let keep_alpha = 256 - alpha;
        let mut keep = [256u32; 4];
        let mut pre = [[0u32; 4]; 256];
        for k in [layout.r, layout.g, layout.b].into_iter().chain(layout.a) {
            keep[k] = keep_alpha;
        }
        for (p, c) in pre.iter_mut().zip(lut) {
            p[layout.r] = c[0] as u32 * alpha + 128;
            p[layout.g] = c[1] as u32 * alpha + 128;
            p[layout.b] = c[2] as u32 * alpha + 128;
            if let Some(a) = layout.a {
                p[a] = 255 * alpha + 128;
            }
        }
        row_buf.resize(map_width, 0.0);
        for y in 0..self.height {
            let (r0, r1) = rows.idx[y];
            let fy = rows.frac[y];
            let a = &cells[r0 as usize * map_width..][..map_width];
            let b = &cells[r1 as usize * map_width..][..map_width];
            for ((dst, &va), &vb) in row_buf.iter_mut().zip(a).zip(b) {
                *dst = va + (vb - va) * fy;
            }
            let start = y * self.stride;
            let line = &mut self.data[start..start + self.width * layout.bpp];
            match layout.bpp {
                3 => blend_row::<3>(line, row_buf, cols, &pre, keep, cut),
                _ => blend_row::<4>(line, row_buf, cols, &pre, keep, cut),
            }
        }
    }
}

/// Blends one frame row: `values` is the vertically interpolated map row.
#[inline]
fn blend_row<const BPP: usize>(
    line: &mut [u8],
    values: &[f32],
    cols: &Axis,
    pre: &[[u32; 4]; 256],
    keep: [u32; 4],
    cut: f32,
) {
    for ((px, &(c0, c1)), &fx) in line.chunks_exact_mut(BPP).zip(&cols.idx).zip(&cols.frac) {
        let v0 = values[c0 as usize];
        let v = v0 + (values[c1 as usize] - v0) * fx;
        if v < cut {
            continue;
        }
        // The `u8` cast keeps the index provably in range.
        let p = &pre[(v.clamp(0.0, 1.0) * 255.0 + 0.5) as u8 as usize];
        for k in 0..BPP {
            px[k] = ((p[k] + px[k] as u32 * keep[k]) >> 8) as u8;
        }
    }
}

fn label_pad(scale: i64) -> i64 {
    scale.max(1)
}

fn label_size(text: &str, scale: i64) -> (i64, i64) {
    let pad = label_pad(scale);
    (
        text.chars().count() as i64 * 8 * scale + 2 * pad,
        8 * scale + 2 * pad,
    )
}

/// The integer font scale used for the badge, region labels and box thickness.
fn effective_scale(badge_scale: u32, height: usize) -> i64 {
    if badge_scale > 0 {
        badge_scale as i64
    } else {
        (height as i64 / 240).clamp(1, 16)
    }
}

/// The `(low, high)` raw values mapped to the ends of the colour map.
fn value_range(settings: &Settings, map_threshold: f64, min: f64, max: f64) -> (f64, f64) {
    let (low, high) = if settings.map_max > settings.map_min {
        (settings.map_min, settings.map_max)
    } else if map_threshold.is_finite() && map_threshold > 0.0 {
        let high = if max.is_finite() {
            (1.5 * map_threshold).max(max)
        } else {
            1.5 * map_threshold
        };
        (0.5 * map_threshold, high)
    } else if min.is_finite() && max.is_finite() {
        (min, max)
    } else {
        (0.0, 1.0)
    };
    if high - low > f64::EPSILON * low.abs().max(1.0) {
        (low, high)
    } else {
        (low, low + 1.0)
    }
}

fn rgb_from_u32(c: u32) -> [u8; 3] {
    [(c >> 16) as u8, (c >> 8) as u8, c as u8]
}

impl AnomalyOverlay {
    /// Whether anything would be drawn on `buffer` with `settings`.
    fn has_work(&self, settings: &Settings, buffer: &gst::BufferRef) -> bool {
        let result = AnomalyResult::from_buffer(buffer);
        if settings.show_regions {
            let meta_regions = match &result {
                Some(Ok(r)) => r.regions.as_ref(),
                _ => None,
            };
            let any = match meta_regions {
                Some(regions) => !regions.is_empty(),
                None => buffer
                    .iter_meta::<gst_video::VideoRegionOfInterestMeta>()
                    .any(|m| m.roi_type() == ROI_TYPE),
            };
            if any {
                return true;
            }
        }
        let heatmap = settings.show_heatmap && settings.opacity > 0.0;
        if !(settings.show_badge || heatmap || settings.outline_instances) {
            return false;
        }
        match result {
            Some(Ok(result)) => {
                settings.show_badge
                    || (settings.outline_instances
                        && result.rules.iter().any(|r| !r.instances.is_empty()))
                    || (heatmap
                        && result
                            .map
                            .as_ref()
                            .is_some_and(|m| m.width > 0 && m.height > 0))
            }
            Some(Err(err)) => {
                self.warn_bad_meta(&err);
                false
            }
            None => false,
        }
    }

    fn warn_bad_meta(&self, err: &glib::BoolError) {
        if !self.warned_bad_meta.swap(true, Ordering::Relaxed) {
            gst::element_imp_warning!(
                self,
                gst::StreamError::Format,
                ("Ignoring malformed anomaly metadata"),
                ["{err}"]
            );
        } else {
            gst::debug!(
                CAT,
                imp = self,
                "Ignoring malformed anomaly metadata: {err}"
            );
        }
    }

    /// Normalises `map` into `state.cells`; returns the threshold in normalised units.
    fn normalise_map(
        &self,
        settings: &Settings,
        state: &mut State,
        map: &AnomalyMap,
        map_threshold: f64,
    ) -> f32 {
        state.cells.clear();
        state.cells.extend(
            map.data
                .chunks_exact(4)
                .map(|c| f32::from_ne_bytes([c[0], c[1], c[2], c[3]])),
        );
        let (min, max) = state
            .cells
            .iter()
            .filter(|v| v.is_finite())
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
                (lo.min(v as f64), hi.max(v as f64))
            });
        let (low, high) = value_range(settings, map_threshold, min, max);
        let scale = 1.0 / (high - low);
        gst::trace!(
            CAT,
            imp = self,
            "map {}x{} values {min}..{max}, colour range {low}..{high}",
            map.width,
            map.height
        );
        for v in state.cells.iter_mut() {
            *v = if v.is_nan() {
                -1.0
            } else {
                // Infinite values saturate; the clamp keeps the interpolation finite.
                (((*v as f64 - low) * scale) as f32).clamp(-1.0, 2.0)
            };
        }
        ((map_threshold - low) * scale) as f32
    }
}

#[glib::object_subclass]
impl ObjectSubclass for AnomalyOverlay {
    const NAME: &'static str = "GstAnomalyOverlay";
    type Type = super::AnomalyOverlay;
    type ParentType = gst_video::VideoFilter;
}

impl ObjectImpl for AnomalyOverlay {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            vec![
                glib::ParamSpecEnum::builder_with_default("colormap", DEFAULT_COLORMAP)
                    .nick("Colour map")
                    .blurb("Perceptual colour map used to colourise the anomaly heat map")
                    .mutable_playing()
                    .build(),
                glib::ParamSpecDouble::builder("opacity")
                    .nick("Opacity")
                    .blurb(
                        "Opacity of the heat map blended over the video \
                         (0 = invisible, 1 = opaque)",
                    )
                    .minimum(0.0)
                    .maximum(1.0)
                    .default_value(DEFAULT_OPACITY)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecDouble::builder("map-min")
                    .nick("Map minimum")
                    .blurb(
                        "Raw map value drawn with the first colour of the colour map. Only used \
                         when map-max > map-min; otherwise the range is automatic: \
                         0.5 * map threshold .. max(1.5 * map threshold, map maximum)",
                    )
                    .minimum(f64::MIN)
                    .maximum(f64::MAX)
                    .default_value(DEFAULT_MAP_MIN)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecDouble::builder("map-max")
                    .nick("Map maximum")
                    .blurb(
                        "Raw map value drawn with the last colour of the colour map. Only used \
                         when map-max > map-min; otherwise the range is automatic",
                    )
                    .minimum(f64::MIN)
                    .maximum(f64::MAX)
                    .default_value(DEFAULT_MAP_MAX)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecBoolean::builder("only-above-threshold")
                    .nick("Only above threshold")
                    .blurb("Colour only the pixels whose map value reaches the map threshold")
                    .default_value(DEFAULT_ONLY_ABOVE_THRESHOLD)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecBoolean::builder("show-heatmap")
                    .nick("Show heat map")
                    .blurb("Blend the anomaly map over the video")
                    .default_value(DEFAULT_SHOW_HEATMAP)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecBoolean::builder("show-badge")
                    .nick("Show badge")
                    .blurb("Draw the verdict and calibrated score in the top-left corner")
                    .default_value(DEFAULT_SHOW_BADGE)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecBoolean::builder("show-regions")
                    .nick("Show regions")
                    .blurb(
                        "Outline the anomalous regions (region-of-interest metas of type \
                         \"anomaly\") with their scores",
                    )
                    .default_value(DEFAULT_SHOW_REGIONS)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt::builder("badge-scale")
                    .nick("Badge scale")
                    .blurb(
                        "Integer scale of the 8x8 font used for the badge and region labels \
                         (box lines are 2 x scale wide); 0 = automatic from the frame height \
                         (height / 240, at least 1)",
                    )
                    .minimum(0)
                    .maximum(MAX_BADGE_SCALE)
                    .default_value(DEFAULT_BADGE_SCALE)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt::builder("region-color")
                    .nick("Region colour")
                    .blurb("Colour of the region boxes and their labels, as 0xRRGGBB")
                    .minimum(0)
                    .maximum(0xff_ffff)
                    .default_value(DEFAULT_REGION_COLOR)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecBoolean::builder("outline-instances")
                    .nick("Outline instances")
                    .blurb(
                        "Outline in magenta the instances of the parts that a fired composition \
                         rule concerns",
                    )
                    .default_value(DEFAULT_OUTLINE_INSTANCES)
                    .mutable_playing()
                    .build(),
            ]
        });
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let mut settings = self.settings.lock().unwrap();
        match pspec.name() {
            "colormap" => settings.colormap = value.get().expect("type checked upstream"),
            "opacity" => settings.opacity = value.get().expect("type checked upstream"),
            "map-min" => settings.map_min = value.get().expect("type checked upstream"),
            "map-max" => settings.map_max = value.get().expect("type checked upstream"),
            "only-above-threshold" => {
                settings.only_above_threshold = value.get().expect("type checked upstream")
            }
            "show-heatmap" => settings.show_heatmap = value.get().expect("type checked upstream"),
            "show-badge" => settings.show_badge = value.get().expect("type checked upstream"),
            "show-regions" => settings.show_regions = value.get().expect("type checked upstream"),
            "badge-scale" => settings.badge_scale = value.get().expect("type checked upstream"),
            "region-color" => settings.region_color = value.get().expect("type checked upstream"),
            "outline-instances" => {
                settings.outline_instances = value.get().expect("type checked upstream")
            }
            other => {
                gst::warning!(CAT, imp = self, "Unknown property {other}");
                return;
            }
        }
        gst::debug!(CAT, imp = self, "Set {} to {:?}", pspec.name(), value);
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let settings = self.settings.lock().unwrap();
        match pspec.name() {
            "colormap" => settings.colormap.to_value(),
            "opacity" => settings.opacity.to_value(),
            "map-min" => settings.map_min.to_value(),
            "map-max" => settings.map_max.to_value(),
            "only-above-threshold" => settings.only_above_threshold.to_value(),
            "show-heatmap" => settings.show_heatmap.to_value(),
            "show-badge" => settings.show_badge.to_value(),
            "show-regions" => settings.show_regions.to_value(),
            "badge-scale" => settings.badge_scale.to_value(),
            "region-color" => settings.region_color.to_value(),
            "outline-instances" => settings.outline_instances.to_value(),
            other => {
                gst::warning!(CAT, imp = self, "Unknown property {other}");
                pspec.default_value().clone()
            }
        }
    }
}

impl GstObjectImpl for AnomalyOverlay {}

impl ElementImpl for AnomalyOverlay {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static ELEMENT_METADATA: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "Anomaly overlay",
                "Filter/Effect/Video",
                "Draws LogSAD anomaly heat maps, verdict badges and anomalous regions",
                "gst-logsad contributors",
            )
        });
        Some(&*ELEMENT_METADATA)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static PAD_TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            use gst_video::VideoFormat as F;
            let caps = gst_video::VideoCapsBuilder::new()
                .format_list([
                    F::Rgba,
                    F::Bgra,
                    F::Rgbx,
                    F::Bgrx,
                    F::Xrgb,
                    F::Xbgr,
                    F::Argb,
                    F::Abgr,
                    F::Rgb,
                    F::Bgr,
                ])
                .build();
            vec![
                gst::PadTemplate::new(
                    "src",
                    gst::PadDirection::Src,
                    gst::PadPresence::Always,
                    &caps,
                )
                .unwrap(),
                gst::PadTemplate::new(
                    "sink",
                    gst::PadDirection::Sink,
                    gst::PadPresence::Always,
                    &caps,
                )
                .unwrap(),
            ]
        });
        PAD_TEMPLATES.as_ref()
    }
}

impl BaseTransformImpl for AnomalyOverlay {
    const MODE: gst_base::subclass::BaseTransformMode =
        gst_base::subclass::BaseTransformMode::AlwaysInPlace;
    const PASSTHROUGH_ON_SAME_CAPS: bool = false;
    const TRANSFORM_IP_ON_PASSTHROUGH: bool = false;

    fn start(&self) -> Result<(), gst::ErrorMessage> {
        self.warned_bad_meta.store(false, Ordering::Relaxed);
        *self.state.lock().unwrap() = State::default();
        Ok(())
    }

    fn before_transform(&self, inbuf: &gst::BufferRef) {
        // Buffers with nothing to draw go through untouched (and are not made writable).
        let settings = *self.settings.lock().unwrap();
        let passthrough = !self.has_work(&settings, inbuf);
        let obj = self.obj();
        if obj.is_passthrough() != passthrough {
            gst::log!(CAT, imp = self, "passthrough: {passthrough}");
            obj.set_passthrough(passthrough);
        }
    }
}

impl VideoFilterImpl for AnomalyOverlay {
    fn transform_frame_ip_passthrough(
        &self,
        _frame: &gst_video::VideoFrameRef<&gst::BufferRef>,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        Ok(gst::FlowSuccess::Ok)
    }

    fn transform_frame_ip(
        &self,
        frame: &mut gst_video::VideoFrameRef<&mut gst::BufferRef>,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        let settings = *self.settings.lock().unwrap();
        let mut state = self.state.lock().unwrap();
        let state = &mut *state;

        // Read everything needed from the metadata before mapping the pixels mutably.
        let result = match AnomalyResult::from_buffer(frame.buffer()) {
            Some(Ok(result)) => Some(result),
            Some(Err(err)) => {
                self.warn_bad_meta(&err);
                None
            }
            None => None,
        };
        state.regions.clear();
        if settings.show_regions {
            match result.as_ref().and_then(|r| r.regions.as_ref()) {
                Some(regions) => state.regions.extend(
                    regions
                        .iter()
                        .map(|r| (r.to_pixels(frame.width(), frame.height()), Some(r.score))),
                ),
                None => state.regions.extend(
                    frame
                        .buffer()
                        .iter_meta::<gst_video::VideoRegionOfInterestMeta>()
                        .filter(|m| m.roi_type() == ROI_TYPE)
                        .map(|m| {
                            let score = m.param(ROI_TYPE).and_then(|s| s.get::<f64>("score").ok());
                            (m.rect(), score)
                        }),
                ),
            }
        }

        state.instances.clear();
        if settings.outline_instances {
            if let Some(result) = &result {
                let (w, h) = (frame.width(), frame.height());
                state.instances.extend(
                    result
                        .rules
                        .iter()
                        .flat_map(|r| &r.instances)
                        .map(|b| b.to_pixels(w, h)),
                );
            }
        }

        let format = frame.format();
        let Some(layout) = Layout::for_format(format) else {
            gst::element_imp_error!(
                self,
                gst::CoreError::Negotiation,
                ("Unsupported video format {format:?}")
            );
            return Err(gst::FlowError::NotNegotiated);
        };
        let width = frame.width() as usize;
        let height = frame.height() as usize;
        if width == 0 || height == 0 {
            return Ok(gst::FlowSuccess::Ok);
        }
        let stride = frame.plane_stride()[0];
        let data = match frame.plane_data_mut(0) {
            Ok(data) => data,
            Err(err) => {
                gst::element_imp_error!(
                    self,
                    gst::StreamError::Failed,
                    ("Cannot access the video frame"),
                    ["{err}"]
                );
                return Err(gst::FlowError::Error);
            }
        };
        let row_bytes = width * layout.bpp;
        if stride < 0
            || (stride as usize) < row_bytes
            || data.len() < (height - 1) * stride as usize + row_bytes
        {
            gst::element_imp_error!(
                self,
                gst::StreamError::Format,
                ("Unexpected video frame layout"),
                [
                    "{width}x{height} {format:?}: stride {stride}, {} bytes",
                    data.len()
                ]
            );
            return Err(gst::FlowError::Error);
        }
        let mut canvas = Canvas {
            data,
            stride: stride as usize,
            width,
            height,
            layout,
        };
        let scale = effective_scale(settings.badge_scale, height);

        if let Some(result) = &result {
            if let Some(map) = result.map.as_ref().filter(|m| m.width > 0 && m.height > 0) {
                let alpha = (settings.opacity.clamp(0.0, 1.0) * 256.0).round() as u32;
                if settings.show_heatmap && alpha > 0 {
                    let cut = self.normalise_map(&settings, state, map, result.map_threshold);
                    let cut = if settings.only_above_threshold {
                        cut
                    } else {
                        f32::NEG_INFINITY
                    };
                    let (mw, mh) = (map.width as usize, map.height as usize);
                    state.ensure_lut(settings.colormap);
                    state.cols.update(width, mw);
                    state.rows.update(height, mh);
                    canvas.blend_heatmap(
                        &state.cells,
                        mw,
                        &state.cols,
                        &state.rows,
                        &mut state.row,
                        &state.lut,
                        alpha,
                        cut,
                    );
                }
            }
        }

        for &(x, y, w, h) in &state.instances {
            canvas.outline_rect(
                x as i64,
                y as i64,
                w as i64,
                h as i64,
                2 * scale,
                INSTANCE_COLOR,
            );
        }

        if settings.show_regions && !state.regions.is_empty() {
            let color = rgb_from_u32(settings.region_color);
            for &((x, y, w, h), score) in &state.regions {
                let (x, y, w, h) = (x as i64, y as i64, w as i64, h as i64);
                canvas.outline_rect(x, y, w, h, 2 * scale, color);
                if let Some(score) = score {
                    state.text.clear();
                    use std::fmt::Write;
                    let _ = write!(state.text, "{score:.2}");
                    let (_, label_h) = label_size(&state.text, scale);
                    // Above the box when there is room, else just inside its top edge.
                    let label_y = if y >= label_h {
                        y - label_h
                    } else {
                        y + 2 * scale
                    };
                    canvas.label(x, label_y, &state.text, scale, color, BLACK);
                }
            }
        }

        if settings.show_badge {
            if let Some(result) = &result {
                state.text.clear();
                use std::fmt::Write;
                let _ = write!(
                    state.text,
                    "{} {:.2}{}",
                    if result.anomalous { "ANOMALY" } else { "OK" },
                    result.calibrated,
                    if result.stale { " (held)" } else { "" }
                );
                let bg = if result.anomalous {
                    BADGE_RED
                } else {
                    BADGE_GREEN
                };
                let margin = 2 * scale;
                canvas.label(margin, margin, &state.text, scale, bg, WHITE);
                // The fired rules' messages, one line each, under the score.
                let (_, line_h) = label_size(&state.text, scale);
                for (i, rule) in result.rules.iter().enumerate() {
                    let y = margin + (i as i64 + 1) * line_h;
                    canvas.label(margin, y, &rule.message, scale, bg, WHITE);
                }
            }
        }

        Ok(gst::FlowSuccess::Ok)
    }
}
