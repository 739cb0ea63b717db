//! The text layout of events read back as JSON (`cleartap tail`): each
//! line is read into the schema's types (`schema::AgentEvent`) and printed
//! by the function the live text output prints that event with
//! (`output::text`), so a record reads the same whether it was printed by
//! `cleartap tls` or published by an agent and tailed. The first line of
//! each record starts with the event's host.
//!
//! What JSON does not carry cannot be shown: body previews and exec file
//! names are the JSON's (lossy UTF-8) strings, so a non-UTF-8 byte there
//! reads as U+FFFD instead of `\xNN` (commands, statements and argv have
//! their exact bytes in `*_b64` when they are not UTF-8, and read as they
//! were printed). A line that is not an event of the schema (an event
//! this version does not know, or one missing a field its kind always
//! has) prints as one `key=value` line.
//!
//! Everything in an event is untrusted (any publisher on the stream, any
//! process an agent watched): each string shown goes through `escape`, the
//! host, a line that is not JSON and the `key=value` fallback included.

use std::io::{self, Write};

use serde_json::{Map, Value};

use super::escape::{self, Layout};
use super::schema::AgentEvent;
use super::text;

/// One event (a JSON object, as an agent published it) in the live text
/// layout.
pub fn write_event(out: &mut impl Write, json: &[u8], hex: bool) -> io::Result<()> {
    if let Ok(event) = serde_json::from_slice::<AgentEvent>(json) {
        let mut record = Vec::new();
        text::write_event(&mut record, &event.event, hex)?;
        return write_record(out, event.host.as_deref(), &record);
    }
    match serde_json::from_slice::<Value>(json) {
        Ok(Value::Object(fields)) => {
            let host = fields.get("host").and_then(Value::as_str);
            let line = format!("{}\n", escape::line(&generic_line(&fields)));
            write_record(out, host, line.as_bytes())
        }
        _ => {
            out.write_all(escape::escape(json, Layout::Line).as_bytes())?;
            out.write_all(b"\n")
        }
    }
}

/// `record`, its first line after the host.
fn write_record(out: &mut impl Write, host: Option<&str>, record: &[u8]) -> io::Result<()> {
    if let Some(host) = host {
        write!(out, "{} ", escape::line(host))?;
    }
    out.write_all(record)
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
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use super::*;
    use crate::agent::pipeline::{Line, Numbering};
    use crate::assembly::{exec as execs, gaps, shell as commands, sql as queries, streams};
    use crate::context::Direction;
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
        let exec = br#"{"host":"h\u001b]0;x\u0007","event":"exec","time":"2026-11-26T10:00:00Z","pid":1,"tid":1,"ppid":0,"uid":0,"user":null,"comm":"c","filename":"/f\r","argv":["\u009b"],"cwd":null,"success":null}"#;
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
