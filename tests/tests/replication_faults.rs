//! Faults during initial replication, across real processes on 127.0.0.1: kill -9 of the
//! sender or the receiver at seeded random points (each run resumes from the last durable
//! progress, never from zero, and ends bit-exact), bits flipped on the wire by a relay
//! (caught by BLAKE3, healed by resend), and a full store (a clear recoverable error, exit
//! 75, nothing committed).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use vdrep_tests::images::random_raw;
use vdrep_tests::procs::{assert_replica_identical, certs, finish, read_log, Receiver, Send};
use vdrep_tests::relay::Relay;

const MIB: u64 = 1 << 20;

/// The durable progress the receiver reported each time the disk was opened
/// (`disk opened … resumed_bytes=N`), in order.
fn resumed_on_open(receiver_log: &str) -> Vec<u64> {
    receiver_log
        .lines()
        .filter(|l| l.contains("disk opened"))
        .filter_map(|l| {
            let v = l.split("resumed_bytes=").nth(1)?;
            v.split_whitespace().next()?.parse().ok()
        })
        .collect()
}

/// Waits until the receiver has logged `n` disk opens: a kill is meant to land after its
/// run opened the disk (a reconnecting sender first waits for its previous connection's
/// final checkpoint, `receiver/effects.rs`, which can take a second on a busy disk).
fn wait_for_opens(rx: &Receiver, n: usize, within: Duration) {
    let end = Instant::now() + within;
    loop {
        let seen = resumed_on_open(&rx.log_text()).len();
        if seen >= n {
            return;
        }
        assert!(
            Instant::now() < end,
            "the disk was opened {seen} times, not {n}, within {within:?}; receiver log:\n{}",
            rx.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn replica(store: &Path, vm: &str, disk: &str) -> PathBuf {
    store.join(vm).join(format!("{disk}.vhd"))
}

/// Kills the sender `kills` times at seeded random moments (each after some progress could
/// become durable), restarts it each time, lets the last run finish, and checks the replica.
fn kill_sender_repeatedly(seed: u64, size: u64, kills: usize, budget: Duration) {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let tls = certs(&d.join("tls"), &["hv01"]);
    let store = d.join("store");
    let rx = Receiver::start(&store, &tls, &["hv01=vm1"]);
    let img = random_raw(&d.join("disk.raw"), size);
    let send = Send::new(&rx.to(), &tls, "hv01", "vm1", &[&img], &d.join("s.log"))
        .arg("--give-up-after")
        .arg("30s")
        // Paced so that every seeded kill lands mid-copy whatever the machine's speed.
        .arg("--bandwidth")
        .arg("250Mbit");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let t0 = Instant::now();
    for i in 0..kills {
        let mut child = send.spawn();
        wait_for_opens(&rx, i + 1, Duration::from_secs(20));
        // Past the 0.5 s checkpoint interval, so each run leaves durable progress behind.
        let ms = rng.gen_range(1300..2600);
        std::thread::sleep(Duration::from_millis(ms));
        if let Ok(Some(st)) = child.try_wait() {
            panic!("sender finished ({st}) before kill {i}: the disk is too small for the test");
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        assert!(
            !replica(&store, "vm1", "disk").exists(),
            "committed while still copying"
        );
    }
    let last = send.run(budget.saturating_sub(t0.elapsed()));
    let s = last.ok();
    assert_replica_identical(&img, "raw", &replica(&store, "vm1", "disk"));

    let resumed = resumed_on_open(&rx.log_text());
    assert_eq!(resumed.len(), kills + 1, "one open per run: {resumed:?}");
    assert_eq!(resumed[0], 0);
    // Each restart found durable progress, and it only grew.
    assert!(
        resumed.windows(2).all(|w| w[1] >= w[0]) && resumed[1] > 0,
        "progress did not survive the kills: {resumed:?}"
    );
    // The last run read only what was not yet durable: not from zero.
    let read = s["read_bytes"].as_u64().unwrap();
    assert!(
        read + resumed[kills] <= size + 64 * MIB && read < size,
        "last run read {read} of {size} bytes after resuming {}",
        resumed[kills]
    );
    eprintln!("sender kills: resumed per run {resumed:?}, last run read {read} of {size}");
}

#[test]
fn killing_the_sender_at_5_random_points_resumes_each_time_and_ends_bit_exact() {
    kill_sender_repeatedly(0x5eed_0001, 512 * MIB, 5, Duration::from_secs(55));
}

#[test]
#[ignore = "long: 20 sender kills during a 2 GiB copy (a few minutes)"]
fn killing_the_sender_at_20_random_points_of_a_big_copy_ends_bit_exact() {
    kill_sender_repeatedly(0x5eed_0002, 2048 * MIB, 20, Duration::from_secs(280));
}

/// Kills the receiver `kills` times at seeded random moments and restarts it on the same
/// port after a random pause; one sender runs throughout, reconnecting by itself.
fn kill_receiver_repeatedly(seed: u64, size: u64, kills: usize, budget: Duration) {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let tls = certs(&d.join("tls"), &["hv01"]);
    let store = d.join("store");
    let mut rx = Receiver::start(&store, &tls, &["hv01=vm1"]);
    let img = random_raw(&d.join("disk.raw"), size);
    let send = Send::new(&rx.to(), &tls, "hv01", "vm1", &[&img], &d.join("s.log"))
        .arg("--give-up-after")
        .arg("30s")
        // Paced so that every seeded kill lands mid-copy whatever the machine's speed.
        .arg("--bandwidth")
        .arg("250Mbit");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let t0 = Instant::now();
    let mut child = send.spawn();
    for i in 0..kills {
        // Each receiver life (the first, then one per restart) first sees the sender
        // reconnect and open the disk; the sender's retries take their own time.
        wait_for_opens(&rx, i + 1, Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(rng.gen_range(1300..2600)));
        if let Ok(Some(st)) = child.try_wait() {
            panic!(
                "sender ended ({st}) before receiver kill {i}:\n{}",
                read_log(&send.log)
            );
        }
        rx.kill9();
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..800)));
        rx.restart();
    }
    let r = finish(child, t0, budget.saturating_sub(t0.elapsed()), &send.log);
    let s = r.ok();
    assert_replica_identical(&img, "raw", &replica(&store, "vm1", "disk"));
    assert!(s["retries"].as_u64().unwrap() >= kills as u64, "{s}");
    let resumed = resumed_on_open(&rx.log_text());
    assert!(
        resumed.len() > kills,
        "one open per connection: {resumed:?}"
    );
    assert!(
        resumed[1..].iter().any(|&r| r > 0),
        "no restart resumed durable progress: {resumed:?}"
    );
    // Work redone after the kills stays bounded: far less than a copy from zero per kill.
    let read = s["read_bytes"].as_u64().unwrap();
    assert!(read < size * 2, "read {read} bytes for a {size}-byte disk");
    eprintln!("receiver kills: resumed per open {resumed:?}, sender read {read} of {size}");
}

#[test]
fn killing_the_receiver_at_5_random_points_resumes_on_the_same_port_and_ends_bit_exact() {
    kill_receiver_repeatedly(0x5eed_0003, 512 * MIB, 5, Duration::from_secs(55));
}

#[test]
#[ignore = "long: 20 receiver kills during a 2 GiB copy (a few minutes)"]
fn killing_the_receiver_at_20_random_points_of_a_big_copy_ends_bit_exact() {
    kill_receiver_repeatedly(0x5eed_0004, 2048 * MIB, 20, Duration::from_secs(280));
}

#[test]
fn bits_flipped_on_the_wire_are_caught_by_blake3_and_healed_by_resend() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let tls = certs(&d.join("tls"), &["hv01"]);
    let store = d.join("store");
    let rx = Receiver::start(&store, &tls, &["hv01=vm1"]);
    // Random data travels raw, so only BLAKE3 can notice a flipped bit.
    let img = random_raw(&d.join("disk.raw"), 96 * MIB);
    let relay = Relay::start(&tls, "hv01", rx.addr, 7);
    let r = Send::new(
        &relay.addr.to_string(),
        &tls,
        "hv01",
        "vm1",
        &[&img],
        &d.join("s.log"),
    )
    .arg("--give-up-after")
    .arg("20s")
    .run(Duration::from_secs(50));
    let s = r.ok();
    let flipped = relay.flipped();
    assert!(flipped >= 10, "the relay corrupted only {flipped} extents");
    assert_replica_identical(&img, "raw", &replica(&store, "vm1", "disk"));
    assert_eq!(s["resent_extents"].as_u64().unwrap(), flipped, "{s}");
    let log = rx.log_text();
    let refused = log
        .lines()
        .filter(|l| l.contains("extent refused") && l.contains("HashMismatch"))
        .count() as u64;
    assert_eq!(refused, flipped, "receiver log:\n{log}");
}

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("cannot run mount");
        assert!(
            out.status.success(),
            "mounting a tmpfs needs root (or CAP_SYS_ADMIN): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_store_is_a_recoverable_error_given_up_with_exit_75_and_nothing_committed() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let tls = certs(&d.join("tls"), &["hv01"]);
    let store = d.join("store");
    let _fs = Tmpfs::mount(&store, "64m");
    let rx = Receiver::start(&store, &tls, &["hv01=vm1"]);
    let img = random_raw(&d.join("disk.raw"), 128 * MIB);
    let r = Send::new(&rx.to(), &tls, "hv01", "vm1", &[&img], &d.join("s.log"))
        .arg("--give-up-after")
        .arg("4s")
        .run(Duration::from_secs(50));
    assert_eq!(r.code(), Some(75), "{}", r.log);
    assert!(r.elapsed < Duration::from_secs(30), "took {:?}", r.elapsed);
    let err = r
        .log
        .lines()
        .find(|l| l.starts_with("vdrep: error:"))
        .unwrap_or_default();
    assert!(
        err.contains("target_full"),
        "error does not say the store is full: {err}"
    );
    // Enable protection's capacity check sees the store cannot hold the disk's allocated
    // bytes before anything is sent (a store that fills up later fails a write, naming the
    // replica): recoverable either way.
    assert!(
        err.contains("disk.vhd") || err.contains("bytes free: free space at the receiver"),
        "error names neither the replica nor the store's free space: {err}"
    );
    let state = d.join("vdrep"); // XDG_STATE_HOME of the test's sender
    let out = vdrep_tests::vdrep_ok(&["jobs", "--state", state.to_str().unwrap(), "--json"]);
    let jobs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let job = &jobs[0];
    assert_eq!(job["kind"], "enable-protection", "{jobs:#}");
    assert_eq!(job["state"], "failed");
    assert_eq!(job["error"]["recoverable"], true, "{jobs:#}");
    assert_eq!(job["steps"][3]["name"], "target capacity");
    assert_eq!(job["steps"][3]["state"], "failed");
    assert!(
        r.log.contains("reconnecting"),
        "a full store was not retried:\n{}",
        r.log
    );
    // Nothing committed: only the working image.
    let names: Vec<String> = std::fs::read_dir(store.join("vm1"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n == "disk.vhd"), "{names:?}");
    assert!(names.iter().any(|n| n == "disk.vhd.partial"), "{names:?}");
    assert!(!rx.log_text().contains("initial replication committed"));
}
