//! `cleartap tls` against real programs: curl (SSL_write/SSL_read) and a
//! Python server (SSL_write_ex/SSL_read_ex), byte-exact both ways.

mod support;

use std::process::Command;

use support::*;

fn pid_and_remote(pid: u32, remote_port: u16) -> impl Fn(&serde_json::Value) -> bool {
    move |r| r["pid"] == pid && port_of(&r["remote"]) == Some(remote_port)
}

/// Run curl once with `body`, asking for `response_size` bytes, under a
/// capture limited to curl and the server, and check all four streams.
fn check_curl_exchange(body_size: usize, response_size: usize) {
    let server = TlsServer::start();
    let capture = Capture::start(&["tls"]);
    let body = payload(body_size, 7);
    let response = curl(&server, &body, response_size);
    let got = capture.stop();
    got.assert_clean_exit();
    assert_eq!(response.len(), response_size);

    let ports = server.peer_ports();
    assert_eq!(ports.len(), 1, "one connection expected");
    let curl_port = ports[0];
    let truth_recv = server.received_from(curl_port);
    let truth_sent = server.sent_to(curl_port);
    assert!(truth_recv.ends_with(&body));
    assert!(truth_sent.ends_with(&response));

    // The server side, through SSL_read_ex / SSL_write_ex.
    let server_side = pid_and_remote(server.pid(), curl_port);
    assert_same_bytes(&got.stream("recv", &server_side), &truth_recv, "server recv stream");
    assert_same_bytes(&got.stream("send", &server_side), &truth_sent, "server send stream");
    let functions: Vec<_> = got.tls().filter(|r| server_side(r)).map(|r| r["function"].clone()).collect();
    assert!(functions.iter().any(|f| f == "SSL_read_ex") && functions.iter().any(|f| f == "SSL_write_ex"));

    // The client side: curl, with its tuple mirroring the server's.
    let curl_side = |r: &serde_json::Value| r["comm"] == "curl";
    assert_same_bytes(&got.stream("send", curl_side), &truth_recv, "curl send stream");
    assert_same_bytes(&got.stream("recv", curl_side), &truth_sent, "curl recv stream");
    for r in got.tls().filter(|r| curl_side(r)) {
        assert_eq!(port_of(&r["local"]), Some(curl_port), "{r}");
        assert_eq!(port_of(&r["remote"]), Some(server.port), "{r}");
        assert_eq!(r["library"], "openssl");
        assert!(r["fd"].as_i64().unwrap() > 2, "{r}");
        assert!(r["library_path"].as_str().unwrap().contains("libssl.so"), "{r}");
    }
}

#[test]
fn small_bodies_both_processes_both_directions() {
    let Some(_one) = capture_test() else { return };
    check_curl_exchange(100, 200);
}

#[test]
fn multi_mib_bodies_arrive_whole_and_in_order() {
    let Some(_one) = capture_test() else { return };
    check_curl_exchange(3 << 20, 10 << 20);
}

#[test]
fn pid_filter_keeps_only_that_process() {
    let Some(_one) = capture_test() else { return };
    let server = TlsServer::start();
    let mut client = TlsClient::connect(&server);
    let pid = client.pid().to_string();
    let capture = Capture::start(&["tls", "--pid", &pid]);
    client.exchange(1000, 2000);
    curl(&server, b"other client", 10); // concurrent other client: must not appear
    let got = capture.stop();
    got.assert_clean_exit();
    assert!(got.tls().next().is_some(), "no TLS records");
    assert!(got.tls().all(|r| r["pid"] == client.pid()), "other pids captured");
    let mine = |r: &serde_json::Value| r["pid"] == client.pid();
    assert_same_bytes(&got.stream("send", mine), &server.received_from(client.local_port), "send stream");
    assert_same_bytes(&got.stream("recv", mine), &server.sent_to(client.local_port), "recv stream");
}

#[test]
fn comm_filter_keeps_only_that_command() {
    let Some(_one) = capture_test() else { return };
    let server = TlsServer::start();
    let mut client = TlsClient::connect(&server);
    let capture = Capture::start(&["tls", "--comm", "curl"]);
    client.exchange(10, 10); // python3: must not appear
    curl(&server, b"hello from curl", 5);
    let got = capture.stop();
    got.assert_clean_exit();
    assert!(got.tls().next().is_some(), "no TLS records");
    assert!(got.tls().all(|r| r["comm"] == "curl"));
    // curl's port as the server saw it: its one peer besides the client.
    let mut ports = server.peer_ports();
    ports.sort_unstable();
    assert_eq!(ports.len(), 2, "{ports:?}");
    let port = *ports.iter().find(|p| **p != client.local_port).unwrap();
    assert!(got.tls().all(|r| port_of(&r["local"]) == Some(port)), "records not on curl's connection");
    // curl's side, byte for byte, as the server saw it.
    assert_same_bytes(&got.stream("send", |_| true), &server.received_from(port), "curl send");
    assert_same_bytes(&got.stream("recv", |_| true), &server.sent_to(port), "curl recv");
    assert_eq!(http_body(&server.received_from(port)), b"hello from curl");
}

#[test]
fn connection_opened_before_start_has_its_tuple() {
    let Some(_one) = capture_test() else { return };
    let server = TlsServer::start();
    let mut client = TlsClient::connect(&server);
    client.exchange(5, 5); // before cleartap exists
    let pid = client.pid().to_string();
    let capture = Capture::start(&["tls", "--pid", &pid]);
    client.exchange(300, 400);
    let got = capture.stop();
    got.assert_clean_exit();
    assert!(got.tls().next().is_some(), "no TLS records");
    for r in got.tls() {
        assert_eq!(port_of(&r["local"]), Some(client.local_port), "{r}");
        assert_eq!(port_of(&r["remote"]), Some(server.port), "{r}");
        assert_eq!(r["local"].as_str().unwrap(), format!("127.0.0.1:{}", client.local_port));
    }
}

#[test]
fn lib_without_tls_symbols_is_a_clear_error() {
    if !require_bpf() {
        return;
    }
    let out =
        Command::new(env!("CARGO_BIN_EXE_cleartap")).args(["tls", "--lib", "/bin/true"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/bin/true defines none of the openssl functions"), "{err}");
}

#[test]
fn not_root_is_a_clear_error() {
    let out = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_cleartap"))
        .arg("tls")
        .output();
    let out = out.expect("setpriv (util-linux; scripts/install-deps --test)");
    if !out.status.success() || !out.stderr.is_empty() {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !err.contains("setpriv:"),
            "setpriv could not switch to uid 65534 (the tests run as root): {err}"
        );
        assert!(
            err.contains("missing capabilities: CAP_SYS_ADMIN") && err.contains("run it as root"),
            "{err}"
        );
    }
}

/// `openssl s_server -www` reads and writes through an SSL BIO, which calls
/// libssl's internal functions and no exported SSL_read/SSL_write: cleartap
/// probes those internal functions (see `sources::openssl`), so the
/// server's side is captured too, named by the internal function, while
/// curl's records name the API function curl called.
#[test]
fn the_ssl_bio_of_openssl_s_server_is_captured_at_the_internal_functions() {
    let Some(_one) = capture_test() else { return };
    let cert = Certificate::new();
    let (mut server, port) = openssl_s_server::<&str>(&cert, &[]);
    let capture = Capture::start(&["tls"]);
    let page = Command::new("curl")
        .args(["-sk", "--http1.1", &format!("https://127.0.0.1:{port}/bio-marker")])
        .output()
        .expect("running curl");
    let got = capture.stop();
    let _ = server.kill();
    let _ = server.wait();
    got.assert_clean_exit();
    assert!(page.status.success() && !page.stdout.is_empty(), "curl failed: {page:?}");

    let server_side = |r: &serde_json::Value| r["pid"] == server.id();
    let curl_side = |r: &serde_json::Value| r["comm"] == "curl";
    let request = got.stream("send", curl_side);
    assert!(request.starts_with(b"GET /bio-marker HTTP/1.1\r\n"), "{}", String::from_utf8_lossy(&request));
    assert_same_bytes(&got.stream("recv", server_side), &request, "s_server recv stream");
    let response = got.stream("send", server_side);
    assert!(response.ends_with(&page.stdout), "s_server's send stream ends with the page curl printed");
    assert_same_bytes(&got.stream("recv", curl_side), &response, "curl recv stream");
    let names = |side: &dyn Fn(&serde_json::Value) -> bool| {
        let mut n: Vec<String> =
            got.tls().filter(|r| side(r)).map(|r| r["function"].as_str().unwrap().to_string()).collect();
        n.sort();
        n.dedup();
        n
    };
    assert_eq!(names(&server_side), ["ssl_read_internal", "ssl_write_internal"]);
    assert_eq!(names(&curl_side), ["SSL_read", "SSL_write"]);
}

/// A library in the loader's directories is probed before `ready`, whether
/// or not a process maps it: a program that loads it later is captured
/// from its first call (attaching when it opens the file races with that
/// call; see `non_http_traffic_stays_raw`, which runs right after start).
#[test]
fn system_libraries_are_probed_at_start() {
    let Some(_one) = capture_test() else { return };
    let capture = Capture::start(&["tls"]);
    let before_ready = capture.stderr_so_far().to_string();
    capture.stop().assert_clean_exit();
    for (soname, library) in
        [("libssl.so.3", "openssl"), ("libgnutls.so.30", "gnutls"), ("libnspr4.so", "nss")]
    {
        let line = format!("attached to {} ({library}", system_library(soname).display());
        assert!(before_ready.contains(&line), "expected {line:?} before ready in:\n{before_ready}");
    }
}
