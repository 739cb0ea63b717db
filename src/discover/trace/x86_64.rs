//! x86-64 instructions as the tracer sees them, decoded by iced-x86.

use std::collections::HashSet;

use iced_x86::{
    Decoder, DecoderOptions, FlowControl, Instruction, InstructionInfoFactory, Mnemonic, OpAccess, OpKind,
    Register,
};
use object::elf::{R_X86_64_GLOB_DAT, R_X86_64_JUMP_SLOT, R_X86_64_RELATIVE};

use super::{Event, Flow, Machine, Regs, Target, Value};

/// [`Regs`] hold rax..r15 at 0..15, in the hardware's order.
pub struct X86_64;

impl Machine for X86_64 {
    /// rdi, rsi, rdx, rcx: the first System V argument registers.
    const ARGS: [usize; 4] = [7, 6, 2, 1];
    /// rax.
    const RESULT: usize = 0;
    /// rax, rcx, rdx, rsi, rdi, r8-r11.
    const CALLER_SAVED: &'static [usize] = &[0, 1, 2, 6, 7, 8, 9, 10, 11];
    /// rsp.
    const STACK_POINTER: usize = RSP;
    const SYMBOL_SLOTS: [u32; 2] = [R_X86_64_JUMP_SLOT, R_X86_64_GLOB_DAT];
    const RELATIVE: u32 = R_X86_64_RELATIVE;

    fn step(code: &[u8], at: u64, regs: &mut Regs, events: &mut Vec<Event>) -> Option<(usize, Flow)> {
        let mut decoder = Decoder::with_ip(64, code, at, DecoderOptions::NONE);
        if !decoder.can_decode() {
            return None;
        }
        let instr = decoder.decode();
        if instr.is_invalid() {
            return None;
        }
        let mut factory = InstructionInfoFactory::new();
        let flow = match instr.flow_control() {
            FlowControl::Next => {
                execute(&instr, regs, &mut factory, events);
                Flow::Next
            }
            FlowControl::ConditionalBranch => {
                clobber_written(&instr, regs, &mut factory); // loop/jrcxz change rcx
                match near_target(&instr) {
                    Some(to) => Flow::Branch(to),
                    None => Flow::Next,
                }
            }
            FlowControl::UnconditionalBranch => match near_target(&instr) {
                Some(to) => Flow::Jump(Target::Direct(to)),
                None => Flow::Stop,
            },
            FlowControl::IndirectBranch => Flow::Jump(indirect_target(&instr)),
            FlowControl::Call | FlowControl::IndirectCall => Flow::Call(match near_target(&instr) {
                Some(to) => Target::Direct(to),
                None => indirect_target(&instr),
            }),
            FlowControl::Return => Flow::Return,
            // int3, ud2, xbegin, ...
            _ => Flow::Stop,
        };
        Some((instr.len(), flow))
    }

    fn address_references(code: &[u8], address: u64, targets: &HashSet<u64>) -> Vec<u64> {
        (0..code.len().saturating_sub(6))
            .filter(|&i| matches!(code[i], 0x48 | 0x4c) && code[i + 1] == 0x8d && code[i + 2] & 0xc7 == 0x05)
            .filter_map(|i| {
                let disp = i32::from_le_bytes(code[i + 3..i + 7].try_into().ok()?);
                let next = address.wrapping_add(i as u64 + 7);
                targets.contains(&next.wrapping_add(disp as i64 as u64)).then(|| address + i as u64)
            })
            .collect()
    }

    fn direct_calls_to(code: &[u8], address: u64, target: u64) -> Vec<u64> {
        (0..code.len().saturating_sub(4))
            .filter(|&i| code[i] == 0xe8)
            .filter_map(|i| {
                let rel = i32::from_le_bytes(code[i + 1..i + 5].try_into().ok()?);
                let next = address.wrapping_add(i as u64 + 5);
                (next.wrapping_add(rel as i64 as u64) == target).then(|| address + i as u64)
            })
            .collect()
    }
}

const RSP: usize = 4;

/// rax..r15, in iced's (and the hardware's) order.
fn gpr(register: Register) -> Option<usize> {
    let index = (register.full_register() as usize).wrapping_sub(Register::RAX as usize);
    (index < 16).then_some(index)
}

fn near_target(instr: &Instruction) -> Option<u64> {
    match instr.try_op_kind(0) {
        Ok(OpKind::NearBranch64) => Some(instr.near_branch_target()),
        _ => None,
    }
}

fn indirect_target(instr: &Instruction) -> Target {
    if instr.is_ip_rel_memory_operand() {
        Target::Slot(instr.ip_rel_memory_address())
    } else {
        Target::Unknown
    }
}

/// The effect of one straight-line instruction on `regs`.
fn execute(
    instr: &Instruction,
    regs: &mut Regs,
    factory: &mut InstructionInfoFactory,
    events: &mut Vec<Event>,
) {
    let kind = |n: u32| instr.try_op_kind(n).ok();
    let reg = |n: u32| instr.try_op_register(n).ok();
    let immediate = |n: u32| instr.try_immediate(n).ok();
    // A 64-bit destination register and the value it gets, computed from
    // the registers before the instruction.
    let dest64 = reg(0).filter(|r| r.is_gpr64()).and_then(gpr).filter(|_| kind(0) == Some(OpKind::Register));
    let mut result = None;
    let mut stack = None;
    match instr.mnemonic() {
        Mnemonic::Lea => {
            if let (Some(dest), Some(OpKind::Memory)) = (dest64, kind(1)) {
                result = Some((dest, memory_value(instr, regs)));
            }
        }
        Mnemonic::Mov => match (kind(0), kind(1)) {
            (Some(OpKind::Register), Some(OpKind::Register)) => {
                if let (Some(dest), Some(src)) = (dest64, reg(1).filter(|r| r.is_gpr64()).and_then(gpr)) {
                    result = Some((dest, regs[src]));
                }
            }
            (Some(OpKind::Register), Some(OpKind::Memory)) => {
                let loaded = load(instr, regs, events);
                if let (Some(dest), Some(value)) = (dest64, loaded) {
                    result = Some((dest, value));
                }
            }
            (Some(OpKind::Register), Some(_)) => {
                // mov r32, imm32 zero-extends; mov r64, imm sign-extends
                // (iced already widened it).
                let to = reg(0).filter(|r| r.is_gpr64() || r.is_gpr32()).and_then(gpr);
                if let (Some(dest), Some(value)) = (to, immediate(1)) {
                    let value =
                        if reg(0).is_some_and(|r| r.is_gpr32()) { value & 0xffff_ffff } else { value };
                    result = Some((dest, Value::Const(value)));
                }
            }
            (Some(OpKind::Memory), Some(source)) => {
                let value = match source {
                    OpKind::Register => reg(1).and_then(gpr).map_or(Value::Unknown, |r| regs[r]),
                    _ => immediate(1).map_or(Value::Unknown, Value::Const),
                };
                if instr.memory_index() == Register::None {
                    let base = gpr(instr.memory_base()).map_or(Value::Unknown, |r| regs[r]);
                    events.push(Event::Store {
                        at: instr.ip(),
                        base,
                        disp: instr.memory_displacement64() as i64,
                        width: instr.memory_size().size(),
                        value,
                    });
                }
            }
            _ => {}
        },
        Mnemonic::Add | Mnemonic::Sub => {
            if let (Some(dest), Some(value)) = (dest64, immediate(1)) {
                let delta = if instr.mnemonic() == Mnemonic::Add {
                    value as i64
                } else {
                    (value as i64).wrapping_neg()
                };
                result = Some((dest, regs[dest].plus(delta)));
            }
        }
        Mnemonic::Xor if kind(0) == Some(OpKind::Register) && kind(1) == Some(OpKind::Register) => {
            if let Some(dest) = reg(0).and_then(gpr).filter(|_| reg(0) == reg(1)) {
                result = Some((dest, Value::Const(0)));
            }
        }
        // They move rsp by a word (iced reports rsp as written: kept here).
        Mnemonic::Push if instr.stack_pointer_increment() == -8 => stack = Some(regs[RSP].plus(-8)),
        Mnemonic::Pop if instr.stack_pointer_increment() == 8 => stack = Some(regs[RSP].plus(8)),
        _ => {}
    }
    clobber_written(instr, regs, factory);
    if let Some(value) = stack {
        regs[RSP] = value;
    }
    if let Some((dest, value)) = result {
        regs[dest] = value;
    }
}

/// `mov reg, [base+disp]` into a general register: recorded as a load.
/// A 64-bit one from a RIP-relative address (a GOT slot) gives the word
/// at that address; any other gives an unknown value (`None` when the
/// load is not one the tracer models: an index register, a segment).
fn load(instr: &Instruction, regs: &Regs, events: &mut Vec<Event>) -> Option<Value> {
    if instr.memory_index() != Register::None || !instr.op0_register().is_gpr() {
        return None;
    }
    let (base, disp) = if instr.is_ip_rel_memory_operand() {
        (Value::Address(instr.ip_rel_memory_address()), 0)
    } else {
        let base = gpr(instr.memory_base()).map_or(Value::Unknown, |r| regs[r]);
        (base, instr.memory_displacement64() as i64)
    };
    let width = instr.memory_size().size();
    events.push(Event::Load { base, disp, width });
    Some(match (base, width) {
        (Value::Address(slot), 8) => Value::Loaded(slot),
        _ => Value::Unknown,
    })
}

/// `[base+disp]` as a value (what `lea` computes).
fn memory_value(instr: &Instruction, regs: &Regs) -> Value {
    if instr.is_ip_rel_memory_operand() {
        return Value::Address(instr.ip_rel_memory_address());
    }
    if instr.memory_index() != Register::None {
        return Value::Unknown;
    }
    match gpr(instr.memory_base()) {
        Some(base) if instr.memory_base().is_gpr64() => regs[base].plus(instr.memory_displacement64() as i64),
        _ => Value::Unknown,
    }
}

fn clobber_written(instr: &Instruction, regs: &mut Regs, factory: &mut InstructionInfoFactory) {
    for used in factory.info(instr).used_registers() {
        let written = matches!(
            used.access(),
            OpAccess::Write | OpAccess::CondWrite | OpAccess::ReadWrite | OpAccess::ReadCondWrite
        );
        if let Some(index) = gpr(used.register()).filter(|_| written) {
            regs[index] = Value::Unknown;
        }
    }
}
