//! What a function's x86-64 machine code says about where a probe is
//! cheap: the direct calls it makes, and whether the kernel can emulate
//! the instruction a uprobe replaces.
//!
//! A uprobe puts an int3 on an instruction. After the handler, the kernel
//! either emulates that instruction (push, call, jmp, jcc, nop) or runs a
//! copy of it out of line and takes a second trap, a single-step, to come
//! back. On our 2-core VM that second trap is most of a probe's cost:
//! 1.0 us per hit on a `push` or `call` against 10-12 us on a `sub rsp` or
//! an `endbr64` (a `p:` tracefs event, no program attached, 100,000 calls).

use iced_x86::{Code, Decoder, DecoderOptions, FlowControl, Instruction, InstructionInfoFactory, Register};

use super::elf::Function;

/// Functions are read up to this many bytes (all of them when the symbol
/// has no size).
pub const MAX_FUNCTION: u64 = 8 * 1024;

/// A direct `call rel32` in a function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirectCall {
    /// The callee, as linked.
    pub target: u64,
    /// Where the callee returns to, as linked.
    pub return_address: u64,
    /// Only straight-line code that leaves every argument register as the
    /// function received it runs before this call: the callee gets the
    /// caller's own arguments.
    pub passes_arguments: bool,
}

/// The bytes of `f` in `file`, at most [`MAX_FUNCTION`] of them; empty
/// when outside the file.
pub fn function_code<'d, R: object::ReadRef<'d>>(file: R, f: Function) -> &'d [u8] {
    let len = if f.size == 0 { MAX_FUNCTION } else { f.size.min(MAX_FUNCTION) };
    let end = f.file_offset.saturating_add(len).min(file.len().unwrap_or(0));
    if end <= f.file_offset {
        return &[];
    }
    file.read_bytes_at(f.file_offset, end - f.file_offset).unwrap_or(&[])
}

/// Every direct call in `code` (the function at `address`), in code order.
pub fn direct_calls(code: &[u8], address: u64) -> Vec<DirectCall> {
    let mut decoder = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
    let mut factory = InstructionInfoFactory::new();
    let mut instr = Instruction::default();
    let mut calls = Vec::new();
    let mut arguments_intact = true;
    while decoder.can_decode() {
        decoder.decode_out(&mut instr);
        if instr.is_invalid() {
            break;
        }
        if instr.code() == Code::Call_rel32_64 {
            calls.push(DirectCall {
                target: instr.near_branch_target(),
                return_address: instr.next_ip(),
                passes_arguments: arguments_intact,
            });
            arguments_intact = false;
            continue;
        }
        if instr.flow_control() != FlowControl::Next || writes_an_argument(&instr, &mut factory) {
            arguments_intact = false;
        }
    }
    calls
}

/// Does the kernel emulate the first instruction of `code` when a uprobe
/// sits on it (no single-step)? The classes x86 uprobes emulate: push of
/// a register, relative call and jmp, conditional jumps, nop.
pub fn entry_is_emulated(code: &[u8], address: u64) -> bool {
    let mut decoder = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
    if !decoder.can_decode() {
        return false;
    }
    let instr = decoder.decode();
    if instr.is_invalid() {
        return false;
    }
    matches!(
        instr.code(),
        Code::Push_r64 | Code::Call_rel32_64 | Code::Jmp_rel8_64 | Code::Jmp_rel32_64 | Code::Nopd
    ) || (instr.flow_control() == FlowControl::ConditionalBranch && instr.is_jcc_short_or_near())
}

/// The System V argument registers, any width.
const ARGUMENTS: [Register; 6] =
    [Register::RDI, Register::RSI, Register::RDX, Register::RCX, Register::R8, Register::R9];

fn writes_an_argument(instr: &Instruction, factory: &mut InstructionInfoFactory) -> bool {
    use iced_x86::OpAccess::{CondWrite, ReadCondWrite, ReadWrite, Write};
    factory.info(instr).used_registers().iter().any(|used| {
        matches!(used.access(), Write | CondWrite | ReadWrite | ReadCondWrite)
            && ARGUMENTS.contains(&used.register().full_register())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// OpenSSL 3.0's SSL_read_ex as Debian builds it: `sub rsp,8; call
    /// ssl_read_internal; xor edx,edx; test eax,eax; cmovs eax,edx; add
    /// rsp,8; ret`, at 0x35500, calling 0x352d0.
    const SSL_READ_EX: [u8; 21] = [
        0x48, 0x83, 0xec, 0x08, 0xe8, 0xc7, 0xfd, 0xff, 0xff, 0x31, 0xd2, 0x85, 0xc0, 0x0f, 0x48, 0xc2, 0x48,
        0x83, 0xc4, 0x08, 0xc3,
    ];

    #[test]
    fn a_thin_wrapper_passes_its_arguments_to_its_callee() {
        let calls = direct_calls(&SSL_READ_EX, 0x35500);
        assert_eq!(
            calls,
            vec![DirectCall { target: 0x352d0, return_address: 0x35509, passes_arguments: true }]
        );
    }

    #[test]
    fn a_call_after_an_argument_changes_does_not_pass_them() {
        // mov %rsp,%rcx; movslq %edx,%rdx; call +0; call +0
        let code = [0x48, 0x89, 0xe1, 0x48, 0x63, 0xd2, 0xe8, 0, 0, 0, 0, 0xe8, 0, 0, 0, 0];
        let calls = direct_calls(&code, 0x1000);
        assert_eq!(calls.len(), 2);
        assert!(!calls[0].passes_arguments && !calls[1].passes_arguments);
        assert_eq!(calls[0].target, 0x100b);
        // A branch before the call: the callee may not see the arguments.
        let branchy = [0x74, 0x00, 0xe8, 0, 0, 0, 0];
        assert!(!direct_calls(&branchy, 0)[0].passes_arguments);
    }

    #[test]
    fn emulated_entries() {
        assert!(entry_is_emulated(&[0x41, 0x56], 0)); // push %r14
        assert!(entry_is_emulated(&[0x53], 0)); // push %rbx
        assert!(entry_is_emulated(&[0xe8, 0, 0, 0, 0], 0)); // call
        assert!(!entry_is_emulated(&SSL_READ_EX, 0)); // sub $8,%rsp
        assert!(!entry_is_emulated(&[0xf3, 0x0f, 0x1e, 0xfa], 0)); // endbr64
        assert!(!entry_is_emulated(&[], 0));
        assert!(!entry_is_emulated(&[0x0f, 0x0b], 0)); // ud2
    }

    #[test]
    fn garbage_gives_no_calls_and_no_panic() {
        let mut next = crate::discover::mutate::noise(0x2545_f491_4f6c_dd1d);
        for _ in 0..2000 {
            let bytes: Vec<u8> = (0..64).map(|_| next() as u8).collect();
            for call in direct_calls(&bytes, 0x1000) {
                assert!((0x1005..=0x1040).contains(&call.return_address), "{call:?}");
            }
            let _ = entry_is_emulated(&bytes, 0);
        }
        assert!(direct_calls(&[0xe8, 0], 0).is_empty());
    }
}
