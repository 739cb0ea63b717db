//! A current OpenSSL 3.x (3.3 or newer, built by scripts/build-openssl3):
//! `SSL_write_ex2`, which OpenSSL added in 3.3 and through which its
//! `SSL_write_ex` now goes, is captured byte for byte in both directions.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::*;

/// `<OPENSSL_3X>/lib/libssl.so.3`, failing with the install hint when
/// it is not there.
fn libssl_3x() -> PathBuf {
    let libssl = Path::new(OPENSSL_3X).join("lib/libssl.so.3");
    let header = Path::new(OPENSSL_3X).join("include/openssl/ssl.h");
    assert!(
        libssl.exists() && header.exists(),
        "{} or {} is missing: run scripts/install-deps --test (it runs scripts/build-openssl3)",
        libssl.display(),
        header.display()
    );
    libssl
}

/// The version line of `<OPENSSL_3X>/lib/libcrypto.so.3` ("3.5.5"), read
/// with the library's own `OpenSSL_version` through a small program.
fn openssl_3x_version(dir: &Path) -> String {
    let source = dir.join("version.c");
    std::fs::write(
        &source,
        "#include <stdio.h>\n#include <openssl/crypto.h>\n\
         int main(void) { return printf(\"%s\\n\", OpenSSL_version(OPENSSL_VERSION_STRING)) < 0; }\n",
    )
    .unwrap();
    let binary = dir.join("version");
    let lib = format!("{OPENSSL_3X}/lib");
    let out = Command::new("cc")
        .arg("-o")
        .arg(&binary)
        .arg(&source)
        .arg(format!("-I{OPENSSL_3X}/include"))
        .arg(format!("-L{lib}"))
        .arg(format!("-Wl,-rpath,{lib}"))
        .arg("-lcrypto")
        .output()
        .expect("running cc");
    assert!(out.status.success(), "building version.c: {}", String::from_utf8_lossy(&out.stderr));
    let out = run(&mut Command::new(&binary), b"");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn ssl_write_ex2_of_openssl_3x_is_captured_byte_exact_both_ways() {
    let Some(_one) = capture_test() else { return };
    let libssl = libssl_3x();
    let dir = tempfile::tempdir().unwrap();
    let pair = build_against_openssl("write_ex2_pair", OPENSSL_3X, dir.path());
    let version = openssl_3x_version(dir.path());
    let (major, minor) = version.split_once('.').unwrap();
    let minor: u32 = minor.split('.').next().unwrap().parse().unwrap();
    assert!(
        major == "3" && minor >= 3,
        "SSL_write_ex2 needs OpenSSL 3.3 or newer, {OPENSSL_3X} is {version}"
    );

    let cert = Certificate::new();
    let request = payload(300_000, 5);
    let response = payload(200_001, 9);
    let file = |name: &str| dir.path().join(name);
    std::fs::write(file("request"), &request).unwrap();
    std::fs::write(file("response"), &response).unwrap();

    let capture = Capture::start(&["tls", "--lib", libssl.to_str().unwrap()]);
    let out = run(
        Command::new(&pair).arg(cert.cert()).arg(cert.key()).args([
            file("request"),
            file("response"),
            file("server-got"),
            file("client-got"),
        ]),
        b"",
    );
    let got = capture.stop();
    got.assert_clean_exit();
    assert!(got.stderr.contains(&format!("(openssl {version}:")), "{}", got.stderr);

    // What each side received, as it wrote it down, is what the other sent.
    let server_got = std::fs::read(file("server-got")).unwrap();
    let client_got = std::fs::read(file("client-got")).unwrap();
    assert_same_bytes(&server_got, &request, "what the server received");
    assert_same_bytes(&client_got, &response, "what the client received");

    let pids = String::from_utf8(out.stdout).unwrap();
    let pids: Vec<u64> = pids.split_whitespace().map(|p| p.parse().unwrap()).collect();
    let [client, server] = pids[..] else { panic!("write_ex2_pair printed {pids:?}") };
    assert!(got.tls().all(|r| r["pid"] == client || r["pid"] == server), "other processes captured");
    let of = |pid: u64| move |r: &serde_json::Value| r["pid"] == pid;
    assert_same_bytes(&got.stream("send", of(client)), &request, "client send (SSL_write_ex2)");
    assert_same_bytes(&got.stream("recv", of(server)), &server_got, "server recv (SSL_read_ex)");
    assert_same_bytes(&got.stream("send", of(server)), &response, "server send (SSL_write_ex2)");
    assert_same_bytes(&got.stream("recv", of(client)), &client_got, "client recv (SSL_read_ex)");
    // Writes name SSL_write_ex2, or SSL_write_ex where only that is seen
    // (each call once: the streams above are whole and not doubled).
    let writes: Vec<&serde_json::Value> = got.tls().filter(|r| r["direction"] == "send").collect();
    assert!(writes.iter().any(|r| r["function"] == "SSL_write_ex2"), "{writes:?}");
    assert!(writes.iter().all(|r| r["function"] == "SSL_write_ex2" || r["function"] == "SSL_write_ex"));
    for r in got.tls() {
        assert_eq!(r["library"], "openssl", "{r}");
        assert_eq!(r["library_path"], libssl.to_str().unwrap(), "{r}");
        assert_eq!(r["library_version"], version.as_str(), "{r}");
    }
}
