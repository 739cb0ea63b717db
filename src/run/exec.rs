//! `cleartap exec`: every program started on the host, with its arguments
//! and whether the exec succeeded.

use std::io;
use std::mem::MaybeUninit;

use anyhow::Result;

use super::{filters, pump, Destination, Handler};
use crate::assembly::exec::{self as execs, split_args, Exec, Execs};
use crate::cli::SourceArgs;
use crate::context::clock::Clock;
use crate::context::users::Users;
use crate::context::{comm_string, ExecRecord};
use crate::events::{c_bytes, Event};
use crate::kernel;
use crate::output::Output;
use crate::sources::exec::ExecProbes;

pub fn run(args: &SourceArgs) -> Result<()> {
    capture(args, Destination::stdout(args.output.style(0))?)
}

/// The capture, into `dest`.
pub fn capture(args: &SourceArgs, dest: Destination) -> Result<()> {
    kernel::preflight()?;
    let filters = filters(&args.filters)?;
    let mut storage = MaybeUninit::uninit();
    let probes = ExecProbes::load(&mut storage, &filters, args.output.ringbuf_size)?;
    let links = probes.attach()?;
    let mut handler = ExecHandler { execs: Execs::default(), users: Users::default(), clock: Clock::now() };
    pump(&[probes.events_map()], probes.stats_map(), links, &mut handler, dest)
}

struct ExecHandler {
    execs: Execs,
    users: Users,
    clock: Clock,
}

impl ExecHandler {
    fn write(&mut self, exec: Exec, out: &mut dyn Output) -> io::Result<()> {
        out.exec(&ExecRecord { exec: &exec, user: self.users.name(exec.uid) })
    }
}

impl Handler for ExecHandler {
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

    fn finish(&mut self, out: &mut dyn Output) -> io::Result<()> {
        for exec in self.execs.drain() {
            self.write(exec, out)?;
        }
        let evicted = self.execs.evicted();
        if evicted > 0 {
            eprintln!(
                "cleartap: {evicted} program starts reported without their result: more than {} awaited \
                 theirs at once",
                execs::MAX_PENDING
            );
        }
        Ok(())
    }
}

/// The first `len` bytes of a C char array (arguments are NUL-separated,
/// so this must not stop at the first NUL).
fn c_bytes_len(chars: &[i8], len: usize) -> Vec<u8> {
    chars[..len.min(chars.len())].iter().map(|&c| c as u8).collect()
}
