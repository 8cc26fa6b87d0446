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
    vdrep_tests::sidecar::write_token(d);
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
    let mut args = Stack::sender_args(d, &tls, &disk, &rx);
    // Until the sidecar applies its policy, the sender's own limit holds.
    args.extend(s(&["--bandwidth", "2MB", "--metrics", "127.0.0.1:0"]));
    let mut tx = Role::start(&args, &d.join("sender.log"), &["metrics on "]);
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
    // The VM's newest recovery point, from the sender's health model (issue 17): the first
    // cycle's switch, one instant of the VM.
    let latest = eventually(Duration::from_secs(30), || {
        let vm = vdrep_tests::http::get(&api, "/v1/vms/web").json();
        let p = vm["latest_point"].clone();
        (p["id"].as_u64() >= Some(1)).then_some(p)
    })
    .unwrap_or_else(|| {
        panic!(
            "no latest_point: {:#}",
            vdrep_tests::http::get(&api, "/v1/vms").json()
        )
    });
    assert_eq!(latest["consistent"], true, "{latest:#}");
    assert!(
        latest["time"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{latest:#}"
    );
    assert!(latest["unix"].as_u64() > Some(1_700_000_000), "{latest:#}");
    tx.kill();
}

#[test]
fn a_vm_the_sender_does_not_list_is_protected_through_the_api_and_stays_protected_after_a_sender_restart(
) {
    use vdrep_tests::cycles::{assert_same, changes, failover_local, Pattern, TrackedDisk};
    use vdrep_tests::images::Kind;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tls = certs(&d.join("tls"), &["hv01"]);
    let web = seeded_raw(&d.join("web.raw"), 4 << 20, 5, 1 << 20, 3);
    const SIZE: u64 = 8 << 20;
    let db_path = seeded_raw(&d.join("db.raw"), SIZE, 9, 1 << 20, 3);
    let db = TrackedDisk::new(&db_path, Kind::Raw, SIZE, &d.join("scratch"));
    vdrep_tests::sidecar::write_token(d);
    let mut rx = Role::receiver(d, &tls, "hv01=web,db", false);
    let mut tx = Stack::sender(d, &tls, &web, &rx);
    let sc = Stack::sidecar(d);
    let api = sc.addr("sidecar on ");
    let call = |method: &str, path: &str, body: Option<serde_json::Value>| {
        let b = body.map(|v| v.to_string());
        vdrep_tests::http::request(&api, method, path, Some(TOKEN), b.as_deref()).unwrap()
    };
    let vm = |name: &str| {
        let r = vdrep_tests::http::get(&api, &format!("/v1/vms/{name}"));
        (r.status == 200).then(|| r.json())
    };
    let protected_at = |name: &str, cycle: u64| {
        eventually(Duration::from_secs(60), || {
            vm(name).filter(|v| {
                v["protected"] == true && v["disks"][0]["last_cycle"].as_u64() >= Some(cycle)
            })
        })
    };
    assert!(protected_at("web", 1).is_some(), "{}", tx.log_text());

    // Refusals say why, before any job exists.
    let r = call(
        "POST",
        "/v1/vms/db/protection",
        Some(json!({"interval_seconds": 1, "disks": ["db.raw"]})),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.json()["error"].as_str().unwrap().contains("absolute"),
        "{}",
        r.body
    );
    let r = call(
        "POST",
        "/v1/vms/web/protection",
        Some(json!({"disks": [db_path.to_str().unwrap()]})),
    );
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(
        r.json()["error"].as_str().unwrap().contains("other disks"),
        "{}",
        r.body
    );

    // A missing disk fails the job at its prerequisite checks, with the sender's reason.
    let r = call(
        "POST",
        "/v1/vms/db/protection",
        Some(json!({"interval_seconds": 1, "disks": [d.join("nope.raw").to_str().unwrap()]})),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_string();
    let failed = eventually(Duration::from_secs(20), || {
        let j = vdrep_tests::http::get(&api, &format!("/v1/jobs/{id}")).json();
        (j["state"] == "failed").then_some(j)
    })
    .expect("the job fails");
    assert!(
        failed["steps"][0]["message"]
            .as_str()
            .unwrap()
            .contains("nope.raw"),
        "{failed:#}"
    );

    // The VM with its disk: enabled without a restart, tracked through to finalize.
    let r = call(
        "POST",
        "/v1/vms/db/protection",
        Some(
            json!({"interval_seconds": 1, "rpo_threshold_seconds": 120, "retention_hours": 2,
                    "initial_replication_unix": 1_000_000_000u64,
                    "disks": [db_path.to_str().unwrap()]}),
        ),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_string();
    let done = eventually(Duration::from_secs(60), || {
        let j = vdrep_tests::http::get(&api, &format!("/v1/jobs/{id}")).json();
        (j["state"] == "succeeded" || j["state"] == "failed").then_some(j)
    })
    .expect("the protection job ends");
    assert_eq!(done["state"], "succeeded", "{done:#}\n{}", tx.log_text());
    let checks = done["steps"][0]["message"].as_str().unwrap();
    assert!(
        checks.contains("receiver reachable and authorised") && checks.contains("target capacity"),
        "{done:#}"
    );
    let kept: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("sender-state/vms.json")).unwrap()).unwrap();
    assert!(kept[0]["disks"][0].as_str().unwrap().ends_with("db.raw"));
    assert_eq!(kept[0]["retention_hours"], 2, "{kept:#}");
    assert_eq!(
        kept[0]["initial_replication_unix"], 1_000_000_000u64,
        "{kept:#}"
    );

    // A policy change reaches the sender: interval and RPO threshold, kept for its restart.
    let r = call(
        "PUT",
        "/v1/vms/db/policy",
        Some(json!({"interval_seconds": 2, "rpo_threshold_seconds": 90})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let kept: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("sender-state/vms.json")).unwrap()).unwrap();
    assert_eq!(kept[0]["interval_seconds"], 2, "{kept:#}");
    assert_eq!(
        kept[0]["retention_hours"], 24,
        "PUT replaces the whole policy: {kept:#}"
    );
    let threshold = eventually(Duration::from_secs(5), || {
        let h: serde_json::Value =
            serde_json::from_slice(&std::fs::read(d.join("sender-state/health.json")).ok()?)
                .ok()?;
        let db = h["vms"]
            .as_array()?
            .iter()
            .find(|v| v["vm"] == "db")?
            .clone();
        (db["rpo_threshold_seconds"] == 90.0).then_some(())
    });
    assert!(threshold.is_some(), "health.json keeps the old threshold");

    // Writes go on; the sender restarts (its command line still names only web) and keeps
    // protecting db from its state folder.
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(3);
    db.write(&changes(
        Pattern::Scattered {
            n: 40,
            max: 64 << 10,
        },
        SIZE,
        &mut rng,
    ));
    tx.kill();
    let mut tx = Stack::sender(d, &tls, &web, &rx);
    // The sidecar's view is at most a tick old.
    std::thread::sleep(Duration::from_secs(2));
    let before = vm("db")
        .and_then(|v| v["disks"][0]["last_cycle"].as_u64())
        .unwrap_or(0);
    db.write(&changes(
        Pattern::HotSpots { spots: 8, times: 3 },
        SIZE,
        &mut rng,
    ));
    let after = protected_at("db", before + 4);
    assert!(
        after.is_some(),
        "db not protected after the restart:\n{}",
        tx.log_text()
    );
    // The replica's newest point equals the source (no writes since the last switch).
    tx.kill();
    rx.kill();
    let out = d.join("db-replica.raw");
    failover_local(&d.join("store"), "db", "db", &db_path, SIZE, None, &out);
    assert_same(&out, &db_path, "raw", "db replica after the sender restart");
}
