//! The generated libbpf skeletons, one module per `bpf/*.bpf.c`.
#![allow(clippy::all, dead_code, non_camel_case_types, unused_imports)]

pub mod tls {
    include!(concat!(env!("OUT_DIR"), "/tls.skel.rs"));
}

pub mod procwatch {
    include!(concat!(env!("OUT_DIR"), "/procwatch.skel.rs"));
}
