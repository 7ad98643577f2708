//! The inference worker: one loaded backbone in its own thread, serving frames from any number
//! of streams, batching the frames that wait into one ONNX Runtime call. Knows nothing of
//! GStreamer; the `logsad` element submits frames and judges the features it gets back.
//!
//! Workers are shared by name through a process-wide registry of weak references
//! ([`InferenceWorker::shared`]), as DL Streamer's `model-instance-id`: the first user loads the
//! model, later users with the same name get the same worker, and the model is freed when the
//! last user drops its handle.
//!
//! Frames are batched as DeepStream's `nvstreammux` does: the worker waits for a first frame,
//! then for up to `batch_timeout` for more, and runs at most `batch_size` frames in one call.
//! Frames whose profiles need different tilings share the calls of the tilings they have in
//! common.
//!
//! Streams submit through a [`StreamMember`], which tells the worker how many frames the stream
//! can have in flight and when it stops sending (EOS, flush, error, removal). Without a timeout
//! (`batch_timeout: None`) a batch waits only while some active stream can still add a frame
//! to it, so that it shrinks when streams end and a lone stream never waits for partners it
//! cannot have ([`Membership::can_grow`]).

use crate::detect::preprocess::RgbImage;
use crate::detect::tiling::Tiling;
use crate::engine::{EngineError, EngineOptions, Manifest, ModelIdentity};
use crate::inspector::{Extractor, FrameFeatures, InspectError, Inspector, ModelTime};
use crate::sync::lock;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::thread::{JoinHandle, ThreadId};
use std::time::{Duration, Instant};

/// How frames are gathered into one inference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// The most frames in one inference (at least 1).
    pub batch_size: usize,
    /// How long to wait for more frames after the first one arrived; `None` waits until the
    /// batch is full or no active stream can add a frame to it. `Some(ZERO)` takes only the
    /// frames already waiting.
    pub batch_timeout: Option<Duration>,
}

impl Default for Batching {
    fn default() -> Self {
        Batching {
            batch_size: 1,
            batch_timeout: Some(Duration::ZERO),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Inspect(#[from] InspectError),
    #[error(
        "model-instance-id {id:?} is already used with model {existing}; this element asks for \
         model {requested}: give one of them another model-instance-id"
    )]
    DifferentModel {
        id: String,
        existing: String,
        requested: String,
    },
    #[error("cannot start the inference thread: {0}")]
    Thread(String),
}

/// What a submitted frame gets back: its features, or why there are none.
pub type Reply = Box<dyn FnOnce(Result<FrameFeatures, InspectError>) + Send>;

struct Job {
    image: Arc<RgbImage>,
    tilings: Arc<[Tiling]>,
    reply: Reply,
    /// The stream that sent it; `None` for a caller that waits for this one frame.
    member: Option<MemberId>,
}

/// Identifies a [`StreamMember`] within its worker.
type MemberId = u64;

/// What the worker thread receives: frames, and news of the streams that send them.
enum Message {
    Job(Job),
    /// A stream joined, or can now have this many frames in flight.
    Capacity(MemberId, usize),
    /// A stream sends no more frames until its next one (EOS, flush, error).
    Idle(MemberId),
    Left(MemberId),
}

/// One stream's state as the worker thread sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MemberState {
    /// The most frames the stream can have in flight (its `max-in-flight`).
    capacity: usize,
    /// Whether more frames may come: false from joining or going idle to its next frame.
    active: bool,
}

/// The streams of a worker, for deciding whether a batch can still grow. Knows nothing of
/// threads; [`serve`] feeds it the [`Message`]s.
#[derive(Debug, Default)]
struct Membership {
    members: HashMap<MemberId, MemberState>,
}

impl Membership {
    fn apply(&mut self, message: &Message) {
        match *message {
            Message::Job(Job {
                member: Some(id), ..
            }) => {
                if let Some(m) = self.members.get_mut(&id) {
                    m.active = true;
                }
            }
            Message::Job(_) => {}
            Message::Capacity(id, capacity) => {
                let m = self.members.entry(id).or_insert(MemberState {
                    capacity,
                    active: false,
                });
                m.capacity = capacity.max(1);
            }
            Message::Idle(id) => {
                if let Some(m) = self.members.get_mut(&id) {
                    m.active = false;
                }
            }
            Message::Left(id) => {
                self.members.remove(&id);
            }
        }
    }

    /// Whether any stream could still add a frame to a batch that holds `batch`: an active
    /// stream with fewer frames in it than it may have in flight. A frame without a stream
    /// (a caller waiting for it) adds nothing more.
    fn can_grow(&self, batch: &[Job]) -> bool {
        self.members.iter().any(|(&id, m)| {
            m.active && batch.iter().filter(|job| job.member == Some(id)).count() < m.capacity
        })
    }
}

/// A stream's handle on a worker: its frames go through it, and it tells the worker how many
/// frames the stream may have in flight and when it stops sending. Dropping it leaves.
pub struct StreamMember {
    id: MemberId,
    worker: Arc<InferenceWorker>,
    capacity: usize,
}

impl StreamMember {
    /// Joins `worker` as a stream that may have up to `capacity` frames in flight. The stream
    /// counts as active from its first frame on.
    pub fn join(worker: Arc<InferenceWorker>, capacity: usize) -> Self {
        let id = worker.next_member.fetch_add(1, Ordering::Relaxed);
        let capacity = capacity.max(1);
        worker.send(Message::Capacity(id, capacity));
        StreamMember {
            id,
            worker,
            capacity,
        }
    }

    pub fn worker(&self) -> &Arc<InferenceWorker> {
        &self.worker
    }

    /// Says that the stream may now have up to `capacity` frames in flight.
    pub fn set_capacity(&mut self, capacity: usize) {
        let capacity = capacity.max(1);
        if capacity != self.capacity {
            self.capacity = capacity;
            self.worker.send(Message::Capacity(self.id, capacity));
        }
    }

    /// Says that the stream sends no more frames for now (EOS, flush, error): batches stop
    /// waiting for it until its next frame.
    pub fn idle(&self) {
        self.worker.send(Message::Idle(self.id));
    }

    /// Queues `image` for the backbone under each of `tilings`; `reply` is called once, from
    /// the worker's thread, with its features or the error (at once if the worker stopped).
    pub fn submit(&self, image: Arc<RgbImage>, tilings: Arc<[Tiling]>, reply: Reply) {
        self.worker.submit_job(Job {
            image,
            tilings,
            reply,
            member: Some(self.id),
        });
    }
}

impl Drop for StreamMember {
    fn drop(&mut self) {
        self.worker.send(Message::Left(self.id));
    }
}

/// A loaded backbone running in its own thread. Cheap to share: hold it in an [`Arc`].
pub struct InferenceWorker {
    messages: Mutex<Option<Sender<Message>>>,
    next_member: AtomicU64,
    thread: Mutex<Option<JoinHandle<()>>>,
    thread_id: ThreadId,
    manifest_path: PathBuf,
    manifest: Manifest,
    identity: ModelIdentity,
    provider: String,
    upsample: usize,
    options: EngineOptions,
    batching: Batching,
}

/// The process-wide registry of shared workers by `model-instance-id`.
static REGISTRY: LazyLock<Mutex<HashMap<String, Weak<InferenceWorker>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

impl InferenceWorker {
    /// Loads the model `manifest_path` describes and starts its thread. Returns warnings (such
    /// as a provider falling back to CPU) for the caller.
    ///
    /// Errors: a missing or bad manifest or model, a thread that cannot start.
    pub fn start(
        manifest_path: &Path,
        options: &EngineOptions,
        batching: Batching,
    ) -> Result<(Self, Vec<String>), WorkerError> {
        let (extractor, warnings) = Extractor::load(manifest_path, options)?;
        let backbone = extractor.backbone();
        let manifest = backbone.manifest().clone();
        let identity = backbone.identity().clone();
        let provider = backbone.provider().to_string();
        let upsample = extractor.upsample();
        let batching = Batching {
            batch_size: batching.batch_size.max(1),
            ..batching
        };
        let (sender, receiver) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("logsad-infer-{}", manifest.name))
            .spawn(move || serve(extractor, receiver, batching))
            .map_err(|e| WorkerError::Thread(e.to_string()))?;
        let worker = InferenceWorker {
            messages: Mutex::new(Some(sender)),
            next_member: AtomicU64::new(0),
            thread_id: thread.thread().id(),
            thread: Mutex::new(Some(thread)),
            manifest_path: manifest_path.to_path_buf(),
            manifest,
            identity,
            provider,
            upsample,
            options: options.clone(),
            batching,
        };
        Ok((worker, warnings))
    }

    /// The worker registered as `id`, or a new one registered under it. The model, options
    /// and batching of the first user apply; a later user asking for other options or
    /// batching gets a warning saying so. Returns the worker and warnings for the caller
    /// (including the loader's, such as a provider falling back to CPU, for a new worker).
    ///
    /// Errors: [`WorkerError::DifferentModel`] when `id` serves other weights (naming both
    /// models); loading errors for a new worker.
    pub fn shared(
        id: &str,
        manifest_path: &Path,
        options: &EngineOptions,
        batching: Batching,
    ) -> Result<(Arc<Self>, Vec<String>), WorkerError> {
        // Held while loading, so that two elements starting at once load the model once.
        let mut registry = lock(&REGISTRY);
        registry.retain(|_, worker| worker.strong_count() > 0);
        if let Some(worker) = registry.get(id).and_then(Weak::upgrade) {
            worker.check_same_model(id, manifest_path)?;
            let mut warnings = Vec::new();
            let batching = Batching {
                batch_size: batching.batch_size.max(1),
                ..batching
            };
            if batching != worker.batching {
                warnings.push(format!(
                    "model-instance-id {id:?}: the instance batches as its first user asked \
                     ({}), not as this element asks ({})",
                    describe(&worker.batching),
                    describe(&batching)
                ));
            }
            if *options != worker.options {
                warnings.push(format!(
                    "model-instance-id {id:?}: the instance runs with its first user's device \
                     and threads ({:?}), not this element's ({options:?})",
                    worker.options
                ));
            }
            return Ok((worker, warnings));
        }
        let (worker, warnings) = Self::start(manifest_path, options, batching)?;
        let worker = Arc::new(worker);
        registry.insert(id.to_string(), Arc::downgrade(&worker));
        Ok((worker, warnings))
    }

    /// The live worker registered as `id`, if any user still holds it.
    pub fn registered(id: &str) -> Option<Arc<Self>> {
        lock(&REGISTRY).get(id).and_then(Weak::upgrade)
    }

    /// Whether `manifest_path` names this worker's model: the same manifest file, or a
    /// manifest of the same weights.
    fn check_same_model(&self, id: &str, manifest_path: &Path) -> Result<(), WorkerError> {
        let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        if canonical(manifest_path) == canonical(&self.manifest_path) {
            return Ok(());
        }
        let requested = Manifest::load(manifest_path)
            .map_err(EngineError::from)
            .map_err(InspectError::from)?;
        let identity = ModelIdentity::of(&requested).map_err(InspectError::from)?;
        if identity == self.identity {
            return Ok(());
        }
        Err(WorkerError::DifferentModel {
            id: id.to_string(),
            existing: format!("{} ({})", self.manifest.name, self.manifest_path.display()),
            requested: format!("{} ({})", requested.name, manifest_path.display()),
        })
    }

    /// Sends `message` to the worker thread; returns it when the worker has stopped.
    fn send(&self, message: Message) -> Option<Message> {
        let sender = lock(&self.messages).clone();
        match sender {
            Some(sender) => sender.send(message).err().map(|e| e.0),
            None => Some(message),
        }
    }

    /// Queues `job`; a job the stopped worker cannot take is answered at once with an error.
    fn submit_job(&self, job: Job) {
        if let Some(Message::Job(job)) = self.send(Message::Job(job)) {
            (job.reply)(Err(InspectError::Inference(
                "the inference worker has stopped".into(),
            )));
        }
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn manifest_path(&self) -> &Path {
        &self.manifest_path
    }

    pub fn identity(&self) -> &ModelIdentity {
        &self.identity
    }

    /// The execution provider in use: cpu, cuda or tensorrt.
    pub fn provider(&self) -> &str {
        &self.provider
    }

    /// How many times the token grid is upsampled before matching.
    pub fn upsample(&self) -> usize {
        self.upsample
    }

    pub fn batching(&self) -> Batching {
        self.batching
    }

    /// Loads `profile_path` for this worker's model, checking they belong together. Returns
    /// warnings for the caller.
    pub fn load_profile(
        &self,
        profile_path: &Path,
    ) -> Result<(Inspector, Vec<String>), InspectError> {
        crate::inspector::load_profile(
            profile_path,
            &self.manifest_path,
            &self.manifest,
            &self.identity,
            self.upsample,
        )
    }

    /// Features of one frame, waiting for them: for callers without a stream of their own
    /// (warming up, tests).
    ///
    /// Errors: the backbone's, or a worker that stopped.
    pub fn features_now(
        &self,
        image: Arc<RgbImage>,
        tilings: Arc<[Tiling]>,
    ) -> Result<FrameFeatures, InspectError> {
        let (sender, receiver) = mpsc::channel();
        self.submit_job(Job {
            image,
            tilings,
            reply: Box::new(move |answer| {
                let _ = sender.send(answer);
            }),
            member: None,
        });
        receiver
            .recv()
            .map_err(|_| InspectError::Inference("the inference worker has stopped".into()))?
    }
}

impl Drop for InferenceWorker {
    fn drop(&mut self) {
        // Closing the channel ends the thread once the queued frames are answered.
        lock(&self.messages).take();
        let thread = lock(&self.thread).take();
        // The last handle can be dropped by a reply running on the worker's own thread.
        if let Some(thread) = thread.filter(|_| std::thread::current().id() != self.thread_id) {
            let _ = thread.join();
        }
    }
}

fn describe(b: &Batching) -> String {
    match b.batch_timeout {
        Some(t) => format!(
            "batch-size {}, batch-timeout {} µs",
            b.batch_size,
            t.as_micros()
        ),
        None => format!("batch-size {}, batch-timeout -1", b.batch_size),
    }
}

/// The worker thread: gathers batches and answers them until the channel closes.
fn serve(mut extractor: Extractor, messages: Receiver<Message>, batching: Batching) {
    let mut membership = Membership::default();
    loop {
        // The first frame, taking in news of the streams meanwhile.
        let first = loop {
            let Ok(message) = messages.recv() else {
                return;
            };
            membership.apply(&message);
            if let Message::Job(job) = message {
                break job;
            }
        };
        let mut batch = vec![first];
        let deadline = batching.batch_timeout.map(|t| Instant::now() + t);
        while batch.len() < batching.batch_size {
            if deadline.is_none() && !membership.can_grow(&batch) {
                break;
            }
            let message = match deadline {
                None => messages.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some(deadline) => {
                    messages.recv_timeout(deadline.saturating_duration_since(Instant::now()))
                }
            };
            let Ok(message) = message else {
                break;
            };
            membership.apply(&message);
            if let Message::Job(job) = message {
                batch.push(job);
            }
        }
        run_batch(&mut extractor, batch);
    }
}

/// Runs one inference per distinct tiling over the frames that need it and replies to each.
fn run_batch(extractor: &mut Extractor, batch: Vec<Job>) {
    let mut time = ModelTime::default();
    let mut tilings: Vec<&Tiling> = Vec::new();
    for job in &batch {
        for tiling in job.tilings.iter() {
            if !tilings.contains(&tiling) {
                tilings.push(tiling);
            }
        }
    }
    let mut features: Vec<Result<Vec<(Tiling, Vec<_>)>, String>> =
        batch.iter().map(|_| Ok(Vec::new())).collect();
    for tiling in tilings {
        let users: Vec<usize> = (0..batch.len())
            .filter(|&i| batch[i].tilings.contains(tiling))
            .collect();
        let images: Vec<&RgbImage> = users.iter().map(|&i| &*batch[i].image).collect();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            extractor.features_of_batch(&images, tiling)
        }));
        let outcome = match outcome {
            Ok(Ok((per_image, spent))) => {
                time.add(&spent);
                Ok(per_image)
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("the backbone panicked".to_string()),
        };
        match outcome {
            Ok(per_image) => {
                for (&i, tiles) in users.iter().zip(per_image) {
                    if let Ok(f) = &mut features[i] {
                        f.push((tiling.clone(), tiles));
                    }
                }
            }
            Err(e) => {
                for &i in &users {
                    features[i] = Err(e.clone());
                }
            }
        }
    }
    let model_time = time.per_frame(batch.len());
    let input_size = extractor.input_size();
    for (job, features) in batch.into_iter().zip(features) {
        let answer = features
            .map(|by_tiling| FrameFeatures {
                by_tiling,
                input_size,
                model_time,
            })
            .map_err(InspectError::Inference);
        (job.reply)(answer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(member: Option<MemberId>) -> Job {
        Job {
            image: Arc::new(RgbImage::new(1, 1, vec![0; 3]).unwrap()),
            tilings: Arc::from(Vec::new()),
            reply: Box::new(|_| {}),
            member,
        }
    }

    fn membership(news: Vec<Message>) -> Membership {
        let mut membership = Membership::default();
        for message in &news {
            membership.apply(message);
        }
        membership
    }

    #[test]
    fn a_lone_waiting_caller_never_waits_for_partners() {
        // The warm-up frame: no stream at all.
        assert!(!membership(vec![]).can_grow(&[job(None)]));
        // A stream that joined but sent nothing yet is not waited for.
        assert!(!membership(vec![Message::Capacity(0, 4)]).can_grow(&[job(None)]));
    }

    #[test]
    fn a_stream_is_waited_for_up_to_its_frames_in_flight() {
        let m = membership(vec![Message::Capacity(0, 2), Message::Job(job(Some(0)))]);
        assert!(m.can_grow(&[job(Some(0))]));
        assert!(!m.can_grow(&[job(Some(0)), job(Some(0))]));
    }

    #[test]
    fn a_stream_that_ends_or_leaves_is_not_waited_for() {
        let mut m = membership(vec![
            Message::Capacity(0, 1),
            Message::Capacity(1, 1),
            Message::Job(job(Some(0))),
            Message::Job(job(Some(1))),
        ]);
        let batch = [job(Some(0))];
        assert!(m.can_grow(&batch), "stream 1 may still send a frame");
        m.apply(&Message::Idle(1));
        assert!(!m.can_grow(&batch), "stream 1 reached EOS");
        m.apply(&Message::Job(job(Some(1))));
        assert!(m.can_grow(&batch), "stream 1 sends again after a flush");
        m.apply(&Message::Left(1));
        assert!(!m.can_grow(&batch), "stream 1 was removed");
    }

    #[test]
    fn a_capacity_change_applies_to_the_waiting_batch() {
        let mut m = membership(vec![Message::Capacity(0, 1), Message::Job(job(Some(0)))]);
        let batch = [job(Some(0))];
        assert!(!m.can_grow(&batch));
        m.apply(&Message::Capacity(0, 3));
        assert!(m.can_grow(&batch));
        // Zero is taken as one: a stream always has room for a frame.
        m.apply(&Message::Capacity(0, 0));
        assert!(!m.can_grow(&batch));
    }
}
