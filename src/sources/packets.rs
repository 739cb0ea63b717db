//! The programs of `bpf/packets.bpf.c`: a TC classifier on the chosen
//! interfaces (TCX links where the kernel has them, 6.6+; a netlink
//! `clsact` filter otherwise) and the tracepoints that tell which process
//! owns a tuple.

use std::fs;
use std::mem::MaybeUninit;
use std::os::fd::AsFd;
use std::ptr::NonNull;

use anyhow::{bail, Context, Result};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{AsRawLibbpf, Link, OpenObject, ProgramMut, TcAttachPoint, TcHook, TcHookBuilder};

use super::procwatch::SharedMaps;
use crate::bpf::packets::{PacketsSkel, PacketsSkelBuilder};
use crate::kernel;
use crate::packets::frame::{LINKTYPE_ETHERNET, LINKTYPE_RAW};

/// Netlink filters are ours by this handle and priority: a filter left by
/// a killed cleartap is replaced (and then removed) by the next one.
const TC_HANDLE: u32 = 0xc1ea;
const TC_PRIORITY: u32 = 0xc1ea;

/// An interface to capture on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureInterface {
    pub name: String,
    pub ifindex: u32,
    pub linktype: u16,
    /// Loopback: every packet passes egress then ingress; only egress is
    /// captured, so each packet is written once.
    pub loopback: bool,
}

/// `-i` names to interfaces; `any` is every interface there is now.
pub fn interfaces(names: &[String]) -> Result<Vec<CaptureInterface>> {
    let mut found: Vec<CaptureInterface> = Vec::new();
    let mut add = |iface: CaptureInterface| {
        if !found.iter().any(|f| f.ifindex == iface.ifindex) {
            found.push(iface);
        }
    };
    for name in names.iter().filter(|n| *n != "any") {
        add(interface(name)?);
    }
    if names.iter().any(|n| n == "any") {
        let mut all: Vec<String> = fs::read_dir("/sys/class/net")
            .context("listing /sys/class/net")?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        all.sort();
        // `any` takes what it can: an interface of another link type is
        // skipped with a warning, not an error.
        for name in all {
            match interface(&name) {
                Ok(iface) => add(iface),
                Err(e) => {
                    crate::eprintln_escaped!("cleartap: warning: not capturing packets on {name}: {e:#}")
                }
            }
        }
    }
    Ok(found)
}

fn interface(name: &str) -> Result<CaptureInterface> {
    let read = |what: &str| fs::read_to_string(format!("/sys/class/net/{name}/{what}"));
    let (Ok(index), Ok(kind)) = (read("ifindex"), read("type")) else {
        bail!("-i {name}: no such network interface (see `ip link`)");
    };
    let ifindex: u32 = index.trim().parse().with_context(|| format!("-i {name}: bad ifindex"))?;
    let arphrd: u32 = kind.trim().parse().with_context(|| format!("-i {name}: bad link type"))?;
    let linktype = match arphrd {
        1 | 772 => LINKTYPE_ETHERNET, // Ethernet; loopback carries a zeroed Ethernet header
        65534 | 768 | 769 | 776 => LINKTYPE_RAW, // tun, IPIP, IPv6-in-IPv4 (sit): IP first
        other => {
            bail!("-i {name}: link type {other} is not supported (Ethernet, loopback and IP tunnels are)")
        }
    };
    Ok(CaptureInterface { name: name.to_string(), ifindex, linktype, loopback: arphrd == 772 })
}

/// A classifier attached to one hook of one interface; detached on drop.
pub enum TcAttachment {
    Tcx(#[allow(dead_code)] Link),
    Netlink(TcHook),
}

impl Drop for TcAttachment {
    fn drop(&mut self) {
        if let TcAttachment::Netlink(hook) = self {
            // The clsact qdisc stays: other tools may use it.
            let _ = hook.detach();
        }
    }
}

pub type PacketProbes<'obj> = super::Probes<PacketsSkel<'obj>>;

impl<'obj> PacketProbes<'obj> {
    /// Load, reporting owners into the shared ring and counting into the
    /// shared counters; packets get a ring of their own.
    pub fn load(
        storage: &'obj mut MaybeUninit<OpenObject>,
        maps: SharedMaps,
        snaplen: u32,
        ring_bytes: u32,
    ) -> Result<Self> {
        let mut open =
            PacketsSkelBuilder::default().open(storage).context("opening the packet BPF object")?;
        let rodata = open.maps.rodata_data.as_deref_mut().context("no .rodata in the BPF object")?;
        rodata.snaplen = snaplen;
        rodata.packet_wakeup_bytes = u64::from(ring_bytes / 32);
        open.maps.packets.set_max_entries(ring_bytes).context("sizing the packet ring buffer")?;
        open.maps.events.reuse_fd(maps.events).context("sharing the ring buffer")?;
        open.maps.stats.reuse_fd(maps.stats).context("sharing the counters")?;
        let skel = open.load().map_err(kernel::load_failed("the packet capture BPF programs"))?;
        Ok(PacketProbes { skel })
    }

    /// connect/accept tracepoints: which process owns which tuple.
    pub fn attach_owners(&self) -> Result<Vec<Link>> {
        let p = &self.skel.progs;
        super::attach_tracepoints(&[
            &p.owner_connect_enter,
            &p.owner_connect_exit,
            &p.owner_accept4_exit,
            &p.owner_accept_exit,
        ])
    }

    /// Egress and (except on loopback) ingress of `iface`.
    pub fn attach_interface(&self, iface: &CaptureInterface) -> Result<Vec<TcAttachment>> {
        let p = &self.skel.progs;
        let mut hooks = vec![(&p.packet_egress, libbpf_rs::TC_EGRESS, "egress")];
        if !iface.loopback {
            hooks.push((&p.packet_ingress, libbpf_rs::TC_INGRESS, "ingress"));
        }
        hooks
            .into_iter()
            .map(|(prog, point, name)| {
                attach_tc(prog, iface.ifindex, point)
                    .with_context(|| format!("attaching the packet classifier to {} {name}", iface.name))
            })
            .collect()
    }

    pub fn packets_map(&self) -> &libbpf_rs::MapMut<'obj> {
        &self.skel.maps.packets
    }
}

/// TCX first (no qdisc, gone with the link's fd); netlink where the kernel
/// predates it (< 6.6).
fn attach_tc(prog: &ProgramMut, ifindex: u32, point: TcAttachPoint) -> Result<TcAttachment> {
    match attach_tcx(prog, ifindex) {
        Ok(link) => Ok(TcAttachment::Tcx(link)),
        Err(tcx_error) => attach_netlink(prog, ifindex, point)
            .map(TcAttachment::Netlink)
            .with_context(|| format!("TCX failed too: {tcx_error}")),
    }
}

fn attach_tcx(prog: &ProgramMut, ifindex: u32) -> std::io::Result<Link> {
    let opts = libbpf_sys::bpf_tcx_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_tcx_opts>() as libbpf_sys::size_t,
        ..Default::default()
    };
    let ifindex = i32::try_from(ifindex).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: the program is loaded and outlives the call; libbpf copies
    // what it needs from opts. The direction is the program's expected
    // attach type (its section name).
    let link =
        unsafe { libbpf_sys::bpf_program__attach_tcx(prog.as_libbpf_object().as_ptr(), ifindex, &opts) };
    match NonNull::new(link) {
        // SAFETY: a link libbpf just created and nobody else owns.
        Some(link) => Ok(unsafe { Link::from_ptr(link) }),
        None => Err(std::io::Error::last_os_error()),
    }
}

fn attach_netlink(prog: &ProgramMut, ifindex: u32, point: TcAttachPoint) -> Result<TcHook> {
    let ifindex = i32::try_from(ifindex).context("ifindex out of range")?;
    let mut builder = TcHookBuilder::new(prog.as_fd());
    builder.ifindex(ifindex).replace(true).handle(TC_HANDLE).priority(TC_PRIORITY);
    let mut hook = builder.hook(point);
    // Creating the clsact qdisc fails harmlessly when it exists.
    let _ = hook.create();
    hook.attach().context("netlink TC filter")
}
