//! Attaching to programs by their executable (shells, database servers):
//! each file once, whether found among running processes at start or at a
//! later exec. The source says which executables it wants and how to
//! attach to one. The probed files are kept in `attached` (the table the
//! TLS attacher keeps too), which detaches replaced ones.

use std::collections::HashSet;

use anyhow::Result;
use libbpf_rs::Link;

use super::attached::{AttachedFiles, FileLinks};
use crate::discover::procs::{self, Executable, FileId};

/// Attaches to an executable: what it found there, and the probes of each
/// file it attached (the executable's, and a library's it probes for it,
/// such as libreadline.so). It is told which files are attached already.
type AttachFn<'a, T, L> =
    Box<dyn FnMut(&Executable, &AttachedFiles<L>) -> Result<(T, Vec<FileLinks<L>>)> + 'a>;

pub struct ExecutableAttacher<'a, T, L = Vec<Link>> {
    /// Does this executable path (as the process sees it) belong to the source?
    wanted: Box<dyn Fn(&str) -> bool + 'a>,
    attach: AttachFn<'a, T, L>,
    /// Executables looked at (attached, or reported as not attachable).
    seen: HashSet<FileId>,
    attached: AttachedFiles<L>,
}

impl<'a, T, L> ExecutableAttacher<'a, T, L> {
    pub fn new(
        wanted: impl Fn(&str) -> bool + 'a,
        attach: impl FnMut(&Executable, &AttachedFiles<L>) -> Result<(T, Vec<FileLinks<L>>)> + 'a,
    ) -> Self {
        ExecutableAttacher {
            wanted: Box::new(wanted),
            attach: Box::new(attach),
            seen: HashSet::new(),
            attached: AttachedFiles::default(),
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
        match (self.attach)(&exe, &self.attached) {
            Ok((found, files)) => {
                files.into_iter().for_each(|f| self.attached.insert(f));
                Some(found)
            }
            Err(e) => {
                crate::eprintln_escaped!("cleartap: warning: not capturing {}: {e:#}", exe.display_path);
                None
            }
        }
    }

    /// Detach from files that were replaced (a new bash or mysqld renamed
    /// over the old one) or removed, once no process maps them (see
    /// `attached`); an executable with that inode may be attached again.
    /// Returns the names of the files detached.
    pub fn detach_replaced(&mut self) -> Vec<String> {
        let detached = self.attached.detach_replaced();
        self.forget(detached)
    }

    /// Files detached: their executables may be looked at again.
    fn forget(&mut self, detached: Vec<(FileId, String)>) -> Vec<String> {
        detached
            .into_iter()
            .map(|(id, name)| {
                self.seen.remove(&id);
                name
            })
            .collect()
    }

    /// Detach everything (links close with their fds).
    pub fn detach_all(&mut self) {
        self.attached.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};
    use std::rc::Rc;
    use std::time::Instant;

    use super::super::attached::tests::{replace, Tracked};
    use super::super::attached::SWEEP_INTERVAL;
    use super::*;

    #[test]
    fn a_replaced_executable_is_detached_and_its_successor_attached() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mysqld");
        std::fs::write(&path, b"old").unwrap();
        let name = path.display().to_string();
        // Each attachment's flag: set when its links are dropped.
        let attachments: Rc<RefCell<Vec<Rc<Cell<bool>>>>> = Rc::default();
        let made = attachments.clone();
        let mut attacher = ExecutableAttacher::new(
            |p: &str| p.ends_with("/mysqld"),
            move |exe: &Executable, _: &AttachedFiles<Tracked>| {
                let dropped = Rc::new(Cell::new(false));
                made.borrow_mut().push(dropped.clone());
                let (path, display_path) = (exe.path.clone(), exe.display_path.clone());
                Ok((exe.id, vec![FileLinks { id: exe.id, path, display_path, links: Tracked(dropped) }]))
            },
        );
        let old = attacher.scan_paths(std::slice::from_ref(&name));
        assert_eq!(old.len(), 1);
        assert!(attacher.scan_paths(std::slice::from_ref(&name)).is_empty(), "each file once");

        replace(&path);
        // Nothing maps a file in a temporary directory: the first sweep
        // detaches it.
        let swept = attacher.attached.sweep(Instant::now() + SWEEP_INTERVAL, Default::default);
        assert_eq!(attacher.forget(swept), std::slice::from_ref(&name));
        assert!(attachments.borrow()[0].get(), "the old file's probes are detached");

        let new = attacher.scan_paths(std::slice::from_ref(&name));
        assert_eq!(new.len(), 1, "the new file is attached");
        assert_ne!(new[0], old[0]);
        assert!(!attachments.borrow()[1].get());
    }
}
