//! JSON lines: one object per record, the fields documented in README.md.

use std::io::{self, Write};

use base64::Engine;
use serde::Serialize;

use super::Output;
use crate::context::TlsRecord;
use crate::events::flag;

pub struct JsonOutput<W: Write> {
    out: W,
    b64: String,
}

impl<W: Write> JsonOutput<W> {
    pub fn new(out: W) -> Self {
        JsonOutput { out, b64: String::new() }
    }
}

#[derive(Serialize)]
struct TlsJson<'a> {
    event: &'static str,
    time: String,
    pid: u32,
    tid: u32,
    uid: u32,
    comm: &'a str,
    library: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    library_version: Option<&'a str>,
    library_path: &'a str,
    function: &'a str,
    direction: &'a str,
    fd: Option<i32>,
    local: Option<String>,
    remote: Option<String>,
    conn: String,
    call_seq: u64,
    call_len: u32,
    offset: u32,
    len: usize,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    truncated: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    unreadable: bool,
    data_b64: &'a str,
}

impl<W: Write> Output for JsonOutput<W> {
    fn tls(&mut self, r: &TlsRecord) -> io::Result<()> {
        self.b64.clear();
        base64::engine::general_purpose::STANDARD.encode_string(r.data, &mut self.b64);
        let json = TlsJson {
            event: "tls",
            time: humantime::format_rfc3339_nanos(r.time).to_string(),
            pid: r.pid,
            tid: r.tid,
            uid: r.uid,
            comm: &r.comm,
            library: r.library,
            library_version: r.library_version,
            library_path: r.library_path,
            function: r.function,
            direction: r.direction.as_str(),
            fd: r.fd,
            local: r.local.map(|a| a.to_string()),
            remote: r.remote.map(|a| a.to_string()),
            conn: format!("{:#x}", r.conn),
            call_seq: r.call_seq,
            call_len: r.call_len,
            offset: r.offset,
            len: r.data.len(),
            truncated: r.flags & flag::TRUNCATED != 0,
            unreadable: r.flags & flag::FAULT != 0,
            data_b64: &self.b64,
        };
        serde_json::to_writer(&mut self.out, &json)?;
        self.out.write_all(b"\n")
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}
