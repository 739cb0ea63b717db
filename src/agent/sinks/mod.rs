//! Where the agent's events go. A sink never blocks the agent thread on
//! the network: it sends, spools or counts what it could not keep.

pub mod file;
pub mod nats;

use std::io;
use std::time::{Duration, Instant};

use super::pipeline::Envelope;

/// How often a sink writes out what it buffers (the agent ticks its sinks
/// far more often under load); also what a kill -9 may lose at most.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(20);

/// Says when a sink's next flush is due: once per `FLUSH_INTERVAL`.
pub struct FlushTimer {
    last: Instant,
}

impl Default for FlushTimer {
    fn default() -> Self {
        FlushTimer { last: Instant::now() }
    }
}

impl FlushTimer {
    /// True (and the interval starts again) when `FLUSH_INTERVAL` passed.
    pub fn due(&mut self) -> bool {
        if self.last.elapsed() < FLUSH_INTERVAL {
            return false;
        }
        self.last = Instant::now();
        true
    }
}

pub trait Sink {
    fn name(&self) -> &'static str;
    fn send(&mut self, event: &Envelope) -> io::Result<()>;
    /// Events this sink could not keep, per source, with the reason, not
    /// yet reported; returned once the sink can take the report (a `loss`
    /// event the agent numbers and sends to this sink).
    fn lost(&mut self) -> Vec<(&'static str, u64, &'static str)> {
        Vec::new()
    }
    /// Are there losses `lost` has not returned yet?
    fn has_unreported_losses(&self) -> bool {
        false
    }
    /// Time-based work, every few ms: flushes, acks, reconnects, draining.
    fn tick(&mut self) -> io::Result<()>;
    /// Clean stop: flush (and spool) what is held, then a summary line.
    fn close(&mut self) -> io::Result<String>;
}
