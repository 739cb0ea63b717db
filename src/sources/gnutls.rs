//! GnuTLS 3.x (`libgnutls.so.30`): Debian's wget and gnutls-cli use it.
//!
//! `gnutls_record_send` may tail-jump into `gnutls_record_send2` (and recv
//! into the same internals as `recv_seq`); both are hooked, and the kernel
//! side emits a call once: the first return to see the call consumes it.
//! `gnutls_record_recv_packet` (zero-copy, packet shaped) is not hooked.

use std::path::Path;

use super::{Entry, TlsHook, TlsSource};
use crate::discover::pinned::PinnedFile;
use crate::discover::version;
use crate::events::tls_function;

pub const SOURCE: TlsSource = TlsSource {
    name: "gnutls",
    about: "GnuTLS",
    hooks: &[
        TlsHook {
            symbol: "gnutls_record_send",
            entry: Entry::Plain,
            function_id: tls_function::GNUTLS_RECORD_SEND,
        },
        TlsHook {
            symbol: "gnutls_record_recv",
            entry: Entry::Plain,
            function_id: tls_function::GNUTLS_RECORD_RECV,
        },
        TlsHook {
            symbol: "gnutls_record_send2",
            entry: Entry::Plain,
            function_id: tls_function::GNUTLS_RECORD_SEND2,
        },
        TlsHook {
            symbol: "gnutls_record_recv_seq",
            entry: Entry::Plain,
            function_id: tls_function::GNUTLS_RECORD_RECV_SEQ,
        },
    ],
    file_prefix: "libgnutls.so",
    version: gnutls_version,
    secrets: Some(super::secret_points::gnutls),
};

/// GnuTLS keeps its version as a bare `3.x.y` string.
fn gnutls_version(file: &PinnedFile, _path: &Path) -> Option<String> {
    version::find_bare(file, b'3')
}
