//! The control sidecar against a real sender and receiver: every endpoint over HTTP, the
//! token on state-changing calls, jobs and policy across a sidecar restart and a sender
//! restart, `vdrep status` / `vdrep jobs` as API clients, and a real Prometheus server
//! scraping the three roles during a replication.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use vdrep_tests::http::{get, request};
use vdrep_tests::prom::{promtool_check, sample, scrape};
use vdrep_tests::require_tool;
use vdrep_tests::roles::eventually;
use vdrep_tests::sidecar::{Stack, TOKEN};

#[test]
fn every_endpoint_answers_and_state_changes_need_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let st = Stack::start(dir.path());
    let api = st.api();

    // OpenAPI: the served description is the file in the repo.
    let served = get(&api, "/openapi.json");
    assert_eq!(served.status, 200);
    let file =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/openapi.json"))
            .unwrap();
    assert_eq!(served.body, file);

    // VMs and disks with health, RPO, cycles.
    let vms = get(&api, "/v1/vms").json();
    assert_eq!(vms["sender"]["reachable"], true);
    let web = &vms["vms"][0];
    assert_eq!(web["vm"], "web");
    assert_eq!(web["health"], "normal");
    let disk = &web["disks"][0];
    assert_eq!(disk["disk"], "os");
    assert_eq!(disk["phase"], "protected");
    assert!(disk["rpo_seconds"].as_u64().unwrap() <= 5);
    assert!(disk["next_cycle_unix"].as_u64().is_some());
    assert_eq!(get(&api, "/v1/vms/nope").status, 404);

    // Every state-changing call is refused without the token, or with a wrong one.
    let changes: [(&str, &str, Value); 5] = [
        ("POST", "/v1/vms/web/resync", json!({"now": true})),
        ("POST", "/v1/vms/web/test-failover", json!({})),
        (
            "POST",
            "/v1/vms/web/protection",
            json!({"interval_seconds": 30}),
        ),
        ("PUT", "/v1/vms/web/policy", json!({"interval_seconds": 30})),
        ("PUT", "/v1/bandwidth", json!({"no_throttle": true})),
    ];
    for (m, p, b) in &changes {
        for tok in [None, Some("wrong")] {
            let r = st.call(m, p, tok, Some(b.clone()));
            assert_eq!(r.status, 401, "{m} {p} with {tok:?}: {}", r.body);
            assert!(r.json()["error"].as_str().unwrap().contains("Bearer"));
        }
    }
    assert_eq!(
        get(&api, "/v1/jobs").json()["jobs"],
        json!([]),
        "refused calls made no job"
    );

    // Replication policy: read, change, validated.
    assert_eq!(
        get(&api, "/v1/vms/web/policy").json()["interval_seconds"],
        300
    );
    let p = st.call(
        "PUT",
        "/v1/vms/web/policy",
        Some(TOKEN),
        Some(json!({"interval_seconds": 30, "rpo_threshold_seconds": 600})),
    );
    assert_eq!(p.status, 200, "{}", p.body);
    assert_eq!(
        get(&api, "/v1/vms/web/policy").json()["rpo_threshold_seconds"],
        600
    );
    assert_eq!(
        st.call(
            "PUT",
            "/v1/vms/web/policy",
            Some(TOKEN),
            Some(json!({"retention_hours": 48}))
        )
        .status,
        400
    );
    assert_eq!(
        st.call(
            "PUT",
            "/v1/vms/web/policy",
            Some(TOKEN),
            Some(json!({"bogus": 1}))
        )
        .status,
        400
    );

    // Bandwidth policy: read, change; the sender applies it at once.
    assert_eq!(
        get(&api, "/v1/bandwidth").json()["policy"]["no_throttle"],
        true
    );
    let all_days = json!({"no_throttle": false, "work_days": ["mon","tue","wed","thu","fri","sat","sun"],
        "work_hour_start": 0, "work_hour_end": 24, "work_hour_bytes_per_second": 10_000_000, "non_work_hour_bytes_per_second": 10_000_000});
    let b = st.call("PUT", "/v1/bandwidth", Some(TOKEN), Some(all_days.clone()));
    assert_eq!(b.status, 200, "{}", b.body);
    assert_eq!(b.json()["current_bytes_per_second"], 10_000_000);
    assert_eq!(b.json()["applied"], true);
    let at_sender = eventually(Duration::from_secs(10), || {
        let v = get(&api, "/v1/vms").json();
        (v["sender"]["bandwidth_bytes_per_second"] == 10_000_000).then_some(())
    });
    assert!(at_sender.is_some(), "the sender did not take the limit");
    let bad = st.call(
        "PUT",
        "/v1/bandwidth",
        Some(TOKEN),
        Some(json!({"no_throttle": false, "work_hour_bytes_per_second": 12_500})),
    );
    assert_eq!(bad.status, 400, "below 512 Kbit/s is refused: {}", bad.body);

    // Resync now: a job with steps that ends with the disk brought in line by block
    // checksums (the protect loop's resync) as a new recovery point.
    let r = st.call(
        "POST",
        "/v1/vms/web/resync",
        Some(TOKEN),
        Some(json!({"now": true})),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_string();
    let j = st.wait_job(&id, 60);
    assert_eq!(j["state"], "succeeded", "{j:#}");
    assert_eq!(j["steps"].as_array().unwrap().len(), 4);
    assert!(j["steps"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["state"] == "succeeded"));
    let log = st.tx.log_text();
    assert!(log.contains("resync requested by an operator"), "{log}");
    assert!(
        log.contains("resync committed; delta replication resumes"),
        "{log}"
    );
    assert_eq!(st.vm().unwrap()["disks"][0]["resyncs_completed"], 1);

    // A scheduled resync waits for its window (22:00-06:00 by default; the policy above
    // kept the default window, so outside it the job is queued with a time).
    let r = st.call("POST", "/v1/vms/web/resync", Some(TOKEN), Some(json!({})));
    assert_eq!(r.status, 202);
    let sched = r.json();
    assert!(sched["state"] == "queued");

    // Test failover: a job that writes the point where the store is and says where.
    let r = st.call(
        "POST",
        "/v1/vms/web/test-failover",
        Some(TOKEN),
        Some(json!({"point": null})),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let fid = r.json()["id"].as_str().unwrap().to_string();
    let j = st.wait_job(&fid, 30);
    assert_eq!(j["kind"], "test_failover");
    assert_eq!(j["state"], "succeeded", "{j:#}");
    let folder = st.dir.join("store-failover/web").join(&fid);
    assert_eq!(j["result"]["folder"], folder.to_str().unwrap());
    assert!(folder.join("os.vhd").is_file());
    assert_eq!(
        st.call("POST", "/v1/vms/ghost/test-failover", Some(TOKEN), None)
            .status,
        404
    );

    // Enable protection: the VM the sender protects succeeds; an unknown one fails with
    // what to do.
    let r = st.call(
        "POST",
        "/v1/vms/web/protection",
        Some(TOKEN),
        Some(json!({"interval_seconds": 30})),
    );
    assert_eq!(r.status, 202);
    assert_eq!(
        st.wait_job(r.json()["id"].as_str().unwrap(), 20)["state"],
        "succeeded"
    );
    let r = st.call("POST", "/v1/vms/db/protection", Some(TOKEN), None);
    let j = st.wait_job(r.json()["id"].as_str().unwrap(), 20);
    assert_eq!(j["state"], "failed");
    assert!(j["errors"][0].as_str().unwrap().contains("[[vm]]"));
    assert_eq!(
        st.call("POST", "/v1/vms/..%2Fetc/protection", Some(TOKEN), None)
            .status,
        400
    );

    // Jobs: listed newest first, drilled into; unknown ones 404.
    let jobs = get(&api, "/v1/jobs").json();
    assert_eq!(jobs["jobs"].as_array().unwrap().len(), 5);
    assert_eq!(jobs["jobs"][4]["id"], id.as_str());
    assert_eq!(get(&api, "/v1/jobs/job-999999").status, 404);
    assert_eq!(get(&api, "/v1/nothing").status, 404);

    // The CLI is a client of the API.
    let bin = vdrep_tests::vdrep_bin();
    let out = std::process::Command::new(&bin)
        .args(["status", "--sidecar", &api])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        table.starts_with("VM   DISK  HEALTH  REASON  RPO  LAST CYCLE  NEXT RETRY"),
        "{table}"
    );
    assert!(
        table
            .lines()
            .nth(1)
            .unwrap()
            .starts_with("web  os    normal  -"),
        "{table}"
    );
    assert!(
        table.lines().any(|l| l.starts_with("bandwidth limit now: ")
            && (l.ends_with(" Mbit/s") || l.ends_with("unlimited"))),
        "{table}"
    );
    // --watch without a terminal: a timestamped plain line per disk per refresh.
    let out = std::process::Command::new(&bin)
        .args([
            "status",
            "--sidecar",
            &api,
            "--watch",
            "--every",
            "1",
            "--count",
            "2",
        ])
        .output()
        .unwrap();
    let lines = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(lines.lines().count(), 2, "{lines}");
    for l in lines.lines() {
        let (at, row) = l.split_once(' ').unwrap();
        assert!(at.parse::<jiff::Timestamp>().is_ok(), "{l}");
        assert!(
            row.starts_with("web  os  protected  100.0 %  -  -  "),
            "{l}"
        );
        assert!(row.ends_with("  normal") && !l.contains('\u{1b}'), "{l}");
    }
    let out = std::process::Command::new(&bin)
        .args(["jobs", &id, "--sidecar", &api])
        .output()
        .unwrap();
    let detail = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        detail
            .lines()
            .any(|l| l.starts_with("resume delta replication") && l.contains("succeeded")),
        "{detail}"
    );
    let out = std::process::Command::new(&bin)
        .args(["resync", "--vm", "web", "--sidecar", &api, "--token-file"])
        .arg(st.dir.join("token"))
        .output()
        .unwrap();
    assert!(
        out.status.success()
            && String::from_utf8_lossy(&out.stdout).contains("resync for web: queued")
    );

    // The sidecar's own metrics pass promtool too.
    let m = scrape(&st.sc.addr("metrics on "));
    assert_eq!(sample(&m, "vdrep_sender_up", &[]), Some(1.0));
    assert!(
        sample(
            &m,
            "vdrep_api_requests_total",
            &[("method", "POST"), ("status", "401")]
        ) >= Some(6.0)
    );
    // Two succeeded (a scheduled resync may have run too, between 22:00 and 06:00 UTC).
    assert!(sample(&m, "vdrep_jobs", &[("state", "succeeded")]) >= Some(2.0));
    assert_eq!(promtool_check(&m), "", "{m}");
    let _ = (&st.tls, &st.disk, &st.rx);
}

#[test]
fn jobs_and_policy_survive_sidecar_and_sender_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut st = Stack::start(dir.path());
    let limit = json!({"no_throttle": false, "work_days": ["mon","tue","wed","thu","fri","sat","sun"],
        "work_hour_start": 0, "work_hour_end": 24, "work_hour_bytes_per_second": 5_000_000, "non_work_hour_bytes_per_second": 5_000_000});
    assert_eq!(
        st.call("PUT", "/v1/bandwidth", Some(TOKEN), Some(limit))
            .status,
        200
    );
    assert_eq!(
        st.call(
            "PUT",
            "/v1/vms/web/policy",
            Some(TOKEN),
            Some(json!({"interval_seconds": 900}))
        )
        .status,
        200
    );
    let r = st.call(
        "POST",
        "/v1/vms/web/resync",
        Some(TOKEN),
        Some(json!({"now": true})),
    );
    let id = r.json()["id"].as_str().unwrap().to_string();
    assert_eq!(st.wait_job(&id, 60)["state"], "succeeded");
    let queued = st
        .call("POST", "/v1/vms/web/resync", Some(TOKEN), None)
        .json();

    // Sidecar restart: same state folder, new process and port.
    st.sc.kill();
    st.sc = Stack::sidecar(&st.dir);
    let jobs = get(&st.api(), "/v1/jobs").json();
    let ids: Vec<&str> = jobs["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![queued["id"].as_str().unwrap(), id.as_str()]);
    assert_eq!(
        get(&st.api(), &format!("/v1/jobs/{id}")).json()["state"],
        "succeeded"
    );
    assert_eq!(
        get(&st.api(), "/v1/vms/web/policy").json()["interval_seconds"],
        900
    );
    assert_eq!(
        get(&st.api(), "/v1/bandwidth").json()["current_bytes_per_second"],
        5_000_000
    );
    // New job numbers continue after the old ones.
    let next = st
        .call("POST", "/v1/vms/web/test-failover", Some(TOKEN), None)
        .json();
    assert_eq!(next["id"], "job-000003");

    // Sender restart (kill -9): the sidecar finds the new process and applies the policy.
    st.tx.kill();
    let down = eventually(Duration::from_secs(10), || {
        (get(&st.api(), "/v1/vms").json()["sender"]["reachable"] == false).then_some(())
    });
    assert!(down.is_some(), "the sidecar noticed the sender is gone");
    st.tx = Stack::sender(&st.dir, &st.tls, &st.disk, &st.rx);
    let applied = eventually(Duration::from_secs(20), || {
        let v = get(&st.api(), "/v1/vms").json();
        (v["sender"]["reachable"] == true && v["sender"]["bandwidth_bytes_per_second"] == 5_000_000)
            .then_some(())
    });
    assert!(
        applied.is_some(),
        "policy not re-applied to the restarted sender; log:\n{}",
        st.sc.log_text()
    );
    st.wait_protected();

    // Receiver gone: `vdrep status` shows the disk retrying, why, and when it retries next.
    st.rx.kill();
    let bin = vdrep_tests::vdrep_bin();
    let row = eventually(Duration::from_secs(30), || {
        let out = std::process::Command::new(&bin)
            .args(["status", "--sidecar", &st.api()])
            .output()
            .ok()?;
        let table = String::from_utf8_lossy(&out.stdout).into_owned();
        let row = table.lines().nth(1)?.to_string();
        let cols: Vec<&str> = row.split("  ").filter(|c| !c.is_empty()).collect();
        (row.starts_with("web  os    warning  retrying (")
            // NEXT RETRY, before FORMAT and PHASE.
            && cols
                .iter()
                .rev()
                .nth(2)
                .is_some_and(|c| *c == "now" || c.starts_with("in ")))
        .then_some(row)
    });
    assert!(
        row.is_some(),
        "status never showed the retry; sender log:\n{}",
        st.tx.log_text()
    );
}

#[test]
fn a_real_prometheus_scrapes_the_three_roles_during_replication() {
    require_tool("prometheus", "apt-get install prometheus");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let st = Stack::start(d);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: vdrep-sender\n    static_configs: [{{targets: ['{}']}}]\n  - job_name: vdrep-receiver\n    static_configs: [{{targets: ['{}']}}]\n  - job_name: vdrep-sidecar\n    static_configs: [{{targets: ['{}']}}]\n",
        st.tx.addr("metrics on "),
        st.rx.addr("metrics on "),
        st.sc.addr("metrics on ")
    );
    std::fs::write(d.join("prometheus.yml"), cfg).unwrap();
    let log = std::fs::File::create(d.join("prometheus.log")).unwrap();
    let mut prom = std::process::Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            d.join("prometheus.yml").display()
        ))
        .arg(format!("--storage.tsdb.path={}", d.join("tsdb").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("prometheus");
    let addr = format!("127.0.0.1:{port}");
    let query = |q: &str| -> Option<Vec<Value>> {
        let path = format!("/api/v1/query?query={}", urlencode(q));
        let r = request(&addr, "GET", &path, None, None).ok()?;
        let v: Value = serde_json::from_str(&r.body).ok()?;
        let res = v["data"]["result"].as_array()?.clone();
        (!res.is_empty()).then_some(res)
    };
    let value = |r: &Value| {
        r["value"][1]
            .as_str()
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    // All three targets up.
    let up = eventually(Duration::from_secs(30), || {
        query("sum(up)").filter(|r| value(&r[0]) == 3.0)
    });
    let plog = || std::fs::read_to_string(d.join("prometheus.log")).unwrap_or_default();
    assert!(
        up.is_some(),
        "targets not all up; prometheus log:\n{}",
        plog()
    );
    // Throughput: the initial copy's bytes, as scraped from the sender and the receiver.
    let wire = eventually(Duration::from_secs(20), || {
        query(r#"vdrep_wire_bytes_total{job="vdrep-sender",vm="web",disk="os"}"#)
    })
    .unwrap();
    assert!(value(&wire[0]) > 5.0e6, "{wire:?}");
    let written =
        query(r#"vdrep_written_bytes_total{job="vdrep-receiver",vm="web",disk="os"}"#).unwrap();
    assert!(value(&written[0]) > 5.0e6, "{written:?}");
    // RPO from both ends, fresh with 1 s cycles.
    for job in ["vdrep-sender", "vdrep-receiver"] {
        let rpo = query(&format!(r#"vdrep_rpo_seconds{{job="{job}",vm="web"}}"#)).unwrap();
        assert!(value(&rpo[0]) <= 10.0, "{job} RPO {rpo:?}");
    }
    // Health: normal is 1, the other states 0.
    let h = query(r#"vdrep_health{vm="web",disk="os",state="normal"}"#).unwrap();
    assert_eq!(value(&h[0]), 1.0);
    let crit = query(r#"vdrep_health{state="critical"}"#).unwrap();
    assert_eq!(value(&crit[0]), 0.0);
    // Cycles keep committing while Prometheus watches.
    let inc = eventually(Duration::from_secs(20), || {
        query("increase(vdrep_cycles_total[10s])").filter(|r| value(&r[0]) >= 2.0)
    });
    assert!(inc.is_some(), "no cycles seen by Prometheus");
    assert_eq!(
        value(&query(r#"vdrep_sender_up{job="vdrep-sidecar"}"#).unwrap()[0]),
        1.0
    );
    let _ = prom.kill();
    let _ = prom.wait();
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn a_property_based_client_from_the_openapi_description_finds_no_errors() {
    let st_bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/.venv-schemathesis/bin/st");
    assert!(
        st_bin.is_file(),
        "schemathesis is not installed at {}: run `bash ops/setup.sh`",
        st_bin.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let st = Stack::start(dir.path());
    let api = st.api();
    // Every check (server errors, response schemas, status codes, content types, and that
    // schema-valid requests are accepted and invalid ones refused), with the token.
    let out = std::process::Command::new(&st_bin)
        .args([
            "run",
            &format!("http://{api}/openapi.json"),
            "--url",
            &format!("http://{api}"),
        ])
        .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
        .args([
            "--checks",
            "all",
            "--max-examples",
            "25",
            "--seed",
            "1",
            "--no-color",
        ])
        .env("SCHEMATHESIS_HOOKS", "")
        // Its report folder (.schemathesis/) goes to the test's temporary folder.
        .current_dir(dir.path())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "schemathesis found problems:\n{text}");
    assert!(text.contains("No issues found"), "{text}");
    // The sidecar is still fine afterwards.
    assert_eq!(get(&api, "/v1/vms").status, 200);
}
