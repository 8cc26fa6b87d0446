//! Delta replication into Azurite: `vdrep receive --azure-url … --azure-container …` (SAS),
//! initial replication while a writer writes, five cycles, and a resume after kill -9 of
//! the receiver in the middle of a cycle; after each step the newest recovery point (a
//! blob snapshot) is downloaded, as a test failover would, and compared with the source
//! frozen at that cycle's switch by `qemu-img compare`. The method of freezing the source
//! is described in `tests/delta.rs` and `tests/src/cycles.rs`.
//!
//! A receiver killed with -9 keeps its 15 s blob lease until it expires: its successor
//! answers "busy" (recoverable) and the sender retries on its fast schedule until the lease
//! is free, so the resume takes about the lease's length, not the retry schedule's minutes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::SeedableRng;
use vdrep::sink::azure::{AzureConfig, AzureStore};
use vdrep::sink::DiskKey;
use vdrep_tests::azurite::Azurite;
use vdrep_tests::cycles::{assert_same, changes, Change, Pattern, TrackedDisk};
use vdrep_tests::delta_rig::{count, run_until_switch};
use vdrep_tests::images::{make_image, scattered_writes, Kind};
use vdrep_tests::procs::{certs, finish, Receiver, Send};

const MIB: u64 = 1 << 20;
const CONTAINER: &str = "replicas";

struct AzRig {
    az: Azurite,
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    tls: PathBuf,
    rx: Receiver,
    disk: TrackedDisk,
    n: usize,
}

impl AzRig {
    fn store(&self) -> AzureStore {
        let mut cfg = AzureConfig::new(&self.az.url(), CONTAINER);
        cfg.sas = Some(self.az.sas());
        AzureStore::open(cfg).expect("open the Azure store read-only")
    }

    fn points(&self) -> Vec<u64> {
        self.store()
            .points_of(&DiskKey::new("vm1", "disk").unwrap())
            .expect("points")
            .into_iter()
            .map(|p| p.cycle)
            .collect()
    }

    /// Downloads the newest snapshot (a fixed VHD), compares it with `frozen`; returns its
    /// cycle. The receiver keeps running: points are read without the disk's lease.
    fn check_newest(&mut self, frozen: &Path, what: &str) -> u64 {
        let c = *self.points().last().expect("no recovery point");
        self.n += 1;
        let out = self.dir.join(format!("failover{}.vhd", self.n));
        self.store()
            .download_point(&DiskKey::new("vm1", "disk").unwrap(), c, &out)
            .expect("download point");
        assert_same(
            frozen,
            &out,
            "vpc",
            &format!("{what}: snapshot of point {c}"),
        );
        let _ = std::fs::remove_file(&out);
        c
    }

    fn send(&self, extra: &[&str]) -> Send {
        let mut s = Send::new(
            &self.rx.to(),
            &self.tls,
            "hv01",
            "vm1",
            &[&self.disk.path],
            &self.dir.join("send.log"),
        )
        .arg("--interval")
        .arg("1s")
        .arg("--max-cycles")
        .arg("1")
        .arg("--give-up-after")
        .arg("90s");
        for a in extra {
            s = s.arg(a);
        }
        s
    }

    fn frozen(&mut self) -> PathBuf {
        self.n += 1;
        self.dir.join(format!("frozen{}.raw", self.n))
    }

    /// A run with a writer writing until the switch; returns the frozen source.
    fn concurrent_run(&mut self, extra: &[&str], seed: u64) -> PathBuf {
        let send = self.send(extra);
        let frozen = self.frozen();
        let (res, _) = run_until_switch(&self.disk, &send, seed, &frozen, Duration::from_secs(180));
        res.ok();
        frozen
    }

    fn quiet_run(&mut self) -> PathBuf {
        self.send(&[]).run(Duration::from_secs(180)).ok();
        let f = self.frozen();
        self.disk.freeze(&f);
        f
    }
}

#[test]
fn delta_cycles_into_azurite_resume_after_a_receiver_kill_and_snapshots_equal_the_source() {
    let az = Azurite::start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let tls = certs(&dir.join("tls"), &["hv01"]);
    let size = 64 * MIB;
    let path = make_image(
        &dir,
        "disk",
        Kind::VhdDynamic,
        size,
        &scattered_writes(71, size, 10),
    );
    let rx = Receiver::start_azure(
        &az.url(),
        CONTAINER,
        &format!("?{}", az.sas()),
        &tls,
        &["hv01=vm1"],
        &dir.join("receiver.log"),
    );
    let disk = TrackedDisk::new(&path, Kind::VhdDynamic, size, &dir.join("scratch"));
    let mut rig = AzRig {
        az,
        _tmp: tmp,
        dir,
        tls,
        rx,
        disk,
        n: 0,
    };

    // Initial replication while the writer writes, then five cycles.
    let frozen = rig.concurrent_run(&["--bandwidth", "40Mbit"], 72);
    let mut last = rig.check_newest(&frozen, "initial + writes during it");
    let mut rng = StdRng::seed_from_u64(73);
    let plan: [(&[Pattern], bool); 5] = [
        (&[Pattern::Scattered { n: 10, max: MIB }], false),
        (
            &[Pattern::HotSpots {
                spots: 3,
                times: 10,
            }],
            true,
        ),
        (
            &[
                Pattern::Sequential { len: 6 * MIB },
                Pattern::EndSectors { n: 8 },
            ],
            false,
        ),
        (&[Pattern::Zeros { n: 5 }], false),
        (&[], true),
    ];
    for (i, (patterns, concurrent)) in plan.iter().enumerate() {
        let mut before: Vec<Change> = Vec::new();
        for p in *patterns {
            before.extend(changes(*p, size, &mut rng));
        }
        rig.disk.write(&before);
        let frozen = if *concurrent {
            rig.concurrent_run(&[], 80 + i as u64)
        } else {
            rig.quiet_run()
        };
        let c = rig.check_newest(&frozen, &format!("cycle run {}", i + 1));
        assert!(c > last, "run {}: no new point", i + 1);
        last = c;
    }

    // A ~15 MiB cycle (logs stay below half the disk, else it is a resync), paced; the
    // receiver is killed in the middle of it.
    let big = changes(Pattern::Scattered { n: 30, max: MIB }, size, &mut rng);
    let before = rig.frozen();
    rig.disk.freeze(&before);
    rig.disk.write(&big);
    let after = rig.frozen();
    rig.disk.freeze(&after);
    let send = rig.send(&["--bandwidth", "24Mbit"]);
    let opens = count(&rig.rx.log_text(), "disk opened");
    let t0 = Instant::now();
    let child = send.spawn();
    let end = Instant::now() + Duration::from_secs(60);
    while count(&rig.rx.log_text(), "disk opened") <= opens {
        assert!(Instant::now() < end, "the sender did not open the disk");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(2500));
    rig.rx.kill9();
    let c = rig.check_newest(&before, "latest point after the receiver's kill");
    assert_eq!(c, last, "a point appeared mid-cycle");
    let opens = count(&rig.rx.log_text(), "disk opened");
    let restarted = Instant::now();
    rig.rx.restart();
    let res = finish(child, t0, Duration::from_secs(180), &send.log);
    res.ok();
    let log = rig.rx.log_text();
    assert!(
        count(&log, "disk opened") > opens,
        "the sender never reopened the disk:\n{log}"
    );
    eprintln!(
        "cycle finished {:?} after the receiver's restart (the killed receiver's lease lasts {:?})",
        restarted.elapsed(),
        vdrep::sink::azure::lease_expiry(&AzureConfig::new(&rig.az.url(), CONTAINER))
    );
    let c = rig.check_newest(&after, "after the resumed cycle");
    assert!(c > last);
    let pts = rig.points();
    assert_eq!(pts.first(), Some(&0), "points: {pts:?}");
}
