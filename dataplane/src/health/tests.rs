//! The health model's behaviour: RPO, retries, refusals, resyncs and health.json.

use super::*;
use crate::clock::TokioClock;
use crate::retry::Classified;
use std::sync::Arc;

/// The health of `vms` (name, disks) on a paused clock at 2025-01-06 12:00 UTC, RPO
/// threshold 60 s.
pub(super) fn health_of(vms: &[(&str, &[&str])]) -> Health {
    let clock = Arc::new(TokioClock::starting_at(
        "2025-01-06T12:00:00Z".parse().unwrap(),
    ));
    let vms: Vec<(String, Vec<String>)> = vms
        .iter()
        .map(|(vm, disks)| {
            (
                vm.to_string(),
                disks.iter().map(|d| d.to_string()).collect(),
            )
        })
        .collect();
    Health::new(clock, Duration::from_secs(60), &vms)
}

fn health() -> Health {
    health_of(&[("vm1", &["os", "data"])])
}

fn vm(h: &Health) -> VmHealth {
    h.report().vms.remove(0)
}

#[tokio::test(start_paused = true)]
async fn rpo_above_the_threshold_warns_and_far_above_is_critical() {
    let h = health();
    let t0 = "2025-01-06T12:00:00Z".parse().unwrap();
    h.committed("vm1", "os", t0);
    h.committed("vm1", "data", t0);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(vm(&h).state, State::Normal);
    tokio::time::sleep(Duration::from_secs(60)).await;
    let v = vm(&h);
    assert_eq!(v.state, State::Warning);
    assert_eq!(v.rpo_seconds, Some(90.0));
    assert!(
        v.reasons[0].contains("above the threshold"),
        "{:?}",
        v.reasons
    );
    tokio::time::sleep(Duration::from_secs(200)).await;
    assert_eq!(vm(&h).state, State::Critical);
    h.committed("vm1", "os", h.clock.now_utc());
    h.committed("vm1", "data", h.clock.now_utc());
    assert_eq!(vm(&h).state, State::Normal);
}

#[tokio::test(start_paused = true)]
async fn once_the_vm_has_a_point_its_rpo_is_that_points_age_for_every_disk() {
    let h = health();
    let t0: Timestamp = "2025-01-06T12:00:00Z".parse().unwrap();
    assert_eq!(vm(&h).latest_point, None);
    // Disk commits of the next switch arrive one by one: the VM's point is older.
    h.point_committed("vm1", 4, t0, true);
    tokio::time::sleep(Duration::from_secs(40)).await;
    h.committed("vm1", "os", h.clock.now_utc());
    let v = vm(&h);
    assert_eq!(v.rpo_seconds, Some(40.0));
    assert!(v.disks.iter().all(|d| d.rpo_seconds == Some(40.0)), "{v:?}");
    let p = v.latest_point.unwrap();
    assert_eq!(
        (p.id, p.unix, p.consistent),
        (4, t0.as_second() as u64, true)
    );
    assert_eq!(p.time, "2025-01-06T12:00:00Z");
    // An older point reported late does not go back.
    h.point_committed("vm1", 3, t0, false);
    assert_eq!(vm(&h).latest_point.unwrap().id, 4);
    h.point_committed("vm1", 5, h.clock.now_utc(), true);
    assert_eq!(vm(&h).rpo_seconds, Some(0.0));
}

#[tokio::test(start_paused = true)]
async fn a_retried_error_warns_with_the_next_retry_and_a_refusal_is_critical() {
    let h = health();
    let net = Classified {
        class: "network",
        recoverable: true,
        advice: "retrying",
    };
    h.failed(
        &net,
        "receiver rx: timed out",
        Some(Duration::from_secs(120)),
    );
    let v = vm(&h);
    assert_eq!(v.state, State::Warning);
    assert_eq!(v.next_retry.as_deref(), Some("2025-01-06T12:02:00Z"));
    assert_eq!(v.last_error.as_ref().unwrap().class, "network");
    h.progressed();
    assert_eq!(vm(&h).state, State::Normal);
    let auth = Classified {
        class: "unauthorized",
        recoverable: false,
        advice: "check --allow",
    };
    h.failed(&auth, "refused", None);
    let v = vm(&h);
    assert_eq!(v.state, State::Critical);
    assert_eq!(v.next_retry, None);
    h.progressed();
    assert_eq!(
        vm(&h).state,
        State::Critical,
        "a refusal waits for an operator"
    );
}

#[tokio::test(start_paused = true)]
async fn a_long_initial_copy_has_no_rpo_and_an_added_vm_keeps_its_own_threshold() {
    let h = health();
    tokio::time::sleep(Duration::from_secs(3600)).await;
    let v = vm(&h);
    assert_eq!(v.state, State::Normal, "{:?}", v.reasons);
    assert_eq!(v.rpo_seconds, None);
    h.add_vm("vm2", &["db".into()], Some(Duration::from_secs(600)));
    let t0 = h.clock.now_utc();
    h.committed("vm1", "os", t0);
    h.committed("vm1", "data", t0);
    h.committed("vm2", "db", t0);
    tokio::time::sleep(Duration::from_secs(120)).await;
    let r = h.report();
    assert_eq!(r.vms[0].state, State::Warning, "vm1: threshold 60 s");
    assert_eq!(r.vms[1].vm, "vm2");
    assert_eq!(r.vms[1].state, State::Normal, "vm2: threshold 600 s");
    assert_eq!(r.vms[1].rpo_threshold_seconds, 600.0);
}

#[tokio::test(start_paused = true)]
async fn a_disk_needing_resync_warns_and_health_json_is_written() {
    let h = health();
    h.committed("vm1", "os", h.clock.now_utc());
    h.committed("vm1", "data", h.clock.now_utc());
    h.resync_required("vm1", "data", Some("log 3 missing".into()));
    let v = vm(&h);
    assert_eq!(v.state, State::Warning);
    assert_eq!(v.disks[0].disk, "data");
    assert_eq!(v.disks[0].state, State::Warning);
    assert_eq!(v.disks[1].state, State::Normal);
    let dir = tempfile::tempdir().unwrap();
    let p = h.write(&dir.path().join("state")).unwrap();
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
    assert_eq!(j["vms"][0]["state"], "Warning");
    assert_eq!(j["vms"][0]["disks"][0]["resync_required"], "log 3 missing");
}

#[tokio::test]
async fn the_periodic_writer_keeps_health_json_current() {
    let h = Arc::new(health());
    h.committed("vm1", "os", h.clock.now_utc());
    h.committed("vm1", "data", h.clock.now_utc());
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let task = tokio::spawn(h.clone().run_writer(state.clone()));
    let read = |want: &str| {
        let p = state.join("health.json");
        let want = want.to_string();
        async move {
            for _ in 0..50 {
                if let Ok(b) = std::fs::read(&p) {
                    let j: serde_json::Value = serde_json::from_slice(&b).unwrap();
                    if j["vms"][0]["state"] == want.as_str() {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("{} never said {want}", p.display());
        }
    };
    read("Normal").await;
    h.resync_required("vm1", "data", Some("log 3 missing".into()));
    read("Warning").await;
    task.abort();
}
