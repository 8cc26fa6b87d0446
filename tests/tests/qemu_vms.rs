//! One sender, two qemu VMs (issue 18 item 3): a VM whose qemu goes away for good is
//! retried alone (Warning) and, after `--give-up-after`, given up alone — Critical in
//! health and in the sender's status with the reason — while the other VM keeps committing
//! recovery points on the same connection. The sender ends with exit 75 only once the
//! second VM's qemu is gone too and it was given up as well.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use vdrep_tests::procs::{read_log, wait_for_log};
use vdrep_tests::qemu_rig::{wait_until, Rig, SWITCHED};

const SIZE: u64 = 4 << 20;

/// VM points committed for `vm` so far (the sender's log lines).
fn vm_points(log: &str, vm: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("VM recovery point committed") && l.contains(&format!("vm={vm}")))
        .count()
}

/// The sender's local status (`--control` socket): per disk (vm, health, reason).
fn status(sock: &Path) -> Vec<(String, String, String)> {
    let Ok(mut s) = UnixStream::connect(sock) else {
        return Vec::new();
    };
    s.write_all(b"{\"op\":\"status\"}\n").unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
    v["status"]["disks"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            let f = |k: &str| d[k].as_str().unwrap_or("").to_string();
            (f("vm"), f("health"), f("reason"))
        })
        .collect()
}

#[test]
fn a_vm_whose_qemu_is_gone_is_given_up_alone_and_the_sender_ends_75_when_none_is_left() {
    let mut rig = Rig::new(SIZE);
    let mut vm2 = rig.other_vm("vm2", SIZE);
    let control = rig.dir.join("control.sock");
    let send = rig
        .send_vms(
            "send.log",
            &[("vm1", &rig.qsd), ("vm2", &vm2)],
            "300ms",
            "10s",
        )
        .arg("--control")
        .arg(control.to_str().unwrap());
    let mut child = send.spawn();
    let log = || read_log(&send.log);
    wait_until(
        "VM points of both VMs",
        &send.log,
        Duration::from_secs(90),
        || {
            let l = log();
            vm_points(&l, "vm1") >= 2 && vm_points(&l, "vm2") >= 2
        },
    );

    // vm2's qemu goes away for good: vm2 retries alone, a Warning, vm1 goes on.
    vm2.crash();
    let lost = Instant::now();
    wait_until("vm2 retrying", &send.log, Duration::from_secs(30), || {
        rig.vm_health("vm2")
            .is_some_and(|(s, e)| s == "Warning" && e.contains("QMP"))
    });
    assert!(
        log().contains("retrying this VM alone"),
        "vm2 was not retried alone: {}",
        log()
    );
    let at_warning = vm_points(&log(), "vm1");
    wait_until("vm2 given up", &send.log, Duration::from_secs(60), || {
        rig.vm_health("vm2").is_some_and(|(s, _)| s == "Critical")
    });
    let given_up = lost.elapsed();
    assert!(
        given_up >= Duration::from_secs(9),
        "vm2 given up {given_up:?} after its qemu went, before --give-up-after 10s"
    );
    assert!(child.try_wait().unwrap().is_none(), "the sender ended");
    // vm1 went on meanwhile, and goes on after.
    let at_give_up = vm_points(&log(), "vm1");
    assert!(
        at_give_up >= at_warning + 3,
        "vm1 made {at_warning} → {at_give_up} points while vm2 was retried"
    );
    wait_until("vm1 going on", &send.log, Duration::from_secs(30), || {
        vm_points(&log(), "vm1") >= at_give_up + 3
    });
    assert_eq!(rig.vm_health("vm1").map(|h| h.0).as_deref(), Some("Normal"));
    let (_, why) = rig.vm_health("vm2").unwrap();
    assert!(why.contains("QMP"), "vm2's reason: {why}");
    // The sender's status says so too, per disk, with the reason.
    let st = status(&control);
    let vm2_disks: Vec<_> = st.iter().filter(|d| d.0 == "vm2").collect();
    assert_eq!(vm2_disks.len(), 2, "{st:?}");
    for (_, health, reason) in &vm2_disks {
        assert_eq!(health, "critical", "{st:?}");
        assert!(reason.contains("--give-up-after"), "{st:?}");
    }
    assert!(
        st.iter().filter(|d| d.0 == "vm1").all(|d| d.1 == "normal"),
        "{st:?}"
    );
    let n = log().matches(SWITCHED).count();
    std::thread::sleep(Duration::from_secs(1));
    assert!(log().matches(SWITCHED).count() > n, "no more rounds");

    // vm1's qemu goes too: nothing is left, the sender ends with 75 once vm1 is given up.
    rig.qsd.crash();
    let t1 = Instant::now();
    let code = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st.code();
        }
        assert!(
            t1.elapsed() < Duration::from_secs(90),
            "the sender did not end: {}",
            log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        t1.elapsed() >= Duration::from_secs(9),
        "ended {:?} after the last qemu went: {}",
        t1.elapsed(),
        log()
    );
    assert_eq!(code, Some(75), "{}", log());
    assert!(wait_for_log(
        &send.log,
        "giving up on this VM after --give-up-after",
        Duration::from_secs(1)
    ));
    let h = rig.vm_health("vm1").unwrap();
    assert_eq!(h.0, "Critical", "{h:?}");
}
