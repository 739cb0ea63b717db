//! HPACK decoding for one direction.
//!
//! While the dynamic table is known (the connection was seen from its start)
//! the `loona-hpack` decoder does the work. Once the table state is unknown
//! (capture started mid-connection, bytes lost, a decoding error), a partial
//! decoder takes over: it decodes static-table references and literals, and
//! tracks entries inserted since then (they are the newest, so their indices
//! are known), but reports references to older entries as not decodable
//! instead of guessing.

use std::collections::VecDeque;

use loona_hpack::huffman::HuffmanDecoder;

/// Largest dynamic table kept, whatever the peers negotiate.
const MAX_TABLE: usize = 1 << 20;
/// Per-entry overhead counted by HPACK (RFC 7541 section 4.1).
const ENTRY_OVERHEAD: usize = 32;

pub(crate) struct HpackDecoder {
    mode: Mode,
    /// SETTINGS_HEADER_TABLE_SIZE announced by the decoding side.
    allowed: usize,
}

enum Mode {
    Synced(Box<loona_hpack::Decoder<'static>>),
    Partial(PartialTable),
}

/// Headers of one block, and what could not be decoded.
#[derive(Debug, Default)]
pub(crate) struct DecodedBlock {
    pub headers: Vec<(String, String)>,
    pub notes: Vec<String>,
}

impl HpackDecoder {
    /// `synced`: the table is known to be empty (connection start).
    pub(crate) fn new(synced: bool) -> Self {
        let mut d = HpackDecoder { mode: Mode::Partial(PartialTable::default()), allowed: 4096 };
        if synced {
            d.resync();
        }
        d
    }

    fn resync(&mut self) {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(self.allowed.min(MAX_TABLE));
        self.mode = Mode::Synced(Box::new(decoder));
    }

    /// The decoding side announced SETTINGS_HEADER_TABLE_SIZE.
    pub(crate) fn set_allowed(&mut self, size: u32) {
        self.allowed = (size as usize).min(MAX_TABLE);
        if let Mode::Synced(d) = &mut self.mode {
            d.set_max_allowed_table_size(self.allowed);
        }
    }

    /// A header block was lost or misread: the table state is now unknown.
    pub(crate) fn lose_state(&mut self) {
        self.mode = Mode::Partial(PartialTable::default());
    }

    pub(crate) fn decode(&mut self, block: &[u8]) -> DecodedBlock {
        if matches!(self.mode, Mode::Partial(_)) && clears_table(block) {
            // A size update to 0 empties the table: its state is known again.
            self.resync();
        }
        match &mut self.mode {
            Mode::Synced(d) => match d.decode(block) {
                Ok(list) => DecodedBlock {
                    headers: list.into_iter().map(|(n, v)| (lossy(&n), lossy(&v))).collect(),
                    notes: Vec::new(),
                },
                Err(e) => {
                    // Decode this block partially; no resync for it (a block
                    // the synced decoder rejected would be rejected again:
                    // found by fuzzing as an endless recursion).
                    let mut table = PartialTable::default();
                    let mut out = table.decode(block);
                    self.mode = Mode::Partial(table);
                    out.notes.insert(0, format!("HPACK decoding error ({e}): header table state lost"));
                    out
                }
            },
            Mode::Partial(t) => t.decode(block),
        }
    }
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

#[derive(Default)]
struct PartialTable {
    /// Newest first, like HPACK indices.
    known: VecDeque<Entry>,
    size: usize,
    /// Table size from a size update, once seen.
    max: Option<usize>,
}

/// A field looked up in the tables.
enum Lookup {
    Field(String, String),
    /// Name and value unknown (older dynamic entry).
    Unknown,
    /// Value known but name unknown.
    NoName,
}

/// Malformed header block.
struct Malformed;

impl PartialTable {
    fn decode(&mut self, block: &[u8]) -> DecodedBlock {
        let mut out = DecodedBlock::default();
        let mut unknown = Vec::new();
        let mut fields = 0usize;
        let mut i = 0;
        while i < block.len() {
            let step = self.field(&block[i..]);
            let Ok((consumed, lookup)) = step else {
                out.notes.push("malformed header block: rest not decoded".into());
                break;
            };
            i += consumed.max(1);
            match lookup {
                Some(Lookup::Field(n, v)) => out.headers.push((n, v)),
                Some(Lookup::Unknown) | Some(Lookup::NoName) => unknown.push(fields),
                None => continue,
            }
            fields += 1;
        }
        if !unknown.is_empty() {
            out.notes.push(format!(
                "headers not decodable: HPACK state unknown (capture started mid-connection or bytes lost): \
                 {} of {} header fields reference unknown dynamic table entries",
                unknown.len(),
                fields
            ));
        }
        out
    }

    /// Decodes one representation; None for a table size update.
    fn field(&mut self, buf: &[u8]) -> Result<(usize, Option<Lookup>), Malformed> {
        let b = buf[0];
        if b & 0x80 != 0 {
            let (index, n) = decode_int(buf, 7).ok_or(Malformed)?;
            return Ok((n, Some(self.lookup(index)?)));
        }
        if b & 0xe0 == 0x20 {
            let (size, n) = decode_int(buf, 5).ok_or(Malformed)?;
            self.max = Some(size);
            self.evict();
            return Ok((n, None));
        }
        let (prefix, insert) = if b & 0x40 != 0 { (6, true) } else { (4, false) };
        let (index, mut n) = decode_int(buf, prefix).ok_or(Malformed)?;
        let name = if index == 0 {
            let (name, len) = decode_string(&buf[n..])?;
            n += len;
            Some(name)
        } else {
            match self.lookup(index)? {
                Lookup::Field(name, _) => Some(name),
                Lookup::Unknown | Lookup::NoName => None,
            }
        };
        let (value, len) = decode_string(&buf[n..])?;
        n += len;
        if insert {
            self.insert(Entry { name: name.clone(), value: value.clone() });
        }
        let field = match name {
            Some(name) => Lookup::Field(name, value),
            None => Lookup::NoName,
        };
        Ok((n, Some(field)))
    }

    fn lookup(&self, index: usize) -> Result<Lookup, Malformed> {
        if index == 0 {
            return Err(Malformed);
        }
        if let Some((n, v)) = STATIC_TABLE.get(index - 1) {
            return Ok(Lookup::Field((*n).to_owned(), (*v).to_owned()));
        }
        Ok(match self.known.get(index - 1 - STATIC_TABLE.len()) {
            Some(Entry { name: Some(n), value }) => Lookup::Field(n.clone(), value.clone()),
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
        let max = self.max.unwrap_or(MAX_TABLE).min(MAX_TABLE);
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
fn decode_string(buf: &[u8]) -> Result<(String, usize), Malformed> {
    let (len, n) = decode_int(buf, 7).ok_or(Malformed)?;
    let end = n.checked_add(len).ok_or(Malformed)?;
    let raw = buf.get(n..end).ok_or(Malformed)?;
    let bytes = if buf[0] & 0x80 != 0 {
        HuffmanDecoder::new().decode(raw).map_err(|_| Malformed)?
    } else {
        raw.to_vec()
    };
    Ok((lossy(&bytes), end))
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
        let mut dec = HpackDecoder::new(false);
        let out = dec.decode(&block);
        assert!(out.headers.contains(&(":method".into(), "GET".into())));
        assert!(out.headers.contains(&("x-new".into(), "two".into())));
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
        let mut dec = HpackDecoder::new(false);
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
