//! One file on the host, opened once and then only read through that
//! descriptor: what cleartap parses is what it probes.
//!
//! Every file cleartap looks at (a library a process maps, an executable,
//! a `--lib` path) is named by someone who may be hostile. Resolving the
//! name again between parsing and attaching would let a user swap the file
//! (a rename, a symlink) and have breakpoints written at offsets computed
//! from one file into another, such as the host's libc or sudo. So:
//! - a file is opened once ([`PinnedFile`]), as a regular file, and its
//!   device and inode come from that descriptor;
//! - names inside another process's root are resolved with `openat2` and
//!   `RESOLVE_IN_ROOT`: an absolute symlink there points into that root,
//!   never to the host's files;
//! - parsers read ranges of it with `pread` ([`PinnedFile::data`]), each
//!   read bounded, never a memory map (a file truncated under a mapping
//!   kills the reader with SIGBUS) and never the whole file at once;
//! - uprobes attach through `/proc/self/fd/N`, the same open file.
//!
//! Each finder (linked OpenSSL symbols, rustls, Go, stripped BoringSSL,
//! secret points) parses the file's ELF headers again, on purpose: the
//! parse reads through this file's cache, so only the first one touches
//! the file. Measured 2026-12-06 (release build, 20 runs each): a first
//! `ElfFile64::parse` of /usr/bin/node (94 MiB) 1.7 ms, each further one
//! 1 µs, against 100-120 ms for its whole discovery; a Go 1.27 program
//! (9 MiB): 21 µs, then under 1 µs, against 8 ms (four parses). Sharing
//! one parsed ELF would save microseconds and thread a borrowed
//! `ElfFile64` through every finder. What a repeat does cost is budget:
//! each charges the symbol tables' size again (node: 4.4 MiB of
//! `MAX_READ_TOTAL`'s 512); the time goes to scanning symbol tables, not
//! to parsing headers.

use std::cell::Cell;
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use object::read::{ReadCache, ReadCacheOps, ReadRef};

use super::procs::FileId;

/// A larger file is not parsed: no library or program cleartap probes is
/// near this (node is about 100 MiB, large Go programs a few hundred).
pub const MAX_FILE: u64 = 2 << 30;
/// What one file's parse may read in all (a range read twice counts
/// twice). Symbol tables and Go's pclntab of the largest programs fit.
pub const MAX_READ_TOTAL: u64 = 512 << 20;

pub struct PinnedFile {
    file: File,
    id: FileId,
    len: u64,
    cache: ReadCache<Pread>,
    read_budget: Cell<u64>,
}

impl std::fmt::Debug for PinnedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinnedFile").field("fd", &self.file.as_raw_fd()).field("id", &self.id).finish()
    }
}

impl PinnedFile {
    /// Opens `path` as this process resolves it (an operator-given path, or
    /// a kernel-maintained link like `/proc/PID/exe` or
    /// `/proc/PID/map_files/...`, which name the exact file a process uses).
    pub fn open(path: &Path) -> Result<PinnedFile> {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        Self::from_file(file).with_context(|| format!("{}", path.display()))
    }

    /// Opens `path` and checks it is the file that was found there before
    /// (`id`): a file swapped in since is refused, never parsed.
    pub fn open_expecting(path: &Path, id: FileId) -> Result<PinnedFile> {
        let file = Self::open(path)?;
        if file.id != id {
            bail!(
                "{} was replaced between discovery and opening (device/inode {}:{} became {}:{}); not probed",
                path.display(),
                id.dev,
                id.ino,
                file.id.dev,
                file.id.ino
            );
        }
        Ok(file)
    }

    /// Opens `path` as process `pid` sees it, inside its root directory:
    /// `..` and symlinks, absolute ones included, cannot leave that root,
    /// and `/proc` magic links are refused.
    /// A relative `path` is taken inside the process's working directory.
    pub fn open_in_root(pid: u32, path: &str) -> Result<PinnedFile> {
        let dir = if path.starts_with('/') { "root" } else { "cwd" };
        Self::open_beneath(Path::new(&format!("/proc/{pid}/{dir}")), path)
    }

    /// Opens `path` with `root` as its root directory (see [`Self::open_in_root`]).
    pub fn open_beneath(root: &Path, path: &str) -> Result<PinnedFile> {
        let dir = File::open(root).with_context(|| format!("opening {}", root.display()))?;
        let file = openat2_in_root(&dir, path)
            .with_context(|| format!("opening {path} under {}", root.display()))?;
        Self::from_file(file).with_context(|| format!("{path} under {}", root.display()))
    }

    fn from_file(file: File) -> Result<PinnedFile> {
        let meta = file.metadata()?;
        if !meta.file_type().is_file() {
            bail!("not a regular file");
        }
        if meta.len() > MAX_FILE {
            bail!("{} bytes, larger than the {} cleartap parses", meta.len(), MAX_FILE);
        }
        let id = FileId { dev: meta.dev(), ino: meta.ino() };
        let reader = Pread { file: file.try_clone()?, len: meta.len(), at: 0 };
        Ok(PinnedFile {
            file,
            id,
            len: meta.len(),
            cache: ReadCache::new(reader),
            read_budget: Cell::new(MAX_READ_TOTAL),
        })
    }

    pub fn id(&self) -> FileId {
        self.id
    }

    /// The size the file had when opened.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The file's bytes for parsers (the `object` crate's `ReadRef`): each
    /// range is read with `pread` when first asked for, within the file's
    /// opening size and this file's read budget. A file truncated since is
    /// a read error, not a crash.
    pub fn data(&self) -> Data<'_> {
        Data { cache: &self.cache, budget: &self.read_budget }
    }

    /// The name through which the kernel reaches this very open file (for
    /// attaching uprobes): valid while `self` lives.
    pub fn proc_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }

    /// Calls `find` on the file in chunks of at most 1 MiB, each starting
    /// `overlap` bytes before the previous one ended, until it returns
    /// Some: a search for short strings that never holds the whole file in
    /// memory. A match that starts in the last `overlap` bytes of a chunk
    /// that is not the last (`Chunk::last`) is seen whole in the next one.
    pub fn scan<T>(&self, overlap: usize, mut find: impl FnMut(Chunk<'_>) -> Option<T>) -> Option<T> {
        const CHUNK: usize = 1 << 20;
        let overlap = overlap.min(CHUNK / 2);
        let mut buf = vec![0u8; CHUNK.min(self.len as usize)];
        let mut offset = 0u64;
        while offset < self.len {
            let want = (self.len - offset).min(CHUNK as u64) as usize;
            let got = read_full(&self.file, &mut buf[..want], offset).ok()?;
            let last = got < want || offset + got as u64 >= self.len;
            if got == 0 {
                return None;
            }
            if let Some(found) = find(Chunk { bytes: &buf[..got], first: offset == 0, last }) {
                return Some(found);
            }
            if last {
                return None;
            }
            offset += (got - overlap) as u64;
        }
        None
    }
}

/// A part of a file being scanned (see [`PinnedFile::scan`]).
pub struct Chunk<'a> {
    pub bytes: &'a [u8],
    /// It starts at the start of the file.
    pub first: bool,
    /// It ends at the end of the file.
    pub last: bool,
}

/// For the end-to-end tests only: `CLEARTAP_TEST_OPEN_DELAY=TEXT:MS`
/// waits MS milliseconds before opening a found file whose path contains
/// TEXT, widening the window in which a test swaps the file. The
/// environment is the operator's, so this gives nobody else a lever.
pub(crate) fn test_delay(path: &Path) {
    static DELAY: std::sync::OnceLock<Option<(String, u64)>> = std::sync::OnceLock::new();
    let delay = DELAY.get_or_init(|| {
        let value = std::env::var("CLEARTAP_TEST_OPEN_DELAY").ok()?;
        let (text, ms) = value.rsplit_once(':')?;
        Some((text.to_string(), ms.parse().ok()?))
    });
    if let Some((text, ms)) = delay {
        if path.to_string_lossy().contains(text.as_str()) {
            // The test's cue to swap the file.
            crate::note!("test: waiting {ms} ms before opening {}", path.display());
            std::thread::sleep(std::time::Duration::from_millis(*ms));
        }
    }
}

/// `openat2(root, path, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`, read-only.
fn openat2_in_root(root: &File, path: &str) -> io::Result<File> {
    let name = CString::new(path).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: open_how is plain data; zeroed is its documented default.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: valid pointers for the duration of the call; the kernel
    // copies `how` (its size passed) and the NUL-terminated name.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            name.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor this function owns.
    Ok(unsafe { File::from_raw_fd(fd as i32) })
}

fn read_full(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// The reads behind [`PinnedFile::data`]: positioned reads of one
/// descriptor, the length fixed when it was opened.
#[derive(Debug)]
struct Pread {
    file: File,
    len: u64,
    at: u64,
}

impl ReadCacheOps for Pread {
    fn len(&mut self) -> Result<u64, ()> {
        Ok(self.len)
    }

    fn seek(&mut self, pos: u64) -> Result<u64, ()> {
        self.at = pos;
        Ok(pos)
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<usize, ()> {
        let n = self.file.read_at(buf, self.at).map_err(|_| ())?;
        self.at += n as u64;
        Ok(n)
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), ()> {
        match read_full(&self.file, buf, self.at) {
            Ok(n) if n == buf.len() => {
                self.at += n as u64;
                Ok(())
            }
            _ => Err(()), // truncated since it was opened, or an I/O error
        }
    }
}

/// A pinned file's bytes as the `object` crate reads them, each read
/// charged to the file's budget before anything is allocated.
#[derive(Clone, Copy)]
pub struct Data<'a> {
    cache: &'a ReadCache<Pread>,
    budget: &'a Cell<u64>,
}

impl<'a> Data<'a> {
    fn charge(self, size: u64) -> Result<(), ()> {
        let left = self.budget.get();
        if size > left {
            return Err(());
        }
        self.budget.set(left - size);
        Ok(())
    }
}

impl<'a> ReadRef<'a> for Data<'a> {
    fn len(self) -> Result<u64, ()> {
        self.cache.len()
    }

    fn read_bytes_at(self, offset: u64, size: u64) -> Result<&'a [u8], ()> {
        // Bounds first (free), so an absurd size is refused, not charged.
        let len = self.cache.len()?;
        if offset.checked_add(size).is_none_or(|end| end > len) {
            return Err(());
        }
        self.charge(size)?;
        self.cache.read_bytes_at(offset, size)
    }

    fn read_bytes_at_until(self, range: Range<u64>, delimiter: u8) -> Result<&'a [u8], ()> {
        // A string (a symbol's name): the cache reads at most 4 KiB looking
        // for the delimiter and keeps what it found, charged here. Charging
        // 4 KiB each would exhaust the budget on a symbol table of 100,000
        // short names.
        let found = self.cache.read_bytes_at_until(range, delimiter)?;
        self.charge(found.len() as u64 + 64)?;
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::symlink;

    #[test]
    fn reads_ranges_within_the_file_and_the_budget() {
        let mut tmp = tempfile::NamedTempFile::new().unwrap();
        tmp.write_all(b"0123456789").unwrap();
        let pinned = PinnedFile::open(tmp.path()).unwrap();
        assert_eq!(pinned.len(), 10);
        assert_eq!(pinned.data().read_bytes_at(2, 3).unwrap(), b"234");
        assert!(pinned.data().read_bytes_at(8, 3).is_err());
        assert!(pinned.data().read_bytes_at(u64::MAX, 2).is_err());
        pinned.read_budget.set(4);
        assert!(pinned.data().read_bytes_at(0, 5).is_err());
        assert_eq!(pinned.data().read_bytes_at(0, 4).unwrap(), b"0123");
        assert!(pinned.data().read_bytes_at(0, 1).is_err(), "budget spent");
    }

    #[test]
    fn a_file_truncated_after_opening_is_an_error_not_a_crash() {
        let mut tmp = tempfile::NamedTempFile::new().unwrap();
        tmp.write_all(&vec![7u8; 1 << 16]).unwrap();
        let pinned = PinnedFile::open(tmp.path()).unwrap();
        tmp.as_file().set_len(10).unwrap();
        assert!(pinned.data().read_bytes_at(4096, 4096).is_err());
        let mut seen = 0;
        assert_eq!(
            pinned.scan(0, |c| {
                seen += c.bytes.len();
                None::<()>
            }),
            None
        );
        assert_eq!(seen, 10);
    }

    #[test]
    fn the_same_open_file_through_proc_self_fd() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lib.so");
        std::fs::write(&path, b"first").unwrap();
        let pinned = PinnedFile::open(&path).unwrap();
        // Replaced by rename after opening: the pinned file is the first.
        std::fs::write(dir.path().join("other"), b"second file").unwrap();
        std::fs::rename(dir.path().join("other"), &path).unwrap();
        assert_eq!(std::fs::read(pinned.proc_path()).unwrap(), b"first");
        assert_eq!(FileId::of(&pinned.proc_path()).unwrap(), pinned.id());
        assert_ne!(FileId::of(&path).unwrap(), pinned.id());
    }

    #[test]
    fn only_regular_files() {
        assert!(PinnedFile::open(Path::new("/dev/zero")).is_err());
        assert!(PinnedFile::open(Path::new("/tmp")).is_err());
        assert!(PinnedFile::open_in_root(std::process::id(), "/dev/null").is_err());
    }

    #[test]
    fn names_in_a_process_root_cannot_leave_it() {
        // A process whose root is `dir`: an absolute symlink inside it to
        // /etc/hostname must resolve to dir/etc/hostname, not the host's.
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/hostname"), b"inside").unwrap();
        symlink("/etc/hostname", dir.path().join("link")).unwrap();
        symlink("../../../../../etc/hostname", dir.path().join("dotdot")).unwrap();
        let root = File::open(dir.path()).unwrap();
        for name in ["/link", "link", "/dotdot", "/../../etc/hostname"] {
            let mut file = openat2_in_root(&root, name).unwrap();
            let mut text = String::new();
            std::io::Read::read_to_string(&mut file, &mut text).unwrap();
            assert_eq!(text, "inside", "{name}");
        }
        // A magic link (/proc/self/exe) is refused.
        std::fs::create_dir(dir.path().join("proc")).unwrap();
        let host_root = File::open("/").unwrap();
        assert!(openat2_in_root(&host_root, "/proc/self/exe").is_err());
    }

    #[test]
    fn scan_finds_a_string_across_chunk_edges() {
        let mut tmp = tempfile::NamedTempFile::new().unwrap();
        let mut bytes = vec![0u8; (1 << 20) + 100];
        let at = (1 << 20) - 3;
        bytes[at..at + 7].copy_from_slice(b"OpenSSL");
        tmp.write_all(&bytes).unwrap();
        let pinned = PinnedFile::open(tmp.path()).unwrap();
        let mut chunks = Vec::new();
        let found = pinned.scan(16, |c| {
            chunks.push((c.bytes.len(), c.first, c.last));
            c.bytes.windows(7).position(|w| w == b"OpenSSL")
        });
        assert_eq!(found, Some(16 - 3));
        assert_eq!(chunks, [(1 << 20, true, false), (116, false, true)]);
        assert_eq!(pinned.scan(16, |c| c.bytes.windows(3).position(|w| w == b"zzz")), None);
    }
}
