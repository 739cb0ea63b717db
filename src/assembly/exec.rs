//! execve/execveat entry and return, joined: a program start is reported
//! once, with its result. Bounded: a start whose result never arrives
//! (lost, or the task was killed) is reported without one when the table
//! is full (the least recently started goes, and is counted) or at
//! shutdown.

use std::io;
use std::time::SystemTime;

use crate::context::clock::Clock;
use crate::context::users::Users;
use crate::context::{comm_string, Bounded, ExecRecord, Replaced};
use crate::events::{c_bytes, Event};
use crate::output::Output;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exec {
    pub time: SystemTime,
    pub pid: u32,
    pub tid: u32,
    pub ppid: u32,
    pub uid: u32,
    /// The caller's command name (before the exec).
    pub comm: String,
    pub filename: Vec<u8>,
    pub argv: Vec<Vec<u8>>,
    pub argv_truncated: bool,
    /// The arguments the new program got differ from those read at the
    /// syscall's entry (another thread of the caller rewrote them in
    /// between): `argv` is what the program got.
    pub argv_changed: bool,
    pub cwd: Option<String>,
    /// 0 on success, -errno on failure; None when the result was not seen.
    pub ret: Option<i32>,
}

/// Starts awaiting their result at once.
pub const MAX_PENDING: usize = 4096;

pub struct Execs {
    pending: Bounded<u32, Exec>,
}

impl Default for Execs {
    fn default() -> Self {
        Execs { pending: Bounded::new(MAX_PENDING) }
    }
}

impl Execs {
    /// An exec started; returns a start to report now without its result:
    /// an earlier one of the same pid, or the oldest one, evicted to stay
    /// bounded (counted in `evicted`).
    pub fn start(&mut self, exec: Exec) -> Option<Exec> {
        // Keyed by pid: exec keeps the pid, while a successful exec from a
        // non-leader thread returns on the leader's tid.
        match self.pending.push(exec.pid, exec)? {
            Replaced::Same(out) | Replaced::Evicted(_, out) => Some(out),
        }
    }

    /// Starts reported without their result because the table was full.
    pub fn evicted(&self) -> u64 {
        self.pending.evicted()
    }

    /// The result for `pid`, with the arguments the new program got when
    /// it succeeded (NUL-separated, and whether they were cut); None if
    /// its start was not seen (filtered out).
    pub fn result(&mut self, pid: u32, ret: i32, new_args: Option<(&[u8], bool)>) -> Option<Exec> {
        let mut exec = self.pending.pop(&pid)?;
        exec.ret = Some(ret);
        if let Some((args, truncated)) = new_args.filter(|(args, _)| !args.is_empty()) {
            // Each argument ends with its NUL; a cut one may not.
            let args = args.strip_suffix(&[0]).unwrap_or(args);
            let argv: Vec<Vec<u8>> = args.split(|&b| b == 0).map(<[u8]>::to_vec).collect();
            let same = if exec.argv_truncated || truncated {
                let n = exec.argv.len().min(argv.len());
                exec.argv[..n.saturating_sub(1)] == argv[..n.saturating_sub(1)]
            } else {
                exec.argv == argv
            };
            exec.argv_changed = !same;
            exec.argv = argv;
            exec.argv_truncated = truncated;
        }
        Some(exec)
    }

    pub fn drain(&mut self) -> Vec<Exec> {
        self.pending.drain_by_key(|e| e.time)
    }
}

/// Split NUL-separated arguments.
pub fn split_args(args: &[u8], argc: usize) -> Vec<Vec<u8>> {
    args.split(|&b| b == 0).take(argc).map(<[u8]>::to_vec).collect()
}

/// The exec source's records (start, result) -> program starts with
/// their result and user.
#[derive(Default)]
pub struct ExecAssembler {
    execs: Execs,
    users: Users,
    clock: Clock,
}

impl super::Assembler for ExecAssembler {
    /// A record of the exec source (others are ignored): what it completes
    /// is written to `out`.
    fn event(&mut self, event: Event, out: &mut dyn Output) -> io::Result<()> {
        match event {
            Event::ExecStart(e) => {
                let args = &c_bytes_len(&e.args, e.args_len as usize);
                let exec = Exec {
                    time: self.clock.wall(e.task.ts_ns),
                    pid: e.task.pid,
                    tid: e.task.tid,
                    ppid: e.task.ppid,
                    uid: e.task.uid,
                    comm: comm_string(&e.task.comm),
                    filename: c_bytes(&e.filename).to_vec(),
                    argv: split_args(args, e.argc as usize),
                    argv_truncated: e.truncated != 0,
                    argv_changed: false,
                    // Read now, while the process is (most likely) alive.
                    cwd: std::fs::read_link(format!("/proc/{}/cwd", e.task.pid))
                        .ok()
                        .map(|p| p.display().to_string()),
                    ret: None,
                };
                if let Some(stale) = self.execs.start(exec) {
                    self.write(stale, out)?;
                }
            }
            Event::ExecResult(r) => {
                let new_args = c_bytes_len(&r.args, r.args_len as usize);
                let new_args = (r.ret == 0).then_some((&new_args[..], r.truncated != 0));
                if let Some(done) = self.execs.result(r.task.pid, r.ret, new_args) {
                    self.write(done, out)?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Shutdown: the starts still awaiting their result, without one.
    fn finish(&mut self, out: &mut dyn Output) -> io::Result<()> {
        for exec in self.execs.drain() {
            self.write(exec, out)?;
        }
        super::report_evicted(self.execs.evicted(), || {
            format!("program starts reported without their result: more than {MAX_PENDING} awaited theirs at once")
        });
        Ok(())
    }
}

impl ExecAssembler {
    fn write(&mut self, exec: Exec, out: &mut dyn Output) -> io::Result<()> {
        out.exec(&ExecRecord { exec: &exec, user: self.users.name(exec.uid) })
    }
}

/// The first `len` bytes of a C char array (arguments are NUL-separated,
/// so this must not stop at the first NUL).
fn c_bytes_len(chars: &[i8], len: usize) -> Vec<u8> {
    chars[..len.min(chars.len())].iter().map(|&c| c as u8).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec(pid: u32) -> Exec {
        Exec {
            time: SystemTime::UNIX_EPOCH,
            pid,
            tid: pid,
            ppid: 1,
            uid: 0,
            comm: "sh".into(),
            filename: b"/bin/true".to_vec(),
            argv: vec![],
            argv_changed: false,
            argv_truncated: false,
            cwd: None,
            ret: None,
        }
    }

    #[test]
    fn start_and_result_join_by_pid() {
        let mut e = Execs::default();
        assert!(e.start(exec(5)).is_none());
        assert_eq!(e.result(6, 0, None), None);
        assert_eq!(e.result(5, -2, None).unwrap().ret, Some(-2));
        assert!(e.drain().is_empty());
    }

    #[test]
    fn a_full_table_reports_its_oldest_start_without_a_result_and_counts_it() {
        let mut e = Execs::default();
        for pid in 1..=MAX_PENDING as u32 {
            assert!(e.start(exec(pid)).is_none());
        }
        // The same pid again: its earlier start is reported, nothing evicted.
        assert_eq!(e.start(exec(2)).map(|x| x.pid), Some(2));
        assert_eq!(e.evicted(), 0);
        let oldest = e.start(exec(100_000)).unwrap();
        assert_eq!((oldest.pid, oldest.ret), (1, None));
        assert_eq!(e.evicted(), 1);
        assert!(e.result(1, 0, None).is_none());
        assert_eq!(e.result(100_000, 0, None).unwrap().ret, Some(0));
        assert_eq!(e.drain().len(), MAX_PENDING - 1);
    }

    #[test]
    fn the_new_programs_arguments_win_and_a_change_is_flagged() {
        let mut e = Execs::default();
        let start =
            |argv: &[&str]| Exec { argv: argv.iter().map(|a| a.as_bytes().to_vec()).collect(), ..exec(7) };
        e.start(start(&["ls", "-l"]));
        let same = e.result(7, 0, Some((b"ls\0-l\0", false))).unwrap();
        assert_eq!((same.argv.len(), same.argv_changed), (2, false));
        // Rewritten by another thread between entry and the copy.
        e.start(start(&["ls", "-l"]));
        let changed = e.result(7, 0, Some((b"rm\0-rf\0/tmp/x\0", false))).unwrap();
        assert_eq!(changed.argv, [b"rm".to_vec(), b"-rf".to_vec(), b"/tmp/x".to_vec()]);
        assert!(changed.argv_changed);
        // An empty argument survives; cut arguments compare on what both have.
        e.start(start(&["echo", "", "x"]));
        assert!(!e.result(7, 0, Some((b"echo\0\0x\0", false))).unwrap().argv_changed);
        e.start(Exec { argv_truncated: true, ..start(&["a", "b", "c"]) });
        let cut = e.result(7, 0, Some((b"a\0b\0c\0d\0e", true))).unwrap();
        assert!(!cut.argv_changed && cut.argv_truncated && cut.argv.len() == 5);
    }

    #[test]
    fn args_split_on_nul() {
        assert_eq!(split_args(b"a\0b c\0\xff\0", 3), vec![b"a".to_vec(), b"b c".to_vec(), b"\xff".to_vec()]);
        assert_eq!(split_args(b"a\0b\0", 1), vec![b"a".to_vec()]);
    }
}
