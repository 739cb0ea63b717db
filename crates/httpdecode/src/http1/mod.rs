//! HTTP/1.0 and HTTP/1.1: keep-alive, pipelining, chunked bodies, bodies
//! delimited by close, interim responses and tunnels.

mod reader;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::time::SystemTime;

use crate::budget::{Budget, Charge};
use crate::detect::Start;
use crate::exchange::{body_limit, note, Exchange, Protocol};
use crate::headers::NO_HEADERS;
use crate::{over_budget_note, Direction, Headers, Limits, GAP_NOTE};
use reader::{Framing, Reader};

/// Requests awaiting their response; more is not plausible pipelining.
const MAX_SLOTS: usize = 64;
/// Most headers accepted in one head or trailer section.
const MAX_HEADERS: usize = 128;

/// A request and, once seen, its response.
struct Slot {
    ex: Exchange,
    /// Feed sequence number at which the request started: a response that
    /// started earlier cannot answer it.
    req_seq: u64,
    req_done: bool,
    resp_started: bool,
    resp_done: bool,
    /// The response has no body whatever its headers say.
    head: bool,
    connect: bool,
    /// Header fields and body bytes kept.
    charge: Charge,
    /// The budget refused body bytes: the rest of that body is not kept.
    req_refused: bool,
    resp_refused: bool,
}

/// Which half of an exchange an event belongs to.
#[derive(Clone, Copy)]
enum Side {
    Request,
    Response,
}

impl Slot {
    /// A body, trailers, end or breakage of one side (its head starts it
    /// elsewhere): kept within the limit and the budget, noted where not.
    fn body_event(&mut self, event: Event, side: Side, limit: usize) {
        let Slot { ex, charge, req_done, resp_done, req_refused, resp_refused, .. } = self;
        let (name, trailers_name, body, trailers, done, refused) = match side {
            Side::Request => (
                "request",
                "request trailers",
                &mut ex.request_body,
                &mut ex.request_trailers,
                req_done,
                req_refused,
            ),
            Side::Response => (
                "response",
                "response trailers",
                &mut ex.response_body,
                &mut ex.response_trailers,
                resp_done,
                resp_refused,
            ),
        };
        match event {
            Event::Body(data) => {
                if !body.push_charged(&data, limit, charge, refused) {
                    note(&mut ex.notes, format!("{name}: {}", over_budget_note("body bytes")));
                }
            }
            Event::Trailers(t) => *trailers = charge_head(charge, t, &mut ex.notes, trailers_name),
            Event::End => *done = true,
            Event::Broken(why) => {
                body.truncated = true;
                note(&mut ex.notes, format!("{name}: {why}"));
                *done = true;
            }
            Event::Head(_) => {}
        }
    }

    fn new(ex: Exchange, req_seq: u64, budget: &Budget) -> Self {
        Slot {
            ex,
            req_seq,
            req_done: false,
            resp_started: false,
            resp_done: false,
            head: false,
            connect: false,
            charge: Charge::new(budget),
            req_refused: false,
            resp_refused: false,
        }
    }
}

/// Charges the fields of a head, or drops them (noted) without room.
fn charge_head(charge: &mut Charge, headers: Headers, notes: &mut Vec<String>, side: &str) -> Headers {
    if charge.grow(headers.list_size()) {
        return headers;
    }
    note(notes, format!("{side}: {}", over_budget_note(&format!("{} header fields", headers.len()))));
    Headers::new()
}

pub(crate) struct Http1 {
    limits: Limits,
    budget: Budget,
    /// What the readers keep between chunks.
    reader_charges: [Charge; 2],
    request_dir: Direction,
    readers: [Reader; 2],
    slots: VecDeque<Slot>,
    ready: Vec<Exchange>,
    protocol: Protocol,
    /// A tunnel (CONNECT, Upgrade) follows: the bytes are not HTTP any more.
    stopped: bool,
    seq: u64,
}

/// A parsed request or response head.
pub(crate) struct Head {
    pub version: u8,
    pub method: Option<String>,
    pub path: Option<String>,
    pub status: Option<u16>,
    pub headers: Headers,
}

/// What a reader reports to the connection.
pub(crate) enum Event {
    Head(Head),
    Body(Vec<u8>),
    Trailers(Headers),
    End,
    /// Bytes were lost or unparsable inside the current message.
    Broken(String),
}

impl Http1 {
    pub(crate) fn new(limits: Limits, start: Start, budget: &Budget) -> Self {
        Http1 {
            limits,
            budget: budget.clone(),
            reader_charges: [Charge::new(budget), Charge::new(budget)],
            request_dir: start.client_dir.unwrap_or(Direction::Send),
            readers: [Reader::new(), Reader::new()],
            slots: VecDeque::new(),
            ready: Vec::new(),
            protocol: Protocol::Http1_1,
            stopped: false,
            seq: 0,
        }
    }

    pub(crate) fn protocol(&self) -> Protocol {
        self.protocol
    }

    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped
    }

    pub(crate) fn feed(&mut self, dir: Direction, data: &[u8], time: SystemTime) -> Vec<Exchange> {
        if self.stopped {
            return Vec::new();
        }
        self.seq += 1;
        let is_request = dir == self.request_dir;
        self.readers[dir.idx()].push(data);
        while !self.stopped {
            let Some(event) = self.readers[dir.idx()].next(is_request) else {
                break;
            };
            self.handle(dir, event, time);
        }
        let d = dir.idx();
        let mut kept = self.readers[d].settle();
        if !self.reader_charges[d].has_room_for(kept) {
            kept = self.readers[d].shrink();
        }
        if !self.reader_charges[d].set(kept) {
            self.lose(dir, &over_budget_note("buffered bytes"));
            self.readers[d].drop_buffered();
            self.reader_charges[d].set(0);
        }
        self.emit();
        std::mem::take(&mut self.ready)
    }

    pub(crate) fn gap(&mut self, dir: Direction, why: &str) {
        if self.stopped {
            return;
        }
        self.lose(dir, why);
        self.emit();
    }

    fn lose(&mut self, dir: Direction, why: &str) {
        if let Some(Event::Broken(note)) = self.readers[dir.idx()].gap(why) {
            self.handle(dir, Event::Broken(note), SystemTime::UNIX_EPOCH);
        }
        if dir != self.request_dir {
            // Responses may have been lost entirely: pairing the next
            // response with a waiting request could pair the wrong ones.
            for slot in self.slots.iter_mut().filter(|s| !s.resp_started) {
                slot.resp_done = true;
                let why = if why == GAP_NOTE { "(capture gap)".into() } else { format!("({why})") };
                note(&mut slot.ex.notes, format!("response not captured {why}"));
            }
        }
    }

    pub(crate) fn close(&mut self, time: SystemTime) -> Vec<Exchange> {
        for dir in Direction::BOTH {
            if let Some(event) = self.readers[dir.idx()].close() {
                self.handle(dir, event, time);
            }
        }
        for mut slot in self.slots.drain(..) {
            if !slot.resp_started {
                slot.ex.notes.push("no response captured before close".into());
            }
            slot.ex.finish(self.limits.max_body, &self.budget);
            self.ready.push(slot.ex);
        }
        std::mem::take(&mut self.ready)
    }

    fn handle(&mut self, dir: Direction, event: Event, time: SystemTime) {
        if dir == self.request_dir {
            self.handle_request(event, time);
        } else {
            self.handle_response(event, time);
        }
    }

    fn handle_request(&mut self, event: Event, time: SystemTime) {
        if let Event::Head(head) = event {
            return self.start_request(head, time);
        }
        let Some(slot) = self.slots.back_mut().filter(|s| !s.req_done) else {
            return;
        };
        let limit = body_limit(self.limits, &slot.ex.request_headers, &NO_HEADERS);
        slot.body_event(event, Side::Request, limit);
    }

    fn start_request(&mut self, head: Head, time: SystemTime) {
        if self.slots.len() >= MAX_SLOTS {
            if let Some(mut old) = self.slots.pop_front() {
                old.ex.notes.push("no response captured (too many pipelined requests)".into());
                old.ex.finish(self.limits.max_body, &self.budget);
                self.ready.push(old.ex);
            }
        }
        let protocol = version_protocol(head.version);
        self.protocol = protocol;
        let mut ex = Exchange::new(protocol, time);
        let method = head.method.unwrap_or_default();
        let framing = match method.as_str() {
            "CONNECT" => Framing::None,
            _ => Framing::from_headers(&head.headers, false),
        };
        self.readers[self.request_dir.idx()].set_framing(framing);
        set_target(&mut ex, head.path.unwrap_or_default());
        if ex.authority.is_none() {
            ex.authority = head.headers.get("host").map(str::to_owned);
        }
        let mut slot = Slot::new(ex, self.seq, &self.budget);
        slot.head = method == "HEAD";
        slot.connect = method == "CONNECT";
        let target_size = method.len() + slot.ex.path.as_ref().map_or(0, String::len);
        slot.ex.method = Some(method);
        slot.ex.request_headers = if slot.charge.grow(target_size) {
            charge_head(&mut slot.charge, head.headers, &mut slot.ex.notes, "request")
        } else {
            note(&mut slot.ex.notes, format!("request: {}", over_budget_note("header fields")));
            Headers::new()
        };
        self.slots.push_back(slot);
    }

    fn handle_response(&mut self, event: Event, time: SystemTime) {
        if let Event::Head(head) = event {
            return self.start_response(head, time);
        }
        let Some(slot) = self.slots.iter_mut().find(|s| s.resp_started && !s.resp_done) else {
            return;
        };
        let limit = body_limit(self.limits, &slot.ex.response_headers, &slot.ex.request_headers);
        slot.body_event(event, Side::Response, limit);
    }

    fn start_response(&mut self, head: Head, time: SystemTime) {
        let status = head.status.unwrap_or(0);
        let idx = self.response_slot(time, head.version);
        let slot = &mut self.slots[idx];
        if (100..200).contains(&status) && status != 101 {
            // Interim response (100 Continue, 103 Early Hints): the final
            // response follows on the same request.
            note(&mut slot.ex.notes, format!("interim response {status}"));
            self.readers[self.request_dir.opposite().idx()].expect_head();
            return;
        }
        slot.resp_started = true;
        slot.ex.status = Some(status);
        slot.ex.response_time = Some(time);
        let tunnel = status == 101 || (slot.connect && (200..300).contains(&status));
        let framing = if tunnel || slot.head || status == 204 || status == 304 {
            Framing::None
        } else {
            Framing::from_headers(&head.headers, true)
        };
        if tunnel {
            note(&mut slot.ex.notes, format!("tunnel after status {status}: rest of connection not decoded"));
            slot.req_done = true;
            slot.resp_done = true;
            self.stopped = true;
        }
        slot.ex.response_headers =
            charge_head(&mut slot.charge, head.headers, &mut slot.ex.notes, "response");
        self.readers[self.request_dir.opposite().idx()].set_framing(framing);
    }

    /// The slot a new response belongs to, creating one when its request was
    /// not captured.
    fn response_slot(&mut self, time: SystemTime, version: u8) -> usize {
        let seq = self.seq;
        let current = self.slots.iter().position(|s| !s.resp_started && !s.resp_done);
        if let Some(i) = current.filter(|&i| self.slots[i].req_seq <= seq) {
            return i;
        }
        let mut ex = Exchange::new(version_protocol(version), time);
        ex.notes.push("request not captured".into());
        let mut slot = Slot::new(ex, seq, &self.budget);
        slot.req_done = true;
        let at = current.unwrap_or(self.slots.len());
        self.slots.insert(at, slot);
        at
    }

    /// Moves fully seen exchanges, in order, to `ready`.
    fn emit(&mut self) {
        while self.slots.front().is_some_and(|s| s.req_done && s.resp_done) {
            if let Some(mut slot) = self.slots.pop_front() {
                slot.ex.finish(self.limits.max_body, &self.budget);
                self.ready.push(slot.ex);
            }
        }
    }
}

fn version_protocol(version: u8) -> Protocol {
    if version == 0 {
        Protocol::Http1_0
    } else {
        Protocol::Http1_1
    }
}

/// Splits an absolute-form target (`http://host/path`) into its parts.
fn set_target(ex: &mut Exchange, target: String) {
    let Some((scheme, rest)) = target.split_once("://") else {
        ex.path = Some(target);
        return;
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    ex.scheme = Some(scheme.to_owned());
    ex.authority = Some(authority.to_owned());
    ex.path = Some(path.to_owned());
}
