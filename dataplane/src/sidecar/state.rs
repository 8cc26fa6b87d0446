//! The sidecar's durable state in `--state DIR`: jobs, the bandwidth policy and each VM's
//! replication policy, in one JSON file replaced atomically (write, fsync, rename, fsync
//! the folder) after every change, so a restart — of the sidecar or of the machine — keeps
//! them.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::policy::ReplicationPolicy;
use crate::throttle::PolicyDocument;

pub use vdrep_proto::job::{Job, JobKind, JobState};

/// A job the sidecar runs (enable protection, resync, test failover): the one job record,
/// [`Job`], and what the sidecar keeps about handing it to the sender. The API and
/// `sidecar.json` write it as its `JobView` (`job_view.rs`). The record's times
/// are Unix ms; the sidecar's clock here is whole Unix seconds (`now` below).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(into = "super::job_view::JobView", from = "super::job_view::JobView")]
pub struct SidecarJob {
    /// The job: id (`job-NNNNNN`), kind, VM, state, times, steps.
    pub record: Job,
    /// Not before this time, Unix seconds (a scheduled resync waits for its window).
    pub not_before_unix: Option<u64>,
    /// Errors met, oldest first (retried ones too).
    pub errors: Vec<String>,
    /// What it produced (e.g. where a test failover put the disks).
    pub result: Option<serde_json::Value>,
    /// The sender process the request was handed to (a restarted sender lost it).
    pub sender_pid: Option<u32>,
    /// When the request was handed to the sender, Unix seconds.
    pub requested_unix: Option<u64>,
}

impl SidecarJob {
    /// A job nothing has happened to yet.
    pub fn queued(record: Job) -> SidecarJob {
        SidecarJob {
            record,
            not_before_unix: None,
            errors: Vec::new(),
            result: None,
            sender_pid: None,
            requested_unix: None,
        }
    }

    /// Sets step `i`'s state and message, with its timings, at `now` (Unix seconds).
    pub fn step(&mut self, i: usize, state: JobState, message: impl Into<String>, now: u64) {
        self.record
            .set_step_at(i, state, message, now.saturating_mul(1000));
    }

    /// Ends the job at `now` (Unix seconds). A failed job's record carries the last error
    /// met (permanent: the sidecar retries transient ones itself and never ends on them).
    pub fn finish(&mut self, state: JobState, now: u64) {
        self.record.end_at(state, now.saturating_mul(1000));
        if state == JobState::Failed {
            self.record.error = self
                .errors
                .last()
                .map(|message| vdrep_proto::job::JobError {
                    message: message.clone(),
                    recoverable: false,
                });
        }
    }
}

/// Everything the sidecar keeps.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct State {
    /// Format version.
    pub version: u32,
    /// Next job number.
    pub next_job: u64,
    /// Every job, oldest first.
    pub jobs: Vec<SidecarJob>,
    /// The host's bandwidth policy.
    pub bandwidth: PolicyDocument,
    /// Replication policy per VM.
    pub policies: BTreeMap<String, ReplicationPolicy>,
}

/// Jobs kept: the oldest finished ones are dropped beyond this.
const MAX_JOBS: usize = 1000;

/// The state file in its folder.
#[derive(Debug)]
pub struct Store {
    file: PathBuf,
}

impl Store {
    /// Opens (creating the folder) and loads the state; a missing file is a fresh state.
    pub fn open(dir: &Path) -> Result<(Store, State), String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let file = dir.join("sidecar.json");
        let state = match std::fs::read(&file) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| format!("{}: unreadable state: {e}", file.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State {
                version: 1,
                next_job: 1,
                ..Default::default()
            },
            Err(e) => return Err(format!("{}: {e}", file.display())),
        };
        Ok((Store { file }, state))
    }

    /// Replaces the file with `state`, durably.
    pub fn save(&self, state: &mut State) -> Result<(), String> {
        while state.jobs.len() > MAX_JOBS {
            match state.jobs.iter().position(|j| j.record.state.is_final()) {
                Some(i) => {
                    state.jobs.remove(i);
                }
                None => break,
            }
        }
        let tmp = self.file.with_extension("json.tmp");
        let err = |e: std::io::Error| format!("{}: {e}", tmp.display());
        let body = serde_json::to_vec_pretty(state).map_err(|e| e.to_string())?;
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(&body).map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, &self.file).map_err(err)?;
        if let Some(dir) = self.file.parent() {
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

/// A new job with its steps queued, asked for at `now` (Unix seconds).
pub fn new_job(state: &mut State, kind: JobKind, vm: &str, steps: &[&str], now: u64) -> SidecarJob {
    let id = format!("job-{:06}", state.next_job.max(1));
    state.next_job = state.next_job.max(1) + 1;
    SidecarJob::queued(Job::queued_at(
        id,
        kind,
        vm,
        steps,
        now.saturating_mul(1000),
    ))
}
