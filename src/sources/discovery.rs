//! Which files to probe: the libraries and executables processes use, each
//! opened once and parsed into a `TlsTarget` ready to attach.
//!
//! At start this runs on the main thread, before `ready`. Afterwards it runs
//! on a thread of its own ([`Worker`]): opening and parsing a file named by
//! a process (up to the 512 MiB read budget of `discover::pinned`, Go's
//! pclntab, a disassembly) can take seconds, and on the thread that drains
//! the ring buffer that would let a hostile process blind the capture (the
//! ring buffer overflows while cleartap parses its file). That thread only
//! queues requests and attaches what comes back (see `attacher`).
//!
//! The state that decides whether a file is parsed (exclusions, files
//! already checked, per-user and per-namespace quotas) lives here, with the
//! parse: a file's identity is only known once it is opened, and the open
//! belongs on this side. The attacher only says which files to forget
//! when it detaches them ([`Worker::forget`]).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TrySendError};
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use super::{gotls, openssl, rustls, wanted_symbols, TlsSource, TlsTarget};
use crate::discover::elf::Symbols;
use crate::discover::ldpath;
use crate::discover::pinned::{self, PinnedFile};
use crate::discover::procs::{self, Executable, FileId};

pub struct Discovery {
    sources: Vec<&'static TlsSource>,
    /// Look for Go programs (crypto/tls) among executables.
    go: bool,
    /// Find where TLS secrets are read too (`--keylog`, `-w`).
    secrets: bool,
    excluded: HashSet<FileId>,
    /// Files already checked, attached or not: each is read once.
    seen: HashSet<FileId>,
    quota: FileQuota,
}

/// Files checked per user and per mount namespace: an unprivileged user
/// (or a container) making thousands of files named like TLS libraries, or
/// fresh executables, would otherwise make cleartap parse and probe each.
/// Root's processes and cleartap's own mount namespace have no limit of
/// their own (only the 65535 library ids of the whole capture).
#[derive(Default)]
struct FileQuota {
    per_uid: HashMap<u32, usize>,
    per_mount_ns: HashMap<u64, usize>,
    host_mount_ns: Option<u64>,
}

const MAX_FILES_PER_UID: usize = 256;
const MAX_FILES_PER_MOUNT_NS: usize = 256;

impl FileQuota {
    /// Counts one more file checked for `pid`'s user and mount namespace;
    /// false (with a warning, once per user or namespace) past a limit.
    fn admit(&mut self, pid: u32) -> bool {
        use std::os::unix::fs::MetadataExt;
        let uid = std::fs::metadata(format!("/proc/{pid}")).map(|m| m.uid()).ok();
        // The host, as far as cleartap is concerned: its own namespace.
        let host = *self.host_mount_ns.get_or_insert_with(|| mount_ns(std::process::id()).unwrap_or(0));
        let ns = mount_ns(pid).filter(|ns| *ns != host);
        if let Some(uid) = uid.filter(|uid| *uid != 0) {
            if !Self::count(&mut self.per_uid, uid, MAX_FILES_PER_UID, || format!("user {uid}")) {
                return false;
            }
        }
        match ns {
            Some(ns) => Self::count(&mut self.per_mount_ns, ns, MAX_FILES_PER_MOUNT_NS, || {
                format!("mount namespace {ns}")
            }),
            None => true,
        }
    }

    fn count<K: std::hash::Hash + Eq>(
        counts: &mut HashMap<K, usize>,
        key: K,
        max: usize,
        who: impl Fn() -> String,
    ) -> bool {
        let n = counts.entry(key).or_default();
        *n += 1;
        if *n == max + 1 {
            crate::note!(
                "cleartap: warning: {} made cleartap check {max} files named like TLS libraries or \
                 new executables; its further files are not checked or probed",
                who()
            );
        }
        *n <= max
    }
}

/// The open file belongs to root (fstat through its descriptor).
fn owned_by_root(file: &PinnedFile) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(file.proc_path()).is_ok_and(|m| m.uid() == 0)
}

/// The inode of `pid`'s mount namespace (`/proc/PID/ns/mnt`).
fn mount_ns(pid: u32) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}/ns/mnt")).ok().map(|m| m.ino())
}

impl Discovery {
    pub fn new(sources: Vec<&'static TlsSource>, go: bool, secrets: bool, exclude: &[PathBuf]) -> Self {
        let excluded = exclude.iter().filter_map(|p| FileId::of(p).ok()).collect();
        Discovery { sources, go, secrets, excluded, seen: HashSet::new(), quota: FileQuota::default() }
    }

    /// `--go-binary PATH`: must be a Go program using crypto/tls that
    /// cleartap can probe.
    pub fn go_binary(&mut self, path: &Path) -> Result<TlsTarget> {
        let context = || format!("--go-binary {}", path.display());
        let file = Rc::new(PinnedFile::open(path).with_context(context)?);
        let id = file.id();
        let Some(target) = gotls::resolve(file, path).with_context(context)? else {
            bail!("--go-binary {}: not a Go program using crypto/tls", path.display());
        };
        self.seen.insert(id);
        Ok(target)
    }

    /// `--lib PATH`: must define the functions of one selected source.
    pub fn explicit(&mut self, path: &Path) -> Result<TlsTarget> {
        let file = Rc::new(PinnedFile::open(path).with_context(|| format!("--lib {}", path.display()))?);
        let symbols =
            Symbols::of(&file, &wanted_symbols()).with_context(|| format!("--lib {}", path.display()))?;
        let mut errors = Vec::new();
        for source in self.sources.clone() {
            match TlsTarget::from_symbols(file.clone(), path, &symbols, source) {
                Ok(target) => {
                    self.seen.insert(file.id());
                    return Ok(target);
                }
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        // No symbols: BoringSSL or OpenSSL may still be found by its code.
        if self.wants(&openssl::SOURCE) {
            for find in [openssl::stripped_boringssl, openssl::stripped_openssl] {
                match find(file.clone(), path) {
                    Ok(Some(target)) => {
                        self.seen.insert(file.id());
                        return Ok(target);
                    }
                    Ok(None) => {}
                    Err(e) => errors.push(format!("{e:#}")),
                }
            }
        }
        bail!("--lib {}: {}", path.display(), errors.join("; "))
    }

    /// Every process on the host: its mapped libraries and its executable.
    pub fn scan_host(&mut self, found: &mut dyn FnMut(TlsTarget)) {
        let mut pids = procs::all_pids();
        pids.sort();
        for pid in pids.into_iter().filter(|&pid| pid != std::process::id()) {
            self.scan_process(pid).into_iter().for_each(&mut *found);
        }
    }

    /// The TLS libraries in this host's library directories, probed before
    /// any process maps them. A uprobe on a file covers every later mapping
    /// of it, so the first TLS call of a program that loads one is seen;
    /// attaching when the open is reported races with that call (a program
    /// can finish a handshake in the few ms the attach takes). Libraries in
    /// other mount namespaces and outside these directories are still found
    /// when a process opens them, with that race.
    pub fn scan_library_dirs(&mut self, found: &mut dyn FnMut(TlsTarget)) {
        for dir in ldpath::host_dirs() {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            // Regular files before symbolic links, so that a library is
            // known by its own name (as processes' maps name it), not by
            // the development link `libssl.so`.
            let mut names: Vec<(bool, String)> = entries
                .flatten()
                .filter_map(|e| {
                    let name = e.file_name().into_string().ok()?;
                    let is_link = e.file_type().ok()?.is_symlink();
                    Some((is_link, name))
                })
                .filter(|(_, name)| self.sources.iter().any(|s| s.is_library_path(name)))
                .collect();
            names.sort();
            for (_, name) in names {
                let path = format!("{}/{name}", dir.trim_end_matches('/'));
                self.consider_host_library(&path).into_iter().for_each(&mut *found);
            }
        }
    }

    /// A library file on this host found by its directory, not by a process.
    fn consider_host_library(&mut self, path: &str) -> Option<TlsTarget> {
        let source = *self.sources.iter().find(|s| s.is_library_path(path))?;
        let file = PinnedFile::open_beneath(Path::new("/"), path).ok()?;
        // Root's files only: these directories are root's, but some are
        // shared with a group (/usr/local/lib is writable by `staff` on
        // Debian), and a user's files must not be parsed and probed ahead
        // of use without the per-user quota. Found when a process opens
        // them, they are.
        if !owned_by_root(&file) {
            return None;
        }
        self.unseen(file.id())?;
        // Named as the kernel names the open file (symbolic links in the
        // directories resolved), which is how processes' maps name it.
        let display_path = std::fs::read_link(file.proc_path())
            .ok()
            .and_then(|p| p.into_os_string().into_string().ok())
            .unwrap_or_else(|| path.to_string());
        match TlsTarget::resolve(Rc::new(file), Path::new(&display_path), source) {
            Ok(target) => Some(self.ready(TlsTarget { display_path, ..target })),
            Err(e) => {
                crate::eprintln_escaped!("cleartap: warning: skipping {path}: {e:#}");
                None
            }
        }
    }

    /// A process that just exec'd `exe_path`: its executable (its libraries
    /// arrive as library-open events).
    pub fn new_process(&mut self, pid: u32, exe_path: &str) -> Option<TlsTarget> {
        self.consider_executable(pid, Some(exe_path))
    }

    fn scan_process(&mut self, pid: u32) -> Vec<TlsTarget> {
        let mut found = Vec::new();
        found.extend(self.consider_executable(pid, None));
        let mut paths: Vec<String> = procs::mappings(pid).into_iter().map(|m| m.path).collect();
        paths.dedup();
        for path in paths {
            found.extend(self.library(pid, &path));
        }
        found
    }

    /// A file `pid` opened (or maps) under the name `path`, as it sees it.
    /// It is opened once, inside the process's root (see
    /// `discover::pinned`), and that open file is what is parsed and
    /// probed; once the process is gone, the same name on this host.
    pub fn library(&mut self, pid: u32, path: &str) -> Option<TlsTarget> {
        let source = *self.sources.iter().find(|s| s.is_library_path(path))?;
        pinned::test_delay(Path::new(path));
        let file = match PinnedFile::open_in_root(pid, path) {
            Ok(file) => file,
            // The process is gone: its absolute name on this host, most
            // likely the same file (parsed and probed as opened, whatever it is).
            Err(_) if path.starts_with('/') && !Path::new(&format!("/proc/{pid}")).exists() => {
                PinnedFile::open_beneath(Path::new("/"), path).ok()?
            }
            Err(e) => {
                crate::eprintln_escaped!("cleartap: warning: skipping {path} (pid {pid}): {e:#}");
                return None;
            }
        };
        self.unseen(file.id())?;
        if !self.quota.admit(pid) {
            return None;
        }
        // The name checked later to notice a replacement: one that reaches
        // the same file after the process is gone, if there is one.
        let (via, plain) = if path.starts_with('/') {
            (procs::host_path(pid, path), Some(path))
        } else {
            (PathBuf::from(format!("/proc/{pid}/cwd/{path}")), None)
        };
        let host_path = procs::reachable(via.clone(), plain).map_or(via, |(p, _)| p);
        match TlsTarget::resolve(Rc::new(file), &host_path, source) {
            Ok(target) => Some(self.ready(TlsTarget { display_path: path.to_string(), ..target })),
            Err(e) => {
                crate::eprintln_escaped!("cleartap: warning: skipping {path} (pid {pid}): {e:#}");
                None
            }
        }
    }

    /// An executable with OpenSSL/BoringSSL linked in (node, for one).
    /// `exec_path` is the name it was exec'd under, for when the process
    /// has already exited.
    fn consider_executable(&mut self, pid: u32, exec_path: Option<&str>) -> Option<TlsTarget> {
        if let Some(path) = exec_path {
            pinned::test_delay(Path::new(path));
        }
        let exe = procs::executable(pid, exec_path)?;
        self.unseen(exe.id)?;
        if !self.quota.admit(pid) {
            return None;
        }
        let file = match exe.open() {
            Ok(file) => Rc::new(file),
            Err(e) => {
                crate::eprintln_escaped!("cleartap: warning: not capturing {}: {e:#}", exe.display_path);
                return None;
            }
        };
        let target = self
            .linked_openssl(&file, &exe)
            .or_else(|| self.rustls_program(&file, &exe))
            .or_else(|| self.go_program(file.clone(), &exe))
            // Last: they scan the data of every stripped executable,
            // which would delay a stripped Go program's probes.
            .or_else(|| self.stripped_boringssl(&file, &exe))
            .or_else(|| self.stripped_openssl(&file, &exe))?;
        Some(self.ready(TlsTarget { display_path: exe.display_path, ..target }))
    }

    fn linked_openssl(&self, file: &Rc<PinnedFile>, exe: &Executable) -> Option<TlsTarget> {
        if !self.wants(&openssl::SOURCE) {
            return None;
        }
        let symbols = Symbols::of(file, &wanted_symbols()).ok()?;
        TlsTarget::from_symbols(file.clone(), &exe.path, &symbols, &openssl::SOURCE).ok()
    }

    /// An executable with BoringSSL linked in and no symbol table (see
    /// `discover::boringssl`); one where its functions cannot be found with
    /// certainty gets a warning that says why, and no probe.
    fn stripped_boringssl(&self, file: &Rc<PinnedFile>, exe: &Executable) -> Option<TlsTarget> {
        if !self.wants(&openssl::SOURCE) {
            return None;
        }
        warn_unprobed("BoringSSL in", exe, openssl::stripped_boringssl(file.clone(), &exe.path))
    }

    /// An executable with OpenSSL 3 linked in and no symbol table (see
    /// `discover::openssl_stripped`), as [`Self::stripped_boringssl`].
    fn stripped_openssl(&self, file: &Rc<PinnedFile>, exe: &Executable) -> Option<TlsTarget> {
        if !self.wants(&openssl::SOURCE) {
            return None;
        }
        warn_unprobed("OpenSSL in", exe, openssl::stripped_openssl(file.clone(), &exe.path))
    }

    /// An executable with rustls linked in: found by its symbols (see
    /// `sources::rustls`); one that has rustls but cannot be probed
    /// (stripped, LTO) gets a warning that says why.
    fn rustls_program(&self, file: &Rc<PinnedFile>, exe: &Executable) -> Option<TlsTarget> {
        if !self.wants(&rustls::SOURCE) {
            return None;
        }
        warn_unprobed("rustls in", exe, rustls::resolve(file.clone(), &exe.path))
    }

    fn go_program(&self, file: Rc<PinnedFile>, exe: &Executable) -> Option<TlsTarget> {
        if !self.go {
            return None;
        }
        warn_unprobed("Go program", exe, gotls::resolve(file, &exe.path))
    }

    /// Whether `source` was asked for (`--library`).
    fn wants(&self, source: &TlsSource) -> bool {
        self.sources.iter().any(|s| s.name == source.name)
    }

    /// The last of the parse: where secrets are read, when they are wanted.
    fn ready(&self, mut target: TlsTarget) -> TlsTarget {
        if self.secrets {
            target.find_secret_points();
        }
        target
    }

    /// Some(()) if the file is not excluded and not yet checked (marking
    /// it checked).
    fn unseen(&mut self, id: FileId) -> Option<()> {
        (!self.excluded.contains(&id) && self.seen.insert(id)).then_some(())
    }

    /// The file was detached: check it again if it shows up again.
    pub fn forget(&mut self, id: FileId) {
        self.seen.remove(&id);
    }
}

/// A finder's answer for `exe`: the target it found, if any; where the
/// library is there but cannot be probed, a warning that says why (`what`:
/// "rustls in", "Go program") and no target.
fn warn_unprobed(what: &str, exe: &Executable, found: Result<Option<TlsTarget>>) -> Option<TlsTarget> {
    found.unwrap_or_else(|e| {
        crate::eprintln_escaped!("cleartap: warning: not capturing {what} {}: {e:#}", exe.display_path);
        None
    })
}

/// What the ring buffer thread asks the discovery thread to look at.
pub enum Request {
    /// A process exec'd this path.
    Exec { pid: u32, path: String },
    /// A process opened this path, named like a TLS library.
    Library { pid: u32, path: String },
}

/// Requests waiting for the discovery thread: past this many (it is stuck
/// on a slow file, or a process floods exec events) new ones are dropped
/// rather than block the ring buffer thread.
const MAX_QUEUED: usize = 4096;
/// Parsed files waiting to be attached: each holds its file's descriptor
/// and what was read of it, so the discovery thread waits beyond this.
const MAX_FOUND: usize = 4;

/// The discovery thread, seen from the thread that attaches. Dropping it
/// stops the thread without waiting for it: one stuck on a slow file stops
/// after that file (its results have nowhere to go), and the process may
/// end before that.
pub struct Worker {
    requests: SyncSender<Request>,
    /// Files detached: unbounded (one per detach), so never dropped.
    forget: Sender<FileId>,
    found: Receiver<TlsTarget<PinnedFile>>,
    stop: Arc<AtomicBool>,
    /// Requests queued, and those the thread has finished (found or not).
    sent: u64,
    done: Arc<AtomicU64>,
    /// Requests not queued (queue full, or the thread gone).
    dropped: u64,
    /// Has a message once a request is finished (see `wakeup`).
    finished: crossbeam_channel::Receiver<()>,
}

impl Worker {
    /// Moves `discovery` (and what it has seen so far) to a thread of its own.
    pub fn start(discovery: Discovery) -> Result<Worker> {
        let (requests, queued) = mpsc::sync_channel(MAX_QUEUED);
        let (forget, forgotten) = mpsc::channel();
        let (found_tx, found) = mpsc::sync_channel(MAX_FOUND);
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        // One pending message is enough: it wakes the attaching thread,
        // which then takes every file found so far.
        let (finished_tx, finished) = crossbeam_channel::bounded(1);
        let progress = Progress { stop: Arc::clone(&stop), done: Arc::clone(&done), finished: finished_tx };
        std::thread::Builder::new()
            .name("discovery".into())
            .spawn(move || serve(discovery, queued, forgotten, found_tx, progress))
            .context("starting the discovery thread")?;
        Ok(Worker { requests, forget, found, stop, sent: 0, done, dropped: 0, finished })
    }

    /// Queues `request`; never blocks. Its number (counting from 1), which
    /// `done` reaches once it is finished; None if it was dropped.
    pub fn request(&mut self, request: Request) -> Option<u64> {
        let why = match self.requests.try_send(request) {
            Ok(()) => {
                self.sent += 1;
                return Some(self.sent);
            }
            Err(TrySendError::Full(_)) => {
                "the discovery queue is full (a file slow to open or parse holds it)"
            }
            Err(TrySendError::Disconnected(_)) => "the discovery thread has failed",
        };
        self.dropped += 1;
        if self.dropped == 1 {
            crate::note!(
                "cleartap: warning: a new process or library was not checked for TLS: {why}; \
                 such misses are counted at the end"
            );
        }
        None
    }

    /// Requests finished, in the order they were queued (one thread takes
    /// them in turn): request n is finished once this is n or more, and
    /// what it found was sent before, so it is in the next `found`.
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Acquire)
    }

    /// Has a message each time requests were finished since the last
    /// one was taken: the files they found are ready to attach.
    pub fn wakeup(&self) -> crossbeam_channel::Receiver<()> {
        self.finished.clone()
    }

    pub fn forget(&self, id: FileId) {
        let _ = self.forget.send(id);
    }

    /// The files parsed since the last call, ready to attach.
    pub fn found(&self) -> Vec<TlsTarget> {
        self.found.try_iter().map(TlsTarget::into_local).collect()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if self.dropped > 0 {
            crate::note!(
                "cleartap: warning: {} new processes or libraries were not checked for TLS (see the first \
                 warning about it)",
                self.dropped
            );
        }
    }
}

/// What the discovery thread shares with its `Worker`.
struct Progress {
    /// Set when the Worker is dropped.
    stop: Arc<AtomicBool>,
    /// Requests finished, found or not.
    done: Arc<AtomicU64>,
    /// Told after each (see `Worker::wakeup`).
    finished: crossbeam_channel::Sender<()>,
}

/// The discovery thread: each request in turn, until the `Worker` is
/// dropped (checked between files: one being parsed is finished first).
fn serve(
    mut discovery: Discovery,
    queued: Receiver<Request>,
    forgotten: Receiver<FileId>,
    found: SyncSender<TlsTarget<PinnedFile>>,
    progress: Progress,
) {
    for request in queued {
        if progress.stop.load(Ordering::Relaxed) {
            return;
        }
        // Forgotten before the request was sent: seen by now.
        forgotten.try_iter().for_each(|id| discovery.forget(id));
        let target = match request {
            Request::Exec { pid, path } => discovery.new_process(pid, &path),
            Request::Library { pid, path } => discovery.library(pid, &path),
        };
        // A parsed target is its file's only holder: into_sendable gives it.
        // Sent before it counts as done, so `busy` holds until it can be
        // taken. The send fails once the Worker is dropped: nobody attaches
        // any more.
        if let Some(target) = target.and_then(TlsTarget::into_sendable) {
            if found.send(target).is_err() {
                return;
            }
        }
        progress.done.fetch_add(1, Ordering::Release);
        let _ = progress.finished.try_send(());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_per_user_and_namespace_are_capped_with_one_warning() {
        let mut counts = HashMap::new();
        let admitted =
            (0..300).filter(|_| FileQuota::count(&mut counts, 7u32, 256, || "user 7".into())).count();
        assert_eq!(admitted, 256);
        assert!(FileQuota::count(&mut counts, 8u32, 256, || "user 8".into()), "another user has its own");
        // This process (root, the host's namespace in the tests): no limit.
        let mut quota = FileQuota::default();
        assert!((0..1000).all(|_| quota.admit(std::process::id())));
        assert!(mount_ns(std::process::id()).is_some());
    }
}
