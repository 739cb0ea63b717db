//! From the sources' JSON lines to the sinks: each source's output writes
//! its `--format json` lines into a `LineSender`; the agent thread numbers
//! them (`seq`), adds `host`, and hands each event to every sink.
//!
//! The capture side never waits for the sinks: a full channel drops the
//! line and counts it (the sources keep draining their ring buffers).

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Arc;

use crate::output::schema::{tag, LossEvent};

/// Lines waiting between the sources and the agent thread.
pub const CHANNEL_CAPACITY: usize = 65_536;
/// The bytes those lines may hold in all: a count alone would let 65,536
/// lines of a few MiB each (TLS records as base64) take gigabytes.
pub const QUEUE_BYTES: usize = 64 << 20;

/// The sending side of the channel, with the bytes it holds.
#[derive(Clone)]
pub struct LineQueue {
    tx: SyncSender<Line>,
    bytes: Arc<AtomicUsize>,
}

impl LineQueue {
    pub fn new(tx: SyncSender<Line>) -> Self {
        LineQueue { tx, bytes: Arc::new(AtomicUsize::new(0)) }
    }

    /// The agent thread took `line` off the channel.
    pub fn received(&self, line: &Line) {
        self.bytes.fetch_sub(line.json.len(), Ordering::Relaxed);
    }

    /// Queues `line` if the channel has room for one more line and its bytes.
    fn try_send(&self, line: Line) -> Result<(), TrySendError<Line>> {
        let len = line.json.len();
        if self.bytes.fetch_add(len, Ordering::Relaxed) + len > QUEUE_BYTES {
            self.bytes.fetch_sub(len, Ordering::Relaxed);
            return Err(TrySendError::Full(line));
        }
        self.tx.try_send(line).inspect_err(|_| {
            self.bytes.fetch_sub(len, Ordering::Relaxed);
        })
    }
}

/// One line a source printed, not yet numbered.
pub struct Line {
    pub source: &'static str,
    pub json: Vec<u8>,
}

/// Per-source counters, shared with the metrics endpoint.
#[derive(Default)]
pub struct SourceCounters {
    pub events: AtomicU64,
    pub bytes: AtomicU64,
    /// Lines the full channel refused.
    pub dropped: AtomicU64,
    /// What the source's kernel programs could not hand over (ring full).
    pub kernel_lost_records: AtomicU64,
    pub kernel_lost_bytes: AtomicU64,
    /// TLS calls whose start the kernel's per-thread table lost.
    pub kernel_unseen_starts: AtomicU64,
}

/// The `io::Write` a source's JSON output writes into: every complete line
/// becomes one `Line`.
pub struct LineSender {
    source: &'static str,
    tx: LineQueue,
    partial: Vec<u8>,
    counters: Arc<SourceCounters>,
}

impl LineSender {
    pub fn new(source: &'static str, tx: LineQueue, counters: Arc<SourceCounters>) -> Self {
        LineSender { source, tx, partial: Vec::new(), counters }
    }

    fn send(&mut self, json: Vec<u8>) -> io::Result<()> {
        let len = json.len() as u64;
        match self.tx.try_send(Line { source: self.source, json }) {
            Ok(()) => {
                self.counters.events.fetch_add(1, Ordering::Relaxed);
                self.counters.bytes.fetch_add(len, Ordering::Relaxed);
                Ok(())
            }
            Err(TrySendError::Full(_)) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(TrySendError::Disconnected(_)) => Err(io::ErrorKind::BrokenPipe.into()),
        }
    }
}

impl Write for LineSender {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut rest = buf;
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            let line = if self.partial.is_empty() {
                rest[..end].to_vec()
            } else {
                self.partial.extend_from_slice(&rest[..end]);
                std::mem::take(&mut self.partial)
            };
            self.send(line)?;
            rest = &rest[end + 1..];
        }
        self.partial.extend_from_slice(rest);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// An event as every sink gets it.
pub struct Envelope {
    pub seq: u64,
    pub source: &'static str,
    /// The source's JSON object with `host` and `seq` first; no newline.
    pub json: Vec<u8>,
}

/// Numbers lines in the order the agent thread receives them.
pub struct Numbering {
    /// `{"host":"web-1","seq":`
    head: Vec<u8>,
    last_seq: u64,
}

impl Numbering {
    pub fn new(host: &str) -> Self {
        let head = format!("{{\"host\":{},\"seq\":", serde_json::Value::from(host)).into_bytes();
        Numbering { head, last_seq: 0 }
    }

    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// `{"event":...}` -> `{"host":...,"seq":N,"event":...}`.
    pub fn envelope(&mut self, line: Line) -> Envelope {
        self.last_seq += 1;
        let body = line.json.strip_prefix(b"{").unwrap_or(&line.json);
        let mut json = Vec::with_capacity(self.head.len() + 24 + body.len());
        json.extend_from_slice(&self.head);
        json.extend_from_slice(self.last_seq.to_string().as_bytes());
        if body != b"}" {
            json.push(b',');
        }
        json.extend_from_slice(body);
        Envelope { seq: self.last_seq, source: line.source, json }
    }

    /// The `loss` event: `count` events of `source` that could not be
    /// kept, and why.
    pub fn loss(&mut self, source: &'static str, count: u64, reason: &str) -> Envelope {
        let loss = LossEvent { count, event: tag::Loss, reason: reason.into(), source: source.into() };
        let json = serde_json::to_vec(&loss).expect("a struct of strings and a number serializes");
        self.envelope(Line { source, json })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::schema::{AgentEvent, Event};

    #[test]
    fn lines_split_across_writes_arrive_whole_and_in_order() {
        let (tx, rx) = std::sync::mpsc::sync_channel(16);
        let counters = Arc::new(SourceCounters::default());
        let mut w = LineSender::new("tls", LineQueue::new(tx), Arc::clone(&counters));
        w.write_all(b"{\"a\":1}\n{\"b\"").unwrap();
        w.write_all(b":2}\n{\"c\":3}\n").unwrap();
        let got: Vec<_> = rx.try_iter().map(|l| String::from_utf8(l.json).unwrap()).collect();
        assert_eq!(got, ["{\"a\":1}", "{\"b\":2}", "{\"c\":3}"]);
        assert_eq!(counters.events.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn a_full_channel_counts_instead_of_blocking() {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let counters = Arc::new(SourceCounters::default());
        let mut w = LineSender::new("exec", LineQueue::new(tx), Arc::clone(&counters));
        w.write_all(b"{}\n{}\n{}\n").unwrap();
        assert_eq!(rx.try_iter().count(), 1);
        assert_eq!(counters.dropped.load(Ordering::Relaxed), 2);
        drop(rx);
        assert!(w.write_all(b"{}\n").is_err());
    }

    #[test]
    fn the_queue_is_bounded_in_bytes_too() {
        let (tx, rx) = std::sync::mpsc::sync_channel(CHANNEL_CAPACITY);
        let queue = LineQueue::new(tx);
        let counters = Arc::new(SourceCounters::default());
        let mut w = LineSender::new("tls", queue.clone(), Arc::clone(&counters));
        let big = vec![b'x'; 1 << 20];
        for _ in 0..80 {
            w.write_all(&big).unwrap();
            w.write_all(b"\n").unwrap();
        }
        let held: Vec<Line> = rx.try_iter().collect();
        assert_eq!(held.len(), QUEUE_BYTES >> 20, "64 lines of 1 MiB fit, not 80");
        assert_eq!(counters.dropped.load(Ordering::Relaxed), 80 - held.len() as u64);
        // Taken off the channel: room again.
        held.iter().for_each(|l| queue.received(l));
        w.write_all(&big).unwrap();
        w.write_all(b"\n").unwrap();
        assert_eq!(rx.try_iter().count(), 1);
    }

    #[test]
    fn host_and_seq_come_first() {
        let mut n = Numbering::new("web-1");
        let line = |s: &str| Line { source: "tls", json: s.as_bytes().to_vec() };
        let a = n.envelope(line(r#"{"event":"tls","pid":7}"#));
        let b = n.envelope(line("{}"));
        assert_eq!(a.json, br#"{"host":"web-1","seq":1,"event":"tls","pid":7}"#);
        assert_eq!(b.json, br#"{"host":"web-1","seq":2}"#);
        let loss = n.loss("tls", 5, "spool full");
        let read: AgentEvent = serde_json::from_slice(&loss.json).unwrap();
        let Event::Loss(event) = read.event else { panic!("not a loss event") };
        assert_eq!((read.host.as_deref(), read.seq, event.count), (Some("web-1"), Some(3), 5));
        assert_eq!(
            loss.json,
            br#"{"host":"web-1","seq":3,"count":5,"event":"loss","reason":"spool full","source":"tls"}"#
        );
    }
}
