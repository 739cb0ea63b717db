//! Golden output: records of every kind (the edge cases included: bytes
//! that are not UTF-8, hostile strings, every optional field present and
//! absent) through the JSON writer, an agent's envelope and `loss` events,
//! the live text writer and `cleartap tail`'s text, compared byte for byte
//! with the files in `testdata/`. The JSON lines are an interface (fields
//! are only ever added, docs/json.md): a change to these files is a change
//! to that interface, and must be one on purpose.
//!
//! `CLEARTAP_BLESS=1 cargo test --lib golden` rewrites the files from the
//! current code.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::schema::{AgentEvent, Event};
use super::{json, json_to_text, writer, Format, Output, Style};
use crate::agent::pipeline::{Line, Numbering};
use crate::assembly::{exec as execs, gaps::Gap, shell as commands, sql as queries, streams};
use crate::context::Direction;
use crate::context::{CommandRecord, ExecRecord, HttpRecord, QueryRecord, TlsRecord};
use crate::events::flag;

fn at(nanos: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(1_764_140_000_123_456_789 + nanos)
}

fn addr(s: &str) -> Option<SocketAddr> {
    Some(s.parse().unwrap())
}

fn tls(out: &mut dyn Output) {
    let base = TlsRecord {
        time: at(0),
        pid: 4242,
        tid: 4243,
        uid: 1000,
        comm: "curl".into(),
        library: "openssl",
        library_version: Some("3.0.17"),
        library_path: "/usr/lib/x86_64-linux-gnu/libssl.so.3",
        function: "SSL_write_ex",
        direction: Direction::Send,
        fd: Some(5),
        local: addr("127.0.0.1:50000"),
        remote: addr("93.184.216.34:443"),
        conn: 0x55d0_dead_beef,
        call_seq: 1,
        call_len: 18,
        offset: 0,
        flags: 0,
        gap: None,
        data: b"GET / HTTP/1.1\r\n\r\n",
    };
    out.tls(&base).unwrap();
    // Recv, IPv6, no fd, no version, a chunk of a longer call after a gap,
    // truncated and unreadable, binary data.
    out.tls(&TlsRecord {
        time: at(999_999_000),
        comm: "a \"q\"\\\n\u{7f}\u{9b}\u{e9}\x1b]0;x\x07".into(),
        library: "gnutls",
        library_version: None,
        library_path: "/usr/lib/x86_64-linux-gnu/libgnutls.so.30",
        function: "gnutls_record_recv",
        direction: Direction::Recv,
        fd: None,
        local: addr("[fe80::1:2]:65535"),
        remote: None,
        call_seq: u64::MAX,
        call_len: 4096,
        offset: 100,
        flags: flag::TRUNCATED | flag::FAULT,
        gap: Some(Gap { calls_lost: 2, bytes_lost: 17 }),
        data: b"\x00\x01\xff\xfe\x1b[2J\r\nend",
        ..base.clone()
    })
    .unwrap();
    // Go, an empty payload, an empty comm, only one of the flags.
    out.tls(&TlsRecord {
        time: UNIX_EPOCH,
        pid: u32::MAX,
        tid: 0,
        uid: 0,
        comm: String::new(),
        library: "go",
        library_version: Some("go1.22.1"),
        library_path: "/usr/local/bin/app",
        function: "crypto/tls.(*Conn).Read",
        direction: Direction::Recv,
        fd: Some(0),
        local: None,
        remote: None,
        conn: 0,
        call_seq: 7,
        call_len: 0,
        offset: 0,
        flags: flag::TRUNCATED,
        gap: None,
        data: b"",
    })
    .unwrap();
}

fn commands(out: &mut dyn Output) {
    let command = commands::Command {
        time: at(1),
        pid: 10,
        ppid: 9,
        uid: 0,
        shell: "bash",
        tty: "pts/1".into(),
        text: b"for i in 1 2; do\n  echo \"$i\"\\\tdone".to_vec(),
        truncated: false,
        exit_status: Some(1),
    };
    out.command(&CommandRecord { command: &command, user: Some("root"), shell_path: Some("/bin/bash") })
        .unwrap();
    let hostile = commands::Command {
        shell: "zsh",
        tty: String::new(),
        text: b"echo \x1b]0;x\x07\r\xff \xc2\x9b".to_vec(),
        truncated: true,
        exit_status: None,
        ..command.clone()
    };
    out.command(&CommandRecord { command: &hostile, user: None, shell_path: None }).unwrap();
    let negative = commands::Command { exit_status: Some(-1), text: Vec::new(), ..command };
    out.command(&CommandRecord { command: &negative, user: Some("r\x1boot"), shell_path: Some("/bin/\x07") })
        .unwrap();
}

fn execs(out: &mut dyn Output) {
    let exec = execs::Exec {
        time: at(2),
        pid: 11,
        tid: 11,
        ppid: 10,
        uid: 1000,
        comm: "bash".into(),
        filename: b"/usr/bin/ls".to_vec(),
        argv: vec![b"ls".to_vec(), b"-l \"x\"".to_vec()],
        argv_truncated: false,
        argv_changed: false,
        cwd: Some("/tmp".into()),
        ret: Some(0),
    };
    out.exec(&ExecRecord { exec: &exec, user: Some("alice") }).unwrap();
    let failed = execs::Exec { ret: Some(-2), argv_truncated: true, argv_changed: true, ..exec.clone() };
    out.exec(&ExecRecord { exec: &failed, user: None }).unwrap();
    let unseen = execs::Exec { ret: None, cwd: None, argv: Vec::new(), ..exec.clone() };
    out.exec(&ExecRecord { exec: &unseen, user: None }).unwrap();
    let hostile = execs::Exec {
        comm: "\x1b]0;x\x07".into(),
        filename: b"/tmp/\x1b[2J\xff".to_vec(),
        argv: vec![b"\x1b[2J".to_vec(), b"\x9b\xff".to_vec(), b"\r\n\t\\".to_vec(), Vec::new()],
        cwd: Some("/home/\u{85}".into()),
        ret: Some(-13),
        ..exec
    };
    out.exec(&ExecRecord { exec: &hostile, user: Some("\u{202e}x") }).unwrap();
}

fn queries(out: &mut dyn Output) {
    let mut query = queries::Query::start(
        at(3),
        "mysql",
        12,
        13,
        "execute",
        Some(4),
        b"SELECT 1;\nSELECT 2".to_vec(),
        false,
    );
    query.success = Some(true);
    query.duration = Some(Duration::from_nanos(1_234_567));
    out.query(&QueryRecord { query: &query, user: Some("app"), database: Some("shop"), client: None })
        .unwrap();
    query.success = Some(false);
    query.duration = Some(Duration::from_nanos(110_682_000));
    out.query(&QueryRecord { query: &query, user: None, database: None, client: None }).unwrap();
    let mut postgres = queries::Query::start(
        at(4),
        "postgres",
        14,
        14,
        "statement",
        None,
        b"select '\x1b]0;x\x07'\r\n -- \xc2\x9b\xfe".to_vec(),
        true,
    );
    out.query(&QueryRecord {
        query: &postgres,
        user: Some("postgres"),
        database: Some("d\x1b[8mb"),
        client: Some("127.0.0.1:5555"),
    })
    .unwrap();
    postgres.success = Some(true);
    postgres.duration = Some(Duration::from_nanos(3_000_000_007));
    postgres.text = b"select 1".to_vec();
    postgres.truncated = false;
    out.query(&QueryRecord { query: &postgres, user: None, database: Some(""), client: Some("[local]") })
        .unwrap();
}

fn body(raw: &[u8], extra: usize, decoded: Option<&[u8]>) -> httpdecode::Body {
    httpdecode::Body {
        raw_len: raw.len() + extra,
        raw: raw.to_vec(),
        decoded: decoded.map(<[u8]>::to_vec),
        truncated: false,
    }
}

fn http(out: &mut dyn Output) {
    let exchange = httpdecode::Exchange {
        protocol: httpdecode::Protocol::Http2,
        method: Some("POST".into()),
        scheme: Some("https".into()),
        authority: Some("example.com".into()),
        path: Some("/api?q=1".into()),
        status: Some(201),
        request_headers: [("content-type", "text/plain")].into_iter().collect(),
        response_headers: [("content-encoding", "gzip"), ("x", "y")].into_iter().collect(),
        request_trailers: Default::default(),
        response_trailers: Default::default(),
        request_body: body(b"hello\nworld\ttab", 1000, None),
        response_body: body(b"\x1f\x8b...", 0, Some(b"{\"ok\":true}")),
        stream_id: Some(3),
        grpc: None,
        request_time: at(5),
        response_time: Some(at(5) + Duration::from_micros(2500)),
        notes: vec!["a note".into()],
    };
    let connection = streams::ConnectionInfo {
        pid: 14,
        comm: "node".into(),
        library: "openssl",
        local: addr("10.0.0.1:40000"),
        remote: addr("[2001:db8::2]:443"),
    };
    out.http(&HttpRecord { exchange: &exchange, connection: &connection }).unwrap();
    // HTTP/1.1, nothing optional: no status, no response, no bodies.
    let bare = httpdecode::Exchange {
        protocol: httpdecode::Protocol::Http1_1,
        method: None,
        scheme: None,
        authority: None,
        path: None,
        status: None,
        request_headers: Default::default(),
        response_headers: Default::default(),
        request_body: httpdecode::Body::default(),
        response_body: httpdecode::Body::default(),
        stream_id: None,
        response_time: None,
        notes: Vec::new(),
        ..exchange.clone()
    };
    let nowhere =
        streams::ConnectionInfo { local: None, remote: None, comm: String::new(), ..connection.clone() };
    out.http(&HttpRecord { exchange: &bare, connection: &nowhere }).unwrap();
    // gRPC, hostile headers, a body preview that is not UTF-8.
    let grpc = httpdecode::Exchange {
        protocol: httpdecode::Protocol::Http2,
        method: Some("G\x1b[2JET".into()),
        authority: Some("evil\x1b[8m.example".into()),
        path: Some("/a\x1b]0;pwned\x07?b=\r\n".into()),
        status: Some(200),
        request_headers: [("x-\x1b[1mname", "\x1b]52;c;cm0gLXJmIH4K\x07")].into_iter().collect(),
        response_headers: [("server", "nginx\roverwritten\u{85}"), ("x-\u{202e}", "a\tb")]
            .into_iter()
            .collect(),
        request_body: body(b"\x00\x00\x00\x00\x02hi", 0, None),
        response_body: body(b"a\x1bb\r\nc\x9b", 0, None),
        grpc: Some(httpdecode::Grpc {
            request_messages: vec![httpdecode::GrpcMessage::default()],
            response_messages: Vec::new(),
            status: Some(13),
            message: Some("internal \x1b[5m".into()),
        }),
        notes: vec!["unknown content-encoding \x1b[5m".into(), "second".into()],
        ..exchange.clone()
    };
    out.http(&HttpRecord { exchange: &grpc, connection: &connection }).unwrap();
    let grpc_bare = httpdecode::Exchange {
        protocol: httpdecode::Protocol::Http1_0,
        grpc: Some(httpdecode::Grpc::default()),
        response_time: Some(at(5) + Duration::from_nanos(110_682_001)),
        ..exchange
    };
    out.http(&HttpRecord { exchange: &grpc_bare, connection: &connection }).unwrap();
}

fn all(out: &mut dyn Output) {
    tls(out);
    commands(out);
    execs(out);
    queries(out);
    http(out);
}

/// What `emit` writes through the writer of `style`.
fn render(style: Style, emit: impl Fn(&mut dyn Output)) -> Vec<u8> {
    let buf = Rc::new(RefCell::new(Vec::new()));
    let mut out = writer(style, SharedBuf(buf.clone()));
    emit(out.as_mut());
    out.flush().unwrap();
    drop(out);
    Rc::try_unwrap(buf).unwrap().into_inner()
}

struct SharedBuf(Rc<RefCell<Vec<u8>>>);

impl io::Write for SharedBuf {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.borrow_mut().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn style(format: Format, hex: bool, body_preview: usize) -> Style {
    Style { format, hex, body_preview }
}

/// The JSON lines: every record with body previews of 64 bytes, then the
/// HTTP exchanges again without previews.
pub(crate) fn json_lines() -> Vec<u8> {
    let mut lines = render(style(Format::Json, false, 64), all);
    lines.extend(render(style(Format::Json, false, 0), http));
    lines
}

/// The JSON lines as an agent publishes them (`host`, `seq` first), with
/// `loss` events, one line each (no newline inside).
pub(crate) fn agent_lines() -> Vec<u8> {
    let json = json_lines();
    let mut numbering = Numbering::new("web-1");
    let mut hostile = Numbering::new("h\x1b]0;x\x07\"\\");
    let mut out = Vec::new();
    for (i, line) in json.split(|&b| b == b'\n').filter(|l| !l.is_empty()).enumerate() {
        let n = if i % 5 == 4 { &mut hostile } else { &mut numbering };
        out.extend(n.envelope(Line { source: "tls", json: line.to_vec() }).json);
        out.push(b'\n');
        if i % 7 == 3 {
            out.extend(numbering.loss("exec", i as u64, "the NATS spool was full").json);
            out.push(b'\n');
        }
    }
    out.extend(hostile.loss("s\x1b[2J", 0, "r\r\n\u{9b}").json);
    out.push(b'\n');
    out
}

/// Lines `tail` may read that are not events of ours, or not whole ones:
/// each prints as one escaped line.
const ODD_LINES: &[&[u8]] = &[
    br#"{"host":"h","seq":9,"event":"new","time":"T","pid":1,"x":[1]}"#,
    br#"{"host":"h","event":"tls","time":"not a time"}"#,
    br#"{"host":"h","event":"new\u001b","k\u001b[2J":"v\u0007","comm":"\r"}"#,
    br#"{"event":"command","time":"2026-11-26T10:00:00Z","pid":1,"ppid":0,"uid":0,"shell":"bash","tty":"","command":"x\u009b"}"#,
    br#"{"event":"command","time":"2026-11-26T10:00:00Z","pid":1,"ppid":0,"uid":0,"shell":"bash","command":"no tty"}"#,
    br#"{"event":"command","time":"2026-11-26T10:00:00Z","pid":1,"ppid":0,"uid":0,"shell":"bash","tty":"","command":"x","command_b64":"not base64!"}"#,
    br#"{"host":"h","event":"exec","time":"2026-11-26T10:00:00Z","pid":1,"ppid":0,"uid":0,"comm":"c","filename":"/f\r","argv":["\u009b"]}"#,
    br#"{"host":"h","event":"exec","time":"2026-11-26T10:00:00Z","pid":1,"ppid":0,"uid":0,"comm":"c","filename":"/f","argv":[],"success":false}"#,
    br#"{"host":"h","event":"exec","time":"2026-11-26T10:00:00Z","pid":1,"ppid":0,"uid":0,"comm":"c","filename":"/f","argv":[1]}"#,
    br#"{"host":"h","event":"tls","time":"2026-11-26T10:00:00Z","pid":1,"tid":1,"uid":0,"comm":"c","library":"openssl","function":"f","direction":"send","local":null,"remote":null,"call_len":1,"offset":0,"data_b64":"eA=="}"#,
    br#"{"host":"h","event":"tls","time":"2026-11-26T10:00:00Z","pid":1,"tid":1,"uid":0,"comm":"c","library":"openssl","function":"f","direction":"send","fd":null,"call_len":1,"offset":0,"data_b64":"eA=="}"#,
    br#"{"host":"h","event":"tls","time":"2026-11-26T10:00:00Z","pid":1,"tid":1,"uid":0,"comm":"c","library":"openssl","function":"f","direction":"send","fd":3,"call_len":1,"offset":0}"#,
    br#"{"host":"h","event":"query","time":"2026-11-26T10:00:00Z","server":"mysql","pid":1,"tid":1,"command":"query","text":"select 1"}"#,
    br#"{"host":"h","event":"http","time":"2026-11-26T10:00:00Z","protocol":"HTTP/1.1","comm":"c","pid":1,"request_headers":[],"response_headers":[],"response_body_size":0}"#,
    br#"{"host":"h","event":"http","time":"2026-11-26T10:00:00Z","protocol":"HTTP/1.1","comm":"c","pid":1,"request_headers":[["a"]],"response_headers":[],"request_body_size":0,"response_body_size":0}"#,
    br#"{"host":"h\u0007","event":"loss","count":1,"source":"s\u001b","reason":"r\r"}"#,
    br#"{"host":5,"event":"loss","count":1,"source":"s","reason":"r"}"#,
    br#"{"event":"loss","count":-1,"source":"s","reason":"r"}"#,
    br#"{"host":"h","seq":"x","event":"loss","count":1,"source":"s","reason":"r"}"#,
    br#"{}"#,
    br#"[1,2]"#,
    b"not json \x1b]52;c;aGk=\x07\r\xff",
    b"",
];

/// `cleartap tail --format text` of the agent's lines, then of odd ones.
fn tail_text(hex: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for line in agent_lines().split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        json_to_text::write_event(&mut out, line, hex).unwrap();
    }
    for line in ODD_LINES {
        json_to_text::write_event(&mut out, line, hex).unwrap();
    }
    out
}

fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/output/testdata").join(name)
}

#[track_caller]
fn assert_golden(name: &str, got: &[u8]) {
    let path = testdata(name);
    if std::env::var_os("CLEARTAP_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, got).unwrap();
        return;
    }
    let want = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    if got != want {
        let got = String::from_utf8_lossy(got);
        let want = String::from_utf8_lossy(&want);
        for (i, (g, w)) in got.lines().zip(want.lines()).enumerate() {
            assert_eq!(g, w, "{name}: line {} differs", i + 1);
        }
        assert_eq!(got.lines().count(), want.lines().count(), "{name}: line count");
        panic!("{name} differs");
    }
}

#[test]
fn json_lines_are_byte_identical_to_the_golden_file() {
    assert_golden("events.jsonl", &json_lines());
}

#[test]
fn binary_records_read_back_as_the_golden_json_lines() {
    let mut file = render(style(Format::Binary, false, 64), all);
    file.extend(render(style(Format::Binary, false, 0), http));
    let mut json = Vec::new();
    super::binary::read_lines(&file[..], |line| {
        json.extend_from_slice(line);
        Ok(())
    })
    .unwrap();
    assert_golden("events.jsonl", &json);
}

#[test]
fn agent_lines_are_byte_identical_to_the_golden_file() {
    assert_golden("agent-events.jsonl", &agent_lines());
}

#[test]
fn live_text_is_identical_to_the_golden_file() {
    let mut text = render(style(Format::Text, false, 64), all);
    text.extend(render(style(Format::Text, false, 0), http));
    text.extend(render(style(Format::Text, true, 64), tls));
    assert_golden("events.txt", &text);
}

#[test]
fn tail_text_is_identical_to_the_golden_file() {
    let mut text = tail_text(false);
    text.extend(tail_text(true));
    assert_golden("tail.txt", &text);
}

fn golden_lines(name: &str) -> Vec<Vec<u8>> {
    let text = std::fs::read(testdata(name)).unwrap();
    text.split(|&b| b == b'\n').filter(|l| !l.is_empty()).map(<[u8]>::to_vec).collect()
}

/// An event's line as cleartap writes it: `loss` events as the agent
/// writes them (plain serde_json), the others as `--format json` does.
fn written(event: &Event) -> Vec<u8> {
    match event {
        Event::Loss(loss) => serde_json::to_vec(loss).unwrap(),
        _ => {
            let mut line = Vec::new();
            json::write_line(&mut line, event).unwrap();
            line.pop();
            line
        }
    }
}

/// The lines written before the schema types existed read into them, and
/// write back the same bytes (the TLS lines through serde too, not the
/// hand-written path).
#[test]
fn golden_lines_read_into_the_schema_and_write_back_the_same_bytes() {
    let lines = golden_lines("events.jsonl");
    let mut kinds = std::collections::HashSet::new();
    for line in &lines {
        let event: Event =
            serde_json::from_slice(line).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(line)));
        kinds.insert(std::mem::discriminant(&event));
        assert_eq!(String::from_utf8_lossy(&written(&event)), String::from_utf8_lossy(line));
    }
    assert_eq!(kinds.len(), 5, "tls, command, exec, query and http");
    let mut losses = 0;
    for line in golden_lines("agent-events.jsonl") {
        let read: AgentEvent = serde_json::from_slice(&line)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&line)));
        losses += usize::from(matches!(read.event, Event::Loss(_)));
        // `host` and `seq`, then the event's line.
        let host = serde_json::to_string(read.host.as_deref().unwrap()).unwrap();
        let mut again = format!("{{\"host\":{host},\"seq\":{},", read.seq.unwrap()).into_bytes();
        again.extend(&written(&read.event)[1..]);
        assert_eq!(String::from_utf8_lossy(&again), String::from_utf8_lossy(&line));
    }
    assert!(losses >= 2);
}

/// `cleartap tail --format text` of an agent's lines reads as the live text
/// of the same records, with the agent's host before each record.
#[test]
fn tail_text_is_the_live_text_with_the_host_first() {
    for hex in [false, true] {
        let live = String::from_utf8(render(style(Format::Text, hex, 64), all)).unwrap();
        let mut numbering = Numbering::new("web-1");
        let mut tailed = Vec::new();
        let json = render(style(Format::Json, hex, 64), all);
        for line in json.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let envelope = numbering.envelope(Line { source: "tls", json: line.to_vec() });
            json_to_text::write_event(&mut tailed, &envelope.json, hex).unwrap();
        }
        // A record starts with the gap before it, or else with its time;
        // the lines it continues on are indented or payload (escaped: the
        // fixtures' payloads never start so).
        let mut want = String::new();
        let mut after_gap = false;
        for l in live.lines() {
            let gap = l.starts_with("-- gap");
            let time = l.starts_with("20") || l.starts_with("1970");
            let host = if gap || (time && !after_gap) { "web-1 " } else { "" };
            want.push_str(&format!("{host}{l}\n"));
            after_gap = gap;
        }
        // Body previews are lossy UTF-8 in JSON, raw bytes in the live text.
        let lossy =
            |l: &str| if l.starts_with("  | ") { l.replace("\\x9b", "\u{fffd}") } else { l.to_string() };
        let tailed = String::from_utf8(tailed).unwrap();
        assert_eq!(
            tailed.lines().map(lossy).collect::<Vec<_>>(),
            want.lines().map(lossy).collect::<Vec<_>>()
        );
    }
}
