//! JSON lines: one object per record, the fields documented in docs/json.md.

use std::io::{self, Write};

use httpdecode::Headers;
use serde::Serialize;

use super::batched::{Batched, Records};
use super::schema::{push_address, CommandEvent, ExecEvent, HttpEvent, QueryEvent};
use super::{Output, Style};
use crate::context::{CommandRecord, Direction, ExecRecord, HttpRecord, QueryRecord, TlsRecord};
use crate::events::flag;

pub struct JsonOutput<O: Records> {
    out: O,
    time: TimeCache,
    fields: ConnectionFields,
    style: Style,
}

impl<W: Write> JsonOutput<Batched<W>> {
    /// `out` is written in pieces of about a MiB: it needs no buffer of its own.
    pub fn new(out: W, style: Style) -> Self {
        Self::over(Batched::new(out, 64 << 10), style)
    }
}

impl<O: Records> JsonOutput<O> {
    /// Lines built in `out`'s memory.
    pub fn over(out: O, style: Style) -> Self {
        JsonOutput { out, time: TimeCache::default(), fields: ConnectionFields::default(), style }
    }
}

/// RFC 3339 with nanoseconds, as `humantime::format_rfc3339_nanos` writes
/// it, with the date and time of day formatted once per second: records
/// come thousands a second, and formatting the calendar date for each was a
/// tenth of the consumer's CPU per record.
#[derive(Default)]
pub(super) struct TimeCache {
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

/// Appends a JSON string, escaped as serde_json escapes it with
/// `TerminalSafe` (the tests hold the two to the same bytes): a string
/// with nothing to escape (a command name, a library path) is copied as it
/// is.
fn string(buf: &mut Vec<u8>, s: &str) {
    buf.push(b'"');
    string_contents(buf, s);
    buf.push(b'"');
}

/// What a byte of a UTF-8 string asks of the escaper.
const PLAIN: u8 = 0;
/// A control, `"`, `\` or DEL: escaped.
const ESCAPE: u8 = 1;
/// 0xc2: the first byte of U+0080..U+00BF, of which U+0080..U+009F (the
/// C1 controls) are escaped.
const C2: u8 = 2;

static BYTE_CLASS: [u8; 256] = {
    let mut class = [PLAIN; 256];
    let mut b = 0;
    while b < 0x20 {
        class[b] = ESCAPE;
        b += 1;
    }
    class[b'"' as usize] = ESCAPE;
    class[b'\\' as usize] = ESCAPE;
    class[0x7f] = ESCAPE;
    class[0xc2] = C2;
    class
};

/// A JSON string's contents: serde_json's escapes (`\"`, `\\`, `\b`,
/// `\t`, `\n`, `\f`, `\r`, else `\u00xx` for the C0 controls), and
/// `\u007f`..`\u009f` for DEL and the C1 controls (`TerminalSafe`). Runs of
/// bytes that need nothing are copied in one piece.
fn string_contents(buf: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match BYTE_CLASS[usize::from(b)] {
            PLAIN => i += 1,
            C2 if !matches!(bytes.get(i + 1), Some(0x80..=0x9f)) => i += 1,
            class => {
                buf.extend_from_slice(&bytes[start..i]);
                // A C1 control is the character after 0xc2: its second byte.
                let (c, len) = if class == C2 { (u32::from(bytes[i + 1]), 2) } else { (u32::from(b), 1) };
                escape(buf, c);
                i += len;
                start = i;
            }
        }
    }
    buf.extend_from_slice(&bytes[start..]);
}

/// One escaped character (below U+00A0).
fn escape(buf: &mut Vec<u8>, c: u32) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let short = match c {
        0x22 => Some(b'"'),
        0x5c => Some(b'\\'),
        0x08 => Some(b'b'),
        0x0c => Some(b'f'),
        0x0a => Some(b'n'),
        0x0d => Some(b'r'),
        0x09 => Some(b't'),
        _ => None,
    };
    match short {
        Some(letter) => buf.extend_from_slice(&[b'\\', letter]),
        None => buf.extend_from_slice(&[
            b'\\',
            b'u',
            b'0',
            b'0',
            HEX[(c >> 4) as usize & 0xf],
            HEX[c as usize & 0xf],
        ]),
    }
}

/// Bytes as a JSON string of their lossy UTF-8 (`schema::Text`), escaped
/// as `string` escapes: what is not UTF-8 becomes U+FFFD, one for each
/// maximal invalid part, exactly as `String::from_utf8_lossy` replaces it,
/// in one pass over the bytes and without building that String. Body
/// previews are often not text at all (a binary body is mostly invalid
/// parts), and this runs for every HTTP exchange.
fn lossy_text(buf: &mut Vec<u8>, bytes: &[u8]) {
    const REPLACEMENT: &[u8] = "\u{fffd}".as_bytes();
    buf.push(b'"');
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let (len, escaped) = if b < 0x80 {
            (1, BYTE_CLASS[usize::from(b)] != PLAIN)
        } else {
            match utf8_sequence(bytes, i) {
                Ok(len) => (len, b == 0xc2 && bytes[i + 1] <= 0x9f),
                Err(invalid) => {
                    buf.extend_from_slice(&bytes[start..i]);
                    buf.extend_from_slice(REPLACEMENT);
                    i += invalid;
                    start = i;
                    continue;
                }
            }
        };
        if escaped {
            buf.extend_from_slice(&bytes[start..i]);
            // A C1 control is the character after 0xc2: its second byte.
            escape(buf, u32::from(bytes[i + len - 1]));
            start = i + len;
        }
        i += len;
    }
    buf.extend_from_slice(&bytes[start..]);
    buf.push(b'"');
}

/// The UTF-8 character at `bytes[i]` (a byte >= 0x80): `Ok(its length)`,
/// or `Err(the length of the invalid part)` that `from_utf8_lossy`
/// replaces with one U+FFFD (the longest start of a valid sequence, at
/// least one byte).
fn utf8_sequence(bytes: &[u8], i: usize) -> Result<usize, usize> {
    let at = |k: usize| bytes.get(i + k).copied().unwrap_or(0);
    let continuation = |b: u8| (0x80..=0xbf).contains(&b);
    let (first, second) = (bytes[i], at(1));
    let width = match first {
        0xc2..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf4 => 4,
        _ => return Err(1),
    };
    let second_fits = match (first, second) {
        (0xe0, 0xa0..=0xbf) | (0xed, 0x80..=0x9f) | (0xf0, 0x90..=0xbf) | (0xf4, 0x80..=0x8f) => true,
        (0xe0 | 0xed | 0xf0 | 0xf4, _) => false,
        _ => continuation(second),
    };
    if !second_fits {
        return Err(1);
    }
    for k in 2..width {
        if !continuation(at(k)) {
            return Err(k);
        }
    }
    Ok(width)
}

fn optional_string(buf: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => string(buf, s),
        None => buf.extend_from_slice(b"null"),
    }
}

fn optional_number(buf: &mut Vec<u8>, n: Option<impl itoa::Integer>) {
    match n {
        Some(n) => number(buf, n),
        None => buf.extend_from_slice(b"null"),
    }
}

/// `[["name","value"],...]`
fn headers(buf: &mut Vec<u8>, headers: &Headers) {
    buf.push(b'[');
    for (i, (name, value)) in headers.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        buf.push(b'[');
        string(buf, name);
        buf.push(b',');
        string(buf, value);
        buf.push(b']');
    }
    buf.push(b']');
}

/// Appends `"ip:port"` (as `SocketAddr`'s Display writes it) or `null`.
fn address(buf: &mut Vec<u8>, addr: Option<std::net::SocketAddr>) {
    match addr {
        Some(a) => {
            buf.push(b'"');
            push_address(buf, a);
            buf.push(b'"');
        }
        None => buf.extend_from_slice(b"null"),
    }
}

/// The fields of a TLS line from `pid` to `conn`: the same for every
/// record a thread reads or writes on one connection, and most of the
/// line's formatting work (strings checked for escapes, addresses and
/// numbers formatted). Each is formatted once into a small table of recent
/// connections and copied from there while every one of those fields is
/// equal; any field that differs formats the line afresh.
#[derive(Default)]
pub(super) struct ConnectionFields {
    slots: Vec<Option<FieldsSlot>>,
}

/// What a slot's text was formatted from, and the text.
struct FieldsSlot {
    pid: u32,
    tid: u32,
    uid: u32,
    comm: String,
    library: &'static str,
    library_version: Option<String>,
    library_path: String,
    function: &'static str,
    direction: Direction,
    fd: Option<i32>,
    local: Option<std::net::SocketAddr>,
    remote: Option<std::net::SocketAddr>,
    conn: u64,
    /// `,"pid":...,"conn":"0x..."`
    text: Vec<u8>,
}

/// Slots in the table: more than the connections one host moves data on
/// at once in the benchmarks (the 64 of nginx under wrk, 8 of the burst);
/// a connection that misses only costs a fresh format.
const FIELD_SLOTS: usize = 256;

impl FieldsSlot {
    fn formatted_from(&self, r: &TlsRecord) -> bool {
        self.conn == r.conn
            && self.pid == r.pid
            && self.tid == r.tid
            && self.uid == r.uid
            && self.direction == r.direction
            && self.fd == r.fd
            && self.local == r.local
            && self.remote == r.remote
            && self.function == r.function
            && self.library == r.library
            && self.comm == r.comm
            && self.library_path == r.library_path
            && self.library_version.as_deref() == r.library_version
    }
}

impl ConnectionFields {
    /// Appends the fields of `r` from `,"pid":` to the `conn` value.
    fn append(&mut self, buf: &mut Vec<u8>, r: &TlsRecord) {
        if self.slots.is_empty() {
            self.slots.resize_with(FIELD_SLOTS, || None);
        }
        let slot = &mut self.slots[slot_of(r)];
        match slot {
            Some(cached) if cached.formatted_from(r) => buf.extend_from_slice(&cached.text),
            _ => {
                let start = buf.len();
                connection_fields(buf, r);
                let mut text = slot.take().map(|old| old.text).unwrap_or_default();
                text.clear();
                text.extend_from_slice(&buf[start..]);
                *slot = Some(FieldsSlot {
                    pid: r.pid,
                    tid: r.tid,
                    uid: r.uid,
                    comm: r.comm.clone(),
                    library: r.library,
                    library_version: r.library_version.map(str::to_owned),
                    library_path: r.library_path.to_owned(),
                    function: r.function,
                    direction: r.direction,
                    fd: r.fd,
                    local: r.local,
                    remote: r.remote,
                    conn: r.conn,
                    text,
                });
            }
        }
    }
}

/// A connection's slot: by its handle, thread and call direction (a
/// thread's reads and writes on one connection each keep theirs).
fn slot_of(r: &TlsRecord) -> usize {
    let key = r.conn ^ (u64::from(r.tid) << 32) ^ u64::from(r.pid) ^ (r.direction as u64) << 63;
    (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as usize % FIELD_SLOTS
}

fn connection_fields(buf: &mut Vec<u8>, r: &TlsRecord) {
    buf.extend_from_slice(b",\"pid\":");
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
    let strings: [(&[u8], &str); 3] = [
        (b",\"library_path\":", r.library_path),
        (b",\"function\":", r.function),
        (b",\"direction\":", r.direction.as_str()),
    ];
    for (key, value) in strings {
        buf.extend_from_slice(key);
        string(buf, value);
    }
    buf.extend_from_slice(b",\"fd\":");
    optional_number(buf, r.fd);
    buf.extend_from_slice(b",\"local\":");
    address(buf, r.local);
    buf.extend_from_slice(b",\"remote\":");
    address(buf, r.remote);
    let _ = write!(buf, ",\"conn\":\"{:#x}\"", r.conn);
}

/// A TLS record as one JSON line (`schema::TlsEvent`, docs/json.md),
/// appended to `buf`. Hand-written, not through serde: this runs for every
/// record, and serializing a struct of its fields (their strings checked
/// for escapes one character at a time, the time, addresses and handle
/// formatted into Strings first) cost more than the rest of the consumer.
/// The tests hold it to the bytes `TlsEvent` serializes to.
fn tls_line(buf: &mut Vec<u8>, time: &mut TimeCache, fields: &mut ConnectionFields, r: &TlsRecord) {
    tls_head(buf, time, fields, r);
    tls_data(buf, r.data);
}

/// A TLS line up to its payload (every field before `data_b64`), as
/// `tls_line` writes it: the binary output keeps this and the raw payload,
/// and `tls_data` after it makes the JSON line again, byte for byte.
pub(super) fn tls_head(
    buf: &mut Vec<u8>,
    time: &mut TimeCache,
    fields: &mut ConnectionFields,
    r: &TlsRecord,
) {
    buf.extend_from_slice(b"{\"event\":\"tls\",\"time\":\"");
    buf.extend_from_slice(time.format(r.time));
    buf.push(b'"');
    fields.append(buf, r);
    buf.extend_from_slice(b",\"call_seq\":");
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
}

/// The end of a TLS line after `tls_head`: its payload and the newline.
pub(crate) fn tls_data(buf: &mut Vec<u8>, data: &[u8]) {
    // The payload is the bulk of the line: base64 (`output::base64`) straight into the
    // line; its alphabet never needs escaping.
    buf.extend_from_slice(b",\"data_b64\":\"");
    super::base64::encode_append(data, buf);
    buf.extend_from_slice(b"\"}\n");
}

/// An HTTP exchange as one JSON line, appended to `buf`: the bytes serde
/// writes for `HttpEvent` (the tests hold the two together), written by
/// hand like `tls_line`. Under a web server this is a line per request,
/// and serde's way (a body preview made lossy UTF-8 into a String, then
/// escaped a character at a time) cost more than decoding the exchange.
pub(super) fn http_line(buf: &mut Vec<u8>, time: &mut TimeCache, e: &HttpEvent) {
    buf.extend_from_slice(b"{\"event\":\"http\",\"time\":\"");
    buf.extend_from_slice(time.format(e.time.0));
    buf.extend_from_slice(b"\",\"protocol\":");
    string(buf, &e.protocol);
    buf.extend_from_slice(b",\"method\":");
    optional_string(buf, e.method.as_deref());
    buf.extend_from_slice(b",\"scheme\":");
    optional_string(buf, e.scheme.as_deref());
    buf.extend_from_slice(b",\"authority\":");
    optional_string(buf, e.authority.as_deref());
    buf.extend_from_slice(b",\"path\":");
    optional_string(buf, e.path.as_deref());
    buf.extend_from_slice(b",\"status\":");
    optional_number(buf, e.status);
    buf.extend_from_slice(b",\"request_headers\":");
    headers(buf, &e.request_headers);
    buf.extend_from_slice(b",\"response_headers\":");
    headers(buf, &e.response_headers);
    buf.extend_from_slice(b",\"request_body_size\":");
    number(buf, e.request_body_size);
    buf.extend_from_slice(b",\"response_body_size\":");
    number(buf, e.response_body_size);
    if let Some(n) = e.request_body_decoded_size {
        buf.extend_from_slice(b",\"request_body_decoded_size\":");
        number(buf, n);
    }
    if let Some(n) = e.response_body_decoded_size {
        buf.extend_from_slice(b",\"response_body_decoded_size\":");
        number(buf, n);
    }
    if let Some(text) = &e.request_body_preview {
        buf.extend_from_slice(b",\"request_body_preview\":");
        lossy_text(buf, &text.0);
    }
    if let Some(text) = &e.response_body_preview {
        buf.extend_from_slice(b",\"response_body_preview\":");
        lossy_text(buf, &text.0);
    }
    // A float as serde_json writes it (shortest round-trip form; null when
    // not finite): through serde_json itself, for this one number.
    buf.extend_from_slice(b",\"latency_us\":");
    let _ = serde_json::to_writer(&mut *buf, &e.latency_us);
    if let Some(id) = e.stream_id {
        buf.extend_from_slice(b",\"stream_id\":");
        number(buf, id);
    }
    if let Some(g) = &e.grpc {
        buf.extend_from_slice(b",\"grpc\":{\"status\":");
        optional_number(buf, g.status);
        buf.extend_from_slice(b",\"message\":");
        optional_string(buf, g.message.as_deref());
        buf.extend_from_slice(b",\"request_messages\":");
        number(buf, g.request_messages);
        buf.extend_from_slice(b",\"response_messages\":");
        number(buf, g.response_messages);
        buf.push(b'}');
    }
    if !e.notes.is_empty() {
        buf.extend_from_slice(b",\"notes\":[");
        for (i, note) in e.notes.iter().enumerate() {
            if i > 0 {
                buf.push(b',');
            }
            string(buf, note);
        }
        buf.push(b']');
    }
    buf.extend_from_slice(b",\"pid\":");
    number(buf, e.pid);
    buf.extend_from_slice(b",\"comm\":");
    string(buf, &e.comm);
    buf.extend_from_slice(b",\"library\":");
    string(buf, &e.library);
    buf.extend_from_slice(b",\"local\":");
    optional_string(buf, e.local.as_deref());
    buf.extend_from_slice(b",\"remote\":");
    optional_string(buf, e.remote.as_deref());
    buf.extend_from_slice(b"}\n");
}

impl<O: Records> Output for JsonOutput<O> {
    fn tls(&mut self, r: &TlsRecord) -> io::Result<()> {
        tls_line(self.out.buf(), &mut self.time, &mut self.fields, r);
        self.out.record_done()
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
        http_line(self.out.buf(), &mut self.time, &HttpEvent::of(r, self.style.body_preview));
        self.out.record_done()
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

impl<O: Records> JsonOutput<O> {
    fn line(&mut self, value: &impl Serialize) -> io::Result<()> {
        write_line(self.out.buf(), value)?;
        self.out.record_done()
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

    /// One output writing a connection's records, and others that differ
    /// from it in one field each, in turns: every line is the one serde
    /// writes for its own record (a field formatted for one record is
    /// never reused for a record where it differs).
    #[test]
    fn lines_of_one_output_follow_every_field_change() {
        let base = TlsRecord {
            comm: "curl".into(),
            library_version: Some("3.0.22"),
            fd: Some(4),
            local: Some("127.0.0.1:40000".parse().unwrap()),
            remote: Some("127.0.0.1:443".parse().unwrap()),
            conn: 0x55fb_205f_1e50,
            data: b"hello",
            ..tls_record_for_escapes()
        };
        let paths = ["/lib/libssl.so.3".to_string(), "/lib/libssl.so.3x".to_string()];
        let versions = ["3.0.22".to_string(), "3.0.23".to_string()];
        let variants: Vec<TlsRecord> = vec![
            base.clone(),
            TlsRecord { pid: 2, ..base.clone() },
            TlsRecord { tid: 2, ..base.clone() },
            TlsRecord { uid: 1000, ..base.clone() },
            TlsRecord { comm: "curl2".into(), ..base.clone() },
            TlsRecord { comm: "cu\u{9b}rl".into(), ..base.clone() },
            TlsRecord { library: "gnutls", ..base.clone() },
            TlsRecord { library_version: None, ..base.clone() },
            TlsRecord { library_version: Some(&versions[1]), ..base.clone() },
            TlsRecord { library_path: &paths[1], ..base.clone() },
            TlsRecord { function: "SSL_read", ..base.clone() },
            TlsRecord { direction: Direction::Recv, ..base.clone() },
            TlsRecord { fd: None, ..base.clone() },
            TlsRecord { fd: Some(5), ..base.clone() },
            TlsRecord { local: None, ..base.clone() },
            TlsRecord { local: Some("127.0.0.1:40001".parse().unwrap()), ..base.clone() },
            TlsRecord { remote: Some("[::1]:443".parse().unwrap()), ..base.clone() },
            TlsRecord { conn: 0x55fb_205f_1e51, ..base.clone() },
            TlsRecord {
                call_seq: 9,
                offset: 3,
                call_len: 99,
                gap: Some(Gap { calls_lost: 1, bytes_lost: 2 }),
                ..base.clone()
            },
        ];
        // The same content from other allocations: equal, so reused.
        let base_again =
            TlsRecord { library_version: Some(&versions[0]), library_path: &paths[0], ..base.clone() };
        let mut out = Vec::new();
        let mut want = Vec::new();
        let mut json = JsonOutput::new(&mut out, style());
        for round in 0..3 {
            for (i, variant) in variants.iter().enumerate() {
                for record in [&base, variant, &base_again] {
                    let record = TlsRecord { call_seq: (round * 100 + i) as u64, ..record.clone() };
                    json.tls(&record).unwrap();
                    write_line(&mut want, &TlsEvent::of(&record)).unwrap();
                }
            }
        }
        json.flush().unwrap();
        drop(json);
        assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(&want));
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

    /// Bytes from a small LCG: the same every run.
    fn noise(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (x >> 56) as u8
            })
            .collect()
    }

    /// Every string a person or a program chooses, hostile ones included.
    fn hostile_strings() -> Vec<String> {
        let mut all: Vec<String> = [
            "",
            "GET",
            "a \"q\"\\\n\r\t\u{8}\u{c}",
            "\u{7f}\u{80}\u{9f}\u{a0}\u{c2}\u{bf}é",
            "\u{1b}]0;x\u{7}\u{202e}\u{fffd}",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        all.push((0u8..0x80).map(char::from).collect());
        all.push((0x80u32..0x200).filter_map(char::from_u32).collect());
        all
    }

    /// The hand-written HTTP line is the line serde writes for the same
    /// `HttpEvent`, byte for byte, for hostile strings, every optional
    /// field present or not, and body previews of arbitrary bytes (lossy
    /// UTF-8, then escaped).
    #[test]
    fn http_lines_are_the_schema_s() {
        use std::borrow::Cow;

        use crate::output::schema::{GrpcSummary, HttpEvent, Text, Time};
        let strings = hostile_strings();
        let pick = |i: usize| strings[i % strings.len()].as_str();
        let mut time = TimeCache::default();
        for i in 0..64usize {
            let body = match i % 4 {
                0 => noise(i as u64, 1 + i * 7),
                1 => pick(i).as_bytes().to_vec(),
                2 => b"ok \xe2\x82 cut \xf0\x9f\x98\x80 \xc2\x9b\xc2".to_vec(),
                _ => Vec::new(),
            };
            let some = |on: bool, s: &'static str| on.then_some(Cow::Borrowed(s));
            let headers: Headers = (0..i % 3).map(|k| (pick(i + k), pick(i + k + 1))).collect();
            let event = HttpEvent {
                event: Default::default(),
                time: Time(
                    std::time::UNIX_EPOCH + std::time::Duration::from_nanos(i as u64 * 1_234_567_891_011),
                ),
                protocol: Cow::Borrowed(["HTTP/1.1", "HTTP/2", "HTTP/1.0"][i % 3]),
                method: (i % 2 == 0).then(|| Cow::Owned(pick(i).to_string())),
                scheme: some(i % 3 == 0, "https"),
                authority: (i % 5 != 0).then(|| Cow::Owned(pick(i + 2).to_string())),
                path: (i % 4 != 1).then(|| Cow::Owned(pick(i + 3).to_string())),
                status: (i % 3 != 2).then_some(200 + i as u16),
                request_headers: Cow::Owned(headers.clone()),
                response_headers: Cow::Owned(headers.iter().rev().collect()),
                request_body_size: i as u64 * 1000,
                response_body_size: u64::MAX - i as u64,
                request_body_decoded_size: (i % 4 == 0).then_some(i as u64),
                response_body_decoded_size: (i % 5 == 0).then_some(7),
                request_body_preview: (i % 2 == 1).then(|| Text(Cow::Owned(body.clone()))),
                response_body_preview: (i % 3 != 1).then(|| Text(Cow::Owned(body.clone()))),
                latency_us: [None, Some(110.682), Some(0.001), Some(1e21), Some(f64::NAN), Some(2500.0)]
                    [i % 6],
                stream_id: (i % 2 == 0).then_some(i as u32),
                grpc: (i % 7 == 0).then(|| GrpcSummary {
                    status: (i % 2 == 0).then_some(13),
                    message: (i % 3 == 0).then(|| Cow::Owned(pick(i).to_string())),
                    request_messages: i as u64,
                    response_messages: 1,
                }),
                notes: Cow::Owned((0..i % 3).map(|k| pick(i + k).to_string()).collect()),
                pid: i as u32,
                comm: Cow::Owned(pick(i + 4).to_string()),
                library: Cow::Borrowed("openssl"),
                local: some(i % 2 == 0, "127.0.0.1:443"),
                remote: some(i % 3 == 0, "[2001:db8::2]:443"),
            };
            let mut hand = Vec::new();
            http_line(&mut hand, &mut time, &event);
            let mut serialized = Vec::new();
            write_line(&mut serialized, &event).unwrap();
            assert_eq!(String::from_utf8_lossy(&hand), String::from_utf8_lossy(&serialized), "event {i}");
            assert_eq!(hand, serialized, "event {i}");
        }
    }

    /// Arbitrary bytes, and every cut and broken sequence of one to four
    /// bytes, are written as `Text` (lossy UTF-8, then escaped) writes them.
    #[test]
    fn lossy_text_is_the_schema_s() {
        use crate::output::schema::Text;
        let mut cases: Vec<Vec<u8>> = (0..2000).map(|i| noise(i, (i % 97) as usize)).collect();
        let edges = [
            0x00u8, 0x1f, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0, 0xc1, 0xc2, 0xdf, 0xe0, 0xed, 0xef,
            0xf0, 0xf4, 0xf5, 0xff,
        ];
        for &a in &edges {
            for &b in &edges {
                for &c in &edges {
                    for &d in &[0x80u8, 0xbf, 0x41] {
                        cases.push(vec![a, b, c, d]);
                        cases.push(vec![a, b, c]);
                        cases.push(vec![b'x', a, b]);
                    }
                }
            }
        }
        cases.push("\u{10ffff}\u{fffd}é\u{9b}\u{7f}\"\\".into());
        for bytes in cases {
            let mut hand = Vec::new();
            lossy_text(&mut hand, &bytes);
            let mut serialized = Vec::new();
            to_writer(&mut serialized, &Text::borrowed(&bytes)).unwrap();
            assert_eq!(hand, serialized, "{bytes:x?}");
        }
    }

    /// Every byte and every character below U+0200 escape as serde_json
    /// with `TerminalSafe` escapes them.
    #[test]
    fn strings_escape_as_serde_does() {
        for s in hostile_strings() {
            let mut hand = Vec::new();
            string(&mut hand, &s);
            let mut serialized = Vec::new();
            to_writer(&mut serialized, &s).unwrap();
            assert_eq!(String::from_utf8_lossy(&hand), String::from_utf8_lossy(&serialized));
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
        let back: std::collections::BTreeMap<String, String> = serde_json::from_str(&line).unwrap();
        assert_eq!(back["comm"], hostile);
    }
}
