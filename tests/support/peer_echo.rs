//! The exchange every TLS test peer written in Rust speaks
//! (tests/rustls/rustlspeer, tests/boring/boringpeer), whatever its
//! library: the client POSTs a body, the server answers with that body
//! reversed. Each side records the plaintext it passed to its library and
//! got from it, per connection, in TRUTHDIR/<local port>-<remote port>.sent
//! and .recv: the ground truth a capture is compared with.
//!
//! Each peer includes this file as a module (`#[path]`): the peers are
//! crates of their own, built by the tests, outside cleartap's workspace.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;

/// A library's stream (`inner`) that records both directions of the
/// plaintext.
pub struct Recorded<S> {
    pub inner: S,
    sent: File,
    recv: File,
}

impl<S> Recorded<S> {
    /// `tcp`: the connection under `inner`, whose ports name the files.
    pub fn new(inner: S, tcp: &TcpStream, truth: &Path) -> Self {
        let name = format!("{}-{}", tcp.local_addr().unwrap().port(), tcp.peer_addr().unwrap().port());
        Recorded {
            inner,
            sent: File::create(truth.join(format!("{name}.sent"))).unwrap(),
            recv: File::create(truth.join(format!("{name}.recv"))).unwrap(),
        }
    }
}

impl<S: Read> Read for Recorded<S> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.recv.write_all(&buf[..n])?;
        Ok(n)
    }
}

impl<S: Write> Write for Recorded<S> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sent.write_all(&buf[..n])?;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The server's listening socket on a free port of 127.0.0.1, announced
/// on standard output ("port N") for the test to read.
pub fn listen() -> TcpListener {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    println!("port {}", listener.local_addr().unwrap().port());
    std::io::stdout().flush().unwrap();
    listener
}

/// The server's side of one connection: the request, answered with its
/// body reversed.
pub fn answer(s: &mut (impl Read + Write)) {
    let (_, mut request) = read_message(s);
    request.reverse();
    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", request.len());
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&request).unwrap();
    s.flush().unwrap();
}

/// The client's side of its connection number `i`: a POST of `size`
/// bytes, and the answer checked.
pub fn ask(s: &mut (impl Read + Write), i: usize, size: usize) {
    let sent = body(size, i);
    let head = format!("POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: {size}\r\n\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&sent).unwrap();
    s.flush().unwrap();
    let (head, got) = read_message(s);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    let mut want = sent;
    want.reverse();
    assert!(got == want, "connection {i}: the answer is not the request reversed");
}

/// Reads one message: headers, then Content-Length bytes of body.
fn read_message(s: &mut impl Read) -> (String, Vec<u8>) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).unwrap(), 1, "connection closed in the headers");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    (head, body)
}

/// Connection `seed`'s request body: bytes that differ per connection.
fn body(size: usize, seed: usize) -> Vec<u8> {
    (0..size).map(|i| ((i * 7 + seed * 13) % 251) as u8).collect()
}
