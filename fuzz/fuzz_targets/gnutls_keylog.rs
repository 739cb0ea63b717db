#![no_main]
// The disassembly that finds GnuTLS's key log function: any bytes.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = cleartap::discover::gnutls_keylog::find_in(data);
});
