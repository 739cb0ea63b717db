//! Program execution: execve/execveat tracepoints (`bpf/exec.bpf.c`).

use std::mem::MaybeUninit;

use anyhow::{Context, Result};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Link, OpenObject};

use crate::bpf::exec::{ExecSkel, ExecSkelBuilder};
use crate::kernel::{self, Filters};

pub struct ExecProbes<'obj> {
    skel: ExecSkel<'obj>,
}

impl<'obj> ExecProbes<'obj> {
    pub fn load(
        storage: &'obj mut MaybeUninit<OpenObject>,
        filters: &Filters,
        ringbuf_bytes: u32,
    ) -> Result<Self> {
        let mut open = crate::open_filtered!(ExecSkelBuilder, storage, filters, "exec");
        open.maps.events.set_max_entries(ringbuf_bytes).context("sizing the ring buffer")?;
        let skel = open.load().map_err(kernel::load_failed("the exec BPF programs"))?;
        Ok(ExecProbes { skel })
    }

    pub fn attach(&self) -> Result<Vec<Link>> {
        let p = &self.skel.progs;
        let programs = [
            (&p.sys_enter_execve, "sys_enter_execve"),
            (&p.sys_enter_execveat, "sys_enter_execveat"),
            (&p.sys_exit_execve, "sys_exit_execve"),
            (&p.sys_exit_execveat, "sys_exit_execveat"),
        ];
        super::attach_syscall_tracepoints(&programs)
    }

    /// The loaded object (`cleartap check` lists its programs).
    pub fn object(&self) -> &libbpf_rs::Object {
        libbpf_rs::skel::Skel::object(&self.skel)
    }

    pub fn events_map(&self) -> &libbpf_rs::MapMut<'obj> {
        &self.skel.maps.events
    }

    pub fn stats_map(&self) -> &libbpf_rs::MapMut<'obj> {
        &self.skel.maps.stats
    }
}
