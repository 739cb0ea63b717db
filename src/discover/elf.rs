//! Function symbols of an ELF file (shared library or executable), as
//! file offsets: the unit uprobes attach by.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use anyhow::{bail, Context, Result};
use object::elf::PT_LOAD;
use object::read::elf::{ElfFile64, ProgramHeader};
use object::{Endianness, Object, ObjectSymbol, SymbolKind};

/// A function found in an ELF file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Function {
    /// Virtual address as linked (what `st_value` says).
    pub address: u64,
    pub size: u64,
    /// Offset in the file: what a uprobe attaches to.
    pub file_offset: u64,
}

/// The defined function symbols of one ELF file, from `.dynsym` and
/// `.symtab`, by name (symbol versions stripped).
#[derive(Debug, Default)]
pub struct Symbols {
    functions: HashMap<String, Function>,
}

impl Symbols {
    pub fn read(path: &Path) -> Result<Symbols> {
        let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&bytes).with_context(|| format!("reading ELF symbols of {}", path.display()))
    }

    pub fn parse(bytes: &[u8]) -> Result<Symbols> {
        let elf = ElfFile64::<Endianness>::parse(bytes).context("not a 64-bit ELF file")?;
        let segments = load_segments(&elf)?;
        let mut functions = HashMap::new();
        for sym in elf.dynamic_symbols().chain(elf.symbols()) {
            if sym.kind() != SymbolKind::Text || sym.is_undefined() || sym.address() == 0 {
                continue;
            }
            let Ok(name) = sym.name() else { continue };
            let name = name.split('@').next().unwrap_or(name);
            let Some(file_offset) = file_offset_of(&segments, sym.address()) else { continue };
            functions.entry(name.to_string()).or_insert(Function {
                address: sym.address(),
                size: sym.size(),
                file_offset,
            });
        }
        Ok(Symbols { functions })
    }

    pub fn get(&self, name: &str) -> Option<Function> {
        self.functions.get(name).copied()
    }
}

/// (virtual address, size in memory, file offset) of each PT_LOAD segment.
fn load_segments(elf: &ElfFile64<Endianness>) -> Result<Vec<(u64, u64, u64)>> {
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

fn file_offset_of(segments: &[(u64, u64, u64)], address: u64) -> Option<u64> {
    segments
        .iter()
        .find(|(vaddr, memsz, _)| address >= *vaddr && address - vaddr < *memsz)
        .map(|(vaddr, _, offset)| address - vaddr + offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_exported_functions_of_libc() {
        let libc = Path::new("/lib/x86_64-linux-gnu/libc.so.6");
        let symbols = Symbols::read(libc).unwrap();
        let write = symbols.get("write").expect("libc exports write");
        assert!(write.size > 0);
        assert!(write.file_offset > 0);
        assert!(symbols.get("no_such_function_here").is_none());
    }

    #[test]
    fn file_offset_follows_the_segment() {
        let segments = [(0x0, 0x1000, 0x0), (0x2000, 0x500, 0x1000)];
        assert_eq!(file_offset_of(&segments, 0x10), Some(0x10));
        assert_eq!(file_offset_of(&segments, 0x2010), Some(0x1010));
        assert_eq!(file_offset_of(&segments, 0x1800), None);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(Symbols::parse(b"").is_err());
        assert!(Symbols::parse(b"\x7fELF garbage that is not an elf file at all").is_err());
        let mut truncated = fs::read("/lib/x86_64-linux-gnu/libc.so.6").unwrap();
        truncated.truncate(4096);
        let _ = Symbols::parse(&truncated);
    }
}
