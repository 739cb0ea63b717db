//! BoringSSL linked into an executable without a symbol table (x86-64):
//! `SSL_write`, `SSL_read` and `SSL_do_handshake` found from the code.
//! Where it logs its secrets (`find_keylog`) is found from the code too,
//! in executables and in BoringSSL's shared libssl (which exports its
//! plaintext functions, but not that one).
//!
//! The anchor BoringSSL cannot remove: every error it reports is a call
//! `ERR_put_error(ERR_LIB_SSL, 0, reason, __FILE__, __LINE__)`
//! (`OPENSSL_PUT_ERROR`), so the code of `ssl/ssl_lib.cc` loads the address
//! of the string `.../ssl/ssl_lib.cc` (RIP-relative `lea`) next to the
//! constants 16 (ERR_LIB_SSL) and a reason code before a direct call.
//! Reason codes are part of BoringSSL's API and never renumbered; line
//! numbers change with every version and are not used. In ssl_lib.cc
//! (checked in BoringSSL's source as the `boring` crate 4.22 vendors it):
//! - `SSL_do_handshake` is the only function reporting
//!   SSL_R_CONNECTION_TYPE_NOT_SET;
//! - `SSL_write` the only one reporting SSL_R_BAD_LENGTH, beside
//!   ERR_R_SHOULD_NOT_HAVE_BEEN_CALLED (QUIC) and SSL_R_UNINITIALIZED;
//! - `SSL_peek` reports ERR_R_SHOULD_NOT_HAVE_BEEN_CALLED and calls the
//!   static `ssl_read_impl` (SSL_R_UNINITIALIZED, SSL_R_SSL_HANDSHAKE_FAILURE);
//!   `SSL_read` is `SSL_peek` plus consuming what it returned: the compiler
//!   inlines SSL_peek into it (measured: clang, `boring` 4.22), or SSL_read
//!   calls it first with its own arguments.
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
use object::elf::{PF_X, PT_GNU_EH_FRAME, PT_LOAD};
use object::read::elf::{ElfFile64, ProgramHeader};
use object::{Architecture, Endianness, Object, ReadRef};

use super::calls;
use super::elf::{file_offset_of, load_segments, Function};
use super::pinned::PinnedFile;

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
/// Longest file path looked back over from `ssl_lib.cc`.
const MAX_PATH: usize = 4096;
/// Bytes of one segment read (code or read-only data).
const MAX_SEGMENT: u64 = 256 << 20;
/// Functions referring to ssl_lib.cc that are disassembled (ssl_lib.cc has
/// a few hundred).
const MAX_FUNCTIONS: usize = 4096;
/// Bytes of one function disassembled.
const MAX_FUNCTION: u64 = 16 * 1024;

/// Where BoringSSL's plaintext functions are in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoringsslPoints {
    pub write: Function,
    pub read: Function,
    pub do_handshake: Function,
}

/// One `OPENSSL_PUT_ERROR(SSL, reason)` of ssl_lib.cc.
#[derive(Debug, Clone, Copy)]
struct Report {
    callee: u64,
    reason: Option<u64>,
}

/// A function whose code refers to ssl_lib.cc: its reports and direct calls.
#[derive(Debug, Default)]
struct Body {
    reports: Vec<Report>,
    calls: Vec<calls::DirectCall>,
}

impl Body {
    fn reports(&self, reason: u64) -> bool {
        self.reports.iter().any(|r| r.reason == Some(reason))
    }

    fn calls(&self, target: u64) -> bool {
        self.calls.iter().any(|c| c.target == target)
    }
}

/// A file's code: its executable segment.
struct Text<'d> {
    address: u64,
    bytes: &'d [u8],
}

impl Text<'_> {
    fn at(&self, start: u64, end: u64) -> &[u8] {
        let from = start.saturating_sub(self.address).min(self.bytes.len() as u64) as usize;
        let to = end.saturating_sub(self.address).min(self.bytes.len() as u64) as usize;
        &self.bytes[from..to.max(from)]
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
    file.scan(MAX_PATH.min(256), |chunk| {
        find_all(chunk.bytes, SOURCE_FILE).find(|&at| names_it(chunk.bytes, at))
    })
    .is_some()
}

/// `Ok(None)`: no BoringSSL ssl_lib.cc in this file. An error: it is there
/// but its functions could not be found with certainty (not probed).
pub fn find<'d, R: ReadRef<'d>>(data: R) -> Result<Option<BoringsslPoints>> {
    let Ok(elf) = ElfFile64::<Endianness, R>::parse(data) else { return Ok(None) };
    let files = source_file_strings(&elf, data);
    if files.is_empty() {
        return Ok(None);
    }
    if elf.architecture() != Architecture::X86_64 {
        bail!("BoringSSL's ssl_lib.cc is linked in, but its code is found on x86-64 only");
    }
    find_functions(&elf, data, &files)
        .context("BoringSSL's ssl_lib.cc is linked in without symbols")
        .map(Some)
}

fn find_functions<'d, R: ReadRef<'d>>(
    elf: &ElfFile64<'d, Endianness, R>,
    data: R,
    files: &HashSet<u64>,
) -> Result<BoringsslPoints> {
    let starts = function_starts(elf, data)?;
    let code = executable_segment(elf, data)?;
    let sites = rip_relative_loads(&code, files);
    let mut bodies: BTreeMap<u64, Body> = BTreeMap::new();
    for site in sites {
        let Some((start, end)) = containing(&starts, site) else { continue };
        if bodies.len() >= MAX_FUNCTIONS && !bodies.contains_key(&start) {
            bail!("more than {MAX_FUNCTIONS} functions refer to ssl_lib.cc");
        }
        bodies
            .entry(start)
            .or_insert_with(|| body(code.at(start, end.min(start + MAX_FUNCTION)), start, files));
    }
    let points = identify(&bodies, &code, &starts)?;
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
fn identify(bodies: &BTreeMap<u64, Body>, code: &Text, starts: &[u64]) -> Result<Found> {
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
    let read = read_wrapper(code, starts, peek)?.unwrap_or(peek);
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
fn read_wrapper(code: &Text, starts: &[u64], peek: u64) -> Result<Option<u64>> {
    let mut wrappers = Vec::new();
    for site in direct_calls_to(code, peek) {
        let Some((start, end)) = containing(starts, site) else { continue };
        let first =
            calls::direct_calls(code.at(start, end.min(start + MAX_FUNCTION)), start).into_iter().next();
        if first.is_some_and(|c| c.target == peek && c.passes_arguments) && !wrappers.contains(&start) {
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
    for (address, bytes) in segments(elf, data, false) {
        for end in find_all(bytes, SOURCE_FILE).map(|at| at + SOURCE_FILE.len()) {
            if bytes.get(end) != Some(&0) {
                continue;
            }
            let floor = end.saturating_sub(MAX_PATH);
            let start = bytes[floor..end].iter().rposition(|&b| b == 0).map_or(floor, |nul| floor + nul + 1);
            let string = &bytes[start..end];
            if string == SOURCE_FILE || string.ends_with(SOURCE_PATH_SUFFIX) {
                found.insert(address + start as u64);
            }
            // A merged string: `ssl_lib.cc` alone may point into the path.
            found.insert(address + (end - SOURCE_FILE.len()) as u64);
        }
    }
    found
}

/// Where `needle` starts in `hay`.
fn find_all<'a>(hay: &'a [u8], needle: &'a [u8]) -> impl Iterator<Item = usize> + 'a {
    let first = needle[0];
    (0..hay.len().saturating_sub(needle.len() - 1))
        .filter(move |&i| hay[i] == first && hay[i..].starts_with(needle))
}

/// (address, bytes) of each PT_LOAD segment that is (or is not) executable,
/// within [`MAX_SEGMENT`].
fn segments<'d, R: ReadRef<'d>>(
    elf: &ElfFile64<'d, Endianness, R>,
    data: R,
    executable: bool,
) -> Vec<(u64, &'d [u8])> {
    let endian = elf.endian();
    elf.elf_program_headers()
        .iter()
        .filter(|ph| ph.p_type(endian) == PT_LOAD && (ph.p_flags(endian) & PF_X != 0) == executable)
        .filter_map(|ph| {
            let size = ph.p_filesz(endian).min(MAX_SEGMENT);
            Some((ph.p_vaddr(endian), data.read_bytes_at(ph.p_offset(endian), size).ok()?))
        })
        .collect()
}

/// The one executable segment (what linkers make); more is refused rather
/// than guessed through.
fn executable_segment<'d, R: ReadRef<'d>>(elf: &ElfFile64<'d, Endianness, R>, data: R) -> Result<Text<'d>> {
    match segments(elf, data, true)[..] {
        [(address, bytes)] => Ok(Text { address, bytes }),
        ref all => bail!("{} executable segments, not one", all.len()),
    }
}

/// Every `lea r64,[rip+X]` in the code with X one of `targets`: the
/// instruction's address.
fn rip_relative_loads(code: &Text, targets: &HashSet<u64>) -> Vec<u64> {
    let b = code.bytes;
    (0..b.len().saturating_sub(6))
        .filter(|&i| matches!(b[i], 0x48 | 0x4c) && b[i + 1] == 0x8d && b[i + 2] & 0xc7 == 0x05)
        .filter_map(|i| {
            let disp = i32::from_le_bytes(b[i + 3..i + 7].try_into().ok()?);
            let next = code.address.wrapping_add(i as u64 + 7);
            targets.contains(&next.wrapping_add(disp as i64 as u64)).then(|| code.address + i as u64)
        })
        .collect()
}

/// Every `call rel32` to `target` in the code: the instruction's address.
/// Byte patterns, so some may be inside other instructions: each is
/// decoded again as part of its function before it counts.
fn direct_calls_to(code: &Text, target: u64) -> Vec<u64> {
    let b = code.bytes;
    (0..b.len().saturating_sub(4))
        .filter(|&i| b[i] == 0xe8)
        .filter_map(|i| {
            let rel = i32::from_le_bytes(b[i + 1..i + 5].try_into().ok()?);
            let next = code.address.wrapping_add(i as u64 + 5);
            (next.wrapping_add(rel as i64 as u64) == target).then(|| code.address + i as u64)
        })
        .take(MAX_FUNCTIONS)
        .collect()
}

/// The function around `address`: [start, end) between two entries of
/// the sorted `starts`.
pub(crate) fn containing(starts: &[u64], address: u64) -> Option<(u64, u64)> {
    let next = starts.partition_point(|&s| s <= address);
    let start = *starts.get(next.checked_sub(1)?)?;
    let end = starts.get(next).copied().unwrap_or(start.saturating_add(MAX_FUNCTION));
    Some((start, end))
}

/// The error reports of ssl_lib.cc in one function's code, and its calls:
/// straight-line code only (constants are forgotten at every branch,
/// call, and write to their register).
fn body(code: &[u8], address: u64, files: &HashSet<u64>) -> Body {
    let mut decoder = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
    let mut factory = InstructionInfoFactory::new();
    let mut instr = Instruction::default();
    let mut regs = Registers::default();
    let mut reports = Vec::new();
    while decoder.can_decode() {
        decoder.decode_out(&mut instr);
        if instr.is_invalid() {
            break;
        }
        if instr.code() == Code::Call_rel32_64 {
            let from_ssl_lib = regs.get(Register::RCX).is_some_and(|f| files.contains(&f));
            if from_ssl_lib && regs.get(Register::RDI) == Some(ERR_LIB_SSL) {
                reports.push(Report { callee: instr.near_branch_target(), reason: regs.get(Register::RDX) });
            }
            regs = Registers::default();
            continue;
        }
        if instr.flow_control() != FlowControl::Next {
            regs = Registers::default();
            continue;
        }
        regs.step(&instr, &mut factory);
    }
    Body { reports, calls: calls::direct_calls(code, address) }
}

/// The constants known in rdi, rdx and rcx.
#[derive(Default)]
struct Registers {
    known: [Option<u64>; 3],
}

impl Registers {
    const TRACKED: [Register; 3] = [Register::RDI, Register::RDX, Register::RCX];

    fn get(&self, reg: Register) -> Option<u64> {
        Self::TRACKED.iter().position(|r| *r == reg).and_then(|i| self.known[i])
    }

    fn set(&mut self, reg: Register, value: Option<u64>) {
        if let Some(i) = Self::TRACKED.iter().position(|r| *r == reg) {
            self.known[i] = value;
        }
    }

    /// `mov r32, imm32`, `xor r32, r32` and `lea r64, [rip+X]` set a
    /// constant; any other write to a tracked register forgets it.
    fn step(&mut self, instr: &Instruction, factory: &mut InstructionInfoFactory) {
        let dest = instr.op0_register().full_register();
        match instr.code() {
            Code::Mov_r32_imm32 | Code::Mov_rm32_imm32 | Code::Mov_rm64_imm32
                if instr.op0_kind() == iced_x86::OpKind::Register =>
            {
                return self.set(dest, Some(instr.immediate(1) & 0xffff_ffff));
            }
            Code::Xor_r32_rm32 | Code::Xor_rm32_r32 if instr.op0_register() == instr.op1_register() => {
                return self.set(dest, Some(0));
            }
            Code::Lea_r64_m if instr.is_ip_rel_memory_operand() => {
                return self.set(dest, Some(instr.ip_rel_memory_address()));
            }
            _ => {}
        }
        for used in factory.info(instr).used_registers() {
            use iced_x86::OpAccess::{CondWrite, ReadCondWrite, ReadWrite, Write};
            if matches!(used.access(), Write | CondWrite | ReadWrite | ReadCondWrite) {
                self.set(used.register().full_register(), None);
            }
        }
    }
}

/// Function start addresses, sorted, from `.eh_frame_hdr`'s search table
/// (`PT_GNU_EH_FRAME`). The encodings every x86-64 linker writes (a
/// 4-byte count, `datarel|sdata4` entries) are read; others are refused.
pub(crate) fn function_starts<'d, R: ReadRef<'d>>(
    elf: &ElfFile64<'d, Endianness, R>,
    data: R,
) -> Result<Vec<u64>> {
    let endian = elf.endian();
    let header = elf
        .elf_program_headers()
        .iter()
        .find(|ph| ph.p_type(endian) == PT_GNU_EH_FRAME)
        .context("no .eh_frame_hdr (PT_GNU_EH_FRAME) to tell where functions start")?;
    let base = header.p_vaddr(endian);
    let bytes = data
        .read_bytes_at(header.p_offset(endian), header.p_filesz(endian).min(MAX_SEGMENT))
        .ok()
        .context("reading .eh_frame_hdr")?;
    parse_eh_frame_hdr(bytes, base)
}

/// DW_EH_PE_udata4, DW_EH_PE_sdata4, and datarel|sdata4.
const UDATA4: u8 = 0x03;
const SDATA4: u8 = 0x0b;
const DATAREL_SDATA4: u8 = 0x3b;

fn parse_eh_frame_hdr(bytes: &[u8], base: u64) -> Result<Vec<u64>> {
    let &[version, pointer_encoding, count_encoding, table_encoding, ..] = bytes else {
        bail!(".eh_frame_hdr is cut short");
    };
    let pointer_size = match pointer_encoding & 0x0f {
        0x03 | 0x0b => 4,
        0x04 | 0x0c => 8,
        _ => bail!(".eh_frame_hdr: eh_frame_ptr encoding {pointer_encoding:#x} not read"),
    };
    if version != 1 || !matches!(count_encoding, UDATA4 | SDATA4) || table_encoding != DATAREL_SDATA4 {
        bail!(".eh_frame_hdr version {version}, encodings {count_encoding:#x}/{table_encoding:#x} not read");
    }
    let word = |at: usize| bytes.get(at..at + 4).and_then(|w| w.try_into().ok()).map(i32::from_le_bytes);
    let count_at = 4 + pointer_size;
    let count = word(count_at).context(".eh_frame_hdr is cut short")? as u32 as usize;
    let table = count_at + 4;
    // Each entry is 8 bytes: a count beyond the bytes there is a lie.
    if count > bytes.len().saturating_sub(table) / 8 {
        bail!(".eh_frame_hdr claims {count} functions, more than it holds");
    }
    let mut starts: Vec<u64> = (0..count)
        .filter_map(|i| word(table + i * 8))
        .map(|rel| base.wrapping_add(rel as i64 as u64))
        .collect();
    starts.sort_unstable();
    starts.dedup();
    Ok(starts)
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
    let elf = ElfFile64::<Endianness, R>::parse(data).context("not a 64-bit ELF file")?;
    if elf.architecture() != Architecture::X86_64 {
        bail!("BoringSSL's key log function is found on x86-64 only");
    }
    let code = executable_segment(&elf, data)?;
    let mut callees = HashSet::new();
    for label in LABELS {
        let strings = label_strings(&elf, data, label);
        let found: HashSet<u64> = rip_relative_loads(&code, &strings)
            .into_iter()
            .filter_map(|site| call_after_label(&code, site))
            .collect();
        if found.is_empty() {
            bail!("no call passes the label {} (BoringSSL's ssl_log_secret)", String::from_utf8_lossy(label));
        }
        callees.extend(found);
    }
    let log_secret = match callees.iter().collect::<Vec<_>>()[..] {
        [one] => *one,
        _ => bail!("the key log labels are passed to {} functions, not one ssl_log_secret", callees.len()),
    };
    let starts = function_starts(&elf, data)?;
    let (start, end) =
        containing(&starts, log_secret).filter(|(s, _)| *s == log_secret).with_context(|| {
            format!("ssl_log_secret at {log_secret:#x} is not a function start in .eh_frame_hdr")
        })?;
    let (s3_offset, random_offset) =
        client_random_place(code.at(start, end.min(start + MAX_FUNCTION)), start)?;
    let file_offset =
        file_offset_of(&load_segments(&elf)?, start).context("ssl_log_secret outside the file")?;
    Ok(BoringsslKeylogPoints {
        log_secret: Function { address: start, size: end - start, file_offset },
        s3_offset,
        random_offset,
    })
}

/// Addresses of `label` as a NUL-terminated string in read-only data.
fn label_strings<'d, R: ReadRef<'d>>(
    elf: &ElfFile64<'d, Endianness, R>,
    data: R,
    label: &[u8],
) -> HashSet<u64> {
    let mut found = HashSet::new();
    for (address, bytes) in segments(elf, data, false) {
        for at in find_all(bytes, label) {
            if bytes.get(at + label.len()) == Some(&0) {
                found.insert(address + at as u64);
            }
        }
    }
    found
}

/// The callee of the first direct call after `lea rsi,[rip+label]` at
/// `site`, when straight-line code that leaves rsi alone leads to it.
fn call_after_label(code: &Text, site: u64) -> Option<u64> {
    const WINDOW: usize = 8;
    let bytes = code.at(site, site.saturating_add(WINDOW as u64 * 15));
    let mut decoder = Decoder::with_ip(64, bytes, site, DecoderOptions::NONE);
    let mut factory = InstructionInfoFactory::new();
    let first = decoder.decode();
    if first.code() != Code::Lea_r64_m || first.op0_register() != Register::RSI {
        return None;
    }
    for _ in 0..WINDOW {
        let instr = decoder.decode();
        if instr.is_invalid() {
            return None;
        }
        if instr.code() == Code::Call_rel32_64 {
            return Some(instr.near_branch_target());
        }
        if instr.flow_control() != FlowControl::Next || writes(&instr, &mut factory, Register::RSI) {
            return None;
        }
    }
    None
}

fn writes(instr: &Instruction, factory: &mut InstructionInfoFactory, reg: Register) -> bool {
    use iced_x86::OpAccess::{CondWrite, ReadCondWrite, ReadWrite, Write};
    factory.info(instr).used_registers().iter().any(|used| {
        matches!(used.access(), Write | CondWrite | ReadWrite | ReadCondWrite)
            && used.register().full_register() == reg
    })
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
    let pairs: HashSet<(u64, u64)> =
        spans.iter().filter(|&&(a, b)| spans.contains(&(a, b + RANDOM_SIZE))).copied().collect();
    match pairs.into_iter().collect::<Vec<_>>()[..] {
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
