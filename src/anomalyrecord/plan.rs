//! Defect clips without GStreamer: the ring of encoded pictures (whole GOPs, always starting on a
//! key frame) and the planner that turns per-frame verdicts into clips (when a clip opens, which
//! pictures it takes, when it closes, which events merge), plus the clip file names and the
//! index line. The `anomalyrecord` element feeds it one encoded picture at a time and carries out
//! the [`Action`]s it returns.
//!
//! Times are running times in nanoseconds. A picture's *time* is its presentation time (its PTS,
//! else its DTS, else the latest time seen); its *decode time* is its DTS, else its time. Pictures
//! arrive in decode order.
//!
//! Rules (docs/defect-clips.md says the same for users):
//! - The ring keeps whole GOPs: a key frame starts a new GOP, other pictures join the newest one,
//!   and pictures before the first key frame are dropped (they cannot be decoded). The oldest GOP
//!   goes as soon as the next one starts at or before `latest time - pre`, so the ring holds
//!   `pre` plus at most one GOP. If the ring grows past `max_ring_bytes` the oldest GOPs go, even
//!   the only one (then the ring is empty until the next key frame).
//! - An analysed anomalous picture while no clip is open opens one with the whole ring: its
//!   first picture is the latest key frame at or before `event - pre` when the ring reaches back
//!   that far, else the oldest key frame it holds. With an empty ring the event waits for the
//!   next key frame.
//! - Every later picture goes into the open clip. Each analysed anomalous picture moves the
//!   clip's end to `its time + its duration + post`; the first picture whose decode time reaches
//!   that end closes the clip (it is not part of it). So every picture shown before the end is
//!   in the clip, and a new anomaly before the end merges into the same clip.
//! - Stale verdicts (frames `logsad` did not analyse) and pictures without a verdict neither
//!   open, extend nor count; they are recorded like any other picture of an open clip.
//! - [`Planner::finish`] (EOS, flush, new segment) closes the open clip with what it has and
//!   empties the ring.

use std::collections::VecDeque;

use serde::Serialize;

use crate::utc::{format_utc, format_utc_basic};

/// What `logsad` said about one picture.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// No anomaly meta on the buffer.
    Unknown,
    /// The meta is stale: the frame was not analysed (it carries an older frame's result).
    Stale,
    /// The frame was analysed.
    Analysed {
        /// `calibrated >= threshold`.
        anomalous: bool,
        /// Fused raw score.
        score: f64,
        /// Calibrated score (0..1).
        calibrated: f64,
    },
}

impl Verdict {
    fn anomalous(&self) -> bool {
        matches!(
            self,
            Verdict::Analysed {
                anomalous: true,
                ..
            }
        )
    }
}

/// One encoded picture (an access unit) with its times and verdict; `payload` is what the caller
/// stores (a `gst::Buffer` in the element).
#[derive(Debug, Clone)]
pub struct Unit<T> {
    pub payload: T,
    /// Presentation running time, ns.
    pub pts: Option<u64>,
    /// Decode running time, ns.
    pub dts: Option<u64>,
    /// Duration, ns.
    pub duration: Option<u64>,
    /// Decodable on its own (not a delta unit).
    pub keyframe: bool,
    /// Size in bytes, for the ring's byte limit.
    pub size: usize,
    pub verdict: Verdict,
}

/// The planner's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Video kept before the first anomalous picture, ns (at least; up to one GOP more).
    pub pre: u64,
    /// Video kept after the last anomalous picture ends, ns.
    pub post: u64,
    /// Most bytes the ring may hold.
    pub max_ring_bytes: usize,
}

/// A finished clip: what the bus message and the index line report. Times in running time, ns.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipSummary {
    /// Earliest presentation time in the clip.
    pub start: u64,
    /// Latest presentation time plus duration in the clip.
    pub end: u64,
    /// Time of the first anomalous picture.
    pub event_start: u64,
    /// End (time + duration) of the last anomalous picture.
    pub event_end: u64,
    /// Highest raw score among the analysed anomalous pictures.
    pub peak_score: f64,
    /// Highest calibrated score among the analysed anomalous pictures.
    pub peak_calibrated: f64,
    /// Analysed anomalous pictures (from the first anomalous one on; the pre-roll is not counted).
    pub anomalous_frames: u64,
    /// Pictures in the clip.
    pub frames: u64,
    /// Runs of anomalous pictures merged into the clip (1 for a single event).
    pub events: u32,
}

/// What the caller must do after a picture (in this order).
#[derive(Debug, Clone, PartialEq)]
pub enum Action<T> {
    /// Start a clip with these pictures (the first is a key frame); `start` is the clip's start
    /// time, for its file name.
    Open { units: Vec<T>, start: u64 },
    /// Add this picture to the open clip.
    Append(T),
    /// Finish the open clip.
    Close(ClipSummary),
    /// An anomalous event ended before any key frame arrived: nothing could be recorded.
    Lost { event_start: u64, event_end: u64 },
    /// The ring went over its byte limit with a single GOP and was emptied: clips of events in
    /// the next moments start at the next key frame.
    RingOverflow { bytes: usize },
}

struct Gop<T> {
    start: u64,
    units: Vec<Unit<T>>,
    bytes: usize,
}

/// Statistics of the clip being written (or of an event waiting for a key frame).
#[derive(Debug, Clone)]
struct Clip {
    start: u64,
    end: u64,
    event_start: u64,
    event_end: u64,
    close_at: u64,
    peak_score: f64,
    peak_calibrated: f64,
    anomalous_frames: u64,
    frames: u64,
    events: u32,
    /// The latest analysed picture was anomalous.
    in_event: bool,
}

impl Clip {
    fn summary(&self) -> ClipSummary {
        ClipSummary {
            start: self.start,
            end: self.end,
            event_start: self.event_start,
            event_end: self.event_end,
            peak_score: self.peak_score,
            peak_calibrated: self.peak_calibrated,
            anomalous_frames: self.anomalous_frames,
            frames: self.frames,
            events: self.events,
        }
    }

    /// Takes the verdict of a picture at `time` lasting `duration`.
    fn observe(&mut self, verdict: Verdict, time: u64, duration: u64, post: u64) {
        match verdict {
            Verdict::Analysed {
                anomalous: true,
                score,
                calibrated,
            } => {
                if !self.in_event {
                    self.events += 1;
                }
                self.in_event = true;
                self.anomalous_frames += 1;
                self.peak_score = self.peak_score.max(score);
                self.peak_calibrated = self.peak_calibrated.max(calibrated);
                self.event_end = self.event_end.max(time + duration);
                self.close_at = self.close_at.max(time + duration + post);
            }
            Verdict::Analysed {
                anomalous: false, ..
            } => self.in_event = false,
            Verdict::Stale | Verdict::Unknown => {}
        }
    }

    fn cover(&mut self, time: u64, duration: u64) {
        self.start = self.start.min(time);
        self.end = self.end.max(time + duration);
        self.frames += 1;
    }
}

enum ClipState {
    Idle,
    /// An event began while the ring was empty: the clip opens at the next key frame.
    Waiting(Clip),
    Open(Clip),
}

/// The ring of GOPs and the clip being planned. See the module documentation for the rules.
pub struct Planner<T> {
    config: Config,
    ring: VecDeque<Gop<T>>,
    ring_bytes: usize,
    clip: ClipState,
    /// Latest picture time seen.
    latest: Option<u64>,
}

impl<T: Clone> Planner<T> {
    pub fn new(config: Config) -> Self {
        Planner {
            config,
            ring: VecDeque::new(),
            ring_bytes: 0,
            clip: ClipState::Idle,
            latest: None,
        }
    }

    /// Whether a clip is open (being written).
    #[cfg(test)]
    pub fn is_open(&self) -> bool {
        matches!(self.clip, ClipState::Open(_))
    }

    /// Bytes held by the ring.
    #[cfg(test)]
    pub fn ring_bytes(&self) -> usize {
        self.ring_bytes
    }

    /// Pictures held by the ring.
    #[cfg(test)]
    pub fn ring_len(&self) -> usize {
        self.ring.iter().map(|g| g.units.len()).sum()
    }

    /// Takes the next picture (in decode order); returns what to do.
    pub fn push(&mut self, unit: Unit<T>) -> Vec<Action<T>> {
        let time = unit.pts.or(unit.dts).or(self.latest).unwrap_or(0);
        let decode_time = unit.dts.unwrap_or(time);
        let duration = unit.duration.unwrap_or(0);
        self.latest = Some(self.latest.map_or(time, |l| l.max(time)));
        let mut actions = Vec::new();

        // The clip ends before the first picture decoded at or after its end.
        let ends = match &self.clip {
            ClipState::Open(c) | ClipState::Waiting(c) => decode_time >= c.close_at,
            ClipState::Idle => false,
        };
        if ends {
            match std::mem::replace(&mut self.clip, ClipState::Idle) {
                ClipState::Open(c) => actions.push(Action::Close(c.summary())),
                ClipState::Waiting(c) => actions.push(Action::Lost {
                    event_start: c.event_start,
                    event_end: c.event_end,
                }),
                ClipState::Idle => {}
            }
        }

        let anomalous = unit.verdict.anomalous();
        let verdict = unit.verdict;
        let keyframe = unit.keyframe;
        let payload = unit.payload.clone();
        self.add_to_ring(unit, time, &mut actions);

        match &mut self.clip {
            ClipState::Open(c) => {
                c.cover(time, duration);
                c.observe(verdict, time, duration, self.config.post);
                actions.push(Action::Append(payload));
            }
            ClipState::Waiting(c) => {
                c.observe(verdict, time, duration, self.config.post);
                if keyframe {
                    let mut c = c.clone();
                    c.start = time;
                    c.end = time;
                    c.frames = 0;
                    c.cover(time, duration);
                    actions.push(Action::Open {
                        units: vec![payload],
                        start: time,
                    });
                    self.clip = ClipState::Open(c);
                }
            }
            ClipState::Idle if anomalous => {
                let mut c = Clip {
                    start: time,
                    end: time,
                    event_start: time,
                    event_end: time,
                    close_at: 0,
                    peak_score: f64::NEG_INFINITY,
                    peak_calibrated: f64::NEG_INFINITY,
                    anomalous_frames: 0,
                    frames: 0,
                    events: 0,
                    in_event: false,
                };
                c.observe(verdict, time, duration, self.config.post);
                if self.ring.is_empty() {
                    self.clip = ClipState::Waiting(c);
                } else {
                    let units: Vec<&Unit<T>> =
                        self.ring.iter().flat_map(|g| g.units.iter()).collect();
                    for u in &units {
                        let t = u.pts.or(u.dts).unwrap_or(time);
                        c.cover(t, u.duration.unwrap_or(0));
                    }
                    actions.push(Action::Open {
                        units: units.iter().map(|u| u.payload.clone()).collect(),
                        start: c.start,
                    });
                    self.clip = ClipState::Open(c);
                }
            }
            ClipState::Idle => {}
        }
        actions
    }

    fn add_to_ring(&mut self, unit: Unit<T>, time: u64, actions: &mut Vec<Action<T>>) {
        let size = unit.size;
        if unit.keyframe {
            self.ring.push_back(Gop {
                start: time,
                units: vec![unit],
                bytes: size,
            });
        } else if let Some(gop) = self.ring.back_mut() {
            gop.units.push(unit);
            gop.bytes += size;
        } else {
            // Before the first key frame: not decodable, not kept.
            return;
        }
        self.ring_bytes += size;

        let horizon = self.latest.unwrap_or(0).saturating_sub(self.config.pre);
        while self.ring.len() >= 2 && self.ring[1].start <= horizon {
            self.pop_front();
        }
        while self.ring_bytes > self.config.max_ring_bytes && self.ring.len() >= 2 {
            self.pop_front();
        }
        if self.ring_bytes > self.config.max_ring_bytes {
            actions.push(Action::RingOverflow {
                bytes: self.ring_bytes,
            });
            self.ring.clear();
            self.ring_bytes = 0;
        }
    }

    fn pop_front(&mut self) {
        if let Some(gop) = self.ring.pop_front() {
            self.ring_bytes -= gop.bytes;
        }
    }

    /// Ends the stream (EOS, flush, new segment): closes the open clip with what it has (or
    /// reports an event still waiting for a key frame as lost) and empties the ring.
    pub fn finish(&mut self) -> Option<Action<T>> {
        self.ring.clear();
        self.ring_bytes = 0;
        self.latest = None;
        match std::mem::replace(&mut self.clip, ClipState::Idle) {
            ClipState::Open(c) => Some(Action::Close(c.summary())),
            ClipState::Waiting(c) => Some(Action::Lost {
                event_start: c.event_start,
                event_end: c.event_end,
            }),
            ClipState::Idle => None,
        }
    }
}

/// The file name of a clip of stream `stream` starting at `unix_ns`, with extension `ext`:
/// `STREAM-YYYYMMDDTHHMMSS.mmmZ.EXT`. Characters other than ASCII letters, digits, `-`, `_`
/// and `.` in the stream name become `_`, so that a name never leaves the clip folder.
pub fn clip_file_name(stream: &str, unix_ns: i64, ext: &str) -> String {
    let safe = crate::fsname::safe_file_name_part(stream);
    let safe = if safe.is_empty() || safe.chars().all(|c| c == '.') {
        "stream".to_string()
    } else {
        safe
    };
    format!("{safe}-{}.{ext}", format_utc_basic(unix_ns))
}

/// One line of the clip index (`clips.jsonl`); the `logsad-clip` bus message carries the same
/// fields with `-` for `_`.
#[derive(Debug, Clone, Serialize)]
pub struct ClipRecord {
    /// The clip file.
    pub path: String,
    /// The element's `stream-name`.
    pub stream: String,
    /// Running time of the clip's first and last picture (end: plus its duration), ns.
    pub start: u64,
    pub end: u64,
    /// The same as UTC wall-clock times, `YYYY-MM-DDTHH:MM:SS.mmmZ`.
    pub start_wall: String,
    pub end_wall: String,
    /// Running time of the first anomalous picture and of the end of the last one, ns.
    pub event_start: u64,
    pub event_end: u64,
    /// Peak raw and calibrated scores of the anomalous pictures.
    pub peak_score: f64,
    pub peak_calibrated: f64,
    pub anomalous_frames: u64,
    pub frames: u64,
    /// Events merged into the clip.
    pub events: u32,
}

impl ClipRecord {
    /// The record of `summary` written to `path`, with wall-clock times from `wall`, which maps
    /// a running time (ns) to Unix time (ns).
    pub fn new(
        path: String,
        stream: String,
        summary: &ClipSummary,
        wall: impl Fn(u64) -> i64,
    ) -> Self {
        ClipRecord {
            path,
            stream,
            start: summary.start,
            end: summary.end,
            start_wall: format_utc(wall(summary.start)),
            end_wall: format_utc(wall(summary.end)),
            event_start: summary.event_start,
            event_end: summary.event_end,
            peak_score: summary.peak_score,
            peak_calibrated: summary.peak_calibrated,
            anomalous_frames: summary.anomalous_frames,
            frames: summary.frames,
            events: summary.events,
        }
    }

    /// The index line (JSON, no newline).
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).expect("a clip record always serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const S: u64 = 1_000 * MS;

    /// 10 fps, a key frame every `gop` pictures, anomalous at the listed indices; no B-frames.
    fn unit(i: u64, gop: u64, anomalous: &[u64]) -> Unit<u64> {
        Unit {
            payload: i,
            pts: Some(i * 100 * MS),
            dts: Some(i * 100 * MS),
            duration: Some(100 * MS),
            keyframe: i % gop == 0,
            size: 1000,
            verdict: Verdict::Analysed {
                anomalous: anomalous.contains(&i),
                score: i as f64,
                calibrated: i as f64 / 100.0,
            },
        }
    }

    fn config(pre: u64, post: u64) -> Config {
        Config {
            pre,
            post,
            max_ring_bytes: usize::MAX,
        }
    }

    /// A clip seen by the tests: its pictures and, once closed, its summary.
    type Clips = Vec<(Vec<u64>, Option<ClipSummary>)>;

    /// The clips and the other actions from pushing `units`, then finish().
    fn run(
        planner: &mut Planner<u64>,
        units: impl IntoIterator<Item = Unit<u64>>,
    ) -> (Clips, Vec<Action<u64>>) {
        let mut clips: Clips = Vec::new();
        let mut other = Vec::new();
        let mut take = |a: Action<u64>, clips: &mut Clips| match a {
            Action::Open { units, .. } => clips.push((units, None)),
            Action::Append(u) => clips.last_mut().unwrap().0.push(u),
            Action::Close(s) => {
                let last = clips.last_mut().unwrap();
                assert!(last.1.is_none(), "closed twice");
                last.1 = Some(s);
            }
            a => other.push(a),
        };
        for u in units {
            for a in planner.push(u) {
                take(a, &mut clips);
            }
        }
        if let Some(a) = planner.finish() {
            take(a, &mut clips);
        }
        (clips, other)
    }

    #[test]
    fn one_event_takes_pre_roll_from_a_key_frame_and_post_time() {
        // GOP 5 (0.5 s), pre 1 s, post 1 s; anomalous 20..=24 (2.0-2.5 s).
        let mut p = Planner::new(config(S, S));
        let (clips, other) = run(&mut p, (0..60).map(|i| unit(i, 5, &[20, 21, 22, 23, 24])));
        assert!(other.is_empty());
        assert_eq!(clips.len(), 1);
        let (pics, s) = &clips[0];
        // The key frame at or before 2.0 - 1.0 = 1.0 s is picture 10; the clip ends before the
        // first picture decoded at or after 2.5 + 1.0 = 3.5 s, picture 35.
        assert_eq!(pics, &(10..35).collect::<Vec<_>>());
        let s = s.clone().unwrap();
        assert_eq!((s.start, s.end), (S, 3500 * MS));
        assert_eq!((s.event_start, s.event_end), (2 * S, 2500 * MS));
        assert_eq!((s.anomalous_frames, s.frames, s.events), (5, 25, 1));
        assert_eq!((s.peak_score, s.peak_calibrated), (24.0, 0.24));
    }

    #[test]
    fn pre_roll_is_aligned_to_the_key_frame_before() {
        // GOP 7: key frames at 0, 7, 14, 21; event at 2.0 s, pre 1 s: 1.0 s is inside the GOP of
        // picture 7 (0.7 s), so the clip starts there: 1.3 s of pre-roll, less than pre + GOP.
        let mut p = Planner::new(config(S, 500 * MS));
        let (clips, _) = run(&mut p, (0..40).map(|i| unit(i, 7, &[20])));
        assert_eq!(clips.len(), 1);
        assert_eq!(clips[0].0.first(), Some(&7));
        // 2.1 + 0.5 = 2.6 s: pictures up to 25.
        assert_eq!(clips[0].0.last(), Some(&25));
        // The ring never holds more than pre + one GOP (+ the picture being added).
        let mut p = Planner::new(config(S, 500 * MS));
        for i in 0..200 {
            p.push(unit(i, 7, &[]));
            assert!(p.ring_len() <= 10 + 7 + 1, "{} at {i}", p.ring_len());
        }
    }

    #[test]
    fn pre_roll_is_limited_by_the_ring() {
        // Event at 0.3 s with 1 s pre: the ring reaches back only to picture 0.
        let mut p = Planner::new(config(S, S));
        let (clips, _) = run(&mut p, (0..30).map(|i| unit(i, 5, &[3])));
        assert_eq!(clips[0].0, (0..14).collect::<Vec<_>>());
        let s = clips[0].1.clone().unwrap();
        assert_eq!((s.start, s.end), (0, 1400 * MS));
    }

    #[test]
    fn overlapping_events_merge_and_later_ones_make_new_clips() {
        // Events at 2.0 s and 2.8 s (2.1 + 1.0 = 3.1 > 2.8: merged), then at 6.0 s (new clip).
        let mut p = Planner::new(config(S, S));
        let (clips, _) = run(&mut p, (0..90).map(|i| unit(i, 5, &[20, 28, 29, 60])));
        assert_eq!(clips.len(), 2);
        let a = clips[0].1.clone().unwrap();
        assert_eq!((a.events, a.anomalous_frames), (2, 3));
        assert_eq!((a.event_start, a.event_end), (2 * S, 3 * S));
        assert_eq!(clips[0].0, (10..40).collect::<Vec<_>>());
        let b = clips[1].1.clone().unwrap();
        assert_eq!((b.events, b.event_start), (1, 6 * S));
        // 6.0 - 1.0 = 5.0 s is a key frame: picture 50; ends before 6.1 + 1.0 = 7.1 s.
        assert_eq!(clips[1].0, (50..71).collect::<Vec<_>>());

        // An event right after the post time is a separate clip whose pre-roll overlaps the
        // previous clip: anomalous at 2.0 s, the clip ends at 3.1 s; anomalous again at 3.1 s.
        let mut p = Planner::new(config(S, S));
        let (clips, _) = run(&mut p, (0..60).map(|i| unit(i, 5, &[20, 31])));
        assert_eq!(clips.len(), 2);
        assert_eq!(clips[0].0.last(), Some(&30));
        assert_eq!(clips[1].0.first(), Some(&20));
    }

    #[test]
    fn eos_closes_the_open_clip() {
        let mut p = Planner::new(config(S, 2 * S));
        let (clips, _) = run(&mut p, (0..27).map(|i| unit(i, 5, &[25])));
        assert_eq!(clips.len(), 1);
        assert_eq!(clips[0].0, (15..27).collect::<Vec<_>>());
        let s = clips[0].1.clone().unwrap();
        assert_eq!((s.start, s.end), (1500 * MS, 2700 * MS));
        assert!(!p.is_open());
        assert_eq!(p.ring_len(), 0);
        // After finish() the planner starts afresh: a new stream with no key frame yet.
        assert!(p.push(unit(1, 5, &[])).is_empty());
        assert_eq!(p.ring_len(), 0);
    }

    #[test]
    fn stale_and_unknown_verdicts_neither_open_nor_extend() {
        let mut p = Planner::new(config(S, S));
        let units = (0..60).map(|i| {
            let mut u = unit(i, 5, &[20]);
            // Frames 21..=29 are stale copies of frame 20's anomalous result; 40 has no meta.
            if (21..30).contains(&i) {
                u.verdict = Verdict::Stale;
            }
            if i == 40 {
                u.verdict = Verdict::Unknown;
            }
            u
        });
        let (clips, _) = run(&mut p, units);
        assert_eq!(clips.len(), 1);
        let s = clips[0].1.clone().unwrap();
        // 2.1 + 1.0: the stale frames did not extend it.
        assert_eq!(s.end, 3100 * MS);
        assert_eq!(s.anomalous_frames, 1);
    }

    #[test]
    fn b_frames_close_on_decode_time() {
        // Decode order I0 P3 B1 B2 P6 B4 B5 ..., 10 fps; DTS = decode index * 100 ms - 200 ms
        // (as encoders shift it), PTS = display index * 100 ms. Anomalous picture: display 10.
        let order = |n: u64| -> Vec<u64> {
            let mut v = vec![0];
            let mut base = 0;
            while base + 3 < n {
                v.extend([base + 3, base + 1, base + 2]);
                base += 3;
            }
            v
        };
        let units: Vec<Unit<u64>> = order(40)
            .into_iter()
            .enumerate()
            .map(|(d, i)| Unit {
                payload: i,
                pts: Some(i * 100 * MS + 200 * MS),
                dts: Some(d as u64 * 100 * MS),
                duration: Some(100 * MS),
                keyframe: i % 12 == 0,
                size: 10,
                verdict: Verdict::Analysed {
                    anomalous: i == 10,
                    score: 1.0,
                    calibrated: 1.0,
                },
            })
            .collect();
        let mut p = Planner::new(config(500 * MS, 500 * MS));
        let (clips, _) = run(&mut p, units);
        assert_eq!(clips.len(), 1);
        let mut shown = clips[0].0.clone();
        // Event 1.2-1.3 s (PTS), end 1.8 s: every picture displayed before 1.8 s (index < 16)
        // from the key frame 0 (0.2 s <= 1.2 - 0.5) is in the clip.
        shown.sort();
        assert_eq!(shown[0], 0);
        assert!((0..16).all(|i| shown.contains(&i)), "{shown:?}");
        assert!(shown.iter().all(|&i| i < 19), "{shown:?}");
    }

    #[test]
    fn pictures_before_the_first_key_frame_are_dropped_and_events_wait_for_one() {
        let mut p = Planner::new(config(S, 500 * MS));
        // Key frames at 3, 8, ...: anomalous at 1 (ring empty): the clip opens at 3.
        let units = (0..20).map(|i| {
            let mut u = unit(i, 5, &[1]);
            u.keyframe = i % 5 == 3;
            u
        });
        let (clips, other) = run(&mut p, units);
        assert!(other.is_empty(), "{other:?}");
        assert_eq!(clips.len(), 1);
        // Ends before 0.2 + 0.5 = 0.7 s.
        assert_eq!(clips[0].0, vec![3, 4, 5, 6]);
        let s = clips[0].1.clone().unwrap();
        assert_eq!((s.start, s.event_start, s.frames), (300 * MS, 100 * MS, 4));

        // No key frame before the post time ends: the event is lost, reported.
        let mut p = Planner::new(config(S, 200 * MS));
        let units = (0..20).map(|i| {
            let mut u = unit(i, 5, &[1]);
            u.keyframe = i == 10;
            u
        });
        let (clips, other) = run(&mut p, units);
        assert!(clips.is_empty());
        assert_eq!(
            other,
            vec![Action::Lost {
                event_start: 100 * MS,
                event_end: 200 * MS
            }]
        );
    }

    #[test]
    fn the_byte_limit_drops_whole_gops() {
        // 1000 bytes per picture, limit 12 000: with pre 10 s the time rule keeps everything,
        // the byte limit keeps two GOPs of 5 (10 000 bytes) + up to 2 pictures.
        let mut p = Planner::new(Config {
            pre: 10 * S,
            post: S,
            max_ring_bytes: 12_000,
        });
        for i in 0..40 {
            assert!(p.push(unit(i, 5, &[])).is_empty());
            assert!(p.ring_bytes() <= 12_000);
        }
        let actions = p.push(unit(40, 5, &[40]));
        match &actions[0] {
            Action::Open { units, start } => {
                assert_eq!(units, &(30..41).collect::<Vec<_>>());
                assert_eq!(*start, 3 * S);
            }
            a => panic!("{a:?}"),
        }
        // One GOP alone over the limit: the ring is emptied and it says so.
        let mut p = Planner::new(Config {
            pre: S,
            post: S,
            max_ring_bytes: 3_500,
        });
        let mut overflows = 0;
        for i in 0..5 {
            for a in p.push(unit(i, 10, &[])) {
                assert_eq!(a, Action::RingOverflow { bytes: 4000 });
                overflows += 1;
            }
        }
        assert_eq!((overflows, p.ring_len()), (1, 0));
    }

    #[test]
    fn clip_file_names() {
        // 2026-11-29 23:05:12.345 UTC = 1 795 993 512.345 s.
        let t = 1_795_993_512_345_678_901;
        assert_eq!(
            clip_file_name("cam1", t, "mp4"),
            "cam1-20261129T230512.345Z.mp4"
        );
        assert_eq!(
            clip_file_name("../line 3/cam", t, "mkv"),
            ".._line_3_cam-20261129T230512.345Z.mkv"
        );
        assert_eq!(
            clip_file_name("..", 0, "mp4"),
            "stream-19700101T000000.000Z.mp4"
        );
    }

    #[test]
    fn index_line_has_every_field() {
        let s = ClipSummary {
            start: S,
            end: 3500 * MS,
            event_start: 2 * S,
            event_end: 2500 * MS,
            peak_score: 0.5,
            peak_calibrated: 0.99,
            anomalous_frames: 5,
            frames: 25,
            events: 1,
        };
        let r = ClipRecord::new("clips/a.mp4".into(), "cam1".into(), &s, |rt| {
            1_795_993_512_000_000_000 + rt as i64
        });
        let v: serde_json::Value = serde_json::from_str(&r.to_json_line()).unwrap();
        assert_eq!(v["path"], "clips/a.mp4");
        assert_eq!(v["stream"], "cam1");
        assert_eq!(v["start"], S);
        assert_eq!(v["end"], 3500 * MS);
        assert_eq!(v["start_wall"], "2026-11-29T23:05:13.000Z");
        assert_eq!(v["end_wall"], "2026-11-29T23:05:15.500Z");
        assert_eq!(v["event_start"], 2 * S);
        assert_eq!(v["peak_calibrated"], 0.99);
        assert_eq!(v["anomalous_frames"], 5);
        assert_eq!(v["events"], 1);
        assert_eq!(v.as_object().unwrap().len(), 13);
    }
}
