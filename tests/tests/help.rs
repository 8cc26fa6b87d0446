//! `--help` that teaches: required options marked as such, options under headings with their
//! defaults, an example per command, and every missing required option in one usage error.

use vdrep_tests::{vdrep, vdrep_ok};

fn help(args: &[&str]) -> String {
    String::from_utf8(vdrep_ok(args).stdout).unwrap()
}

#[test]
fn send_help_marks_required_options_groups_them_and_shows_defaults() {
    let h = help(&["send", "--help"]);
    for heading in [
        "Connection:",
        "VM:",
        "Transfer:",
        "Bandwidth:",
        "Schedule:",
        "Retry:",
        "Output:",
    ] {
        assert!(
            h.contains(&format!("\n{heading}\n")),
            "no {heading} in:\n{h}"
        );
    }
    for (flag, says) in [
        ("--to <HOST:PORT>", "(required unless in --config)"),
        ("--tls <DIR>", "(required unless in --config)"),
        ("--identity <NAME>", "(required unless in --config)"),
        ("--vm <VM>", "unless --control"),
        ("--threads <N>", "[default: 4]"),
        ("--retention <DURATION>", "[default: 24h]"),
    ] {
        let at = h
            .find(flag)
            .unwrap_or_else(|| panic!("{flag} missing:\n{h}"));
        let entry = &h[at..at + h[at..].find("\n\n").unwrap_or(h.len() - at)];
        assert!(entry.contains(says), "{flag}: {entry}");
    }
    assert!(h.contains("Examples:\n  vdrep send --to receiver.example:4433"));
    let top = help(&["--help"]);
    assert!(!top.contains("(initial replication)"), "{top}");
}

#[test]
fn every_command_shows_an_example() {
    for cmd in [
        &["inspect"][..],
        &["convert"],
        &["cat"],
        &["demo"],
        &["send"],
        &["log-write"],
        &["receive"],
        &["certs", "init"],
        &["certs", "add-sender"],
        &["points"],
        &["failover"],
        &["jobs"],
        &["unprotect"],
        &["sidecar"],
        &["status"],
        &["resync"],
        &["completions"],
    ] {
        let mut args = cmd.to_vec();
        args.push("--help");
        let h = help(&args);
        assert!(
            h.contains("\nExample:\n  vdrep ") || h.contains("\nExamples:\n  vdrep "),
            "vdrep {cmd:?} --help has no example:\n{h}"
        );
    }
    // Read-only commands do not promise to create the store.
    for cmd in ["points", "failover", "jobs"] {
        let h = help(&[cmd, "--help"]);
        assert!(
            !h.contains("Local page-blob store folder (created if missing)"),
            "{cmd}"
        );
    }
}

#[test]
fn a_send_missing_everything_names_every_missing_option_in_one_usage_error() {
    let out = vdrep(&["send"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    for flag in [
        "--to HOST:PORT",
        "--tls DIR",
        "--identity NAME",
        "--vm VM DISK...",
    ] {
        assert!(err.contains(flag), "{flag} not named: {err}");
    }
    // A config that gives the connection leaves only the VM missing.
    let t = tempfile::tempdir().unwrap();
    let cfg = t.path().join("sender.toml");
    std::fs::write(&cfg, "to = \"r:4433\"\ntls = \"tls\"\nidentity = \"h\"\n").unwrap();
    let out = vdrep(&["send", "--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--vm VM DISK...") && !err.contains("--to"),
        "{err}"
    );
}
