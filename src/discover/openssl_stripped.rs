//! OpenSSL 3 or 1.1.1 linked into an executable without a symbol table
//! (`gcc -static` with `libssl.a`, then `strip`): `SSL_write` and
//! `SSL_read` found from the code, on x86-64 and aarch64.
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
//! OpenSSL 1.1.1 names the reporting function by a number instead
//! (`ERR_put_error(ERR_LIB_SSL, SSL_F_SSL_WRITE, reason, file, line)`,
//! see [`FUNCTION_CODES`]); the rest is the same.
//!
//! `SSL_write_ex` and `SSL_read_ex` report nothing of their own, but they
//! and the plain functions all go through `ssl_write_internal` and
//! `ssl_read_internal`, which the check above finds: those are what is
//! probed (see [`Internal`]), so a program calling only the _ex functions
//! is captured too. Their count pointer is the 4th argument, or for
//! `ssl_write_internal` from OpenSSL 3.3 the 5th (a `flags` argument comes
//! first); which one is read from the plain function's own call: a local
//! variable's address, or 0 for `flags`.
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
/// Direct calls of an internal function looked at for the _ex one (it has
/// a handful: the plain and _ex functions, the SSL BIO).
const MAX_CALL_SITES: usize = 64;

const WRITE: &str = "SSL_write";
const READ: &str = "SSL_read";
const WRITE_INTERNAL: &str = "ssl_write_internal";
const READ_INTERNAL: &str = "ssl_read_internal";

/// OpenSSL 1.1.1 reports `SSLerr(function, reason)` as
/// `ERR_put_error(ERR_LIB_SSL, function, reason, OPENSSL_FILE, OPENSSL_LINE)`,
/// naming functions by the codes of its `sslerr.h`, which every 1.1.1
/// release keeps (they are part of its error codes' ABI).
const ERR_LIB_SSL: u64 = 20;
const FUNCTION_CODES: [(u64, &str); 4] =
    [(208, WRITE), (223, READ), (524, WRITE_INTERNAL), (523, READ_INTERNAL)];

/// Where OpenSSL's plaintext functions are in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpensslPoints {
    pub write: Function,
    pub read: Function,
    /// `ssl_write_internal`, or why it is not to be probed.
    pub write_internal: Result<Internal, String>,
    /// `ssl_read_internal`, or why not.
    pub read_internal: Result<Internal, String>,
}

/// Which argument of an internal function points to the count of bytes
/// it wrote or read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CountArgument {
    /// `(ssl, buf, num, size_t *count)`: reads always, writes to 3.2.
    Fourth,
    /// `(ssl, buf, num, uint64_t flags, size_t *written)`: writes from 3.3.
    Fifth,
}

/// `ssl_write_internal` or `ssl_read_internal`: the function behind the
/// plain and the _ex one, and the return addresses of their calls to it
/// (which name the function a record came through).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Internal {
    pub address: u64,
    pub file_offset: u64,
    pub count: CountArgument,
    /// After the plain function's call (`SSL_write`, `SSL_read`).
    pub plain_returns_to: u64,
    /// After the call of the one function passing it its own first four
    /// arguments unchanged (`SSL_write_ex`, from 3.3 `SSL_write_ex2`;
    /// `SSL_read_ex`), when there is exactly one.
    pub ex_returns_to: Option<u64>,
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
            "its error reports call {} different functions, not one ERR_set_debug (3.x) or ERR_put_error (1.1.1)",
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
    let (write_inner, read_inner) = (only(WRITE_INTERNAL)?, only(READ_INTERNAL)?);
    for (outer, inner, inner_name, outer_name) in
        [(write, write_inner, WRITE_INTERNAL, WRITE), (read, read_inner, READ_INTERNAL, READ)]
    {
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
    let (write, read) = (function(write)?, function(read)?);
    let internal = |outer: Function, inner: u64, name: &'static str, write: bool| {
        let file_offset = file_offset_of(&segments, inner).context("outside the file")?;
        internal::<M>(&code, &starts, outer, inner, file_offset, write).context(name)
    };
    let message = |e: anyhow::Error| format!("{e:#}");
    Ok(OpensslPoints {
        write_internal: internal(write, write_inner, WRITE_INTERNAL, true).map_err(message),
        read_internal: internal(read, read_inner, READ_INTERNAL, false).map_err(message),
        write,
        read,
    })
}

/// `inner`, called by the plain function `outer`: where its count
/// argument is, from the call (`write`: the write side, where it may be
/// the 5th), and the calls that name its records.
fn internal<M: Machine>(
    code: &Text,
    starts: &[u64],
    outer: Function,
    inner: u64,
    file_offset: u64,
    write: bool,
) -> Result<Internal> {
    let calls_in = |start: u64, end: u64| {
        trace::<M>(code.at(start, end.min(start + MAX_FUNCTION)), start).into_iter().filter_map(|e| match e {
            Event::Call { next, target: Target::Direct(to), args, .. } if to == inner => Some((next, args)),
            _ => None,
        })
    };
    let plain: Vec<_> = calls_in(outer.address, outer.address + outer.size).collect();
    let [(plain_returns_to, [Value::Arg(0, 0), Value::Arg(1, 0), _, count])] = plain[..] else {
        bail!("the plain function's call of it was not recognised ({} calls)", plain.len());
    };
    let count = match count {
        Value::Stack(_) => CountArgument::Fourth,
        Value::Const(0) if write => CountArgument::Fifth,
        other => bail!("its 4th argument is neither a local variable's address nor 0 ({other:?})"),
    };
    let own_arguments = [Value::Arg(0, 0), Value::Arg(1, 0), Value::Arg(2, 0), Value::Arg(3, 0)];
    let mut ex: Vec<u64> = Vec::new();
    for site in M::direct_calls_to(code.bytes, code.address, inner).into_iter().take(MAX_CALL_SITES) {
        let Some((start, end)) = containing(starts, site) else { continue };
        if start == outer.address {
            continue;
        }
        ex.extend(calls_in(start, end).filter(|(_, args)| *args == own_arguments).map(|(next, _)| next));
    }
    ex.sort_unstable();
    ex.dedup();
    Ok(Internal {
        address: inner,
        file_offset,
        count,
        plain_returns_to,
        ex_returns_to: match ex[..] {
            [one] => Some(one),
            _ => None,
        },
    })
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
            let name = match args {
                // 3.x: ERR_set_debug(file, line, func).
                [Value::Address(file), _, Value::Address(function), _] if files.contains(&file) => {
                    names.iter().find(|(at, _)| *at == function).map(|&(_, name)| name)
                }
                // 1.1.1: ERR_put_error(ERR_LIB_SSL, func, reason, file, line).
                [Value::Const(ERR_LIB_SSL), Value::Const(code), _, Value::Address(file)]
                    if files.contains(&file) =>
                {
                    FUNCTION_CODES.iter().find(|(c, _)| *c == code & 0xffff_ffff).map(|&(_, name)| name)
                }
                _ => continue,
            };
            reports.debug_callees.insert(callee);
            if let Some(name) = name {
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
        check_functions(LIBSSL);
    }

    /// OpenSSL 1.1.1 (built by scripts/build-openssl111), whose reports
    /// name functions by number.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn finds_ssl_write_and_read_and_their_internal_functions_in_openssl_111() {
        check_functions(LIBSSL_111);
        check_internal_functions(LIBSSL_111, (1, 1));
    }

    #[cfg(target_arch = "x86_64")]
    const LIBSSL_111: &str = "/opt/cleartap-test/openssl-1.1.1w/lib/libssl.so.1.1";

    fn check_functions(library: &str) {
        let bytes = std::fs::read(library).unwrap_or_else(|e| panic!("{library}: {e}"));
        let symbols = Symbols::parse(&bytes[..], &[WRITE, READ]).unwrap();
        let found = find(&bytes[..]).unwrap().expect("ssl_lib.c in libssl");
        assert_eq!(Some(found.write.address), symbols.get(WRITE).map(|f| f.address), "{library}");
        assert_eq!(Some(found.read.address), symbols.get(READ).map(|f| f.address), "{library}");
        for cut in [0, 64, 4096, bytes.len() / 3, bytes.len() / 2, bytes.len() - 1] {
            let _ = find(&bytes[..cut]);
        }
    }

    #[cfg(target_arch = "x86_64")]
    type Host = X86_64;
    #[cfg(target_arch = "aarch64")]
    type Host = Aarch64;

    /// The internal functions found in `library` (OpenSSL `version`) are
    /// the ones its exported _ex functions call first, with the count in
    /// the argument that version passes it in, and the return addresses of
    /// those calls name the _ex records (derived from its dynamic symbols
    /// and what the wrappers call, not from the search).
    fn check_internal_functions(library: &str, (major, minor): (u32, u32)) {
        let bytes = std::fs::read(library).unwrap_or_else(|e| panic!("{library}: {e}"));
        let new_write = (major, minor) >= (3, 3);
        let write_wrapper = if new_write { "SSL_write_ex2" } else { "SSL_write_ex" };
        let symbols = Symbols::parse(&bytes[..], &[write_wrapper, "SSL_read_ex"]).unwrap();
        let found = find(&bytes[..]).unwrap().expect("ssl_lib.c in libssl");
        let write_count = if new_write { CountArgument::Fifth } else { CountArgument::Fourth };
        for (internal, wrapper, count) in [
            (&found.write_internal, write_wrapper, write_count),
            (&found.read_internal, "SSL_read_ex", CountArgument::Fourth),
        ] {
            let internal = internal.as_ref().unwrap_or_else(|e| panic!("{library}: {e}"));
            let f = symbols.get(wrapper).unwrap_or_else(|| panic!("{wrapper} in {library}"));
            let code = &bytes[f.file_offset as usize..(f.file_offset + f.size) as usize];
            let first_call = trace::<Host>(code, f.address).into_iter().find_map(|e| match e {
                Event::Call { next, target: Target::Direct(to), .. } => Some((to, next)),
                _ => None,
            });
            assert_eq!(
                Some((internal.address, internal.ex_returns_to.unwrap_or(0))),
                first_call,
                "{wrapper}"
            );
            assert_eq!(internal.count, count, "{wrapper} in {library}, OpenSSL {major}.{minor}");
        }
    }

    /// Debian's libssl.so.3, its version from its `openssl` command (the
    /// same source package).
    #[test]
    fn finds_the_internal_functions_in_the_system_libssl() {
        let out = std::process::Command::new("openssl").arg("version").output().expect("openssl (openssl)");
        let text = String::from_utf8(out.stdout).unwrap();
        let version = text.split_whitespace().nth(1).expect("OpenSSL X.Y.Z");
        let mut parts = version.split('.').map(|p| p.parse().unwrap());
        check_internal_functions(LIBSSL, (parts.next().unwrap(), parts.next().unwrap()));
    }

    /// A current OpenSSL (3.5, built by scripts/build-openssl3, which names
    /// its version in VERSION: `openssl-src-300.5.5+3.5.5`): from 3.3
    /// ssl_write_internal takes `flags` before the count, and SSL_write_ex2
    /// calls it.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn finds_the_five_argument_write_of_a_current_openssl() {
        let dir = "/opt/cleartap-test/openssl-3.x";
        let text = std::fs::read_to_string(format!("{dir}/VERSION")).expect("scripts/build-openssl3");
        let version = text.trim().rsplit('+').next().unwrap();
        let mut parts = version.split('.').map(|p| p.parse().unwrap());
        let (major, minor) = (parts.next().unwrap(), parts.next().unwrap());
        assert!((major, minor) >= (3, 3), "{text}: the test wants OpenSSL 3.3 or later");
        check_internal_functions(&format!("{dir}/lib/libssl.so.3"), (major, minor));
    }
}
