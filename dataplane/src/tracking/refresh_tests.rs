//! The digest refresh after a switch: exact without the lock, never wrong, and no writer
//! waits for it.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use vdrep_proto::Guid;

use super::*;
use crate::digest::digest_of;
use crate::disk::{DiskError, DiskInfo, Extent};

const MIB: u64 = 1 << 20;
const SIZE: u64 = 64 * MIB;

struct Fixture {
    _dir: tempfile::TempDir,
    disk: PathBuf,
    tracker: Tracker,
}

/// A raw disk of patterned bytes with tracking started and a complete table (cycle 0).
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("d.raw");
    let data: Vec<u8> = (0..SIZE).map(|i| (i * 13 % 251) as u8).collect();
    std::fs::write(&disk, data).unwrap();
    let tracker = Tracker::new(&disk, SIZE);
    tracker
        .lock()
        .unwrap()
        .start(Guid::NIL, crate::clock::system_time())
        .unwrap();
    let mut t = HashTable::open(&tracker.paths().hashes, SIZE).unwrap();
    t.compute_all(open(&disk).as_ref(), 0).unwrap();
    Fixture {
        _dir: dir,
        disk,
        tracker,
    }
}

fn open(p: &Path) -> Box<dyn VirtualDisk> {
    crate::disk::open(p, crate::disk::OpenOptions::default()).unwrap()
}

/// A tracked write as `vdrep log-write` makes it: under the lock, disk then log.
fn write(f: &Fixture, offset: u64, len: usize, seed: u8) {
    let data: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(7) ^ seed).collect();
    let locked = f.tracker.lock().unwrap();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&f.disk)
        .unwrap();
    file.write_all_at(&data, offset).unwrap();
    locked
        .append(&[(offset, Bytes::from(data))], crate::clock::system_time())
        .unwrap();
}

/// Switches to `cycle`; returns the digest of the disk as the switch left it and a reader
/// opened under the lock (as the sender opens it).
fn switch(f: &Fixture, cycle: u64) -> ([u8; 32], Box<dyn VirtualDisk>) {
    let locked = f.tracker.lock().unwrap();
    locked.switch(cycle, crate::clock::system_time()).unwrap();
    let frozen = digest_of(open(&f.disk).as_ref()).unwrap();
    (frozen, open(&f.disk))
}

/// A reader that takes `delay` per read, like a disk under heavy load, and counts reads.
struct SlowDisk {
    inner: Box<dyn VirtualDisk>,
    delay: Duration,
    reads: Arc<AtomicUsize>,
}

impl VirtualDisk for SlowDisk {
    fn info(&self) -> &DiskInfo {
        self.inner.info()
    }
    fn extents_in(&self, start: u64, end: u64) -> Result<Vec<Extent>, DiskError> {
        self.inner.extents_in(start, end)
    }
    fn read_into(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        std::thread::sleep(self.delay);
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.read_into(offset, buf)
    }
}

#[test]
fn a_writer_is_not_blocked_while_the_switched_cycle_is_hashed() {
    let f = fixture();
    // 40 touched blocks, each read from the disk in two gaps around its 4 KiB write: at
    // 25 ms a read, hashing takes at least 2 s.
    for b in 0..40 {
        write(&f, b * MIB + 8192, 4096, b as u8);
    }
    let (frozen, disk) = switch(&f, 1);
    let reads = Arc::new(AtomicUsize::new(0));
    let slow = SlowDisk {
        inner: disk,
        delay: Duration::from_millis(25),
        reads: reads.clone(),
    };
    let done = Arc::new(AtomicBool::new(false));
    let tracker = f.tracker.clone();
    let d2 = done.clone();
    let hasher = std::thread::spawn(move || {
        let r = switch_digest(&tracker, &slow, 1);
        d2.store(true, Ordering::SeqCst);
        r
    });
    let end = crate::clock::std_now() + Duration::from_secs(10);
    while reads.load(Ordering::SeqCst) == 0 {
        assert!(
            crate::clock::std_now() < end,
            "the hashing never started reading"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    // A write into a block the cycle did not touch, while the blocks are being read.
    let t0 = crate::clock::std_now();
    write(&f, 50 * MIB, 4096, 0xEE);
    let took = t0.elapsed();
    let reads_then = reads.load(Ordering::SeqCst);
    assert!(
        !done.load(Ordering::SeqCst) && reads_then < 80,
        "the write waited for the hashing ({reads_then} of 80 reads done, {took:?})"
    );
    assert!(took < Duration::from_secs(1), "the write took {took:?}");
    let got = hasher.join().unwrap().unwrap();
    assert_eq!(
        got,
        SwitchDigest::Exact(frozen),
        "the digest is the disk at the switch, not after the write"
    );
    assert_eq!(f.tracker.paths().find_next().unwrap(), None);
}

#[test]
fn writes_after_the_switch_keep_the_digest_exact_unless_they_hit_bytes_read_from_the_disk() {
    let f = fixture();
    write(&f, 3 * MIB, 64 << 10, 1);
    write(&f, 9 * MIB - 4096, 8192, 2); // across a block boundary
    let (frozen, disk) = switch(&f, 1);
    // A hot spot rewritten after the switch, and a write to an untouched block: the bytes
    // at the switch are still in the closed log or on the disk.
    write(&f, 3 * MIB + 4096, 8192, 3);
    write(&f, 20 * MIB, 512, 4);
    assert_eq!(
        switch_digest(&f.tracker, disk.as_ref(), 1).unwrap(),
        SwitchDigest::Exact(frozen)
    );

    // Cycle 2 touches block 5; after its switch a write changes block 5 at bytes the cycle
    // did not write: their state at the switch is gone, so no digest — not a wrong one.
    write(&f, 5 * MIB, 4096, 5);
    let (_, disk) = switch(&f, 2);
    write(&f, 5 * MIB + 65536, 512, 6);
    assert_eq!(
        switch_digest(&f.tracker, disk.as_ref(), 2).unwrap(),
        SwitchDigest::Overwritten {
            offset: 5 * MIB + 65536
        }
    );

    // The table stays right for later cycles: cycle 3 (which holds that write) is exact.
    let (frozen, disk) = switch(&f, 3);
    assert_eq!(
        switch_digest(&f.tracker, disk.as_ref(), 3).unwrap(),
        SwitchDigest::Exact(frozen)
    );
}

#[test]
fn cycles_switched_without_a_refresh_are_all_taken_by_the_next_one() {
    let f = fixture();
    write(&f, MIB, 4096, 1);
    write(&f, 7 * MIB, MIB as usize, 2);
    // Cycle 1's refresh never ran (a sender killed after its switch).
    let _ = switch(&f, 1);
    write(&f, MIB + 512, 512, 3);
    write(&f, 7 * MIB + 4096, 4096, 4);
    let (frozen, disk) = switch(&f, 2);
    assert_eq!(
        switch_digest(&f.tracker, disk.as_ref(), 2).unwrap(),
        SwitchDigest::Exact(frozen)
    );
    let t = HashTable::open(&f.tracker.paths().hashes, SIZE).unwrap();
    assert_eq!(t.through(), 2);
    // Asked again for a cycle the table already holds: refused, and the table is
    // recomputed at the next start rather than trusted.
    let disk = open(&f.disk);
    assert!(switch_digest(&f.tracker, disk.as_ref(), 2).is_err());
    assert!(!HashTable::open(&f.tracker.paths().hashes, SIZE)
        .unwrap()
        .is_complete());
}

#[test]
fn read_part_overlap_names_the_first_byte_outside_the_cycles_extents() {
    let ext = |offset, length| CoalescedExtent {
        offset,
        length,
        pieces: vec![],
    };
    let extents = [ext(MIB + 4096, 4096), ext(MIB + 16384, 8192)];
    let touched = [1u64];
    // Inside an extent, in an untouched block, or spanning both extents' gap.
    assert_eq!(
        read_part_overlap(&touched, &extents, MIB + 4096, 4096),
        None
    );
    assert_eq!(read_part_overlap(&touched, &extents, 0, 4096), None);
    assert_eq!(
        read_part_overlap(&touched, &extents, MIB + 4096, 16384),
        Some(MIB + 8192)
    );
    assert_eq!(
        read_part_overlap(&touched, &extents, MIB - 512, 1024),
        Some(MIB)
    );
}
