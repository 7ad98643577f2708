//! Pixel-level tests of the `anomalyoverlay` element.

use std::sync::Once;

use gst::glib;
use gst::prelude::*;
use gst_video::prelude::*;
use gstlogsad::meta::{AnomalyMap, AnomalyRegion, AnomalyResult, RelativeBox, RuleHit};

static INIT: Once = Once::new();

fn init() {
    INIT.call_once(|| {
        gst::init().unwrap();
        gstlogsad::plugin_register_static().expect("registering the logsad plugin");
    });
}

const GREY: [u8; 3] = [100, 100, 100];
const BADGE_RED: [u8; 3] = [210, 30, 30];
const BADGE_GREEN: [u8; 3] = [30, 150, 60];
const REGION: [u8; 3] = [0x00, 0xe5, 0xff];
const WHITE: [u8; 3] = [255, 255, 255];
const INSTANCE: [u8; 3] = [255, 0, 255];

struct Setup {
    h: gst_check::Harness,
    info: gst_video::VideoInfo,
}

fn setup(
    format: gst_video::VideoFormat,
    width: u32,
    height: u32,
    props: &[(&str, glib::Value)],
) -> Setup {
    init();
    let mut h = gst_check::Harness::new("anomalyoverlay");
    {
        let element = h.element().unwrap();
        for (name, value) in props {
            element.set_property_from_value(name, value);
        }
    }
    let info = gst_video::VideoInfo::builder(format, width, height)
        .fps(gst::Fraction::new(30, 1))
        .build()
        .unwrap();
    h.set_src_caps(info.to_caps().unwrap());
    Setup { h, info }
}

/// Byte offsets of R, G, B in a pixel, and the pixel stride.
fn offsets(info: &gst_video::VideoInfo) -> ([usize; 3], usize) {
    let fi = info.format_info();
    let po = fi.poffset();
    (
        [po[0] as usize, po[1] as usize, po[2] as usize],
        fi.pixel_stride()[0] as usize,
    )
}

/// A frame filled with `f(x, y)`.
fn frame_with(info: &gst_video::VideoInfo, f: impl Fn(usize, usize) -> [u8; 3]) -> gst::Buffer {
    let buffer = gst::Buffer::with_size(info.size()).unwrap();
    let mut frame = gst_video::VideoFrame::from_buffer_writable(buffer, info).unwrap();
    let stride = frame.plane_stride()[0] as usize;
    let (off, bpp) = offsets(info);
    let (w, h) = (info.width() as usize, info.height() as usize);
    let data = frame.plane_data_mut(0).unwrap();
    data.fill(0x5a); // padding and alpha/x bytes
    for y in 0..h {
        for x in 0..w {
            let c = f(x, y);
            let p = y * stride + x * bpp;
            for i in 0..3 {
                data[p + off[i]] = c[i];
            }
        }
    }
    frame.into_buffer()
}

fn solid(info: &gst_video::VideoInfo, c: [u8; 3]) -> gst::Buffer {
    frame_with(info, |_, _| c)
}

fn pixel(info: &gst_video::VideoInfo, buffer: &gst::Buffer, x: usize, y: usize) -> [u8; 3] {
    let frame = gst_video::VideoFrame::from_buffer_readable(buffer.clone(), info).unwrap();
    let stride = frame.plane_stride()[0] as usize;
    let (off, bpp) = offsets(info);
    let data = frame.plane_data(0).unwrap();
    let p = y * stride + x * bpp;
    [data[p + off[0]], data[p + off[1]], data[p + off[2]]]
}

fn result(anomalous: bool, calibrated: f64, stale: bool, map: Option<AnomalyMap>) -> AnomalyResult {
    AnomalyResult {
        score: calibrated * 2.0,
        calibrated,
        anomalous,
        threshold: 0.5,
        stale,
        skipped: stale.then_some(gstlogsad::meta::SkipReason::Interval),
        frame: 7,
        detectors: vec![],
        map,
        map_threshold: 1.0,
        deinterlaced: false,
        regions: None,
        rules: vec![],
    }
}

fn add_roi(
    buffer: &mut gst::Buffer,
    roi_type: &str,
    rect: (u32, u32, u32, u32),
    score: Option<f64>,
) {
    let mut meta =
        gst_video::VideoRegionOfInterestMeta::add(buffer.get_mut().unwrap(), roi_type, rect);
    if let Some(score) = score {
        meta.add_param(
            gst::Structure::builder(roi_type)
                .field("score", score)
                .build(),
        );
    }
}

fn push_pull(s: &mut Setup, buffer: gst::Buffer) -> gst::Buffer {
    s.h.push(buffer).expect("push");
    s.h.pull().expect("pull")
}

fn bytes(buffer: &gst::Buffer) -> Vec<u8> {
    buffer.map_readable().unwrap().as_slice().to_vec()
}

/// `p` blended with colour-map colour `c` at `opacity`.
fn blend(p: [u8; 3], c: [u8; 3], opacity: f64) -> [f64; 3] {
    std::array::from_fn(|i| p[i] as f64 * (1.0 - opacity) + c[i] as f64 * opacity)
}

fn assert_close(actual: [u8; 3], expected: [f64; 3], tol: f64, what: &str) {
    for i in 0..3 {
        assert!(
            (actual[i] as f64 - expected[i]).abs() <= tol,
            "{what}: got {actual:?}, expected {expected:?}"
        );
    }
}

fn count_color(
    info: &gst_video::VideoInfo,
    buffer: &gst::Buffer,
    xs: std::ops::Range<usize>,
    ys: std::ops::Range<usize>,
    c: [u8; 3],
) -> usize {
    let mut n = 0;
    for y in ys {
        for x in xs.clone() {
            if pixel(info, buffer, x, y) == c {
                n += 1;
            }
        }
    }
    n
}

/// An 8x6 map, 1.0 threshold: the 3x3 cells block x 5..8, y 0..3 is 2.0, the rest 0.
fn hot_corner_map() -> AnomalyMap {
    let mut values = vec![0.0f32; 8 * 6];
    for y in 0..3 {
        for x in 5..8 {
            values[y * 8 + x] = 2.0;
        }
    }
    AnomalyMap::from_values(8, 6, &values)
}

#[test]
fn buffers_without_meta_pass_through_unchanged() {
    let mut s = setup(gst_video::VideoFormat::Rgba, 64, 48, &[]);
    let input = frame_with(&s.info, |x, y| [x as u8 * 3, y as u8 * 5, 77]);
    let expected = bytes(&input);
    let keep = input.clone();
    let out = push_pull(&mut s, input);
    assert_eq!(bytes(&out), expected);
    // Passthrough: the very same buffer comes out (it was not writable, so a transform in
    // place would have had to copy it).
    assert_eq!(out.as_ptr(), keep.as_ptr());

    // Regions of another type are not ours to draw either.
    let mut input = frame_with(&s.info, |x, y| [x as u8, y as u8, 9]);
    add_roi(&mut input, "face", (10, 10, 20, 20), Some(0.9));
    let expected = bytes(&input);
    let out = push_pull(&mut s, input);
    assert_eq!(bytes(&out), expected);
}

#[test]
fn nothing_enabled_passes_through() {
    let mut s = setup(
        gst_video::VideoFormat::Bgrx,
        32,
        24,
        &[
            ("show-heatmap", false.to_value()),
            ("show-badge", false.to_value()),
            ("show-regions", false.to_value()),
        ],
    );
    let mut input = solid(&s.info, GREY);
    result(true, 0.9, false, Some(hot_corner_map()))
        .attach(input.get_mut().unwrap())
        .unwrap();
    add_roi(&mut input, "anomaly", (4, 4, 8, 8), Some(0.9));
    let expected = bytes(&input);
    let keep = input.clone();
    let out = push_pull(&mut s, input);
    assert_eq!(bytes(&out), expected);
    assert_eq!(out.as_ptr(), keep.as_ptr());
}

#[test]
fn heatmap_hot_and_cold_pixels() {
    // 80x60 frame: each map cell covers 10x10 pixels.
    let mut s = setup(
        gst_video::VideoFormat::Rgbx,
        80,
        60,
        &[("show-badge", false.to_value())],
    );
    let mut input = solid(&s.info, GREY);
    result(true, 0.95, false, Some(hot_corner_map()))
        .attach(input.get_mut().unwrap())
        .unwrap();
    let out = push_pull(&mut s, input);

    // Auto range: low = 0.5 * 1.0, high = max(1.5, 2.0) = 2.0.
    // Pixel (65, 15) samples only hot cells: t = (2.0 - 0.5) / 1.5 = 1 -> last inferno colour.
    let hot = pixel(&s.info, &out, 65, 15);
    assert_ne!(hot, GREY);
    let top = colorous::INFERNO.eval_continuous(1.0).as_array();
    assert_close(hot, blend(GREY, top, 0.45), 1.5, "hot pixel");
    assert!(
        hot[0] > GREY[0] && hot[1] > GREY[1],
        "hot pixel is yellowish: {hot:?}"
    );
    assert!(
        hot[0] > hot[2] && hot[1] > hot[2],
        "hot pixel is yellowish: {hot:?}"
    );

    // Pixel (5, 50) samples only cold cells: t clamps to 0 -> first inferno colour (near
    // black), so the pixel is the original darkened by the opacity.
    let cold = pixel(&s.info, &out, 5, 50);
    let bottom = colorous::INFERNO.eval_continuous(0.0).as_array();
    assert_close(cold, blend(GREY, bottom, 0.45), 1.5, "cold pixel");

    // Between cold cell 4 and hot cell 5 (x = 51 samples 35% cold, 65% hot: t ~ 0.53) the
    // colour is in between: the reddish middle of inferno.
    let edge = pixel(&s.info, &out, 51, 15);
    assert!(edge[0] > cold[0] && edge[0] < hot[0], "edge {edge:?}");
    assert!(edge[0] > edge[1], "edge pixel is reddish: {edge:?}");
}

#[test]
fn heatmap_properties() {
    // viridis, fixed range 0..2, opacity 1: hot cells become the top viridis colour exactly.
    let mut s = setup(
        gst_video::VideoFormat::Bgra,
        80,
        60,
        &[
            ("show-badge", false.to_value()),
            ("opacity", 1.0f64.to_value()),
            ("map-min", 0.0f64.to_value()),
            ("map-max", 2.0f64.to_value()),
        ],
    );
    s.h.element()
        .unwrap()
        .set_property_from_str("colormap", "viridis");
    let mut input = solid(&s.info, GREY);
    result(true, 0.95, false, Some(hot_corner_map()))
        .attach(input.get_mut().unwrap())
        .unwrap();
    let out = push_pull(&mut s, input);
    let top = colorous::VIRIDIS.eval_continuous(1.0).as_array();
    let bottom = colorous::VIRIDIS.eval_continuous(0.0).as_array();
    assert_close(
        pixel(&s.info, &out, 65, 15),
        top.map(f64::from),
        1.0,
        "viridis top",
    );
    assert_close(
        pixel(&s.info, &out, 5, 50),
        bottom.map(f64::from),
        1.0,
        "viridis bottom",
    );

    // only-above-threshold: cold pixels stay exactly as they were.
    let mut s = setup(
        gst_video::VideoFormat::Rgb,
        80,
        60,
        &[
            ("show-badge", false.to_value()),
            ("only-above-threshold", true.to_value()),
        ],
    );
    let mut input = solid(&s.info, GREY);
    result(true, 0.95, false, Some(hot_corner_map()))
        .attach(input.get_mut().unwrap())
        .unwrap();
    let out = push_pull(&mut s, input);
    assert_eq!(pixel(&s.info, &out, 5, 50), GREY);
    assert_eq!(pixel(&s.info, &out, 20, 40), GREY);
    assert_ne!(pixel(&s.info, &out, 65, 15), GREY);

    // opacity 0: heat map invisible.
    let mut s = setup(
        gst_video::VideoFormat::Rgb,
        80,
        60,
        &[
            ("show-badge", false.to_value()),
            ("opacity", 0.0f64.to_value()),
        ],
    );
    let mut input = solid(&s.info, GREY);
    result(true, 0.95, false, Some(hot_corner_map()))
        .attach(input.get_mut().unwrap())
        .unwrap();
    let expected = bytes(&input);
    let out = push_pull(&mut s, input);
    assert_eq!(bytes(&out), expected);
}

#[test]
fn badge_red_when_anomalous_green_when_not() {
    let mut s = setup(
        gst_video::VideoFormat::Rgb,
        320,
        240,
        &[("show-heatmap", false.to_value())],
    );
    // Scale 1 at 240 lines: badge at (2, 2), 10 px high, 8 px per character + 2.
    let mut input = solid(&s.info, GREY);
    result(true, 0.97, false, None)
        .attach(input.get_mut().unwrap())
        .unwrap();
    let out = push_pull(&mut s, input);
    assert_eq!(pixel(&s.info, &out, 2, 2), BADGE_RED);
    assert_eq!(pixel(&s.info, &out, 2, 11), BADGE_RED);
    assert_eq!(pixel(&s.info, &out, 1, 1), GREY);
    assert_eq!(pixel(&s.info, &out, 2, 12), GREY);
    // "ANOMALY 0.97" = 12 characters: the badge ends at x = 2 + 98.
    assert_eq!(pixel(&s.info, &out, 99, 5), BADGE_RED);
    assert_eq!(pixel(&s.info, &out, 100, 5), GREY);
    assert!(
        count_color(&s.info, &out, 2..100, 2..12, WHITE) > 50,
        "white text"
    );
    assert_eq!(pixel(&s.info, &out, 200, 200), GREY);

    let mut input = solid(&s.info, GREY);
    result(false, 0.12, false, None)
        .attach(input.get_mut().unwrap())
        .unwrap();
    let out = push_pull(&mut s, input);
    assert_eq!(pixel(&s.info, &out, 2, 2), BADGE_GREEN);
    // "OK 0.12" = 7 characters: 58 px wide.
    assert_eq!(pixel(&s.info, &out, 59, 5), BADGE_GREEN);
    assert_eq!(pixel(&s.info, &out, 60, 5), GREY);
    assert!(
        count_color(&s.info, &out, 2..60, 2..12, WHITE) > 30,
        "white text"
    );

    // Held results get a " (held)" suffix, making the badge 7 characters wider.
    let mut input = solid(&s.info, GREY);
    result(false, 0.12, true, None)
        .attach(input.get_mut().unwrap())
        .unwrap();
    let out = push_pull(&mut s, input);
    assert_eq!(pixel(&s.info, &out, 60, 2), BADGE_GREEN);
    assert_eq!(pixel(&s.info, &out, 115, 2), BADGE_GREEN);
    assert_eq!(pixel(&s.info, &out, 116, 2), GREY);
    assert!(
        count_color(&s.info, &out, 60..116, 2..12, WHITE) > 20,
        "white (held)"
    );
}

#[test]
fn badge_scale() {
    // Explicit scale 3: margin 6, height 8 * 3 + 2 * 3 = 30.
    let mut s = setup(
        gst_video::VideoFormat::Xrgb,
        200,
        100,
        &[("badge-scale", 3u32.to_value())],
    );
    let mut input = solid(&s.info, GREY);
    result(true, 0.5, false, None)
        .attach(input.get_mut().unwrap())
        .unwrap();
    let out = push_pull(&mut s, input);
    assert_eq!(pixel(&s.info, &out, 6, 6), BADGE_RED);
    assert_eq!(pixel(&s.info, &out, 6, 35), BADGE_RED);
    assert_eq!(pixel(&s.info, &out, 6, 36), GREY);
    assert_eq!(pixel(&s.info, &out, 5, 6), GREY);

    // Automatic scale at 480 lines is 2: margin 4, height 20.
    let mut s = setup(gst_video::VideoFormat::Abgr, 64, 480, &[]);
    let mut input = solid(&s.info, GREY);
    result(false, 0.1, false, None)
        .attach(input.get_mut().unwrap())
        .unwrap();
    let out = push_pull(&mut s, input);
    assert_eq!(pixel(&s.info, &out, 4, 4), BADGE_GREEN);
    assert_eq!(pixel(&s.info, &out, 4, 23), BADGE_GREEN);
    assert_eq!(pixel(&s.info, &out, 4, 24), GREY);
    assert_eq!(pixel(&s.info, &out, 3, 4), GREY);
}

#[test]
fn region_boxes_and_labels() {
    let mut s = setup(gst_video::VideoFormat::Bgrx, 100, 80, &[]);
    let mut input = solid(&s.info, GREY);
    add_roi(&mut input, "anomaly", (30, 40, 20, 20), Some(0.83));
    add_roi(&mut input, "face", (70, 40, 20, 20), None);
    // Partly outside the frame, and at the top with no room for the label above.
    add_roi(&mut input, "anomaly", (90, 0, 50, 30), Some(0.5));
    let out = push_pull(&mut s, input);

    // Thickness 2 (scale 1), drawn inside the rectangle.
    for (x, y) in [
        (30, 50),
        (31, 50),
        (49, 50),
        (48, 50),
        (40, 40),
        (40, 41),
        (40, 59),
    ] {
        assert_eq!(pixel(&s.info, &out, x, y), REGION, "box edge at ({x}, {y})");
    }
    for (x, y) in [(29, 50), (32, 50), (47, 50), (50, 50), (40, 42), (40, 60)] {
        assert_eq!(
            pixel(&s.info, &out, x, y),
            GREY,
            "outside the lines at ({x}, {y})"
        );
    }
    // Label "0.83" above the box: 10 px high (y 30..40), 4 * 8 + 2 = 34 px wide.
    assert_eq!(pixel(&s.info, &out, 30, 30), REGION);
    assert_eq!(pixel(&s.info, &out, 63, 30), REGION);
    assert_eq!(pixel(&s.info, &out, 64, 30), GREY);
    assert_eq!(pixel(&s.info, &out, 30, 29), GREY);
    assert!(
        count_color(&s.info, &out, 30..64, 30..40, [0, 0, 0]) > 20,
        "label text"
    );

    // Regions of other types are not drawn.
    assert_eq!(pixel(&s.info, &out, 70, 50), GREY);

    // The clipped box: left edge at 90..92, top edge at y 0..2, label inside below it.
    assert_eq!(pixel(&s.info, &out, 90, 20), REGION);
    assert_eq!(pixel(&s.info, &out, 91, 20), REGION);
    assert_eq!(pixel(&s.info, &out, 95, 0), REGION);
    assert_eq!(pixel(&s.info, &out, 89, 20), GREY);
    assert_eq!(pixel(&s.info, &out, 95, 29), REGION, "bottom edge");
    assert_eq!(pixel(&s.info, &out, 95, 30), GREY);
}

#[test]
fn regions_off_when_disabled() {
    let mut s = setup(
        gst_video::VideoFormat::Rgb,
        64,
        64,
        &[("show-regions", false.to_value())],
    );
    let mut input = solid(&s.info, GREY);
    add_roi(&mut input, "anomaly", (10, 20, 20, 20), Some(0.83));
    let expected = bytes(&input);
    let out = push_pull(&mut s, input);
    assert_eq!(bytes(&out), expected);
}

#[test]
fn odd_and_tiny_sizes_do_not_panic() {
    for format in [
        gst_video::VideoFormat::Rgb,
        gst_video::VideoFormat::Bgrx,
        gst_video::VideoFormat::Argb,
    ] {
        for (w, h) in [(1, 1), (3, 5), (7, 3), (2, 1), (1, 9)] {
            for scale in [0u32, 5] {
                let mut s = setup(format, w, h, &[("badge-scale", scale.to_value())]);
                let mut input = solid(&s.info, GREY);
                let size = input.size();
                result(true, 0.99, true, Some(hot_corner_map()))
                    .attach(input.get_mut().unwrap())
                    .unwrap();
                add_roi(&mut input, "anomaly", (0, 0, w, h), Some(0.7));
                add_roi(&mut input, "anomaly", (w / 2, h / 2, 0, 0), Some(0.7));
                add_roi(
                    &mut input,
                    "anomaly",
                    (u32::MAX - 1, u32::MAX - 1, u32::MAX, 9),
                    None,
                );
                let out = push_pull(&mut s, input);
                assert_eq!(out.size(), size, "{format:?} {w}x{h}");
                // Something was drawn on every frame (box, badge or heat map).
                assert_ne!(
                    pixel(&s.info, &out, 0, 0),
                    GREY,
                    "{format:?} {w}x{h} scale {scale}"
                );
            }
        }
    }
}

#[test]
fn map_with_odd_dimensions_and_special_values() {
    // A 1x1 map and a 3x2 map with NaN/inf must not upset the upsampling.
    let mut s = setup(
        gst_video::VideoFormat::Rgba,
        17,
        11,
        &[("show-badge", false.to_value())],
    );
    let mut input = solid(&s.info, GREY);
    result(
        false,
        0.1,
        false,
        Some(AnomalyMap::from_values(1, 1, &[2.0])),
    )
    .attach(input.get_mut().unwrap())
    .unwrap();
    let out = push_pull(&mut s, input);
    let top = colorous::INFERNO.eval_continuous(1.0).as_array();
    for (x, y) in [(0, 0), (16, 10), (8, 5)] {
        assert_close(
            pixel(&s.info, &out, x, y),
            blend(GREY, top, 0.45),
            1.5,
            "1x1 map",
        );
    }

    let mut input = solid(&s.info, GREY);
    let values = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, 5.0, -3.0];
    result(
        true,
        0.9,
        false,
        Some(AnomalyMap::from_values(3, 2, &values)),
    )
    .attach(input.get_mut().unwrap())
    .unwrap();
    let out = push_pull(&mut s, input);
    assert_eq!(out.size(), s.info.size());
}

#[test]
fn malformed_meta_is_ignored() {
    let mut s = setup(gst_video::VideoFormat::Rgb, 40, 30, &[]);
    gstlogsad::meta::register();
    // An anomaly meta missing its required fields.
    let mut input = solid(&s.info, GREY);
    {
        let mut meta =
            gst::meta::CustomMeta::add(input.get_mut().unwrap(), gstlogsad::meta::META_NAME)
                .unwrap();
        meta.mut_structure().set("score", "not a number");
    }
    let expected = bytes(&input);
    let out = push_pull(&mut s, input);
    assert_eq!(bytes(&out), expected, "nothing drawn from a malformed meta");

    // Regions are still drawn next to a malformed meta.
    let mut input = solid(&s.info, GREY);
    {
        let mut meta =
            gst::meta::CustomMeta::add(input.get_mut().unwrap(), gstlogsad::meta::META_NAME)
                .unwrap();
        meta.mut_structure().set("score", 1.0f64);
    }
    add_roi(&mut input, "anomaly", (10, 12, 10, 10), None);
    let out = push_pull(&mut s, input);
    assert_eq!(pixel(&s.info, &out, 10, 15), REGION);
    assert_eq!(pixel(&s.info, &out, 2, 2), GREY, "no badge");
}

#[test]
fn switches_between_drawing_and_passthrough_per_buffer() {
    let mut s = setup(gst_video::VideoFormat::Rgbx, 64, 48, &[]);
    for round in 0..3 {
        // With a result: drawn, on a copy when the input is not writable.
        let mut input = solid(&s.info, GREY);
        result(true, 0.9, false, None)
            .attach(input.get_mut().unwrap())
            .unwrap();
        let keep = input.clone();
        let out = push_pull(&mut s, input);
        assert_eq!(pixel(&s.info, &out, 2, 2), BADGE_RED, "round {round}");
        assert_eq!(pixel(&s.info, &keep, 2, 2), GREY, "input left alone");
        assert_ne!(out.as_ptr(), keep.as_ptr());

        // Without: the same buffer, untouched.
        let input = solid(&s.info, GREY);
        let keep = input.clone();
        let out = push_pull(&mut s, input);
        assert_eq!(out.as_ptr(), keep.as_ptr(), "round {round}");
        assert_eq!(pixel(&s.info, &out, 2, 2), GREY);
    }
}

/// The meta's `regions` (relative boxes) are drawn scaled to the frame, and take the place of
/// the ROI metas, which are then ignored.
#[test]
fn meta_regions_are_scaled_to_the_frame_and_replace_rois() {
    let mut s = setup(
        gst_video::VideoFormat::Rgb,
        100,
        80,
        &[
            ("show-badge", false.to_value()),
            ("show-heatmap", false.to_value()),
        ],
    );
    let mut r = result(true, 0.9, false, None);
    // A box of a 50x40 frame: (15, 20, 10, 10) -> (30, 40, 20, 20) in this 100x80 frame.
    r.regions = Some(vec![AnomalyRegion::from_pixels(
        (15, 20, 10, 10),
        50,
        40,
        0.83,
    )]);
    let mut input = solid(&s.info, GREY);
    r.attach(input.get_mut().unwrap()).unwrap();
    // A stale ROI elsewhere: not drawn, the meta's regions win.
    add_roi(&mut input, "anomaly", (70, 40, 20, 20), Some(0.5));
    let out = push_pull(&mut s, input);
    for (x, y) in [(30, 50), (31, 50), (49, 50), (48, 50), (40, 41), (40, 59)] {
        assert_eq!(pixel(&s.info, &out, x, y), REGION, "box edge at ({x}, {y})");
    }
    for (x, y) in [(29, 50), (32, 50), (50, 50), (40, 60)] {
        assert_eq!(pixel(&s.info, &out, x, y), GREY, "outside at ({x}, {y})");
    }
    // The label with the score sits above the box.
    assert_eq!(pixel(&s.info, &out, 30, 30), REGION);
    assert_eq!(pixel(&s.info, &out, 70, 50), GREY, "the ROI meta was drawn");

    // An empty `regions` field draws nothing, ROI metas notwithstanding: the buffer passes.
    r.regions = Some(vec![]);
    let mut input = solid(&s.info, GREY);
    r.attach(input.get_mut().unwrap()).unwrap();
    add_roi(&mut input, "anomaly", (70, 40, 20, 20), Some(0.5));
    let out = push_pull(&mut s, input);
    assert_eq!(pixel(&s.info, &out, 70, 50), GREY);
}

/// An anomalous result with two fired rules: `pins` with the box (100, 60, 20, 15) of a
/// 160x120 frame, i.e. (200, 120, 40, 30) of a 320x240 one, and `area(cable)` without instances.
fn result_with_rules() -> AnomalyResult {
    let mut r = result(true, 0.97, false, None);
    r.rules = vec![
        RuleHit {
            name: "pins".into(),
            measured: 14.0,
            min: 15.0,
            max: 15.0,
            message: "pins: 14, expected 15".into(),
            instances: vec![RelativeBox::from_pixels((100, 60, 20, 15), 160, 120)],
        },
        RuleHit {
            name: "area(cable)".into(),
            measured: 0.5,
            min: 0.8,
            max: 1.2,
            message: "area(cable): 0.50, expected 0.80..1.20".into(),
            instances: vec![],
        },
    ];
    r
}

/// Pixels of `a` and `b` that differ within the rectangle.
fn count_differences(
    info: &gst_video::VideoInfo,
    a: &gst::Buffer,
    b: &gst::Buffer,
    xs: std::ops::Range<usize>,
    ys: std::ops::Range<usize>,
) -> usize {
    let mut n = 0;
    for y in ys {
        for x in xs.clone() {
            if pixel(info, a, x, y) != pixel(info, b, x, y) {
                n += 1;
            }
        }
    }
    n
}

#[test]
fn fired_rules_are_named_under_the_badge_and_their_instances_outlined() {
    let mut s = setup(
        gst_video::VideoFormat::Rgb,
        320,
        240,
        &[("show-heatmap", false.to_value())],
    );
    // Scale 1 at 240 lines: badge lines 10 px high from (2, 2).
    let mut input = solid(&s.info, GREY);
    result(true, 0.97, false, None)
        .attach(input.get_mut().unwrap())
        .unwrap();
    let plain = push_pull(&mut s, input);
    let mut input = solid(&s.info, GREY);
    result_with_rules()
        .attach(input.get_mut().unwrap())
        .unwrap();
    let out = push_pull(&mut s, input);

    // The score line is unchanged: "ANOMALY 0.97", y 2..12, x 2..100.
    assert_eq!(
        count_differences(&s.info, &plain, &out, 0..320, 0..12),
        0,
        "score line"
    );
    // The first rule on the line below: "pins: 14, expected 15" is 21 characters, 170 px wide.
    assert_eq!(pixel(&s.info, &plain, 2, 12), GREY);
    assert_eq!(pixel(&s.info, &out, 2, 12), BADGE_RED);
    assert_eq!(pixel(&s.info, &out, 171, 21), BADGE_RED);
    assert_eq!(pixel(&s.info, &out, 172, 15), GREY);
    assert!(
        count_color(&s.info, &out, 2..172, 12..22, WHITE) > 100,
        "white rule text"
    );
    // The second rule under it: 38 characters, 306 px wide, y 22..32; nothing below.
    assert_eq!(pixel(&s.info, &out, 2, 22), BADGE_RED);
    assert_eq!(pixel(&s.info, &out, 307, 31), BADGE_RED);
    assert_eq!(pixel(&s.info, &out, 308, 25), GREY);
    assert_eq!(pixel(&s.info, &out, 2, 32), GREY);
    assert!(
        count_color(&s.info, &out, 2..308, 22..32, WHITE) > 150,
        "white rule text"
    );
    // Every pixel of the two lines' boxes (170 x 10 and 306 x 10) changed, and none below.
    assert_eq!(
        count_differences(&s.info, &plain, &out, 0..320, 12..32),
        170 * 10 + 306 * 10
    );
    assert_eq!(count_differences(&s.info, &plain, &out, 0..320, 32..100), 0);

    // The pins instance box, 2 px lines inside (200, 120, 40, 30); not in the plain run.
    for (x, y) in [
        (200, 135),
        (201, 135),
        (239, 135),
        (238, 135),
        (220, 120),
        (220, 121),
        (220, 149),
        (220, 148),
    ] {
        assert_eq!(
            pixel(&s.info, &out, x, y),
            INSTANCE,
            "box edge at ({x}, {y})"
        );
        assert_eq!(pixel(&s.info, &plain, x, y), GREY, "plain at ({x}, {y})");
    }
    for (x, y) in [
        (199, 135),
        (202, 135),
        (237, 135),
        (240, 135),
        (220, 122),
        (220, 150),
    ] {
        assert_eq!(
            pixel(&s.info, &out, x, y),
            GREY,
            "outside the lines at ({x}, {y})"
        );
    }
    assert_eq!(
        count_color(&s.info, &out, 0..320, 0..240, INSTANCE),
        2 * (40 + 30) * 2 - 16
    );

    // outline-instances=false: the rules are still named, the box is not drawn.
    s.h.element()
        .unwrap()
        .set_property("outline-instances", false);
    let mut input = solid(&s.info, GREY);
    result_with_rules()
        .attach(input.get_mut().unwrap())
        .unwrap();
    let out = push_pull(&mut s, input);
    assert_eq!(pixel(&s.info, &out, 2, 22), BADGE_RED);
    assert_eq!(count_color(&s.info, &out, 0..320, 0..240, INSTANCE), 0);
}

#[test]
fn instance_outlines_alone_are_drawn_and_can_be_turned_off() {
    let mut s = setup(
        gst_video::VideoFormat::Bgrx,
        320,
        240,
        &[
            ("show-heatmap", false.to_value()),
            ("show-badge", false.to_value()),
            ("show-regions", false.to_value()),
        ],
    );
    assert!(s.h.element().unwrap().property::<bool>("outline-instances"));
    let mut input = solid(&s.info, GREY);
    result_with_rules()
        .attach(input.get_mut().unwrap())
        .unwrap();
    let out = push_pull(&mut s, input);
    assert_eq!(pixel(&s.info, &out, 200, 135), INSTANCE);
    assert_eq!(pixel(&s.info, &out, 2, 12), GREY, "no badge");

    // With the outlines off too there is nothing to draw: the very buffer passes through.
    s.h.element()
        .unwrap()
        .set_property("outline-instances", false);
    let mut input = solid(&s.info, GREY);
    result_with_rules()
        .attach(input.get_mut().unwrap())
        .unwrap();
    let expected = bytes(&input);
    let keep = input.clone();
    let out = push_pull(&mut s, input);
    assert_eq!(bytes(&out), expected);
    assert_eq!(out.as_ptr(), keep.as_ptr());
}
