//! Go's crypto/tls, inside Go executables: found among running and newly
//! started processes like statically linked OpenSSL, or named with
//! `--go-binary`. Symbols come from `.symtab`, or from `.gopclntab` when the
//! binary is stripped (see `discover::golang`). Register ABI only (Go >=
//! 1.17 on amd64, >= 1.18 on arm64): older Go passes arguments on the
//! stack and is refused.
//!
//! No uretprobe ever goes on Go code (see `bpf/tls.bpf.c`): Read is probed
//! at each of its RET instructions, found by disassembling it.

use std::path::Path;
use std::rc::Rc;

use anyhow::{bail, Context, Result};
use iced_x86::{Decoder, DecoderOptions, FlowControl, Mnemonic, Register};
use object::ReadRef;

use super::{Entry, TlsHook, TlsTarget};
use crate::discover::aarch64;
use crate::discover::elf::{Function, Isa};
use crate::discover::golang::{self, GoBinary};
use crate::discover::pinned::PinnedFile;
use crate::events::tls_function;

pub const NAME: &str = "go";
/// What `--library go` selects, for `--help`.
pub const ABOUT: &str = "Go's crypto/tls, in Go executables";
pub const HOOKS: [TlsHook; 2] = [
    TlsHook { symbol: "crypto/tls.(*Conn).Write", entry: Entry::Go, function_id: tls_function::GO_WRITE },
    TlsHook { symbol: "crypto/tls.(*Conn).Read", entry: Entry::Go, function_id: tls_function::GO_READ },
];
const KEYLOG: &str = "crypto/tls.(*Config).writeKeyLog";

/// File offsets of the probes in one Go executable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoProbePoints {
    pub write: u64,
    pub read: u64,
    pub read_returns: Vec<u64>,
    pub keylog: Option<u64>,
}

/// `Ok(None)`: not a Go program, or one without crypto/tls. An error says
/// why a Go program with crypto/tls cannot be probed.
/// `file` is the executable as opened once, found at `path`.
pub fn resolve(file: Rc<PinnedFile>, path: &Path) -> Result<Option<TlsTarget>> {
    let bytes = file.data();
    // Scripts are exec'd too (their interpreter is what runs): not ELF,
    // so not a Go program, and nothing to warn about.
    if bytes.read_bytes_at(0, 4) != Ok(&b"\x7fELF"[..]) {
        return Ok(None);
    }
    let wanted = [HOOKS[0].symbol, HOOKS[1].symbol, KEYLOG];
    let Some(go) = GoBinary::parse(bytes, &wanted).with_context(|| format!("reading {}", path.display()))?
    else {
        return Ok(None);
    };
    let (Some(write), Some(read)) = (go.function(HOOKS[0].symbol), go.function(HOOKS[1].symbol)) else {
        return Ok(None);
    };
    if !go.register_abi() {
        bail!(
            "built with Go {}: cleartap needs Go >= {} on {:?} (register ABI)",
            go.version,
            go.register_abi_since(),
            go.isa
        );
    }
    let read_returns = golang::ret_offsets(bytes, read, go.isa)?;
    if read_returns.is_empty() {
        bail!("no RET instruction found in {}", HOOKS[1].symbol);
    }
    let points = GoProbePoints {
        write: body_start(bytes, write, go.isa)?,
        read: body_start(bytes, read, go.isa)?,
        read_returns,
        keylog: go.function(KEYLOG).map(|f| body_start(bytes, f, go.isa)).transpose()?,
    };
    Ok(Some(TlsTarget {
        id: file.id(),
        file,
        path: path.to_path_buf(),
        display_path: path.to_string_lossy().into_owned(),
        library: NAME,
        source: None,
        version: Some(go.version.clone()),
        hooks: vec![(HOOKS[0], write), (HOOKS[1], read)],
        go: Some(points),
        library_id: 0,
        callers: Vec::new(),
        secret_points: None,
    }))
}

/// The file offset just past a Go function's stack check: the compare of
/// the stack pointer with the goroutine's stack guard (`[r14+0x10]` on
/// amd64, loaded from `[x28, #16]` on arm64) and the branch to
/// runtime.morestack after it. A call that grows the stack
/// runs the prologue again, so a probe there would fire twice for one call.
/// Not finding that prologue means the address is not the Go function we
/// think (a pclntab whose text base had to be guessed, say): the function
/// is then refused, since a uprobe at a wrong address corrupts the program.
pub fn body_start<'d, R: object::ReadRef<'d>>(bytes: R, f: Function, isa: Isa) -> Result<u64> {
    const PROLOGUE_MAX: u64 = 48;
    let code = bytes
        .read_bytes_at(f.file_offset, f.size.min(PROLOGUE_MAX))
        .ok()
        .context("function outside the file")?;
    let after_check = match isa {
        Isa::X86_64 => after_stack_check_x86_64(code, f.address),
        Isa::Aarch64 => after_stack_check_aarch64(code, f.address),
    };
    match after_check {
        Some(address) => Ok(f.file_offset + (address - f.address)),
        None => bail!(
            "the code at {:#x} does not start with a Go stack check: its address cannot be trusted",
            f.address
        ),
    }
}

/// `cmp rsp, [r14+0x10]` (or of a register computed from rsp), then the
/// conditional branch: the address after that branch.
fn after_stack_check_x86_64(code: &[u8], address: u64) -> Option<u64> {
    let mut decoder = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
    let mut compared_guard = false;
    for instruction in decoder.iter().take(6) {
        if instruction.is_invalid() {
            break;
        }
        if instruction.mnemonic() == Mnemonic::Cmp
            && instruction.memory_base() == Register::R14
            && instruction.memory_displacement64() == STACK_GUARD
        {
            compared_guard = true;
        } else if compared_guard && instruction.flow_control() == FlowControl::ConditionalBranch {
            return Some(instruction.next_ip());
        }
    }
    None
}

/// `ldr xN, [x28, #16]` (the guard, from g), a compare with sp (with a
/// `sub` before it for large frames), then `b.ls`: the address after
/// that branch. Nothing else may come first.
fn after_stack_check_aarch64(code: &[u8], address: u64) -> Option<u64> {
    /// g lives in x28 in Go's arm64 ABI.
    const G: u16 = 28;
    let mut loaded_guard = false;
    for (n, (at, instruction)) in aarch64::instructions(code, address).enumerate().take(6) {
        if at != address + 4 * n as u64 {
            break; // an undecodable word: not a Go prologue
        }
        if n == 0 {
            loaded_guard = aarch64::loads_from(&instruction, G, STACK_GUARD as i32);
            if !loaded_guard {
                break;
            }
        } else if loaded_guard && aarch64::is_conditional_branch(&instruction) {
            return Some(at + 4);
        }
    }
    None
}

/// Offset of `stackguard0` in the runtime's `g` (r14 on amd64, x28 on arm64).
const STACK_GUARD: u64 = 0x10;

#[cfg(test)]
mod tests {
    use super::*;

    fn function(code: &[u8]) -> (Vec<u8>, Function) {
        let mut bytes = vec![0xcc; 0x100];
        bytes.extend_from_slice(code);
        (bytes, Function { address: 0x401000, size: code.len() as u64, file_offset: 0x100 })
    }

    #[test]
    fn probe_goes_after_the_stack_check() {
        // cmp rsp,[r14+0x10]; jbe +0x20; push rbp; mov rbp,rsp
        let (bytes, f) = function(&[0x49, 0x3b, 0x66, 0x10, 0x76, 0x20, 0x55, 0x48, 0x89, 0xe5]);
        assert_eq!(body_start(&bytes[..], f, Isa::X86_64).unwrap(), 0x106);
        // lea r12,[rsp-0x80]; cmp r12,[r14+0x10]; jbe (rel32); push rbp
        let (bytes, f) = function(&[
            0x4c, 0x8d, 0x64, 0x24, 0x80, 0x4d, 0x3b, 0x66, 0x10, 0x0f, 0x86, 0x10, 0, 0, 0, 0x55,
        ]);
        assert_eq!(body_start(&bytes[..], f, Isa::X86_64).unwrap(), 0x10f);
    }

    #[test]
    fn code_that_is_not_a_go_prologue_is_refused() {
        let (bytes, f) = function(&[0x48, 0x89, 0xd8, 0xc3]); // mov rax,rbx; ret
        assert!(body_start(&bytes[..], f, Isa::X86_64).is_err());
        // A compare and branch, but not against the stack guard.
        let (bytes, f) = function(&[0x48, 0x3b, 0x46, 0x10, 0x76, 0x20, 0x55]); // cmp rax,[rsi+0x10]; jbe
        assert!(body_start(&bytes[..], f, Isa::X86_64).is_err());
        let outside = Function { file_offset: 1 << 40, ..f };
        assert!(body_start(&bytes[..], outside, Isa::X86_64).is_err());
    }

    fn arm64(words: &[u32]) -> (Vec<u8>, Function) {
        function(&words.iter().flat_map(|w| w.to_le_bytes()).collect::<Vec<u8>>())
    }

    #[test]
    fn arm64_probe_goes_after_the_stack_check() {
        // ldr x16,[x28,#16]; cmp sp,x16; b.ls; stp x29,x30,[sp,#-32]!
        let (bytes, f) = arm64(&[0xf9400b90, 0xeb3063ff, 0x54000209, 0xa9be7bfd]);
        assert_eq!(body_start(&bytes[..], f, Isa::Aarch64).unwrap(), 0x10c);
        // Large frame: ldr x16,[x28,#16]; sub x17,sp,#0x180; cmp x17,x16; b.ls
        let (bytes, f) = arm64(&[0xf9400b90, 0xd10603f1, 0xeb10023f, 0x54000209, 0xa9be7bfd]);
        assert_eq!(body_start(&bytes[..], f, Isa::Aarch64).unwrap(), 0x110);
    }

    #[test]
    fn arm64_code_that_is_not_a_go_prologue_is_refused() {
        // stp x29,x30,[sp,#-32]!; mov x29,sp; b.ls; ret (a C function)
        let (bytes, f) = arm64(&[0xa9be7bfd, 0x910003fd, 0x54000209, 0xd65f03c0]);
        assert!(body_start(&bytes[..], f, Isa::Aarch64).is_err());
        // The guard from another register: ldr x16,[x27,#16]; cmp; b.ls
        let (bytes, f) = arm64(&[0xf9400b70, 0xeb3063ff, 0x54000209]);
        assert!(body_start(&bytes[..], f, Isa::Aarch64).is_err());
        // x86 bytes read as aarch64.
        let (bytes, f) = function(&[0x49, 0x3b, 0x66, 0x10, 0x76, 0x20, 0x55, 0x48, 0x89, 0xe5]);
        assert!(body_start(&bytes[..], f, Isa::Aarch64).is_err());
    }
}
