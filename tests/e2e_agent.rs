//! `cleartap agent` against real `nats-server -js` processes on loopback
//! ports held for them: events arrive once, in order, on their subjects, across
//! broker outages, full spools, restarts and kill -9.

mod support;

use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

/// A loopback port held for a broker: bound (port 0, the kernel picks)
/// with SO_REUSEADDR but not listening. nats-server (Go sets SO_REUSEADDR
/// too) binds and listens on it while it is held, so the port is the
/// broker's from before its first start to after its last stop: the agent
/// can be told of a broker that is down, and a restarted broker gets its
/// port back. Meanwhile connections to it are refused, and no bind to
/// port 0 or outgoing connection can take it.
struct HeldPort {
    _socket: std::os::fd::OwnedFd,
    port: u16,
}

impl HeldPort {
    fn new() -> HeldPort {
        use std::os::fd::FromRawFd;
        // SAFETY: plain socket calls on a descriptor this function owns;
        // the address structures are initialized and sized as passed.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
            let socket = std::os::fd::OwnedFd::from_raw_fd(fd);
            let one: libc::c_int = 1;
            let set = libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
            assert_eq!(set, 0, "SO_REUSEADDR: {}", std::io::Error::last_os_error());
            let mut addr: libc::sockaddr_in = std::mem::zeroed();
            addr.sin_family = libc::AF_INET as libc::sa_family_t;
            addr.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
            let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            let bound = libc::bind(fd, (&addr as *const libc::sockaddr_in).cast(), len);
            assert_eq!(bound, 0, "bind: {}", std::io::Error::last_os_error());
            let named = libc::getsockname(fd, (&mut addr as *mut libc::sockaddr_in).cast(), &mut len);
            assert_eq!(named, 0, "getsockname: {}", std::io::Error::last_os_error());
            HeldPort { _socket: socket, port: u16::from_be(addr.sin_port) }
        }
    }
}

/// `nats-server -js` with its store in a directory that outlives restarts.
struct Nats {
    port: HeldPort,
    store: PathBuf,
    child: Option<Child>,
    /// Cluster and monitoring options, for a node of a cluster.
    extra: Vec<String>,
}

impl Nats {
    fn new(dir: &Path) -> Nats {
        Nats { port: HeldPort::new(), store: dir.join("nats-store"), child: None, extra: Vec::new() }
    }

    fn started(dir: &Path) -> Nats {
        let mut nats = Nats::new(dir);
        nats.start();
        nats
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port.port)
    }

    /// Starts the server and waits until its log says it listens (for
    /// routes too, in a cluster: that listener comes after "ready").
    fn start(&mut self) {
        let mut child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.port.to_string(), "-sd"])
            .arg(&self.store)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting nats-server (scripts/install-deps --test installs it)");
        let (tx, rx) = mpsc::channel();
        let log = child.stderr.take().unwrap();
        // Reads the log to its end, past the lines waited for here.
        thread::spawn(move || {
            for line in BufReader::new(log).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut waiting = vec!["Server is ready"];
        if self.extra.iter().any(|a| a == "-cluster") {
            waiting.push("Listening for route connections on");
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut shown = String::new();
        while !waiting.is_empty() {
            let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) else {
                let _ = child.kill();
                let _ = child.wait();
                panic!("nats-server did not start (ended, or 20 s passed): {shown}");
            };
            waiting.retain(|w| !line.contains(w));
            shown += &(line + "\n");
        }
        self.child = Some(child);
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Every event of the stream (optionally `--host/--source` filtered).
    fn events(&self, filter: &[&str]) -> Vec<Value> {
        stream_events(&[self.url()], filter)
    }
}

/// Every event of the stream, read through `cleartap tail` from `urls`.
/// A cluster that just elected a new leader can refuse a request for a
/// while: tail is tried again then, for up to 20 s.
fn stream_events(urls: &[String], filter: &[&str]) -> Vec<Value> {
    let mut tail = Command::new(env!("CARGO_BIN_EXE_cleartap"));
    tail.args(["tail", "--all", "--no-follow"]).args(filter);
    for url in urls {
        tail.args(["--from", url]);
    }
    let mut attempts = 0;
    let out = loop {
        let out = tail.output().unwrap();
        attempts += 1;
        if out.status.success() || attempts == 20 {
            break out;
        }
        thread::sleep(Duration::from_secs(1));
    };
    assert!(out.status.success(), "tail: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Three JetStream nodes clustered on loopback, each with its monitoring
/// port (to find the stream's leader).
struct Cluster {
    nodes: Vec<Nats>,
    monitors: Vec<HeldPort>,
    _routes: Vec<HeldPort>,
}

impl Cluster {
    fn start(dir: &Path) -> Cluster {
        let routes: Vec<HeldPort> = (0..3).map(|_| HeldPort::new()).collect();
        let all_routes =
            routes.iter().map(|p| format!("nats://127.0.0.1:{}", p.port)).collect::<Vec<_>>().join(",");
        let monitors: Vec<HeldPort> = (0..3).map(|_| HeldPort::new()).collect();
        let mut nodes = Vec::new();
        for i in 0..3 {
            let mut node = Nats::new(&dir.join(format!("n{i}")));
            node.extra = ["-n", &format!("n{i}"), "--cluster_name", "cleartap-test"]
                .iter()
                .map(|s| s.to_string())
                .chain(["-cluster".into(), format!("nats://127.0.0.1:{}", routes[i].port)])
                .chain(["-routes".into(), all_routes.clone(), "-m".into(), monitors[i].port.to_string()])
                .collect();
            node.start();
            nodes.push(node);
        }
        Cluster { nodes, monitors, _routes: routes }
    }

    fn urls(&self) -> Vec<String> {
        self.nodes.iter().filter(|n| n.child.is_some()).map(Nats::url).collect()
    }

    /// The node leading stream CLEARTAP, once there is one.
    fn stream_leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            for port in &self.monitors {
                let Ok(mut conn) = TcpStream::connect(("127.0.0.1", port.port)) else { continue };
                let request = b"GET /jsz?streams=true&accounts=true HTTP/1.0\r\n\r\n";
                let mut response = String::new();
                if std::io::Write::write_all(&mut conn, request).is_err()
                    || conn.read_to_string(&mut response).is_err()
                {
                    continue;
                }
                let Some(body) = response.split("\r\n\r\n").nth(1) else { continue };
                let Ok(jsz) = serde_json::from_str::<Value>(body) else { continue };
                let streams = jsz["account_details"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|a| a["stream_detail"].as_array().cloned().unwrap_or_default());
                for stream in streams.filter(|s| s["name"] == "CLEARTAP") {
                    if let Some(leader) = stream["cluster"]["leader"].as_str() {
                        return leader.trim_start_matches('n').parse().unwrap();
                    }
                }
            }
            assert!(Instant::now() < deadline, "no leader for stream CLEARTAP");
            thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A running `cleartap agent`.
struct Agent {
    child: Child,
    stderr: mpsc::Receiver<String>,
    printed: String,
}

impl Agent {
    fn start(config: &Path) -> Agent {
        Self::start_with(config, &[])
    }

    fn start_with(config: &Path, extra: &[&str]) -> Agent {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cleartap"))
            .arg("agent")
            .args(extra)
            .arg("--config")
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut agent = Agent { child, stderr: rx, printed: String::new() };
        assert!(agent.wait_for("ready", Duration::from_secs(120)), "agent not ready: {}", agent.printed);
        agent
    }

    fn wait_for(&mut self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while let Ok(line) = self.stderr.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            self.printed += &(line.clone() + "\n");
            if line == needle || (needle != "ready" && line.contains(needle)) {
                return true;
            }
        }
        false
    }

    fn signal(&self, signal: i32) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// The port of `--metrics 127.0.0.1:0`, from what the agent printed.
    fn metrics_port(&self) -> u16 {
        let line = self.printed.lines().find(|l| l.starts_with("cleartap: metrics on http://"));
        let line = line.unwrap_or_else(|| panic!("no metrics address: {}", self.printed));
        port_of(&Value::from(line.trim_end_matches("/metrics"))).unwrap_or_else(|| panic!("{line}"))
    }

    /// SIGTERM; everything it printed; asserts exit 0.
    fn stop(mut self) -> String {
        // No pause first: the agent's stop drains what the kernel wrote.
        self.signal(libc::SIGTERM);
        let status = self.child.wait().unwrap();
        while let Ok(line) = self.stderr.recv_timeout(Duration::from_secs(5)) {
            self.printed += &(line + "\n");
        }
        assert!(status.success(), "agent exited with {status}: {}", self.printed);
        self.printed
    }

    fn kill_hard(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One scrape of the agent's metrics endpoint: the whole HTTP response.
fn scrape(port: u16) -> String {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
    std::io::Write::write_all(&mut conn, b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).unwrap();
    response
}

/// Scrapes until `done` holds for a scrape (or panics after `timeout`
/// with the last one); returns that scrape.
fn scrape_until(port: u16, timeout: Duration, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let m = scrape(port);
        if done(&m) {
            return m;
        }
        assert!(Instant::now() < deadline, "not reached in {timeout:?}: {m}");
        thread::sleep(Duration::from_millis(100));
    }
}

/// The value of metric `name` (with its labels) in a scrape.
fn metric(response: &str, name: &str) -> f64 {
    let line = response.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name}: {response}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

fn write_config(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("agent.toml");
    std::fs::write(
        &path,
        format!("host = \"web-1\"\nspool_dir = \"{}\"\n{body}", dir.join("spool").display()),
    )
    .unwrap();
    path
}

fn nats_sink(nats: &Nats) -> String {
    // The test broker listens on loopback without TLS.
    format!("[sinks.nats]\nurl = \"{}\"\nplaintext = true\n", nats.url())
}

/// Run `/bin/true MARKER-i` for each i: one exec event each.
fn execs(marker: &str, range: std::ops::Range<u32>) {
    for i in range {
        let status = Command::new("/bin/true").arg(format!("{marker}-{i}")).status().unwrap();
        assert!(status.success());
    }
}

/// `/bin/true MARKER-i` every 20 ms in a thread, until `stop`.
struct Steady {
    stop: Arc<AtomicBool>,
    ran: Arc<AtomicU32>,
    thread: thread::JoinHandle<u32>,
}

impl Steady {
    fn start(marker: &'static str) -> Steady {
        let stop = Arc::new(AtomicBool::new(false));
        let ran = Arc::new(AtomicU32::new(0));
        let (flag, count) = (Arc::clone(&stop), Arc::clone(&ran));
        let thread = thread::spawn(move || {
            let mut i = 0;
            while !flag.load(Ordering::Relaxed) {
                execs(marker, i..i + 1);
                i += 1;
                count.store(i, Ordering::Relaxed);
                // The pace of the flow, not synchronization.
                thread::sleep(Duration::from_millis(20));
            }
            i
        });
        Steady { stop, ran, thread }
    }

    /// Waits until `more` programs ran after those run so far.
    fn wait_for_more(&self, more: u32) {
        let want = self.ran.load(Ordering::Relaxed) + more;
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.ran.load(Ordering::Relaxed) < want {
            assert!(Instant::now() < deadline, "the steady flow stalled");
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// How many it ran.
    fn stop(self) -> u32 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// The argv[1] of the exec events carrying `marker`, in stream order.
fn marked(events: &[Value], marker: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["event"] == "exec")
        .filter_map(|e| e["argv"][1].as_str())
        .filter(|a| a.starts_with(marker))
        .map(String::from)
        .collect()
}

fn expected(marker: &str, range: std::ops::Range<u32>) -> Vec<String> {
    range.map(|i| format!("{marker}-{i}")).collect()
}

/// Every seq from 1 to the last, once, in order.
fn assert_seqs_contiguous(events: &[Value]) {
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    let want: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, want, "seq must count 1, 2, 3... with no gap or repeat");
}

#[test]
fn a_tls_exchange_arrives_once_byte_exact_on_its_subject() {
    let Some(_one) = capture_test() else { return };
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::started(dir.path());
    let config = write_config(dir.path(), &format!("[sources.tls]\ncomm = \"curl\"\n{}", nats_sink(&nats)));
    // The server first: the library it maps is attached before `ready`
    // (a file first seen after start is attached within ms, and curl's
    // first write could come sooner; see docs/capture.md).
    let server = TlsServer::start();
    let agent = Agent::start(&config);
    let body = b"agent-marker: the one and only body";
    let response = curl(&server, body, 5000);
    let printed = agent.stop();

    let events = nats.events(&["--host", "web-1", "--source", "tls"]);
    let got = Captured { records: events.clone(), stderr: String::new(), status: Default::default() };
    // Exactly what the server received from curl and sent it, once.
    let peer = single_peer(&server);
    assert_eq!(http_body(&server.received_from(peer)), body);
    assert_eq!(http_body(&server.sent_to(peer)), response);
    let sent = got.stream("send", |r| r["comm"] == "curl");
    if *sent != server.received_from(peer) {
        eprintln!("agent printed:\n{printed}\nevents: {events:?}");
    }
    assert_same_bytes(&sent, &server.received_from(peer), "send stream");
    assert_same_bytes(&got.stream("recv", |r| r["comm"] == "curl"), &server.sent_to(peer), "recv stream");
    assert!(events.iter().all(|e| e["host"] == "web-1"));
    assert!(nats.events(&["--source", "exec"]).is_empty(), "subjects: nothing under .exec");

    // The same events as text, in the live layout (unit tests check it
    // line for line): a header per record led by the host, then the data.
    let text = tail_text(&nats.url(), &["--host", "web-1", "--source", "tls"]);
    let headers: Vec<&str> = text.lines().filter(|l| l.starts_with("web-1 ")).collect();
    assert_eq!(headers.len(), events.len(), "{text}");
    let sends = headers.iter().filter(|l| l.contains(" curl[") && l.contains(" send fd=")).count();
    assert_eq!(sends, events.iter().filter(|e| e["comm"] == "curl" && e["direction"] == "send").count());
    // Once in the SSL_write record, once in the decoded request's preview.
    let previews = events
        .iter()
        .filter(|e| e["request_body_preview"].as_str() == Some("agent-marker: the one and only body"));
    assert_eq!(previews.count(), 1, "{events:?}");
    assert_eq!(text.matches("agent-marker: the one and only body").count(), 2, "{text}");
}

fn tail_text(url: &str, filter: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_cleartap"))
        .args(["tail", "--all", "--no-follow", "--format", "text", "--from", url])
        .args(filter)
        .output()
        .unwrap();
    assert!(out.status.success(), "tail: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn events_survive_broker_outages_in_order_and_once() {
    let Some(_one) = capture_test() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut nats = Nats::new(dir.path());
    let config = write_config(dir.path(), &format!("[sources.exec]\n{}", nats_sink(&nats)));
    // The broker is down when the agent starts: everything is spooled.
    let mut agent = Agent::start(&config);
    execs("outage-a", 0..20);
    nats.start();
    // A steady flow; the broker is killed for 10 s in the middle of it and
    // restarted on the same store.
    // (The sleeps are the scenario: 1 s of flow, 10 s of outage, 1 s of
    // flow after the agent is publishing again.)
    let steady = Steady::start("steady");
    thread::sleep(Duration::from_secs(1));
    nats.stop();
    thread::sleep(Duration::from_secs(10));
    nats.start();
    assert!(agent.wait_for("publishing again", Duration::from_secs(30)), "{}", agent.printed);
    thread::sleep(Duration::from_secs(1));
    let count = steady.stop();
    let printed = agent.stop();

    let events = nats.events(&[]);
    assert_seqs_contiguous(&events);
    assert_eq!(marked(&events, "outage-a"), expected("outage-a", 0..20), "{printed}");
    assert_eq!(marked(&events, "steady"), expected("steady", 0..count), "{printed}");
    assert!(printed.contains("NATS publish failed") || printed.contains("NATS disconnected"), "{printed}");
    assert!(printed.contains("0 events left in the spool"), "{printed}");
}

#[test]
fn a_cluster_losing_its_stream_leader_mid_flow_keeps_every_event_once() {
    let Some(_one) = capture_test() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path());
    let urls = cluster.urls().iter().map(|u| format!("\"{u}\"")).collect::<Vec<_>>().join(", ");
    let config = write_config(
        dir.path(),
        &format!("[sources.exec]\n[sinks.nats]\nurl = [{urls}]\nreplicas = 3\nplaintext = true\n"),
    );
    let agent = Agent::start_with(&config, &["--metrics", "127.0.0.1:0"]);
    let port = agent.metrics_port();
    let steady = Steady::start("clustered");
    let leader = cluster.stream_leader();
    // The scenario: 1 s of flow, the leader killed, 3 s of flow while a
    // new leader is elected and the agent goes on through the other nodes.
    thread::sleep(Duration::from_secs(1));
    cluster.nodes[leader].stop();
    thread::sleep(Duration::from_secs(3));
    let count = steady.stop();
    // Stop once everything is acknowledged (the election takes its time).
    scrape_until(port, Duration::from_secs(60), |m| {
        let events = metric(m, "cleartap_events_total{source=\"exec\"}");
        metric(m, "cleartap_spool_bytes") == 0.0 && metric(m, "cleartap_nats_acked_total") >= events
    });
    let printed = agent.stop();

    let events = stream_events(&cluster.urls(), &[]);
    assert_seqs_contiguous(&events);
    assert_eq!(marked(&events, "clustered"), expected("clustered", 0..count), "{printed}");
    assert!(printed.contains("0 events left in the spool"), "{printed}");
}

#[test]
fn a_full_spool_drops_counts_exactly_and_reports_the_loss() {
    let Some(_one) = capture_test() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut nats = Nats::new(dir.path());
    let config = write_config(
        dir.path(),
        &format!("spool_max_bytes = \"16KiB\"\n[sources.exec]\n{}", nats_sink(&nats)),
    );
    let mut agent = Agent::start_with(&config, &["--metrics", "127.0.0.1:0"]);
    execs("full", 0..200);
    // The broker starts once the spool is full: events dropped, and at
    // least as many seen as ran here.
    scrape_until(agent.metrics_port(), Duration::from_secs(30), |m| {
        metric(m, "cleartap_spool_dropped_total") > 0.0
            && metric(m, "cleartap_events_total{source=\"exec\"}") >= 200.0
    });
    nats.start();
    // The loss event goes out once the spool drained enough to hold it.
    let reported = agent.wait_for("events dropped: the NATS spool was full", Duration::from_secs(60));
    assert!(reported, "{}", agent.printed);
    let printed = agent.stop();

    let events = nats.events(&[]);
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    let last = *seqs.iter().max().unwrap();
    let missing = last - seqs.len() as u64;
    let reported: u64 =
        events.iter().filter(|e| e["event"] == "loss").map(|e| e["count"].as_u64().unwrap()).sum();
    // Dropped events at the very end still leave a gap: the loss event
    // that reports them takes the next seq.
    assert!(missing > 0, "16 KiB cannot hold 200 exec events: {printed}");
    assert_eq!(reported, missing, "loss events count every seq that is missing: {printed}");
    let kept = marked(&events, "full");
    assert!(!kept.is_empty() && kept.len() < 200);
    let dropped_line = printed.lines().find(|l| l.starts_with("cleartap: nats:")).unwrap();
    assert!(dropped_line.contains(&format!("{missing} dropped (spool full)")), "{dropped_line}");
}

#[test]
fn a_stopped_agent_keeps_its_spool_and_a_killed_one_loses_only_a_torn_tail() {
    let Some(_one) = capture_test() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut nats = Nats::new(dir.path());
    let config = write_config(dir.path(), &format!("[sources.exec]\n{}", nats_sink(&nats)));
    // SIGTERM with the broker down: the events wait in the spool.
    let agent = Agent::start(&config);
    execs("term", 0..10);
    let printed = agent.stop();
    assert!(!printed.contains(" 0 events left in the spool"), "{printed}");
    // kill -9 with the broker down, then a half-written record at the end.
    let agent = Agent::start(&config);
    execs("killed", 0..10);
    // The kill once the spool's files hold the ten events (written at the
    // agent's next flush).
    let segments = || -> Vec<PathBuf> {
        let mut found: Vec<PathBuf> = std::fs::read_dir(dir.path().join("spool"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .collect();
        found.sort();
        found
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let spooled: Vec<u8> = segments().iter().flat_map(|p| std::fs::read(p).unwrap_or_default()).collect();
        let holds = |i: u32| {
            let argv1 = format!("\"killed-{i}\"");
            spooled.windows(argv1.len()).any(|w| w == argv1.as_bytes())
        };
        if (0..10).all(holds) {
            break;
        }
        assert!(Instant::now() < deadline, "the spool did not get the ten events");
        thread::sleep(Duration::from_millis(20));
    }
    agent.kill_hard();
    let last_segment = segments().pop().unwrap();
    let mut torn = std::fs::OpenOptions::new().append(true).open(&last_segment).unwrap();
    std::io::Write::write_all(&mut torn, &[200, 0, 0, 0, 1, 2, 3, 4, b'{']).unwrap();
    drop(torn);

    nats.start();
    let agent = Agent::start(&config);
    assert!(agent.printed.contains("torn record"), "{}", agent.printed);
    execs("after", 0..10);
    agent.stop();
    let events = nats.events(&[]);
    for marker in ["term", "killed", "after"] {
        assert_eq!(marked(&events, marker), expected(marker, 0..10), "{marker}");
    }
    // The spooled events of earlier runs come first.
    // Only this test's programs: the host may run others meanwhile.
    let order: Vec<String> = marked(&events, "")
        .into_iter()
        .map(|a| a.split('-').next().unwrap().to_string())
        .filter(|m| ["term", "killed", "after"].contains(&m.as_str()))
        .collect();
    let first_after = order.iter().position(|m| m == "after").unwrap();
    assert!(order[..first_after].iter().all(|m| m == "term" || m == "killed"));
}

#[test]
fn sighup_adds_and_changes_sources_without_stopping_the_others() {
    let Some(_one) = capture_test() else { return };
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::started(dir.path());
    let sink = nats_sink(&nats);
    let config = write_config(dir.path(), &format!("[sources.exec]\n{sink}"));
    let mut agent = Agent::start(&config);
    let steady = Steady::start("steady");
    // Some of the flow before the reloads, and some after them.
    steady.wait_for_more(20);
    write_config(dir.path(), &format!("[sources.exec]\n[sources.shell]\n{sink}"));
    agent.signal(libc::SIGHUP);
    assert!(agent.wait_for("cleartap: reloaded", Duration::from_secs(60)), "{}", agent.printed);
    // A filter changed: that source restarts, exec still does not.
    write_config(dir.path(), &format!("[sources.exec]\n[sources.shell]\nuid = 0\n{sink}"));
    agent.signal(libc::SIGHUP);
    assert!(agent.wait_for("restarted [\"shell\"]", Duration::from_secs(60)), "{}", agent.printed);
    steady.wait_for_more(20);
    let count = steady.stop();
    let printed = agent.stop();
    assert!(printed.contains("stopped [], restarted [], started [\"shell\"]"), "{printed}");
    let events = nats.events(&[]);
    assert_eq!(
        marked(&events, "steady"),
        expected("steady", 0..count),
        "exec kept running across the reload"
    );
}

#[test]
fn bad_configurations_exit_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (body, key) in [
        ("[sources.exec]\npidd = 1\n[sinks.file]\npath = \"/tmp/x\"\n", "sources.exec.pidd"),
        ("[sources.exec]\npid = \"one\"\n[sinks.file]\npath = \"/tmp/x\"\n", "sources.exec.pid"),
        ("[sources.exec]\n", "no sink"),
        ("[sources.exec]\n[sinks.nats]\nurl = \"nats://bad host:1\"\n", "sinks.nats.url"),
        (
            "[sources.exec]\n[sinks.nats]\nurl = \"nats://127.0.0.1:1\"\ncreds = \"/nonexistent.creds\"\n",
            "sinks.nats.creds",
        ),
        ("spool_max_bytes = \"lots\"\n[sources.exec]\n[sinks.file]\npath = \"/tmp/x\"\n", "spool_max_bytes"),
    ] {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, body).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_cleartap"))
            .args(["agent", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{body}: {stderr}");
        assert!(stderr.contains(key), "{body}: {stderr}");
    }
}

#[test]
fn metrics_are_served_in_prometheus_text_format() {
    let Some(_one) = capture_test() else { return };
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::started(dir.path());
    let config = write_config(dir.path(), &format!("[sources.exec]\n{}", nats_sink(&nats)));
    let agent = Agent::start_with(&config, &["--metrics", "127.0.0.1:0"]);
    execs("metrics", 0..5);
    let response = scrape_until(agent.metrics_port(), Duration::from_secs(30), |m| {
        metric(m, "cleartap_events_total{source=\"exec\"}") >= 5.0
            && metric(m, "cleartap_nats_acked_total") >= 5.0
    });
    agent.stop();
    assert!(response.starts_with("HTTP/1.0 200 OK\r\n"), "{response}");
    assert!(response.contains("text/plain; version=0.0.4"), "{response}");
    let value = |name: &str| metric(&response, name);
    assert!(value("cleartap_events_total{source=\"exec\"}") >= 5.0);
    assert!(value("cleartap_nats_acked_total") >= 5.0);
    assert_eq!(value("cleartap_kernel_lost_records_total{source=\"exec\"}"), 0.0);
    assert_eq!(value("cleartap_spool_dropped_total"), 0.0);
    for name in ["cleartap_nats_published_total", "cleartap_nats_retried_total", "cleartap_spool_bytes"] {
        value(name);
    }
}

/// Each source has a ring buffer of its own (`agent::capture`): a TLS
/// source that loses records (here every record larger than its 4 KiB
/// ring, counted) costs the exec source beside it none of its events.
#[test]
fn a_source_losing_records_costs_the_others_none() {
    let Some(_one) = capture_test() else { return };
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::started(dir.path());
    let sink = nats_sink(&nats);
    let config = write_config(
        dir.path(),
        &format!("[sources.tls]\ncomm = \"curl\"\nringbuf_size = \"4K\"\n[sources.exec]\n{sink}"),
    );
    let server = TlsServer::start();
    let agent = Agent::start_with(&config, &["--metrics", "127.0.0.1:0"]);
    let steady = Steady::start("isolated");
    let body = vec![b'x'; 1 << 20];
    for _ in 0..3 {
        assert_eq!(curl(&server, &body, 1 << 20).len(), 1 << 20);
    }
    steady.wait_for_more(10);
    let count = steady.stop();
    let response = scrape_until(agent.metrics_port(), Duration::from_secs(30), |m| {
        metric(m, "cleartap_kernel_lost_records_total{source=\"tls\"}") > 0.0
    });
    let printed = agent.stop();
    assert_eq!(metric(&response, "cleartap_kernel_lost_records_total{source=\"exec\"}"), 0.0, "{printed}");
    let events = nats.events(&[]);
    assert_eq!(marked(&events, "isolated"), expected("isolated", 0..count), "{printed}");
}

/// The file sink alone: every exec event once, as JSON lines led by host
/// and a contiguous seq, in a private file that rotates between lines.
#[test]
fn a_file_sink_gets_every_event_in_whole_rotated_lines() {
    let Some(_one) = capture_test() else { return };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log/events.jsonl");
    let sink = format!("[sinks.file]\npath = \"{}\"\nmax_bytes = \"4KiB\"\nkeep = 100\n", path.display());
    let config = write_config(dir.path(), &format!("[sources.exec]\n{sink}"));
    let agent = Agent::start(&config);
    execs("file-sink", 0..30);
    let printed = agent.stop();
    let mut files: Vec<PathBuf> =
        (1..=100).map(|n| PathBuf::from(format!("{}.{n}", path.display()))).collect();
    files.retain(|p| p.exists());
    files.reverse(); // oldest first
    files.push(path.clone());
    assert!(files.len() > 1, "no rotation at 4 KiB: {printed}");
    let mut events = Vec::new();
    for file in &files {
        assert_eq!(std::fs::metadata(file).unwrap().permissions().mode() & 0o777, 0o600);
        let text = std::fs::read_to_string(file).unwrap();
        assert!(text.ends_with('\n'), "{} ends inside a line", file.display());
        events.extend(text.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()));
    }
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "seq contiguous from 1");
    assert!(events.iter().all(|e| e["host"] == "web-1"));
    for i in 0..30 {
        let marker = format!("file-sink-{i}");
        let found = events.iter().filter(|e| e["event"] == "exec" && e["argv"][1] == marker.as_str()).count();
        assert_eq!(found, 1, "{marker}: {printed}");
    }
}
