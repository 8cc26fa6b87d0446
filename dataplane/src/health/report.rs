//! What the health model says: the report shapes (`health.json`, the control channel's
//! status, `/v1/vms`), the rules that turn a VM's recorded state into its state and reasons
//! (the severity of each [`Condition`]), and the file the report is written to. The
//! parent module records what happened; this one only reads it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::{Condition, Health, State, VmState, CRITICAL_FACTOR};

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

impl Health {
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
        let _file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        std::fs::create_dir_all(dir)?;
        let path = dir.join("health.json");
        let tmp = dir.join(".health.json.tmp");
        let text = serde_json::to_vec_pretty(&self.report()).map_err(std::io::Error::other)?;
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &path)?;
        Ok(path)
    }

    /// Writes the report every second until dropped. Each write runs on a blocking thread:
    /// replacing the file frees the old one's blocks, and on a filesystem mounted with
    /// `discard` that waits for the device (54 ms per write while the disk was busy with a
    /// receiver's writes, `bench/results/ANALYSIS.md` session 22), time a runtime worker
    /// of the copy must not spend.
    pub async fn run_writer(self: std::sync::Arc<Self>, dir: PathBuf) {
        loop {
            let (h, d) = (self.clone(), dir.clone());
            let r = tokio::task::spawn_blocking(move || h.write(&d)).await;
            match r {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot write health.json")
                }
                // A panicking writer is a bug; the next second tries again.
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "health.json writer failed")
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// One VM's report as of `now`, against the RPO threshold `th` (seconds).
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
