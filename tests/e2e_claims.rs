//! What docs/capture.md claims, each checked end to end against bytes the test
//! owns: OpenSSL linked into a static executable, `--uid`, the live text
//! and hex renderings, a library copy inside a container's root, `-w` on a
//! non-loopback interface (a veth pair into a network namespace), and Go's
//! secrets in a pcapng that tshark decrypts.

mod support;

use std::collections::BTreeSet;
use std::fs;
use std::hash::{Hash, Hasher};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use support::*;

const HINT: &str = "run scripts/install-deps --test";

/// `name` on PATH; a missing tool fails the test with the install hint.
fn tool(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join(name)).find(|p| p.is_file()))
        .unwrap_or_else(|| panic!("{name} is missing: {HINT}"))
}

fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/claims-tests")
}

// ---------------------------------------------------------------------------
// cleartap, stopped with SIGINT even when the test fails

/// A running `cleartap` with the arguments as given. Dropped without
/// `stop` (a failed assertion), it is stopped with SIGINT, so no capture
/// outlives its test.
struct Cleartap {
    child: Option<Child>,
    stdout: Option<thread::JoinHandle<Vec<u8>>>,
    stderr: mpsc::Receiver<String>,
    stderr_reader: Option<thread::JoinHandle<()>>,
    /// The stderr lines read so far.
    seen: String,
}

struct Stopped {
    stdout: Vec<u8>,
    stderr: String,
    status: ExitStatus,
}

impl Cleartap {
    fn start(args: &[&str]) -> Cleartap {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cleartap"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting cleartap");
        let stdout = read_in_background(child.stdout.take().unwrap());
        let (tx, rx) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        let stderr_reader = thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut cleartap = Cleartap {
            child: Some(child),
            stdout: Some(stdout),
            stderr: rx,
            stderr_reader: Some(stderr_reader),
            seen: String::new(),
        };
        let ready = cleartap.wait_for_stderr_line(|l| l == "ready", Duration::from_secs(60));
        assert!(ready, "cleartap did not become ready; stderr:\n{}", cleartap.seen);
        cleartap
    }

    fn wait_for_stderr_line(&mut self, want: impl Fn(&str) -> bool, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = self.stderr.recv_timeout(left) else { return false };
            let found = want(&line);
            self.seen += &(line + "\n");
            if found {
                return true;
            }
        }
    }

    /// Waits for the line saying cleartap attached to `path`.
    #[track_caller]
    fn wait_attached(&mut self, path: &str) {
        let prefix = format!("cleartap: attached to {path} (");
        // At start (before `ready`), or later.
        let found = self.seen.lines().any(|l| l.starts_with(&prefix))
            || self.wait_for_stderr_line(|l| l.starts_with(&prefix), Duration::from_secs(20));
        assert!(found, "cleartap did not attach to {path}; stderr:\n{}", self.seen);
    }

    /// SIGINT (cleartap drains what is in flight on the way out), then
    /// everything it printed.
    fn stop(mut self) -> Stopped {
        let mut child = self.child.take().unwrap();
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let status = child.wait().unwrap();
        let stdout = self.stdout.take().unwrap().join().unwrap();
        self.stderr_reader.take().unwrap().join().unwrap();
        let rest: Vec<String> = self.stderr.try_iter().collect();
        let stderr = std::mem::take(&mut self.seen) + &rest.join("\n");
        Stopped { stdout, stderr, status }
    }

    /// `stop`, with stdout parsed as JSON lines.
    fn stop_json(self) -> Captured {
        let s = self.stop();
        let records = String::from_utf8(s.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
            .collect();
        Captured { records, stderr: s.stderr, status: s.status }
    }
}

impl Drop for Cleartap {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while matches!(child.try_wait(), Ok(None)) {
            if Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = child.wait();
    }
}

impl Stopped {
    fn assert_clean_exit(&self) {
        assert!(self.status.success(), "cleartap exited with {}: {}", self.status, self.stderr);
        assert!(
            self.stderr.contains("lost in the kernel: 0 records"),
            "summary missing or losses reported: {}",
            self.stderr
        );
    }
}

// ---------------------------------------------------------------------------
// claims_client.c: a TLS client whose every byte the test owns

#[derive(Clone, Copy, Debug, PartialEq)]
enum Link {
    /// `gcc -static`: libssl.a and libcrypto.a inside the executable.
    Static,
    /// As `Static`, with -DCLAIMS_KEYLOG: OpenSSL's version string linked
    /// in, and its own key log.
    StaticKeylog,
    /// Against the system's libssl.so.3.
    Dynamic,
    /// `gcc -static` with OpenSSL 1.1.1's archives (scripts/build-openssl111).
    Static111,
    /// As `Static111`, with -DCLAIMS_KEYLOG.
    Static111Keylog,
    /// `gcc -static` with a current OpenSSL's archives (3.5, from
    /// scripts/build-openssl3): ssl_write_internal with five arguments.
    Static35,
    /// As `Static35`, with -DCLAIMS_KEYLOG.
    Static35Keylog,
}

/// tests/support/claims_client.c built as `link`, cached under target/ by
/// a hash of its sources and flags; the file is always named
/// `claims_client` (its comm).
fn claims_client(link: Link) -> PathBuf {
    if let Some(dir) = prebuilt_claims_client(link) {
        return dir.join("claims_client");
    }
    let source = support_dir().join("claims_client.c");
    let text = [fs::read(&source).unwrap(), fs::read(support_dir().join("connect_tcp.h")).unwrap()];
    let mut args: Vec<&str> = vec!["-O1", "-Wall", "-Wextra", "-Werror"];
    if link != Link::Dynamic {
        for archive in ["libssl.a", "libcrypto.a"] {
            let path = Path::new("/usr/lib/x86_64-linux-gnu").join(archive);
            assert!(path.exists(), "{} is missing (libssl-dev): {HINT}", path.display());
        }
        args.push("-static");
    }
    if matches!(link, Link::StaticKeylog | Link::Static111Keylog | Link::Static35Keylog) {
        args.push("-DCLAIMS_KEYLOG");
    }
    // Another OpenSSL's headers and archives, for the links that name one.
    let prefix = match link {
        Link::Static111 | Link::Static111Keylog => Some(OPENSSL_111),
        Link::Static35 | Link::Static35Keylog => Some(OPENSSL_3X),
        _ => None,
    };
    let include = prefix.map(|p| format!("-I{p}/include"));
    let archives = prefix.map(|p| [format!("{p}/lib/libssl.a"), format!("{p}/lib/libcrypto.a")]);
    if let (Some(include), Some(archives)) = (&include, &archives) {
        for archive in archives {
            assert!(Path::new(archive).exists(), "{archive} is missing: {HINT}");
        }
        args.push(include);
    }
    let libs: Vec<&str> = match &archives {
        Some([ssl, crypto]) => vec![ssl.as_str(), crypto.as_str(), "-ldl", "-lpthread"],
        None if link == Link::Dynamic => vec!["-lssl", "-lcrypto"],
        None => vec!["-lssl", "-lcrypto", "-ldl", "-lpthread"],
    };
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (&text, &args, &libs).hash(&mut hasher);
    let dir = target_dir().join(format!("claims_client-{link:?}-{:016x}", hasher.finish()).to_lowercase());
    let binary = dir.join("claims_client");
    if binary.exists() {
        return binary;
    }
    fs::create_dir_all(&dir).unwrap();
    let partial = dir.join(partial_name("claims_client"));
    let out = Command::new(tool("gcc"))
        .args(&args)
        .arg("-o")
        .arg(&partial)
        .arg(&source)
        .args(libs)
        .output()
        .expect("running gcc");
    // The static link warns that getaddrinfo wants glibc's shared NSS
    // modules at run time: the client passes numeric hosts only.
    assert!(out.status.success(), "building claims_client: {}", String::from_utf8_lossy(&out.stderr));
    fs::rename(&partial, &binary).unwrap();
    binary
}

/// `cmd` with its three standard streams piped.
fn spawn_piped(cmd: &mut Command) -> Child {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"))
}

/// A claims_client run: started, waiting for the go-ahead.
struct Client {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    stderr: Option<std::process::ChildStderr>,
}

/// What a claims_client run left.
struct Done {
    response: Vec<u8>,
    /// Its socket's descriptor.
    fd: u32,
}

impl Client {
    /// `cmd` runs claims_client (maybe through unshare and chroot).
    fn start(cmd: &mut Command) -> Client {
        let mut child = spawn_piped(cmd);
        let stdin = child.stdin.take();
        Client::started(child, stdin)
    }

    /// `start`, told to go as soon as it is spawned: it never waits for
    /// the test, as a program run once would not.
    fn start_at_once(cmd: &mut Command) -> Client {
        let mut child = spawn_piped(cmd);
        child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        Client::started(child, None)
    }

    fn started(mut child: Child, stdin: Option<ChildStdin>) -> Client {
        let stderr = child.stderr.take();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line, "waiting\n", "claims_client did not start");
        Client { child, stdin, stdout, stderr }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Let it connect and talk (if not told already); returns the
    /// response it received.
    fn go(mut self) -> Done {
        if let Some(mut stdin) = self.stdin.take() {
            stdin.write_all(b"go\n").unwrap();
        }
        let mut err = self.stderr.take().unwrap();
        let stderr = thread::spawn(move || {
            let mut s = String::new();
            err.read_to_string(&mut s).unwrap();
            s
        });
        let mut response = Vec::new();
        self.stdout.read_to_end(&mut response).unwrap();
        let status = self.child.wait().unwrap();
        let stderr = stderr.join().unwrap();
        assert!(status.success(), "claims_client exited with {status}: {stderr}");
        let fd = stderr.lines().find_map(|l| l.strip_prefix("fd ")).and_then(|s| s.parse().ok());
        Done { response, fd: fd.unwrap_or_else(|| panic!("claims_client's stderr: {stderr:?}")) }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A request the test server answers with `response_size` bytes, and
/// closes after.
fn request(body: &[u8], response_size: usize) -> Vec<u8> {
    let mut r = format!(
        "POST /{response_size} HTTP/1.1\r\nHost: claims\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

fn write_request(dir: &Path, request: &[u8]) -> PathBuf {
    let path = dir.join("request");
    fs::write(&path, request).unwrap();
    path
}

/// The only connection the server saw: the client's send and recv
/// streams in `got` (records matching `mine`) equal the server's truth,
/// which starts with `request`, and the client received what the server
/// sent.
#[track_caller]
fn assert_exchange(
    got: &Captured,
    server: &TlsServer,
    mine: impl Fn(&Value) -> bool,
    request: &[u8],
    response: &[u8],
) {
    let peer = single_peer(server);
    assert_same_bytes(&server.received_from(peer), request, "what the server received");
    assert_same_bytes(response, &server.sent_to(peer), "what the client received");
    assert_same_bytes(&got.stream("send", &mine), request, "captured send stream");
    assert_same_bytes(&got.stream("recv", &mine), response, "captured recv stream");
    for r in got.tls().filter(|r| mine(r)) {
        assert_eq!(port_of(&r["local"]), Some(peer), "{r}");
        assert_eq!(port_of(&r["remote"]), Some(server.port), "{r}");
    }
}

// ---------------------------------------------------------------------------
// 1. OpenSSL linked into an executable

/// The files `pid` maps, from /proc/PID/maps.
fn mapped_files(pid: u32) -> BTreeSet<String> {
    fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5).map(String::from))
        .collect()
}

/// A name to build `name` under before renaming it: tests run as
/// threads of one process, so the process id alone is not unique.
fn partial_name(name: &str) -> String {
    format!("{name}.{}.{:?}.partial", std::process::id(), std::thread::current().id())
}

/// With CLEARTAP_TEST_CLAIMS_PREBUILT=DIR (the arm64 guest, which has no
/// compiler: tests/vm/arm64.sh cross-builds them), the `Link::Static`
/// client is DIR/claims_client and its stripped copy
/// DIR/stripped/claims_client; no other link is prebuilt.
fn prebuilt_claims_client(link: Link) -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var_os("CLEARTAP_TEST_CLAIMS_PREBUILT")?);
    assert_eq!(
        link,
        Link::Static,
        "only the Link::Static client is prebuilt (CLEARTAP_TEST_CLAIMS_PREBUILT)"
    );
    Some(dir)
}

/// `strip --strip-all` of a static claims client, still named
/// `claims_client` (its comm), in a directory of its own beside the
/// build; made under another name and renamed, so that tests running at
/// once never see half a file.
fn stripped_claims_client(link: Link) -> PathBuf {
    if let Some(dir) = prebuilt_claims_client(link) {
        return dir.join("stripped").join("claims_client");
    }
    let built = claims_client(link);
    let dir = built.parent().unwrap().with_extension("stripped");
    let stripped = dir.join("claims_client");
    if stripped.exists() {
        return stripped;
    }
    fs::create_dir_all(&dir).unwrap();
    let partial = dir.join(partial_name("claims_client"));
    let status =
        Command::new(tool("strip")).arg("--strip-all").arg("-o").arg(&partial).arg(&built).status().unwrap();
    assert!(status.success(), "strip --strip-all {}", built.display());
    fs::rename(&partial, &stripped).unwrap();
    stripped
}

/// The claims client linked as `link`, stripped or not, capture checked.
/// `ex`: the client calls SSL_write_ex and SSL_read_ex instead of
/// SSL_write and SSL_read.
fn check_static_executable(link: Link, stripped: bool, started_before_cleartap: bool, ex: bool) {
    let binary = if stripped { stripped_claims_client(link) } else { claims_client(link) };
    // From OpenSSL 3.3 SSL_write_ex is SSL_write_ex2 without flags: its
    // records come through, and are named by, SSL_write_ex2.
    let write_ex = if link_version(link) >= (3, 3) { "SSL_write_ex2" } else { "SSL_write_ex" };
    let path = binary.to_str().unwrap();
    let server = TlsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let body = payload(50_000, 11);
    let request = request(&body, 200_000);
    let request_file = write_request(dir.path(), &request);
    let port = server.port.to_string();
    let api: &[&str] = if ex { &["ex"] } else { &[] };
    let start_client =
        || Client::start(Command::new(&binary).args(["127.0.0.1", &port]).arg(&request_file).args(api));

    let (client, mut capture) = if started_before_cleartap {
        let client = start_client();
        let capture = Cleartap::start(&["tls", "--format", "json", "--comm", "claims_client"]);
        (client, capture)
    } else {
        let capture = Cleartap::start(&["tls", "--format", "json", "--comm", "claims_client"]);
        (start_client(), capture)
    };
    // Found at start (its /proc/PID/exe) or at its exec: either way,
    // attached before it makes its first call.
    capture.wait_attached(path);
    let maps = mapped_files(client.pid());
    assert!(maps.contains(path), "{maps:?}");
    assert!(!maps.iter().any(|f| f.contains("libssl") || f.contains("libcrypto")), "not static: {maps:?}");
    let pid = client.pid();
    let Done { response, fd } = client.go();
    let got = capture.stop_json();
    got.assert_clean_exit();
    // No version: the linker kept no "OpenSSL 3.x.y" string from
    // libcrypto.a (nothing here calls OpenSSL_version).
    assert!(got.stderr.contains(&format!("cleartap: attached to {path} (openssl")), "{}", got.stderr);
    let mine = |r: &Value| r["pid"] == pid;
    assert_exchange(&got, &server, mine, &request, &response);
    assert_eq!(response.len(), "HTTP/1.1 200 OK\r\nContent-Length: 200000\r\n\r\n".len() + 200_000);
    assert!(got.tls().next().is_some());
    for r in got.tls() {
        assert_eq!(r["pid"], pid, "{r}");
        assert_eq!(r["comm"], "claims_client", "{r}");
        assert_eq!(r["library"], "openssl", "{r}");
        assert_eq!(r["library_path"], path, "{r}");
        assert_eq!(r["fd"], fd, "{r}");
        let function = r["function"].as_str().unwrap();
        let want = match (r["direction"] == "send", ex) {
            (true, false) => "SSL_write",
            (false, false) => "SSL_read",
            (true, true) => write_ex,
            (false, true) => "SSL_read_ex",
        };
        assert_eq!(function, want, "{r}");
    }
}

#[test]
fn openssl_in_a_static_executable_running_before_cleartap_or_started_later_is_captured_byte_exact() {
    let Some(_one) = capture_test() else { return };
    for started_before_cleartap in [true, false] {
        check_static_executable(Link::Static, false, started_before_cleartap, false);
    }
}

/// The same executable stripped (`strip --strip-all`): its SSL_write and
/// SSL_read found from its code (`discover::openssl_stripped`), both
/// directions byte-exact, running before cleartap or started after.
#[test]
fn openssl_in_a_stripped_static_executable_is_captured_byte_exact() {
    let Some(_one) = capture_test() else { return };
    for started_before_cleartap in [true, false] {
        check_static_executable(Link::Static, true, started_before_cleartap, false);
    }
}

/// The same stripped executable calling SSL_write_ex and SSL_read_ex,
/// which report nothing of their own: captured at the internal functions
/// behind both pairs (found from the code too), each record named by the
/// function it came through.
#[test]
fn openssl_ex_calls_in_a_stripped_static_executable_are_captured_byte_exact() {
    let Some(_one) = capture_test() else { return };
    for started_before_cleartap in [true, false] {
        check_static_executable(Link::Static, true, started_before_cleartap, true);
    }
}

/// OpenSSL 1.1.1 linked in and stripped (its error reports name functions
/// by number): both directions byte-exact, through the plain functions
/// from a process running before cleartap, through the _ex ones from one
/// started after.
#[test]
fn openssl_111_in_a_stripped_static_executable_is_captured_byte_exact() {
    let Some(_one) = capture_test() else { return };
    check_static_executable(Link::Static111, true, true, false);
    check_static_executable(Link::Static111, true, false, true);
}

/// A current OpenSSL (3.5) linked in and stripped: from 3.3 its
/// ssl_write_internal takes `flags` before the count pointer (found from
/// the code as for 3.0), so both directions byte-exact through the plain
/// functions from a process running before cleartap, through the _ex ones
/// from one started after. This is what `gcc -static` links on Debian 13.
#[test]
fn openssl_35_in_a_stripped_static_executable_is_captured_byte_exact() {
    let Some(_one) = capture_test() else { return };
    check_static_executable(Link::Static35, true, true, false);
    check_static_executable(Link::Static35, true, false, true);
}

/// The (major, minor) version of the OpenSSL `link` links in.
fn link_version(link: Link) -> (u32, u32) {
    match link {
        Link::Static | Link::StaticKeylog | Link::Dynamic => libssl_dev_version(),
        Link::Static111 | Link::Static111Keylog => (1, 1),
        Link::Static35 | Link::Static35Keylog => openssl_3x_version(),
    }
}

/// The (major, minor) version of the libssl.a static executables link
/// (see [`system_openssl_version`]).
fn libssl_dev_version() -> (u32, u32) {
    let version = system_openssl_version();
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap());
    (parts.next().unwrap(), parts.next().unwrap())
}

/// OpenSSL's SSL_write and SSL_read, and the internal functions behind
/// them and the _ex ones, found from the code alone: in the stripped static
/// executable, the addresses its unstripped build's symbol table names
/// (Debian's shared libssl.so.3 is checked by the module's unit test).
/// Copies with bytes changed in those functions give the same functions or
/// a refusal, never others (an internal function may be dropped, never
/// changed); cut or foreign files never panic.
#[test]
fn openssl_functions_are_found_from_the_code_alone() {
    use cleartap::discover::openssl_stripped;
    check_functions_found_from_the_code(Link::Static, libssl_dev_version());
    for other in ["/bin/true", "/bin/bash"] {
        assert_eq!(openssl_stripped::find(&fs::read(other).unwrap()[..]).unwrap(), None, "{other}");
    }
}

/// The same with OpenSSL 1.1.1 linked in.
#[test]
fn openssl_111_functions_are_found_from_the_code_alone() {
    check_functions_found_from_the_code(Link::Static111, (1, 1));
}

/// The same with a current OpenSSL (3.5) linked in: the five-argument
/// ssl_write_internal.
#[test]
fn openssl_35_functions_are_found_from_the_code_alone() {
    check_functions_found_from_the_code(Link::Static35, openssl_3x_version());
}

/// The version scripts/build-openssl3 built (`3.5.5`), from the VERSION
/// file it writes (`openssl-src-300.5.5+3.5.5`).
fn openssl_3x_release() -> String {
    let text = fs::read_to_string(format!("{OPENSSL_3X}/VERSION")).unwrap_or_else(|e| panic!("{e}: {HINT}"));
    text.trim().rsplit('+').next().unwrap().to_string()
}

/// Its (major, minor).
fn openssl_3x_version() -> (u32, u32) {
    let release = openssl_3x_release();
    let mut parts = release.split('.').map(|p| p.parse::<u32>().unwrap_or_else(|_| panic!("{release}")));
    (parts.next().unwrap(), parts.next().unwrap())
}

/// The claims client linked as `link` with OpenSSL `(major, minor)`.
fn check_functions_found_from_the_code(link: Link, (major, minor): (u32, u32)) {
    use cleartap::discover::elf::Symbols;
    use cleartap::discover::openssl_stripped::{CountArgument, Internal};
    use cleartap::discover::{mutate, openssl_stripped};
    let names =
        ["SSL_write", "SSL_read", "ssl_write_internal", "ssl_read_internal", "SSL_write_ex", "SSL_read_ex"];
    {
        let (with_symbols, code_only) = (claims_client(link), stripped_claims_client(link));
        let symbols = Symbols::parse(&fs::read(&with_symbols).unwrap()[..], &names).unwrap();
        let symbol =
            |name: &str| symbols.get(name).unwrap_or_else(|| panic!("{name} in {}", with_symbols.display()));
        let bytes = fs::read(&code_only).unwrap();
        let found = openssl_stripped::find(&bytes[..]).unwrap().expect("OpenSSL's ssl_lib.c found");
        for (name, function) in names.iter().zip([found.write, found.read]) {
            let want = symbol(name);
            assert_eq!(function.address, want.address, "{name} in {}", code_only.display());
            assert_eq!(function.file_offset, want.file_offset, "{name} in {}", code_only.display());
        }
        // The internal functions, the argument their count is in (by the
        // version of libssl.a: the 5th for writes from 3.3) and the calls
        // naming their records, each inside the function it names.
        let write_count = if (major, minor) >= (3, 3) { CountArgument::Fifth } else { CountArgument::Fourth };
        let inside = |at: u64, name: &str| {
            let f = symbol(name);
            assert!((f.address..f.address + f.size).contains(&at), "{at:#x} is not in {name} {f:x?}");
        };
        for (internal, name, count, plain, ex) in [
            (&found.write_internal, "ssl_write_internal", write_count, "SSL_write", "SSL_write_ex"),
            (&found.read_internal, "ssl_read_internal", CountArgument::Fourth, "SSL_read", "SSL_read_ex"),
        ] {
            let internal: &Internal = internal.as_ref().unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(internal.address, symbol(name).address, "{name}");
            assert_eq!(internal.file_offset, symbol(name).file_offset, "{name}");
            assert_eq!(internal.count, count, "{name} of OpenSSL {major}.{minor}");
            inside(internal.plain_returns_to, plain);
            // From 3.3 SSL_write_ex goes through SSL_write_ex2.
            if (major, minor) < (3, 3) || name == "ssl_read_internal" {
                inside(internal.ex_returns_to.unwrap_or_else(|| panic!("{ex} not found")), ex);
            }
        }
        let mut copy = bytes.clone();
        let ranges: Vec<(usize, usize)> = [found.write, found.read]
            .iter()
            .map(|f| (f.file_offset as usize, f.size.clamp(1, 1024) as usize))
            .collect();
        let (mut same, mut without_internal, mut refused) = (0, 0, 0);
        mutate::with_changed_bytes(&mut copy, &ranges, 300, |changed| {
            match openssl_stripped::find(changed) {
                Ok(Some(points)) => {
                    let other = || format!("a changed copy of {} gave other functions", code_only.display());
                    assert_eq!((points.write, points.read), (found.write, found.read), "{}", other());
                    // An internal function is the same, or not probed
                    // (its exported function is, as before).
                    for (got, want) in [
                        (&points.write_internal, &found.write_internal),
                        (&points.read_internal, &found.read_internal),
                    ] {
                        assert!(got.is_err() || got == want, "{}: {got:x?}", other());
                    }
                    if points == found {
                        same += 1;
                    } else {
                        without_internal += 1;
                    }
                }
                Ok(None) | Err(_) => refused += 1,
            }
        });
        eprintln!(
            "{}: {same} found the same, {without_internal} the same without an internal function, {refused} refused, \
             of 300 changed copies",
            code_only.display()
        );
        assert!(refused > 0, "no change was ever refused: the test reaches nothing");
        for cut in [0, 64, 4096, bytes.len() / 3, bytes.len() / 2, bytes.len() - 1] {
            let _ = openssl_stripped::find(&bytes[..cut]);
        }
    }
}

/// A static OpenSSL executable cleartap has never seen (a fresh copy made
/// after it started: a new file), run once without waiting for anything:
/// with `--hold-unchecked` it is stopped at its exec until its probes are
/// in, and its first run is captured byte-exact both ways. Its check is
/// slowed by 300 ms (CLEARTAP_TEST_OPEN_DELAY) so that, without the hold,
/// the client would always finish first: the test shows the hold at work.
#[test]
fn a_new_static_openssl_executable_is_captured_whole_on_its_first_run_with_hold() {
    let Some(_one) = capture_test() else { return };
    let built = claims_client(Link::Static);
    let server = TlsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let request = request(&payload(50_000, 12), 200_000);
    let request_file = write_request(dir.path(), &request);
    let fresh_dir = dir.path().join("fresh");
    fs::create_dir(&fresh_dir).unwrap();
    let delay = format!("{}:300", fresh_dir.display());
    let capture = Capture::start_with_env(
        &["tls", "--comm", "claims_client", "--hold-unchecked"],
        &[("CLEARTAP_TEST_OPEN_DELAY", &delay)],
    );
    let fresh = fresh_dir.join("claims_client");
    fs::copy(&built, &fresh).unwrap();
    let client = Client::start_at_once(
        without_terminal(&mut Command::new(&fresh))
            .args(["127.0.0.1", &server.port.to_string()])
            .arg(&request_file),
    );
    let pid = client.pid();
    let Done { response, .. } = client.go();
    let got = capture.stop();
    got.assert_clean_exit();
    let attached = format!("cleartap: attached to {} (openssl", fresh.display());
    assert!(got.stderr.contains(&attached), "{}", got.stderr);
    assert_exchange(&got, &server, |r| r["pid"] == pid, &request, &response);
    assert!(
        got.stderr.contains(
            "cleartap: --hold-unchecked: 1 processes held until their file was checked, 0 of them continued"
        ),
        "{}",
        got.stderr
    );
}

/// What `--hold-unchecked` does to the programs it holds, as their parent
/// sees it (a parent that waits as scripts and services do, without
/// WUNTRACED): nothing. A held program's exit status and output are its
/// own; one whose check takes too long (60 s here, as a hostile file could)
/// is continued after the hold's limit with a warning, and runs to its end
/// while the check is still going on. A program run from an interactive
/// shell (it has a controlling terminal) is not held at all: the shell
/// would report its foreground job stopped.
#[test]
fn held_programs_run_as_if_never_held_and_a_slow_check_does_not_hold_them_long() {
    let Some(_one) = capture_test() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (quick, slow) = (dir.path().join("quick"), dir.path().join("slow"));
    for sub in [&quick, &slow] {
        fs::create_dir(sub).unwrap();
        fs::copy("/bin/dash", sub.join("fresh-sh")).expect("dash (scripts/install-deps --test)");
    }
    let delay = format!("{}:60000", slow.display());
    let mut capture = Capture::start_with_env(
        &["tls", "--comm", "fresh-sh", "--hold-unchecked"],
        &[("CLEARTAP_TEST_OPEN_DELAY", &delay)],
    );
    for sub in [&quick, &slow] {
        let sh = sub.join("fresh-sh");
        let out =
            without_terminal(&mut Command::new(&sh)).args(["-c", "echo from $0; exit 3"]).output().unwrap();
        assert_eq!(out.status.code(), Some(3), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("from {}\n", sh.display()));
    }
    let warned =
        capture.wait_for_stderr("continued after 1000 ms before the check finished", Duration::from_secs(10));
    assert!(warned, "{}", capture.stderr_so_far());
    // Under script(1), which gives the interactive shell a terminal.
    let interactive = dir.path().join("interactive");
    fs::create_dir(&interactive).unwrap();
    fs::copy("/bin/dash", interactive.join("fresh-sh")).unwrap();
    let line = format!("{}/fresh-sh -c 'exit 0'; echo rc=$?", interactive.display());
    let out = Command::new("script")
        .args(["-qec", &format!("bash --norc -i -c \"{line}\""), "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .expect("script(1) (bsdutils)");
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && shown.contains("rc=0") && !shown.contains("Stopped"), "{out:?}");
    let got = capture.stop();
    got.assert_clean_exit();
    assert!(got.stderr.contains("cleartap: --hold-unchecked: 2 processes held until their file was checked, 1 of them continued before"), "{}", got.stderr);
}

/// A static executable that links OpenSSL's version string in (by showing
/// it) gets its secrets read too: they equal its own key log, and the
/// pcapng decrypts with nothing but the file.
#[test]
fn openssl_in_a_static_executable_gives_its_secrets_to_the_key_log_and_pcapng() {
    let Some(_one) = capture_test() else { return };
    check_static_secrets(claims_client(Link::StaticKeylog), &system_openssl_version());
}

/// The same, stripped: its SSL_write and SSL_read found from its code, its
/// secrets read by the version string the linker kept.
#[test]
fn openssl_in_a_stripped_static_executable_gives_its_secrets_to_the_key_log_and_pcapng() {
    let Some(_one) = capture_test() else { return };
    check_static_secrets(stripped_claims_client(Link::StaticKeylog), &system_openssl_version());
}

/// The same with OpenSSL 1.1.1 (its own struct layouts) linked in.
#[test]
fn openssl_111_in_a_stripped_static_executable_gives_its_secrets_to_the_key_log_and_pcapng() {
    let Some(_one) = capture_test() else { return };
    check_static_secrets(stripped_claims_client(Link::Static111Keylog), "1.1.1w");
}

/// The same with a current OpenSSL (3.5) linked in: its layouts are among
/// the generated ones, and its version string names it.
#[test]
fn openssl_35_in_a_stripped_static_executable_gives_its_secrets_to_the_key_log_and_pcapng() {
    let Some(_one) = capture_test() else { return };
    check_static_secrets(stripped_claims_client(Link::Static35Keylog), &openssl_3x_release());
}

/// libssl-dev's version, as libssl.a's: its `openssl` command's.
fn system_openssl_version() -> String {
    let version = run(Command::new("openssl").arg("version"), b"");
    String::from_utf8(version.stdout).unwrap().split(' ').nth(1).unwrap().to_string()
}

/// `version`: the OpenSSL linked into `binary`, as cleartap must name it.
fn check_static_secrets(binary: PathBuf, version: &str) {
    let _tshark = tool("tshark");
    let path = binary.to_str().unwrap();
    let server = TlsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let request = request(&payload(5000, 51), 3000);
    let request_file = write_request(dir.path(), &request);
    let own = dir.path().join("own-keys.log");
    let client = Client::start(
        Command::new(&binary)
            .args(["127.0.0.1", &server.port.to_string()])
            .arg(&request_file)
            .env("SSLKEYLOGFILE", &own),
    );
    let pid = client.pid();
    let (keys, pcap) = (dir.path().join("keys.log"), dir.path().join("capture.pcapng"));
    let filter = format!("tcp port {}", server.port);
    let mut args = vec!["tls", "--format", "json", "--comm", "claims_client"];
    args.extend(["--keylog", keys.to_str().unwrap(), "-w", pcap.to_str().unwrap(), "-i", "lo"]);
    args.extend(filter.split(' '));
    let mut capture = Cleartap::start(&args);
    capture.wait_attached(path);
    let Done { response, .. } = client.go();
    let got = capture.stop_json();
    got.assert_clean_exit();
    assert!(
        got.stderr.contains(&format!("cleartap: attached to {path} (openssl {version}:")),
        "{}",
        got.stderr
    );
    assert_exchange(&got, &server, |r| r["pid"] == pid, &request, &response);

    let own: BTreeSet<String> = fs::read_to_string(&own).unwrap().lines().map(String::from).collect();
    assert!(!own.is_empty(), "the client wrote no key log");
    let captured = fs::read_to_string(&keys).unwrap();
    let lines: Vec<&str> = captured.lines().collect();
    assert_eq!(lines.iter().map(|l| l.to_string()).collect::<BTreeSet<_>>(), own);
    assert_eq!(lines.len(), own.len(), "a secret written twice");
    let fields = ["http.request.uri", "http.content_length"];
    assert_eq!(tshark(&pcap, &[], "http", &fields), "/3000\t5000\n\t3000\n");
    assert_eq!(tshark(&without_secrets(&pcap), &[], "http", &fields), "", "decrypts without its secrets");
}

// ---------------------------------------------------------------------------
// 2. --uid

/// curl POSTing `body` as `uid` (setpriv), asking for `response_size`
/// bytes; returns the response body.
fn curl_as(uid: u32, server: &TlsServer, body: &[u8], response_size: usize) -> Vec<u8> {
    let uid = uid.to_string();
    let out = run(
        Command::new(tool("setpriv"))
            .args(["--reuid", &uid, "--regid", &uid, "--clear-groups"])
            .arg(tool("curl"))
            .args(["-sS", "-k", "--http1.1", "--data-binary", "@-"])
            .args(["-H", "Content-Type: application/octet-stream", "-H", "Expect:"])
            .arg(server.url(response_size)),
        body,
    );
    out.stdout
}

#[test]
fn uid_filter_keeps_only_that_users_records_byte_exact() {
    let Some(_one) = capture_test() else { return };
    let (chosen, other) = (31_001u32, 31_002u32);
    let server = TlsServer::start(); // uid 0, captured too without the filter
    let capture = Cleartap::start(&["tls", "--format", "json", "--uid", &chosen.to_string()]);
    let (chosen_body, other_body) = (payload(30_000, 21), payload(30_000, 22));
    let chosen_response = curl_as(chosen, &server, &chosen_body, 70_000);
    let other_response = curl_as(other, &server, &other_body, 70_000);
    curl(&server, b"root's curl", 10);
    let got = capture.stop_json();
    got.assert_clean_exit();
    assert_eq!(chosen_response.len(), 70_000);
    assert_eq!(other_response.len(), 70_000);

    let ports = server.peer_ports();
    assert_eq!(ports.len(), 3, "{ports:?}");
    let port_sending = |body: &[u8]| {
        let found = ports.iter().copied().filter(|p| server.received_from(*p).ends_with(body));
        let found: Vec<u16> = found.collect();
        assert_eq!(found.len(), 1, "{found:?}");
        found[0]
    };
    let chosen_port = port_sending(&chosen_body);
    assert!(got.tls().next().is_some(), "no TLS records");
    for r in got.tls() {
        assert_eq!(r["uid"], chosen, "{r}");
        assert_eq!(r["comm"], "curl", "{r}");
        assert_eq!(port_of(&r["local"]), Some(chosen_port), "{r}");
    }
    for r in &got.records {
        assert!(r["uid"].is_null() || r["uid"] == chosen, "{r}");
    }
    assert_same_bytes(&got.stream("send", |_| true), &server.received_from(chosen_port), "send stream");
    assert_same_bytes(&got.stream("recv", |_| true), &server.sent_to(chosen_port), "recv stream");
    assert!(server.sent_to(chosen_port).ends_with(&chosen_response));
}

// ---------------------------------------------------------------------------
// 3. Live --format text and --hex

/// A body with what the text output must escape: an escape sequence,
/// a tab (kept), a backslash, NUL, invalid UTF-8, a C1 control (U+009B),
/// CR LF, and UTF-8 shown as it is.
const TRICKY_BODY: &[u8] =
    b"caf\xc3\xa9 \x1b[31mred\x1b[0m\ttab \\ back\x00nul \xff\xfe \xc2\x9b csi\r\nline 2\n";

/// TRICKY_BODY as the text output shows it, written out by hand.
const TRICKY_BODY_TEXT: &str =
    "caf\u{e9} \\x1b[31mred\\x1b[0m\ttab \\\\ back\\x00nul \\xff\\xfe \\u{9b} csi\\r\nline 2\n";

/// The test server's whole answer to `POST /0`.
const EMPTY_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";

/// `data` as `--hex` shows it: offset, sixteen bytes, their printable
/// ASCII (docs/capture.md's and hexdump -C's layout).
fn hex_rows(data: &[u8]) -> String {
    let mut s = String::new();
    for (row, chunk) in data.chunks(16).enumerate() {
        s += &format!("{:08x} ", row * 16);
        for i in 0..16 {
            s += &chunk.get(i).map_or("   ".to_string(), |b| format!(" {b:02x}"));
        }
        let ascii: String =
            chunk.iter().map(|&b| if (0x20..0x7f).contains(&b) { b as char } else { '.' }).collect();
        s += &format!("  |{ascii}|\n");
    }
    s
}

/// The text capture of one claims_client exchange (request with
/// TRICKY_BODY, empty response); each header line's timestamp is checked
/// to fall within the run and replaced by `TIME`. Returns the output, the
/// client's pid and local port, and the server's port.
fn text_capture(extra: &[&str]) -> (String, Headers) {
    let binary = claims_client(Link::Dynamic);
    let server = TlsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let request = request(TRICKY_BODY, 0);
    let request_file = write_request(dir.path(), &request);
    let client =
        Client::start(Command::new(&binary).args(["127.0.0.1", &server.port.to_string()]).arg(&request_file));
    let pid = client.pid();
    let before = SystemTime::now();
    let mut args = vec!["tls", "--format", "text", "--decode", "raw"];
    args.extend_from_slice(extra);
    let pid_arg = pid.to_string();
    args.extend(["--pid", &pid_arg]);
    let capture = Cleartap::start(&args);
    let Done { response, fd } = client.go();
    let stopped = capture.stop();
    let after = SystemTime::now();
    stopped.assert_clean_exit();
    assert_eq!(response, EMPTY_RESPONSE);
    let peer = single_peer(&server);
    assert_eq!(server.received_from(peer), request);
    let text = String::from_utf8(stopped.stdout).expect("the text output is UTF-8");
    let mut normalised = String::new();
    for line in text.split_inclusive('\n') {
        let stamp = line.split(' ').next().unwrap();
        match humantime::parse_rfc3339(stamp) {
            Ok(t) if line.contains(&format!(" claims_client[{pid}/")) => {
                assert!(before <= t && t <= after, "{stamp} is not within the run");
                assert_eq!(stamp.len(), "2026-01-01T00:00:00.000000Z".len(), "{stamp}: not microseconds");
                normalised += "TIME";
                normalised += &line[stamp.len()..];
            }
            _ => normalised += line,
        }
    }
    (normalised, Headers { pid, fd, local: peer, remote: server.port })
}

/// What the header lines of the exchange show besides the time.
struct Headers {
    pid: u32,
    fd: u32,
    local: u16,
    remote: u16,
}

/// The two header lines of the exchange, as docs/capture.md's layout has them.
fn text_headers(h: &Headers, sent: usize, received: usize) -> (String, String) {
    // One process, one thread (tid = pid), root.
    let Headers { pid, fd, local, remote } = h;
    let send = format!(
        "TIME claims_client[{pid}/{pid}] uid=0 openssl SSL_write send fd={fd} 127.0.0.1:{local} -> 127.0.0.1:{remote} len={sent}\n"
    );
    let recv = format!(
        "TIME claims_client[{pid}/{pid}] uid=0 openssl SSL_read recv fd={fd} 127.0.0.1:{local} <- 127.0.0.1:{remote} len={received}\n"
    );
    (send, recv)
}

#[test]
fn text_format_shows_a_known_exchange_exactly() {
    let Some(_one) = capture_test() else { return };
    let (text, headers) = text_capture(&[]);
    let request_len = request(TRICKY_BODY, 0).len();
    let (send, recv) = text_headers(&headers, request_len, EMPTY_RESPONSE.len());
    let want = format!(
        "{send}POST /0 HTTP/1.1\\r\nHost: claims\\r\nConnection: close\\r\nContent-Length: {}\\r\n\\r\n{TRICKY_BODY_TEXT}\
         {recv}HTTP/1.1 200 OK\\r\nContent-Length: 0\\r\n\\r\n",
        TRICKY_BODY.len()
    );
    assert_eq!(text, want);
}

#[test]
fn hex_format_shows_a_known_exchange_exactly() {
    let Some(_one) = capture_test() else { return };
    let (text, headers) = text_capture(&["--hex"]);
    let request = request(TRICKY_BODY, 0);
    let (send, recv) = text_headers(&headers, request.len(), EMPTY_RESPONSE.len());
    // The response's dump, written out by hand; the request's from hex_rows.
    let response_rows = "\
00000000  48 54 54 50 2f 31 2e 31 20 32 30 30 20 4f 4b 0d  |HTTP/1.1 200 OK.|
00000010  0a 43 6f 6e 74 65 6e 74 2d 4c 65 6e 67 74 68 3a  |.Content-Length:|
00000020  20 30 0d 0a 0d 0a                                | 0....|
";
    assert_eq!(hex_rows(EMPTY_RESPONSE), response_rows);
    let want = format!("{send}{}{recv}{response_rows}", hex_rows(&request));
    assert_eq!(text, want);
}

// ---------------------------------------------------------------------------
// 4. A library inside a container's root

/// A root directory holding claims_client, its own copies of every
/// library `ldd` lists for it (libssl and libcrypto among them, each a
/// new file: not the host's inode), and the request.
fn container_root(request: &[u8]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let client = claims_client(Link::Dynamic);
    fs::copy(&client, root.join("claims_client")).unwrap();
    let ldd = run(Command::new(tool("ldd")).arg(&client), b"");
    let ldd = String::from_utf8(ldd.stdout).unwrap();
    let mut copied = Vec::new();
    for line in ldd.lines() {
        // "libssl.so.3 => /lib/x86_64-linux-gnu/libssl.so.3 (0x...)" or
        // "/lib64/ld-linux-x86-64.so.2 (0x...)"; the vDSO has no file.
        let path = line.split("=> ").nth(1).unwrap_or(line.trim()).split(" (").next().unwrap();
        if !path.starts_with('/') {
            continue;
        }
        let inside = root.join(path.trim_start_matches('/'));
        fs::create_dir_all(inside.parent().unwrap()).unwrap();
        fs::copy(path, &inside).unwrap_or_else(|e| panic!("copying {path}: {e}"));
        copied.push(path.to_string());
    }
    for lib in ["libssl.so.3", "libcrypto.so.3", "libc.so.6"] {
        assert!(copied.iter().any(|p| p.ends_with(lib)), "ldd listed no {lib}: {ldd}");
    }
    fs::write(root.join("request"), request).unwrap();
    dir
}

/// claims_client inside `root`, as a container runs it: in its own mount
/// and PID namespaces, with `root` (bind-mounted on itself, so a mount of
/// its own) made its root by pivot_root, as runc does. Its files are
/// named from that root in /proc/PID/maps, even as the host reads them.
fn container_client(root: &Path, port: u16) -> (Client, u32) {
    fs::create_dir_all(root.join("old-root")).unwrap();
    let script = r#"mount --bind "$0" "$0" && cd "$0" && pivot_root . old-root && exec /claims_client 127.0.0.1 "$1" /request"#;
    let (_, _) = (tool("mount"), tool("pivot_root"));
    let client = Client::start(
        Command::new(tool("unshare"))
            .args(["--mount", "--pid", "--fork", "--kill-child", "sh", "-c", script])
            .arg(root)
            .arg(port.to_string()),
    );
    // unshare forked it: its one child, claims_client by now (it printed).
    let unshare = client.pid();
    let children = fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children")).unwrap();
    let pid: u32 = children.trim().parse().unwrap_or_else(|_| panic!("unshare's children: {children:?}"));
    assert_eq!(fs::read_to_string(format!("/proc/{pid}/comm")).unwrap(), "claims_client\n");
    (client, pid)
}

/// The inode `pid` maps `name` from (by the end of its path).
fn mapped_inode(pid: u32, name: &str) -> (String, u64) {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let line =
        maps.lines().find(|l| l.ends_with(name)).unwrap_or_else(|| panic!("{name} not mapped: {maps}"));
    let fields: Vec<&str> = line.split_whitespace().collect();
    (fields[5].to_string(), fields[4].parse().unwrap())
}

fn check_container(started_before_cleartap: bool) {
    use std::os::unix::fs::MetadataExt;
    let server = TlsServer::start();
    let body = payload(40_000, 31);
    let request = request(&body, 120_000);
    let root = container_root(&request);
    let libssl_copy = root.path().join("lib/x86_64-linux-gnu/libssl.so.3");
    let host_libssl = fs::metadata("/lib/x86_64-linux-gnu/libssl.so.3").unwrap().ino();
    let args = ["tls", "--format", "json", "--comm", "claims_client"];
    let (client, pid, capture) = if started_before_cleartap {
        let (client, pid) = container_client(root.path(), server.port);
        (client, pid, Cleartap::start(&args))
    } else {
        let capture = Cleartap::start(&args);
        let (client, pid) = container_client(root.path(), server.port);
        (client, pid, capture)
    };
    let mut capture = capture;
    // It maps its own copy, named as the container sees it.
    let (mapped_path, inode) = mapped_inode(pid, "/libssl.so.3");
    assert_eq!(mapped_path, "/lib/x86_64-linux-gnu/libssl.so.3");
    assert_eq!(inode, fs::metadata(&libssl_copy).unwrap().ino());
    assert_ne!(inode, host_libssl);
    // The copy, through /proc/PID/root: the host has no file under that
    // name with that inode.
    capture.wait_attached("/lib/x86_64-linux-gnu/libssl.so.3");
    let Done { response, fd } = client.go();
    let got = capture.stop_json();
    got.assert_clean_exit();
    assert_eq!(response.len(), "HTTP/1.1 200 OK\r\nContent-Length: 120000\r\n\r\n".len() + 120_000);
    assert_exchange(&got, &server, |r| r["pid"] == pid, &request, &response);
    assert!(got.tls().next().is_some());
    for r in got.tls() {
        assert_eq!(r["pid"], pid, "{r}");
        assert_eq!(r["library"], "openssl", "{r}");
        assert_eq!(r["library_path"], "/lib/x86_64-linux-gnu/libssl.so.3", "{r}");
        assert_eq!(r["fd"], fd, "{r}");
    }
}

#[test]
fn library_copy_in_a_container_running_before_cleartap_or_started_later_is_captured_byte_exact() {
    let Some(_one) = capture_test() else { return };
    for started_before_cleartap in [true, false] {
        check_container(started_before_cleartap);
    }
}

// ---------------------------------------------------------------------------
// 5. -w on a non-loopback interface

const NETNS: &str = "ctclaims";
const VETH_HOST: &str = "ctclaims0";
const VETH_PEER: &str = "ctclaims1";
const HOST_ADDR: &str = "10.213.77.1";
const PEER_ADDR: &str = "10.213.77.2";

fn ip(args: &[&str]) -> std::process::Output {
    Command::new(tool("ip")).args(args).output().expect("running ip")
}

#[track_caller]
fn ip_ok(args: &[&str]) {
    let out = ip(args);
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// A network namespace reached through a veth pair: VETH_HOST (HOST_ADDR)
/// here, VETH_PEER (PEER_ADDR) inside. Removed when dropped, whatever
/// happened; a leftover of an interrupted run is removed first.
struct VethNamespace;

impl VethNamespace {
    fn create() -> VethNamespace {
        Self::remove();
        let namespace = VethNamespace;
        ip_ok(&["netns", "add", NETNS]);
        ip_ok(&["link", "add", VETH_HOST, "type", "veth", "peer", "name", VETH_PEER]);
        ip_ok(&["link", "set", VETH_PEER, "netns", NETNS]);
        ip_ok(&["addr", "add", &format!("{HOST_ADDR}/24"), "dev", VETH_HOST]);
        ip_ok(&["link", "set", VETH_HOST, "up"]);
        ip_ok(&["-n", NETNS, "addr", "add", &format!("{PEER_ADDR}/24"), "dev", VETH_PEER]);
        ip_ok(&["-n", NETNS, "link", "set", VETH_PEER, "up"]);
        ip_ok(&["-n", NETNS, "link", "set", "lo", "up"]);
        namespace
    }

    fn remove() {
        // Deleting either end deletes the pair; the namespace goes last.
        let _ = ip(&["link", "del", VETH_HOST]);
        let _ = ip(&["netns", "del", NETNS]);
    }
}

impl Drop for VethNamespace {
    fn drop(&mut self) {
        Self::remove();
    }
}

/// tls_server.py inside NETNS, on PEER_ADDR.
struct NamespacedServer {
    child: Child,
    port: u16,
    truth: tempfile::TempDir,
    _cert: Certificate,
}

impl NamespacedServer {
    fn start() -> NamespacedServer {
        let cert = Certificate::new();
        let truth = tempfile::tempdir().unwrap();
        let (child, port) = spawn_listening(
            Command::new(tool("ip"))
                .args(["netns", "exec", NETNS, "python3"])
                .arg(support_dir().join("tls_server_on.py"))
                .arg(PEER_ADDR)
                .arg(cert.cert())
                .arg(cert.key())
                .arg(truth.path()),
        );
        NamespacedServer { child, port, truth, _cert: cert }
    }

    fn file(&self, peer_port: u16, kind: &str) -> Vec<u8> {
        fs::read(self.truth.path().join(format!("{peer_port}.{kind}"))).unwrap()
    }

    fn peer_ports(&self) -> Vec<u16> {
        let names = fs::read_dir(self.truth.path()).unwrap().flatten();
        let names = names.map(|e| e.file_name().into_string().unwrap());
        let mut ports: Vec<u16> = names.filter_map(|n| n.strip_suffix(".peer")?.parse().ok()).collect();
        ports.sort();
        ports
    }
}

impl Drop for NamespacedServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// tshark's fields of every frame in `pcap` that `filter` keeps.
fn tshark(pcap: &Path, options: &[&str], filter: &str, fields: &[&str]) -> String {
    let mut cmd = Command::new(tool("tshark"));
    cmd.arg("-r").arg(pcap).args(options).args(["-Y", filter, "-T", "fields"]);
    for f in fields {
        cmd.args(["-e", f]);
    }
    let out = cmd.output().expect("running tshark");
    assert!(out.status.success(), "tshark failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The pcapng with its Decryption Secrets Blocks removed.
fn without_secrets(pcap: &Path) -> PathBuf {
    let stripped = pcap.with_extension("stripped.pcapng");
    let out =
        Command::new(tool("editcap")).arg("--discard-all-secrets").arg(pcap).arg(&stripped).output().unwrap();
    assert!(out.status.success(), "editcap: {}", String::from_utf8_lossy(&out.stderr));
    stripped
}

#[test]
fn a_veth_into_a_network_namespace_is_captured_and_decrypts() {
    let Some(_one) = capture_test() else { return };
    let _tshark = tool("tshark");
    let _namespace = VethNamespace::create();
    let server = NamespacedServer::start();
    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("veth.pcapng");
    let filter = format!("tcp port {}", server.port);
    let mut args =
        vec!["tls", "--format", "json", "--comm", "curl", "-w", pcap.to_str().unwrap(), "-i", VETH_HOST];
    args.extend(filter.split(' '));
    let capture = Cleartap::start(&args);
    let url = |size: usize| format!("https://{PEER_ADDR}:{}/{size}", server.port);
    let get = run(Command::new(tool("curl")).args(["-sS", "-k", "--http1.1", &url(1234)]), b"");
    assert_eq!(get.stdout.len(), 1234);
    let body = payload(500, 41);
    let post = run(
        Command::new(tool("curl")).args([
            "-sS",
            "-k",
            "--http1.1",
            "--data-binary",
            "@-",
            "-H",
            "Expect:",
            &url(2345),
        ]),
        &body,
    );
    assert_eq!(post.stdout.len(), 2345);
    let got = capture.stop_json();
    got.assert_clean_exit();

    // The pcapng alone decrypts both exchanges, each message once.
    let fields = ["http.request.uri", "http.content_length"];
    assert_eq!(tshark(&pcap, &[], "http", &fields), "/1234\t\n\t1234\n/2345\t500\n\t2345\n");
    assert_eq!(tshark(&without_secrets(&pcap), &[], "http", &fields), "", "decrypts without its secrets");
    // Every frame is of the veth, between its two addresses, in both
    // directions, none twice.
    let frames = tshark(&pcap, &[], "", &["frame.interface_name", "ip.src", "ip.dst"]);
    let kinds: BTreeSet<&str> = frames.lines().collect();
    let want: BTreeSet<String> = [(HOST_ADDR, PEER_ADDR), (PEER_ADDR, HOST_ADDR)]
        .iter()
        .map(|(src, dst)| format!("{VETH_HOST}\t{src}\t{dst}"))
        .collect();
    assert_eq!(kinds, want.iter().map(String::as_str).collect(), "{frames}");
    let again = "tcp.analysis.retransmission or tcp.analysis.duplicate_ack or tcp.analysis.out_of_order";
    assert_eq!(tshark(&pcap, &[], again, &["frame.number"]), "", "a packet written twice");
    let comments = tshark(&pcap, &[], "ip.src == 10.213.77.1 and tcp.len > 0", &["frame.comment"]);
    assert!(!comments.is_empty() && comments.lines().all(|c| c.contains(" comm=curl uid=0")), "{comments}");

    // And the plaintext of both curls, byte-exact, from the same run.
    let ports = server.peer_ports();
    assert_eq!(ports.len(), 2, "{ports:?}");
    for port in ports {
        let mine = |r: &Value| port_of(&r["local"]) == Some(port);
        assert_same_bytes(&got.stream("send", mine), &server.file(port, "recv"), "curl send");
        assert_same_bytes(&got.stream("recv", mine), &server.file(port, "sent"), "curl recv");
        for r in got.tls().filter(|r| mine(r)) {
            assert_eq!(r["local"], format!("{HOST_ADDR}:{port}"), "{r}");
            assert_eq!(r["remote"], format!("{PEER_ADDR}:{}", server.port), "{r}");
        }
    }
}

// ---------------------------------------------------------------------------
// 6. Go's secrets in a pcapng

#[test]
fn go_secrets_in_the_pcapng_let_tshark_decrypt_it() {
    let Some(_one) = capture_test() else { return };
    let _tshark = tool("tshark");
    let binary = tlspeer(CURRENT_GO, Build::Plain);
    let cert = Certificate::new();
    let truth = tempfile::tempdir().unwrap();
    let server_keys = truth.path().join("server-keys");
    let mut server = Command::new(&binary)
        .arg("server")
        .arg(cert.cert())
        .arg(cert.key())
        .arg(truth.path())
        .arg(&server_keys)
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting the Go server");
    // Killed on every way out.
    struct Kill<'a>(&'a mut Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let server = Kill(&mut server);
    let mut line = String::new();
    BufReader::new(server.0.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let port: u16 = line.trim().strip_prefix("port ").and_then(|p| p.parse().ok()).expect("port line");

    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("go.pcapng");
    let keylog = dir.path().join("keys.log");
    let filter = format!("tcp port {port}");
    let mut args = vec!["tls", "--format", "json", "--library", "go", "--keylog", keylog.to_str().unwrap()];
    args.extend(["-w", pcap.to_str().unwrap(), "-i", "lo"]);
    args.extend(filter.split(' '));
    let capture = Cleartap::start(&args);
    let client_truth = tempfile::tempdir().unwrap();
    let client_keys = client_truth.path().join("keys");
    // Two POSTs of 100 bytes, one connection.
    let out = run(
        Command::new(&binary)
            .args(["client", &format!("https://127.0.0.1:{port}/echo"), "2", "100", "1"])
            .arg(client_truth.path())
            .arg(&client_keys),
        b"",
    );
    assert!(String::from_utf8_lossy(&out.stdout).ends_with("ok 2\n"));
    let got = capture.stop_json();
    got.assert_clean_exit();
    drop(server);

    // The echo: "100 <sha256 hex>\n" and the body, 169 bytes.
    let fields = ["http.request.uri", "http.content_length"];
    let want = "/echo\t100\n\t169\n/echo\t100\n\t169\n";
    assert_eq!(tshark(&pcap, &[], "http", &fields), want);
    let stripped = without_secrets(&pcap);
    assert_eq!(tshark(&stripped, &[], "http", &fields), "", "decrypts without its secrets");
    // The secrets are Go's own, both ends', each once; the key log
    // alone decrypts the stripped capture too.
    let own: BTreeSet<String> = [&client_keys, &server_keys]
        .iter()
        .flat_map(|p| fs::read_to_string(p).unwrap().lines().map(String::from).collect::<Vec<_>>())
        .collect();
    assert!(!own.is_empty());
    let captured = fs::read_to_string(&keylog).unwrap();
    let lines: Vec<&str> = captured.lines().collect();
    assert_eq!(lines.iter().map(|l| l.to_string()).collect::<BTreeSet<_>>(), own);
    assert_eq!(lines.len(), own.len(), "a secret written twice");
    let option = format!("tls.keylog_file:{}", keylog.display());
    assert_eq!(tshark(&stripped, &["-o", &option], "http", &fields), want);
    // And the plaintext, byte-exact, of both ends' every connection.
    let mut connections = 0;
    for truth in [client_truth.path(), truth.path()] {
        for entry in fs::read_dir(truth).unwrap().flatten() {
            let name = entry.file_name().into_string().unwrap();
            let Some(ports) = name.strip_suffix(".sent") else { continue };
            let (local, remote) = ports.split_once('-').unwrap();
            let (local, remote): (u16, u16) = (local.parse().unwrap(), remote.parse().unwrap());
            let ours =
                |r: &Value| port_of(&r["local"]) == Some(local) && port_of(&r["remote"]) == Some(remote);
            for (direction, suffix) in [("send", "sent"), ("recv", "recv")] {
                let want = fs::read(truth.join(format!("{ports}.{suffix}"))).unwrap();
                assert_same_bytes(&got.stream(direction, ours), &want, &format!("{direction} on {ports}"));
            }
            connections += 1;
        }
    }
    assert_eq!(connections, 2, "one connection, seen from both ends");
}
