//! JSON lines: one object per record, the fields documented in docs/json.md.

use std::io::{self, Write};

use serde::Serialize;

use super::schema::{CommandEvent, ExecEvent, HttpEvent, QueryEvent};
use super::{Output, Style};
use crate::context::{CommandRecord, ExecRecord, HttpRecord, QueryRecord, TlsRecord};
use crate::events::flag;

pub struct JsonOutput<W: Write> {
    out: W,
    /// Whole lines not yet handed to `out`: written in one piece once past
    /// `WRITE_AT`, and at every flush. Records are built here in place
    /// (no per-record String or Vec), and `out` only ever sees whole
    /// lines, so a failed write never leaves half a record behind a
    /// complete one.
    buf: Vec<u8>,
    time: TimeCache,
    style: Style,
}

/// A write per MiB of lines: on a stream, the write system calls and the
/// page cache copy are most of the consumer's CPU, and fewer, larger writes
/// cost less per byte than 64 KiB ones.
const WRITE_AT: usize = 1 << 20;

impl<W: Write> JsonOutput<W> {
    /// `out` is written in pieces of about a MiB: it needs no buffer of its own.
    pub fn new(out: W, style: Style) -> Self {
        JsonOutput { out, buf: Vec::with_capacity(WRITE_AT + (64 << 10)), time: TimeCache::default(), style }
    }

    fn maybe_write(&mut self) -> io::Result<()> {
        if self.buf.len() >= WRITE_AT {
            self.write_out()?;
        }
        Ok(())
    }

    fn write_out(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            let result = self.out.write_all(&self.buf);
            self.buf.clear();
            result?;
        }
        Ok(())
    }
}

/// RFC 3339 with nanoseconds, as `humantime::format_rfc3339_nanos` writes
/// it, with the date and time of day formatted once per second: records
/// come thousands a second, and formatting the calendar date for each was a
/// tenth of the consumer's CPU per record.
#[derive(Default)]
struct TimeCache {
    secs: Option<u64>,
    /// `2026-12-05T11:02:56.000000000Z`
    text: [u8; 30],
}

impl TimeCache {
    fn format(&mut self, time: std::time::SystemTime) -> &[u8; 30] {
        let since = time.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let secs = since.as_secs();
        if self.secs != Some(secs) {
            let whole = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
            let text = humantime::format_rfc3339_nanos(whole).to_string();
            self.text.copy_from_slice(&text.as_bytes()[..30]);
            self.secs = Some(secs);
        }
        let mut nanos = since.subsec_nanos();
        for digit in self.text[20..29].iter_mut().rev() {
            *digit = b'0' + (nanos % 10) as u8;
            nanos /= 10;
        }
        &self.text
    }
}

/// Appends a JSON number.
fn number(buf: &mut Vec<u8>, n: impl itoa::Integer) {
    buf.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Appends a JSON string: as it is when nothing in it needs escaping (the
/// common case: a command name, a library path), else through serde_json
/// with DEL and the C1 controls escaped too (`TerminalSafe`).
fn string(buf: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\') {
        buf.push(b'"');
        buf.extend_from_slice(s.as_bytes());
        buf.push(b'"');
    } else {
        // Writing into a Vec cannot fail.
        let _ = to_writer(&mut *buf, &s);
    }
}

/// Appends `"ip:port"` (as `SocketAddr`'s Display writes it) or `null`.
fn address(buf: &mut Vec<u8>, addr: Option<std::net::SocketAddr>) {
    match addr {
        Some(std::net::SocketAddr::V4(a)) => {
            buf.push(b'"');
            for (i, octet) in a.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    buf.push(b'.');
                }
                number(buf, octet);
            }
            buf.push(b':');
            number(buf, a.port());
            buf.push(b'"');
        }
        // IPv6 needs its zero-run compression: the standard library's, rarely.
        Some(a) => {
            let _ = write!(buf, "\"{a}\"");
        }
        None => buf.extend_from_slice(b"null"),
    }
}

/// A TLS record as one JSON line (`schema::TlsEvent`, docs/json.md),
/// appended to `buf`. Hand-written, not through serde: this runs for every
/// record, and serializing a struct of its fields (their strings checked
/// for escapes one character at a time, the time, addresses and handle
/// formatted into Strings first) cost more than the rest of the consumer.
/// The tests hold it to the bytes `TlsEvent` serializes to.
fn tls_line(buf: &mut Vec<u8>, time: &mut TimeCache, r: &TlsRecord) {
    buf.extend_from_slice(b"{\"event\":\"tls\",\"time\":\"");
    buf.extend_from_slice(time.format(r.time));
    buf.extend_from_slice(b"\",\"pid\":");
    number(buf, r.pid);
    buf.extend_from_slice(b",\"tid\":");
    number(buf, r.tid);
    buf.extend_from_slice(b",\"uid\":");
    number(buf, r.uid);
    buf.extend_from_slice(b",\"comm\":");
    string(buf, &r.comm);
    buf.extend_from_slice(b",\"library\":");
    string(buf, r.library);
    if let Some(version) = r.library_version {
        buf.extend_from_slice(b",\"library_version\":");
        string(buf, version);
    }
    buf.extend_from_slice(b",\"library_path\":");
    string(buf, r.library_path);
    buf.extend_from_slice(b",\"function\":");
    string(buf, r.function);
    buf.extend_from_slice(b",\"direction\":");
    string(buf, r.direction.as_str());
    buf.extend_from_slice(b",\"fd\":");
    match r.fd {
        Some(fd) => number(buf, fd),
        None => buf.extend_from_slice(b"null"),
    }
    buf.extend_from_slice(b",\"local\":");
    address(buf, r.local);
    buf.extend_from_slice(b",\"remote\":");
    address(buf, r.remote);
    let _ = write!(buf, ",\"conn\":\"{:#x}\",\"call_seq\":", r.conn);
    number(buf, r.call_seq);
    buf.extend_from_slice(b",\"call_len\":");
    number(buf, r.call_len);
    buf.extend_from_slice(b",\"offset\":");
    number(buf, r.offset);
    buf.extend_from_slice(b",\"len\":");
    number(buf, r.data.len());
    if r.flags & flag::TRUNCATED != 0 {
        buf.extend_from_slice(b",\"truncated\":true");
    }
    if r.flags & flag::FAULT != 0 {
        buf.extend_from_slice(b",\"unreadable\":true");
    }
    if let Some(g) = r.gap {
        buf.extend_from_slice(b",\"gap\":{\"calls_lost\":");
        number(buf, g.calls_lost);
        buf.extend_from_slice(b",\"bytes_lost\":");
        number(buf, g.bytes_lost);
        buf.push(b'}');
    }
    // The payload is the bulk of the line: base64 (SIMD) straight into the
    // line; its alphabet never needs escaping.
    buf.extend_from_slice(b",\"data_b64\":\"");
    base64_simd::STANDARD.encode_append(r.data, buf);
    buf.extend_from_slice(b"\"}\n");
}

impl<W: Write> Output for JsonOutput<W> {
    fn tls(&mut self, r: &TlsRecord) -> io::Result<()> {
        tls_line(&mut self.buf, &mut self.time, r);
        self.maybe_write()
    }

    fn command(&mut self, r: &CommandRecord) -> io::Result<()> {
        self.line(&CommandEvent::of(r))
    }

    fn exec(&mut self, r: &ExecRecord) -> io::Result<()> {
        self.line(&ExecEvent::of(r))
    }

    fn query(&mut self, r: &QueryRecord) -> io::Result<()> {
        self.line(&QueryEvent::of(r))
    }

    fn http(&mut self, r: &HttpRecord) -> io::Result<()> {
        self.line(&HttpEvent::of(r, self.style.body_preview))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.write_out()?;
        self.out.flush()
    }
}

impl<W: Write> JsonOutput<W> {
    fn line(&mut self, value: &impl Serialize) -> io::Result<()> {
        write_line(&mut self.buf, value)?;
        self.maybe_write()
    }
}

pub(crate) fn write_line(out: &mut impl Write, value: &impl Serialize) -> io::Result<()> {
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

#[cfg(test)]
mod tests {
    use base64_simd::STANDARD;

    use super::*;
    use crate::assembly::gaps::Gap;
    use crate::context::Direction;
    use crate::output::schema::{Event, TlsEvent};

    fn style() -> Style {
        Style { format: super::super::Format::Json, hex: false, body_preview: 0 }
    }

    /// The record's line, through the JSON output.
    fn line(record: &TlsRecord) -> Vec<u8> {
        let mut out = Vec::new();
        let mut json = JsonOutput::new(&mut out, style());
        json.tls(record).unwrap();
        json.flush().unwrap();
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1, "one line");
        assert!(out.ends_with(b"\"}\n"));
        out
    }

    /// The hand-written line is the line the schema's `TlsEvent` serializes
    /// to, byte for byte, and reads back as that event: the two cannot
    /// drift apart.
    #[track_caller]
    fn assert_schema_line(record: &TlsRecord) -> TlsEvent<'static> {
        let line = line(record);
        let event = TlsEvent::of(record);
        let mut serialized = Vec::new();
        write_line(&mut serialized, &event).unwrap();
        assert_eq!(String::from_utf8_lossy(&line), String::from_utf8_lossy(&serialized));
        assert_eq!(line, serialized);
        let Event::Tls(read) = serde_json::from_slice::<Event>(&line).unwrap() else { panic!("not tls") };
        assert_eq!(read, event);
        read
    }

    fn tls_line(data: &[u8], gap: Option<Gap>) -> TlsEvent<'static> {
        let record = TlsRecord {
            tid: 2,
            uid: 3,
            comm: "a \"quoted\"\ncomm".into(),
            call_len: data.len() as u32,
            gap,
            data,
            ..tls_record_for_escapes()
        };
        assert_schema_line(&record)
    }

    /// The fields written by hand are the schema's: humantime's RFC 3339
    /// (through the per-second cache), `SocketAddr`'s Display, `{:#x}`,
    /// strings escaped as serde_json and `TerminalSafe` escape them.
    #[test]
    fn hand_written_fields_are_the_schema_s() {
        use std::net::SocketAddr;
        let times =
            [0u64, 1, 999_999_999, 1_000_000_000, 1_764_929_000_123_456_789, 4_102_444_799_999_999_999];
        let addrs: [Option<SocketAddr>; 5] = [
            None,
            Some("127.0.0.1:443".parse().unwrap()),
            Some("255.0.10.1:0".parse().unwrap()),
            Some("[fe80::1:2]:65535".parse().unwrap()),
            Some("[::ffff:10.0.0.1]:8443".parse().unwrap()),
        ];
        let comms = ["curl", "a \"q\"\\\n\u{7f}\u{9b}\u{e9}", "", "\u{1b}]0;x\u{7}\u{202e}"];
        let mut time = TimeCache::default();
        for (i, nanos) in times.into_iter().enumerate() {
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(nanos);
            let flags = [flag::TRUNCATED | flag::FAULT, 0, flag::TRUNCATED, flag::FAULT][i % 4];
            let record = TlsRecord {
                time: t,
                pid: u32::MAX,
                tid: 0,
                uid: 1000,
                comm: comms[i % comms.len()].into(),
                library: "gnutls",
                library_version: (i % 2 == 0).then_some("3.7.9"),
                library_path: "/usr/lib/x86_64-linux-gnu/libgnutls.so.30",
                function: "crypto/tls.(*Conn).Read",
                direction: if i % 3 == 0 { Direction::Send } else { Direction::Recv },
                fd: (i % 2 == 1).then_some(-1i32.wrapping_add(i as i32)),
                local: addrs[i % addrs.len()],
                remote: addrs[(i + 1) % addrs.len()],
                conn: 0xdead_beef_u64 << (i * 5),
                call_seq: u64::MAX - i as u64,
                call_len: u32::MAX - i as u32,
                offset: 7,
                flags,
                gap: (i % 3 == 1).then_some(Gap { calls_lost: i as u64, bytes_lost: u64::MAX }),
                data: b"hello",
            };
            let event = assert_schema_line(&record);
            assert_eq!(event.time.0, t, "the time reads back to the nanosecond");
            assert_eq!(&time.format(t)[..], humantime::format_rfc3339_nanos(t).to_string().as_bytes());
            assert_eq!(event.local.as_deref(), record.local.map(|a| a.to_string()).as_deref());
            assert_eq!(event.conn, format!("{:#x}", record.conn));
        }
        // What a terminal would act on is escaped in the line itself.
        let record = TlsRecord { comm: comms[1].into(), ..tls_record_for_escapes() };
        let line = String::from_utf8(line(&record)).unwrap();
        assert!(line.contains(r#""comm":"a \"q\"\\\n\u007f\u009bé""#), "{line}");
    }

    fn tls_record_for_escapes() -> TlsRecord<'static> {
        TlsRecord {
            time: std::time::UNIX_EPOCH,
            pid: 1,
            tid: 1,
            uid: 0,
            comm: String::new(),
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
            call_len: 0,
            offset: 0,
            flags: 0,
            gap: None,
            data: b"",
        }
    }

    /// The payload is appended by hand after the serialized fields: the
    /// line stays one valid object, whatever the data and the fields.
    #[test]
    fn tls_lines_are_valid_json_with_the_exact_payload() {
        let all_bytes: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        for data in [&b""[..], b"x", b"\"}\n\\", &all_bytes] {
            let e = tls_line(data, Some(Gap { calls_lost: 1, bytes_lost: 2 }));
            assert_eq!(e.data_b64.0, data);
            assert_eq!(e.len, data.len() as u64);
            assert_eq!(e.gap.map(|g| g.bytes_lost), Some(2));
            assert_eq!(e.comm, "a \"quoted\"\ncomm");
        }
        assert!(tls_line(b"y", None).gap.is_none());
        let line = line(&TlsRecord { data: b"\xff\x00", ..tls_record_for_escapes() });
        let b64 = STANDARD.encode_to_string(b"\xff\x00");
        assert!(line.ends_with(format!(",\"data_b64\":\"{b64}\"}}\n").as_bytes()));
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
        let back: std::collections::BTreeMap<String, String> = serde_json::from_str(&line).unwrap();
        assert_eq!(back["comm"], hostile);
    }
}
