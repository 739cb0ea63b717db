//! Capture sources: one module per library or program family. A source
//! knows which files to probe, which symbols to hook, and which kernel
//! program serves each hook; nothing else.

pub mod openssl;
pub mod tls;

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use crate::discover::elf::{Function, Symbols};
use crate::discover::procs::FileId;

/// The calling convention of a hooked plaintext function, which decides
/// the kernel program serving it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `f(handle, buf, len)`; the return value is the byte count.
    Plain,
    /// `f(handle, buf, len, size_t *done)`; returns 1 on success.
    Ex,
}

/// One plaintext function of a TLS library.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsHook {
    pub symbol: &'static str,
    pub shape: Shape,
    /// `enum ct_tls_function` in `bpf/events.h`.
    pub function_id: u8,
}

/// A file to probe (a library, or an executable with a library linked in)
/// and the hooks found in it.
#[derive(Debug)]
pub struct TlsTarget {
    /// Where cleartap opens the file (through /proc/PID/root for files
    /// in other mount namespaces).
    pub path: PathBuf,
    /// The name to show: the path as the process using it sees it.
    pub display_path: String,
    pub id: FileId,
    pub library: &'static str,
    pub hooks: Vec<(TlsHook, Function)>,
}

impl TlsTarget {
    /// Read the symbols of `path` and keep the hooks it defines. A file
    /// defining none of them is an error that names what was looked for.
    pub fn resolve(path: &Path, library: &'static str, hooks: &[TlsHook]) -> Result<TlsTarget> {
        let id = FileId::of(path)?;
        let symbols = Symbols::read(path)?;
        let found: Vec<_> = hooks.iter().filter_map(|h| symbols.get(h.symbol).map(|f| (*h, f))).collect();
        if found.is_empty() {
            let names: Vec<_> = hooks.iter().map(|h| h.symbol).collect();
            bail!(
                "{} defines none of the {library} functions cleartap hooks ({})",
                path.display(),
                names.join(", ")
            );
        }
        Ok(TlsTarget {
            path: path.to_path_buf(),
            display_path: path.to_string_lossy().into_owned(),
            id,
            library,
            hooks: found,
        })
    }
}
