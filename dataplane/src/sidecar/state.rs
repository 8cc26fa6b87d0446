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

pub use vdrep_proto::job::JobState;

/// One step of a job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Step {
    /// What the step does.
    pub name: String,
    /// Its state.
    pub state: JobState,
    /// When it started (Unix seconds).
    pub started_unix: Option<u64>,
    /// When it ended.
    pub ended_unix: Option<u64>,
    /// Progress or outcome in words.
    pub message: String,
}

/// What a job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// Enable protection of a VM with its policy.
    EnableProtection,
    /// Resynchronise a VM's disks.
    Resync,
    /// Materialise a recovery point as bootable fixed VHDs, beside the replicas.
    TestFailover,
}

/// A job (ASR's jobs: listed, drilled into for steps, timings and errors).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    /// `job-NNNNNN`.
    pub id: String,
    /// What it does.
    pub kind: JobKind,
    /// The VM.
    pub vm: String,
    /// Overall state.
    pub state: JobState,
    /// When it was asked for.
    pub created_unix: u64,
    /// Not before this time (a scheduled resync waits for its window).
    pub not_before_unix: Option<u64>,
    /// When it ended.
    pub ended_unix: Option<u64>,
    /// Its steps, in order.
    pub steps: Vec<Step>,
    /// Errors met, oldest first (retried ones too).
    pub errors: Vec<String>,
    /// What it produced (e.g. where a test failover put the disks).
    pub result: Option<serde_json::Value>,
    /// The sender process the request was handed to (a restarted sender lost it).
    pub sender_pid: Option<u32>,
    /// When the request was handed to the sender.
    pub requested_unix: Option<u64>,
}

impl Job {
    /// Sets step `i`'s state and message, with its timings.
    pub fn step(&mut self, i: usize, state: JobState, message: impl Into<String>, now: u64) {
        if let Some(s) = self.steps.get_mut(i) {
            if s.started_unix.is_none() && state != JobState::Queued {
                s.started_unix = Some(now);
            }
            if state.is_final() && s.ended_unix.is_none() {
                s.ended_unix = Some(now);
            }
            s.state = state;
            s.message = message.into();
        }
    }

    /// Ends the job.
    pub fn finish(&mut self, state: JobState, now: u64) {
        self.state = state;
        self.ended_unix = Some(now);
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
    pub jobs: Vec<Job>,
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
            match state.jobs.iter().position(|j| j.state.is_final()) {
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

/// A new job with its steps queued.
pub fn new_job(state: &mut State, kind: JobKind, vm: &str, steps: &[&str], now: u64) -> Job {
    let id = format!("job-{:06}", state.next_job.max(1));
    state.next_job = state.next_job.max(1) + 1;
    Job {
        id,
        kind,
        vm: vm.to_string(),
        state: JobState::Queued,
        created_unix: now,
        not_before_unix: None,
        ended_unix: None,
        steps: steps
            .iter()
            .map(|n| Step {
                name: n.to_string(),
                state: JobState::Queued,
                started_unix: None,
                ended_unix: None,
                message: String::new(),
            })
            .collect(),
        errors: Vec::new(),
        result: None,
        sender_pid: None,
        requested_unix: None,
    }
}
