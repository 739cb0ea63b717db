//! Human-readable output: a header line per record, then the payload with
//! non-printable bytes escaped (or a hex dump with `--hex`).

use std::io::{self, Write};

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

impl<W: Write> Output for TextOutput<W> {
    fn tls(&mut self, r: &TlsRecord) -> io::Result<()> {
        if let Some(g) = r.gap {
            writeln!(
                self.out,
                "-- gap on this connection: {} calls and {} bytes of the previous call lost --",
                g.calls_lost, g.bytes_lost
            )?;
        }
        let arrow = match r.direction {
            crate::context::Direction::Send => "->",
            crate::context::Direction::Recv => "<-",
        };
        writeln!(
            self.out,
            "{} {}[{}/{}] uid={} {} {} {} fd={} {} {} {} len={}{}",
            humantime::format_rfc3339_micros(r.time),
            r.comm,
            r.pid,
            r.tid,
            r.uid,
            r.library,
            r.function,
            r.direction.as_str(),
            r.fd.map_or_else(|| "?".to_string(), |fd| fd.to_string()),
            addr_or_dash(r.local),
            arrow,
            addr_or_dash(r.remote),
            r.data.len(),
            chunk_note(r),
        )?;
        if self.hex {
            hex_dump(&mut self.out, r.data)
        } else {
            write_escaped(&mut self.out, r.data)
        }
    }

    fn command(&mut self, r: &CommandRecord) -> io::Result<()> {
        let c = r.command;
        let status = c.exit_status.map_or_else(|| "?".to_string(), |s| s.to_string());
        writeln!(
            self.out,
            "{} {}[{}] ppid={} uid={}({}) tty={} status={}{}",
            humantime::format_rfc3339_micros(c.time),
            c.shell,
            c.pid,
            c.ppid,
            c.uid,
            r.user.unwrap_or("?"),
            if c.tty.is_empty() { "-" } else { &c.tty },
            status,
            if c.truncated { " (truncated)" } else { "" },
        )?;
        for line in lossy(&c.text).lines() {
            writeln!(self.out, "    {line}")?;
        }
        Ok(())
    }

    fn exec(&mut self, r: &ExecRecord) -> io::Result<()> {
        let e = r.exec;
        let argv: Vec<String> = e.argv.iter().map(|a| format!("{:?}", lossy(a))).collect();
        writeln!(
            self.out,
            "{} exec {}[{}] ppid={} uid={}({}) {} [{}{}] = {}",
            humantime::format_rfc3339_micros(e.time),
            e.comm,
            e.pid,
            e.ppid,
            e.uid,
            r.user.unwrap_or("?"),
            lossy(&e.filename),
            argv.join(", "),
            if e.argv_truncated { ", ..." } else { "" },
            e.ret.map_or_else(|| "?".to_string(), errno_name),
        )
    }

    fn query(&mut self, r: &QueryRecord) -> io::Result<()> {
        let q = r.query;
        let outcome = match q.success {
            Some(true) => "ok",
            Some(false) => "FAILED",
            None => "?",
        };
        let duration =
            q.duration.map_or_else(|| "?".to_string(), |d| format!("{:.3}ms", d.as_secs_f64() * 1e3));
        writeln!(
            self.out,
            "{} {}[{}/{}] user={} db={} {}{} {} {}{}",
            humantime::format_rfc3339_micros(q.time),
            q.server,
            q.pid,
            q.tid,
            r.user.unwrap_or("?"),
            r.database.unwrap_or("?"),
            q.command,
            q.statement_id.map_or(String::new(), |id| format!(" #{id}")),
            outcome,
            duration,
            if q.truncated { " (truncated)" } else { "" },
        )?;
        for line in lossy(&q.text).lines() {
            writeln!(self.out, "    {line}")?;
        }
        Ok(())
    }

    fn http(&mut self, r: &HttpRecord) -> io::Result<()> {
        let (e, c) = (r.exchange, r.connection);
        let url = format!(
            "{}://{}{}",
            e.scheme.as_deref().unwrap_or("https"),
            e.authority.as_deref().unwrap_or("?"),
            e.path.as_deref().unwrap_or("")
        );
        let latency =
            e.latency().map_or_else(|| "?".to_string(), |d| format!("{:.3} ms", d.as_secs_f64() * 1e3));
        writeln!(
            self.out,
            "{} {} {}[{}] {} -> {}",
            humantime::format_rfc3339_micros(e.request_time),
            e.protocol,
            c.comm,
            c.pid,
            addr_or_dash(c.local),
            addr_or_dash(c.remote)
        )?;
        let status = e.status.map_or_else(|| "?".to_string(), |s| s.to_string());
        writeln!(self.out, "  {} {} -> {} ({})", e.method.as_deref().unwrap_or("?"), url, status, latency)?;
        for (name, value) in &e.request_headers {
            writeln!(self.out, "  > {name}: {value}")?;
        }
        for (name, value) in &e.response_headers {
            writeln!(self.out, "  < {name}: {value}")?;
        }
        for (label, body) in [("request", &e.request_body), ("response", &e.response_body)] {
            self.body(label, body)?;
        }
        for note in &e.notes {
            writeln!(self.out, "  note: {note}")?;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

impl<W: Write> TextOutput<W> {
    fn body(&mut self, label: &str, body: &httpdecode::Body) -> io::Result<()> {
        if body.raw_len == 0 {
            return Ok(());
        }
        let decoded = body.decoded.as_ref().map_or(String::new(), |d| format!(", {} decoded", d.len()));
        writeln!(self.out, "  {label} body: {} bytes{decoded}", body.raw_len)?;
        let preview = body_preview(body, self.style.body_preview);
        if !preview.is_empty() {
            let mut shown = Vec::new();
            write_escaped(&mut shown, preview)?;
            for line in String::from_utf8_lossy(&shown).lines() {
                writeln!(self.out, "  | {line}")?;
            }
        }
        Ok(())
    }
}

fn chunk_note(r: &TlsRecord) -> String {
    if r.data.len() as u64 == r.call_len as u64 {
        String::new()
    } else {
        format!(" (bytes {}..{} of {})", r.offset, r.offset as usize + r.data.len(), r.call_len)
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
    fn hex_dump_rows() {
        let mut v = Vec::new();
        hex_dump(&mut v, b"0123456789abcdefXY").unwrap();
        let s = String::from_utf8(v).unwrap();
        assert!(s.starts_with("00000000  30 31"));
        assert!(s.contains("|0123456789abcdef|\n00000010  58 59"));
    }
}
