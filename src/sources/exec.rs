//! Program execution: execve/execveat tracepoints (`bpf/exec.bpf.c`).

use std::mem::MaybeUninit;

use anyhow::{Context, Result};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Link, OpenObject};

use crate::bpf::exec::{ExecSkel, ExecSkelBuilder};
use crate::kernel::{self, Filters};

pub type ExecProbes<'obj> = super::Probes<ExecSkel<'obj>>;

impl<'obj> ExecProbes<'obj> {
    pub fn load(storage: &'obj mut MaybeUninit<OpenObject>, filters: &Filters, ring: u32) -> Result<Self> {
        let mut open = crate::open_filtered!(ExecSkelBuilder, storage, filters, "exec");
        open.maps.events.set_max_entries(ring).context("sizing the ring buffer")?;
        let skel = open.load().map_err(kernel::load_failed("the exec BPF programs"))?;
        Ok(ExecProbes { skel })
    }

    pub fn attach(&self) -> Result<Vec<Link>> {
        let p = &self.skel.progs;
        super::attach_tracepoints(&[
            &p.sys_enter_execve,
            &p.sys_enter_execveat,
            &p.sys_exit_execve,
            &p.sys_exit_execveat,
        ])
    }

    pub fn events_map(&self) -> &libbpf_rs::MapMut<'obj> {
        &self.skel.maps.events
    }

    pub fn stats_map(&self) -> &libbpf_rs::MapMut<'obj> {
        &self.skel.maps.stats
    }
}
