//! BoringSSL linked into an executable without a symbol table (x86-64
//! and aarch64): `SSL_write`, `SSL_read` and `SSL_do_handshake` found from
//! the code. Where it logs its secrets (`find_keylog`) is found from the
//! code too, in executables and in BoringSSL's shared libssl (which
//! exports its plaintext functions, but not that one).
//!
//! The anchor BoringSSL cannot remove: every error it reports is a call
//! `ERR_put_error(ERR_LIB_SSL, 0, reason, __FILE__, __LINE__)`
//! (`OPENSSL_PUT_ERROR`), so the code of `ssl/ssl_lib.cc` forms the address
//! of the string `.../ssl/ssl_lib.cc` (`lea rcx,[rip+X]`; `adrp x3` and
//! `add x3,x3,#lo`) and loads the constants 16 (ERR_LIB_SSL) and a reason
//! code before a direct call. Each function forming that address is traced
//! along every path ([`super::trace`]), so a report is a call that sees
//! those four arguments, wherever they were loaded (clang on aarch64 lets
//! several reports share one call). Reason codes are part of BoringSSL's
//! API and never renumbered; line numbers change with every version and are
//! not used. In ssl_lib.cc (checked in BoringSSL's source as the `boring`
//! crate 4.22 vendors it):
//! - `SSL_do_handshake` is the only function reporting
//!   SSL_R_CONNECTION_TYPE_NOT_SET;
//! - `SSL_write` the only one reporting SSL_R_BAD_LENGTH, beside
//!   ERR_R_SHOULD_NOT_HAVE_BEEN_CALLED (QUIC) and SSL_R_UNINITIALIZED;
//! - `SSL_peek` reports ERR_R_SHOULD_NOT_HAVE_BEEN_CALLED and calls the
//!   static `ssl_read_impl` (SSL_R_UNINITIALIZED, SSL_R_SSL_HANDSHAKE_FAILURE);
//!   `SSL_read` is `SSL_peek` plus consuming what it returned: the compiler
//!   inlines SSL_peek into it (measured: the `boring` crate 4.22 on x86-64
//!   and, GCC, on aarch64), or SSL_read calls it first with its own
//!   arguments.
//!
//! Each is then checked by a property the reason codes do not give: the
//! call graph. SSL_write and ssl_read_impl must call the SSL_do_handshake
//! found by its own reason code, SSL_read must call that ssl_read_impl, and
//! every ssl_lib.cc report must go to one and the same ERR_put_error.
//! Function starts come from `.eh_frame_hdr` (kept by `strip`: unwinding
//! needs it), so a probe only ever goes on a function's first instruction.
//! Any doubt (a candidate missing, or more than one) is an error naming
//! it: such a file is not probed.
//!
//! Every read is bounded: these bytes come from any file on the host.

use std::collections::{BTreeMap, HashSet};

use anyhow::{bail, Context, Result};
use iced_x86::{Code, Decoder, DecoderOptions, FlowControl, Instruction, InstructionInfoFactory, Register};
use object::read::elf::ElfFile64;
use object::{Endianness, ReadRef};
use yaxpeax_arm::armv8::a64::{Opcode, Operand, ShiftStyle, SizeCode};

use super::elf::{file_offset_of, load_segments, Function, Isa};
use super::pinned::PinnedFile;
use super::text::{
    c_strings, containing, executable_segment, find_all, function_starts, instruction_set,
    strings_ending_with, Text, MAX_FUNCTION, MAX_STRING,
};
use super::trace::{trace, trace_paths, Aarch64, Event, Machine, Target, Value, X86_64};

/// `ERR_LIB_SSL` (include/openssl/err.h).
const ERR_LIB_SSL: u64 = 16;
/// Reason codes (include/openssl/ssl.h and err.h).
const SHOULD_NOT_HAVE_BEEN_CALLED: u64 = 66;
const BAD_LENGTH: u64 = 111;
const CONNECTION_TYPE_NOT_SET: u64 = 134;
const HANDSHAKE_FAILURE: u64 = 215;
const UNINITIALIZED: u64 = 226;

/// The source file name BoringSSL's `__FILE__` ends with.
const SOURCE_FILE: &[u8] = b"ssl_lib.cc";
const SOURCE_PATH_SUFFIX: &[u8] = b"/ssl/ssl_lib.cc";
/// Functions referring to ssl_lib.cc that are disassembled (ssl_lib.cc has
/// a few hundred).
const MAX_FUNCTIONS: usize = 4096;

/// Where BoringSSL's plaintext functions are in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoringsslPoints {
    pub write: Function,
    pub read: Function,
    pub do_handshake: Function,
}

/// One `OPENSSL_PUT_ERROR(SSL, reason)` of ssl_lib.cc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Report {
    callee: u64,
    reason: Option<u64>,
}

/// A function whose code refers to ssl_lib.cc: its reports and direct calls.
#[derive(Debug, Default)]
struct Body {
    reports: Vec<Report>,
    calls: HashSet<u64>,
}

impl Body {
    fn reports(&self, reason: u64) -> bool {
        self.reports.iter().any(|r| r.reason == Some(reason))
    }

    fn calls(&self, target: u64) -> bool {
        self.calls.contains(&target)
    }
}

/// Is BoringSSL's ssl_lib.cc in this file (its source file name, which
/// its error reports carry)? What tells BoringSSL from OpenSSL when the
/// functions only BoringSSL has were left out by the linker. Read in
/// chunks, none kept: an executable can be tens of MiB.
pub fn is_linked_in(file: &PinnedFile) -> bool {
    let names_it = |bytes: &[u8], at: usize| {
        let before = &bytes[..at];
        let whole = before.last().is_none_or(|&b| b == 0);
        bytes.get(at + SOURCE_FILE.len()) == Some(&0) && (whole || before.ends_with(b"/ssl/"))
    };
    file.scan(MAX_STRING.min(256), |chunk| {
        find_all(chunk.bytes, SOURCE_FILE).find(|&at| names_it(chunk.bytes, at))
    })
    .is_some()
}

/// `Ok(None)`: no BoringSSL ssl_lib.cc in this file. An error: it is there
/// but its functions could not be found with certainty (not probed).
pub fn find<'d, R: ReadRef<'d>>(data: R) -> Result<Option<BoringsslPoints>> {
    find_checked(data, true)
}

/// [`find`] in a file of either instruction set, whatever this machine is
/// (what tests read; a probe never goes on code of another one).
pub fn find_in<'d, R: ReadRef<'d>>(data: R) -> Result<Option<BoringsslPoints>> {
    find_checked(data, false)
}

fn find_checked<'d, R: ReadRef<'d>>(data: R, host_only: bool) -> Result<Option<BoringsslPoints>> {
    let Ok(elf) = ElfFile64::<Endianness, R>::parse(data) else { return Ok(None) };
    let files = source_file_strings(&elf, data);
    if files.is_empty() {
        return Ok(None);
    }
    let found = match instruction_set(&elf, host_only)? {
        Isa::X86_64 => find_functions::<X86_64, R>(&elf, data, &files),
        Isa::Aarch64 => find_functions::<Aarch64, R>(&elf, data, &files),
    };
    found.context("BoringSSL's ssl_lib.cc is linked in without symbols").map(Some)
}

fn find_functions<'d, M: Machine, R: ReadRef<'d>>(
    elf: &ElfFile64<'d, Endianness, R>,
    data: R,
    files: &HashSet<u64>,
) -> Result<BoringsslPoints> {
    let starts = function_starts(elf, data)?;
    let code = executable_segment(elf, data)?;
    let mut bodies: BTreeMap<u64, Body> = BTreeMap::new();
    for site in M::address_references(code.bytes, code.address, files) {
        let Some((start, end)) = containing(&starts, site) else { continue };
        if bodies.len() >= MAX_FUNCTIONS && !bodies.contains_key(&start) {
            bail!("more than {MAX_FUNCTIONS} functions refer to ssl_lib.cc");
        }
        bodies
            .entry(start)
            .or_insert_with(|| body::<M>(code.at(start, end.min(start + MAX_FUNCTION)), start, files));
    }
    let points = identify::<M>(&bodies, &code, &starts)?;
    let segments = load_segments(elf)?;
    let function = |start: u64| -> Result<Function> {
        let (start, end) = containing(&starts, start).context("a function outside .eh_frame_hdr")?;
        let file_offset = file_offset_of(&segments, start).context("a function outside the file")?;
        Ok(Function { address: start, size: end - start, file_offset })
    };
    Ok(BoringsslPoints {
        write: function(points.write)?,
        read: function(points.read)?,
        do_handshake: function(points.do_handshake)?,
    })
}

/// Addresses of the functions found, as linked.
struct Found {
    write: u64,
    read: u64,
    do_handshake: u64,
}

/// The functions named by their reason codes, each checked by its calls.
fn identify<M: Machine>(bodies: &BTreeMap<u64, Body>, code: &Text, starts: &[u64]) -> Result<Found> {
    let callees: HashSet<u64> = bodies.values().flat_map(|b| b.reports.iter().map(|r| r.callee)).collect();
    if callees.len() != 1 {
        bail!("its error reports call {} different functions, not one ERR_put_error", callees.len());
    }
    let do_handshake = only(bodies, "SSL_do_handshake", |b| b.reports(CONNECTION_TYPE_NOT_SET))?;
    let write = only(bodies, "SSL_write", |b| {
        b.reports(BAD_LENGTH) && b.reports(SHOULD_NOT_HAVE_BEEN_CALLED) && b.reports(UNINITIALIZED)
    })?;
    if !bodies[&write].calls(do_handshake) {
        bail!(
            "the SSL_write found at {write:#x} does not call the SSL_do_handshake found at {do_handshake:#x}"
        );
    }
    let read_impl = |at: u64, b: &Body| {
        at != write && b.reports(UNINITIALIZED) && b.reports(HANDSHAKE_FAILURE) && b.calls(do_handshake)
    };
    let impls: Vec<u64> = bodies.iter().filter(|(at, b)| read_impl(**at, b)).map(|(at, _)| *at).collect();
    let peek = only(bodies, "SSL_peek/SSL_read", |b| {
        b.reports(SHOULD_NOT_HAVE_BEEN_CALLED) && impls.iter().any(|&i| b.calls(i))
    })
    .or_else(|_| {
        only_where(bodies, "SSL_read with ssl_read_impl inlined", |at, b| {
            read_impl(at, b) && b.reports(SHOULD_NOT_HAVE_BEEN_CALLED)
        })
    })?;
    let read = read_wrapper::<M>(code, starts, peek)?.unwrap_or(peek);
    Ok(Found { write, read, do_handshake })
}

/// The one function `wanted` holds for, or an error naming `what`.
fn only(bodies: &BTreeMap<u64, Body>, what: &str, wanted: impl Fn(&Body) -> bool) -> Result<u64> {
    only_where(bodies, what, |_, b| wanted(b))
}

fn only_where(bodies: &BTreeMap<u64, Body>, what: &str, wanted: impl Fn(u64, &Body) -> bool) -> Result<u64> {
    let found: Vec<u64> = bodies.iter().filter(|(at, b)| wanted(**at, b)).map(|(at, _)| *at).collect();
    match found[..] {
        [one] => Ok(one),
        [] => bail!("no function has the error reports of {what}"),
        _ => bail!("{} functions have the error reports of {what} ({found:#x?})", found.len()),
    }
}

/// `SSL_read` when `SSL_peek` is a function of its own: the one function
/// whose first call is to it, with its own arguments. None: no such
/// function (SSL_peek is inlined into SSL_read, and `peek` is SSL_read).
fn read_wrapper<M: Machine>(code: &Text, starts: &[u64], peek: u64) -> Result<Option<u64>> {
    let own_arguments = [Value::Arg(0, 0), Value::Arg(1, 0), Value::Arg(2, 0)];
    let mut wrappers = Vec::new();
    for site in M::direct_calls_to(code.bytes, code.address, peek).into_iter().take(MAX_FUNCTIONS) {
        let Some((start, end)) = containing(starts, site) else { continue };
        if wrappers.contains(&start) {
            continue;
        }
        let first_call = trace::<M>(code.at(start, end.min(start + MAX_FUNCTION)), start)
            .into_iter()
            .filter_map(|event| match event {
                Event::Call { at, target, args, .. } => Some((at, target, args)),
                _ => None,
            })
            .min_by_key(|&(at, ..)| at);
        if first_call
            .is_some_and(|(_, target, args)| target == Target::Direct(peek) && args[..3] == own_arguments)
        {
            wrappers.push(start);
        }
    }
    match wrappers[..] {
        [] => Ok(None),
        [one] => Ok(Some(one)),
        _ => bail!("{} functions wrap SSL_peek like SSL_read ({wrappers:#x?})", wrappers.len()),
    }
}

/// Addresses of the NUL-terminated strings `ssl_lib.cc` and `.../ssl/ssl_lib.cc`
/// in the file's read-only data.
fn source_file_strings<'d, R: ReadRef<'d>>(elf: &ElfFile64<'d, Endianness, R>, data: R) -> HashSet<u64> {
    let mut found = HashSet::new();
    for s in strings_ending_with(elf, data, SOURCE_FILE) {
        if s.string == SOURCE_FILE || s.string.ends_with(SOURCE_PATH_SUFFIX) {
            found.insert(s.start);
        }
        // A merged string: `ssl_lib.cc` alone may point into the path.
        found.insert(s.tail);
    }
    found
}

/// Each path through a function is followed up to this many times where
/// paths join: error reports share their call to ERR_put_error, each
/// having loaded its own reason before jumping there (clang on aarch64).
const JOINS_FOLLOWED: u8 = 8;

/// The error reports of ssl_lib.cc in one function's code, and its direct
/// calls, from a trace of every path through it: a report is a call with
/// `ERR_LIB_SSL` as its first argument and ssl_lib.cc's name as its fourth.
fn body<M: Machine>(code: &[u8], address: u64, files: &HashSet<u64>) -> Body {
    let mut body = Body::default();
    for event in trace_paths::<M>(code, address, JOINS_FOLLOWED) {
        let Event::Call { target: Target::Direct(callee), args, .. } = event else { continue };
        body.calls.insert(callee);
        let [Value::Const(ERR_LIB_SSL), _, reason, Value::Address(file)] = args else { continue };
        let reason = match reason {
            Value::Const(code) => Some(code & 0xffff_ffff),
            _ => None,
        };
        let report = Report { callee, reason };
        if files.contains(&file) && !body.reports.contains(&report) {
            body.reports.push(report);
        }
    }
    body
}

/// Where BoringSSL's secrets are read: the entry of its internal
/// `ssl_log_secret(ssl, label, Span secret)` and the client random's place,
/// `*(ssl + s3_offset) + random_offset` (ssl->s3->client_random).
///
/// Why there (checked in BoringSSL's ssl/ssl_lib.cc, `boring` 4.22): every
/// secret of TLS 1.2 (CLIENT_RANDOM) and 1.3 (the handshake and traffic
/// secrets, EXPORTER_SECRET) goes through it, and it receives label and
/// secret at entry whether or not a key log callback is set (it returns at
/// once when none is). The exported `SSL_get_client_random`, which would
/// give the client random's offset, is left out of executables that do not
/// call it (the `boring` crate's programs): `ssl_log_secret`'s own code
/// reads the same field to print it, which is where the offsets come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoringsslKeylogPoints {
    pub log_secret: Function,
    pub s3_offset: u32,
    pub random_offset: u32,
}

/// The labels `ssl_log_secret` is called with: each call site loads one
/// (`lea rsi,[rip+label]`) right before the call, an anchor no build removes.
const LABELS: [&[u8]; 5] = [
    b"CLIENT_RANDOM",
    b"CLIENT_HANDSHAKE_TRAFFIC_SECRET",
    b"SERVER_HANDSHAKE_TRAFFIC_SECRET",
    b"CLIENT_TRAFFIC_SECRET_0",
    b"SERVER_TRAFFIC_SECRET_0",
];
/// Offsets larger than this are not struct fields.
const MAX_FIELD_OFFSET: u64 = 0x1_0000;
const RANDOM_SIZE: u64 = 32;

pub fn find_keylog<'d, R: ReadRef<'d>>(data: R) -> Result<BoringsslKeylogPoints> {
    find_keylog_checked(data, true)
}

/// [`find_keylog`] in a file of either instruction set (what tests read).
pub fn find_keylog_in<'d, R: ReadRef<'d>>(data: R) -> Result<BoringsslKeylogPoints> {
    find_keylog_checked(data, false)
}

fn find_keylog_checked<'d, R: ReadRef<'d>>(data: R, host_only: bool) -> Result<BoringsslKeylogPoints> {
    let elf = ElfFile64::<Endianness, R>::parse(data).context("not a 64-bit ELF file")?;
    match instruction_set(&elf, host_only)? {
        Isa::X86_64 => find_keylog_for::<X86_64, R>(&elf, data, client_random_place),
        Isa::Aarch64 => find_keylog_for::<Aarch64, R>(&elf, data, client_random_place_aarch64),
    }
}

/// Reads `ssl_log_secret`'s code (bytes, address) for the client random's
/// `(s3_offset, random_offset)`: one per instruction set.
type ClientRandomReader = fn(&[u8], u64) -> Result<(u32, u32)>;

fn find_keylog_for<'d, M: Machine, R: ReadRef<'d>>(
    elf: &ElfFile64<'d, Endianness, R>,
    data: R,
    client_random_place: ClientRandomReader,
) -> Result<BoringsslKeylogPoints> {
    let code = executable_segment(elf, data)?;
    let starts = function_starts(elf, data)?;
    let mut callees = HashSet::new();
    for label in LABELS {
        let strings = c_strings(elf, data, label);
        let found = callees_given::<M>(&code, &starts, &strings);
        if found.is_empty() {
            bail!("no call passes the label {} (BoringSSL's ssl_log_secret)", String::from_utf8_lossy(label));
        }
        callees.extend(found);
    }
    let log_secret = match callees.iter().collect::<Vec<_>>()[..] {
        [one] => *one,
        _ => bail!("the key log labels are passed to {} functions, not one ssl_log_secret", callees.len()),
    };
    let (start, end) =
        containing(&starts, log_secret).filter(|(s, _)| *s == log_secret).with_context(|| {
            format!("ssl_log_secret at {log_secret:#x} is not a function start in .eh_frame_hdr")
        })?;
    let (s3_offset, random_offset) =
        client_random_place(code.at(start, end.min(start + MAX_FUNCTION)), start)?;
    let file_offset =
        file_offset_of(&load_segments(elf)?, start).context("ssl_log_secret outside the file")?;
    Ok(BoringsslKeylogPoints {
        log_secret: Function { address: start, size: end - start, file_offset },
        s3_offset,
        random_offset,
    })
}

/// The functions directly called with one of `strings` as their second
/// argument, from a trace of each function that forms such an address.
fn callees_given<M: Machine>(code: &Text, starts: &[u64], strings: &HashSet<u64>) -> HashSet<u64> {
    let mut callers: Vec<(u64, u64)> = M::address_references(code.bytes, code.address, strings)
        .into_iter()
        .filter_map(|at| containing(starts, at))
        .collect();
    callers.sort_unstable();
    callers.dedup();
    callers
        .into_iter()
        .take(MAX_FUNCTIONS)
        .flat_map(|(start, end)| trace::<M>(code.at(start, end.min(start + MAX_FUNCTION)), start))
        .filter_map(|event| match event {
            Event::Call { target: Target::Direct(callee), args: [_, Value::Address(label), ..], .. }
                if strings.contains(&label) =>
            {
                Some(callee)
            }
            _ => None,
        })
        .collect()
}

/// In `ssl_log_secret`'s code, the hex encoding of `ssl->s3->client_random`:
/// a load `s3 = [ssl + A]` (ssl: the first argument, or a register it was
/// copied to) and the span's two ends `lea [s3 + B]`, `lea [s3 + B + 32]`
/// (or `add s3, B + 32`). (A, B), when exactly one such pair is there.
fn client_random_place(code: &[u8], address: u64) -> Result<(u32, u32)> {
    let mut decoder = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
    let mut factory = InstructionInfoFactory::new();
    let mut instr = Instruction::default();
    let mut ssl: HashSet<Register> = [Register::RDI].into();
    let mut loaded: BTreeMap<Register, u64> = BTreeMap::new();
    let mut spans: Vec<(u64, u64)> = Vec::new();
    while decoder.can_decode() {
        decoder.decode_out(&mut instr);
        if instr.is_invalid() {
            break;
        }
        if matches!(instr.flow_control(), FlowControl::Call | FlowControl::IndirectCall) {
            // The callee may change every register the ABI lets it.
            CALL_CLOBBERED.iter().for_each(|r| forget(&mut ssl, &mut loaded, *r));
            continue;
        }
        let dest = instr.op0_register().full_register();
        let base = instr.memory_base().full_register();
        let plain_memory = instr.memory_index() == Register::None && instr.op_count() == 2;
        let disp = instr.memory_displacement64();
        match instr.code() {
            // Code is read in address order, and an epilogue's `pop`s come
            // before blocks that branches reach with the registers as they
            // were: a pop changes nothing for what follows it in the file.
            Code::Pop_r64 => {}
            // `mov r64, r64` has two encodings (89 and 8b).
            Code::Mov_r64_rm64 | Code::Mov_rm64_r64
                if instr.op0_kind() == iced_x86::OpKind::Register
                    && instr.op1_kind() == iced_x86::OpKind::Register =>
            {
                let from_ssl = ssl.contains(&instr.op1_register());
                forget(&mut ssl, &mut loaded, dest);
                if from_ssl {
                    ssl.insert(dest);
                }
            }
            Code::Mov_r64_rm64 if plain_memory && ssl.contains(&base) && disp < MAX_FIELD_OFFSET => {
                forget(&mut ssl, &mut loaded, dest);
                loaded.insert(dest, disp);
            }
            Code::Lea_r64_m if plain_memory && loaded.contains_key(&base) && disp < MAX_FIELD_OFFSET => {
                spans.push((loaded[&base], disp));
                forget(&mut ssl, &mut loaded, dest);
            }
            // `add s3, imm` is `lea s3, [s3 + imm]`: how clang formed the
            // span's end in place in Android 13's BoringSSL (Debian's
            // android-libboringssl), where the `boring` crate's has a `lea`.
            Code::Add_rm64_imm8 | Code::Add_rm64_imm32
                if instr.op0_kind() == iced_x86::OpKind::Register && loaded.contains_key(&dest) =>
            {
                // Sign-extended: a negative one is far above any field.
                let imm = instr.immediate(1);
                if imm < MAX_FIELD_OFFSET {
                    spans.push((loaded[&dest], imm));
                }
                forget(&mut ssl, &mut loaded, dest);
            }
            _ => {
                for used in factory.info(&instr).used_registers() {
                    use iced_x86::OpAccess::{CondWrite, ReadCondWrite, ReadWrite, Write};
                    if matches!(used.access(), Write | CondWrite | ReadWrite | ReadCondWrite) {
                        forget(&mut ssl, &mut loaded, used.register().full_register());
                    }
                }
            }
        }
    }
    only_place(span_pairs(&spans))
}

/// [`client_random_place`] on aarch64: `s3 = ldr xN, [ssl, #A]` (ssl: x0,
/// or a register it was moved to), then either the span's two ends
/// `add xD, s3, #B` and `add xE, s3, #B+32` (GCC's build of the `boring`
/// crate), or its start `add xS, s3, #B` read byte by byte,
/// `ldrb wT, [xS, xI]`, in a loop bounded by `cmp xI, #32` (clang's, in
/// Android 13's libssl). (A, B), when exactly one such place is there.
fn client_random_place_aarch64(code: &[u8], address: u64) -> Result<(u32, u32)> {
    let mut regs = SslRegisters::default();
    regs.ssl.insert(0);
    let mut spans: Vec<(u64, u64)> = Vec::new();
    let mut indexed_reads: Vec<((u64, u64), u16)> = Vec::new();
    let mut compared_to_32: HashSet<u16> = HashSet::new();
    for (_, instr) in super::aarch64::instructions(code, address) {
        let op = instr.operands;
        match instr.opcode {
            Opcode::BL | Opcode::BLR => {
                // The callee may change x0-x18 and the link register.
                (0..=18).chain([30]).for_each(|reg| regs.forget(reg));
            }
            // `mov xd, xn` is `orr xd, xzr, xn`.
            Opcode::ORR if op[1] == Operand::Register(SizeCode::X, 31) => {
                let from_ssl = matches!(op[2], Operand::RegShift(ShiftStyle::LSL, 0, SizeCode::X, n) if regs.ssl.contains(&n));
                regs.forget_written(&instr);
                if let (true, Some(dest)) = (from_ssl, x_register(op[0])) {
                    regs.ssl.insert(dest);
                }
            }
            // Code is read in address order, and an epilogue's restores
            // come before blocks that branches reach with the registers as
            // they were (as `pop` on x86): a load from the stack into a
            // callee-saved register changes nothing for what follows.
            Opcode::LDP | Opcode::LDR if restores_callee_saved(&op) => {}
            Opcode::LDR => {
                let field = match op[1] {
                    Operand::RegPreIndex(base, disp, false)
                        if regs.ssl.contains(&base) && (0..MAX_FIELD_OFFSET as i32).contains(&disp) =>
                    {
                        Some(disp as u64)
                    }
                    _ => None,
                };
                regs.forget_written(&instr);
                if let (Some(field), Some(dest)) = (field, x_register(op[0])) {
                    regs.loaded.insert(dest, field);
                }
            }
            Opcode::ADD => {
                let immediate = match op[2] {
                    Operand::Immediate(imm) => Some(u64::from(imm)),
                    Operand::ImmShift(imm, shift) if shift < 32 => Some(u64::from(imm) << shift),
                    _ => None,
                };
                let s3 = x_register(op[1]).and_then(|n| regs.loaded.get(&n).copied());
                let span = s3.zip(immediate.filter(|&imm| imm < MAX_FIELD_OFFSET));
                regs.forget_written(&instr);
                if let (Some(span), Some(dest)) = (span, x_register(op[0])) {
                    spans.push(span);
                    regs.starts.insert(dest, span);
                }
            }
            Opcode::LDRB => {
                if let Operand::RegRegOffset(base, index, SizeCode::X, _, 0) = op[1] {
                    if let Some(&span) = regs.starts.get(&base) {
                        indexed_reads.push((span, index));
                    }
                }
                regs.forget_written(&instr);
            }
            // `cmp xI, #32` is `subs xzr, xI, #32`: it writes no register.
            Opcode::SUBS if op[0] == Operand::Register(SizeCode::X, 31) => {
                if let (Some(index), Operand::Immediate(32)) = (x_register(op[1]), op[2]) {
                    compared_to_32.insert(index);
                }
            }
            _ => regs.forget_written(&instr),
        }
    }
    let mut places = span_pairs(&spans);
    places.extend(
        indexed_reads.iter().filter(|(_, index)| compared_to_32.contains(index)).map(|&(span, _)| span),
    );
    only_place(places)
}

fn x_register(operand: Operand) -> Option<u16> {
    match operand {
        Operand::Register(SizeCode::X, n) | Operand::RegisterOrSP(SizeCode::X, n) => Some(n),
        _ => None,
    }
}

/// What [`client_random_place_aarch64`] knows of each register: holds
/// `ssl`; holds `*(ssl + A)`; holds `*(ssl + A) + B`.
#[derive(Default)]
struct SslRegisters {
    ssl: HashSet<u16>,
    loaded: BTreeMap<u16, u64>,
    starts: BTreeMap<u16, (u64, u64)>,
}

impl SslRegisters {
    fn forget(&mut self, reg: u16) {
        self.ssl.remove(&reg);
        self.loaded.remove(&reg);
        self.starts.remove(&reg);
    }

    /// Forgets what the registers `instr` writes held: its destination
    /// (the first operand, but for stores and branches, which write none)
    /// and a base it moves (pre- or post-index writeback).
    fn forget_written(&mut self, instr: &yaxpeax_arm::armv8::a64::Instruction) {
        let writes_none = matches!(
            instr.opcode,
            Opcode::STR
                | Opcode::STRB
                | Opcode::STRH
                | Opcode::STUR
                | Opcode::STURB
                | Opcode::STURH
                | Opcode::STP
                | Opcode::Bcc(_)
                | Opcode::CBZ
                | Opcode::CBNZ
                | Opcode::TBZ
                | Opcode::TBNZ
                | Opcode::B
        );
        for (i, operand) in instr.operands.iter().enumerate() {
            match *operand {
                Operand::Register(_, n) | Operand::RegisterOrSP(_, n) if i == 0 && !writes_none => {
                    self.forget(n)
                }
                // ldp: two destinations.
                Operand::Register(_, n) if i == 1 && instr.opcode == Opcode::LDP => self.forget(n),
                Operand::RegPreIndex(n, _, true)
                | Operand::RegPostIndex(n, _)
                | Operand::RegPostIndexReg(n, _) => self.forget(n),
                _ => {}
            }
        }
    }
}

/// `ldr`/`ldp` of callee-saved registers (x19-x30) from the stack.
fn restores_callee_saved(operands: &[Operand; 4]) -> bool {
    let saved = |o: &Operand| matches!(o, Operand::Register(SizeCode::X, 19..=30));
    let from_stack = |o: &Operand| matches!(o, Operand::RegPreIndex(31, ..) | Operand::RegPostIndex(31, _));
    match operands {
        [a, b, c, _] if saved(a) && saved(b) && from_stack(c) => true,
        [a, b, ..] => saved(a) && from_stack(b),
    }
}

/// The `(A, B)` whose span `[s3 + B, s3 + B + 32)` a function forms both
/// ends of, among the `(A, offset)` addresses it forms (`s3 = [ssl + A]`).
fn span_pairs(spans: &[(u64, u64)]) -> HashSet<(u64, u64)> {
    spans.iter().filter(|&&(a, b)| spans.contains(&(a, b + RANDOM_SIZE))).copied().collect()
}

/// The one place the client random is read from, or an error.
fn only_place(places: HashSet<(u64, u64)>) -> Result<(u32, u32)> {
    match places.into_iter().collect::<Vec<_>>()[..] {
        [(a, b)] => Ok((a as u32, b as u32)),
        ref all => bail!(
            "ssl_log_secret reads the client random {} ways, not one: its place is not known",
            all.len()
        ),
    }
}

/// The System V caller-saved registers.
const CALL_CLOBBERED: [Register; 9] = [
    Register::RAX,
    Register::RCX,
    Register::RDX,
    Register::RSI,
    Register::RDI,
    Register::R8,
    Register::R9,
    Register::R10,
    Register::R11,
];

fn forget(ssl: &mut HashSet<Register>, loaded: &mut BTreeMap<Register, u64>, reg: Register) {
    ssl.remove(&reg);
    loaded.remove(&reg);
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOV_R15_RDI: [u8; 3] = [0x49, 0x89, 0xff];
    /// mov rbp, [r15 + 0x30]: s3 = ssl->s3.
    const LOAD_S3: [u8; 4] = [0x49, 0x8b, 0x6f, 0x30];
    /// lea rax, [rbp + 0x30]: the span's start.
    const LEA_START: [u8; 4] = [0x48, 0x8d, 0x45, 0x30];
    const RET: u8 = 0xc3;

    fn place(parts: &[&[u8]]) -> Result<(u32, u32)> {
        let mut code = parts.concat();
        code.push(RET);
        client_random_place(&code, 0x1000)
    }

    /// The span's end as a `lea` (the `boring` crate's BoringSSL) or as an
    /// `add` to the s3 register itself (Android 13's): the same place.
    #[test]
    fn the_client_random_span_ends_by_lea_or_add() {
        let lea_end = [0x48, 0x8d, 0x4d, 0x50]; // lea rcx, [rbp + 0x50]
        let add_end = [0x48, 0x83, 0xc5, 0x50]; // add rbp, 0x50
        assert_eq!(place(&[&MOV_R15_RDI, &LOAD_S3, &LEA_START, &lea_end]).unwrap(), (0x30, 0x30));
        assert_eq!(place(&[&MOV_R15_RDI, &LOAD_S3, &LEA_START, &add_end]).unwrap(), (0x30, 0x30));
    }

    fn words(ws: &[u32]) -> Vec<u8> {
        ws.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    const MOV_X20_X0: u32 = 0xaa0003f4;
    const BL_AHEAD: u32 = 0x94000040; // bl +0x100
    const RET_A64: u32 = 0xd65f03c0;

    /// GCC's aarch64 build of the `boring` crate (its instructions): s3
    /// loaded through the copy of ssl in x20, after the epilogue's restore
    /// of x20 laid out before it, and the span's two ends.
    #[test]
    fn the_client_random_span_on_aarch64_as_gcc_builds_it() {
        let ldp_x19_x20 = 0xa94153f3; // ldp x19, x20, [sp, #16]
        let load_s3 = 0xf9401a99; // ldr x25, [x20, #48]
        let start = 0x9100c321; // add x1, x25, #0x30
        let end = 0x91014326; // add x6, x25, #0x50
        let code = [MOV_X20_X0, BL_AHEAD, ldp_x19_x20, load_s3, start, end, RET_A64];
        assert_eq!(client_random_place_aarch64(&words(&code), 0x1000).unwrap(), (0x30, 0x30));
        let end_64_on = 0x91018326; // add x6, x25, #0x60
        let code = [MOV_X20_X0, BL_AHEAD, load_s3, start, end_64_on, RET_A64];
        assert!(client_random_place_aarch64(&words(&code), 0x1000).is_err());
        let without_ssl = [BL_AHEAD, load_s3, start, end, RET_A64];
        assert!(client_random_place_aarch64(&words(&without_ssl), 0x1000).is_err(), "x20 is not ssl");
    }

    /// Clang's in Android 13's arm64 libssl (its instructions): the span's
    /// start read byte by byte with an index compared with 32.
    #[test]
    fn the_client_random_read_in_a_loop_on_aarch64_as_clang_builds_it() {
        let code = |bound: u32| {
            words(&[
                0xaa0003f3, // mov x19, x0
                0xf9401a77, // ldr x23, [x19, #48]
                BL_AHEAD, 0x9100c2e9, // add x9, x23, #0x30
                0xaa1f03e8, // mov x8, xzr
                0x3868692a, // ldrb w10, [x9, x8]
                0x91000508, // add x8, x8, #0x1
                bound,      // cmp x8, #...
                0x54ffffa1, // b.ne -0xc
                RET_A64,
            ])
        };
        assert_eq!(client_random_place_aarch64(&code(0xf100811f), 0x1000).unwrap(), (0x30, 0x30));
        // cmp x8, #0x10: not the client random's 32 bytes.
        assert!(client_random_place_aarch64(&code(0xf100411f), 0x1000).is_err());
        let all = code(0xf100811f);
        for cut in (0..all.len()).step_by(4) {
            let _ = client_random_place_aarch64(&all[..cut], 0x1000);
        }
    }

    /// An end that is not 32 bytes on, an `add` to a register that holds
    /// no s3, or a negative `add`: no place, an error.
    #[test]
    fn other_spans_give_no_place() {
        let add_40 = [0x48, 0x83, 0xc5, 0x40]; // add rbp, 0x40
        let add_rsi = [0x48, 0x83, 0xc6, 0x50]; // add rsi, 0x50
        let add_minus = [0x48, 0x83, 0xc5, 0xf0]; // add rbp, -0x10
        for end in [&add_40, &add_rsi, &add_minus] {
            assert!(place(&[&MOV_R15_RDI, &LOAD_S3, &LEA_START, end]).is_err(), "{end:x?}");
        }
        assert!(place(&[&LOAD_S3, &LEA_START, &[0x48, 0x83, 0xc5, 0x50]]).is_err(), "r15 is not ssl");
    }
}
