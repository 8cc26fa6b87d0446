//! The receiver's resync index file (`NAME.hidx`): `resync::index::Index::open_with` on the
//! input as the file's content, through a tiny page cache (512-byte pages, two held) so
//! pages are evicted and read again. The disk size and generation the receiver expects come
//! from the file's own header half the time (so the body checks are reached), with the size
//! capped at 1 GiB so a run stays small; the header checksum is re-sealed when byte 0 is odd.
//! An index that opens must answer its queries, take writes and persist without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vdrep::resync::index::{full_node_hashes, Index};
use vdrep::resync::pages::CacheConfig;
use vdrep::resync::{answer, count, Source, KEPT};
use vdrep_fuzz::{reseal_hidx, MemIndex};

/// A working image of zeros.
struct Zeros(u64);

impl Source for Zeros {
    fn size(&self) -> u64 {
        self.0
    }
    fn read(&self, _off: u64, len: usize) -> Result<bytes::Bytes, String> {
        Ok(bytes::Bytes::from(vec![0u8; len]))
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut file = rest.to_vec();
    if mode & 1 == 1 {
        reseal_hidx(&mut file);
    }
    let u64_at = |o: usize| {
        file.get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
            .unwrap_or(0)
    };
    let (size, generation) = if mode & 2 == 0 {
        (u64_at(16) % ((1 << 30) + 1), u64_at(24))
    } else {
        (u64::from(mode) << 20, 1)
    };
    let cfg = CacheConfig {
        page: 512,
        pages: 2,
    };
    let mut ix = Index::open_with(
        Ok(Box::new(MemIndex(file.clone()))),
        size,
        generation,
        false,
        cfg,
    );
    let n = count(size, KEPT);
    if let Ok(dirty) = ix.dirty_count() {
        assert!(dirty <= n);
    }
    if ix.stale_reason().is_none() {
        let _ = ix.root();
        if size > 0 {
            let _ = answer(&mut ix, &Zeros(size), 1, &[0]);
            let _ = answer(&mut ix, &Zeros(size), 2, &[0]);
        }
    }
    // A write in the middle of the disk, then a persist (the file's writes are dropped, so
    // later reads see the input again: nothing may panic on what they find).
    if size > 0 {
        let off = u64_at(48) % size;
        let len = (size - off).min(1 << 20);
        let full = full_node_hashes(size, off, len, None);
        if ix.before_write().is_ok() {
            let _ = ix.after_write(off, len, &full, mode & 4 == 0);
        }
        let _ = ix.persist_clean();
        let _ = ix.root();
    }
});
