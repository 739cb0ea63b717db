//! `--metrics ADDR`: the agent's counters in Prometheus text format, on a
//! plain HTTP/1.0 listener (one small response per scrape; no framework).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};

use super::pipeline::SourceCounters;
use super::sinks::nats::NatsCounters;

/// Which counter of a source a metric shows.
type CounterOf = fn(&SourceCounters) -> u64;

/// Everything a scrape shows; sources come and go with reloads.
#[derive(Default)]
pub struct Metrics {
    pub sources: Mutex<BTreeMap<&'static str, Arc<SourceCounters>>>,
    pub nats: Mutex<Option<Arc<NatsCounters>>>,
}

impl Metrics {
    /// Serve on `addr` from a thread of its own, for the life of the process.
    /// Says where on stderr: port 0 takes a free port.
    pub fn serve(self: &Arc<Self>, addr: SocketAddr) -> Result<()> {
        let listener = TcpListener::bind(addr).with_context(|| format!("--metrics {addr}"))?;
        crate::note!("cleartap: metrics on http://{}/metrics", listener.local_addr()?);
        let metrics = Arc::clone(self);
        std::thread::Builder::new().name("metrics".into()).spawn(move || {
            for conn in listener.incoming().flatten() {
                // One scrape at a time is plenty; a stuck client times out.
                let _ = metrics.answer(conn);
            }
        })?;
        Ok(())
    }

    fn answer(&self, mut conn: TcpStream) -> std::io::Result<()> {
        conn.set_read_timeout(Some(Duration::from_secs(2)))?;
        conn.set_write_timeout(Some(Duration::from_secs(2)))?;
        let mut request = [0u8; 1024];
        let _ = conn.read(&mut request)?;
        let body = self.render();
        write!(
            conn,
            "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let sources = self.sources.lock().expect("metrics lock");
        let per_source: [(&str, &str, CounterOf); 6] = [
            ("cleartap_events_total", "Events captured", |c| c.events.load(Ordering::Relaxed)),
            ("cleartap_event_bytes_total", "Bytes of JSON events captured", |c| {
                c.bytes.load(Ordering::Relaxed)
            }),
            ("cleartap_events_dropped_total", "Events dropped: the agent's queue was full", |c| {
                c.dropped.load(Ordering::Relaxed)
            }),
            (
                "cleartap_kernel_lost_records_total",
                "Records the kernel could not hand over (ring buffer full)",
                |c| c.kernel_lost_records.load(Ordering::Relaxed),
            ),
            ("cleartap_kernel_lost_bytes_total", "Bytes of those records", |c| {
                c.kernel_lost_bytes.load(Ordering::Relaxed)
            }),
            (
                "cleartap_kernel_unseen_calls_total",
                "TLS calls not captured: the kernel's per-thread table lost their start",
                |c| c.kernel_unseen_starts.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, read) in per_source {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (source, counters) in sources.iter() {
                let _ = writeln!(out, "{name}{{source=\"{source}\"}} {}", read(counters));
            }
        }
        if let Some(nats) = self.nats.lock().expect("metrics lock").as_ref() {
            render_nats(&mut out, nats);
        }
        out
    }
}

fn render_nats(out: &mut String, n: &NatsCounters) {
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let rows: [(&str, &str, &str, u64); 8] = [
        ("cleartap_nats_published_total", "counter", "Messages published", get(&n.published)),
        ("cleartap_nats_acked_total", "counter", "Messages JetStream acknowledged", get(&n.acked)),
        ("cleartap_nats_duplicates_total", "counter", "Acks for duplicates", get(&n.duplicates)),
        ("cleartap_nats_retried_total", "counter", "Messages published again", get(&n.retried)),
        ("cleartap_spool_dropped_total", "counter", "Events the full spool refused", get(&n.spool_drops)),
        ("cleartap_nats_too_large_total", "counter", "Events over max_payload", get(&n.too_large)),
        ("cleartap_spool_bytes", "gauge", "Bytes waiting in the spool", get(&n.spool_bytes)),
        (
            "cleartap_nats_connected",
            "gauge",
            "1 when connected",
            u64::from(n.connected.load(Ordering::Relaxed)),
        ),
    ];
    for (name, kind, help, value) in rows {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
    }
}
