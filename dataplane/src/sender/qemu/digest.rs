//! The digests of a qemu disk's cycles: the disk digest of `crate::digest` (BLAKE3 over the
//! size and each 1 MiB block's BLAKE3) of the disk as the cycle's view holds it, sent with
//! the cycle's commit so that failover verifies the point, as for [MS-HRL] cycles.
//!
//! A cycle reads only its dirty extents from the view, and a block hash covers 1 MiB: to
//! hash only what changed, each block's BLAKE3 is kept as the chaining values of its 64 KiB
//! subtrees (`NAME.cvs`, 32 bytes per 64 KiB: 512 MiB per TiB of disk; BLAKE3's tree makes
//! a 1 MiB block's hash the merge of its 16 aligned 64 KiB subtrees), beside the block
//! hashes (`NAME.hashes`, the change logs' [`HashTable`]). A cycle hashes the pieces its
//! shipping reads as they pass ([`PieceTee`]), reads again only touched pieces no read held
//! whole (counted apart from the cycle's reads), merges the touched blocks and hashes the
//! table. The initial copy and a resync compute everything from their view
//! (a second read of the disk, as change logs' tables are computed after tracking starts).
//!
//! The table reflects the view of cycle `through`, except pieces in the VM's current
//! bitmap: a crash between a refresh and its commit leaves pieces newer than `through`,
//! all inside the extents that bitmap (merged back at restart) makes the next cycle read.

use std::fs::{File, OpenOptions};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Mutex;

use blake3::hazmat::{
    merge_subtrees_non_root, merge_subtrees_root, ChainingValue, HasherExt, Mode,
};

use vdrep_proto::RangeSet;

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

/// Hashes the whole pieces a cycle's pipeline reads from its view as they pass, so that the
/// cycle's digest need not read them again: reading every dirty piece a second time after
/// shipping took 1.5 s of a 4.5 s cycle of 1 GiB of scattered 64 KiB blocks
/// (`vdrep-bench qemu-cycle`), time the view stays open and the guest's writes pay
/// copy-before-write for. Each piece's chaining value goes straight to the chaining-value
/// file (memory stays bounded by the cycle's extents, which [`PieceTee::hashed`] mirrors);
/// that file may then hold pieces of a cycle that never commits, which is the case
/// [`ViewDigest::refresh`] already allows for (module docs: they lie inside the extents
/// the next cycle reads again).
pub struct PieceTee {
    cvs: File,
    size: u64,
    hashed: Mutex<RangeSet>,
}

impl PieceTee {
    /// Hashes the whole pieces inside `data`, read from the view at `offset`. A piece whose
    /// value cannot be written is simply not counted as hashed (the digest reads it).
    pub fn record(&self, offset: u64, data: &[u8]) {
        let end = (offset + data.len() as u64).min(self.size);
        let mut p = offset.div_ceil(PIECE);
        let mut done = Vec::new();
        while p * PIECE < end {
            let off = p * PIECE;
            let plen = PIECE.min(self.size - off);
            if off + plen > end {
                break;
            }
            let block = off - off % DIGEST_BLOCK;
            let alone = DIGEST_BLOCK.min(self.size - block) <= PIECE;
            let at = (off - offset) as usize;
            let cv = piece_cv(&data[at..at + plen as usize], p % PER_BLOCK, alone);
            if self.cvs.write_all_at(&cv, p * 32).is_ok() {
                done.push(p);
            }
            p += 1;
        }
        if let Ok(mut h) = self.hashed.lock() {
            for p in done {
                h.insert(p, p + 1);
            }
        }
    }

    /// The pieces hashed so far (indices).
    pub fn hashed(&self) -> RangeSet {
        self.hashed.lock().map(|h| h.clone()).unwrap_or_default()
    }
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

    /// A tee that hashes, into this disk's chaining-value file, the pieces a cycle's
    /// pipeline reads from `view`'s cycle (see [`PieceTee`]).
    pub fn tee(&self) -> Result<PieceTee, DigestError> {
        Ok(PieceTee {
            cvs: self.cvs.try_clone().map_err(|e| self.io(e))?,
            size: self.size,
            hashed: Mutex::new(RangeSet::new()),
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
    /// except those a [`PieceTee`] already hashed from the same view (`hashed`, piece
    /// indices), merges their blocks and returns the digest; `None` while the table is
    /// incomplete.
    pub fn refresh(
        &mut self,
        view: &dyn VirtualDisk,
        extents: &[Range<u64>],
        hashed: &RangeSet,
        through: u64,
    ) -> Result<Option<[u8; 32]>, DigestError> {
        if !self.table.is_complete() {
            return Ok(None);
        }
        // `extents` are sorted and disjoint: the first that ends after the piece's start
        // is the only one that can touch it first.
        let touched = |p: u64| {
            let (s, e) = (p * PIECE, (p + 1) * PIECE);
            let k = extents.partition_point(|x| x.end <= s);
            !hashed.contains(p) && extents.get(k).is_some_and(|x| x.start < e)
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
    /// file) and writes each block's hash. A block's zero pieces are known from one
    /// block-status query and never read; its other fresh pieces are read in runs (a query
    /// and a read per 64 KiB piece cost a 1 GiB cycle 1.5 s over NBD).
    fn rehash(
        &mut self,
        view: &dyn VirtualDisk,
        blocks: Range<u64>,
        fresh: &mut dyn FnMut(u64) -> bool,
    ) -> Result<(), DigestError> {
        let mut buf = vec![0u8; DIGEST_BLOCK as usize];
        for b in blocks {
            let start = b * DIGEST_BLOCK;
            let len = DIGEST_BLOCK.min(self.size - start);
            let n = len.div_ceil(PIECE);
            let piece = |i: u64| {
                let off = start + i * PIECE;
                (off, PIECE.min(self.size - off))
            };
            let wanted: Vec<bool> = (0..n).map(|i| fresh(b * PER_BLOCK + i)).collect();
            // Block status of the runs of wanted pieces only: a cycle may have given the
            // block's other pieces back to qemu (`super::view`), where it can no longer be
            // asked.
            let mut extents = Vec::new();
            for (first, end) in runs(&wanted) {
                let (off, _) = piece(first);
                let (last_off, last_len) = piece(end - 1);
                extents.extend(view.extents_in(off, last_off + last_len)?);
            }
            let zero = |i: u64| {
                let (off, plen) = piece(i);
                extents
                    .iter()
                    .filter(|e| e.offset < off + plen && e.end() > off)
                    .all(|e| e.kind == ExtentKind::Zero)
            };
            // Which pieces are read: fresh and not known to be zero.
            let read: Vec<bool> = (0..n).map(|i| wanted[i as usize] && !zero(i)).collect();
            for (first, end) in runs(&read) {
                let (off, _) = piece(first);
                let (last_off, last_len) = piece(end - 1);
                let run = (last_off + last_len - off) as usize;
                let at = (off - start) as usize;
                view.read_into(off, &mut buf[at..at + run])?;
                self.read += run as u64;
            }
            // The block's kept values in one read when any piece keeps its value.
            let mut kept = vec![0u8; n as usize * 32];
            if wanted.iter().any(|&w| !w) {
                self.cvs
                    .read_exact_at(&mut kept, b * PER_BLOCK * 32)
                    .map_err(|e| self.io(e))?;
            }
            let mut cvs = Vec::with_capacity(n as usize);
            for i in 0..n {
                let p = b * PER_BLOCK + i;
                let (off, plen) = piece(i);
                let at = (off - start) as usize;
                let data = &mut buf[at..at + plen as usize];
                let cv = if wanted[i as usize] {
                    if !read[i as usize] {
                        data.fill(0);
                    }
                    let cv = piece_cv(data, i, n == 1);
                    self.cvs.write_all_at(&cv, p * 32).map_err(|e| self.io(e))?;
                    cv
                } else {
                    let mut cv = [0u8; 32];
                    cv.copy_from_slice(&kept[i as usize * 32..][..32]);
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

/// The runs of `true` in `flags`, as `first..end` piece indices.
fn runs(flags: &[bool]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < flags.len() {
        if !flags[i] {
            i += 1;
            continue;
        }
        let first = i;
        while i < flags.len() && flags[i] {
            i += 1;
        }
        out.push((first as u64, i as u64));
    }
    out
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
        let got = d
            .refresh(raw(&img).as_ref(), &extents, &RangeSet::new(), 1)
            .unwrap();
        assert_eq!(got, Some(digest_of(raw(&img).as_ref()).unwrap()));
        assert!(d.read <= 5 * PIECE, "read {} bytes", d.read);
        drop(d);
        // Kept across restarts.
        let mut d = ViewDigest::open(&dir.path().join("st"), "os", size).unwrap();
        assert!(d.complete());
        let again = d
            .refresh(raw(&img).as_ref(), &[], &RangeSet::new(), 2)
            .unwrap();
        assert_eq!(again, got);
    }

    #[test]
    fn zero_pieces_are_hashed_unread_and_runs_of_data_pieces_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let size = 2 * DIGEST_BLOCK + 3 * PIECE;
        let img = dir.path().join("sparse.raw");
        let f = std::fs::File::create(&img).unwrap();
        f.set_len(size).unwrap();
        // Data in pieces 1-2 and 5 of block 0, 15 of block 0 and 0 of block 1 (a run across
        // the block boundary), and the short tail; holes elsewhere.
        let data_pieces = [1u64, 2, 5, 15, 16, 32, 33];
        for p in data_pieces {
            let v: Vec<u8> = (0..PIECE).map(|i| (i * 13 + p * 7) as u8).collect();
            f.write_all_at(&v, p * PIECE).unwrap();
        }
        drop(f);
        let mut d = ViewDigest::open(&dir.path().join("st"), "os", size).unwrap();
        let all = d.compute_all(raw(&img).as_ref(), 0).unwrap();
        assert_eq!(all, digest_of(raw(&img).as_ref()).unwrap());
        assert_eq!(
            d.read,
            data_pieces.len() as u64 * PIECE,
            "holes must not be read"
        );
        // Overwrite a hole and a data piece; the extent also covers holes it did not write.
        let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
        f.write_all_at(&vec![0x5A; 4096], 3 * PIECE + 8192).unwrap();
        f.write_all_at(&vec![0xA5; 4096], 5 * PIECE).unwrap();
        let dirty = std::slice::from_ref(&(3 * PIECE..7 * PIECE));
        d.read = 0;
        let got = d
            .refresh(raw(&img).as_ref(), dirty, &RangeSet::new(), 1)
            .unwrap();
        assert_eq!(got, Some(digest_of(raw(&img).as_ref()).unwrap()));
        assert!(d.read <= 3 * PIECE, "read {} bytes", d.read);
        // A cycle whose shipping read the dirty pieces through the tee: the digest reads
        // nothing again. The shipping's reads need not be piece-aligned: a read that starts
        // inside piece 8 hashes only the whole pieces after it.
        f.write_all_at(&vec![0x33; 8192], 4 * PIECE).unwrap();
        f.write_all_at(&vec![0x44; 512], 8 * PIECE + 4096).unwrap();
        let tee = d.tee().unwrap();
        let disk = raw(&img);
        for (off, len) in [(3 * PIECE, 2 * PIECE), (5 * PIECE, 2 * PIECE)] {
            tee.record(off, &disk.read_at(off, len as usize).unwrap());
        }
        let partial = 8 * PIECE + 4096;
        tee.record(partial, &disk.read_at(partial, PIECE as usize).unwrap());
        assert_eq!(
            tee.hashed(),
            RangeSet::from_range(3, 7),
            "piece 8 was not read whole"
        );
        d.read = 0;
        let dirty = [3 * PIECE..7 * PIECE, 8 * PIECE..9 * PIECE];
        let got = d.refresh(disk.as_ref(), &dirty, &tee.hashed(), 2).unwrap();
        assert_eq!(got, Some(digest_of(disk.as_ref()).unwrap()));
        assert_eq!(d.read, PIECE, "only piece 8, which no read held whole");
    }

    /// A view whose pieces `gone` were given back to qemu: reading them or asking their
    /// block status fails, as qemu's does (EACCES).
    struct Discarded {
        disk: Box<dyn VirtualDisk>,
        gone: RangeSet,
    }

    impl Discarded {
        fn check(&self, start: u64, end: u64) -> Result<(), DiskError> {
            if self.gone.clipped(start, end).is_empty() {
                return Ok(());
            }
            Err(DiskError::io(
                &self.disk.info().path,
                start,
                std::io::Error::other(format!("{start}..{end} was discarded")),
            ))
        }
    }

    impl VirtualDisk for Discarded {
        fn info(&self) -> &crate::disk::DiskInfo {
            self.disk.info()
        }
        fn extents_in(&self, start: u64, end: u64) -> Result<Vec<crate::disk::Extent>, DiskError> {
            self.check(start, end)?;
            self.disk.extents_in(start, end)
        }
        fn read_into(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
            self.check(offset, offset + buf.len() as u64)?;
            self.disk.read_into(offset, buf)
        }
    }

    #[test]
    fn a_refresh_asks_nothing_of_the_pieces_a_cycle_gave_back() {
        let dir = tempfile::tempdir().unwrap();
        let size = 2 * DIGEST_BLOCK;
        let img = dir.path().join("d.raw");
        let data: Vec<u8> = (0..size).map(|i| (i * 11 % 241) as u8).collect();
        std::fs::write(&img, &data).unwrap();
        let mut d = ViewDigest::open(&dir.path().join("st"), "os", size).unwrap();
        d.compute_all(raw(&img).as_ref(), 0).unwrap();
        // A write inside piece 3 (no read held the piece whole: the digest reads it) and
        // one over piece 20 (the shipping read it whole, through the tee, then discarded
        // it); every other piece of both blocks was clean, and discarded at opening.
        let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
        f.write_all_at(&[0x77; 4096], 3 * PIECE + 512).unwrap();
        f.write_all_at(&vec![0x99; PIECE as usize], 20 * PIECE)
            .unwrap();
        let tee = d.tee().unwrap();
        tee.record(
            20 * PIECE,
            &raw(&img).read_at(20 * PIECE, PIECE as usize).unwrap(),
        );
        let mut gone = RangeSet::from_range(0, 3 * PIECE);
        gone.insert(4 * PIECE, size);
        let view = Discarded {
            disk: raw(&img),
            gone,
        };
        let dirty = [3 * PIECE + 512..3 * PIECE + 4608, 20 * PIECE..21 * PIECE];
        d.read = 0;
        let got = d.refresh(&view, &dirty, &tee.hashed(), 1).unwrap();
        assert_eq!(got, Some(digest_of(raw(&img).as_ref()).unwrap()));
        assert_eq!(d.read, PIECE, "only piece 3");
    }
}
