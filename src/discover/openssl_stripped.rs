//! OpenSSL 3 linked into an executable without a symbol table (`gcc
//! -static` with `libssl.a`, then `strip`): `SSL_write` and `SSL_read`
//! found from the code, on x86-64 and aarch64.
//!
//! The anchor OpenSSL 3 cannot remove: every error it reports is
//! `ERR_raise(ERR_LIB_SSL, reason)`, which expands to `ERR_new();
//! ERR_set_debug(OPENSSL_FILE, OPENSSL_LINE, OPENSSL_FUNC); ERR_set_error(..)`,
//! so the code of `ssl/ssl_lib.c` passes the file's name and its own
//! function's name (`__func__`) to one function. `SSL_write` and `SSL_read`
//! report a negative length (`SSL_R_BAD_LENGTH`) themselves, as their
//! internal `ssl_write_internal` and `ssl_read_internal` report an
//! uninitialised handshake (OpenSSL 3.0 to 3.6). The function that passes
//! "SSL_write" with `ssl_lib.c` is SSL_write itself, unless the compiler
//! inlined it into another (then another name would be passed, or it
//! would be found twice: refused).
//!
//! Checked by the call graph: `SSL_write` must call the one function
//! reporting as `ssl_write_internal`, `SSL_read` the one reporting as
//! `ssl_read_internal`, and every report of ssl_lib.c must go to one and
//! the same `ERR_set_debug`. Function starts come from `.eh_frame_hdr`.
//! OpenSSL 1.1.1 reports errors by number, not by name: such a file is
//! refused with a message. `SSL_write_ex` and `SSL_read_ex` report nothing
//! of their own and are not found: a program calling them is not captured.
//!
//! Every read is bounded: these bytes come from any file on the host.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use anyhow::{bail, Context, Result};
use object::read::elf::ElfFile64;
use object::{Endianness, ReadRef};

use super::elf::{file_offset_of, load_segments, Function, Isa};
use super::text::{
    c_strings, containing, executable_segment, function_starts, instruction_set, strings_ending_with, Text,
    MAX_FUNCTION,
};
use super::trace::{trace, Aarch64, Event, Machine, Target, Value, X86_64};

/// The source file name OpenSSL's `OPENSSL_FILE` ends with (`../ssl/ssl_lib.c`
/// in Debian's build).
const SOURCE_FILE_SUFFIX: &[u8] = b"ssl/ssl_lib.c";
/// Functions referring to ssl_lib.c that are traced (it has a few hundred).
const MAX_FUNCTIONS: usize = 4096;

const WRITE: &str = "SSL_write";
const READ: &str = "SSL_read";
const WRITE_INTERNAL: &str = "ssl_write_internal";
const READ_INTERNAL: &str = "ssl_read_internal";

/// Where OpenSSL's exported plaintext functions are in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpensslPoints {
    pub write: Function,
    pub read: Function,
}

/// `Ok(None)`: no OpenSSL ssl_lib.c in this file. An error: it is there
/// but its functions could not be found with certainty (not probed).
pub fn find<'d, R: ReadRef<'d>>(data: R) -> Result<Option<OpensslPoints>> {
    find_checked(data, true)
}

/// [`find`] in a file of either instruction set, whatever this machine is
/// (what tests read; a probe never goes on code of another one).
pub fn find_in<'d, R: ReadRef<'d>>(data: R) -> Result<Option<OpensslPoints>> {
    find_checked(data, false)
}

fn find_checked<'d, R: ReadRef<'d>>(data: R, host_only: bool) -> Result<Option<OpensslPoints>> {
    let Ok(elf) = ElfFile64::<Endianness, R>::parse(data) else { return Ok(None) };
    let files = source_file_strings(&elf, data);
    if files.is_empty() {
        return Ok(None);
    }
    let found = match instruction_set(&elf, host_only)? {
        Isa::X86_64 => find_functions::<X86_64, R>(&elf, data, &files),
        Isa::Aarch64 => find_functions::<Aarch64, R>(&elf, data, &files),
    };
    found.context("OpenSSL's ssl_lib.c is linked in without symbols").map(Some)
}

/// Addresses of the NUL-terminated strings ending with `ssl/ssl_lib.c`:
/// where each starts, and (should a longer string have been merged into
/// it) where the suffix starts; the code may form either.
fn source_file_strings<'d, R: ReadRef<'d>>(elf: &ElfFile64<'d, Endianness, R>, data: R) -> HashSet<u64> {
    strings_ending_with(elf, data, SOURCE_FILE_SUFFIX).into_iter().flat_map(|s| [s.start, s.tail]).collect()
}

/// Per function traced: the function names it reports as, and its calls.
#[derive(Default)]
struct Reports {
    /// Function name -> the functions passing it with ssl_lib.c.
    by_name: BTreeMap<&'static str, BTreeSet<u64>>,
    /// Every function ERR_set_debug-like calls with ssl_lib.c went to.
    debug_callees: HashSet<u64>,
    /// Function -> its direct calls.
    calls: BTreeMap<u64, HashSet<u64>>,
}

fn find_functions<'d, M: Machine, R: ReadRef<'d>>(
    elf: &ElfFile64<'d, Endianness, R>,
    data: R,
    files: &HashSet<u64>,
) -> Result<OpensslPoints> {
    let names: Vec<(u64, &'static str)> = [WRITE, READ, WRITE_INTERNAL, READ_INTERNAL]
        .into_iter()
        .flat_map(|name| c_strings(elf, data, name.as_bytes()).into_iter().map(move |at| (at, name)))
        .collect();
    let starts = function_starts(elf, data)?;
    let code = executable_segment(elf, data)?;
    let reports = trace_reports::<M>(&code, &starts, files, &names)?;
    if reports.debug_callees.len() != 1 {
        bail!(
            "its error reports call {} different functions, not one ERR_set_debug (OpenSSL before 3.0 reports \
             errors by number and is not found without symbols)",
            reports.debug_callees.len()
        );
    }
    let only = |name: &str| -> Result<u64> {
        match reports.by_name.get(name).map(|set| set.iter().copied().collect::<Vec<_>>()).unwrap_or_default()
            [..]
        {
            [one] => Ok(one),
            [] => bail!("no function reports its errors as {name}"),
            ref all => bail!("{} functions report their errors as {name} ({all:#x?})", all.len()),
        }
    };
    let calls = |from: u64, to: u64| reports.calls.get(&from).is_some_and(|c| c.contains(&to));
    let (write, read) = (only(WRITE)?, only(READ)?);
    for (outer, inner, inner_name, outer_name) in [
        (write, only(WRITE_INTERNAL)?, WRITE_INTERNAL, WRITE),
        (read, only(READ_INTERNAL)?, READ_INTERNAL, READ),
    ] {
        if !calls(outer, inner) {
            bail!("the {outer_name} found at {outer:#x} does not call the {inner_name} found at {inner:#x}");
        }
    }
    let segments = load_segments(elf)?;
    let function = |start: u64| -> Result<Function> {
        let (start, end) = containing(&starts, start).context("a function outside .eh_frame_hdr")?;
        let file_offset = file_offset_of(&segments, start).context("a function outside the file")?;
        Ok(Function { address: start, size: end - start, file_offset })
    };
    Ok(OpensslPoints { write: function(write)?, read: function(read)? })
}

/// Traces every function that forms ssl_lib.c's name: the calls that pass
/// it as the first argument and a function name as the third are its
/// error reports.
fn trace_reports<M: Machine>(
    code: &Text,
    starts: &[u64],
    files: &HashSet<u64>,
    names: &[(u64, &'static str)],
) -> Result<Reports> {
    let mut reports = Reports::default();
    for site in M::address_references(code.bytes, code.address, files) {
        let Some((start, end)) = containing(starts, site) else { continue };
        if reports.calls.contains_key(&start) {
            continue;
        }
        if reports.calls.len() >= MAX_FUNCTIONS {
            bail!("more than {MAX_FUNCTIONS} functions refer to ssl_lib.c");
        }
        let mut calls = HashSet::new();
        for event in trace::<M>(code.at(start, end.min(start + MAX_FUNCTION)), start) {
            let Event::Call { target: Target::Direct(callee), args, .. } = event else { continue };
            calls.insert(callee);
            let [Value::Address(file), _, Value::Address(function), _] = args else { continue };
            if !files.contains(&file) {
                continue;
            }
            reports.debug_callees.insert(callee);
            if let Some(&(_, name)) = names.iter().find(|(at, _)| *at == function) {
                reports.by_name.entry(name).or_default().insert(start);
            }
        }
        reports.calls.insert(start, calls);
    }
    Ok(reports)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::elf::Symbols;

    #[cfg(target_arch = "x86_64")]
    const LIBSSL: &str = "/usr/lib/x86_64-linux-gnu/libssl.so.3";
    #[cfg(target_arch = "aarch64")]
    const LIBSSL: &str = "/usr/lib/aarch64-linux-gnu/libssl.so.3";

    /// Debian's shared libssl.so.3 of this machine's instruction set: the
    /// functions found from its code are the ones its dynamic symbols name
    /// (derived from the file itself, so any build of the package holds).
    #[test]
    fn finds_ssl_write_and_read_in_the_system_libssl() {
        let bytes = std::fs::read(LIBSSL).unwrap_or_else(|e| panic!("{LIBSSL}: {e} (libssl3)"));
        let symbols = Symbols::parse(&bytes[..], &[WRITE, READ]).unwrap();
        let found = find(&bytes[..]).unwrap().expect("ssl_lib.c in libssl");
        assert_eq!(Some(found.write.address), symbols.get(WRITE).map(|f| f.address));
        assert_eq!(Some(found.read.address), symbols.get(READ).map(|f| f.address));
        for cut in [0, 64, 4096, bytes.len() / 3, bytes.len() / 2, bytes.len() - 1] {
            let _ = find(&bytes[..cut]);
        }
    }
}
