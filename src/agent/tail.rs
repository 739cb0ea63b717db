//! `cleartap tail --from nats://...`: the fleet's events read back from
//! the JetStream stream through an ephemeral ordered consumer, filtered by
//! host and source on the server (by subject). JSON is printed as
//! published; text in the live subcommands' layout (`json_to_text`).

use std::io::Write;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use async_nats::jetstream::{self, consumer::DeliverPolicy};
use futures_util::StreamExt;

use crate::cli::TailArgs;
use crate::output::{json_to_text, LineFormat};

pub fn run(args: &TailArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let stop = crate::run::stop_on_signals()?;
    runtime.block_on(async {
        tokio::select! {
            result = tail(args) => result,
            () = until(stop) => Ok(()),
        }
    })
}

async fn until(flag: std::sync::Arc<std::sync::atomic::AtomicBool>) {
    while !flag.load(std::sync::atomic::Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `<prefix>.<host or *>.<source or *>`
fn filter_subject(args: &TailArgs) -> String {
    let part = |p: &Option<String>| p.clone().unwrap_or_else(|| "*".into());
    format!("{}.{}.{}", args.subject_prefix, part(&args.host), part(&args.source))
}

fn deliver_policy(args: &TailArgs) -> Result<DeliverPolicy> {
    if args.all {
        return Ok(DeliverPolicy::All);
    }
    let Some(since) = &args.since else { return Ok(DeliverPolicy::New) };
    let start = match humantime::parse_duration(since) {
        Ok(ago) => std::time::SystemTime::now() - ago,
        Err(_) => humantime::parse_rfc3339_weak(since).with_context(|| {
            format!("--since {since}: neither a duration (10m) nor a time (2026-11-26T10:00:00Z)")
        })?,
    };
    let nanos = start.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos() as i128;
    let start_time =
        time::OffsetDateTime::from_unix_timestamp_nanos(nanos).context("--since out of range")?;
    Ok(DeliverPolicy::ByStartTime { start_time })
}

async fn tail(args: &TailArgs) -> Result<()> {
    let mut options = async_nats::ConnectOptions::new().name("cleartap-tail");
    if let Some(creds) = &args.creds {
        options =
            options.credentials_file(creds).await.with_context(|| format!("--creds {}", creds.display()))?;
    }
    let urls: Vec<async_nats::ServerAddr> =
        args.from.iter().map(|u| u.parse()).collect::<Result<_, _>>().context("--from")?;
    let client = options.connect(urls).await.context("connecting to NATS")?;
    let js = jetstream::new(client);
    let stream = js.get_stream(&args.stream).await.with_context(|| format!("stream {}", args.stream))?;
    let config = jetstream::consumer::pull::OrderedConfig {
        filter_subject: filter_subject(args),
        deliver_policy: deliver_policy(args)?,
        ..Default::default()
    };
    let mut consumer: jetstream::consumer::Consumer<jetstream::consumer::pull::OrderedConfig> =
        stream.create_consumer(config).await.context("creating an ordered consumer")?;
    if args.no_follow && consumer.info().await?.num_pending == 0 {
        return Ok(());
    }
    let mut messages = consumer.messages().await.context("reading the stream")?;
    let mut out = std::io::stdout().lock();
    while let Some(message) = messages.next().await {
        let message = message.context("reading the stream")?;
        print_event(&mut out, &message.payload, args)?;
        let caught_up = message.info().map(|i| i.pending == 0).unwrap_or(false);
        if caught_up {
            out.flush()?;
            if args.no_follow {
                return Ok(());
            }
        }
    }
    bail!("the stream ended")
}

fn print_event(out: &mut impl Write, payload: &[u8], args: &TailArgs) -> Result<()> {
    match args.format {
        LineFormat::Json => {
            out.write_all(payload)?;
            out.write_all(b"\n")?;
        }
        LineFormat::Text => json_to_text::write_event(out, payload, args.hex)?,
    }
    Ok(())
}
