use super::frame::{CONTINUATION, DATA, END_HEADERS, END_STREAM, HEADERS, PADDED, RST_STREAM, SETTINGS};
use crate::detect::PREFACE;
use crate::testutil::{frame, grpc_msg, gzip, int, t, Hpack};
use crate::wire::{header_frames, literal};
use crate::{Connection, Direction, Exchange, Protocol};

use Direction::{Recv, Send};

fn request(path: &str) -> Vec<(&'static str, String)> {
    vec![
        (":method", "GET".into()),
        (":scheme", "https".into()),
        (":authority", "example.com".into()),
        (":path", path.into()),
        ("user-agent", "test-agent/1.0".into()),
        ("x-trace", "abcdef".into()),
    ]
}

fn block(enc: &mut Hpack, headers: &[(&str, String)]) -> Vec<u8> {
    let h: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    enc.block(&h)
}

fn settings() -> Vec<u8> {
    frame(SETTINGS, 0, 0, &[0, 1, 0, 0, 0x10, 0])
}

/// Client preface + SETTINGS, server SETTINGS.
fn open(c: &mut Connection) {
    let mut client = PREFACE.to_vec();
    client.extend(settings());
    assert!(c.feed(Send, &client, t(0)).is_empty());
    assert!(c.feed(Recv, &settings(), t(1)).is_empty());
}

fn feed_split(c: &mut Connection, dir: Direction, bytes: &[u8], step: usize, time: u64) -> Vec<Exchange> {
    bytes.chunks(step).flat_map(|ch| c.feed(dir, ch, t(time))).collect()
}

#[test]
fn two_concurrent_streams_interleaved_data() {
    let mut c = Connection::new();
    open(&mut c);
    let (mut cenc, mut senc) = (Hpack::new(), Hpack::new());
    let mut client = frame(HEADERS, END_HEADERS | END_STREAM, 1, &block(&mut cenc, &request("/one")));
    client.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &block(&mut cenc, &request("/two"))));
    assert!(feed_split(&mut c, Send, &client, 7, 10).is_empty());

    let resp =
        |enc: &mut Hpack| block(enc, &[(":status", "200".into()), ("content-type", "text/plain".into())]);
    let mut server = frame(HEADERS, END_HEADERS, 3, &resp(&mut senc));
    server.extend(frame(HEADERS, END_HEADERS, 1, &resp(&mut senc)));
    server.extend(frame(DATA, 0, 1, b"one-a "));
    server.extend(frame(DATA, PADDED, 3, &[3, b't', b'w', b'o', 0, 0, 0]));
    server.extend(frame(DATA, END_STREAM, 1, b"one-b"));
    server.extend(frame(DATA, END_STREAM, 3, b"-end"));
    let ex = feed_split(&mut c, Recv, &server, 5, 20);

    assert_eq!(ex.len(), 2);
    assert_eq!(ex[0].stream_id, Some(1));
    assert_eq!(ex[0].path.as_deref(), Some("/one"));
    assert_eq!(ex[0].response_body.raw, b"one-a one-b");
    assert_eq!(ex[1].stream_id, Some(3));
    assert_eq!(ex[1].response_body.raw, b"two-end");
    for e in &ex {
        assert_eq!(e.protocol, Protocol::Http2);
        assert_eq!(e.protocol.to_string(), "HTTP/2");
        assert_eq!(e.method.as_deref(), Some("GET"));
        assert_eq!(e.scheme.as_deref(), Some("https"));
        assert_eq!(e.authority.as_deref(), Some("example.com"));
        assert_eq!(e.status, Some(200));
        assert_eq!(e.request_time, t(10));
        assert_eq!(e.response_time, Some(t(20)));
        assert!(e.notes.is_empty(), "{:?}", e.notes);
    }
}

#[test]
fn hpack_dynamic_table_reused_and_continuation() {
    let mut c = Connection::new();
    open(&mut c);
    let (mut cenc, mut senc) = (Hpack::new(), Hpack::new());
    let mut out = Vec::new();
    for (i, id) in [1u32, 3, 5].into_iter().enumerate() {
        let b = block(&mut cenc, &request(&format!("/r{i}")));
        if i > 0 {
            // Later blocks reuse dynamic entries: much shorter.
            assert!(b.len() < 20, "block {i} is {} bytes", b.len());
        }
        // Split the block over HEADERS + CONTINUATION.
        let (a, rest) = b.split_at(b.len() / 2);
        let mut bytes = frame(HEADERS, END_STREAM, id, a);
        bytes.extend(frame(CONTINUATION, END_HEADERS, id, rest));
        out.extend(c.feed(Send, &bytes, t(10)));
        let resp = block(&mut senc, &[(":status", "200".into()), ("content-encoding", "gzip".into())]);
        let mut bytes = frame(HEADERS, END_HEADERS, id, &resp);
        bytes.extend(frame(DATA, END_STREAM, id, &gzip(b"zipped")));
        out.extend(c.feed(Recv, &bytes, t(20)));
    }
    assert_eq!(out.len(), 3);
    for (i, e) in out.iter().enumerate() {
        assert_eq!(e.path.as_deref(), Some(format!("/r{i}").as_str()));
        assert!(e.request_headers.iter().any(|f| f == ("x-trace", "abcdef")));
        assert_eq!(e.response_body.decoded.as_deref(), Some(&b"zipped"[..]));
    }
}

#[test]
fn grpc_messages_split() {
    let mut c = Connection::new();
    open(&mut c);
    let (mut cenc, mut senc) = (Hpack::new(), Hpack::new());
    let req = [
        (":method", "POST".to_string()),
        (":scheme", "https".into()),
        (":path", "/pkg.Svc/Call".into()),
        ("content-type", "application/grpc".into()),
    ];
    let mut client = frame(HEADERS, END_HEADERS, 1, &block(&mut cenc, &req));
    let mut msgs = grpc_msg(b"first");
    msgs.extend(grpc_msg(b"second"));
    // A message split across two DATA frames.
    client.extend(frame(DATA, 0, 1, &msgs[..7]));
    client.extend(frame(DATA, END_STREAM, 1, &msgs[7..]));
    c.feed(Send, &client, t(10));
    let mut server = frame(
        HEADERS,
        END_HEADERS,
        1,
        &block(&mut senc, &[(":status", "200".into()), ("content-type", "application/grpc+proto".into())]),
    );
    server.extend(frame(DATA, 0, 1, &grpc_msg(b"reply")));
    let trailers = [("grpc-status", "3".to_string()), ("grpc-message", "bad%20arg".into())];
    server.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &block(&mut senc, &trailers)));
    let ex = c.feed(Recv, &server, t(20));
    assert_eq!(ex.len(), 1);
    let g = ex[0].grpc.as_ref().expect("grpc");
    let data: Vec<&[u8]> = g.request_messages.iter().map(|m| &m.data[..]).collect();
    assert_eq!(data, vec![&b"first"[..], b"second"]);
    assert_eq!(g.response_messages[0].data, b"reply");
    assert_eq!(g.status, Some(3));
    assert_eq!(g.message.as_deref(), Some("bad arg"));
}

#[test]
fn rst_stream_completes_with_note() {
    let mut c = Connection::new();
    open(&mut c);
    let mut cenc = Hpack::new();
    c.feed(Send, &frame(HEADERS, END_HEADERS, 1, &block(&mut cenc, &request("/x"))), t(10));
    let ex = c.feed(Send, &frame(RST_STREAM, 0, 1, &8u32.to_be_bytes()), t(20));
    assert_eq!(ex.len(), 1);
    assert!(ex[0].notes.iter().any(|n| n.contains("reset by client") && n.contains("CANCEL")));
}

/// Capture starts mid-connection: no preface, and the block that filled the
/// dynamic table is missing. Static and literal fields decode; the rest is
/// reported in notes, never guessed.
#[test]
fn mid_connection_start_reports_notes() {
    let (mut cenc, mut senc) = (Hpack::new(), Hpack::new());
    let _lost_request = block(&mut cenc, &request("/first"));
    let _lost_response = block(&mut senc, &[(":status", "200".into()), ("server", "s1".into())]);

    let mut c = Connection::new();
    let mut client = frame(HEADERS, END_HEADERS | END_STREAM, 3, &block(&mut cenc, &request("/second")));
    client.extend(settings());
    client.extend(frame(super::frame::PING, 0, 0, &[0; 8]));
    c.feed(Send, &client, t(10));
    assert_eq!(c.protocol(), Some(Protocol::Http2));
    let mut server = frame(
        HEADERS,
        END_HEADERS,
        3,
        &block(&mut senc, &[(":status", "404".into()), ("server", "s1".into())]),
    );
    server.extend(frame(DATA, END_STREAM, 3, b"nope"));
    let ex = c.feed(Recv, &server, t(20));
    assert_eq!(ex.len(), 1, "{ex:#?}");
    let e = &ex[0];
    assert_eq!(e.method.as_deref(), Some("GET"));
    assert_eq!(e.path.as_deref(), Some("/second"));
    assert_eq!(e.status, Some(404));
    assert_eq!(e.response_body.raw, b"nope");
    // :authority, user-agent, x-trace were in the dynamic table.
    assert_eq!(e.authority, None);
    assert!(e.request_headers.is_empty(), "{:?}", e.request_headers);
    assert!(e.notes.iter().any(|n| n.starts_with("request: headers not decodable")), "{:?}", e.notes);
    assert!(e.notes.iter().any(|n| n.starts_with("response: headers not decodable")), "{:?}", e.notes);
}

#[test]
fn gap_resynchronises() {
    let mut c = Connection::new();
    open(&mut c);
    let (mut cenc, mut senc) = (Hpack::new(), Hpack::new());
    c.feed(Send, &frame(HEADERS, END_HEADERS | END_STREAM, 1, &block(&mut cenc, &request("/a"))), t(10));
    let resp = frame(HEADERS, END_HEADERS, 1, &block(&mut senc, &[(":status", "200".into())]));
    c.feed(Recv, &resp, t(20));
    c.feed(Recv, &frame(DATA, 0, 1, b"partial")[..12], t(21));
    c.gap(Recv);
    // Resume at a frame boundary after junk.
    let mut rest = b"junk".to_vec();
    rest.extend(frame(DATA, 0, 1, b"more"));
    rest.extend(frame(DATA, 0, 1, b"more"));
    rest.extend(frame(DATA, END_STREAM, 1, b"end"));
    let ex = c.feed(Recv, &rest, t(30));
    assert_eq!(ex.len(), 1);
    assert!(ex[0].response_body.truncated);
    assert!(ex[0].response_body.raw.ends_with(b"end"));
    assert!(ex[0].notes.iter().any(|n| n.contains("capture gap")));
}

#[test]
fn server_side_capture() {
    let mut c = Connection::new();
    let (mut cenc, mut senc) = (Hpack::new(), Hpack::new());
    let mut client = PREFACE.to_vec();
    client.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &block(&mut cenc, &request("/s"))));
    c.feed(Recv, &client, t(0));
    let mut server = frame(HEADERS, END_HEADERS, 1, &block(&mut senc, &[(":status", "200".into())]));
    server.extend(frame(DATA, END_STREAM, 1, b"ok"));
    let ex = c.feed(Send, &server, t(5));
    assert_eq!(ex.len(), 1);
    assert_eq!(ex[0].path.as_deref(), Some("/s"));
    assert_eq!(ex[0].response_body.raw, b"ok");
}

/// A server writes its SETTINGS before it reads the client's preface: a
/// capture on the server that saw the connection from its start says
/// nothing about streams started before it, and decodes from the start.
#[test]
fn server_settings_before_the_client_preface() {
    let mut c = Connection::new();
    let (mut cenc, mut senc) = (Hpack::new(), Hpack::new());
    assert!(c.feed(Send, &settings(), t(0)).is_empty());
    let mut client = PREFACE.to_vec();
    client.extend(settings());
    client.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &block(&mut cenc, &request("/s"))));
    assert!(c.feed(Recv, &client, t(1)).is_empty());
    let mut server = frame(SETTINGS, 1, 0, &[]);
    server.extend(frame(HEADERS, END_HEADERS, 1, &block(&mut senc, &[(":status", "200".into())])));
    server.extend(frame(DATA, END_STREAM, 1, b"ok"));
    let ex = c.feed(Send, &server, t(5));
    assert_eq!(ex.len(), 1, "{ex:#?}");
    assert_eq!(ex[0].path.as_deref(), Some("/s"));
    assert_eq!(ex[0].response_body.raw, b"ok");
    assert!(ex[0].notes.is_empty(), "{:?}", ex[0].notes);
}

/// The same SETTINGS frame in the middle of a connection (the capture
/// started late) is still decoded once the other side speaks.
#[test]
fn settings_first_then_no_preface_is_a_late_start() {
    let mut c = Connection::new();
    let (mut cenc, mut senc) = (Hpack::new(), Hpack::new());
    assert!(c.feed(Send, &settings(), t(0)).is_empty());
    let client = frame(HEADERS, END_HEADERS | END_STREAM, 5, &block(&mut cenc, &request("/late")));
    assert!(c.feed(Recv, &client, t(1)).is_empty());
    let mut server = frame(HEADERS, END_HEADERS, 5, &block(&mut senc, &[(":status", "200".into())]));
    server.extend(frame(DATA, END_STREAM, 5, b"ok"));
    let ex = c.feed(Send, &server, t(5));
    assert_eq!(ex.len(), 1, "{ex:#?}");
    assert_eq!(ex[0].path.as_deref(), Some("/late"));
    assert!(ex[0].notes.iter().any(|n| n.contains("started before the capture")), "{:?}", ex[0].notes);
}

// Header lists past their budget (HPACK amplification): bounded, noted, and
// the dynamic table still in sync for the next exchange.

/// `n` (a multiple of 8) '0' characters, Huffman-coded: 5 zero bits each.
fn huffman_zeros(out: &mut Vec<u8>, n: usize) {
    int(out, 0x80, 7, n * 5 / 8);
    out.extend(std::iter::repeat_n(0, n * 5 / 8));
}

/// Stream 1's request is `attack`, stream 3's `next`, each answered 200:
/// feeds them in records of 16 KiB and returns the two exchanges.
fn attack_then_next(c: &mut Connection, attack: &[u8], next: &[u8]) -> (Exchange, Exchange) {
    attack_then_next_on(c, 1, attack, next)
}

/// The same on streams `id` and `id + 2`.
fn attack_then_next_on(c: &mut Connection, id: u32, attack: &[u8], next: &[u8]) -> (Exchange, Exchange) {
    let mut client = header_frames(id, attack, true);
    client.extend(header_frames(id + 2, next, true));
    let mut out = feed_split(c, Send, &client, 16384, 10);
    assert!(out.is_empty());
    let mut server = header_frames(id, &[0x88], true);
    server.extend(header_frames(id + 2, &[0x88], true));
    out = feed_split(c, Recv, &server, 16384, 20);
    assert_eq!(out.len(), 2, "{out:#?}");
    let second = out.pop().unwrap();
    (out.pop().unwrap(), second)
}

fn fields_size(headers: &crate::Headers) -> usize {
    headers.iter().map(|(n, v)| n.len() + v.len() + 32).sum()
}

fn assert_truncated(e: &Exchange) {
    assert!(e.header_list_truncated(), "{:?}", e.notes);
    assert!(e
        .notes
        .iter()
        .any(|n| n.starts_with("request: header list truncated at its budget of 65536 bytes")));
    assert!(fields_size(&e.request_headers) <= 65536);
}

#[test]
fn one_byte_references_to_a_large_entry_stop_at_the_budget() {
    let mut c = Connection::new();
    open(&mut c);
    let big = vec![b'a'; 4000];
    // :method GET, :scheme https, :path /, "x: aaa..." inserted (index 62),
    // then 200,000 one-byte references to it: 800 MB if materialised.
    let mut attack = vec![0x82, 0x87, 0x84];
    literal(&mut attack, 0x40, "x", &big);
    attack.extend(std::iter::repeat_n(0x80 | 62, 200_000));
    let (first, next) = attack_then_next(&mut c, &attack, &[0x82, 0x87, 0x85, 0x80 | 62]);
    assert_truncated(&first);
    assert_eq!(first.path.as_deref(), Some("/"));
    assert_eq!(first.status, Some(200));
    // 124 bytes of pseudo-headers, then 16 of the 4033-byte fields fit.
    assert_eq!(first.request_headers.len(), 16);
    assert!(first.request_headers.iter().all(|(n, v)| n == "x" && v.as_bytes() == big));
    // The next exchange decodes exactly, from the same dynamic table.
    assert_eq!(next.path.as_deref(), Some("/index.html"));
    assert_eq!(next.request_headers, vec![("x".to_string(), String::from_utf8(big).unwrap())]);
    assert!(next.notes.is_empty(), "{:?}", next.notes);
    assert!(!next.header_list_truncated());
}

#[test]
fn many_literal_fields_stop_at_the_budget_and_keep_the_table_in_sync() {
    let mut c = Connection::new();
    open(&mut c);
    let mut attack = vec![0x82, 0x87, 0x84];
    for i in 0..25_000 {
        literal(&mut attack, 0x40, "k", format!("{i:05}").as_bytes());
    }
    let mut next = vec![0x82, 0x87, 0x85, 0x80 | 62, 0x80 | 63];
    literal(&mut next, 0x00, "y", b"z");
    let (first, next) = attack_then_next(&mut c, &attack, &next);
    assert_truncated(&first);
    // (65536 - 124) / 38 fields of 38 bytes.
    assert_eq!(first.request_headers.len(), 1721);
    assert_eq!(first.request_headers.iter().nth(1720), Some(("k", "01720")));
    let expected = [("k", "24999"), ("k", "24998"), ("y", "z")];
    let expected: Vec<(String, String)> = expected.iter().map(|&(n, v)| (n.into(), v.into())).collect();
    assert_eq!(next.request_headers, expected);
    assert!(next.notes.is_empty(), "{:?}", next.notes);
}

#[test]
fn huge_table_size_update_is_capped() {
    let mut c = Connection::new();
    open(&mut c);
    // The server allows any table size for what the client sends.
    c.feed(Recv, &frame(SETTINGS, 0, 0, &[0, 1, 0xff, 0xff, 0xff, 0xff]), t(5));
    // A size update to 2^28 - 1, then 100 entries of 1033 bytes (103 KB,
    // more than the 64 KiB kept).
    let mut attack = vec![0x3f];
    attack.extend([0xe0, 0xff, 0xff, 0x7f]);
    attack.extend([0x82, 0x87, 0x84]);
    for i in 0..100u8 {
        literal(&mut attack, 0x40, "v", &[b'0' + i % 10; 1000]);
    }
    let (first, next) = attack_then_next(&mut c, &attack, &[0x82, 0x87, 0x85, 0x80 | 62, 0x80 | 63]);
    assert_truncated(&first);
    assert_eq!(first.request_headers.len(), 63, "{:?}", first.notes);
    assert!(!first.notes.iter().any(|n| n.contains("state lost")), "{:?}", first.notes);
    // The newest entries are kept: the next exchange decodes exactly.
    let nine = String::from_utf8(vec![b'9'; 1000]).unwrap();
    let eight = String::from_utf8(vec![b'8'; 1000]).unwrap();
    assert_eq!(next.request_headers, vec![("v".to_string(), nine), ("v".to_string(), eight)]);
    assert!(next.notes.is_empty(), "{:?}", next.notes);

    // An entry the encoder still has but 64 KiB of table no longer holds
    // is reported, never guessed.
    let (third, _) =
        attack_then_next_on(&mut c, 5, &[0x82, 0x87, 0x84, 0x80 | 62, 0x80 | 0x7f, 0x01], &[0x88]);
    assert!(third.request_headers.is_empty(), "{:?}", third.request_headers);
    assert!(third.notes.iter().any(|n| n.contains("header table state lost")), "{:?}", third.notes);
}

#[test]
fn table_size_update_beyond_the_settings_loses_state_but_not_memory() {
    let mut c = Connection::new();
    open(&mut c);
    // 2^28 - 1 with the default 4096 allowed: a compression error.
    let mut attack = vec![0x3f, 0xe0, 0xff, 0xff, 0x7f, 0x82, 0x87, 0x84];
    literal(&mut attack, 0x40, "w", b"1");
    let mut next = vec![0x82, 0x87, 0x85, 0x80 | 62];
    literal(&mut next, 0x00, "y", b"z");
    let (first, next) = attack_then_next(&mut c, &attack, &next);
    assert!(first.notes.iter().any(|n| n.contains("header table state lost")), "{:?}", first.notes);
    assert_eq!(first.request_headers, vec![("w".to_string(), "1".to_string())]);
    // Entries inserted since are known: the next block decodes exactly.
    let expected = vec![("w".to_string(), "1".to_string()), ("y".to_string(), "z".to_string())];
    assert_eq!(next.request_headers, expected);
    assert!(next.notes.is_empty(), "{:?}", next.notes);
}

#[test]
fn huffman_coded_values_stop_at_the_budget() {
    let mut c = Connection::new();
    open(&mut c);
    // 320,000 Huffman-coded characters (200 KB on the wire), not indexed,
    // then a small Huffman-coded value inserted in the table.
    let mut attack = vec![0x82, 0x87, 0x84, 0x00, 1, b'h'];
    huffman_zeros(&mut attack, 320_000);
    attack.extend([0x40, 2, b'h', b'2']);
    huffman_zeros(&mut attack, 16);
    let (first, next) = attack_then_next(&mut c, &attack, &[0x82, 0x87, 0x85, 0x80 | 62]);
    assert_truncated(&first);
    assert!(first.request_headers.is_empty(), "{:?}", first.request_headers);
    assert_eq!(next.request_headers, vec![("h2".to_string(), "0".repeat(16))]);
    assert!(next.notes.is_empty(), "{:?}", next.notes);
}

#[test]
fn trailer_blocks_share_one_budget() {
    let limits = crate::Limits { max_header_list: 200, ..Default::default() };
    let mut c = Connection::with_limits(limits);
    open(&mut c);
    let mut client = header_frames(1, &[0x82, 0x87, 0x84], false);
    for i in 0..10u8 {
        let mut trailer = Vec::new();
        literal(&mut trailer, 0x00, "t", &[b'0' + i; 20]);
        client.extend(header_frames(1, &trailer, i == 9));
    }
    c.feed(Send, &client, t(10));
    let ex = c.feed(Recv, &header_frames(1, &[0x88], true), t(20));
    assert_eq!(ex.len(), 1);
    // 53 bytes each: three fit in 200.
    assert_eq!(ex[0].request_trailers.len(), 3);
    assert!(ex[0].header_list_truncated());
    assert!(ex[0].notes.iter().any(|n| n.starts_with("request: trailers: header list truncated")));
}

/// The first chunk of a connection larger than what detection buffers
/// (64 KiB) is decoded whole, not cut where detection stopped.
#[test]
fn first_chunk_larger_than_detection_buffer() {
    let mut c = Connection::new();
    let mut client = PREFACE.to_vec();
    client.extend(settings());
    client.extend(frame(HEADERS, END_HEADERS, 1, &block(&mut Hpack::new(), &request("/big"))));
    let body = vec![b'b'; 100_000];
    for (i, part) in body.chunks(16384).enumerate() {
        let last = (i + 1) * 16384 >= body.len();
        client.extend(frame(DATA, if last { END_STREAM } else { 0 }, 1, part));
    }
    assert!(c.feed(Send, &client, t(0)).is_empty());
    let ex = c.feed(Recv, &header_frames(1, &[0x88], true), t(1));
    assert_eq!(ex.len(), 1);
    assert_eq!(ex[0].request_body.raw_len, 100_000);
    assert!(ex[0].notes.is_empty(), "{:?}", ex[0].notes);
}
