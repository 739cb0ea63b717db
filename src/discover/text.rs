//! A file's code as the finders that work without symbols read it: its
//! segments, its one executable segment, where its functions start
//! (`.eh_frame_hdr`, or `.eh_frame`: `strip` keeps both, unwinding needs
//! them), and the strings in it. Shared by the BoringSSL, OpenSSL and NSS
//! finders; every read is bounded.

use std::collections::HashSet;

use anyhow::{bail, Context, Result};
use object::elf::{PF_X, PT_GNU_EH_FRAME, PT_LOAD};
use object::read::elf::{ElfFile64, ProgramHeader};
use object::{Architecture, Endianness, ReadRef};

use super::elf::Isa;

/// The file's instruction set; with `host_only`, only this machine's (a
/// probe never goes on code of another one; tests read both).
pub fn instruction_set<'d, R: ReadRef<'d>>(
    elf: &ElfFile64<'d, Endianness, R>,
    host_only: bool,
) -> Result<Isa> {
    if host_only {
        return Isa::of_elf(elf);
    }
    match object::Object::architecture(elf) {
        Architecture::X86_64 => Ok(Isa::X86_64),
        Architecture::Aarch64 => Ok(Isa::Aarch64),
        other => bail!("machine code for {other:?}, not x86-64 or aarch64"),
    }
}

/// Bytes of one segment read (code or read-only data).
const MAX_SEGMENT: u64 = 256 << 20;
/// Bytes of one function read (and where the last function ends).
pub const MAX_FUNCTION: u64 = 16 * 1024;
/// FDEs read from `.eh_frame` (a large program has a few hundred thousand).
const MAX_FDES: usize = 1 << 22;

/// A file's code: its executable segment.
pub struct Text<'d> {
    pub address: u64,
    pub bytes: &'d [u8],
}

impl Text<'_> {
    /// The bytes of [start, end), clipped to the segment.
    pub fn at(&self, start: u64, end: u64) -> &[u8] {
        let from = start.saturating_sub(self.address).min(self.bytes.len() as u64) as usize;
        let to = end.saturating_sub(self.address).min(self.bytes.len() as u64) as usize;
        &self.bytes[from..to.max(from)]
    }
}

/// (address, bytes) of each PT_LOAD segment, or of the executable ones
/// only, within [`MAX_SEGMENT`]. Read-only data (strings) is searched in
/// all of them: a linker that does not separate code (GNU ld for aarch64,
/// by default) puts it in the executable segment.
pub fn segments<'d, R: ReadRef<'d>>(
    elf: &ElfFile64<'d, Endianness, R>,
    data: R,
    executable_only: bool,
) -> Vec<(u64, &'d [u8])> {
    let endian = elf.endian();
    elf.elf_program_headers()
        .iter()
        .filter(|ph| ph.p_type(endian) == PT_LOAD && (!executable_only || ph.p_flags(endian) & PF_X != 0))
        .filter_map(|ph| {
            let size = ph.p_filesz(endian).min(MAX_SEGMENT);
            Some((ph.p_vaddr(endian), data.read_bytes_at(ph.p_offset(endian), size).ok()?))
        })
        .collect()
}

/// The one executable segment (what linkers make); more is refused rather
/// than guessed through.
pub fn executable_segment<'d, R: ReadRef<'d>>(
    elf: &ElfFile64<'d, Endianness, R>,
    data: R,
) -> Result<Text<'d>> {
    match segments(elf, data, true)[..] {
        [(address, bytes)] => Ok(Text { address, bytes }),
        ref all => bail!("{} executable segments, not one", all.len()),
    }
}

/// Where `needle` starts in `hay` (memchr's SIMD search: every stripped
/// executable's segments are searched at its exec).
pub fn find_all<'a>(hay: &'a [u8], needle: &'a [u8]) -> impl Iterator<Item = usize> + 'a {
    memchr::memmem::find_iter(hay, needle)
}

/// Addresses of `string` as a NUL-terminated string in any loaded
/// segment (also where it ends a longer one the linker merged it into).
pub fn c_strings<'d, R: ReadRef<'d>>(
    elf: &ElfFile64<'d, Endianness, R>,
    data: R,
    string: &[u8],
) -> HashSet<u64> {
    let mut found = HashSet::new();
    for (address, bytes) in segments(elf, data, false) {
        for at in find_all(bytes, string) {
            if bytes.get(at + string.len()) == Some(&0) {
                found.insert(address + at as u64);
            }
        }
    }
    found
}

/// Longest string looked back over from a suffix found in it.
pub const MAX_STRING: usize = 4096;

/// A NUL-terminated string in a loaded segment that ends with a suffix.
pub struct EndingString<'d> {
    /// Where the suffix starts (what a merged string's user points at).
    pub tail: u64,
    /// Where the whole string starts: after the NUL before it, looking
    /// back at most [`MAX_STRING`] bytes.
    pub start: u64,
    pub string: &'d [u8],
}

/// Every NUL-terminated string ending with `suffix`, in any loaded segment.
pub fn strings_ending_with<'d, R: ReadRef<'d>>(
    elf: &ElfFile64<'d, Endianness, R>,
    data: R,
    suffix: &[u8],
) -> Vec<EndingString<'d>> {
    let mut found = Vec::new();
    for (address, bytes) in segments(elf, data, false) {
        for at in find_all(bytes, suffix) {
            let end = at + suffix.len();
            if bytes.get(end) != Some(&0) {
                continue;
            }
            let floor = end.saturating_sub(MAX_STRING);
            let start = bytes[floor..end].iter().rposition(|&b| b == 0).map_or(floor, |nul| floor + nul + 1);
            found.push(EndingString {
                tail: address + at as u64,
                start: address + start as u64,
                string: &bytes[start..end],
            });
        }
    }
    found
}

/// The function around `address`: [start, end) between two entries of
/// the sorted `starts`.
pub fn containing(starts: &[u64], address: u64) -> Option<(u64, u64)> {
    let next = starts.partition_point(|&s| s <= address);
    let start = *starts.get(next.checked_sub(1)?)?;
    let end = starts.get(next).copied().unwrap_or(start.saturating_add(MAX_FUNCTION));
    Some((start, end))
}

/// Function start addresses, sorted, from `.eh_frame_hdr`'s search table
/// (`PT_GNU_EH_FRAME`). The encodings GNU ld, gold and lld write (a
/// 4-byte count, `datarel|sdata4` entries) are read; others are refused.
/// Without that index (`gcc -static` links without `--eh-frame-hdr`), from
/// the `.eh_frame` section's FDEs, which unwinding needs as much.
pub fn function_starts<'d, R: ReadRef<'d>>(elf: &ElfFile64<'d, Endianness, R>, data: R) -> Result<Vec<u64>> {
    let endian = elf.endian();
    let Some(header) = elf.elf_program_headers().iter().find(|ph| ph.p_type(endian) == PT_GNU_EH_FRAME)
    else {
        return eh_frame_starts(elf);
    };
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

/// Function starts from the `.eh_frame` section: each FDE's initial
/// address. gimli reads the entries (any malformed one is an error, not a
/// guess); their count is bounded by the section's size.
fn eh_frame_starts<'d, R: ReadRef<'d>>(elf: &ElfFile64<'d, Endianness, R>) -> Result<Vec<u64>> {
    use gimli::{BaseAddresses, CieOrFde, EhFrame, LittleEndian, UnwindSection};
    let section = object::Object::section_by_name(elf, ".eh_frame")
        .context("no .eh_frame_hdr (PT_GNU_EH_FRAME) nor .eh_frame section to tell where functions start")?;
    let bytes = object::ObjectSection::data(&section).context("reading .eh_frame")?;
    let bytes = &bytes[..bytes.len().min(MAX_SEGMENT as usize)];
    let mut eh_frame = EhFrame::new(bytes, LittleEndian);
    eh_frame.set_address_size(8);
    let bases = BaseAddresses::default().set_eh_frame(object::ObjectSection::address(&section));
    let mut entries = eh_frame.entries(&bases);
    let mut starts = Vec::new();
    while let Some(entry) = entries.next().context(".eh_frame is malformed")? {
        if let CieOrFde::Fde(partial) = entry {
            let fde = partial
                .parse(|section, bases, offset| section.cie_from_offset(bases, offset))
                .context(".eh_frame has a malformed FDE")?;
            starts.push(fde.initial_address());
            if starts.len() > MAX_FDES {
                bail!(".eh_frame has more than {MAX_FDES} FDEs");
            }
        }
    }
    starts.sort_unstable();
    starts.dedup();
    Ok(starts)
}
