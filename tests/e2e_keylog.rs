//! TLS secrets and decryptable captures: `--keylog` must equal, line for
//! line, what each client writes itself when asked (SSLKEYLOGFILE and
//! friends), and `-w` must give a pcapng that tshark decrypts with nothing
//! but the file.

mod support;

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::Duration;

use serde_json::Value;
use support::*;

/// A capture with a key log and a pcapng of loopback traffic to `port`.
struct Recording {
    dir: tempfile::TempDir,
    capture: Capture,
}

impl Recording {
    fn start(port: u16, extra: &[&str]) -> Recording {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys.log");
        let pcap = dir.path().join("capture.pcapng");
        let mut args = vec!["tls", "--keylog", keys.to_str().unwrap(), "-w", pcap.to_str().unwrap()];
        args.extend_from_slice(extra);
        let filter = format!("tcp port {port}");
        args.extend(["-i", "lo"]);
        args.extend(filter.split(' '));
        let capture = Capture::start(&args);
        Recording { dir, capture }
    }

    fn stop(self) -> Recorded {
        let done = self.stop_anyhow();
        done.got.assert_clean_exit();
        done
    }

    /// Stopped, whatever it lost on the way.
    fn stop_anyhow(self) -> Recorded {
        let got = self.capture.stop();
        assert!(got.status.success(), "cleartap exited with {}: {}", got.status, got.stderr);
        Recorded { dir: self.dir, got }
    }
}

struct Recorded {
    dir: tempfile::TempDir,
    got: Captured,
}

impl Recorded {
    fn keys(&self) -> PathBuf {
        self.dir.path().join("keys.log")
    }

    fn pcap(&self) -> PathBuf {
        self.dir.path().join("capture.pcapng")
    }

    fn key_lines(&self) -> Vec<String> {
        fs::read_to_string(self.keys()).unwrap().lines().map(String::from).collect()
    }
}

fn lines_of(path: &Path) -> BTreeSet<String> {
    fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(String::from)
        .collect()
}

/// Every line once, and the same set as the program's own key log.
#[track_caller]
/// A server, cleartap recording its traffic (`--keylog`, `-w`), and the
/// path `name` where the peer under test writes its own key log.
fn record_with_own_log(name: &str) -> (TlsServer, Recording, PathBuf) {
    let server = TlsServer::start();
    let recording = Recording::start(server.port, &[]);
    let own = recording.dir.path().join(name);
    (server, recording, own)
}

fn assert_same_key_lines(got: &[String], own: &Path) {
    let want = lines_of(own);
    assert!(!want.is_empty(), "the client wrote no key log");
    let got_set: BTreeSet<String> = got.iter().cloned().collect();
    assert_eq!(got.len(), got_set.len(), "a line written twice: {got:#?}");
    assert_eq!(got_set, want);
}

/// `tshark` fields of the HTTP messages it can decrypt in `pcap`, with
/// extra `-o` options.
fn decrypted_http(pcap: &Path, options: &[&str]) -> String {
    let mut cmd = Command::new("tshark");
    cmd.arg("-r").arg(pcap).args(options);
    cmd.args(["-Y", "http", "-T", "fields", "-e", "http.request.uri", "-e", "http.content_length"]);
    let out = cmd.output().expect("running tshark");
    assert!(out.status.success(), "tshark failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The pcapng with its Decryption Secrets Blocks removed.
fn without_secrets(pcap: &Path) -> PathBuf {
    let stripped = pcap.with_extension("stripped.pcapng");
    let out = Command::new("editcap").arg("--discard-all-secrets").arg(pcap).arg(&stripped).output().unwrap();
    assert!(out.status.success(), "editcap: {}", String::from_utf8_lossy(&out.stderr));
    stripped
}

/// curl GETting `response_size` bytes; returns its pid.
fn curl_with_keylog(server: &TlsServer, tls_max: &str, response_size: usize, keylog: &Path) -> u32 {
    let child = Command::new("curl")
        .args(["-sS", "-k", "--http1.1", "--tls-max", tls_max, "-o", "/dev/null"])
        .arg(server.url(response_size))
        .env("SSLKEYLOGFILE", keylog)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "curl: {}", String::from_utf8_lossy(&out.stderr));
    pid
}

#[test]
fn openssl_tls12_and_tls13_secrets_equal_curls_own_and_the_capture_decrypts() {
    let Some(_one) = capture_test() else { return };
    let (server, recording, own) = record_with_own_log("curl-keys.log");
    let curls = [curl_with_keylog(&server, "1.3", 1234, &own), curl_with_keylog(&server, "1.2", 5678, &own)];
    let done = recording.stop();
    let lines = done.key_lines();
    assert_same_key_lines(&lines, &own);
    let labels: BTreeSet<&str> = lines.iter().filter_map(|l| l.split(' ').next()).collect();
    assert!(
        labels.contains("CLIENT_RANDOM") && labels.contains("CLIENT_HANDSHAKE_TRAFFIC_SECRET"),
        "{labels:?}"
    );
    assert_eq!(fs::metadata(done.keys()).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(fs::metadata(done.pcap()).unwrap().permissions().mode() & 0o777, 0o600);

    // The plaintext is captured as without -w.
    let sent = done.got.stream("send", |r| r["comm"] == "curl");
    assert!(String::from_utf8_lossy(&sent).contains("GET /1234 HTTP/1.1\r\n"));
    // Packets name their processes: each curl on its side, the server on
    // its side, as the test started them.
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    let mut owner_of_port = std::collections::BTreeMap::new();
    owner_of_port.insert(server.port, format!("pid={} comm=python3 uid={uid}", server.pid()));
    for port in server.peer_ports() {
        let request = server.received_from(port);
        let i = [&b"GET /1234 "[..], b"GET /5678 "].iter().position(|r| request.starts_with(r));
        let i =
            i.unwrap_or_else(|| panic!("not a curl of this test: {:?}", String::from_utf8_lossy(&request)));
        owner_of_port.insert(port, format!("pid={} comm=curl uid={uid}", curls[i]));
    }
    assert_eq!(owner_of_port.len(), 3, "{owner_of_port:?}");

    // One tshark run reads the pcapng alone (each start of tshark is tens
    // of seconds in an emulated guest): its embedded secrets decrypt both
    // connections, and its packets carry their owners.
    let fields =
        ["frame.protocols", "http.request.uri", "http.content_length", "tcp.srcport", "frame.comment"];
    let packets = tshark_fields(&done.pcap(), &fields);
    let mut decrypted = String::new();
    let mut commented = BTreeSet::new();
    for line in packets.lines() {
        let [protocols, uri, length, port, comment] = split_fields(line);
        if protocols.split(':').any(|p| p == "http") {
            decrypted += &format!("{uri}\t{length}\n");
        }
        let port: u16 = port.parse().unwrap_or_else(|_| panic!("{line:?}"));
        let want = owner_of_port.get(&port).unwrap_or_else(|| panic!("a packet from port {port}: {line:?}"));
        // Packets before the socket's owner is known have no comment.
        if !comment.is_empty() {
            assert_eq!(comment, want, "packet from port {port}");
            commented.insert(port);
        }
    }
    assert_eq!(commented.len(), 3, "commented packets from both ends of both connections: {packets}");
    let want = "/1234\t\n\t1234\n/5678\t\n\t5678\n";
    assert_eq!(decrypted, want);
    // The key log alone decrypts the capture without its secrets (which
    // the file's own blocks show are gone: no second tshark run needed).
    let stripped = without_secrets(&done.pcap());
    assert!(secrets_blocks(&done.pcap()) > 0, "no Decryption Secrets Block in the capture");
    assert_eq!(secrets_blocks(&stripped), 0, "editcap left a Decryption Secrets Block");
    let keylog_option = format!("tls.keylog_file:{}", done.keys().display());
    assert_eq!(decrypted_http(&stripped, &["-o", &keylog_option]), want);
}

/// `tshark -T fields -e FIELD...`: one line per packet, tab-separated.
fn tshark_fields(pcap: &Path, fields: &[&str]) -> String {
    let mut cmd = Command::new("tshark");
    cmd.arg("-r").arg(pcap).args(["-T", "fields"]);
    for field in fields {
        cmd.args(["-e", field]);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "tshark: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The `N` tab-separated fields of a `tshark -T fields` line (missing
/// ones empty).
fn split_fields<const N: usize>(line: &str) -> [&str; N] {
    let mut fields = line.splitn(N, '\t');
    std::array::from_fn(|_| fields.next().unwrap_or(""))
}

/// How many Decryption Secrets Blocks (pcapng block type 0x0A) `pcap`
/// holds, read from the file's own block headers.
fn secrets_blocks(pcap: &Path) -> usize {
    const DECRYPTION_SECRETS: u32 = 0x0A;
    let bytes = fs::read(pcap).unwrap();
    // The Section Header Block's byte-order magic says how to read it.
    let big_endian = bytes.get(8..12) == Some(&[0x1a, 0x2b, 0x3c, 0x4d][..]);
    let word = |at: usize| {
        let b: [u8; 4] = bytes[at..at + 4].try_into().unwrap();
        if big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        }
    };
    let (mut at, mut found) = (0, 0);
    while at + 12 <= bytes.len() {
        let (kind, length) = (word(at), word(at + 4) as usize);
        assert!(length >= 12 && length % 4 == 0 && at + length <= bytes.len(), "a broken block at {at}");
        found += usize::from(kind == DECRYPTION_SECRETS);
        at += length;
    }
    assert_eq!(at, bytes.len(), "trailing bytes after the last block");
    found
}

/// tests/support/keylog_peer.c built against OpenSSL 1.1.1w.
fn keylog_peer_111(dir: &Path) -> PathBuf {
    build_against_openssl("keylog_peer", OPENSSL_111, dir)
}

#[test]
fn openssl_111_secrets_equal_its_own_key_log() {
    let Some(_one) = capture_test() else { return };
    let server = TlsServer::start();
    let recording = Recording::start(server.port, &[]);
    let peer = keylog_peer_111(recording.dir.path());
    let own = recording.dir.path().join("peer-keys.log");
    for (tls_max, size) in [("1.3", "/3333"), ("1.2", "/2222")] {
        let port = server.port.to_string();
        let out = run(Command::new(&peer).args(["127.0.0.1", &port, size]).arg(&own).arg(tls_max), b"");
        let want = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n", &size[1..]);
        assert!(out.stdout.starts_with(want.as_bytes()), "{}", String::from_utf8_lossy(&out.stdout));
    }
    let done = recording.stop();
    assert!(done.got.stderr.contains("(openssl 1.1.1w:"), "{}", done.got.stderr);
    assert_same_key_lines(&done.key_lines(), &own);
    assert_eq!(decrypted_http(&done.pcap(), &[]), "/3333\t\n\t3333\n/2222\t\n\t2222\n");
}

#[test]
fn node_secrets_from_its_linked_openssl_equal_its_own_key_log() {
    let Some(_one) = capture_test() else { return };
    let (server, recording, own) = record_with_own_log("node-keys.log");
    // Node's own key log, written synchronously: --tls-keylog writes
    // through a stream that process.exit may cut short.
    let script = format!(
        r#"const fs = require("fs"), https = require("https");
        const agent = new https.Agent();
        agent.on("keylog", line => fs.appendFileSync({:?}, line));
        https.get({{host: "127.0.0.1", port: {}, path: "/4321", agent,
            rejectUnauthorized: false, headers: {{"Connection": "close"}}}},
            res => {{ res.resume(); res.on("end", () => process.exit(0)); }});"#,
        own.display().to_string(),
        server.port
    );
    run(Command::new("node").args(["-e", &script]), b"");
    let done = recording.stop();
    assert_same_key_lines(&done.key_lines(), &own);
    assert_eq!(decrypted_http(&done.pcap(), &[]), "/4321\t\n\t4321\n");
}

#[test]
fn gnutls_secrets_equal_its_own_key_log() {
    let Some(_one) = capture_test() else { return };
    let (server, recording, own) = record_with_own_log("gnutls-keys.log");
    let out = Command::new("wget")
        .args(["-q", "--no-check-certificate", "-O", "/dev/null"])
        .arg(server.url(2468))
        .env("SSLKEYLOGFILE", &own) // GnuTLS 3.7 reads this name too
        .output()
        .unwrap();
    assert!(out.status.success(), "wget: {}", String::from_utf8_lossy(&out.stderr));
    let done = recording.stop();
    assert_same_key_lines(&done.key_lines(), &own);
    let http = decrypted_http(&done.pcap(), &[]);
    assert!(http.starts_with("/2468\t\n\t2468\n"), "{http}");
}

/// `openssl s_server -keylogfile LOG` on a free port, speaking only the TLS
/// version `version_flag` gives (`-tls1_2`, `-tls1_3`); returns it and
/// the port.
fn s_server_with_keylog(cert: &Certificate, version_flag: &str, log: &Path) -> (std::process::Child, u16) {
    openssl_s_server(cert, &[OsStr::new(version_flag), OsStr::new("-keylogfile"), log.as_os_str()])
}

/// GnuTLS's secrets against the other end's own record of them: wget (a
/// GnuTLS client) fetches from `openssl s_server -keylogfile`, which logs
/// the same connection's secrets from the server's side. Only GnuTLS is
/// probed (`--library gnutls`), so every line cleartap writes comes from
/// the GnuTLS key log probe. TLS 1.2 (one CLIENT_RANDOM line) and TLS 1.3
/// (five traffic and exporter secrets). `tests/vm/run arm64` runs it too:
/// there the probe point comes from decoding aarch64 code.
#[test]
fn gnutls_tls12_and_tls13_secrets_equal_the_servers_key_log() {
    let Some(_one) = capture_test() else { return };
    let cert = Certificate::new();
    for (version_flag, label) in [("-tls1_2", "CLIENT_RANDOM "), ("-tls1_3", "CLIENT_TRAFFIC_SECRET_0 ")] {
        client_against_s_server(&cert, version_flag, label, "gnutls", "wget", |port| {
            Command::new("wget")
                .args(["-q", "--no-check-certificate", "-O", "/dev/null"])
                .arg(format!("https://127.0.0.1:{port}/"))
                .output()
                .expect("running wget (scripts/install-deps --test)")
        });
    }
}

/// `client(port)`, a `library` client, against `openssl s_server
/// -keylogfile` speaking only `version_flag`'s TLS version, captured with
/// only `library` probed. Checks the client succeeded, a `label` line was
/// written, and the lines equal the server's own; returns the capture and
/// the client's output.
fn client_against_s_server(
    cert: &Certificate,
    version_flag: &str,
    label: &str,
    library: &str,
    client_name: &str,
    client: impl FnOnce(u16) -> std::process::Output,
) -> (Recorded, std::process::Output) {
    let dir = tempfile::tempdir().unwrap();
    let server_log = dir.path().join("server-keys.log");
    let (mut server, port) = s_server_with_keylog(cert, version_flag, &server_log);
    let recording = Recording::start(port, &["--library", library]);
    let out = client(port);
    let done = recording.stop();
    let _ = server.kill();
    let _ = server.wait();
    assert!(out.status.success(), "{client_name} {version_flag}: {}", String::from_utf8_lossy(&out.stderr));
    let got = done.key_lines();
    assert!(got.iter().any(|l| l.starts_with(label)), "{version_flag}: no {label}line in {got:#?}");
    assert_same_key_lines(&got, &server_log);
    (done, out)
}

#[test]
fn the_filter_expression_keeps_only_what_it_matches() {
    let Some(_one) = capture_test() else { return };
    let kept = TlsServer::start();
    let other = TlsServer::start();
    let recording = Recording::start(kept.port, &[]);
    let own = recording.dir.path().join("curl-keys.log");
    curl_with_keylog(&kept, "1.3", 100, &own);
    curl_with_keylog(&other, "1.3", 200, &own);
    let done = recording.stop();
    let ports = tshark_fields(&done.pcap(), &["tcp.port"]);
    let ports: BTreeSet<&str> = ports.split(['\n', ',']).filter(|p| !p.is_empty()).collect();
    assert!(ports.contains(kept.port.to_string().as_str()), "{ports:?}");
    assert!(!ports.contains(other.port.to_string().as_str()), "{ports:?}");
    assert_eq!(decrypted_http(&done.pcap(), &[]), "/100\t\n\t100\n");
    // Secrets are not filtered: the key log has both connections.
    assert_same_key_lines(&done.key_lines(), &own);
}

#[test]
fn snaplen_cuts_packets_and_keeps_their_length_on_the_wire() {
    let Some(_one) = capture_test() else { return };
    let server = TlsServer::start();
    let recording = Recording::start(server.port, &["--snaplen", "200"]);
    curl(&server, b"", 100_000);
    let done = recording.stop();
    let fields = Command::new("tshark")
        .arg("-r")
        .arg(done.pcap())
        .args(["-T", "fields", "-e", "frame.cap_len", "-e", "frame.len"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&fields.stdout);
    let sizes: Vec<(u32, u32)> = text
        .lines()
        .map(|l| {
            let (cap, len) = l.split_once('\t').unwrap();
            (cap.parse().unwrap(), len.parse().unwrap())
        })
        .collect();
    assert!(sizes.iter().all(|&(cap, len)| cap == len.min(200)), "{sizes:?}");
    assert!(sizes.iter().any(|&(_, len)| len > 1000), "{sizes:?}");
}

#[test]
fn a_capture_interrupted_mid_transfer_is_a_valid_pcapng() {
    let Some(_one) = capture_test() else { return };
    let server = TlsServer::start();
    for later_ms in [0, 550] {
        let recording = Recording::start(server.port, &[]);
        let url = server.url(20 << 20);
        let mut client = Command::new("curl")
            .args(["-sS", "-k", "--http1.1", "-o", "/dev/null", "--limit-rate", "20M", &url])
            .spawn()
            .unwrap();
        // The transfer under way (curl reading the body: packets went by)...
        let flowing = |r: &Value| r["comm"] == "curl" && r["direction"] == "recv";
        assert!(recording.capture.wait_for_record(flowing, Duration::from_secs(30)), "no transfer");
        // ...then, not as synchronization, the interrupt at its start or
        // further into it.
        thread::sleep(Duration::from_millis(later_ms));
        // Under a full-speed transfer records may be lost (and counted):
        // this test is about the file.
        let done = recording.stop_anyhow();
        let cut =
            done.got.stderr.contains("cut at 256 KiB: ") && !done.got.stderr.contains("cut at 256 KiB: 0");
        assert!(!cut, "whole packets expected: {}", done.got.stderr);
        let _ = client.kill();
        let _ = client.wait();
        let out = Command::new("tshark").arg("-r").arg(done.pcap()).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && !stderr.contains("cut short"), "{stderr}");
        assert!(!out.stdout.is_empty(), "no packets before the interrupt");
    }
}

#[test]
fn a_capture_to_stdout_is_read_by_tshark_from_a_pipe() {
    let Some(_one) = capture_test() else { return };
    let server = TlsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("stdout.pcapng");
    let filter = format!("tcp port {}", server.port);
    let mut cleartap = Command::new(env!("CARGO_BIN_EXE_cleartap"))
        .args(["tls", "-w", "-", "-i", "lo"])
        .args(filter.split(' '))
        .stdout(fs::File::create(&pcap).unwrap())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(cleartap.stderr.take().unwrap());
    let mut lines = std::io::BufRead::lines(stderr);
    assert!(lines.by_ref().map_while(Result::ok).any(|l| l == "ready"), "cleartap did not become ready");
    curl(&server, b"", 777);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(cleartap.id() as i32, libc::SIGINT) };
    assert!(cleartap.wait().unwrap().success());
    // Through a pipe, which tshark cannot seek in.
    let mut cat = Command::new("cat").arg(&pcap).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let out = Command::new("tshark")
        .args([
            "-r",
            "-",
            "-Y",
            "http",
            "-T",
            "fields",
            "-e",
            "http.request.uri",
            "-e",
            "http.content_length",
        ])
        .stdin(cat.stdout.take().unwrap())
        .output()
        .unwrap();
    assert!(cat.wait().unwrap().success());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "/777\t0\n\t777\n");
}

#[test]
fn an_existing_capture_file_or_a_symlink_is_refused() {
    if !require_bpf() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let existing = dir.path().join("old.pcapng");
    fs::write(&existing, b"keep me").unwrap();
    let link = dir.path().join("link.pcapng");
    std::os::unix::fs::symlink(dir.path().join("elsewhere"), &link).unwrap();
    for path in [&existing, &link] {
        let out = Command::new(env!("CARGO_BIN_EXE_cleartap"))
            .args(["tls", "-i", "lo", "-w"])
            .arg(path)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains("cannot create it"), "{out:?}");
    }
    assert_eq!(fs::read(&existing).unwrap(), b"keep me");
    assert!(!dir.path().join("elsewhere").exists());
}

/// NSS's secrets against the other end's own record of them (Debian's NSS
/// writes no SSLKEYLOGFILE): tstclnt (an NSS client) against `openssl
/// s_server -keylogfile`, TLS 1.2 and 1.3, only NSS probed. The capture
/// must decrypt with its embedded secrets alone.
#[test]
fn nss_client_tls12_and_tls13_secrets_equal_the_servers_key_log() {
    let Some(_one) = capture_test() else { return };
    let cert = Certificate::new();
    for (version_flag, label) in
        [("-tls1_2", "CLIENT_RANDOM "), ("-tls1_3", "CLIENT_HANDSHAKE_TRAFFIC_SECRET ")]
    {
        let uri = format!("/nss-client{version_flag}");
        let (done, out) = client_against_s_server(&cert, version_flag, label, "nss", "tstclnt", |port| {
            let dir = tempfile::tempdir().unwrap();
            let request = dir.path().join("request");
            fs::write(&request, format!("GET {uri} HTTP/1.0\r\n\r\n")).unwrap();
            // A file on stdin: tstclnt sends it, prints the answer and exits
            // when the server closes (on a pipe it spins after EOF).
            Command::new("tstclnt")
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-o", "-D"])
                .stdin(fs::File::open(&request).unwrap())
                .output()
                .expect("running tstclnt (scripts/install-deps --test: libnss3-tools)")
        });
        assert!(out.stdout.starts_with(b"HTTP/1.0 200 ok\r\n"), "{}", String::from_utf8_lossy(&out.stdout));
        // Both directions decrypt (the server's page has no length, so
        // tshark's HTTP view shows only the request: follow the stream).
        let both_ways = decrypted_stream(&done.pcap(), 0);
        assert!(both_ways.contains(&format!("GET {uri} HTTP/1.0")), "{version_flag}: {both_ways}");
        assert!(both_ways.contains("HTTP/1.0 200 ok"), "{version_flag}: {both_ways}");
    }
}

/// An NSS server: selfserv (its own certificate database, made here)
/// answering `openssl s_client -keylogfile`, TLS 1.2 and 1.3, and TLS 1.3
/// with a HelloRetryRequest (the client's key share is for ffdhe2048,
/// which NSS does not take by default), whose transcript restarts without
/// a ClientHello at its start.
#[test]
fn nss_server_tls12_and_tls13_secrets_equal_the_clients_key_log() {
    let Some(_one) = capture_test() else { return };
    let dir = tempfile::tempdir().unwrap();
    let db = nss_server_db(dir.path());
    let port = free_port();
    let mut server = Command::new("selfserv")
        .args(["-d", &db, "-n", "server", "-p", &port.to_string(), "-V", "tls1.2:tls1.3"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("starting selfserv (scripts/install-deps --test: libnss3-tools)");
    wait_until_listening(port, &mut server);
    let recording = Recording::start(port, &["--library", "nss"]);
    let client_log = dir.path().join("client-keys.log");
    let mut uris = Vec::new();
    for (version_flag, groups) in
        [("-tls1_2", None), ("-tls1_3", None), ("-tls1_3", Some("ffdhe2048:X25519"))]
    {
        let uri = format!("/nss-server{version_flag}{}", if groups.is_some() { "-retry" } else { "" });
        let request = format!("GET {uri} HTTP/1.0\r\n\r\n");
        let out = run(
            Command::new("openssl")
                .args(["s_client", "-quiet", "-ign_eof", version_flag, "-connect"])
                .arg(format!("127.0.0.1:{port}"))
                .args(groups.iter().flat_map(|g| ["-groups", g]))
                .arg("-keylogfile")
                .arg(&client_log),
            request.as_bytes(),
        );
        assert!(out.stdout.starts_with(b"HTTP/1.0 200 OK\r\n"), "{}", String::from_utf8_lossy(&out.stdout));
        uris.push(uri);
    }
    let done = recording.stop();
    let _ = server.kill();
    let _ = server.wait();
    let got = done.key_lines();
    for label in ["CLIENT_RANDOM ", "SERVER_TRAFFIC_SECRET_0 "] {
        assert!(got.iter().any(|l| l.starts_with(label)), "no {label}line in {got:#?}");
    }
    assert_same_key_lines(&got, &client_log);
    for (stream, uri) in uris.iter().enumerate() {
        let both_ways = decrypted_stream(&done.pcap(), stream);
        assert!(both_ways.contains(&format!("GET {uri} HTTP/1.0")), "{both_ways}");
        assert!(both_ways.contains("HTTP/1.0 200 OK"), "{both_ways}");
    }
}

/// One thread, two NSS client connections, their TLS 1.3 handshakes
/// interleaved as an event loop interleaves them (tests/support/
/// nss_interleave.c): A's application secrets are derived after B's
/// ClientHello was hashed on the same thread. Each connection has its own
/// `openssl s_server -keylogfile`: the lines must equal both servers' key
/// logs together (a secret tied to the thread's last ClientHello would
/// carry B's client random), and A's capture must decrypt. Once more with
/// a HelloRetryRequest for A (its server wants a group NSS sends no key
/// share for), whose transcript restarts without a ClientHello at its
/// start.
#[test]
fn nss_client_handshakes_interleaved_on_one_thread_give_each_its_own_client_random() {
    let Some(_one) = capture_test() else { return };
    let cert = Certificate::new();
    let dir = tempfile::tempdir().unwrap();
    let client = build_against_nss("nss_interleave", dir.path());
    interleaved_against_s_servers(&client, &cert, &[]);
    interleaved_against_s_servers(&client, &cert, &["-groups", "P-521"]);
}

/// `nss_interleave` against two `openssl s_server -tls1_3 -keylogfile`,
/// A's with `a_options`, captured with only NSS probed: the checks above.
fn interleaved_against_s_servers(client: &Path, cert: &Certificate, a_options: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let logs = [dir.path().join("a-keys.log"), dir.path().join("b-keys.log")];
    let a_args = [&["-tls1_3", "-keylogfile", logs[0].to_str().unwrap()][..], a_options].concat();
    let b_args = ["-tls1_3", "-keylogfile", logs[1].to_str().unwrap()];
    let mut servers = [openssl_s_server(cert, &a_args), openssl_s_server(cert, &b_args)];
    let recording = Recording::start(servers[0].1, &["--library", "nss"]);
    let out = Command::new(client).args(servers.iter().map(|(_, port)| port.to_string())).output().unwrap();
    let done = recording.stop();
    for (server, _) in &mut servers {
        let _ = server.kill();
        let _ = server.wait();
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "nss_interleave {a_options:?}: {stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "a: HTTP/1.0 200 ok\nb: HTTP/1.0 200 ok\n");
    let both = dir.path().join("both-keys.log");
    fs::write(&both, logs.iter().map(|log| fs::read_to_string(log).unwrap()).collect::<String>()).unwrap();
    assert_eq!(lines_of(&both).len(), 10, "five TLS 1.3 lines from each server");
    assert_same_key_lines(&done.key_lines(), &both);
    let a = decrypted_stream(&done.pcap(), 0);
    assert!(a.contains("GET /a HTTP/1.0") && a.contains("HTTP/1.0 200 ok"), "{a_options:?}: {a}");
}

/// The plaintext tshark decrypts from TCP stream `stream` of `pcap` with
/// the secrets the file holds, both directions.
fn decrypted_stream(pcap: &Path, stream: usize) -> String {
    let follow = format!("follow,tls,ascii,{stream}");
    let out = Command::new("tshark").arg("-r").arg(pcap).args(["-q", "-z", &follow]).output().unwrap();
    assert!(out.status.success(), "tshark: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An NSS certificate database in `dir` holding a self-signed server
/// certificate named "server"; its `-d` argument.
fn nss_server_db(dir: &Path) -> String {
    let db = format!("sql:{}", dir.display());
    let noise = dir.join("noise");
    fs::write(&noise, (0..64u8).map(|i| i.wrapping_mul(37) ^ 0x5a).collect::<Vec<u8>>()).unwrap();
    let certutil = |args: &[&str]| {
        let out = Command::new("certutil")
            .args(args)
            .output()
            .expect("running certutil (scripts/install-deps --test: libnss3-tools)");
        assert!(out.status.success(), "certutil {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    certutil(&["-N", "-d", &db, "--empty-password"]);
    let noise = noise.to_str().unwrap();
    let subject = ["-s", "CN=localhost", "-x", "-t", "CT,,", "-k", "ec", "-q", "nistp256", "-v", "12"];
    certutil(&[&["-S", "-d", &db, "-n", "server", "-z", noise][..], &subject[..]].concat());
    db
}

/// A port nothing listens on now (the kernel's choice).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Until `port` accepts connections; fails if `server` exits first.
fn wait_until_listening(port: u16, server: &mut std::process::Child) {
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = server.try_wait().unwrap() {
            panic!("the server exited ({status}) before listening on {port}");
        }
        thread::sleep(Duration::from_millis(50));
    }
}
