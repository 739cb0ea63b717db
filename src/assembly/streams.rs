//! Per-connection plaintext streams for the protocol decoders: TLS records
//! of one connection (pid + library session) fed in order, losses turned
//! into gaps, and the table bounded (the least recently used connection is
//! closed when it is full, what its close completes is returned, and it is
//! counted).

use std::net::SocketAddr;
use std::time::SystemTime;

use httpdecode::{Budget, Connection, Direction as HttpDirection, Exchange, Limits};

use crate::context::{Bounded, Direction, TlsRecord};

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
}

/// Connections decoded at once.
pub const MAX_CONNECTIONS: usize = 4096;

pub struct HttpStreams {
    streams: Bounded<(u32, u64), Stream>,
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
        HttpStreams {
            streams: Bounded::new(MAX_CONNECTIONS),
            limits,
            budget: Budget::new(httpdecode::DEFAULT_BUDGET),
        }
    }

    /// Connections closed early to stay within `MAX_CONNECTIONS`.
    pub fn evicted(&self) -> u64 {
        self.streams.evicted()
    }

    /// What the decoders refused for want of memory: (refusals, bytes).
    pub fn refused(&self) -> (u64, u64) {
        (self.budget.refusals(), self.budget.refused_bytes())
    }

    /// Feed one record; returns the exchanges it completes.
    /// A connection new to a full table closes the least recently used
    /// one: what that close completes comes first.
    pub fn feed(&mut self, r: &TlsRecord) -> Vec<(Exchange, ConnectionInfo)> {
        let mut done = Vec::new();
        let (stream, evicted) = self.streams.get_or_push_mut((r.pid, r.conn), || Stream {
            decoder: Connection::with_budget(self.limits, self.budget.clone()),
            info: info_of(r),
            last_call: r.call_seq.saturating_sub(1),
            expected_offset: 0,
        });
        if let Some((_, mut oldest)) = evicted {
            done.extend(oldest.decoder.close(r.time).into_iter().map(|e| (e, oldest.info.clone())));
        }
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

    /// Close every connection (shutdown), least recently used first: what
    /// can still complete.
    pub fn close_all(&mut self, at: SystemTime) -> Vec<(Exchange, ConnectionInfo)> {
        std::iter::from_fn(|| self.streams.pop_lru())
            .flat_map(|(_, mut s)| s.decoder.close(at).into_iter().map(move |e| (e, s.info.clone())))
            .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn record(conn: u64, call_seq: u64, direction: Direction, data: &[u8]) -> TlsRecord<'_> {
        TlsRecord {
            time: SystemTime::UNIX_EPOCH,
            pid: 1,
            tid: 1,
            uid: 0,
            comm: "curl".into(),
            library: "openssl",
            library_version: None,
            library_path: "",
            function: "SSL_write",
            direction,
            fd: None,
            local: None,
            remote: None,
            conn,
            call_seq,
            call_len: data.len() as u32,
            offset: 0,
            flags: 0,
            gap: None,
            data,
        }
    }

    #[test]
    fn a_full_table_closes_its_least_recently_used_connection_and_counts_it() {
        let mut s = HttpStreams::new(256);
        // A response delimited by the connection's close: only a close completes it.
        assert!(s.feed(&record(0, 1, Direction::Send, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")).is_empty());
        assert!(s.feed(&record(0, 2, Direction::Recv, b"HTTP/1.1 200 OK\r\n\r\nhello")).is_empty());
        for conn in 1..MAX_CONNECTIONS as u64 {
            assert!(s.feed(&record(conn, 1, Direction::Send, b"GET")).is_empty());
        }
        assert_eq!(s.evicted(), 0);
        let done = s.feed(&record(u64::MAX, 1, Direction::Send, b"GET"));
        assert_eq!(s.evicted(), 1);
        assert_eq!(done.len(), 1, "the evicted connection's exchange, completed by its close");
        assert_eq!((done[0].0.status, done[0].0.response_body.raw.as_slice()), (Some(200), &b"hello"[..]));
        assert!(s.close_all(SystemTime::UNIX_EPOCH).is_empty());
    }
}
