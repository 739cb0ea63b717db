//! Plumbing shared by every kernel program: preflight checks, the filters
//! in `.rodata`, and the loss counters (see `bpf/common.h`).

use std::path::Path;

use anyhow::{bail, Context, Result};
use libbpf_rs::{MapCore, MapFlags};

use crate::events::stat;

/// `--pid/--uid/--comm/--cgroup`, applied in the kernel before any copy.
#[derive(Debug, Clone, Default)]
pub struct Filters {
    pub pid: Option<u32>,
    pub uid: Option<u32>,
    pub comm: Option<String>,
    pub cgroup: Option<Cgroup>,
}

/// A cgroup v2 subtree: its id (the inode of its directory) and depth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cgroup {
    pub id: u64,
    pub level: u32,
}

impl Cgroup {
    /// A directory of the cgroup v2 hierarchy, absolute or relative to its
    /// mount point (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on hybrid
    /// hosts).
    pub fn from_path(path: &Path) -> Result<Cgroup> {
        use std::os::unix::fs::MetadataExt;
        let root = cgroup2_mount()?;
        let full = if path.is_absolute() { path.to_path_buf() } else { root.join(path) };
        let full = full.canonicalize().map_err(|e| anyhow::anyhow!("--cgroup {}: {e}", full.display()))?;
        let Ok(below) = full.strip_prefix(&root) else {
            bail!(
                "--cgroup {}: not in the cgroup v2 hierarchy mounted at {}",
                full.display(),
                root.display()
            );
        };
        let id = std::fs::metadata(&full)?.ino();
        Ok(Cgroup { id, level: below.components().count() as u32 })
    }
}

/// Where the cgroup v2 hierarchy is mounted.
pub fn cgroup2_mount() -> Result<std::path::PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    mounts
        .lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .find(|f| f.len() > 2 && f[2] == "cgroup2")
        .map(|f| std::path::PathBuf::from(f[1]))
        .ok_or_else(|| anyhow::anyhow!("--cgroup needs a cgroup v2 hierarchy, and none is mounted"))
}

/// Writes `Filters` into the `.rodata` of any skeleton (each skeleton has
/// its own generated type with the same field names, from `bpf/common.h`).
#[macro_export]
macro_rules! set_filters {
    ($rodata:expr, $filters:expr) => {{
        let (rodata, filters) = (&mut *$rodata, $filters);
        rodata.filter_pid = filters.pid.unwrap_or(0);
        if let Some(uid) = filters.uid {
            rodata.filter_uid_enabled = 1;
            rodata.filter_uid = uid;
        }
        if let Some(comm) = filters.comm_bytes() {
            rodata.filter_comm_enabled = 1;
            rodata.filter_comm = comm;
        }
        if let Some(cg) = &filters.cgroup {
            rodata.filter_cgroup_id = cg.id;
            rodata.filter_cgroup_level = cg.level;
        }
    }};
}

/// Opens a generated skeleton and writes the run's `Filters` into its
/// `.rodata`; the caller sizes or shares its maps, then loads it.
#[macro_export]
macro_rules! open_filtered {
    ($builder:ty, $storage:expr, $filters:expr, $what:literal) => {{
        let mut open =
            <$builder>::default().open($storage).context(concat!("opening the ", $what, " BPF object"))?;
        let rodata = open.maps.rodata_data.as_deref_mut().context("no .rodata in the BPF object")?;
        $crate::set_filters!(rodata, $filters);
        open
    }};
}

impl Filters {
    /// The comm as the kernel stores it: at most 15 bytes and a NUL.
    pub fn comm_bytes(&self) -> Option<[i8; 16]> {
        let comm = self.comm.as_ref()?;
        let mut out = [0i8; 16];
        for (dst, src) in out.iter_mut().zip(comm.bytes().take(15)) {
            *dst = src as i8;
        }
        Some(out)
    }
}

/// A capability cleartap needs: its bit (linux/capability.h) and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capability {
    pub name: &'static str,
    pub bit: u32,
    pub why: &'static str,
}

/// Uprobes made through perf need CAP_SYS_ADMIN (CAP_BPF and CAP_PERFMON
/// are not enough for them; measured on 6.18), and it covers loading BPF
/// programs and tracepoints too.
pub const CAP_SYS_ADMIN: Capability =
    Capability { name: "CAP_SYS_ADMIN", bit: 21, why: "to load BPF programs and attach uprobes" };
pub const CAP_SYS_PTRACE: Capability = Capability {
    name: "CAP_SYS_PTRACE",
    bit: 19,
    why: "to read /proc/PID/maps and /proc/PID/root of other users' processes",
};
pub const CAP_DAC_READ_SEARCH: Capability = Capability {
    name: "CAP_DAC_READ_SEARCH",
    bit: 2,
    why: "to read libraries and executables whatever their permissions",
};
pub const CAP_NET_ADMIN: Capability =
    Capability { name: "CAP_NET_ADMIN", bit: 12, why: "to attach the packet classifier (-w)" };

/// What every subcommand needs.
pub const BASE_CAPABILITIES: [Capability; 3] = [CAP_SYS_ADMIN, CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH];

/// Drops, for the whole process, every capability cleartap never uses, so
/// that a flaw in its parsing of hostile input cannot be turned into
/// loading modules, changing users, raw I/O or killing processes. Called
/// first thing in main, before any thread exists: capabilities are per
/// thread, and threads started later inherit the reduced sets. Kept: what
/// the README lists (`CAP_NET_ADMIN` only when `net_admin`), the narrower
/// `CAP_BPF`/`CAP_PERFMON`, `CAP_SYS_RESOURCE` (locked memory on kernels
/// before 5.11), `CAP_DAC_OVERRIDE` (output files in directories root does
/// not own), `CAP_NET_BIND_SERVICE` (a metrics port below 1024) and
/// `CAP_SYS_NICE` (its own threads' priority, raised while its output is
/// behind: `run::priority`). Best
/// effort: a process without CAP_SETPCAP keeps its bounding set.
pub fn drop_unneeded_capabilities(net_admin: bool) {
    use caps::{CapSet, Capability as C, CapsHashSet};
    let mut keep: CapsHashSet = [
        C::CAP_SYS_ADMIN,
        C::CAP_SYS_PTRACE,
        C::CAP_DAC_READ_SEARCH,
        C::CAP_BPF,
        C::CAP_PERFMON,
        C::CAP_SYS_RESOURCE,
        C::CAP_DAC_OVERRIDE,
        C::CAP_NET_BIND_SERVICE,
        C::CAP_SYS_NICE,
    ]
    .into_iter()
    .collect();
    if net_admin {
        keep.insert(C::CAP_NET_ADMIN);
    }
    // The bounding set first, CAP_SETPCAP last: it is what allows this.
    for cap in caps::all().into_iter().filter(|c| !keep.contains(c) && *c != C::CAP_SETPCAP) {
        let _ = caps::drop(None, CapSet::Bounding, cap);
    }
    let _ = caps::drop(None, CapSet::Bounding, C::CAP_SETPCAP);
    let _ = caps::clear(None, CapSet::Ambient);
    for set in [CapSet::Inheritable, CapSet::Effective, CapSet::Permitted] {
        if let Ok(held) = caps::read(None, set) {
            let _ = caps::set(None, set, &held.intersection(&keep).copied().collect());
        }
    }
}

/// Refuse early, with a message that says what to do, when the kernel or
/// our privileges cannot run BPF programs.
pub fn preflight() -> Result<()> {
    require_capabilities(&BASE_CAPABILITIES)?;
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        bail!(
            "this kernel has no BTF (/sys/kernel/btf/vmlinux is missing): cleartap needs \
             a kernel built with CONFIG_DEBUG_INFO_BTF=y (tested on Linux 5.10 and newer)"
        );
    }
    ensure_tracefs()?;
    quiet_libbpf();
    Ok(())
}

/// Every capability of `needed` must be effective (root has them all).
pub fn require_capabilities(needed: &[Capability]) -> Result<()> {
    let status = std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let effective = effective_capabilities(&status).context("no CapEff line in /proc/self/status")?;
    let missing: Vec<String> = needed
        .iter()
        .filter(|c| effective & (1u64 << c.bit) == 0)
        .map(|c| format!("{} ({})", c.name, c.why))
        .collect();
    if !missing.is_empty() {
        bail!("cleartap is missing capabilities: {}; run it as root or grant them", missing.join(", "));
    }
    Ok(())
}

fn effective_capabilities(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(line.trim(), 16).ok()
}

/// Does this kernel have the bpf_loop helper (5.17)? Probed, not guessed
/// from the version: distributions backport.
pub fn has_bpf_loop() -> bool {
    has_uprobe_helper(libbpf_sys::BPF_FUNC_loop)
}

/// Can uprobes read the current task's ancestor cgroup
/// (bpf_get_current_ancestor_cgroup_id), which `--cgroup` filters on?
pub fn has_ancestor_cgroup_id() -> bool {
    has_uprobe_helper(libbpf_sys::BPF_FUNC_get_current_ancestor_cgroup_id)
}

/// Does this kernel give uprobes a cookie (bpf_get_attach_cookie, 5.15)?
pub fn has_attach_cookie() -> bool {
    has_uprobe_helper(libbpf_sys::BPF_FUNC_get_attach_cookie)
}

/// Does this kernel have atomic operations that return the old value
/// (`BPF_ATOMIC | BPF_FETCH`, 5.12)? Kernels before refuse such an
/// instruction anywhere in a program, so the TLS programs that number calls
/// come in two variants (see `next_call_seq` in bpf/tls.bpf.c). Probed by
/// loading a six-instruction program that uses one.
pub fn has_atomic_fetch() -> bool {
    use libbpf_sys::{BPF_ADD, BPF_ALU64, BPF_ATOMIC, BPF_DW, BPF_FETCH, BPF_K, BPF_MEM, BPF_MOV, BPF_STX};
    loads(
        &[
            insn(BPF_ALU64 | BPF_MOV | BPF_K, 1, 0, 0, 0),  // r1 = 0
            insn(BPF_STX | BPF_DW | BPF_MEM, 10, 1, -8, 0), // *(u64 *)(r10 - 8) = r1
            insn(BPF_ALU64 | BPF_MOV | BPF_K, 1, 0, 0, 1),  // r1 = 1
            // r1 = atomic_fetch_add((u64 *)(r10 - 8), r1)
            insn(BPF_STX | BPF_DW | BPF_ATOMIC, 10, 1, -8, (BPF_ADD | BPF_FETCH) as i32),
        ],
        0,
    )
}

/// Can uprobe programs sleep (`uprobe.s`, 6.0), and so fault in a page a
/// probe cannot read (bpf_copy_from_user)? The secret probes then load as
/// their `_sleepable` variants (see `fault_in` in bpf/tls.bpf.c). Probed
/// by loading a sleepable program that calls bpf_copy_from_user: kernels
/// before 6.0 refuse any sleepable program of the uprobes' type.
pub fn has_sleepable_uprobes() -> bool {
    use libbpf_sys::{BPF_FUNC_copy_from_user, BPF_ADD, BPF_ALU64, BPF_CALL, BPF_JMP, BPF_K, BPF_MOV, BPF_X};
    loads(
        &[
            insn(BPF_ALU64 | BPF_MOV | BPF_X, 1, 10, 0, 0), // r1 = r10
            insn(BPF_ALU64 | BPF_ADD | BPF_K, 1, 0, 0, -8), // r1 -= 8
            insn(BPF_ALU64 | BPF_MOV | BPF_K, 2, 0, 0, 1),  // r2 = 1
            insn(BPF_ALU64 | BPF_MOV | BPF_K, 3, 0, 0, 0),  // r3 = 0 (NULL)
            // bpf_copy_from_user(r10 - 8, 1, NULL)
            insn(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_copy_from_user as i32),
        ],
        libbpf_sys::BPF_F_SLEEPABLE,
    )
}

fn insn(code: u32, dst: u8, src: u8, off: i16, imm: i32) -> libbpf_sys::bpf_insn {
    let mut i = libbpf_sys::bpf_insn { code: code as u8, off, imm, ..Default::default() };
    i.set_dst_reg(dst);
    i.set_src_reg(src);
    i
}

/// Whether the kernel loads `body`, then `return 0`, as a program of the
/// uprobes' type with `flags` (BPF_F_*).
fn loads(body: &[libbpf_sys::bpf_insn], flags: u32) -> bool {
    use libbpf_sys::{BPF_ALU64, BPF_EXIT, BPF_JMP, BPF_K, BPF_MOV};
    let mut insns = body.to_vec();
    insns.push(insn(BPF_ALU64 | BPF_MOV | BPF_K, 0, 0, 0, 0)); // r0 = 0
    insns.push(insn(BPF_JMP | BPF_EXIT, 0, 0, 0, 0));
    let mut opts = libbpf_sys::bpf_prog_load_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_prog_load_opts>() as libbpf_sys::size_t,
        prog_flags: flags,
        ..Default::default()
    };
    // SAFETY: the instructions and options outlive the call; the fd it
    // returns is ours and closed here.
    let fd = unsafe {
        libbpf_sys::bpf_prog_load(
            libbpf_sys::BPF_PROG_TYPE_KPROBE,
            std::ptr::null(),
            c"GPL".as_ptr(),
            insns.as_ptr(),
            insns.len() as libbpf_sys::size_t,
            &mut opts,
        )
    };
    if fd < 0 {
        return false;
    }
    // SAFETY: fd is a descriptor we own.
    unsafe { libc::close(fd) };
    true
}

fn has_uprobe_helper(helper: libbpf_sys::bpf_func_id) -> bool {
    // SAFETY: a read-only probe that loads and unloads a tiny program.
    let found = unsafe {
        libbpf_sys::libbpf_probe_bpf_helper(libbpf_sys::BPF_PROG_TYPE_KPROBE, helper, std::ptr::null())
    };
    found == 1
}

/// Why loading `what` (e.g. "the TLS BPF programs") failed, with what to
/// do: out of memory for maps (a memory cgroup limit, a huge
/// `--ringbuf-size`) is told apart from a kernel that cannot run them.
pub fn load_failed(what: &'static str) -> impl FnOnce(libbpf_rs::Error) -> anyhow::Error {
    move |e| {
        if e.kind() == libbpf_rs::ErrorKind::OutOfMemory {
            anyhow::Error::new(e).context(format!(
                "loading {what} failed: the kernel refused memory for cleartap's BPF maps; lower \
                 --ringbuf-size (and --max-connections), or raise the memory limit of the cgroup \
                 cleartap runs in"
            ))
        } else {
            anyhow::Error::new(e).context(format!(
                "loading {what} into the kernel failed (cleartap is tested on Linux 5.10 and newer, with BTF, \
                 uprobes, tracepoints, ring buffers and TC BPF; `cleartap check` shows which program)"
            ))
        }
    }
}

/// Tracepoints are found through tracefs; mount it if nobody did.
fn ensure_tracefs() -> Result<()> {
    let tracefs = Path::new("/sys/kernel/tracing");
    if tracefs.join("events").exists() || Path::new("/sys/kernel/debug/tracing/events").exists() {
        return Ok(());
    }
    let status =
        std::process::Command::new("mount").args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"]).status();
    if !matches!(status, Ok(s) if s.success()) || !tracefs.join("events").exists() {
        bail!(
            "tracefs is not mounted and mounting it failed: run `mount -t tracefs nodev /sys/kernel/tracing`"
        );
    }
    Ok(())
}

/// libbpf's own messages (verifier logs, probing chatter) are for
/// debugging: errors reach the user through our messages, with what to do.
/// `CLEARTAP_DEBUG=1` shows them.
fn quiet_libbpf() {
    if std::env::var_os("CLEARTAP_DEBUG").is_none() {
        libbpf_rs::set_print(None);
    }
}

/// Kernel-side counters, summed over CPUs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct KernelStats {
    pub records: u64,
    pub lost_records: u64,
    pub lost_bytes: u64,
    pub truncated_bytes: u64,
    /// Entries the TLS connection map has created (see `sources::tls`).
    pub conn_entries: u64,
    /// Packets that found the packet ring full, and packets cut because
    /// they were larger than the largest record.
    pub lost_packets: u64,
    pub cut_packets: u64,
    /// TLS calls whose return found no entry (evicted from the per-thread
    /// table): not captured.
    pub unseen_starts: u64,
}

impl KernelStats {
    pub fn read(map: &dyn MapCore) -> KernelStats {
        let get = |which: u32| -> u64 {
            match map.lookup_percpu(&which.to_ne_bytes(), MapFlags::ANY) {
                Ok(Some(per_cpu)) => {
                    per_cpu.iter().filter_map(|v| v.get(..8)?.try_into().ok()).map(u64::from_ne_bytes).sum()
                }
                _ => 0,
            }
        };
        KernelStats {
            records: get(stat::RECORDS),
            lost_records: get(stat::LOST_RECORDS),
            lost_bytes: get(stat::LOST_BYTES),
            truncated_bytes: get(stat::TRUNCATED_BYTES),
            conn_entries: get(stat::CONN_ENTRIES),
            lost_packets: get(stat::LOST_PACKETS),
            cut_packets: get(stat::CUT_PACKETS),
            unseen_starts: get(stat::UNSEEN_STARTS),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_root_is_level_zero() {
        if let Ok(root) = cgroup2_mount() {
            assert_eq!(Cgroup::from_path(&root).unwrap().level, 0);
            assert!(Cgroup::from_path(Path::new("/tmp")).is_err());
        }
    }

    #[test]
    fn effective_capabilities_are_read_from_status() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t0000000000200004\n";
        let caps = effective_capabilities(status).unwrap();
        assert!(caps & (1 << CAP_SYS_ADMIN.bit) != 0 && caps & (1 << CAP_DAC_READ_SEARCH.bit) != 0);
        assert!(caps & (1 << CAP_SYS_PTRACE.bit) == 0);
        assert_eq!(effective_capabilities("CapEff: zz"), None);
        assert_eq!(effective_capabilities(""), None);
    }

    #[test]
    fn comm_is_cut_like_the_kernel_cuts_it() {
        let f = Filters { comm: Some("a-very-long-command-name".into()), ..Default::default() };
        let bytes = f.comm_bytes().unwrap();
        assert_eq!(bytes[14], b'm' as i8);
        assert_eq!(bytes[15], 0);
        assert!(Filters::default().comm_bytes().is_none());
    }
}
