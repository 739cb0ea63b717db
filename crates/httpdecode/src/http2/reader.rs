//! Splits one direction of an HTTP/2 connection into frames. DATA payloads
//! are passed on as they arrive so that large frames are never buffered.

use super::frame::{self, FrameHeader, DATA, END_STREAM, PADDED};
use crate::buffer;
use crate::detect::{h2_sync, Cand, PREFACE};

/// Largest non-DATA payload buffered; bigger ones are skipped.
const MAX_CONTROL: u32 = 256 * 1024;
/// Bytes kept while hunting for a frame boundary.
const MAX_HUNT: usize = 128 * 1024;

pub(crate) enum Item {
    /// A complete non-DATA frame.
    Frame(FrameHeader, Vec<u8>),
    Data {
        stream: u32,
        data: Vec<u8>,
    },
    DataEnd {
        stream: u32,
        end_stream: bool,
    },
    /// A non-DATA frame too large to keep was skipped.
    Skipped(FrameHeader),
    /// Frame boundaries were lost.
    Desync(String),
}

#[derive(Clone, Copy, Debug)]
enum Phase {
    Preface,
    Hunting,
    Header,
    Payload(FrameHeader),
    PadLen(FrameHeader),
    Data { hdr: FrameHeader, left: u32, pad: u32 },
    Skip(u32),
}

pub(crate) struct FrameReader {
    buf: Vec<u8>,
    pos: usize,
    phase: Phase,
}

impl FrameReader {
    /// `preface`: the client preface comes first; `synced`: the data starts
    /// at a frame boundary.
    pub(crate) fn new(preface: bool, synced: bool) -> Self {
        let phase = match (preface, synced) {
            (true, _) => Phase::Preface,
            (false, true) => Phase::Header,
            (false, false) => Phase::Hunting,
        };
        FrameReader { buf: Vec::new(), pos: 0, phase }
    }

    pub(crate) fn push(&mut self, data: &[u8]) {
        self.buf.drain(..self.pos);
        self.pos = 0;
        self.buf.extend_from_slice(data);
    }

    pub(crate) fn gap(&mut self) {
        self.buf.clear();
        self.pos = 0;
        self.phase = Phase::Hunting;
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

    /// Drops the buffered bytes and their memory (a gap).
    pub(crate) fn drop_buffered(&mut self) {
        self.gap();
        self.buf = Vec::new();
    }

    fn rest(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// Next item from the buffered bytes, or None when more are needed.
    pub(crate) fn next(&mut self) -> Option<Item> {
        loop {
            match self.phase {
                Phase::Preface => return self.preface(),
                Phase::Hunting => {
                    if !self.hunt() {
                        return None;
                    }
                }
                Phase::Header => return self.header(),
                Phase::Payload(hdr) => return self.payload(hdr),
                Phase::PadLen(hdr) => return self.pad_len(hdr),
                Phase::Data { hdr, left, pad } => return self.data(hdr, left, pad),
                Phase::Skip(left) => {
                    let take = self.rest().len().min(left as usize);
                    self.pos += take;
                    if take < left as usize {
                        self.phase = Phase::Skip(left - take as u32);
                        return None;
                    }
                    self.phase = Phase::Header;
                }
            }
        }
    }

    fn preface(&mut self) -> Option<Item> {
        let rest = self.rest();
        let n = rest.len().min(PREFACE.len());
        if rest[..n] != PREFACE[..n] {
            return self.desync("invalid client preface");
        }
        if n < PREFACE.len() {
            return None;
        }
        self.pos += n;
        self.phase = Phase::Header;
        self.next()
    }

    fn desync(&mut self, why: &str) -> Option<Item> {
        // Skip a byte so hunting cannot find the same bad position again.
        self.pos = (self.pos + 1).min(self.buf.len());
        self.phase = Phase::Hunting;
        Some(Item::Desync(why.to_owned()))
    }

    /// Looks for a frame boundary; true once found.
    fn hunt(&mut self) -> bool {
        let rest_len = self.rest().len();
        if rest_len > MAX_HUNT {
            self.pos += rest_len - MAX_HUNT;
        }
        let rest = self.rest();
        for i in 0..rest.len() {
            match h2_sync(&rest[i..], false) {
                Cand::Yes => {
                    self.pos += i;
                    self.phase = Phase::Header;
                    return true;
                }
                Cand::NeedMore => {
                    self.pos += i;
                    return false;
                }
                Cand::No => {}
            }
        }
        self.pos = self.buf.len();
        false
    }

    fn header(&mut self) -> Option<Item> {
        let hdr = FrameHeader::parse(self.rest())?;
        if !hdr.shape_ok() {
            return self.desync(&format!("invalid frame header (type {}, length {})", hdr.kind, hdr.length));
        }
        self.pos += frame::HEADER_LEN;
        if hdr.kind == DATA {
            return self.start_data(hdr);
        }
        if hdr.length > MAX_CONTROL {
            self.phase = Phase::Skip(hdr.length);
            return Some(Item::Skipped(hdr));
        }
        self.phase = Phase::Payload(hdr);
        self.payload(hdr)
    }

    fn start_data(&mut self, hdr: FrameHeader) -> Option<Item> {
        if hdr.has(PADDED) {
            self.phase = Phase::PadLen(hdr);
            return self.pad_len(hdr);
        }
        self.phase = Phase::Data { hdr, left: hdr.length, pad: 0 };
        self.data(hdr, hdr.length, 0)
    }

    fn pad_len(&mut self, hdr: FrameHeader) -> Option<Item> {
        if hdr.length == 0 {
            return self.desync("padded DATA frame without pad length");
        }
        let pad = u32::from(*self.rest().first()?);
        self.pos += 1;
        let Some(left) = (hdr.length - 1).checked_sub(pad) else {
            return self.desync("DATA padding longer than frame");
        };
        self.phase = Phase::Data { hdr, left, pad };
        self.data(hdr, left, pad)
    }

    fn data(&mut self, hdr: FrameHeader, left: u32, pad: u32) -> Option<Item> {
        if left == 0 {
            self.phase = Phase::Skip(pad);
            let end_stream = hdr.has(END_STREAM);
            return Some(Item::DataEnd { stream: hdr.stream, end_stream });
        }
        let rest = self.rest();
        if rest.is_empty() {
            return None;
        }
        let take = rest.len().min(left as usize);
        let data = rest[..take].to_vec();
        self.pos += take;
        self.phase = Phase::Data { hdr, left: left - take as u32, pad };
        Some(Item::Data { stream: hdr.stream, data })
    }

    fn payload(&mut self, hdr: FrameHeader) -> Option<Item> {
        let len = hdr.length as usize;
        let payload = self.rest().get(..len)?.to_vec();
        self.pos += len;
        self.phase = Phase::Header;
        Some(Item::Frame(hdr, payload))
    }
}
