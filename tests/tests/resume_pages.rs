//! Issue 16, finding 3, end to end: a copy whose durable progress has more ranges than one
//! control frame can carry (~65,534) still resumes. The reproduction: a raw image of
//! 100,000 4 KiB islands 32 KiB apart, the sender killed with SIGKILL part-way (paced by a
//! bandwidth limit so the kills land mid-copy); before protocol version 4 the restarted send
//! failed every time with "malformed frame from peer", now the progress crosses in pages and
//! the replica compares equal with `qemu-img compare`.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use vdrep_tests::procs::{assert_replica_identical, certs, read_log, Receiver, Send};

const ISLANDS: u64 = 100_000;
const ISLAND: usize = 4096;
const STRIDE: u64 = 32 << 10;
/// More ranges than a version-3 `DiskOpened` can carry in one 1 MiB frame.
const ONE_FRAME: u64 = 65_534;

fn islands(path: &Path) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(ISLANDS * STRIDE).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x1515_0016);
    let mut buf = vec![0u8; ISLAND];
    for i in 0..ISLANDS {
        rng.fill(&mut buf[..]);
        f.write_all_at(&buf, i * STRIDE).unwrap();
    }
}

/// `resumed_bytes` of every `disk opened` line of the receiver's log, in order.
fn resumed(log: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains("disk opened"))
        .filter_map(|l| {
            l.split("resumed_bytes=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

#[test]
fn a_copy_of_100k_islands_killed_part_way_resumes_with_its_whole_progress() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let tls = certs(&d.join("tls"), &["hv01"]);
    let store = d.join("store");
    let rx = Receiver::start(&store, &tls, &["hv01=vm1"]);
    let img = d.join("islands.raw");
    islands(&img);
    let send = Send::new(&rx.to(), &tls, "hv01", "vm1", &[&img], &d.join("s.log"))
        .arg("--give-up-after")
        .arg("30s")
        .arg("--bandwidth")
        .arg("200Mbit");
    let t0 = Instant::now();
    let budget = Duration::from_secs(400);
    // Kill the sender every few seconds until the receiver holds more durable islands than
    // one frame can list; each restart must get past its open (on the old protocol the
    // restart after that point exits with a malformed-frame error instead).
    let mut kills = 0;
    loop {
        let mut child = send.spawn();
        std::thread::sleep(Duration::from_secs(3));
        if let Ok(Some(st)) = child.try_wait() {
            panic!(
                "sender ended ({st}) before it was killed (kill {kills}); log:\n{}",
                read_log(&send.log)
            );
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        // The receiver's final checkpoint for the dropped connection lands shortly after.
        std::thread::sleep(Duration::from_millis(800));
        let r = resumed(&rx.log_text());
        let last = *r.last().unwrap_or(&0);
        if last / ISLAND as u64 > ONE_FRAME {
            break;
        }
        assert!(t0.elapsed() < budget / 2, "no progress: {r:?}");
    }
    let res = send.run(budget.saturating_sub(t0.elapsed()));
    let s = res.ok();
    let r = resumed(&rx.log_text());
    let last = *r.last().unwrap();
    // The finishing run resumed from a progress of more ranges than one frame carries.
    assert!(
        last / ISLAND as u64 > ONE_FRAME,
        "the last open resumed only {last} bytes: {r:?}"
    );
    assert!(last < ISLANDS * ISLAND as u64, "{r:?}");
    let read = s["read_bytes"].as_u64().unwrap();
    assert!(
        read + last <= ISLANDS * ISLAND as u64 + (64 << 20),
        "the last run read {read} bytes after resuming {last}: not from the progress"
    );
    assert_replica_identical(&img, "raw", &store.join("vm1").join("islands.vhd"));
    eprintln!(
        "{kills} kills; resumed per open {r:?}; last run read {read} bytes in {:?}",
        res.elapsed
    );
}
