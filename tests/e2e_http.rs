//! `cleartap tls --decode ...`: HTTP/1.1 and HTTP/2 exchanges decoded from
//! captured plaintext, against Debian's nginx and curl.

mod support;

use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

struct Nginx {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
    _cert: Certificate,
}

const BIG_LINE: &str = "hello from nginx, compressible text\n";

impl Nginx {
    /// nginx on a free port: one picked by the kernel, and another if
    /// something took it before nginx could bind it.
    fn start() -> Nginx {
        for _ in 0..10 {
            match Nginx::start_on(free_port()) {
                Ok(nginx) => return nginx,
                Err(log) if log.contains("Address already in use") => eprintln!("nginx: {log}; another port"),
                Err(log) => panic!("nginx did not start: {log}"),
            }
        }
        panic!("nginx found no free port in 10 tries");
    }

    /// nginx listening on `port`, or its error log.
    fn start_on(port: u16) -> Result<Nginx, String> {
        let cert = Certificate::new();
        let dir = tempfile::tempdir().unwrap();
        let www = dir.path().join("www");
        std::fs::create_dir(&www).unwrap();
        std::fs::write(www.join("big.txt"), BIG_LINE.repeat(300)).unwrap();
        std::fs::write(www.join("small.txt"), "small body\n").unwrap();
        std::fs::write(www.join("data.bin"), payload(5000, 9)).unwrap();
        let d = dir.path().display();
        let conf = format!(
            "daemon off; master_process off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log;
             events {{ worker_connections 64; }}
             http {{
                 access_log off;
                 client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;
                 uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
                 types {{ text/plain txt; application/octet-stream bin; }}
                 server {{
                     listen 127.0.0.1:{port} ssl http2;
                     ssl_certificate {}; ssl_certificate_key {};
                     root {d}/www;
                     gzip on; gzip_types text/plain; gzip_min_length 0;
                 }}
             }}",
            cert.cert().display(),
            cert.key().display()
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        let child = Command::new("nginx")
            .args(["-p", dir.path().to_str().unwrap(), "-c"])
            .arg(dir.path().join("nginx.conf"))
            .stderr(Stdio::null())
            .spawn()
            .expect("starting nginx (Debian nginx-light)");
        let mut nginx = Nginx { child, dir, port, _cert: cert };
        // nginx writes its pid file once its listening socket is open (a
        // connect could reach whoever else holds the port); it exits if
        // the bind fails (after retrying for about 2 s).
        let pid_file = nginx.dir.path().join("nginx.pid");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let pid = std::fs::read_to_string(&pid_file).unwrap_or_default();
            if pid.trim() == nginx.child.id().to_string() {
                return Ok(nginx);
            }
            let log = || std::fs::read_to_string(nginx.dir.path().join("error.log")).unwrap_or_default();
            if nginx.child.try_wait().unwrap().is_some() {
                return Err(log());
            }
            assert!(Instant::now() < deadline, "nginx did not start in 30 s: {}", log());
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}/{path}", self.port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port free now, picked by the kernel: `Nginx::start` tries another
/// if it is taken by the time nginx binds it.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn curl_urls(args: &[&str], urls: &[String]) {
    let out = Command::new("curl")
        .args(["-sSk", "-H", "Accept-Encoding: gzip"])
        .args(args)
        .args(urls.iter().flat_map(|u| [u.as_str(), "-o", "/dev/null"]))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn exchanges<'a>(got: &'a Captured, comm: &str) -> Vec<&'a Value> {
    got.records.iter().filter(|r| r["event"] == "http" && r["comm"] == comm).collect()
}

fn header<'a>(r: &'a Value, side: &str, name: &str) -> Option<&'a str> {
    r[side].as_array()?.iter().find(|h| h[0].as_str().is_some_and(|n| n.eq_ignore_ascii_case(name)))?[1]
        .as_str()
}

#[test]
fn http1_keep_alive_gzip_chunked_both_sides() {
    let Some(_one) = capture_test() else { return };
    let nginx = Nginx::start();
    let capture = Capture::start(&["tls", "--body", "100000"]);
    let urls = [nginx.url("big.txt"), nginx.url("small.txt"), nginx.url("missing.txt")];
    curl_urls(&["--http1.1"], &urls);
    let got = capture.stop();
    got.assert_clean_exit();
    for comm in ["curl", "nginx"] {
        let ex = exchanges(&got, comm);
        let paths: Vec<_> = ex.iter().map(|r| r["path"].as_str().unwrap()).collect();
        assert_eq!(paths, ["/big.txt", "/small.txt", "/missing.txt"], "{comm}: {ex:#?}");
        let statuses: Vec<_> = ex.iter().map(|r| r["status"].as_u64().unwrap()).collect();
        assert_eq!(statuses, [200, 200, 404], "{comm}");
        let big = ex[0];
        assert_eq!(big["protocol"], "HTTP/1.1");
        assert_eq!(big["method"], "GET");
        assert_eq!(header(big, "response_headers", "content-encoding"), Some("gzip"));
        assert_eq!(header(big, "response_headers", "transfer-encoding"), Some("chunked"));
        assert_eq!(big["response_body_preview"], BIG_LINE.repeat(300), "{comm}: decompressed body");
        assert_eq!(big["response_body_decoded_size"], BIG_LINE.len() * 300);
        assert!(big["latency_us"].as_f64().unwrap() > 0.0);
        // One connection for the three requests: keep-alive.
        assert!(ex.iter().all(|r| r["local"] == big["local"] && r["remote"] == big["remote"]));
    }
    // The raw records are still there (--decode both is the default).
    assert!(got.records.iter().any(|r| r["event"] == "tls"));
}

#[test]
fn http2_multiplexed_streams_and_decode_http_only() {
    let Some(_one) = capture_test() else { return };
    let nginx = Nginx::start();
    let capture = Capture::start(&["tls", "--decode", "http", "--body", "100000"]);
    let urls = [nginx.url("big.txt"), nginx.url("small.txt"), nginx.url("data.bin")];
    curl_urls(&["--http2", "--parallel", "--parallel-max", "3"], &urls);
    let got = capture.stop();
    got.assert_clean_exit();
    assert!(got.records.iter().all(|r| r["event"] == "http"), "--decode http: no raw records");
    // Both ends of the connection. nginx writes its SETTINGS before it
    // reads curl's preface: its exchanges must not claim to have started
    // before the capture.
    for comm in ["curl", "nginx"] {
        let mut ex = exchanges(&got, comm);
        ex.sort_by_key(|r| r["path"].as_str().unwrap().to_string());
        let paths: Vec<_> = ex.iter().map(|r| r["path"].as_str().unwrap()).collect();
        assert_eq!(paths, ["/big.txt", "/data.bin", "/small.txt"], "{comm}: {ex:#?}");
        for r in &ex {
            assert_eq!(r["protocol"], "HTTP/2");
            assert_eq!(r["status"], 200);
            assert_eq!(r["authority"], format!("127.0.0.1:{}", nginx.port));
            assert!(r["stream_id"].as_u64().unwrap() % 2 == 1, "client streams are odd: {r}");
            assert!(r.get("notes").is_none(), "{comm}: {r}");
        }
        assert_eq!(ex[0]["response_body_preview"], BIG_LINE.repeat(300), "{comm}");
        assert_eq!(ex[2]["response_body_preview"], "small body\n", "{comm}");
        assert_eq!(ex[1]["response_body_size"], 5000, "{comm}");
        let ids: std::collections::HashSet<_> = ex.iter().map(|r| r["stream_id"].as_u64().unwrap()).collect();
        assert_eq!(ids.len(), 3, "{comm}: three streams on one connection");
    }
}

#[test]
fn non_http_traffic_stays_raw() {
    let Some(_one) = capture_test() else { return };
    let dir = tempfile::tempdir().unwrap();
    // Bytes that are not HTTP: noise, and a protocol that starts like an
    // HTTP request line and is not one.
    let noise = payload(20_000, 9);
    let mut lookalike = b"GET TING\x00 STARTED \xff\xfe".to_vec();
    lookalike.extend(payload(3000, 4));
    let files: Vec<_> = [&noise, &lookalike]
        .iter()
        .enumerate()
        .map(|(i, bytes)| {
            let path = dir.path().join(format!("payload{i}"));
            std::fs::write(&path, bytes).unwrap();
            path
        })
        .collect();
    let cert = Certificate::new();
    let capture = Capture::start(&["tls", "--comm", "python3"]);
    let out = Command::new("python3")
        .arg(support_dir().join("echo_pair.py"))
        .arg(cert.cert())
        .arg(cert.key())
        .args(&files)
        .output()
        .expect("python3");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ports: Vec<u16> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| l.parse().unwrap()).collect();
    let got = capture.stop();
    got.assert_clean_exit();
    assert_eq!(got.records.iter().filter(|r| r["event"] == "http").count(), 0, "nothing here is HTTP");
    for (port, sent) in ports.iter().zip([&noise, &lookalike]) {
        let client = |r: &Value| port_of(&r["local"]) == Some(*port);
        let server = |r: &Value| port_of(&r["remote"]) == Some(*port);
        assert_same_bytes(&got.stream("send", client), sent, "client send");
        assert_same_bytes(&got.stream("recv", client), sent, "client recv");
        assert_same_bytes(&got.stream("recv", server), sent, "server recv");
        assert_same_bytes(&got.stream("send", server), sent, "server send");
    }
}
