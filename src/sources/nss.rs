//! NSS over NSPR (`libnspr4.so`): Firefox, Thunderbird, NSS's own tools.
//!
//! NSPR's I/O functions carry files and plain sockets as well as TLS. Only
//! layered descriptors are reported: NSS pushes its SSL layer on top of the
//! socket, so a TLS descriptor has a lower layer and a plain one has none.
//! The check runs in the kernel at entry, before anything is copied.

use std::path::Path;

use anyhow::{Context, Result};

use super::secret_points::SecretPoints;
use super::{Entry, TlsHook, TlsSource, TlsTarget};
use crate::discover::elf::Symbols;
use crate::discover::nss_freebl;
use crate::discover::pinned::PinnedFile;
use crate::discover::version;
use crate::events::tls_function;

pub const SOURCE: TlsSource = TlsSource {
    name: "nss",
    about: "NSS (through NSPR)",
    hooks: &[
        TlsHook { symbol: "PR_Write", entry: Entry::Nspr, function_id: tls_function::PR_WRITE },
        TlsHook { symbol: "PR_Read", entry: Entry::Nspr, function_id: tls_function::PR_READ },
        TlsHook { symbol: "PR_Send", entry: Entry::Nspr, function_id: tls_function::PR_SEND },
        TlsHook { symbol: "PR_Recv", entry: Entry::Nspr, function_id: tls_function::PR_RECV },
    ],
    file_prefix: "libnspr4.so",
    version: nspr_version,
    secrets: None,
};

/// NSPR keeps its version as a bare `4.x` string.
fn nspr_version(file: &PinnedFile, _path: &Path) -> Option<String> {
    version::find_bare(file, b'4')
}

/// NSS's secrets come from two more of its files (docs/nss-secrets.md),
/// probed only for `--keylog` and `-w`: libnss3, where libssl asks for
/// each TLS 1.3 secret by its label, hashes the ClientHello and clones the
/// transcript, and freebl, which computes them (and TLS 1.2's key block).
pub const SECRET_SOURCES: [&TlsSource; 2] = [&PK11, &FREEBL];

const PK11: TlsSource = TlsSource {
    name: "nss",
    about: "NSS's PKCS#11 wrapper (secrets only)",
    hooks: &[],
    file_prefix: "libnss3.so",
    version: no_version,
    secrets: Some(pk11_points),
};

const FREEBL: TlsSource = TlsSource {
    name: "nss",
    about: "NSS's freebl (secrets only)",
    hooks: &[],
    // 15 bytes at most (the process watch's slot): matches
    // libfreeblpriv3.so, and its .chk file, which NSS opens only in FIPS
    // mode (and which is refused as not ELF).
    file_prefix: "libfreeblpriv3.",
    version: no_version,
    secrets: Some(freebl_points),
};

fn no_version(_: &PinnedFile, _: &Path) -> Option<String> {
    None
}

/// The exported functions libssl calls for TLS 1.3 secrets.
pub const DERIVE: &str = "PK11_DeriveWithFlags";
pub const DIGEST_OP: &str = "PK11_DigestOp";
/// Cloned for the transcript hash before each secret's derive: names the
/// connection the secret is for.
pub const CLONE_CONTEXT: &str = "PK11_CloneContext";

fn pk11_points(target: &TlsTarget) -> Result<SecretPoints> {
    let symbols = Symbols::of(&target.file, &[DERIVE, DIGEST_OP, CLONE_CONTEXT])?;
    let get = |name| symbols.get(name).with_context(|| format!("{name} is not exported"));
    Ok(SecretPoints::NssPk11 {
        derive: get(DERIVE)?,
        digest_op: get(DIGEST_OP)?,
        clone_context: get(CLONE_CONTEXT)?,
    })
}

fn freebl_points(target: &TlsTarget) -> Result<SecretPoints> {
    let points = nss_freebl::find(target.file.data()).context("NSS's freebl not understood")?;
    Ok(SecretPoints::NssFreebl(points))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_files_are_named_within_the_watch_slot_and_without_check_files() {
        // The process watch holds 15 bytes of a prefix (bpf/procwatch.bpf.c).
        assert!(SECRET_SOURCES.iter().all(|s| s.file_prefix.len() < 16 && s.name == SOURCE.name));
        assert!(FREEBL.is_library_path("/usr/lib/x86_64-linux-gnu/libfreeblpriv3.so"));
        assert!(!FREEBL.is_library_path("/usr/lib/x86_64-linux-gnu/libfreeblpriv3.chk"));
        assert!(!FREEBL.is_library_path("/usr/lib/x86_64-linux-gnu/libfreebl3.so"));
        assert!(PK11.is_library_path("/lib/libnss3.so"));
        assert!(!PK11.is_library_path("/lib/libnssutil3.so"));
        assert!(SECRET_SOURCES.iter().all(|s| s.hooks.is_empty() && s.secrets.is_some()));
    }
}
