//! Output writers. Each takes records and writes them; each flushes on
//! idle and on shutdown (not per record).

pub mod escape;
pub mod json;
pub mod json_to_text;
pub mod keylog;
pub mod pcapng;
pub mod stdout;
pub mod text;

use std::io;

use crate::context::{CommandRecord, ExecRecord, HttpRecord, QueryRecord, TlsRecord};

pub trait Output {
    fn tls(&mut self, record: &TlsRecord) -> io::Result<()>;
    fn command(&mut self, record: &CommandRecord) -> io::Result<()>;
    fn exec(&mut self, record: &ExecRecord) -> io::Result<()>;
    fn query(&mut self, record: &QueryRecord) -> io::Result<()>;
    fn http(&mut self, record: &HttpRecord) -> io::Result<()>;
    fn flush(&mut self) -> io::Result<()>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// How records are shown.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    pub format: Format,
    /// Text: payloads as a hex dump.
    pub hex: bool,
    /// HTTP exchanges: bytes of each body to show.
    pub body_preview: usize,
}

/// How an output file that already exists is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    Refuse,
    Append,
    Replace,
}

/// A file for secrets (key logs, captures): created mode 0600, never
/// through a symlink, an existing one only as `existing` allows.
pub fn create_private(path: &std::path::Path, existing: Existing) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).mode(0o600).custom_flags(libc::O_NOFOLLOW);
    match existing {
        Existing::Refuse => options.create_new(true),
        Existing::Append => options.create(true).append(true),
        Existing::Replace => options.create(true).truncate(true),
    };
    options.open(path)
}

/// Records in `style` on standard output: a regular file there is never
/// left ending in half a record (see `stdout`).
pub fn to_stdout(style: Style) -> Box<dyn Output> {
    writer(style, stdout::RecordStdout::new())
}

/// The writer for `style` on `out`.
pub fn writer<W: io::Write + 'static>(style: Style, out: W) -> Box<dyn Output> {
    let out = io::BufWriter::with_capacity(1 << 16, out);
    match style.format {
        Format::Text => Box::new(text::TextOutput::new(out, style)),
        Format::Json => Box::new(json::JsonOutput::new(out, style)),
    }
}

/// The first `limit` bytes of a body as shown: decompressed when it was.
pub(crate) fn body_preview(body: &httpdecode::Body, limit: usize) -> &[u8] {
    let shown = body.decoded.as_deref().unwrap_or(&body.raw);
    &shown[..shown.len().min(limit)]
}

pub(crate) fn addr_or_dash(addr: Option<std::net::SocketAddr>) -> String {
    addr.map_or_else(|| "-".to_string(), |a| a.to_string())
}

/// Bytes as text for JSON: lossy UTF-8 (U+FFFD for invalid bytes); JSON
/// adds the exact bytes separately when they are not UTF-8. (Text for
/// people goes through `escape`, which shows invalid bytes as `\xNN`.)
pub(crate) fn lossy(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(bytes)
}

/// Human form of an errno returned by exec.
pub(crate) fn errno_name(ret: i32) -> String {
    if ret == 0 {
        return "ok".into();
    }
    let text = std::io::Error::from_raw_os_error(-ret).to_string();
    text.split(" (os error").next().unwrap_or(&text).to_string()
}
