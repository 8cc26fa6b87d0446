//! Consistency groups (issue 17 item 5): VMs of one group switch their change logs together,
//! so every group switch is one instant of all their disks.
//!
//! The method: two VMs, each with a raw and a fixed VHD disk, in group `erp`; a writer logs
//! numbered 4 KiB writes in strict order across the group's four disks, each complete
//! before the next starts (`vdrep log-write`). Write `k` goes to disk `(k-1) % 4` at slot
//! `(k-1) / 4` and carries its number. The sender's record of each group switch
//! (`STATE/groups/erp.json`) names each member's VM cycle; failing both VMs over at those
//! cycles must give exactly the writes 1..m for some m across all four disks.
//!
//! Deterministic with the test hook (`VDREP_TEST_SWITCH_PAUSE`: every switch pauses between
//! disks) and with `vm2` enabled over the control channel a moment after `vm1`: VMs that
//! switch alone then switch at different instants, and the writes between the two switches
//! land in one VM's next point and the other's current one, which this test refuses (remove
//! `group` from the request to see it fail); the group switch holds all four disks' locks
//! through the pauses, so it passes.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vdrep_tests::images::{make_image, Kind};
use vdrep_tests::procs::{certs, read_log, wait_for_log, Receiver, Send};
use vdrep_tests::{require_qemu, vdrep, vdrep_ok};

const MIB: u64 = 1 << 20;
const SIZE: u64 = 8 * MIB;
const SLOT: u64 = 4096;
const MAGIC: &[u8; 8] = b"VDREPG17";
/// The hook's log line (`vdrep::tracking::test_hook::PAUSED_LOG`).
const PAUSED: &str = "test hook: log switch paused between disks";
const VMS: [&str; 2] = ["vm1", "vm2"];

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Two VMs' disks (`VM/os.raw`, `VM/data.vhd`), all zero, their receiver and certificates.
struct Rig {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    tls: PathBuf,
    store: PathBuf,
    state: PathBuf,
    sock: PathBuf,
    rx: Receiver,
    /// vm1's two disks, then vm2's.
    disks: [PathBuf; 4],
}

impl Rig {
    fn new(allow: &[&str]) -> Rig {
        require_qemu();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let tls = certs(&dir.join("tls"), &["hv01", "hv02"]);
        let store = dir.join("store");
        let rx = Receiver::start(&store, &tls, allow);
        let mut disks = Vec::new();
        for vm in VMS {
            let src = dir.join(vm);
            std::fs::create_dir_all(&src).unwrap();
            let os = src.join("os.raw");
            std::fs::write(&os, vec![0u8; SIZE as usize]).unwrap();
            disks.push(os);
            disks.push(make_image(&src, "data", Kind::VhdFixed, SIZE, &[]));
        }
        Rig {
            _tmp: tmp,
            state: dir.join("state"),
            sock: dir.join("sender.sock"),
            dir,
            tls,
            store,
            rx,
            disks: disks.try_into().unwrap(),
        }
    }

    fn vm_disks(&self, vm: usize) -> [&Path; 2] {
        [&self.disks[2 * vm], &self.disks[2 * vm + 1]]
    }

    /// `vdrep send` of vm1 in group `erp` every 2 s, with the control socket and state.
    fn send_vm1(&self, log: &str) -> Send {
        Send::new(
            &self.rx.to(),
            &self.tls,
            "hv01",
            "vm1",
            &self.vm_disks(0),
            &self.dir.join(log),
        )
        .arg("--group")
        .arg("erp")
        .arg("--interval")
        .arg("2s")
        .arg("--control")
        .arg(s(&self.sock))
        .arg("--state")
        .arg(s(&self.state))
    }

    /// `vdrep send --config` of both VMs in group `erp` every 2 s.
    fn send_both(&self, log: &str) -> Send {
        let cfg = self.dir.join("sender.toml");
        let vm = |i: usize| {
            let [a, b] = self.vm_disks(i);
            format!(
                "[[vm]]\nname = \"{}\"\ndisks = [\"{}\", \"{}\"]\ngroup = \"erp\"\n",
                VMS[i],
                s(a),
                s(b)
            )
        };
        std::fs::write(&cfg, format!("{}{}", vm(0), vm(1))).unwrap();
        let mut send = Send::new(
            &self.rx.to(),
            &self.tls,
            "hv01",
            "vm1",
            &[],
            &self.dir.join(log),
        )
        .arg("--config")
        .arg(s(&cfg))
        .arg("--interval")
        .arg("2s")
        .arg("--state")
        .arg(s(&self.state));
        send.vm = None;
        send
    }

    /// One request on the sender's control socket.
    fn control(&self, req: Value) -> Value {
        let end = Instant::now() + Duration::from_secs(30);
        let mut c = loop {
            match std::os::unix::net::UnixStream::connect(&self.sock) {
                Ok(c) => break c,
                Err(e) => {
                    assert!(Instant::now() < end, "no control socket: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        };
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        writeln!(c, "{req}").unwrap();
        let mut line = String::new();
        BufReader::new(c).read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap()
    }

    /// Enables protection of vm2 over the control channel (the sidecar's request).
    fn protect_vm2(&self, group: Option<&str>, interval_seconds: u64) -> Value {
        let [a, b] = self.vm_disks(1);
        let mut req = json!({"op": "protect", "vm": "vm2", "disks": [s(a), s(b)],
                             "interval_seconds": interval_seconds});
        if let Some(g) = group {
            req["group"] = json!(g);
        }
        self.control(req)
    }

    /// The cycles of a VM's points (both disks must agree).
    fn points(&self, vm: &str) -> Vec<u64> {
        let out = vdrep(&["points", "--store", s(&self.store), "--vm", vm, "--json"]);
        if !out.status.success() {
            return Vec::new();
        }
        let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
        let list = |i: usize| -> Vec<u64> {
            doc["disks"][i]["points"]
                .as_array()
                .map(|a| a.iter().map(|p| p["cycle"].as_u64().unwrap()).collect())
                .unwrap_or_default()
        };
        let (a, b) = (list(0), list(1));
        // A cycle one disk committed and the other not yet is no point of the VM.
        a.into_iter().filter(|c| b.contains(c)).collect()
    }

    fn wait_initial(&self, vm: &str, log: &Path) {
        let end = Instant::now() + Duration::from_secs(90);
        while !self.points(vm).contains(&0) {
            assert!(
                Instant::now() < end,
                "no initial replication of {vm}: {}",
                read_log(log)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The VM points of `vm` in group `erp`: group cycle → (VM point id, switch time).
    fn vm_group_points(&self, vm: &str) -> std::collections::BTreeMap<u64, (u64, u64)> {
        let out = vdrep(&["points", "--store", s(&self.store), "--vm", vm, "--json"]);
        if !out.status.success() {
            return Default::default();
        }
        let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
        doc["points"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|p| p["group"] == "erp")
                    .map(|p| {
                        (
                            p["group_cycle"].as_u64().unwrap(),
                            (p["id"].as_u64().unwrap(), p["unix"].as_u64().unwrap()),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The group points both members committed: (group_cycle, vm1 point, vm2 point), and
    /// each has the same switch time in both VMs.
    fn group_points(&self) -> Vec<(u64, u64, u64)> {
        let (a, b) = (self.vm_group_points("vm1"), self.vm_group_points("vm2"));
        a.iter()
            .filter_map(|(gc, (p1, t1))| {
                let (p2, t2) = b.get(gc)?;
                assert_eq!(
                    t1, t2,
                    "group point {gc}: the members' points differ in time"
                );
                Some((*gc, *p1, *p2))
            })
            .collect()
    }

    /// Waits until `n` group points of both members are committed.
    fn wait_group_points(&self, n: usize, log: &Path) {
        let end = Instant::now() + Duration::from_secs(120);
        while self.group_points().len() < n {
            assert!(
                Instant::now() < end,
                "fewer than {n} group points: {:?}\n{}",
                self.group_points(),
                read_log(log)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits for two group points switched after the writer stopped (the newest switch
    /// recorded then may have taken writes still; the next two hold them all).
    fn wait_points_after_writes(&self, log: &Path) {
        let n = self.group_points().last().map_or(0, |s| s.0);
        let end = Instant::now() + Duration::from_secs(60);
        while self.group_points().iter().filter(|p| p.0 > n).count() < 2 {
            assert!(
                Instant::now() < end,
                "no more group points: {}",
                read_log(log)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `vdrep failover --test --group erp --point POINT`: the result and the four disks'
    /// bytes (vm1's, then vm2's) when it succeeded.
    fn group_failover(&self, point: &str) -> (std::process::Output, Vec<Vec<u8>>) {
        let dir = self.dir.join(format!("fo-{point}"));
        let _ = std::fs::remove_dir_all(&dir);
        let res = vdrep(&[
            "failover",
            "--test",
            "--store",
            s(&self.store),
            "--group",
            "erp",
            "--point",
            point,
            "--out",
            s(&dir),
        ]);
        let mut disks = Vec::new();
        if res.status.success() {
            for vm in VMS {
                for n in ["os.vhd", "data.vhd"] {
                    let mut b = std::fs::read(dir.join(vm).join(n)).unwrap();
                    b.truncate(SIZE as usize);
                    disks.push(b);
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        (res, disks)
    }

    /// Fails every group point over (`failover --group`) and checks each holds writes 1..m
    /// across the four disks; returns (group_cycle, m) per point, and the last point's disks.
    fn check_group_prefixes(&self) -> (Vec<(u64, u64)>, Vec<Vec<u8>>) {
        let mut out = Vec::new();
        let mut last = Vec::new();
        for (gc, c1, c2) in self.group_points() {
            let (res, disks) = self.group_failover(&gc.to_string());
            assert!(
                res.status.success(),
                "failover of group point {gc}: {}",
                String::from_utf8_lossy(&res.stderr)
            );
            let mut all: Vec<u64> = Vec::new();
            for (i, b) in disks.iter().enumerate() {
                all.extend(writes_in(b, i as u64));
            }
            all.sort_unstable();
            let m = all.len() as u64;
            assert_eq!(
                all,
                (1..=m).collect::<Vec<_>>(),
                "group point {gc} (vm1 point {c1}, vm2 point {c2}) holds writes {all:?}: not a \
                 prefix 1..{m} (the VMs switched at different instants)"
            );
            out.push((gc, m));
            last = disks;
        }
        (out, last)
    }
}

/// The numbered writer across the group's four disks.
struct Writer {
    next: AtomicU64,
    longest_ms: AtomicU64,
}

impl Writer {
    fn new() -> Writer {
        Writer {
            next: AtomicU64::new(1),
            longest_ms: AtomicU64::new(0),
        }
    }

    fn write_one(&self, rig: &Rig) -> u64 {
        let k = self.next.load(Ordering::SeqCst);
        let disk = &rig.disks[((k - 1) % 4) as usize];
        let offset = (k - 1) / 4 * SLOT;
        assert!(offset + SLOT <= SIZE, "the test ran out of slots");
        let file = rig.dir.join("w.bin");
        std::fs::write(&file, payload(k)).unwrap();
        let t0 = Instant::now();
        vdrep_ok(&[
            "log-write",
            s(disk),
            "--offset",
            &offset.to_string(),
            "--file",
            s(&file),
        ]);
        self.longest_ms
            .fetch_max(t0.elapsed().as_millis() as u64, Ordering::SeqCst);
        self.next.store(k + 1, Ordering::SeqCst);
        k
    }

    fn written(&self) -> u64 {
        self.next.load(Ordering::SeqCst) - 1
    }

    /// Writes until `stop`.
    fn run(&self, rig: &Rig, stop: &AtomicBool) {
        while !stop.load(Ordering::SeqCst) {
            self.write_one(rig);
        }
    }
}

fn payload(k: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(SLOT as usize);
    while v.len() < SLOT as usize {
        v.extend_from_slice(MAGIC);
        v.extend_from_slice(&k.to_le_bytes());
    }
    v
}

/// The numbered writes a disk's bytes hold, checked to sit where the writer put them.
fn writes_in(bytes: &[u8], disk: u64) -> Vec<u64> {
    let mut out = Vec::new();
    for (slot, b) in bytes.chunks(SLOT as usize).enumerate() {
        if b.iter().all(|&x| x == 0) {
            continue;
        }
        assert_eq!(
            &b[..8],
            MAGIC,
            "disk {disk} slot {slot}: not a numbered write"
        );
        let k = u64::from_le_bytes(b[8..16].try_into().unwrap());
        assert_eq!(
            b,
            &payload(k)[..],
            "disk {disk} slot {slot}: torn write {k}"
        );
        assert_eq!(
            ((k - 1) % 4, (k - 1) / 4),
            (disk, slot as u64),
            "write {k} is in the wrong place"
        );
        out.push(k);
    }
    out
}

#[test]
fn every_group_point_holds_a_prefix_of_the_writes_across_both_vms_disks() {
    let rig = Rig::new(&["hv01=vm1,vm2"]);
    let send = rig
        .send_vm1("send.log")
        .env("VDREP_TEST_SWITCH_PAUSE", "300");
    let mut child = send.spawn();
    rig.wait_initial("vm1", &send.log);
    // vm2 a moment after vm1's first group switch committed: switching alone, its switches
    // would come at other instants than vm1's; and that point of the group lacks vm2.
    let end = Instant::now() + Duration::from_secs(60);
    while rig.vm_group_points("vm1").is_empty() {
        assert!(
            Instant::now() < end,
            "vm1 made no group point: {}",
            read_log(&send.log)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(700));
    let a = rig.protect_vm2(Some("erp"), 2);
    assert_eq!(a["ok"], true, "{a}");
    rig.wait_initial("vm2", &send.log);
    let w = Writer::new();
    let stop = AtomicBool::new(false);
    let before = rig.group_points().len();
    std::thread::scope(|sc| {
        let h = sc.spawn(|| w.run(&rig, &stop));
        // Writes through three group switches, then two more with the writer stopped: the
        // last point must hold every write.
        rig.wait_group_points(before + 3, &send.log);
        stop.store(true, Ordering::SeqCst);
        h.join().unwrap();
    });
    rig.wait_points_after_writes(&send.log);
    let _ = child.kill();
    let _ = child.wait();
    let log = read_log(&send.log);
    assert!(
        log.contains(PAUSED),
        "the test hook did not pause the switches:\n{log}"
    );
    assert!(log.contains("consistency group claimed"), "{log}");
    let (ms, last) = rig.check_group_prefixes();
    assert!(ms.len() >= 4, "group points: {ms:?}");
    assert_eq!(
        ms.last().unwrap().1,
        w.written(),
        "the last point holds every write: {ms:?}"
    );
    assert!(
        ms.iter().any(|&(_, m)| m > 0 && m < w.written()),
        "no point cut the writes: the test shows nothing ({ms:?})"
    );
    for (i, b) in last.iter().enumerate() {
        let src = std::fs::read(&rig.disks[i]).unwrap();
        assert!(
            b[..] == src[..SIZE as usize],
            "disk {i} of the last point differs from its source"
        );
    }
    // `latest`: the newest group cycle both members hold.
    let (res, disks) = rig.group_failover("latest");
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    assert!(disks == last, "latest is the newest group point");
    // vm1 switched in the group before vm2 joined: those group points lack vm2.
    let (a, b) = (rig.vm_group_points("vm1"), rig.vm_group_points("vm2"));
    let lone = a.keys().find(|gc| !b.contains_key(gc)).copied();
    let lone = lone.expect("vm1 switched alone in its group before vm2 was enabled");
    let (res, _) = rig.group_failover(&lone.to_string());
    let err = String::from_utf8_lossy(&res.stderr);
    assert_eq!(res.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "group point {lone} of consistency group erp is missing for VMs vm2"
        )),
        "{err}"
    );
    // Writes arrived inside group switches and waited for all four disks (3 × 300 ms).
    assert!(
        w.longest_ms.load(Ordering::SeqCst) >= 300,
        "no write waited for a switch (longest {} ms)",
        w.longest_ms.load(Ordering::SeqCst)
    );
    // The sender's record of the group's switches is lost: a restarted sender (vm2 comes
    // back from the state folder, in its group) numbers the group's switches above the
    // newest group cycle the store holds, which the receiver tells it.
    let newest = rig.group_points().last().unwrap().0;
    std::fs::remove_file(rig.state.join("groups").join("erp.json")).unwrap();
    let send2 = rig.send_vm1("send2.log");
    let mut child = send2.spawn();
    let end = Instant::now() + Duration::from_secs(60);
    while !rig.group_points().iter().any(|p| p.0 > newest) {
        assert!(
            Instant::now() < end,
            "no group point after the restart: {}",
            read_log(&send2.log)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = child.kill();
    let _ = child.wait();
    let gcs: Vec<u64> = rig.group_points().iter().map(|p| p.0).collect();
    let mut sorted = gcs.clone();
    sorted.dedup();
    assert_eq!(gcs, sorted, "group cycles stay unique and ordered: {gcs:?}");
}

/// The switch intents beside the group's disks that exist now.
fn intents(rig: &Rig) -> usize {
    rig.disks
        .iter()
        .filter(|d| PathBuf::from(format!("{}.hrl.switch", s(d))).exists())
        .count()
}

#[test]
fn a_sender_killed_inside_a_group_switch_loses_nothing_and_the_final_failover_is_exact() {
    let rig = Rig::new(&["hv01=vm1,vm2"]);
    // Long pauses: the kill lands inside the first group switch, between two disks.
    let send = rig
        .send_both("send.log")
        .env("VDREP_TEST_SWITCH_PAUSE", "20000");
    let mut child = send.spawn();
    rig.wait_initial("vm1", &send.log);
    rig.wait_initial("vm2", &send.log);
    let w = Writer::new();
    let stop = AtomicBool::new(false);
    std::thread::scope(|sc| {
        let h = sc.spawn(|| w.run(&rig, &stop));
        assert!(
            wait_for_log(&send.log, PAUSED, Duration::from_secs(60)),
            "the switch never paused: {}",
            read_log(&send.log)
        );
        assert_eq!(
            intents(&rig),
            4,
            "one intent beside each of the group's disks"
        );
        let _ = child.kill();
        let _ = child.wait();
        let at = w.written();
        // The writer goes on: its next write completes the switch for all four disks.
        let end = Instant::now() + Duration::from_secs(60);
        while w.written() < at + 8 {
            assert!(Instant::now() < end, "the writer is stuck after the kill");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(intents(&rig), 0, "the switch was completed");
        // A new sender (no hook) ships the completed switch and goes on while writes do.
        let send2 = rig.send_both("send2.log");
        child = send2.spawn();
        let before = rig.group_points().len();
        rig.wait_group_points(before + 2, &send2.log);
        stop.store(true, Ordering::SeqCst);
        h.join().unwrap();
    });
    // Two more group switches after the writer stopped: the last holds everything.
    rig.wait_points_after_writes(&rig.dir.join("send2.log"));
    let _ = child.kill();
    let _ = child.wait();
    let (ms, last) = rig.check_group_prefixes();
    assert_eq!(
        ms.first().map(|p| p.0),
        Some(1),
        "the interrupted switch is group point 1: {ms:?}"
    );
    assert_eq!(
        ms.last().unwrap().1,
        w.written(),
        "the last point holds every write: {ms:?}"
    );
    for (i, b) in last.iter().enumerate() {
        let src = std::fs::read(&rig.disks[i]).unwrap();
        assert!(
            b[..] == src[..SIZE as usize],
            "disk {i} of the final failover differs from its source"
        );
    }
}

#[test]
fn a_group_split_across_two_senders_is_refused_at_the_second_ones_start() {
    let rig = Rig::new(&["hv01=vm1", "hv02=vm2"]);
    let send = rig.send_vm1("send1.log");
    let mut child = send.spawn();
    assert!(
        wait_for_log(
            &send.log,
            "consistency group claimed",
            Duration::from_secs(60)
        ),
        "{}",
        read_log(&send.log)
    );
    let second = Send::new(
        &rig.rx.to(),
        &rig.tls,
        "hv02",
        "vm2",
        &rig.vm_disks(1),
        &rig.dir.join("send2.log"),
    )
    .arg("--group")
    .arg("erp")
    .arg("--interval")
    .arg("2s")
    .arg("--state")
    .arg(s(&rig.dir.join("state2")))
    .run(Duration::from_secs(60));
    assert_eq!(second.code(), Some(1), "{}", second.log);
    assert!(
        second
            .log
            .contains("consistency group erp is protected by sender hv01 (VMs vm1)"),
        "the refusal names the group's sender:\n{}",
        second.log
    );
    assert!(
        rig.points("vm2").is_empty(),
        "nothing of vm2 was replicated"
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "the first sender goes on"
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_member_with_another_interval_and_a_17th_vm_are_refused() {
    let rig = Rig::new(&["hv01=vm1,vm2"]);
    let send = rig.send_vm1("send.log");
    let mut child = send.spawn();
    let a = rig.protect_vm2(Some("erp"), 5);
    assert_eq!(a["ok"], false, "{a}");
    let e = a["error"].as_str().unwrap();
    assert!(e.contains("interval 5s differs from the group's 2s"), "{e}");
    // Not in the group, it may have its own interval.
    let a = rig.protect_vm2(None, 5);
    assert_eq!(a["ok"], true, "{a}");
    // A policy change of a member (the sidecar's, which may not name the group) keeps the
    // group's interval.
    let [d1, d2] = rig.vm_disks(0);
    let a = rig.control(
        json!({"op": "protect", "vm": "vm1", "disks": [s(d1), s(d2)],
                               "interval_seconds": 5}),
    );
    assert_eq!(a["ok"], false, "{a}");
    let e = a["error"].as_str().unwrap();
    assert!(e.contains("its interval stays the group's 2 s"), "{e}");
    let a = rig.control(
        json!({"op": "protect", "vm": "vm1", "disks": [s(d1), s(d2)],
                               "interval_seconds": 2, "rpo_threshold_seconds": 60}),
    );
    assert_eq!(a["ok"], true, "the group's interval is accepted: {a}");
    let _ = child.kill();
    let _ = child.wait();

    let mut cfg = String::new();
    for i in 0..17 {
        cfg.push_str(&format!(
            "[[vm]]\nname = \"vm{i}\"\ndisks = [\"/nonexistent/vm{i}.raw\"]\ngroup = \"big\"\n"
        ));
    }
    let path = rig.dir.join("big.toml");
    std::fs::write(&path, cfg).unwrap();
    let out = vdrep(&[
        "send",
        "--to",
        &rig.rx.to(),
        "--tls",
        s(&rig.tls),
        "--identity",
        "hv01",
        "--config",
        s(&path),
        "--interval",
        "30s",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("consistency group big names 17 VMs"), "{err}");
    assert!(err.contains("at most 16"), "{err}");
}
