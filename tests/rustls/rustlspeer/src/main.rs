//! rustlspeer server CERT KEY TRUTHDIR
//!     prints "port N", then serves every connection: reads a request
//!     (headers, then Content-Length bytes) and answers with the body
//!     reversed, then closes.
//! rustlspeer client PORT COUNT SIZE TRUTHDIR
//!     COUNT connections in turn, each a POST of SIZE bytes; checks the
//!     answer and prints "ok COUNT".
//! rustlspeer pingpong CERT KEY SIZE ITERATIONS
//!     bench/libraries.py's workload: a client and a server thread over one
//!     loopback connection, SIZE-byte messages echoed back ITERATIONS/10+1
//!     times to warm up, then ITERATIONS timed times; prints one JSON line
//!     as bench/tls_pair.c does (ssl_calls: every `read` and `write` on the
//!     two `StreamOwned`s in the timed rounds).
//!
//! Both sides write what they passed to rustls (`Write::write` on a
//! `rustls::StreamOwned`) and what they got from it (`Read::read`) into
//! TRUTHDIR/<local port>-<remote port>.sent and .recv.
//!
//! Key loggers, one of each kind a program has: the server's own `KeyLog`
//! writes every secret rustls gives it to TRUTHDIR/keys; the client uses
//! rustls's `KeyLogFile` (which writes to $SSLKEYLOGFILE when it is set).
//! RUSTLSPEER_TLS12=1 makes the client offer TLS 1.2 only.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring, verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// The server's key logger: NSS key log lines into a file.
#[derive(Debug)]
struct TruthKeyLog(std::sync::Mutex<File>);

impl rustls::KeyLog for TruthKeyLog {
    fn log(&self, label: &str, client_random: &[u8], secret: &[u8]) {
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let line = format!("{label} {} {}\n", hex(client_random), hex(secret));
        self.0.lock().unwrap().write_all(line.as_bytes()).unwrap();
    }
}

/// A stream that records both directions of the plaintext.
struct Recorded<S> {
    inner: S,
    sent: File,
    recv: File,
}

impl<S> Recorded<S> {
    fn new(inner: S, tcp: &TcpStream, truth: &Path) -> Self {
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

fn body(size: usize, seed: usize) -> Vec<u8> {
    (0..size).map(|i| ((i * 7 + seed * 13) % 251) as u8).collect()
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

fn server_config(cert: &Path, key: &Path) -> rustls::ServerConfig {
    let certs: Vec<CertificateDer> =
        CertificateDer::pem_file_iter(cert).unwrap().map(|c| c.unwrap()).collect();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap()
}

fn server(cert: &Path, key: &Path, truth: PathBuf) {
    let mut config = server_config(cert, key);
    config.key_log = Arc::new(TruthKeyLog(File::create(truth.join("keys")).unwrap().into()));
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    println!("port {}", listener.local_addr().unwrap().port());
    std::io::stdout().flush().unwrap();
    for tcp in listener.incoming() {
        let tcp = tcp.unwrap();
        let config = config.clone();
        let truth = truth.clone();
        std::thread::spawn(move || {
            let conn = rustls::ServerConnection::new(config).unwrap();
            let copy = tcp.try_clone().unwrap();
            let mut s = Recorded::new(rustls::StreamOwned::new(conn, tcp), &copy, &truth);
            let (_, mut request) = read_message(&mut s);
            request.reverse();
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", request.len());
            s.write_all(head.as_bytes()).unwrap();
            s.write_all(&request).unwrap();
            s.flush().unwrap();
            s.inner.conn.send_close_notify();
            let _ = s.inner.conn.complete_io(&mut s.inner.sock);
        });
    }
}

#[derive(Debug)]
struct AcceptAny;

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &provider().signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &provider().signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider().signature_verification_algorithms.supported_schemes()
    }
}

fn client_config() -> rustls::ClientConfig {
    let builder = rustls::ClientConfig::builder_with_provider(provider());
    let builder = if std::env::var_os("RUSTLSPEER_TLS12").is_some() {
        builder.with_protocol_versions(&[&rustls::version::TLS12])
    } else {
        builder.with_safe_default_protocol_versions()
    };
    builder.unwrap().dangerous().with_custom_certificate_verifier(Arc::new(AcceptAny)).with_no_client_auth()
}

fn client(port: u16, count: usize, size: usize, truth: PathBuf) {
    let mut config = client_config();
    config.key_log = Arc::new(rustls::KeyLogFile::new());
    let config = Arc::new(config);
    for i in 0..count {
        let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let conn = rustls::ClientConnection::new(config.clone(), name).unwrap();
        let copy = tcp.try_clone().unwrap();
        let mut s = Recorded::new(rustls::StreamOwned::new(conn, tcp), &copy, &truth);
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

/// `read_exact` and `write_all`, counting every call that reaches rustls.
struct Counted<'a, S> {
    inner: S,
    calls: &'a AtomicU64,
}

impl<S: Read + Write> Counted<'_, S> {
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
    let config = Arc::new(server_config(cert, key));
    let server_calls = calls.clone();
    let server = std::thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        tcp.set_nodelay(true).unwrap();
        let conn = rustls::ServerConnection::new(config).unwrap();
        let mut s = Counted { inner: rustls::StreamOwned::new(conn, tcp), calls: &server_calls };
        let mut buf = vec![0u8; size];
        for _ in 0..warmup + iterations {
            s.read_all(&mut buf);
            s.write_all(&buf);
        }
    });
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_nodelay(true).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(client_config()), name).unwrap();
    let mut c = Counted { inner: rustls::StreamOwned::new(conn, tcp), calls: &calls };
    let (message, mut echo) = (body(size, 0), vec![0u8; size]);
    let mut round = |c: &mut Counted<_>| {
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

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("server") => server(Path::new(&args[2]), Path::new(&args[3]), PathBuf::from(&args[4])),
        Some("client") => client(
            args[2].parse().unwrap(),
            args[3].parse().unwrap(),
            args[4].parse().unwrap(),
            PathBuf::from(&args[5]),
        ),
        Some("pingpong") if args.len() == 6 => pingpong(
            Path::new(&args[2]),
            Path::new(&args[3]),
            args[4].parse().unwrap(),
            args[5].parse().unwrap(),
        ),
        _ => {
            eprintln!(
                "usage: rustlspeer server CERT KEY TRUTHDIR | client PORT COUNT SIZE TRUTHDIR | \
                 pingpong CERT KEY SIZE ITERATIONS"
            );
            std::process::exit(2);
        }
    }
}
