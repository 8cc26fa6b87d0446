//! The receiver session's control streams, state by state and refusal by refusal, fed
//! directly (no pair): each test names the state, the input and the expected answer.

use crate::session::receiver::{
    ControlState, ControlStep, Done, Effect, OpenedReplica, Report, MAX_JOB_BYTES,
    MAX_RETENTION_SECS,
};
use crate::session::{Authorizations, ReceiverSession, Refusal};
use crate::wire::{
    Control, ErrorClass, JobKind, JobReport, JobState, JobStep, MAX_HASHES, MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
};
use crate::Guid;

const S: u64 = 3;
const GIB: u64 = 1 << 30;

fn session() -> ReceiverSession {
    ReceiverSession::new(
        "host1",
        &Authorizations::parse(&["host1=vm1".into(), "host2=vm2".into()]).unwrap(),
    )
}

fn hello() -> Control {
    Control::Hello {
        min_version: MIN_PROTOCOL_VERSION,
        max_version: PROTOCOL_VERSION,
        software: "t".into(),
    }
}

fn ready() -> ReceiverSession {
    let mut s = session();
    let _ = s.handle_message(S, hello());
    s
}

/// The answer of a step, which must be an answer.
fn answer(step: ControlStep) -> (Control, bool, Option<Report>) {
    match step {
        ControlStep::Answer {
            answer,
            close,
            report,
        } => (answer, close, report),
        other => panic!("expected an answer, got {other:?}"),
    }
}

/// The refusal of a step: its class and message, and whether it closed the stream.
fn refusal(step: ControlStep) -> (ErrorClass, String, bool) {
    match answer(step) {
        (Control::Error { class, message, .. }, close, _) => (class, message, close),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn effect(step: ControlStep) -> Effect {
    match step {
        ControlStep::Perform(e) => e,
        other => panic!("expected an effect, got {other:?}"),
    }
}

fn open_msg(vm: &str, size: u64) -> Control {
    Control::OpenDisk {
        req: 1,
        vm: vm.into(),
        disk: "d".into(),
        virtual_size: size,
        source_id: Guid([1; 16]),
        full_copy: false,
    }
}

fn opened(initial_in_progress: bool) -> Done {
    Done::Opened(Ok(OpenedReplica {
        generation: 4,
        initial_committed: !initial_in_progress,
        committed_cycle: 2,
        initial_in_progress,
        progress: vec![(0, 512)],
    }))
}

/// A ready session with one disk of `size` bytes open as handle 1.
fn with_disk(size: u64, initial_in_progress: bool) -> ReceiverSession {
    let mut s = ready();
    let _ = effect(s.handle_message(S, open_msg("vm1", size)));
    let (a, _, _) = answer(s.handle_done(S, opened(initial_in_progress)));
    assert!(matches!(a, Control::DiskOpened { handle: 1, .. }), "{a:?}");
    s
}

// ---- States and their transitions.

#[test]
fn a_new_stream_awaits_hello_and_hello_makes_it_ready_with_the_highest_common_version() {
    let mut s = session();
    assert_eq!(s.control_state(S), ControlState::AwaitingHello);
    let (a, close, report) = answer(s.handle_message(
        S,
        Control::Hello {
            min_version: 1,
            max_version: 99,
            software: "vdrep 9".into(),
        },
    ));
    assert_eq!(
        a,
        Control::HelloAck {
            version: PROTOCOL_VERSION
        }
    );
    assert!(!close);
    assert_eq!(
        report,
        Some(Report::Hello {
            software: "vdrep 9".into(),
            version: PROTOCOL_VERSION
        })
    );
    assert_eq!(
        s.control_state(S),
        ControlState::Ready {
            version: PROTOCOL_VERSION
        }
    );
    // An old sender gets its own version.
    let (a, ..) = answer(s.handle_message(
        S + 1,
        Control::Hello {
            min_version: 1,
            max_version: 2,
            software: "old".into(),
        },
    ));
    assert_eq!(a, Control::HelloAck { version: 2 });
}

#[test]
fn a_request_makes_the_stream_busy_until_its_store_work_is_done() {
    let mut s = ready();
    let e = effect(s.handle_message(S, open_msg("vm1", 1 << 20)));
    assert_eq!(
        e,
        Effect::OpenReplica {
            vm: "vm1".into(),
            disk: "d".into(),
            virtual_size: 1 << 20,
            source_id: Guid([1; 16]),
            full_copy: false
        }
    );
    assert_eq!(
        s.control_state(S),
        ControlState::Busy {
            version: PROTOCOL_VERSION
        }
    );
    let (a, close, report) = answer(s.handle_done(S, opened(true)));
    assert_eq!(
        a,
        Control::DiskOpened {
            req: 1,
            handle: 1,
            initial_committed: false,
            committed_cycle: 2,
            generation: 4,
            known_empty: true,
            progress: vec![(0, 512)],
        }
    );
    assert!(!close);
    assert!(matches!(
        report,
        Some(Report::DiskOpened {
            handle: 1,
            resumed_bytes: 512,
            ..
        })
    ));
    assert_eq!(
        s.control_state(S),
        ControlState::Ready {
            version: PROTOCOL_VERSION
        }
    );
    assert_eq!(s.disk(1).unwrap().generation, 4);
    // Handles are per connection and never reused.
    let _ = effect(s.handle_message(S, open_msg("vm1", 1 << 20)));
    let (a, ..) = answer(s.handle_done(S, opened(true)));
    assert!(matches!(a, Control::DiskOpened { handle: 2, .. }));
}

#[test]
fn a_closed_stream_refuses_everything_and_streams_are_independent() {
    let mut s = session();
    let (class, _, close) = refusal(s.handle_message(S, open_msg("vm1", 512)));
    assert_eq!((class, close), (ErrorClass::Protocol, true));
    assert_eq!(s.control_state(S), ControlState::Closed);
    let (class, msg, close) = refusal(s.handle_message(S, hello()));
    assert_eq!((class, close), (ErrorClass::Protocol, true));
    assert!(msg.contains("closed"), "{msg}");
    // Another stream of the same connection is unaffected.
    let (a, ..) = answer(s.handle_message(S + 4, hello()));
    assert!(matches!(a, Control::HelloAck { .. }));
    s.stream_ended(S);
    assert_eq!(s.control_state(S), ControlState::AwaitingHello);
}

#[test]
fn a_commit_and_a_cycle_move_the_disk_through_its_states() {
    let mut s = with_disk(1 << 20, true);
    assert!(s.disk(1).unwrap().initial_in_progress);
    let e = effect(s.handle_message(
        S,
        Control::CommitInitial {
            req: 2,
            handle: 1,
            generation: 4,
        },
    ));
    assert_eq!(e, Effect::CommitInitial { handle: 1 });
    let (a, _, r) = answer(s.handle_done(S, Done::InitialCommitted(Ok(()))));
    assert_eq!(
        a,
        Control::Committed {
            req: 2,
            handle: 1,
            cycle: 0
        }
    );
    assert_eq!(r, Some(Report::InitialCommitted { handle: 1 }));
    assert!(!s.disk(1).unwrap().initial_in_progress);

    let e = effect(s.handle_message(
        S,
        Control::BeginCycle {
            req: 3,
            handle: 1,
            cycle: 1,
        },
    ));
    assert_eq!(
        e,
        Effect::BeginCycle {
            handle: 1,
            cycle: 1
        }
    );
    let (a, ..) = answer(s.handle_done(S, Done::CycleOpened(Ok(vec![(0, 4096)]))));
    assert_eq!(
        a,
        Control::CycleOpened {
            req: 3,
            handle: 1,
            cycle: 1,
            progress: vec![(0, 4096)]
        }
    );
    assert_eq!(s.disk(1).unwrap().open_cycle, Some(1));
    let e = effect(s.handle_message(
        S,
        Control::CommitCycle {
            req: 4,
            handle: 1,
            cycle: 1,
            bytes: 9,
            digest: [3; 32],
            retention_secs: u32::MAX,
        },
    ));
    assert_eq!(
        e,
        Effect::CommitCycle {
            handle: 1,
            cycle: 1,
            bytes: 9,
            digest: [3; 32],
            retention_secs: MAX_RETENTION_SECS as u64
        },
        "retention is clamped to a day"
    );
    let (a, _, r) = answer(s.handle_done(S, Done::CycleCommitted(Ok(vec![0]))));
    assert_eq!(
        a,
        Control::Committed {
            req: 4,
            handle: 1,
            cycle: 1
        }
    );
    assert_eq!(
        r,
        Some(Report::CycleCommitted {
            handle: 1,
            cycle: 1,
            bytes: 9,
            pruned: 1
        })
    );
    let d = s.disk(1).unwrap();
    assert_eq!((d.open_cycle, d.committed_cycle), (None, 1));
}

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
    let job = |vm: &str| JobReport {
        id: "j".into(),
        kind: JobKind::TestFailover,
        vm: vm.into(),
        state: JobState::Running,
        start_ms: 0,
        end_ms: 0,
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
    let big = JobReport {
        id: "j".into(),
        kind: JobKind::EnableProtection,
        vm: "vm1".into(),
        state: JobState::Running,
        start_ms: 0,
        end_ms: 0,
        steps: (0..20)
            .map(|_| JobStep {
                name: "n".into(),
                state: JobState::Running,
                start_ms: 0,
                end_ms: 0,
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
            progress: vec![],
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
