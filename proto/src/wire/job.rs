//! Job reports on the control stream (DESIGN.md §1: enable protection, initial replication,
//! finalize protection and test failover are jobs with steps, timings and errors).
//!
//! Jobs are recorded where the protection lives, in the store: the sender reports each of its
//! jobs, whole, with [`super::Control::ReportJob`] whenever it changes, and the receiver
//! records it (replacing an earlier report of the same id) before answering
//! [`super::Control::JobRecorded`]. A whole report per change keeps the receiver stateless
//! about jobs: a report lost with a connection is simply superseded by the next one.
//!
//! Times are Unix milliseconds of the sender's clock; 0 means "not yet". Everything is
//! bounded on decode (steps, string lengths) like every other frame.

use super::codec::{Reader, Writer};
use super::MAX_STRING;
use crate::FormatError;

/// Most steps one job report may carry.
pub const MAX_JOB_STEPS: usize = 256;

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
}

impl JobKind {
    fn code(self) -> u8 {
        match self {
            JobKind::EnableProtection => 1,
            JobKind::InitialReplication => 2,
            JobKind::FinalizeProtection => 3,
            JobKind::TestFailover => 4,
        }
    }
    fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            1 => JobKind::EnableProtection,
            2 => JobKind::InitialReplication,
            3 => JobKind::FinalizeProtection,
            4 => JobKind::TestFailover,
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
        }
    }
    /// Parses [`JobKind::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        [
            JobKind::EnableProtection,
            JobKind::InitialReplication,
            JobKind::FinalizeProtection,
            JobKind::TestFailover,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// Where a job or a step is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
    fn code(self) -> u8 {
        match self {
            JobState::Queued => 0,
            JobState::Running => 1,
            JobState::Succeeded => 2,
            JobState::Failed => 3,
        }
    }
    fn from_code(c: u8) -> Option<Self> {
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobStep {
    /// What the step does, e.g. "disks readable".
    pub name: String,
    /// Its state.
    pub state: JobState,
    /// Start, Unix ms (0: not started).
    pub start_ms: u64,
    /// End, Unix ms (0: not finished).
    pub end_ms: u64,
    /// What it found or did, for operators.
    pub detail: String,
}

/// Why a job failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobError {
    /// One line naming the file or peer and the problem.
    pub message: String,
    /// Whether retrying later may help (DESIGN.md §1).
    pub recoverable: bool,
}

/// A whole job as the sender reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobReport {
    /// Unique id (the sender makes it: time and randomness).
    pub id: String,
    /// What the job does.
    pub kind: JobKind,
    /// The VM it concerns (authorised like disks: a sender reports only its own VMs).
    pub vm: String,
    /// Its state.
    pub state: JobState,
    /// Start, Unix ms.
    pub start_ms: u64,
    /// End, Unix ms (0: not finished).
    pub end_ms: u64,
    /// Its steps, in order.
    pub steps: Vec<JobStep>,
    /// Set when the job failed.
    pub error: Option<JobError>,
}

impl JobReport {
    pub(crate) fn write(&self, w: &mut Writer) {
        w.str(&self.id)
            .u8(self.kind.code())
            .str(&self.vm)
            .u8(self.state.code())
            .u64(self.start_ms)
            .u64(self.end_ms);
        w.u32(self.steps.len() as u32);
        for s in &self.steps {
            w.str(&s.name)
                .u8(s.state.code())
                .u64(s.start_ms)
                .u64(s.end_ms)
                .str(&s.detail);
        }
        match &self.error {
            None => {
                w.u8(0);
            }
            Some(e) => {
                w.u8(1).str(&e.message).u8(e.recoverable as u8);
            }
        }
    }

    pub(crate) fn read(r: &mut Reader<'_>, what: &str) -> Result<JobReport, FormatError> {
        let id = r.str(MAX_STRING)?;
        let kind = r.u8()?;
        let kind = JobKind::from_code(kind)
            .ok_or_else(|| FormatError::new(what, 0, format!("unknown job kind {kind}")))?;
        let vm = r.str(MAX_STRING)?;
        let state = state_r(r, what)?;
        let start_ms = r.u64()?;
        let end_ms = r.u64()?;
        let n = r.u32()? as usize;
        if n > MAX_JOB_STEPS {
            return Err(FormatError::new(
                what,
                0,
                format!("{n} job steps exceed the limit of {MAX_JOB_STEPS}"),
            ));
        }
        // Each step takes at least 26 bytes, so `n` is also bounded by the body; no
        // allocation up front either way.
        let mut steps = Vec::new();
        for _ in 0..n {
            steps.push(JobStep {
                name: r.str(MAX_STRING)?,
                state: state_r(r, what)?,
                start_ms: r.u64()?,
                end_ms: r.u64()?,
                detail: r.str(MAX_STRING)?,
            });
        }
        let error = if r.bool()? {
            Some(JobError {
                message: r.str(MAX_STRING)?,
                recoverable: r.bool()?,
            })
        } else {
            None
        };
        Ok(JobReport {
            id,
            kind,
            vm,
            state,
            start_ms,
            end_ms,
            steps,
            error,
        })
    }
}

fn state_r(r: &mut Reader<'_>, what: &str) -> Result<JobState, FormatError> {
    let s = r.u8()?;
    JobState::from_code(s)
        .ok_or_else(|| FormatError::new(what, 0, format!("unknown job state {s}")))
}

#[cfg(test)]
mod tests;
