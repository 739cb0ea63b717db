//! Which library file a probe hit came from: the kernel reports the
//! function's address in the process; the process's mappings name the file.

use lru::LruCache;

use crate::discover::procs::{self, Mapping};
use crate::sources::openssl::Caller;

/// A library cleartap attached to, known by inode.
#[derive(Debug, Clone)]
pub struct KnownLibrary {
    /// The id its probes' records carry (0: none).
    pub id: u16,
    pub inode: u64,
    pub library: &'static str,
    pub version: Option<String>,
    pub path: String,
    /// Call sites of internal probe points (OpenSSL), naming the API
    /// function behind each.
    pub callers: Vec<Caller>,
}

/// What a probe hit is attributed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LibraryRef<'a> {
    pub library: &'static str,
    pub version: Option<&'a str>,
    pub path: &'a str,
}

impl KnownLibrary {
    fn as_ref(&self) -> LibraryRef<'_> {
        LibraryRef { library: self.library, version: self.version.as_deref(), path: &self.path }
    }
}

/// Resolves (pid, address) to the library and its path as the process
/// sees it. Mappings are cached per pid and re-read on a miss (a dlopen,
/// or a pid reused by a new process); the cache is bounded (the least
/// recently used pid's mappings go first, to be read again if needed).
pub struct LibraryResolver {
    known: Vec<KnownLibrary>,
    by_pid: LruCache<u32, Vec<Mapping>>,
}

const MAX_CACHED_PIDS: usize = 4096;

impl LibraryResolver {
    pub fn new(known: Vec<KnownLibrary>) -> Self {
        LibraryResolver { known, by_pid: super::bounded(MAX_CACHED_PIDS) }
    }

    pub fn add(&mut self, library: KnownLibrary) {
        self.known.push(library);
    }

    /// The library of a record: by the id its probe carried (kernels with
    /// uprobe cookies), else by the process's mappings; `family` (from the
    /// hooked function) names the library when the process is gone before
    /// its mappings could be read.
    pub fn resolve(&mut self, pid: u32, address: u64, family: &'static str, id: u16) -> LibraryRef<'_> {
        if id != 0 {
            if let Some(i) = self.known.iter().position(|k| k.id == id) {
                return self.known[i].as_ref();
            }
        }
        if self.lookup(pid, address).is_none() {
            self.refresh(pid);
        }
        let Some((known, i)) = self.lookup(pid, address) else {
            let mut candidates = self.known.iter().filter(|k| k.library == family);
            return match (candidates.next(), candidates.next()) {
                (Some(only), None) => only.as_ref(),
                _ => LibraryRef { library: family, version: None, path: "" },
            };
        };
        let path = &self.by_pid.peek(&pid).expect("just looked up")[i].path;
        match known {
            Some(k) => LibraryRef { path, ..self.known[k].as_ref() },
            None => LibraryRef { library: family, version: None, path },
        }
    }

    /// The API function that made a call caught at an internal probe
    /// point (at `address` in process `pid`), from its return address minus
    /// the probed function's address. None: not one of the known call sites
    /// (the SSL BIO calls them too). The library is the one the probe's id
    /// names, else (kernels without uprobe cookies) the one mapped at
    /// `address`, else (the process is gone) any known library whose call
    /// sites give this delta one name.
    pub fn caller(
        &mut self,
        pid: u32,
        address: u64,
        id: u16,
        function_id: u8,
        delta: i64,
    ) -> Option<&'static str> {
        let site = |k: &KnownLibrary| {
            k.callers.iter().find(|c| c.function_id == function_id && c.delta == delta).map(|c| c.name)
        };
        if id != 0 {
            return self.known.iter().find(|k| k.id == id).and_then(site);
        }
        if self.lookup(pid, address).is_none() {
            self.refresh(pid);
        }
        if let Some((Some(k), _)) = self.lookup(pid, address) {
            return site(&self.known[k]);
        }
        let mut names = self.known.iter().filter_map(site);
        let first = names.next()?;
        names.all(|n| n == first).then_some(first)
    }

    pub fn describe(&self, id: u16) -> String {
        match self.known.iter().find(|k| k.id == id && id != 0) {
            Some(k) => {
                format!("{} {} at {}", k.library, k.version.as_deref().unwrap_or("(version unknown)"), k.path)
            }
            None => "a TLS library".to_string(),
        }
    }

    /// The pid's cached mapping at `address` (the pid then counts as
    /// recently used), and the known library it is.
    fn lookup(&mut self, pid: u32, address: u64) -> Option<(Option<usize>, usize)> {
        let maps = self.by_pid.get(&pid)?;
        let i = maps.iter().position(|m| m.start <= address && address < m.end)?;
        Some((self.known.iter().position(|k| k.inode == maps[i].inode), i))
    }

    fn refresh(&mut self, pid: u32) {
        self.by_pid.put(pid, procs::mappings(pid));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_an_address_in_this_process() {
        let maps = procs::mappings(std::process::id());
        let libc = maps.iter().find(|m| m.path.contains("libc.so")).unwrap().clone();
        let known = vec![KnownLibrary {
            id: 0,
            inode: libc.inode,
            library: "libc",
            version: None,
            path: "x".into(),
            callers: Vec::new(),
        }];
        let mut r = LibraryResolver::new(known);
        let found = r.resolve(std::process::id(), libc.start + 1, "openssl", 0);
        assert_eq!(found.library, "libc");
        assert_eq!(found.path, libc.path);
    }

    #[test]
    fn a_full_cache_drops_the_least_recently_used_pids_mappings() {
        let me = std::process::id();
        let libc = procs::mappings(me).into_iter().find(|m| m.path.contains("libc.so")).unwrap();
        let mut r = LibraryResolver::new(Vec::new());
        r.resolve(me, libc.start, "openssl", 0);
        // Vanished pids: each read (nothing mapped) and cached.
        for pid in 0..MAX_CACHED_PIDS as u32 - 1 {
            r.resolve(u32::MAX - pid, 0x1000, "openssl", 0);
        }
        assert!(r.by_pid.contains(&me));
        r.resolve(me, libc.start, "openssl", 0); // used again: the most recent
        r.resolve(1 << 30, 0x1000, "openssl", 0);
        assert_eq!(r.by_pid.len(), MAX_CACHED_PIDS);
        assert!(r.by_pid.contains(&me));
        assert!(!r.by_pid.contains(&u32::MAX), "the least recently used went");
    }

    #[test]
    fn internal_call_sites_are_named_without_a_probe_id() {
        let maps = procs::mappings(std::process::id());
        let libc = maps.iter().find(|m| m.path.contains("libc.so")).unwrap().clone();
        let site = |delta, name| Caller {
            function_id: crate::events::tls_function::SSL_WRITE_INTERNAL,
            delta,
            name,
        };
        let lib = |id, inode, callers| KnownLibrary {
            id,
            inode,
            library: "openssl",
            version: None,
            path: "x".into(),
            callers,
        };
        let mut r = LibraryResolver::new(vec![
            lib(3, libc.inode, vec![site(0x40, "SSL_write"), site(0x80, "SSL_write_ex")]),
            lib(4, u64::MAX, vec![site(0x40, "SSL_write_ex")]),
        ]);
        // By the probe's id, then (no cookies: id 0) by the mapping.
        assert_eq!(r.caller(std::process::id(), libc.start, 4, 15, 0x40), Some("SSL_write_ex"));
        assert_eq!(r.caller(std::process::id(), libc.start, 0, 15, 0x40), Some("SSL_write"));
        assert_eq!(r.caller(std::process::id(), libc.start, 0, 16, 0x40), None);
        // A vanished process: only a delta every library names alike.
        assert_eq!(r.caller(u32::MAX, 0x1000, 0, 15, 0x80), Some("SSL_write_ex"));
        assert_eq!(r.caller(u32::MAX, 0x1000, 0, 15, 0x40), None);
    }

    #[test]
    fn a_vanished_process_falls_back_to_the_function_family() {
        let lib = |library, path: &str| KnownLibrary {
            id: 0,
            inode: 1,
            library,
            version: None,
            path: path.into(),
            callers: Vec::new(),
        };
        let mut r = LibraryResolver::new(vec![lib("openssl", "/x/libssl.so.3"), lib("gnutls", "/g")]);
        assert_eq!(r.resolve(u32::MAX, 0x1000, "openssl", 0).path, "/x/libssl.so.3");
        r.add(lib("openssl", "/y/libssl.so.3"));
        let found = r.resolve(u32::MAX, 0x1000, "openssl", 0);
        assert_eq!((found.library, found.path), ("openssl", ""));
        // With the id its probe carried, a vanished process is no problem.
        r.add(KnownLibrary { id: 7, ..lib("openssl", "/z/libssl.so.3") });
        assert_eq!(r.resolve(u32::MAX, 0x1000, "openssl", 7).path, "/z/libssl.so.3");
    }
}
