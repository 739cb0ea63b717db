//! `cleartap mysql` and `cleartap postgres`: server-side statements with
//! duration and outcome.

use std::mem::MaybeUninit;

use anyhow::Result;

use super::{filters, pump, Destination, ExecutableHandler};
use crate::assembly::sql::SqlAssembler;
use crate::cli::SourceArgs;
use crate::kernel;
use crate::sources::procwatch::{ProcWatch, SharedMaps};
use crate::sources::sql::{self as servers, Family, SqlBinary, SqlProbes};

/// The capture, into `dest`.
pub fn capture(args: &SourceArgs, family: Family, dest: Destination) -> Result<()> {
    kernel::preflight()?;
    let filters = filters(&args.filters)?;
    let mut storage = MaybeUninit::uninit();
    let probes = SqlProbes::load(&mut storage, &filters, args.output.ring_bytes(crate::cli::RING_DEFAULT))?;
    let mut watch_storage = MaybeUninit::uninit();
    let shared = SharedMaps::of(probes.events_map(), probes.stats_map());
    let watch = ProcWatch::load(&mut watch_storage, &filters, &[], shared, false)?;
    let links = watch.attach()?;
    let mut attacher = servers::attacher(&probes, family);
    let found = attacher.scan_host();
    if found.is_empty() {
        crate::note!("cleartap: no {family:?} server running yet; watching for servers that start");
    }
    found.iter().for_each(announce);
    let mut handler = ExecutableHandler { attacher, assembler: SqlAssembler::default(), announce };
    pump(&[probes.events_map()], probes.stats_map(), links, &mut handler, dest)
}

fn announce(bin: &SqlBinary) {
    crate::note!(
        "cleartap: attached to {} ({})",
        crate::output::escape::for_terminal(&bin.display_path),
        bin.server
    );
}
