//! Compiles every kernel program under `bpf/` into a libbpf skeleton.
//!
//! One `.bpf.c` per family of probes; `bpf/events.h` is the single
//! definition of the records, from which the skeleton's Rust types come.

use std::env;
use std::path::PathBuf;

use libbpf_cargo::SkeletonBuilder;

const PROGRAMS: &[&str] = &["tls", "procwatch", "shell", "exec", "sql", "packets", "types"];

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    // clang-19: Debian's default clang 14 cannot compile some CO-RE helpers.
    let clang = env::var("CLEARTAP_CLANG").unwrap_or_else(|_| "clang-19".to_string());
    for name in PROGRAMS {
        let src = format!("bpf/{name}.bpf.c");
        SkeletonBuilder::new()
            .source(&src)
            .clang(&clang)
            .clang_args(["-I", "bpf", "-mcpu=v3", "-g", "-O2", "-Wall"])
            .build_and_generate(out.join(format!("{name}.skel.rs")))
            .unwrap_or_else(|e| panic!("compiling {src} with {clang}: {e:#}"));
        println!("cargo:rerun-if-changed={src}");
    }
    println!("cargo:rerun-if-changed=bpf");
    println!("cargo:rerun-if-env-changed=CLEARTAP_CLANG");
}
