//! The ops kit checked against the tools and the code: Prometheus config and rules pass
//! promtool (with the rules' unit tests), the dashboard and the rules name only metrics the
//! code emits, the systemd units carry their hardening, and the example configs use only
//! options the roles accept.

use std::path::{Path, PathBuf};
use std::process::Command;

use vdrep_tests::{require_tool, run, vdrep_ok};

fn ops() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops")
}

fn promtool(args: &[&str]) -> String {
    require_tool("promtool", "apt-get install prometheus");
    let out = run(Command::new("promtool")
        .args(args)
        .current_dir(ops().join("prometheus")));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every `vdrep_*` name in `text`.
fn metric_names(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("vdrep_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

#[test]
fn prometheus_config_and_alert_rules_pass_promtool_and_their_unit_tests() {
    assert!(promtool(&["check", "config", "prometheus.yml"]).contains("SUCCESS"));
    assert!(promtool(&["check", "rules", "rules.yml"]).contains("SUCCESS: 9 rules"));
    assert!(promtool(&["test", "rules", "rules_test.yml"]).contains("SUCCESS"));
}

#[test]
fn alert_rules_and_dashboard_name_only_metrics_the_code_emits() {
    let rules = std::fs::read_to_string(ops().join("prometheus/rules.yml")).unwrap();
    let dash_text = std::fs::read_to_string(ops().join("grafana/vdrep.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&dash_text).expect("dashboard is JSON");
    let mut exprs = String::new();
    for p in dash["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().expect("targets") {
            exprs.push_str(t["expr"].as_str().expect("expr"));
            exprs.push('\n');
        }
    }
    exprs.push_str(dash["templating"]["list"][1]["query"].as_str().unwrap());
    let (rule_names, dash_names) = (metric_names(&rules), metric_names(&exprs));
    assert!(dash_names.len() >= 15 && rule_names.len() >= 8);
    for n in rule_names.iter().chain(&dash_names) {
        assert!(
            vdrep::metrics::lookup(n).is_some(),
            "{n} is not a metric vdrep emits (dataplane/src/metrics/spec.rs)"
        );
    }
    // Alerts for a role that is down or missing, and the expiry compared with time().
    for needed in [
        "up{job=~\"vdrep-.*\"} == 0",
        "absent(up{job=\"vdrep-receiver\"})",
        "(vdrep_certificate_expiry_timestamp_seconds) - time()",
    ] {
        assert!(rules.contains(needed), "rules.yml lacks {needed}");
    }
    // Rates are shown in Mbit/s, the unit limits are set in.
    for p in dash["panels"].as_array().unwrap() {
        if p["targets"][0]["expr"].as_str().unwrap().contains("bytes")
            && p["title"].as_str().unwrap().contains("Throttle")
        {
            assert_eq!(
                p["fieldConfig"]["defaults"]["unit"], "Mbits",
                "{}",
                p["title"]
            );
        }
    }
    // The dashboard shows what the issue asks for.
    for needed in [
        "vdrep_rpo_seconds",
        "vdrep_wire_bytes_total",
        "vdrep_health",
        "vdrep_throttle_limit_bytes_per_second",
        "vdrep_throttle_rate_bytes_per_second",
    ] {
        assert!(
            dash_names.iter().any(|n| n == needed),
            "dashboard lacks {needed}"
        );
    }
}

#[test]
fn systemd_units_run_each_role_hardened() {
    for (role, cmd) in [
        ("sender", "send"),
        ("receiver", "receive"),
        ("sidecar", "sidecar"),
    ] {
        let text =
            std::fs::read_to_string(ops().join(format!("systemd/vdrep-{role}.service"))).unwrap();
        assert!(
            text.contains(&format!(
                "ExecStart=/usr/bin/vdrep {cmd} --config /etc/vdrep/"
            )),
            "{role}"
        );
        // What each role writes is made for it (the sender's state folder included).
        for key in ["StateDirectory=vdrep", "ConfigurationDirectory=vdrep"] {
            assert!(text.contains(key), "vdrep-{role}.service lacks {key:?}");
        }
        for key in [
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "PrivateTmp=yes",
            "CapabilityBoundingSet=\n",
            "ProtectHome=yes",
            "ReadWritePaths=",
            "SystemCallFilter=@system-service",
            "KillSignal=SIGTERM",
        ] {
            assert!(text.contains(key), "vdrep-{role}.service lacks {key:?}");
        }
    }
    let sender = std::fs::read_to_string(ops().join("systemd/vdrep-sender.service")).unwrap();
    for key in [
        "StateDirectory=vdrep vdrep/sender\n",
        "--state /var/lib/vdrep/sender ",
        "RuntimeDirectory=vdrep\n",
        // The sender re-reads its bandwidth policy on SIGHUP.
        "ExecReload=/bin/kill -HUP $MAINPID\n",
    ] {
        assert!(sender.contains(key), "vdrep-sender.service lacks {key:?}");
    }
}

#[test]
fn example_configs_use_only_options_their_role_accepts() {
    for (role, cmd) in [
        ("sender", "send"),
        ("receiver", "receive"),
        ("sidecar", "sidecar"),
    ] {
        let text = std::fs::read_to_string(ops().join(format!("examples/{role}.toml"))).unwrap();
        let table: toml::Table =
            toml::from_str(&text).unwrap_or_else(|e| panic!("{role}.toml: {e}"));
        let help = String::from_utf8(vdrep_ok(&[cmd, "--help"]).stdout).unwrap();
        for key in table.keys().filter(|k| *k != "vm") {
            let flag = format!("--{}", key.replace('_', "-"));
            assert!(
                help.contains(&flag),
                "{role}.toml: {key} is not an option of `vdrep {cmd}`"
            );
        }
    }
}

#[test]
fn the_served_openapi_description_is_the_one_in_the_repo() {
    let file = std::fs::read_to_string(ops().join("openapi.json")).unwrap();
    assert_eq!(vdrep::sidecar::OPENAPI, file);
    let doc: serde_json::Value = serde_json::from_str(&file).unwrap();
    for p in [
        "/v1/vms",
        "/v1/vms/{vm}",
        "/v1/jobs",
        "/v1/jobs/{id}",
        "/v1/vms/{vm}/resync",
        "/v1/vms/{vm}/test-failover",
        "/v1/bandwidth",
        "/openapi.json",
    ] {
        assert!(doc["paths"][p].is_object(), "{p} undocumented");
    }
}
