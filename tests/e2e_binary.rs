//! `--format binary` (bulk capture into a file) and `cleartap read`: a
//! stream captured into binary records reads back as the exact bytes the
//! peer received and sent, and as the same JSON lines a JSON capture of
//! the same exchange wrote.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use serde_json::Value;
use support::*;

/// `cleartap read FILE` with `args`: its standard output.
fn read(file: &std::path::Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new(env!("CARGO_BIN_EXE_cleartap")).arg("read").arg(file).args(args).output().unwrap();
    assert!(out.status.success(), "cleartap read: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// A line without its times: each capture's own kernel programs take the
/// time of a call (a few microseconds apart from the other capture's), and
/// each converts it to wall time with an offset measured at its own start.
fn without_time(line: &[u8]) -> Value {
    let mut value: Value = serde_json::from_slice(line).unwrap();
    let fields = value.as_object_mut().unwrap();
    fields.remove("time");
    fields.remove("latency_us");
    value
}

/// 32 MiB up and 1 MiB back, in 256 KiB writes, captured twice at once:
/// once as JSON lines on standard output, once as binary records into an
/// `--output` file. The binary capture, read back, is the bytes the server
/// received and sent, and its lines are the JSON capture's, one for one.
#[test]
fn binary_capture_reads_back_byte_exact_and_as_the_json_lines() {
    let Some(_one) = capture_test() else { return };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("capture.bin");
    let server = TlsServer::start();
    let mut client = TlsClient::connect(&server);
    let pid = client.pid().to_string();
    let json = Capture::start(&["tls", "--pid", &pid]);
    let binary = Capture::start(&["tls", "--pid", &pid, "--format", "binary", "-o", file.to_str().unwrap()]);
    assert_ne!(
        open_flags(binary.pid(), 1) & libc::O_DIRECT,
        0,
        "a file of its own is written past the page cache"
    );
    client.exchange_in_writes(32 << 20, 1 << 20, Some(256 << 10));
    let from_binary = binary.stop();
    let from_json = json.stop();
    from_binary.assert_clean_exit();
    from_json.assert_clean_exit();
    assert!(from_binary.records.is_empty(), "nothing on standard output with --output");
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);

    let lines = read(&file, &[]);
    let records =
        lines.split(|&b| b == b'\n').filter(|l| !l.is_empty()).map(|l| serde_json::from_slice(l).unwrap());
    let read_back = Captured { records: records.collect(), ..from_binary };
    assert_client_matches_server(&read_back, &server, "python3");
    assert!(read_back.records.iter().any(|r| r["event"] == "http"), "the HTTP exchange, a JSON record");

    let json_lines: Vec<Value> =
        from_json.records.iter().map(|r| without_time(r.to_string().as_bytes())).collect();
    let binary_lines: Vec<Value> =
        read_back.records.iter().map(|r| without_time(r.to_string().as_bytes())).collect();
    assert_eq!(binary_lines.len(), json_lines.len());
    for (i, (b, j)) in binary_lines.iter().zip(&json_lines).enumerate() {
        assert!(b == j, "line {i} differs:\n binary {b}\n json   {j}");
    }

    // The text layout reads the same file; an existing --output file is refused.
    let text = String::from_utf8(read(&file, &["--format", "text"])).unwrap();
    assert!(text.contains("python3") && text.contains("HTTP/1.1"), "{}", &text[..text.len().min(2000)]);
    let again = Command::new(env!("CARGO_BIN_EXE_cleartap"))
        .args(["tls", "--pid", &pid, "--format", "binary", "-o", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("--output"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}

/// The flags `fd` of process `pid` is open with, from /proc/PID/fdinfo (octal).
fn open_flags(pid: u32, fd: u32) -> i32 {
    let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap();
    let flags = info.lines().find_map(|l| l.strip_prefix("flags:")).expect("fdinfo has flags");
    i32::from_str_radix(flags.trim(), 8).unwrap()
}
