//! `cleartap mysql` and `cleartap postgres` against real servers started
//! by the tests in temporary directories (MariaDB, PostgreSQL from Debian).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use serde_json::Value;
use support::*;

/// Wait until `ready()` or panic after ~30 s with `what`.
fn wait_until(what: &str, ready: impl Fn() -> bool) {
    for _ in 0..300 {
        if ready() {
            return;
        }
        thread::sleep(Duration::from_millis(100));
    }
    panic!("{what} did not come up");
}

fn queries(got: &Captured) -> Vec<&Value> {
    got.records.iter().filter(|r| r["event"] == "query").collect()
}

fn by_text<'a>(got: &'a Captured, text: &str) -> Vec<&'a Value> {
    queries(got).into_iter().filter(|r| r["text"] == text).collect()
}

#[test]
fn mariadb_queries_with_status_duration_and_long_text() {
    let Some(_one) = capture_test() else { return };
    let server = Mariadb::start();
    let capture = Capture::start(&["mysql"]);
    assert!(server.query(b"select 'marker one'"));
    assert!(!server.query(b"select * from no_such_table_here"));
    let long = format!("select '{}' as long_one", "y".repeat(5000));
    assert!(server.query(long.as_bytes()));
    let got = capture.stop();
    got.assert_clean_exit();
    for (text, success) in
        [("select 'marker one'", true), ("select * from no_such_table_here", false), (long.as_str(), true)]
    {
        let found = by_text(&got, text);
        assert_eq!(found.len(), 1, "{text:.40}: {:#?}", queries(&got));
        assert_eq!(found[0]["success"], success, "{text:.40}");
        assert_eq!(found[0]["server"], "mariadb");
        assert_eq!(found[0]["command"], "query");
        assert!(found[0]["duration_us"].as_f64().unwrap() > 0.0);
    }
}

#[test]
fn mariadb_concurrent_sessions_never_mix() {
    let Some(_one) = capture_test() else { return };
    let server = Mariadb::start();
    let capture = Capture::start(&["mysql"]);
    // A slow query in one session while another runs quick ones.
    let mut slow = server
        .client()
        .arg("-e")
        .arg("select sleep(1.5), 'slow session'")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // The quick ones while it runs: once the server lists it as running.
    wait_until("the slow query", || {
        let running = "select count(*) from information_schema.processlist \
                       where info = \"select sleep(1.5), 'slow session'\"";
        let out = server.client().args(["-N", "-e", running]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim() == "1"
    });
    for i in 0..5 {
        assert!(server.query(format!("select {i}, 'quick session'").as_bytes()));
    }
    assert!(slow.wait().unwrap().success());
    let got = capture.stop();
    got.assert_clean_exit();
    let slow = by_text(&got, "select sleep(1.5), 'slow session'");
    assert_eq!(slow.len(), 1);
    assert!(slow[0]["duration_us"].as_f64().unwrap() >= 1_400_000.0, "{}", slow[0]);
    for i in 0..5 {
        let quick = by_text(&got, &format!("select {i}, 'quick session'"));
        assert_eq!(quick.len(), 1);
        assert!(quick[0]["duration_us"].as_f64().unwrap() < 1_000_000.0, "{}", quick[0]);
        assert_ne!(quick[0]["tid"], slow[0]["tid"]);
    }
}

struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
}

impl Postgres {
    fn start() -> Postgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server binaries (Debian postgresql)")
            .filter_map(|e| Some(e.ok()?.path().join("bin")))
            .find(|p| p.join("postgres").exists())
            .expect("a PostgreSQL version directory");
        let dir = tempfile::tempdir().unwrap();
        let owner = |p: &Path| {
            assert!(Command::new("chown").args(["-R", "postgres"]).arg(p).status().unwrap().success())
        };
        owner(dir.path());
        let data = dir.path().join("data");
        let as_postgres = |args: String| {
            let status = Command::new("su")
                .args(["postgres", "-c", &args])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap();
            assert!(status.success(), "{args}");
        };
        as_postgres(format!("{}/initdb -D {} -A trust", bin.display(), data.display()));
        as_postgres(format!(
            "{}/pg_ctl -D {} -o \"-k {} -c listen_addresses=''\" -l {}/log start",
            bin.display(),
            data.display(),
            dir.path().display(),
            dir.path().display()
        ));
        let server = Postgres { dir, bin };
        wait_until("postgres", || server.psql(&["-c", "select 1"]));
        server
    }

    fn psql(&self, args: &[&str]) -> bool {
        Command::new("psql")
            .args(["-h", self.dir.path().to_str().unwrap(), "-U", "postgres", "-X", "-q"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Command::new("su")
            .args([
                "postgres",
                "-c",
                &format!(
                    "{}/pg_ctl -D {}/data -m immediate stop",
                    self.bin.display(),
                    self.dir.path().display()
                ),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

#[test]
fn postgres_simple_and_extended_protocol() {
    let Some(_one) = capture_test() else { return };
    let server = Postgres::start();
    let script = server.dir.path().join("extended.sql");
    std::fs::write(&script, "SELECT 42 AS extended_marker;\n").unwrap();
    let capture = Capture::start(&["postgres"]);
    assert!(server.psql(&["-c", "select 'simple marker'"]));
    assert!(!server.psql(&["-c", "select * from no_such_relation"]));
    let long = format!("select '{}' as long_one", "z".repeat(5000));
    assert!(server.psql(&["-c", &long]));
    let pgbench = Command::new("pgbench")
        .args([
            "-h",
            server.dir.path().to_str().unwrap(),
            "-U",
            "postgres",
            "-n",
            "-M",
            "extended",
            "-t",
            "3",
            "-f",
        ])
        .arg(&script)
        .arg("postgres")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(pgbench.success());
    let got = capture.stop();
    got.assert_clean_exit();
    for (text, success) in
        [("select 'simple marker'", true), ("select * from no_such_relation", false), (long.as_str(), true)]
    {
        let found = by_text(&got, text);
        assert_eq!(found.len(), 1, "{text:.40}: {:#?}", queries(&got));
        assert_eq!(found[0]["success"], success);
        assert_eq!(found[0]["user"], "postgres");
        assert_eq!(found[0]["database"], "postgres");
        assert!(found[0]["duration_us"].as_f64().unwrap() > 0.0);
    }
    let extended = by_text(&got, "SELECT 42 AS extended_marker;");
    assert_eq!(extended.len(), 3, "one record per execution: {:#?}", queries(&got));
    assert!(extended.iter().all(|r| r["success"] == true && r["server"] == "postgres"));
}

#[test]
fn server_without_symbols_is_named_clearly() {
    // A binary named like a server but without its functions.
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("mariadbd");
    std::fs::copy("/bin/sleep", &fake).unwrap();
    let Some(_one) = capture_test() else { return };
    let mut sleeper = Command::new(&fake).arg("20").spawn().unwrap();
    let capture = Capture::start(&["mysql"]);
    let got = capture.stop();
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert!(
        got.stderr.contains("no dispatch_command(enum_server_command, THD*, char*, ...)"),
        "{}",
        got.stderr
    );
}
