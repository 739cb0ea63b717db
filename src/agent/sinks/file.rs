//! `[sinks.file]`: JSON lines in a file rotated at `max_bytes`, `keep`
//! rotated files beside it (`events.jsonl.1` the newest), all mode 0600.
//! Rotation happens between events, so every file holds whole lines.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use super::{FlushTimer, Sink};
use crate::agent::config::FileSink;
use crate::agent::pipeline::Envelope;
use crate::output::{create_private, Existing};

pub struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    out: BufWriter<File>,
    size: u64,
    events: u64,
    rotations: u64,
    flush_timer: FlushTimer,
}

impl RotatingFile {
    pub fn open(config: &FileSink) -> io::Result<Self> {
        if let Some(dir) = config.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_private_dir(dir)?;
        }
        let (out, size) = open_appending(&config.path)?;
        Ok(RotatingFile {
            path: config.path.clone(),
            max_bytes: config.max_bytes,
            keep: config.keep,
            out,
            size,
            events: 0,
            rotations: 0,
            flush_timer: FlushTimer::default(),
        })
    }

    fn rotated(&self, n: u32) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(format!(".{n}"));
        name.into()
    }

    /// events.jsonl -> .1 -> .2 ... ; the oldest beyond `keep` is removed.
    fn rotate(&mut self) -> io::Result<()> {
        self.out.flush()?;
        if self.keep == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            let _ = std::fs::remove_file(self.rotated(self.keep));
            for n in (1..self.keep).rev() {
                let _ = std::fs::rename(self.rotated(n), self.rotated(n + 1));
            }
            std::fs::rename(&self.path, self.rotated(1))?;
        }
        (self.out, self.size) = open_appending(&self.path)?;
        self.rotations += 1;
        Ok(())
    }
}

fn open_appending(path: &Path) -> io::Result<(BufWriter<File>, u64)> {
    let file = create_private(path, Existing::Append)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    let size = file.metadata()?.len();
    Ok((BufWriter::with_capacity(1 << 16, file), size))
}

/// The directory of a file sink, created mode 0700 when missing.
fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) => Err(io::Error::new(e.kind(), format!("{}: {e}", dir.display()))),
    }
}

impl Sink for RotatingFile {
    fn name(&self) -> &'static str {
        "file"
    }

    fn send(&mut self, event: &Envelope) -> io::Result<()> {
        let len = event.json.len() as u64 + 1;
        if self.size > 0 && self.size + len > self.max_bytes {
            self.rotate()?;
        }
        self.out.write_all(&event.json)?;
        self.out.write_all(b"\n")?;
        self.size += len;
        self.events += 1;
        Ok(())
    }

    fn tick(&mut self) -> io::Result<()> {
        if !self.flush_timer.due() {
            return Ok(());
        }
        self.out.flush()
    }

    fn close(&mut self) -> io::Result<String> {
        self.out.flush()?;
        Ok(format!(
            "file {}: {} events written, {} rotations",
            self.path.display(),
            self.events,
            self.rotations
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn event(seq: u64, len: usize) -> Envelope {
        Envelope { seq, source: "exec", json: vec![b'x'; len] }
    }

    #[test]
    fn rotates_between_whole_lines_and_keeps_n_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/events.jsonl");
        let config = FileSink { path: path.clone(), max_bytes: 100, keep: 2 };
        let mut sink = RotatingFile::open(&config).unwrap();
        for seq in 0..10 {
            sink.send(&event(seq, 39)).unwrap();
        }
        sink.close().unwrap();
        // 40 bytes a line, 2 lines a file: 5 files written, 3 kept.
        for p in [path.clone(), sink.rotated(1), sink.rotated(2)] {
            let text = std::fs::read_to_string(&p).unwrap();
            assert_eq!(text.len(), 80, "{}", p.display());
            assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        }
        assert!(!sink.rotated(3).exists());
        let dir_mode = std::fs::metadata(path.parent().unwrap()).unwrap().permissions().mode();
        assert_eq!(dir_mode & 0o777, 0o700);
    }
}
