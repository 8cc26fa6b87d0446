//! Resynchronisation by block checksums: the hash tree both ends build over a disk.
//!
//! **Tree.** Leaves are the disk's 4 KiB pages (the last one short); a leaf's hash is the
//! BLAKE3 of the page. Every node above covers [`RESYNC_FANOUT`] (64) children: 256 KiB,
//! 16 MiB and 1 GiB nodes ([`RESYNC_NODE_SIZES`]); its hash is the BLAKE3 of its children's
//! full 32-byte hashes in order. The **root** is BLAKE3 of the virtual size (u64 LE) and the
//! top nodes' hashes: full strength, it confirms the end state after every resync.
//!
//! **Comparison.** The sender asks the receiver for the top nodes' hashes, then for the
//! children of the nodes that differ, level by level, down to pages. Only the first 8 bytes
//! of a hash travel ([`trunc`]): a 64-bit collision could hide a difference, which the root
//! comparison at the end catches (the sender then runs another round). Hash bytes therefore
//! grow with the number of differing nodes: 64 × 8 bytes per differing parent. Where at
//! least [`WHOLE_NODE_THRESHOLD`] of a 16 MiB node's 256 KiB children differ (a contiguous
//! change), the sender stops descending and sends the whole node: the page hashes would cost
//! more than the few equal pages they spare.
//!
//! **What is kept.** Each side keeps the 256 KiB level (32 bytes per 256 KiB: 2 MiB for a
//! 16 GiB disk, 512 MiB for 4 TiB) and the levels above ([`Levels`]) in an [`index`] file
//! paged through a bounded cache ([`pages`]: 1 MiB per disk whatever its size), the 16 MiB
//! level derived from the 256 KiB one when asked: the receiver in its durable `NAME.hidx`,
//! the sender in an unlinked temporary file for the session (`vdrep::sender::tree`). The
//! in-memory [`Tree`] answers the same ([`Levels`]) and serves as the tests' reference. Page hashes are computed on demand by reading the 256 KiB nodes that
//! differ again. All-zero ranges hash to constants
//! without hashing (a cheap zero test), and ranges the source format reports unallocated
//! are not even read.
//!
//! **The receiver's side** comes from its durable [`index`] of the 256 KiB level: updated
//! with every write it applies (a write covering whole nodes sets their hashes, any other
//! marks them dirty), so a resync reads back only the dirty nodes, not the whole replica.
//! A block changed behind the receiver's back is therefore *not* seen unless the sender asks
//! for `--verify`, which rehashes the whole working image (the committed replica plus the
//! open cycle's writes) and repairs the index. Where no index can be kept (a sink without
//! one, a receiver that stopped uncleanly), the receiver rehashes everything and logs why.

pub mod index;
pub mod leaves;
pub mod pages;

use bytes::Bytes;
pub use vdrep_proto::wire::{RESYNC_FANOUT, RESYNC_NODE_SIZES};
use vdrep_proto::RangeSet;

/// Levels of the tree (the last holds pages).
pub const LEVELS: usize = RESYNC_NODE_SIZES.len();
/// The page level.
pub const PAGE_LEVEL: u8 = (LEVELS - 1) as u8;
/// Page size.
pub const PAGE: u64 = RESYNC_NODE_SIZES[LEVELS - 1];
/// The level kept in memory and in the receiver's index (256 KiB nodes).
pub const KEPT: usize = LEVELS - 2;
/// Differing 256 KiB children (of 64) from which a 16 MiB node is sent whole.
pub const WHOLE_NODE_THRESHOLD: usize = 56;
/// Bytes read at once while building.
const READ_UNIT: u64 = 4 << 20;

/// Where a tree's bytes come from.
pub trait Source: Sync {
    /// Virtual size in bytes.
    fn size(&self) -> u64;
    /// Reads `[off, off+len)` (inside the disk).
    fn read(&self, off: u64, len: usize) -> Result<Bytes, String>;
    /// Whether the range is known to hold zeros without reading it.
    fn known_zero(&self, _off: u64, _len: u64) -> bool {
        false
    }
}

/// A disk image held in memory (tests, tools); a read past its end fails.
impl Source for Vec<u8> {
    fn size(&self) -> u64 {
        self.len() as u64
    }
    fn read(&self, off: u64, len: usize) -> Result<Bytes, String> {
        usize::try_from(off)
            .ok()
            .and_then(|o| self.get(o..o.checked_add(len)?))
            .map(Bytes::copy_from_slice)
            .ok_or_else(|| {
                format!(
                    "read of {len} bytes at {off}: past the end of a {}-byte image",
                    self.len()
                )
            })
    }
}

/// A 32-byte hash.
pub type Hash = [u8; 32];

/// The 8 bytes of a hash that travel.
pub fn trunc(h: &Hash) -> u64 {
    u64::from_le_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]])
}

/// Nodes at `level` of a disk of `size` bytes.
pub fn count(size: u64, level: usize) -> u64 {
    size.div_ceil(RESYNC_NODE_SIZES[level])
}

/// Byte range of node `i` at `level`.
pub fn node_range(size: u64, level: usize, i: u64) -> (u64, u64) {
    let n = RESYNC_NODE_SIZES[level];
    (i * n, ((i + 1) * n).min(size))
}

/// Node indices at `level + 1` under node `parent` of `level`.
pub fn children(size: u64, level: usize, parent: u64) -> std::ops::Range<u64> {
    let first = parent * RESYNC_FANOUT;
    first..(first + RESYNC_FANOUT).min(count(size, level + 1))
}

/// A node's hash from its children's.
pub fn combine(children: &[Hash]) -> Hash {
    let mut h = blake3::Hasher::new();
    for c in children {
        h.update(c);
    }
    *h.finalize().as_bytes()
}

/// Page hashes of `data` (the bytes of one node, starting at a page boundary), 16 pages at
/// a time where the CPU allows ([`leaves`]).
fn page_hashes(data: &[u8]) -> Vec<Hash> {
    leaves::page_hashes(data)
}

/// Hash of a 256 KiB-level node from its bytes (zero test first: zeros are common).
pub fn kept_hash(data: &[u8]) -> Hash {
    static ZERO: std::sync::OnceLock<Hash> = std::sync::OnceLock::new();
    let full = RESYNC_NODE_SIZES[KEPT] as usize;
    if data.len() == full && data.iter().all(|&b| b == 0) {
        return *ZERO.get_or_init(|| combine(&page_hashes(&vec![0u8; full])));
    }
    combine(&page_hashes(data))
}

/// The tree of one disk, 256 KiB level and above.
pub struct Tree {
    size: u64,
    /// `levels[l]` for l in 0..=KEPT.
    levels: Vec<Vec<Hash>>,
}

impl Tree {
    /// Builds the tree by reading `src` on `threads` threads.
    pub fn build(src: &dyn Source, threads: usize) -> Result<Tree, String> {
        let size = src.size();
        let nk = count(size, KEPT) as usize;
        let per_unit = (READ_UNIT / RESYNC_NODE_SIZES[KEPT]) as usize;
        let units = nk.div_ceil(per_unit);
        let next = std::sync::atomic::AtomicUsize::new(0);
        let out = std::sync::Mutex::new(vec![[0u8; 32]; nk]);
        let err = std::sync::Mutex::new(None::<String>);
        std::thread::scope(|s| {
            for _ in 0..threads.max(1) {
                s.spawn(|| loop {
                    let u = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if u >= units || err.lock().map(|e| e.is_some()).unwrap_or(true) {
                        return;
                    }
                    let off = u as u64 * READ_UNIT;
                    let end = (off + READ_UNIT).min(size);
                    let hashes = match unit_hashes(src, off, end) {
                        Ok(h) => h,
                        Err(e) => {
                            if let Ok(mut g) = err.lock() {
                                g.get_or_insert(e);
                            }
                            return;
                        }
                    };
                    if let Ok(mut o) = out.lock() {
                        let first = u * per_unit;
                        o[first..first + hashes.len()].copy_from_slice(&hashes);
                    }
                });
            }
        });
        if let Some(e) = err.into_inner().ok().flatten() {
            return Err(e);
        }
        let kept = out
            .into_inner()
            .map_err(|_| "hash worker panicked".to_string())?;
        let mut t = Tree {
            size,
            levels: vec![Vec::new(); KEPT + 1],
        };
        t.levels[KEPT] = kept;
        t.derive_upper();
        Ok(t)
    }

    fn derive_upper(&mut self) {
        for l in (0..KEPT).rev() {
            let below = std::mem::take(&mut self.levels[l + 1]);
            self.levels[l] = below.chunks(RESYNC_FANOUT as usize).map(combine).collect();
            self.levels[l + 1] = below;
        }
    }

    /// Virtual size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The full-strength root.
    pub fn root(&self) -> Hash {
        root_of(self.size, &self.levels[0])
    }

    /// Truncated hash of node `i` at a kept `level` (0..=2).
    pub fn at(&self, level: usize, i: u64) -> Option<u64> {
        self.levels.get(level)?.get(i as usize).map(trunc)
    }

    /// Rehashes the 256 KiB nodes overlapping `ranges` from `src` (after writes), then the
    /// levels above. A [`RangeSet`] is ascending and disjoint, so each node is read once.
    pub fn refresh(&mut self, src: &dyn Source, ranges: &RangeSet) -> Result<(), String> {
        let k = RESYNC_NODE_SIZES[KEPT];
        let mut last = None;
        for r in ranges.iter() {
            let (s, e) = (r.start, r.end);
            if s >= self.size {
                continue;
            }
            let from = (s / k).max(last.map(|l: u64| l + 1).unwrap_or(0));
            let to = (e.min(self.size) - 1) / k;
            for i in from..=to {
                let (a, b) = node_range(self.size, KEPT, i);
                self.levels[KEPT][i as usize] = kept_hash(&src.read(a, (b - a) as usize)?);
                last = Some(i);
            }
        }
        self.derive_upper();
        Ok(())
    }

    /// The truncated hashes of `level` a peer asks for ([`answer`]).
    pub fn answer(&self, src: &dyn Source, level: u8, parents: &[u64]) -> Result<Vec<u64>, String> {
        let mut me = self;
        answer(&mut me, src, level, parents)
    }

    /// Full page hashes under each of `parents` ([`answer_pages`]).
    pub fn answer_pages(
        &self,
        src: &dyn Source,
        parents: &[u64],
    ) -> Result<Vec<Vec<Hash>>, String> {
        answer_pages(self.size, src, parents)
    }

    /// Full page hashes under 256 KiB node `i`, read from `src`.
    pub fn pages(&self, src: &dyn Source, i: u64) -> Result<Vec<Hash>, String> {
        pages(self.size, src, i)
    }
}

/// The kept levels of a disk's tree (0..=[`KEPT`]: 1 GiB, 16 MiB and 256 KiB nodes),
/// wherever they are held: all in memory ([`Tree`], the sender's), or paged from the
/// receiver's index file ([`index::Index`]), so the answers below are written once.
pub trait Levels {
    /// Virtual size of the disk.
    fn size(&self) -> u64;
    /// The full hash of node `i` at `level` (0..=[`KEPT`]; `i` inside the level).
    fn node(&mut self, level: usize, i: u64) -> Result<Hash, String>;
}

impl Levels for &Tree {
    fn size(&self) -> u64 {
        self.size
    }
    fn node(&mut self, level: usize, i: u64) -> Result<Hash, String> {
        self.levels
            .get(level)
            .and_then(|l| l.get(i as usize))
            .copied()
            .ok_or_else(|| format!("node {i} at level {level} does not exist"))
    }
}

/// The full-strength root of a `size`-byte disk whose top nodes hash to `top`.
pub fn root_of(size: u64, top: &[Hash]) -> Hash {
    let mut h = blake3::Hasher::new();
    h.update(&size.to_le_bytes());
    for c in top {
        h.update(c);
    }
    *h.finalize().as_bytes()
}

/// The full-strength root of `t`.
pub fn root(t: &mut dyn Levels) -> Result<Hash, String> {
    let size = t.size();
    let top = (0..count(size, 0))
        .map(|i| t.node(0, i))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(root_of(size, &top))
}

/// The truncated hashes of `level` a peer asks for: every top node when `parents` is
/// empty (level 0), else the children of each parent (level ≥ 1). Page hashes (the last
/// level) are computed by reading the parents' bytes from `src`.
pub fn answer(
    t: &mut dyn Levels,
    src: &dyn Source,
    level: u8,
    parents: &[u64],
) -> Result<Vec<u64>, String> {
    let level = level as usize;
    let size = t.size();
    if level >= LEVELS {
        return Err(format!("tree level {level} does not exist"));
    }
    if level == 0 {
        if !parents.is_empty() {
            return Err("the top level has no parents".into());
        }
        return (0..count(size, 0))
            .map(|i| Ok(trunc(&t.node(0, i)?)))
            .collect();
    }
    let np = count(size, level - 1);
    let mut out = Vec::with_capacity(parents.len() * RESYNC_FANOUT as usize);
    let mut prev = None;
    for &p in parents {
        if p >= np || prev.is_some_and(|q| p <= q) {
            return Err(format!(
                "parent {p} at level {} is out of range or order",
                level - 1
            ));
        }
        prev = Some(p);
        if level <= KEPT {
            for c in children(size, level - 1, p) {
                out.push(trunc(&t.node(level, c)?));
            }
        } else {
            out.extend(pages(size, src, p)?.iter().map(trunc));
        }
    }
    Ok(out)
}

/// Full page hashes under each of `parents` (256 KiB nodes of a `size`-byte disk,
/// ascending), read from `src`: the page level's answer before truncation.
pub fn answer_pages(
    size: u64,
    src: &dyn Source,
    parents: &[u64],
) -> Result<Vec<Vec<Hash>>, String> {
    let np = count(size, KEPT);
    let mut prev = None;
    let mut out = Vec::with_capacity(parents.len());
    for &p in parents {
        if p >= np || prev.is_some_and(|q| p <= q) {
            return Err(format!(
                "parent {p} at level {KEPT} is out of range or order"
            ));
        }
        prev = Some(p);
        out.push(pages(size, src, p)?);
    }
    Ok(out)
}

/// Full page hashes under 256 KiB node `i` of a `size`-byte disk, read from `src`.
pub fn pages(size: u64, src: &dyn Source, i: u64) -> Result<Vec<Hash>, String> {
    let (a, b) = node_range(size, KEPT, i);
    if src.known_zero(a, b - a) {
        return Ok(page_hashes(&vec![0u8; (b - a) as usize]));
    }
    Ok(page_hashes(&src.read(a, (b - a) as usize)?))
}

/// The 256 KiB-level hashes of `nodes` (ascending indices), read from `src` on `threads`
/// threads in runs of up to 4 MiB of adjacent nodes. Returns them in order and the bytes
/// read (ranges `src` knows to be zero are not read).
pub fn hash_nodes(
    src: &dyn Source,
    nodes: &[u64],
    threads: usize,
) -> Result<(Vec<Hash>, u64), String> {
    let size = src.size();
    let per_unit = (READ_UNIT / RESYNC_NODE_SIZES[KEPT]) as usize;
    // Runs of adjacent nodes, at most `per_unit` long: (first index into `nodes`, length).
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for (k, &n) in nodes.iter().enumerate() {
        match runs.last_mut() {
            Some((f, l)) if *l < per_unit && nodes[*f + *l - 1] + 1 == n => *l += 1,
            _ => runs.push((k, 1)),
        }
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let read = std::sync::atomic::AtomicU64::new(0);
    let out = std::sync::Mutex::new(vec![[0u8; 32]; nodes.len()]);
    let err = std::sync::Mutex::new(None::<String>);
    std::thread::scope(|s| {
        for _ in 0..threads.clamp(1, runs.len().max(1)) {
            s.spawn(|| loop {
                let u = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if u >= runs.len() || err.lock().map(|e| e.is_some()).unwrap_or(true) {
                    return;
                }
                let (first, len) = runs[u];
                let (off, _) = node_range(size, KEPT, nodes[first]);
                let (_, end) = node_range(size, KEPT, nodes[first + len - 1]);
                if !src.known_zero(off, end - off) {
                    read.fetch_add(end - off, std::sync::atomic::Ordering::Relaxed);
                }
                match unit_hashes(src, off, end) {
                    Ok(h) => {
                        if let Ok(mut o) = out.lock() {
                            o[first..first + len].copy_from_slice(&h);
                        }
                    }
                    Err(e) => {
                        if let Ok(mut g) = err.lock() {
                            g.get_or_insert(e);
                        }
                        return;
                    }
                }
            });
        }
    });
    if let Some(e) = err.into_inner().ok().flatten() {
        return Err(e);
    }
    let hashes = out
        .into_inner()
        .map_err(|_| "hash worker panicked".to_string())?;
    Ok((hashes, read.into_inner()))
}

/// The 256 KiB-level hashes of `[off, end)` (a whole number of such nodes, but for the last).
fn unit_hashes(src: &dyn Source, off: u64, end: u64) -> Result<Vec<Hash>, String> {
    let k = RESYNC_NODE_SIZES[KEPT];
    let data = if src.known_zero(off, end - off) {
        Bytes::from(vec![0u8; (end - off) as usize])
    } else {
        src.read(off, (end - off) as usize)?
    };
    Ok(data.chunks(k as usize).map(kept_hash).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_changed_page_differs_on_its_path_only() {
        let size = (40 << 20) + 4096 + 512;
        let a = (0..size).map(|i| (i % 251) as u8).collect::<Vec<u8>>();
        let mut b = a.clone();
        let off = (17 << 20) + 5 * 4096 + 100;
        b[off] ^= 1;
        let (ta, mut tb) = (Tree::build(&a, 2).unwrap(), Tree::build(&b, 1).unwrap());
        assert_ne!(ta.root(), tb.root());
        let l1a = ta.answer(&a, 1, &[0]).unwrap();
        let l1b = tb.answer(&b, 1, &[0]).unwrap();
        let d: Vec<usize> = (0..l1a.len()).filter(|&i| l1a[i] != l1b[i]).collect();
        assert_eq!(d, vec![1]);
        let p = off as u64 / (256 << 10);
        let pa = ta.answer(&a, 3, &[p]).unwrap();
        let pb = tb.answer(&b, 3, &[p]).unwrap();
        let d: Vec<usize> = (0..pa.len()).filter(|&i| pa[i] != pb[i]).collect();
        assert_eq!(d, vec![(off % (256 << 10)) / 4096]);
        b[off] ^= 1;
        tb.refresh(&b, &RangeSet::from_range(off as u64, off as u64 + 1))
            .unwrap();
        assert_eq!(ta.root(), tb.root());
    }

    #[test]
    fn answers_refuse_bad_parents() {
        let a = vec![0u8; 1 << 20];
        let t = Tree::build(&a, 1).unwrap();
        assert!(t.answer(&a, 1, &[1]).is_err());
        assert!(t.answer(&a, 2, &[0, 0]).is_err());
        assert!(t.answer(&a, 4, &[]).is_err());
        assert_eq!(t.answer(&a, 2, &[0]).unwrap().len(), 4);
    }
}
