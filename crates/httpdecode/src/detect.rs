//! Protocol detection and the message/frame boundary checks shared with the
//! decoders when they hunt for a place to (re)synchronise.

use std::time::SystemTime;

use crate::budget::{Budget, Charge};
use crate::http2::frame;
use crate::{over_budget_note, Direction};

/// The HTTP/2 client connection preface.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Bytes buffered (both directions) before giving up on finding HTTP.
const DETECT_LIMIT: usize = 64 * 1024;
/// Longest request or status line accepted when hunting.
pub(crate) const MAX_START_LINE: usize = 8 * 1024;

/// Result of checking a candidate position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cand {
    Yes,
    No,
    NeedMore,
}

/// What detection found out about the connection.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Start {
    /// Direction of the requests, when known.
    pub client_dir: Option<Direction>,
    /// The HTTP/2 preface was seen: both directions start at the connection start.
    pub preface: bool,
}

pub(crate) enum Outcome {
    Undecided,
    NotHttp,
    Http1(Start),
    Http2(Start),
}

/// Bytes seen before the protocol was known, replayed into the decoder.
pub(crate) enum Chunk {
    Data(Direction, Vec<u8>, SystemTime),
    /// Bytes lost, and why.
    Gap(Direction, String),
}

pub(crate) struct Detector {
    chunks: Vec<Chunk>,
    /// All bytes of each direction, and where chunks (write boundaries) start.
    bufs: [Vec<u8>; 2],
    boundaries: [Vec<usize>; 2],
    total: usize,
    since_last_run: usize,
    /// Per direction, where the next scan starts: every position before it
    /// was ruled out for good (a "no" stays a "no" whatever follows), so
    /// scans are incremental rather than quadratic.
    scanned: [usize; 2],
    /// `bufs` and `chunks`.
    charge: Charge,
}

impl Detector {
    pub(crate) fn new(budget: &Budget) -> Self {
        Detector {
            chunks: Vec::new(),
            bufs: Default::default(),
            boundaries: Default::default(),
            total: 0,
            since_last_run: 0,
            scanned: [0; 2],
            charge: Charge::new(budget),
        }
    }

    /// Buffers what fits within DETECT_LIMIT; returns how many bytes.
    pub(crate) fn push(&mut self, dir: Direction, data: &[u8], time: SystemTime) -> usize {
        let take = data.len().min(DETECT_LIMIT.saturating_sub(self.total));
        let data = &data[..take];
        if data.is_empty() {
            return 0;
        }
        // Kept twice (to scan, and to replay), plus the chunk's bookkeeping:
        // many tiny chunks cost more than their bytes.
        let overhead = std::mem::size_of::<Chunk>() + std::mem::size_of::<usize>();
        if !self.charge.grow(2 * take + overhead) {
            self.gap(dir, &over_budget_note("bytes"));
            return data.len();
        }
        let d = dir.idx();
        self.boundaries[d].push(self.bufs[d].len());
        self.bufs[d].extend_from_slice(data);
        self.chunks.push(Chunk::Data(dir, data.to_vec(), time));
        self.total += take;
        self.since_last_run += take;
        take
    }

    pub(crate) fn gap(&mut self, dir: Direction, why: &str) {
        // Gaps with no data in between are one.
        let trailing_gaps = self.chunks.iter().rev().map_while(|c| match c {
            Chunk::Gap(d, _) => Some(*d),
            Chunk::Data(..) => None,
        });
        if trailing_gaps.into_iter().any(|d| d == dir) {
            return;
        }
        let d = dir.idx();
        self.boundaries[d].push(self.bufs[d].len());
        self.chunks.push(Chunk::Gap(dir, why.to_owned()));
    }

    pub(crate) fn take_chunks(&mut self) -> Vec<Chunk> {
        std::mem::take(&mut self.chunks)
    }

    pub(crate) fn detect(&mut self) -> Outcome {
        let full = self.total >= DETECT_LIMIT;
        // Rescanning everything on every tiny chunk would be quadratic.
        if !full && self.total > 4096 && self.since_last_run < 1024 {
            return Outcome::Undecided;
        }
        self.since_last_run = 0;
        if let Some(dir) = Direction::BOTH.into_iter().find(|d| self.bufs[d.idx()].starts_with(PREFACE)) {
            return Outcome::Http2(Start { client_dir: Some(dir), preface: true });
        }
        if !full && self.server_preface_alone() {
            return Outcome::Undecided;
        }
        for dir in Direction::BOTH {
            if let Some(outcome) = self.detect_dir(dir, full) {
                return outcome;
            }
        }
        if full {
            Outcome::NotHttp
        } else {
            Outcome::Undecided
        }
    }

    /// One direction opens with a SETTINGS frame, as a server's connection
    /// preface does, and the other has sent nothing yet, or only part of
    /// the client preface. A server writes its SETTINGS before it reads
    /// the client's preface: deciding on that frame alone would take a
    /// connection seen from its start for one joined midway. Wait for the
    /// other side (a late start shows no preface there, and is decoded as
    /// such).
    fn server_preface_alone(&self) -> bool {
        Direction::BOTH.into_iter().any(|dir| {
            let (ours, theirs) = (&self.bufs[dir.idx()], &self.bufs[dir.opposite().idx()]);
            is_settings_frame(ours) && PREFACE.starts_with(theirs)
        })
    }

    /// Looks for the earliest HTTP/1 message start or HTTP/2 frame boundary.
    fn detect_dir(&mut self, dir: Direction, full: bool) -> Option<Outcome> {
        let d = dir.idx();
        let buf = &self.bufs[d];
        if buf.starts_with(PREFACE) {
            let start = Start { client_dir: Some(dir), preface: true };
            return Some(Outcome::Http2(start));
        }
        if PREFACE.starts_with(buf) && !full {
            return None;
        }
        let bounds = &self.boundaries[d];
        for pos in self.scanned[d]..buf.len() {
            let at_boundary = bounds.binary_search(&pos).is_ok();
            if at_boundary || buf[pos - 1] == b'\n' {
                match h1_message_start(&buf[pos..]) {
                    (Cand::Yes, Some(is_request)) => {
                        let client = if is_request { dir } else { dir.opposite() };
                        let start = Start { client_dir: Some(client), preface: false };
                        return Some(Outcome::Http1(start));
                    }
                    (Cand::NeedMore, _) if !full => {
                        self.scanned[d] = pos;
                        return None;
                    }
                    _ => {}
                }
            }
            match h2_sync(&buf[pos..], full) {
                Cand::Yes => {
                    let start = Start { client_dir: None, preface: false };
                    return Some(Outcome::Http2(start));
                }
                // Wait rather than look further: later positions may be
                // inside the payload of this frame.
                Cand::NeedMore => {
                    self.scanned[d] = pos;
                    return None;
                }
                Cand::No => {}
            }
        }
        self.scanned[d] = buf.len();
        None
    }
}

/// `buf` starts with a SETTINGS frame header that is not an ACK, on stream 0.
fn is_settings_frame(buf: &[u8]) -> bool {
    buf.len() >= frame::HEADER_LEN
        && buf[3] == frame::SETTINGS
        && buf[4] & frame::ACK == 0
        && buf[5..9] == [0; 4]
        && u32::from_be_bytes([0, buf[0], buf[1], buf[2]]).is_multiple_of(6)
}

/// Checks whether `buf` starts with a request line (`Some(true)`) or a
/// status line (`Some(false)`).
pub(crate) fn h1_message_start(buf: &[u8]) -> (Cand, Option<bool>) {
    let line_end = match buf.iter().take(MAX_START_LINE).position(|&b| b == b'\n') {
        Some(end) => end,
        None if buf.len() < MAX_START_LINE && plausible_line_prefix(buf) => return (Cand::NeedMore, None),
        None => return (Cand::No, None),
    };
    let line = &buf[..line_end];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if is_status_line(line) {
        (Cand::Yes, Some(false))
    } else if is_request_line(line) {
        (Cand::Yes, Some(true))
    } else {
        (Cand::No, None)
    }
}

/// A partial line that could still become a request or status line; avoids
/// waiting for a newline in binary data.
fn plausible_line_prefix(buf: &[u8]) -> bool {
    let first_ok = buf.first().is_none_or(|b| b.is_ascii_uppercase());
    first_ok && buf.iter().all(|&b| b == b'\r' || (0x20..0x7f).contains(&b))
}

/// `HTTP/1.x NNN reason`
pub(crate) fn is_status_line(line: &[u8]) -> bool {
    if line.len() < 12 || !(line.starts_with(b"HTTP/1.0 ") || line.starts_with(b"HTTP/1.1 ")) {
        return false;
    }
    let code = &line[9..12];
    let rest_ok = line.len() == 12 || line[12] == b' ';
    code.iter().all(u8::is_ascii_digit) && (b'1'..=b'5').contains(&code[0]) && rest_ok
}

/// `METHOD target HTTP/1.x` with an upper-case method token.
pub(crate) fn is_request_line(line: &[u8]) -> bool {
    let Some(sp) = line.iter().position(|&b| b == b' ') else {
        return false;
    };
    let method = &line[..sp];
    let method_ok = !method.is_empty()
        && method.len() <= 24
        && method.iter().all(|&b| b.is_ascii_uppercase() || b == b'-' || b == b'_');
    let rest = &line[sp + 1..];
    let Some(sp2) = rest.iter().rposition(|&b| b == b' ') else {
        return false;
    };
    let target = &rest[..sp2];
    let version = &rest[sp2 + 1..];
    let target_ok = !target.is_empty() && target.iter().all(|&b| b > 0x20 && b < 0x7f);
    method_ok && target_ok && (version == b"HTTP/1.1" || version == b"HTTP/1.0")
}

/// Frames that must follow each other for a position to count as a frame
/// boundary, unless the frames end exactly at the end of the data.
const SYNC_CHAIN: usize = 3;

/// Checks whether `buf` starts at an HTTP/2 frame boundary: a chain of
/// strictly valid frame headers. `full`: no more data will come.
pub(crate) fn h2_sync(buf: &[u8], full: bool) -> Cand {
    let mut pos = 0usize;
    for _ in 0..SYNC_CHAIN {
        if pos == buf.len() && pos > 0 {
            return Cand::Yes;
        }
        let Some(hdr) = buf.get(pos..pos + frame::HEADER_LEN) else {
            return if full { Cand::No } else { Cand::NeedMore };
        };
        let Some(h) = frame::FrameHeader::parse(hdr) else {
            return Cand::No;
        };
        if !h.plausible_strict() {
            return Cand::No;
        }
        pos += frame::HEADER_LEN + h.length as usize;
        if pos > DETECT_LIMIT {
            return Cand::No;
        }
    }
    Cand::Yes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_lines() {
        assert!(is_request_line(b"GET / HTTP/1.1"));
        assert!(is_request_line(b"M-SEARCH * HTTP/1.1"));
        assert!(!is_request_line(b"get / HTTP/1.1"));
        assert!(!is_request_line(b"GET / HTTP/2"));
        assert!(is_status_line(b"HTTP/1.1 200 OK"));
        assert!(is_status_line(b"HTTP/1.0 404"));
        assert!(!is_status_line(b"HTTP/1.1 20x OK"));
        assert_eq!(h1_message_start(b"GET / HT").0, Cand::NeedMore);
        assert_eq!(h1_message_start(b"\x00\x01").0, Cand::No);
    }

    #[test]
    fn frame_sync() {
        // SETTINGS ACK alone, ending exactly at the end of the data.
        let ack = [0, 0, 0, 4, 1, 0, 0, 0, 0];
        assert_eq!(h2_sync(&ack, false), Cand::Yes);
        assert_eq!(h2_sync(&ack[..5], false), Cand::NeedMore);
        assert_eq!(h2_sync(b"GET / HTTP/1.1\r\n", false), Cand::No);
    }
}
