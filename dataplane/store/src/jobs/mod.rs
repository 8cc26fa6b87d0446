//! Jobs (DESIGN.md §1): enable protection, initial replication, finalize protection and test
//! failover. The record itself is `vdrep-proto`'s [`Job`], one type for the sender that builds
//! it, the control stream that carries it (`Control::ReportJob`), the store that keeps it as
//! JSON ([`crate::sink::JobFile`], one `jobs.json` per VM, bounded to the newest
//! [`MAX_JOBS_PER_VM`]) and `vdrep jobs`. What fails before any connection exists is kept in
//! the sender's state folder (`vdrep::sender::pending`, in the same job file) and reported at the next
//! connection. Test failover, which runs against the store directly, records its own job
//! there.
//!
//! This module adds only the present time ([`JobNow`]); it sits below the stores and roles
//! and imports neither.

pub use vdrep_proto::job::{Job, JobError, JobKind, JobState, Step};

/// How many jobs a VM keeps (the newest by start time); older ones are dropped on write.
pub const MAX_JOBS_PER_VM: usize = 100;

/// Milliseconds since the Unix epoch (the job clock; times are for operators, never for
/// ordering replication).
pub fn now_ms() -> u64 {
    crate::clock::unix_millis()
}

/// The job record's transitions at the present time: [`Job`] takes its times as values
/// (`vdrep-proto` reads no clock); this reads the clock ([`now_ms`]) for them.
pub trait JobNow {
    /// A new running job started now, with a random id suffix.
    fn start(kind: JobKind, vm: &str) -> Job;
    /// Starts step `name` now ([`Job::begin_at`]).
    fn begin(&mut self, name: &str);
    /// Step `name` succeeded now ([`Job::step_ok_at`]).
    fn step_ok(&mut self, name: &str, detail: &str);
    /// Step `name` failed now ([`Job::step_failed_at`]).
    fn step_failed(&mut self, name: &str, detail: &str);
    /// The job succeeded now ([`Job::succeed_at`]).
    fn succeed(&mut self);
    /// The job failed now ([`Job::fail_at`]).
    fn fail(&mut self, message: &str, recoverable: bool);
}

impl JobNow for Job {
    fn start(kind: JobKind, vm: &str) -> Job {
        Job::start_at(kind, vm, now_ms(), rand::random::<u64>())
    }
    fn begin(&mut self, name: &str) {
        self.begin_at(name, now_ms());
    }
    fn step_ok(&mut self, name: &str, detail: &str) {
        self.step_ok_at(name, detail, now_ms());
    }
    fn step_failed(&mut self, name: &str, detail: &str) {
        self.step_failed_at(name, detail, now_ms());
    }
    fn succeed(&mut self) {
        self.succeed_at(now_ms());
    }
    fn fail(&mut self, message: &str, recoverable: bool) {
        self.fail_at(message, recoverable, now_ms());
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
        use vdrep_proto::wire::{decode_frame, Control, MAX_CONTROL_BODY};
        let f = Control::ReportJob {
            req: 1,
            job: j.clone(),
        }
        .encode();
        let (k, body, _) = decode_frame(&f, MAX_CONTROL_BODY).unwrap().unwrap();
        assert_eq!(
            Control::decode(k, body).unwrap(),
            Control::ReportJob { req: 1, job: j }
        );
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
}
