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

use std::collections::HashMap;
use std::io;

use super::pages::{CacheConfig, IndexPages};
use super::{
    combine, count, kept_hash, node_range, root_of, Hash, Levels, Source, KEPT, PAGE,
    RESYNC_FANOUT, RESYNC_NODE_SIZES,
};

/// Nodes whose page hashes a session remembers at most (2 KiB each: 16 MiB).
const REMEMBERED_NODES: usize = 8192;

const MAGIC: &[u8; 8] = b"vdrepHX\0";
const VERSION: u32 = 1;
const HEADER: u64 = 64;
const CLEAN: u32 = 1;
/// 256 KiB nodes under one top (1 GiB) node.
const PER_TOP: u64 = RESYNC_FANOUT * RESYNC_FANOUT;
/// Nodes rehashed per batch (16 GiB of disk), so a rehash holds a bounded list.
const REHASH_BATCH: u64 = 65_536;

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

    /// After a write or clear of `[off, off+len)` was applied (`ok`) or failed half-way
    /// (`!ok`): whole nodes it covered get their new hashes, others are marked dirty.
    /// `full` holds the precomputed hashes of the whole nodes ([`full_node_hashes`]). A
    /// failure of the index's file leaves the index untrusted for the session (never
    /// persisted clean; its file says unclean since [`Index::before_write`]).
    pub fn after_write(
        &mut self,
        off: u64,
        len: u64,
        full: &[(u64, Hash)],
        ok: bool,
    ) -> Result<(), String> {
        let k = RESYNC_NODE_SIZES[KEPT];
        if len == 0 || off >= self.size {
            return Ok(());
        }
        let end = off.saturating_add(len).min(self.size);
        let r = (|| {
            for i in off / k..=(end - 1) / k {
                self.set_dirty(i, true)?;
            }
            if ok {
                for &(i, h) in full {
                    if i < self.n {
                        self.set_hash(i, h)?;
                        self.set_dirty(i, false)?;
                    }
                }
            }
            Ok(())
        })();
        r.map_err(|e| self.fail("record a write", e))
    }

    /// Remembers the page hashes of node `node` as read from the working image, with writes
    /// to the replica held off since the read (see [`Index::after_write_data`]).
    pub fn remember_pages(&mut self, node: u64, pages: Vec<Hash>) {
        let (a, b) = node_range(self.size, KEPT, node);
        let fits = b > a && pages.len() as u64 == (b - a).div_ceil(PAGE);
        if fits && (self.pages.len() < REMEMBERED_NODES || self.pages.contains_key(&node)) {
            self.pages.insert(node, pages);
        }
    }

    /// Drops the remembered page hashes (a new comparison starts).
    pub fn forget_pages(&mut self) {
        self.pages = HashMap::new();
    }

    /// [`Index::after_write`] for a write whose bytes (`data`, `None` for a clear) are at
    /// hand: a node whose page hashes are remembered and that the write changes in whole
    /// pages gets its new hash from them, without being read again.
    pub fn after_write_data(
        &mut self,
        off: u64,
        len: u64,
        data: Option<&[u8]>,
        full: &[(u64, Hash)],
        ok: bool,
    ) -> Result<(), String> {
        let k = RESYNC_NODE_SIZES[KEPT];
        if self.pages.is_empty() || len == 0 || off >= self.size {
            return self.after_write(off, len, full, ok);
        }
        let end = off.saturating_add(len).min(self.size);
        let mut all = full.to_vec();
        for i in off / k..=(end - 1) / k {
            let Some(mut ph) = self.pages.remove(&i) else {
                continue;
            };
            if !ok || full.iter().any(|f| f.0 == i) {
                continue;
            }
            let (a, b) = node_range(self.size, KEPT, i);
            let (s, e) = (off.max(a), end.min(b));
            if (s - a) % PAGE != 0 || ((e - a) % PAGE != 0 && e != b) {
                continue; // part of a page: the node is dirty
            }
            let mut patched = true;
            for p in (s - a) / PAGE..(e - a).div_ceil(PAGE) {
                let (ps, pe) = (a + p * PAGE, (a + (p + 1) * PAGE).min(b));
                let h = match data {
                    Some(d) => match d.get((ps - off) as usize..(pe - off) as usize) {
                        Some(bytes) => *blake3::hash(bytes).as_bytes(),
                        None => {
                            patched = false;
                            break;
                        }
                    },
                    None => *blake3::hash(&vec![0u8; (pe - ps) as usize]).as_bytes(),
                };
                match ph.get_mut(p as usize) {
                    Some(slot) => *slot = h,
                    None => {
                        patched = false;
                        break;
                    }
                }
            }
            if patched {
                all.push((i, combine(&ph)));
                self.pages.insert(i, ph);
            }
        }
        self.after_write(off, len, &all, ok)
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

/// Checks that `f` holds a clean index of this layout: header first, then the length.
fn check(f: &dyn IndexFile, size: u64, generation: u64, n: u64) -> Result<(), String> {
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
fn header(size: u64, generation: u64, n: u64, clean: bool) -> [u8; HEADER as usize] {
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
fn fill_body(n: u64, off: u64, buf: &mut [u8], hash: impl Fn(u64) -> Hash, bits: u8) {
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

/// The hashes of the 256 KiB nodes that a write of `data` (or a clear, `None`) of
/// `[off, off+len)` covers entirely on a `size`-byte disk. Computed before the write,
/// outside any lock.
pub fn full_node_hashes(size: u64, off: u64, len: u64, data: Option<&[u8]>) -> Vec<(u64, Hash)> {
    let k = RESYNC_NODE_SIZES[KEPT];
    let end = (off + len).min(size);
    let mut out = Vec::new();
    if end <= off {
        return out;
    }
    let zero_full = std::sync::OnceLock::new();
    for i in off.div_ceil(k)..=(end - 1) / k {
        let (a, b) = node_range(size, KEPT, i);
        if a < off || b > end {
            continue;
        }
        let h = match data {
            Some(d) => match d.get((a - off) as usize..(b - off) as usize) {
                Some(s) => kept_hash(s),
                None => continue,
            },
            None if b - a == k => *zero_full.get_or_init(|| zero_node(k as usize)),
            None => zero_node((b - a) as usize),
        };
        out.push((i, h));
    }
    out
}

#[cfg(test)]
#[path = "index_tests.rs"]
mod tests;
