//! Tests of the `anomalypublish` element: the JSON lines it writes, filtering, completeness at
//! EOS, errors, and what happens when the writer cannot keep up.

use gst::prelude::*;
use gstlogsad::meta::{
    AnomalyMap, AnomalyRegion, AnomalyResult, DetectorScore, RelativeBox, RuleHit,
};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::sync::{mpsc, Once};
use std::time::Duration;

fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        gst::init().unwrap();
        gstlogsad::plugin_register_static().unwrap();
    });
}

const CAPS: &str = "video/x-raw,format=GRAY8,width=64,height=48,framerate=30/1";
const FRAME_NS: u64 = 33_333_333;

fn result(score: f64, anomalous: bool, frame: u64) -> AnomalyResult {
    AnomalyResult {
        score,
        calibrated: if anomalous { 0.9 } else { 0.1 },
        anomalous,
        threshold: 0.5,
        stale: false,
        skipped: None,
        frame,
        detectors: vec![DetectorScore {
            name: "patch".into(),
            raw: score,
            calibrated: if anomalous { 0.9 } else { 0.1 },
        }],
        map: None,
        map_threshold: 0.25,
        deinterlaced: false,
        regions: None,
        rules: vec![],
    }
}

/// A frame buffer with PTS `frame * FRAME_NS` (or none) and the given result attached.
fn buffer(frame: u64, pts: bool, res: Option<&AnomalyResult>) -> gst::Buffer {
    let mut buf = gst::Buffer::with_size(64 * 48).unwrap();
    {
        let b = buf.get_mut().unwrap();
        if pts {
            b.set_pts(gst::ClockTime::from_nseconds(frame * FRAME_NS));
        }
        if let Some(res) = res {
            res.attach(b).unwrap();
        }
    }
    buf
}

fn add_roi(buf: &mut gst::Buffer, roi_type: &str, rect: (u32, u32, u32, u32), score: Option<f64>) {
    let mut roi = gst_video::VideoRegionOfInterestMeta::add(buf.get_mut().unwrap(), roi_type, rect);
    if let Some(score) = score {
        roi.add_param(
            gst::Structure::builder(roi_type)
                .field("score", score)
                .build(),
        );
    }
}

/// A harness around an `anomalypublish` configured with `props`, with a bus set on the element.
fn harness(props: &[(&str, &dyn ToValue)]) -> (gst_check::Harness, gst::Element, gst::Bus) {
    let element = gst::ElementFactory::make("anomalypublish").build().unwrap();
    for (name, value) in props {
        element.set_property_from_value(name, &value.to_value());
    }
    let bus = gst::Bus::new();
    element.set_bus(Some(&bus));
    let mut h = gst_check::Harness::with_element(&element, Some("sink"), Some("src"));
    h.set_src_caps_str(CAPS);
    h.play();
    (h, element, bus)
}

fn read_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}")))
        .collect()
}

fn frames(lines: &[Value]) -> Vec<u64> {
    lines.iter().map(|l| l["frame"].as_u64().unwrap()).collect()
}

fn warnings(bus: &gst::Bus) -> Vec<(String, Option<gst::Structure>)> {
    std::iter::from_fn(|| bus.pop_filtered(&[gst::MessageType::Warning]))
        .map(|msg| match msg.view() {
            gst::MessageView::Warning(w) => {
                (w.error().to_string(), w.details().map(|d| d.to_owned()))
            }
            _ => unreachable!(),
        })
        .collect()
}

#[test]
fn lines_have_fields_of_results_regions_and_unanalysed_frames() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.jsonl");
    let (mut h, _element, _bus) = harness(&[
        ("location", &path.to_str().unwrap()),
        ("stream-name", &"cam0"),
    ]);

    // 0: no result.
    h.push(buffer(0, true, None)).unwrap();
    // 1: normal result.
    h.push(buffer(1, true, Some(&result(0.2, false, 1))))
        .unwrap();
    // 2: anomalous, with a map and regions (one foreign ROI type, one without score).
    let mut r2 = result(0.8, true, 2);
    r2.map = Some(AnomalyMap::from_values(2, 2, &[0.0, 0.5, 1.0, 1.5]));
    // Two fired rules: a bounded count, and a ratio unbounded above that could not be measured.
    r2.rules = vec![
        RuleHit {
            name: "pins".into(),
            measured: 14.0,
            min: 15.0,
            max: 15.0,
            message: "pins: 14, expected 15".into(),
            instances: vec![RelativeBox {
                x: 0.1,
                y: 0.2,
                width: 0.3,
                height: 0.4,
            }],
        },
        RuleHit {
            name: "area(cable)".into(),
            measured: f64::NAN,
            min: 0.8,
            max: f64::INFINITY,
            message: "area(cable): NaN, expected at least 0.80".into(),
            instances: vec![],
        },
    ];
    let mut b2 = buffer(2, true, Some(&r2));
    add_roi(&mut b2, "anomaly", (10, 20, 32, 16), Some(0.9));
    add_roi(&mut b2, "face", (0, 0, 8, 8), Some(0.7));
    add_roi(&mut b2, "anomaly", (1, 2, 3, 4), None);
    h.push(b2).unwrap();
    // 3: stale result of frame 2, no PTS.
    let mut r3 = r2.clone();
    r3.stale = true;
    h.push(buffer(3, false, Some(&r3))).unwrap();
    // Passthrough: every buffer comes out with its metas.
    for _ in 0..3 {
        h.pull().unwrap();
    }
    let out = h.pull().unwrap();
    assert!(AnomalyResult::from_buffer(&out).unwrap().unwrap().stale);
    assert!(h.push_event(gst::event::Eos::new()));

    let lines = read_lines(&path);
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert_eq!(frames(&lines), [0, 1, 2, 3]);

    let l0 = &lines[0];
    assert_eq!(l0["timestamp"], 0);
    assert_eq!(l0["pts"], "0:00:00.000");
    assert_eq!(l0["stream"], "cam0");
    assert_eq!(l0["analysed"], false);
    for key in [
        "score",
        "calibrated",
        "anomalous",
        "threshold",
        "stale",
        "detectors",
        "rules",
        "map",
    ] {
        assert!(l0.get(key).is_none(), "unanalysed line has {key}: {l0}");
    }
    assert_eq!(l0["regions"], serde_json::json!([]));
    assert!(l0.get("dropped_before").is_none());

    let l1 = &lines[1];
    assert_eq!(l1["timestamp"], FRAME_NS);
    assert_eq!(l1["pts"], "0:00:00.033");
    assert_eq!(l1["analysed"], true);
    assert_eq!(l1["score"], 0.2);
    assert_eq!(l1["calibrated"], 0.1);
    assert_eq!(l1["anomalous"], false);
    assert_eq!(l1["threshold"], 0.5);
    assert_eq!(l1["stale"], false);
    assert_eq!(l1["analysed_frame"], 1);
    assert_eq!(
        l1["detectors"],
        serde_json::json!({"patch": {"score": 0.2, "calibrated": 0.1}})
    );
    assert!(l1.get("map").is_none());
    // No rule fired: an empty array.
    assert_eq!(l1["rules"], serde_json::json!([]));

    let l2 = &lines[2];
    assert_eq!(l2["timestamp"], 2 * FRAME_NS);
    assert_eq!(l2["pts"], "0:00:00.066");
    assert_eq!(l2["anomalous"], true);
    assert_eq!(l2["score"], 0.8);
    assert_eq!(l2["calibrated"], 0.9);
    assert_eq!(
        l2["regions"],
        serde_json::json!([
            {"x": 10, "y": 20, "width": 32, "height": 16, "score": 0.9},
            {"x": 1, "y": 2, "width": 3, "height": 4, "score": null}
        ])
    );
    // Without include-map only the size is given.
    assert_eq!(l2["map"], serde_json::json!({"width": 2, "height": 2}));
    // The fired rules, unbounded ends and the unmeasured value as null, instances left out.
    let rules = serde_json::json!([
        {"name": "pins", "measured": 14.0, "min": 15.0, "max": 15.0,
         "message": "pins: 14, expected 15"},
        {"name": "area(cable)", "measured": null, "min": 0.8, "max": null,
         "message": "area(cable): NaN, expected at least 0.80"}
    ]);
    assert_eq!(l2["rules"], rules);

    let l3 = &lines[3];
    assert_eq!(l3["timestamp"], Value::Null);
    assert_eq!(l3["pts"], Value::Null);
    assert_eq!(l3["stale"], true);
    assert_eq!(l3["analysed_frame"], 2);
    assert_eq!(l3["regions"], serde_json::json!([]));
    // A held result keeps the rules of the frame it was computed on.
    assert_eq!(l3["rules"], rules);
}

#[test]
fn include_map_and_default_stream_name() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("map.jsonl");
    let (mut h, element, _bus) = harness(&[
        ("location", &path.to_str().unwrap()),
        ("include-map", &true),
        ("name", &"publisher7"),
    ]);
    let mut r = result(1.5, true, 0);
    r.map = Some(AnomalyMap::from_values(
        3,
        2,
        &[0.123_456, 1.0, -0.5, 2.000_04, 7.777_77, 0.0],
    ));
    h.push(buffer(0, true, Some(&r))).unwrap();
    // Long PTS formatting.
    h.push(buffer(0, false, None).with_pts(3_723_004_000_000))
        .unwrap();
    assert!(h.push_event(gst::event::Eos::new()));
    let lines = read_lines(&path);
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["stream"], "publisher7");
    assert_eq!(
        lines[0]["map"],
        serde_json::json!({
            "width": 3, "height": 2, "threshold": 0.25,
            "values": [0.1235, 1.0, -0.5, 2.0, 7.7778, 0.0]
        })
    );
    assert_eq!(lines[1]["pts"], "1:02:03.004");
    assert_eq!(element.property::<u64>("dropped"), 0);
}

trait WithPts {
    fn with_pts(self, ns: u64) -> Self;
}

impl WithPts for gst::Buffer {
    fn with_pts(mut self, ns: u64) -> Self {
        self.get_mut()
            .unwrap()
            .set_pts(gst::ClockTime::from_nseconds(ns));
        self
    }
}

#[test]
fn only_anomalous_and_skip_unanalysed_filter_lines() {
    init();
    let dir = tempfile::tempdir().unwrap();

    let path = dir.path().join("anomalous.jsonl");
    let (mut h, _e, _bus) = harness(&[
        ("location", &path.to_str().unwrap()),
        ("only-anomalous", &true),
    ]);
    h.push(buffer(0, true, None)).unwrap();
    h.push(buffer(1, true, Some(&result(0.1, false, 1))))
        .unwrap();
    h.push(buffer(2, true, Some(&result(0.9, true, 2))))
        .unwrap();
    h.push(buffer(3, true, Some(&result(0.1, false, 3))))
        .unwrap();
    h.push(buffer(4, true, Some(&result(0.7, true, 4))))
        .unwrap();
    assert!(h.push_event(gst::event::Eos::new()));
    // Every buffer still goes through.
    assert_eq!(h.buffers_received(), 5);
    let lines = read_lines(&path);
    assert_eq!(frames(&lines), [2, 4]);
    assert!(lines.iter().all(|l| l["anomalous"] == true));

    let path = dir.path().join("analysed.jsonl");
    let (mut h, _e, _bus) = harness(&[
        ("location", &path.to_str().unwrap()),
        ("skip-unanalysed", &true),
    ]);
    h.push(buffer(0, true, None)).unwrap();
    h.push(buffer(1, true, Some(&result(0.1, false, 1))))
        .unwrap();
    h.push(buffer(2, true, None)).unwrap();
    h.push(buffer(3, true, Some(&result(0.9, true, 3))))
        .unwrap();
    assert!(h.push_event(gst::event::Eos::new()));
    let lines = read_lines(&path);
    assert_eq!(frames(&lines), [1, 3]);
    assert!(lines.iter().all(|l| l["analysed"] == true));
}

#[test]
fn flush_events_do_not_lose_lines() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flush.jsonl");
    let (mut h, _e, _bus) = harness(&[("location", &path.to_str().unwrap())]);
    h.push(buffer(0, true, Some(&result(0.1, false, 0))))
        .unwrap();
    h.push(buffer(1, true, None)).unwrap();
    assert!(h.push_event(gst::event::FlushStart::new()));
    assert!(h.push_event(gst::event::FlushStop::new(true)));
    assert!(
        h.push_event(gst::event::Segment::new(&gst::FormattedSegment::<
            gst::ClockTime,
        >::new()))
    );
    h.push(buffer(0, true, None)).unwrap();
    assert!(h.push_event(gst::event::Eos::new()));
    assert_eq!(frames(&read_lines(&path)), [0, 1, 2]);
}

/// Runs `videotestsrc num-buffers=N ! anomalypublish ... ! fakesink` to EOS, attaching an
/// anomalous result to every third frame, and returns the element's `dropped` count.
fn run_pipeline(props: &str, num_buffers: u32) -> u64 {
    let pipeline = gst::parse::launch(&format!(
        "videotestsrc name=src num-buffers={num_buffers} ! video/x-raw,width=64,height=48,framerate=30/1 ! \
         anomalypublish name=pub {props} ! fakesink sync=false"
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let src_pad = pipeline.by_name("src").unwrap().static_pad("src").unwrap();
    src_pad.add_probe(gst::PadProbeType::BUFFER, |_, info| {
        if let Some(gst::PadProbeData::Buffer(buffer)) = &mut info.data {
            // videotestsrc numbers its buffers in the offset field.
            let n = buffer.offset();
            if n % 3 == 0 {
                result(0.9, true, n).attach(buffer.make_mut()).unwrap();
            }
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
        .expect("no EOS within 60 s");
    if let gst::MessageView::Error(err) = msg.view() {
        panic!("pipeline error: {} ({:?})", err.error(), err.debug());
    }
    // The file must be complete now, before the pipeline is shut down.
    let dropped = pipeline.by_name("pub").unwrap().property::<u64>("dropped");
    pipeline.set_state(gst::State::Null).unwrap();
    dropped
}

#[test]
fn pipeline_file_is_complete_at_eos_and_append_works() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pipeline.jsonl");
    let location = path.to_str().unwrap();

    // A small queue and many frames: EOS must still wait for every line.
    let dropped = run_pipeline(
        &format!("location={location} max-queue=1 max-block=60000 sync-on-eos=true"),
        200,
    );
    assert_eq!(dropped, 0);
    let lines = read_lines(&path);
    assert_eq!(frames(&lines), (0..200).collect::<Vec<_>>());
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["analysed"], i % 3 == 0, "{line}");
        assert_eq!(line["stream"], "pub");
        assert_eq!(line["timestamp"], i as u64 * 1_000_000_000 / 30, "{line}");
    }
    assert_eq!(lines[3]["analysed_frame"], 3);

    // Truncates by default...
    run_pipeline(&format!("location={location}"), 5);
    assert_eq!(frames(&read_lines(&path)), [0, 1, 2, 3, 4]);
    // ...appends with append=true.
    run_pipeline(&format!("location={location} append=true"), 5);
    assert_eq!(frames(&read_lines(&path)), [0, 1, 2, 3, 4, 0, 1, 2, 3, 4]);
}

#[test]
fn unwritable_location_fails_start_with_the_path() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-such-dir").join("out.jsonl");
    let location = path.to_str().unwrap();
    let pipeline = gst::parse::launch(&format!(
        "videotestsrc num-buffers=5 ! anomalypublish location={location} ! fakesink"
    ))
    .unwrap();
    assert!(pipeline.set_state(gst::State::Playing).is_err());
    let msg = pipeline
        .bus()
        .unwrap()
        .timed_pop_filtered(gst::ClockTime::from_seconds(5), &[gst::MessageType::Error])
        .expect("an error message");
    let gst::MessageView::Error(err) = msg.view() else {
        unreachable!()
    };
    let text = err.error().to_string();
    assert!(text.contains(location), "{text}");
    assert!(err.error().matches(gst::ResourceError::OpenWrite), "{text}");
    pipeline.set_state(gst::State::Null).unwrap();
    assert!(!path.exists());
}

#[test]
fn write_errors_are_element_errors_naming_the_file() {
    init();
    // Every Linux machine has /dev/full (Debian included); the test fails rather than pass
    // without having run.
    assert!(
        Path::new("/dev/full").exists(),
        "/dev/full is missing: this test needs a Linux host with the full device"
    );
    let (mut h, _e, bus) = harness(&[("location", &"/dev/full")]);
    h.push(buffer(0, true, None)).unwrap();
    // EOS waits for the writer, which fails (ENOSPC) and posts an error.
    h.push_event(gst::event::Eos::new());
    let msg = bus
        .timed_pop_filtered(gst::ClockTime::from_seconds(10), &[gst::MessageType::Error])
        .expect("an error message");
    let gst::MessageView::Error(err) = msg.view() else {
        unreachable!()
    };
    let text = err.error().to_string();
    assert!(text.contains("/dev/full"), "{text}");
    assert!(err.error().matches(gst::ResourceError::Write), "{text}");
    // Later buffers fail instead of being dropped silently.
    assert!(h.push_event(gst::event::FlushStart::new()));
    assert!(h.push_event(gst::event::FlushStop::new(true)));
    assert!(
        h.push_event(gst::event::Segment::new(&gst::FormattedSegment::<
            gst::ClockTime,
        >::new()))
    );
    assert_eq!(h.push(buffer(1, true, None)), Err(gst::FlowError::Error));
}

/// With a FIFO that nobody reads, the writer blocks on its first (large) line; with
/// `max-queue=1 max-block=0` at most one more line fits in the queue, so the others must be
/// dropped, counted and warned about. Then the FIFO is read, `max-block` raised, and the next
/// line must get through carrying `dropped_before`. Which of the first frames are dropped depends
/// on thread timing, so the test checks invariants: every frame is either written or counted in
/// exactly one `dropped_before`, and the counts match the warnings and the `dropped` property.
#[test]
fn slow_writer_drops_lines_with_warning_and_dropped_before() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(status.success());
    // Opened read-write so that the element's open for writing does not block and the pipe
    // never reports a missing reader; not read until later, so the pipe (64 KiB) fills up.
    let mut fifo_file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)
        .unwrap();
    let location = fifo.to_str().unwrap();

    let (mut h, element, bus) = harness(&[
        ("location", &location),
        ("max-queue", &1u32),
        ("max-block", &0u32),
        ("include-map", &true),
    ]);
    // ~230 KB per line: one line alone is more than the pipe holds.
    let mut r = result(0.9, true, 0);
    r.map = Some(AnomalyMap::from_values(256, 128, &vec![0.1234; 256 * 128]));
    const FIRST: u64 = 10;
    for i in 0..FIRST {
        h.push(buffer(i, true, Some(&r))).unwrap();
    }
    let dropped = element.property::<u64>("dropped");
    assert!(dropped >= FIRST - 2, "only {dropped} dropped");
    let early = warnings(&bus);
    assert!(!early.is_empty(), "no warning about dropped lines");
    let (text, details) = &early[0];
    assert!(text.contains(location), "{text}");
    assert!(text.contains("dropped"), "{text}");
    assert_eq!(details.as_ref().unwrap().get::<u64>("dropped").unwrap(), 1);

    // Now read the FIFO.
    let reader = fifo_file.try_clone().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let reader_thread = std::thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let line = line.unwrap();
            if line == "END" {
                break;
            }
            tx.send(line).unwrap();
        }
    });
    // Wait as long as needed for room: this line cannot be dropped.
    element.set_property("max-block", 60_000u32);
    h.push(buffer(FIRST, true, Some(&result(0.1, false, FIRST))))
        .unwrap();
    assert!(h.push_event(gst::event::Eos::new()));
    assert_eq!(element.property::<u64>("dropped"), dropped);

    let mut lines = Vec::new();
    while lines.last().is_none_or(|l: &Value| l["frame"] != FIRST) {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("line from the FIFO");
        lines.push(serde_json::from_str::<Value>(&line).unwrap());
    }
    // Every frame is written or reported by the next written line.
    let mut expected = 0;
    for line in &lines {
        let frame = line["frame"].as_u64().unwrap();
        let before = line
            .get("dropped_before")
            .map_or(0, |v| v.as_u64().unwrap());
        assert_eq!(frame, expected + before, "{lines:?}");
        expected = frame + 1;
    }
    let total: u64 = lines
        .iter()
        .filter_map(|l| l.get("dropped_before"))
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(total, dropped);
    let last = lines.last().unwrap();
    assert!(last["dropped_before"].as_u64().unwrap() >= 1, "{last}");
    assert_eq!(last["analysed_frame"], FIRST);

    // The warning posted when lines got through again names the same count.
    let late = warnings(&bus);
    let (text, details) = late
        .iter()
        .rev()
        .find(|(_, d)| d.as_ref().unwrap().get::<bool>("ongoing") == Ok(false))
        .expect("warning when lines got through again");
    let details = details.as_ref().unwrap();
    assert_eq!(
        details.get::<u64>("dropped").unwrap(),
        last["dropped_before"].as_u64().unwrap()
    );
    assert_eq!(details.get::<u64>("total").unwrap(), dropped);
    assert!(text.contains(location), "{text}");

    // Let the reader thread end, then shut down (the writer is idle, so stop() joins at once).
    fifo_file.write_all(b"END\n").unwrap();
    reader_thread.join().unwrap();
    drop(h);
}

/// A FIFO nobody reads: the writer is stuck for good. EOS and the shutdown must not hang: each
/// gives up after 5 s without progress, with a warning counting the lines not written yet; the
/// lines still arrive once the FIFO is read.
#[test]
fn stuck_writer_does_not_hang_eos_or_shutdown() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("stuck");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo")
        .success());
    let mut fifo_file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)
        .unwrap();
    let location = fifo.to_str().unwrap();
    let pipeline = gst::parse::launch(&format!(
        "appsrc name=src format=time caps=\"{CAPS}\" ! anomalypublish name=pub \
         location={location} max-queue=1 max-block=0 include-map=true ! fakesink"
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let src = pipeline.by_name("src").unwrap();
    let publisher = pipeline.by_name("pub").unwrap();
    let bus = pipeline.bus().unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();

    let mut r = result(0.9, true, 0);
    r.map = Some(AnomalyMap::from_values(256, 128, &vec![0.1234; 256 * 128]));
    const N: u64 = 4;
    for i in 0..N {
        let ret = src.emit_by_name::<gst::FlowReturn>("push-buffer", &[&buffer(i, true, Some(&r))]);
        assert_eq!(ret, gst::FlowReturn::Ok);
    }
    let _ = src.emit_by_name::<gst::FlowReturn>("end-of-stream", &[]);

    // (timed_pop_filtered discards what does not match, so collect the warnings on the way.)
    let mut texts = Vec::new();
    loop {
        let msg = bus
            .timed_pop_filtered(
                gst::ClockTime::from_seconds(30),
                &[
                    gst::MessageType::Eos,
                    gst::MessageType::Error,
                    gst::MessageType::Warning,
                ],
            )
            .expect("EOS despite the stuck writer");
        match msg.view() {
            gst::MessageView::Warning(w) => texts.push(w.error().to_string()),
            gst::MessageView::Eos(_) => break,
            _ => panic!("unexpected {msg:?}"),
        }
    }
    assert!(
        texts
            .iter()
            .any(|t| t.contains(location) && t.contains("forwarding EOS")),
        "{texts:?}"
    );

    // Stop happens in PAUSED->READY; READY keeps the bus messages.
    let started = std::time::Instant::now();
    pipeline.set_state(gst::State::Ready).unwrap();
    assert!(started.elapsed() < Duration::from_secs(20));
    let texts: Vec<String> = warnings(&bus).into_iter().map(|(t, _)| t).collect();
    assert!(
        texts
            .iter()
            .any(|t| t.contains(location) && t.contains("stopping without waiting")),
        "{texts:?}"
    );
    let dropped = publisher.property::<u64>("dropped");
    pipeline.set_state(gst::State::Null).unwrap();

    // The lines that were queued are still written once the FIFO is read.
    let reader = fifo_file.try_clone().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let reader_thread = std::thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let line = line.unwrap();
            if line == "END" {
                break;
            }
            tx.send(line).unwrap();
        }
    });
    let mut got = Vec::new();
    for _ in 0..N - dropped {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("queued line");
        got.push(serde_json::from_str::<Value>(&line).unwrap());
    }
    assert_eq!(got.len() as u64 + dropped, N);
    fifo_file.write_all(b"END\n").unwrap();
    reader_thread.join().unwrap();
}

#[test]
fn property_defaults() {
    init();
    let e = gst::ElementFactory::make("anomalypublish").build().unwrap();
    assert_eq!(e.property::<Option<String>>("location"), None);
    assert_eq!(e.property::<Option<String>>("stream-name"), None);
    assert_eq!(e.property::<u32>("max-queue"), 1000);
    assert_eq!(e.property::<u32>("max-block"), 1000);
    assert!(!e.property::<bool>("sync-on-eos"));
    assert!(!e.property::<bool>("only-anomalous"));
    assert!(!e.property::<bool>("skip-unanalysed"));
    assert!(!e.property::<bool>("include-map"));
    assert!(!e.property::<bool>("append"));
    assert_eq!(e.property::<u64>("dropped"), 0);
}

/// The meta's `regions` are published in the pixels of the negotiated frame size (64x48 here)
/// and replace the ROI metas; caps without a video size fall back to the ROI metas.
#[test]
fn meta_regions_are_published_in_frame_pixels() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.jsonl");
    let (mut h, _element, _bus) = harness(&[("location", &path.to_str().unwrap())]);
    let mut r = result(0.8, true, 0);
    // (8, 6, 16, 12) of a 32x24 frame is (16, 12, 32, 24) of 64x48.
    r.regions = Some(vec![
        AnomalyRegion::from_pixels((8, 6, 16, 12), 32, 24, 0.75),
        AnomalyRegion::from_pixels((0, 0, 32, 24), 32, 24, 0.5),
    ]);
    let mut b = buffer(0, true, Some(&r));
    add_roi(&mut b, "anomaly", (1, 2, 3, 4), None);
    h.push(b).unwrap();
    h.pull().unwrap();
    assert!(h.push_event(gst::event::Eos::new()));
    let lines = read_lines(&path);
    assert_eq!(
        lines[0]["regions"],
        serde_json::json!([
            {"x": 16, "y": 12, "width": 32, "height": 24, "score": 0.75},
            {"x": 0, "y": 0, "width": 64, "height": 48, "score": 0.5}
        ])
    );
    drop(h);

    // Non-video caps: no frame size to scale to, so the ROI metas are published.
    let path = dir.path().join("any.jsonl");
    let element = gst::ElementFactory::make("anomalypublish")
        .property("location", path.to_str().unwrap())
        .build()
        .unwrap();
    let mut h = gst_check::Harness::with_element(&element, Some("sink"), Some("src"));
    h.set_src_caps_str("application/x-test");
    h.play();
    let mut b = buffer(0, true, Some(&r));
    add_roi(&mut b, "anomaly", (1, 2, 3, 4), Some(0.25));
    h.push(b).unwrap();
    assert!(h.push_event(gst::event::Eos::new()));
    let lines = read_lines(&path);
    assert_eq!(
        lines[0]["regions"],
        serde_json::json!([{"x": 1, "y": 2, "width": 3, "height": 4, "score": 0.25}])
    );
}
