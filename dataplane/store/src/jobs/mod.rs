//! Jobs (DESIGN.md §1): enable protection, initial replication, finalize protection and test
//! failover, each with an id, a state, steps, timings and an error that says whether a retry
//! can help.
//!
//! Jobs are recorded where the protection lives, in the store beside the VM's replicas
//! ([`file::JobFile`], one file per VM, bounded to the newest [`MAX_JOBS_PER_VM`]). The
//! sender reports its jobs over its control connection ([`vdrep_proto::wire::JobReport`]);
//! what fails before any connection exists is kept in the sender's state folder
//! ([`pending`]) and reported at the next connection. Test failover, which runs against the
//! store directly, records its own job there.

pub mod file;
pub mod pending;

use serde::{Deserialize, Serialize};
use vdrep_proto::wire::{self, JobKind, JobReport, JobState};

pub use file::{JobFile, JobFileError};

/// How many jobs a VM keeps (the newest by start time); older ones are dropped on write.
pub const MAX_JOBS_PER_VM: usize = 100;

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

/// Milliseconds since the Unix epoch (the job clock; times are for operators, never for
/// ordering replication).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Cuts a string to fit a wire string field (on a character boundary).
fn fit(s: &str) -> String {
    let max = wire::MAX_STRING;
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max - 3;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

impl Job {
    /// A new running job started now; the id sorts by time and is unique with high
    /// probability (48 random bits).
    pub fn start(kind: JobKind, vm: &str) -> Job {
        let now = now_ms();
        let r: u64 = rand::random::<u64>() & 0xffff_ffff_ffff;
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
    pub fn begin(&mut self, name: &str) {
        let now = now_ms();
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
            start_ms: Some(now_ms()),
            end_ms: None,
            detail: String::new(),
        });
    }

    fn finish_step(&mut self, name: &str, state: JobState, detail: &str) {
        let now = now_ms();
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

    /// Marks step `name` succeeded (adding it if it was never begun).
    pub fn step_ok(&mut self, name: &str, detail: &str) {
        self.finish_step(name, JobState::Succeeded, detail);
    }

    /// Marks step `name` failed.
    pub fn step_failed(&mut self, name: &str, detail: &str) {
        self.finish_step(name, JobState::Failed, detail);
    }

    /// Updates the detail of a running step.
    pub fn step_detail(&mut self, name: &str, detail: &str) {
        if let Some(s) = self.steps.iter_mut().rev().find(|s| s.name == name) {
            s.detail = detail.to_string();
        }
    }

    /// The job succeeded (steps still running are marked succeeded too).
    pub fn succeed(&mut self) {
        let now = now_ms();
        for s in &mut self.steps {
            if !s.state.is_final() {
                s.state = JobState::Succeeded;
                s.end_ms = Some(now);
            }
        }
        self.state = JobState::Succeeded;
        self.end_ms = Some(now);
    }

    /// The job failed: running steps fail with it, queued ones stay queued.
    pub fn fail(&mut self, message: &str, recoverable: bool) {
        let now = now_ms();
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

    /// The wire form (strings cut to the wire's limits, at most
    /// [`wire::MAX_JOB_STEPS`] steps: the last ones are kept).
    pub fn to_report(&self) -> JobReport {
        let skip = self.steps.len().saturating_sub(wire::MAX_JOB_STEPS);
        JobReport {
            id: fit(&self.id),
            kind: self.kind,
            vm: fit(&self.vm),
            state: self.state,
            start_ms: self.start_ms,
            end_ms: self.end_ms.unwrap_or(0),
            steps: self.steps[skip..]
                .iter()
                .map(|s| wire::JobStep {
                    name: fit(&s.name),
                    state: s.state,
                    start_ms: s.start_ms.unwrap_or(0),
                    end_ms: s.end_ms.unwrap_or(0),
                    detail: fit(&s.detail),
                })
                .collect(),
            error: self.error.as_ref().map(|e| wire::JobError {
                message: fit(&e.message),
                recoverable: e.recoverable,
            }),
        }
    }

    /// From the wire form.
    pub fn from_report(r: &JobReport) -> Job {
        let opt = |v: u64| (v != 0).then_some(v);
        Job {
            id: r.id.clone(),
            kind: r.kind,
            vm: r.vm.clone(),
            state: r.state,
            start_ms: r.start_ms,
            end_ms: opt(r.end_ms),
            steps: r
                .steps
                .iter()
                .map(|s| Step {
                    name: s.name.clone(),
                    state: s.state,
                    start_ms: opt(s.start_ms),
                    end_ms: opt(s.end_ms),
                    detail: s.detail.clone(),
                })
                .collect(),
            error: r.error.as_ref().map(|e| JobError {
                message: e.message.clone(),
                recoverable: e.recoverable,
            }),
        }
    }
}

mod kind_str {
    use serde::{Deserialize, Deserializer, Serializer};
    use vdrep_proto::wire::JobKind;

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
    use serde::{Deserialize, Deserializer, Serializer};
    use vdrep_proto::wire::JobState;

    pub fn serialize<S: Serializer>(k: &JobState, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(k.as_str())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<JobState, D::Error> {
        let s = String::deserialize(d)?;
        JobState::parse(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown job state {s:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_job_fails_its_running_steps_and_survives_the_wire() {
        let mut j = Job::start(JobKind::EnableProtection, "vm1");
        j.begin("disks readable");
        j.step_ok("disks readable", "os: 1 MiB");
        j.begin("receiver reachable and authorised");
        j.fail("receiver x: certificate refused", false);
        assert_eq!(j.state, JobState::Failed);
        assert_eq!(j.steps[0].state, JobState::Succeeded);
        assert_eq!(j.steps[1].state, JobState::Failed);
        assert!(j.end_ms.is_some());
        assert_eq!(Job::from_report(&j.to_report()), j);
    }

    #[test]
    fn a_job_failed_between_steps_fails_the_first_step_not_started_and_leaves_the_rest_queued() {
        let mut j = Job::start(JobKind::InitialReplication, "vm1");
        j.plan(&["copy os", "copy data"]);
        j.fail("interrupted", true);
        assert_eq!(j.steps[0].state, JobState::Failed);
        assert_eq!(j.steps[0].detail, "interrupted");
        assert_eq!(j.steps[1].state, JobState::Queued);
    }

    #[test]
    fn beginning_a_running_step_again_keeps_one_step() {
        let mut j = Job::start(JobKind::InitialReplication, "vm1");
        j.plan(&["copy os"]);
        j.begin("copy os");
        let started = j.steps[0].start_ms;
        j.begin("copy os");
        assert_eq!(j.steps.len(), 1);
        assert_eq!(j.steps[0].start_ms, started);
        j.step_ok("copy os", "done");
        j.begin("copy os");
        assert_eq!(j.steps.len(), 2, "a finished step is not restarted");
    }

    #[test]
    fn overlong_strings_are_cut_to_the_wire_limit() {
        let mut j = Job::start(JobKind::TestFailover, "vm1");
        j.fail(&"é".repeat(5000), true);
        let r = j.to_report();
        let m = &r.error.unwrap().message;
        assert!(m.len() <= wire::MAX_STRING && m.ends_with("..."));
    }
}
