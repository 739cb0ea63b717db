//! GnuTLS key log points, found in a stripped libgnutls by disassembling
//! exported functions only (x86-64), so no private struct layout is typed
//! by hand and no debug symbols are needed.
//!
//! GnuTLS >= 3.6.13 routes every secret it derives through
//! `session->internals.keylog_func(session, label, const gnutls_datum_t *secret)`,
//! and `gnutls_init` installs a default one (internal, `_gnutls_nss_keylog_func`)
//! by calling the exported `gnutls_session_set_keylog_function(session, func)`.
//! A uprobe on that default function's entry sees (rdi=session, rsi=label,
//! rdx=datum {data, size}) for every secret; the session's client random is
//! at `session + client_random_offset`, which `gnutls_session_get_random`
//! gives away (`client->data = session + OFF; client->size = 32`).
//!
//! Each function is traced symbolically: registers hold "argument N plus k",
//! a constant, a RIP-relative address, or unknown; both sides of every
//! conditional branch are followed, each instruction once. Every read is
//! bounds-checked and decoding is capped at [`super::calls::MAX_FUNCTION`] bytes per
//! function: these bytes come from any file on the host.

use anyhow::{bail, Context, Result};
use iced_x86::{
    Decoder, DecoderOptions, FlowControl, Instruction, InstructionInfoFactory, Mnemonic, OpAccess, OpKind,
    Register,
};
use object::elf::{PF_X, PT_LOAD, R_X86_64_GLOB_DAT, R_X86_64_JUMP_SLOT};
use object::read::elf::{ElfFile64, ProgramHeader};
use object::{
    Architecture, Endianness, Object, ObjectSymbol, ObjectSymbolTable, ReadRef, RelocationFlags,
    RelocationTarget,
};

use super::calls::function_code;
use super::elf::{file_offset_of, load_segments, Symbols};
use super::pinned::PinnedFile;

/// Where to probe for GnuTLS secrets and how to read the client random.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GnutlsKeylogPoints {
    /// File offset of the default key log function `gnutls_init` installs:
    /// what the uprobe attaches to.
    pub keylog_function: u64,
    /// `session + client_random_offset` is the session's 32-byte client random.
    pub client_random_offset: u32,
}

const INIT: &str = "gnutls_init";
const GET_RANDOM: &str = "gnutls_session_get_random";
const SET_KEYLOG: &str = "gnutls_session_set_keylog_function";

/// The client random is near the start of the session struct (0x50 in
/// GnuTLS 3.7); anything past this is not a field offset.
const MAX_CLIENT_RANDOM_OFFSET: i64 = 0x1_0000;
const CLIENT_RANDOM_SIZE: u64 = 32;

const UNAVAILABLE: &str = "GnuTLS key log lines are unavailable for this library";

pub fn find(file: &PinnedFile) -> Result<GnutlsKeylogPoints> {
    find_in(file.data()).context("finding the GnuTLS key log function")
}

pub fn find_in<'d, R: ReadRef<'d>>(bytes: R) -> Result<GnutlsKeylogPoints> {
    let elf = ElfFile64::<Endianness, R>::parse(bytes).context("not a 64-bit ELF file")?;
    if elf.architecture() != Architecture::X86_64 {
        bail!("not an x86-64 library; {UNAVAILABLE}");
    }
    let segments = load_segments(&elf)?;
    let symbols = Symbols::parse(bytes, &[INIT, GET_RANDOM, SET_KEYLOG])?;

    let get_random = symbols
        .get(GET_RANDOM)
        .with_context(|| format!("the library does not export {GET_RANDOM}; {UNAVAILABLE}"))?;
    let client_random_offset = client_random_offset(function_code(bytes, get_random), get_random.address)?;

    let set_keylog = symbols.get(SET_KEYLOG).with_context(|| {
        format!("the library does not export {SET_KEYLOG} (GnuTLS older than 3.6.13?); {UNAVAILABLE}")
    })?;
    let field = keylog_func_field(function_code(bytes, set_keylog), set_keylog.address);
    let init =
        symbols.get(INIT).with_context(|| format!("the library does not export {INIT}; {UNAVAILABLE}"))?;

    let slots = got_slots(&elf, SET_KEYLOG);
    let is_set_keylog = |target: &Target| match *target {
        Target::Direct(to) => {
            to == set_keylog.address || stub_slot(bytes, &segments, to).is_some_and(|s| slots.contains(&s))
        }
        Target::Slot(slot) => slots.contains(&slot),
        Target::Unknown => false,
    };
    let executable = executable_ranges(&elf);
    let in_code = |address: u64| executable.iter().any(|&(start, end)| address >= start && address < end);
    let (_, function) =
        default_keylog_function(function_code(bytes, init), init.address, &is_set_keylog, field, &in_code)?;
    let keylog_function = file_offset_of(&segments, function)
        .filter(|&offset| offset < bytes.len().unwrap_or(0))
        .with_context(|| {
            format!("the default key log function at {function:#x} is not in the file; {UNAVAILABLE}")
        })?;
    Ok(GnutlsKeylogPoints { keylog_function, client_random_offset })
}

/// `gnutls_session_get_random(session, client, server)`: the offset of
/// `client->data = session + OFF`, where `client->size = 32` is stored too.
fn client_random_offset(code: &[u8], address: u64) -> Result<u32> {
    let mut offsets = Vec::new();
    let mut size_32 = false;
    for event in trace(code, address) {
        let Event::Store { base, disp, width, value, .. } = event else { continue };
        // Stores through the second argument, `client`.
        let Value::Arg(1, base_offset) = base else { continue };
        match (base_offset.wrapping_add(disp), width, value) {
            (0, 8, Value::Arg(0, offset)) if !offsets.contains(&offset) => offsets.push(offset),
            (8, 4 | 8, Value::Const(size)) if size & 0xffff_ffff == CLIENT_RANDOM_SIZE => size_32 = true,
            _ => {}
        }
    }
    match offsets[..] {
        [offset] if size_32 && (0..MAX_CLIENT_RANDOM_OFFSET).contains(&offset) => Ok(offset as u32),
        [offset] if !size_32 => bail!(
            "{GET_RANDOM} stores client->data = session + {offset:#x} but not client->size = 32; {UNAVAILABLE}"
        ),
        [_, _, ..] => bail!("{GET_RANDOM} stores several client randoms ({offsets:#x?}); {UNAVAILABLE}"),
        _ => bail!(
            "{GET_RANDOM} does not store client->data = session + offset the way we recognise; \
             the client random of GnuTLS sessions cannot be found; {UNAVAILABLE}"
        ),
    }
}

/// `gnutls_session_set_keylog_function(session, func)`: the offset of
/// `session->internals.keylog_func` (`mov [rdi+OFF],rsi`), when recognised.
fn keylog_func_field(code: &[u8], address: u64) -> Option<i64> {
    let mut fields = trace(code, address).into_iter().filter_map(|event| match event {
        Event::Store {
            base: Value::Arg(0, base_offset), disp, width: 8, value: Value::Arg(1, 0), ..
        } => Some(base_offset.wrapping_add(disp)),
        _ => None,
    });
    let field = fields.next()?;
    fields.all(|f| f == field).then_some(field)
}

/// `gnutls_init`: the function whose address is in rsi when it calls
/// `gnutls_session_set_keylog_function` (`lea rsi,[rip+X]; call`), or,
/// should the call be inlined, the one stored at the keylog_func field.
/// Returns (where it is installed, the function's address).
fn default_keylog_function(
    code: &[u8],
    address: u64,
    is_set_keylog: &dyn Fn(&Target) -> bool,
    field: Option<i64>,
    in_code: &dyn Fn(u64) -> bool,
) -> Result<(u64, u64)> {
    let events = trace(code, address);
    let mut found: Vec<(u64, u64)> = Vec::new();
    let mut calls = 0;
    for event in &events {
        let Event::Call { at, target, rsi } = event else { continue };
        if !is_set_keylog(target) {
            continue;
        }
        calls += 1;
        if let Value::Address(function) = *rsi {
            if in_code(function) && !found.iter().any(|&(_, f)| f == function) {
                found.push((*at, function));
            }
        }
    }
    if found.is_empty() && calls == 0 {
        // Inlined: `lea reg,[rip+X]; mov [session+field],reg`.
        for event in &events {
            let Event::Store { at, base, disp, width: 8, value: Value::Address(function) } = *event else {
                continue;
            };
            let offset = match base {
                Value::Arg(_, base_offset) => base_offset.wrapping_add(disp),
                _ => disp,
            };
            if Some(offset) == field && in_code(function) && !found.iter().any(|&(_, f)| f == function) {
                found.push((at, function));
            }
        }
    }
    let field_text = match field {
        Some(field) => format!(", which stores it at session+{field:#x}"),
        None => String::new(),
    };
    match found[..] {
        [one] => Ok(one),
        [] => bail!(
            "gnutls_init does not install a default key log function we recognise \
             ({calls} calls to {SET_KEYLOG}{field_text}, none with `lea rsi,[rip+X]` into code); {UNAVAILABLE}"
        ),
        _ => {
            let all: Vec<String> = found.iter().map(|(_, f)| format!("{f:#x}")).collect();
            bail!("gnutls_init installs several key log functions ({}); {UNAVAILABLE}", all.join(", "))
        }
    }
}

/// Addresses of the GOT slots the dynamic loader fills with `name`'s
/// address (`R_X86_64_JUMP_SLOT` for PLT stubs, `R_X86_64_GLOB_DAT` for
/// `.plt.got` stubs and `call [rip+GOT]`).
fn got_slots<'d, R: ReadRef<'d>>(elf: &ElfFile64<'d, Endianness, R>, name: &str) -> Vec<u64> {
    let (Some(relocations), Some(symbols)) = (elf.dynamic_relocations(), elf.dynamic_symbol_table()) else {
        return Vec::new();
    };
    let mut slots = Vec::new();
    for (slot, relocation) in relocations {
        let RelocationFlags::Elf { r_type } = relocation.flags() else { continue };
        if r_type != R_X86_64_JUMP_SLOT && r_type != R_X86_64_GLOB_DAT {
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

/// The GOT slot a PLT stub at `address` jumps through:
/// `[endbr64] [bnd] jmp [rip+slot]`.
fn stub_slot<'d, R: ReadRef<'d>>(bytes: R, segments: &[(u64, u64, u64)], address: u64) -> Option<u64> {
    let start = file_offset_of(segments, address)?;
    let end = start.saturating_add(16).min(bytes.len().ok()?);
    let code = bytes.read_bytes_at(start, end.checked_sub(start)?).ok()?;
    let mut decoder = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
    for _ in 0..2 {
        let instr = decoder.decode();
        match instr.mnemonic() {
            Mnemonic::Endbr64 => continue,
            Mnemonic::Jmp if instr.op_count() == 1 && instr.is_ip_rel_memory_operand() => {
                return Some(instr.ip_rel_memory_address());
            }
            _ => return None,
        }
    }
    None
}

/// [start, end) of the file-backed part of each executable PT_LOAD segment.
fn executable_ranges<'d, R: ReadRef<'d>>(elf: &ElfFile64<'d, Endianness, R>) -> Vec<(u64, u64)> {
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
enum Value {
    Unknown,
    /// Argument N (0 = rdi, 1 = rsi, ...) as on entry, plus an offset.
    Arg(u8, i64),
    Const(u64),
    /// A RIP-relative address (`lea reg,[rip+X]`).
    Address(u64),
}

impl Value {
    fn plus(self, delta: i64) -> Value {
        match self {
            Value::Unknown => Value::Unknown,
            Value::Arg(n, offset) => Value::Arg(n, offset.wrapping_add(delta)),
            Value::Const(c) => Value::Const(c.wrapping_add(delta as u64)),
            Value::Address(a) => Value::Address(a.wrapping_add(delta as u64)),
        }
    }
}

/// rax..r15, in iced's (and the hardware's) order.
type Regs = [Value; 16];
const RSI: usize = 6;
/// rdi, rsi, rdx, rcx, r8, r9: the SysV argument registers.
const ARGS: [usize; 6] = [7, 6, 2, 1, 8, 9];
/// rax, rcx, rdx, rsi, rdi, r8-r11: what a call may change.
const CALLER_SAVED: [usize; 9] = [0, 1, 2, 6, 7, 8, 9, 10, 11];

fn gpr(register: Register) -> Option<usize> {
    let index = (register.full_register() as usize).wrapping_sub(Register::RAX as usize);
    (index < 16).then_some(index)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// `call/jmp rel32`.
    Direct(u64),
    /// `call/jmp [rip+slot]`.
    Slot(u64),
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    /// `mov [base+disp], value`, `width` bytes.
    Store { at: u64, base: Value, disp: i64, width: usize, value: Value },
    /// A call or tail jump out of the function, with rsi (the second
    /// argument) at it.
    Call { at: u64, target: Target, rsi: Value },
}

/// Follows every path through `code` (at `address`) from its entry,
/// decoding each instruction once, and reports stores and calls.
fn trace(code: &[u8], address: u64) -> Vec<Event> {
    let mut entry = [Value::Unknown; 16];
    for (n, &reg) in ARGS.iter().enumerate() {
        entry[reg] = Value::Arg(n as u8, 0);
    }
    let inside = |target: u64| target.wrapping_sub(address) < code.len() as u64;
    let mut visited = vec![false; code.len()];
    let mut pending = vec![(address, entry)];
    let mut events = Vec::new();
    let mut factory = InstructionInfoFactory::new();
    while let Some((start, mut regs)) = pending.pop() {
        let offset = start.wrapping_sub(address) as usize;
        let Some(rest) = code.get(offset..) else { continue };
        let mut decoder = Decoder::with_ip(64, rest, start, DecoderOptions::NONE);
        while decoder.can_decode() {
            let at = decoder.ip();
            let seen = at.wrapping_sub(address) as usize;
            if visited.get(seen).copied().unwrap_or(true) {
                break;
            }
            visited[seen] = true;
            let instr = decoder.decode();
            if instr.is_invalid() {
                break;
            }
            match instr.flow_control() {
                FlowControl::Next => step(&instr, &mut regs, &mut factory, &mut events),
                FlowControl::ConditionalBranch => {
                    if let Some(to) = near_target(&instr).filter(|&t| inside(t)) {
                        pending.push((to, regs));
                    }
                    clobber_written(&instr, &mut regs, &mut factory); // loop/jrcxz change rcx
                }
                FlowControl::UnconditionalBranch => {
                    match near_target(&instr) {
                        Some(to) if inside(to) => pending.push((to, regs)),
                        Some(to) => {
                            events.push(Event::Call { at, target: Target::Direct(to), rsi: regs[RSI] })
                        }
                        None => {}
                    }
                    break;
                }
                FlowControl::IndirectBranch => {
                    events.push(Event::Call { at, target: indirect_target(&instr), rsi: regs[RSI] });
                    break;
                }
                FlowControl::Call | FlowControl::IndirectCall => {
                    let target = match near_target(&instr) {
                        Some(to) => Target::Direct(to),
                        None => indirect_target(&instr),
                    };
                    events.push(Event::Call { at, target, rsi: regs[RSI] });
                    for reg in CALLER_SAVED {
                        regs[reg] = Value::Unknown;
                    }
                }
                // ret, int3, ud2, xbegin, ...
                _ => break,
            }
        }
    }
    events
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
fn step(instr: &Instruction, regs: &mut Regs, factory: &mut InstructionInfoFactory, events: &mut Vec<Event>) {
    let kind = |n: u32| instr.try_op_kind(n).ok();
    let reg = |n: u32| instr.try_op_register(n).ok();
    let immediate = |n: u32| instr.try_immediate(n).ok();
    // A 64-bit destination register and the value it gets, computed from
    // the registers before the instruction.
    let dest64 = reg(0).filter(|r| r.is_gpr64()).and_then(gpr).filter(|_| kind(0) == Some(OpKind::Register));
    let mut result = None;
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
        _ => {}
    }
    clobber_written(instr, regs, factory);
    if let Some((dest, value)) = result {
        regs[dest] = value;
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::path::Path;

    const LIBGNUTLS: &str = "/usr/lib/x86_64-linux-gnu/libgnutls.so.30";

    /// The system libgnutls; its absence fails the test with the way to
    /// get it rather than passing without checking anything.
    fn libgnutls() -> Vec<u8> {
        fs::read(LIBGNUTLS)
            .unwrap_or_else(|e| panic!("{LIBGNUTLS}: {e}; install it with scripts/install-deps --test"))
    }

    /// What the library itself says, asked at run time: the default key log
    /// function `gnutls_init` installs (as a link-time address) and where
    /// `gnutls_session_get_random` finds the client random. This derives the
    /// expectation without reading any machine code, so it holds for every
    /// build of the package.
    fn ask_the_library() -> (u64, u32) {
        use std::ffi::{c_char, c_int, c_uint, c_void, CString};
        #[repr(C)]
        struct Datum {
            data: *mut u8,
            size: c_uint,
        }
        type Init = unsafe extern "C" fn(*mut *mut c_void, c_uint) -> c_int;
        type GetKeylog = unsafe extern "C" fn(*mut c_void) -> *const c_void;
        type GetRandom = unsafe extern "C" fn(*mut c_void, *mut Datum, *mut Datum);
        type Deinit = unsafe extern "C" fn(*mut c_void);
        const GNUTLS_CLIENT: c_uint = 1 << 1;

        let path = CString::new(LIBGNUTLS).unwrap();
        // SAFETY: libgnutls is a system library with the C ABI declared
        // above for these four exported functions (GnuTLS >= 3.6.13).
        unsafe {
            let handle = libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
            assert!(!handle.is_null(), "dlopen {LIBGNUTLS} failed");
            let symbol = |name: &str| {
                let name = CString::new(name).unwrap();
                let found = libc::dlsym(handle, name.as_ptr() as *const c_char);
                assert!(!found.is_null(), "{LIBGNUTLS} does not export {name:?}");
                found
            };
            let init: Init = std::mem::transmute(symbol(INIT));
            let get_keylog: GetKeylog = std::mem::transmute(symbol("gnutls_session_get_keylog_function"));
            let get_random: GetRandom = std::mem::transmute(symbol(GET_RANDOM));
            let deinit: Deinit = std::mem::transmute(symbol("gnutls_deinit"));

            let mut session = std::ptr::null_mut();
            assert_eq!(init(&mut session, GNUTLS_CLIENT), 0, "gnutls_init failed");
            let function = get_keylog(session);
            let mut client = Datum { data: std::ptr::null_mut(), size: 0 };
            let mut server = Datum { data: std::ptr::null_mut(), size: 0 };
            get_random(session, &mut client, &mut server);
            let client_random_offset = client.data as usize - session as usize;
            assert_eq!(client.size, 32);

            let mut info: libc::Dl_info = std::mem::zeroed();
            assert_ne!(libc::dladdr(function, &mut info), 0, "dladdr of the key log function");
            let address = function as u64 - info.dli_fbase as u64;
            deinit(session);
            (address, client_random_offset as u32)
        }
    }

    /// Debian's gnutls_session_get_random (GnuTLS 3.7.9).
    const GET_RANDOM_379: [u8; 39] = [
        0x48, 0x85, 0xf6, // test rsi,rsi
        0x74, 0x0e, // je +0xe
        0x48, 0x8d, 0x47, 0x50, // lea rax,[rdi+0x50]
        0xc7, 0x46, 0x08, 0x20, 0, 0, 0, // mov dword [rsi+8],0x20
        0x48, 0x89, 0x06, // mov [rsi],rax
        0x48, 0x85, 0xd2, // test rdx,rdx
        0x74, 0x0e, // je +0xe
        0x48, 0x83, 0xc7, 0x70, // add rdi,0x70
        0xc7, 0x42, 0x08, 0x20, 0, 0, 0, // mov dword [rdx+8],0x20
        0x48, 0x89, 0x3a, // mov [rdx],rdi
        0xc3, // ret
    ];

    #[test]
    fn registers_are_in_hardware_order() {
        assert_eq!(gpr(Register::RAX), Some(0));
        assert_eq!(gpr(Register::ESI), Some(RSI));
        assert_eq!(gpr(Register::DIL), Some(7));
        assert_eq!(gpr(Register::R15), Some(15));
        assert_eq!(gpr(Register::RIP), None);
        assert_eq!(gpr(Register::None), None);
    }

    #[test]
    fn the_system_libgnutls_agrees_with_itself_at_run_time() {
        let bytes = libgnutls();
        let points = find(&PinnedFile::open(Path::new(LIBGNUTLS)).unwrap()).unwrap();
        let bytes = &bytes[..];
        assert_eq!(find_in(bytes).unwrap(), points);

        let (function, client_random_offset) = ask_the_library();
        let elf = ElfFile64::<Endianness>::parse(bytes).unwrap();
        let segments = load_segments(&elf).unwrap();
        let keylog_function = file_offset_of(&segments, function).unwrap();
        assert_eq!(points, GnutlsKeylogPoints { keylog_function, client_random_offset });

        // The setter stores its argument at one field of the session.
        let symbols = Symbols::parse(bytes, &[SET_KEYLOG, INIT]).unwrap();
        let set_keylog = symbols.get(SET_KEYLOG).unwrap();
        assert!(keylog_func_field(function_code(bytes, set_keylog), set_keylog.address).is_some());
    }

    /// Where gnutls_init calls the key log setter: the setter itself, or
    /// the PLT stub that jumps through its GOT slot.
    fn setter_stub(bytes: &[u8]) -> u64 {
        let elf = ElfFile64::<Endianness>::parse(bytes).unwrap();
        let segments = load_segments(&elf).unwrap();
        let symbols = Symbols::parse(bytes, &[SET_KEYLOG, INIT]).unwrap();
        let slots = got_slots(&elf, SET_KEYLOG);
        let is_set_keylog = |t: &Target| match *t {
            Target::Direct(to) => stub_slot(bytes, &segments, to).is_some_and(|s| slots.contains(&s)),
            _ => false,
        };
        let init = symbols.get(INIT).unwrap();
        let (call_site, _) =
            default_keylog_function(function_code(bytes, init), init.address, &is_set_keylog, None, &|_| {
                true
            })
            .unwrap();
        call_target(bytes, &segments, call_site).expect("gnutls_init calls the setter's PLT stub")
    }

    /// The target of the direct call at `address`.
    fn call_target(bytes: &[u8], segments: &[(u64, u64, u64)], address: u64) -> Option<u64> {
        let offset = file_offset_of(segments, address)? as usize;
        let code = bytes.get(offset..offset + 16)?;
        let call = Decoder::with_ip(64, code, address, DecoderOptions::NONE).decode();
        (call.mnemonic() == Mnemonic::Call && call.op0_kind() == OpKind::NearBranch64)
            .then(|| call.near_branch_target())
    }

    #[test]
    fn get_random_as_debian_builds_it() {
        assert_eq!(client_random_offset(&GET_RANDOM_379, 0x78170).unwrap(), 0x50);
    }

    #[test]
    fn get_random_variants() {
        // mov rax,rdi; add rax,0x48; mov ecx,0x20; mov [rsi+8],ecx; mov [rsi],rax; ret
        let copy_and_add = [
            0x48, 0x89, 0xf8, 0x48, 0x83, 0xc0, 0x48, 0xb9, 0x20, 0, 0, 0, 0x89, 0x4e, 0x08, 0x48, 0x89,
            0x06, 0xc3,
        ];
        assert_eq!(client_random_offset(&copy_and_add, 0x1000).unwrap(), 0x48);
        // The client store after a ret, reached by a branch:
        // test rsi,rsi; jne +1; ret; lea rax,[rdi+0x30]; mov [rsi],rax; mov dword [rsi+8],0x20; ret
        let after_ret = [
            0x48, 0x85, 0xf6, 0x75, 0x01, 0xc3, 0x48, 0x8d, 0x47, 0x30, 0x48, 0x89, 0x06, 0xc7, 0x46, 0x08,
            0x20, 0, 0, 0, 0xc3,
        ];
        assert_eq!(client_random_offset(&after_ret, 0x1000).unwrap(), 0x30);
        // A size other than 32 is not the client random.
        let mut size_16 = GET_RANDOM_379;
        size_16[12] = 0x10;
        assert!(client_random_offset(&size_16, 0x1000).is_err());
        // Client and server swapped (stores through rdx only for the
        // session's first random): the client store is still the rsi one.
        let mut swapped = GET_RANDOM_379;
        swapped[8] = 0x70;
        swapped[27] = 0x50;
        assert_eq!(client_random_offset(&swapped, 0x1000).unwrap(), 0x70);
        // A call clobbers rax: the stored value is no longer session+k.
        // lea rax,[rdi+0x50]; call +0; mov dword [rsi+8],0x20; mov [rsi],rax; ret
        let clobbered = [
            0x48, 0x8d, 0x47, 0x50, 0xe8, 0, 0, 0, 0, 0xc7, 0x46, 0x08, 0x20, 0, 0, 0, 0x48, 0x89, 0x06, 0xc3,
        ];
        assert!(client_random_offset(&clobbered, 0x1000).is_err());
        // Truncated anywhere: an error or the offset, never a panic.
        for cut in 0..GET_RANDOM_379.len() {
            let _ = client_random_offset(&GET_RANDOM_379[..cut], 0x1000);
        }
        assert!(client_random_offset(&GET_RANDOM_379[..16], 0x1000).is_err());
    }

    #[test]
    fn init_calls_set_keylog_directly_or_inline() {
        // lea rsi,[rip+0x100]; xor ebx,ebx; call 0x5000; ret  (at 0x1000)
        let mut code = vec![0x48, 0x8d, 0x35, 0x00, 0x01, 0, 0, 0x31, 0xdb, 0xe8];
        code.extend_from_slice(&(0x5000i32 - 0x100e).to_le_bytes());
        code.push(0xc3);
        let direct = |t: &Target| *t == Target::Direct(0x5000);
        let found = default_keylog_function(&code, 0x1000, &direct, None, &|_| true).unwrap();
        assert_eq!(found, (0x1009, 0x1107));
        // Not into code: refused.
        let err = default_keylog_function(&code, 0x1000, &direct, Some(0x660), &|_| false).unwrap_err();
        assert!(err.to_string().contains("does not install a default key log function"), "{err}");
        assert!(err.to_string().contains("session+0x660"), "{err}");
        // A call to something else is not the keylog setter.
        let other = |t: &Target| *t == Target::Direct(0x6000);
        assert!(default_keylog_function(&code, 0x1000, &other, None, &|_| true).is_err());
        // rsi overwritten between the lea and the call.
        let mut overwritten = code.clone();
        overwritten[7..9].copy_from_slice(&[0x31, 0xf6]); // xor esi,esi
        assert!(default_keylog_function(&overwritten, 0x1000, &direct, None, &|_| true).is_err());
        // Inlined: mov rbx,rax; lea rax,[rip+0x200]; mov [rbx+0x660],rax; ret
        let inline =
            [0x48, 0x89, 0xc3, 0x48, 0x8d, 0x05, 0x00, 0x02, 0, 0, 0x48, 0x89, 0x83, 0x60, 0x06, 0, 0, 0xc3];
        let found = default_keylog_function(&inline, 0x1000, &direct, Some(0x660), &|_| true).unwrap();
        assert_eq!(found, (0x100a, 0x120a));
        assert!(default_keylog_function(&inline, 0x1000, &direct, None, &|_| true).is_err());
    }

    #[test]
    fn set_keylog_field() {
        // mov [rdi+0x660],rsi; ret
        let code = [0x48, 0x89, 0xb7, 0x60, 0x06, 0, 0, 0xc3];
        assert_eq!(keylog_func_field(&code, 0x1000), Some(0x660));
        assert_eq!(keylog_func_field(&code[..3], 0x1000), None);
        // mov [rsi+0x660],rdi: the other way round.
        let swapped = [0x48, 0x89, 0xbe, 0x60, 0x06, 0, 0, 0xc3];
        assert_eq!(keylog_func_field(&swapped, 0x1000), None);
    }

    #[test]
    fn plt_stubs() {
        let segments = [(0x1000, 0x100, 0)];
        // jmp [rip+0x2000]
        let plain = [0xff, 0x25, 0x00, 0x20, 0, 0, 0x68, 0, 0, 0, 0];
        assert_eq!(stub_slot(&plain[..], &segments, 0x1000), Some(0x3006));
        // endbr64; bnd jmp [rip+0x2000]
        let sec = [0xf3, 0x0f, 0x1e, 0xfa, 0xf2, 0xff, 0x25, 0x00, 0x20, 0, 0, 0x0f, 0x1f, 0x44, 0, 0];
        assert_eq!(stub_slot(&sec[..], &segments, 0x1000), Some(0x300b));
        assert_eq!(stub_slot(&sec[..6], &segments, 0x1000), None);
        assert_eq!(stub_slot(&sec[..], &segments, 0x5000), None);
        assert_eq!(stub_slot(&[0x90; 16][..], &segments, 0x1000), None);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(find_in(&b""[..]).is_err());
        assert!(find_in(&b"\x7fELF garbage that is not an elf file at all"[..]).is_err());
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for len in [1usize, 7, 64, 4096] {
            let noise: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let _ = client_random_offset(&noise, 0x1000);
            let _ = keylog_func_field(&noise, 0x1000);
            let _ = default_keylog_function(&noise, 0x1000, &|_| true, Some(0x660), &|_| true);
            let _ = trace(&noise, u64::MAX - 8);
        }
        // Not GnuTLS: an error naming what is missing.
        let libc = fs::read("/lib/x86_64-linux-gnu/libc.so.6").unwrap();
        let err = find_in(&libc[..]).unwrap_err();
        assert!(err.to_string().contains(GET_RANDOM), "{err}");
        let bytes = libgnutls();
        for cut in [16, 64, 4096, bytes.len() / 2] {
            let _ = find_in(&bytes[..cut]);
        }
    }

    #[test]
    fn mutated_libgnutls_never_panics() {
        let mut bytes = libgnutls();
        let symbols = Symbols::parse(&bytes[..], &[INIT, GET_RANDOM, SET_KEYLOG]).unwrap();
        let mut ranges: Vec<(usize, usize)> = [INIT, GET_RANDOM, SET_KEYLOG]
            .iter()
            .map(|name| {
                let f = symbols.get(name).unwrap();
                (f.file_offset as usize, f.size.min(crate::discover::calls::MAX_FUNCTION) as usize)
            })
            .collect();
        // The PLT stub gnutls_init calls.
        let stub = setter_stub(&bytes);
        let elf = ElfFile64::<Endianness>::parse(&bytes[..]).unwrap();
        let stub_offset = file_offset_of(&load_segments(&elf).unwrap(), stub).unwrap();
        ranges.push((stub_offset as usize, 16));
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut found = 0;
        for _ in 0..2_000 {
            let mut changed = Vec::new();
            for _ in 0..1 + next() % 4 {
                let (start, len) = ranges[(next() % ranges.len() as u64) as usize];
                let at = start + (next() % len as u64) as usize;
                changed.push((at, bytes[at]));
                bytes[at] = next() as u8;
            }
            if find_in(&bytes[..]).is_ok() {
                found += 1;
            }
            for &(at, old) in changed.iter().rev() {
                bytes[at] = old;
            }
        }
        // Most mutations miss the few instructions that matter.
        eprintln!("{found} of 2000 mutated copies still give the key log points");
        assert!(found > 0 && found < 2_000);
        assert!(find_in(&bytes[..]).is_ok());
    }
}
