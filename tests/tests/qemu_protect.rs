//! Protecting a running qemu VM (issue 18 item 2): a real `qemu-storage-daemon` runs the
//! VM's disks (a raw and a qcow2 image) with a QMP socket and a FUSE export per disk that
//! plays the guest; `vdrep send --vm vm1 --qmp SOCKET --drive os --drive data` protects it
//! with dirty bitmaps and fleecing views read over NBD.
//!
//! Here: the initial replication reads the disks as they were when protection started
//! while the guest writes; later cycles converge to the disks' final state (`qemu-img
//! compare -U`); each cycle reads no more from its views than the bitmaps marked dirty; a
//! clean stop (SIGTERM) leaves only the bitmaps in qemu, and the writes made while the
//! sender was stopped are in the next point.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use vdrep_tests::procs::{certs, finish, read_log, wait_for_log, Receiver, Send};
use vdrep_tests::qsd::{make_disk, Qsd};
use vdrep_tests::vdrep;

const MIB: u64 = 1 << 20;
const SIZE: u64 = 16 * MIB;
/// Logged by the sender after each switch.
const SWITCHED: &str = "qemu switch of the VM's disks";
/// Logged by the sender per committed qemu cycle, with its counters.
const CYCLE_READ: &str = "qemu cycle: bytes read from views against dirty bytes";

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

struct Rig {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    tls: PathBuf,
    store: PathBuf,
    _rx: Receiver,
    qsd: Qsd,
}

impl Rig {
    fn new() -> Rig {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let tls = certs(&dir.join("tls"), &["hv01"]);
        let store = dir.join("store");
        let rx = Receiver::start(&store, &tls, &["hv01=vm1"]);
        let q = dir.join("qsd");
        std::fs::create_dir_all(&q).unwrap();
        let disks = vec![
            make_disk(&q, "os", "raw", SIZE, 0x11),
            make_disk(&q, "data", "qcow2", SIZE, 0x22),
        ];
        let qsd = Qsd::start(&q, disks);
        Rig {
            _tmp: tmp,
            dir,
            tls,
            store,
            _rx: rx,
            qsd,
        }
    }

    fn send(&self, log: &str) -> Send {
        let mut snd = Send::new(&self._rx.to(), &self.tls, "hv01", "vm1", &[], &self.dir.join(log));
        for a in [
            "--qmp",
            s(&self.qsd.qmp_socket()),
            "--drive",
            "os",
            "--drive",
            "data",
            "--interval",
            "1s",
            "--give-up-after",
            "60s",
            "--state",
            s(&self.dir.join("state")),
        ] {
            snd = snd.arg(a);
        }
        snd
    }

    /// The VM's points (cycles), checked to be the same for both disks.
    fn points(&self) -> Vec<u64> {
        let out = vdrep(&["points", "--store", s(&self.store), "--vm", "vm1", "--json"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let list = |name: &str| -> Vec<u64> {
            doc["disks"]
                .as_array()
                .unwrap()
                .iter()
                .find(|d| d["disk"] == name)
                .unwrap_or_else(|| panic!("no disk {name}: {doc:#}"))["points"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["cycle"].as_u64().unwrap())
                .collect()
        };
        let (a, b) = (list("os"), list("data"));
        assert_eq!(a, b, "the disks' points differ: {doc:#}");
        a
    }

    /// Fails point `p` over into `DIR/fo-P`; returns the folder (`os.vhd`, `data.vhd`).
    fn failover(&self, p: u64) -> PathBuf {
        let out_dir = self.dir.join(format!("fo-{p}"));
        let _ = std::fs::remove_dir_all(&out_dir);
        let out = vdrep(&[
            "failover",
            "--test",
            "--store",
            s(&self.store),
            "--vm",
            "vm1",
            "--point",
            &p.to_string(),
            "--out",
            s(&out_dir),
        ]);
        assert!(
            out.status.success(),
            "failover of point {p}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out_dir
    }
}

/// `qemu-img compare -U` of a source image (in use by the daemon) and a replica.
fn compare(src: &Path, fmt: &str, replica: &Path) -> Result<(), String> {
    let out = Command::new("qemu-img")
        .args(["compare", "-U", "-f", fmt, "-F", "vpc"])
        .arg(src)
        .arg(replica)
        .output()
        .expect("qemu-img compare");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} vs {}: {}{}",
            src.display(),
            replica.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Copies an image as raw bytes (`qemu-img convert -U`), to keep a disk's state.
fn snapshot(src: &Path, fmt: &str, out: &Path) {
    let ok = Command::new("qemu-img")
        .args(["convert", "-U", "-f", fmt, "-O", "raw"])
        .arg(src)
        .arg(out)
        .status()
        .unwrap()
        .success();
    assert!(ok, "qemu-img convert {}", src.display());
}

/// The counters of the newest cycle-read line of disk `disk`: (dirty, read) bytes.
fn counters(log: &str, disk: &str) -> Option<(u64, u64)> {
    let line = log
        .lines()
        .filter(|l| l.contains(CYCLE_READ) && l.contains(&format!("disk={disk}")))
        .last()?;
    let field = |k: &str| -> u64 {
        let at = line.find(&format!("{k}=")).unwrap() + k.len() + 1;
        line[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    Some((field("dirty_bytes_total"), field("view_read_bytes_total")))
}

fn wait_until(what: &str, log: &Path, timeout: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}:\n{}", read_log(log));
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Stops the guest when the test fails while it writes.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// The guest: scattered writes of 4..64 KiB to both disks until `stop`.
fn guest_writes(qsd: &Qsd, seed: u64, stop: &AtomicBool, max: usize) -> usize {
    let mut x = seed | 1;
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) && n < max {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let disk = (x % 2) as usize;
        let len = 4096 * (1 + (x >> 8) % 16);
        let off = ((x >> 16) % (SIZE / 4096)) * 4096;
        let len = len.min(SIZE - off);
        let data = vec![(x >> 32) as u8 | 1; len as usize];
        qsd.write(disk, off, &data);
        n += 1;
        std::thread::sleep(Duration::from_millis(2));
    }
    n
}

#[test]
fn initial_replication_holds_the_disks_at_protection_start_and_cycles_converge_reading_only_dirty_extents(
) {
    let mut rig = Rig::new();
    let q = rig.dir.join("qsd");
    // The disks as protection finds them (nothing writes before the sender's first switch).
    snapshot(&q.join("os.raw"), "raw", &rig.dir.join("os-start.raw"));
    snapshot(&q.join("data.qcow2"), "qcow2", &rig.dir.join("data-start.raw"));
    let send = rig.send("send.log");
    let t0 = Instant::now();
    let child = send.spawn();
    assert!(
        wait_for_log(&send.log, SWITCHED, Duration::from_secs(60)),
        "no first switch: {}",
        read_log(&send.log)
    );
    // The guest writes throughout the initial copy and a few cycles.
    let stop = AtomicBool::new(false);
    let written = std::thread::scope(|sc| {
        let h = sc.spawn(|| guest_writes(&rig.qsd, 7, &stop, usize::MAX));
        let _stop = StopOnDrop(&stop);
        let switches = |n| read_log(&send.log).matches(SWITCHED).count() >= n;
        wait_until("four switches", &send.log, Duration::from_secs(90), || switches(4));
        stop.store(true, Ordering::SeqCst);
        h.join().unwrap()
    });
    assert!(written > 50, "the guest wrote only {written} times");
    // Writes stopped: the next round that commits ships the rest.
    let seen = read_log(&send.log).matches(CYCLE_READ).count();
    wait_until("two more committed rounds", &send.log, Duration::from_secs(60), || {
        read_log(&send.log).matches(CYCLE_READ).count() >= seen + 4
    });
    // SIGTERM: a clean stop.
    // SAFETY: kill(2) of our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let res = finish(child, t0, Duration::from_secs(30), &send.log);
    assert!(res.status.success(), "clean stop failed: {}\n{}", res.status, res.log);

    let pts = rig.points();
    assert!(pts.len() >= 4, "points {pts:?}");
    assert_eq!(pts[0], 0);
    // Point 0 is the disks at protection start, although the guest wrote during the copy.
    let first = rig.failover(0);
    compare(&rig.dir.join("os-start.raw"), "raw", &first.join("os.vhd")).unwrap();
    compare(&rig.dir.join("data-start.raw"), "raw", &first.join("data.vhd")).unwrap();
    assert!(
        compare(&q.join("os.raw"), "raw", &first.join("os.vhd")).is_err(),
        "the guest's writes are not visible: the test proves nothing"
    );
    // The newest point is the disks as the guest left them.
    let last = rig.failover(*pts.last().unwrap());
    compare(&q.join("os.raw"), "raw", &last.join("os.vhd")).unwrap();
    compare(&q.join("data.qcow2"), "qcow2", &last.join("data.vhd")).unwrap();

    // Each cycle read from its views no more than its bitmap marked dirty (granularity).
    for disk in ["os", "data"] {
        let (dirty, read) = counters(&res.log, disk).expect("cycle counters logged");
        eprintln!("{disk}: {dirty} dirty bytes, {read} bytes read from views, {} points, {written} guest writes", pts.len());
        assert!(dirty > 0, "{disk}: no dirty bytes counted");
        assert!(
            read as f64 <= dirty as f64 * 1.05,
            "{disk}: read {read} bytes from views for {dirty} dirty bytes"
        );
    }

    // A clean stop leaves only the bitmaps: one per disk.
    let (objs, bitmaps) = rig.qsd.vdrep_objects();
    assert!(objs.is_empty(), "left in qemu after a clean stop: {objs:?}");
    let mut nodes: Vec<&str> = bitmaps.iter().map(|(n, _)| n.as_str()).collect();
    nodes.sort_unstable();
    assert_eq!(nodes, vec!["data", "os"], "bitmaps {bitmaps:?}");

    // Writes made while the sender is stopped are in the next point.
    rig.qsd.write(0, 3 * MIB, &vec![0xab; 8192]);
    rig.qsd.write(1, 5 * MIB + 4096, &vec![0xcd; 4096]);
    let again = rig.send("send2.log").arg("--max-cycles").arg("1");
    let res = again.run(Duration::from_secs(90));
    assert!(res.status.success(), "restart: {}\n{}", res.status, res.log);
    let pts2 = rig.points();
    assert_eq!(pts2.len(), pts.len() + 1, "one more point: {pts2:?}");
    let next = rig.failover(*pts2.last().unwrap());
    compare(&q.join("os.raw"), "raw", &next.join("os.vhd")).unwrap();
    compare(&q.join("data.qcow2"), "qcow2", &next.join("data.vhd")).unwrap();
    let (objs, _) = rig.qsd.vdrep_objects();
    assert!(objs.is_empty(), "left in qemu after --max-cycles: {objs:?}");
    rig.qsd.stop();
}
