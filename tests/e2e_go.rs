//! Go crypto/tls: a Go HTTPS server and client (tests/go/tlspeer), built
//! here with Debian's Go 1.19 and a current Go, plain, stripped and PIE.
//! Both sides record what they pass to (*tls.Conn).Write and get from
//! (*tls.Conn).Read, per connection, and their secrets through
//! KeyLogWriter: the capture must equal both, byte for byte.

mod support;

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use support::*;

struct GoServer {
    child: Child,
    port: u16,
    truth: tempfile::TempDir,
    _cert: Certificate,
}

impl GoServer {
    fn start(binary: &Path, env: &[(&str, &str)]) -> GoServer {
        let cert = Certificate::new();
        let truth = tempfile::tempdir().unwrap();
        let mut child = Command::new(binary)
            .arg("server")
            .arg(cert.cert())
            .arg(cert.key())
            .arg(truth.path())
            .arg(truth.path().join("keys"))
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting the Go server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port = line.trim().strip_prefix("port ").and_then(|p| p.parse().ok()).expect("port line");
        GoServer { child, port, truth, _cert: cert }
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Stops the server and returns what it wrote to stderr (a Go panic or
    /// a fatal runtime error lands there).
    fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut self.child.stderr.take().unwrap(), &mut stderr).unwrap();
        stderr
    }
}

impl Drop for GoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one client run left: its pid, its truth files and its stdout (a
/// line per request, in request order, then "ok COUNT").
struct ClientRun {
    pid: u32,
    truth: tempfile::TempDir,
    stdout: String,
}

/// Runs the client: `count` POSTs of `size` bytes over `workers`
/// connections; it checks every response itself.
fn client(binary: &Path, server: &GoServer, count: usize, size: usize, workers: usize) -> ClientRun {
    let truth = tempfile::tempdir().unwrap();
    let url = format!("https://127.0.0.1:{}/echo", server.port);
    let child = without_terminal(&mut Command::new(binary))
        .args(["client", &url, &count.to_string(), &size.to_string(), &workers.to_string()])
        .arg(truth.path())
        .arg(truth.path().join("keys"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "Go client: {}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stderr.is_empty(), "Go client: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.ends_with(&format!("ok {count}\n")), "{stdout}");
    ClientRun { pid, truth, stdout }
}

/// Every connection a side recorded, byte-exact both ways, and every
/// record of its pid from Go's crypto/tls with an fd.
fn assert_side_matches(got: &Captured, pid: u32, truth: &Path, side: &str) -> usize {
    let connections = assert_recorded_connections(got, pid, truth, side, 0);
    for r in got.tls().filter(|r| r["pid"] == pid) {
        assert_eq!(r["library"], "go", "{r}");
        assert!(r["fd"].as_i64().unwrap() >= 0, "{r}");
        assert!(r["function"].as_str().unwrap().starts_with("crypto/tls.(*Conn)."), "{r}");
    }
    connections
}

fn key_lines(paths: &[PathBuf]) -> BTreeSet<String> {
    paths
        .iter()
        .flat_map(|p| fs::read_to_string(p).unwrap().lines().map(String::from).collect::<Vec<_>>())
        .collect()
}

fn check_go(go: &str, build: Build) {
    let binary = tlspeer(go, build);
    // The server runs before cleartap starts; the client (the same file)
    // starts after: both are captured from their first byte.
    let server = GoServer::start(&binary, &[]);
    let keys = tempfile::tempdir().unwrap();
    let keylog = keys.path().join("keys.log");
    let capture = Capture::start(&["tls", "--library", "go", "--keylog", keylog.to_str().unwrap()]);
    let run = client(&binary, &server, 3, 3 << 20, 1);
    let got = capture.stop();
    got.assert_clean_exit();
    assert!(got.stderr.contains("(go go1."), "{}", got.stderr);
    assert_side_matches(&got, run.pid, run.truth.path(), "client");
    assert_side_matches(&got, server.child.id(), server.truth.path(), "server");
    let want = key_lines(&[run.truth.path().join("keys"), server.truth.path().join("keys")]);
    let captured = fs::read_to_string(&keylog).unwrap();
    let lines: Vec<&str> = captured.lines().collect();
    assert_eq!(lines.iter().map(|l| l.to_string()).collect::<BTreeSet<_>>(), want);
    assert_eq!(lines.len(), want.len(), "a secret written twice");
}

macro_rules! go_test {
    ($name:ident, $go:expr, $build:expr) => {
        #[test]
        fn $name() {
            let Some(_one) = capture_test() else { return };
            check_go($go, $build);
        }
    };
}

go_test!(go119_plain, DEBIAN_GO, Build::Plain);
go_test!(go119_stripped, DEBIAN_GO, Build::Stripped);
go_test!(go119_pie, DEBIAN_GO, Build::Pie);
go_test!(current_go_plain, CURRENT_GO, Build::Plain);
go_test!(current_go_stripped, CURRENT_GO, Build::Stripped);
go_test!(current_go_pie, CURRENT_GO, Build::Pie);
go_test!(go119_stripped_pie, DEBIAN_GO, Build::StrippedPie);
go_test!(current_go_stripped_pie, CURRENT_GO, Build::StrippedPie);

/// A Go program cleartap has never seen, run once (a fresh copy made after
/// cleartap started: a new file, as a build writes one; the copy and the
/// linker both write it, so only its exec shows it to cleartap). With
/// `--hold-unchecked` it is stopped at its exec until its probes are in,
/// so its first run is captured byte-exact both ways from its first byte.
/// Without the hold this races the attach (see bench/run's first-run); the
/// check is slowed by 300 ms here (CLEARTAP_TEST_OPEN_DELAY, as a large
/// file on a busy host would be) so that the race is always lost without
/// the hold, and the test shows the hold at work.
fn check_first_run(build: Build) {
    let binary = tlspeer(CURRENT_GO, build);
    let server = GoServer::start(&binary, &[]);
    let dir = tempfile::tempdir().unwrap();
    let delay = format!("{}:300", dir.path().display());
    let capture = Capture::start_with_env(
        &["tls", "--library", "go", "--comm", "fresh-go", "--hold-unchecked"],
        &[("CLEARTAP_TEST_OPEN_DELAY", &delay)],
    );
    let fresh = dir.path().join("fresh-go");
    fs::copy(&binary, &fresh).unwrap();
    let run = client(&fresh, &server, 1, 256 << 10, 1);
    let got = capture.stop();
    got.assert_clean_exit();
    let attached = format!("cleartap: attached to {} (go go1.", fresh.display());
    assert!(got.stderr.contains(&attached), "{}", got.stderr);
    assert_side_matches(&got, run.pid, run.truth.path(), "client");
    assert!(
        got.stderr.contains(": 1 processes held until their file was checked, 0 of them continued before"),
        "{}",
        got.stderr
    );
}

#[test]
fn a_new_go_program_is_captured_whole_on_its_first_run_with_hold() {
    let Some(_one) = capture_test() else { return };
    check_first_run(Build::Plain);
}

#[test]
fn a_new_stripped_go_program_is_captured_whole_on_its_first_run_with_hold() {
    let Some(_one) = capture_test() else { return };
    check_first_run(Build::Stripped);
}

/// Many concurrent requests through a Go server under capture, with the
/// garbage collector running all the time and stacks growing in every
/// handler: the server stays up, every response is right (the client
/// checks), and every byte of every connection is captured.
#[test]
fn go_server_soak() {
    let Some(_one) = capture_test() else { return };
    let binary = tlspeer(CURRENT_GO, Build::Stripped);
    let mut server = GoServer::start(&binary, &[("GOGC", "5")]);
    let capture = Capture::start(&["tls", "--library", "go", "--pid", &server.child.id().to_string()]);
    let _ = client(&binary, &server, 3000, 2000, 32);
    assert!(server.alive(), "the Go server died under capture");
    let got = capture.stop();
    got.assert_clean_exit();
    assert_side_matches(&got, server.child.id(), server.truth.path(), "server");
    let stderr = server.stop();
    assert!(stderr.is_empty(), "the Go server wrote to stderr: {stderr}");
}

/// The same Go client and server, run once alone and once under capture
/// (both sides probed, the collector running all the time): the client's
/// transcript (every response's status, length and SHA-256, in request
/// order) is identical, neither side writes to stderr, and the capture is
/// byte-exact. Probes that disturbed a Go program (a uretprobe's return
/// address on a moved stack, a clobbered register) would show here.
#[test]
fn go_output_is_the_same_with_and_without_capture() {
    let Some(_one) = capture_test() else { return };
    let binary = tlspeer(CURRENT_GO, Build::Plain);
    let gc = [("GOGC", "5")];
    let (count, size, workers) = (400, 40_000, 8);

    let alone = GoServer::start(&binary, &gc);
    let without = client(&binary, &alone, count, size, workers);
    assert_eq!(alone.stop(), "", "the Go server wrote to stderr without capture");

    let mut server = GoServer::start(&binary, &gc);
    let capture = Capture::start(&["tls", "--library", "go"]);
    let with = client(&binary, &server, count, size, workers);
    assert!(server.alive(), "the Go server died under capture");
    let got = capture.stop();
    got.assert_clean_exit();
    assert_eq!(with.stdout.lines().count(), count + 1);
    assert_eq!(with.stdout, without.stdout, "the Go client's output changed under capture");
    assert_side_matches(&got, with.pid, with.truth.path(), "client");
    assert_side_matches(&got, server.child.id(), server.truth.path(), "server");
    let stderr = server.stop();
    assert!(stderr.is_empty(), "the Go server wrote to stderr under capture: {stderr}");
}

#[test]
fn go_binary_option_refuses_what_it_cannot_probe() {
    if !require_bpf() {
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_cleartap"))
        .args(["tls", "--go-binary", "/bin/true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--go-binary /bin/true: not a Go program using crypto/tls"), "{stderr}");
}
