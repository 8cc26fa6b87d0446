//! Issue 16, finding 3: progress of any shape crosses a restart. 100,000 durable ranges are
//! more than one 1 MiB frame can carry (~65,534); from version 4 they travel in pages, and a
//! version-3 peer gets a durable subset that fits one frame.

use super::pair::Pair;
use super::receiver_control::{answer, effect, open_msg, refusal, session, S};
use crate::session::receiver::{ControlState, Done, OpenedReplica};
use crate::session::sender::SessionError;
use crate::wire::{
    decode_frame, Control, ErrorClass, MAX_CONTROL_BODY, PROGRESS_PAGE, V3_PROGRESS_RANGES,
};
use crate::RangeSet;

const ISLANDS: u64 = 100_000;
/// 100,000 islands of 512 bytes, 1 KiB apart (the session checks no sizes against them).
const SIZE: u64 = ISLANDS * 1024;

fn islands(n: u64) -> RangeSet {
    (0..n).map(|i| i * 1024..i * 1024 + 512).collect()
}

fn set(pairs: &[(u64, u64)]) -> RangeSet {
    pairs.iter().map(|&(a, b)| a..b).collect()
}

fn seed(p: &mut Pair, ranges: &RangeSet) {
    let d = p.model.disks.get_mut("vm1/os.vhdx").unwrap();
    d.durable = ranges.clone();
}

#[test]
fn the_old_single_frame_cannot_carry_100k_ranges() {
    // What a version-3 receiver sent before: one DiskOpened with all of the progress.
    let frame = Control::DiskOpened {
        req: 1,
        handle: 1,
        initial_committed: false,
        committed_cycle: 0,
        generation: 1,
        known_empty: true,
        progress: islands(ISLANDS),
        more_progress: false,
    }
    .encode();
    assert!(decode_frame(&frame, MAX_CONTROL_BODY).is_err());
}

#[test]
fn an_initial_copy_with_100k_durable_ranges_resumes_with_all_of_them() {
    let mut p = Pair::new();
    let o = p.open("vm1", SIZE, false).unwrap();
    assert!(o.progress.is_empty());
    let want = islands(ISLANDS);
    seed(&mut p, &want);
    p.reconnect();
    // Every frame crosses `Pair::wire`, which refuses one over the limit.
    let o = p.open("vm1", SIZE, false).unwrap();
    assert!(o.known_empty);
    assert_eq!(o.progress, want);
    assert_eq!(p.pages, (ISLANDS as usize).div_ceil(PROGRESS_PAGE) - 1);
    assert!(p.kinds.contains(&19) && p.kinds.contains(&20));
    // The pages were served from the open's snapshot, which is dropped after the last.
    let req = p.tx.next_req();
    match p.call_one(Control::ProgressRequest {
        req,
        handle: o.handle,
        after: 0,
    }) {
        Err(SessionError::Refused { class, .. }) => assert_eq!(class, ErrorClass::InvalidState),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_delta_cycle_with_100k_durable_ranges_resumes_with_all_of_them() {
    let mut p = Pair::new();
    let o = p.open("vm1", SIZE, false).unwrap();
    p.commit_initial(&o).unwrap();
    assert!(p.begin_cycle(&o, 1).unwrap().is_empty());
    let want: RangeSet = islands(ISLANDS + 7).iter().skip(7).collect();
    seed(&mut p, &want);
    p.reconnect();
    let o = p.open("vm1", SIZE, false).unwrap();
    assert!(o.initial_committed);
    assert_eq!(p.begin_cycle(&o, 1).unwrap(), want);
}

#[test]
fn a_version_3_peer_gets_the_largest_durable_ranges_that_fit_one_frame() {
    let mut s = session();
    let hello = Control::Hello {
        min_version: 1,
        max_version: 3,
        software: "old".into(),
    };
    assert!(matches!(
        answer(s.handle_message(S, hello)).0,
        Control::HelloAck { version: 3 }
    ));
    let _ = effect(s.handle_message(S, open_msg("vm1", SIZE)));
    // Every tenth island is four times larger: those are kept first.
    let all: RangeSet = islands(ISLANDS)
        .iter()
        .enumerate()
        .map(|(i, r)| {
            if i % 10 == 0 {
                r.start..r.start + 1000
            } else {
                r
            }
        })
        .collect();
    let done = Done::Opened(Ok(OpenedReplica {
        generation: 1,
        initial_committed: false,
        committed_cycle: 0,
        initial_in_progress: true,
        progress: all.clone(),
    }));
    let (a, close, _) = answer(s.handle_done(S, done));
    assert!(!close);
    let Control::DiskOpened {
        progress,
        more_progress,
        ..
    } = &a
    else {
        panic!("{a:?}")
    };
    assert!(!more_progress);
    assert_eq!(progress.range_count(), V3_PROGRESS_RANGES);
    assert!(
        progress
            .iter()
            .all(|r| all.page(r.start, 1).0.iter().next() == Some(r.clone())),
        "whole ranges of the durable set"
    );
    assert_eq!(
        progress.iter().filter(|r| r.end - r.start == 1000).count(),
        10_000
    );
    // The answer fits one frame: a version-3 sender decodes it.
    let frame = a.encode();
    let (kind, body, _) = decode_frame(&frame, MAX_CONTROL_BODY).unwrap().unwrap();
    assert_eq!(Control::decode(kind, body).unwrap(), a);
    // Pages are a version-4 request: on a version-3 stream it is a protocol violation.
    let (class, _, close) = refusal(s.handle_message(
        S,
        Control::ProgressRequest {
            req: 2,
            handle: 1,
            after: 0,
        },
    ));
    assert_eq!((class, close), (ErrorClass::Protocol, true));
}

#[test]
fn progress_requests_are_checked() {
    let mut s = super::receiver_control::ready();
    // Unknown handle: fatal, as for every handle-naming request.
    let (class, _, close) = refusal(s.handle_message(
        S,
        Control::ProgressRequest {
            req: 1,
            handle: 9,
            after: 0,
        },
    ));
    assert_eq!((class, close), (ErrorClass::Protocol, true));
    assert_eq!(s.control_state(S), ControlState::Closed);

    let mut s = super::receiver_control::with_disk(SIZE, true);
    // Nothing pending (the open's progress fit one page): refused, the stream goes on.
    let (class, _, close) = refusal(s.handle_message(
        S,
        Control::ProgressRequest {
            req: 2,
            handle: 1,
            after: 0,
        },
    ));
    assert_eq!((class, close), (ErrorClass::InvalidState, false));
    assert!(matches!(s.control_state(S), ControlState::Ready { .. }));
}

#[test]
fn a_page_past_the_end_is_empty_and_final() {
    let mut p = Pair::new();
    p.open("vm1", SIZE, false).unwrap();
    seed(&mut p, &islands(ISLANDS));
    p.reconnect();
    let req = p.tx.next_req();
    let first = p
        .call_one(Control::OpenDisk {
            req,
            vm: "vm1".into(),
            disk: "os.vhdx".into(),
            virtual_size: SIZE,
            source_id: crate::Guid([7; 16]),
            full_copy: false,
            vm_disks: Vec::new(),
        })
        .unwrap();
    let Control::DiskOpened {
        handle,
        more_progress: true,
        ..
    } = first
    else {
        panic!("{first:?}")
    };
    let req = p.tx.next_req();
    let page = p
        .call_one(Control::ProgressRequest {
            req,
            handle,
            after: u64::MAX,
        })
        .unwrap();
    assert!(matches!(
        page,
        Control::ProgressPage { ref progress, more: false, .. } if progress.is_empty()
    ));
}

#[test]
fn the_sender_refuses_pages_out_of_order_or_empty_ones_that_announce_more() {
    let opened = |more| Control::DiskOpened {
        req: 1,
        handle: 1,
        initial_committed: false,
        committed_cycle: 0,
        generation: 1,
        known_empty: true,
        progress: set(&[(0, 512), (4096, 8192)]),
        more_progress: more,
    };
    let page = |progress: &[(u64, u64)], more| Control::ProgressPage {
        req: 2,
        handle: 1,
        progress: set(progress),
        more,
    };
    let mut tx = crate::session::SenderControl::new();
    let mut a = opened(true);
    assert!(matches!(
        tx.add_page(&mut a, page(&[(4096, 9000)], false)),
        Err(SessionError::Protocol(_))
    ));
    let mut a = opened(true);
    assert!(matches!(
        tx.add_page(&mut a, page(&[], true)),
        Err(SessionError::Protocol(_))
    ));
    // A page may start exactly where the last range ended (the old wire allowed touching
    // ranges): accepted, and merged with it.
    let mut a = opened(true);
    tx.add_page(&mut a, page(&[(8192, 9000)], false)).unwrap();
    assert_eq!(a, {
        let mut w = opened(false);
        if let Control::DiskOpened { progress, .. } = &mut w {
            progress.insert(8192, 9000);
        }
        w
    });
    assert!(tx.next_page(&a).is_none());
}
