//! The QMP and NBD clients against a real qemu-storage-daemon: typed answers and refusals,
//! events, a dead daemon as a transient error; NBD reads at any offset, block status that
//! covers the asked range exactly, refusals for unknown exports and contexts.

mod support;

use std::time::Duration;

use support::{make_image, watchdog, Disk, Qsd};
use vdrep_qemu::fleece::{Fleecer, SwitchDisk};
use vdrep_qemu::nbd::{wire, NbdClient, NbdError, ReadQueue};
use vdrep_qemu::qmp::QmpError;

const SIZE: u64 = 4 << 20;
const IO: Duration = Duration::from_secs(20);

fn daemon(dir: &std::path::Path) -> Qsd {
    let disks = vec![Disk {
        path: make_image(dir, "d", "qcow2", SIZE, 0),
        format: "qcow2".into(),
        node: "d".into(),
    }];
    Qsd::start(dir, disks, true)
}

#[test]
fn qmp_answers_refusals_events_and_a_dead_daemon() {
    watchdog(Duration::from_secs(60));
    let dir = tempfile::tempdir().unwrap();
    let mut q = daemon(dir.path());
    let mut qmp = q.qmp();
    assert!(
        qmp.version().major >= 10,
        "qemu {:?}: vdrep needs >= 10",
        qmp.version()
    );
    assert!(
        qmp.block_devices().unwrap().is_empty(),
        "qemu-storage-daemon has no guest devices"
    );
    let node = qmp.node("d").unwrap().expect("node d");
    assert_eq!(
        (node.drv.as_str(), node.image.virtual_size),
        ("qcow2", SIZE)
    );

    let e = qmp
        .execute(
            "blockdev-del",
            Some(serde_json::json!({"node-name": "nope"})),
        )
        .unwrap_err();
    assert_eq!(e.class(), Some("GenericError"), "{e}");
    assert!(!e.is_transient());
    let e = qmp.execute("no-such-command", None).unwrap_err();
    assert_eq!(e.class(), Some("CommandNotFound"), "{e}");

    // A switch runs jobs: their status changes arrive as events.
    let scratch = tempfile::tempdir().unwrap();
    let f = Fleecer::new(scratch.path(), &q.nbd_socket()).unwrap();
    let disks = [SwitchDisk {
        node: "d".into(),
        previous_bitmap: None,
        copy: false,
    }];
    let v = f.switch(&mut qmp, 1, &disks).unwrap();
    f.teardown(&mut qmp, &v, false).unwrap();
    let events = qmp.take_events();
    let job_events = events
        .iter()
        .filter(|e| e.name == "JOB_STATUS_CHANGE" && e.data["id"] == "vdrep-job-1-0")
        .count();
    assert!(job_events >= 2, "{events:?}");

    q.kill(libc::SIGKILL);
    let e = qmp.execute("query-block", None).unwrap_err();
    assert!(e.is_transient(), "{e}");
    let e = vdrep_qemu::qmp::Qmp::connect(q.qmp_socket(), IO).unwrap_err();
    assert!(
        matches!(e, QmpError::Connect { .. }) && e.is_transient(),
        "{e}"
    );
}

#[test]
fn nbd_reads_any_range_and_block_status_covers_it_exactly() {
    watchdog(Duration::from_secs(60));
    let dir = tempfile::tempdir().unwrap();
    let q = daemon(dir.path());
    q.guest_write("d", &[(70_000, 5000, 0x61), (3 << 20, 65536, 0x62)]);

    let mut c =
        NbdClient::connect_unix(q.nbd_socket(), "guest-d", &[wire::BASE_ALLOCATION], IO).unwrap();
    assert_eq!(c.size(), SIZE);
    assert!(!c.read_only());
    let mut buf = vec![0u8; 5002];
    c.read(69_999, &mut buf).unwrap();
    assert_eq!(buf[0], 0);
    assert!(buf[1..5001].iter().all(|&b| b == 0x61));
    assert_eq!(buf[5001], 0);

    let (off, len) = (1000, SIZE - 3000);
    let ext = c.block_status(wire::BASE_ALLOCATION, off, len).unwrap();
    assert_eq!(ext.first().unwrap().offset, off);
    assert_eq!(ext.last().unwrap().end(), off + len);
    assert!(ext
        .windows(2)
        .all(|w| w[0].end() == w[1].offset && w[0].flags != w[1].flags));
    let data = |o: u64| {
        ext.iter()
            .any(|e| e.offset <= o && o < e.end() && e.flags & wire::STATE_ZERO == 0)
    };
    assert!(data(70_000) && data(3 << 20), "{ext:?}");
    c.disconnect();

    let e = NbdClient::connect_unix(q.nbd_socket(), "no-such-export", &[], IO).unwrap_err();
    assert!(matches!(e, NbdError::Refused { .. }), "{e}");
    let e = NbdClient::connect_unix(q.nbd_socket(), "guest-d", &["qemu:dirty-bitmap:none"], IO)
        .unwrap_err();
    assert!(matches!(e, NbdError::Unsupported { .. }), "{e}");
    let e = NbdClient::connect_unix(dir.path().join("none.sock"), "guest-d", &[], IO).unwrap_err();
    assert!(e.is_transient(), "{e}");
}

/// Sixteen reads in flight on one connection to qemu, collected in the reverse of their
/// order, one with a hole in the middle and one past the export's end refused up front;
/// a read after the queue gives its connection back still works.
#[test]
fn nbd_reads_in_flight_on_one_connection_are_collected_in_any_order() {
    watchdog(Duration::from_secs(60));
    let dir = tempfile::tempdir().unwrap();
    let q = daemon(dir.path());
    // 64 KiB blocks with a pattern of their own; block 5's middle 4 KiB zeroed.
    let k = 64u64 << 10;
    let mut writes: Vec<(u64, u64, u8)> = (0..16).map(|i| (i * k, k, 0x30 + i as u8)).collect();
    writes.push((5 * k + 8192, 4096, 0));
    q.guest_write("d", &writes);

    let c =
        NbdClient::connect_unix(q.nbd_socket(), "guest-d", &[wire::BASE_ALLOCATION], IO).unwrap();
    let mut rq: ReadQueue<_, Vec<u8>> = ReadQueue::new(c, 16);
    assert_eq!(rq.depth(), 16);
    // Blocks out of order, each read starting 1 KiB into its block.
    let order = [3u64, 0, 15, 7, 5, 1, 9, 14, 2, 12, 6, 11, 4, 13, 8, 10];
    let tickets: Vec<(u64, u64)> = order
        .iter()
        .map(|&b| (b, rq.start(b * k + 1024, vec![0xEE; k as usize]).unwrap()))
        .collect();
    assert_eq!(rq.len(), 16);
    let full = rq.start(0, vec![0; 512]).unwrap_err();
    assert!(matches!(full, NbdError::InvalidRequest { .. }), "{full}");
    for &(b, t) in tickets.iter().rev() {
        let buf = rq.finish(t).unwrap();
        let pat = |o: u64| -> u8 {
            let blk = o / k;
            if blk == 5 && (5 * k + 8192..5 * k + 12288).contains(&o) {
                0
            } else if blk < 16 {
                0x30 + blk as u8
            } else {
                0x00
            }
        };
        let start = b * k + 1024;
        for (i, &x) in buf.iter().enumerate() {
            assert_eq!(x, pat(start + i as u64), "block {b}, byte {i}");
        }
    }
    assert!(rq.is_empty());
    let e = rq.finish(tickets[0].1).unwrap_err();
    assert!(matches!(e, NbdError::InvalidRequest { .. }), "{e}");
    let e = rq.start(SIZE - 512, vec![0; 1024]).unwrap_err();
    assert!(matches!(e, NbdError::InvalidRequest { .. }), "{e}");
    // Reads left in flight are collected when the connection is given back.
    rq.start(0, vec![0; 4096]).unwrap();
    let mut c = rq.into_client().expect("a sound connection back");
    let mut buf = vec![0u8; 4096];
    c.read(k, &mut buf).unwrap();
    assert!(buf.iter().all(|&x| x == 0x31));
    c.disconnect();
}
