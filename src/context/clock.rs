//! Kernel timestamps (CLOCK_MONOTONIC) to wall-clock time.

use std::time::{Duration, SystemTime};

/// The offset between the two clocks, measured once at start. Kernel
/// timestamps never jump with the wall clock, so one offset is exact for
/// the run unless someone sets the time; that is the right trade for a
/// per-record conversion that costs one addition.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    boot_wall: SystemTime,
}

impl Clock {
    pub fn now() -> Clock {
        let mono = monotonic_ns();
        let wall = SystemTime::now();
        Clock { boot_wall: wall - Duration::from_nanos(mono) }
    }

    pub fn wall(&self, monotonic_ns: u64) -> SystemTime {
        self.boot_wall + Duration::from_nanos(monotonic_ns)
    }
}

/// The offset measured now: an assembler made at a capture's start.
impl Default for Clock {
    fn default() -> Clock {
        Clock::now()
    }
}

pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_now_to_now() {
        let clock = Clock::now();
        let converted = clock.wall(monotonic_ns());
        let diff = SystemTime::now().duration_since(converted).unwrap_or_default();
        assert!(diff < Duration::from_secs(1));
    }
}
