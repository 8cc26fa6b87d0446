//! Jobs across real processes (issue 4, part 5): enable protection, initial replication and
//! finalize protection are recorded in the store with their steps; a sender whose run fails
//! before a connection exists (unreadable disk, refused certificate) keeps the failed job in
//! its `--state` folder and reports it once a good run connects; test failover records its
//! own job, succeeded or failed with the error; `vdrep jobs --json` has a fixed schema.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use vdrep_tests::images::seeded_raw;
use vdrep_tests::procs::{certs, Receiver, Send};
use vdrep_tests::{vdrep, vdrep_ok};

const MIB: u64 = 1 << 20;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `vdrep jobs ARGS --json`, parsed and checked against the schema.
fn jobs(args: &[&str]) -> Vec<Value> {
    let mut a = vec!["jobs"];
    a.extend_from_slice(args);
    a.push("--json");
    let out = vdrep_ok(&a);
    let v: Value = serde_json::from_slice(&out.stdout).expect("jobs --json prints JSON");
    let list = v.as_array().expect("jobs --json prints an array").clone();
    for j in &list {
        check_schema(j);
    }
    list
}

fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect();
    k.sort();
    k
}

fn is_time(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|t| t.len() == 24 && t.ends_with('Z') && t.as_bytes()[10] == b'T')
}

/// Every job: exactly these fields, with these types and values.
fn check_schema(j: &Value) {
    assert_eq!(
        keys(j),
        [
            "end",
            "end_unix_ms",
            "error",
            "id",
            "kind",
            "start",
            "start_unix_ms",
            "state",
            "steps",
            "vm"
        ],
        "{j:#}"
    );
    assert!(!j["id"].as_str().unwrap().is_empty());
    assert!(
        [
            "enable-protection",
            "initial-replication",
            "finalize-protection",
            "test-failover"
        ]
        .contains(&j["kind"].as_str().unwrap()),
        "{j:#}"
    );
    let states = ["queued", "running", "succeeded", "failed"];
    assert!(states.contains(&j["state"].as_str().unwrap()));
    assert!(j["vm"].is_string());
    assert!(is_time(&j["start"]), "{j:#}");
    assert!(j["start_unix_ms"].as_u64().unwrap() > 1_600_000_000_000);
    assert!(j["end"].is_null() || is_time(&j["end"]));
    assert!(j["end_unix_ms"].is_null() || j["end_unix_ms"].is_u64());
    for st in j["steps"].as_array().unwrap() {
        assert_eq!(
            keys(st),
            ["detail", "end", "name", "start", "state"],
            "{st:#}"
        );
        assert!(states.contains(&st["state"].as_str().unwrap()));
        assert!(st["name"].is_string() && st["detail"].is_string());
        assert!(st["start"].is_null() || is_time(&st["start"]));
        assert!(st["end"].is_null() || is_time(&st["end"]));
    }
    match &j["error"] {
        Value::Null => assert_ne!(j["state"], "failed", "a failed job says why: {j:#}"),
        e => {
            assert_eq!(keys(e), ["message", "recoverable"]);
            assert!(e["recoverable"].is_boolean() && e["message"].is_string());
        }
    }
}

fn of_kind<'a>(list: &'a [Value], kind: &str) -> Vec<&'a Value> {
    list.iter().filter(|j| j["kind"] == kind).collect()
}

fn steps(j: &Value) -> Vec<(String, String)> {
    j["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn ok(names: &[&str]) -> Vec<(String, String)> {
    names
        .iter()
        .map(|n| (n.to_string(), "succeeded".to_string()))
        .collect()
}

const ENABLE_STEPS: [&str; 4] = [
    "disks readable",
    "formats supported",
    "receiver reachable and authorised",
    "target capacity",
];

/// Asserts the three jobs of a good protection run (after any earlier ones).
fn assert_protection_jobs(list: &[Value], disks: &[&str], tracking: bool) {
    let enable = of_kind(list, "enable-protection");
    let e = enable.last().expect("an enable-protection job");
    assert_eq!(e["state"], "succeeded", "{e:#}");
    assert_eq!(steps(e), ok(&ENABLE_STEPS));
    let initial = of_kind(list, "initial-replication");
    assert_eq!(initial.len(), 1, "{list:#?}");
    let copies: Vec<String> = disks.iter().map(|d| format!("copy {d}")).collect();
    let copies: Vec<&str> = copies.iter().map(String::as_str).collect();
    assert_eq!(initial[0]["state"], "succeeded");
    assert_eq!(steps(initial[0]), ok(&copies));
    for st in initial[0]["steps"].as_array().unwrap() {
        assert!(
            st["detail"].as_str().unwrap().contains("recovery point 0"),
            "{st:#}"
        );
    }
    let fin = of_kind(list, "finalize-protection");
    assert_eq!(fin.len(), 1);
    assert_eq!(fin[0]["state"], "succeeded");
    let mut want = vec!["initial recovery points committed"];
    if tracking {
        want.push("change tracking active");
    }
    assert_eq!(steps(fin[0]), ok(&want));
    // Chronological: enable, then initial, then finalize.
    let t = |j: &Value| j["start_unix_ms"].as_u64().unwrap();
    assert!(t(e) <= t(initial[0]) && t(initial[0]) <= t(fin[0]));
    assert!(e["end_unix_ms"].as_u64().unwrap() <= fin[0]["end_unix_ms"].as_u64().unwrap());
}

#[test]
fn protecting_a_vm_records_enable_initial_and_finalize_jobs_with_their_steps() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tls = certs(&d.join("tls"), &["hv01"]);
    let store = d.join("store");
    let rx = Receiver::start(&store, &tls, &["hv01=vm1"]);
    std::fs::create_dir_all(d.join("src")).unwrap();
    let a = seeded_raw(&d.join("src/os.raw"), 4 * MIB, 1, 64 << 10, 3);
    let b = seeded_raw(&d.join("src/data.raw"), 2 * MIB, 2, 64 << 10, 3);
    let state = d.join("state");
    Send::new(
        &rx.to(),
        &tls,
        "hv01",
        "vm1",
        &[&a, &b],
        &d.join("send.log"),
    )
    .arg("--interval")
    .arg("1s")
    .arg("--max-cycles")
    .arg("1")
    .arg("--state")
    .arg(s(&state))
    .run(Duration::from_secs(90))
    .ok();
    let list = jobs(&["--store", s(&store), "--vm", "vm1"]);
    assert_eq!(list.len(), 3, "{list:#?}");
    assert_protection_jobs(&list, &["os", "data"], true);
    let e = &of_kind(&list, "enable-protection")[0];
    let cap = &e["steps"][3]["detail"];
    assert!(cap.as_str().unwrap().contains("bytes free"), "{cap}");
    // Nothing failed, so nothing waits in the state folder.
    assert!(jobs(&["--state", s(&state)]).is_empty());
    // The table names every job and its steps.
    let table = String::from_utf8(vdrep_ok(&["jobs", "--store", s(&store)]).stdout).unwrap();
    for j in &list {
        assert!(table.contains(j["id"].as_str().unwrap()), "{table}");
    }
    assert!(table.contains("succeeded disks readable"), "{table}");
    // The file lives beside the replicas.
    assert!(store.join("vm1/jobs.json").is_file());
}

#[test]
fn an_unreadable_disk_fails_enable_protection_in_the_state_folder_until_a_good_run_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tls = certs(&d.join("tls"), &["hv01"]);
    let store = d.join("store");
    let rx = Receiver::start(&store, &tls, &["hv01=vm1"]);
    let state = d.join("state");
    let missing = d.join("src/missing.raw");
    let r = Send::new(
        &rx.to(),
        &tls,
        "hv01",
        "vm1",
        &[&missing],
        &d.join("bad.log"),
    )
    .arg("--state")
    .arg(s(&state))
    .run(Duration::from_secs(30));
    assert_eq!(r.code(), Some(1), "{}", r.log);
    let pending = jobs(&["--state", s(&state), "--vm", "vm1"]);
    assert_eq!(pending.len(), 1, "{pending:#?}");
    let j = &pending[0];
    assert_eq!(j["kind"], "enable-protection");
    assert_eq!(j["state"], "failed");
    assert_eq!(j["steps"][0]["name"], "disks readable");
    assert_eq!(j["steps"][0]["state"], "failed");
    assert!(
        j["steps"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("missing.raw"),
        "{j:#}"
    );
    // The checks that never ran stay queued.
    assert_eq!(j["steps"][3]["state"], "queued");
    let msg = j["error"]["message"].as_str().unwrap();
    assert!(msg.contains("missing.raw"), "{msg}");
    // Nothing reached the receiver.
    assert!(jobs(&["--store", s(&store)]).is_empty());

    // A good run of the same VM reports the failed job first, then its own.
    std::fs::create_dir_all(d.join("src")).unwrap();
    let good = seeded_raw(&d.join("src/os.raw"), 2 * MIB, 3, 64 << 10, 3);
    Send::new(&rx.to(), &tls, "hv01", "vm1", &[&good], &d.join("good.log"))
        .arg("--state")
        .arg(s(&state))
        .run(Duration::from_secs(60))
        .ok();
    let list = jobs(&["--store", s(&store), "--vm", "vm1"]);
    assert_eq!(list.len(), 4, "{list:#?}");
    assert_eq!(list[0]["id"], j["id"]);
    assert_eq!(list[0]["state"], "failed");
    assert_protection_jobs(&list, &["os"], false);
    assert!(
        jobs(&["--state", s(&state)]).is_empty(),
        "reported jobs are forgotten"
    );
}

#[test]
fn a_refused_certificate_is_kept_in_the_state_folder_and_reported_once_a_good_run_connects() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tls = certs(&d.join("tls"), &["hv01"]);
    // Same sender name, another CA: the receiver does not trust it (nor it the receiver).
    let foreign = certs(&d.join("foreign"), &["hv01"]);
    let store = d.join("store");
    let rx = Receiver::start(&store, &tls, &["hv01=vm1"]);
    std::fs::create_dir_all(d.join("src")).unwrap();
    let disk = seeded_raw(&d.join("src/os.raw"), 2 * MIB, 4, 64 << 10, 3);
    let state = d.join("state");
    let r = Send::new(
        &rx.to(),
        &foreign,
        "hv01",
        "vm1",
        &[&disk],
        &d.join("bad.log"),
    )
    .arg("--state")
    .arg(s(&state))
    .arg("--give-up-after")
    .arg("5s")
    .run(Duration::from_secs(60));
    assert_eq!(
        r.code(),
        Some(1),
        "a refused certificate is not retried:\n{}",
        r.log
    );
    let pending = jobs(&["--state", s(&state)]);
    assert_eq!(pending.len(), 1, "{pending:#?}");
    let j = &pending[0];
    assert_eq!(
        (j["kind"].as_str(), j["state"].as_str()),
        (Some("enable-protection"), Some("failed"))
    );
    assert_eq!(
        steps(j)[..3],
        [
            ("disks readable".to_string(), "succeeded".to_string()),
            ("formats supported".to_string(), "succeeded".to_string()),
            (
                "receiver reachable and authorised".to_string(),
                "failed".to_string()
            ),
        ]
    );
    assert_eq!(j["error"]["recoverable"], false, "{j:#}");
    assert!(jobs(&["--store", s(&store)]).is_empty());

    Send::new(&rx.to(), &tls, "hv01", "vm1", &[&disk], &d.join("good.log"))
        .arg("--state")
        .arg(s(&state))
        .run(Duration::from_secs(60))
        .ok();
    let list = jobs(&["--store", s(&store), "--vm", "vm1"]);
    assert_eq!(list.len(), 4, "{list:#?}");
    assert_eq!(list[0]["id"], j["id"]);
    assert_eq!(list[0]["error"], j["error"]);
    assert_protection_jobs(&list, &["os"], false);
    assert!(jobs(&["--state", s(&state)]).is_empty());
}

#[test]
fn test_failover_records_a_succeeded_job_and_an_unknown_point_a_failed_one() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tls = certs(&d.join("tls"), &["hv01"]);
    let store = d.join("store");
    let rx = Receiver::start(&store, &tls, &["hv01=vm1"]);
    std::fs::create_dir_all(d.join("src")).unwrap();
    let disk = seeded_raw(&d.join("src/os.raw"), 2 * MIB, 5, 64 << 10, 3);
    Send::new(&rx.to(), &tls, "hv01", "vm1", &[&disk], &d.join("send.log"))
        .arg("--state")
        .arg(s(&d.join("state")))
        .run(Duration::from_secs(60))
        .ok();
    let out = d.join("out");
    vdrep_ok(&[
        "failover",
        "--test",
        "--store",
        s(&store),
        "--vm",
        "vm1",
        "--point",
        "latest",
        "--out",
        s(&out),
    ]);
    let list = jobs(&["--store", s(&store), "--vm", "vm1"]);
    let fo = of_kind(&list, "test-failover");
    assert_eq!(fo.len(), 1, "{list:#?}");
    assert_eq!(fo[0]["state"], "succeeded");
    assert_eq!(
        steps(fo[0]),
        ok(&[
            "choose recovery point",
            "write and verify os",
            "publish outputs"
        ])
    );
    assert!(fo[0]["steps"][2]["detail"]
        .as_str()
        .unwrap()
        .contains("os.vhd"));

    let bad = vdrep(&[
        "failover",
        "--test",
        "--store",
        s(&store),
        "--vm",
        "vm1",
        "--point",
        "99",
        "--out",
        s(&d.join("out2")),
    ]);
    assert_eq!(bad.status.code(), Some(1));
    let list = jobs(&["--store", s(&store), "--vm", "vm1"]);
    let fo = of_kind(&list, "test-failover");
    assert_eq!(fo.len(), 2);
    let f = fo[1];
    assert_eq!(f["state"], "failed", "{f:#}");
    let msg = f["error"]["message"].as_str().unwrap();
    assert!(msg.contains("recovery point 99 does not exist"), "{msg}");
    assert_eq!(f["error"]["recoverable"], false);
    assert_eq!(f["steps"][0]["state"], "failed");
    assert_eq!(f["steps"][1]["state"], "queued");
    // An unknown VM records nothing (there is no protection to record it beside).
    assert_eq!(
        vdrep(&[
            "failover",
            "--test",
            "--store",
            s(&store),
            "--vm",
            "nope",
            "--out",
            s(&d.join("out3")),
        ])
        .status
        .code(),
        Some(1)
    );
    assert!(!store.join("nope").exists());
    // Unprotecting the VM removes its job history with its replicas.
    vdrep_ok(&["unprotect", "--store", s(&store), "--vm", "vm1", "--yes"]);
    assert!(jobs(&["--store", s(&store), "--vm", "vm1"]).is_empty());
    assert!(!store.join("vm1").exists());
}

#[test]
fn on_the_azure_sink_jobs_live_in_a_blob_beside_the_replicas() {
    let az = vdrep_tests::azurite::Azurite::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tls = certs(&d.join("tls"), &["hv01"]);
    let rx = Receiver::start_azure(
        &az.url(),
        "replicas",
        &az.sas(),
        &tls,
        &["hv01=vm1"],
        &d.join("rx.log"),
    );
    std::fs::create_dir_all(d.join("src")).unwrap();
    let disk = seeded_raw(&d.join("src/os.raw"), 2 * MIB, 6, 64 << 10, 3);
    Send::new(&rx.to(), &tls, "hv01", "vm1", &[&disk], &d.join("send.log"))
        .arg("--state")
        .arg(s(&d.join("state")))
        .run(Duration::from_secs(90))
        .ok();
    let url = az.url();
    let az_args = ["--azure-url", url.as_str(), "--azure-container", "replicas"];
    let with_az = |extra: &[&str]| -> std::process::Output {
        vdrep_tests::vdrep_command()
            .args(extra)
            .args(az_args)
            .env("VDREP_AZURE_SAS", format!("?{}", az.sas()))
            .output()
            .unwrap()
    };
    let list = |vm: &str| -> Vec<Value> {
        let out = with_az(&["jobs", "--vm", vm, "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
        v.iter().for_each(check_schema);
        v
    };
    let jobs = list("vm1");
    assert_eq!(jobs.len(), 3, "{jobs:#?}");
    assert_protection_jobs(&jobs, &["os"], false);
    let out = with_az(&[
        "failover",
        "--test",
        "--vm",
        "vm1",
        "--out",
        s(&d.join("out")),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let jobs = list("vm1");
    let fo = of_kind(&jobs, "test-failover");
    assert_eq!(fo.len(), 1);
    assert_eq!(fo[0]["state"], "succeeded");
}

#[test]
fn an_unreachable_receiver_fails_enable_protection_recoverably_in_the_state_folder() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tls = certs(&d.join("tls"), &["hv01"]);
    std::fs::create_dir_all(d.join("src")).unwrap();
    let disk = seeded_raw(&d.join("src/os.raw"), MIB, 7, 64 << 10, 3);
    // A UDP port nobody answers on.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let state = d.join("state");
    let r = Send::new(
        &format!("127.0.0.1:{port}"),
        &tls,
        "hv01",
        "vm1",
        &[&disk],
        &d.join("send.log"),
    )
    .arg("--state")
    .arg(s(&state))
    .arg("--give-up-after")
    .arg("2s")
    .run(Duration::from_secs(60));
    assert_eq!(r.code(), Some(75), "{}", r.log);
    let pending = jobs(&["--state", s(&state)]);
    assert_eq!(pending.len(), 1, "{pending:#?}");
    let j = &pending[0];
    assert_eq!(j["state"], "failed");
    assert_eq!(j["steps"][2]["name"], "receiver reachable and authorised");
    assert_eq!(j["steps"][2]["state"], "failed");
    assert_eq!(j["error"]["recoverable"], true, "{j:#}");
}

#[test]
fn a_job_left_running_by_a_killed_sender_is_reported_interrupted_by_the_next_run() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tls = certs(&d.join("tls"), &["hv01"]);
    let store = d.join("store");
    let rx = Receiver::start(&store, &tls, &["hv01=vm1"]);
    std::fs::create_dir_all(d.join("src")).unwrap();
    let disk = seeded_raw(&d.join("src/os.raw"), 16 * MIB, 8, 64 << 10, 1000);
    let state = d.join("state");
    // Slow enough (about 8 s) to be killed in the middle of the copy.
    let mut child = Send::new(&rx.to(), &tls, "hv01", "vm1", &[&disk], &d.join("slow.log"))
        .arg("--state")
        .arg(s(&state))
        .arg("--bandwidth")
        .arg("2MB")
        .spawn();
    let end = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let out = vdrep(&["jobs", "--store", s(&store), "--vm", "vm1", "--json"]);
        let running = out.status.success()
            && serde_json::from_slice::<Vec<Value>>(&out.stdout)
                .unwrap_or_default()
                .iter()
                .any(|j| j["kind"] == "initial-replication" && j["state"] == "running");
        if running {
            break;
        }
        assert!(
            std::time::Instant::now() < end,
            "the copy never showed as running"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let left = jobs(&["--state", s(&state)]);
    assert_eq!(
        left.len(),
        1,
        "the running job stays in the state folder: {left:#?}"
    );
    assert_eq!(left[0]["state"], "running");

    Send::new(&rx.to(), &tls, "hv01", "vm1", &[&disk], &d.join("good.log"))
        .arg("--state")
        .arg(s(&state))
        .run(Duration::from_secs(60))
        .ok();
    let list = jobs(&["--store", s(&store), "--vm", "vm1"]);
    let initial = of_kind(&list, "initial-replication");
    assert_eq!(initial.len(), 2, "{list:#?}");
    let old = initial.iter().find(|j| j["id"] == left[0]["id"]).unwrap();
    assert_eq!(old["state"], "failed");
    assert_eq!(old["steps"][0]["state"], "failed");
    assert_eq!(old["error"]["recoverable"], true);
    assert!(old["error"]["message"]
        .as_str()
        .unwrap()
        .contains("interrupted"));
    assert!(initial.iter().any(|j| j["state"] == "succeeded"));
    assert!(jobs(&["--state", s(&state)]).is_empty());
}
