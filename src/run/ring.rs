//! A kernel BPF ring buffer read in place: the records stay where the
//! kernel wrote them until the writer has handled them, and only then is
//! their space given back (the consumer position).
//!
//! libbpf's `ring_buffer__consume` gives a record's space back as soon as
//! its callback returns, so the records had to be copied out first: that
//! copy was a fifth of the JSON stream's CPU. libbpf has no call that
//! walks records without consuming them, so this maps the ring itself
//! (`kernel/bpf/ringbuf.c` describes the layout): a page with the consumer
//! position (read-write), a page with the producer position, then the data
//! (read-only). Each record starts with an 8-byte header: its length, with
//! bit 31 set while the kernel still writes it and bit 30 if it was
//! discarded.
//!
//! libbpf maps the data twice in a row so that a record that wraps around
//! the end reads as one piece; the pages of both mappings count in the RSS
//! (16 MiB more for a 16 MiB ring, measured). This maps it once and copies
//! the one record per lap of the ring that wraps (a TLS record is at most
//! 32 KiB; a lap is the ring's size, 16 or 32 MiB by default).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use libbpf_rs::{MapCore, MapHandle};

const BUSY: u32 = 1 << 31;
const DISCARDED: u32 = 1 << 30;
const HEADER: u64 = 8;

/// One mapped ring buffer.
pub struct Ring {
    map: MapHandle,
    consumer: Mapping,
    /// The producer page then the data.
    data: Mapping,
    page: usize,
    mask: u64,
    release: Mutex<Release>,
}

/// Who may give back which part of the ring, when some of its records are
/// handled in place by the writer and later ones were copied out by the
/// drain thread (the consumer position is one number: copied records'
/// space comes back only after every record before them was handled).
#[derive(Default)]
struct Release {
    /// The end of the last span handed over in place.
    in_place_end: u64,
    /// How far the writer has handled what was handed in place.
    handled: u64,
    /// The end of the last record copied out.
    copied_end: u64,
}

impl Release {
    /// Copied records' space comes back at once if nothing before them is
    /// still held in place.
    fn copied(&mut self, end: u64) -> Option<u64> {
        self.copied_end = end;
        (self.handled >= self.in_place_end).then_some(end)
    }

    /// Where the consumer position may go once the span in place that
    /// ends at `end` is handled: past the records copied after it too, if
    /// it was the last span in place.
    fn handled(&mut self, end: u64) -> u64 {
        self.handled = end;
        if end >= self.in_place_end {
            end.max(self.copied_end)
        } else {
            end
        }
    }
}

struct Mapping {
    addr: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mappings are plain shared memory, alive as long as the
// `Ring`; the positions in them are read and written atomically.
unsafe impl Send for Ring {}
unsafe impl Sync for Ring {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `addr` and `len` are a mapping this struct owns.
        unsafe { libc::munmap(self.addr, self.len) };
    }
}

fn map(fd: BorrowedFd, len: usize, prot: libc::c_int, offset: usize) -> io::Result<Mapping> {
    // SAFETY: a new shared mapping of the ring buffer's file at an address
    // the kernel chooses; nothing else refers to that range.
    let addr =
        unsafe { libc::mmap(std::ptr::null_mut(), len, prot, libc::MAP_SHARED, fd.as_raw_fd(), offset as _) };
    if addr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(Mapping { addr, len })
}

impl Ring {
    /// Maps `ring` (a `BPF_MAP_TYPE_RINGBUF`).
    pub fn map(ring: MapHandle) -> io::Result<Ring> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let size = ring.max_entries() as usize;
        let consumer = map(ring.as_fd(), page, libc::PROT_READ | libc::PROT_WRITE, 0)?;
        let data = map(ring.as_fd(), page + size, libc::PROT_READ, page)?;
        Ok(Ring { map: ring, consumer, data, page, mask: size as u64 - 1, release: Mutex::default() })
    }

    /// Its data's size in bytes.
    pub fn size(&self) -> u64 {
        self.mask + 1
    }

    fn position(mapping: &Mapping) -> &AtomicU64 {
        // SAFETY: each position is the first 8 bytes of its page, aligned,
        // and lives as long as the mapping.
        unsafe { &*mapping.addr.cast::<AtomicU64>() }
    }

    fn producer(&self) -> u64 {
        Self::position(&self.data).load(Ordering::Acquire)
    }

    pub fn consumer(&self) -> u64 {
        Self::position(&self.consumer).load(Ordering::Acquire)
    }

    fn data(&self) -> *const u8 {
        // SAFETY: the data starts one page into the mapping.
        unsafe { self.data.addr.cast::<u8>().add(self.page) }
    }

    /// The end of the records after `from` that the kernel has finished
    /// writing (it stops at the first one still being written), and once
    /// `max` bytes are passed.
    pub fn committed(&self, from: u64, max: u64) -> u64 {
        walk_committed(self.data(), self.mask, from, self.producer().min(from + max))
    }

    /// Calls `f` with each record in `[from, to)` (positions `committed`
    /// returned), discarded ones left out, until it fails. A record is
    /// valid until `handled` gives its space back; one that wraps around
    /// the end is copied into `scratch` first.
    pub fn try_for_each<E>(
        &self,
        from: u64,
        to: u64,
        scratch: &mut Vec<u64>,
        f: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        for_each_record(self.data(), self.mask, from, to, scratch, f)
    }

    /// Bytes the kernel cannot use: written and not yet given back.
    pub fn held(&self, walked: u64) -> u64 {
        walked - self.consumer()
    }

    fn release(&self) -> std::sync::MutexGuard<'_, Release> {
        self.release.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The drain thread handed `[.., end)` to the writer in place.
    pub fn handed_in_place(&self, end: u64) {
        self.release().in_place_end = end;
    }

    /// The drain thread copied out every record up to `end`.
    pub fn copied(&self, end: u64) {
        let mut release = self.release();
        if let Some(to) = release.copied(end) {
            self.give_back(to);
        }
    }

    /// The writer handled the span in place that ends at `end`.
    pub fn handled(&self, end: u64) {
        let mut release = self.release();
        let to = release.handled(end);
        self.give_back(to);
    }

    fn give_back(&self, to: u64) {
        let consumer = Self::position(&self.consumer);
        if to > consumer.load(Ordering::Relaxed) {
            consumer.store(to, Ordering::Release);
        }
    }
}

/// Where the drain thread sleeps: until a ring has records or the writer
/// gave space back (`wake`), or a timeout.
pub struct Waiter {
    epoll: OwnedFd,
    wake: OwnedFd,
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn millis(timeout: Duration) -> libc::c_int {
    timeout.as_millis().try_into().unwrap_or(libc::c_int::MAX)
}

impl Waiter {
    pub fn new(rings: &[Ring]) -> io::Result<Waiter> {
        // SAFETY: plain syscalls; each fd returned is owned from here on.
        let (epoll, wake) = unsafe {
            let epoll = OwnedFd::from_raw_fd(check(libc::epoll_create1(libc::EPOLL_CLOEXEC))?);
            let wake = OwnedFd::from_raw_fd(check(libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK))?);
            (epoll, wake)
        };
        let fds = rings.iter().map(|r| r.map.as_fd().as_raw_fd()).chain([wake.as_raw_fd()]);
        for fd in fds {
            let mut event = libc::epoll_event { events: libc::EPOLLIN as u32, u64: 0 };
            // SAFETY: both fds are open; `event` is read during the call.
            check(unsafe { libc::epoll_ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) })?;
        }
        Ok(Waiter { epoll, wake })
    }

    /// The writer gave space back: the drain thread should look again.
    pub fn wake(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from `one` to the eventfd. A failure can
        // only be a counter at its maximum, which already wakes.
        unsafe { libc::write(self.wake.as_raw_fd(), one.as_ptr().cast(), 8) };
    }

    /// Until a ring has records, `wake`, or `timeout`. Only when no ring
    /// is held in place: a held ring always reads as ready.
    pub fn any(&self, timeout: Duration) {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 4];
        // SAFETY: `events` has room for the 4 events the call may write.
        unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), events.as_mut_ptr(), 4, millis(timeout)) };
        self.clear();
    }

    /// Until `wake` or `timeout`.
    pub fn woken(&self, timeout: Duration) {
        let mut fd = libc::pollfd { fd: self.wake.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one pollfd, read and written during the call.
        unsafe { libc::poll(&mut fd, 1, millis(timeout)) };
        self.clear();
    }

    fn clear(&self) {
        let mut count = [0u8; 8];
        // SAFETY: reads at most 8 bytes into `count`; non-blocking.
        unsafe { libc::read(self.wake.as_raw_fd(), count.as_mut_ptr().cast(), 8) };
    }
}

fn header(data: *const u8, mask: u64, pos: u64) -> u32 {
    // SAFETY: `pos & mask` is inside the data and 8-aligned (every record
    // is a multiple of 8 long); the kernel sets the header atomically.
    unsafe { (*data.add((pos & mask) as usize).cast::<AtomicU32>()).load(Ordering::Acquire) }
}

fn record_span(header: u32) -> u64 {
    (u64::from(header & !(BUSY | DISCARDED)) + HEADER).next_multiple_of(8)
}

fn walk_committed(data: *const u8, mask: u64, from: u64, producer: u64) -> u64 {
    let mut pos = from;
    while pos < producer {
        let h = header(data, mask, pos);
        if h & BUSY != 0 {
            break;
        }
        pos += record_span(h);
    }
    pos
}

fn for_each_record<E>(
    data: *const u8,
    mask: u64,
    from: u64,
    to: u64,
    scratch: &mut Vec<u64>,
    mut f: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<(), E> {
    let size = (mask + 1) as usize;
    let mut pos = from;
    while pos < to {
        let h = header(data, mask, pos);
        let at = ((pos + HEADER) & mask) as usize;
        pos += record_span(h);
        if h & DISCARDED != 0 {
            continue;
        }
        let len = (h & !(BUSY | DISCARDED)) as usize;
        // SAFETY: a committed record of `len` bytes starts at `at`, inside
        // the `size` bytes of data (the part past the end continues at the
        // start); the kernel leaves it alone until the consumer position
        // passes it. `scratch` is resized to hold `len` bytes before the
        // two pieces are copied into it.
        let record = unsafe {
            if at + len <= size {
                std::slice::from_raw_parts(data.add(at), len)
            } else {
                scratch.clear();
                scratch.resize(len.div_ceil(8), 0);
                let to = scratch.as_mut_ptr().cast::<u8>();
                let head = size - at;
                std::ptr::copy_nonoverlapping(data.add(at), to, head);
                std::ptr::copy_nonoverlapping(data, to.add(head), len - head);
                std::slice::from_raw_parts(to, len)
            }
        };
        f(record)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ring of `size` bytes laid out as mapped, in memory.
    struct FakeRing {
        words: Vec<u64>,
        size: u64,
        producer: u64,
    }

    impl FakeRing {
        fn new(size: u64, start: u64) -> Self {
            FakeRing { words: vec![0; (size / 8) as usize], size, producer: start }
        }

        fn put(&mut self, payload: &[u8], flags: u32) {
            let span = record_span(payload.len() as u32);
            let mut bytes = vec![0u8; span as usize];
            bytes[..4].copy_from_slice(&(payload.len() as u32 | flags).to_ne_bytes());
            bytes[8..8 + payload.len()].copy_from_slice(payload);
            let mem: &mut [u8] = bytemuck::cast_slice_mut(&mut self.words);
            for (i, b) in bytes.iter().enumerate() {
                let at = ((self.producer + i as u64) % self.size) as usize;
                mem[at] = *b;
            }
            self.producer += span;
        }

        fn walk(&self, from: u64) -> (u64, Vec<Vec<u8>>) {
            let data = self.words.as_ptr().cast::<u8>();
            let end = walk_committed(data, self.size - 1, from, self.producer);
            let mut records = Vec::new();
            let mut scratch = Vec::new();
            let _: Result<(), ()> = for_each_record(data, self.size - 1, from, end, &mut scratch, |r| {
                assert_eq!(r.as_ptr() as usize % 8, 0, "aligned");
                records.push(r.to_vec());
                Ok(())
            });
            (end, records)
        }
    }

    #[test]
    fn records_come_out_whole_across_the_wrap_and_discarded_ones_are_skipped() {
        // The second record's payload crosses the end; then its header is
        // the ring's last 8 bytes and the payload starts at 0.
        for start in [4096 - 40, 4096 - 24] {
            let mut ring = FakeRing::new(4096, start);
            ring.put(b"first", 0);
            let second: Vec<u8> = (0..100).collect();
            ring.put(&second, 0);
            ring.put(b"thrown away", DISCARDED);
            ring.put(b"last", 0);
            let (end, records) = ring.walk(start);
            assert_eq!(end, ring.producer);
            assert_eq!(records, [b"first".to_vec(), second, b"last".to_vec()]);
        }
    }

    #[test]
    fn copied_records_come_back_only_after_the_spans_before_them() {
        let mut r = Release::default();
        // Copied with nothing held in place: at once.
        assert_eq!(r.copied(100), Some(100));
        // Two spans in place, then copies: those wait for both spans.
        r.in_place_end = 200;
        r.in_place_end = 300;
        assert_eq!(r.copied(400), None);
        assert_eq!(r.handled(200), 200);
        assert_eq!(r.copied(500), None);
        assert_eq!(r.handled(300), 500);
        // Another span in place after the copies: its end alone.
        r.in_place_end = 600;
        assert_eq!(r.handled(600), 600);
        assert_eq!(r.copied(700), Some(700));
    }

    #[test]
    fn a_bounded_walk_ends_after_whole_records() {
        let mut ring = FakeRing::new(4096, 0);
        ring.put(&[1; 100], 0);
        let first_end = ring.producer;
        ring.put(&[2; 100], 0);
        let data = ring.words.as_ptr().cast::<u8>();
        // One byte of room still takes the whole first record, not the second.
        assert_eq!(walk_committed(data, 4095, 0, ring.producer.min(1)), first_end);
        assert_eq!(walk_committed(data, 4095, 0, ring.producer.min(first_end)), first_end);
        assert_eq!(walk_committed(data, 4095, 0, ring.producer.min(first_end + 1)), ring.producer);
    }

    #[test]
    fn the_walk_stops_at_a_record_still_being_written() {
        let mut ring = FakeRing::new(4096, 0);
        ring.put(b"done", 0);
        let first_end = ring.producer;
        ring.put(b"in progress", BUSY);
        ring.put(b"after", 0);
        let (end, records) = ring.walk(0);
        assert_eq!(end, first_end);
        assert_eq!(records, [b"done".to_vec()]);
    }
}
