//! Standard output for records. When it is a regular file and a write
//! fails (disk full, quota), the file is cut back to the end of the last
//! whole record, so it never ends in half a record.

use std::fs::File;
use std::io::{self, Write};
use std::mem::ManuallyDrop;
use std::os::fd::FromRawFd;

pub struct RecordStdout {
    /// fd 1, never closed by us.
    file: ManuallyDrop<File>,
    regular: bool,
    /// The file's length at the last record boundary.
    committed: u64,
    /// A write failed: nothing more is written (a BufWriter flushing on
    /// drop would otherwise add half a record after the cut).
    failed: bool,
}

impl RecordStdout {
    pub fn new() -> Self {
        // SAFETY: fd 1 is open for the whole life of the process, and the
        // ManuallyDrop keeps this File from ever closing it.
        let file = ManuallyDrop::new(unsafe { File::from_raw_fd(1) });
        let meta = file.metadata().ok();
        let regular = meta.as_ref().is_some_and(|m| m.is_file());
        RecordStdout { file, regular, committed: meta.map_or(0, |m| m.len()), failed: false }
    }

    /// Drop what was written after the last record boundary.
    fn cut_back(&mut self) {
        if self.regular {
            if let Err(e) = self.file.set_len(self.committed) {
                eprintln!("cleartap: warning: could not cut the output back to its last whole record: {e}");
            }
        }
    }
}

impl Default for RecordStdout {
    fn default() -> Self {
        Self::new()
    }
}

impl Write for RecordStdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.failed {
            return Err(io::Error::other("output closed after a failed write"));
        }
        let result = self.file.write(buf);
        if matches!(&result, Err(e) if e.kind() != io::ErrorKind::Interrupted) {
            self.failed = true;
            self.cut_back();
        }
        result
    }

    /// Only a record boundary flushes this writer: the outputs flush
    /// between records, and a full BufWriter above only calls `write`.
    fn flush(&mut self) -> io::Result<()> {
        if self.failed {
            return Err(io::Error::other("output closed after a failed write"));
        }
        if self.regular {
            self.committed = self.file.metadata()?.len();
        }
        Ok(())
    }
}
