//! Changed copies of a real file, for the tests of the readers of host
//! files (unit and end-to-end): each reader must refuse a copy or answer
//! as for the original, never panic and never answer otherwise. A file on
//! the host is hostile input; a few changed bytes where a reader looks are
//! what a fuzzer needs hours to reach from scratch.

/// A deterministic generator (xorshift64), so that a failure repeats: the
/// noise of every test that feeds readers changed or random bytes.
pub fn noise(seed: u64) -> impl FnMut() -> u64 {
    let mut state = seed;
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}

/// Calls `each` with `copies` copies of `bytes`, each with one to four
/// bytes changed inside `ranges` (start, length), and restores them after.
pub fn with_changed_bytes(
    bytes: &mut [u8],
    ranges: &[(usize, usize)],
    copies: usize,
    mut each: impl FnMut(&[u8]),
) {
    let mut next = noise(0x2545_f491_4f6c_dd1d);
    let ranges: Vec<(usize, usize)> =
        ranges.iter().filter(|&&(start, len)| len > 0 && start < bytes.len()).copied().collect();
    assert!(!ranges.is_empty(), "no range inside the file to change");
    for _ in 0..copies {
        let mut changed = Vec::new();
        for _ in 0..1 + next() % 4 {
            let (start, len) = ranges[(next() % ranges.len() as u64) as usize];
            let at = (start + (next() % len as u64) as usize).min(bytes.len() - 1);
            changed.push((at, bytes[at]));
            bytes[at] = next() as u8;
        }
        each(bytes);
        for &(at, old) in changed.iter().rev() {
            bytes[at] = old;
        }
    }
}
