//! Decodes one HTTP/2 request whose 200 KB header block is one-byte
//! references to a 4000-byte dynamic table entry (HPACK amplification), then
//! a normal request on the same connection, and prints what came out. Run it
//! under `/usr/bin/time -v` to see the peak RSS of the decoder:
//! `cargo build -p httpdecode --release --example amplification &&
//! /usr/bin/time -v target/release/examples/amplification`.

use std::time::SystemTime;

use httpdecode::wire::{frame, header_frames, literal, PREFACE};
use httpdecode::{Connection, Direction};

fn main() {
    let now = SystemTime::now();
    let mut c = Connection::new();
    let mut client = PREFACE.to_vec();
    client.extend(frame(4, 0, 0, &[]));
    // :method GET, :scheme https, :path /, then "x: aaaa..." (4000 bytes)
    // with incremental indexing (index 62), then 200,000 references to it.
    let mut block = vec![0x82, 0x87, 0x84];
    literal(&mut block, 0x40, "x", &[b'a'; 4000]);
    block.extend(std::iter::repeat_n(0xbe, std::env::args().nth(1).map_or(200_000, |a| a.parse().unwrap())));
    client.extend(header_frames(1, &block, true));
    // A normal request that reuses the table entry once.
    client.extend(header_frames(3, &[0x82, 0x87, 0x85, 0xbe], true));
    // Fed as TLS records (16 KiB at most) would arrive.
    let mut out: Vec<_> = client.chunks(16384).flat_map(|r| c.feed(Direction::Send, r, now)).collect();
    let mut server = frame(4, 0, 0, &[]);
    server.extend(header_frames(1, &[0x88], true));
    server.extend(header_frames(3, &[0x88], true));
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
