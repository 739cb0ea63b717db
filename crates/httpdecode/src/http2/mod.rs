//! HTTP/2: frames, HPACK and multiplexed streams.

pub(crate) mod frame;
mod hpack;
pub use hpack::encode_int;
#[cfg(test)]
pub(crate) use hpack::STATIC_TABLE;
mod reader;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, VecDeque};
use std::time::SystemTime;

use crate::budget::{Budget, Charge};
use crate::detect::Start;
use crate::exchange::{body_limit, note, Exchange, Protocol};
use crate::headers::NO_HEADERS;
use crate::{over_budget_note, Body, Direction, Headers, Limits};
use frame::FrameHeader;
use hpack::{field_size, truncated_note, DecodedBlock, HpackDecoder};
use reader::{FrameReader, Item};

/// Streams tracked at once; the oldest is given up beyond that.
const MAX_STREAMS: usize = 256;
/// Largest header block (HEADERS + CONTINUATION) kept.
const MAX_BLOCK: usize = 256 * 1024;
/// Recently finished streams remembered so that late frames are ignored.
const MAX_CLOSED: usize = 1024;

/// One direction of a stream: a request or a response.
struct Half {
    headers: Option<Headers>,
    trailers: Headers,
    /// HPACK size of `trailers`: all trailer blocks share one budget.
    trailers_size: usize,
    body: Body,
    ended: bool,
    first_time: Option<SystemTime>,
    notes: Vec<String>,
    /// Body bytes and header fields kept.
    charge: Charge,
    /// The budget refused body bytes: the rest of the body is not kept.
    body_refused: bool,
}

impl Half {
    fn new(budget: &Budget) -> Self {
        Half {
            headers: None,
            trailers: Headers::new(),
            trailers_size: 0,
            body: Body::default(),
            ended: false,
            first_time: None,
            notes: Vec::new(),
            charge: Charge::new(budget),
            body_refused: false,
        }
    }
}

fn headers_of(half: &Half) -> &Headers {
    half.headers.as_ref().unwrap_or(&NO_HEADERS)
}

struct Stream {
    halves: [Half; 2],
    /// Direction of the first header block seen, to guess roles.
    first_headers: Option<Direction>,
    notes: Vec<String>,
    start_time: SystemTime,
}

/// A header block waiting for its CONTINUATION frames.
struct Block {
    stream: u32,
    /// Stream the headers belong to: the promised one for PUSH_PROMISE.
    target: u32,
    promise: bool,
    data: Vec<u8>,
    end_stream: bool,
    overflow: bool,
    /// The budget had no room for `data`.
    over_budget: bool,
    charge: Charge,
}

pub(crate) struct Http2 {
    limits: Limits,
    budget: Budget,
    /// What the frame readers keep between chunks.
    reader_charges: [Charge; 2],
    client_dir: Option<Direction>,
    /// Seen from the start: DATA on an unknown stream is then a late frame.
    from_start: bool,
    readers: [FrameReader; 2],
    hpack: [HpackDecoder; 2],
    blocks: [Option<Block>; 2],
    streams: BTreeMap<u32, Stream>,
    closed: VecDeque<u32>,
    ready: Vec<Exchange>,
}

impl Http2 {
    pub(crate) fn new(limits: Limits, start: Start, budget: &Budget) -> Self {
        let reader = |dir: Direction| {
            let preface = start.preface && start.client_dir == Some(dir);
            FrameReader::new(preface, start.preface)
        };
        Http2 {
            limits,
            budget: budget.clone(),
            reader_charges: [Charge::new(budget), Charge::new(budget)],
            client_dir: start.client_dir,
            from_start: start.preface,
            readers: [reader(Direction::Send), reader(Direction::Recv)],
            hpack: [
                HpackDecoder::new(start.preface, limits.max_header_list, budget),
                HpackDecoder::new(start.preface, limits.max_header_list, budget),
            ],
            blocks: [None, None],
            streams: BTreeMap::new(),
            closed: VecDeque::new(),
            ready: Vec::new(),
        }
    }

    pub(crate) fn is_stopped(&self) -> bool {
        false
    }

    pub(crate) fn feed(&mut self, dir: Direction, data: &[u8], time: SystemTime) -> Vec<Exchange> {
        self.readers[dir.idx()].push(data);
        while let Some(item) = self.readers[dir.idx()].next() {
            self.handle(dir, item, time);
        }
        let d = dir.idx();
        let mut kept = self.readers[d].settle();
        if !self.reader_charges[d].has_room_for(kept) {
            kept = self.readers[d].shrink();
        }
        if !self.reader_charges[d].set(kept) {
            self.readers[d].drop_buffered();
            self.reader_charges[d].set(0);
            self.lost(dir, &over_budget_note("buffered frame bytes"));
        }
        std::mem::take(&mut self.ready)
    }

    pub(crate) fn gap(&mut self, dir: Direction, why: &str) {
        self.readers[dir.idx()].gap();
        self.lost(dir, why);
    }

    pub(crate) fn close(&mut self, _time: SystemTime) -> Vec<Exchange> {
        let ids: Vec<u32> = self.streams.keys().copied().collect();
        for id in ids {
            self.finish_stream(id, Some("connection closed before the stream ended"));
        }
        std::mem::take(&mut self.ready)
    }

    /// Frames were lost in `dir`: header blocks may be among them.
    fn lost(&mut self, dir: Direction, why: &str) {
        self.hpack[dir.idx()].lose_state();
        self.blocks[dir.idx()] = None;
        for stream in self.streams.values_mut() {
            let half = &mut stream.halves[dir.idx()];
            if !half.ended {
                half.body.truncated = true;
                note(&mut half.notes, why);
            }
        }
    }

    fn handle(&mut self, dir: Direction, item: Item, time: SystemTime) {
        match item {
            Item::Frame(h, payload) => self.frame(dir, h, &payload, time),
            Item::Data { stream, data } => {
                let limits = self.limits;
                if let Some(s) = self.stream(stream, !self.from_start, time) {
                    let [first, second] = &mut s.halves;
                    let (half, other) = if dir.idx() == 0 { (first, &*second) } else { (second, &*first) };
                    let limit = body_limit(limits, headers_of(half), headers_of(other));
                    half.first_time.get_or_insert(time);
                    if !half.body.push_charged(&data, limit, &mut half.charge, &mut half.body_refused) {
                        note(&mut half.notes, over_budget_note("body bytes"));
                    }
                }
            }
            Item::DataEnd { stream, end_stream } => {
                if end_stream {
                    self.end_half(stream, dir);
                }
            }
            Item::Skipped(h) => {
                if matches!(h.kind, frame::HEADERS | frame::CONTINUATION | frame::PUSH_PROMISE) {
                    self.lost(dir, "header block too large, not decoded");
                }
            }
            Item::Desync(why) => self.lost(dir, &format!("frame boundaries lost ({why})")),
        }
    }

    fn frame(&mut self, dir: Direction, h: FrameHeader, payload: &[u8], time: SystemTime) {
        if self.blocks[dir.idx()].is_some() && h.kind != frame::CONTINUATION {
            self.lost(dir, "header block interrupted");
        }
        match h.kind {
            frame::HEADERS => self.headers(dir, h, payload, time),
            frame::PUSH_PROMISE => self.push_promise(dir, h, payload, time),
            frame::CONTINUATION => self.continuation(dir, h, payload, time),
            frame::RST_STREAM => self.rst_stream(dir, h, payload),
            frame::SETTINGS if !h.has(frame::ACK) => self.settings(dir, payload),
            _ => {}
        }
    }

    fn headers(&mut self, dir: Direction, h: FrameHeader, payload: &[u8], time: SystemTime) {
        let Some(fragment) = frame::unpad(&h, payload) else {
            return self.lost(dir, "malformed HEADERS frame");
        };
        if let Some(s) = self.stream(h.stream, true, time) {
            s.first_headers.get_or_insert(dir);
            s.halves[dir.idx()].first_time.get_or_insert(time);
        }
        self.start_block(dir, h, h.stream, false, fragment, time);
    }

    fn push_promise(&mut self, dir: Direction, h: FrameHeader, payload: &[u8], time: SystemTime) {
        // Only servers push.
        self.client_dir.get_or_insert(dir.opposite());
        let Some(rest) = frame::unpad(&h, payload).filter(|p| p.len() >= 4) else {
            return self.lost(dir, "malformed PUSH_PROMISE frame");
        };
        let promised = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) & 0x7fff_ffff;
        if let Some(s) = self.stream(promised, true, time) {
            note(&mut s.notes, format!("server push promised on stream {}", h.stream));
            s.first_headers.get_or_insert(dir.opposite());
        }
        self.start_block(dir, h, promised, true, rest[4..].to_vec(), time);
    }

    fn start_block(
        &mut self,
        dir: Direction,
        h: FrameHeader,
        target: u32,
        promise: bool,
        data: Vec<u8>,
        time: SystemTime,
    ) {
        let overflow = data.len() > MAX_BLOCK;
        let mut charge = Charge::new(&self.budget);
        let over_budget = !overflow && !charge.grow(data.len());
        let block = Block {
            stream: h.stream,
            target,
            promise,
            data: if overflow || over_budget { Vec::new() } else { data },
            end_stream: h.kind == frame::HEADERS && h.has(frame::END_STREAM),
            overflow,
            over_budget,
            charge,
        };
        if h.has(frame::END_HEADERS) {
            self.complete_block(dir, block, time);
        } else {
            self.blocks[dir.idx()] = Some(block);
        }
    }

    fn continuation(&mut self, dir: Direction, h: FrameHeader, payload: &[u8], time: SystemTime) {
        let Some(mut block) = self.blocks[dir.idx()].take().filter(|b| b.stream == h.stream) else {
            // The start of this block was not seen: the table state is unknown.
            self.lost(dir, "header block start not captured");
            return;
        };
        if block.overflow || block.over_budget {
            // Dropped already.
        } else if block.data.len() + payload.len() > MAX_BLOCK {
            block.overflow = true;
            block.data = Vec::new();
            block.charge.set(0);
        } else if !block.charge.grow(payload.len()) {
            block.over_budget = true;
            block.data = Vec::new();
            block.charge.set(0);
        } else {
            block.data.extend_from_slice(payload);
        }
        if h.has(frame::END_HEADERS) {
            self.complete_block(dir, block, time);
        } else {
            self.blocks[dir.idx()] = Some(block);
        }
    }

    fn complete_block(&mut self, dir: Direction, block: Block, time: SystemTime) {
        let decoded = if block.overflow {
            self.lost(dir, "header block too large, not decoded");
            DecodedBlock {
                headers: Headers::new(),
                notes: vec!["header block too large, not decoded".into()],
            }
        } else if block.over_budget {
            let why = over_budget_note("header block");
            self.lost(dir, &why);
            DecodedBlock { headers: Headers::new(), notes: vec![why] }
        } else {
            self.hpack[dir.idx()].decode(&block.data)
        };
        let Block { target, promise, end_stream, .. } = block;
        self.learn_roles(dir, &decoded, promise);
        // Promised headers are the request of the pushed stream.
        let half_dir = if promise { dir.opposite() } else { dir };
        let max_list = self.limits.max_header_list;
        let Some(s) = self.stream(target, true, time) else {
            return;
        };
        let half = &mut s.halves[half_dir.idx()];
        for n in decoded.notes {
            note(&mut half.notes, n);
        }
        deliver_headers(half, decoded.headers, max_list);
        if promise {
            half.ended = true;
        }
        if end_stream {
            self.end_half(target, dir);
        }
    }

    /// Pseudo-headers tell which side is the client.
    fn learn_roles(&mut self, dir: Direction, decoded: &DecodedBlock, promise: bool) {
        if self.client_dir.is_some() || promise {
            return;
        }
        for (name, _) in &decoded.headers {
            match name {
                ":status" => self.client_dir = Some(dir.opposite()),
                ":method" | ":path" | ":scheme" => self.client_dir = Some(dir),
                _ => continue,
            }
            return;
        }
    }

    fn rst_stream(&mut self, dir: Direction, h: FrameHeader, payload: &[u8]) {
        let code = payload.get(..4).map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        let by = match self.client_dir {
            Some(c) if c == dir => "client",
            Some(_) => "server",
            None => "peer",
        };
        let note = format!("stream reset by {by} (RST_STREAM {})", error_name(code));
        if self.streams.contains_key(&h.stream) {
            self.finish_stream(h.stream, Some(&note));
        }
    }

    fn settings(&mut self, dir: Direction, payload: &[u8]) {
        for entry in payload.chunks_exact(6) {
            let id = u16::from_be_bytes([entry[0], entry[1]]);
            let value = u32::from_be_bytes([entry[2], entry[3], entry[4], entry[5]]);
            if id == 0x1 {
                // Limits the table of the decoder for what the peer sends.
                self.hpack[dir.opposite().idx()].set_allowed(value as usize);
            }
        }
    }

    /// The stream, created when `create` and not recently finished.
    fn stream(&mut self, id: u32, create: bool, time: SystemTime) -> Option<&mut Stream> {
        if id == 0 || self.closed.contains(&id) {
            return None;
        }
        if !self.streams.contains_key(&id) {
            if !create {
                return None;
            }
            self.make_room();
            let mut notes = Vec::new();
            if !self.from_start {
                notes.push("stream may have started before the capture".into());
            }
            let stream = Stream {
                halves: [Half::new(&self.budget), Half::new(&self.budget)],
                first_headers: None,
                notes,
                start_time: time,
            };
            self.streams.insert(id, stream);
        }
        self.streams.get_mut(&id)
    }

    fn make_room(&mut self) {
        while self.streams.len() >= MAX_STREAMS {
            let Some(&oldest) = self.streams.keys().next() else {
                return;
            };
            self.finish_stream(oldest, Some("given up: too many concurrent streams"));
        }
    }

    fn end_half(&mut self, id: u32, dir: Direction) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        s.halves[dir.idx()].ended = true;
        let done = match self.client_dir {
            Some(client) => s.halves[client.opposite().idx()].ended,
            None => s.halves.iter().all(|h| h.ended),
        };
        if done {
            self.finish_stream(id, None);
        }
    }

    fn finish_stream(&mut self, id: u32, note: Option<&str>) {
        let Some(mut s) = self.streams.remove(&id) else {
            return;
        };
        if self.closed.len() >= MAX_CLOSED {
            self.closed.pop_front();
        }
        self.closed.push_back(id);
        s.notes.extend(note.map(str::to_owned));
        let ex = self.build(id, s);
        self.ready.push(ex);
    }

    fn build(&self, id: u32, s: Stream) -> Exchange {
        let mut notes = s.notes;
        let client = self.client_dir.unwrap_or_else(|| {
            notes.push("request direction guessed".into());
            s.first_headers.unwrap_or(Direction::Send)
        });
        let [send, recv] = s.halves;
        let (req, resp) = if client == Direction::Send { (send, recv) } else { (recv, send) };
        let time = req.first_time.or(resp.first_time).unwrap_or(s.start_time);
        let mut ex = Exchange::new(Protocol::Http2, time);
        ex.stream_id = Some(id);
        ex.response_time = resp.first_time;
        fill_request(&mut ex, req, &mut notes);
        fill_response(&mut ex, resp, &mut notes);
        ex.notes = notes;
        ex.finish(self.limits.max_body, &self.budget);
        ex
    }
}

/// First header block of a half is its headers, later ones its trailers
/// (within one header list budget for all of them); informational responses
/// (1xx) are noted and dropped.
fn deliver_headers(half: &mut Half, headers: Headers, max_list: usize) {
    let status = headers.iter().find(|(n, _)| *n == ":status").map(|(_, v)| v);
    if let Some(s) = status.filter(|s| s.starts_with('1') && s.len() == 3) {
        note(&mut half.notes, format!("interim response {s}"));
        return;
    }
    if half.headers.is_none() {
        if half.charge.grow(headers.list_size()) {
            half.headers = Some(headers);
        } else {
            half.headers = Some(Headers::new());
            note(&mut half.notes, over_budget_note(&format!("{} header fields", headers.len())));
        }
        return;
    }
    let (mut dropped, mut refused) = (0, false);
    for (name, value) in &headers {
        let size = field_size(name, value);
        if dropped > 0 || half.trailers_size + size > max_list {
            dropped += 1;
            continue;
        }
        if !half.charge.grow(size) {
            (dropped, refused) = (1, true);
            continue;
        }
        half.trailers_size += size;
        half.trailers.push(name, value);
    }
    if refused {
        note(&mut half.notes, format!("trailers: {}", over_budget_note(&format!("{dropped} fields"))));
    } else if dropped > 0 {
        note(&mut half.notes, format!("trailers: {}", truncated_note(max_list, dropped)));
    }
}

fn fill_request(ex: &mut Exchange, req: Half, notes: &mut Vec<String>) {
    notes.extend(req.notes.into_iter().map(|n| format!("request: {n}")));
    let Some(headers) = req.headers else {
        notes.push("request headers not captured".into());
        ex.request_body = req.body;
        return;
    };
    for (name, value) in &headers {
        match name {
            ":method" => ex.method = Some(value.to_owned()),
            ":scheme" => ex.scheme = Some(value.to_owned()),
            ":authority" => ex.authority = Some(value.to_owned()),
            ":path" => ex.path = Some(value.to_owned()),
            _ => ex.request_headers.push(name, value),
        }
    }
    ex.request_trailers = req.trailers;
    ex.request_body = req.body;
}

fn fill_response(ex: &mut Exchange, resp: Half, notes: &mut Vec<String>) {
    notes.extend(resp.notes.into_iter().map(|n| format!("response: {n}")));
    let Some(headers) = resp.headers else {
        notes.push("response headers not captured".into());
        ex.response_body = resp.body;
        return;
    };
    for (name, value) in &headers {
        if name == ":status" {
            ex.status = value.parse().ok();
        } else if !name.starts_with(':') {
            ex.response_headers.push(name, value);
        }
    }
    ex.response_trailers = resp.trailers;
    ex.response_body = resp.body;
}

fn error_name(code: u32) -> String {
    const NAMES: [&str; 14] = [
        "NO_ERROR",
        "PROTOCOL_ERROR",
        "INTERNAL_ERROR",
        "FLOW_CONTROL_ERROR",
        "SETTINGS_TIMEOUT",
        "STREAM_CLOSED",
        "FRAME_SIZE_ERROR",
        "REFUSED_STREAM",
        "CANCEL",
        "COMPRESSION_ERROR",
        "CONNECT_ERROR",
        "ENHANCE_YOUR_CALM",
        "INADEQUATE_SECURITY",
        "HTTP_1_1_REQUIRED",
    ];
    match NAMES.get(code as usize) {
        Some(name) => name.to_string(),
        None => format!("error code {code}"),
    }
}
