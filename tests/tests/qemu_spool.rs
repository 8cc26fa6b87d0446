//! A qemu cycle whose every drained byte goes through the spool file (issue 18): with the
//! memory half off (`VDREP_QEMU_SPOOL_MEMORY=0`) and the shipping paced below the drain,
//! the spool frees the file's pages of each run the shipping has read (session 17: a hole
//! punched behind the reader), so a read that reached a freed run would get zeros, not the
//! guest's bytes. The point must equal the disks, and the next cycle too.

use std::time::Duration;

use vdrep_tests::bytes::noise;
use vdrep_tests::qemu_rig::{spool_file_bytes, Rig};

const SIZE: u64 = 32 << 20;
const KIB: u64 = 1024;

/// One round of `vdrep send` with the spool's memory off; returns its log.
/// `bandwidth`: a pace for the shipping, or none.
fn round(rig: &Rig, log: &str, bandwidth: Option<&str>) -> String {
    let mut snd = rig
        .send_every(log, "300ms")
        .env("VDREP_QEMU_SPOOL_MEMORY", "0")
        // Fleecing views: qemu's copies need no spool.
        .env("VDREP_QEMU_VIEW", "fleece")
        .arg("--max-cycles")
        .arg("1");
    if let Some(b) = bandwidth {
        snd = snd.arg("--bandwidth").arg(b);
    }
    let res = snd.run(Duration::from_secs(120));
    assert!(res.status.success(), "{log}: {}\n{}", res.status, res.log);
    res.log
}

#[test]
fn a_cycle_shipped_from_the_spool_file_whose_read_runs_are_freed_commits_the_disks_exactly() {
    let rig = Rig::new(SIZE);
    round(&rig, "send1.log", None);
    // 12 MiB a disk: 64 KiB blocks of noise every 128 KiB over the first 16 MiB (runs of
    // scattered extents, as a cycle's), a dense 4 MiB of noise, and zero blocks inside it.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut fresh = |len: u64| {
        seed += 1;
        noise(seed, len as usize)
    };
    for disk in 0..2 {
        for off in (0..16 << 20).step_by((128 * KIB) as usize) {
            rig.qsd.write(disk, off, &fresh(64 * KIB));
        }
        for off in (20u64 << 20..24 << 20).step_by((64 * KIB) as usize) {
            let block = if (off >> 16) % 7 == 0 {
                vec![0u8; 64 * KIB as usize]
            } else {
                fresh(64 * KIB)
            };
            rig.qsd.write(disk, off, &block);
        }
    }
    // Paced below the drain, so the file holds a backlog while runs behind the reader go.
    let log = round(&rig, "send2.log", Some("40Mbit"));
    let in_file = spool_file_bytes(&log);
    assert_eq!(in_file.len(), 2, "both disks drained into a spool:\n{log}");
    assert!(
        in_file.iter().all(|&b| b >= 8 << 20),
        "with the memory half off, the drains' bytes go to the files: {in_file:?}"
    );
    rig.newest_point_is_the_disks("the cycle shipped from the spool files");
    // Writes over the same blocks again: the next cycle's pre-images and bytes are exact.
    for disk in 0..2 {
        for off in (0..16 << 20).step_by((256 * KIB) as usize) {
            rig.qsd.write(disk, off + 4 * KIB, &fresh(8 * KIB));
        }
    }
    round(&rig, "send3.log", Some("40Mbit"));
    rig.newest_point_is_the_disks("the cycle after");
    let points = rig.points();
    assert_eq!(points.len(), 3, "points: {points:?}");
}
