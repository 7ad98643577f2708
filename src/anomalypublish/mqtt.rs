//! The MQTT output of `anomalypublish`: a publisher thread that sends the lines of a
//! [`Backlog`] to a broker with rumqttc (MQTT 3.1.1), reconnecting when the connection is lost.
//!
//! GStreamer-free: the element hands lines to [`Publisher::push`] from its streaming thread,
//! which only takes a mutex (never the network), and turns the [`Report`]s of the publisher
//! thread into bus messages.
//!
//! Delivery: each connection is a fresh rumqttc event loop with a clean session, so rumqttc
//! itself never replays anything; every line in flight when a connection is lost goes back to
//! unsent in the backlog ([`Backlog::rewind`]) and is sent again, in order, on the next
//! connection. At QoS 1 a line leaves the backlog on its PUBACK, at QoS 0 once rumqttc has
//! flushed it to the socket.
//!
//! Online status ([`StatusConfig`]): each connection leaves a last will (retained,
//! `{"stream": …, "online": false, "reason": "connection lost"}`) that the broker publishes if
//! the connection dies without a goodbye, publishes `"online": true` (retained) when the broker
//! accepts it, and on a clean stop `"online": false, "reason": "stopped"` before disconnecting.

use super::backlog::{Backlog, BrokerUrl};
use crate::sync::lock;

use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, Incoming, LastWill,
    MqttOptions, Outgoing, QoS, TlsConfiguration, Transport,
};
use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::sync::Notify;

/// Messages handed to the client and not yet confirmed, at most (rumqttc's `inflight`).
const WINDOW: u16 = 100;
/// MQTT keep-alive: a dead connection is noticed within about this long.
const KEEP_ALIVE: Duration = Duration::from_secs(10);
/// Largest message: MQTT's own limit (a line with `include-map=true` can be large).
const MAX_PACKET: usize = 268_435_455;
/// Waits between connection attempts: from `MIN_BACKOFF`, doubling, up to `MAX_BACKOFF`.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How often waits for the backlog re-check their interruption condition.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How long a clean stop waits for the broker to take the offline status.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(1);

/// What the publisher needs, checked by the element at start.
pub struct Config {
    pub url: BrokerUrl,
    /// The expanded topic (see [`super::backlog::expand_topic`]).
    pub topic: String,
    /// QoS 1 (`true`, at least once, PUBACK) or QoS 0 (`false`, at most once).
    pub at_least_once: bool,
    /// User name and password.
    pub credentials: Option<(String, String)>,
    /// TLS settings (from [`tls_config`]); plain TCP when `None`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub client_id: String,
    /// The online-status messages and last will; none when `None`.
    pub status: Option<StatusConfig>,
    /// Lines kept while the broker is unreachable or slow (see [`Backlog`]).
    pub backlog: usize,
}

/// Where and for which stream the online status goes.
pub struct StatusConfig {
    /// The expanded status topic.
    pub topic: String,
    /// The stream name the messages carry.
    pub stream: String,
}

impl StatusConfig {
    /// The status message: `online`, and for an offline one why (`reason`); `wall_time` when
    /// the message is sent now (a last will is sent later, by the broker, so it has none).
    fn message(&self, online: bool, reason: Option<&str>, now: bool) -> String {
        let mut message = serde_json::json!({"stream": self.stream, "online": online});
        if let Some(reason) = reason {
            message["reason"] = reason.into();
        }
        if now {
            message["wall_time"] = crate::utc::now().into();
        }
        message.to_string()
    }
}

/// The PEM certificates in `path`; errors name the file and the cause.
fn read_certificates(
    path: &Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let name = path.display();
    let pem = std::fs::read(path).map_err(|e| format!("cannot read '{name}': {e}"))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("'{name}' holds a malformed PEM block: {e}"))?;
    if certs.is_empty() {
        return Err(format!("'{name}' holds no PEM certificate"));
    }
    Ok(certs)
}

/// Makes the TLS settings, with rustls on the *ring* provider: the server must present a
/// certificate from the PEM CA certificates in `ca` (and only them); with `client` (a PEM
/// certificate chain and its PEM private key: PKCS#8, PKCS#1 or SEC1), this client presents
/// that certificate (mutual TLS, as AWS IoT Core and most managed brokers require).
///
/// Errors name the file and the cause: it cannot be read, holds a malformed PEM block, no
/// certificate or no private key, or a key that does not go with the certificate.
pub fn tls_config(
    ca: &Path,
    client: Option<(&Path, &Path)>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::{pem::PemObject, PrivateKeyDer};

    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certificates(ca)? {
        roots
            .add(cert)
            .map_err(|e| format!("'{}' holds an unusable certificate: {e}", ca.display()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up failed: {e}"))?
        .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = read_certificates(cert)?;
            let name = key.display();
            let pem = std::fs::read(key).map_err(|e| format!("cannot read '{name}': {e}"))?;
            let key = PrivateKeyDer::from_pem_slice(&pem)
                .map_err(|e| format!("'{name}' holds no usable PEM private key: {e}"))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                format!(
                    "the client certificate '{}' and key '{name}' cannot be used: {e}",
                    cert.display()
                )
            })?
        }
    };
    Ok(Arc::new(config))
}

/// What the publisher thread tells the element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// The first failure of an outage: connecting failed (`connected_before` false) or the
    /// connection was lost (true). `waiting` lines are kept; retries continue.
    Unreachable {
        error: String,
        connected_before: bool,
        waiting: usize,
    },
    /// A later failed attempt in the same outage.
    Retrying { error: String },
    /// The broker accepted the connection; `after_outage` when an [`Report::Unreachable`]
    /// came before. `waiting` lines are (re)sent now.
    Connected { after_outage: bool, waiting: usize },
    /// The broker refused the connection (bad credentials, client id or protocol): retrying
    /// cannot help. Nothing more is published.
    Refused { reason: String },
    /// The publisher could not run at all. Nothing is published.
    Failed { reason: String },
}

/// State shared by the element and the publisher thread.
struct Shared {
    backlog: Mutex<Backlog>,
    /// Notified when lines leave the backlog and when the thread ends.
    changed: Condvar,
    /// Wakes the publisher thread: a line was pushed, or `quit` was set.
    wake: Notify,
    quit: AtomicBool,
    connected: AtomicBool,
    failed: AtomicBool,
    finished: AtomicBool,
}

impl Shared {
    fn confirm(&self, seq: u64) {
        lock(&self.backlog).confirm(seq);
        self.changed.notify_all();
    }
}

/// Handle on the publisher thread.
pub struct Publisher {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Publisher {
    /// Starts the publisher thread, which connects in the background (this never blocks on the
    /// network). `report` is called from that thread. Fails only when the thread cannot be
    /// started.
    pub fn start(config: Config, report: Box<dyn Fn(Report) + Send>) -> std::io::Result<Publisher> {
        let shared = Arc::new(Shared {
            backlog: Mutex::new(Backlog::new(config.backlog)),
            changed: Condvar::new(),
            wake: Notify::new(),
            quit: AtomicBool::new(false),
            connected: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            finished: AtomicBool::new(false),
        });
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("anomalypublish-mqtt".into())
                .spawn(move || {
                    run(&shared, &config, &*report);
                    shared.connected.store(false, Ordering::SeqCst);
                    shared.finished.store(true, Ordering::SeqCst);
                    shared.changed.notify_all();
                })?
        };
        Ok(Publisher {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queues `line` for the broker. Returns whether the backlog was full and its oldest line
    /// was dropped to make room.
    pub fn push(&self, line: &str) -> bool {
        let (_, dropped) = lock(&self.shared.backlog).push(Arc::from(line));
        self.shared.wake.notify_one();
        dropped
    }

    /// Whether the broker refused the connection (see [`Report::Failed`]).
    pub fn failed(&self) -> bool {
        self.shared.failed.load(Ordering::SeqCst)
    }

    /// Whether a connection is up (CONNACK received, not lost since).
    pub fn connected(&self) -> bool {
        self.shared.connected.load(Ordering::SeqCst)
    }

    /// Waits until every pushed line is confirmed, for at most `timeout`, giving up early when
    /// `interrupted()` turns true or the publisher has failed. Returns the lines still waiting.
    pub fn wait_drained(&self, timeout: Duration, interrupted: impl Fn() -> bool) -> usize {
        let deadline = Instant::now() + timeout;
        let mut backlog = lock(&self.shared.backlog);
        loop {
            let now = Instant::now();
            if backlog.is_empty()
                || now >= deadline
                || interrupted()
                || self.shared.finished.load(Ordering::SeqCst)
            {
                return backlog.len();
            }
            let wait = POLL_INTERVAL.min(deadline - now);
            backlog = self
                .shared
                .changed
                .wait_timeout(backlog, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Stops the publisher thread at once and joins it. The lines still waiting are counted as
    /// dropped and returned with the total of dropped lines.
    pub fn stop(&self) -> (usize, u64) {
        self.shutdown();
        let mut backlog = lock(&self.shared.backlog);
        let left = backlog.discard_all();
        (left, backlog.dropped())
    }

    fn shutdown(&self) {
        self.shared.quit.store(true, Ordering::SeqCst);
        self.shared.wake.notify_one();
        let thread = lock(&self.thread).take();
        if let Some(thread) = thread {
            // The thread only returns after noticing `quit`: it never blocks for long.
            let _ = thread.join();
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// How one connection ended.
enum Ended {
    Quit,
    /// Lost or never made; `connected` when a CONNACK had been received.
    Lost {
        error: String,
        connected: bool,
    },
    /// The broker refused the connection for a reason that retrying does not fix.
    Refused(String),
}

/// Why a CONNACK refused the connection, and whether retrying can help.
fn refusal(code: ConnectReturnCode) -> (&'static str, bool) {
    match code {
        ConnectReturnCode::Success => ("accepted", true),
        ConnectReturnCode::RefusedProtocolVersion => (
            "the broker does not speak MQTT 3.1.1 (protocol version refused)",
            false,
        ),
        ConnectReturnCode::BadClientId => ("the client id was refused", false),
        ConnectReturnCode::ServiceUnavailable => ("the broker is unavailable", true),
        ConnectReturnCode::BadUserNamePassword => ("bad user name or password", false),
        ConnectReturnCode::NotAuthorized => {
            ("not authorised (user name or password refused)", false)
        }
    }
}

/// The publisher thread's body: connects, publishes and reconnects until `quit`.
fn run(shared: &Shared, config: &Config, report: &dyn Fn(Report)) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            shared.failed.store(true, Ordering::SeqCst);
            report(Report::Failed {
                reason: format!("could not start the network runtime: {err}"),
            });
            return;
        }
    };
    let mut options = MqttOptions::new(
        config.client_id.clone(),
        config.url.host.clone(),
        config.url.port,
    );
    options
        .set_keep_alive(KEEP_ALIVE)
        .set_clean_session(true)
        .set_max_packet_size(MAX_PACKET, MAX_PACKET)
        .set_inflight(WINDOW);
    if let Some((user, password)) = &config.credentials {
        options.set_credentials(user.clone(), password.clone());
    }
    if let Some(tls) = &config.tls {
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            tls.clone(),
        )));
    }
    if let Some(status) = &config.status {
        let will = status.message(false, Some("connection lost"), false);
        options.set_last_will(LastWill::new(&status.topic, will, QoS::AtLeastOnce, true));
    }
    runtime.block_on(sessions(shared, config, options, report));
}

async fn sessions(shared: &Shared, config: &Config, options: MqttOptions, report: &dyn Fn(Report)) {
    let mut backoff = MIN_BACKOFF;
    // An `Unreachable` was reported and no connection made since.
    let mut outage = false;
    while !shared.quit.load(Ordering::SeqCst) {
        let (client, eventloop) = AsyncClient::new(options.clone(), usize::from(WINDOW) + 1);
        let (tx, rx) = unbounded_channel();
        let poller = tokio::spawn(poll_events(eventloop, tx));
        let ended = connection(shared, config, &client, rx, &mut outage, report).await;
        poller.abort();
        shared.connected.store(false, Ordering::SeqCst);
        lock(&shared.backlog).rewind();
        match ended {
            Ended::Quit => return,
            Ended::Refused(reason) => {
                shared.failed.store(true, Ordering::SeqCst);
                report(Report::Refused { reason });
                return;
            }
            Ended::Lost { error, connected } => {
                if connected {
                    backoff = MIN_BACKOFF;
                }
                if outage {
                    report(Report::Retrying { error });
                } else {
                    outage = true;
                    let waiting = lock(&shared.backlog).len();
                    report(Report::Unreachable {
                        error,
                        connected_before: connected,
                        waiting,
                    });
                }
            }
        }
        let deadline = tokio::time::Instant::now() + backoff;
        backoff = (backoff * 2).min(MAX_BACKOFF);
        // Pushed lines wake this up too: sleep on until the deadline unless quitting.
        while !shared.quit.load(Ordering::SeqCst) && tokio::time::Instant::now() < deadline {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {}
                _ = shared.wake.notified() => {}
            }
        }
    }
}

/// Drives one rumqttc event loop, never cancelled mid-poll, until it fails.
async fn poll_events(
    mut eventloop: EventLoop,
    tx: UnboundedSender<Result<Event, ConnectionError>>,
) {
    loop {
        let event = eventloop.poll().await;
        let failed = event.is_err();
        if tx.send(event).is_err() || failed {
            return;
        }
    }
}

/// One connection: hands unsent lines to the client (after the CONNACK, at most `WINDOW` in
/// flight) and confirms them as the events say, until the connection ends or `quit`.
async fn connection(
    shared: &Shared,
    config: &Config,
    client: &AsyncClient,
    mut events: UnboundedReceiver<Result<Event, ConnectionError>>,
    outage: &mut bool,
    report: &dyn Fn(Report),
) -> Ended {
    let qos = if config.at_least_once {
        QoS::AtLeastOnce
    } else {
        QoS::AtMostOnce
    };
    let mut connected = false;
    // Lines handed to the client whose `Outgoing::Publish` has not come yet (rumqttc handles
    // requests in order); `None` for a status message, which is not in the backlog.
    let mut handed: VecDeque<Option<u64>> = VecDeque::new();
    // QoS 1: packet id -> line, waiting for the PUBACK.
    let mut unacked: HashMap<u16, u64> = HashMap::new();
    loop {
        if shared.quit.load(Ordering::SeqCst) {
            if let (true, Some(status)) = (connected, &config.status) {
                goodbye(client, &mut events, status).await;
            }
            return Ended::Quit;
        }
        if connected {
            while handed.len() + unacked.len() < usize::from(WINDOW) {
                let Some((seq, line)) = lock(&shared.backlog).next_to_send() else {
                    break;
                };
                if let Err(err) = client.try_publish(&config.topic, qos, false, line.as_bytes()) {
                    return Ended::Lost {
                        error: format!("the MQTT client did not take a message: {err}"),
                        connected,
                    };
                }
                handed.push_back(Some(seq));
            }
        }
        tokio::select! {
            event = events.recv() => match event {
                None => {
                    return Ended::Lost { error: "the MQTT event loop stopped".into(), connected }
                }
                Some(Err(ConnectionError::ConnectionRefused(code))) => {
                    let (reason, retry) = refusal(code);
                    if !retry {
                        return Ended::Refused(reason.to_string());
                    }
                    return Ended::Lost { error: format!("connection refused: {reason}"), connected };
                }
                Some(Err(err)) => return Ended::Lost { error: err.to_string(), connected },
                Some(Ok(Event::Incoming(Incoming::ConnAck(_)))) => {
                    connected = true;
                    shared.connected.store(true, Ordering::SeqCst);
                    if let Some(status) = &config.status {
                        let online = status.message(true, None, true);
                        if let Err(err) =
                            client.try_publish(&status.topic, QoS::AtLeastOnce, true, online)
                        {
                            return Ended::Lost {
                                error: format!("the MQTT client did not take a message: {err}"),
                                connected,
                            };
                        }
                        handed.push_back(None);
                    }
                    let waiting = lock(&shared.backlog).len();
                    report(Report::Connected { after_outage: *outage, waiting });
                    *outage = false;
                }
                Some(Ok(Event::Outgoing(Outgoing::Publish(pkid)))) => {
                    if let Some(Some(seq)) = handed.pop_front() {
                        if config.at_least_once {
                            unacked.insert(pkid, seq);
                        } else {
                            shared.confirm(seq);
                        }
                    }
                }
                Some(Ok(Event::Incoming(Incoming::PubAck(ack)))) => {
                    if let Some(seq) = unacked.remove(&ack.pkid) {
                        shared.confirm(seq);
                    }
                }
                Some(Ok(_)) => {}
            },
            _ = shared.wake.notified() => {}
        }
    }
}

/// A clean stop: publishes the offline status (retained) and disconnects, so that the broker
/// keeps "stopped" rather than sending the last will; waits at most [`GOODBYE_TIMEOUT`].
async fn goodbye(
    client: &AsyncClient,
    events: &mut UnboundedReceiver<Result<Event, ConnectionError>>,
    status: &StatusConfig,
) {
    let offline = status.message(false, Some("stopped"), true);
    if client
        .try_publish(&status.topic, QoS::AtLeastOnce, true, offline)
        .is_err()
        || client.try_disconnect().is_err()
    {
        return;
    }
    let _ = tokio::time::timeout(GOODBYE_TIMEOUT, async {
        while let Some(Ok(event)) = events.recv().await {
            if matches!(event, Event::Outgoing(Outgoing::Disconnect)) {
                return;
            }
        }
    })
    .await;
}
