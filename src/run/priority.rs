//! While the output falls behind, cleartap's two busy threads (the one that
//! drains the ring buffers and the one that writes) run at a raised
//! priority, and return to their own once the queue between them is empty
//! again. On a host whose CPUs are all busy, the traced programs then yield
//! CPU to the capture instead of the capture losing their records: the
//! trade a lossless capture makes, taken only while records wait.
//!
//! Only from the default priority (nice 0 or below): a cleartap started
//! with `nice` keeps the priority it was given.

use std::time::{Duration, Instant};

/// How much: nice -10 weighs about 9x nice 0 in the scheduler.
const BOOST: i32 = -10;
/// Queue depth (batches waiting) from which the threads are raised.
const RAISE_AT: usize = 4;
/// How long the queue must have been empty before they are lowered.
const CALM: Duration = Duration::from_secs(1);

pub struct Priority {
    threads: Vec<(libc::pid_t, i32)>,
    raised: bool,
    /// Since when the queue has been empty while raised.
    empty_since: Option<Instant>,
    /// Times raised, for the summary.
    pub raises: u64,
    warned: bool,
}

impl Priority {
    /// The threads to manage, each with its priority now; none when the
    /// process runs below the default priority.
    pub fn new(tids: &[libc::pid_t]) -> Self {
        let threads = tids.iter().map(|&t| (t, nice_of(t))).filter(|&(_, nice)| nice <= 0).collect();
        Priority { threads, raised: false, empty_since: None, raises: 0, warned: false }
    }

    /// After each batch: `waiting` batches are queued behind this one.
    pub fn update(&mut self, waiting: usize) {
        if self.threads.is_empty() {
            return;
        }
        if waiting >= RAISE_AT {
            self.empty_since = None;
            if !self.raised {
                self.raised = true;
                if self.set(true) {
                    self.raises += 1;
                }
            }
        } else if self.raised && waiting == 0 {
            let since = *self.empty_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= CALM {
                self.raised = false;
                self.empty_since = None;
                self.set(false);
            }
        }
    }

    /// Whether every thread took the priority.
    fn set(&mut self, raise: bool) -> bool {
        let mut all = true;
        for &(tid, own) in &self.threads {
            let nice = if raise { own.min(BOOST) } else { own };
            // SAFETY: setpriority on a thread id of this process.
            let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) };
            if rc == 0 {
                continue;
            }
            let error = std::io::Error::last_os_error();
            // A thread that has ended (the drain thread, while the capture
            // stops) has no priority left to set: not a refusal.
            if error.raw_os_error() == Some(libc::ESRCH) {
                continue;
            }
            all = false;
            if !self.warned {
                self.warned = true;
                crate::note!(
                    "cleartap: warning: could not raise the capture's priority while its output fell behind \
                     ({error}; it needs CAP_SYS_NICE): records may be lost on a busy host"
                );
            }
        }
        all
    }
}

impl Drop for Priority {
    fn drop(&mut self) {
        if self.raised {
            self.set(false);
        }
    }
}

pub fn this_thread() -> libc::pid_t {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

fn nice_of(tid: libc::pid_t) -> i32 {
    // SAFETY: getpriority on a thread id of this process; -1 is also a
    // valid nice value, so errno is cleared and checked.
    unsafe {
        *libc::__errno_location() = 0;
        let nice = libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t);
        if *libc::__errno_location() != 0 {
            return 1; // unknown: leave it alone
        }
        nice
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A thread that ended after it was counted in (the drain thread, while
    /// the capture stops) is no refusal to warn about. It was: "could not
    /// raise the capture's priority (No such process)" at the end of runs.
    #[test]
    fn a_thread_that_ended_is_no_refusal() {
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (end_tx, end_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            tid_tx.send(this_thread()).unwrap();
            let _ = end_rx.recv();
        });
        let tid = tid_rx.recv().unwrap();
        let mut p = Priority::new(&[tid]);
        drop(end_tx);
        thread.join().unwrap();
        p.update(RAISE_AT);
        assert!(!p.warned, "warned about a thread that had ended");
    }

    #[test]
    fn raised_while_behind_and_lowered_once_calm() {
        let tid = this_thread();
        let own = nice_of(tid);
        let mut p = Priority::new(&[tid]);
        if own > 0 {
            assert!(p.threads.is_empty(), "a niced cleartap is left alone");
            return;
        }
        p.update(RAISE_AT);
        if !p.warned {
            assert_eq!(p.raises, 1);
            assert_eq!(nice_of(tid), own.min(BOOST));
        }
        p.update(0);
        assert!(p.raised, "not lowered before the queue has been calm a while");
        drop(p);
        assert_eq!(nice_of(tid), own, "restored on drop");
    }
}
