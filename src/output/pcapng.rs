//! Packets as a pcapng file that Wireshark opens, with the TLS secrets
//! that decrypt them inside it (Decryption Secrets Blocks), so that one
//! file is enough to read the plaintext.
//!
//! Each block is built in memory and written with one `write_all`: a
//! process stopped between two blocks leaves a valid file.

use std::io::{self, Write};

const BLOCK_SECTION_HEADER: u32 = 0x0a0d_0d0a;
const BLOCK_INTERFACE_DESCRIPTION: u32 = 0x0000_0001;
const BLOCK_ENHANCED_PACKET: u32 = 0x0000_0006;
const BLOCK_DECRYPTION_SECRETS: u32 = 0x0000_000a;
const BYTE_ORDER_MAGIC: u32 = 0x1a2b_3c4d;
/// "TLSK": the secrets are NSS key log lines.
const SECRETS_TLS_KEY_LOG: u32 = 0x544c_534b;

const OPT_ENDOFOPT: u16 = 0;
const OPT_COMMENT: u16 = 1;
const SHB_USERAPPL: u16 = 4;
const IF_NAME: u16 = 2;
const IF_TSRESOL: u16 = 9;
const EPB_FLAGS: u16 = 2;

/// Timestamps in nanoseconds (10^-9 s).
const TSRESOL_NANOSECONDS: u8 = 9;
const FLAGS_INBOUND: u32 = 1;
const FLAGS_OUTBOUND: u32 = 2;
/// An option's length is 16 bits: longer text is cut to fit.
const MAX_OPTION_LEN: usize = u16::MAX as usize;

/// An interface packets are captured on, described once at the start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    /// A LINKTYPE_ value (1 Ethernet, 101 raw IP).
    pub linktype: u16,
    /// 0 for no limit.
    pub snaplen: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<'a> {
    /// Index in the interfaces given to [`PcapngWriter::new`].
    pub interface: u32,
    /// Nanoseconds since the Unix epoch.
    pub timestamp_ns: u64,
    /// Length on the wire.
    pub original_len: u32,
    /// The captured bytes, maybe cut by the snap length.
    pub data: &'a [u8],
    /// The direction, when known.
    pub outbound: Option<bool>,
    pub comment: Option<&'a str>,
}

pub struct PcapngWriter<W: Write> {
    out: W,
    interfaces: u32,
}

impl<W: Write> PcapngWriter<W> {
    /// Starts a section on `out` with `interfaces`, in that order.
    pub fn new(out: W, interfaces: &[Interface]) -> io::Result<Self> {
        let count = u32::try_from(interfaces.len()).map_err(|_| invalid("too many interfaces"))?;
        let mut writer = PcapngWriter { out, interfaces: 0 };
        writer.write_block(section_header())?;
        for interface in interfaces {
            writer.write_block(interface_description(interface))?;
        }
        writer.interfaces = count;
        Ok(writer)
    }

    /// Key log lines for the packets written after them (Wireshark reads
    /// secrets in file order).
    pub fn secrets(&mut self, keylog_lines: &[u8]) -> io::Result<()> {
        // An empty block would decrypt nothing.
        if keylog_lines.is_empty() {
            return Ok(());
        }
        self.write_block(decryption_secrets(keylog_lines))
    }

    pub fn packet(&mut self, packet: &Packet) -> io::Result<()> {
        if packet.interface >= self.interfaces {
            return Err(invalid("packet on an interface that was not described"));
        }
        self.write_block(enhanced_packet(packet))
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// The output, flushed first (tests and fuzz targets read it back).
    pub fn into_inner(mut self) -> io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }

    fn write_block(&mut self, block: Block) -> io::Result<()> {
        self.out.write_all(&block.finish()?)
    }
}

fn section_header() -> Block {
    let mut block = Block::new(BLOCK_SECTION_HEADER);
    block.u32(BYTE_ORDER_MAGIC).u16(1).u16(0);
    // -1: the section's length is not known in advance.
    block.bytes.extend_from_slice(&(-1i64).to_le_bytes());
    block.text_option(SHB_USERAPPL, concat!("cleartap ", env!("CARGO_PKG_VERSION")));
    block
}

fn interface_description(interface: &Interface) -> Block {
    let mut block = Block::new(BLOCK_INTERFACE_DESCRIPTION);
    block.u16(interface.linktype).u16(0).u32(interface.snaplen);
    block.text_option(IF_NAME, &interface.name);
    block.option(IF_TSRESOL, &[TSRESOL_NANOSECONDS]);
    block
}

fn decryption_secrets(keylog_lines: &[u8]) -> Block {
    let mut block = Block::new(BLOCK_DECRYPTION_SECRETS);
    block.u32(SECRETS_TLS_KEY_LOG).length(keylog_lines.len()).padded(keylog_lines);
    block
}

fn enhanced_packet(packet: &Packet) -> Block {
    let captured = packet.data.len();
    let mut block = Block::new(BLOCK_ENHANCED_PACKET);
    block.u32(packet.interface).u32((packet.timestamp_ns >> 32) as u32).u32(packet.timestamp_ns as u32);
    // Readers reject a packet captured longer than it was on the wire.
    let original = u32::try_from(captured).map_or(u32::MAX, |c| c.max(packet.original_len));
    block.length(captured).u32(original).padded(packet.data);
    if let Some(comment) = packet.comment {
        block.text_option(OPT_COMMENT, comment);
    }
    if let Some(outbound) = packet.outbound {
        let flags = if outbound { FLAGS_OUTBOUND } else { FLAGS_INBOUND };
        block.option(EPB_FLAGS, &flags.to_le_bytes());
    }
    block
}

fn invalid(reason: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("pcapng: {reason}"))
}

/// A block being built, little-endian (the byte-order magic says so):
/// type, length (set by `finish`), body, options, length again.
struct Block {
    bytes: Vec<u8>,
    has_options: bool,
    /// A length that does not fit its 32-bit field, found while building.
    too_long: bool,
}

impl Block {
    fn new(block_type: u32) -> Block {
        let mut block = Block { bytes: Vec::with_capacity(128), has_options: false, too_long: false };
        block.u32(block_type).u32(0);
        block
    }

    fn u16(&mut self, value: u16) -> &mut Block {
        self.bytes.extend_from_slice(&value.to_le_bytes());
        self
    }

    fn u32(&mut self, value: u32) -> &mut Block {
        self.bytes.extend_from_slice(&value.to_le_bytes());
        self
    }

    /// A 32-bit length field.
    fn length(&mut self, len: usize) -> &mut Block {
        let field = u32::try_from(len).unwrap_or_else(|_| {
            self.too_long = true;
            u32::MAX
        });
        self.u32(field)
    }

    /// `data`, then zeros to the next 32-bit boundary.
    fn padded(&mut self, data: &[u8]) -> &mut Block {
        self.bytes.extend_from_slice(data);
        self.bytes.resize(self.bytes.len() + padding(data.len()), 0);
        self
    }

    fn option(&mut self, code: u16, value: &[u8]) {
        let value = &value[..value.len().min(MAX_OPTION_LEN)];
        self.u16(code).u16(value.len() as u16).padded(value);
        self.has_options = true;
    }

    /// A UTF-8 option, cut on a character boundary when too long.
    fn text_option(&mut self, code: u16, text: &str) {
        let end = (0..=text.len().min(MAX_OPTION_LEN)).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
        self.option(code, &text.as_bytes()[..end]);
    }

    /// The block's bytes, with opt_endofopt after any options and the
    /// total length at both ends.
    fn finish(mut self) -> io::Result<Vec<u8>> {
        if self.has_options {
            self.u16(OPT_ENDOFOPT).u16(0);
        }
        let total = u32::try_from(self.bytes.len() + 4)
            .ok()
            .filter(|_| !self.too_long)
            .ok_or_else(|| invalid("block longer than 4 GiB"))?;
        self.bytes[4..8].copy_from_slice(&total.to_le_bytes());
        self.u32(total);
        Ok(self.bytes)
    }
}

fn padding(len: usize) -> usize {
    (4 - len % 4) % 4
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A block as read back: its type and what lies between the lengths.
    #[derive(Debug)]
    struct RawBlock {
        block_type: u32,
        body: Vec<u8>,
    }

    fn le32(bytes: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
    }

    fn le16(bytes: &[u8], at: usize) -> u16 {
        u16::from_le_bytes(bytes[at..at + 2].try_into().unwrap())
    }

    /// Walks the file block by block, checking the lengths at both ends.
    fn blocks(file: &[u8]) -> Vec<RawBlock> {
        let mut found = Vec::new();
        let mut at = 0;
        while at < file.len() {
            let len = le32(file, at + 4) as usize;
            assert!(len >= 12 && padding(len) == 0, "block length {len} at {at}");
            assert_eq!(le32(file, at + len - 4) as usize, len, "trailing length at {at}");
            found.push(RawBlock { block_type: le32(file, at), body: file[at + 8..at + len - 4].to_vec() });
            at += len;
        }
        assert_eq!(at, file.len(), "the last block ends the file");
        found
    }

    /// Options, checking padding and the closing opt_endofopt.
    fn options(bytes: &[u8]) -> Vec<(u16, Vec<u8>)> {
        let mut found = Vec::new();
        let mut at = 0;
        loop {
            let (code, len) = (le16(bytes, at), le16(bytes, at + 2) as usize);
            if code == OPT_ENDOFOPT {
                assert_eq!((len, at + 4), (0, bytes.len()), "opt_endofopt ends the options");
                return found;
            }
            let padded_end = at + 4 + len + padding(len);
            assert!(bytes[at + 4 + len..padded_end].iter().all(|&b| b == 0), "zero padding");
            found.push((code, bytes[at + 4..at + 4 + len].to_vec()));
            at = padded_end;
        }
    }

    fn interfaces() -> Vec<Interface> {
        vec![
            Interface { name: "eth0".into(), linktype: 1, snaplen: 0 },
            Interface { name: "any-ip".into(), linktype: 101, snaplen: 262_144 },
        ]
    }

    fn written(write: impl FnOnce(&mut PcapngWriter<Vec<u8>>)) -> Vec<RawBlock> {
        let mut writer = PcapngWriter::new(Vec::new(), &interfaces()).unwrap();
        write(&mut writer);
        blocks(&writer.into_inner().unwrap())
    }

    #[test]
    fn new_writes_a_section_header_and_one_block_per_interface() {
        let blocks = written(|_| {});
        let types: Vec<u32> = blocks.iter().map(|b| b.block_type).collect();
        assert_eq!(types, [BLOCK_SECTION_HEADER, BLOCK_INTERFACE_DESCRIPTION, BLOCK_INTERFACE_DESCRIPTION]);
        let shb = &blocks[0].body;
        assert_eq!((le32(shb, 0), le16(shb, 4), le16(shb, 6)), (BYTE_ORDER_MAGIC, 1, 0));
        assert_eq!(i64::from_le_bytes(shb[8..16].try_into().unwrap()), -1);
        let application = format!("cleartap {}", env!("CARGO_PKG_VERSION"));
        assert_eq!(options(&shb[16..]), [(SHB_USERAPPL, application.into_bytes())]);
        let idb = &blocks[2].body;
        assert_eq!((le16(idb, 0), le16(idb, 2), le32(idb, 4)), (101, 0, 262_144));
        assert_eq!(options(&idb[8..]), [(IF_NAME, b"any-ip".to_vec()), (IF_TSRESOL, vec![9])]);
    }

    #[test]
    fn secrets_are_a_padded_decryption_secrets_block() {
        let lines = b"CLIENT_RANDOM 00 11\n";
        let blocks = written(|w| {
            w.secrets(lines).unwrap();
            w.secrets(b"").unwrap();
        });
        assert_eq!(blocks.len(), 4, "an empty secrets call writes nothing");
        let dsb = &blocks[3];
        assert_eq!(dsb.block_type, BLOCK_DECRYPTION_SECRETS);
        assert_eq!((le32(&dsb.body, 0), le32(&dsb.body, 4) as usize), (SECRETS_TLS_KEY_LOG, lines.len()));
        assert_eq!(&dsb.body[8..8 + lines.len()], lines);
        assert_eq!(dsb.body.len(), 8 + 20, "20 bytes need no padding");
        let odd = written(|w| w.secrets(b"X 1 2\n").unwrap());
        assert_eq!(&odd[3].body[8..], b"X 1 2\n\0\0", "padded to 32 bits");
    }

    #[test]
    fn packet_with_comment_and_direction() {
        let packet = Packet {
            interface: 1,
            timestamp_ns: 0x1234_5678_9abc_def0,
            original_len: 1500,
            data: b"\x45\x00\x00\x05x",
            outbound: Some(true),
            comment: Some("pid 42 curl"),
        };
        let blocks = written(|w| w.packet(&packet).unwrap());
        let epb = &blocks[3];
        assert_eq!(epb.block_type, BLOCK_ENHANCED_PACKET);
        let fields: Vec<u32> = (0..5).map(|i| le32(&epb.body, i * 4)).collect();
        assert_eq!(fields, [1, 0x1234_5678, 0x9abc_def0, 5, 1500]);
        assert_eq!(&epb.body[20..28], b"\x45\x00\x00\x05x\0\0\0");
        let expected =
            [(OPT_COMMENT, b"pid 42 curl".to_vec()), (EPB_FLAGS, FLAGS_OUTBOUND.to_le_bytes().to_vec())];
        assert_eq!(options(&epb.body[28..]), expected);
    }

    #[test]
    fn packet_without_options_and_bad_input() {
        let data = [7u8; 8];
        let bare = Packet {
            interface: 0,
            timestamp_ns: 1,
            original_len: 2,
            data: &data,
            outbound: None,
            comment: None,
        };
        let blocks = written(|w| {
            w.packet(&bare).unwrap();
            w.packet(&Packet { outbound: Some(false), ..bare }).unwrap();
            assert!(w.packet(&Packet { interface: 2, ..bare }).is_err(), "an undescribed interface");
        });
        assert_eq!(blocks.len(), 5, "nothing written for the refused packet");
        assert_eq!(blocks[3].body.len(), 20 + 8, "no options, no opt_endofopt");
        assert_eq!(le32(&blocks[3].body, 16), 8, "never shorter than captured");
        assert_eq!(options(&blocks[4].body[28..]), [(EPB_FLAGS, FLAGS_INBOUND.to_le_bytes().to_vec())]);
    }

    #[test]
    fn long_text_is_cut_on_a_character_boundary() {
        let comment = "é".repeat(40_000);
        let packet = Packet {
            interface: 0,
            timestamp_ns: 0,
            original_len: 0,
            data: b"",
            outbound: None,
            comment: Some(&comment),
        };
        let blocks = written(|w| w.packet(&packet).unwrap());
        let text = &options(&blocks[3].body[20..])[0].1;
        assert_eq!(text.len(), MAX_OPTION_LEN - 1);
        assert!(std::str::from_utf8(text).is_ok());
    }

    #[test]
    fn flush_reaches_the_output() {
        let mut out = io::BufWriter::new(Vec::new());
        let mut writer = PcapngWriter::new(&mut out, &interfaces()).unwrap();
        writer.flush().unwrap();
        assert_eq!(blocks(out.get_ref()).len(), 3);
    }

    fn tshark() -> Option<()> {
        let found = std::process::Command::new("which").arg("tshark").output().ok()?;
        found.status.success().then_some(())
    }

    /// Ethernet, IPv4 and TCP headers with `payload`.
    fn ethernet_ipv4_tcp(payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
        frame.extend_from_slice(&[0x45, 0]);
        frame.extend_from_slice(&(40 + payload.len() as u16).to_be_bytes());
        frame.extend_from_slice(&[0, 1, 0x40, 0, 64, 6, 0, 0, 127, 0, 0, 1, 127, 0, 0, 1]);
        frame.extend_from_slice(&[
            0x9c, 0x40, 0x01, 0xbb, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0,
        ]);
        frame.extend_from_slice(payload);
        frame
    }

    #[test]
    fn tshark_reads_comment_length_and_interface() {
        if tshark().is_none() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("capture.pcapng");
        let data = ethernet_ipv4_tcp(b"hello");
        let interface = Interface { name: "cleartap-test0".into(), linktype: 1, snaplen: 0 };
        let mut writer = PcapngWriter::new(std::fs::File::create(&path).unwrap(), &[interface]).unwrap();
        writer.secrets(b"CLIENT_RANDOM 00 11\n").unwrap();
        let packet = Packet {
            interface: 0,
            timestamp_ns: 1_700_000_000_123_456_789,
            original_len: data.len() as u32,
            data: &data,
            outbound: Some(true),
            comment: Some("pid 42 (curl)"),
        };
        writer.packet(&packet).unwrap();
        writer.into_inner().unwrap();
        let run = |args: &[&str]| {
            let output =
                std::process::Command::new("tshark").arg("-r").arg(&path).args(args).output().unwrap();
            assert!(output.status.success(), "tshark: {}", String::from_utf8_lossy(&output.stderr));
            String::from_utf8(output.stdout).unwrap()
        };
        let fields = run(&["-T", "fields", "-e", "frame.comment", "-e", "frame.len"]);
        assert_eq!(fields.trim_end(), format!("pid 42 (curl)\t{}", data.len()));
        let verbose = run(&["-V"]);
        assert!(verbose.contains("cleartap-test0"), "{verbose}");
    }
}
