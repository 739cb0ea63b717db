//! Binary records (`--format binary`): for bulk capture into a file, the
//! JSON lines' own fields with each TLS payload kept as its raw bytes
//! instead of base64 inside the line. A stream's output is then the size
//! of what was captured, not 4/3 of it, and no CPU goes to base64 while
//! capturing. `cleartap read FILE` turns it back into the JSON lines
//! `--format json` writes, byte for byte, or into the text layout.
//!
//! There is no second schema: every record holds JSON of docs/json.md.
//! A file is a sequence of records, each a 12-byte header, then `head`,
//! then `data`:
//!
//! ```text
//! kind: u8, zero: [u8; 3], head_len: u32 LE, data_len: u32 LE
//! ```
//!
//! - `M` (first, and wherever a later capture was appended): `head` is
//!   `MAGIC`, no data;
//! - `J`: `head` is one whole JSON line without its newline, no data;
//! - `T`: a TLS record: `head` is its JSON line up to the payload (every
//!   field before `data_b64`, without the closing brace), `data` the
//!   payload's bytes. Its JSON line is `head`, then `,"data_b64":"`, the
//!   payload in base64, and `"}`.

use std::io::{self, Read, Write};

use super::batched::{Batched, Records};
use super::json::{self, ConnectionFields, TimeCache};
use super::schema::{CommandEvent, ExecEvent, HttpEvent, QueryEvent};
use super::{Output, Style};
use crate::context::{CommandRecord, ExecRecord, HttpRecord, QueryRecord, TlsRecord};

/// The head of the `M` record that starts a file.
pub const MAGIC: &[u8] = b"cleartap binary records 1";

const HEADER_LEN: usize = 12;
const KIND_MAGIC: u8 = b'M';
const KIND_JSON: u8 = b'J';
const KIND_TLS: u8 = b'T';

/// The largest head or payload a record may have: far above what a record
/// holds (a TLS record's payload is one of the kernel's chunks, a JSON
/// line's strings are bounded by their sources), and what a reader of a
/// file from anywhere is ready to hold in memory for one record.
pub const MAX_PART: usize = 64 << 20;

pub struct BinaryOutput<O: Records> {
    out: O,
    time: TimeCache,
    fields: ConnectionFields,
    style: Style,
}

impl<W: Write> BinaryOutput<Batched<W>> {
    pub fn new(out: W, style: Style) -> Self {
        Self::over(Batched::new(out, 256 << 10), style)
    }
}

impl<O: Records> BinaryOutput<O> {
    /// Records built in `out`'s memory, after the file's magic record.
    pub fn over(mut out: O, style: Style) -> Self {
        let buf = out.buf();
        let start = begin(buf, KIND_MAGIC);
        buf.extend_from_slice(MAGIC);
        end_head(buf, start);
        BinaryOutput { out, time: TimeCache::default(), fields: ConnectionFields::default(), style }
    }

    /// A `J` record from a line writer that appends one line to the buffer.
    fn json_record(
        &mut self,
        line: impl FnOnce(&mut Vec<u8>, &mut TimeCache) -> io::Result<()>,
    ) -> io::Result<()> {
        let buf = self.out.buf();
        let start = begin(buf, KIND_JSON);
        line(buf, &mut self.time)?;
        if buf.last() == Some(&b'\n') {
            buf.pop();
        }
        self.finish(start, 0)
    }

    /// Fills in the record at `start` once its head and `data_len` bytes
    /// of data follow its header; refuses (and drops) one too large to read back.
    fn finish(&mut self, start: usize, data_len: usize) -> io::Result<()> {
        let buf = self.out.buf();
        let head_len = buf.len() - start - HEADER_LEN - data_len;
        if head_len > MAX_PART || data_len > MAX_PART {
            buf.truncate(start);
            return Err(io::Error::other(format!(
                "a record of {head_len} + {data_len} bytes is larger than the binary format's {MAX_PART}"
            )));
        }
        set_lengths(&mut buf[start..], head_len, data_len);
        self.out.record_done()
    }
}

/// Appends a record header of `kind` with lengths to be set; returns where it starts.
fn begin(buf: &mut Vec<u8>, kind: u8) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&[kind, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    start
}

/// Sets the lengths of a record without data whose head ends the buffer.
fn end_head(buf: &mut [u8], start: usize) {
    let head_len = buf.len() - start - HEADER_LEN;
    set_lengths(&mut buf[start..], head_len, 0);
}

fn set_lengths(record: &mut [u8], head_len: usize, data_len: usize) {
    record[4..8].copy_from_slice(&(head_len as u32).to_le_bytes());
    record[8..12].copy_from_slice(&(data_len as u32).to_le_bytes());
}

impl<O: Records> Output for BinaryOutput<O> {
    fn tls(&mut self, r: &TlsRecord) -> io::Result<()> {
        let buf = self.out.buf();
        let start = begin(buf, KIND_TLS);
        json::tls_head(buf, &mut self.time, &mut self.fields, r);
        buf.extend_from_slice(r.data);
        self.finish(start, r.data.len())
    }

    fn command(&mut self, r: &CommandRecord) -> io::Result<()> {
        self.json_record(|buf, _| json::write_line(buf, &CommandEvent::of(r)))
    }

    fn exec(&mut self, r: &ExecRecord) -> io::Result<()> {
        self.json_record(|buf, _| json::write_line(buf, &ExecEvent::of(r)))
    }

    fn query(&mut self, r: &QueryRecord) -> io::Result<()> {
        self.json_record(|buf, _| json::write_line(buf, &QueryEvent::of(r)))
    }

    fn http(&mut self, r: &HttpRecord) -> io::Result<()> {
        let preview = self.style.body_preview;
        self.json_record(|buf, time| {
            json::http_line(buf, time, &HttpEvent::of(r, preview));
            Ok(())
        })
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Why a file cannot be read as binary records.
fn invalid(at: u64, why: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("binary records, byte {at}: {why}"))
}

/// Reads binary records from `input` and hands each one's JSON line
/// (with its newline) to `line`. A file that does not start with the
/// magic record, a header with an unknown kind, lengths beyond `MAX_PART`
/// or a record cut short is an error naming its byte offset; the lines
/// before it have been handed on.
pub fn read_lines(mut input: impl Read, mut line: impl FnMut(&[u8]) -> io::Result<()>) -> io::Result<u64> {
    let mut at = 0u64;
    let mut records = 0u64;
    let mut text = Vec::new();
    let mut data = Vec::new();
    loop {
        let mut header = [0u8; HEADER_LEN];
        match read_full(&mut input, &mut header)? {
            0 => break,
            HEADER_LEN => {}
            n => {
                return Err(invalid(
                    at,
                    format_args!("ends inside a record header ({n} of {HEADER_LEN} bytes)"),
                ))
            }
        }
        let kind = header[0];
        let head_len = u32::from_le_bytes(header[4..8].try_into().unwrap()) as usize;
        let data_len = u32::from_le_bytes(header[8..12].try_into().unwrap()) as usize;
        if header[1..4] != [0, 0, 0] || !matches!(kind, KIND_MAGIC | KIND_JSON | KIND_TLS) {
            let why = if at == 0 {
                "not a cleartap binary capture (no magic record)"
            } else {
                "not a record header"
            };
            return Err(invalid(at, why));
        }
        if at == 0 && kind != KIND_MAGIC {
            return Err(invalid(at, "not a cleartap binary capture (no magic record)"));
        }
        if head_len > MAX_PART || data_len > MAX_PART || (kind != KIND_TLS && data_len != 0) {
            return Err(invalid(at, format_args!("a record of {head_len} + {data_len} bytes cannot be one")));
        }
        text.clear();
        data.clear();
        read_part(&mut input, &mut text, head_len, at)?;
        read_part(&mut input, &mut data, data_len, at)?;
        match kind {
            KIND_MAGIC if text != MAGIC => {
                return Err(invalid(at, "a magic record of another format or version"));
            }
            KIND_MAGIC => {}
            KIND_JSON => {
                text.push(b'\n');
                line(&text)?;
                records += 1;
            }
            _ => {
                json::tls_data(&mut text, &data);
                line(&text)?;
                records += 1;
            }
        }
        at += (HEADER_LEN + head_len + data_len) as u64;
    }
    Ok(records)
}

/// Reads up to `buf.len()` bytes; fewer only at the end of the input.
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match input.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Appends exactly `len` bytes of the record at `at` (memory grows with
/// what arrives, not with what a header claims).
fn read_part(input: &mut impl Read, buf: &mut Vec<u8>, len: usize, at: u64) -> io::Result<()> {
    let got = input.by_ref().take(len as u64).read_to_end(buf)?;
    if got != len {
        return Err(invalid(at, format_args!("the file ends inside a record ({got} of {len} bytes)")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::json::JsonOutput;
    use crate::output::Format;

    fn style(format: Format) -> Style {
        Style { format, hex: false, body_preview: 256 }
    }

    fn base() -> TlsRecord<'static> {
        TlsRecord {
            time: std::time::UNIX_EPOCH + std::time::Duration::from_nanos(1_764_140_000_123_456_789),
            pid: 4242,
            tid: 4243,
            uid: 1000,
            comm: "a \"q\"\u{9b}".into(),
            library: "openssl",
            library_version: Some("3.0.17"),
            library_path: "/usr/lib/x86_64-linux-gnu/libssl.so.3",
            function: "SSL_write_ex",
            direction: crate::context::Direction::Send,
            fd: Some(5),
            local: "127.0.0.1:50000".parse().ok(),
            remote: None,
            conn: 0x55d0_dead_beef,
            call_seq: 1,
            call_len: 0,
            offset: 0,
            flags: 0,
            gap: None,
            data: b"",
        }
    }

    fn records() -> Vec<TlsRecord<'static>> {
        let payloads: [&'static [u8]; 4] =
            [b"", b"GET / HTTP/1.1\r\n\r\n", &[0u8, 0xff, b'"', b'\n', 0x9b], &[7u8; 70_000]];
        payloads
            .into_iter()
            .enumerate()
            .map(|(i, data)| TlsRecord {
                call_seq: i as u64 + 1,
                data,
                call_len: data.len() as u32,
                gap: (i == 2).then_some(crate::assembly::gaps::Gap { calls_lost: 1, bytes_lost: 5 }),
                flags: if i == 1 { crate::events::flag::TRUNCATED } else { 0 },
                ..base()
            })
            .collect()
    }

    fn write_all(out: &mut dyn Output, records: &[TlsRecord]) {
        for r in records {
            out.tls(r).unwrap();
        }
        out.flush().unwrap();
    }

    fn read_back(file: &[u8]) -> io::Result<Vec<u8>> {
        let mut json = Vec::new();
        read_lines(file, |line| {
            json.extend_from_slice(line);
            Ok(())
        })?;
        Ok(json)
    }

    #[test]
    fn tls_records_read_back_as_the_json_output_s_lines() {
        let records = records();
        let mut json = Vec::new();
        write_all(&mut JsonOutput::new(&mut json, style(Format::Json)), &records);
        let mut binary = Vec::new();
        write_all(&mut BinaryOutput::new(&mut binary, style(Format::Binary)), &records);
        assert!(binary.len() < json.len(), "the payload is not base64 in the binary file");
        assert_eq!(String::from_utf8_lossy(&read_back(&binary).unwrap()), String::from_utf8_lossy(&json));
        // Two captures appended to one file read as one.
        let twice = [binary.clone(), binary].concat();
        assert_eq!(read_back(&twice).unwrap(), [json.clone(), json].concat());
    }

    #[test]
    fn what_is_not_a_whole_file_of_records_is_refused_at_its_offset() {
        let mut binary = Vec::new();
        write_all(&mut BinaryOutput::new(&mut binary, style(Format::Binary)), &records()[..2]);
        let err = |file: &[u8]| read_back(file).unwrap_err().to_string();
        assert!(err(b"{\"event\":\"tls\"}\n").contains("not a cleartap binary capture"));
        assert!(err(&binary[..binary.len() - 1]).contains("ends inside a record"));
        assert!(err(&binary[..HEADER_LEN + MAGIC.len() + 5]).contains("ends inside a record header"));
        let mut bad = binary.clone();
        bad[HEADER_LEN + MAGIC.len()] = b'X';
        assert!(err(&bad).contains(&format!("byte {}: not a record header", HEADER_LEN + MAGIC.len())));
        let mut huge = binary.clone();
        huge[HEADER_LEN + MAGIC.len() + 8..][..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(err(&huge).contains("cannot be one"));
        let mut other = binary;
        other[HEADER_LEN + MAGIC.len() - 1] = b'2';
        assert!(err(&other).contains("another format or version"));
        assert_eq!(read_back(b"").unwrap(), b"", "an empty file holds no records");
    }

    /// A valid file with bytes changed, cut or repeated anywhere: read
    /// without a panic, and what reads whole is whole lines (the fuzz
    /// target `binary_records` does the same with any bytes).
    #[test]
    fn damaged_files_never_panic() {
        let mut binary = Vec::new();
        write_all(&mut BinaryOutput::new(&mut binary, style(Format::Binary)), &records()[..3]);
        let mut noise = crate::discover::mutate::noise(0x9e37_79b9_7f4a_7c15);
        let mut next = move || noise() as usize;
        for _ in 0..20_000 {
            let mut file = binary.clone();
            for _ in 0..1 + next() % 3 {
                let at = next() % file.len().max(1);
                match next() % 3 {
                    0 if at < file.len() => file[at] = next() as u8,
                    0 | 1 => file.truncate(at),
                    _ => file.extend_from_within(at..),
                }
            }
            let _ = read_lines(&file[..], |line| {
                assert!(line.ends_with(b"\n"));
                Ok(())
            });
        }
    }
}
