//! Per-connection plaintext streams for the protocol decoders: TLS records
//! of one connection (pid + library session) fed in order, losses turned
//! into gaps, and the table bounded (the least recently used connection is
//! closed when it is full).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::SystemTime;

use httpdecode::{Budget, Connection, Direction as HttpDirection, Exchange, Limits};

use super::{Direction, TlsRecord};

/// What the outputs show about the connection of an exchange.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    pub pid: u32,
    pub comm: String,
    pub library: &'static str,
    pub local: Option<SocketAddr>,
    pub remote: Option<SocketAddr>,
}

struct Stream {
    decoder: Connection,
    info: ConnectionInfo,
    /// call_seq of the last call seen, and whether it arrived whole.
    last_call: u64,
    expected_offset: u32,
    last_used: u64,
}

const MAX_CONNECTIONS: usize = 4096;

#[derive(Default)]
pub struct HttpStreams {
    streams: HashMap<(u32, u64), Stream>,
    clock: u64,
    limits: Limits,
    /// One memory budget for every connection's decoder state: any TLS
    /// peer of any process chooses what the decoders are fed.
    budget: Budget,
}

impl HttpStreams {
    /// Decoders that keep `shown` bytes of a body nobody decodes further
    /// (the preview the outputs show), rather than up to 1 MiB of it.
    pub fn new(shown: usize) -> Self {
        let limits = Limits { max_plain_body: shown, ..Limits::default() };
        HttpStreams { limits, budget: Budget::new(httpdecode::DEFAULT_BUDGET), ..Self::default() }
    }

    /// What the decoders refused for want of memory: (refusals, bytes).
    pub fn refused(&self) -> (u64, u64) {
        (self.budget.refusals(), self.budget.refused_bytes())
    }

    /// Feed one record; returns the exchanges it completes.
    pub fn feed(&mut self, r: &TlsRecord) -> Vec<(Exchange, ConnectionInfo)> {
        self.clock += 1;
        let key = (r.pid, r.conn);
        let mut done = Vec::new();
        if !self.streams.contains_key(&key) && self.streams.len() >= MAX_CONNECTIONS {
            done.extend(self.evict_oldest(r.time));
        }
        let stream = self.streams.entry(key).or_insert_with(|| Stream {
            decoder: Connection::with_budget(self.limits, self.budget.clone()),
            info: info_of(r),
            last_call: r.call_seq.saturating_sub(1),
            expected_offset: 0,
            last_used: 0,
        });
        stream.last_used = self.clock;
        if stream.decoder.is_not_http() {
            return done;
        }
        let dir = match r.direction {
            Direction::Send => HttpDirection::Send,
            Direction::Recv => HttpDirection::Recv,
        };
        if lost_something(stream, r) {
            stream.decoder.gap(HttpDirection::Send);
            stream.decoder.gap(HttpDirection::Recv);
        }
        stream.last_call = r.call_seq;
        stream.expected_offset = (r.offset + r.data.len() as u32) % r.call_len.max(1);
        if r.local.is_some() {
            stream.info.local = r.local;
            stream.info.remote = r.remote;
        }
        let info = stream.info.clone();
        done.extend(stream.decoder.feed(dir, r.data, r.time).into_iter().map(|e| (e, info.clone())));
        done
    }

    /// Close every connection (shutdown): what can still complete.
    pub fn close_all(&mut self, at: SystemTime) -> Vec<(Exchange, ConnectionInfo)> {
        let mut streams: Vec<_> = self.streams.drain().map(|(_, s)| s).collect();
        streams.sort_by_key(|s| s.last_used);
        streams
            .into_iter()
            .flat_map(|mut s| s.decoder.close(at).into_iter().map(move |e| (e, s.info.clone())))
            .collect()
    }

    fn evict_oldest(&mut self, at: SystemTime) -> Vec<(Exchange, ConnectionInfo)> {
        let Some(key) = self.streams.iter().min_by_key(|(_, s)| s.last_used).map(|(k, _)| *k) else {
            return Vec::new();
        };
        let mut s = self.streams.remove(&key).expect("key just found");
        s.decoder.close(at).into_iter().map(|e| (e, s.info.clone())).collect()
    }
}

/// A missing call (call_seq jumped) or a call that ended short.
fn lost_something(stream: &Stream, r: &TlsRecord) -> bool {
    let new_call = r.offset == 0;
    if new_call {
        r.call_seq != stream.last_call + 1 || stream.expected_offset != 0
    } else {
        r.call_seq != stream.last_call || r.offset != stream.expected_offset
    }
}

fn info_of(r: &TlsRecord) -> ConnectionInfo {
    ConnectionInfo { pid: r.pid, comm: r.comm.clone(), library: r.library, local: r.local, remote: r.remote }
}
