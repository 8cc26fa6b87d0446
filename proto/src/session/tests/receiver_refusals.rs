//! The receiver session's refusals, one test per path: the input, the class, whether the
//! stream survives.

use super::receiver_control::*;
use crate::session::receiver::{ControlState, Done, Effect, OpenedReplica, Report, MAX_JOB_BYTES};
use crate::session::Refusal;
use crate::wire::{
    Control, ErrorClass, Job, JobKind, JobState, Step, MAX_HASHES, PROTOCOL_VERSION,
};

// ---- Refusals, one per path.

#[test]
fn hello_without_a_common_version_is_refused_and_closes() {
    let mut s = session();
    let (class, msg, close) = refusal(s.handle_message(
        S,
        Control::Hello {
            min_version: PROTOCOL_VERSION + 1,
            max_version: PROTOCOL_VERSION + 5,
            software: "future".into(),
        },
    ));
    assert_eq!((class, close), (ErrorClass::VersionMismatch, true));
    assert!(msg.contains(&format!(
        "{}..={}",
        PROTOCOL_VERSION + 1,
        PROTOCOL_VERSION + 5
    )));
    assert_eq!(s.control_state(S), ControlState::Closed);
}

#[test]
fn a_first_frame_other_than_hello_is_a_protocol_violation() {
    let mut s = session();
    let (class, msg, close) =
        refusal(s.handle_message(S, Control::RootRequest { req: 1, handle: 1 }));
    assert_eq!((class, close), (ErrorClass::Protocol, true));
    assert!(msg.contains("must be Hello"), "{msg}");
}

#[test]
fn a_malformed_control_frame_is_a_protocol_violation() {
    let mut s = ready();
    let (class, msg, close) = refusal(s.handle_control(S, 3, &[1, 2, 3]));
    assert_eq!((class, close), (ErrorClass::Protocol, true));
    assert!(msg.contains("malformed control frame"), "{msg}");
    let mut s = ready();
    let (class, ..) = refusal(s.handle_control(S, 200, &[]));
    assert_eq!(class, ErrorClass::Protocol);
}

#[test]
fn answers_and_a_second_hello_from_a_sender_are_protocol_violations() {
    for m in [
        hello(),
        Control::HelloAck { version: 3 },
        Control::Committed {
            req: 1,
            handle: 1,
            cycle: 0,
        },
        Control::Error {
            req: 1,
            class: ErrorClass::Internal,
            message: "x".into(),
        },
        Control::Capacity {
            req: 1,
            available: 1,
        },
    ] {
        let mut s = ready();
        let (class, msg, close) = refusal(s.handle_message(S, m));
        assert_eq!((class, close), (ErrorClass::Protocol, true), "{msg}");
        assert!(msg.contains("unexpected control message"), "{msg}");
    }
}

#[test]
fn a_request_while_one_is_being_answered_is_a_protocol_violation() {
    let mut s = ready();
    let _ = effect(s.handle_message(S, open_msg("vm1", 512)));
    let (class, msg, close) = refusal(s.handle_message(S, open_msg("vm1", 512)));
    assert_eq!((class, close), (ErrorClass::Protocol, true));
    assert!(msg.contains("being answered"), "{msg}");
}

#[test]
fn vms_of_other_senders_are_refused_as_unauthorized_and_the_stream_goes_on() {
    let job = |vm: &str| Job {
        id: "j".into(),
        kind: JobKind::TestFailover,
        vm: vm.into(),
        state: JobState::Running,
        start_ms: 0,
        end_ms: None,
        steps: vec![],
        error: None,
    };
    for m in [
        open_msg("vm2", 512),
        Control::ReportJob {
            req: 1,
            job: job("vm2"),
        },
        Control::QueryCapacity {
            req: 1,
            vm: "vm2".into(),
            needed: 1,
        },
    ] {
        let mut s = ready();
        let (a, close, report) = answer(s.handle_message(S, m));
        let Control::Error {
            class,
            message,
            req,
        } = a
        else {
            panic!("{a:?}")
        };
        assert_eq!((class, req, close), (ErrorClass::Unauthorized, 1, false));
        assert!(
            message.contains("sender host1 is not authorised for VM vm2"),
            "{message}"
        );
        assert_eq!(report, Some(Report::Unauthorized { vm: "vm2".into() }));
        assert!(matches!(s.control_state(S), ControlState::Ready { .. }));
    }
}

#[test]
fn a_job_with_too_much_text_is_refused_before_the_store_sees_it() {
    let mut s = ready();
    let big = Job {
        id: "j".into(),
        kind: JobKind::EnableProtection,
        vm: "vm1".into(),
        state: JobState::Running,
        start_ms: 0,
        end_ms: None,
        steps: (0..20)
            .map(|_| Step {
                name: "n".into(),
                state: JobState::Running,
                start_ms: None,
                end_ms: None,
                detail: "x".repeat(MAX_JOB_BYTES / 16),
            })
            .collect(),
        error: None,
    };
    let (class, msg, close) = refusal(s.handle_message(S, Control::ReportJob { req: 5, job: big }));
    assert_eq!((class, close), (ErrorClass::InvalidState, false));
    assert!(msg.contains("bytes of text"), "{msg}");
}

#[test]
fn requests_naming_an_unknown_handle_are_protocol_violations() {
    for m in [
        Control::CommitInitial {
            req: 1,
            handle: 9,
            generation: 1,
        },
        Control::BeginCycle {
            req: 1,
            handle: 9,
            cycle: 1,
        },
        Control::CommitCycle {
            req: 1,
            handle: 9,
            cycle: 1,
            bytes: 0,
            digest: [0; 32],
            retention_secs: 0,
        },
        Control::HashRequest {
            req: 1,
            handle: 9,
            level: 0,
            parents: vec![],
            verify: false,
        },
        Control::RootRequest { req: 1, handle: 9 },
    ] {
        let mut s = with_disk(1 << 20, false);
        let (class, msg, close) = refusal(s.handle_message(S, m));
        assert_eq!((class, close), (ErrorClass::Protocol, true));
        assert_eq!(msg, "unknown disk handle 9");
    }
}

#[test]
fn a_commit_of_another_generation_is_refused_as_invalid_state() {
    let mut s = with_disk(1 << 20, true);
    let (class, msg, close) = refusal(s.handle_message(
        S,
        Control::CommitInitial {
            req: 2,
            handle: 1,
            generation: 3,
        },
    ));
    assert_eq!((class, close), (ErrorClass::InvalidState, false));
    assert!(
        msg.contains("generation 3, but generation 4 is open"),
        "{msg}"
    );
}

#[test]
fn hash_requests_are_checked_against_the_tree_before_anything_is_hashed() {
    let hr = |level, parents: Vec<u64>| Control::HashRequest {
        req: 2,
        handle: 1,
        level,
        parents,
        verify: false,
    };
    // During an initial copy: no resync.
    let mut s = with_disk(3 * GIB, true);
    let (class, msg, close) = refusal(s.handle_message(S, hr(0, vec![])));
    assert_eq!((class, close), (ErrorClass::InvalidState, false));
    assert!(msg.contains("initial copy is in progress"), "{msg}");
    // A committed 3 GiB disk: 3 top nodes, 192 at level 1.
    for (level, parents, what) in [
        (4u8, vec![], "level 4"),
        (0, vec![0], "lists no parents"),
        (1, vec![3], "node 3 of level 0, which has 3"),
        (2, vec![0, 192], "node 192 of level 1, which has 192"),
    ] {
        let mut s = with_disk(3 * GIB, false);
        let (class, msg, close) = refusal(s.handle_message(S, hr(level, parents)));
        assert_eq!((class, close), (ErrorClass::Protocol, true), "{msg}");
        assert!(msg.contains(what), "{msg}");
    }
    let mut s = with_disk(3 * GIB, false);
    let e = effect(s.handle_message(S, hr(1, vec![0, 2])));
    assert_eq!(
        e,
        Effect::Hashes {
            handle: 1,
            level: 1,
            parents: vec![0, 2],
            verify: false
        }
    );
    // An answer larger than a frame may carry is refused, not sent.
    let (class, msg, close) = refusal(s.handle_done(S, Done::Hashes(Ok(vec![0; MAX_HASHES + 1]))));
    assert_eq!((class, close), (ErrorClass::Protocol, true));
    assert!(msg.contains("too many hashes"), "{msg}");
}

#[test]
fn a_store_refusal_is_answered_with_its_class_and_the_stream_goes_on() {
    for (class, close) in [
        (ErrorClass::TargetFull, false),
        (ErrorClass::TargetBusy, false),
        (ErrorClass::SizeChanged, false),
        (ErrorClass::InvalidState, false),
    ] {
        let mut s = ready();
        let _ = effect(s.handle_message(S, open_msg("vm1", 512)));
        let (a, c, _) = answer(s.handle_done(S, Done::Opened(Err(Refusal::new(class, "no")))));
        assert_eq!(
            a,
            Control::Error {
                req: 1,
                class,
                message: "no".into()
            }
        );
        assert_eq!(c, close);
        assert!(matches!(s.control_state(S), ControlState::Ready { .. }));
        assert!(s.disk(1).is_none(), "a refused open opens nothing");
    }
}

#[test]
fn store_outcomes_that_match_no_request_end_the_stream_as_internal_errors() {
    let mut s = ready();
    let (class, _, close) = refusal(s.handle_done(S, Done::Root(Ok([0; 32]))));
    assert_eq!((class, close), (ErrorClass::Internal, true));
    let mut s = ready();
    let _ = effect(s.handle_message(S, open_msg("vm1", 512)));
    let (class, msg, close) = refusal(s.handle_done(S, Done::Root(Ok([0; 32]))));
    assert_eq!((class, close), (ErrorClass::Internal, true));
    assert!(msg.contains("different request"), "{msg}");
}

#[test]
fn capacity_jobs_and_roots_pass_through_with_their_request_ids() {
    let mut s = with_disk(1 << 20, false);
    let _ = effect(s.handle_message(
        S,
        Control::QueryCapacity {
            req: 7,
            vm: "vm1".into(),
            needed: 10,
        },
    ));
    let (a, _, r) = answer(s.handle_done(S, Done::Capacity(Ok(None))));
    assert_eq!(
        a,
        Control::Capacity {
            req: 7,
            available: u64::MAX
        }
    );
    assert!(matches!(
        r,
        Some(Report::CapacityChecked {
            available: u64::MAX,
            ..
        })
    ));
    let _ = effect(s.handle_message(S, Control::RootRequest { req: 8, handle: 1 }));
    let (a, ..) = answer(s.handle_done(S, Done::Root(Ok([9; 32]))));
    assert_eq!(
        a,
        Control::Root {
            req: 8,
            handle: 1,
            root: [9; 32]
        }
    );
}

#[test]
fn a_second_handle_on_a_replica_sees_a_new_copy_started_through_another() {
    let mut s = with_disk(1 << 20, false);
    let _ = effect(s.handle_message(S, open_msg("vm1", 1 << 20)));
    let _ = answer(s.handle_done(
        S,
        Done::Opened(Ok(OpenedReplica {
            generation: 5,
            initial_committed: true,
            committed_cycle: 2,
            initial_in_progress: true,
            progress: crate::RangeSet::new(),
        })),
    ));
    assert_eq!(s.disk(1).unwrap().generation, 5);
    let (class, ..) = refusal(s.handle_message(
        S,
        Control::HashRequest {
            req: 3,
            handle: 1,
            level: 0,
            parents: vec![],
            verify: false,
        },
    ));
    assert_eq!(class, ErrorClass::InvalidState);
}

#[test]
fn a_disk_size_no_page_blob_can_hold_is_refused_before_the_store_computes_with_it() {
    use crate::session::receiver::MAX_DISK_SIZE;
    for size in [0, MAX_DISK_SIZE + 1, u64::MAX - (1 << 20) + 1, u64::MAX] {
        let mut s = ready();
        let (class, msg, close) = refusal(s.handle_message(S, open_msg("vm1", size)));
        assert_eq!((class, close), (ErrorClass::InvalidState, false));
        assert!(msg.contains(&format!("disk size {size} bytes")), "{msg}");
    }
    let mut s = ready();
    let e = effect(s.handle_message(S, open_msg("vm1", MAX_DISK_SIZE)));
    assert!(matches!(
        e,
        Effect::OpenReplica {
            virtual_size: MAX_DISK_SIZE,
            ..
        }
    ));
}

#[test]
fn a_group_claim_needs_every_member_authorised_and_passes_its_group_cycle_through() {
    let claim = |vms: &[&str]| Control::ClaimGroup {
        req: 5,
        group: "erp".into(),
        vms: vms.iter().map(|v| v.to_string()).collect(),
        interval_secs: 30,
    };
    // host1 is allowed vm1 only: a group naming vm2 too is refused before any store work.
    let mut s = ready();
    let (class, msg, close) = refusal(s.handle_message(S, claim(&["vm1", "vm2"])));
    assert_eq!((class, close), (ErrorClass::Unauthorized, false));
    assert!(msg.contains("vm2"), "{msg}");
    let (class, msg, _) = refusal(s.handle_message(S, claim(&["vm1", "vm1"])));
    assert_eq!(class, ErrorClass::Protocol);
    assert!(msg.contains("named twice"), "{msg}");
    let mut s = ready();
    match s.handle_message(S, claim(&["vm1"])) {
        crate::session::receiver::ControlStep::Perform(Effect::ClaimGroup {
            group, vms, ..
        }) => assert_eq!((group.as_str(), vms), ("erp", vec!["vm1".to_string()])),
        other => panic!("{other:?}"),
    }
    let (a, _, r) = answer(s.handle_done(S, Done::GroupClaimed(Ok(7))));
    assert_eq!(
        a,
        Control::GroupClaimed {
            req: 5,
            group_cycle: 7
        }
    );
    assert!(matches!(r, Some(Report::GroupClaimed { .. })));
    // Another sender's connection holds it: the driver's refusal is the answer.
    let _ = effect(s.handle_message(S, claim(&["vm1"])));
    let (class, msg, close) = refusal(s.handle_done(
        S,
        Done::GroupClaimed(Err(Refusal::new(ErrorClass::InvalidState, "held by host2"))),
    ));
    assert_eq!((class, close), (ErrorClass::InvalidState, false));
    assert_eq!(msg, "held by host2");
}
