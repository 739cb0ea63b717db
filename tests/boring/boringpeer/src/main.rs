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
//! TRUTHDIR/<local port>-<remote port>.sent and .recv (the exchange and its
//! records: tests/support/peer_echo.rs), and every line their key log
//! callback (SSL_CTX_set_keylog_callback) is given into TRUTHDIR/keylog.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use boring::ssl::{
    SslAcceptor, SslAcceptorBuilder, SslConnector, SslContextBuilder, SslFiletype, SslMethod, SslVerifyMode,
    SslVersion,
};

#[path = "../../../support/peer_echo.rs"]
mod echo;
use echo::Recorded;

/// Every key log line the library gives the program, appended whole.
fn log_keys(ctx: &mut SslContextBuilder, truth: &Path) {
    let file = OpenOptions::new().create(true).append(true).open(truth.join("keylog")).unwrap();
    let file = Arc::new(Mutex::new(file));
    ctx.set_keylog_callback(move |_, line| {
        let mut f = file.lock().unwrap();
        f.write_all(format!("{line}\n").as_bytes()).unwrap();
    });
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
    for tcp in echo::listen().incoming() {
        let tcp = tcp.unwrap();
        let acceptor = acceptor.clone();
        let truth = truth.clone();
        std::thread::spawn(move || {
            let copy = tcp.try_clone().unwrap();
            let Ok(stream) = acceptor.accept(tcp) else { return };
            let mut s = Recorded::new(stream, &copy, &truth);
            echo::answer(&mut s);
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
        let copy = tcp.try_clone().unwrap();
        let stream = connector.configure().unwrap().connect("localhost", tcp).unwrap();
        echo::ask(&mut Recorded::new(stream, &copy, &truth), i, size);
    }
    println!("ok {count}");
}

fn pingpong(cert: &Path, key: &Path, size: usize, iterations: usize) {
    let acceptor = acceptor_builder(cert, key).build();
    echo::pingpong(
        size,
        iterations,
        move |tcp| acceptor.accept(tcp).unwrap(),
        |tcp| {
            let mut builder = SslConnector::builder(SslMethod::tls()).unwrap();
            builder.set_verify(SslVerifyMode::NONE);
            builder.build().configure().unwrap().connect("localhost", tcp).unwrap()
        },
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
