//! The pipeline every subcommand runs: a ring buffer of kernel events ->
//! a handler (enrichment, per-source assembly) -> an output, until a
//! signal; then detach, drain, flush and report. Subcommands differ only in
//! the probes they load and the handler they give.

pub mod check;
pub mod exec;
mod priority;
mod queue;
pub mod read;
mod ring;
pub mod shell;
pub mod sql;
pub mod tls;

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use libbpf_rs::{Link, MapCore, MapHandle};

use crate::events::{self, Event};
use crate::kernel::{Filters, KernelStats};
use crate::output::Output;

/// The longest a record waits in the ring buffer: TLS programs wake the
/// consumer only for batches (see `bpf/payload.h`).
pub const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// The longest a record waits in the output buffer while records keep coming.
const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
const STATS_INTERVAL: Duration = Duration::from_secs(2);

/// What a subcommand does with each event.
pub trait Handler {
    fn event(&mut self, event: Event, out: &mut dyn Output) -> io::Result<()>;
    /// Stop attaching and detach what the handler attached itself.
    fn detach(&mut self) {}
    /// After each poll of the ring buffers (every few ms): time-based work.
    fn idle(&mut self) -> io::Result<()> {
        Ok(())
    }
    /// A channel that has a message when work for `idle` is ready (a file
    /// parsed, to attach): `idle` then runs at once, not at the next poll.
    fn wakeup(&self) -> Option<crossbeam_channel::Receiver<()>> {
        None
    }
    /// Shutdown: write what is still pending.
    fn finish(&mut self, _out: &mut dyn Output) -> io::Result<()> {
        Ok(())
    }
}

/// The handler of sources whose programs are executables (shells,
/// database servers): exec events go to the attacher (a program that
/// starts later), which `announce`s what it attached; every other record
/// to the source's assembler.
pub struct ExecutableHandler<'p, B, A> {
    pub attacher: crate::sources::executables::ExecutableAttacher<'p, B>,
    pub assembler: A,
    pub announce: fn(&B),
}

impl<B, A: crate::assembly::Assembler> Handler for ExecutableHandler<'_, B, A> {
    fn event(&mut self, event: Event, out: &mut dyn Output) -> io::Result<()> {
        match event {
            Event::Exec(e) => {
                if let Some(bin) = self.attacher.consider(e.pid, Some(&String::from_utf8_lossy(e.path))) {
                    (self.announce)(&bin);
                }
                Ok(())
            }
            event => self.assembler.event(event, out),
        }
    }

    /// Files replaced (a package upgrade) and no longer mapped: detached.
    fn idle(&mut self) -> io::Result<()> {
        for name in self.attacher.detach_replaced() {
            crate::sources::attached::report_detached(&name);
        }
        Ok(())
    }

    fn detach(&mut self) {
        self.attacher.detach_all();
    }

    fn finish(&mut self, out: &mut dyn Output) -> io::Result<()> {
        self.assembler.finish(out)
    }
}

/// Where a capture's records go, what stops it and who hears that it is
/// ready: standard output, the signal flag and a `ready` line for the
/// subcommands; the agent's pipeline and a flag of its own for each source
/// of `cleartap agent`.
pub struct Destination {
    pub out: Box<dyn Output>,
    pub stop: Arc<AtomicBool>,
    pub on_ready: Box<dyn FnOnce()>,
    /// The kernel-side counters, every few seconds and at the end.
    pub on_stats: Box<dyn FnMut(&KernelStats)>,
}

impl Destination {
    /// Records in `style` on standard output until a signal.
    pub fn stdout(style: crate::output::Style) -> Result<Destination> {
        Self::signalled(crate::output::to_stdout(style)?)
    }

    /// `out` until a signal.
    pub fn signalled(out: Box<dyn Output>) -> Result<Destination> {
        Ok(Destination {
            out,
            stop: stop_on_signals()?,
            on_ready: Box::new(|| crate::note!("ready")),
            on_stats: Box::new(|_| {}),
        })
    }
}

/// Batches in the queue between the drain thread and the writer, and the
/// bytes of records each holds: at most 8 MiB of records in memory, taken
/// only as the queue fills. Besides the ring buffer, this is what absorbs a
/// writer that falls behind for a moment (a slow write, a burst), once it
/// holds a quarter of a ring in place (see `pump`).
const QUEUE_BATCHES: usize = 8;
const BATCH_BYTES: usize = 1 << 20;

/// The most of a ring handed over as one span (a record may pass it): the
/// writer gives the space back span by span.
const SPAN_BYTES: u64 = 1 << 20;

/// While the writer holds part of a ring in place, the drain thread looks
/// again this often (the writer wakes it as it gives space back; this
/// bounds how late it notices a writer stuck in a write, and copies out).
const HELD_WAIT: Duration = Duration::from_millis(2);

/// Run until `dest.stop` (a signal): tells `dest` it is ready, streams
/// events from every ring buffer in `rings`, reports kernel losses while
/// they happen and a summary at the end.
///
/// Two threads: one drains the ring buffers and does nothing else; this
/// one decodes, formats and writes. The drain thread hands over spans of
/// the rings, which this one reads in place and then gives back; when more
/// than a quarter of a ring is held that way (a write that takes a while: a full
/// pipe, a page cache allocation), it copies the records that follow into
/// a queue instead, so the kernel's buffer is not left full meanwhile.
pub fn pump(
    rings: &[&libbpf_rs::MapMut],
    stats_map: &dyn MapCore,
    links: Vec<Link>,
    handler: &mut dyn Handler,
    dest: Destination,
) -> Result<()> {
    let Destination { out, stop, on_ready, mut on_stats } = dest;
    let rings = (rings.iter())
        .map(|r| ring::Ring::map(MapHandle::try_from(*r)?).map_err(ring_map_failed))
        .collect::<Result<Vec<_>>>()?;
    let waiter = ring::Waiter::new(&rings).context("waiting for the ring buffers (epoll, eventfd)")?;
    let (filler, drainer) = queue::queue(QUEUE_BATCHES, BATCH_BYTES);
    let finish_draining = AtomicBool::new(false);
    let mut sink = Sink::new(handler, out);
    let mut links = Some(links);
    let mut reported = KernelStats::default();
    let (raises, waits) = std::thread::scope(|scope| -> Result<(u64, u64)> {
        // Owned here, and the drain thread told to finish when this ends,
        // however it ends: the scope waits for the drain thread, which a
        // panic here (a write to a closed stderr) would otherwise leave
        // looping, or waiting for a batch back, for ever.
        let drainer = drainer;
        let _finish_on_exit = SetOnDrop(&finish_draining);
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let finish = &finish_draining;
        let (rings, waiter) = (&rings, &waiter);
        let drain = std::thread::Builder::new()
            .name("cleartap-drain".into())
            .spawn_scoped(scope, move || drain_rings(rings, waiter, filler, finish, started_tx))
            .context("starting the thread that drains the ring buffer")?;
        let Ok(drain_tid) = started_rx.recv() else {
            let _ = drain.join();
            anyhow::bail!("the thread that drains the ring buffer ended before it started");
        };
        on_ready();

        let mut priority = priority::Priority::new(&[drain_tid, priority::this_thread()]);
        let mut last_report = Instant::now();
        // A file parsed on the discovery thread is attached by `idle`:
        // every ms it waits is a ms of a new program's TLS missed.
        let mut wakeup = sink.handler.wakeup();
        // A record that wraps around a ring's end is copied here to be read.
        let mut scratch = Vec::new();
        loop {
            match drainer.next(POLL_INTERVAL, wakeup.as_ref()) {
                queue::Next::Batch(batch) => {
                    for raw in batch.records() {
                        sink.handle(raw);
                    }
                    drainer.recycle(batch);
                    sink.after_batch(false);
                }
                queue::Next::InPlace(span) => {
                    let ring = &rings[span.ring];
                    let _ = ring.try_for_each(span.start, span.end, &mut scratch, |raw| {
                        sink.handle(raw);
                        Ok::<(), ()>(())
                    });
                    ring.handled(span.end);
                    waiter.wake();
                    sink.after_batch(false);
                }
                // Nothing for a while: the output is flushed, so a reader
                // sees records at once.
                queue::Next::Idle => sink.after_batch(true),
                queue::Next::Woken => sink.after_batch(false),
                queue::Next::WakerGone => wakeup = None,
                queue::Next::Done => break,
            }
            priority.update(drainer.backlog());
            if last_report.elapsed() >= STATS_INTERVAL {
                reported = report_new_losses(KernelStats::read(stats_map), reported);
                on_stats(&reported);
                last_report = Instant::now();
            }
            // Detach first so nothing new arrives, then let the drain
            // thread take what is in flight and end; what it hands over
            // until then is still written (or, after an output error,
            // discarded by `handle`).
            if (stop.load(Ordering::Relaxed) || sink.failed()) && links.is_some() {
                sink.handler.detach();
                drop(links.take());
                finish_draining.store(true, Ordering::Relaxed);
            }
        }
        drain.join().map_err(|_| anyhow::anyhow!("the thread that drains the ring buffer panicked"))?;
        Ok((priority.raises, drainer.waits()))
    })?;

    sink.finish();
    if waits > 0 {
        crate::note!(
            "cleartap: the output fell behind the whole in-memory queue {} times (records waited in the \
             kernel's ring buffer meanwhile; what it could not hold is counted as lost there)",
            waits
        );
    }
    if raises > 0 {
        crate::note!(
            "cleartap: the capture ran at raised priority {raises} times, while its output was behind \
             (see docs/capture.md, \"When the output falls behind\")"
        );
    }
    let stats = KernelStats::read(stats_map);
    report_new_losses(stats, reported);
    on_stats(&stats);
    crate::note!("{}", sink.summary(&stats));
    sink.result()
}

/// Sets its flag when dropped, on every way out of a scope.
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The drain thread: every record of `rings` handed over (in place, or
/// copied when more than a quarter of a ring is held), until told to finish, then
/// what the rings still hold. Says first that it started (its thread id).
fn drain_rings(
    rings: &[ring::Ring],
    waiter: &ring::Waiter,
    mut filler: queue::Filler,
    finish: &AtomicBool,
    started: std::sync::mpsc::Sender<libc::pid_t>,
) {
    let _ = started.send(priority::this_thread());
    let mut walked: Vec<u64> = rings.iter().map(ring::Ring::consumer).collect();
    // A record that wraps around a ring's end is copied here to be read.
    let mut scratch = Vec::new();
    loop {
        let finishing = finish.load(Ordering::Relaxed);
        for (index, ring) in rings.iter().enumerate() {
            loop {
                let start = walked[index];
                let end = ring.committed(start, SPAN_BYTES);
                if end == start {
                    break;
                }
                walked[index] = end;
                let handed = if ring.held(end) > ring.size() / 4 {
                    copy_out(ring, start, end, &mut filler, &mut scratch)
                } else {
                    ring.handed_in_place(end);
                    filler.hand(queue::Span { ring: index, start, end })
                };
                // The writer stopped: nothing more is wanted.
                if handed.is_err() {
                    return;
                }
            }
        }
        // Records never wait for a batch to fill.
        if filler.send().is_err() || finishing {
            return;
        }
        // A timeout must still read the rings: records submitted without a
        // wake-up (TLS batches, see bpf/payload.h) would otherwise wait for
        // the next one, and while one waits unread, the kernel wakes nobody
        // for any later record either (it only wakes a consumer that had
        // caught up). A ring held in place reads as ready: then only the
        // writer's wake-up or a short timeout.
        if rings.iter().zip(&walked).any(|(ring, &walked)| ring.held(walked) > 0) {
            waiter.woken(HELD_WAIT);
        } else {
            waiter.any(POLL_INTERVAL);
        }
    }
}

/// Copies the records of `[start, end)` into the queue, which gives their
/// space back (once what was handed before them in place is handled).
/// Only the bytes a record's decoder reads are copied (see `used_len`).
fn copy_out(
    ring: &ring::Ring,
    start: u64,
    end: u64,
    filler: &mut queue::Filler,
    scratch: &mut Vec<u64>,
) -> Result<(), queue::Disconnected> {
    ring.try_for_each(start, end, scratch, |raw| filler.push(&raw[..events::used_len(raw)]))?;
    ring.copied(end);
    Ok(())
}

/// Mapping a ring buffer takes its size of address space.
fn ring_map_failed(e: io::Error) -> anyhow::Error {
    anyhow::Error::new(e).context(
        "mapping the kernel ring buffer into cleartap failed: lower --ringbuf-size \
         (it needs its size of address space) or raise cleartap's memory limits",
    )
}

/// A source subcommand other than `tls` (whose `-w -` decides where
/// records go): its records on standard output until a signal.
pub fn on_stdout(command: &crate::cli::Command, output: &crate::cli::OutputArgs) -> Result<()> {
    output.redirect(false)?;
    capture(command, Destination::stdout(output.style(0))?)
}

/// The capture a source subcommand runs, into `dest` (the agent runs each
/// of its sources this way).
pub fn capture(command: &crate::cli::Command, dest: Destination) -> Result<()> {
    use crate::cli::Command;
    use crate::sources::sql::Family;
    match command {
        Command::Tls(a) => tls::capture(a, dest),
        Command::Exec(a) => exec::capture(a, dest),
        Command::Shell(a) => shell::capture(a, dest),
        Command::Mysql(a) => sql::capture(a, Family::Mysql, dest),
        Command::Postgres(a) => sql::capture(a, Family::Postgres, dest),
        Command::Check | Command::Agent(_) | Command::Tail(_) | Command::Read(_) => {
            anyhow::bail!("not a capture source")
        }
    }
}

pub fn filters(args: &crate::cli::FilterArgs) -> Result<Filters> {
    let cgroup = args.cgroup.as_deref().map(crate::kernel::Cgroup::from_path).transpose()?;
    if cgroup.is_some() && !crate::kernel::has_ancestor_cgroup_id() {
        anyhow::bail!(
            "--cgroup: this kernel's uprobes cannot read a task's ancestor cgroup \
             (bpf_get_current_ancestor_cgroup_id); filter with --pid, --uid or --comm instead"
        );
    }
    Ok(Filters { pid: args.pid, uid: args.uid, comm: args.comm.clone(), cgroup })
}

/// Flags the signal handlers set.
struct Signals {
    /// Any of SIGINT, SIGTERM, SIGHUP: what the subcommands stop on.
    stop: Arc<AtomicBool>,
    /// SIGINT or SIGTERM only, and SIGHUP only: the agent tells them apart
    /// (SIGHUP reloads its configuration).
    terminate: Arc<AtomicBool>,
    hangup: Arc<AtomicBool>,
}

static SIGNALS: OnceLock<Signals> = OnceLock::new();

/// What the subcommands stop on.
const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Soft limit on open files raised to the hard limit: a host with many
/// libraries and programs to probe needs a descriptor per file while it is
/// parsed and attached, and running out would blind the capture. A failure
/// leaves the limit as it was (each open then fails with a warning).
pub fn raise_fd_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// SIGINT, SIGTERM and SIGHUP set a flag instead of killing the process:
/// installed first thing in main, so that a signal while attaching, too,
/// ends with a clean stop (files whole, everything detached) once `pump`
/// starts. Idempotent.
///
/// The three signals are blocked while the handlers go in: signal-hook
/// installs its handler for a signal before it publishes the actions it
/// runs (signal-hook-registry 1.4, `register_sigaction_impl`), and a
/// signal landing between the two would run no action and be lost, the
/// process running on as if never told to stop. Blocked, such a signal
/// stays pending and arrives when the mask is restored, with every flag
/// in place. (A signal the parent left ignored, as a non-interactive
/// shell does for SIGINT of a job started with `&`, is discarded by the
/// kernel until the handler is in: nothing here can see it.)
pub fn stop_on_signals() -> Result<Arc<AtomicBool>> {
    if let Some(s) = SIGNALS.get() {
        return Ok(Arc::clone(&s.stop));
    }
    let _blocked = BlockedSignals::new(&STOP_SIGNALS);
    let s = Signals {
        stop: Arc::new(AtomicBool::new(false)),
        terminate: Arc::new(AtomicBool::new(false)),
        hangup: Arc::new(AtomicBool::new(false)),
    };
    let register = |sig, flag: &Arc<AtomicBool>| {
        signal_hook::flag::register(sig, Arc::clone(flag)).context("installing signal handlers")
    };
    for sig in STOP_SIGNALS {
        register(sig, &s.stop)?;
    }
    register(libc::SIGINT, &s.terminate)?;
    register(libc::SIGTERM, &s.terminate)?;
    register(libc::SIGHUP, &s.hangup)?;
    Ok(Arc::clone(&SIGNALS.get_or_init(|| s).stop))
}

/// Signals blocked in the calling thread until dropped; then the thread's
/// mask is what it was, and a signal that came meanwhile is delivered.
struct BlockedSignals(libc::sigset_t);

impl BlockedSignals {
    fn new(signals: &[libc::c_int]) -> Self {
        // SAFETY: sigemptyset/sigaddset fill a local set; pthread_sigmask
        // with valid pointers only changes this thread's mask.
        unsafe {
            let mut block: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut block);
            for &sig in signals {
                libc::sigaddset(&mut block, sig);
            }
            let mut before: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_BLOCK, &block, &mut before);
            BlockedSignals(before)
        }
    }
}

impl Drop for BlockedSignals {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved by `new`, a valid set.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut()) };
    }
}

/// Has SIGINT or SIGTERM arrived?
pub fn terminated() -> bool {
    SIGNALS.get().is_some_and(|s| s.terminate.load(Ordering::Relaxed))
}

/// Has SIGHUP arrived since the last call? Clears it.
pub fn take_hangup() -> bool {
    SIGNALS.get().is_some_and(|s| s.hangup.swap(false, Ordering::Relaxed))
}

fn report_new_losses(now: KernelStats, before: KernelStats) -> KernelStats {
    if now.lost_records > before.lost_records {
        crate::note!(
            "cleartap: warning: lost {} records ({} bytes) so far: the ring buffer was full; \
             raise --ringbuf-size",
            now.lost_records,
            now.lost_bytes
        );
    }
    if now.lost_packets > before.lost_packets {
        crate::note!(
            "cleartap: warning: lost {} packets so far: the packet ring buffer was full; raise --ringbuf-size",
            now.lost_packets
        );
    }
    if now.truncated_bytes > before.truncated_bytes {
        crate::note!(
            "cleartap: warning: {} bytes of calls larger than the per-call limit were not captured",
            now.truncated_bytes
        );
    }
    now
}

/// The consumer end: decodes ring buffer records, hands them to the
/// handler, and keeps the output flushed and its errors.
struct Sink<'h> {
    handler: &'h mut dyn Handler,
    out: Counting,
    undecodable: u64,
    /// Records written since the last flush.
    dirty: bool,
    last_flush: Instant,
    error: Option<io::Error>,
}

impl<'h> Sink<'h> {
    fn new(handler: &'h mut dyn Handler, out: Box<dyn Output>) -> Self {
        Sink {
            handler,
            out: Counting { inner: out, records: 0, flushed: 0, bytes: 0 },
            undecodable: 0,
            dirty: false,
            last_flush: Instant::now(),
            error: None,
        }
    }

    /// One record from the ring buffer. After an output error, records
    /// are discarded (the loop stops through `failed()`).
    fn handle(&mut self, raw: &[u8]) {
        if self.error.is_some() {
            return;
        }
        match events::decode(raw) {
            Ok(event) => {
                if let Err(e) = self.handler.event(event, &mut self.out) {
                    self.error = Some(e);
                }
                self.dirty = true;
            }
            Err(e) => {
                self.undecodable += 1;
                if self.undecodable == 1 {
                    crate::note!("cleartap: warning: undecodable record: {e}");
                }
            }
        }
    }

    /// Flush when nothing more came for a poll interval (a reader sees
    /// output at once), or at least every FLUSH_INTERVAL while records keep
    /// coming; not after every batch, which would be a write per record or
    /// two.
    fn after_batch(&mut self, idle: bool) {
        if self.error.is_none() {
            if let Err(e) = self.handler.idle() {
                self.error = Some(e);
            }
        }
        if self.dirty && self.error.is_none() && (idle || self.last_flush.elapsed() >= FLUSH_INTERVAL) {
            self.dirty = false;
            self.last_flush = Instant::now();
            if let Err(e) = self.out.flush() {
                self.error = Some(e);
            }
        }
    }

    fn failed(&self) -> bool {
        self.error.is_some()
    }

    fn finish(&mut self) {
        if self.error.is_none() {
            if let Err(e) = self.handler.finish(&mut self.out) {
                self.error = Some(e);
            }
        }
        if self.error.is_none() {
            if let Err(e) = self.out.flush() {
                self.error = Some(e);
            }
        }
    }

    fn summary(&self, k: &KernelStats) -> String {
        let mut s = format!(
            "cleartap: {} records, {} bytes captured; lost in the kernel: {} records ({} bytes)",
            self.out.records, self.out.bytes, k.lost_records, k.lost_bytes
        );
        if k.truncated_bytes > 0 {
            s += &format!("; {} bytes beyond the per-call limit", k.truncated_bytes);
        }
        if k.lost_packets > 0 || k.cut_packets > 0 {
            s += &format!(
                "; packets lost in the kernel: {}, cut at 256 KiB: {}",
                k.lost_packets, k.cut_packets
            );
        }
        if k.unseen_starts > 0 {
            s += &format!(
                "; TLS calls not captured: {} (their start was lost: more threads were in calls \
                 at once than the kernel's per-thread table holds, --max-connections / 4, or \
                 calls started inside calls three deep)",
                k.unseen_starts
            );
        }
        if self.undecodable > 0 {
            s += &format!("; {} undecodable records", self.undecodable);
        }
        s
    }

    /// A closed pipe (`cleartap tls | head`) is a normal end, not an error.
    fn result(self) -> Result<()> {
        match self.error {
            Some(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
            Some(e) => {
                let (whole, dropped) = (self.out.flushed, self.out.records - self.out.flushed);
                Err(e).context(format!(
                    "writing output: capture stopped; {whole} records were written whole, the {dropped} \
                     after them were not (a regular file is cut back to its last whole record)"
                ))
            }
            None => Ok(()),
        }
    }
}

/// Counts what reaches the output, for the summary.
struct Counting {
    inner: Box<dyn Output>,
    records: u64,
    /// Records in the output at its last successful flush.
    flushed: u64,
    bytes: u64,
}

impl Output for Counting {
    fn tls(&mut self, r: &crate::context::TlsRecord) -> io::Result<()> {
        self.records += 1;
        self.bytes += r.data.len() as u64;
        self.inner.tls(r)
    }

    fn command(&mut self, r: &crate::context::CommandRecord) -> io::Result<()> {
        self.records += 1;
        self.inner.command(r)
    }

    fn exec(&mut self, r: &crate::context::ExecRecord) -> io::Result<()> {
        self.records += 1;
        self.inner.exec(r)
    }

    fn query(&mut self, r: &crate::context::QueryRecord) -> io::Result<()> {
        self.records += 1;
        self.inner.query(r)
    }

    fn http(&mut self, r: &crate::context::HttpRecord) -> io::Result<()> {
        self.records += 1;
        self.inner.http(r)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()?;
        self.flushed = self.records;
        Ok(())
    }
}
