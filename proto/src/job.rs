//! The job record (DESIGN.md §1): enable protection, initial replication, finalize protection,
//! test failover and resync, each with an id, a state, steps, timings and an error that says
//! whether a retry can help.
//!
//! One type for every place a job lives: the sender builds it, the control stream carries it
//! (`wire::Control::ReportJob`, encoded in `wire/job.rs`), the store keeps it as JSON in the
//! VM's `jobs.json`, `vdrep jobs` lists it, and the sidecar runs its API's jobs with it (its
//! JSON view, `sidecar/job_view.rs` in `vdrep`, writes the same record in the API's shape). Times are Unix milliseconds given as values
//! (this crate reads no clock); `None` is "not yet", which the wire writes as 0.

use serde::{Deserialize, Serialize};

/// What a job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum JobKind {
    /// Prerequisite checks and creating the replication relationship.
    EnableProtection,
    /// The initial copy of every disk of a VM.
    InitialReplication,
    /// Marking the VM protected once its initial copies are committed.
    FinalizeProtection,
    /// Materialising a recovery point as fixed VHDs.
    TestFailover,
    /// Resynchronising a VM's disks (asked through the sidecar's API; a sender reports none).
    Resync,
}

impl JobKind {
    pub(crate) fn code(self) -> u8 {
        match self {
            JobKind::EnableProtection => 1,
            JobKind::InitialReplication => 2,
            JobKind::FinalizeProtection => 3,
            JobKind::TestFailover => 4,
            JobKind::Resync => 5,
        }
    }
    pub(crate) fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            1 => JobKind::EnableProtection,
            2 => JobKind::InitialReplication,
            3 => JobKind::FinalizeProtection,
            4 => JobKind::TestFailover,
            5 => JobKind::Resync,
            _ => return None,
        })
    }
    /// The name operators see (`vdrep jobs`, JSON).
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::EnableProtection => "enable-protection",
            JobKind::InitialReplication => "initial-replication",
            JobKind::FinalizeProtection => "finalize-protection",
            JobKind::TestFailover => "test-failover",
            JobKind::Resync => "resync",
        }
    }
    /// Parses [`JobKind::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        [
            JobKind::EnableProtection,
            JobKind::InitialReplication,
            JobKind::FinalizeProtection,
            JobKind::TestFailover,
            JobKind::Resync,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// Where a job or a step is: one state for every job, the sender's and the sidecar's
/// (whose API and `sidecar.json` write it in lower case, as [`JobState::as_str`] does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum JobState {
    /// Not started.
    Queued,
    /// Started, not finished.
    Running,
    /// Finished well.
    Succeeded,
    /// Finished with an error.
    Failed,
}

impl JobState {
    /// Every state, for the jobs-by-state gauge.
    pub const ALL: [JobState; 4] = [
        JobState::Queued,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
    ];

    pub(crate) fn code(self) -> u8 {
        match self {
            JobState::Queued => 0,
            JobState::Running => 1,
            JobState::Succeeded => 2,
            JobState::Failed => 3,
        }
    }
    pub(crate) fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            0 => JobState::Queued,
            1 => JobState::Running,
            2 => JobState::Succeeded,
            3 => JobState::Failed,
            _ => return None,
        })
    }
    /// The name operators see.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
        }
    }
    /// Parses [`JobState::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        [
            JobState::Queued,
            JobState::Running,
            JobState::Succeeded,
            JobState::Failed,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
    /// Succeeded or failed.
    pub fn is_final(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed)
    }
}

/// One step of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// What the step checks or does.
    pub name: String,
    /// queued, running, succeeded or failed.
    #[serde(with = "state_str")]
    pub state: JobState,
    /// Start, Unix ms (`null`: not started).
    pub start_ms: Option<u64>,
    /// End, Unix ms (`null`: not finished).
    pub end_ms: Option<u64>,
    /// What it found or did.
    pub detail: String,
}

/// Why a job failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobError {
    /// One line naming the file or peer and the problem.
    pub message: String,
    /// Whether retrying later may help.
    pub recoverable: bool,
}

/// A job as stored and listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Job {
    /// Unique id.
    pub id: String,
    /// enable-protection, initial-replication, finalize-protection or test-failover.
    #[serde(with = "kind_str")]
    pub kind: JobKind,
    /// The VM.
    pub vm: String,
    /// queued, running, succeeded or failed.
    #[serde(with = "state_str")]
    pub state: JobState,
    /// Start, Unix ms.
    pub start_ms: u64,
    /// End, Unix ms (`null` while running).
    pub end_ms: Option<u64>,
    /// Steps in order.
    pub steps: Vec<Step>,
    /// Set when the job failed.
    pub error: Option<JobError>,
}

impl Job {
    /// A new running job started at `now` (Unix ms); the id sorts by time and is unique
    /// with high probability given 48 random bits in `nonce`.
    pub fn start_at(kind: JobKind, vm: &str, now: u64, nonce: u64) -> Job {
        let r: u64 = nonce & 0xffff_ffff_ffff;
        Job {
            id: format!("{now:013}-{}-{r:012x}", kind.as_str()),
            kind,
            vm: vm.to_string(),
            state: JobState::Running,
            start_ms: now,
            end_ms: None,
            steps: Vec::new(),
            error: None,
        }
    }

    /// A job asked for at `now` (Unix ms) that has not started, its steps queued: the
    /// sidecar's jobs, which wait for a window or for the sender, begin so.
    pub fn queued_at(id: String, kind: JobKind, vm: &str, steps: &[&str], now: u64) -> Job {
        let mut job = Job {
            id,
            kind,
            vm: vm.to_string(),
            state: JobState::Queued,
            start_ms: now,
            end_ms: None,
            steps: Vec::new(),
            error: None,
        };
        job.plan(steps);
        job
    }

    /// Sets step number `i` (in plan order) to `state` with `detail` at `now`: it starts
    /// when it first leaves `Queued` and ends when it first becomes final. A job driven by
    /// someone else's progress (the sidecar's, from the sender's status) moves its steps so.
    /// No step `i`: nothing happens.
    pub fn set_step_at(&mut self, i: usize, state: JobState, detail: impl Into<String>, now: u64) {
        if let Some(s) = self.steps.get_mut(i) {
            if s.start_ms.is_none() && state != JobState::Queued {
                s.start_ms = Some(now);
            }
            if state.is_final() && s.end_ms.is_none() {
                s.end_ms = Some(now);
            }
            s.state = state;
            s.detail = detail.into();
        }
    }

    /// Ends the job in `state` at `now`, its steps left as they are (each was set already).
    pub fn end_at(&mut self, state: JobState, now: u64) {
        self.state = state;
        self.end_ms = Some(now);
    }

    /// Adds steps that will run, queued, so a listing shows the plan.
    pub fn plan(&mut self, names: &[&str]) {
        for n in names {
            self.steps.push(Step {
                name: n.to_string(),
                state: JobState::Queued,
                start_ms: None,
                end_ms: None,
                detail: String::new(),
            });
        }
    }

    /// Starts a step: the queued one of that name, or a new one. A step of that name
    /// already running stays as it is (a copy resumed after a reconnect is one step).
    pub fn begin_at(&mut self, name: &str, now: u64) {
        if let Some(s) = self
            .steps
            .iter_mut()
            .find(|s| s.name == name && !s.state.is_final())
        {
            if s.state == JobState::Queued {
                s.state = JobState::Running;
                s.start_ms = Some(now);
            }
            return;
        }
        self.steps.push(Step {
            name: name.to_string(),
            state: JobState::Running,
            start_ms: Some(now),
            end_ms: None,
            detail: String::new(),
        });
    }

    fn finish_step(&mut self, name: &str, state: JobState, detail: &str, now: u64) {
        match self
            .steps
            .iter_mut()
            .rev()
            .find(|s| s.name == name && !s.state.is_final())
        {
            Some(s) => {
                s.state = state;
                s.start_ms = s.start_ms.or(Some(now));
                s.end_ms = Some(now);
                s.detail = detail.to_string();
            }
            None => self.steps.push(Step {
                name: name.to_string(),
                state,
                start_ms: Some(now),
                end_ms: Some(now),
                detail: detail.to_string(),
            }),
        }
    }

    /// Marks step `name` succeeded at `now` (adding it if it was never begun).
    pub fn step_ok_at(&mut self, name: &str, detail: &str, now: u64) {
        self.finish_step(name, JobState::Succeeded, detail, now);
    }

    /// Marks step `name` failed at `now`.
    pub fn step_failed_at(&mut self, name: &str, detail: &str, now: u64) {
        self.finish_step(name, JobState::Failed, detail, now);
    }

    /// Updates the detail of a running step.
    pub fn step_detail(&mut self, name: &str, detail: &str) {
        if let Some(s) = self.steps.iter_mut().rev().find(|s| s.name == name) {
            s.detail = detail.to_string();
        }
    }

    /// The job succeeded at `now` (steps still running are marked succeeded too).
    pub fn succeed_at(&mut self, now: u64) {
        for s in &mut self.steps {
            if !s.state.is_final() {
                s.state = JobState::Succeeded;
                s.end_ms = Some(now);
            }
        }
        self.state = JobState::Succeeded;
        self.end_ms = Some(now);
    }

    /// The job failed at `now`: running steps fail with it, queued ones stay queued.
    pub fn fail_at(&mut self, message: &str, recoverable: bool, now: u64) {
        // The failure belongs to the running steps; with none running (failed between two
        // steps), to the first step that had not started. Later steps stay queued: they
        // never ran.
        let running = self.steps.iter().any(|s| s.state == JobState::Running);
        let first_queued = self.steps.iter().position(|s| s.state == JobState::Queued);
        for (i, s) in self.steps.iter_mut().enumerate() {
            if s.state == JobState::Running || (!running && Some(i) == first_queued) {
                s.state = JobState::Failed;
                s.end_ms = Some(now);
                if s.detail.is_empty() {
                    s.detail = message.to_string();
                }
            }
        }
        self.state = JobState::Failed;
        self.end_ms = Some(now);
        self.error = Some(JobError {
            message: message.to_string(),
            recoverable,
        });
    }
}

mod kind_str {
    use super::JobKind;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(k: &JobKind, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(k.as_str())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<JobKind, D::Error> {
        let s = String::deserialize(d)?;
        JobKind::parse(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown job kind {s:?}")))
    }
}

mod state_str {
    use super::JobState;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(k: &JobState, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(k.as_str())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<JobState, D::Error> {
        let s = String::deserialize(d)?;
        JobState::parse(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown job state {s:?}")))
    }
}
