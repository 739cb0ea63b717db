//! `cleartap check`: load every kernel program into this kernel without
//! attaching anything, and report what the kernel has. A program the
//! verifier refuses is an error naming its object; the instruction count
//! the verifier processed per program shows when a change makes one costly.

use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd};

use anyhow::{Context, Result};
use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::Object;

use crate::bpf::{exec, packets, procwatch, shell, sql, tls};
use crate::kernel;

pub fn run() -> Result<()> {
    kernel::preflight()?;
    println!("kernel {}", kernel_release());
    let has_loop = kernel::has_bpf_loop();
    println!("bpf_loop (5.17): {}", yes_no(has_loop));
    println!("uprobe cookies (5.15): {}", yes_no(kernel::has_attach_cookie()));
    println!("{:<28} {:>12}", "program", "verified insns");
    macro_rules! load {
        ($builder:expr, $what:expr, $prepare:expr) => {{
            let mut storage = MaybeUninit::uninit();
            let mut open =
                $builder.open(&mut storage).with_context(|| format!("opening the {} object", $what))?;
            $prepare(&mut open);
            let skel = open.load().with_context(|| {
                format!("the kernel refused the {} programs (CLEARTAP_DEBUG=1 shows why)", $what)
            })?;
            report(skel.object());
        }};
    }
    load!(tls::TlsSkelBuilder::default(), "TLS", |o: &mut tls::OpenTlsSkel| {
        o.progs.emit_more_loop.set_autoload(has_loop);
        o.progs.emit_more.set_autoload(!has_loop);
    });
    load!(
        procwatch::ProcwatchSkelBuilder::default(),
        "process watch",
        |_: &mut procwatch::OpenProcwatchSkel| {}
    );
    load!(shell::ShellSkelBuilder::default(), "shell", |_: &mut shell::OpenShellSkel| {});
    load!(exec::ExecSkelBuilder::default(), "exec", |_: &mut exec::OpenExecSkel| {});
    load!(sql::SqlSkelBuilder::default(), "SQL", |_: &mut sql::OpenSqlSkel| {});
    load!(packets::PacketsSkelBuilder::default(), "packet", |_: &mut packets::OpenPacketsSkel| {});
    println!("every program loaded");
    Ok(())
}

/// One line per program: its name and the instructions the verifier
/// processed (bpf_prog_info.verified_insns, 5.16+; "-" before).
fn report(object: &Object) {
    for prog in object.progs() {
        if !prog.autoload() {
            continue;
        }
        let name = prog.name().to_string_lossy().into_owned();
        let insns = verified_insns(prog.as_fd().as_raw_fd()).map_or("-".to_string(), |n| n.to_string());
        println!("{name:<28} {insns:>12}");
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

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no (fallback used)"
    }
}
