//! Library versions read from the bytes of the file (the strings a library
//! prints about itself), never by running it.

use super::pinned::{Chunk, PinnedFile};

/// Longer than any prefix and version searched for: a match is never cut
/// at the edge of a chunk of the file.
const OVERLAP: usize = 64;

/// The first `X.Y[.Z]` version right after `prefix` (e.g. `OpenSSL `).
pub fn find_after(file: &PinnedFile, prefix: &[u8]) -> Option<String> {
    file.scan(OVERLAP, |chunk: Chunk<'_>| {
        // A match starting in the overlap is whole in the next chunk.
        let limit = if chunk.last { chunk.bytes.len() } else { chunk.bytes.len() - OVERLAP };
        find_after_before(chunk.bytes, prefix, limit)
    })
}

pub fn find_after_in(bytes: &[u8], prefix: &[u8]) -> Option<String> {
    find_after_before(bytes, prefix, bytes.len())
}

/// [`find_after_in`] for a `prefix` starting before `limit`.
fn find_after_before(bytes: &[u8], prefix: &[u8], limit: usize) -> Option<String> {
    let mut start = 0;
    while let Some(at) = find(&bytes[start..], prefix).map(|at| start + at) {
        if at >= limit {
            return None;
        }
        if let Some(v) = leading_version(&bytes[at + prefix.len()..]) {
            return Some(v);
        }
        start = at + 1;
    }
    None
}

/// The first NUL-delimited string that is only a version starting with
/// `major` (e.g. `3.7.9` in GnuTLS, `4.35` in NSPR).
pub fn find_bare(file: &PinnedFile, major: u8) -> Option<String> {
    file.scan(OVERLAP, |chunk: Chunk<'_>| {
        let mut bytes = chunk.bytes;
        // Skip the string cut at the start of a chunk (the previous chunk
        // held it whole) and the one cut at its end (the next will).
        if !chunk.first {
            bytes = &bytes[bytes.iter().position(|&b| b == 0)?..];
        }
        if !chunk.last {
            bytes = &bytes[..bytes.iter().rposition(|&b| b == 0)?];
        }
        find_bare_in(bytes, major)
    })
}

pub fn find_bare_in(bytes: &[u8], major: u8) -> Option<String> {
    bytes
        .split(|&b| b == 0)
        .filter(|s| s.first() == Some(&major) && s.len() <= 12)
        .find_map(|s| leading_version(s).filter(|v| v.len() == s.len()))
}

/// `digits.digits[.digits]` at the start of `s`, with a patch letter if
/// one follows the last digit (OpenSSL 1.1.1w: its letters are releases
/// with different struct layouts).
fn leading_version(s: &[u8]) -> Option<String> {
    let end = s.iter().position(|b| !(b.is_ascii_digit() || *b == b'.')).unwrap_or(s.len());
    let v = std::str::from_utf8(&s[..end]).ok()?.trim_end_matches('.');
    let parts: Vec<&str> = v.split('.').collect();
    let valid = (2..=4).contains(&parts.len()) && parts.iter().all(|p| !p.is_empty() && p.len() <= 4);
    if !valid {
        return None;
    }
    let letter = match (s.get(v.len()), s.get(v.len() + 1)) {
        (Some(l), next)
            if v.len() == end && l.is_ascii_lowercase() && !next.is_some_and(u8::is_ascii_alphanumeric) =>
        {
            Some(*l as char)
        }
        _ => None,
    };
    Some(letter.map_or_else(|| v.to_string(), |l| format!("{v}{l}")))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_after_a_prefix() {
        let blob = b"\0OpenSSL xyz\0OpenSSL 3.0.19 27 Jan 2026\0";
        assert_eq!(find_after_in(blob, b"OpenSSL ").as_deref(), Some("3.0.19"));
        assert_eq!(find_after_in(b"OpenSSL \0", b"OpenSSL "), None);
        assert_eq!(find_after_in(b"", b"OpenSSL "), None);
        let old = b"\0OpenSSL 1.1.1w  11 Sep 2023\0";
        assert_eq!(find_after_in(old, b"OpenSSL ").as_deref(), Some("1.1.1w"));
        assert_eq!(find_after_in(b"OpenSSL 1.1.1 11 Sep 2018", b"OpenSSL ").as_deref(), Some("1.1.1"));
        assert_eq!(find_after_in(b"OpenSSL 1.1.1wx", b"OpenSSL ").as_deref(), Some("1.1.1"));
    }

    #[test]
    fn bare_versions() {
        assert_eq!(find_bare_in(b"x\x003.7.9\0y", b'3').as_deref(), Some("3.7.9"));
        assert_eq!(find_bare_in(b"\x004.35\0", b'4').as_deref(), Some("4.35"));
        assert_eq!(find_bare_in(b"\x003\x003.\x003.x\x0033333333333.1\0", b'3'), None);
    }

    #[test]
    fn versions_found_across_the_chunks_a_file_is_read_in() {
        use std::io::Write;
        let edge = 1usize << 20;
        for at in [edge - 70, edge - 64, edge - 12, edge - 3, edge, 2 * edge - 40] {
            let mut bytes = vec![b'x'; 3 * edge];
            let text = b"\0OpenSSL 3.0.19 27 Jan 2026\0";
            bytes[at..at + text.len()].copy_from_slice(text);
            bytes[at + 200..at + 207].copy_from_slice(b"\x003.7.9\0");
            let mut tmp = tempfile::NamedTempFile::new().unwrap();
            tmp.write_all(&bytes).unwrap();
            let file = PinnedFile::open(tmp.path()).unwrap();
            assert_eq!(find_after(&file, b"OpenSSL ").as_deref(), Some("3.0.19"), "at {at}");
            assert_eq!(find_bare(&file, b'3').as_deref(), Some("3.7.9"), "at {at}");
        }
    }
}
