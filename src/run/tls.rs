//! `cleartap tls`: TLS libraries found now and later -> records.

use std::io;
use std::mem::MaybeUninit;

use anyhow::Result;

use super::{filters, pump, Handler};
use crate::bpf::types::ct_tls_secret;
use crate::cli::{Decode, Library, TlsArgs};
use crate::context::libraries::{KnownLibrary, LibraryResolver};
use crate::context::streams::HttpStreams;
use crate::context::{Enricher, HttpRecord};
use crate::events::{c_chars, Event};
use crate::kernel::{self, KernelStats};
use crate::output::keylog::KeyLog;
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
    let probes = TlsProbes::load(&mut tls_storage, &filters, args.output.ringbuf_size, args.max_connections)?;
    let mut watch_storage = MaybeUninit::uninit();
    let shared = SharedMaps::of(probes.events_map(), probes.stats_map());
    let watch = ProcWatch::load(&mut watch_storage, &filters, &sources, shared)?;
    let mut links = probes.attach_syscalls()?;
    // Watch first, then scan: a process starting in between is seen twice
    // at worst (each file is attached once), never missed.
    links.extend(watch.attach()?);

    let go = args.libraries.contains(&Library::Go);
    let mut attacher = Attacher::new(&probes, sources, go, &args.exclude_libs);
    let mut targets = Vec::new();
    for path in &args.libs {
        targets.push(attacher.attach_explicit(path)?);
    }
    for path in &args.go_binaries {
        targets.push(attacher.attach_go_binary(path)?);
    }
    let keylog = args.keylog.as_deref().map(|p| KeyLog::create(p, args.force)).transpose()?;
    targets.extend(attacher.scan_host());
    if targets.is_empty() {
        eprintln!("cleartap: no TLS library in use yet; watching for processes that start");
    }
    let mut handler = TlsHandler {
        enricher: Enricher::new(LibraryResolver::new(Vec::new())),
        attacher,
        decode: args.decode,
        streams: HttpStreams::default(),
        keylog,
        unusable_secrets: 0,
    };
    for t in targets {
        handler.attached(t);
    }
    let out = output::writer(args.output.style(args.body), io::stdout());
    let result = pump(probes.events_map(), probes.stats_map(), links, &mut handler, out);
    let created = KernelStats::read(probes.stats_map()).conn_entries;
    let evicted = created.saturating_sub(probes.connections_held());
    eprintln!(
        "cleartap: connection table: {created} entries created, {evicted} evicted (--max-connections {})",
        args.max_connections
    );
    result
}

fn selected_sources(libraries: &[Library]) -> Vec<&'static TlsSource> {
    let mut sources: Vec<&'static TlsSource> = libraries
        .iter()
        .filter_map(|l| match l {
            Library::Openssl => Some(&openssl::SOURCE),
            Library::Gnutls => Some(&gnutls::SOURCE),
            Library::Nss => Some(&nss::SOURCE),
            Library::Go => None, // executables, not a library file (see Attacher)
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
    keylog: Option<KeyLog>,
    /// Secrets whose fields could not be read whole: not written.
    unusable_secrets: u64,
}

impl TlsHandler<'_, '_> {
    fn attached(&mut self, t: TlsTarget) {
        let version = t.version.as_deref().map_or(String::new(), |v| format!(" {v}"));
        eprintln!("cleartap: attached to {} ({}{}: {})", t.display_path, t.library, version, t.hook_names());
        self.enricher.add_library(KnownLibrary {
            id: t.library_id,
            inode: t.id.ino,
            library: t.library,
            version: t.version,
            path: t.display_path,
        });
    }

    /// A secret -> one key log line, when asked for and readable whole.
    fn secret(&mut self, s: &ct_tls_secret) -> io::Result<()> {
        let Some(keylog) = self.keylog.as_mut() else { return Ok(()) };
        let field = |bytes: &[u8], len: u32| bytes.get(..len as usize).map(<[u8]>::to_vec);
        let (label, random, secret) = (
            field(c_chars(&s.label), s.label_len),
            field(&s.client_random, s.random_len),
            field(&s.secret, s.secret_len),
        );
        match (s.missing, label, random, secret) {
            (0, Some(label), Some(random), Some(secret)) if !secret.is_empty() => {
                keylog.secret(&String::from_utf8_lossy(&label), &random, &secret)
            }
            _ => {
                if self.unusable_secrets == 0 {
                    eprintln!(
                        "cleartap: warning: a TLS secret of pid {} could not be read whole; it is not \
                         written to the key log (counted in the summary)",
                        s.pid
                    );
                }
                self.unusable_secrets += 1;
                Ok(())
            }
        }
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
            Event::TlsSecret(secret) => self.secret(secret)?,
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
        if let Some(keylog) = &self.keylog {
            eprintln!(
                "cleartap: {} TLS secrets written to the key log; {} could not be read",
                keylog.written, self.unusable_secrets
            );
        }
        for (exchange, connection) in self.streams.close_all(std::time::SystemTime::now()) {
            out.http(&HttpRecord { exchange: &exchange, connection: &connection })?;
        }
        Ok(())
    }
}
