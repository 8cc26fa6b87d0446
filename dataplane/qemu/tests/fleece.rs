//! Fleecing views against a real qemu-storage-daemon (qemu 10): a view is the disk at the
//! switch while the guest keeps writing; the previous bitmap's dirty extents cover every
//! write between two switches and reading them costs no more than the dirty bytes; a clean
//! teardown leaves only the bitmaps; a failed switch leaves qemu as it was; the bitmap probe
//! leaves nothing behind. Faults (a killed client, a restarted daemon) are in `faults.rs`;
//! the scratch image (no flushes, its room, trimmed blocks not copied) in `scratch.rs`.

mod support;

use std::collections::BTreeSet;

use support::checks::*;
use support::{guest_write_via, watchdog, Qsd, Rng};
use vdrep_qemu::fleece::{bitmap_state, BitmapState, FleeceError, Fleecer};

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
    // Writable for trims only (`a_discarded_block_of_a_view_is_not_copied_on_the_guests_next_write`).
    assert!(c.can_trim());
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

#[test]
fn the_bitmap_probe_passes_where_protection_can_add_its_bitmap_and_leaves_nothing_behind() {
    use vdrep_qemu::fleece::{probe_bitmap, PROBE_BITMAP};
    watchdog(LIMIT);
    let dir = tempfile::tempdir().unwrap();
    // A qcow2 v2 image (compat=0.10) cannot store a persistent bitmap.
    let v2 = dir.path().join("old.qcow2");
    support::run(&[
        "qemu-img",
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "compat=0.10",
        v2.to_str().unwrap(),
        "4M",
    ]);
    let disks = vec![
        disk(dir.path(), "raw0", "raw", 1),
        disk(dir.path(), "qcow0", "qcow2", 2),
        support::Disk {
            path: v2,
            format: "qcow2".into(),
            node: "old0".into(),
        },
    ];
    let q = Qsd::start(dir.path(), disks, false);
    let mut qmp = q.qmp();
    probe_bitmap(&mut qmp, "raw0", false).unwrap();
    probe_bitmap(&mut qmp, "qcow0", true).unwrap();
    probe_bitmap(&mut qmp, "old0", false).unwrap();
    let e = probe_bitmap(&mut qmp, "old0", true).unwrap_err();
    assert!(e.to_string().contains("v2"), "{e}");
    assert!(matches!(
        probe_bitmap(&mut qmp, "nosuch", false),
        Err(FleeceError::NodeNotFound { .. })
    ));
    for node in ["raw0", "qcow0", "old0"] {
        assert_eq!(
            bitmap_state(&mut qmp, node, PROBE_BITMAP).unwrap(),
            BitmapState::Missing,
            "{node}"
        );
    }
}
