//! Decodes one HTTP/2 request whose 200 KB header block is one-byte
//! references to a 4000-byte dynamic table entry (HPACK amplification), then
//! a normal request on the same connection, and prints what came out. Run it
//! under `/usr/bin/time -v` to see the peak RSS of the decoder:
//! `cargo build -p httpdecode --release --example amplification &&
//! /usr/bin/time -v target/release/examples/amplification`.

use std::time::SystemTime;

use httpdecode::{Connection, Direction};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend(stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HEADERS + CONTINUATION frames of at most 16 KiB carrying `block`.
fn header_frames(stream: u32, block: &[u8], end_stream: u8) -> Vec<u8> {
    let mut out = Vec::new();
    let chunks: Vec<&[u8]> = block.chunks(16384).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let kind = if i == 0 { 1 } else { 9 };
        let flags = if i == chunks.len() - 1 { 4 } else { 0 } | if i == 0 { end_stream } else { 0 };
        out.extend(frame(kind, flags, stream, chunk));
    }
    out
}

fn main() {
    let now = SystemTime::now();
    let mut c = Connection::new();
    let mut client = PREFACE.to_vec();
    client.extend(frame(4, 0, 0, &[]));
    // :method GET, :scheme https, :path /, then "x: aaaa..." (4000 bytes)
    // with incremental indexing (index 62), then 200,000 references to it.
    let mut block = vec![0x82, 0x87, 0x84, 0x40, 1, b'x', 0x7f];
    let mut len = 4000 - 127;
    while len >= 128 {
        block.push((len % 128) as u8 | 0x80);
        len /= 128;
    }
    block.push(len as u8);
    block.extend(std::iter::repeat_n(b'a', 4000));
    block.extend(std::iter::repeat_n(0xbe, std::env::args().nth(1).map_or(200_000, |a| a.parse().unwrap())));
    client.extend(header_frames(1, &block, 1));
    // A normal request that reuses the table entry once.
    client.extend(header_frames(3, &[0x82, 0x87, 0x85, 0xbe], 1));
    // Fed as TLS records (16 KiB at most) would arrive.
    let mut out: Vec<_> = client.chunks(16384).flat_map(|r| c.feed(Direction::Send, r, now)).collect();
    let mut server = frame(4, 0, 0, &[]);
    server.extend(header_frames(1, &[0x88], 1));
    server.extend(header_frames(3, &[0x88], 1));
    out.extend(c.feed(Direction::Recv, &server, now));
    for ex in &out {
        let bytes: usize = ex.request_headers.iter().map(|(n, v)| n.len() + v.len()).sum();
        println!(
            "stream {:?} path {:?} status {:?}: {} request headers ({} bytes), notes {:?}",
            ex.stream_id,
            ex.path,
            ex.status,
            ex.request_headers.len(),
            bytes,
            ex.notes
        );
    }
}
