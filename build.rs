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
    let arch = bpf_target_arch();
    for name in PROGRAMS {
        let src = format!("bpf/{name}.bpf.c");
        SkeletonBuilder::new()
            .source(&src)
            .clang(&clang)
            .clang_args(["-I", "bpf", "-mcpu=v3", "-g", "-O2", "-Wall", arch])
            .build_and_generate(out.join(format!("{name}.skel.rs")))
            .unwrap_or_else(|e| panic!("compiling {src} with {clang}: {e:#}"));
        println!("cargo:rerun-if-changed={src}");
    }
    println!("cargo:rerun-if-changed=bpf");
    println!("cargo:rerun-if-env-changed=CLEARTAP_CLANG");
}

/// The kernel programs read registers and kernel types of the architecture
/// the binary runs on (bpf/regs.h, bpf/common.h): that of cargo's target,
/// not of the machine building it.
fn bpf_target_arch() -> &'static str {
    let target = env::var("CARGO_CFG_TARGET_ARCH").expect("CARGO_CFG_TARGET_ARCH is set by cargo");
    match target.as_str() {
        "x86_64" => "-D__TARGET_ARCH_x86",
        "aarch64" => "-D__TARGET_ARCH_arm64",
        other => panic!("cleartap's kernel programs are written for x86_64 and aarch64, not {other}"),
    }
}
