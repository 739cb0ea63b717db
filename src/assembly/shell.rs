//! Shell lines to commands: continuation lines join the command they
//! continue; a command is complete, with the exit status, when its shell
//! asks for the next command (the status is the shell's $? at that prompt)
//! or exits (status unknown). `ShellAssembler` feeds it the kernel's
//! records and hands each command, enriched, to the output.

use std::collections::HashMap;
use std::io;
use std::time::SystemTime;

use crate::context::clock::Clock;
use crate::context::users::Users;
use crate::context::CommandRecord;
use crate::events::{c_bytes, shell, Event};
use crate::output::Output;

/// The shell source's records (lines, shell exits) -> commands, with the
/// user and the shell's executable.
#[derive(Default)]
pub struct ShellAssembler {
    commands: Commands,
    users: Users,
    clock: Clock,
    /// pid -> shell executable path, read at the shell's first line.
    shell_paths: HashMap<u32, Option<String>>,
}

impl super::Assembler for ShellAssembler {
    /// A record of the shell source (others are ignored): what it
    /// completes is written to `out`.
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
            _ => {}
        }
        Ok(())
    }

    /// Shutdown: the commands still pending, status unknown.
    fn finish(&mut self, out: &mut dyn Output) -> io::Result<()> {
        for command in self.commands.drain() {
            self.write(command, out)?;
        }
        Ok(())
    }
}

impl ShellAssembler {
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
            read: Command {
                time: self.clock.wall(l.task.ts_ns),
                pid,
                ppid: l.task.ppid,
                uid: l.task.uid,
                shell: if zsh { "zsh" } else { "bash" },
                tty: tty_path(&String::from_utf8_lossy(c_bytes(&l.tty))),
                text,
                truncated: l.truncated != 0,
                exit_status: None,
            },
            continuation: l.continuation != 0,
            prev_status: (l.status_valid != 0).then_some(l.prev_status),
        }
    }
}

/// The kernel names pseudo-terminals `ptsN`; people know them as `pts/N`.
fn tty_path(name: &str) -> String {
    match name.strip_prefix("pts") {
        Some(n) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => format!("pts/{n}"),
        _ => name.to_string(),
    }
}

/// One line as the shell read it.
#[derive(Debug, Clone)]
pub struct Line {
    /// The line as a command of its own (its exit status not known yet).
    pub read: Command,
    pub continuation: bool,
    /// The previous command's exit status, when the shell's $? was readable.
    pub prev_status: Option<i32>,
}

/// A complete command, lines joined with `\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub time: SystemTime,
    pub pid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub shell: &'static str,
    pub tty: String,
    pub text: Vec<u8>,
    pub truncated: bool,
    pub exit_status: Option<i32>,
}

/// One joined command is kept up to this size; past it the lines are
/// dropped and the command marked truncated (a pasted heredoc of
/// gigabytes must not grow cleartap's memory without end).
pub const MAX_COMMAND: usize = 1 << 20;

#[derive(Default)]
pub struct Commands {
    pending: HashMap<u32, Command>,
}

impl Commands {
    /// A new line; returns the command it completes, if any.
    pub fn line(&mut self, line: Line) -> Option<Command> {
        let read = line.read;
        if line.continuation {
            if let Some(cmd) = self.pending.get_mut(&read.pid) {
                if cmd.text.len() + 1 + read.text.len() > MAX_COMMAND {
                    cmd.truncated = true;
                    return None;
                }
                cmd.text.push(b'\n');
                cmd.text.extend_from_slice(&read.text);
                cmd.truncated |= read.truncated;
                return None;
            }
        }
        let done = self.pending.remove(&read.pid).map(|c| Command { exit_status: line.prev_status, ..c });
        if !read.text.iter().all(u8::is_ascii_whitespace) {
            self.pending.insert(read.pid, read);
        }
        done
    }

    /// The shell exited: its last command's status is not known.
    pub fn shell_exited(&mut self, pid: u32) -> Option<Command> {
        self.pending.remove(&pid)
    }

    /// Everything still pending (at shutdown), status unknown.
    pub fn drain(&mut self) -> Vec<Command> {
        let mut all: Vec<_> = self.pending.drain().map(|(_, c)| c).collect();
        all.sort_by_key(|c| c.time);
        all
    }
}

/// zsh keeps strings "metafied": a byte in the Meta range is stored as
/// 0x83 followed by the byte xor 32.
pub fn unmetafy(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.iter();
    while let Some(&b) = bytes.next() {
        match (b, bytes.clone().next()) {
            (0x83, Some(&next)) => {
                out.push(next ^ 32);
                bytes.next();
            }
            _ => out.push(b),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(pid: u32, text: &str, continuation: bool, prev_status: Option<i32>) -> Line {
        Line {
            read: Command {
                time: SystemTime::UNIX_EPOCH,
                pid,
                ppid: 1,
                uid: 0,
                shell: "bash",
                tty: "pts/0".into(),
                text: text.as_bytes().to_vec(),
                truncated: false,
                exit_status: None,
            },
            continuation,
            prev_status,
        }
    }

    #[test]
    fn a_command_growing_without_end_is_capped_and_marked() {
        let mut c = Commands::default();
        c.line(line(9, "cat <<EOF", false, None));
        let chunk = "x".repeat(64 << 10);
        for _ in 0..100 {
            assert!(c.line(line(9, &chunk, true, None)).is_none());
        }
        let done = c.line(line(9, "ls", false, Some(0))).unwrap();
        assert!(done.text.len() <= MAX_COMMAND, "{}", done.text.len());
        assert!(done.text.len() > MAX_COMMAND - (64 << 10) - 1);
        assert!(done.truncated);
        assert!(done.text.starts_with(b"cat <<EOF\nxxx"));
    }

    #[test]
    fn status_arrives_with_the_next_prompt() {
        let mut c = Commands::default();
        assert_eq!(c.line(line(1, "false", false, Some(0))), None);
        let done = c.line(line(1, "true", false, Some(1))).unwrap();
        assert_eq!((done.text.as_slice(), done.exit_status), (&b"false"[..], Some(1)));
    }

    #[test]
    fn continuation_lines_join_and_shells_do_not_mix() {
        let mut c = Commands::default();
        c.line(line(1, "for i in 1 2; do", false, None));
        c.line(line(2, "echo other", false, None));
        c.line(line(1, "echo $i", true, None));
        c.line(line(1, "done", true, None));
        let done = c.line(line(1, "", false, Some(0))).unwrap();
        assert_eq!(done.text, b"for i in 1 2; do\necho $i\ndone");
        assert_eq!(c.shell_exited(2).unwrap().text, b"echo other");
        assert!(c.drain().is_empty(), "an empty line starts no command");
    }

    #[test]
    fn tty_names() {
        assert_eq!(tty_path("pts3"), "pts/3");
        assert_eq!(tty_path("tty1"), "tty1");
        assert_eq!(tty_path("pts"), "pts");
        assert_eq!(tty_path(""), "");
    }

    #[test]
    fn zsh_meta_bytes() {
        assert_eq!(unmetafy(b"a\x83\xa3b"), b"a\x83b");
        assert_eq!(unmetafy(b"plain"), b"plain");
        assert_eq!(unmetafy(b"\x83"), b"\x83");
    }
}
