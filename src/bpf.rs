//! The generated libbpf skeletons, one module per `bpf/*.bpf.c`.
#![allow(clippy::all, dead_code, non_camel_case_types, unused_imports)]

pub mod tls {
    include!(concat!(env!("OUT_DIR"), "/tls.skel.rs"));
}

pub mod procwatch {
    include!(concat!(env!("OUT_DIR"), "/procwatch.skel.rs"));
}

pub mod shell {
    include!(concat!(env!("OUT_DIR"), "/shell.skel.rs"));
}

pub mod exec {
    include!(concat!(env!("OUT_DIR"), "/exec.skel.rs"));
}

/// The record types of `bpf/events.h` (from `bpf/types.bpf.c`, never loaded).
pub mod types {
    include!(concat!(env!("OUT_DIR"), "/types.skel.rs"));
    pub use self::types::*;
}

pub mod sql {
    include!(concat!(env!("OUT_DIR"), "/sql.skel.rs"));
}

pub mod packets {
    include!(concat!(env!("OUT_DIR"), "/packets.skel.rs"));
}
