#![no_main]
// The disassembly that finds GnuTLS's key log function: any bytes, as a
// whole file (x86-64 or aarch64, as its ELF header says) and as one
// function's code for each instruction set's tracer.
use cleartap::discover::gnutls_keylog::{find_in, trace, Aarch64, X86_64};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = find_in(data);
    let _ = trace::<X86_64>(data, 0x1000);
    let _ = trace::<Aarch64>(data, 0x1000);
});
