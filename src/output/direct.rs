//! Direct I/O for an output file cleartap created itself (`-o FILE`):
//! records go from cleartap's memory to the disk, not through the page
//! cache.
//!
//! A capture written through the page cache pays, per MiB, for the copy
//! into the cache, the file system's per-page bookkeeping, and giving the
//! pages back (see `stdout::Writeback`): measured on a 1 GiB stream, that
//! was over half of cleartap's CPU. A direct write of the same MiB costs a
//! tenth of it (2 GiB: 0.21 s of system time direct, 4.8 s buffered, `dd`
//! here). Direct I/O is only for files cleartap opened: a shell's `>` may
//! share its open file with stderr, whose writes direct I/O would refuse.
//!
//! Direct writes must start, end and sit in memory at multiples of the
//! device's block size. Records are copied into aligned stages of a MiB,
//! and a thread of its own writes the full stages, all those waiting in
//! one call, so that formatting goes on while the disk works (a writer
//! that waited for each MiB let the ring buffer fill in bursts). When half
//! the stages wait (the disk is behind), they go through the page cache
//! instead, in order, which absorbs the burst as for any file (writing
//! direct only, a 1 GiB stream lost records in disk stalls here).
//!
//! A flush (a record boundary) hands the stage over as it is: its whole
//! blocks go direct and the last partial block through the page cache,
//! which sets the file's length exactly; that block's bytes start the next
//! stage and are written again, whole, later. So after a flush the file
//! holds exactly the records written, as a buffered file would.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};

/// Offsets, lengths and memory of direct writes are multiples of this:
/// the page size, and no smaller than any common device's logical block.
const ALIGN: usize = 4096;
/// One stage: whole blocks written at once.
const STAGE: usize = 1 << 20;
/// Stages at most: one being filled, the rest in flight. The writer waits
/// only when the disk is behind by all of them.
const STAGES: usize = 8;

/// Asks for direct writes on a file cleartap created and holds alone; a
/// file system without direct I/O leaves it buffered.
pub fn request(file: &File) {
    // SAFETY: F_GETFL/F_SETFL on an open fd change only its flags.
    unsafe {
        let flags = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags | libc::O_DIRECT);
        }
    }
}

/// Room in a stage past `STAGE` for the record that crosses it: records
/// are built in the stage itself (`buffer`), and it is handed over at the
/// first record boundary at or past `STAGE`. A record larger than this
/// moves the stage's memory, which is then copied once to aligned memory.
const SLACK: usize = 256 << 10;

/// Aligned memory for up to `STAGE + SLACK` bytes, filled from the start.
/// A `Vec` (so the outputs build records in it as in any buffer) whose
/// first `pad` bytes are not data: `pad` puts the data on an `ALIGN`
/// boundary for the allocation it was made with.
struct Stage {
    memory: Vec<u8>,
    pad: usize,
}

impl Stage {
    fn new() -> Stage {
        Self::with_room(STAGE + SLACK)
    }

    fn with_room(room: usize) -> Stage {
        let mut memory = Vec::<u8>::with_capacity(room + ALIGN);
        let pad = memory.as_ptr().align_offset(ALIGN);
        memory.resize(pad, 0);
        Stage { memory, pad }
    }

    fn len(&self) -> usize {
        self.memory.len() - self.pad
    }

    /// Copies in what fits of `data` below `STAGE`; returns how much.
    fn fill(&mut self, data: &[u8]) -> usize {
        let n = STAGE.saturating_sub(self.len()).min(data.len());
        self.memory.extend_from_slice(&data[..n]);
        n
    }

    fn bytes(&self) -> &[u8] {
        &self.memory[self.pad..]
    }

    /// The whole blocks, as far as there are.
    fn whole(&self) -> usize {
        self.len() / ALIGN * ALIGN
    }

    /// The data still starts on an `ALIGN` boundary: a record that did not
    /// fit the room made the `Vec` move its memory.
    fn is_aligned(&self) -> bool {
        (self.memory.as_ptr() as usize + self.pad).is_multiple_of(ALIGN)
    }

    /// The same bytes in a stage whose data is aligned.
    fn aligned(self) -> Stage {
        if self.is_aligned() {
            return self;
        }
        let mut stage = Stage::with_room(self.len().max(STAGE + SLACK));
        stage.memory.extend_from_slice(self.bytes());
        stage
    }

    fn clear(&mut self) {
        self.memory.truncate(self.pad);
    }

    /// Memory a very large record made this stage take, kept no longer
    /// than that record.
    fn oversized(&self) -> bool {
        self.memory.capacity() > STAGE + SLACK + 2 * ALIGN
    }
}

/// A stage for the writing thread: its bytes go at `offset`; `flush` if
/// it ends at a record boundary.
struct Job {
    stage: Stage,
    offset: u64,
    flush: bool,
    /// The nice value of the thread that handed it over.
    nice: i32,
}

fn thread_nice() -> i32 {
    // SAFETY: getpriority of the calling thread (Linux: nice is per thread).
    unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
}

fn set_thread_nice(nice: i32) -> bool {
    // SAFETY: setpriority of the calling thread.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) == 0 }
}

/// A job written, or not.
struct Done {
    stage: Stage,
    result: io::Result<()>,
    /// The file's length of whole records after it, for a flush.
    flushed: Option<u64>,
    /// Written through the page cache, the disk being behind.
    cached: bool,
}

/// The two ways to the same file.
struct Files {
    direct: File,
    /// The same file opened again without `O_DIRECT`.
    cached: File,
}

impl Files {
    /// Writes every job queued, in order. Each stage starts where the one
    /// before ended its whole blocks, so the whole blocks of all of them
    /// are one range, written direct in one call (a disk takes one large
    /// write faster than the same bytes in several writes in a row); a
    /// partial block, which ends a flushed stage, goes through the page
    /// cache between them.
    fn serve(&self, jobs: Receiver<Job>, done: Sender<Done>, stages: usize) {
        let mut nice = thread_nice();
        while let Ok(first) = jobs.recv() {
            // The priority of the thread that feeds this one, raised while
            // the capture's output is behind (run::priority).
            if first.nice != nice && set_thread_nice(first.nice) {
                nice = first.nice;
            }
            let mut group = vec![first];
            group.extend(jobs.try_iter());
            let behind = group.len() >= stages / 2;
            let mut result = self.write(&group, behind);
            for job in group {
                let flushed = (job.flush && result.is_ok()).then_some(job.offset + job.stage.len() as u64);
                let result = std::mem::replace(&mut result, Ok(()));
                if done.send(Done { stage: job.stage, result, flushed, cached: behind }).is_err() {
                    return;
                }
            }
        }
    }

    /// The group's bytes in place: direct, or all through the page cache
    /// when the disk is `behind`.
    fn write(&self, group: &[Job], behind: bool) -> io::Result<()> {
        if behind {
            for job in group {
                self.cached.write_all_at(job.stage.bytes(), job.offset)?;
            }
            return Ok(());
        }
        let mut blocks: Vec<&[u8]> = Vec::with_capacity(group.len());
        let mut at = group[0].offset;
        for job in group {
            let (bytes, whole) = (job.stage.bytes(), job.stage.whole());
            blocks.push(&bytes[..whole]);
            if whole < bytes.len() {
                self.write_direct(&blocks, at)?;
                blocks.clear();
                at = job.offset + whole as u64;
                self.cached.write_all_at(&bytes[whole..], at)?;
            }
        }
        self.write_direct(&blocks, at)
    }

    /// One `pwritev`; what a short write left, piece by piece.
    fn write_direct(&self, pieces: &[&[u8]], mut offset: u64) -> io::Result<()> {
        if pieces.is_empty() {
            return Ok(());
        }
        let iov: Vec<libc::iovec> = pieces
            .iter()
            .map(|p| libc::iovec { iov_base: p.as_ptr() as *mut libc::c_void, iov_len: p.len() })
            .collect();
        // SAFETY: each iovec points to a live slice of `pieces`, for its
        // length; the kernel only reads them.
        let n =
            unsafe { libc::pwritev(self.direct.as_raw_fd(), iov.as_ptr(), iov.len() as i32, offset as i64) };
        let mut skip = if n >= 0 {
            n as usize
        } else {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
            0
        };
        for piece in pieces {
            if skip < piece.len() {
                self.direct.write_all_at(&piece[skip..], offset + skip as u64)?;
            }
            skip = skip.saturating_sub(piece.len());
            offset += piece.len() as u64;
        }
        Ok(())
    }
}

pub struct Direct {
    current: Stage,
    /// Where `current`'s first byte goes in the file: a multiple of ALIGN.
    offset: u64,
    jobs: Option<Sender<Job>>,
    done: Receiver<Done>,
    free: Vec<Stage>,
    in_flight: usize,
    /// Stages made so far, and at most.
    made: usize,
    stages: usize,
    /// The file's length of whole records, as far as written.
    flushed: u64,
    /// Stages written through the page cache.
    cached_stages: u64,
    /// A write failed: the caller cuts the file back, and nothing more is
    /// written, not even at drop.
    failed: bool,
    thread: Option<JoinHandle<()>>,
}

impl Direct {
    /// Takes over `file` from `offset` if it was opened with `O_DIRECT`,
    /// `offset` is aligned and a direct write there works (a file system
    /// without direct I/O, or with blocks larger than `ALIGN`, refuses it);
    /// `None` leaves the file to buffered writes.
    pub fn for_file(file: &File, offset: u64) -> Option<Direct> {
        Self::with_stages(file, offset, STAGES)
    }

    /// `stages` >= 2: one being filled, one in flight.
    fn with_stages(file: &File, offset: u64, stages: usize) -> Option<Direct> {
        // SAFETY: F_GETFL on an open fd reads its flags.
        let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
        if flags < 0 || flags & libc::O_DIRECT == 0 || !offset.is_multiple_of(ALIGN as u64) {
            return None;
        }
        let mut current = Stage::new();
        current.memory.resize(current.pad + ALIGN, 0);
        let tried = file.write_all_at(current.bytes(), offset).and_then(|()| file.set_len(offset));
        current.clear();
        if let Err(e) = tried {
            crate::note!("cleartap: the output file does not take direct writes ({e}); writing it through the page cache");
            // SAFETY: as above; clearing the flag only changes how it is written.
            unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags & !libc::O_DIRECT) };
            return None;
        }
        // A new open of the same file (not a path lookup), so its flags
        // are its own.
        let cached = File::options().write(true).open(format!("/proc/self/fd/{}", file.as_raw_fd())).ok()?;
        let files = Files { direct: file.try_clone().ok()?, cached };
        let (jobs, pending) = crossbeam_channel::bounded::<Job>(stages);
        let (finished, done) = crossbeam_channel::bounded(stages);
        let thread = std::thread::Builder::new()
            .name("cleartap-output".into())
            .spawn(move || files.serve(pending, finished, stages))
            .ok()?;
        Some(Direct {
            current,
            offset,
            jobs: Some(jobs),
            done,
            free: Vec::new(),
            in_flight: 0,
            made: 1,
            stages,
            flushed: offset,
            cached_stages: 0,
            failed: false,
            thread: Some(thread),
        })
    }

    /// Stages `data`; each full stage goes to the writing thread.
    pub fn write(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            data = &data[self.current.fill(data)..];
            if self.current.len() >= STAGE {
                self.hand_over(false)?;
            }
        }
        Ok(())
    }

    /// Where the next record is built: the current stage itself, after the
    /// records before it, so that a record is written where the disk reads
    /// it from (copying each MiB into a stage was a third of the JSON
    /// output's CPU on a stream). Only ever appended to, or cut back to a
    /// length it had since the last `record_done`.
    pub fn buffer(&mut self) -> &mut Vec<u8> {
        &mut self.current.memory
    }

    /// The record built in `buffer` is whole: the stage goes to the
    /// writing thread once it holds `STAGE` bytes.
    pub fn record_done(&mut self) -> io::Result<()> {
        debug_assert!(self.current.memory.len() >= self.current.pad, "a record cut into the stage's padding");
        if self.current.len() >= STAGE {
            self.hand_over(false)?;
        }
        Ok(())
    }

    /// Hands over what is staged, ending at a record boundary, and waits
    /// until it is written (a few MiB at most); returns the file's length.
    pub fn flush(&mut self) -> io::Result<u64> {
        if self.current.len() > 0 {
            self.hand_over(true)?;
        }
        while self.in_flight > 0 {
            self.take_done()?;
        }
        Ok(self.flushed)
    }

    /// Sends the current stage and takes an empty one, which starts with
    /// the current one's last partial block (none when it is full). Waits
    /// for a stage to come back only when all are in flight.
    fn hand_over(&mut self, flush: bool) -> io::Result<()> {
        while let Ok(done) = self.done.try_recv() {
            self.finished(done)?;
        }
        let mut next = match self.free.pop() {
            Some(stage) => stage,
            None if self.made < self.stages => {
                self.made += 1;
                Stage::new()
            }
            None => {
                self.take_done()?;
                self.free.pop().expect("a stage just came back")
            }
        };
        let whole = self.current.whole();
        next.fill(&self.current.bytes()[whole..]);
        let stage = std::mem::replace(&mut self.current, next);
        let job = Job { stage: stage.aligned(), offset: self.offset, flush, nice: thread_nice() };
        self.offset += whole as u64;
        let sent = self.jobs.as_ref().is_some_and(|jobs| jobs.send(job).is_ok());
        if !sent {
            self.failed = true;
            return Err(io::Error::other("the output's writing thread ended"));
        }
        self.in_flight += 1;
        Ok(())
    }

    fn take_done(&mut self) -> io::Result<()> {
        let Ok(done) = self.done.recv() else {
            self.failed = true;
            return Err(io::Error::other("the output's writing thread ended"));
        };
        self.finished(done)
    }

    fn finished(&mut self, mut done: Done) -> io::Result<()> {
        self.in_flight -= 1;
        done.stage.clear();
        if done.stage.oversized() {
            done.stage = Stage::new();
        }
        self.free.push(done.stage);
        self.cached_stages += u64::from(done.cached);
        if let Err(e) = done.result {
            self.failed = true;
            return Err(e);
        }
        if let Some(flushed) = done.flushed {
            self.flushed = flushed;
        }
        Ok(())
    }
}

impl Drop for Direct {
    fn drop(&mut self) {
        if !self.failed {
            if let Err(e) = self.flush() {
                crate::note!("cleartap: error: writing the end of the output: {e}");
            }
        }
        if self.cached_stages > 0 {
            crate::note!(
                "cleartap: {} MiB of the output went through the page cache: the disk was behind the capture",
                (self.cached_stages * STAGE as u64) >> 20
            );
        }
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::OpenOptionsExt;

    fn direct_file(dir: &std::path::Path) -> File {
        std::fs::OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(dir.join("out"))
            .expect("this platform's file systems take O_DIRECT")
    }

    /// Pieces of every size, some larger than all stages together, with
    /// flushes between: once written, the file is exactly what was written
    /// up to the flush.
    #[test]
    fn once_written_the_file_is_exactly_what_was_flushed() {
        writes_and_flushes(STAGES);
        writes_and_flushes(2);
    }

    /// Groups of stages as `Direct` hands them over (each starts where
    /// the one before ended its whole blocks), partial blocks between: each
    /// byte lands in its place.
    #[test]
    fn a_group_of_stages_lands_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let file = direct_file(dir.path());
        let cached = File::options().write(true).open(dir.path().join("out")).unwrap();
        let files = Files { direct: file, cached };
        let mut want = Vec::new();
        let mut offset = 0;
        let groups: [&[usize]; 3] = [&[STAGE - 10, 3 * ALIGN + 5, STAGE], &[STAGE, STAGE, ALIGN + 1], &[7]];
        for (lens, behind) in groups.into_iter().zip([false, true, false]) {
            let mut group = Vec::new();
            for &len in lens {
                let mut stage = Stage::new();
                let piece: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
                want.truncate(offset as usize);
                want.extend_from_slice(&piece);
                stage.fill(&piece);
                group.push(Job { stage, offset, flush: true, nice: 0 });
                offset += (len / ALIGN * ALIGN) as u64;
            }
            files.write(&group, behind).unwrap();
            assert_eq!(std::fs::read(dir.path().join("out")).unwrap(), want);
        }
    }

    fn writes_and_flushes(stages: usize) {
        let dir = tempfile::tempdir().unwrap();
        let file = direct_file(dir.path());
        let mut direct = Direct::with_stages(&file, 0, stages).expect("a direct write works here");
        let mut want = Vec::new();
        let mut seed = 7u32;
        for round in 0..40 {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let len = match round % 5 {
                0 => seed as usize % 100,
                1 => seed as usize % (3 * ALIGN),
                2 => STAGE + seed as usize % STAGE,
                3 => STAGES * STAGE + seed as usize % STAGE,
                _ => ALIGN,
            };
            let piece: Vec<u8> = (0..len).map(|i| (i as u32 ^ seed) as u8).collect();
            direct.write(&piece).unwrap();
            want.extend_from_slice(&piece);
            if round % 3 != 2 {
                assert_eq!(direct.flush().unwrap(), want.len() as u64);
                assert_eq!(std::fs::read(dir.path().join("out")).unwrap(), want, "round {round}");
            }
        }
        // SAFETY: F_GETFL reads the flags.
        let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
        assert_ne!(flags & libc::O_DIRECT, 0, "never fell back to the page cache");
        assert!(direct.made <= stages);
    }

    /// Records built in the stages themselves, as the JSON and binary
    /// outputs do, of every size: some cross a stage, some are larger than
    /// a stage's room (its memory moves, and is copied back to alignment),
    /// some cut back what they started. The file is the records, exactly.
    #[test]
    fn records_built_in_the_stages_land_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let file = direct_file(dir.path());
        let mut direct = Direct::with_stages(&file, 0, 3).expect("a direct write works here");
        let mut want = Vec::new();
        let mut seed = 11u32;
        for round in 0..60 {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let len = match round % 6 {
                0 => seed as usize % 200,
                1 => seed as usize % (5 * ALIGN),
                2 => STAGE - 100 + seed as usize % 300,
                3 => STAGE + SLACK + seed as usize % STAGE,
                _ => 40_000 + seed as usize % 30_000,
            };
            let record: Vec<u8> = (0..len).map(|i| (i as u32 ^ seed) as u8).collect();
            let buf = direct.buffer();
            let start = buf.len();
            if round % 7 == 3 {
                buf.extend_from_slice(b"a record given up");
                buf.truncate(start);
            }
            buf.extend_from_slice(&record);
            want.extend_from_slice(&record);
            direct.record_done().unwrap();
            if round % 4 == 0 {
                assert_eq!(direct.flush().unwrap(), want.len() as u64);
                assert_eq!(std::fs::read(dir.path().join("out")).unwrap(), want, "round {round}");
            }
        }
        assert_eq!(direct.flush().unwrap(), want.len() as u64);
        assert_eq!(std::fs::read(dir.path().join("out")).unwrap(), want);
        assert!(direct.free.iter().all(|stage| !stage.oversized()), "memory of a large record kept");
    }

    /// A stage whose memory moved is copied to aligned memory, bytes unchanged.
    #[test]
    fn a_moved_stage_is_aligned_again() {
        let mut moved = Stage::with_room(ALIGN);
        moved.memory.push(0);
        moved.pad += 1;
        moved.memory.extend_from_slice(b"records after the padding");
        assert!(!moved.is_aligned());
        let stage = moved.aligned();
        assert!(stage.is_aligned());
        assert_eq!(stage.bytes(), b"records after the padding");
    }

    #[test]
    fn only_an_aligned_direct_file_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Direct::for_file(&direct_file(dir.path()), 100).is_none(), "an unaligned start");
        let buffered = File::create(dir.path().join("buffered")).unwrap();
        assert!(Direct::for_file(&buffered, 0).is_none(), "not opened O_DIRECT");
    }
}
