//! Issue 16: a receiver at its connection limit (`--max-connections`) refuses one more
//! connection as busy, naming the limit; the sender retries along its schedule (class
//! `target_busy`, health Warning: receivers scale out, a full one is no fault of the sender)
//! and finishes once a slot frees.

use std::time::{Duration, Instant};

use vdrep_tests::hostile::{Peer, Target};
use vdrep_tests::images::random_raw;
use vdrep_tests::procs::{assert_replica_identical, finish, Send};

const MIB: u64 = 1 << 20;

#[test]
fn a_sender_refused_by_a_full_receiver_retries_as_a_warning_and_finishes_once_a_slot_frees() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let Target { rt, rx, to, tls } = Target::start(
        d,
        &["hv01", "evil"],
        &["hv01=vm1", "evil=vm2"],
        &["--max-connections", "1"],
        1,
    );
    let store = d.join("store");
    // Another sender holds the only slot.
    let holder = rt.block_on(async {
        let mut p = Peer::connect(to, &tls, "evil").await.unwrap();
        p.control().await;
        p
    });
    let img = random_raw(&d.join("disk.raw"), 4 * MIB);
    let send = Send::new(
        &to.to_string(),
        &tls,
        "hv01",
        "vm1",
        &[&img],
        &d.join("s.log"),
    )
    .arg("--give-up-after")
    .arg("120s");
    let t0 = Instant::now();
    let child = send.spawn();
    assert!(
        vdrep_tests::procs::wait_for_log(&send.log, "--max-connections", Duration::from_secs(30)),
        "the sender names the receiver's limit:\n{}",
        vdrep_tests::procs::read_log(&send.log)
    );
    drop(holder);
    let r = finish(child, t0, Duration::from_secs(120), &send.log);
    let s = r.ok();
    assert!(s["retries"].as_u64().unwrap() >= 1, "{s}");
    let log = vdrep_tests::procs::read_log(&send.log);
    assert!(log.contains("target_busy"), "class target_busy:\n{log}");
    assert!(
        !log.contains("VM Critical"),
        "a busy receiver is no fault: Warning\n{log}"
    );
    assert_replica_identical(&img, "raw", &store.join("vm1").join("disk.vhd"));
    let rlog = std::fs::read_to_string(&rx.log).unwrap();
    assert!(rlog.contains("connection_limit"), "{rlog}");
}
