//! Where a connection's captured stream has a hole. The kernel numbers
//! every call per connection before it copies anything and, when the ring
//! buffer is full, drops the rest of a call whole: so a jump in `call_seq`
//! means calls were lost, and a new call starting before the previous one
//! reached its `call_len` means that call's tail was lost. The next record
//! of the connection carries the gap, so a consumer knows bytes are
//! missing exactly there.

use std::collections::HashMap;

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

/// Bounded: past this many connections the table starts again (a
/// connection then reports no gap for the calls before that point).
const MAX_CONNECTIONS: usize = 65536;

#[derive(Default)]
pub struct GapTracker {
    conns: HashMap<(u32, u64), Progress>,
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
        if self.conns.len() >= MAX_CONNECTIONS && !self.conns.contains_key(&(pid, conn)) {
            self.conns.clear();
        }
        let now = Progress { call_seq, received: offset + len, call_len };
        let before = self.conns.insert((pid, conn), now)?;
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
