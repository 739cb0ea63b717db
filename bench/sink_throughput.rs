//! The agent's NATS sink alone, for bench/run: COUNT events of SIZE bytes
//! of JSON go through the very path the agent uses (the write-ahead spool,
//! then the publisher with its window of async acks) to a JetStream
//! server, timed from the first send until JetStream acknowledged the last.
//! Prints one JSON object.
//!
//!     sink_throughput NATS_URL COUNT SIZE SPOOL_DIR

use std::path::Path;
use std::sync::atomic::Ordering;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cleartap::agent::config::NatsSink;
use cleartap::agent::pipeline::Envelope;
use cleartap::agent::sinks::nats::NatsPublisher;
use cleartap::agent::sinks::Sink;

/// The agent ticks its sinks about this often (a flush of the spool).
const EVENTS_PER_TICK: u64 = 256;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const ACK_TIMEOUT: Duration = Duration::from_secs(300);

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, count, size, spool] = args.as_slice() else {
        bail!("usage: sink_throughput NATS_URL COUNT SIZE SPOOL_DIR");
    };
    let (count, size): (u64, usize) = (count.parse()?, size.parse()?);
    let config: NatsSink = toml::from_str(&format!(
        "url = {url:?}\nstream = \"CLEARTAP_BENCH\"\nsubject_prefix = \"cleartap-bench\"\nplaintext = true"
    ))?;
    let mut sink = NatsPublisher::start(&config, "bench", Path::new(spool), 16 << 30)?;
    let counters = sink.counters();
    let connected = Instant::now();
    while !counters.connected.load(Ordering::Relaxed) {
        if connected.elapsed() > CONNECT_TIMEOUT {
            bail!("not connected to {url} after {} s", CONNECT_TIMEOUT.as_secs());
        }
        sleep(Duration::from_millis(10));
    }
    let json = event_of_size(size);
    let start = Instant::now();
    for seq in 1..=count {
        sink.send(&Envelope { seq, source: "tls", json: json.clone() })?;
        if seq % EVENTS_PER_TICK == 0 {
            sink.tick()?;
        }
    }
    sink.tick()?;
    let sent = start.elapsed();
    while counters.acked.load(Ordering::Relaxed) < count {
        if start.elapsed() > ACK_TIMEOUT {
            break;
        }
        sleep(Duration::from_millis(1));
        sink.tick()?;
    }
    let seconds = start.elapsed().as_secs_f64();
    let acked = counters.acked.load(Ordering::Relaxed);
    let summary = sink.close().context("closing the sink")?;
    let result = serde_json::json!({
        "events": count,
        "event_bytes": size,
        "acked": acked,
        "spool_drops": counters.spool_drops.load(Ordering::Relaxed),
        "send_seconds": sent.as_secs_f64(),
        "seconds": seconds,
        "events_s": acked as f64 / seconds,
        "mib_s": (acked as f64 * size as f64) / seconds / f64::from(1 << 20),
        "summary": summary,
    });
    println!("{result}");
    Ok(())
}

/// A JSON object of exactly `size` bytes, shaped like a tls event.
fn event_of_size(size: usize) -> Vec<u8> {
    let head = br#"{"host":"bench","seq":1,"event":"tls","data_b64":""#;
    let mut json = head.to_vec();
    json.resize(size.saturating_sub(2).max(head.len()), b'A');
    json.extend_from_slice(b"\"}");
    json
}
