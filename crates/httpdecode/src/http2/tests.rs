use super::frame::{CONTINUATION, DATA, END_HEADERS, END_STREAM, HEADERS, PADDED, RST_STREAM, SETTINGS};
use crate::detect::PREFACE;
use crate::testutil::{frame, grpc_msg, gzip, t, Hpack};
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
        assert!(e.request_headers.contains(&("x-trace".into(), "abcdef".into())));
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
