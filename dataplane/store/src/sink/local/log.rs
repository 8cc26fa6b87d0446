//! The extent log format of a point's undo file (`NAME.pK.undo`, the bytes that cycle K+1
//! overwrote, so point K can be rebuilt from the replica). See `LAYOUT.md`. (Store version
//! 2 also had redo logs of the same format with another magic; version 3 has none.)
//!
//! A log is a 64-byte file header, then records: a 32-byte header (offset, length, kind, data
//! CRC-32C, header CRC-32C) followed, for data records, by the bytes. Zero records carry no
//! bytes: an all-zero pre-image. Both CRCs let a scrubber detect rot; torn tails are never
//! read because the state record says how far each log is durable.

use super::fs::DataFile;

/// Bytes of the file header.
pub const FILE_HEADER: u64 = 64;
/// Bytes of a record header.
pub const REC_HEADER: u64 = 32;
/// Version of the log format.
pub const LOG_VERSION: u32 = 1;
/// Largest piece read or written in one call while copying records (bounds memory).
pub const CHUNK: usize = 1 << 20;

const KIND_DATA: u32 = 1;
const KIND_ZERO: u32 = 2;

/// Which log a file is (one kind left; the magic keeps a version 2 redo log, `vdrepRL`,
/// from ever being taken for an undo log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogKind {
    /// The pre-images of a point.
    Undo,
}

impl LogKind {
    fn magic(self) -> &'static [u8; 8] {
        match self {
            LogKind::Undo => b"vdrepUL\0",
        }
    }
}

/// One record as indexed in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogRec {
    /// Disk offset the record covers.
    pub offset: u64,
    /// Bytes it covers.
    pub len: u64,
    /// True for a data record (bytes follow the header), false for zeros.
    pub data: bool,
    /// Position of the data in the log file (after the header).
    pub pos: u64,
    /// CRC-32C of the data (0 for zero records).
    pub dcrc: u32,
}

impl LogRec {
    /// End offset on the disk.
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }
    /// Bytes the record takes in the log.
    pub fn stored(&self) -> u64 {
        REC_HEADER + if self.data { self.len } else { 0 }
    }
}

/// A decode problem: offset in the log file and what is wrong.
pub type LogError = (u64, String);

/// The file header: magic, version, the cycle or point number, CRC-32C.
pub fn file_header(kind: LogKind, number: u64) -> [u8; FILE_HEADER as usize] {
    let mut h = [0u8; FILE_HEADER as usize];
    h[..8].copy_from_slice(kind.magic());
    h[8..12].copy_from_slice(&LOG_VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&number.to_le_bytes());
    let crc = crc32c::crc32c(&h[..60]);
    h[60..].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Checks a file header against what the state record expects.
pub fn check_file_header(file: &dyn DataFile, kind: LogKind, number: u64) -> Result<(), LogError> {
    let mut h = [0u8; FILE_HEADER as usize];
    file.read_at(0, &mut h)
        .map_err(|e| (0, format!("cannot read the log header: {e}")))?;
    if h != file_header(kind, number) {
        return Err((
            0,
            format!("log header is not that of a {kind:?} log for number {number} (version {LOG_VERSION})"),
        ));
    }
    Ok(())
}

/// A record header for `len` bytes at `offset`, with `data` or zeros.
pub fn rec_header(offset: u64, len: u64, data: Option<&[u8]>) -> [u8; REC_HEADER as usize] {
    let mut h = [0u8; REC_HEADER as usize];
    h[..8].copy_from_slice(&offset.to_le_bytes());
    h[8..16].copy_from_slice(&len.to_le_bytes());
    let (kind, dcrc) = match data {
        Some(d) => (KIND_DATA, crc32c::crc32c(d)),
        None => (KIND_ZERO, 0),
    };
    h[16..20].copy_from_slice(&kind.to_le_bytes());
    h[20..24].copy_from_slice(&dcrc.to_le_bytes());
    let crc = crc32c::crc32c(&h[..28]);
    h[28..].copy_from_slice(&crc.to_le_bytes());
    h
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}
fn le32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

/// Reads the record headers of `[FILE_HEADER, end)` (skipping data), checking each header's
/// CRC, that records stay below `disk_end` and inside `end`.
pub fn scan(file: &dyn DataFile, end: u64, disk_end: u64) -> Result<Vec<LogRec>, LogError> {
    let mut recs = Vec::new();
    let mut at = FILE_HEADER;
    let mut h = [0u8; REC_HEADER as usize];
    while at < end {
        if end - at < REC_HEADER {
            return Err((
                at,
                format!("{} stray bytes before the log end {end}", end - at),
            ));
        }
        file.read_at(at, &mut h)
            .map_err(|e| (at, format!("cannot read a record header: {e}")))?;
        if le32(&h, 28) != crc32c::crc32c(&h[..28]) {
            return Err((at, "record header checksum mismatch".into()));
        }
        let (offset, len, kind) = (le64(&h, 0), le64(&h, 8), le32(&h, 16));
        let data = match kind {
            KIND_DATA => true,
            KIND_ZERO => false,
            k => return Err((at + 16, format!("unknown record kind {k}"))),
        };
        if len == 0 || offset.checked_add(len).is_none_or(|e| e > disk_end) {
            return Err((
                at,
                format!("record [{offset}, +{len}) is empty or beyond the disk end {disk_end}"),
            ));
        }
        let rec = LogRec {
            offset,
            len,
            data,
            pos: at + REC_HEADER,
            dcrc: le32(&h, 20),
        };
        if at.checked_add(rec.stored()).is_none_or(|e| e > end) {
            return Err((
                at,
                format!("record of {len} bytes runs past the log end {end}"),
            ));
        }
        at += rec.stored();
        recs.push(rec);
    }
    Ok(recs)
}

/// Copies the part of `rec` inside `[off, off + buf.len())` into `buf` (zeros for a zero
/// record). Data is not checksummed here: partial reads cannot be.
pub fn overlay(file: &dyn DataFile, rec: &LogRec, off: u64, buf: &mut [u8]) -> std::io::Result<()> {
    let s = rec.offset.max(off);
    let e = rec.end().min(off + buf.len() as u64);
    if s >= e {
        return Ok(());
    }
    let out = &mut buf[(s - off) as usize..(e - off) as usize];
    if rec.data {
        file.read_at(rec.pos + (s - rec.offset), out)
    } else {
        out.fill(0);
        Ok(())
    }
}
