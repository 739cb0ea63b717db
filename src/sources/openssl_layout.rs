//! Where OpenSSL keeps a connection's secrets: byte offsets inside its
//! private structs, per release range. The table is generated from real
//! OpenSSL sources by `scripts/gen-openssl-offsets` (never typed by hand);
//! a library whose version falls in no range gets no key log lines.

/// Offsets of one OpenSSL release range, all from the `SSL *` handle an
/// application passes to `SSL_write` (3.2+: the `SSL_CONNECTION`, which
/// starts with the `SSL` for TLS connections).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SslLayout {
    /// The first and last versions of the range whose sources were
    /// measured and gave these offsets (e.g. "3.0.0", "3.0.22").
    pub first: &'static str,
    pub last: &'static str,
    /// 3.2+: `ssl_st.type`, which must be `SSL_TYPE_SSL_CONNECTION` (0).
    pub ssl_type: Option<u32>,
    /// `int version` (0x0303 TLS 1.2, 0x0304 TLS 1.3).
    pub version: u32,
    /// `SSL_SESSION *session`.
    pub session: u32,
    /// `s3`: a pointer in 1.1.x, an embedded struct in 3.x.
    pub s3: u32,
    pub s3_is_pointer: bool,
    /// `client_random[32]` inside the s3 struct.
    pub s3_client_random: u32,
    /// TLS 1.3 secrets, `unsigned char[EVP_MAX_MD_SIZE]` each.
    pub handshake_secret: u32,
    pub handshake_traffic_hash: u32,
    pub client_app_traffic_secret: u32,
    pub server_app_traffic_secret: u32,
    pub exporter_master_secret: u32,
    /// `SSL_SESSION`: `size_t master_key_length`, `master_key[]`, `const SSL_CIPHER *cipher`.
    pub session_master_key_length: u32,
    pub session_master_key: u32,
    pub session_cipher: u32,
    /// `SSL_CIPHER.id` (`uint32_t`, e.g. 0x03001301).
    pub cipher_id: u32,
}

include!("openssl_layouts_generated.rs");
