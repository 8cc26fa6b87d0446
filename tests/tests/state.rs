//! The sender's state folder: tests never use the invoking user's, and a pushed bandwidth
//! schedule left in it is read only by a sender that a sidecar manages (`--control`). Each
//! case makes the sender stop at once on a private key other users can read (after it has
//! set up its state and bandwidth, before it connects anywhere).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use vdrep_tests::{isolated_state_home, vdrep, vdrep_ok};

/// A certificate folder whose sender key the sender refuses, and a 1 MiB disk.
fn setup(d: &Path) -> (PathBuf, PathBuf) {
    let tls = d.join("tls");
    vdrep_ok(&["certs", "init", tls.to_str().unwrap(), "--sender", "hv01"]);
    std::fs::set_permissions(tls.join("hv01.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let disk = d.join("os.raw");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    (tls, disk)
}

fn send(tls: &Path, disk: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        "send",
        "--to",
        "127.0.0.1:9",
        "--tls",
        tls.to_str().unwrap(),
        "--identity",
        "hv01",
        "--vm",
        "vm1",
        disk.to_str().unwrap(),
        "--no-progress",
    ];
    args.extend_from_slice(extra);
    let out = vdrep(&args);
    assert_eq!(out.status.code(), Some(1));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_send_without_state_keeps_its_state_in_the_tests_own_folder() {
    let t = tempfile::tempdir().unwrap();
    let (tls, disk) = setup(t.path());
    send(&tls, &disk, &[]);
    // The failed job waits in the default state folder: this test process's, not ~.
    let pending = isolated_state_home().join("vdrep/pending/vm1/jobs.json");
    assert!(pending.is_file(), "{} missing", pending.display());
}

/// `bandwidth.json` holding 8 Mbit/s at all times, as the sidecar would push it.
fn pushed_schedule(state: &Path) {
    std::fs::create_dir_all(state).unwrap();
    std::fs::write(
        state.join("bandwidth.json"),
        r#"{"no_throttle":false,"work_days":["mon","tue","wed","thu","fri","sat","sun"],
            "work_hour_start":0,"work_hour_end":24,"work_hour_bytes_per_second":1000000,
            "non_work_hour_bytes_per_second":1000000,"utc_offset_minutes":0}"#,
    )
    .unwrap();
}

/// The sender's line that says which bandwidth policy wins (its target is the sender's
/// start-up module, `vdrep::sender::start`).
fn bandwidth_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("vdrep::sender") && l.contains(": bandwidth: "))
        .collect()
}

#[test]
fn without_control_the_flags_win_and_a_pushed_schedule_file_is_not_read() {
    let t = tempfile::tempdir().unwrap();
    let (tls, disk) = setup(t.path());
    let state = t.path().join("state");
    pushed_schedule(&state);
    let log = send(
        &tls,
        &disk,
        &["--state", state.to_str().unwrap(), "--bandwidth", "100Mbit"],
    );
    let lines = bandwidth_lines(&log);
    assert_eq!(lines.len(), 1, "said once: {log}");
    let file = state.join("bandwidth.json");
    assert!(
        lines[0].contains("not read without --control")
            && lines[0].contains("source=\"flags\"")
            && lines[0].contains("policy=100000kbit/s")
            && lines[0].contains(&format!("file={}", file.display())),
        "{}",
        lines[0]
    );
}

#[test]
fn with_control_the_pushed_schedule_wins_over_the_flags() {
    let t = tempfile::tempdir().unwrap();
    let (tls, disk) = setup(t.path());
    let state = t.path().join("state");
    pushed_schedule(&state);
    let sock = t.path().join("sender.sock");
    let log = send(
        &tls,
        &disk,
        &[
            "--state",
            state.to_str().unwrap(),
            "--bandwidth",
            "100Mbit",
            "--control",
            sock.to_str().unwrap(),
        ],
    );
    let lines = bandwidth_lines(&log);
    assert_eq!(lines.len(), 1, "said once: {log}");
    assert!(
        lines[0].contains("the schedule the sidecar pushed wins")
            && lines[0].contains("source=\"pushed schedule\""),
        "{}",
        lines[0]
    );
    assert!(!lines[0].contains("100000kbit/s"), "{}", lines[0]);
}
