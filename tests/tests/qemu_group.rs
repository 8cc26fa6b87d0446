//! A consistency group with a qemu VM (issue 18): a qemu-storage-daemon VM `vm1` (a raw and
//! a qcow2 disk) and an image VM `vm2` (a raw and a fixed VHD disk, written through
//! `vdrep log-write`) in group `erp`. The group switch cuts the qemu VM (its QMP
//! transaction) while vm2's tracking locks are held, so every group point is one instant of
//! the four disks.
//!
//! The method: a guest writes numbered 4 KiB blocks in strict order across the four disks,
//! each complete before the next starts — vm1's `os` through its FUSE export (`O_DSYNC`),
//! vm2's `os`, vm1's `data`, vm2's `data`, round and round. Every group point, failed over
//! with `failover --test --group erp`, must hold exactly the writes 1..m for some m, and
//! the last one all of them. The test hook `VDREP_TEST_SWITCH_PAUSE` holds every group
//! switch 300 ms after the qemu cut and again between vm2's disks, with the locks held:
//! writes to vm1 go on during the pauses and land after its cut, writes to vm2 wait. A
//! qemu VM cut at its own time, or outside the hold, lets a write to vm2 made after vm1's
//! cut into a point that lacks the write to vm1 before it, and fails this.
//!
//! A second qemu VM asked for the same group is refused with the reason; once vm1's
//! qemu-storage-daemon is gone, vm1 is retried alone and the group goes on without it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vdrep_tests::images::{make_image, Kind};
use vdrep_tests::numbered::{Numbered, SLOT};
use vdrep_tests::procs::read_log;
use vdrep_tests::qemu_rig::{wait_until, Rig, StopOnDrop};
use vdrep_tests::qsd::Qsd;
use vdrep_tests::vdrep;

const SIZE: u64 = 8 << 20;
/// Group points to make while the guest writes.
const GROUP_POINTS: usize = 12;
const WRITES: Numbered = Numbered {
    magic: *b"VDREPQG1",
    disks: 4,
};
/// The hook's log line (`vdrep::tracking::test_hook::PAUSED_LOG`).
const PAUSED: &str = "test hook: log switch paused between disks";

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The guest of the group: write `k` goes to disk `(k-1) % 4` of vm1's `os`, vm2's `os`,
/// vm1's `data`, vm2's `data`, at slot `(k-1) / 4`.
struct Guest<'a> {
    qsd: &'a Qsd,
    images: [PathBuf; 2],
    scratch: PathBuf,
    next: AtomicU64,
    /// The longest write to vm2 (it waits for a group switch's hold).
    longest_image_ms: AtomicU64,
}

impl<'a> Guest<'a> {
    /// The guest of vm1 (`qsd`) and vm2's disks `images`, before its first write.
    fn new(qsd: &'a Qsd, images: [PathBuf; 2], scratch: PathBuf) -> Guest<'a> {
        Guest {
            qsd,
            images,
            scratch,
            next: AtomicU64::new(1),
            longest_image_ms: AtomicU64::new(0),
        }
    }

    /// Writes the next write; false when the disks are full.
    fn write_one(&self) -> bool {
        let k = self.next.load(Ordering::SeqCst);
        let disk = (k - 1) % 4;
        let offset = (k - 1) / 4 * SLOT;
        if offset + SLOT > SIZE {
            return false;
        }
        let data = WRITES.payload(k);
        match disk {
            0 | 2 => self.qsd.write((disk / 2) as usize, offset, &data),
            _ => {
                let t0 = Instant::now();
                vdrep_tests::log_write(
                    &self.images[(disk / 2) as usize],
                    offset,
                    &data,
                    &self.scratch,
                );
                self.longest_image_ms
                    .fetch_max(t0.elapsed().as_millis() as u64, Ordering::SeqCst);
            }
        }
        self.next.store(k + 1, Ordering::SeqCst);
        true
    }

    fn run(&self, stop: &AtomicBool) {
        while !stop.load(Ordering::SeqCst) && self.write_one() {}
    }

    fn written(&self) -> u64 {
        self.next.load(Ordering::SeqCst) - 1
    }
}

/// The points of `vm` in group `erp`: group cycle → switch time (`points --json`).
fn group_points_of(store: &Path, vm: &str) -> std::collections::BTreeMap<u64, u64> {
    vdrep_tests::group_points(store, vm, "erp")
        .into_iter()
        .map(|(cycle, (_, unix))| (cycle, unix))
        .collect()
}

/// The group cycles both members committed, each checked to have one time in both.
fn group_points(store: &Path) -> Vec<u64> {
    let (a, b) = (group_points_of(store, "vm1"), group_points_of(store, "vm2"));
    a.iter()
        .filter_map(|(gc, t1)| {
            let t2 = b.get(gc)?;
            assert_eq!(
                t1, t2,
                "group point {gc}: the members' points differ in time"
            );
            Some(*gc)
        })
        .collect()
}

/// Waits until the store holds two group points newer than `last` (`what` names the wait in
/// its timeout message, with the sender's log).
fn wait_for_group_points_after(store: &Path, log: &Path, last: u64, what: &str, secs: u64) {
    wait_until(what, log, Duration::from_secs(secs), || {
        group_points(store).iter().filter(|gc| **gc > last).count() >= 2
    });
}

/// `failover --test --group erp --point GC`: the four disks' bytes in the guest's order.
fn group_failover(dir: &Path, store: &Path, gc: u64) -> Vec<Vec<u8>> {
    let out_dir = dir.join(format!("fo-{gc}"));
    let _ = std::fs::remove_dir_all(&out_dir);
    let res = vdrep(&[
        "failover",
        "--test",
        "--store",
        s(store),
        "--group",
        "erp",
        "--point",
        &gc.to_string(),
        "--out",
        s(&out_dir),
    ]);
    assert!(
        res.status.success(),
        "failover of group point {gc}: {}",
        String::from_utf8_lossy(&res.stderr)
    );
    let disks = [
        ("vm1", "os"),
        ("vm2", "os"),
        ("vm1", "data"),
        ("vm2", "data"),
    ]
    .iter()
    .map(|(vm, n)| {
        let mut b = std::fs::read(out_dir.join(vm).join(format!("{n}.vhd"))).unwrap();
        b.truncate(SIZE as usize);
        b
    })
    .collect();
    let _ = std::fs::remove_dir_all(&out_dir);
    disks
}

/// One request on the sender's control socket.
fn control(sock: &Path, req: Value) -> Value {
    vdrep_tests::control_request(sock, &req)
}

/// vm2's disks in the rig's folder, all zero: `vm2/os.raw` and a fixed VHD `vm2/data.vhd`.
fn image_vm_disks(rig: &Rig) -> (PathBuf, PathBuf) {
    let img = rig.dir.join("vm2");
    std::fs::create_dir_all(&img).unwrap();
    let os = img.join("os.raw");
    std::fs::write(&os, vec![0u8; SIZE as usize]).unwrap();
    let data = make_image(&img, "data", Kind::VhdFixed, SIZE, &[]);
    (os, data)
}

/// Every group point failed over (`group_failover`), each checked to hold the writes
/// 1..m for some m: (group cycle, m) in order.
fn prefixes_of_group_points(rig: &Rig) -> Vec<(u64, u64)> {
    let mut ms = Vec::new();
    for gc in group_points(&rig.store) {
        let disks = group_failover(&rig.dir, &rig.store, gc);
        let mut all = Vec::new();
        for (i, (b, fill)) in disks.iter().zip([0x11, 0, 0x22, 0]).enumerate() {
            all.extend(WRITES.writes_in(b, i as u64, fill));
        }
        all.sort_unstable();
        let m = all.len() as u64;
        assert_eq!(
            all,
            (1..=m).collect::<Vec<_>>(),
            "group point {gc} holds writes {all:?}: not a prefix 1..{m} (the qemu VM was not \
             cut at the image VM's instant)"
        );
        ms.push((gc, m));
    }
    ms
}

#[test]
fn every_group_point_of_a_qemu_vm_and_an_image_vm_holds_a_prefix_of_ordered_writes() {
    let mut rig = Rig::new(SIZE);
    let (os, data) = image_vm_disks(&rig);
    let conf = format!(
        "interval = \"2s\"\n\
         [[vm]]\nname = \"vm1\"\nqmp = \"{}\"\ndrives = [\"os\", \"data\"]\ngroup = \"erp\"\n\
         [[vm]]\nname = \"vm2\"\ndisks = [\"{}\", \"{}\"]\ngroup = \"erp\"\n",
        rig.qsd.qmp_socket().display(),
        s(&os),
        s(&data)
    );
    let sock = rig.dir.join("sender.sock");
    let send = rig
        .send_config("send.log", &conf, "60s")
        .arg("--control")
        .arg(s(&sock))
        .env("VDREP_TEST_SWITCH_PAUSE", "300");
    let mut child = send.spawn();
    let log = send.log.clone();
    wait_until(
        "the first group point",
        &log,
        Duration::from_secs(120),
        || !group_points(&rig.store).is_empty(),
    );

    // A second qemu VM in the group: refused, saying why (before anything runs in qemu).
    let a = control(
        &sock,
        json!({"op": "protect", "vm": "vm3", "qmp": "/nonexistent/vm3.qmp",
               "group": "erp", "interval_seconds": 2}),
    );
    assert_eq!(a["ok"], false, "{a}");
    let e = a["error"].as_str().unwrap();
    assert!(
        e.contains("consistency group erp")
            && e.contains("holds qemu VM vm1 already")
            && e.contains("at most one qemu VM"),
        "{e}"
    );

    let guest = Guest::new(&rig.qsd, [os.clone(), data.clone()], rig.dir.join("w.bin"));
    let stop = AtomicBool::new(false);
    let before = group_points(&rig.store).len();
    std::thread::scope(|sc| {
        let h = sc.spawn(|| guest.run(&stop));
        let _stop = StopOnDrop(&stop);
        wait_until("group points", &log, Duration::from_secs(300), || {
            group_points(&rig.store).len() >= before + GROUP_POINTS
        });
        stop.store(true, Ordering::SeqCst);
        h.join().unwrap();
    });
    // Two more group points switched after the guest stopped: the newest holds every write.
    let last = *group_points(&rig.store).last().unwrap();
    wait_for_group_points_after(&rig.store, &log, last, "group points after the writes", 60);
    let written = guest.written();
    let longest_image_ms = guest.longest_image_ms.load(Ordering::SeqCst);
    drop(guest);

    // vm1's qemu goes away: vm1 is retried alone and the group switches without it (vm2's
    // group points go on), instead of waiting for it.
    let both = *group_points(&rig.store).last().unwrap();
    rig.qsd.crash();
    wait_until(
        "group points of vm2 alone",
        &log,
        Duration::from_secs(90),
        || {
            group_points_of(&rig.store, "vm2")
                .keys()
                .filter(|gc| **gc > both)
                .count()
                >= 2
        },
    );
    let _ = child.kill();
    let _ = child.wait();
    let text = read_log(&log);
    assert!(
        text.contains(PAUSED),
        "the test hook did not pause:\n{text}"
    );
    assert!(
        text.contains("qemu VM vm1"),
        "no pause after the qemu cut inside a group switch:\n{text}"
    );

    assert!(
        text.contains("the group switches without it until it is back")
            && text.contains("retrying this VM alone"),
        "vm1 did not leave the group while its qemu was gone:\n{text}"
    );
    let ms = prefixes_of_group_points(&rig);
    eprintln!("group points (group cycle, writes): {ms:?}; {written} writes");
    assert!(ms.len() >= GROUP_POINTS, "group points: {ms:?}");
    assert_eq!(
        ms.last().unwrap().1,
        written,
        "the last group point holds every write: {ms:?}"
    );
    let cut = ms.iter().filter(|&&(_, m)| m > 0 && m < written).count();
    assert!(
        cut >= GROUP_POINTS - 2,
        "the writes did not span the group switches: {ms:?}"
    );
    assert!(
        longest_image_ms >= 300,
        "no write to the image VM waited for a group switch's hold ({longest_image_ms} ms)"
    );
}

/// A qemu VM that joins a group through the control socket (the API's `protect` with `qmp`
/// and `group`) switches with it, and after a restart it comes back into the group from
/// `STATE/vms.json` (the config names only the image VM): the group points from both runs
/// hold both VMs and a prefix of the ordered writes.
#[test]
fn a_qemu_vm_joins_a_group_through_the_api_and_stays_in_it_after_a_restart() {
    let rig = Rig::new(SIZE);
    let (os, data) = image_vm_disks(&rig);
    let conf = format!(
        "interval = \"2s\"\n\
         [[vm]]\nname = \"vm2\"\ndisks = [\"{}\", \"{}\"]\ngroup = \"erp\"\n",
        s(&os),
        s(&data)
    );
    let sock = rig.dir.join("sender.sock");
    let start = |log: &str| {
        rig.send_config(log, &conf, "60s")
            .arg("--control")
            .arg(s(&sock))
            .env("VDREP_TEST_SWITCH_PAUSE", "300")
    };
    let send = start("send.log");
    let mut child = send.spawn();
    let log = send.log.clone();
    wait_until(
        "vm2's first group point",
        &log,
        Duration::from_secs(120),
        || !group_points_of(&rig.store, "vm2").is_empty(),
    );
    assert!(
        group_points_of(&rig.store, "vm1").is_empty(),
        "vm1 has group points before it was protected"
    );

    let a = control(
        &sock,
        json!({"op": "protect", "vm": "vm1", "qmp": s(&rig.qsd.qmp_socket()),
               "drives": ["os", "data"], "group": "erp", "interval_seconds": 2}),
    );
    assert_eq!(a["ok"], true, "protect vm1 in group erp: {a}");

    let guest = Guest::new(&rig.qsd, [os.clone(), data.clone()], rig.dir.join("w.bin"));
    let stop = AtomicBool::new(false);
    std::thread::scope(|sc| {
        let h = sc.spawn(|| guest.run(&stop));
        let _stop = StopOnDrop(&stop);
        wait_until(
            "group points with vm1",
            &log,
            Duration::from_secs(180),
            || group_points(&rig.store).len() >= 4,
        );
        stop.store(true, Ordering::SeqCst);
        h.join().unwrap();
    });
    let written = guest.written();
    drop(guest);
    let joined = group_points(&rig.store);
    let _ = child.kill();
    let _ = child.wait();
    let saved = std::fs::read_to_string(rig.dir.join("state/vms.json")).unwrap();
    assert!(
        saved.contains("\"vm1\"") && saved.contains("erp"),
        "vms.json does not keep vm1 in group erp: {saved}"
    );

    // The restart's config names vm2 only: vm1 comes back from vms.json, into the group.
    let send = start("send2.log");
    let mut child = send.spawn();
    let log2 = send.log.clone();
    let last = *joined.last().unwrap();
    wait_for_group_points_after(
        &rig.store,
        &log2,
        last,
        "group points with vm1 after the restart",
        120,
    );
    let _ = child.kill();
    let _ = child.wait();

    let ms = prefixes_of_group_points(&rig);
    eprintln!("group points (group cycle, writes): {ms:?}; {written} writes");
    assert!(
        ms.iter().filter(|(gc, _)| *gc > last).count() >= 2,
        "no group point with vm1 after the restart: {ms:?}"
    );
    assert_eq!(
        ms.last().unwrap().1,
        written,
        "the last group point holds every write: {ms:?}"
    );
    assert!(
        ms.iter().any(|&(_, m)| m > 0 && m < written),
        "the writes did not span a group switch: {ms:?}"
    );
}
