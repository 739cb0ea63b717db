//! BoringSSL linked into executables (the `boring` crate 4.22.0, which
//! vendors BoringSSL and links it statically): a client and a server built
//! from tests/boring/boringpeer, once, and a `strip --strip-all` copy of
//! that build (the same code without a symbol table). Both sides record
//! every byte they pass to SSL_write and get from SSL_read, per
//! connection: the capture must equal both, byte for byte, with the pid,
//! fd and both ends of each connection, with symbols and without (found
//! from the code, see `discover::boringssl`). A stripped program whose
//! BoringSSL anchors do not hold, and one without BoringSSL, get no probe.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cleartap::discover::boringssl;
use cleartap::discover::elf::Symbols;
use support::*;

/// tests/boring/boringpeer built once (BoringSSL's C++ build is a few
/// minutes), cached under target/boring-tests: (with symbols, stripped).
fn boringpeer() -> (PathBuf, PathBuf) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = root.join("target/boring-tests");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let built = Command::new(&cargo)
        .args(["build", "--locked", "--release", "--manifest-path"])
        .arg(root.join("tests/boring/boringpeer/Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .unwrap_or_else(|e| panic!("running {cargo} (needed to build the BoringSSL test peer): {e}"));
    assert!(
        built.status.success(),
        "building tests/boring/boringpeer (the boring crate from crates.io) failed; it needs cargo, \
         cmake and libclang (scripts/install-deps --test) and crates.io or cargo's cache:\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let with_symbols = target.join("release/boringpeer");
    let stripped = target.join("release/boringpeer-stripped");
    stripped_copy(&with_symbols, &stripped);
    (with_symbols, stripped)
}

/// `strip --strip-all` of `from` at `to`, unless `to` is newer than
/// `from` already (a file a running test uses is not replaced under it);
/// made under another name and renamed, so that tests running at once
/// never see half a file.
fn stripped_copy(from: &Path, to: &Path) {
    let modified = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
    if modified(to).is_some_and(|t| Some(t) >= modified(from)) {
        return;
    }
    let partial = tempfile::Builder::new().prefix(".boringpeer-").tempfile_in(to.parent().unwrap()).unwrap();
    let status = Command::new("strip")
        .arg("--strip-all")
        .arg("-o")
        .arg(partial.path())
        .arg(from)
        .status()
        .expect("running strip (binutils)");
    assert!(status.success(), "strip --strip-all {}", from.display());
    partial.persist(to).unwrap();
    let bytes = fs::read(to).unwrap();
    let elf = object::File::parse(&bytes[..]).unwrap();
    assert!(object::Object::section_by_name(&elf, ".symtab").is_none(), "{} kept its symbols", to.display());
}

/// `count` POSTs of `size` bytes over TLS `version` (tls12, tls13), one
/// connection each; the client checks every answer itself. Its pid and
/// truth files.
fn client(
    binary: &Path,
    server: &Server,
    count: usize,
    size: usize,
    version: &str,
) -> (u32, tempfile::TempDir) {
    server.run_client(binary, count, size, &[version], &[])
}

/// Every connection a side recorded against what cleartap captured for
/// that pid and pair of ports; every record of the pid is BoringSSL's
/// SSL_write or SSL_read with an fd and both addresses.
fn assert_side_matches(got: &Captured, pid: u32, truth: &Path, side: &str) {
    assert_recorded_connections(got, pid, truth, side, 4097);
    let records: Vec<_> = got.tls().filter(|r| r["pid"] == pid).collect();
    assert!(!records.is_empty(), "{side}: no records");
    for r in records {
        assert_eq!(r["library"], "boringssl", "{r}");
        assert!(r["function"] == "SSL_write" || r["function"] == "SSL_read", "{r}");
        assert!(r["fd"].as_i64().unwrap() >= 0, "{r}");
        assert!(port_of(&r["local"]).is_some() && port_of(&r["remote"]).is_some(), "{r}");
    }
}

/// The functions of the symbol table, found again from the code alone in
/// the same build and in its stripped copy.
#[test]
fn boringssl_functions_are_found_from_the_code_alone() {
    let (with_symbols, stripped) = boringpeer();
    let bytes = fs::read(&with_symbols).unwrap();
    let symbols = Symbols::parse(&bytes[..], &["SSL_write", "SSL_read", "SSL_do_handshake"]).unwrap();
    let address = |name| symbols.get(name).unwrap_or_else(|| panic!("{name} in the symbol table")).address;
    for file in [&with_symbols, &stripped] {
        let points = boringssl::find(&fs::read(file).unwrap()[..]).unwrap().expect("BoringSSL found");
        assert_eq!(points.write.address, address("SSL_write"), "{}", file.display());
        assert_eq!(points.read.address, address("SSL_read"), "{}", file.display());
        assert_eq!(points.do_handshake.address, address("SSL_do_handshake"), "{}", file.display());
        assert_eq!(points.write.file_offset, symbols.get("SSL_write").unwrap().file_offset);
    }
}

/// `mov edx, SSL_R_BAD_LENGTH` in SSL_write made another reason: SSL_write
/// has no anchor left, and the file is refused, not guessed at.
fn without_the_bad_length_anchor(with_symbols: &Path, stripped: &Path, dir: &Path) -> PathBuf {
    let bytes = fs::read(with_symbols).unwrap();
    let write = Symbols::parse(&bytes[..], &["SSL_write"]).unwrap().get("SSL_write").unwrap();
    let mut code = fs::read(stripped).unwrap();
    let range = write.file_offset as usize..(write.file_offset + write.size) as usize;
    let mov_edx_111 = [0xba, 111, 0, 0, 0];
    let at =
        code[range.clone()].windows(5).position(|w| w == mov_edx_111).expect("mov edx, 111 in SSL_write");
    code[range.start + at + 1] = 112;
    let patched = dir.join("boringpeer-no-anchor");
    fs::write(&patched, &code).unwrap();
    fs::set_permissions(&patched, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    patched
}

#[test]
fn a_boringssl_whose_anchors_do_not_hold_is_refused_and_garbage_never_panics() {
    let (with_symbols, stripped) = boringpeer();
    let dir = tempfile::tempdir().unwrap();
    let patched = without_the_bad_length_anchor(&with_symbols, &stripped, dir.path());
    let error = boringssl::find(&fs::read(&patched).unwrap()[..]).unwrap_err();
    assert!(format!("{error:#}").contains("SSL_write"), "{error:#}");
    // Not BoringSSL at all: nothing, no error.
    for other in ["/bin/true", "/bin/bash"] {
        assert_eq!(boringssl::find(&fs::read(other).unwrap()[..]).unwrap(), None, "{other}");
    }
    let bytes = fs::read(&stripped).unwrap();
    for cut in [0, 64, 4096, bytes.len() / 3, bytes.len() / 2, bytes.len() - 1] {
        let _ = boringssl::find(&bytes[..cut]);
    }
}

/// Both sides, byte-exact both ways, with symbols and without: servers of
/// both builds running before cleartap (attached at start), a stripped
/// server from a file first seen at its exec after cleartap started, and
/// clients of both builds over TLS 1.2 and 1.3 (from files already
/// attached: a client's exec races with its attach, which is not what
/// this tests).
#[test]
fn boringssl_stripped_and_not_both_ways() {
    let Some(_one) = capture_test() else { return };
    let (with_symbols, stripped) = boringpeer();
    let before_stripped = Server::start(&stripped);
    let before_symbols = Server::start(&with_symbols);
    let mut capture = Capture::start(&["tls", "--library", "openssl"]);
    let dir = tempfile::tempdir().unwrap();
    let fresh = dir.path().join("boringpeer-fresh");
    fs::copy(&stripped, &fresh).unwrap();
    let after = Server::start(&fresh);
    let attached = format!("cleartap: attached to {} (boringssl: SSL_write, SSL_read)", fresh.display());
    assert!(capture.wait_for_stderr(&attached, Duration::from_secs(30)), "{}", capture.stderr_so_far());
    let (client_a, truth_a) = client(&with_symbols, &before_stripped, 2, 40_000, "tls13");
    let (client_b, truth_b) = client(&stripped, &after, 1, 300_000, "tls12");
    let (client_c, truth_c) = client(&fresh, &before_symbols, 1, 20_000, "tls13");
    let (client_d, truth_d) = client(&stripped, &before_symbols, 1, 9_000, "tls12");
    let got = capture.stop();
    got.assert_clean_exit();
    let stripped_name =
        format!("cleartap: attached to {} (boringssl: SSL_write, SSL_read)", stripped.display());
    assert!(got.stderr.contains(&stripped_name), "{}", got.stderr);
    assert_side_matches(&got, client_a, truth_a.path(), "client with symbols, TLS 1.3");
    assert_side_matches(&got, client_b, truth_b.path(), "stripped client, TLS 1.2");
    assert_side_matches(&got, client_c, truth_c.path(), "stripped client, TLS 1.3");
    assert_side_matches(&got, client_d, truth_d.path(), "stripped client to a server with symbols, TLS 1.2");
    assert_side_matches(
        &got,
        before_stripped.child.id(),
        before_stripped.truth.path(),
        "stripped server before",
    );
    assert_side_matches(&got, before_symbols.child.id(), before_symbols.truth.path(), "server with symbols");
    assert_side_matches(&got, after.child.id(), after.truth.path(), "stripped server started after");
}

/// A stripped BoringSSL program whose anchors do not hold gets a warning
/// and no probe; a stripped program without BoringSSL gets nothing.
#[test]
fn stripped_programs_without_the_anchors_get_no_probe() {
    let Some(_one) = capture_test() else { return };
    let (with_symbols, stripped) = boringpeer();
    let dir = tempfile::tempdir().unwrap();
    let patched = without_the_bad_length_anchor(&with_symbols, &stripped, dir.path());
    let server = Server::start(&with_symbols);
    let mut capture = Capture::start(&["tls", "--library", "openssl"]);
    let (pid, _truth) = client(&patched, &server, 1, 5000, "tls13");
    let warning = format!("cleartap: warning: not capturing BoringSSL in {}: ", patched.display());
    assert!(capture.wait_for_stderr(&warning, Duration::from_secs(30)), "{}", capture.stderr_so_far());
    let true_copy = dir.path().join("true-stripped");
    fs::copy("/bin/true", &true_copy).unwrap();
    assert!(Command::new(&true_copy).status().unwrap().success());
    let got = capture.stop();
    got.assert_clean_exit();
    assert!(got.stderr.contains("SSL_write"), "{}", got.stderr);
    assert!(!got.stderr.contains(&format!("attached to {}", patched.display())), "{}", got.stderr);
    assert!(!got.stderr.contains(&true_copy.display().to_string()), "{}", got.stderr);
    assert_eq!(got.tls().filter(|r| r["pid"] == pid).count(), 0);
}

/// `--lib PATH` checks a stripped executable on demand: a BoringSSL found
/// from its code is probed (its plaintext captured from the first
/// connection), one whose anchors do not hold is an error naming why.
#[test]
fn lib_forces_the_check_of_a_stripped_executable() {
    let Some(_one) = capture_test() else { return };
    let (with_symbols, stripped) = boringpeer();
    let dir = tempfile::tempdir().unwrap();
    let patched = without_the_bad_length_anchor(&with_symbols, &stripped, dir.path());
    let refused =
        Command::new(env!("CARGO_BIN_EXE_cleartap")).arg("tls").arg("--lib").arg(&patched).output().unwrap();
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains(&format!("--lib {}", patched.display())) && err.contains("SSL_write"), "{err}");

    let lib = dir.path().join("boringpeer-lib");
    fs::copy(&stripped, &lib).unwrap();
    let capture = Capture::start(&["tls", "--lib", lib.to_str().unwrap()]);
    // Attached before `ready`.
    let attached = format!("cleartap: attached to {} (boringssl: SSL_write, SSL_read)", lib.display());
    assert!(capture.stderr_so_far().contains(&attached), "{}", capture.stderr_so_far());
    let server = Server::start(&lib);
    let (pid, truth) = client(&lib, &server, 1, 6000, "tls13");
    let got = capture.stop();
    got.assert_clean_exit();
    assert_side_matches(&got, pid, truth.path(), "client given by --lib");
    assert_side_matches(&got, server.child.id(), server.truth.path(), "server given by --lib");
}

/// The non-comment lines of a key log file.
fn key_lines(path: &Path) -> Vec<String> {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).map(String::from).collect()
}

/// The HTTP request URIs tshark decrypts in `pcap` (with nothing but the
/// secrets the file embeds).
fn decrypted_uris(pcap: &Path) -> Vec<String> {
    let out = Command::new("tshark")
        .arg("-r")
        .arg(pcap)
        .args(["-Y", "http.request", "-T", "fields", "-e", "http.request.uri"])
        .output()
        .expect("running tshark");
    assert!(out.status.success(), "tshark: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(String::from).collect()
}

/// TLS 1.2 and 1.3 secrets of BoringSSL programs with and without
/// symbols: `--keylog` holds, once each, exactly the lines both programs
/// gave their own key log callbacks, and tshark decrypts the `-w` pcapng
/// with the secrets it embeds.
#[test]
fn boringssl_secrets_equal_the_programs_own_key_log() {
    let Some(_one) = capture_test() else { return };
    let (with_symbols, stripped) = boringpeer();
    let server = Server::start(&with_symbols);
    let dir = tempfile::tempdir().unwrap();
    let (keys, pcap) = (dir.path().join("keys.log"), dir.path().join("capture.pcapng"));
    let filter = format!("tcp port {}", server.port);
    let mut args = vec!["tls", "--comm", "boringpeer", "--keylog", keys.to_str().unwrap()];
    args.extend(["-w", pcap.to_str().unwrap(), "-i", "lo"]);
    args.extend(filter.split(' '));
    let capture = Capture::start(&args);
    let (_, tls12) = client(&stripped, &server, 1, 7000, "tls12");
    let (_, tls13) = client(&stripped, &server, 1, 9000, "tls13");
    let got = capture.stop();
    got.assert_clean_exit();
    let lines = key_lines(&keys);
    let unique: std::collections::BTreeSet<String> = lines.iter().cloned().collect();
    assert_eq!(lines.len(), unique.len(), "a line written twice: {lines:#?}");
    let mut want = std::collections::BTreeSet::new();
    for truth in [tls12.path(), tls13.path(), server.truth.path()] {
        want.extend(key_lines(&truth.join("keylog")));
    }
    let labels: std::collections::BTreeSet<&str> = want.iter().filter_map(|l| l.split(' ').next()).collect();
    assert!(labels.contains("CLIENT_RANDOM") && labels.contains("SERVER_TRAFFIC_SECRET_0"), "{labels:?}");
    assert_eq!(unique, want);
    assert_eq!(decrypted_uris(&pcap), ["/echo", "/echo"]);
}

/// BoringSSL's key log function found from the code: the same in the
/// build and its stripped copy, and the one its symbol table names.
#[test]
fn boringssl_key_log_function_is_found_from_the_code_alone() {
    let (with_symbols, stripped) = boringpeer();
    let bytes = fs::read(&with_symbols).unwrap();
    let name = "_ZN4bssl14ssl_log_secretEPK6ssl_stPKcNS_4SpanIKhEE";
    let log_secret = Symbols::parse(&bytes[..], &[name]).unwrap().get(name).expect("ssl_log_secret's symbol");
    let points = boringssl::find_keylog(&bytes[..]).unwrap();
    assert_eq!(points.log_secret.address, log_secret.address);
    assert_eq!(boringssl::find_keylog(&fs::read(&stripped).unwrap()[..]).unwrap(), points);
    let patched_dir = tempfile::tempdir().unwrap();
    let patched = without_the_bad_length_anchor(&with_symbols, &stripped, patched_dir.path());
    assert_eq!(boringssl::find_keylog(&fs::read(patched).unwrap()[..]).unwrap(), points);
    for other in ["/bin/true", "/bin/bash"] {
        assert!(boringssl::find_keylog(&fs::read(other).unwrap()[..]).is_err(), "{other}");
    }
}
