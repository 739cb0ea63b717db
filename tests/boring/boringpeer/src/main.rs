//! boringpeer server CERT KEY TRUTHDIR
//!     prints "port N", then serves every connection: reads a request
//!     (headers, then Content-Length bytes) and answers with the body
//!     reversed, then closes.
//! boringpeer client PORT COUNT SIZE TRUTHDIR VERSION
//!     COUNT connections in turn (VERSION: tls12 or tls13), each a POST of
//!     SIZE bytes; checks the answer and prints "ok COUNT".
//! boringpeer pingpong CERT KEY SIZE ITERATIONS
//!     bench/libraries.py's workload: a client and a server thread over one
//!     loopback connection, SIZE-byte messages echoed back ITERATIONS/10+1
//!     times to warm up, then ITERATIONS timed times; prints one JSON line
//!     as bench/tls_pair.c does (ssl_calls: every SSL_write and SSL_read of
//!     both sides in the timed rounds).
//!
//! Both sides write what they passed to BoringSSL (`SslStream::write`, i.e.
//! SSL_write) and what they got from it (`SslStream::read`, SSL_read) into
//! TRUTHDIR/<local port>-<remote port>.sent and .recv, and every line their
//! key log callback (SSL_CTX_set_keylog_callback) is given into
//! TRUTHDIR/keylog.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use boring::ssl::{
    SslAcceptor, SslAcceptorBuilder, SslConnector, SslContextBuilder, SslFiletype, SslMethod, SslStream,
    SslVerifyMode, SslVersion,
};

/// A stream that records both directions of the plaintext.
struct Recorded {
    inner: SslStream<TcpStream>,
    sent: File,
    recv: File,
}

impl Recorded {
    fn new(inner: SslStream<TcpStream>, truth: &Path) -> Self {
        let tcp = inner.get_ref();
        let name = format!("{}-{}", tcp.local_addr().unwrap().port(), tcp.peer_addr().unwrap().port());
        Recorded {
            inner,
            sent: File::create(truth.join(format!("{name}.sent"))).unwrap(),
            recv: File::create(truth.join(format!("{name}.recv"))).unwrap(),
        }
    }
}

impl Read for Recorded {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.recv.write_all(&buf[..n])?;
        Ok(n)
    }
}

impl Write for Recorded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sent.write_all(&buf[..n])?;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Every key log line the library gives the program, appended whole.
fn log_keys(ctx: &mut SslContextBuilder, truth: &Path) {
    let file = OpenOptions::new().create(true).append(true).open(truth.join("keylog")).unwrap();
    let file = Arc::new(Mutex::new(file));
    ctx.set_keylog_callback(move |_, line| {
        let mut f = file.lock().unwrap();
        f.write_all(format!("{line}\n").as_bytes()).unwrap();
    });
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
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    (head, body)
}

fn body(size: usize, seed: usize) -> Vec<u8> {
    (0..size).map(|i| ((i * 7 + seed * 13) % 251) as u8).collect()
}

fn acceptor_builder(cert: &Path, key: &Path) -> SslAcceptorBuilder {
    let mut builder = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).unwrap();
    builder.set_certificate_chain_file(cert).unwrap();
    builder.set_private_key_file(key, SslFiletype::PEM).unwrap();
    builder
}

fn server(cert: &Path, key: &Path, truth: PathBuf) {
    let mut builder = acceptor_builder(cert, key);
    log_keys(&mut builder, &truth);
    let acceptor = Arc::new(builder.build());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    println!("port {}", listener.local_addr().unwrap().port());
    std::io::stdout().flush().unwrap();
    for tcp in listener.incoming() {
        let tcp = tcp.unwrap();
        let acceptor = acceptor.clone();
        let truth = truth.clone();
        std::thread::spawn(move || {
            let Ok(stream) = acceptor.accept(tcp) else { return };
            let mut s = Recorded::new(stream, &truth);
            let (_, mut request) = read_message(&mut s);
            request.reverse();
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", request.len());
            s.write_all(head.as_bytes()).unwrap();
            s.write_all(&request).unwrap();
            s.flush().unwrap();
            let _ = s.inner.shutdown();
        });
    }
}

fn client(port: u16, count: usize, size: usize, truth: PathBuf, version: SslVersion) {
    let mut builder = SslConnector::builder(SslMethod::tls()).unwrap();
    builder.set_verify(SslVerifyMode::NONE);
    builder.set_min_proto_version(Some(version)).unwrap();
    builder.set_max_proto_version(Some(version)).unwrap();
    log_keys(&mut builder, &truth);
    let connector = builder.build();
    for i in 0..count {
        let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let stream = connector.configure().unwrap().connect("localhost", tcp).unwrap();
        let mut s = Recorded::new(stream, &truth);
        let sent = body(size, i);
        let head = format!("POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: {size}\r\n\r\n");
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(&sent).unwrap();
        s.flush().unwrap();
        let (head, got) = read_message(&mut s);
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        let mut want = sent;
        want.reverse();
        assert!(got == want, "connection {i}: the answer is not the request reversed");
    }
    println!("ok {count}");
}

/// `read_exact` and `write_all`, counting every SSL_read and SSL_write.
struct Counted<'a> {
    inner: SslStream<TcpStream>,
    calls: &'a AtomicU64,
}

impl Counted<'_> {
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

fn pingpong(cert: &Path, key: &Path, size: usize, iterations: usize) {
    let warmup = iterations / 10 + 1;
    let calls = Arc::new(AtomicU64::new(0));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = acceptor_builder(cert, key).build();
    let server_calls = calls.clone();
    let server = std::thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        tcp.set_nodelay(true).unwrap();
        let mut s = Counted { inner: acceptor.accept(tcp).unwrap(), calls: &server_calls };
        let mut buf = vec![0u8; size];
        for _ in 0..warmup + iterations {
            s.read_all(&mut buf);
            s.write_all(&buf);
        }
    });
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_nodelay(true).unwrap();
    let mut builder = SslConnector::builder(SslMethod::tls()).unwrap();
    builder.set_verify(SslVerifyMode::NONE);
    let stream = builder.build().configure().unwrap().connect("localhost", tcp).unwrap();
    let mut c = Counted { inner: stream, calls: &calls };
    let (message, mut echo) = (body(size, 0), vec![0u8; size]);
    let mut round = |c: &mut Counted| {
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

fn version(name: &str) -> SslVersion {
    match name {
        "tls12" => SslVersion::TLS1_2,
        "tls13" => SslVersion::TLS1_3,
        _ => panic!("version {name}: tls12 or tls13"),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("server") => server(Path::new(&args[2]), Path::new(&args[3]), PathBuf::from(&args[4])),
        Some("client") if args.len() == 7 => client(
            args[2].parse().unwrap(),
            args[3].parse().unwrap(),
            args[4].parse().unwrap(),
            PathBuf::from(&args[5]),
            version(&args[6]),
        ),
        Some("pingpong") if args.len() == 6 => pingpong(
            Path::new(&args[2]),
            Path::new(&args[3]),
            args[4].parse().unwrap(),
            args[5].parse().unwrap(),
        ),
        _ => {
            eprintln!(
                "usage: boringpeer server CERT KEY TRUTHDIR | client PORT COUNT SIZE TRUTHDIR tls12|tls13 | \
                 pingpong CERT KEY SIZE ITERATIONS"
            );
            std::process::exit(2);
        }
    }
}
