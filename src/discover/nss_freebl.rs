//! NSS's freebl (`libfreeblpriv3.so`, x86-64 and aarch64): where its TLS
//! PRF and HMAC functions are, in a file that exports none of them.
//!
//! Softoken loads freebl at run time and calls it only through the table
//! `FREEBL_GetVector()` returns (`FREEBLVector`, lib/freebl/loader.h). The
//! table is an ABI between two separately shipped libraries: it begins
//! with `u16 length, u16 version`, and fields are only ever appended, each
//! at the offset the version that added it gave it. So:
//!
//! 1. `FREEBL_GetVector` (exported) returns the table's address: the one
//!    PC-relative address (`lea rax,[rip+X]`; `adrp`+`add`, then moved
//!    to x0) whose value reaches a `ret`.
//! 2. The header must say version 3.x, x at least the version that added
//!    the last field read, and a length covering it.
//! 3. Each field read is a pointer filled by an `R_X86_64_RELATIVE`
//!    (`R_AARCH64_RELATIVE`) relocation: its addend is the function, which
//!    must start a function (`.eh_frame_hdr`) in the executable segment.
//! 4. A second property, independent of the table: its functions' own
//!    code must call each other (`call rel32`, `bl`) as freebl's source
//!    says. `TLS_P_hash` computes HMACs (calls `HMAC_Create`, `HMAC_Begin`, `HMAC_Update`
//!    and `HMAC_Finish`), and `TLS_PRF` calls `TLS_P_hash` (or computes
//!    HMACs itself). A table read wrong, or a freebl laid out otherwise,
//!    fails here, and the file is refused, naming what did not agree.
//!
//! Every read is bounded: these bytes come from any file on the host.

use std::collections::HashMap;

use anyhow::{bail, ensure, Context, Result};
use object::elf::{PF_X, PT_LOAD, R_AARCH64_RELATIVE, R_X86_64_RELATIVE};
use object::read::elf::{ElfFile64, ProgramHeader};
use object::{Architecture, Endianness, Object, ReadRef, RelocationFlags};

use super::aarch64;
use super::calls::direct_calls;
use super::elf::{file_offset_of, load_segments, Function, Isa, Symbols};
use super::text::{containing, function_starts};
use super::trace::{trace, Aarch64, Event, Machine, Value, X86_64};

/// The exported function returning the table.
pub const GET_VECTOR: &str = "FREEBL_GetVector";

/// Offsets in `FREEBLVector` (LP64), fixed since the version named.
const TLS_PRF: u64 = 1096; // 3.008
const HMAC_CREATE: u64 = 1112; // 3.008
const HMAC_BEGIN: u64 = 1128; // 3.008
const HMAC_UPDATE: u64 = 1136; // 3.008
const HMAC_FINISH: u64 = 1152; // 3.008
const TLS_P_HASH: u64 = 1400; // 3.012
/// The version that added the last field read (`TLS_P_hash`).
const MIN_MINOR: u16 = 0x12;

/// `FREEBL_GetVector` is a few instructions; a longer one is not it.
const MAX_GET_VECTOR: u64 = 512;
/// Dynamic relocations looked at (freebl has about a thousand).
const MAX_RELOCATIONS: usize = 1 << 20;

/// Where freebl computes TLS 1.2 key blocks and every HMAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FreeblPoints {
    /// `TLS_P_hash(hash, secret, label, seed, out, isFIPS)`: TLS 1.2's PRF.
    pub tls_p_hash: Function,
    /// `TLS_PRF(secret, label, seed, out, isFIPS)`: TLS 1.0/1.1's PRF.
    pub tls_prf: Function,
    /// `HMAC_Finish(cx, result, &len, max)`.
    pub hmac_finish: Function,
    /// The table's version, as `0x0325` (3.037).
    pub version: u16,
}

/// The functions above in freebl's ELF bytes, or why they cannot be
/// trusted.
pub fn find<'d, R: ReadRef<'d>>(data: R) -> Result<FreeblPoints> {
    let elf = ElfFile64::<Endianness, R>::parse(data).context("not a 64-bit ELF file")?;
    let isa = match elf.architecture() {
        Architecture::X86_64 => Isa::X86_64,
        Architecture::Aarch64 => Isa::Aarch64,
        other => bail!("machine code for {other:?}, not x86-64 or aarch64"),
    };
    let segments = load_segments(&elf)?;
    let get_vector = Symbols::parse(data, &[GET_VECTOR])?
        .get(GET_VECTOR)
        .with_context(|| format!("no {GET_VECTOR} exported"))?;
    let vector = returned_address(data, get_vector, isa)?;
    let version = check_header(data, &segments, vector)?;
    let code = executable_code(&elf, data)?;
    let starts = function_starts(&elf, data)?;
    let fields = table_fields(&elf, vector, isa)?;
    let function = |offset: u64, name: &str| -> Result<u64> {
        let at = *fields.get(&offset).with_context(|| format!("no relocation fills the table's {name}"))?;
        ensure!(code.contains(at), "the table's {name} ({at:#x}) is not in the executable segment");
        ensure!(starts.binary_search(&at).is_ok(), "the table's {name} ({at:#x}) starts no function");
        Ok(at)
    };
    let p_hash = function(TLS_P_HASH, "TLS_P_hash")?;
    let prf = function(TLS_PRF, "TLS_PRF")?;
    let hmac = [
        function(HMAC_CREATE, "HMAC_Create")?,
        function(HMAC_BEGIN, "HMAC_Begin")?,
        function(HMAC_UPDATE, "HMAC_Update")?,
        function(HMAC_FINISH, "HMAC_Finish")?,
    ];
    let calls_of = |at: u64| -> Vec<u64> {
        let (start, end) = containing(&starts, at).unwrap_or((at, at));
        let code = code.at(start, end);
        match isa {
            Isa::X86_64 => direct_calls(code, start).into_iter().map(|c| c.target).collect(),
            Isa::Aarch64 => aarch64::instructions(code, start)
                .filter_map(|(at, i)| aarch64::call_target(at, &i))
                .collect(),
        }
    };
    let computes_hmac = |calls: &[u64]| hmac.iter().all(|h| calls.contains(h));
    ensure!(
        computes_hmac(&calls_of(p_hash)),
        "the table's TLS_P_hash ({p_hash:#x}) does not call the table's HMAC_Create, HMAC_Begin, HMAC_Update \
         and HMAC_Finish"
    );
    let prf_calls = calls_of(prf);
    ensure!(
        prf_calls.contains(&p_hash) || computes_hmac(&prf_calls),
        "the table's TLS_PRF ({prf:#x}) neither calls its TLS_P_hash nor computes HMACs"
    );
    let at = |address: u64| -> Result<Function> {
        let file_offset = file_offset_of(&segments, address).context("a function outside the file")?;
        Ok(Function { address, size: 0, file_offset })
    };
    Ok(FreeblPoints { tls_p_hash: at(p_hash)?, tls_prf: at(prf)?, hmac_finish: at(hmac[3])?, version })
}

/// The address `f` returns: a PC-relative address (`lea rax,[rip+X]`,
/// `adrp`+`add`, moved between registers or not) in the result register
/// at a `ret`, as the GnuTLS tracer follows the code. Exactly one. (Debian
/// 12's aarch64 build forms it in x1 and moves it to x0 where the `NULL`
/// path joins.)
fn returned_address<'d, R: ReadRef<'d>>(data: R, f: Function, isa: Isa) -> Result<u64> {
    let len = if f.size == 0 { MAX_GET_VECTOR } else { f.size.min(MAX_GET_VECTOR) };
    let code =
        data.read_bytes_at(f.file_offset, len).ok().with_context(|| format!("reading {GET_VECTOR}"))?;
    let mut returned = match isa {
        Isa::X86_64 => returned_addresses::<X86_64>(code, f.address),
        Isa::Aarch64 => returned_addresses::<Aarch64>(code, f.address),
    };
    returned.sort_unstable();
    returned.dedup();
    match returned[..] {
        [one] => Ok(one),
        [] => bail!("{GET_VECTOR} returns no address it loads"),
        _ => bail!("{GET_VECTOR} returns {} different addresses", returned.len()),
    }
}

/// Each PC-relative address the function at `address` returns.
fn returned_addresses<M: Machine>(code: &[u8], address: u64) -> Vec<u64> {
    (trace::<M>(code, address).into_iter())
        .filter_map(|event| match event {
            Event::Return { value: Value::Address(returned) } => Some(returned),
            _ => None,
        })
        .collect()
}

/// The table's `u16 length, u16 version`: version 3.x with x >= MIN_MINOR,
/// and a length that covers the fields read.
fn check_header<'d, R: ReadRef<'d>>(data: R, segments: &[(u64, u64, u64)], vector: u64) -> Result<u16> {
    let at = file_offset_of(segments, vector)
        .with_context(|| format!("the table ({vector:#x}) is outside the file"))?;
    let header = data.read_bytes_at(at, 4).ok().context("reading the table's header")?;
    let length = u16::from_le_bytes([header[0], header[1]]);
    let version = u16::from_le_bytes([header[2], header[3]]);
    ensure!(
        version >> 8 == 3 && version & 0xff >= MIN_MINOR,
        "table version {}.{:03} (3.{MIN_MINOR:03} or later 3.x is read)",
        version >> 8,
        version & 0xff
    );
    ensure!(
        u64::from(length) >= TLS_P_HASH + 8,
        "the table is {length} bytes, too short for version {version:#x}"
    );
    Ok(version)
}

/// The functions the table's fields point to: field offset -> address,
/// from the dynamic relocations that fill them.
fn table_fields<'d, R: ReadRef<'d>>(
    elf: &ElfFile64<'d, Endianness, R>,
    vector: u64,
    isa: Isa,
) -> Result<HashMap<u64, u64>> {
    let relative = match isa {
        Isa::X86_64 => R_X86_64_RELATIVE,
        Isa::Aarch64 => R_AARCH64_RELATIVE,
    };
    let relocations = elf.dynamic_relocations().context("no dynamic relocations")?;
    let wanted = [TLS_PRF, HMAC_CREATE, HMAC_BEGIN, HMAC_UPDATE, HMAC_FINISH, TLS_P_HASH];
    let mut fields = HashMap::new();
    for (place, relocation) in relocations.take(MAX_RELOCATIONS) {
        let Some(field) = place.checked_sub(vector).filter(|f| wanted.contains(f)) else { continue };
        let RelocationFlags::Elf { r_type } = relocation.flags() else { continue };
        ensure!(r_type == relative, "the table's field at {field} is filled by relocation type {r_type}");
        ensure!(
            fields.insert(field, relocation.addend() as u64).is_none(),
            "two relocations fill field {field}"
        );
    }
    Ok(fields)
}

/// The executable segment's bytes, with its address.
struct Text<'d> {
    address: u64,
    bytes: &'d [u8],
}

impl Text<'_> {
    fn contains(&self, address: u64) -> bool {
        address >= self.address && address - self.address < self.bytes.len() as u64
    }

    /// [start, end) clipped to the segment.
    fn at(&self, start: u64, end: u64) -> &[u8] {
        let from = start.saturating_sub(self.address).min(self.bytes.len() as u64) as usize;
        let to = end.saturating_sub(self.address).min(self.bytes.len() as u64) as usize;
        &self.bytes[from..to.max(from)]
    }
}

/// The one executable `PT_LOAD` (linkers make one); more is refused.
fn executable_code<'d, R: ReadRef<'d>>(elf: &ElfFile64<'d, Endianness, R>, data: R) -> Result<Text<'d>> {
    /// freebl's code is under 1 MiB; a segment larger than this is not read.
    const MAX_CODE: u64 = 64 << 20;
    let endian = elf.endian();
    let mut found = elf
        .elf_program_headers()
        .iter()
        .filter(|ph| ph.p_type(endian) == PT_LOAD && ph.p_flags(endian) & PF_X != 0);
    let (Some(ph), None) = (found.next(), found.next()) else { bail!("not one executable segment") };
    let size = ph.p_filesz(endian);
    ensure!(size <= MAX_CODE, "an executable segment of {size} bytes");
    let bytes = data.read_bytes_at(ph.p_offset(endian), size).ok().context("reading the code")?;
    Ok(Text { address: ph.p_vaddr(endian), bytes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::pinned::PinnedFile;
    use std::path::PathBuf;

    /// The freebl that this host's NSS loads: next to libnss3, wherever
    /// the distribution puts it (libnss3 is linked by the NSS tools the
    /// end-to-end tests need, so its absence is a failure, not a skip).
    fn installed_freebl() -> PathBuf {
        let out = std::process::Command::new("ldd").arg(which("tstclnt")).output().expect("running ldd");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let nss3 = text
            .lines()
            .find_map(|l| l.split_whitespace().nth(2).filter(|p| p.ends_with("/libnss3.so")))
            .expect("tstclnt links libnss3.so (install libnss3-tools: scripts/install-deps)");
        let dir = PathBuf::from(nss3).parent().unwrap().to_path_buf();
        let freebl = dir.join("libfreeblpriv3.so");
        assert!(freebl.exists(), "no libfreeblpriv3.so beside {nss3}");
        freebl
    }

    fn which(tool: &str) -> PathBuf {
        std::env::var_os("PATH")
            .and_then(|p| std::env::split_paths(&p).map(|d| d.join(tool)).find(|f| f.exists()))
            .unwrap_or_else(|| panic!("{tool} not found: install libnss3-tools (scripts/install-deps)"))
    }

    #[test]
    fn finds_the_prf_and_hmac_of_the_installed_freebl() {
        let file = PinnedFile::open(&installed_freebl()).unwrap();
        let found = find(file.data()).unwrap();
        eprintln!("{found:x?}");
        assert!(found.version >= 0x0312, "{:#x}", found.version);
        let all = [found.tls_p_hash, found.tls_prf, found.hmac_finish];
        assert!(all.iter().all(|f| f.file_offset > 0));
        assert_ne!(found.tls_p_hash, found.tls_prf);
        assert_ne!(found.tls_p_hash, found.hmac_finish);
    }

    /// A `FREEBL_GetVector` for aarch64 with branch protection: the
    /// version check's load, the stubs' call, then the table's `adrp`+`add`
    /// straight into x0 (0x31000 + 0x230) to the `ret`; `NULL` on the other
    /// path. (Debian's own shape, through x1, is tested below.)
    const GET_VECTOR_A64: [u32; 16] = [
        0xd503233f, // paciasp
        0xa9bf7bfd, // stp x29, x30, [sp, #-16]!
        0x910003fd, // mov x29, sp
        0x90000000, // adrp x0, 0x10000
        0x39410000, // ldrb w0, [x0, #64]
        0x94000040, // bl 0x10114
        0x350000c0, // cbnz w0, 0x10030
        0xb0000100, // adrp x0, 0x31000
        0x9108c000, // add x0, x0, #0x230
        0xa8c17bfd, // ldp x29, x30, [sp], #16
        0xd50323bf, // autiasp
        0xd65f03c0, // ret
        0xd2800000, // mov x0, #0
        0xa8c17bfd, // ldp x29, x30, [sp], #16
        0xd50323bf, // autiasp
        0xd65f03c0, // ret
    ];

    fn a64(words: &[u32]) -> Vec<u8> {
        words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    #[test]
    fn the_aarch64_table_address_is_the_one_reaching_a_ret() {
        assert_eq!(returned_addresses::<Aarch64>(&a64(&GET_VECTOR_A64), 0x10000), vec![0x31230]);
        let calls: Vec<u64> = aarch64::instructions(&a64(&GET_VECTOR_A64), 0x10000)
            .filter_map(|(at, i)| aarch64::call_target(at, &i))
            .collect();
        assert_eq!(calls, vec![0x10114]);
        // x0 changed, or a call, between the address and the ret: nothing.
        for (at, word) in [(9, 0xaa0103e0), (9, 0x94000040), (10, 0x9a800000), (9, 0xf9400000)] {
            let mut words = GET_VECTOR_A64.to_vec();
            words.insert(at, word); // mov x0, x1; bl; csel x0, x0, x0, eq; ldr x0, [x0]
            assert_eq!(returned_addresses::<Aarch64>(&a64(&words), 0x10000), Vec::<u64>::new(), "{word:#x}");
        }
        // Debian 12's arm64 freebl: the address formed in x1 and moved to
        // x0 where the NULL path (x1 = 0) joins.
        let gcc = [
            0xa9be7bfd, // stp x29, x30, [sp, #-32]!
            0x94013d0a, // bl
            0xd2800001, // mov x1, #0
            0x35000080, // cbnz w0, +0x10
            0x9400487b, // bl
            0xb0000101, // adrp x1, 0x31000
            0x9108c021, // add x1, x1, #0x230
            0xaa0103e0, // mov x0, x1
            0xa8c27bfd, // ldp x29, x30, [sp], #32
            0xd65f03c0, // ret
        ];
        assert_eq!(returned_addresses::<Aarch64>(&a64(&gcc), 0x10000), vec![0x31230]);
        // An add to it is followed.
        let mut words = GET_VECTOR_A64.to_vec();
        words.insert(9, 0x91000400); // add x0, x0, #1
        assert_eq!(returned_addresses::<Aarch64>(&a64(&words), 0x10000), vec![0x31231]);
        // An instruction that leaves x0 alone keeps it.
        let mut words = GET_VECTOR_A64.to_vec();
        words.insert(9, 0xaa0103e2); // mov x2, x1
        assert_eq!(returned_addresses::<Aarch64>(&a64(&words), 0x10000), vec![0x31230]);
    }

    #[test]
    fn refuses_other_files() {
        // Another library of the same host: no FREEBL_GetVector.
        let libc = crate::discover::procs::mappings(std::process::id())
            .into_iter()
            .find(|m| m.path.rsplit('/').next().is_some_and(|n| n.starts_with("libc.so")))
            .expect("this test links the C library dynamically");
        let file = PinnedFile::open(std::path::Path::new(&libc.path)).unwrap();
        let err = find(file.data()).unwrap_err();
        assert!(format!("{err:#}").contains(GET_VECTOR), "{err:#}");
        for junk in [&b""[..], &b"\x7fELF"[..], &[0u8; 4096][..]] {
            assert!(find(junk).is_err());
        }
    }

    /// The same freebl with its table's header or one of its pointers
    /// changed: refused, never answered with a guess.
    #[test]
    fn refuses_a_changed_table() {
        let path = installed_freebl();
        let bytes = std::fs::read(&path).unwrap();
        let elf = ElfFile64::<Endianness, &[u8]>::parse(&bytes[..]).unwrap();
        let segments = load_segments(&elf).unwrap();
        let get_vector = Symbols::parse(&bytes[..], &[GET_VECTOR]).unwrap().get(GET_VECTOR).unwrap();
        let vector = returned_address(&bytes[..], get_vector, Isa::HOST).unwrap();
        let header = file_offset_of(&segments, vector).unwrap() as usize;

        let mut old = bytes.clone();
        old[header + 2] = 0x11; // version 3.017: before TLS_P_hash
        assert!(format!("{:#}", find(&old[..]).unwrap_err()).contains("version"));

        let mut short = bytes.clone();
        short[header..header + 2].copy_from_slice(&64u16.to_le_bytes());
        assert!(format!("{:#}", find(&short[..]).unwrap_err()).contains("too short"));

        // Swap the HMAC_Finish and HMAC_Update relocations' addends: the
        // table still looks fine, the call graph no longer agrees.
        let swapped = swap_field_addends(&bytes, vector, HMAC_FINISH, TLS_PRF);
        let err = format!("{:#}", find(&swapped[..]).unwrap_err());
        assert!(err.contains("does not call") || err.contains("neither calls"), "{err}");
    }

    /// 2,000 copies of the installed freebl, each with one to four bytes
    /// changed where the search reads (FREEBL_GetVector's code, the
    /// table, the functions it checks): refused, or answered with the same
    /// functions; never a panic.
    #[test]
    fn mutated_freebl_never_panics() {
        let mut bytes = std::fs::read(installed_freebl()).unwrap();
        let found = find(&bytes[..]).unwrap();
        let get_vector = Symbols::parse(&bytes[..], &[GET_VECTOR]).unwrap().get(GET_VECTOR).unwrap();
        let vector = returned_address(&bytes[..], get_vector, Isa::HOST).unwrap();
        let elf = ElfFile64::<Endianness, &[u8]>::parse(&bytes[..]).unwrap();
        let table = file_offset_of(&load_segments(&elf).unwrap(), vector).unwrap() as usize;
        let code = |f: Function| (f.file_offset as usize, f.size.clamp(1, 256) as usize);
        let ranges = [
            code(get_vector),
            (table, 512),
            code(found.tls_p_hash),
            code(found.tls_prf),
            code(found.hmac_finish),
        ];
        let (mut answered, mut different) = (0, 0);
        crate::discover::mutate::with_changed_bytes(&mut bytes, &ranges, 2_000, |copy| {
            if let Ok(got) = find(copy) {
                answered += 1;
                let same = (got.tls_p_hash, got.tls_prf, got.hmac_finish)
                    == (found.tls_p_hash, found.tls_prf, found.hmac_finish);
                different += usize::from(!same);
            }
        });
        eprintln!("{answered} of 2000 changed copies still answered, {different} of them differently");
        // Most changes miss what the search checks; some must be refused,
        // and none may give other functions (a probe on a wrong one).
        assert!(answered < 2_000, "no change was ever refused: the test reaches nothing");
        assert_eq!(different, 0, "changed copies answered with other functions");
        assert_eq!(find(&bytes[..]).unwrap().tls_prf, found.tls_prf);
    }

    /// `bytes` with the relocation addends of two table fields exchanged.
    fn swap_field_addends(bytes: &[u8], vector: u64, a: u64, b: u64) -> Vec<u8> {
        let elf = ElfFile64::<Endianness, &[u8]>::parse(bytes).unwrap();
        let rela = elf.section_by_name(".rela.dyn").expect(".rela.dyn");
        let (offset, size) = object::ObjectSection::file_range(&rela).unwrap();
        let mut out = bytes.to_vec();
        let entry_of = |field: u64| -> usize {
            (0..size as usize / 24)
                .map(|i| offset as usize + i * 24)
                .find(|&e| u64::from_le_bytes(bytes[e..e + 8].try_into().unwrap()) == vector + field)
                .expect("a relocation for the field")
        };
        let (ea, eb) = (entry_of(a) + 16, entry_of(b) + 16);
        let (va, vb) = (bytes[ea..ea + 8].to_vec(), bytes[eb..eb + 8].to_vec());
        out[ea..ea + 8].copy_from_slice(&vb);
        out[eb..eb + 8].copy_from_slice(&va);
        out
    }
}
