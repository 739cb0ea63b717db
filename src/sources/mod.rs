//! Capture sources: one module per library family. A source knows which
//! files are its libraries, which symbols to hook and with which kernel
//! program; discovery and attaching are shared (`attacher`).

pub mod attached;
pub mod attacher;
pub mod discovery;
pub mod exec;
pub mod executables;
pub mod gnutls;
pub mod gotls;
pub mod hold;
pub mod nss;
pub mod openssl;
pub mod openssl_layout;
pub mod packets;
pub mod procwatch;
pub mod rustls;
pub mod secret_points;
pub mod shell;
pub mod sql;
pub mod tls;

use std::path::{Path, PathBuf};
use std::rc::Rc;

use anyhow::{bail, Result};

use crate::discover::elf::{Function, Symbols};
use crate::discover::pinned::PinnedFile;
use crate::discover::procs::FileId;
use secret_points::SecretPoints;

/// Attach `prog` to the tracepoint its section names
/// (`SEC("tracepoint/syscalls/sys_enter_write")` in its .bpf.c): each
/// tracepoint is written once, beside its program.
pub fn attach_tracepoint(prog: &libbpf_rs::ProgramMut) -> Result<libbpf_rs::Link> {
    use anyhow::Context;
    let section = prog.section().to_string_lossy();
    let Some(tracepoint) = section.strip_prefix("tracepoint/") else {
        bail!("program {} is not a tracepoint program (section {section})", prog.name().to_string_lossy());
    };
    let tracepoint = tracepoint.replacen('/', ":", 1);
    prog.attach().with_context(|| format!("attaching tracepoint {tracepoint}"))
}

/// `attach_tracepoint` for each of `programs`.
pub fn attach_tracepoints(programs: &[&libbpf_rs::ProgramMut]) -> Result<Vec<libbpf_rs::Link>> {
    programs.iter().map(|prog| attach_tracepoint(prog)).collect()
}

/// The kernel entry program a hooked function needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// `f(handle, buf, len)`; the return value is the byte count.
    Plain,
    /// `f(handle, buf, len, size_t *done)`; returns 1 on success.
    Ex,
    /// NSPR's `f(PRFileDesc *, buf, len, ...)`: plain shape, TLS layers only.
    Nspr,
    /// Go's crypto/tls methods: register ABI, no return probe (see `gotls`).
    Go,
    /// OpenSSL's `ssl_*_internal(handle, buf, len, size_t *done)`: the _ex
    /// shape, returning > 0 on success; the record names the caller.
    Internal,
    /// The same with the count pointer in the 5th argument (`flags` before it).
    Internal5,
    /// The _ex shape with the count pointer in the 5th argument:
    /// `SSL_write_ex2(ssl, buf, num, flags, written)`.
    Ex5,
    /// rustls's `Writer::write`/`Reader::read`: `(&mut self, ptr, len)`,
    /// returning `io::Result<usize>` in rax (0: Ok) and rdx (see `rustls`).
    Rustls,
    /// rustls's `ClientConnection::new`/`ServerConnection::new`: entry only,
    /// marks the thread whose socket I/O ties records to their socket.
    RustlsMark,
}

/// One plaintext function of a TLS library.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsHook {
    pub symbol: &'static str,
    pub entry: Entry,
    /// `enum ct_tls_function` in `bpf/events.h`.
    pub function_id: u8,
}

impl TlsHook {
    /// The kernel program that takes the call's arguments: by convention
    /// `<shape>_entry_<symbol in lower case>` in `bpf/tls.bpf.c`, one per
    /// function (its return reads the function from the thread's slot).
    /// rustls's entries serve both its functions, whose returns are
    /// programs of their own; Go's are attached by `TlsProbes::attach_go`.
    pub fn entry_program(&self) -> Option<String> {
        let shape = match self.entry {
            Entry::Go => return None,
            Entry::Rustls => return Some("rustls_entry".to_string()),
            Entry::RustlsMark => return Some("rustls_mark".to_string()),
            Entry::Plain => "plain",
            Entry::Ex => "ex",
            Entry::Nspr => "nspr",
            Entry::Internal => "internal",
            Entry::Internal5 => "internal5",
            Entry::Ex5 => "ex5",
        };
        Some(format!("{shape}_entry_{}", self.symbol.to_ascii_lowercase()))
    }

    /// The kernel program that reads the call's result: `tls_return` for
    /// every library function but rustls's (which return a Rust
    /// `io::Result` in two registers: `rustls_write_return`,
    /// `rustls_read_return`), and its `_nofetch` variant for kernels
    /// without atomic fetch operations (see `kernel::has_atomic_fetch`).
    /// None: no return probe (rustls's marks; Go's, attached by
    /// `TlsProbes::attach_go`).
    pub fn return_program(&self, has_fetch: bool) -> Option<String> {
        let suffix = if has_fetch { "" } else { "_nofetch" };
        let name = match self.entry {
            Entry::Go | Entry::RustlsMark => return None,
            Entry::Rustls if self.function_id == crate::events::tls_function::RUSTLS_WRITE => {
                "rustls_write_return"
            }
            Entry::Rustls => "rustls_read_return",
            _ => "tls_return",
        };
        Some(format!("{name}{suffix}"))
    }
}

/// A TLS library family.
#[derive(Debug)]
pub struct TlsSource {
    /// `--library` name and the `library` field of records.
    pub name: &'static str,
    /// What `--library NAME` selects, for `--help`.
    pub about: &'static str,
    pub hooks: &'static [TlsHook],
    /// Does a file name (basename) look like this library? Also what
    /// `bpf/procwatch.bpf.c` watches `openat` for (at most 15 bytes).
    /// Empty for a library that is only ever linked into executables
    /// (rustls): no file is named like it, and discovery checks
    /// executables for it instead (`Discovery::consider_executable`).
    pub file_prefix: &'static str,
    /// Reads the library's version from the file (found at the path given,
    /// for a sibling file that holds it), when it says.
    pub version: fn(&PinnedFile, &Path) -> Option<String>,
    /// Where a probed file of this library gives its TLS secrets
    /// (`--keylog`, `-w`), or why it cannot; None: the library gives none
    /// (its plaintext is still captured, and the capture says so).
    pub secrets: Option<fn(&TlsTarget) -> Result<SecretPoints>>,
}

impl TlsSource {
    pub fn is_library_path(&self, path: &str) -> bool {
        let name = path.rsplit('/').next().unwrap_or(path);
        // NSS's integrity check files (libfreeblpriv3.chk) sit beside its
        // libraries and share their names' prefixes; they are not ELF.
        !self.file_prefix.is_empty() && name.starts_with(self.file_prefix) && !name.ends_with(".chk")
    }
}

pub const TLS_SOURCES: [&TlsSource; 4] = [&openssl::SOURCE, &gnutls::SOURCE, &nss::SOURCE, &rustls::SOURCE];

/// Every plaintext hook a library file can get: the registry's, and
/// OpenSSL's internal functions that replace some of them.
pub fn library_hooks() -> impl Iterator<Item = &'static TlsHook> {
    let internal = [&openssl::WRITE_INTERNAL, &openssl::WRITE_INTERNAL5, &openssl::READ_INTERNAL];
    TLS_SOURCES.iter().flat_map(|s| s.hooks.iter()).chain(internal)
}

/// The function name of an `enum ct_tls_function` value, and its family.
pub fn function_of(function_id: u8) -> (&'static str, &'static str) {
    TLS_SOURCES
        .iter()
        .flat_map(|s| s.hooks.iter().map(move |h| (h, s.name)))
        .chain(gotls::HOOKS.iter().map(|h| (h, gotls::NAME)))
        .chain([&openssl::WRITE_INTERNAL, &openssl::READ_INTERNAL].map(|h| (h, openssl::SOURCE.name)))
        .find(|(h, _)| h.function_id == function_id)
        .map_or(("?", "unknown"), |(h, name)| (h.symbol, name))
}

/// Every symbol any source looks for.
pub fn wanted_symbols() -> Vec<&'static str> {
    let mut names: Vec<_> = TLS_SOURCES.iter().flat_map(|s| s.hooks.iter().map(|h| h.symbol)).collect();
    names.push(openssl::BORINGSSL_MARKER);
    names
}

/// One source's loaded kernel programs: the skeleton its module loads and
/// attaches (`impl Probes<ItsSkel>` there).
pub struct Probes<S> {
    skel: S,
}

impl<'obj, S: libbpf_rs::skel::Skel<'obj>> Probes<S> {
    /// The loaded object (`cleartap check` lists its programs).
    pub fn object(&self) -> &libbpf_rs::Object {
        self.skel.object()
    }
}

/// A file to probe (a library, or an executable with a library linked in)
/// and the hooks found in it. `F` is how it holds the file: shared while it
/// is parsed; owned on its way from the discovery thread (an `Rc` is not
/// `Send`, and `PinnedFile` is not `Sync`, so an `Arc` would not be either).
#[derive(Debug, Clone)]
pub struct TlsTarget<F = Rc<PinnedFile>> {
    /// The file as opened once: parsed from and attached through this
    /// descriptor (see `discover::pinned`).
    pub file: F,
    /// A name that reaches the file (through /proc/PID/root for files in
    /// other mount namespaces): checked later to see if it was replaced.
    pub path: PathBuf,
    /// The name to show: the path as the process using it sees it.
    pub display_path: String,
    pub id: FileId,
    /// `openssl`, `boringssl`, `gnutls` or `nss`.
    pub library: &'static str,
    /// The registry entry it was found by (None: a Go program).
    pub source: Option<&'static TlsSource>,
    pub version: Option<String>,
    pub hooks: Vec<(TlsHook, Function)>,
    /// Go executables: where their probes go (see `gotls`).
    pub go: Option<gotls::GoProbePoints>,
    /// Given by the attacher, carried by every record from this file.
    pub library_id: u16,
    /// Call sites of the internal functions hooked instead of exported
    /// ones (OpenSSL, see `openssl::internal_points`).
    pub callers: Vec<openssl::Caller>,
    /// Where its TLS secrets are read (`--keylog`, `-w`), found with the
    /// rest of the parse when discovered on the discovery thread (None:
    /// not looked for yet, the attach does it). An error says why none.
    pub secret_points: Option<std::result::Result<Option<SecretPoints>, String>>,
}

impl<F> TlsTarget<F> {
    /// The same target holding `file` instead; and the file it held.
    fn swap_file<G>(self, file: G) -> (TlsTarget<G>, F) {
        // A type-changing `..self` is not stable Rust: every other field by name.
        let target = TlsTarget {
            file,
            path: self.path,
            display_path: self.display_path,
            id: self.id,
            library: self.library,
            source: self.source,
            version: self.version,
            hooks: self.hooks,
            go: self.go,
            library_id: self.library_id,
            callers: self.callers,
            secret_points: self.secret_points,
        };
        (target, self.file)
    }
}

impl TlsTarget<PinnedFile> {
    /// Back on the thread that attaches it.
    pub fn into_local(self) -> TlsTarget {
        let (target, file) = self.swap_file(());
        target.swap_file(Rc::new(file)).0
    }
}

impl TlsTarget {
    /// For the trip to the thread that attaches it: the file out of its
    /// `Rc`, which a parsed target is the only holder of (None otherwise).
    pub fn into_sendable(self) -> Option<TlsTarget<PinnedFile>> {
        let (target, file) = self.swap_file(());
        Some(target.swap_file(Rc::into_inner(file)?).0)
    }

    /// Looks for where its secrets are read now, on the thread that parses.
    pub fn find_secret_points(&mut self) {
        self.secret_points = Some(secret_points::find(self).map_err(|e| format!("{e:#}")));
    }

    /// Read the symbols of `file` (found at `path`) and keep the hooks
    /// `source` defines. A file defining none of them is an error naming
    /// what was looked for.
    pub fn resolve(file: Rc<PinnedFile>, path: &Path, source: &'static TlsSource) -> Result<TlsTarget> {
        let symbols = Symbols::of(&file, &wanted_symbols())?;
        Self::from_symbols(file, path, &symbols, source)
    }

    pub fn from_symbols(
        file: Rc<PinnedFile>,
        path: &Path,
        symbols: &Symbols,
        source: &'static TlsSource,
    ) -> Result<TlsTarget> {
        let found: Vec<_> =
            source.hooks.iter().filter_map(|h| symbols.get(h.symbol).map(|f| (*h, f))).collect();
        // A file probed for secrets only (NSS's libnss3 and freebl) has no
        // plaintext hooks to find.
        if found.is_empty() && !source.hooks.is_empty() {
            let names: Vec<_> = source.hooks.iter().map(|h| h.symbol).collect();
            bail!(
                "{} defines none of the {} functions cleartap hooks ({})",
                path.display(),
                source.name,
                names.join(", ")
            );
        }
        let version = (source.version)(&file, path);
        let is_boringssl = || openssl::is_boringssl(symbols, &file, version.as_deref());
        let library =
            if source.name == openssl::SOURCE.name && is_boringssl() { "boringssl" } else { source.name };
        let mut target = TlsTarget {
            id: file.id(),
            version,
            file,
            path: path.to_path_buf(),
            display_path: path.to_string_lossy().into_owned(),
            library,
            source: Some(source),
            hooks: found,
            go: None,
            library_id: 0,
            callers: Vec::new(),
            secret_points: None,
        };
        if library == openssl::SOURCE.name {
            target.use_internal_points(symbols);
        }
        Ok(target)
    }

    /// Swap exported OpenSSL hooks for the internal functions behind them
    /// where that saves a trap.
    fn use_internal_points(&mut self, symbols: &Symbols) {
        let points = openssl::internal_points(self.file.data(), symbols, self.version.as_deref());
        self.probe_internal_points(points);
    }

    /// Probes each of `points` instead of the hooks it replaces.
    fn probe_internal_points(&mut self, points: Vec<openssl::InternalPoint>) {
        for point in points {
            self.hooks.retain(|(h, _)| !point.replaces.contains(&h.symbol));
            self.hooks.push((point.hook, point.function));
            self.callers.extend(point.callers);
        }
    }

    /// "SSL_write, SSL_read", and for an internal function what it stands
    /// for: "SSL_read+SSL_read_ex via ssl_read_internal@0x352d0".
    pub fn hook_names(&self) -> String {
        let name = |(h, f): &(TlsHook, Function)| {
            let callers: Vec<_> =
                self.callers.iter().filter(|c| c.function_id == h.function_id).map(|c| c.name).collect();
            if callers.is_empty() {
                h.symbol.to_string()
            } else {
                format!("{} via {}@{:#x}", callers.join("+"), h.symbol, f.address)
            }
        };
        if self.hooks.is_empty() {
            return "secrets only".to_string();
        }
        self.hooks.iter().map(name).collect::<Vec<_>>().join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::events::tls_function;

    #[test]
    fn function_ids_are_unique_and_named() {
        let mut ids: Vec<u8> =
            TLS_SOURCES.iter().flat_map(|s| s.hooks.iter().map(|h| h.function_id)).collect();
        let n = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), n);
        assert_eq!(function_of(tls_function::SSL_WRITE), ("SSL_write", "openssl"));
        assert_eq!(function_of(tls_function::PR_WRITE), ("PR_Write", "nss"));
        assert_eq!(function_of(tls_function::GO_WRITE), ("crypto/tls.(*Conn).Write", "go"));
        assert_eq!(function_of(tls_function::GO_READ), ("crypto/tls.(*Conn).Read", "go"));
        assert_eq!(function_of(0), ("?", "unknown"));
    }

    #[test]
    fn function_ids_match_the_c_header() {
        let header = include_str!("../../bpf/events.h");
        let start = header.find("enum ct_tls_function").unwrap();
        let body = &header[start..header[start..].find("};").unwrap() + start];
        let names: Vec<&str> = body
            .lines()
            .filter_map(|l| l.trim().strip_prefix("CT_FN_"))
            .map(|l| l.split([',', ' ', '=']).next().unwrap())
            .collect();
        for source in TLS_SOURCES.iter().filter(|s| s.name != rustls::SOURCE.name) {
            for h in source.hooks {
                let c_name = names[h.function_id as usize - 1];
                assert_eq!(c_name, h.symbol.to_ascii_uppercase(), "{}", h.symbol);
            }
        }
        // rustls's symbols are Rust paths: its ids are named for the function.
        assert_eq!(names[rustls::SOURCE.hooks[0].function_id as usize - 1], "RUSTLS_WRITE");
        assert_eq!(names[rustls::SOURCE.hooks[1].function_id as usize - 1], "RUSTLS_READ");
        assert_eq!(function_of(tls_function::RUSTLS_READ), (rustls::READ, "rustls"));
        for h in [openssl::WRITE_INTERNAL, openssl::READ_INTERNAL] {
            assert_eq!(names[h.function_id as usize - 1], h.symbol.to_ascii_uppercase());
            assert_eq!(function_of(h.function_id), (h.symbol, "openssl"));
        }
        assert_eq!(names[gotls::HOOKS[0].function_id as usize - 1], "GO_WRITE");
        assert_eq!(names[gotls::HOOKS[1].function_id as usize - 1], "GO_READ");
    }

    #[test]
    fn library_names() {
        // procwatch's slots: 15 bytes and a NUL.
        assert!(TLS_SOURCES.iter().all(|s| s.file_prefix.len() < 16));
        assert!(openssl::SOURCE.is_library_path("/usr/lib/x86_64-linux-gnu/libssl.so.3"));
        assert!(openssl::SOURCE.is_library_path("/opt/app/libssl.so.1.1"));
        assert!(!openssl::SOURCE.is_library_path("/usr/lib/libssl3.so"));
        assert!(!openssl::SOURCE.is_library_path("/home/libssl.so.d/libc.so.6"));
        assert!(gnutls::SOURCE.is_library_path("/lib/x86_64-linux-gnu/libgnutls.so.30"));
        assert!(nss::SOURCE.is_library_path("/lib/x86_64-linux-gnu/libnspr4.so"));
        assert!(!nss::SOURCE.is_library_path("/lib/x86_64-linux-gnu/libnss3.so"));
        assert!(!rustls::SOURCE.is_library_path("/lib/x86_64-linux-gnu/libc.so.6"));
    }
}
