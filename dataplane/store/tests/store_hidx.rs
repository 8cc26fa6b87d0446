//! The resync index paged from `NAME.hidx` (issue 16) on the local store over the
//! durability model ([`SimFs`]): with a cache far smaller than the index, writes evict dirty
//! pages all the time, and a power cut between any two filesystem calls leaves an index
//! that is either unclean (the next resync rehashes it) or clean and exact — never a clean
//! file that describes another image.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use vdrep_proto::{Guid, RangeSet};
use vdrep_store::resync::index::{full_node_hashes, Index};
use vdrep_store::resync::pages::CacheConfig;
use vdrep_store::resync::{Source, Tree};
use vdrep_store::sink::fault::{Crash, SimFs};
use vdrep_store::sink::local::LocalStore;
use vdrep_store::sink::{DiskKey, ReplicaDisk, ReplicaStore};

const SIZE: u64 = 16 << 20; // 64 nodes: a 2 KiB index body
const NODE: u64 = 256 << 10;
/// One page of two hashes: the index body is 32 times larger than the cache, and every
/// access to another page evicts (so a rehash writes hash and bitmap pages alternately).
const TINY: CacheConfig = CacheConfig { page: 64, pages: 1 };

fn open(fs: &SimFs) -> Arc<dyn ReplicaDisk> {
    let d = LocalStore::open_with_fs(Path::new("/store"), Arc::new(fs.clone()))
        .unwrap()
        .open_disk(&DiskKey::new("vm", "d").unwrap(), SIZE, Guid([5; 16]))
        .unwrap();
    if !d.state().initial_in_progress {
        d.begin_initial().unwrap();
    }
    d
}

fn index(d: &Arc<dyn ReplicaDisk>) -> Index {
    let st = d.state();
    let fresh = st.initial_in_progress && st.progress.is_empty();
    Index::open_with(d.resync_index(), SIZE, st.generation, fresh, TINY)
}

struct Working(Arc<dyn ReplicaDisk>);

impl Source for Working {
    fn size(&self) -> u64 {
        SIZE
    }
    fn read(&self, off: u64, len: usize) -> Result<Bytes, String> {
        self.0.read(off, len).map_err(|e| e.to_string())
    }
}

/// A write as the receiver applies it (`DiskSession::apply_write`).
fn write(
    d: &Arc<dyn ReplicaDisk>,
    ix: &mut Index,
    done: &mut RangeSet,
    off: u64,
    data: &[u8],
) -> Result<(), String> {
    let full = full_node_hashes(SIZE, off, data.len() as u64, Some(data));
    ix.before_write().map_err(|e| e.to_string())?;
    let r = d.write(off, data);
    ix.after_write(off, data.len() as u64, &full, r.is_ok())?;
    r.map_err(|e| e.to_string())?;
    done.insert(off, off + data.len() as u64);
    Ok(())
}

/// A session of writes — whole nodes and parts of nodes, spread over the disk — then the
/// receiver's close: checkpoint, then the index persisted clean.
fn session(d: &Arc<dyn ReplicaDisk>, ix: &mut Index, seed: u8) -> Result<(), String> {
    let mut done = d.state().progress;
    for k in 0..24u64 {
        let node = (k * 37 + seed as u64) % (SIZE / NODE);
        let b = seed.wrapping_add(k as u8) | 1;
        if k % 3 == 0 {
            write(d, ix, &mut done, node * NODE, &vec![b; NODE as usize])?;
        } else {
            let off = node * NODE + (k % 7) * 4096 + 512;
            write(d, ix, &mut done, off, &[b; 1024])?;
        }
    }
    d.checkpoint(&done).map_err(|e| e.to_string())?;
    ix.persist_clean().map_err(|e| e.to_string())
}

#[test]
fn a_power_cut_anywhere_while_the_index_evicts_leaves_it_unclean_or_exact() {
    for crash in [Crash::DropVolatile, Crash::Random(7), Crash::Random(8)] {
        power_cuts(crash);
    }
}

/// Cuts the power after each number of filesystem calls of a session in turn, crashes
/// `how`, and checks the index reopened.
fn power_cuts(how: Crash) {
    // How many changing filesystem calls the second session makes.
    let first = |fs: &SimFs| {
        let d = open(fs);
        let mut ix = index(&d);
        session(&d, &mut ix, 1).unwrap();
        assert!(ix.peak_cache_bytes() <= 64, "{}", ix.peak_cache_bytes());
    };
    let mut calls = 0;
    loop {
        let fs = SimFs::new();
        first(&fs);
        fs.power_cut_after(calls);
        let done = {
            let d = open(&fs);
            let mut ix = index(&d);
            assert_eq!(ix.stale_reason(), None, "the first session left it clean");
            // A resync's first request rehashes the dirty nodes (new hashes, bits cleared:
            // pages evicted with no write to the replica), then the resync's writes.
            ix.rehash(&Working(d.clone()), false, 1).is_ok() && session(&d, &mut ix, 2).is_ok()
        };
        fs.crash(how);
        fs.restore_power();
        let d = open(&fs);
        let mut ix = index(&d);
        if ix.stale_reason().is_none() {
            // Clean: after rehashing the nodes it marks dirty, it must describe the
            // durable working image exactly.
            ix.rehash(&Working(d.clone()), false, 1).unwrap();
            let built = Tree::build(&Working(d.clone()), 1).unwrap();
            assert_eq!(
                ix.root().unwrap(),
                built.root(),
                "power cut after {calls} calls, {how:?}: a clean index that is wrong"
            );
        } else {
            assert!(
                ix.stale_reason().unwrap().contains("not closed cleanly"),
                "{:?}",
                ix.stale_reason()
            );
        }
        if done {
            assert!(calls > 20, "the session made {calls} calls");
            break;
        }
        calls += 1;
    }
}

#[test]
fn an_index_larger_than_its_cache_answers_like_a_tree_built_by_reading() {
    let fs = SimFs::new();
    let d = open(&fs);
    let mut ix = index(&d);
    session(&d, &mut ix, 3).unwrap();
    let mut ix = index(&d);
    assert_eq!(ix.stale_reason(), None);
    assert!(
        ix.dirty_count().unwrap() > 0,
        "partial writes left dirty nodes"
    );
    let src = Working(d.clone());
    ix.rehash(&src, false, 2).unwrap();
    let built = Tree::build(&src, 2).unwrap();
    assert_eq!(ix.root().unwrap(), built.root());
    for level in 1..=3u8 {
        let parents: Vec<u64> = if level == 3 { vec![0, 5, 63] } else { vec![0] };
        assert_eq!(
            vdrep_store::resync::answer(&mut ix, &src, level, &parents).unwrap(),
            built.answer(&src, level, &parents).unwrap(),
            "level {level}"
        );
    }
    assert!(ix.peak_cache_bytes() <= 64);
}

#[test]
fn a_stale_index_file_longer_than_the_index_is_truncated_and_counts_as_clean_again() {
    // A `NAME.hidx` left longer than its index needs (by a disk that was larger before, or
    // a crash while it grew) is stale; once rewritten it must have the index's length,
    // or every later open would find it stale again and every resync read the whole disk.
    let fs = SimFs::new();
    let hidx = Path::new("/store/vm/d.hidx");
    {
        let d = open(&fs);
        let mut ix = index(&d);
        session(&d, &mut ix, 1).unwrap();
    }
    let exact = fs.file_bytes(hidx).expect("the index file").len();
    fs.tamper(hidx, exact as u64, &[0xa5; 5000]).unwrap();
    assert_eq!(fs.file_bytes(hidx).unwrap().len(), exact + 5000);
    {
        let d = open(&fs);
        let mut ix = index(&d);
        let why = ix
            .stale_reason()
            .expect("a longer file is stale")
            .to_string();
        assert!(why.contains("expected"), "{why}");
        session(&d, &mut ix, 2).unwrap();
    }
    assert_eq!(
        fs.file_bytes(hidx).unwrap().len(),
        exact,
        "the rewritten index keeps the stale file's length"
    );
    let d = open(&fs);
    let ix = index(&d);
    assert_eq!(ix.stale_reason(), None, "clean and of the right length");
}
