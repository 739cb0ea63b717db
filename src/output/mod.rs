//! Output writers. Each takes records and writes them; each flushes on
//! idle and on shutdown (not per record).

pub mod json;
pub mod text;

use std::io;

use crate::context::TlsRecord;

pub trait Output {
    fn tls(&mut self, record: &TlsRecord) -> io::Result<()>;
    fn flush(&mut self) -> io::Result<()>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// The writer for `format` on `out`.
pub fn writer<W: io::Write + 'static>(format: Format, hex: bool, out: W) -> Box<dyn Output> {
    let out = io::BufWriter::with_capacity(1 << 16, out);
    match format {
        Format::Text => Box::new(text::TextOutput::new(out, hex)),
        Format::Json => Box::new(json::JsonOutput::new(out)),
    }
}

pub(crate) fn addr_or_dash(addr: Option<std::net::SocketAddr>) -> String {
    addr.map_or_else(|| "-".to_string(), |a| a.to_string())
}
