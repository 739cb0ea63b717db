//! `cleartap mysql` and `cleartap postgres`: server-side statements with
//! duration and outcome.

use std::io;
use std::mem::MaybeUninit;

use anyhow::Result;

use super::{filters, pump, Destination, Handler};
use crate::assembly::sql::SqlAssembler;
use crate::cli::SourceArgs;
use crate::events::Event;
use crate::kernel;
use crate::output::Output;
use crate::sources::attached::report_detached;
use crate::sources::executables::ExecutableAttacher;
use crate::sources::procwatch::{ProcWatch, SharedMaps};
use crate::sources::sql::{self as servers, Family, SqlBinary, SqlProbes};

pub fn run(args: &SourceArgs, family: Family) -> Result<()> {
    capture(args, family, Destination::stdout(args.output.style(0))?)
}

/// The capture, into `dest`.
pub fn capture(args: &SourceArgs, family: Family, dest: Destination) -> Result<()> {
    kernel::preflight()?;
    let filters = filters(&args.filters)?;
    let mut storage = MaybeUninit::uninit();
    let probes = SqlProbes::load(&mut storage, &filters, args.output.ringbuf_size)?;
    let mut watch_storage = MaybeUninit::uninit();
    let shared = SharedMaps::of(probes.events_map(), probes.stats_map());
    let watch = ProcWatch::load(&mut watch_storage, &filters, &[], shared, false)?;
    let links = watch.attach()?;
    let mut attacher = servers::attacher(&probes, family);
    let found = attacher.scan_host();
    if found.is_empty() {
        eprintln!("cleartap: no {family:?} server running yet; watching for servers that start");
    }
    found.iter().for_each(announce);
    let mut handler = SqlHandler { attacher, assembler: SqlAssembler::default() };
    pump(&[probes.events_map()], probes.stats_map(), links, &mut handler, dest)
}

fn announce(bin: &SqlBinary) {
    eprintln!(
        "cleartap: attached to {} ({})",
        crate::output::escape::for_terminal(&bin.display_path),
        bin.server
    );
}

/// Exec events -> the attacher (a server that starts later); the
/// server's records -> the assembler.
struct SqlHandler<'p> {
    attacher: ExecutableAttacher<'p, SqlBinary>,
    assembler: SqlAssembler,
}

impl Handler for SqlHandler<'_> {
    fn event(&mut self, event: Event, out: &mut dyn Output) -> io::Result<()> {
        match event {
            Event::Exec(e) => {
                if let Some(bin) = self.attacher.consider(e.pid, Some(&String::from_utf8_lossy(e.path))) {
                    announce(&bin);
                }
                Ok(())
            }
            event => self.assembler.event(event, out),
        }
    }

    /// Files replaced (a package upgrade) and no longer mapped: detached.
    fn idle(&mut self) -> io::Result<()> {
        for name in self.attacher.detach_replaced() {
            report_detached(&name);
        }
        Ok(())
    }

    fn detach(&mut self) {
        self.attacher.detach_all();
    }

    fn finish(&mut self, out: &mut dyn Output) -> io::Result<()> {
        self.assembler.finish(out)
    }
}
