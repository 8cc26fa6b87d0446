//! The body of a resync index file (`NAME.hidx`: node hashes, then the dirty bitmap) seen
//! through a bounded page cache, so a receiver holds a few pages of each disk's index
//! instead of all of it: the index of a 4 TiB disk is 512 MiB of hashes, the cache
//! [`CacheConfig::DEFAULT`] is 1 MiB whatever the disk size.
//!
//! **Pages** are fixed-size pieces of the body (the bytes after the 64-byte header), loaded
//! on first use and evicted least recently used when the cache is full. A page the file
//! does not hold yet (a fresh copy, or a stale file the index rewrites) is *synthesised*
//! by the index's fill function instead of read; once written back it is on file.
//!
//! **Crash safety** (the invariant of this file): no body byte reaches the file while the
//! file's header, as durable, says *clean*. A dirty page is written back (on eviction or by
//! [`IndexPages::flush`]) only after [`IndexPages::mark_unclean`] has written the unclean
//! header and synced it. A crash between that sync and the page write, or after the page
//! write, leaves an unclean index: the next open finds it stale and rehashes, never trusts
//! it. The header says clean again only through [`IndexPages::persist_clean`]: every dirty
//! and every unwritten page on file and synced first, then the clean header, synced.
//!
//! Without a file (a sink that keeps no index) nothing can be evicted: the cache then holds
//! every page it was asked for, which is the whole index once a resync has read it.

use std::collections::HashMap;
use std::io;

use super::index::IndexFile;

/// How much of an index a receiver holds in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheConfig {
    /// Bytes per page (a multiple of 32, so a hash never straddles two pages).
    pub page: usize,
    /// Pages held at most.
    pub pages: usize,
}

impl CacheConfig {
    /// 64 pages of 16 KiB: 1 MiB per open disk. A page holds 512 hashes (128 MiB of disk);
    /// sequential scans (a rehash, the top level) stream through it, and the scattered
    /// writes of a delta cycle touch one page per 128 MiB region.
    pub const DEFAULT: CacheConfig = CacheConfig {
        page: 16 << 10,
        pages: 64,
    };
}

/// Synthesises body bytes `[off, off + buf.len())` that the file does not hold yet.
pub(super) type Fill = Box<dyn Fn(u64, &mut [u8]) + Send + Sync>;

struct Page {
    data: Box<[u8]>,
    /// The bytes changed since the page was loaded or written back (`[lo, hi)` in the
    /// page): only those are written back.
    dirty: Option<(usize, usize)>,
    used: u64,
}

/// The body of one index file through a bounded cache, and the header's clean state.
pub(super) struct IndexPages {
    file: Option<Box<dyn IndexFile>>,
    /// File offset of body byte 0 (the header's length).
    base: u64,
    /// Body length in bytes.
    len: u64,
    cfg: CacheConfig,
    cached: HashMap<u64, Page>,
    tick: u64,
    /// Bit per page: the file holds this page's current bytes (or an older version of a
    /// page held dirty here).
    on_file: Vec<u64>,
    fill: Fill,
    /// The header written when the index stops claiming to be clean, and when it does.
    unclean: Vec<u8>,
    clean: Vec<u8>,
    /// True while the durable header may say clean.
    durable_clean: bool,
    /// True once the file's length is settled: it held a valid index, or
    /// [`IndexFile::set_len`] was called before the first write.
    sized: bool,
    /// Most bytes of pages held at once (tests and figures).
    peak: usize,
}

impl IndexPages {
    /// The body of `file` (`None`: kept in memory only). `valid`: the file holds the whole
    /// body (a clean index of this layout); otherwise every page is synthesised by `fill`
    /// until written. The file's durable header is assumed to possibly say clean (a stale
    /// file may be clean for another layout): the first body write rewrites it unclean.
    pub(super) fn new(
        file: Option<Box<dyn IndexFile>>,
        base: u64,
        len: u64,
        cfg: CacheConfig,
        valid: bool,
        fill: Fill,
        headers: (Vec<u8>, Vec<u8>),
    ) -> IndexPages {
        let cfg = CacheConfig {
            page: (cfg.page / 32).max(1) * 32,
            pages: cfg.pages.max(1),
        };
        let npages = len.div_ceil(cfg.page as u64);
        let words = npages.div_ceil(64) as usize;
        let mut on_file = vec![if valid { u64::MAX } else { 0 }; words];
        if valid && !npages.is_multiple_of(64) {
            if let Some(last) = on_file.last_mut() {
                *last = (1u64 << (npages % 64)) - 1;
            }
        }
        IndexPages {
            file,
            base,
            len,
            cfg,
            cached: HashMap::new(),
            tick: 0,
            on_file,
            fill,
            unclean: headers.0,
            clean: headers.1,
            durable_clean: true,
            sized: valid,
            peak: 0,
        }
    }

    /// The file, if any.
    pub(super) fn file(&self) -> Option<&dyn IndexFile> {
        self.file.as_deref()
    }

    /// Most bytes of pages held at once since opened.
    pub(super) fn peak_bytes(&self) -> usize {
        self.peak
    }

    fn is_on_file(&self, p: u64) -> bool {
        self.on_file
            .get((p / 64) as usize)
            .is_some_and(|w| w & (1 << (p % 64)) != 0)
    }

    fn set_on_file(&mut self, p: u64) {
        if let Some(w) = self.on_file.get_mut((p / 64) as usize) {
            *w |= 1 << (p % 64);
        }
    }

    /// Body range of page `p`.
    fn span(&self, p: u64) -> (u64, u64) {
        let a = p * self.cfg.page as u64;
        (a, (a + self.cfg.page as u64).min(self.len))
    }

    /// The file, about to be written: a file whose content was not used is given its
    /// length first.
    fn writable(&mut self) -> io::Result<()> {
        if !self.sized {
            if let Some(f) = &self.file {
                f.set_len(self.base + self.len)?;
            }
            self.sized = true;
        }
        Ok(())
    }

    /// Makes the durable header say unclean (a no-op when it already does).
    pub(super) fn mark_unclean(&mut self) -> io::Result<()> {
        if self.durable_clean {
            self.writable()?;
            if let Some(f) = &self.file {
                f.write_at(0, &self.unclean)?;
                f.sync()?;
            }
            self.durable_clean = false;
        }
        Ok(())
    }

    /// Writes bytes `[at, at + d.len())` of page `p` (`Some`), or the whole page
    /// synthesised (`None`), to the file, the header made durably unclean first.
    fn write_back(&mut self, p: u64, data: Option<(usize, &[u8])>) -> io::Result<()> {
        self.mark_unclean()?;
        let (a, b) = self.span(p);
        self.writable()?;
        let Some(f) = &self.file else { return Ok(()) };
        match data {
            Some((at, d)) => f.write_at(self.base + a + at as u64, d)?,
            None => {
                let mut buf = vec![0u8; (b - a) as usize];
                (self.fill)(a, &mut buf);
                f.write_at(self.base + a, &buf)?;
            }
        }
        self.set_on_file(p);
        Ok(())
    }

    /// Page `p`, loaded (or synthesised) and counted as used.
    fn page(&mut self, p: u64) -> io::Result<&mut Page> {
        self.tick += 1;
        let tick = self.tick;
        if !self.cached.contains_key(&p) {
            if self.file.is_some() && self.cached.len() >= self.cfg.pages {
                self.evict()?;
            }
            let (a, b) = self.span(p);
            let mut data = vec![0u8; (b - a) as usize].into_boxed_slice();
            match &self.file {
                Some(f) if self.is_on_file(p) => f.read_at(self.base + a, &mut data)?,
                _ => (self.fill)(a, &mut data),
            }
            self.cached.insert(
                p,
                Page {
                    data,
                    dirty: None,
                    used: tick,
                },
            );
            self.peak = self.peak.max(self.held_bytes());
        }
        let pg = self
            .cached
            .get_mut(&p)
            .ok_or_else(|| io::Error::other("index page vanished"))?;
        pg.used = tick;
        Ok(pg)
    }

    /// Drops the least recently used page, written back first if dirty. A failed write
    /// keeps it (dirty) and fails the access that needed room.
    fn evict(&mut self) -> io::Result<()> {
        let Some(p) = self
            .cached
            .iter()
            .min_by_key(|(_, pg)| pg.used)
            .map(|(&p, _)| p)
        else {
            return Ok(());
        };
        if let Some(pg) = self.cached.remove(&p) {
            if let Some((lo, hi)) = self.to_write(p, &pg) {
                if let Err(e) = self.write_back(p, Some((lo, &pg.data[lo..hi]))) {
                    self.cached.insert(p, pg);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// The bytes of held page `p` to write back: its changed bytes, or all of it when the
    /// file does not hold the page yet (the rest would be missing).
    fn to_write(&self, p: u64, pg: &Page) -> Option<(usize, usize)> {
        let (lo, hi) = pg.dirty?;
        if self.is_on_file(p) {
            Some((lo, hi))
        } else {
            Some((0, pg.data.len()))
        }
    }

    fn held_bytes(&self) -> usize {
        self.cached.values().map(|p| p.data.len()).sum()
    }

    fn locate(&self, off: u64, len: usize) -> io::Result<(u64, usize)> {
        let page = self.cfg.page as u64;
        if off.checked_add(len as u64).is_none_or(|e| e > self.len)
            || off % page + len as u64 > page
        {
            return Err(io::Error::other(format!(
                "index body access [{off}, +{len}) outside its page or the body ({} bytes)",
                self.len
            )));
        }
        Ok((off / page, (off % page) as usize))
    }

    /// Reads `buf.len()` body bytes at `off` (inside one page).
    pub(super) fn read(&mut self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        let (p, at) = self.locate(off, buf.len())?;
        let pg = self.page(p)?;
        buf.copy_from_slice(&pg.data[at..at + buf.len()]);
        Ok(())
    }

    /// Reads `buf.len()` body bytes at `off`, across pages.
    pub(super) fn read_span(&mut self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        let page = self.cfg.page as u64;
        let mut done = 0;
        while done < buf.len() {
            let at = off + done as u64;
            let n = ((page - at % page) as usize).min(buf.len() - done);
            self.read(at, &mut buf[done..done + n])?;
            done += n;
        }
        Ok(())
    }

    /// Changes body bytes at `off` (inside one page) through `f`; the page becomes dirty
    /// when they change.
    pub(super) fn update(
        &mut self,
        off: u64,
        len: usize,
        f: impl FnOnce(&mut [u8]),
    ) -> io::Result<()> {
        let (p, at) = self.locate(off, len)?;
        let pg = self.page(p)?;
        let slot = &mut pg.data[at..at + len];
        let before = slot.to_vec();
        f(slot);
        if *slot != before[..] {
            pg.dirty = Some(match pg.dirty {
                Some((lo, hi)) => (lo.min(at), hi.max(at + len)),
                None => (at, at + len),
            });
        }
        Ok(())
    }

    /// Writes every dirty page and every page not yet on file, then syncs, so the file
    /// holds the whole body. The header is made unclean first when anything is written.
    fn flush(&mut self) -> io::Result<()> {
        let mut dirty: Vec<(u64, usize, usize)> = self
            .cached
            .iter()
            .filter_map(|(&p, pg)| self.to_write(p, pg).map(|(lo, hi)| (p, lo, hi)))
            .collect();
        dirty.sort_unstable();
        for (p, lo, hi) in dirty {
            if let Some(pg) = self.cached.get(&p) {
                let data = pg.data[lo..hi].to_vec();
                self.write_back(p, Some((lo, &data)))?;
            }
            if let Some(pg) = self.cached.get_mut(&p) {
                pg.dirty = None;
            }
        }
        let npages = self.len.div_ceil(self.cfg.page as u64);
        for p in 0..npages {
            if !self.is_on_file(p) {
                self.write_back(p, None)?;
            }
        }
        if let Some(f) = &self.file {
            f.sync()?;
        }
        Ok(())
    }

    /// Persists the index as clean: the whole body on file and synced, then the clean
    /// header, synced. A no-op without a file, or when nothing changed since it last said
    /// clean.
    pub(super) fn persist_clean(&mut self) -> io::Result<()> {
        if self.file.is_none() {
            return Ok(());
        }
        let npages = self.len.div_ceil(self.cfg.page as u64);
        let complete = (0..npages).all(|p| self.is_on_file(p));
        let any_dirty = self.cached.values().any(|pg| pg.dirty.is_some());
        if self.durable_clean && complete && !any_dirty {
            return Ok(());
        }
        // Even with nothing to write, a header that may say clean over an incomplete
        // body (a fresh copy's file is never read) is rewritten as unclean first.
        self.mark_unclean()?;
        self.flush()?;
        self.writable()?;
        if let Some(f) = &self.file {
            f.write_at(0, &self.clean)?;
            f.sync()?;
        }
        self.durable_clean = true;
        Ok(())
    }
}

#[cfg(test)]
#[path = "pages_tests.rs"]
mod tests;
