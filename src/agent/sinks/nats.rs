//! `[sinks.nats]`: NATS JetStream, behind a write-ahead spool.
//!
//! Every event is appended to the on-disk spool (`crates/spool`) by the
//! agent thread, and a publisher thread (a small tokio runtime) publishes
//! from the spool, in order, with a window of unacknowledged messages in
//! flight; a record leaves the spool only when JetStream acknowledged it.
//! So one path covers all cases: a healthy broker (segments are deleted
//! within moments, before the kernel ever writes them back to disk), an
//! outage (the spool grows, up to `spool_max_bytes`, then new events are
//! dropped and counted), a clean stop (nothing is held in memory) and a
//! crash (a torn tail is cut at the next start). A message published again
//! after a failure carries the same `Nats-Msg-Id`, so JetStream keeps one.

use std::collections::{BTreeMap, VecDeque};
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context as _, Result};
use async_nats::jetstream::{self, context::PublishErrorKind};
use futures_util::FutureExt;

use super::{FlushTimer, Sink};
use crate::agent::config::NatsSink;
use crate::agent::pipeline::Envelope;
use spool::{Position, PushError, Spool};

/// Messages published and not yet acknowledged.
const WINDOW: usize = 512;
/// Payload bytes read from the spool at a time.
const BATCH_BYTES: usize = 4 << 20;
const ACK_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A clean stop waits this long for the spool to drain; the rest stays
/// in the spool for the next start.
const DRAIN_ON_STOP: Duration = Duration::from_secs(5);
/// How long JetStream remembers message ids (streams the agent creates).
const DUPLICATE_WINDOW: Duration = Duration::from_secs(600);

/// Counters the metrics endpoint and the summary read.
#[derive(Default)]
pub struct NatsCounters {
    pub published: AtomicU64,
    pub acked: AtomicU64,
    pub duplicates: AtomicU64,
    pub retried: AtomicU64,
    pub spool_drops: AtomicU64,
    pub too_large: AtomicU64,
    pub spool_bytes: AtomicU64,
    pub connected: AtomicBool,
}

struct Shared {
    spool: Mutex<Spool>,
    counters: Arc<NatsCounters>,
    wake: tokio::sync::Notify,
    stop: AtomicBool,
}

pub struct NatsPublisher {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    /// `<prefix>.<host>.`
    subject_head: String,
    /// `<host>-<boot id>-<start time>-`: with the seq, unique per event.
    id_head: String,
    /// Events the full spool refused, per source, not yet reported.
    unreported: BTreeMap<&'static str, u64>,
    spool_error_shown: bool,
    flush_timer: FlushTimer,
}

impl NatsPublisher {
    pub fn start(config: &NatsSink, host: &str, spool_dir: &std::path::Path, max_bytes: u64) -> Result<Self> {
        let (spool, recovered) =
            Spool::open(spool_dir, max_bytes).with_context(|| format!("spool {}", spool_dir.display()))?;
        for file in &recovered.torn_files {
            crate::eprintln_escaped!(
                "cleartap: warning: spool file {} ended in a torn record (the agent was killed?): cut {} bytes",
                file.display(),
                recovered.torn_bytes
            );
        }
        if recovered.records > 0 {
            crate::eprintln_escaped!(
                "cleartap: {} events left in the spool by the last run are sent first",
                recovered.records
            );
        }
        let counters = Arc::new(NatsCounters::default());
        let shared = Arc::new(Shared {
            spool: Mutex::new(spool),
            counters,
            wake: tokio::sync::Notify::new(),
            stop: AtomicBool::new(false),
        });
        let thread = {
            let (shared, config) = (Arc::clone(&shared), config.clone());
            std::thread::Builder::new()
                .name("nats".into())
                .spawn(move || publisher_thread(&config, &shared))
                .context("starting the NATS publisher thread")?
        };
        let start = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Ok(NatsPublisher {
            shared,
            thread: Some(thread),
            subject_head: format!("{}.{host}.", config.subject_prefix),
            id_head: format!("{host}-{}-{}-", boot_id(), start.as_nanos()),
            unreported: BTreeMap::new(),
            spool_error_shown: false,
            flush_timer: FlushTimer::default(),
        })
    }

    pub fn counters(&self) -> Arc<NatsCounters> {
        Arc::clone(&self.shared.counters)
    }
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map_or_else(|_| "noboot".into(), |s| s.trim().into())
}

/// A spool record: subject and message id, each behind a u16 length, then
/// the payload.
fn encode(subject: &str, id: &str, payload: &[u8]) -> Vec<u8> {
    let mut r = Vec::with_capacity(4 + subject.len() + id.len() + payload.len());
    for part in [subject.as_bytes(), id.as_bytes()] {
        r.extend_from_slice(&(part.len() as u16).to_le_bytes());
        r.extend_from_slice(part);
    }
    r.extend_from_slice(payload);
    r
}

fn decode(record: &[u8]) -> Option<(String, String, &[u8])> {
    let mut rest = record;
    let mut parts = Vec::with_capacity(2);
    for _ in 0..2 {
        let len = u16::from_le_bytes(rest.get(..2)?.try_into().ok()?) as usize;
        parts.push(String::from_utf8(rest.get(2..2 + len)?.to_vec()).ok()?);
        rest = &rest[2 + len..];
    }
    let id = parts.pop()?;
    Some((parts.pop()?, id, rest))
}

impl Sink for NatsPublisher {
    fn name(&self) -> &'static str {
        "nats"
    }

    fn send(&mut self, event: &Envelope) -> std::io::Result<()> {
        let subject = format!("{}{}", self.subject_head, event.source);
        let id = format!("{}{}", self.id_head, event.seq);
        let pushed = self.shared.spool.lock().expect("spool lock").push(&encode(&subject, &id, &event.json));
        match pushed {
            Ok(()) => self.shared.wake.notify_one(),
            Err(e) => {
                if let PushError::Io(io) = &e {
                    if !std::mem::replace(&mut self.spool_error_shown, true) {
                        crate::eprintln_escaped!("cleartap: warning: writing the spool failed: {io}; events are dropped and counted");
                    }
                }
                self.shared.counters.spool_drops.fetch_add(1, Ordering::Relaxed);
                *self.unreported.entry(event.source).or_default() += 1;
            }
        }
        Ok(())
    }

    fn lost(&mut self) -> Vec<(&'static str, u64, &'static str)> {
        // Room for the report itself, or it would be lost as well.
        if self.unreported.is_empty() || !self.shared.spool.lock().expect("spool lock").has_room(512) {
            return Vec::new();
        }
        let lost = std::mem::take(&mut self.unreported);
        lost.into_iter().map(|(source, n)| (source, n, "the NATS spool was full")).collect()
    }

    fn has_unreported_losses(&self) -> bool {
        !self.unreported.is_empty()
    }

    /// Buffered records and the commit point reach the files every
    /// `sinks::FLUSH_INTERVAL`: a kill -9 loses at most that much.
    fn tick(&mut self) -> std::io::Result<()> {
        let mut spool = self.shared.spool.lock().expect("spool lock");
        self.shared.counters.spool_bytes.store(spool.bytes(), Ordering::Relaxed);
        if !self.flush_timer.due() {
            return Ok(());
        }
        spool.flush()
    }

    fn close(&mut self) -> std::io::Result<String> {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let mut spool = self.shared.spool.lock().expect("spool lock");
        spool.sync()?;
        let c = &self.shared.counters;
        Ok(format!(
            "nats: {} published, {} acknowledged ({} duplicates dropped by the server), {} published again \
             after failures, {} dropped (spool full), {} too large for the server; {} events left in the spool",
            c.published.load(Ordering::Relaxed),
            c.acked.load(Ordering::Relaxed),
            c.duplicates.load(Ordering::Relaxed),
            c.retried.load(Ordering::Relaxed),
            c.spool_drops.load(Ordering::Relaxed),
            c.too_large.load(Ordering::Relaxed),
            spool.pending_records(),
        ))
    }
}

type AckOutcome = Result<jetstream::publish::PublishAck, jetstream::context::PublishError>;
type AckFuture = Pin<Box<dyn Future<Output = AckOutcome> + Send>>;

fn publisher_thread(config: &NatsSink, shared: &Shared) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
    match runtime {
        Ok(rt) => rt.block_on(async {
            if let Err(e) = publish(config, shared).await {
                crate::eprintln_escaped!("cleartap: error: NATS sink: {e:#}; events stay in the spool");
            }
        }),
        Err(e) => crate::eprintln_escaped!("cleartap: error: NATS sink: no async runtime: {e}"),
    }
}

async fn connect(config: &NatsSink, shared: &Shared) -> Result<async_nats::Client> {
    let mut options = async_nats::ConnectOptions::new()
        .name("cleartap-agent")
        .retry_on_initial_connect()
        .max_reconnects(None)
        .reconnect_delay_callback(|attempt| Duration::from_millis(100 << attempt.min(5)).min(MAX_BACKOFF));
    if let Some(creds) = &config.creds {
        options =
            options.credentials_file(creds).await.with_context(|| format!("creds {}", creds.display()))?;
    }
    if let (Some(user), Some(password)) = (&config.user, &config.password) {
        options = options.user_and_password(user.clone(), password.clone());
    }
    if let Some(token) = &config.token {
        options = options.token(token.clone());
    }
    if let Some(ca) = &config.tls_ca {
        options = options.add_root_certificates(ca.clone());
    }
    // Events carry plaintext and secrets: TLS unless plaintext is asked for.
    options = options.require_tls(!config.plaintext);
    if let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    let counters = Arc::clone(&shared.counters);
    options = options.event_callback(move |event| {
        let counters = Arc::clone(&counters);
        async move {
            match event {
                async_nats::Event::Connected => counters.connected.store(true, Ordering::Relaxed),
                async_nats::Event::Disconnected => {
                    counters.connected.store(false, Ordering::Relaxed);
                    crate::eprintln_escaped!(
                        "cleartap: warning: NATS disconnected; events are kept in the spool"
                    );
                }
                _ => {}
            }
        }
    });
    let urls: Vec<async_nats::ServerAddr> =
        config.url.iter().map(|u| u.parse()).collect::<Result<_, _>>().context("sinks.nats.url")?;
    Ok(options.connect(urls).await?)
}

/// The stream, created (subjects `<prefix>.>`) if missing and allowed;
/// retried until the broker answers.
async fn ensure_stream(config: &NatsSink, js: &jetstream::Context, shared: &Shared) -> bool {
    let mut backoff = Duration::from_millis(100);
    let mut warned = false;
    while !shared.stop.load(Ordering::Relaxed) {
        let result = if config.create_stream {
            let stream = jetstream::stream::Config {
                name: config.stream.clone(),
                subjects: vec![format!("{}.>", config.subject_prefix)],
                duplicate_window: DUPLICATE_WINDOW,
                num_replicas: config.replicas,
                ..Default::default()
            };
            js.get_or_create_stream(stream).await.map(|_| ()).map_err(|e| e.to_string())
        } else {
            js.get_stream(&config.stream).await.map(|_| ()).map_err(|e| e.to_string())
        };
        match result {
            Ok(()) => return true,
            Err(e) if !warned => {
                warned = true;
                crate::eprintln_escaped!(
                    "cleartap: warning: NATS stream {}: {e}; retrying, events are spooled",
                    config.stream
                );
            }
            Err(_) => {}
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    false
}

async fn publish(config: &NatsSink, shared: &Shared) -> Result<()> {
    let client = connect(config, shared).await?;
    let js = jetstream::new(client);
    if !ensure_stream(config, &js, shared).await {
        return Ok(());
    }
    let mut window = Window { inflight: VecDeque::new(), backoff: Duration::from_millis(100), warned: None };
    let mut stop_deadline = None;
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            let deadline = *stop_deadline.get_or_insert_with(|| tokio::time::Instant::now() + DRAIN_ON_STOP);
            let empty = window.inflight.is_empty() && shared.spool.lock().expect("spool lock").is_empty();
            if empty || tokio::time::Instant::now() > deadline {
                return Ok(());
            }
        }
        window.fill(&js, shared).await;
        if window.inflight.is_empty() {
            let _ = tokio::time::timeout(Duration::from_millis(50), shared.wake.notified()).await;
            continue;
        }
        window.settle_oldest(shared).await;
    }
}

/// Messages in flight, oldest first, each with its spool position.
struct Window {
    inflight: VecDeque<(Position, AckFuture)>,
    backoff: Duration,
    /// The last failure shown, so that an outage is one warning.
    warned: Option<String>,
}

impl Window {
    /// Publish from the spool until the window is full.
    async fn fill(&mut self, js: &jetstream::Context, shared: &Shared) {
        if self.inflight.len() >= WINDOW {
            return;
        }
        let batch = shared.spool.lock().expect("spool lock").read(WINDOW - self.inflight.len(), BATCH_BYTES);
        let batch = match batch {
            Ok(b) => b,
            Err(e) => return self.failed(shared, &format!("reading the spool: {e}")).await,
        };
        for (position, record) in batch {
            let Some((subject, id, payload)) = decode(&record) else {
                // Not ours (the spool's checksums passed): skip it, counted.
                shared.counters.too_large.fetch_add(1, Ordering::Relaxed);
                self.inflight.push_back((position, Box::pin(std::future::ready(Err(skipped())))));
                continue;
            };
            let message =
                jetstream::message::PublishMessage::build().message_id(id).payload(payload.to_vec().into());
            match js.send_publish(subject, message).await {
                Ok(ack) => {
                    shared.counters.published.fetch_add(1, Ordering::Relaxed);
                    self.inflight.push_back((position, ack.into_future()));
                }
                Err(e) if e.kind() == PublishErrorKind::MaxPayloadExceeded => {
                    shared.counters.too_large.fetch_add(1, Ordering::Relaxed);
                    crate::eprintln_escaped!(
                        "cleartap: warning: an event of {} bytes is larger than the NATS server takes: {e}",
                        payload.len()
                    );
                    self.inflight.push_back((position, Box::pin(std::future::ready(Err(skipped())))));
                }
                Err(e) => return self.failed(shared, &e.to_string()).await,
            }
        }
    }

    /// Wait for the oldest ack, then take every later one already there:
    /// commit once up to the last of them on success (one spool lock per
    /// batch, not per event), start over from the last commit on failure.
    async fn settle_oldest(&mut self, shared: &Shared) {
        let (_, oldest) = self.inflight.front_mut().expect("not empty");
        let outcome = match tokio::time::timeout(ACK_TIMEOUT, oldest).await {
            Ok(outcome) => outcome,
            Err(_) => return self.failed(shared, "no acknowledgement within 10 s").await,
        };
        let mut settled = None;
        let mut next = Some(outcome);
        while let Some(outcome) = next.take() {
            if let Err(why) = count_ack(outcome, &shared.counters) {
                self.commit(shared, settled);
                return self.failed(shared, &why).await;
            }
            settled = self.inflight.pop_front().map(|(position, _)| position);
            next = self.inflight.front_mut().and_then(|(_, ack)| ack.now_or_never());
        }
        self.backoff = Duration::from_millis(100);
        if self.warned.take().is_some() {
            crate::eprintln_escaped!("cleartap: NATS publishing again; draining the spool");
        }
        self.commit(shared, settled);
    }

    fn commit(&self, shared: &Shared, upto: Option<Position>) {
        let Some(position) = upto else { return };
        if let Err(e) = shared.spool.lock().expect("spool lock").commit(position) {
            crate::eprintln_escaped!("cleartap: warning: committing the spool: {e}");
        }
    }

    async fn failed(&mut self, shared: &Shared, why: &str) {
        if self.warned.as_deref() != Some(why) {
            crate::eprintln_escaped!(
                "cleartap: warning: NATS publish failed: {why}; retrying, events are spooled"
            );
            self.warned = Some(why.to_string());
        }
        shared.counters.retried.fetch_add(self.inflight.len() as u64, Ordering::Relaxed);
        self.inflight.clear();
        shared.spool.lock().expect("spool lock").rewind();
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }
}

/// Counts one settled message; the reason to start over if it failed.
fn count_ack(outcome: AckOutcome, counters: &NatsCounters) -> Result<(), String> {
    match outcome {
        Ok(ack) => {
            counters.acked.fetch_add(1, Ordering::Relaxed);
            if ack.duplicate {
                counters.duplicates.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        }
        Err(e) if e.kind() == PublishErrorKind::Other && e.to_string().contains(SKIPPED) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

const SKIPPED: &str = "cleartap: skipped";

/// The outcome of a record that is not published (too large, not ours):
/// it counts as settled so the spool moves past it.
fn skipped() -> jetstream::context::PublishError {
    jetstream::context::PublishError::with_source(PublishErrorKind::Other, SKIPPED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spool_records_round_trip() {
        let r = encode("cleartap.web-1.tls", "web-1-x-1-7", b"{\"a\":1}");
        assert_eq!(decode(&r), Some(("cleartap.web-1.tls".into(), "web-1-x-1-7".into(), &b"{\"a\":1}"[..])));
        assert_eq!(decode(&r[..3]), None);
        assert_eq!(decode(&[0xff, 0xff]), None);
    }
}
