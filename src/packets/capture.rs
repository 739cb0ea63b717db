//! Packets -> pcapng, with the secrets that decrypt them written first.
//!
//! Wireshark reads a file in order, so a Decryption Secrets Block must come
//! before the packets it decrypts. Secrets are known only when a handshake
//! completes, after its first encrypted packets went by. So a flow whose
//! ClientHello carries a client random with no secret yet is held back
//! (with everything after it, which keeps the file in capture order) until
//! its secrets arrive or HOLD passes. Memory for held packets is bounded.
//! "Its secrets" means all a decryption needs: `CLIENT_RANDOM` for TLS 1.2,
//! both application traffic secrets for TLS 1.3 (they come one line at a
//! time: releasing the flow at the first would put the server's first
//! records before the secret that decrypts them).

use std::collections::{HashMap, VecDeque};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Result;

use super::filter::PcapFilter;
use super::frame::{self, Frame};
use crate::bpf::types::ct_sock_owner;
use crate::context::clock::Clock;
use crate::context::{comm_string, tuple_addrs};
use crate::events;
use crate::output::pcapng::{self, PcapngWriter};
use crate::sources::packets::CaptureInterface;

/// How long a handshake's packets wait for its secrets.
const HOLD: Duration = Duration::from_secs(3);
/// Bytes of packets held at most; beyond, the oldest are written anyway.
const MAX_HELD_BYTES: usize = 64 << 20;
/// Tuples whose owner is remembered, and client randoms known.
const MAX_REMEMBERED: usize = 65536;

/// Who owns a local socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    pub uid: u32,
    pub comm: String,
}

/// Unordered pair of endpoints: both directions of a flow.
type FlowKey = (SocketAddr, SocketAddr);

fn flow_key(a: SocketAddr, b: SocketAddr) -> FlowKey {
    if a <= b {
        (a, b)
    } else {
        (b, a)
    }
}

struct HeldPacket {
    flow: Option<FlowKey>,
    interface: u32,
    timestamp_ns: u64,
    original_len: u32,
    outbound: bool,
    comment: Option<String>,
    data: Vec<u8>,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct CaptureStats {
    pub written: u64,
    pub filtered_out: u64,
    /// Packets from an interface cleartap did not attach (none expected).
    pub foreign: u64,
    pub secrets: u64,
    /// Handshakes whose secrets never came within HOLD.
    pub handshakes_without_secrets: u64,
}

pub struct PacketCapture {
    writer: PcapngWriter<Box<dyn Write>>,
    interfaces: Vec<CaptureInterface>,
    /// One compiled filter per interface (by link type).
    filters: Vec<Option<PcapFilter>>,
    clock: Clock,
    owners: HashMap<FlowKey, Owner>,
    owner_order: VecDeque<FlowKey>,
    /// Client random -> the secrets seen for it (`Seen` bits).
    known_randoms: HashMap<[u8; 32], u8>,
    random_order: VecDeque<[u8; 32]>,
    /// Flows waiting for the secrets of this client random, until a deadline.
    awaiting: HashMap<FlowKey, ([u8; 32], Instant)>,
    held: VecDeque<HeldPacket>,
    held_bytes: usize,
    /// HOLD, shorter in tests.
    hold: Duration,
    pub stats: CaptureStats,
}

impl PacketCapture {
    /// Writes the section header and one interface block per interface.
    pub fn new(
        out: Box<dyn Write>,
        interfaces: Vec<CaptureInterface>,
        snaplen: u32,
        filter: Option<&str>,
    ) -> Result<Self> {
        let filters = interfaces
            .iter()
            .map(|i| filter.map(|f| PcapFilter::compile(f, i.linktype, snaplen)).transpose())
            .collect::<Result<Vec<_>>>()?;
        let described: Vec<pcapng::Interface> = interfaces
            .iter()
            .map(|i| pcapng::Interface { name: i.name.clone(), linktype: i.linktype, snaplen })
            .collect();
        let writer = PcapngWriter::new(out, &described)?;
        Ok(PacketCapture {
            writer,
            interfaces,
            filters,
            clock: Clock::now(),
            owners: HashMap::new(),
            owner_order: VecDeque::new(),
            known_randoms: HashMap::new(),
            random_order: VecDeque::new(),
            awaiting: HashMap::new(),
            held: VecDeque::new(),
            held_bytes: 0,
            hold: HOLD,
            stats: CaptureStats::default(),
        })
    }

    /// A process connected or accepted: remember who owns the tuple.
    pub fn owner(&mut self, o: &ct_sock_owner) {
        let (Some(local), Some(remote)) = tuple_addrs(&o.tuple) else { return };
        let owner = Owner { pid: o.pid, uid: o.uid, comm: comm_string(&o.comm) };
        self.remember_owner(local, remote, owner);
    }

    /// Owners known from elsewhere (TLS records name theirs).
    pub fn remember_owner(&mut self, local: SocketAddr, remote: SocketAddr, owner: Owner) {
        let key = (local, remote);
        if self.owners.insert(key, owner).is_none() {
            self.owner_order.push_back(key);
            if self.owner_order.len() > MAX_REMEMBERED {
                if let Some(old) = self.owner_order.pop_front() {
                    self.owners.remove(&old);
                }
            }
        }
    }

    /// One key log line: into the file at once (before any held packet),
    /// and the flows waiting for it may go.
    pub fn secret(&mut self, line: &[u8], client_random: [u8; 32]) -> io::Result<()> {
        self.writer.secrets(line)?;
        self.stats.secrets += 1;
        if !self.known_randoms.contains_key(&client_random) {
            self.random_order.push_back(client_random);
            if self.random_order.len() > MAX_REMEMBERED {
                if let Some(old) = self.random_order.pop_front() {
                    self.known_randoms.remove(&old);
                }
            }
        }
        let seen = self.known_randoms.entry(client_random).or_default();
        *seen |= secret_bit(line);
        if is_complete(*seen) {
            self.awaiting.retain(|_, (random, _)| *random != client_random);
        }
        self.drain(Instant::now())
    }

    pub fn packet(&mut self, p: &events::Packet) -> io::Result<()> {
        let Some(index) = self.interfaces.iter().position(|i| i.ifindex == p.header.ifindex) else {
            self.stats.foreign += 1;
            return Ok(());
        };
        let iface = &self.interfaces[index];
        if let Some(filter) = &self.filters[index] {
            if !filter.matches(p.header.len, p.data) {
                self.stats.filtered_out += 1;
                return Ok(());
            }
        }
        let outbound = p.header.outbound != 0;
        let parsed = frame::parse(iface.linktype, p.data);
        let flow = parsed.as_ref().map(|f| flow_key(f.src, f.dst));
        let comment = parsed.as_ref().and_then(|f| self.owner_comment(f, outbound));
        let now = Instant::now();
        if let (Some(f), Some(key)) = (&parsed, flow) {
            self.await_secrets_of(f, key, now);
        }
        self.held_bytes += p.data.len();
        self.held.push_back(HeldPacket {
            flow,
            interface: index as u32,
            timestamp_ns: wall_ns(&self.clock, p.header.ts_ns),
            original_len: p.header.len,
            outbound,
            comment,
            data: p.data.to_vec(),
        });
        self.drain(now)
    }

    /// A ClientHello whose secrets are not known yet holds its flow.
    fn await_secrets_of(&mut self, f: &Frame, key: FlowKey, now: Instant) {
        if f.protocol != 6 {
            return;
        }
        if let Some(random) = frame::client_hello_random(f.payload) {
            if !self.known_randoms.get(&random).is_some_and(|seen| is_complete(*seen)) {
                self.awaiting.insert(key, (random, now + self.hold));
            }
        }
    }

    fn owner_comment(&self, f: &Frame, outbound: bool) -> Option<String> {
        let key = if outbound { (f.src, f.dst) } else { (f.dst, f.src) };
        let o = self.owners.get(&key)?;
        Some(format!("pid={} comm={} uid={}", o.pid, o.comm, o.uid))
    }

    /// Periodically: release what waited long enough.
    pub fn tick(&mut self) -> io::Result<()> {
        self.drain(Instant::now())
    }

    /// Write held packets from the oldest, stopping at one whose flow still
    /// waits for its secrets (unless memory says otherwise).
    fn drain(&mut self, now: Instant) -> io::Result<()> {
        while let Some(head) = self.held.front() {
            if self.held_bytes <= MAX_HELD_BYTES && self.still_waiting(head.flow, now) {
                break;
            }
            let Some(p) = self.held.pop_front() else { break };
            self.held_bytes -= p.data.len();
            self.write(&p)?;
        }
        Ok(())
    }

    fn still_waiting(&mut self, flow: Option<FlowKey>, now: Instant) -> bool {
        let Some(key) = flow else { return false };
        match self.awaiting.get(&key) {
            Some((_, deadline)) if now < *deadline => true,
            Some(_) => {
                self.awaiting.remove(&key);
                self.stats.handshakes_without_secrets += 1;
                false
            }
            None => false,
        }
    }

    fn write(&mut self, p: &HeldPacket) -> io::Result<()> {
        self.stats.written += 1;
        self.writer.packet(&pcapng::Packet {
            interface: p.interface,
            timestamp_ns: p.timestamp_ns,
            original_len: p.original_len,
            data: &p.data,
            outbound: Some(p.outbound),
            comment: p.comment.as_deref(),
        })
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }

    /// Shutdown: everything held is written, then flushed.
    pub fn finish(&mut self) -> io::Result<()> {
        self.awaiting.clear();
        self.drain(Instant::now())?;
        self.writer.flush()
    }
}

const TLS12: u8 = 1;
const CLIENT_TRAFFIC: u8 = 2;
const SERVER_TRAFFIC: u8 = 4;

/// Which of the secrets a decryption needs a key log line gives.
fn secret_bit(line: &[u8]) -> u8 {
    match line.split(|&b| b == b' ').next().unwrap_or_default() {
        b"CLIENT_RANDOM" => TLS12,
        b"CLIENT_TRAFFIC_SECRET_0" => CLIENT_TRAFFIC,
        b"SERVER_TRAFFIC_SECRET_0" => SERVER_TRAFFIC,
        _ => 0,
    }
}

fn is_complete(seen: u8) -> bool {
    seen & TLS12 != 0 || seen & (CLIENT_TRAFFIC | SERVER_TRAFFIC) == CLIENT_TRAFFIC | SERVER_TRAFFIC
}

fn wall_ns(clock: &Clock, monotonic_ns: u64) -> u64 {
    let wall = clock.wall(monotonic_ns);
    wall.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bpf::types::ct_packet;
    use std::cell::RefCell;
    use std::rc::Rc;

    /// A Write whose bytes the test can read while the capture owns it.
    #[derive(Clone, Default)]
    struct Shared(Rc<RefCell<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.borrow_mut().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    const DSB: u32 = 0x0a;
    const EPB: u32 = 6;

    /// Block types after the section header and interface blocks.
    fn blocks(out: &Shared) -> Vec<u32> {
        let bytes = out.0.borrow();
        let mut types = Vec::new();
        let mut at = 0;
        while at + 8 <= bytes.len() {
            let word = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().unwrap());
            types.push(word(at));
            at += word(at + 4) as usize;
        }
        types.retain(|t| *t == DSB || *t == EPB);
        types
    }

    /// Ethernet + IPv4 + TCP from 10.0.0.1:40000 to 10.0.0.2:443.
    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0; 12];
        f.extend_from_slice(&[0x08, 0x00, 0x45, 0]);
        f.extend_from_slice(&((40 + payload.len()) as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
        f.extend_from_slice(&40000u16.to_be_bytes());
        f.extend_from_slice(&443u16.to_be_bytes());
        f.extend_from_slice(&[0; 8]);
        f.extend_from_slice(&[0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]);
        f.extend_from_slice(payload);
        f
    }

    fn client_hello(random: [u8; 32]) -> Vec<u8> {
        let mut hello = vec![22, 3, 1, 0, 0x2f, 1, 0, 0, 0x2b, 3, 3];
        hello.extend_from_slice(&random);
        hello.extend_from_slice(&[0; 11]);
        hello
    }

    fn capture(out: &Shared, hold: Duration) -> PacketCapture {
        let iface = CaptureInterface { name: "eth9".into(), ifindex: 9, linktype: 1, loopback: false };
        let mut c = PacketCapture::new(Box::new(out.clone()), vec![iface], 65535, None).unwrap();
        c.hold = hold;
        c
    }

    fn feed(c: &mut PacketCapture, data: &[u8]) {
        let header =
            ct_packet { ifindex: 9, len: data.len() as u32, caplen: data.len() as u32, ..Default::default() };
        c.packet(&events::Packet { header, data }).unwrap();
    }

    #[test]
    fn a_handshake_waits_for_its_secrets_which_come_first_in_the_file() {
        let out = Shared::default();
        let mut c = capture(&out, Duration::from_secs(60));
        feed(&mut c, &frame(b"")); // nothing to wait for: written at once
        assert_eq!(blocks(&out), [EPB]);
        feed(&mut c, &frame(&client_hello([5; 32])));
        feed(&mut c, &frame(b"encrypted"));
        assert_eq!(blocks(&out), [EPB], "held until the secrets are known");
        c.secret(b"CLIENT_RANDOM 0505 00\n", [6; 32]).unwrap();
        assert_eq!(blocks(&out), [EPB, DSB], "another handshake's secret releases nothing");
        c.secret(b"CLIENT_RANDOM 0505 01\n", [5; 32]).unwrap();
        assert_eq!(blocks(&out), [EPB, DSB, DSB, EPB, EPB]);
        // A handshake whose secrets are known already is not held.
        feed(&mut c, &frame(&client_hello([5; 32])));
        assert_eq!(blocks(&out).len(), 6);
        assert_eq!(c.stats.written, 4);
    }

    #[test]
    fn a_tls13_handshake_waits_for_both_application_secrets() {
        let out = Shared::default();
        let mut c = capture(&out, Duration::from_secs(60));
        feed(&mut c, &frame(&client_hello([8; 32])));
        feed(&mut c, &frame(b"server's first record"));
        for label in
            ["CLIENT_HANDSHAKE_TRAFFIC_SECRET", "SERVER_HANDSHAKE_TRAFFIC_SECRET", "CLIENT_TRAFFIC_SECRET_0"]
        {
            c.secret(format!("{label} 0808 00\n").as_bytes(), [8; 32]).unwrap();
            assert!(!blocks(&out).contains(&EPB), "released at {label}");
        }
        c.secret(b"SERVER_TRAFFIC_SECRET_0 0808 00\n", [8; 32]).unwrap();
        assert_eq!(blocks(&out), [DSB, DSB, DSB, DSB, EPB, EPB]);
    }

    #[test]
    fn a_handshake_without_secrets_is_written_after_the_hold() {
        let out = Shared::default();
        let mut c = capture(&out, Duration::from_millis(20));
        feed(&mut c, &frame(&client_hello([7; 32])));
        assert!(blocks(&out).is_empty());
        std::thread::sleep(Duration::from_millis(30));
        c.tick().unwrap();
        assert_eq!(blocks(&out), [EPB]);
        assert_eq!(c.stats.handshakes_without_secrets, 1);
    }

    #[test]
    fn the_end_writes_everything_held() {
        let out = Shared::default();
        let mut c = capture(&out, Duration::from_secs(60));
        feed(&mut c, &frame(&client_hello([8; 32])));
        feed(&mut c, &frame(b"x"));
        c.finish().unwrap();
        assert_eq!(blocks(&out), [EPB, EPB]);
    }

    #[test]
    fn packets_name_the_owner_of_their_local_socket() {
        let out = Shared::default();
        let mut c = capture(&out, Duration::from_secs(60));
        let local: SocketAddr = "10.0.0.1:40000".parse().unwrap();
        let remote: SocketAddr = "10.0.0.2:443".parse().unwrap();
        c.remember_owner(local, remote, Owner { pid: 42, uid: 1000, comm: "curl".into() });
        let f = frame(b"");
        let parsed = frame::parse(1, &f).unwrap();
        assert_eq!(c.owner_comment(&parsed, true).as_deref(), Some("pid=42 comm=curl uid=1000"));
        assert_eq!(c.owner_comment(&parsed, false), None, "inbound: the destination is local");
    }
}
