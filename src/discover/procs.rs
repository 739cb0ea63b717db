//! Processes and the files they map, read from `/proc`.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// One file-backed mapping of a process (a line of `/proc/PID/maps`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub file_offset: u64,
    pub inode: u64,
    /// The path as the process sees it (inside its own mount namespace).
    pub path: String,
}

/// A file identified the way the kernel attaches uprobes: by device and
/// inode. Two processes mapping the same library share one `FileId`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    pub fn of(path: &Path) -> std::io::Result<FileId> {
        let meta = fs::metadata(path)?;
        Ok(FileId { dev: meta.dev(), ino: meta.ino() })
    }
}

/// Every numeric entry of `/proc`.
pub fn all_pids() -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect()
}

/// The file-backed mappings of `pid`; empty if it exited or is unreadable.
pub fn mappings(pid: u32) -> Vec<Mapping> {
    fs::read_to_string(format!("/proc/{pid}/maps")).map(|text| parse_maps(&text)).unwrap_or_default()
}

/// The inode numbers of every file any process maps.
pub fn mapped_inodes() -> std::collections::HashSet<u64> {
    all_pids().into_iter().flat_map(mappings).map(|m| m.inode).collect()
}

/// Parse the text of `/proc/PID/maps`, keeping file-backed lines only.
pub fn parse_maps(text: &str) -> Vec<Mapping> {
    text.lines().filter_map(parse_maps_line).collect()
}

fn parse_maps_line(line: &str) -> Option<Mapping> {
    // start-end perms offset dev inode path (path may contain spaces)
    let mut fields = line.splitn(6, ' ');
    let (start, end) = fields.next()?.split_once('-')?;
    let _perms = fields.next()?;
    let offset = fields.next()?;
    let _dev = fields.next()?;
    let inode: u64 = fields.next()?.parse().ok()?;
    let path = fields.next()?.trim_start();
    if inode == 0 || !path.starts_with('/') {
        return None;
    }
    Some(Mapping {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        file_offset: u64::from_str_radix(offset, 16).ok()?,
        inode,
        path: path.strip_suffix(" (deleted)").unwrap_or(path).to_string(),
    })
}

/// The path through which this process (cleartap) can open a file that
/// `pid` maps, even when `pid` lives in another mount namespace.
pub fn host_path(pid: u32, path: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/root{path}"))
}

/// The executable of a process, as cleartap can attach to it.
#[derive(Debug, Clone)]
pub struct Executable {
    /// A path that reaches the file: the plain path when this process sees
    /// the same file there (it outlives the process), else /proc/PID/exe.
    pub path: PathBuf,
    /// The path as the process sees it.
    pub display_path: String,
    pub id: FileId,
    /// The process it was found through (possibly gone since); None when
    /// found by its path alone.
    pub pid: Option<u32>,
}

impl Executable {
    /// Opens the file once (see `discover::pinned`): through the process's
    /// `/proc/PID/exe` while it runs (the very file it executes, whatever
    /// its name now leads to), else by its path, checking it is still the
    /// file that was found there.
    pub fn open(&self) -> anyhow::Result<super::pinned::PinnedFile> {
        use super::pinned::{test_delay, PinnedFile};
        test_delay(&self.path);
        if let Some(pid) = self.pid {
            let running = PinnedFile::open(Path::new(&format!("/proc/{pid}/exe")));
            if let Some(file) = running.ok().filter(|f| f.id() == self.id) {
                return Ok(file);
            }
        }
        PinnedFile::open_expecting(&self.path, self.id)
    }
}

/// The executable of `pid`; `exec_path` (the name it was exec'd under)
/// stands in when the process has already exited.
pub fn executable(pid: u32, exec_path: Option<&str>) -> Option<Executable> {
    let exe = PathBuf::from(format!("/proc/{pid}/exe"));
    let display_path = match fs::read_link(&exe) {
        Ok(p) => p.display().to_string(),
        Err(_) => exec_path?.to_string(),
    };
    let (path, id) = reachable(exe, Some(&display_path))?;
    Some(Executable { path, display_path, id, pid: Some(pid) })
}

/// An executable known by its path on this host, before any process runs it.
pub fn executable_at(path: &str) -> Option<Executable> {
    let (path_buf, id) = reachable(PathBuf::from(path), None)?;
    Some(Executable { path: path_buf, display_path: path.to_string(), id, pid: None })
}

/// How cleartap reaches a file a process knows as `plain` (absolute, or
/// None), through `via` (/proc/PID/root/..., /proc/PID/exe): the plain
/// path when this process sees the same file there (it outlives the
/// process); else `via` while the process lives; else, the process being
/// gone, the file under the same name here, most likely the same one.
pub fn reachable(via: PathBuf, plain: Option<&str>) -> Option<(PathBuf, FileId)> {
    let plain = plain.map(PathBuf::from);
    let plain_id = plain.as_deref().and_then(|p| FileId::of(p).ok());
    match (FileId::of(&via), plain, plain_id) {
        (Ok(a), Some(p), Some(b)) if a == b => Some((p, a)),
        (Ok(a), _, _) => Some((via, a)),
        (Err(_), Some(p), Some(b)) => Some((p, b)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_file_backed_lines_only() {
        let text = "\
7f0000000000-7f0000001000 r--p 00000000 fe:01 1234 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f0000001000-7f0000002000 r-xp 00001000 fe:01 1234 /usr/lib/x86_64-linux-gnu/libssl.so.3
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]
55d000000000-55d000001000 rw-p 00000000 00:00 0
7f0000003000-7f0000004000 r-xp 00002000 fe:01 99 /tmp/my dir/libssl.so.3 (deleted)
";
        let maps = parse_maps(text);
        assert_eq!(maps.len(), 3);
        assert_eq!(maps[1].start, 0x7f0000001000);
        assert_eq!(maps[1].file_offset, 0x1000);
        assert_eq!(maps[1].inode, 1234);
        assert_eq!(maps[2].path, "/tmp/my dir/libssl.so.3");
    }

    #[test]
    fn garbage_lines_are_skipped() {
        for line in ["", "zz", "1-2 r 0 0 x /a", "g-1 r-xp 0 0 1 /a", "1-2 r-xp q 0 1 /a"] {
            assert!(parse_maps(line).is_empty(), "{line:?}");
        }
    }

    #[test]
    fn own_executable() {
        let exe = executable(std::process::id(), None).unwrap();
        assert!(exe.display_path.contains("cleartap"));
        assert_eq!(exe.path, PathBuf::from(&exe.display_path));
        assert!(executable(u32::MAX, None).is_none());
        assert_eq!(executable(u32::MAX, Some("/bin/sh")).unwrap().display_path, "/bin/sh");
        assert_eq!(executable_at("/bin/sh").unwrap().id, FileId::of(Path::new("/bin/sh")).unwrap());
        assert!(executable_at("/no/such/program").is_none());
    }

    #[test]
    fn reachable_prefers_the_lasting_path() {
        let via = host_path(std::process::id(), "/bin/sh");
        let (path, _) = reachable(via.clone(), Some("/bin/sh")).unwrap();
        assert_eq!(path, PathBuf::from("/bin/sh"));
        let gone = PathBuf::from("/proc/4294967295/root/bin/sh");
        assert_eq!(reachable(gone.clone(), Some("/bin/sh")).unwrap().0, PathBuf::from("/bin/sh"));
        assert!(reachable(gone, None).is_none());
        assert_eq!(reachable(via.clone(), Some("/no/such/file")).unwrap().0, via);
    }

    #[test]
    fn own_process_maps_are_readable() {
        let maps = mappings(std::process::id());
        assert!(maps.iter().any(|m| m.path.contains("cleartap")));
    }
}
