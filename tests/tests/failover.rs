//! Recovery points, test failover and unprotect across real processes (issue parts 4 and 7):
//! `vdrep points` lists the committed initial replication and every cycle oldest first;
//! `vdrep failover --test` writes each point as a fixed VHD equal to the source as it was,
//! while replication runs and without blocking it; outputs are verified against the
//! sender's digest; unknown VMs and points are clear errors; `vdrep unprotect` is refused
//! while a receiver holds the disk and afterwards leaves nothing behind.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use vdrep::digest::DigestBuilder;
use vdrep::sink::local::LocalStore;
use vdrep::sink::{DiskKey, RecoveryPoint, ReplicaStore};
use vdrep_proto::{Guid, RangeSet};
use vdrep_tests::images::seeded_raw;
use vdrep_tests::procs::{certs, finish, Receiver, Send};
use vdrep_tests::{log_write, require_qemu, run, vdrep, vdrep_ok};

const MIB: u64 = 1 << 20;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `vdrep points --store STORE --vm VM --json`, parsed.
fn points(store: &Path, vm: &str) -> serde_json::Value {
    let out = vdrep_ok(&["points", "--store", s(store), "--vm", vm, "--json"]);
    serde_json::from_slice(&out.stdout).expect("points --json prints JSON")
}

/// The cycles listed for the VM's first disk, in listed order.
fn cycles(doc: &serde_json::Value) -> Vec<u64> {
    doc["disks"][0]["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["cycle"].as_u64().unwrap())
        .collect()
}

/// `vdrep failover --test` of `point` into `out`; returns stdout.
fn failover(store: &Path, vm: &str, point: Option<&str>, out: &Path) -> String {
    let mut args = vec!["failover", "--test", "--store", s(store), "--vm", vm];
    if let Some(p) = point {
        args.extend(["--point", p]);
    }
    args.extend(["--out", s(out)]);
    String::from_utf8_lossy(&vdrep_ok(&args).stdout).into_owned()
}

/// The first `size` bytes of a failover output (the disk; the rest is padding and footer),
/// after checking the file is the fixed-VHD layout.
fn disk_bytes(vhd: &Path, size: u64) -> Vec<u8> {
    let b = std::fs::read(vhd).unwrap();
    assert_eq!(
        b.len() as u64,
        size.div_ceil(MIB) * MIB + 512,
        "{}",
        vhd.display()
    );
    assert_eq!(&b[b.len() - 512..b.len() - 504], b"conectix");
    b[..size as usize].to_vec()
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn test_failover_writes_every_point_as_the_source_was_while_replication_runs() {
    require_qemu();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tls = certs(&d.join("tls"), &["hv01"]);
    let store = d.join("store");
    let _rx = Receiver::start(&store, &tls, &["hv01=vm1"]);
    std::fs::create_dir_all(d.join("src")).unwrap();
    let size = 6 * MIB + 4096; // not a multiple of 1 MiB: the output is padded
    let src = seeded_raw(&d.join("src/d1.raw"), size, 7, 64 << 10, 3);
    let mut states = vec![std::fs::read(&src).unwrap()];
    let send = Send::new(&_rx.to(), &tls, "hv01", "vm1", &[&src], &d.join("send.log"))
        .arg("--interval")
        .arg("2s")
        .arg("--max-cycles")
        .arg("3");
    let t0 = Instant::now();
    let child = send.spawn();
    let store_has = |n: usize| {
        let out = vdrep(&["points", "--store", s(&store), "--vm", "vm1", "--json"]);
        out.status.success()
            && serde_json::from_slice::<serde_json::Value>(&out.stdout)
                .map(|v| cycles(&v).len() >= n)
                .unwrap_or(false)
    };
    wait_until(
        "the initial replication to commit",
        Duration::from_secs(60),
        || store_has(1),
    );

    // While the sender cycles: failover of point 0 works, unprotect is refused.
    let running = d.join("fo-running");
    failover(&store, "vm1", Some("0"), &running);
    assert!(disk_bytes(&running.join("d1.vhd"), size) == states[0]);
    let refused = vdrep(&["unprotect", "--store", s(&store), "--vm", "vm1", "--yes"]);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("being replicated"), "{err}");

    // Writes through the change log, the source saved after each.
    let mut rng_data = 1u8;
    for (off, len) in [
        (0, 64 << 10),
        (3 * MIB + 512, 128 << 10),
        (6 * MIB, 4096),
        (MIB, 4096),
    ] {
        rng_data = rng_data.wrapping_mul(31).wrapping_add(17);
        let data: Vec<u8> = (0..len).map(|i| (i as u8) ^ rng_data).collect();
        log_write(&src, off, &data, &d.join("write.bin"));
        states.push(std::fs::read(&src).unwrap());
    }
    let seen = cycles(&points(&store, "vm1")).len();
    // Cycles are sequential (switch, ship, commit, wait): with point 2 not yet committed,
    // the switch of cycle 3 comes after the last write, so point 3 holds them all.
    assert!(
        seen <= 2,
        "the writes took too long ({seen} points already committed): the test cannot tell \
         which point holds them"
    );
    let res = finish(child, t0, Duration::from_secs(120), &send.log);
    res.ok();

    let doc = points(&store, "vm1");
    assert_eq!(cycles(&doc), vec![0, 1, 2, 3], "{doc:#}");
    let pts = doc["disks"][0]["points"].as_array().unwrap();
    assert_eq!(pts[0]["bytes"].as_u64(), Some(size));
    for w in pts.windows(2) {
        assert!(
            w[0]["unix"].as_u64() <= w[1]["unix"].as_u64(),
            "oldest first"
        );
        assert!(w[1]["time"].as_str().unwrap().ends_with('Z'));
    }
    assert_eq!(pts[0]["id"], pts[0]["cycle"]);
    // Every point is the source after some prefix of the writes, in order; 0 before any.
    let mut last = 0;
    for c in 0..=3u64 {
        let out = d.join(format!("fo-{c}"));
        let text = failover(&store, "vm1", Some(&c.to_string()), &out);
        if c > 0 {
            assert!(text.contains("digest verified"), "point {c}: {text}");
        }
        let got = disk_bytes(&out.join("d1.vhd"), size);
        let at = states
            .iter()
            .rposition(|st| *st == got)
            .unwrap_or_else(|| panic!("point {c} equals no state of the source"));
        assert!(at >= last, "point {c} is older than the point before it");
        last = at;
        if c == 0 {
            assert_eq!(at, 0);
        }
    }
    let latest = d.join("fo-latest");
    let text = failover(&store, "vm1", None, &latest);
    assert!(text.contains("point 3"), "{text}");
    // Cycle points carry the digest the sender computed at the switch (issue 4).
    assert!(text.contains("digest verified"), "{text}");
    assert!(text.contains(s(&latest.join("d1.vhd"))), "{text}");
    assert!(disk_bytes(&latest.join("d1.vhd"), size) == *states.last().unwrap());
    run(Command::new("qemu-img").args([
        "compare",
        "-f",
        "vpc",
        "-F",
        "raw",
        s(&latest.join("d1.vhd")),
        s(&src),
    ]));

    // Unprotect (replication stopped): replica, points, state and tracking files go.
    let hrl_files = |dir: &Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.contains(".hrl"))
            .collect()
    };
    assert!(!hrl_files(&d.join("src")).is_empty());
    let out = vdrep_ok(&[
        "unprotect",
        "--store",
        s(&store),
        "--vm",
        "vm1",
        "--disk",
        s(&src),
        "--yes",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("removed replica vm1/d1"), "{text}");
    assert!(
        hrl_files(&d.join("src")).is_empty(),
        "{:?}",
        hrl_files(&d.join("src"))
    );
    assert!(!store.join("vm1").exists(), "the VM's folder is gone");
    let after = vdrep(&["points", "--store", s(&store), "--vm", "vm1"]);
    assert_eq!(after.status.code(), Some(1));
    let err = String::from_utf8_lossy(&after.stderr);
    assert!(err.contains("holds no disks of VM \"vm1\""), "{err}");
    assert!(src.is_file(), "the source disk itself stays");
}

/// A store made through the library: disk `vm1/d` of `size` bytes, point 0 with the right
/// digest, point 1 (a changed sector) with a wrong one. Returns the images of both points.
fn store_with_digests(store: &Path, size: u64) -> (Vec<u8>, Vec<u8>) {
    let st = LocalStore::open(store).unwrap();
    let disk = st
        .open_disk(&DiskKey::new("vm1", "d").unwrap(), size, Guid([9; 16]))
        .unwrap();
    let mut img: Vec<u8> = (0..size).map(|i| (i / 512 % 251) as u8).collect();
    img[MIB as usize..2 * MIB as usize].fill(0);
    disk.write(0, &img).unwrap();
    disk.checkpoint(&RangeSet::from_range(0, size)).unwrap();
    let mut b = DigestBuilder::new(size);
    b.update(&img);
    let point = |cycle, digest| RecoveryPoint {
        cycle,
        created_unix: 1_800_000_000 + cycle,
        bytes: 512,
        digest,
    };
    disk.commit_initial(&point(0, b.finish().unwrap())).unwrap();
    let mut img1 = img.clone();
    img1[4096..4608].fill(0xEE);
    disk.begin_cycle(1).unwrap();
    disk.write(4096, &img1[4096..4608]).unwrap();
    disk.commit_cycle(&point(1, [0xAB; 32])).unwrap();
    (img, img1)
}

#[test]
fn failover_output_is_checked_against_the_senders_digest() {
    require_qemu();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let store = d.join("store");
    let size = 3 * MIB + 1536;
    let (img0, _) = store_with_digests(&store, size);
    let out = d.join("out");
    let text = failover(&store, "vm1", Some("0"), &out);
    assert!(text.contains("digest verified"), "{text}");
    let vhd = out.join("d.vhd");
    assert!(disk_bytes(&vhd, size) == img0);
    let raw = d.join("img0.raw");
    std::fs::write(&raw, &img0).unwrap();
    // qemu sees the 1 MiB-rounded size; compare the padded raw.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&raw)
        .unwrap()
        .set_len(size.div_ceil(MIB) * MIB)
        .unwrap();
    run(Command::new("qemu-img").args(["compare", "-f", "vpc", "-F", "raw", s(&vhd), s(&raw)]));
    let before = std::fs::read(&vhd).unwrap();

    // Point 1's digest does not match its bytes: exit 1, nothing replaced or left behind.
    let bad = vdrep(&[
        "failover",
        "--test",
        "--store",
        s(&store),
        "--vm",
        "vm1",
        "--point",
        "1",
        "--out",
        s(&out),
    ]);
    assert_eq!(bad.status.code(), Some(1), "{bad:?}");
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("does not match the sender's digest"), "{err}");
    assert!(
        std::fs::read(&vhd).unwrap() == before,
        "the earlier output is untouched"
    );
    let names: Vec<PathBuf> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(names, vec![vhd.clone()], "no temporary file is left");
    let json = points(&store, "vm1");
    let p = &json["disks"][0]["points"];
    assert_eq!(p[1]["digest"].as_str().unwrap(), "ab".repeat(32));
    assert_eq!(p[0]["bytes"].as_u64(), Some(512));
}

#[test]
fn unknown_vms_points_and_stores_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let store = d.join("store");
    store_with_digests(&store, 3 * MIB);
    let out = d.join("out");
    let fail = |args: &[&str], code: i32, needle: &str| {
        let o = vdrep(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    };
    let st = s(&store);
    let o = s(&out);
    fail(
        &[
            "failover", "--test", "--store", st, "--vm", "vm2", "--out", o,
        ],
        1,
        "holds no disks of VM \"vm2\"",
    );
    fail(
        &[
            "failover", "--test", "--store", st, "--vm", "vm1", "--point", "9", "--out", o,
        ],
        1,
        "recovery point 9 does not exist (points 0..=1 are kept",
    );
    fail(
        &[
            "failover", "--test", "--store", st, "--vm", "vm1", "--point", "soon", "--out", o,
        ],
        2,
        "not a recovery point id",
    );
    fail(
        &["failover", "--store", st, "--vm", "vm1", "--out", o],
        2,
        "only test failover is supported",
    );
    fail(
        &["points", "--store", st, "--vm", "vm2"],
        1,
        "holds no disks",
    );
    fail(
        &["points", "--store", st, "--vm", "../x"],
        1,
        "invalid VM name",
    );
    let nowhere = d.join("nowhere");
    fail(
        &["points", "--store", s(&nowhere), "--vm", "vm1"],
        1,
        "no vdrep store here",
    );
    assert!(!nowhere.exists(), "a read-only command creates no store");
    assert!(!out.exists(), "failed runs create no output");
    fail(
        &["unprotect", "--store", st, "--vm", "vm2"],
        1,
        "nothing to unprotect",
    );
}
