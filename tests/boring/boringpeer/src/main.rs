//! boringpeer server CERT KEY TRUTHDIR
//!     prints "port N", then serves every connection: reads a request
//!     (headers, then Content-Length bytes) and answers with the body
//!     reversed, then closes.
//! boringpeer client PORT COUNT SIZE TRUTHDIR VERSION
//!     COUNT connections in turn (VERSION: tls12 or tls13), each a POST of
//!     SIZE bytes; checks the answer and prints "ok COUNT".
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
use std::sync::{Arc, Mutex};

use boring::ssl::{
    SslAcceptor, SslConnector, SslContextBuilder, SslFiletype, SslMethod, SslStream, SslVerifyMode, SslVersion,
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

fn server(cert: &Path, key: &Path, truth: PathBuf) {
    let mut builder = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).unwrap();
    builder.set_certificate_chain_file(cert).unwrap();
    builder.set_private_key_file(key, SslFiletype::PEM).unwrap();
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
        _ => {
            eprintln!("usage: boringpeer server CERT KEY TRUTHDIR | client PORT COUNT SIZE TRUTHDIR tls12|tls13");
            std::process::exit(2);
        }
    }
}
