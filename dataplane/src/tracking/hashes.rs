//! The sender's block-hash table of a protected disk (`D.hrl.hashes`), from which each
//! cycle's digest is computed: BLAKE3 over the virtual size and the BLAKE3 of every 1 MiB
//! block (`crate::digest` defines it; the receiver verifies failover output with it).
//!
//! The full table is computed once after tracking starts, without the lock: any block that
//! changes while it is read is in the change logs and is recomputed at the next switch. After
//! each switch, without the lock, the blocks the closed log touched are rebuilt from the
//! closed log and a reader opened at the switch (`super::refresh`), so the digest is exactly
//! the disk at the switch, or withheld when a later write made that impossible. The table
//! lives on disk and is read and written by entry, so memory stays small whatever the disk
//! size.
//!
//! The header records the last cycle whose log the entries reflect (`through`). A sender
//! killed between a switch and the refresh leaves a closed log the table has not seen; the
//! next refresh (at start or at the next switch) takes every pending log past `through`, so
//! such a crash costs one cycle without a digest, never a wrong digest later.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::digest::{block_hash, zero_block_hash, DIGEST_BLOCK};
use crate::disk::{DiskError, ExtentKind, VirtualDisk};
use vdrep_proto::RangeSet;

const MAGIC: &[u8; 8] = b"vdrephsh";
const VERSION: u32 = 2;
const HEADER: u64 = 64;

/// Errors of the table.
#[derive(Debug, thiserror::Error)]
pub enum HashTableError {
    /// Reading the disk failed.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// The table file failed.
    #[error("{}: {op} failed: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What.
        op: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl crate::error::Classify for HashTableError {
    /// As the disk read says; a failing table file needs an operator.
    fn recovery(&self) -> crate::error::Recovery {
        match self {
            HashTableError::Disk(e) => e.recovery(),
            HashTableError::Io { .. } => crate::error::Recovery::Permanent,
        }
    }
}

/// The table of one disk.
pub struct HashTable {
    path: PathBuf,
    file: File,
    virtual_size: u64,
    complete: bool,
    through: u64,
}

fn blocks(size: u64) -> u64 {
    size.div_ceil(DIGEST_BLOCK)
}

impl HashTable {
    /// Opens the table at `path` for a disk of `virtual_size` bytes; a table for another
    /// size or version is discarded (it will be recomputed).
    pub fn open(path: &Path, virtual_size: u64) -> Result<HashTable, HashTableError> {
        let io = |op, e| HashTableError::Io {
            path: path.to_path_buf(),
            op,
            source: e,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| io("open", e))?;
        let mut h = [0u8; HEADER as usize];
        let ok = file.read_exact_at(&mut h, 0).is_ok()
            && &h[0..8] == MAGIC
            && u32::from_le_bytes([h[8], h[9], h[10], h[11]]) == VERSION
            && u64::from_le_bytes(h[16..24].try_into().unwrap_or_default()) == virtual_size;
        let complete = ok && h[24] == 1;
        let through = u64::from_le_bytes(h[32..40].try_into().unwrap_or_default());
        let mut t = HashTable {
            path: path.to_path_buf(),
            file,
            virtual_size,
            complete,
            through,
        };
        if !ok {
            t.through = 0;
            t.write_header(false)?;
            t.file
                .set_len(HEADER + blocks(virtual_size) * 32)
                .map_err(|e| io("size", e))?;
        }
        Ok(t)
    }

    /// Whether every entry has been computed.
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// The last cycle whose closed log the entries reflect.
    pub fn through(&self) -> u64 {
        self.through
    }

    /// Marks the table stale (it will be recomputed in full): for when its cycle numbers
    /// no longer fit the logs beside the disk.
    pub fn invalidate(&mut self) -> Result<(), HashTableError> {
        self.write_header(false)
    }

    fn io(&self, op: &'static str) -> impl Fn(std::io::Error) -> HashTableError + '_ {
        move |e| HashTableError::Io {
            path: self.path.clone(),
            op,
            source: e,
        }
    }

    fn write_header(&mut self, complete: bool) -> Result<(), HashTableError> {
        let mut h = [0u8; HEADER as usize];
        h[0..8].copy_from_slice(MAGIC);
        h[8..12].copy_from_slice(&VERSION.to_le_bytes());
        h[12..16].copy_from_slice(&(DIGEST_BLOCK as u32).to_le_bytes());
        h[16..24].copy_from_slice(&self.virtual_size.to_le_bytes());
        h[24] = complete as u8;
        h[32..40].copy_from_slice(&self.through.to_le_bytes());
        self.file
            .write_all_at(&h, 0)
            .map_err(self.io("write header"))?;
        self.file.sync_data().map_err(self.io("sync"))?;
        self.complete = complete;
        Ok(())
    }

    fn hash_block(&self, disk: &dyn VirtualDisk, b: u64) -> Result<[u8; 32], HashTableError> {
        let off = b * DIGEST_BLOCK;
        let len = DIGEST_BLOCK.min(self.virtual_size - off);
        // Blocks the format says hold nothing hash as zeros without being read.
        let ext = disk.extents_in(off, off + len)?;
        if ext.iter().all(|e| e.kind == ExtentKind::Zero) {
            return Ok(if len == DIGEST_BLOCK {
                zero_block_hash()
            } else {
                block_hash(&vec![0u8; len as usize])
            });
        }
        let data = disk.read_at(off, len as usize)?;
        Ok(block_hash(&data))
    }

    /// Computes every entry from `disk`, which already holds every write of the logs closed
    /// up to cycle `through` (later writes must be in logs of later cycles).
    pub fn compute_all(
        &mut self,
        disk: &dyn VirtualDisk,
        through: u64,
    ) -> Result<(), HashTableError> {
        self.write_header(false)?;
        let mut buf = Vec::with_capacity(32 * 1024);
        let n = blocks(self.virtual_size);
        let mut first = 0u64;
        for b in 0..n {
            buf.extend_from_slice(&self.hash_block(disk, b)?);
            if buf.len() == buf.capacity() || b + 1 == n {
                self.file
                    .write_all_at(&buf, HEADER + first * 32)
                    .map_err(self.io("write entries"))?;
                buf.clear();
                first = b + 1;
            }
        }
        self.file.sync_data().map_err(self.io("sync"))?;
        self.through = through;
        self.write_header(true)
    }

    /// Recomputes the blocks overlapping the given disk ranges, which cover every write of
    /// the logs up to cycle `through`. A failure leaves the table
    /// marked incomplete, so no later digest is computed from stale entries.
    pub fn refresh(
        &mut self,
        disk: &dyn VirtualDisk,
        ranges: &RangeSet,
        through: u64,
    ) -> Result<(), HashTableError> {
        let r = self.refresh_inner(disk, ranges);
        if r.is_err() {
            let _ = self.write_header(false);
            return r;
        }
        if through != self.through {
            self.through = through;
            self.write_header(self.complete)?;
        }
        Ok(())
    }

    fn refresh_inner(
        &mut self,
        disk: &dyn VirtualDisk,
        ranges: &RangeSet,
    ) -> Result<(), HashTableError> {
        let mut last = u64::MAX;
        for r in ranges.iter() {
            let (s, e) = (r.start, r.end);
            let from = (s / DIGEST_BLOCK).max(if last == u64::MAX { 0 } else { last + 1 });
            let to = (e - 1) / DIGEST_BLOCK;
            for b in from..=to.min(blocks(self.virtual_size).saturating_sub(1)) {
                let h = self.hash_block(disk, b)?;
                self.file
                    .write_all_at(&h, HEADER + b * 32)
                    .map_err(self.io("write entry"))?;
                last = b;
            }
        }
        self.file.sync_data().map_err(self.io("sync"))
    }

    /// Records the hash of block `b` (the caller computed it; see `tracking::refresh`).
    pub(crate) fn write_entry(&self, b: u64, hash: &[u8; 32]) -> Result<(), HashTableError> {
        self.file
            .write_all_at(hash, HEADER + b * 32)
            .map_err(self.io("write entry"))
    }

    /// Makes the entries written so far durable (`wrote`: any were) and records that they
    /// reflect every log up to cycle `through`.
    pub(crate) fn commit_entries(
        &mut self,
        wrote: bool,
        through: u64,
    ) -> Result<(), HashTableError> {
        if wrote {
            // An empty cycle costs one sync, not two.
            self.file.sync_data().map_err(self.io("sync"))?;
        }
        self.through = through;
        self.write_header(self.complete)
    }

    /// Marks every entry computed (the caller wrote them all, durably) as of cycle
    /// `through` (the qemu source's tables: `sender::qemu::digest`).
    pub(crate) fn set_complete(&mut self, through: u64) -> Result<(), HashTableError> {
        self.file.sync_data().map_err(self.io("sync"))?;
        self.through = through;
        self.write_header(true)
    }

    /// The disk's virtual size.
    pub fn virtual_size(&self) -> u64 {
        self.virtual_size
    }

    /// The disk digest from the table (`None` while the table is incomplete).
    pub fn digest(&self) -> Result<Option<[u8; 32]>, HashTableError> {
        if !self.complete {
            return Ok(None);
        }
        // The definition of `crate::digest`: BLAKE3(size LE ‖ block hashes).
        let mut d = blake3::Hasher::new();
        d.update(&self.virtual_size.to_le_bytes());
        let n = blocks(self.virtual_size);
        let mut buf = vec![0u8; 32 * 4096];
        let mut b = 0u64;
        while b < n {
            let k = (n - b).min(4096);
            let part = &mut buf[..(k * 32) as usize];
            self.file
                .read_exact_at(part, HEADER + b * 32)
                .map_err(self.io("read entries"))?;
            for h in part.chunks_exact(32) {
                d.update(h);
            }
            b += k;
        }
        Ok(Some(*d.finalize().as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    use super::*;
    use crate::digest::digest_of;

    const SIZE: u64 = 3 * DIGEST_BLOCK + 512;

    fn disk(path: &Path) -> Box<dyn VirtualDisk> {
        crate::disk::open(path, crate::disk::OpenOptions::default()).unwrap()
    }

    #[test]
    fn digest_follows_refreshed_writes_and_the_cycle_it_reflects_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("d.raw");
        let data: Vec<u8> = (0..SIZE).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&raw, &data).unwrap();
        let tp = dir.path().join("d.hrl.hashes");
        let mut t = HashTable::open(&tp, SIZE).unwrap();
        assert!(!t.is_complete());
        assert_eq!(
            t.digest().unwrap(),
            None,
            "no digest from an incomplete table"
        );
        t.compute_all(disk(&raw).as_ref(), 4).unwrap();
        assert_eq!(
            t.digest().unwrap(),
            Some(digest_of(disk(&raw).as_ref()).unwrap())
        );

        // A write into the short last block and one across a block boundary.
        let f = std::fs::OpenOptions::new().write(true).open(&raw).unwrap();
        f.write_all_at(&[0xAB; 512], SIZE - 512).unwrap();
        f.write_all_at(&[0xCD; 4096], DIGEST_BLOCK - 1024).unwrap();
        let stale = t.digest().unwrap();
        t.refresh(
            disk(&raw).as_ref(),
            &[DIGEST_BLOCK - 1024..DIGEST_BLOCK + 3072, SIZE - 512..SIZE]
                .into_iter()
                .collect(),
            5,
        )
        .unwrap();
        let fresh = Some(digest_of(disk(&raw).as_ref()).unwrap());
        assert_ne!(stale, fresh);
        assert_eq!(t.digest().unwrap(), fresh);
        drop(t);

        let mut t = HashTable::open(&tp, SIZE).unwrap();
        assert!(t.is_complete());
        assert_eq!(t.through(), 5);
        assert_eq!(t.digest().unwrap(), fresh);
        t.invalidate().unwrap();
        drop(t);
        let t = HashTable::open(&tp, SIZE).unwrap();
        assert!(!t.is_complete(), "invalidation is durable");
        // A table for another size is discarded.
        drop(t);
        let t = HashTable::open(&tp, SIZE + 512).unwrap();
        assert!(!t.is_complete());
        assert_eq!(t.through(), 0);
    }
}
