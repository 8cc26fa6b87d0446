//! The index's file: where it is kept ([`IndexFile`]) and its layout (the parent module's
//! **File** paragraph): the header written and checked here, the body's bytes for an index
//! not yet on file. What the body's bytes mean (node hashes, dirty bits) is [`super`]'s.

use std::io;

use super::super::{Hash, KEPT, RESYNC_NODE_SIZES};

const MAGIC: &[u8; 8] = b"vdrepHX\0";
const VERSION: u32 = 1;
/// Bytes before the body.
pub(super) const HEADER: u64 = 64;
const CLEAN: u32 = 1;

/// Where an index is kept: positional reads and writes on one file or blob.
pub trait IndexFile: Send + Sync {
    /// The file's length in bytes, or `None` if there is no file yet.
    fn size(&self) -> io::Result<Option<u64>>;
    /// Reads `buf.len()` bytes at `offset` (inside the file).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Announces that the file will be `len` bytes, before the first write to a file whose
    /// content the index does not use (a fresh copy's, a stale one): a page blob is then
    /// created once at that length. The content may be lost. The default keeps the file
    /// as it is (a local file grows with its writes).
    fn set_len(&self, _len: u64) -> io::Result<()> {
        Ok(())
    }
    /// Writes `data` at `offset` (not yet durable).
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Makes the writes durable.
    fn sync(&self) -> io::Result<()>;
    /// Where it is, for messages.
    fn describe(&self) -> String;
}

/// Checks that `f` holds a clean index of this layout: header first, then the length.
pub(super) fn check(f: &dyn IndexFile, size: u64, generation: u64, n: u64) -> Result<(), String> {
    let len = match f.size() {
        Ok(Some(l)) => l,
        Ok(None) => return Err("does not exist yet".into()),
        Err(e) => return Err(format!("read failed: {e}")),
    };
    if len < HEADER {
        return Err("shorter than its header".into());
    }
    let mut h = [0u8; HEADER as usize];
    f.read_at(0, &mut h)
        .map_err(|e| format!("read failed: {e}"))?;
    let u32_at = |o: usize| u32::from_le_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
    let u64_at = |o: usize| u64::from_le_bytes(h[o..o + 8].try_into().unwrap_or([0; 8]));
    if &h[..8] != MAGIC || u32_at(8) != VERSION {
        return Err("not a version-1 resync index".into());
    }
    if crc32c::crc32c(&h[..60]) != u32_at(60) {
        return Err("header checksum mismatch".into());
    }
    if u32_at(12) & CLEAN == 0 {
        return Err("not closed cleanly (the receiver stopped while writing)".into());
    }
    if u64_at(16) != size || u64_at(32) != RESYNC_NODE_SIZES[KEPT] || u64_at(40) != n {
        return Err("describes a disk of another size".into());
    }
    if u64_at(24) != generation {
        return Err(format!(
            "describes copy generation {}, the replica is generation {generation}",
            u64_at(24)
        ));
    }
    let want = HEADER + 32 * n + n.div_ceil(8);
    if len != want {
        return Err(format!("{len} bytes, expected {want}"));
    }
    Ok(())
}

/// The header of an index of `n` nodes over a `size`-byte disk.
pub(super) fn header(size: u64, generation: u64, n: u64, clean: bool) -> [u8; HEADER as usize] {
    let mut h = [0u8; HEADER as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&(if clean { CLEAN } else { 0 }).to_le_bytes());
    h[16..24].copy_from_slice(&size.to_le_bytes());
    h[24..32].copy_from_slice(&generation.to_le_bytes());
    h[32..40].copy_from_slice(&RESYNC_NODE_SIZES[KEPT].to_le_bytes());
    h[40..48].copy_from_slice(&n.to_le_bytes());
    let crc = crc32c::crc32c(&h[..60]);
    h[60..].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Body bytes `[off, off + buf.len())` of an index of `n` nodes not yet on file: hashes
/// from `hash`, every bitmap byte `bits`.
pub(super) fn fill_body(n: u64, off: u64, buf: &mut [u8], hash: impl Fn(u64) -> Hash, bits: u8) {
    let mut k = 0;
    while k < buf.len() {
        let at = off + k as u64;
        if at >= 32 * n {
            buf[k..].fill(bits);
            return;
        }
        let (i, s) = (at / 32, (at % 32) as usize);
        let take = (32 - s).min(buf.len() - k);
        buf[k..k + take].copy_from_slice(&hash(i)[s..s + take]);
        k += take;
    }
}
