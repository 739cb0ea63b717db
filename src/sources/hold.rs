//! `--hold-unchecked`: processes the kernel stopped (SIGSTOP) when they
//! exec'd a file, or opened a TLS library, that cleartap had not checked
//! yet. Each is continued (SIGCONT) once the discovery thread has decided
//! on its file and what it found is attached, so the program's first TLS
//! byte is already probed. Racing the program instead loses first runs:
//! a small program can finish its exchange in the few ms a check and an
//! attach take. See docs/capture.md.
//!
//! A process is never held longer than `HOLD_LIMIT`, and every process
//! still held is continued when cleartap stops or this is dropped (an
//! error, a panic): those the kernel lists in `held_processes`, whose
//! events were never read, included. Only a cleartap killed by SIGKILL
//! leaves processes stopped: at most those that exec'd in its last
//! moments, and `kill -CONT` frees them.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use libbpf_rs::{MapCore, MapFlags};

use crate::events::FileKey;

/// Longer than a check of any sane file takes (a 100 MiB Go program is
/// parsed in well under a second here); a file slow to open or parse,
/// hostile or not, delays each held process by at most this much.
const HOLD_LIMIT: Duration = Duration::from_secs(1);

/// Held processes, in the order their requests went to discovery.
pub struct Holds<'m> {
    /// procwatch's `checked_files`: a file entered there is not held again.
    checked: &'m dyn MapCore,
    /// procwatch's `held_processes`: every process the kernel stopped and
    /// nobody continued yet, by pid.
    held: &'m dyn MapCore,
    waiting: VecDeque<Held>,
    /// Continued at `HOLD_LIMIT`, or at the stop, before their file was
    /// checked.
    released_unchecked: u64,
    released: u64,
}

struct Held {
    /// The discovery request number whose completion releases it.
    request: u64,
    pid: u32,
    /// Signalled through a pidfd: the pid could be reused once the
    /// process is gone (killed while stopped, say).
    process: Option<OwnedFd>,
    file: FileKey,
    since: Instant,
}

impl<'m> Holds<'m> {
    pub fn new(checked: &'m dyn MapCore, held: &'m dyn MapCore) -> Self {
        Holds { checked, held, waiting: VecDeque::new(), released_unchecked: 0, released: 0 }
    }

    /// `pid` was stopped at `file`; it goes on once discovery request
    /// number `request` is done (None: it was not queued, continue now).
    pub fn hold(&mut self, pid: u32, file: FileKey, request: Option<u64>) {
        let process = pidfd_open(pid);
        let held = Held { request: request.unwrap_or(0), pid, process, file, since: Instant::now() };
        self.waiting.push_back(held);
        if request.is_none() {
            self.release_done(0);
        }
    }

    /// Continues every process whose request is among the first `done`
    /// (their files are checked, and what was found is attached by now),
    /// and any held past `HOLD_LIMIT`.
    pub fn release_done(&mut self, done: u64) {
        let now = Instant::now();
        while let Some(first) = self.waiting.front() {
            let checked = first.request <= done;
            if !checked && now.duration_since(first.since) < HOLD_LIMIT {
                break;
            }
            let held = self.waiting.pop_front().expect("front exists");
            if checked {
                // Not held again; an error (the map is full of others'
                // entries, LRU evicts them) only means one more hold.
                let _ = self.checked.update(&held.file.to_map_key(), &[1], MapFlags::ANY);
                self.released += 1;
            } else {
                self.released_unchecked += 1;
                if self.released_unchecked == 1 {
                    crate::note!(
                        "cleartap: warning: a process held for its check was continued after {} ms before \
                         the check finished (a file slow to open or parse); its first TLS bytes may be missed",
                        HOLD_LIMIT.as_millis()
                    );
                }
            }
            self.continue_process(&held);
        }
    }

    /// Continues every process still held (cleartap stops), counted as
    /// continued before their check; then those the kernel stopped whose
    /// events were not read.
    pub fn release_all(&mut self) {
        for held in std::mem::take(&mut self.waiting) {
            self.released_unchecked += 1;
            self.continue_process(&held);
        }
        for key in self.held.keys().collect::<Vec<_>>() {
            if let Ok(pid) = <[u8; 4]>::try_from(key.as_slice()) {
                continue_now(u32::from_ne_bytes(pid));
            }
            let _ = self.held.delete(&key);
        }
    }

    /// Processes held and continued so far, and those continued before
    /// their check finished.
    pub fn counts(&self) -> (u64, u64) {
        (self.released + self.released_unchecked, self.released_unchecked)
    }

    fn continue_process(&self, held: &Held) {
        if let Some(process) = &held.process {
            send_sigcont(process);
        }
        let _ = self.held.delete(&held.pid.to_ne_bytes());
    }
}

impl Drop for Holds<'_> {
    fn drop(&mut self) {
        self.release_all();
    }
}

/// Continues `pid`, held with nothing to wait for.
pub fn continue_now(pid: u32) {
    if let Some(process) = pidfd_open(pid) {
        send_sigcont(&process);
    }
}

fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open(2) takes a pid and flags; on success it returns
    // a new descriptor that nothing else owns.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// SIGCONT through a pidfd. A process gone meanwhile needs nothing.
fn send_sigcont(process: &OwnedFd) {
    // SAFETY: pidfd_send_signal(2) on a pidfd this owns, no siginfo.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            process.as_raw_fd(),
            libc::SIGCONT,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// A stopped child, continued by `release_done` once its request is
    /// done, and only then.
    #[test]
    fn a_held_process_goes_on_once_its_request_is_done() {
        let mut child = Command::new("sleep").arg("0.2").spawn().unwrap();
        let pid = child.id();
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
        let (checked, held) = (test_map(16), test_map(4));
        held.update(&pid.to_ne_bytes(), &[1], MapFlags::ANY).unwrap();
        let mut holds = Holds::new(&checked, &held);
        let file = FileKey { ino: 1234, dev: 5 };
        holds.hold(pid, file, Some(3));
        holds.release_done(2);
        assert!(stopped(pid), "released before its request was done");
        holds.release_done(3);
        assert_eq!(holds.counts(), (1, 0));
        assert!(child.wait().unwrap().success(), "the child was continued and finished");
        let marked = checked.lookup(&file.to_map_key(), MapFlags::ANY).unwrap();
        assert!(marked.is_some(), "the file is marked checked");
        assert_eq!(held.keys().count(), 0, "the process is no longer listed as held");
    }

    /// Dropped: every process held, whether its event was read (`hold`)
    /// or it is only listed by the kernel.
    #[test]
    fn dropping_the_holds_continues_every_process() {
        let mut read = Command::new("sleep").arg("0.1").spawn().unwrap();
        let mut unread = Command::new("sleep").arg("0.1").spawn().unwrap();
        let (checked, held) = (test_map(16), test_map(4));
        for child in [&read, &unread] {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGSTOP) };
            held.update(&child.id().to_ne_bytes(), &[1], MapFlags::ANY).unwrap();
        }
        let mut holds = Holds::new(&checked, &held);
        holds.hold(read.id(), FileKey { ino: 1, dev: 1 }, Some(10));
        drop(holds);
        assert!(read.wait().unwrap().success());
        assert!(unread.wait().unwrap().success());
        assert_eq!(held.keys().count(), 0);
    }

    /// State `T` (stopped) in /proc/PID/stat, once the signal landed.
    fn stopped(pid: u32) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
            let state = stat.rsplit(") ").next().unwrap().chars().next().unwrap();
            if state == 'T' || Instant::now() > deadline {
                return state == 'T';
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// A hash map with keys of `key_size` bytes and one-byte values.
    fn test_map(key_size: u32) -> libbpf_rs::MapHandle {
        let opts = libbpf_sys::bpf_map_create_opts {
            sz: std::mem::size_of::<libbpf_sys::bpf_map_create_opts>() as _,
            ..Default::default()
        };
        libbpf_rs::MapHandle::create(libbpf_rs::MapType::Hash, Some("hold_test"), key_size, 1, 16, &opts)
            .expect("creating a BPF map (root)")
    }
}
