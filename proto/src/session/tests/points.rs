//! VM recovery points (version 5, WIRE.md §4.5): after every disk's `CommitCycle` the sender
//! commits the VM point naming each disk's cycle; the receiver checks the parts before any
//! store work, a resent point is answered again, and a version-4 stream never carries one.

use super::pair::{source, Opened, Pair};
use crate::session::receiver::{ControlState, ControlStep, Report};
use crate::session::sender::SessionError;
use crate::wire::{Control, ErrorClass, PointPart, MAX_CONTROL_BODY, VM_POINTS_VERSION};

const SIZE: u64 = 256 << 10;

/// Two disks of vm1, both initially copied.
fn two_disks(p: &mut Pair) -> (Opened, Opened) {
    let a = p.open_disk("vm1", "os", SIZE, false).unwrap();
    p.send(&a, &source(SIZE as usize, 1), &[], false).unwrap();
    p.commit_initial(&a).unwrap();
    let b = p.open_disk("vm1", "data", SIZE, false).unwrap();
    p.send(&b, &source(SIZE as usize, 2), &[], false).unwrap();
    p.commit_initial(&b).unwrap();
    (a, b)
}

fn part(o: &Opened, cycle: u64) -> PointPart {
    PointPart {
        handle: o.handle,
        cycle,
        bytes: 0,
        digest: [0; 32],
    }
}

fn commit_point(
    p: &mut Pair,
    vm_cycle: u64,
    parts: Vec<PointPart>,
) -> Result<Control, SessionError> {
    let req = p.tx.next_req();
    p.call(Control::CommitPoint {
        req,
        vm_cycle,
        switch_unix_ms: 1_000,
        group: None,
        group_cycle: None,
        retention_secs: 3600,
        disks: parts,
        one_instant: false,
    })
}

#[test]
fn a_vm_point_names_every_disks_committed_cycle_and_a_resent_one_is_answered_again() {
    let mut p = Pair::new();
    assert!(p.tx.vm_points());
    let (a, b) = two_disks(&mut p);
    // One VM switch: both disks' cycle 1, empty cycles too.
    for o in [&a, &b] {
        p.begin_cycle(o, 1).unwrap();
        p.commit_cycle(o, 1).unwrap();
    }
    let ans = commit_point(&mut p, 1, vec![part(&a, 1), part(&b, 1)]).unwrap();
    assert_eq!(
        ans,
        Control::PointCommitted {
            req: ans_req(&ans),
            vm_cycle: 1
        }
    );
    assert_eq!(
        p.model.vm_points["vm1"],
        vec![(1, vec![("data".to_string(), 1), ("os".to_string(), 1)])]
    );
    assert!(p.reports.iter().any(|r| matches!(
        r,
        Report::PointCommitted { vm, vm_cycle: 1, disks: 2, .. } if vm == "vm1"
    )));
    // The answer was lost: the sender reconnects, reopens its disks, resends the point.
    p.reconnect();
    let a2 = p.open_disk("vm1", "os", SIZE, false).unwrap();
    let b2 = p.open_disk("vm1", "data", SIZE, false).unwrap();
    assert_eq!((a2.committed_cycle, b2.committed_cycle), (1, 1));
    commit_point(&mut p, 1, vec![part(&a2, 1), part(&b2, 1)]).unwrap();
    assert_eq!(p.model.vm_points["vm1"].len(), 1);
    assert!(p.kinds.contains(&21) && p.kinds.contains(&22));
}

fn ans_req(c: &Control) -> u32 {
    match c {
        Control::PointCommitted { req, .. } => *req,
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_point_naming_a_cycle_not_yet_committed_is_refused_before_any_store_work() {
    let mut p = Pair::new();
    let (a, b) = two_disks(&mut p);
    p.begin_cycle(&a, 1).unwrap();
    p.commit_cycle(&a, 1).unwrap();
    // b's cycle 1 is open, not committed: the point would hold one disk of the switch.
    p.begin_cycle(&b, 1).unwrap();
    let effects = p.model.effects.len();
    match commit_point(&mut p, 1, vec![part(&a, 1), part(&b, 1)]) {
        Err(SessionError::Refused { class, message }) => {
            assert_eq!(class, ErrorClass::InvalidState);
            assert!(
                message.contains("vm1/data: cycle 1 is not committed"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        p.model.effects.len(),
        effects,
        "no store work for a refused point"
    );
    assert!(!p.model.vm_points.contains_key("vm1"));
    // The stream stays usable: commit b, then the point.
    p.commit_cycle(&b, 1).unwrap();
    commit_point(&mut p, 1, vec![part(&a, 1), part(&b, 1)]).unwrap();
    assert_eq!(p.model.vm_points["vm1"].len(), 1);
}

#[test]
fn a_point_with_a_disk_twice_or_none_is_invalid_and_an_unknown_handle_closes_the_stream() {
    let mut p = Pair::new();
    let (a, _b) = two_disks(&mut p);
    for parts in [vec![part(&a, 0), part(&a, 0)], vec![]] {
        match commit_point(&mut p, 1, parts) {
            Err(SessionError::Refused { class, .. }) => assert_eq!(class, ErrorClass::InvalidState),
            other => panic!("{other:?}"),
        }
    }
    match commit_point(
        &mut p,
        1,
        vec![
            part(&a, 0),
            PointPart {
                handle: 99,
                ..part(&a, 0)
            },
        ],
    ) {
        Err(SessionError::Refused { class, message }) => {
            assert_eq!(class, ErrorClass::Protocol);
            assert!(message.contains("unknown disk handle 99"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(p.rx.control_state(p.stream), ControlState::Closed);
}

#[test]
fn a_version_4_stream_never_carries_a_vm_point() {
    let mut p = Pair::new();
    let (a, _b) = two_disks(&mut p);
    // A second control stream from a version-4 sender.
    let s = p.stream + 1;
    let hello = Control::Hello {
        min_version: 1,
        max_version: VM_POINTS_VERSION - 1,
        software: "old".into(),
    };
    let (k, b) = p.wire(&hello.encode(), MAX_CONTROL_BODY);
    match p.rx.handle_control(s, k, &b) {
        ControlStep::Answer {
            answer: Control::HelloAck { version },
            ..
        } => {
            assert_eq!(version, VM_POINTS_VERSION - 1)
        }
        other => panic!("{other:?}"),
    }
    let point = Control::CommitPoint {
        req: 1,
        vm_cycle: 1,
        switch_unix_ms: 0,
        group: None,
        group_cycle: None,
        retention_secs: 0,
        disks: vec![part(&a, 0)],
        one_instant: false,
    };
    let (k, b) = p.wire(&point.encode(), MAX_CONTROL_BODY);
    match p.rx.handle_control(s, k, &b) {
        ControlStep::Answer {
            answer: Control::Error { class, .. },
            close: true,
            ..
        } => assert_eq!(class, ErrorClass::Protocol),
        other => panic!("{other:?}"),
    }
    // And a sender that negotiated version 4 does not send one.
    let mut old = crate::session::SenderControl::new();
    let _ = old.hello("x").unwrap();
    old.handle_answer(Control::HelloAck { version: 4 }).unwrap();
    assert!(!old.vm_points());
    assert!(matches!(old.request(&point), Err(SessionError::Misuse(_))));
}
