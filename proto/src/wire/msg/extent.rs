//! Data-stream frames: a batch of extents and the receiver's verdict on it.

use super::super::codec::{Reader, Writer};
use super::super::{MAX_EXTENT_LEN, MAX_EXTENT_PAYLOAD, MAX_STRING};
use super::ErrorClass;
use super::MAX_RANGES;
use crate::FormatError;

/// Frame kind of [`BatchStart`].
pub const K_BATCH_START: u8 = 0x40;
/// Frame kind of an extent (header + payload).
pub const K_EXTENT: u8 = 0x41;
/// Frame kind of [`BatchResult`].
pub const K_BATCH_RESULT: u8 = 0x42;

/// First frame of a data stream: which disk and copy generation the batch belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchStart {
    /// Disk handle from [`Control::DiskOpened`].
    pub handle: u32,
    /// Generation from [`Control::DiskOpened`].
    pub generation: u64,
}

impl BatchStart {
    /// Encodes as a whole frame.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u32(self.handle).u64(self.generation);
        let mut out = Vec::with_capacity(17);
        super::super::encode_frame(K_BATCH_START, &w.buf, &mut out);
        out
    }
    /// Decodes a body.
    pub fn decode(body: &[u8]) -> Result<Self, FormatError> {
        let mut r = Reader::new(body, "batch start");
        let m = BatchStart {
            handle: r.u32()?,
            generation: r.u64()?,
        };
        r.finish()?;
        Ok(m)
    }
}

/// What an extent does to the replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtentOp {
    /// Write the payload.
    Write,
    /// Zero the range (no payload).
    Clear,
    /// Write the payload, except that all-zero blocks inside it need no write: the sender
    /// uses it only where the replica is known to hold zeros (a fresh copy). It exists so
    /// one zstd frame can span the zero gaps of a read: frames split at every zero block
    /// lost 4 % of ratio to the lost context (bench/results/ANALYSIS.md). Protocol ≥ 2.
    WriteSparse,
    /// Write the blocks of the range that the payload's [`PackedMap`] names, from one zstd
    /// frame of them back to back; the other blocks of the range are not touched (they
    /// travel as their own extents, or are zero in a known-empty copy). The hash is of the
    /// carried blocks back to back. Protocol ≥ 3.
    ///
    /// [`PackedMap`]: super::PackedMap
    WritePacked,
}

/// How an extent's payload is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// As is.
    Raw,
    /// One zstd frame.
    Zstd,
}

/// Fixed header of an extent frame; `payload_len` bytes of payload follow it in the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtentHeader {
    /// Virtual-disk offset, 512-aligned.
    pub offset: u64,
    /// Uncompressed length, 512-aligned, ≤ [`MAX_EXTENT_LEN`].
    pub length: u32,
    /// Write or clear.
    pub op: ExtentOp,
    /// Payload encoding.
    pub codec: Codec,
    /// BLAKE3 of the uncompressed bytes (of `length` zeros for a clear).
    pub hash: [u8; 32],
    /// Bytes of payload that follow.
    pub payload_len: u32,
}

/// Encoded size of [`ExtentHeader`].
pub const EXTENT_HEADER_LEN: usize = 8 + 4 + 1 + 1 + 32 + 4;

impl ExtentHeader {
    /// Encodes the frame header and the extent header; the payload is sent after it as its
    /// own buffer (no copy).
    pub fn encode_frame_prefix(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u64(self.offset)
            .u32(self.length)
            .u8(match self.op {
                ExtentOp::Write => 0,
                ExtentOp::Clear => 1,
                ExtentOp::WriteSparse => 2,
                ExtentOp::WritePacked => 3,
            })
            .u8(match self.codec {
                Codec::Raw => 0,
                Codec::Zstd => 1,
            })
            .raw(&self.hash)
            .u32(self.payload_len);
        let mut out = Vec::with_capacity(5 + EXTENT_HEADER_LEN);
        out.push(K_EXTENT);
        out.extend_from_slice(&((EXTENT_HEADER_LEN as u32 + self.payload_len).to_le_bytes()));
        out.extend_from_slice(&w.buf);
        out
    }

    /// Decodes and validates the fixed header (the first [`EXTENT_HEADER_LEN`] body bytes);
    /// `frame_len` is the frame's body length, which must match the payload length.
    pub fn decode(b: &[u8], frame_len: u32) -> Result<Self, FormatError> {
        let what = "extent header";
        let mut r = Reader::new(b, what);
        let offset = r.u64()?;
        let length = r.u32()?;
        let op = match r.u8()? {
            0 => ExtentOp::Write,
            1 => ExtentOp::Clear,
            2 => ExtentOp::WriteSparse,
            3 => ExtentOp::WritePacked,
            v => return Err(FormatError::new(what, 12, format!("unknown op {v}"))),
        };
        let codec = match r.u8()? {
            0 => Codec::Raw,
            1 => Codec::Zstd,
            v => return Err(FormatError::new(what, 13, format!("unknown codec {v}"))),
        };
        let hash = r.array()?;
        let payload_len = r.u32()?;
        r.finish()?;
        let h = ExtentHeader {
            offset,
            length,
            op,
            codec,
            hash,
            payload_len,
        };
        h.validate(frame_len)?;
        Ok(h)
    }

    fn validate(&self, frame_len: u32) -> Result<(), FormatError> {
        let what = "extent header";
        let bad = |o, p: String| Err(FormatError::new(what, o, p));
        if !self.offset.is_multiple_of(512) || !self.length.is_multiple_of(512) || self.length == 0
        {
            return bad(
                0,
                format!(
                    "extent at {} of {} bytes is not a non-empty multiple of 512 bytes at a 512-byte boundary",
                    self.offset, self.length
                ),
            );
        }
        let max = match self.op {
            ExtentOp::Write | ExtentOp::WriteSparse | ExtentOp::WritePacked => MAX_EXTENT_LEN,
            ExtentOp::Clear => super::super::MAX_CLEAR_LEN,
        };
        if self.length > max || self.payload_len > MAX_EXTENT_PAYLOAD {
            return bad(
                8,
                format!("extent of {} bytes exceeds the limit", self.length),
            );
        }
        if self.offset.checked_add(self.length as u64).is_none() {
            return bad(0, "offset + length overflows".into());
        }
        if EXTENT_HEADER_LEN as u64 + self.payload_len as u64 != frame_len as u64 {
            return bad(
                46,
                format!(
                    "payload length {} does not match the frame length {frame_len}",
                    self.payload_len
                ),
            );
        }
        match (self.op, self.codec) {
            (ExtentOp::Clear, _) if self.payload_len != 0 => {
                bad(46, "a clear carries no payload".into())
            }
            (ExtentOp::Write | ExtentOp::WriteSparse, Codec::Raw)
                if self.payload_len != self.length =>
            {
                bad(
                    46,
                    "a raw payload must be exactly the extent's length".into(),
                )
            }
            (ExtentOp::WritePacked, Codec::Raw) => {
                bad(13, "a packed write carries a zstd frame".into())
            }
            _ => Ok(()),
        }
    }
}

/// Why the receiver refused one extent of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The BLAKE3 of the decoded bytes did not match: resend.
    HashMismatch,
    /// The payload did not decompress to the extent's length: resend.
    BadPayload,
}

/// Receiver → sender at the end of a data stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchResult {
    /// Extents written (not yet necessarily durable).
    pub written: u32,
    /// Extents refused, with their offset and length; the sender resends them.
    pub rejected: Vec<(u64, u32, Rejection)>,
    /// A failure that ended the batch early; extents after it were not written.
    pub error: Option<(ErrorClass, String)>,
}

impl BatchResult {
    /// Encodes as a whole frame.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u32(self.written).u32(self.rejected.len() as u32);
        for &(o, l, why) in &self.rejected {
            w.u64(o).u32(l).u8(match why {
                Rejection::HashMismatch => 1,
                Rejection::BadPayload => 2,
            });
        }
        match &self.error {
            None => {
                w.u8(0);
            }
            Some((c, m)) => {
                w.u8(1).u16(c.code()).str(m);
            }
        }
        let mut out = Vec::new();
        super::super::encode_frame(K_BATCH_RESULT, &w.buf, &mut out);
        out
    }

    /// Decodes a body.
    pub fn decode(body: &[u8]) -> Result<Self, FormatError> {
        let what = "batch result";
        let mut r = Reader::new(body, what);
        let written = r.u32()?;
        let n = r.u32()? as usize;
        if n > MAX_RANGES {
            return Err(FormatError::new(
                what,
                4,
                format!("{n} rejections exceed the limit"),
            ));
        }
        let mut rejected = Vec::with_capacity(n);
        for _ in 0..n {
            let o = r.u64()?;
            let l = r.u32()?;
            let why = match r.u8()? {
                1 => Rejection::HashMismatch,
                2 => Rejection::BadPayload,
                v => return Err(FormatError::new(what, 0, format!("unknown rejection {v}"))),
            };
            rejected.push((o, l, why));
        }
        let error = if r.bool()? {
            let code = r.u16()?;
            let class = ErrorClass::from_code(code)
                .ok_or_else(|| FormatError::new(what, 0, format!("unknown error class {code}")))?;
            Some((class, r.str(MAX_STRING)?))
        } else {
            None
        };
        r.finish()?;
        Ok(BatchResult {
            written,
            rejected,
            error,
        })
    }
}
