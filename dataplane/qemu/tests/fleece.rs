//! Fleecing views against a real qemu-storage-daemon (qemu 10): a view is the disk at the
//! switch while the guest keeps writing; the previous bitmap's dirty extents cover every
//! write between two switches and reading them costs no more than the dirty bytes; a clean
//! teardown leaves only the bitmaps; a killed client's leftovers are removed; a restarted
//! daemon's lost bitmaps are reported.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use support::{guest_write_via, make_image, watchdog, Disk, Qsd, Rng};
use vdrep_qemu::fleece::{
    bitmap_state, cleanup_leftovers, lost_bitmaps, remove_bitmap, start_nbd_server,
    stop_nbd_server, BitmapState, FleeceError, Fleecer, LossReason, SwitchDisk,
};
use vdrep_qemu::nbd::{Extent, NbdClient};
use vdrep_qemu::qmp::Qmp;

const SIZE: u64 = 8 << 20;
const IO: Duration = Duration::from_secs(20);
const LIMIT: Duration = Duration::from_secs(120);

fn disk(dir: &Path, node: &str, format: &str, fill: u8) -> Disk {
    Disk {
        path: make_image(dir, node, format, SIZE, fill),
        format: format.into(),
        node: node.into(),
    }
}

fn read_all<S: std::io::Read + std::io::Write>(c: &mut NbdClient<S>) -> Vec<u8> {
    let mut buf = vec![0u8; c.size() as usize];
    for (i, piece) in buf.chunks_mut(256 << 10).enumerate() {
        c.read(i as u64 * (256 << 10), piece).unwrap();
    }
    buf
}

/// The guest's disk as the guest sees it now, over its own export.
fn guest_contents(q: &Qsd, node: &str) -> Vec<u8> {
    let mut c = NbdClient::connect_unix(q.nbd_socket(), &format!("guest-{node}"), &[], IO).unwrap();
    read_all(&mut c)
}

fn apply(model: &mut [u8], writes: &[(u64, u64, u8)]) {
    for &(off, len, pat) in writes {
        model[off as usize..(off + len) as usize].fill(pat);
    }
}

/// `n` writes of 1 byte to 96 KiB at any offset (unaligned too), patterns from `first`.
fn random_writes(rng: &mut Rng, n: usize, first: u8) -> Vec<(u64, u64, u8)> {
    (0..n)
        .map(|i| {
            let len = 1 + rng.below(96 << 10);
            let off = rng.below(SIZE - len);
            (off, len, first.wrapping_add(i as u8) | 1)
        })
        .collect()
}

fn switch_disks(nodes: &[(&str, Option<&str>)]) -> Vec<SwitchDisk> {
    nodes
        .iter()
        .map(|(n, p)| SwitchDisk {
            node: n.to_string(),
            previous_bitmap: p.map(str::to_string),
        })
        .collect()
}

/// Nothing named `vdrep-` but bitmaps: no node, job or export.
fn assert_only_bitmaps_left(qmp: &mut Qmp) {
    let nodes: Vec<String> = qmp
        .named_block_nodes()
        .unwrap()
        .into_iter()
        .filter_map(|n| n.node_name)
        .filter(|n| n.starts_with("vdrep-"))
        .collect();
    assert!(nodes.is_empty(), "nodes left: {nodes:?}");
    let jobs: Vec<String> = qmp.jobs().unwrap().into_iter().map(|j| j.id).collect();
    assert!(jobs.is_empty(), "jobs left: {jobs:?}");
    let exports: Vec<String> = qmp
        .block_exports()
        .unwrap()
        .into_iter()
        .filter(|e| e.id.starts_with("vdrep-") || e.node_name.starts_with("vdrep-"))
        .map(|e| format!("{} on {}", e.id, e.node_name))
        .collect();
    assert!(
        exports.is_empty(),
        "exports left or still on a vdrep node: {exports:?}"
    );
}

fn scratch_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

fn bitmap_count(qmp: &mut Qmp, node: &str, name: &str) -> u64 {
    match bitmap_state(qmp, node, name).unwrap() {
        BitmapState::Present(b) => b.count,
        other => panic!("bitmap {name} on {node}: {other:?}"),
    }
}

/// Every written byte lies inside a dirty extent.
fn assert_covered(writes: &[(u64, u64, u8)], dirty: &[Extent]) {
    for &(off, len, _) in writes {
        let mut at = off;
        while at < off + len {
            let e = dirty
                .iter()
                .find(|e| e.offset <= at && at < e.end())
                .unwrap_or_else(|| panic!("write {off}+{len}: byte {at} is in no dirty extent"));
            at = e.end();
        }
    }
}

fn view_is_the_disk_at_the_switch_while_writes_continue(format: &str) {
    watchdog(LIMIT);
    let dir = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let q = Qsd::start(dir.path(), vec![disk(dir.path(), "disk0", format, 7)], true);
    let mut qmp = q.qmp();
    let f = Fleecer::new(scratch.path(), &q.nbd_socket()).unwrap();
    let mut model = guest_contents(&q, "disk0");
    let at_switch = model.clone();

    let views = f
        .switch(&mut qmp, 1, &switch_disks(&[("disk0", None)]))
        .unwrap();
    assert_eq!(views[0].bitmap, "vdrep-1");
    assert_eq!(views[0].persistent, format == "qcow2");

    // The guest writes while the view is read.
    let socket = q.nbd_socket();
    let writer = std::thread::spawn(move || {
        let mut rng = Rng(0x5eed_0001);
        let mut all = Vec::new();
        for b in 0..15u8 {
            let w = random_writes(&mut rng, 8, b.wrapping_mul(16));
            guest_write_via(&socket, "disk0", &w);
            all.extend(w);
        }
        all
    });
    let mut c = views[0].connect(IO).unwrap();
    assert!(c.read_only());
    let mut during = Vec::new();
    while !writer.is_finished() {
        during.push(read_all(&mut c));
    }
    let writes = writer.join().unwrap();
    during.push(read_all(&mut c));
    for (i, seen) in during.iter().enumerate() {
        assert!(
            seen == &at_switch,
            "read {i} of the view differs from the disk at the switch"
        );
    }
    apply(&mut model, &writes);
    assert!(
        guest_contents(&q, "disk0") == model,
        "the guest's writes did not all land"
    );
    assert_ne!(model, at_switch);
    c.disconnect();
    f.teardown(&mut qmp, &views, false).unwrap();
    assert_only_bitmaps_left(&mut qmp);
}

#[test]
fn a_raw_view_is_the_disk_at_the_switch_while_writes_continue() {
    view_is_the_disk_at_the_switch_while_writes_continue("raw");
}

#[test]
fn a_qcow2_view_is_the_disk_at_the_switch_while_writes_continue() {
    view_is_the_disk_at_the_switch_while_writes_continue("qcow2");
}

/// Two switches: the first view plus the second view's dirty extents rebuild the disk as
/// it was at the second switch, every write in between lies in a dirty extent, and the bytes
/// read are the bitmap's dirty bytes (≤ 1.05×).
fn dirty_extents_cover_every_write_between_switches(format: &str) {
    watchdog(LIMIT);
    let dir = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let q = Qsd::start(dir.path(), vec![disk(dir.path(), "disk0", format, 3)], true);
    let mut qmp = q.qmp();
    let f = Fleecer::new(scratch.path(), &q.nbd_socket()).unwrap();

    let v1 = f
        .switch(&mut qmp, 1, &switch_disks(&[("disk0", None)]))
        .unwrap();
    let mut replica = read_all(&mut v1[0].connect(IO).unwrap());
    f.teardown(&mut qmp, &v1, false).unwrap();

    let mut rng = Rng(0xd1_27_00 ^ format.len() as u64);
    let writes = random_writes(&mut rng, 40, 0x20);
    q.guest_write("disk0", &writes);
    let mut model = replica.clone();
    apply(&mut model, &writes);

    let v2 = f
        .switch(&mut qmp, 2, &switch_disks(&[("disk0", Some("vdrep-1"))]))
        .unwrap();
    // The writes after the second switch are not in its view.
    let after = random_writes(&mut rng, 10, 0x90);
    q.guest_write("disk0", &after);

    let dirty_bytes = bitmap_count(&mut qmp, "disk0", "vdrep-1");
    let mut c = v2[0].connect(IO).unwrap();
    let dirty = c.dirty_extents("vdrep-1").unwrap();
    assert_covered(&writes, &dirty);
    let mut read = 0u64;
    for e in &dirty {
        let mut buf = vec![0u8; e.length as usize];
        c.read(e.offset, &mut buf).unwrap();
        replica[e.offset as usize..e.end() as usize].copy_from_slice(&buf);
        read += e.length;
    }
    let written: BTreeSet<u64> = writes
        .iter()
        .flat_map(|&(o, l, _)| (o >> 16)..=((o + l - 1) >> 16))
        .collect();
    eprintln!(
        "{format}: {} writes, {} dirty 64 KiB blocks touched, bitmap count {dirty_bytes}, read {read} bytes in {} extents",
        writes.len(),
        written.len(),
        dirty.len()
    );
    assert!(
        read as f64 <= 1.05 * dirty_bytes as f64,
        "read {read} for {dirty_bytes} dirty bytes"
    );
    assert_eq!(
        dirty_bytes,
        written.len() as u64 * 65536,
        "the bitmap marks exactly the written 64 KiB blocks"
    );
    assert!(
        replica == model,
        "first view + dirty extents of the second differ from the disk at the second switch"
    );
    assert!(
        read_all(&mut c) == model,
        "the second view changed after its switch"
    );
    c.disconnect();

    f.teardown(&mut qmp, &v2, true).unwrap();
    assert_eq!(
        bitmap_state(&mut qmp, "disk0", "vdrep-1").unwrap(),
        BitmapState::Missing
    );
    let vdrep2 = bitmap_count(&mut qmp, "disk0", "vdrep-2");
    assert!(
        vdrep2 > 0,
        "the writes after the second switch are in the new bitmap"
    );
    assert_only_bitmaps_left(&mut qmp);
}

#[test]
fn raw_dirty_extents_cover_every_write_between_switches() {
    dirty_extents_cover_every_write_between_switches("raw");
}

#[test]
fn qcow2_dirty_extents_cover_every_write_between_switches() {
    dirty_extents_cover_every_write_between_switches("qcow2");
}

#[test]
fn a_clean_teardown_of_two_disks_leaves_only_the_bitmaps() {
    watchdog(LIMIT);
    let dir = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let q = Qsd::start(
        dir.path(),
        vec![
            disk(dir.path(), "sys", "qcow2", 1),
            disk(dir.path(), "data", "raw", 2),
        ],
        true,
    );
    let mut qmp = q.qmp();
    let f = Fleecer::new(scratch.path(), &q.nbd_socket()).unwrap();
    let v1 = f
        .switch(&mut qmp, 1, &switch_disks(&[("sys", None), ("data", None)]))
        .unwrap();
    assert_eq!(scratch_files(scratch.path()).len(), 2);
    q.guest_write("sys", &[(4096, 4096, 9)]);
    q.guest_write("data", &[(1 << 20, 512, 9)]);
    let v2 = f
        .switch(
            &mut qmp,
            2,
            &switch_disks(&[("sys", Some("vdrep-1")), ("data", Some("vdrep-1"))]),
        )
        .unwrap();
    f.teardown(&mut qmp, &v1, false).unwrap();
    f.teardown(&mut qmp, &v2, false).unwrap();
    assert_only_bitmaps_left(&mut qmp);
    assert!(
        scratch_files(scratch.path()).is_empty(),
        "{:?}",
        scratch_files(scratch.path())
    );
    for n in qmp.named_block_nodes().unwrap() {
        let name = n.node_name.clone().unwrap_or_default();
        if name != "sys" && name != "data" {
            assert!(
                n.dirty_bitmaps.iter().all(|b| b.name.is_none()),
                "{name}: {:?}",
                n.dirty_bitmaps
            );
            continue;
        }
        let mut b: Vec<(String, bool, bool)> = n
            .dirty_bitmaps
            .iter()
            .map(|b| (b.name.clone().unwrap(), b.recording, b.persistent))
            .collect();
        b.sort();
        let persistent = name == "sys";
        assert_eq!(
            b,
            vec![
                ("vdrep-1".into(), false, persistent),
                ("vdrep-2".into(), true, persistent)
            ],
            "{name}"
        );
    }
    // Each disk's bitmap saw only its own write.
    assert_eq!(bitmap_count(&mut qmp, "sys", "vdrep-1"), 65536);
    assert_eq!(bitmap_count(&mut qmp, "data", "vdrep-1"), 65536);
    // The guest still writes.
    q.guest_write("data", &[(0, 4096, 5)]);
    assert_eq!(bitmap_count(&mut qmp, "data", "vdrep-2"), 65536);
}

/// A process that took views and was killed with SIGKILL left exports, nodes, jobs and
/// scratch files; the guest keeps writing; `cleanup_leftovers` removes everything but the
/// bitmaps, and the next switch's dirty extents hold the writes made meanwhile.
#[test]
fn a_killed_clients_leftovers_are_removed_and_no_write_is_missed() {
    watchdog(LIMIT);
    let dir = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let q = Qsd::start(
        dir.path(),
        vec![
            disk(dir.path(), "a", "qcow2", 1),
            disk(dir.path(), "b", "raw", 2),
        ],
        true,
    );
    let mut fds = [0i32; 2];
    // SAFETY: a pipe for the child to say it is ready.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: the child only runs this test's code and leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // SAFETY: the child dies with the test even if the test fails before killing it.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
        let r = std::panic::catch_unwind(|| {
            let mut qmp = q.qmp();
            let f = Fleecer::new(scratch.path(), &q.nbd_socket()).unwrap();
            let v = f
                .switch(&mut qmp, 1, &switch_disks(&[("a", None), ("b", None)]))
                .unwrap();
            let mut c = v[0].connect(IO).unwrap();
            let mut buf = [0u8; 4096];
            c.read(0, &mut buf).unwrap();
            // SAFETY: writing one byte to our pipe.
            unsafe { libc::write(fds[1], b"r".as_ptr().cast(), 1) };
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        });
        // SAFETY: leave the forked child without running the parent's destructors.
        unsafe { libc::_exit(if r.is_ok() { 0 } else { 1 }) }
    }
    let mut b = [0u8; 1];
    // SAFETY: reading one byte from our pipe; the child writes it or exits (EOF after close).
    unsafe { libc::close(fds[1]) };
    let n = unsafe { libc::read(fds[0], b.as_mut_ptr().cast(), 1) };
    assert_eq!(n, 1, "the child failed to take its views");
    // SAFETY: killing and reaping our own child.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
    assert_eq!(scratch_files(scratch.path()).len(), 2);

    // The guest writes with the dead client's views in place.
    let writes = [(100_000, 70_000, 11), (SIZE - 4096, 4096, 12)];
    q.guest_write("a", &writes);
    q.guest_write("b", &writes);

    let mut qmp = q.qmp();
    let left = cleanup_leftovers(&mut qmp, Duration::from_secs(30)).unwrap();
    eprintln!("leftovers removed: {left:?}");
    assert_eq!(left.exports.len(), 2, "{left:?}");
    assert_eq!(left.jobs.len(), 2, "{left:?}");
    assert_eq!(left.files.len(), 2, "{left:?}");
    assert_only_bitmaps_left(&mut qmp);
    assert!(scratch_files(scratch.path()).is_empty());
    assert!(cleanup_leftovers(&mut qmp, Duration::from_secs(30))
        .unwrap()
        .is_empty());

    // The bitmaps the dead client started hold the writes made since.
    let f = Fleecer::new(scratch.path(), &q.nbd_socket()).unwrap();
    let v2 = f
        .switch(
            &mut qmp,
            2,
            &switch_disks(&[("a", Some("vdrep-1")), ("b", Some("vdrep-1"))]),
        )
        .unwrap();
    for v in &v2 {
        let mut c = v.connect(IO).unwrap();
        let dirty = c.dirty_extents("vdrep-1").unwrap();
        assert_covered(&writes, &dirty);
        c.disconnect();
    }
    f.teardown(&mut qmp, &v2, true).unwrap();
    assert_only_bitmaps_left(&mut qmp);
}

/// vdrep's own NBD server; a restart loses an in-memory bitmap (raw) and leaves a persistent
/// one inconsistent after a crash (qcow2, SIGKILL) but intact after a clean stop (SIGTERM).
#[test]
fn a_restarted_daemon_reports_lost_bitmaps() {
    watchdog(LIMIT);
    let dir = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let mut q = Qsd::start(
        dir.path(),
        vec![
            disk(dir.path(), "r", "raw", 1),
            disk(dir.path(), "c", "qcow2", 2),
        ],
        false,
    );
    let nbd = dir.path().join("vdrep-nbd.sock");
    let mut qmp = q.qmp();
    start_nbd_server(&mut qmp, &nbd).unwrap();
    assert!(matches!(
        start_nbd_server(&mut qmp, &nbd),
        Err(FleeceError::NbdServerRunning)
    ));
    let f = Fleecer::new(scratch.path(), &nbd).unwrap();
    let v = f
        .switch(&mut qmp, 1, &switch_disks(&[("r", None), ("c", None)]))
        .unwrap();
    let before = read_all(&mut v[0].connect(IO).unwrap());
    assert!(before.iter().all(|&b| b == 1));
    f.teardown(&mut qmp, &v, false).unwrap();
    stop_nbd_server(&mut qmp).unwrap();
    drop(qmp);
    let pairs = vec![
        ("r".to_string(), "vdrep-1".to_string()),
        ("c".to_string(), "vdrep-1".to_string()),
    ];

    q.restart(libc::SIGTERM);
    let mut qmp = q.qmp();
    let lost = lost_bitmaps(&mut qmp, &pairs).unwrap();
    assert_eq!(
        lost,
        vec![("r".into(), "vdrep-1".into(), LossReason::Missing)]
    );
    drop(qmp);

    q.restart(libc::SIGKILL);
    let mut qmp = q.qmp();
    let lost = lost_bitmaps(&mut qmp, &pairs).unwrap();
    assert_eq!(
        lost,
        vec![
            ("r".into(), "vdrep-1".into(), LossReason::Missing),
            ("c".into(), "vdrep-1".into(), LossReason::Inconsistent)
        ]
    );
    start_nbd_server(&mut qmp, &nbd).unwrap();
    match f.switch(&mut qmp, 2, &switch_disks(&[("c", Some("vdrep-1"))])) {
        Err(e @ FleeceError::BitmapLost { .. }) => {
            assert!(!e.is_transient());
            assert!(e.to_string().contains("resync"), "{e}");
        }
        other => panic!("expected a lost bitmap, got {other:?}"),
    }
    assert_only_bitmaps_left(&mut qmp);
    // A resync starts over: the bad bitmap goes, a new protection starts.
    remove_bitmap(&mut qmp, "c", "vdrep-1").unwrap();
    let v = f
        .switch(&mut qmp, 2, &switch_disks(&[("r", None), ("c", None)]))
        .unwrap();
    f.teardown(&mut qmp, &v, false).unwrap();
    assert!(lost_bitmaps(&mut qmp, &[("c".into(), "vdrep-2".into())])
        .unwrap()
        .is_empty());
}

/// An unknown disk, an existing bitmap, a transaction qemu refuses, an export that cannot be
/// added after the transaction: each fails the switch and leaves qemu as it was.
#[test]
fn a_failed_switch_leaves_qemu_as_it_was() {
    watchdog(LIMIT);
    let dir = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let q = Qsd::start(dir.path(), vec![disk(dir.path(), "d", "raw", 1)], true);
    let mut qmp = q.qmp();
    let f = Fleecer::new(scratch.path(), &q.nbd_socket()).unwrap();
    let e = f
        .switch(&mut qmp, 1, &switch_disks(&[("nope", None)]))
        .unwrap_err();
    assert!(matches!(e, FleeceError::NodeNotFound { .. }), "{e}");
    let v = f
        .switch(&mut qmp, 1, &switch_disks(&[("d", None)]))
        .unwrap();
    f.teardown(&mut qmp, &v, false).unwrap();
    let e = f
        .switch(&mut qmp, 1, &switch_disks(&[("d", None)]))
        .unwrap_err();
    assert!(matches!(e, FleeceError::BitmapExists { .. }), "{e}");
    // A refused transaction (a granularity qemu rejects) leaves nothing behind.
    let mut bad = f.clone();
    bad.granularity = Some(3);
    let e = bad
        .switch(&mut qmp, 2, &switch_disks(&[("d", Some("vdrep-1"))]))
        .unwrap_err();
    assert!(matches!(e, FleeceError::Qmp(_)) && !e.is_transient(), "{e}");
    assert_only_bitmaps_left(&mut qmp);
    assert!(scratch_files(scratch.path()).is_empty());
    assert!(
        matches!(bitmap_state(&mut qmp, "d", "vdrep-1").unwrap(), BitmapState::Present(b) if b.recording)
    );

    // A failure after the transaction (the export cannot be added: its id is taken) undoes
    // the switch: the new bitmap is merged back into the previous one, which records again.
    q.guest_write("d", &[(0, 512, 3)]);
    qmp.execute(
        "block-export-add",
        Some(serde_json::json!({"type": "nbd", "id": "vdrep-exp-2-0", "node-name": "d", "name": "planted"})),
    )
    .unwrap();
    let e = f
        .switch(&mut qmp, 2, &switch_disks(&[("d", Some("vdrep-1"))]))
        .unwrap_err();
    assert!(e.to_string().contains("vdrep-exp-2-0"), "{e}");
    assert_eq!(
        bitmap_state(&mut qmp, "d", "vdrep-2").unwrap(),
        BitmapState::Missing
    );
    assert_only_bitmaps_left(&mut qmp);
    assert!(scratch_files(scratch.path()).is_empty());
    q.guest_write("d", &[(4 << 20, 512, 4)]);
    match bitmap_state(&mut qmp, "d", "vdrep-1").unwrap() {
        BitmapState::Present(b) => {
            assert!(b.recording);
            assert_eq!(
                b.count,
                2 * 65536,
                "both writes, before and after the failed switch"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn vhdx_dirty_extents_cover_every_write_between_switches() {
    dirty_extents_cover_every_write_between_switches("vhdx");
}

#[test]
fn a_vhdx_view_is_the_disk_at_the_switch_while_writes_continue() {
    view_is_the_disk_at_the_switch_while_writes_continue("vhdx");
}

/// A disk larger than the scratch filesystem's free space: the switch is refused before
/// anything changes in qemu (the filter would otherwise fail guest writes once the scratch
/// image fills the filesystem), as a transient error the cycle waits out.
#[test]
fn a_switch_waits_when_the_scratch_filesystem_cannot_hold_the_disk() {
    watchdog(LIMIT);
    let dir = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let free = vdrep_qemu::fleece::free_bytes(scratch.path()).unwrap();
    let size = (free + (1 << 30)).next_multiple_of(1 << 20);
    let path = dir.path().join("big.raw");
    support::run(&[
        "qemu-img",
        "create",
        "-q",
        "-f",
        "raw",
        path.to_str().unwrap(),
        &size.to_string(),
    ]);
    let q = Qsd::start(
        dir.path(),
        vec![Disk {
            path,
            format: "raw".into(),
            node: "big".into(),
        }],
        true,
    );
    let mut qmp = q.qmp();
    let f = Fleecer::new(scratch.path(), &q.nbd_socket()).unwrap();
    let e = f
        .switch(&mut qmp, 1, &switch_disks(&[("big", None)]))
        .unwrap_err();
    assert!(
        matches!(e, FleeceError::NoRoom { need, .. } if need == size),
        "{e}"
    );
    assert!(e.is_transient());
    assert_eq!(
        bitmap_state(&mut qmp, "big", "vdrep-1").unwrap(),
        BitmapState::Missing
    );
    assert_only_bitmaps_left(&mut qmp);
    assert!(scratch_files(scratch.path()).is_empty());
}
