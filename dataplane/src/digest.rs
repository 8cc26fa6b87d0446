//! The disk digest that travels with every recovery point: BLAKE3 over the virtual size
//! (u64 little-endian) followed by the BLAKE3 of every 1 MiB block in order (the last block
//! short). The sender computes it at each log switch from its block-hash table; failover
//! recomputes it from the materialised disk and refuses output that differs.

use crate::disk::{DiskError, VirtualDisk};

/// Block size of the digest.
pub const DIGEST_BLOCK: u64 = 1 << 20;

/// BLAKE3 of one block.
pub fn block_hash(data: &[u8]) -> [u8; 32] {
    *blake3::hash(data).as_bytes()
}

/// BLAKE3 of `len` zero bytes (cached for the full block size, which is the common case).
pub fn zero_block_hash(len: usize) -> [u8; 32] {
    static FULL: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
    if len as u64 == DIGEST_BLOCK {
        return *FULL.get_or_init(|| block_hash(&vec![0u8; DIGEST_BLOCK as usize]));
    }
    block_hash(&vec![0u8; len])
}

/// Builds a digest from block hashes in order.
pub struct DigestBuilder {
    h: blake3::Hasher,
}

impl DigestBuilder {
    /// Starts the digest of a disk of `virtual_size` bytes.
    pub fn new(virtual_size: u64) -> Self {
        let mut h = blake3::Hasher::new();
        h.update(&virtual_size.to_le_bytes());
        DigestBuilder { h }
    }

    /// Adds the next block's hash.
    pub fn push_hash(&mut self, block: [u8; 32]) {
        self.h.update(&block);
    }

    /// Adds the next block's bytes.
    pub fn push_block(&mut self, data: &[u8]) {
        self.push_hash(block_hash(data));
    }

    /// The digest.
    pub fn finish(self) -> [u8; 32] {
        *self.h.finalize().as_bytes()
    }
}

/// The digest of a whole disk, reading it block by block.
pub fn digest_of(disk: &dyn VirtualDisk) -> Result<[u8; 32], DiskError> {
    let size = disk.info().virtual_size;
    let mut d = DigestBuilder::new(size);
    let mut off = 0u64;
    while off < size {
        let n = DIGEST_BLOCK.min(size - off) as usize;
        d.push_block(&disk.read_at(off, n)?);
        off += n as u64;
    }
    Ok(d.finish())
}
