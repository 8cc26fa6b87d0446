//! The scratch image of a fleecing view against a real qemu-storage-daemon: it skips
//! flushes, it fits in the room the switch checks for (and a switch without that room is
//! refused before qemu changes), and a block the view's reader gave back (`NBD_CMD_TRIM`)
//! is not copied into it on the guest's next write. Apart from `fleece.rs` (what a view
//! shows, the bitmaps, teardown): these are what a view costs the host's disk and the guest.

mod support;

use support::checks::*;
use support::{watchdog, Disk, Qsd};
use vdrep_qemu::fleece::{bitmap_state, scratch_need, BitmapState, FleeceError, Fleecer};
use vdrep_qemu::nbd::{wire, NbdError};

/// A scratch image never outlives its view (a crashed run's is deleted at the next start),
/// so its nodes skip flushes: closing one at teardown must not write the blocks copied into
/// it to the disk first (the guest's writes waited behind that flush, ~0.5 s per GiB).
#[test]
fn the_scratch_image_is_opened_without_flushes() {
    watchdog(LIMIT);
    let dir = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let q = Qsd::start(dir.path(), vec![disk(dir.path(), "disk0", "raw", 3)], true);
    let mut qmp = q.qmp();
    let f = Fleecer::new(scratch.path(), &q.nbd_socket()).unwrap();
    let views = f
        .switch(&mut qmp, 1, &switch_disks(&[("disk0", None)]))
        .unwrap();
    let nodes = qmp.execute("query-named-block-nodes", None).unwrap();
    let names = &views[0].names;
    for want in [&names.target, &names.target_file] {
        let node = nodes
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node-name"].as_str() == Some(want.as_str()))
            .unwrap_or_else(|| panic!("no node {want}"));
        assert_eq!(node["cache"]["no-flush"], true, "{want}: {}", node["cache"]);
        assert_eq!(node["cache"]["direct"], false, "{want}: {}", node["cache"]);
    }
    // The guest's disk keeps its own cache mode.
    let guest = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node-name"].as_str() == Some("disk0"))
        .unwrap();
    assert_eq!(guest["cache"]["no-flush"], false, "{}", guest["cache"]);
    q.guest_write("disk0", &[(0, 4096, 9)]);
    f.teardown(&mut qmp, &views, false).unwrap();
    assert_only_bitmaps_left(&mut qmp);
    assert!(scratch_files(scratch.path()).is_empty());
}

/// The room check asks for what a scratch image can take: a guest that overwrites its whole
/// disk while a view lives makes qemu copy every block, and the image then holds the disk's
/// size plus its metadata, more than the disk's size alone but within `scratch_need`.
#[test]
fn a_scratch_image_with_every_block_copied_fits_in_the_room_checked() {
    watchdog(LIMIT);
    let dir = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let size = SIZE;
    let q = Qsd::start(dir.path(), vec![disk(dir.path(), "disk0", "raw", 4)], true);
    let mut qmp = q.qmp();
    let f = Fleecer::new(scratch.path(), &q.nbd_socket()).unwrap();
    let views = f
        .switch(&mut qmp, 1, &switch_disks(&[("disk0", None)]))
        .unwrap();
    let all: Vec<(u64, u64, u8)> = (0..size / (1 << 20))
        .map(|i| (i << 20, 1 << 20, 7))
        .collect();
    q.guest_write("disk0", &all);
    let taken = std::fs::metadata(&views[0].scratch_path).unwrap().len();
    assert!(
        taken > size,
        "{taken} bytes: every block copied, and metadata"
    );
    assert!(
        taken <= scratch_need(size),
        "{taken} bytes > {} checked",
        scratch_need(size)
    );
    f.teardown(&mut qmp, &views, false).unwrap();
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
        matches!(e, FleeceError::NoRoom { need, .. } if need == scratch_need(size)),
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

/// A view's reader gives back what it no longer needs (`NBD_CMD_TRIM`): the guest's next
/// write to a discarded block is not preceded by a copy of the old block into the scratch
/// image (the image does not grow), while a kept block is still copied and reads as at the
/// switch. The discarded range can no longer be read nor its block status asked (of any
/// context: qemu answers all the negotiated ones), the kept range can; and the view cannot
/// be written through its export.
#[test]
fn a_discarded_block_of_a_view_is_not_copied_on_the_guests_next_write() {
    watchdog(LIMIT);
    let dir = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let q = Qsd::start(dir.path(), vec![disk(dir.path(), "disk0", "raw", 5)], true);
    let mut qmp = q.qmp();
    let f = Fleecer::new(scratch.path(), &q.nbd_socket()).unwrap();
    let first = f
        .switch(&mut qmp, 1, &switch_disks(&[("disk0", None)]))
        .unwrap();
    f.teardown(&mut qmp, &first, false).unwrap();
    q.guest_write("disk0", &[(4096, 4096, 6)]);
    let at_switch = guest_contents(&q, "disk0");
    let views = f
        .switch(&mut qmp, 2, &switch_disks(&[("disk0", Some("vdrep-1"))]))
        .unwrap();
    let mut c = views[0].connect(IO).unwrap();
    assert!(c.can_trim());
    let block = 64u64 << 10;
    let half = SIZE / 2;
    // The previous bitmap's dirty extents, listed before anything is trimmed: qemu answers
    // a block status request for every negotiated context, `base:allocation` included,
    // which fails over a trimmed range.
    let dirty = c.dirty_extents("vdrep-1").unwrap();
    assert_eq!(
        dirty
            .iter()
            .map(|e| (e.offset, e.length))
            .collect::<Vec<_>>(),
        vec![(0, block)]
    );
    c.trim(0, half).unwrap();
    let kept_status = c
        .block_status("qemu:dirty-bitmap:vdrep-1", half, half)
        .unwrap();
    assert!(kept_status.iter().all(|e| e.flags & wire::STATE_DIRTY == 0));
    // Over the trimmed range it fails. qemu 10.0 then goes on answering the request after
    // its final error chunk (the other context's chunk follows), so the client finds a
    // reply for an earlier request on its next command and drops the connection: a reader
    // never asks the status of a range it trimmed. Each failing query gets a connection
    // of its own here.
    for context in ["qemu:dirty-bitmap:vdrep-1", wire::BASE_ALLOCATION] {
        let mut probe = views[0].connect(IO).unwrap();
        assert!(
            matches!(
                probe.block_status(context, 0, block),
                Err(NbdError::Command { .. })
            ),
            "{context}"
        );
    }
    // 4 KiB into every 64 KiB block of the discarded half: no copy.
    let scratch_len = || std::fs::metadata(&views[0].scratch_path).unwrap().len();
    let before = scratch_len();
    let writes = |from: u64| -> Vec<(u64, u64, u8)> {
        (from / block..(from + half) / block)
            .map(|b| (b * block + 8192, 4096, 9))
            .collect()
    };
    q.guest_write("disk0", &writes(0));
    let after_discarded = scratch_len();
    assert!(
        after_discarded < before + 4 * block,
        "the scratch image grew from {before} to {after_discarded} bytes for writes to discarded blocks"
    );
    // The same into the kept half: every block copied first.
    q.guest_write("disk0", &writes(half));
    let after_kept = scratch_len();
    assert!(
        after_kept >= after_discarded + half,
        "the scratch image grew from {after_discarded} to {after_kept} bytes: kept blocks not copied"
    );
    let mut kept = vec![0u8; half as usize];
    c.read(half, &mut kept).unwrap();
    assert!(kept == at_switch[half as usize..], "the kept half changed");
    // Reading or asking the status of a discarded block fails (qemu: EACCES).
    let mut buf = vec![0u8; block as usize];
    assert!(matches!(
        c.read(block, &mut buf),
        Err(NbdError::Command { .. })
    ));
    c.read(half, &mut buf).unwrap();
    // Writable for trims only: a write through the export fails, the view is unchanged.
    let url = format!(
        "nbd+unix:///{}?socket={}",
        views[0].export(),
        q.nbd_socket().display()
    );
    let out = std::process::Command::new("qemu-io")
        .args([
            "-f",
            "raw",
            "-c",
            &format!("write -q -P 1 {half} 4096"),
            &url,
        ])
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success() || said.contains("failed"),
        "a write through the view's export succeeded: {said}"
    );
    c.read(half, &mut kept).unwrap();
    assert!(kept == at_switch[half as usize..], "the view was written");
    c.disconnect();
    f.teardown(&mut qmp, &views, true).unwrap();
    assert_only_bitmaps_left(&mut qmp);
}
