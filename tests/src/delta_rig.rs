//! The rig of the delta-replication tests on the local store: one tracked disk with its
//! receiver, runs of `vdrep send --interval 1s`, sources frozen at each switch, and the
//! newest recovery point failed over and compared (the method is in `tests/delta.rs`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::cycles::{assert_same, changes, failover_local, written, Change, Pattern, TrackedDisk};
use crate::images::{make_image, scattered_writes, seeded_raw, Kind};
pub use crate::procs::tail;
use crate::procs::{certs, finish, read_log, Receiver, Send, SendResult};
use crate::vdrep_ok;

const MIB: u64 = 1 << 20;

/// Runs `send` while a writer keeps writing tracked extents to `disk` until it sees the log
/// switch; the disk at that moment is copied to `frozen`. Returns the run and the batches
/// the writer wrote; panics if the writer never saw a switch.
pub fn run_until_switch(
    disk: &TrackedDisk,
    send: &Send,
    seed: u64,
    frozen: &Path,
    limit: Duration,
) -> (SendResult, usize) {
    let start = disk.active_ino();
    let stop = AtomicBool::new(false);
    let (res, (batches, seen)) = std::thread::scope(|sc| {
        let w = sc.spawn(|| disk.write_until_switch(seed, start, &stop, frozen));
        let t0 = Instant::now();
        let res = finish(send.spawn(), t0, limit, &send.log);
        stop.store(true, Ordering::Relaxed);
        (res, w.join().unwrap())
    });
    assert!(seen, "the writer never saw the log switch");
    (res, batches)
}

/// One protected disk with its receiver.
pub struct LocalRig {
    _tmp: tempfile::TempDir,
    pub dir: PathBuf,
    pub tls: PathBuf,
    pub store: PathBuf,
    pub rx: Receiver,
    pub disk: TrackedDisk,
    /// Frozen sources, one per check.
    frozen: usize,
    /// Per check: whether failover verified the point against the sender's digest.
    pub verified: Vec<bool>,
}

impl LocalRig {
    pub fn new(kind: Kind, size: u64, seed: u64) -> LocalRig {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let tls = certs(&dir.join("tls"), &["hv01"]);
        let store = dir.join("store");
        let rx = Receiver::start(&store, &tls, &["hv01=vm1"]);
        let path = match kind {
            Kind::Raw => seeded_raw(&dir.join("disk.raw"), size, seed, MIB as usize, 3),
            _ => make_image(&dir, "disk", kind, size, &scattered_writes(seed, size, 12)),
        };
        let disk = TrackedDisk::new(&path, kind, size, &dir.join("scratch"));
        LocalRig {
            _tmp: tmp,
            dir,
            tls,
            store,
            rx,
            disk,
            frozen: 0,
            verified: Vec::new(),
        }
    }

    /// `vdrep send --interval 1s` of the disk, plus `extra` flags (`--give-up-after 120s`
    /// unless `extra` sets it).
    pub fn send(&self, extra: &[&str]) -> Send {
        let mut s = Send::new(
            &self.rx.to(),
            &self.tls,
            "hv01",
            "vm1",
            &[&self.disk.path],
            &self.dir.join("send.log"),
        )
        .arg("--interval")
        .arg("1s");
        if !extra.contains(&"--give-up-after") {
            s = s.arg("--give-up-after").arg("120s");
        }
        for a in extra {
            s = s.arg(a);
        }
        s
    }

    pub fn next_frozen(&mut self) -> PathBuf {
        self.frozen += 1;
        self.dir.join(format!("frozen{}.raw", self.frozen))
    }

    /// Copies the source now.
    pub fn freeze(&mut self) -> PathBuf {
        let f = self.next_frozen();
        self.disk.freeze(&f);
        f
    }

    /// Stops the receiver, fails over the newest point, returns it (a raw file) and its
    /// cycle; the receiver is not restarted.
    pub fn newest_point_stopped(&mut self) -> (u64, PathBuf) {
        self.rx.kill9();
        let out = self.dir.join("failover.raw");
        let _ = std::fs::remove_file(&out);
        let c = failover_local(
            &self.store,
            "vm1",
            "disk",
            &self.disk.path,
            self.disk.size,
            None,
            &out,
        );
        (c, out)
    }

    /// The newest recovery point, failed over by `vdrep failover --test` while the receiver
    /// runs, equals `frozen`; returns its cycle.
    pub fn check_newest(&mut self, frozen: &Path, what: &str) -> u64 {
        let out = self.dir.join("failover");
        let _ = std::fs::remove_dir_all(&out);
        let o = vdrep_ok(&[
            "failover",
            "--test",
            "--store",
            self.store.to_str().unwrap(),
            "--vm",
            "vm1",
            "--point",
            "latest",
            "--out",
            out.to_str().unwrap(),
            "--json",
        ]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("failover --json");
        let c = v[0]["point"].as_u64().expect("point");
        self.verified.push(v[0]["verified"].as_bool() == Some(true));
        assert_same(
            frozen,
            &out.join("disk.vhd"),
            "vpc",
            &format!("{what}: point {c}"),
        );
        c
    }

    pub fn send_log(&self) -> String {
        read_log(&self.dir.join("send.log"))
    }

    /// One `--max-cycles 1` run with no concurrent writer; returns the frozen source.
    pub fn quiet_run(&mut self, extra: &[&str]) -> PathBuf {
        let mut args = vec!["--max-cycles", "1"];
        args.extend_from_slice(extra);
        let r = self.send(&args).run(Duration::from_secs(120));
        r.ok();
        self.freeze()
    }

    /// One `--max-cycles 1` run while a writer keeps writing until the switch; returns the
    /// frozen source and the batches written during the run.
    pub fn concurrent_run(&mut self, extra: &[&str], seed: u64) -> (PathBuf, usize) {
        let mut args = vec!["--max-cycles", "1"];
        args.extend_from_slice(extra);
        let send = self.send(&args);
        let frozen = self.next_frozen();
        let (res, batches) =
            run_until_switch(&self.disk, &send, seed, &frozen, Duration::from_secs(120));
        res.ok();
        (frozen, batches)
    }
}

pub fn count(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

/// Waits until the receiver log has more than `n` lines with `needle`; returns the wait.
pub fn wait_count(rx: &Receiver, needle: &str, n: usize, timeout: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if count(&rx.log_text(), needle) > n {
            return Some(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// Scattered 4 KiB..1 MiB writes of random bytes totalling about `total` bytes.
pub fn big_cycle(size: u64, total: u64, seed: u64) -> Vec<Change> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut v = Vec::new();
    let mut n = 0;
    while n < total {
        let c = changes(Pattern::Scattered { n: 1, max: MIB }, size, &mut rng);
        n += written(&c);
        v.extend(c);
    }
    v
}
