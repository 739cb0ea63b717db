//! aarch64 machine code, decoded by yaxpeax-arm: every instruction is one
//! aligned 32-bit word, so decoding in order from a function's start
//! visits each of them exactly once.

use yaxpeax_arch::{Decoder, U8Reader};
use yaxpeax_arm::armv8::a64::{InstDecoder, Instruction, Opcode, Operand, SizeCode};

/// Each instruction of `code` (at `address`) with its address. A word
/// that does not decode (data in the text, an unknown extension) is
/// skipped, never taken for what it resembles.
pub fn instructions(code: &[u8], address: u64) -> impl Iterator<Item = (u64, Instruction)> + '_ {
    let decoder = InstDecoder::default();
    code.chunks_exact(4).enumerate().filter_map(move |(n, word)| {
        let decoded = decoder.decode(&mut U8Reader::new(word)).ok()?;
        Some((address + 4 * n as u64, decoded))
    })
}

/// `ret` (to the link register, x30): how Go functions return.
pub fn is_return(i: &Instruction) -> bool {
    i.opcode == Opcode::RET && matches!(i.operands[0], Operand::Register(SizeCode::X, 30) | Operand::Nothing)
}

/// `ldr xN, [base, #offset]`: a 64-bit load from a fixed offset.
pub fn loads_from(i: &Instruction, base: u16, offset: i32) -> bool {
    i.opcode == Opcode::LDR
        && matches!(i.operands[0], Operand::Register(SizeCode::X, _))
        && matches!(i.operands[1], Operand::RegPreIndex(b, o, false) if b == base && o == offset)
}

/// A conditional branch (`b.cond`).
pub fn is_conditional_branch(i: &Instruction) -> bool {
    matches!(i.opcode, Opcode::Bcc(_))
}

/// The callee of a direct call (`bl`) at `at`, as linked.
pub fn call_target(at: u64, i: &Instruction) -> Option<u64> {
    match (i.opcode, i.operands[0]) {
        (Opcode::BL, Operand::PCOffset(offset)) => Some(at.wrapping_add(offset as u64)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(ws: &[u32]) -> Vec<u8> {
        ws.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    #[test]
    fn go_prologue_and_return() {
        // ldr x16, [x28, #16]; cmp sp, x16; b.ls +0x40; ret; ret x1
        let code = words(&[0xf9400b90, 0xeb3063ff, 0x54000209, 0xd65f03c0, 0xd65f0020]);
        let decoded: Vec<_> = instructions(&code, 0x1000).collect();
        assert_eq!(decoded.len(), 5);
        assert!(loads_from(&decoded[0].1, 28, 16));
        assert!(!loads_from(&decoded[0].1, 28, 8));
        assert!(is_conditional_branch(&decoded[2].1));
        assert!(!is_conditional_branch(&decoded[3].1));
        assert!(is_return(&decoded[3].1));
        assert_eq!(decoded[3].0, 0x100c);
        assert!(!is_return(&decoded[4].1), "ret x1 is not a return to the caller");
    }

    #[test]
    fn a_partial_word_or_garbage_is_never_an_instruction_we_look_for() {
        let mut code = words(&[0xffffffff]);
        code.extend_from_slice(&[0xc0, 0x03, 0x5f]);
        assert!(instructions(&code, 0).all(|(_, i)| !is_return(&i) && !is_conditional_branch(&i)));
    }
}
