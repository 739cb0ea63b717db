//! The JSON and binary outputs' writer: whole records are built in place in
//! one buffer (no per-record String or Vec) and handed to `out` about a MiB
//! at a time, and at every flush. `out` only ever sees whole records, so a
//! failed write never leaves half a record behind a complete one.

use std::io::{self, Write};

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

    /// Where the next record is built, after the ones before it.
    pub fn buf(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// A record is whole in the buffer: written out once there is a MiB.
    pub fn record_done(&mut self) -> io::Result<()> {
        if self.buf.len() >= WRITE_AT {
            self.write_out()?;
        }
        Ok(())
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.write_out()?;
        self.out.flush()
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
