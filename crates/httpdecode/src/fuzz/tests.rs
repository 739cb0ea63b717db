//! Randomized robustness test: random bytes and mutated valid streams, split
//! at random chunk boundaries, with random gaps. Asserts no panic and that
//! kept bodies respect the limit.

use std::time::{Duration, Instant};

use super::{fuzz_http1, fuzz_http2};
use crate::detect::PREFACE;
use crate::http2::frame::{DATA, END_HEADERS, END_STREAM, HEADERS, SETTINGS};
use crate::testutil::{brotli_compress, frame, grpc_msg, gzip, t, Hpack};
use crate::{Budget, Connection, Direction, Limits};
use fastrand::Rng;

/// Fewer than `max` random bytes.
fn random_bytes(rng: &mut Rng, max: usize) -> Vec<u8> {
    (0..rng.usize(..max)).map(|_| rng.u8(..)).collect()
}

type Stream = Vec<(Direction, Vec<u8>)>;

fn http1_samples() -> Vec<Stream> {
    use Direction::{Recv, Send};
    let gz = gzip(b"hello gzip");
    let br = brotli_compress(b"hello br");
    let mut gz_resp =
        format!("HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\n\r\n", gz.len())
            .into_bytes();
    gz_resp.extend(gz);
    let mut br_resp = format!(
        "HTTP/1.1 200 OK\r\nContent-Encoding: br\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
        br.len()
    )
    .into_bytes();
    br_resp.extend(br);
    br_resp.extend(b"\r\n0\r\nT: 1\r\n\r\n");
    vec![
        vec![
            (Send, b"GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST /p HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc".to_vec()),
            (Recv, gz_resp),
            (Recv, br_resp),
        ],
        vec![
            (Recv, b"PUT /u HTTP/1.1\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec()),
            (Send, b"HTTP/1.1 100 Continue\r\n\r\n".to_vec()),
            (Recv, b"3\r\nabc\r\n0\r\n\r\nHEAD / HTTP/1.0\r\n\r\n".to_vec()),
            (Send, b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.0 200 OK\r\nContent-Length: 9\r\n\r\nHTTP/1.0 200 OK\r\n\r\nuntil close".to_vec()),
        ],
        vec![
            (Send, b"CONNECT h:443 HTTP/1.1\r\n\r\n".to_vec()),
            (Recv, b"HTTP/1.1 200 OK\r\n\r\n\x16\x03".to_vec()),
        ],
    ]
}

fn http2_sample() -> Stream {
    use Direction::{Recv, Send};
    let (mut c, mut s) = (Hpack::new(), Hpack::new());
    let req =
        [(":method", "POST"), (":path", "/svc/M"), (":authority", "x"), ("content-type", "application/grpc")];
    let mut client = PREFACE.to_vec();
    client.extend(frame(SETTINGS, 0, 0, &[0, 1, 0, 0, 0x10, 0]));
    for id in [1u32, 3] {
        client.extend(frame(HEADERS, END_HEADERS, id, &c.block(&req)));
        client.extend(frame(DATA, END_STREAM, id, &grpc_msg(b"payload")));
    }
    let mut server = frame(SETTINGS, 0, 0, &[]);
    for id in [3u32, 1] {
        let h = s.block(&[
            (":status", "200"),
            ("content-type", "application/grpc"),
            ("content-encoding", "gzip"),
        ]);
        server.extend(frame(HEADERS, END_HEADERS, id, &h));
        server.extend(frame(DATA, 0, id, &grpc_msg(&gzip(b"reply"))));
        server.extend(frame(HEADERS, END_HEADERS | END_STREAM, id, &s.block(&[("grpc-status", "0")])));
    }
    vec![(Send, client), (Recv, server)]
}

fn mutate(rng: &mut Rng, data: &mut Vec<u8>) {
    for _ in 0..rng.usize(..4) {
        if data.is_empty() {
            return;
        }
        let at = rng.usize(..data.len());
        match rng.usize(..5) {
            0 => data[at] ^= 1 << rng.usize(..8),
            1 => data[at] = rng.u8(..),
            2 => {
                let end = (at + rng.usize(..16)).min(data.len());
                data.drain(at..end);
            }
            3 => {
                let extra = random_bytes(rng, 16);
                data.splice(at..at, extra);
            }
            _ => data.truncate(at),
        }
    }
}

/// Feeds a stream at random chunk boundaries with occasional gaps, within
/// a budget that is sometimes too small; every charge is given back.
/// Returns how many times the budget refused something.
fn feed_randomly(rng: &mut Rng, stream: &Stream, limits: Limits) -> u64 {
    let budget = Budget::new([300, 2000, 1 << 20][rng.usize(..3)]);
    let mut conn = Connection::with_budget(limits, budget.clone());
    let mut ms = 0;
    for (dir, data) in stream {
        let mut rest = &data[..];
        while !rest.is_empty() {
            let n = 1 + rng.usize(..rest.len().min(64));
            if rng.usize(..50) == 0 {
                conn.gap(*dir);
            }
            ms += 1;
            for ex in conn.feed(*dir, &rest[..n], t(ms)) {
                check(&ex, limits);
            }
            rest = &rest[n..];
        }
    }
    for ex in conn.close(t(ms + 1)) {
        check(&ex, limits);
    }
    drop(conn);
    assert_eq!(budget.used(), 0, "charges not given back");
    budget.refusals()
}

fn check(ex: &crate::Exchange, limits: Limits) {
    for body in [&ex.request_body, &ex.response_body] {
        assert!(body.raw.len() <= limits.max_body);
        assert!(body.decoded.as_ref().is_none_or(|d| d.len() <= limits.max_body));
        assert!(body.raw.len() <= body.raw_len);
    }
    if ex.protocol == crate::Protocol::Http2 {
        for list in [&ex.request_headers, &ex.response_headers, &ex.request_trailers, &ex.response_trailers] {
            let size: usize = list.iter().map(|(n, v)| n.len() + v.len() + 32).sum();
            assert!(size <= limits.max_header_list, "{size} bytes of headers: {:?}", ex.notes);
        }
    }
}

#[test]
fn random_inputs_never_panic() {
    let mut rng = Rng::with_seed(0x9e37_79b9_7f4a_7c15);
    let limits = Limits { max_body: 64, max_plain_body: 64, max_header_list: 256 };
    let mut samples = http1_samples();
    samples.push(http2_sample());
    let started = Instant::now();
    let mut cases = 0;
    let mut refusals = 0;
    for round in 0..25_000 {
        // Mutated valid streams, through detection.
        let mut stream = samples[round % samples.len()].clone();
        for (_, data) in &mut stream {
            mutate(&mut rng, data);
        }
        refusals += feed_randomly(&mut rng, &stream, limits);
        // Pure noise, through detection.
        let noise = random_bytes(&mut rng, 512);
        let noise = vec![(Direction::Send, noise.clone()), (Direction::Recv, noise)];
        refusals += feed_randomly(&mut rng, &noise, limits);
        // The fuzz entry points, on noise and on mutated valid bytes.
        let raw = random_bytes(&mut rng, 256);
        fuzz_http1(&raw);
        fuzz_http2(&raw);
        cases += 4;
    }
    assert!(cases >= 100_000);
    assert!(refusals > 1000, "the budget refused {refusals} times");
    assert!(started.elapsed() < Duration::from_secs(300));
}

#[test]
fn fuzz_entry_points_decode_valid_input() {
    // Segment format: [control, length, bytes...].
    let mut input = Vec::new();
    for (dir, data) in &http2_sample() {
        for chunk in data[if *dir == Direction::Send { PREFACE.len() } else { 0 }..].chunks(200) {
            input.push(if *dir == Direction::Send { 0 } else { 1 });
            input.push(chunk.len() as u8);
            input.extend_from_slice(chunk);
        }
    }
    fuzz_http2(&input);
    fuzz_http1(b"\x00\x12GET / HTTP/1.1\r\n\r\n\x01\x13HTTP/1.1 200 OK\r\n\r\n");
}

/// Found by cargo fuzz: a header block the synced HPACK decoder rejects
/// while it starts with a table size update to 0 recursed without end.
#[test]
fn regression_hpack_resync_recursion() {
    let input = [
        0x78, 0x11, 0x00, 0x00, 0x06, 0x01, 0x8d, 0x97, 0x85, 0xc3, 0x95, 0x01, 0x20, 0x00, 0x00, 0xff, 0xf7,
        0xf7, 0x51, 0xd1,
    ];
    crate::fuzz_http2(&input);
}

/// The amplification seeds decode within their budgets through both
/// targets.
#[test]
fn fuzz_seeds_decode() {
    for (name, seed) in crate::fuzz_hpack_seeds() {
        assert!(seed.len() < 300_000, "{name}: {} bytes", seed.len());
        crate::fuzz_hpack(&seed);
    }
    for (name, seed) in crate::fuzz_http2_seeds() {
        assert!(seed.len() < 300_000, "{name}: {} bytes", seed.len());
        fuzz_http2(&seed);
        // The other budget too.
        fuzz_http2(&[&seed[..], &[0, 0]].concat());
    }
}
