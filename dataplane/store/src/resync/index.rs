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
//! **File** (little-endian; `NAME.hidx` in the local store, see `sink/local/LAYOUT.md`):
//! a 64-byte header — magic `vdrepHX\0`, version u32 (1), flags u32 (bit 0 clean), virtual
//! size u64, copy generation u64, node size u64 (262144), node count N u64, 12 zero bytes,
//! CRC-32C of bytes 0..60 at 60 — then N 32-byte node hashes, then the dirty bitmap
//! (⌈N/8⌉ bytes, node i is bit i % 8 of byte i / 8).

use std::io;

use std::collections::HashMap;

use super::{
    combine, count, kept_hash, node_range, Hash, Source, Tree, KEPT, PAGE, RESYNC_NODE_SIZES,
};

/// Nodes whose page hashes a session remembers at most (2 KiB each: 16 MiB).
const REMEMBERED_NODES: usize = 8192;

const MAGIC: &[u8; 8] = b"vdrepHX\0";
const VERSION: u32 = 1;
const HEADER: u64 = 64;
const CLEAN: u32 = 1;

/// Where an index is kept: positional writes on one small file or blob.
pub trait IndexFile: Send + Sync {
    /// The whole content, or `None` if there is none yet.
    fn read_all(&self) -> io::Result<Option<Vec<u8>>>;
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

/// A replica's index in memory, with the file that keeps it.
pub struct Index {
    size: u64,
    generation: u64,
    hashes: Vec<Hash>,
    dirty: Vec<u8>,
    /// Hash entries changed since the index was last persisted.
    touched: Vec<u8>,
    /// True while the file's header says clean (a write must first say otherwise).
    durable_clean: bool,
    /// True while the file's entries are of no use (absent, another layout): the next
    /// persist writes every entry.
    rewrite_all: bool,
    file: Option<Box<dyn IndexFile>>,
    /// Why the index did not describe the replica when it was opened (then all dirty).
    stale: Option<String>,
    /// Page hashes of nodes read for a resync's page-level answers in this session (not
    /// persisted): a later write of whole pages into such a node (the resync's own data)
    /// sets the node's hash from them instead of leaving it dirty to be read again.
    pages: HashMap<u64, Vec<Hash>>,
}

fn bit(v: &[u8], i: usize) -> bool {
    v[i / 8] & (1 << (i % 8)) != 0
}
fn set(v: &mut [u8], i: usize, on: bool) {
    if on {
        v[i / 8] |= 1 << (i % 8);
    } else {
        v[i / 8] &= !(1 << (i % 8));
    }
}

impl Index {
    /// The index of a `size`-byte replica at copy generation `generation`, kept in `file`
    /// (`None`: the sink keeps none, `why` says so). `fresh_zero`: the working image is a new
    /// all-zero copy, so every hash is known without reading or loading anything.
    pub fn open(
        file: Result<Box<dyn IndexFile>, String>,
        size: u64,
        generation: u64,
        fresh_zero: bool,
    ) -> Index {
        let n = count(size, KEPT) as usize;
        let (file, why) = match file {
            Ok(f) => (Some(f), None),
            Err(why) => (None, Some(why)),
        };
        let mut ix = Index {
            size,
            generation,
            hashes: vec![[0; 32]; n],
            dirty: vec![0xff; n.div_ceil(8)],
            touched: vec![0xff; n.div_ceil(8)],
            durable_clean: false,
            rewrite_all: true,
            file,
            stale: why,
            pages: HashMap::new(),
        };
        // Only a sink that keeps an index guarantees that a fresh copy starts all zero.
        if fresh_zero && ix.file.is_some() {
            ix.stale = None;
            ix.dirty.fill(0);
            // The file is not read, so it may still say clean (an index persisted for a
            // copy of this generation that was started again from zero): the first write
            // must mark it unclean all the same.
            ix.durable_clean = true;
            let full = zero_node(RESYNC_NODE_SIZES[KEPT] as usize);
            for i in 0..n {
                let (a, b) = node_range(size, KEPT, i as u64);
                ix.hashes[i] = if b - a == RESYNC_NODE_SIZES[KEPT] {
                    full
                } else {
                    zero_node((b - a) as usize)
                };
            }
            return ix;
        }
        if let Some(f) = ix.file.take() {
            match f.read_all() {
                Ok(Some(bytes)) => {
                    if let Err(why) = ix.load(&bytes) {
                        ix.stale = Some(format!("{}: {why}", f.describe()));
                    }
                }
                Ok(None) => ix.stale = Some(format!("{} does not exist yet", f.describe())),
                Err(e) => ix.stale = Some(format!("{}: read failed: {e}", f.describe())),
            }
            ix.file = Some(f);
        }
        ix
    }

    fn load(&mut self, b: &[u8]) -> Result<(), String> {
        let n = self.hashes.len();
        let want = HEADER as usize + 32 * n + n.div_ceil(8);
        let h = b.get(..HEADER as usize).ok_or("shorter than its header")?;
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
        if u64_at(16) != self.size
            || u64_at(32) != RESYNC_NODE_SIZES[KEPT]
            || u64_at(40) != n as u64
        {
            return Err("describes a disk of another size".into());
        }
        if u64_at(24) != self.generation {
            return Err(format!(
                "describes copy generation {}, the replica is generation {}",
                u64_at(24),
                self.generation
            ));
        }
        if b.len() != want {
            return Err(format!("{} bytes, expected {want}", b.len()));
        }
        let body = &b[HEADER as usize..];
        for (i, c) in body[..32 * n].chunks_exact(32).enumerate() {
            self.hashes[i].copy_from_slice(c);
        }
        self.dirty.copy_from_slice(&body[32 * n..]);
        self.touched.fill(0);
        self.durable_clean = true;
        self.rewrite_all = false;
        Ok(())
    }

    /// Why the index did not describe the replica when opened (all nodes dirty), if so.
    pub fn stale_reason(&self) -> Option<&str> {
        self.stale.as_deref()
    }

    /// Where the index is kept, for messages.
    pub fn describe(&self) -> String {
        match &self.file {
            Some(f) => f.describe(),
            None => "the resync index (kept in memory only)".into(),
        }
    }

    /// Nodes marked dirty.
    pub fn dirty_count(&self) -> usize {
        (0..self.hashes.len())
            .filter(|&i| bit(&self.dirty, i))
            .count()
    }

    fn header(&self, clean: bool) -> [u8; HEADER as usize] {
        let mut h = [0u8; HEADER as usize];
        h[..8].copy_from_slice(MAGIC);
        h[8..12].copy_from_slice(&VERSION.to_le_bytes());
        h[12..16].copy_from_slice(&(if clean { CLEAN } else { 0 }).to_le_bytes());
        h[16..24].copy_from_slice(&self.size.to_le_bytes());
        h[24..32].copy_from_slice(&self.generation.to_le_bytes());
        h[32..40].copy_from_slice(&RESYNC_NODE_SIZES[KEPT].to_le_bytes());
        h[40..48].copy_from_slice(&(self.hashes.len() as u64).to_le_bytes());
        let crc = crc32c::crc32c(&h[..60]);
        h[60..].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// Before a write or clear of `[off, off+len)` reaches the replica: the file must no
    /// longer claim to be clean (durably). Call with writes to this replica serialised.
    pub fn before_write(&mut self) -> io::Result<()> {
        if self.durable_clean {
            if let Some(f) = &self.file {
                f.write_at(0, &self.header(false))?;
                f.sync()?;
            }
            self.durable_clean = false;
        }
        Ok(())
    }

    /// After a write (`data`) or clear (`None`) of `[off, off+len)` was applied (`ok`) or
    /// failed half-way (`!ok`): whole nodes it covered get their new hashes, others are
    /// marked dirty. `full` holds the precomputed hashes of the whole nodes
    /// ([`full_node_hashes`]).
    pub fn after_write(&mut self, off: u64, len: u64, full: &[(u64, Hash)], ok: bool) {
        let k = RESYNC_NODE_SIZES[KEPT];
        if len == 0 || off >= self.size {
            return;
        }
        let end = (off + len).min(self.size);
        for i in off / k..=(end - 1) / k {
            set(&mut self.dirty, i as usize, true);
        }
        if ok {
            for &(i, h) in full {
                if let Some(slot) = self.hashes.get_mut(i as usize) {
                    *slot = h;
                    set(&mut self.dirty, i as usize, false);
                    set(&mut self.touched, i as usize, true);
                }
            }
        }
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
    ) {
        let k = RESYNC_NODE_SIZES[KEPT];
        if self.pages.is_empty() || len == 0 || off >= self.size {
            return self.after_write(off, len, full, ok);
        }
        let end = (off + len).min(self.size);
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
        self.after_write(off, len, &all, ok);
    }

    /// Rehashes the dirty nodes (every node when `all`) from `src`, the working image;
    /// returns the bytes read.
    pub fn rehash(&mut self, src: &dyn Source, all: bool, threads: usize) -> Result<u64, String> {
        let nodes: Vec<u64> = (0..self.hashes.len())
            .filter(|&i| all || bit(&self.dirty, i))
            .map(|i| i as u64)
            .collect();
        if nodes.is_empty() {
            return Ok(0);
        }
        let (hashes, read) = super::hash_nodes(src, &nodes, threads)?;
        for (&i, h) in nodes.iter().zip(hashes) {
            let i = i as usize;
            if self.hashes[i] != h {
                self.hashes[i] = h;
                set(&mut self.touched, i, true);
            }
            set(&mut self.dirty, i, false);
        }
        self.stale = None;
        Ok(read)
    }

    /// The hash tree of the index (meaningful once no node is dirty).
    pub fn tree(&self) -> Result<Tree, String> {
        Tree::from_kept(self.size, self.hashes.clone())
    }

    /// Persists the index as clean. Only call when every write it reflects is durable in
    /// the store and no write runs meanwhile. A no-op without a file.
    pub fn persist_clean(&mut self) -> io::Result<()> {
        let Some(f) = &self.file else { return Ok(()) };
        let n = self.hashes.len();
        let all = self.rewrite_all;
        let any_touched = all || self.touched.iter().any(|&b| b != 0);
        if self.durable_clean && !any_touched {
            return Ok(());
        }
        if self.durable_clean || all {
            f.write_at(0, &self.header(false))?;
            f.sync()?;
            self.durable_clean = false;
        }
        // Runs of touched entries, written at once.
        let mut i = 0;
        while i < n {
            if !(all || bit(&self.touched, i)) {
                i += 1;
                continue;
            }
            let s = i;
            while i < n && (all || bit(&self.touched, i)) && i - s < 4096 {
                i += 1;
            }
            let buf: Vec<u8> = self.hashes[s..i].iter().flatten().copied().collect();
            f.write_at(HEADER + 32 * s as u64, &buf)?;
        }
        f.write_at(HEADER + 32 * n as u64, &self.dirty)?;
        f.sync()?;
        f.write_at(0, &self.header(true))?;
        f.sync()?;
        self.touched.fill(0);
        self.rewrite_all = false;
        self.durable_clean = true;
        Ok(())
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
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::sync::{Arc, Mutex};

    /// Bytes written, and bytes durable (as of the last sync; `None` before any).
    type Written = (Vec<u8>, Option<Vec<u8>>);
    #[derive(Clone, Default)]
    struct MemFile(Arc<Mutex<Written>>);
    impl IndexFile for MemFile {
        fn read_all(&self) -> io::Result<Option<Vec<u8>>> {
            Ok(self.0.lock().unwrap().1.clone())
        }
        fn write_at(&self, off: u64, data: &[u8]) -> io::Result<()> {
            let mut g = self.0.lock().unwrap();
            let v = &mut g.0;
            let e = off as usize + data.len();
            if v.len() < e {
                v.resize(e, 0);
            }
            v[off as usize..e].copy_from_slice(data);
            Ok(())
        }
        fn sync(&self) -> io::Result<()> {
            let mut g = self.0.lock().unwrap();
            g.1 = Some(g.0.clone());
            Ok(())
        }
        fn describe(&self) -> String {
            "mem".into()
        }
    }
    struct Mem(Vec<u8>);
    impl Source for Mem {
        fn size(&self) -> u64 {
            self.0.len() as u64
        }
        fn read(&self, off: u64, len: usize) -> Result<Bytes, String> {
            Ok(Bytes::copy_from_slice(
                &self.0[off as usize..off as usize + len],
            ))
        }
    }

    fn write(ix: &mut Index, img: &mut Mem, off: u64, data: &[u8]) {
        let full = full_node_hashes(img.size(), off, data.len() as u64, Some(data));
        ix.before_write().unwrap();
        img.0[off as usize..off as usize + data.len()].copy_from_slice(data);
        ix.after_write(off, data.len() as u64, &full, true);
    }

    /// A write (`Some`) or clear (`None`) as the receiver applies it, bytes at hand.
    fn apply(ix: &mut Index, img: &mut Mem, off: u64, len: usize, data: Option<&[u8]>) {
        let full = full_node_hashes(img.size(), off, len as u64, data);
        ix.before_write().unwrap();
        let zeros = vec![0u8; len];
        img.0[off as usize..off as usize + len].copy_from_slice(data.unwrap_or(&zeros));
        ix.after_write_data(off, len as u64, data, &full, true);
    }

    #[test]
    fn whole_pages_written_into_nodes_whose_pages_were_read_set_their_hashes_without_a_reread() {
        let k = 256 << 10;
        let size = (1 << 20) + 4096 + 512; // five nodes, the last of a page and a half
        let mut img = Mem((0..size).map(|i| (i * 7 % 251) as u8).collect());
        let mut ix = Index::open(Ok(Box::new(MemFile::default())), size as u64, 1, false);
        ix.rehash(&img, true, 1).unwrap();
        // The page-level answer for nodes 1 and 4, remembered.
        let pages = ix.tree().unwrap().answer_pages(&img, &[1, 4]).unwrap();
        for (n, p) in [1, 4].into_iter().zip(pages) {
            ix.remember_pages(n, p);
        }
        apply(&mut ix, &mut img, k + 8192, 8192, Some(&[3u8; 8192]));
        apply(&mut ix, &mut img, k + 40960, 4096, None);
        apply(&mut ix, &mut img, (1 << 20) + 4096, 512, Some(&[9u8; 512])); // the short page
        assert_eq!(ix.dirty_count(), 0);
        let built = Tree::build(&img, 1).unwrap();
        assert_eq!(ix.tree().unwrap().root(), built.root());
        // Part of a page, and a node whose pages were not read, stay dirty.
        apply(&mut ix, &mut img, k + 512, 512, Some(&[4u8; 512]));
        apply(&mut ix, &mut img, 2 * k + 4096, 4096, Some(&[5u8; 4096]));
        assert_eq!(ix.dirty_count(), 2);
        assert_eq!(ix.rehash(&img, false, 1).unwrap(), 2 * k);
        assert_eq!(
            ix.tree().unwrap().root(),
            Tree::build(&img, 1).unwrap().root()
        );
        // Node 1's pages were forgotten at the write of part of a page: dirty again.
        apply(&mut ix, &mut img, k, 4096, Some(&[6u8; 4096]));
        assert_eq!(ix.dirty_count(), 1);
    }

    #[test]
    fn an_index_kept_with_every_write_matches_a_tree_built_by_reading() {
        let size = (3 << 20) + 4096 + 512;
        let f = MemFile::default();
        let mut img = Mem(vec![0; size]);
        let mut ix = Index::open(Ok(Box::new(f.clone())), size as u64, 1, true);
        write(&mut ix, &mut img, 0, &vec![7u8; 1 << 20]); // whole nodes
        write(&mut ix, &mut img, (2 << 20) + 4096, &[9u8; 512]); // partial
        write(&mut ix, &mut img, 3 << 20, &vec![5u8; 4096 + 512]); // the short last node
        assert_eq!(ix.dirty_count(), 1);
        ix.persist_clean().unwrap();
        let mut again = Index::open(Ok(Box::new(f.clone())), size as u64, 1, false);
        assert_eq!(again.stale_reason(), None);
        assert_eq!(again.rehash(&img, false, 1).unwrap(), 256 << 10);
        let built = Tree::build(&img, 1).unwrap();
        assert_eq!(again.tree().unwrap().root(), built.root());
    }

    #[test]
    fn a_fresh_copy_marks_an_index_left_clean_for_its_generation_unclean_at_its_first_write() {
        let size = 1 << 20;
        let f = MemFile::default();
        let mut img = Mem(vec![0; size]);
        let mut ix = Index::open(Ok(Box::new(f.clone())), size as u64, 1, true);
        ix.persist_clean().unwrap();
        // The copy starts again from zero at the same generation; a write, then a crash.
        let mut ix = Index::open(Ok(Box::new(f.clone())), size as u64, 1, true);
        write(&mut ix, &mut img, 0, &[1u8; 4096]);
        drop(ix);
        let after = Index::open(Ok(Box::new(f)), size as u64, 1, false);
        assert!(after
            .stale_reason()
            .is_some_and(|r| r.contains("not closed cleanly")));
    }

    #[test]
    fn an_index_not_persisted_after_a_write_is_stale_at_the_next_open() {
        let size = 1 << 20;
        let f = MemFile::default();
        let mut img = Mem(vec![0; size]);
        let mut ix = Index::open(Ok(Box::new(f.clone())), size as u64, 1, true);
        ix.persist_clean().unwrap();
        assert!(Index::open(Ok(Box::new(f.clone())), size as u64, 1, false)
            .stale_reason()
            .is_none());
        // The "crash": a write, no persist.
        write(&mut ix, &mut img, 4096, &[1u8; 4096]);
        let ix2 = Index::open(Ok(Box::new(f.clone())), size as u64, 1, false);
        assert!(ix2.stale_reason().unwrap().contains("not closed cleanly"));
        assert_eq!(ix2.dirty_count(), 4);
        // Another generation is stale too.
        ix.persist_clean().unwrap();
        let ix3 = Index::open(Ok(Box::new(f)), size as u64, 2, false);
        assert!(ix3.stale_reason().unwrap().contains("generation"));
    }
}
