//! Faults around a running capture: the disk fills up, the kernel refuses
//! memory for the maps, a library is replaced under running processes.
//! Each ends in a clear message and exact counts, or in capture going on.

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

fn cleartap() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cleartap"))
}

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "mounting a tmpfs");
        SmallDisk { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// The number in "... N records were written whole ..." of cleartap's
/// error message.
fn records_written_whole(stderr: &str) -> usize {
    let at = stderr.find(" records were written whole").unwrap_or_else(|| panic!("no count: {stderr}"));
    stderr[..at].rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn a_full_disk_stops_the_capture_with_whole_records_and_a_count() {
    let Some(_one) = capture_test() else { return };
    let disk = SmallDisk::mount("256k");
    let out_path = disk.path().join("records.jsonl");
    let mut child = cleartap()
        .args(["tls", "--format", "json", "--comm", "curl", "--decode", "raw"])
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while line.trim() != "ready" {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "cleartap exited before ready");
    }
    let server = TlsServer::start();
    // 2 MiB of response: about 2.7 MiB of base64 for a 256 KiB disk.
    curl(&server, b"fill the disk", 2 << 20);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "cleartap did not stop on a full disk");
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert_eq!(status.code(), Some(1), "{rest}");
    assert!(rest.contains("No space left on device"), "{rest}");
    let written = std::fs::read_to_string(&out_path).unwrap();
    assert!(written.is_empty() || written.ends_with('\n'), "the file ends in half a record");
    for l in written.lines() {
        let record: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:.80}"));
        assert_eq!(record["comm"], "curl");
    }
    assert_eq!(written.lines().count(), records_written_whole(&rest), "{rest}");
}

/// A memory cgroup limited to `limit`, removed on drop; v1 (hybrid hosts,
/// like ours) or v2.
struct MemoryCgroup {
    dir: std::path::PathBuf,
}

impl MemoryCgroup {
    fn new(limit: &str) -> MemoryCgroup {
        let name = format!("cleartap-test-{}", std::process::id());
        let v1 = Path::new("/sys/fs/cgroup/memory");
        let (dir, limit_file) = if v1.join("memory.limit_in_bytes").exists() {
            (v1.join(name), "memory.limit_in_bytes")
        } else {
            std::fs::write("/sys/fs/cgroup/cgroup.subtree_control", "+memory").unwrap();
            (Path::new("/sys/fs/cgroup").join(name), "memory.max")
        };
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join(limit_file), limit).unwrap();
        MemoryCgroup { dir }
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

#[test]
fn no_memory_for_the_maps_is_a_clear_error_naming_what_to_lower() {
    let Some(_one) = capture_test() else { return };
    let cgroup = MemoryCgroup::new("40M");
    let procs = cgroup.dir.join("cgroup.procs");
    // The shell moves itself into the cgroup, then becomes cleartap.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("echo $$ > {} && exec \"$0\" tls --ringbuf-size 256M --pid 1", procs.display()))
        .arg(env!("CARGO_BIN_EXE_cleartap"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("the kernel refused memory for cleartap's BPF maps"), "{stderr}");
    assert!(stderr.contains("lower --ringbuf-size"), "{stderr}");
    assert!(!stderr.contains("Linux 5.10 and newer"), "blamed the kernel version: {stderr}");
}

#[test]
fn a_library_replaced_under_running_processes_is_attached_again() {
    let Some(_one) = capture_test() else { return };
    let server = TlsServer::start();
    let private = PrivateLibssl::new();
    let (dir, library, env) = (&private.dir, &private.path, private.env());

    let mut capture = Capture::start(&["tls", "--decode", "raw"]);
    // A process that keeps the old file mapped across the upgrade. Each
    // file is attached when a process first opens it; a process that
    // finished its exchange within the few ms that takes would be missed
    // (see docs/capture.md), so this test waits for each attachment: it is
    // about the upgrade, not that race.
    let attached = format!("attached to {} ", library.display());
    let mut old_client = TlsClient::connect_with_env(&server, &env);
    assert!(capture.wait_for_stderr(&attached, Duration::from_secs(10)), "{}", capture.stderr_so_far());
    curl_with_env(&server, b"before the upgrade", 100, &env);
    // What a package upgrade does: a new file renamed over the old name.
    let staged = dir.path().join("libssl.so.3.dpkg-new");
    std::fs::copy(library, &staged).unwrap();
    std::fs::rename(&staged, library).unwrap();
    let mut new_client = TlsClient::connect_with_env(&server, &env);
    let new_attached = capture.wait_for_stderr(&attached, Duration::from_secs(10));
    assert!(new_attached, "the new file was not attached: {}", capture.stderr_so_far());
    new_client.exchange(2000, 1000);
    curl_with_env(&server, b"after the upgrade", 100, &env);
    old_client.exchange(3000, 4000);
    let old_pid = old_client.pid();
    let old_port = old_client.local_port;
    // The last process mapping the old file exits: its probes go, the new
    // file's stay.
    drop(old_client);
    let detached = format!("detached from {}: ", library.display());
    assert!(capture.wait_for_stderr(&detached, Duration::from_secs(30)), "old file not detached");
    curl_with_env(&server, b"after the detach", 100, &env);
    let got = capture.stop();
    got.assert_clean_exit();

    assert_eq!(got.stderr.matches(&attached).count(), 2, "old and new file: {}", got.stderr);
    let sent = got.stream("send", |r| r["comm"] == "curl");
    for marker in ["before the upgrade", "after the upgrade", "after the detach"] {
        assert!(sent.windows(marker.len()).any(|w| w == marker.as_bytes()), "{marker} missing");
    }
    let old = |r: &serde_json::Value| r["pid"] == old_pid;
    assert_same_bytes(&got.stream("send", old), &server.received_from(old_port), "old mapping");
    let new = |r: &serde_json::Value| r["pid"] == new_client.pid();
    assert_same_bytes(&got.stream("recv", new), &server.sent_to(new_client.local_port), "new mapping");
    assert_eq!(got.stderr.matches("detached from").count(), 1, "{}", got.stderr);
}

/// A library that takes long to open and parse (held 60 s here by
/// CLEARTAP_TEST_OPEN_DELAY, as a huge hostile file would) holds the
/// discovery thread only: the ring buffer is still drained, so an exchange
/// through a library already probed is captured whole meanwhile, and a stop
/// does not wait for the parse.
#[test]
fn a_library_slow_to_parse_does_not_stall_the_capture_or_its_stop() {
    let Some(_one) = capture_test() else { return };
    let server = TlsServer::start();
    let private = PrivateLibssl::new();
    let (dir, library) = (&private.dir, &private.path);
    let delay = format!("{}:60000", dir.path().display());
    let mut capture =
        Capture::start_with_env(&["tls", "--decode", "raw"], &[("CLEARTAP_TEST_OPEN_DELAY", &delay)]);
    let _loader = Holder::mapping(library.to_str().unwrap());
    let waiting = format!("test: waiting 60000 ms before opening {}", library.display());
    assert!(capture.wait_for_stderr(&waiting, Duration::from_secs(30)), "{}", capture.stderr_so_far());
    // curl with the host's libssl, probed at start.
    curl(&server, b"while a parse is held", 100_000);
    let got = capture.stop();
    got.assert_clean_exit();
    // Stopped before the held parse ended: the stop did not wait for it.
    assert!(!got.stderr.contains(&format!("attached to {}", library.display())), "{}", got.stderr);
    let port = single_peer(&server);
    let curl = |r: &serde_json::Value| r["comm"] == "curl";
    assert_same_bytes(&got.stream("send", curl), &server.received_from(port), "curl send stream");
    assert_same_bytes(&got.stream("recv", curl), &server.sent_to(port), "curl recv stream");
}

/// An executable swapped for another file after cleartap found it and
/// before it opened it (the window widened by CLEARTAP_TEST_OPEN_DELAY).
/// While its process runs, cleartap opens the file through /proc/PID/exe
/// and so probes what the process really executes; once the process is
/// gone, the file is opened by name and refused with a warning, never
/// parsed or probed. Once opened, a file is parsed and probed through that
/// one descriptor, so a later swap changes nothing (src/discover/pinned.rs).
#[test]
fn a_file_swapped_before_it_is_opened_is_refused() {
    let Some(_one) = capture_test() else { return };
    let dir = tempfile::tempdir().unwrap();
    let copies: Vec<_> = ["running", "gone"]
        .iter()
        .map(|name| {
            let sub = dir.path().join(name);
            std::fs::create_dir(&sub).unwrap();
            std::fs::copy("/bin/bash", sub.join("bash")).unwrap();
            // What the swap puts there: another program (dash has no readline).
            std::fs::copy("/bin/dash", sub.join("impostor")).expect("dash (scripts/install-deps --test)");
            sub
        })
        .collect();

    let mut cleartap = StopOnDrop(
        cleartap()
            .args(["shell", "--format", "json"])
            .env("CLEARTAP_TEST_OPEN_DELAY", format!("{}:2000", dir.path().display()))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (tx, lines) = std::sync::mpsc::channel();
    let stderr = cleartap.0.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let mut wait_for = |needle: &str| {
        while let Ok(line) = lines.recv_timeout(Duration::from_secs(60)) {
            seen.push(line.clone());
            if line.contains(needle) {
                return true;
            }
        }
        false
    };
    assert!(wait_for("ready"), "cleartap did not start");
    // Running: the process's own file is probed, not the impostor.
    let running = copies[0].join("bash");
    // Not one simple command, which bash would exec in place of itself.
    let mut victim = Command::new(&running).args(["-c", "sleep 4; true"]).spawn().unwrap();
    assert!(wait_for(&format!("test: waiting 2000 ms before opening {}", running.display())));
    std::fs::rename(copies[0].join("impostor"), &running).unwrap();
    assert!(wait_for(&format!("attached to {} (bash)", running.display())), "{seen:#?}");
    let _ = victim.wait();
    // Gone: opened by name, and the name now leads to another file.
    let gone = copies[1].join("bash");
    let mut victim = Command::new(&gone).args(["-c", "true"]).spawn().unwrap();
    let _ = victim.wait();
    assert!(wait_for(&format!("test: waiting 2000 ms before opening {}", gone.display())));
    std::fs::rename(copies[1].join("impostor"), &gone).unwrap();
    let refused = wait_for("was replaced between discovery and opening");
    let status = cleartap.stop();
    reader.join().unwrap();
    seen.extend(lines.try_iter());
    assert!(status.success(), "{seen:#?}");
    assert!(refused, "no refusal: {seen:#?}");
    let refusal = seen.iter().find(|l| l.contains("was replaced")).unwrap();
    assert!(refusal.contains(&format!("not capturing {}", gone.display())), "{refusal}");
    assert!(!seen.iter().any(|l| l.contains(&format!("attached to {}", gone.display()))), "{seen:#?}");
}

/// A cleartap the test started: stopped with SIGINT when the test ends,
/// even by a failed assertion (a leftover capture would disturb the next
/// test and hold its lock).
struct StopOnDrop(std::process::Child);

impl StopOnDrop {
    fn stop(&mut self) -> std::process::ExitStatus {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGINT) };
        self.0.wait().unwrap()
    }
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            self.stop();
        }
    }
}

/// A call whose per-thread slot the kernel's LRU table evicted before it
/// returned is not captured: it is counted and said, never dropped
/// silently. The table is shrunk to one slot (CLEARTAP_TEST_ACTIVE_CALLS),
/// so that the server thread waiting in SSL_read_ex for a second request
/// loses its slot to the calls of another connection.
#[test]
fn a_call_evicted_from_the_per_thread_table_is_counted() {
    let Some(_one) = capture_test() else { return };
    let server = TlsServer::start();
    let capture =
        Capture::start_with_env(&["tls", "--decode", "raw"], &[("CLEARTAP_TEST_ACTIVE_CALLS", "1")]);
    let mut waiting = TlsClient::connect(&server);
    // Its server thread now waits in SSL_read_ex for the next request.
    waiting.exchange(10, 10);
    let mut other = TlsClient::connect(&server);
    other.exchange(100, 100);
    waiting.exchange(10, 10);
    let got = capture.stop();
    assert!(got.status.success(), "{}", got.stderr);
    let unseen: u64 = got
        .stderr
        .split("TLS calls not captured: ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count of calls not captured: {}", got.stderr));
    assert!(unseen >= 1, "{}", got.stderr);
}

/// Its stderr closed under it (`cleartap tls ... 2>&1 | head` does that):
/// cleartap goes on capturing and stops cleanly on SIGINT. Its messages
/// (attach lines, the summary at the stop) panicked when written to the
/// closed pipe, and a panic in the writer's scope left the capture hung.
#[test]
fn a_closed_stderr_neither_stops_nor_crashes_the_capture() {
    let Some(_one) = capture_test() else { return };
    let server = TlsServer::start();
    let out = tempfile::NamedTempFile::new().unwrap();
    let mut child = cleartap()
        .args(["tls", "--decode", "raw", "--format", "json"])
        .stdout(out.reopen().unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut capture = StopOnDrop(child);
    let ready = BufReader::new(stderr).lines().map_while(Result::ok).any(|l| l == "ready");
    assert!(ready, "cleartap did not start");
    // The reader and its pipe are gone here: the read end is closed.
    curl(&server, b"after stderr closed", 50_000);
    let status = capture.stop();
    assert!(status.success(), "cleartap exited with {status} (101: a panic)");
    let records = std::fs::read_to_string(out.path()).unwrap();
    let records = records.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let got = Captured { records, stderr: String::new(), status };
    let port = single_peer(&server);
    let curl = |r: &serde_json::Value| r["comm"] == "curl";
    assert_same_bytes(&got.stream("send", curl), &server.received_from(port), "curl send stream");
    assert_same_bytes(&got.stream("recv", curl), &server.sent_to(port), "curl recv stream");
}
