//! The QMP and NBD clients against a real qemu-storage-daemon: typed answers and refusals,
//! events, a dead daemon as a transient error; NBD reads at any offset, block status that
//! covers the asked range exactly, refusals for unknown exports and contexts.

mod support;

use std::time::Duration;

use support::{make_image, watchdog, Disk, Qsd};
use vdrep_qemu::fleece::{Fleecer, SwitchDisk};
use vdrep_qemu::nbd::{wire, NbdClient, NbdError};
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
