//! Issue 16: a receiver at its connection limit (`--max-connections`) refuses one more
//! connection as busy, naming the limit; the sender retries along its schedule (class
//! `target_busy`, health Warning: receivers scale out, a full one is no fault of the sender)
//! and finishes once a slot frees.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use vdrep_tests::hostile::Peer;
use vdrep_tests::images::random_raw;
use vdrep_tests::procs::{assert_replica_identical, certs, finish, Send};
use vdrep_tests::roles::Role;

const MIB: u64 = 1 << 20;

#[test]
fn a_sender_refused_by_a_full_receiver_retries_as_a_warning_and_finishes_once_a_slot_frees() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let tls = certs(&d.join("tls"), &["hv01", "evil"]);
    let store = d.join("store");
    let args: Vec<String> = [
        "receive",
        "--listen",
        "127.0.0.1:0",
        "--store",
        store.to_str().unwrap(),
        "--tls",
        tls.to_str().unwrap(),
        "--allow",
        "hv01=vm1",
        "--allow",
        "evil=vm2",
        "--max-connections",
        "1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let rx = Role::start(&args, &d.join("receiver.log"), &["listening on "]);
    let to: SocketAddr = rx.addr("listening on ").parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
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
