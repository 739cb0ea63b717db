//! The decoded request/response pair.

use std::fmt;
use std::time::SystemTime;

use crate::budget::Budget;
use crate::grpc::Grpc;
use crate::{Body, Headers};

/// Notes kept per list (a message half, an exchange): a peer repeating what
/// causes one (interim responses, broken frames) must not grow them.
const MAX_NOTES: usize = 32;

/// Adds a note, unless it is already there or the list is full (the last
/// note then says that more were dropped).
pub(crate) fn note(notes: &mut Vec<String>, note: impl Into<String>) {
    let note = note.into();
    if notes.contains(&note) {
        return;
    }
    match notes.len() {
        n if n + 1 < MAX_NOTES => notes.push(note),
        n if n + 1 == MAX_NOTES => notes.push("further notes dropped".into()),
        _ => {}
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1_0,
    Http1_1,
    Http2,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Http1_0 => "HTTP/1.0",
            Protocol::Http1_1 => "HTTP/1.1",
            Protocol::Http2 => "HTTP/2",
        })
    }
}

/// One request and its response.
#[derive(Clone, Debug)]
pub struct Exchange {
    pub protocol: Protocol,
    pub method: Option<String>,
    pub scheme: Option<String>,
    pub authority: Option<String>,
    pub path: Option<String>,
    pub status: Option<u16>,
    pub request_headers: Headers,
    pub response_headers: Headers,
    /// Trailers (chunked trailer section, HTTP/2 trailing HEADERS).
    pub request_trailers: Headers,
    pub response_trailers: Headers,
    pub request_body: Body,
    pub response_body: Body,
    /// HTTP/2 stream id.
    pub stream_id: Option<u32>,
    /// Set when a content-type is application/grpc*.
    pub grpc: Option<Grpc>,
    pub request_time: SystemTime,
    /// When the first byte of the response was seen.
    pub response_time: Option<SystemTime>,
    /// What could not be decoded or was guessed.
    pub notes: Vec<String>,
}

impl Exchange {
    pub(crate) fn new(protocol: Protocol, request_time: SystemTime) -> Self {
        Exchange {
            protocol,
            method: None,
            scheme: None,
            authority: None,
            path: None,
            status: None,
            request_headers: Headers::new(),
            response_headers: Headers::new(),
            request_trailers: Headers::new(),
            response_trailers: Headers::new(),
            request_body: Body::default(),
            response_body: Body::default(),
            stream_id: None,
            grpc: None,
            request_time,
            response_time: None,
            notes: Vec::new(),
        }
    }

    /// Whether a header list (request or response headers or trailers) was
    /// cut at `Limits::max_header_list`: a note says which and how much.
    pub fn header_list_truncated(&self) -> bool {
        self.notes.iter().any(|n| n.contains(crate::HEADER_LIST_TRUNCATED))
    }

    /// Whether something was dropped because the decoders' memory budget
    /// had no room for it: a note says what.
    pub fn over_budget(&self) -> bool {
        self.notes.iter().any(|n| n.contains(crate::OVER_BUDGET))
    }

    /// Latency from the request to the first byte of the response.
    pub fn latency(&self) -> Option<std::time::Duration> {
        self.response_time?.duration_since(self.request_time).ok()
    }

    /// Decompresses bodies and splits gRPC messages, once both sides are
    /// in: each decompressed body within `body_limit`, and within what
    /// `budget` has left.
    pub(crate) fn finish(&mut self, body_limit: usize, budget: &Budget) {
        let req_enc = self.request_headers.get("content-encoding").map(str::to_owned);
        let resp_enc = self.response_headers.get("content-encoding").map(str::to_owned);
        for (side, enc) in [("request", req_enc), ("response", resp_enc)] {
            let body = if side == "request" { &mut self.request_body } else { &mut self.response_body };
            let room = budget.available();
            let limit = body_limit.min(room);
            let Some(n) = body.decode(enc.as_deref(), limit) else { continue };
            self.notes.push(format!("{side}: {n}"));
            if limit < body_limit && body.decoded.as_ref().is_some_and(|d| d.len() == limit) {
                budget.refused(body_limit - limit);
                let why = crate::over_budget_note("rest of decoded body");
                self.notes.push(format!("{side}: {why}"));
            }
        }
        if self.is_grpc() {
            self.grpc = Some(Grpc::from_exchange(self));
        }
    }

    fn is_grpc(&self) -> bool {
        is_grpc(&self.request_headers) || is_grpc(&self.response_headers)
    }
}

fn is_grpc(headers: &Headers) -> bool {
    // Compared in place: this runs for every message, and a lowercased
    // copy of the value was an allocation each time.
    const GRPC: &[u8] = b"application/grpc";
    headers
        .get("content-type")
        .is_some_and(|ct| ct.as_bytes().get(..GRPC.len()).is_some_and(|p| p.eq_ignore_ascii_case(GRPC)))
}

/// Bytes to keep of a body with headers `own` (the other side's: `other`):
/// all `max_body` when it will be decompressed or parsed as gRPC, else
/// `max_plain_body`.
pub(crate) fn body_limit(limits: crate::Limits, own: &Headers, other: &Headers) -> usize {
    let compressed = own.get("content-encoding").is_some_and(|e| !e.trim().eq_ignore_ascii_case("identity"));
    if compressed || is_grpc(own) || is_grpc(other) {
        limits.max_body
    } else {
        limits.max_plain_body.min(limits.max_body)
    }
}
