//! HTTP/2 frame headers (RFC 9113 section 4.1) and their validation.

pub(crate) const HEADER_LEN: usize = 9;

pub(crate) const DATA: u8 = 0x0;
pub(crate) const HEADERS: u8 = 0x1;
pub(crate) const PRIORITY: u8 = 0x2;
pub(crate) const RST_STREAM: u8 = 0x3;
pub(crate) const SETTINGS: u8 = 0x4;
pub(crate) const PUSH_PROMISE: u8 = 0x5;
pub(crate) const PING: u8 = 0x6;
pub(crate) const GOAWAY: u8 = 0x7;
pub(crate) const WINDOW_UPDATE: u8 = 0x8;
pub(crate) const CONTINUATION: u8 = 0x9;

pub(crate) const END_STREAM: u8 = 0x1;
pub(crate) const ACK: u8 = 0x1;
pub(crate) const END_HEADERS: u8 = 0x4;
pub(crate) const PADDED: u8 = 0x8;
pub(crate) const PRIORITY_FLAG: u8 = 0x20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FrameHeader {
    pub length: u32,
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub reserved: bool,
}

impl FrameHeader {
    pub(crate) fn parse(b: &[u8]) -> Option<FrameHeader> {
        let b: &[u8; HEADER_LEN] = b.get(..HEADER_LEN)?.try_into().ok()?;
        let stream = u32::from_be_bytes([b[5], b[6], b[7], b[8]]);
        Some(FrameHeader {
            length: u32::from_be_bytes([0, b[0], b[1], b[2]]),
            kind: b[3],
            flags: b[4],
            stream: stream & 0x7fff_ffff,
            reserved: stream & 0x8000_0000 != 0,
        })
    }

    pub(crate) fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    /// Length and stream-id rules of the known frame types; a frame breaking
    /// them means we lost the frame boundaries. Unknown types are extensions
    /// and are skipped.
    pub(crate) fn shape_ok(&self) -> bool {
        let len = self.length;
        let on_stream = self.stream != 0;
        match self.kind {
            DATA | HEADERS | CONTINUATION => on_stream,
            PRIORITY => on_stream && len == 5,
            RST_STREAM => on_stream && len == 4,
            SETTINGS => !on_stream && len.is_multiple_of(6) && (!self.has(ACK) || len == 0),
            PUSH_PROMISE => on_stream && len >= 4,
            PING => !on_stream && len == 8,
            GOAWAY => !on_stream && len >= 8,
            WINDOW_UPDATE => len == 4,
            _ => true,
        }
    }

    /// Stricter check used to find frame boundaries in unknown bytes: a known
    /// type, only defined flags, the reserved bit clear.
    pub(crate) fn plausible_strict(&self) -> bool {
        let allowed_flags = match self.kind {
            DATA => END_STREAM | PADDED,
            HEADERS => END_STREAM | END_HEADERS | PADDED | PRIORITY_FLAG,
            SETTINGS | PING => ACK,
            PUSH_PROMISE => END_HEADERS | PADDED,
            CONTINUATION => END_HEADERS,
            PRIORITY | RST_STREAM | GOAWAY | WINDOW_UPDATE => 0,
            _ => return false,
        };
        self.flags & !allowed_flags == 0 && !self.reserved && self.shape_ok()
    }
}

/// Strips padding (and, for HEADERS, priority fields) off a payload.
pub(crate) fn unpad(h: &FrameHeader, payload: &[u8]) -> Option<Vec<u8>> {
    let mut p = payload;
    let mut pad = 0usize;
    if h.has(PADDED) {
        pad = *p.first()? as usize;
        p = &p[1..];
    }
    if h.kind == HEADERS && h.has(PRIORITY_FLAG) {
        p = p.get(5..)?;
    }
    let end = p.len().checked_sub(pad)?;
    Some(p[..end].to_vec())
}
