//! The digests of a qemu disk's cycles: the disk digest of `crate::digest` (BLAKE3 over the
//! size and each 1 MiB block's BLAKE3) of the disk as the cycle's view holds it, sent with
//! the cycle's commit so that failover verifies the point, as for [MS-HRL] cycles.
//!
//! A cycle reads only its dirty extents from the view, and a block hash covers 1 MiB: to
//! hash only what changed, each block's BLAKE3 is kept as the chaining values of its 64 KiB
//! subtrees (`NAME.cvs`, 32 bytes per 64 KiB: 512 MiB per TiB of disk; BLAKE3's tree makes
//! a 1 MiB block's hash the merge of its 16 aligned 64 KiB subtrees), beside the block
//! hashes (`NAME.hashes`, the change logs' [`HashTable`]). A cycle re-reads the 64 KiB
//! pieces its dirty extents touch (qemu's default bitmap granularity is 64 KiB, so about
//! its dirty bytes again; counted apart from the cycle's reads), merges the touched blocks
//! and hashes the table. The initial copy and a resync compute everything from their view
//! (a second read of the disk, as change logs' tables are computed after tracking starts).
//!
//! The table reflects the view of cycle `through`, except pieces in the VM's current
//! bitmap: a crash between a refresh and its commit leaves pieces newer than `through`,
//! all inside the extents that bitmap (merged back at restart) makes the next cycle read.

use std::fs::{File, OpenOptions};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;

use blake3::hazmat::{
    merge_subtrees_non_root, merge_subtrees_root, ChainingValue, HasherExt, Mode,
};

use crate::digest::DIGEST_BLOCK;
use crate::disk::{DiskError, ExtentKind, VirtualDisk};
use crate::tracking::{HashTable, HashTableError};

/// The subtree size whose chaining values are kept.
pub const PIECE: u64 = 64 << 10;
const PER_BLOCK: u64 = DIGEST_BLOCK / PIECE;

/// Why a digest could not be computed (the cycle then commits without one).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DigestError {
    /// Reading the view failed.
    #[error(transparent)]
    View(#[from] DiskError),
    /// The block-hash table failed.
    #[error(transparent)]
    Table(#[from] HashTableError),
    /// The chaining-value file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// One disk's digest state.
pub struct ViewDigest {
    cvs: File,
    cvs_path: String,
    table: HashTable,
    size: u64,
    /// Bytes read from views for digests (not the cycles' reads).
    pub read: u64,
}

/// The chaining value (or, for a block of one piece, the root hash) of piece `i` of a
/// block, holding `data`.
fn piece_cv(data: &[u8], i: u64, alone: bool) -> ChainingValue {
    if alone {
        return *blake3::hash(data).as_bytes();
    }
    let mut h = blake3::Hasher::new();
    h.set_input_offset(i * PIECE);
    h.update(data);
    h.finalize_non_root()
}

/// The hash of a block of `len` bytes from its pieces' values (`cvs[0..]`, each `PIECE`
/// bytes but the last), merged as BLAKE3's tree does (`left_subtree_len`).
fn block_root(cvs: &[ChainingValue], len: u64) -> [u8; 32] {
    fn merge(cvs: &[ChainingValue], len: u64) -> ChainingValue {
        if cvs.len() == 1 {
            return cvs[0];
        }
        let left = blake3::hazmat::left_subtree_len(len);
        let k = (left / PIECE) as usize;
        merge_subtrees_non_root(
            &merge(&cvs[..k], left),
            &merge(&cvs[k..], len - left),
            Mode::Hash,
        )
    }
    if cvs.len() == 1 {
        return cvs[0];
    }
    let left = blake3::hazmat::left_subtree_len(len);
    let k = (left / PIECE) as usize;
    *merge_subtrees_root(
        &merge(&cvs[..k], left),
        &merge(&cvs[k..], len - left),
        Mode::Hash,
    )
    .as_bytes()
}

impl ViewDigest {
    /// Opens (creating) the state of disk `name` of `size` bytes in `dir`.
    pub fn open(dir: &Path, name: &str, size: u64) -> Result<ViewDigest, DigestError> {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let table = HashTable::open(&dir.join(format!("{name}.hashes")), size)?;
        let p = dir.join(format!("{name}.cvs"));
        let cvs = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&p)
            .map_err(|e| io(&p, e))?;
        let pieces = size.div_ceil(PIECE);
        cvs.set_len(pieces * 32).map_err(|e| io(&p, e))?;
        Ok(ViewDigest {
            cvs,
            cvs_path: p.display().to_string(),
            table,
            size,
            read: 0,
        })
    }

    fn io(&self, e: std::io::Error) -> DigestError {
        DigestError::Io {
            path: self.cvs_path.clone(),
            source: e,
        }
    }

    /// Marks the table stale, durably, before a copy or resync makes it so (the bitmap that
    /// bounds what changed starts over).
    pub fn invalidate(&mut self) -> Result<(), DigestError> {
        Ok(self.table.invalidate()?)
    }

    /// Whether the table holds every block (a cycle's digest can be computed).
    pub fn complete(&self) -> bool {
        self.table.is_complete()
    }

    /// Computes every piece and block from `view` (the disk at cycle `through`) and returns
    /// the digest; zero extents are hashed without being read.
    pub fn compute_all(
        &mut self,
        view: &dyn VirtualDisk,
        through: u64,
    ) -> Result<[u8; 32], DigestError> {
        self.table.invalidate()?;
        let blocks = self.size.div_ceil(DIGEST_BLOCK);
        self.rehash(view, 0..blocks, &mut |_| true)?;
        self.table.set_complete(through)?;
        self.digest()
    }

    /// Re-reads the pieces of `view` (the disk at cycle `through`) that `extents` touch,
    /// merges their blocks and returns the digest; `None` while the table is incomplete.
    pub fn refresh(
        &mut self,
        view: &dyn VirtualDisk,
        extents: &[Range<u64>],
        through: u64,
    ) -> Result<Option<[u8; 32]>, DigestError> {
        if !self.table.is_complete() {
            return Ok(None);
        }
        let touched = |p: u64| {
            let (s, e) = (p * PIECE, (p + 1) * PIECE);
            extents.iter().any(|x| x.start < e && x.end > s)
        };
        let mut blocks: Vec<u64> = extents
            .iter()
            .filter(|x| x.end > x.start)
            .flat_map(|x| x.start / DIGEST_BLOCK..=(x.end - 1) / DIGEST_BLOCK)
            .filter(|b| b * DIGEST_BLOCK < self.size)
            .collect();
        blocks.dedup();
        let r = (|| -> Result<(), DigestError> {
            for b in blocks {
                self.rehash(view, b..b + 1, &mut |p| touched(p))?;
            }
            self.cvs.sync_data().map_err(|e| self.io(e))?;
            self.table.commit_entries(true, through)?;
            Ok(())
        })();
        if r.is_err() {
            // No later digest from entries that may be stale.
            let _ = self.table.invalidate();
        }
        r?;
        self.digest().map(Some)
    }

    /// Recomputes the pieces of `blocks` that `fresh` names (the others are read from the
    /// file) and writes each block's hash.
    fn rehash(
        &mut self,
        view: &dyn VirtualDisk,
        blocks: Range<u64>,
        fresh: &mut dyn FnMut(u64) -> bool,
    ) -> Result<(), DigestError> {
        let mut buf = vec![0u8; PIECE as usize];
        for b in blocks {
            let start = b * DIGEST_BLOCK;
            let len = DIGEST_BLOCK.min(self.size - start);
            let n = len.div_ceil(PIECE);
            let mut cvs = Vec::with_capacity(n as usize);
            for i in 0..n {
                let p = b * PER_BLOCK + i;
                let off = start + i * PIECE;
                let plen = PIECE.min(self.size - off) as usize;
                let cv = if fresh(p) {
                    let data = &mut buf[..plen];
                    let zero = view
                        .extents_in(off, off + plen as u64)?
                        .iter()
                        .all(|e| e.kind == ExtentKind::Zero);
                    if zero {
                        data.fill(0);
                    } else {
                        view.read_into(off, data)?;
                        self.read += plen as u64;
                    }
                    let cv = piece_cv(data, i, n == 1);
                    self.cvs.write_all_at(&cv, p * 32).map_err(|e| self.io(e))?;
                    cv
                } else {
                    let mut cv = [0u8; 32];
                    self.cvs
                        .read_exact_at(&mut cv, p * 32)
                        .map_err(|e| self.io(e))?;
                    cv
                };
                cvs.push(cv);
            }
            self.table.write_entry(b, &block_root(&cvs, len))?;
        }
        Ok(())
    }

    fn digest(&self) -> Result<[u8; 32], DigestError> {
        self.table.digest()?.ok_or_else(|| DigestError::Io {
            path: self.cvs_path.clone(),
            source: std::io::Error::other("block-hash table incomplete"),
        })
    }
}

fn io(p: &Path, e: std::io::Error) -> DigestError {
    DigestError::Io {
        path: p.display().to_string(),
        source: e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::{block_hash, digest_of};

    fn raw(path: &Path) -> Box<dyn VirtualDisk> {
        crate::disk::open(path, crate::disk::OpenOptions::default()).unwrap()
    }

    #[test]
    fn a_block_hash_is_the_merge_of_its_64_kib_subtrees_whatever_its_length() {
        for len in [
            DIGEST_BLOCK,
            DIGEST_BLOCK - 512,
            3 * PIECE + 1,
            2 * PIECE,
            PIECE + 1024,
            PIECE,
            4096,
            512,
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 253) as u8).collect();
            let n = len.div_ceil(PIECE);
            let cvs: Vec<_> = (0..n)
                .map(|i| {
                    let s = (i * PIECE) as usize;
                    let e = ((i + 1) * PIECE).min(len) as usize;
                    piece_cv(&data[s..e], i, n == 1)
                })
                .collect();
            assert_eq!(block_root(&cvs, len), block_hash(&data), "length {len}");
        }
    }

    #[test]
    fn a_refreshed_digest_equals_the_disks_digest_reading_only_the_touched_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let size = 3 * DIGEST_BLOCK + 5 * PIECE + 512;
        let img = dir.path().join("d.raw");
        let data: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&img, &data).unwrap();
        let mut d = ViewDigest::open(&dir.path().join("st"), "os", size).unwrap();
        assert!(!d.complete());
        let all = d.compute_all(raw(&img).as_ref(), 0).unwrap();
        assert_eq!(all, digest_of(raw(&img).as_ref()).unwrap());
        // Writes: inside a piece, across a block boundary, in the short last piece.
        let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
        let writes = [
            (PIECE + 100, 4096u64),
            (DIGEST_BLOCK - 1024, 8192),
            (size - 300, 300),
        ];
        for (off, len) in writes {
            f.write_all_at(&vec![0xEE; len as usize], off).unwrap();
        }
        let extents: Vec<Range<u64>> = writes.iter().map(|&(o, l)| o..o + l).collect();
        d.read = 0;
        let got = d.refresh(raw(&img).as_ref(), &extents, 1).unwrap();
        assert_eq!(got, Some(digest_of(raw(&img).as_ref()).unwrap()));
        assert!(d.read <= 5 * PIECE, "read {} bytes", d.read);
        drop(d);
        // Kept across restarts.
        let mut d = ViewDigest::open(&dir.path().join("st"), "os", size).unwrap();
        assert!(d.complete());
        let again = d.refresh(raw(&img).as_ref(), &[], 2).unwrap();
        assert_eq!(again, got);
    }
}
