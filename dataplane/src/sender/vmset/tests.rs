//! The VM set's requests, policies, kept list and one-VM refusals.

use std::path::PathBuf;

use super::kept::save;
use super::request::check_request;
use super::run::refused_alone;
use super::*;
use crate::sender::SendError;

fn req(disks: &[&str]) -> AddedVm {
    AddedVm {
        vm: "db".into(),
        disks: disks.iter().map(PathBuf::from).collect(),
        interval_seconds: 30,
        rpo_threshold_seconds: None,
        retention_hours: None,
        initial_replication_unix: None,
        group: None,
        qmp: None,
        drives: Vec::new(),
        nbd: None,
    }
}

#[test]
fn requests_with_relative_repeated_or_no_disks_are_refused_with_the_reason() {
    assert!(check_request(&req(&["/vms/db/os.vhdx"])).is_ok());
    let e = check_request(&req(&["db/os.vhdx"])).unwrap_err();
    assert!(e.contains("not absolute"), "{e}");
    let e = check_request(&req(&["/a.vhd", "/a.vhd"])).unwrap_err();
    assert!(e.contains("twice"), "{e}");
    assert!(check_request(&req(&[]))
        .unwrap_err()
        .contains("at least one"));
    let bad_name = AddedVm {
        vm: "../x".into(),
        ..req(&["/a.vhd"])
    };
    assert!(check_request(&bad_name).is_err());
    let no_interval = AddedVm {
        interval_seconds: 0,
        ..req(&["/a.vhd"])
    };
    assert!(check_request(&no_interval).is_err());
}

#[test]
fn an_added_vms_policy_takes_its_interval_retention_and_start_time_over_the_command_lines() {
    let base = Policy {
        interval: Duration::from_secs(300),
        retention: Duration::from_secs(24 * 3600),
        max_cycles: Some(7),
        initial_at: None,
        group: None,
    };
    let set = VmSet::new(base, Path::new("/nonexistent"));
    let p = set.policy_for(&req(&["/a.vhd"]));
    assert_eq!(p.interval, Duration::from_secs(30));
    assert_eq!(p.retention, Duration::from_secs(24 * 3600), "the sender's");
    assert_eq!((p.max_cycles, p.initial_at), (Some(7), None));
    let p = set.policy_for(&AddedVm {
        retention_hours: Some(2),
        initial_replication_unix: Some(1_900_000_000),
        ..req(&["/a.vhd"])
    });
    assert_eq!(p.retention, Duration::from_secs(2 * 3600));
    assert_eq!(p.initial_at.map(|t| t.as_second()), Some(1_900_000_000));
}

#[test]
fn added_vms_are_kept_in_the_state_folder() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(load(dir.path()).unwrap(), Vec::new());
    let v = vec![req(&["/vms/db/os.vhdx", "/vms/db/data.vhdx"])];
    save(dir.path(), &v).unwrap();
    assert_eq!(load(dir.path()).unwrap(), v);
    std::fs::write(dir.path().join(FILE), b"{").unwrap();
    assert!(load(dir.path()).unwrap_err().to_string().contains(FILE));
}

#[test]
fn refusals_of_one_vm_leave_the_others_running_and_others_end_the_run() {
    use vdrep_proto::wire::ErrorClass;
    let remote = |class| SendError::Remote {
        peer: "rx".into(),
        class,
        message: "m".into(),
    };
    assert!(refused_alone(&remote(ErrorClass::Unauthorized)));
    assert!(refused_alone(&remote(ErrorClass::DiskSetChanged)));
    assert!(!refused_alone(&remote(ErrorClass::InvalidState)));
    assert!(!refused_alone(&remote(ErrorClass::VersionMismatch)));
}

#[test]
fn a_qemu_request_names_a_qmp_socket_without_disk_images_and_a_valid_group() {
    let q = AddedVm {
        qmp: Some(PathBuf::from("/run/db.qmp")),
        drives: vec!["os0=os".into()],
        ..req(&[])
    };
    assert!(check_request(&q).is_ok());
    let e = check_request(&AddedVm {
        disks: vec![PathBuf::from("/a.vhd")],
        ..q.clone()
    })
    .unwrap_err();
    assert!(e.contains("not both"), "{e}");
    let e = check_request(&AddedVm {
        qmp: Some(PathBuf::from("db.qmp")),
        ..q.clone()
    })
    .unwrap_err();
    assert!(e.contains("not absolute"), "{e}");
    // A group is checked where the VM joins it (one qemu VM per group); its name here.
    let g = AddedVm {
        group: Some("g1".into()),
        ..q.clone()
    };
    assert!(check_request(&g).is_ok());
    assert_eq!(qemu_spec(&g).unwrap().group.as_deref(), Some("g1"));
    let e = check_request(&AddedVm {
        group: Some("../g".into()),
        ..q.clone()
    })
    .unwrap_err();
    assert!(e.contains("group name"), "{e}");
    let e = check_request(&AddedVm {
        drives: vec!["os0".into()],
        ..req(&["/a.vhd"])
    })
    .unwrap_err();
    assert!(e.contains("qmp"), "{e}");
    // vms.json of a qemu VM names no disks and loads back.
    let dir = tempfile::tempdir().unwrap();
    save(dir.path(), std::slice::from_ref(&q)).unwrap();
    assert_eq!(load(dir.path()).unwrap(), vec![q.clone()]);
    assert_eq!(qemu_spec(&q).unwrap().drives[0].node, "os0");
}
