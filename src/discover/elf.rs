//! Function symbols of an ELF file (shared library or executable), as
//! file offsets: the unit uprobes attach by.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use object::elf::{
    Sym64, DT_NEEDED, DT_RPATH, DT_RUNPATH, PT_LOAD, SHN_UNDEF, SHT_DYNSYM, SHT_SYMTAB, STT_COMMON, STT_FUNC,
    STT_GNU_IFUNC, STT_OBJECT,
};
use object::read::elf::{Dyn as _, ElfFile64, ProgramHeader, SectionHeader, Sym as _};
use object::{Endianness, Object, ObjectSymbol, ReadRef, SectionIndex, SymbolKind};

use super::pinned::PinnedFile;

/// The instruction sets whose machine code cleartap reads (Go's RET
/// instructions and stack check, OpenSSL's calls, GnuTLS's key log
/// function). Every reader takes one and has a path for each, or refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    X86_64,
    Aarch64,
}

impl Isa {
    /// The instruction set cleartap itself runs on: the only one whose
    /// programs its probes can see execute (a foreign one runs under an
    /// emulator, where a breakpoint written into its code corrupts it).
    pub const HOST: Isa = if cfg!(target_arch = "aarch64") { Isa::Aarch64 } else { Isa::X86_64 };

    /// The instruction set of an ELF file that can be probed from here:
    /// an error names any other (a foreign architecture, or one cleartap
    /// has no decoder for).
    pub fn of_elf<'d, R: ReadRef<'d>>(elf: &ElfFile64<'d, Endianness, R>) -> Result<Isa> {
        let isa = match elf.architecture() {
            object::Architecture::X86_64 => Isa::X86_64,
            object::Architecture::Aarch64 => Isa::Aarch64,
            other => bail!("machine code for {other:?}: cleartap reads x86_64 and aarch64 only"),
        };
        if isa != Isa::HOST {
            bail!(
                "machine code for {isa:?}, while this is {:?}: its programs cannot be probed from here",
                Isa::HOST
            );
        }
        Ok(isa)
    }
}

/// A function found in an ELF file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Function {
    /// Virtual address as linked (what `st_value` says).
    pub address: u64,
    pub size: u64,
    /// Offset in the file: what a uprobe attaches to.
    pub file_offset: u64,
}

/// Defined function symbols of one ELF file, from `.dynsym` and `.symtab`,
/// by name (symbol versions stripped). Only the names asked for are kept:
/// an executable like node has over 100,000 symbols, and building a table
/// of all of them would delay attaching to a process that just started.
#[derive(Debug, Default)]
pub struct Symbols {
    functions: HashMap<String, Function>,
}

impl Symbols {
    /// Read by ranges: executables with a TLS library inside (node) are
    /// tens of MiB and only their symbol tables are touched. Only for a
    /// file of the host's instruction set: a uprobe on another's code (a
    /// multiarch library, a program run by an emulator) would write this
    /// machine's breakpoint into it.
    pub fn of(file: &PinnedFile, wanted: &[&str]) -> Result<Symbols> {
        let data = file.data();
        let elf = ElfFile64::<Endianness, _>::parse(data).context("not a 64-bit ELF file")?;
        Isa::of_elf(&elf)?;
        Self::of_elf(&elf, data, wanted).context("reading ELF symbols")
    }

    pub fn parse<'d, R: ReadRef<'d>>(data: R, wanted: &[&str]) -> Result<Symbols> {
        let elf = ElfFile64::<Endianness, R>::parse(data).context("not a 64-bit ELF file")?;
        Self::of_elf(&elf, data, wanted)
    }

    fn of_elf<'d, R: ReadRef<'d>>(
        elf: &ElfFile64<'d, Endianness, R>,
        data: R,
        wanted: &[&str],
    ) -> Result<Symbols> {
        let segments = load_segments(elf)?;
        let mut functions = HashMap::new();
        collect_table(elf, data, SHT_DYNSYM, &segments, wanted, &mut functions)?;
        // Exported names are the common case and .dynsym is small; the full
        // .symtab (when not stripped) only for binaries that export none.
        if functions.is_empty() {
            collect_table(elf, data, SHT_SYMTAB, &segments, wanted, &mut functions)?;
        }
        Ok(Symbols { functions })
    }

    pub fn get(&self, name: &str) -> Option<Function> {
        self.functions.get(name).copied()
    }

    /// Every defined symbol whose raw name contains `needle` and whose
    /// demangled C++ form satisfies `pred` (e.g. `dispatch_command(enum_server_command, THD*, ...)`).
    pub fn find_demangled(
        file: &PinnedFile,
        needle: &str,
        pred: impl Fn(&str) -> bool,
    ) -> Result<Vec<(String, Function)>> {
        let elf = ElfFile64::<Endianness, _>::parse(file.data()).context("not a 64-bit ELF file")?;
        let segments = load_segments(&elf)?;
        let mut found = Vec::new();
        for sym in elf.dynamic_symbols().chain(elf.symbols()) {
            let Ok(name) = sym.name() else { continue };
            if !name.contains(needle) || sym.is_undefined() || sym.kind() != SymbolKind::Text {
                continue;
            }
            let Some(demangled) = demangle(name) else { continue };
            let Some(file_offset) = file_offset_of(&segments, sym.address()) else { continue };
            if pred(&demangled) && !found.iter().any(|(d, _)| *d == demangled) {
                found.push((demangled, Function { address: sym.address(), size: sym.size(), file_offset }));
            }
        }
        Ok(found)
    }
}

/// Functions of `.symtab` (and `.dynsym`) whose Rust mangled name
/// contains `needle` and, demangled without its hash, is one of
/// `wanted`: (demangled name, function), the first of each name.
pub fn rust_functions<'d, R: ReadRef<'d>>(
    elf: &ElfFile64<'d, Endianness, R>,
    needle: &str,
    wanted: &[&str],
) -> Result<Vec<(String, Function)>> {
    rust_functions_where(elf, needle, |demangled| wanted.contains(&demangled))
}

/// Functions whose Rust mangled name contains `needle` and whose
/// demangled path satisfies `pred` (every implementation of a trait
/// method, say): (demangled name, function), the first of each name.
pub fn rust_functions_where<'d, R: ReadRef<'d>>(
    elf: &ElfFile64<'d, Endianness, R>,
    needle: &str,
    pred: impl Fn(&str) -> bool,
) -> Result<Vec<(String, Function)>> {
    let segments = load_segments(elf)?;
    let mut found: Vec<(String, Function)> = Vec::new();
    for sym in elf.symbols().chain(elf.dynamic_symbols()) {
        let Ok(name) = sym.name() else { continue };
        let mangled = name.starts_with("_ZN") || name.starts_with("_R");
        if !mangled || !name.contains(needle) || sym.is_undefined() {
            continue;
        }
        if sym.kind() != SymbolKind::Text {
            continue;
        }
        let Some(demangled) = rust_demangle(name) else { continue };
        if !pred(&demangled) || found.iter().any(|(d, _)| *d == demangled) {
            continue;
        }
        let Some(file_offset) = file_offset_of(&segments, sym.address()) else { continue };
        found.push((demangled, Function { address: sym.address(), size: sym.size(), file_offset }));
    }
    Ok(found)
}

/// A Rust symbol (the legacy mangling `_ZN...17h<hash>E`, rustc's
/// default, or v0 `_R...`) as a path without its hash or disambiguators:
/// `<rustls::conn::connection::Writer as std::io::Write>::write`.
pub fn rust_demangle(name: &str) -> Option<String> {
    rustc_demangle::try_demangle(name).ok().map(|d| format!("{d:#}"))
}

/// What an executable asks the dynamic loader for: its `DT_NEEDED`
/// libraries and its `DT_RUNPATH`/`DT_RPATH` directories.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Dependencies {
    pub needed: Vec<String>,
    pub runpath: Vec<String>,
}

impl Dependencies {
    pub fn of(file: &PinnedFile) -> Result<Dependencies> {
        Self::parse(file.data()).context("reading the dynamic section")
    }

    pub fn parse<'d, R: ReadRef<'d>>(data: R) -> Result<Dependencies> {
        let elf = ElfFile64::<Endianness, R>::parse(data).context("not a 64-bit ELF file")?;
        let endian = elf.endian();
        let sections = elf.elf_section_table();
        let mut deps = Dependencies::default();
        for section in sections.iter() {
            let Some((entries, link)) = section.dynamic(endian, data)? else { continue };
            let strings = sections.strings(endian, data, link)?;
            for entry in entries {
                let text = |e: &object::elf::Dyn64<Endianness>| -> Result<String> {
                    let offset =
                        u32::try_from(e.d_val(endian)).context("bad string in the dynamic section")?;
                    let raw = strings.get(offset).ok().context("bad string in the dynamic section")?;
                    Ok(String::from_utf8_lossy(raw).into_owned())
                };
                match entry.d_tag(endian) as u32 {
                    DT_NEEDED => deps.needed.push(text(entry)?),
                    DT_RUNPATH | DT_RPATH => deps.runpath.extend(text(entry)?.split(':').map(String::from)),
                    _ => {}
                }
            }
        }
        Ok(deps)
    }
}

/// The C++ demangled form of `name`, or None if it is not a C++ symbol.
pub fn demangle(name: &str) -> Option<String> {
    let sym = cpp_demangle::Symbol::new(name.as_bytes()).ok()?;
    let options = cpp_demangle::DemangleOptions::new().no_return_type();
    sym.demangle(&options).ok()
}

/// The wanted symbols of the table of type `kind` (`SHT_DYNSYM` or
/// `SHT_SYMTAB`). The table and its strings are each read in one piece:
/// read name by name through a `ReadRef` over a file, 50,000 names would be
/// 50,000 `pread`s (most of the time from exec to probes live of a Go
/// program).
fn collect_table<'d, R: ReadRef<'d>>(
    elf: &ElfFile64<'d, Endianness, R>,
    data: R,
    kind: u32,
    segments: &[(u64, u64, u64)],
    wanted: &[&str],
    functions: &mut HashMap<String, Function>,
) -> Result<()> {
    let endian = elf.endian();
    let sections = elf.elf_section_table();
    let Some(table) = sections.iter().find(|s| s.sh_type(endian) == kind) else {
        return Ok(());
    };
    let symbols: &[Sym64<Endianness>] =
        table.data_as_array(endian, data).context("reading a symbol table")?;
    let strings = sections
        .section(SectionIndex(table.sh_link(endian) as usize))
        .and_then(|s| s.data(endian, data))
        .context("reading a symbol table's strings")?;
    for sym in symbols {
        // Functions to probe, and data (a shell's $? variable) to read.
        let wanted_kind = matches!(sym.st_type(), STT_FUNC | STT_GNU_IFUNC | STT_OBJECT | STT_COMMON);
        let address = sym.st_value(endian);
        if !wanted_kind || sym.st_shndx(endian) == SHN_UNDEF || address == 0 {
            continue;
        }
        let Some(raw) = strings.get(sym.st_name(endian) as usize..) else { continue };
        // A wanted name, then its end or a symbol version (`@...`): compared
        // over the wanted name's length only, not scanned to the end of
        // every name (Go's are long, and there are tens of thousands).
        let is = |w: &&&str| raw.starts_with(w.as_bytes()) && matches!(raw.get(w.len()), Some(0 | b'@'));
        let Some(name) = wanted.iter().find(is) else { continue };
        let Some(file_offset) = file_offset_of(segments, address) else { continue };
        functions.entry(name.to_string()).or_insert(Function {
            address,
            size: sym.st_size(endian),
            file_offset,
        });
    }
    Ok(())
}

/// (virtual address, size in memory, file offset) of each PT_LOAD segment.
pub(crate) fn load_segments<'d, R: ReadRef<'d>>(
    elf: &ElfFile64<'d, Endianness, R>,
) -> Result<Vec<(u64, u64, u64)>> {
    let endian = elf.endian();
    let mut segments = Vec::new();
    for ph in elf.elf_program_headers() {
        if ph.p_type(endian) == PT_LOAD {
            segments.push((ph.p_vaddr(endian), ph.p_memsz(endian), ph.p_offset(endian)));
        }
    }
    if segments.is_empty() {
        bail!("no loadable segments");
    }
    Ok(segments)
}

pub(crate) fn file_offset_of(segments: &[(u64, u64, u64)], address: u64) -> Option<u64> {
    segments
        .iter()
        .find(|(vaddr, memsz, _)| address >= *vaddr && address - vaddr < *memsz)
        .map(|(vaddr, _, offset)| address - vaddr + offset)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::path::{Path, PathBuf};

    /// The C library this test program itself runs with, wherever the
    /// distribution puts it.
    fn libc_path() -> PathBuf {
        let maps = super::super::procs::mappings(std::process::id());
        let libc = maps.iter().find(|m| m.path.rsplit('/').next().is_some_and(|n| n.starts_with("libc.so")));
        PathBuf::from(&libc.expect("this test links the C library dynamically").path)
    }

    #[test]
    fn finds_exported_functions_of_libc() {
        let libc = PinnedFile::open(&libc_path()).unwrap();
        let symbols = Symbols::of(&libc, &["write", "read", "no_such_function_here"]).unwrap();
        assert!(symbols.get("read").is_some());
        let write = symbols.get("write").expect("libc exports write");
        assert!(write.size > 0);
        assert!(write.file_offset > 0);
        assert!(symbols.get("no_such_function_here").is_none());
    }

    /// The host's libc relabelled as the other instruction set (its
    /// `e_machine`): its symbols still read from bytes, but a file is
    /// refused, so no probe is ever placed on another machine's code.
    #[test]
    fn a_file_of_another_instruction_set_is_refused() {
        let mut bytes = fs::read(libc_path()).unwrap();
        let other: u16 = if Isa::HOST == Isa::X86_64 { 183 } else { 62 }; // EM_AARCH64, EM_X86_64
        bytes[18..20].copy_from_slice(&other.to_le_bytes());
        assert!(Symbols::parse(&bytes[..], &["write"]).unwrap().get("write").is_some());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("libc.so.6");
        fs::write(&path, &bytes).unwrap();
        let err = Symbols::of(&PinnedFile::open(&path).unwrap(), &["write"]).unwrap_err();
        assert!(format!("{err:#}").contains("cannot be probed from here"), "{err:#}");
    }

    #[test]
    fn demangles_rust_legacy_symbols() {
        assert_eq!(
            rust_demangle("_ZN67_$LT$rustls..conn..connection..Writer$u20$as$u20$std..io..Write$GT$5write17hcd74e6df663c99d9E")
                .as_deref(),
            Some("<rustls::conn::connection::Writer as std::io::Write>::write")
        );
        assert_eq!(
            rust_demangle("_ZN6rustls12common_state11CommonState16buffer_plaintext17h4ec92e8b0db06b72E")
                .as_deref(),
            Some("rustls::common_state::CommonState::buffer_plaintext")
        );
        assert_eq!(rust_demangle("_ZN3foo"), None);
        assert_eq!(rust_demangle("_ZN99fooE"), None);
        assert_eq!(rust_demangle("SSL_write"), None);
        // Names from hostile files: never a panic.
        for name in [
            "_ZN18446744073709551615aE",
            "_ZN3$u$E",
            "_ZN2_$E",
            "_ZN4$uffffffE",
            "_ZN3\u{e9}aE",
            "_ZN1\u{e9}E",
            "_ZNE",
        ] {
            let _ = rust_demangle(name);
        }
    }

    #[test]
    fn demangles_dispatch_command_signatures() {
        assert_eq!(
            demangle("_Z16dispatch_command19enum_server_commandP3THDPcjb").as_deref(),
            Some("dispatch_command(enum_server_command, THD*, char*, unsigned int, bool)")
        );
        assert_eq!(
            demangle("_Z16dispatch_commandP3THDPK8COM_DATA19enum_server_command").as_deref(),
            Some("dispatch_command(THD*, COM_DATA const*, enum_server_command)")
        );
        assert_eq!(demangle("SSL_write"), None);
    }

    #[test]
    fn file_offset_follows_the_segment() {
        let segments = [(0x0, 0x1000, 0x0), (0x2000, 0x500, 0x1000)];
        assert_eq!(file_offset_of(&segments, 0x10), Some(0x10));
        assert_eq!(file_offset_of(&segments, 0x2010), Some(0x1010));
        assert_eq!(file_offset_of(&segments, 0x1800), None);
    }

    #[test]
    fn dependencies_of_the_system_bash_and_garbage() {
        let deps = Dependencies::of(&PinnedFile::open(Path::new("/bin/bash")).unwrap()).unwrap();
        assert!(deps.needed.iter().any(|n| n == "libc.so.6"), "{deps:?}");
        assert!(deps.needed.iter().any(|n| n.starts_with("libtinfo.so")), "{deps:?}");
        assert!(Dependencies::parse(&b"\x7fELF not really"[..]).is_err());
        let bash = fs::read("/bin/bash").unwrap();
        for cut in [64, 4096, bash.len() / 2, bash.len() - 1] {
            let _ = Dependencies::parse(&bash[..cut]);
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(Symbols::parse(&b""[..], &["x"]).is_err());
        assert!(Symbols::parse(&b"\x7fELF garbage that is not an elf file at all"[..], &["x"]).is_err());
        let libc = fs::read(libc_path()).unwrap();
        for cut in [16, 64, 4096, libc.len() / 2] {
            let _ = Symbols::parse(&libc[..cut], &["write"]);
        }
    }
}
