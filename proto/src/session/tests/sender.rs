//! The sender's control stream: hello, answers matched to their requests, refusals.

use crate::session::sender::{SenderState, SessionError};
use crate::session::{BatchSender, SenderControl};
use crate::wire::{
    BatchResult, Codec, Control, ErrorClass, ExtentHeader, ExtentOp, Rejection,
    MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
};

fn ready() -> SenderControl {
    let mut c = SenderControl::new();
    let _ = c.hello("t").unwrap();
    c.handle_answer(Control::HelloAck { version: 2 }).unwrap();
    c
}

#[test]
fn hello_offers_every_version_and_the_ack_fixes_one() {
    let mut c = SenderControl::new();
    assert_eq!(c.state(), SenderState::Start);
    let h = c.hello("vdrep 1").unwrap();
    assert_eq!(
        h,
        Control::Hello {
            min_version: MIN_PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
            software: "vdrep 1".into()
        }
    );
    assert_eq!(c.state(), SenderState::AwaitingHelloAck);
    assert!(matches!(c.hello("again"), Err(SessionError::Misuse(_))));
    c.handle_answer(Control::HelloAck { version: 2 }).unwrap();
    assert_eq!((c.state(), c.version()), (SenderState::Ready, Some(2)));
}

#[test]
fn a_version_the_sender_does_not_speak_or_a_refused_hello_fails_the_stream() {
    let mut c = SenderControl::new();
    let _ = c.hello("t").unwrap();
    let e = c
        .handle_answer(Control::HelloAck {
            version: PROTOCOL_VERSION + 1,
        })
        .unwrap_err();
    assert!(matches!(e, SessionError::Protocol(_)));
    assert_eq!(c.state(), SenderState::Failed);
    let mut c = SenderControl::new();
    let _ = c.hello("t").unwrap();
    let e = c
        .handle_answer(Control::Error {
            req: 0,
            class: ErrorClass::VersionMismatch,
            message: "no".into(),
        })
        .unwrap_err();
    assert_eq!(
        e,
        SessionError::Refused {
            class: ErrorClass::VersionMismatch,
            message: "no".into()
        }
    );
    assert_eq!(c.state(), SenderState::Failed);
}

#[test]
fn an_answer_must_be_the_expected_kind_for_the_pending_request_and_echo_it() {
    let begin = Control::BeginCycle {
        req: 5,
        handle: 2,
        cycle: 7,
    };
    for (answer, ok) in [
        (
            Control::CycleOpened {
                req: 5,
                handle: 2,
                cycle: 7,
                progress: crate::RangeSet::new(),
                more_progress: false,
            },
            true,
        ),
        (
            Control::CycleOpened {
                req: 6,
                handle: 2,
                cycle: 7,
                progress: crate::RangeSet::new(),
                more_progress: false,
            },
            false,
        ),
        (
            Control::CycleOpened {
                req: 5,
                handle: 3,
                cycle: 7,
                progress: crate::RangeSet::new(),
                more_progress: false,
            },
            false,
        ),
        (
            Control::CycleOpened {
                req: 5,
                handle: 2,
                cycle: 8,
                progress: crate::RangeSet::new(),
                more_progress: false,
            },
            false,
        ),
        (
            Control::Committed {
                req: 5,
                handle: 2,
                cycle: 7,
            },
            false,
        ),
    ] {
        let mut c = ready();
        c.request(&begin).unwrap();
        assert_eq!(c.state(), SenderState::Awaiting { req: 5 });
        let r = c.handle_answer(answer.clone());
        assert_eq!(r.is_ok(), ok, "{answer:?}");
        assert_eq!(
            c.state(),
            if ok {
                SenderState::Ready
            } else {
                SenderState::Failed
            }
        );
    }
}

#[test]
fn a_refusal_of_the_request_leaves_the_stream_usable_unless_it_is_fatal() {
    let mut c = ready();
    let req = c.next_req();
    c.request(&Control::RootRequest { req, handle: 1 }).unwrap();
    let e = c
        .handle_answer(Control::Error {
            req,
            class: ErrorClass::TargetBusy,
            message: "busy".into(),
        })
        .unwrap_err();
    assert_eq!(e.to_string(), "target_busy: busy");
    assert_eq!(c.state(), SenderState::Ready);
    let req = c.next_req();
    c.request(&Control::RootRequest { req, handle: 1 }).unwrap();
    let _ = c
        .handle_answer(Control::Error {
            req: 0,
            class: ErrorClass::Protocol,
            message: "x".into(),
        })
        .unwrap_err();
    assert_eq!(c.state(), SenderState::Failed);
    // An error naming another request is itself a violation.
    let mut c = ready();
    c.request(&Control::RootRequest { req: 3, handle: 1 })
        .unwrap();
    let e = c
        .handle_answer(Control::Error {
            req: 4,
            class: ErrorClass::Internal,
            message: "x".into(),
        })
        .unwrap_err();
    assert!(matches!(e, SessionError::Protocol(_)));
}

#[test]
fn requests_out_of_turn_and_answers_nobody_asked_for_are_refused() {
    let mut c = SenderControl::new();
    assert!(matches!(
        c.request(&Control::RootRequest { req: 1, handle: 1 }),
        Err(SessionError::Misuse(_))
    ));
    let mut c = ready();
    assert!(matches!(
        c.request(&Control::HelloAck { version: 1 }),
        Err(SessionError::Misuse(_))
    ));
    c.request(&Control::RootRequest { req: 1, handle: 1 })
        .unwrap();
    assert!(matches!(
        c.request(&Control::RootRequest { req: 2, handle: 1 }),
        Err(SessionError::Misuse(_))
    ));
    let mut c = ready();
    assert!(matches!(
        c.handle_answer(Control::JobRecorded { req: 1 }),
        Err(SessionError::Protocol(_))
    ));
    let mut c = ready();
    c.request(&Control::RootRequest { req: 1, handle: 1 })
        .unwrap();
    assert!(matches!(
        c.handle_frame(14, &[1, 2]),
        Err(SessionError::Protocol(_))
    ));
}

#[test]
fn a_batch_acknowledges_what_was_not_refused_and_fills_up_by_source_bytes() {
    let mut b = BatchSender::new(1, 2);
    assert_eq!(b.start_frame()[0], crate::wire::K_BATCH_START);
    let h = |offset| ExtentHeader {
        offset,
        length: 512,
        op: ExtentOp::Write,
        codec: Codec::Raw,
        hash: [0; 32],
        payload_len: 512,
    };
    let payload = bytes::Bytes::from(vec![0u8; 512]);
    let f = b.extent(0, 512, &h(0), payload.clone());
    assert_eq!(f.prefix, h(0).encode_frame_prefix());
    assert_eq!(
        f.payload.as_ptr(),
        payload.as_ptr(),
        "the payload is not copied"
    );
    let _ = b.extent(512, 512, &h(512), payload);
    b.skip(crate::session::sender::BATCH_SOURCE_BYTES);
    assert!(b.is_full());
    let f = b.finish();
    assert_eq!(f.len(), 2);
    let s = f
        .settle(BatchResult {
            written: 1,
            rejected: vec![(512, 512, Rejection::BadPayload)],
            error: None,
        })
        .unwrap();
    assert_eq!(
        (s.acknowledged_bytes, s.acknowledged_extents, s.resend),
        (512, 1, vec![(512, 512)])
    );
    let f = BatchSender::new(1, 2).finish();
    let e = f
        .settle(BatchResult {
            written: 0,
            rejected: vec![],
            error: Some((ErrorClass::InvalidState, "old".into())),
        })
        .unwrap_err();
    assert_eq!(
        e,
        SessionError::Refused {
            class: ErrorClass::InvalidState,
            message: "old".into()
        }
    );
    assert!(matches!(
        BatchSender::new(1, 2).finish().settle_frame(7, &[]),
        Err(SessionError::Protocol(_))
    ));
}
