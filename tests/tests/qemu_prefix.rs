//! Every recovery point of a qemu VM is one instant of all its disks (issue 18 item 2: one
//! QMP transaction per switch for all the VM's disks). The guest writes numbered 4 KiB
//! blocks in strict order, alternating between the raw and the qcow2 disk, each write
//! complete (`O_DSYNC` through the FUSE export) before the next starts; over 30 switches
//! every point's failover must hold exactly writes 1..m for some m, and the last all of
//! them. Switching the disks one after the other (two transactions) would let a write to
//! the second disk land after the first disk's view but before its own, and fail this.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use vdrep_tests::procs::{finish, read_log, wait_for_log};
use vdrep_tests::qemu_rig::{wait_until, NumberedWriter, Rig, StopOnDrop};

const SIZE: u64 = 16 << 20;
const SWITCHED: &str = "qemu switch of the VM's disks";
const ROUNDS: usize = 32;

#[test]
fn thirty_qemu_switches_of_two_disks_each_hold_a_prefix_of_ordered_writes() {
    let mut rig = Rig::new(SIZE);
    let send = rig
        .send_every("send.log", "300ms")
        .arg("--max-cycles")
        .arg(&ROUNDS.to_string());
    let t0 = Instant::now();
    let child = send.spawn();
    assert!(
        wait_for_log(&send.log, SWITCHED, Duration::from_secs(60)),
        "no first switch: {}",
        read_log(&send.log)
    );
    let w = NumberedWriter::new(SIZE);
    let stop = AtomicBool::new(false);
    let res = std::thread::scope(|sc| {
        let h = sc.spawn(|| w.run(&rig.qsd, &stop, Duration::from_millis(1)));
        let _stop = StopOnDrop(&stop);
        // Writes through all but the last rounds: the newest point must hold them all.
        wait_until("switches", &send.log, Duration::from_secs(120), || {
            read_log(&send.log).matches(SWITCHED).count() >= ROUNDS - 2
        });
        stop.store(true, Ordering::SeqCst);
        h.join().unwrap();
        finish(child, t0, Duration::from_secs(120), &send.log)
    });
    assert!(res.status.success(), "send: {}\n{}", res.status, res.log);
    let prefixes = rig.check_prefixes(SIZE);
    eprintln!(
        "points (point, writes): {prefixes:?}; {} writes",
        w.written()
    );
    assert_eq!(prefixes.len(), ROUNDS, "a point per round");
    let distinct: std::collections::BTreeSet<u64> = prefixes.iter().map(|p| p.1).collect();
    assert!(
        distinct.len() >= ROUNDS - 6,
        "the writer did not span the switches: {prefixes:?}"
    );
    assert_eq!(
        prefixes.last().map(|p| p.1),
        Some(w.written()),
        "the newest point misses writes"
    );
}
