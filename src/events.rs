//! Typed views of the records kernel programs write to the ring buffer.
//! Kernel structs are decoded here and nowhere else; the views borrow the
//! ring buffer's memory, so decoding copies no payload.

use std::mem::size_of;

use crate::bpf::types::{
    ct_exec_result, ct_exec_start, ct_file_event, ct_packet, ct_query_end, ct_query_start, ct_shell_line,
    ct_sock_owner, ct_ssl_keys, ct_task, ct_task_event, ct_tls_data, ct_tls_secret,
};

/// The enums of `bpf/events.h` under short names. Their values come from
/// the header itself (libbpf-cargo generates them through
/// `bpf/types.bpf.c`): a name missing there does not compile, and no value
/// is written twice.
pub mod kind {
    use crate::bpf::types::ct_event_kind as K;
    pub const TLS_DATA: u32 = K::CT_EV_TLS_DATA.0;
    pub const EXEC: u32 = K::CT_EV_EXEC.0;
    pub const LIB_OPEN: u32 = K::CT_EV_LIB_OPEN.0;
    pub const SHELL_LINE: u32 = K::CT_EV_SHELL_LINE.0;
    pub const SHELL_EXIT: u32 = K::CT_EV_SHELL_EXIT.0;
    pub const EXEC_START: u32 = K::CT_EV_EXEC_START.0;
    pub const EXEC_RESULT: u32 = K::CT_EV_EXEC_RESULT.0;
    pub const QUERY_START: u32 = K::CT_EV_QUERY_START.0;
    pub const QUERY_END: u32 = K::CT_EV_QUERY_END.0;
    pub const QUERY_FAIL: u32 = K::CT_EV_QUERY_FAIL.0;
    pub const TLS_SECRET: u32 = K::CT_EV_TLS_SECRET.0;
    pub const SSL_KEYS: u32 = K::CT_EV_SSL_KEYS.0;
    pub const PACKET: u32 = K::CT_EV_PACKET.0;
    pub const SOCK_OWNER: u32 = K::CT_EV_SOCK_OWNER.0;
}
pub mod sql {
    use crate::bpf::types::{ct_sql_command as C, ct_sql_server as S};
    pub const MARIADB: u8 = S::CT_SQL_MARIADB.0 as u8;
    pub const MYSQL: u8 = S::CT_SQL_MYSQL.0 as u8;
    pub const COM_STMT_PREPARE: u8 = C::CT_COM_STMT_PREPARE.0 as u8;
    pub const COM_STMT_EXECUTE: u8 = C::CT_COM_STMT_EXECUTE.0 as u8;
}
pub mod shell {
    use crate::bpf::types::ct_shell_kind as K;
    pub const BASH: u8 = K::CT_SHELL_BASH.0 as u8;
    pub const ZSH: u8 = K::CT_SHELL_ZSH.0 as u8;
}
pub mod stat {
    use crate::bpf::types::ct_stat as S;
    pub const RECORDS: u32 = S::CT_STAT_RECORDS.0;
    pub const LOST_RECORDS: u32 = S::CT_STAT_LOST_RECORDS.0;
    pub const LOST_BYTES: u32 = S::CT_STAT_LOST_BYTES.0;
    pub const TRUNCATED_BYTES: u32 = S::CT_STAT_TRUNCATED_BYTES.0;
    pub const CONN_ENTRIES: u32 = S::CT_STAT_CONN_ENTRIES.0;
    pub const LOST_PACKETS: u32 = S::CT_STAT_LOST_PACKETS.0;
    pub const CUT_PACKETS: u32 = S::CT_STAT_CUT_PACKETS.0;
    pub const UNSEEN_STARTS: u32 = S::CT_STAT_UNSEEN_STARTS.0;
}
pub mod flag {
    use crate::bpf::types::ct_flags as F;
    pub const FAULT: u32 = F::CT_FLAG_FAULT.0;
    pub const TRUNCATED: u32 = F::CT_FLAG_TRUNCATED.0;
}
pub mod direction {
    use crate::bpf::types::ct_direction as D;
    pub const SEND: u8 = D::CT_DIR_SEND.0 as u8;
    #[cfg(test)]
    pub const RECV: u8 = D::CT_DIR_RECV.0 as u8;
}
/// `enum ct_tls_function`: the function a TLS record came from.
pub mod tls_function {
    use crate::bpf::types::ct_tls_function as F;
    pub const SSL_WRITE: u8 = F::CT_FN_SSL_WRITE.0 as u8;
    pub const SSL_READ: u8 = F::CT_FN_SSL_READ.0 as u8;
    pub const SSL_WRITE_EX: u8 = F::CT_FN_SSL_WRITE_EX.0 as u8;
    pub const SSL_READ_EX: u8 = F::CT_FN_SSL_READ_EX.0 as u8;
    pub const GNUTLS_RECORD_SEND: u8 = F::CT_FN_GNUTLS_RECORD_SEND.0 as u8;
    pub const GNUTLS_RECORD_RECV: u8 = F::CT_FN_GNUTLS_RECORD_RECV.0 as u8;
    pub const GNUTLS_RECORD_SEND2: u8 = F::CT_FN_GNUTLS_RECORD_SEND2.0 as u8;
    pub const GNUTLS_RECORD_RECV_SEQ: u8 = F::CT_FN_GNUTLS_RECORD_RECV_SEQ.0 as u8;
    pub const PR_WRITE: u8 = F::CT_FN_PR_WRITE.0 as u8;
    pub const PR_READ: u8 = F::CT_FN_PR_READ.0 as u8;
    pub const PR_SEND: u8 = F::CT_FN_PR_SEND.0 as u8;
    pub const PR_RECV: u8 = F::CT_FN_PR_RECV.0 as u8;
    pub const GO_WRITE: u8 = F::CT_FN_GO_WRITE.0 as u8;
    pub const GO_READ: u8 = F::CT_FN_GO_READ.0 as u8;
    pub const SSL_WRITE_INTERNAL: u8 = F::CT_FN_SSL_WRITE_INTERNAL.0 as u8;
    pub const SSL_READ_INTERNAL: u8 = F::CT_FN_SSL_READ_INTERNAL.0 as u8;
    pub const SSL_WRITE_EX2: u8 = F::CT_FN_SSL_WRITE_EX2.0 as u8;
    pub const RUSTLS_WRITE: u8 = F::CT_FN_RUSTLS_WRITE.0 as u8;
    pub const RUSTLS_READ: u8 = F::CT_FN_RUSTLS_READ.0 as u8;
}

pub type TlsHeader = ct_tls_data;

/// One chunk of TLS plaintext: the header and the bytes that follow it.
#[derive(Debug, Clone, Copy)]
pub struct TlsData<'a> {
    pub header: TlsHeader,
    pub data: &'a [u8],
}

#[derive(Clone, Copy)]
pub enum Event<'a> {
    TlsData(TlsData<'a>),
    /// A process exec'd a file (a new executable to check).
    Exec(FileEvent<'a>),
    /// A process opened a file named like a TLS library.
    LibOpen(FileEvent<'a>),
    ShellLine(&'a ct_shell_line),
    ShellExit(&'a ct_task),
    ExecStart(&'a ct_exec_start),
    ExecResult(&'a ct_exec_result),
    /// A statement starts (`struct ct_query_start`, sent with only the
    /// used part of its text).
    QueryStart(QueryStart<'a>),
    QueryEnd(&'a ct_query_end),
    QueryFail(&'a ct_query_end),
    /// A TLS secret, as a key log line says it.
    TlsSecret(&'a ct_tls_secret),
    /// OpenSSL's secrets of one handshake, raw (see `sources::openssl_keys`).
    SslKeys(&'a ct_ssl_keys),
    /// A packet from the TC classifier and the bytes captured of it.
    Packet(Packet<'a>),
    /// A process connected or accepted this socket.
    SockOwner(&'a ct_sock_owner),
}

#[derive(Debug, Clone, Copy)]
pub struct Packet<'a> {
    pub header: ct_packet,
    pub data: &'a [u8],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    TooShort(usize),
    UnknownKind(u32),
    LengthBeyondRecord { len: usize, room: usize },
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::TooShort(n) => write!(f, "record of {n} bytes is too short"),
            DecodeError::UnknownKind(k) => write!(f, "record of unknown kind {k}"),
            DecodeError::LengthBeyondRecord { len, room } => {
                write!(f, "record claims {len} payload bytes but has room for {room}")
            }
        }
    }
}

pub fn decode(raw: &[u8]) -> Result<Event<'_>, DecodeError> {
    let kind = raw
        .get(..4)
        .map(|b| u32::from_ne_bytes(b.try_into().unwrap()))
        .ok_or(DecodeError::TooShort(raw.len()))?;
    match kind {
        kind::TLS_DATA => decode_tls(raw).map(Event::TlsData),
        kind::EXEC => decode_file(raw).map(Event::Exec),
        kind::LIB_OPEN => decode_file(raw).map(Event::LibOpen),
        kind::SHELL_LINE => view::<ct_shell_line>(raw).map(Event::ShellLine),
        kind::SHELL_EXIT => view::<ct_task_event>(raw).map(|e| Event::ShellExit(&e.task)),
        kind::EXEC_START => view::<ct_exec_start>(raw).map(Event::ExecStart),
        kind::EXEC_RESULT => view::<ct_exec_result>(raw).map(Event::ExecResult),
        kind::QUERY_START => decode_query(raw),
        kind::QUERY_END => view::<ct_query_end>(raw).map(Event::QueryEnd),
        kind::QUERY_FAIL => view::<ct_query_end>(raw).map(Event::QueryFail),
        kind::TLS_SECRET => view::<ct_tls_secret>(raw).map(Event::TlsSecret),
        kind::SSL_KEYS => view::<ct_ssl_keys>(raw).map(Event::SslKeys),
        kind::PACKET => decode_packet(raw).map(Event::Packet),
        kind::SOCK_OWNER => view::<ct_sock_owner>(raw).map(Event::SockOwner),
        other => Err(DecodeError::UnknownKind(other)),
    }
}

/// The bytes of `raw` that `decode` reads: a TLS chunk or a packet is
/// reserved in its size class (a 1.3 KiB response takes an 8 KiB record),
/// and only its header and its own length of data mean anything. Copying
/// the rest is what the drain thread must not spend its time on. Records
/// of other kinds, and any whose length does not fit (left for `decode`
/// to report), are used whole.
pub fn used_len(raw: &[u8]) -> usize {
    let field = |at: usize| raw.get(at..at + 4).map(|b| u32::from_ne_bytes(b.try_into().unwrap()) as usize);
    let used = match field(0).map(|k| k as u32) {
        Some(kind::TLS_DATA) => {
            field(std::mem::offset_of!(TlsHeader, len)).map(|len| size_of::<TlsHeader>() + len)
        }
        Some(kind::PACKET) => {
            field(std::mem::offset_of!(ct_packet, caplen)).map(|len| size_of::<ct_packet>() + len)
        }
        _ => None,
    };
    used.filter(|&n| n <= raw.len()).unwrap_or(raw.len())
}

fn decode_tls(raw: &[u8]) -> Result<TlsData<'_>, DecodeError> {
    let mut header = TlsHeader::default();
    plain::copy_from_bytes(&mut header, raw).map_err(|_| DecodeError::TooShort(raw.len()))?;
    let body = &raw[size_of::<TlsHeader>()..];
    let len = header.len as usize;
    let data = body.get(..len).ok_or(DecodeError::LengthBeyondRecord { len, room: body.len() })?;
    Ok(TlsData { header, data })
}

fn decode_packet(raw: &[u8]) -> Result<Packet<'_>, DecodeError> {
    let mut header = ct_packet::default();
    plain::copy_from_bytes(&mut header, raw).map_err(|_| DecodeError::TooShort(raw.len()))?;
    let body = &raw[size_of::<ct_packet>()..];
    let len = header.caplen as usize;
    let data = body.get(..len).ok_or(DecodeError::LengthBeyondRecord { len, room: body.len() })?;
    Ok(Packet { header, data })
}

/// The fields of a `struct ct_file_event`.
#[derive(Clone, Copy)]
pub struct FileEvent<'a> {
    pub pid: u32,
    /// The name the process gave, as it sees it.
    pub path: &'a [u8],
    /// The file as the kernel knows it (see `FileKey`).
    pub file: FileKey,
    /// The process is stopped until user space continues it
    /// (`--hold-unchecked`).
    pub held: bool,
}

/// A file's identity in the kernel's own encoding (inode number and the
/// superblock's `s_dev`, not `stat`'s `st_dev`): handed back as it came,
/// as the key of procwatch's `checked_files`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileKey {
    pub ino: u64,
    pub dev: u32,
}

impl FileKey {
    /// The bytes of procwatch's `struct file_key`.
    pub fn to_map_key(self) -> [u8; 16] {
        let mut key = [0; 16];
        key[..8].copy_from_slice(&self.ino.to_ne_bytes());
        key[8..12].copy_from_slice(&self.dev.to_ne_bytes());
        key
    }
}

fn decode_file(raw: &[u8]) -> Result<FileEvent<'_>, DecodeError> {
    let e = view::<ct_file_event>(raw)?;
    Ok(FileEvent {
        pid: e.pid,
        path: c_bytes(&e.path),
        file: FileKey { ino: e.ino, dev: e.dev },
        held: e.held != 0,
    })
}

/// The fields of a `struct ct_query_start`.
#[derive(Clone, Copy)]
pub struct QueryStart<'a> {
    pub server: u8,
    pub command: u8,
    pub truncated: bool,
    pub stmt_id: u32,
    pub task: &'a ct_task,
    /// PostgreSQL: the backend's process title (empty elsewhere).
    pub title: &'a [u8],
    pub text: &'a [u8],
}

/// Query starts are shorter than their struct (only the used text is
/// sent): read the fixed part in place, then the text.
fn decode_query(raw: &[u8]) -> Result<Event<'_>, DecodeError> {
    use std::mem::offset_of;
    let too_short = DecodeError::TooShort(raw.len());
    let text_at = offset_of!(ct_query_start, text);
    if raw.len() < text_at {
        return Err(too_short);
    }
    let byte = |field: usize| raw[field];
    let word = |field: usize| u32::from_ne_bytes(raw[field..field + 4].try_into().unwrap());
    let len = word(offset_of!(ct_query_start, len)) as usize;
    let task_at = offset_of!(ct_query_start, task);
    let task = view::<ct_task>(&raw[task_at..]).map_err(|_| too_short)?;
    let title_at = offset_of!(ct_query_start, title);
    let title = &raw[title_at..text_at];
    let title = &title[..title.iter().position(|&b| b == 0).unwrap_or(title.len())];
    let room = raw.len() - text_at;
    let text = raw[text_at..].get(..len).ok_or(DecodeError::LengthBeyondRecord { len, room })?;
    Ok(Event::QueryStart(QueryStart {
        server: byte(offset_of!(ct_query_start, server)),
        command: byte(offset_of!(ct_query_start, command)),
        truncated: byte(offset_of!(ct_query_start, truncated)) != 0,
        stmt_id: word(offset_of!(ct_query_start, stmt_id)),
        task,
        title,
        text,
    }))
}

/// A record viewed in place (ring buffer records are 8-byte aligned and
/// at least as large as the struct reserved for them).
fn view<T: plain::Plain>(raw: &[u8]) -> Result<&T, DecodeError> {
    plain::from_bytes(raw).map_err(|_| DecodeError::TooShort(raw.len()))
}

/// A C `char[]` as bytes, up to the first NUL.
pub fn c_bytes(chars: &[i8]) -> &[u8] {
    let bytes = c_chars(chars);
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    &bytes[..end]
}

/// A C `char[]` as bytes, all of them.
pub fn c_chars(chars: &[i8]) -> &[u8] {
    // SAFETY: i8 and u8 have the same size and alignment.
    unsafe { std::slice::from_raw_parts(chars.as_ptr().cast::<u8>(), chars.len()) }
}

// SAFETY: these are repr(C) structs of integers and byte arrays, valid for
// any bit pattern.
unsafe impl plain::Plain for ct_tls_data {}
unsafe impl plain::Plain for ct_file_event {}
unsafe impl plain::Plain for ct_shell_line {}
unsafe impl plain::Plain for ct_task_event {}
unsafe impl plain::Plain for ct_exec_start {}
unsafe impl plain::Plain for ct_exec_result {}
unsafe impl plain::Plain for ct_task {}
unsafe impl plain::Plain for ct_query_end {}
// SAFETY: as above.
unsafe impl plain::Plain for ct_tls_secret {}
// SAFETY: as above.
unsafe impl plain::Plain for ct_ssl_keys {}
// SAFETY: as above.
unsafe impl plain::Plain for ct_packet {}
// SAFETY: as above.
unsafe impl plain::Plain for ct_sock_owner {}
// SAFETY: as above.
unsafe impl plain::Plain for crate::bpf::types::ct_ssl_layout {}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(len_field: u32, payload: &[u8]) -> Vec<u8> {
        let header = TlsHeader { kind: kind::TLS_DATA, len: len_field, ..Default::default() };
        // SAFETY: reading the bytes of a plain repr(C) struct.
        let mut raw = unsafe { plain::as_bytes(&header) }.to_vec();
        raw.extend_from_slice(payload);
        raw
    }

    /// The drain thread copies only what `decode` reads: the record cut to
    /// `used_len` decodes to the same data; a length past the record, or a
    /// record too short for its header, is kept whole for `decode` to judge.
    #[test]
    fn used_len_keeps_what_decode_reads() {
        let raw = record(3, b"abcXXXXXXXXXXXXX");
        let used = used_len(&raw);
        assert_eq!(used, size_of::<TlsHeader>() + 3);
        let Ok(Event::TlsData(d)) = decode(&raw[..used]) else { panic!("not TLS data") };
        assert_eq!(d.data, b"abc");
        let beyond = record(100, b"abc");
        assert_eq!(used_len(&beyond), beyond.len());
        assert_eq!(used_len(&beyond[..10]), 10);
        assert_eq!(used_len(&[]), 0);
        let other = [0xffu8; 64];
        assert_eq!(used_len(&other), 64);
    }

    #[test]
    fn decodes_payload_of_the_stated_length() {
        let raw = record(3, b"abcXXXX");
        let Ok(Event::TlsData(d)) = decode(&raw) else { panic!("not TLS data") };
        assert_eq!(d.data, b"abc");
    }

    #[test]
    fn decodes_file_events() {
        let mut raw = vec![0u8; size_of::<ct_file_event>()];
        raw[..4].copy_from_slice(&kind::EXEC.to_ne_bytes());
        raw[4..8].copy_from_slice(&42u32.to_ne_bytes());
        raw[8..16].copy_from_slice(&7u64.to_ne_bytes());
        raw[16..20].copy_from_slice(&9u32.to_ne_bytes());
        raw[20..24].copy_from_slice(&1u32.to_ne_bytes());
        raw[24..24 + 18].copy_from_slice(b"/usr/bin/curl\0junk");
        let Event::Exec(e) = decode(&raw).unwrap() else { panic!() };
        assert_eq!(
            (e.pid, e.path, e.file, e.held),
            (42, &b"/usr/bin/curl"[..], FileKey { ino: 7, dev: 9 }, true)
        );
        raw[..4].copy_from_slice(&kind::LIB_OPEN.to_ne_bytes());
        let Event::LibOpen(e) = decode(&raw).unwrap() else { panic!() };
        assert_eq!((e.pid, e.path), (42, &b"/usr/bin/curl"[..]));
        assert!(decode(&raw[..30]).is_err(), "a file event shorter than its struct");
        // A shell line record shorter than its struct is refused, not read past.
        assert!(decode(&[4, 0, 0, 0, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn rejects_malformed_records() {
        assert!(matches!(decode(&[]), Err(DecodeError::TooShort(0))));
        assert!(matches!(decode(&[99, 0, 0, 0]), Err(DecodeError::UnknownKind(99))));
        assert!(matches!(decode(&[1, 0, 0, 0, 0]), Err(DecodeError::TooShort(5))));
        let raw = record(100, b"short");
        assert!(matches!(decode(&raw), Err(DecodeError::LengthBeyondRecord { len: 100, room: 5 })));
    }
}
