//! Delta cycles and recovery points of the local store on the real filesystem: a cycle is
//! invisible until it commits, every committed cycle (empty ones too) is the next point,
//! every listed point reads back exactly as the disk was, retention prunes the oldest, an
//! open cycle resumes from its durable progress, a point costs about the bytes its cycle
//! changed, and a materialised point is a fixed VHD that qemu-img finds identical.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use vdrep::error::Classify;

use rand::{rngs::StdRng, Rng, RngCore, SeedableRng};
use vdrep::layout::{replica_file_size, replica_footer, replica_virtual_size};
use vdrep::sink::fault::{FaultPlan, FaultStore, Op};
use vdrep::sink::local::LocalStore;
use vdrep::sink::{DiskKey, RecoveryPoint, ReplicaDisk, ReplicaStore, SinkError};
use vdrep_proto::{Guid, RangeSet};

const SRC: Guid = Guid([3; 16]);
const T0: u64 = 1_800_000_000;

fn key() -> DiskKey {
    DiskKey::new("vm", "d").unwrap()
}

fn point(cycle: u64, bytes: u64) -> RecoveryPoint {
    RecoveryPoint {
        cycle,
        created_unix: T0 + 60 * cycle,
        bytes,
        digest: [cycle as u8; 32],
    }
}

fn random(rng: &mut StdRng, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rng.fill_bytes(&mut v);
    v
}

/// A change of a cycle: data at an offset, or a clear.
#[derive(Clone)]
enum Change {
    Write(u64, Vec<u8>),
    Clear(u64, u64),
}

impl Change {
    fn range(&self) -> (u64, u64) {
        match self {
            Change::Write(o, d) => (*o, *o + d.len() as u64),
            Change::Clear(o, l) => (*o, *o + l),
        }
    }
    fn apply_to(&self, img: &mut [u8]) {
        match self {
            Change::Write(o, d) => img[*o as usize..*o as usize + d.len()].copy_from_slice(d),
            Change::Clear(o, l) => img[*o as usize..(*o + *l) as usize].fill(0),
        }
    }
    fn send(&self, d: &dyn ReplicaDisk) -> Result<(), SinkError> {
        match self {
            Change::Write(o, data) => d.write(*o, data),
            Change::Clear(o, l) => d.clear(*o, *l),
        }
    }
}

/// Disjoint (coalesced) random changes of `count` extents of up to `max` sectors, a fifth
/// of them clears.
fn random_changes(rng: &mut StdRng, size: u64, count: usize, max: u64) -> Vec<Change> {
    random_extents(rng, size, count, max, 0.2)
}

fn random_extents(rng: &mut StdRng, size: u64, count: usize, max: u64, clears: f64) -> Vec<Change> {
    let mut taken = RangeSet::new();
    let mut out = Vec::new();
    while out.len() < count {
        let len = rng.gen_range(1..=max) * 512;
        let off = rng.gen_range(0..(size - len) / 512) * 512;
        if !taken.clipped(off, off + len).is_empty() {
            continue;
        }
        taken.insert(off, off + len);
        out.push(if rng.gen_bool(clears) {
            Change::Clear(off, len)
        } else {
            Change::Write(off, random(rng, len as usize))
        });
    }
    out
}

/// The disk as the test knows it: the image at every committed point.
struct Model {
    size: u64,
    points: BTreeMap<u64, Vec<u8>>,
}

impl Model {
    fn latest(&self) -> (u64, &Vec<u8>) {
        let (c, img) = self.points.iter().next_back().unwrap();
        (*c, img)
    }
}

/// Opens a disk and commits an initial copy of random data (a few zero MiBs left zero).
fn initial(store: &LocalStore, size: u64, rng: &mut StdRng) -> (Arc<dyn ReplicaDisk>, Model) {
    let d = store.open_disk(&key(), size, SRC).unwrap();
    let mut img = random(rng, size as usize);
    if size >= 2 << 20 {
        img[(1 << 20)..(2 << 20)].fill(0);
    }
    for (i, c) in img.chunks(1 << 20).enumerate() {
        d.write((i << 20) as u64, c).unwrap();
    }
    d.checkpoint(&RangeSet::from_range(0, size)).unwrap();
    d.commit_initial(&point(0, size)).unwrap();
    let mut points = BTreeMap::new();
    points.insert(0, img);
    (d, Model { size, points })
}

/// Runs cycle `n` with `changes` sent in the given order, then commits it.
fn cycle(d: &dyn ReplicaDisk, m: &mut Model, n: u64, changes: &[Change]) {
    assert_eq!(d.begin_cycle(n).unwrap(), RangeSet::new());
    let mut img = m.latest().1.clone();
    let mut done = RangeSet::new();
    for c in changes {
        c.send(d).unwrap();
        c.apply_to(&mut img);
        let (s, e) = c.range();
        done.insert(s, e);
    }
    d.checkpoint(&done).unwrap();
    d.commit_cycle(&point(n, done.covered_len())).unwrap();
    m.points.insert(n, img);
}

fn assert_points_read_as_model(d: &dyn ReplicaDisk, m: &Model) {
    let listed: Vec<u64> = d.points().unwrap().iter().map(|p| p.cycle).collect();
    let known: Vec<u64> = m.points.keys().copied().collect();
    assert_eq!(listed, known, "points are listed oldest first");
    for (&c, img) in &m.points {
        let got = d.read_point(c, 0, m.size as usize).unwrap();
        let bad = got.iter().zip(img).position(|(a, b)| a != b);
        assert!(bad.is_none(), "point {c} differs at byte {bad:?}");
    }
    let (newest, img) = m.latest();
    assert_eq!(&d.read_committed(0, m.size as usize).unwrap()[..], &img[..]);
    assert_eq!(d.state().committed_cycle, newest);
}

#[test]
fn every_committed_cycle_is_a_point_that_reads_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    let mut rng = StdRng::seed_from_u64(1);
    let size = 4 << 20;
    let (d, mut m) = initial(&store, size, &mut rng);
    for n in 1..=8u64 {
        let changes = if n == 4 {
            Vec::new() // an empty cycle is a point too
        } else {
            let count = rng.gen_range(1..40);
            random_changes(&mut rng, size, count, 256)
        };
        cycle(d.as_ref(), &mut m, n, &changes);
        assert_points_read_as_model(d.as_ref(), &m);
    }
    let pts = d.points().unwrap();
    assert_eq!(pts[0], point(0, size));
    assert_eq!(pts[4].bytes, 0, "the empty cycle changed nothing");
    // Points, their undo logs and the replica survive a reopen.
    drop(d);
    let d = store.open_disk(&key(), size, SRC).unwrap();
    assert_points_read_as_model(d.as_ref(), &m);
}

#[test]
fn resent_and_overlapping_writes_within_a_cycle_end_as_the_last_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    let mut rng = StdRng::seed_from_u64(2);
    let size = 2 << 20;
    let (d, mut m) = initial(&store, size, &mut rng);
    let a = random(&mut rng, 64 << 10);
    let b = random(&mut rng, 16 << 10);
    // Written, partly overwritten, cleared and rewritten in one cycle, in this order.
    let changes = [
        Change::Write(8192, a.clone()),
        Change::Write(8192 + 4096, b.clone()),
        Change::Clear(8192 + 32768, 8192),
        Change::Write(8192, a[..4096].to_vec()),
        Change::Write(8192, a[..4096].to_vec()), // resent
    ];
    cycle(d.as_ref(), &mut m, 1, &changes);
    assert_points_read_as_model(d.as_ref(), &m);
    // Writers of one cycle may run in parallel (disjoint extents, any order).
    let img_before = m.latest().1.clone();
    d.begin_cycle(2).unwrap();
    let changes = random_changes(&mut rng, size, 64, 64);
    std::thread::scope(|s| {
        for part in changes.chunks(16) {
            let d = d.clone();
            s.spawn(move || part.iter().for_each(|c| c.send(d.as_ref()).unwrap()));
        }
    });
    assert_eq!(
        &d.read_committed(0, size as usize).unwrap()[..],
        &img_before[..],
        "an open cycle is invisible in the newest point"
    );
    let mut img = img_before;
    changes.iter().for_each(|c| c.apply_to(&mut img));
    assert_eq!(
        &d.read(0, size as usize).unwrap()[..],
        &img[..],
        "the working view shows it"
    );
    assert_eq!(d.state().open_cycle, Some(2));
    d.checkpoint(&RangeSet::new()).unwrap();
    d.commit_cycle(&point(2, 0)).unwrap();
    m.points.insert(2, img);
    assert_points_read_as_model(d.as_ref(), &m);
    assert_eq!(d.state().open_cycle, None);
}

#[test]
fn cycles_out_of_order_and_unknown_points_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    let mut rng = StdRng::seed_from_u64(3);
    let (d, mut m) = initial(&store, 1 << 20, &mut rng);
    let invalid = |r: Result<(), SinkError>, what: &str| {
        let e = r.unwrap_err();
        assert!(
            matches!(e, SinkError::InvalidState { .. }) && !e.is_transient(),
            "{e}"
        );
        assert!(e.to_string().contains(what), "{e} lacks {what:?}");
    };
    invalid(d.write(0, &[1; 512]), "begin_cycle(1)");
    invalid(d.begin_cycle(2).map(|_| ()), "next cycle is 1");
    invalid(d.commit_cycle(&point(1, 0)), "no cycle is open");
    cycle(d.as_ref(), &mut m, 1, &[]);
    invalid(d.begin_cycle(1).map(|_| ()), "already committed");
    d.commit_cycle(&point(1, 0)).unwrap(); // a resent commit is a no-op
    d.begin_cycle(2).unwrap();
    invalid(d.commit_cycle(&point(3, 0)), "cycle 2 is open");
    invalid(d.begin_cycle(3).map(|_| ()), "cycle 2 is open");
    let e = d.read_point(7, 0, 512).unwrap_err();
    assert!(
        e.to_string().contains("recovery point 7 does not exist")
            && e.to_string().contains("0..=1"),
        "{e}"
    );
    assert!(matches!(
        d.read_point(0, 1 << 20, 1).unwrap_err(),
        SinkError::OutOfRange { .. }
    ));
    assert_points_read_as_model(d.as_ref(), &m);
}

#[test]
fn retention_prunes_the_oldest_points_but_never_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    let mut rng = StdRng::seed_from_u64(4);
    let size = 1 << 20;
    let (d, mut m) = initial(&store, size, &mut rng);
    for n in 1..=5 {
        let ch = random_changes(&mut rng, size, 5, 32);
        cycle(d.as_ref(), &mut m, n, &ch);
    }
    let undo_files = || {
        let mut v: Vec<String> = std::fs::read_dir(dir.path().join("vm"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".undo") || n.ends_with(".redo"))
            .collect();
        v.sort();
        v
    };
    assert_eq!(undo_files().len(), 5, "{:?}", undo_files());
    // Points 0 and 1 were created before T0 + 100 s.
    assert_eq!(d.prune_points(T0 + 100).unwrap(), vec![0, 1]);
    m.points.retain(|&c, _| c >= 2);
    assert_points_read_as_model(d.as_ref(), &m);
    assert_eq!(undo_files(), ["d.p2.undo", "d.p3.undo", "d.p4.undo"]);
    assert!(d.read_point(1, 0, 512).is_err());
    assert_eq!(d.prune_points(T0 + 100).unwrap(), Vec::<u64>::new());
    // Everything is older than u64::MAX, but the newest point always stays.
    assert_eq!(d.prune_points(u64::MAX).unwrap(), vec![2, 3, 4]);
    m.points.retain(|&c, _| c == 5);
    assert_points_read_as_model(d.as_ref(), &m);
    assert!(undo_files().is_empty());
}

#[test]
fn an_open_cycle_resumes_from_its_durable_progress_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(5);
    let size = 1 << 20;
    let store = LocalStore::open(dir.path()).unwrap();
    let (d, mut m) = initial(&store, size, &mut rng);
    let a = Change::Write(0, random(&mut rng, 8192));
    let b = Change::Write(65536, random(&mut rng, 4096));
    let c = Change::Clear(131072, 4096);
    d.begin_cycle(1).unwrap();
    a.send(d.as_ref()).unwrap();
    c.send(d.as_ref()).unwrap();
    d.checkpoint(&[0..8192, 131072..135168].into_iter().collect())
        .unwrap();
    b.send(d.as_ref()).unwrap(); // not checkpointed: resent after the restart
    drop(d);
    let d = store.open_disk(&key(), size, SRC).unwrap();
    let st = d.state();
    assert_eq!(st.open_cycle, Some(1));
    let done = d.begin_cycle(1).unwrap();
    assert_eq!(done, [0..8192, 131072..135168].into_iter().collect());
    assert_eq!(st.progress, done);
    assert_points_read_as_model(d.as_ref(), &m);
    b.send(d.as_ref()).unwrap();
    d.checkpoint(
        &[0..8192, 65536..69632, 131072..135168]
            .into_iter()
            .collect(),
    )
    .unwrap();
    d.commit_cycle(&point(1, 16384)).unwrap();
    let mut img = m.latest().1.clone();
    for ch in [&a, &b, &c] {
        ch.apply_to(&mut img);
    }
    m.points.insert(1, img);
    assert_points_read_as_model(d.as_ref(), &m);
}

/// Bytes a file takes: its length and what the filesystem allocated.
fn file_cost(p: &Path) -> (u64, u64) {
    let md = std::fs::metadata(p).unwrap();
    (md.len(), md.blocks() * 512)
}

#[test]
fn a_point_costs_about_the_bytes_its_cycle_changed() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    let mut rng = StdRng::seed_from_u64(6);
    let size = 16 << 20;
    let (d, mut m) = initial(&store, size, &mut rng);
    let mut total = (0u64, 0u64, 0u64);
    for n in 1..=6u64 {
        // Writes of 512 bytes to 256 KiB over random pre-images (outside the zero MiB).
        let mut ch = random_extents(&mut rng, size, 60, 512, 0.0);
        ch.retain(|c| c.range().1 <= 1 << 20 || c.range().0 >= 2 << 20);
        let changed: RangeSet = ch.iter().map(|c| c.range().0..c.range().1).collect();
        cycle(d.as_ref(), &mut m, n, &ch);
        let (len, alloc) = file_cost(&dir.path().join(format!("vm/d.p{}.undo", n - 1)));
        let bytes = changed.covered_len();
        let ratio = len as f64 / bytes as f64;
        println!(
            "point {}: cycle {n} changed {bytes} bytes in {} extents; undo log {len} bytes \
             ({ratio:.4}x), allocated {alloc} bytes ({:.4}x)",
            n - 1,
            changed.range_count(),
            alloc as f64 / bytes as f64
        );
        assert!(ratio <= 1.1, "point {} costs {ratio:.3}x its change", n - 1);
        total = (total.0 + bytes, total.1 + len, total.2 + alloc);
    }
    println!(
        "total: changed {} bytes, undo logs {} bytes ({:.4}x), allocated {} bytes ({:.4}x)",
        total.0,
        total.1,
        total.1 as f64 / total.0 as f64,
        total.2,
        total.2 as f64 / total.0 as f64
    );
    assert!(total.2 as f64 <= 1.1 * total.0 as f64);
    // The worst case: single-sector extents pay a 32-byte record header each.
    let tiny = random_extents(&mut rng, size, 500, 1, 0.0);
    let tiny: Vec<Change> = tiny
        .into_iter()
        .filter(|c| c.range().1 <= 1 << 20 || c.range().0 >= 2 << 20)
        .collect();
    let bytes: u64 = tiny.iter().map(|c| c.range().1 - c.range().0).sum();
    cycle(d.as_ref(), &mut m, 7, &tiny);
    let (len, _) = file_cost(&dir.path().join("vm/d.p6.undo"));
    println!(
        "point 6: {} single-sector writes, {bytes} bytes; undo log {len} bytes ({:.4}x)",
        tiny.len(),
        len as f64 / bytes as f64
    );
    assert!(len as f64 <= 1.1 * bytes as f64);
    // A cycle over zero pre-images stores no bytes at all, only its extents.
    let zero_area: Vec<Change> = (0..16)
        .map(|i| Change::Write((1 << 20) + i * 65536, random(&mut rng, 32768)))
        .collect();
    cycle(d.as_ref(), &mut m, 8, &zero_area);
    let (len, _) = file_cost(&dir.path().join("vm/d.p7.undo"));
    assert!(len <= 64 + 16 * 32, "zero pre-images cost {len} bytes");
    assert_points_read_as_model(d.as_ref(), &m);
}

fn require_tool(tool: &str, hint: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "required tool `{tool}` is not installed: {hint} (or run `bash ops/setup.sh`)"
    );
}

#[test]
fn a_materialised_point_is_a_fixed_vhd_identical_to_the_model() {
    require_tool("qemu-img", "apt-get install qemu-utils");
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(&dir.path().join("store")).unwrap();
    let mut rng = StdRng::seed_from_u64(7);
    let size = (3 << 20) + 5 * 512; // rounds up to 4 MiB in the VHD
    let (d, mut m) = initial(&store, size, &mut rng);
    for n in 1..=3 {
        let ch = random_changes(&mut rng, size, 20, 128);
        cycle(d.as_ref(), &mut m, n, &ch);
    }
    for k in [0u64, 2] {
        let vhd = dir.path().join(format!("point{k}.vhd"));
        let f = std::fs::File::create(&vhd).unwrap();
        f.set_len(replica_file_size(size)).unwrap();
        use std::os::unix::fs::FileExt;
        let mut off = 0u64;
        while off < size {
            let n = (size - off).min(1 << 20) as usize;
            f.write_all_at(&d.read_point(k, off, n).unwrap(), off)
                .unwrap();
            off += n as u64;
        }
        let footer = replica_footer(size, Guid([k as u8 + 1; 16]), 0);
        f.write_all_at(&footer, replica_virtual_size(size)).unwrap();
        drop(f);
        let raw = dir.path().join(format!("model{k}.raw"));
        std::fs::write(&raw, &m.points[&k]).unwrap();
        let out = Command::new("qemu-img")
            .args(["compare", "-f", "vpc", "-F", "raw"])
            .arg(&vhd)
            .arg(&raw)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "point {k}: qemu-img compare: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn a_new_full_copy_keeps_the_old_points_until_it_commits_then_starts_at_point_0() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    let mut rng = StdRng::seed_from_u64(8);
    let size = 1 << 20;
    let (d, mut m) = initial(&store, size, &mut rng);
    for n in 1..=2 {
        let ch = random_changes(&mut rng, size, 4, 16);
        cycle(d.as_ref(), &mut m, n, &ch);
    }
    d.begin_cycle(3).unwrap();
    d.write(0, &[7; 4096]).unwrap();
    d.begin_initial().unwrap(); // drops the open cycle
    assert_eq!(d.state().open_cycle, None);
    assert_points_read_as_model(d.as_ref(), &m);
    let img = random(&mut rng, size as usize);
    d.write(0, &img).unwrap();
    d.checkpoint(&RangeSet::from_range(0, size)).unwrap();
    d.commit_initial(&point(0, size)).unwrap();
    m.points = BTreeMap::from([(0, img)]);
    assert_points_read_as_model(d.as_ref(), &m);
    let logs = std::fs::read_dir(dir.path().join("vm"))
        .unwrap()
        .filter(|e| {
            let n = e.as_ref().unwrap().file_name().into_string().unwrap();
            n.ends_with(".undo") || n.ends_with(".redo")
        })
        .count();
    assert_eq!(logs, 0, "the old generation's undo logs are gone");
    cycle(d.as_ref(), &mut m, 1, &random_changes(&mut rng, size, 3, 8));
    assert_points_read_as_model(d.as_ref(), &m);
}

#[test]
fn injected_faults_in_cycle_calls_change_nothing_and_retries_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let plan = FaultPlan::new();
    let local = Arc::new(LocalStore::open(dir.path()).unwrap());
    let mut rng = StdRng::seed_from_u64(9);
    let (d0, mut m) = initial(&local, 1 << 20, &mut rng);
    drop(d0);
    let store = FaultStore::new(local, plan.clone());
    let d = store.open_disk(&key(), 1 << 20, SRC).unwrap();
    for op in [
        Op::BeginCycle,
        Op::CommitCycle,
        Op::ReadPoint,
        Op::PrunePoints,
        Op::Points,
    ] {
        plan.fail_first(op, 1, libc::ENOSPC);
    }
    assert!(d.begin_cycle(1).unwrap_err().is_transient());
    assert_eq!(d.state().open_cycle, None);
    d.begin_cycle(1).unwrap();
    d.write(4096, &[9; 4096]).unwrap();
    assert!(d.commit_cycle(&point(1, 4096)).unwrap_err().is_transient());
    assert_eq!(d.state().committed_cycle, 0);
    d.commit_cycle(&point(1, 4096)).unwrap();
    let mut img = m.latest().1.clone();
    img[4096..8192].fill(9);
    m.points.insert(1, img);
    assert!(d.read_point(0, 0, 512).unwrap_err().is_transient());
    assert!(d.prune_points(u64::MAX).unwrap_err().is_transient());
    assert!(d.points().unwrap_err().is_transient());
    assert_points_read_as_model(d.as_ref(), &m);
    assert_eq!(plan.calls(Op::CommitCycle), 2);
}

#[test]
fn pruning_while_a_cycle_is_open_keeps_the_open_cycles_undo_log() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    let mut rng = StdRng::seed_from_u64(9);
    let size = 1 << 20;
    let (d, mut m) = initial(&store, size, &mut rng);
    for n in 1..=3 {
        let ch = random_changes(&mut rng, size, 4, 32);
        cycle(d.as_ref(), &mut m, n, &ch);
    }
    // Cycle 4 saves pre-images in point 3's undo log, still buffered (no state names the
    // log yet) when old points are pruned.
    d.begin_cycle(4).unwrap();
    let ch = random_changes(&mut rng, size, 4, 32);
    let mut img = m.latest().1.clone();
    for c in &ch {
        c.send(d.as_ref()).unwrap();
        c.apply_to(&mut img);
    }
    assert_eq!(d.prune_points(T0 + 100).unwrap(), vec![0, 1]);
    m.points.retain(|&c, _| c >= 2);
    d.commit_cycle(&point(4, 0)).unwrap();
    m.points.insert(4, img);
    assert_points_read_as_model(d.as_ref(), &m);
    drop(d);
    let d = store
        .open_disk(&key(), size, SRC)
        .unwrap_or_else(|e| panic!("reopen: {e}"));
    assert_points_read_as_model(d.as_ref(), &m);
}
