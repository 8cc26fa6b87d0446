//! Faults against a real qemu-storage-daemon: a client killed with its views in place, and a
//! daemon restarted (cleanly or killed) under in-memory and persistent bitmaps, a switch the
//! sender did not live to record.

mod support;

use std::time::Duration;

use support::checks::*;
use support::{watchdog, Qsd};
use vdrep_qemu::fleece::{
    bitmap_state, cleanup_leftovers, lost_bitmaps, reconcile_bitmaps, remove_bitmap,
    start_nbd_server, stop_nbd_server, BitmapState, FleeceError, Fleecer, LossReason,
};

/// A process that took views and was killed with SIGKILL left exports, nodes, jobs and
/// scratch files; the guest keeps writing; `cleanup_leftovers` removes everything but the
/// bitmaps, and the next switch's dirty extents hold the writes made meanwhile.
#[test]
fn a_killed_clients_leftovers_are_removed_and_no_write_is_missed() {
    watchdog(LIMIT);
    let dir = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let q = Qsd::start(
        dir.path(),
        vec![
            disk(dir.path(), "a", "qcow2", 1),
            disk(dir.path(), "b", "raw", 2),
        ],
        true,
    );
    let mut fds = [0i32; 2];
    // SAFETY: a pipe for the child to say it is ready.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: the child only runs this test's code and leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // SAFETY: the child dies with the test even if the test fails before killing it.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
        let r = std::panic::catch_unwind(|| {
            let mut qmp = q.qmp();
            let f = Fleecer::new(scratch.path(), &q.nbd_socket()).unwrap();
            let v = f
                .switch(&mut qmp, 1, &switch_disks(&[("a", None), ("b", None)]))
                .unwrap();
            let mut c = v[0].connect(IO).unwrap();
            let mut buf = [0u8; 4096];
            c.read(0, &mut buf).unwrap();
            // SAFETY: writing one byte to our pipe.
            unsafe { libc::write(fds[1], b"r".as_ptr().cast(), 1) };
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        });
        // SAFETY: leave the forked child without running the parent's destructors.
        unsafe { libc::_exit(if r.is_ok() { 0 } else { 1 }) }
    }
    let mut b = [0u8; 1];
    // SAFETY: reading one byte from our pipe; the child writes it or exits (EOF after close).
    unsafe { libc::close(fds[1]) };
    let n = unsafe { libc::read(fds[0], b.as_mut_ptr().cast(), 1) };
    assert_eq!(n, 1, "the child failed to take its views");
    // SAFETY: killing and reaping our own child.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
    assert_eq!(scratch_files(scratch.path()).len(), 2);

    // The guest writes with the dead client's views in place.
    let writes = [(100_000, 70_000, 11), (SIZE - 4096, 4096, 12)];
    q.guest_write("a", &writes);
    q.guest_write("b", &writes);

    let mut qmp = q.qmp();
    let left = cleanup_leftovers(&mut qmp, Duration::from_secs(30)).unwrap();
    eprintln!("leftovers removed: {left:?}");
    assert_eq!(left.exports.len(), 2, "{left:?}");
    assert_eq!(left.jobs.len(), 2, "{left:?}");
    assert_eq!(left.files.len(), 2, "{left:?}");
    assert_only_bitmaps_left(&mut qmp);
    assert!(scratch_files(scratch.path()).is_empty());
    assert!(cleanup_leftovers(&mut qmp, Duration::from_secs(30))
        .unwrap()
        .is_empty());

    // The bitmaps the dead client started hold the writes made since.
    let f = Fleecer::new(scratch.path(), &q.nbd_socket()).unwrap();
    let v2 = f
        .switch(
            &mut qmp,
            2,
            &switch_disks(&[("a", Some("vdrep-1")), ("b", Some("vdrep-1"))]),
        )
        .unwrap();
    for v in &v2 {
        let mut c = v.connect(IO).unwrap();
        let dirty = c.dirty_extents("vdrep-1").unwrap();
        assert_covered(&writes, &dirty);
        c.disconnect();
    }
    f.teardown(&mut qmp, &v2, true).unwrap();
    assert_only_bitmaps_left(&mut qmp);
}

/// vdrep's own NBD server; a restart loses an in-memory bitmap (raw) and leaves a persistent
/// one inconsistent after a crash (qcow2, SIGKILL) but intact after a clean stop (SIGTERM).
#[test]
fn a_restarted_daemon_reports_lost_bitmaps() {
    watchdog(LIMIT);
    let dir = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let mut q = Qsd::start(
        dir.path(),
        vec![
            disk(dir.path(), "r", "raw", 1),
            disk(dir.path(), "c", "qcow2", 2),
        ],
        false,
    );
    let nbd = dir.path().join("vdrep-nbd.sock");
    let mut qmp = q.qmp();
    start_nbd_server(&mut qmp, &nbd).unwrap();
    assert!(matches!(
        start_nbd_server(&mut qmp, &nbd),
        Err(FleeceError::NbdServerRunning)
    ));
    let f = Fleecer::new(scratch.path(), &nbd).unwrap();
    let v = f
        .switch(&mut qmp, 1, &switch_disks(&[("r", None), ("c", None)]))
        .unwrap();
    let before = read_all(&mut v[0].connect(IO).unwrap());
    assert!(before.iter().all(|&b| b == 1));
    f.teardown(&mut qmp, &v, false).unwrap();
    stop_nbd_server(&mut qmp).unwrap();
    drop(qmp);
    let pairs = vec![
        ("r".to_string(), "vdrep-1".to_string()),
        ("c".to_string(), "vdrep-1".to_string()),
    ];

    q.restart(libc::SIGTERM);
    let mut qmp = q.qmp();
    let lost = lost_bitmaps(&mut qmp, &pairs).unwrap();
    assert_eq!(
        lost,
        vec![("r".into(), "vdrep-1".into(), LossReason::Missing)]
    );
    drop(qmp);

    q.restart(libc::SIGKILL);
    let mut qmp = q.qmp();
    let lost = lost_bitmaps(&mut qmp, &pairs).unwrap();
    assert_eq!(
        lost,
        vec![
            ("r".into(), "vdrep-1".into(), LossReason::Missing),
            ("c".into(), "vdrep-1".into(), LossReason::Inconsistent)
        ]
    );
    start_nbd_server(&mut qmp, &nbd).unwrap();
    match f.switch(&mut qmp, 2, &switch_disks(&[("c", Some("vdrep-1"))])) {
        Err(e @ FleeceError::BitmapLost { .. }) => {
            assert!(!e.is_transient());
            assert!(e.to_string().contains("resync"), "{e}");
        }
        other => panic!("expected a lost bitmap, got {other:?}"),
    }
    assert_only_bitmaps_left(&mut qmp);
    // A resync starts over: the bad bitmap goes, a new protection starts.
    remove_bitmap(&mut qmp, "c", "vdrep-1").unwrap();
    let v = f
        .switch(&mut qmp, 2, &switch_disks(&[("r", None), ("c", None)]))
        .unwrap();
    f.teardown(&mut qmp, &v, false).unwrap();
    assert!(lost_bitmaps(&mut qmp, &[("c".into(), "vdrep-2".into())])
        .unwrap()
        .is_empty());
}

/// A sender that died after a switch's transaction but before it recorded the switch: the
/// disk has the stopped previous bitmap and a newer recording one. Reconciling onto the
/// previous bitmap merges the newer one into it; the next switch's dirty extents cover the
/// writes of both windows.
#[test]
fn an_unrecorded_switch_is_reconciled_onto_the_previous_bitmap() {
    watchdog(LIMIT);
    let dir = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let q = Qsd::start(dir.path(), vec![disk(dir.path(), "d", "qcow2", 1)], true);
    let mut qmp = q.qmp();
    let f = Fleecer::new(scratch.path(), &q.nbd_socket()).unwrap();
    let v1 = f
        .switch(&mut qmp, 1, &switch_disks(&[("d", None)]))
        .unwrap();
    f.teardown(&mut qmp, &v1, false).unwrap();
    let before = [(0, 4096, 21)];
    q.guest_write("d", &before);
    // The switch the sender did not live to record; its views stay behind.
    let _lost = f
        .switch(&mut qmp, 2, &switch_disks(&[("d", Some("vdrep-1"))]))
        .unwrap();
    let after = [(5 << 20, 100_000, 22)];
    q.guest_write("d", &after);
    drop(qmp);

    let mut qmp = q.qmp();
    // Retrying the unrecorded switch finds its bitmap.
    let e = f
        .switch(&mut qmp, 2, &switch_disks(&[("d", Some("vdrep-1"))]))
        .unwrap_err();
    assert!(matches!(e, FleeceError::BitmapExists { .. }), "{e}");
    cleanup_leftovers(&mut qmp, Duration::from_secs(30)).unwrap();
    let merged = reconcile_bitmaps(&mut qmp, "d", "vdrep-1").unwrap();
    assert_eq!(merged, vec!["vdrep-2".to_string()]);
    assert_eq!(
        bitmap_state(&mut qmp, "d", "vdrep-2").unwrap(),
        BitmapState::Missing
    );
    assert_eq!(
        reconcile_bitmaps(&mut qmp, "d", "vdrep-1").unwrap(),
        Vec::<String>::new()
    );

    let v2 = f
        .switch(&mut qmp, 2, &switch_disks(&[("d", Some("vdrep-1"))]))
        .unwrap();
    let mut c = v2[0].connect(IO).unwrap();
    let dirty = c.dirty_extents("vdrep-1").unwrap();
    assert_covered(&before, &dirty);
    assert_covered(&after, &dirty);
    c.disconnect();
    f.teardown(&mut qmp, &v2, true).unwrap();
    assert_only_bitmaps_left(&mut qmp);
    assert!(matches!(
        reconcile_bitmaps(&mut qmp, "d", "vdrep-9"),
        Err(FleeceError::BitmapLost {
            reason: LossReason::Missing,
            ..
        })
    ));
}
