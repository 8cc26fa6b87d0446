//! The rig of the consistency-group tests (`groups.rs`): two VMs with a raw and a fixed VHD
//! disk each, their receiver and sender, the group's points as the store lists them, and
//! the numbered writer across the group's four disks.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vdrep_tests::images::{make_image, Kind};
use vdrep_tests::numbered::Writer;
use vdrep_tests::procs::{certs, read_log, Receiver, Send};
use vdrep_tests::{require_qemu, vdrep};

pub const MIB: u64 = 1 << 20;
pub const SIZE: u64 = 8 * MIB;
/// The strict-order writer's writes (`vdrep_tests::numbered`).
const WRITES: vdrep_tests::numbered::Numbered = vdrep_tests::numbered::Numbered {
    magic: *b"VDREPG17",
    disks: 4,
};
/// The hook's log line (`vdrep::tracking::test_hook::PAUSED_LOG`).
pub const PAUSED: &str = "test hook: log switch paused between disks";
pub const VMS: [&str; 2] = ["vm1", "vm2"];

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Two VMs' disks (`VM/os.raw`, `VM/data.vhd`), all zero, their receiver and certificates.
pub struct Rig {
    pub _tmp: tempfile::TempDir,
    pub dir: PathBuf,
    pub tls: PathBuf,
    pub store: PathBuf,
    pub state: PathBuf,
    pub sock: PathBuf,
    pub rx: Receiver,
    /// vm1's two disks, then vm2's.
    pub disks: [PathBuf; 4],
}

impl Rig {
    /// The strict-order writer across the group's four disks.
    pub fn writer(&self) -> Writer {
        Writer::new(WRITES, &self.disks, SIZE, self.dir.join("w.bin"))
    }

    pub fn new(allow: &[&str]) -> Rig {
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

    pub fn vm_disks(&self, vm: usize) -> [&Path; 2] {
        [&self.disks[2 * vm], &self.disks[2 * vm + 1]]
    }

    /// `vdrep send` of vm1 in group `erp` every 2 s, with the control socket and state.
    pub fn send_vm1(&self, log: &str) -> Send {
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
    pub fn send_both(&self, log: &str) -> Send {
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
    pub fn control(&self, req: Value) -> Value {
        vdrep_tests::control_request(&self.sock, &req)
    }

    /// Enables protection of vm2 over the control channel (the sidecar's request).
    pub fn protect_vm2(&self, group: Option<&str>, interval_seconds: u64) -> Value {
        let [a, b] = self.vm_disks(1);
        let mut req = json!({"op": "protect", "vm": "vm2", "disks": [s(a), s(b)],
                             "interval_seconds": interval_seconds});
        if let Some(g) = group {
            req["group"] = json!(g);
        }
        self.control(req)
    }

    /// The cycles of a VM's points (both disks must agree).
    pub fn points(&self, vm: &str) -> Vec<u64> {
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

    pub fn wait_initial(&self, vm: &str, log: &Path) {
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
    pub fn vm_group_points(&self, vm: &str) -> std::collections::BTreeMap<u64, (u64, u64)> {
        vdrep_tests::group_points(&self.store, vm, "erp")
    }

    /// The group cycles of `vm`'s points in group `erp`, in the order of its points.
    pub fn group_cycles_in_order(&self, vm: &str) -> Vec<u64> {
        let out = vdrep(&["points", "--store", s(&self.store), "--vm", vm, "--json"]);
        if !out.status.success() {
            return Vec::new();
        }
        let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
        doc["points"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|p| p["group"] == "erp")
                    .map(|p| p["group_cycle"].as_u64().unwrap())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The group points both members committed: (group_cycle, vm1 point, vm2 point), and
    /// each has the same switch time in both VMs.
    pub fn group_points(&self) -> Vec<(u64, u64, u64)> {
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
    pub fn wait_group_points(&self, n: usize, log: &Path) {
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
    pub fn wait_points_after_writes(&self, log: &Path) {
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
    pub fn group_failover(&self, point: &str) -> (std::process::Output, Vec<Vec<u8>>) {
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
    pub fn check_group_prefixes(&self) -> (Vec<(u64, u64)>, Vec<Vec<u8>>) {
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

/// The numbered writes a disk's bytes hold, checked to sit where the writer put them.
pub fn writes_in(bytes: &[u8], disk: u64) -> Vec<u64> {
    WRITES.writes_in(bytes, disk, 0)
}
