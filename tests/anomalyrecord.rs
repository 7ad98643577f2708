//! Integration tests of the `anomalyrecord` element: real pipelines (`logsad` with a tiny-model
//! profile, `x264enc`, `h264parse`) on frames where a textured surface shows a defect at known
//! times; the verdicts surviving the encoder and parser; one clip per event, merged events, the
//! clip at EOS, the bus messages and the `clips.jsonl` index; every clip decoded back with its
//! duration checked; Matroska; an unwritable folder; a flush with an open clip; raw video refused.
//!
//! Needs what `make deps` prepares in `.deps/` (ONNX Runtime, the tiny model) and GStreamer's
//! x264enc (plugins-ugly), h264parse, mp4mux, matroskamux and avdec_h264 (libav).

use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, Once};

use gst::prelude::*;
use gstlogsad::detect::tiling::Tiling;
use gstlogsad::detectors::DetectorSpec;
use gstlogsad::enroll::{enroll, EnrollOptions};
use gstlogsad::meta::AnomalyResult;
use gstlogsad::profile::PatchSpec;
use serde_json::Value;

fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        gst::init().unwrap();
        gstlogsad::plugin_register_static().expect("registering the logsad plugin");
    });
}

const W: u32 = 64;
const H: u32 = 48;
/// 10 frames per second.
const FRAME_NS: u64 = 100_000_000;
const MS: u64 = 1_000_000;
/// Key frame every 5 frames (0.5 s).
const GOP: u32 = 5;

/// A small deterministic generator (xorshift64*), so that frames are the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as u32
    }
}

/// Packed RGB: vertical stripes with grey noise; with `defect`, a bright disc in the top left
/// (as tests/logsad.rs draws them).
fn texture(seed: u64, defect: bool) -> Vec<u8> {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut out = Vec::with_capacity((W * H * 3) as usize);
    for y in 0..H {
        for x in 0..W {
            let noise = (rng.next() % 13) as i32 - 6;
            let base: [i32; 3] = if (x / 4) % 2 == 0 {
                [70, 90, 60]
            } else {
                [150, 170, 140]
            };
            let (dx, dy) = (x as f64 + 0.5 - 16.0, y as f64 + 0.5 - 12.0);
            if defect && dx * dx + dy * dy <= 64.0 {
                out.extend_from_slice(&[255, 250, 235]);
            } else {
                out.extend(base.iter().map(|c| (c + noise).clamp(0, 255) as u8));
            }
        }
    }
    out
}

/// The tiny model's manifest and a whole-frame profile enrolled on nominal textures, with the
/// threshold tests/logsad.rs uses (sigmoid(15): nominal frames stay below, the disc far above).
struct Profile {
    _dir: tempfile::TempDir,
    manifest: PathBuf,
    profile: PathBuf,
}

static PROFILE: LazyLock<Profile> = LazyLock::new(|| {
    init();
    let deps = std::env::var_os("LOGSAD_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".deps"));
    let manifest = deps.join("models/tiny/manifest.json");
    assert!(
        manifest.is_file(),
        "{} is missing: run `make deps`",
        manifest.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let save = |name: String, seed: u64| {
        let path = dir.path().join(name);
        image::RgbImage::from_raw(W, H, texture(seed, false))
            .unwrap()
            .save(&path)
            .unwrap();
        path
    };
    let references: Vec<PathBuf> = (0..8).map(|s| save(format!("ref_{s}.png"), s)).collect();
    let validation: Vec<PathBuf> = (10..26).map(|s| save(format!("val_{s}.png"), s)).collect();
    let options = EnrollOptions {
        detectors: vec![DetectorSpec::Patch(PatchSpec {
            tiling: Tiling::whole(),
            ..PatchSpec::faithful()
        })],
        threshold: 0.999_999_694_097_773_1,
        ..EnrollOptions::default()
    };
    let (profile, _) = enroll(
        &manifest,
        &references,
        &validation,
        &options,
        &mut |_, _, _| {},
    )
    .expect("enrollment with the tiny model");
    let path = dir.path().join("tiny.logsad");
    profile.save(&path).unwrap();
    Profile {
        _dir: dir,
        manifest,
        profile: path,
    }
});

fn raw_caps() -> gst::Caps {
    gst::Caps::builder("video/x-raw")
        .field("format", "RGB")
        .field("width", W as i32)
        .field("height", H as i32)
        .field("framerate", gst::Fraction::new(10, 1))
        .build()
}

/// `n` frames at 10 fps, with the defect on the frames listed.
fn frames(n: u64, defects: &[u64]) -> Vec<gst::Buffer> {
    (0..n)
        .map(|i| {
            let mut b = gst::Buffer::from_mut_slice(texture(100 + i % 4, defects.contains(&i)));
            let m = b.get_mut().unwrap();
            m.set_pts(gst::ClockTime::from_nseconds(i * FRAME_NS));
            m.set_duration(gst::ClockTime::from_nseconds(FRAME_NS));
            b
        })
        .collect()
}

/// `logsad ! videoconvert ! x264enc ! h264parse` with the tiny profile.
fn encoder(bframes: u32) -> String {
    let p = &*PROFILE;
    format!(
        "logsad profile=\"{}\" model=\"{}\" ! videoconvert ! x264enc key-int-max={GOP} \
         bframes={bframes} speed-preset=ultrafast ! h264parse",
        p.profile.display(),
        p.manifest.display()
    )
}

/// What a pipeline run gave: bus messages up to EOS or an error.
struct Run {
    messages: Vec<gst::Message>,
    error: Option<String>,
}

impl Run {
    fn clips(&self) -> Vec<gst::Structure> {
        self.messages
            .iter()
            .filter_map(|m| match m.view() {
                gst::MessageView::Element(e) => e
                    .structure()
                    .filter(|s| s.name() == "logsad-clip")
                    .map(|s| s.to_owned()),
                _ => None,
            })
            .collect()
    }

    fn warnings(&self) -> Vec<String> {
        self.messages
            .iter()
            .filter_map(|m| match m.view() {
                gst::MessageView::Warning(w) => Some(w.error().to_string()),
                _ => None,
            })
            .collect()
    }
}

type OnBuffer = Box<dyn Fn(&gst::Pad, &gst::Buffer) + Send + Sync>;

/// Runs `appsrc ! {rest}` with `frames`, collecting messages until EOS or an error; `on_buffer`
/// sees every buffer reaching the element named `sink`, with its pad. The EOS message must come
/// last: clips are announced before it.
fn run(rest: &str, frames: Vec<gst::Buffer>, on_buffer: Option<OnBuffer>) -> Run {
    init();
    let pipeline = gst::parse::launch(&format!("appsrc name=src format=time ! {rest}"))
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
    let src = pipeline
        .by_name("src")
        .unwrap()
        .downcast::<gst_app::AppSrc>()
        .unwrap();
    src.set_caps(Some(&raw_caps()));
    if let Some(f) = on_buffer {
        let sink = pipeline.by_name("sink").expect("a sink named sink");
        sink.static_pad("sink")
            .unwrap()
            .add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
                if let Some(b) = info.buffer() {
                    f(pad, b);
                }
                gst::PadProbeReturn::Ok
            });
    }
    pipeline.set_state(gst::State::Playing).unwrap();
    for f in frames {
        src.push_buffer(f).unwrap();
    }
    src.end_of_stream().unwrap();
    let bus = pipeline.bus().unwrap();
    let mut messages = Vec::new();
    let mut error = None;
    while let Some(m) = bus.timed_pop(gst::ClockTime::from_seconds(120)) {
        match m.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(e) => {
                error = Some(format!("{} ({:?})", e.error(), e.debug()));
                break;
            }
            _ => messages.push(m),
        }
    }
    pipeline.set_state(gst::State::Null).unwrap();
    Run { messages, error }
}

/// Decodes a clip; returns the presentation times of its decoded frames (ns, sorted) and the
/// duration the container reports.
fn decode(path: &Path, demux: &str) -> (Vec<u64>, Option<u64>) {
    init();
    let pipeline = gst::parse::launch(&format!(
        "filesrc location=\"{}\" ! {demux} ! h264parse ! avdec_h264 ! fakesink name=sink sync=false",
        path.display()
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let times = Arc::new(Mutex::new(Vec::new()));
    let t = times.clone();
    let sink = pipeline.by_name("sink").unwrap();
    sink.static_pad("sink")
        .unwrap()
        .add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            if let Some(pts) = info.buffer().and_then(|b| b.pts()) {
                t.lock().unwrap().push(pts.nseconds());
            }
            gst::PadProbeReturn::Ok
        });
    pipeline.set_state(gst::State::Playing).unwrap();
    let bus = pipeline.bus().unwrap();
    let msg = bus
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(60),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .expect("decoding ends");
    if let gst::MessageView::Error(e) = msg.view() {
        panic!(
            "{} does not decode: {} ({:?})",
            path.display(),
            e.error(),
            e.debug()
        );
    }
    let duration = pipeline
        .query_duration::<gst::ClockTime>()
        .map(|d| d.nseconds());
    pipeline.set_state(gst::State::Null).unwrap();
    let mut times = times.lock().unwrap().clone();
    times.sort();
    (times, duration)
}

fn read_index(folder: &Path) -> Vec<Value> {
    std::fs::read_to_string(folder.join("clips.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Seconds since midnight of a `YYYY-MM-DDTHH:MM:SS.mmmZ` time.
fn day_seconds(wall: &str) -> f64 {
    let t = &wall[11..wall.len() - 1];
    let parts: Vec<f64> = t.split(':').map(|p| p.parse().unwrap()).collect();
    parts[0] * 3600.0 + parts[1] * 60.0 + parts[2]
}

/// The meta `logsad` attached survives x264enc (with B-frames: pictures leave the encoder out
/// of order) and h264parse, on the right picture: frame numbers follow the PTS and the
/// verdicts match the frames with the defect.
#[test]
fn verdicts_survive_the_encoder_and_parser() {
    let defects = [6, 7, 13];
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let run = run(
        &format!("{} ! fakesink name=sink sync=false", encoder(2)),
        frames(20, &defects),
        Some(Box::new(move |_: &gst::Pad, b: &gst::Buffer| {
            let r = AnomalyResult::from_buffer(b).map(|r| r.unwrap());
            s.lock()
                .unwrap()
                .push((b.pts().unwrap().nseconds(), b.dts(), r));
        })),
    );
    assert!(run.error.is_none(), "{:?}", run.error);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 20);
    // B-frames: some pictures come out of presentation order.
    assert!(seen.windows(2).any(|w| w[1].0 < w[0].0), "no reordering");
    // The encoder shifts timestamps (by 1000 hours, to leave room for DTS before PTS).
    let first = seen.iter().map(|s| s.0).min().unwrap();
    for (pts, _, r) in seen.iter() {
        let r = r
            .as_ref()
            .unwrap_or_else(|| panic!("no meta on the picture at {pts}"));
        let frame = (pts - first) / FRAME_NS;
        assert_eq!(r.frame, frame);
        assert!(!r.stale);
        assert_eq!(
            r.anomalous,
            defects.contains(&frame),
            "frame {frame}: {}",
            r.calibrated
        );
    }
}

/// Events at 2.0-2.5 s, at 4.5-4.7 s and 5.2-5.4 s (merged: 5.2 s is before 4.7 + 1 s) and at
/// 7.5 s until the end, with pre-seconds=1 post-seconds=1 and a key frame every 0.5 s.
#[test]
fn one_clip_per_event_merged_events_and_the_clip_at_eos() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("clips/cam1");
    let defects: Vec<u64> = [20, 21, 22, 23, 24, 45, 46, 52, 53, 75, 76, 77, 78, 79].into();
    let run = run(
        &format!(
            "{} ! anomalyrecord location=\"{}\" stream-name=cam1 pre-seconds=1 post-seconds=1",
            encoder(0),
            folder.display()
        ),
        frames(80, &defects),
        None,
    );
    assert!(run.error.is_none(), "{:?}", run.error);
    assert!(run.warnings().is_empty(), "{:?}", run.warnings());
    let clips = run.clips();
    assert_eq!(clips.len(), 3, "{clips:?}");
    // (start, end, event start, event end, anomalous frames, frames, events), hand computed:
    // A: key frame at or before 2.0 - 1 = 1.0 s is frame 10; ends before 2.5 + 1 = 3.5 s.
    // B: key frame at or before 4.5 - 1 = 3.5 s; 5.4 + 1 = 6.4 s.
    // C: 7.5 - 1 = 6.5 s, to the end of the stream (8.0 s).
    let expected = [
        (1000, 3500, 2000, 2500, 5, 25, 1),
        (3500, 6400, 4500, 5400, 4, 29, 2),
        (6500, 8000, 7500, 8000, 5, 15, 1),
    ];
    let index = read_index(&folder);
    assert_eq!(index.len(), 3);
    for ((clip, line), e) in clips.iter().zip(&index).zip(expected) {
        let get = |f: &str| clip.get::<u64>(f).unwrap();
        assert_eq!(
            (
                get("start"),
                get("end"),
                get("event-start"),
                get("event-end")
            ),
            (e.0 * MS, e.1 * MS, e.2 * MS, e.3 * MS),
            "{clip}"
        );
        assert_eq!(get("anomalous-frames"), e.4);
        assert_eq!(get("frames"), e.5);
        assert_eq!(clip.get::<u32>("events").unwrap(), e.6);
        assert_eq!(clip.get::<&str>("stream-name").unwrap(), "cam1");
        assert!(clip.get::<f64>("peak-calibrated").unwrap() >= 0.999_999_694);
        assert!(clip.get::<f64>("peak-score").unwrap() > 0.0);

        // The index line says the same.
        let path = clip.get::<&str>("path").unwrap();
        assert_eq!(line["path"], path);
        assert_eq!(line["stream"], "cam1");
        assert_eq!(line["start"], get("start"));
        assert_eq!(line["end"], get("end"));
        assert_eq!(line["events"], e.6);
        assert_eq!(line["anomalous_frames"], e.4);
        assert_eq!(line["peak_score"], clip.get::<f64>("peak-score").unwrap());
        assert_eq!(line["start_wall"], clip.get::<&str>("start-wall").unwrap());
        assert_eq!(line["end_wall"], clip.get::<&str>("end-wall").unwrap());

        // Named after the stream and the start in UTC, in the folder.
        let path = PathBuf::from(path);
        assert_eq!(path.parent().unwrap(), folder);
        let wall = clip.get::<&str>("start-wall").unwrap();
        let basic: String = wall.chars().filter(|c| *c != '-' && *c != ':').collect();
        assert_eq!(
            path.file_name().unwrap().to_str().unwrap(),
            format!("cam1-{basic}.mp4")
        );
        let span = day_seconds(clip.get::<&str>("end-wall").unwrap()) - day_seconds(wall);
        assert!(
            ((span + 86_400.0) % 86_400.0 - (e.1 - e.0) as f64 / 1000.0).abs() < 0.0015,
            "wall span {span}"
        );

        // Playable: every picture decodes and the clip lasts from its start to its end.
        let (times, duration) = decode(&path, "qtdemux");
        assert_eq!(times.len() as u64, e.5, "{}", path.display());
        let span = times.last().unwrap() - times[0] + FRAME_NS;
        assert_eq!(span, (e.1 - e.0) * MS);
        let duration = duration.expect("a duration");
        assert!(duration.abs_diff(span) <= FRAME_NS, "{duration} vs {span}");
    }
    // Wall clocks keep the running-time spacing between clips.
    let gap = day_seconds(clips[1].get::<&str>("start-wall").unwrap())
        - day_seconds(clips[0].get::<&str>("start-wall").unwrap());
    assert!(((gap + 86_400.0) % 86_400.0 - 2.5).abs() < 0.0015, "{gap}");
    // Nothing else in the folder.
    assert_eq!(std::fs::read_dir(&folder).unwrap().count(), 4);
}

#[test]
fn matroska_clips_play() {
    let dir = tempfile::tempdir().unwrap();
    let run = run(
        &format!(
            "{} ! anomalyrecord name=rec location=\"{}\" container=matroska pre-seconds=0.5 \
             post-seconds=0.5",
            encoder(0),
            dir.path().display()
        ),
        frames(30, &[12]),
        None,
    );
    assert!(run.error.is_none(), "{:?}", run.error);
    let clips = run.clips();
    assert_eq!(clips.len(), 1);
    let path = PathBuf::from(clips[0].get::<&str>("path").unwrap());
    // Default stream name: the element's name.
    let name = path.file_name().unwrap().to_str().unwrap();
    assert!(
        name.starts_with("rec-") && name.ends_with("Z.mkv"),
        "{name}"
    );
    // Key frame at or before 1.2 - 0.5 = 0.7 s is 0.5 s; ends before 1.3 + 0.5 = 1.8 s.
    assert_eq!(clips[0].get::<u64>("start").unwrap(), 500 * MS);
    assert_eq!(clips[0].get::<u64>("end").unwrap(), 1800 * MS);
    // The clip's own time starts at 0.
    let (times, _) = decode(&path, "matroskademux");
    assert_eq!(times.len(), 13);
    assert_eq!((times[0], times[12]), (0, 1200 * MS));
}

/// A file where the folder should be, and a folder under /proc: a warning naming the clip and
/// the cause for each event, no clip, no index, and the stream still reaches EOS.
#[test]
fn unwritable_location_is_a_warning_and_the_stream_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-folder");
    std::fs::write(&file, b"x").unwrap();
    for location in [file.join("clips"), PathBuf::from("/proc/logsad-clips")] {
        let run = run(
            &format!(
                "{} ! anomalyrecord location=\"{}\" stream-name=cam2 pre-seconds=0 post-seconds=0.2",
                encoder(0),
                location.display()
            ),
            frames(30, &[5, 20]),
            None,
        );
        assert!(run.error.is_none(), "{:?}", run.error);
        assert!(run.clips().is_empty());
        let warnings = run.warnings();
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        for w in &warnings {
            assert!(w.contains(&location.display().to_string()), "{w}");
            assert!(w.contains("cam2-") && w.contains(".mp4"), "{w}");
            assert!(w.contains("cannot create the folder"), "{w}");
        }
        assert!(!location.exists());
    }
}

/// A flush with an open clip finishes it (playable); the ring starts afresh after it.
#[test]
fn flush_finishes_the_open_clip() {
    // Encoded pictures with their metas, from a real encoder, and the caps h264parse gives
    // anomalyrecord (avc with codec_data, its preferred format).
    let encoded = Arc::new(Mutex::new(Vec::new()));
    let caps = Arc::new(Mutex::new(None));
    let segment = Arc::new(Mutex::new(None));
    let (e, c, sg) = (encoded.clone(), caps.clone(), segment.clone());
    let out = run(
        &format!(
            "{} ! video/x-h264,stream-format=avc ! fakesink name=sink sync=false",
            encoder(0)
        ),
        frames(30, &[12, 13]),
        Some(Box::new(move |pad: &gst::Pad, b: &gst::Buffer| {
            e.lock().unwrap().push(b.clone());
            *c.lock().unwrap() = pad.current_caps();
            *sg.lock().unwrap() = pad
                .sticky_event::<gst::event::Segment>(0)
                .map(|e| e.event().to_owned());
        })),
    );
    assert!(out.error.is_none(), "{:?}", out.error);
    let caps = caps.lock().unwrap().clone().expect("caps");
    assert!(caps.structure(0).unwrap().has_field("codec_data"));
    // The encoder's segment (its timestamps start 1000 hours in).
    let segment = segment.lock().unwrap().clone().expect("segment");

    let dir = tempfile::tempdir().unwrap();
    let element = gst::ElementFactory::make("anomalyrecord")
        .property("location", dir.path().to_str().unwrap())
        .property("pre-seconds", 0.5f64)
        .property("post-seconds", 5.0f64)
        .build()
        .unwrap();
    let bus = gst::Bus::new();
    element.set_bus(Some(&bus));
    let mut h = gst_check::Harness::with_element(&element, Some("sink"), None);
    h.set_src_caps(caps);
    h.play();
    assert!(h.push_event(segment.clone()));
    let encoded = encoded.lock().unwrap().clone();
    for b in &encoded[..20] {
        assert_eq!(h.push(b.clone()), Ok(gst::FlowSuccess::Ok));
    }
    assert!(bus.pop_filtered(&[gst::MessageType::Element]).is_none());
    assert!(h.push_event(gst::event::FlushStart::new()));
    assert!(h.push_event(gst::event::FlushStop::new(true)));
    // Clip of 1.2 s - 0.5 s -> key frame 0.5 s, to 1.9 s (frame 19).
    let msg = bus
        .pop_filtered(&[gst::MessageType::Element])
        .expect("a clip at the flush");
    let s = msg.structure().unwrap();
    assert_eq!(s.get::<u64>("start").unwrap(), 500 * MS);
    assert_eq!(s.get::<u64>("end").unwrap(), 2000 * MS);
    let (times, _) = decode(Path::new(s.get::<&str>("path").unwrap()), "qtdemux");
    assert_eq!(times.len(), 15);
    // After the flush: no key frame yet, so the anomalous delta frames cannot open a clip; the
    // next key frame does (the event waits for it).
    assert!(h.push_event(segment));
    for b in &encoded[11..30] {
        assert_eq!(h.push(b.clone()), Ok(gst::FlowSuccess::Ok));
    }
    assert!(h.push_event(gst::event::Eos::new()));
    let msg = bus
        .pop_filtered(&[gst::MessageType::Element])
        .expect("a clip at EOS");
    let s = msg.structure().unwrap();
    assert_eq!(s.get::<u64>("start").unwrap(), 1500 * MS);
    assert_eq!(s.get::<u64>("event-start").unwrap(), 1200 * MS);
    assert_eq!(read_index(dir.path()).len(), 2);
}

/// Raw video cannot link; a raw caps event is refused.
#[test]
fn raw_video_is_refused() {
    init();
    let err = gst::parse::launch("videotestsrc ! anomalyrecord").unwrap_err();
    assert!(
        err.to_string()
            .contains("could not link videotestsrc0 to anomalyrecord"),
        "{err}"
    );
    let mut h = gst_check::Harness::new("anomalyrecord");
    h.set_src_caps(raw_caps());
    h.play();
    let b = frames(1, &[])[0].clone();
    assert_eq!(h.push(b), Err(gst::FlowError::NotNegotiated));
}
