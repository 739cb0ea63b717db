#![no_main]
// Any file on a host may be handed to the ELF readers: symbols,
// dependencies, Go build info and pclntab, RET offsets, BoringSSL and
// OpenSSL found in stripped code, BoringSSL's key log function, NSS
// freebl's secret points, OpenSSL's internal probe points. None may panic.
use cleartap::discover::elf::{Dependencies, Isa, Symbols};
use cleartap::discover::golang::{self, GoBinary};
use cleartap::discover::{boringssl, nss_freebl, openssl_stripped};
use cleartap::sources::openssl;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(symbols) = Symbols::parse(data, &["SSL_write", "SSL_read", "gnutls_init", "readline"]) {
        // The versions whose internal functions cleartap decodes calls to.
        for version in ["3.0.2", "1.1.1w"] {
            let _ = openssl::internal_points(data, &symbols, Some(version));
        }
    }
    let _ = Dependencies::parse(data);
    let _ = boringssl::find_in(data);
    let _ = boringssl::find_keylog_in(data);
    let _ = openssl_stripped::find_in(data);
    let _ = nss_freebl::find(data);
    if let Ok(Some(go)) = GoBinary::parse(data, &["crypto/tls.(*Conn).Read", "crypto/tls.(*Conn).Write"]) {
        for name in ["crypto/tls.(*Conn).Read", "crypto/tls.(*Conn).Write"] {
            if let Some(f) = go.function(name) {
                // Both decoders: the file's own header is not trusted to pick one.
                for isa in [Isa::X86_64, Isa::Aarch64] {
                    let _ = golang::ret_offsets(data, f, isa);
                }
            }
        }
    }
});
