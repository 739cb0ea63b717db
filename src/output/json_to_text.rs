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
    use super::*;
    use crate::agent::pipeline::Numbering;

    // That every record reads back as it was printed is shown on the
    // golden records (golden::tail_text_is_the_live_text_with_the_host_first);
    // here, lines that are not ours or not whole.

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
