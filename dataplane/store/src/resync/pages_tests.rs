use std::io;
use std::sync::{Arc, Mutex};

use super::*;

const BASE: u64 = 64;
const UNCLEAN: [u8; 64] = [0xAA; 64];
const CLEAN: [u8; 64] = [0xCC; 64];

/// A file that models durability (what a sync made durable survives a crash; of the
/// writes since, any subset may have reached the disk) and a power cut after a number of
/// operations (every later one fails), with a log of operations.
#[derive(Default)]
struct Disk {
    now: Vec<u8>,
    durable: Vec<u8>,
    /// Writes since the last sync.
    pending: Vec<(usize, Vec<u8>)>,
    ops: Vec<String>,
    /// Operations allowed before the power is cut.
    budget: Option<usize>,
}

#[derive(Clone, Default)]
struct SimFile(Arc<Mutex<Disk>>);

impl SimFile {
    fn with_clean(body: &[u8]) -> SimFile {
        let f = SimFile::default();
        {
            let mut d = f.0.lock().unwrap();
            d.now = [&CLEAN[..], body].concat();
            d.durable = d.now.clone();
        }
        f
    }
    fn op(&self, what: String) -> io::Result<std::sync::MutexGuard<'_, Disk>> {
        let mut d = self.0.lock().unwrap();
        if let Some(b) = d.budget.as_mut() {
            if *b == 0 {
                return Err(io::Error::other("power cut"));
            }
            *b -= 1;
        }
        d.ops.push(what);
        Ok(d)
    }
    fn durable(&self) -> Vec<u8> {
        self.0.lock().unwrap().durable.clone()
    }
    /// The file after a crash that kept the pending writes whose bit is set in `keep`.
    fn crashed(&self, keep: u64) -> Vec<u8> {
        let d = self.0.lock().unwrap();
        let mut img = d.durable.clone();
        for (k, (off, data)) in d.pending.iter().enumerate() {
            if keep & (1 << (k % 64)) != 0 {
                put(&mut img, *off, data);
            }
        }
        img
    }
    fn ops(&self) -> Vec<String> {
        std::mem::take(&mut self.0.lock().unwrap().ops)
    }
}

impl IndexFile for SimFile {
    fn size(&self) -> io::Result<Option<u64>> {
        Ok(Some(self.0.lock().unwrap().now.len() as u64))
    }
    fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        let d = self.0.lock().unwrap();
        let src = d.now.get(off as usize..off as usize + buf.len());
        buf.copy_from_slice(src.ok_or_else(|| io::Error::other("past the end"))?);
        Ok(())
    }
    fn write_at(&self, off: u64, data: &[u8]) -> io::Result<()> {
        let kind = if off == 0 { "header" } else { "body" };
        let mut d = self.op(format!("write {kind} {off}+{}", data.len()))?;
        put(&mut d.now, off as usize, data);
        d.pending.push((off as usize, data.to_vec()));
        Ok(())
    }
    fn sync(&self) -> io::Result<()> {
        let mut d = self.op("sync".into())?;
        d.durable = d.now.clone();
        d.pending.clear();
        Ok(())
    }
    fn describe(&self) -> String {
        "sim".into()
    }
}

fn put(img: &mut Vec<u8>, off: usize, data: &[u8]) {
    if img.len() < off + data.len() {
        img.resize(off + data.len(), 0);
    }
    img[off..off + data.len()].copy_from_slice(data);
}

fn pages_over(f: &SimFile, len: u64, cfg: CacheConfig, valid: bool) -> IndexPages {
    IndexPages::new(
        Some(Box::new(f.clone())),
        BASE,
        len,
        cfg,
        valid,
        Box::new(|off, buf| {
            for (k, b) in buf.iter_mut().enumerate() {
                *b = ((off + k as u64) % 7) as u8;
            }
        }),
        (UNCLEAN.to_vec(), CLEAN.to_vec()),
    )
}

const TINY: CacheConfig = CacheConfig {
    page: 256,
    pages: 3,
};

#[test]
fn the_cache_holds_at_most_its_pages_and_reads_back_what_was_written_after_evictions() {
    let len = 64 << 10;
    let body: Vec<u8> = (0..len).map(|i| (i * 13 % 251) as u8).collect();
    let f = SimFile::with_clean(&body);
    let mut p = pages_over(&f, len as u64, TINY, true);
    let mut model = body.clone();
    // Scattered updates over the whole body, then every byte read back.
    for k in 0..2000u64 {
        let off = (k * 7919 * 32) % len as u64;
        let v = (k % 256) as u8;
        p.update(off, 32, |s| s.fill(v)).unwrap();
        model[off as usize..off as usize + 32].fill(v);
    }
    for off in (0..len as u64).step_by(32) {
        let mut b = [0u8; 32];
        p.read(off, &mut b).unwrap();
        assert!(b[..] == model[off as usize..off as usize + 32], "at {off}");
    }
    assert_eq!(p.peak_bytes(), 3 * 256, "three pages of 256 bytes at most");
    p.persist_clean().unwrap();
    assert!(f.durable() == [&CLEAN[..], &model].concat());
}

#[test]
fn a_dirty_page_is_evicted_only_after_the_unclean_header_is_durable() {
    let body = vec![1u8; 4096];
    let f = SimFile::with_clean(&body);
    let mut p = pages_over(&f, 4096, TINY, true);
    p.update(40, 32, |s| s.fill(9)).unwrap();
    for pg in 1..=3 {
        p.read(pg * 256, &mut [0u8; 32]).unwrap();
    }
    // The fourth page pushed the dirty first one out: header, sync, then the 32 bytes.
    assert_eq!(
        f.ops(),
        vec!["write header 0+64", "sync", "write body 104+32"],
        "the unclean header is durable before the page is written"
    );
    assert_eq!(&f.durable()[..64], &UNCLEAN[..]);
    // A later eviction needs no second header.
    p.update(1024, 1, |s| s[0] = 5).unwrap();
    for pg in 5..=7 {
        p.read(pg * 256, &mut [0u8; 1]).unwrap();
    }
    assert_eq!(f.ops(), vec!["write body 1088+1"]);
}

#[test]
fn pages_not_on_file_are_synthesised_and_the_clean_persist_writes_them_all() {
    let f = SimFile::default();
    let mut p = pages_over(&f, 1000, TINY, false);
    let mut b = [0u8; 4];
    p.read(300, &mut b).unwrap();
    assert_eq!(b, [6, 0, 1, 2], "the fill's bytes (offset % 7)");
    p.update(300, 1, |s| s[0] = 99).unwrap();
    p.persist_clean().unwrap();
    let want: Vec<u8> = (0..1000u64)
        .map(|i| if i == 300 { 99 } else { (i % 7) as u8 })
        .collect();
    assert!(f.durable() == [&CLEAN[..], &want].concat());
    // Nothing changed: a second persist writes nothing.
    f.ops();
    p.persist_clean().unwrap();
    assert!(f.ops().is_empty());
}

/// The crash model: the power is cut after every possible number of operations of a
/// session (updates that evict, then a clean persist), and the writes not yet synced reach
/// the disk in several subsets. Whatever survives either says unclean, or says clean and
/// holds exactly the body of a clean persist.
#[test]
fn a_crash_at_any_point_leaves_an_unclean_file_or_a_clean_one_that_is_exact() {
    let len = 4096usize;
    let body: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    let run = |f: &SimFile| -> io::Result<Vec<u8>> {
        let mut p = pages_over(f, len as u64, TINY, true);
        let mut model = body.clone();
        for k in 0..40u64 {
            let off = (k * 389 * 32) % len as u64;
            p.update(off, 32, |s| s.fill(k as u8 + 1))?;
            model[off as usize..off as usize + 32].fill(k as u8 + 1);
        }
        p.persist_clean()?;
        Ok(model)
    };
    let probe = SimFile::with_clean(&body);
    let model = run(&probe).unwrap();
    let total = probe.ops().len();
    assert!(total > 10, "the session evicts: {total} operations");
    let (mut clean, mut unclean) = (0, 0);
    for cut in 0..=total {
        let f = SimFile::with_clean(&body);
        f.0.lock().unwrap().budget = Some(cut);
        let done = run(&f).is_ok();
        assert_eq!(done, cut == total);
        for keep in [
            0,
            u64::MAX,
            0x5555_5555_5555_5555,
            !0x5555_5555_5555_5555,
            1,
            2,
        ] {
            let d = f.crashed(keep);
            if d[..64] == CLEAN {
                clean += 1;
                let exact = d[64..] == body[..] || d[64..] == model[..];
                assert!(
                    exact,
                    "power cut after {cut} operations, writes kept {keep:x}: a clean header over another body"
                );
            } else {
                assert!(d[..64] == UNCLEAN, "cut after {cut}");
                unclean += 1;
            }
        }
    }
    assert!(
        unclean > 0 && clean > 0,
        "{clean} clean, {unclean} unclean outcomes"
    );
}

#[test]
fn without_a_file_nothing_is_evicted() {
    let mut p = IndexPages::new(
        None,
        BASE,
        4096,
        TINY,
        false,
        Box::new(|_, buf| buf.fill(0)),
        (UNCLEAN.to_vec(), CLEAN.to_vec()),
    );
    for pg in 0..16 {
        p.update(pg * 256, 1, |s| s[0] = pg as u8 + 1).unwrap();
    }
    for pg in 0..16 {
        let mut b = [0u8];
        p.read(pg * 256, &mut b).unwrap();
        assert_eq!(b[0], pg as u8 + 1);
    }
    assert_eq!(p.peak_bytes(), 4096);
}
