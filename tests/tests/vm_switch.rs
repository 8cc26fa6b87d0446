//! One log switch per VM (issue 17, items 1–2): all disks of a VM switch their change logs
//! at one instant, so every recovery point of the VM holds a prefix of its writes.
//!
//! The method: a VM with two disks (raw and fixed VHD) replicated with a short `--interval`;
//! a writer logs numbered 4 KiB writes in strict order, alternating between the disks, each
//! complete before the next starts (`vdrep log-write`). Write `k` goes to disk `(k-1) % 2`
//! at slot `(k-1) / 2` and carries its number. Every point's failover must hold exactly the
//! writes 1..m for some m, and the last point all of them. The sender's test hook
//! (`VDREP_TEST_SWITCH_PAUSE`) pauses each switch between the two disks, so writes always
//! arrive in the middle of a switch: a per-disk switch (the code before issue 17) puts
//! writes made during the pause into the first disk's next cycle and the second disk's
//! current one, and fails; the VM-wide switch holds them until every disk has switched.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use vdrep_tests::images::zero_vm_disks;
use vdrep_tests::numbered::Writer;
use vdrep_tests::procs::{certs, finish, read_log, wait_for_log, Receiver, Send};
use vdrep_tests::{require_qemu, vdrep, vdrep_ok};

const MIB: u64 = 1 << 20;
const SIZE: u64 = 8 * MIB;
/// The strict-order writer's writes (`vdrep_tests::numbered`).
const WRITES: vdrep_tests::numbered::Numbered = vdrep_tests::numbered::Numbered {
    magic: *b"VDREPW17",
    disks: 2,
};
/// The hook's log line (`vdrep::tracking::test_hook::PAUSED_LOG`).
const PAUSED: &str = "test hook: log switch paused between disks";

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The VM: `os.raw` and `data.vhd` (fixed), both zero, their receiver and certificates.
struct Vm {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    tls: PathBuf,
    store: PathBuf,
    rx: Receiver,
    disks: [PathBuf; 2],
}

impl Vm {
    fn new() -> Vm {
        require_qemu();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let tls = certs(&dir.join("tls"), &["hv01"]);
        let store = dir.join("store");
        let rx = Receiver::start(&store, &tls, &["hv01=vm1"]);
        let disks = zero_vm_disks(&dir.join("src"), SIZE);
        Vm {
            _tmp: tmp,
            dir,
            tls,
            store,
            rx,
            disks,
        }
    }

    fn send(&self, log: &str) -> Send {
        self.send_every(log, "1s")
    }

    /// `vdrep send --interval INTERVAL` of both disks.
    fn send_every(&self, log: &str, interval: &str) -> Send {
        Send::new(
            &self.rx.to(),
            &self.tls,
            "hv01",
            "vm1",
            &[&self.disks[0], &self.disks[1]],
            &self.dir.join(log),
        )
        .arg("--interval")
        .arg(interval)
        .arg("--give-up-after")
        .arg("120s")
    }

    /// The strict-order writer of both disks.
    fn writer(&self) -> Writer {
        Writer::new(WRITES, &self.disks, SIZE, self.dir.join("w.bin"))
    }

    /// Waits until both disks' initial replication is committed (point 0).
    fn wait_initial(&self, log: &Path) {
        let end = Instant::now() + Duration::from_secs(90);
        loop {
            let out = vdrep(&["points", "--store", s(&self.store), "--vm", "vm1", "--json"]);
            let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            let n = |i: usize| doc["disks"][i]["points"].as_array().map_or(0, |a| a.len());
            if out.status.success() && n(0) >= 1 && n(1) >= 1 {
                return;
            }
            assert!(
                Instant::now() < end,
                "no initial replication: {}",
                read_log(log)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The inode of the first disk's active log (changes at every switch).
    fn active_ino(&self) -> u64 {
        std::fs::metadata(format!("{}.hrl", s(&self.disks[0])))
            .map(|m| m.ino())
            .unwrap_or(0)
    }
}

/// Writes until the sender's log at `log` shows `pauses` paused switches (or `stop`).
fn write_until_paused(w: &Writer, log: &Path, pauses: usize, stop: &AtomicBool) {
    while read_log(log).matches(PAUSED).count() < pauses && !stop.load(Ordering::SeqCst) {
        w.write_one();
    }
}

/// Writes until `switches` switches of the first disk were seen (or `stop`).
fn write_until_switches(w: &Writer, vm: &Vm, switches: usize, stop: &AtomicBool) {
    let mut seen = 0;
    let mut ino = vm.active_ino();
    while seen < switches && !stop.load(Ordering::SeqCst) {
        w.write_one();
        let now = vm.active_ino();
        if now != ino {
            seen += 1;
            ino = now;
        }
    }
}

/// The numbered writes a disk's bytes hold, checked to sit where the writer put them.
fn writes_in(bytes: &[u8], disk: u64) -> Vec<u64> {
    WRITES.writes_in(bytes, disk, 0)
}

/// The VM's recovery points (`points --json`'s top-level `points`): their ids, checked
/// against the disks' own points (here the disks' cycles go in step, so each VM point is
/// every disk at the same cycle) and for consistency: the initial copies (point 0) were
/// made disk after disk, every later point is one VM-wide switch.
fn points(store: &Path) -> Vec<u64> {
    let out = vdrep_ok(&["points", "--store", s(store), "--vm", "vm1", "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let list = |i: usize| -> Vec<u64> {
        doc["disks"][i]["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["cycle"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(list(0), list(1), "the disks' points differ: {doc:#}");
    let vm: Vec<&serde_json::Value> = doc["points"]
        .as_array()
        .expect("top-level points")
        .iter()
        .collect();
    let ids: Vec<u64> = vm.iter().map(|p| p["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, list(0), "the VM's points are its switches: {doc:#}");
    for p in &vm {
        let parts: Vec<&str> = p["disks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["disk"].as_str().unwrap())
            .collect();
        assert_eq!(parts, ["data", "os"], "{p:#}");
        assert_eq!(p["consistent"], p["id"].as_u64() != Some(0), "{p:#}");
        assert!(p["group"].is_null() && p["group_cycle"].is_null(), "{p:#}");
        assert!(
            p["unix"].as_u64().unwrap() <= p["committed_unix"].as_u64().unwrap(),
            "{p:#}"
        );
    }
    ids
}

/// Fails over every point and checks each holds writes 1..m; returns the m of each point.
/// Panics naming the first point that holds a write without an earlier one.
fn check_prefixes(vm: &Vm) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for p in points(&vm.store) {
        let dir = vm.dir.join(format!("fo-{p}"));
        let _ = std::fs::remove_dir_all(&dir);
        let res = vdrep(&[
            "failover",
            "--test",
            "--store",
            s(&vm.store),
            "--vm",
            "vm1",
            "--point",
            &p.to_string(),
            "--out",
            s(&dir),
        ]);
        assert!(
            res.status.success(),
            "failover of point {p}: {}",
            String::from_utf8_lossy(&res.stderr)
        );
        let mut all = Vec::new();
        for (i, name) in ["os.vhd", "data.vhd"].iter().enumerate() {
            let b = std::fs::read(dir.join(name)).unwrap();
            all.extend(writes_in(&b[..SIZE as usize], i as u64));
        }
        all.sort_unstable();
        let m = all.len() as u64;
        let want: Vec<u64> = (1..=m).collect();
        assert_eq!(
            all, want,
            "point {p} holds writes {all:?}: not a prefix 1..{m} of the writes (the disks \
             switched at different instants)"
        );
        out.push((p, m));
    }
    out
}

#[test]
fn every_point_of_a_vm_holds_a_prefix_of_its_writes_even_with_a_switch_paused_between_disks() {
    let vm = Vm::new();
    let send = vm
        .send("send.log")
        .arg("--max-cycles")
        .arg("5")
        .env("VDREP_TEST_SWITCH_PAUSE", "600");
    let w = vm.writer();
    let stop = AtomicBool::new(false);
    let t0 = Instant::now();
    let child = send.spawn();
    // Point 0 (the initial copy) reads disks that may change meanwhile: the writer starts
    // once it is committed, so every point is a switch's.
    vm.wait_initial(&send.log);
    let res = std::thread::scope(|sc| {
        // Writes through three switches; two more follow with the writer stopped, so the
        // last point must hold every write.
        let h = sc.spawn(|| write_until_paused(&w, &send.log, 3, &stop));
        let res = finish(child, t0, Duration::from_secs(180), &send.log);
        stop.store(true, Ordering::SeqCst);
        h.join().unwrap();
        res
    });
    res.ok();
    assert!(
        res.log.matches(PAUSED).count() >= 3,
        "the test hook did not pause the switches:\n{}",
        res.log
    );
    let ms = check_prefixes(&vm);
    assert_eq!(ms.len(), 6, "points 0..=5: {ms:?}");
    assert_eq!(
        ms.last().unwrap().1,
        w.written(),
        "the last point holds every write: {ms:?}"
    );
    assert!(
        ms.iter().any(|&(_, m)| m > 0 && m < w.written()),
        "no point cut the writes: the test shows nothing ({ms:?})"
    );
    // Writes arrived inside switches and waited for them (600 ms pauses).
    assert!(
        w.longest_ms() >= 300,
        "no write waited for a switch (longest {} ms): none arrived inside one",
        w.longest_ms()
    );
}

/// The switch intents beside the VM's disks that exist now.
fn intents(vm: &Vm) -> Vec<PathBuf> {
    vm.disks
        .iter()
        .map(|d| PathBuf::from(format!("{}.hrl.switch", s(d))))
        .filter(|p| p.exists())
        .collect()
}

#[test]
fn a_sender_killed_inside_a_vm_switch_has_it_completed_by_the_next_write_and_loses_none() {
    let vm = Vm::new();
    // Long pauses: the kill lands inside the first switch, between the two disks.
    let send = vm.send("send.log").env("VDREP_TEST_SWITCH_PAUSE", "20000");
    let w = vm.writer();
    let mut child = send.spawn();
    vm.wait_initial(&send.log);
    let stop = AtomicBool::new(false);
    std::thread::scope(|sc| {
        let h = sc.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                w.write_one();
            }
        });
        assert!(
            wait_for_log(&send.log, PAUSED, Duration::from_secs(60)),
            "the switch never paused: {}",
            read_log(&send.log)
        );
        assert_eq!(
            intents(&vm).len(),
            2,
            "an intent beside each disk during the switch"
        );
        let _ = child.kill();
        let _ = child.wait();
        let at = w.written();
        // The writer goes on: its next write finds the intent of a dead sender and
        // completes the switch for both disks first.
        let end = Instant::now() + Duration::from_secs(60);
        while w.written() < at + 6 {
            assert!(Instant::now() < end, "the writer is stuck after the kill");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            intents(&vm),
            Vec::<PathBuf>::new(),
            "the switch was completed"
        );
        stop.store(true, Ordering::SeqCst);
        h.join().unwrap();
    });
    for d in &vm.disks {
        let closed = PathBuf::from(format!("{}.00000001.hrl", s(d)));
        assert!(closed.is_file(), "{} missing", closed.display());
    }
    // A new sender (no hook) ships the completed cycle, then three more while the writer
    // writes until the first of them has passed; the last holds everything.
    let send2 = vm.send("send2.log").arg("--max-cycles").arg("3");
    let stop = AtomicBool::new(false);
    let t0 = Instant::now();
    let child = send2.spawn();
    let res = std::thread::scope(|sc| {
        let h = sc.spawn(|| write_until_switches(&w, &vm, 1, &stop));
        let res = finish(child, t0, Duration::from_secs(180), &send2.log);
        stop.store(true, Ordering::SeqCst);
        h.join().unwrap();
        res
    });
    res.ok();
    let ms = check_prefixes(&vm);
    assert_eq!(ms.len(), 5, "points 0..=4: {ms:?}");
    assert_eq!(
        ms.last().unwrap().1,
        w.written(),
        "the last point holds every write: {ms:?}"
    );
}

#[test]
fn a_sender_killed_inside_a_vm_switch_completes_it_for_all_disks_when_it_starts_again() {
    let vm = Vm::new();
    // A longer first interval: the writes below come before the first switch.
    let send = vm
        .send_every("send.log", "8s")
        .env("VDREP_TEST_SWITCH_PAUSE", "20000");
    let w = vm.writer();
    let mut child = send.spawn();
    vm.wait_initial(&send.log);
    for _ in 0..6 {
        w.write_one();
    }
    assert!(
        !read_log(&send.log).contains(PAUSED),
        "the first switch came before the six writes were done (a slow machine): the test \
         cannot tell which point holds them"
    );
    assert!(
        wait_for_log(&send.log, PAUSED, Duration::from_secs(60)),
        "the switch never paused: {}",
        read_log(&send.log)
    );
    let _ = child.kill();
    let _ = child.wait();
    // Half switched: the first disk (in lock order) renamed, the second not.
    assert_eq!(intents(&vm).len(), 2);
    let renamed = vm
        .disks
        .iter()
        .filter(|d| PathBuf::from(format!("{}.00000001.hrl", s(d))).exists())
        .count();
    assert_eq!(renamed, 1, "the kill left one disk switched and one not");
    let send2 = vm.send("send2.log").arg("--max-cycles").arg("1");
    send2.run(Duration::from_secs(180)).ok();
    let log = read_log(&send2.log);
    assert!(
        log.contains("completed for all its disks"),
        "the restarted sender did not complete the switch:\n{log}"
    );
    assert!(intents(&vm).is_empty());
    let ms = check_prefixes(&vm);
    assert_eq!(
        ms.iter().map(|&(p, _)| p).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    assert_eq!(
        ms[1].1, 6,
        "the interrupted switch's point holds the writes before it"
    );
    assert_eq!(ms[2].1, 6);
}
