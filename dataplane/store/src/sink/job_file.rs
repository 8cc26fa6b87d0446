//! The job file of one VM: `DIR/jobs.json` (in the local store `STORE/VM/jobs.json`, beside
//! the VM's replicas; in the sender's state folder `STATE/pending/VM/jobs.json`).
//!
//! Every change rewrites the whole file atomically (write `jobs.json.tmp`, fsync, rename,
//! fsync the folder), so a crash leaves the old or the new list, never half of one. Writers
//! in different processes (a receiver, `vdrep failover --test`) take `.jobs.lock` (flock)
//! first: a dot file, because no disk's file can start with a dot (a disk named `jobs` has its
//! own lock `jobs.lock`, which the job file used to share). The list is bounded: the newest [`MAX_JOBS_PER_VM`] jobs by start time are kept.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::local::fs::{lock_waiting, StoreFs};
use super::SinkError;
use crate::jobs::{Job, MAX_JOBS_PER_VM};

/// Names the file's format; another value is refused (never guessed at).
pub const JOBS_FORMAT: &str = "vdrep-jobs 1";
/// The file name inside the VM's folder.
pub const JOBS_FILE: &str = "jobs.json";
/// The lock file writers take; see the module comment for why it starts with a dot.
pub const JOBS_LOCK: &str = ".jobs.lock";
/// The lock file of builds before issue 16, the same as a disk named `jobs` locks.
const LEGACY_LOCK: &str = "jobs.lock";

/// Errors of the job file are [`SinkError`]s: IO (recoverability by OS error) and
/// [`SinkError::CorruptJobs`], which names the file.
pub type JobFileError = SinkError;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    format: String,
    jobs: Vec<Job>,
}

/// The job file in one folder.
pub struct JobFile {
    fs: Arc<dyn StoreFs>,
    dir: PathBuf,
    max: usize,
}

impl JobFile {
    /// The job file in `dir` (created on first write).
    pub fn new(fs: Arc<dyn StoreFs>, dir: &Path) -> JobFile {
        JobFile {
            fs,
            dir: dir.to_path_buf(),
            max: MAX_JOBS_PER_VM,
        }
    }

    /// Keeps at most `max` jobs (tests).
    pub fn with_limit(mut self, max: usize) -> JobFile {
        self.max = max.max(1);
        self
    }

    /// `DIR/jobs.json`.
    pub fn path(&self) -> PathBuf {
        self.dir.join(JOBS_FILE)
    }

    /// The jobs, oldest first; none when the file does not exist.
    pub fn load(&self) -> Result<Vec<Job>, SinkError> {
        let path = self.path();
        let Some(bytes) = self
            .fs
            .read_file(&path)
            .map_err(|e| SinkError::io(&path, "read", 0, e))?
        else {
            return Ok(Vec::new());
        };
        decode(&bytes, &path)
    }

    /// Records `job`, replacing the job with its id, and drops the oldest jobs beyond the
    /// limit.
    pub fn upsert(&self, job: &Job) -> Result<(), SinkError> {
        self.update(|jobs| {
            upsert(jobs, job);
            true
        })
    }

    /// Removes the job with id `id` (absent is fine).
    pub fn remove(&self, id: &str) -> Result<(), SinkError> {
        self.update(|jobs| {
            let n = jobs.len();
            jobs.retain(|j| j.id != id);
            jobs.len() != n
        })
    }

    /// Removes the file (and its lock).
    pub fn remove_all(&self) -> Result<(), SinkError> {
        let mut files = vec![
            self.path(),
            self.dir.join("jobs.json.tmp"),
            self.lock_path(),
        ];
        // The lock of earlier builds, unless it is the lock of a disk named `jobs`.
        let legacy = self.dir.join(LEGACY_LOCK);
        let disk_named_jobs = self.dir.join("jobs.state");
        if !self
            .fs
            .exists(&disk_named_jobs)
            .map_err(|e| SinkError::io(&disk_named_jobs, "stat", 0, e))?
        {
            files.push(legacy);
        }
        for p in files {
            self.fs
                .remove_file(&p)
                .map_err(|e| SinkError::io(&p, "remove", 0, e))?;
        }
        Ok(())
    }

    /// `DIR/.jobs.lock`: a name no disk file can take (disk names never start with a dot).
    pub fn lock_path(&self) -> PathBuf {
        self.dir.join(JOBS_LOCK)
    }

    /// Read, change under the lock, write back atomically if `f` says it changed something.
    fn update(&self, f: impl FnOnce(&mut Vec<Job>) -> bool) -> Result<(), SinkError> {
        let _guard = lock_waiting(self.fs.as_ref(), &self.dir, &self.lock_path())?;
        let mut jobs = self.load()?;
        if !f(&mut jobs) {
            return Ok(());
        }
        bound(&mut jobs, self.max);
        let data = encode(jobs);
        let path = self.path();
        let tmp = self.dir.join("jobs.json.tmp");
        let io = |op| {
            let p = path.clone();
            move |e| SinkError::io(p, op, 0, e)
        };
        self.fs.write_file(&tmp, &data).map_err(io("write"))?;
        self.fs.sync_file(&tmp).map_err(io("fsync"))?;
        self.fs.rename(&tmp, &path).map_err(io("rename"))?;
        self.fs.sync_dir(&self.dir).map_err(io("fsync folder"))?;
        Ok(())
    }
}

/// Decodes a job file's bytes (`path` names it in errors).
pub fn decode(bytes: &[u8], path: &Path) -> Result<Vec<Job>, SinkError> {
    let doc: Doc = serde_json::from_slice(bytes).map_err(|e| SinkError::CorruptJobs {
        path: path.to_path_buf(),
        problem: format!("line {} column {}: {e}", e.line(), e.column()),
    })?;
    if doc.format != JOBS_FORMAT {
        return Err(SinkError::CorruptJobs {
            path: path.to_path_buf(),
            problem: format!(
                "format {:?} is not {JOBS_FORMAT:?} (written by another vdrep version?)",
                doc.format
            ),
        });
    }
    Ok(doc.jobs)
}

/// Encodes a job list as a job file.
pub fn encode(jobs: Vec<Job>) -> Vec<u8> {
    let doc = Doc {
        format: JOBS_FORMAT.into(),
        jobs,
    };
    // Plain strings, integers and enums as strings: serialising cannot fail.
    serde_json::to_vec_pretty(&doc).unwrap_or_default()
}

/// Replaces the job with `job`'s id, or adds it.
pub fn upsert(jobs: &mut Vec<Job>, job: &Job) {
    match jobs.iter_mut().find(|j| j.id == job.id) {
        Some(j) => *j = job.clone(),
        None => jobs.push(job.clone()),
    }
}

/// Sorts oldest first and keeps the newest `max`.
pub fn bound(jobs: &mut Vec<Job>, max: usize) {
    jobs.sort_by(|a, b| (a.start_ms, &a.id).cmp(&(b.start_ms, &b.id)));
    let excess = jobs.len().saturating_sub(max);
    jobs.drain(..excess);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::JobNow;
    use crate::sink::fault::SimFs;
    use crate::sink::local::fs::RealFs;
    use vdrep_proto::wire::{JobKind, JobState};

    fn job(n: u64) -> Job {
        let mut j = Job::start(JobKind::TestFailover, "vm1");
        j.start_ms = 1_000 + n;
        j.id = format!("job-{n:03}");
        j
    }

    #[test]
    fn a_job_is_replaced_by_its_id_and_listed_oldest_first() {
        let d = tempfile::tempdir().unwrap();
        let f = JobFile::new(Arc::new(RealFs), &d.path().join("vm1"));
        assert!(f.load().unwrap().is_empty());
        f.upsert(&job(2)).unwrap();
        f.upsert(&job(1)).unwrap();
        let mut j = job(2);
        j.succeed();
        f.upsert(&j).unwrap();
        let got = f.load().unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].id, "job-001");
        assert_eq!(got[1].state, JobState::Succeeded);
        assert!(!d.path().join("vm1/jobs.json.tmp").exists());
        f.remove("job-001").unwrap();
        assert_eq!(f.load().unwrap().len(), 1);
    }

    #[test]
    fn only_the_newest_jobs_are_kept() {
        let d = tempfile::tempdir().unwrap();
        let f = JobFile::new(Arc::new(RealFs), d.path()).with_limit(5);
        for n in [9, 3, 7, 1, 5, 2, 8, 4, 6, 0] {
            f.upsert(&job(n)).unwrap();
        }
        let ids: Vec<String> = f.load().unwrap().into_iter().map(|j| j.id).collect();
        assert_eq!(ids, ["job-005", "job-006", "job-007", "job-008", "job-009"]);
        // The default bound.
        let f = JobFile::new(Arc::new(RealFs), &d.path().join("big"));
        for n in 0..(MAX_JOBS_PER_VM as u64 + 7) {
            f.upsert(&job(n)).unwrap();
        }
        let got = f.load().unwrap();
        assert_eq!(got.len(), MAX_JOBS_PER_VM);
        assert_eq!(got[0].id, "job-007");
    }

    #[test]
    fn a_corrupt_job_file_is_a_clear_error_naming_the_file() {
        let d = tempfile::tempdir().unwrap();
        let f = JobFile::new(Arc::new(RealFs), d.path());
        std::fs::write(
            f.path(),
            b"{\"format\": \"vdrep-jobs 1\", \"jobs\": [ {\"id\": ",
        )
        .unwrap();
        let e = f.load().unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(&f.path().display().to_string()), "{msg}");
        assert!(
            msg.contains("corrupt job record") && msg.contains("line 1"),
            "{msg}"
        );
        assert!(!e.is_transient());
        // A write does not silently replace a file it cannot read.
        assert!(f.upsert(&job(1)).is_err());
        std::fs::write(f.path(), b"{\"format\": \"vdrep-jobs 9\", \"jobs\": []}").unwrap();
        let msg = f.load().unwrap_err().to_string();
        assert!(msg.contains("vdrep-jobs 9"), "{msg}");
    }

    #[test]
    fn a_crash_keeps_the_old_list_or_the_new_one_never_half() {
        // On the durability model: once an upsert returns, a crash keeps the new list; a
        // power cut at any operation inside it, then a crash (random survivors), keeps one
        // of the two whole lists.
        use crate::sink::fault::Crash;
        let fs = SimFs::new();
        let dir = Path::new("/s/vm1");
        let f = JobFile::new(Arc::new(fs.clone()), dir);
        f.upsert(&job(0)).unwrap();
        fs.crash(Crash::DropVolatile);
        assert_eq!(f.load().unwrap().len(), 1);
        for cut in 0..8u64 {
            let before = f.load().unwrap().len();
            fs.power_cut_after(cut);
            let done = f.upsert(&job(1 + cut)).is_ok();
            fs.crash(Crash::Random(cut));
            let after = f.load().unwrap().len();
            if done {
                assert_eq!(after, before + 1, "cut after {cut}");
            } else {
                assert!(
                    after == before || after == before + 1,
                    "cut after {cut}: {after}"
                );
            }
            f.upsert(&job(1 + cut)).unwrap();
        }
    }
}
