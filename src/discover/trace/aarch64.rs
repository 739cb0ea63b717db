//! aarch64 instructions as the tracer sees them, decoded by
//! yaxpeax-arm. Instructions are modelled only as far as the tracer needs
//! them (moves, PC-relative addresses, add/sub of an immediate, loads and
//! stores at a fixed offset, branches and calls); any other instruction
//! makes every general register it names unknown, which can only lose a
//! finding, never invent one.

use std::collections::HashSet;

use object::elf::{R_AARCH64_GLOB_DAT, R_AARCH64_JUMP_SLOT, R_AARCH64_RELATIVE};
use yaxpeax_arch::{Decoder, U8Reader};
use yaxpeax_arm::armv8::a64::{InstDecoder, Instruction, Opcode, Operand, ShiftStyle, SizeCode};

use super::{Event, Flow, Machine, Regs, Target, Value};

/// [`Regs`] hold x0..x30 at 0..30 and sp at 31 (`xzr`, the other meaning
/// of register number 31, is not kept: it reads as 0).
pub struct Aarch64;

impl Machine for Aarch64 {
    /// x0..x3 (AAPCS64).
    const ARGS: [usize; 4] = [0, 1, 2, 3];
    /// x0.
    const RESULT: usize = 0;
    /// x0..x18 (x16/x17 are the PLT's scratch, x18 the platform
    /// register) and the link register x30.
    const CALLER_SAVED: &'static [usize] =
        &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 30];
    /// sp.
    const STACK_POINTER: usize = 31;
    const SYMBOL_SLOTS: [u32; 2] = [R_AARCH64_JUMP_SLOT, R_AARCH64_GLOB_DAT];
    const RELATIVE: u32 = R_AARCH64_RELATIVE;

    fn step(code: &[u8], at: u64, regs: &mut Regs, events: &mut Vec<Event>) -> Option<(usize, Flow)> {
        let word = code.get(..4)?;
        let instr = InstDecoder::default().decode(&mut U8Reader::new(word)).ok()?;
        Some((4, execute(&instr, at, regs, events)))
    }

    fn address_references(code: &[u8], address: u64, targets: &HashSet<u64>) -> Vec<u64> {
        let words: Vec<u32> =
            code.chunks_exact(4).map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]])).collect();
        let mut sites = Vec::new();
        for (i, &word) in words.iter().enumerate() {
            let at = address.wrapping_add(4 * i as u64);
            let Some((rd, page)) = adrp(word, at) else { continue };
            // The `add` that completes it, within a few instructions.
            let completed =
                words[i + 1..].iter().take(ADRP_ADD_WINDOW).find_map(|&next| match add_immediate(next) {
                    Some((_, rn, imm)) if rn == rd => Some(page.wrapping_add(imm)),
                    _ => None,
                });
            if completed.is_some_and(|to| targets.contains(&to)) {
                sites.push(at);
            }
        }
        sites
    }

    fn direct_calls_to(code: &[u8], address: u64, target: u64) -> Vec<u64> {
        code.chunks_exact(4)
            .enumerate()
            .filter_map(|(i, w)| {
                let word = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
                let at = address.wrapping_add(4 * i as u64);
                // bl imm26: the offset in words, signed.
                let offset = ((word << 6) as i32 >> 4) as i64;
                (word & 0xfc00_0000 == 0x9400_0000 && at.wrapping_add(offset as u64) == target).then_some(at)
            })
            .collect()
    }
}

/// Instructions looked at after an `adrp` for the `add` of its low bits.
const ADRP_ADD_WINDOW: usize = 16;

/// `adrp xd, page`: (d, page).
fn adrp(word: u32, at: u64) -> Option<(u32, u64)> {
    if word & 0x9f00_0000 != 0x9000_0000 {
        return None;
    }
    let immediate = ((word >> 3) & 0x001f_fffc) | ((word >> 29) & 3);
    // 21 bits, signed, in pages.
    let pages = ((immediate << 11) as i32 >> 11) as i64;
    Some((word & 31, (at & !0xfff).wrapping_add((pages << 12) as u64)))
}

/// `add xd, xn, #imm` (64-bit, immediate, optionally shifted by 12):
/// (d, n, imm).
fn add_immediate(word: u32) -> Option<(u32, u32, u64)> {
    let shift = match word & 0xffc0_0000 {
        0x9100_0000 => 0,
        0x9140_0000 => 12,
        _ => return None,
    };
    Some((word & 31, (word >> 5) & 31, (((word >> 10) & 0xfff) as u64) << shift))
}

/// A general register's value as an operand reads it: `xzr`/`wzr` is 0,
/// a 32-bit read keeps only a constant's low half.
fn read(operand: Operand, regs: &Regs) -> Value {
    let (size, value) = match operand {
        Operand::Register(size, 31) => (size, Value::Const(0)),
        Operand::Register(size, n) | Operand::RegisterOrSP(size, n) if n <= 31 => (size, regs[n as usize]),
        _ => return Value::Unknown,
    };
    match (size, value) {
        (SizeCode::X, value) => value,
        (SizeCode::W, Value::Const(c)) => Value::Const(c & 0xffff_ffff),
        (SizeCode::W, _) => Value::Unknown,
    }
}

/// Writes a general register operand: a 32-bit write zero-extends (only
/// a constant survives it); writes to `xzr` vanish.
fn write(operand: Operand, value: Value, regs: &mut Regs) {
    let (size, n) = match operand {
        Operand::Register(_, 31) => return,
        Operand::Register(size, n) | Operand::RegisterOrSP(size, n) if n <= 31 => (size, n as usize),
        _ => return,
    };
    regs[n] = match (size, value) {
        (SizeCode::X, value) => value,
        (SizeCode::W, Value::Const(c)) => Value::Const(c & 0xffff_ffff),
        (SizeCode::W, _) => Value::Unknown,
    };
}

/// The base register of an addressing operand (31 is sp here), the
/// offset it adds, and how much it moves the base by (writeback).
fn address(operand: Operand) -> Option<(usize, i64, i64)> {
    match operand {
        Operand::RegPreIndex(base, offset, writeback) if base <= 31 => {
            Some((base as usize, offset as i64, if writeback { offset as i64 } else { 0 }))
        }
        Operand::RegPostIndex(base, offset) if base <= 31 => Some((base as usize, 0, offset as i64)),
        _ => None,
    }
}

/// The width in bytes of a load or store of a general register, by opcode
/// and register size; `None` for the ones the tracer does not model
/// (sign-extending, exclusive, SIMD, ...).
fn access_width(opcode: Opcode, register: Operand) -> Option<usize> {
    let size = match register {
        Operand::Register(SizeCode::X, _) => 8,
        Operand::Register(SizeCode::W, _) => 4,
        _ => return None,
    };
    match opcode {
        Opcode::LDR | Opcode::LDUR | Opcode::STR | Opcode::STUR | Opcode::LDP | Opcode::STP => Some(size),
        Opcode::LDRB | Opcode::LDURB | Opcode::STRB | Opcode::STURB => Some(1),
        Opcode::LDRH | Opcode::LDURH | Opcode::STRH | Opcode::STURH => Some(2),
        _ => None,
    }
}

fn pc_relative(at: u64, operand: Operand) -> Option<u64> {
    match operand {
        Operand::PCOffset(offset) => Some(at.wrapping_add(offset as u64)),
        _ => None,
    }
}

/// The effect of `instr` (at `at`) on `regs` and where control goes.
fn execute(instr: &Instruction, at: u64, regs: &mut Regs, events: &mut Vec<Event>) -> Flow {
    let op = instr.operands;
    match instr.opcode {
        Opcode::ADRP => {
            if let Operand::PCOffset(offset) = op[1] {
                write(op[0], Value::Address((at & !0xfff).wrapping_add(offset as u64)), regs);
            }
        }
        Opcode::ADR => {
            if let Some(to) = pc_relative(at, op[1]) {
                write(op[0], Value::Address(to), regs);
            }
        }
        Opcode::ADD | Opcode::SUB => {
            let immediate = match op[2] {
                Operand::Immediate(imm) => Some(imm as i64),
                Operand::ImmShift(imm, shift) if shift < 32 => Some((imm as i64) << shift),
                _ => None,
            };
            let value = match immediate {
                Some(imm) if instr.opcode == Opcode::ADD => read(op[1], regs).plus(imm),
                Some(imm) => read(op[1], regs).plus(imm.wrapping_neg()),
                None => Value::Unknown,
            };
            write(op[0], value, regs);
        }
        // `mov xd, xn` is `orr xd, xzr, xn`.
        Opcode::ORR => {
            let value = match (op[1], op[2]) {
                (Operand::Register(_, 31), Operand::RegShift(ShiftStyle::LSL, 0, size, n)) => {
                    read(Operand::Register(size, n), regs)
                }
                _ => Value::Unknown,
            };
            write(op[0], value, regs);
        }
        Opcode::MOVZ | Opcode::MOVN => {
            let value = match op[1] {
                Operand::ImmShift(imm, shift) if shift < 64 => {
                    let shifted = (imm as u64) << shift;
                    Value::Const(if instr.opcode == Opcode::MOVN { !shifted } else { shifted })
                }
                _ => Value::Unknown,
            };
            write(op[0], value, regs);
        }
        Opcode::LDR | Opcode::LDUR | Opcode::LDRB | Opcode::LDURB | Opcode::LDRH | Opcode::LDURH => {
            load(instr, at, regs, events)
        }
        Opcode::STR | Opcode::STUR | Opcode::STRB | Opcode::STURB | Opcode::STRH | Opcode::STURH => {
            store(instr, at, &[op[0]], op[1], regs, events)
        }
        Opcode::STP => store(instr, at, &[op[0], op[1]], op[2], regs, events),
        Opcode::BL => return pc_relative(at, op[0]).map_or(Flow::Stop, |to| Flow::Call(Target::Direct(to))),
        Opcode::B => return pc_relative(at, op[0]).map_or(Flow::Stop, |to| Flow::Jump(Target::Direct(to))),
        Opcode::BLR => return Flow::Call(read(op[0], regs).as_target()),
        Opcode::BR => return Flow::Jump(read(op[0], regs).as_target()),
        Opcode::Bcc(_) => return pc_relative(at, op[0]).map_or(Flow::Stop, Flow::Branch),
        Opcode::CBZ | Opcode::CBNZ => return pc_relative(at, op[1]).map_or(Flow::Stop, Flow::Branch),
        Opcode::TBZ | Opcode::TBNZ => return pc_relative(at, op[2]).map_or(Flow::Stop, Flow::Branch),
        // nop, bti, paciasp, ...: no general register changes that matters
        // here (pointer authentication signs x30, which no finding uses).
        Opcode::HINT => {}
        _ if crate::discover::aarch64::is_return(instr) => return Flow::Return,
        _ if ends_the_path(instr.opcode) => return Flow::Stop,
        _ => clobber_named(instr, regs),
    }
    Flow::Next
}

/// Returns, traps, system calls and the pointer-authenticated branches:
/// the path is not followed past them.
fn ends_the_path(opcode: Opcode) -> bool {
    matches!(
        opcode,
        Opcode::RET
            | Opcode::RETAA
            | Opcode::RETAB
            | Opcode::ERET
            | Opcode::ERETAA
            | Opcode::ERETAB
            | Opcode::BRAA
            | Opcode::BRAAZ
            | Opcode::BRAB
            | Opcode::BRABZ
            | Opcode::BLRAA
            | Opcode::BLRAAZ
            | Opcode::BLRAB
            | Opcode::BLRABZ
            | Opcode::BRK
            | Opcode::HLT
            | Opcode::SVC
            | Opcode::HVC
            | Opcode::SMC
            | Opcode::UDF
            | Opcode::Invalid
    )
}

/// A load into a general register: recorded; a 64-bit one from a
/// PC-relative address (a GOT slot) keeps where it came from.
fn load(instr: &Instruction, at: u64, regs: &mut Regs, events: &mut Vec<Event>) {
    let op = instr.operands;
    let width = access_width(instr.opcode, op[0]);
    let value = match (address(op[1]), pc_relative(at, op[1])) {
        (Some((base, offset, moved)), _) => {
            let base_value = regs[base];
            if let Some(width) = width {
                events.push(Event::Load { base: base_value, disp: offset, width });
            }
            regs[base] = base_value.plus(moved);
            match (base_value, width) {
                (Value::Address(page), Some(8)) => Value::Loaded(page.wrapping_add(offset as u64)),
                _ => Value::Unknown,
            }
        }
        // `ldr xN, label`: a literal in the code.
        (None, Some(literal)) if width == Some(8) => Value::Loaded(literal),
        _ => Value::Unknown,
    };
    write(op[0], value, regs);
}

/// A store (or a store pair) of general registers at `[base + offset]`.
fn store(
    instr: &Instruction,
    at: u64,
    sources: &[Operand],
    addressing: Operand,
    regs: &mut Regs,
    events: &mut Vec<Event>,
) {
    let Some((base, offset, moved)) = address(addressing) else {
        clobber_named(instr, regs);
        return;
    };
    let base_value = regs[base];
    let mut disp = offset;
    for &source in sources {
        // A SIMD register or an unmodelled form: its width is unknown,
        // its value too; it still writes memory, so record it unknown.
        let width = access_width(instr.opcode, source).unwrap_or(0);
        let value = if width == 0 { Value::Unknown } else { read(source, regs) };
        events.push(Event::Store { at, base: base_value, disp, width, value });
        disp = disp.wrapping_add(width as i64);
    }
    regs[base] = base_value.plus(moved);
}

/// Every general register `instr` names, and every base it may move,
/// becomes unknown.
fn clobber_named(instr: &Instruction, regs: &mut Regs) {
    for operand in instr.operands {
        let n = match operand {
            Operand::Register(_, n) | Operand::RegisterOrSP(_, n) | Operand::RegisterPair(_, n) => n,
            Operand::RegShift(_, _, _, n) => n,
            Operand::RegPreIndex(n, _, true)
            | Operand::RegPostIndex(n, _)
            | Operand::RegPostIndexReg(n, _) => n,
            _ => continue,
        };
        if let Some(reg) = regs.get_mut(n as usize) {
            *reg = Value::Unknown;
        }
        if let Operand::RegisterPair(_, n) = operand {
            if let Some(reg) = regs.get_mut(n as usize + 1) {
                *reg = Value::Unknown;
            }
        }
    }
}
