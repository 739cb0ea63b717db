//! `cleartap agent`: every configured source at once, each in a thread of
//! its own running the very capture its subcommand runs, all feeding one
//! pipeline (`pipeline`) that numbers the events and hands them to the
//! sinks (`sinks`). SIGHUP reloads the configuration: sources whose table
//! changed restart, the others never stop. SIGINT/SIGTERM: detach, flush,
//! summary, exit 0.

pub mod config;
pub mod metrics;
pub mod pipeline;
pub mod sinks;
pub mod tail;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use self::config::{AgentConfig, Source};
use self::metrics::Metrics;
use self::pipeline::{Line, LineQueue, LineSender, Numbering, SourceCounters};
use self::sinks::Sink;
use crate::cli::{AgentArgs, Command};
use crate::output::{self, Format, Style};
use crate::run::{self, Destination};

/// How long a source may take to attach before the agent gives up on it.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
const TICK: Duration = Duration::from_millis(20);
/// How long a stop waits for room to report losses in.
const LOSS_REPORT_WAIT: Duration = Duration::from_secs(5);

pub fn run(args: &AgentArgs) -> Result<()> {
    let config = AgentConfig::load(&args.config)?;
    crate::kernel::preflight()?;
    let metrics = Arc::new(Metrics::default());
    let sinks = open_sinks(&config, &metrics)?;
    if let Some(addr) = args.metrics {
        metrics.serve(addr)?;
    }
    let mut agent = Agent::new(&config, sinks, metrics);
    let outcome = agent.start(config.sources).and_then(|()| {
        crate::note!("ready");
        agent.serve(&args.config)
    });
    // Whatever ended the run, the sources detach and the sinks keep what
    // they hold (the NATS spool is synced for the next start).
    agent.stop_all();
    let closed = agent.close();
    if let (Err(_), Err(e)) = (&outcome, &closed) {
        crate::eprintln_escaped!("cleartap: error: {e:#}");
    }
    outcome.and(closed)
}

fn open_sinks(config: &AgentConfig, metrics: &Metrics) -> Result<Vec<Box<dyn Sink>>> {
    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    if let Some(file) = &config.sinks.file {
        let sink = sinks::file::RotatingFile::open(file).context("[sinks.file]")?;
        sinks.push(Box::new(sink));
    }
    if let Some(nats) = &config.sinks.nats {
        let sink =
            sinks::nats::NatsPublisher::start(nats, &config.host, &config.spool_dir, config.spool_max_bytes)
                .context("[sinks.nats]")?;
        *metrics.nats.lock().expect("metrics lock") = Some(sink.counters());
        sinks.push(Box::new(sink));
    }
    Ok(sinks)
}

/// What a source thread tells the agent.
enum Status {
    Ready(&'static str),
    Ended(&'static str, Option<String>),
}

struct RunningSource {
    table: toml::Table,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    ready: bool,
}

struct Agent {
    tx: LineQueue,
    rx: Receiver<Line>,
    status_tx: Sender<Status>,
    status_rx: Receiver<Status>,
    running: BTreeMap<&'static str, RunningSource>,
    counters: BTreeMap<&'static str, Arc<SourceCounters>>,
    metrics: Arc<Metrics>,
    /// Channel drops already reported as `loss` events, per source.
    reported_drops: BTreeMap<&'static str, u64>,
    numbering: Numbering,
    sinks: Vec<Box<dyn Sink>>,
    sinks_config: config::Sinks,
}

impl Agent {
    fn new(config: &AgentConfig, sinks: Vec<Box<dyn Sink>>, metrics: Arc<Metrics>) -> Agent {
        let (tx, rx) = mpsc::sync_channel(pipeline::CHANNEL_CAPACITY);
        let (status_tx, status_rx) = mpsc::channel();
        Agent {
            tx: LineQueue::new(tx),
            rx,
            status_tx,
            status_rx,
            running: BTreeMap::new(),
            counters: BTreeMap::new(),
            metrics,
            reported_drops: BTreeMap::new(),
            numbering: Numbering::new(&config.host),
            sinks,
            sinks_config: config.sinks.clone(),
        }
    }

    /// Until SIGINT/SIGTERM: move events; SIGHUP reloads.
    fn serve(&mut self, config: &Path) -> Result<()> {
        while !run::terminated() {
            self.step()?;
            if run::take_hangup() {
                self.reload(config);
            }
        }
        Ok(())
    }

    /// Start `sources` and wait until each is attached (moving events of
    /// the ones already running meanwhile).
    fn start(&mut self, sources: Vec<Source>) -> Result<()> {
        let names: Vec<_> = sources.iter().map(|s| s.name).collect();
        for source in sources {
            self.spawn(source);
        }
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            self.step()?;
            if let Some(failed) = names.iter().find(|n| !self.running.contains_key(*n)) {
                bail!("source {failed} could not start (see above)");
            }
            if names.iter().all(|n| self.running[n].ready) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("sources not ready after {} s: {names:?}", READY_TIMEOUT.as_secs());
            }
        }
    }

    fn spawn(&mut self, source: Source) {
        let name = source.name;
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::clone(self.counters.entry(name).or_default());
        self.metrics.sources.lock().expect("metrics lock").insert(name, Arc::clone(&counters));
        let (tx, status, flag) = (self.tx.clone(), self.status_tx.clone(), Arc::clone(&stop));
        let table = source.table.clone();
        let thread = thread::Builder::new()
            .name(format!("source-{name}"))
            .spawn(move || {
                // A panic is reported like an error: the agent waits for
                // every source's end, and must hear of this one too.
                let run = || capture(&source.command, counters, tx, flag, status.clone());
                let error = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
                    Ok(result) => result.err().map(|e| format!("{e:#}")),
                    Err(_) => Some("the source's thread panicked".to_string()),
                };
                let _ = status.send(Status::Ended(name, error));
            })
            .expect("spawning a source thread");
        self.running.insert(name, RunningSource { table, stop, thread: Some(thread), ready: false });
    }

    /// One turn: move the events waiting, let the sinks work, note what
    /// the sources said.
    fn step(&mut self) -> Result<()> {
        match self.rx.recv_timeout(TICK) {
            Ok(line) => {
                self.dispatch(line)?;
                // A bounded batch, so that ticks and signals are not starved.
                for _ in 0..10_000 {
                    let Ok(line) = self.rx.try_recv() else { break };
                    self.dispatch(line)?;
                }
            }
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
        }
        self.report_drops()?;
        for i in 0..self.sinks.len() {
            for (source, count, reason) in self.sinks[i].lost() {
                crate::eprintln_escaped!("cleartap: warning: {count} {source} events dropped: {reason}");
                let event = self.numbering.loss(source, count, reason);
                self.sinks[i].send(&event)?;
            }
        }
        for sink in &mut self.sinks {
            sink.tick().with_context(|| format!("sink {}", sink.name()))?;
        }
        self.statuses();
        Ok(())
    }

    fn dispatch(&mut self, line: Line) -> Result<()> {
        self.tx.received(&line);
        let event = self.numbering.envelope(line);
        for sink in &mut self.sinks {
            sink.send(&event).with_context(|| format!("sink {}", sink.name()))?;
        }
        Ok(())
    }

    /// Lines the full channel refused become `loss` events, in the stream.
    fn report_drops(&mut self) -> Result<()> {
        let mut losses = Vec::new();
        for (name, counters) in &self.counters {
            let dropped = counters.dropped.load(Ordering::Relaxed);
            let reported = self.reported_drops.entry(name).or_default();
            if dropped > *reported {
                losses.push((*name, dropped - *reported));
                *reported = dropped;
            }
        }
        for (name, count) in losses {
            crate::eprintln_escaped!(
                "cleartap: warning: {count} {name} events dropped: the agent's queue was full"
            );
            let event = self.numbering.loss(name, count, "the agent's queue was full");
            for sink in &mut self.sinks {
                sink.send(&event)?;
            }
        }
        Ok(())
    }

    fn statuses(&mut self) {
        while let Ok(status) = self.status_rx.try_recv() {
            match status {
                Status::Ready(name) => {
                    if let Some(r) = self.running.get_mut(name) {
                        r.ready = true;
                    }
                }
                Status::Ended(name, error) => {
                    let expected = self.running.get(name).is_some_and(|r| r.stop.load(Ordering::Relaxed));
                    if let Some(e) = &error {
                        crate::eprintln_escaped!("cleartap: error: source {name}: {e}");
                    } else if !expected {
                        crate::eprintln_escaped!("cleartap: warning: source {name} ended by itself");
                    }
                    if let Some(mut r) = self.running.remove(name) {
                        if let Some(t) = r.thread.take() {
                            let _ = t.join();
                        }
                    }
                }
            }
        }
    }

    /// Stop the sources named, moving their last events meanwhile.
    fn stop_sources(&mut self, names: &[&'static str]) {
        for name in names {
            if let Some(r) = self.running.get(name) {
                r.stop.store(true, Ordering::Relaxed);
            }
        }
        while names.iter().any(|n| self.running.contains_key(n)) {
            if let Err(e) = self.step() {
                crate::eprintln_escaped!("cleartap: error: {e:#}");
                break;
            }
        }
    }

    fn stop_all(&mut self) {
        let names: Vec<_> = self.running.keys().copied().collect();
        self.stop_sources(&names);
        // Everything the sources wrote before they ended.
        while let Ok(line) = self.rx.try_recv() {
            if let Err(e) = self.dispatch(line) {
                crate::eprintln_escaped!("cleartap: error: {e:#}");
                break;
            }
        }
        // Losses not reported yet wait for room in their sink (a spool
        // draining to a broker that is back), a few seconds at most; the
        // summary counts them either way.
        let deadline = Instant::now() + LOSS_REPORT_WAIT;
        while self.sinks.iter().any(|s| s.has_unreported_losses()) && Instant::now() < deadline {
            if let Err(e) = self.step() {
                crate::eprintln_escaped!("cleartap: error: {e:#}");
                break;
            }
        }
    }

    /// SIGHUP: sources added, removed or changed; unchanged ones go on.
    fn reload(&mut self, path: &Path) {
        let config = match AgentConfig::load(path) {
            Ok(c) => c,
            Err(e) => {
                crate::eprintln_escaped!(
                    "cleartap: warning: reload failed, the running configuration stays: {e}"
                );
                return;
            }
        };
        if config.sinks != self.sinks_config {
            crate::eprintln_escaped!("cleartap: warning: sink changes take effect at the next start");
        }
        let wanted: BTreeMap<_, _> = config.sources.into_iter().map(|s| (s.name, s)).collect();
        let running: Vec<&'static str> = self.running.keys().copied().collect();
        let removed: Vec<_> = running.iter().copied().filter(|n| !wanted.contains_key(n)).collect();
        let changed: Vec<_> = running
            .iter()
            .copied()
            .filter(|n| wanted.get(n).is_some_and(|s| s.table != self.running[n].table))
            .collect();
        self.stop_sources(&[removed.as_slice(), changed.as_slice()].concat());
        let new: Vec<_> = wanted.into_values().filter(|s| !self.running.contains_key(s.name)).collect();
        let added: Vec<_> = new.iter().map(|s| s.name).filter(|n| !changed.contains(n)).collect();
        match self.start(new) {
            Ok(()) => {
                crate::eprintln_escaped!(
                    "cleartap: reloaded: stopped {removed:?}, restarted {changed:?}, started {added:?}"
                )
            }
            Err(e) => crate::eprintln_escaped!("cleartap: error: reload: {e:#}"),
        }
    }

    fn close(mut self) -> Result<()> {
        let per_source: Vec<String> = (self.counters.iter())
            .map(|(n, c)| {
                let (events, dropped) = (c.events.load(Ordering::Relaxed), c.dropped.load(Ordering::Relaxed));
                format!(
                    "{n} {events}{}",
                    if dropped > 0 { format!(" ({dropped} dropped)") } else { String::new() }
                )
            })
            .collect();
        crate::eprintln_escaped!(
            "cleartap: agent: {} events: {}",
            self.numbering.last_seq(),
            per_source.join(", ")
        );
        for sink in &mut self.sinks {
            let summary = sink.close().with_context(|| format!("closing sink {}", sink.name()))?;
            crate::eprintln_escaped!("cleartap: {summary}");
        }
        Ok(())
    }
}

/// The capture of one source, as its subcommand runs it, into the agent.
///
/// Each source loads its own process watch and ring buffer (a host with
/// `tls`, `shell` and `mysql` configured runs three watches on
/// `sched_process_exec`), though `SharedMaps` lets one skeleton report into
/// another's ring. Sharing them across sources is left undone on purpose:
/// a source restarts alone on SIGHUP and its thread owns its skeletons
/// (libbpf-rs maps and links are not `Send`), so one watch or ring would
/// tie every source's lifetime to one thread; and a ring of its own keeps
/// a flood of one source from costing another its records (losses stay
/// per source, as the metrics count them; tested by
/// `e2e_agent::a_source_losing_records_costs_the_others_none`).
fn capture(
    command: &Command,
    counters: Arc<SourceCounters>,
    tx: LineQueue,
    stop: Arc<AtomicBool>,
    status: Sender<Status>,
) -> Result<()> {
    let name = command.source().context("not a capture source")?.name();
    let body = match command {
        Command::Tls(a) => a.body,
        _ => 0,
    };
    let style = Style { format: Format::Json, hex: false, body_preview: body };
    let on_ready = Box::new(move || {
        let _ = status.send(Status::Ready(name));
    });
    let out = output::writer(style, LineSender::new(name, tx, Arc::clone(&counters)));
    let on_stats = Box::new(move |k: &crate::kernel::KernelStats| {
        counters.kernel_lost_records.store(k.lost_records, Ordering::Relaxed);
        counters.kernel_lost_bytes.store(k.lost_bytes, Ordering::Relaxed);
        counters.kernel_unseen_starts.store(k.unseen_starts, Ordering::Relaxed);
    });
    let dest = Destination { out, stop, on_ready, on_stats };
    run::capture(command, dest)
}
