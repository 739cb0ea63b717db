//! Interactive shells: bash (`readline`) and zsh (`zleentry`), in the
//! shell's own executable. The exit status is the shell's `$?` variable,
//! read at the next prompt (see `bpf/shell.bpf.c` for why).

use std::mem::MaybeUninit;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use anyhow::{bail, Context, Result};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags, OpenObject, UprobeOpts};

use super::attached::{AttachedFiles, FileLinks};
use super::executables::ExecutableAttacher;
use crate::bpf::shell::types::{file_key, shell_binary};
use crate::bpf::shell::{ShellSkel, ShellSkelBuilder};
use crate::discover::elf::{Dependencies, Function, Symbols};
use crate::discover::ldpath;
use crate::discover::pinned::PinnedFile;
use crate::discover::procs::{Executable, FileId};
use crate::events::shell as kind;
use crate::kernel::{self, Filters};

/// A shell executable and where its state lives.
#[derive(Debug, Clone)]
pub struct ShellBinary {
    /// The executable as opened once: parsed from and attached through it.
    pub file: Rc<PinnedFile>,
    pub path: PathBuf,
    pub display_path: String,
    pub id: FileId,
    pub name: &'static str,
    kind: u8,
    /// `readline` (bash) or `zleentry` (zsh); for a bash linked to
    /// libreadline.so, bash's own `read_command` (see `readline_lib`).
    entry: Function,
    /// Variables relative to `entry`.
    status_delta: i64,
    linecount_delta: i64,
    /// The libreadline.so whose `readline` returns this bash's lines.
    pub readline_lib: Option<ReadlineLibrary>,
}

#[derive(Debug, Clone)]
pub struct ReadlineLibrary {
    pub file: Rc<PinnedFile>,
    pub path: PathBuf,
    pub display_path: String,
    pub id: FileId,
    readline: Function,
}

/// Run by bash before each command is read: the anchor giving a
/// libreadline.so bash's load address.
const BASH_ANCHOR: &str = "read_command";

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
    pub fn resolve(exe: &Executable) -> Result<ShellBinary> {
        let wanted: Vec<&str> = SHELLS
            .iter()
            .flat_map(|s| s.entries.iter().copied().chain([s.status]).chain(s.linecount))
            .chain([BASH_ANCHOR])
            .collect();
        let file = Rc::new(exe.open()?);
        let symbols = Symbols::of(&file, &wanted)?;
        for shell in &SHELLS {
            let Some(status) = symbols.get(shell.status) else { continue };
            let inside = shell.entries.iter().find_map(|e| symbols.get(e));
            let (entry, readline_lib) = match (inside, symbols.get(BASH_ANCHOR)) {
                (Some(entry), _) => (entry, None),
                (None, Some(anchor)) if shell.kind == kind::BASH => {
                    (anchor, Some(readline_library(exe, &file)?))
                }
                (None, _) => continue,
            };
            let delta = |f: Function| f.address as i64 - entry.address as i64;
            return Ok(ShellBinary {
                file,
                path: exe.path.clone(),
                display_path: exe.display_path.clone(),
                id: exe.id,
                name: shell.name,
                kind: shell.kind,
                entry,
                status_delta: delta(status),
                linecount_delta: shell.linecount.and_then(|n| symbols.get(n)).map_or(0, delta),
                readline_lib,
            });
        }
        bail!(
            "{}: no readline (or readline_internal_teardown, or read_command and a \
             libreadline.so) and last_command_exit_value (bash), or zleentry and lastval (zsh), in \
             the executable",
            exe.display_path
        )
    }
}

/// The libreadline.so a bash without its own readline loads.
fn readline_library(exe: &Executable, file: &PinnedFile) -> Result<ReadlineLibrary> {
    let deps = Dependencies::of(file)?;
    let name =
        deps.needed.iter().find(|n| n.starts_with("libreadline.so")).with_context(|| {
            format!("{}: no readline inside and no libreadline.so needed", exe.display_path)
        })?;
    let lib = ldpath::locate(exe.pid, &exe.display_path, name, &deps.runpath)
        .with_context(|| format!("{}: needs {name}, which was not found", exe.display_path))?;
    let lib_file = Rc::new(PinnedFile::open_expecting(&lib.path, lib.id)?);
    let readline = Symbols::of(&lib_file, &["readline"])?
        .get("readline")
        .with_context(|| format!("{}: no readline function", lib.display_path))?;
    Ok(ReadlineLibrary {
        file: lib_file,
        path: lib.path,
        display_path: lib.display_path,
        id: lib.id,
        readline,
    })
}

/// Is this executable name a shell we know?
pub fn is_shell_path(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    matches!(name, "bash" | "rbash" | "zsh" | "rzsh") || name.starts_with("zsh-")
}

pub type ShellProbes<'obj> = super::Probes<ShellSkel<'obj>>;

impl<'obj> ShellProbes<'obj> {
    pub fn load(storage: &'obj mut MaybeUninit<OpenObject>, filters: &Filters, ring: u32) -> Result<Self> {
        let mut open = crate::open_filtered!(ShellSkelBuilder, storage, filters, "shell");
        open.maps.events.set_max_entries(ring).context("sizing the ring buffer")?;
        let skel = open.load().map_err(kernel::load_failed("the shell BPF programs"))?;
        Ok(ShellProbes { skel })
    }

    pub fn attach_exit(&self) -> Result<Link> {
        super::attach_tracepoint(&self.skel.progs.shell_exit)
    }

    /// The probes of `bin`'s file and, for a bash reading its lines
    /// through libreadline.so, of that library's unless it is `attached`
    /// already (one pair of probes per library file, whichever bash needs it).
    pub fn attach(&self, bin: &ShellBinary, attached: &AttachedFiles) -> Result<Vec<FileLinks>> {
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
        let at = |prog: &libbpf_rs::ProgramMut<'obj>, retprobe, path: &Path, display: &str, f: Function| {
            let opts = UprobeOpts { retprobe, ..Default::default() };
            prog.attach_uprobe_with_opts(-1, path, f.file_offset as usize, opts)
                .with_context(|| format!("attaching to {} in {display}", bin.name))
        };
        let bin_path = bin.file.proc_path();
        let (path, display) = (&bin_path, bin.display_path.as_str());
        let file = |id, path: &PathBuf, display: &str, links| FileLinks {
            id,
            path: path.clone(),
            display_path: display.to_string(),
            links,
        };
        let mut files = Vec::new();
        let links = match (bin.kind, &bin.readline_lib) {
            (kind::ZSH, _) => vec![
                at(&p.zsh_zleentry_entry, false, path, display, bin.entry)?,
                at(&p.zsh_zleentry_return, true, path, display, bin.entry)?,
            ],
            (_, None) => vec![
                at(&p.bash_readline_entry, false, path, display, bin.entry)?,
                at(&p.bash_readline_return, true, path, display, bin.entry)?,
            ],
            (_, Some(lib)) => {
                let anchor = vec![at(&p.bash_anchor, false, path, display, bin.entry)?];
                if !attached.contains(&lib.id) {
                    let lib_path = lib.file.proc_path();
                    let (path, display) = (&lib_path, lib.display_path.as_str());
                    let lib_links = vec![
                        at(&p.bash_lib_readline_entry, false, path, display, lib.readline)?,
                        at(&p.bash_readline_return, true, path, display, lib.readline)?,
                    ];
                    files.push(file(lib.id, &lib.path, &lib.display_path, lib_links));
                }
                anchor
            }
        };
        files.push(file(bin.id, &bin.path, &bin.display_path, links));
        Ok(files)
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
    ExecutableAttacher::new(is_shell_path, move |exe, attached| {
        let bin = ShellBinary::resolve(exe)?;
        let files = probes.attach(&bin, attached)?;
        Ok((bin, files))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::procs;

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
        let exe = |path: &str| procs::executable(u32::MAX, Some(path)).unwrap();
        let bin = ShellBinary::resolve(&exe("/bin/bash")).unwrap();
        assert_eq!(bin.name, "bash");
        assert_ne!(bin.status_delta, 0);
        assert_ne!(bin.linecount_delta, 0);
        assert!(bin.readline_lib.is_none(), "Debian's bash has readline inside");
        assert!(ShellBinary::resolve(&exe("/bin/true")).is_err());
    }

    #[test]
    fn kernel_dev_encoding() {
        assert_eq!(kernel_dev(libc::makedev(8, 1)), (8 << 20) | 1);
        assert_eq!(kernel_dev(libc::makedev(259, 70000)), (259 << 20) | 70000);
    }
}
