//! Every recovery point of a qemu VM is one instant of all its disks (issue 18 item 2: one
//! QMP transaction per switch for all the VM's disks). The guest writes numbered 4 KiB
//! blocks in strict order, alternating between the raw and the qcow2 disk, each write
//! complete (`O_DSYNC` through the FUSE export) before the next starts; over 30 switches
//! every VM point must hold exactly writes 1..m for some m across both disks, and the
//! last all of them (its failover by VM point too). Switching the disks one after the
//! other (two transactions) would let a write to the second disk land after the first
//! disk's view but before its own, and fail this.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use vdrep_tests::procs::{finish, read_log, wait_for_log};
use vdrep_tests::qemu_rig::{wait_until, writes_in, NumberedWriter, Rig, StopOnDrop, SWITCHED};

const SIZE: u64 = 16 << 20;
const ROUNDS: usize = 32;

#[test]
fn thirty_qemu_switches_of_two_disks_each_hold_a_prefix_of_ordered_writes() {
    let mut rig = Rig::new(SIZE);
    let send = rig
        .send_every("send.log", "300ms")
        .arg("--max-cycles")
        .arg(&ROUNDS.to_string());
    let t0 = Instant::now();
    let child = send.spawn();
    assert!(
        wait_for_log(&send.log, SWITCHED, Duration::from_secs(60)),
        "no first switch: {}",
        read_log(&send.log)
    );
    let w = NumberedWriter::new(SIZE);
    let stop = AtomicBool::new(false);
    let res = std::thread::scope(|sc| {
        let h = sc.spawn(|| w.run(&rig.qsd, &stop, Duration::from_millis(1)));
        let _stop = StopOnDrop(&stop);
        // Writes through all but the last rounds: the newest point must hold them all.
        wait_until("switches", &send.log, Duration::from_secs(120), || {
            read_log(&send.log).matches(SWITCHED).count() >= ROUNDS - 2
        });
        stop.store(true, Ordering::SeqCst);
        h.join().unwrap();
        finish(child, t0, Duration::from_secs(120), &send.log)
    });
    assert!(res.status.success(), "send: {}\n{}", res.status, res.log);
    let prefixes = rig.check_prefixes(SIZE, w.written());
    eprintln!(
        "VM points (point, writes): {prefixes:?}; {} writes",
        w.written()
    );
    assert_eq!(prefixes.len(), ROUNDS, "a VM point per round");
    let distinct: std::collections::BTreeSet<u64> = prefixes.iter().map(|p| p.1).collect();
    assert!(
        distinct.len() >= ROUNDS - 6,
        "the writer did not span the switches: {prefixes:?}"
    );

    // The VM's points are the top-level points of `points --json`, and the newest one
    // fails over by its id with both disks at that switch.
    let out = vdrep_tests::vdrep(&[
        "points",
        "--store",
        rig.store.to_str().unwrap(),
        "--vm",
        "vm1",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "points: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // Every point is one instant of both disks, the initial copies' too (one transaction);
    // every cycle's part carries the sender's digest of the disk at that view.
    for p in doc["points"].as_array().expect("top-level points") {
        assert_eq!(p["consistent"], true, "{p:#}");
        for d in p["disks"].as_array().unwrap() {
            // Point 0 is the initial copies (no digest, as for change logs); no resync here,
            // so every later part is a cycle.
            if p["id"].as_u64().unwrap() > 0 {
                let digest = d["digest"]
                    .as_str()
                    .unwrap_or_else(|| panic!("no digest: {p:#}"));
                assert_eq!(digest.len(), 64, "{p:#}");
            }
        }
    }
    let ids: Vec<u64> = doc["points"]
        .as_array()
        .expect("top-level points")
        .iter()
        .map(|p| p["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, prefixes.iter().map(|p| p.0).collect::<Vec<_>>());
    let (id, m) = *prefixes.last().unwrap();
    let dir = rig.failover(id);
    assert!(
        rig.last_failover
            .lock()
            .unwrap()
            .contains("digest verified against the sender's"),
        "{}",
        rig.last_failover.lock().unwrap()
    );
    let mut all = Vec::new();
    for (i, (name, fill)) in [("os.vhd", 0x11), ("data.vhd", 0x22)].iter().enumerate() {
        let b = std::fs::read(dir.join(name)).unwrap();
        all.extend(writes_in(&b[..SIZE as usize], i as u64, *fill));
    }
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=m).collect::<Vec<_>>(),
        "failover of VM point {id}"
    );
}
