//! Conformance of the VM's recovery points (issue 17 item 3) on every backend: the local
//! store (`STORE/VM/points`), the Azure sink on Azurite (the blob `VM/points`) and the
//! fault-injecting wrapper. A VM point names each disk's committed cycle; it is recorded
//! only when every part is a point of its disk, read back whole, resent without change,
//! pruned whole, and a disk's removal removes its parts (the last disk the manifest).

#[macro_use]
mod common;

use std::sync::Arc;

use common::backends::{Azure, Backend, Fault, Local};
use common::model::*;
use vdrep_proto::RangeSet;
use vdrep_store::sink::fault::Op;
use vdrep_store::sink::vm_points::{self, PointPart, VmPoint};
use vdrep_store::sink::{DiskKey, ReplicaDisk, ReplicaStore, SinkError};

suite!(
    a_vm_point_is_recorded_once_every_part_is_a_disk_point_and_reads_back_whole,
    retention_prunes_whole_vm_points_never_the_newest,
    a_removed_disk_leaves_the_points_and_the_last_one_takes_the_manifest,
);

const SIZE: u64 = 1 << 20;

fn disk(name: &str) -> DiskKey {
    DiskKey::new("vm", name).unwrap()
}

/// Opens `name` and commits its initial copy (point 0).
fn copied(store: &dyn ReplicaStore, name: &str) -> Arc<dyn ReplicaDisk> {
    let d = store.open_disk(&disk(name), SIZE, SRC).unwrap();
    d.write(0, &[7u8; 4096]).unwrap();
    d.checkpoint(&RangeSet::from_range(0, SIZE)).unwrap();
    d.commit_initial(&point(0, SIZE)).unwrap();
    d
}

/// Commits cycle `n` of `d` (one write) as its point `n`.
fn cycled(d: &dyn ReplicaDisk, n: u64) {
    d.begin_cycle(n).unwrap();
    d.write(512 * n, &[n as u8; 512]).unwrap();
    d.checkpoint(&RangeSet::from_range(512 * n, 512 * (n + 1)))
        .unwrap();
    d.commit_cycle(&point(n, 512)).unwrap();
}

fn vm_point(c: u64, committed: u64, parts: &[(&str, u64)]) -> VmPoint {
    VmPoint {
        vm_cycle: c,
        switch_unix_ms: (T0 + 60 * c) * 1000,
        committed_unix: committed,
        group: None,
        group_cycle: None,
        consistent: true,
        disks: parts
            .iter()
            .map(|(d, cy)| PointPart::new(d, *cy, 0, &[0; 32]))
            .collect(),
    }
}

fn ids(store: &dyn ReplicaStore) -> Vec<(u64, bool)> {
    vm_points::list(store, "vm")
        .unwrap()
        .iter()
        .map(|p| (p.vm_cycle, p.consistent))
        .collect()
}

fn a_vm_point_is_recorded_once_every_part_is_a_disk_point_and_reads_back_whole(b: &dyn Backend) {
    let store = b.store();
    let (a, d) = (copied(store.as_ref(), "a"), copied(store.as_ref(), "data"));
    // Before any VM point: the points every disk has, none consistent (disk after disk).
    assert_eq!(store.vm_points("vm").unwrap(), None);
    assert_eq!(ids(store.as_ref()), vec![(0, false)]);
    cycled(a.as_ref(), 1);
    // One disk's part is committed, the other's not: the VM point is refused, nothing
    // written, and the list still ends at point 0.
    let e = vm_points::commit(
        store.as_ref(),
        "vm",
        vm_point(1, T0, &[("a", 1), ("data", 1)]),
        3600,
    )
    .unwrap_err();
    assert!(matches!(e, SinkError::InvalidState { .. }), "{e}");
    assert!(
        e.to_string().contains("disk data has no recovery point 1"),
        "{e}"
    );
    assert_eq!(store.vm_points("vm").unwrap(), None);
    assert_eq!(ids(store.as_ref()), vec![(0, false)]);
    cycled(d.as_ref(), 1);
    vm_points::commit(
        store.as_ref(),
        "vm",
        vm_point(1, T0, &[("a", 1), ("data", 1)]),
        3600,
    )
    .unwrap();
    // The first manifest keeps the earlier point 0; the part's bytes and digest are the
    // disk point's (`point(1, 512)`: digest [1; 32]).
    assert_eq!(ids(store.as_ref()), vec![(0, false), (1, true)]);
    let m = b.store().vm_points("vm").unwrap().expect("a manifest");
    let p1 = &m.points[1];
    assert_eq!(p1.part("data").unwrap().bytes, 512);
    assert_eq!(p1.part("data").unwrap().digest_bytes(), [1; 32]);
    assert_eq!(p1.switch_unix_ms, (T0 + 60) * 1000);
    // Resent: no change; the same cycle with other parts, or an older one: refused.
    vm_points::commit(
        store.as_ref(),
        "vm",
        vm_point(1, T0 + 5, &[("a", 1), ("data", 1)]),
        3600,
    )
    .unwrap();
    assert_eq!(b.store().vm_points("vm").unwrap().unwrap(), m);
    assert!(vm_points::commit(
        store.as_ref(),
        "vm",
        vm_point(1, T0, &[("a", 0), ("data", 1)]),
        3600
    )
    .is_err());
    // Disks' cycles may differ (a resync committed one more on one disk).
    cycled(a.as_ref(), 2);
    cycled(a.as_ref(), 3);
    cycled(d.as_ref(), 2);
    vm_points::commit(
        store.as_ref(),
        "vm",
        vm_point(3, T0 + 9, &[("a", 3), ("data", 2)]),
        3600,
    )
    .unwrap();
    assert_eq!(
        ids(b.store().as_ref()),
        vec![(0, false), (1, true), (3, true)]
    );
    assert!(
        vm_points::commit(
            store.as_ref(),
            "vm",
            vm_point(2, T0, &[("a", 2), ("data", 2)]),
            3600
        )
        .is_err(),
        "older than the newest"
    );
}

fn retention_prunes_whole_vm_points_never_the_newest(b: &dyn Backend) {
    let store = b.store();
    let (a, d) = (copied(store.as_ref(), "a"), copied(store.as_ref(), "data"));
    for n in 1..=4u64 {
        cycled(a.as_ref(), n);
        cycled(d.as_ref(), n);
        vm_points::commit(
            store.as_ref(),
            "vm",
            vm_point(n, T0 + 100 * n, &[("a", n), ("data", n)]),
            150,
        )
        .unwrap();
    }
    // Point 4 at T0+400 keeps what was committed at or after T0+250: points 3 and 4.
    assert_eq!(ids(store.as_ref()), vec![(3, true), (4, true)]);
    // A retention of 0 keeps the newest only.
    cycled(a.as_ref(), 5);
    cycled(d.as_ref(), 5);
    vm_points::commit(
        store.as_ref(),
        "vm",
        vm_point(5, T0 + 500, &[("a", 5), ("data", 5)]),
        0,
    )
    .unwrap();
    assert_eq!(ids(store.as_ref()), vec![(5, true)]);
}

fn a_removed_disk_leaves_the_points_and_the_last_one_takes_the_manifest(b: &dyn Backend) {
    let store = b.store();
    let (a, d) = (copied(store.as_ref(), "a"), copied(store.as_ref(), "data"));
    cycled(a.as_ref(), 1);
    cycled(d.as_ref(), 1);
    vm_points::commit(
        store.as_ref(),
        "vm",
        vm_point(1, T0, &[("a", 1), ("data", 1)]),
        3600,
    )
    .unwrap();
    drop((a, d));
    vm_points::remove_disk(store.as_ref(), "vm", "a").unwrap();
    let m = store.vm_points("vm").unwrap().unwrap();
    assert!(m
        .points
        .iter()
        .all(|p| p.part("a").is_none() && p.part("data").is_some()));
    store.remove_disk(&disk("a")).unwrap();
    assert!(
        store.vm_points("vm").unwrap().is_some(),
        "data still has its points"
    );
    store.remove_disk(&disk("data")).unwrap();
    assert_eq!(
        store.vm_points("vm").unwrap(),
        None,
        "the last disk took the manifest"
    );
}

#[test]
fn a_failed_manifest_write_records_no_point_and_a_retry_records_it() {
    let f = Fault::new();
    let store = f.store();
    let (a, d) = (copied(store.as_ref(), "a"), copied(store.as_ref(), "data"));
    cycled(a.as_ref(), 1);
    cycled(d.as_ref(), 1);
    f.plan.fail_first(Op::UpdateVmPoints, 1, libc::ENOSPC);
    let e = vm_points::commit(
        store.as_ref(),
        "vm",
        vm_point(1, T0, &[("a", 1), ("data", 1)]),
        3600,
    )
    .unwrap_err();
    assert!(e.is_transient(), "a full disk is retried: {e}");
    assert_eq!(
        ids(store.as_ref()),
        vec![(0, false), (1, false)],
        "no manifest: legacy view"
    );
    vm_points::commit(
        store.as_ref(),
        "vm",
        vm_point(1, T0, &[("a", 1), ("data", 1)]),
        3600,
    )
    .unwrap();
    assert_eq!(ids(store.as_ref()), vec![(0, false), (1, true)]);
}

#[test]
fn a_disk_named_points_shares_the_folder_with_the_manifest_without_a_collision() {
    let l = Local::new();
    let store = l.store();
    let (p, d) = (
        copied(store.as_ref(), "points"),
        copied(store.as_ref(), "data"),
    );
    cycled(p.as_ref(), 1);
    cycled(d.as_ref(), 1);
    vm_points::commit(
        store.as_ref(),
        "vm",
        vm_point(1, T0, &[("data", 1), ("points", 1)]),
        3600,
    )
    .unwrap();
    let keys: Vec<String> = store
        .list_disks(Some("vm"))
        .unwrap()
        .into_iter()
        .map(|k| k.disk)
        .collect();
    assert_eq!(keys, vec!["data", "points"]);
    assert_eq!(ids(store.as_ref()), vec![(0, false), (1, true)]);
    assert_eq!(
        p.points().unwrap().len(),
        2,
        "the disk's own points are intact"
    );
}

#[test]
fn a_store_of_format_3_is_listed_as_it_is_and_upgraded_once_with_its_points_not_consistent() {
    use vdrep_store::sink::local::{LocalStore, STORE_FORMAT, STORE_FORMAT_V3};
    let dir = tempfile::tempdir().unwrap();
    {
        // The layout of format 3 is format 4's without `VM/points`: written through the
        // store API, then marked as a format 3 store.
        let store = LocalStore::open(dir.path()).unwrap();
        let (a, d) = (copied(&store, "a"), copied(&store, "data"));
        cycled(a.as_ref(), 1);
        cycled(a.as_ref(), 2);
        cycled(d.as_ref(), 1);
    }
    std::fs::write(dir.path().join("FORMAT"), format!("{STORE_FORMAT_V3}\n")).unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    // Readers need no upgrade: the points every disk has, none consistent.
    assert_eq!(ids(&store), vec![(0, false), (1, false)]);
    assert!(!dir.path().join("vm/points").exists());
    let what = store.upgrade().unwrap().expect("an upgrade");
    assert!(
        what.contains("vdrep-store 4") && what.contains("vm"),
        "{what}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("FORMAT")).unwrap(),
        format!("{STORE_FORMAT}\n")
    );
    let m = store.vm_points("vm").unwrap().expect("the manifest");
    assert_eq!(m.points.len(), 2);
    assert!(m.points.iter().all(|p| !p.consistent));
    assert_eq!(store.upgrade().unwrap(), None, "once");
    assert_eq!(
        LocalStore::open(dir.path()).unwrap().upgrade().unwrap(),
        None
    );
    // VM points start at the first VM-wide switch: after the earlier ones.
    let a = store.open_disk(&disk("a"), SIZE, SRC).unwrap();
    let d = store.open_disk(&disk("data"), SIZE, SRC).unwrap();
    cycled(a.as_ref(), 3);
    cycled(d.as_ref(), 2);
    vm_points::commit(
        &store,
        "vm",
        vm_point(3, T0, &[("a", 3), ("data", 2)]),
        86_400,
    )
    .unwrap();
    assert_eq!(ids(&store), vec![(0, false), (1, false), (3, true)]);
}
