//! The kernel programs of `bpf/tls.bpf.c`, shared by every TLS library
//! whose plaintext functions have the SSL_write/SSL_read shape: loading
//! them with the filters, and attaching them to one file at a time.

use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd};

use anyhow::{bail, Context, Result};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags, OpenObject, ProgramMut, UprobeOpts};

use super::gotls::GoProbePoints;
use super::{Entry, TlsTarget};
use crate::bpf::tls::{TlsSkel, TlsSkelBuilder};
use crate::kernel::{self, Filters};

/// The loaded TLS programs. Attaching returns links; dropping a link
/// detaches it (links close with their file descriptors).
pub struct TlsProbes<'obj> {
    skel: TlsSkel<'obj>,
    has_loop: bool,
}

impl<'obj> TlsProbes<'obj> {
    /// `max_connections` sizes the per-connection map; calls in flight
    /// (one per thread or goroutine inside a TLS call) get a quarter of it.
    pub fn load(
        storage: &'obj mut MaybeUninit<OpenObject>,
        filters: &Filters,
        ringbuf_bytes: u32,
        max_connections: u32,
    ) -> Result<Self> {
        let mut open = TlsSkelBuilder::default().open(storage).context("opening the TLS BPF object")?;
        let rodata = open.maps.rodata_data.as_deref_mut().context("no .rodata in the BPF object")?;
        crate::set_filters!(rodata, filters);
        open.maps.events.set_max_entries(ringbuf_bytes).context("sizing the ring buffer")?;
        let in_flight = (max_connections / 4).max(1024);
        open.maps.conns.set_max_entries(max_connections).context("sizing the connection map")?;
        open.maps.active_calls.set_max_entries(in_flight).context("sizing the call map")?;
        open.maps.go_reads.set_max_entries(in_flight).context("sizing the Go read map")?;
        let has_loop = kernel::has_bpf_loop();
        rodata.has_bpf_loop = has_loop;
        rodata.has_attach_cookie = kernel::has_attach_cookie();
        // Wake-ups in batches of 1/32 of the ring; the consumer also polls
        // every few ms (see run::POLL_INTERVAL), which bounds the delay.
        rodata.wakeup_batch_bytes = u64::from(ringbuf_bytes / 32);
        open.progs.emit_more_loop.set_autoload(has_loop);
        open.progs.emit_more.set_autoload(!has_loop);
        let skel = open.load().context(
            "loading the TLS BPF programs into the kernel failed (cleartap needs Linux >= 5.8 \
             with BTF, uprobes and ring buffers)",
        )?;
        let probes = TlsProbes { skel, has_loop };
        probes.install_continuation()?;
        Ok(probes)
    }

    /// Large payloads continue in a tail call to `emit_more_loop` (or
    /// `emit_more` where the kernel has no bpf_loop).
    fn install_continuation(&self) -> Result<()> {
        let p = &self.skel.progs;
        let continuation = if self.has_loop { &p.emit_more_loop } else { &p.emit_more };
        let fd = continuation.as_fd().as_raw_fd();
        self.skel
            .maps
            .emit_continue
            .update(&0u32.to_ne_bytes(), &fd.to_ne_bytes(), MapFlags::ANY)
            .context("installing the payload continuation program")
    }

    /// The system call tracepoints that reveal the fd of an active call.
    pub fn attach_syscalls(&self) -> Result<Vec<Link>> {
        let mut links = Vec::new();
        let p = &self.skel.progs;
        let programs = [
            (&p.sys_enter_write, "sys_enter_write"),
            (&p.sys_enter_read, "sys_enter_read"),
            (&p.sys_enter_sendto, "sys_enter_sendto"),
            (&p.sys_enter_recvfrom, "sys_enter_recvfrom"),
            (&p.sys_enter_sendmsg, "sys_enter_sendmsg"),
            (&p.sys_enter_recvmsg, "sys_enter_recvmsg"),
            (&p.sys_enter_writev, "sys_enter_writev"),
            (&p.sys_enter_readv, "sys_enter_readv"),
        ];
        for (prog, name) in programs {
            let link = prog
                .attach_tracepoint(libbpf_rs::TracepointCategory::Syscalls, name)
                .with_context(|| format!("attaching tracepoint syscalls:{name}"))?;
            links.push(link);
        }
        Ok(links)
    }

    /// Entry and return probes on every hook of `target`.
    pub fn attach(&self, target: &TlsTarget) -> Result<Vec<Link>> {
        if let Some(points) = &target.go {
            return self.attach_go(target, points);
        }
        let mut links = Vec::new();
        for (hook, function) in &target.hooks {
            let Some((entry, ret)) = self.programs_for(hook.entry, hook.function_id) else {
                bail!("{} has no entry/return program pair", hook.symbol);
            };
            let offset = function.file_offset as usize;
            for (prog, retprobe) in [(entry, false), (ret, true)] {
                let opts =
                    UprobeOpts { retprobe, cookie: u64::from(target.library_id), ..Default::default() };
                let link =
                    prog.attach_uprobe_with_opts(-1, &target.path, offset, opts).with_context(|| {
                        format!(
                            "attaching a {} to {} in {}",
                            if retprobe { "uretprobe" } else { "uprobe" },
                            hook.symbol,
                            target.path.display()
                        )
                    })?;
                links.push(link);
            }
        }
        Ok(links)
    }

    /// A Go executable: plain uprobes only, at the points `gotls` found.
    fn attach_go(&self, target: &TlsTarget, points: &GoProbePoints) -> Result<Vec<Link>> {
        let p = &self.skel.progs;
        let mut probes = vec![(&p.go_write, points.write, "Write"), (&p.go_read_entry, points.read, "Read")];
        probes.extend(points.read_returns.iter().map(|&ret| (&p.go_read_return, ret, "Read (a RET)")));
        probes.extend(points.keylog.map(|at| (&p.go_keylog, at, "writeKeyLog")));
        probes
            .into_iter()
            .map(|(prog, offset, what)| {
                let opts = UprobeOpts { cookie: u64::from(target.library_id), ..Default::default() };
                prog.attach_uprobe_with_opts(-1, &target.path, offset as usize, opts)
                    .with_context(|| format!("attaching a uprobe to {what} in {}", target.path.display()))
            })
            .collect()
    }

    /// The entry program of a shape and the return program of a function
    /// (values of `enum ct_tls_function`, checked against the C header).
    fn programs_for(&self, entry: Entry, function_id: u8) -> Option<(&ProgramMut<'obj>, &ProgramMut<'obj>)> {
        let p = &self.skel.progs;
        let entry = match entry {
            Entry::Plain => &p.plain_entry,
            Entry::Ex => &p.ex_entry,
            Entry::Nspr => &p.nspr_entry,
            Entry::Go => return None, // attach_go
        };
        let ret = match function_id {
            1 => &p.ssl_write_return,
            2 => &p.ssl_read_return,
            3 => &p.ssl_write_ex_return,
            4 => &p.ssl_read_ex_return,
            5 => &p.gnutls_record_send_return,
            6 => &p.gnutls_record_recv_return,
            7 => &p.gnutls_record_send2_return,
            8 => &p.gnutls_record_recv_seq_return,
            9 => &p.pr_write_return,
            10 => &p.pr_read_return,
            11 => &p.pr_send_return,
            _ => &p.pr_recv_return,
        };
        Some((entry, ret))
    }

    /// Connections the kernel map holds now. It never deletes an entry, so
    /// entries created minus this is what its LRU evicted.
    pub fn connections_held(&self) -> u64 {
        self.skel.maps.conns.keys().count() as u64
    }

    pub fn events_map(&self) -> &libbpf_rs::MapMut<'obj> {
        &self.skel.maps.events
    }

    pub fn stats_map(&self) -> &libbpf_rs::MapMut<'obj> {
        &self.skel.maps.stats
    }
}
