//! The receiver session's control streams state by state, fed directly (no pair): each
//! test names the state, the input and the expected answer. The helpers serve the refusal
//! tests too (`receiver_refusals`).

use crate::session::receiver::{
    ControlState, ControlStep, Done, Effect, OpenedReplica, Report, MAX_RETENTION_SECS,
};
use crate::session::{Authorizations, ReceiverSession};
use crate::wire::{Control, ErrorClass, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION};
use crate::Guid;

pub(super) const S: u64 = 3;
pub(super) const GIB: u64 = 1 << 30;

pub(super) fn session() -> ReceiverSession {
    ReceiverSession::new(
        "host1",
        &Authorizations::parse(&["host1=vm1".into(), "host2=vm2".into()]).unwrap(),
    )
}

pub(super) fn hello() -> Control {
    Control::Hello {
        min_version: MIN_PROTOCOL_VERSION,
        max_version: PROTOCOL_VERSION,
        software: "t".into(),
    }
}

pub(super) fn ready() -> ReceiverSession {
    let mut s = session();
    let _ = s.handle_message(S, hello());
    s
}

/// The answer of a step, which must be an answer.
pub(super) fn answer(step: ControlStep) -> (Control, bool, Option<Report>) {
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
pub(super) fn refusal(step: ControlStep) -> (ErrorClass, String, bool) {
    match answer(step) {
        (Control::Error { class, message, .. }, close, _) => (class, message, close),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

pub(super) fn effect(step: ControlStep) -> Effect {
    match step {
        ControlStep::Perform(e) => e,
        other => panic!("expected an effect, got {other:?}"),
    }
}

pub(super) fn open_msg(vm: &str, size: u64) -> Control {
    Control::OpenDisk {
        req: 1,
        vm: vm.into(),
        disk: "d".into(),
        virtual_size: size,
        source_id: Guid([1; 16]),
        full_copy: false,
        vm_disks: Vec::new(),
    }
}

pub(super) fn opened(initial_in_progress: bool) -> Done {
    Done::Opened(Ok(OpenedReplica {
        generation: 4,
        initial_committed: !initial_in_progress,
        committed_cycle: 2,
        initial_in_progress,
        progress: crate::RangeSet::from_range(0, 512),
    }))
}

/// A ready session with one disk of `size` bytes open as handle 1.
pub(super) fn with_disk(size: u64, initial_in_progress: bool) -> ReceiverSession {
    let mut s = ready();
    let _ = effect(s.handle_message(S, open_msg("vm1", size)));
    let (a, _, _) = answer(s.handle_done(S, opened(initial_in_progress)));
    assert!(matches!(a, Control::DiskOpened { handle: 1, .. }), "{a:?}");
    s
}

/// A session of [`session`] whose stream `stream` negotiated protocol 3 at most (the
/// frames before VM points), with a disk of `size` bytes open as handle 1 in the state
/// `replica` gives: the start of the hostile-frame and batch tests.
pub(super) fn v3_with_replica(stream: u64, size: u64, replica: OpenedReplica) -> ReceiverSession {
    let mut s = session();
    let hello = Control::Hello {
        min_version: MIN_PROTOCOL_VERSION,
        max_version: 3,
        software: String::new(),
    };
    let _ = answer(s.handle_message(stream, hello));
    let _ = effect(s.handle_message(stream, open_msg("vm1", size)));
    let (a, _, _) = answer(s.handle_done(stream, Done::Opened(Ok(replica))));
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
            full_copy: false,
            vm_disks: Vec::new(),
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
            progress: crate::RangeSet::from_range(0, 512),
            more_progress: false,
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
    let (a, ..) = answer(s.handle_done(
        S,
        Done::CycleOpened(Ok(crate::RangeSet::from_range(0, 4096))),
    ));
    assert_eq!(
        a,
        Control::CycleOpened {
            req: 3,
            handle: 1,
            cycle: 1,
            progress: crate::RangeSet::from_range(0, 4096),
            more_progress: false,
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

#[test]
fn a_handle_opened_on_one_control_stream_serves_every_stream_of_the_connection() {
    let mut s = with_disk(1 << 20, true);
    let other = S + 8;
    let _ = answer(s.handle_message(other, hello()));
    let e = effect(s.handle_message(
        other,
        Control::CommitInitial {
            req: 1,
            handle: 1,
            generation: 4,
        },
    ));
    assert_eq!(e, Effect::CommitInitial { handle: 1 });
    // The first stream is still ready and independent of the second's pending request.
    assert_eq!(
        s.control_state(S),
        ControlState::Ready {
            version: PROTOCOL_VERSION
        }
    );
    assert_eq!(
        s.control_state(other),
        ControlState::Busy {
            version: PROTOCOL_VERSION
        }
    );
    // A new session (another connection) knows no handle.
    let mut s2 = ready();
    let (class, ..) = refusal(s2.handle_message(S, Control::RootRequest { req: 1, handle: 1 }));
    assert_eq!(class, ErrorClass::Protocol);
}
