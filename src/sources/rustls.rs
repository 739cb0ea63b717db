//! rustls, linked into Rust executables (there is no shared library): an
//! executable is checked for rustls's functions in its symbol table, at
//! start for running processes and at `exec` for new ones, like OpenSSL
//! linked into an executable.
//!
//! Where the plaintext is, measured on rustls 0.23.46 built by Rust 1.95
//! (tests/rustls/rustlspeer, `objdump -d`): every plaintext write of the
//! std API (`Stream`/`StreamOwned`, `conn.writer()`, and tokio-rustls's
//! `poll_write`) goes through `<rustls::conn::connection::Writer as
//! std::io::Write>::write`, and every read through `<... Reader as
//! std::io::Read>::read`. Both are concrete functions of the rustls crate
//! (not generic), so a user's crate calls them, never copies them: in the
//! default release profile (no LTO) they stay calls and keep their symbols
//! (`T` in `nm`), whatever the program does around them. Generic code
//! (`Stream::write`, `ConnectionCommon<Data>::complete_io`, `writer()`) is
//! instantiated in the user's crate and may be inlined anywhere: never
//! probed. Both return `io::Result<usize>` in two registers: rax 0 (Ok)
//! or 1 (Err), the count (or the error) in rdx; the arguments are
//! (self, ptr, len) in rdi, rsi, rdx (see `bpf/tls.bpf.c`).
//!
//! With LTO (`lto = true`) `Writer::write` is inlined into the program
//! and gone (measured: only `Reader::read` keeps a local symbol): such a
//! program is refused with a warning rather than captured one way. A
//! stripped program (`strip = true`) has no symbol table at all; rustls is
//! then recognised by its source paths in `.rodata` (panic locations,
//! `rustls-0.23.46/src/...`) and refused with a warning naming it.
//! Symbols use Rust's legacy mangling (rustc's default); v0 mangling
//! (`-C symbol-mangling-version=v0`) is not read.
//!
//! Not captured: `Writer::write_vectored` (hyper over tokio-rustls uses
//! it), `Reader`'s `BufRead` (`fill_buf`/`consume`), and the unbuffered
//! API (`rustls::unbuffered`).

use std::path::Path;
use std::rc::Rc;

use anyhow::{bail, Result};
use object::read::elf::ElfFile64;
use object::{Endianness, Object, ObjectSection, ReadRef};

use super::{Entry, TlsHook, TlsSource, TlsTarget};
use crate::discover::elf::{self, Function};
use crate::discover::pinned::PinnedFile;
use crate::discover::version;
use crate::events::tls_function;

pub const WRITE: &str = "<rustls::conn::connection::Writer as std::io::Write>::write";
pub const READ: &str = "<rustls::conn::connection::Reader as std::io::Read>::read";

pub const SOURCE: TlsSource = TlsSource {
    name: "rustls",
    about: "rustls, in Rust executables (with their symbol table)",
    hooks: &[
        TlsHook { symbol: WRITE, entry: Entry::Rustls, function_id: tls_function::RUSTLS_WRITE },
        TlsHook { symbol: READ, entry: Entry::Rustls, function_id: tls_function::RUSTLS_READ },
    ],
    // No library file: executables are checked by their symbols.
    file_prefix: "",
    version: rustls_version,
    secrets: Some(super::secret_points::rustls),
};

/// The trait rustls hands every secret to, when the program set a key
/// logger (`ClientConfig::key_log`/`ServerConfig::key_log`).
const KEY_LOG_METHOD: &str = " as rustls::key_log::KeyLog>::log";
/// rustls's default logger: its `will_log` is false, so rustls never
/// calls its `log`, and nothing of it is probed.
const NO_KEY_LOG: &str = "<rustls::key_log::NoKeyLog as rustls::key_log::KeyLog>::log";
/// A program has one or two loggers (rustls's `KeyLogFile`, its own);
/// more than this many is not a program cleartap knows.
const MAX_KEY_LOGGERS: usize = 8;

/// Every implementation of `KeyLog::log` in the executable: rustls calls
/// the program's logger through its vtable, so each one is a function of
/// its own with a symbol, never inlined. Empty when the program has none
/// (it cannot log secrets at all).
pub fn key_loggers(file: &PinnedFile) -> Result<Vec<(String, Function)>> {
    let elf = ElfFile64::<Endianness, _>::parse(file.data())?;
    let found = elf::rust_functions_where(&elf, "KeyLog", |d| {
        d.starts_with('<') && d.ends_with(KEY_LOG_METHOD) && d != NO_KEY_LOG
    })?;
    if found.len() > MAX_KEY_LOGGERS {
        bail!(
            "{} implementations of rustls's KeyLog::log (at most {MAX_KEY_LOGGERS} are probed)",
            found.len()
        );
    }
    Ok(found)
}

/// Where a thread starts a connection: from there its socket I/O is
/// remembered (see `bpf/tls.bpf.c`). Entry probes only; optional.
pub const MARKS: [TlsHook; 2] = [
    TlsHook {
        symbol: "rustls::client::client_conn::connection::ClientConnection::new",
        entry: Entry::RustlsMark,
        function_id: 0,
    },
    TlsHook {
        symbol: "rustls::server::server_conn::connection::ServerConnection::new",
        entry: Entry::RustlsMark,
        function_id: 0,
    },
];

/// The version in rustls's source paths (`.../rustls-0.23.46/src/...`).
fn rustls_version(file: &PinnedFile, _path: &Path) -> Option<String> {
    version::find_after(file, b"/rustls-")
}

/// `Ok(None)`: no rustls in this executable. An error says why an
/// executable with rustls cannot be probed (built with LTO, stripped).
pub fn resolve(file: Rc<PinnedFile>, path: &Path) -> Result<Option<TlsTarget>> {
    let bytes = file.data();
    if bytes.read_bytes_at(0, 4) != Ok(&b"\x7fELF"[..]) {
        return Ok(None);
    }
    let Ok(elf) = ElfFile64::<Endianness, _>::parse(bytes) else { return Ok(None) };
    // A program of another instruction set (run by an emulator) is not
    // probed: see `Symbols::of`.
    if elf::Isa::of_elf(&elf).is_err() {
        return Ok(None);
    }
    let wanted: Vec<&str> = SOURCE.hooks.iter().chain(MARKS.iter()).map(|h| h.symbol).collect();
    let found = elf::rust_functions(&elf, "rustls", &wanted)?;
    let get = |name: &str| found.iter().find(|(n, _)| n == name).map(|(_, f)| *f);
    if found.is_empty() {
        // No rustls symbol: either no rustls, or no symbol table.
        if elf.section_by_name(".symtab").is_none() && has_rustls_sources(&elf) {
            bail!(
                "rustls is linked in, but the executable is stripped (no symbol table): rustls is \
                 probed by its function symbols; build without `strip` to capture it"
            );
        }
        return Ok(None);
    }
    let missing: Vec<&str> = SOURCE.hooks.iter().map(|h| h.symbol).filter(|s| get(s).is_none()).collect();
    if !missing.is_empty() {
        if !has_rustls_sources(&elf) && get(READ).is_none() && get(WRITE).is_none() {
            return Ok(None);
        }
        bail!(
            "rustls is linked in, but {} is not a function of its own (inlined: built with LTO?), \
             so its plaintext cannot be captured both ways",
            missing.join(" and ")
        );
    }
    let mut hooks: Vec<(TlsHook, Function)> =
        SOURCE.hooks.iter().chain(MARKS.iter()).filter_map(|h| get(h.symbol).map(|f| (*h, f))).collect();
    hooks.dedup_by_key(|(h, _)| h.symbol);
    Ok(Some(TlsTarget {
        id: file.id(),
        version: rustls_version(&file, path),
        file,
        path: path.to_path_buf(),
        display_path: path.to_string_lossy().into_owned(),
        library: SOURCE.name,
        source: Some(&SOURCE),
        hooks,
        go: None,
        library_id: 0,
        callers: Vec::new(),
        secret_points: None,
    }))
}

/// rustls's source paths in `.rodata` (panic locations name them).
fn has_rustls_sources<'d, R: ReadRef<'d>>(elf: &ElfFile64<'d, Endianness, R>) -> bool {
    let Some(rodata) = elf.section_by_name(".rodata") else { return false };
    let Ok(data) = rodata.data() else { return false };
    version::find_after_in(data, b"/rustls-").is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hooks_are_the_std_io_functions() {
        assert_eq!(SOURCE.hooks[0].entry_program().as_deref(), Some("rustls_entry"));
        assert_eq!(SOURCE.hooks[0].return_program(true).as_deref(), Some("rustls_write_return"));
        assert_eq!(SOURCE.hooks[1].return_program(false).as_deref(), Some("rustls_read_return_nofetch"));
        assert_eq!(MARKS[0].entry_program().as_deref(), Some("rustls_mark"));
        assert_eq!(MARKS[0].return_program(true), None);
        assert!(!SOURCE.is_library_path("/usr/lib/libssl.so.3"));
    }
}
