//! `cleartap shell`: interactive bash and zsh commands, with user, tty and
//! exit status.

use std::collections::HashMap;
use std::io;
use std::mem::MaybeUninit;

use anyhow::Result;

use super::{filters, pump, Destination, Handler};
use crate::assembly::shell::{unmetafy, Command, Commands, Line};
use crate::cli::SourceArgs;
use crate::context::clock::Clock;
use crate::context::users::Users;
use crate::context::CommandRecord;
use crate::events::{c_bytes, shell, Event};
use crate::kernel;
use crate::output::Output;
use crate::sources::executables::ExecutableAttacher;
use crate::sources::procwatch::{ProcWatch, SharedMaps};
use crate::sources::shell::{self as shells, ShellBinary, ShellProbes};

pub fn run(args: &SourceArgs) -> Result<()> {
    capture(args, Destination::stdout(args.output.style(0))?)
}

/// The capture, into `dest`.
pub fn capture(args: &SourceArgs, dest: Destination) -> Result<()> {
    kernel::preflight()?;
    let filters = filters(&args.filters)?;
    let mut storage = MaybeUninit::uninit();
    let probes = ShellProbes::load(&mut storage, &filters, args.output.ringbuf_size)?;
    let mut watch_storage = MaybeUninit::uninit();
    let shared = SharedMaps::of(probes.events_map(), probes.stats_map());
    let watch = ProcWatch::load(&mut watch_storage, &filters, &[], shared, false)?;
    let mut links = vec![probes.attach_exit()?];
    links.extend(watch.attach()?);

    let mut attacher = shells::attacher(&probes);
    let mut found = attacher.scan_paths(&registered_shells());
    found.extend(attacher.scan_host());
    if found.is_empty() {
        eprintln!("cleartap: no bash or zsh found yet; watching for shells that start");
    }
    for bin in &found {
        announce(bin);
    }
    let mut handler = ShellHandler {
        attacher,
        commands: Commands::default(),
        users: Users::default(),
        clock: Clock::now(),
        shell_paths: HashMap::new(),
    };
    pump(&[probes.events_map()], probes.stats_map(), links, &mut handler, dest)
}

/// The login shells this host lists in /etc/shells.
fn registered_shells() -> Vec<String> {
    let text = std::fs::read_to_string("/etc/shells").unwrap_or_default();
    text.lines().map(str::trim).filter(|l| l.starts_with('/')).map(String::from).collect()
}

fn announce(bin: &ShellBinary) {
    match &bin.readline_lib {
        None => eprintln!(
            "cleartap: attached to {} ({})",
            crate::output::escape::for_terminal(&bin.display_path),
            bin.name
        ),
        Some(lib) => eprintln!(
            "cleartap: attached to {} ({}, reading lines from {})",
            crate::output::escape::for_terminal(&bin.display_path),
            bin.name,
            crate::output::escape::for_terminal(&lib.display_path)
        ),
    }
}

struct ShellHandler<'p> {
    attacher: ExecutableAttacher<'p, ShellBinary>,
    commands: Commands,
    users: Users,
    clock: Clock,
    /// pid -> shell executable path, read at the shell's first line.
    shell_paths: HashMap<u32, Option<String>>,
}

impl ShellHandler<'_> {
    fn write(&mut self, command: Command, out: &mut dyn Output) -> io::Result<()> {
        let shell_path = self.shell_paths.get(&command.pid).cloned().flatten();
        let record = CommandRecord {
            command: &command,
            user: self.users.name(command.uid),
            shell_path: shell_path.as_deref(),
        };
        out.command(&record)
    }

    fn line(&mut self, l: &crate::bpf::types::ct_shell_line) -> Line {
        let text = &c_bytes(&l.line)[..(l.len as usize).min(l.line.len())];
        let zsh = l.shell == shell::ZSH;
        let mut text = if zsh { unmetafy(text) } else { text.to_vec() };
        while text.last() == Some(&b'\n') {
            text.pop(); // zsh returns the line with its newline
        }
        let pid = l.task.pid;
        self.shell_paths.entry(pid).or_insert_with(|| {
            std::fs::read_link(format!("/proc/{pid}/exe")).ok().map(|p| p.display().to_string())
        });
        Line {
            time: self.clock.wall(l.task.ts_ns),
            pid,
            ppid: l.task.ppid,
            uid: l.task.uid,
            shell: if zsh { "zsh" } else { "bash" },
            tty: tty_path(&String::from_utf8_lossy(c_bytes(&l.tty))),
            text,
            truncated: l.truncated != 0,
            continuation: l.continuation != 0,
            prev_status: (l.status_valid != 0).then_some(l.prev_status),
        }
    }
}

impl Handler for ShellHandler<'_> {
    fn event(&mut self, event: Event, out: &mut dyn Output) -> io::Result<()> {
        match event {
            Event::ShellLine(l) => {
                let line = self.line(l);
                if let Some(done) = self.commands.line(line) {
                    self.write(done, out)?;
                }
            }
            Event::ShellExit(task) => {
                if let Some(done) = self.commands.shell_exited(task.pid) {
                    self.write(done, out)?;
                }
                self.shell_paths.remove(&task.pid);
            }
            Event::Exec(e) => {
                if let Some(bin) = self.attacher.consider(e.pid, Some(&String::from_utf8_lossy(e.path))) {
                    announce(&bin);
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn detach(&mut self) {
        self.attacher.detach_all();
    }

    fn finish(&mut self, out: &mut dyn Output) -> io::Result<()> {
        for command in self.commands.drain() {
            self.write(command, out)?;
        }
        Ok(())
    }
}

/// The kernel names pseudo-terminals `ptsN`; people know them as `pts/N`.
fn tty_path(name: &str) -> String {
    match name.strip_prefix("pts") {
        Some(n) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => format!("pts/{n}"),
        _ => name.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tty_names() {
        assert_eq!(super::tty_path("pts3"), "pts/3");
        assert_eq!(super::tty_path("tty1"), "tty1");
        assert_eq!(super::tty_path("pts"), "pts");
        assert_eq!(super::tty_path(""), "");
    }
}
