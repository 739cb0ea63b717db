#![no_main]
// Captured frames (Ethernet, raw IP), ClientHello randoms, ring buffer
// records as the kernel could write them (MySQL and PostgreSQL statements
// among them), and PostgreSQL process titles: garbage in, no panic out.
use cleartap::packets::frame;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = frame::parse(frame::LINKTYPE_ETHERNET, data);
    let _ = frame::parse(frame::LINKTYPE_RAW, data);
    let _ = frame::client_hello_random(data);
    // Ring buffer records are 8-byte aligned: copy into aligned memory.
    let mut aligned = vec![0u64; data.len().div_ceil(8)];
    // SAFETY: the u64 buffer has room for data.len() bytes.
    let bytes = unsafe { std::slice::from_raw_parts_mut(aligned.as_mut_ptr().cast::<u8>(), data.len()) };
    bytes.copy_from_slice(data);
    let _ = cleartap::events::decode(bytes);
    let _ = cleartap::assembly::sql::postgres_backend(&String::from_utf8_lossy(data));
});
