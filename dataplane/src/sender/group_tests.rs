//! A group switch: every member's disks at one instant, recorded with one group cycle; a
//! member still expected holds the switch; the group's rules refuse what they must.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;
use crate::sender::disk::DiskJob;
use crate::sender::protect::Protected;

const SIZE: u64 = 4 << 20;

fn clock() -> SharedClock {
    Arc::new(crate::clock::SystemClock::new())
}

/// A VM with raw disks `names` in `root/vm/`, tracking started.
fn vm(root: &Path, vm: &str, names: &[&str]) -> Disks {
    let dir = root.join(vm);
    std::fs::create_dir_all(&dir).unwrap();
    let mut jobs = Vec::new();
    let mut paths = Vec::new();
    for n in names {
        let p = dir.join(n);
        std::fs::write(&p, vec![0u8; SIZE as usize]).unwrap();
        let d = crate::disk::open(&p, crate::disk::OpenOptions::default()).unwrap();
        jobs.push(DiskJob {
            vm: vm.into(),
            name: n.to_string(),
            disk: Arc::from(d),
            progress: Default::default(),
        });
        paths.push(p);
    }
    let disks = crate::sender::vmset::protected_disks(&jobs, &paths, false).unwrap();
    for d in disks.iter() {
        d.lock().unwrap().committed_cycle = Some(0);
    }
    disks
}

fn closed(d: &Arc<Mutex<Protected>>, cycle: u64) -> bool {
    d.lock().unwrap().tracker.paths().closed(cycle).is_file()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_switch_closes_every_members_disks_with_one_group_cycle() {
    let dir = tempfile::tempdir().unwrap();
    let groups = Groups::default();
    let state = dir.path().join("state");
    let a = vm(dir.path(), "a", &["os.raw", "data.raw"]);
    let b = vm(dir.path(), "b", &["os.raw", "log.raw"]);
    let g = groups
        .join("erp", "a", false, Duration::from_secs(1), &state)
        .unwrap();
    let g2 = groups
        .join("erp", "b", false, Duration::from_secs(1), &state)
        .unwrap();
    assert!(Arc::ptr_eq(&g, &g2));
    let (ma, mb) = (g.enter("a"), g.enter("b"));
    for round in 1..=2u64 {
        let c = clock();
        let (ra, rb) = tokio::join!(ma.switch(&a, &c), mb.switch(&b, &c));
        assert_eq!(ra, vec![Some(round); 2], "round {round}");
        assert_eq!(rb, vec![Some(round); 2], "round {round}");
        for d in a.iter().chain(b.iter()) {
            assert!(closed(d, round), "every disk closed cycle {round}");
            crate::sender::cycle::await_digest(d).await;
            d.lock().unwrap().committed_cycle = Some(round);
        }
    }
    let rec = group_record::switches(g.record_path(), "erp").unwrap();
    assert_eq!(rec.len(), 2);
    for (i, s) in rec.iter().enumerate() {
        let n = i as u64 + 1;
        assert_eq!(s.group_cycle, n);
        let vms: Vec<(&str, u64)> = s.vms.iter().map(|v| (v.vm.as_str(), v.cycle)).collect();
        assert_eq!(
            vms,
            vec![("a", n), ("b", n)],
            "one record names both members"
        );
    }
    let looked = group_record::lookup(g.record_path(), "erp", "b", 2)
        .unwrap()
        .unwrap();
    assert_eq!(looked.group_cycle, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_switch_waits_for_every_expected_member_and_not_for_one_that_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let groups = Groups::default();
    let state = dir.path().join("state");
    let a = vm(dir.path(), "a", &["os.raw"]);
    let b = vm(dir.path(), "b", &["os.raw"]);
    let g = groups
        .join("g", "a", false, Duration::from_secs(1), &state)
        .unwrap();
    groups
        .join("g", "b", false, Duration::from_secs(1), &state)
        .unwrap();
    groups
        .join("g", "c", false, Duration::from_secs(1), &state)
        .unwrap();
    let (ma, mb, mc) = (g.enter("a"), g.enter("b"), g.enter("c"));
    let c = clock();
    let both = async { tokio::join!(ma.switch(&a, &c), mb.switch(&b, &c)) };
    tokio::pin!(both);
    // c is expected (its task runs, e.g. still copying): nobody switches.
    let early = tokio::time::timeout(Duration::from_millis(300), &mut both).await;
    assert!(early.is_err(), "switched without member c");
    assert!(!closed(&a[0], 1) && !closed(&b[0], 1));
    // c's task ends: the others switch without it.
    drop(mc);
    let (ra, rb) = tokio::time::timeout(Duration::from_secs(10), both)
        .await
        .expect("the switch went on without the stopped member");
    assert_eq!((ra, rb), (vec![Some(1)], vec![Some(1)]));
    let rec = group_record::switches(g.record_path(), "g").unwrap();
    assert_eq!(rec.len(), 1);
    assert_eq!(
        rec[0].vms.iter().map(|v| v.vm.as_str()).collect::<Vec<_>>(),
        vec!["a", "b"],
        "the point lacks c"
    );
}

#[test]
fn a_group_refuses_a_17th_vm_and_a_member_with_another_interval() {
    let groups = Groups::default();
    let state = Path::new("/nonexistent");
    let i = Duration::from_secs(30);
    for n in 0..MAX_VMS {
        groups
            .join("g", &format!("vm{n}"), false, i, state)
            .unwrap();
    }
    // Joining again is no new member.
    groups.join("g", "vm0", false, i, state).unwrap();
    let e = groups.join("g", "vm16", false, i, state).unwrap_err();
    assert!(e.contains("16 VMs already"), "{e}");
    assert!(groups.check("g", "vm16", false, i).is_err());
    let e = groups
        .join("h", "a", false, i, state)
        .and_then(|_| groups.join("h", "b", false, Duration::from_secs(60), state))
        .unwrap_err();
    assert!(
        e.contains("interval 60s differs from the group's 30s"),
        "{e}"
    );
    assert!(groups
        .check("h", "b", false, Duration::from_secs(60))
        .is_err());
    assert!(groups.check("h", "b", false, i).is_ok());
    assert!(
        groups.join("../x", "a", false, i, state).is_err(),
        "group names are checked"
    );

    let vms: Vec<String> = (0..17).map(|n| format!("vm{n}")).collect();
    let e = check_members(vms.iter().map(|v| (v.as_str(), Some("g"), false))).unwrap_err();
    assert!(e.contains("17 VMs") && e.contains("at most 16"), "{e}");
    assert!(check_members(vms[..16].iter().map(|v| (v.as_str(), Some("g"), false))).is_ok());
    assert!(check_members(vms.iter().map(|v| (v.as_str(), None, false))).is_ok());
}

#[test]
fn a_group_holds_one_qemu_vm_beside_image_vms_and_refuses_a_second_saying_why() {
    let groups = Groups::default();
    let state = Path::new("/nonexistent");
    let i = Duration::from_secs(30);
    groups.join("erp", "web", false, i, state).unwrap();
    groups.join("erp", "db", true, i, state).unwrap();
    groups.join("erp", "app", false, i, state).unwrap();
    // The qemu VM again is no new member.
    groups.join("erp", "db", true, i, state).unwrap();
    let e = groups.join("erp", "cache", true, i, state).unwrap_err();
    assert!(
        e.contains("VM cache cannot join consistency group erp")
            && e.contains("holds qemu VM db already")
            && e.contains("qemu-storage-daemon cannot be paused"),
        "{e}"
    );
    assert!(groups.check("erp", "cache", true, i).is_err());
    assert!(groups.check("erp", "cache", false, i).is_ok());
    assert_eq!(
        groups.of("db").map(|g| g.members()),
        Some(vec!["app".to_string(), "db".into(), "web".into()])
    );
    // A command line or config naming two qemu VMs in one group is refused too.
    let e = check_members([
        ("db", Some("erp"), true),
        ("web", Some("erp"), false),
        ("cache", Some("erp"), true),
    ])
    .unwrap_err();
    assert!(e.contains("holds qemu VM db already"), "{e}");
    assert!(check_members([("db", Some("erp"), true), ("cache", Some("other"), true)]).is_ok());
}
