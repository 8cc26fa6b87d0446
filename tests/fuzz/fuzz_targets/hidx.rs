//! The receiver's resync index file (`NAME.hidx`): `resync::index::Index::open` on the input
//! as the file's content. The disk size and generation the receiver expects come from the
//! file's own header half the time (so the body checks are reached), with the size capped at
//! 1 GiB so a run stays small; the header checksum is re-sealed when byte 0 is odd. An index
//! that opens must answer its queries without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vdrep::resync::index::Index;
use vdrep_fuzz::{reseal_hidx, MemIndex};

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
    let ix = Index::open(Ok(Box::new(MemIndex(file.clone()))), size, generation, false);
    let dirty = ix.dirty_count();
    assert!(dirty as u64 <= size.div_ceil(256 << 10));
    if ix.stale_reason().is_none() {
        let _ = ix.tree();
    }
});
