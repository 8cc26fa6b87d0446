//! The receiver's data streams: a batch's start, each extent's checks (made before any
//! hashing or allocation), the write outcomes and the result.

use bytes::Bytes;

use super::receiver_control::v3_with_replica;
use crate::session::receiver::{BatchEnd, BatchReport, BatchStep, WriteOutcome};
use crate::session::{BatchReceiver, ReceiverSession, Refusal};
use crate::wire::{
    BatchStart, Codec, Control, ErrorClass, ExtentHeader, ExtentOp, PackedMap, Rejection,
    K_BATCH_START, K_EXTENT, PACK_BLOCK,
};

const SIZE: u64 = 1 << 20;

/// A session with disk 1 (generation 4, `SIZE` bytes) open.
fn session() -> ReceiverSession {
    v3_with_replica(
        0,
        SIZE,
        crate::session::receiver::OpenedReplica {
            generation: 4,
            initial_committed: false,
            committed_cycle: 0,
            initial_in_progress: true,
            progress: crate::RangeSet::new(),
        },
    )
}

fn start_body(handle: u32, generation: u64) -> Vec<u8> {
    let f = BatchStart { handle, generation }.encode();
    assert_eq!(f[0], K_BATCH_START);
    f[5..].to_vec()
}

fn batch() -> BatchReceiver {
    session().start_batch(&start_body(1, 4)).unwrap()
}

/// An extent frame's body.
fn body(offset: u64, length: u32, op: ExtentOp, codec: Codec, payload: &[u8]) -> Bytes {
    let h = ExtentHeader {
        offset,
        length,
        op,
        codec,
        hash: [1; 32],
        payload_len: payload.len() as u32,
    };
    let mut f = h.encode_frame_prefix();
    f.extend_from_slice(payload);
    Bytes::from(f).slice(5..)
}

fn ended(step: BatchStep) -> BatchEnd {
    match step {
        BatchStep::End(e) => e,
        other => panic!("expected the end, got {other:?}"),
    }
}

fn error_of(e: &BatchEnd) -> (ErrorClass, String) {
    assert!(e.stop, "a failed batch stops its stream");
    e.result.error.clone().expect("an error")
}

#[test]
fn a_batch_names_an_open_disk_in_its_current_generation() {
    let mut s = session();
    let b = s.start_batch(&start_body(1, 4)).unwrap();
    assert_eq!((b.handle(), b.generation()), (1, 4));
    let e = s.start_batch(&start_body(1, 3)).unwrap_err();
    let (class, msg) = error_of(&e);
    assert_eq!(class, ErrorClass::InvalidState);
    assert_eq!(msg, "batch for copy generation 3, but generation 4 is open");
    let (class, msg) = error_of(&s.start_batch(&start_body(2, 4)).unwrap_err());
    assert_eq!(
        (class, msg.as_str()),
        (ErrorClass::Protocol, "unknown disk handle 2")
    );
    let (class, msg) = error_of(&s.start_batch(&[1, 2, 3]).unwrap_err());
    assert_eq!(class, ErrorClass::Protocol);
    assert!(msg.contains("malformed batch start"), "{msg}");
}

#[test]
fn an_accepted_extent_goes_to_the_driver_with_its_payload_unmodified_then_counts_as_written() {
    let mut b = batch();
    let data = vec![5u8; 4096];
    let step = b.handle_frame(
        K_EXTENT,
        body(8192, 4096, ExtentOp::Write, Codec::Raw, &data),
    );
    let BatchStep::Apply(w) = step else {
        panic!("{step:?}")
    };
    assert_eq!((w.header.offset, w.header.length), (8192, 4096));
    assert_eq!(&w.payload.to_bytes()[..], &data[..]);
    assert!(w.packed.is_none());
    let step = b.handle_write_done(WriteOutcome::Written { bytes: 4096 });
    assert_eq!(
        step,
        BatchStep::Continue(Some(BatchReport::Written {
            offset: 8192,
            bytes: 4096
        }))
    );
    let end = b.finish();
    assert!(!end.stop);
    assert_eq!(
        (
            end.result.written,
            end.result.rejected.len(),
            end.result.error
        ),
        (1, 0, None)
    );
}

#[test]
fn a_refused_extent_is_listed_for_a_resend_and_the_batch_goes_on() {
    let mut b = batch();
    let _ = b.handle_frame(
        K_EXTENT,
        body(0, 512, ExtentOp::Write, Codec::Raw, &[1; 512]),
    );
    let step = b.handle_write_done(WriteOutcome::Rejected(Rejection::HashMismatch));
    assert_eq!(
        step,
        BatchStep::Continue(Some(BatchReport::Rejected {
            offset: 0,
            length: 512,
            why: Rejection::HashMismatch
        }))
    );
    let _ = b.handle_frame(K_EXTENT, body(512, 512, ExtentOp::Clear, Codec::Raw, &[]));
    let _ = b.handle_write_done(WriteOutcome::Written { bytes: 512 });
    let end = b.finish();
    assert_eq!(end.result.written, 1);
    assert_eq!(end.result.rejected, vec![(0, 512, Rejection::HashMismatch)]);
    assert!(!end.stop);
}

#[test]
fn extents_outside_the_disk_end_the_batch_before_any_write_or_hash() {
    for (offset, length, op) in [
        (SIZE, 512, ExtentOp::Write),
        (SIZE - 512, 1024, ExtentOp::Write),
        (SIZE, 1 << 30, ExtentOp::Clear),
        (0, (SIZE + 512) as u32, ExtentOp::Clear),
    ] {
        let mut b = batch();
        let payload = if op == ExtentOp::Clear {
            vec![]
        } else {
            vec![0; length as usize]
        };
        let e = ended(b.handle_frame(K_EXTENT, body(offset, length, op, Codec::Raw, &payload)));
        let (class, msg) = error_of(&e);
        assert_eq!(class, ErrorClass::Protocol);
        assert!(msg.contains("outside the disk of 1048576 bytes"), "{msg}");
        assert_eq!(e.result.written, 0);
    }
}

#[test]
fn a_frame_that_is_not_an_extent_or_does_not_decode_ends_the_batch_as_a_protocol_violation() {
    let mut b = batch();
    let (class, msg) = error_of(&ended(
        b.handle_frame(K_BATCH_START, Bytes::from_static(&[0; 12])),
    ));
    assert_eq!(class, ErrorClass::Protocol);
    assert_eq!(msg, format!("frame type {K_BATCH_START} inside a batch"));
    let mut b = batch();
    // Unaligned offset, then a payload length that disagrees with the frame.
    let (class, msg) = error_of(&ended(b.handle_frame(
        K_EXTENT,
        body(100, 512, ExtentOp::Write, Codec::Raw, &[0; 512]),
    )));
    assert_eq!(class, ErrorClass::Protocol);
    assert!(msg.contains("malformed frame from peer"), "{msg}");
    let mut b = batch();
    let good = body(0, 512, ExtentOp::Write, Codec::Raw, &[0; 512]);
    let (class, _) = error_of(&ended(b.handle_frame(K_EXTENT, good.slice(..100))));
    assert_eq!(class, ErrorClass::Protocol);
    let mut b = batch();
    let (class, _) = error_of(&ended(b.handle_frame(K_EXTENT, Bytes::new())));
    assert_eq!(class, ErrorClass::Protocol);
}

#[test]
fn a_packed_write_with_a_bad_map_is_refused_for_a_resend_without_reaching_the_driver() {
    let mut b = batch();
    let len = 3 * PACK_BLOCK;
    // Bit 3 lies past the extent's three blocks.
    let step = b.handle_frame(
        K_EXTENT,
        body(0, len, ExtentOp::WritePacked, Codec::Zstd, &[0b1001, 0x28]),
    );
    assert_eq!(
        step,
        BatchStep::Continue(Some(BatchReport::Rejected {
            offset: 0,
            length: len,
            why: Rejection::BadPayload
        }))
    );
    // A good map: the driver gets the map and the frame after it.
    let step = b.handle_frame(
        K_EXTENT,
        body(
            0,
            len,
            ExtentOp::WritePacked,
            Codec::Zstd,
            &[0b101, 0x28, 0xb5],
        ),
    );
    let BatchStep::Apply(w) = step else {
        panic!("{step:?}")
    };
    assert_eq!(w.packed, Some(PackedMap::new(len, |i| i != 1)));
    assert_eq!(&w.payload.to_bytes()[..], &[0x28, 0xb5]);
}

#[test]
fn a_store_failure_ends_the_batch_and_the_first_error_is_the_one_told() {
    let mut b = batch();
    let _ = b.handle_frame(K_EXTENT, body(0, 512, ExtentOp::Clear, Codec::Raw, &[]));
    let _ = b.handle_write_done(WriteOutcome::Written { bytes: 512 });
    let _ = b.handle_frame(K_EXTENT, body(512, 512, ExtentOp::Clear, Codec::Raw, &[]));
    let e = ended(b.handle_write_done(WriteOutcome::Failed(Refusal::new(
        ErrorClass::TargetFull,
        "full",
    ))));
    assert_eq!(e.result.written, 1);
    assert_eq!(error_of(&e), (ErrorClass::TargetFull, "full".to_string()));
    // Anything after the end repeats the end.
    let again = ended(b.handle_frame(K_EXTENT, body(0, 512, ExtentOp::Clear, Codec::Raw, &[])));
    assert_eq!(again, e);
    assert_eq!(b.fail_stream(Refusal::new(ErrorClass::Internal, "lost")), e);
}

#[test]
fn driving_a_batch_out_of_order_is_an_internal_error() {
    let mut b = batch();
    let (class, _) = error_of(&ended(
        b.handle_write_done(WriteOutcome::Written { bytes: 1 }),
    ));
    assert_eq!(class, ErrorClass::Internal);
    let mut b = batch();
    let _ = b.handle_frame(K_EXTENT, body(0, 512, ExtentOp::Clear, Codec::Raw, &[]));
    let (class, msg) = error_of(&ended(
        b.handle_frame(K_EXTENT, body(0, 512, ExtentOp::Clear, Codec::Raw, &[])),
    ));
    assert_eq!(class, ErrorClass::Internal);
    assert!(msg.contains("being written"), "{msg}");
    let mut b = batch();
    let _ = b.handle_frame(K_EXTENT, body(0, 512, ExtentOp::Clear, Codec::Raw, &[]));
    let (class, _) = error_of(&b.finish());
    assert_eq!(class, ErrorClass::Internal);
}

#[test]
fn a_broken_stream_ends_the_batch_with_the_drivers_class() {
    let mut b = batch();
    let e = b.fail_stream(Refusal::new(ErrorClass::Protocol, "frame of 9 GiB"));
    assert_eq!(
        error_of(&e),
        (ErrorClass::Protocol, "frame of 9 GiB".to_string())
    );
}

#[test]
fn a_commit_waits_until_every_batch_of_its_disk_has_ended() {
    let mut s = session();
    let _b1 = s.start_batch(&start_body(1, 4)).unwrap();
    let _b2 = s.start_batch(&start_body(1, 4)).unwrap();
    // A refused batch does not count.
    let _ = s.start_batch(&start_body(1, 3)).unwrap_err();
    assert_eq!(s.batches_running(1), 2);
    let commit = Control::CommitInitial {
        req: 2,
        handle: 1,
        generation: 4,
    };
    let step = s.handle_message(0, commit.clone());
    let crate::session::receiver::ControlStep::Answer { answer, close, .. } = step else {
        panic!("{step:?}")
    };
    let Control::Error { class, message, .. } = answer else {
        panic!("{answer:?}")
    };
    assert_eq!((class, close), (ErrorClass::TargetBusy, false));
    assert!(message.contains("2 batches of disk handle 1"), "{message}");
    s.batch_ended(1);
    s.batch_ended(1);
    s.batch_ended(1); // one too many is harmless
    assert_eq!(s.batches_running(1), 0);
    assert!(matches!(
        s.handle_message(0, commit),
        crate::session::receiver::ControlStep::Perform(
            crate::session::receiver::Effect::CommitInitial { handle: 1 }
        )
    ));
}
