//! Go executables: the toolchain version (build info), function addresses
//! (from `.symtab` when present, else from the pclntab, which the Go
//! runtime needs and no strip removes), and the RET instructions of a
//! function (Go code never gets a uretprobe; each RET gets a uprobe).
//! Every read is bounds-checked: these bytes come from any file on the host.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use iced_x86::{Decoder, DecoderOptions, Mnemonic};
use object::read::elf::ElfFile64;
use object::{Endianness, Object, ObjectSection, ReadRef};

use super::elf::{file_offset_of, load_segments, Function, Isa, Symbols};

pub struct GoBinary {
    /// `go1.21.5`, or `unknown` when the build info cannot be read.
    pub version: String,
    /// Its machine code's, which decides the register ABI and the decoder.
    pub isa: Isa,
    functions: HashMap<String, Function>,
}

const BUILDINFO_MAGIC: &[u8] = b"\xff Go buildinf:";

impl GoBinary {
    /// `Ok(None)`: an ELF file that is not a Go program.
    pub fn parse<'d, R: ReadRef<'d>>(bytes: R, wanted: &[&str]) -> Result<Option<GoBinary>> {
        let elf = ElfFile64::<Endianness, R>::parse(bytes).context("not a 64-bit ELF file")?;
        let segments = load_segments(&elf)?;
        // Scanning for the build info is for files without section headers
        // only: every exec on the host comes through here.
        let no_sections = elf.sections().next().is_none();
        let buildinfo = section(&elf, ".go.buildinfo").or_else(|| {
            if no_sections {
                find_buildinfo(whole(bytes)?)
            } else {
                None
            }
        });
        let has_pclntab = section(&elf, ".gopclntab").is_some();
        if buildinfo.is_none() && !has_pclntab && elf.section_by_name(".note.go.buildid").is_none() {
            return Ok(None);
        }
        let version = buildinfo
            .and_then(|b| buildinfo_version(b, bytes, &segments))
            .unwrap_or_else(|| "unknown".to_string());
        let isa = Isa::of_elf(&elf)?;
        let symbols = Symbols::parse(bytes, wanted)?;
        let mut functions: HashMap<String, Function> =
            wanted.iter().filter_map(|w| symbols.get(w).map(|f| (w.to_string(), f))).collect();
        if functions.len() < wanted.len() {
            let text = elf.section_by_name(".text").map(|s| s.address());
            // PIE builds name it .data.rel.ro.gopclntab, or leave it
            // somewhere in .data.rel.ro; without sections, anywhere.
            let table = section(&elf, ".gopclntab")
                .or_else(|| section(&elf, ".data.rel.ro.gopclntab"))
                .or_else(|| section(&elf, ".data.rel.ro").and_then(find_pclntab))
                .or_else(|| if no_sections { find_pclntab(whole(bytes)?) } else { None });
            if let Some(table) = table {
                for (name, f) in pclntab_functions(table, text, wanted, &segments)? {
                    functions.entry(name).or_insert(f);
                }
            }
        }
        Ok(Some(GoBinary { version, isa, functions }))
    }

    pub fn function(&self, name: &str) -> Option<Function> {
        self.functions.get(name).copied()
    }

    /// Go passes arguments in registers from 1.17 on amd64, from 1.18 on
    /// arm64.
    pub fn register_abi(&self) -> bool {
        let first = match self.isa {
            Isa::X86_64 => 17,
            Isa::Aarch64 => 18,
        };
        match go_minor(&self.version) {
            Some(minor) => minor >= first,
            None => self.version.starts_with("devel"),
        }
    }

    /// The first Go release with the register ABI on this instruction set.
    pub fn register_abi_since(&self) -> &'static str {
        match self.isa {
            Isa::X86_64 => "1.17",
            Isa::Aarch64 => "1.18",
        }
    }
}

/// 21 for `go1.21.5` / `go1.21rc1`.
fn go_minor(version: &str) -> Option<u32> {
    let rest = version.strip_prefix("go1.")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The whole file, for the scans of files without section headers (read
/// within the file's read budget, see `discover::pinned`).
fn whole<'d, R: ReadRef<'d>>(bytes: R) -> Option<&'d [u8]> {
    bytes.read_bytes_at(0, bytes.len().ok()?).ok()
}

fn section<'d, R: ReadRef<'d>>(elf: &ElfFile64<'d, Endianness, R>, name: &str) -> Option<&'d [u8]> {
    elf.section_by_name(name)?.data().ok().filter(|d| !d.is_empty())
}

fn find_buildinfo(bytes: &[u8]) -> Option<&[u8]> {
    // Aligned to 16 bytes in every Go version that writes it.
    (0..bytes.len().saturating_sub(32))
        .step_by(16)
        .find(|&at| bytes[at..].starts_with(BUILDINFO_MAGIC))
        .map(|at| &bytes[at..])
}

/// The version string of a build info blob: inline since Go 1.18 (flag 2),
/// else through a pointer to a Go string header (Go 1.13-1.17).
fn buildinfo_version<'d, R: ReadRef<'d>>(
    info: &[u8],
    file: R,
    segments: &[(u64, u64, u64)],
) -> Option<String> {
    if !info.starts_with(BUILDINFO_MAGIC) || info.len() < 32 {
        return None;
    }
    let (ptr_size, flags) = (info[14] as usize, info[15]);
    if flags & 2 != 0 {
        let (len, used) = uvarint(&info[32..])?;
        let start = 32usize.checked_add(used)?;
        let text = info.get(start..start.checked_add(usize::try_from(len).ok()?)?)?;
        return String::from_utf8(text.to_vec()).ok();
    }
    if ptr_size != 8 || flags & 1 != 0 {
        return None; // 32-bit or big-endian: not a program cleartap probes
    }
    let header_at = u64::from_le_bytes(info.get(16..24)?.try_into().ok()?);
    let header = read_at(file, segments, header_at, 16)?;
    let data = u64::from_le_bytes(header[..8].try_into().ok()?);
    let len = u64::from_le_bytes(header[8..16].try_into().ok()?);
    let text = read_at(file, segments, data, usize::try_from(len).ok().filter(|&l| l < 256)?)?;
    String::from_utf8(text.to_vec()).ok()
}

fn read_at<'d, R: ReadRef<'d>>(
    file: R,
    segments: &[(u64, u64, u64)],
    address: u64,
    len: usize,
) -> Option<&'d [u8]> {
    file.read_bytes_at(file_offset_of(segments, address)?, len as u64).ok()
}

fn uvarint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// pclntab header magics (runtime/symtab.go).
const MAGIC_116: u32 = 0xffff_fffa;
const MAGIC_118: u32 = 0xffff_fff0;
const MAGIC_120: u32 = 0xffff_fff1;

/// A pclntab that is not a section (PIE builds put it inside
/// .data.rel.ro): its header, checked enough to rule out chance matches.
fn find_pclntab(bytes: &[u8]) -> Option<&[u8]> {
    (0..bytes.len().saturating_sub(64)).step_by(8).map(|at| &bytes[at..]).find(|t| header(t).is_some())
}

struct Header {
    magic: u32,
    nfunc: usize,
    text_start: u64,
    funcnames: usize,
    functab: usize,
}

fn word(t: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(t.get(at..at.checked_add(8)?)?.try_into().ok()?))
}

fn u32_at(t: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(t.get(at..at.checked_add(4)?)?.try_into().ok()?))
}

fn header(t: &[u8]) -> Option<Header> {
    let magic = u32_at(t, 0)?;
    // Two zero bytes, the instruction size quantum (1 on amd64, 4 on
    // arm64: only the function table is read here, which it does not
    // change) and the pointer size.
    let (pad, quantum, pointer) = (t.get(4..6)?, *t.get(6)?, *t.get(7)?);
    if ![MAGIC_116, MAGIC_118, MAGIC_120].contains(&magic)
        || pad != [0, 0]
        || ![1, 4].contains(&quantum)
        || pointer != 8
    {
        return None;
    }
    let at = |i: usize| word(t, 8 + 8 * i).and_then(|w| usize::try_from(w).ok());
    let nfunc = at(0)?;
    let (text_start, funcnames, functab) =
        if magic == MAGIC_116 { (0, at(2)?, at(6)?) } else { (word(t, 24)?, at(3)?, at(7)?) };
    let entry = if magic == MAGIC_116 { 16 } else { 8 };
    let functab_end = functab.checked_add(nfunc.checked_add(1)?.checked_mul(entry)?)?;
    if nfunc == 0 || funcnames >= t.len() || functab_end > t.len() {
        return None;
    }
    Some(Header { magic, nfunc, text_start, funcnames, functab })
}

/// Functions named in `wanted`, from the pclntab's function table: entry
/// address, and size up to the next function's entry.
fn pclntab_functions(
    table: &[u8],
    text_section: Option<u64>,
    wanted: &[&str],
    segments: &[(u64, u64, u64)],
) -> Result<Vec<(String, Function)>> {
    let Some(h) = header(table) else { bail!("unrecognised Go pclntab") };
    // PIE binaries leave textStart to a relocation: .text is where it points.
    let text_start = if h.text_start != 0 { h.text_start } else { text_section.unwrap_or(0) };
    let mut found = Vec::new();
    for i in 0..h.nfunc {
        let Some((entry, next, name_off)) = functab_entry(table, &h, text_start, i) else { continue };
        let Some(name) = cstr(table, h.funcnames.checked_add(name_off).context("name offset")?) else {
            continue;
        };
        let Some(wanted) = wanted.iter().find(|w| w.as_bytes() == name) else { continue };
        let Some(file_offset) = file_offset_of(segments, entry) else { continue };
        let size = next.saturating_sub(entry);
        found.push((wanted.to_string(), Function { address: entry, size, file_offset }));
        if found.len() == wanted.len() {
            break;
        }
    }
    Ok(found)
}

/// (entry, next entry, name offset) of function `i`.
fn functab_entry(t: &[u8], h: &Header, text_start: u64, i: usize) -> Option<(u64, u64, usize)> {
    if h.magic == MAGIC_116 {
        let at = h.functab + 16 * i;
        let (entry, funcoff, next) = (word(t, at)?, word(t, at + 8)?, word(t, at + 16)?);
        let func = h.functab.checked_add(usize::try_from(funcoff).ok()?)?;
        let name = u32_at(t, func.checked_add(8)?)? as usize;
        return Some((entry, next, name));
    }
    let at = h.functab + 8 * i;
    let (entry, funcoff, next) = (u32_at(t, at)?, u32_at(t, at + 4)?, u32_at(t, at + 8)?);
    let func = h.functab.checked_add(funcoff as usize)?;
    let name = u32_at(t, func.checked_add(4)?)? as usize;
    Some((text_start + u64::from(entry), text_start + u64::from(next), name))
}

fn cstr(t: &[u8], at: usize) -> Option<&[u8]> {
    let rest = t.get(at..)?;
    let end = rest.iter().take(4096).position(|&b| b == 0)?;
    Some(&rest[..end])
}

/// File offsets of every RET of `f`, by decoding its instructions in
/// order (on x86_64 a 0xc3 byte inside another instruction is never taken
/// for one).
pub fn ret_offsets<'d, R: ReadRef<'d>>(bytes: R, f: Function, isa: Isa) -> Result<Vec<u64>> {
    /// Go's crypto/tls Read is a few hundred bytes; nothing probed is near.
    const MAX_GO_FUNCTION: u64 = 1 << 20;
    if f.size > MAX_GO_FUNCTION {
        bail!("function of {} bytes, larger than cleartap decodes", f.size);
    }
    let code = bytes.read_bytes_at(f.file_offset, f.size).ok().context("function outside the file")?;
    let at = |address: u64| f.file_offset + (address - f.address);
    Ok(match isa {
        Isa::X86_64 => Decoder::with_ip(64, code, f.address, DecoderOptions::NONE)
            .into_iter()
            .filter(|i| i.mnemonic() == Mnemonic::Ret)
            .map(|i| at(i.ip()))
            .collect(),
        Isa::Aarch64 => super::aarch64::instructions(code, f.address)
            .filter(|(_, i)| super::aarch64::is_return(i))
            .map(|(address, _)| at(address))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(go_minor("go1.19.8"), Some(19));
        assert_eq!(go_minor("go1.27rc1"), Some(27));
        assert_eq!(go_minor("devel go1.28-abc"), None);
        let go = |v: &str| GoBinary { version: v.into(), isa: Isa::X86_64, functions: HashMap::new() };
        assert!(go("go1.17").register_abi());
        assert!(!go("go1.16.15").register_abi());
        assert!(!go("unknown").register_abi());
        assert!(go("devel +abc").register_abi());
        let arm64 = |v: &str| GoBinary { version: v.into(), isa: Isa::Aarch64, functions: HashMap::new() };
        assert!(arm64("go1.18").register_abi());
        assert!(!arm64("go1.17.13").register_abi(), "Go 1.17 has the register ABI on amd64 only");
    }

    #[test]
    fn inline_buildinfo() {
        let mut info = BUILDINFO_MAGIC.to_vec();
        info.extend_from_slice(&[8, 2]);
        info.resize(32, 0);
        info.push(8);
        info.extend_from_slice(b"go1.22.3 and more");
        assert_eq!(buildinfo_version(&info, &b""[..], &[]).as_deref(), Some("go1.22.3"));
        info[32] = 200; // longer than the data
        assert_eq!(buildinfo_version(&info, &b""[..], &[]), None);
    }

    /// A synthetic Go 1.20 pclntab with two functions.
    fn table() -> Vec<u8> {
        let mut t = vec![0xf1, 0xff, 0xff, 0xff, 0, 0, 1, 8];
        for w in [2u64, 0, 0x401000, 72, 0, 0, 0, 96] {
            t.extend_from_slice(&w.to_le_bytes()); // nfunc, nfiles, text, names, cu, file, pc, functab
        }
        t.extend_from_slice(b"main.a\0crypto/tls.x\0\0\0\0\0"); // 72..96
        for (entry, funcoff) in [(0u32, 24u32), (0x40, 32), (0x90, 0)] {
            t.extend_from_slice(&entry.to_le_bytes());
            t.extend_from_slice(&funcoff.to_le_bytes());
        }
        for name in [0u32, 7] {
            t.extend_from_slice(&0u32.to_le_bytes());
            t.extend_from_slice(&name.to_le_bytes());
        }
        t
    }

    #[test]
    fn pclntab_names_and_sizes() {
        let segments = [(0x400000, 0x10000, 0)];
        let found = pclntab_functions(&table(), None, &["crypto/tls.x"], &segments).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].1, Function { address: 0x401040, size: 0x50, file_offset: 0x1040 });
        // arm64's table: instruction size quantum 4, the same function table.
        let mut arm64 = table();
        arm64[6] = 4;
        assert_eq!(pclntab_functions(&arm64, None, &["crypto/tls.x"], &segments).unwrap(), found);
        let mut other = table();
        other[6] = 2;
        assert!(pclntab_functions(&other, None, &["crypto/tls.x"], &segments).is_err());
    }

    #[test]
    fn pclntab_garbage_never_panics() {
        let segments = [(0x400000, 0x10000, 0)];
        let good = table();
        let mut next = crate::discover::mutate::noise(0x2545_f491_4f6c_dd1d);
        for _ in 0..200_000 {
            let mut t = good.clone();
            let mut state = 0;
            for _ in 0..3 {
                state = next();
                let at = (state % t.len() as u64) as usize;
                t[at] = (state >> 32) as u8;
            }
            let _ = pclntab_functions(&t, None, &["crypto/tls.x"], &segments);
            let cut = (state >> 40) as usize % t.len();
            let _ = pclntab_functions(&t[..cut], None, &["main.a"], &segments);
        }
    }

    #[test]
    fn not_go_and_not_elf() {
        let bash = std::fs::read("/bin/bash").unwrap();
        assert!(GoBinary::parse(&bash[..], &["main.main"]).unwrap().is_none());
        assert!(GoBinary::parse(&b"garbage"[..], &["main.main"]).is_err());
    }

    /// tests/go/tlspeer built by Debian's Go 1.19 (scripts/install-deps
    /// --test) with `flags`, into `dir`.
    fn build_go(dir: &std::path::Path, name: &str, flags: &[&str]) -> Vec<u8> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let out = dir.join(name);
        let status = std::process::Command::new("/usr/lib/go-1.19/bin/go")
            .current_dir(root.join("tests/go/tlspeer"))
            .env("GOCACHE", root.join("target/go-tests/cache"))
            .env("GOTOOLCHAIN", "local")
            .env("CGO_ENABLED", "0")
            .args(["build", "-o"])
            .arg(&out)
            .args(flags)
            .status()
            .expect("Debian's Go 1.19 (scripts/install-deps --test)");
        assert!(status.success());
        std::fs::read(out).unwrap()
    }

    #[test]
    fn pclntab_agrees_with_the_symbol_table() {
        let names =
            ["crypto/tls.(*Conn).Write", "crypto/tls.(*Conn).Read", "crypto/tls.(*Config).writeKeyLog"];
        let dir = tempfile::tempdir().unwrap();
        for (mode, extra) in [("exe", &[][..]), ("pie", &["-buildmode=pie"][..])] {
            let plain = build_go(dir.path(), mode, extra);
            let stripped =
                build_go(dir.path(), &format!("{mode}-stripped"), &[extra, &["-ldflags", "-s -w"]].concat());
            let (plain, stripped) = (
                GoBinary::parse(&plain[..], &names).unwrap().unwrap(),
                GoBinary::parse(&stripped[..], &names).unwrap().unwrap(),
            );
            assert!(plain.version.starts_with("go1.19"), "{}", plain.version);
            assert_eq!(plain.version, stripped.version);
            for name in names {
                let (a, b) = (plain.function(name).unwrap(), stripped.function(name).unwrap());
                assert_eq!((a.address, a.file_offset), (b.address, b.file_offset), "{mode} {name}");
                assert!(b.size >= a.size && b.size < a.size + 64, "{mode} {name}: {} vs {}", b.size, a.size);
            }
        }
    }

    #[test]
    fn rets_are_decoded_not_searched() {
        // mov eax,0xc3c3c3c3; ret; nop; ret
        let code = [0xb8, 0xc3, 0xc3, 0xc3, 0xc3, 0xc3, 0x90, 0xc3];
        let f = Function { address: 0x1000, size: code.len() as u64, file_offset: 0 };
        assert_eq!(ret_offsets(&code[..], f, Isa::X86_64).unwrap(), vec![5, 7]);
        assert!(ret_offsets(&code[..], Function { size: 100, ..f }, Isa::X86_64).is_err());
    }

    #[test]
    fn arm64_rets_are_the_aligned_ret_words() {
        // ldr x16,[x28,#16]; ret; a literal word holding a RET's bytes
        // out of step (at +10); ret x1 (not to the caller); ret
        let mut code: Vec<u8> = [0xf9400b90u32, 0xd65f03c0].iter().flat_map(|w| w.to_le_bytes()).collect();
        code.extend_from_slice(&[0, 0, 0xc0, 0x03, 0x5f, 0xd6, 0, 0]);
        code.extend(0xd65f0020u32.to_le_bytes());
        code.extend(0xd65f03c0u32.to_le_bytes());
        let f = Function { address: 0x1000, size: code.len() as u64, file_offset: 0 };
        assert_eq!(ret_offsets(&code[..], f, Isa::Aarch64).unwrap(), vec![4, 20]);
    }
}
