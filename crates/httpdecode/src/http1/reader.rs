//! Splits one direction of an HTTP/1 connection into heads, body pieces and
//! message ends. The connection decides the body framing of each head, since
//! a response's framing depends on its request.

use super::{Event, Head, MAX_HEADERS};
use crate::buffer;
use crate::detect::{h1_message_start, Cand};
use crate::Headers;

/// Longest head or trailer section buffered.
const MAX_HEAD: usize = 64 * 1024;
/// Longest chunk-size line.
const MAX_CHUNK_LINE: usize = 4096;

/// How the body after a head is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

impl Framing {
    /// RFC 9112 section 6.3, for messages that may have a body.
    pub(crate) fn from_headers(headers: &Headers, is_response: bool) -> Framing {
        if let Some(te) = headers.get("transfer-encoding") {
            let last = te.rsplit(',').next().unwrap_or("").trim();
            return if last.eq_ignore_ascii_case("chunked") {
                Framing::Chunked
            } else if is_response {
                Framing::UntilClose
            } else {
                Framing::None
            };
        }
        match headers.get("content-length").map(|v| v.trim().parse::<u64>()) {
            Some(Ok(n)) => Framing::Length(n),
            _ if is_response => Framing::UntilClose,
            _ => Framing::None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Looking for a message start; `at_start`: the buffer start is one
    /// (a write boundary).
    Hunting {
        at_start: bool,
    },
    Head,
    /// A head was returned; waiting for the connection to set the framing.
    AwaitFraming,
    Length(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkDataEnd,
    Trailers,
    UntilClose,
}

pub(crate) struct Reader {
    buf: Vec<u8>,
    pos: usize,
    phase: Phase,
}

impl Reader {
    pub(crate) fn new() -> Self {
        Reader { buf: Vec::new(), pos: 0, phase: Phase::Hunting { at_start: true } }
    }

    pub(crate) fn push(&mut self, data: &[u8]) {
        self.buf.drain(..self.pos);
        self.pos = 0;
        if self.buf.is_empty() && matches!(self.phase, Phase::Hunting { .. }) {
            // A new write starts here: a likely message boundary.
            self.phase = Phase::Hunting { at_start: true };
        }
        self.buf.extend_from_slice(data);
    }

    pub(crate) fn set_framing(&mut self, framing: Framing) {
        self.phase = match framing {
            Framing::None => Phase::Length(0),
            Framing::Length(n) => Phase::Length(n),
            Framing::Chunked => Phase::ChunkSize,
            Framing::UntilClose => Phase::UntilClose,
        };
    }

    /// After an interim (1xx) response another head follows, with no end
    /// of message in between.
    pub(crate) fn expect_head(&mut self) {
        self.phase = Phase::Head;
    }

    fn rest(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// Next event from buffered bytes, or None when more bytes are needed.
    pub(crate) fn next(&mut self, is_request: bool) -> Option<Event> {
        match self.phase {
            Phase::Hunting { at_start } => self.hunt(at_start, is_request),
            Phase::Head => self.head(is_request),
            Phase::AwaitFraming => None,
            Phase::Length(0) => {
                self.phase = Phase::Head;
                Some(Event::End)
            }
            Phase::Length(n) => self.body_bytes(n).map(|(data, left)| {
                self.phase = Phase::Length(left);
                Event::Body(data)
            }),
            Phase::UntilClose => self.body_bytes(u64::MAX).map(|(data, _)| Event::Body(data)),
            Phase::ChunkSize => self.chunk_size(),
            Phase::ChunkData(n) => self.body_bytes(n).map(|(data, left)| {
                self.phase = if left == 0 { Phase::ChunkDataEnd } else { Phase::ChunkData(left) };
                Event::Body(data)
            }),
            Phase::ChunkDataEnd => self.chunk_data_end(),
            Phase::Trailers => self.trailers(),
        }
    }

    /// Between chunks: drops the bytes already decoded and memory the rest
    /// does not need; returns the bytes the buffer holds on to.
    pub(crate) fn settle(&mut self) -> usize {
        buffer::settle(&mut self.buf, &mut self.pos)
    }

    /// Gives back the memory the buffered bytes do not need; returns the
    /// bytes the buffer still holds on to.
    pub(crate) fn shrink(&mut self) -> usize {
        buffer::shrink(&mut self.buf)
    }

    /// Drops the buffered bytes and their memory (after `gap`).
    pub(crate) fn drop_buffered(&mut self) {
        self.buf = Vec::new();
        self.pos = 0;
    }

    /// Bytes lost (`why`): the current message is broken; hunt for the
    /// next one.
    pub(crate) fn gap(&mut self, why: &str) -> Option<Event> {
        let in_message = !matches!(self.phase, Phase::Hunting { .. } | Phase::Head)
            || (self.phase == Phase::Head && self.pos < self.buf.len());
        self.buf.clear();
        self.pos = 0;
        self.phase = Phase::Hunting { at_start: true };
        in_message.then(|| Event::Broken(why.to_owned()))
    }

    /// Connection closed: ends a body delimited by close.
    pub(crate) fn close(&mut self) -> Option<Event> {
        let event = match self.phase {
            Phase::UntilClose => Event::End,
            Phase::Hunting { .. } | Phase::Head | Phase::AwaitFraming => return None,
            _ => Event::Broken("connection closed before end of message".into()),
        };
        self.phase = Phase::Hunting { at_start: false };
        Some(event)
    }

    fn desync(&mut self, why: &str) -> Option<Event> {
        self.pos = self.buf.len();
        self.phase = Phase::Hunting { at_start: false };
        Some(Event::Broken(format!("{why}; resynchronising")))
    }

    fn hunt(&mut self, at_start: bool, is_request: bool) -> Option<Event> {
        let rest = self.rest();
        let mut candidates = (at_start.then_some(0))
            .into_iter()
            .chain(rest.iter().enumerate().filter(|(_, &b)| b == b'\n').map(|(i, _)| i + 1));
        let found = candidates.find_map(|i| match h1_message_start(&rest[i..]) {
            (Cand::Yes, Some(req)) if req == is_request => Some((i, true)),
            (Cand::NeedMore, _) => Some((i, false)),
            _ => None,
        });
        match found {
            Some((i, true)) => {
                self.pos += i;
                self.phase = Phase::Head;
                self.head(is_request)
            }
            Some((i, false)) => {
                // A possible start line is still incomplete.
                self.pos += i;
                self.phase = Phase::Hunting { at_start: true };
                None
            }
            None => {
                let ends_line = rest.last() == Some(&b'\n');
                self.pos = self.buf.len();
                self.phase = Phase::Hunting { at_start: ends_line };
                None
            }
        }
    }

    fn head(&mut self, is_request: bool) -> Option<Event> {
        // Empty lines between messages are allowed (RFC 9112 section 2.2).
        while matches!(self.rest().first(), Some(b'\r' | b'\n')) {
            self.pos += 1;
        }
        if self.rest().is_empty() {
            return None;
        }
        let parsed = if is_request { parse_request(self.rest()) } else { parse_response(self.rest()) };
        match parsed {
            Ok(Some((len, head))) => {
                self.pos += len;
                self.phase = Phase::AwaitFraming;
                Some(Event::Head(head))
            }
            Ok(None) if self.rest().len() > MAX_HEAD => self.desync("message head too long"),
            Ok(None) => None,
            Err(e) => self.desync(&format!("unparsable message head ({e})")),
        }
    }

    /// Takes up to `max` body bytes; returns them and how many remain.
    fn body_bytes(&mut self, max: u64) -> Option<(Vec<u8>, u64)> {
        let rest = self.rest();
        if rest.is_empty() {
            return None;
        }
        let take = rest.len().min(usize::try_from(max).unwrap_or(usize::MAX));
        let data = rest[..take].to_vec();
        self.pos += take;
        Some((data, max - take as u64))
    }

    fn chunk_size(&mut self) -> Option<Event> {
        let rest = self.rest();
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            if rest.len() > MAX_CHUNK_LINE {
                return self.desync("chunk size line too long");
            }
            return None;
        };
        let line = String::from_utf8_lossy(&rest[..end]);
        let digits = line.split(';').next().unwrap_or("").trim();
        match u64::from_str_radix(digits, 16) {
            Ok(size) if digits.len() <= 16 => {
                self.pos += end + 1;
                self.phase = if size == 0 { Phase::Trailers } else { Phase::ChunkData(size) };
                self.next_after_chunk_line()
            }
            _ => self.desync("invalid chunk size"),
        }
    }

    /// The chunk line itself produces no event; continue with what follows.
    fn next_after_chunk_line(&mut self) -> Option<Event> {
        match self.phase {
            Phase::Trailers => self.trailers(),
            Phase::ChunkData(n) => self.body_bytes(n).map(|(data, left)| {
                self.phase = if left == 0 { Phase::ChunkDataEnd } else { Phase::ChunkData(left) };
                Event::Body(data)
            }),
            _ => None,
        }
    }

    fn chunk_data_end(&mut self) -> Option<Event> {
        let rest = self.rest();
        let skip = match rest {
            [b'\r', b'\n', ..] => 2,
            [b'\n', ..] => 1,
            [] | [b'\r'] => return None,
            _ => return self.desync("missing CRLF after chunk data"),
        };
        self.pos += skip;
        self.phase = Phase::ChunkSize;
        self.chunk_size()
    }

    fn trailers(&mut self) -> Option<Event> {
        let rest = self.rest();
        let skip = match rest {
            [b'\r', b'\n', ..] => Some(2),
            [b'\n', ..] => Some(1),
            [] | [b'\r'] => return None,
            _ => None,
        };
        if let Some(skip) = skip {
            self.pos += skip;
            self.phase = Phase::Head;
            return Some(Event::End);
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        match httparse::parse_headers(rest, &mut headers) {
            Ok(httparse::Status::Complete((len, parsed))) => {
                let trailers = convert_headers(parsed);
                self.pos += len;
                // End follows on the next call: the trailer section ended the body.
                self.phase = Phase::Length(0);
                Some(Event::Trailers(trailers))
            }
            Ok(httparse::Status::Partial) if rest.len() <= MAX_HEAD => None,
            Ok(httparse::Status::Partial) => self.desync("trailer section too long"),
            Err(e) => self.desync(&format!("unparsable trailers ({e})")),
        }
    }
}

type Parsed = Result<Option<(usize, Head)>, httparse::Error>;

/// Room for `MAX_HEADERS` headers that httparse fills without the whole
/// table being zeroed first (4 KiB, for every head of every exchange).
fn header_room<'b>() -> [std::mem::MaybeUninit<httparse::Header<'b>>; MAX_HEADERS] {
    [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS]
}

fn parse_request(buf: &[u8]) -> Parsed {
    let mut headers = header_room();
    let mut req = httparse::Request::new(&mut []);
    let status =
        httparse::ParserConfig::default().parse_request_with_uninit_headers(&mut req, buf, &mut headers)?;
    let head = |len| {
        let (method, path) = (req.method.map(str::to_owned), req.path.map(str::to_owned));
        let headers = convert_headers(req.headers);
        (len, Head { version: req.version.unwrap_or(1), method, path, status: None, headers })
    };
    Ok(complete(status).map(head))
}

fn parse_response(buf: &[u8]) -> Parsed {
    let mut headers = header_room();
    let mut resp = httparse::Response::new(&mut []);
    let status =
        httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut resp, buf, &mut headers)?;
    let head = |len| {
        let headers = convert_headers(resp.headers);
        (
            len,
            Head { version: resp.version.unwrap_or(1), method: None, path: None, status: resp.code, headers },
        )
    };
    Ok(complete(status).map(head))
}

/// The head's length once httparse has all of it.
fn complete(status: httparse::Status<usize>) -> Option<usize> {
    match status {
        httparse::Status::Complete(len) => Some(len),
        httparse::Status::Partial => None,
    }
}

fn convert_headers(headers: &[httparse::Header]) -> Headers {
    let bytes = headers.iter().map(|h| h.name.len() + h.value.len()).sum();
    let mut converted = Headers::with_capacity(headers.len(), bytes);
    for h in headers {
        converted.push_with_lossy_value(h.name, h.value);
    }
    converted
}
