//! Base64 of TLS payloads, the bulk of every JSON line: `base64-simd`
//! (AVX2, NEON) everywhere, and on x86-64 CPUs with AVX-512 VBMI the 48
//! bytes -> 64 characters loop of Muła and Lemire ("Base64 encoding and
//! decoding at almost the speed of a memory copy", 2019), which no
//! maintained crate has. Measured here (Sapphire Rapids, 1 MiB in cache):
//! 11 GB/s against base64-simd's 5.8. base64 was 30% of the JSON stream's
//! CPU; the 1 GiB stream's cleartap CPU went from 1.45 s to 1.24-1.32 s
//! (what is left is memory traffic: the payload is read cold).

/// Appends the standard base64 of `data` (with padding) to `buf`.
pub fn encode_append(data: &[u8], buf: &mut Vec<u8>) {
    let done = bulk_append(data, buf);
    base64_simd::STANDARD.encode_append(&data[done..], buf);
}

/// Encodes the longest prefix of `data` the fast loop takes (a multiple of
/// 48 bytes, so its characters need no padding and the rest continues the
/// same encoding) and returns its length.
#[cfg(target_arch = "x86_64")]
fn bulk_append(data: &[u8], buf: &mut Vec<u8>) -> usize {
    if data.len() < avx512::BLOCK || !avx512::available() {
        return 0;
    }
    let blocks = data.len() / avx512::BLOCK;
    buf.reserve(blocks * 64);
    let start = buf.len();
    // SAFETY: the CPU has the features (checked above); the reserve makes
    // room for `blocks * 64` bytes after `start`, every one of which
    // `encode_blocks` writes before `set_len` exposes them.
    unsafe {
        avx512::encode_blocks(&data[..blocks * avx512::BLOCK], buf.as_mut_ptr().add(start));
        buf.set_len(start + blocks * 64);
    }
    blocks * avx512::BLOCK
}

#[cfg(not(target_arch = "x86_64"))]
fn bulk_append(_: &[u8], _: &mut Vec<u8>) -> usize {
    0
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use std::arch::x86_64::*;

    /// Input bytes per step: 16 groups of 3, 64 characters out.
    pub const BLOCK: usize = 48;

    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    /// Every group of 3 bytes b0 b1 b2 spread over 4 as b1 b0 b2 b1: read
    /// as a little-endian u32, its four 6-bit fields then start at bits 10,
    /// 4, 22 and 16 (`SHIFTS`, and 32 more for the second u32 of a u64).
    const SPREAD: [u8; 64] = {
        let mut s = [0u8; 64];
        let mut group = 0;
        while group < 16 {
            let b = 3 * group as u8;
            s[4 * group] = b + 1;
            s[4 * group + 1] = b;
            s[4 * group + 2] = b + 2;
            s[4 * group + 3] = b + 1;
            group += 1;
        }
        s
    };
    const SHIFTS: [u8; 8] = [10, 4, 22, 16, 42, 36, 54, 48];

    pub fn available() -> bool {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vbmi")
    }

    /// Writes the base64 of `src` (whole blocks) at `dst`.
    ///
    /// # Safety
    /// The CPU has AVX-512 F, BW and VBMI (`available`), `src.len()` is a
    /// multiple of `BLOCK`, and `dst` is valid for `src.len() / 3 * 4`
    /// bytes of writes.
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    pub unsafe fn encode_blocks(src: &[u8], dst: *mut u8) {
        debug_assert_eq!(src.len() % BLOCK, 0);
        let spread = _mm512_loadu_si512(SPREAD.as_ptr().cast());
        let shifts = _mm512_set1_epi64(i64::from_le_bytes(SHIFTS));
        let alphabet = _mm512_loadu_si512(ALPHABET.as_ptr().cast());
        for (i, block) in src.chunks_exact(BLOCK).enumerate() {
            // A masked load reads the block's 48 bytes and nothing past them.
            let input = _mm512_maskz_loadu_epi8((1 << BLOCK) - 1, block.as_ptr().cast());
            let groups = _mm512_permutexvar_epi8(spread, input);
            // Each byte: 8 bits from its field's start; the alphabet
            // lookup below reads only the low 6 of them.
            let fields = _mm512_multishift_epi64_epi8(shifts, groups);
            let chars = _mm512_permutexvar_epi8(fields, alphabet);
            _mm512_storeu_si512(dst.add(64 * i).cast(), chars);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(len: usize, seed: usize) -> Vec<u8> {
        (0..len).map(|i| (i.wrapping_mul(131) ^ seed.wrapping_mul(7919)) as u8).collect()
    }

    #[test]
    fn equals_base64_simd_for_every_length_and_every_byte() {
        for len in (0..600).chain([4095, 4096, 65_536, 1 << 20]) {
            let data = payload(len, len);
            let mut buf = b"prefix".to_vec();
            encode_append(&data, &mut buf);
            let expected = base64_simd::STANDARD.encode_to_string(&data);
            assert_eq!(&buf[..6], b"prefix");
            assert_eq!(std::str::from_utf8(&buf[6..]).unwrap(), expected, "{len} bytes");
        }
        let all: Vec<u8> = (0..=255u8).cycle().take(48 * 64).collect();
        let mut buf = Vec::new();
        encode_append(&all, &mut buf);
        assert_eq!(buf, base64_simd::STANDARD.encode_to_string(&all).as_bytes());
    }

    /// The fast loop itself, not only the fallback, where the CPU has
    /// AVX-512 VBMI. Elsewhere (AMD EPYC before Zen 4, say, which our
    /// machines are sometimes given) the loop cannot run, neither here nor
    /// in production, and no emulator here runs AVX-512: it says so and
    /// stops, the fallback being what `encode_append` uses there (tested
    /// above). CLEARTAP_TEST_REQUIRE_AVX512=1 makes a missing VBMI a failure.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_avx512_loop_equals_base64_simd() {
        if !avx512::available() {
            assert!(
                std::env::var_os("CLEARTAP_TEST_REQUIRE_AVX512").is_none(),
                "this CPU has no AVX-512 VBMI, and CLEARTAP_TEST_REQUIRE_AVX512 is set"
            );
            eprintln!(
                "not run: this CPU has no AVX-512 VBMI (the fallback, tested above, is what runs here)"
            );
            return;
        }
        for blocks in 0..40 {
            let data = payload(blocks * avx512::BLOCK, blocks);
            let mut out = vec![0u8; blocks * 64];
            // SAFETY: checked `available`; whole blocks; `out` holds 64 per block.
            unsafe { avx512::encode_blocks(&data, out.as_mut_ptr()) };
            assert_eq!(out, base64_simd::STANDARD.encode_to_string(&data).as_bytes());
        }
    }
}
