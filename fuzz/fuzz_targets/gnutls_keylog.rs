#![no_main]
// The disassembly that finds GnuTLS's key log function: any bytes, as a
// whole file (x86-64 or aarch64, as its ELF header says) and as one
// function's code for each instruction set's tracer (each instruction
// decoded once, and up to 8 times as the BoringSSL finder follows joins).
use cleartap::discover::gnutls_keylog::find_in;
use cleartap::discover::trace::{trace, trace_paths, Aarch64, X86_64};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = find_in(data);
    let _ = trace::<X86_64>(data, 0x1000);
    let _ = trace::<Aarch64>(data, 0x1000);
    let _ = trace_paths::<X86_64>(data, 0x1000, 8);
    let _ = trace_paths::<Aarch64>(data, 0x1000, 8);
});
