//! Delta-replication helpers: tracked writes (disk and change log changed together under the
//! tracking lock, as a host agent would), write patterns for cycles, sources frozen exactly
//! at a log switch, and recovery points read back from the local store.
//!
//! **Freezing the source at a switch.** A writer holds the disk's tracking lock around each
//! batch (disk write + log append), and the sender takes the same lock to switch logs. A
//! concurrent writer ([`TrackedDisk::write_until_switch`]) checks, under the lock before each
//! batch, whether the active log `D.hrl` is still the one it started on (same inode); when it
//! is not, a switch happened after its last batch and before this one, so the disk *now*
//! is the disk at the switch: it copies it (the frozen source) and stops writing. Writes made
//! between sender runs are frozen trivially: the source after a `--max-cycles 1` run (one
//! switch, writer paused) equals that run's newest recovery point.

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use vdrep::sink::local::LocalStore;
use vdrep::sink::{DiskKey, ReplicaDisk};
use vdrep::tracking::{Locked, Tracker};

use crate::images::Kind;
use crate::{qemu_fmt, run};

const KIB: u64 = 1024;
const MIB: u64 = 1 << 20;

/// One write: bytes at a disk offset (both multiples of 512).
#[derive(Debug, Clone)]
pub struct Change {
    /// Disk offset.
    pub offset: u64,
    /// The bytes.
    pub data: Vec<u8>,
}

/// A kind of write load for one cycle.
#[derive(Debug, Clone, Copy)]
pub enum Pattern {
    /// `n` writes of 4 KiB..=`max` bytes at random sector offsets, random bytes.
    Scattered {
        /// Number of writes.
        n: usize,
        /// Largest write.
        max: u64,
    },
    /// `spots` regions of 4..=64 KiB, each rewritten `times` times with new bytes (only the
    /// last write of each must reach the replica).
    HotSpots {
        /// Regions.
        spots: usize,
        /// Rewrites per region.
        times: usize,
    },
    /// One sequential run of `len` bytes written in 1 MiB pieces.
    Sequential {
        /// Run length.
        len: u64,
    },
    /// `n` single 512-byte sectors among the disk's last 64 sectors (the very last included).
    EndSectors {
        /// Number of sectors written.
        n: usize,
    },
    /// `n` runs of 4..=256 KiB of zeros (a cycle's zeros are real writes).
    Zeros {
        /// Number of runs.
        n: usize,
    },
}

fn random_bytes(rng: &mut StdRng, len: u64) -> Vec<u8> {
    let mut v = vec![0u8; len as usize];
    rng.fill(&mut v[..]);
    v
}

fn sector_range(rng: &mut StdRng, size: u64, len: u64) -> u64 {
    rng.gen_range(0..=(size - len) / 512) * 512
}

/// The writes of `pattern` on a disk of `size` bytes, in order.
pub fn changes(pattern: Pattern, size: u64, rng: &mut StdRng) -> Vec<Change> {
    let mut v = Vec::new();
    match pattern {
        Pattern::Scattered { n, max } => {
            for _ in 0..n {
                let len = rng.gen_range(8..=max / 512) * 512;
                let offset = sector_range(rng, size, len);
                v.push(Change {
                    offset,
                    data: random_bytes(rng, len),
                });
            }
        }
        Pattern::HotSpots { spots, times } => {
            let spots: Vec<(u64, u64)> = (0..spots)
                .map(|_| {
                    let len = rng.gen_range(8..=128u64) * 512;
                    (sector_range(rng, size, len), len)
                })
                .collect();
            for _ in 0..times {
                for &(offset, len) in &spots {
                    v.push(Change {
                        offset,
                        data: random_bytes(rng, len),
                    });
                }
            }
        }
        Pattern::Sequential { len } => {
            let start = sector_range(rng, size, len);
            let mut o = 0;
            while o < len {
                let n = (len - o).min(MIB);
                v.push(Change {
                    offset: start + o,
                    data: random_bytes(rng, n),
                });
                o += n;
            }
        }
        Pattern::EndSectors { n } => {
            let last = size / 512 - 1;
            for i in 0..n {
                let sector = if i == 0 {
                    last
                } else {
                    last - rng.gen_range(0..64u64.min(last))
                };
                v.push(Change {
                    offset: sector * 512,
                    data: random_bytes(rng, 512),
                });
            }
        }
        Pattern::Zeros { n } => {
            for _ in 0..n {
                let len = rng.gen_range(8..=512u64) * 512;
                v.push(Change {
                    offset: sector_range(rng, size, len),
                    data: vec![0; len as usize],
                });
            }
        }
    }
    v
}

/// Bytes written by `changes` (overlaps counted each time).
pub fn written(changes: &[Change]) -> u64 {
    changes.iter().map(|c| c.data.len() as u64).sum()
}

/// A source disk whose writes are tracked in its change log.
pub struct TrackedDisk {
    /// The image.
    pub path: PathBuf,
    /// Its format.
    pub kind: Kind,
    /// Its virtual size.
    pub size: u64,
    tracker: Tracker,
    scratch: PathBuf,
}

impl TrackedDisk {
    /// Tracking of `path` (change logs beside it; scratch files for qemu-io in `scratch`).
    pub fn new(path: &Path, kind: Kind, size: u64, scratch: &Path) -> TrackedDisk {
        std::fs::create_dir_all(scratch).unwrap();
        TrackedDisk {
            path: path.to_path_buf(),
            kind,
            size,
            tracker: Tracker::new(path, size),
            scratch: scratch.to_path_buf(),
        }
    }

    /// The change-log files.
    pub fn tracker(&self) -> &Tracker {
        &self.tracker
    }

    /// The inode of the active log (`None` before tracking starts).
    pub fn active_ino(&self) -> Option<u64> {
        std::fs::metadata(&self.tracker.paths().active)
            .ok()
            .map(|m| m.ino())
    }

    /// Waits until the sender has started tracking (the active log exists).
    pub fn wait_tracking(&self, timeout: Duration) {
        let end = Instant::now() + timeout;
        while self.active_ino().is_none() {
            assert!(
                Instant::now() < end,
                "{} was not created within {timeout:?}: did the sender start tracking?",
                self.tracker.paths().active.display()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// `D.NNNNNNNN.hrl`, the closed log of `cycle`.
    pub fn closed_log(&self, cycle: u64) -> PathBuf {
        self.tracker.paths().closed(cycle)
    }

    /// Writes `changes` into the disk and its active log, atomically with respect to a
    /// switch (one lock hold).
    pub fn write(&self, changes: &[Change]) {
        let locked = self
            .tracker
            .lock_for_write(SystemTime::now())
            .expect("tracking lock");
        self.write_locked(&locked, changes);
    }

    fn write_locked(&self, locked: &Locked<'_>, changes: &[Change]) {
        if changes.is_empty() {
            return;
        }
        match self.kind {
            Kind::Raw | Kind::VhdFixed => {
                // Both keep the disk's bytes at their virtual offsets.
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&self.path)
                    .unwrap();
                for c in changes {
                    f.write_all_at(&c.data, c.offset).unwrap();
                }
                f.sync_data().unwrap();
            }
            Kind::VhdDynamic | Kind::Vhdx => self.qemu_write(changes),
        }
        // Appended in pieces of ≤ 64 MiB: the log writer holds a call's data in memory.
        let mut batch = Vec::new();
        let mut bytes = 0usize;
        for c in changes {
            bytes += c.data.len();
            batch.push((c.offset, Bytes::from(c.data.clone())));
            if bytes >= 64 << 20 {
                locked
                    .append(&batch, SystemTime::now())
                    .expect("log append");
                batch.clear();
                bytes = 0;
            }
        }
        locked
            .append(&batch, SystemTime::now())
            .expect("log append");
    }

    /// One qemu-io process writes every change from a scratch file (`write -s FILE OFF LEN`).
    fn qemu_write(&self, changes: &[Change]) {
        for chunk in changes.chunks(200) {
            let mut c = Command::new("qemu-io");
            c.args(["-f", qemu_fmt(self.kind.fmt())]);
            let mut files = Vec::new();
            for (i, ch) in chunk.iter().enumerate() {
                let f = self.scratch.join(format!("w{i}.bin"));
                std::fs::write(&f, &ch.data).unwrap();
                c.arg("-c").arg(format!(
                    "write -q -s {} {} {}",
                    f.display(),
                    ch.offset,
                    ch.data.len()
                ));
                files.push(f);
            }
            run(c.arg(&self.path));
            for f in files {
                let _ = std::fs::remove_file(f);
            }
        }
    }

    /// The whole virtual disk as raw bytes in `out` (a copy of the source now).
    pub fn freeze(&self, out: &Path) {
        match self.kind {
            Kind::Raw => {
                std::fs::copy(&self.path, out).unwrap();
            }
            _ => crate::qemu_to_raw(&self.path, self.kind.fmt(), out),
        }
    }

    /// Runs a writer until the sender switches logs (then freezes the source into
    /// `frozen` and returns) or `stop` is set. Each batch is 1..=4 writes of 4..=256 KiB.
    /// `start` is the active log's inode the cycle began with (`None`: wait for tracking
    /// and take the first one seen). Returns the batches written and whether a switch was
    /// seen.
    pub fn write_until_switch(
        &self,
        seed: u64,
        start: Option<u64>,
        stop: &AtomicBool,
        frozen: &Path,
    ) -> (usize, bool) {
        let mut rng = StdRng::seed_from_u64(seed);
        let start = match start {
            Some(i) => i,
            None => {
                self.wait_tracking(Duration::from_secs(60));
                self.active_ino().unwrap()
            }
        };
        let mut n = 0;
        loop {
            {
                let locked = self
                    .tracker
                    .lock_for_write(SystemTime::now())
                    .expect("tracking lock");
                if self.active_ino() != Some(start) {
                    self.freeze(frozen);
                    return (n, true);
                }
                if stop.load(Ordering::Relaxed) {
                    return (n, false);
                }
                let k = rng.gen_range(1..=4);
                let batch = changes(
                    Pattern::Scattered {
                        n: k,
                        max: 256 * KIB,
                    },
                    self.size,
                    &mut rng,
                );
                self.write_locked(&locked, &batch);
                n += 1;
            }
            // Outside the lock: flock is not fair, so the sender gets its turn.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The source disk's identity as the sender announces it (what the store checks).
pub fn source_id(src: &Path) -> vdrep_proto::Guid {
    let d = vdrep::disk::open(src, vdrep::disk::OpenOptions::default()).expect("open source");
    d.info().disk_id.unwrap_or_default()
}

/// Recovery points of a disk in a local store, oldest first (the receiver must be stopped:
/// opening takes the disk's lock).
pub fn local_points(store: &Path, vm: &str, disk: &str, src: &Path, size: u64) -> Vec<u64> {
    let s = LocalStore::open(store).expect("open store");
    let key = DiskKey::new(vm, disk).unwrap();
    let d = s
        .open_local(&key, size, source_id(src))
        .expect("open replica");
    d.points()
        .expect("points")
        .into_iter()
        .map(|p| p.cycle)
        .collect()
}

/// Materialises recovery point `cycle` (newest if `None`) of a local store's disk as a raw
/// file `out` (test failover at store level; the receiver must be stopped). Returns the
/// cycle.
pub fn failover_local(
    store: &Path,
    vm: &str,
    disk: &str,
    src: &Path,
    size: u64,
    cycle: Option<u64>,
    out: &Path,
) -> u64 {
    let s = LocalStore::open(store).expect("open store");
    let key = DiskKey::new(vm, disk).unwrap();
    let d = s
        .open_local(&key, size, source_id(src))
        .expect("open replica");
    let pts = d.points().expect("points");
    let cycle = cycle.unwrap_or_else(|| pts.last().expect("no recovery point").cycle);
    let f = std::fs::File::create(out).unwrap();
    f.set_len(size).unwrap();
    let mut o = 0;
    while o < size {
        let n = (size - o).min(4 * MIB) as usize;
        let b = d.read_point(cycle, o, n).expect("read point");
        if b.iter().any(|&x| x != 0) {
            f.write_all_at(&b, o).unwrap();
        }
        o += n as u64;
    }
    cycle
}

/// `qemu-img compare -f raw -F FMT a b`; panics with qemu's words unless identical.
pub fn assert_same(a: &Path, b: &Path, b_fmt: &str, what: &str) {
    let out = Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", b_fmt])
        .arg(a)
        .arg(b)
        .output()
        .expect("cannot run qemu-img compare");
    assert!(
        out.status.success(),
        "{what}: qemu-img compare {} {}: {}{}",
        a.display(),
        b.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether two files hold the same bytes.
pub fn same_bytes(a: &Path, b: &Path) -> bool {
    crate::sha256_file(a) == crate::sha256_file(b)
}
