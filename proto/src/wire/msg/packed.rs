//! The payload of a packed write ([`ExtentOp::WritePacked`]): which blocks of the extent's
//! range it writes, then one zstd frame of those blocks back to back.
//!
//! A read of a real disk mixes compressible blocks (text, code, zeroed free space) with
//! incompressible ones (compressed archives, encrypted files, media). One frame over the
//! whole read spends the compressor's time on bytes it cannot shrink, and its match tables
//! and entropy coder are diluted by them; a frame per compressible run loses the context
//! between runs (on the bench image 371 against 356 MB per GiB). A packed write keeps one
//! frame and leaves out the blocks that travel otherwise — incompressible ones as raw
//! writes, zero ones as clears or not at all: 353.7 against 356.2 MB per GiB at level 11
//! (bench/results/ANALYSIS.md, session 6).
//!
//! [`ExtentOp::WritePacked`]: super::ExtentOp::WritePacked

use crate::FormatError;

/// Block granularity of a packed write's map; the sender's zero detection uses the same.
pub const PACK_BLOCK: u32 = 64 << 10;

/// Which [`PACK_BLOCK`]s of an extent a packed write carries (block `i` covers bytes
/// `i * PACK_BLOCK ..` of the extent; the last one may be shorter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedMap {
    /// Extent length the map belongs to.
    length: u32,
    /// One bit per block, least significant bit first.
    bits: Vec<u8>,
}

impl PackedMap {
    /// Blocks of an extent of `length` bytes.
    pub fn blocks(length: u32) -> usize {
        length.div_ceil(PACK_BLOCK) as usize
    }

    /// Bytes the map takes at the start of the payload.
    pub fn encoded_len(length: u32) -> usize {
        Self::blocks(length).div_ceil(8)
    }

    /// A map over `length` bytes with the blocks for which `carried` says yes.
    pub fn new(length: u32, carried: impl Fn(usize) -> bool) -> Self {
        let n = Self::blocks(length);
        let mut bits = vec![0u8; n.div_ceil(8)];
        for i in (0..n).filter(|&i| carried(i)) {
            bits[i / 8] |= 1 << (i % 8);
        }
        PackedMap { length, bits }
    }

    /// The map's bytes, as they lead the payload.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bits
    }

    /// Whether block `i` is carried.
    pub fn carries(&self, i: usize) -> bool {
        self.bits
            .get(i / 8)
            .is_some_and(|b| b & (1 << (i % 8)) != 0)
    }

    /// Byte range of block `i` inside the extent.
    fn block(&self, i: usize) -> (u32, u32) {
        let s = i as u32 * PACK_BLOCK;
        (s, (s + PACK_BLOCK).min(self.length))
    }

    /// Maximal runs of carried blocks, as byte ranges `(start, end)` inside the extent, in
    /// order; the frame holds exactly these bytes, back to back.
    pub fn runs(&self) -> Vec<(u32, u32)> {
        let mut out: Vec<(u32, u32)> = Vec::new();
        for i in (0..Self::blocks(self.length)).filter(|&i| self.carries(i)) {
            let (s, e) = self.block(i);
            match out.last_mut() {
                Some(r) if r.1 == s => r.1 = e,
                _ => out.push((s, e)),
            }
        }
        out
    }

    /// Bytes the frame decompresses to: the carried blocks.
    pub fn carried_len(&self) -> u32 {
        self.runs().iter().map(|r| r.1 - r.0).sum()
    }

    /// Splits a packed write's payload into its map and its frame. Refuses a map that
    /// carries no block or sets bits past the extent's last block, and a missing frame.
    pub fn split(length: u32, payload: &[u8]) -> Result<(PackedMap, &[u8]), FormatError> {
        let what = "packed write map";
        let n = Self::encoded_len(length);
        let (bits, frame) = match payload.split_at_checked(n) {
            Some((b, f)) if !f.is_empty() => (b, f),
            _ => {
                return Err(FormatError::new(
                    what,
                    0,
                    format!(
                        "payload of {} bytes holds no frame after the {n}-byte map",
                        payload.len()
                    ),
                ))
            }
        };
        let blocks = Self::blocks(length);
        if !blocks.is_multiple_of(8) {
            let spare = bits[n - 1] >> (blocks % 8);
            if spare != 0 {
                return Err(FormatError::new(
                    what,
                    n as u64 - 1,
                    format!("bits set past the extent's {blocks} blocks"),
                ));
            }
        }
        if bits.iter().all(|&b| b == 0) {
            return Err(FormatError::new(what, 0, "the map carries no block"));
        }
        Ok((
            PackedMap {
                length,
                bits: bits.to_vec(),
            },
            frame,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_join_neighbouring_blocks_and_the_last_block_may_be_short() {
        let b = PACK_BLOCK;
        let len = 5 * b + 512;
        let m = PackedMap::new(len, |i| i != 2 && i != 3);
        assert_eq!(m.runs(), vec![(0, 2 * b), (4 * b, len)]);
        assert_eq!(m.carried_len(), 3 * b + 512);
        let mut payload = m.as_bytes().to_vec();
        payload.push(0x28);
        let (back, frame) = PackedMap::split(len, &payload).unwrap();
        assert_eq!((back, frame), (m, &[0x28u8][..]));
    }

    #[test]
    fn hostile_maps_are_refused_with_the_offset() {
        let b = PACK_BLOCK;
        // Three blocks: bit 3 is past the end.
        let e = PackedMap::split(3 * b, &[0b1001, 1]).unwrap_err();
        assert_eq!(e.offset, 0);
        assert!(e.problem.contains("past"), "{e}");
        assert!(PackedMap::split(3 * b, &[0, 1])
            .unwrap_err()
            .problem
            .contains("no block"));
        // Map only, no frame; and an empty payload.
        assert!(PackedMap::split(3 * b, &[1]).is_err());
        assert!(PackedMap::split(3 * b, &[]).is_err());
        // 64 blocks: every bit is valid, 9 map bytes are not expected.
        let (m, f) = PackedMap::split(64 * b, &[0xff; 9]).unwrap();
        assert_eq!((m.carried_len(), f.len()), (64 * b, 1));
    }
}
