#![no_main]
// Any file on a host may be handed to the ELF readers: symbols,
// dependencies, Go build info and pclntab, RET offsets, BoringSSL found in
// stripped code. None may panic.
use cleartap::discover::boringssl;
use cleartap::discover::elf::{Dependencies, Isa, Symbols};
use cleartap::discover::golang::{self, GoBinary};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = Symbols::parse(data, &["SSL_write", "gnutls_init", "readline"]);
    let _ = Dependencies::parse(data);
    let _ = boringssl::find(data);
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
