//! The files cleartap probes, each once by device and inode, and their
//! uprobe links: the one table both attachers keep (`attacher`: TLS
//! libraries and executables; `executables`: shells and database servers).
//!
//! A uprobe pins its file. A file replaced under its name (a package
//! upgrade renames the new bash, libssl or mysqld over the old one) or
//! whose container is gone keeps its probes, and its inode, for as long as
//! they are attached: so once no process maps it any more, it is detached,
//! and its attacher may look at a file with that inode number again.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use libbpf_rs::Link;

use crate::discover::procs::{self, FileId};

/// One file's probes, as an attach function made them. `L` is what keeps
/// them attached (links, detached on drop).
pub struct FileLinks<L = Vec<Link>> {
    pub id: FileId,
    /// Where cleartap reaches the file: checked for replacement.
    pub path: PathBuf,
    /// The name shown.
    pub display_path: String,
    pub links: L,
}

struct AttachedFile<L> {
    path: PathBuf,
    display_path: String,
    /// Held for their Drop, which detaches the probes.
    _links: L,
    /// A replaced file still mapped by some process is checked again at
    /// `next_check`, each time twice as late (up to MAX_RECHECK).
    next_check: Instant,
    recheck: Duration,
}

pub const SWEEP_INTERVAL: Duration = Duration::from_secs(2);
const MAX_RECHECK: Duration = Duration::from_secs(64);

/// The probed files, by `FileId`.
pub struct AttachedFiles<L = Vec<Link>> {
    files: HashMap<FileId, AttachedFile<L>>,
    /// When the files were last checked for replacement.
    last_sweep: Instant,
}

impl<L> Default for AttachedFiles<L> {
    fn default() -> Self {
        AttachedFiles { files: HashMap::new(), last_sweep: Instant::now() }
    }
}

impl<L> AttachedFiles<L> {
    pub fn insert(&mut self, file: FileLinks<L>) {
        let attached = AttachedFile {
            path: file.path,
            display_path: file.display_path,
            _links: file.links,
            next_check: Instant::now(),
            recheck: SWEEP_INTERVAL,
        };
        self.files.insert(file.id, attached);
    }

    pub fn contains(&self, id: &FileId) -> bool {
        self.files.contains_key(id)
    }

    /// Detach everything (links close with their fds).
    pub fn clear(&mut self) {
        self.files.clear();
    }

    /// Detach from files that were replaced, or whose container is gone,
    /// once no process maps them any more. Cheap when nothing was replaced
    /// (a stat per file every 2 s); a scan of every process's mappings only
    /// while a replaced file is attached. Returns the files detached.
    pub fn detach_replaced(&mut self) -> Vec<(FileId, String)> {
        self.sweep(Instant::now(), procs::mapped_inodes)
    }

    /// `detach_replaced` at `now`, with `mapped` listing the inode numbers
    /// of the files processes map.
    pub(super) fn sweep(
        &mut self,
        now: Instant,
        mapped: impl FnOnce() -> HashSet<u64>,
    ) -> Vec<(FileId, String)> {
        if now.duration_since(self.last_sweep) < SWEEP_INTERVAL {
            return Vec::new();
        }
        self.last_sweep = now;
        let replaced: Vec<FileId> = self
            .files
            .iter()
            .filter(|(id, f)| f.next_check <= now && FileId::of(&f.path).ok() != Some(**id))
            .map(|(id, _)| *id)
            .collect();
        if replaced.is_empty() {
            return Vec::new();
        }
        let mapped = mapped();
        let mut detached = Vec::new();
        for id in replaced {
            // By inode number alone: a false match keeps a probe a while
            // longer, never drops one still in use.
            if mapped.contains(&id.ino) {
                let file = self.files.get_mut(&id).expect("listed above");
                file.recheck = (file.recheck * 2).min(MAX_RECHECK);
                file.next_check = now + file.recheck;
            } else if let Some(file) = self.files.remove(&id) {
                detached.push((id, file.display_path));
            }
        }
        detached
    }
}

/// The line a subcommand prints for a file detached by `detach_replaced`.
pub fn report_detached(display_path: &str) {
    let name = crate::output::escape::for_terminal(display_path);
    crate::note!("cleartap: detached from {name}: the file was replaced or removed and no process maps it");
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::cell::Cell;
    use std::path::Path;
    use std::rc::Rc;

    /// Links that say when they are dropped (detached).
    pub(crate) struct Tracked(pub Rc<Cell<bool>>);

    impl Drop for Tracked {
        fn drop(&mut self) {
            self.0.set(true);
        }
    }

    /// A new file renamed over `path`, as a package upgrade does.
    pub(crate) fn replace(path: &Path) {
        let new = path.with_extension("new");
        std::fs::write(&new, b"new").unwrap();
        std::fs::rename(&new, path).unwrap();
    }

    fn attach(files: &mut AttachedFiles<Tracked>, path: &Path) -> (FileId, Rc<Cell<bool>>) {
        let id = FileId::of(path).unwrap();
        let dropped = Rc::new(Cell::new(false));
        let display_path = path.display().to_string();
        files.insert(FileLinks { id, path: path.into(), display_path, links: Tracked(dropped.clone()) });
        (id, dropped)
    }

    #[test]
    fn a_replaced_file_is_detached_once_no_process_maps_it() {
        let dir = tempfile::tempdir().unwrap();
        let (kept_path, path) = (dir.path().join("kept"), dir.path().join("bash"));
        std::fs::write(&kept_path, b"kept").unwrap();
        std::fs::write(&path, b"old").unwrap();
        let mut files = AttachedFiles::default();
        let (kept, kept_dropped) = attach(&mut files, &kept_path);
        let (old, dropped) = attach(&mut files, &path);
        let start = Instant::now();
        let at = |secs| start + Duration::from_secs(secs);
        let nothing_mapped = HashSet::new;
        assert!(files.sweep(at(3), || panic!("nothing replaced: no scan of the mappings")).is_empty());

        replace(&path);
        assert!(files.sweep(at(4), || panic!("within the sweep interval")).is_empty());
        // Still mapped by a process: kept, and checked again later.
        assert!(files.sweep(at(6), || HashSet::from([old.ino])).is_empty());
        assert!(files.sweep(at(8), || panic!("its recheck is not due")).is_empty());
        assert!(!dropped.get());
        let detached = files.sweep(at(12), nothing_mapped);
        assert_eq!(detached, [(old, path.display().to_string())]);
        assert!(dropped.get(), "its links dropped: detached");
        assert!(!files.contains(&old));
        assert!(files.contains(&kept) && !kept_dropped.get());

        // Removed (a container gone) is as replaced.
        std::fs::remove_file(&kept_path).unwrap();
        assert_eq!(files.sweep(at(15), nothing_mapped), [(kept, kept_path.display().to_string())]);
        assert!(kept_dropped.get());
    }
}
