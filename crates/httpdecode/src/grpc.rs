//! gRPC message framing: each message is a compressed flag, a big-endian u32
//! length and the message bytes.

use crate::exchange::Exchange;
use crate::Body;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grpc {
    pub request_messages: Vec<GrpcMessage>,
    pub response_messages: Vec<GrpcMessage>,
    /// grpc-status from the trailers (or headers of a trailers-only response).
    pub status: Option<u32>,
    /// grpc-message, percent-decoded.
    pub message: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GrpcMessage {
    pub compressed: bool,
    /// Length announced in the prefix.
    pub length: u32,
    /// Message bytes kept (fewer than `length` when truncated).
    pub data: Vec<u8>,
    pub truncated: bool,
}

impl Grpc {
    pub(crate) fn from_exchange(ex: &Exchange) -> Grpc {
        let trailer = |name| ex.response_trailers.get(name).or_else(|| ex.response_headers.get(name));
        Grpc {
            request_messages: split_messages(&ex.request_body),
            response_messages: split_messages(&ex.response_body),
            status: trailer("grpc-status").and_then(|s| s.trim().parse().ok()),
            message: trailer("grpc-message").map(percent_decode),
        }
    }
}

/// Splits a body into messages; the last one may be cut by the body limit.
pub(crate) fn split_messages(body: &Body) -> Vec<GrpcMessage> {
    let mut out = Vec::new();
    let mut rest = &body.raw[..];
    while rest.len() >= 5 {
        let length = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]);
        let take = (length as usize).min(rest.len() - 5);
        out.push(GrpcMessage {
            compressed: rest[0] & 1 == 1,
            length,
            data: rest[5..5 + take].to_vec(),
            truncated: take < length as usize,
        });
        rest = &rest[5 + take..];
    }
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_messages() {
        let mut body = Body::default();
        body.push(&[0, 0, 0, 0, 2, b'h', b'i', 1, 0, 0, 0, 5, b'x'], 100);
        let msgs = split_messages(&body);
        assert_eq!(msgs.len(), 2);
        assert_eq!(msgs[0].data, b"hi");
        assert!(msgs[1].compressed && msgs[1].truncated);
        assert_eq!(msgs[1].length, 5);
    }

    #[test]
    fn percent() {
        assert_eq!(percent_decode("a%20b%zz"), "a b%zz");
    }
}
