//! Tests of `anomalypublish`'s MQTT output against a real Mosquitto broker (Debian package
//! `mosquitto`, installed by `scripts/setup-deps.sh`). Each test starts its own broker on a free
//! loopback port with a temporary configuration, subscribes with a rumqttc client and compares
//! what arrives with the file the element wrote.

use gst::glib;
use gst::prelude::*;
use gstlogsad::meta::{AnomalyResult, DetectorScore};
use rumqttc::{Client, Event, MqttOptions, Packet, QoS, RecvTimeoutError};
use std::collections::HashSet;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

mod common;

fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        gst::init().unwrap();
        gstlogsad::plugin_register_static().unwrap();
    });
}

const CAPS: &str = "video/x-raw,format=GRAY8,width=64,height=48,framerate=30/1";
const FRAME_NS: u64 = 33_333_333;

fn result(frame: u64) -> AnomalyResult {
    let anomalous = frame % 3 == 0;
    AnomalyResult {
        score: 0.1 + (frame % 7) as f64 * 0.1,
        calibrated: if anomalous { 0.9 } else { 0.1 },
        anomalous,
        threshold: 0.5,
        stale: false,
        skipped: None,
        frame,
        detectors: vec![DetectorScore {
            name: "patch".into(),
            raw: 0.3,
            calibrated: 0.4,
        }],
        map: None,
        map_threshold: 0.25,
        deinterlaced: false,
        regions: None,
        rules: vec![],
    }
}

/// A frame with PTS `frame * FRAME_NS` and a result on every other frame.
fn buffer(frame: u64) -> gst::Buffer {
    let mut buf = gst::Buffer::with_size(64 * 48).unwrap();
    {
        let b = buf.get_mut().unwrap();
        b.set_pts(gst::ClockTime::from_nseconds(frame * FRAME_NS));
        if frame % 2 == 0 {
            result(frame).attach(b).unwrap();
        }
    }
    buf
}

/// A Mosquitto broker of its own on a free loopback port, with persistence (so that the
/// subscriber's session and its queued messages survive a restart) and optional password file.
struct Broker {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl Broker {
    /// Starts a broker; `users` (name, password) makes it refuse anonymous clients.
    fn start(users: &[(&str, &str)]) -> Broker {
        Broker::start_with(users, "")
    }

    /// Starts a broker with `more` appended to its configuration (another listener).
    fn start_with(users: &[(&str, &str)], more: &str) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut conf = format!(
            "listener {port} 127.0.0.1\npersistence true\npersistence_location {}/\n\
             max_queued_messages 0\nuser root\n",
            dir.path().display()
        );
        if users.is_empty() {
            conf.push_str("allow_anonymous true\n");
        } else {
            let passwd = dir.path().join("passwd");
            std::fs::write(&passwd, "").unwrap();
            for (user, password) in users {
                let ok = Command::new("mosquitto_passwd")
                    .args(["-b", passwd.to_str().unwrap(), user, password])
                    .status()
                    .expect("mosquitto_passwd (Debian package mosquitto)")
                    .success();
                assert!(ok, "mosquitto_passwd failed");
            }
            conf.push_str(&format!(
                "allow_anonymous false\npassword_file {}\n",
                passwd.display()
            ));
        }
        conf.push_str(more);
        std::fs::write(dir.path().join("mosquitto.conf"), conf).unwrap();
        let mut broker = Broker {
            dir,
            port,
            child: None,
        };
        broker.run();
        broker
    }

    fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// (Re)starts the broker process on the same port and waits until it accepts connections.
    fn run(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("mosquitto.log"))
            .unwrap();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("cannot run mosquitto: install the Debian package mosquitto (scripts/setup-deps.sh)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not listen on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the broker with SIGTERM (it saves its sessions) and waits for it to exit.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let ok = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .unwrap()
                .success();
            assert!(ok);
            child.wait().unwrap();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A subscriber with a persistent session (QoS 1), collecting the payloads of `topic`.
struct Subscriber {
    lines: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Subscriber {
    /// Connects, subscribes and returns once the broker confirmed the subscription.
    fn new(port: u16, topic: &str, credentials: Option<(&str, &str)>) -> Subscriber {
        let mut options = MqttOptions::new(format!("test-sub-{port}-{topic}"), "127.0.0.1", port);
        options
            .set_clean_session(false)
            .set_keep_alive(Duration::from_secs(5))
            .set_max_packet_size(1 << 20, 1 << 20);
        if let Some((user, password)) = credentials {
            options.set_credentials(user, password);
        }
        let (client, mut connection) = Client::new(options, 16);
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = {
            let (lines, stop, topic) = (lines.clone(), stop.clone(), topic.to_string());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match connection.recv_timeout(Duration::from_millis(100)) {
                        Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                            client.try_subscribe(&topic, QoS::AtLeastOnce).unwrap();
                        }
                        Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => {
                            let _ = ready_tx.send(());
                        }
                        Ok(Ok(Event::Incoming(Packet::Publish(p)))) => lines
                            .lock()
                            .unwrap()
                            .push(String::from_utf8(p.payload.to_vec()).unwrap()),
                        Ok(Ok(_)) | Err(RecvTimeoutError::Timeout) => {}
                        // The broker is restarting: retry shortly.
                        Ok(Err(_)) => std::thread::sleep(Duration::from_millis(50)),
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
            })
        };
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the subscriber did not get its SUBACK");
        Subscriber {
            lines,
            stop,
            thread: Some(thread),
        }
    }

    /// Waits until `n` lines arrived (or 10 s passed) and returns all received so far.
    fn wait_for(&self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let lines = self.lines.lock().unwrap().clone();
            if lines.len() >= n || Instant::now() >= deadline {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn file_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn frame_of(line: &str) -> u64 {
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    v["frame"].as_u64().unwrap()
}

/// `appsrc ! anomalypublish {props} ! fakesink`, playing.
fn appsrc_pipeline(props: &str) -> (gst::Pipeline, gst::Element, gst::Element) {
    let pipeline = gst::parse::launch(&format!(
        "appsrc name=src format=time caps=\"{CAPS}\" ! anomalypublish name=pub {props} ! \
         fakesink"
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let src = pipeline.by_name("src").unwrap();
    let publish = pipeline.by_name("pub").unwrap();
    (pipeline, src, publish)
}

fn push(src: &gst::Element, frames: std::ops::Range<u64>) {
    for i in frames {
        let ret = src.emit_by_name::<gst::FlowReturn>("push-buffer", &[&buffer(i)]);
        assert_eq!(ret, gst::FlowReturn::Ok);
    }
}

/// Bus messages popped until one satisfies `stop` (returned last) or `timeout` passes.
fn collect_until(
    bus: &gst::Bus,
    timeout: Duration,
    stop: impl Fn(&gst::Message) -> bool,
) -> Vec<gst::Message> {
    let deadline = Instant::now() + timeout;
    let mut messages = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let Some(msg) = bus.timed_pop(gst::ClockTime::from_nseconds(left.as_nanos() as u64)) else {
            break;
        };
        let done = stop(&msg);
        messages.push(msg);
        if done {
            break;
        }
    }
    messages
}

fn is_eos_or_error(msg: &gst::Message) -> bool {
    matches!(
        msg.view(),
        gst::MessageView::Eos(_) | gst::MessageView::Error(_)
    )
}

/// Texts and details of the warnings among `messages`.
fn warnings(messages: &[gst::Message]) -> Vec<(String, Option<gst::Structure>)> {
    messages
        .iter()
        .filter_map(|msg| match msg.view() {
            gst::MessageView::Warning(w) => {
                Some((w.error().to_string(), w.details().map(|d| d.to_owned())))
            }
            _ => None,
        })
        .collect()
}

fn errors(messages: &[gst::Message]) -> Vec<glib::Error> {
    messages
        .iter()
        .filter_map(|msg| match msg.view() {
            gst::MessageView::Error(e) => Some(e.error()),
            _ => None,
        })
        .collect()
}

fn infos(messages: &[gst::Message]) -> Vec<String> {
    messages
        .iter()
        .filter_map(|msg| match msg.view() {
            gst::MessageView::Info(i) => Some(i.error().to_string()),
            _ => None,
        })
        .collect()
}

/// Runs `videotestsrc num-buffers=N ! anomalypublish ... ! fakesink` (a result on every third
/// frame), calling `during` once the pipeline plays, and returns the bus messages up to EOS.
fn run_videotestsrc(
    props: &str,
    num_buffers: u32,
    live: bool,
    during: impl FnOnce(),
) -> Vec<gst::Message> {
    let pipeline = gst::parse::launch(&format!(
        "videotestsrc name=src num-buffers={num_buffers} is-live={live} ! \
         video/x-raw,width=64,height=48,framerate=30/1 ! anomalypublish name=pub {props} ! \
         fakesink sync=false"
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let src_pad = pipeline.by_name("src").unwrap().static_pad("src").unwrap();
    src_pad.add_probe(gst::PadProbeType::BUFFER, |_, info| {
        if let Some(gst::PadProbeData::Buffer(buffer)) = &mut info.data {
            let n = buffer.offset();
            if n % 3 == 0 {
                result(n).attach(buffer.make_mut()).unwrap();
            }
        }
        gst::PadProbeReturn::Ok
    });
    pipeline.set_state(gst::State::Playing).unwrap();
    during();
    let bus = pipeline.bus().unwrap();
    let messages = collect_until(&bus, Duration::from_secs(60), is_eos_or_error);
    let errs = errors(&messages);
    assert!(errs.is_empty(), "pipeline errors: {errs:?}");
    assert!(
        messages
            .last()
            .is_some_and(|m| matches!(m.view(), gst::MessageView::Eos(_))),
        "no EOS within 60 s"
    );
    pipeline.set_state(gst::State::Null).unwrap();
    messages
}

#[test]
fn every_line_reaches_the_broker_as_written_to_the_file_in_order() {
    init();
    let broker = Broker::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    for (qos, stream) in [(1, "cam-q1"), (0, "cam-q0")] {
        let sub = Subscriber::new(broker.port, &format!("line/{stream}/results"), None);
        let path = dir.path().join(format!("{stream}.jsonl"));
        let messages = run_videotestsrc(
            &format!(
                "location={} stream-name={stream} mqtt-url={} mqtt-qos={qos} \
                 mqtt-topic=\"line/{{stream}}/results\"",
                path.display(),
                broker.url()
            ),
            200,
            false,
            || {},
        );
        assert!(warnings(&messages).is_empty(), "{:?}", warnings(&messages));
        let written = file_lines(&path);
        assert_eq!(written.len(), 200);
        let received = sub.wait_for(200);
        // Byte for byte, every line, in order, nothing more.
        assert_eq!(received, written, "QoS {qos}");
    }
}

#[test]
fn mqtt_alone_writes_nothing_locally_and_keeps_every_line() {
    init();
    let broker = Broker::start(&[]);
    let sub = Subscriber::new(broker.port, "logsad/solo", None);
    let (pipeline, src, publish) = appsrc_pipeline(&format!(
        "stream-name=solo mqtt-url={} mqtt-drain-timeout=10000",
        broker.url()
    ));
    pipeline.set_state(gst::State::Playing).unwrap();
    push(&src, 0..50);
    let _ = src.emit_by_name::<gst::FlowReturn>("end-of-stream", &[]);
    let messages = collect_until(
        &pipeline.bus().unwrap(),
        Duration::from_secs(20),
        is_eos_or_error,
    );
    assert!(errors(&messages).is_empty());
    let received = sub.wait_for(50);
    assert_eq!(
        received.iter().map(|l| frame_of(l)).collect::<Vec<_>>(),
        (0..50).collect::<Vec<_>>()
    );
    assert_eq!(publish.property::<u64>("mqtt-dropped"), 0);
    pipeline.set_state(gst::State::Null).unwrap();
}

/// The broker is stopped and restarted on the same port while a live stream plays: nothing
/// within the backlog is lost and the order holds. A line whose PUBACK was lost with the
/// connection may be sent twice (at least once), so duplicates are counted, not failed on.
#[test]
fn broker_restart_mid_stream_loses_nothing_and_keeps_order() {
    init();
    let mut broker = Broker::start(&[]);
    let sub = Subscriber::new(broker.port, "logsad/restart", None);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("restart.jsonl");
    let url = broker.url();
    let broker_ref = &mut broker;
    let messages = run_videotestsrc(
        &format!(
            "location={} stream-name=restart mqtt-url={url} mqtt-drain-timeout=15000",
            path.display()
        ),
        150,
        true,
        move || {
            std::thread::sleep(Duration::from_millis(1500));
            broker_ref.stop();
            std::thread::sleep(Duration::from_millis(1000));
            broker_ref.run();
        },
    );
    let written = file_lines(&path);
    assert_eq!(written.len(), 150);
    let received = sub.wait_for(150);
    let mut seen = HashSet::new();
    let unique: Vec<String> = received
        .iter()
        .filter(|l| seen.insert(l.to_string()))
        .cloned()
        .collect();
    eprintln!(
        "received {} messages for {} lines ({} duplicates)",
        received.len(),
        written.len(),
        received.len() - unique.len()
    );
    assert_eq!(unique, written, "lost or reordered lines");

    let texts: Vec<String> = warnings(&messages).into_iter().map(|w| w.0).collect();
    assert!(
        texts
            .iter()
            .any(|t| t.starts_with(&format!("Lost the connection to MQTT broker {url}"))),
        "{texts:?}"
    );
    assert!(
        infos(&messages)
            .iter()
            .any(|t| t.starts_with(&format!("Connected to MQTT broker {url} again"))),
        "{:?}",
        infos(&messages)
    );
}

/// An outage longer than the backlog: the oldest lines are dropped, counted in `mqtt-dropped`
/// and warned about with the count; the newest `mqtt-backlog` lines arrive after the restart.
#[test]
fn outage_longer_than_the_backlog_drops_the_oldest_lines_with_a_count() {
    init();
    let mut broker = Broker::start(&[]);
    let sub = Subscriber::new(broker.port, "logsad/outage", None);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outage.jsonl");
    let (pipeline, src, publish) = appsrc_pipeline(&format!(
        "location={} stream-name=outage mqtt-url={} mqtt-backlog=5",
        path.display(),
        broker.url()
    ));
    let bus = pipeline.bus().unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    push(&src, 0..3);
    assert_eq!(sub.wait_for(3).len(), 3);
    // Let their PUBACKs reach the element.
    std::thread::sleep(Duration::from_millis(300));

    broker.stop();
    let lost = collect_until(
        &bus,
        Duration::from_secs(10),
        |m| matches!(m.view(), gst::MessageView::Warning(w) if w.error().to_string().starts_with("Lost the connection")),
    );
    let mut messages = lost;
    assert!(!warnings(&messages).is_empty(), "the loss was not reported");
    push(&src, 3..23);
    broker.run();
    let _ = src.emit_by_name::<gst::FlowReturn>("end-of-stream", &[]);
    messages.extend(collect_until(
        &bus,
        Duration::from_secs(20),
        is_eos_or_error,
    ));
    assert!(errors(&messages).is_empty(), "{:?}", errors(&messages));

    assert_eq!(publish.property::<u64>("mqtt-dropped"), 15);
    let received: Vec<u64> = sub.wait_for(8).iter().map(|l| frame_of(l)).collect();
    assert_eq!(received, [0, 1, 2, 18, 19, 20, 21, 22]);
    // The file has them all.
    assert_eq!(file_lines(&path).len(), 23);

    let drops: Vec<gst::Structure> = warnings(&messages)
        .into_iter()
        .filter_map(|(_, d)| d.filter(|d| d.name() == "logsad/mqtt-dropped"))
        .collect();
    let counted: u64 = drops.iter().map(|d| d.get::<u64>("dropped").unwrap()).sum();
    assert_eq!(counted, 15, "{drops:?}");
    assert_eq!(drops.last().unwrap().get::<u64>("total").unwrap(), 15);
    let texts: Vec<String> = warnings(&messages).into_iter().map(|w| w.0).collect();
    assert!(
        texts
            .iter()
            .any(|t| t.contains("backlog of 5 lines is full") && t.ends_with("(15 in total)")),
        "{texts:?}"
    );
    pipeline.set_state(gst::State::Null).unwrap();
}

/// A broker that is down when the pipeline starts: one warning, retries, and the lines kept in
/// the backlog arrive once it is up.
#[test]
fn broker_down_at_start_warns_once_and_delivers_later() {
    init();
    let mut broker = Broker::start(&[]);
    // Make the subscriber's session known to the broker, then stop it: the lines published
    // after the restart are queued for the subscriber even before it reconnects.
    let sub = Subscriber::new(broker.port, "logsad/late", None);
    broker.stop();

    let dir = tempfile::tempdir().unwrap();
    let (pipeline, src, publish) = appsrc_pipeline(&format!(
        "location={} stream-name=late mqtt-url={} mqtt-drain-timeout=10000",
        dir.path().join("late.jsonl").display(),
        broker.url()
    ));
    let bus = pipeline.bus().unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    push(&src, 0..10);
    // Several attempts fail meanwhile (100, 200, 400, 800 ms apart).
    let mut messages = collect_until(&bus, Duration::from_millis(2500), |_| false);
    let texts: Vec<String> = warnings(&messages).into_iter().map(|w| w.0).collect();
    let url = broker.url();
    assert_eq!(texts.len(), 1, "{texts:?}");
    assert!(
        texts[0].starts_with(&format!("Cannot connect to MQTT broker {url} (")),
        "{texts:?}"
    );
    assert!(
        texts[0].contains("retrying, keeping up to 10000 lines"),
        "{texts:?}"
    );

    broker.run();
    let _ = src.emit_by_name::<gst::FlowReturn>("end-of-stream", &[]);
    messages.extend(collect_until(
        &bus,
        Duration::from_secs(20),
        is_eos_or_error,
    ));
    assert!(errors(&messages).is_empty());
    let received: Vec<u64> = sub.wait_for(10).iter().map(|l| frame_of(l)).collect();
    assert_eq!(received, (0..10).collect::<Vec<_>>());
    assert_eq!(publish.property::<u64>("mqtt-dropped"), 0);
    pipeline.set_state(gst::State::Null).unwrap();
}

#[test]
fn refused_credentials_are_an_error_naming_the_broker_and_the_reason() {
    init();
    let broker = Broker::start(&[("line3", "s3cret")]);
    let url = broker.url();
    let dir = tempfile::tempdir().unwrap();
    let location = dir.path().join("auth.jsonl");
    let location = location.display();

    // The right password: lines arrive.
    let sub = Subscriber::new(broker.port, "logsad/auth", Some(("line3", "s3cret")));
    let (pipeline, src, _) = appsrc_pipeline(&format!(
        "location={location} stream-name=auth mqtt-url={url} mqtt-username=line3 mqtt-password=s3cret"
    ));
    pipeline.set_state(gst::State::Playing).unwrap();
    push(&src, 0..5);
    let _ = src.emit_by_name::<gst::FlowReturn>("end-of-stream", &[]);
    let messages = collect_until(
        &pipeline.bus().unwrap(),
        Duration::from_secs(20),
        is_eos_or_error,
    );
    assert!(errors(&messages).is_empty(), "{:?}", errors(&messages));
    assert_eq!(sub.wait_for(5).len(), 5);
    pipeline.set_state(gst::State::Null).unwrap();

    // A wrong one: an element error.
    let (pipeline, src, _) = appsrc_pipeline(&format!(
        "location={location} stream-name=auth mqtt-url={url} mqtt-username=line3 mqtt-password=wrong"
    ));
    pipeline.set_state(gst::State::Playing).unwrap();
    push(&src, 0..1);
    let messages = collect_until(
        &pipeline.bus().unwrap(),
        Duration::from_secs(10),
        is_eos_or_error,
    );
    let errs = errors(&messages);
    assert_eq!(errs.len(), 1, "{messages:?}");
    let text = errs[0].to_string();
    assert!(errs[0].matches(gst::ResourceError::NotAuthorized), "{text}");
    assert_eq!(
        text,
        format!("MQTT broker {url} refused the connection: not authorised (user name or password refused)")
    );
    pipeline.set_state(gst::State::Null).unwrap();
}

/// Settings errors stop the start with a message naming the property and the cause.
#[test]
fn bad_mqtt_settings_fail_start_with_the_cause() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let missing: PathBuf = dir.path().join("no-such-ca.pem");
    let not_pem = dir.path().join("not-pem.txt");
    std::fs::write(&not_pem, "hello\n").unwrap();
    let cases = [
        (
            format!(
                "mqtt-url=mqtts://127.0.0.1:1 mqtt-ca-file={}",
                missing.display()
            ),
            format!("cannot read '{}'", missing.display()),
        ),
        (
            format!(
                "mqtt-url=mqtts://127.0.0.1:1 mqtt-ca-file={}",
                not_pem.display()
            ),
            format!("'{}' holds no PEM certificate", not_pem.display()),
        ),
        (
            "mqtt-url=mqtts://127.0.0.1:1".to_string(),
            "mqtt-ca-file is not set".to_string(),
        ),
        (
            format!(
                "mqtt-url=mqtt://127.0.0.1:1 mqtt-ca-file={}",
                not_pem.display()
            ),
            "is plain TCP: use mqtts://".to_string(),
        ),
        (
            "mqtt-url=tcp://127.0.0.1:1".to_string(),
            "Invalid mqtt-url: unknown scheme 'tcp'".to_string(),
        ),
        (
            "mqtt-url=mqtt://127.0.0.1:1 mqtt-topic=\"x/{camera}\"".to_string(),
            "Invalid mqtt-topic 'x/{camera}' for stream 'pub'".to_string(),
        ),
        (
            "mqtt-url=mqtt://127.0.0.1:1 mqtt-password=p".to_string(),
            "mqtt-password is set without mqtt-username".to_string(),
        ),
    ];
    for (props, expected) in cases {
        let (pipeline, _, _) = appsrc_pipeline(&format!("location=- {props}"));
        assert!(pipeline.set_state(gst::State::Playing).is_err(), "{props}");
        let messages = collect_until(
            &pipeline.bus().unwrap(),
            Duration::from_secs(5),
            is_eos_or_error,
        );
        let errs = errors(&messages);
        assert!(
            errs.first()
                .is_some_and(|e| e.to_string().contains(&expected)),
            "{props}: expected {expected:?} in {errs:?}"
        );
        pipeline.set_state(gst::State::Null).unwrap();
    }
}

/// Every published line carries `wall_time`, RFC 3339 UTC with milliseconds, from this run.
#[test]
fn lines_carry_the_wall_clock_time() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("times.jsonl");
    let before = chrono::Utc::now() - chrono::Duration::milliseconds(1);
    run_videotestsrc(&format!("location={}", path.display()), 20, false, || {});
    let after = chrono::Utc::now() + chrono::Duration::milliseconds(1);
    let times: Vec<chrono::DateTime<chrono::Utc>> = file_lines(&path)
        .iter()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let text = v["wall_time"].as_str().expect("a wall_time").to_string();
            assert!(text.ends_with('Z') && text.len() == 24, "{text}");
            chrono::DateTime::parse_from_rfc3339(&text)
                .unwrap()
                .to_utc()
        })
        .collect();
    assert_eq!(times.len(), 20);
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    assert!(times[0] >= before && times[19] <= after, "{times:?}");
}

/// A CA, a broker certificate for 127.0.0.1 and a client certificate, made with openssl.
struct Certs {
    dir: tempfile::TempDir,
}

impl Certs {
    fn make() -> Certs {
        let dir = tempfile::tempdir().unwrap();
        // The extensions make the certificates X.509 v3, which rustls requires of the one it
        // presents; the broker's names the address the client dials.
        let script = r#"
            set -e
            key="-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes"
            openssl req -x509 $key -keyout ca.key -out ca.pem -days 2 -subj /CN=test-ca
            printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > server.ext
            printf 'extendedKeyUsage=clientAuth\n' > client.ext
            for name in server client; do
                openssl req $key -keyout $name.key -out $name.csr -subj /CN=$name
                openssl x509 -req -in $name.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
                    -out $name.pem -days 2 -extfile $name.ext
            done
        "#;
        let output = Command::new("sh")
            .args(["-c", script])
            .current_dir(dir.path())
            .output()
            .expect("sh");
        assert!(
            output.status.success(),
            "making certificates with openssl (Debian package openssl): {output:?}"
        );
        Certs { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// A TLS listener on `port` that requires a client certificate signed by the CA.
    fn listener(&self, port: u16) -> String {
        format!(
            "listener {port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n\
             require_certificate true\n",
            self.path("ca.pem"),
            self.path("server.pem"),
            self.path("server.key")
        )
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Mutual TLS against Mosquitto requiring client certificates: with `mqtt-cert-file` and
/// `mqtt-key-file` every line arrives; without them the broker refuses the handshake and
/// nothing arrives (a warning says the broker cannot be reached); a key that is not PEM is an
/// error naming the file.
#[test]
fn client_certificates_for_brokers_that_require_them() {
    init();
    let certs = Certs::make();
    let tls_port = free_port();
    let broker = Broker::start_with(&[], &certs.listener(tls_port));
    let url = format!("mqtts://127.0.0.1:{tls_port}");
    let dir = tempfile::tempdir().unwrap();

    let sub = Subscriber::new(broker.port, "logsad/mtls", None);
    let path = dir.path().join("mtls.jsonl");
    let messages = run_videotestsrc(
        &format!(
            "location={} stream-name=mtls mqtt-url={url} mqtt-ca-file={} mqtt-cert-file={} \
             mqtt-key-file={}",
            path.display(),
            certs.path("ca.pem"),
            certs.path("client.pem"),
            certs.path("client.key")
        ),
        30,
        false,
        || {},
    );
    assert!(warnings(&messages).is_empty(), "{:?}", warnings(&messages));
    assert_eq!(sub.wait_for(30), file_lines(&path));

    let sub = Subscriber::new(broker.port, "logsad/no-cert", None);
    let messages = run_videotestsrc(
        &format!(
            "stream-name=no-cert mqtt-url={url} mqtt-ca-file={} mqtt-drain-timeout=1000",
            certs.path("ca.pem")
        ),
        10,
        false,
        || {},
    );
    let texts: Vec<String> = warnings(&messages).into_iter().map(|w| w.0).collect();
    assert!(
        texts
            .iter()
            .any(|t| t.starts_with(&format!("Cannot connect to MQTT broker {url}"))),
        "{texts:?}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(sub.wait_for(0).is_empty());

    let (pipeline, _, _) = appsrc_pipeline(&format!(
        "location=- mqtt-url={url} mqtt-ca-file={} mqtt-cert-file={} mqtt-key-file={}",
        certs.path("ca.pem"),
        certs.path("client.pem"),
        certs.path("client.csr")
    ));
    assert!(pipeline.set_state(gst::State::Playing).is_err());
    let messages = collect_until(
        &pipeline.bus().unwrap(),
        Duration::from_secs(5),
        is_eos_or_error,
    );
    let errs = errors(&messages);
    let expected = format!(
        "'{}' holds no usable PEM private key",
        certs.path("client.csr")
    );
    assert!(
        errs.first()
            .is_some_and(|e| e.to_string().contains(&expected)),
        "{errs:?}"
    );
    pipeline.set_state(gst::State::Null).unwrap();
}

/// Each camera's retained online status: `online: true` on connecting and `reason: stopped`
/// on a clean stop; when the process dies (SIGKILL, nothing sent), the broker publishes the
/// last will, `reason: connection lost`, for that camera.
#[test]
fn online_status_and_last_will_per_camera() {
    init();
    let broker = Broker::start(&[]);
    let sub = Subscriber::new(broker.port, "line/+/status", None);
    let status = |line: &str| -> (String, bool, Option<String>, bool) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        (
            v["stream"].as_str().unwrap().to_string(),
            v["online"].as_bool().unwrap(),
            v["reason"].as_str().map(str::to_string),
            v["wall_time"].is_string(),
        )
    };
    run_videotestsrc(
        &format!(
            "stream-name=cam-a mqtt-url={} mqtt-status-topic=line/{{stream}}/status",
            broker.url()
        ),
        10,
        false,
        || {},
    );
    let got: Vec<_> = sub.wait_for(2).iter().map(|l| status(l)).collect();
    assert_eq!(
        got,
        [
            ("cam-a".to_string(), true, None, true),
            (
                "cam-a".to_string(),
                false,
                Some("stopped".to_string()),
                true
            )
        ]
    );

    let plugins = tempfile::tempdir().unwrap();
    std::fs::copy(
        common::built_plugin(),
        plugins.path().join("libgstlogsad.so"),
    )
    .unwrap();
    let mut camera = Command::new("gst-launch-1.0")
        .args([
            "-q",
            "videotestsrc",
            "is-live=true",
            "!",
            "video/x-raw,width=64,height=48",
            "!",
            "anomalypublish",
            "stream-name=cam-b",
            &format!("mqtt-url={}", broker.url()),
            "mqtt-status-topic=line/{stream}/status",
            "!",
            "fakesink",
        ])
        .env("GST_PLUGIN_PATH", plugins.path())
        .env("GST_REGISTRY", plugins.path().join("registry.bin"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("gst-launch-1.0 (Debian package gstreamer1.0-tools)");
    let online = sub.wait_for(3);
    assert_eq!(online.len(), 3, "cam-b never came online: {online:?}");
    assert_eq!(status(&online[2]), ("cam-b".to_string(), true, None, true));
    camera.kill().unwrap();
    camera.wait().unwrap();
    let got = sub.wait_for(4);
    assert_eq!(got.len(), 4, "no last will: {got:?}");
    assert_eq!(
        status(&got[3]),
        (
            "cam-b".to_string(),
            false,
            Some("connection lost".to_string()),
            false
        )
    );
}
