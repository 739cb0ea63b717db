//! Where a connection's captured stream has a hole. The kernel numbers
//! every call per connection before it copies anything and, when the ring
//! buffer is full, drops the rest of a call whole: so a jump in `call_seq`
//! means calls were lost, and a new call starting before the previous one
//! reached its `call_len` means that call's tail was lost. The next record
//! of the connection carries the gap, so a consumer knows bytes are
//! missing exactly there.

use crate::context::{Bounded, Replaced};

/// What was lost on a connection just before a record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gap {
    /// Whole calls of which nothing arrived.
    pub calls_lost: u64,
    /// Bytes missing at the end of the previous call.
    pub bytes_lost: u64,
}

#[derive(Debug, Clone, Copy)]
struct Progress {
    call_seq: u64,
    /// Bytes of that call received so far, and its length.
    received: u64,
    call_len: u64,
}

/// Bounded: past this many connections the least recently seen one is
/// forgotten, and counted (its next record then reports no gap for what
/// was lost before it).
pub const MAX_CONNECTIONS: usize = 65536;

pub struct GapTracker {
    conns: Bounded<(u32, u64), Progress>,
}

impl Default for GapTracker {
    fn default() -> Self {
        GapTracker { conns: Bounded::new(MAX_CONNECTIONS) }
    }
}

impl GapTracker {
    /// A record (pid, conn handle, call_seq, offset, len, call_len): the
    /// gap before it, if any.
    pub fn record(
        &mut self,
        pid: u32,
        conn: u64,
        call_seq: u64,
        offset: u64,
        len: u64,
        call_len: u64,
    ) -> Option<Gap> {
        let now = Progress { call_seq, received: offset + len, call_len };
        // Another connection forgotten (counted): this one is new.
        let Replaced::Same(before) = self.conns.push((pid, conn), now)? else { return None };
        if call_seq == before.call_seq {
            return None; // the next chunk of the same call
        }
        if call_seq < before.call_seq {
            return None; // numbering restarted: a new connection at a reused handle
        }
        let gap = Gap {
            calls_lost: call_seq.saturating_sub(before.call_seq + 1),
            bytes_lost: before.call_len.saturating_sub(before.received),
        };
        (gap != Gap::default()).then_some(gap)
    }

    /// Connections forgotten to stay within `MAX_CONNECTIONS`: a loss just
    /// before their next record went unreported.
    pub fn evicted(&self) -> u64 {
        self.conns.evicted()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_calls_and_chunks_make_no_gap() {
        let mut g = GapTracker::default();
        assert_eq!(g.record(1, 7, 1, 0, 100, 100), None);
        assert_eq!(g.record(1, 7, 2, 0, 32768, 40000), None);
        assert_eq!(g.record(1, 7, 2, 32768, 7232, 40000), None);
        assert_eq!(g.record(1, 7, 3, 0, 5, 5), None);
        // Another connection, another process: their own numbering.
        assert_eq!(g.record(1, 8, 1, 0, 5, 5), None);
        assert_eq!(g.record(2, 7, 1, 0, 5, 5), None);
    }

    #[test]
    fn a_full_table_forgets_its_least_recently_seen_connection_and_counts_it() {
        let mut g = GapTracker::default();
        // Connection 0 ends a call short: its next record would carry the gap.
        g.record(1, 0, 1, 0, 10, 100);
        for conn in 1..MAX_CONNECTIONS as u64 {
            assert_eq!(g.record(1, conn, 1, 0, 5, 5), None);
        }
        // Connection 1 seen again: not the oldest any more.
        g.record(1, 1, 2, 0, 5, 5);
        assert_eq!(g.evicted(), 0);
        assert_eq!(g.record(2, 0, 1, 0, 5, 5), None);
        assert_eq!(g.evicted(), 1);
        // Connection 0 was forgotten: its lost tail is no longer known (counted above).
        assert_eq!(g.record(1, 0, 2, 0, 5, 5), None);
        assert_eq!(g.evicted(), 2, "and coming back evicted connection 2");
        assert_eq!(g.record(1, 1, 4, 0, 5, 5), Some(Gap { calls_lost: 1, bytes_lost: 0 }));
    }

    #[test]
    fn lost_calls_and_lost_tails_are_reported_on_the_next_record() {
        let mut g = GapTracker::default();
        g.record(1, 7, 1, 0, 100, 100);
        assert_eq!(g.record(1, 7, 4, 0, 10, 10), Some(Gap { calls_lost: 2, bytes_lost: 0 }));
        g.record(1, 7, 5, 0, 32768, 100000);
        assert_eq!(g.record(1, 7, 6, 0, 1, 1), Some(Gap { calls_lost: 0, bytes_lost: 100000 - 32768 }));
        g.record(1, 7, 7, 0, 32768, 50000);
        assert_eq!(g.record(1, 7, 9, 0, 1, 1), Some(Gap { calls_lost: 1, bytes_lost: 50000 - 32768 }));
        // The handle reused by a new connection: its numbering starts again.
        assert_eq!(g.record(1, 7, 1, 0, 1, 1), None);
    }
}
