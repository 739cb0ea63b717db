//! tcpdump filter expressions, compiled by libpcap itself so that they
//! mean exactly what they mean to tcpdump. libpcap is opened at run time:
//! the binary needs it only when a filter is given.

use std::ffi::{c_char, c_int, c_uint, CStr, CString};

use anyhow::{anyhow, bail, Context, Result};
use libloading::Library;

use super::frame::LINKTYPE_RAW;

/// Debian's name first (libpcap0.8), then the upstream sonames.
const LIBRARY_NAMES: [&str; 3] = ["libpcap.so.0.8", "libpcap.so.1", "libpcap.so"];
const MISSING_LIBRARY: &str = "libpcap is needed for a filter expression: apt-get install libpcap0.8";
/// No netmask: only `ip broadcast` needs one, and it then fails to compile.
const PCAP_NETMASK_UNKNOWN: u32 = 0xffff_ffff;
/// libpcap's DLT for raw IP on Linux; pcap_open_dead takes DLTs, not the
/// LINKTYPE values that files (and the rest of cleartap) use.
const DLT_RAW: c_int = 12;
/// libpcap's largest snap length, for "no limit": the compiled program
/// returns the snap length to accept a packet, so 0 would reject all.
const MAXIMUM_SNAPLEN: c_int = 262_144;
/// The prefix libpcap puts before a parser error, which says nothing the
/// context of our own message does not.
const PARSE_ERROR_PREFIX: &str = "can't parse filter expression: ";

/// `struct pcap`: only ever behind a pointer.
#[repr(C)]
struct Pcap {
    _opaque: [u8; 0],
}

#[repr(C)]
struct BpfInsn {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

#[repr(C)]
struct BpfProgram {
    bf_len: c_uint,
    bf_insns: *mut BpfInsn,
}

#[repr(C)]
struct PcapPkthdr {
    ts: libc::timeval,
    caplen: u32,
    len: u32,
}

type OpenDead = unsafe extern "C" fn(linktype: c_int, snaplen: c_int) -> *mut Pcap;
type Compile = unsafe extern "C" fn(*mut Pcap, *mut BpfProgram, *const c_char, c_int, u32) -> c_int;
type GetErr = unsafe extern "C" fn(*mut Pcap) -> *mut c_char;
type OfflineFilter = unsafe extern "C" fn(*const BpfProgram, *const PcapPkthdr, *const u8) -> c_int;
type FreeCode = unsafe extern "C" fn(*mut BpfProgram);
type Close = unsafe extern "C" fn(*mut Pcap);

/// The libpcap functions used, valid while `library` is loaded.
struct Libpcap {
    open_dead: OpenDead,
    compile: Compile,
    geterr: GetErr,
    offline_filter: OfflineFilter,
    freecode: FreeCode,
    close: Close,
    library: Library,
}

/// A compiled filter, applied to packets in user space.
pub struct PcapFilter {
    program: BpfProgram,
    offline_filter: OfflineFilter,
    freecode: FreeCode,
    /// Dropped after `Drop::drop` has freed the program with it.
    _library: Library,
}

// SAFETY: the program is owned by this value alone and is only read by
// pcap_offline_filter (bpf_filter), which keeps no thread-local state.
unsafe impl Send for PcapFilter {}

impl PcapFilter {
    /// `expression` compiled as tcpdump would for packets of `linktype`
    /// (a LINKTYPE_ value: 1 Ethernet, 101 raw IP) cut at `snaplen`
    /// (0 for no limit).
    pub fn compile(expression: &str, linktype: u16, snaplen: u32) -> Result<PcapFilter> {
        let libpcap = Libpcap::load()?;
        let text = CString::new(expression)
            .with_context(|| format!("filter expression '{expression}': contains a NUL byte"))?;
        let program = libpcap
            .compile_program(&text, dlt(linktype), snaplen_limit(snaplen))
            .map_err(|error| anyhow!("filter expression '{expression}': {error}"))?;
        Ok(PcapFilter {
            program,
            offline_filter: libpcap.offline_filter,
            freecode: libpcap.freecode,
            _library: libpcap.library,
        })
    }

    /// Whether a packet of `wire_len` bytes, of which `data` was captured,
    /// passes the filter.
    pub fn matches(&self, wire_len: u32, data: &[u8]) -> bool {
        let caplen = u32::try_from(data.len()).unwrap_or(u32::MAX);
        let header = PcapPkthdr {
            ts: libc::timeval { tv_sec: 0, tv_usec: 0 },
            caplen,
            // A packet is never shorter than what was captured of it.
            len: wire_len.max(caplen),
        };
        // SAFETY: the program was compiled by pcap_compile and is alive
        // until Drop; bpf_filter reads at most `caplen` bytes of `data`,
        // which is that long.
        unsafe { (self.offline_filter)(&self.program, &header, data.as_ptr()) != 0 }
    }
}

impl Drop for PcapFilter {
    fn drop(&mut self) {
        // SAFETY: the program came from pcap_compile and is freed once,
        // here; the library it lives in is still loaded.
        unsafe { (self.freecode)(&mut self.program) }
    }
}

impl Libpcap {
    fn load() -> Result<Libpcap> {
        let library = LIBRARY_NAMES
            .iter()
            // SAFETY: libpcap's initialisers only set up its own state.
            .find_map(|name| unsafe { Library::new(name) }.ok())
            .context(MISSING_LIBRARY)?;
        // SAFETY: each type matches the function's prototype in pcap/pcap.h.
        unsafe {
            Ok(Libpcap {
                open_dead: symbol(&library, b"pcap_open_dead\0")?,
                compile: symbol(&library, b"pcap_compile\0")?,
                geterr: symbol(&library, b"pcap_geterr\0")?,
                offline_filter: symbol(&library, b"pcap_offline_filter\0")?,
                freecode: symbol(&library, b"pcap_freecode\0")?,
                close: symbol(&library, b"pcap_close\0")?,
                library,
            })
        }
    }

    /// The program, or libpcap's error text. The handle is only needed
    /// to compile: the program does not refer to it.
    fn compile_program(&self, text: &CStr, dlt: c_int, snaplen: c_int) -> Result<BpfProgram, String> {
        // SAFETY: plain integers in, a handle (or NULL) out.
        let handle = unsafe { (self.open_dead)(dlt, snaplen) };
        if handle.is_null() {
            return Err("libpcap could not open a handle".into());
        }
        let handle = DeadHandle { handle, close: self.close };
        let mut program = BpfProgram { bf_len: 0, bf_insns: std::ptr::null_mut() };
        // SAFETY: a live handle, a program to fill and a NUL-terminated
        // expression that outlives the call.
        let status =
            unsafe { (self.compile)(handle.handle, &mut program, text.as_ptr(), 1, PCAP_NETMASK_UNKNOWN) };
        if status != 0 {
            return Err(self.error_text(&handle));
        }
        Ok(program)
    }

    fn error_text(&self, handle: &DeadHandle) -> String {
        // SAFETY: pcap_geterr returns the handle's NUL-terminated error
        // buffer, copied here before the handle is closed.
        let message = unsafe { CStr::from_ptr((self.geterr)(handle.handle)) }.to_string_lossy();
        message.strip_prefix(PARSE_ERROR_PREFIX).unwrap_or(&message).to_string()
    }
}

/// A pcap_open_dead handle, closed when dropped.
struct DeadHandle {
    handle: *mut Pcap,
    close: Close,
}

impl Drop for DeadHandle {
    fn drop(&mut self) {
        // SAFETY: the handle came from pcap_open_dead and is closed once.
        unsafe { (self.close)(self.handle) }
    }
}

/// # Safety
/// `T` must be the function pointer type of the symbol `name`.
unsafe fn symbol<T: Copy>(library: &Library, name: &[u8]) -> Result<T> {
    // SAFETY: the caller vouches for the type; the pointer is only used
    // while `library` stays loaded (it moves along with the pointers).
    match unsafe { library.get::<T>(name) } {
        Ok(function) => Ok(*function),
        Err(error) => bail!("{MISSING_LIBRARY} ({error})"),
    }
}

fn dlt(linktype: u16) -> c_int {
    match linktype {
        LINKTYPE_RAW => DLT_RAW,
        other => c_int::from(other),
    }
}

fn snaplen_limit(snaplen: u32) -> c_int {
    match c_int::try_from(snaplen) {
        Ok(0) | Err(_) => MAXIMUM_SNAPLEN,
        Ok(limit) => limit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ETHERNET: u16 = 1;
    const TCP: u8 = 6;
    const UDP: u8 = 17;

    /// Ethernet (when `ethernet`), IPv4 or IPv6 by the addresses, then a
    /// TCP or UDP header and `payload`.
    fn packet(
        ethernet: bool,
        src: &str,
        dst: &str,
        protocol: u8,
        ports: (u16, u16),
        payload: &[u8],
    ) -> Vec<u8> {
        let (src, dst): (std::net::IpAddr, std::net::IpAddr) = (src.parse().unwrap(), dst.parse().unwrap());
        let mut transport = [ports.0.to_be_bytes(), ports.1.to_be_bytes()].concat();
        if protocol == TCP {
            transport.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]);
        } else {
            transport.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
            transport.extend_from_slice(&[0, 0]);
        }
        transport.extend_from_slice(payload);
        let (ethertype, ip) = match (src, dst) {
            (std::net::IpAddr::V4(s), std::net::IpAddr::V4(d)) => {
                let mut ip = vec![0x45, 0];
                ip.extend_from_slice(&(20 + transport.len() as u16).to_be_bytes());
                ip.extend_from_slice(&[0, 0, 0x40, 0, 64, protocol, 0, 0]);
                ip.extend_from_slice(&[s.octets(), d.octets()].concat());
                (0x0800u16, ip)
            }
            (std::net::IpAddr::V6(s), std::net::IpAddr::V6(d)) => {
                let mut ip = vec![0x60, 0, 0, 0];
                ip.extend_from_slice(&(transport.len() as u16).to_be_bytes());
                ip.extend_from_slice(&[protocol, 64]);
                ip.extend_from_slice(&[s.octets(), d.octets()].concat());
                (0x86dd, ip)
            }
            _ => panic!("mixed address families"),
        };
        let mut frame = Vec::new();
        if ethernet {
            frame.extend_from_slice(&[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1]);
            frame.extend_from_slice(&ethertype.to_be_bytes());
        }
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&transport);
        frame
    }

    fn matches(filter: &PcapFilter, data: &[u8]) -> bool {
        filter.matches(data.len() as u32, data)
    }

    /// The filter; without libpcap the test fails, naming the package.
    fn compiled(expression: &str, linktype: u16) -> PcapFilter {
        if let Err(error) = Libpcap::load() {
            panic!("{error}; install libpcap0.8 with scripts/install-deps --test");
        }
        PcapFilter::compile(expression, linktype, 0).unwrap()
    }

    #[test]
    fn tcp_port() {
        let filter = compiled("tcp port 443", ETHERNET);
        assert!(matches(&filter, &packet(true, "10.0.0.1", "10.0.0.2", TCP, (40000, 443), b"x")));
        assert!(matches(&filter, &packet(true, "10.0.0.2", "10.0.0.1", TCP, (443, 40000), b"")));
        assert!(!matches(&filter, &packet(true, "10.0.0.1", "10.0.0.2", TCP, (40000, 80), b"x")));
        assert!(!matches(&filter, &packet(true, "10.0.0.1", "10.0.0.2", UDP, (40000, 443), b"x")));
    }

    #[test]
    fn host_and_destination_port() {
        let filter = compiled("host 127.0.0.1 and tcp dst port 8443", ETHERNET);
        assert!(matches(&filter, &packet(true, "127.0.0.1", "127.0.0.1", TCP, (40000, 8443), b"")));
        assert!(!matches(&filter, &packet(true, "127.0.0.1", "127.0.0.1", TCP, (8443, 40000), b"")));
        assert!(!matches(&filter, &packet(true, "10.0.0.1", "10.0.0.2", TCP, (40000, 8443), b"")));
    }

    #[test]
    fn negation() {
        let filter = compiled("not tcp", ETHERNET);
        assert!(matches(&filter, &packet(true, "10.0.0.1", "10.0.0.2", UDP, (53, 53), b"q")));
        assert!(!matches(&filter, &packet(true, "10.0.0.1", "10.0.0.2", TCP, (1, 2), b"")));
    }

    #[test]
    fn ipv6_over_ethernet_and_raw_ip() {
        let v6 = |ethernet| packet(ethernet, "::1", "2001:db8::2", TCP, (40000, 443), b"hi");
        let over_ethernet = compiled("ip6 and tcp port 443", ETHERNET);
        assert!(matches(&over_ethernet, &v6(true)));
        assert!(!matches(&over_ethernet, &packet(true, "10.0.0.1", "10.0.0.2", TCP, (40000, 443), b"")));
        let raw = compiled("dst host 2001:db8::2 and tcp port 443", LINKTYPE_RAW);
        assert!(matches(&raw, &v6(false)));
    }

    #[test]
    fn a_cut_packet_is_judged_on_what_was_captured() {
        let filter = compiled("greater 1000 and tcp", ETHERNET);
        let data = packet(true, "10.0.0.1", "10.0.0.2", TCP, (1, 2), b"");
        assert!(filter.matches(1500, &data), "the wire length counts");
        assert!(!filter.matches(0, &data), "never below the captured length");
        assert!(!filter.matches(1500, &data[..20]), "the IP header was not captured");
    }

    #[test]
    fn errors_are_libpcap_s() {
        if Libpcap::load().is_err() {
            eprintln!("skipped: no libpcap");
            return;
        }
        let error = |expression: &str| PcapFilter::compile(expression, ETHERNET, 65535).err().unwrap();
        assert_eq!(error("tcp prot 1").to_string(), "filter expression 'tcp prot 1': syntax error");
        assert_eq!(
            error("tcp port 99999").to_string(),
            "filter expression 'tcp port 99999': illegal port number 99999 > 65535"
        );
        assert!(error("tcp\0").to_string().contains("NUL"));
    }

    #[test]
    fn filters_move_between_threads() {
        fn assert_send<T: Send>() {}
        assert_send::<PcapFilter>();
        let filter = compiled("udp", ETHERNET);
        let data = packet(true, "10.0.0.1", "10.0.0.2", UDP, (1, 2), b"");
        assert!(std::thread::spawn(move || matches(&filter, &data)).join().unwrap());
    }
}
