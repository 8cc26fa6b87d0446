//! Initial replication end to end across real processes on 127.0.0.1: images made by
//! qemu-img and written by qemu-io, replicated by `vdrep send` to `vdrep receive`, then
//! checked with `qemu-img compare`; re-runs, and the exit codes of refusals and give-ups.

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::time::Duration;

use vdrep_tests::images::{make_image, qemu_io, scattered_writes, Kind, QWrite};
use vdrep_tests::procs::{assert_replica_identical, certs, Receiver, Send};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// Any single run here finishes well within this (a hang fails instead of stalling CI).
const RUN_LIMIT: Duration = Duration::from_secs(50);

fn replica(store: &Path, vm: &str, disk: &str) -> PathBuf {
    store.join(vm).join(format!("{disk}.vhd"))
}

fn stem(p: &Path) -> String {
    p.file_stem().unwrap().to_string_lossy().into_owned()
}

#[test]
fn several_vms_with_dynamic_and_fixed_vhd_disks_replicate_bit_exact_at_once() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let tls = certs(&d.join("tls"), &["hv01", "hv02"]);
    let store = d.join("store");
    let rx = Receiver::start(&store, &tls, &["hv01=web,db", "hv02=mail"]);

    // hv01: two VMs from one --config; hv02: a third VM from its own process, concurrently.
    let web_os = make_image(
        d,
        "web-os",
        Kind::VhdDynamic,
        96 * MIB,
        &scattered_writes(1, 96 * MIB, 40),
    );
    let web_data = make_image(
        d,
        "web-data",
        Kind::VhdFixed,
        40 * MIB,
        &scattered_writes(2, 40 * MIB, 20),
    );
    let db_os = make_image(
        d,
        "db-os",
        Kind::VhdDynamic,
        64 * MIB,
        &scattered_writes(3, 64 * MIB, 30),
    );
    let db_log = make_image(
        d,
        "db-log",
        Kind::VhdDynamic,
        33 * MIB + 512 * 3,
        &scattered_writes(4, 33 * MIB, 10),
    );
    let db_raw = make_image(
        d,
        "db-raw",
        Kind::Raw,
        24 * MIB,
        &scattered_writes(5, 24 * MIB, 10),
    );
    let mail_os = make_image(
        d,
        "mail-os",
        Kind::VhdDynamic,
        80 * MIB,
        &scattered_writes(6, 80 * MIB, 40),
    );
    let mail_fixed = make_image(
        d,
        "mail-fixed",
        Kind::VhdFixed,
        16 * MIB,
        &scattered_writes(7, 16 * MIB, 8),
    );

    let cfg = d.join("send.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[vm]]\nname = \"web\"\ndisks = [{:?}, {:?}]\n\n[[vm]]\nname = \"db\"\ndisks = [{:?}, {:?}, {:?}]\n",
            web_os, web_data, db_os, db_log, db_raw
        ),
    )
    .unwrap();
    let mut hv01 = Send::new(&rx.to(), &tls, "hv01", "unused", &[], &d.join("hv01.log"));
    hv01.vm = None;
    let hv01 = hv01.arg("--config").arg(cfg.to_str().unwrap());
    let hv02 = Send::new(
        &rx.to(),
        &tls,
        "hv02",
        "mail",
        &[&mail_os, &mail_fixed],
        &d.join("hv02.log"),
    )
    .arg("--threads")
    .arg("2");

    let a = std::thread::spawn(move || hv01.run(RUN_LIMIT));
    let b = std::thread::spawn(move || hv02.run(RUN_LIMIT));
    let (a, b) = (a.join().unwrap(), b.join().unwrap());
    let sa = a.ok();
    b.ok();
    assert_eq!(
        sa["total_bytes"].as_u64().unwrap(),
        (96 + 40 + 64 + 24) * MIB + 33 * MIB + 512 * 3
    );
    // Dynamic disks are read only where allocated.
    assert!(
        sa["skipped_unallocated_bytes"].as_u64().unwrap() > 0,
        "{sa}"
    );

    for (vm, img, fmt) in [
        ("web", &web_os, "vhd"),
        ("web", &web_data, "vhd"),
        ("db", &db_os, "vhd"),
        ("db", &db_log, "vhd"),
        ("db", &db_raw, "raw"),
        ("mail", &mail_os, "vhd"),
        ("mail", &mail_fixed, "vhd"),
    ] {
        assert_replica_identical(img, fmt, &replica(&store, vm, &stem(img)));
    }
    let log = rx.log_text();
    assert_eq!(
        log.matches("initial replication committed").count(),
        7,
        "{log}"
    );
}

#[test]
fn vhdx_disks_of_one_vm_replicate_bit_exact() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let tls = certs(&d.join("tls"), &["hv01"]);
    let store = d.join("store");
    let rx = Receiver::start(&store, &tls, &["hv01=app"]);
    let os = make_image(
        d,
        "os",
        Kind::Vhdx,
        128 * MIB,
        &scattered_writes(11, 128 * MIB, 50),
    );
    let data = make_image(
        d,
        "data",
        Kind::Vhdx,
        50 * MIB,
        &scattered_writes(12, 50 * MIB, 20),
    );
    let vhd = make_image(
        d,
        "swap",
        Kind::VhdDynamic,
        20 * MIB,
        &scattered_writes(13, 20 * MIB, 5),
    );
    let r = Send::new(
        &rx.to(),
        &tls,
        "hv01",
        "app",
        &[&os, &data, &vhd],
        &d.join("s.log"),
    )
    .run(RUN_LIMIT);
    r.ok();
    assert_replica_identical(&os, "vhdx", &replica(&store, "app", "os"));
    assert_replica_identical(&data, "vhdx", &replica(&store, "app", "data"));
    assert_replica_identical(&vhd, "vhd", &replica(&store, "app", "swap"));
}

#[test]
fn a_sparse_disk_over_4_gib_with_data_near_the_end_replicates_reading_only_its_data() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let tls = certs(&d.join("tls"), &["hv01"]);
    let store = d.join("store");
    let rx = Receiver::start(&store, &tls, &["hv01=big"]);
    let size = 5 * GIB + 3 * MIB;
    let writes = [
        QWrite {
            pattern: 0x11,
            offset: 0,
            len: MIB,
        },
        // Across the 4 GiB line, where 32-bit offsets would wrap.
        QWrite {
            pattern: 0x22,
            offset: 4 * GIB - 256 * 1024,
            len: MIB,
        },
        QWrite {
            pattern: 0x33,
            offset: 4 * GIB + 7 * MIB + 512,
            len: 64 * 1024,
        },
        // The very end.
        QWrite {
            pattern: 0x44,
            offset: size - MIB - 4096,
            len: MIB + 4096,
        },
    ];
    let img = make_image(d, "big", Kind::VhdDynamic, size, &writes);
    let r = Send::new(&rx.to(), &tls, "hv01", "big", &[&img], &d.join("s.log")).run(RUN_LIMIT);
    let s = r.ok();
    assert_eq!(s["total_bytes"], size);
    // Only allocated blocks are read (a few 2 MiB blocks), not 5 GiB.
    assert!(s["read_bytes"].as_u64().unwrap() <= 16 * MIB, "{s}");
    assert_replica_identical(&img, "vhd", &replica(&store, "big", "big"));
}

#[test]
fn data_between_zero_blocks_travels_as_one_frame_per_read_and_the_replica_stays_sparse() {
    use std::os::unix::fs::MetadataExt;
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let tls = certs(&d.join("tls"), &["hv01"]);
    let store = d.join("store");
    let rx = Receiver::start(&store, &tls, &["hv01=vm1"]);
    // 64 KiB of data every 128 KiB over 4 MiB: 32 data runs between 64 KiB zero gaps.
    let writes: Vec<QWrite> = (0..32u64)
        .map(|k| QWrite {
            pattern: 0x10 + k as u8,
            offset: k * 128 * 1024,
            len: 64 * 1024,
        })
        .collect();
    let img = make_image(d, "gaps", Kind::Vhdx, 64 * MIB, &writes);
    let r = Send::new(&rx.to(), &tls, "hv01", "vm1", &[&img], &d.join("s.log")).run(RUN_LIMIT);
    let s = r.ok();
    // One sparse write per 1 MiB read, not one write per data run.
    assert!(s["extents"].as_u64().unwrap() <= 8, "{s}");
    assert_eq!(
        s["skipped_zero_bytes"].as_u64().unwrap() % (64 * 1024),
        0,
        "{s}"
    );
    let rep = replica(&store, "vm1", "gaps");
    assert_replica_identical(&img, "vhdx", &rep);
    // The zero gaps inside the frames were not written: about 2 MiB allocated, not 4.
    let allocated = std::fs::metadata(&rep).unwrap().blocks() * 512;
    assert!(allocated < 3 * MIB, "replica allocates {allocated} bytes");
}

#[test]
fn at_high_levels_consecutive_reads_travel_as_joined_4_mib_extents_bit_exact() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let tls = certs(&d.join("tls"), &["hv01"]);
    let store = d.join("store");
    let rx = Receiver::start(&store, &tls, &["hv01=vm1"]);
    // 12 MiB of data in one run (twelve 1 MiB reads), then a zero gap, then 3 MiB more that
    // ends 512 bytes past a MiB boundary, so joins meet a gap and a short last read.
    let writes = [
        QWrite {
            pattern: 0x5a,
            offset: 0,
            len: 12 * MIB,
        },
        QWrite {
            pattern: 0x3c,
            offset: 20 * MIB,
            len: 3 * MIB + 512,
        },
    ];
    let img = make_image(d, "joined", Kind::VhdDynamic, 32 * MIB, &writes);
    let r = Send::new(&rx.to(), &tls, "hv01", "vm1", &[&img], &d.join("s.log"))
        .arg("--fixed-compression")
        .arg("--compression-level=6")
        .run(RUN_LIMIT);
    let s = r.ok();
    // Without joins: 12 + 4 data extents of at most 1 MiB.
    assert!(s["extents"].as_u64().unwrap() < 16, "{s}");
    assert_replica_identical(&img, "vhd", &replica(&store, "vm1", "joined"));
}

#[test]
fn sending_a_committed_disk_again_resyncs_only_the_changed_pages_and_follows_the_source() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let tls = certs(&d.join("tls"), &["hv01"]);
    let store = d.join("store");
    let rx = Receiver::start(&store, &tls, &["hv01=vm1"]);
    let img = make_image(
        d,
        "os",
        Kind::VhdDynamic,
        64 * MIB,
        &scattered_writes(21, 64 * MIB, 30),
    );
    let send = Send::new(&rx.to(), &tls, "hv01", "vm1", &[&img], &d.join("s.log"));
    let first = send.run(RUN_LIMIT);
    let read1 = first.count("read_bytes");
    assert!(read1 > 0);
    assert_replica_identical(&img, "vhd", &replica(&store, "vm1", "os"));

    // New data, overwritten data and zeroed data between the runs.
    qemu_io(
        &img,
        "vhd",
        &[
            QWrite {
                pattern: 0x99,
                offset: 10 * MIB + 512,
                len: 3 * MIB,
            },
            QWrite {
                pattern: 0x98,
                offset: 60 * MIB,
                len: MIB,
            },
            QWrite {
                pattern: 0,
                offset: 0,
                len: MIB,
            },
        ],
    );
    let second = send.run(RUN_LIMIT);
    // A one-shot send of a committed disk is a resync (issue 6): only the changed pages
    // (5 MiB, one range not page-aligned) travel, committed as the next recovery point.
    let changed = second.count("resync_changed_bytes");
    assert!(
        (5 * MIB..=6 * MIB).contains(&changed),
        "{:?}",
        second.summary
    );
    assert!(second.count("wire_bytes") < read1, "{:?}", second.summary);
    assert_eq!(second.count("retries"), 0);
    assert_replica_identical(&img, "vhd", &replica(&store, "vm1", "os"));
    let log = rx.log_text();
    assert_eq!(
        log.matches("initial replication committed").count(),
        1,
        "{log}"
    );
    assert_eq!(
        log.matches("cycle committed as a recovery point").count(),
        1,
        "{log}"
    );
}

#[test]
fn an_unreachable_receiver_is_given_up_on_after_give_up_after_with_exit_75() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let tls = certs(&d.join("tls"), &["hv01"]);
    let img = make_image(
        d,
        "os",
        Kind::VhdDynamic,
        8 * MIB,
        &scattered_writes(31, 8 * MIB, 4),
    );
    // A bound UDP port that never answers: packets vanish, as with a dead host.
    let hole = UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = hole.local_addr().unwrap().to_string();
    let r = Send::new(&to, &tls, "hv01", "vm1", &[&img], &d.join("s.log"))
        .arg("--give-up-after")
        .arg("3s")
        .run(RUN_LIMIT);
    assert_eq!(r.code(), Some(75), "{}", r.log);
    assert!(
        r.elapsed >= Duration::from_secs(3) && r.elapsed < Duration::from_secs(12),
        "gave up after {:?}, expected about 3 s",
        r.elapsed
    );
    // One handshake that never completes is bounded by the deadline (QUIC ignores ICMP, so
    // without that bound the 15 s idle timeout would decide).
    let err = r
        .log
        .lines()
        .find(|l| l.starts_with("vdrep: error:"))
        .unwrap_or_default();
    assert!(err.contains(&format!("receiver {to}")), "{}", r.log);
    assert!(err.contains("timed out"), "{}", r.log);
}

#[test]
fn a_sender_with_another_ca_is_refused_at_once_with_exit_1_naming_peer_and_certificate() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let tls = certs(&d.join("tls"), &["hv01"]);
    let rogue = certs(&d.join("rogue"), &["hv01"]);
    let store = d.join("store");
    let rx = Receiver::start(&store, &tls, &["hv01=vm1"]);
    let img = make_image(
        d,
        "os",
        Kind::VhdDynamic,
        8 * MIB,
        &scattered_writes(41, 8 * MIB, 4),
    );
    let r = Send::new(&rx.to(), &rogue, "hv01", "vm1", &[&img], &d.join("s.log")).run(RUN_LIMIT);
    assert_eq!(r.code(), Some(1), "{}", r.log);
    assert!(r.elapsed < Duration::from_secs(5), "took {:?}", r.elapsed);
    let err = r
        .log
        .lines()
        .find(|l| l.starts_with("vdrep: error:"))
        .unwrap_or_default();
    assert!(
        err.contains(&rx.to()),
        "error does not name the receiver: {err}"
    );
    assert!(
        err.contains("certificate"),
        "error does not name the certificate problem: {err}"
    );
    assert!(
        !r.log.contains("reconnecting"),
        "a certificate problem was retried:\n{}",
        r.log
    );
    assert!(
        vdrep_tests::procs::wait_for_log(&rx.log, "refused connection", Duration::from_secs(5)),
        "receiver did not log the refusal:\n{}",
        rx.log_text()
    );
    assert!(
        !store.join("vm1").exists(),
        "something was stored for a refused sender"
    );
}

#[test]
fn a_sender_asking_for_another_senders_vm_is_refused_with_exit_1() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let tls = certs(&d.join("tls"), &["hv01", "hv02"]);
    let store = d.join("store");
    let rx = Receiver::start(&store, &tls, &["hv01=vm1", "hv02=vm2"]);
    let img = make_image(
        d,
        "os",
        Kind::VhdDynamic,
        8 * MIB,
        &scattered_writes(51, 8 * MIB, 4),
    );
    let r = Send::new(&rx.to(), &tls, "hv02", "vm1", &[&img], &d.join("s.log")).run(RUN_LIMIT);
    assert_eq!(r.code(), Some(1), "{}", r.log);
    assert!(r.elapsed < Duration::from_secs(5), "took {:?}", r.elapsed);
    assert!(r.log.contains("not authorised for VM vm1"), "{}", r.log);
    assert!(
        !r.log.contains("reconnecting"),
        "a refusal was retried:\n{}",
        r.log
    );
    let log = rx.log_text();
    assert!(
        log.contains("refused: sender is not authorised for this VM"),
        "{log}"
    );
    assert!(
        log.contains("sender=hv02") && log.contains("vm=vm1"),
        "{log}"
    );
    assert!(
        !store.join("vm1").exists(),
        "something was stored for an unauthorised VM"
    );
}

#[test]
fn a_sender_unknown_to_the_receiver_is_refused_with_exit_1() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let tls = certs(&d.join("tls"), &["hv01", "hv03"]);
    let store = d.join("store");
    let rx = Receiver::start(&store, &tls, &["hv01=vm1"]);
    let img = make_image(
        d,
        "os",
        Kind::VhdDynamic,
        8 * MIB,
        &scattered_writes(61, 8 * MIB, 4),
    );
    let r = Send::new(&rx.to(), &tls, "hv03", "vm1", &[&img], &d.join("s.log")).run(RUN_LIMIT);
    assert_eq!(r.code(), Some(1), "{}", r.log);
    assert!(r.log.contains("hv03 is not authorised"), "{}", r.log);
    assert!(rx
        .log_text()
        .contains("refused connection: sender is not in --allow"));
    assert!(!store.join("vm1").exists());
}
