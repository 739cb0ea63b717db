//! OpenSSL's raw handshake secrets -> key log lines. The offsets they were
//! read with come from OpenSSL's sources, but a build can differ: every
//! field is checked for what it must look like, and a record that fails is
//! refused (never a wrong key log line).

use hkdf::Hkdf;
use sha2::{Sha256, Sha384};

use crate::bpf::types::ct_ssl_keys;

/// One NSS key log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyLine {
    pub label: &'static str,
    pub client_random: [u8; 32],
    pub secret: Vec<u8>,
}

const TLS1_2: i32 = 0x0303;
const TLS1_3: i32 = 0x0304;
const MASTER_KEY_LEN: u64 = 48;

/// The key log lines of one handshake, or why its fields cannot be right.
pub fn openssl_lines(k: &ct_ssl_keys) -> Result<Vec<KeyLine>, String> {
    if k.missing & (1 | 2 | 4 | 16) != 0 {
        return Err(format!("fields could not be read (mask {:#x})", k.missing));
    }
    if k.ssl_type != 0 {
        return Err(format!("the handle is not a TLS connection (type {})", k.ssl_type));
    }
    if k.client_random == [0; 32] {
        return Err("the client random is all zeros".into());
    }
    match k.version {
        TLS1_3 => tls13_lines(k),
        0x0301..=TLS1_2 => tls12_lines(k),
        v => Err(format!("protocol version {v:#x} is not a TLS version")),
    }
}

fn tls12_lines(k: &ct_ssl_keys) -> Result<Vec<KeyLine>, String> {
    if k.master_key_length != MASTER_KEY_LEN {
        return Err(format!("master key length {} is not 48", k.master_key_length));
    }
    if k.missing & 8 == 0 && k.cipher_id >> 24 != 0x03 {
        return Err(format!("cipher id {:#x} is not a TLS cipher", k.cipher_id));
    }
    let secret = k.master_key[..48].to_vec();
    if secret.iter().all(|&b| b == 0) {
        return Err("the master key is all zeros".into());
    }
    Ok(vec![KeyLine { label: "CLIENT_RANDOM", client_random: k.client_random, secret }])
}

fn tls13_lines(k: &ct_ssl_keys) -> Result<Vec<KeyLine>, String> {
    if k.missing & (8 | 32) != 0 {
        return Err(format!("TLS 1.3 fields could not be read (mask {:#x})", k.missing));
    }
    let hash_len = match k.cipher_id {
        0x0300_1301 | 0x0300_1303 | 0x0300_1304 | 0x0300_1305 => 32,
        0x0300_1302 => 48,
        id => return Err(format!("cipher id {id:#x} is not a TLS 1.3 cipher suite")),
    };
    let secrets = [
        &k.handshake_secret,
        &k.handshake_traffic_hash,
        &k.client_app_traffic_secret,
        &k.server_app_traffic_secret,
        &k.exporter_master_secret,
    ];
    // Each is an EVP_MAX_MD_SIZE array in a zeroed struct: the hash's
    // length of it is set, the rest stays zero. A wrong offset breaks that.
    for s in secrets {
        if s[..hash_len].iter().all(|&b| b == 0) || s[hash_len..].iter().any(|&b| b != 0) {
            return Err(format!("a TLS 1.3 secret does not look like a {hash_len}-byte secret"));
        }
    }
    let hs = &k.handshake_secret[..hash_len];
    let transcript = &k.handshake_traffic_hash[..hash_len];
    let line = |label, secret: Vec<u8>| KeyLine { label, client_random: k.client_random, secret };
    Ok(vec![
        line("CLIENT_HANDSHAKE_TRAFFIC_SECRET", expand_label(hs, b"c hs traffic", transcript, hash_len)),
        line("SERVER_HANDSHAKE_TRAFFIC_SECRET", expand_label(hs, b"s hs traffic", transcript, hash_len)),
        line("CLIENT_TRAFFIC_SECRET_0", k.client_app_traffic_secret[..hash_len].to_vec()),
        line("SERVER_TRAFFIC_SECRET_0", k.server_app_traffic_secret[..hash_len].to_vec()),
        line("EXPORTER_SECRET", k.exporter_master_secret[..hash_len].to_vec()),
    ])
}

/// HKDF-Expand-Label (RFC 8446 7.1) with the suite's hash (by its length).
fn expand_label(secret: &[u8], label: &[u8], context: &[u8], len: usize) -> Vec<u8> {
    let mut info = Vec::with_capacity(4 + 6 + label.len() + context.len());
    info.extend_from_slice(&(len as u16).to_be_bytes());
    info.push((6 + label.len()) as u8);
    info.extend_from_slice(b"tls13 ");
    info.extend_from_slice(label);
    info.push(context.len() as u8);
    info.extend_from_slice(context);
    let mut out = vec![0; len];
    // from_prk fails only for a key shorter than the hash, and expand only
    // for more than 255 blocks: neither can happen with these lengths.
    let expanded = if len == 48 {
        Hkdf::<Sha384>::from_prk(secret).ok().and_then(|h| h.expand(&info, &mut out).ok())
    } else {
        Hkdf::<Sha256>::from_prk(secret).ok().and_then(|h| h.expand(&info, &mut out).ok())
    };
    debug_assert!(expanded.is_some());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    /// RFC 8448 (TLS 1.3 traces), "Simple 1-RTT Handshake": the client
    /// handshake traffic secret from the handshake secret and the hash of
    /// ClientHello..ServerHello.
    #[test]
    fn derives_rfc8448_handshake_traffic_secrets() {
        let hs = hex("1dc826e93606aa6fdc0aadc12f741b01046aa6b99f691ed221a9f0ca043fbeac");
        let hash = hex("860c06edc07858ee8e78f0e7428c58edd6b43f2ca3e6e95f02ed063cf0e1cad8");
        assert_eq!(
            expand_label(&hs, b"c hs traffic", &hash, 32),
            hex("b3eddb126e067f35a780b3abf45e2d8f3b1a950738f52e9600746a0e27a55a21")
        );
        assert_eq!(
            expand_label(&hs, b"s hs traffic", &hash, 32),
            hex("b67b7d690cc16c4e75e54213cb2d37b4e9c912bcded9105d42befd59d391ad38")
        );
    }

    fn tls13_keys() -> ct_ssl_keys {
        let mut k = ct_ssl_keys { version: TLS1_3, cipher_id: 0x0300_1301, ..Default::default() };
        k.client_random = [7; 32];
        for s in [
            &mut k.handshake_secret,
            &mut k.handshake_traffic_hash,
            &mut k.client_app_traffic_secret,
            &mut k.server_app_traffic_secret,
            &mut k.exporter_master_secret,
        ] {
            s[..32].fill(0x11);
        }
        k
    }

    #[test]
    fn tls13_gives_five_lines() {
        let lines = openssl_lines(&tls13_keys()).unwrap();
        let labels: Vec<_> = lines.iter().map(|l| l.label).collect();
        assert_eq!(
            labels,
            [
                "CLIENT_HANDSHAKE_TRAFFIC_SECRET",
                "SERVER_HANDSHAKE_TRAFFIC_SECRET",
                "CLIENT_TRAFFIC_SECRET_0",
                "SERVER_TRAFFIC_SECRET_0",
                "EXPORTER_SECRET"
            ]
        );
        assert!(lines.iter().all(|l| l.secret.len() == 32 && l.client_random == [7; 32]));
    }

    #[test]
    fn refuses_what_cannot_be_right() {
        let mut k = tls13_keys();
        k.client_app_traffic_secret[40] = 1; // beyond a SHA-256 secret
        assert!(openssl_lines(&k).is_err());
        let mut k = tls13_keys();
        k.cipher_id = 0x0300_c02f;
        assert!(openssl_lines(&k).is_err());
        let mut k = tls13_keys();
        k.version = 0x1234;
        assert!(openssl_lines(&k).is_err());
        let mut k = tls13_keys();
        k.missing = 2;
        assert!(openssl_lines(&k).is_err());
        let mut k = ct_ssl_keys {
            version: TLS1_2,
            cipher_id: 0x0300_c02f,
            master_key_length: 48,
            ..Default::default()
        };
        k.client_random = [1; 32];
        assert!(openssl_lines(&k).is_err(), "an all-zero master key");
        k.master_key[..48].fill(9);
        assert_eq!(openssl_lines(&k).unwrap()[0].label, "CLIENT_RANDOM");
        k.master_key_length = 64;
        assert!(openssl_lines(&k).is_err());
    }
}
