//! Where each library's TLS secrets can be read, for `--keylog` and `-w`:
//! OpenSSL's struct offsets by version (generated table), GnuTLS's default
//! key log function (found by disassembly), Go's `writeKeyLog` (found with
//! the other Go probe points), rustls's `KeyLog` implementations (found by
//! their symbols). A library without them is still captured in
//! plaintext; the caller warns that it gives no key log lines.

use anyhow::{bail, Context, Result};

use super::openssl_layout::{SslLayout, LAYOUTS};
use super::TlsTarget;
use crate::discover::boringssl::{self, BoringsslKeylogPoints};
use crate::discover::elf::{Function, Symbols};
use crate::discover::gnutls_keylog::{self, GnutlsKeylogPoints};
use crate::discover::nss_freebl::FreeblPoints;

/// How secrets are read from one probed file.
#[derive(Debug, Clone)]
pub enum SecretPoints {
    /// Read the structs after `SSL_do_handshake` (and at the first
    /// SSL_read/SSL_write after a handshake).
    Openssl {
        layout: SslLayout,
        do_handshake: Option<Function>,
    },
    /// A probe on the default key log function.
    Gnutls(GnutlsKeylogPoints),
    /// Probes on the program's implementations of rustls's `KeyLog::log`.
    Rustls(Vec<(String, Function)>),
    /// A probe on BoringSSL's `ssl_log_secret` (see `discover::boringssl`).
    Boringssl(BoringsslKeylogPoints),
    /// NSS's libnss3: where TLS 1.3 secrets are named, the ClientHello
    /// hashed and the transcript cloned; and its freebl, where secrets are
    /// computed (`sources::nss`).
    NssPk11 {
        derive: Function,
        digest_op: Function,
        clone_context: Function,
    },
    NssFreebl(FreeblPoints),
}

/// Where `target`'s secrets are read: its registry entry says how (Go
/// programs have their own probe point, found with the others).
pub fn find(target: &TlsTarget) -> Result<Option<SecretPoints>> {
    match target.source.and_then(|s| s.secrets) {
        Some(find) => find(target).map(Some),
        None => Ok(None),
    }
}

/// OpenSSL: the struct offsets of its version, read after the handshake.
pub fn openssl(target: &TlsTarget) -> Result<SecretPoints> {
    // BoringSSL's structs are not OpenSSL's: its secrets are read where it
    // logs them itself, found from its code (with or without symbols).
    if target.library == "boringssl" {
        return Ok(SecretPoints::Boringssl(boringssl::find_keylog(target.file.data())?));
    }
    let version = target.version.as_deref().context("its OpenSSL version could not be read from the file")?;
    let layout = layout_for(version)?;
    let symbols = Symbols::of(&target.file, &["SSL_do_handshake"])?;
    Ok(SecretPoints::Openssl { layout, do_handshake: symbols.get("SSL_do_handshake") })
}

/// GnuTLS: its default key log function, found by disassembly.
pub fn gnutls(target: &TlsTarget) -> Result<SecretPoints> {
    Ok(SecretPoints::Gnutls(gnutls_keylog::find(&target.file)?))
}

/// rustls: the program's key loggers, which rustls calls for every
/// secret. A program that set none gives no secrets, and is told so.
pub fn rustls(target: &TlsTarget) -> Result<SecretPoints> {
    let loggers = super::rustls::key_loggers(&target.file)?;
    if loggers.is_empty() {
        bail!(
            "the program implements no rustls KeyLog (it set no key logger, so rustls keeps its \
             secrets to itself)"
        );
    }
    Ok(SecretPoints::Rustls(loggers))
}

/// The generated offsets covering `version`, or an error naming the
/// versions that have them.
pub fn layout_for(version: &str) -> Result<SslLayout> {
    let wanted =
        OpensslVersion::parse(version).with_context(|| format!("unrecognised OpenSSL version {version}"))?;
    let found =
        LAYOUTS.iter().find(|l| match (OpensslVersion::parse(l.first), OpensslVersion::parse(l.last)) {
            (Some(first), Some(last)) => first.line() == wanted.line() && first <= wanted && wanted <= last,
            _ => false,
        });
    match found {
        Some(layout) => Ok(*layout),
        None => {
            let known: Vec<String> = LAYOUTS.iter().map(|l| format!("{}..{}", l.first, l.last)).collect();
            bail!(
                "no struct offsets for OpenSSL {version} (generated for {}); regenerate them with \
                 scripts/gen-openssl-offsets",
                known.join(", ")
            )
        }
    }
}

/// `3.0.22` or `1.1.1w`, ordered within a release line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct OpensslVersion {
    major: u32,
    minor: u32,
    patch: u32,
    /// 1.1.1's letter: a = 1, ..., none = 0.
    letter: u32,
}

impl OpensslVersion {
    fn parse(s: &str) -> Option<Self> {
        let mut parts = s.split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        let last = parts.next()?;
        if parts.next().is_some() {
            return None;
        }
        let digits_end = last.find(|c: char| !c.is_ascii_digit()).unwrap_or(last.len());
        let patch = last[..digits_end].parse().ok()?;
        let letter = match &last[digits_end..] {
            "" => 0,
            l if l.len() == 1 && l.as_bytes()[0].is_ascii_lowercase() => {
                u32::from(l.as_bytes()[0] - b'a' + 1)
            }
            _ => return None,
        };
        Some(OpensslVersion { major, minor, patch, letter })
    }

    /// Layouts change only between release lines' patch releases: 1.1.1
    /// is one line (its letters are the patches); 3.x lines are 3.0, 3.1, ...
    fn line(&self) -> (u32, u32, u32) {
        if self.major == 1 {
            (self.major, self.minor, self.patch)
        } else {
            (self.major, self.minor, 0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_order_within_a_line() {
        let v = |s| OpensslVersion::parse(s).unwrap();
        assert!(v("1.1.1b") < v("1.1.1w"));
        assert!(v("1.1.1") < v("1.1.1a"));
        assert!(v("3.0.8") < v("3.0.22"));
        assert_eq!(v("3.0.22").line(), v("3.0.0").line());
        assert_ne!(v("3.1.0").line(), v("3.0.9").line());
        assert_ne!(v("1.1.1w").line(), v("1.1.0l").line());
        for bad in ["", "3", "3.0", "3.0.x", "3.0.1ab", "3.0.1.2", "1.1.1W"] {
            assert!(OpensslVersion::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn every_generated_row_parses_and_is_ordered() {
        for l in LAYOUTS {
            let (first, last) =
                (OpensslVersion::parse(l.first).unwrap(), OpensslVersion::parse(l.last).unwrap());
            assert!(first <= last && first.line() == last.line(), "{}..{}", l.first, l.last);
            assert_eq!(layout_for(l.first).unwrap(), *l);
            assert_eq!(layout_for(l.last).unwrap(), *l);
        }
        assert!(layout_for("9.9.9").is_err());
        assert!(layout_for("not a version").is_err());
    }
}
