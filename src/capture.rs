//! The capture pipeline of `cleartap tls`: discover, load, attach, then
//! stream events -> enrichment -> output until a signal, and report.

use std::cell::RefCell;
use std::io;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use libbpf_rs::RingBufferBuilder;

use crate::cli::{Library, TlsArgs};
use crate::context::libraries::{KnownLibrary, LibraryResolver};
use crate::context::Enricher;
use crate::events::{self, Event};
use crate::kernel::{self, Cgroup, Filters, KernelStats};
use crate::output::{self, Output};
use crate::sources::attacher::Attacher;
use crate::sources::procwatch::ProcWatch;
use crate::sources::tls::TlsProbes;
use crate::sources::{gnutls, nss, openssl, TlsSource, TlsTarget};

const POLL_INTERVAL: Duration = Duration::from_millis(100);
const STATS_INTERVAL: Duration = Duration::from_secs(2);

pub fn run_tls(args: &TlsArgs) -> Result<()> {
    kernel::preflight()?;
    let filters = filters(args)?;
    let sources = selected_sources(&args.libraries);
    let stop = stop_on_signals()?;

    let mut tls_storage = MaybeUninit::uninit();
    let probes = TlsProbes::load(&mut tls_storage, &filters, args.output.ringbuf_size)?;
    let mut watch_storage = MaybeUninit::uninit();
    let watch = ProcWatch::load(&mut watch_storage, &filters, &sources, &probes)?;
    let mut links = probes.attach_syscalls()?;
    // Watch first, then scan: a process starting in between is seen twice
    // at worst (attaching is idempotent per file), never missed.
    links.extend(watch.attach()?);

    let mut attacher = Attacher::new(&probes, sources, &args.exclude_libs);
    let mut targets = Vec::new();
    for path in &args.libs {
        targets.push(attacher.attach_explicit(path)?);
    }
    targets.extend(attacher.scan_host());
    if targets.is_empty() {
        eprintln!("cleartap: no TLS library in use yet; watching for processes that start");
    }
    let out = output::writer(args.output.format, args.output.hex, io::stdout());
    let mut sink = Sink::new(Enricher::new(LibraryResolver::new(Vec::new())), out, attacher);
    for t in targets {
        sink.attached(t);
    }
    let sink = RefCell::new(sink);

    let mut builder = RingBufferBuilder::new();
    builder.add(probes.events_map(), |raw| sink.borrow_mut().handle(raw))?;
    let ring = builder.build()?;
    eprintln!("ready");

    let mut last_report = Instant::now();
    let mut reported = KernelStats::default();
    while !stop.load(Ordering::Relaxed) && !sink.borrow().failed() {
        // EINTR on a signal is expected; the loop condition handles it.
        let _ = ring.poll(POLL_INTERVAL);
        sink.borrow_mut().flush_if_idle();
        if last_report.elapsed() >= STATS_INTERVAL {
            reported = report_new_losses(KernelStats::read(probes.stats_map()), reported);
            last_report = Instant::now();
        }
    }

    // Detach first so nothing new arrives, then drain what is in flight.
    sink.borrow_mut().attacher.detach_all();
    drop(links);
    let _ = ring.consume();
    drop(ring);
    let mut sink = sink.into_inner();
    sink.finish();
    let stats = KernelStats::read(probes.stats_map());
    report_new_losses(stats, reported);
    eprintln!("{}", sink.summary(&stats));
    sink.result()
}

fn filters(args: &TlsArgs) -> Result<Filters> {
    let cgroup = args.filters.cgroup.as_deref().map(Cgroup::from_path).transpose()?;
    Ok(Filters { pid: args.filters.pid, uid: args.filters.uid, comm: args.filters.comm.clone(), cgroup })
}

fn selected_sources(libraries: &[Library]) -> Vec<&'static TlsSource> {
    let mut sources: Vec<&'static TlsSource> = libraries
        .iter()
        .map(|l| match l {
            Library::Openssl => &openssl::SOURCE,
            Library::Gnutls => &gnutls::SOURCE,
            Library::Nss => &nss::SOURCE,
        })
        .collect();
    sources.dedup_by_key(|s| s.name);
    sources
}

fn stop_on_signals() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM, signal_hook::consts::SIGHUP] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).context("installing signal handlers")?;
    }
    Ok(stop)
}

fn report_new_losses(now: KernelStats, before: KernelStats) -> KernelStats {
    if now.lost_records > before.lost_records {
        eprintln!(
            "cleartap: warning: lost {} records ({} bytes) so far: the ring buffer was full; \
             raise --ringbuf-size",
            now.lost_records, now.lost_bytes
        );
    }
    if now.truncated_bytes > before.truncated_bytes {
        eprintln!(
            "cleartap: warning: {} bytes of calls larger than the per-call limit were not captured",
            now.truncated_bytes
        );
    }
    now
}

/// The consumer end: decodes ring buffer records, attaches to what new
/// processes bring, and writes records out.
struct Sink<'p, 'obj> {
    enricher: Enricher,
    out: Box<dyn Output>,
    attacher: Attacher<'p, 'obj>,
    records: u64,
    bytes: u64,
    undecodable: u64,
    dirty: bool,
    error: Option<io::Error>,
}

impl<'p, 'obj> Sink<'p, 'obj> {
    fn new(enricher: Enricher, out: Box<dyn Output>, attacher: Attacher<'p, 'obj>) -> Self {
        Sink { enricher, out, attacher, records: 0, bytes: 0, undecodable: 0, dirty: false, error: None }
    }

    fn attached(&mut self, t: TlsTarget) {
        let version = t.version.as_deref().map_or(String::new(), |v| format!(" {v}"));
        eprintln!("cleartap: attached to {} ({}{}: {})", t.display_path, t.library, version, t.hook_names());
        self.enricher.add_library(KnownLibrary {
            inode: t.id.ino,
            library: t.library,
            version: t.version,
            path: t.display_path,
        });
    }

    /// Ring buffer callback. Always returns 0: an output error stops the
    /// loop through `failed()`, not by aborting the poll mid-batch.
    fn handle(&mut self, raw: &[u8]) -> i32 {
        if self.error.is_some() {
            return 0;
        }
        let result = match events::decode(raw) {
            Ok(Event::TlsData(d)) => {
                self.records += 1;
                self.bytes += d.data.len() as u64;
                self.dirty = true;
                let record = self.enricher.tls(&d);
                self.out.tls(&record)
            }
            Ok(Event::Exec { pid, path }) => {
                for t in self.attacher.scan_new_process(pid, &String::from_utf8_lossy(path)) {
                    self.attached(t);
                }
                Ok(())
            }
            Ok(Event::LibOpen { pid, path }) => {
                if let Some(t) = self.attacher.consider_library(pid, &String::from_utf8_lossy(path)) {
                    self.attached(t);
                }
                Ok(())
            }
            Err(e) => {
                self.undecodable += 1;
                if self.undecodable == 1 {
                    eprintln!("cleartap: warning: undecodable record: {e}");
                }
                Ok(())
            }
        };
        if let Err(e) = result {
            self.error = Some(e);
        }
        0
    }

    fn flush_if_idle(&mut self) {
        if self.dirty && self.error.is_none() {
            self.dirty = false;
            if let Err(e) = self.out.flush() {
                self.error = Some(e);
            }
        }
    }

    fn failed(&self) -> bool {
        self.error.is_some()
    }

    fn finish(&mut self) {
        self.dirty = true;
        self.flush_if_idle();
    }

    fn summary(&self, k: &KernelStats) -> String {
        let mut s = format!(
            "cleartap: {} records, {} bytes captured; lost in the kernel: {} records ({} bytes)",
            self.records, self.bytes, k.lost_records, k.lost_bytes
        );
        if k.truncated_bytes > 0 {
            s += &format!("; {} bytes beyond the per-call limit", k.truncated_bytes);
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
            Some(e) => Err(e).context("writing output"),
            None => Ok(()),
        }
    }
}
