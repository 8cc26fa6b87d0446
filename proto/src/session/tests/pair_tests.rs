//! A sender and a receiver session against each other: the protocol end to end, in memory.

use super::model::toy_hash;
use super::pair::{extent, plan, source, Item, Pair};
use crate::session::receiver::{BatchReport, ControlState, Report};
use crate::session::sender::{SenderState, SessionError};
use crate::wire::{
    Codec, Control, ErrorClass, ExtentOp, Job, JobKind, JobState, Rejection, K_BATCH_RESULT,
    K_BATCH_START, K_EXTENT, PROTOCOL_VERSION,
};

const SIZE: u64 = 1 << 20;

#[test]
fn an_initial_copy_then_a_cycle_reach_the_replica_byte_for_byte() {
    let mut p = Pair::new();
    let src = source(SIZE as usize, 1);
    let o = p.open("vm1", SIZE, false).unwrap();
    assert!(o.known_empty && !o.initial_committed && o.progress.is_empty());
    assert_eq!(p.tx.version(), Some(PROTOCOL_VERSION));
    let acked = p.send(&o, &src, &[], false).unwrap();
    // Zero chunks of a known-empty copy need no frame: only data chunks count here.
    assert!(acked > 0 && acked < SIZE);
    assert!(matches!(
        p.commit_initial(&o).unwrap(),
        Control::Committed { cycle: 0, .. }
    ));
    assert_eq!(p.model.disks["vm1/os.vhdx"].data, src);
    assert!(p
        .reports
        .contains(&Report::InitialCommitted { handle: o.handle }));

    // Cycle 1 changes two chunks, one of them to zeros (a clear: the replica is not empty).
    let mut src2 = src.clone();
    src2[0..4096].fill(0xee);
    src2[(3 << 16)..(4 << 16)].fill(0);
    assert!(p.begin_cycle(&o, 1).unwrap().is_empty());
    let co = super::pair::Opened {
        known_empty: false,
        ..o.clone()
    };
    p.send(&co, &src2, &[(0, 1 << 16), (3 << 16, 4 << 16)], false)
        .unwrap();
    assert!(matches!(
        p.commit_cycle(&o, 1).unwrap(),
        Control::Committed { cycle: 1, .. }
    ));
    assert_eq!(p.model.disks["vm1/os.vhdx"].data, src2);
    assert_eq!(p.rx.disk(o.handle).unwrap().committed_cycle, 1);
    assert!(p
        .reports
        .iter()
        .any(|r| matches!(r, Report::CycleCommitted { cycle: 1, .. })));
}

#[test]
fn a_damaged_extent_is_refused_and_resent_until_it_arrives_whole() {
    let mut p = Pair::new();
    let src = source(SIZE as usize, 2);
    let o = p.open("vm1", SIZE, false).unwrap();
    p.corrupt.insert(0);
    p.corrupt.insert(3 << 16);
    p.send(&o, &src, &[], false).unwrap();
    let refused: Vec<_> = p
        .batch_reports
        .iter()
        .filter_map(|r| match r {
            BatchReport::Rejected { offset, why, .. } => Some((*offset, *why)),
            _ => None,
        })
        .collect();
    assert_eq!(
        refused,
        vec![
            (0, Rejection::HashMismatch),
            (3 << 16, Rejection::HashMismatch)
        ]
    );
    p.commit_initial(&o).unwrap();
    assert_eq!(p.model.disks["vm1/os.vhdx"].data, src);
}

#[test]
fn a_refused_packed_write_resends_only_the_blocks_it_carried() {
    let mut p = Pair::new();
    let src = source(SIZE as usize, 3);
    let o = p.open("vm1", SIZE, false).unwrap();
    // Into a replica that is not known empty: zero blocks travel as clears beside the pack.
    let o = super::pair::Opened {
        known_empty: false,
        ..o
    };
    let items = plan(&src, &[(0, 4 << 16)], false, true);
    let packed = items
        .iter()
        .filter(|i| matches!(i, Item::Extent { header, .. } if header.op == ExtentOp::WritePacked))
        .count();
    assert_eq!(
        (packed, items.len()),
        (1, 2),
        "one pack and the clear of block 1"
    );
    p.corrupt.insert(0);
    let s = p.batch(o.handle, o.generation, &items).unwrap();
    // Block 1 (zero) went as its own clear and is acknowledged; the pack carried blocks
    // 0, 2 and 3: those come back, as the runs they form.
    assert_eq!(s.acknowledged_extents, 1);
    assert_eq!(s.resend, vec![(0, 1 << 16), (2 << 16, 2 << 16)]);
    let s = p
        .batch(
            o.handle,
            o.generation,
            &plan(&src, &[(0, 1 << 16), (2 << 16, 4 << 16)], false, false),
        )
        .unwrap();
    assert!(s.resend.is_empty());
    assert_eq!(
        &p.model.disks["vm1/os.vhdx"].data[..4 << 16],
        &src[..4 << 16]
    );
}

#[test]
fn an_interrupted_copy_resumes_from_its_durable_progress_without_resending_it() {
    let mut p = Pair::new();
    let src = source(SIZE as usize, 4);
    let o = p.open("vm1", SIZE, false).unwrap();
    p.send(&o, &src, &[(0, SIZE / 2)], false).unwrap();
    p.reconnect();
    let o2 = p.open("vm1", SIZE, false).unwrap();
    assert_eq!(o2.generation, o.generation, "the same copy resumes");
    assert!(o2.known_empty);
    let durable: u64 = o2.progress.covered_len();
    assert!(durable > 0 && durable <= SIZE / 2, "{:?}", o2.progress);
    assert!(p.reports.iter().any(
        |r| matches!(r, Report::DiskOpened { resumed_bytes, .. } if *resumed_bytes == durable)
    ));
    // The rest: everything outside the durable progress.
    let rest = super::pair::rest(&o2.progress, SIZE);
    let before = p.extents_sent;
    p.send(&o2, &src, &rest, false).unwrap();
    let sent_now = p.extents_sent - before;
    assert!(sent_now < plan(&src, &[], true, false).len());
    p.commit_initial(&o2).unwrap();
    assert_eq!(p.model.disks["vm1/os.vhdx"].data, src);

    // A full copy of the committed replica starts generation 2; a batch of generation 1
    // is refused as stale.
    let o3 = p.open("vm1", SIZE, true).unwrap();
    assert_eq!(o3.generation, o.generation + 1);
    let e = p
        .batch(
            o3.handle,
            o.generation,
            &plan(&src, &[(0, 1 << 16)], false, false),
        )
        .unwrap_err();
    assert!(
        matches!(
            e,
            SessionError::Refused {
                class: ErrorClass::InvalidState,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn an_interrupted_cycle_reopens_with_its_progress_and_a_resent_commit_is_accepted() {
    let mut p = Pair::new();
    let src = source(SIZE as usize, 5);
    let o = p.open("vm1", SIZE, false).unwrap();
    p.send(&o, &src, &[], false).unwrap();
    p.commit_initial(&o).unwrap();
    p.reconnect();
    let o = p.open("vm1", SIZE, false).unwrap();
    assert!(o.initial_committed && !o.known_empty);
    p.begin_cycle(&o, 1).unwrap();
    p.send(&o, &src, &[(0, 2 << 16)], false).unwrap();
    p.reconnect();
    let o = p.open("vm1", SIZE, false).unwrap();
    assert_eq!(
        p.begin_cycle(&o, 1).unwrap(),
        crate::RangeSet::from_range(0, 2 << 16)
    );
    p.commit_cycle(&o, 1).unwrap();
    // The commit's answer was lost; the sender commits again after reconnecting.
    p.reconnect();
    let o = p.open("vm1", SIZE, false).unwrap();
    assert!(matches!(
        p.commit_cycle(&o, 1).unwrap(),
        Control::Committed { cycle: 1, .. }
    ));
}

#[test]
fn refusals_reach_the_sender_with_their_class_and_only_fatal_ones_end_the_stream() {
    let mut p = Pair::new();
    let e = p.open("vm2", SIZE, false).unwrap_err();
    assert!(
        matches!(
            e,
            SessionError::Refused {
                class: ErrorClass::Unauthorized,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(p.tx.state(), SenderState::Ready);
    assert!(matches!(
        p.rx.control_state(p.stream),
        ControlState::Ready { .. }
    ));
    let o = p.open("vm1", SIZE, false).unwrap();
    // A commit of another generation: refused, the stream goes on.
    let req = p.tx.next_req();
    let e = p
        .call(Control::CommitInitial {
            req,
            handle: o.handle,
            generation: o.generation + 5,
        })
        .unwrap_err();
    assert!(matches!(
        e,
        SessionError::Refused {
            class: ErrorClass::InvalidState,
            ..
        }
    ));
    // An unknown handle is a protocol violation: both ends give the stream up.
    let req = p.tx.next_req();
    let e = p
        .call(Control::RootRequest { req, handle: 99 })
        .unwrap_err();
    assert!(matches!(
        e,
        SessionError::Refused {
            class: ErrorClass::Protocol,
            ..
        }
    ));
    assert_eq!(p.tx.state(), SenderState::Failed);
    assert_eq!(p.rx.control_state(p.stream), ControlState::Closed);
}

#[test]
fn a_batch_that_fails_at_the_store_ends_the_attempt_with_the_store_class() {
    let mut p = Pair::new();
    let src = source(SIZE as usize, 6);
    let o = p.open("vm1", SIZE, false).unwrap();
    p.model.fail_next_write = Some(crate::session::Refusal::new(
        ErrorClass::TargetFull,
        "disk full",
    ));
    let e = p.send(&o, &src, &[], false).unwrap_err();
    assert_eq!(
        e,
        SessionError::Refused {
            class: ErrorClass::TargetFull,
            message: "disk full".into()
        }
    );
    assert!(e.to_string().contains("target_full"));
}

#[test]
fn a_hostile_clear_past_the_disk_end_is_refused_before_anything_is_hashed_or_written() {
    let mut p = Pair::new();
    let o = p.open("vm1", SIZE, false).unwrap();
    let applied = p.model.applied;
    let clear = extent(
        SIZE,
        1 << 30,
        ExtentOp::Clear,
        Codec::Raw,
        [0; 32],
        bytes::Bytes::new(),
    );
    let e = p.batch(o.handle, o.generation, &[clear]).unwrap_err();
    assert!(
        matches!(&e, SessionError::Refused { class: ErrorClass::Protocol, message } if message.contains("outside the disk")),
        "{e}"
    );
    assert_eq!(p.model.applied, applied, "nothing reached the store");
}

#[test]
fn every_frame_type_crosses_the_pair() {
    let mut p = Pair::new();
    let src = source(SIZE as usize, 7);
    let o = p.open("vm1", SIZE, false).unwrap();
    p.send(&o, &src, &[], false).unwrap();
    p.commit_initial(&o).unwrap();
    p.begin_cycle(&o, 1).unwrap();
    let req = p.tx.next_req();
    let Control::Hashes { hashes, .. } = p
        .call(Control::HashRequest {
            req,
            handle: o.handle,
            level: 0,
            parents: vec![],
            verify: true,
        })
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(hashes.len(), 1, "a 1 MiB disk has one top node");
    let req = p.tx.next_req();
    let Control::Hashes { hashes, .. } = p
        .call(Control::HashRequest {
            req,
            handle: o.handle,
            level: 1,
            parents: vec![0],
            verify: false,
        })
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(hashes.len(), 1, "and one 16 MiB node under it");
    let req = p.tx.next_req();
    let Control::Root { root, .. } = p
        .call(Control::RootRequest {
            req,
            handle: o.handle,
        })
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(root, toy_hash(&src));
    p.commit_cycle(&o, 1).unwrap();
    let req = p.tx.next_req();
    assert!(matches!(
        p.call(Control::QueryCapacity {
            req,
            vm: "vm1".into(),
            needed: 5
        })
        .unwrap(),
        Control::Capacity {
            available: u64::MAX,
            ..
        }
    ));
    let req = p.tx.next_req();
    let job = Job {
        id: "j1".into(),
        kind: JobKind::InitialReplication,
        vm: "vm1".into(),
        state: JobState::Succeeded,
        start_ms: 1,
        end_ms: Some(2),
        steps: vec![],
        error: None,
    };
    assert!(matches!(
        p.call(Control::ReportJob { req, job }).unwrap(),
        Control::JobRecorded { .. }
    ));
    assert_eq!(p.model.jobs, vec!["j1".to_string()]);
    // An error answer (kind 7).
    let _ = p.open("vm2", SIZE, false).unwrap_err();
    // Progress pages (19, 20) only cross when progress exceeds a page: `progress_pages`.
    let mut all: Vec<u8> = (1..=18).collect();
    all.extend([K_BATCH_START, K_EXTENT, K_BATCH_RESULT]);
    assert_eq!(p.kinds.iter().copied().collect::<Vec<_>>(), all);
}

#[test]
fn packed_writes_into_a_fresh_copy_carry_only_data_blocks() {
    let mut p = Pair::new();
    let src = source(SIZE as usize, 8);
    let o = p.open("vm1", SIZE, false).unwrap();
    p.send(&o, &src, &[], true).unwrap();
    p.commit_initial(&o).unwrap();
    assert_eq!(p.model.disks["vm1/os.vhdx"].data, src);
    let written: u64 = p
        .batch_reports
        .iter()
        .map(|r| match r {
            BatchReport::Written { bytes, .. } => *bytes,
            _ => 0,
        })
        .sum();
    let data_blocks = (0..SIZE / (1 << 16)).filter(|b| b % 3 != 1).count() as u64;
    assert_eq!(written, data_blocks << 16, "zero blocks never travelled");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
    /// Whatever is damaged in transit (at most three times per extent: within the passes)
    /// and wherever the connection drops, the replica ends equal to the source.
    #[test]
    fn any_damage_and_any_interruption_end_in_a_replica_equal_to_the_source(
        seed in 0u8..255,
        damaged in proptest::collection::btree_set(0u64..16, 0..5),
        cut in 0u64..16,
        packed in proptest::bool::ANY,
        per_batch in 1usize..6,
    ) {
        let mut p = Pair::new();
        p.per_batch = per_batch;
        let src = source(SIZE as usize, seed);
        let o = p.open("vm1", SIZE, false).unwrap();
        p.corrupt = damaged.iter().map(|b| b << 16).collect();
        p.send(&o, &src, &[(0, cut << 16)], packed).unwrap();
        p.reconnect();
        let o = p.open("vm1", SIZE, false).unwrap();
        let rest = super::pair::rest(&o.progress, SIZE);
        if !rest.is_empty() {
            p.send(&o, &src, &rest, packed).unwrap();
        }
        p.commit_initial(&o).unwrap();
        proptest::prop_assert_eq!(&p.model.disks["vm1/os.vhdx"].data, &src);
    }
}
