//! Human-readable output: a header line per record, then the payload with
//! non-printable bytes escaped (or a hex dump with `--hex`).
//!
//! Every string shown, not only payloads, comes from a process or a peer
//! and goes through `escape` (a process name, a header, a path, a shell
//! line): nothing printed here can drive the reader's terminal.
//!
//! Each kind of record is laid out from a view of plain values (`TlsView`,
//! `ExecView`, ...): live records fill it here, and `cleartap tail` fills
//! it from the JSON events an agent published, so both print the same
//! layout from the same code.

use std::borrow::Cow;
use std::io::{self, Write};
use std::time::{Duration, SystemTime};

use super::escape::{self, Layout};
use super::{addr_or_dash, body_preview, errno_name, Output, Style};
use crate::context::{CommandRecord, ExecRecord, HttpRecord, QueryRecord, TlsRecord};

pub struct TextOutput<W: Write> {
    out: W,
    hex: bool,
    style: Style,
}

impl<W: Write> TextOutput<W> {
    pub fn new(out: W, style: Style) -> Self {
        TextOutput { out, hex: style.hex, style }
    }
}

/// One TLS record as text shows it.
pub struct TlsView<'a> {
    pub time: SystemTime,
    pub comm: &'a str,
    pub pid: u64,
    pub tid: u64,
    pub uid: u64,
    pub library: &'a str,
    pub function: &'a str,
    /// `send` or `recv`.
    pub direction: &'a str,
    pub fd: Option<i64>,
    /// An address, or `-`.
    pub local: &'a str,
    pub remote: &'a str,
    pub call_len: u64,
    pub offset: u64,
    /// Calls and bytes lost just before this record on its connection.
    pub gap: Option<(u64, u64)>,
    pub data: &'a [u8],
}

pub fn write_tls(out: &mut impl Write, r: &TlsView, hex: bool) -> io::Result<()> {
    if let Some((calls, bytes)) = r.gap {
        writeln!(
            out,
            "-- gap on this connection: {calls} calls and {bytes} bytes of the previous call lost --"
        )?;
    }
    let arrow = if r.direction == "send" { "->" } else { "<-" };
    let chunk = if r.data.len() as u64 == r.call_len {
        String::new()
    } else {
        format!(" (bytes {}..{} of {})", r.offset, r.offset + r.data.len() as u64, r.call_len)
    };
    writeln!(
        out,
        "{} {}[{}/{}] uid={} {} {} {} fd={} {} {} {} len={}{}",
        humantime::format_rfc3339_micros(r.time),
        escape::line(r.comm),
        r.pid,
        r.tid,
        r.uid,
        escape::line(r.library),
        escape::line(r.function),
        escape::line(r.direction),
        r.fd.map_or_else(|| "?".to_string(), |fd| fd.to_string()),
        escape::line(r.local),
        arrow,
        escape::line(r.remote),
        r.data.len(),
        chunk,
    )?;
    if hex {
        hex_dump(out, r.data)
    } else {
        write_escaped(out, r.data)
    }
}

/// One shell command as text shows it.
pub struct CommandView<'a> {
    pub time: SystemTime,
    pub shell: &'a str,
    pub pid: u64,
    pub ppid: u64,
    pub uid: u64,
    pub user: Option<&'a str>,
    pub tty: &'a str,
    pub exit_status: Option<i64>,
    pub truncated: bool,
    /// As typed: not necessarily UTF-8.
    pub text: Cow<'a, [u8]>,
}

pub fn write_command(out: &mut impl Write, c: &CommandView) -> io::Result<()> {
    writeln!(
        out,
        "{} {}[{}] ppid={} uid={}({}) tty={} status={}{}",
        humantime::format_rfc3339_micros(c.time),
        escape::line(c.shell),
        c.pid,
        c.ppid,
        c.uid,
        escape::line(c.user.unwrap_or("?")),
        escape::line(if c.tty.is_empty() { "-" } else { c.tty }),
        c.exit_status.map_or_else(|| "?".to_string(), |s| s.to_string()),
        if c.truncated { " (truncated)" } else { "" },
    )?;
    write_indented(out, &c.text)
}

/// One program start as text shows it.
pub struct ExecView<'a> {
    pub time: SystemTime,
    pub comm: &'a str,
    pub pid: u64,
    pub ppid: u64,
    pub uid: u64,
    pub user: Option<&'a str>,
    /// Not necessarily UTF-8, as each of `argv`.
    pub filename: Cow<'a, [u8]>,
    pub argv: Vec<Cow<'a, [u8]>>,
    pub argv_truncated: bool,
    /// `ok`, the error's name, or `?` when the result was not seen.
    pub result: String,
}

pub fn write_exec(out: &mut impl Write, e: &ExecView) -> io::Result<()> {
    let argv: Vec<String> = e.argv.iter().map(|a| escape::quoted(a)).collect();
    writeln!(
        out,
        "{} exec {}[{}] ppid={} uid={}({}) {} [{}{}] = {}",
        humantime::format_rfc3339_micros(e.time),
        escape::line(e.comm),
        e.pid,
        e.ppid,
        e.uid,
        escape::line(e.user.unwrap_or("?")),
        escape::escape(&e.filename, Layout::Line),
        argv.join(", "),
        if e.argv_truncated { ", ..." } else { "" },
        escape::line(&e.result),
    )
}

/// One database statement as text shows it.
pub struct QueryView<'a> {
    pub time: SystemTime,
    pub server: &'a str,
    pub pid: u64,
    pub tid: u64,
    pub user: Option<&'a str>,
    pub database: Option<&'a str>,
    pub command: &'a str,
    pub statement_id: Option<u64>,
    pub success: Option<bool>,
    pub duration: Option<Duration>,
    pub truncated: bool,
    /// As sent: not necessarily UTF-8.
    pub text: Cow<'a, [u8]>,
}

pub fn write_query(out: &mut impl Write, q: &QueryView) -> io::Result<()> {
    let outcome = match q.success {
        Some(true) => "ok",
        Some(false) => "FAILED",
        None => "?",
    };
    writeln!(
        out,
        "{} {}[{}/{}] user={} db={} {}{} {} {}{}",
        humantime::format_rfc3339_micros(q.time),
        escape::line(q.server),
        q.pid,
        q.tid,
        escape::line(q.user.unwrap_or("?")),
        escape::line(q.database.unwrap_or("?")),
        escape::line(q.command),
        q.statement_id.map_or(String::new(), |id| format!(" #{id}")),
        outcome,
        q.duration.map_or_else(|| "?".to_string(), |d| format!("{:.3}ms", d.as_secs_f64() * 1e3)),
        if q.truncated { " (truncated)" } else { "" },
    )?;
    write_indented(out, &q.text)
}

/// One HTTP exchange as text shows it.
pub struct HttpView<'a> {
    pub time: SystemTime,
    pub protocol: &'a str,
    pub comm: &'a str,
    pub pid: u64,
    pub local: &'a str,
    pub remote: &'a str,
    pub method: Option<&'a str>,
    pub scheme: Option<&'a str>,
    pub authority: Option<&'a str>,
    pub path: Option<&'a str>,
    pub status: Option<u64>,
    pub latency: Option<Duration>,
    pub request_headers: Vec<(&'a str, &'a str)>,
    pub response_headers: Vec<(&'a str, &'a str)>,
    pub request_body: BodyView<'a>,
    pub response_body: BodyView<'a>,
    pub notes: Vec<&'a str>,
}

/// A body: its size on the wire, decompressed, and the preview shown.
pub struct BodyView<'a> {
    pub size: u64,
    pub decoded_size: Option<u64>,
    pub preview: &'a [u8],
}

pub fn write_http(out: &mut impl Write, e: &HttpView) -> io::Result<()> {
    let url = format!(
        "{}://{}{}",
        escape::line(e.scheme.unwrap_or("https")),
        escape::line(e.authority.unwrap_or("?")),
        escape::line(e.path.unwrap_or(""))
    );
    let latency = e.latency.map_or_else(|| "?".to_string(), |d| format!("{:.3} ms", d.as_secs_f64() * 1e3));
    writeln!(
        out,
        "{} {} {}[{}] {} -> {}",
        humantime::format_rfc3339_micros(e.time),
        escape::line(e.protocol),
        escape::line(e.comm),
        e.pid,
        escape::line(e.local),
        escape::line(e.remote)
    )?;
    let status = e.status.map_or_else(|| "?".to_string(), |s| s.to_string());
    writeln!(out, "  {} {} -> {} ({})", escape::line(e.method.unwrap_or("?")), url, status, latency)?;
    for (name, value) in &e.request_headers {
        writeln!(out, "  > {}: {}", escape::line(name), escape::line(value))?;
    }
    for (name, value) in &e.response_headers {
        writeln!(out, "  < {}: {}", escape::line(name), escape::line(value))?;
    }
    for (label, body) in [("request", &e.request_body), ("response", &e.response_body)] {
        write_body(out, label, body)?;
    }
    for note in &e.notes {
        writeln!(out, "  note: {}", escape::line(note))?;
    }
    Ok(())
}

fn write_body(out: &mut impl Write, label: &str, body: &BodyView) -> io::Result<()> {
    if body.size == 0 {
        return Ok(());
    }
    let decoded = body.decoded_size.map_or(String::new(), |d| format!(", {d} decoded"));
    writeln!(out, "  {label} body: {} bytes{decoded}", body.size)?;
    if !body.preview.is_empty() {
        for line in escape::escape(body.preview, Layout::Block).lines() {
            writeln!(out, "  | {line}")?;
        }
    }
    Ok(())
}

/// A command's or statement's text, escaped, each line indented.
fn write_indented(out: &mut impl Write, text: &[u8]) -> io::Result<()> {
    for line in escape::escape(text, Layout::Block).lines() {
        writeln!(out, "    {line}")?;
    }
    Ok(())
}

impl<W: Write> Output for TextOutput<W> {
    fn tls(&mut self, r: &TlsRecord) -> io::Result<()> {
        let (local, remote) = (addr_or_dash(r.local), addr_or_dash(r.remote));
        let view = TlsView {
            time: r.time,
            comm: &r.comm,
            pid: r.pid.into(),
            tid: r.tid.into(),
            uid: r.uid.into(),
            library: r.library,
            function: r.function,
            direction: r.direction.as_str(),
            fd: r.fd.map(i64::from),
            local: &local,
            remote: &remote,
            call_len: r.call_len.into(),
            offset: r.offset.into(),
            gap: r.gap.map(|g| (g.calls_lost, g.bytes_lost)),
            data: r.data,
        };
        write_tls(&mut self.out, &view, self.hex)
    }

    fn command(&mut self, r: &CommandRecord) -> io::Result<()> {
        let c = r.command;
        let view = CommandView {
            time: c.time,
            shell: c.shell,
            pid: c.pid.into(),
            ppid: c.ppid.into(),
            uid: c.uid.into(),
            user: r.user,
            tty: &c.tty,
            exit_status: c.exit_status.map(i64::from),
            truncated: c.truncated,
            text: Cow::Borrowed(&c.text),
        };
        write_command(&mut self.out, &view)
    }

    fn exec(&mut self, r: &ExecRecord) -> io::Result<()> {
        let e = r.exec;
        let view = ExecView {
            time: e.time,
            comm: &e.comm,
            pid: e.pid.into(),
            ppid: e.ppid.into(),
            uid: e.uid.into(),
            user: r.user,
            filename: Cow::Borrowed(&e.filename),
            argv: e.argv.iter().map(|a| Cow::Borrowed(a.as_slice())).collect(),
            argv_truncated: e.argv_truncated,
            result: e.ret.map_or_else(|| "?".to_string(), errno_name),
        };
        write_exec(&mut self.out, &view)
    }

    fn query(&mut self, r: &QueryRecord) -> io::Result<()> {
        let q = r.query;
        let view = QueryView {
            time: q.time,
            server: q.server,
            pid: q.pid.into(),
            tid: q.tid.into(),
            user: r.user,
            database: r.database,
            command: q.command,
            statement_id: q.statement_id.map(u64::from),
            success: q.success,
            duration: q.duration,
            truncated: q.truncated,
            text: Cow::Borrowed(&q.text),
        };
        write_query(&mut self.out, &view)
    }

    fn http(&mut self, r: &HttpRecord) -> io::Result<()> {
        let (e, c) = (r.exchange, r.connection);
        let (local, remote) = (addr_or_dash(c.local), addr_or_dash(c.remote));
        let protocol = e.protocol.to_string();
        let limit = self.style.body_preview;
        let view = HttpView {
            time: e.request_time,
            protocol: &protocol,
            comm: &c.comm,
            pid: c.pid.into(),
            local: &local,
            remote: &remote,
            method: e.method.as_deref(),
            scheme: e.scheme.as_deref(),
            authority: e.authority.as_deref(),
            path: e.path.as_deref(),
            status: e.status.map(u64::from),
            latency: e.latency(),
            request_headers: header_pairs(&e.request_headers),
            response_headers: header_pairs(&e.response_headers),
            request_body: body_view(&e.request_body, limit),
            response_body: body_view(&e.response_body, limit),
            notes: e.notes.iter().map(String::as_str).collect(),
        };
        write_http(&mut self.out, &view)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

fn header_pairs(headers: &[(String, String)]) -> Vec<(&str, &str)> {
    headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect()
}

fn body_view(body: &httpdecode::Body, limit: usize) -> BodyView<'_> {
    BodyView {
        size: body.raw_len as u64,
        decoded_size: body.decoded.as_ref().map(|d| d.len() as u64),
        preview: body_preview(body, limit),
    }
}

/// A payload as `escape` shows a block of text (printable text, newlines
/// and tabs as they are, controls and invalid UTF-8 escaped), ending with a
/// newline.
pub fn write_escaped(out: &mut impl Write, data: &[u8]) -> io::Result<()> {
    escape::write(out, data, Layout::Block)?;
    if data.last() != Some(&b'\n') {
        out.write_all(b"\n")?;
    }
    Ok(())
}

pub fn hex_dump(out: &mut impl Write, data: &[u8]) -> io::Result<()> {
    for (row, chunk) in data.chunks(16).enumerate() {
        write!(out, "{:08x} ", row * 16)?;
        for i in 0..16 {
            match chunk.get(i) {
                Some(b) => write!(out, " {b:02x}")?,
                None => out.write_all(b"   ")?,
            }
        }
        out.write_all(b"  |")?;
        for &b in chunk {
            let c = if (0x20..0x7f).contains(&b) { b } else { b'.' };
            out.write_all(&[c])?;
        }
        out.write_all(b"|\n")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escaped(data: &[u8]) -> String {
        let mut v = Vec::new();
        write_escaped(&mut v, data).unwrap();
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn escapes_control_and_high_bytes() {
        assert_eq!(escaped(b"GET / HTTP/1.1\r\n"), "GET / HTTP/1.1\\r\n");
        assert_eq!(escaped(b"a\x00b\xff"), "a\\x00b\\xff\n");
        assert_eq!(escaped(b"\x7f\x80\xc3\xa9"), "\\x7f\\x80\u{e9}\n");
        assert_eq!(escaped(b""), "\n");
    }

    #[test]
    fn tls_layout_names_process_call_connection_and_chunk() {
        let mut out = Vec::new();
        let view = TlsView {
            time: std::time::UNIX_EPOCH + Duration::from_micros(1_764_140_000_123_456),
            comm: "curl",
            pid: 7,
            tid: 8,
            uid: 0,
            library: "openssl",
            function: "SSL_read_ex",
            direction: "recv",
            fd: None,
            local: "127.0.0.1:5000",
            remote: "-",
            call_len: 10,
            offset: 4,
            gap: Some((1, 2)),
            data: b"abc\r\n",
        };
        write_tls(&mut out, &view, false).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "-- gap on this connection: 1 calls and 2 bytes of the previous call lost --\n\
             2025-11-26T06:53:20.123456Z curl[7/8] uid=0 openssl SSL_read_ex recv fd=? 127.0.0.1:5000 <- - \
             len=5 (bytes 4..9 of 10)\nabc\\r\n"
        );
    }

    fn at() -> SystemTime {
        std::time::UNIX_EPOCH + Duration::from_micros(1_764_140_000_123_456)
    }

    fn tls_view(comm: &str) -> TlsView<'_> {
        TlsView {
            time: at(),
            comm,
            pid: 7,
            tid: 7,
            uid: 0,
            library: "openssl",
            function: "SSL_write",
            direction: "send",
            fd: Some(3),
            local: "-",
            remote: "-",
            call_len: 0,
            offset: 0,
            gap: None,
            data: b"",
        }
    }

    /// No byte a terminal acts on reaches the output.
    #[track_caller]
    fn assert_inert(text: &str) {
        for c in text.chars() {
            assert!(c == '\n' || c == '\t' || !c.is_control(), "{c:?} in {text:?}");
        }
    }

    #[test]
    fn hostile_comm() {
        let mut out = Vec::new();
        write_tls(&mut out, &tls_view("\x1b]0;x\x07\u{9b}2J\r"), false).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text.lines().next().unwrap(),
            "2025-11-26T06:53:20.123456Z \\x1b]0;x\\x07\\u{9b}2J\\r[7/7] uid=0 openssl SSL_write send fd=3 - -> - len=0"
        );
        assert_inert(&text);
    }

    #[test]
    fn payloads_keep_text_and_escape_the_rest() {
        // Valid UTF-8 reads as text, a backslash doubled (both changed from
        // the byte-wise escaping before the one escaper).
        assert_eq!(escaped("héllo \\x1b\x1b[31m\u{9b}\t\n".as_bytes()), "héllo \\\\x1b\\x1b[31m\\u{9b}\t\n");
        let mut out = Vec::new();
        write_tls(&mut out, &TlsView { data: b"\x1b]52;c;aGk=\x07\r\xff", ..tls_view("curl") }, false)
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with("\n\\x1b]52;c;aGk=\\x07\\r\\xff\n"), "{text:?}");
        assert_inert(&text);
    }

    fn http_view<'a>(
        method: &'a str,
        path: &'a str,
        request_headers: Vec<(&'a str, &'a str)>,
        response_headers: Vec<(&'a str, &'a str)>,
    ) -> HttpView<'a> {
        let none = || BodyView { size: 0, decoded_size: None, preview: b"" };
        HttpView {
            time: at(),
            protocol: "HTTP/1.1",
            comm: "curl",
            pid: 7,
            local: "127.0.0.1:1",
            remote: "127.0.0.1:2",
            method: Some(method),
            scheme: Some("https"),
            authority: Some("example.com"),
            path: Some(path),
            status: Some(200),
            latency: None,
            request_headers,
            response_headers,
            request_body: none(),
            response_body: none(),
            notes: Vec::new(),
        }
    }

    fn http_text(view: &HttpView) -> String {
        let mut out = Vec::new();
        write_http(&mut out, view).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_inert(&text);
        text
    }

    #[test]
    fn hostile_method_and_path() {
        let text = http_text(&http_view("G\x1b[2JET", "/a\x1b]0;pwned\x07?b=\r\n", vec![], vec![]));
        assert_eq!(
            text.lines().nth(1).unwrap(),
            "  G\\x1b[2JET https://example.com/a\\x1b]0;pwned\\x07?b=\\r\\n -> 200 (?)"
        );
    }

    #[test]
    fn hostile_header_names_and_values() {
        let text = http_text(&http_view(
            "GET",
            "/",
            vec![("x-\x1b[1mname", "\x1b]52;c;cm0gLXJmIH4K\x07")],
            vec![("server", "nginx\roverwritten\u{85}"), ("x-\u{202e}", "a\tb")],
        ));
        let lines: Vec<&str> = text.lines().skip(2).collect();
        assert_eq!(
            lines,
            [
                "  > x-\\x1b[1mname: \\x1b]52;c;cm0gLXJmIH4K\\x07",
                "  < server: nginx\\roverwritten\\u{85}",
                "  < x-\\u{202e}: a\\tb",
            ]
        );
    }

    #[test]
    fn hostile_authority_notes_and_body_preview() {
        let mut view = http_view("GET", "/", vec![], vec![]);
        view.authority = Some("evil\x1b[8m.example");
        view.notes = vec!["unknown content-encoding \x1b[5m"];
        view.response_body = BodyView { size: 9, decoded_size: None, preview: b"a\x1bb\r\nc\x9b" };
        let text = http_text(&view);
        assert!(text.contains("https://evil\\x1b[8m.example/ -> 200"), "{text}");
        assert!(text.contains("\n  | a\\x1bb\\r\n  | c\\x9b\n"), "{text}");
        assert!(text.ends_with("  note: unknown content-encoding \\x1b[5m\n"), "{text}");
    }

    #[test]
    fn hostile_shell_line() {
        let view = CommandView {
            time: at(),
            shell: "bash",
            pid: 1,
            ppid: 0,
            uid: 0,
            user: Some("ro\x1bot"),
            tty: "pts/\x07",
            exit_status: Some(0),
            truncated: false,
            text: Cow::Borrowed(b"echo \x1b]0;x\x07\r\n\techo \xff\\n"),
        };
        let mut out = Vec::new();
        write_command(&mut out, &view).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "2025-11-26T06:53:20.123456Z bash[1] ppid=0 uid=0(ro\\x1bot) tty=pts/\\x07 status=0\n\
             \x20   echo \\x1b]0;x\\x07\\r\n\
             \x20   \techo \\xff\\\\n\n"
        );
        assert_inert(&text);
    }

    #[test]
    fn hostile_sql() {
        let view = QueryView {
            time: at(),
            server: "postgres",
            pid: 1,
            tid: 1,
            user: Some("app"),
            database: Some("d\x1b[8mb"),
            command: "query",
            statement_id: None,
            success: Some(false),
            duration: None,
            truncated: false,
            text: Cow::Borrowed(b"select '\x1b]0;x\x07'\r\n -- \xc2\x9b\xfe"),
        };
        let mut out = Vec::new();
        write_query(&mut out, &view).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "2025-11-26T06:53:20.123456Z postgres[1/1] user=app db=d\\x1b[8mb query FAILED ?\n\
             \x20   select '\\x1b]0;x\\x07'\\r\n\
             \x20    -- \\u{9b}\\xfe\n"
        );
        assert_inert(&text);
    }

    #[test]
    fn hostile_exec_filename_and_argv() {
        let view = ExecView {
            time: at(),
            comm: "sh\x1b",
            pid: 2,
            ppid: 1,
            uid: 0,
            user: None,
            filename: Cow::Borrowed(b"/tmp/\x1b]0;x\x07\xff"),
            argv: vec![Cow::Borrowed(b"a\"b"), Cow::Borrowed(b"\r\n\t\\"), Cow::Borrowed(b"\xc2\x85")],
            argv_truncated: false,
            result: "ok".into(),
        };
        let mut out = Vec::new();
        write_exec(&mut out, &view).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "2025-11-26T06:53:20.123456Z exec sh\\x1b[2] ppid=1 uid=0(?) /tmp/\\x1b]0;x\\x07\\xff \
             [\"a\\\"b\", \"\\r\\n\\t\\\\\", \"\\u{85}\"] = ok\n"
        );
        assert_inert(&text);
    }

    #[test]
    fn hex_dump_rows() {
        let mut v = Vec::new();
        hex_dump(&mut v, b"0123456789abcdefXY").unwrap();
        let s = String::from_utf8(v).unwrap();
        assert!(s.starts_with("00000000  30 31"));
        assert!(s.contains("|0123456789abcdef|\n00000010  58 59"));
    }
}
