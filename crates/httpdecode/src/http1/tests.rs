use crate::testutil::{brotli_compress, gzip, run, t};
use crate::{Connection, Direction, Protocol};

use Direction::{Recv, Send};

const GET: &[u8] = b"GET /a HTTP/1.1\r\nHost: example.com\r\n\r\n";
const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";

#[test]
fn simple_get() {
    let mut c = Connection::new();
    let ex = run(&mut c, &[(Send, GET), (Recv, OK)]);
    assert_eq!(ex.len(), 1);
    let e = &ex[0];
    assert_eq!(e.protocol, Protocol::Http1_1);
    assert_eq!(e.protocol.to_string(), "HTTP/1.1");
    assert_eq!(e.method.as_deref(), Some("GET"));
    assert_eq!(e.path.as_deref(), Some("/a"));
    assert_eq!(e.authority.as_deref(), Some("example.com"));
    assert_eq!(e.status, Some(200));
    assert_eq!(e.response_body.raw, b"hello");
    assert_eq!(e.request_time, t(0));
    assert_eq!(e.response_time, Some(t(10)));
    assert!(e.notes.is_empty(), "{:?}", e.notes);
}

#[test]
fn post_with_body() {
    let mut c = Connection::new();
    let req = b"POST /p HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc";
    let ex = run(&mut c, &[(Send, req), (Recv, b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")]);
    assert_eq!(ex.len(), 1);
    assert_eq!(ex[0].request_body.raw, b"abc");
    assert_eq!(ex[0].status, Some(201));
}

#[test]
fn keep_alive_three_requests() {
    let mut c = Connection::new();
    let mut all = Vec::new();
    for i in 0..3 {
        let req = format!("GET /{i} HTTP/1.1\r\n\r\n");
        let resp = format!("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n{i}");
        all.extend(c.feed(Send, req.as_bytes(), t(i * 10)));
        all.extend(c.feed(Recv, resp.as_bytes(), t(i * 10 + 5)));
    }
    assert_eq!(all.len(), 3);
    for (i, e) in all.iter().enumerate() {
        assert_eq!(e.path.as_deref(), Some(format!("/{i}").as_str()));
        assert_eq!(e.response_body.raw, i.to_string().as_bytes());
    }
}

#[test]
fn pipelining_pairs_in_order() {
    let mut c = Connection::new();
    let reqs = b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\nHEAD /3 HTTP/1.1\r\n\r\n";
    let resps = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nAHTTP/1.1 404 NF\r\nContent-Length: 2\r\n\r\nBBHTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n";
    let ex = run(&mut c, &[(Send, reqs), (Recv, resps)]);
    let got: Vec<_> = ex
        .iter()
        .map(|e| (e.path.clone().unwrap(), e.status.unwrap(), e.response_body.raw.clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("/1".into(), 200, b"A".to_vec()),
            ("/2".into(), 404, b"BB".to_vec()),
            ("/3".into(), 200, vec![])
        ]
    );
}

#[test]
fn chunked_with_trailers() {
    let mut c = Connection::new();
    let resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Checksum: abc\r\n\r\n";
    let ex = run(&mut c, &[(Send, GET), (Recv, resp)]);
    assert_eq!(ex.len(), 1);
    assert_eq!(ex[0].response_body.raw, b"hello world");
    assert_eq!(ex[0].response_trailers, vec![("X-Checksum".to_string(), "abc".to_string())]);
}

fn encoded_response(encoding: &str, body: &[u8]) -> Vec<u8> {
    let mut r =
        format!("HTTP/1.1 200 OK\r\nContent-Encoding: {encoding}\r\nContent-Length: {}\r\n\r\n", body.len())
            .into_bytes();
    r.extend_from_slice(body);
    r
}

#[test]
fn gzip_response_decoded() {
    let mut c = Connection::new();
    let resp = encoded_response("gzip", &gzip(b"compressed text"));
    let ex = run(&mut c, &[(Send, GET), (Recv, &resp)]);
    assert_eq!(ex[0].response_body.decoded.as_deref(), Some(&b"compressed text"[..]));
}

#[test]
fn br_response_decoded() {
    let mut c = Connection::new();
    let resp = encoded_response("br", &brotli_compress(b"brotli text"));
    let ex = run(&mut c, &[(Send, GET), (Recv, &resp)]);
    assert_eq!(ex[0].response_body.decoded.as_deref(), Some(&b"brotli text"[..]));
}

#[test]
fn response_delimited_by_close() {
    let mut c = Connection::new();
    let ex = run(&mut c, &[(Send, GET), (Recv, b"HTTP/1.0 200 OK\r\n\r\npart1"), (Recv, b"part2")]);
    assert!(ex.is_empty());
    let ex = c.close(t(100));
    assert_eq!(ex.len(), 1);
    assert_eq!(ex[0].response_body.raw, b"part1part2");
    assert!(!ex[0].response_body.truncated);
}

#[test]
fn head_has_no_body() {
    let mut c = Connection::new();
    let resp =
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx";
    let ex = run(&mut c, &[(Send, b"HEAD / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n"), (Recv, resp)]);
    assert_eq!(ex.len(), 2);
    assert_eq!(ex[0].method.as_deref(), Some("HEAD"));
    assert!(ex[0].response_body.raw.is_empty());
    assert_eq!(ex[1].response_body.raw, b"x");
}

#[test]
fn no_body_statuses() {
    for status in ["204 No Content", "304 Not Modified"] {
        let mut c = Connection::new();
        let resp = format!(
            "HTTP/1.1 {status}\r\nContent-Length: 10\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
        );
        let ex =
            run(&mut c, &[(Send, b"GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n"), (Recv, resp.as_bytes())]);
        assert_eq!(ex.len(), 2, "{status}");
        assert!(ex[0].response_body.raw.is_empty());
        assert_eq!(ex[1].status, Some(200));
    }
}

#[test]
fn expect_100_continue() {
    let mut c = Connection::new();
    let ex = run(
        &mut c,
        &[
            (Send, b"PUT /u HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n"),
            (Recv, b"HTTP/1.1 100 Continue\r\n\r\n"),
            (Send, b"data"),
            (Recv, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
        ],
    );
    assert_eq!(ex.len(), 1);
    assert_eq!(ex[0].status, Some(200));
    assert_eq!(ex[0].request_body.raw, b"data");
    assert_eq!(ex[0].response_body.raw, b"ok");
    assert!(ex[0].notes.iter().any(|n| n.contains("100")));
}

#[test]
fn header_split_at_every_byte() {
    let resp = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello";
    for req_split in 1..GET.len() {
        for resp_split in (1..resp.len()).step_by(3) {
            let mut c = Connection::new();
            let ex = run(
                &mut c,
                &[
                    (Send, &GET[..req_split]),
                    (Send, &GET[req_split..]),
                    (Recv, &resp[..resp_split]),
                    (Recv, &resp[resp_split..]),
                ],
            );
            assert_eq!(ex.len(), 1, "split {req_split}/{resp_split}");
            assert_eq!(ex[0].path.as_deref(), Some("/a"));
            assert_eq!(ex[0].response_body.raw, b"hello");
        }
    }
}

#[test]
fn byte_by_byte() {
    let mut c = Connection::new();
    let mut out = Vec::new();
    for &b in GET {
        out.extend(c.feed(Send, &[b], t(0)));
    }
    for &b in OK {
        out.extend(c.feed(Recv, &[b], t(1)));
    }
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].response_body.raw, b"hello");
}

#[test]
fn server_side_capture() {
    // The captured process is the server: it reads requests and writes responses.
    let mut c = Connection::new();
    let ex = run(&mut c, &[(Recv, GET), (Send, OK)]);
    assert_eq!(ex.len(), 1);
    assert_eq!(ex[0].method.as_deref(), Some("GET"));
    assert_eq!(ex[0].response_body.raw, b"hello");
}

#[test]
fn connect_stops_decoding() {
    let mut c = Connection::new();
    let ex = run(
        &mut c,
        &[
            (Send, b"CONNECT example.com:443 HTTP/1.1\r\n\r\n"),
            (Recv, b"HTTP/1.1 200 Connection established\r\n\r\n"),
            (Send, b"\x16\x03\x01 tls bytes"),
        ],
    );
    assert_eq!(ex.len(), 1);
    assert!(c.is_stopped());
    assert!(c.close(t(5)).is_empty());
}

#[test]
fn body_limit_truncates() {
    let mut c = Connection::with_limits(crate::Limits { max_body: 4, ..Default::default() });
    let ex = run(&mut c, &[(Send, GET), (Recv, OK)]);
    assert_eq!(ex[0].response_body.raw, b"hell");
    assert_eq!(ex[0].response_body.raw_len, 5);
    assert!(ex[0].response_body.truncated);
}

#[test]
fn plain_bodies_keep_only_max_plain_body_and_compressed_ones_all() {
    let limits = crate::Limits { max_body: 1 << 20, max_plain_body: 3, ..Default::default() };
    let mut c = Connection::with_limits(limits);
    let plain = run(&mut c, &[(Send, b"POST /p HTTP/1.1\r\nContent-Length: 6\r\n\r\nabcdef"), (Recv, OK)]);
    assert_eq!(plain[0].request_body.raw, b"abc");
    assert_eq!(plain[0].request_body.raw_len, 6);
    assert_eq!(plain[0].response_body.raw, b"hel");
    assert_eq!(plain[0].response_body.raw_len, 5);

    let body = gzip(b"a body long enough to be cut by a limit of three");
    let mut response =
        format!("HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\n\r\n", body.len())
            .into_bytes();
    response.extend_from_slice(&body);
    let mut c = Connection::with_limits(limits);
    let gz = run(&mut c, &[(Send, GET), (Recv, &response)]);
    assert_eq!(gz[0].response_body.raw, body);
    assert_eq!(
        gz[0].response_body.decoded.as_deref(),
        Some(&b"a body long enough to be cut by a limit of three"[..])
    );

    let grpc = b"POST /s/M HTTP/1.1\r\nContent-Type: application/grpc\r\nContent-Length: 6\r\n\r\nabcdef";
    let mut c = Connection::with_limits(limits);
    let g = run(&mut c, &[(Send, grpc), (Recv, OK)]);
    assert_eq!(g[0].request_body.raw, b"abcdef");
    assert_eq!(g[0].response_body.raw, b"hello", "the response of a gRPC request is kept whole");
}

#[test]
fn mid_connection_start_and_gap() {
    let mut c = Connection::new();
    // Capture starts inside a response body.
    let ex = run(&mut c, &[(Recv, b"tail of an earlier body"), (Send, GET), (Recv, OK)]);
    assert_eq!(ex.len(), 1);
    assert_eq!(ex[0].path.as_deref(), Some("/a"));
    // A gap inside the next response body: the exchange is marked, the next one pairs.
    let mut out = c.feed(Send, GET, t(50));
    out.extend(c.feed(Recv, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc", t(60)));
    c.gap(Recv);
    out.extend(c.feed(Send, b"GET /b HTTP/1.1\r\n\r\n", t(70)));
    out.extend(c.feed(Recv, OK, t(80)));
    assert_eq!(out.len(), 2, "{out:#?}");
    assert!(out[0].response_body.truncated);
    assert_eq!(out[1].path.as_deref(), Some("/b"));
    assert_eq!(out[1].response_body.raw, b"hello");
}

#[test]
fn binary_is_not_http() {
    let mut c = Connection::new();
    for i in 0..100u32 {
        let noise: Vec<u8> =
            (0..1000u32).map(|j| (i.wrapping_mul(7919) ^ j.wrapping_mul(104729)) as u8 | 0x80).collect();
        c.feed(Send, &noise, t(0));
    }
    assert!(c.is_not_http());
}

/// gRPC is recognised by a content type starting with "application/grpc"
/// in any case, and nothing shorter or merely alike (a multi-byte
/// character where the prefix would end included); a header value that is
/// not UTF-8 reads with U+FFFD in place of each invalid part.
#[test]
fn grpc_content_types_and_header_values_not_utf8() {
    let limits = crate::Limits { max_body: 1 << 20, max_plain_body: 3, max_header_list: 1 << 16 };
    let cases: [(&[u8], bool); 5] = [
        (b"Application/GRPC+proto", true),
        (b"application/grpc", true),
        (b"application/grp", false),
        ("application/grp\u{e9}".as_bytes(), false),
        (b"text/application/grpc", false),
    ];
    for (content_type, grpc) in cases {
        let mut request = b"POST /s/M HTTP/1.1\r\nContent-Type: ".to_vec();
        request.extend_from_slice(content_type);
        request.extend_from_slice(b"\r\nX-Raw: a\xffb\xc3\r\nContent-Length: 6\r\n\r\nabcdef");
        let mut c = Connection::with_limits(limits);
        let ex = run(&mut c, &[(Send, &request), (Recv, OK)]);
        let kept: &[u8] = if grpc { b"hello" } else { b"hel" };
        assert_eq!(ex[0].response_body.raw, kept, "{}", String::from_utf8_lossy(content_type));
        let raw = ex[0].request_headers.get("X-Raw");
        assert_eq!(raw, Some("a\u{fffd}b\u{fffd}"));
    }
}
