//! Receiver limits (issue 16): what one connection may make the receiver hold, refused with
//! a non-recoverable error that names the limit.

use std::time::Duration;

use vdrep_tests::images::{make_image, scattered_writes, Kind};
use vdrep_tests::procs::{certs, Receiver, Send};

const MIB: u64 = 1 << 20;

#[test]
fn a_connection_opening_more_disks_than_the_receivers_limit_is_refused_naming_the_limit() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let tls = certs(&d.join("tls"), &["hv01"]);
    let store = d.join("store");
    let rx = Receiver::start_env(
        &store,
        &tls,
        &["hv01=vm1"],
        &[("VDREP_MAX_DISKS_PER_CONNECTION", "1")],
    );
    let a = make_image(d, "a", Kind::Raw, 4 * MIB, &scattered_writes(1, 4 * MIB, 2));
    let b = make_image(d, "b", Kind::Raw, 4 * MIB, &scattered_writes(2, 4 * MIB, 2));
    let r = Send::new(&rx.to(), &tls, "hv01", "vm1", &[&a, &b], &d.join("s.log"))
        .arg("--give-up-after")
        .arg("20s")
        .run(Duration::from_secs(60));
    assert_eq!(
        r.code(),
        Some(1),
        "non-recoverable, not retried:\n{}",
        r.log
    );
    assert!(
        r.log.contains("--max-disks-per-connection 1"),
        "the refusal names the limit:\n{}",
        r.log
    );
    assert!(
        !r.log.contains("reconnecting"),
        "a refusal was retried:\n{}",
        r.log
    );
    drop(rx);
}
