//! HTTP/1.x and HTTP/2 decoder for captured TLS plaintext of one connection.
//!
//! The captured process may be the client or the server; which direction
//! carries requests is decided from the content. Input may start in the middle
//! of a connection, arrive in arbitrary chunks and contain gaps. The decoder
//! never panics, never loops forever and keeps memory bounded; when it cannot
//! be sure of what it decodes it reports that in `Exchange::notes` instead of
//! producing garbage. The state all connections keep together is bounded
//! by a shared [`Budget`].

mod body;
mod budget;
mod buffer;
mod detect;
mod exchange;
mod fuzz;
mod grpc;
mod headers;
mod http1;
mod http2;
#[cfg(test)]
mod testutil;
#[doc(hidden)]
pub mod wire;

use std::time::SystemTime;

pub use body::Body;
pub use budget::{Budget, DEFAULT_BUDGET, OVER_BUDGET};
pub use exchange::{Exchange, Protocol};
pub use fuzz::{fuzz_body, fuzz_hpack, fuzz_hpack_seeds, fuzz_http1, fuzz_http2, fuzz_http2_seeds};
pub use grpc::{Grpc, GrpcMessage};
pub use headers::Headers;

/// Direction of captured bytes, from the point of view of the captured process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Bytes the process wrote.
    Send,
    /// Bytes the process read.
    Recv,
}

impl Direction {
    pub fn opposite(self) -> Direction {
        match self {
            Direction::Send => Direction::Recv,
            Direction::Recv => Direction::Send,
        }
    }

    /// Index for per-direction arrays.
    pub(crate) fn idx(self) -> usize {
        match self {
            Direction::Send => 0,
            Direction::Recv => 1,
        }
    }

    pub(crate) const BOTH: [Direction; 2] = [Direction::Send, Direction::Recv];
}

/// Start of the note (in `Exchange::notes`, after "request: " or
/// "response: ") saying that a header list was cut at
/// `Limits::max_header_list`: the fields past it were dropped.
pub const HEADER_LIST_TRUNCATED: &str = "header list truncated at its budget";

/// Memory limits of one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of each body kept (raw and decoded); the rest is only counted.
    pub max_body: usize,
    /// Bytes kept of a body that needs no decoding (neither compressed nor
    /// gRPC), when only its start is of use (a preview): copying whole
    /// bodies is most of a decoder's work on large responses.
    pub max_plain_body: usize,
    /// Header list size kept of each header block (HTTP/2: and of all the
    /// trailer blocks of a message), counted as HPACK counts it (RFC 7541
    /// section 4.1: name + value + 32 bytes per field); the rest is dropped
    /// with a note starting with [`HEADER_LIST_TRUNCATED`].
    pub max_header_list: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_body: 1 << 20, max_plain_body: 1 << 20, max_header_list: 64 * 1024 }
    }
}

/// What the connection turned out to be.
enum State {
    Detecting(detect::Detector),
    Http1(Box<http1::Http1>),
    Http2(Box<http2::Http2>),
    NotHttp,
}

/// Decoder of one TCP/TLS connection.
pub struct Connection {
    limits: Limits,
    budget: Budget,
    state: State,
}

/// Note of bytes the budget had no room for.
pub(crate) fn over_budget_note(what: &str) -> String {
    format!("{what} dropped: {OVER_BUDGET}")
}

/// Note of a capture gap.
pub(crate) const GAP_NOTE: &str = "bytes lost (capture gap)";

impl Default for Connection {
    fn default() -> Self {
        Self::new()
    }
}

impl Connection {
    pub fn new() -> Self {
        Self::with_limits(Limits::default())
    }

    /// A connection within `limits`, sharing the process-wide
    /// [`Budget::shared`] with the other connections made so.
    pub fn with_limits(limits: Limits) -> Self {
        Self::with_budget(limits, Budget::shared())
    }

    /// A connection within `limits` whose state is charged to `budget`
    /// (share one among all connections: clone it).
    pub fn with_budget(limits: Limits, budget: Budget) -> Self {
        let state = State::Detecting(detect::Detector::new(&budget));
        Connection { limits, budget, state }
    }

    /// The budget this connection's state is charged to.
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// Feed bytes; returns exchanges completed by them (request + response paired).
    pub fn feed(&mut self, dir: Direction, data: &[u8], time: SystemTime) -> Vec<Exchange> {
        if data.is_empty() {
            return Vec::new();
        }
        match &mut self.state {
            State::Detecting(det) => {
                let taken = det.push(dir, data, time);
                let mut out = self.try_detect();
                // Detection ends at the latest when its buffer is full: the
                // rest of the chunk goes to the decoder it picked.
                if taken < data.len() && !matches!(self.state, State::Detecting(_)) {
                    out.extend(self.feed(dir, &data[taken..], time));
                }
                out
            }
            State::Http1(h) => h.feed(dir, data, time),
            State::Http2(h) => h.feed(dir, data, time),
            State::NotHttp => Vec::new(),
        }
    }

    /// Bytes were lost in `dir`.
    pub fn gap(&mut self, dir: Direction) {
        self.lose(dir, GAP_NOTE);
    }

    /// Bytes were lost in `dir`, for the reason `why`.
    fn lose(&mut self, dir: Direction, why: &str) {
        match &mut self.state {
            State::Detecting(det) => det.gap(dir, why),
            State::Http1(h) => h.gap(dir, why),
            State::Http2(h) => h.gap(dir, why),
            State::NotHttp => {}
        }
    }

    /// Connection closed: return what can still be completed (e.g. response delimited by close).
    pub fn close(&mut self, time: SystemTime) -> Vec<Exchange> {
        let out = match &mut self.state {
            State::Detecting(_) | State::NotHttp => Vec::new(),
            State::Http1(h) => h.close(time),
            State::Http2(h) => h.close(time),
        };
        if matches!(self.state, State::Detecting(_)) {
            self.state = State::NotHttp;
        }
        out
    }

    /// true once the bytes are known not to be HTTP (the caller then keeps them raw only).
    pub fn is_not_http(&self) -> bool {
        matches!(self.state, State::NotHttp)
    }

    /// The protocol once detected.
    pub fn protocol(&self) -> Option<Protocol> {
        match &self.state {
            State::Http1(h) => Some(h.protocol()),
            State::Http2(_) => Some(Protocol::Http2),
            _ => None,
        }
    }

    /// true once decoding stopped for good: a tunnel (CONNECT, Upgrade) or
    /// lost synchronisation that could not be regained.
    pub fn is_stopped(&self) -> bool {
        match &self.state {
            State::Http1(h) => h.is_stopped(),
            State::Http2(h) => h.is_stopped(),
            State::NotHttp => true,
            State::Detecting(_) => false,
        }
    }

    /// Hands the buffered bytes to the decoder of the detected protocol.
    fn try_detect(&mut self) -> Vec<Exchange> {
        let State::Detecting(det) = &mut self.state else {
            return Vec::new();
        };
        let outcome = det.detect();
        let (mut det, start) = match outcome {
            detect::Outcome::Undecided => return Vec::new(),
            detect::Outcome::NotHttp => {
                self.state = State::NotHttp;
                return Vec::new();
            }
            detect::Outcome::Http1(start) | detect::Outcome::Http2(start) => {
                let State::Detecting(d) = std::mem::replace(&mut self.state, State::NotHttp) else {
                    return Vec::new();
                };
                (d, start)
            }
        };
        let budget = &self.budget;
        self.state = match outcome {
            detect::Outcome::Http1(_) => {
                State::Http1(Box::new(http1::Http1::new(self.limits, start, budget)))
            }
            _ => State::Http2(Box::new(http2::Http2::new(self.limits, start, budget))),
        };
        // The chunks are replayed; the rest of the detector's state, and
        // its charge, go first.
        let chunks = det.take_chunks();
        drop(det);
        let mut out = Vec::new();
        for chunk in chunks {
            out.extend(self.feed_after_detect(chunk));
        }
        out
    }

    fn feed_after_detect(&mut self, chunk: detect::Chunk) -> Vec<Exchange> {
        match chunk {
            detect::Chunk::Data(dir, data, time) => self.feed(dir, &data, time),
            detect::Chunk::Gap(dir, why) => {
                self.lose(dir, &why);
                Vec::new()
            }
        }
    }
}
