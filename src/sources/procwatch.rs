//! The programs of `bpf/procwatch.bpf.c`: exec and library-open events,
//! so binaries and libraries that appear after start are attached too.

use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd};

use anyhow::{Context, Result};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Link, OpenObject};

use super::TlsSource;
use crate::bpf::procwatch::{ProcwatchSkel, ProcwatchSkelBuilder};
use crate::kernel::{self, Filters};

/// The ring buffer and counters of the skeleton a watch reports into.
#[derive(Clone, Copy)]
pub struct SharedMaps<'a> {
    pub events: BorrowedFd<'a>,
    pub stats: BorrowedFd<'a>,
}

impl<'a> SharedMaps<'a> {
    pub fn of(events: &'a impl AsFd, stats: &'a impl AsFd) -> Self {
        SharedMaps { events: events.as_fd(), stats: stats.as_fd() }
    }
}

/// The watch's settings: the file name prefixes of `sources` (filled
/// from the registry, `TLS_SOURCES`) and whether to hold (`--hold-unchecked`).
fn configure(
    rodata: &mut crate::bpf::procwatch::types::rodata,
    sources: &[&TlsSource],
    hold: bool,
) -> Result<()> {
    let prefixes = &mut rodata.watch_prefixes;
    // A library with no file of its own (rustls) has no name to watch: an
    // empty prefix would match every open.
    let sources: Vec<_> = sources.iter().filter(|s| !s.file_prefix.is_empty()).collect();
    anyhow::ensure!(sources.len() <= prefixes.len(), "more TLS libraries than the process watch holds");
    for (slot, source) in prefixes.iter_mut().zip(&sources) {
        let name = source.file_prefix.as_bytes();
        // NUL-terminated within the slot (checked for the registry by a test).
        anyhow::ensure!(name.len() < slot.len(), "file prefix {} too long", source.file_prefix);
        slot.iter_mut().zip(name).for_each(|(c, b)| *c = *b as _);
    }
    rodata.watch_count = sources.len() as u32;
    rodata.hold_unchecked = hold.into();
    Ok(())
}

pub type ProcWatch<'obj> = super::Probes<ProcwatchSkel<'obj>>;

impl<'obj> ProcWatch<'obj> {
    /// Load, sharing the ring buffer and counters of another skeleton
    /// (`maps`), watching the library file names of `sources` (none: exec
    /// events only). `hold`: stop processes at files not yet checked
    /// (`--hold-unchecked`, see `sources::hold`).
    pub fn load(
        storage: &'obj mut MaybeUninit<OpenObject>,
        filters: &Filters,
        sources: &[&TlsSource],
        maps: SharedMaps,
        hold: bool,
    ) -> Result<Self> {
        let mut open =
            ProcwatchSkelBuilder::default().open(storage).context("opening the process watch BPF object")?;
        let rodata = open.maps.rodata_data.as_deref_mut().context("no .rodata in the BPF object")?;
        crate::set_filters!(rodata, filters);
        configure(rodata, sources, hold)?;
        // A watch of execs only (shells, database servers) leaves every
        // openat on the host untraced: its programs would return at once,
        // but each open would still run two programs (40 and 50 ns each
        // with kernel.bpf_stats_enabled, plus the tracepoint itself).
        let libraries = rodata.watch_count > 0;
        open.progs.sys_enter_openat.set_autoload(libraries);
        open.progs.sys_exit_openat.set_autoload(libraries);
        open.maps.events.reuse_fd(maps.events).context("sharing the ring buffer")?;
        open.maps.stats.reuse_fd(maps.stats).context("sharing the counters")?;
        let skel = open.load().map_err(kernel::load_failed("the process watch BPF programs"))?;
        Ok(ProcWatch { skel })
    }

    /// Whether library opens are watched (see `load`).
    fn watches_libraries(&self) -> bool {
        self.skel.maps.rodata_data.as_ref().is_some_and(|r| r.watch_count > 0)
    }

    /// Files checked: their execs and opens are not held (see `load`).
    pub fn checked_files(&self) -> &dyn libbpf_rs::MapCore {
        &self.skel.maps.checked_files
    }

    /// Processes the kernel stopped and nobody continued yet.
    pub fn held_processes(&self) -> &dyn libbpf_rs::MapCore {
        &self.skel.maps.held_processes
    }

    pub fn attach(&self) -> Result<Vec<Link>> {
        let p = &self.skel.progs;
        if !self.watches_libraries() {
            return super::attach_tracepoints(&[&p.sched_process_exec]);
        }
        super::attach_tracepoints(&[&p.sched_process_exec, &p.sys_enter_openat, &p.sys_exit_openat])
    }
}
