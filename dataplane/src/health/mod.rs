//! Health of each protected VM and disk: Normal, Warning or Critical, with the reasons, the
//! last error, the next retry and the RPO (the age of the newest recovery point the receiver
//! committed), written as `health.json` into the sender's `--state DIR` for `vdrep status`.
//!
//! - **Critical**: a non-recoverable error (the VM waits for an operator), or an RPO more
//!   than [`CRITICAL_FACTOR`] times the threshold.
//! - **Warning**: retrying a recoverable error, an RPO above the threshold, a disk that
//!   needs (or runs) a resync.
//! - **Normal** otherwise.
//!
//! The RPO threshold is per policy: by default twice the replication interval plus a minute
//! ([`default_rpo_threshold`]). Before the first recovery point (initial replication) there is
//! no RPO and it does not count against health: a long initial copy is not an outage.
//!
//! This is the one health model of a sender: `health.json`, the control channel's status
//! (each disk's health, reason, RPO and next retry, and [`Report::vms`] whole), the health
//! gauge of the metrics and the sidecar's `/v1/vms` all come from [`Health::report`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::clock::SharedClock;

mod own;
mod severity;

pub use severity::{lowercase, Condition, State};

/// The RPO threshold without one configured: twice the interval, plus a minute so that a
/// short interval does not warn on every slow commit.
pub fn default_rpo_threshold(interval: Duration) -> Duration {
    interval * 2 + Duration::from_secs(60)
}

/// An RPO this many times the threshold makes a VM Critical.
pub const CRITICAL_FACTOR: u32 = 4;

/// The last error seen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastError {
    /// When (RFC 3339, UTC).
    pub at: String,
    /// Short class (`network`, `unauthorized`, …).
    pub class: String,
    /// Whether it is retried.
    pub recoverable: bool,
    /// The error.
    pub message: String,
    /// What to do.
    pub advice: String,
}

/// One disk's report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiskHealth {
    /// Disk name.
    pub disk: String,
    /// State.
    pub state: State,
    /// Why it is not Normal.
    pub reasons: Vec<String>,
    /// The newest recovery point's time (RFC 3339).
    pub newest_point: Option<String>,
    /// Age of the newest recovery point in seconds.
    pub rpo_seconds: Option<f64>,
    /// Why a resync is required, if it is.
    pub resync_required: Option<String>,
    /// A resync is running.
    pub resync_running: bool,
}

/// The newest recovery point of a VM (its VM point), as `/v1/vms` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatestPoint {
    /// The point's id (its VM cycle; `failover --vm VM --point ID`).
    pub id: u64,
    /// The switch instant (RFC 3339, UTC): the point's source time.
    pub time: String,
    /// The switch instant, Unix seconds.
    pub unix: u64,
    /// All disks switched at one instant.
    pub consistent: bool,
}

/// One VM's report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmHealth {
    /// VM name.
    pub vm: String,
    /// Worst state of the VM and its disks.
    pub state: State,
    /// Why it is not Normal.
    pub reasons: Vec<String>,
    /// The last error, until progress is made again.
    pub last_error: Option<LastError>,
    /// When the next attempt is due (RFC 3339), while retrying.
    pub next_retry: Option<String>,
    /// The largest RPO of its disks, in seconds.
    pub rpo_seconds: Option<f64>,
    /// The RPO threshold in seconds.
    pub rpo_threshold_seconds: f64,
    /// The VM's newest recovery point (`None` before its first VM point this run, or
    /// with a receiver that keeps per-disk points only).
    #[serde(default)]
    pub latest_point: Option<LatestPoint>,
    /// Per disk.
    pub disks: Vec<DiskHealth>,
}

/// The file `health.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// When it was written (RFC 3339).
    pub updated: String,
    /// The bandwidth policy in force.
    pub bandwidth: String,
    /// Per VM.
    pub vms: Vec<VmHealth>,
}

#[derive(Debug, Default)]
struct DiskState {
    newest_point: Option<Timestamp>,
    /// Switch times of cycles not committed yet: a cycle's recovery point is the moment
    /// its log was closed.
    switched: BTreeMap<u64, Timestamp>,
    resync: Option<String>,
    resync_running: bool,
}

#[derive(Debug, Default)]
struct VmState {
    disks: BTreeMap<String, DiskState>,
    last_error: Option<LastError>,
    critical: bool,
    next_retry: Option<Timestamp>,
    /// This VM's RPO threshold (`None`: the sender's).
    threshold: Option<Duration>,
    /// The newest VM point: id, switch instant, consistent.
    latest_point: Option<(u64, Timestamp, bool)>,
    /// `last_error` is the VM's own (its change source failed while the other VMs went
    /// on): only the VM's own progress clears it ([`own`]).
    own: bool,
}

/// The health of every VM of a sender.
#[derive(Debug)]
pub struct Health {
    clock: SharedClock,
    threshold: Duration,
    vms: Mutex<BTreeMap<String, VmState>>,
    bandwidth: Mutex<String>,
}

impl Health {
    /// Health of `vms` (name, disk names), RPO threshold `threshold`.
    pub fn new(clock: SharedClock, threshold: Duration, vms: &[(String, Vec<String>)]) -> Self {
        let mut m = BTreeMap::new();
        for (vm, disks) in vms {
            let mut s = VmState::default();
            for d in disks {
                s.disks.insert(d.clone(), DiskState::default());
            }
            m.insert(vm.clone(), s);
        }
        Health {
            clock,
            threshold,
            vms: Mutex::new(m),
            bandwidth: Mutex::new(String::new()),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut BTreeMap<String, VmState>) -> R) -> Option<R> {
        self.vms.lock().ok().map(|mut g| f(&mut g))
    }

    fn disk<R>(&self, vm: &str, disk: &str, f: impl FnOnce(&mut DiskState) -> R) -> Option<R> {
        self.with(|m| {
            m.entry(vm.to_string())
                .or_default()
                .disks
                .entry(disk.to_string())
                .or_default();
            m.get_mut(vm).and_then(|v| v.disks.get_mut(disk)).map(f)
        })
        .flatten()
    }

    /// Adds a VM protected from now on (enabled at run time), with its own RPO threshold
    /// (`None`: the sender's).
    pub fn add_vm(&self, vm: &str, disks: &[String], threshold: Option<Duration>) {
        self.with(|m| {
            let v = m.entry(vm.to_string()).or_default();
            v.threshold = threshold;
            for d in disks {
                v.disks.entry(d.clone()).or_default();
            }
        });
    }

    /// The receiver committed a recovery point of `vm`/`disk` taken at `at`; an error of
    /// the past is over.
    pub fn committed(&self, vm: &str, disk: &str, at: Timestamp) {
        self.disk(vm, disk, |d| {
            d.newest_point = Some(d.newest_point.map_or(at, |p| p.max(at)));
            d.resync_running = false;
        });
        self.progressed();
        self.own_progress(vm);
    }

    /// The log of `cycle` was closed at `at`: that is the recovery point's time.
    pub fn switched(&self, vm: &str, disk: &str, cycle: u64, at: Timestamp) {
        self.disk(vm, disk, |d| {
            d.switched.insert(cycle, at);
        });
    }

    /// The receiver committed `cycle`: its recovery point (the switch time, or now when the
    /// switch happened in an earlier run) is the newest.
    pub fn cycle_committed(&self, vm: &str, disk: &str, cycle: u64) {
        let now = self.clock.now_utc();
        let at = self
            .disk(vm, disk, |d| {
                let at = d.switched.get(&cycle).copied();
                d.switched.retain(|&c, _| c > cycle);
                at
            })
            .flatten()
            .unwrap_or(now);
        self.committed(vm, disk, at);
    }

    /// The receiver recorded VM point `id` of `vm`, switched at `at`: from now on the VM's
    /// RPO (reported for each of its disks) is that point's age.
    pub fn point_committed(&self, vm: &str, id: u64, at: Timestamp, consistent: bool) {
        self.with(|m| {
            let v = m.entry(vm.to_string()).or_default();
            if v.latest_point.is_none_or(|(old, _, _)| old < id) {
                v.latest_point = Some((id, at, consistent));
            }
        });
        self.progressed();
        self.own_progress(vm);
    }

    /// Durable progress was made: errors are over.
    pub fn progressed(&self) {
        self.with(|m| {
            for v in m.values_mut() {
                // A VM's own fault is cleared by its own progress only.
                if !v.critical && !v.own {
                    v.last_error = None;
                    v.next_retry = None;
                }
            }
        });
    }

    /// The record of a failure now, and when its retry is due (`None`: no retry), for the
    /// connection's failures ([`Health::failed`]) and a VM's own ([`own`]) alike.
    fn failure(
        &self,
        class: &crate::retry::Classified,
        message: &str,
        next_retry: Option<Duration>,
    ) -> (LastError, Option<Timestamp>) {
        let now = self.clock.now_utc();
        let err = LastError {
            at: now.to_string(),
            class: class.class.to_string(),
            recoverable: class.recoverable,
            message: message.to_string(),
            advice: class.advice.to_string(),
        };
        let next = next_retry.and_then(|d| {
            jiff::SignedDuration::try_from(d)
                .ok()
                .and_then(|d| now.checked_add(d).ok())
        });
        (err, next)
    }

    /// An attempt failed with an error affecting every VM of the connection; `next_retry`
    /// `None` means no retry (Critical when not recoverable).
    pub fn failed(
        &self,
        class: &crate::retry::Classified,
        message: &str,
        next_retry: Option<Duration>,
    ) {
        let (err, next) = self.failure(class, message, next_retry);
        self.with(|m| {
            // A VM given up on alone ([`own`]) stays Critical with its own reason.
            for v in m.values_mut().filter(|v| !(v.own && v.critical)) {
                v.last_error = Some(err.clone());
                v.critical = !class.recoverable;
                v.next_retry = next;
                v.own = false;
            }
        });
    }

    /// The receiver refused VM `vm` alone (not authorised for it) while the other VMs of
    /// the connection go on: that VM is Critical with the reason, and stays so until an
    /// attempt that includes it ends otherwise.
    pub fn vm_failed(&self, vm: &str, class: &crate::retry::Classified, message: &str) {
        let err = LastError {
            at: self.clock.now_utc().to_string(),
            class: class.class.to_string(),
            recoverable: class.recoverable,
            message: message.to_string(),
            advice: class.advice.to_string(),
        };
        self.with(|m| {
            let v = m.entry(vm.to_string()).or_default();
            v.last_error = Some(err);
            v.critical = !class.recoverable;
            v.next_retry = None;
        });
    }

    /// `vm`/`disk` needs a resync (`reason`), or no longer does (`None`).
    pub fn resync_required(&self, vm: &str, disk: &str, reason: Option<String>) {
        self.disk(vm, disk, |d| d.resync = reason);
    }

    /// A resync of `vm`/`disk` runs.
    pub fn resync_running(&self, vm: &str, disk: &str, running: bool) {
        self.disk(vm, disk, |d| d.resync_running = running);
    }

    /// Records the bandwidth policy for the report.
    pub fn set_bandwidth(&self, policy: String) {
        if let Ok(mut b) = self.bandwidth.lock() {
            *b = policy;
        }
    }

    /// The report as of now.
    pub fn report(&self) -> Report {
        let now = self.clock.now_utc();
        let th = self.threshold.as_secs_f64();
        let vms = self
            .with(|m| {
                m.iter()
                    .map(|(name, v)| {
                        let th = v.threshold.map_or(th, |t| t.as_secs_f64());
                        vm_report(name, v, now, th)
                    })
                    .collect()
            })
            .unwrap_or_default();
        Report {
            updated: now.to_string(),
            bandwidth: self.bandwidth.lock().map(|b| b.clone()).unwrap_or_default(),
            vms,
        }
    }

    /// Writes `DIR/health.json` (replaced atomically).
    pub fn write(&self, dir: &Path) -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("health.json");
        let tmp = dir.join(".health.json.tmp");
        let text = serde_json::to_vec_pretty(&self.report()).map_err(std::io::Error::other)?;
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &path)?;
        Ok(path)
    }

    /// Writes the report every second until dropped.
    pub async fn run_writer(self: std::sync::Arc<Self>, dir: PathBuf) {
        loop {
            if let Err(e) = self.write(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot write health.json");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

fn vm_report(name: &str, v: &VmState, now: Timestamp, th: f64) -> VmHealth {
    let mut disks = Vec::new();
    for (dname, d) in &v.disks {
        let mut reasons = Vec::new();
        let mut state = State::Normal;
        // The VM's point, once it has one: the VM's RPO for each disk.
        let newest = v.latest_point.map(|(_, at, _)| at).or(d.newest_point);
        let rpo = newest.map(|p| now.duration_since(p).as_secs_f64().max(0.0));
        if let Some(rpo) = rpo.filter(|r| *r > th * CRITICAL_FACTOR as f64) {
            state = Condition::RpoFarAboveThreshold.severity();
            reasons.push(format!(
                "RPO {rpo:.0} s is more than {CRITICAL_FACTOR}× the threshold {th:.0} s"
            ));
        } else if let Some(rpo) = rpo.filter(|r| *r > th) {
            state = Condition::RpoAboveThreshold.severity();
            reasons.push(format!("RPO {rpo:.0} s is above the threshold {th:.0} s"));
        }
        if let Some(r) = &d.resync {
            state = state.max(Condition::ResyncRequired.severity());
            reasons.push(format!("resync required: {r}"));
        }
        if d.resync_running {
            state = state.max(Condition::ResyncRunning.severity());
            reasons.push("resync running".into());
        }
        disks.push(DiskHealth {
            disk: dname.clone(),
            state,
            reasons,
            newest_point: newest.map(|p| p.to_string()),
            rpo_seconds: rpo,
            resync_required: d.resync.clone(),
            resync_running: d.resync_running,
        });
    }
    let mut state = disks.iter().map(|d| d.state).max().unwrap_or(State::Normal);
    let mut reasons: Vec<String> = disks
        .iter()
        .flat_map(|d| d.reasons.iter().map(move |r| format!("{}: {r}", d.disk)))
        .collect();
    if let Some(e) = &v.last_error {
        if v.critical {
            state = state.max(Condition::NotRetried.severity());
            reasons.insert(0, format!("not retried ({}): {}", e.class, e.advice));
        } else {
            state = state.max(Condition::Retrying.severity());
            reasons.insert(0, format!("retrying ({}): {}", e.class, e.message));
        }
    }
    VmHealth {
        vm: name.to_string(),
        state,
        reasons,
        last_error: v.last_error.clone(),
        next_retry: v.next_retry.map(|t| t.to_string()),
        rpo_seconds: disks
            .iter()
            .filter_map(|d| d.rpo_seconds)
            .fold(None, |a: Option<f64>, r| Some(a.map_or(r, |a| a.max(r)))),
        rpo_threshold_seconds: th,
        latest_point: v.latest_point.map(|(id, at, consistent)| LatestPoint {
            id,
            time: at.to_string(),
            unix: at.as_second().max(0) as u64,
            consistent,
        }),
        disks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::TokioClock;
    use crate::retry::Classified;
    use std::sync::Arc;

    fn health() -> Health {
        let clock = Arc::new(TokioClock::starting_at(
            "2025-01-06T12:00:00Z".parse().unwrap(),
        ));
        Health::new(
            clock,
            Duration::from_secs(60),
            &[("vm1".into(), vec!["os".into(), "data".into()])],
        )
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
}
