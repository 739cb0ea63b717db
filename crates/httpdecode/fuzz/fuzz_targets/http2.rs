#![no_main]
// Frames (after the client preface) in both directions, with gaps.
libfuzzer_sys::fuzz_target!(|data: &[u8]| httpdecode::fuzz_http2(data));
