//! The store conformance suite: the contract of `ReplicaStore`/`ReplicaDisk` (the lifecycle
//! of `sink/mod.rs`), one case per behaviour, run against every backend: the local store,
//! the Azure sink on Azurite, and the fault-injecting wrapper (transparent when no fault is
//! planned). Storage-specific behaviour (files, blobs, crash images) is tested beside each
//! backend (`store_local.rs`, `store_cycles.rs`, `tests/tests/azure.rs`).
//!
//! The Azure cases start Azurite (`ops/node_modules/.bin/azurite-blob`); without it they
//! fail saying how to install it (`bash ops/setup.sh`).

#[macro_use]
mod common;

use common::backends::{Azure, Backend, Fault, Local};
use common::model::*;
use rand::Rng;
use vdrep_proto::{Guid, RangeSet};
use vdrep_store::sink::{DiskKey, ReplicaDisk, SinkError};

suite!(
    writes_anywhere_inside_the_disk_including_the_last_sector_read_back,
    unaligned_and_out_of_range_requests_are_refused_and_write_nothing,
    clear_zeroes_a_range,
    checkpointed_progress_survives_a_takeover_by_another_store,
    a_different_size_or_source_is_refused_non_recoverably,
    a_second_store_cannot_open_an_open_disk_until_it_is_released,
    commit_needs_a_complete_copy,
    a_new_full_copy_leaves_the_committed_replica_intact_until_it_commits,
    every_committed_cycle_is_a_point_that_reads_back_exactly,
    resent_and_overlapping_writes_within_a_cycle_end_as_the_last_one,
    cycles_out_of_order_and_unknown_points_are_clear_errors,
    retention_prunes_the_oldest_points_but_never_the_newest,
    an_open_cycle_resumes_from_its_durable_progress_after_a_takeover,
    a_new_full_copy_keeps_the_old_points_until_it_commits_then_starts_at_point_0,
    the_periodic_checkpoint_records_only_written_ranges_and_says_when_all_are_in,
    a_point_reader_needs_no_lock_and_removal_waits_for_the_holder,
);

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add((i / 512) as u8) ^ (i as u8))
        .collect()
}

fn open(b: &dyn Backend, size: u64) -> std::sync::Arc<dyn ReplicaDisk> {
    b.store().open_disk(&key(), size, SRC).unwrap()
}

fn writes_anywhere_inside_the_disk_including_the_last_sector_read_back(b: &dyn Backend) {
    let size = (3 << 20) + 7 * 512;
    let d = open(b, size);
    let last = size - 512;
    d.write(0, &pattern(1, 4096)).unwrap();
    d.write(last, &pattern(2, 512)).unwrap();
    assert_eq!(&d.read(0, 4096).unwrap()[..], &pattern(1, 4096)[..]);
    assert_eq!(&d.read(last, 512).unwrap()[..], &pattern(2, 512)[..]);
    assert_eq!(d.state().writable_end(), size);
}

fn unaligned_and_out_of_range_requests_are_refused_and_write_nothing(b: &dyn Backend) {
    let size = 1 << 20;
    let d = open(b, size);
    let cases: [(u64, usize); 5] = [
        (1, 512),
        (0, 100),
        (size, 512),
        (size - 512, 1024),
        (u64::MAX - 511, 512),
    ];
    for (off, len) in cases {
        let e = d.write(off, &vec![0xAA; len]).unwrap_err();
        assert!(matches!(e, SinkError::OutOfRange { .. }), "{e}");
        assert!(!e.is_transient());
        let msg = e.to_string();
        assert!(
            msg.contains(&d.path_hint()) && msg.contains(&off.to_string()),
            "{msg}"
        );
    }
    for (off, len) in [(size, 512), (512, 3)] {
        assert!(matches!(
            d.clear(off, len).unwrap_err(),
            SinkError::OutOfRange { .. }
        ));
    }
    assert!(matches!(
        d.read(size - 1, 2).unwrap_err(),
        SinkError::OutOfRange { .. }
    ));
    d.checkpoint(&RangeSet::new()).unwrap();
    assert!(d.read(0, size as usize).unwrap().iter().all(|b| *b == 0));
}

fn clear_zeroes_a_range(b: &dyn Backend) {
    let d = open(b, 1 << 20);
    d.write(0, &pattern(3, 256 << 10)).unwrap();
    d.clear(4096, 128 << 10).unwrap();
    let r = d.read(0, 256 << 10).unwrap();
    let end = 4096 + (128 << 10);
    assert_eq!(&r[..4096], &pattern(3, 4096)[..]);
    assert!(r[4096..end].iter().all(|b| *b == 0));
    assert_eq!(&r[end..], &pattern(3, 256 << 10)[end..]);
}

fn checkpointed_progress_survives_a_takeover_by_another_store(b: &dyn Backend) {
    let size = 2 << 20;
    {
        let d = open(b, size);
        d.write(0, &pattern(4, 65536)).unwrap();
        d.checkpoint(&RangeSet::from_range(0, 65536)).unwrap();
        d.write(65536, &pattern(5, 512)).unwrap(); // not checkpointed
    } // released: another receiver takes the disk over
    let store = b.store();
    let d = store.open_disk(&key(), size, SRC).unwrap();
    let st = d.state();
    assert_eq!(st.progress, RangeSet::from_range(0, 65536));
    assert!(st.initial_in_progress && !st.initial_committed);
    assert_eq!(st.generation, 1);
    assert_eq!(&d.read(0, 65536).unwrap()[..], &pattern(4, 65536)[..]);
    assert_eq!(store.list_disks(None).unwrap(), vec![key()]);
    assert_eq!(store.list_disks(Some("other")).unwrap(), vec![]);
}

fn a_different_size_or_source_is_refused_non_recoverably(b: &dyn Backend) {
    let store = b.store();
    drop(store.open_disk(&key(), 1 << 20, SRC).unwrap());
    let e = store.open_disk(&key(), 2 << 20, SRC).err().unwrap();
    assert!(
        matches!(e, SinkError::SizeMismatch { .. }) && !e.is_transient(),
        "{e}"
    );
    let e = store
        .open_disk(&key(), 1 << 20, Guid([1; 16]))
        .err()
        .unwrap();
    assert!(
        matches!(e, SinkError::IdentityMismatch { .. }) && !e.is_transient(),
        "{e}"
    );
    assert!(e.to_string().contains("d.state"), "names the state: {e}");
    let e = store.open_disk(&key2("big"), 0, SRC).err().unwrap();
    assert!(matches!(e, SinkError::Unsupported { .. }), "{e}");
}

fn key2(disk: &str) -> DiskKey {
    DiskKey::new("vm", disk).unwrap()
}

fn a_second_store_cannot_open_an_open_disk_until_it_is_released(b: &dyn Backend) {
    let (a, other) = (b.store(), b.store());
    let held = a.open_disk(&key(), 1 << 20, SRC).unwrap();
    let e = other.open_disk(&key(), 1 << 20, SRC).err().unwrap();
    assert!(
        matches!(e, SinkError::Locked { .. }) && e.is_transient(),
        "{e}"
    );
    // Other disks of the VM are free, and the disk is free once released.
    other.open_disk(&key2("d1"), 1 << 20, SRC).unwrap();
    drop(held);
    other.open_disk(&key(), 1 << 20, SRC).unwrap();
}

fn commit_needs_a_complete_copy(b: &dyn Backend) {
    let d = open(b, 1 << 20);
    d.checkpoint(&RangeSet::from_range(0, 512 << 10)).unwrap();
    let e = d.commit_initial(&point(0, 1 << 20)).unwrap_err();
    assert!(
        matches!(e, SinkError::InvalidState { offset, .. } if offset == 512 << 10),
        "{e}"
    );
    assert!(e.to_string().contains("incomplete"), "{e}");
    assert!(d.points().unwrap().is_empty());
    assert!(d.read_committed(0, 512).is_err(), "nothing is committed");
}

fn a_new_full_copy_leaves_the_committed_replica_intact_until_it_commits(b: &dyn Backend) {
    let size = 2u64 << 20;
    let v1 = pattern(1, size as usize);
    let d = open(b, size);
    d.write(0, &v1).unwrap();
    d.checkpoint(&RangeSet::from_range(0, size)).unwrap();
    d.commit_initial(&point(0, size)).unwrap();
    let st = d.state();
    assert!(st.initial_committed && !st.initial_in_progress && st.committed_cycle == 0);
    let id1 = st.replica_id;
    d.begin_initial().unwrap();
    let st = d.state();
    assert!(
        st.initial_in_progress
            && st.initial_committed
            && st.generation == 2
            && st.progress.is_empty()
    );
    d.write(0, &pattern(2, 65536)).unwrap();
    d.checkpoint(&RangeSet::from_range(0, 65536)).unwrap();
    assert_eq!(&d.read_committed(0, size as usize).unwrap()[..], &v1[..]);
    drop(d);
    let d = open(b, size);
    assert_eq!(d.state().progress, RangeSet::from_range(0, 65536));
    assert_eq!(&d.read_committed(0, 512).unwrap()[..], &v1[..512]);
    let mut v2 = v1.clone();
    v2[..65536].copy_from_slice(&pattern(2, 65536));
    d.write(65536, &v2[65536..]).unwrap();
    d.checkpoint(&RangeSet::from_range(0, size)).unwrap();
    d.commit_initial(&point(0, size)).unwrap();
    assert_ne!(d.state().replica_id, id1);
    assert_eq!(&d.read_committed(0, size as usize).unwrap()[..], &v2[..]);
    assert_eq!(d.begin_cycle(1).unwrap(), RangeSet::new());
    d.commit_cycle(&point(1, 0)).unwrap();
    d.commit_cycle(&point(1, 0)).unwrap(); // a resent commit is idempotent
    assert!(matches!(
        d.commit_cycle(&point(0, 0)).unwrap_err(),
        SinkError::InvalidState { .. }
    ));
    assert_eq!(d.state().committed_cycle, 1);
}

fn every_committed_cycle_is_a_point_that_reads_back_exactly(b: &dyn Backend) {
    let store = b.store();
    let mut rng = rng(1);
    let size = 4 << 20;
    let (d, mut m) = initial(store.as_ref(), size, &mut rng);
    for n in 1..=6u64 {
        let changes = if n == 4 {
            Vec::new() // an empty cycle is a point too
        } else {
            let count = rng.gen_range(1..40);
            random_changes(&mut rng, size, count, 256)
        };
        cycle(d.as_ref(), &mut m, n, &changes);
        assert_points_read_as_model(d.as_ref(), &m);
    }
    let pts = d.points().unwrap();
    assert_eq!(pts[0], point(0, size));
    assert_eq!(pts[4].bytes, 0, "the empty cycle changed nothing");
    // Points and the replica survive a takeover.
    drop(d);
    let d = b.store().open_disk(&key(), size, SRC).unwrap();
    assert_points_read_as_model(d.as_ref(), &m);
}

fn resent_and_overlapping_writes_within_a_cycle_end_as_the_last_one(b: &dyn Backend) {
    let store = b.store();
    let mut rng = rng(2);
    let size = 2 << 20;
    let (d, mut m) = initial(store.as_ref(), size, &mut rng);
    let a = random(&mut rng, 64 << 10);
    let bb = random(&mut rng, 16 << 10);
    // Written, partly overwritten, cleared and rewritten in one cycle, in this order.
    let changes = [
        Change::Write(8192, a.clone()),
        Change::Write(8192 + 4096, bb.clone()),
        Change::Clear(8192 + 32768, 8192),
        Change::Write(8192, a[..4096].to_vec()),
        Change::Write(8192, a[..4096].to_vec()), // resent
    ];
    cycle(d.as_ref(), &mut m, 1, &changes);
    assert_points_read_as_model(d.as_ref(), &m);
    // Writers of one cycle may run in parallel (disjoint extents, any order).
    let img_before = m.latest().1.clone();
    d.begin_cycle(2).unwrap();
    let changes = random_changes(&mut rng, size, 64, 64);
    std::thread::scope(|s| {
        for part in changes.chunks(16) {
            let d = d.clone();
            s.spawn(move || part.iter().for_each(|c| c.send(d.as_ref()).unwrap()));
        }
    });
    assert_eq!(
        &d.read_committed(0, size as usize).unwrap()[..],
        &img_before[..],
        "an open cycle is invisible in the newest point"
    );
    let mut img = img_before;
    changes.iter().for_each(|c| c.apply_to(&mut img));
    assert_eq!(
        &d.read(0, size as usize).unwrap()[..],
        &img[..],
        "the working view shows it"
    );
    assert_eq!(d.state().open_cycle, Some(2));
    d.checkpoint(&RangeSet::new()).unwrap();
    d.commit_cycle(&point(2, 0)).unwrap();
    m.points.insert(2, img);
    assert_points_read_as_model(d.as_ref(), &m);
    assert_eq!(d.state().open_cycle, None);
}

fn cycles_out_of_order_and_unknown_points_are_clear_errors(b: &dyn Backend) {
    let store = b.store();
    let mut rng = rng(3);
    let (d, mut m) = initial(store.as_ref(), 1 << 20, &mut rng);
    let invalid = |r: Result<(), SinkError>, what: &str| {
        let e = r.unwrap_err();
        assert!(
            matches!(e, SinkError::InvalidState { .. }) && !e.is_transient(),
            "{e}"
        );
        assert!(e.to_string().contains(what), "{e} lacks {what:?}");
    };
    invalid(d.write(0, &[1; 512]), "begin_cycle(1)");
    invalid(d.clear(0, 512), "begin_cycle(1)");
    invalid(
        d.checkpoint(&RangeSet::from_range(0, 512)),
        "no initial copy",
    );
    invalid(d.begin_cycle(2).map(|_| ()), "next cycle is 1");
    invalid(d.commit_cycle(&point(1, 0)), "no cycle is open");
    cycle(d.as_ref(), &mut m, 1, &[]);
    invalid(d.begin_cycle(1).map(|_| ()), "already committed");
    d.commit_cycle(&point(1, 0)).unwrap(); // a resent commit is a no-op
    d.begin_cycle(2).unwrap();
    invalid(d.commit_cycle(&point(3, 0)), "cycle 2 is open");
    invalid(d.begin_cycle(3).map(|_| ()), "cycle 2 is open");
    invalid(d.commit_initial(&point(0, 0)), "without an initial copy");
    let e = d.read_point(7, 0, 512).unwrap_err();
    assert!(matches!(e, SinkError::NotFound { .. }), "{e}");
    assert!(
        e.to_string().contains("recovery point 7 does not exist")
            && e.to_string().contains("0..=1"),
        "{e}"
    );
    assert!(matches!(
        d.read_point(0, 1 << 20, 1).unwrap_err(),
        SinkError::OutOfRange { .. }
    ));
    assert_points_read_as_model(d.as_ref(), &m);
}

fn retention_prunes_the_oldest_points_but_never_the_newest(b: &dyn Backend) {
    let store = b.store();
    let mut rng = rng(4);
    let size = 1 << 20;
    let (d, mut m) = initial(store.as_ref(), size, &mut rng);
    for n in 1..=5 {
        let ch = random_changes(&mut rng, size, 5, 32);
        cycle(d.as_ref(), &mut m, n, &ch);
    }
    // Points 0 and 1 were created before T0 + 100 s.
    assert_eq!(d.prune_points(T0 + 100).unwrap(), vec![0, 1]);
    m.points.retain(|&c, _| c >= 2);
    assert_points_read_as_model(d.as_ref(), &m);
    assert!(matches!(
        d.read_point(1, 0, 512).unwrap_err(),
        SinkError::NotFound { .. }
    ));
    assert_eq!(d.prune_points(T0 + 100).unwrap(), Vec::<u64>::new());
    // Everything is older than u64::MAX, but the newest point always stays.
    assert_eq!(d.prune_points(u64::MAX).unwrap(), vec![2, 3, 4]);
    m.points.retain(|&c, _| c == 5);
    assert_points_read_as_model(d.as_ref(), &m);
    // Pruning while a cycle is open keeps what the open cycle needs.
    d.begin_cycle(6).unwrap();
    let ch = random_changes(&mut rng, size, 4, 32);
    let mut img = m.latest().1.clone();
    for c in &ch {
        c.send(d.as_ref()).unwrap();
        c.apply_to(&mut img);
    }
    assert_eq!(d.prune_points(u64::MAX).unwrap(), Vec::<u64>::new());
    d.commit_cycle(&point(6, 0)).unwrap();
    m.points.insert(6, img);
    assert_points_read_as_model(d.as_ref(), &m);
}

fn an_open_cycle_resumes_from_its_durable_progress_after_a_takeover(b: &dyn Backend) {
    let mut rng = rng(5);
    let size = 1 << 20;
    let store = b.store();
    let (d, mut m) = initial(store.as_ref(), size, &mut rng);
    let a = Change::Write(0, random(&mut rng, 8192));
    let bb = Change::Write(65536, random(&mut rng, 4096));
    let c = Change::Clear(131072, 4096);
    d.begin_cycle(1).unwrap();
    a.send(d.as_ref()).unwrap();
    c.send(d.as_ref()).unwrap();
    let durable: RangeSet = [0..8192, 131072..135168].into_iter().collect();
    d.checkpoint(&durable).unwrap();
    bb.send(d.as_ref()).unwrap(); // not checkpointed: resent after the takeover
    drop(d);
    let d = b.store().open_disk(&key(), size, SRC).unwrap();
    let st = d.state();
    assert_eq!(st.open_cycle, Some(1));
    let done = d.begin_cycle(1).unwrap();
    assert_eq!(done, durable);
    assert_eq!(st.progress, done);
    assert_points_read_as_model(d.as_ref(), &m);
    bb.send(d.as_ref()).unwrap();
    let all: RangeSet = [0..8192, 65536..69632, 131072..135168]
        .into_iter()
        .collect();
    d.checkpoint(&all).unwrap();
    d.commit_cycle(&point(1, 16384)).unwrap();
    let mut img = m.latest().1.clone();
    for ch in [&a, &bb, &c] {
        ch.apply_to(&mut img);
    }
    m.points.insert(1, img);
    assert_points_read_as_model(d.as_ref(), &m);
}

fn a_new_full_copy_keeps_the_old_points_until_it_commits_then_starts_at_point_0(b: &dyn Backend) {
    let store = b.store();
    let mut rng = rng(8);
    let size = 1 << 20;
    let (d, mut m) = recopied(store.as_ref(), size, &mut rng);
    cycle(d.as_ref(), &mut m, 1, &random_changes(&mut rng, size, 3, 8));
    assert_points_read_as_model(d.as_ref(), &m);
}

fn the_periodic_checkpoint_records_only_written_ranges_and_says_when_all_are_in(b: &dyn Backend) {
    let size = 2 << 20;
    let d = open(b, size);
    let mut written = RangeSet::new();
    for i in 0..16u64 {
        d.write(i * 65536, &pattern(i as u8, 65536)).unwrap();
        written.insert(i * 65536, (i + 1) * 65536);
    }
    // Some sinks record only what is durable already: never more than was written, and
    // everything once the writes are in (bounded: each call makes progress or waits).
    let mut all = false;
    for _ in 0..200 {
        all = d.checkpoint_acknowledged(&written).unwrap();
        let p = d.state().progress;
        assert!(
            p.iter()
                .all(|r| written.clipped(r.start, r.end).covered_len() == r.end - r.start),
            "progress {p:?} claims more than the writes {written:?}"
        );
        if all {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(all, "the periodic checkpoint never recorded every write");
    assert_eq!(d.state().progress, written);
    // Nothing in progress: an empty periodic checkpoint is all there is to record.
    d.write(1 << 20, &pattern(9, 1 << 20)).unwrap();
    d.checkpoint(&RangeSet::from_range(0, size)).unwrap();
    d.commit_initial(&point(0, size)).unwrap();
    assert!(d.checkpoint_acknowledged(&RangeSet::new()).unwrap());
    let e = d
        .checkpoint_acknowledged(&RangeSet::from_range(0, 512))
        .unwrap_err();
    assert!(matches!(e, SinkError::InvalidState { .. }), "{e}");
}

fn a_point_reader_needs_no_lock_and_removal_waits_for_the_holder(b: &dyn Backend) {
    let store = b.store();
    let e = store.point_reader(&key()).err().unwrap();
    assert!(matches!(e, SinkError::NotFound { .. }), "{e}");
    let mut rng = rng(6);
    let size = 1 << 20;
    let (d, mut m) = initial(store.as_ref(), size, &mut rng);
    cycle(
        d.as_ref(),
        &mut m,
        1,
        &random_changes(&mut rng, size, 4, 16),
    );
    // Another store instance reads the points while the receiver holds the disk.
    let other = b.store();
    let r = other.point_reader(&key()).unwrap();
    assert_eq!(r.virtual_size(), size);
    let listed: Vec<u64> = r.points().unwrap().iter().map(|p| p.cycle).collect();
    assert_eq!(listed, vec![0, 1]);
    for (&c, img) in &m.points {
        assert_eq!(&r.read_point(c, 0, size as usize).unwrap()[..], &img[..]);
    }
    assert!(matches!(
        r.read_point(9, 0, 512).unwrap_err(),
        SinkError::NotFound { .. }
    ));
    let e = other.remove_disk(&key()).unwrap_err();
    assert!(matches!(e, SinkError::Locked { .. }), "{e}");
    drop(d);
    other.remove_disk(&key()).unwrap();
    assert!(other.list_disks(None).unwrap().is_empty());
    other.remove_disk(&key()).unwrap(); // absent is not an error
    assert!(other.point_reader(&key()).is_err());
}
