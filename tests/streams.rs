//! Integration tests of the threading and sharing in `logsad`: several streams on one shared
//! model instance (results checked against each frame analysed alone), two models under one
//! `model-instance-id`, `drop-policy` on a live source and the latency query, QoS, profile hot
//! swap and `reload`, EOS and flushes with frames in flight, and `skipped` in JSON lines.
//!
//! Uses the tiny test model that `make deps` prepares (`.deps/models/tiny`), and
//! `models/make_test_model.py` with `.deps/venv` for a second tiny model. The analysis is made
//! slow where a test needs frames in flight by a `batch-timeout` the worker waits out.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use gst::prelude::*;
use gstlogsad::detect::preprocess::RgbImage;
use gstlogsad::detect::regions::RegionOptions;
use gstlogsad::detect::tiling::Tiling;
use gstlogsad::detectors::DetectorSpec;
use gstlogsad::engine::EngineOptions;
use gstlogsad::enroll::{enroll, EnrollOptions};
use gstlogsad::inspector::{Extractor, Inspector, JudgeOptions};
use gstlogsad::meta::{AnomalyResult, SkipReason};
use gstlogsad::profile::PatchSpec;
use gstlogsad::worker::InferenceWorker;

mod common;
use common::*;

const W: u32 = 64;
const H: u32 = 48;

/// The stripes of a texture.
#[derive(Clone, Copy)]
enum Stripes {
    Vertical,
    Horizontal,
}

/// A frame: stripes with grey noise from `seed`; with `defect`, a bright disc (centre and
/// radius relative to the frame's width and height).
#[derive(Clone, Copy)]
struct Look {
    stripes: Stripes,
    seed: u64,
    defect: Option<(f64, f64, f64)>,
}

impl Look {
    fn nominal(stripes: Stripes, seed: u64) -> Self {
        Look {
            stripes,
            seed,
            defect: None,
        }
    }

    fn defect(stripes: Stripes, seed: u64, at: (f64, f64)) -> Self {
        Look {
            stripes,
            seed,
            defect: Some((at.0, at.1, 0.16)),
        }
    }

    /// Packed RGB, `width` x `height`.
    fn rgb(&self, width: u32, height: u32) -> Vec<u8> {
        let mut rng = Rng(self.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut out = Vec::with_capacity((width * height * 3) as usize);
        for y in 0..height {
            for x in 0..width {
                let noise = (rng.next() % 13) as i32 - 6;
                let along = match self.stripes {
                    Stripes::Vertical => x,
                    Stripes::Horizontal => y,
                };
                let base: [i32; 3] = if (along / 4) % 2 == 0 {
                    [70, 90, 60]
                } else {
                    [150, 170, 140]
                };
                let inside = self.defect.is_some_and(|(cx, cy, r)| {
                    let dx = (x as f64 + 0.5) / width as f64 - cx;
                    let dy = (y as f64 + 0.5) / height as f64 - cy;
                    let r = r * width.min(height) as f64 / width as f64;
                    dx * dx + dy * dy * (height as f64 / width as f64).powi(2) <= r * r
                });
                if inside {
                    out.extend_from_slice(&[255, 250, 235]);
                } else {
                    out.extend(base.iter().map(|c| (c + noise).clamp(0, 255) as u8));
                }
            }
        }
        out
    }
}

/// The verdict threshold of the tiny profiles (as in tests/logsad.rs): sigmoid(15).
const TINY_THRESHOLD: f64 = 0.999_999_694_097_773_1;

/// Enrolls a patch-detector profile with `manifest` from 8 reference and 16 validation images
/// of `stripes` into `dir/name`.
fn enroll_profile(
    dir: &Path,
    manifest: &Path,
    stripes: Stripes,
    tiling: Tiling,
    name: &str,
) -> PathBuf {
    let write = |kind: &str, seeds: std::ops::Range<u64>| -> Vec<PathBuf> {
        seeds
            .map(|seed| {
                let path = dir.join(format!("{name}_{kind}_{seed}.png"));
                image::RgbImage::from_raw(W, H, Look::nominal(stripes, seed).rgb(W, H))
                    .unwrap()
                    .save(&path)
                    .unwrap();
                path
            })
            .collect()
    };
    let references = write("ref", 0..8);
    let validation = write("val", 10..26);
    let options = EnrollOptions {
        detectors: vec![DetectorSpec::Patch(PatchSpec {
            tiling,
            ..PatchSpec::faithful()
        })],
        threshold: TINY_THRESHOLD,
        ..EnrollOptions::default()
    };
    let (profile, _warnings) = enroll(
        manifest,
        &references,
        &validation,
        &options,
        &mut |_, _, _| {},
    )
    .expect("enrollment with the tiny model");
    let path = dir.join(name);
    profile.save(&path).unwrap();
    path
}

/// Two profiles of the tiny model from different references: vertical stripes judged on the
/// whole frame (4x4 map), horizontal stripes judged in 2x2 tiles (8x8 map).
struct Fixture {
    dir: tempfile::TempDir,
    manifest: PathBuf,
    vertical: PathBuf,
    horizontal: PathBuf,
}

fn fixture() -> Fixture {
    init();
    let manifest = tiny_manifest();
    let dir = tempfile::tempdir().unwrap();
    let vertical = enroll_profile(
        dir.path(),
        &manifest,
        Stripes::Vertical,
        Tiling::whole(),
        "v.logsad",
    );
    let tiled = Tiling {
        rows: 2,
        cols: 2,
        ..Tiling::whole()
    };
    let horizontal = enroll_profile(
        dir.path(),
        &manifest,
        Stripes::Horizontal,
        tiled,
        "h.logsad",
    );
    Fixture {
        dir,
        manifest,
        vertical,
        horizontal,
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Frames analysed alone, for comparison
// ---------------------------------------------------------------------------------------------

/// A profile with a private model, judging frames one at a time as the element does by default.
struct Alone {
    extractor: Extractor,
    inspector: Inspector,
}

impl Alone {
    fn new(profile: &Path, manifest: &Path) -> Self {
        let (extractor, inspector, _) =
            gstlogsad::inspector::load(profile, manifest, &EngineOptions::default())
                .expect("loading the profile alone");
        Alone {
            extractor,
            inspector,
        }
    }

    fn result(&mut self, look: &Look, width: u32, height: u32) -> AnomalyResult {
        let image = RgbImage::new(width, height, look.rgb(width, height)).unwrap();
        let options = JudgeOptions {
            threshold: None,
            regions: Some(RegionOptions::default()),
        };
        let result = self
            .inspector
            .inspect(&mut self.extractor, &image, &options)
            .expect("inspecting alone");
        AnomalyResult::from_frame(&result, 0, false)
    }
}

/// Float tolerance between a frame analysed in a batch and alone.
fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-5 * b.abs().max(1.0)
}

/// `got` (from the element) has the scores, verdict and map of `want` (analysed alone).
fn assert_same_result(got: &AnomalyResult, want: &AnomalyResult, what: &str) {
    assert_eq!(got.skipped, None, "{what}: not analysed: {got:?}");
    assert!(!got.stale, "{what}: stale");
    assert!(
        close(got.score, want.score),
        "{what}: score {} alone {}",
        got.score,
        want.score
    );
    assert!(
        (got.calibrated - want.calibrated).abs() <= 1e-4,
        "{what}: calibrated {} alone {}",
        got.calibrated,
        want.calibrated
    );
    assert_eq!(got.anomalous, want.anomalous, "{what}: verdict");
    let (g, w) = (got.map.as_ref().unwrap(), want.map.as_ref().unwrap());
    assert_eq!((g.width, g.height), (w.width, w.height), "{what}: map size");
    for (i, (a, b)) in g.values().iter().zip(w.values()).enumerate() {
        assert!(
            close(*a as f64, b as f64),
            "{what}: map cell {i}: {a} alone {b}"
        );
    }
}

fn result_of(buffer: &gst::BufferRef) -> AnomalyResult {
    AnomalyResult::from_buffer(buffer)
        .expect("the buffer has no LogsadAnomalyMeta")
        .expect("the LogsadAnomalyMeta cannot be read")
}

// ---------------------------------------------------------------------------------------------
// Pipelines
// ---------------------------------------------------------------------------------------------

fn pts(index: u64) -> gst::ClockTime {
    gst::ClockTime::from_mseconds(33 * index)
}

/// An RGB buffer of `look` with the PTS of frame `index` at 30 fps.
fn frame(look: &Look, width: u32, height: u32, index: u64) -> gst::Buffer {
    let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::Rgb, width, height)
        .fps(gst::Fraction::new(30, 1))
        .build()
        .unwrap();
    let rgb = look.rgb(width, height);
    let mut buffer = gst::Buffer::with_size(info.size()).unwrap();
    {
        let b = buffer.get_mut().unwrap();
        let stride = info.stride()[0] as usize;
        let mut map = b.map_writable().unwrap();
        for (y, row) in rgb.chunks_exact(width as usize * 3).enumerate() {
            map[y * stride..y * stride + row.len()].copy_from_slice(row);
        }
        drop(map);
        b.set_pts(pts(index));
        b.set_duration(gst::ClockTime::from_mseconds(33));
    }
    buffer
}

fn caps(width: u32, height: u32) -> gst::Caps {
    gst_video::VideoCapsBuilder::new()
        .format(gst_video::VideoFormat::Rgb)
        .width(width as i32)
        .height(height as i32)
        .framerate(gst::Fraction::new(30, 1))
        .build()
}

/// `appsrc name=src ! {middle} ! fakesink name=sink`, where `middle` holds a `logsad name=d`;
/// the buffers reaching the sink are kept, bus messages are gathered as they are read.
struct Stream {
    pipeline: gst::Pipeline,
    src: gst_app::AppSrc,
    logsad: gst::Element,
    out: Arc<(Mutex<Vec<gst::Buffer>>, Condvar)>,
    messages: Vec<gst::Message>,
}

impl Stream {
    fn new(middle: &str, width: u32, height: u32, live: bool) -> Self {
        init();
        let description = format!(
            "appsrc name=src format=time is-live={live} ! {middle} ! fakesink name=sink sync=false"
        );
        let pipeline = gst::parse::launch(&description)
            .unwrap()
            .downcast::<gst::Pipeline>()
            .unwrap();
        let src = pipeline
            .by_name("src")
            .unwrap()
            .downcast::<gst_app::AppSrc>()
            .unwrap();
        src.set_caps(Some(&caps(width, height)));
        let out: Arc<(Mutex<Vec<gst::Buffer>>, Condvar)> = Arc::default();
        {
            let out = out.clone();
            let sinkpad = pipeline
                .by_name("sink")
                .unwrap()
                .static_pad("sink")
                .unwrap();
            sinkpad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
                if let Some(gst::PadProbeData::Buffer(buffer)) = &info.data {
                    out.0.lock().unwrap().push(buffer.clone());
                    out.1.notify_all();
                }
                gst::PadProbeReturn::Ok
            });
        }
        let logsad = pipeline.by_name("d").expect("a logsad named d");
        Stream {
            pipeline,
            src,
            logsad,
            out,
            messages: Vec::new(),
        }
    }

    fn play(&self) {
        self.pipeline
            .set_state(gst::State::Playing)
            .expect("the pipeline should start");
    }

    fn push(&self, buffer: gst::Buffer) {
        self.src.push_buffer(buffer).expect("appsrc push-buffer");
    }

    /// Reads the bus messages waiting; fails on an ERROR.
    fn pump(&mut self) {
        let bus = self.pipeline.bus().unwrap();
        while let Some(message) = bus.pop() {
            if let gst::MessageView::Error(e) = message.view() {
                panic!(
                    "error from {:?}: {} ({:?})",
                    message.src().map(|s| s.name()),
                    e.error(),
                    e.debug()
                );
            }
            self.messages.push(message);
        }
    }

    /// The buffers out so far, once there are at least `n` (fails after 30 s).
    fn wait_out(&mut self, n: usize) -> Vec<gst::Buffer> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            self.pump();
            {
                let out = self.out.0.lock().unwrap();
                if out.len() >= n {
                    return out.clone();
                }
                assert!(
                    Instant::now() < deadline,
                    "only {} of {n} buffers came out",
                    out.len()
                );
                let _ = self
                    .out
                    .1
                    .wait_timeout(out, Duration::from_millis(10))
                    .unwrap();
            }
        }
    }

    /// The first element message named `name` read after `seen` messages (fails after 30 s);
    /// returns it and its position.
    fn wait_element_message(&mut self, name: &str, seen: usize) -> (gst::Structure, usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            self.pump();
            let found = self
                .messages
                .iter()
                .enumerate()
                .skip(seen)
                .find_map(|(i, m)| match m.view() {
                    gst::MessageView::Element(e) => e
                        .structure()
                        .filter(|s| s.name() == name)
                        .map(|s| (s.to_owned(), i + 1)),
                    _ => None,
                });
            if let Some(found) = found {
                return found;
            }
            assert!(Instant::now() < deadline, "no {name} message");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The texts of the WARNING messages read after `seen` messages.
    fn warnings_since(&self, seen: usize) -> Vec<String> {
        self.messages[seen.min(self.messages.len())..]
            .iter()
            .filter_map(|m| match m.view() {
                gst::MessageView::Warning(w) => Some(w.error().to_string()),
                _ => None,
            })
            .collect()
    }

    /// Ends the stream, waits for EOS (failing on an ERROR) and stops; returns every buffer out.
    fn finish(mut self) -> Vec<gst::Buffer> {
        self.src.end_of_stream().expect("appsrc end-of-stream");
        let bus = self.pipeline.bus().unwrap();
        loop {
            let message = bus
                .timed_pop(gst::ClockTime::from_seconds(30))
                .expect("timed out waiting for EOS");
            match message.view() {
                gst::MessageView::Eos(_) => break,
                gst::MessageView::Error(e) => panic!("error: {} ({:?})", e.error(), e.debug()),
                _ => self.messages.push(message),
            }
        }
        self.pipeline.set_state(gst::State::Null).unwrap();
        let out = self.out.0.lock().unwrap().clone();
        out
    }
}

/// The PTS of `buffers` are those of frames 0, 1, 2, ... in order.
fn assert_in_order(buffers: &[gst::Buffer], what: &str) {
    let got: Vec<Option<gst::ClockTime>> = buffers.iter().map(|b| b.pts()).collect();
    let want: Vec<Option<gst::ClockTime>> =
        (0..buffers.len() as u64).map(|i| Some(pts(i))).collect();
    assert_eq!(got, want, "{what}: PTS order");
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// Three streams with different frames (two frame sizes, defects in different places) and two
/// profiles share one model instance batching 3 frames; every result equals its frame
/// analysed alone and reaches its own stream in order. A fourth stream stopped while its frames
/// are in the worker leaves the others undisturbed; the model is freed when all have stopped.
#[test]
fn streams_share_one_instance_and_get_their_own_results() {
    let f = fixture();
    const ID: &str = "streams-shared";
    const FRAMES: u64 = 8;
    struct Spec {
        profile: PathBuf,
        size: (u32, u32),
        looks: Vec<Look>,
    }
    let looks = |stripes: Stripes, seed: u64, defects: &[(u64, (f64, f64))]| -> Vec<Look> {
        (0..FRAMES)
            .map(|i| match defects.iter().find(|(at, _)| *at == i) {
                Some((_, pos)) => Look::defect(stripes, seed + i, *pos),
                None => Look::nominal(stripes, seed + i),
            })
            .collect()
    };
    let specs = [
        Spec {
            profile: f.vertical.clone(),
            size: (W, H),
            looks: looks(
                Stripes::Vertical,
                300,
                &[(2, (0.25, 0.25)), (5, (0.7, 0.6))],
            ),
        },
        Spec {
            profile: f.horizontal.clone(),
            size: (W, H),
            looks: looks(Stripes::Horizontal, 400, &[(3, (0.75, 0.75))]),
        },
        Spec {
            profile: f.vertical.clone(),
            size: (80, 60),
            looks: looks(Stripes::Vertical, 500, &[(4, (0.5, 0.5)), (6, (0.2, 0.8))]),
        },
    ];
    let middle = |profile: &Path| {
        format!(
            "logsad name=d model-instance-id={ID} batch-size=3 batch-timeout=20000 \
             drop-policy=wait profile={} model={}",
            path_str(profile),
            path_str(&f.manifest)
        )
    };
    assert!(InferenceWorker::registered(ID).is_none());
    let mut streams: Vec<Stream> = specs
        .iter()
        .map(|s| Stream::new(&middle(&s.profile), s.size.0, s.size.1, false))
        .collect();
    for s in &streams {
        s.play();
    }
    let worker = InferenceWorker::registered(ID).expect("the shared worker while playing");
    // One worker: each of the three elements holds it, and this test.
    assert_eq!(
        Arc::strong_count(&worker),
        4,
        "the streams do not share one worker"
    );
    assert_eq!(worker.batching().batch_size, 3);
    drop(worker);

    for i in 0..FRAMES {
        for (s, spec) in streams.iter().zip(&specs) {
            s.push(frame(&spec.looks[i as usize], spec.size.0, spec.size.1, i));
        }
        if i == 3 {
            // A fourth stream joins, sends frames and is stopped with them in the worker.
            let extra = Stream::new(&middle(&f.vertical), W, H, false);
            extra.play();
            for j in 0..3 {
                extra.push(frame(&Look::nominal(Stripes::Vertical, 900 + j), W, H, j));
            }
            std::thread::sleep(Duration::from_millis(2));
            extra.pipeline.set_state(gst::State::Null).unwrap();
            assert!(
                InferenceWorker::registered(ID).is_some(),
                "the others still play"
            );
        }
    }
    let mut outputs = Vec::new();
    for s in &mut streams {
        s.wait_out(FRAMES as usize);
    }
    assert!(InferenceWorker::registered(ID).is_some());
    for s in streams.drain(..) {
        outputs.push(s.finish());
    }
    assert!(
        InferenceWorker::registered(ID).is_none(),
        "the model is still loaded after every stream stopped"
    );

    let mut alone: Vec<Alone> = [&f.vertical, &f.horizontal]
        .iter()
        .map(|p| Alone::new(p, &f.manifest))
        .collect();
    let mut anomalous = 0;
    for (n, (spec, buffers)) in specs.iter().zip(&outputs).enumerate() {
        let what = format!("stream {n}");
        assert_eq!(buffers.len(), FRAMES as usize, "{what}");
        assert_in_order(buffers, &what);
        let alone = &mut alone[usize::from(spec.profile == f.horizontal)];
        for (i, buffer) in buffers.iter().enumerate() {
            let got = result_of(buffer);
            assert_eq!(got.frame, i as u64, "{what}");
            let want = alone.result(&spec.looks[i], spec.size.0, spec.size.1);
            assert_same_result(&got, &want, &format!("{what} frame {i}"));
            anomalous += usize::from(got.anomalous);
        }
    }
    // The defect frames are found, so that the results differ between frames and streams.
    assert!(anomalous >= 4, "only {anomalous} defect frames flagged");
    drop(f.dir);
}

/// `batch-timeout=-1` (wait for a full batch) never waits for frames that cannot come: a lone
/// stream batching 2 prerolls (its warm-up frame runs alone) and gets every frame out, and four
/// streams of 6, 12, 18 and 24 frames on one instance batching 4 get every frame out as the
/// shorter ones reach EOS. Runs in a thread with a deadline, so that a hang fails the test.
#[test]
fn batches_without_timeout_shrink_as_streams_end() {
    let f = fixture();
    let (profile, manifest) = (f.vertical.clone(), f.manifest.clone());
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let run = |id: &str, batch_size: u32, frames: u64| -> usize {
            let stream = Stream::new(
                &format!(
                    "logsad name=d model-instance-id={id} batch-size={batch_size} \
                     batch-timeout=-1 drop-policy=wait profile={} model={}",
                    path_str(&profile),
                    path_str(&manifest)
                ),
                W,
                H,
                false,
            );
            stream.play();
            for i in 0..frames {
                stream.push(frame(&Look::nominal(Stripes::Vertical, i), W, H, i));
            }
            stream.finish().len()
        };
        let lone = run("batch-wait-lone", 2, 5);
        let four: Vec<usize> = std::thread::scope(|scope| {
            let streams: Vec<_> = [6, 12, 18, 24]
                .into_iter()
                .map(|frames| scope.spawn(move || run("batch-wait-four", 4, frames)))
                .collect();
            streams.into_iter().map(|s| s.join().unwrap()).collect()
        });
        let _ = done.send((lone, four));
    });
    let (lone, four) = finished
        .recv_timeout(Duration::from_secs(120))
        .expect("streams with batch-timeout=-1 hung or failed");
    assert_eq!(lone, 5, "the lone stream's frames out");
    assert_eq!(four, vec![6, 12, 18, 24], "the four streams' frames out");
    drop(f.dir);
}

/// Two elements with one `model-instance-id` and different models: the second fails to start,
/// naming both models; with its own id it starts.
#[test]
fn one_instance_id_with_two_models_is_an_error() {
    let f = fixture();
    let other_dir = f.dir.path().join("other-model");
    let other = make_tiny_model(&other_dir, 1);
    let other_profile = enroll_profile(
        f.dir.path(),
        &other,
        Stripes::Vertical,
        Tiling::whole(),
        "other.logsad",
    );
    const ID: &str = "streams-two-models";
    let first = Stream::new(
        &format!(
            "logsad name=d model-instance-id={ID} profile={} model={}",
            path_str(&f.vertical),
            path_str(&f.manifest)
        ),
        W,
        H,
        false,
    );
    first.play();
    let start_second = |id: &str| {
        let second = Stream::new(
            &format!(
                "logsad name=d model-instance-id={id} profile={} model={}",
                path_str(&other_profile),
                path_str(&other)
            ),
            W,
            H,
            false,
        );
        let result = second.pipeline.set_state(gst::State::Playing);
        let message = second
            .pipeline
            .bus()
            .unwrap()
            .timed_pop_filtered(gst::ClockTime::from_seconds(5), &[gst::MessageType::Error]);
        second.pipeline.set_state(gst::State::Null).unwrap();
        (result, message)
    };
    let (result, message) = start_second(ID);
    assert!(result.is_err(), "the second element started");
    let message = message.expect("no ERROR message");
    let gst::MessageView::Error(e) = message.view() else {
        unreachable!()
    };
    let text = e.error().to_string();
    eprintln!("{text}");
    assert!(text.contains(ID), "{text}");
    assert!(
        text.contains(path_str(&f.manifest)),
        "the first model is not named: {text}"
    );
    assert!(
        text.contains(path_str(&other)),
        "the second model is not named: {text}"
    );
    // The first stream is undisturbed.
    first.push(frame(&Look::nominal(Stripes::Vertical, 1), W, H, 0));
    let out = first.finish();
    assert_eq!(out.len(), 1);
    assert_eq!(result_of(&out[0]).skipped, None);

    let (result, message) = start_second("streams-two-models-other");
    assert!(result.is_ok(), "with its own id: {message:?}");
    assert!(message.is_none(), "{message:?}");
}

/// Runs `count` frames through a live source with a `logsad` whose analysis takes at least 30
/// ms (a batch timeout no second frame ends early: one frame in flight, batches of 8); returns
/// the buffers out and the latency the element added (its answer minus appsrc's).
fn live_run(policy: &str, count: u64) -> (Vec<gst::Buffer>, Duration) {
    let f = fixture();
    let mut s = Stream::new(
        &format!(
            "logsad name=d drop-policy={policy} max-in-flight=1 batch-size=8 batch-timeout=30000 \
             profile={} model={}",
            path_str(&f.vertical),
            path_str(&f.manifest)
        ),
        W,
        H,
        true,
    );
    s.play();
    for i in 0..count {
        s.push(frame(&Look::nominal(Stripes::Vertical, 700 + i), W, H, i));
    }
    s.wait_out(1);
    let latency = |pad: &gst::Pad| {
        let mut q = gst::query::Latency::new();
        assert!(pad.query(&mut q), "latency query refused");
        q.result()
    };
    let (live, ours, _) = latency(&s.logsad.static_pad("src").unwrap());
    let (_, upstream, _) = latency(&s.src.static_pad("src").unwrap());
    assert!(live, "the latency query says not live");
    let added = Duration::from_nanos((ours.nseconds()).saturating_sub(upstream.nseconds()));
    let out = s.finish();
    drop(f.dir);
    (out, added)
}

/// `drop-policy=skip` (and `auto`) on a live source faster than the analysis: every buffer
/// comes out in order, those arriving while a frame is analysed marked `skipped=busy` and
/// stale with the last result; `wait` analyses every frame. The latency query adds the
/// element's analysis time.
#[test]
fn drop_policy_on_a_live_source() {
    const COUNT: u64 = 16;
    for policy in ["skip", "auto"] {
        let (out, added) = live_run(policy, COUNT);
        assert_eq!(out.len(), COUNT as usize, "{policy}: count in != count out");
        assert_in_order(&out, policy);
        let mut busy = 0;
        let mut last_analysed = None;
        for (i, b) in out.iter().enumerate() {
            let r = result_of(b);
            match r.skipped {
                None => {
                    assert!(!r.stale, "{policy}: frame {i}");
                    assert_eq!(r.frame, i as u64, "{policy}");
                    last_analysed = Some(i as u64);
                }
                Some(SkipReason::Busy) => {
                    busy += 1;
                    assert!(r.stale, "{policy}: frame {i}");
                    assert_eq!(Some(r.frame), last_analysed, "{policy}: frame {i} carries");
                }
                Some(other) => panic!("{policy}: frame {i} skipped for {other:?}"),
            }
        }
        assert_eq!(
            result_of(&out[0]).skipped,
            None,
            "{policy}: the first frame"
        );
        eprintln!("{policy}: {busy} of {COUNT} frames skipped busy; latency added {added:?}");
        assert!(
            busy >= COUNT as usize / 2,
            "{policy}: only {busy} frames skipped"
        );
        assert!(
            added >= Duration::from_millis(25),
            "{policy}: the latency answer adds {added:?}, the analysis takes 30 ms or more"
        );
    }
    let (out, _) = live_run("wait", 8);
    assert_eq!(out.len(), 8);
    assert_in_order(&out, "wait");
    for (i, b) in out.iter().enumerate() {
        let r = result_of(b);
        assert_eq!(
            (r.skipped, r.stale, r.frame),
            (None, false, i as u64),
            "wait: frame {i}"
        );
    }
}

/// With `qos=true`, a QoS event from downstream saying that frames before T are late makes
/// them pass unanalysed (`skipped=late`) and the later ones analysed; `qos=false` ignores it.
#[test]
fn qos_events_skip_late_frames() {
    let f = fixture();
    const LATE: u64 = 5;
    for qos in [true, false] {
        let mut s = Stream::new(
            &format!(
                "logsad name=d qos={qos} drop-policy=wait profile={} model={}",
                path_str(&f.vertical),
                path_str(&f.manifest)
            ),
            W,
            H,
            false,
        );
        s.play();
        let event = gst::event::Qos::new(gst::QOSType::Underflow, 1.0, 0, Some(pts(LATE)));
        let peer = s.logsad.static_pad("src").unwrap().peer().unwrap();
        peer.push_event(event);
        for i in 0..10 {
            s.push(frame(&Look::nominal(Stripes::Vertical, 800 + i), W, H, i));
        }
        s.pump();
        let out = s.finish();
        assert_eq!(out.len(), 10);
        assert_in_order(&out, "qos");
        for (i, b) in out.iter().enumerate() {
            let r = result_of(b);
            if qos && (i as u64) < LATE {
                assert_eq!(r.skipped, Some(SkipReason::Late), "qos=true frame {i}");
                assert!(r.stale);
            } else {
                assert_eq!(r.skipped, None, "qos={qos} frame {i}");
                assert_eq!(r.frame, i as u64);
            }
        }
    }
}

/// Swapping `profile` while playing: `logsad-profile` with loaded=true, the frames after it
/// judged by the new profile; a corrupt profile and one for another model leave the old one
/// working with a warning naming the cause; `reload` after the file changed on disk swaps in
/// its new content. No frame is lost or reordered.
#[test]
fn profile_hot_swap_and_reload() {
    let f = fixture();
    let other_model = make_tiny_model(&f.dir.path().join("other-model"), 1);
    let foreign = enroll_profile(
        f.dir.path(),
        &other_model,
        Stripes::Vertical,
        Tiling::whole(),
        "foreign.logsad",
    );
    let corrupt = f.dir.path().join("corrupt.logsad");
    let mut bytes = std::fs::read(&f.vertical).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x5a;
    std::fs::write(&corrupt, bytes).unwrap();
    let swapped = f.dir.path().join("swapped.logsad");
    std::fs::copy(&f.vertical, &swapped).unwrap();

    let mut alone_v = Alone::new(&f.vertical, &f.manifest);
    let mut alone_h = Alone::new(&f.horizontal, &f.manifest);
    let mut s = Stream::new(
        &format!(
            "logsad name=d drop-policy=wait profile={} model={}",
            path_str(&f.vertical),
            path_str(&f.manifest)
        ),
        W,
        H,
        false,
    );
    s.play();
    let look = |i: u64| {
        if i % 3 == 1 {
            Look::defect(Stripes::Vertical, 600 + i, (0.3, 0.6))
        } else {
            Look::nominal(Stripes::Vertical, 600 + i)
        }
    };
    let mut pushed = 0u64;
    // Pushes three frames and checks them against `alone`.
    let mut push_and_check = |s: &mut Stream, alone: &mut Alone, what: &str| {
        for _ in 0..3 {
            s.push(frame(&look(pushed), W, H, pushed));
            pushed += 1;
        }
        let out = s.wait_out(pushed as usize);
        for i in pushed - 3..pushed {
            let got = result_of(&out[i as usize]);
            let want = alone.result(&look(i), W, H);
            assert_same_result(&got, &want, &format!("{what}: frame {i}"));
        }
    };
    // Asks for `profile` (or a reload) and returns the `logsad-profile` message and warnings.
    let mut seen = 0;
    let mut change = |s: &mut Stream, profile: Option<&Path>| {
        match profile {
            Some(p) => s.logsad.set_property("profile", path_str(p)),
            None => s.logsad.emit_by_name::<()>("reload", &[]),
        }
        let (message, at) = s.wait_element_message("logsad-profile", seen);
        seen = at;
        // A warning, if any, is posted before the message.
        (message, s.warnings_since(0))
    };

    push_and_check(&mut s, &mut alone_v, "first profile");
    let (m, _) = change(&mut s, Some(&f.horizontal));
    assert!(m.get::<bool>("loaded").unwrap(), "{m:?}");
    assert_eq!(m.get::<&str>("path").unwrap(), path_str(&f.horizontal));
    push_and_check(&mut s, &mut alone_h, "after the swap");
    // The two profiles judge these frames differently.
    let v = alone_v.result(&look(1), W, H);
    let h = alone_h.result(&look(1), W, H);
    assert!(!close(v.score, h.score), "both profiles score {}", v.score);

    for (bad, cause) in [
        (&corrupt, "not a valid logsad profile"),
        (&foreign, "built for model"),
    ] {
        let (m, warnings) = change(&mut s, Some(bad));
        assert!(!m.get::<bool>("loaded").unwrap(), "{m:?}");
        let error = m.get::<&str>("error").expect("no error in the message");
        assert!(error.contains(cause), "{error}");
        assert!(
            warnings
                .iter()
                .any(|w| w.contains(path_str(bad)) && w.contains(cause)),
            "no warning naming {} and {cause:?}: {warnings:?}",
            bad.display()
        );
        push_and_check(&mut s, &mut alone_h, "after a failed swap");
        // The property names the profile still in use, not the file that failed.
        assert_eq!(
            s.logsad.property::<Option<String>>("profile").as_deref(),
            Some(path_str(&f.horizontal))
        );
    }

    let (m, _) = change(&mut s, Some(&swapped));
    assert!(m.get::<bool>("loaded").unwrap(), "{m:?}");
    push_and_check(&mut s, &mut alone_v, "the copy of the first profile");
    std::fs::copy(&f.horizontal, &swapped).unwrap();
    let (m, _) = change(&mut s, None);
    assert!(m.get::<bool>("loaded").unwrap(), "{m:?}");
    assert_eq!(m.get::<&str>("path").unwrap(), path_str(&swapped));
    push_and_check(&mut s, &mut alone_h, "reloaded from disk");

    let out = s.finish();
    assert_eq!(out.len(), pushed as usize, "frames lost");
    assert_in_order(&out, "hot swap");
}

/// A flush and EOS with frames in flight (max-in-flight 4, a 100 ms batch timeout holding them
/// in the worker): the frames after the flush come out analysed, in order, then EOS, after
/// every frame; new caps queued behind the flushed frames still reach downstream before the
/// frames in the new size; no error.
#[test]
fn eos_and_flush_with_frames_in_flight() {
    let f = fixture();
    let element = gst::ElementFactory::make("logsad")
        .property("profile", path_str(&f.vertical))
        .property("model", path_str(&f.manifest))
        .property("max-in-flight", 4u32)
        .property("batch-size", 8u32)
        .property("batch-timeout", 100_000i64)
        .property_from_str("drop-policy", "wait")
        .build()
        .unwrap();
    let bus = gst::Bus::new();
    element.set_bus(Some(&bus));
    let mut h = gst_check::Harness::with_element(&element, Some("sink"), Some("src"));
    assert_eq!(
        element.bus().as_ref(),
        Some(&bus),
        "the harness replaced the bus"
    );
    h.set_src_caps(caps(W, H));
    #[derive(Debug, PartialEq)]
    enum Seen {
        Buffer(gst::ClockTime, Option<SkipReason>),
        /// New caps, by width.
        Caps(i32),
        Event(gst::EventType),
    }
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    {
        let seen = seen.clone();
        h.sinkpad().unwrap().add_probe(
            gst::PadProbeType::BUFFER
                | gst::PadProbeType::EVENT_BOTH
                | gst::PadProbeType::EVENT_FLUSH,
            move |_, info| {
                let item = match &info.data {
                    Some(gst::PadProbeData::Buffer(b)) => {
                        Seen::Buffer(b.pts().unwrap(), result_of(b).skipped)
                    }
                    Some(gst::PadProbeData::Event(e)) => match e.view() {
                        gst::EventView::Caps(c) => {
                            Seen::Caps(c.caps().structure(0).unwrap().get("width").unwrap())
                        }
                        _ => Seen::Event(e.type_()),
                    },
                    _ => return gst::PadProbeReturn::Ok,
                };
                seen.lock().unwrap().push(item);
                gst::PadProbeReturn::Ok
            },
        );
    }
    let look = |i: u64| Look::nominal(Stripes::Vertical, 1000 + i);
    for i in 0..4 {
        assert_eq!(h.push(frame(&look(i), W, H, i)), Ok(gst::FlowSuccess::Ok));
    }
    let out_before_flush = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|s| matches!(s, Seen::Buffer(..)))
        .count();
    // New caps queued behind the frames in flight, then a flush.
    h.set_src_caps(caps(80, 60));
    assert!(h.push_event(gst::event::FlushStart::new()));
    assert!(h.push_event(gst::event::FlushStop::new(true)));
    let segment = gst::FormattedSegment::<gst::ClockTime>::new();
    assert!(h.push_event(gst::event::Segment::new(&segment)));
    for i in 4..8 {
        assert_eq!(h.push(frame(&look(i), 80, 60, i)), Ok(gst::FlowSuccess::Ok));
    }
    assert!(h.push_event(gst::event::Eos::new()));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !seen
        .lock()
        .unwrap()
        .contains(&Seen::Event(gst::EventType::Eos))
    {
        assert!(
            Instant::now() < deadline,
            "no EOS: {:?}",
            seen.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    eprintln!("{out_before_flush} frames out before the flush; downstream saw {seen:?}");
    assert!(
        out_before_flush < 4,
        "the frames were not in flight at the flush"
    );
    let flush = seen
        .iter()
        .position(|s| *s == Seen::Event(gst::EventType::FlushStop))
        .expect("no flush-stop downstream");
    // Caps events in a row before a buffer mean the last of them: when no frame got out before
    // the flush (a loaded machine), the first caps, never sent, may precede the new ones.
    let mut after: Vec<&Seen> = seen[flush + 1..]
        .iter()
        .filter(|s| {
            !matches!(
                s,
                Seen::Event(gst::EventType::Segment | gst::EventType::StreamStart)
            )
        })
        .collect();
    after.dedup_by(|next, previous| {
        matches!((&**previous, &**next), (Seen::Caps(_), Seen::Caps(_))) && {
            *previous = *next;
            true
        }
    });
    let want: Vec<Seen> = [Seen::Caps(80)]
        .into_iter()
        .chain((4..8).map(|i| Seen::Buffer(pts(i), None)))
        .chain([Seen::Event(gst::EventType::Eos)])
        .collect();
    assert_eq!(after, want.iter().collect::<Vec<_>>(), "after the flush");
    // Before the flush: frames in order (the ones out before it), nothing else analysed.
    let before: Vec<gst::ClockTime> = seen[..flush]
        .iter()
        .filter_map(|s| match s {
            Seen::Buffer(t, _) => Some(*t),
            _ => None,
        })
        .collect();
    assert_eq!(
        before,
        (0..before.len() as u64).map(pts).collect::<Vec<_>>()
    );
    while let Some(message) = bus.pop() {
        assert!(
            !matches!(message.view(), gst::MessageView::Error(_)),
            "{message:?}"
        );
    }
    drop(h);
    drop(f.dir);
}

/// `anomalypublish` after a `logsad` skipping busy frames writes `"skipped": "busy"` on exactly
/// the lines of the frames whose meta says so, and no `skipped` on analysed frames.
#[test]
fn json_lines_carry_the_skip_reason() {
    let f = fixture();
    let lines_path = f.dir.path().join("lines.jsonl");
    let mut s = Stream::new(
        &format!(
            "logsad name=d drop-policy=skip max-in-flight=1 batch-size=8 batch-timeout=30000 \
             profile={} model={} ! anomalypublish location={} stream-name=cam",
            path_str(&f.vertical),
            path_str(&f.manifest),
            path_str(&lines_path)
        ),
        W,
        H,
        true,
    );
    s.play();
    const COUNT: u64 = 12;
    for i in 0..COUNT {
        s.push(frame(&Look::nominal(Stripes::Vertical, 1100 + i), W, H, i));
    }
    s.pump();
    let out = s.finish();
    assert_eq!(out.len(), COUNT as usize);
    let text = std::fs::read_to_string(&lines_path).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), out.len());
    let mut busy = 0;
    for (i, (line, buffer)) in lines.iter().zip(&out).enumerate() {
        let meta = result_of(buffer);
        assert_eq!(line["timestamp"].as_u64(), Some(pts(i as u64).nseconds()));
        match meta.skipped {
            Some(reason) => {
                assert_eq!(
                    line["skipped"].as_str(),
                    Some(reason.as_str()),
                    "line {i}: {line}"
                );
                busy += usize::from(reason == SkipReason::Busy);
            }
            None => assert!(line.get("skipped").is_none(), "line {i}: {line}"),
        }
    }
    assert!(busy > 0, "no frame skipped busy: {text}");
}

/// A serialized query (drain) arriving while frames are queued, the last of them skipped
/// (`interval=2`), is answered once every frame before it is out, and reaches downstream after
/// them, with a slow downstream (30 ms per buffer).
#[test]
fn serialized_query_waits_for_the_frames_before_it() {
    let f = fixture();
    let element = gst::ElementFactory::make("logsad")
        .property("profile", path_str(&f.vertical))
        .property("model", path_str(&f.manifest))
        .property("interval", 2u32)
        .property("batch-size", 8u32)
        .property("batch-timeout", 50_000i64)
        .property_from_str("drop-policy", "wait")
        .build()
        .unwrap();
    let mut h = gst_check::Harness::with_element(&element, Some("sink"), Some("src"));
    h.set_src_caps(caps(W, H));
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    {
        let seen = seen.clone();
        h.sinkpad().unwrap().add_probe(
            gst::PadProbeType::BUFFER | gst::PadProbeType::QUERY_DOWNSTREAM,
            move |_, info| {
                let item = match &info.data {
                    Some(gst::PadProbeData::Buffer(b)) => {
                        // A slow downstream: the query must still wait for this buffer.
                        std::thread::sleep(Duration::from_millis(30));
                        format!("buffer {}", b.pts().unwrap())
                    }
                    Some(gst::PadProbeData::Query(q)) if q.type_() == gst::QueryType::Drain => {
                        "query Drain".to_string()
                    }
                    _ => return gst::PadProbeReturn::Ok,
                };
                let mut seen = seen.lock().unwrap();
                // The probe sees a query going in and coming back.
                if !seen.contains(&item) {
                    seen.push(item);
                }
                gst::PadProbeReturn::Ok
            },
        );
    }
    for i in 0..2 {
        let look = Look::nominal(Stripes::Vertical, 1200 + i);
        assert_eq!(h.push(frame(&look, W, H, i)), Ok(gst::FlowSuccess::Ok));
    }
    let pad = h.srcpad().unwrap();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut drain = gst::query::Drain::new();
        pad.peer_query(&mut drain);
        let _ = sender.send(());
    });
    receiver
        .recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|_| {
            panic!(
                "the drain query is never answered: {:?}",
                seen.lock().unwrap()
            )
        });
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        [
            format!("buffer {}", pts(0)),
            format!("buffer {}", pts(1)),
            "query Drain".to_string()
        ],
        "the query passed frames queued before it"
    );
    drop(h);
    drop(f.dir);
}
