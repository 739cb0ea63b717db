//! The kernel side as a whole: every program loads, cleartap runs with
//! only the capabilities the README lists, and however it stops (signal
//! while attaching, under load, kill -9) nothing of it stays in the kernel.

mod support;

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use serde_json::Value;
use support::*;

fn cleartap() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cleartap"))
}

#[test]
fn check_loads_every_program_and_reports_verifier_instructions() {
    let Some(_one) = capture_test() else { return };
    let out = cleartap().arg("check").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    print!("{text}");
    // One return program for every library function but rustls's
    // (bpf/tls.bpf.c; tls_return_nofetch where the kernel has no atomic
    // fetch), one entry program per function.
    for program in [
        "tls_return",
        "plain_entry_ssl_write",
        "go_keylog",
        "gnutls_keylog",
        "packet_egress",
        "bash_readline_entry",
    ] {
        let line =
            text.lines().find(|l| l.starts_with(program)).unwrap_or_else(|| panic!("{program}: {text}"));
        let count: u32 = line.split_whitespace().last().unwrap().parse().unwrap();
        assert!(count > 0, "{line}");
    }
    assert!(text.ends_with("every program loaded\n"));
}

/// Names (as bpftool shows them, 15 bytes) of programs only cleartap loads.
const OUR_PROGRAMS: [&str; 7] = [
    "plain_entry_ssl",
    "internal_entry_",
    "tls_return",
    "packet_egress",
    "packet_ingress",
    "owner_connect_e",
    "sched_process_e",
];

/// Our programs, links and TC filters still in the kernel.
fn leftovers() -> Vec<String> {
    let mut found = Vec::new();
    let progs = Command::new("bpftool").args(["prog", "show"]).output().expect("running bpftool");
    let progs = String::from_utf8_lossy(&progs.stdout);
    for name in OUR_PROGRAMS {
        if progs.lines().any(|l| l.split_whitespace().any(|w| w == name)) {
            found.push(format!("program {name}"));
        }
    }
    let net = Command::new("bpftool").args(["net", "show", "dev", "lo"]).output().unwrap();
    let net = String::from_utf8_lossy(&net.stdout);
    found.extend(net.lines().filter(|l| l.contains("packet_")).map(|l| format!("TC: {l}")));
    for direction in ["ingress", "egress"] {
        let tc = Command::new("tc").args(["filter", "show", "dev", "lo", direction]).output().unwrap();
        let tc = String::from_utf8_lossy(&tc.stdout);
        found.extend(tc.lines().filter(|l| l.contains("packet_")).map(|l| format!("tc filter: {l}")));
    }
    found
}

/// Processes exit, then their links close: give the kernel a moment.
fn assert_nothing_left(what: &str) {
    for _ in 0..50 {
        if leftovers().is_empty() {
            return;
        }
        thread::sleep(Duration::from_millis(100));
    }
    panic!("{what}: left in the kernel: {:?}", leftovers());
}

fn tshark_reads(pcap: &std::path::Path) {
    let out = Command::new("tshark").arg("-r").arg(pcap).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !stderr.contains("cut short"), "{}: {stderr}", pcap.display());
}

#[test]
fn every_way_of_stopping_leaves_nothing_attached_and_whole_files() {
    let Some(_one) = capture_test() else { return };
    assert_nothing_left("before the test");
    let server = TlsServer::start();
    let dir = tempfile::tempdir().unwrap();
    for (i, signal) in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP].into_iter().enumerate() {
        let pcap = dir.path().join(format!("{i}.pcapng"));
        let capture = Capture::start(&["tls", "-w", pcap.to_str().unwrap(), "-i", "lo"]);
        let mut load = Command::new("curl")
            .args(["-sS", "-k", "--http1.1", "-o", "/dev/null", "--limit-rate", "5M", &server.url(50 << 20)])
            .spawn()
            .unwrap();
        // The download under way (curl reading the body), then the stop,
        // under load: every JSON line whole (stop parses them all), the
        // capture readable.
        let flowing = |r: &Value| r["comm"] == "curl" && r["direction"] == "recv";
        assert!(capture.wait_for_record(flowing, Duration::from_secs(30)), "signal {signal}: no download");
        let got = capture.stop_with(signal);
        assert!(got.status.success(), "signal {signal}: {}", got.stderr);
        let _ = load.kill();
        let _ = load.wait();
        assert!(got.tls().count() > 0, "signal {signal}: nothing captured");
        tshark_reads(&pcap);
        assert_nothing_left(&format!("signal {signal}"));
    }
    // kill -9: the kernel drops links with their file descriptors.
    let pcap = dir.path().join("killed.pcapng");
    let capture = Capture::start(&["tls", "-w", pcap.to_str().unwrap(), "-i", "lo"]);
    curl(&server, b"x", 1000);
    capture.kill_hard();
    assert_nothing_left("kill -9");
}

#[test]
fn a_signal_while_attaching_still_stops_cleanly() {
    let Some(_one) = capture_test() else { return };
    let dir = tempfile::tempdir().unwrap();
    for delay_ms in [0, 30, 150] {
        let pcap = dir.path().join(format!("{delay_ms}.pcapng"));
        let mut command = cleartap();
        // SIGINT as a terminal leaves it, whatever this test inherited: a
        // suite started with `&` from a script has it ignored, and an
        // ignored signal before main would be discarded, not kill.
        // SAFETY: sigaction is async-signal-safe; nothing else runs
        // between fork and exec.
        unsafe {
            command.pre_exec(|| {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(libc::SIGINT, &action, std::ptr::null_mut());
                Ok(())
            })
        };
        let child = command
            .args(["tls", "-w"])
            .arg(&pcap)
            .args(["-i", "lo"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Not synchronization: the signal is meant to land at different
        // points of the start, whatever cleartap reached by then.
        thread::sleep(Duration::from_millis(delay_ms));
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let out = stopped_within(child, Duration::from_secs(120)).unwrap_or_else(|| {
            panic!("SIGINT after {delay_ms} ms: cleartap still ran 120 s later (the signal was lost)")
        });
        let stderr = String::from_utf8_lossy(&out.stderr);
        // A signal that lands before main installs its handler kills the
        // process the default way; then nothing had started at all.
        let before_main = out.status.signal() == Some(libc::SIGINT) && stderr.is_empty() && !pcap.exists();
        assert!(out.status.success() || before_main, "after {delay_ms} ms: {} {stderr}", out.status);
        if pcap.exists() {
            tshark_reads(&pcap);
        }
        assert_nothing_left(&format!("SIGINT after {delay_ms} ms"));
    }
}

/// The child's output once it exits, or None (and the child killed) if it
/// still runs after `limit`: a lost signal fails the test instead of
/// hanging it.
fn stopped_within(mut child: std::process::Child, limit: Duration) -> Option<std::process::Output> {
    let deadline = std::time::Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
    Some(child.wait_with_output().unwrap())
}

/// The capabilities the README documents, and nothing else: setpriv
/// keeps only them in the bounding set of a root process.
const DOCUMENTED: &str = "-all,+sys_admin,+sys_ptrace,+dac_read_search,+net_admin";

#[test]
fn runs_with_only_the_documented_capabilities_and_names_a_missing_one() {
    let Some(_one) = capture_test() else { return };
    let server = TlsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("caps.pcapng");
    let bounding = format!("--bounding-set={DOCUMENTED}");
    let mut child = Command::new("setpriv")
        .args([bounding.as_str(), "--inh-caps=-all"])
        .arg(env!("CARGO_BIN_EXE_cleartap"))
        .args(["tls", "--format", "json", "--comm", "curl", "-w"])
        .arg(&pcap)
        .args(["-i", "lo"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut lines = std::io::BufRead::lines(stderr);
    assert!(lines.by_ref().map_while(Result::ok).any(|l| l == "ready"), "not ready under setpriv");
    curl(&server, b"ping", 2000);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(r#""comm":"curl""#), "nothing captured under setpriv: {stdout}");
    tshark_reads(&pcap);

    for (dropped, name) in [("sys_admin", "CAP_SYS_ADMIN"), ("net_admin", "CAP_NET_ADMIN")] {
        let fewer = format!("--bounding-set={}", DOCUMENTED.replace(&format!(",+{dropped}"), ""));
        let out = Command::new("setpriv")
            .args([fewer.as_str(), "--inh-caps=-all"])
            .arg(env!("CARGO_BIN_EXE_cleartap"))
            .args(["tls", "-w"])
            .arg(dir.path().join(format!("{dropped}.pcapng")))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(&format!("missing capabilities: {name}")), "{stderr}");
    }
}

#[test]
fn hostile_library_files_are_skipped_with_a_warning_and_the_rest_captured() {
    let Some(_one) = capture_test() else { return };
    let server = TlsServer::start();
    let dir = tempfile::tempdir().unwrap();
    // A truncated libssl, an ELF header claiming 65535 sections at an
    // offset past the end, and a file that is not ELF at all: each named
    // like a TLS library and opened by a process while cleartap runs.
    // Any real ELF file will do: this test program.
    let real = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    let truncated = dir.path().join("libssl.so.91");
    std::fs::write(&truncated, &real[..4096]).unwrap();
    let mut absurd = real[..64].to_vec();
    absurd[0x28..0x30].copy_from_slice(&u64::MAX.to_le_bytes()); // e_shoff
    absurd[0x3c..0x3e].copy_from_slice(&u16::MAX.to_le_bytes()); // e_shnum
    let absurd_path = dir.path().join("libssl.so.92");
    std::fs::write(&absurd_path, &absurd).unwrap();
    let garbage = dir.path().join("libgnutls.so.93");
    std::fs::write(&garbage, b"#!/bin/sh\necho not a library\n").unwrap();

    // No --comm filter: it would hide python's opens from the watch too.
    let capture = Capture::start(&["tls"]);
    for path in [&truncated, &absurd_path, &garbage] {
        run(
            Command::new("python3").args(["-c", "import sys; open(sys.argv[1], 'rb').read()"]).arg(path),
            b"",
        );
    }
    let response = curl(&server, b"still here", 3000);
    let got = capture.stop();
    got.assert_clean_exit();
    for path in [&truncated, &absurd_path, &garbage] {
        let name = path.display().to_string();
        assert!(got.stderr.contains(&format!("warning: skipping {name}")), "{name}: {}", got.stderr);
    }
    // What curl received, as captured, against what the server sent it.
    let sent = server.sent_to(single_peer(&server));
    assert_same_bytes(&got.stream("recv", |r| r["comm"] == "curl"), &sent, "recv");
    assert!(sent.ends_with(&response), "the server's bytes end with the body curl printed");
    assert_eq!(response.len(), 3000);
}

/// Once running, cleartap holds only the capabilities it uses, in every
/// thread, and cannot regain the others (bounding set): a flaw in parsing
/// hostile input cannot be turned into loading a module or becoming
/// another user.
#[test]
fn every_thread_keeps_only_the_capabilities_it_uses() {
    let Some(_one) = capture_test() else { return };
    let hex = |status: &str, key: &str| -> u64 {
        let line = status.lines().find(|l| l.starts_with(key)).unwrap_or_else(|| panic!("{key}"));
        u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
    };
    let bit = |n: u32| 1u64 << n;
    // linux/capability.h
    let (dac_override, dac_read_search, kill, setuid, setpcap, net_bind, net_admin, net_raw) =
        (1, 2, 5, 7, 8, 10, 12, 13);
    let (sys_module, sys_rawio, sys_ptrace, sys_admin, sys_nice, sys_resource) = (16, 17, 19, 21, 23, 24);
    for (args, with_net_admin) in [(&["shell"][..], false), (&["exec"][..], false)] {
        let capture = Capture::start(args);
        let threads = std::fs::read_dir(format!("/proc/{}/task", capture.pid())).unwrap();
        let mut checked = 0;
        for thread in threads {
            let status = std::fs::read_to_string(thread.unwrap().path().join("status")).unwrap();
            for key in ["CapEff:", "CapPrm:", "CapBnd:"] {
                let caps = hex(&status, key);
                for needed in [sys_admin, sys_ptrace, dac_read_search] {
                    assert!(caps & bit(needed) != 0, "{args:?} {key} lacks bit {needed}: {caps:x}");
                }
                for never in [kill, setuid, setpcap, sys_module, sys_rawio, net_raw] {
                    assert!(caps & bit(never) == 0, "{args:?} {key} still has bit {never}: {caps:x}");
                }
                assert_eq!(caps & bit(net_admin) != 0, with_net_admin, "{args:?} {key}: {caps:x}");
                let allowed = [dac_override, dac_read_search, net_bind, net_admin, sys_ptrace, sys_admin]
                    .iter()
                    .chain(&[sys_nice, sys_resource, 38, 39]) // CAP_PERFMON, CAP_BPF
                    .fold(0u64, |m, &b| m | bit(b));
                assert_eq!(caps & !allowed, 0, "{args:?} {key}: {caps:x}");
            }
            assert_eq!(hex(&status, "CapAmb:"), 0);
            checked += 1;
        }
        assert!(checked >= 1);
        capture.stop().assert_clean_exit();
    }
}

/// The names (15 bytes, as the kernel keeps them) of the programs `pid`
/// holds open: the `prog_id` of each of its fds (bpftool here cannot name
/// a program's owners), then bpftool's list for their names.
fn programs_of(pid: u32) -> Vec<String> {
    let ids: Vec<u64> = std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .filter_map(|fd| std::fs::read_to_string(fd.unwrap().path()).ok())
        .filter_map(|info| info.lines().find_map(|l| l.strip_prefix("prog_id:")?.trim().parse().ok()))
        .collect();
    let out = Command::new("bpftool").args(["prog", "show", "--json"]).output().expect("running bpftool");
    assert!(out.status.success(), "bpftool: {}", String::from_utf8_lossy(&out.stderr));
    let progs: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    progs
        .iter()
        .filter(|p| p["id"].as_u64().is_some_and(|id| ids.contains(&id)))
        .filter_map(|p| p["name"].as_str().map(String::from))
        .collect()
}

/// A source that needs only exec events (shells) traces no openat: those
/// programs would run on every open of the host for nothing. `tls`, which
/// watches library opens, has them (the names below are the right ones).
#[test]
fn only_a_watch_of_libraries_traces_opens() {
    let Some(_one) = capture_test() else { return };
    // bpftool prints the kernel's 15 bytes where it has no BTF for the name.
    let has = |names: &[String], full: &str| {
        names.iter().any(|n| full.starts_with(n.as_str()) && n.len() >= 15.min(full.len()))
    };
    for (source, traces_opens) in [("shell", false), ("tls", true)] {
        let capture = Capture::start(&[source]);
        let names = programs_of(capture.pid());
        assert!(has(&names, "sched_process_exec"), "{source}: {names:?}");
        for open in ["sys_enter_openat", "sys_exit_openat"] {
            assert_eq!(has(&names, open), traces_opens, "{source}: {open} in {names:?}");
        }
        capture.stop().assert_clean_exit();
    }
}
