//! `cleartap tls`: TLS libraries found now and later -> records; with
//! `--keylog` and `-w`, their secrets and the packets they decrypt.

use std::collections::HashMap;
use std::io;
use std::mem::MaybeUninit;
use std::path::Path;

use anyhow::{Context, Result};

use super::{filters, pump, Destination, Handler};
use crate::assembly::tls::TlsAssembler;
use crate::bpf::types::{ct_ssl_keys, ct_tls_secret};
use crate::cli::TlsArgs;
use crate::context::libraries::KnownLibrary;
use crate::context::TlsRecord;
use crate::events::{c_chars, Event};
use crate::kernel::{self, KernelStats};
use crate::output::keylog::{secrets, KeyLines, KeyLog};
use crate::output::{self, Existing, Output};
use crate::packets::capture::{Owner, PacketCapture};
use crate::sources::attached::report_detached;
use crate::sources::attacher::Attacher;
use crate::sources::discovery::Discovery;
use crate::sources::packets::{self, PacketProbes};
use crate::sources::procwatch::{ProcWatch, SharedMaps};
use crate::sources::tls::TlsProbes;
use crate::sources::{gotls, nss, TlsSource, TlsTarget, TLS_SOURCES};

pub fn run(args: &TlsArgs) -> Result<()> {
    let pcapng_on_stdout = args.write.as_deref() == Some(Path::new("-"));
    if pcapng_on_stdout && args.output.output.is_some() {
        anyhow::bail!("-w - writes the packets to standard output: records cannot go to --output as well");
    }
    args.output.redirect(args.force)?;
    // `-w -`: stdout carries the capture, so records are not printed.
    let out = if pcapng_on_stdout {
        output::writer(args.output.style(args.body), io::sink())
    } else {
        output::to_stdout(args.output.style(args.body))?
    };
    capture(args, Destination::signalled(out)?)
}

/// The capture, records into `dest`.
pub fn capture(args: &TlsArgs, dest: Destination) -> Result<()> {
    kernel::preflight()?;
    if args.write.is_some() {
        kernel::require_capabilities(&[kernel::CAP_NET_ADMIN])?;
    }
    let filters = filters(&args.filters)?;
    let secrets = args.keylog.is_some() || args.write.is_some();
    let sources = selected_sources(&args.libraries, secrets);
    // Output files first: an existing one is refused before anything is loaded.
    let keylog = args.keylog.as_deref().map(|p| KeyLog::create(p, args.force)).transpose()?;

    let mut tls_storage = MaybeUninit::uninit();
    let probes = TlsProbes::load(
        &mut tls_storage,
        &filters,
        args.output.ring_bytes(crate::cli::TLS_RING_DEFAULT),
        args.max_connections,
        secrets,
    )?;
    let shared = SharedMaps::of(probes.events_map(), probes.stats_map());
    let mut watch_storage = MaybeUninit::uninit();
    let watch = ProcWatch::load(&mut watch_storage, &filters, &sources, shared, args.hold_unchecked)?;
    let mut links = probes.attach_syscalls()?;
    // Watch first, then scan: a process starting in between is seen twice
    // at worst (each file is attached once), never missed.
    links.extend(watch.attach()?);

    let mut packet_storage = MaybeUninit::uninit();
    let mut capture = None;
    let mut packet_probes = None;
    let mut tc = Vec::new();
    if let Some(path) = &args.write {
        let started = start_capture(&mut packet_storage, args, path, shared)?;
        links.extend(started.probes.attach_owners()?);
        // Attached after the pcapng header is written; detached on drop.
        tc = attach_interfaces(&started.probes, &started.interfaces)?;
        capture = Some(started.capture);
        packet_probes = Some(started.probes);
    }

    let go = args.libraries.iter().any(|l| l == gotls::NAME);
    let discovery = Discovery::new(sources, go, secrets, &args.exclude_libs);
    let mut attacher = Attacher::new(&probes, discovery);
    if args.hold_unchecked {
        attacher.hold_unchecked(watch.checked_files(), watch.held_processes());
    }
    let mut targets = Vec::new();
    for path in &args.libs {
        targets.push(attacher.attach_explicit(path)?);
    }
    for path in &args.go_binaries {
        targets.push(attacher.attach_go_binary(path)?);
    }
    targets.extend(attacher.scan_host());
    targets.extend(attacher.scan_library_dirs());
    if targets.is_empty() {
        crate::note!("cleartap: no TLS library found yet; watching for processes that start");
    }
    // Files found from now on are opened and parsed on a thread of their
    // own, never on the one that drains the ring buffer (see `discovery`).
    attacher.start_thread()?;
    let mut handler = TlsHandler {
        assembler: TlsAssembler::new(args.decode, args.body),
        attacher,
        secrets: Secrets { lines: KeyLines::default(), keylog, capture, ..Default::default() },
    };
    for t in targets {
        handler.attached(t);
    }
    let mut rings: Vec<&libbpf_rs::MapMut> = vec![probes.events_map()];
    if let Some(p) = &packet_probes {
        rings.push(p.packets_map());
    }
    let result = pump(&rings, probes.stats_map(), links, &mut handler, dest);
    drop(tc);
    let created = KernelStats::read(probes.stats_map()).conn_entries;
    let evicted = created.saturating_sub(probes.connections_held());
    crate::note!(
        "cleartap: connection table: {created} entries created, {evicted} evicted (--max-connections {})",
        args.max_connections
    );
    result
}

struct StartedCapture<'obj> {
    probes: PacketProbes<'obj>,
    capture: PacketCapture,
    interfaces: Vec<packets::CaptureInterface>,
}

/// The pcapng file (header and interface blocks written) and the kernel
/// programs that will feed it.
fn start_capture<'obj>(
    storage: &'obj mut MaybeUninit<libbpf_rs::OpenObject>,
    args: &TlsArgs,
    path: &Path,
    shared: SharedMaps,
) -> Result<StartedCapture<'obj>> {
    let names = if args.interfaces.is_empty() { vec!["any".to_string()] } else { args.interfaces.clone() };
    let interfaces = packets::interfaces(&names)?;
    let snaplen = args.snaplen.unwrap_or(u32::MAX);
    let filter = (!args.filter.is_empty()).then(|| args.filter.join(" "));
    let out: Box<dyn io::Write> = if path == Path::new("-") {
        Box::new(io::BufWriter::with_capacity(1 << 16, io::stdout()))
    } else {
        let existing = if args.force { Existing::Replace } else { Existing::Refuse };
        let file = output::create_private(path, existing).with_context(|| {
            format!("-w {}: cannot create it (an existing file needs --force to be replaced)", path.display())
        })?;
        Box::new(io::BufWriter::with_capacity(1 << 16, file))
    };
    // The largest packet a record holds (bpf/packets.bpf.c, Wireshark's
    // limit too) bounds the snap length the file declares.
    let capture = PacketCapture::new(out, interfaces.clone(), snaplen.min(262_144), filter.as_deref())
        .with_context(|| format!("-w {}", path.display()))?;
    let probes =
        PacketProbes::load(storage, shared, snaplen, args.output.ring_bytes(crate::cli::TLS_RING_DEFAULT))?;
    let names: Vec<&str> = interfaces.iter().map(|i| i.name.as_str()).collect();
    crate::note!(
        "cleartap: capturing packets on {}{}",
        names.join(", "),
        filter.map_or(String::new(), |f| format!(" matching `{f}`"))
    );
    Ok(StartedCapture { probes, capture, interfaces })
}

fn attach_interfaces(
    probes: &PacketProbes,
    interfaces: &[packets::CaptureInterface],
) -> Result<Vec<packets::TcAttachment>> {
    let mut attached = Vec::new();
    for iface in interfaces {
        attached.extend(probes.attach_interface(iface)?);
    }
    Ok(attached)
}

/// The registry's libraries named by `--library` (Go is not a library
/// file: its executables are found by discovery, see `Discovery::new`).
/// With `secrets`, the files some libraries' secrets come from as well.
fn selected_sources(libraries: &[String], secrets: bool) -> Vec<&'static TlsSource> {
    let secret_files = if secrets { &nss::SECRET_SOURCES[..] } else { &[] };
    TLS_SOURCES
        .into_iter()
        .chain(secret_files.iter().copied())
        .filter(|s| libraries.iter().any(|l| l == s.name))
        .collect()
}

/// Where secrets go: the key log file and the capture, each line once.
#[derive(Default)]
struct Secrets {
    lines: KeyLines,
    keylog: Option<KeyLog>,
    capture: Option<PacketCapture>,
    /// Secrets whose fields could not be read whole: not written.
    unreadable: u64,
    /// Labels the probe could not read, read from the process afterwards.
    labels_read_late: u64,
    /// OpenSSL handshakes whose fields failed the sanity check, by library.
    refused: HashMap<u16, u64>,
}

impl Secrets {
    fn line(&mut self, label: &str, client_random: &[u8], secret: &[u8]) -> io::Result<()> {
        let Some(line) = self.lines.accept(label, client_random, secret) else { return Ok(()) };
        if let Some(keylog) = self.keylog.as_mut() {
            keylog.write(&line)?;
        }
        if let (Some(capture), Ok(random)) = (self.capture.as_mut(), client_random.try_into()) {
            capture.secret(line.as_bytes(), random)?;
        }
        Ok(())
    }

    fn summary(&self) {
        let refused: u64 = self.refused.values().sum();
        if let Some(keylog) = &self.keylog {
            crate::note!(
                "cleartap: {} TLS secrets written to the key log; {} could not be read whole; {} labels read \
                 from their process after the call (not in memory at it); {} OpenSSL handshakes refused by \
                 the sanity check; {} refused for an unknown label or length",
                keylog.written,
                self.unreadable,
                self.labels_read_late,
                refused,
                self.lines.invalid
            );
        }
        if let Some(c) = &self.capture {
            let s = c.stats;
            crate::note!(
                "cleartap: pcapng: {} packets written, {} filtered out, {} secrets embedded; {} handshakes \
                 got no secrets in time",
                s.written,
                s.filtered_out,
                s.secrets,
                s.handshakes_without_secrets
            );
        }
    }
}

/// TLS data -> the assembler; exec and library-open events -> requests to
/// the discovery thread, whose finds are attached after each poll;
/// secrets -> key log and capture; packets -> capture.
struct TlsHandler<'p, 'obj> {
    assembler: TlsAssembler,
    attacher: Attacher<'p, 'obj>,
    secrets: Secrets,
}

impl TlsHandler<'_, '_> {
    fn attached(&mut self, t: TlsTarget) {
        let version = t.version.as_deref().map_or(String::new(), |v| format!(" {v}"));
        let (path, version) = (
            crate::output::escape::for_terminal(&t.display_path),
            crate::output::escape::for_terminal(&version),
        );
        crate::note!("cleartap: attached to {path} ({}{version}: {})", t.library, t.hook_names());
        self.assembler.add_library(KnownLibrary {
            id: t.library_id,
            inode: t.id.ino,
            library: t.library,
            version: t.version,
            path: t.display_path,
            callers: t.callers,
        });
    }

    /// A secret -> one key log line, when readable whole.
    fn tls_secret(&mut self, s: &ct_tls_secret) -> io::Result<()> {
        let field = |bytes: &[u8], len: u32| bytes.get(..len as usize).map(<[u8]>::to_vec);
        let label = match s.missing {
            0 => field(c_chars(&s.label), s.label_len),
            1 => label_read_late(s).inspect(|_| self.secrets.labels_read_late += 1),
            _ => None,
        };
        match (label, field(&s.client_random, s.random_len), field(&s.secret, s.secret_len)) {
            (Some(label), Some(random), Some(secret)) if !secret.is_empty() => {
                self.secrets.line(&String::from_utf8_lossy(&label), &random, &secret)
            }
            _ => {
                if self.secrets.unreadable == 0 {
                    crate::note!(
                        "cleartap: warning: a TLS secret of pid {} could not be read whole; it is not \
                         written (counted in the summary)",
                        s.pid
                    );
                }
                self.secrets.unreadable += 1;
                Ok(())
            }
        }
    }

    /// OpenSSL's raw secrets -> key log lines, if they pass the checks.
    fn ssl_keys(&mut self, k: &ct_ssl_keys) -> io::Result<()> {
        match secrets::openssl_lines(k) {
            Ok(lines) => {
                for l in lines {
                    self.secrets.line(l.label, &l.client_random, &l.secret)?;
                }
            }
            Err(why) => {
                let id = k.library_id as u16;
                let count = self.secrets.refused.entry(id).or_default();
                *count += 1;
                if *count == 1 {
                    let library = self.assembler.library_name(id);
                    let library = crate::output::escape::for_terminal(&library);
                    crate::note!(
                        "cleartap: warning: the secrets read from {library} (pid {}) fail a sanity check \
                         ({why}): its struct offsets do not match; no key log lines from it",
                        k.pid
                    );
                }
            }
        }
        Ok(())
    }
}

/// The label of a secret whose label alone the probe could not read, read
/// from the process now. It is a constant in the program's read-only data
/// (Go's, rustls's, a library's), so it holds what it held at the call;
/// its page had not been faulted in yet, which a probe cannot do (seen on
/// the first secret of a Go program fresh from disk). A length of 0 is a C
/// string (GnuTLS, BoringSSL), up to its NUL. What is read is checked as
/// any label is: only the key log format's labels are written.
fn label_read_late(s: &ct_tls_secret) -> Option<Vec<u8>> {
    let (max, len) = (s.label.len(), s.label_len as usize);
    if s.label_addr == 0 || len > max {
        return None;
    }
    let bytes = crate::context::memory::read(s.pid, s.label_addr, if len == 0 { max } else { len })?;
    match len {
        0 => bytes.iter().position(|&b| b == 0).map(|end| bytes[..end].to_vec()),
        _ => (bytes.len() == len).then_some(bytes),
    }
}

/// A TLS record names the owner of its tuple: the capture can use that.
fn remember_owner(secrets: &mut Secrets, record: &TlsRecord) {
    if let (Some(capture), Some(local), Some(remote)) = (&mut secrets.capture, record.local, record.remote) {
        capture.remember_owner(
            local,
            remote,
            Owner { pid: record.pid, uid: record.uid, comm: record.comm.clone() },
        );
    }
}

impl Handler for TlsHandler<'_, '_> {
    fn event(&mut self, event: Event, out: &mut dyn Output) -> io::Result<()> {
        match event {
            Event::TlsData(d) => {
                let secrets = &mut self.secrets;
                self.assembler.data(&d, out, |record| remember_owner(secrets, record))?;
            }
            Event::TlsSecret(secret) => self.tls_secret(secret)?,
            Event::SslKeys(keys) => self.ssl_keys(keys)?,
            Event::Packet(p) => {
                if let Some(capture) = self.secrets.capture.as_mut() {
                    capture.packet(&p)?;
                }
            }
            Event::SockOwner(o) => {
                if let Some(capture) = self.secrets.capture.as_mut() {
                    capture.owner(o);
                }
            }
            // Queued for the discovery thread; attached in `idle` once parsed.
            Event::Exec(exec) => self.attacher.new_process(&exec),
            Event::LibOpen(open) => self.attacher.library_opened(&open),
            _ => {}
        }
        Ok(())
    }

    fn wakeup(&self) -> Option<crossbeam_channel::Receiver<()>> {
        self.attacher.wakeup()
    }

    fn idle(&mut self) -> io::Result<()> {
        for t in self.attacher.attach_found() {
            self.attached(t);
        }
        for name in self.attacher.detach_unused() {
            report_detached(&name);
        }
        match self.secrets.capture.as_mut() {
            Some(capture) => {
                capture.tick()?;
                capture.flush()
            }
            None => Ok(()),
        }
    }

    fn detach(&mut self) {
        self.attacher.detach_all();
    }

    /// Exchanges that only the end of the stream completes (a response
    /// delimited by the connection's close); held packets.
    fn finish(&mut self, out: &mut dyn Output) -> io::Result<()> {
        if let Some(capture) = self.secrets.capture.as_mut() {
            capture.finish()?;
        }
        self.secrets.summary();
        if let Some((held, early)) = self.attacher.hold_counts() {
            crate::note!(
                "cleartap: --hold-unchecked: {held} processes held until their file was checked, {early} of them \
                 continued before the check finished"
            );
        }
        self.assembler.finish(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A secret record whose label the probe could not read, at `label`
    /// in this process.
    fn unread_label(label: &[u8], len: usize) -> ct_tls_secret {
        ct_tls_secret {
            pid: std::process::id(),
            missing: 1,
            label_addr: label.as_ptr() as u64,
            label_len: len as u32,
            ..Default::default()
        }
    }

    #[test]
    fn a_label_the_probe_could_not_read_is_read_from_the_process() {
        let go_label = b"CLIENT_HANDSHAKE_TRAFFIC_SECRET and what follows it";
        let got = label_read_late(&unread_label(go_label, 31));
        assert_eq!(got.as_deref(), Some(&b"CLIENT_HANDSHAKE_TRAFFIC_SECRET"[..]));
        // A C string (length 0): up to its NUL, which must come within
        // the record's label size.
        let c_label = b"SERVER_TRAFFIC_SECRET_0\0garbage";
        assert_eq!(
            label_read_late(&unread_label(c_label, 0)).as_deref(),
            Some(&b"SERVER_TRAFFIC_SECRET_0"[..])
        );
        assert_eq!(label_read_late(&unread_label(&[b'A'; 64], 0)), None, "no NUL in 32 bytes");
        // Longer than a record's label, no address, or a process gone.
        assert_eq!(label_read_late(&unread_label(&[b'A'; 64], 33)), None);
        assert_eq!(label_read_late(&ct_tls_secret { label_addr: 0, ..unread_label(go_label, 31) }), None);
        assert_eq!(
            label_read_late(&ct_tls_secret { pid: u32::MAX >> 1, ..unread_label(go_label, 31) }),
            None
        );
    }
}
