//! Frame headers and the byte-level encoding helpers shared by all messages.

use crate::error::Cursor;
use crate::FormatError;

/// Bytes of a frame header: type (1) and body length (4, little-endian).
pub const FRAME_HEADER_LEN: usize = 5;

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Message type code.
    pub kind: u8,
    /// Body length in bytes.
    pub len: u32,
}

impl FrameHeader {
    /// Decodes a header; the caller then reads exactly `len` body bytes, after checking `len`
    /// against the limit for `kind`.
    pub fn decode(b: &[u8; FRAME_HEADER_LEN]) -> FrameHeader {
        FrameHeader {
            kind: b[0],
            len: u32::from_le_bytes([b[1], b[2], b[3], b[4]]),
        }
    }
}

/// Appends a frame (header and body) to `out`.
pub fn encode_frame(kind: u8, body: &[u8], out: &mut Vec<u8>) {
    out.push(kind);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
}

/// One frame split off a buffer: its type, its body, and the bytes it used.
pub type SplitFrame<'a> = (u8, &'a [u8], usize);

/// Splits one whole frame off the front of `buf`: `Ok(None)` if more bytes are needed.
/// `max_body` bounds the body length before anything is buffered.
pub fn decode_frame(buf: &[u8], max_body: u32) -> Result<Option<SplitFrame<'_>>, FormatError> {
    if buf.len() < FRAME_HEADER_LEN {
        return Ok(None);
    }
    let mut h = [0u8; FRAME_HEADER_LEN];
    h.copy_from_slice(&buf[..FRAME_HEADER_LEN]);
    let hdr = FrameHeader::decode(&h);
    if hdr.len > max_body {
        return Err(FormatError::new(
            "frame header",
            1,
            format!("body of {} bytes exceeds the limit of {max_body}", hdr.len),
        ));
    }
    let total = FRAME_HEADER_LEN + hdr.len as usize;
    if buf.len() < total {
        return Ok(None);
    }
    Ok(Some((hdr.kind, &buf[FRAME_HEADER_LEN..total], total)))
}

/// Little-endian writer for message bodies.
#[derive(Default)]
pub(crate) struct Writer {
    pub(crate) buf: Vec<u8>,
}

impl Writer {
    pub(crate) fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }
    pub(crate) fn u16(&mut self, v: u16) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub(crate) fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub(crate) fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub(crate) fn raw(&mut self, v: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(v);
        self
    }
    /// Length-prefixed (u32) bytes.
    pub(crate) fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.u32(v.len() as u32);
        self.raw(v)
    }
    pub(crate) fn str(&mut self, v: &str) -> &mut Self {
        self.bytes(v.as_bytes())
    }
}

/// Sequential little-endian reader over a message body that never panics.
pub(crate) struct Reader<'a> {
    c: Cursor<'a>,
    pos: usize,
    len: usize,
    what: &'a str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], what: &'a str) -> Self {
        Reader {
            c: Cursor::new(buf, what),
            pos: 0,
            len: buf.len(),
            what,
        }
    }
    fn adv(&mut self, n: usize) -> usize {
        let p = self.pos;
        self.pos = self.pos.saturating_add(n);
        p
    }
    pub(crate) fn u8(&mut self) -> Result<u8, FormatError> {
        let p = self.adv(1);
        self.c.u8(p)
    }
    pub(crate) fn u16(&mut self) -> Result<u16, FormatError> {
        let p = self.adv(2);
        self.c.le_u16(p)
    }
    pub(crate) fn u32(&mut self) -> Result<u32, FormatError> {
        let p = self.adv(4);
        self.c.le_u32(p)
    }
    pub(crate) fn u64(&mut self) -> Result<u64, FormatError> {
        let p = self.adv(8);
        self.c.le_u64(p)
    }
    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], FormatError> {
        let p = self.adv(N);
        self.c.bytes(p)
    }
    pub(crate) fn bytes(&mut self, max: usize) -> Result<&'a [u8], FormatError> {
        let at = self.pos;
        let n = self.u32()? as usize;
        if n > max {
            return Err(FormatError::new(
                self.what,
                at as u64,
                format!("field of {n} bytes exceeds the limit of {max}"),
            ));
        }
        let p = self.adv(n);
        self.c.slice(p, n)
    }
    pub(crate) fn str(&mut self, max: usize) -> Result<String, FormatError> {
        let at = self.pos;
        let b = self.bytes(max)?;
        String::from_utf8(b.to_vec())
            .map_err(|_| FormatError::new(self.what, at as u64, "string is not UTF-8"))
    }
    pub(crate) fn bool(&mut self) -> Result<bool, FormatError> {
        let at = self.pos;
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(FormatError::new(
                self.what,
                at as u64,
                format!("boolean is {v}"),
            )),
        }
    }
    /// True once the whole body was read (for optional trailing fields).
    pub(crate) fn at_end(&self) -> bool {
        self.pos >= self.len
    }
    /// Requires that the whole body was consumed: trailing bytes mean a confused peer.
    pub(crate) fn finish(&self) -> Result<(), FormatError> {
        if self.pos != self.len {
            return Err(FormatError::new(
                self.what,
                self.pos as u64,
                format!("{} trailing bytes", self.len.saturating_sub(self.pos)),
            ));
        }
        Ok(())
    }
}
