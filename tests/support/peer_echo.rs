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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

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
pub fn body(size: usize, seed: usize) -> Vec<u8> {
    (0..size).map(|i| ((i * 7 + seed * 13) % 251) as u8).collect()
}

/// `read_exact` and `write_all`, counting every library read and write.
struct Counted<S> {
    inner: S,
    calls: Arc<AtomicU64>,
}

impl<S: Read + Write> Counted<S> {
    fn read_all(&mut self, buf: &mut [u8]) {
        let mut got = 0;
        while got < buf.len() {
            let n = self.inner.read(&mut buf[got..]).unwrap();
            self.calls.fetch_add(1, Ordering::Relaxed);
            assert!(n > 0, "the peer closed the connection");
            got += n;
        }
    }

    fn write_all(&mut self, buf: &[u8]) {
        let mut sent = 0;
        while sent < buf.len() {
            sent += self.inner.write(&buf[sent..]).unwrap();
            self.calls.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The per-call benchmark's workload (bench/libraries.py): a client and a
/// server in this process ping-pong `size`-byte messages, `iterations`
/// timed rounds after a tenth as many untimed; prints tls_pair's JSON
/// line. `accept` and `connect` make the library's stream over a socket.
pub fn pingpong<S, C>(
    size: usize,
    iterations: usize,
    accept: impl FnOnce(TcpStream) -> S + Send + 'static,
    connect: impl FnOnce(TcpStream) -> C,
) where
    S: Read + Write,
    C: Read + Write,
{
    let warmup = iterations / 10 + 1;
    let calls = Arc::new(AtomicU64::new(0));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server_calls = calls.clone();
    let server = std::thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        tcp.set_nodelay(true).unwrap();
        let mut s = Counted { inner: accept(tcp), calls: server_calls };
        let mut buf = vec![0u8; size];
        for _ in 0..warmup + iterations {
            s.read_all(&mut buf);
            s.write_all(&buf);
        }
    });
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_nodelay(true).unwrap();
    let mut c = Counted { inner: connect(tcp), calls: calls.clone() };
    let (message, mut echo) = (body(size, 0), vec![0u8; size]);
    let mut round = |c: &mut Counted<C>| {
        c.write_all(&message);
        c.read_all(&mut echo);
        assert!(echo == message, "the echo differs from the message");
    };
    (0..warmup).for_each(|_| round(&mut c));
    let before = calls.load(Ordering::Relaxed);
    let start = Instant::now();
    (0..iterations).for_each(|_| round(&mut c));
    let seconds = start.elapsed().as_secs_f64();
    let timed = calls.load(Ordering::Relaxed) - before;
    server.join().unwrap();
    println!(
        "{{\"size\": {size}, \"iterations\": {iterations}, \"seconds\": {seconds:.6}, \"ssl_calls\": {timed}, \
         \"plaintext_bytes\": {}}}",
        4 * size * (iterations + warmup)
    );
}
