//! Tests of the VM point manifest: encoding, adding, retention, removal, legacy points.

use super::*;

fn point(c: u64, committed: u64, disks: &[(&str, u64)]) -> VmPoint {
    VmPoint {
        vm_cycle: c,
        switch_unix_ms: committed * 1000,
        committed_unix: committed,
        group: None,
        group_cycle: None,
        consistent: true,
        disks: disks
            .iter()
            .map(|(d, cy)| PointPart::new(d, *cy, 1, &[0; 32]))
            .collect(),
    }
}

#[test]
fn a_manifest_round_trips_and_a_damaged_or_unordered_one_is_corrupt() {
    let p = Path::new("/s/vm1/points");
    let mut m = VmPoints::default();
    m.add(point(3, 10, &[("data", 2), ("os", 3)]), p).unwrap();
    let mut q = point(4, 11, &[("os", 4)]);
    q.disks[0].digest = Some("ab".repeat(32));
    m.add(q, p).unwrap();
    let back = VmPoints::decode(&m.encode(), p).unwrap();
    assert_eq!(back.points, m.points);
    assert_eq!(back.points[1].disks[0].digest_bytes(), [0xab; 32]);
    for bad in [
        b"{}".to_vec(),
        b"not json".to_vec(),
        String::from_utf8(m.encode())
            .unwrap()
            .replace("\"vm_cycle\": 4", "\"vm_cycle\": 2")
            .into_bytes(),
        String::from_utf8(m.encode())
            .unwrap()
            .replace("vdrep-vm-points 1", "vdrep-vm-points 9")
            .into_bytes(),
    ] {
        assert!(matches!(
            VmPoints::decode(&bad, p),
            Err(SinkError::CorruptState { .. })
        ));
    }
}

#[test]
fn the_same_point_again_is_no_change_and_a_different_or_older_one_is_refused() {
    let p = Path::new("x");
    let mut m = VmPoints::default();
    assert_eq!(
        m.add(point(5, 10, &[("a", 5), ("b", 4)]), p).unwrap(),
        Added::New
    );
    assert_eq!(
        m.add(point(5, 99, &[("a", 5), ("b", 4)]), p).unwrap(),
        Added::Again
    );
    assert!(m.add(point(5, 10, &[("a", 5), ("b", 5)]), p).is_err());
    assert!(m.add(point(4, 10, &[("a", 4)]), p).is_err());
    assert!(
        m.add(point(6, 10, &[("b", 5), ("a", 6)]), p).is_err(),
        "unsorted"
    );
    assert!(m.add(point(6, 10, &[]), p).is_err());
    // The clock went back: the commit time does not.
    m.add(point(6, 3, &[("a", 6)]), p).unwrap();
    assert_eq!(m.points[1].committed_unix, 10);
}

#[test]
fn retention_drops_whole_old_points_never_the_newest_and_points_whose_parts_are_gone() {
    let mut m = VmPoints::new(vec![
        point(1, 10, &[("a", 1), ("b", 1)]),
        point(2, 20, &[("a", 2), ("b", 2)]),
        point(3, 30, &[("a", 3), ("b", 3)]),
    ]);
    assert_eq!(m.prune(25, |_, _| true), 2);
    assert_eq!(m.points[0].vm_cycle, 3);
    assert_eq!(m.prune(1000, |_, _| true), 0, "the newest stays");
    let mut m = VmPoints::new(vec![
        point(1, 10, &[("a", 1), ("b", 1)]),
        point(2, 20, &[("a", 2), ("b", 2)]),
    ]);
    assert_eq!(m.prune(0, |d, c| !(d == "b" && c == 1)), 1);
    assert_eq!(m.points[0].vm_cycle, 2);
}

#[test]
fn removing_a_disk_removes_its_parts_and_points_left_empty() {
    let mut m = VmPoints::new(vec![
        point(1, 10, &[("a", 1)]),
        point(2, 20, &[("a", 2), ("b", 2)]),
    ]);
    assert!(m.remove_disk("a"));
    assert_eq!(m.points.len(), 1);
    assert_eq!(m.points[0].disks.len(), 1);
    assert!(!m.remove_disk("zz"));
}

#[test]
fn points_from_before_vm_switches_are_the_cycles_every_disk_has_and_not_consistent() {
    let rp = |cycle, t| RecoveryPoint {
        cycle,
        created_unix: t,
        bytes: 7,
        digest: [0; 32],
    };
    let v = legacy_points(&[
        (
            "os".into(),
            vec![rp(0, 100), rp(1, 130), rp(2, 160), rp(3, 190)],
        ),
        ("data".into(), vec![rp(0, 110), rp(1, 135), rp(2, 165)]),
    ]);
    let ids: Vec<u64> = v.iter().map(|p| p.vm_cycle).collect();
    assert_eq!(ids, vec![0, 1, 2]);
    assert!(v.iter().all(|p| !p.consistent));
    assert_eq!(v[1].switch_unix_ms, 130_000);
    assert_eq!(v[1].committed_unix, 135);
    assert_eq!(v[1].disks[0].disk, "data");
    assert!(legacy_points(&[]).is_empty());
}
