//! The receiver's durable resync index: the 256 KiB-level hashes of a replica's working
//! image and a dirty bit per node, so a resync reads back only what changed since the
//! nodes were last hashed instead of the whole replica.
//!
//! **Updates.** Every write the receiver applies (initial copy, delta cycles, resync data)
//! goes through [`Index::before_write`] and [`Index::after_write`]: a write or clear that
//! covers whole nodes sets their hashes from the bytes it carries (the receiver has them in
//! memory already); any other write marks the nodes it touches dirty. A resync rehashes the
//! dirty nodes ([`Index::rehash`]), or every node with `--verify`. The one exception: the
//! page hashes of the nodes a resync read for its page-level answers are remembered for the
//! session ([`Index::remember_pages`]), so the resync's own pages written into those nodes
//! set their hashes too ([`Index::after_write_data`]) and the root is answered without
//! reading them a second time.
//!
//! **Durability.** The file's header carries a *clean* flag. Before the first write after
//! the index was persisted clean, the header is rewritten as unclean and synced
//! ([`Index::before_write`]): so no write can reach the replica while the file still claims
//! to describe it. The index is persisted clean ([`Index::persist_clean`]) only where every
//! write it reflects is durable in the store (after a commit, or after a checkpoint taken
//! with writes excluded): changed hashes and the dirty bitmap first, synced, then the
//! header, synced. An index found unclean at open (the receiver was killed, or lost power,
//! while writes were in flight), of another copy generation or size, damaged, or absent
//! counts as all dirty: the next resync reads the whole replica once and repairs it. The
//! dirty bits persisted with a clean header are therefore only those of nodes written
//! partially and not rehashed since, never a guess.
//!
//! **Memory.** The index is not held whole: its file's body is read and written back
//! through a bounded page cache ([`super::pages`], [`CacheConfig::DEFAULT`]: 1 MiB per
//! open disk), the 16 MiB level is derived from the 256 KiB one when asked, and only the
//! top level (32 bytes per GiB) stays in memory, recomputed for the 1 GiB regions whose
//! nodes changed. A page is written back to the file only with the header durably unclean
//! (the invariant of [`super::pages`]), so eviction never lets a file that says clean
//! describe anything but the replica.
//!
//! **File** (little-endian; `NAME.hidx` in the local store, see `sink/local/LAYOUT.md`):
//! a 64-byte header — magic `vdrepHX\0`, version u32 (1), flags u32 (bit 0 clean), virtual
//! size u64, copy generation u64, node size u64 (262144), node count N u64, 12 zero bytes,
//! CRC-32C of bytes 0..60 at 60 — then N 32-byte node hashes, then the dirty bitmap
//! (⌈N/8⌉ bytes, node i is bit i % 8 of byte i / 8).
//!
//! Where each part lives: [`file`] is the file's layout and the trait of where it is kept,
//! [`writes`] keeps the index in step with the replica's writes; this file holds the index
//! itself (its node hashes, dirty bits and top level), its rehash and its answers to a
//! resync ([`Levels`]).

mod file;
mod writes;

use std::collections::HashMap;
use std::io;

pub use file::IndexFile;
use file::{check, fill_body, header, HEADER};
pub use writes::{full_node_hashes, full_node_hashes_parts};

use super::pages::{CacheConfig, IndexPages};
use super::{
    combine, count, kept_hash, node_range, root_of, Hash, Levels, Source, KEPT, RESYNC_FANOUT,
    RESYNC_NODE_SIZES,
};

/// 256 KiB nodes under one top (1 GiB) node.
const PER_TOP: u64 = RESYNC_FANOUT * RESYNC_FANOUT;
/// Nodes rehashed per batch (16 GiB of disk), so a rehash holds a bounded list.
const REHASH_BATCH: u64 = 65_536;

/// The hash of a 256 KiB-level node of `len` zero bytes.
fn zero_node(len: usize) -> Hash {
    kept_hash(&vec![0u8; len])
}

/// A replica's index: its file's body through a bounded cache, and the top level.
pub struct Index {
    size: u64,
    /// Nodes of the 256 KiB level.
    n: u64,
    body: IndexPages,
    /// Why the index did not describe the replica when it was opened (then all dirty).
    stale: Option<String>,
    /// Why the index can no longer be trusted in this session (a failed read or
    /// write-back of its file): it is then never persisted as clean.
    broken: Option<String>,
    /// Dirty nodes, once counted.
    ndirty: Option<u64>,
    /// Top-level (1 GiB) hashes, and which are out of date (their nodes changed).
    top: Vec<Hash>,
    top_stale: Vec<bool>,
    /// Page hashes of nodes read for a resync's page-level answers in this session (not
    /// persisted): a later write of whole pages into such a node (the resync's own data)
    /// sets the node's hash from them instead of leaving it dirty to be read again.
    pages: HashMap<u64, Vec<Hash>>,
}

impl Index {
    /// The index of a `size`-byte replica at copy generation `generation`, kept in `file`
    /// (`None`: the sink keeps none, `why` says so). `fresh_zero`: the working image is a new
    /// all-zero copy, so every hash is known without reading anything.
    pub fn open(
        file: Result<Box<dyn IndexFile>, String>,
        size: u64,
        generation: u64,
        fresh_zero: bool,
    ) -> Index {
        Self::open_with(file, size, generation, fresh_zero, CacheConfig::DEFAULT)
    }

    /// [`Index::open`] with a cache of `cfg` (tests use tiny pages to force evictions).
    pub fn open_with(
        file: Result<Box<dyn IndexFile>, String>,
        size: u64,
        generation: u64,
        fresh_zero: bool,
        cfg: CacheConfig,
    ) -> Index {
        let n = count(size, KEPT);
        let (file, mut stale) = match file {
            Ok(f) => (Some(f), None),
            Err(why) => (None, Some(why)),
        };
        // Only a sink that keeps an index guarantees that a fresh copy starts all zero.
        let fresh = fresh_zero && file.is_some();
        let valid = if fresh {
            // The file is not read, so it may still say clean (an index persisted for a
            // copy of this generation that was started again from zero): the first write
            // must mark it unclean all the same (the pages' rule).
            true
        } else if let Some(f) = &file {
            match check(f.as_ref(), size, generation, n) {
                Ok(()) => true,
                Err(why) => {
                    stale = Some(format!("{}: {why}", f.describe()));
                    false
                }
            }
        } else {
            false
        };
        let fill: super::pages::Fill = if fresh {
            let full = zero_node(RESYNC_NODE_SIZES[KEPT] as usize);
            let (la, lb) = node_range(size, KEPT, n.saturating_sub(1));
            let last = zero_node((lb - la) as usize);
            Box::new(move |off, buf| {
                fill_body(n, off, buf, |i| if i + 1 == n { last } else { full }, 0)
            })
        } else {
            Box::new(move |off, buf| fill_body(n, off, buf, |_| [0; 32], 0xff))
        };
        let body_len = 32 * n + n.div_ceil(8);
        let headers = (
            header(size, generation, n, false).to_vec(),
            header(size, generation, n, true).to_vec(),
        );
        let body = IndexPages::new(file, HEADER, body_len, cfg, valid && !fresh, fill, headers);
        let tops = count(size, 0) as usize;
        Index {
            size,
            n,
            body,
            stale,
            broken: None,
            ndirty: if fresh {
                Some(0)
            } else if valid {
                None
            } else {
                Some(n)
            },
            top: vec![[0; 32]; tops],
            top_stale: vec![true; tops],
            pages: HashMap::new(),
        }
    }

    /// Why the index did not describe the replica when opened (all nodes dirty), if so.
    pub fn stale_reason(&self) -> Option<&str> {
        self.stale.as_deref()
    }

    /// Where the index is kept, for messages.
    pub fn describe(&self) -> String {
        match self.body.file() {
            Some(f) => f.describe(),
            None => "the resync index (kept in memory only)".into(),
        }
    }

    /// Most bytes of the index's file held in memory at once since opened (the page
    /// cache's peak; the top level adds 32 bytes per GiB of disk).
    pub fn peak_cache_bytes(&self) -> usize {
        self.body.peak_bytes()
    }

    fn fail(&mut self, what: &str, e: io::Error) -> String {
        let m = format!("{}: {what}: {e}", self.describe());
        self.broken.get_or_insert(m.clone());
        m
    }

    fn hash(&mut self, i: u64) -> io::Result<Hash> {
        let mut h = [0u8; 32];
        self.body.read(32 * i, &mut h)?;
        Ok(h)
    }

    fn set_hash(&mut self, i: u64, h: Hash) -> io::Result<()> {
        self.body.update(32 * i, 32, |s| s.copy_from_slice(&h))?;
        if let Some(t) = self.top_stale.get_mut((i / PER_TOP) as usize) {
            *t = true;
        }
        Ok(())
    }

    /// Byte `j` of the dirty bitmap (nodes 8j..8j+8; bits past the last node ignored).
    fn dirty_byte(&mut self, j: u64) -> io::Result<u8> {
        let mut b = [0u8];
        self.body.read(32 * self.n + j, &mut b)?;
        let valid = (self.n - 8 * j).min(8);
        Ok(if valid == 8 {
            b[0]
        } else {
            b[0] & ((1u8 << valid) - 1)
        })
    }

    /// The dirty nodes in `[from, to)` (`to` ≤ N), or every node when `all`.
    fn dirty_in(&mut self, from: u64, to: u64, all: bool) -> io::Result<Vec<u64>> {
        if all {
            return Ok((from..to).collect());
        }
        let mut out = Vec::new();
        let mut i = from;
        while i < to {
            let byte = self.dirty_byte(i / 8)? >> (i % 8);
            if byte == 0 {
                i = (i / 8 + 1) * 8;
                continue;
            }
            for k in 0..(8 - i % 8).min(to - i) {
                if byte & (1 << k) != 0 {
                    out.push(i + k);
                }
            }
            i = (i / 8 + 1) * 8;
        }
        Ok(out)
    }

    fn set_dirty(&mut self, i: u64, on: bool) -> io::Result<()> {
        let mask = 1u8 << (i % 8);
        let mut was = false;
        self.body.update(32 * self.n + i / 8, 1, |b| {
            was = b[0] & mask != 0;
            if on {
                b[0] |= mask;
            } else {
                b[0] &= !mask;
            }
        })?;
        if let Some(d) = self.ndirty.as_mut() {
            match (was, on) {
                (false, true) => *d += 1,
                (true, false) => *d -= 1,
                _ => {}
            }
        }
        Ok(())
    }

    /// Nodes marked dirty (counted once by reading the bitmap, then kept up to date).
    pub fn dirty_count(&mut self) -> Result<u64, String> {
        if let Some(d) = self.ndirty {
            return Ok(d);
        }
        let mut d = 0;
        for j in 0..self.n.div_ceil(8) {
            d += u64::from(
                self.dirty_byte(j)
                    .map_err(|e| self.fail("read", e))?
                    .count_ones(),
            );
        }
        self.ndirty = Some(d);
        Ok(d)
    }

    /// Before a write or clear reaches the replica: the file must no longer claim to be
    /// clean (durably). Call with writes to this replica serialised.
    pub fn before_write(&mut self) -> io::Result<()> {
        self.body.mark_unclean()
    }

    /// Rehashes the dirty nodes (every node when `all`) from `src`, the working image, in
    /// batches of [`REHASH_BATCH`] nodes; returns the bytes read.
    pub fn rehash(&mut self, src: &dyn Source, all: bool, threads: usize) -> Result<u64, String> {
        if let Some(b) = &self.broken {
            return Err(b.clone());
        }
        if !all && self.dirty_count()? == 0 {
            return Ok(0);
        }
        let mut read = 0;
        let mut from = 0;
        while from < self.n {
            let to = (from + REHASH_BATCH).min(self.n);
            let nodes = self
                .dirty_in(from, to, all)
                .map_err(|e| self.fail("read", e))?;
            from = to;
            if nodes.is_empty() {
                continue;
            }
            let (hashes, r) = super::hash_nodes(src, &nodes, threads)?;
            read += r;
            let res = (|| {
                for (&i, h) in nodes.iter().zip(hashes) {
                    if self.hash(i)? != h {
                        self.set_hash(i, h)?;
                    }
                    self.set_dirty(i, false)?;
                }
                Ok(())
            })();
            res.map_err(|e| self.fail("record a rehash", e))?;
        }
        self.stale = None;
        Ok(read)
    }

    /// The full-strength root (meaningful once no node is dirty).
    pub fn root(&mut self) -> Result<Hash, String> {
        for t in 0..self.top.len() as u64 {
            self.node(0, t)?;
        }
        Ok(root_of(self.size, &self.top))
    }

    /// Hash of 16 MiB node `j`, from its 256 KiB children.
    fn mid(&mut self, j: u64) -> io::Result<Hash> {
        let kids = super::children(self.size, 1, j);
        let mut buf = vec![0u8; 32 * (kids.end - kids.start) as usize];
        self.body.read_span(32 * kids.start, &mut buf)?;
        let mut h = blake3::Hasher::new();
        h.update(&buf);
        Ok(*h.finalize().as_bytes())
    }

    /// Persists the index as clean. Only call when every write it reflects is durable in
    /// the store and no write runs meanwhile. A no-op without a file.
    pub fn persist_clean(&mut self) -> io::Result<()> {
        if let Some(b) = &self.broken {
            return Err(io::Error::other(format!(
                "not persisted as clean after an earlier failure: {b}"
            )));
        }
        self.body.persist_clean()
    }
}

impl Levels for Index {
    fn size(&self) -> u64 {
        self.size
    }

    /// The 256 KiB level from the file, the 16 MiB level derived from it, the top level
    /// from memory (recomputed when its nodes changed).
    fn node(&mut self, level: usize, i: u64) -> Result<Hash, String> {
        if let Some(b) = &self.broken {
            return Err(b.clone());
        }
        if i >= count(self.size, level.min(KEPT)) || level > KEPT {
            return Err(format!("node {i} at level {level} does not exist"));
        }
        let r = match level {
            0 => {
                if self.top_stale[i as usize] {
                    let mids = super::children(self.size, 0, i);
                    let mut h = Vec::with_capacity((mids.end - mids.start) as usize);
                    for j in mids {
                        match self.mid(j) {
                            Ok(m) => h.push(m),
                            Err(e) => return Err(self.fail("read", e)),
                        }
                    }
                    self.top[i as usize] = combine(&h);
                    self.top_stale[i as usize] = false;
                }
                Ok(self.top[i as usize])
            }
            1 => self.mid(i),
            _ => self.hash(i),
        };
        r.map_err(|e| self.fail("read", e))
    }
}

#[cfg(test)]
mod tests;
