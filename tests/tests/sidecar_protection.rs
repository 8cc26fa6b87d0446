//! Enabling protection through the sidecar's API (issue 8) is a job that follows the VM
//! from the prerequisite checks through the initial replication to the first delta cycle:
//! asked before the sender runs, it waits for it; while the (throttled) initial copy runs
//! it reports bytes done; it is finalized once a delta cycle committed.

use std::time::Duration;

use serde_json::json;
use vdrep_tests::images::seeded_raw;
use vdrep_tests::procs::certs;
use vdrep_tests::roles::{eventually, Role};
use vdrep_tests::sidecar::{s, Stack, TOKEN};

#[test]
fn enabling_protection_is_a_job_through_checks_initial_replication_and_first_cycle() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tls = certs(&d.join("tls"), &["hv01"]);
    // 24 MiB with 16 MiB of incompressible data at 2 MB/s: the copy takes seconds.
    let disk = seeded_raw(&d.join("os.raw"), 24 << 20, 7, 1 << 20, 3);
    std::fs::write(d.join("token"), format!("{TOKEN}\n")).unwrap();
    let rx = Role::receiver(d, &tls, "hv01=web", false);
    let sc = Stack::sidecar(d);
    let api = sc.addr("sidecar on ");
    let call = |method: &str, path: &str, body: Option<serde_json::Value>| {
        let b = body.map(|v| v.to_string());
        vdrep_tests::http::request(&api, method, path, Some(TOKEN), b.as_deref()).unwrap()
    };
    let job = |id: &str| vdrep_tests::http::get(&api, &format!("/v1/jobs/{id}")).json();

    // Asked before the sender runs: the job waits at its prerequisite checks.
    let r = call(
        "POST",
        "/v1/vms/web/protection",
        Some(json!({"interval_seconds": 30})),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_string();
    let waiting = eventually(Duration::from_secs(10), || {
        let j = job(&id);
        (j["steps"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("unreachable")))
        .then_some(j)
    });
    assert!(waiting.is_some(), "{:#}", job(&id));
    assert_eq!(
        vdrep_tests::http::get(&api, "/v1/vms/web/policy").json()["interval_seconds"],
        30
    );

    // The sidecar's bandwidth policy is what the sender gets: 2 MB/s all week.
    let limit = json!({"no_throttle": false,
        "work_days": ["mon","tue","wed","thu","fri","sat","sun"],
        "work_hour_start": 0, "work_hour_end": 24,
        "work_hour_bytes_per_second": 2_000_000, "non_work_hour_bytes_per_second": 2_000_000});
    assert_eq!(call("PUT", "/v1/bandwidth", Some(limit)).status, 200);
    let mut tx = Role::start(
        &s(&[
            "send",
            "--to",
            &rx.addr("listening on "),
            "--tls",
            tls.to_str().unwrap(),
            "--identity",
            "hv01",
            "--vm",
            "web",
            disk.to_str().unwrap(),
            "--interval",
            "1s",
            // Until the sidecar applies its policy, the sender's own limit holds.
            "--bandwidth",
            "2MB",
            "--no-progress",
            "--control",
            d.join("run/sender.sock").to_str().unwrap(),
            "--metrics",
            "127.0.0.1:0",
        ]),
        &d.join("sender.log"),
        &["metrics on "],
    );
    // While the initial copy runs, the job reports its progress in bytes.
    let copying = eventually(Duration::from_secs(30), || {
        let j = job(&id);
        (j["steps"][2]["state"] == "running"
            && j["steps"][2]["message"]
                .as_str()
                .is_some_and(|m| m.ends_with(&format!(" of {} bytes", 24u64 << 20))))
        .then_some(j)
    });
    assert!(copying.is_some(), "{:#}\n{}", job(&id), tx.log_text());
    assert_eq!(job(&id)["steps"][0]["state"], "succeeded");

    let done = eventually(Duration::from_secs(60), || {
        let j = job(&id);
        (j["state"] == "succeeded" || j["state"] == "failed").then_some(j)
    })
    .expect("the protection job ends");
    assert_eq!(done["state"], "succeeded", "{done:#}");
    assert!(done["steps"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["state"] == "succeeded"));
    let vm = vdrep_tests::http::get(&api, "/v1/vms/web").json();
    assert_eq!(vm["protected"], true);
    assert!(vm["disks"][0]["last_cycle"].as_u64() >= Some(1), "{vm:#}");
    tx.kill();
}
