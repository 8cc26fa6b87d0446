//! The lifecycle's invariants, one test each, on states alone (no storage).

use super::*;
use crate::layout::MAX_BLOB;

const SIZE: u64 = 3 << 20;

fn path() -> &'static Path {
    Path::new("store/vm/d")
}

fn point(cycle: u64, created_unix: u64) -> RecoveryPoint {
    RecoveryPoint {
        cycle,
        created_unix,
        bytes: 0,
        digest: [0; 32],
    }
}

fn fresh() -> DiskState {
    new_replica(3, SIZE, Guid([7; 16]), Guid([1; 16]))
}

/// A committed replica at cycle `cycle`.
fn committed(cycle: u64) -> DiskState {
    let mut st = fresh();
    st.progress = RangeSet::from_range(0, SIZE);
    let mut st = commit_initial(path(), &st, &point(0, 1)).unwrap();
    for c in 1..=cycle {
        let CycleStart::Open(open) = begin_cycle(path(), &st, c).unwrap() else {
            panic!("cycle {c} did not open");
        };
        let CycleCommit::Commit(next) = commit_cycle(path(), &open, &point(c, c)).unwrap() else {
            panic!("cycle {c} did not commit");
        };
        st = next;
    }
    st
}

fn problem(e: SinkError) -> String {
    match e {
        SinkError::InvalidState { problem, .. } => problem,
        e => panic!("expected an invalid-state error, got {e}"),
    }
}

#[test]
fn a_new_replica_is_an_initial_copy_of_generation_1_and_a_valid_record() {
    let st = fresh();
    assert!(st.initial_in_progress && !st.initial_committed);
    assert_eq!(
        (st.generation, st.copy_id, st.open_cycle),
        (1, Guid([1; 16]), None)
    );
    check_record(&st).unwrap();
    assert!(check_size(path(), 0).is_err());
    assert!(
        check_size(path(), MAX_BLOB).is_err(),
        "no room for the footer"
    );
    check_size(path(), 1).unwrap();
}

#[test]
fn a_reopen_with_another_size_or_source_is_refused() {
    let st = fresh();
    assert!(matches!(
        check_reopen(path(), &st, SIZE * 2, st.source_id),
        Err(SinkError::SizeMismatch { .. })
    ));
    assert!(matches!(
        check_reopen(path(), &st, SIZE, Guid([8; 16])),
        Err(SinkError::IdentityMismatch { .. })
    ));
    check_reopen(path(), &st, SIZE, st.source_id).unwrap();
}

#[test]
fn writes_go_to_the_copy_or_the_open_cycle_and_never_to_a_committed_point() {
    assert_eq!(
        write_target(path(), "write", &fresh(), 0, 512).unwrap(),
        Target::Copy
    );
    let st = committed(2);
    let e = write_target(path(), "clear", &st, 4096, 512).unwrap_err();
    assert!(problem(e).contains("begin_cycle(3)"));
    let CycleStart::Open(open) = begin_cycle(path(), &st, 3).unwrap() else {
        panic!()
    };
    assert_eq!(
        write_target(path(), "write", &open, 0, 512).unwrap(),
        Target::Cycle(3)
    );
    // A new full copy beside the committed replica takes the writes.
    let copy = begin_initial(&st, Guid([2; 16]));
    assert_eq!(
        write_target(path(), "write", &copy, 0, 512).unwrap(),
        Target::Copy
    );
}

#[test]
fn unaligned_or_out_of_range_writes_are_refused() {
    let st = fresh();
    for (off, len) in [
        (1, 512),
        (0, 100),
        (SIZE, 512),
        (SIZE - 512, 1024),
        (u64::MAX - 511, 512),
    ] {
        let e = write_target(path(), "write", &st, off, len).unwrap_err();
        assert!(matches!(e, SinkError::OutOfRange { .. }), "{e}");
    }
    // Reads need no alignment.
    check_range(path(), "read", 1, 3, &st, false).unwrap();
}

#[test]
fn progress_is_recorded_only_for_a_copy_or_cycle_in_progress() {
    let st = fresh();
    let done = RangeSet::from_range(0, 4096);
    let next = checkpoint(path(), &st, &done).unwrap().unwrap();
    assert_eq!(next.progress, done);
    check_record(&next).unwrap();
    assert_eq!(checkpoint(path(), &next, &done).unwrap(), None, "unchanged");
    let c = committed(1);
    assert_eq!(checkpoint(path(), &c, &RangeSet::new()).unwrap(), None);
    let e = checkpoint(path(), &c, &done).unwrap_err();
    assert!(problem(e).contains("no initial copy or delta cycle"));
    let CycleStart::Open(open) = begin_cycle(path(), &c, 2).unwrap() else {
        panic!()
    };
    let next = checkpoint(path(), &open, &done).unwrap().unwrap();
    assert_eq!(next.progress, done);
    check_record(&next).unwrap();
    assert!(matches!(
        checkpoint(path(), &st, &RangeSet::from_range(0, SIZE + 512)),
        Err(SinkError::OutOfRange { .. })
    ));
}

#[test]
fn an_initial_copy_commits_as_point_0_only_when_complete() {
    let mut st = fresh();
    st.progress = RangeSet::from_range(0, 512 << 10);
    let e = commit_initial(path(), &st, &point(0, 1)).unwrap_err();
    assert!(matches!(e, SinkError::InvalidState { offset, .. } if offset == 512 << 10));
    st.progress = RangeSet::from_range(0, SIZE);
    assert!(problem(commit_initial(path(), &st, &point(4, 1)).unwrap_err()).contains("point 0"));
    let c = commit_initial(path(), &st, &point(0, 1)).unwrap();
    assert!(c.initial_committed && !c.initial_in_progress && c.progress.is_empty());
    assert_eq!((c.replica_id, c.copy_id), (Guid([1; 16]), Guid::NIL));
    check_record(&c).unwrap();
    assert!(
        problem(commit_initial(path(), &c, &point(0, 1)).unwrap_err())
            .contains("without an initial copy")
    );
}

#[test]
fn begin_cycle_opens_the_next_resumes_the_open_one_and_refuses_others() {
    let st = committed(3);
    assert!(problem(begin_cycle(path(), &st, 3).unwrap_err()).contains("already committed"));
    assert!(problem(begin_cycle(path(), &st, 5).unwrap_err()).contains("next cycle is 4"));
    let CycleStart::Open(open) = begin_cycle(path(), &st, 4).unwrap() else {
        panic!()
    };
    check_record(&open).unwrap();
    let done = RangeSet::from_range(0, 8192);
    let open = checkpoint(path(), &open, &done).unwrap().unwrap();
    assert_eq!(
        begin_cycle(path(), &open, 4).unwrap(),
        CycleStart::Resume(done)
    );
    assert!(problem(begin_cycle(path(), &open, 5).unwrap_err()).contains("cycle 4 is open"));
    // No cycle on a copy in progress.
    assert!(begin_cycle(path(), &fresh(), 1).is_err());
    assert!(begin_cycle(path(), &begin_initial(&st, Guid([3; 16])), 4).is_err());
}

#[test]
fn commit_cycle_commits_the_open_cycle_and_a_resent_commit_is_a_no_op() {
    let st = committed(2);
    assert_eq!(
        commit_cycle(path(), &st, &point(2, 9)).unwrap(),
        CycleCommit::Resent
    );
    assert_eq!(
        commit_cycle(path(), &st, &point(1, 9)).unwrap(),
        CycleCommit::Resent
    );
    assert!(
        problem(commit_cycle(path(), &st, &point(3, 9)).unwrap_err()).contains("no cycle is open")
    );
    assert!(commit_cycle(path(), &st, &point(0, 9)).is_err());
    let CycleStart::Open(open) = begin_cycle(path(), &st, 3).unwrap() else {
        panic!()
    };
    assert!(
        problem(commit_cycle(path(), &open, &point(4, 9)).unwrap_err())
            .contains("while cycle 3 is open")
    );
    let CycleCommit::Commit(c) = commit_cycle(path(), &open, &point(3, 9)).unwrap() else {
        panic!()
    };
    assert_eq!((c.committed_cycle, c.open_cycle), (3, None));
    assert!(c.progress.is_empty());
    check_record(&c).unwrap();
}

#[test]
fn a_new_full_copy_bumps_the_generation_and_drops_the_open_cycle() {
    let st = committed(1);
    let CycleStart::Open(open) = begin_cycle(path(), &st, 2).unwrap() else {
        panic!()
    };
    let open = checkpoint(path(), &open, &RangeSet::from_range(0, 512))
        .unwrap()
        .unwrap();
    let copy = begin_initial(&open, Guid([5; 16]));
    assert_eq!((copy.generation, copy.open_cycle), (2, None));
    assert!(copy.initial_in_progress && copy.initial_committed && copy.progress.is_empty());
    assert_eq!(
        copy.replica_id, st.replica_id,
        "the committed replica stays"
    );
    check_record(&copy).unwrap();
    let mut copy = copy;
    copy.progress = RangeSet::from_range(0, SIZE);
    let c = commit_initial(path(), &copy, &point(0, 5)).unwrap();
    assert_eq!(
        (c.replica_id, c.committed_cycle, c.generation),
        (Guid([5; 16]), 0, 2)
    );
}

#[test]
fn prune_drops_an_old_prefix_and_never_the_newest() {
    let pts: Vec<_> = [(0, 10), (1, 20), (2, 30), (3, 40)]
        .iter()
        .map(|&(c, t)| point(c, t))
        .collect();
    assert_eq!(prune(&pts, 10), 0);
    assert_eq!(prune(&pts, 25), 2);
    assert_eq!(prune(&pts, u64::MAX), 3, "never the newest");
    assert_eq!(prune(&pts[..1], u64::MAX), 0);
    assert_eq!(prune(&[], u64::MAX), 0);
}

#[test]
fn takeover_rolls_a_published_commit_forward_to_the_committed_state() {
    // A copy whose footer or snapshot exists: as if commit_initial had finished.
    let mut copy = fresh();
    copy.progress = RangeSet::from_range(0, SIZE);
    let finished = commit_initial(path(), &copy, &point(0, 1)).unwrap();
    assert_eq!(committed_after_initial(&copy), finished);
    // A cycle whose point exists: as if commit_cycle had finished.
    let CycleStart::Open(open) = begin_cycle(path(), &finished, 1).unwrap() else {
        panic!()
    };
    let CycleCommit::Commit(done) = commit_cycle(path(), &open, &point(1, 2)).unwrap() else {
        panic!()
    };
    assert_eq!(committed_cycle(&open, 1), done);
}

#[test]
fn contradictory_records_are_refused() {
    let ok = committed(2);
    let cases: Vec<(&str, DiskState)> = vec![
        (
            "size 0",
            DiskState {
                virtual_size: 0,
                ..ok.clone()
            },
        ),
        (
            "generation 0",
            DiskState {
                generation: 0,
                ..ok.clone()
            },
        ),
        (
            "no replica",
            DiskState {
                initial_committed: false,
                initial_in_progress: false,
                ..ok.clone()
            },
        ),
        (
            "cycle not next",
            DiskState {
                open_cycle: Some(5),
                ..ok.clone()
            },
        ),
        (
            "cycle during a copy",
            DiskState {
                open_cycle: Some(3),
                initial_in_progress: true,
                ..ok.clone()
            },
        ),
        (
            "progress without work",
            DiskState {
                progress: RangeSet::from_range(0, 512),
                ..ok.clone()
            },
        ),
        (
            "progress beyond the end",
            DiskState {
                open_cycle: Some(3),
                progress: RangeSet::from_range(0, SIZE + 512),
                ..ok.clone()
            },
        ),
    ];
    for (what, st) in cases {
        assert!(check_record(&st).is_err(), "{what} accepted");
    }
    check_record(&ok).unwrap();
}

#[test]
fn an_unknown_point_is_not_found_and_names_the_points_kept() {
    let e = no_point(path(), Some((3, 7)), 1);
    assert!(matches!(e, SinkError::NotFound { .. }) && e.to_string().contains("3..=7"));
    assert!(no_point(path(), None, 1)
        .to_string()
        .contains("nothing is committed"));
    assert!(check_committed(path(), &fresh(), 0).is_err());
    check_committed(path(), &committed(0), 0).unwrap();
}
