//! NSS over NSPR (`libnspr4.so`): Firefox, Thunderbird, NSS's own tools.
//!
//! NSPR's I/O functions carry files and plain sockets as well as TLS. Only
//! layered descriptors are reported: NSS pushes its SSL layer on top of the
//! socket, so a TLS descriptor has a lower layer and a plain one has none.
//! The check runs in the kernel at entry, before anything is copied.

use std::path::Path;

use super::{Entry, TlsHook, TlsSource};
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
