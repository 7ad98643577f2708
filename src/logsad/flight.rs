//! The ordered queue of frames in flight, between the element's streaming thread, the
//! inference worker's replies and the source pad task; apart from GStreamer, so that its
//! ordering, flushing and waiting can be tested on their own.
//!
//! Named for what it bounds: the frames in flight (`max-in-flight`), sent for analysis and not
//! yet judged. Frames and serialized events leave in the order they came; a frame leaves once
//! it is ready (its analysis answered, or it was never sent). A flush bumps a generation, so
//! that answers for frames flushed away are ignored. The queue also keeps the smoothed analysis
//! time, since the latency to report is that time per frame in flight.
//!
//! Generic over the frame `F`, the event `E` and the downstream failure `X`; the element
//! instantiates it with its frame, `gst::Event` and `gst::FlowError`.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// The latency reported grows only when the measured one exceeds it by this factor.
const LATENCY_GROWTH: f64 = 1.25;

/// What the queue holds and gives out, in arrival order.
pub enum Item<F, E> {
    /// A video frame, analysed or passed on as it is.
    Frame(F),
    /// A serialized event, which keeps its place among the frames.
    Event(E),
}

/// Names a frame sent for analysis, for its answer: which flush generation it belongs to and
/// its number among the frames sent.
#[derive(Debug, Clone, Copy)]
pub struct Ticket {
    generation: u64,
    number: u64,
}

/// Why a wait ended without what it waited for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped<X> {
    /// A flush began (or the output stopped).
    Flushing,
    /// A push downstream failed with this; nothing more goes out until a flush or a restart.
    Failed(X),
}

struct Entry<F, E> {
    item: Item<F, E>,
    /// The ticket number of a frame still waiting for its answer; `None` once ready.
    awaiting: Option<u64>,
}

struct Queue<F, E, X> {
    entries: VecDeque<Entry<F, E>>,
    flushing: bool,
    /// Frames sent for analysis and not yet counted out by [`InFlight::frame_done`].
    in_flight: usize,
    /// The most frames in flight, as the element last said.
    limit: usize,
    /// The output took an item and is pushing it: a drain waits for this too, so that a
    /// serialized query goes downstream after that item.
    pushing: bool,
    /// Bumped by a flush or a clear, so that answers for frames flushed away are ignored.
    generation: u64,
    /// Frames sent for analysis so far: the next ticket's number.
    sent: u64,
    /// The last failure of a push downstream, returned to upstream.
    failed: Option<X>,
    /// Analysis time per frame (the share of one frame among those in flight), smoothed.
    analysis_time: Option<Duration>,
    /// The latency last reported; zero before the first report.
    reported_latency: Duration,
}

/// The ordered queue of frames in flight and serialized events; see the module's doc.
pub struct InFlight<F, E, X> {
    queue: Mutex<Queue<F, E, X>>,
    /// Signalled on every change a waiter may be waiting for.
    changed: Condvar,
}

impl<F, E, X: Copy> InFlight<F, E, X> {
    /// An empty queue allowing `limit` frames in flight, flushing until [`Self::resume`].
    pub fn new(limit: usize) -> Self {
        InFlight {
            queue: Mutex::new(Queue {
                entries: VecDeque::new(),
                flushing: true,
                in_flight: 0,
                limit,
                pushing: false,
                generation: 0,
                sent: 0,
                failed: None,
                analysis_time: None,
                reported_latency: Duration::ZERO,
            }),
            changed: Condvar::new(),
        }
    }

    /// Locks the queue, recovering it if a thread panicked holding the lock (a panic is
    /// caught at the element's boundary, and the queue stays consistent between statements).
    fn lock(&self) -> MutexGuard<'_, Queue<F, E, X>> {
        crate::sync::lock(&self.queue)
    }

    fn wait<'a>(&self, queue: MutexGuard<'a, Queue<F, E, X>>) -> MutexGuard<'a, Queue<F, E, X>> {
        self.changed.wait(queue).unwrap_or_else(|e| e.into_inner())
    }

    /// Queues an item ready as it is (an event, a frame not analysed); false when flushing.
    pub fn push(&self, item: Item<F, E>) -> bool {
        let mut queue = self.lock();
        if queue.flushing {
            return false;
        }
        queue.entries.push_back(Entry {
            item,
            awaiting: None,
        });
        self.changed.notify_all();
        true
    }

    /// Queues a frame to be analysed and counts it in flight; `None` when flushing. Its
    /// answer goes to [`Self::answer`] with the ticket returned.
    pub fn submit(&self, frame: F) -> Option<Ticket> {
        let mut queue = self.lock();
        if queue.flushing {
            return None;
        }
        let number = queue.sent;
        queue.sent += 1;
        queue.entries.push_back(Entry {
            item: Item::Frame(frame),
            awaiting: Some(number),
        });
        queue.in_flight += 1;
        Some(Ticket {
            generation: queue.generation,
            number,
        })
    }

    /// Hands the frame of `ticket` to `fill` (which stores the answer in it) and makes it
    /// ready; ignored when the frame was flushed away since. `fill` runs under the lock.
    pub fn answer(&self, ticket: Ticket, fill: impl FnOnce(&mut F)) {
        let mut queue = self.lock();
        if queue.generation != ticket.generation {
            return;
        }
        let waiting = queue
            .entries
            .iter_mut()
            .find(|entry| entry.awaiting == Some(ticket.number));
        if let Some(entry) = waiting {
            if let Item::Frame(frame) = &mut entry.item {
                fill(frame);
            }
            entry.awaiting = None;
            self.changed.notify_all();
        }
    }

    /// Waits for the first item to be ready and takes it, marking the output as pushing until
    /// [`Self::pushed`]; `None` once flushing.
    pub fn next(&self) -> Option<Item<F, E>> {
        let mut queue = self.lock();
        loop {
            if queue.flushing {
                return None;
            }
            if queue.entries.front().is_some_and(|e| e.awaiting.is_none()) {
                queue.pushing = true;
                return queue.entries.pop_front().map(|entry| entry.item);
            }
            queue = self.wait(queue);
        }
    }

    /// The item taken by [`Self::next`] went downstream, or failed to with `failure`, which
    /// is kept for upstream. Returns whether the queue is flushing (a failure then is the
    /// flush's doing).
    pub fn pushed(&self, failure: Option<X>) -> bool {
        let mut queue = self.lock();
        queue.pushing = false;
        if failure.is_some() {
            queue.failed = failure;
        }
        self.changed.notify_all();
        queue.flushing
    }

    /// The last failure of a push downstream, if any since the last flush or resume.
    pub fn flow(&self) -> Result<(), X> {
        self.lock().failed.map_or(Ok(()), Err)
    }

    /// Sets the most frames in flight to `limit` and says whether one more may go now.
    pub fn has_room(&self, limit: usize) -> bool {
        let mut queue = self.lock();
        queue.limit = limit;
        queue.in_flight < limit
    }

    /// Sets the most frames in flight to `limit` and waits until one more may go, or until a
    /// flush or a failure downstream.
    pub fn wait_for_room(&self, limit: usize) -> Result<(), Stopped<X>> {
        let mut queue = self.lock();
        queue.limit = limit;
        while queue.in_flight >= limit && !queue.flushing && queue.failed.is_none() {
            queue = self.wait(queue);
        }
        Self::stopped(&queue)
    }

    /// Waits until every item is out and pushed (for a serialized query to go after them), or
    /// until a flush or a failure downstream (which pauses the output: the queue would never
    /// empty).
    pub fn wait_drained(&self) -> Result<(), Stopped<X>> {
        let mut queue = self.lock();
        while (!queue.entries.is_empty() || queue.pushing)
            && !queue.flushing
            && queue.failed.is_none()
        {
            queue = self.wait(queue);
        }
        Self::stopped(&queue)
    }

    fn stopped(queue: &Queue<F, E, X>) -> Result<(), Stopped<X>> {
        match (queue.flushing, queue.failed) {
            (true, _) => Err(Stopped::Flushing),
            (false, Some(failure)) => Err(Stopped::Failed(failure)),
            (false, None) => Ok(()),
        }
    }

    /// Starts flushing: nothing more is queued, and every waiter returns.
    pub fn start_flushing(&self) {
        self.lock().flushing = true;
        self.changed.notify_all();
    }

    /// Ends a flush: the frames go, and the events `keep` says still hold after it; nothing is
    /// in flight, answers to earlier tickets are ignored, and a failure downstream is forgotten.
    pub fn stop_flushing(&self, mut keep: impl FnMut(&E) -> bool) {
        let mut queue = self.lock();
        queue.entries.retain(|entry| match &entry.item {
            Item::Event(event) => keep(event),
            Item::Frame(_) => false,
        });
        queue.in_flight = 0;
        queue.generation += 1;
        queue.failed = None;
        queue.flushing = false;
    }

    /// Ends flushing without touching the items (the output starts): a failure downstream is
    /// forgotten.
    pub fn resume(&self) {
        let mut queue = self.lock();
        queue.flushing = false;
        queue.failed = None;
    }

    /// Drops every item (the stream stops); answers to earlier tickets are ignored.
    pub fn clear(&self) {
        let mut queue = self.lock();
        queue.entries.clear();
        queue.in_flight = 0;
        queue.generation += 1;
    }

    /// Counts a frame out of flight, `waited` after it was submitted (with the queueing behind
    /// earlier frames: what a frame waits), and updates the smoothed analysis time; returns the
    /// new time when the latency to report grew by more than a quarter since the last report.
    pub fn frame_done(&self, waited: Duration) -> Option<Duration> {
        let mut queue = self.lock();
        let in_flight = queue.limit.max(1);
        queue.in_flight = queue.in_flight.saturating_sub(1);
        self.changed.notify_all();
        let took = waited / in_flight as u32;
        let smoothed = match queue.analysis_time {
            Some(t) => t.mul_f64(0.9) + took.mul_f64(0.1),
            None => took,
        };
        queue.analysis_time = Some(smoothed);
        let now = smoothed * in_flight as u32;
        let reported = queue.reported_latency;
        (reported > Duration::ZERO && now.as_secs_f64() > reported.as_secs_f64() * LATENCY_GROWTH)
            .then_some(smoothed)
    }

    /// Sets the most frames in flight to `limit` and returns the latency they add, `limit`
    /// analysis times, remembered as reported.
    pub fn report_latency(&self, limit: usize) -> Duration {
        let mut queue = self.lock();
        queue.limit = limit;
        let latency = queue.analysis_time.unwrap_or_default() * limit as u32;
        queue.reported_latency = latency;
        latency
    }

    /// Starts the analysis time over from `analysis_time` (a warm-up frame's, if any), with no
    /// latency reported yet.
    pub fn reset_latency(&self, analysis_time: Option<Duration>) {
        let mut queue = self.lock();
        queue.analysis_time = analysis_time;
        queue.reported_latency = Duration::ZERO;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
    use std::sync::Arc;
    use std::thread;

    /// A frame: its number, and its answer once there is one.
    type Frame = (u32, Option<&'static str>);
    /// An event: its name, and whether it holds after a flush.
    type Event = (&'static str, bool);
    type Queue = InFlight<Frame, Event, &'static str>;

    /// Long enough for a thread that should wake to have woken; a test waits this long only
    /// to see that something did not happen, or when it fails.
    const WAIT: Duration = Duration::from_millis(200);
    const BOUND: Duration = Duration::from_secs(10);

    fn open(limit: usize) -> Arc<Queue> {
        let queue = Arc::new(Queue::new(limit));
        queue.resume();
        queue
    }

    /// The output in a thread: takes and pushes items until the queue flushes.
    fn output(queue: &Arc<Queue>) -> Receiver<Item<Frame, Event>> {
        let (tx, rx) = mpsc::channel();
        let queue = queue.clone();
        thread::spawn(move || {
            while let Some(item) = queue.next() {
                queue.pushed(None);
                if tx.send(item).is_err() {
                    break;
                }
            }
        });
        rx
    }

    /// Runs `f` in a thread and returns where its result will come.
    fn in_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Receiver<T> {
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx
    }

    /// A serialized query in a thread: waits for the queue to drain.
    fn drain(queue: &Arc<Queue>) -> Receiver<Result<(), Stopped<&'static str>>> {
        let queue = queue.clone();
        in_thread(move || queue.wait_drained())
    }

    /// The output in a thread, taking one item and not pushing it yet.
    fn take(queue: &Arc<Queue>) -> Receiver<Option<Item<Frame, Event>>> {
        let queue = queue.clone();
        in_thread(move || queue.next())
    }

    /// Whether nothing comes on `rx` for a while.
    fn quiet<T>(rx: &Receiver<T>) -> bool {
        matches!(rx.recv_timeout(WAIT), Err(RecvTimeoutError::Timeout))
    }

    /// What comes next on `rx`; fails the test rather than hang.
    fn got<T>(rx: &Receiver<T>) -> T {
        rx.recv_timeout(BOUND).expect("an answer in time")
    }

    fn frame(item: Item<Frame, Event>) -> Frame {
        match item {
            Item::Frame(f) => f,
            Item::Event(e) => panic!("event {e:?} where a frame was expected"),
        }
    }

    fn event(item: Item<Frame, Event>) -> Event {
        match item {
            Item::Event(e) => e,
            Item::Frame(f) => panic!("frame {f:?} where an event was expected"),
        }
    }

    #[test]
    fn items_leave_in_arrival_order_whatever_order_answers_come_in() {
        let queue = open(4);
        let first = queue.submit((1, None)).expect("open");
        assert!(queue.push(Item::Frame((2, Some("skipped")))));
        assert!(queue.push(Item::Event(("tag", false))));
        let fourth = queue.submit((4, None)).expect("open");
        let out = output(&queue);

        queue.answer(fourth, |f| f.1 = Some("four"));
        // The first frame is not answered: nothing may leave, not even the ready ones behind.
        assert!(quiet(&out));
        queue.answer(first, |f| f.1 = Some("one"));

        assert_eq!(frame(got(&out)), (1, Some("one")));
        assert_eq!(frame(got(&out)), (2, Some("skipped")));
        assert_eq!(event(got(&out)), ("tag", false));
        assert_eq!(frame(got(&out)), (4, Some("four")));
        queue.start_flushing();
    }

    #[test]
    fn an_answer_from_before_a_flush_is_ignored() {
        let queue = open(4);
        let old = queue.submit((1, None)).expect("open");
        queue.start_flushing();
        assert!(
            queue.submit((2, None)).is_none(),
            "nothing is queued while flushing"
        );
        queue.stop_flushing(|_| true);
        // The new frame has the old one's place at the front, but not its ticket.
        let new = queue.submit((3, None)).expect("open");
        let out = output(&queue);
        queue.answer(old, |f| f.1 = Some("stale"));
        assert!(quiet(&out));
        queue.answer(new, |f| f.1 = Some("fresh"));
        assert_eq!(frame(got(&out)), (3, Some("fresh")));
        queue.start_flushing();
    }

    #[test]
    fn a_clear_drops_the_items_and_ignores_earlier_answers() {
        let queue = open(1);
        let old = queue.submit((1, None)).expect("open");
        queue.clear();
        assert!(queue.has_room(1), "nothing is in flight after a clear");
        let new = queue.submit((2, None)).expect("open");
        queue.answer(old, |f| f.1 = Some("stale"));
        let out = output(&queue);
        assert!(quiet(&out));
        queue.answer(new, |f| f.1 = Some("fresh"));
        assert_eq!(frame(got(&out)), (2, Some("fresh")));
        queue.start_flushing();
    }

    #[test]
    fn the_limit_holds_a_producer_until_a_frame_is_done() {
        let queue = open(1);
        let first = queue.submit((1, None)).expect("open");
        assert!(!queue.has_room(1));
        let producer = {
            let queue = queue.clone();
            in_thread(move || queue.wait_for_room(1))
        };
        assert!(quiet(&producer));
        // Answered is not done: the frame is in flight until judged.
        queue.answer(first, |f| f.1 = Some("one"));
        assert!(quiet(&producer));
        queue.frame_done(Duration::from_millis(1));
        assert_eq!(got(&producer), Ok(()));
        assert!(queue.has_room(1));
        // A larger limit makes room at once.
        queue.submit((2, None)).expect("open");
        assert!(!queue.has_room(1));
        let producer = {
            let queue = queue.clone();
            in_thread(move || queue.wait_for_room(2))
        };
        assert_eq!(got(&producer), Ok(()));
    }

    #[test]
    fn a_producer_waiting_for_room_stops_at_a_flush_or_a_failure() {
        let queue = open(1);
        queue.submit((1, None)).expect("open");
        let producer = {
            let queue = queue.clone();
            in_thread(move || queue.wait_for_room(1))
        };
        assert!(quiet(&producer));
        queue.start_flushing();
        assert_eq!(got(&producer), Err(Stopped::Flushing));

        queue.resume();
        let producer = {
            let queue = queue.clone();
            in_thread(move || queue.wait_for_room(1))
        };
        assert!(quiet(&producer));
        assert!(!queue.pushed(Some("not-linked")));
        assert_eq!(got(&producer), Err(Stopped::Failed("not-linked")));
        assert_eq!(queue.flow(), Err("not-linked"));
        queue.resume();
        assert_eq!(queue.flow(), Ok(()));
    }

    #[test]
    fn a_flush_keeps_only_the_events_the_element_keeps() {
        let queue = open(2);
        assert!(queue.push(Item::Event(("stream-start", true))));
        assert!(queue.push(Item::Event(("caps", true))));
        assert!(queue.push(Item::Event(("segment", false))));
        queue.submit((1, None)).expect("open");
        assert!(queue.push(Item::Frame((2, Some("skipped")))));
        assert!(queue.push(Item::Event(("tag", true))));
        queue.submit((3, None)).expect("open");
        assert!(queue.push(Item::Event(("eos", false))));
        assert!(!queue.has_room(2));

        queue.start_flushing();
        assert!(
            got(&take(&queue)).is_none(),
            "nothing goes out while flushing"
        );
        assert!(!queue.push(Item::Event(("gap", false))));
        queue.stop_flushing(|&(_, keep)| keep);
        assert!(queue.has_room(2), "nothing is in flight after a flush");

        let out = output(&queue);
        for name in ["stream-start", "caps", "tag"] {
            assert_eq!(event(got(&out)), (name, true));
        }
        assert!(quiet(&out));
        queue.start_flushing();
    }

    #[test]
    fn a_drain_waits_for_the_queue_to_empty_and_the_last_push() {
        let queue = open(1);
        // An empty queue is drained.
        assert_eq!(got(&drain(&queue)), Ok(()));
        assert!(queue.push(Item::Event(("tag", false))));
        let query = drain(&queue);
        assert!(quiet(&query));
        // Taken but not pushed yet: the query must still wait.
        assert!(got(&take(&queue)).is_some());
        assert!(quiet(&query));
        queue.pushed(None);
        assert_eq!(got(&query), Ok(()));

        // A failed push pauses the output: the drain gives up instead of waiting forever.
        assert!(queue.push(Item::Event(("tag", false))));
        assert!(queue.push(Item::Event(("custom", false))));
        let query = drain(&queue);
        assert!(got(&take(&queue)).is_some());
        queue.pushed(Some("error"));
        assert_eq!(got(&query), Err(Stopped::Failed("error")));

        // And a flush ends it too.
        queue.stop_flushing(|_| true);
        let query = drain(&queue);
        assert!(quiet(&query));
        queue.start_flushing();
        assert_eq!(got(&query), Err(Stopped::Flushing));
    }

    #[test]
    fn latency_is_the_smoothed_analysis_time_per_frame_in_flight() {
        let ms = Duration::from_millis;
        let queue = open(2);
        queue.reset_latency(Some(ms(10)));
        // Nothing reported yet: no growth to tell.
        assert_eq!(queue.frame_done(ms(100)), None);
        queue.reset_latency(Some(ms(10)));
        assert_eq!(queue.report_latency(2), ms(20));
        // 60 ms waited with 2 in flight: 30 ms each; smoothed 12 ms, 24 ms in all, not a
        // quarter above the 20 reported.
        assert_eq!(queue.frame_done(ms(60)), None);
        // Smoothed 13.8 ms: 27.6 ms in all, more than a quarter above.
        let grown = queue.frame_done(ms(60)).expect("grown");
        assert!(grown.abs_diff(Duration::from_micros(13_800)) < Duration::from_micros(1));
        assert!(queue.report_latency(1).abs_diff(grown) < Duration::from_micros(1));
        queue.reset_latency(None);
        assert_eq!(queue.report_latency(2), Duration::ZERO);
    }
}
