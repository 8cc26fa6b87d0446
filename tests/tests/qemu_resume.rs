//! A qemu cycle interrupted part-way and shipped again from a new view (issue 18): the
//! receiver keeps the open cycle's durable progress, but a qemu cycle's content is not fixed
//! across openings. The restarted sender merges the newer bitmap back into the cycle's and
//! takes a new view; ranges the receiver already holds from the killed run's view may have
//! been written since, so every extent ships again. Skipping them (as an [MS-HRL] log cycle
//! rightly does: a closed log never changes) would commit a point that mixes two instants
//! and lose those writes for good (the bitmap that had them is dropped at the commit).

use std::time::Duration;

use vdrep_store::sink::local::state::decode;
use vdrep_tests::procs::read_log;
use vdrep_tests::qemu_rig::{compare, snapshot, wait_until, Rig, SWITCHED};

const SIZE: u64 = 16 << 20;
const KIB: u64 = 1024;

/// The receiver's durable progress of disk `name`'s open cycle `cycle` (empty when that
/// cycle is not open or the state cannot be read now).
fn open_progress(rig: &Rig, name: &str, cycle: u64) -> vdrep_proto::RangeSet {
    let path = rig.store.join("vm1").join(format!("{name}.state"));
    std::fs::read(&path)
        .ok()
        .and_then(|b| decode(&b).ok())
        .filter(|r| r.disk.open_cycle == Some(cycle))
        .map(|r| r.disk.progress)
        .unwrap_or_default()
}

/// `len` bytes of xorshift noise (incompressible).
fn noise(seed: &mut u64, len: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len as usize);
    while out.len() < len as usize {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out
}

/// Runs `vdrep send` for `rounds` rounds (no pacing) and checks it succeeded.
fn rounds(rig: &Rig, log: &str, rounds: u64) -> String {
    let snd = rig
        .send_every(log, "300ms")
        .arg("--max-cycles")
        .arg(&rounds.to_string());
    let res = snd.run(Duration::from_secs(120));
    assert!(res.status.success(), "{log}: {}\n{}", res.status, res.log);
    res.log
}

#[test]
fn a_qemu_cycle_resumed_after_a_kill_ships_again_the_ranges_written_since_its_first_view() {
    let rig = Rig::new(SIZE);
    // Round 1: the initial copies (point 0).
    rounds(&rig, "send1.log", 1);
    let q = rig.dir.join("qsd");
    let (os0, data0) = (rig.dir.join("os0.raw"), rig.dir.join("data0.raw"));
    snapshot(&q.join("os.raw"), "raw", &os0);
    snapshot(&q.join("data.qcow2"), "qcow2", &data0);
    // Cycle 1: 64 KiB written every 128 KiB of both disks (128 extents, 8 MiB a disk),
    // incompressible (the pacing counts the bytes on the wire).
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..2 {
        for off in (0..SIZE).step_by((128 * KIB) as usize) {
            rig.qsd.write(i, off, &noise(&mut seed, 64 * KIB));
        }
    }
    // Paced to 16 Mbit/s (16 MiB: about 8 s), killed once part of the os disk's cycle is
    // durable at the receiver and not all of it.
    let paced = rig
        .send_every("send2.log", "300ms")
        .arg("--bandwidth")
        .arg("16Mbit");
    let mut child = paced.spawn();
    let mut partial = vdrep_proto::RangeSet::new();
    wait_until(
        "part of cycle 1 of disk os durable at the receiver",
        &paced.log,
        Duration::from_secs(60),
        || {
            partial = open_progress(&rig, "os", 1);
            partial.covered_len() >= 1 << 20
        },
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let log2 = read_log(&paced.log);
    assert_eq!(
        log2.matches(SWITCHED).count(),
        1,
        "one round, cycle 1's: {log2}"
    );
    let partial = open_progress(&rig, "os", 1);
    assert!(
        partial.covered_len() >= 1 << 20 && partial.covered_len() < 8 << 20,
        "the kill did not hit cycle 1 part-way: {partial:?}"
    );
    // The guest writes into ranges the receiver already holds from the killed run's view,
    // and elsewhere (in a gap between cycle 1's extents, and in the data disk).
    for r in partial.iter().take(16) {
        rig.qsd.write(0, r.start, &noise(&mut seed, 4 * KIB));
        rig.qsd
            .write(0, r.end - 4 * KIB, &noise(&mut seed, 4 * KIB));
    }
    rig.qsd.write(0, 64 * KIB, &noise(&mut seed, 4 * KIB));
    rig.qsd
        .write(1, 3 * 128 * KIB + 8 * KIB, &noise(&mut seed, 4 * KIB));
    // The restarted sender commits cycle 1 from a new view: its point must be the disks as
    // they are now (no write runs), not a mix of the two views.
    let log3 = rounds(&rig, "send3.log", 1);
    assert!(
        log3.contains("its bitmaps are merged back"),
        "the restart did not merge the killed switch's bitmap back: {log3}"
    );
    rig.newest_point_is_the_disks("the cycle resumed after the kill");
    // The initial copies' point is intact: the re-sent ranges' pre-images in its undo log
    // are the initial bytes, taken once (not the killed run's bytes).
    let points = rig.points();
    assert_eq!(points.len(), 2, "points: {points:?}");
    let fo = rig.failover(points[0]);
    compare(&os0, "raw", &fo.join("os.vhd")).expect("point 0, disk os");
    compare(&data0, "raw", &fo.join("data.vhd")).expect("point 0, disk data");
    // One more cycle: the replica stays exact.
    rounds(&rig, "send4.log", 1);
    rig.newest_point_is_the_disks("the cycle after");
}
