//! Keeping the index in step with the writes the receiver applies (the parent module's
//! **Updates** paragraph): a write that covers whole nodes sets their hashes from its own
//! bytes, any other marks its nodes dirty; a resync's own page-aligned writes into nodes it
//! read page by page set their hashes from the remembered page hashes.

use std::collections::HashMap;

use super::super::leaves::Pieces;
use super::super::{combine, kept_hash, node_range, Hash, KEPT, PAGE, RESYNC_NODE_SIZES};
use super::{zero_node, Index};
use crate::parts::Parts;

/// Nodes whose page hashes a session remembers at most (2 KiB each: 16 MiB).
const REMEMBERED_NODES: usize = 8192;

impl Index {
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
    /// hand, in one slice or several (a received frame's chunks: a single slice is one
    /// part): a node whose page hashes are remembered and that the write changes in whole
    /// pages gets its new hash from them, without being read again.
    pub fn after_write_data(
        &mut self,
        off: u64,
        len: u64,
        data: Option<Parts<'_>>,
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
                    Some(d) => match d.range((ps - off) as usize, (pe - off) as usize) {
                        Some(bytes) => *blake3::hash(&bytes).as_bytes(),
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
}

/// The hashes of the 256 KiB nodes that a write of `data` (or a clear, `None`) of
/// `[off, off+len)` covers entirely on a `size`-byte disk. Computed before the write,
/// outside any lock.
pub fn full_node_hashes(size: u64, off: u64, len: u64, data: Option<&[u8]>) -> Vec<(u64, Hash)> {
    let one = data.map(|d| [d]);
    full_node_hashes_parts(size, off, len, one.as_ref().map(|o| Parts::new(o)), None)
}

/// [`full_node_hashes`] of bytes held in one slice or several (a received frame's), whose
/// page hashes may be known already (`pieces`, of the same bytes: a receiver verified the
/// extent from them, protocol version 6): a node whose pages are all whole pieces is
/// combined from them, without hashing its bytes again.
pub fn full_node_hashes_parts(
    size: u64,
    off: u64,
    len: u64,
    data: Option<Parts<'_>>,
    pieces: Option<&Pieces>,
) -> Vec<(u64, Hash)> {
    let k = RESYNC_NODE_SIZES[KEPT];
    let end = (off + len).min(size);
    let mut out = Vec::new();
    if end <= off {
        return out;
    }
    let zero_full = std::sync::OnceLock::new();
    let mut pages = Vec::with_capacity((k / PAGE) as usize);
    for i in off.div_ceil(k)..=(end - 1) / k {
        let (a, b) = node_range(size, KEPT, i);
        if a < off || b > end {
            continue;
        }
        if let (Some(_), Some(p)) = (data, pieces) {
            pages.clear();
            let mut ps = a;
            while ps < b {
                match p.piece(ps, (ps + PAGE).min(b)) {
                    Some(h) => pages.push(h),
                    None => break,
                }
                ps += PAGE;
            }
            if ps >= b {
                out.push((i, combine(&pages)));
                continue;
            }
        }
        let h = match data {
            Some(d) => match d.range((a - off) as usize, (b - off) as usize) {
                Some(s) => kept_hash(&s),
                None => continue,
            },
            None if b - a == k => *zero_full.get_or_init(|| zero_node(k as usize)),
            None => zero_node((b - a) as usize),
        };
        out.push((i, h));
    }
    out
}
