//! What a captured frame is: its TCP or UDP flow and payload, read from
//! the link layer up with bounds-checked reads, so that any bytes (cut by
//! the snap length, or garbage) give `None` or a shorter payload, never a
//! panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub const LINKTYPE_ETHERNET: u16 = 1;
pub const LINKTYPE_RAW: u16 = 101;

pub const PROTOCOL_TCP: u8 = 6;
pub const PROTOCOL_UDP: u8 = 17;

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_VLAN: u16 = 0x8100;

const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_DESTINATION: u8 = 60;
/// More extension headers than any real stack sends: past it, give up.
const MAX_IPV6_EXTENSIONS: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// [`PROTOCOL_TCP`] or [`PROTOCOL_UDP`].
    pub protocol: u8,
    /// The TCP or UDP payload within what was captured.
    pub payload: &'a [u8],
}

/// The network layer's addresses and what it carries.
struct Network<'a> {
    src: IpAddr,
    dst: IpAddr,
    protocol: u8,
    /// The transport header and payload, without link-layer padding.
    body: &'a [u8],
}

/// The TCP or UDP flow of a frame of `linktype`; `None` for anything else,
/// for fragments after the first, and when the transport header is cut.
pub fn parse(linktype: u16, data: &[u8]) -> Option<Frame<'_>> {
    let packet = match linktype {
        LINKTYPE_ETHERNET => ethernet_payload(data)?,
        LINKTYPE_RAW => data,
        _ => return None,
    };
    let network = ip(packet)?;
    let (src_port, dst_port, payload) = transport(network.protocol, network.body)?;
    Some(Frame {
        src: SocketAddr::new(network.src, src_port),
        dst: SocketAddr::new(network.dst, dst_port),
        protocol: network.protocol,
        payload,
    })
}

/// The 32-byte random of a TLS ClientHello that `tcp_payload` starts with:
/// what ties a flow to its key log lines.
pub fn client_hello_random(tcp_payload: &[u8]) -> Option<[u8; 32]> {
    const CONTENT_HANDSHAKE: u8 = 22;
    const HANDSHAKE_CLIENT_HELLO: u8 = 1;
    // Record header (5) + handshake header (4) + client_version (2).
    const RANDOM_AT: usize = 11;
    let is_hello = tcp_payload.first() == Some(&CONTENT_HANDSHAKE)
        && tcp_payload.get(1) == Some(&3)
        && tcp_payload.get(5) == Some(&HANDSHAKE_CLIENT_HELLO);
    if !is_hello {
        return None;
    }
    array(tcp_payload, RANDOM_AT)
}

/// The bytes after the Ethernet header and at most one 802.1Q tag, when
/// they are IPv4 or IPv6.
fn ethernet_payload(data: &[u8]) -> Option<&[u8]> {
    let mut ethertype_at = 12;
    if be16(data, ethertype_at)? == ETHERTYPE_VLAN {
        ethertype_at += 4;
    }
    match be16(data, ethertype_at)? {
        ETHERTYPE_IPV4 | ETHERTYPE_IPV6 => data.get(ethertype_at + 2..),
        _ => None,
    }
}

/// IPv4 or IPv6, by the version nibble (which is all raw IP tells).
fn ip(packet: &[u8]) -> Option<Network<'_>> {
    match packet.first()? >> 4 {
        4 => ipv4(packet),
        6 => ipv6(packet),
        _ => None,
    }
}

fn ipv4(packet: &[u8]) -> Option<Network<'_>> {
    let header_len = usize::from(packet.first()? & 0x0f) * 4;
    let total_len = usize::from(be16(packet, 2)?);
    let fragment_offset = be16(packet, 6)? & 0x1fff;
    if header_len < 20 || fragment_offset != 0 {
        return None;
    }
    // A total length of 0 is what segmentation offload leaves on a large
    // outgoing packet: then what was captured is all there is to go by.
    let end = if total_len == 0 { packet.len() } else { total_len.min(packet.len()) };
    Some(Network {
        src: IpAddr::V4(Ipv4Addr::from(array::<4>(packet, 12)?)),
        dst: IpAddr::V4(Ipv4Addr::from(array::<4>(packet, 16)?)),
        protocol: *packet.get(9)?,
        body: packet.get(header_len..end)?,
    })
}

fn ipv6(packet: &[u8]) -> Option<Network<'_>> {
    const HEADER_LEN: usize = 40;
    let payload_len = usize::from(be16(packet, 4)?);
    // 0 is a jumbogram (or offload): the captured bytes bound it.
    let end = if payload_len == 0 { packet.len() } else { (HEADER_LEN + payload_len).min(packet.len()) };
    let (protocol, body_at) = skip_ipv6_extensions(packet, *packet.get(6)?, HEADER_LEN)?;
    Some(Network {
        src: IpAddr::V6(Ipv6Addr::from(array::<16>(packet, 8)?)),
        dst: IpAddr::V6(Ipv6Addr::from(array::<16>(packet, 24)?)),
        protocol,
        body: packet.get(body_at..end)?,
    })
}

/// The upper-layer protocol and where it starts, past the extension
/// headers a TCP or UDP packet commonly has.
fn skip_ipv6_extensions(packet: &[u8], mut next: u8, mut at: usize) -> Option<(u8, usize)> {
    for _ in 0..MAX_IPV6_EXTENSIONS {
        let header_len = match next {
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DESTINATION => (usize::from(*packet.get(at + 1)?) + 1) * 8,
            // Only the first fragment holds the transport header.
            IPV6_FRAGMENT if be16(packet, at + 2)? & 0xfff8 == 0 => 8,
            IPV6_FRAGMENT => return None,
            protocol => return Some((protocol, at)),
        };
        next = *packet.get(at)?;
        at += header_len;
    }
    None
}

/// Ports and payload of a TCP or UDP segment whose header is all there.
fn transport(protocol: u8, segment: &[u8]) -> Option<(u16, u16, &[u8])> {
    let header_len = match protocol {
        PROTOCOL_TCP => usize::from(segment.get(12)? >> 4) * 4,
        PROTOCOL_UDP => 8,
        _ => return None,
    };
    if header_len < 8 {
        return None;
    }
    let payload = segment.get(header_len..)?;
    Some((be16(segment, 0)?, be16(segment, 2)?, payload))
}

fn be16(data: &[u8], at: usize) -> Option<u16> {
    array::<2>(data, at).map(u16::from_be_bytes)
}

fn array<const N: usize>(data: &[u8], at: usize) -> Option<[u8; N]> {
    data.get(at..at.checked_add(N)?)?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const V4_SRC: [u8; 4] = [10, 0, 0, 1];
    const V4_DST: [u8; 4] = [10, 0, 0, 2];

    fn tcp(src_port: u16, dst_port: u16, options: &[u8], payload: &[u8]) -> Vec<u8> {
        let mut segment = Vec::new();
        segment.extend_from_slice(&src_port.to_be_bytes());
        segment.extend_from_slice(&dst_port.to_be_bytes());
        segment.extend_from_slice(&[0; 8]); // sequence and acknowledgment numbers
        segment.push(((20 + options.len()) / 4) as u8 * 16);
        segment.extend_from_slice(&[0x18, 0xff, 0xff, 0, 0, 0, 0]); // flags to urgent pointer
        segment.extend_from_slice(options);
        segment.extend_from_slice(payload);
        segment
    }

    fn udp(src_port: u16, dst_port: u16, payload: &[u8]) -> Vec<u8> {
        let mut datagram = Vec::new();
        datagram.extend_from_slice(&src_port.to_be_bytes());
        datagram.extend_from_slice(&dst_port.to_be_bytes());
        datagram.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
        datagram.extend_from_slice(&[0, 0]);
        datagram.extend_from_slice(payload);
        datagram
    }

    fn ipv4(protocol: u8, options: &[u8], body: &[u8]) -> Vec<u8> {
        let header_len = 20 + options.len();
        let mut packet = vec![0x40 | (header_len / 4) as u8, 0];
        packet.extend_from_slice(&((header_len + body.len()) as u16).to_be_bytes());
        packet.extend_from_slice(&[0, 0, 0x40, 0, 64, protocol, 0, 0]); // id, DF, TTL, checksum
        packet.extend_from_slice(&V4_SRC);
        packet.extend_from_slice(&V4_DST);
        packet.extend_from_slice(options);
        packet.extend_from_slice(body);
        packet
    }

    fn ipv6(next_header: u8, extensions: &[u8], body: &[u8]) -> Vec<u8> {
        let mut packet = vec![0x60, 0, 0, 0];
        packet.extend_from_slice(&((extensions.len() + body.len()) as u16).to_be_bytes());
        packet.extend_from_slice(&[next_header, 64]);
        packet.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        packet.extend_from_slice(&"2001:db8::2".parse::<Ipv6Addr>().unwrap().octets());
        packet.extend_from_slice(extensions);
        packet.extend_from_slice(body);
        packet
    }

    fn ethernet(vlan: Option<u16>, ethertype: u16, packet: &[u8]) -> Vec<u8> {
        let mut frame = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1];
        if let Some(id) = vlan {
            frame.extend_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
            frame.extend_from_slice(&id.to_be_bytes());
        }
        frame.extend_from_slice(&ethertype.to_be_bytes());
        frame.extend_from_slice(packet);
        frame
    }

    fn client_hello(random: [u8; 32]) -> Vec<u8> {
        let mut hello = vec![22, 3, 1, 0, 0x2f, 1, 0, 0, 0x2b, 3, 3];
        hello.extend_from_slice(&random);
        hello.extend_from_slice(&[0; 11]);
        hello
    }

    fn v4(addr: [u8; 4], port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::from(addr)), port)
    }

    #[test]
    fn ipv4_with_options_over_ethernet() {
        let packet = ipv4(PROTOCOL_TCP, &[1, 1, 1, 1, 1, 1, 1, 0], &tcp(40000, 443, &[1, 1, 1, 1], b"hello"));
        let mut data = ethernet(None, ETHERTYPE_IPV4, &packet);
        data.extend_from_slice(&[0; 6]); // Ethernet padding is not payload
        let frame = parse(LINKTYPE_ETHERNET, &data).unwrap();
        assert_eq!(frame.src, v4(V4_SRC, 40000));
        assert_eq!(frame.dst, v4(V4_DST, 443));
        assert_eq!(frame.protocol, PROTOCOL_TCP);
        assert_eq!(frame.payload, b"hello");
    }

    #[test]
    fn vlan_tagged_udp() {
        let data = ethernet(Some(42), ETHERTYPE_IPV4, &ipv4(PROTOCOL_UDP, &[], &udp(5353, 53, b"q")));
        let frame = parse(LINKTYPE_ETHERNET, &data).unwrap();
        assert_eq!((frame.src.port(), frame.dst.port(), frame.protocol), (5353, 53, PROTOCOL_UDP));
        assert_eq!(frame.payload, b"q");
    }

    #[test]
    fn raw_ipv6_past_extension_headers() {
        let hop_by_hop = [IPV6_DESTINATION, 0, 1, 4, 0, 0, 0, 0];
        let destination = [PROTOCOL_TCP, 1, 0, 0, 0, 0, 0, 0, 1, 6, 0, 0, 0, 0, 0, 0];
        let extensions = [&hop_by_hop[..], &destination[..]].concat();
        let data = ipv6(IPV6_HOP_BY_HOP, &extensions, &tcp(443, 50000, &[], b"data"));
        let frame = parse(LINKTYPE_RAW, &data).unwrap();
        assert_eq!(frame.src, "[::1]:443".parse().unwrap());
        assert_eq!(frame.dst, "[2001:db8::2]:50000".parse().unwrap());
        assert_eq!(frame.payload, b"data");
        let over_ethernet = ethernet(None, ETHERTYPE_IPV6, &data);
        assert_eq!(parse(LINKTYPE_ETHERNET, &over_ethernet), Some(frame));
    }

    #[test]
    fn truncated_capture_gives_what_is_there() {
        let data = ipv4(PROTOCOL_TCP, &[], &tcp(1, 2, &[], b"0123456789"));
        let cut = &data[..data.len() - 4];
        assert_eq!(parse(LINKTYPE_RAW, cut).unwrap().payload, b"012345");
        assert_eq!(parse(LINKTYPE_RAW, &data[..40]).unwrap().payload, b"");
        assert_eq!(parse(LINKTYPE_RAW, &data[..39]), None, "a cut TCP header");
        assert_eq!(parse(LINKTYPE_RAW, &data[..19]), None, "a cut IP header");
    }

    #[test]
    fn garbage_and_other_protocols_are_none() {
        let icmp = ipv4(1, &[], &[8, 0, 0, 0]);
        assert_eq!(parse(LINKTYPE_RAW, &icmp), None);
        assert_eq!(parse(LINKTYPE_ETHERNET, &ethernet(None, 0x0806, &[0; 28])), None, "ARP");
        assert_eq!(parse(LINKTYPE_RAW, &[]), None);
        let mut short_total = [0; 60];
        short_total[..4].copy_from_slice(&[0x45, 0, 0, 10]);
        short_total[9] = PROTOCOL_UDP;
        assert_eq!(parse(LINKTYPE_RAW, &short_total), None, "total length below the header");
        assert_eq!(parse(LINKTYPE_RAW, &[0xff; 60]), None);
        assert_eq!(parse(228, &ipv4(PROTOCOL_UDP, &[], &udp(1, 2, b""))), None, "unknown link type");
        let mut fragment = ipv4(PROTOCOL_UDP, &[], &udp(1, 2, b"x"));
        fragment[7] = 1; // fragment offset 8 bytes
        assert_eq!(parse(LINKTYPE_RAW, &fragment), None);
    }

    #[test]
    fn client_hello_random_is_found_only_in_a_client_hello() {
        let random: [u8; 32] = std::array::from_fn(|i| i as u8);
        let hello = client_hello(random);
        assert_eq!(client_hello_random(&hello), Some(random));
        let mut server_hello = hello.clone();
        server_hello[5] = 2;
        assert_eq!(client_hello_random(&server_hello), None);
        assert_eq!(client_hello_random(&hello[..42]), None, "cut inside the random");
        assert_eq!(client_hello_random(b"GET / HTTP/1.1\r\n"), None);
        assert_eq!(client_hello_random(&[]), None);
    }

    /// A small, fixed-seed PRNG: reproducible cases without a crate.
    #[test]
    fn random_bytes_never_panic() {
        let mut next = crate::discover::mutate::noise(0x9e37_79b9_7f4a_7c15);
        // Valid headers (with lengths of 0: "what was captured") before
        // the noise reach the deeper layers that pure noise seldom does.
        let mut ipv4_header = ipv4(PROTOCOL_TCP, &[], &[]);
        ipv4_header[2..4].fill(0);
        let prefixes = [
            Vec::new(),
            ethernet(None, ETHERTYPE_IPV4, &[]),
            ethernet(Some(1), ETHERTYPE_IPV6, &[]),
            ipv4_header[..12].to_vec(),
            ipv4_header,
            ipv6(IPV6_HOP_BY_HOP, &[], &[]),
            ipv6(PROTOCOL_UDP, &[], &[]),
            vec![22, 3, 3, 0, 0x40, 1],
        ];
        let mut frames = 0;
        for case in 0..100_000 {
            let mut data = prefixes[case % prefixes.len()].clone();
            let len = next() % 160;
            data.extend((0..len).map(|_| next() as u8));
            for linktype in [LINKTYPE_ETHERNET, LINKTYPE_RAW] {
                if let Some(frame) = parse(linktype, &data) {
                    assert!(frame.payload.len() <= data.len());
                    frames += 1;
                }
            }
            let _ = client_hello_random(&data);
        }
        assert!(frames > 10_000, "only {frames} cases reached TCP or UDP");
    }
}
