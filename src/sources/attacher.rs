//! Finds the files to probe (libraries mapped by processes, executables
//! with a TLS library linked in, `--lib` paths) and attaches each file once,
//! by inode: a uprobe belongs to the file, so every process using it, now
//! or later, is covered by that one attachment.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use libbpf_rs::Link;

use super::tls::TlsProbes;
use super::{gotls, openssl, wanted_symbols, TlsSource, TlsTarget};
use crate::discover::elf::Symbols;
use crate::discover::ldpath;
use crate::discover::pinned::PinnedFile;
use crate::discover::procs::{self, Executable, FileId};

pub struct Attacher<'p, 'obj> {
    probes: &'p TlsProbes<'obj>,
    sources: Vec<&'static TlsSource>,
    /// Look for Go programs (crypto/tls) among executables.
    go: bool,
    excluded: HashSet<FileId>,
    /// Files already checked, attached or not: each is read once.
    seen: HashSet<FileId>,
    attached: HashMap<FileId, AttachedFile>,
    /// When attached files were last checked for replacement.
    last_sweep: Instant,
    /// The last library id given (0: none).
    next_id: u16,
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
            eprintln!(
                "cleartap: warning: {} made cleartap check {max} files named like TLS libraries or \
                 new executables; its further files are not checked or probed",
                who()
            );
        }
        *n <= max
    }
}

/// The inode of `pid`'s mount namespace (`/proc/PID/ns/mnt`).
fn mount_ns(pid: u32) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}/ns/mnt")).ok().map(|m| m.ino())
}

/// One probed file and its uprobe links.
struct AttachedFile {
    /// Where cleartap opened it, and the name shown.
    path: PathBuf,
    display_path: String,
    /// Held for their Drop, which detaches the probes.
    _links: Vec<Link>,
    /// A replaced file still mapped by some process is checked again at
    /// `next_check`, each time twice as late (up to MAX_RECHECK).
    next_check: Instant,
    recheck: Duration,
}

const SWEEP_INTERVAL: Duration = Duration::from_secs(2);
const MAX_RECHECK: Duration = Duration::from_secs(64);

impl<'p, 'obj> Attacher<'p, 'obj> {
    pub fn new(
        probes: &'p TlsProbes<'obj>,
        sources: Vec<&'static TlsSource>,
        go: bool,
        exclude: &[PathBuf],
    ) -> Self {
        let excluded = exclude.iter().filter_map(|p| FileId::of(p).ok()).collect();
        Attacher {
            probes,
            sources,
            go,
            excluded,
            seen: HashSet::new(),
            attached: HashMap::new(),
            last_sweep: Instant::now(),
            next_id: 0,
            quota: FileQuota::default(),
        }
    }

    /// `--go-binary PATH`: must be a Go program using crypto/tls that
    /// cleartap can probe.
    pub fn attach_go_binary(&mut self, path: &Path) -> Result<TlsTarget> {
        let context = || format!("--go-binary {}", path.display());
        let file = Rc::new(PinnedFile::open(path).with_context(context)?);
        let id = file.id();
        let Some(mut target) = gotls::resolve(file, path).with_context(context)? else {
            bail!("--go-binary {}: not a Go program using crypto/tls", path.display());
        };
        self.seen.insert(id);
        self.attach(&mut target).with_context(context)?;
        Ok(target)
    }

    /// `--lib PATH`: must define the functions of one selected source.
    pub fn attach_explicit(&mut self, path: &Path) -> Result<TlsTarget> {
        let file = Rc::new(PinnedFile::open(path).with_context(|| format!("--lib {}", path.display()))?);
        let symbols =
            Symbols::of(&file, &wanted_symbols()).with_context(|| format!("--lib {}", path.display()))?;
        let mut errors = Vec::new();
        for source in self.sources.clone() {
            match TlsTarget::from_symbols(file.clone(), path, &symbols, source) {
                Ok(mut target) => {
                    self.seen.insert(file.id());
                    self.attach(&mut target).with_context(|| format!("--lib {}", path.display()))?;
                    return Ok(target);
                }
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        bail!("--lib {}: {}", path.display(), errors.join("; "))
    }

    /// Every process on the host: its mapped libraries and its executable.
    pub fn scan_host(&mut self) -> Vec<TlsTarget> {
        let mut pids = procs::all_pids();
        pids.sort();
        pids.into_iter()
            .filter(|&pid| pid != std::process::id())
            .flat_map(|pid| self.scan_process(pid))
            .collect()
    }

    /// The TLS libraries in this host's library directories, probed before
    /// any process maps them. A uprobe on a file covers every later mapping
    /// of it, so the first TLS call of a program that loads one is seen;
    /// attaching when the open is reported races with that call (a program
    /// can finish a handshake in the few ms the attach takes). Libraries in
    /// other mount namespaces and outside these directories are still found
    /// when a process opens them, with that race.
    pub fn scan_library_dirs(&mut self) -> Vec<TlsTarget> {
        let mut found = Vec::new();
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
                found.extend(self.consider_host_library(&format!("{}/{name}", dir.trim_end_matches('/'))));
            }
        }
        found
    }

    /// A library file on this host found by its directory, not by a process.
    fn consider_host_library(&mut self, path: &str) -> Option<TlsTarget> {
        let source = *self.sources.iter().find(|s| s.is_library_path(path))?;
        let file = PinnedFile::open_beneath(Path::new("/"), path).ok()?;
        self.unseen(file.id())?;
        // Named as the kernel names the open file (symbolic links in the
        // directories resolved), which is how processes' maps name it.
        let display_path = std::fs::read_link(file.proc_path())
            .ok()
            .and_then(|p| p.into_os_string().into_string().ok())
            .unwrap_or_else(|| path.to_string());
        match TlsTarget::resolve(Rc::new(file), Path::new(&display_path), source) {
            Ok(target) => self.attach_discovered(TlsTarget { display_path, ..target }),
            Err(e) => {
                crate::eprintln_escaped!("cleartap: warning: skipping {path}: {e:#}");
                None
            }
        }
    }

    /// A process that just exec'd `exe_path`: its executable (its libraries
    /// arrive as library-open events).
    pub fn scan_new_process(&mut self, pid: u32, exe_path: &str) -> Vec<TlsTarget> {
        self.consider_executable(pid, Some(exe_path)).into_iter().collect()
    }

    pub fn scan_process(&mut self, pid: u32) -> Vec<TlsTarget> {
        let mut found = Vec::new();
        found.extend(self.consider_executable(pid, None));
        let mut paths: Vec<String> = procs::mappings(pid).into_iter().map(|m| m.path).collect();
        paths.dedup();
        for path in paths {
            found.extend(self.consider_library(pid, &path));
        }
        found
    }

    /// A file `pid` opened (or maps) under the name `path`, as it sees it.
    /// It is opened once, inside the process's root (see
    /// `discover::pinned`), and that open file is what is parsed and
    /// probed; once the process is gone, the same name on this host.
    pub fn consider_library(&mut self, pid: u32, path: &str) -> Option<TlsTarget> {
        let source = *self.sources.iter().find(|s| s.is_library_path(path))?;
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
            Ok(target) => self.attach_discovered(TlsTarget { display_path: path.to_string(), ..target }),
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
        let target = self.linked_openssl(&file, &exe).or_else(|| self.go_program(file, &exe))?;
        self.attach_discovered(TlsTarget { display_path: exe.display_path, ..target })
    }

    fn linked_openssl(&self, file: &Rc<PinnedFile>, exe: &Executable) -> Option<TlsTarget> {
        if !self.sources.iter().any(|s| s.name == openssl::SOURCE.name) {
            return None;
        }
        let symbols = Symbols::of(file, &wanted_symbols()).ok()?;
        TlsTarget::from_symbols(file.clone(), &exe.path, &symbols, &openssl::SOURCE).ok()
    }

    fn go_program(&self, file: Rc<PinnedFile>, exe: &Executable) -> Option<TlsTarget> {
        if !self.go {
            return None;
        }
        match gotls::resolve(file, &exe.path) {
            Ok(target) => target,
            Err(e) => {
                crate::eprintln_escaped!(
                    "cleartap: warning: not capturing Go program {}: {e:#}",
                    exe.display_path
                );
                None
            }
        }
    }

    /// Some(()) if the file is not excluded and not yet checked (marking
    /// it checked).
    fn unseen(&mut self, id: FileId) -> Option<()> {
        (!self.excluded.contains(&id) && self.seen.insert(id)).then_some(())
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
        self.attached.insert(
            target.id,
            AttachedFile {
                path: target.path.clone(),
                display_path: target.display_path.clone(),
                _links: links,
                next_check: Instant::now(),
                recheck: SWEEP_INTERVAL,
            },
        );
        Ok(())
    }

    /// Detach from files that were replaced (a package upgrade renames a
    /// new file over the old name) or whose container is gone, once no
    /// process maps them any more: a uprobe pins its file, and its inode
    /// number could otherwise never be reused for a file we would probe.
    /// Cheap when nothing was replaced (a stat per file every 2 s); a scan
    /// of every process's mappings only while a replaced file is attached.
    /// Returns the names of the files detached.
    pub fn detach_unused(&mut self) -> Vec<String> {
        let now = Instant::now();
        if now.duration_since(self.last_sweep) < SWEEP_INTERVAL {
            return Vec::new();
        }
        self.last_sweep = now;
        let replaced: Vec<FileId> = self
            .attached
            .iter()
            .filter(|(id, f)| f.next_check <= now && FileId::of(&f.path).ok() != Some(**id))
            .map(|(id, _)| *id)
            .collect();
        if replaced.is_empty() {
            return Vec::new();
        }
        let mapped = procs::mapped_inodes();
        let mut detached = Vec::new();
        for id in replaced {
            // By inode number alone: a false match keeps a probe a while
            // longer, never drops one still in use.
            if mapped.contains(&id.ino) {
                let file = self.attached.get_mut(&id).expect("listed above");
                file.recheck = (file.recheck * 2).min(MAX_RECHECK);
                file.next_check = now + file.recheck;
            } else if let Some(file) = self.attached.remove(&id) {
                self.seen.remove(&id);
                detached.push(file.display_path);
            }
        }
        detached
    }

    /// Detach every uprobe (links close with their fds).
    pub fn detach_all(&mut self) {
        self.attached.clear();
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
