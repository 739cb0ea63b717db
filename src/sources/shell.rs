//! Interactive shells: bash (`readline`) and zsh (`zleentry`), in the
//! shell's own executable. The exit status is the shell's `$?` variable,
//! read at the next prompt (see `bpf/shell.bpf.c` for why).

use std::mem::MaybeUninit;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags, OpenObject, TracepointCategory, UprobeOpts};

use super::executables::ExecutableAttacher;
use crate::bpf::shell::types::{file_key, shell_binary};
use crate::bpf::shell::{ShellSkel, ShellSkelBuilder};
use crate::discover::elf::{Function, Symbols};
use crate::discover::procs::FileId;
use crate::events::shell as kind;
use crate::kernel::Filters;

/// A shell executable and where its state lives.
#[derive(Debug, Clone)]
pub struct ShellBinary {
    pub path: PathBuf,
    pub display_path: String,
    pub id: FileId,
    pub name: &'static str,
    kind: u8,
    /// `readline` (bash) or `zleentry` (zsh).
    entry: Function,
    status_delta: i64,
    linecount_delta: i64,
}

struct ShellSymbols {
    name: &'static str,
    kind: u8,
    /// The function returning the line, best first: bash builds that
    /// inline `readline` still have `readline_internal_teardown`, which
    /// returns the same line.
    entries: &'static [&'static str],
    status: &'static str,
    linecount: Option<&'static str>,
}

const SHELLS: [ShellSymbols; 2] = [
    ShellSymbols {
        name: "bash",
        kind: kind::BASH,
        entries: &["readline", "readline_internal_teardown"],
        status: "last_command_exit_value",
        linecount: Some("current_command_line_count"),
    },
    ShellSymbols { name: "zsh", kind: kind::ZSH, entries: &["zleentry"], status: "lastval", linecount: None },
];

impl ShellBinary {
    pub fn resolve(path: &Path, display_path: &str) -> Result<ShellBinary> {
        let id = FileId::of(path)?;
        let wanted: Vec<&str> = SHELLS
            .iter()
            .flat_map(|s| s.entries.iter().copied().chain([s.status]).chain(s.linecount))
            .collect();
        let symbols = Symbols::read(path, &wanted)?;
        for shell in &SHELLS {
            let entry = shell.entries.iter().find_map(|e| symbols.get(e));
            let (Some(entry), Some(status)) = (entry, symbols.get(shell.status)) else {
                continue;
            };
            let delta = |f: Function| f.address as i64 - entry.address as i64;
            return Ok(ShellBinary {
                path: path.to_path_buf(),
                display_path: display_path.to_string(),
                id,
                name: shell.name,
                kind: shell.kind,
                entry,
                status_delta: delta(status),
                linecount_delta: shell.linecount.and_then(|n| symbols.get(n)).map_or(0, delta),
            });
        }
        bail!(
            "{display_path}: no readline (or readline_internal_teardown) and last_command_exit_value \
             (bash), or zleentry and lastval (zsh), in the executable (a bash linked to \
             libreadline.so is not supported)"
        )
    }
}

/// Is this executable name a shell we know?
pub fn is_shell_path(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    matches!(name, "bash" | "rbash" | "zsh" | "rzsh") || name.starts_with("zsh-")
}

pub struct ShellProbes<'obj> {
    skel: ShellSkel<'obj>,
}

impl<'obj> ShellProbes<'obj> {
    pub fn load(
        storage: &'obj mut MaybeUninit<OpenObject>,
        filters: &Filters,
        ringbuf_bytes: u32,
    ) -> Result<Self> {
        let mut open = ShellSkelBuilder::default().open(storage).context("opening the shell BPF object")?;
        let rodata = open.maps.rodata_data.as_deref_mut().context("no .rodata in the BPF object")?;
        crate::set_filters!(rodata, filters);
        open.maps.events.set_max_entries(ringbuf_bytes).context("sizing the ring buffer")?;
        let skel = open.load().context("loading the shell BPF programs into the kernel failed")?;
        Ok(ShellProbes { skel })
    }

    pub fn attach_exit(&self) -> Result<Link> {
        self.skel
            .progs
            .shell_exit
            .attach_tracepoint(TracepointCategory::Sched, "sched_process_exit")
            .context("attaching tracepoint sched:sched_process_exit")
    }

    pub fn attach(&self, bin: &ShellBinary) -> Result<Vec<Link>> {
        let key = file_key { ino: bin.id.ino, dev: kernel_dev(bin.id.dev), _pad: 0 };
        let value = shell_binary {
            status_delta: bin.status_delta,
            linecount_delta: bin.linecount_delta,
            kind: bin.kind as u32,
            _pad: 0,
        };
        // SAFETY: both are plain repr(C) structs of integers.
        let (k, v) = unsafe { (plain::as_bytes(&key), plain::as_bytes(&value)) };
        self.skel.maps.shell_binaries.update(k, v, MapFlags::ANY).context("registering the shell binary")?;
        let p = &self.skel.progs;
        let (entry, ret) = if bin.kind == kind::BASH {
            (&p.bash_readline_entry, &p.bash_readline_return)
        } else {
            (&p.zsh_zleentry_entry, &p.zsh_zleentry_return)
        };
        let offset = bin.entry.file_offset as usize;
        let mut links = Vec::new();
        for (prog, retprobe) in [(entry, false), (ret, true)] {
            let opts = UprobeOpts { retprobe, ..Default::default() };
            let link = prog
                .attach_uprobe_with_opts(-1, &bin.path, offset, opts)
                .with_context(|| format!("attaching to {} in {}", bin.name, bin.display_path))?;
            links.push(link);
        }
        Ok(links)
    }

    pub fn events_map(&self) -> &libbpf_rs::MapMut<'obj> {
        &self.skel.maps.events
    }

    pub fn stats_map(&self) -> &libbpf_rs::MapMut<'obj> {
        &self.skel.maps.stats
    }
}

// SAFETY: repr(C) integer structs generated from bpf/shell.bpf.c.
unsafe impl plain::Plain for file_key {}
unsafe impl plain::Plain for shell_binary {}

/// The kernel's dev_t encoding (major << 20 | minor), which `s_dev` holds,
/// from the user-space encoding `stat` returns.
fn kernel_dev(dev: u64) -> u32 {
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    (major << 20) | minor
}

/// Finds shell executables in use and attaches each file once.
pub fn attacher<'a>(probes: &'a ShellProbes) -> ExecutableAttacher<'a, ShellBinary> {
    ExecutableAttacher::new(is_shell_path, move |exe| {
        let bin = ShellBinary::resolve(&exe.path, &exe.display_path)?;
        let links = probes.attach(&bin)?;
        Ok((bin, links))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_names() {
        assert!(is_shell_path("/bin/bash"));
        assert!(is_shell_path("/usr/bin/zsh"));
        assert!(is_shell_path("zsh-5.9"));
        assert!(!is_shell_path("/usr/bin/bashful"));
        assert!(!is_shell_path("/bin/sh"));
    }

    #[test]
    fn bash_state_is_found_in_the_system_bash() {
        let bin = ShellBinary::resolve(Path::new("/bin/bash"), "/bin/bash").unwrap();
        assert_eq!(bin.name, "bash");
        assert_ne!(bin.status_delta, 0);
        assert_ne!(bin.linecount_delta, 0);
        assert!(ShellBinary::resolve(Path::new("/bin/true"), "/bin/true").is_err());
    }

    #[test]
    fn kernel_dev_encoding() {
        assert_eq!(kernel_dev(libc::makedev(8, 1)), (8 << 20) | 1);
        assert_eq!(kernel_dev(libc::makedev(259, 70000)), (259 << 20) | 70000);
    }
}
