//! The rig of the qemu change source's end-to-end tests (`tests/qemu_*.rs`): a receiver,
//! certificates, qemu-storage-daemon VMs with a raw and a qcow2 disk each, and the commands
//! and log lines the tests share (send, points, failover, `qemu-img compare -U`, health).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::procs::{certs, read_log, tail, Receiver, Send};
use crate::qsd::{make_disk, Qsd};
use crate::vdrep;
use vdrep_store::sink::{ReplicaDisk, ReplicaStore};

/// Logged by the sender per committed qemu cycle, with its counters.
pub const CYCLE_READ: &str = "qemu cycle: bytes read from views against dirty bytes";
/// Logged by the sender after each switch of a qemu VM's disks.
pub const SWITCHED: &str = "qemu switch of the VM's disks";
/// Logged by the sender per VM recovery point committed.
pub const VM_POINT: &str = "VM recovery point committed";
/// Logged when the test hook `VDREP_TEST_QEMU_PAUSE` holds a round with its views in place.
pub const PAUSED: &str = "test hook: qemu round paused with its views in place";
/// The sender's log line when the test hook holds a cycle drained into its spool.
pub const SPOOLED: &str = "test hook: qemu cycle paused with its view drained and removed";

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A qemu-storage-daemon VM in `dir` with two disks of `size` bytes: `os` (raw, filled
/// with 0x11) and `data` (qcow2, filled with 0x22), each with a guest FUSE export.
pub fn qemu_vm(dir: &Path, size: u64) -> Qsd {
    std::fs::create_dir_all(dir).unwrap();
    let disks = vec![
        make_disk(dir, "os", "raw", size, 0x11),
        make_disk(dir, "data", "qcow2", size, 0x22),
    ];
    Qsd::start(dir, disks)
}

/// A receiver (authorising `hv01` for `vm1` and `vm2`), its certificates and the VM `vm1`:
/// a qemu-storage-daemon in `DIR/qsd` ([`qemu_vm`]).
pub struct Rig {
    _tmp: tempfile::TempDir,
    /// The test folder.
    pub dir: PathBuf,
    tls: PathBuf,
    /// The receiver's store.
    pub store: PathBuf,
    rx: Receiver,
    /// The VM.
    pub qsd: Qsd,
    /// What the last [`Rig::failover`] said (stdout and stderr).
    pub last_failover: std::sync::Mutex<String>,
}

impl Rig {
    /// Disks of `size` bytes.
    pub fn new(size: u64) -> Rig {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let tls = certs(&dir.join("tls"), &["hv01"]);
        let store = dir.join("store");
        let rx = Receiver::start(&store, &tls, &["hv01=vm1,vm2"]);
        let qsd = qemu_vm(&dir.join("qsd"), size);
        Rig {
            _tmp: tmp,
            dir,
            tls,
            store,
            rx,
            qsd,
            last_failover: Default::default(),
        }
    }

    /// Another VM like `vm1`'s, in `DIR/qsd-NAME`.
    pub fn other_vm(&self, name: &str, size: u64) -> Qsd {
        qemu_vm(&self.dir.join(format!("qsd-{name}")), size)
    }

    /// `vdrep send --vm vm1 --qmp ... --drive os --drive data --interval 1s`, logging to
    /// `DIR/LOG`, state in `DIR/state`.
    pub fn send(&self, log: &str) -> Send {
        self.send_every(log, "1s")
    }

    /// [`Rig::send`] with another interval.
    pub fn send_every(&self, log: &str, interval: &str) -> Send {
        let mut snd = Send::new(
            &self.rx.to(),
            &self.tls,
            "hv01",
            "vm1",
            &[],
            &self.dir.join(log),
        );
        for a in [
            "--qmp",
            s(&self.qsd.qmp_socket()),
            "--drive",
            "os",
            "--drive",
            "data",
            "--interval",
            interval,
            "--give-up-after",
            "60s",
            "--state",
            s(&self.dir.join("state")),
        ] {
            snd = snd.arg(a);
        }
        snd
    }

    /// A sender of several qemu VMs (name, daemon) from a config file (`[[vm]]` with `qmp`
    /// and `drives`), every `interval`, giving up after `give_up`, state in `DIR/state`.
    pub fn send_vms(&self, log: &str, vms: &[(&str, &Qsd)], interval: &str, give_up: &str) -> Send {
        let mut conf = format!("interval = \"{interval}\"\n");
        for (name, q) in vms {
            conf += &format!(
                "[[vm]]\nname = \"{name}\"\nqmp = \"{}\"\ndrives = [\"os\", \"data\"]\n",
                q.qmp_socket().display()
            );
        }
        self.send_config(log, &conf, give_up)
    }

    /// A sender of the config `conf` (written to `DIR/LOG.toml`), giving up after
    /// `give_up`, state in `DIR/state`.
    pub fn send_config(&self, log: &str, conf: &str, give_up: &str) -> Send {
        let path = self.dir.join(format!("{log}.toml"));
        std::fs::write(&path, conf).unwrap();
        let mut snd = Send::new(
            &self.rx.to(),
            &self.tls,
            "hv01",
            "-",
            &[],
            &self.dir.join(log),
        );
        snd.vm = None;
        for a in [
            "--config",
            s(&path),
            "--give-up-after",
            give_up,
            "--state",
            s(&self.dir.join("state")),
        ] {
            snd = snd.arg(a);
        }
        snd
    }

    /// The sender's `health.json` entry of `vm`: (state, last error's message).
    pub fn vm_health(&self, vm: &str) -> Option<(String, String)> {
        let path = self.dir.join("state/health.json");
        let h: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
        let v = h["vms"].as_array()?.iter().find(|v| v["vm"] == vm)?;
        Some((
            v["state"].as_str()?.to_string(),
            v["last_error"]["message"]
                .as_str()
                .unwrap_or("")
                .to_string(),
        ))
    }

    /// The ids of the VM's recovery points (`points --json`, top level), each checked to name
    /// both disks.
    pub fn points(&self) -> Vec<u64> {
        let out = vdrep(&["points", "--store", s(&self.store), "--vm", "vm1", "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        doc["points"]
            .as_array()
            .unwrap_or_else(|| panic!("no VM points: {doc:#}"))
            .iter()
            .map(|p| {
                let n = p["disks"].as_array().map_or(0, |d| d.len());
                assert_eq!(n, 2, "a VM point without both disks: {p:#}");
                p["id"].as_u64().unwrap()
            })
            .collect()
    }

    /// Fails point `p` over into `DIR/fo-P`; returns the folder (`os.vhd`, `data.vhd`).
    pub fn failover(&self, p: u64) -> PathBuf {
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
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "failover of point {p}: {said}");
        if let Ok(mut l) = self.last_failover.lock() {
            *l = said;
        }
        out_dir
    }

    /// Checks that the newest VM point's disks equal the guest's disks now (no write runs):
    /// its failover (which checks the sender's digests) compared with both images.
    pub fn newest_point_is_the_disks(&self, when: &str) {
        let p = *self.points().last().expect("no VM point");
        let fo = self.failover(p);
        let q = self.dir.join("qsd");
        compare(&q.join("os.raw"), "raw", &fo.join("os.vhd"))
            .unwrap_or_else(|e| panic!("{when}: point {p}, disk os: {e}"));
        compare(&q.join("data.qcow2"), "qcow2", &fo.join("data.vhd"))
            .unwrap_or_else(|e| panic!("{when}: point {p}, disk data: {e}"));
    }
}

/// The `file_bytes` of each qemu drain's log line in a sender's log: what went into the
/// spool files beyond the process's buffers.
pub fn spool_file_bytes(log: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains("dirty extents drained from the view into the spool"))
        .filter_map(|l| {
            let at = l.find("file_bytes=")? + "file_bytes=".len();
            l[at..]
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

/// `qemu-img compare -U` of a source image (in use by the daemon) and a replica.
pub fn compare(src: &Path, fmt: &str, replica: &Path) -> Result<(), String> {
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
pub fn snapshot(src: &Path, fmt: &str, out: &Path) {
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
pub fn counters(log: &str, disk: &str) -> Option<(u64, u64)> {
    let line = log
        .lines()
        .rfind(|l| l.contains(CYCLE_READ) && l.contains(&format!("disk={disk}")))?;
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

/// The newest `qemu cycle` line's discard counters of `disk`: bytes given back to qemu, and
/// reads of discarded ranges the views refused (`None` without such a line).
pub fn discard_counters(log: &str, disk: &str) -> Option<(u64, u64)> {
    let line = log
        .lines()
        .rfind(|l| l.contains(CYCLE_READ) && l.contains(&format!("disk={disk}")))?;
    let field = |k: &str| -> Option<u64> {
        let at = line.find(&format!("{k}="))? + k.len() + 1;
        line[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    Some((
        field("discarded_bytes_total")?,
        field("refused_reads_total")?,
    ))
}

/// Waits until `f` holds, failing with the log's excerpt after `timeout`.
pub fn wait_until(what: &str, log: &Path, timeout: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !f() {
        assert!(
            Instant::now() < end,
            "timed out waiting for {what} ({timeout:?}); {}",
            excerpt(&read_log(log))
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// [`wait_until`] while `child` runs: a sender that ended (it gave up, or failed) fails the
/// wait at once, with its exit status, instead of after `timeout`.
pub fn wait_running(
    what: &str,
    log: &Path,
    child: &mut std::process::Child,
    timeout: Duration,
    mut f: impl FnMut() -> bool,
) {
    wait_until(what, log, timeout, || {
        if let Ok(Some(st)) = child.try_wait() {
            panic!(
                "the sender ended ({st}) while the test waited for {what}; {}",
                excerpt(&read_log(log))
            );
        }
        f()
    })
}

/// A failing test's view of a long sender log: its warnings and errors, then its end. A CI
/// report keeps the head of a failure's output, and a whole log's head is its start, which
/// rarely says why a wait timed out.
pub fn excerpt(log: &str) -> String {
    let bad: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect();
    format!(
        "the log has {} lines; its last {} warnings and errors:\n{}\nits last 40 lines:\n{}",
        log.lines().count(),
        bad.len().min(30),
        tail(&bad.join("\n"), 30),
        tail(log, 40)
    )
}

/// Stops the guest when the test fails while it writes.
pub struct StopOnDrop<'a>(pub &'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// A 4 KiB numbered write.
pub use crate::numbered::SLOT;
/// The strict-order writer's writes (`crate::numbered`).
const WRITES: crate::numbered::Numbered = crate::numbered::Numbered {
    magic: *b"VDREPQ18",
    disks: 2,
};

/// The guest writing numbered 4 KiB blocks in strict order (each complete, `O_DSYNC`,
/// before the next starts), alternating between the disks: write `k` (from 1) goes to disk
/// `(k-1) % 2` at slot `(k-1) / 2`.
pub struct NumberedWriter {
    next: std::sync::atomic::AtomicU64,
    size: u64,
}

impl NumberedWriter {
    /// A writer for disks of `size` bytes.
    pub fn new(size: u64) -> NumberedWriter {
        NumberedWriter {
            next: std::sync::atomic::AtomicU64::new(1),
            size,
        }
    }

    /// Writes the next write; false when the disks are full.
    pub fn write_one(&self, qsd: &Qsd) -> bool {
        let k = self.next.load(Ordering::SeqCst);
        let offset = (k - 1) / 2 * SLOT;
        if offset + SLOT > self.size {
            return false;
        }
        qsd.write(((k - 1) % 2) as usize, offset, &payload(k));
        self.next.store(k + 1, Ordering::SeqCst);
        true
    }

    /// Writes until `stop` (or the disks are full), `pause` between writes.
    pub fn run(&self, qsd: &Qsd, stop: &AtomicBool, pause: Duration) {
        while !stop.load(Ordering::SeqCst) && self.write_one(qsd) {
            std::thread::sleep(pause);
        }
    }

    /// Writes made so far.
    pub fn written(&self) -> u64 {
        self.next.load(Ordering::SeqCst) - 1
    }
}

fn payload(k: u64) -> Vec<u8> {
    WRITES.payload(k)
}

/// The numbered writes disk `disk`'s bytes hold, each checked to be whole and in its place
/// (slots the writer never reached hold the fill byte `fill`).
pub fn writes_in(bytes: &[u8], disk: u64, fill: u8) -> Vec<u64> {
    WRITES.writes_in(bytes, disk, fill)
}

impl Rig {
    /// Checks every recovery point of the VM (the store's VM points: one per qemu switch
    /// whose every disk reached its view) names both disks and holds exactly the writes
    /// 1..m for some m across them (each disk read at its part's cycle), and that the newest
    /// holds all `written` writes; returns (VM point, m) per point. Stops the receiver (the
    /// store is read directly).
    pub fn check_prefixes(&mut self, size: u64, written: u64) -> Vec<(u64, u64)> {
        self.rx.kill9();
        let store = vdrep_store::sink::local::LocalStore::open(&self.store).expect("open store");
        let open = |name: &str| {
            let key = vdrep_store::sink::DiskKey::new("vm1", name).unwrap();
            // qemu disks carry no identity of their own (NIL).
            store
                .open_local(&key, size, vdrep_proto::Guid::default())
                .expect("open replica")
        };
        let (os, data) = (open("os"), open("data"));
        // The manifest itself: a store without one lists the disks' common cycles instead
        // (`vm_points::list`), which would hide a sender that commits no VM point.
        let points = store
            .vm_points("vm1")
            .expect("read the VM points")
            .expect("no VM points of vm1 in the store: qemu switches made none")
            .points;
        let mut out = Vec::new();
        for p in &points {
            let cycle = |name: &str| {
                p.part(name)
                    .unwrap_or_else(|| panic!("VM point {} has no part of {name}", p.vm_cycle))
                    .cycle
            };
            assert_eq!(p.disks.len(), 2, "VM point {}: {:?}", p.vm_cycle, p.disks);
            let (c_os, c_data) = (cycle("os"), cycle("data"));
            // One QMP transaction per switch: every point is one instant, the initial
            // copies' (cycles 0) too.
            assert!(p.consistent, "VM point {} is not consistent", p.vm_cycle);
            let mut all = writes_in(&os.read_point(c_os, 0, size as usize).unwrap(), 0, 0x11);
            all.extend(writes_in(
                &data.read_point(c_data, 0, size as usize).unwrap(),
                1,
                0x22,
            ));
            all.sort_unstable();
            let m = all.len() as u64;
            let want: Vec<u64> = (1..=m).collect();
            assert_eq!(
                all, want,
                "VM point {} (os {c_os}, data {c_data}) holds writes {all:?}: not a prefix 1..{m} of the writes",
                p.vm_cycle
            );
            out.push((p.vm_cycle, m));
        }
        assert_eq!(
            out.last().map(|p| p.1),
            Some(written),
            "the newest VM point misses writes: {out:?}"
        );
        out
    }
}
