//! Between the thread that drains the kernel's ring buffers and the thread
//! that decodes, formats and writes, in order: spans of a ring buffer the
//! writer reads in place (`run::ring`), or records copied out, in batches
//! bounded in bytes.
//!
//! The drain thread copies only when the writer holds too much of a ring
//! in place: copied records' space goes back to the kernel at once, so it
//! has room while the writer catches up. When every batch is in flight
//! (the writer is behind by the whole queue), the drain thread waits for
//! one to come back: the ring buffer then fills, and what the kernel cannot
//! place is counted and marked as lost by the kernel, exactly as with no
//! queue (`lost in the kernel`, the `gap` of the next record). Nothing is
//! dropped here.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{select, Receiver, RecvError, Sender};

/// Records, each as its length (one u64) then its bytes padded to 8: kept
/// in u64s so that every record stays 8-byte aligned, as in the ring
/// buffer (the decoders view records in place).
#[derive(Default)]
pub struct Batch {
    words: Vec<u64>,
}

impl Batch {
    /// Copies `record` in, unless that would take the batch past
    /// `capacity` bytes (an empty batch takes any record).
    fn push(&mut self, record: &[u8], capacity: usize) -> bool {
        let words = 1 + record.len().div_ceil(8);
        if !self.words.is_empty() && (self.words.len() + words) * 8 > capacity {
            return false;
        }
        if self.words.capacity() == 0 {
            self.words.reserve_exact(capacity / 8);
        }
        self.words.push(record.len() as u64);
        self.words.reserve(words - 1);
        let start = self.words.len();
        // Written once: the bytes, then the padding (`resize` first would
        // write every byte twice, and this copy is all the drain thread does).
        let spare = &mut self.words.spare_capacity_mut()[..words - 1];
        // SAFETY: `spare` is `words - 1` u64s of writable, owned memory,
        // `record.len()` <= 8 * (words - 1) bytes of it are copied, then the
        // rest of the last word is zeroed, so every u64 in it is initialized
        // before `set_len` exposes them.
        unsafe {
            let dst = spare.as_mut_ptr().cast::<u8>();
            std::ptr::copy_nonoverlapping(record.as_ptr(), dst, record.len());
            std::ptr::write_bytes(dst.add(record.len()), 0, (words - 1) * 8 - record.len());
            self.words.set_len(start + words - 1);
        }
        true
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    pub fn records(&self) -> Records<'_> {
        Records { words: &self.words }
    }

    fn clear(&mut self) {
        self.words.clear();
    }
}

pub struct Records<'a> {
    words: &'a [u64],
}

impl<'a> Iterator for Records<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let (&len, rest) = self.words.split_first()?;
        let len = len as usize;
        let (record, rest) = rest.split_at(len.div_ceil(8));
        self.words = rest;
        Some(&bytemuck::cast_slice(record)[..len])
    }
}

/// Records of ring `ring` between two positions, to be read in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub ring: usize,
    pub start: u64,
    pub end: u64,
}

enum Item {
    Copied(Batch),
    InPlace(Span),
}

/// The drain thread's end: fills batches and hands them over.
pub struct Filler {
    current: Batch,
    capacity: usize,
    full: Sender<Item>,
    free: Receiver<Batch>,
    /// Times the drain thread found every batch in flight and waited.
    waits: Arc<AtomicU64>,
}

/// The writer's end.
pub struct Drainer {
    full: Receiver<Item>,
    free: Sender<Batch>,
    waits: Arc<AtomicU64>,
}

/// A queue of `batches` batches of `batch_bytes` each: at most
/// `batches * batch_bytes` bytes of records in memory (memory is taken as
/// batches are first filled, and kept).
pub fn queue(batches: usize, batch_bytes: usize) -> (Filler, Drainer) {
    assert!(batches >= 2, "one batch being filled, at least one in flight");
    let (full_tx, full_rx) = crossbeam_channel::bounded(batches);
    let (free_tx, free_rx) = crossbeam_channel::bounded(batches);
    for _ in 1..batches {
        free_tx.send(Batch::default()).expect("the receiver is here");
    }
    let waits = Arc::new(AtomicU64::new(0));
    let filler = Filler {
        current: Batch::default(),
        capacity: batch_bytes,
        full: full_tx,
        free: free_rx,
        waits: waits.clone(),
    };
    (filler, Drainer { full: full_rx, free: free_tx, waits })
}

/// The writer is gone (it stopped): nothing more can be handed over.
#[derive(Debug)]
pub struct Disconnected;

impl Filler {
    /// Copies a record in; hands the batch over when full, waiting for a
    /// free one when every batch is in flight.
    pub fn push(&mut self, record: &[u8]) -> Result<(), Disconnected> {
        if !self.current.push(record, self.capacity) {
            self.send()?;
            let pushed = self.current.push(record, self.capacity);
            debug_assert!(pushed, "an empty batch takes any record");
        }
        Ok(())
    }

    /// Hands over what the current batch holds, if anything: called after
    /// each poll, so that records never wait for a batch to fill.
    pub fn send(&mut self) -> Result<(), Disconnected> {
        if self.current.is_empty() {
            return Ok(());
        }
        let next = match self.free.try_recv() {
            Ok(batch) => batch,
            Err(_) => {
                self.waits.fetch_add(1, Ordering::Relaxed);
                self.free.recv().map_err(|_| Disconnected)?
            }
        };
        let full = std::mem::replace(&mut self.current, next);
        self.full.send(Item::Copied(full)).map_err(|_| Disconnected)
    }

    /// Hands over a span to read in place, after the records copied before it.
    pub fn hand(&mut self, span: Span) -> Result<(), Disconnected> {
        self.send()?;
        self.full.send(Item::InPlace(span)).map_err(|_| Disconnected)
    }
}

/// What `Drainer::next` found.
pub enum Next {
    Batch(Batch),
    InPlace(Span),
    /// Nothing within the timeout.
    Idle,
    /// The wake-up channel `next` was given had a message (taken).
    Woken,
    /// Its senders are all gone: stop passing it (it would wake every time).
    WakerGone,
    /// The drain thread has finished and everything it sent was taken.
    Done,
}

impl Drainer {
    /// The next batch, or `Woken` as soon as `wake` has a message, or
    /// `Idle` after `timeout`.
    pub fn next(&self, timeout: Duration, wake: Option<&Receiver<()>>) -> Next {
        let batch = |r: Result<Item, RecvError>| match r {
            Ok(Item::Copied(batch)) => Next::Batch(batch),
            Ok(Item::InPlace(span)) => Next::InPlace(span),
            Err(RecvError) => Next::Done,
        };
        match wake {
            Some(wake) => select! {
                recv(self.full) -> r => batch(r),
                recv(wake) -> r => if r.is_ok() { Next::Woken } else { Next::WakerGone },
                default(timeout) => Next::Idle,
            },
            None => select! {
                recv(self.full) -> r => batch(r),
                default(timeout) => Next::Idle,
            },
        }
    }

    /// Batches and spans handed over and not yet taken.
    pub fn backlog(&self) -> usize {
        self.full.len()
    }

    /// Times the drain thread waited for a batch (the writer was behind by
    /// the whole queue).
    pub fn waits(&self) -> u64 {
        self.waits.load(Ordering::Relaxed)
    }

    /// A handled batch goes back to the drain thread.
    pub fn recycle(&self, mut batch: Batch) {
        batch.clear();
        let _ = self.free.try_send(batch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_come_out_whole_aligned_and_in_order() {
        let (mut filler, drainer) = queue(3, 64);
        let records: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; usize::from(i) % 19]).collect();
        let sent = records.clone();
        let thread = std::thread::spawn(move || {
            for r in &sent {
                filler.push(r).unwrap();
            }
            filler.send().unwrap();
            // A record larger than a batch travels alone.
            filler.push(&[7; 200]).unwrap();
            filler.send().unwrap();
        });
        let mut got = Vec::new();
        loop {
            match drainer.next(Duration::from_secs(60), None) {
                Next::Batch(b) => {
                    assert!(b.words.len() * 8 <= 64 || b.records().count() == 1);
                    for r in b.records() {
                        assert_eq!(r.as_ptr() as usize % 8, 0, "aligned");
                        got.push(r.to_vec());
                    }
                    drainer.recycle(b);
                }
                Next::InPlace(_) | Next::Idle | Next::Woken | Next::WakerGone => panic!("the filler stalled"),
                Next::Done => break,
            }
        }
        thread.join().unwrap();
        let mut want = records;
        want.push(vec![7; 200]);
        assert_eq!(got, want);
    }

    #[test]
    fn a_span_follows_the_records_copied_before_it() {
        let (mut filler, drainer) = queue(4, 64);
        let span = Span { ring: 1, start: 64, end: 128 };
        filler.push(b"copied first").unwrap();
        filler.hand(span).unwrap();
        filler.push(b"copied after").unwrap();
        filler.send().unwrap();
        drop(filler);
        let Next::Batch(first) = drainer.next(Duration::from_secs(60), None) else { panic!("not the copy") };
        assert_eq!(first.records().next(), Some(&b"copied first"[..]));
        assert!(matches!(drainer.next(Duration::from_secs(60), None), Next::InPlace(s) if s == span));
        let Next::Batch(last) = drainer.next(Duration::from_secs(60), None) else { panic!("not the copy") };
        assert_eq!(last.records().next(), Some(&b"copied after"[..]));
        assert!(matches!(drainer.next(Duration::from_secs(60), None), Next::Done));
    }

    /// With every batch in flight, the filler waits for one to come back
    /// (and counts that), rather than dropping or growing.
    #[test]
    fn a_full_queue_makes_the_filler_wait() {
        let (mut filler, drainer) = queue(2, 16);
        filler.push(&[1; 8]).unwrap();
        filler.send().unwrap(); // takes the one free batch
        filler.push(&[2; 8]).unwrap();
        let thread = std::thread::spawn(move || filler.send().unwrap()); // none free: waits
        while drainer.waits() == 0 {
            std::thread::yield_now();
        }
        let Next::Batch(first) = drainer.next(Duration::from_secs(60), None) else { panic!() };
        assert_eq!(first.records().next(), Some(&[1u8; 8][..]));
        drainer.recycle(first);
        thread.join().unwrap();
        assert_eq!(drainer.waits(), 1);
        let Next::Batch(second) = drainer.next(Duration::from_secs(60), None) else { panic!() };
        assert_eq!(second.records().next(), Some(&[2u8; 8][..]));
        assert!(matches!(drainer.next(Duration::from_secs(60), None), Next::Done));
    }

    #[test]
    fn a_wakeup_ends_the_wait_and_a_gone_waker_says_so() {
        let (_filler, drainer) = queue(2, 64);
        let (wake, wakeup) = crossbeam_channel::bounded(1);
        wake.send(()).unwrap();
        // Long timeout: only the wake-up can end this wait in time.
        assert!(matches!(drainer.next(Duration::from_secs(3600), Some(&wakeup)), Next::Woken));
        assert!(matches!(drainer.next(Duration::ZERO, Some(&wakeup)), Next::Idle));
        drop(wake);
        assert!(matches!(drainer.next(Duration::from_secs(3600), Some(&wakeup)), Next::WakerGone));
    }
}
