//! Builders of HTTP/2 frames and HPACK header blocks, shared by the unit
//! tests, the fuzz entry points and seeds, the integration tests and the
//! examples. Not part of the decoder's API: hidden from its documentation.

use crate::http2::frame::{CONTINUATION, END_HEADERS, END_STREAM, HEADERS};

pub use crate::detect::PREFACE;
/// HPACK integer (RFC 7541 section 5.1) of `prefix` bits after the bits of
/// `first`.
pub use crate::http2::encode_int as int;

/// An HTTP/2 frame (RFC 9113 section 4.1).
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend(stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HEADERS + CONTINUATION frames of at most 16 KiB carrying `block` (an
/// empty block: one empty HEADERS frame), END_STREAM on the HEADERS frame
/// if `end_stream`.
pub fn header_frames(stream: u32, block: &[u8], end_stream: bool) -> Vec<u8> {
    let chunks: Vec<&[u8]> = if block.is_empty() { vec![block] } else { block.chunks(16384).collect() };
    let mut out = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let last = if i == chunks.len() - 1 { END_HEADERS } else { 0 };
        let (kind, flags) = if i == 0 {
            (HEADERS, last | if end_stream { END_STREAM } else { 0 })
        } else {
            (CONTINUATION, last)
        };
        out.extend(frame(kind, flags, stream, chunk));
    }
    out
}

/// An HPACK literal field with a new name, not Huffman-coded; `first` 0x40
/// inserts it in the dynamic table, 0x00 not.
pub fn literal(out: &mut Vec<u8>, first: u8, name: &str, value: &[u8]) {
    out.push(first);
    int(out, 0, 7, name.len());
    out.extend_from_slice(name.as_bytes());
    int(out, 0, 7, value.len());
    out.extend_from_slice(value);
}
