//! `cleartap exec`: every program started on the host, with its arguments
//! and whether the exec succeeded.

use std::io;
use std::mem::MaybeUninit;

use anyhow::Result;

use super::{filters, pump, Destination, Handler};
use crate::assembly::exec::ExecAssembler;
use crate::assembly::Assembler;
use crate::cli::SourceArgs;
use crate::events::Event;
use crate::kernel;
use crate::output::Output;
use crate::sources::exec::ExecProbes;

/// The capture, into `dest`.
pub fn capture(args: &SourceArgs, dest: Destination) -> Result<()> {
    kernel::preflight()?;
    let filters = filters(&args.filters)?;
    let mut storage = MaybeUninit::uninit();
    let probes = ExecProbes::load(&mut storage, &filters, args.output.ring_bytes(crate::cli::RING_DEFAULT))?;
    let links = probes.attach()?;
    let mut handler = ExecHandler { assembler: ExecAssembler::default() };
    pump(&[probes.events_map()], probes.stats_map(), links, &mut handler, dest)
}

/// Everything the exec source reports goes to the assembler.
struct ExecHandler {
    assembler: ExecAssembler,
}

impl Handler for ExecHandler {
    fn event(&mut self, event: Event, out: &mut dyn Output) -> io::Result<()> {
        self.assembler.event(event, out)
    }

    fn finish(&mut self, out: &mut dyn Output) -> io::Result<()> {
        self.assembler.finish(out)
    }
}
