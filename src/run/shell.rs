//! `cleartap shell`: interactive bash and zsh commands, with user, tty and
//! exit status.

use std::mem::MaybeUninit;

use anyhow::Result;

use super::{filters, pump, Destination, ExecutableHandler};
use crate::assembly::shell::ShellAssembler;
use crate::cli::SourceArgs;
use crate::kernel;
use crate::sources::procwatch::{ProcWatch, SharedMaps};
use crate::sources::shell::{self as shells, ShellBinary, ShellProbes};

/// The capture, into `dest`.
pub fn capture(args: &SourceArgs, dest: Destination) -> Result<()> {
    kernel::preflight()?;
    let filters = filters(&args.filters)?;
    let mut storage = MaybeUninit::uninit();
    let probes = ShellProbes::load(&mut storage, &filters, args.output.ring_bytes(crate::cli::RING_DEFAULT))?;
    let mut watch_storage = MaybeUninit::uninit();
    let shared = SharedMaps::of(probes.events_map(), probes.stats_map());
    let watch = ProcWatch::load(&mut watch_storage, &filters, &[], shared, false)?;
    let mut links = vec![probes.attach_exit()?];
    links.extend(watch.attach()?);

    let mut attacher = shells::attacher(&probes);
    let mut found = attacher.scan_paths(&registered_shells());
    found.extend(attacher.scan_host());
    if found.is_empty() {
        crate::note!("cleartap: no bash or zsh found yet; watching for shells that start");
    }
    for bin in &found {
        announce(bin);
    }
    let mut handler = ExecutableHandler { attacher, assembler: ShellAssembler::default(), announce };
    pump(&[probes.events_map()], probes.stats_map(), links, &mut handler, dest)
}

/// The login shells this host lists in /etc/shells.
fn registered_shells() -> Vec<String> {
    let text = std::fs::read_to_string("/etc/shells").unwrap_or_default();
    text.lines().map(str::trim).filter(|l| l.starts_with('/')).map(String::from).collect()
}

fn announce(bin: &ShellBinary) {
    match &bin.readline_lib {
        None => crate::note!(
            "cleartap: attached to {} ({})",
            crate::output::escape::for_terminal(&bin.display_path),
            bin.name
        ),
        Some(lib) => crate::note!(
            "cleartap: attached to {} ({}, reading lines from {})",
            crate::output::escape::for_terminal(&bin.display_path),
            bin.name,
            crate::output::escape::for_terminal(&lib.display_path)
        ),
    }
}
