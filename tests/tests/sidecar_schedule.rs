//! One bandwidth schedule and one health model between the sidecar and the sender
//! (issue 8): the sidecar pushes its schedule whole, the sender applies it at work-hour
//! boundaries by itself (the sidecar stopped) and keeps it across a restart; `/v1/vms`,
//! the sender's `health.json` and its health gauge say the same.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::time::Duration;

use jiff::Timestamp;
use serde_json::{json, Value};
use vdrep_tests::images::seeded_raw;
use vdrep_tests::jump_clock_to;
use vdrep_tests::procs::certs;
use vdrep_tests::prom::{sample, scrape};
use vdrep_tests::roles::{eventually, Role};
use vdrep_tests::sidecar::{s, Stack, TOKEN};

/// One request on the sender's control socket.
fn control(sock: &Path, req: Value) -> Value {
    let mut c = std::os::unix::net::UnixStream::connect(sock).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    writeln!(c, "{req}").unwrap();
    let mut line = String::new();
    BufReader::new(c).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap()
}

fn sender_status(sock: &Path) -> Option<Value> {
    std::os::unix::net::UnixStream::connect(sock).ok()?;
    let a = control(sock, json!({"op": "status"}));
    (a["ok"] == true).then(|| a["status"].clone())
}

fn sender(d: &Path, tls: &Path, disk: &Path, rx: &Role, offset: &Path) -> Role {
    let mut args = Stack::sender_args(d, tls, disk, rx);
    args.extend(s(&["--bandwidth", "20MB"]));
    Role::start_env(
        &args,
        &d.join("sender.log"),
        &[],
        &[("VDREP_TEST_CLOCK_OFFSET_FILE", offset.to_str().unwrap())],
    )
}

#[test]
fn a_pushed_schedule_is_the_senders_own_it_switches_at_work_hours_without_the_sidecar_and_survives_a_restart(
) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tls = certs(&d.join("tls"), &["hv01"]);
    let disk = seeded_raw(&d.join("os.raw"), 4 << 20, 3, 1 << 20, 3);
    vdrep_tests::sidecar::write_token(d);
    let offset = d.join("clock.offset");
    // 08:59:30 UTC on some day: just before work hours.
    let nine = Timestamp::from_second(1_900_000_000 / 86_400 * 86_400 + 9 * 3600).unwrap();
    jump_clock_to(&offset, nine - jiff::SignedDuration::from_secs(30));
    let rx = Role::receiver(d, &tls, "hv01=web", false);
    let mut tx = sender(d, &tls, &disk, &rx, &offset);
    let sock = d.join("run/sender.sock");
    assert!(eventually(Duration::from_secs(20), || sender_status(&sock)).is_some());
    let mut sc = Stack::sidecar(d);
    let api = sc.addr("sidecar on ");
    let up = eventually(Duration::from_secs(20), || {
        let v = vdrep_tests::http::get(&api, "/v1/vms").json();
        (v["sender"]["reachable"] == true).then_some(())
    });
    assert!(up.is_some(), "{}", sc.log_text());
    let policy = json!({"no_throttle": false,
        "work_days": ["mon","tue","wed","thu","fri","sat","sun"],
        "work_hour_start": 9, "work_hour_end": 17,
        "work_hour_bytes_per_second": 1_000_000, "non_work_hour_bytes_per_second": 5_000_000,
        "utc_offset_minutes": 0});
    let r = vdrep_tests::http::request(
        &api,
        "PUT",
        "/v1/bandwidth",
        Some(TOKEN),
        Some(&policy.to_string()),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["applied"], true, "{}", r.body);
    // The sender reports the schedule itself, off hours on its clock.
    let st = sender_status(&sock).unwrap();
    let mut want = policy.clone();
    want["work_days"] = json!(["mon", "tue", "wed", "thu", "fri", "sat", "sun"]);
    assert_eq!(st["bandwidth_schedule"], want, "{st:#}");
    assert_eq!(st["work_hours_now"], false, "{st:#}");
    assert_eq!(st["bandwidth_bytes_per_second"], 5_000_000, "{st:#}");
    let b = vdrep_tests::http::get(&api, "/v1/bandwidth").json();
    assert_eq!(b["sender_policy"], st["bandwidth_policy"], "{b:#}");

    // No sidecar from here on: 09:00 comes on the sender's clock and it switches itself.
    sc.kill();
    jump_clock_to(&offset, nine - jiff::SignedDuration::from_secs(2));
    let switched = eventually(Duration::from_secs(15), || {
        sender_status(&sock)
            .filter(|s| s["bandwidth_bytes_per_second"] == 1_000_000 && s["work_hours_now"] == true)
    });
    assert!(
        switched.is_some(),
        "{:#}\n{}",
        sender_status(&sock).unwrap(),
        tx.log_text()
    );
    let health: Value =
        serde_json::from_slice(&std::fs::read(d.join("sender-state/health.json")).unwrap())
            .unwrap();
    assert_eq!(health["bandwidth"], switched.unwrap()["bandwidth_policy"]);

    // A restarted sender (flags say 20MB) runs the pushed schedule at once.
    tx.kill();
    let mut tx = sender(d, &tls, &disk, &rx, &offset);
    let st = eventually(Duration::from_secs(20), || sender_status(&sock)).unwrap();
    assert_eq!(st["bandwidth_schedule"], want, "{st:#}");
    assert_eq!(st["bandwidth_bytes_per_second"], 1_000_000, "{st:#}");
    tx.kill();
}

#[test]
fn vms_health_is_the_senders_health_model_in_health_json_and_the_gauge_alike() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut st = Stack::start(d);
    let metrics = st.tx.addr("metrics on ");
    // Compared until one snapshot of each agrees (each is refreshed every second).
    fn agree(st: &Stack, d: &Path, metrics: &str, want: &str) -> Option<(Value, Value)> {
        eventually(Duration::from_secs(30), || {
            let vm = st.vm()?;
            let file: Value =
                serde_json::from_slice(&std::fs::read(d.join("sender-state/health.json")).ok()?)
                    .ok()?;
            let h = &file["vms"][0];
            let text = scrape(metrics);
            let same = vm["health"] == want
                && h["state"].as_str()?.to_lowercase() == want
                && vm["reason"] == h["reasons"].get(0).cloned().unwrap_or(json!(""))
                && vm["disks"][0]["health"] == want
                && sample(&text, "vdrep_health", &[("vm", "web"), ("state", want)]) == Some(1.0)
                && match h["next_retry"].as_str() {
                    Some(t) => {
                        vm["next_retry_unix"].as_i64()
                            == Some(t.parse::<Timestamp>().ok()?.as_second())
                    }
                    None => vm["next_retry_unix"].is_null(),
                };
            same.then_some((vm, file))
        })
    }
    let normal = agree(&st, d, &metrics, "normal");
    assert!(normal.is_some(), "{:#}", st.vm().unwrap());
    // The receiver gone: retrying is a warning with its reason and next retry, the same in
    // all three.
    st.rx.kill();
    let (vm, file) = agree(&st, d, &metrics, "warning").unwrap_or_else(|| {
        panic!(
            "{:#}\n{}",
            st.vm().unwrap(),
            std::fs::read_to_string(d.join("sender-state/health.json")).unwrap()
        )
    });
    assert!(
        vm["reason"].as_str().unwrap().starts_with("retrying"),
        "{vm:#}"
    );
    assert!(!vm["next_retry_unix"].is_null(), "{vm:#}\n{file:#}");
    st.tx.kill();
}
