#![no_main]
// Header blocks (up to 256 KiB) as the requests of one HTTP/2 connection:
// no header list may outgrow its budget, whatever the blocks reference,
// and every memory budget charge is given back. Seeds: the amplification
// shapes (`cargo run -p httpdecode --example fuzz_seeds`).
libfuzzer_sys::fuzz_target!(|data: &[u8]| httpdecode::fuzz_hpack(data));
