//! Attaches the files discovery finds (libraries mapped by processes,
//! executables with a TLS library linked in, `--lib` paths), each once, by
//! inode: a uprobe belongs to the file, so every process using it, now or
//! later, is covered by that one attachment.
//!
//! Finding and parsing files is `discovery`'s, on a thread of its own once
//! the capture runs; attaching stays here, on the thread that owns the BPF
//! skeleton: libbpf-rs programs (`ProgramMut`) and `Link`s are not `Send`.
//! The probed files are kept in `attached` (the table the executable
//! attacher keeps too), which detaches replaced ones.

use std::path::Path;

use anyhow::{Context, Result};

use super::attached::{AttachedFiles, FileLinks};
use super::discovery::{Discovery, Request, Worker};
use super::hold::{self, Holds};
use super::tls::TlsProbes;
use super::TlsTarget;
use crate::discover::procs::FileId;
use crate::events::FileEvent;

pub struct Attacher<'p, 'obj> {
    probes: &'p TlsProbes<'obj>,
    discovery: Discoverer,
    attached: AttachedFiles,
    /// The last library id given (0: none).
    next_id: u16,
    /// `--hold-unchecked`: processes stopped until their file is checked.
    holds: Option<Holds<'p>>,
}

/// Where files are found: here while cleartap starts (the scans finish
/// before `ready`), on the discovery thread once it runs.
enum Discoverer {
    Here(Discovery),
    Thread(Worker),
    /// Shutting down: nothing new is looked at.
    Stopped,
}

impl<'p, 'obj> Attacher<'p, 'obj> {
    pub fn new(probes: &'p TlsProbes<'obj>, discovery: Discovery) -> Self {
        Attacher {
            probes,
            discovery: Discoverer::Here(discovery),
            attached: AttachedFiles::default(),
            next_id: 0,
            holds: None,
        }
    }

    /// `--hold-unchecked`: the kernel stops processes at files not in
    /// `checked` and lists them in `held` (procwatch's maps); they are
    /// continued here.
    pub fn hold_unchecked(&mut self, checked: &'p dyn libbpf_rs::MapCore, held: &'p dyn libbpf_rs::MapCore) {
        self.holds = Some(Holds::new(checked, held));
    }

    /// Discovery while cleartap starts; None once it has its thread.
    fn here(&mut self) -> Option<&mut Discovery> {
        match &mut self.discovery {
            Discoverer::Here(d) => Some(d),
            _ => None,
        }
    }

    /// `--go-binary PATH`: must be a Go program using crypto/tls that
    /// cleartap can probe.
    pub fn attach_go_binary(&mut self, path: &Path) -> Result<TlsTarget> {
        let discovery = self.here().context("--go-binary after start")?;
        let mut target = discovery.go_binary(path)?;
        self.attach(&mut target).with_context(|| format!("--go-binary {}", path.display()))?;
        Ok(target)
    }

    /// `--lib PATH`: must define the functions of one selected source.
    pub fn attach_explicit(&mut self, path: &Path) -> Result<TlsTarget> {
        let discovery = self.here().context("--lib after start")?;
        let mut target = discovery.explicit(path)?;
        self.attach(&mut target).with_context(|| format!("--lib {}", path.display()))?;
        Ok(target)
    }

    /// Every process on the host: its mapped libraries and its executable.
    pub fn scan_host(&mut self) -> Vec<TlsTarget> {
        self.scan_here(Discovery::scan_host)
    }

    /// The TLS libraries in this host's library directories (see
    /// `Discovery::scan_library_dirs`).
    pub fn scan_library_dirs(&mut self) -> Vec<TlsTarget> {
        self.scan_here(Discovery::scan_library_dirs)
    }

    /// A scan at start, each file attached as soon as it is parsed (not
    /// all held open at once).
    fn scan_here(&mut self, scan: fn(&mut Discovery, &mut dyn FnMut(TlsTarget))) -> Vec<TlsTarget> {
        let Discoverer::Here(mut discovery) = std::mem::replace(&mut self.discovery, Discoverer::Stopped)
        else {
            return Vec::new();
        };
        let mut attached = Vec::new();
        scan(&mut discovery, &mut |t| attached.extend(self.attach_discovered(t)));
        self.discovery = Discoverer::Here(discovery);
        attached
    }

    /// From now on files are found on the discovery thread: what was seen
    /// at start goes with it.
    pub fn start_thread(&mut self) -> Result<()> {
        if let Discoverer::Here(discovery) = std::mem::replace(&mut self.discovery, Discoverer::Stopped) {
            self.discovery = Discoverer::Thread(Worker::start(discovery)?);
        }
        Ok(())
    }

    /// A process that just exec'd a file: its executable is looked at
    /// (its libraries arrive as library-open events). Never blocks.
    pub fn new_process(&mut self, exec: &FileEvent) {
        let path = String::from_utf8_lossy(exec.path).into_owned();
        self.request(exec, Request::Exec { pid: exec.pid, path })
    }

    /// A file a process opened, as it names it. Never blocks.
    pub fn library_opened(&mut self, open: &FileEvent) {
        let path = String::from_utf8_lossy(open.path).into_owned();
        self.request(open, Request::Library { pid: open.pid, path })
    }

    fn request(&mut self, event: &FileEvent, request: Request) {
        let number = match &mut self.discovery {
            Discoverer::Thread(worker) => worker.request(request),
            _ => None,
        };
        if event.held {
            match &mut self.holds {
                Some(holds) => holds.hold(event.pid, event.file, number),
                // Cannot be without --hold-unchecked; never leave one stopped.
                None => hold::continue_now(event.pid),
            }
        }
    }

    /// Has a message when the discovery thread finished a request: what
    /// it found is ready for `attach_found`, and the processes held for
    /// it can be continued.
    pub fn wakeup(&self) -> Option<crossbeam_channel::Receiver<()>> {
        match &self.discovery {
            Discoverer::Thread(worker) => Some(worker.wakeup()),
            _ => None,
        }
    }

    /// Attaches the files the discovery thread parsed since the last call.
    pub fn attach_found(&mut self) -> Vec<TlsTarget> {
        let (found, done) = match &self.discovery {
            // `done` first: what those requests found is then in `found`.
            Discoverer::Thread(worker) => {
                let done = worker.done();
                (worker.found(), done)
            }
            _ => return Vec::new(),
        };
        let attached = found.into_iter().filter_map(|t| self.attach_discovered(t)).collect();
        if let Some(holds) = &mut self.holds {
            holds.release_done(done);
        }
        attached
    }

    /// Processes held and continued so far, and those continued before
    /// their check finished (`--hold-unchecked`).
    pub fn hold_counts(&self) -> Option<(u64, u64)> {
        self.holds.as_ref().map(Holds::counts)
    }

    fn attach_discovered(&mut self, mut target: TlsTarget) -> Option<TlsTarget> {
        match self.attach(&mut target) {
            Ok(()) => Some(target),
            Err(e) => {
                crate::eprintln_escaped!("cleartap: warning: not capturing {}: {e:#}", target.display_path);
                None
            }
        }
    }

    /// Gives the file its id (the cookie its records carry), then probes it.
    fn attach(&mut self, target: &mut TlsTarget) -> Result<()> {
        self.next_id = self.next_id.checked_add(1).context("more than 65535 files probed")?;
        target.library_id = self.next_id;
        let links = self.probes.attach(target)?;
        self.attached.insert(FileLinks {
            id: target.id,
            path: target.path.clone(),
            display_path: target.display_path.clone(),
            links,
        });
        Ok(())
    }

    /// Detach from files that were replaced (a package upgrade renames a
    /// new file over the old name) or whose container is gone, once no
    /// process maps them any more (see `attached`); discovery may look at
    /// their inode again. Returns the names of the files detached.
    pub fn detach_unused(&mut self) -> Vec<String> {
        let detached = self.attached.detach_replaced();
        detached
            .into_iter()
            .map(|(id, name)| {
                self.forget(id);
                name
            })
            .collect()
    }

    /// Discovery may look at the file again (it was replaced).
    fn forget(&mut self, id: FileId) {
        match &mut self.discovery {
            Discoverer::Here(discovery) => discovery.forget(id),
            Discoverer::Thread(worker) => worker.forget(id),
            Discoverer::Stopped => {}
        }
    }

    /// Detach every uprobe (links close with their fds) and stop
    /// discovery, without waiting for a file it is parsing.
    pub fn detach_all(&mut self) {
        if let Some(holds) = &mut self.holds {
            holds.release_all();
        }
        self.discovery = Discoverer::Stopped;
        self.attached.clear();
    }
}
