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
//! rustlspeer late-label LABELFILE TRUTHDIR
//!     maps LABELFILE (a key log label) without touching it, prints
//!     "ready", and at a line on stdin hands that label, a client random and
//!     a secret of its own to its key logger (TRUTHDIR/keys) as rustls
//!     would; prints "logged", and exits at the end of stdin. The label's
//!     page is then not in the process's page tables at the call, as a
//!     program's read-only data is before its first use.
//!
//! Both sides write what they passed to rustls (`Write::write` on a
//! `rustls::StreamOwned`) and what they got from it (`Read::read`) into
//! TRUTHDIR/<local port>-<remote port>.sent and .recv (the exchange and its
//! records: tests/support/peer_echo.rs).
//!
//! Key loggers, one of each kind a program has: the server's own `KeyLog`
//! writes every secret rustls gives it to TRUTHDIR/keys; the client uses
//! rustls's `KeyLogFile` (which writes to $SSLKEYLOGFILE when it is set).
//! RUSTLSPEER_TLS12=1 makes the client offer TLS 1.2 only.

use std::fs::File;
use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring, verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

#[path = "../../../support/peer_echo.rs"]
mod echo;
use echo::Recorded;

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
    for tcp in echo::listen().incoming() {
        let tcp = tcp.unwrap();
        let config = config.clone();
        let truth = truth.clone();
        std::thread::spawn(move || {
            let conn = rustls::ServerConnection::new(config).unwrap();
            let copy = tcp.try_clone().unwrap();
            let mut s = Recorded::new(rustls::StreamOwned::new(conn, tcp), &copy, &truth);
            echo::answer(&mut s);
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
        echo::ask(&mut Recorded::new(rustls::StreamOwned::new(conn, tcp), &copy, &truth), i, size);
    }
    println!("ok {count}");
}

fn pingpong(cert: &Path, key: &Path, size: usize, iterations: usize) {
    let config = Arc::new(server_config(cert, key));
    let accept = move |tcp| rustls::StreamOwned::new(rustls::ServerConnection::new(config).unwrap(), tcp);
    echo::pingpong(size, iterations, accept, |tcp| {
        let name = ServerName::try_from("localhost").unwrap();
        let conn = rustls::ClientConnection::new(Arc::new(client_config()), name).unwrap();
        rustls::StreamOwned::new(conn, tcp)
    });
}

extern "C" {
    fn mmap(addr: *mut u8, len: usize, prot: i32, flags: i32, fd: i32, offset: i64) -> *mut u8;
}

/// `late-label` (see the top of this file).
fn late_label(label_file: &Path, truth: &Path) {
    use std::io::BufRead;
    use std::os::fd::AsRawFd;
    const PROT_READ: i32 = 1;
    const MAP_PRIVATE: i32 = 2;
    let file = File::open(label_file).unwrap();
    let len = file.metadata().unwrap().len() as usize;
    // SAFETY: a private read-only mapping of a whole file this process
    // opened; nothing writes to it, and it is never unmapped.
    let at = unsafe { mmap(std::ptr::null_mut(), len, PROT_READ, MAP_PRIVATE, file.as_raw_fd(), 0) };
    assert!(!at.is_null() && at as isize != -1, "mmap of {}", label_file.display());
    // SAFETY: `len` bytes mapped above. Not checked as UTF-8 here: that
    // would read the page before the call (the test wrote ASCII).
    let label = unsafe { std::str::from_utf8_unchecked(std::slice::from_raw_parts(at, len)) };
    let logger: Arc<dyn rustls::KeyLog> =
        Arc::new(TruthKeyLog(File::create(truth.join("keys")).unwrap().into()));
    let random: Vec<u8> = (0..32).map(|i| i * 7 + 1).collect();
    let secret: Vec<u8> = (0..48).map(|i| 255 - i * 3).collect();
    println!("ready");
    let mut lines = std::io::stdin().lock().lines();
    lines.next();
    // Through the trait object, as rustls calls it: a call of the probed
    // `<TruthKeyLog as KeyLog>::log`, not a copy inlined here.
    std::hint::black_box(&logger).log(label, &random, &secret);
    println!("logged");
    lines.for_each(drop);
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
        Some("late-label") if args.len() == 4 => late_label(Path::new(&args[2]), Path::new(&args[3])),
        _ => {
            eprintln!(
                "usage: rustlspeer server CERT KEY TRUTHDIR | client PORT COUNT SIZE TRUTHDIR | \
                 pingpong CERT KEY SIZE ITERATIONS | late-label LABELFILE TRUTHDIR"
            );
            std::process::exit(2);
        }
    }
}
