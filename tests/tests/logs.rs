//! Log lines as a journal or a log shipper gets them: no ANSI escape codes when stderr is not
//! a terminal (colours only on one), and `--log-format json` writes one JSON object per line.

use std::path::Path;
use std::process::Command;

use vdrep_tests::{vdrep, vdrep_ok};

/// A receiver that logs its store, then refuses its key (mode 0644) and exits 1: a role's
/// start-up log in a fraction of a second.
fn receiver_args(d: &Path) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let tls = d.join("tls");
    vdrep_ok(&["certs", "init", tls.to_str().unwrap(), "--sender", "hv01"]);
    std::fs::set_permissions(
        tls.join("receiver.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    [
        "receive",
        "--listen",
        "127.0.0.1:0",
        "--store",
        d.join("store").to_str().unwrap(),
        "--tls",
        tls.to_str().unwrap(),
        "--allow",
        "hv01=vm1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[test]
fn logs_to_a_pipe_carry_no_ansi_codes() {
    let t = tempfile::tempdir().unwrap();
    let args = receiver_args(t.path());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = vdrep(&args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(" INFO "), "{err}");
    assert!(!err.contains('\u{1b}'), "ANSI codes in a pipe: {err:?}");

    // On a terminal (a pty from `script`), colours stay.
    if Path::new("/usr/bin/script").exists() {
        let cmd = format!(
            "{} {} 2>&1",
            vdrep_tests::vdrep_bin().display(),
            args.join(" ")
        );
        let out = Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains('\u{1b}'),
            "no colours on a terminal: {text:?}"
        );
    }
}

#[test]
fn log_format_json_writes_one_object_per_line() {
    let t = tempfile::tempdir().unwrap();
    let mut args = receiver_args(t.path());
    args.insert(0, "json".into());
    args.insert(0, "--log-format".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = vdrep(&args);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let logs: Vec<serde_json::Value> = err
        .lines()
        .filter(|l| !l.starts_with("vdrep: error:"))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    let store = logs
        .iter()
        .find(|v| v["fields"]["message"] == "replica store")
        .unwrap_or_else(|| panic!("no start-up line in {err}"));
    assert_eq!(store["level"], "INFO");
    assert!(store["timestamp"].is_string() && store["target"].is_string());
    assert!(store["fields"]["store"].as_str().unwrap().contains("store"));
    // The option may also come after the command, or from the environment.
    let mut after = receiver_args(&t.path().join("again"));
    after.extend(["--log-format".into(), "json".into()]);
    let after: Vec<&str> = after.iter().map(String::as_str).collect();
    let err = String::from_utf8_lossy(&vdrep(&after).stderr).into_owned();
    assert!(err.lines().next().unwrap().starts_with('{'), "{err}");
}

/// A one-shot send ends with its summary once, and logs durations as plain numbers.
#[test]
fn a_send_prints_its_summary_once_and_seconds_for_people() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let tls = vdrep_tests::procs::certs(&d.join("tls"), &["hv01"]);
    let rx = vdrep_tests::roles::Role::receiver(d, &tls, "hv01=vm1", false);
    let disk = vdrep_tests::images::seeded_raw(&d.join("os.raw"), 4 << 20, 3, 1 << 20, 3);
    let out = vdrep_tests::vdrep_command()
        .args(rx.send_args(&tls, "hv01"))
        .args([
            "--vm",
            "vm1",
            disk.to_str().unwrap(),
            "--state",
            d.join("state").to_str().unwrap(),
        ])
        .output()
        .expect("cannot start vdrep");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(err.matches("replicated 4.0 MiB").count(), 1, "{err}");
    let b = err.as_bytes();
    let scientific = b
        .windows(4)
        .any(|w| w[0].is_ascii_digit() && w[1] == b'e' && w[2] == b'-' && w[3].is_ascii_digit());
    assert!(!scientific, "a number in scientific notation: {err}");
    // No progress lines from a run shorter than a minute.
    assert!(!err.contains(" progress "), "{err}");
}
