//! Faults of the qemu change source (issue 18 item 2): the sender killed with SIGKILL while
//! a round's views, backup jobs, filters and exports are in place in qemu (the test hook
//! `VDREP_TEST_QEMU_PAUSE` holds the round there). The restarted sender removes those
//! leftovers, takes the interrupted switch's bitmaps back, and misses no write: every point
//! holds a prefix of the guest's ordered writes and the last one all of them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use vdrep_tests::procs::{finish, read_log, wait_for_log};
use vdrep_tests::qemu_rig::{compare, wait_until, NumberedWriter, Rig, StopOnDrop};

const SIZE: u64 = 8 << 20;
const PAUSED: &str = "test hook: qemu round paused with its views in place";
const SWITCHED: &str = "qemu switch of the VM's disks";

#[test]
fn a_sender_killed_mid_cycle_leaves_leftovers_that_the_next_start_removes_and_misses_no_write() {
    let mut rig = Rig::new(SIZE);
    let w = NumberedWriter::new(SIZE);
    let stop = AtomicBool::new(false);
    let first = rig
        .send_every("send1.log", "300ms")
        .env("VDREP_TEST_QEMU_PAUSE", "3000");
    let t0 = Instant::now();
    let mut child = first.spawn();
    assert!(
        wait_for_log(&first.log, SWITCHED, Duration::from_secs(60)),
        "no first switch: {}",
        read_log(&first.log)
    );
    std::thread::scope(|sc| {
        let h = sc.spawn(|| w.run(&rig.qsd, &stop, Duration::from_millis(2)));
        let _stop = StopOnDrop(&stop);
        // The third round: a cycle (not the initial copy) with its views in place.
        wait_until(
            "a paused cycle",
            &first.log,
            Duration::from_secs(60),
            || read_log(&first.log).matches(PAUSED).count() >= 3,
        );
        child.kill().unwrap();
        child.wait().unwrap();
        let (left, _) = rig.qsd.vdrep_objects();
        assert!(
            left.iter().any(|o| o.starts_with("export vdrep-"))
                && left.iter().any(|o| o.starts_with("job vdrep-")),
            "the kill did not hit a round with views in place: {left:?}"
        );
        // Writes go on while no sender runs, and after it restarts.
        std::thread::sleep(Duration::from_millis(300));
        let again = rig
            .send_every("send2.log", "300ms")
            .arg("--max-cycles")
            .arg("6");
        let t1 = Instant::now();
        let child2 = again.spawn();
        wait_until(
            "two rounds after the restart",
            &again.log,
            Duration::from_secs(60),
            || read_log(&again.log).matches(SWITCHED).count() >= 3,
        );
        stop.store(true, Ordering::SeqCst);
        h.join().unwrap();
        let res = finish(child2, t1, Duration::from_secs(90), &again.log);
        assert!(res.status.success(), "restart: {}\n{}", res.status, res.log);
        assert!(
            res.log.contains("removed what an earlier run left in qemu"),
            "no leftovers removed: {}",
            res.log
        );
    });
    let _ = t0;
    let (left, bitmaps) = rig.qsd.vdrep_objects();
    assert!(left.is_empty(), "left in qemu: {left:?}");
    assert_eq!(bitmaps.len(), 2, "one bitmap per disk: {bitmaps:?}");
    let prefixes = rig.check_prefixes(SIZE);
    eprintln!(
        "points (point, writes): {prefixes:?}; {} writes",
        w.written()
    );
    assert_eq!(
        prefixes.last().map(|p| p.1),
        Some(w.written()),
        "a write was missed"
    );
    let q = rig.dir.join("qsd");
    let last = rig.failover(prefixes.last().unwrap().0);
    compare(&q.join("os.raw"), "raw", &last.join("os.vhd")).unwrap();
    compare(&q.join("data.qcow2"), "qcow2", &last.join("data.vhd")).unwrap();
    rig.qsd.stop();
}
