//! The events cleartap writes as JSON lines (docs/json.md), as types: the
//! one definition of each event's fields, their JSON names, order and
//! form. The JSON lines are an interface (fields are only ever added), so
//! the order of the fields here is the order on the wire: add new fields,
//! never move one.
//!
//! - `--format json` (`output::json`) serializes these, except TLS records,
//!   which `json::tls_line` writes by hand for speed; its tests hold that
//!   line to the bytes `TlsEvent` serializes to.
//! - The text output (`output::text`) formats these: a live record is made
//!   into its event (borrowing, nothing copied but a few small strings) and
//!   printed by the same function that prints an event read back.
//! - `cleartap tail` (`output::json_to_text`) reads an agent's lines back
//!   into `AgentEvent` (the event with the agent's `host` and `seq`).
//!
//! Strings are `Cow`: borrowed from the records when written, owned when
//! read back. Fields that are always written are required when read (an
//! `Option` one may be null or absent); fields written only when set
//! (`truncated`, `*_b64`, ...) read as their default when absent.
//!
//! Bytes that are not necessarily UTF-8 (a command, a statement, an
//! argument) are `Text`: lossy UTF-8 in JSON, exact bytes in memory, so the
//! live text output shows invalid bytes as `\xNN`; their exact bytes go
//! in the `*_b64` field beside them when they are not UTF-8.

use std::borrow::Cow;
use std::fmt;
use std::time::{Duration, SystemTime};

use base64_simd::STANDARD;
use httpdecode::Headers;
use serde::de::{self, Deserializer, Unexpected, Visitor};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};

use super::{body_preview, errno_name};
use crate::context::{CommandRecord, ExecRecord, HttpRecord, QueryRecord, TlsRecord};
use crate::events::flag;

/// One event, of the kind its `event` field names.
///
/// Read with the `event` tag (serde's internally tagged enum); written by
/// each kind's own type, whose `event` field is its tag: the tag is not
/// always the first field (`loss` events have had their fields in
/// alphabetical order from the start).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum Event<'a> {
    /// TLS plaintext (`cleartap tls`).
    Tls(TlsEvent<'a>),
    /// A shell command (`cleartap shell`).
    Command(CommandEvent<'a>),
    /// A program started (`cleartap exec`).
    Exec(ExecEvent<'a>),
    /// A SQL statement (`cleartap mysql`, `cleartap postgres`).
    Query(QueryEvent<'a>),
    /// A decoded HTTP exchange (`cleartap tls`).
    Http(HttpEvent<'a>),
    /// Events an agent could not keep.
    Loss(LossEvent<'a>),
}

impl Serialize for Event<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Event::Tls(e) => e.serialize(s),
            Event::Command(e) => e.serialize(s),
            Event::Exec(e) => e.serialize(s),
            Event::Query(e) => e.serialize(s),
            Event::Http(e) => e.serialize(s),
            Event::Loss(e) => e.serialize(s),
        }
    }
}

/// An event as `cleartap agent` publishes it: the event's fields after
/// `host` and `seq` (see `agent::pipeline::Numbering`, which writes them
/// in front of the event's line). Both are absent from `--format json`.
///
/// Read leniently: a `host` that is not a string or a `seq` that is not a
/// number reads as absent (the event is still shown, without them).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AgentEvent<'a> {
    #[serde(default, deserialize_with = "string_or_none")]
    pub host: Option<Cow<'a, str>>,
    #[serde(default, deserialize_with = "u64_or_none")]
    pub seq: Option<u64>,
    #[serde(flatten)]
    pub event: Event<'a>,
}

fn string_or_none<'de, 'a, D: Deserializer<'de>>(d: D) -> Result<Option<Cow<'a, str>>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Some(Cow::Owned(s)),
        _ => None,
    })
}

fn u64_or_none<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Ok(serde_json::Value::deserialize(d)?.as_u64())
}

/// The `event` field of each kind: written as its name, and read only as
/// its name (the enum's tag has been checked already when read through
/// `Event`, which leaves the field to its default).
pub mod tag {
    use serde::de::{Deserializer, Error, Unexpected};
    use serde::{Deserialize, Serialize, Serializer};

    macro_rules! tags {
        ($($name:ident = $value:literal;)*) => {$(
            #[doc = concat!("`\"", $value, "\"`")]
            #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
            pub struct $name;

            impl Serialize for $name {
                fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                    s.serialize_str($value)
                }
            }

            impl<'de> Deserialize<'de> for $name {
                fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                    let name = String::deserialize(d)?;
                    if name == $value {
                        Ok($name)
                    } else {
                        Err(D::Error::invalid_value(Unexpected::Str(&name), &$value))
                    }
                }
            }
        )*};
    }

    tags! {
        Tls = "tls";
        Command = "command";
        Exec = "exec";
        Query = "query";
        Http = "http";
        Loss = "loss";
    }
}

/// `event: "tls"`: one record of a TLS read or write (a call's bytes may
/// come as several records).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TlsEvent<'a> {
    #[serde(default)]
    pub event: tag::Tls,
    /// The call's return.
    pub time: Time,
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    pub comm: Cow<'a, str>,
    pub library: Cow<'a, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub library_version: Option<Cow<'a, str>>,
    pub library_path: Cow<'a, str>,
    pub function: Cow<'a, str>,
    /// `send` or `recv`.
    pub direction: Cow<'a, str>,
    pub fd: Option<i32>,
    /// `ip:port`; None when not an inet socket (or not known).
    pub local: Option<Cow<'a, str>>,
    pub remote: Option<Cow<'a, str>>,
    /// The connection's opaque id (`0x...`).
    pub conn: Cow<'a, str>,
    pub call_seq: u64,
    /// Bytes of the whole call.
    pub call_len: u32,
    /// Where this record's bytes start within the call.
    pub offset: u32,
    /// Bytes in this record.
    pub len: u64,
    #[serde(default, skip_serializing_if = "is_false")]
    pub truncated: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub unreadable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gap: Option<Gap>,
    pub data_b64: Base64<'a>,
}

/// What a connection lost just before a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    /// Whole calls of which nothing arrived.
    pub calls_lost: u64,
    /// Bytes missing at the end of the previous call.
    pub bytes_lost: u64,
}

/// `event: "command"`: a shell command line (lines joined with `\n`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandEvent<'a> {
    #[serde(default)]
    pub event: tag::Command,
    pub time: Time,
    pub pid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub user: Option<Cow<'a, str>>,
    /// `pts/N`; empty when none.
    pub tty: Cow<'a, str>,
    pub shell: Cow<'a, str>,
    pub shell_path: Option<Cow<'a, str>>,
    pub command: Text<'a>,
    /// The exact bytes, when they are not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_b64: Option<Base64<'a>>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub truncated: bool,
    pub exit_status: Option<i32>,
}

impl CommandEvent<'_> {
    /// The command as typed.
    pub fn exact(&self) -> &[u8] {
        exact(&self.command, self.command_b64.as_ref())
    }
}

/// `event: "exec"`: a program started, with the result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecEvent<'a> {
    #[serde(default)]
    pub event: tag::Exec,
    pub time: Time,
    pub pid: u32,
    pub tid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub user: Option<Cow<'a, str>>,
    /// The caller's command name.
    pub comm: Cow<'a, str>,
    pub filename: Text<'a>,
    /// The exact bytes of the file name, when they are not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename_b64: Option<Base64<'a>>,
    pub argv: Vec<Text<'a>>,
    /// The exact bytes of every argument, when one is not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argv_b64: Option<Vec<Base64<'a>>>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub argv_truncated: bool,
    /// The arguments differ from those read at the syscall's entry.
    #[serde(default, skip_serializing_if = "is_false")]
    pub argv_changed: bool,
    pub cwd: Option<Cow<'a, str>>,
    /// None when the result was not seen.
    pub success: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno: Option<i32>,
}

impl ExecEvent<'_> {
    /// The file name as the program was started: exact when `filename_b64` has it.
    pub fn exact_filename(&self) -> &[u8] {
        exact(&self.filename, self.filename_b64.as_ref())
    }

    /// The arguments as the program got them: exact when `argv_b64` has them.
    pub fn exact_argv(&self) -> Vec<&[u8]> {
        match &self.argv_b64 {
            Some(exact) => exact.iter().map(|a| &*a.0).collect(),
            None => self.argv.iter().map(|a| &*a.0).collect(),
        }
    }
}

/// `event: "query"`: a SQL statement (each execution of a prepared one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryEvent<'a> {
    #[serde(default)]
    pub event: tag::Query,
    /// The statement's start.
    pub time: Time,
    /// `mariadb`, `mysql` or `postgres`.
    pub server: Cow<'a, str>,
    pub pid: u32,
    pub tid: u32,
    pub user: Option<Cow<'a, str>>,
    pub database: Option<Cow<'a, str>>,
    /// PostgreSQL's client address.
    pub client: Option<Cow<'a, str>>,
    /// `query`, `prepare`, `execute` or `statement`.
    pub command: Cow<'a, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statement_id: Option<u32>,
    pub text: Text<'a>,
    /// The exact bytes, when they are not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_b64: Option<Base64<'a>>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub truncated: bool,
    /// Microseconds (`micros`); None when the end was not seen.
    pub duration_us: Option<f64>,
    pub success: Option<bool>,
}

impl QueryEvent<'_> {
    /// The statement as sent.
    pub fn exact(&self) -> &[u8] {
        exact(&self.text, self.text_b64.as_ref())
    }
}

/// `event: "http"`: a decoded request and its response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpEvent<'a> {
    #[serde(default)]
    pub event: tag::Http,
    /// The request's.
    pub time: Time,
    /// `HTTP/1.0`, `HTTP/1.1` or `HTTP/2`.
    pub protocol: Cow<'a, str>,
    pub method: Option<Cow<'a, str>>,
    pub scheme: Option<Cow<'a, str>>,
    pub authority: Option<Cow<'a, str>>,
    pub path: Option<Cow<'a, str>>,
    pub status: Option<u16>,
    /// `[name, value]` pairs, in order.
    pub request_headers: Cow<'a, Headers>,
    pub response_headers: Cow<'a, Headers>,
    /// Bytes on the wire, after de-chunking.
    pub request_body_size: u64,
    pub response_body_size: u64,
    /// Bytes decompressed, when they were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_body_decoded_size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_body_decoded_size: Option<u64>,
    /// The first `--body` bytes (decompressed when they were); None when
    /// `--body` is 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_body_preview: Option<Text<'a>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_body_preview: Option<Text<'a>>,
    /// Microseconds from the request to the first response byte.
    pub latency_us: Option<f64>,
    /// HTTP/2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_id: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcSummary<'a>>,
    /// What could not be decoded or was guessed.
    #[serde(default, skip_serializing_if = "<[String]>::is_empty")]
    pub notes: Cow<'a, [String]>,
    pub pid: u32,
    pub comm: Cow<'a, str>,
    pub library: Cow<'a, str>,
    pub local: Option<Cow<'a, str>>,
    pub remote: Option<Cow<'a, str>>,
}

/// An HTTP exchange's gRPC status and message counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GrpcSummary<'a> {
    pub status: Option<u32>,
    pub message: Option<Cow<'a, str>>,
    pub request_messages: u64,
    pub response_messages: u64,
}

/// `event: "loss"`: `count` events of `source` an agent dropped (its
/// spool was full), and why. Its fields are in alphabetical order, the
/// `event` tag among them, as the agent has always written them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossEvent<'a> {
    pub count: u64,
    #[serde(default)]
    pub event: tag::Loss,
    pub reason: Cow<'a, str>,
    pub source: Cow<'a, str>,
}

/// A wall-clock time: RFC 3339, UTC, nanoseconds
/// (`2026-11-26T10:00:00.123456789Z`); any RFC 3339 UTC time when read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Time(pub SystemTime);

impl Serialize for Time {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_nanos(self.0))
    }
}

impl<'de> Deserialize<'de> for Time {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = Cow::<str>::deserialize(d)?;
        humantime::parse_rfc3339(&text)
            .map(Time)
            .map_err(|_| de::Error::invalid_value(Unexpected::Str(&text), &"an RFC 3339 UTC time"))
    }
}

/// Bytes a JSON string shows as lossy UTF-8 (U+FFFD for what is not
/// UTF-8). Written from the exact bytes; read back, the string's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text<'a>(pub Cow<'a, [u8]>);

impl<'a> Text<'a> {
    pub fn borrowed(bytes: &'a [u8]) -> Self {
        Text(Cow::Borrowed(bytes))
    }
}

impl Serialize for Text<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&String::from_utf8_lossy(&self.0))
    }
}

impl<'de> Deserialize<'de> for Text<'_> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Text(Cow::Owned(String::deserialize(d)?.into_bytes())))
    }
}

/// Bytes as a standard base64 string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Base64<'a>(pub Cow<'a, [u8]>);

impl<'a> Base64<'a> {
    pub fn borrowed(bytes: &'a [u8]) -> Self {
        Base64(Cow::Borrowed(bytes))
    }
}

impl Serialize for Base64<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode_to_string(&self.0))
    }
}

impl<'de> Deserialize<'de> for Base64<'_> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Base64Visitor;
        impl Visitor<'_> for Base64Visitor {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a standard base64 string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<u8>, E> {
                STANDARD.decode_to_vec(v).map_err(|_| E::invalid_value(Unexpected::Str(v), &self))
            }
        }
        d.deserialize_str(Base64Visitor).map(|bytes| Base64(Cow::Owned(bytes)))
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn exact<'a>(text: &'a Text, b64: Option<&'a Base64>) -> &'a [u8] {
    b64.map_or(&text.0, |b| &b.0)
}

/// The exact bytes beside their lossy text, when that is not them.
fn exact_if_not_utf8(bytes: &[u8]) -> Option<Base64<'_>> {
    std::str::from_utf8(bytes).is_err().then(|| Base64::borrowed(bytes))
}

/// Microseconds with nanosecond resolution, as the JSON number of the
/// shortest decimal: nanoseconds / 1000 is rounded once (`110.682`), where
/// `as_secs_f64() * 1e6` rounds twice (`110.68199999999999`).
pub fn micros(d: Duration) -> f64 {
    d.as_nanos() as f64 / 1e3
}

fn address(addr: Option<std::net::SocketAddr>) -> Option<Cow<'static, str>> {
    addr.map(|a| {
        let mut text = Vec::with_capacity(24);
        push_address(&mut text, a);
        // Digits, dots, colons and brackets: always UTF-8.
        String::from_utf8(text).unwrap_or_default().into()
    })
}

/// `a` as its `Display` writes it: IPv4 without the formatting machinery
/// (every record and exchange names two addresses; `to_string` was about
/// 6% of the CPU of a capture of nginx), IPv6, with its zero-run compression,
/// through the standard library's.
pub(super) fn push_address(buf: &mut Vec<u8>, a: std::net::SocketAddr) {
    match a {
        std::net::SocketAddr::V4(a) => {
            let mut digits = itoa::Buffer::new();
            for (i, octet) in a.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    buf.push(b'.');
                }
                buf.extend_from_slice(digits.format(octet).as_bytes());
            }
            buf.push(b':');
            buf.extend_from_slice(digits.format(a.port()).as_bytes());
        }
        std::net::SocketAddr::V6(_) => {
            use std::io::Write;
            let _ = write!(buf, "{a}");
        }
    }
}

// The events of the capture's records.

impl<'a> TlsEvent<'a> {
    pub fn of(r: &'a TlsRecord) -> Self {
        TlsEvent {
            event: tag::Tls,
            time: Time(r.time),
            pid: r.pid,
            tid: r.tid,
            uid: r.uid,
            comm: Cow::Borrowed(&r.comm),
            library: Cow::Borrowed(r.library),
            library_version: r.library_version.map(Cow::Borrowed),
            library_path: Cow::Borrowed(r.library_path),
            function: Cow::Borrowed(r.function),
            direction: Cow::Borrowed(r.direction.as_str()),
            fd: r.fd,
            local: address(r.local),
            remote: address(r.remote),
            conn: Cow::Owned(format!("{:#x}", r.conn)),
            call_seq: r.call_seq,
            call_len: r.call_len,
            offset: r.offset,
            len: r.data.len() as u64,
            truncated: r.flags & flag::TRUNCATED != 0,
            unreadable: r.flags & flag::FAULT != 0,
            gap: r.gap.map(|g| Gap { calls_lost: g.calls_lost, bytes_lost: g.bytes_lost }),
            data_b64: Base64::borrowed(r.data),
        }
    }
}

impl<'a> CommandEvent<'a> {
    pub fn of(r: &CommandRecord<'a>) -> Self {
        let c = r.command;
        CommandEvent {
            event: tag::Command,
            time: Time(c.time),
            pid: c.pid,
            ppid: c.ppid,
            uid: c.uid,
            user: r.user.map(Cow::Borrowed),
            tty: Cow::Borrowed(&c.tty),
            shell: Cow::Borrowed(c.shell),
            shell_path: r.shell_path.map(Cow::Borrowed),
            command: Text::borrowed(&c.text),
            command_b64: exact_if_not_utf8(&c.text),
            truncated: c.truncated,
            exit_status: c.exit_status,
        }
    }
}

impl<'a> ExecEvent<'a> {
    pub fn of(r: &ExecRecord<'a>) -> Self {
        let e = r.exec;
        let any_binary = e.argv.iter().any(|a| std::str::from_utf8(a).is_err());
        let failed = e.ret.filter(|r| *r != 0);
        ExecEvent {
            event: tag::Exec,
            time: Time(e.time),
            pid: e.pid,
            tid: e.tid,
            ppid: e.ppid,
            uid: e.uid,
            user: r.user.map(Cow::Borrowed),
            comm: Cow::Borrowed(&e.comm),
            filename: Text::borrowed(&e.filename),
            filename_b64: exact_if_not_utf8(&e.filename),
            argv: e.argv.iter().map(|a| Text::borrowed(a)).collect(),
            argv_b64: any_binary.then(|| e.argv.iter().map(|a| Base64::borrowed(a)).collect()),
            argv_truncated: e.argv_truncated,
            argv_changed: e.argv_changed,
            cwd: e.cwd.as_deref().map(Cow::Borrowed),
            success: e.ret.map(|r| r == 0),
            error: failed.map(|r| errno_name(r).into()),
            errno: failed.map(|r| -r),
        }
    }
}

impl<'a> QueryEvent<'a> {
    pub fn of(r: &QueryRecord<'a>) -> Self {
        let q = r.query;
        QueryEvent {
            event: tag::Query,
            time: Time(q.time),
            server: Cow::Borrowed(q.server),
            pid: q.pid,
            tid: q.tid,
            user: r.user.map(Cow::Borrowed),
            database: r.database.map(Cow::Borrowed),
            client: r.client.map(Cow::Borrowed),
            command: Cow::Borrowed(q.command),
            statement_id: q.statement_id,
            text: Text::borrowed(&q.text),
            text_b64: exact_if_not_utf8(&q.text),
            truncated: q.truncated,
            duration_us: q.duration.map(micros),
            success: q.success,
        }
    }
}

impl<'a> HttpEvent<'a> {
    /// With the first `body_preview` bytes of each body (none when 0).
    pub fn of(r: &HttpRecord<'a>, body_preview_len: usize) -> Self {
        let (e, c) = (r.exchange, r.connection);
        let preview =
            |body| (body_preview_len > 0).then(|| Text::borrowed(body_preview(body, body_preview_len)));
        HttpEvent {
            event: tag::Http,
            time: Time(e.request_time),
            protocol: Cow::Owned(e.protocol.to_string()),
            method: e.method.as_deref().map(Cow::Borrowed),
            scheme: e.scheme.as_deref().map(Cow::Borrowed),
            authority: e.authority.as_deref().map(Cow::Borrowed),
            path: e.path.as_deref().map(Cow::Borrowed),
            status: e.status,
            request_headers: Cow::Borrowed(&e.request_headers),
            response_headers: Cow::Borrowed(&e.response_headers),
            request_body_size: e.request_body.raw_len as u64,
            response_body_size: e.response_body.raw_len as u64,
            request_body_decoded_size: e.request_body.decoded.as_ref().map(|d| d.len() as u64),
            response_body_decoded_size: e.response_body.decoded.as_ref().map(|d| d.len() as u64),
            request_body_preview: preview(&e.request_body),
            response_body_preview: preview(&e.response_body),
            latency_us: e.latency().map(micros),
            stream_id: e.stream_id,
            grpc: e.grpc.as_ref().map(|g| GrpcSummary {
                status: g.status,
                message: g.message.as_deref().map(Cow::Borrowed),
                request_messages: g.request_messages.len() as u64,
                response_messages: g.response_messages.len() as u64,
            }),
            notes: Cow::Borrowed(&e.notes),
            pid: c.pid,
            comm: Cow::Borrowed(&c.comm),
            library: Cow::Borrowed(c.library),
            local: address(c.local),
            remote: address(c.remote),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Written as `Display` writes them, IPv4 by hand included.
    #[test]
    fn addresses_are_written_as_display_writes_them() {
        let mut next = crate::discover::mutate::noise(0x5eed_add5);
        let mut addrs: Vec<std::net::SocketAddr> =
            ["0.0.0.0:0", "255.255.255.255:65535", "[::1]:443", "[fe80::1%2]:8080"]
                .iter()
                .map(|a| a.parse().unwrap())
                .collect();
        addrs.extend((0..1000).map(|_| {
            let (ip, port) = (next(), next());
            std::net::SocketAddr::from(((ip as u32).to_be_bytes(), port as u16 >> (port % 16)))
        }));
        for a in addrs {
            let mut written = Vec::new();
            push_address(&mut written, a);
            assert_eq!(String::from_utf8(written).unwrap(), a.to_string());
        }
    }

    #[test]
    fn micros_print_at_most_three_decimals() {
        for nanos in [110_682_000u64, 110_682, 1, 999, 1_000, 123_456_789_012, 3_000_000_007] {
            let d = Duration::from_nanos(nanos);
            let printed = serde_json::to_string(&micros(d)).unwrap();
            let decimals = printed.split_once('.').map_or(0, |(_, f)| f.len());
            assert!(decimals <= 3, "{nanos} ns printed as {printed}");
            assert_eq!((printed.parse::<f64>().unwrap() * 1e3).round() as u64, nanos, "{printed}");
        }
    }

    #[test]
    fn the_tag_is_checked_when_a_kind_is_read_alone() {
        let loss = r#"{"count":1,"event":"loss","reason":"r","source":"s"}"#;
        assert!(serde_json::from_str::<LossEvent>(loss).is_ok());
        assert!(serde_json::from_str::<LossEvent>(&loss.replace("\"loss\"", "\"tls\"")).is_err());
        let Event::Loss(e) = serde_json::from_str::<Event>(loss).unwrap() else { panic!() };
        assert_eq!(serde_json::to_string(&e).unwrap(), loss);
    }

    #[test]
    fn text_is_written_lossy_and_base64_exact() {
        let text = Text::borrowed(b"a\xffb");
        assert_eq!(serde_json::to_string(&text).unwrap(), "\"a\u{fffd}b\"");
        let b64 = Base64::borrowed(b"a\xffb");
        let json = serde_json::to_string(&b64).unwrap();
        assert_eq!(json, "\"Yf9i\"");
        assert_eq!(serde_json::from_str::<Base64>(&json).unwrap(), b64);
        assert!(serde_json::from_str::<Base64>("\"not base64!\"").is_err());
    }
}
