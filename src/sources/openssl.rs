//! OpenSSL 1.1.x / 3.x and BoringSSL builds that export the same names,
//! as `libssl.so*` or linked into an executable (node).

use std::path::Path;
use std::rc::Rc;

use anyhow::Result;

use super::{Entry, TlsHook, TlsSource, TlsTarget};
use crate::discover::elf::{Function, Symbols};
use crate::discover::pinned::PinnedFile;
use crate::discover::version;
use crate::discover::{boringssl, calls, openssl_stripped};
use crate::events::tls_function;

pub const SOURCE: TlsSource = TlsSource {
    name: "openssl",
    about: "OpenSSL and BoringSSL, shared or linked into an executable",
    hooks: &[
        TlsHook { symbol: "SSL_write", entry: Entry::Plain, function_id: tls_function::SSL_WRITE },
        TlsHook { symbol: "SSL_read", entry: Entry::Plain, function_id: tls_function::SSL_READ },
        TlsHook { symbol: "SSL_write_ex", entry: Entry::Ex, function_id: tls_function::SSL_WRITE_EX },
        TlsHook { symbol: "SSL_read_ex", entry: Entry::Ex, function_id: tls_function::SSL_READ_EX },
        // OpenSSL 3.3+. Without it, a program calling SSL_write_ex2 itself
        // went unseen wherever the internal functions are not probed
        // (versions not known here, builds where that saves nothing).
        TlsHook { symbol: WRITE_EX2, entry: Entry::Ex5, function_id: tls_function::SSL_WRITE_EX2 },
    ],
    file_prefix: "libssl.so",
    version: openssl_version,
    secrets: Some(super::secret_points::openssl),
};

/// A function only BoringSSL's libssl defines.
pub const BORINGSSL_MARKER: &str = "SSL_CTX_set_strict_cipher_list";

/// BoringSSL: its marker function, or, in an executable whose linker left
/// that out (the `boring` crate's programs) and that names no OpenSSL
/// version, its ssl_lib.cc (a scan of the file, spared to OpenSSL's).
pub fn is_boringssl(symbols: &Symbols, file: &PinnedFile, version: Option<&str>) -> bool {
    symbols.get(BORINGSSL_MARKER).is_some() || (version.is_none() && boringssl::is_linked_in(file))
}

/// BoringSSL linked into an executable without a symbol table: its
/// `SSL_write` and `SSL_read` found from the code (see
/// `discover::boringssl`). `Ok(None)`: there is no BoringSSL in it, or the
/// file has a symbol table (then its symbols were what counts). An error
/// says why a BoringSSL found there is not probed.
pub fn stripped_boringssl(file: Rc<PinnedFile>, path: &Path) -> Result<Option<TlsTarget>> {
    if has_symbol_table(&file) {
        return Ok(None);
    }
    let Some(points) = boringssl::find(file.data())? else { return Ok(None) };
    Ok(Some(stripped_target(file, path, "boringssl", points.write, points.read)))
}

/// OpenSSL 3.x or 1.1.1 linked into an executable without a symbol table, as
/// [`stripped_boringssl`] (see `discover::openssl_stripped`), probed at
/// the internal functions behind the plain and the _ex ones where their
/// calls are recognised (else at SSL_write and SSL_read, with a warning
/// that the _ex calls are not seen).
pub fn stripped_openssl(file: Rc<PinnedFile>, path: &Path) -> Result<Option<TlsTarget>> {
    if has_symbol_table(&file) {
        return Ok(None);
    }
    let Some(points) = openssl_stripped::find(file.data())? else { return Ok(None) };
    let mut target = stripped_target(file, path, "openssl", points.write, points.read);
    let version = target.version.as_deref().and_then(major_minor);
    let mut internal = Vec::new();
    for (found, write) in [(points.write_internal, true), (points.read_internal, false)] {
        match found.and_then(|i| stripped_internal_point(i, write, version)) {
            Ok(point) => internal.push(point),
            Err(why) => crate::eprintln_escaped!(
                "cleartap: warning: {}: calls of {} are not seen, {} only: {why}",
                path.display(),
                if write { "SSL_write_ex" } else { "SSL_read_ex" },
                if write { "SSL_write" } else { "SSL_read" },
            ),
        }
    }
    target.probe_internal_points(internal);
    Ok(Some(target))
}

/// The probe point of an internal function found in a stripped OpenSSL
/// (`write`: ssl_write_internal), which stands for the plain and the _ex
/// function. Where the file names its version, that version must take the
/// count where its call was seen to pass it.
fn stripped_internal_point(
    found: openssl_stripped::Internal,
    write: bool,
    version: Option<(u32, u32)>,
) -> std::result::Result<InternalPoint, String> {
    use openssl_stripped::CountArgument::{Fifth, Fourth};
    if let Some((major, minor)) = version {
        let expected = if write && (major, minor) >= (3, 3) { Fifth } else { Fourth };
        if found.count != expected {
            return Err(format!(
                "its call passes the count as the {:?} argument, OpenSSL {major}.{minor} as the {expected:?}",
                found.count
            ));
        }
    }
    let (hook, replaces, names): (TlsHook, &'static [&'static str], [&'static str; 2]) =
        match (write, found.count) {
            (true, Fourth) => (WRITE_INTERNAL, &["SSL_write", "SSL_write_ex"], ["SSL_write", "SSL_write_ex"]),
            (true, Fifth) => {
                (WRITE_INTERNAL5, &["SSL_write", "SSL_write_ex", WRITE_EX2], ["SSL_write", WRITE_EX2])
            }
            (false, Fourth) => (READ_INTERNAL, &["SSL_read", "SSL_read_ex"], ["SSL_read", "SSL_read_ex"]),
            (false, Fifth) => return Err("a read function with a 5th argument".to_string()),
        };
    let caller = |returns_to: u64, name| Caller {
        function_id: hook.function_id,
        delta: returns_to.wrapping_sub(found.address) as i64,
        name,
    };
    let mut callers = vec![caller(found.plain_returns_to, names[0])];
    callers.extend(found.ex_returns_to.map(|at| caller(at, names[1])));
    let function = Function { address: found.address, size: 0, file_offset: found.file_offset };
    Ok(InternalPoint { hook, function, replaces, callers })
}

/// Reading every executable's code would cost every exec'd program a
/// scan: only files without symbols need it (and an unparsable file has
/// nothing to find).
fn has_symbol_table(file: &PinnedFile) -> bool {
    match object::read::elf::ElfFile64::<object::Endianness, _>::parse(file.data()) {
        Ok(elf) => object::Object::section_by_name(&elf, ".symtab").is_some(),
        Err(_) => true,
    }
}

/// The target of a stripped executable whose SSL_write and SSL_read were
/// found from its code.
fn stripped_target(
    file: Rc<PinnedFile>,
    path: &Path,
    library: &'static str,
    write: Function,
    read: Function,
) -> TlsTarget {
    let hook = |symbol: &str| *SOURCE.hooks.iter().find(|h| h.symbol == symbol).expect("an OpenSSL hook");
    // OpenSSL's version string, when the linker kept it: what its secrets
    // are read by (BoringSSL's are found from its code).
    let version = if library == "openssl" { openssl_version(&file, path) } else { None };
    TlsTarget {
        id: file.id(),
        version,
        file,
        path: path.to_path_buf(),
        display_path: path.to_string_lossy().into_owned(),
        library,
        source: Some(&SOURCE),
        hooks: vec![(hook("SSL_write"), write), (hook("SSL_read"), read)],
        go: None,
        library_id: 0,
        callers: Vec::new(),
        secret_points: None,
    }
}

/// `OpenSSL 3.0.19 27 Jan 2026` lives in libcrypto, next to libssl; an
/// executable with OpenSSL linked in carries it itself. The sibling is
/// opened by name: a wrong one can only give a wrong version, which
/// selects struct offsets for key log lines, never where probes go.
fn openssl_version(file: &PinnedFile, path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    match name.strip_prefix("libssl") {
        Some(rest) => {
            let libcrypto = PinnedFile::open(&path.with_file_name(format!("libcrypto{rest}"))).ok()?;
            version::find_after(&libcrypto, b"OpenSSL ")
        }
        None => version::find_after(file, b"OpenSSL "),
    }
}

/// OpenSSL's own plaintext functions, probed instead of the exported ones
/// when that is cheaper (see [`internal_points`]).
pub const WRITE_INTERNAL: TlsHook = TlsHook {
    symbol: "ssl_write_internal",
    entry: Entry::Internal,
    function_id: tls_function::SSL_WRITE_INTERNAL,
};
/// `ssl_write_internal` of OpenSSL 3.3+, whose count pointer is the 5th argument.
pub const WRITE_INTERNAL5: TlsHook = TlsHook { entry: Entry::Internal5, ..WRITE_INTERNAL };
pub const READ_INTERNAL: TlsHook = TlsHook {
    symbol: "ssl_read_internal",
    entry: Entry::Internal,
    function_id: tls_function::SSL_READ_INTERNAL,
};

/// `SSL_write_ex2` (3.3+): `SSL_write_ex` calls it, and it calls
/// `ssl_write_internal` with a `flags` argument before `written`.
pub const WRITE_EX2: &str = "SSL_write_ex2";

/// An API function that calls an internal one: records from the internal
/// probe carry the return address, which names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub function_id: u8,
    /// Return address minus the internal function's address (as linked,
    /// so the same in every process).
    pub delta: i64,
    pub name: &'static str,
}

/// One internal function to probe, the exported hooks it stands for, and
/// their call sites.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InternalPoint {
    pub hook: TlsHook,
    pub function: Function,
    /// The plain function, the _ex one, and from 3.3 `SSL_write_ex2`.
    pub replaces: &'static [&'static str],
    pub callers: Vec<Caller>,
}

/// `SSL_write` and `SSL_write_ex` (`SSL_read`, `SSL_read_ex`) are thin
/// wrappers around `ssl_write_internal` (`ssl_read_internal`), which takes
/// the _ex arguments and returns > 0 on success, from OpenSSL 1.1.1 to 3.6
/// (checked in their sources; the SSL BIO calls them directly too). The
/// exported functions start with `sub rsp`, which a uprobe must
/// single-step, and the internal ones with `push`, which the kernel
/// emulates: one trap per probe hit instead of two (see
/// `discover::calls`). The internal function is found, not assumed: it is
/// the first call of the _ex function, made with its own arguments, and
/// the plain function calls it too. Anything else (another version,
/// BoringSSL, a build that inlines them) keeps the exported probes.
pub fn internal_points<'d, R: object::ReadRef<'d>>(
    file: R,
    symbols: &Symbols,
    version: Option<&str>,
) -> Vec<InternalPoint> {
    let Some((major, minor)) = version.and_then(major_minor) else { return Vec::new() };
    let Ok(elf) = object::read::elf::ElfFile64::<object::Endianness, R>::parse(file) else {
        return Vec::new();
    };
    // The decoding below (calls::) reads x86_64 code, and whether an internal
    // probe point is cheaper was measured there only: elsewhere (aarch64,
    // where uprobes emulate another set of instructions) the exported
    // functions stay probed.
    if object::Object::architecture(&elf) != object::Architecture::X86_64 {
        return Vec::new();
    }
    let Ok(segments) = crate::discover::elf::load_segments(&elf) else { return Vec::new() };
    let (write_replaces, write_wrapper, write_hook): (&[&str], _, _) = match (major, minor) {
        (1, 1) | (3, 0..=2) => (&["SSL_write", "SSL_write_ex"], "SSL_write_ex", WRITE_INTERNAL),
        (3, 3..=6) => (&["SSL_write", "SSL_write_ex", WRITE_EX2], WRITE_EX2, WRITE_INTERNAL5),
        _ => return Vec::new(),
    };
    let sides = [
        (write_replaces, write_wrapper, write_hook),
        (&["SSL_read", "SSL_read_ex"][..], "SSL_read_ex", READ_INTERNAL),
    ];
    sides
        .into_iter()
        .filter_map(|(replaces, wrapper_name, hook)| {
            let code = |f: Function| (calls::function_code(file, f), f.address);
            let plain = symbols.get(replaces[0])?;
            let wrapper = symbols.get(wrapper_name)?;
            let (wrapper_code, plain_code) = (code(wrapper), code(plain));
            let through = *calls::direct_calls(wrapper_code.0, wrapper_code.1).first()?;
            let plain_call = calls::direct_calls(plain_code.0, plain_code.1)
                .into_iter()
                .find(|c| c.target == through.target)?;
            let file_offset = crate::discover::elf::file_offset_of(&segments, through.target)?;
            let internal = Function { address: through.target, size: 0, file_offset };
            let (internal_code, _) = code(internal);
            let cheaper = calls::entry_is_emulated(internal_code, internal.address)
                && !calls::entry_is_emulated(wrapper_code.0, wrapper.address);
            if !through.passes_arguments || !cheaper {
                return None;
            }
            let caller = |call: calls::DirectCall, name| Caller {
                function_id: hook.function_id,
                delta: call.return_address.wrapping_sub(internal.address) as i64,
                name,
            };
            // The call in the wrapper names the wrapper: from 3.3 that is
            // SSL_write_ex2, which SSL_write_ex calls and which programs
            // call directly too (one call site serves both).
            let callers = vec![caller(plain_call, replaces[0]), caller(through, wrapper_name)];
            Some(InternalPoint { hook, function: internal, replaces, callers })
        })
        .collect()
}

/// "3.0.22" -> (3, 0); "1.1.1w" -> (1, 1).
fn major_minor(version: &str) -> Option<(u32, u32)> {
    let mut parts = version.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn points_of(path: &str, version: Option<&str>) -> Option<Vec<InternalPoint>> {
        let bytes = std::fs::read(path).ok()?;
        let symbols = Symbols::parse(&bytes[..], &super::super::wanted_symbols()).unwrap();
        Some(internal_points(&bytes[..], &symbols, version))
    }

    fn names(points: &[InternalPoint]) -> Vec<(&str, Vec<&str>)> {
        points.iter().map(|p| (p.hook.symbol, p.callers.iter().map(|c| c.name).collect())).collect()
    }

    /// Internal points found are whole and right: both functions, each
    /// with its two callers at distinct call sites, at an entry the kernel
    /// emulates. Whether a given build has them at all is the compiler's
    /// choice (OpenSSL's own -O3 build of 3.5 does not): the positive case
    /// is checked on the 1.1.1w the tests build, not on a distribution's.
    fn assert_consistent(path: &str, points: &[InternalPoint]) {
        assert_eq!(
            names(points),
            [
                ("ssl_write_internal", vec!["SSL_write", "SSL_write_ex"]),
                ("ssl_read_internal", vec!["SSL_read", "SSL_read_ex"])
            ],
            "{path}"
        );
        let file = std::fs::read(path).unwrap();
        for p in points {
            assert_eq!(p.hook.entry, Entry::Internal, "{path}");
            let code = calls::function_code(&file[..], p.function);
            assert!(calls::entry_is_emulated(code, p.function.address), "{path}");
            // Distinct call sites: each names one function.
            assert_ne!(p.callers[0].delta, p.callers[1].delta, "{path}");
        }
    }

    #[test]
    fn system_libssl3_internal_points_are_all_or_nothing() {
        let path = "/lib/x86_64-linux-gnu/libssl.so.3";
        let version = openssl_version(&PinnedFile::open(Path::new(path)).unwrap(), Path::new(path));
        let points = points_of(path, version.as_deref()).expect("libssl3 (scripts/install-deps)");
        if !points.is_empty() {
            assert_consistent(path, &points);
            // From 3.3 the write side goes through SSL_write_ex2, which 3.0 lacks.
            assert_eq!(names(&points_of(path, Some("3.3.0")).unwrap()), [names(&points)[1].clone()]);
        }
    }

    #[test]
    fn openssl_111_built_for_the_tests_is_probed_at_its_internal_functions() {
        let path = "/opt/cleartap-test/openssl-1.1.1w/lib/libssl.so.1.1";
        assert!(Path::new(path).exists(), "{path} is missing: run scripts/install-deps --test");
        let points = points_of(path, Some("1.1.1w")).unwrap();
        assert_consistent(path, &points);
    }

    /// 2,000 copies of the 1.1.1w with one to four bytes changed in the
    /// code the search decodes (the exported functions and the internal
    /// ones' entries): each point is found as it was, or not at all (its
    /// exported functions stay probed); never one elsewhere, where a probe
    /// would land inside another instruction.
    #[test]
    fn mutated_code_gives_the_same_internal_points_or_none() {
        let path = "/opt/cleartap-test/openssl-1.1.1w/lib/libssl.so.1.1";
        assert!(Path::new(path).exists(), "{path} is missing: run scripts/install-deps --test");
        let mut bytes = std::fs::read(path).unwrap();
        let symbols = Symbols::parse(&bytes[..], &super::super::wanted_symbols()).unwrap();
        let original = internal_points(&bytes[..], &symbols, Some("1.1.1w"));
        assert_eq!(original.len(), 2, "{path}");
        let mut ranges: Vec<(usize, usize)> = ["SSL_write", "SSL_write_ex", "SSL_read", "SSL_read_ex"]
            .iter()
            .map(|name| symbols.get(name).unwrap())
            .map(|f| (f.file_offset as usize, f.size.clamp(1, 512) as usize))
            .collect();
        ranges.extend(original.iter().map(|p| (p.function.file_offset as usize, 16)));
        let (mut kept, mut dropped) = (0, 0);
        crate::discover::mutate::with_changed_bytes(&mut bytes, &ranges, 2_000, |copy| {
            let points = internal_points(copy, &symbols, Some("1.1.1w"));
            for p in &points {
                assert!(original.contains(p), "a changed copy gave another point: {p:?}");
            }
            kept += points.len();
            dropped += 2 - points.len();
        });
        eprintln!("{kept} points kept, {dropped} dropped over 2000 changed copies");
        assert!(dropped > 0, "no change ever dropped a point: the test reaches nothing");
    }

    /// OpenSSL 3.3+ (scripts/build-openssl3): SSL_write_ex2 is probed,
    /// at itself (its `written` in the 5th argument) or, where the internal
    /// function is probed instead, through its call site. OpenSSL's own
    /// -O3 build tests its argument before the first push, so that no
    /// trap is saved and the exported functions stay probed.
    #[test]
    fn openssl_3x_built_for_the_tests_has_ssl_write_ex2_probed() {
        let path = "/opt/cleartap-test/openssl-3.x/lib/libssl.so.3";
        assert!(Path::new(path).exists(), "{path} is missing: run scripts/install-deps --test");
        let version = openssl_version(&PinnedFile::open(Path::new(path)).unwrap(), Path::new(path));
        let (major, minor) = major_minor(version.as_deref().expect("the version of libcrypto.so.3")).unwrap();
        assert!(major == 3 && minor >= 3, "{version:?}");
        let bytes = std::fs::read(path).unwrap();
        let symbols = Symbols::parse(&bytes[..], &super::super::wanted_symbols()).unwrap();
        assert!(symbols.get(WRITE_EX2).is_some(), "{path} defines no {WRITE_EX2}");
        let hook = SOURCE.hooks.iter().find(|h| h.symbol == WRITE_EX2).unwrap();
        assert_eq!(hook.entry, Entry::Ex5);
        let points = internal_points(&bytes[..], &symbols, version.as_deref());
        if let Some(write) = points.iter().find(|p| p.hook.symbol == WRITE_INTERNAL.symbol) {
            assert_eq!(write.hook.entry, Entry::Internal5);
            assert!(write.replaces.contains(&WRITE_EX2));
            assert_eq!(write.callers.iter().map(|c| c.name).collect::<Vec<_>>(), ["SSL_write", WRITE_EX2]);
        }
    }

    #[test]
    fn unknown_versions_and_garbage_keep_the_exported_functions() {
        let path = "/lib/x86_64-linux-gnu/libssl.so.3";
        for version in [None, Some("4.0.0"), Some("1.0.2u"), Some("3.x"), Some("")] {
            assert_eq!(points_of(path, version).unwrap(), [], "{version:?}");
        }
        let symbols = Symbols::default();
        assert_eq!(internal_points(&b"\x7fELF garbage"[..], &symbols, Some("3.0.2")), []);
        let file = std::fs::read(path).unwrap();
        let symbols = Symbols::parse(&file[..], &super::super::wanted_symbols()).unwrap();
        for cut in [64, 4096, file.len() / 2] {
            let _ = internal_points(&file[..cut], &symbols, Some("3.0.2"));
        }
    }

    #[test]
    fn versions() {
        assert_eq!(major_minor("3.0.22"), Some((3, 0)));
        assert_eq!(major_minor("1.1.1w"), Some((1, 1)));
        assert_eq!(major_minor("3"), None);
    }
}
