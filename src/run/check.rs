//! `cleartap check`: load every kernel program into this kernel without
//! attaching anything, and report what the kernel has. A program the
//! verifier refuses is an error naming its object; the instruction count
//! the verifier processed per program shows when a change makes one costly.
//! The programs are loaded by the capture's own loaders (`sources::*::load`),
//! with the defaults of the subcommands' options.

use std::io::Write as _;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd};

use anyhow::{Context, Result};
use clap::Parser;
use libbpf_rs::Object;

use crate::kernel::{self, Filters};
use crate::sources::exec::ExecProbes;
use crate::sources::packets::PacketProbes;
use crate::sources::procwatch::{ProcWatch, SharedMaps};
use crate::sources::shell::ShellProbes;
use crate::sources::sql::SqlProbes;
use crate::sources::tls::{Features, TlsProbes};
use crate::sources::TLS_SOURCES;

/// `println!` that returns the error instead of panicking: `cleartap check
/// | head -3` closes the pipe under it.
macro_rules! say {
    ($($arg:tt)*) => {
        writeln!(std::io::stdout(), $($arg)*)?
    };
}

pub fn run() -> Result<()> {
    kernel::preflight()?;
    say!("kernel {}", kernel_release());
    // What the TLS programs adapt to, and how (sources::tls::Features).
    let features = Features::probe();
    say!("bpf_loop (5.17): {}", yes_no(features.has_loop, "large calls continue through tail calls"));
    say!("uprobe cookies (5.15): {}", yes_no(features.has_cookie, "libraries named from the process's maps"));
    say!(
        "atomic fetch-and-add (5.12): {}",
        yes_no(features.has_fetch, "the *_nofetch programs, plain per-connection call numbering")
    );
    say!(
        "sleepable uprobes (6.0): {}",
        yes_no(
            features.has_sleepable,
            "a TLS secret's label not yet in memory is read from its process later"
        )
    );
    say!("TCX links (6.6): {}", yes_no(has_tcx(), "-w attaches a netlink clsact qdisc and cls_bpf filter"));
    say!("ancestor cgroup id in uprobes: {}", yes_no(kernel::has_ancestor_cgroup_id(), "--cgroup refused"));
    say!("{:<38} {:>12}", "program", "verified insns");
    // Through the loaders the subcommands use, with the defaults of their
    // options: the same map sizes and `.rodata` settings as a capture.
    let defaults = match crate::cli::Cli::try_parse_from(["cleartap", "tls"]).map(|c| c.command) {
        Ok(crate::cli::Command::Tls(args)) => args,
        _ => anyhow::bail!("the defaults of `cleartap tls` do not parse"),
    };
    let filters = Filters::default();
    let (tls_ring, ring) = (
        defaults.output.ring_bytes(crate::cli::TLS_RING_DEFAULT),
        defaults.output.ring_bytes(crate::cli::RING_DEFAULT),
    );
    let refused = |what: &str| format!("the kernel refused the {what} programs (CLEARTAP_DEBUG=1 shows why)");
    let mut counted = false;
    // The secrets path too (--keylog, -w): the largest programs.
    let mut tls_storage = MaybeUninit::uninit();
    let tls = TlsProbes::load(&mut tls_storage, &filters, tls_ring, defaults.max_connections, true)
        .with_context(|| refused("TLS"))?;
    counted |= report(tls.object())?;
    let shared = SharedMaps::of(tls.events_map(), tls.stats_map());
    {
        // As `cleartap tls --hold-unchecked` loads it: every library watched.
        let mut storage = MaybeUninit::uninit();
        let watch = ProcWatch::load(&mut storage, &filters, &TLS_SOURCES, shared, true)
            .with_context(|| refused("process watch"))?;
        counted |= report(watch.object())?;
    }
    {
        let mut storage = MaybeUninit::uninit();
        let shell = ShellProbes::load(&mut storage, &filters, ring).with_context(|| refused("shell"))?;
        counted |= report(shell.object())?;
    }
    {
        let mut storage = MaybeUninit::uninit();
        let exec = ExecProbes::load(&mut storage, &filters, ring).with_context(|| refused("exec"))?;
        counted |= report(exec.object())?;
    }
    {
        let mut storage = MaybeUninit::uninit();
        let sql = SqlProbes::load(&mut storage, &filters, ring).with_context(|| refused("SQL"))?;
        counted |= report(sql.object())?;
    }
    {
        // As `-w` without --snaplen loads it.
        let mut storage = MaybeUninit::uninit();
        let packets = PacketProbes::load(&mut storage, shared, u32::MAX, tls_ring)
            .with_context(|| refused("packet"))?;
        counted |= report(packets.object())?;
    }
    if !counted {
        say!("verified instruction counts (5.16): no (this kernel does not report them: -)");
    }
    say!("every program loaded");
    Ok(())
}

/// One line per program: its name and the instructions the verifier
/// processed (bpf_prog_info.verified_insns, 5.16+; "-" before). True when
/// the kernel gave any count.
fn report(object: &Object) -> Result<bool> {
    let mut counted = false;
    for prog in object.progs() {
        if !prog.autoload() {
            continue;
        }
        let name = prog.name().to_string_lossy().into_owned();
        let insns = verified_insns(prog.as_fd().as_raw_fd());
        counted |= insns.is_some();
        let insns = insns.map_or("-".to_string(), |n| n.to_string());
        say!("{name:<38} {insns:>12}");
    }
    Ok(counted)
}

/// Does the kernel know TCX links (6.6)? Its BTF has `struct tcx_entry`
/// then. Nothing is attached here: `-w` itself tries TCX first and falls
/// back to netlink when the kernel refuses it.
fn has_tcx() -> bool {
    // SAFETY: libbpf parses the kernel's BTF into an object we free here;
    // the name is a NUL-terminated literal.
    unsafe {
        let btf = libbpf_sys::btf__load_vmlinux_btf();
        if btf.is_null() {
            return false;
        }
        let found =
            libbpf_sys::btf__find_by_name_kind(btf, c"tcx_entry".as_ptr(), libbpf_sys::BTF_KIND_STRUCT) > 0;
        libbpf_sys::btf__free(btf);
        found
    }
}

fn verified_insns(fd: i32) -> Option<u32> {
    let mut info = libbpf_sys::bpf_prog_info::default();
    let mut len = std::mem::size_of::<libbpf_sys::bpf_prog_info>() as u32;
    // SAFETY: the kernel writes at most `len` bytes into `info`, which we own.
    let ret = unsafe { libbpf_sys::bpf_prog_get_info_by_fd(fd, &mut info, &mut len) };
    (ret == 0 && info.verified_insns > 0).then_some(info.verified_insns)
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "?".into(), |s| s.trim().to_string())
}

fn yes_no(b: bool, fallback: &str) -> String {
    if b {
        "yes".to_string()
    } else {
        format!("no (fallback used: {fallback})")
    }
}
