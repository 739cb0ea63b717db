//! The capture pipeline of `cleartap tls`: discover, load, attach, then
//! stream events -> enrichment -> output until a signal, and report.

use std::cell::RefCell;
use std::collections::HashSet;
use std::io;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use libbpf_rs::RingBufferBuilder;

use crate::cli::TlsArgs;
use crate::context::libraries::{KnownLibrary, LibraryResolver};
use crate::context::Enricher;
use crate::discover::procs;
use crate::events::{self, Event};
use crate::kernel::{self, Filters, KernelStats};
use crate::output::{self, Output};
use crate::sources::tls::TlsProbes;
use crate::sources::{openssl, TlsTarget};

const POLL_INTERVAL: Duration = Duration::from_millis(100);
const STATS_INTERVAL: Duration = Duration::from_secs(2);

pub fn run_tls(args: &TlsArgs) -> Result<()> {
    kernel::preflight()?;
    let targets = find_openssl_targets(&args.libs)?;
    let filters = Filters { pid: args.filters.pid, uid: args.filters.uid, comm: args.filters.comm.clone() };
    let stop = stop_on_signals()?;

    let mut storage = MaybeUninit::uninit();
    let probes = TlsProbes::load(&mut storage, &filters, args.output.ringbuf_size)?;
    let mut links = probes.attach_syscalls()?;
    for target in &targets {
        links.extend(probes.attach(target)?);
    }

    let known = targets
        .iter()
        .map(|t| KnownLibrary { inode: t.id.ino, library: t.library, path: t.display_path.clone() })
        .collect();
    let out = output::writer(args.output.format, args.output.hex, io::stdout());
    let sink = RefCell::new(Sink::new(Enricher::new(LibraryResolver::new(known)), out));

    let mut builder = RingBufferBuilder::new();
    builder.add(probes.events_map(), |raw| sink.borrow_mut().handle(raw))?;
    let ring = builder.build()?;

    for t in &targets {
        eprintln!("cleartap: attached to {} ({})", t.display_path, hook_names(t));
    }
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

/// Every OpenSSL library in use on the host, plus `--lib` paths; each
/// file once, however many processes map it.
fn find_openssl_targets(explicit: &[std::path::PathBuf]) -> Result<Vec<TlsTarget>> {
    let mut targets = Vec::new();
    let mut seen = HashSet::new();
    for path in explicit {
        let target = TlsTarget::resolve(path, openssl::LIBRARY, &openssl::HOOKS)
            .with_context(|| format!("--lib {}", path.display()))?;
        if seen.insert(target.id) {
            targets.push(target);
        }
    }
    let mut mapped: Vec<_> = procs::mapped_files_matching(openssl::is_library_path).into_iter().collect();
    mapped.sort();
    for (id, file) in mapped {
        if !seen.insert(id) {
            continue;
        }
        match TlsTarget::resolve(&file.host_path, openssl::LIBRARY, &openssl::HOOKS) {
            Ok(target) => targets.push(TlsTarget { display_path: file.path_in_process, ..target }),
            Err(e) => eprintln!("cleartap: warning: skipping {}: {e:#}", file.host_path.display()),
        }
    }
    if targets.is_empty() {
        bail!(
            "no OpenSSL library found: no running process maps libssl.so*. Start the program \
             to capture first, or name its library or executable with --lib PATH"
        );
    }
    Ok(targets)
}

fn hook_names(t: &TlsTarget) -> String {
    t.hooks.iter().map(|(h, _)| h.symbol).collect::<Vec<_>>().join(", ")
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

/// The consumer end: decodes ring buffer records and writes them out.
struct Sink {
    enricher: Enricher,
    out: Box<dyn Output>,
    records: u64,
    bytes: u64,
    undecodable: u64,
    dirty: bool,
    error: Option<io::Error>,
}

impl Sink {
    fn new(enricher: Enricher, out: Box<dyn Output>) -> Self {
        Sink { enricher, out, records: 0, bytes: 0, undecodable: 0, dirty: false, error: None }
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
                let record = self.enricher.tls(&d);
                self.out.tls(&record)
            }
            Err(e) => {
                self.undecodable += 1;
                if self.undecodable == 1 {
                    eprintln!("cleartap: warning: undecodable record: {e}");
                }
                Ok(())
            }
        };
        self.dirty = true;
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
