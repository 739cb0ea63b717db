//! Assembly: each source's kernel records -> the whole records outputs
//! print. Per-source state machines, each bounded: shell lines -> commands
//! (`shell`), exec start + result (`exec`), statement start + end (`sql`),
//! and for TLS (`tls`), where a connection's stream has a hole (`gaps`)
//! and the per-connection streams the HTTP decoders read (`streams`).
//! Each source's assembler (`ShellAssembler`, `ExecAssembler`,
//! `SqlAssembler`, `TlsAssembler`) takes its decoded records and writes
//! what they complete to an output.

use std::io;

use crate::events::Event;
use crate::output::Output;

pub mod exec;
pub mod gaps;
pub mod shell;
pub mod sql;
pub mod streams;
pub mod tls;

/// A source's assembler, as a capture drives it: each decoded record in
/// turn, then `finish` at shutdown for what only the end completes.
pub trait Assembler {
    fn event(&mut self, event: Event, out: &mut dyn Output) -> io::Result<()>;
    fn finish(&mut self, out: &mut dyn Output) -> io::Result<()>;
}

/// At shutdown: how many records a full table cut short, and why, said
/// once (nothing when none was).
fn report_evicted(evicted: u64, what: impl FnOnce() -> String) {
    if evicted > 0 {
        crate::note!("cleartap: {evicted} {}", what());
    }
}
