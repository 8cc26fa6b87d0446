//! The API's JSON form of a sidecar job (see [`JobView`]).

use serde::{Deserialize, Serialize};

use super::state::SidecarJob;
use vdrep_proto::job::{Job, JobKind, JobState, Step};

/// A sidecar job as the API answers it (`GET /v1/jobs`, `ops/openapi.json`'s `Job`) and as
/// `sidecar.json` keeps it: times in Unix seconds, kinds in snake case, a step's detail
/// called `message`. It is a form of the one job record, [`Job`] (times in Unix ms, kinds
/// in kebab case), plus the sidecar's bookkeeping ([`SidecarJob`]); [`JobView::from`] and
/// [`JobView::into_job`] are the one conversion, so the API's shape, the state file and
/// the record cannot drift apart. The shape is the API's contract: existing `sidecar.json`
/// files load, and the schemathesis and sidecar tests check the answers against the schema.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobView {
    /// `job-NNNNNN`.
    pub id: String,
    /// `enable_protection`, `resync` or `test_failover`.
    #[serde(with = "kind_snake")]
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
    pub steps: Vec<StepView>,
    /// Errors met, oldest first (retried ones too).
    pub errors: Vec<String>,
    /// What it produced (e.g. where a test failover put the disks).
    pub result: Option<serde_json::Value>,
    /// The sender process the request was handed to (a restarted sender lost it).
    pub sender_pid: Option<u32>,
    /// When the request was handed to the sender.
    pub requested_unix: Option<u64>,
}

/// One step as the API writes it (a [`Step`] with times in seconds).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepView {
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

/// The record keeps milliseconds; the API (and the sidecar, which steps its jobs once a
/// second) speaks whole seconds.
fn secs(ms: u64) -> u64 {
    ms / 1000
}
fn ms(secs: u64) -> u64 {
    secs.saturating_mul(1000)
}

impl From<&SidecarJob> for JobView {
    fn from(j: &SidecarJob) -> JobView {
        let r = &j.record;
        JobView {
            id: r.id.clone(),
            kind: r.kind,
            vm: r.vm.clone(),
            state: r.state,
            created_unix: secs(r.start_ms),
            not_before_unix: j.not_before_unix,
            ended_unix: r.end_ms.map(secs),
            steps: r
                .steps
                .iter()
                .map(|s| StepView {
                    name: s.name.clone(),
                    state: s.state,
                    started_unix: s.start_ms.map(secs),
                    ended_unix: s.end_ms.map(secs),
                    message: s.detail.clone(),
                })
                .collect(),
            errors: j.errors.clone(),
            result: j.result.clone(),
            sender_pid: j.sender_pid,
            requested_unix: j.requested_unix,
        }
    }
}

impl From<SidecarJob> for JobView {
    fn from(j: SidecarJob) -> JobView {
        JobView::from(&j)
    }
}

impl JobView {
    /// The record and the sidecar's bookkeeping this view describes. The record's `error`
    /// is the last error met once the job failed (the view lists them all in `errors`).
    pub fn into_job(self) -> SidecarJob {
        let error = (self.state == JobState::Failed)
            .then(|| self.errors.last().cloned())
            .flatten()
            .map(|message| vdrep_proto::job::JobError {
                message,
                recoverable: false,
            });
        SidecarJob {
            record: Job {
                id: self.id,
                kind: self.kind,
                vm: self.vm,
                state: self.state,
                start_ms: ms(self.created_unix),
                end_ms: self.ended_unix.map(ms),
                steps: self
                    .steps
                    .into_iter()
                    .map(|s| Step {
                        name: s.name,
                        state: s.state,
                        start_ms: s.started_unix.map(ms),
                        end_ms: s.ended_unix.map(ms),
                        detail: s.message,
                    })
                    .collect(),
                error,
            },
            not_before_unix: self.not_before_unix,
            errors: self.errors,
            result: self.result,
            sender_pid: self.sender_pid,
            requested_unix: self.requested_unix,
        }
    }
}

impl From<JobView> for SidecarJob {
    fn from(v: JobView) -> SidecarJob {
        v.into_job()
    }
}

/// The API's kind names: the record's, in snake case; only the kinds the sidecar runs.
mod kind_snake {
    use super::JobKind;
    use serde::{Deserialize, Deserializer, Serializer};

    const SIDECAR_KINDS: [JobKind; 3] = [
        JobKind::EnableProtection,
        JobKind::Resync,
        JobKind::TestFailover,
    ];

    pub fn serialize<S: Serializer>(k: &JobKind, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&k.as_str().replace('-', "_"))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<JobKind, D::Error> {
        let s = String::deserialize(d)?;
        JobKind::parse(&s.replace('_', "-"))
            .filter(|k| SIDECAR_KINDS.contains(k) && !s.contains('-'))
            .ok_or_else(|| {
                serde::de::Error::unknown_variant(
                    &s,
                    &["enable_protection", "resync", "test_failover"],
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `sidecar.json` job written before the sidecar used the one record.
    const OLD: &str = r#"{
      "id": "job-000007", "kind": "test_failover", "vm": "vm1", "state": "failed",
      "created_unix": 1700000000, "not_before_unix": 1700000100, "ended_unix": 1700000200,
      "steps": [
        {"name": "materialise", "state": "failed", "started_unix": 1700000150,
         "ended_unix": 1700000200, "message": "no store"},
        {"name": "verify", "state": "queued", "started_unix": null, "ended_unix": null,
         "message": ""}
      ],
      "errors": ["first", "no store"], "result": {"requested_point": 3},
      "sender_pid": 42, "requested_unix": 1700000120
    }"#;

    #[test]
    fn an_old_state_file_job_loads_into_the_record_and_writes_back_the_same() {
        let v: JobView = serde_json::from_str(OLD).unwrap();
        let job = v.into_job();
        assert_eq!(job.record.kind, JobKind::TestFailover);
        assert_eq!(job.record.start_ms, 1_700_000_000_000);
        assert_eq!(job.record.steps[0].detail, "no store");
        assert_eq!(job.record.error.as_ref().unwrap().message, "no store");
        let back = serde_json::to_value(JobView::from(&job)).unwrap();
        let want: serde_json::Value = serde_json::from_str(OLD).unwrap();
        assert_eq!(back, want);
    }

    #[test]
    fn kinds_are_the_apis_snake_case_names_and_nothing_else() {
        for (k, name) in [
            (JobKind::EnableProtection, "enable_protection"),
            (JobKind::Resync, "resync"),
            (JobKind::TestFailover, "test_failover"),
        ] {
            let mut job = SidecarJob::queued(Job::queued_at("job-1".into(), k, "vm", &[], 0));
            job.record.kind = k;
            let v = serde_json::to_value(JobView::from(&job)).unwrap();
            assert_eq!(v["kind"], name);
        }
        for bad in ["enable-protection", "initial_replication", "Resync", ""] {
            let text = OLD.replace("\"test_failover\"", &format!("{bad:?}"));
            assert!(
                serde_json::from_str::<JobView>(&text).is_err(),
                "{bad} was accepted"
            );
        }
    }
}
