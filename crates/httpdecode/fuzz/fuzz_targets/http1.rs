#![no_main]
// Both directions of an HTTP/1 connection, split and interleaved as the
// input says, with gaps: the decoder must never panic or hang.
libfuzzer_sys::fuzz_target!(|data: &[u8]| httpdecode::fuzz_http1(data));
