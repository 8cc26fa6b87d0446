//! Consistency groups (issue 17 item 5): VMs of one group switch their change logs together,
//! so every group switch is one instant of all their disks.
//!
//! The method: two VMs, each with a raw and a fixed VHD disk, in group `erp`; a writer logs
//! numbered 4 KiB writes in strict order across the group's four disks, each complete
//! before the next starts (`vdrep log-write`). Write `k` goes to disk `(k-1) % 4` at slot
//! `(k-1) / 4` and carries its number. The sender's record of each group switch
//! (`STATE/groups/erp.json`) names each member's VM cycle; failing both VMs over at those
//! cycles must give exactly the writes 1..m for some m across all four disks.
//!
//! Deterministic with the test hook (`VDREP_TEST_SWITCH_PAUSE`: every switch pauses between
//! disks) and with `vm2` enabled over the control channel a moment after `vm1`: VMs that
//! switch alone then switch at different instants, and the writes between the two switches
//! land in one VM's next point and the other's current one, which this test refuses (remove
//! `group` from the request to see it fail); the group switch holds all four disks' locks
//! through the pauses, so it passes.

mod group_rig;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use group_rig::{s, Rig, PAUSED, SIZE};
use serde_json::json;
use vdrep_tests::procs::{read_log, wait_for_log, Send};
use vdrep_tests::vdrep;

#[test]
fn every_group_point_holds_a_prefix_of_the_writes_across_both_vms_disks() {
    let rig = Rig::new(&["hv01=vm1,vm2"]);
    let send = rig
        .send_vm1("send.log")
        .env("VDREP_TEST_SWITCH_PAUSE", "300");
    let mut child = send.spawn();
    rig.wait_initial("vm1", &send.log);
    // vm2 a moment after vm1's first group switch committed: switching alone, its switches
    // would come at other instants than vm1's; and that point of the group lacks vm2.
    let end = Instant::now() + Duration::from_secs(60);
    while rig.vm_group_points("vm1").is_empty() {
        assert!(
            Instant::now() < end,
            "vm1 made no group point: {}",
            read_log(&send.log)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(700));
    let a = rig.protect_vm2(Some("erp"), 2);
    assert_eq!(a["ok"], true, "{a}");
    rig.wait_initial("vm2", &send.log);
    let w = rig.writer();
    let stop = AtomicBool::new(false);
    let before = rig.group_points().len();
    std::thread::scope(|sc| {
        let h = sc.spawn(|| w.run(&stop));
        // Writes through three group switches, then two more with the writer stopped: the
        // last point must hold every write.
        rig.wait_group_points(before + 3, &send.log);
        stop.store(true, Ordering::SeqCst);
        h.join().unwrap();
    });
    rig.wait_points_after_writes(&send.log);
    let _ = child.kill();
    let _ = child.wait();
    let log = read_log(&send.log);
    assert!(
        log.contains(PAUSED),
        "the test hook did not pause the switches:\n{log}"
    );
    assert!(log.contains("consistency group claimed"), "{log}");
    let (ms, last) = rig.check_group_prefixes();
    assert!(ms.len() >= 4, "group points: {ms:?}");
    assert_eq!(
        ms.last().unwrap().1,
        w.written(),
        "the last point holds every write: {ms:?}"
    );
    assert!(
        ms.iter().any(|&(_, m)| m > 0 && m < w.written()),
        "no point cut the writes: the test shows nothing ({ms:?})"
    );
    for (i, b) in last.iter().enumerate() {
        let src = std::fs::read(&rig.disks[i]).unwrap();
        assert!(
            b[..] == src[..SIZE as usize],
            "disk {i} of the last point differs from its source"
        );
    }
    // `latest`: the newest group cycle both members hold.
    let (res, disks) = rig.group_failover("latest");
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    assert!(disks == last, "latest is the newest group point");
    // Each member's part is a test-failover job beside its replicas.
    for vm in ["vm1", "vm2"] {
        let out = vdrep(&["jobs", "--store", s(&rig.store), "--vm", vm, "--json"]);
        let jobs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        assert!(
            jobs.iter()
                .any(|j| j["kind"] == "test-failover" && j["state"] == "succeeded"),
            "{vm}: no test-failover job: {jobs:#?}"
        );
    }
    // vm1 switched in the group before vm2 joined: those group points lack vm2.
    let (a, b) = (rig.vm_group_points("vm1"), rig.vm_group_points("vm2"));
    let lone = a.keys().find(|gc| !b.contains_key(gc)).copied();
    let lone = lone.expect("vm1 switched alone in its group before vm2 was enabled");
    let (res, _) = rig.group_failover(&lone.to_string());
    let err = String::from_utf8_lossy(&res.stderr);
    assert_eq!(res.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "group point {lone} of consistency group erp is missing for VMs vm2"
        )),
        "{err}"
    );
    // Writes arrived inside group switches and waited for all four disks (3 × 300 ms).
    assert!(
        w.longest_ms() >= 300,
        "no write waited for a switch (longest {} ms)",
        w.longest_ms()
    );
    // The sender's record of the group's switches is lost: a restarted sender (vm2 comes
    // back from the state folder, in its group) numbers the group's switches above the
    // newest group cycle the store holds, which the receiver tells it.
    let newest = rig.group_points().last().unwrap().0;
    let before = rig.group_cycles_in_order("vm1").len();
    std::fs::remove_file(rig.state.join("groups").join("erp.json")).unwrap();
    let send2 = rig.send_vm1("send2.log");
    let mut child = send2.spawn();
    let end = Instant::now() + Duration::from_secs(60);
    while rig.group_cycles_in_order("vm1").len() < before + 2 {
        assert!(
            Instant::now() < end,
            "no group point after the restart: {}",
            read_log(&send2.log)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = child.kill();
    let _ = child.wait();
    for vm in ["vm1", "vm2"] {
        let gcs = rig.group_cycles_in_order(vm);
        assert!(
            gcs.windows(2).all(|w| w[0] < w[1]),
            "{vm}: group cycles must grow from point to point: {gcs:?}"
        );
    }
    let after = rig.group_cycles_in_order("vm1")[before];
    assert_eq!(after, newest + 1, "the first group point after the restart");
}

/// The switch intents beside the group's disks that exist now.
fn intents(rig: &Rig) -> usize {
    rig.disks
        .iter()
        .filter(|d| PathBuf::from(format!("{}.hrl.switch", s(d))).exists())
        .count()
}

#[test]
fn a_sender_killed_inside_a_group_switch_loses_nothing_and_the_final_failover_is_exact() {
    let rig = Rig::new(&["hv01=vm1,vm2"]);
    // Long pauses: the kill lands inside the first group switch, between two disks.
    let send = rig
        .send_both("send.log")
        .env("VDREP_TEST_SWITCH_PAUSE", "20000");
    let mut child = send.spawn();
    rig.wait_initial("vm1", &send.log);
    rig.wait_initial("vm2", &send.log);
    let w = rig.writer();
    let stop = AtomicBool::new(false);
    std::thread::scope(|sc| {
        let h = sc.spawn(|| w.run(&stop));
        assert!(
            wait_for_log(&send.log, PAUSED, Duration::from_secs(60)),
            "the switch never paused: {}",
            read_log(&send.log)
        );
        assert_eq!(
            intents(&rig),
            4,
            "one intent beside each of the group's disks"
        );
        let _ = child.kill();
        let _ = child.wait();
        let at = w.written();
        // The writer goes on: its next write completes the switch for all four disks.
        let end = Instant::now() + Duration::from_secs(60);
        while w.written() < at + 8 {
            assert!(Instant::now() < end, "the writer is stuck after the kill");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(intents(&rig), 0, "the switch was completed");
        // A new sender (no hook) ships the completed switch and goes on while writes do.
        let send2 = rig.send_both("send2.log");
        child = send2.spawn();
        let before = rig.group_points().len();
        rig.wait_group_points(before + 2, &send2.log);
        stop.store(true, Ordering::SeqCst);
        h.join().unwrap();
    });
    // Two more group switches after the writer stopped: the last holds everything.
    rig.wait_points_after_writes(&rig.dir.join("send2.log"));
    let _ = child.kill();
    let _ = child.wait();
    let (ms, last) = rig.check_group_prefixes();
    assert_eq!(
        ms.first().map(|p| p.0),
        Some(1),
        "the interrupted switch is group point 1: {ms:?}"
    );
    assert_eq!(
        ms.last().unwrap().1,
        w.written(),
        "the last point holds every write: {ms:?}"
    );
    for (i, b) in last.iter().enumerate() {
        let src = std::fs::read(&rig.disks[i]).unwrap();
        assert!(
            b[..] == src[..SIZE as usize],
            "disk {i} of the final failover differs from its source"
        );
    }
}

#[test]
fn a_group_split_across_two_senders_is_refused_at_the_second_ones_start() {
    let rig = Rig::new(&["hv01=vm1", "hv02=vm2"]);
    let send = rig.send_vm1("send1.log");
    let mut child = send.spawn();
    assert!(
        wait_for_log(
            &send.log,
            "consistency group claimed",
            Duration::from_secs(60)
        ),
        "{}",
        read_log(&send.log)
    );
    let second = Send::new(
        &rig.rx.to(),
        &rig.tls,
        "hv02",
        "vm2",
        &rig.vm_disks(1),
        &rig.dir.join("send2.log"),
    )
    .arg("--group")
    .arg("erp")
    .arg("--interval")
    .arg("2s")
    .arg("--state")
    .arg(s(&rig.dir.join("state2")))
    .run(Duration::from_secs(60));
    assert_eq!(second.code(), Some(1), "{}", second.log);
    assert!(
        second
            .log
            .contains("consistency group erp is protected by sender hv01 (VMs vm1)"),
        "the refusal names the group's sender:\n{}",
        second.log
    );
    assert!(
        rig.points("vm2").is_empty(),
        "nothing of vm2 was replicated"
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "the first sender goes on"
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_member_with_another_interval_and_a_17th_vm_are_refused() {
    let rig = Rig::new(&["hv01=vm1,vm2"]);
    let send = rig.send_vm1("send.log");
    let mut child = send.spawn();
    let a = rig.protect_vm2(Some("erp"), 5);
    assert_eq!(a["ok"], false, "{a}");
    let e = a["error"].as_str().unwrap();
    assert!(e.contains("interval 5s differs from the group's 2s"), "{e}");
    // Not in the group, it may have its own interval.
    let a = rig.protect_vm2(None, 5);
    assert_eq!(a["ok"], true, "{a}");
    // A policy change of a member (the sidecar's, which may not name the group) keeps the
    // group's interval.
    let [d1, d2] = rig.vm_disks(0);
    let a = rig.control(
        json!({"op": "protect", "vm": "vm1", "disks": [s(d1), s(d2)],
                               "interval_seconds": 5}),
    );
    assert_eq!(a["ok"], false, "{a}");
    let e = a["error"].as_str().unwrap();
    assert!(e.contains("its interval stays the group's 2 s"), "{e}");
    let a = rig.control(
        json!({"op": "protect", "vm": "vm1", "disks": [s(d1), s(d2)],
                               "interval_seconds": 2, "rpo_threshold_seconds": 60}),
    );
    assert_eq!(a["ok"], true, "the group's interval is accepted: {a}");
    let _ = child.kill();
    let _ = child.wait();

    let mut cfg = String::new();
    for i in 0..17 {
        cfg.push_str(&format!(
            "[[vm]]\nname = \"vm{i}\"\ndisks = [\"/nonexistent/vm{i}.raw\"]\ngroup = \"big\"\n"
        ));
    }
    let path = rig.dir.join("big.toml");
    std::fs::write(&path, cfg).unwrap();
    let out = vdrep(&[
        "send",
        "--to",
        &rig.rx.to(),
        "--tls",
        s(&rig.tls),
        "--identity",
        "hv01",
        "--config",
        s(&path),
        "--interval",
        "30s",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("consistency group big names 17 VMs"), "{err}");
    assert!(err.contains("at most 16"), "{err}");
}
