//! The digest of a whole disk at a recovery point, one definition shared by the sender (which
//! computes it per cycle and sends it with the commit) and failover (which checks its output
//! against it):
//!
//! ```text
//! disk digest = BLAKE3( virtual_size as u64 LE
//!                     ‖ BLAKE3(block 0) ‖ BLAKE3(block 1) ‖ … )
//! ```
//! with blocks of [`DIGEST_BLOCK`] (1 MiB) bytes of the virtual disk in order, the last one
//! short when the size is not a multiple of 1 MiB (no padding: the replica's padding to 1 MiB
//! is not part of the disk). Hashing blocks separately lets a sender hash only the blocks a
//! cycle changed (the others' hashes are remembered), and lets both sides hash blocks on
//! several threads; the size in front keeps disks that differ only by trailing zeros apart.

use std::sync::OnceLock;

use crate::disk::{DiskError, VirtualDisk};

/// Block size of the digest.
pub const DIGEST_BLOCK: u64 = 1 << 20;

/// BLAKE3 of one block's bytes.
pub fn block_hash(data: &[u8]) -> [u8; 32] {
    *blake3::hash(data).as_bytes()
}

/// The hash of a full block of zeros (computed once).
pub fn zero_block_hash() -> [u8; 32] {
    static ZERO: OnceLock<[u8; 32]> = OnceLock::new();
    *ZERO.get_or_init(|| block_hash(&vec![0u8; DIGEST_BLOCK as usize]))
}

/// The digest was fed more or fewer bytes than the disk holds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("disk digest fed {fed} bytes of a {size}-byte disk: the caller skipped or repeated data")]
pub struct DigestLengthError {
    /// Bytes fed.
    pub fed: u64,
    /// The disk's virtual size.
    pub size: u64,
}

impl crate::error::Classify for DigestLengthError {
    /// A caller that skipped or repeated data is a bug, not a passing condition.
    fn recovery(&self) -> crate::error::Recovery {
        crate::error::Recovery::Permanent
    }
}

/// Builds a disk digest from the disk's bytes fed in order, in pieces of any size (a piece may
/// span blocks); full zero blocks can be fed without bytes ([`DigestBuilder::zeros`]).
/// Memory is constant: the current block is hashed as it streams.
pub struct DigestBuilder {
    size: u64,
    fed: u64,
    outer: blake3::Hasher,
    block: blake3::Hasher,
}

impl DigestBuilder {
    /// A digest of a disk of `virtual_size` bytes.
    pub fn new(virtual_size: u64) -> DigestBuilder {
        let mut outer = blake3::Hasher::new();
        outer.update(&virtual_size.to_le_bytes());
        DigestBuilder {
            size: virtual_size,
            fed: 0,
            outer,
            block: blake3::Hasher::new(),
        }
    }

    /// Bytes fed so far (the offset of the next byte).
    pub fn fed(&self) -> u64 {
        self.fed
    }

    /// Feeds the next bytes of the disk. Bytes past the virtual size are ignored (so a caller
    /// may feed the replica's 1 MiB padding); [`DigestBuilder::finish`] checks the count.
    pub fn update(&mut self, mut data: &[u8]) {
        let room = self.size - self.fed;
        if (data.len() as u64) > room {
            data = &data[..room as usize];
        }
        while !data.is_empty() {
            let in_block = self.fed % DIGEST_BLOCK;
            let n = ((DIGEST_BLOCK - in_block) as usize).min(data.len());
            self.block.update(&data[..n]);
            self.fed += n as u64;
            data = &data[n..];
            if self.fed.is_multiple_of(DIGEST_BLOCK) {
                self.end_block();
            }
        }
    }

    /// Feeds `len` zero bytes; whole aligned zero blocks cost one remembered hash.
    pub fn zeros(&mut self, len: u64) {
        let mut left = len.min(self.size - self.fed);
        let zero = [0u8; 64 << 10];
        while left > 0 {
            if self.fed.is_multiple_of(DIGEST_BLOCK) && left >= DIGEST_BLOCK {
                self.outer.update(&zero_block_hash());
                self.fed += DIGEST_BLOCK;
                left -= DIGEST_BLOCK;
                continue;
            }
            let in_block = self.fed % DIGEST_BLOCK;
            let n = (DIGEST_BLOCK - in_block).min(left).min(zero.len() as u64);
            self.update(&zero[..n as usize]);
            left -= n;
        }
    }

    fn end_block(&mut self) {
        let h = std::mem::take(&mut self.block).finalize();
        self.outer.update(h.as_bytes());
    }

    /// The digest; an error unless exactly the virtual size was fed.
    pub fn finish(mut self) -> Result<[u8; 32], DigestLengthError> {
        if self.fed != self.size {
            return Err(DigestLengthError {
                fed: self.fed,
                size: self.size,
            });
        }
        if !self.fed.is_multiple_of(DIGEST_BLOCK) {
            self.end_block();
        }
        Ok(*self.outer.finalize().as_bytes())
    }
}

/// The digest of a whole virtual disk (its `virtual_size` bytes).
pub fn digest_of(disk: &dyn VirtualDisk) -> Result<[u8; 32], DiskError> {
    digest_of_first(disk, disk.info().virtual_size)
}

/// The digest of the first `size` bytes of `disk`, taken as a disk of `size` bytes: what
/// failover checks, since its fixed-VHD output is the disk padded to 1 MiB.
pub fn digest_of_first(disk: &dyn VirtualDisk, size: u64) -> Result<[u8; 32], DiskError> {
    let mut b = DigestBuilder::new(size);
    let mut buf = vec![0u8; 4 << 20];
    while b.fed() < size {
        let n = ((size - b.fed()) as usize).min(buf.len());
        disk.read_into(b.fed(), &mut buf[..n])?;
        b.update(&buf[..n]);
    }
    // Exactly `size` bytes were fed by construction.
    Ok(b.finish().unwrap_or([0; 32]))
}

/// Lower-case hex of a digest, as `points --json` and logs print it.
pub fn hex(d: &[u8; 32]) -> String {
    hex::encode(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(data: &[u8]) -> [u8; 32] {
        let mut outer = blake3::Hasher::new();
        outer.update(&(data.len() as u64).to_le_bytes());
        for block in data.chunks(DIGEST_BLOCK as usize) {
            outer.update(&block_hash(block));
        }
        *outer.finalize().as_bytes()
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4096) as u8).collect()
    }

    #[test]
    fn digest_is_the_hash_of_size_and_block_hashes_whatever_the_piece_sizes() {
        for len in [0, 512, 1 << 20, (1 << 20) + 512, 3 * (1 << 20) - 4096] {
            let d = data(len);
            for piece in [512usize, 4096, 1 << 20, 3 << 20, 777 * 512] {
                let mut b = DigestBuilder::new(len as u64);
                for c in d.chunks(piece) {
                    b.update(c);
                }
                assert_eq!(
                    b.finish().unwrap(),
                    reference(&d),
                    "len {len} piece {piece}"
                );
            }
        }
    }

    #[test]
    fn zeros_match_feeding_zero_bytes() {
        let len = 5 * (1 << 20) + 1536;
        let mut d = data(len);
        d[(1 << 20) - 512..4 * (1 << 20) + 1024].fill(0);
        let mut b = DigestBuilder::new(len as u64);
        b.update(&d[..(1 << 20) - 512]);
        b.zeros((3 << 20) + 1536);
        b.update(&d[4 * (1 << 20) + 1024..]);
        assert_eq!(b.finish().unwrap(), reference(&d));
    }

    #[test]
    fn a_short_or_padded_feed_is_detected_or_clipped() {
        let mut b = DigestBuilder::new(4096);
        b.update(&[1u8; 1024]);
        assert_eq!(
            b.finish(),
            Err(DigestLengthError {
                fed: 1024,
                size: 4096
            })
        );
        let d = data(4096);
        let mut b = DigestBuilder::new(4096);
        b.update(&d);
        b.zeros(1 << 20); // the replica's padding
        assert_eq!(b.finish().unwrap(), reference(&d));
    }

    #[test]
    fn disks_differing_only_in_trailing_zeros_differ() {
        assert_ne!(reference(&[0u8; 512]), reference(&[0u8; 1024]));
    }
}
