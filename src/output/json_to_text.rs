//! The text layout of events read back as JSON (`cleartap tail`): each
//! known event fills the same view the live text output fills
//! (`output::text`), so a record reads the same whether it was printed by
//! `cleartap tls` or published by an agent and tailed. The first line of
//! each record starts with the event's host.
//!
//! What JSON does not carry cannot be shown: body previews and exec file
//! names are the JSON's (lossy UTF-8) strings, so a non-UTF-8 byte there
//! reads as U+FFFD instead of `\xNN` (commands, statements and argv have
//! their exact bytes in `*_b64` when they are not UTF-8, and read as they
//! were printed). An event this module does not know, or one missing a
//! field its layout needs, prints as one `key=value` line.
//!
//! Everything in an event is untrusted (any publisher on the stream, any
//! process an agent watched): each string shown goes through `escape`, the
//! host, a line that is not JSON and the `key=value` fallback included.

use std::borrow::Cow;
use std::io::{self, Write};
use std::time::{Duration, SystemTime};

use base64_simd::STANDARD;
use serde_json::{Map, Value};

use super::escape::{self, Layout};
use super::text::{
    write_command, write_exec, write_http, write_query, write_tls, BodyView, CommandView, ExecView, HttpView,
    QueryView, TlsView,
};

/// One event (a JSON object, as an agent published it) in the live text
/// layout.
pub fn write_event(out: &mut impl Write, json: &[u8], hex: bool) -> io::Result<()> {
    let Ok(Value::Object(event)) = serde_json::from_slice::<Value>(json) else {
        out.write_all(escape::escape(json, Layout::Line).as_bytes())?;
        return out.write_all(b"\n");
    };
    let mut record = Vec::new();
    if render(&mut record, &event, hex).is_none() {
        record.clear();
        writeln!(record, "{}", escape::line(&generic_line(&event)))?;
    }
    if let Some(host) = event.get("host").and_then(Value::as_str) {
        write!(out, "{} ", escape::line(host))?;
    }
    out.write_all(&record)
}

/// `None` when the event is not one of ours or lacks a field.
fn render(out: &mut Vec<u8>, e: &Map<String, Value>, hex: bool) -> Option<()> {
    let written = match str_of(e, "event")? {
        "tls" => write_tls(out, &tls_view(e, &STANDARD.decode_to_vec(str_of(e, "data_b64")?).ok()?)?, hex),
        "command" => write_command(out, &command_view(e)?),
        "exec" => write_exec(out, &exec_view(e)?),
        "query" => write_query(out, &query_view(e)?),
        "http" => write_http(out, &http_view(e)?),
        "loss" => writeln!(
            out,
            "loss: {} {} events dropped: {}",
            e.get("count")?.as_u64()?,
            escape::line(str_of(e, "source")?),
            escape::line(str_of(e, "reason")?)
        ),
        _ => return None,
    };
    written.ok()
}

fn tls_view<'a>(e: &'a Map<String, Value>, data: &'a [u8]) -> Option<TlsView<'a>> {
    let gap = match e.get("gap") {
        Some(g) => Some((g.get("calls_lost")?.as_u64()?, g.get("bytes_lost")?.as_u64()?)),
        None => None,
    };
    Some(TlsView {
        time: time_of(e, "time")?,
        comm: str_of(e, "comm")?,
        pid: u64_of(e, "pid")?,
        tid: u64_of(e, "tid")?,
        uid: u64_of(e, "uid")?,
        library: str_of(e, "library")?,
        function: str_of(e, "function")?,
        direction: str_of(e, "direction")?,
        fd: e.get("fd")?.as_i64(),
        local: addr_of(e, "local"),
        remote: addr_of(e, "remote"),
        call_len: u64_of(e, "call_len")?,
        offset: u64_of(e, "offset")?,
        gap,
        data,
    })
}

fn command_view(e: &Map<String, Value>) -> Option<CommandView<'_>> {
    Some(CommandView {
        time: time_of(e, "time")?,
        shell: str_of(e, "shell")?,
        pid: u64_of(e, "pid")?,
        ppid: u64_of(e, "ppid")?,
        uid: u64_of(e, "uid")?,
        user: e.get("user").and_then(Value::as_str),
        tty: str_of(e, "tty")?,
        exit_status: e.get("exit_status").and_then(Value::as_i64),
        truncated: bool_of(e, "truncated"),
        text: exact_text(e, "command")?,
    })
}

fn exec_view(e: &Map<String, Value>) -> Option<ExecView<'_>> {
    let argv = match e.get("argv_b64") {
        Some(b64) => b64
            .as_array()?
            .iter()
            .map(|a| Some(Cow::Owned(STANDARD.decode_to_vec(a.as_str()?).ok()?)))
            .collect::<Option<Vec<_>>>()?,
        None => e
            .get("argv")?
            .as_array()?
            .iter()
            .map(|a| Some(Cow::Borrowed(a.as_str()?.as_bytes())))
            .collect::<Option<Vec<_>>>()?,
    };
    let result = match e.get("success").and_then(Value::as_bool) {
        Some(true) => "ok".to_string(),
        Some(false) => str_of(e, "error")?.to_string(),
        None => "?".to_string(),
    };
    Some(ExecView {
        time: time_of(e, "time")?,
        comm: str_of(e, "comm")?,
        pid: u64_of(e, "pid")?,
        ppid: u64_of(e, "ppid")?,
        uid: u64_of(e, "uid")?,
        user: e.get("user").and_then(Value::as_str),
        filename: Cow::Borrowed(str_of(e, "filename")?.as_bytes()),
        argv,
        argv_truncated: bool_of(e, "argv_truncated"),
        result,
    })
}

fn query_view(e: &Map<String, Value>) -> Option<QueryView<'_>> {
    Some(QueryView {
        time: time_of(e, "time")?,
        server: str_of(e, "server")?,
        pid: u64_of(e, "pid")?,
        tid: u64_of(e, "tid")?,
        user: e.get("user").and_then(Value::as_str),
        database: e.get("database").and_then(Value::as_str),
        command: str_of(e, "command")?,
        statement_id: e.get("statement_id").and_then(Value::as_u64),
        success: e.get("success").and_then(Value::as_bool),
        duration: micros_of(e, "duration_us"),
        truncated: bool_of(e, "truncated"),
        text: exact_text(e, "text")?,
    })
}

fn http_view(e: &Map<String, Value>) -> Option<HttpView<'_>> {
    let opt = |key: &str| e.get(key).and_then(Value::as_str);
    let body = |side: &str| -> Option<BodyView<'_>> {
        Some(BodyView {
            size: u64_of(e, &format!("{side}_body_size"))?,
            decoded_size: e.get(&format!("{side}_body_decoded_size")).and_then(Value::as_u64),
            preview: opt(&format!("{side}_body_preview")).unwrap_or("").as_bytes(),
        })
    };
    Some(HttpView {
        time: time_of(e, "time")?,
        protocol: str_of(e, "protocol")?,
        comm: str_of(e, "comm")?,
        pid: u64_of(e, "pid")?,
        local: addr_of(e, "local"),
        remote: addr_of(e, "remote"),
        method: opt("method"),
        scheme: opt("scheme"),
        authority: opt("authority"),
        path: opt("path"),
        status: e.get("status").and_then(Value::as_u64),
        latency: micros_of(e, "latency_us"),
        request_headers: headers_of(e, "request_headers")?,
        response_headers: headers_of(e, "response_headers")?,
        request_body: body("request")?,
        response_body: body("response")?,
        notes: match e.get("notes") {
            Some(n) => n.as_array()?.iter().map(Value::as_str).collect::<Option<_>>()?,
            None => Vec::new(),
        },
    })
}

fn str_of<'a>(e: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    e.get(key)?.as_str()
}

/// The exact bytes of a text field: its `<key>_b64` when the text was not
/// UTF-8, else the text.
fn exact_text<'a>(e: &'a Map<String, Value>, key: &str) -> Option<Cow<'a, [u8]>> {
    match e.get(&format!("{key}_b64")) {
        Some(b64) => Some(Cow::Owned(STANDARD.decode_to_vec(b64.as_str()?).ok()?)),
        None => Some(Cow::Borrowed(str_of(e, key)?.as_bytes())),
    }
}

fn u64_of(e: &Map<String, Value>, key: &str) -> Option<u64> {
    e.get(key)?.as_u64()
}

fn bool_of(e: &Map<String, Value>, key: &str) -> bool {
    e.get(key).and_then(Value::as_bool).unwrap_or(false)
}

fn time_of(e: &Map<String, Value>, key: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339(str_of(e, key)?).ok()
}

/// A duration given in (fractional) microseconds.
fn micros_of(e: &Map<String, Value>, key: &str) -> Option<Duration> {
    Duration::try_from_secs_f64(e.get(key)?.as_f64()? / 1e6).ok()
}

/// An address, or `-` for null (as the live output prints a missing one).
fn addr_of<'a>(e: &'a Map<String, Value>, key: &str) -> &'a str {
    e.get(key).and_then(Value::as_str).unwrap_or("-")
}

fn headers_of<'a>(e: &'a Map<String, Value>, key: &str) -> Option<Vec<(&'a str, &'a str)>> {
    let pairs = e.get(key)?.as_array()?;
    pairs.iter().map(|p| Some((p.get(0)?.as_str()?, p.get(1)?.as_str()?))).collect()
}

/// Any event as one line: time, event, process, then the other fields.
fn generic_line(fields: &Map<String, Value>) -> String {
    let mut fields = fields.clone();
    let mut take =
        |key: &str| fields.remove(key).map(|v| v.as_str().map_or_else(|| v.to_string(), String::from));
    let head = [take("time"), take("event"), take("comm"), take("pid").map(|p| format!("pid {p}"))];
    let head: Vec<String> = head.into_iter().flatten().collect();
    fields.remove("seq");
    fields.remove("host");
    let rest: Vec<String> = fields.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{} {}", head.join(" "), rest.join(" "))
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::agent::pipeline::{Line, Numbering};
    use crate::context::{commands, execs, gaps, queries, streams, Direction};
    use crate::context::{CommandRecord, ExecRecord, HttpRecord, QueryRecord, TlsRecord};
    use crate::output::{writer, Format, Output, Style};

    const PREVIEW: usize = 64;

    fn at(nanos: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(1_764_140_000_123_456_789 + nanos)
    }

    /// `emit` through the live text output, and through the JSON output,
    /// an agent's envelope and `write_event`: the same text, host first.
    fn assert_same_layout(emit: impl Fn(&mut dyn Output)) {
        let render = |format| {
            let buf = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
            let mut out = writer(Style { format, hex: false, body_preview: PREVIEW }, SharedBuf(buf.clone()));
            emit(out.as_mut());
            out.flush().unwrap();
            drop(out);
            std::rc::Rc::try_unwrap(buf).unwrap().into_inner()
        };
        let live = String::from_utf8(render(Format::Text)).unwrap();
        let json = render(Format::Json);
        let line = &json[..json.len() - 1];
        let envelope = Numbering::new("web-1").envelope(Line { source: "tls", json: line.to_vec() });
        let mut tailed = Vec::new();
        write_event(&mut tailed, &envelope.json, false).unwrap();
        assert_eq!(String::from_utf8(tailed).unwrap(), format!("web-1 {live}"));
    }

    struct SharedBuf(std::rc::Rc<std::cell::RefCell<Vec<u8>>>);

    impl io::Write for SharedBuf {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.borrow_mut().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn addr(s: &str) -> Option<SocketAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn tls_records_read_back_as_they_were_printed() {
        let data = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x00\xff";
        for (gap, offset, call_len, remote) in
            [(None, 0, data.len() as u32, addr("[::1]:443")), (Some((2, 17)), 100, 4096, None)]
        {
            assert_same_layout(|out| {
                out.tls(&TlsRecord {
                    time: at(0),
                    pid: 4242,
                    tid: 4243,
                    uid: 1000,
                    comm: "curl".into(),
                    library: "openssl",
                    library_version: Some("3.0.17"),
                    library_path: "/usr/lib/x86_64-linux-gnu/libssl.so.3",
                    function: "SSL_write",
                    direction: Direction::Send,
                    fd: Some(5),
                    local: addr("127.0.0.1:50000"),
                    remote,
                    conn: 0xdead,
                    call_seq: 3,
                    call_len,
                    offset,
                    flags: 0,
                    gap: gap.map(|(calls_lost, bytes_lost)| gaps::Gap { calls_lost, bytes_lost }),
                    data,
                })
                .unwrap()
            });
        }
    }

    #[test]
    fn commands_execs_and_queries_read_back_as_they_were_printed() {
        let command = commands::Command {
            time: at(1),
            pid: 10,
            ppid: 9,
            uid: 0,
            shell: "bash",
            tty: "pts/1".into(),
            text: b"for i in 1 2; do\n  echo $i\ndone".to_vec(),
            truncated: false,
            exit_status: Some(1),
        };
        assert_same_layout(|out| {
            out.command(&CommandRecord {
                command: &command,
                user: Some("root"),
                shell_path: Some("/bin/bash"),
            })
            .unwrap()
        });
        for ret in [Some(0), Some(-2), None] {
            let exec = execs::Exec {
                time: at(2),
                pid: 11,
                tid: 11,
                ppid: 10,
                uid: 1000,
                comm: "bash".into(),
                filename: b"/usr/bin/ls".to_vec(),
                argv: vec![b"ls".to_vec(), b"-l \"x\"".to_vec()],
                argv_truncated: ret.is_none(),
                argv_changed: false,
                cwd: Some("/tmp".into()),
                ret,
            };
            assert_same_layout(|out| out.exec(&ExecRecord { exec: &exec, user: None }).unwrap());
        }
        for success in [Some(true), Some(false), None] {
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
            query.success = success;
            query.duration = success.map(|_| Duration::from_nanos(1_234_567));
            assert_same_layout(|out| {
                let record = QueryRecord { query: &query, user: Some("app"), database: None, client: None };
                out.query(&record).unwrap()
            });
        }
    }

    #[test]
    fn http_exchanges_read_back_as_they_were_printed() {
        let body = |raw: &[u8], decoded: Option<&[u8]>| httpdecode::Body {
            raw_len: raw.len() + 1000,
            raw: raw.to_vec(),
            decoded: decoded.map(<[u8]>::to_vec),
            truncated: false,
        };
        let exchange = httpdecode::Exchange {
            protocol: httpdecode::Protocol::Http2,
            method: Some("POST".into()),
            scheme: Some("https".into()),
            authority: Some("example.com".into()),
            path: Some("/api?q=1".into()),
            status: Some(201),
            request_headers: vec![("content-type".into(), "text/plain".into())],
            response_headers: vec![("content-encoding".into(), "gzip".into()), ("x".into(), "y".into())],
            request_trailers: Vec::new(),
            response_trailers: Vec::new(),
            request_body: body(b"hello\nworld\ttab", None),
            response_body: body(b"\x1f\x8b...", Some(b"{\"ok\":true}")),
            stream_id: Some(3),
            grpc: None,
            request_time: at(4),
            response_time: Some(at(4) + Duration::from_micros(2500)),
            notes: vec!["a note".into()],
        };
        let connection = streams::ConnectionInfo {
            pid: 14,
            comm: "node".into(),
            library: "openssl",
            local: addr("10.0.0.1:40000"),
            remote: addr("10.0.0.2:443"),
        };
        assert_same_layout(|out| {
            out.http(&HttpRecord { exchange: &exchange, connection: &connection }).unwrap()
        });
    }

    #[test]
    fn hostile_records_read_back_escaped_as_they_were_printed() {
        let command = commands::Command {
            time: at(1),
            pid: 10,
            ppid: 9,
            uid: 0,
            shell: "bash",
            tty: "pts/1".into(),
            text: b"echo \x1b]0;x\x07\r\xff".to_vec(),
            truncated: false,
            exit_status: Some(0),
        };
        assert_same_layout(|out| {
            out.command(&CommandRecord { command: &command, user: None, shell_path: None }).unwrap()
        });
        let exec = execs::Exec {
            time: at(2),
            pid: 11,
            tid: 11,
            ppid: 10,
            uid: 0,
            comm: "\x1b]0;x\x07".into(),
            filename: b"/tmp/\x1b[2J".to_vec(),
            argv: vec![b"\x1b[2J".to_vec(), b"\x9b\xff".to_vec()],
            argv_truncated: false,
            argv_changed: false,
            cwd: None,
            ret: Some(0),
        };
        assert_same_layout(|out| out.exec(&ExecRecord { exec: &exec, user: None }).unwrap());
        let query = queries::Query::start(
            at(3),
            "mysql",
            12,
            13,
            "query",
            None,
            b"select '\x1b\xfe'".to_vec(),
            false,
        );
        assert_same_layout(|out| {
            out.query(&QueryRecord { query: &query, user: None, database: None, client: None }).unwrap()
        });
    }

    #[test]
    fn hostile_host_key_and_lines_are_escaped() {
        let mut out = Vec::new();
        let exec = br#"{"host":"h\u001b]0;x\u0007","event":"exec","time":"2026-11-26T10:00:00Z","pid":1,"ppid":0,"uid":0,"comm":"c","filename":"/f\r","argv":["\u009b"]}"#;
        write_event(&mut out, exec, false).unwrap();
        write_event(
            &mut out,
            br#"{"host":"h\u0007","event":"loss","count":1,"source":"s\u001b","reason":"r\r"}"#,
            false,
        )
        .unwrap();
        write_event(
            &mut out,
            br#"{"host":"h","event":"new\u001b","k\u001b[2J":"v\u0007","comm":"\r"}"#,
            false,
        )
        .unwrap();
        write_event(&mut out, b"not json \x1b]52;c;aGk=\x07\r\xff", false).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "h\\x1b]0;x\\x07 2026-11-26T10:00:00.000000Z exec c[1] ppid=0 uid=0(?) /f\\r [\"\\u{9b}\"] = ?",
                "h\\x07 loss: 1 s\\x1b events dropped: r\\r",
                "h new\\x1b \\r k\\x1b[2J=\"v\\\\u0007\"",
                "not json \\x1b]52;c;aGk=\\x07\\r\\xff",
            ]
        );
        assert!(!text.bytes().any(|b| b != b'\n' && (b < 0x20 || b == 0x7f)), "{text:?}");
    }

    #[test]
    fn losses_and_unknown_events_are_one_line() {
        let mut out = Vec::new();
        let loss = Numbering::new("h").loss("exec", 7, "the NATS spool was full");
        write_event(&mut out, &loss.json, false).unwrap();
        write_event(&mut out, br#"{"host":"h","seq":9,"event":"new","time":"T","pid":1,"x":[1]}"#, false)
            .unwrap();
        write_event(&mut out, br#"{"host":"h","event":"tls","time":"not a time"}"#, false).unwrap();
        write_event(&mut out, b"not json", false).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "h loss: 7 exec events dropped: the NATS spool was full");
        assert_eq!(lines[1], "h T new pid 1 x=[1]");
        assert_eq!(lines[2], "h not a time tls ");
        assert_eq!(lines[3], "not json");
    }
}
