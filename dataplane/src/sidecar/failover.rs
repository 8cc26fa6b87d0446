//! Test failover asked through the API (`POST /v1/vms/{vm}/test-failover`): it runs where
//! the replicas are readable, not on the sender. The sidecar is given the receiver's store
//! (`--store DIR`, or `--azure-url` … for page blobs) and writes every disk of the VM at the
//! chosen point, verified against the sender's digest, into
//! `FAILOVER_DIR/VM/JOB-ID/NAME.vhd`. `FAILOVER_DIR` is `--failover-dir`, by default the
//! folder `STORE-failover` beside a local store (never inside it: the store's top level is
//! its VMs). The job's result names the folder and each disk.
//!
//! The copy is the one `vdrep failover --test` makes (the caller hands it in as
//! [`Materialise`]); a failed run leaves no output, so a job that a sidecar restart
//! interrupted is simply run again.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{json, Value};
use tracing::{info, warn};

use super::state::{JobState, SidecarJob as Job};
use super::Sidecar;

/// Writes every disk of VM `vm` at point `point` (`None`: the newest all disks share) into
/// a folder; answers the per-disk summaries (`disk`, `path`, `point`, `verified`, …).
pub type Materialise =
    Arc<dyn Fn(&str, Option<u64>, &Path) -> Result<Vec<Value>, String> + Send + Sync>;

/// Lists the recovery points of every disk of VM `vm`: the document `vdrep points --vm VM
/// --json` prints (the caller hands in that very function, so the two cannot drift);
/// `None` when the store holds no disk of the VM.
pub type ListPoints = Arc<dyn Fn(&str) -> Result<Option<Value>, String> + Send + Sync>;

/// Where the sidecar reads the receiver's store: test failovers and recovery points.
#[derive(Clone)]
pub struct FailoverTarget {
    /// The copy.
    pub run: Materialise,
    /// The recovery points (`GET /v1/vms/{vm}/points`).
    pub points: ListPoints,
    /// The documented output folder: each job writes into `dir/VM/JOB-ID/`.
    pub dir: PathBuf,
}

impl std::fmt::Debug for FailoverTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FailoverTarget")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// Starts an unfinished test-failover job (once: a running one is left alone).
pub fn advance(sc: &Arc<Sidecar>, job: &mut Job, now: u64) {
    let Some(target) = sc.failover.clone() else {
        let m = "the sidecar cannot read the replica store: start it with --store DIR (or \
                 --azure-url …) naming the receiver's store, or run `vdrep failover --test \
                 --store …` where the store is"
            .to_string();
        super::jobs::note_error(job, m.clone());
        job.step(0, JobState::Failed, m, now);
        job.finish(JobState::Failed, now);
        return;
    };
    let started = sc
        .running
        .lock()
        .map(|mut r| r.insert(job.record.id.clone()))
        .unwrap_or(false);
    if !started {
        return;
    }
    let point = job
        .result
        .as_ref()
        .and_then(|r| r["requested_point"].as_u64());
    let folder = target.dir.join(&job.record.vm).join(&job.record.id);
    job.record.state = JobState::Running;
    job.step(
        0,
        JobState::Running,
        format!("writing into {}", folder.display()),
        now,
    );
    let (sc, id, vm) = (sc.clone(), job.record.id.clone(), job.record.vm.clone());
    tokio::spawn(async move {
        let (run, f2, vm2) = (target.run.clone(), folder.clone(), vm.clone());
        let out = tokio::task::spawn_blocking(move || run(&vm2, point, &f2))
            .await
            .unwrap_or_else(|e| Err(format!("failover task: {e}")));
        let now = crate::metrics::events::now_unix();
        match &out {
            Ok(disks) => info!(%vm, job = %id, folder = %folder.display(), disks = disks.len(),
                               "test failover written"),
            Err(e) => warn!(%vm, job = %id, error = %e, "test failover failed"),
        }
        let _ = sc.update(|s| {
            if let Some(j) = s.jobs.iter_mut().find(|j| j.record.id == id) {
                finish(j, out, &folder, now);
            }
        });
        if let Ok(mut r) = sc.running.lock() {
            r.remove(&id);
        }
    });
}

fn finish(job: &mut Job, out: Result<Vec<Value>, String>, folder: &Path, now: u64) {
    match out {
        Ok(disks) => {
            let point = disks.first().and_then(|d| d["point"].as_u64());
            let verified = disks.iter().all(|d| d["verified"] == true);
            job.step(
                0,
                JobState::Succeeded,
                format!(
                    "{} disks at point {} in {}",
                    disks.len(),
                    point.map_or("-".into(), |p| p.to_string()),
                    folder.display()
                ),
                now,
            );
            job.step(
                1,
                JobState::Succeeded,
                if verified {
                    "every disk matches the sender's digest"
                } else {
                    "the point carries no sender digest (initial copy or resync): not verified"
                },
                now,
            );
            job.result = Some(json!({
                "folder": folder,
                "point": point,
                "verified": verified,
                "disks": disks,
            }));
            job.finish(JobState::Succeeded, now);
        }
        Err(e) => {
            super::jobs::note_error(job, e.clone());
            job.step(0, JobState::Failed, e, now);
            job.finish(JobState::Failed, now);
        }
    }
}
