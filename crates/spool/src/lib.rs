//! On-disk spool of the event publisher.
//!
//! While the broker (NATS JetStream) is unreachable, events are appended here; once it is back they
//! are drained in order (`read`, publish, then `commit`, or `rewind` when delivery failed) before any
//! new event is sent. Records are opaque, non-empty byte strings: the caller encodes subject, message
//! id and payload itself.
//!
//! # On-disk layout
//!
//! A directory (mode 0700) holding:
//! - `NNNNNNNNNNNNNNNNNNNN.seg` (20-digit segment number, strictly increasing): segment files (0600),
//!   rolled over at `SEGMENT_SIZE` (8 MiB). Each record is `[u32 LE payload length][u32 LE crc32 of the
//!   payload][payload]`. Only the `Spool` that created a segment appends to it: `open` always
//!   starts a new one, so a segment found on disk is never written again, only cut or deleted.
//! - `commit` (0600): the commit point, `b"CTS1"` + u64 LE segment + u64 LE offset + u32 LE crc32 of
//!   the 20 bytes before it, replaced atomically (written to `commit.tmp`, then renamed over).
//!   `commit` moves the point in memory; the file is rewritten by `flush` (the caller's timer), by
//!   `sync`, and before a segment is deleted, not at every commit: it costs four file system
//!   operations, which per delivered event would bound the drain rate. So a crash may deliver
//!   again what was committed since the last `flush`; the publisher's message ids make JetStream
//!   drop those duplicates.
//!
//! Any other file in the directory is left alone.
//!
//! # Durability
//!
//! Appends go through a user-space buffer of `WRITE_BUFFER` (64 KiB) and nothing is fsynced per
//! record. A crash of the process (kill -9) loses only what was still in that buffer; the buffer is
//! emptied when it fills, when a segment rolls over, when `read` reaches the segment being written,
//! and by [`Spool::flush`], [`Spool::sync`] and drop. A caller that pushes slowly should call `flush`
//! on a timer (say each second) to bound that loss in time too. A power loss may lose more, unless
//! `sync` ran just before it. A record torn by a crash is cut off by the next `open`.
//!
//! # Size accounting
//!
//! [`Spool::bytes`] is the number of segment bytes from the commit point on, that is the sum of
//! `8 + payload length` over the uncommitted records; `max_bytes` bounds that number. The disk may
//! briefly hold a bit more: the already committed head of the oldest live segment (less than one
//! segment plus one record), deleted once the commit point leaves that segment, and the commit file.

use std::collections::{BTreeMap, VecDeque};
use std::ffi::OsStr;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::ops::Bound;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Size at which the segment being written is closed and a new one started.
const SEGMENT_SIZE: u64 = 8 << 20;
/// Largest payload accepted. It also bounds what a (corrupt) length field can make us allocate.
const MAX_RECORD: usize = 64 << 20;
/// Bytes of user-space buffering in front of the segment being written.
const WRITE_BUFFER: usize = 64 << 10;

/// Record header: u32 payload length + u32 crc32.
const HEADER: u64 = 8;
const READ_BUFFER: usize = 64 << 10;
const COMMIT_FILE: &str = "commit";
const COMMIT_TMP: &str = "commit.tmp";
const COMMIT_MAGIC: &[u8; 4] = b"CTS1";
const COMMIT_LEN: usize = 24;

/// What `open` found on disk.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// Whole records waiting to be drained.
    pub records: u64,
    /// Bytes cut off torn or corrupt tails (0 if none).
    pub torn_bytes: u64,
    /// Files that were cut (or removed, when nothing uncommitted was left in them).
    pub torn_files: Vec<PathBuf>,
}

/// Why `push` refused a record.
#[derive(Debug)]
pub enum PushError {
    /// The record would take the spool past `max_bytes`, or is larger than `MAX_RECORD` (64 MiB).
    Full,
    /// Writing failed; the record was not added.
    Io(io::Error),
}

impl fmt::Display for PushError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PushError::Full => f.write_str("spool full"),
            PushError::Io(e) => write!(f, "spool write failed: {e}"),
        }
    }
}

impl std::error::Error for PushError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PushError::Full => None,
            PushError::Io(e) => Some(e),
        }
    }
}

impl From<io::Error> for PushError {
    fn from(e: io::Error) -> Self {
        PushError::Io(e)
    }
}

/// Position of a record: its segment number and the offset just after it. Positions grow in
/// delivery order, so "up to this position" is well defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    seg: u64,
    off: u64,
}

/// The segment being appended to, with its not yet written bytes.
#[derive(Debug)]
struct Writer {
    seg: u64,
    file: File,
    buf: Vec<u8>,
}

impl Writer {
    fn append(&mut self, record: &[u8]) {
        // `push` checked record.len() <= MAX_RECORD, so the cast cannot truncate.
        self.buf.extend_from_slice(&(record.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(&crc32fast::hash(record).to_le_bytes());
        self.buf.extend_from_slice(record);
    }

    /// Writes the buffer out. On error, what was written is dropped from the buffer and the rest
    /// stays, so a later flush resumes exactly where this one stopped.
    fn flush(&mut self) -> io::Result<()> {
        while !self.buf.is_empty() {
            match self.file.write(&self.buf) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => drop(self.buf.drain(..n)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// A buffered read handle on one segment, remembering its file position so consecutive reads
/// reuse the buffer instead of seeking.
#[derive(Debug)]
struct Reader {
    seg: u64,
    pos: u64,
    inner: BufReader<File>,
}

impl Reader {
    fn open(path: &Path, at: Position) -> io::Result<Reader> {
        let mut inner = BufReader::with_capacity(READ_BUFFER, open_nofollow(path, false)?);
        inner.seek(SeekFrom::Start(at.off))?;
        Ok(Reader { seg: at.seg, pos: at.off, inner })
    }

    fn seek_to(&mut self, off: u64) -> io::Result<()> {
        if off != self.pos {
            // Offsets are bounded by file sizes, far below i64::MAX.
            self.inner.seek_relative(off as i64 - self.pos as i64)?;
            self.pos = off;
        }
        Ok(())
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read_exact(buf)?;
        self.pos += buf.len() as u64;
        Ok(())
    }
}

/// Bounded, crash-tolerant FIFO of records on disk. See the module documentation.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    segment_size: u64,
    /// Live segments: number -> length, including bytes still in the writer's buffer.
    segs: BTreeMap<u64, u64>,
    writer: Option<Writer>,
    reader: Option<Reader>,
    /// Segments closed since the last `sync`, to fsync then.
    unsynced: Vec<u64>,
    next_seg: u64,
    commit: Position,
    /// The commit point the commit file holds.
    persisted: Position,
    cursor: Position,
    /// End positions of records returned by `read` and not committed yet, increasing. Kept across
    /// `rewind` so a commit for a record read before the rewind is still honoured.
    inflight: VecDeque<Position>,
    pending: u64,
    bytes: u64,
}

impl Spool {
    /// Opens (or creates, mode 0700; an existing dir with looser mode gets chmod 0700) `dir`,
    /// scans the segment files in order, truncates a torn tail, returns what waits.
    /// `max_bytes` bounds [`Spool::bytes`] (records + headers of uncommitted data).
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<(Spool, Recovered)> {
        Self::open_with_segment_size(dir, max_bytes, SEGMENT_SIZE)
    }

    /// Like [`Spool::open`] with another roll-over size: the tests' tiny segments.
    fn open_with_segment_size(
        dir: &Path,
        max_bytes: u64,
        segment_size: u64,
    ) -> io::Result<(Spool, Recovered)> {
        prepare_dir(dir)?;
        let listing = list_segments(dir)?;
        // No (valid) commit file: deliver from the start of the oldest segment. Records delivered
        // before may go out twice; that is safe because the broker deduplicates on message id.
        let oldest = listing.segs.first().copied().unwrap_or(0);
        let commit = read_commit(dir).unwrap_or(Position { seg: oldest, off: 0 });
        let mut rec = Recovered::default();
        let mut segs = BTreeMap::new();
        for &seg in &listing.segs {
            if let Some(len) = recover_segment(dir, seg, commit, &mut rec)? {
                segs.insert(seg, len);
            }
        }
        // Never append to a segment found on disk: a new number above every name seen and above
        // the commit point keeps offsets before `commit` from ever being reused.
        let next_seg = listing.max_name.map_or(0, |m| m.saturating_add(1)).max(commit.seg.saturating_add(1));
        let mut spool = Spool {
            dir: dir.to_path_buf(),
            max_bytes,
            segment_size,
            segs,
            writer: None,
            reader: None,
            unsynced: Vec::new(),
            next_seg,
            commit,
            persisted: commit,
            cursor: commit,
            inflight: VecDeque::new(),
            pending: rec.records,
            bytes: 0,
        };
        spool.bytes = spool.compute_bytes();
        Ok((spool, rec))
    }

    /// Appends one record at the end. Err(Full) when it would take the spool past max_bytes or is
    /// larger than `MAX_RECORD` (64 MiB; nothing is written then). An empty record is refused with an
    /// `InvalidInput` I/O error: a zero header is what a zero-filled tail looks like, so `open`
    /// treats it as torn. Files are created mode 0600 with O_NOFOLLOW | O_EXCL.
    pub fn push(&mut self, record: &[u8]) -> Result<(), PushError> {
        if record.is_empty() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty spool record").into());
        }
        let size = HEADER + record.len() as u64;
        if record.len() > MAX_RECORD || self.bytes.saturating_add(size) > self.max_bytes {
            return Err(PushError::Full);
        }
        let w = self.writer_for(size)?;
        // Flush older records first so that a write error leaves nothing of this one on disk.
        if !w.buf.is_empty() && w.buf.len() + record.len() + HEADER as usize > WRITE_BUFFER {
            w.flush()?;
        }
        w.append(record);
        let seg = w.seg;
        *self.segs.entry(seg).or_insert(0) += size;
        self.bytes += size;
        self.pending += 1;
        Ok(())
    }

    /// Up to `max` records (and at most `max_bytes` of payload, but always at least one record if
    /// any) after the read cursor, in order, each with the Position just after it. Does not remove
    /// them; advances the read cursor so the next call returns the following records.
    ///
    /// A record that fails its checks here (possible only if a file was modified behind our back)
    /// ends the batch; when it is the first one, the call returns an `InvalidData` error.
    pub fn read(&mut self, max: usize, max_bytes: usize) -> io::Result<Vec<(Position, Vec<u8>)>> {
        let mut out = Vec::new();
        let mut total = 0usize;
        while out.len() < max {
            let room = if out.is_empty() { usize::MAX } else { max_bytes.saturating_sub(total) };
            match self.read_one(room) {
                Ok(Some((pos, payload))) => {
                    total += payload.len();
                    // `None < Some(_)`: the first record read, or one past the furthest read.
                    if self.inflight.back() < Some(&pos) {
                        self.inflight.push_back(pos);
                    }
                    out.push((pos, payload));
                }
                Ok(None) => break,
                Err(e) => {
                    // The handle's position is unknown after a failed read.
                    self.reader = None;
                    if out.is_empty() {
                        return Err(e);
                    }
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Everything up to and including `upto` was delivered: delete fully delivered segment files
    /// (after persisting the commit point), free the space for push. The commit point becomes the end of the
    /// last record returned by `read` that is at or before `upto`: a position past what was read
    /// is clamped, since a record never read cannot have been delivered. Positions at or before
    /// the current commit point are ignored.
    pub fn commit(&mut self, upto: Position) -> io::Result<()> {
        let n = self.inflight.iter().take_while(|p| **p <= upto).count();
        let Some(&new) = n.checked_sub(1).and_then(|last| self.inflight.get(last)) else {
            return Ok(());
        };
        self.inflight.drain(..n);
        self.pending -= n as u64;
        self.commit = new;
        self.cursor = self.cursor.max(new);
        let done = self.consumed_segments();
        // Persist first: a crash before the deletions only leaves files that `open` removes.
        let result = if done.is_empty() {
            Ok(())
        } else {
            self.persist_commit().and_then(|()| self.delete_segments(done))
        };
        self.bytes = self.compute_bytes();
        result
    }

    /// Writes the commit file when the commit point moved since it was last written.
    fn persist_commit(&mut self) -> io::Result<()> {
        if self.persisted != self.commit {
            write_commit(&self.dir, self.commit, false)?;
            self.persisted = self.commit;
        }
        Ok(())
    }

    /// Delivery failed: the read cursor goes back to the last commit point, so the next `read`
    /// returns the uncommitted records again (in order).
    pub fn rewind(&mut self) {
        self.cursor = self.commit;
    }

    /// Records pushed (or recovered) and not yet committed.
    pub fn pending_records(&self) -> u64 {
        self.pending
    }

    /// Would a record of `len` payload bytes fit now?
    pub fn has_room(&self, len: usize) -> bool {
        self.bytes.saturating_add(HEADER + len as u64) <= self.max_bytes
    }

    /// Segment bytes from the commit point on: `8 + payload length` summed over the uncommitted
    /// records. This is what counts against `max_bytes`.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// No uncommitted record.
    pub fn is_empty(&self) -> bool {
        self.pending == 0
    }

    /// Hands buffered records and the commit point to the kernel, so they survive a crash of the
    /// process.
    pub fn flush(&mut self) -> io::Result<()> {
        if let Some(w) = &mut self.writer {
            w.flush()?;
        }
        self.persist_commit()
    }

    /// fsync the current segment, the segments closed since the last sync, the commit point and
    /// the directory (called on clean stop): afterwards the spool also survives a power loss.
    pub fn sync(&mut self) -> io::Result<()> {
        if let Some(w) = &mut self.writer {
            w.flush()?;
            w.file.sync_data()?;
        }
        for &seg in &self.unsynced {
            match open_nofollow(&seg_path(&self.dir, seg), false) {
                Ok(f) => f.sync_data()?,
                // Committed and deleted meanwhile.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        self.unsynced.clear();
        // Also fsyncs the directory, which makes segment creations and deletions durable.
        write_commit(&self.dir, self.commit, true)?;
        self.persisted = self.commit;
        Ok(())
    }

    /// The writer to append `size` bytes to, rolling over to a new segment when the current one
    /// is not empty and would grow past the segment size (so an oversized record gets its own).
    fn writer_for(&mut self, size: u64) -> io::Result<&mut Writer> {
        let w = match self.writer.take() {
            Some(w) if !self.must_roll(w.seg, size) => w,
            Some(mut old) => {
                if let Err(e) = old.flush() {
                    self.writer = Some(old);
                    return Err(e);
                }
                self.unsynced.push(old.seg);
                self.new_writer()?
            }
            None => self.new_writer()?,
        };
        Ok(self.writer.insert(w))
    }

    fn must_roll(&self, seg: u64, size: u64) -> bool {
        let len = self.segs.get(&seg).copied().unwrap_or(0);
        len > 0 && len + size > self.segment_size
    }

    fn new_writer(&mut self) -> io::Result<Writer> {
        let seg = self.next_seg;
        let file = create_private(&seg_path(&self.dir, seg))?;
        self.next_seg += 1;
        self.segs.insert(seg, 0);
        Ok(Writer { seg, file, buf: Vec::with_capacity(WRITE_BUFFER) })
    }

    /// Reads the record at the cursor and moves past it, unless its payload is larger than
    /// `room`. `None` when there is no record left (or no room).
    fn read_one(&mut self, room: usize) -> io::Result<Option<(Position, Vec<u8>)>> {
        let Some(seg_len) = self.settle_cursor() else { return Ok(None) };
        let at = self.cursor;
        let r = self.reader_at(at)?;
        let mut hdr = [0u8; HEADER as usize];
        r.read_exact(&mut hdr)?;
        let (len, crc) = parse_header(&hdr);
        // Checked before allocating: a corrupt length never turns into a huge buffer.
        if !len_fits(len, seg_len - at.off) {
            return Err(invalid_data(at, "bad record length"));
        }
        if len > room as u64 {
            return Ok(None);
        }
        let mut payload = vec![0u8; len as usize];
        r.read_exact(&mut payload)?;
        if crc32fast::hash(&payload) != crc {
            return Err(invalid_data(at, "crc mismatch"));
        }
        let pos = Position { seg: at.seg, off: at.off + HEADER + len };
        self.cursor = pos;
        Ok(Some((pos, payload)))
    }

    /// Moves the cursor over segment ends and deleted segments. Returns the length of the segment
    /// holding the next record, or `None` when everything was read.
    fn settle_cursor(&mut self) -> Option<u64> {
        loop {
            match self.segs.get(&self.cursor.seg) {
                Some(&len) if self.cursor.off < len => return Some(len),
                _ => {}
            }
            let (&next, _) = self.segs.range((Bound::Excluded(self.cursor.seg), Bound::Unbounded)).next()?;
            self.cursor = Position { seg: next, off: 0 };
        }
    }

    /// A read handle positioned at `at`, after flushing the writer when `at` is in its segment so
    /// the records pushed so far are in the file.
    fn reader_at(&mut self, at: Position) -> io::Result<&mut Reader> {
        if let Some(w) = self.writer.as_mut().filter(|w| w.seg == at.seg) {
            w.flush()?;
        }
        let reader = match self.reader.take() {
            Some(mut r) if r.seg == at.seg => {
                r.seek_to(at.off)?;
                r
            }
            _ => Reader::open(&seg_path(&self.dir, at.seg), at)?,
        };
        Ok(self.reader.insert(reader))
    }

    /// The segments the commit point has fully passed, except the one being written.
    fn consumed_segments(&self) -> Vec<u64> {
        let c = self.commit;
        let writer = self.writer.as_ref().map(|w| w.seg);
        self.segs
            .iter()
            .filter(|&(&s, &len)| Some(s) != writer && (s < c.seg || (s == c.seg && c.off >= len)))
            .map(|(&s, _)| s)
            .collect()
    }

    /// Deletes `done` (consumed segments). A segment whose deletion fails stays known and is
    /// retried at the next commit (or `open`).
    fn delete_segments(&mut self, done: Vec<u64>) -> io::Result<()> {
        let mut first_err = None;
        for seg in done {
            if let Err(e) = remove_if_exists(&seg_path(&self.dir, seg)) {
                first_err.get_or_insert(e);
                continue;
            }
            self.segs.remove(&seg);
            if self.reader.as_ref().is_some_and(|r| r.seg == seg) {
                self.reader = None;
            }
        }
        // Deleted segments need no fsync; this also keeps the list short when `sync` is rare.
        self.unsynced.retain(|s| self.segs.contains_key(s));
        first_err.map_or(Ok(()), Err)
    }

    fn compute_bytes(&self) -> u64 {
        let total: u64 = self.segs.range(self.commit.seg..).map(|(_, len)| len).sum();
        let head = if self.segs.contains_key(&self.commit.seg) { self.commit.off } else { 0 };
        total.saturating_sub(head)
    }
}

impl Drop for Spool {
    /// Hands buffered records to the kernel so that a reopen finds them. Errors cannot be
    /// reported from drop; call `flush` or `sync` first to see them.
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// Creates `dir` (0700) or tightens an existing one to 0700: records may hold sensitive data.
fn prepare_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let meta = fs::metadata(dir)?;
    if !meta.is_dir() {
        return Err(io::Error::other(format!("{} is not a directory", dir.display())));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

struct Listing {
    /// Regular segment files, in order.
    segs: Vec<u64>,
    /// Highest segment number among all names, files or not, so a new segment never collides.
    max_name: Option<u64>,
}

fn list_segments(dir: &Path) -> io::Result<Listing> {
    let mut listing = Listing { segs: Vec::new(), max_name: None };
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let Some(seg) = parse_seg_name(&entry.file_name()) else { continue };
        listing.max_name = listing.max_name.max(Some(seg));
        // file_type() does not follow symlinks: a planted link is neither read nor deleted.
        if entry.file_type()?.is_file() {
            listing.segs.push(seg);
        }
    }
    listing.segs.sort_unstable();
    Ok(listing)
}

fn parse_seg_name(name: &OsStr) -> Option<u64> {
    let stem = name.to_str()?.strip_suffix(".seg")?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

fn seg_path(dir: &Path, seg: u64) -> PathBuf {
    dir.join(format!("{seg:020}.seg"))
}

/// Validates one segment from where delivery resumes, cuts a torn or corrupt tail, and returns
/// its length if it still holds uncommitted records; otherwise the file is removed. Segments
/// wholly before the commit point are leftovers of a crash between a commit and the deletions.
fn recover_segment(dir: &Path, seg: u64, commit: Position, rec: &mut Recovered) -> io::Result<Option<u64>> {
    let path = seg_path(dir, seg);
    let start = match seg.cmp(&commit.seg) {
        std::cmp::Ordering::Less => return remove_if_exists(&path).map(|()| None),
        std::cmp::Ordering::Equal => commit.off,
        std::cmp::Ordering::Greater => 0,
    };
    let file = open_nofollow(&path, false)?;
    let file_len = file.metadata()?.len();
    let (end, records) = if start < file_len { scan_segment(&file, start, file_len)? } else { (file_len, 0) };
    if end < file_len {
        // A torn record can only end the last segment; elsewhere it is corruption. Either way the
        // rest of this segment is unreadable, while later segments are still checked and kept.
        open_nofollow(&path, true)?.set_len(end)?;
        rec.torn_bytes += file_len - end;
        rec.torn_files.push(path.clone());
    }
    if end <= start {
        remove_if_exists(&path)?;
        return Ok(None);
    }
    rec.records += records;
    Ok(Some(end))
}

/// Returns the end of the last good record from `start` on, and how many good records there are.
fn scan_segment(file: &File, start: u64, file_len: u64) -> io::Result<(u64, u64)> {
    let mut r = BufReader::with_capacity(READ_BUFFER, file);
    r.seek(SeekFrom::Start(start))?;
    let (mut off, mut records) = (start, 0);
    while let Some(size) = scan_record(&mut r, file_len - off)? {
        off += size;
        records += 1;
    }
    Ok((off, records))
}

/// Checks the record at the reader's position; its size if whole and intact.
fn scan_record(r: &mut impl BufRead, remaining: u64) -> io::Result<Option<u64>> {
    if remaining < HEADER {
        return Ok(None);
    }
    let mut hdr = [0u8; HEADER as usize];
    match r.read_exact(&mut hdr) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let (len, crc) = parse_header(&hdr);
    if !len_fits(len, remaining) {
        return Ok(None);
    }
    Ok(match crc_of(r, len)? {
        Some(c) if c == crc => Some(HEADER + len),
        _ => None,
    })
}

/// crc32 of the next `len` bytes, hashed straight from the read buffer (no allocation of `len`
/// bytes); `None` if the file ends first.
fn crc_of(r: &mut impl BufRead, mut len: u64) -> io::Result<Option<u32>> {
    let mut hasher = crc32fast::Hasher::new();
    while len > 0 {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            return Ok(None);
        }
        let n = buf.len().min(usize::try_from(len).unwrap_or(usize::MAX));
        hasher.update(&buf[..n]);
        r.consume(n);
        len -= n as u64;
    }
    Ok(Some(hasher.finalize()))
}

fn parse_header(hdr: &[u8; HEADER as usize]) -> (u64, u32) {
    let [a, b, c, d, e, f, g, h] = *hdr;
    (u64::from(u32::from_le_bytes([a, b, c, d])), u32::from_le_bytes([e, f, g, h]))
}

/// Whether a record of payload `len` is plausible with `remaining` bytes left in its segment.
/// Zero is refused: it is what a zero-filled tail (left by a crash) would read as.
fn len_fits(len: u64, remaining: u64) -> bool {
    len > 0 && len <= MAX_RECORD as u64 && HEADER + len <= remaining
}

fn invalid_data(at: Position, what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("spool segment {} offset {}: {what}", at.seg, at.off))
}

fn encode_commit(p: Position) -> [u8; COMMIT_LEN] {
    let mut b = [0u8; COMMIT_LEN];
    b[..4].copy_from_slice(COMMIT_MAGIC);
    b[4..12].copy_from_slice(&p.seg.to_le_bytes());
    b[12..20].copy_from_slice(&p.off.to_le_bytes());
    let crc = crc32fast::hash(&b[..20]);
    b[20..].copy_from_slice(&crc.to_le_bytes());
    b
}

fn decode_commit(b: &[u8]) -> Option<Position> {
    if b.len() != COMMIT_LEN || b[..4] != COMMIT_MAGIC[..] {
        return None;
    }
    let crc = u32::from_le_bytes(b[20..24].try_into().ok()?);
    if crc32fast::hash(&b[..20]) != crc {
        return None;
    }
    let seg = u64::from_le_bytes(b[4..12].try_into().ok()?);
    let off = u64::from_le_bytes(b[12..20].try_into().ok()?);
    Some(Position { seg, off })
}

/// The persisted commit point; `None` if missing, unreadable or corrupt.
fn read_commit(dir: &Path) -> Option<Position> {
    let file = open_nofollow(&dir.join(COMMIT_FILE), false).ok()?;
    let mut buf = Vec::with_capacity(COMMIT_LEN + 1);
    // One byte more than expected, to notice an oversized file without reading it all.
    file.take(COMMIT_LEN as u64 + 1).read_to_end(&mut buf).ok()?;
    decode_commit(&buf)
}

/// Replaces the commit file atomically. `durable` adds the fsyncs (file, then directory).
fn write_commit(dir: &Path, pos: Position, durable: bool) -> io::Result<()> {
    let tmp = dir.join(COMMIT_TMP);
    // Unlink a leftover rather than truncate it: it could be a link to some other file.
    remove_if_exists(&tmp)?;
    let mut file = create_private(&tmp)?;
    file.write_all(&encode_commit(pos))?;
    if durable {
        file.sync_all()?;
    }
    fs::rename(&tmp, dir.join(COMMIT_FILE))?;
    if durable {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// New file, mode 0600; fails if anything (even a dangling symlink) already has that name.
fn create_private(path: &Path) -> io::Result<File> {
    OpenOptions::new().write(true).create_new(true).mode(0o600).custom_flags(libc::O_NOFOLLOW).open(path)
}

fn open_nofollow(path: &Path, write: bool) -> io::Result<File> {
    OpenOptions::new().read(!write).write(write).custom_flags(libc::O_NOFOLLOW).open(path)
}

fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Small segments: 100 bytes hold three records of 20-byte payload (28 bytes each).
    const SEG: u64 = 100;
    const REC: usize = 20;
    const SIZE: u64 = HEADER + REC as u64;

    fn record(i: usize, len: usize) -> Vec<u8> {
        (0..len).map(|j| (i.wrapping_mul(31).wrapping_add(j) % 251) as u8).collect()
    }

    fn open(dir: &Path, max: u64) -> (Spool, Recovered) {
        Spool::open_with_segment_size(dir, max, SEG).unwrap()
    }

    fn push_n(sp: &mut Spool, range: std::ops::Range<usize>) {
        for i in range {
            sp.push(&record(i, REC)).unwrap();
        }
    }

    fn read_all(sp: &mut Spool) -> Vec<(Position, Vec<u8>)> {
        sp.read(usize::MAX, usize::MAX).unwrap()
    }

    fn payloads(batch: &[(Position, Vec<u8>)]) -> Vec<Vec<u8>> {
        batch.iter().map(|(_, p)| p.clone()).collect()
    }

    fn expected(ids: impl IntoIterator<Item = usize>) -> Vec<Vec<u8>> {
        ids.into_iter().map(|i| record(i, REC)).collect()
    }

    fn seg_files(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension() == Some(OsStr::new("seg")))
            .collect();
        v.sort();
        v
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn append_raw(path: &Path, bytes: &[u8]) {
        OpenOptions::new().append(true).open(path).unwrap().write_all(bytes).unwrap();
    }

    fn write_at(path: &Path, off: u64, bytes: &[u8]) {
        let mut f = OpenOptions::new().write(true).open(path).unwrap();
        f.seek(SeekFrom::Start(off)).unwrap();
        f.write_all(bytes).unwrap();
    }

    #[test]
    fn round_trip_across_segments_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut sp, rec) = open(tmp.path(), 1 << 20);
        assert_eq!(rec, Recovered::default());
        push_n(&mut sp, 0..10);
        assert_eq!(sp.pending_records(), 10);
        assert_eq!(sp.bytes(), 10 * SIZE);
        assert_eq!(seg_files(tmp.path()).len(), 4);
        let mut got = Vec::new();
        loop {
            let batch = sp.read(3, usize::MAX).unwrap();
            let Some(&(last, _)) = batch.last() else { break };
            got.extend(payloads(&batch));
            sp.commit(last).unwrap();
        }
        assert_eq!(got, expected(0..10));
        assert!(sp.is_empty());
        assert_eq!(sp.bytes(), 0);
        assert!(seg_files(tmp.path()).len() <= 1);
    }

    #[test]
    fn read_respects_byte_budget_but_returns_at_least_one() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut sp, _) = open(tmp.path(), 1 << 20);
        push_n(&mut sp, 0..5);
        assert_eq!(payloads(&sp.read(10, 2 * REC + 5).unwrap()), expected(0..2));
        assert_eq!(payloads(&sp.read(10, 1).unwrap()), expected(2..3));
        assert_eq!(payloads(&sp.read(0, usize::MAX).unwrap()), expected(0..0));
        assert_eq!(payloads(&read_all(&mut sp)), expected(3..5));
        assert!(read_all(&mut sp).is_empty());
    }

    #[test]
    fn rewind_redelivers_uncommitted_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut sp, _) = open(tmp.path(), 1 << 20);
        push_n(&mut sp, 0..5);
        let first = sp.read(3, usize::MAX).unwrap();
        sp.rewind();
        assert_eq!(payloads(&read_all(&mut sp)), expected(0..5));
        sp.commit(first[1].0).unwrap();
        sp.rewind();
        assert_eq!(payloads(&read_all(&mut sp)), expected(2..5));
        // A commit for records read before a rewind moves the cursor past them.
        sp.rewind();
        sp.commit(first[2].0).unwrap();
        assert_eq!(payloads(&read_all(&mut sp)), expected(3..5));
        assert_eq!(sp.pending_records(), 2);
    }

    #[test]
    fn commit_past_what_was_read_is_clamped() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut sp, _) = open(tmp.path(), 1 << 20);
        push_n(&mut sp, 0..5);
        sp.read(2, usize::MAX).unwrap();
        sp.commit(Position { seg: u64::MAX, off: 0 }).unwrap();
        assert_eq!(sp.pending_records(), 3);
        assert_eq!(payloads(&read_all(&mut sp)), expected(2..5));
        // Older positions are no-ops.
        sp.commit(Position { seg: 0, off: 0 }).unwrap();
        assert_eq!(sp.pending_records(), 3);
    }

    /// The commit file follows `flush`, not every commit: a crash (no drop, no flush) after a
    /// commit delivers those records again, never fewer; after a flush, exactly the rest.
    #[test]
    fn commit_point_reaches_the_file_at_flush() {
        let tmp = tempfile::tempdir().unwrap();
        // One segment: no deletion forces the file to be written.
        let (mut sp, _) = Spool::open_with_segment_size(tmp.path(), 1 << 20, 1 << 20).unwrap();
        push_n(&mut sp, 0..6);
        sp.flush().unwrap();
        let batch = sp.read(6, usize::MAX).unwrap();
        sp.commit(batch[1].0).unwrap();
        assert_eq!(read_commit(tmp.path()), None, "written at every commit");
        sp.flush().unwrap();
        assert_eq!(read_commit(tmp.path()), Some(batch[1].0));
        sp.commit(batch[3].0).unwrap();
        std::mem::forget(sp); // a kill -9: no drop, no flush
        let (mut sp, rec) = open(tmp.path(), 1 << 20);
        assert_eq!(rec.records, 4);
        assert_eq!(payloads(&read_all(&mut sp)), expected(2..6));
    }

    #[test]
    fn reopen_after_drop_returns_exactly_uncommitted() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut sp, _) = open(tmp.path(), 1 << 20);
        push_n(&mut sp, 0..7);
        let batch = sp.read(4, usize::MAX).unwrap();
        sp.commit(batch[1].0).unwrap();
        drop(sp);
        let (mut sp, rec) = open(tmp.path(), 1 << 20);
        assert_eq!(rec, Recovered { records: 5, ..Recovered::default() });
        assert_eq!(sp.bytes(), 5 * SIZE);
        assert_eq!(sp.pending_records(), 5);
        push_n(&mut sp, 7..9);
        assert_eq!(payloads(&read_all(&mut sp)), expected(2..9));
    }

    #[test]
    fn commit_deletes_delivered_segments() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut sp, _) = open(tmp.path(), 1 << 20);
        push_n(&mut sp, 0..9);
        let files = seg_files(tmp.path());
        assert_eq!(files.len(), 3);
        let batch = read_all(&mut sp);
        sp.commit(batch[5].0).unwrap();
        assert_eq!(seg_files(tmp.path()), files[2..]);
        assert_eq!(sp.bytes(), 3 * SIZE);
        sp.commit(batch[8].0).unwrap();
        // The segment being written stays.
        assert_eq!(seg_files(tmp.path()), files[2..]);
        drop(sp);
        let (sp, rec) = open(tmp.path(), 1 << 20);
        assert_eq!(rec, Recovered::default());
        assert!(sp.is_empty());
        assert_eq!(sp.bytes(), 0);
        assert!(seg_files(tmp.path()).is_empty());
    }

    #[test]
    fn full_then_space_after_commit() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut sp, _) = open(tmp.path(), 3 * SIZE);
        push_n(&mut sp, 0..3);
        sp.flush().unwrap();
        let before: Vec<u64> = seg_files(tmp.path()).iter().map(|p| fs::metadata(p).unwrap().len()).collect();
        assert!(matches!(sp.push(&record(3, REC)), Err(PushError::Full)));
        assert!(matches!(sp.push(&[1]), Err(PushError::Full)));
        sp.flush().unwrap();
        let after: Vec<u64> = seg_files(tmp.path()).iter().map(|p| fs::metadata(p).unwrap().len()).collect();
        assert_eq!(before, after);
        assert_eq!(sp.pending_records(), 3);
        let batch = sp.read(1, usize::MAX).unwrap();
        sp.commit(batch[0].0).unwrap();
        sp.push(&record(3, REC)).unwrap();
        assert!(matches!(sp.push(&record(4, REC)), Err(PushError::Full)));
        assert_eq!(payloads(&read_all(&mut sp)), expected(1..4));
        assert_eq!(sp.push(&[]).unwrap_err().to_string(), "spool write failed: empty spool record");
    }

    #[test]
    fn oversized_records() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut sp, _) = open(tmp.path(), u64::MAX);
        assert!(matches!(sp.push(&vec![0u8; MAX_RECORD + 1]), Err(PushError::Full)));
        // Larger than a segment: allowed, in a segment of its own.
        sp.push(&record(0, REC)).unwrap();
        sp.push(&record(1, 300)).unwrap();
        sp.push(&record(2, REC)).unwrap();
        assert_eq!(seg_files(tmp.path()).len(), 3);
        let got = payloads(&read_all(&mut sp));
        assert_eq!(got, vec![record(0, REC), record(1, 300), record(2, REC)]);
    }

    #[test]
    fn torn_tail_is_cut_and_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut sp, _) = open(tmp.path(), 1 << 20);
        push_n(&mut sp, 0..5);
        drop(sp);
        let last = seg_files(tmp.path()).pop().unwrap();
        let len = fs::metadata(&last).unwrap().len();
        let mut half = Vec::new();
        half.extend_from_slice(&100u32.to_le_bytes());
        half.extend_from_slice(&crc32fast::hash(&[7; 100]).to_le_bytes());
        half.extend_from_slice(&[7; 30]);
        append_raw(&last, &half);
        let (mut sp, rec) = open(tmp.path(), 1 << 20);
        let want = Recovered { records: 5, torn_bytes: 38, torn_files: vec![last.clone()] };
        assert_eq!(rec, want);
        assert_eq!(sp.bytes(), 5 * SIZE);
        assert_eq!(fs::metadata(&last).unwrap().len(), len);
        assert_eq!(payloads(&read_all(&mut sp)), expected(0..5));
        drop(sp);
        // A torn header alone.
        append_raw(&last, &[1, 2, 3, 4, 5]);
        let (_, rec) = open(tmp.path(), 1 << 20);
        assert_eq!((rec.records, rec.torn_bytes), (5, 5));
    }

    #[test]
    fn corrupt_record_in_middle_segment_keeps_later_segments() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut sp, _) = open(tmp.path(), 1 << 20);
        push_n(&mut sp, 0..9);
        drop(sp);
        let files = seg_files(tmp.path());
        // Second record of the second segment: flip a payload byte.
        write_at(&files[1], SIZE + HEADER + 3, &[0xAA ^ record(4, REC)[3]]);
        let (mut sp, rec) = open(tmp.path(), 1 << 20);
        assert_eq!(rec.records, 7);
        assert_eq!(rec.torn_bytes, 2 * SIZE);
        assert_eq!(rec.torn_files, vec![files[1].clone()]);
        assert_eq!(payloads(&read_all(&mut sp)), expected([0, 1, 2, 3, 6, 7, 8]));
    }

    #[test]
    fn garbage_length_does_not_panic_or_allocate() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut sp, _) = open(tmp.path(), 1 << 20);
        push_n(&mut sp, 0..6);
        drop(sp);
        let files = seg_files(tmp.path());
        write_at(&files[1], 0, &u32::MAX.to_le_bytes());
        // Stray segments of pure garbage, one claiming a length just under MAX_RECORD.
        fs::write(tmp.path().join(format!("{:020}.seg", 50)), [0xFF; 64]).unwrap();
        let mut big = (MAX_RECORD as u32 - 1).to_le_bytes().to_vec();
        big.extend_from_slice(&[0; 40]);
        fs::write(tmp.path().join(format!("{:020}.seg", 51)), &big).unwrap();
        fs::write(tmp.path().join(format!("{:020}.seg", 52)), [0; 16]).unwrap();
        let (mut sp, rec) = open(tmp.path(), 1 << 20);
        assert_eq!(rec.records, 3);
        assert_eq!(rec.torn_bytes, 3 * SIZE + 64 + big.len() as u64 + 16);
        assert_eq!(rec.torn_files.len(), 4);
        assert_eq!(seg_files(tmp.path()), files[..1]);
        // Tampering after open is caught by read, without panic either.
        write_at(&files[0], SIZE, &u32::MAX.to_le_bytes());
        let err = sp.read(10, usize::MAX).unwrap();
        assert_eq!(payloads(&err), expected(0..1));
        assert_eq!(sp.read(10, usize::MAX).unwrap_err().kind(), io::ErrorKind::InvalidData);
        push_n(&mut sp, 10..11);
        assert_eq!(rec.records + 1, sp.pending_records());
    }

    #[test]
    fn corrupt_or_missing_commit_starts_from_oldest_segment() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut sp, _) = open(tmp.path(), 1 << 20);
        push_n(&mut sp, 0..6);
        let batch = sp.read(2, usize::MAX).unwrap();
        sp.commit(batch[1].0).unwrap();
        drop(sp);
        let commit = tmp.path().join(COMMIT_FILE);
        let good = fs::read(&commit).unwrap();
        assert_eq!(open(tmp.path(), 1 << 20).1.records, 4);
        let mut bad = good.clone();
        bad[5] ^= 1;
        fs::write(&commit, &bad).unwrap();
        let (mut sp, rec) = open(tmp.path(), 1 << 20);
        assert_eq!(rec.records, 6);
        assert_eq!(payloads(&read_all(&mut sp)), expected(0..6));
        drop(sp);
        fs::remove_file(&commit).unwrap();
        assert_eq!(open(tmp.path(), 1 << 20).1.records, 6);
        fs::write(&commit, &good[..10]).unwrap();
        assert_eq!(open(tmp.path(), 1 << 20).1.records, 6);
    }

    #[test]
    fn dir_is_0700_and_files_0600() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/spool");
        let (mut sp, _) = open(&dir, 1 << 20);
        assert_eq!(mode(&dir), 0o700);
        push_n(&mut sp, 0..1);
        let batch = read_all(&mut sp);
        sp.commit(batch[0].0).unwrap();
        sp.sync().unwrap();
        assert_eq!(mode(&seg_files(&dir)[0]), 0o600);
        assert_eq!(mode(&dir.join(COMMIT_FILE)), 0o600);
        drop(sp);
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        open(&dir, 1 << 20);
        assert_eq!(mode(&dir), 0o700);
    }

    #[test]
    fn symlink_at_next_segment_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("spool");
        let target = tmp.path().join("target");
        fs::write(&target, b"secret").unwrap();
        let (mut sp, _) = open(&dir, 1 << 20);
        push_n(&mut sp, 0..3);
        std::os::unix::fs::symlink(&target, seg_path(&dir, sp.next_seg)).unwrap();
        assert!(matches!(sp.push(&record(3, REC)), Err(PushError::Io(_))));
        assert_eq!(fs::read(&target).unwrap(), b"secret");
        assert_eq!(sp.pending_records(), 3);
        assert_eq!(payloads(&read_all(&mut sp)), expected(0..3));
        // Reopen ignores the link and picks a number past it.
        drop(sp);
        let (mut sp, rec) = open(&dir, 1 << 20);
        assert_eq!(rec.records, 3);
        push_n(&mut sp, 3..4);
        assert_eq!(payloads(&read_all(&mut sp)), expected(0..4));
        assert_eq!(fs::read(&target).unwrap(), b"secret");
    }

    #[test]
    fn stray_files_are_ignored() {
        let tmp = tempfile::tempdir().unwrap();
        for name in ["notes.txt", "1.seg", "x0000000000000000001.seg"] {
            fs::write(tmp.path().join(name), b"hello").unwrap();
        }
        let (mut sp, rec) = open(tmp.path(), 1 << 20);
        assert_eq!(rec, Recovered::default());
        push_n(&mut sp, 0..4);
        let batch = read_all(&mut sp);
        sp.commit(batch[3].0).unwrap();
        drop(sp);
        open(tmp.path(), 1 << 20);
        for name in ["notes.txt", "1.seg", "x0000000000000000001.seg"] {
            assert_eq!(fs::read(tmp.path().join(name)).unwrap(), b"hello");
        }
    }

    /// What the spool should hold: uncommitted records, how many of them the cursor passed, and
    /// the positions learned from `read` for the first ones.
    #[derive(Default)]
    struct Model {
        pending: VecDeque<Vec<u8>>,
        cursor: usize,
        positions: Vec<Position>,
    }

    impl Model {
        fn bytes(&self) -> u64 {
            self.pending.iter().map(|r| HEADER + r.len() as u64).sum()
        }

        fn expect_read(&self, max: usize, max_bytes: usize) -> Vec<Vec<u8>> {
            let mut out = Vec::new();
            let mut total = 0;
            for r in self.pending.iter().skip(self.cursor).take(max) {
                if !out.is_empty() && total + r.len() > max_bytes {
                    break;
                }
                total += r.len();
                out.push(r.clone());
            }
            out
        }
    }

    /// Drops the spool, maybe tears the last segment, reopens it and checks what it recovered.
    fn crash_and_reopen(sp: Spool, m: &mut Model, rng: &mut fastrand::Rng, dir: &Path) -> Spool {
        drop(sp);
        let mut torn = 0;
        if let Some(last) = seg_files(dir).pop().filter(|_| rng.usize(..2) == 0) {
            let garbage: Vec<u8> = (0..1 + rng.usize(..7)).map(|_| rng.u8(..)).collect();
            append_raw(&last, &garbage);
            torn = garbage.len() as u64;
        }
        let (sp, rec) = Spool::open_with_segment_size(dir, RANDOM_MAX, 128).unwrap();
        assert_eq!((rec.records, sp.bytes(), rec.torn_bytes), (m.pending.len() as u64, m.bytes(), torn));
        m.cursor = 0;
        m.positions.clear();
        sp
    }

    const RANDOM_MAX: u64 = 2000;

    #[test]
    fn randomized_against_model() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut sp, _) = Spool::open_with_segment_size(tmp.path(), RANDOM_MAX, 128).unwrap();
        let mut m = Model::default();
        let mut rng = fastrand::Rng::with_seed(0x9E37_79B9_7F4A_7C15);
        // How often Full, a commit and a reopen happened: the run must exercise each.
        let mut seen = [0usize; 3];
        for step in 0..5000 {
            match rng.usize(..100) {
                0..=39 => {
                    let rec: Vec<u8> = (0..1 + rng.usize(..60)).map(|_| rng.u8(..)).collect();
                    let full = m.bytes() + HEADER + rec.len() as u64 > RANDOM_MAX;
                    match sp.push(&rec) {
                        Ok(()) => {
                            assert!(!full, "step {step}: should be Full");
                            m.pending.push_back(rec);
                        }
                        Err(PushError::Full) => {
                            assert!(full, "step {step}: unexpected Full");
                            seen[0] += 1;
                        }
                        Err(e) => panic!("step {step}: {e}"),
                    }
                }
                40..=64 => {
                    let (max, max_bytes) = (1 + rng.usize(..8), rng.usize(..200));
                    let batch = sp.read(max, max_bytes).unwrap();
                    assert_eq!(payloads(&batch), m.expect_read(max, max_bytes), "step {step}");
                    for (i, (pos, _)) in batch.iter().enumerate() {
                        match m.positions.get(m.cursor + i) {
                            Some(known) => assert_eq!(known, pos, "step {step}"),
                            None => m.positions.push(*pos),
                        }
                    }
                    m.cursor += batch.len();
                }
                65..=84 if !m.positions.is_empty() => {
                    let k = 1 + rng.usize(..m.positions.len());
                    sp.commit(m.positions[k - 1]).unwrap();
                    m.pending.drain(..k);
                    m.positions.drain(..k);
                    m.cursor = m.cursor.saturating_sub(k);
                    if m.pending.is_empty() {
                        assert!(seg_files(tmp.path()).len() <= 1, "step {step}");
                    }
                    seen[1] += 1;
                }
                85..=92 => {
                    sp.rewind();
                    m.cursor = 0;
                }
                93..=99 => {
                    if rng.usize(..2) == 0 {
                        sp.sync().unwrap();
                    }
                    sp = crash_and_reopen(sp, &mut m, &mut rng, tmp.path());
                    seen[2] += 1;
                }
                _ => {}
            }
            assert_eq!(sp.pending_records(), m.pending.len() as u64, "step {step}");
            assert_eq!(sp.bytes(), m.bytes(), "step {step}");
            assert_eq!(sp.is_empty(), m.pending.is_empty(), "step {step}");
        }
        assert!(seen.iter().all(|&n| n > 20), "{seen:?}");
    }
}
