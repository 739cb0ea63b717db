#![no_main]
// The pcapng writer with any packet bytes, comments and secrets: every
// block it writes must be whole, with the same length at both ends.
use cleartap::output::pcapng::{Interface, Packet, PcapngWriter};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let interfaces = [
        Interface { name: "lo".into(), linktype: 1, snaplen: 262_144 },
        Interface { name: "x".into(), linktype: 101, snaplen: 0 },
    ];
    let Ok(mut writer) = PcapngWriter::new(Vec::new(), &interfaces) else { return };
    for chunk in data.split(|&b| b == 0xff) {
        let (head, rest) = chunk.split_at(chunk.len().min(1));
        let comment = std::str::from_utf8(rest).ok();
        let _ = match head.first().copied().unwrap_or(0) % 3 {
            0 => writer.secrets(rest),
            1 => writer.packet(&Packet {
                interface: u32::from(head.first().copied().unwrap_or(0) % 3),
                timestamp_ns: u64::from(rest.len() as u32) << 20,
                original_len: rest.len() as u32 / 2,
                data: rest,
                outbound: Some(rest.len() % 2 == 0),
                comment,
            }),
            _ => writer.flush(),
        };
    }
    let file = writer.into_inner().unwrap();
    let mut at = 0;
    while at < file.len() {
        let word = |i: usize| u32::from_le_bytes(file[i..i + 4].try_into().unwrap()) as usize;
        let len = word(at + 4);
        assert!(len >= 12 && len % 4 == 0 && at + len <= file.len(), "block at {at}");
        assert_eq!(word(at + len - 4), len, "trailing length at {at}");
        at += len;
    }
});
