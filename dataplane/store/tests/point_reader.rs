//! Read-only recovery-point access of the local store (`ReplicaStore::point_reader`) and disk
//! removal: a reader needs no lock, so it works while a receiver holds the disk; while that
//! receiver commits and prunes cycles, every read returns exactly the bytes of the point it
//! asked for (never a mix of two points) or says the point is gone; a new full copy ends
//! the reader's view; `remove_disk` refuses a held disk and otherwise leaves nothing.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::{rngs::StdRng, Rng, RngCore, SeedableRng};
use vdrep_proto::{Guid, RangeSet};
use vdrep_store::sink::local::LocalStore;
use vdrep_store::sink::{DiskKey, RecoveryPoint, ReplicaDisk, ReplicaStore, SinkError};

const SRC: Guid = Guid([5; 16]);
const SIZE: u64 = 4 << 20;
const T0: u64 = 1_800_000_000;

fn key() -> DiskKey {
    DiskKey::new("vm", "d").unwrap()
}

fn point(cycle: u64) -> RecoveryPoint {
    RecoveryPoint {
        cycle,
        created_unix: T0 + cycle,
        bytes: 0,
        digest: [0; 32],
    }
}

fn random(rng: &mut StdRng, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rng.fill_bytes(&mut v);
    v
}

/// A disk with a committed initial copy of random bytes; returns it and its image.
fn initial(store: &LocalStore, rng: &mut StdRng) -> (Arc<dyn ReplicaDisk>, Vec<u8>) {
    let d = store.open_disk(&key(), SIZE, SRC).unwrap();
    let img = random(rng, SIZE as usize);
    d.write(0, &img).unwrap();
    d.checkpoint(&RangeSet::from_range(0, SIZE)).unwrap();
    d.commit_initial(&point(0)).unwrap();
    (d, img)
}

/// The images of points 1..=cycles after random overlapping writes and clears, and the
/// changes that make each (offset, data; empty data = clear of `len`).
type Changes = Vec<(u64, Vec<u8>, u64)>;
fn plan(rng: &mut StdRng, base: &[u8], cycles: u64) -> (Vec<Vec<u8>>, Vec<Changes>) {
    let mut images = vec![base.to_vec()];
    let mut all = Vec::new();
    for _ in 1..=cycles {
        let mut img = images.last().unwrap().clone();
        let mut ch = Vec::new();
        for _ in 0..rng.gen_range(0..12) {
            let len = rng.gen_range(1..=256u64) * 512;
            let off = rng.gen_range(0..(SIZE - len) / 512) * 512;
            if rng.gen_bool(0.2) {
                img[off as usize..(off + len) as usize].fill(0);
                ch.push((off, Vec::new(), len));
            } else {
                let data = random(rng, len as usize);
                img[off as usize..(off + len) as usize].copy_from_slice(&data);
                ch.push((off, data, len));
            }
        }
        images.push(img);
        all.push(ch);
    }
    (images, all)
}

#[test]
fn reads_are_exactly_one_point_while_a_receiver_commits_and_prunes() {
    reads_are_exact_while_cycles_run(vdrep_store::sink::local::CYCLE_BUFFER);
}

/// With a 16 KiB cycle buffer most writes move into the replica while their cycle is open,
/// each behind a state record naming the undo log that covers them.
#[test]
fn reads_are_exactly_one_point_while_open_cycles_write_into_the_replica() {
    reads_are_exact_while_cycles_run(16 << 10);
}

fn reads_are_exact_while_cycles_run(buffer: usize) {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path())
        .unwrap()
        .with_cycle_buffer(buffer);
    let mut rng = StdRng::seed_from_u64(11);
    let (disk, base) = initial(&store, &mut rng);
    let cycles = 60;
    let (images, changes) = plan(&mut rng, &base, cycles);
    let images = Arc::new(images);

    // Another store instance, as `vdrep failover` in another process would open it.
    let reader = LocalStore::open(dir.path())
        .unwrap()
        .point_reader(&key())
        .unwrap();
    assert_eq!(reader.virtual_size(), SIZE);
    let done = Arc::new(AtomicBool::new(false));
    let (exact, gone) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let r = {
        let (images, done, exact, gone) =
            (images.clone(), done.clone(), exact.clone(), gone.clone());
        std::thread::spawn(move || {
            let mut rng = StdRng::seed_from_u64(12);
            while !done.load(Ordering::Relaxed) {
                let pts = reader.points().unwrap();
                let pick = pts[rng.gen_range(0..pts.len())].cycle;
                let len = rng.gen_range(1..=2048u64) * 512;
                let off = rng.gen_range(0..=(SIZE - len) / 512) * 512;
                match reader.read_point(pick, off, len as usize) {
                    Ok(b) => {
                        let want = &images[pick as usize][off as usize..(off + len) as usize];
                        assert!(
                            b.as_ref() == want,
                            "point {pick} at {off}+{len} is not the point's bytes"
                        );
                        exact.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(SinkError::NotFound { problem, .. }) => {
                        assert!(problem.contains("does not exist"), "{problem}");
                        gone.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => panic!("read of point {pick} failed: {e}"),
                }
            }
        })
    };
    let t0 = vdrep_store::clock::std_now();
    for (i, ch) in changes.iter().enumerate() {
        let c = i as u64 + 1;
        disk.begin_cycle(c).unwrap();
        for (off, data, len) in ch {
            if data.is_empty() {
                disk.clear(*off, *len).unwrap();
            } else {
                disk.write(*off, data).unwrap();
            }
            // Let the reader run while the cycle is open and partly in the replica.
            std::thread::sleep(Duration::from_micros(300));
        }
        disk.checkpoint(&RangeSet::new()).unwrap();
        disk.commit_cycle(&point(c)).unwrap();
        // Retention of 6 points: the oldest goes at every cycle.
        disk.prune_points(T0 + c.saturating_sub(5)).unwrap();
        std::thread::sleep(Duration::from_millis(3));
    }
    done.store(true, Ordering::Relaxed);
    r.join().expect("reader thread failed");
    let (exact, gone) = (exact.load(Ordering::Relaxed), gone.load(Ordering::Relaxed));
    eprintln!(
        "{cycles} cycles in {:?}: {exact} exact reads, {gone} of pruned points",
        t0.elapsed()
    );
    assert!(exact > 50, "too few reads raced the commits: {exact}");
    let kept: Vec<u64> = store
        .point_reader(&key())
        .unwrap()
        .points()
        .unwrap()
        .iter()
        .map(|p| p.cycle)
        .collect();
    assert_eq!(kept, (55..=60).collect::<Vec<_>>());
}

#[test]
fn a_reader_needs_no_lock_and_its_view_ends_with_a_new_full_copy() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    let mut rng = StdRng::seed_from_u64(3);
    let (disk, base) = initial(&store, &mut rng);
    // The receiver holds the disk: another open is refused, a reader is not.
    assert!(matches!(
        store.open_disk(&key(), SIZE, SRC),
        Err(SinkError::Locked { .. })
    ));
    let reader = store.point_reader(&key()).unwrap();
    assert_eq!(&reader.read_point(0, 0, 4096).unwrap()[..], &base[..4096]);
    let e = reader.read_point(3, 0, 512).unwrap_err();
    assert!(
        e.to_string().contains("recovery point 3 does not exist"),
        "{e}"
    );
    // A resynchronisation's copy commits: the old points are gone, and the reader says so.
    disk.begin_initial().unwrap();
    assert_eq!(&reader.read_point(0, 0, 4096).unwrap()[..], &base[..4096]);
    disk.write(0, &vec![7u8; SIZE as usize]).unwrap();
    disk.checkpoint(&RangeSet::from_range(0, SIZE)).unwrap();
    disk.commit_initial(&point(0)).unwrap();
    let e = reader.read_point(0, 0, 4096).unwrap_err();
    assert!(
        matches!(&e, SinkError::NotFound { problem, .. } if problem.contains("new full copy")),
        "{e}"
    );
    let fresh = store.point_reader(&key()).unwrap();
    assert_eq!(&fresh.read_point(0, 0, 512).unwrap()[..], &[7u8; 512][..]);
    let unknown = DiskKey::new("vm", "nope").unwrap();
    assert!(matches!(
        store.point_reader(&unknown),
        Err(SinkError::NotFound { .. })
    ));
}

#[test]
fn remove_disk_refuses_a_held_disk_and_then_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    let mut rng = StdRng::seed_from_u64(4);
    let (disk, _) = initial(&store, &mut rng);
    for c in 1..=3 {
        disk.begin_cycle(c).unwrap();
        disk.write(512 * c, &random(&mut rng, 4096)).unwrap();
        disk.commit_cycle(&point(c)).unwrap();
    }
    disk.begin_cycle(4).unwrap();
    disk.write(0, &[1u8; 512]).unwrap();
    disk.checkpoint(&RangeSet::from_range(0, 512)).unwrap();
    let other = DiskKey::new("vm", "d2").unwrap();
    let d2 = store.open_disk(&other, SIZE, SRC).unwrap();
    drop(d2);
    assert!(matches!(
        store.remove_disk(&key()),
        Err(SinkError::Locked { .. })
    ));
    assert_eq!(store.list_disks(Some("vm")).unwrap().len(), 2);
    drop(disk);
    store.remove_disk(&key()).unwrap();
    store.remove_disk(&key()).unwrap(); // already gone: fine
    assert_eq!(store.list_disks(Some("vm")).unwrap(), vec![other.clone()]);
    let left: Vec<String> = std::fs::read_dir(dir.path().join("vm"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.starts_with("d2."))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    store.remove_disk(&other).unwrap();
    assert!(
        !dir.path().join("vm").exists(),
        "the VM folder goes with its last disk"
    );
    assert!(store.list_disks(None).unwrap().is_empty());
}
