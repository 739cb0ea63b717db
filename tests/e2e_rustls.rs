//! rustls (0.23.46, ring provider): a client and a server built from
//! tests/rustls/rustlspeer (statically linked, as every Rust program links
//! rustls), with rustls::StreamOwned. Both sides record every byte they
//! pass to rustls and get from it, per connection: the capture must equal
//! both, byte for byte, with the pid, fd and both ends of each connection.
//! A server runs before cleartap starts and one after (found at its exec),
//! and the client (the same file) starts after. A stripped build and an
//! LTO build cannot be probed: cleartap says so, naming the file.

mod support;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use support::*;

/// tests/rustls/rustlspeer built with `profile` (release, stripped, lto),
/// cached under target/rustls-tests (built from crates.io: rustls 0.23.46
/// is pinned in its Cargo.toml and Cargo.lock). With
/// CLEARTAP_TEST_RUSTLS_PREBUILT=DIR (a guest without cargo: the arm64
/// one, whose peer tests/vm/arm64.sh cross-builds), DIR/PROFILE/rustlspeer.
fn rustlspeer(profile: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("CLEARTAP_TEST_RUSTLS_PREBUILT") {
        let prebuilt = Path::new(&dir).join(profile).join("rustlspeer");
        assert!(prebuilt.exists(), "{} is missing (CLEARTAP_TEST_RUSTLS_PREBUILT)", prebuilt.display());
        return prebuilt;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = root.join("target/rustls-tests");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let built = Command::new(&cargo)
        .args(["build", "--locked", "--profile", profile, "--manifest-path"])
        .arg(root.join("tests/rustls/rustlspeer/Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .unwrap_or_else(|e| panic!("running {cargo} (needed to build the rustls test peer): {e}"));
    assert!(
        built.status.success(),
        "building tests/rustls/rustlspeer (rustls from crates.io) failed; it needs cargo and \
         network access to crates.io (or the crates in cargo's cache):\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    target.join(profile).join("rustlspeer")
}

/// `count` POSTs of `size` bytes, one connection each; the client checks
/// every answer itself. Its pid and truth files.
fn client(binary: &Path, server: &Server, count: usize, size: usize) -> (u32, tempfile::TempDir) {
    client_with_env(binary, server, count, size, &[])
}

fn client_with_env(
    binary: &Path,
    server: &Server,
    count: usize,
    size: usize,
    env: &[(&str, &Path)],
) -> (u32, tempfile::TempDir) {
    server.run_client(binary, count, size, &[], env)
}

/// Every connection a side recorded (`<local port>-<remote port>.sent` and
/// `.recv`) against what cleartap captured for that pid and that pair of
/// ports; every record of the pid has an fd, both addresses and the
/// rustls function.
fn assert_side_matches(got: &Captured, pid: u32, truth: &Path, side: &str) {
    // A multi-KiB exchange each way on every connection.
    assert_recorded_connections(got, pid, truth, side, 4097);
    let records: Vec<_> = got.tls().filter(|r| r["pid"] == pid).collect();
    assert!(!records.is_empty(), "{side}: no records");
    for r in records {
        assert_eq!(r["library"], "rustls", "{r}");
        assert!(r["fd"].as_i64().unwrap() >= 0, "{r}");
        assert!(port_of(&r["local"]).is_some() && port_of(&r["remote"]).is_some(), "{r}");
        let function = r["function"].as_str().unwrap();
        assert!(
            function.starts_with("<rustls::conn::connection::Writer as std::io::Write>::write")
                || function.starts_with("<rustls::conn::connection::Reader as std::io::Read>::read"),
            "{r}"
        );
    }
}

/// Both sides, byte-exact both ways: a server running before cleartap
/// (attached at start), a server from a file first seen at its exec after
/// cleartap started (attached by exec discovery), and clients started
/// after.
#[test]
fn rustls_client_and_server_both_ways() {
    if !require_bpf() {
        return;
    }
    let binary = rustlspeer("release");
    let _one = exclusive();
    let before = Server::start(&binary);
    let mut capture = Capture::start(&["tls", "--library", "rustls"]);
    // A file cleartap has never seen, found at its exec: a fresh copy.
    let dir = tempfile::tempdir().unwrap();
    let fresh = dir.path().join("rustlspeer-fresh");
    fs::copy(&binary, &fresh).unwrap();
    let after = Server::start(&fresh);
    let attached = format!("cleartap: attached to {} (rustls 0.23.46: ", fresh.display());
    assert!(
        capture.wait_for_stderr(&attached, std::time::Duration::from_secs(30)),
        "{}",
        capture.stderr_so_far()
    );
    let (client_a, truth_a) = client(&binary, &before, 2, 40_000);
    let (client_b, truth_b) = client(&fresh, &after, 1, 300_000);
    let got = capture.stop();
    got.assert_clean_exit();
    assert!(got.stderr.contains("(rustls 0.23.46: "), "{}", got.stderr);
    assert_side_matches(&got, client_a, truth_a.path(), "client (server running before)");
    assert_side_matches(&got, client_b, truth_b.path(), "client (server started after)");
    assert_side_matches(&got, before.child.id(), before.truth.path(), "server running before cleartap");
    assert_side_matches(&got, after.child.id(), after.truth.path(), "server started after cleartap");
}

/// rustls hands every secret to the program's key logger, and cleartap
/// probes every implementation of `KeyLog::log` the program has: rustls's
/// own `KeyLogFile` (the client's, writing to $SSLKEYLOGFILE) and one of
/// the program's (the server's). TLS 1.3 and 1.2: cleartap's key log is,
/// line for line, what the two ends logged themselves.
#[test]
fn rustls_secrets_equal_the_programs_own_key_logs() {
    if !require_bpf() {
        return;
    }
    let binary = rustlspeer("release");
    let _one = exclusive();
    let server = Server::start(&binary);
    let out = tempfile::tempdir().unwrap();
    let keylog = out.path().join("cleartap.keys");
    let capture = Capture::start(&["tls", "--library", "rustls", "--keylog", keylog.to_str().unwrap()]);
    let client_keys = out.path().join("client.keys");
    let tls13 = [("SSLKEYLOGFILE", client_keys.as_path())];
    let tls12 = [("SSLKEYLOGFILE", client_keys.as_path()), ("RUSTLSPEER_TLS12", Path::new("1"))];
    let _ = client_with_env(&binary, &server, 2, 5000, &tls13);
    let _ = client_with_env(&binary, &server, 1, 5000, &tls12);
    let got = capture.stop();
    got.assert_clean_exit();
    assert!(!got.stderr.contains("no TLS secrets from"), "{}", got.stderr);
    let lines = |path: &Path| -> BTreeSet<String> {
        let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        text.lines().map(str::to_owned).collect()
    };
    // The union: a resumed connection's server also logs its early
    // traffic secret, which a client that sends no early data does not.
    let mut logged = lines(&server.truth.path().join("keys"));
    logged.extend(lines(&client_keys));
    for label in ["CLIENT_RANDOM ", "CLIENT_TRAFFIC_SECRET_0 ", "SERVER_HANDSHAKE_TRAFFIC_SECRET "] {
        assert!(logged.iter().any(|l| l.starts_with(label)), "no {label}line: {logged:?}");
    }
    assert_eq!(lines(&keylog), logged, "cleartap's key log against the programs' own");
}

/// The default `--library` set includes rustls.
#[test]
fn rustls_is_captured_by_default() {
    if !require_bpf() {
        return;
    }
    let binary = rustlspeer("release");
    let _one = exclusive();
    let server = Server::start(&binary);
    let capture = Capture::start(&["tls", "--pid", &server.child.id().to_string()]);
    let _ = client(&binary, &server, 1, 8000);
    let got = capture.stop();
    got.assert_clean_exit();
    assert_side_matches(&got, server.child.id(), server.truth.path(), "server");
}

/// A stripped build has no symbols, and with LTO `Writer::write` is
/// inlined away: neither can be probed, and cleartap says so for each,
/// at start (the server) and at exec (the client).
#[test]
fn stripped_and_lto_rustls_programs_are_refused_with_a_warning() {
    if !require_bpf() {
        return;
    }
    let stripped = rustlspeer("stripped");
    let lto = rustlspeer("lto");
    let _one = exclusive();
    let server = Server::start(&stripped);
    let mut capture = Capture::start(&["tls", "--library", "rustls"]);
    let _ = client(&lto, &server, 1, 5000);
    let warning =
        format!("cleartap: warning: not capturing rustls in {}: rustls is linked in, but", lto.display());
    assert!(
        capture.wait_for_stderr(&warning, std::time::Duration::from_secs(30)),
        "{}",
        capture.stderr_so_far()
    );
    let got = capture.stop();
    let refused = format!(
        "cleartap: warning: not capturing rustls in {}: rustls is linked in, but the executable is stripped",
        stripped.display()
    );
    assert!(got.stderr.contains(&refused), "{}", got.stderr);
    assert!(got.stderr.contains("is not a function of its own (inlined: built with LTO?)"), "{}", got.stderr);
    assert_eq!(got.tls().count(), 0);
}

/// A label the probe cannot read at first: a probe cannot fault a page in,
/// and a program's read-only data (where rustls's and Go's labels are) is
/// not in its page tables before its first use (a Go program fresh from
/// disk lost its first secret so). The peer hands its key logger a label
/// from a file it mapped and never touched (its page certainly absent at
/// the call), and a random and a secret of its own, and stays alive until
/// the capture has stopped. Where uprobes can sleep (6.0) the probe faults
/// the page in itself; without (forced here too) the label is read from
/// the process when the record arrives. Both give the peer's own line.
#[test]
fn a_label_not_in_memory_at_the_call_is_still_logged() {
    if !require_bpf() {
        return;
    }
    let binary = rustlspeer("release");
    let _one = exclusive();
    let sleepable = cleartap::kernel::has_sleepable_uprobes();
    // Every kernel from 6.0 on has them: a probe that wrongly said no would
    // leave only the fallback tested here.
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let major: u32 = release.split('.').next().and_then(|m| m.parse().ok()).unwrap_or(0);
    assert!(major < 6 || sleepable, "kernel {}: sleepable uprobes not detected", release.trim());
    let runs: &[(&[(&str, &str)], u32)] =
        &[(&[], if sleepable { 0 } else { 1 }), (&[("CLEARTAP_TEST_NO_SLEEPABLE", "1")], 1)];
    for &(env, read_late) in runs {
        let (keylog, logged, stderr) = log_an_untouched_label(&binary, env);
        assert!(logged.starts_with("CLIENT_RANDOM 0108"), "the peer's own line: {logged}");
        assert_eq!(keylog, logged, "{env:?}: {stderr}");
        // How it was read: in the kernel, or from the process afterwards
        // (the premise: the probe alone could not read it).
        let late = format!("{read_late} labels read from their process after the call");
        assert!(stderr.contains(&late), "{env:?}: wanted {late:?}: {stderr}");
    }
}

/// `rustlspeer late-label` under `cleartap tls --keylog` with `env`:
/// cleartap's key log, the peer's own, and cleartap's standard error.
fn log_an_untouched_label(binary: &Path, env: &[(&str, &str)]) -> (String, String, String) {
    use std::io::{BufRead, BufReader, Write};
    let dir = tempfile::tempdir().unwrap();
    let label_file = dir.path().join("label");
    fs::write(&label_file, "CLIENT_RANDOM").unwrap();
    let mut peer = Command::new(binary)
        .arg("late-label")
        .arg(&label_file)
        .arg(dir.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut said = BufReader::new(peer.stdout.take().unwrap()).lines();
    let mut next_line = || said.next().and_then(Result::ok).unwrap_or_default();
    assert_eq!(next_line(), "ready");
    let keylog = dir.path().join("cleartap.keys");
    let pid = peer.id().to_string();
    let args = ["tls", "--library", "rustls", "--pid", &pid, "--keylog", keylog.to_str().unwrap()];
    let capture = Capture::start_with_env(&args, env);
    let mut stdin = peer.stdin.take().unwrap();
    writeln!(stdin, "go").unwrap();
    assert_eq!(next_line(), "logged");
    let got = capture.stop();
    drop(stdin);
    assert!(peer.wait().unwrap().success());
    got.assert_clean_exit();
    let logged = fs::read_to_string(dir.path().join("keys")).unwrap();
    (fs::read_to_string(&keylog).unwrap_or_default(), logged, got.stderr)
}
