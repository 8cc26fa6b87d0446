//! Protecting a running qemu VM (issue 18 item 2): a real `qemu-storage-daemon` runs the
//! VM's disks (a raw and a qcow2 image) with a QMP socket and a FUSE export per disk that
//! plays the guest; `vdrep send --vm vm1 --qmp SOCKET --drive os --drive data` protects it
//! with dirty bitmaps and fleecing views read over NBD.
//!
//! Here: the initial replication reads the disks as they were when protection started
//! while the guest writes; later cycles converge to the disks' final state (`qemu-img
//! compare -U`); each cycle reads no more from its views than the bitmaps marked dirty; a
//! clean stop (SIGTERM) leaves only the bitmaps in qemu, and the writes made while the
//! sender was stopped are in the next point.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use vdrep_tests::procs::{finish, read_log, wait_for_log};
use vdrep_tests::qemu_rig::{
    compare, counters, discard_counters, snapshot, wait_until, Rig, StopOnDrop, SWITCHED, VM_POINT,
};
use vdrep_tests::qsd::Qsd;

const MIB: u64 = 1 << 20;
const SIZE: u64 = 16 * MIB;

/// The guest: scattered writes of 4..64 KiB to both disks until `stop`.
fn guest_writes(qsd: &Qsd, seed: u64, stop: &AtomicBool, max: usize) -> usize {
    let mut x = seed | 1;
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) && n < max {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let disk = (x % 2) as usize;
        let len = 4096 * (1 + (x >> 8) % 16);
        let off = ((x >> 16) % (SIZE / 4096)) * 4096;
        let len = len.min(SIZE - off);
        let data = vec![(x >> 32) as u8 | 1; len as usize];
        qsd.write(disk, off, &data);
        n += 1;
        std::thread::sleep(Duration::from_millis(2));
    }
    n
}

/// (name, nice) of each thread of process `pid`, from /proc.
fn thread_nices(pid: u32) -> Vec<(String, i32)> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let Ok(stat) = std::fs::read_to_string(e.unwrap().path().join("stat")) else {
            continue;
        };
        let (open, close) = (stat.find('(').unwrap(), stat.rfind(')').unwrap());
        // Field 19 (nice) is the 17th after the name's closing parenthesis.
        let nice = stat[close + 2..]
            .split(' ')
            .nth(16)
            .unwrap()
            .parse()
            .unwrap();
        v.push((stat[open + 1..close].to_string(), nice));
    }
    v
}

/// A sender protecting qemu VMs runs its threads 10 nice levels below the priority it was
/// started at (`sender/priority.rs`), except the one that starts the drains' threads.
fn shipping_yields_to_the_guests(pid: u32) {
    let own = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let threads = thread_nices(pid);
    let Some(base) = threads.iter().find(|t| t.0 == "vdrep-spawner").map(|t| t.1) else {
        let nice: i32 = own[own.rfind(')').unwrap() + 2..]
            .split(' ')
            .nth(16)
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            nice, 19,
            "no vdrep-spawner thread below nice 19: {threads:?}"
        );
        eprintln!("the sender runs at nice 19: its priority cannot be checked");
        return;
    };
    let lowered = (base + 10).min(19);
    let workers: Vec<_> = threads
        .iter()
        .filter(|t| t.0.starts_with("tokio-r") || t.0.starts_with("vdrep-cpu"))
        .collect();
    assert!(!workers.is_empty(), "no runtime threads: {threads:?}");
    assert!(
        workers.iter().all(|t| t.1 == lowered),
        "the shipping's threads not at nice {lowered}: {threads:?}"
    );
    eprintln!("sender threads (spawner at {base}): {threads:?}");
}

#[test]
fn initial_replication_holds_the_disks_at_protection_start_and_cycles_converge_reading_only_dirty_extents(
) {
    let mut rig = Rig::new(SIZE);
    let q = rig.dir.join("qsd");
    // The disks as protection finds them (nothing writes before the sender's first switch).
    snapshot(&q.join("os.raw"), "raw", &rig.dir.join("os-start.raw"));
    snapshot(
        &q.join("data.qcow2"),
        "qcow2",
        &rig.dir.join("data-start.raw"),
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics = format!("127.0.0.1:{port}");
    let send = rig.send("send.log").arg("--metrics").arg(&metrics);
    // The sender inherits this thread's nice: 0 where allowed (tests run at 19, where
    // nothing can be lowered further and the check below has nothing to see).
    // SAFETY: setpriority of the calling thread only.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 0);
    }
    let child = send.spawn();
    assert!(
        wait_for_log(&send.log, SWITCHED, Duration::from_secs(60)),
        "no first switch: {}",
        read_log(&send.log)
    );
    shipping_yields_to_the_guests(child.id());
    // The guest writes throughout the initial copy and a few cycles.
    let stop = AtomicBool::new(false);
    let written = std::thread::scope(|sc| {
        let h = sc.spawn(|| guest_writes(&rig.qsd, 7, &stop, usize::MAX));
        let _stop = StopOnDrop(&stop);
        let switches = |n| read_log(&send.log).matches(SWITCHED).count() >= n;
        wait_until("four switches", &send.log, Duration::from_secs(90), || {
            switches(4)
        });
        stop.store(true, Ordering::SeqCst);
        h.join().unwrap()
    });
    assert!(written > 50, "the guest wrote only {written} times");
    // Writes stopped: the next round that commits ships the rest; two more VM points (the
    // first one's switch may precede the last write), so the newest holds every write
    // whenever SIGTERM lands (a round it cuts is no VM point).
    let points = || read_log(&send.log).matches(VM_POINT).count();
    let seen = points();
    wait_until(
        "two more VM points",
        &send.log,
        Duration::from_secs(60),
        || points() >= seen + 2,
    );
    // The VM and its disks are in the sender's health like any other VM's.
    let health: serde_json::Value = serde_json::from_slice(
        &std::fs::read(rig.dir.join("state/health.json")).expect("health.json"),
    )
    .unwrap();
    let vm = &health["vms"][0];
    assert_eq!(vm["vm"], "vm1", "{health:#}");
    assert_eq!(vm["state"], "Normal", "{health:#}");
    let disks: Vec<&str> = vm["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["disk"].as_str().unwrap())
        .collect();
    assert_eq!(disks, ["data", "os"], "{health:#}");
    // The counters are metrics too: the views gave no more than the bitmaps marked dirty.
    let text = vdrep_tests::http::get(&metrics, "/metrics").body;
    for disk in ["os", "data"] {
        let l = [("vm", "vm1"), ("disk", disk)];
        let dirty = vdrep_tests::http::sample(&text, "vdrep_dirty_bytes_total", &l).unwrap_or(0.0);
        let read =
            vdrep_tests::http::sample(&text, "vdrep_view_read_bytes_total", &l).unwrap_or(0.0);
        assert!(
            dirty > 0.0 && read <= dirty * 1.05,
            "{disk}: dirty {dirty}, read {read}"
        );
    }
    // SIGTERM: a clean stop.
    // SAFETY: kill(2) of our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    // 30 s for the stop itself, from the signal (from the spawn, a loaded machine's slower
    // cycles used the 30 s up before the signal was sent).
    let res = finish(child, Instant::now(), Duration::from_secs(30), &send.log);
    assert!(
        res.status.success(),
        "clean stop failed: {}\n{}",
        res.status,
        res.log
    );

    let pts = rig.points();
    assert!(pts.len() >= 4, "points {pts:?}");
    assert_eq!(pts[0], 0);
    // Point 0 is the disks at protection start, although the guest wrote during the copy.
    let first = rig.failover(0);
    compare(&rig.dir.join("os-start.raw"), "raw", &first.join("os.vhd")).unwrap();
    compare(
        &rig.dir.join("data-start.raw"),
        "raw",
        &first.join("data.vhd"),
    )
    .unwrap();
    assert!(
        compare(&q.join("os.raw"), "raw", &first.join("os.vhd")).is_err(),
        "the guest's writes are not visible: the test proves nothing"
    );
    // The newest point is the disks as the guest left them.
    let last = rig.failover(*pts.last().unwrap());
    compare(&q.join("os.raw"), "raw", &last.join("os.vhd")).unwrap();
    compare(&q.join("data.qcow2"), "qcow2", &last.join("data.vhd")).unwrap();

    // Each cycle read from its views no more than its bitmap marked dirty (granularity).
    for disk in ["os", "data"] {
        let (dirty, read) = counters(&res.log, disk).expect("cycle counters logged");
        eprintln!("{disk}: {dirty} dirty bytes, {read} bytes read from views, {} points, {written} guest writes", pts.len());
        assert!(dirty > 0, "{disk}: no dirty bytes counted");
        assert!(
            read as f64 <= dirty as f64 * 1.05,
            "{disk}: read {read} bytes from views for {dirty} dirty bytes"
        );
        // The cycles gave back to qemu the blocks they did not need (clean, or read), and
        // no read ever asked for a discarded range (the replicas above are exact).
        let (discarded, refused) =
            discard_counters(&res.log, disk).expect("discard counters logged");
        eprintln!("{disk}: {discarded} bytes discarded from views, {refused} refused reads");
        // A fleecing view gives back what it will not read; qemu's copy of the dirty blocks
        // (every cycle after the first of a connection) has nothing to give back.
        let copies = res
            .log
            .matches("read from qemu's copy of its dirty blocks")
            .count();
        eprintln!("{disk}: cycles read from qemu's copies (both disks): {copies}");
        assert!(copies > 0, "{disk}: no cycle read qemu's copy");
        // Read from the file itself (the test runs as qemu's user), not over NBD.
        assert!(
            res.log
                .lines()
                .filter(|l| l.contains("read from qemu's copy"))
                .all(|l| l.contains("from_file=true")),
            "a copy was read over NBD: {}",
            res.log
        );
        assert_eq!(refused, 0, "{disk}: reads of discarded ranges");
    }

    // A clean stop leaves only the bitmaps: one per disk.
    let (objs, bitmaps) = rig.qsd.vdrep_objects();
    assert!(objs.is_empty(), "left in qemu after a clean stop: {objs:?}");
    let mut nodes: Vec<&str> = bitmaps.iter().map(|(n, _)| n.as_str()).collect();
    nodes.sort_unstable();
    assert_eq!(nodes, vec!["data", "os"], "bitmaps {bitmaps:?}");

    // Writes made while the sender is stopped are in the next point.
    rig.qsd.write(0, 3 * MIB, &vec![0xab; 8192]);
    rig.qsd.write(1, 5 * MIB + 4096, &vec![0xcd; 4096]);
    let again = rig.send("send2.log").arg("--max-cycles").arg("1");
    let res = again.run(Duration::from_secs(90));
    assert!(res.status.success(), "restart: {}\n{}", res.status, res.log);
    let pts2 = rig.points();
    assert_eq!(pts2.len(), pts.len() + 1, "one more point: {pts2:?}");
    let next = rig.failover(*pts2.last().unwrap());
    compare(&q.join("os.raw"), "raw", &next.join("os.vhd")).unwrap();
    compare(&q.join("data.qcow2"), "qcow2", &next.join("data.vhd")).unwrap();
    let (objs, bitmaps) = rig.qsd.vdrep_objects();
    assert!(objs.is_empty(), "left in qemu after --max-cycles: {objs:?}");
    assert_eq!(bitmaps.len(), 2, "{bitmaps:?}");

    // Unprotect removes everything, the bitmaps too.
    let state = rig.dir.join("state");
    let qmp = rig.qsd.qmp_socket();
    let out = vdrep_tests::vdrep(&[
        "unprotect",
        "--store",
        rig.store.to_str().unwrap(),
        "--vm",
        "vm1",
        "--qmp",
        qmp.to_str().unwrap(),
        "--drive",
        "os",
        "--drive",
        "data",
        "--state",
        state.to_str().unwrap(),
        "--yes",
    ]);
    assert!(
        out.status.success(),
        "unprotect: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (objs, bitmaps) = rig.qsd.vdrep_objects();
    assert!(
        objs.is_empty() && bitmaps.is_empty(),
        "left: {objs:?} {bitmaps:?}"
    );
    assert!(!state.join("qemu/vm1").exists());
    rig.qsd.stop();
}

#[test]
fn qemu_storage_daemon_has_no_guest_devices_so_send_without_drive_is_refused_naming_it() {
    let rig = Rig::new(MIB);
    let mut snd = rig.send("send.log");
    // Without the --drive pairs.
    let mut extra = Vec::new();
    let mut it = snd.extra.iter();
    while let Some(a) = it.next() {
        if a == "--drive" {
            it.next();
        } else {
            extra.push(a.clone());
        }
    }
    snd.extra = extra;
    let res = snd.run(Duration::from_secs(30));
    assert_eq!(res.code(), Some(1), "{}", res.log);
    assert!(res.log.contains("--drive NODE"), "{}", res.log);
    let (objs, bitmaps) = rig.qsd.vdrep_objects();
    assert!(
        objs.is_empty() && bitmaps.is_empty(),
        "{objs:?} {bitmaps:?}"
    );
}
