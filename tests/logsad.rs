//! Integration tests of the `logsad` detector element: enrollment with the tiny test model, real
//! pipelines and harnesses in several formats and sizes, the `interval` and `threshold`
//! properties, clear errors for bad profiles, models and caps, EOS and flushes mid-stream, the
//! real DINOv2 backbone on textile images, and reading the metadata from Python.
//!
//! Needs what `make deps` prepares in `.deps/`: ONNX Runtime, the tiny model (`models/tiny`), the
//! DINOv2 ViT-S/14 model and the textile images, and the release plugin with Debian's python3 and
//! PyGObject for the Python test; a test fails naming what it needs and cannot find.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use gst::glib;
use gst::prelude::*;
use gst_video::prelude::*;
use gstlogsad::detect::tiling::Tiling;
use gstlogsad::detectors::DetectorSpec;
use gstlogsad::enroll::{enroll, EnrollOptions};
use gstlogsad::meta::AnomalyResult;
use gstlogsad::profile::PatchSpec;
use std::str::FromStr;

mod common;
use common::*;

const W: u32 = 64;
const H: u32 = 48;
/// Centre and radius of the defect blob, in the top-left quadrant.
const BLOB: (u32, u32, u32) = (16, 12, 8);

/// A packed RGB image of vertical stripes with grey noise; with `defect`, a bright blob at
/// [`BLOB`] (scaled to the image size).
fn texture(width: u32, height: u32, seed: u64, defect: bool) -> Vec<u8> {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let (cx, cy, r) = (
        BLOB.0 as f64 * width as f64 / W as f64,
        BLOB.1 as f64 * height as f64 / H as f64,
        BLOB.2 as f64 * width.min(height) as f64 / H as f64,
    );
    let mut out = Vec::with_capacity((width * height * 3) as usize);
    for y in 0..height {
        for x in 0..width {
            let noise = (rng.next() % 13) as i32 - 6;
            let base: [i32; 3] = if (x / 4) % 2 == 0 {
                [70, 90, 60]
            } else {
                [150, 170, 140]
            };
            let (dx, dy) = (x as f64 + 0.5 - cx, y as f64 + 0.5 - cy);
            if defect && dx * dx + dy * dy <= r * r {
                out.extend_from_slice(&[255, 250, 235]);
            } else {
                out.extend(base.iter().map(|c| (c + noise).clamp(0, 255) as u8));
            }
        }
    }
    out
}

fn save_png(path: &Path, width: u32, height: u32, rgb: Vec<u8>) {
    image::RgbImage::from_raw(width, height, rgb)
        .unwrap()
        .save(path)
        .unwrap();
}

/// Reference and validation images written to a temporary folder, and profiles enrolled from
/// them with the tiny model.
struct Tiny {
    dir: tempfile::TempDir,
    manifest: PathBuf,
    /// Whole-frame tiling: 4x4 map.
    whole: PathBuf,
    /// 2x2 tiles: 8x8 map.
    tiled: PathBuf,
}

/// The verdict threshold of the tiny profiles: sigmoid(15), 15 validation standard deviations.
/// Noise is all that varies between the nominal textures, so the validation spread is tiny and
/// its tail heavy (a nominal frame lands 5 to 7 deviations out now and then), while the blob
/// lands hundreds of deviations out: the default sigmoid(3) would flag nominal frames.
const TINY_THRESHOLD: f64 = 0.999_999_694_097_773_1;

const NOMINAL_SEEDS: [u64; 4] = [100, 101, 102, 103];
const DEFECT_SEED: u64 = 200;

fn tiny() -> Tiny {
    init();
    let manifest = tiny_manifest();
    let dir = tempfile::tempdir().unwrap();
    let mut references = Vec::new();
    let mut validation = Vec::new();
    for seed in 0..8u64 {
        let path = dir.path().join(format!("ref_{seed}.png"));
        save_png(&path, W, H, texture(W, H, seed, false));
        references.push(path);
    }
    for seed in 10..26u64 {
        let path = dir.path().join(format!("val_{seed}.png"));
        save_png(&path, W, H, texture(W, H, seed, false));
        validation.push(path);
    }
    let enroll_with = |tiling: Tiling, name: &str| {
        let options = EnrollOptions {
            detectors: vec![DetectorSpec::Patch(PatchSpec {
                tiling,
                ..PatchSpec::faithful()
            })],
            threshold: TINY_THRESHOLD,
            ..EnrollOptions::default()
        };
        let mut calls = 0;
        let (profile, _warnings) = enroll(
            &manifest,
            &references,
            &validation,
            &options,
            &mut |_, _, _| calls += 1,
        )
        .expect("enrollment with the tiny model");
        assert_eq!(calls, references.len() + validation.len());
        let detector = &profile.header.detectors[0];
        assert_eq!(detector.validation_scores.len(), validation.len());
        let path = dir.path().join(name);
        profile.save(&path).unwrap();
        path
    };
    let whole = enroll_with(Tiling::whole(), "whole.logsad");
    let tiled = enroll_with(
        Tiling {
            rows: 2,
            cols: 2,
            ..Tiling::whole()
        },
        "tiled.logsad",
    );
    Tiny {
        dir,
        manifest,
        whole,
        tiled,
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Frames, pipelines and harnesses
// ---------------------------------------------------------------------------------------------

fn video_info(format: gst_video::VideoFormat, width: u32, height: u32) -> gst_video::VideoInfo {
    gst_video::VideoInfo::builder(format, width, height)
        .fps(gst::Fraction::new(30, 1))
        .build()
        .unwrap()
}

/// A buffer in `format` holding the packed RGB image `rgb` (converted by GStreamer).
fn frame_buffer(
    format: gst_video::VideoFormat,
    width: u32,
    height: u32,
    rgb: &[u8],
    index: u64,
) -> gst::Buffer {
    let rgb_info = video_info(gst_video::VideoFormat::Rgb, width, height);
    let mut buffer = gst::Buffer::with_size(rgb_info.size()).unwrap();
    {
        let mut frame = gst_video::VideoFrameRef::from_buffer_ref_writable(
            buffer.get_mut().unwrap(),
            &rgb_info,
        )
        .unwrap();
        let stride = frame.plane_stride()[0] as usize;
        let data = frame.plane_data_mut(0).unwrap();
        for (y, row) in rgb.chunks_exact(width as usize * 3).enumerate() {
            data[y * stride..y * stride + row.len()].copy_from_slice(row);
        }
    }
    let mut buffer = if format == gst_video::VideoFormat::Rgb {
        buffer
    } else {
        let info = video_info(format, width, height);
        let converter = gst_video::VideoConverter::new(&rgb_info, &info, None).unwrap();
        let mut out = gst::Buffer::with_size(info.size()).unwrap();
        {
            let src =
                gst_video::VideoFrameRef::from_buffer_ref_readable(&buffer, &rgb_info).unwrap();
            let mut dst =
                gst_video::VideoFrameRef::from_buffer_ref_writable(out.get_mut().unwrap(), &info)
                    .unwrap();
            converter.frame_ref(&src, &mut dst);
        }
        out
    };
    {
        let b = buffer.get_mut().unwrap();
        b.set_pts(gst::ClockTime::from_mseconds(33 * index));
        b.set_duration(gst::ClockTime::from_mseconds(33));
    }
    buffer
}

/// A `logsad` element with the given properties.
fn logsad(props: &[(&str, glib::Value)]) -> gst::Element {
    init();
    let element = gst::ElementFactory::make("logsad").build().unwrap();
    for (name, value) in props {
        element.set_property_from_value(name, value);
    }
    element
}

fn tiny_props(t: &Tiny, profile: &Path) -> Vec<(&'static str, glib::Value)> {
    vec![
        ("profile", path_str(profile).to_value()),
        ("model", path_str(&t.manifest).to_value()),
    ]
}

/// A harness around a configured `logsad`, with input caps set.
fn harness(
    element: &gst::Element,
    format: gst_video::VideoFormat,
    width: u32,
    height: u32,
) -> gst_check::Harness {
    let mut h = gst_check::Harness::with_element(element, Some("sink"), Some("src"));
    h.set_src_caps(video_info(format, width, height).to_caps().unwrap());
    h
}

/// What came out of a pipeline run.
struct Run {
    buffers: Vec<gst::Buffer>,
    messages: Vec<gst::Message>,
    error: Option<String>,
}

impl Run {
    fn anomaly_messages(&self) -> Vec<gst::Structure> {
        self.messages
            .iter()
            .filter_map(|m| match m.view() {
                gst::MessageView::Element(e) => e
                    .structure()
                    .filter(|s| s.name() == "logsad-anomaly")
                    .map(|s| s.to_owned()),
                _ => None,
            })
            .collect()
    }
}

/// Runs `appsrc ! {middle} ! fakesink`, pushing `frames` with `caps`; collects the buffers that
/// reach the sink and every bus message until EOS or an error.
fn run_pipeline(middle: &str, caps: &gst::Caps, frames: Vec<gst::Buffer>) -> Run {
    init();
    let description =
        format!("appsrc name=src format=time ! {middle} ! fakesink name=sink sync=false");
    let pipeline = gst::parse::launch(&description)
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
    let src = pipeline.by_name("src").unwrap();
    src.set_property("caps", caps);
    let buffers = Arc::new(Mutex::new(Vec::new()));
    {
        let buffers = buffers.clone();
        let sinkpad = pipeline
            .by_name("sink")
            .unwrap()
            .static_pad("sink")
            .unwrap();
        sinkpad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            if let Some(gst::PadProbeData::Buffer(buffer)) = &info.data {
                buffers.lock().unwrap().push(buffer.clone());
            }
            gst::PadProbeReturn::Ok
        });
    }
    let bus = pipeline.bus().unwrap();
    let _ = pipeline.set_state(gst::State::Playing);
    for frame in frames {
        let _: gst::FlowReturn = src.emit_by_name("push-buffer", &[&frame]);
    }
    let _: gst::FlowReturn = src.emit_by_name("end-of-stream", &[]);
    let mut messages = Vec::new();
    let mut error = None;
    loop {
        let message = bus
            .timed_pop(gst::ClockTime::from_seconds(60))
            .expect("timed out waiting for EOS or an error");
        match message.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(e) => {
                error = Some(format!(
                    "{} | {}",
                    e.error(),
                    e.debug().map(|d| d.to_string()).unwrap_or_default()
                ));
                break;
            }
            _ => messages.push(message),
        }
    }
    pipeline.set_state(gst::State::Null).unwrap();
    let buffers = std::mem::take(&mut *buffers.lock().unwrap());
    Run {
        buffers,
        messages,
        error,
    }
}

/// Starts `videotestsrc ! logsad ! fakesink` with the given `logsad` properties and returns the
/// message of the ERROR it posts, failing if none comes or the state change succeeds.
fn start_error(props: &[(&str, glib::Value)]) -> String {
    init();
    let pipeline = gst::parse::launch(
        "videotestsrc num-buffers=2 ! video/x-raw,width=32,height=32 ! logsad name=d ! fakesink",
    )
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let d = pipeline.by_name("d").unwrap();
    for (name, value) in props {
        d.set_property_from_value(name, value);
    }
    let result = pipeline.set_state(gst::State::Playing);
    let bus = pipeline.bus().unwrap();
    let message = bus.timed_pop_filtered(
        gst::ClockTime::from_seconds(30),
        &[gst::MessageType::Error, gst::MessageType::Eos],
    );
    pipeline.set_state(gst::State::Null).unwrap();
    let message = message.expect("no ERROR message");
    match message.view() {
        gst::MessageView::Error(e) => {
            assert!(
                result.is_err(),
                "the state change should fail when the element cannot start"
            );
            let from_logsad = message.src().map(|s| s.name() == "d").unwrap_or(false);
            assert!(
                from_logsad,
                "the error should come from logsad: {message:?}"
            );
            // The cause goes in the error's message (what applications show), not only in the
            // debug string.
            let text = e.error().to_string();
            eprintln!("logsad error: {text}");
            text
        }
        _ => panic!("the pipeline ran to EOS instead of failing: {props:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Reading results
// ---------------------------------------------------------------------------------------------

fn result_of(buffer: &gst::BufferRef) -> AnomalyResult {
    AnomalyResult::from_buffer(buffer)
        .expect("the buffer has no LogsadAnomalyMeta")
        .expect("the LogsadAnomalyMeta cannot be read")
}

/// Anomaly ROIs: rectangle and the "anomaly" param's score.
fn rois(buffer: &gst::BufferRef) -> Vec<((u32, u32, u32, u32), f64)> {
    buffer
        .iter_meta::<gst_video::VideoRegionOfInterestMeta>()
        .filter(|m| m.roi_type() == "anomaly")
        .map(|m| {
            let param = m
                .param("anomaly")
                .expect("anomaly ROI without an \"anomaly\" param");
            let score = param.get::<f64>("score").expect("ROI param without score");
            (m.rect(), score)
        })
        .collect()
}

/// Checks what every result must satisfy; returns the map values.
fn check_result(r: &AnomalyResult, map_size: (u32, u32)) -> Vec<f32> {
    assert!(r.score.is_finite(), "score {}", r.score);
    assert!(
        (0.0..=1.0).contains(&r.calibrated),
        "calibrated {}",
        r.calibrated
    );
    assert!(r.threshold.is_finite() && (0.0..=1.0).contains(&r.threshold));
    assert_eq!(r.anomalous, r.calibrated >= r.threshold);
    let patch = r
        .detectors
        .iter()
        .find(|d| d.name == "patch")
        .expect("no patch detector");
    assert_eq!(patch.raw, r.score);
    assert_eq!(patch.calibrated, r.calibrated);
    let map = r.map.as_ref().expect("no anomaly map");
    assert_eq!((map.width, map.height), map_size, "map size");
    let values = map.values();
    assert_eq!(values.len(), (map_size.0 * map_size.1) as usize);
    assert!(values.iter().all(|v| v.is_finite()), "{values:?}");
    let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    assert!(
        (max as f64 - r.score).abs() < 1e-6,
        "score {} is not the map maximum {max}",
        r.score
    );
    values
}

fn check_rois_inside(buffer: &gst::BufferRef, width: u32, height: u32) {
    for ((x, y, w, h), score) in rois(buffer) {
        assert!(w > 0 && h > 0, "empty ROI {:?}", (x, y, w, h));
        assert!(
            x + w <= width && y + h <= height,
            "ROI {:?} outside the {width}x{height} frame",
            (x, y, w, h)
        );
        assert!(score.is_finite());
    }
}

// ---------------------------------------------------------------------------------------------
// Tests: tiny model
// ---------------------------------------------------------------------------------------------

/// Enroll with the tiny model (whole frame and 2x2 tiles), then run nominal frames and one with
/// a blob through `appsrc ! videoconvert ! FORMAT ! logsad ! fakesink` in RGB, BGRx and I420.
#[test]
fn tiny_model_end_to_end() {
    let t = tiny();
    // Frame 3 has the defect.
    let images: Vec<Vec<u8>> = NOMINAL_SEEDS[..3]
        .iter()
        .map(|&s| texture(W, H, s, false))
        .chain([texture(W, H, DEFECT_SEED, true)])
        .chain([texture(W, H, NOMINAL_SEEDS[3], false)])
        .collect();
    const DEFECT: usize = 3;
    let caps = video_info(gst_video::VideoFormat::Rgb, W, H)
        .to_caps()
        .unwrap();
    for (profile, map_size) in [(&t.whole, (4, 4)), (&t.tiled, (8, 8))] {
        for format in ["RGB", "BGRx", "I420"] {
            let what = format!("{format} with {}", profile.display());
            let frames = images
                .iter()
                .enumerate()
                .map(|(i, rgb)| frame_buffer(gst_video::VideoFormat::Rgb, W, H, rgb, i as u64))
                .collect();
            let middle = format!(
                "videoconvert ! video/x-raw,format={format} ! logsad name=d profile={} model={}",
                path_str(profile),
                path_str(&t.manifest)
            );
            let run = run_pipeline(&middle, &caps, frames);
            assert!(run.error.is_none(), "{what}: {:?}", run.error);
            assert_eq!(run.buffers.len(), images.len(), "{what}");
            let results: Vec<AnomalyResult> = run
                .buffers
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    let r = result_of(b);
                    check_result(&r, map_size);
                    assert_eq!(r.frame, i as u64, "{what}");
                    assert!(!r.stale, "{what}");
                    check_rois_inside(b, W, H);
                    r
                })
                .collect();
            let nominal_max = results
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != DEFECT)
                .map(|(_, r)| r.score)
                .fold(f64::NEG_INFINITY, f64::max);
            let defect = &results[DEFECT];
            eprintln!(
                "{what}: nominal scores {:?}, defect {} (calibrated {})",
                results.iter().map(|r| r.score).collect::<Vec<_>>(),
                defect.score,
                defect.calibrated
            );
            assert!(
                defect.score > 50.0 * nominal_max,
                "{what}: defect {} vs nominal max {nominal_max}",
                defect.score
            );
            assert!(defect.anomalous, "{what}: defect not anomalous");

            // The defect frame's regions: the strongest (they come sorted) is on the blob.
            let regions = rois(&run.buffers[DEFECT]);
            assert!(!regions.is_empty(), "{what}: no ROI on the defect frame");
            // The strongest is cut to the cells near the map's peak: it overlaps the blob's disc
            // (centre BLOB.0, BLOB.1, radius BLOB.2).
            let ((x, y, w, h), peak) = regions[0];
            let nearest = |lo: u32, len: u32, c: u32| c.clamp(lo, lo + len - 1) as f64 + 0.5;
            let (dx, dy) = (
                nearest(x, w, BLOB.0) - BLOB.0 as f64,
                nearest(y, h, BLOB.1) - BLOB.1 as f64,
            );
            assert!(
                dx * dx + dy * dy <= (BLOB.2 * BLOB.2) as f64,
                "{what}: the strongest ROI is not on the blob: {regions:?}"
            );
            assert!((peak - defect.score).abs() < 1e-6, "{what}: {regions:?}");

            // A bus message for each anomalous frame, with its result.
            let messages = run.anomaly_messages();
            let anomalous: Vec<u64> = results
                .iter()
                .filter(|r| r.anomalous)
                .map(|r| r.frame)
                .collect();
            let posted: Vec<u64> = messages
                .iter()
                .map(|m| m.get::<u64>("frame").unwrap())
                .collect();
            assert_eq!(posted, anomalous, "{what}: {messages:?}");
            for m in &messages {
                let i = m.get::<u64>("frame").unwrap() as usize;
                assert_eq!(m.get::<f64>("score").unwrap(), results[i].score);
                assert_eq!(m.get::<f64>("calibrated").unwrap(), results[i].calibrated);
                assert_eq!(
                    m.get::<u32>("regions").unwrap() as usize,
                    rois(&run.buffers[i]).len()
                );
                assert_eq!(
                    m.get::<u64>("timestamp").unwrap(),
                    gst::ClockTime::from_mseconds(33 * i as u64).nseconds()
                );
            }

            // The profile was enrolled from RGB images: in the lossless formats the nominal
            // frames pass. I420 halves the chroma and requantises, which shifts every score (the
            // blob still stands out by two orders of magnitude, checked above).
            if format != "I420" {
                for (i, r) in results.iter().enumerate() {
                    if i != DEFECT {
                        assert!(!r.anomalous, "{what}: nominal frame {i} anomalous ({r:?})");
                        assert!(rois(&run.buffers[i]).is_empty(), "{what}: ROI on frame {i}");
                    }
                }
                assert_eq!(posted, [DEFECT as u64], "{what}");
            }
        }
    }
}

/// `threshold=0` makes every frame anomalous, with one region covering the whole frame when
/// regions are left uncut (`region-peak-fraction=0`), and posts a message per frame; the property
/// can change while playing.
#[test]
fn threshold_property_controls_verdict_regions_and_messages() {
    let t = tiny();
    let caps = video_info(gst_video::VideoFormat::Rgb, W, H)
        .to_caps()
        .unwrap();
    let frames = NOMINAL_SEEDS
        .iter()
        .enumerate()
        .map(|(i, &s)| {
            frame_buffer(
                gst_video::VideoFormat::Rgb,
                W,
                H,
                &texture(W, H, s, false),
                i as u64,
            )
        })
        .collect::<Vec<_>>();
    let middle = format!(
        "logsad name=d threshold=0.0 region-peak-fraction=0.0 profile={} model={}",
        path_str(&t.tiled),
        path_str(&t.manifest)
    );
    let run = run_pipeline(&middle, &caps, frames.clone());
    assert!(run.error.is_none(), "{:?}", run.error);
    assert_eq!(run.buffers.len(), frames.len());
    for b in &run.buffers {
        let r = result_of(b);
        check_result(&r, (8, 8));
        assert!(r.anomalous);
        assert_eq!(r.threshold, 0.0);
        let regions = rois(b);
        assert_eq!(regions.len(), 1, "{regions:?}");
        assert_eq!(regions[0].0, (0, 0, W, H));
        assert!((regions[0].1 - r.score).abs() < 1e-6);
    }
    let messages = run.anomaly_messages();
    assert_eq!(messages.len(), frames.len());
    for (i, m) in messages.iter().enumerate() {
        assert_eq!(m.get::<u64>("frame").unwrap(), i as u64);
        assert_eq!(m.get::<u32>("regions").unwrap(), 1);
    }

    // min-region-area above the map size drops every region, but not the verdict.
    let middle = format!("{middle} min-region-area=100");
    let run = run_pipeline(&middle, &caps, frames[..1].to_vec());
    assert!(run.error.is_none(), "{:?}", run.error);
    assert!(result_of(&run.buffers[0]).anomalous);
    assert!(rois(&run.buffers[0]).is_empty());

    // Changing the threshold while playing.
    let element = logsad(&tiny_props(&t, &t.whole));
    let mut h = harness(&element, gst_video::VideoFormat::Rgb, W, H);
    let out = h.push_and_pull(frames[0].clone()).unwrap();
    let before = result_of(&out);
    assert!(!before.anomalous, "{before:?}");
    assert!(rois(&out).is_empty());
    element.set_property("threshold", 0.0f64);
    element.set_property("region-peak-fraction", 0.0f64);
    let out = h.push_and_pull(frames[0].clone()).unwrap();
    let after = result_of(&out);
    assert!(after.anomalous);
    assert_eq!(after.score, before.score, "same image, same score");
    assert_eq!(rois(&out).len(), 1);
}

/// `interval=3`: frames 1 and 2 carry frame 0's result marked stale, frame 3 is analysed.
#[test]
fn interval_carries_stale_results() {
    let t = tiny();
    let element = logsad(&{
        let mut p = tiny_props(&t, &t.tiled);
        p.push(("interval", 3u32.to_value()));
        p.push(("threshold", 0.0f64.to_value()));
        p.push(("region-peak-fraction", 0.0f64.to_value()));
        p
    });
    let mut h = harness(&element, gst_video::VideoFormat::Rgb, W, H);
    let mut results = Vec::new();
    for i in 0..7u64 {
        // Every frame differs, so carried results are recognisable.
        let rgb = texture(W, H, 300 + i, i == 1 || i == 4);
        let out = h
            .push_and_pull(frame_buffer(gst_video::VideoFormat::Rgb, W, H, &rgb, i))
            .unwrap();
        let r = result_of(&out);
        check_result(&r, (8, 8));
        assert_eq!(rois(&out).len(), 1, "frame {i}: regions are carried too");
        results.push(r);
    }
    for (i, r) in results.iter().enumerate() {
        let fresh = i - i % 3;
        assert_eq!(r.stale, i % 3 != 0, "frame {i}");
        assert_eq!(r.frame, fresh as u64, "frame {i}");
        let f = &results[fresh];
        assert_eq!(r.score, f.score, "frame {i}");
        assert_eq!(r.calibrated, f.calibrated);
        assert_eq!(
            r.map.as_ref().unwrap().values(),
            f.map.as_ref().unwrap().values()
        );
    }
    // The defect on frames 1 and 4 is never analysed: no carried result shows it.
    assert!(results[1].score < 0.5 * texture_defect_score(&t));
    assert_ne!(results[0].score, results[3].score);
    assert_ne!(results[3].score, results[6].score);

    // The interval can change while playing: every frame is analysed again.
    element.set_property("interval", 1u32);
    for i in 7..9u64 {
        let rgb = texture(W, H, 300 + i, false);
        let out = h
            .push_and_pull(frame_buffer(gst_video::VideoFormat::Rgb, W, H, &rgb, i))
            .unwrap();
        let r = result_of(&out);
        assert!(!r.stale);
        assert_eq!(r.frame, i);
    }
}

/// Renegotiating to another size and format mid-stream: the next frame is analysed afresh (a
/// carried result's regions are in the old frame's pixels), and everything fits the new frame.
#[test]
fn caps_change_mid_stream() {
    use gst_video::VideoFormat::*;
    let t = tiny();
    let element = logsad(&{
        let mut p = tiny_props(&t, &t.tiled);
        p.push(("interval", 3u32.to_value()));
        p.push(("threshold", 0.0f64.to_value()));
        p.push(("region-peak-fraction", 0.0f64.to_value()));
        p
    });
    let mut h = harness(&element, Rgb, W, H);
    let mut index = 0u64;
    for (format, w, hh) in [(Rgb, W, H), (I420, 17, 9), (Bgrx, 3, 5), (Rgb, W, H)] {
        h.set_src_caps(video_info(format, w, hh).to_caps().unwrap());
        for k in 0..2 {
            let rgb = texture(w, hh, index, false);
            let out = h
                .push_and_pull(frame_buffer(format, w, hh, &rgb, index))
                .unwrap();
            let r = result_of(&out);
            check_result(&r, (8, 8));
            // Every third frame is analysed, and the first one after new caps.
            assert_eq!(
                r.stale,
                k != 0 && index % 3 != 0,
                "{format:?} {w}x{hh}: frame {index}"
            );
            let regions = rois(&out);
            assert_eq!(regions.len(), 1);
            assert_eq!(regions[0].0, (0, 0, w, hh), "{format:?} {w}x{hh}");
            check_rois_inside(&out, w, hh);
            index += 1;
        }
    }
}

/// The tiled profile's score of the defect image, for comparisons.
fn texture_defect_score(t: &Tiny) -> f64 {
    let element = logsad(&tiny_props(t, &t.tiled));
    let mut h = harness(&element, gst_video::VideoFormat::Rgb, W, H);
    let rgb = texture(W, H, DEFECT_SEED, true);
    let out = h
        .push_and_pull(frame_buffer(gst_video::VideoFormat::Rgb, W, H, &rgb, 0))
        .unwrap();
    result_of(&out).score
}

/// Odd and tiny frame sizes in several formats give complete results and sane regions.
#[test]
fn odd_frame_sizes() {
    use gst_video::VideoFormat::*;
    let t = tiny();
    for (profile, map_size) in [(&t.whole, (4, 4)), (&t.tiled, (8, 8))] {
        for format in [Rgb, I420, Bgrx, Nv12, Yuy2, Gray8] {
            for (w, h) in [(1, 1), (3, 5), (17, 9), (2, 2), (5, 1), (1, 7)] {
                let what = format!("{format:?} {w}x{h} with {}", profile.display());
                let element = logsad(&{
                    let mut p = tiny_props(&t, profile);
                    p.push(("threshold", 0.0f64.to_value()));
                    p.push(("region-peak-fraction", 0.0f64.to_value()));
                    p
                });
                let mut harness = harness(&element, format, w, h);
                for i in 0..2u64 {
                    let rgb = texture(w, h, i, i == 1);
                    let out = harness
                        .push_and_pull(frame_buffer(format, w, h, &rgb, i))
                        .unwrap_or_else(|e| panic!("{what}: {e}"));
                    let r = result_of(&out);
                    check_result(&r, map_size);
                    assert_eq!(r.frame, i, "{what}");
                    check_rois_inside(&out, w, h);
                    assert_eq!(rois(&out).len(), 1, "{what}");
                }
            }
        }
    }
}

/// EOS in the middle of a stream, then a flush, then more buffers: no panic, and the element
/// keeps analysing with the same results.
#[test]
fn eos_and_flush_mid_stream() {
    let t = tiny();
    let element = logsad(&tiny_props(&t, &t.tiled));
    let mut h = harness(&element, gst_video::VideoFormat::I420, W, H);
    let frame = |i: u64| {
        frame_buffer(
            gst_video::VideoFormat::I420,
            W,
            H,
            &texture(W, H, DEFECT_SEED, i % 2 == 1),
            i,
        )
    };
    let first: Vec<AnomalyResult> = (0..2)
        .map(|i| result_of(&h.push_and_pull(frame(i)).unwrap()))
        .collect();
    assert!(first[1].score > first[0].score);

    // EOS mid-stream: the EOS goes through, then data is refused until a flush.
    assert!(h.push_event(gst::event::Eos::new()));
    let eos = loop {
        let e = h.pull_event().unwrap();
        if e.type_() == gst::EventType::Eos {
            break e;
        }
    };
    assert_eq!(eos.type_(), gst::EventType::Eos);
    assert_eq!(h.push(frame(2)), Err(gst::FlowError::Eos));

    // Flush: refused while flushing, accepted after the flush and a new segment.
    assert!(h.push_event(gst::event::FlushStart::new()));
    assert_eq!(h.push(frame(2)), Err(gst::FlowError::Flushing));
    assert!(h.push_event(gst::event::FlushStop::new(true)));
    assert!(
        h.push_event(gst::event::Segment::new(&gst::FormattedSegment::<
            gst::ClockTime,
        >::new()))
    );
    for i in 2..6u64 {
        let out = h.push_and_pull(frame(i)).unwrap();
        let r = result_of(&out);
        check_result(&r, (8, 8));
        assert_eq!(r.frame, i, "frame numbers continue after the flush");
        assert_eq!(r.score, first[(i % 2) as usize].score, "frame {i}");
    }

    // A second flush, keeping the running time, and a new segment.
    assert!(h.push_event(gst::event::FlushStart::new()));
    assert!(h.push_event(gst::event::FlushStop::new(false)));
    assert!(
        h.push_event(gst::event::Segment::new(&gst::FormattedSegment::<
            gst::ClockTime,
        >::new()))
    );
    let r = result_of(&h.push_and_pull(frame(7)).unwrap());
    assert_eq!(r.frame, 6);
    assert_eq!(r.score, first[1].score);
}

/// Caps the element cannot handle fail negotiation with an error message, no crash.
#[test]
fn unsupported_caps_fail_negotiation() {
    let t = tiny();
    let props = format!(
        "profile={} model={}",
        path_str(&t.whole),
        path_str(&t.manifest)
    );
    for caps in [
        "video/x-bayer,format=rggb,width=32,height=32,framerate=30/1",
        "audio/x-raw,format=S16LE,rate=48000,channels=2,layout=interleaved",
        "video/x-raw,format=RGB16,width=32,height=32,framerate=30/1",
        "image/jpeg,width=32,height=32,framerate=30/1",
    ] {
        let caps = gst::Caps::from_str(caps).unwrap();
        let sinkpad = logsad(&tiny_props(&t, &t.whole))
            .static_pad("sink")
            .unwrap();
        assert!(
            !sinkpad.pad_template_caps().can_intersect(&caps),
            "{caps} in the sink template"
        );
        let buffer = gst::Buffer::with_size(32 * 32 * 4).unwrap();
        let run = run_pipeline(&format!("logsad {props}"), &caps, vec![buffer]);
        let error = run.error.unwrap_or_else(|| panic!("{caps}: no error"));
        assert!(
            error.contains("not-negotiated") || error.contains("negotiat"),
            "{caps}: {error}"
        );
        assert!(run.buffers.is_empty());
    }
    // Linking an audio source directly fails when the pipeline is built.
    init();
    assert!(gst::parse::launch(&format!("audiotestsrc ! logsad {props} ! fakesink")).is_err());
}

/// No profile, a missing profile file, corrupt and truncated profiles: clear errors that name the
/// cause and the file.
#[test]
fn bad_profiles_are_clear_errors() {
    let t = tiny();
    let model = ("model", path_str(&t.manifest).to_value());

    let error = start_error(std::slice::from_ref(&model));
    assert!(error.contains("No profile set"), "{error}");
    assert!(error.contains("`profile` property"), "{error}");

    let missing = t.dir.path().join("no-such.logsad");
    let error = start_error(&[model.clone(), ("profile", path_str(&missing).to_value())]);
    assert!(error.contains("cannot read profile"), "{error}");
    assert!(error.contains(path_str(&missing)), "{error}");

    let good = std::fs::read(&t.whole).unwrap();
    let flipped = {
        let mut b = good.clone();
        let n = b.len();
        b[n / 2] ^= 0x40;
        b
    };
    let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        (
            "garbage",
            b"\x89PNG\r\n\x1a\n this is not a profile".to_vec(),
            &["not a valid logsad profile", "signature"],
        ),
        (
            "empty",
            Vec::new(),
            &["not a valid logsad profile", "truncated"],
        ),
        (
            "truncated",
            good[..good.len() * 2 / 3].to_vec(),
            &["not a valid logsad profile", "checksum"],
        ),
        (
            "header-only",
            good[..20].to_vec(),
            &["not a valid logsad profile", "checksum"],
        ),
        (
            "damaged",
            flipped,
            &["not a valid logsad profile", "checksum"],
        ),
    ];
    for (name, bytes, expected) in cases {
        let path = t.dir.path().join(format!("{name}.logsad"));
        std::fs::write(&path, bytes).unwrap();
        let error = start_error(&[model.clone(), ("profile", path_str(&path).to_value())]);
        for e in expected {
            assert!(error.contains(e), "{name}: {error:?} should mention {e:?}");
        }
        assert!(error.contains(path_str(&path)), "{name}: {error}");
    }
}

/// A profile built for another model, manifests that do not match their model, and missing or
/// corrupt ONNX files: clear errors naming both sides.
#[test]
fn bad_models_are_clear_errors() {
    let t = tiny();
    let profile = ("profile", path_str(&t.whole).to_value());
    let with_model =
        |manifest: &Path| start_error(&[profile.clone(), ("model", path_str(manifest).to_value())]);

    // Another model with the same shapes (seed 1).
    let other = make_tiny_model(&t.dir.path().join("seed1"), 1);
    let error = with_model(&other);
    for e in [
        "tiny-dinov2-28x28-p14-d8-s0",
        "tiny-dinov2-28x28-p14-d8-s1",
        "sha256",
        "enroll again",
    ] {
        assert!(error.contains(e), "{error:?} should mention {e:?}");
    }

    // Copies of the tiny model with an edited manifest.
    let tiny_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&t.manifest).unwrap()).unwrap();
    let onnx = t.manifest.with_file_name("model.onnx");
    let variant = |name: &str, edit: &dyn Fn(&mut serde_json::Value), onnx_bytes: Option<&[u8]>| {
        let dir = t.dir.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let mut json = tiny_json.clone();
        edit(&mut json);
        std::fs::write(dir.join("manifest.json"), json.to_string()).unwrap();
        if let Some(bytes) = onnx_bytes {
            std::fs::write(dir.join("model.onnx"), bytes).unwrap();
        }
        dir.join("manifest.json")
    };
    let onnx_bytes = std::fs::read(&onnx).unwrap();
    let cases: Vec<(&str, PathBuf, Vec<&str>)> = vec![
        (
            "stage name",
            variant(
                "stage-name",
                &|j| j["stage_outputs"][3] = "stage9".into(),
                Some(&onnx_bytes),
            ),
            vec!["does not match its manifest", "stage9"],
        ),
        (
            "input name",
            variant(
                "input-name",
                &|j| j["input"]["name"] = "images".into(),
                Some(&onnx_bytes),
            ),
            vec!["does not match its manifest", "images"],
        ),
        (
            "token grid",
            variant(
                "grid",
                &|j| {
                    j["tokens"]["patch_size"] = 7.into();
                    j["tokens"]["grid_width"] = 4.into();
                    j["tokens"]["grid_height"] = 4.into();
                },
                Some(&onnx_bytes),
            ),
            vec!["does not match its manifest", "dimension"],
        ),
        (
            "input size",
            variant(
                "size",
                &|j| {
                    j["input"]["width"] = 56.into();
                    j["input"]["height"] = 56.into();
                    j["tokens"]["patch_size"] = 28.into();
                },
                Some(&onnx_bytes),
            ),
            vec!["does not match its manifest", "dimension"],
        ),
        (
            "feature dim",
            variant("dim", &|j| j["feature_dim"] = 16.into(), Some(&onnx_bytes)),
            vec!["does not fit model", "dimension 8", "16"],
        ),
        (
            "stage count",
            variant(
                "stages",
                &|j| j["stage_outputs"] = serde_json::json!(["stage1", "stage2", "stage3"]),
                Some(&onnx_bytes),
            ),
            vec!["does not fit model", "4 stages"],
        ),
        (
            "invalid manifest",
            variant(
                "format",
                &|j| j["format"] = "something-else/7".into(),
                Some(&onnx_bytes),
            ),
            vec!["manifest", "not valid", "format"],
        ),
        (
            "missing onnx",
            variant("no-onnx", &|_| {}, None),
            vec!["cannot load model", "model.onnx", "no such file"],
        ),
        (
            "corrupt onnx",
            variant(
                "bad-onnx",
                &|_| {},
                Some(b"\x08\x07 definitely not a protobuf model \xff\xff"),
            ),
            vec!["cannot load model", "model.onnx"],
        ),
        (
            "truncated onnx",
            variant(
                "short-onnx",
                &|_| {},
                Some(&onnx_bytes[..onnx_bytes.len() / 2]),
            ),
            vec!["cannot load model", "model.onnx"],
        ),
    ];
    for (name, manifest, expected) in cases {
        let error = with_model(&manifest);
        for e in expected {
            assert!(error.contains(e), "{name}: {error:?} should mention {e:?}");
        }
        // Errors about the model name its file; a profile that does not fit names the model.
        let dir = manifest.parent().unwrap();
        let names_model = if error.contains("does not fit model") {
            error.contains("tiny-dinov2-28x28-p14-d8-s0") && error.contains(path_str(&t.whole))
        } else {
            error.contains(path_str(dir))
        };
        assert!(names_model, "{name}: {error} should name the model");
    }

    // A manifest path that does not exist.
    let missing = t.dir.path().join("nowhere/manifest.json");
    let error = with_model(&missing);
    assert!(error.contains("cannot read model manifest"), "{error}");
    assert!(error.contains(path_str(&missing)), "{error}");
}

// ---------------------------------------------------------------------------------------------
// Tests: real model
// ---------------------------------------------------------------------------------------------

/// DINOv2 ViT-S/14 on textile images: enroll 2 references and 3 validation images with 2x2
/// tiles, decode JPEGs in a pipeline, and check that a local defect scores above nominal frames.
#[test]
fn real_model_textile() {
    init();
    let manifest = require_dinov2();
    let textile = require_textile();
    let nominal = |i: u32| textile.join(format!("nominal/textile_{i:04}.jpg"));
    let references = vec![nominal(1), nominal(2)];
    let validation = vec![nominal(3), nominal(4), nominal(5)];
    let options = EnrollOptions {
        detectors: vec![DetectorSpec::Patch(PatchSpec {
            tiling: Tiling {
                rows: 2,
                cols: 2,
                ..Tiling::whole()
            },
            ..PatchSpec::faithful()
        })],
        ..EnrollOptions::default()
    };
    let (profile, _) = enroll(
        &manifest,
        &references,
        &validation,
        &options,
        &mut |_, _, _| {},
    )
    .expect("enrollment with DINOv2");
    assert_eq!(profile.header.feature_dim, 384);
    assert_eq!(profile.header.stages, 4);
    let dir = tempfile::tempdir().unwrap();
    let profile_path = dir.path().join("textile.logsad");
    profile.save(&profile_path).unwrap();

    // Frames: nominal, local defect, nominal (picked by checking: with these references the
    // defect scores 0.29, the nominal frames 0.10 and 0.09).
    let frames = [
        nominal(6),
        textile.join("local/textile_0009.jpg"),
        nominal(8),
    ];
    for (i, f) in frames.iter().enumerate() {
        std::fs::copy(f, dir.path().join(format!("frame_{i:04}.jpg"))).unwrap();
    }
    let pipeline = gst::parse::launch(&format!(
        "multifilesrc location={}/frame_%04d.jpg index=0 stop-index=2 \
         caps=image/jpeg,framerate=1/1 ! jpegdec ! videoconvert ! \
         logsad name=d profile={} model={} ! fakesink name=sink sync=false",
        path_str(dir.path()),
        path_str(&profile_path),
        path_str(&manifest)
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let buffers = Arc::new(Mutex::new(Vec::new()));
    {
        let buffers = buffers.clone();
        let pad = pipeline
            .by_name("sink")
            .unwrap()
            .static_pad("sink")
            .unwrap();
        pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            if let Some(gst::PadProbeData::Buffer(b)) = &info.data {
                buffers.lock().unwrap().push(b.clone());
            }
            gst::PadProbeReturn::Ok
        });
    }
    pipeline.set_state(gst::State::Playing).unwrap();
    let message = pipeline
        .bus()
        .unwrap()
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(120),
            &[gst::MessageType::Error, gst::MessageType::Eos],
        )
        .expect("timed out");
    pipeline.set_state(gst::State::Null).unwrap();
    if let gst::MessageView::Error(e) = message.view() {
        panic!("pipeline error: {} ({:?})", e.error(), e.debug());
    }
    let buffers = buffers.lock().unwrap();
    assert_eq!(buffers.len(), 3);
    let results: Vec<AnomalyResult> = buffers
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let r = result_of(b);
            check_result(&r, (64, 64));
            assert_eq!(r.frame, i as u64);
            check_rois_inside(b, 250, 250);
            r
        })
        .collect();
    eprintln!(
        "textile scores: {:?}",
        results
            .iter()
            .map(|r| (r.score, r.calibrated))
            .collect::<Vec<_>>()
    );
    assert!(results[1].score > 1.5 * results[0].score.max(results[2].score));
    assert!(results[1].anomalous);
    assert!(!results[0].anomalous && !results[2].anomalous);
    assert!(!rois(&buffers[1]).is_empty());
}

// ---------------------------------------------------------------------------------------------
// Tests: metadata outside Rust
// ---------------------------------------------------------------------------------------------

/// Python (PyGObject) reads the custom meta's structure, map and regions through the installed
/// plugin, after a `videoscale`. With threshold 0 and regions left uncut (peak fraction 0) every
/// frame is anomalous with one region: the whole frame, scored the map's maximum.
#[test]
fn metadata_is_readable_from_python() {
    let python = Path::new("/usr/bin/python3");
    if !python.is_file() {
        missing("Debian's python3 (with python3-gi)", python);
    }
    let plugin = built_plugin();
    let t = tiny();
    // A folder with only our plugin, and a registry of our own, so nothing stale is picked up.
    let plugins = t.dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::copy(&plugin, plugins.join("libgstlogsad.so")).unwrap();
    let output = std::process::Command::new(python)
        .arg(root().join("tests/read_meta.py"))
        .arg(&t.whole)
        .arg(&t.manifest)
        .arg("3")
        .arg("0")
        .arg("0")
        .env("GST_PLUGIN_PATH", &plugins)
        .env("GST_REGISTRY", t.dir.path().join("registry.bin"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "read_meta.py failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    eprintln!("read_meta.py with {}:\n{stdout}", plugin.display());
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    for (i, v) in lines.iter().enumerate() {
        assert_eq!(v["meta"], true, "{v}");
        assert_eq!(v["name"], "logsad/anomaly");
        assert_eq!(v["frame"], i as u64);
        assert_eq!(v["stale"], false);
        assert!(v["detectors"]
            .as_str()
            .unwrap()
            .split(',')
            .any(|d| d == "patch"));
        let (mw, mh) = (
            v["map-width"].as_u64().unwrap(),
            v["map-height"].as_u64().unwrap(),
        );
        assert_eq!((mw, mh), (4, 4));
        let map = v["map"].as_array().unwrap();
        assert_eq!(map.len() as u64, mw * mh);
        assert_eq!(v["map-bytes"].as_u64().unwrap(), mw * mh * 4);
        let values: Vec<f64> = map
            .iter()
            .map(|x| {
                x.as_f64()
                    .unwrap_or_else(|| panic!("non-finite map value in {v}"))
            })
            .collect();
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let score = v["score"].as_f64().unwrap();
        assert!(score.is_finite());
        assert!((score - max).abs() < 1e-6, "score {score} vs map max {max}");
        assert_eq!(v["patch-score"].as_f64().unwrap(), score);
        let calibrated = v["calibrated"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&calibrated));
        assert_eq!(
            v["anomalous"].as_bool().unwrap(),
            calibrated >= v["threshold"].as_f64().unwrap()
        );
        assert_eq!(v["anomalous"], true, "{v}");
        assert_eq!(v["deinterlaced"], false, "{v}");
        assert_eq!(
            v["regions"],
            serde_json::json!([{"x": 0.0, "y": 0.0, "width": 1.0, "height": 1.0, "score": score}]),
            "{v}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Tests: interlaced input
// ---------------------------------------------------------------------------------------------

/// A combed frame, as when the texture moved between the two fields' instants: the top field
/// (even lines) from one texture, the bottom field (odd lines) from another one shifted by half
/// a stripe period (4 pixels), so that the lines alternate between light and dark stripes.
fn combed() -> Vec<u8> {
    let top = texture(W, H, NOMINAL_SEEDS[0], false);
    let other = texture(W, H, NOMINAL_SEEDS[1], false);
    let row = W as usize * 3;
    let mut out = top.clone();
    for y in (1..H as usize).step_by(2) {
        for x in 0..W as usize {
            let from = y * row + ((x + 4) % W as usize) * 3;
            out[y * row + x * 3..][..3].copy_from_slice(&other[from..from + 3]);
        }
    }
    out
}

/// The progressive frame made of `frame`'s `first_line` field (0: top, 1: bottom), written
/// out by hand: a kept line stays, every other line is the mean (rounded half up) of the lines
/// above and below, or a copy of its only neighbour at the frame's edges.
fn line_doubled(frame: &[u8], first_line: usize) -> Vec<u8> {
    let row = W as usize * 3;
    let h = H as usize;
    let line = |y: usize| &frame[y * row..(y + 1) * row];
    let mut out = Vec::with_capacity(frame.len());
    for y in 0..h {
        if y % 2 == first_line {
            out.extend_from_slice(line(y));
        } else if y == 0 {
            out.extend_from_slice(line(1));
        } else if y + 1 == h {
            out.extend_from_slice(line(y - 1));
        } else {
            let (a, b) = (line(y - 1), line(y + 1));
            out.extend(
                a.iter()
                    .zip(b)
                    .map(|(&a, &b)| (a as u16 + b as u16).div_ceil(2) as u8),
            );
        }
    }
    out
}

/// Scores of packed RGB frames analysed by a progressive-caps `logsad`.
fn progressive_scores(t: &Tiny, frames: &[&[u8]]) -> Vec<f64> {
    let element = logsad(&tiny_props(t, &t.tiled));
    let mut h = harness(&element, gst_video::VideoFormat::Rgb, W, H);
    frames
        .iter()
        .enumerate()
        .map(|(i, rgb)| {
            let out = h
                .push_and_pull(frame_buffer(
                    gst_video::VideoFormat::Rgb,
                    W,
                    H,
                    rgb,
                    i as u64,
                ))
                .unwrap();
            let r = result_of(&out);
            assert!(!r.deinterlaced, "a progressive frame was deinterlaced");
            r.score
        })
        .collect()
}

/// An RGB buffer of `rgb` with the given video buffer flags.
fn flagged(rgb: &[u8], index: u64, flags: gst_video::VideoBufferFlags) -> gst::Buffer {
    let mut buffer = frame_buffer(gst_video::VideoFormat::Rgb, W, H, rgb, index);
    buffer.make_mut().set_video_flags(flags);
    buffer
}

/// `interlace-mode=interleaved`: the combed frame scores exactly as the progressive frame made of
/// its first field line-doubled (top or bottom, from the caps' field order or else the buffer's
/// TFF flag), not as the combed frame taken as progressive; the video goes on untouched.
#[test]
fn interleaved_frames_are_deinterlaced_before_analysis() {
    use gst_video::{VideoBufferFlags, VideoFieldOrder, VideoInterlaceMode};
    let t = tiny();
    let combed = combed();
    let (top, bottom) = (line_doubled(&combed, 0), line_doubled(&combed, 1));
    let expected = progressive_scores(&t, &[&top, &bottom, &combed]);
    let (top_score, bottom_score, combed_score) = (expected[0], expected[1], expected[2]);
    eprintln!("top field {top_score}, bottom field {bottom_score}, combed {combed_score}");
    // The three frames score apart, so the test tells which one the element analysed.
    for (a, b) in [
        (combed_score, top_score),
        (combed_score, bottom_score),
        (top_score, bottom_score),
    ] {
        assert!(
            (a - b).abs() > 0.1 * a.max(b),
            "scores too close: {a} and {b}"
        );
    }

    let cases = [
        (
            VideoFieldOrder::TopFieldFirst,
            VideoBufferFlags::empty(),
            top_score,
        ),
        (
            VideoFieldOrder::BottomFieldFirst,
            VideoBufferFlags::TFF,
            bottom_score,
        ),
        (VideoFieldOrder::Unknown, VideoBufferFlags::TFF, top_score),
        (
            VideoFieldOrder::Unknown,
            VideoBufferFlags::empty(),
            bottom_score,
        ),
    ];
    for (order, flags, expected) in cases {
        let what = format!("field order {order:?}, buffer flags {flags:?}");
        let element = logsad(&tiny_props(&t, &t.tiled));
        let mut h = gst_check::Harness::with_element(&element, Some("sink"), Some("src"));
        let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::Rgb, W, H)
            .fps(gst::Fraction::new(30, 1))
            .interlace_mode(VideoInterlaceMode::Interleaved)
            .field_order(order)
            .build()
            .unwrap();
        h.set_src_caps(info.to_caps().unwrap());
        let input = flagged(&combed, 0, flags);
        let out = h.push_and_pull(input.clone()).unwrap();
        let r = result_of(&out);
        assert!(r.deinterlaced, "{what}");
        assert_eq!(r.score, expected, "{what}");
        let bytes = |b: &gst::Buffer| b.map_readable().unwrap().as_slice().to_vec();
        assert_eq!(bytes(&out), bytes(&input), "{what}: the video was changed");
    }
}

/// `interlace-mode=mixed`: only the buffers flagged interlaced are deinterlaced.
#[test]
fn mixed_streams_deinterlace_only_flagged_buffers() {
    use gst_video::VideoBufferFlags as F;
    let t = tiny();
    let combed = combed();
    let (top, bottom) = (line_doubled(&combed, 0), line_doubled(&combed, 1));
    let expected = progressive_scores(&t, &[&top, &bottom, &combed]);

    let element = logsad(&tiny_props(&t, &t.tiled));
    let mut h = gst_check::Harness::with_element(&element, Some("sink"), Some("src"));
    let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::Rgb, W, H)
        .fps(gst::Fraction::new(30, 1))
        .interlace_mode(gst_video::VideoInterlaceMode::Mixed)
        .build()
        .unwrap();
    h.set_src_caps(info.to_caps().unwrap());
    let stream = [
        (F::INTERLACED | F::TFF, true, expected[0]),
        (F::empty(), false, expected[2]),
        (F::INTERLACED, true, expected[1]),
        // TFF alone (no INTERLACED flag) is a progressive frame.
        (F::TFF, false, expected[2]),
    ];
    for (i, (flags, deinterlaced, score)) in stream.into_iter().enumerate() {
        let out = h.push_and_pull(flagged(&combed, i as u64, flags)).unwrap();
        let r = result_of(&out);
        assert_eq!(r.deinterlaced, deinterlaced, "buffer {i} ({flags:?})");
        assert_eq!(r.score, score, "buffer {i} ({flags:?})");
    }
}

/// `interlace-mode=alternate` (one field per buffer) fails with an error naming the mode and
/// the fix.
#[test]
fn alternate_fields_are_refused_with_the_fix() {
    let t = tiny();
    let caps = gst::Caps::from_str(
        "video/x-raw(format:Interlaced),format=RGB,width=64,height=48,framerate=30/1,\
         interlace-mode=alternate",
    )
    .unwrap();
    let frames = vec![frame_buffer(
        gst_video::VideoFormat::Rgb,
        W,
        H / 2,
        &texture(W, H / 2, 0, false),
        0,
    )];
    let middle = format!(
        "logsad name=d profile={} model={}",
        path_str(&t.tiled),
        path_str(&t.manifest)
    );
    let run = run_pipeline(&middle, &caps, frames);
    let error = run.error.expect("alternate fields were accepted");
    assert!(
        error.contains("interlace-mode=alternate") && error.contains("`deinterlace` before logsad"),
        "{error}"
    );
}

// ---------------------------------------------------------------------------------------------
// Tests: regions through conversion and scaling
// ---------------------------------------------------------------------------------------------

/// Regions as `logsad` attaches them (ROI metas) for the defect frame, with the tiled profile.
fn defect_regions(t: &Tiny) -> Vec<((u32, u32, u32, u32), f64)> {
    let element = logsad(&tiny_props(t, &t.tiled));
    let mut h = harness(&element, gst_video::VideoFormat::Rgb, W, H);
    let out = h
        .push_and_pull(frame_buffer(
            gst_video::VideoFormat::Rgb,
            W,
            H,
            &texture(W, H, DEFECT_SEED, true),
            0,
        ))
        .unwrap();
    let regions = rois(&out);
    let meta = result_of(&out)
        .regions
        .expect("no regions field in the meta");
    assert_eq!(meta.len(), regions.len());
    regions
}

/// `logsad ! videoscale ! 128x96 ! anomalypublish ! anomalyoverlay`, and the same with
/// `videoconvert` to I420: the JSON lines give every region with its score and its box in the
/// new frame's pixels, and the overlay draws the boxes where they belong after scaling.
#[test]
fn regions_survive_videoscale_and_videoconvert() {
    let t = tiny();
    let regions = defect_regions(&t);
    assert!(!regions.is_empty(), "the defect frame has no region");
    let caps = video_info(gst_video::VideoFormat::Rgb, W, H)
        .to_caps()
        .unwrap();
    const MAGENTA: [u8; 3] = [255, 0, 255];
    for (after, (w2, h2)) in [
        (
            "videoscale ! video/x-raw,width=128,height=96",
            (128u32, 96u32),
        ),
        ("videoconvert ! video/x-raw,format=I420", (W, H)),
    ] {
        let jsonl = t.dir.path().join("regions.jsonl");
        let overlay = if w2 == W {
            // The overlay draws packed RGB only.
            String::new()
        } else {
            "! anomalyoverlay show-heatmap=false show-badge=false region-color=0xff00ff".into()
        };
        let middle = format!(
            "logsad profile={} model={} ! {after} ! anomalypublish location={} {overlay}",
            path_str(&t.tiled),
            path_str(&t.manifest),
            path_str(&jsonl)
        );
        let frame = frame_buffer(
            gst_video::VideoFormat::Rgb,
            W,
            H,
            &texture(W, H, DEFECT_SEED, true),
            0,
        );
        let run = run_pipeline(&middle, &caps, vec![frame]);
        assert!(run.error.is_none(), "{after}: {:?}", run.error);
        let line: serde_json::Value =
            serde_json::from_str(std::fs::read_to_string(&jsonl).unwrap().trim()).unwrap();
        let published = line["regions"].as_array().unwrap();
        assert_eq!(published.len(), regions.len(), "{after}: {line}");
        // Both scale factors are exact (2 and 1), so every edge lands on a whole pixel.
        let (sx, sy) = (w2 / W, h2 / H);
        for (p, &((x, y, w, h), score)) in published.iter().zip(&regions) {
            let scaled = (x * sx, y * sy, w * sx, h * sy);
            let got = (
                p["x"].as_u64().unwrap() as u32,
                p["y"].as_u64().unwrap() as u32,
                p["width"].as_u64().unwrap() as u32,
                p["height"].as_u64().unwrap() as u32,
            );
            assert_eq!(got, scaled, "{after}: {p}");
            assert_eq!(p["score"].as_f64(), Some(score), "{after}: {p}");
        }
        if overlay.is_empty() {
            continue;
        }
        let info = video_info(gst_video::VideoFormat::Rgb, w2, h2);
        let frame =
            gst_video::VideoFrame::from_buffer_readable(run.buffers[0].clone(), &info).unwrap();
        let stride = frame.plane_stride()[0] as usize;
        let data = frame.plane_data(0).unwrap();
        let px = |x: u32, y: u32| {
            let p = y as usize * stride + x as usize * 3;
            [data[p], data[p + 1], data[p + 2]]
        };
        for &((x, y, w, h), _) in &regions {
            let (x, y, w, h) = (x * sx, y * sy, w * sx, h * sy);
            // The outline's corners and the middle of its left and right edges.
            for (px_x, px_y) in [
                (x, y + h - 1),
                (x + w - 1, y + h - 1),
                (x, y + h / 2),
                (x + w - 1, y + h / 2),
            ] {
                assert_eq!(
                    px(px_x, px_y),
                    MAGENTA,
                    "{after}: no box edge at ({px_x}, {px_y}) for region {:?}",
                    (x, y, w, h)
                );
            }
        }
    }
}
