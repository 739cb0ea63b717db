//! A symbolic tracer of machine code, for finding probe points in files
//! without symbols: the same algorithm on x86-64 and aarch64 code; only
//! decoding one instruction into its effect differs ([`x86_64`],
//! [`aarch64`], behind the [`Machine`] trait). Used by the GnuTLS key log
//! finder, the NSS freebl finder, and the BoringSSL and OpenSSL finders
//! for stripped executables.
//!
//! Registers hold "argument N plus k", a constant, a PC-relative address,
//! the word at such an address, or unknown; both sides of every
//! conditional branch are followed. Every read is bounds-checked and each
//! instruction is decoded a bounded number of times: these bytes come
//! from any file on the host.

mod aarch64;
mod x86_64;

use std::collections::HashSet;

use object::elf::{PF_X, PT_LOAD};
use object::read::elf::{ElfFile64, ProgramHeader};
use object::{
    Endianness, Object, ObjectSymbol, ObjectSymbolTable, ReadRef, RelocationFlags, RelocationTarget,
};

use super::elf::file_offset_of;

pub use aarch64::Aarch64;
pub use x86_64::X86_64;

/// The instruction-set-specific half of the tracer: decoding one
/// instruction into its effect. Everything else (following paths, what
/// the effects mean) is shared, so both instruction sets run the same
/// algorithm.
pub trait Machine {
    /// The integer argument registers of the C calling convention, in
    /// order, as indices into [`Regs`].
    const ARGS: [usize; 4];
    /// The register a function returns its (integer) result in.
    const RESULT: usize;
    /// The registers a call may change.
    const CALLER_SAVED: &'static [usize];
    /// The stack pointer, which holds [`Value::Stack`]`(0)` on entry.
    const STACK_POINTER: usize;
    /// Relocations by which the loader puts a symbol's address into a
    /// GOT slot (PLT slots and `call [GOT]`/`adrp+ldr` slots).
    const SYMBOL_SLOTS: [u32; 2];
    /// The relocation by which the loader puts `base + addend` into a
    /// slot: how position-independent code holds its own functions'
    /// addresses in the GOT.
    const RELATIVE: u32;

    /// Decodes the instruction at the start of `code` (linked at `at`),
    /// applies its effect to `regs`, records its stores and loads in
    /// `events`, and returns its length and where control goes; `None`
    /// when nothing decodes there.
    fn step(code: &[u8], at: u64, regs: &mut Regs, events: &mut Vec<Event>) -> Option<(usize, Flow)>;

    /// Where `code` (linked at `address`) forms one of `targets` as a
    /// PC-relative address (`lea r64,[rip+X]`; `adrp` then `add #lo` to the
    /// same register): the first instruction's address. Byte patterns, a
    /// filter only: each site counts once its function is traced.
    fn address_references(code: &[u8], address: u64, targets: &HashSet<u64>) -> Vec<u64>;

    /// Where `code` (linked at `address`) calls `target` directly
    /// (`call rel32`, `bl`): the instruction's address. A filter, as above.
    fn direct_calls_to(code: &[u8], address: u64, target: u64) -> Vec<u64>;
}

/// Addresses of the GOT slots the dynamic loader fills with `name`'s
/// address (`*_JUMP_SLOT` for PLT stubs, `*_GLOB_DAT` for `.plt.got` stubs
/// and loads from the GOT).
pub fn symbol_slots<'d, M: Machine, R: ReadRef<'d>>(
    elf: &ElfFile64<'d, Endianness, R>,
    name: &str,
) -> Vec<u64> {
    let (Some(relocations), Some(symbols)) = (elf.dynamic_relocations(), elf.dynamic_symbol_table()) else {
        return Vec::new();
    };
    let mut slots = Vec::new();
    for (slot, relocation) in relocations {
        let RelocationFlags::Elf { r_type } = relocation.flags() else { continue };
        if !M::SYMBOL_SLOTS.contains(&r_type) {
            continue;
        }
        let RelocationTarget::Symbol(index) = relocation.target() else { continue };
        let Ok(symbol) = symbols.symbol_by_index(index) else { continue };
        if symbol.name_bytes().is_ok_and(|n| n == name.as_bytes()) {
            slots.push(slot);
        }
    }
    slots
}

/// (slot, address as linked) of every GOT slot the loader fills with an
/// address inside the library itself (`*_RELATIVE`, explicit addend).
pub fn relative_slots<'d, M: Machine, R: ReadRef<'d>>(elf: &ElfFile64<'d, Endianness, R>) -> Vec<(u64, u64)> {
    let Some(relocations) = elf.dynamic_relocations() else { return Vec::new() };
    relocations
        .filter(|(_, relocation)| {
            relocation.flags() == RelocationFlags::Elf { r_type: M::RELATIVE }
                && !relocation.has_implicit_addend()
        })
        .map(|(slot, relocation)| (slot, relocation.addend() as u64))
        .collect()
}

/// A PLT stub is a few instructions: x86 `[endbr64] [bnd] jmp [rip+slot]`,
/// aarch64 `[bti c] adrp x16; ldr x17,[x16,#lo]; add x16,x16,#lo; br x17`.
pub const PLT_STUB_BYTES: u64 = 24;

/// The GOT slot a PLT stub at `address` jumps through: its only way out
/// is a jump through that slot, and it stores nothing (it may load the
/// slot into a register first).
pub fn stub_slot<M: Machine>(code: &[u8], address: u64) -> Option<u64> {
    let events = trace::<M>(code, address);
    let mut effects =
        events.iter().filter(|event| !matches!(event, Event::Load { .. } | Event::Return { .. }));
    match (effects.next(), effects.next()) {
        (Some(&Event::Call { target: Target::Slot(slot), .. }), None) => Some(slot),
        _ => None,
    }
}

/// Up to `len` bytes of the file at `address` (as linked); empty outside it.
pub fn code_at<'d, R: ReadRef<'d>>(
    bytes: R,
    segments: &[(u64, u64, u64)],
    address: u64,
    len: u64,
) -> &'d [u8] {
    let Some(start) = file_offset_of(segments, address) else { return &[] };
    let end = start.saturating_add(len).min(bytes.len().unwrap_or(0));
    if end <= start {
        return &[];
    }
    bytes.read_bytes_at(start, end - start).unwrap_or(&[])
}

/// [start, end) of the file-backed part of each executable PT_LOAD segment.
pub fn executable_ranges<'d, R: ReadRef<'d>>(elf: &ElfFile64<'d, Endianness, R>) -> Vec<(u64, u64)> {
    let endian = elf.endian();
    elf.elf_program_headers()
        .iter()
        .filter(|ph| ph.p_type(endian) == PT_LOAD && ph.p_flags(endian) & PF_X != 0)
        .map(|ph| {
            let start = ph.p_vaddr(endian);
            (start, start.saturating_add(ph.p_filesz(endian)))
        })
        .collect()
}

/// What a register holds, as far as a trace can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value {
    Unknown,
    /// Argument N (0 = the first) as on entry, plus an offset.
    Arg(u8, i64),
    Const(u64),
    /// A PC-relative address (`lea reg,[rip+X]`, `adrp`, `adr`).
    Address(u64),
    /// The 64-bit word at a PC-relative address (`mov reg,[rip+X]`,
    /// `adrp`+`ldr`): a GOT slot's contents once the loader filled it.
    Loaded(u64),
    /// The stack pointer as on entry, plus an offset: the address of a
    /// local variable (`lea rcx,[rsp+8]`, `add x3, sp, #8`).
    Stack(i64),
}

impl Value {
    fn plus(self, delta: i64) -> Value {
        match self {
            Value::Unknown | Value::Loaded(_) => Value::Unknown,
            Value::Arg(n, offset) => Value::Arg(n, offset.wrapping_add(delta)),
            Value::Stack(offset) => Value::Stack(offset.wrapping_add(delta)),
            Value::Const(c) => Value::Const(c.wrapping_add(delta as u64)),
            Value::Address(a) => Value::Address(a.wrapping_add(delta as u64)),
        }
    }

    /// The value as the target of an indirect call or jump.
    fn as_target(self) -> Target {
        match self {
            Value::Address(to) => Target::Direct(to),
            Value::Loaded(slot) => Target::Slot(slot),
            _ => Target::Unknown,
        }
    }
}

/// The registers a trace follows, indexed as each [`Machine`] numbers
/// them (x86: rax..r15 in hardware order; aarch64: x0..x30, then sp).
pub type Regs = [Value; 32];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A known address (`call rel32`, `bl`, or a register holding one).
    Direct(u64),
    /// Through a GOT slot (`call [rip+slot]`, `br x17` after `adrp`+`ldr`).
    Slot(u64),
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `mov [base+disp], value`, `width` bytes.
    Store { at: u64, base: Value, disp: i64, width: usize, value: Value },
    /// A load of `width` bytes from `[base+disp]` into a general register.
    Load { base: Value, disp: i64, width: usize },
    /// A call or tail jump out of the function, with the first four
    /// argument registers at it; `next` is the instruction after it (a
    /// call's return address).
    Call { at: u64, next: u64, target: Target, args: [Value; 4] },
    /// A return to the caller, with the result register at it.
    Return { value: Value },
}

/// Where control goes after one instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// To the next instruction.
    Next,
    /// A conditional branch: to `to` or to the next instruction.
    Branch(u64),
    /// An unconditional jump: inside the function, the path goes on there;
    /// outside, it is a tail call.
    Jump(Target),
    /// A call: the next instruction runs after it, with the caller-saved
    /// registers changed.
    Call(Target),
    /// A return to the caller.
    Return,
    /// A trap, or anything else not followed.
    Stop,
}

/// Follows every path through `code` (at `address`) from its entry,
/// decoding each instruction once, and reports stores, loads, calls and
/// returns.
pub fn trace<M: Machine>(code: &[u8], address: u64) -> Vec<Event> {
    trace_paths::<M>(code, address, 1)
}

/// [`trace`], decoding each instruction up to `max_visits` times: a path
/// that joins one already followed goes on with its own registers (the
/// tail that several error reports share, each having loaded its own
/// arguments before jumping there), and events repeat. Bounded, so
/// termination never depends on the code.
pub fn trace_paths<M: Machine>(code: &[u8], address: u64, max_visits: u8) -> Vec<Event> {
    let mut entry = [Value::Unknown; 32];
    for (n, &reg) in M::ARGS.iter().enumerate() {
        entry[reg] = Value::Arg(n as u8, 0);
    }
    entry[M::STACK_POINTER] = Value::Stack(0);
    let inside = |target: u64| target.wrapping_sub(address) < code.len() as u64;
    let mut visits = vec![0u8; code.len()];
    let mut pending = vec![(address, entry)];
    let mut events = Vec::new();
    while let Some((start, mut regs)) = pending.pop() {
        let mut at = start;
        loop {
            let offset = at.wrapping_sub(address) as usize;
            match visits.get_mut(offset) {
                Some(seen) if *seen < max_visits => *seen += 1,
                _ => break,
            }
            let Some((len, flow)) = M::step(&code[offset..], at, &mut regs, &mut events) else { break };
            let next = at.wrapping_add(len as u64);
            let call = |target| Event::Call { at, next, target, args: M::ARGS.map(|reg| regs[reg]) };
            match flow {
                Flow::Next => {}
                Flow::Branch(to) => {
                    if inside(to) {
                        pending.push((to, regs));
                    }
                }
                Flow::Jump(Target::Direct(to)) if inside(to) => {
                    pending.push((to, regs));
                    break;
                }
                Flow::Jump(target) => {
                    events.push(call(target));
                    break;
                }
                Flow::Call(target) => {
                    events.push(call(target));
                    for &reg in M::CALLER_SAVED {
                        regs[reg] = Value::Unknown;
                    }
                }
                Flow::Return => {
                    events.push(Event::Return { value: regs[M::RESULT] });
                    break;
                }
                Flow::Stop => break,
            }
            at = at.wrapping_add(len as u64);
        }
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(ws: &[u32]) -> Vec<u8> {
        ws.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    /// Two error paths loading their own reason (w2) and joining at one
    /// call: followed once, the call is seen with one of them; with joins
    /// followed, with each.
    #[test]
    fn joins_are_followed_with_their_own_registers() {
        let code = words(&[
            0xb4000061, // cbz x1, +0xc
            0x52800842, // mov w2, #66
            0x14000002, // b +0x8
            0x52801ae2, // mov w2, #215
            0x940003fc, // bl 0x2000
            0xd65f03c0, // ret
        ]);
        let reasons = |events: Vec<Event>| -> Vec<Value> {
            let mut found: Vec<Value> = events
                .into_iter()
                .filter_map(|e| match e {
                    Event::Call { target: Target::Direct(0x2000), args, .. } => Some(args[2]),
                    _ => None,
                })
                .collect();
            found.sort_by_key(|v| format!("{v:?}"));
            found.dedup();
            found
        };
        assert_eq!(reasons(trace::<Aarch64>(&code, 0x1000)).len(), 1);
        assert_eq!(reasons(trace_paths::<Aarch64>(&code, 0x1000, 4)), [Value::Const(215), Value::Const(66)]);
        assert_eq!(Aarch64::direct_calls_to(&code, 0x1000, 0x2000), [0x1010]);
        assert!(Aarch64::direct_calls_to(&code, 0x1000, 0x2004).is_empty());
    }

    /// `adrp x3` and `add x3, x3, #lo` a few instructions apart (as in
    /// Android 13's arm64 libssl) form the address; the trace agrees.
    #[test]
    fn aarch64_address_references() {
        let code = words(&[
            0x90fffe03, // adrp x3, -0x40000 (from 0x54768: page 0x14000)
            0x52800200, // mov w0, #16
            0x910c9863, // add x3, x3, #0x326
            0xd65f03c0, // ret
        ]);
        let targets: HashSet<u64> = [0x14326].into();
        assert_eq!(Aarch64::address_references(&code, 0x54768, &targets), [0x54768]);
        assert!(Aarch64::address_references(&code, 0x54768, &[0x14000].into()).is_empty());
        assert!(Aarch64::address_references(&code[..8], 0x54768, &targets).is_empty(), "no add");
        let mut regs = [Value::Unknown; 32];
        let mut events = Vec::new();
        for (n, at) in [(0, 0x54768u64), (4, 0x5476c), (8, 0x54770)] {
            Aarch64::step(&code[n..], at, &mut regs, &mut events);
        }
        assert_eq!((regs[0], regs[3]), (Value::Const(16), Value::Address(0x14326)));
    }

    #[test]
    fn plt_stubs() {
        // jmp [rip+0x2000]
        let plain = [0xff, 0x25, 0x00, 0x20, 0, 0, 0x68, 0, 0, 0, 0];
        assert_eq!(stub_slot::<X86_64>(&plain, 0x1000), Some(0x3006));
        // endbr64; bnd jmp [rip+0x2000]
        let sec = [0xf3, 0x0f, 0x1e, 0xfa, 0xf2, 0xff, 0x25, 0x00, 0x20, 0, 0, 0x0f, 0x1f, 0x44, 0, 0];
        assert_eq!(stub_slot::<X86_64>(&sec, 0x1000), Some(0x300b));
        assert_eq!(stub_slot::<X86_64>(&sec[..6], 0x1000), None);
        assert_eq!(stub_slot::<X86_64>(&[0x90; 16], 0x1000), None);
        // adrp x16, +3 pages; ldr x17, [x16, #0x838]; add x16, x16, #0x838; br x17
        let stub = words(&[0xf0000010, 0xf9441e11, 0x9120e210, 0xd61f0220]);
        assert_eq!(stub_slot::<Aarch64>(&stub, 0x36eb0), Some(0x36000 + 0x3000 + 0x838));
        assert_eq!(stub_slot::<Aarch64>(&stub[..12], 0x36eb0), None);
        // With branch target identification: bti c first.
        let bti = words(&[0xd503245f, 0xf0000010, 0xf9441e11, 0x9120e210, 0xd61f0220]);
        assert_eq!(stub_slot::<Aarch64>(&bti, 0x36eb0), Some(0x36000 + 0x3000 + 0x838));
        // br x16 (the address, not the slot's contents): not a PLT stub.
        let through_address = words(&[0xf0000010, 0xf9441e11, 0x9120e210, 0xd61f0200]);
        assert_eq!(stub_slot::<Aarch64>(&through_address, 0x36eb0), None);
        assert_eq!(stub_slot::<Aarch64>(&words(&[0xd503201f; 4]), 0x36eb0), None);
    }
}
