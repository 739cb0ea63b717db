//! JSON lines: one object per record, the fields documented in docs/json.md.

use std::io::{self, Write};

use base64_simd::STANDARD;
use serde::Serialize;

use super::{body_preview, lossy, Output, Style};
use crate::context::{CommandRecord, ExecRecord, HttpRecord, QueryRecord, TlsRecord};
use crate::events::flag;

pub struct JsonOutput<W: Write> {
    out: W,
    b64: String,
    /// A TLS record's fields before its data, serialized (reused).
    head: Vec<u8>,
    style: Style,
}

impl<W: Write> JsonOutput<W> {
    pub fn new(out: W, style: Style) -> Self {
        JsonOutput { out, b64: String::new(), head: Vec::new(), style }
    }
}

#[derive(Serialize)]
struct TlsJson<'a> {
    event: &'static str,
    time: String,
    pid: u32,
    tid: u32,
    uid: u32,
    comm: &'a str,
    library: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    library_version: Option<&'a str>,
    library_path: &'a str,
    function: &'a str,
    direction: &'a str,
    fd: Option<i32>,
    local: Option<String>,
    remote: Option<String>,
    conn: String,
    call_seq: u64,
    call_len: u32,
    offset: u32,
    len: usize,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    truncated: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    unreadable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    gap: Option<GapJson>,
    // `data_b64` follows, written by hand: see `JsonOutput::tls`.
}

/// Lost just before this record on its connection (see `context::gaps`).
#[derive(Serialize)]
struct GapJson {
    calls_lost: u64,
    bytes_lost: u64,
}

impl<W: Write> Output for JsonOutput<W> {
    fn tls(&mut self, r: &TlsRecord) -> io::Result<()> {
        self.b64.clear();
        // SIMD: with the escaping skipped below, encoding is most of what
        // the consumer spends per captured MiB.
        STANDARD.encode_append(r.data, &mut self.b64);
        let json = TlsJson {
            event: "tls",
            time: humantime::format_rfc3339_nanos(r.time).to_string(),
            pid: r.pid,
            tid: r.tid,
            uid: r.uid,
            comm: &r.comm,
            library: r.library,
            library_version: r.library_version,
            library_path: r.library_path,
            function: r.function,
            direction: r.direction.as_str(),
            fd: r.fd,
            local: r.local.map(|a| a.to_string()),
            remote: r.remote.map(|a| a.to_string()),
            conn: format!("{:#x}", r.conn),
            call_seq: r.call_seq,
            call_len: r.call_len,
            offset: r.offset,
            len: r.data.len(),
            truncated: r.flags & flag::TRUNCATED != 0,
            unreadable: r.flags & flag::FAULT != 0,
            gap: r.gap.map(|g| GapJson { calls_lost: g.calls_lost, bytes_lost: g.bytes_lost }),
        };
        // The payload is the bulk of the line. serde_json would check every
        // base64 character for escaping (a third of the consumer's CPU on a
        // stream); the base64 alphabet never needs any, so it goes in as is.
        self.head.clear();
        to_writer(&mut self.head, &json)?;
        self.head.pop(); // the closing brace
        self.out.write_all(&self.head)?;
        self.out.write_all(b",\"data_b64\":\"")?;
        self.out.write_all(self.b64.as_bytes())?;
        self.out.write_all(b"\"}\n")
    }

    fn command(&mut self, r: &CommandRecord) -> io::Result<()> {
        let c = r.command;
        let json = CommandJson {
            event: "command",
            time: humantime::format_rfc3339_nanos(c.time).to_string(),
            pid: c.pid,
            ppid: c.ppid,
            uid: c.uid,
            user: r.user,
            tty: &c.tty,
            shell: c.shell,
            shell_path: r.shell_path,
            command: &lossy(&c.text),
            command_b64: exact_if_not_utf8(&c.text),
            truncated: c.truncated,
            exit_status: c.exit_status,
        };
        self.line(&json)
    }

    fn exec(&mut self, r: &ExecRecord) -> io::Result<()> {
        let e = r.exec;
        let argv: Vec<_> = e.argv.iter().map(|a| lossy(a)).collect();
        let any_binary = e.argv.iter().any(|a| std::str::from_utf8(a).is_err());
        let json = ExecJson {
            event: "exec",
            time: humantime::format_rfc3339_nanos(e.time).to_string(),
            pid: e.pid,
            tid: e.tid,
            ppid: e.ppid,
            uid: e.uid,
            user: r.user,
            comm: &e.comm,
            filename: &lossy(&e.filename),
            argv,
            argv_b64: any_binary.then(|| e.argv.iter().map(|a| STANDARD.encode_to_string(a)).collect()),
            argv_truncated: e.argv_truncated,
            argv_changed: e.argv_changed,
            cwd: e.cwd.as_deref(),
            success: e.ret.map(|r| r == 0),
            error: e.ret.filter(|r| *r != 0).map(super::errno_name),
            errno: e.ret.filter(|r| *r != 0).map(|r| -r),
        };
        self.line(&json)
    }

    fn query(&mut self, r: &QueryRecord) -> io::Result<()> {
        let q = r.query;
        let json = QueryJson {
            event: "query",
            time: humantime::format_rfc3339_nanos(q.time).to_string(),
            server: q.server,
            pid: q.pid,
            tid: q.tid,
            user: r.user,
            database: r.database,
            client: r.client,
            command: q.command,
            statement_id: q.statement_id,
            text: &lossy(&q.text),
            text_b64: exact_if_not_utf8(&q.text),
            truncated: q.truncated,
            duration_us: q.duration.map(micros),
            success: q.success,
        };
        self.line(&json)
    }

    fn http(&mut self, r: &HttpRecord) -> io::Result<()> {
        let e = r.exchange;
        let c = r.connection;
        let limit = self.style.body_preview;
        let json = HttpJson {
            event: "http",
            time: humantime::format_rfc3339_nanos(e.request_time).to_string(),
            protocol: e.protocol.to_string(),
            method: e.method.as_deref(),
            scheme: e.scheme.as_deref(),
            authority: e.authority.as_deref(),
            path: e.path.as_deref(),
            status: e.status,
            request_headers: &e.request_headers,
            response_headers: &e.response_headers,
            request_body_size: e.request_body.raw_len,
            response_body_size: e.response_body.raw_len,
            request_body_decoded_size: e.request_body.decoded.as_ref().map(Vec::len),
            response_body_decoded_size: e.response_body.decoded.as_ref().map(Vec::len),
            request_body_preview: (limit > 0)
                .then(|| lossy(body_preview(&e.request_body, limit)).into_owned()),
            response_body_preview: (limit > 0)
                .then(|| lossy(body_preview(&e.response_body, limit)).into_owned()),
            latency_us: e.latency().map(micros),
            stream_id: e.stream_id,
            grpc: e.grpc.as_ref().map(|g| GrpcJson {
                status: g.status,
                message: g.message.as_deref(),
                request_messages: g.request_messages.len(),
                response_messages: g.response_messages.len(),
            }),
            notes: &e.notes,
            pid: c.pid,
            comm: &c.comm,
            library: c.library,
            local: c.local.map(|a| a.to_string()),
            remote: c.remote.map(|a| a.to_string()),
        };
        self.line(&json)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[derive(Serialize)]
struct HttpJson<'a> {
    event: &'static str,
    time: String,
    protocol: String,
    method: Option<&'a str>,
    scheme: Option<&'a str>,
    authority: Option<&'a str>,
    path: Option<&'a str>,
    status: Option<u16>,
    request_headers: &'a [(String, String)],
    response_headers: &'a [(String, String)],
    request_body_size: usize,
    response_body_size: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_body_decoded_size: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_body_decoded_size: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_body_preview: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_body_preview: Option<String>,
    latency_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_id: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    grpc: Option<GrpcJson<'a>>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    notes: &'a [String],
    pid: u32,
    comm: &'a str,
    library: &'a str,
    local: Option<String>,
    remote: Option<String>,
}

#[derive(Serialize)]
struct GrpcJson<'a> {
    status: Option<u32>,
    message: Option<&'a str>,
    request_messages: usize,
    response_messages: usize,
}

#[derive(Serialize)]
struct QueryJson<'a> {
    event: &'static str,
    time: String,
    server: &'a str,
    pid: u32,
    tid: u32,
    user: Option<&'a str>,
    database: Option<&'a str>,
    client: Option<&'a str>,
    command: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    statement_id: Option<u32>,
    text: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    text_b64: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    truncated: bool,
    duration_us: Option<f64>,
    success: Option<bool>,
}

impl<W: Write> JsonOutput<W> {
    fn line(&mut self, value: &impl Serialize) -> io::Result<()> {
        write_line(&mut self.out, value)
    }
}

fn write_line(out: &mut impl Write, value: &impl Serialize) -> io::Result<()> {
    to_writer(&mut *out, value)?;
    out.write_all(b"\n")
}

/// Compact JSON, with DEL and the C1 controls escaped too.
fn to_writer(out: &mut impl Write, value: &impl Serialize) -> serde_json::Result<()> {
    value.serialize(&mut serde_json::Serializer::with_formatter(out, TerminalSafe))
}

/// serde_json's compact format, except that DEL and the C1 controls
/// (U+007F-U+009F) are written as `\u` escapes. JSON allows them raw, but
/// the lines are also read by people (`tail -f`, `less`), and a terminal
/// acts on them (U+009B is CSI): they come from `comm`, paths, headers and
/// SQL, which any process on the host chooses. C0 controls, quotes and
/// backslashes serde_json escapes already.
struct TerminalSafe;

impl serde_json::ser::Formatter for TerminalSafe {
    fn write_string_fragment<W: ?Sized + Write>(&mut self, out: &mut W, fragment: &str) -> io::Result<()> {
        // DEL is the byte 0x7f; C1 characters are 0xc2 0x80..=0x9f in UTF-8.
        if !fragment.bytes().any(|b| b == 0x7f || b == 0xc2) {
            return out.write_all(fragment.as_bytes());
        }
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            if ('\u{7f}'..='\u{9f}').contains(&c) {
                out.write_all(&fragment.as_bytes()[start..i])?;
                write!(out, "\\u{:04x}", c as u32)?;
                start = i + c.len_utf8();
            }
        }
        out.write_all(&fragment.as_bytes()[start..])
    }
}

/// Microseconds with nanosecond resolution, as the JSON number of the
/// shortest decimal: nanoseconds / 1000 is rounded once (`110.682`), where
/// `as_secs_f64() * 1e6` rounds twice (`110.68199999999999`).
fn micros(d: std::time::Duration) -> f64 {
    d.as_nanos() as f64 / 1e3
}

fn exact_if_not_utf8(bytes: &[u8]) -> Option<String> {
    std::str::from_utf8(bytes).is_err().then(|| STANDARD.encode_to_string(bytes))
}

#[derive(Serialize)]
struct CommandJson<'a> {
    event: &'static str,
    time: String,
    pid: u32,
    ppid: u32,
    uid: u32,
    user: Option<&'a str>,
    tty: &'a str,
    shell: &'a str,
    shell_path: Option<&'a str>,
    command: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    command_b64: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    truncated: bool,
    exit_status: Option<i32>,
}

#[derive(Serialize)]
struct ExecJson<'a> {
    event: &'static str,
    time: String,
    pid: u32,
    tid: u32,
    ppid: u32,
    uid: u32,
    user: Option<&'a str>,
    comm: &'a str,
    filename: &'a str,
    argv: Vec<std::borrow::Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    argv_b64: Option<Vec<String>>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    argv_truncated: bool,
    /// The arguments differ from those read at the syscall's entry.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    argv_changed: bool,
    cwd: Option<&'a str>,
    success: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    errno: Option<i32>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::{gaps::Gap, Direction};

    fn tls_line(data: &[u8], gap: Option<Gap>) -> serde_json::Value {
        let mut out = Vec::new();
        let style = Style { format: super::super::Format::Json, hex: false, body_preview: 0 };
        let record = TlsRecord {
            time: std::time::UNIX_EPOCH,
            pid: 1,
            tid: 2,
            uid: 3,
            comm: "a \"quoted\"\ncomm".into(),
            library: "openssl",
            library_version: None,
            library_path: "/lib/libssl.so.3",
            function: "SSL_write",
            direction: Direction::Send,
            fd: None,
            local: None,
            remote: None,
            conn: 1,
            call_seq: 1,
            call_len: data.len() as u32,
            offset: 0,
            flags: 0,
            gap,
            data,
        };
        JsonOutput::new(&mut out, style).tls(&record).unwrap();
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1, "one line");
        assert!(out.ends_with(b"\"}\n"));
        serde_json::from_slice(&out).unwrap()
    }

    /// The payload is appended by hand after the serialized fields: the
    /// line stays one valid object, whatever the data and the fields.
    #[test]
    fn tls_lines_are_valid_json_with_the_exact_payload() {
        let all_bytes: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        for data in [&b""[..], b"x", b"\"}\n\\", &all_bytes] {
            let v = tls_line(data, Some(Gap { calls_lost: 1, bytes_lost: 2 }));
            assert_eq!(STANDARD.decode_to_vec(v["data_b64"].as_str().unwrap()).unwrap(), data);
            assert_eq!(v["len"], data.len());
            assert_eq!(v["gap"]["bytes_lost"], 2);
            assert_eq!(v["comm"], "a \"quoted\"\ncomm");
        }
        assert!(tls_line(b"y", None).get("gap").is_none());
    }

    #[test]
    fn micros_print_at_most_three_decimals() {
        for nanos in [110_682_000u64, 110_682, 1, 999, 1_000, 123_456_789_012, 3_000_000_007] {
            let d = std::time::Duration::from_nanos(nanos);
            let printed = serde_json::to_string(&micros(d)).unwrap();
            let decimals = printed.split_once('.').map_or(0, |(_, f)| f.len());
            assert!(decimals <= 3, "{nanos} ns printed as {printed}");
            assert_eq!((printed.parse::<f64>().unwrap() * 1e3).round() as u64, nanos, "{printed}");
        }
    }

    /// What a terminal would act on never reaches the line raw, and the
    /// value reads back the same.
    #[test]
    fn del_and_c1_controls_are_escaped() {
        let hostile = "a\u{7f}b\u{9b}31mc\u{85}\u{a0}\u{e9}\x1b]0;x\x07";
        let mut out = Vec::new();
        write_line(&mut out, &serde_json::json!({ "comm": hostile })).unwrap();
        let line = String::from_utf8(out).unwrap();
        assert_eq!(line, "{\"comm\":\"a\\u007fb\\u009b31mc\\u0085\u{a0}\u{e9}\\u001b]0;x\\u0007\"}\n");
        assert!(!line.chars().any(|c| c.is_control() && c != '\n'), "{line:?}");
        let back: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(back["comm"], hostile);
    }
}
