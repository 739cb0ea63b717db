//! What there is to probe on this host: processes, the files they map, and
//! the symbols inside those files. Pure functions over `/proc` and bytes;
//! nothing here touches BPF.

pub mod aarch64;
pub mod boringssl;
pub mod calls;
pub mod elf;
pub mod gnutls_keylog;
pub mod golang;
pub mod ldpath;
pub mod mutate;
pub mod nss_freebl;
pub mod openssl_stripped;
pub mod pinned;
pub mod procs;
pub mod text;
pub mod trace;
pub mod version;
