//! Entry points for fuzzers, and a randomized no-panic test.

use std::time::SystemTime;

use crate::body::Body;
use crate::detect::{Start, PREFACE};
use crate::{http1, http2, Budget, Connection, Direction, Limits, State};

/// Small limits so that fuzzing reaches the truncation paths.
const FUZZ_LIMITS: Limits = Limits { max_body: 4096, max_plain_body: 256, max_header_list: 4096 };
/// A budget that inputs of a few hundred KiB can exhaust.
const FUZZ_BUDGET: usize = 192 * 1024;

/// Decodes `data` as an HTTP/1 connection whose client writes `Send`.
pub fn fuzz_http1(data: &[u8]) {
    let start = Start { client_dir: Some(Direction::Send), preface: false };
    let budget = Budget::new(FUZZ_BUDGET);
    let state = State::Http1(Box::new(http1::Http1::new(FUZZ_LIMITS, start, &budget)));
    drive(Connection { limits: FUZZ_LIMITS, budget, state }, data);
}

/// Decodes `data` as an HTTP/2 connection seen from its start (the preface
/// is supplied).
pub fn fuzz_http2(data: &[u8]) {
    let start = Start { client_dir: Some(Direction::Send), preface: true };
    let budget = Budget::new(FUZZ_BUDGET);
    let state = State::Http2(Box::new(http2::Http2::new(FUZZ_LIMITS, start, &budget)));
    let mut conn = Connection { limits: FUZZ_LIMITS, budget, state };
    conn.feed(Direction::Send, PREFACE, SystemTime::UNIX_EPOCH);
    drive(conn, data);
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
