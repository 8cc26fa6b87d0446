//! The VM's recovery points across real processes (issue 17, items 3, 4 and 7): a cycle is
//! the VM's, it becomes a recovery point only when every disk's part is durable, and a
//! receiver killed between two disks' commits keeps the previous VM point as the latest.
//!
//! The method: a VM with two disks (raw `os` and fixed VHD `data`), `--interval 1s`, a
//! writer that logs numbered 4 KiB writes in strict order alternating between the disks
//! (as `vm_switch.rs`). The receiver's test hook (`VDREP_TEST_COMMIT_PAUSE`) pauses after
//! each disk's cycle commit, before its answer: the test waits for the pause after `os`
//! (the first disk of every cycle) and kills the receiver there, `os`'s cycle durable and
//! `data`'s not. At that instant the point list must not show that cycle; after the
//! restart the sender finishes it and it becomes the VM's point. After the kills every VM
//! point's failover holds writes 1..m, and the last equals the sources (`qemu-img
//! compare`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use vdrep_tests::azurite::Azurite;
use vdrep_tests::images::zero_vm_disks;
use vdrep_tests::numbered::Writer;
use vdrep_tests::procs::{certs, finish, read_log, Receiver, Send};
use vdrep_tests::require_qemu;

const MIB: u64 = 1 << 20;
const SIZE: u64 = 16 * MIB;
/// The strict-order writer's writes (`vdrep_tests::numbered`).
const WRITES: vdrep_tests::numbered::Numbered = vdrep_tests::numbered::Numbered {
    magic: *b"VDREPP17",
    disks: 2,
};
/// The receiver hook's log line (`vdrep::receiver::test_hook::PAUSED_LOG`).
const PAUSED: &str = "test hook: paused after a disk's cycle commit";

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

struct Vm {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    tls: PathBuf,
    store: PathBuf,
    /// The Azurite holding the replicas, when they are on Azure.
    az: Option<Azurite>,
    rx: Receiver,
    /// `os.raw`, `data.vhd`.
    disks: [PathBuf; 2],
}

impl Vm {
    fn new(rx_env: &[(&str, &str)]) -> Vm {
        Self::with(rx_env, None)
    }

    /// The VM with its replicas on Azurite.
    fn on_azure() -> Vm {
        Self::with(&[], Some(Azurite::start()))
    }

    fn with(rx_env: &[(&str, &str)], az: Option<Azurite>) -> Vm {
        require_qemu();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let tls = certs(&dir.join("tls"), &["hv01"]);
        let store = dir.join("store");
        let rx = match &az {
            None => Receiver::start_env(&store, &tls, &["hv01=vm1"], rx_env),
            Some(az) => Receiver::start_azure(
                &az.url(),
                "replicas",
                &format!("?{}", az.sas()),
                &tls,
                &["hv01=vm1"],
                &dir.join("receiver.log"),
            ),
        };
        let disks = zero_vm_disks(&dir.join("src"), SIZE);
        Vm {
            _tmp: tmp,
            dir,
            tls,
            store,
            az,
            rx,
            disks,
        }
    }

    /// `vdrep ARGS` on the VM's store (`--store`, or the Azure options with the SAS in the
    /// environment).
    fn vdrep(&self, args: &[&str]) -> std::process::Output {
        let mut c = vdrep_tests::vdrep_command();
        c.args(args);
        match &self.az {
            None => {
                c.args(["--store", s(&self.store)]);
            }
            Some(az) => {
                c.args(["--azure-url", &az.url(), "--azure-container", "replicas"])
                    .env("VDREP_AZURE_SAS", format!("?{}", az.sas()));
            }
        }
        c.output().unwrap()
    }

    /// One replication of both disks (no protection).
    fn send_once(&self, log: &str) -> Send {
        Send::new(
            &self.rx.to(),
            &self.tls,
            "hv01",
            "vm1",
            &[&self.disks[0], &self.disks[1]],
            &self.dir.join(log),
        )
    }

    /// Protection of both disks, `--interval 1s`.
    fn send(&self, log: &str) -> Send {
        self.send_once(log)
            .arg("--interval")
            .arg("1s")
            .arg("--give-up-after")
            .arg("180s")
    }

    /// The strict-order writer of both disks.
    fn writer(&self) -> Writer {
        Writer::new(WRITES, &self.disks, SIZE, self.dir.join("w.bin"))
    }

    /// `vdrep points --json`, parsed (`None` while the store cannot be read).
    fn doc(&self) -> Option<serde_json::Value> {
        let out = self.vdrep(&["points", "--vm", "vm1", "--json"]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).unwrap())
    }

    fn wait(&self, what: &str, secs: u64, mut f: impl FnMut(&serde_json::Value) -> bool) {
        let end = Instant::now() + Duration::from_secs(secs);
        loop {
            if self.doc().is_some_and(|d| f(&d)) {
                return;
            }
            assert!(Instant::now() < end, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The ids of the VM's points.
fn vm_ids(doc: &serde_json::Value) -> Vec<u64> {
    doc["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_u64().unwrap())
        .collect()
}

/// The cycles of disk `name`'s own points.
fn disk_cycles(doc: &serde_json::Value, name: &str) -> Vec<u64> {
    doc["disks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["disk"] == name)
        .unwrap()["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["cycle"].as_u64().unwrap())
        .collect()
}

/// Every VM point names both disks: a point never holds some disks of a switch.
fn assert_whole(doc: &serde_json::Value) {
    for p in doc["points"].as_array().unwrap() {
        let n = p["disks"].as_array().unwrap().len();
        assert_eq!(n, 2, "a VM point without every disk: {p:#}");
    }
}

/// The numbered writes a disk's bytes hold (disk 0 = os, 1 = data), each where it belongs.
fn writes_in(bytes: &[u8], disk: u64) -> Vec<u64> {
    WRITES.writes_in(bytes, disk, 0)
}

/// Fails over every VM point (by its id) and checks each holds writes 1..m; returns
/// `(id, m)` per point and the output folder of the last.
fn check_prefixes(vm: &Vm) -> (Vec<(u64, u64)>, PathBuf) {
    let doc = vm.doc().unwrap();
    assert_whole(&doc);
    let mut out = Vec::new();
    let mut last = PathBuf::new();
    for id in vm_ids(&doc) {
        let dir = vm.dir.join(format!("fo-{id}"));
        let res = vm.vdrep(&[
            "failover",
            "--test",
            "--vm",
            "vm1",
            "--point",
            &id.to_string(),
            "--out",
            s(&dir),
        ]);
        assert!(
            res.status.success(),
            "failover of VM point {id}: {}",
            String::from_utf8_lossy(&res.stderr)
        );
        let text = String::from_utf8_lossy(&res.stdout);
        assert!(
            text.contains(&format!("os: VM point {id} (disk point "))
                && text.contains("data: VM point"),
            "each disk's line names the point and its time: {text}"
        );
        let mut all = Vec::new();
        for (i, name) in ["os.vhd", "data.vhd"].iter().enumerate() {
            let b = std::fs::read(dir.join(name)).unwrap();
            all.extend(writes_in(&b[..SIZE as usize], i as u64));
        }
        all.sort_unstable();
        let m = all.len() as u64;
        assert_eq!(
            all,
            (1..=m).collect::<Vec<_>>(),
            "VM point {id} holds {all:?}: not a prefix"
        );
        out.push((id, m));
        last = dir;
    }
    (out, last)
}

fn qemu_same(a: &Path, a_fmt: &str, b: &Path) {
    let out = Command::new("qemu-img")
        .args(["compare", "-f", a_fmt, "-F", "vpc"])
        .arg(a)
        .arg(b)
        .output()
        .expect("qemu-img");
    assert!(
        out.status.success(),
        "qemu-img compare {} {}: {}{}",
        a.display(),
        b.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_receiver_killed_between_two_disks_commits_keeps_the_previous_vm_point_five_times() {
    let mut vm = Vm::new(&[("VDREP_TEST_COMMIT_PAUSE", "1500")]);
    let send = vm.send("send.log");
    let mut child = send.spawn();
    vm.wait("both initial copies", 90, |d| {
        !disk_cycles(d, "os").is_empty() && !disk_cycles(d, "data").is_empty()
    });
    let w = vm.writer();
    let stop = AtomicBool::new(false);
    let os_paused = |log: &str| {
        log.lines()
            .filter(|l| l.contains(PAUSED) && l.contains("vm1/os"))
            .count()
    };
    std::thread::scope(|sc| {
        let h = sc.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                w.write_one();
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let mut kills = 0;
        let mut seen = os_paused(&vm.rx.log_text());
        while kills < 5 {
            let end = Instant::now() + Duration::from_secs(90);
            while os_paused(&vm.rx.log_text()) <= seen {
                assert!(
                    Instant::now() < end,
                    "no pause after os's commit: {}",
                    vm.rx.log_text()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            // The receiver sleeps after os's commit, before data's: os's cycle is durable
            // and a point of os, but no VM point names it.
            let doc = vm.doc().expect("points while the receiver is paused");
            assert_whole(&doc);
            let os_newest = *disk_cycles(&doc, "os").last().unwrap();
            let latest = *vm_ids(&doc).last().unwrap();
            assert!(
                latest < os_newest,
                "kill {kills}: the VM's latest point {latest} holds os's cycle {os_newest} \
                 before data's part is durable: {doc:#}"
            );
            assert!(
                !disk_cycles(&doc, "data").contains(&os_newest),
                "data's part was durable already: the kill would not land between the disks"
            );
            vm.rx.kill9();
            let after = vm.doc().unwrap();
            assert_eq!(
                vm_ids(&after).last(),
                Some(&latest),
                "kill {kills}: the latest VM point moved"
            );
            vm.rx.restart();
            kills += 1;
            seen = os_paused(&vm.rx.log_text());
            // The interrupted cycle becomes the VM's point once data's part commits.
            vm.wait("the interrupted cycle's VM point", 90, |d| {
                vm_ids(d).contains(&os_newest)
            });
        }
        stop.store(true, Ordering::SeqCst);
        h.join().unwrap();
    });
    // Two more points with the writer stopped: the last holds every write.
    let last_before = *vm_ids(&vm.doc().unwrap()).last().unwrap();
    vm.wait("two points after the writes", 120, |d| {
        vm_ids(d).last().is_some_and(|&l| l >= last_before + 2)
    });
    let _ = child.kill();
    let _ = child.wait();
    let (ms, last) = check_prefixes(&vm);
    eprintln!("VM points and their prefixes: {ms:?}");
    assert_eq!(
        ms.last().unwrap().1,
        w.written(),
        "the last point holds every write: {ms:?}"
    );
    assert!(
        ms.iter().any(|&(_, m)| m > 0 && m < w.written()),
        "no point cut the writes: {ms:?}"
    );
    qemu_same(&vm.disks[0], "raw", &last.join("os.vhd"));
    qemu_same(&vm.disks[1], "vpc", &last.join("data.vhd"));
    assert!(read_log(&send.log).contains("VM recovery point committed"));
}

#[test]
fn on_azure_the_vm_points_and_their_failover_come_from_snapshots() {
    let vm = Vm::on_azure();
    let send = vm.send("send.log").arg("--max-cycles").arg("4");
    let w = vm.writer();
    let t0 = Instant::now();
    let child = send.spawn();
    vm.wait("both initial copies", 120, |d| {
        !disk_cycles(d, "os").is_empty() && !disk_cycles(d, "data").is_empty()
    });
    let stop = AtomicBool::new(false);
    let res = std::thread::scope(|sc| {
        // Writes through two VM points; the last two cycles come with the writer stopped.
        let h = sc.spawn(|| w.run(&stop));
        vm.wait("two VM points with writes", 120, |d| {
            vm_ids(d).last().is_some_and(|&l| l >= 2)
        });
        stop.store(true, Ordering::SeqCst);
        h.join().unwrap();
        finish(child, t0, Duration::from_secs(180), &send.log)
    });
    res.ok();
    let doc = vm.doc().unwrap();
    assert_eq!(vm_ids(&doc), vec![0, 1, 2, 3, 4], "{doc:#}");
    for p in doc["points"].as_array().unwrap() {
        assert_eq!(p["consistent"], p["id"] != 0, "{p:#}");
    }
    let (ms, last) = check_prefixes(&vm);
    assert_eq!(ms.last().unwrap().1, w.written(), "{ms:?}");
    qemu_same(&vm.disks[0], "raw", &last.join("os.vhd"));
    qemu_same(&vm.disks[1], "vpc", &last.join("data.vhd"));
}

#[test]
fn a_receiver_upgrades_a_store_of_the_previous_format_and_vm_points_follow_its_points() {
    let mut vm = Vm::new(&[]);
    // The previous format's store: this build's one-shot replication writes the same files
    // (no switch, so no `VM/points`); then FORMAT says version 3, as earlier builds wrote.
    vm.send_once("initial.log")
        .run(Duration::from_secs(120))
        .ok();
    vm.rx.kill9();
    let format = vm.store.join("FORMAT");
    std::fs::write(&format, "vdrep-store 3\n").unwrap();
    assert!(!vm.store.join("vm1/points").exists());
    let doc = vm.doc().expect("a format 3 store is read as it is");
    assert_eq!(doc["points"][0]["id"], 0);
    assert_eq!(doc["points"][0]["consistent"], false);
    vm.rx.restart();
    assert_eq!(std::fs::read_to_string(&format).unwrap(), "vdrep-store 4\n");
    assert!(
        vm.rx.log_text().contains("store upgraded from"),
        "{}",
        vm.rx.log_text()
    );
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(vm.store.join("vm1/points")).unwrap()).unwrap();
    assert_eq!(m["points"][0]["consistent"], false, "{m:#}");
    // Protection from now on: VM points start at the first VM-wide switch.
    let res = vm
        .send("protect.log")
        .arg("--max-cycles")
        .arg("3")
        .run(Duration::from_secs(180));
    res.ok();
    let doc = vm.doc().unwrap();
    let pts = doc["points"].as_array().unwrap();
    assert_eq!(
        (pts[0]["id"].as_u64(), pts[0]["consistent"].as_bool()),
        (Some(0), Some(false))
    );
    assert!(pts.len() >= 3, "{doc:#}");
    assert!(pts[1..].iter().all(|p| p["consistent"] == true), "{doc:#}");
    let (_, last) = check_prefixes(&vm);
    qemu_same(&vm.disks[0], "raw", &last.join("os.vhd"));
    qemu_same(&vm.disks[1], "vpc", &last.join("data.vhd"));
    // The table says the same.
    let text = String::from_utf8(vm.vdrep(&["points", "--vm", "vm1"]).stdout).unwrap();
    assert!(
        text.contains(&format!("{} recovery points of the VM", pts.len())),
        "{text}"
    );
    let row0 = text
        .lines()
        .find(|l| l.trim_start().starts_with("0 "))
        .unwrap_or_else(|| panic!("no row for point 0: {text}"));
    assert!(row0.contains(" no ") && row0.ends_with("data os"), "{row0}");
}

#[test]
fn failover_never_mixes_points_a_disk_missing_from_a_vm_point_is_an_error_naming_it() {
    use vdrep::sink::local::LocalStore;
    use vdrep::sink::vm_points::{self, PointPart, VmPoint};
    use vdrep::sink::{DiskKey, RecoveryPoint, ReplicaStore};
    use vdrep_proto::{Guid, RangeSet};
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    let point = |cycle| RecoveryPoint {
        cycle,
        created_unix: 1_800_000_000 + cycle,
        bytes: 512,
        digest: [0; 32],
    };
    let open = |name: &str| {
        let d = store
            .open_disk(&DiskKey::new("vm1", name).unwrap(), MIB, Guid([1; 16]))
            .unwrap();
        d.checkpoint(&RangeSet::from_range(0, MIB)).unwrap();
        d.commit_initial(&point(0)).unwrap();
        d
    };
    let (os, data) = (open("os"), open("data"));
    for d in [&os, &data] {
        d.begin_cycle(1).unwrap();
        d.write(0, &[1u8; 512]).unwrap();
        d.checkpoint(&RangeSet::from_range(0, 512)).unwrap();
        d.commit_cycle(&point(1)).unwrap();
    }
    let vp = VmPoint {
        vm_cycle: 1,
        switch_unix_ms: 1_800_000_000_000,
        committed_unix: 1_800_000_001,
        group: None,
        group_cycle: None,
        consistent: true,
        disks: vec![
            PointPart::new("data", 1, 0, &[0; 32]),
            PointPart::new("os", 1, 0, &[0; 32]),
        ],
    };
    vm_points::commit(&store, "vm1", vp, 86_400).unwrap();
    // A disk added to the VM later has no part in point 1.
    drop(open("late"));
    drop((os, data));
    let out = dir.path().join("out");
    let fo = |sel: &str| {
        vdrep_tests::vdrep(&[
            "failover",
            "--test",
            "--store",
            s(dir.path()),
            "--vm",
            "vm1",
            "--point",
            sel,
            "--out",
            s(&out),
        ])
    };
    let e = fo("1");
    assert_eq!(e.status.code(), Some(1));
    let msg = String::from_utf8_lossy(&e.stderr);
    assert!(
        msg.contains("VM point 1 has no part of disk(s) late"),
        "{msg}"
    );
    let e = fo("latest");
    assert_eq!(e.status.code(), Some(1), "no point holds every disk");
    assert!(
        !out.join("os.vhd").exists() && !out.join("late.vhd").exists(),
        "nothing written"
    );
}
