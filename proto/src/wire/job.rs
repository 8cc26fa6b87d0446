//! Job reports on the control stream (DESIGN.md §1: enable protection, initial replication,
//! finalize protection and test failover are jobs with steps, timings and errors).
//!
//! The frame carries the one job record ([`crate::job::Job`]). Jobs are recorded where the
//! protection lives, in the store: the sender reports each of its jobs, whole, with [`super::Control::ReportJob`] whenever it changes, and the receiver
//! records it (replacing an earlier report of the same id) before answering
//! [`super::Control::JobRecorded`]. A whole report per change keeps the receiver stateless
//! about jobs: a report lost with a connection is simply superseded by the next one.
//!
//! Times are Unix milliseconds of the sender's clock; 0 means "not yet" (`None`). Everything
//! is bounded on decode (steps, string lengths) like every other frame, and on encode a
//! longer string is cut to [`MAX_STRING`] (on a character boundary, ending in `...`) and only
//! the last [`MAX_JOB_STEPS`] steps are sent.

use super::codec::{Reader, Writer};
use super::MAX_STRING;
pub use crate::job::{Job, JobError, JobKind, JobState, Step};
use crate::FormatError;

/// Most steps one job report may carry.
pub const MAX_JOB_STEPS: usize = 256;

/// Cuts a string to fit a wire string field (on a character boundary).
fn fit(s: &str) -> &str {
    if s.len() <= MAX_STRING {
        return s;
    }
    let mut end = MAX_STRING - 3;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn write_str(w: &mut Writer, s: &str) {
    let cut = fit(s);
    if cut.len() == s.len() {
        w.str(s);
    } else {
        w.str(&format!("{cut}..."));
    }
}

pub(crate) fn write(job: &Job, w: &mut Writer) {
    write_str(w, &job.id);
    w.u8(job.kind.code());
    write_str(w, &job.vm);
    w.u8(job.state.code())
        .u64(job.start_ms)
        .u64(job.end_ms.unwrap_or(0));
    let skip = job.steps.len().saturating_sub(MAX_JOB_STEPS);
    w.u32((job.steps.len() - skip) as u32);
    for s in &job.steps[skip..] {
        write_str(w, &s.name);
        w.u8(s.state.code())
            .u64(s.start_ms.unwrap_or(0))
            .u64(s.end_ms.unwrap_or(0));
        write_str(w, &s.detail);
    }
    match &job.error {
        None => {
            w.u8(0);
        }
        Some(e) => {
            w.u8(1);
            write_str(w, &e.message);
            w.u8(e.recoverable as u8);
        }
    }
}

pub(crate) fn read(r: &mut Reader<'_>, what: &str) -> Result<Job, FormatError> {
    let opt = |v: u64| (v != 0).then_some(v);
    let id = r.str(MAX_STRING)?;
    let kind = r.u8()?;
    let kind = JobKind::from_code(kind)
        .ok_or_else(|| FormatError::new(what, 0, format!("unknown job kind {kind}")))?;
    let vm = r.str(MAX_STRING)?;
    let state = state_r(r, what)?;
    let start_ms = r.u64()?;
    let end_ms = opt(r.u64()?);
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
        steps.push(Step {
            name: r.str(MAX_STRING)?,
            state: state_r(r, what)?,
            start_ms: opt(r.u64()?),
            end_ms: opt(r.u64()?),
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
    Ok(Job {
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

fn state_r(r: &mut Reader<'_>, what: &str) -> Result<JobState, FormatError> {
    let s = r.u8()?;
    JobState::from_code(s)
        .ok_or_else(|| FormatError::new(what, 0, format!("unknown job state {s}")))
}

#[cfg(test)]
mod tests;
