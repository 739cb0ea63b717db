//! Human-readable output: a header line per record, then the payload with
//! non-printable bytes escaped (or a hex dump with `--hex`).
//!
//! Each kind of record is laid out from a view of plain values (`TlsView`,
//! `ExecView`, ...): live records fill it here, and `cleartap tail` fills
//! it from the JSON events an agent published, so both print the same
//! layout from the same code.

use std::io::{self, Write};
use std::time::{Duration, SystemTime};

use super::{addr_or_dash, body_preview, errno_name, lossy, Output, Style};
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
        r.comm,
        r.pid,
        r.tid,
        r.uid,
        r.library,
        r.function,
        r.direction,
        r.fd.map_or_else(|| "?".to_string(), |fd| fd.to_string()),
        r.local,
        arrow,
        r.remote,
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
    pub text: &'a str,
}

pub fn write_command(out: &mut impl Write, c: &CommandView) -> io::Result<()> {
    writeln!(
        out,
        "{} {}[{}] ppid={} uid={}({}) tty={} status={}{}",
        humantime::format_rfc3339_micros(c.time),
        c.shell,
        c.pid,
        c.ppid,
        c.uid,
        c.user.unwrap_or("?"),
        if c.tty.is_empty() { "-" } else { c.tty },
        c.exit_status.map_or_else(|| "?".to_string(), |s| s.to_string()),
        if c.truncated { " (truncated)" } else { "" },
    )?;
    write_indented(out, c.text)
}

/// One program start as text shows it.
pub struct ExecView<'a> {
    pub time: SystemTime,
    pub comm: &'a str,
    pub pid: u64,
    pub ppid: u64,
    pub uid: u64,
    pub user: Option<&'a str>,
    pub filename: &'a str,
    pub argv: Vec<&'a str>,
    pub argv_truncated: bool,
    /// `ok`, the error's name, or `?` when the result was not seen.
    pub result: String,
}

pub fn write_exec(out: &mut impl Write, e: &ExecView) -> io::Result<()> {
    let argv: Vec<String> = e.argv.iter().map(|a| format!("{a:?}")).collect();
    writeln!(
        out,
        "{} exec {}[{}] ppid={} uid={}({}) {} [{}{}] = {}",
        humantime::format_rfc3339_micros(e.time),
        e.comm,
        e.pid,
        e.ppid,
        e.uid,
        e.user.unwrap_or("?"),
        e.filename,
        argv.join(", "),
        if e.argv_truncated { ", ..." } else { "" },
        e.result,
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
    pub text: &'a str,
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
        q.server,
        q.pid,
        q.tid,
        q.user.unwrap_or("?"),
        q.database.unwrap_or("?"),
        q.command,
        q.statement_id.map_or(String::new(), |id| format!(" #{id}")),
        outcome,
        q.duration.map_or_else(|| "?".to_string(), |d| format!("{:.3}ms", d.as_secs_f64() * 1e3)),
        if q.truncated { " (truncated)" } else { "" },
    )?;
    write_indented(out, q.text)
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
    let url =
        format!("{}://{}{}", e.scheme.unwrap_or("https"), e.authority.unwrap_or("?"), e.path.unwrap_or(""));
    let latency = e.latency.map_or_else(|| "?".to_string(), |d| format!("{:.3} ms", d.as_secs_f64() * 1e3));
    writeln!(
        out,
        "{} {} {}[{}] {} -> {}",
        humantime::format_rfc3339_micros(e.time),
        e.protocol,
        e.comm,
        e.pid,
        e.local,
        e.remote
    )?;
    let status = e.status.map_or_else(|| "?".to_string(), |s| s.to_string());
    writeln!(out, "  {} {} -> {} ({})", e.method.unwrap_or("?"), url, status, latency)?;
    for (name, value) in &e.request_headers {
        writeln!(out, "  > {name}: {value}")?;
    }
    for (name, value) in &e.response_headers {
        writeln!(out, "  < {name}: {value}")?;
    }
    for (label, body) in [("request", &e.request_body), ("response", &e.response_body)] {
        write_body(out, label, body)?;
    }
    for note in &e.notes {
        writeln!(out, "  note: {note}")?;
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
        let mut shown = Vec::new();
        write_escaped(&mut shown, body.preview)?;
        for line in String::from_utf8_lossy(&shown).lines() {
            writeln!(out, "  | {line}")?;
        }
    }
    Ok(())
}

/// A command's or statement's text, each line indented.
fn write_indented(out: &mut impl Write, text: &str) -> io::Result<()> {
    for line in text.lines() {
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
            text: &lossy(&c.text),
        };
        write_command(&mut self.out, &view)
    }

    fn exec(&mut self, r: &ExecRecord) -> io::Result<()> {
        let e = r.exec;
        let argv: Vec<_> = e.argv.iter().map(|a| lossy(a)).collect();
        let view = ExecView {
            time: e.time,
            comm: &e.comm,
            pid: e.pid.into(),
            ppid: e.ppid.into(),
            uid: e.uid.into(),
            user: r.user,
            filename: &lossy(&e.filename),
            argv: argv.iter().map(|a| a.as_ref()).collect(),
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
            text: &lossy(&q.text),
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

/// Printable ASCII, newlines and tabs as they are; everything else as
/// `\xNN` (and `\r` as `\r`), ending with a newline.
pub fn write_escaped(out: &mut impl Write, data: &[u8]) -> io::Result<()> {
    let mut start = 0;
    for (i, &b) in data.iter().enumerate() {
        let plain = b == b'\n' || b == b'\t' || (0x20..0x7f).contains(&b);
        if plain {
            continue;
        }
        out.write_all(&data[start..i])?;
        if b == b'\r' {
            out.write_all(b"\\r")?;
        } else {
            write!(out, "\\x{b:02x}")?;
        }
        start = i + 1;
    }
    out.write_all(&data[start..])?;
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

    #[test]
    fn hex_dump_rows() {
        let mut v = Vec::new();
        hex_dump(&mut v, b"0123456789abcdefXY").unwrap();
        let s = String::from_utf8(v).unwrap();
        assert!(s.starts_with("00000000  30 31"));
        assert!(s.contains("|0123456789abcdef|\n00000010  58 59"));
    }
}
