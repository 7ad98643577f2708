//! The GStreamer-free logic of `anomalypublish`'s MQTT output: the bounded backlog of lines not
//! yet confirmed by the broker, the topic template and the broker URL.
//!
//! Nothing here touches the network; [`super::mqtt`] drives a [`Backlog`] from its publisher
//! thread.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

/// One line in the backlog.
#[derive(Debug)]
struct Entry {
    /// Position of the line in the stream of pushed lines, from 0.
    seq: u64,
    line: Arc<str>,
    /// Confirmed (QoS 1: PUBACK received; QoS 0: written to the socket) but not yet removed
    /// because an older line is still waiting.
    done: bool,
}

/// The lines not yet confirmed by the broker, oldest first, at most `capacity` of them.
///
/// A line goes through three stages: *unsent* (pushed, not handed to the client yet), *in
/// flight* (handed to the client, [`Backlog::next_to_send`]) and *confirmed*
/// ([`Backlog::confirm`]), when it leaves the backlog. A lost connection puts every line in
/// flight back to unsent ([`Backlog::rewind`]), so the next connection sends them again, in
/// order. When the backlog is full, [`Backlog::push`] drops the oldest line, whatever its stage,
/// and counts it.
#[derive(Debug)]
pub struct Backlog {
    capacity: usize,
    entries: VecDeque<Entry>,
    /// The first `sent` entries are in flight or confirmed; the others are unsent.
    sent: usize,
    next_seq: u64,
    dropped: u64,
}

impl Backlog {
    /// An empty backlog keeping at most `capacity` lines (at least 1).
    pub fn new(capacity: usize) -> Backlog {
        Backlog {
            capacity: capacity.max(1),
            entries: VecDeque::new(),
            sent: 0,
            next_seq: 0,
            dropped: 0,
        }
    }

    /// Appends `line`; when the backlog is full, first drops its oldest line. Returns the
    /// sequence number given to `line` and whether a line was dropped.
    pub fn push(&mut self, line: Arc<str>) -> (u64, bool) {
        let mut dropped = false;
        if self.entries.len() >= self.capacity {
            self.entries.pop_front();
            self.sent = self.sent.saturating_sub(1);
            self.dropped += 1;
            dropped = true;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.entries.push_back(Entry {
            seq,
            line,
            done: false,
        });
        (seq, dropped)
    }

    /// The oldest unsent line with its sequence number, now marked in flight; `None` when every
    /// line is in flight or confirmed.
    pub fn next_to_send(&mut self) -> Option<(u64, Arc<str>)> {
        while let Some(entry) = self.entries.get(self.sent) {
            self.sent += 1;
            if !entry.done {
                return Some((entry.seq, entry.line.clone()));
            }
        }
        None
    }

    /// Marks the line `seq` confirmed and removes the confirmed lines at the front. A `seq`
    /// that is not in flight (dropped meanwhile, or unknown) is ignored; returns whether it was.
    pub fn confirm(&mut self, seq: u64) -> bool {
        let Some(index) = self.index_of(seq) else {
            return false;
        };
        if index >= self.sent || self.entries[index].done {
            return false;
        }
        self.entries[index].done = true;
        while self.entries.front().is_some_and(|e| e.done) {
            self.entries.pop_front();
            self.sent -= 1;
        }
        true
    }

    /// Puts every line in flight back to unsent (the connection was lost before they were
    /// confirmed); they are sent again, oldest first. Confirmed lines stay confirmed.
    pub fn rewind(&mut self) {
        self.sent = 0;
    }

    /// Lines not confirmed yet (unsent and in flight).
    pub fn len(&self) -> usize {
        self.entries.iter().filter(|e| !e.done).count()
    }

    /// Whether every pushed line was confirmed or dropped.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Lines dropped to make room since the backlog was created.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Clears the backlog, counting the lines not confirmed yet as dropped (they are lost:
    /// shutdown). Returns how many there were.
    pub fn discard_all(&mut self) -> usize {
        let left = self.len();
        self.entries.clear();
        self.sent = 0;
        self.dropped += left as u64;
        left
    }

    fn index_of(&self, seq: u64) -> Option<usize> {
        // Sequence numbers increase from front to back.
        let first = self.entries.front()?.seq;
        let index = usize::try_from(seq.checked_sub(first)?).ok()?;
        // Entries are contiguous: only the front is ever removed.
        (self.entries.get(index)?.seq == seq).then_some(index)
    }
}

/// Why a topic template was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicError {
    /// The expanded topic is empty.
    Empty,
    /// A `{...}` other than `{stream}`, or a `{` without its `}`.
    UnknownPlaceholder(String),
    /// The expanded topic holds `+`, `#` (subscription wildcards) or a NUL character.
    Forbidden { topic: String, character: char },
    /// Longer than MQTT's 65535 bytes.
    TooLong(usize),
}

impl fmt::Display for TopicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TopicError::Empty => write!(f, "the topic is empty"),
            TopicError::UnknownPlaceholder(p) => {
                write!(f, "unknown placeholder '{p}' (only {{stream}} is known)")
            }
            TopicError::Forbidden { topic, character } => write!(
                f,
                "topic '{topic}' contains {character:?}, which MQTT forbids in a topic to \
                 publish to"
            ),
            TopicError::TooLong(n) => write!(f, "the topic is {n} bytes long, over MQTT's 65535"),
        }
    }
}

/// Expands the topic template `template`: `{stream}` becomes `stream`. Any other `{...}` is
/// refused (a typo would otherwise publish to a literal topic), as is a topic MQTT does not
/// allow to publish to (empty, `+`, `#`, NUL, over 65535 bytes).
pub fn expand_topic(template: &str, stream: &str) -> Result<String, TopicError> {
    const PLACEHOLDER: &str = "{stream}";
    let mut topic = String::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        topic.push_str(&rest[..start]);
        let tail = &rest[start..];
        if let Some(after) = tail.strip_prefix(PLACEHOLDER) {
            topic.push_str(stream);
            rest = after;
        } else {
            let end = tail.find('}').map_or(tail.len(), |i| i + 1);
            return Err(TopicError::UnknownPlaceholder(tail[..end].to_string()));
        }
    }
    topic.push_str(rest);
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if let Some(character) = topic.chars().find(|c| matches!(c, '+' | '#' | '\0')) {
        return Err(TopicError::Forbidden { topic, character });
    }
    if topic.len() > 65535 {
        return Err(TopicError::TooLong(topic.len()));
    }
    Ok(topic)
}

/// Where the broker is: `mqtt://host[:port]` (plain TCP, port 1883 by default) or
/// `mqtts://host[:port]` (TLS, port 8883 by default). An IPv6 address goes in brackets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    /// Whether the URL asks for TLS (`mqtts://`).
    pub tls: bool,
    /// Host name or IP address, without brackets.
    pub host: String,
    pub port: u16,
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

impl BrokerUrl {
    /// Parses `url`. Refused, with the reason: another scheme than `mqtt`/`mqtts`, a missing
    /// host, a port that is not a number in 1..65535, credentials in the URL (they belong in
    /// `mqtt-username`/`mqtt-password`, which are not logged) and a path or query.
    pub fn parse(url: &str) -> Result<BrokerUrl, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| format!("'{url}' is not a URL: expected mqtt://host[:port]"))?;
        let (tls, default_port) = match scheme.to_ascii_lowercase().as_str() {
            "mqtt" => (false, 1883),
            "mqtts" => (true, 8883),
            other => {
                return Err(format!(
                    "unknown scheme '{other}' in '{url}': use mqtt:// (TCP) or mqtts:// (TLS)"
                ))
            }
        };
        let authority = match rest.find(['/', '?', '#']) {
            Some(i) if rest[i..] != *"/" => {
                return Err(format!(
                    "'{url}' has a path or query ('{}'); the topic is set by mqtt-topic",
                    &rest[i..]
                ))
            }
            Some(i) => &rest[..i],
            None => rest,
        };
        if authority.contains('@') {
            return Err(format!(
                "'{url}' holds credentials: set mqtt-username and mqtt-password instead"
            ));
        }
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| format!("'{url}': '[' without ']' around an IPv6 address"))?;
            match after {
                "" => (host, None),
                _ => match after.strip_prefix(':') {
                    Some(port) => (host, Some(port)),
                    None => return Err(format!("'{url}': unexpected '{after}' after ']'")),
                },
            }
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(format!("'{url}' names no host"));
        }
        let port = match port {
            None => default_port,
            Some(p) => match p.parse::<u16>() {
                Ok(p) if p > 0 => p,
                _ => return Err(format!("'{url}': port '{p}' is not a number in 1..65535")),
            },
        };
        Ok(BrokerUrl {
            tls,
            host: host.to_string(),
            port,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    /// Sends every unsent line and returns their texts.
    fn send_all(b: &mut Backlog) -> Vec<(u64, String)> {
        std::iter::from_fn(|| b.next_to_send())
            .map(|(seq, l)| (seq, l.to_string()))
            .collect()
    }

    #[test]
    fn lines_leave_only_when_confirmed_in_order() {
        let mut b = Backlog::new(10);
        for s in ["a", "b", "c"] {
            b.push(line(s));
        }
        assert_eq!(
            send_all(&mut b),
            [(0, "a".into()), (1, "b".into()), (2, "c".into())]
        );
        assert_eq!(b.next_to_send(), None);
        // Confirming the second first keeps it until the first is confirmed.
        assert!(b.confirm(1));
        assert_eq!(b.len(), 2);
        assert!(!b.is_empty());
        assert!(b.confirm(0));
        assert_eq!(b.len(), 1);
        // A second confirmation of the same line is ignored.
        assert!(!b.confirm(1));
        assert!(b.confirm(2));
        assert!(b.is_empty());
        assert_eq!(b.dropped(), 0);
    }

    #[test]
    fn an_unsent_line_cannot_be_confirmed() {
        let mut b = Backlog::new(10);
        b.push(line("a"));
        assert!(!b.confirm(0));
        assert_eq!(b.len(), 1);
        assert!(!b.confirm(7));
    }

    #[test]
    fn rewind_resends_unconfirmed_lines_oldest_first_and_skips_confirmed() {
        let mut b = Backlog::new(10);
        for s in ["a", "b", "c", "d"] {
            b.push(line(s));
        }
        send_all(&mut b);
        assert!(b.confirm(0));
        assert!(b.confirm(2)); // out of order: "c" stays behind "b" as confirmed
        b.rewind();
        b.push(line("e"));
        assert_eq!(
            send_all(&mut b),
            [(1, "b".into()), (3, "d".into()), (4, "e".into())]
        );
        for seq in [1, 3, 4] {
            assert!(b.confirm(seq));
        }
        assert!(b.is_empty());
    }

    #[test]
    fn full_backlog_drops_the_oldest_and_counts() {
        let mut b = Backlog::new(3);
        for i in 0..3 {
            assert_eq!(b.push(line(&i.to_string())), (i, false));
        }
        // Two in flight, one unsent.
        assert_eq!(b.next_to_send().unwrap().0, 0);
        assert_eq!(b.next_to_send().unwrap().0, 1);
        assert_eq!(b.push(line("3")), (3, true));
        assert_eq!(b.push(line("4")), (4, true));
        assert_eq!(b.dropped(), 2);
        assert_eq!(b.len(), 3);
        // The dropped in-flight lines' late confirmations are ignored.
        assert!(!b.confirm(0));
        assert!(!b.confirm(1));
        assert_eq!(
            send_all(&mut b),
            [(2, "2".into()), (3, "3".into()), (4, "4".into())]
        );
        for seq in 2..5 {
            assert!(b.confirm(seq));
        }
        assert!(b.is_empty());
        assert_eq!(b.dropped(), 2);
    }

    #[test]
    fn long_outage_keeps_the_newest_capacity_lines() {
        let mut b = Backlog::new(5);
        let drops = (0..23).filter(|i| b.push(line(&i.to_string())).1).count();
        assert_eq!(drops, 18);
        assert_eq!(b.dropped(), 18);
        let kept: Vec<String> = send_all(&mut b).into_iter().map(|(_, l)| l).collect();
        assert_eq!(kept, ["18", "19", "20", "21", "22"]);
    }

    #[test]
    fn zero_capacity_means_one() {
        let mut b = Backlog::new(0);
        assert_eq!(b.push(line("a")), (0, false));
        assert_eq!(b.push(line("b")), (1, true));
        assert_eq!(send_all(&mut b), [(1, "b".into())]);
    }

    #[test]
    fn discard_all_counts_what_was_left() {
        let mut b = Backlog::new(10);
        for s in ["a", "b", "c"] {
            b.push(line(s));
        }
        b.next_to_send();
        assert!(b.confirm(0));
        assert_eq!(b.discard_all(), 2);
        assert_eq!(b.dropped(), 2);
        assert!(b.is_empty());
        assert_eq!(b.next_to_send(), None);
    }

    #[test]
    fn topic_template_expands_stream() {
        assert_eq!(
            expand_topic("logsad/{stream}", "cam0").unwrap(),
            "logsad/cam0"
        );
        assert_eq!(
            expand_topic("site/{stream}/x/{stream}", "a").unwrap(),
            "site/a/x/a"
        );
        assert_eq!(expand_topic("fixed/topic", "a").unwrap(), "fixed/topic");
        // A slash in the stream name adds a topic level, as MQTT means it to.
        assert_eq!(
            expand_topic("l/{stream}", "hall/cam").unwrap(),
            "l/hall/cam"
        );
    }

    #[test]
    fn topic_template_refuses_what_mqtt_refuses() {
        assert_eq!(
            expand_topic("logsad/{steam}", "cam0"),
            Err(TopicError::UnknownPlaceholder("{steam}".into()))
        );
        assert_eq!(
            expand_topic("logsad/{stream", "cam0"),
            Err(TopicError::UnknownPlaceholder("{stream".into()))
        );
        assert_eq!(expand_topic("{stream}", ""), Err(TopicError::Empty));
        assert_eq!(
            expand_topic("logsad/{stream}", "cam+1"),
            Err(TopicError::Forbidden {
                topic: "logsad/cam+1".into(),
                character: '+'
            })
        );
        assert!(matches!(
            expand_topic("logsad/#", "x"),
            Err(TopicError::Forbidden { character: '#', .. })
        ));
        let long = "a".repeat(70_000);
        assert_eq!(expand_topic(&long, "x"), Err(TopicError::TooLong(70_000)));
        let msg = expand_topic("x/{cam}", "a").unwrap_err().to_string();
        assert!(msg.contains("{cam}") && msg.contains("{stream}"), "{msg}");
    }

    #[test]
    fn urls_parse_with_default_ports() {
        let parse = |u| BrokerUrl::parse(u).unwrap();
        assert_eq!(
            parse("mqtt://broker.local"),
            BrokerUrl {
                tls: false,
                host: "broker.local".into(),
                port: 1883
            }
        );
        assert_eq!(
            parse("mqtts://10.0.0.5:8884/"),
            BrokerUrl {
                tls: true,
                host: "10.0.0.5".into(),
                port: 8884
            }
        );
        assert_eq!(
            parse("MQTT://[::1]:1999"),
            BrokerUrl {
                tls: false,
                host: "::1".into(),
                port: 1999
            }
        );
        assert_eq!(parse("mqtts://[fe80::1]").port, 8883);
        assert_eq!(parse("mqtt://[::1]:1999").to_string(), "mqtt://[::1]:1999");
        assert_eq!(parse("mqtts://h").to_string(), "mqtts://h:8883");
    }

    #[test]
    fn bad_urls_are_refused_with_the_reason() {
        let err = |u| BrokerUrl::parse(u).unwrap_err();
        assert!(err("broker:1883").contains("not a URL"));
        assert!(err("tcp://broker").contains("unknown scheme 'tcp'"));
        assert!(err("mqtt://").contains("names no host"));
        assert!(err("mqtt://:1883").contains("names no host"));
        assert!(err("mqtt://h:0").contains("port '0'"));
        assert!(err("mqtt://h:70000").contains("port '70000'"));
        assert!(err("mqtt://h:x").contains("port 'x'"));
        assert!(err("mqtt://u:p@h").contains("mqtt-username"));
        assert!(err("mqtt://h/logsad/cam").contains("mqtt-topic"));
        assert!(err("mqtt://h?x=1").contains("path or query"));
        assert!(err("mqtt://[::1").contains("IPv6"));
        assert!(err("mqtt://[::1]x").contains("unexpected 'x'"));
    }
}
