//! OpenSSL 1.1.x / 3.x and BoringSSL builds that export the same names.

use super::{Shape, TlsHook};

pub const LIBRARY: &str = "openssl";

/// Values of `enum ct_tls_function` in `bpf/events.h`.
pub const HOOKS: [TlsHook; 4] = [
    TlsHook { symbol: "SSL_write", shape: Shape::Plain, function_id: 1 },
    TlsHook { symbol: "SSL_read", shape: Shape::Plain, function_id: 2 },
    TlsHook { symbol: "SSL_write_ex", shape: Shape::Ex, function_id: 3 },
    TlsHook { symbol: "SSL_read_ex", shape: Shape::Ex, function_id: 4 },
];

/// Does a mapped path look like OpenSSL's libssl (`libssl.so`, `libssl.so.3`,
/// `libssl.so.1.1`, ...)?
pub fn is_library_path(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.starts_with("libssl.so")
}

/// The function name of an `enum ct_tls_function` value.
pub fn function_name(function_id: u8) -> &'static str {
    HOOKS.iter().find(|h| h.function_id == function_id).map_or("?", |h| h.symbol)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_libssl_names() {
        assert!(is_library_path("/usr/lib/x86_64-linux-gnu/libssl.so.3"));
        assert!(is_library_path("/opt/app/libssl.so.1.1"));
        assert!(is_library_path("libssl.so"));
        assert!(!is_library_path("/usr/lib/libssl3.so"));
        assert!(!is_library_path("/usr/lib/x86_64-linux-gnu/libcrypto.so.3"));
        assert!(!is_library_path("/home/libssl.so.d/libc.so.6"));
    }

    #[test]
    fn function_names_round_trip() {
        for h in HOOKS {
            assert_eq!(function_name(h.function_id), h.symbol);
        }
        assert_eq!(function_name(0), "?");
    }
}
