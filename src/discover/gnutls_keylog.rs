//! GnuTLS key log points, found in a stripped libgnutls by disassembling
//! exported functions only, so no private struct layout is typed by hand
//! and no debug symbols are needed. The same algorithm runs on x86-64 and
//! aarch64 code: only decoding one instruction into its effect differs
//! ([`x86_64`], [`aarch64`], behind the [`Machine`] trait).
//!
//! GnuTLS >= 3.6.13 routes every secret it derives through
//! `session->internals.keylog_func(session, label, const gnutls_datum_t *secret)`,
//! and `gnutls_init` installs a default one (internal, `_gnutls_nss_keylog_func`)
//! by calling the exported `gnutls_session_set_keylog_function(session, func)`.
//! A uprobe on that default function's entry sees its three arguments in
//! the first three argument registers (rdi, rsi, rdx; x0, x1, x2) for every
//! secret; the session's client random is at `session + client_random_offset`,
//! which `gnutls_session_get_random` gives away
//! (`client->data = session + OFF; client->size = 32`).
//!
//! Found in three steps, each from the code:
//! 1. `gnutls_session_get_random`: the client random's offset (and its
//!    size, 32, stored beside it);
//! 2. `gnutls_init`: the function whose address is the second argument
//!    of its call to the setter (reached directly or through the PLT);
//!    the address is PC-relative (`lea rsi,[rip+X]`, `adrp`+`add`) or
//!    read from a GOT slot the loader fills with it (`adrp`+`ldr`, an
//!    `R_*_RELATIVE` relocation);
//! 3. the second property: that function reads a `gnutls_datum_t`
//!    (8-byte `data` at +0, 4-byte `size` at +8) through its third
//!    argument, which is what the kernel probe reads. Anything else is
//!    refused: no probe rather than a probe on the wrong function.
//!
//! Each function is traced symbolically ([`super::trace`]); decoding is
//! capped at [`super::calls::MAX_FUNCTION`] bytes per function: these
//! bytes come from any file on the host.

use anyhow::{bail, Context, Result};
use object::read::elf::ElfFile64;
use object::{Architecture, Endianness, Object, ReadRef};

use super::calls::function_code;
#[cfg(test)]
use super::calls::MAX_FUNCTION;
use super::elf::{file_offset_of, load_segments, Function, Isa, Symbols};
use super::pinned::PinnedFile;
use super::trace::{
    code_at, executable_ranges, relative_slots, stub_slot, symbol_slots, trace, Aarch64, Event, Machine,
    Target, Value, PLT_STUB_BYTES, X86_64,
};

/// Where to probe for GnuTLS secrets and how to read the client random.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GnutlsKeylogPoints {
    /// File offset of the default key log function `gnutls_init` installs:
    /// what the uprobe attaches to.
    pub keylog_function: u64,
    /// `session + client_random_offset` is the session's 32-byte client random.
    pub client_random_offset: u32,
}

const INIT: &str = "gnutls_init";
const GET_RANDOM: &str = "gnutls_session_get_random";
const SET_KEYLOG: &str = "gnutls_session_set_keylog_function";

/// The client random is near the start of the session struct (0x50 in
/// GnuTLS 3.7); anything past this is not a field offset.
const MAX_CLIENT_RANDOM_OFFSET: i64 = 0x1_0000;
const CLIENT_RANDOM_SIZE: u64 = 32;

const UNAVAILABLE: &str = "GnuTLS key log lines are unavailable for this library";

pub fn find(file: &PinnedFile) -> Result<GnutlsKeylogPoints> {
    let bytes = file.data();
    let elf = ElfFile64::<Endianness, _>::parse(bytes).context("not a 64-bit ELF file")?;
    Isa::of_elf(&elf).with_context(|| UNAVAILABLE.to_string())?;
    find_in(bytes).context("finding the GnuTLS key log function")
}

/// The key log points of a libgnutls of either instruction set (whatever
/// this machine is: [`find`] refuses a foreign one).
pub fn find_in<'d, R: ReadRef<'d>>(bytes: R) -> Result<GnutlsKeylogPoints> {
    let elf = ElfFile64::<Endianness, R>::parse(bytes).context("not a 64-bit ELF file")?;
    match elf.architecture() {
        Architecture::X86_64 => find_for::<X86_64, R>(bytes, &elf),
        Architecture::Aarch64 => find_for::<Aarch64, R>(bytes, &elf),
        other => bail!("machine code for {other:?}, not x86-64 or aarch64; {UNAVAILABLE}"),
    }
}

fn find_for<'d, M: Machine, R: ReadRef<'d>>(
    bytes: R,
    elf: &ElfFile64<'d, Endianness, R>,
) -> Result<GnutlsKeylogPoints> {
    let segments = load_segments(elf)?;
    let symbols = Symbols::parse(bytes, &[INIT, GET_RANDOM, SET_KEYLOG])?;

    let get_random = symbols
        .get(GET_RANDOM)
        .with_context(|| format!("the library does not export {GET_RANDOM}; {UNAVAILABLE}"))?;
    let client_random_offset =
        client_random_offset::<M>(function_code(bytes, get_random), get_random.address)?;

    let set_keylog = symbols.get(SET_KEYLOG).with_context(|| {
        format!("the library does not export {SET_KEYLOG} (GnuTLS older than 3.6.13?); {UNAVAILABLE}")
    })?;
    let field = keylog_func_field::<M>(function_code(bytes, set_keylog), set_keylog.address);
    let init =
        symbols.get(INIT).with_context(|| format!("the library does not export {INIT}; {UNAVAILABLE}"))?;

    let slots = symbol_slots::<M, R>(elf, SET_KEYLOG);
    let is_set_keylog = |target: &Target| match *target {
        Target::Direct(to) => {
            to == set_keylog.address || {
                let stub = code_at(bytes, &segments, to, PLT_STUB_BYTES);
                stub_slot::<M>(stub, to).is_some_and(|s| slots.contains(&s))
            }
        }
        Target::Slot(slot) => slots.contains(&slot),
        Target::Unknown => false,
    };
    let executable = executable_ranges(elf);
    let in_code = |address: u64| executable.iter().any(|&(start, end)| address >= start && address < end);
    let relative = relative_slots::<M, R>(elf);
    let function_at = |value: Value| {
        match value {
            Value::Address(function) => Some(function),
            Value::Loaded(slot) => relative.iter().find(|&&(s, _)| s == slot).map(|&(_, function)| function),
            _ => None,
        }
        .filter(|&function| in_code(function))
    };
    let (_, function) = default_keylog_function::<M>(
        function_code(bytes, init),
        init.address,
        &is_set_keylog,
        field,
        &function_at,
    )?;
    let keylog_function = file_offset_of(&segments, function)
        .filter(|&offset| offset < bytes.len().unwrap_or(0))
        .with_context(|| {
            format!("the default key log function at {function:#x} is not in the file; {UNAVAILABLE}")
        })?;
    let code = function_code(bytes, Function { address: function, size: 0, file_offset: keylog_function });
    if !reads_a_datum_through_its_third_argument::<M>(code, function) {
        bail!(
            "the function gnutls_init installs at {function:#x} does not read a gnutls_datum_t through its \
             third argument; {UNAVAILABLE}"
        );
    }
    Ok(GnutlsKeylogPoints { keylog_function, client_random_offset })
}

/// `gnutls_session_get_random(session, client, server)`: the offset of
/// `client->data = session + OFF`, where `client->size = 32` is stored too.
fn client_random_offset<M: Machine>(code: &[u8], address: u64) -> Result<u32> {
    let mut offsets = Vec::new();
    let mut size_32 = false;
    for event in trace::<M>(code, address) {
        let Event::Store { base, disp, width, value, .. } = event else { continue };
        // Stores through the second argument, `client`.
        let Value::Arg(1, base_offset) = base else { continue };
        match (base_offset.wrapping_add(disp), width, value) {
            (0, 8, Value::Arg(0, offset)) if !offsets.contains(&offset) => offsets.push(offset),
            (8, 4 | 8, Value::Const(size)) if size & 0xffff_ffff == CLIENT_RANDOM_SIZE => size_32 = true,
            _ => {}
        }
    }
    match offsets[..] {
        [offset] if size_32 && (0..MAX_CLIENT_RANDOM_OFFSET).contains(&offset) => Ok(offset as u32),
        [offset] if !size_32 => bail!(
            "{GET_RANDOM} stores client->data = session + {offset:#x} but not client->size = 32; {UNAVAILABLE}"
        ),
        [_, _, ..] => bail!("{GET_RANDOM} stores several client randoms ({offsets:#x?}); {UNAVAILABLE}"),
        _ => bail!(
            "{GET_RANDOM} does not store client->data = session + offset the way we recognise; \
             the client random of GnuTLS sessions cannot be found; {UNAVAILABLE}"
        ),
    }
}

/// `gnutls_session_set_keylog_function(session, func)`: the offset of
/// `session->internals.keylog_func` (`mov [rdi+OFF],rsi`,
/// `str x1,[x0,#OFF]`), when recognised.
fn keylog_func_field<M: Machine>(code: &[u8], address: u64) -> Option<i64> {
    let mut fields = trace::<M>(code, address).into_iter().filter_map(|event| match event {
        Event::Store {
            base: Value::Arg(0, base_offset), disp, width: 8, value: Value::Arg(1, 0), ..
        } => Some(base_offset.wrapping_add(disp)),
        _ => None,
    });
    let field = fields.next()?;
    fields.all(|f| f == field).then_some(field)
}

/// `gnutls_init`: the function whose address is the second argument when
/// it calls `gnutls_session_set_keylog_function`, or, should the call be
/// inlined, the one stored at the keylog_func field. `function_at` says
/// which function a register value is the address of (a PC-relative
/// address, or a GOT slot's relocated contents, in code).
/// Returns (where it is installed, the function's address).
fn default_keylog_function<M: Machine>(
    code: &[u8],
    address: u64,
    is_set_keylog: &dyn Fn(&Target) -> bool,
    field: Option<i64>,
    function_at: &dyn Fn(Value) -> Option<u64>,
) -> Result<(u64, u64)> {
    let events = trace::<M>(code, address);
    let mut found: Vec<(u64, u64)> = Vec::new();
    let mut calls = 0;
    for event in &events {
        let Event::Call { at, target, args: [_, second_arg, ..], .. } = event else { continue };
        if !is_set_keylog(target) {
            continue;
        }
        calls += 1;
        if let Some(function) = function_at(*second_arg) {
            if !found.iter().any(|&(_, f)| f == function) {
                found.push((*at, function));
            }
        }
    }
    if found.is_empty() && calls == 0 {
        // Inlined: `lea reg,[rip+X]; mov [session+field],reg`.
        for event in &events {
            let Event::Store { at, base, disp, width: 8, value } = *event else { continue };
            let offset = match base {
                Value::Arg(_, base_offset) => base_offset.wrapping_add(disp),
                _ => disp,
            };
            let Some(function) = function_at(value).filter(|_| Some(offset) == field) else { continue };
            if !found.iter().any(|&(_, f)| f == function) {
                found.push((at, function));
            }
        }
    }
    let field_text = match field {
        Some(field) => format!(", which stores it at session+{field:#x}"),
        None => String::new(),
    };
    match found[..] {
        [one] => Ok(one),
        [] => bail!(
            "gnutls_init does not install a default key log function we recognise \
             ({calls} calls to {SET_KEYLOG}{field_text}, none with a function's address as the second \
             argument); {UNAVAILABLE}"
        ),
        _ => {
            let all: Vec<String> = found.iter().map(|(_, f)| format!("{f:#x}")).collect();
            bail!("gnutls_init installs several key log functions ({}); {UNAVAILABLE}", all.join(", "))
        }
    }
}

/// The key log function's signature seen from its code: it reads
/// `secret->data` (8 bytes at +0) and `secret->size` (4 bytes at +8)
/// through its third argument, as the kernel probe does.
fn reads_a_datum_through_its_third_argument<M: Machine>(code: &[u8], address: u64) -> bool {
    let events = trace::<M>(code, address);
    let reads = |offset: i64, width: usize| {
        events.iter().any(|event| match *event {
            Event::Load { base: Value::Arg(2, base_offset), disp, width: w } => {
                base_offset.wrapping_add(disp) == offset && w == width
            }
            _ => false,
        })
    };
    reads(0, 8) && reads(8, 4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::path::Path;

    /// The instruction set of this machine: the one the system libgnutls
    /// and `dlopen` use.
    #[cfg(target_arch = "x86_64")]
    type Host = X86_64;
    #[cfg(target_arch = "aarch64")]
    type Host = Aarch64;

    #[cfg(target_arch = "x86_64")]
    const LIB_DIR: &str = "/usr/lib/x86_64-linux-gnu";
    #[cfg(target_arch = "aarch64")]
    const LIB_DIR: &str = "/usr/lib/aarch64-linux-gnu";

    fn libgnutls_path() -> String {
        format!("{LIB_DIR}/libgnutls.so.30")
    }

    /// The system libgnutls; its absence fails the test with the way to
    /// get it rather than passing without checking anything.
    fn libgnutls() -> Vec<u8> {
        let path = libgnutls_path();
        fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}; install it with scripts/install-deps --test"))
    }

    /// What the library itself says, asked at run time: the default key log
    /// function `gnutls_init` installs (as a link-time address) and where
    /// `gnutls_session_get_random` finds the client random. This derives the
    /// expectation without reading any machine code, so it holds for every
    /// build of the package, on either instruction set.
    fn ask_the_library() -> (u64, u32) {
        use std::ffi::{c_char, c_int, c_uint, c_void, CString};
        #[repr(C)]
        struct Datum {
            data: *mut u8,
            size: c_uint,
        }
        type Init = unsafe extern "C" fn(*mut *mut c_void, c_uint) -> c_int;
        type GetKeylog = unsafe extern "C" fn(*mut c_void) -> *const c_void;
        type GetRandom = unsafe extern "C" fn(*mut c_void, *mut Datum, *mut Datum);
        type Deinit = unsafe extern "C" fn(*mut c_void);
        const GNUTLS_CLIENT: c_uint = 1 << 1;

        let library = libgnutls_path();
        let path = CString::new(library.clone()).unwrap();
        // SAFETY: libgnutls is a system library with the C ABI declared
        // above for these four exported functions (GnuTLS >= 3.6.13).
        unsafe {
            let handle = libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
            assert!(!handle.is_null(), "dlopen {library} failed");
            let symbol = |name: &str| {
                let name = CString::new(name).unwrap();
                let found = libc::dlsym(handle, name.as_ptr() as *const c_char);
                assert!(!found.is_null(), "{library} does not export {name:?}");
                found
            };
            let init: Init = std::mem::transmute(symbol(INIT));
            let get_keylog: GetKeylog = std::mem::transmute(symbol("gnutls_session_get_keylog_function"));
            let get_random: GetRandom = std::mem::transmute(symbol(GET_RANDOM));
            let deinit: Deinit = std::mem::transmute(symbol("gnutls_deinit"));

            let mut session = std::ptr::null_mut();
            assert_eq!(init(&mut session, GNUTLS_CLIENT), 0, "gnutls_init failed");
            let function = get_keylog(session);
            let mut client = Datum { data: std::ptr::null_mut(), size: 0 };
            let mut server = Datum { data: std::ptr::null_mut(), size: 0 };
            get_random(session, &mut client, &mut server);
            let client_random_offset = client.data as usize - session as usize;
            assert_eq!(client.size, 32);

            let mut info: libc::Dl_info = std::mem::zeroed();
            assert_ne!(libc::dladdr(function, &mut info), 0, "dladdr of the key log function");
            let address = function as u64 - info.dli_fbase as u64;
            deinit(session);
            (address, client_random_offset as u32)
        }
    }

    #[test]
    fn the_system_libgnutls_agrees_with_itself_at_run_time() {
        let path = libgnutls_path();
        let bytes = libgnutls();
        let points = find(&PinnedFile::open(Path::new(&path)).unwrap()).unwrap();
        let bytes = &bytes[..];
        assert_eq!(find_in(bytes).unwrap(), points);

        let (function, client_random_offset) = ask_the_library();
        let elf = ElfFile64::<Endianness>::parse(bytes).unwrap();
        let segments = load_segments(&elf).unwrap();
        let keylog_function = file_offset_of(&segments, function).unwrap();
        assert_eq!(points, GnutlsKeylogPoints { keylog_function, client_random_offset });

        // The setter stores its argument at one field of the session.
        let symbols = Symbols::parse(bytes, &[SET_KEYLOG, INIT]).unwrap();
        let set_keylog = symbols.get(SET_KEYLOG).unwrap();
        assert!(keylog_func_field::<Host>(function_code(bytes, set_keylog), set_keylog.address).is_some());
    }

    /// Where gnutls_init calls the key log setter: the setter itself, or
    /// the PLT stub that jumps through its GOT slot.
    fn setter_stub<M: Machine>(bytes: &[u8]) -> u64 {
        let elf = ElfFile64::<Endianness>::parse(bytes).unwrap();
        let segments = load_segments(&elf).unwrap();
        let symbols = Symbols::parse(bytes, &[SET_KEYLOG, INIT]).unwrap();
        let slots = symbol_slots::<M, _>(&elf, SET_KEYLOG);
        let is_set_keylog = |t: &Target| match *t {
            Target::Direct(to) => {
                let stub = code_at(bytes, &segments, to, PLT_STUB_BYTES);
                stub_slot::<M>(stub, to).is_some_and(|s| slots.contains(&s))
            }
            _ => false,
        };
        let init = symbols.get(INIT).unwrap();
        let code = function_code(bytes, init);
        let (call_site, _) =
            default_keylog_function::<M>(code, init.address, &is_set_keylog, None, &|v| match v {
                Value::Address(f) | Value::Loaded(f) => Some(f),
                _ => None,
            })
            .unwrap();
        trace::<M>(code, init.address)
            .into_iter()
            .find_map(|event| match event {
                Event::Call { at, target: Target::Direct(to), .. } if at == call_site => Some(to),
                _ => None,
            })
            .expect("gnutls_init calls the setter's PLT stub")
    }

    /// Debian's gnutls_session_get_random (GnuTLS 3.7.9).
    const GET_RANDOM_379: [u8; 39] = [
        0x48, 0x85, 0xf6, // test rsi,rsi
        0x74, 0x0e, // je +0xe
        0x48, 0x8d, 0x47, 0x50, // lea rax,[rdi+0x50]
        0xc7, 0x46, 0x08, 0x20, 0, 0, 0, // mov dword [rsi+8],0x20
        0x48, 0x89, 0x06, // mov [rsi],rax
        0x48, 0x85, 0xd2, // test rdx,rdx
        0x74, 0x0e, // je +0xe
        0x48, 0x83, 0xc7, 0x70, // add rdi,0x70
        0xc7, 0x42, 0x08, 0x20, 0, 0, 0, // mov dword [rdx+8],0x20
        0x48, 0x89, 0x3a, // mov [rdx],rdi
        0xc3, // ret
    ];

    /// aarch64 instruction words as code bytes.
    fn words(ws: &[u32]) -> Vec<u8> {
        ws.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    /// gnutls_session_get_random as GCC builds it for aarch64.
    const GET_RANDOM_ARM64: [u32; 11] = [
        0xb40000a1, // cbz x1, +0x14
        0x91014004, // add x4, x0, #0x50
        0x52800403, // mov w3, #0x20
        0xf9000024, // str x4, [x1]
        0xb9000823, // str w3, [x1, #8]
        0xb40000a2, // cbz x2, +0x14
        0x9101c000, // add x0, x0, #0x70
        0x52800401, // mov w1, #0x20
        0xf9000040, // str x0, [x2]
        0xb9000841, // str w1, [x2, #8]
        0xd65f03c0, // ret
    ];

    #[test]
    fn get_random_as_debian_builds_it() {
        assert_eq!(client_random_offset::<X86_64>(&GET_RANDOM_379, 0x78170).unwrap(), 0x50);
        assert_eq!(client_random_offset::<Aarch64>(&words(&GET_RANDOM_ARM64), 0x7f680).unwrap(), 0x50);
    }

    #[test]
    fn get_random_variants() {
        // mov rax,rdi; add rax,0x48; mov ecx,0x20; mov [rsi+8],ecx; mov [rsi],rax; ret
        let copy_and_add = [
            0x48, 0x89, 0xf8, 0x48, 0x83, 0xc0, 0x48, 0xb9, 0x20, 0, 0, 0, 0x89, 0x4e, 0x08, 0x48, 0x89,
            0x06, 0xc3,
        ];
        assert_eq!(client_random_offset::<X86_64>(&copy_and_add, 0x1000).unwrap(), 0x48);
        // The client store after a ret, reached by a branch:
        // test rsi,rsi; jne +1; ret; lea rax,[rdi+0x30]; mov [rsi],rax; mov dword [rsi+8],0x20; ret
        let after_ret = [
            0x48, 0x85, 0xf6, 0x75, 0x01, 0xc3, 0x48, 0x8d, 0x47, 0x30, 0x48, 0x89, 0x06, 0xc7, 0x46, 0x08,
            0x20, 0, 0, 0, 0xc3,
        ];
        assert_eq!(client_random_offset::<X86_64>(&after_ret, 0x1000).unwrap(), 0x30);
        // A size other than 32 is not the client random.
        let mut size_16 = GET_RANDOM_379;
        size_16[12] = 0x10;
        assert!(client_random_offset::<X86_64>(&size_16, 0x1000).is_err());
        // Client and server swapped (stores through rdx only for the
        // session's first random): the client store is still the rsi one.
        let mut swapped = GET_RANDOM_379;
        swapped[8] = 0x70;
        swapped[27] = 0x50;
        assert_eq!(client_random_offset::<X86_64>(&swapped, 0x1000).unwrap(), 0x70);
        // A call clobbers rax: the stored value is no longer session+k.
        // lea rax,[rdi+0x50]; call +0; mov dword [rsi+8],0x20; mov [rsi],rax; ret
        let clobbered = [
            0x48, 0x8d, 0x47, 0x50, 0xe8, 0, 0, 0, 0, 0xc7, 0x46, 0x08, 0x20, 0, 0, 0, 0x48, 0x89, 0x06, 0xc3,
        ];
        assert!(client_random_offset::<X86_64>(&clobbered, 0x1000).is_err());
        // Truncated anywhere: an error or the offset, never a panic.
        for cut in 0..GET_RANDOM_379.len() {
            let _ = client_random_offset::<X86_64>(&GET_RANDOM_379[..cut], 0x1000);
        }
        assert!(client_random_offset::<X86_64>(&GET_RANDOM_379[..16], 0x1000).is_err());
    }

    #[test]
    fn get_random_variants_on_aarch64() {
        let at = 0x1000;
        // mov x4, x0; add x4, x4, #0x48; mov x3, #0x20; stp x4, x3, [x1]; ret
        let pair = words(&[0xaa0003e4, 0x91012084, 0xd2800403, 0xa9000c24, 0xd65f03c0]);
        assert_eq!(client_random_offset::<Aarch64>(&pair, at).unwrap(), 0x48);
        // The size through a 32-bit register that held something else: w3
        // = 0x20 only after `mov w3, #0x20`, not after `add w3, w0, #0x20`.
        let mut not_const = GET_RANDOM_ARM64;
        not_const[2] = 0x11008003; // add w3, w0, #0x20
        assert!(client_random_offset::<Aarch64>(&words(&not_const), at).is_err());
        // A call between the add and the store: x4 is no longer session+k.
        let mut called = GET_RANDOM_ARM64;
        called[2] = 0x94000000; // bl +0
        assert!(client_random_offset::<Aarch64>(&words(&called), at).is_err());
        // Through the third argument only (the server random): no client.
        let mut server_only = GET_RANDOM_ARM64;
        server_only[3] = 0xd503201f; // nop instead of str x4, [x1]
        assert!(client_random_offset::<Aarch64>(&words(&server_only), at).is_err());
        // A 16-bit size store is not the size.
        let mut narrow = GET_RANDOM_ARM64;
        narrow[4] = 0x79001023; // strh w3, [x1, #8]
        assert!(client_random_offset::<Aarch64>(&words(&narrow), at).is_err());
        // Truncated anywhere, even mid-word: an error or the offset.
        let code = words(&GET_RANDOM_ARM64);
        for cut in 0..code.len() {
            let _ = client_random_offset::<Aarch64>(&code[..cut], at);
        }
        assert!(client_random_offset::<Aarch64>(&code[..16], at).is_err());
    }

    #[test]
    fn init_calls_set_keylog_directly_or_inline() {
        let any_code = |v: Value| match v {
            Value::Address(f) => Some(f),
            _ => None,
        };
        // lea rsi,[rip+0x100]; xor ebx,ebx; call 0x5000; ret  (at 0x1000)
        let mut code = vec![0x48, 0x8d, 0x35, 0x00, 0x01, 0, 0, 0x31, 0xdb, 0xe8];
        code.extend_from_slice(&(0x5000i32 - 0x100e).to_le_bytes());
        code.push(0xc3);
        let direct = |t: &Target| *t == Target::Direct(0x5000);
        let found = default_keylog_function::<X86_64>(&code, 0x1000, &direct, None, &any_code).unwrap();
        assert_eq!(found, (0x1009, 0x1107));
        // Not into code: refused.
        let err =
            default_keylog_function::<X86_64>(&code, 0x1000, &direct, Some(0x660), &|_| None).unwrap_err();
        assert!(err.to_string().contains("does not install a default key log function"), "{err}");
        assert!(err.to_string().contains("session+0x660"), "{err}");
        // A call to something else is not the keylog setter.
        let other = |t: &Target| *t == Target::Direct(0x6000);
        assert!(default_keylog_function::<X86_64>(&code, 0x1000, &other, None, &any_code).is_err());
        // rsi overwritten between the lea and the call.
        let mut overwritten = code.clone();
        overwritten[7..9].copy_from_slice(&[0x31, 0xf6]); // xor esi,esi
        assert!(default_keylog_function::<X86_64>(&overwritten, 0x1000, &direct, None, &any_code).is_err());
        // Inlined: mov rbx,rax; lea rax,[rip+0x200]; mov [rbx+0x660],rax; ret
        let inline =
            [0x48, 0x89, 0xc3, 0x48, 0x8d, 0x05, 0x00, 0x02, 0, 0, 0x48, 0x89, 0x83, 0x60, 0x06, 0, 0, 0xc3];
        let found =
            default_keylog_function::<X86_64>(&inline, 0x1000, &direct, Some(0x660), &any_code).unwrap();
        assert_eq!(found, (0x100a, 0x120a));
        assert!(default_keylog_function::<X86_64>(&inline, 0x1000, &direct, None, &any_code).is_err());
        // The address read from a GOT slot: mov rsi,[rip+0x100]; call 0x5000
        let mut from_got = vec![0x48, 0x8b, 0x35, 0x00, 0x01, 0, 0, 0xe8];
        from_got.extend_from_slice(&(0x5000i32 - 0x100c).to_le_bytes());
        let slot_holds = |v: Value| (v == Value::Loaded(0x1107)).then_some(0x4000);
        let found = default_keylog_function::<X86_64>(&from_got, 0x1000, &direct, None, &slot_holds).unwrap();
        assert_eq!(found, (0x1007, 0x4000));
    }

    #[test]
    fn init_calls_set_keylog_on_aarch64() {
        let at = 0x10000;
        // adrp x1, +2 pages; ldr x1, [x1, #0x40]; mov w19, #0; bl +0x400; ret
        let code = words(&[0xd0000001, 0xf9402021, 0x52800013, 0x94000100, 0xd65f03c0]);
        let slot = at + 0x2000 + 0x40;
        let direct = |t: &Target| *t == Target::Direct(at + 0xc + 0x400);
        // The GOT slot's relocation says which function it holds.
        let slot_holds = |v: Value| (v == Value::Loaded(slot)).then_some(0x558f0);
        let found = default_keylog_function::<Aarch64>(&code, at, &direct, None, &slot_holds).unwrap();
        assert_eq!(found, (at + 0xc, 0x558f0));
        // No relocation for it (or not into code): refused.
        assert!(default_keylog_function::<Aarch64>(&code, at, &direct, None, &|_| None).is_err());
        // x1 overwritten before the call: mov x1, x20.
        let mut overwritten = code.clone();
        overwritten[8..12].copy_from_slice(&0xaa1403e1u32.to_le_bytes());
        assert!(default_keylog_function::<Aarch64>(&overwritten, at, &direct, None, &slot_holds).is_err());
        // A load through x1 after something else than adrp: not a GOT slot.
        let via_register = words(&[0xaa1403e1, 0xf9402021, 0x52800013, 0x94000100]);
        assert!(default_keylog_function::<Aarch64>(&via_register, at, &direct, None, &|v| match v {
            Value::Loaded(_) | Value::Address(_) => Some(1),
            _ => None,
        })
        .is_err());
        // Inlined: adrp x2, +1 page; add x2, x2, #0x120; str x2, [x0, #0x660]; ret
        let inline = words(&[0xb0000002, 0x91048042, 0xf9033002, 0xd65f03c0]);
        let address = |v: Value| match v {
            Value::Address(f) => Some(f),
            _ => None,
        };
        let found = default_keylog_function::<Aarch64>(&inline, at, &direct, Some(0x660), &address).unwrap();
        assert_eq!(found, (at + 8, at + 0x1000 + 0x120));
        assert!(default_keylog_function::<Aarch64>(&inline, at, &direct, Some(0x668), &address).is_err());
    }

    #[test]
    fn set_keylog_field() {
        // mov [rdi+0x660],rsi; ret
        let code = [0x48, 0x89, 0xb7, 0x60, 0x06, 0, 0, 0xc3];
        assert_eq!(keylog_func_field::<X86_64>(&code, 0x1000), Some(0x660));
        assert_eq!(keylog_func_field::<X86_64>(&code[..3], 0x1000), None);
        // mov [rsi+0x660],rdi: the other way round.
        let swapped = [0x48, 0x89, 0xbe, 0x60, 0x06, 0, 0, 0xc3];
        assert_eq!(keylog_func_field::<X86_64>(&swapped, 0x1000), None);
        // str x1, [x0, #0x660]; ret
        assert_eq!(keylog_func_field::<Aarch64>(&words(&[0xf9033001, 0xd65f03c0]), 0x1000), Some(0x660));
        // str w1, [x0, #0x660]: a 32-bit store is not a function pointer.
        assert_eq!(keylog_func_field::<Aarch64>(&words(&[0xb9066001, 0xd65f03c0]), 0x1000), None);
        // str x0, [x1, #0x660]: the other way round.
        assert_eq!(keylog_func_field::<Aarch64>(&words(&[0xf9033020, 0xd65f03c0]), 0x1000), None);
    }

    #[test]
    fn the_key_log_function_reads_a_datum_through_its_third_argument() {
        // cmp byte [rdi+0x71c],0; jne +7; xor eax,eax; ret; nop dword [rax];
        // sub rsp,8; mov ecx,[rdx+8]; mov rdx,[rdx]; call +0; ...; ret
        let x86 = [
            0x80, 0xbf, 0x1c, 0x07, 0, 0, 0, 0x75, 0x07, 0x31, 0xc0, 0xc3, 0x0f, 0x1f, 0x40, 0, 0x48, 0x83,
            0xec, 0x08, 0x8b, 0x4a, 0x08, 0x48, 0x8b, 0x12, 0xe8, 0, 0, 0, 0, 0x31, 0xc0, 0x48, 0x83, 0xc4,
            0x08, 0xc3,
        ];
        assert!(reads_a_datum_through_its_third_argument::<X86_64>(&x86, 0x53160));
        // Through the second argument instead: mov ecx,[rsi+8]; mov rdx,[rsi]
        let mut second = x86;
        second[21..23].copy_from_slice(&[0x4e, 0x08]);
        second[25] = 0x16;
        assert!(!reads_a_datum_through_its_third_argument::<X86_64>(&second, 0x53160));
        // mov x3, x2; ldrb w2, [x0, #1820]; cbnz w2, +0xc; mov w0, #0; ret;
        // stp x29, x30, [sp, #-16]!; mov x29, sp; ldr x2, [x3]; ldr w3, [x3, #8]; bl; ...; ret
        let arm64 = [
            0xaa0203e3, 0x395c7002, 0x35000062, 0x52800000, 0xd65f03c0, 0xa9bf7bfd, 0x910003fd, 0xf9400062,
            0xb9400863, 0x94000040, 0x52800000, 0xa8c17bfd, 0xd65f03c0,
        ];
        assert!(reads_a_datum_through_its_third_argument::<Aarch64>(&words(&arm64), 0x558f0));
        // Only the size (ldr x2, [x3] gone): not enough.
        let mut size_only = arm64;
        size_only[7] = 0xd503201f;
        assert!(!reads_a_datum_through_its_third_argument::<Aarch64>(&words(&size_only), 0x558f0));
        // x3 from x1, not x2: mov x3, x1.
        let mut second = arm64;
        second[0] = 0xaa0103e3;
        assert!(!reads_a_datum_through_its_third_argument::<Aarch64>(&words(&second), 0x558f0));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(find_in(&b""[..]).is_err());
        assert!(find_in(&b"\x7fELF garbage that is not an elf file at all"[..]).is_err());
        let mut next = crate::discover::mutate::noise(0x9e37_79b9_7f4a_7c15);
        for len in [1usize, 7, 64, 4096] {
            let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let _ = client_random_offset::<X86_64>(&bytes, 0x1000);
            let _ = keylog_func_field::<X86_64>(&bytes, 0x1000);
            let _ = default_keylog_function::<X86_64>(&bytes, 0x1000, &|_| true, Some(0x660), &|_| Some(1));
            let _ = trace::<X86_64>(&bytes, u64::MAX - 8);
            let _ = client_random_offset::<Aarch64>(&bytes, 0x1000);
            let _ = keylog_func_field::<Aarch64>(&bytes, 0x1000);
            let _ = default_keylog_function::<Aarch64>(&bytes, 0x1000, &|_| true, Some(0x660), &|_| Some(1));
            let _ = trace::<Aarch64>(&bytes, u64::MAX - 8);
            let _ = reads_a_datum_through_its_third_argument::<Aarch64>(&bytes, 0x1000);
        }
        // Not GnuTLS: an error naming what is missing.
        let libc_path = format!("{LIB_DIR}/libc.so.6");
        let libc = fs::read(&libc_path).unwrap_or_else(|e| panic!("{libc_path}: {e}"));
        let err = find_in(&libc[..]).unwrap_err();
        assert!(err.to_string().contains(GET_RANDOM), "{err}");
        let bytes = libgnutls();
        for cut in [16, 64, 4096, bytes.len() / 2] {
            let _ = find_in(&bytes[..cut]);
        }
    }

    #[test]
    fn mutated_libgnutls_never_panics() {
        mutate_and_find::<Host>(libgnutls());
    }

    /// Finds the key log points in 2000 copies of `bytes` (a libgnutls for
    /// `M`), each with a few bytes changed in the code the search reads.
    fn mutate_and_find<M: Machine>(mut bytes: Vec<u8>) {
        let symbols = Symbols::parse(&bytes[..], &[INIT, GET_RANDOM, SET_KEYLOG]).unwrap();
        let mut ranges: Vec<(usize, usize)> = [INIT, GET_RANDOM, SET_KEYLOG]
            .iter()
            .map(|name| {
                let f = symbols.get(name).unwrap();
                (f.file_offset as usize, f.size.min(MAX_FUNCTION) as usize)
            })
            .collect();
        // The PLT stub gnutls_init calls, and the key log function.
        let stub = setter_stub::<M>(&bytes);
        let elf = ElfFile64::<Endianness>::parse(&bytes[..]).unwrap();
        let segments = load_segments(&elf).unwrap();
        ranges.push((file_offset_of(&segments, stub).unwrap() as usize, PLT_STUB_BYTES as usize));
        let points = find_in(&bytes[..]).unwrap();
        ranges.push((points.keylog_function as usize, 64));
        let mut found = 0;
        crate::discover::mutate::with_changed_bytes(&mut bytes, &ranges, 2_000, |copy| {
            found += usize::from(find_in(copy).is_ok());
        });
        // Most mutations miss the few instructions that matter.
        eprintln!("{found} of 2000 mutated copies still give the key log points");
        assert!(found > 0 && found < 2_000);
        assert_eq!(find_in(&bytes[..]).unwrap(), points);
    }
}
