//! A memory budget shared by the decoders of many connections.
//!
//! Each connection's limits bound what one peer can make it keep, but a
//! host has many connections: the budget bounds what all of them keep
//! together. The decoders charge it before they keep bytes (message bodies,
//! header blocks being assembled, decoded header lists of open messages,
//! buffered partial frames and heads, detection buffers, dynamic tables
//! larger than the default) and give the bytes back when the state is
//! dropped or handed out as an exchange. What the budget has no room for is
//! dropped, with a note on the exchange (containing [`OVER_BUDGET`]) and a
//! count in [`Budget::refusals`], instead of being allocated.
//!
//! Counted are the bytes kept, not what the allocator adds to them, nor the
//! copies made while one chunk of input is decoded (bounded by the chunk, a
//! frame or a header block, and freed before `feed` returns).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

/// Budget of [`Budget::shared`], and of `Budget::default()`.
pub const DEFAULT_BUDGET: usize = 256 << 20;

/// Part of the note on an exchange of which something was dropped because
/// the budget had no room for it.
pub const OVER_BUDGET: &str = "decoders' memory budget exhausted";

/// A handle on a memory budget; clones share it.
#[derive(Clone, Debug)]
pub struct Budget(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    limit: usize,
    used: AtomicUsize,
    refusals: AtomicU64,
    refused_bytes: AtomicU64,
}

impl Default for Budget {
    /// A new budget of [`DEFAULT_BUDGET`] bytes.
    fn default() -> Self {
        Budget::new(DEFAULT_BUDGET)
    }
}

impl Budget {
    /// A new budget of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Budget(Arc::new(Inner {
            limit,
            used: AtomicUsize::new(0),
            refusals: AtomicU64::new(0),
            refused_bytes: AtomicU64::new(0),
        }))
    }

    /// The process-wide budget of [`DEFAULT_BUDGET`] bytes that
    /// `Connection::new` and `Connection::with_limits` share.
    pub fn shared() -> Self {
        static SHARED: OnceLock<Budget> = OnceLock::new();
        SHARED.get_or_init(Budget::default).clone()
    }

    pub fn limit(&self) -> usize {
        self.0.limit
    }

    /// Bytes charged now.
    pub fn used(&self) -> usize {
        self.0.used.load(Ordering::Relaxed)
    }

    /// Bytes that can still be charged.
    pub fn available(&self) -> usize {
        self.limit().saturating_sub(self.used())
    }

    /// How many times something was dropped for want of room.
    pub fn refusals(&self) -> u64 {
        self.0.refusals.load(Ordering::Relaxed)
    }

    /// Bytes asked for and refused, in total.
    pub fn refused_bytes(&self) -> u64 {
        self.0.refused_bytes.load(Ordering::Relaxed)
    }

    /// Whether both handles share one budget.
    pub fn same(&self, other: &Budget) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Charges `n` bytes if there is room; a refusal is counted.
    fn take(&self, n: usize) -> bool {
        let limit = self.0.limit;
        let ok = self
            .0
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(n).filter(|&total| total <= limit)
            })
            .is_ok();
        if !ok {
            self.refused(n);
        }
        ok
    }

    fn give_back(&self, n: usize) {
        self.0.used.fetch_sub(n, Ordering::Relaxed);
    }

    /// Counts a refusal of `n` bytes decided elsewhere (a body decoded only
    /// as far as the budget allowed).
    pub(crate) fn refused(&self, n: usize) {
        self.0.refusals.fetch_add(1, Ordering::Relaxed);
        self.0.refused_bytes.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// The bytes one piece of decoder state holds of a budget, given back when
/// it is dropped.
#[derive(Debug)]
pub(crate) struct Charge {
    budget: Budget,
    held: usize,
}

impl Charge {
    pub(crate) fn new(budget: &Budget) -> Self {
        Charge { budget: budget.clone(), held: 0 }
    }

    /// Charges `n` more bytes; false, with nothing charged, when the budget
    /// has no room for them.
    pub(crate) fn grow(&mut self, n: usize) -> bool {
        if n == 0 {
            return true;
        }
        let ok = self.budget.take(n);
        if ok {
            self.held += n;
        }
        ok
    }

    /// Makes the charge `n` bytes; false, with the charge unchanged, when
    /// the budget has no room for the increase.
    pub(crate) fn set(&mut self, n: usize) -> bool {
        if n <= self.held {
            self.budget.give_back(self.held - n);
            self.held = n;
            return true;
        }
        self.grow(n - self.held)
    }

    pub(crate) fn held(&self) -> usize {
        self.held
    }

    /// Whether `set(n)` would succeed now.
    pub(crate) fn has_room_for(&self, n: usize) -> bool {
        n <= self.held.saturating_add(self.budget.available())
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.give_back(self.held);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::PREFACE;
    use crate::http2::frame::{CONTINUATION, DATA, END_HEADERS, END_STREAM, HEADERS, SETTINGS};
    use crate::testutil::{frame, gzip, t, Hpack};
    use crate::{Connection, Direction, Limits};
    use Direction::{Recv, Send};

    const GET: &[(&str, &str)] = &[(":method", "GET"), (":scheme", "https"), (":path", "/")];

    /// An HTTP/2 connection with stream 1's request sent and its response
    /// headers in: DATA for stream 1 follows.
    fn h2_open(budget: &Budget) -> Connection {
        let mut c = Connection::with_budget(Limits::default(), budget.clone());
        let mut client = PREFACE.to_vec();
        client.extend(frame(SETTINGS, 0, 0, &[]));
        client.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &Hpack::new().block(GET)));
        assert!(c.feed(Send, &client, t(0)).is_empty());
        let mut server = frame(SETTINGS, 0, 0, &[]);
        server.extend(frame(HEADERS, END_HEADERS, 1, &Hpack::new().block(&[(":status", "200")])));
        assert!(c.feed(Recv, &server, t(1)).is_empty());
        c
    }

    fn data(len: usize, end: bool) -> Vec<u8> {
        frame(DATA, if end { END_STREAM } else { 0 }, 1, &vec![b'd'; len])
    }

    #[test]
    fn charges_are_refused_past_the_limit_and_given_back_on_drop() {
        let budget = Budget::new(100);
        let mut a = Charge::new(&budget);
        assert!(a.grow(60));
        let mut b = Charge::new(&budget);
        assert!(!b.grow(41));
        assert_eq!((budget.refusals(), budget.refused_bytes()), (1, 41));
        assert!(b.grow(40));
        assert_eq!(budget.available(), 0);
        assert!(a.set(10));
        assert_eq!(budget.used(), 50);
        assert!(!a.set(70));
        assert_eq!(budget.used(), 50);
        drop(a);
        drop(b);
        assert_eq!(budget.used(), 0);
        assert!(Budget::shared().same(&Budget::shared()));
        assert!(!budget.same(&Budget::new(100)));
    }

    #[test]
    fn connections_share_one_budget() {
        let budget = Budget::new(400_000);
        let mut a = h2_open(&budget);
        let mut b = h2_open(&budget);
        // a keeps 200 KB of a body it has not finished.
        assert!(a.feed(Recv, &data(200_000, false), t(2)).is_empty());
        assert!(budget.used() >= 200_000);
        // b has room for 100 KB at most: the rest of its body is counted,
        // not kept, even once room is made.
        b.feed(Recv, &data(60_000, false), t(2));
        b.feed(Recv, &data(60_000, false), t(3));
        assert_eq!(budget.refusals(), 1);
        let a_done = a.feed(Recv, &data(1, true), t(4));
        assert_eq!(a_done[0].response_body.raw.len(), 200_001);
        assert!(!a_done[0].over_budget(), "{:?}", a_done[0].notes);
        let b_done = b.feed(Recv, &data(60_000, true), t(5));
        let body = &b_done[0].response_body;
        assert_eq!((body.raw.len(), body.raw_len, body.truncated), (60_000, 180_000, true));
        assert!(b_done[0].over_budget());
        assert!(b_done[0].notes.contains(&format!("response: body bytes dropped: {OVER_BUDGET}")));
        // Handed out: nothing is charged any more but the connections'
        // frame buffers.
        drop((a, b));
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn dropping_a_connection_gives_its_charges_back() {
        let budget = Budget::new(1 << 20);
        let mut c = h2_open(&budget);
        c.feed(Recv, &data(100_000, false), t(2));
        // Half a frame is buffered, and a header block is half assembled.
        c.feed(Recv, &data(100, false)[..50], t(3));
        c.feed(Send, &frame(HEADERS, 0, 3, &Hpack::new().block(GET)), t(3));
        assert!(budget.used() > 100_000);
        drop(c);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn header_block_over_budget_is_dropped_and_noted() {
        let budget = Budget::new(1 << 20);
        let mut c = h2_open(&budget);
        // Another holder leaves 40 KB.
        let mut other = Charge::new(&budget);
        assert!(other.grow(budget.available() - 40_000));
        let mut client = frame(HEADERS, 0, 3, &Hpack::new().block(GET));
        for _ in 0..4 {
            client.extend(frame(CONTINUATION, 0, 3, &[0x82; 16384]));
        }
        client.extend(frame(CONTINUATION, END_HEADERS | END_STREAM, 3, &[0x82]));
        c.feed(Send, &client, t(2));
        drop(other);
        let server = frame(HEADERS, END_HEADERS | END_STREAM, 3, &Hpack::new().block(&[(":status", "204")]));
        let ex = c.feed(Recv, &server, t(3));
        assert_eq!(ex.len(), 1);
        assert!(ex[0].over_budget(), "{:?}", ex[0].notes);
        assert!(ex[0].notes.iter().any(|n| n == &format!("request: header block dropped: {OVER_BUDGET}")));
        assert_eq!(ex[0].method, None);
        assert_eq!(ex[0].status, Some(204));
        assert!(budget.refusals() >= 1);
    }

    #[test]
    fn http1_body_and_decompression_within_the_budget() {
        let budget = Budget::new(64 * 1024);
        let mut c = Connection::with_budget(Limits::default(), budget.clone());
        let body = vec![b'x'; 100_000];
        let mut req = format!("POST /u HTTP/1.1\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        req.extend(&body);
        for part in req.chunks(16384) {
            c.feed(Send, part, t(0));
        }
        let zipped = gzip(&vec![b'z'; 200_000]);
        let mut resp =
            format!("HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\n\r\n", zipped.len())
                .into_bytes();
        resp.extend(&zipped);
        let ex = c.feed(Recv, &resp, t(1));
        assert_eq!(ex.len(), 1);
        let e = &ex[0];
        assert!(e.request_body.truncated);
        assert_eq!(e.request_body.raw_len, 100_000);
        assert!(e.request_body.raw.len() < 64 * 1024);
        assert!(e.notes.contains(&format!("request: body bytes dropped: {OVER_BUDGET}")), "{:?}", e.notes);
        // Decompressed only as far as the budget had room.
        let decoded = e.response_body.decoded.as_ref().map_or(0, Vec::len);
        assert!(decoded < 64 * 1024, "{decoded}");
        assert!(
            e.notes.iter().any(|n| n.starts_with("response: rest of decoded body dropped")),
            "{:?}",
            e.notes
        );
        drop(c);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn detection_buffers_are_charged() {
        let budget = Budget::new(1000);
        let mut c = Connection::with_budget(Limits::default(), budget.clone());
        // Not yet recognisable: buffered for detection, within the budget.
        c.feed(Send, b"GET /", t(0));
        assert!(budget.used() >= 10);
        c.feed(Send, &[b'a'; 2000], t(1));
        assert_eq!(budget.refusals(), 1);
        drop(c);
        assert_eq!(budget.used(), 0);
    }
}
