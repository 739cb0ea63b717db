//! Enrichment: what the kernel cannot know cheaply, added to the records
//! outputs print (wall-clock time, the library of a probe hit, user names,
//! socket addresses as types), and those records' types. Per-source
//! assembly (lines -> commands, starts + ends) is `crate::assembly`'s.

pub mod clock;
pub mod libraries;
pub mod memory;
pub mod users;

use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::num::NonZeroUsize;
use std::time::SystemTime;

use lru::LruCache;

use crate::events::{self, TlsData};
use crate::sources;
use clock::Clock;
use libraries::{KnownLibrary, LibraryResolver};

/// One captured piece of TLS plaintext, ready for any output.
#[derive(Debug, Clone)]
pub struct TlsRecord<'a> {
    pub time: SystemTime,
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    pub comm: String,
    pub library: &'static str,
    pub library_version: Option<&'a str>,
    pub library_path: &'a str,
    pub function: &'static str,
    pub direction: Direction,
    pub fd: Option<i32>,
    pub local: Option<SocketAddr>,
    pub remote: Option<SocketAddr>,
    /// Opaque connection handle (the library's session pointer).
    pub conn: u64,
    /// Per-connection call number; a jump means calls were lost.
    pub call_seq: u64,
    pub call_len: u32,
    pub offset: u32,
    pub flags: u32,
    /// Calls or bytes of this connection lost just before this record.
    pub gap: Option<crate::assembly::gaps::Gap>,
    pub data: &'a [u8],
}

/// A shell command, with what enrichment adds.
#[derive(Debug, Clone, Copy)]
pub struct CommandRecord<'a> {
    pub command: &'a crate::assembly::shell::Command,
    pub user: Option<&'a str>,
    pub shell_path: Option<&'a str>,
}

/// A database statement, with what enrichment adds.
#[derive(Debug, Clone, Copy)]
pub struct QueryRecord<'a> {
    pub query: &'a crate::assembly::sql::Query,
    pub user: Option<&'a str>,
    pub database: Option<&'a str>,
    pub client: Option<&'a str>,
}

/// A decoded HTTP exchange and its connection.
#[derive(Debug, Clone, Copy)]
pub struct HttpRecord<'a> {
    pub exchange: &'a httpdecode::Exchange,
    pub connection: &'a crate::assembly::streams::ConnectionInfo,
}

/// A program start, with what enrichment adds.
#[derive(Debug, Clone, Copy)]
pub struct ExecRecord<'a> {
    pub exec: &'a crate::assembly::exec::Exec,
    pub user: Option<&'a str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Send,
    Recv,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Send => "send",
            Direction::Recv => "recv",
        }
    }
}

/// What TLS records are enriched with: wall-clock time, the library and
/// function of the probe hit. (The gap before a record is the assembler's,
/// `crate::assembly::tls`.)
pub struct Enricher {
    clock: Clock,
    libraries: LibraryResolver,
}

impl Enricher {
    pub fn new(libraries: LibraryResolver) -> Self {
        Enricher { clock: Clock::now(), libraries }
    }

    pub fn add_library(&mut self, library: KnownLibrary) {
        self.libraries.add(library);
    }

    /// "openssl 3.0.22 at /usr/lib/.../libssl.so.3", for messages.
    pub fn library_name(&self, id: u16) -> String {
        self.libraries.describe(id)
    }

    /// The record of `d`, its `gap` not yet known (None).
    pub fn tls<'a>(&'a mut self, d: &TlsData<'a>) -> TlsRecord<'a> {
        let h = &d.header;
        let (mut function, family) = sources::function_of(h.function);
        if h.caller != 0 {
            let delta = h.caller.wrapping_sub(h.func_ip) as i64;
            function =
                self.libraries.caller(h.pid, h.func_ip, h.library_id, h.function, delta).unwrap_or(function);
        }
        let (local, remote) = tuple_addrs(&h.tuple);
        let lib = self.libraries.resolve(h.pid, h.func_ip, family, h.library_id);
        TlsRecord {
            time: self.clock.wall(h.ts_ns),
            pid: h.pid,
            tid: h.tid,
            uid: h.uid,
            comm: comm_string(&h.comm),
            library: lib.library,
            library_version: lib.version,
            library_path: lib.path,
            function,
            direction: if h.direction == events::direction::SEND { Direction::Send } else { Direction::Recv },
            fd: (h.fd >= 0).then_some(h.fd),
            local,
            remote,
            conn: h.conn,
            call_seq: h.call_seq,
            call_len: h.call_len,
            offset: h.offset,
            flags: h.flags,
            gap: None,
            data: d.data,
        }
    }
}

/// A table of at most `bound` entries that drops its least recently used
/// one to make room: every bounded per-pid or per-connection table here.
/// Caches whose entries can be looked up again use it as it is.
pub fn bounded<K: Hash + Eq, V>(bound: usize) -> LruCache<K, V> {
    LruCache::sparse(NonZeroUsize::new(bound).expect("a table's bound is above zero"))
}

/// A bounded table whose evictions lose something (a start without its
/// end, a connection's history): `push` and `get_or_push_mut` count every
/// entry they drop to make room, and hand it back so its owner can report
/// it. Everything else is the `LruCache` underneath.
pub struct Bounded<K: Hash + Eq, V> {
    table: LruCache<K, V>,
    evicted: u64,
}

impl<K: Hash + Eq + Clone, V> Bounded<K, V> {
    pub fn new(bound: usize) -> Self {
        Bounded { table: bounded(bound), evicted: 0 }
    }

    /// Entries dropped to make room so far.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Empties the table: every value, in the order of `key` (at shutdown,
    /// what is still pending, oldest first).
    pub fn drain_by_key<T: Ord>(&mut self, key: impl FnMut(&V) -> T) -> Vec<V> {
        let mut all: Vec<V> = std::iter::from_fn(|| self.table.pop_lru()).map(|(_, v)| v).collect();
        all.sort_by_key(key);
        all
    }

    /// Inserts `value` at `key`: the value it replaced (same key), or the
    /// entry evicted to make room (another key, counted).
    pub fn push(&mut self, key: K, value: V) -> Option<Replaced<K, V>> {
        let (old_key, old) = self.table.push(key.clone(), value)?;
        if old_key == key {
            return Some(Replaced::Same(old));
        }
        self.evicted += 1;
        Some(Replaced::Evicted(old_key, old))
    }

    /// The entry at `key`, made by `make` if absent, and the entry evicted
    /// to make room for it (counted).
    pub fn get_or_push_mut(&mut self, key: K, make: impl FnOnce() -> V) -> (&mut V, Option<(K, V)>) {
        let (value, evicted) = self.table.get_or_push_mut(key, make);
        self.evicted += u64::from(evicted.is_some());
        (value, evicted)
    }
}

/// What `Bounded::push` displaced.
pub enum Replaced<K, V> {
    /// The previous value at the same key.
    Same(V),
    /// Another key's entry, dropped to make room.
    Evicted(K, V),
}

impl<K: Hash + Eq, V> std::ops::Deref for Bounded<K, V> {
    type Target = LruCache<K, V>;
    fn deref(&self) -> &Self::Target {
        &self.table
    }
}

impl<K: Hash + Eq, V> std::ops::DerefMut for Bounded<K, V> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.table
    }
}

/// One allocation: the record's own String (a command name per record).
pub fn comm_string(comm: &[i8; 16]) -> String {
    let bytes: &[u8; 16] = bytemuck::cast_ref(comm);
    let len = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..len]).into_owned()
}

pub(crate) fn tuple_addrs(t: &crate::bpf::types::ct_tuple) -> (Option<SocketAddr>, Option<SocketAddr>) {
    let ip = |raw: &[u8; 16]| -> Option<IpAddr> {
        match t.family {
            2 => Some(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]).into()),
            10 => {
                let v6 = Ipv6Addr::from(*raw);
                Some(v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4))
            }
            _ => None,
        }
    };
    let local = ip(&t.laddr).map(|a| SocketAddr::new(a, t.lport));
    let remote = ip(&t.raddr).map(|a| SocketAddr::new(a, t.rport));
    (local, remote)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bpf::types::ct_tuple;

    #[test]
    fn ipv4_and_mapped_ipv6_tuples() {
        let mut t = ct_tuple { family: 2, lport: 443, rport: 50000, ..Default::default() };
        t.laddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        t.raddr[..4].copy_from_slice(&[10, 0, 0, 2]);
        let (l, r) = tuple_addrs(&t);
        assert_eq!(l.unwrap().to_string(), "127.0.0.1:443");
        assert_eq!(r.unwrap().to_string(), "10.0.0.2:50000");

        t.family = 10;
        t.laddr = Ipv4Addr::new(127, 0, 0, 1).to_ipv6_mapped().octets();
        t.raddr = Ipv6Addr::LOCALHOST.octets();
        let (l, r) = tuple_addrs(&t);
        assert_eq!(l.unwrap().to_string(), "127.0.0.1:443");
        assert_eq!(r.unwrap().to_string(), "[::1]:50000");

        t.family = 0;
        assert_eq!(tuple_addrs(&t), (None, None));
    }

    #[test]
    fn comm_stops_at_nul() {
        let mut c = [0i8; 16];
        for (i, b) in b"curl".iter().enumerate() {
            c[i] = *b as i8;
        }
        assert_eq!(comm_string(&c), "curl");
    }

    #[test]
    fn a_bounded_table_counts_what_it_drops_for_room_not_what_it_replaces() {
        let mut t = Bounded::new(2);
        assert!(t.push(1, "a").is_none());
        assert!(matches!(t.push(1, "b"), Some(Replaced::Same("a"))));
        assert!(t.push(2, "c").is_none());
        assert!(matches!(t.push(3, "d"), Some(Replaced::Evicted(1, "b"))));
        let (value, evicted) = t.get_or_push_mut(4, || "e");
        assert_eq!((*value, evicted), ("e", Some((2, "c"))));
        assert_eq!(t.evicted(), 2);
        assert_eq!(t.len(), 2);
    }
}
