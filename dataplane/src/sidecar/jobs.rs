//! Advancing jobs from the sender's status, once per tick. Each job's progress is derived
//! from what the sender reports (phases, commits, completed resyncs), so a job survives the
//! sidecar's restart (it is re-read from the state file) and the sender's (a request the old
//! sender process took but did not finish is handed to the new one).

use serde_json::json;

use super::client::ClientError;
use super::state::{JobKind, JobState, SidecarJob as Job};
use super::target::Target;
use super::Sidecar;
use crate::sender::local_control::{Request, SenderStatus};
use crate::sender::DiskStatus;

/// Steps of each job kind.
pub const RESYNC_STEPS: [&str; 4] = [
    "wait for the resync window",
    "hand the resync to the sender",
    "compare block checksums and send the differing pages",
    "resume delta replication",
];
/// Steps of a test failover.
pub const FAILOVER_STEPS: [&str; 2] = [
    "materialise the recovery point in the failover folder beside the store",
    "verify the disks against the sender's digests",
];
/// Steps of enabling protection.
pub const PROTECT_STEPS: [&str; 4] = [
    "check prerequisites (sender reachable, disks readable)",
    "create the replication relationship (policy stored)",
    "initial replication",
    "finalize protection",
];

fn vm_disks<'a>(st: &'a SenderStatus, vm: &str) -> Vec<&'a DiskStatus> {
    st.disks.iter().filter(|d| d.vm == vm).collect()
}

/// Advances every unfinished job and saves what changed.
pub async fn advance(sc: &std::sync::Arc<Sidecar>, now: u64, up: bool) {
    let open: Vec<Job> = sc
        .read(|s| {
            s.jobs
                .iter()
                .filter(|j| !j.record.state.is_final())
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    let status = sc.cached_status().map(|(s, _)| s).filter(|_| up);
    for mut job in open {
        let before = serde_json::to_string(&job).unwrap_or_default();
        match job.record.kind {
            JobKind::Resync => resync(sc, &mut job, status.as_ref(), now).await,
            JobKind::TestFailover => super::failover::advance(sc, &mut job, now),
            JobKind::EnableProtection => protect(sc, &mut job, status.as_ref(), now).await,
            // The sender's own kinds: the API creates none and the state file loads none.
            _ => {}
        }
        if serde_json::to_string(&job).unwrap_or_default() != before {
            let _ = sc.update(|s| {
                if let Some(j) = s.jobs.iter_mut().find(|j| j.record.id == job.record.id) {
                    *j = job;
                }
            });
        }
    }
}

/// Records an error once (a retried one is not repeated).
pub fn note_error(job: &mut Job, msg: String) {
    if job.errors.last() != Some(&msg) {
        job.errors.push(msg);
    }
}

async fn resync(sc: &Sidecar, job: &mut Job, st: Option<&SenderStatus>, now: u64) {
    if job.record.state == JobState::Queued {
        if let Some(t) = job.not_before_unix.filter(|t| *t > now) {
            job.step(
                0,
                JobState::Queued,
                format!("scheduled for {t} (Unix time)"),
                now,
            );
            return;
        }
        job.step(0, JobState::Succeeded, "window open", now);
        let Some(st) = st else {
            job.step(
                1,
                JobState::Running,
                "the sender is unreachable; retrying",
                now,
            );
            return;
        };
        let baseline: serde_json::Map<String, serde_json::Value> = vm_disks(st, &job.record.vm)
            .iter()
            .map(|d| (d.disk.clone(), json!(d.resyncs_completed)))
            .collect();
        match sc
            .client
            .call(&Request::Resync {
                vm: job.record.vm.clone(),
            })
            .await
        {
            Ok(_) => {
                job.record.state = JobState::Running;
                job.sender_pid = Some(st.pid);
                job.requested_unix = Some(now);
                job.result = Some(json!({ "baseline": baseline }));
                job.step(
                    1,
                    JobState::Succeeded,
                    format!("sender pid {} took it", st.pid),
                    now,
                );
                job.step(2, JobState::Running, "starting", now);
            }
            Err(e) => handed_over_failed(job, 1, e, now),
        }
        return;
    }
    let Some(st) = st else {
        job.step(
            2,
            JobState::Running,
            "the sender is unreachable; waiting",
            now,
        );
        return;
    };
    if Some(st.pid) != job.sender_pid {
        // A new sender process: the request died with the old one. Hand it over again.
        note_error(
            job,
            format!(
                "the sender restarted (pid {}); handing the resync to it again",
                st.pid
            ),
        );
        job.record.state = JobState::Queued;
        job.not_before_unix = None;
        return;
    }
    let disks = vm_disks(st, &job.record.vm);
    let baseline = job.result.clone().unwrap_or_default();
    let done = |d: &DiskStatus| {
        let b = baseline["baseline"][&d.disk].as_u64().unwrap_or(0);
        d.resyncs_completed > b
    };
    let (copied, size): (u64, u64) = disks
        .iter()
        .map(|d| {
            (
                if done(d) {
                    d.size_bytes
                } else {
                    d.copied_bytes.min(d.size_bytes)
                },
                d.size_bytes,
            )
        })
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    if !disks.is_empty() && disks.iter().all(|d| done(d)) {
        job.step(2, JobState::Succeeded, format!("copied {size} bytes"), now);
        job.step(3, JobState::Succeeded, "delta cycles continue", now);
        job.finish(JobState::Succeeded, now);
    } else {
        job.step(
            2,
            JobState::Running,
            format!("{copied} of {size} bytes"),
            now,
        );
    }
}

/// A request handing step `step` of `job` to the sender failed: a refusal fails the job
/// with the sender's reason; an unreachable sender leaves the step running, to be retried
/// at the next tick.
fn handed_over_failed(job: &mut Job, step: usize, e: ClientError, now: u64) {
    match e {
        ClientError::Refused(m) => {
            note_error(job, m.clone());
            job.step(step, JobState::Failed, m, now);
            job.finish(JobState::Failed, now);
        }
        e => {
            note_error(job, e.to_string());
            job.step(
                step,
                JobState::Running,
                "the sender is unreachable; retrying",
                now,
            );
        }
    }
}

/// The sender's enable-protection checks of a VM in words, and whether they are over.
fn checks(st: &SenderStatus, vm: &str) -> Option<(JobState, String)> {
    let j = st.enable_jobs.iter().rev().find(|j| j.vm == vm)?;
    let words: Vec<String> = j
        .steps
        .iter()
        .map(|s| {
            if s.detail.is_empty() {
                format!("{}: {}", s.name, s.state.as_str())
            } else {
                format!("{}: {}", s.name, s.detail)
            }
        })
        .collect();
    let state = match j.state {
        JobState::Succeeded | JobState::Failed => j.state,
        _ => JobState::Running,
    };
    Some((state, words.join("; ")))
}

async fn protect(sc: &Sidecar, job: &mut Job, st: Option<&SenderStatus>, now: u64) {
    let Some(st) = st else {
        job.record.state = JobState::Running;
        job.step(
            0,
            JobState::Running,
            "the sender is unreachable; waiting",
            now,
        );
        return;
    };
    job.record.state = JobState::Running;
    let target = Target::of_result(job.result.as_ref());
    let wanted = &target.disks;
    let disks = vm_disks(st, &job.record.vm);
    if disks.is_empty() && !target.is_empty() {
        // A VM the sender does not list: hand it the VM with its disks (or qemu socket) and
        // policy; the sender runs the local checks at once and answers a refusal.
        let policy = sc
            .read(|s| s.policies.get(&job.record.vm).cloned())
            .flatten()
            .unwrap_or_default();
        let req = target.request(&job.record.vm, &policy);
        match sc.client.call(&req).await {
            Ok(_) => {
                job.sender_pid = Some(st.pid);
                job.requested_unix = Some(now);
                let checked = if target.qmp.is_some() {
                    "QMP reachable, disks found, bitmaps supported"
                } else {
                    "disks readable, formats supported"
                };
                job.step(
                    0,
                    JobState::Running,
                    format!(
                        "sender pid {} took the VM: {checked}; checking the receiver",
                        st.pid
                    ),
                    now,
                );
            }
            Err(e) => handed_over_failed(job, 0, e, now),
        }
        return;
    }
    if disks.is_empty() {
        let m = format!(
            "VM {} is not configured on the sender: name its disk images in the request's \
             \"disks\" (absolute paths on the sender's host) or a running qemu VM's QMP socket \
             in \"qmp\", or add a [[vm]] entry to the sender's config and restart it",
            job.record.vm
        );
        note_error(job, m.clone());
        job.step(0, JobState::Failed, m, now);
        job.finish(JobState::Failed, now);
        return;
    }
    let listed: Vec<String> = disks.iter().map(|d| d.path.clone()).collect();
    if !wanted.is_empty() && listed != *wanted {
        let m = format!(
            "VM {} is already protected with other disks ({}): disable its protection first",
            job.record.vm,
            listed.join(", ")
        );
        note_error(job, m.clone());
        job.step(0, JobState::Failed, m, now);
        job.finish(JobState::Failed, now);
        return;
    }
    match checks(st, &job.record.vm) {
        Some((JobState::Running, words)) => {
            job.step(0, JobState::Running, words, now);
            return;
        }
        Some((JobState::Failed, words)) => {
            note_error(job, words.clone());
            job.step(0, JobState::Failed, words, now);
            job.finish(JobState::Failed, now);
            return;
        }
        Some((_, words)) => job.step(0, JobState::Succeeded, words, now),
        None => job.step(
            0,
            JobState::Succeeded,
            format!("{} disks readable", disks.len()),
            now,
        ),
    }

    job.step(1, JobState::Succeeded, "policy stored", now);
    if let Some(d) = disks
        .iter()
        .find(|d| d.health == crate::health::State::Critical)
    {
        let m = format!("{}/{}: {}", d.vm, d.disk, d.reason);
        note_error(job, m.clone());
        job.step(2, JobState::Failed, m, now);
        job.finish(JobState::Failed, now);
        return;
    }
    let (copied, size) = disks
        .iter()
        .fold((0, 0), |a, d| (a.0 + d.copied_bytes, a.1 + d.size_bytes));
    if disks.iter().all(|d| d.phase == "protected") {
        job.step(
            2,
            JobState::Succeeded,
            format!("{size} bytes replicated"),
            now,
        );
        // Finalized once delta replication runs: a cycle after the copy is committed.
        if disks.iter().all(|d| d.last_cycle.unwrap_or(0) >= 1) {
            job.step(
                3,
                JobState::Succeeded,
                "protected: delta cycles commit recovery points; test failover is possible",
                now,
            );
            job.finish(JobState::Succeeded, now);
        } else {
            job.step(
                3,
                JobState::Running,
                "waiting for the first delta cycle",
                now,
            );
        }
    } else {
        job.step(
            2,
            JobState::Running,
            format!("{copied} of {size} bytes"),
            now,
        );
    }
}
