//! Delta cycles and recovery points of the local store on the real filesystem, where they
//! are the store's own: retention and a new full copy remove the undo logs they no longer
//! need, a point costs about the bytes its cycle changed, a materialised point is a fixed
//! VHD that qemu-img finds identical, and injected faults change nothing. The contract
//! every backend shares (points read back exactly, cycle order, resume) is the
//! conformance suite's (`store_conformance.rs`).

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use common::model::*;
use rand::{rngs::StdRng, SeedableRng};
use vdrep_proto::{Guid, RangeSet};
use vdrep_store::layout::{replica_file_size, replica_footer, replica_virtual_size};
use vdrep_store::sink::fault::{FaultPlan, FaultStore, Op};
use vdrep_store::sink::local::LocalStore;
use vdrep_store::sink::ReplicaStore;

#[test]
fn pruned_points_take_their_undo_logs_with_them() {
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
    let (d, mut m) = recopied(&store, size, &mut rng);
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
    let (d0, mut m) = initial(local.as_ref(), 1 << 20, &mut rng);
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

/// A replica the initial copy left sparse (a known-empty copy writes no zeros): a cycle's
/// pre-images over its holes are zero records made without reading them (`SEEK_DATA`), and
/// writes that straddle data and holes, fall inside either, or come twice keep every point
/// exact, through two cycles.
#[test]
fn pre_images_over_the_holes_of_a_sparse_replica_keep_points_exact() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    let mut rng = StdRng::seed_from_u64(11);
    let mib = 1u64 << 20;
    let size = 8 * mib;
    let d = store.open_disk(&key(), size, SRC).unwrap();
    // Data in MiB 0, 3 and 6 (one 4 KiB island in MiB 5); the rest never written.
    let mut img = vec![0u8; size as usize];
    for (off, len) in [
        (0, mib),
        (3 * mib, mib),
        (6 * mib, mib),
        (5 * mib + 8192, 4096),
    ] {
        let b = random(&mut rng, len as usize);
        img[off as usize..(off + len) as usize].copy_from_slice(&b);
        d.write(off, &b).unwrap();
    }
    d.checkpoint(&RangeSet::from_range(0, size)).unwrap();
    d.commit_initial(&point(0, size)).unwrap();
    let mut m = Model {
        size,
        points: std::collections::BTreeMap::from([(0, img)]),
    };
    let w = |off: u64, len: u64, rng: &mut StdRng| Change::Write(off, random(rng, len as usize));
    let first = vec![
        // Inside a hole, twice (the second is covered already).
        w(mib + 65536, 65536, &mut rng),
        w(mib + 65536, 65536, &mut rng),
        // Data then hole, hole then data, around MiB 3.
        w(4 * mib - 32768, 65536, &mut rng),
        w(3 * mib - 4096, 12288, &mut rng),
        // Across the 4 KiB island in MiB 5, unaligned to it.
        w(5 * mib + 4096 + 512, 16384, &mut rng),
        // Inside data, and a clear over a hole and data.
        w(512, 65536, &mut rng),
        Change::Clear(6 * mib - 65536, 131072),
        // A sector-sized write at the end of the disk, inside a hole.
        w(size - 512, 512, &mut rng),
    ];
    cycle(d.as_ref(), &mut m, 1, &first);
    // The next cycle overwrites what the first wrote into the holes (now data).
    let second = vec![
        w(mib, 4 * 65536, &mut rng),
        w(6 * mib - 4096, 8192, &mut rng),
        w(7 * mib, 65536, &mut rng),
    ];
    cycle(d.as_ref(), &mut m, 2, &second);
    assert_points_read_as_model(d.as_ref(), &m);
    // Point 1's log holds the first cycle's writes into holes as zero records: its bytes
    // are those of the ranges that held data (MiB 1's write and MiB 6's end), not more.
    let (len, _) = file_cost(&dir.path().join("vm/d.p1.undo"));
    assert!(
        len <= 64 + 65536 + 2 * 65536 + 4096 + 32 * 16,
        "point 1's undo log is {len} bytes"
    );
}
