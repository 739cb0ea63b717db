//! `cleartap tls`: TLS libraries found now and later -> records.

use std::io;
use std::mem::MaybeUninit;

use anyhow::Result;

use super::{filters, pump, Handler};
use crate::cli::{Decode, Library, TlsArgs};
use crate::context::libraries::{KnownLibrary, LibraryResolver};
use crate::context::streams::HttpStreams;
use crate::context::{Enricher, HttpRecord};
use crate::events::Event;
use crate::kernel;
use crate::output::{self, Output};
use crate::sources::attacher::Attacher;
use crate::sources::procwatch::{ProcWatch, SharedMaps};
use crate::sources::tls::TlsProbes;
use crate::sources::{gnutls, nss, openssl, TlsSource, TlsTarget};

pub fn run(args: &TlsArgs) -> Result<()> {
    kernel::preflight()?;
    let filters = filters(&args.filters)?;
    let sources = selected_sources(&args.libraries);

    let mut tls_storage = MaybeUninit::uninit();
    let probes = TlsProbes::load(&mut tls_storage, &filters, args.output.ringbuf_size)?;
    let mut watch_storage = MaybeUninit::uninit();
    let shared = SharedMaps::of(probes.events_map(), probes.stats_map());
    let watch = ProcWatch::load(&mut watch_storage, &filters, &sources, shared)?;
    let mut links = probes.attach_syscalls()?;
    // Watch first, then scan: a process starting in between is seen twice
    // at worst (each file is attached once), never missed.
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
    let mut handler = TlsHandler {
        enricher: Enricher::new(LibraryResolver::new(Vec::new())),
        attacher,
        decode: args.decode,
        streams: HttpStreams::default(),
    };
    for t in targets {
        handler.attached(t);
    }
    let out = output::writer(args.output.style(args.body), io::stdout());
    pump(probes.events_map(), probes.stats_map(), links, &mut handler, out)
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

/// TLS data -> records; exec and library-open events -> new attachments.
struct TlsHandler<'p, 'obj> {
    enricher: Enricher,
    attacher: Attacher<'p, 'obj>,
    decode: Decode,
    streams: HttpStreams,
}

impl TlsHandler<'_, '_> {
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
}

impl Handler for TlsHandler<'_, '_> {
    fn event(&mut self, event: Event, out: &mut dyn Output) -> io::Result<()> {
        match event {
            Event::TlsData(d) => {
                let record = self.enricher.tls(&d);
                if self.decode != Decode::Http {
                    out.tls(&record)?;
                }
                if self.decode != Decode::Raw {
                    for (exchange, connection) in self.streams.feed(&record) {
                        out.http(&HttpRecord { exchange: &exchange, connection: &connection })?;
                    }
                }
            }
            Event::Exec { pid, path } => {
                for t in self.attacher.scan_new_process(pid, &String::from_utf8_lossy(path)) {
                    self.attached(t);
                }
            }
            Event::LibOpen { pid, path } => {
                if let Some(t) = self.attacher.consider_library(pid, &String::from_utf8_lossy(path)) {
                    self.attached(t);
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn detach(&mut self) {
        self.attacher.detach_all();
    }

    /// Exchanges that only the end of the stream completes (a response
    /// delimited by the connection's close).
    fn finish(&mut self, out: &mut dyn Output) -> io::Result<()> {
        for (exchange, connection) in self.streams.close_all(std::time::SystemTime::now()) {
            out.http(&HttpRecord { exchange: &exchange, connection: &connection })?;
        }
        Ok(())
    }
}
