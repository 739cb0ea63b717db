//! OpenSSL 1.1.x / 3.x and BoringSSL builds that export the same names,
//! as `libssl.so*` or linked into an executable (node).

use std::path::Path;

use super::{Entry, TlsHook, TlsSource};
use crate::discover::elf::Symbols;
use crate::discover::version;

pub const SOURCE: TlsSource = TlsSource {
    name: "openssl",
    hooks: &[
        TlsHook { symbol: "SSL_write", entry: Entry::Plain, function_id: 1 },
        TlsHook { symbol: "SSL_read", entry: Entry::Plain, function_id: 2 },
        TlsHook { symbol: "SSL_write_ex", entry: Entry::Ex, function_id: 3 },
        TlsHook { symbol: "SSL_read_ex", entry: Entry::Ex, function_id: 4 },
    ],
    file_prefix: "libssl.so",
    watch_bit: 0,
    version: openssl_version,
};

/// A function only BoringSSL's libssl defines.
pub const BORINGSSL_MARKER: &str = "SSL_CTX_set_strict_cipher_list";

pub fn is_boringssl(symbols: &Symbols) -> bool {
    symbols.get(BORINGSSL_MARKER).is_some()
}

/// `OpenSSL 3.0.19 27 Jan 2026` lives in libcrypto, next to libssl; an
/// executable with OpenSSL linked in carries it itself.
fn openssl_version(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let file = match name.strip_prefix("libssl") {
        Some(rest) => path.with_file_name(format!("libcrypto{rest}")),
        None => path.to_path_buf(),
    };
    version::find_after(&file, b"OpenSSL ")
}
