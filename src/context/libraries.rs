//! Which library file a probe hit came from: the kernel reports the
//! function's address in the process; the process's mappings name the file.

use std::collections::HashMap;

use crate::discover::procs::{self, Mapping};

/// A library cleartap attached to, known by inode.
#[derive(Debug, Clone)]
pub struct KnownLibrary {
    pub inode: u64,
    pub library: &'static str,
    pub path: String,
}

/// Resolves (pid, address) to (library kind, path as the process sees it).
/// Mappings are cached per pid and re-read on a miss (a dlopen, or a pid
/// reused by a new process); the cache is bounded.
pub struct LibraryResolver {
    known: Vec<KnownLibrary>,
    by_pid: HashMap<u32, Vec<Mapping>>,
}

const MAX_CACHED_PIDS: usize = 4096;

impl LibraryResolver {
    pub fn new(known: Vec<KnownLibrary>) -> Self {
        LibraryResolver { known, by_pid: HashMap::new() }
    }

    pub fn resolve(&mut self, pid: u32, address: u64) -> (&'static str, &str) {
        if self.lookup(pid, address).is_none() {
            self.refresh(pid);
        }
        match self.lookup(pid, address) {
            Some((kind, i)) => (kind, &self.by_pid[&pid][i].path),
            // The process is gone: name the library if only one could be it.
            None => match self.known.as_slice() {
                [only] => (only.library, &only.path),
                _ => ("unknown", ""),
            },
        }
    }

    fn lookup(&self, pid: u32, address: u64) -> Option<(&'static str, usize)> {
        let maps = self.by_pid.get(&pid)?;
        let i = maps.iter().position(|m| m.start <= address && address < m.end)?;
        let kind = self.known.iter().find(|k| k.inode == maps[i].inode).map_or("unknown", |k| k.library);
        Some((kind, i))
    }

    fn refresh(&mut self, pid: u32) {
        if self.by_pid.len() >= MAX_CACHED_PIDS {
            self.by_pid.clear();
        }
        self.by_pid.insert(pid, procs::mappings(pid));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_an_address_in_this_process() {
        let maps = procs::mappings(std::process::id());
        let libc = maps.iter().find(|m| m.path.contains("libc.so")).unwrap().clone();
        let known = vec![KnownLibrary { inode: libc.inode, library: "libc", path: libc.path.clone() }];
        let mut r = LibraryResolver::new(known);
        let (kind, path) = r.resolve(std::process::id(), libc.start + 1);
        assert_eq!(kind, "libc");
        assert_eq!(path, libc.path);
    }

    #[test]
    fn a_vanished_process_falls_back_to_the_only_library() {
        let known = vec![KnownLibrary { inode: 1, library: "openssl", path: "/x/libssl.so.3".into() }];
        let mut r = LibraryResolver::new(known);
        assert_eq!(r.resolve(u32::MAX, 0x1000), ("openssl", "/x/libssl.so.3"));
    }
}
