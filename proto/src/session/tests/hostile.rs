//! Hostile peers: arbitrary frames fed to the receiver's sessions never panic, and the
//! sessions keep their promises (a fatal refusal closes the stream; a failed batch stops
//! its stream; nothing reaches the store outside the disk).

use bytes::Bytes;
use proptest::prelude::*;

use super::receiver_control::v3_with_replica;
use crate::session::receiver::{
    BatchStep, ControlState, ControlStep, Done, OpenedReplica, WriteOutcome,
};
use crate::session::{ReceiverSession, SenderControl};
use crate::wire::{Control, K_EXTENT};

const SIZE: u64 = 1 << 20;

/// A session with a committed disk of `SIZE` bytes open (generation 1).
fn with_disk() -> ReceiverSession {
    v3_with_replica(
        0,
        SIZE,
        OpenedReplica {
            generation: 1,
            initial_committed: true,
            committed_cycle: 0,
            initial_in_progress: false,
            progress: crate::RangeSet::new(),
        },
    )
}

proptest! {
    #[test]
    fn arbitrary_control_frames_never_panic_and_a_fatal_answer_closes(
        frames in proptest::collection::vec((0u8..24, proptest::collection::vec(any::<u8>(), 0..64)), 1..12)
    ) {
        let mut s = with_disk();
        for (kind, body) in frames {
            let step = s.handle_control(0, kind, &body);
            match step {
                ControlStep::Answer { close, .. } => {
                    if close {
                        prop_assert_eq!(s.control_state(0), ControlState::Closed);
                    }
                }
                ControlStep::Perform(_) => {
                    // Store work fails: the session answers and stays usable.
                    let done = Done::Root(Err(crate::session::Refusal::new(crate::wire::ErrorClass::TargetBusy, "x")));
                    let _ = s.handle_done(0, done);
                }
            }
        }
    }

    #[test]
    fn arbitrary_extent_frames_never_reach_the_store_outside_the_disk(
        frames in proptest::collection::vec((any::<bool>(), proptest::collection::vec(any::<u8>(), 0..80)), 1..12),
        offsets in proptest::collection::vec(any::<u64>(), 12),
    ) {
        let mut s = with_disk();
        let mut b = s.start_batch(&crate::wire::BatchStart { handle: 1, generation: 1 }.encode()[5..]).unwrap();
        for (i, (extent, mut body)) in frames.into_iter().enumerate() {
            if body.len() >= 8 {
                body[..8].copy_from_slice(&(offsets[i] & !511).to_le_bytes());
            }
            let kind = if extent { K_EXTENT } else { body.first().copied().unwrap_or(0) };
            match b.handle_frame(kind, Bytes::from(body)) {
                BatchStep::Apply(w) => {
                    prop_assert!(w.header.offset + w.header.length as u64 <= SIZE);
                    let _ = b.handle_write_done(WriteOutcome::Written { bytes: 0 });
                }
                BatchStep::Continue(_) => {}
                BatchStep::End(e) => prop_assert_eq!(e.stop, e.result.error.is_some()),
            }
        }
        let end = b.finish();
        prop_assert_eq!(end.stop, end.result.error.is_some());
    }

    #[test]
    fn arbitrary_answers_never_panic_the_sender(
        frames in proptest::collection::vec((0u8..24, proptest::collection::vec(any::<u8>(), 0..64)), 1..8)
    ) {
        let mut c = SenderControl::new();
        let _ = c.hello("t");
        for (kind, body) in frames {
            let _ = c.handle_frame(kind, &body);
            let req = c.next_req();
            let _ = c.request(&Control::RootRequest { req, handle: 1 });
        }
    }
}
