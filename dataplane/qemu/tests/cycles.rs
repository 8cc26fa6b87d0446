//! Thirty switches of a VM with two disks while its guest writes numbered blocks in strict
//! order, alternating between the disks: every switch's views, taken in one transaction,
//! hold a prefix of the writes across both disks (a crash-consistent cut), and each cycle's
//! dirty extents, applied to the previous views, rebuild exactly the new ones. The same with
//! every other switch taking qemu's copy of the dirty blocks (`fleece/copy.rs`) instead of a
//! view: the copies' extents, applied in turn, rebuild the next view (each block is written
//! once, so a block a copy missed or got wrong stays wrong).

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::{guest_write_via, make_image, watchdog, Disk, Qsd};
use vdrep_qemu::fleece::{Fleecer, SwitchDisk};
use vdrep_qemu::nbd::NbdClient;

const SIZE: u64 = 4 << 20;
const BLOCK: u64 = 4096;
const IO: Duration = Duration::from_secs(20);

/// Write `k` goes to disk `k % 2`, block `k / 2`, filled with a non-zero byte.
fn place(k: u64) -> (usize, u64, u8) {
    ((k % 2) as usize, (k / 2) * BLOCK, (k % 255) as u8 + 1)
}

fn read_all<S: std::io::Read + std::io::Write>(c: &mut NbdClient<S>) -> Vec<u8> {
    let mut buf = vec![0u8; c.size() as usize];
    c.read(0, &mut buf).unwrap();
    buf
}

/// The writes a pair of disk images shows, checked to be the prefix `0..n`; returns `n`.
fn prefix(disks: &[Vec<u8>; 2]) -> u64 {
    let total = 2 * SIZE / BLOCK;
    let seen: Vec<bool> = (0..total)
        .map(|k| {
            let (d, off, pat) = place(k);
            let b = &disks[d][off as usize..(off + BLOCK) as usize];
            assert!(b.iter().all(|&x| x == b[0]), "block {k} torn");
            assert!(
                b[0] == 0 || b[0] == pat,
                "block {k} holds {} not {pat}",
                b[0]
            );
            b[0] != 0
        })
        .collect();
    let n = seen.iter().position(|s| !s).unwrap_or(seen.len());
    assert!(
        seen[n..].iter().all(|s| !s),
        "write {} is visible but write {n} is not: not a prefix",
        n + seen[n..].iter().position(|s| *s).unwrap_or(0)
    );
    n as u64
}

#[test]
fn thirty_switches_of_two_disks_each_hold_a_prefix_of_ordered_writes() {
    thirty_switches(false);
}

#[test]
fn qemus_copies_of_the_dirty_blocks_rebuild_every_later_view() {
    thirty_switches(true);
}

fn thirty_switches(copies: bool) {
    watchdog(Duration::from_secs(240));
    let dir = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let disks = vec![
        Disk {
            path: make_image(dir.path(), "d0", "qcow2", SIZE, 0),
            format: "qcow2".into(),
            node: "d0".into(),
        },
        Disk {
            path: make_image(dir.path(), "d1", "raw", SIZE, 0),
            format: "raw".into(),
            node: "d1".into(),
        },
    ];
    let q = Qsd::start(dir.path(), disks, true);
    let mut qmp = q.qmp();
    let f = Fleecer::new(scratch.path(), &q.nbd_socket()).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let socket = q.nbd_socket();
    let stop_w = stop.clone();
    let writer = std::thread::spawn(move || {
        let total = 2 * SIZE / BLOCK;
        let mut k = 0;
        // One qemu-io per write: each write has completed before the next one starts, so
        // the writes reach the disks in strict order.
        while k < total && !stop_w.load(Ordering::Relaxed) {
            let (d, off, pat) = place(k);
            guest_write_via(&socket, &format!("d{d}"), &[(off, BLOCK, pat)]);
            k += 1;
        }
        k
    });

    let nodes = ["d0", "d1"];
    let mut replica: Option<[Vec<u8>; 2]> = None;
    let mut previous: Option<Vec<vdrep_qemu::fleece::View>> = None;
    let mut last = 0;
    let mut cuts = Vec::new();
    for generation in 1..=30u32 {
        std::thread::sleep(Duration::from_millis(40));
        let prev_bitmap = (generation > 1).then(|| format!("vdrep-{}", generation - 1));
        let disks: Vec<SwitchDisk> = nodes
            .iter()
            .map(|n| SwitchDisk {
                node: n.to_string(),
                previous_bitmap: prev_bitmap.clone(),
                copy: copies && generation % 2 == 0,
            })
            .collect();
        let views = f.switch(&mut qmp, generation, &disks).unwrap();
        if let Some(p) = previous.take() {
            f.teardown(&mut qmp, &p, false).unwrap();
        }
        if views[0].copied {
            // A copy holds the dirty blocks only: apply them; the next view checks them.
            assert!(views.iter().all(|v| v.copied), "one transaction, one kind");
            let r = replica.as_mut().expect("copies follow a first view");
            for (i, v) in views.iter().enumerate() {
                let mut c = v.connect(IO).unwrap();
                let b = v.previous_bitmap.as_ref().unwrap();
                for e in c.dirty_extents(b).unwrap() {
                    let mut buf = vec![0u8; e.length as usize];
                    c.read(e.offset, &mut buf).unwrap();
                    r[i][e.offset as usize..e.end() as usize].copy_from_slice(&buf);
                }
                c.disconnect();
            }
            previous = Some(views);
            continue;
        }
        let mut full: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
        for (i, v) in views.iter().enumerate() {
            let mut c = v.connect(IO).unwrap();
            full[i] = read_all(&mut c);
            if let (Some(r), Some(b)) = (replica.as_mut(), &v.previous_bitmap) {
                for e in c.dirty_extents(b).unwrap() {
                    let mut buf = vec![0u8; e.length as usize];
                    c.read(e.offset, &mut buf).unwrap();
                    r[i][e.offset as usize..e.end() as usize].copy_from_slice(&buf);
                }
                assert!(
                    r[i] == full[i],
                    "generation {generation}, disk {i}: replica differs from the view"
                );
            }
            c.disconnect();
        }
        let n = prefix(&full);
        assert!(
            n >= last,
            "generation {generation}: the cut went back from {last} to {n}"
        );
        last = n;
        cuts.push(n);
        replica = Some(full);
        previous = Some(views);
    }
    stop.store(true, Ordering::Relaxed);
    let written = writer.join().unwrap();
    if let Some(p) = previous.take() {
        f.teardown(&mut qmp, &p, true).unwrap();
    }
    // Nothing of the views or copies is left: no job, no node or file of ours.
    assert!(qmp.jobs().unwrap().is_empty(), "{:?}", qmp.jobs());
    let ours: Vec<_> = qmp
        .named_block_nodes()
        .unwrap()
        .into_iter()
        .filter_map(|n| n.node_name.filter(|x| x.starts_with("vdrep-")))
        .collect();
    assert!(ours.is_empty(), "left in qemu: {ours:?}");
    let files: Vec<_> = std::fs::read_dir(scratch.path()).unwrap().collect();
    assert!(files.is_empty(), "scratch files left: {files:?}");
    eprintln!("cuts (writes visible per switch): {cuts:?}; {written} writes in all");
    let distinct = cuts.windows(2).filter(|w| w[0] != w[1]).count();
    assert!(
        distinct >= 10,
        "the guest barely wrote between switches: {cuts:?}"
    );
}
