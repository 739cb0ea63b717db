//! Standard output for records. When it is a regular file and a write
//! fails (disk full, quota), the file is cut back to the end of the last
//! whole record, so it never ends in half a record.
//!
//! A regular file is also written back as it grows and dropped from the
//! page cache behind the writer (see `Writeback`): a capture can write
//! gigabytes that nobody reads soon, and they should neither push the
//! host's own files out of its cache nor make each write find fresh memory.
//! A file cleartap created itself (`-o FILE`) is written with direct I/O
//! instead (`direct`), bypassing the page cache altogether.

use std::fs::File;
use std::io::{self, Seek, Write};
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
    /// Regular files opened `O_DIRECT`: everything goes through this.
    direct: Option<super::direct::Direct>,
    /// Other regular files.
    writeback: Option<Writeback>,
}

/// Streaming writeback: each `WINDOW` written is handed to the disk at
/// once (asynchronously), and the window two behind is dropped from the
/// page cache where it is clean by then. Nothing here waits for the disk:
/// on a disk slower than the capture, pages still dirty stay cached as
/// before, and the page cache absorbs a burst as it always did. On a disk
/// that keeps up, the file's cached part stays under three windows, so its
/// pages are reused while still warm instead of taking new memory for
/// every MiB (measured: writing into pages the VM had given back to its
/// host cost 1.5 ms per MiB, 0.2 warm; see bench/README.md).
struct Writeback {
    /// Where the next window starts, and how far this writer has written.
    window_start: u64,
    written: u64,
}

const WINDOW: u64 = 8 << 20;

impl Writeback {
    fn wrote(&mut self, file: &File, n: usize) {
        use std::os::fd::AsRawFd;
        self.written += n as u64;
        let fd = file.as_raw_fd();
        while self.written - self.window_start >= WINDOW {
            let start = self.window_start as i64;
            let len = WINDOW as i64;
            // SAFETY: plain syscalls on our own fd; failures only mean the
            // kernel keeps the pages cached as it otherwise would.
            unsafe {
                libc::sync_file_range(fd, start, len, libc::SYNC_FILE_RANGE_WRITE);
                let old = start - 2 * len;
                if old >= 0 {
                    // Drops clean pages only: dirty ones or those still
                    // being written stay.
                    libc::posix_fadvise(fd, old, len, libc::POSIX_FADV_DONTNEED);
                }
            }
            self.window_start += WINDOW;
        }
    }
}

impl RecordStdout {
    pub fn new() -> Self {
        // SAFETY: fd 1 is open for the whole life of the process, and the
        // ManuallyDrop keeps this File from ever closing it.
        let file = ManuallyDrop::new(unsafe { File::from_raw_fd(1) });
        let meta = file.metadata().ok();
        let regular = meta.as_ref().is_some_and(|m| m.is_file());
        let committed = meta.map_or(0, |m| m.len());
        // Where writes land: the end with O_APPEND (`>>`), else the offset.
        // SAFETY: F_GETFL on fd 1 reads its flags.
        let append = unsafe { libc::fcntl(1, libc::F_GETFL) } & libc::O_APPEND != 0;
        let offset = if append { committed } else { (&*file).stream_position().unwrap_or(committed) };
        let direct = if regular { super::direct::Direct::for_file(&file, offset) } else { None };
        let writeback =
            (regular && direct.is_none()).then_some(Writeback { window_start: offset, written: offset });
        RecordStdout { file, regular, committed, failed: false, direct, writeback }
    }

    /// A write or flush failed: nothing more is written, and the file is
    /// cut back to its last whole record.
    fn fail(&mut self, e: io::Error) -> io::Error {
        self.failed = true;
        // Its writes in flight end first, so none lands after the cut.
        self.direct = None;
        self.cut_back();
        e
    }

    /// Drop what was written after the last record boundary.
    fn cut_back(&mut self) {
        if self.regular {
            if let Err(e) = self.file.set_len(self.committed) {
                crate::note!(
                    "cleartap: warning: could not cut the output back to its last whole record: {e}"
                );
            }
        }
    }
}

/// Records built straight in the direct-I/O stages of standard output
/// (`Direct::buffer`), for the JSON and binary outputs: no buffer between
/// the record and the disk.
pub struct DirectRecords {
    stdout: RecordStdout,
    /// Where records go after a failed write (never written).
    closed: Vec<u8>,
}

impl RecordStdout {
    /// Written with direct I/O: `DirectRecords` can build records in it.
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }
}

impl DirectRecords {
    /// `stdout` is direct (`is_direct`); if not, every record is refused.
    pub fn new(stdout: RecordStdout) -> Self {
        DirectRecords { stdout, closed: Vec::new() }
    }
}

impl super::batched::Records for DirectRecords {
    fn buf(&mut self) -> &mut Vec<u8> {
        match self.stdout.direct.as_mut() {
            Some(direct) => direct.buffer(),
            None => &mut self.closed,
        }
    }

    fn record_done(&mut self) -> io::Result<()> {
        let Some(direct) = self.stdout.direct.as_mut() else {
            self.closed.clear();
            return Err(closed());
        };
        direct.record_done().map_err(|e| self.stdout.fail(e))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stdout.flush()
    }
}

/// What every write after a failed one gets.
fn closed() -> io::Error {
    io::Error::other("output closed after a failed write")
}

impl Default for RecordStdout {
    fn default() -> Self {
        Self::new()
    }
}

impl Write for RecordStdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.failed {
            return Err(closed());
        }
        if let Some(direct) = self.direct.as_mut() {
            return match direct.write(buf) {
                Ok(()) => Ok(buf.len()),
                Err(e) => Err(self.fail(e)),
            };
        }
        match self.file.write(buf) {
            Ok(n) => {
                if let Some(w) = self.writeback.as_mut() {
                    w.wrote(&self.file, n);
                }
                Ok(n)
            }
            Err(e) if e.kind() != io::ErrorKind::Interrupted => Err(self.fail(e)),
            Err(e) => Err(e),
        }
    }

    /// Only a record boundary flushes this writer: the outputs flush
    /// between records, and a full BufWriter above only calls `write`.
    fn flush(&mut self) -> io::Result<()> {
        if self.failed {
            return Err(closed());
        }
        if let Some(direct) = self.direct.as_mut() {
            return match direct.flush() {
                Ok(len) => {
                    self.committed = len;
                    Ok(())
                }
                Err(e) => Err(self.fail(e)),
            };
        }
        if self.regular {
            self.committed = self.file.metadata()?.len();
        }
        Ok(())
    }
}
