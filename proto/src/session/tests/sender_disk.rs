//! One disk at the sender: each state, the request it allows, the answer it expects, and
//! what every other answer or refusal does to it.

use crate::session::sender::{
    expected_hashes, DiskEvent, DiskState, OpenedDisk, Resume, SenderDisk, SessionError, ZeroBlocks,
};
use crate::wire::{Control, ErrorClass};
use crate::{Guid, RangeSet};

const SIZE: u64 = (1 << 30) + (1 << 24) + 4096;

fn disk() -> SenderDisk {
    SenderDisk::new("vm1", "os.vhdx", SIZE, Guid([7; 16]), 3)
}

fn opened(committed: bool, known_empty: bool, progress: &[(u64, u64)]) -> Control {
    Control::DiskOpened {
        req: 1,
        handle: 5,
        initial_committed: committed,
        committed_cycle: if committed { 3 } else { 0 },
        generation: 9,
        known_empty,
        progress: set(progress),
        more_progress: false,
    }
}

fn committed(cycle: u64) -> Control {
    Control::Committed {
        req: 2,
        handle: 5,
        cycle,
    }
}

fn cycle_opened(cycle: u64, progress: &[(u64, u64)]) -> Control {
    Control::CycleOpened {
        req: 3,
        handle: 5,
        cycle,
        progress: set(progress),
        more_progress: false,
    }
}

/// A disk whose copy is under way, opened with `progress`.
fn copying(progress: &[(u64, u64)]) -> (SenderDisk, Resume) {
    let mut d = disk();
    let _ = d.open(1, false).unwrap();
    match d.handle_answer(opened(false, true, progress)).unwrap() {
        DiskEvent::Opened { resume, .. } => (d, resume),
        other => panic!("{other:?}"),
    }
}

/// A disk with committed cycle 3.
fn ready() -> SenderDisk {
    let mut d = disk();
    let _ = d.open(1, false).unwrap();
    let _ = d.handle_answer(opened(true, false, &[])).unwrap();
    assert_eq!(d.state(), DiskState::Ready);
    d
}

/// A disk with cycle 4 open.
fn shipping() -> SenderDisk {
    let mut d = ready();
    let _ = d.begin_cycle(3, 4).unwrap();
    let _ = d.handle_answer(cycle_opened(4, &[])).unwrap();
    assert_eq!(d.state(), DiskState::Shipping { cycle: 4 });
    d
}

#[test]
fn opening_a_disk_sends_its_identity_and_an_uncommitted_copy_resumes_from_its_progress() {
    let mut d = disk();
    assert_eq!(d.state(), DiskState::Closed);
    assert_eq!(
        d.open(1, true).unwrap(),
        Control::OpenDisk {
            req: 1,
            vm: "vm1".into(),
            disk: "os.vhdx".into(),
            virtual_size: SIZE,
            source_id: Guid([7; 16]),
            full_copy: true,
            vm_disks: Vec::new(),
        }
    );
    assert_eq!(d.state(), DiskState::Opening);
    assert!(matches!(d.open(2, false), Err(SessionError::Misuse(_))));
    let ev = d
        .handle_answer(opened(false, true, &[(0, 4096), (8192, 12288)]))
        .unwrap();
    let DiskEvent::Opened { disk, resume } = ev else {
        panic!("{ev:?}")
    };
    assert_eq!(
        disk,
        OpenedDisk {
            handle: 5,
            generation: 9,
            known_empty: true,
            initial_committed: false,
            committed_cycle: 0,
            protocol: 3,
        }
    );
    assert_eq!(
        resume,
        Resume {
            done: set(&[(0, 4096), (8192, 12288)]),
            resumed: 8192
        }
    );
    assert_eq!(d.state(), DiskState::Copying);
}

#[test]
fn a_committed_replica_is_ready_for_cycles_unless_a_copy_is_under_way_again() {
    let d = ready();
    assert_eq!(d.opened().unwrap().committed_cycle, 3);
    let mut d = disk();
    let _ = d.open(1, false).unwrap();
    let _ = d.handle_answer(opened(true, true, &[])).unwrap();
    assert_eq!(d.state(), DiskState::Copying, "known_empty: a copy again");
}

#[test]
fn the_initial_copy_commits_with_its_generation_and_the_disk_is_then_ready() {
    let (mut d, _) = copying(&[]);
    assert!(matches!(d.begin_cycle(2, 1), Err(SessionError::Misuse(_))));
    assert_eq!(
        d.commit_initial(2).unwrap(),
        Control::CommitInitial {
            req: 2,
            handle: 5,
            generation: 9
        }
    );
    assert_eq!(d.state(), DiskState::CommittingInitial);
    assert_eq!(
        d.handle_answer(committed(0)).unwrap(),
        DiskEvent::InitialCommitted
    );
    assert_eq!(d.state(), DiskState::Ready);
    let o = d.opened().unwrap();
    assert!(o.initial_committed && !o.known_empty && o.committed_cycle == 0);
    assert!(matches!(d.commit_initial(3), Err(SessionError::Misuse(_))));
}

#[test]
fn a_cycle_opens_with_its_progress_ships_and_commits() {
    let mut d = ready();
    assert!(
        matches!(d.begin_cycle(3, 3), Err(SessionError::Misuse(_))),
        "cycle 3 is committed"
    );
    assert_eq!(
        d.begin_cycle(3, 4).unwrap(),
        Control::BeginCycle {
            req: 3,
            handle: 5,
            cycle: 4
        }
    );
    assert_eq!(d.state(), DiskState::CycleOpening { cycle: 4 });
    assert_eq!(
        d.handle_answer(cycle_opened(4, &[(0, 512)])).unwrap(),
        DiskEvent::CycleOpened {
            cycle: 4,
            resume: Resume {
                done: set(&[(0, 512)]),
                resumed: 512
            }
        }
    );
    assert_eq!(
        d.commit_cycle(4, 100, [1; 32], 60).unwrap(),
        Control::CommitCycle {
            req: 4,
            handle: 5,
            cycle: 4,
            bytes: 100,
            digest: [1; 32],
            retention_secs: 60
        }
    );
    assert_eq!(d.state(), DiskState::CycleCommitting { cycle: 4 });
    assert_eq!(
        d.handle_answer(committed(4)).unwrap(),
        DiskEvent::CycleCommitted { cycle: 4 }
    );
    assert_eq!(d.state(), DiskState::Ready);
    assert_eq!(d.opened().unwrap().committed_cycle, 4);
    assert!(matches!(
        d.commit_cycle(5, 0, [0; 32], 0),
        Err(SessionError::Misuse(_))
    ));
}

#[test]
fn an_abandoned_open_cycle_may_be_begun_again_by_the_resync_that_follows() {
    let mut d = shipping();
    assert!(d.begin_cycle(5, 4).is_ok());
    assert_eq!(d.state(), DiskState::CycleOpening { cycle: 4 });
}

#[test]
fn the_resync_exchange_runs_inside_the_open_cycle_and_counts_the_hashes() {
    let mut d = ready();
    assert!(matches!(
        d.hash_request(4, 0, vec![], false),
        Err(SessionError::Misuse(_))
    ));
    assert!(matches!(d.root_request(4), Err(SessionError::Misuse(_))));
    let mut d = shipping();
    let top = d.hash_request(4, 0, vec![], true).unwrap();
    assert!(matches!(
        top,
        Control::HashRequest {
            level: 0,
            verify: true,
            handle: 5,
            ..
        }
    ));
    assert_eq!(
        d.state(),
        DiskState::Hashing {
            cycle: 4,
            level: 0,
            expect: 2
        }
    );
    assert_eq!(
        d.handle_answer(Control::Hashes {
            req: 4,
            handle: 5,
            level: 0,
            hashes: vec![1, 2]
        })
        .unwrap(),
        DiskEvent::Hashes(vec![1, 2])
    );
    // Node 1 of level 0 covers the last 16 MiB + 4 KiB: two children at level 1.
    let _ = d.hash_request(5, 1, vec![0, 1], false).unwrap();
    assert_eq!(
        d.state(),
        DiskState::Hashing {
            cycle: 4,
            level: 1,
            expect: 66
        }
    );
    let _ = d
        .handle_answer(Control::Hashes {
            req: 5,
            handle: 5,
            level: 1,
            hashes: vec![0; 66],
        })
        .unwrap();
    let _ = d.root_request(6).unwrap();
    assert_eq!(d.state(), DiskState::Rooting { cycle: 4 });
    assert_eq!(
        d.handle_answer(Control::Root {
            req: 6,
            handle: 5,
            root: [9; 32]
        })
        .unwrap(),
        DiskEvent::Root([9; 32])
    );
    assert_eq!(d.state(), DiskState::Shipping { cycle: 4 });
}

#[test]
fn a_resync_answer_with_the_wrong_number_of_hashes_breaks_the_disk() {
    for n in [1usize, 3] {
        let mut d = shipping();
        let _ = d.hash_request(4, 0, vec![], false).unwrap();
        let e = d
            .handle_answer(Control::Hashes {
                req: 4,
                handle: 5,
                level: 0,
                hashes: vec![0; n],
            })
            .unwrap_err();
        assert!(
            matches!(&e, SessionError::Protocol(m) if m.contains("level-0 hashes")),
            "{e:?}"
        );
        assert!(!e.is_transient());
        assert_eq!(d.state(), DiskState::Failed);
    }
}

#[test]
fn the_expected_hash_count_follows_the_tree_and_refuses_what_is_not_in_it() {
    assert_eq!(expected_hashes(SIZE, 0, &[]).unwrap(), 2);
    assert_eq!(expected_hashes(SIZE, 1, &[0]).unwrap(), 64);
    assert_eq!(expected_hashes(SIZE, 1, &[1]).unwrap(), 2);
    assert_eq!(expected_hashes(SIZE, 3, &[4096 + 64]).unwrap(), 1);
    assert!(expected_hashes(SIZE, 1, &[2]).is_err());
    assert!(expected_hashes(SIZE, 0, &[0]).is_err());
    assert!(expected_hashes(SIZE, 4, &[0]).is_err());
    assert!(expected_hashes(SIZE, 1, &[u64::MAX]).is_err());
}

/// Every state that awaits an answer, and an answer that state does not expect.
fn awaiting() -> Vec<(SenderDisk, Control)> {
    let mut out = Vec::new();
    let mut d = disk();
    let _ = d.open(1, false).unwrap();
    out.push((d, committed(0)));
    let (mut d, _) = copying(&[]);
    let _ = d.commit_initial(2).unwrap();
    out.push((d.clone(), committed(1)));
    out.push((
        d,
        Control::Committed {
            req: 2,
            handle: 6,
            cycle: 0,
        },
    ));
    let mut d = ready();
    let _ = d.begin_cycle(3, 4).unwrap();
    out.push((d.clone(), cycle_opened(5, &[])));
    out.push((d, committed(4)));
    let mut d = shipping();
    let _ = d.hash_request(4, 0, vec![], false).unwrap();
    out.push((
        d.clone(),
        Control::Hashes {
            req: 4,
            handle: 5,
            level: 1,
            hashes: vec![0; 2],
        },
    ));
    out.push((
        d,
        Control::Root {
            req: 4,
            handle: 5,
            root: [0; 32],
        },
    ));
    let mut d = shipping();
    let _ = d.root_request(4).unwrap();
    out.push((
        d,
        Control::Root {
            req: 4,
            handle: 4,
            root: [0; 32],
        },
    ));
    let mut d = shipping();
    let _ = d.commit_cycle(4, 0, [0; 32], 0).unwrap();
    out.push((d.clone(), committed(3)));
    out.push((d, cycle_opened(4, &[])));
    out
}

#[test]
fn every_unexpected_answer_in_every_state_breaks_the_disk_as_a_protocol_error() {
    for (mut d, answer) in awaiting() {
        let before = d.state();
        let e = d.handle_answer(answer.clone()).unwrap_err();
        assert!(
            matches!(e, SessionError::Protocol(_)),
            "{before:?} / {answer:?}: {e:?}"
        );
        assert!(!e.is_transient());
        assert_eq!(d.state(), DiskState::Failed, "{before:?} / {answer:?}");
    }
    // No answer is due in a settled state.
    for mut d in [disk(), copying(&[]).0, ready(), shipping()] {
        assert!(d.handle_answer(committed(0)).is_err());
        assert_eq!(d.state(), DiskState::Failed);
    }
}

#[test]
fn a_transient_refusal_returns_to_the_state_before_the_request_a_permanent_one_fails() {
    for (d, _) in awaiting() {
        for (class, transient) in [
            (ErrorClass::TargetBusy, true),
            (ErrorClass::Internal, true),
            (ErrorClass::InvalidState, false),
            (ErrorClass::Unauthorized, false),
        ] {
            let mut d = d.clone();
            let e = d
                .handle_answer(Control::Error {
                    req: 1,
                    class,
                    message: "no".into(),
                })
                .unwrap_err();
            assert_eq!(e.is_transient(), transient);
            if transient {
                assert!(
                    matches!(
                        d.state(),
                        DiskState::Closed
                            | DiskState::Copying
                            | DiskState::Ready
                            | DiskState::Shipping { .. }
                    ),
                    "{:?}",
                    d.state()
                );
            } else {
                assert_eq!(d.state(), DiskState::Failed);
            }
        }
    }
    // After a transient refusal the request can be made again.
    let (mut d, _) = copying(&[]);
    let _ = d.commit_initial(2).unwrap();
    let _ = d
        .handle_answer(Control::Error {
            req: 2,
            class: ErrorClass::TargetBusy,
            message: "busy".into(),
        })
        .unwrap_err();
    assert_eq!(d.state(), DiskState::Copying);
    assert!(d.commit_initial(3).is_ok());
}

#[test]
fn a_failed_disk_takes_no_request() {
    let mut d = shipping();
    let _ = d.handle_answer(committed(4)).unwrap_err();
    assert!(d.open(9, false).is_err());
    assert!(d.begin_cycle(9, 5).is_err());
    assert!(d.commit_cycle(9, 0, [0; 32], 0).is_err());
    assert!(d.hash_request(9, 0, vec![], false).is_err());
    assert!(d.root_request(9).is_err());
}

#[test]
fn resumed_bytes_are_what_the_durable_set_covers() {
    // Unsorted, reversed or overlapping progress cannot reach here: the frame decoder
    // refuses it (wire::msg::golden), and a set holds each byte once.
    let r = Resume::from_progress(set(&[(0, 4), (10, 15), (u64::MAX - 1, u64::MAX)]));
    assert_eq!(r.resumed, 10);
    assert_eq!(r.done.range_count(), 3);
    assert_eq!(Resume::from_progress(RangeSet::new()).resumed, 0);
}

fn set(pairs: &[(u64, u64)]) -> RangeSet {
    pairs.iter().map(|&(a, b)| a..b).collect()
}

#[test]
fn zero_blocks_follow_the_replica_and_the_protocol_version() {
    assert_eq!(ZeroBlocks::choose(true, 1), ZeroBlocks::Skip);
    assert_eq!(ZeroBlocks::choose(true, 2), ZeroBlocks::Span);
    assert_eq!(ZeroBlocks::choose(false, 2), ZeroBlocks::Clear);
    assert_eq!(ZeroBlocks::choose(false, 1), ZeroBlocks::Clear);
    assert_eq!(
        ZeroBlocks::choose(true, 3),
        ZeroBlocks::Pack { known_empty: true }
    );
    assert_eq!(
        ZeroBlocks::choose(false, 4),
        ZeroBlocks::Pack { known_empty: false }
    );
}
