#![no_main]
// A body in any bytes under gzip, deflate or br (first byte picks): the
// decompressors must never panic, hang or grow past the limit.
libfuzzer_sys::fuzz_target!(|data: &[u8]| httpdecode::fuzz_body(data));
