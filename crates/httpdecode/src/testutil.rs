//! Helpers for tests: compressors, an HTTP/2 frame and HPACK encoder.

use std::io::Write;
use std::time::{Duration, SystemTime};

pub(crate) use crate::wire::{frame, int};
use crate::{Connection, Direction, Exchange};

pub(crate) fn t(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

pub(crate) fn zlib(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

pub(crate) fn raw_deflate(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

pub(crate) fn brotli_compress(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
        w.write_all(data).unwrap();
    }
    out
}

/// Feeds (direction, bytes) pairs with increasing timestamps, then closes.
pub(crate) fn run(conn: &mut Connection, parts: &[(Direction, &[u8])]) -> Vec<Exchange> {
    let mut out = Vec::new();
    for (i, (dir, data)) in parts.iter().enumerate() {
        out.extend(conn.feed(*dir, data, t(i as u64 * 10)));
    }
    out
}

/// HPACK encoder of one direction: every new field is a literal with
/// incremental indexing, repeated fields are indexed, so that later blocks
/// depend on the dynamic table.
pub(crate) struct Hpack(std::collections::VecDeque<(String, String)>);

impl Hpack {
    pub(crate) fn new() -> Self {
        Hpack(Default::default())
    }

    pub(crate) fn block(&mut self, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for &(n, v) in headers {
            let stat = crate::http2::STATIC_TABLE.iter().position(|&(sn, sv)| sn == n && sv == v);
            let dynamic = self.0.iter().position(|(dn, dv)| dn == n && dv == v);
            match (stat, dynamic) {
                (Some(i), _) => int(&mut out, 0x80, 7, i + 1),
                (None, Some(i)) => int(&mut out, 0x80, 7, i + 62),
                (None, None) => {
                    out.push(0x40);
                    for s in [n, v] {
                        int(&mut out, 0, 7, s.len());
                        out.extend_from_slice(s.as_bytes());
                    }
                    self.0.push_front((n.to_owned(), v.to_owned()));
                }
            }
        }
        out
    }
}

/// gRPC length-prefixed message.
pub(crate) fn grpc_msg(data: &[u8]) -> Vec<u8> {
    let mut m = vec![0];
    m.extend_from_slice(&(data.len() as u32).to_be_bytes());
    m.extend_from_slice(data);
    m
}
