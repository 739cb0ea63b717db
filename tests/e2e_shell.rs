//! `cleartap shell` and `cleartap exec` against real shells and programs.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::*;

/// Type `lines` into an interactive `shell` on a pseudo-terminal (under
/// `script`), each once the shell reads a line. Returns the pid
/// of `script`, the shell's parent: `script` runs its command through
/// `$SHELL -c`, which may or may not exec it (dash does not), so the
/// command starts with `exec` to make the shell script's own child.
fn type_into(shell: &[&str], lines: &[&str]) -> u32 {
    let lines: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
    type_into_script(&shell.join(" "), &[], &lines, b"\n")
}

fn commands_of(got: &Captured, parent: u32) -> Vec<(String, Value)> {
    got.records
        .iter()
        .filter(|r| r["event"] == "command" && r["ppid"] == parent)
        .map(|r| (r["command"].as_str().unwrap().to_string(), r["exit_status"].clone()))
        .collect()
}

fn check_shell(shell: &[&str], name: &str) {
    // A process of the same shell already running: its binary is attached
    // at start, as on any host with a shell open. (The very first process
    // of a shell binary cleartap has never seen races the attach.)
    // (`; true` keeps the shell from exec'ing sleep.)
    let _running = Holder::running(Command::new(shell[0]).args(["-c", "sleep 30; true"]));
    let long = format!("echo {}", "x".repeat(1000));
    let lines = ["echo hello", "false", "for i in 1 2; do", "echo $i", "done", "(exit 7)", &long, "exit"];
    let capture = Capture::start(&["shell"]);
    let parent = type_into(shell, &lines);
    let got = capture.stop();
    got.assert_clean_exit();
    let commands = commands_of(&got, parent);
    let expected: Vec<(String, Value)> = [
        ("echo hello", Value::from(0)),
        ("false", Value::from(1)),
        ("for i in 1 2; do\necho $i\ndone", Value::from(0)),
        ("(exit 7)", Value::from(7)),
        (long.as_str(), Value::from(0)),
        ("exit", Value::Null), // the shell is gone before it could say
    ]
    .into_iter()
    .map(|(c, s)| (c.to_string(), s))
    .collect();
    assert_eq!(commands, expected, "{name}: {}", got.stderr);
    for r in got.records.iter().filter(|r| r["ppid"] == parent) {
        assert_eq!(r["shell"], name);
        assert_eq!(r["uid"], 0);
        assert_eq!(r["user"], "root");
        assert!(r["tty"].as_str().unwrap().starts_with("pts/"), "{r}");
        assert!(r["shell_path"].as_str().unwrap().ends_with(name), "{r}");
    }
}

#[test]
fn bash_commands_with_exit_status_and_multi_line() {
    let Some(_one) = capture_test() else { return };
    check_shell(&["bash", "--norc", "-i"], "bash");
}

/// A bash built at install time against Debian's libreadline.so.8
/// (`scripts/install-deps --test`): its lines come from readline in the
/// library, which python shares.
const READLINE_BASH: &str = "/opt/cleartap-test/readline/bin/bash";

#[test]
fn bash_linked_to_libreadline() {
    let Some(_one) = capture_test() else { return };
    check_shell(&[READLINE_BASH, "--norc", "-i"], "bash");
}

#[test]
fn other_readline_programs_are_not_shells() {
    let Some(_one) = capture_test() else { return };
    let _running = Holder::running(Command::new(READLINE_BASH).args(["-c", "sleep 30; true"]));
    let capture = Capture::start(&["shell"]);
    // bc calls readline() in the same libreadline.so.8 on a tty.
    type_into(&["bc", "-q"], &["1+41", "quit"]);
    let got = capture.stop();
    got.assert_clean_exit();
    assert!(got.stderr.contains("libreadline"), "the readline bash was attached: {}", got.stderr);
    assert!(!got.records.iter().any(|r| r["command"] == "1+41"), "{:?}", got.records);
}

#[test]
fn zsh_commands_with_exit_status_and_multi_line() {
    let Some(_one) = capture_test() else { return };
    check_shell(&["zsh", "-f", "-i"], "zsh");
}

/// A bash upgraded in place (a new file renamed over the old name): the
/// new file is attached at its first exec, and the old one detached once
/// the last process running it exits, the new one's probes staying.
#[test]
fn a_shell_replaced_under_a_running_one_is_attached_again_and_the_old_detached() {
    let Some(_one) = capture_test() else { return };
    let dir = tempfile::tempdir().unwrap();
    let bash = dir.path().join("bash");
    std::fs::copy("/bin/bash", &bash).unwrap();
    let bash_name = bash.to_str().unwrap();
    let old = Holder::running(Command::new(&bash).args(["-c", "sleep 60; true"]));
    let mut capture = Capture::start(&["shell"]);
    let attached = format!("attached to {bash_name} (bash)");
    assert!(capture.stderr_so_far().contains(&attached), "{}", capture.stderr_so_far());

    // What a package upgrade does: a new file renamed over the old name.
    let staged = dir.path().join("bash.dpkg-new");
    std::fs::copy("/bin/bash", &staged).unwrap();
    std::fs::rename(&staged, &bash).unwrap();
    // Its first exec attaches it (waited for: a shell's first line could
    // otherwise race the attach).
    assert!(Command::new(&bash).args(["-c", "true"]).status().unwrap().success());
    assert!(capture.wait_for_stderr(&attached, Duration::from_secs(10)), "{}", capture.stderr_so_far());
    let before = type_into(&[bash_name, "--norc", "-i"], &["echo new file", "exit"]);

    // The last process running the old file exits: its probes go.
    drop(old);
    let detached = format!("detached from {bash_name}: ");
    assert!(capture.wait_for_stderr(&detached, Duration::from_secs(30)), "{}", capture.stderr_so_far());
    let after = type_into(&[bash_name, "--norc", "-i"], &["echo after the detach", "exit"]);
    let got = capture.stop();
    got.assert_clean_exit();

    assert_eq!(got.stderr.matches(&attached).count(), 2, "old and new file: {}", got.stderr);
    assert_eq!(got.stderr.matches("detached from").count(), 1, "{}", got.stderr);
    let first = |parent| commands_of(&got, parent).first().map(|(c, _)| c.clone());
    assert_eq!(first(before).as_deref(), Some("echo new file"), "{}", got.stderr);
    assert_eq!(first(after).as_deref(), Some("echo after the detach"), "{}", got.stderr);
}

fn decoded_argv(r: &Value) -> Vec<Vec<u8>> {
    match r.get("argv_b64") {
        Some(b64) => b64
            .as_array()
            .unwrap()
            .iter()
            .map(|a| base64_simd::STANDARD.decode_to_vec(a.as_str().unwrap()).unwrap())
            .collect(),
        None => {
            r["argv"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().as_bytes().to_vec()).collect()
        }
    }
}

#[test]
fn exec_reports_exact_argv_parent_and_result() {
    let Some(_one) = capture_test() else { return };
    let capture = Capture::start(&["exec"]);
    let script = "/bin/echo 'two words' \"$(printf 'bin\\377ary')\" '' last >/dev/null; \
                  /no/such/program 2>/dev/null; exec /bin/true";
    let mut sh = Command::new("sh").args(["-c", script]).spawn().unwrap();
    let sh_pid = sh.id();
    assert!(sh.wait().unwrap().success());
    let got = capture.stop();
    got.assert_clean_exit();
    let mine: Vec<&Value> = got
        .records
        .iter()
        .filter(|r| r["event"] == "exec" && (r["pid"] == sh_pid || r["ppid"] == sh_pid))
        .collect();
    let find = |file: &str| {
        mine.iter()
            .find(|r| r["filename"] == file)
            .copied()
            .unwrap_or_else(|| panic!("no exec of {file} in {mine:#?}"))
    };

    let sh_exec = find("/usr/bin/sh");
    assert_eq!(sh_exec["argv"], serde_json::json!(["sh", "-c", script]));
    assert_eq!(sh_exec["success"], true);

    let echo = find("/bin/echo");
    assert_eq!(echo["ppid"], sh_pid);
    assert_eq!(
        decoded_argv(echo),
        vec![b"/bin/echo".to_vec(), b"two words".to_vec(), b"bin\xffary".to_vec(), vec![], b"last".to_vec()]
    );
    assert_eq!(echo["success"], true);

    let missing = find("/no/such/program");
    assert_eq!(missing["success"], false);
    assert_eq!(missing["errno"], 2);

    // `exec` in the script: same pid as sh, the new program's result.
    let t = find("/bin/true");
    assert_eq!(t["pid"], sh_pid);
    assert_eq!(t["success"], true);
    assert_eq!(t["uid"], 0);
    assert_eq!(t["user"], "root");
}

#[test]
fn exec_comm_filter() {
    let Some(_one) = capture_test() else { return };
    // A shell whose command name is cleartap-tst: only what it starts is
    // reported (the filter applies to the task calling exec).
    let dir = tempfile::tempdir().unwrap();
    let named = dir.path().join("cleartap-tst");
    std::fs::copy("/bin/dash", &named).unwrap();
    let capture = Capture::start(&["exec", "--comm", "cleartap-tst"]);
    let status =
        Command::new(&named).args(["-c", "/bin/echo marker >/dev/null; /bin/true"]).status().unwrap();
    assert!(status.success());
    assert!(Command::new("/bin/echo").arg("not-me").stdout(Stdio::null()).status().unwrap().success());
    let got = capture.stop();
    got.assert_clean_exit();
    let files: Vec<&str> = got.records.iter().map(|r| r["filename"].as_str().unwrap()).collect();
    assert_eq!(files, ["/bin/echo", "/bin/true"], "{:#?}", got.records);
    assert!(got.records.iter().all(|r| r["comm"] == "cleartap-tst"));
    assert_eq!(got.records[0]["argv"], serde_json::json!(["/bin/echo", "marker"]));
}
