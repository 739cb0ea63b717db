//! TLS secrets as NSS key log lines (SSLKEYLOGFILE), which Wireshark reads:
//! `<label> <client_random hex> <secret hex>`. `KeyLines` keeps each
//! (label, client random) once; `KeyLog` writes the lines to a file, each
//! flushed as it arrives. OpenSSL hands over no lines, only its raw
//! secrets: `secrets` checks them and derives the lines.

pub mod secrets;

use std::collections::{HashSet, VecDeque};
use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

use anyhow::{Context, Result};

/// Secrets remembered for de-duplication: a handshake repeats none after
/// it ends, so a bounded window is enough.
const REMEMBERED: usize = 4096;

/// The first secret of each (label, client random): a library may hand
/// over the same secret twice, or a later generation of it (a TLS 1.3 key
/// update) under the same label, which would make the line wrong.
#[derive(Default)]
pub struct KeyLines {
    seen: HashSet<(String, Vec<u8>)>,
    order: VecDeque<(String, Vec<u8>)>,
    /// Secrets refused for an unknown label or a wrong length.
    pub invalid: u64,
}

/// The labels of the NSS key log format that TLS 1.2 and 1.3 libraries
/// hand over (the label comes from the traced process's memory).
const TLS13_LABELS: [&str; 7] = [
    "CLIENT_EARLY_TRAFFIC_SECRET",
    "CLIENT_HANDSHAKE_TRAFFIC_SECRET",
    "SERVER_HANDSHAKE_TRAFFIC_SECRET",
    "CLIENT_TRAFFIC_SECRET_0",
    "SERVER_TRAFFIC_SECRET_0",
    "EARLY_EXPORTER_SECRET",
    "EXPORTER_SECRET",
];

/// A line a key log reader can trust: a known label, a 32-byte client
/// random, and a secret of the length that label has (TLS 1.2's master
/// secret is 48 bytes; TLS 1.3 secrets are the hash's, SHA-256 or SHA-384).
fn is_valid(label: &str, client_random: &[u8], secret: &[u8]) -> bool {
    client_random.len() == 32
        && match label {
            "CLIENT_RANDOM" => secret.len() == 48,
            _ => TLS13_LABELS.contains(&label) && matches!(secret.len(), 32 | 48),
        }
}

impl KeyLines {
    /// The line to write, or None when this label and random had one or
    /// the secret is not a valid one (counted in `invalid`).
    pub fn accept(&mut self, label: &str, client_random: &[u8], secret: &[u8]) -> Option<String> {
        if !is_valid(label, client_random, secret) {
            self.invalid += 1;
            return None;
        }
        let key = (label.to_string(), client_random.to_vec());
        if !self.seen.insert(key.clone()) {
            return None;
        }
        self.order.push_back(key);
        if self.order.len() > REMEMBERED {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        Some(format!("{label} {} {}\n", hex(client_random), hex(secret)))
    }
}

pub struct KeyLog {
    file: File,
    pub written: u64,
}

impl KeyLog {
    /// Created with mode 0600, never through a symlink; an existing file
    /// is refused unless `append`.
    pub fn create(path: &Path, append: bool) -> Result<KeyLog> {
        let existing = if append { crate::output::Existing::Append } else { crate::output::Existing::Refuse };
        let file = crate::output::create_private(path, existing).with_context(|| {
            format!(
                "--keylog {}: cannot create it (an existing file needs --force to be appended to)",
                path.display()
            )
        })?;
        Ok(KeyLog { file, written: 0 })
    }

    pub fn write(&mut self, line: &str) -> io::Result<()> {
        self.file.write_all(line.as_bytes())?;
        self.file.flush()?;
        self.written += 1;
        Ok(())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn lines_are_nss_format_and_once_per_label_and_random() {
        let mut lines = KeyLines::default();
        let line = lines.accept("CLIENT_RANDOM", &[0xab; 32], &[0x01; 48]).unwrap();
        assert_eq!(line, format!("CLIENT_RANDOM {} {}\n", "ab".repeat(32), "01".repeat(48)));
        assert_eq!(lines.accept("CLIENT_RANDOM", &[0xab; 32], &[0x01; 48]), None);
        assert_eq!(lines.accept("CLIENT_RANDOM", &[0xab; 32], &[0x02; 48]), None, "a later generation");
        assert!(lines.accept("EXPORTER_SECRET", &[0xab; 32], &[0x02; 32]).is_some());
        assert!(lines.accept("CLIENT_RANDOM", &[0xac; 32], &[0x02; 48]).is_some());
        assert_eq!(lines.invalid, 0);
    }

    #[test]
    fn only_known_labels_and_lengths_become_lines() {
        let mut lines = KeyLines::default();
        let bad: [(&str, usize, usize); 7] = [
            ("CLIENT_RANDOM", 32, 32),
            ("SERVER_TRAFFIC_SECRET_0", 32, 64),
            ("SERVER_TRAFFIC_SECRET_0", 16, 32),
            ("CLIENT_RANDOM\nCLIENT_RANDOM", 32, 48),
            ("CLIENT RANDOM", 32, 48),
            ("", 32, 48),
            ("\x1b]52;c;x\x07", 32, 32),
        ];
        for (label, random, secret) in bad {
            assert_eq!(lines.accept(label, &vec![1; random], &vec![2; secret]), None, "{label:?}");
        }
        assert_eq!(lines.invalid, bad.len() as u64);
        for label in TLS13_LABELS {
            assert!(lines.accept(label, &[3; 32], &[4; 48]).is_some(), "{label}");
        }
    }

    #[test]
    fn the_file_is_private_and_never_reached_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.log");
        let mut log = KeyLog::create(&path, false).unwrap();
        log.write("X 00 01\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "X 00 01\n");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(KeyLog::create(&path, false).is_err(), "an existing file is not overwritten");
        assert!(KeyLog::create(&path, true).is_ok());
        let link = dir.path().join("link.log");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(KeyLog::create(&link, true).is_err(), "never through a symlink");
    }
}
