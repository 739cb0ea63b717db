//! HPACK decoding for one direction.
//!
//! While the dynamic table is known (the connection was seen from its start)
//! the `loona-hpack` decoder does the work. Once the table state is unknown
//! (capture started mid-connection, bytes lost, a decoding error), a partial
//! decoder takes over: it decodes static-table references and literals, and
//! tracks entries inserted since then (they are the newest, so their indices
//! are known), but reports references to older entries as not decodable
//! instead of guessing.
//!
//! Both decoders keep their dynamic table within a fixed cap whatever the
//! peers announce, and materialise at most a budget of each header list
//! (counted as HPACK counts a header list's size: name + value + 32 bytes
//! per field): one-byte references to a large table entry would otherwise
//! copy that entry once per byte of the block. Past the budget a block is
//! still decoded to its end, so that its dynamic table insertions keep the
//! table in sync, but its fields are dropped.

use std::borrow::Cow;
use std::collections::VecDeque;

use loona_hpack::huffman::HuffmanDecoder;

use crate::budget::{Budget, Charge};
use crate::Headers;

/// Largest dynamic table kept, whatever the peers negotiate (browsers
/// announce 64 KiB, most servers keep the 4096-byte default).
pub(crate) const MAX_TABLE: usize = 64 * 1024;
/// The HTTP/2 default SETTINGS_HEADER_TABLE_SIZE.
pub(crate) const DEFAULT_TABLE: usize = 4096;
/// Per-entry overhead counted by HPACK (RFC 7541 section 4.1).
const ENTRY_OVERHEAD: usize = 32;

pub(crate) struct HpackDecoder {
    mode: Mode,
    /// SETTINGS_HEADER_TABLE_SIZE announced by the decoding side.
    announced: usize,
    /// The table size kept: `announced`, at most MAX_TABLE.
    allowed: usize,
    /// Header list size materialised per block.
    max_list: usize,
    /// The table allowed beyond DEFAULT_TABLE; it only grows, since the
    /// table shrinks only when the encoder says so.
    charge: Charge,
}

enum Mode {
    Synced(Box<loona_hpack::Decoder<'static>>),
    Partial(PartialTable),
}

/// Headers of one block, and what could not be decoded.
#[derive(Debug, Default)]
pub(crate) struct DecodedBlock {
    pub headers: Headers,
    pub notes: Vec<String>,
}

/// HPACK size of a header field (RFC 7541 section 4.1).
pub(crate) fn field_size(name: &str, value: &str) -> usize {
    name.len() + value.len() + ENTRY_OVERHEAD
}

/// The fields of one block materialised so far, within a budget.
struct List {
    headers: Headers,
    left: usize,
    budget: usize,
    dropped: usize,
}

impl List {
    fn new(budget: usize) -> Self {
        List { headers: Headers::new(), left: budget, budget, dropped: 0 }
    }

    /// Keeps a field while the budget lasts; nothing is copied past it.
    fn push(&mut self, name: &[u8], value: &[u8]) {
        let size = name.len() + value.len() + ENTRY_OVERHEAD;
        if self.dropped > 0 || size > self.left {
            self.dropped += 1;
            return;
        }
        self.left -= size;
        self.headers.push_lossy(name, value);
    }

    fn finish(self, mut notes: Vec<String>) -> DecodedBlock {
        if self.dropped > 0 {
            notes.push(truncated_note(self.budget, self.dropped));
        }
        DecodedBlock { headers: self.headers, notes }
    }
}

/// The note of a header list cut at its budget.
pub(crate) fn truncated_note(budget: usize, dropped: usize) -> String {
    format!("{} of {budget} bytes: {dropped} header fields dropped", crate::HEADER_LIST_TRUNCATED)
}

impl HpackDecoder {
    /// `synced`: the table is known to be empty (connection start);
    /// `max_list`: header list size materialised per block.
    pub(crate) fn new(synced: bool, max_list: usize, budget: &Budget) -> Self {
        let mode = Mode::Partial(PartialTable::new(DEFAULT_TABLE));
        let (announced, allowed, charge) = (DEFAULT_TABLE, DEFAULT_TABLE, Charge::new(budget));
        let mut d = HpackDecoder { mode, announced, allowed, max_list, charge };
        if synced {
            d.resync();
        }
        d
    }

    fn resync(&mut self) {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(self.allowed);
        self.mode = Mode::Synced(Box::new(decoder));
    }

    /// The decoding side announced SETTINGS_HEADER_TABLE_SIZE: the table
    /// may grow to it, within MAX_TABLE (see `clamp_size_updates`), and
    /// within the budget: without room the table keeps its size.
    pub(crate) fn set_allowed(&mut self, size: usize) {
        self.announced = size;
        let want = size.min(MAX_TABLE);
        let extra = want.saturating_sub(DEFAULT_TABLE);
        if extra <= self.charge.held() || self.charge.set(extra) {
            self.allowed = want;
        }
        match &mut self.mode {
            Mode::Synced(d) => d.set_max_allowed_table_size(self.allowed),
            Mode::Partial(t) => t.set_cap(self.allowed),
        }
    }

    /// A header block was lost or misread: the table state is now unknown.
    pub(crate) fn lose_state(&mut self) {
        self.mode = Mode::Partial(PartialTable::new(self.allowed));
    }

    pub(crate) fn decode(&mut self, block: &[u8]) -> DecodedBlock {
        if matches!(self.mode, Mode::Partial(_)) && clears_table(block) {
            // A size update to 0 empties the table: its state is known again.
            self.resync();
        }
        let mut list = List::new(self.max_list);
        match &mut self.mode {
            Mode::Synced(d) => {
                let clamped = clamp_size_updates(block, self.announced, self.allowed);
                match d.decode_with_cb(&clamped, |n, v| list.push(&n, &v)) {
                    Ok(()) => list.finish(Vec::new()),
                    Err(e) => {
                        // Decode this block partially; no resync for it (a
                        // block the synced decoder rejected would be rejected
                        // again: found by fuzzing as an endless recursion).
                        let mut table = PartialTable::new(self.allowed);
                        let mut list = List::new(self.max_list);
                        let notes = table.decode(block, &mut list);
                        self.mode = Mode::Partial(table);
                        let mut out = list.finish(notes);
                        out.notes.insert(0, format!("HPACK decoding error ({e}): header table state lost"));
                        out
                    }
                }
            }
            Mode::Partial(t) => {
                let notes = t.decode(block, &mut list);
                list.finish(notes)
            }
        }
    }
}

/// Lowers the dynamic table size updates at the start of a block that are
/// valid (within what the decoding side announced) but above `cap` to `cap`.
/// The table then evicts entries earlier than the encoder's does: a later
/// reference to an entry it no longer holds makes decoding fail (and the
/// table state is reported lost) instead of being guessed, and references to
/// the entries it holds, the newest, decode as they should. Invalid updates
/// are left for the decoder to reject.
fn clamp_size_updates(block: &[u8], announced: usize, cap: usize) -> Cow<'_, [u8]> {
    let mut sizes = Vec::new();
    let mut rest = block;
    while rest.first().is_some_and(|b| b & 0xe0 == 0x20) {
        let Some((size, n)) = decode_int(rest, 5) else { break };
        sizes.push(size);
        rest = &rest[n..];
    }
    if !sizes.iter().any(|&s| s > cap && s <= announced) {
        return Cow::Borrowed(block);
    }
    let mut out = Vec::with_capacity(block.len());
    for size in sizes {
        let size = if size <= announced { size.min(cap) } else { size };
        encode_int(&mut out, 0x20, 5, size);
    }
    out.extend_from_slice(rest);
    Cow::Owned(out)
}

/// HPACK integer (RFC 7541 section 5.1) after the bits of `first`.
pub fn encode_int(out: &mut Vec<u8>, first: u8, prefix: u8, mut v: usize) {
    let max = (1usize << prefix) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// Whether a block starts with dynamic table size updates, one of them to 0.
fn clears_table(block: &[u8]) -> bool {
    let mut rest = block;
    while let Some(&b) = rest.first() {
        if b & 0xe0 != 0x20 {
            return false;
        }
        match decode_int(rest, 5) {
            Some((0, _)) => return true,
            Some((_, n)) => rest = &rest[n..],
            None => return false,
        }
    }
    false
}

/// A dynamic table entry inserted after the state became unknown; its name
/// is unknown when it was taken from an older entry.
struct Entry {
    name: Option<String>,
    value: String,
}

impl Entry {
    fn size(&self) -> usize {
        self.name.as_ref().map_or(0, String::len) + self.value.len() + ENTRY_OVERHEAD
    }
}

struct PartialTable {
    /// Newest first, like HPACK indices.
    known: VecDeque<Entry>,
    size: usize,
    /// Table size from a size update, once seen.
    max: Option<usize>,
    /// What the table may hold whatever the size updates say.
    cap: usize,
}

/// A field looked up in the tables, borrowed from them.
enum Lookup<'a> {
    Field(&'a str, &'a str),
    /// Name and value unknown (older dynamic entry).
    Unknown,
    /// Value known but name unknown.
    NoName,
}

/// What one representation decoded to.
enum Step {
    /// A field, given to the list (or counted as undecodable).
    Field {
        known: bool,
    },
    SizeUpdate,
}

/// Malformed header block.
struct Malformed;

impl PartialTable {
    fn new(cap: usize) -> Self {
        PartialTable { known: VecDeque::new(), size: 0, max: None, cap }
    }

    fn set_cap(&mut self, cap: usize) {
        self.cap = cap;
        self.evict();
    }

    /// Decodes a block into `list`; returns notes on what was not decoded.
    fn decode(&mut self, block: &[u8], list: &mut List) -> Vec<String> {
        let mut notes = Vec::new();
        let mut unknown = 0usize;
        let mut fields = 0usize;
        let mut i = 0;
        while i < block.len() {
            let step = self.field(&block[i..], list);
            let Ok((consumed, step)) = step else {
                notes.push("malformed header block: rest not decoded".into());
                break;
            };
            i += consumed.max(1);
            match step {
                Step::Field { known: true } => {}
                Step::Field { known: false } => unknown += 1,
                Step::SizeUpdate => continue,
            }
            fields += 1;
        }
        if unknown > 0 {
            notes.push(format!(
                "headers not decodable: HPACK state unknown (capture started mid-connection or bytes lost): \
                 {unknown} of {fields} header fields reference unknown dynamic table entries"
            ));
        }
        notes
    }

    /// Decodes one representation, giving a decoded field to `list`.
    fn field(&mut self, buf: &[u8], list: &mut List) -> Result<(usize, Step), Malformed> {
        let b = buf[0];
        if b & 0x80 != 0 {
            let (index, n) = decode_int(buf, 7).ok_or(Malformed)?;
            let known = match self.lookup(index)? {
                Lookup::Field(name, value) => {
                    list.push(name.as_bytes(), value.as_bytes());
                    true
                }
                Lookup::Unknown | Lookup::NoName => false,
            };
            return Ok((n, Step::Field { known }));
        }
        if b & 0xe0 == 0x20 {
            let (size, n) = decode_int(buf, 5).ok_or(Malformed)?;
            self.max = Some(size);
            self.evict();
            return Ok((n, Step::SizeUpdate));
        }
        let (prefix, insert) = if b & 0x40 != 0 { (6, true) } else { (4, false) };
        let (index, mut n) = decode_int(buf, prefix).ok_or(Malformed)?;
        let name: Option<Cow<[u8]>> = if index == 0 {
            let (name, len) = decode_string(&buf[n..])?;
            n += len;
            Some(name)
        } else {
            match self.lookup(index)? {
                Lookup::Field(name, _) => Some(Cow::Borrowed(name.as_bytes())),
                Lookup::Unknown | Lookup::NoName => None,
            }
        };
        let (value, len) = decode_string(&buf[n..])?;
        n += len;
        if let Some(name) = &name {
            list.push(name, &value);
        }
        let known = name.is_some();
        if insert {
            let entry = Entry { name: name.map(|n| lossy(&n)), value: lossy(&value) };
            self.insert(entry);
        }
        Ok((n, Step::Field { known }))
    }

    fn lookup(&self, index: usize) -> Result<Lookup<'_>, Malformed> {
        if index == 0 {
            return Err(Malformed);
        }
        if let Some((n, v)) = STATIC_TABLE.get(index - 1) {
            return Ok(Lookup::Field(n, v));
        }
        Ok(match self.known.get(index - 1 - STATIC_TABLE.len()) {
            Some(Entry { name: Some(n), value }) => Lookup::Field(n, value),
            Some(Entry { name: None, .. }) => Lookup::NoName,
            None => Lookup::Unknown,
        })
    }

    fn insert(&mut self, entry: Entry) {
        self.size += entry.size();
        self.known.push_front(entry);
        self.evict();
    }

    /// Evicts the oldest known entries beyond the table size. Evicting too
    /// early is safe: the entry is then reported unknown, never guessed.
    fn evict(&mut self) {
        let max = self.max.unwrap_or(self.cap).min(self.cap);
        while self.size > max {
            match self.known.pop_back() {
                Some(e) => self.size -= e.size(),
                None => self.size = 0,
            }
        }
    }
}

/// HPACK integer (RFC 7541 section 5.1); None when malformed or cut.
fn decode_int(buf: &[u8], prefix: u8) -> Option<(usize, usize)> {
    let mask = (1u16 << prefix) as usize - 1;
    let mut value = (*buf.first()? as usize) & mask;
    if value < mask {
        return Some((value, 1));
    }
    // Four continuation bytes are plenty for any sane length or index.
    for (i, &b) in buf.iter().enumerate().skip(1).take(4) {
        value += ((b & 0x7f) as usize) << (7 * (i - 1));
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// HPACK string literal (RFC 7541 section 5.2).
fn decode_string(buf: &[u8]) -> Result<(Cow<'_, [u8]>, usize), Malformed> {
    let (len, n) = decode_int(buf, 7).ok_or(Malformed)?;
    let end = n.checked_add(len).ok_or(Malformed)?;
    let raw = buf.get(n..end).ok_or(Malformed)?;
    let bytes = if buf[0] & 0x80 != 0 {
        Cow::Owned(HuffmanDecoder::new().decode(raw).map_err(|_| Malformed)?)
    } else {
        Cow::Borrowed(raw)
    };
    Ok((bytes, end))
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// RFC 7541 Appendix A.
pub(crate) static STATIC_TABLE: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_decodes_static_and_literals_only() {
        let mut enc = loona_hpack::Encoder::new();
        let first: Vec<(&[u8], &[u8])> = vec![(b":method", b"GET"), (b"x-custom", b"one")];
        let second: Vec<(&[u8], &[u8])> =
            vec![(b":method", b"GET"), (b"x-custom", b"one"), (b"x-new", b"two")];
        let _lost = enc.encode(first.iter().copied());
        let block = enc.encode(second.iter().copied());
        let mut dec = HpackDecoder::new(false, 1 << 20, &Budget::default());
        let out = dec.decode(&block);
        assert!(out.headers.iter().any(|f| f == (":method", "GET")));
        assert!(out.headers.iter().any(|f| f == ("x-new", "two")));
        assert!(!out.headers.iter().any(|(n, _)| n == "x-custom"));
        assert_eq!(out.notes.len(), 1, "{:?}", out.notes);
        // The entry inserted by the second block is now known.
        let third = enc.encode([(&b"x-new"[..], &b"two"[..])]);
        let out = dec.decode(&third);
        assert_eq!(out.headers, vec![("x-new".into(), "two".into())]);
        assert!(out.notes.is_empty());
    }

    #[test]
    fn size_update_to_zero_resyncs() {
        let mut dec = HpackDecoder::new(false, 1 << 20, &Budget::default());
        // size update 0, size update 4096, literal with indexing "a: b", then index 62
        let mut block = vec![0x20, 0x3f, 0xe1, 0x1f, 0x40, 1, b'a', 1, b'b'];
        block.push(0x80 | 62);
        let out = dec.decode(&block);
        assert_eq!(out.headers, vec![("a".into(), "b".into()), ("a".into(), "b".into())]);
        assert!(matches!(dec.mode, Mode::Synced(_)));
    }

    #[test]
    fn ints() {
        assert_eq!(decode_int(&[31, 154, 10], 5), Some((1337, 3)));
        assert_eq!(decode_int(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff], 8), None);
    }
}
