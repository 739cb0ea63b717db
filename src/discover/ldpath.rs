//! Where the dynamic loader would find a library a program needs, as that
//! program's mount namespace sees it: used when a library must be probed
//! before the program has mapped it (a bash linked to libreadline.so,
//! seen at exec).

use std::fs;
use std::path::{Path, PathBuf};

use object::ReadRef;

use super::pinned::PinnedFile;
use super::procs::{self, FileId};

/// Debian's multiarch directories of the architecture cleartap runs on.
#[cfg(not(target_arch = "aarch64"))]
const MULTIARCH_DIRS: [&str; 2] = ["/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu"];
#[cfg(target_arch = "aarch64")]
const MULTIARCH_DIRS: [&str; 2] = ["/lib/aarch64-linux-gnu", "/usr/lib/aarch64-linux-gnu"];

/// The loader's default directories on Debian-like and other systems.
const DEFAULT_DIRS: [&str; 7] =
    [MULTIARCH_DIRS[0], MULTIARCH_DIRS[1], "/lib64", "/usr/lib64", "/usr/local/lib", "/lib", "/usr/lib"];

/// A library found for a process: how cleartap reaches it and how the
/// process names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundLibrary {
    pub path: PathBuf,
    pub display_path: String,
    pub id: FileId,
}

/// `name` (a DT_NEEDED entry) for process `pid` (None: a program on this
/// host not running yet): the file it already maps under that name if any,
/// else the first match in its executable's `runpath`, the directories of
/// its `/etc/ld.so.conf.d`, and the defaults. `$ORIGIN` in a runpath is the
/// executable's directory.
pub fn locate(
    pid: Option<u32>,
    exe_display_path: &str,
    name: &str,
    runpath: &[String],
) -> Option<FoundLibrary> {
    if let Some(found) = pid.and_then(|pid| mapped(pid, name)) {
        return Some(found);
    }
    let on_host = |path: &str| match pid {
        Some(pid) => procs::host_path(pid, path),
        None => PathBuf::from(path),
    };
    let origin = exe_display_path.rsplit_once('/').map_or("/", |(dir, _)| dir);
    let dirs = runpath
        .iter()
        .map(|d| d.replace("$ORIGIN", origin).replace("${ORIGIN}", origin))
        .chain(conf_dirs(pid, &on_host("/etc/ld.so.conf.d")))
        .chain(DEFAULT_DIRS.iter().map(|d| d.to_string()));
    for dir in dirs {
        let display_path = format!("{}/{name}", dir.trim_end_matches('/'));
        if let Some((path, id)) = procs::reachable(on_host(&display_path), Some(&display_path)) {
            return Some(FoundLibrary { path, display_path, id });
        }
    }
    None
}

/// The directories this host's loader searches, in its order: those of
/// `/etc/ld.so.conf.d`, then the defaults.
pub fn host_dirs() -> Vec<String> {
    let mut dirs = conf_dirs(None, Path::new("/etc/ld.so.conf.d"));
    dirs.extend(DEFAULT_DIRS.iter().map(|d| d.to_string()));
    let mut seen = std::collections::HashSet::new();
    dirs.retain(|d| seen.insert(d.clone()));
    dirs
}

fn mapped(pid: u32, name: &str) -> Option<FoundLibrary> {
    let mapping = procs::mappings(pid).into_iter().find(|m| m.path.rsplit('/').next() == Some(name))?;
    let (path, id) = procs::reachable(procs::host_path(pid, &mapping.path), Some(&mapping.path))?;
    Some(FoundLibrary { path, display_path: mapping.path, id })
}

/// Directories listed in the process's `/etc/ld.so.conf.d/*.conf` (plain
/// lines; `include` directives are not followed). Each file is opened
/// inside the process's root, regular files only, and read up to 64 KiB:
/// a container's `x.conf -> /dev/zero` must not make cleartap read forever.
fn conf_dirs(pid: Option<u32>, dir: &Path) -> Vec<String> {
    const MAX_CONF: u64 = 64 << 10;
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries.flatten().filter_map(|e| e.file_name().into_string().ok()).collect();
    names.sort();
    let open = |name: &str| {
        let path = format!("/etc/ld.so.conf.d/{name}");
        match pid {
            Some(pid) => PinnedFile::open_in_root(pid, &path),
            None => PinnedFile::open_beneath(Path::new("/"), &path),
        }
    };
    names
        .iter()
        .filter(|name| name.ends_with(".conf"))
        .filter_map(|name| open(name).ok())
        .filter_map(|file| {
            let bytes = file.data().read_bytes_at(0, file.len().min(MAX_CONF)).ok()?;
            Some(parse_conf(&String::from_utf8_lossy(bytes)))
        })
        .flatten()
        .collect()
}

fn parse_conf(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| l.starts_with('/'))
        .map(String::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conf_lines() {
        let text = "# comment\n/usr/local/lib\n\ninclude /etc/other/*.conf\n  /opt/x/lib # trailing\n";
        assert_eq!(parse_conf(text), ["/usr/local/lib", "/opt/x/lib"]);
    }

    #[test]
    fn finds_libc_mapped_and_by_search() {
        let me = std::process::id();
        let exe = procs::executable(me, None).unwrap();
        let libc = locate(Some(me), &exe.display_path, "libc.so.6", &[]).expect("libc is mapped");
        assert!(libc.display_path.ends_with("/libc.so.6"));
        // A process that is gone: found by searching this host's directories.
        let searched =
            locate(Some(u32::MAX), "/bin/bash", "libc.so.6", &[]).expect("libc is in a default directory");
        assert_eq!(searched.id, libc.id);
        assert!(locate(Some(me), &exe.display_path, "libno-such-library.so.9", &[]).is_none());
    }

    #[test]
    fn origin_in_runpath() {
        let found = locate(None, "/lib/x86_64-linux-gnu/prog", "libc.so.6", &["$ORIGIN".into()]).unwrap();
        assert_eq!(found.display_path, "/lib/x86_64-linux-gnu/libc.so.6");
    }
}
