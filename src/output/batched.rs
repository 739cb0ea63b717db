//! The JSON and binary outputs' writer: whole records are built in place in
//! one buffer (no per-record String or Vec) and handed to `out` about a MiB
//! at a time, and at every flush. `out` only ever sees whole records, so a
//! failed write never leaves half a record behind a complete one.

use std::io::{self, Write};

/// Where the JSON and binary outputs build their records: `Batched` over
/// any writer, or the direct-I/O stages of an output file
/// (`stdout::DirectRecords`).
pub trait Records {
    /// Where the next record is built, after the ones before it. Only
    /// appended to, or cut back to a length it had during this record.
    fn buf(&mut self) -> &mut Vec<u8>;
    /// The record just built in `buf` is whole.
    fn record_done(&mut self) -> io::Result<()>;
    /// A record boundary: everything built so far is written out.
    fn flush(&mut self) -> io::Result<()>;
}

/// A write per MiB of records: on a stream, the write system calls and the
/// copy into the page cache are most of the consumer's CPU, and fewer,
/// larger writes cost less per byte than 64 KiB ones.
const WRITE_AT: usize = 1 << 20;

pub struct Batched<W: Write> {
    out: W,
    buf: Vec<u8>,
}

impl<W: Write> Batched<W> {
    /// `slack`: room above `WRITE_AT` for the record that crosses it.
    pub fn new(out: W, slack: usize) -> Self {
        Batched { out, buf: Vec::with_capacity(WRITE_AT + slack) }
    }

    fn write_out(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            let result = self.out.write_all(&self.buf);
            self.buf.clear();
            result?;
        }
        Ok(())
    }
}

impl<W: Write> Records for Batched<W> {
    fn buf(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// Written out once there is a MiB.
    fn record_done(&mut self) -> io::Result<()> {
        if self.buf.len() >= WRITE_AT {
            self.write_out()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.write_out()?;
        self.out.flush()
    }
}
