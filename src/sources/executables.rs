//! Attaching to programs by their executable (shells, database servers):
//! each file once, whether found among running processes at start or at a
//! later exec. The source says which executables it wants and how to
//! attach to one.

use std::collections::HashSet;

use anyhow::Result;
use libbpf_rs::Link;

use crate::discover::procs::{self, Executable, FileId};

type AttachFn<'a, T> = Box<dyn FnMut(&Executable) -> Result<(T, Vec<Link>)> + 'a>;

pub struct ExecutableAttacher<'a, T> {
    /// Does this executable path (as the process sees it) belong to the source?
    wanted: Box<dyn Fn(&str) -> bool + 'a>,
    attach: AttachFn<'a, T>,
    seen: HashSet<FileId>,
    links: Vec<Link>,
}

impl<'a, T> ExecutableAttacher<'a, T> {
    pub fn new(
        wanted: impl Fn(&str) -> bool + 'a,
        attach: impl FnMut(&Executable) -> Result<(T, Vec<Link>)> + 'a,
    ) -> Self {
        ExecutableAttacher {
            wanted: Box::new(wanted),
            attach: Box::new(attach),
            seen: HashSet::new(),
            links: Vec::new(),
        }
    }

    pub fn scan_host(&mut self) -> Vec<T> {
        procs::all_pids().into_iter().filter_map(|pid| self.consider(pid, None)).collect()
    }

    /// Executables named by path (a shell listed in /etc/shells), attached
    /// before any process runs them, so even their first process is seen
    /// from its start.
    pub fn scan_paths(&mut self, paths: &[String]) -> Vec<T> {
        paths.iter().filter_map(|p| procs::executable_at(p)).filter_map(|exe| self.offer(exe)).collect()
    }

    /// The executable of `pid` (exec'd as `exec_path`, for when the
    /// process is already gone), if the source wants it and it is not
    /// attached yet. A file that cannot be attached is reported once,
    /// naming it and why.
    pub fn consider(&mut self, pid: u32, exec_path: Option<&str>) -> Option<T> {
        self.offer(procs::executable(pid, exec_path)?)
    }

    fn offer(&mut self, exe: Executable) -> Option<T> {
        if !(self.wanted)(&exe.display_path) || !self.seen.insert(exe.id) {
            return None;
        }
        match (self.attach)(&exe) {
            Ok((found, links)) => {
                self.links.extend(links);
                Some(found)
            }
            Err(e) => {
                crate::eprintln_escaped!("cleartap: warning: not capturing {}: {e:#}", exe.display_path);
                None
            }
        }
    }

    /// Detach everything (links close with their fds).
    pub fn detach_all(&mut self) {
        self.links.clear();
    }
}
