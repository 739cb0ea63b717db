//! Entry points for fuzzers, and a randomized no-panic test.

use std::time::SystemTime;

use crate::body::Body;
use crate::detect::{Start, PREFACE};
use crate::wire::{frame, header_frames, int, literal};
use crate::{http1, http2, Budget, Connection, Direction, Limits, State};

/// Small limits so that fuzzing reaches the truncation paths.
const FUZZ_LIMITS: Limits = Limits { max_body: 4096, max_plain_body: 256, max_header_list: 4096 };
/// Budgets of inputs of odd and even lengths: one that inputs of a few
/// hundred KiB exhaust, one that a 256 KiB header block fits in.
const FUZZ_BUDGETS: [usize; 2] = [192 * 1024, 1 << 20];

fn fuzz_budget(data: &[u8]) -> Budget {
    Budget::new(FUZZ_BUDGETS[data.len() % 2])
}

/// Decodes `data` as an HTTP/1 connection whose client writes `Send`.
pub fn fuzz_http1(data: &[u8]) {
    let start = Start { client_dir: Some(Direction::Send), preface: false };
    let budget = fuzz_budget(data);
    let state = State::Http1(Box::new(http1::Http1::new(FUZZ_LIMITS, start, &budget)));
    drive(Connection { limits: FUZZ_LIMITS, budget, state }, data);
}

/// Decodes `data` as an HTTP/2 connection seen from its start (the preface
/// is supplied).
pub fn fuzz_http2(data: &[u8]) {
    let start = Start { client_dir: Some(Direction::Send), preface: true };
    let budget = fuzz_budget(data);
    let state = State::Http2(Box::new(http2::Http2::new(FUZZ_LIMITS, start, &budget)));
    let mut conn = Connection { limits: FUZZ_LIMITS, budget, state };
    conn.feed(Direction::Send, PREFACE, SystemTime::UNIX_EPOCH);
    drive(conn, data);
}

/// Decodes header blocks as the requests of one HTTP/2 connection seen
/// from its start, each in HEADERS + CONTINUATION frames of 16 KiB and
/// answered. `data[0]` picks the SETTINGS_HEADER_TABLE_SIZE the server
/// announces (bits 0-1: 4096, 0, 65536, 2^32 - 1), a 4096-byte header list
/// budget instead of the default 64 KiB (bit 2) and a capture gap before
/// the blocks, so that the partial decoder decodes them (bit 3); then
/// blocks follow, each after its length in 3 bytes (big-endian). Asserts
/// that no header list outgrows its budget and that every budget charge is
/// given back.
pub fn fuzz_hpack(data: &[u8]) {
    let Some((&selector, mut rest)) = data.split_first() else { return };
    let table: u32 = [4096, 0, 65536, u32::MAX][usize::from(selector & 3)];
    let max_header_list = if selector & 4 != 0 { 4096 } else { Limits::default().max_header_list };
    let limits = Limits { max_header_list, ..Limits::default() };
    let budget = Budget::new(4 << 20);
    let mut conn = Connection::with_budget(limits, budget.clone());
    let time = SystemTime::UNIX_EPOCH;
    let mut client = PREFACE.to_vec();
    client.extend(frame(0x4, 0, 0, &[]));
    let mut out = conn.feed(Direction::Send, &client, time);
    let mut settings = vec![0, 1];
    settings.extend(table.to_be_bytes());
    out.extend(conn.feed(Direction::Recv, &frame(0x4, 0, 0, &settings), time));
    if selector & 8 != 0 {
        conn.gap(Direction::Send);
    }
    let mut stream = 1u32;
    while let [a, b, c, tail @ ..] = rest {
        let len = usize::from_be_bytes([0, 0, 0, 0, 0, *a, *b, *c]).min(tail.len());
        let (block, next) = tail.split_at(len);
        rest = next;
        for record in header_frames(stream, block, true).chunks(16384) {
            out.extend(conn.feed(Direction::Send, record, time));
        }
        out.extend(conn.feed(Direction::Recv, &header_frames(stream, &[0x88], true), time));
        stream += 2;
    }
    out.extend(conn.close(time));
    for ex in &out {
        for list in [&ex.request_headers, &ex.response_headers, &ex.request_trailers, &ex.response_trailers] {
            let size: usize = list.iter().map(|(n, v)| n.len() + v.len() + 32).sum();
            assert!(size <= max_header_list, "{size} bytes of headers: {:?}", ex.notes);
        }
    }
    drop(conn);
    assert_eq!(budget.used(), 0, "charges not given back");
}

/// Seed inputs of `fuzz_hpack` (name, bytes): the HPACK amplification
/// shapes, header blocks of up to 256 KiB that would decode to hundreds of
/// MB without the header list budget. Fuzz with `-max_len=300000` to keep
/// them whole (they are 205-266 KB).
pub fn fuzz_hpack_seeds() -> Vec<(&'static str, Vec<u8>)> {
    fn seed(selector: u8, blocks: &[Vec<u8>]) -> Vec<u8> {
        let mut out = vec![selector];
        for b in blocks {
            out.extend(&(b.len() as u32).to_be_bytes()[1..]);
            out.extend(b);
        }
        out
    }
    let get = [0x82, 0x87, 0x84];
    let next = vec![0x82, 0x87, 0x85, 0x80 | 62, 0x80 | 63];

    // A whole 256 KiB block: the largest one decoded.
    let mut refs = get.to_vec();
    literal(&mut refs, 0x40, "x", &[b'a'; 4000]);
    refs.extend(std::iter::repeat_n(0x80 | 62, 256 * 1024 - refs.len()));

    let mut big_entry = vec![0x3f, 0xe1, 0xff, 0x03];
    big_entry.extend(get);
    literal(&mut big_entry, 0x40, "h", &[b'h'; 65_000]);
    let mut big_refs = get.to_vec();
    big_refs.extend(std::iter::repeat_n(0x80 | 62, 200_000));

    let mut literals = get.to_vec();
    for i in 0..25_000 {
        literal(&mut literals, 0x40, "k", format!("{i:05}").as_bytes());
    }

    let mut size_update = vec![0x3f, 0xe0, 0xff, 0xff, 0x7f];
    size_update.extend(get);
    for i in 0..200u8 {
        literal(&mut size_update, 0x40, "v", &[b'0' + i % 10; 1000]);
    }

    let mut huffman = get.to_vec();
    huffman.extend([0x00, 1, b'h']);
    int(&mut huffman, 0x80, 7, 200_000);
    huffman.extend(std::iter::repeat_n(0, 200_000));
    huffman.extend([0x40, 2, b'h', b'2', 0x80 | 10]);
    huffman.extend([0; 10]);

    vec![
        ("refs-to-4000-byte-entry", seed(0, &[refs.clone(), next.clone()])),
        ("refs-to-4000-byte-entry-partial", seed(8, &[refs, next.clone()])),
        ("refs-to-65000-byte-entry", seed(2, &[big_entry, big_refs, next.clone()])),
        ("literal-fields", seed(0, &[literals.clone(), next.clone()])),
        ("literal-fields-small-budget-partial", seed(4 | 8, &[literals, next.clone()])),
        ("table-size-update-2pow28", seed(3, &[size_update.clone(), next.clone()])),
        ("table-size-update-beyond-settings", seed(0, &[size_update, next.clone()])),
        ("huffman-value", seed(0, &[huffman, next])),
    ]
}

/// `fuzz_hpack_seeds` as inputs of `fuzz_http2`: the same blocks as
/// requests after the server's SETTINGS, in segments of 255 bytes (those
/// of a smaller header list budget or after a gap are left out: the
/// `fuzz_http2` limits are fixed).
pub fn fuzz_http2_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();
    for (name, seed) in fuzz_hpack_seeds().into_iter().filter(|(_, s)| s[0] & 0xc == 0) {
        let table: u32 = [4096, 0, 65536, u32::MAX][usize::from(seed[0] & 3)];
        let mut settings = vec![0, 1];
        settings.extend(table.to_be_bytes());
        let mut client = frame(0x4, 0, 0, &[]);
        let server = frame(0x4, 0, 0, &settings);
        let mut server_rest = Vec::new();
        let (mut rest, mut stream) = (&seed[1..], 1u32);
        while let [a, b, c, tail @ ..] = rest {
            let len = usize::from_be_bytes([0, 0, 0, 0, 0, *a, *b, *c]).min(tail.len());
            client.extend(header_frames(stream, &tail[..len], true));
            server_rest.extend(header_frames(stream, &[0x88], true));
            rest = &tail[len..];
            stream += 2;
        }
        let mut input = Vec::new();
        for (control, bytes) in [(1u8, server), (0, client), (1, server_rest)] {
            for segment in bytes.chunks(255) {
                input.extend([control, segment.len() as u8]);
                input.extend(segment);
            }
        }
        out.push((name, input));
    }
    out
}

/// Decompresses `data[1..]` as a body whose Content-Encoding the first
/// byte picks (gzip, deflate, br, or an unknown one), as truncated or not
/// as bit 7 of that byte says: any bytes, bounded output.
pub fn fuzz_body(data: &[u8]) {
    let Some((&selector, raw)) = data.split_first() else { return };
    let encoding = ["gzip", "deflate", "br", "zstd"][usize::from(selector & 3)];
    let mut body = Body::default();
    body.push(raw, FUZZ_LIMITS.max_body);
    body.truncated |= selector & 0x80 != 0;
    let _ = body.decode(Some(encoding), FUZZ_LIMITS.max_body);
    assert!(body.decoded.as_ref().map_or(0, Vec::len) <= FUZZ_LIMITS.max_body);
}

/// Splits `data` into segments `[control, length, bytes...]`: control bit 0
/// picks the direction, bits 6 and 7 both set report a gap first.
/// Every charge is given back once the connection is dropped.
fn drive(mut conn: Connection, data: &[u8]) {
    let budget = conn.budget().clone();
    let mut rest = data;
    let time = SystemTime::UNIX_EPOCH;
    while let [control, len, tail @ ..] = rest {
        let dir = if control & 1 == 0 { Direction::Send } else { Direction::Recv };
        if control & 0xc0 == 0xc0 {
            conn.gap(dir);
        }
        let n = (*len as usize).min(tail.len());
        conn.feed(dir, &tail[..n], time);
        rest = &tail[n..];
    }
    conn.close(time);
    assert!(budget.used() <= budget.limit());
    drop(conn);
    assert_eq!(budget.used(), 0, "charges not given back");
}

#[cfg(test)]
mod tests;
