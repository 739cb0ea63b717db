//! Human-readable output: a header line per record, then the payload with
//! non-printable bytes escaped (or a hex dump with `--hex`).
//!
//! Every string shown, not only payloads, comes from a process or a peer
//! and goes through `escape` (a process name, a header, a path, a shell
//! line): nothing printed here can drive the reader's terminal.
//!
//! Each kind of event is laid out from its JSON schema type
//! (`schema::TlsEvent`, `ExecEvent`, ...): live records are made into
//! their events here, and `cleartap tail` reads the events an agent
//! published into the same types (`json_to_text`), so both print the same
//! layout from the same code.

use std::io::{self, Write};

use super::escape::{self, Layout};
use super::schema::{CommandEvent, Event, ExecEvent, HttpEvent, LossEvent, QueryEvent, Text, TlsEvent};
use super::{Output, Style};
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

/// Any event, as its kind's function below lays it out.
pub fn write_event(out: &mut impl Write, event: &Event, hex: bool) -> io::Result<()> {
    match event {
        Event::Tls(e) => write_tls(out, e, hex),
        Event::Command(e) => write_command(out, e),
        Event::Exec(e) => write_exec(out, e),
        Event::Query(e) => write_query(out, e),
        Event::Http(e) => write_http(out, e),
        Event::Loss(e) => write_loss(out, e),
    }
}

pub fn write_tls(out: &mut impl Write, r: &TlsEvent, hex: bool) -> io::Result<()> {
    if let Some(gap) = r.gap {
        writeln!(
            out,
            "-- gap on this connection: {} calls and {} bytes of the previous call lost --",
            gap.calls_lost, gap.bytes_lost
        )?;
    }
    let data = &r.data_b64.0;
    let arrow = if r.direction == "send" { "->" } else { "<-" };
    let chunk = if data.len() as u64 == u64::from(r.call_len) {
        String::new()
    } else {
        format!(" (bytes {}..{} of {})", r.offset, u64::from(r.offset) + data.len() as u64, r.call_len)
    };
    writeln!(
        out,
        "{} {}[{}/{}] uid={} {} {} {} fd={} {} {} {} len={}{}",
        humantime::format_rfc3339_micros(r.time.0),
        escape::line(&r.comm),
        r.pid,
        r.tid,
        r.uid,
        escape::line(&r.library),
        escape::line(&r.function),
        escape::line(&r.direction),
        r.fd.map_or_else(|| "?".to_string(), |fd| fd.to_string()),
        escape::line(address(&r.local)),
        arrow,
        escape::line(address(&r.remote)),
        data.len(),
        chunk,
    )?;
    if hex {
        hex_dump(out, data)
    } else {
        write_escaped(out, data)
    }
}

/// `NAME[PID] ppid=PPID uid=UID(USER)`: who typed a command or started a
/// program, the same way for both.
struct Starter<'a> {
    name: &'a str,
    pid: u32,
    ppid: u32,
    uid: u32,
    user: Option<&'a str>,
}

impl std::fmt::Display for Starter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Starter { name, pid, ppid, uid, user } = self;
        let user = escape::line(user.unwrap_or("?"));
        write!(f, "{}[{pid}] ppid={ppid} uid={uid}({user})", escape::line(name))
    }
}

pub fn write_command(out: &mut impl Write, c: &CommandEvent) -> io::Result<()> {
    let shell = Starter { name: &c.shell, pid: c.pid, ppid: c.ppid, uid: c.uid, user: c.user.as_deref() };
    writeln!(
        out,
        "{} {shell} tty={} status={}{}",
        humantime::format_rfc3339_micros(c.time.0),
        escape::line(if c.tty.is_empty() { "-" } else { &c.tty }),
        c.exit_status.map_or_else(|| "?".to_string(), |s| s.to_string()),
        if c.truncated { " (truncated)" } else { "" },
    )?;
    write_indented(out, c.exact())
}

pub fn write_exec(out: &mut impl Write, e: &ExecEvent) -> io::Result<()> {
    let argv: Vec<String> = e.exact_argv().into_iter().map(escape::quoted).collect();
    let result = match e.success {
        Some(true) => "ok",
        Some(false) => e.error.as_deref().unwrap_or("?"),
        None => "?",
    };
    let caller = Starter { name: &e.comm, pid: e.pid, ppid: e.ppid, uid: e.uid, user: e.user.as_deref() };
    writeln!(
        out,
        "{} exec {caller} {} [{}{}] = {}",
        humantime::format_rfc3339_micros(e.time.0),
        escape::escape(e.exact_filename(), Layout::Line),
        argv.join(", "),
        if e.argv_truncated { ", ..." } else { "" },
        escape::line(result),
    )
}

pub fn write_query(out: &mut impl Write, q: &QueryEvent) -> io::Result<()> {
    let outcome = match q.success {
        Some(true) => "ok",
        Some(false) => "FAILED",
        None => "?",
    };
    writeln!(
        out,
        "{} {}[{}/{}] user={} db={} {}{} {} {}{}",
        humantime::format_rfc3339_micros(q.time.0),
        escape::line(&q.server),
        q.pid,
        q.tid,
        escape::line(q.user.as_deref().unwrap_or("?")),
        escape::line(q.database.as_deref().unwrap_or("?")),
        escape::line(&q.command),
        q.statement_id.map_or(String::new(), |id| format!(" #{id}")),
        outcome,
        q.duration_us.map_or_else(|| "?".to_string(), |us| format!("{:.3}ms", us / 1e3)),
        if q.truncated { " (truncated)" } else { "" },
    )?;
    write_indented(out, q.exact())
}

pub fn write_http(out: &mut impl Write, e: &HttpEvent) -> io::Result<()> {
    let url = format!(
        "{}://{}{}",
        escape::line(e.scheme.as_deref().unwrap_or("https")),
        escape::line(e.authority.as_deref().unwrap_or("?")),
        escape::line(e.path.as_deref().unwrap_or(""))
    );
    let latency = e.latency_us.map_or_else(|| "?".to_string(), |us| format!("{:.3} ms", us / 1e3));
    writeln!(
        out,
        "{} {} {}[{}] {} -> {}",
        humantime::format_rfc3339_micros(e.time.0),
        escape::line(&e.protocol),
        escape::line(&e.comm),
        e.pid,
        escape::line(address(&e.local)),
        escape::line(address(&e.remote))
    )?;
    let status = e.status.map_or_else(|| "?".to_string(), |s| s.to_string());
    writeln!(
        out,
        "  {} {} -> {} ({})",
        escape::line(e.method.as_deref().unwrap_or("?")),
        url,
        status,
        latency
    )?;
    for (name, value) in e.request_headers.iter() {
        writeln!(out, "  > {}: {}", escape::line(name), escape::line(value))?;
    }
    for (name, value) in e.response_headers.iter() {
        writeln!(out, "  < {}: {}", escape::line(name), escape::line(value))?;
    }
    write_body(out, "request", e.request_body_size, e.request_body_decoded_size, &e.request_body_preview)?;
    write_body(
        out,
        "response",
        e.response_body_size,
        e.response_body_decoded_size,
        &e.response_body_preview,
    )?;
    for note in e.notes.iter() {
        writeln!(out, "  note: {}", escape::line(note))?;
    }
    Ok(())
}

fn write_body(
    out: &mut impl Write,
    label: &str,
    size: u64,
    decoded_size: Option<u64>,
    preview: &Option<Text>,
) -> io::Result<()> {
    if size == 0 {
        return Ok(());
    }
    let decoded = decoded_size.map_or(String::new(), |d| format!(", {d} decoded"));
    writeln!(out, "  {label} body: {size} bytes{decoded}")?;
    if let Some(preview) = preview.as_ref().filter(|p| !p.0.is_empty()) {
        for line in escape::escape(&preview.0, Layout::Block).lines() {
            writeln!(out, "  | {line}")?;
        }
    }
    Ok(())
}

pub fn write_loss(out: &mut impl Write, l: &LossEvent) -> io::Result<()> {
    writeln!(out, "loss: {} {} events dropped: {}", l.count, escape::line(&l.source), escape::line(&l.reason))
}

/// An address, or `-` when there is none (not an inet socket).
fn address<'a>(addr: &'a Option<std::borrow::Cow<str>>) -> &'a str {
    addr.as_deref().unwrap_or("-")
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
        write_tls(&mut self.out, &TlsEvent::of(r), self.hex)
    }

    fn command(&mut self, r: &CommandRecord) -> io::Result<()> {
        write_command(&mut self.out, &CommandEvent::of(r))
    }

    fn exec(&mut self, r: &ExecRecord) -> io::Result<()> {
        write_exec(&mut self.out, &ExecEvent::of(r))
    }

    fn query(&mut self, r: &QueryRecord) -> io::Result<()> {
        write_query(&mut self.out, &QueryEvent::of(r))
    }

    fn http(&mut self, r: &HttpRecord) -> io::Result<()> {
        write_http(&mut self.out, &HttpEvent::of(r, self.style.body_preview))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
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
    use std::borrow::Cow;
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::output::schema::{tag, Base64, Gap, Time};

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

    fn at() -> Time {
        Time(SystemTime::UNIX_EPOCH + Duration::from_micros(1_764_140_000_123_456))
    }

    fn tls_event(comm: &str) -> TlsEvent<'_> {
        TlsEvent {
            event: tag::Tls,
            time: at(),
            pid: 7,
            tid: 7,
            uid: 0,
            comm: comm.into(),
            library: "openssl".into(),
            library_version: None,
            library_path: "/lib/libssl.so.3".into(),
            function: "SSL_write".into(),
            direction: "send".into(),
            fd: Some(3),
            local: None,
            remote: None,
            conn: "0x1".into(),
            call_seq: 1,
            call_len: 0,
            offset: 0,
            len: 0,
            truncated: false,
            unreadable: false,
            gap: None,
            data_b64: Base64::borrowed(b""),
        }
    }

    #[test]
    fn tls_layout_names_process_call_connection_and_chunk() {
        let mut out = Vec::new();
        let event = TlsEvent {
            tid: 8,
            function: "SSL_read_ex".into(),
            direction: "recv".into(),
            fd: None,
            local: Some("127.0.0.1:5000".into()),
            call_len: 10,
            offset: 4,
            len: 5,
            gap: Some(Gap { calls_lost: 1, bytes_lost: 2 }),
            data_b64: Base64::borrowed(b"abc\r\n"),
            ..tls_event("curl")
        };
        write_tls(&mut out, &event, false).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "-- gap on this connection: 1 calls and 2 bytes of the previous call lost --\n\
             2025-11-26T06:53:20.123456Z curl[7/8] uid=0 openssl SSL_read_ex recv fd=? 127.0.0.1:5000 <- - \
             len=5 (bytes 4..9 of 10)\nabc\\r\n"
        );
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
        write_tls(&mut out, &tls_event("\x1b]0;x\x07\u{9b}2J\r"), false).unwrap();
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
        let event = TlsEvent { data_b64: Base64::borrowed(b"\x1b]52;c;aGk=\x07\r\xff"), ..tls_event("curl") };
        write_tls(&mut out, &event, false).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with("\n\\x1b]52;c;aGk=\\x07\\r\\xff\n"), "{text:?}");
        assert_inert(&text);
    }

    fn http_event(
        method: &'static str,
        path: &'static str,
        request_headers: &[(&str, &str)],
        response_headers: &[(&str, &str)],
    ) -> HttpEvent<'static> {
        let headers = |h: &[(&str, &str)]| h.iter().copied().collect();
        HttpEvent {
            event: tag::Http,
            time: at(),
            protocol: "HTTP/1.1".into(),
            method: Some(method.into()),
            scheme: Some("https".into()),
            authority: Some("example.com".into()),
            path: Some(path.into()),
            status: Some(200),
            request_headers: Cow::Owned(headers(request_headers)),
            response_headers: Cow::Owned(headers(response_headers)),
            request_body_size: 0,
            response_body_size: 0,
            request_body_decoded_size: None,
            response_body_decoded_size: None,
            request_body_preview: None,
            response_body_preview: None,
            latency_us: None,
            stream_id: None,
            grpc: None,
            notes: Cow::Borrowed(&[]),
            pid: 7,
            comm: "curl".into(),
            library: "openssl".into(),
            local: Some("127.0.0.1:1".into()),
            remote: Some("127.0.0.1:2".into()),
        }
    }

    fn http_text(event: &HttpEvent) -> String {
        let mut out = Vec::new();
        write_http(&mut out, event).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_inert(&text);
        text
    }

    #[test]
    fn hostile_method_and_path() {
        let text = http_text(&http_event("G\x1b[2JET", "/a\x1b]0;pwned\x07?b=\r\n", &[], &[]));
        assert_eq!(
            text.lines().nth(1).unwrap(),
            "  G\\x1b[2JET https://example.com/a\\x1b]0;pwned\\x07?b=\\r\\n -> 200 (?)"
        );
    }

    #[test]
    fn hostile_header_names_and_values() {
        let text = http_text(&http_event(
            "GET",
            "/",
            &[("x-\x1b[1mname", "\x1b]52;c;cm0gLXJmIH4K\x07")],
            &[("server", "nginx\roverwritten\u{85}"), ("x-\u{202e}", "a\tb")],
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
        let notes = ["unknown content-encoding \x1b[5m".to_string()];
        let event = HttpEvent {
            authority: Some("evil\x1b[8m.example".into()),
            notes: Cow::Borrowed(&notes),
            response_body_size: 9,
            response_body_preview: Some(Text::borrowed(b"a\x1bb\r\nc\x9b")),
            ..http_event("GET", "/", &[], &[])
        };
        let text = http_text(&event);
        assert!(text.contains("https://evil\\x1b[8m.example/ -> 200"), "{text}");
        assert!(text.contains("\n  | a\\x1bb\\r\n  | c\\x9b\n"), "{text}");
        assert!(text.ends_with("  note: unknown content-encoding \\x1b[5m\n"), "{text}");
    }

    #[test]
    fn hostile_shell_line() {
        let text = b"echo \x1b]0;x\x07\r\n\techo \xff\\n";
        let event = CommandEvent {
            event: tag::Command,
            time: at(),
            pid: 1,
            ppid: 0,
            uid: 0,
            user: Some("ro\x1bot".into()),
            tty: "pts/\x07".into(),
            shell: "bash".into(),
            shell_path: None,
            command: Text::borrowed(text),
            command_b64: Some(Base64::borrowed(text)),
            truncated: false,
            exit_status: Some(0),
        };
        let mut out = Vec::new();
        write_command(&mut out, &event).unwrap();
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
        let text = b"select '\x1b]0;x\x07'\r\n -- \xc2\x9b\xfe";
        let event = QueryEvent {
            event: tag::Query,
            time: at(),
            server: "postgres".into(),
            pid: 1,
            tid: 1,
            user: Some("app".into()),
            database: Some("d\x1b[8mb".into()),
            client: None,
            command: "query".into(),
            statement_id: None,
            text: Text::borrowed(text),
            text_b64: Some(Base64::borrowed(text)),
            truncated: false,
            duration_us: None,
            success: Some(false),
        };
        let mut out = Vec::new();
        write_query(&mut out, &event).unwrap();
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
        let argv: [&[u8]; 3] = [b"a\"b", b"\r\n\t\\", b"\xc2\x85"];
        let event = ExecEvent {
            event: tag::Exec,
            time: at(),
            pid: 2,
            tid: 2,
            ppid: 1,
            uid: 0,
            user: None,
            comm: "sh\x1b".into(),
            filename: Text::borrowed(b"/tmp/\x1b]0;x\x07\xff"),
            filename_b64: None,
            argv: argv.iter().map(|a| Text::borrowed(a)).collect(),
            argv_b64: None,
            argv_truncated: false,
            argv_changed: false,
            cwd: None,
            success: Some(true),
            error: None,
            errno: None,
        };
        let mut out = Vec::new();
        write_exec(&mut out, &event).unwrap();
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
