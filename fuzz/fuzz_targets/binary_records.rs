#![no_main]
// `cleartap read` on any file: never a panic, and every line it hands on
// is one whole JSON-looking line (a `J` record's head, or a `T` record's
// head with its payload in base64), whatever the records claim. Half the
// inputs start with the magic record, to get past the first check.
use cleartap::output::binary::{read_lines, MAGIC};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut file = Vec::new();
    if data.first().is_some_and(|b| b & 1 == 1) {
        file.extend_from_slice(&[b'M', 0, 0, 0]);
        file.extend_from_slice(&(MAGIC.len() as u32).to_le_bytes());
        file.extend_from_slice(&0u32.to_le_bytes());
        file.extend_from_slice(MAGIC);
    }
    file.extend_from_slice(data.get(1..).unwrap_or_default());
    let mut total = 0usize;
    let result = read_lines(&file[..], |line| {
        assert!(line.ends_with(b"\n"));
        total += line.len();
        Ok(())
    });
    if result.is_ok() {
        // base64 makes a payload 4/3 its size: the lines cannot be much larger than the file.
        assert!(total <= file.len() * 4 / 3 + 64 * file.len() / 12 + 64, "{total} from {}", file.len());
    }
});
