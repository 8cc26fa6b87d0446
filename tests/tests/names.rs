//! Disk names end to end (issue 16, finding 6): a disk file whose stem is longer than the 64
//! characters a receiver accepts is shortened by the sender (first characters, `-`, 8 hex
//! digits of the stem's BLAKE3) and replicates, where it used to be refused with
//! "invalid disk name".

use std::time::Duration;

use vdrep_tests::images::{make_image, scattered_writes, Kind};
use vdrep_tests::procs::{assert_replica_identical, certs, Receiver, Send};

const MIB: u64 = 1 << 20;

#[test]
fn a_disk_whose_file_stem_is_over_64_characters_replicates_under_its_shortened_name() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let tls = certs(&d.join("tls"), &["hv01"]);
    let store = d.join("store");
    let rx = Receiver::start(&store, &tls, &["hv01=vm1"]);
    let stem = format!(
        "data-disk-of-a-very-long-named-virtual-machine-{}",
        "x".repeat(30)
    );
    assert!(stem.len() > 64);
    let img = make_image(
        d,
        &stem,
        Kind::Raw,
        4 * MIB,
        &scattered_writes(7, 4 * MIB, 3),
    );
    let r = Send::new(&rx.to(), &tls, "hv01", "vm1", &[&img], &d.join("s.log"))
        .run(Duration::from_secs(60));
    r.ok();
    let hex = &blake3::hash(stem.as_bytes()).to_hex()[..8];
    let name = format!("{}-{hex}", &stem[..55]);
    assert_eq!(name.len(), 64);
    assert_replica_identical(&img, "raw", &store.join("vm1").join(format!("{name}.vhd")));
}
