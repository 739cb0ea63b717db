//! The kernel programs of `bpf/tls.bpf.c`, shared by every TLS library
//! whose plaintext functions have the SSL_write/SSL_read shape: loading
//! them with the filters, and attaching them to one file at a time.

use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd};

use anyhow::{bail, Context, Result};
use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags, OpenObject, ProgramMut, UprobeOpts};

use super::gotls::GoProbePoints;
use super::openssl_layout::SslLayout;
use super::secret_points::{self, SecretPoints};
use super::{TlsHook, TlsTarget};
use crate::bpf::tls::{OpenTlsSkel, TlsSkel, TlsSkelBuilder};
use crate::bpf::types::ct_ssl_layout;
use crate::discover::boringssl::BoringsslKeylogPoints;
use crate::discover::elf::Function;
use crate::discover::gnutls_keylog::GnutlsKeylogPoints;
use crate::kernel::{self, Filters};

/// What the kernel has that the TLS programs adapt to, probed (never
/// guessed from the version: distributions backport), and how they adapt.
/// `cleartap check` shows them (and loads the programs through `TlsProbes::load`).
#[derive(Debug, Clone, Copy)]
pub struct Features {
    /// bpf_loop (5.17): large calls continue in `emit_more_loop`, else in
    /// `emit_more` through at most 33 tail calls.
    pub has_loop: bool,
    /// bpf_get_attach_cookie in uprobes (5.15): records name their library
    /// by the probe's cookie, else from the process's maps.
    pub has_cookie: bool,
    /// Atomic fetch-and-add (5.12): the programs that number calls are
    /// loaded as NAME, else as NAME_nofetch (see bpf/tls.bpf.c).
    pub has_fetch: bool,
    /// Sleepable uprobes (6.0): the secret probes load as NAME_sleepable,
    /// which fault in the pages of what they read (see `fault_in` in
    /// bpf/tls.bpf.c), else as NAME.
    pub has_sleepable: bool,
}

/// Suffix of the programs loaded where the kernel has no atomic fetch.
const NOFETCH: &str = "_nofetch";
/// Suffix of the programs loaded where uprobes can sleep.
const SLEEPABLE: &str = "_sleepable";

impl Features {
    pub fn probe() -> Self {
        Features {
            has_loop: kernel::has_bpf_loop(),
            has_cookie: kernel::has_attach_cookie(),
            has_fetch: kernel::has_atomic_fetch(),
            // The end-to-end test of the fallback (a label read from its
            // process later) turns them off on a kernel that has them.
            has_sleepable: kernel::has_sleepable_uprobes()
                && std::env::var_os("CLEARTAP_TEST_NO_SLEEPABLE").is_none(),
        }
    }

    /// Set the flags in `.rodata` and pick which programs load: one of
    /// each NAME / NAME_nofetch and NAME / NAME_sleepable pair, and one
    /// continuation.
    fn prepare(&self, open: &mut OpenTlsSkel) -> Result<()> {
        let rodata = open.maps.rodata_data.as_deref_mut().context("no .rodata in the BPF object")?;
        rodata.has_bpf_loop = self.has_loop;
        rodata.has_attach_cookie = self.has_cookie;
        open.progs.emit_more_loop.set_autoload(self.has_loop);
        open.progs.emit_more.set_autoload(!self.has_loop);
        let object = open.open_object_mut();
        let names: Vec<String> = object.progs().map(|p| p.name().to_string_lossy().into_owned()).collect();
        for mut prog in object.progs_mut() {
            let name = prog.name().to_string_lossy().into_owned();
            if name.ends_with(NOFETCH) {
                prog.set_autoload(!self.has_fetch);
            } else if names.contains(&format!("{name}{NOFETCH}")) {
                prog.set_autoload(self.has_fetch);
            } else if name.ends_with(SLEEPABLE) {
                prog.set_autoload(self.has_sleepable);
            } else if names.contains(&format!("{name}{SLEEPABLE}")) {
                prog.set_autoload(!self.has_sleepable);
            }
        }
        Ok(())
    }
}

/// The loaded TLS programs. Attaching returns links; dropping a link
/// detaches it (links close with their file descriptors).
pub struct TlsProbes<'obj> {
    skel: TlsSkel<'obj>,
    /// What was loaded, and so which programs to attach.
    features: Features,
    /// Read TLS secrets too (`--keylog`, `-w`).
    secrets: bool,
}

impl<'obj> TlsProbes<'obj> {
    /// `max_connections` sizes the per-connection map; calls in flight
    /// (one per thread or goroutine inside a TLS call) get a quarter of it.
    pub fn load(
        storage: &'obj mut MaybeUninit<OpenObject>,
        filters: &Filters,
        ringbuf_bytes: u32,
        max_connections: u32,
        secrets: bool,
    ) -> Result<Self> {
        let mut open = TlsSkelBuilder::default().open(storage).context("opening the TLS BPF object")?;
        let rodata = open.maps.rodata_data.as_deref_mut().context("no .rodata in the BPF object")?;
        crate::set_filters!(rodata, filters);
        open.maps.events.set_max_entries(ringbuf_bytes).context("sizing the ring buffer")?;
        let in_flight = (max_connections / 4).max(1024);
        open.maps.conns.set_max_entries(max_connections).context("sizing the connection map")?;
        // The end-to-end test of the eviction count shrinks it.
        let calls = std::env::var("CLEARTAP_TEST_ACTIVE_CALLS").ok().and_then(|n| n.parse().ok());
        open.maps.active_calls.set_max_entries(calls.unwrap_or(in_flight)).context("sizing the call map")?;
        open.maps.go_reads.set_max_entries(in_flight).context("sizing the Go read map")?;
        open.maps.tied_writers.set_max_entries(max_connections).context("sizing the tied writer map")?;
        open.maps.ssl_keys_sent.set_max_entries(max_connections).context("sizing the secrets map")?;
        let features = Features::probe();
        rodata.capture_secrets = secrets;
        // Wake-ups in batches of 1/32 of the ring; the consumer also polls
        // every few ms (see run::POLL_INTERVAL), which bounds the delay.
        rodata.wakeup_batch_bytes = u64::from(ringbuf_bytes / 32);
        features.prepare(&mut open)?;
        let skel = open.load().map_err(kernel::load_failed("the TLS BPF programs"))?;
        let probes = TlsProbes { skel, features, secrets };
        probes.install_continuation()?;
        Ok(probes)
    }

    /// The uprobe cookie: `target`'s file id, which names the file in its
    /// records. 0 on kernels without cookies (< 5.15), which refuse to
    /// attach a uprobe with any other value (EOPNOTSUPP).
    fn cookie(&self, target: &TlsTarget) -> u64 {
        if !self.features.has_cookie {
            return 0;
        }
        u64::from(target.library_id)
    }

    /// Large payloads continue in a tail call to `emit_more_loop` (or
    /// `emit_more` where the kernel has no bpf_loop).
    fn install_continuation(&self) -> Result<()> {
        let p = &self.skel.progs;
        let continuation = if self.features.has_loop { &p.emit_more_loop } else { &p.emit_more };
        let fd = continuation.as_fd().as_raw_fd();
        self.skel
            .maps
            .emit_continue
            .update(&0u32.to_ne_bytes(), &fd.to_ne_bytes(), MapFlags::ANY)
            .context("installing the payload continuation program")
    }

    /// The system call tracepoints that reveal the fd of an active call.
    pub fn attach_syscalls(&self) -> Result<Vec<Link>> {
        let p = &self.skel.progs;
        super::attach_tracepoints(&[
            &p.sys_enter_write,
            &p.sys_enter_read,
            &p.sys_enter_sendto,
            &p.sys_enter_recvfrom,
            &p.sys_enter_sendmsg,
            &p.sys_enter_recvmsg,
            &p.sys_enter_writev,
            &p.sys_enter_readv,
        ])
    }

    /// Entry and return probes on every hook of `target`, and where its
    /// secrets are read when they are wanted.
    pub fn attach(&self, target: &TlsTarget) -> Result<Vec<Link>> {
        if let Some(points) = &target.go {
            return self.attach_go(target, points);
        }
        let mut links = self.attach_plaintext(target)?;
        if self.secrets {
            links.extend(self.attach_secrets(target));
        }
        Ok(links)
    }

    fn attach_plaintext(&self, target: &TlsTarget) -> Result<Vec<Link>> {
        let mut links = Vec::new();
        for (hook, function) in &target.hooks {
            let offset = function.file_offset as usize;
            let path = target.file.proc_path();
            for (prog, retprobe) in self.programs_for(hook)? {
                let cookie = self.cookie(target);
                let opts = UprobeOpts { retprobe, cookie, ..Default::default() };
                let link = prog.attach_uprobe_with_opts(-1, &path, offset, opts).with_context(|| {
                    format!(
                        "attaching a {} to {} in {}",
                        if retprobe { "uretprobe" } else { "uprobe" },
                        hook.symbol,
                        target.display_path
                    )
                })?;
                links.push(link);
            }
        }
        Ok(links)
    }

    /// Secrets are optional: a library without them is still captured in
    /// plaintext, with a warning that says why it gives no key log lines.
    fn attach_secrets(&self, target: &TlsTarget) -> Vec<Link> {
        // Found on the discovery thread for files discovered while
        // running (parsing has no place on this thread); else here.
        let found = match &target.secret_points {
            Some(found) => found.clone().map_err(anyhow::Error::msg),
            None => secret_points::find(target),
        };
        let attached = match found {
            Ok(Some(SecretPoints::Openssl { layout, do_handshake })) => {
                self.attach_openssl_secrets(target, &layout, do_handshake)
            }
            Ok(Some(SecretPoints::Gnutls(points))) => self.attach_gnutls_secrets(target, &points),
            Ok(Some(SecretPoints::Rustls(loggers))) => self.attach_rustls_secrets(target, &loggers),
            Ok(Some(SecretPoints::Boringssl(points))) => self.attach_boringssl_secrets(target, &points),
            Ok(Some(SecretPoints::NssPk11 { derive, digest_op, clone_context })) => {
                let p = &self.skel.progs;
                let probes = [
                    (&p.nss_digest_op, digest_op, false, "PK11_DigestOp"),
                    (&p.nss_clone_context, clone_context, false, "PK11_CloneContext"),
                    (&p.nss_derive, derive, false, "PK11_DeriveWithFlags"),
                    (&p.nss_derive_return, derive, true, "PK11_DeriveWithFlags"),
                ];
                self.attach_secret_probes(target, &probes)
            }
            Ok(Some(SecretPoints::NssFreebl(f))) => {
                let p = &self.skel.progs;
                let probes = [
                    (&p.nss_p_hash, f.tls_p_hash, false, "TLS_P_hash"),
                    (&p.nss_prf, f.tls_prf, false, "TLS_PRF"),
                    (&p.nss_hmac_finish, f.hmac_finish, false, "HMAC_Finish"),
                    (&p.nss_hmac_finish_return, f.hmac_finish, true, "HMAC_Finish"),
                ];
                self.attach_secret_probes(target, &probes)
            }
            Ok(None) => return Vec::new(),
            Err(e) => Err(e),
        };
        attached.unwrap_or_else(|e| {
            crate::eprintln_escaped!("cleartap: warning: no TLS secrets from {}: {e:#}", target.display_path);
            Vec::new()
        })
    }

    /// Map key of per-library settings: the library id where probes carry
    /// it (5.15+), else one shared entry (the first library's).
    fn settings_key(&self, target: &TlsTarget) -> [u8; 4] {
        let key = if self.features.has_cookie { u32::from(target.library_id) } else { 0 };
        key.to_ne_bytes()
    }

    fn attach_openssl_secrets(
        &self,
        target: &TlsTarget,
        layout: &SslLayout,
        do_handshake: Option<crate::discover::elf::Function>,
    ) -> Result<Vec<Link>> {
        let c = c_layout(layout);
        // SAFETY: a repr(C) struct of u32s, read as its bytes.
        let value = unsafe { plain::as_bytes(&c) };
        let key = self.settings_key(target);
        let maps = &self.skel.maps;
        // Without cookies every library shares entry 0: a second library
        // is fine only if its layout is the same.
        match maps.ssl_layouts.lookup(&key, MapFlags::ANY)? {
            Some(held) if !self.features.has_cookie && held != value => bail!(
                "only one OpenSSL struct layout can give secrets on kernels without uprobe cookies (< 5.15)"
            ),
            _ => maps.ssl_layouts.update(&key, value, MapFlags::ANY).context("storing the OpenSSL layout")?,
        }
        let Some(f) = do_handshake else { return Ok(Vec::new()) };
        let p = &self.skel.progs;
        [(&p.handshake_entry, false), (&p.ssl_handshake_return, true)]
            .into_iter()
            .map(|(prog, retprobe)| {
                let opts = UprobeOpts { retprobe, cookie: self.cookie(target), ..Default::default() };
                prog.attach_uprobe_with_opts(-1, target.file.proc_path(), f.file_offset as usize, opts)
                    .with_context(|| format!("attaching to SSL_do_handshake in {}", target.display_path))
            })
            .collect()
    }

    fn attach_gnutls_secrets(&self, target: &TlsTarget, points: &GnutlsKeylogPoints) -> Result<Vec<Link>> {
        let offset = points.client_random_offset.to_ne_bytes();
        self.skel.maps.gnutls_random_offsets.update(&self.settings_key(target), &offset, MapFlags::ANY)?;
        let opts = UprobeOpts { cookie: self.cookie(target), ..Default::default() };
        let p = &self.skel.progs;
        let link = self
            .secret_program(&p.gnutls_keylog, &p.gnutls_keylog_sleepable)
            .attach_uprobe_with_opts(-1, target.file.proc_path(), points.keylog_function as usize, opts)
            .with_context(|| format!("attaching to the key log function of {}", target.display_path))?;
        Ok(vec![link])
    }

    fn attach_rustls_secrets(&self, target: &TlsTarget, loggers: &[(String, Function)]) -> Result<Vec<Link>> {
        let opts = || UprobeOpts { cookie: self.cookie(target), ..Default::default() };
        let p = &self.skel.progs;
        let program = self.secret_program(&p.rustls_keylog, &p.rustls_keylog_sleepable);
        loggers
            .iter()
            .map(|(name, f)| {
                program
                    .attach_uprobe_with_opts(-1, target.file.proc_path(), f.file_offset as usize, opts())
                    .with_context(|| format!("attaching to {name} in {}", target.display_path))
            })
            .collect()
    }

    fn attach_boringssl_secrets(
        &self,
        target: &TlsTarget,
        points: &BoringsslKeylogPoints,
    ) -> Result<Vec<Link>> {
        // struct ct_boringssl_offsets: two u32s, s3 then random.
        let mut offsets = points.s3_offset.to_ne_bytes().to_vec();
        offsets.extend_from_slice(&points.random_offset.to_ne_bytes());
        let maps = &self.skel.maps;
        maps.boringssl_random_offsets.update(&self.settings_key(target), &offsets, MapFlags::ANY)?;
        let opts = UprobeOpts { cookie: self.cookie(target), ..Default::default() };
        let offset = points.log_secret.file_offset as usize;
        let p = &self.skel.progs;
        let link = self
            .secret_program(&p.boringssl_keylog, &p.boringssl_keylog_sleepable)
            .attach_uprobe_with_opts(-1, target.file.proc_path(), offset, opts)
            .with_context(|| format!("attaching to ssl_log_secret in {}", target.display_path))?;
        Ok(vec![link])
    }

    /// Of a secret probe's two variants, the one that loaded (see
    /// `Features::has_sleepable`).
    fn secret_program<'p>(
        &self,
        plain: &'p ProgramMut<'obj>,
        sleepable: &'p ProgramMut<'obj>,
    ) -> &'p ProgramMut<'obj> {
        if self.features.has_sleepable {
            sleepable
        } else {
            plain
        }
    }

    /// Probes that read secrets only: (program, function, return probe,
    /// the function's name for errors).
    fn attach_secret_probes(
        &self,
        target: &TlsTarget,
        probes: &[(&ProgramMut<'_>, Function, bool, &str)],
    ) -> Result<Vec<Link>> {
        probes
            .iter()
            .map(|(prog, f, retprobe, name)| {
                let opts =
                    UprobeOpts { retprobe: *retprobe, cookie: self.cookie(target), ..Default::default() };
                prog.attach_uprobe_with_opts(-1, target.file.proc_path(), f.file_offset as usize, opts)
                    .with_context(|| format!("attaching to {name} in {}", target.display_path))
            })
            .collect()
    }

    /// A Go executable: plain uprobes only, at the points `gotls` found.
    fn attach_go(&self, target: &TlsTarget, points: &GoProbePoints) -> Result<Vec<Link>> {
        // Go's Read has a handful of RETs; a file claiming hundreds is not
        // the crypto/tls cleartap knows, and each would cost a uprobe.
        const MAX_READ_RETURNS: usize = 64;
        if points.read_returns.len() > MAX_READ_RETURNS {
            bail!(
                "{} RET instructions in crypto/tls.(*Conn).Read (at most {MAX_READ_RETURNS} are probed)",
                points.read_returns.len()
            );
        }
        let path = target.file.proc_path();
        let p = &self.skel.progs;
        let (write, read_return) = if self.features.has_fetch {
            (&p.go_write, &p.go_read_return)
        } else {
            (&p.go_write_nofetch, &p.go_read_return_nofetch)
        };
        let mut probes = vec![(write, points.write, "Write"), (&p.go_read_entry, points.read, "Read")];
        probes.extend(points.read_returns.iter().map(|&ret| (read_return, ret, "Read (a RET)")));
        let keylog = self.secret_program(&p.go_keylog, &p.go_keylog_sleepable);
        probes.extend(points.keylog.map(|at| (keylog, at, "writeKeyLog")));
        probes
            .into_iter()
            .map(|(prog, offset, what)| {
                let opts = UprobeOpts { cookie: self.cookie(target), ..Default::default() };
                prog.attach_uprobe_with_opts(-1, &path, offset as usize, opts)
                    .with_context(|| format!("attaching a uprobe to {what} in {}", target.display_path))
            })
            .collect()
    }

    /// The entry program of `hook` and its return program if it has one
    /// (rustls's marks are entries only), each with whether it is a
    /// return probe, by name (see `TlsHook::entry_program` and
    /// `TlsHook::return_program`).
    fn programs_for(&self, hook: &TlsHook) -> Result<Vec<(ProgramMut<'_>, bool)>> {
        let entry = hook.entry_program().context("attached by attach_go")?;
        let mut programs = vec![(self.program(&entry)?, false)];
        if let Some(ret) = hook.return_program(self.features.has_fetch) {
            programs.push((self.program(&ret)?, true));
        }
        Ok(programs)
    }

    fn program(&self, name: &str) -> Result<ProgramMut<'_>> {
        self.skel
            .object()
            .progs_mut()
            .find(|p| p.name() == name)
            .with_context(|| format!("no program {name} in bpf/tls.bpf.c"))
    }

    /// Connections the kernel map holds now. It never deletes an entry, so
    /// entries created minus this is what its LRU evicted.
    pub fn connections_held(&self) -> u64 {
        self.skel.maps.conns.keys().count() as u64
    }

    /// The loaded object (`cleartap check` lists its programs).
    pub fn object(&self) -> &libbpf_rs::Object {
        libbpf_rs::skel::Skel::object(&self.skel)
    }

    pub fn events_map(&self) -> &libbpf_rs::MapMut<'obj> {
        &self.skel.maps.events
    }

    pub fn stats_map(&self) -> &libbpf_rs::MapMut<'obj> {
        &self.skel.maps.stats
    }
}

/// The generated layout as the kernel program reads it.
fn c_layout(l: &SslLayout) -> ct_ssl_layout {
    ct_ssl_layout {
        ssl_type: l.ssl_type.unwrap_or(NO_OFFSET),
        version: l.version,
        session: l.session,
        s3: l.s3,
        s3_is_pointer: u32::from(l.s3_is_pointer),
        s3_client_random: l.s3_client_random,
        handshake_secret: l.handshake_secret,
        handshake_traffic_hash: l.handshake_traffic_hash,
        client_app_traffic_secret: l.client_app_traffic_secret,
        server_app_traffic_secret: l.server_app_traffic_secret,
        exporter_master_secret: l.exporter_master_secret,
        session_master_key_length: l.session_master_key_length,
        session_master_key: l.session_master_key,
        session_cipher: l.session_cipher,
        cipher_id: l.cipher_id,
    }
}

/// `CT_NO_OFFSET` in `bpf/events.h`.
const NO_OFFSET: u32 = u32::MAX;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::{library_hooks, rustls, Entry};

    /// Every hook of the registry names an entry program and (rustls's
    /// marks aside) a return program, both variants, that
    /// `bpf/tls.bpf.c` defines: a new library's
    /// hooks fail here, not at their first attach. Opening the object
    /// needs no privilege.
    #[test]
    fn every_hook_has_its_kernel_programs() {
        let mut storage = MaybeUninit::uninit();
        let open = TlsSkelBuilder::default().open(&mut storage).unwrap();
        let names: Vec<String> =
            open.open_object().progs().map(|p| p.name().to_string_lossy().into_owned()).collect();
        let hooks = library_hooks().chain(rustls::MARKS.iter());
        let mut checked = 0;
        for hook in hooks {
            let entry = hook.entry_program().unwrap();
            assert!(names.contains(&entry), "{}: no {entry}", hook.symbol);
            for fetch in [true, false] {
                match hook.return_program(fetch) {
                    Some(ret) => assert!(names.contains(&ret), "{}: no {ret}", hook.symbol),
                    None => assert_eq!(hook.entry, Entry::RustlsMark, "{}: no return program", hook.symbol),
                }
            }
            checked += 1;
        }
        assert!(checked >= 18, "{checked} hooks");
    }

    /// Each entry program's function id (a constant of the program, which
    /// its return reads back) is the hook's: `bpf/tls.bpf.c` defines it as
    /// `<SHAPE>_ENTRY(<symbol>, CT_FN_<SYMBOL>)`, and
    /// `function_ids_match_the_c_header` ties that name to the id.
    #[test]
    fn every_entry_program_records_its_own_function() {
        let source = include_str!("../../bpf/tls.bpf.c");
        let mut checked = 0;
        for hook in library_hooks().filter(|h| h.entry != Entry::Rustls) {
            let program = hook.entry_program().unwrap();
            let (shape, symbol) = program.split_once("_entry_").unwrap();
            let line = format!(
                "{}_ENTRY({symbol}, CT_FN_{})",
                shape.to_ascii_uppercase(),
                symbol.to_ascii_uppercase()
            );
            assert_eq!(source.lines().filter(|l| *l == line).count(), 1, "{line}");
            checked += 1;
        }
        assert_eq!(checked, 16);
    }
}
