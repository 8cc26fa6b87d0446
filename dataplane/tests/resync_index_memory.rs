//! The receiver's resync index of a large sparse disk (issue 16): paged from `NAME.hidx`
//! through a bounded cache, so the receiver's memory does not grow with the disk. A 1 TiB
//! replica has a 128 MiB index; the old receiver held it whole (and a copy of it as the
//! tree), ≥ 256 MiB for this disk. The test drives the receiver's own disk session (the
//! local store on a real filesystem, sparse files) through a copy, a commit, a reopen and a
//! resync's hash exchange, checks every answer against hashes computed independently from
//! the few written islands, and bounds the growth of the process's peak RSS
//! (`VmHWM`, `/proc/self/status`; nextest runs each test in its own process).

use std::sync::Arc;

use vdrep::receiver::DiskSession;
use vdrep::resync::index::Index;
use vdrep::resync::{combine, count, kept_hash, root_of, trunc, Hash, KEPT, RESYNC_NODE_SIZES};
use vdrep::sink::local::LocalStore;
use vdrep::sink::{DiskKey, ReplicaDisk, ReplicaStore};
use vdrep_proto::Guid;

const SIZE: u64 = 1 << 40;
const NODE: u64 = 256 << 10;
const MIB: u64 = 1 << 20;

/// The growth of peak RSS the index may cause: its cache (1 MiB), a rehash batch, the
/// top level (32 KiB), buffers. The old receiver needed ≥ 256 MiB here.
const BOUND: u64 = 48 * MIB;

fn status_kib(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} missing from /proc/self/status"))
}

/// The islands written: offset and byte value.
fn islands() -> Vec<(u64, Vec<u8>)> {
    vec![
        (5 * (1 << 30) + 3 * NODE, vec![0x11; NODE as usize]), // one whole node
        (700 * (1 << 30) + 12_345 * 512, vec![0x22; 4096]),    // part of a node
        (SIZE - MIB, vec![0x33; MIB as usize]),                // the last four nodes
    ]
}

/// Bytes of 256 KiB node `i` of the model (zeros but for the islands).
fn node_bytes(i: u64) -> Vec<u8> {
    let (a, b) = (i * NODE, (i + 1) * NODE);
    let mut v = vec![0u8; NODE as usize];
    for (off, data) in islands() {
        let (s, e) = (off.max(a), (off + data.len() as u64).min(b));
        if s < e {
            v[(s - a) as usize..(e - a) as usize]
                .copy_from_slice(&data[(s - off) as usize..(e - off) as usize]);
        }
    }
    v
}

fn touched(a: u64, b: u64) -> bool {
    islands()
        .iter()
        .any(|(off, d)| *off < b && off + d.len() as u64 > a)
}

/// The 16 MiB node `j` and the top node `t`, computed from the model alone.
fn mid(j: u64) -> Hash {
    let z2 = kept_hash(&vec![0u8; NODE as usize]);
    let n = RESYNC_NODE_SIZES[1];
    if !touched(j * n, (j + 1) * n) {
        return combine(&[z2; 64]);
    }
    let kids: Vec<Hash> = (j * 64..j * 64 + 64)
        .map(|i| {
            if touched(i * NODE, (i + 1) * NODE) {
                kept_hash(&node_bytes(i))
            } else {
                z2
            }
        })
        .collect();
    combine(&kids)
}

fn top(t: u64) -> Hash {
    let g = RESYNC_NODE_SIZES[0];
    if !touched(t * g, (t + 1) * g) {
        let z1 = combine(&[kept_hash(&vec![0u8; NODE as usize]); 64]);
        return combine(&[z1; 64]);
    }
    combine(&(t * 64..t * 64 + 64).map(mid).collect::<Vec<_>>())
}

fn open(store: &LocalStore) -> (Arc<dyn ReplicaDisk>, Arc<DiskSession>) {
    let r = store
        .open_disk(&DiskKey::new("vm", "big").unwrap(), SIZE, Guid([9; 16]))
        .unwrap();
    if !r.state().initial_in_progress && !r.state().initial_committed {
        r.begin_initial().unwrap();
    }
    let st = r.state();
    let fresh = st.initial_in_progress && st.progress.is_empty();
    let index = Index::open(r.resync_index(), SIZE, st.generation, fresh);
    let s = Arc::new(DiskSession::new(
        r.clone(),
        st.generation,
        SIZE,
        st.progress.clone(),
        index,
    ));
    (r, s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1_tib_replica_s_index_is_paged_so_the_receiver_s_memory_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    let base = status_kib("VmRSS:") * 1024;
    let tops: Vec<u64> = (0..count(SIZE, 0)).map(|t| trunc(&top(t))).collect();
    let root = root_of(SIZE, &(0..count(SIZE, 0)).map(top).collect::<Vec<_>>());
    {
        // The initial copy: three islands, then the commit persists the index (128 MiB).
        let (_r, s) = open(&store);
        for (off, data) in islands() {
            s.apply_write(off, data.len() as u64, Some(&data)).unwrap();
        }
        s.commit_initial().await.unwrap();
        s.close().await.unwrap();
    }
    let hidx = std::fs::metadata(dir.path().join("vm/big.hidx"))
        .unwrap()
        .len();
    assert_eq!(hidx, 64 + 32 * count(SIZE, KEPT) + count(SIZE, KEPT) / 8);
    // A new connection: the index is read back through the cache, not loaded.
    let (_r, s) = open(&store);
    assert_eq!(s.hashes(0, vec![], false).await.unwrap(), tops);
    // The descent to the partly written node, level by level.
    let (off, _) = islands()[1].clone();
    let (g, j, i) = (off >> 30, off / RESYNC_NODE_SIZES[1], off / NODE);
    let l1 = s.hashes(1, vec![g], false).await.unwrap();
    assert_eq!(
        l1,
        (g * 64..g * 64 + 64)
            .map(|j| trunc(&mid(j)))
            .collect::<Vec<_>>()
    );
    let l2 = s.hashes(2, vec![j], false).await.unwrap();
    assert_eq!(l2[(i - j * 64) as usize], trunc(&kept_hash(&node_bytes(i))));
    let pages = s.hashes(3, vec![i], false).await.unwrap();
    assert_eq!(pages.len(), 64);
    assert_eq!(s.root().await.unwrap(), root);
    s.close().await.unwrap();
    let grown = (status_kib("VmHWM:") * 1024).saturating_sub(base);
    eprintln!(
        "1 TiB replica: index file {} MiB, peak RSS growth {:.1} MiB",
        hidx / MIB,
        grown as f64 / MIB as f64
    );
    assert!(
        grown < BOUND,
        "peak RSS grew by {} MiB for a 128 MiB index (bound {} MiB)",
        grown / MIB,
        BOUND / MIB
    );
}
