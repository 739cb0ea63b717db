//! Output writers. Each takes records and writes them; each flushes on
//! idle and on shutdown (not per record).

mod base64;
mod batched;
pub mod binary;
pub mod direct;
pub mod escape;
#[cfg(test)]
mod golden;
pub mod json;
pub mod json_to_text;
pub mod keylog;
pub mod pcapng;
pub mod schema;
pub mod stdout;
pub mod text;

use std::io;

use crate::context::{CommandRecord, ExecRecord, HttpRecord, QueryRecord, TlsRecord};

pub trait Output {
    fn tls(&mut self, record: &TlsRecord) -> io::Result<()>;
    fn command(&mut self, record: &CommandRecord) -> io::Result<()>;
    fn exec(&mut self, record: &ExecRecord) -> io::Result<()>;
    fn query(&mut self, record: &QueryRecord) -> io::Result<()>;
    fn http(&mut self, record: &HttpRecord) -> io::Result<()>;
    fn flush(&mut self) -> io::Result<()>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
    /// The JSON lines' fields with raw payloads, for bulk capture into a
    /// file (`output::binary`); `cleartap read` makes JSON or text of it.
    Binary,
}

/// What JSON lines read back (`cleartap tail`, `cleartap read`) are written as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LineFormat {
    Text,
    Json,
}

/// How records are shown.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    pub format: Format,
    /// Text: payloads as a hex dump.
    pub hex: bool,
    /// HTTP exchanges: bytes of each body to show.
    pub body_preview: usize,
}

/// How an output file that already exists is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    Refuse,
    Append,
    Replace,
}

/// A file for secrets (key logs, captures, the agent's event files):
/// created mode 0600, never through a final symlink, an existing one only
/// as `existing` allows, and only when it is a regular file owned by this
/// user with one link (not a file another user pre-created to receive the
/// secrets, nor a hard link to one); what is kept is set to 0600. A
/// replaced file is truncated only after those checks.
pub fn create_private(path: &std::path::Path, existing: Existing) -> io::Result<std::fs::File> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    let mut options = std::fs::OpenOptions::new();
    // O_NONBLOCK: opening a FIFO planted at the path fails instead of
    // waiting for a reader (it changes nothing for regular files).
    options.write(true).mode(0o600).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC);
    match existing {
        Existing::Refuse => options.create_new(true),
        Existing::Append => options.create(true).append(true),
        Existing::Replace => options.create(true),
    };
    let file = options.open(path)?;
    let meta = file.metadata()?;
    let refuse = |why: String| Err(io::Error::new(io::ErrorKind::PermissionDenied, why));
    if !meta.file_type().is_file() {
        return refuse("not a regular file".to_string());
    }
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return refuse(format!("owned by uid {}, not by this user (uid {me})", meta.uid()));
    }
    if meta.nlink() != 1 {
        return refuse(format!("it has {} links; a private file has one", meta.nlink()));
    }
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    if existing == Existing::Replace {
        file.set_len(0)?;
    }
    Ok(file)
}

/// Records in `style` on standard output: a regular file there is never
/// left ending in half a record (see `stdout`).
pub fn to_stdout(style: Style) -> io::Result<Box<dyn Output>> {
    // SAFETY: isatty on fd 1 only reads its state.
    if style.format == Format::Binary && unsafe { libc::isatty(1) } == 1 {
        return Err(io::Error::other(
            "--format binary writes raw payload bytes: redirect standard output to a file (cleartap read FILE shows it)",
        ));
    }
    let stdout = stdout::RecordStdout::new();
    // Where the file is written with direct I/O, records are built in its
    // stages themselves; text goes through a BufWriter (`writer`).
    Ok(match style.format {
        Format::Json if stdout.is_direct() => {
            Box::new(json::JsonOutput::over(stdout::DirectRecords::new(stdout), style))
        }
        Format::Binary if stdout.is_direct() => {
            Box::new(binary::BinaryOutput::over(stdout::DirectRecords::new(stdout), style))
        }
        _ => writer(style, stdout),
    })
}

/// The writer for `style` on `out`.
pub fn writer<W: io::Write + 'static>(style: Style, out: W) -> Box<dyn Output> {
    match style.format {
        Format::Text => Box::new(text::TextOutput::new(io::BufWriter::with_capacity(1 << 16, out), style)),
        // It builds its lines in a buffer of its own and writes them a MiB at a time.
        Format::Json => Box::new(json::JsonOutput::new(out, style)),
        Format::Binary => Box::new(binary::BinaryOutput::new(out, style)),
    }
}

/// The first `limit` bytes of a body as shown: decompressed when it was.
pub(crate) fn body_preview(body: &httpdecode::Body, limit: usize) -> &[u8] {
    let shown = body.decoded.as_deref().unwrap_or(&body.raw);
    &shown[..shown.len().min(limit)]
}

/// Human form of an errno returned by exec.
pub(crate) fn errno_name(ret: i32) -> String {
    if ret == 0 {
        return "ok".into();
    }
    let text = std::io::Error::from_raw_os_error(-ret).to_string();
    text.split(" (os error").next().unwrap_or(&text).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn mode(path: &std::path::Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn an_existing_file_is_kept_private_or_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.log");
        std::fs::write(&path, b"old\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(create_private(&path, Existing::Refuse).is_err());
        create_private(&path, Existing::Append).unwrap();
        assert_eq!(mode(&path), 0o600, "a 0644 file left as it was would leak what is appended");
        assert_eq!(std::fs::read(&path).unwrap(), b"old\n");
        create_private(&path, Existing::Replace).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"");

        // A second link (another user's name for the same inode).
        let link = dir.path().join("hard");
        std::fs::hard_link(&path, &link).unwrap();
        for existing in [Existing::Append, Existing::Replace] {
            let err = create_private(&path, existing).unwrap_err();
            assert!(err.to_string().contains("2 links"), "{err}");
        }
        std::fs::remove_file(&link).unwrap();

        // A symlink, a FIFO and a directory at the path.
        let symlink = dir.path().join("sym");
        std::os::unix::fs::symlink(&path, &symlink).unwrap();
        assert!(create_private(&symlink, Existing::Append).is_err());
        let fifo = dir.path().join("fifo");
        let name = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
        assert!(create_private(&fifo, Existing::Append).is_err(), "must not wait for a reader");
        assert!(create_private(dir.path(), Existing::Append).is_err());
    }

    #[test]
    fn a_file_another_user_created_is_refused_untouched() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            panic!("this test needs root (to give a file to another user), as the end-to-end tests do");
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("planted.log");
        std::fs::write(&path, b"theirs").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
        for existing in [Existing::Append, Existing::Replace] {
            let err = create_private(&path, existing).unwrap_err();
            assert!(err.to_string().contains("owned by uid 65534"), "{err}");
        }
        assert_eq!(std::fs::read(&path).unwrap(), b"theirs", "not truncated before the check");
        assert_eq!(std::fs::metadata(&path).unwrap().uid(), 65534);
    }
}
