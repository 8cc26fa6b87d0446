//! NBD wire constants and the fixed-size parts of its messages (NBD's `doc/proto.md`: the
//! fixed newstyle handshake, option haggling, transmission with structured replies).
//! Everything is big-endian.

/// `NBDMAGIC`, the first 8 bytes from the server.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: the newstyle magic, and the prefix of every option the client sends.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// The magic of every option reply.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// The magic of a request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// The magic of a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// The magic of a structured reply chunk.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Server handshake flag: fixed newstyle.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// Server handshake flag: no 124 zero bytes after `NBD_OPT_EXPORT_NAME`.
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flag: fixed newstyle.
pub const CLIENT_FIXED_NEWSTYLE: u32 = 1 << 0;
/// Client flag: no zeroes.
pub const CLIENT_NO_ZEROES: u32 = 1 << 1;

/// Option: end negotiation and enter transmission with an export.
pub const OPT_GO: u32 = 7;
/// Option: structured replies.
pub const OPT_STRUCTURED_REPLY: u32 = 8;
/// Option: select metadata contexts for block status.
pub const OPT_SET_META_CONTEXT: u32 = 10;
/// Option: end the session during negotiation.
pub const OPT_ABORT: u32 = 2;

/// Option reply: done.
pub const REP_ACK: u32 = 1;
/// Option reply: information about the export (`NBD_OPT_GO`).
pub const REP_INFO: u32 = 3;
/// Option reply: a selected metadata context.
pub const REP_META_CONTEXT: u32 = 4;
/// Bit 31 marks an option reply as an error.
pub const REP_FLAG_ERROR: u32 = 1 << 31;

/// `NBD_INFO_EXPORT`: size and transmission flags.
pub const INFO_EXPORT: u16 = 0;
/// `NBD_INFO_BLOCK_SIZE`: minimum, preferred and maximum block size.
pub const INFO_BLOCK_SIZE: u16 = 3;

/// Transmission flag: the export is read-only.
pub const TFLAG_READ_ONLY: u16 = 1 << 1;
/// Transmission flag: the server takes `NBD_CMD_TRIM`.
pub const TFLAG_SEND_TRIM: u16 = 1 << 5;

/// Command: read.
pub const CMD_READ: u16 = 0;
/// Command: disconnect (no reply).
pub const CMD_DISC: u16 = 2;
/// Command: trim (discard), a hint that a range is no longer needed.
pub const CMD_TRIM: u16 = 4;
/// Command: block status.
pub const CMD_BLOCK_STATUS: u16 = 7;

/// Structured reply flag: the last chunk of this reply.
pub const REPLY_FLAG_DONE: u16 = 1 << 0;
/// Chunk: nothing (only as the final chunk).
pub const CHUNK_NONE: u16 = 0;
/// Chunk: data at an offset.
pub const CHUNK_OFFSET_DATA: u16 = 1;
/// Chunk: a hole (reads as zeroes) at an offset.
pub const CHUNK_OFFSET_HOLE: u16 = 2;
/// Chunk: block status descriptors of one context.
pub const CHUNK_BLOCK_STATUS: u16 = 5;
/// Chunk: an error.
pub const CHUNK_ERROR: u16 = (1 << 15) + 1;
/// Chunk: an error at an offset.
pub const CHUNK_ERROR_OFFSET: u16 = (1 << 15) + 2;

/// `base:allocation` flag: the extent is a hole (unallocated).
pub const STATE_HOLE: u32 = 1 << 0;
/// `base:allocation` flag: the extent reads as zeroes.
pub const STATE_ZERO: u32 = 1 << 1;
/// `qemu:dirty-bitmap:NAME` flag: the extent is dirty.
pub const STATE_DIRTY: u32 = 1 << 0;

/// The metadata context of allocation status.
pub const BASE_ALLOCATION: &str = "base:allocation";
/// The prefix of qemu's dirty-bitmap contexts (`qemu:dirty-bitmap:NAME`).
pub const DIRTY_BITMAP_PREFIX: &str = "qemu:dirty-bitmap:";

/// The largest option reply payload accepted (qemu's are a few hundred bytes; a name is at
/// most 4096).
pub const MAX_OPTION_REPLY: u32 = 64 << 10;
/// The largest non-data chunk payload accepted: qemu caps a block status reply at 1 MiB of
/// descriptors ([`MAX_DESCRIPTORS`]).
pub const MAX_CHUNK_PAYLOAD: u32 = (1 << 20) + 1024;
/// The largest request the spec lets a client send without a negotiated maximum.
pub const DEFAULT_MAX_BLOCK: u32 = 32 << 20;

/// A 28-byte transmission request.
pub fn request(flags: u16, kind: u16, cookie: u64, offset: u64, length: u32) -> [u8; 28] {
    let mut b = [0u8; 28];
    b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&flags.to_be_bytes());
    b[6..8].copy_from_slice(&kind.to_be_bytes());
    b[8..16].copy_from_slice(&cookie.to_be_bytes());
    b[16..24].copy_from_slice(&offset.to_be_bytes());
    b[24..28].copy_from_slice(&length.to_be_bytes());
    b
}

/// An option the client sends: `IHAVEOPT`, the option, its length and data.
pub fn option(opt: u32, data: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(16 + data.len());
    b.extend_from_slice(&IHAVEOPT.to_be_bytes());
    b.extend_from_slice(&opt.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    b
}

/// A big-endian reader over a payload that never panics: every read checks the length.
#[derive(Debug)]
pub struct Payload<'a> {
    buf: &'a [u8],
}

impl<'a> Payload<'a> {
    /// Reads `buf` from its start.
    pub fn new(buf: &'a [u8]) -> Payload<'a> {
        Payload { buf }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// The next `n` bytes, or `None` when fewer are left.
    pub fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.buf.len() {
            return None;
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Some(head)
    }

    /// A big-endian u16.
    pub fn u16(&mut self) -> Option<u16> {
        self.bytes(2)
            .and_then(|b| b.try_into().ok())
            .map(u16::from_be_bytes)
    }

    /// A big-endian u32.
    pub fn u32(&mut self) -> Option<u32> {
        self.bytes(4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_be_bytes)
    }

    /// A big-endian u64.
    pub fn u64(&mut self) -> Option<u64> {
        self.bytes(8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
    }
}

/// The name of an errno value the NBD protocol defines, for messages.
pub fn errno_name(e: u32) -> &'static str {
    match e {
        1 => "EPERM",
        5 => "EIO",
        12 => "ENOMEM",
        22 => "EINVAL",
        28 => "ENOSPC",
        75 => "EOVERFLOW",
        95 => "ENOTSUP",
        108 => "ESHUTDOWN",
        _ => "unknown error",
    }
}

/// The name of an option error reply, for messages.
pub fn rep_error_name(t: u32) -> &'static str {
    match t & !REP_FLAG_ERROR {
        1 => "NBD_REP_ERR_UNSUP",
        2 => "NBD_REP_ERR_POLICY",
        3 => "NBD_REP_ERR_INVALID",
        4 => "NBD_REP_ERR_PLATFORM",
        5 => "NBD_REP_ERR_TLS_REQD",
        6 => "NBD_REP_ERR_UNKNOWN",
        7 => "NBD_REP_ERR_SHUTDOWN",
        8 => "NBD_REP_ERR_BLOCK_SIZE_REQD",
        9 => "NBD_REP_ERR_TOO_BIG",
        10 => "NBD_REP_ERR_EXT_HEADER_REQD",
        _ => "unknown option error",
    }
}

/// The largest number of block status descriptors in one chunk (qemu sends at most 1 MiB).
pub const MAX_DESCRIPTORS: usize = (1 << 20) / 8;
