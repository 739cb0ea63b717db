//! TLS secrets as an NSS key log file (SSLKEYLOGFILE), which Wireshark
//! reads: `<label> <client_random hex> <secret hex>`, one line per secret,
//! written and flushed as it arrives, never twice.

use std::collections::{HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{Context, Result};

/// Lines remembered for de-duplication: a handshake repeats none after
/// it ends, so a bounded window is enough.
const REMEMBERED: usize = 4096;

pub struct KeyLog {
    file: File,
    recent: HashSet<String>,
    order: VecDeque<String>,
    pub written: u64,
}

impl KeyLog {
    /// Created with mode 0600, never through a symlink; an existing file
    /// is refused unless `append`.
    pub fn create(path: &Path, append: bool) -> Result<KeyLog> {
        let mut options = OpenOptions::new();
        options.write(true).mode(0o600).custom_flags(libc::O_NOFOLLOW);
        if append {
            options.create(true).append(true);
        } else {
            options.create_new(true);
        }
        let file = options.open(path).with_context(|| {
            format!(
                "--keylog {}: cannot create it (an existing file needs --force to be appended to)",
                path.display()
            )
        })?;
        Ok(KeyLog { file, recent: HashSet::new(), order: VecDeque::new(), written: 0 })
    }

    pub fn secret(&mut self, label: &str, client_random: &[u8], secret: &[u8]) -> io::Result<()> {
        let line = format_line(label, client_random, secret);
        if !self.recent.insert(line.clone()) {
            return Ok(());
        }
        self.order.push_back(line.clone());
        if self.order.len() > REMEMBERED {
            if let Some(old) = self.order.pop_front() {
                self.recent.remove(&old);
            }
        }
        self.file.write_all(line.as_bytes())?;
        self.file.flush()?;
        self.written += 1;
        Ok(())
    }
}

fn format_line(label: &str, client_random: &[u8], secret: &[u8]) -> String {
    format!("{label} {} {}\n", hex(client_random), hex(secret))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn lines_are_nss_format_once_each_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.log");
        let mut log = KeyLog::create(&path, false).unwrap();
        log.secret("CLIENT_RANDOM", &[0xab; 32], &[0x01, 0xff]).unwrap();
        log.secret("CLIENT_RANDOM", &[0xab; 32], &[0x01, 0xff]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("CLIENT_RANDOM {} 01ff\n", "ab".repeat(32)));
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(KeyLog::create(&path, false).is_err(), "an existing file is not overwritten");
        assert!(KeyLog::create(&path, true).is_ok());
        let link = dir.path().join("link.log");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(KeyLog::create(&link, true).is_err(), "never through a symlink");
    }
}
