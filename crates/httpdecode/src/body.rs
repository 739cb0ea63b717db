//! Message bodies: bounded accumulation and content decoding.

use std::io::Read;

use crate::budget::Charge;

/// A request or response body.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Body {
    /// Bytes seen on the wire (after de-chunking), including those not kept.
    pub raw_len: usize,
    /// Kept bytes, after de-chunking and before decompression.
    pub raw: Vec<u8>,
    /// Decompressed body when Content-Encoding is gzip, deflate or br; None
    /// when not compressed or when decoding failed.
    pub decoded: Option<Vec<u8>>,
    /// Not all bytes were kept (limit reached) or bytes were lost.
    pub truncated: bool,
}

impl Body {
    /// Appends body bytes, keeping at most `limit`.
    pub(crate) fn push(&mut self, data: &[u8], limit: usize) {
        self.raw_len = self.raw_len.saturating_add(data.len());
        let room = limit.saturating_sub(self.raw.len());
        if data.len() > room {
            self.truncated = true;
        }
        self.raw.extend_from_slice(&data[..data.len().min(room)]);
    }

    /// Appends body bytes, keeping at most `limit`, each kept byte charged
    /// to `charge`. Once `*refused` (the budget had no room), bytes are only
    /// counted: a body with a hole in it would be worse than a cut one.
    /// Returns false when this call was refused.
    pub(crate) fn push_charged(
        &mut self,
        data: &[u8],
        limit: usize,
        charge: &mut Charge,
        refused: &mut bool,
    ) -> bool {
        let keep = data.len().min(limit.saturating_sub(self.raw.len()));
        if !*refused && !charge.grow(keep) {
            *refused = true;
            self.raw_len = self.raw_len.saturating_add(data.len());
            self.truncated = true;
            return false;
        }
        if *refused {
            self.raw_len = self.raw_len.saturating_add(data.len());
            self.truncated |= !data.is_empty();
            return true;
        }
        self.push(data, limit);
        true
    }

    /// Decodes `raw` according to the Content-Encoding header value.
    /// Returns a note when the encoding could not be decoded.
    pub(crate) fn decode(&mut self, content_encoding: Option<&str>, limit: usize) -> Option<String> {
        let encoding = content_encoding?.trim().to_ascii_lowercase();
        if encoding.is_empty() || encoding == "identity" || self.raw.is_empty() {
            return None;
        }
        let result = match encoding.as_str() {
            "gzip" | "x-gzip" => read_limited(flate2::read::MultiGzDecoder::new(&self.raw[..]), limit),
            "deflate" => inflate(&self.raw, limit),
            "br" => read_limited(brotli::Decompressor::new(&self.raw[..], 4096), limit),
            other => return Some(format!("content-encoding {other:?} not decoded")),
        };
        match result {
            Decoded::Complete(out) => self.decoded = Some(out),
            Decoded::Cut(out) => {
                self.decoded = Some(out);
                return Some(format!("decoded {encoding} body cut at {limit} bytes"));
            }
            // A truncated body cannot decode to its end; keep what came out.
            Decoded::Failed(out) if self.truncated && !out.is_empty() => {
                self.decoded = Some(out);
                return Some(format!("{encoding} body decoded only partially (body truncated)"));
            }
            Decoded::Failed(_) => return Some(format!("{encoding} body could not be decoded")),
        }
        None
    }
}

enum Decoded {
    Complete(Vec<u8>),
    /// Output reached the limit; the rest was not decoded.
    Cut(Vec<u8>),
    /// Decoding failed after producing these bytes.
    Failed(Vec<u8>),
}

/// `deflate` is zlib-wrapped per the RFC, but some servers send raw deflate.
fn inflate(raw: &[u8], limit: usize) -> Decoded {
    match read_limited(flate2::read::ZlibDecoder::new(raw), limit) {
        Decoded::Failed(_) => read_limited(flate2::read::DeflateDecoder::new(raw), limit),
        ok => ok,
    }
}

/// Reads a decompressor to its end, keeping at most `limit` bytes so that a
/// compression bomb cannot exhaust memory.
fn read_limited(mut reader: impl Read, limit: usize) -> Decoded {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return Decoded::Complete(out),
            Ok(n) => {
                let room = limit - out.len();
                if n > room {
                    out.extend_from_slice(&buf[..room]);
                    return Decoded::Cut(out);
                }
                out.extend_from_slice(&buf[..n]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return Decoded::Failed(out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{brotli_compress, gzip};

    #[test]
    fn push_respects_limit() {
        let mut b = Body::default();
        b.push(b"hello", 3);
        b.push(b"world", 3);
        assert_eq!(b.raw, b"hel");
        assert_eq!(b.raw_len, 10);
        assert!(b.truncated);
    }

    #[test]
    fn decodes_gzip_deflate_br() {
        let text = b"hello hello hello hello".to_vec();
        for (enc, data) in [
            ("gzip", gzip(&text)),
            ("br", brotli_compress(&text)),
            ("deflate", crate::testutil::zlib(&text)),
            ("deflate", crate::testutil::raw_deflate(&text)),
        ] {
            let mut b = Body::default();
            b.push(&data, 1000);
            assert_eq!(b.decode(Some(enc), 1000), None, "{enc}");
            assert_eq!(b.decoded.as_deref(), Some(&text[..]), "{enc}");
        }
    }

    #[test]
    fn bomb_is_cut() {
        let data = gzip(&vec![0u8; 100_000]);
        let mut b = Body::default();
        b.push(&data, 1 << 20);
        assert!(b.decode(Some("gzip"), 1000).is_some());
        assert_eq!(b.decoded.map(|d| d.len()), Some(1000));
    }

    #[test]
    fn garbage_is_not_decoded() {
        let mut b = Body::default();
        b.push(b"not gzip at all", 1000);
        assert!(b.decode(Some("gzip"), 1000).is_some());
        assert_eq!(b.decoded, None);
    }
}
