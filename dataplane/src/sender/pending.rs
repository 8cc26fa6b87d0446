//! Jobs that failed before any connection existed (a disk unreadable, the receiver
//! unreachable, a certificate refused), kept in the sender's state folder until a connection
//! can report them: `STATE/pending/VM/jobs.json` (same file format as the store's, bounded
//! the same way). A job is removed once the receiver has recorded it durably.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::jobs::Job;
use crate::sink::local::fs::RealFs;
use crate::sink::{validate_name, JobFile, SinkError};

/// The sender's state folder when `send --state` is not given: `$XDG_STATE_HOME/vdrep`, else
/// `$HOME/.local/state/vdrep`, else `/var/lib/vdrep` (a service without a home).
pub fn default_state_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("vdrep");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(h).join(".local/state/vdrep");
    }
    PathBuf::from("/var/lib/vdrep")
}

/// The pending jobs under a state folder.
#[derive(Debug, Clone)]
pub struct PendingJobs {
    root: PathBuf,
}

impl PendingJobs {
    /// The pending jobs of the state folder `state`.
    pub fn new(state: &Path) -> PendingJobs {
        PendingJobs {
            root: state.join("pending"),
        }
    }

    fn file(&self, vm: &str) -> Result<JobFile, SinkError> {
        validate_name("VM name", vm)?;
        Ok(JobFile::new(Arc::new(RealFs), &self.root.join(vm)))
    }

    /// Keeps `job` until it can be reported.
    pub fn save(&self, job: &Job) -> Result<(), SinkError> {
        self.file(&job.vm)?.upsert(job)
    }

    /// The pending jobs of `vm` (all VMs when `None`), oldest first within a VM.
    pub fn list(&self, vm: Option<&str>) -> Result<Vec<Job>, SinkError> {
        let vms = match vm {
            Some(v) => vec![v.to_string()],
            None => match std::fs::read_dir(&self.root) {
                Ok(rd) => {
                    let mut v: Vec<String> = rd
                        .filter_map(|e| e.ok()?.file_name().into_string().ok())
                        .filter(|n| validate_name("VM name", n).is_ok())
                        .collect();
                    v.sort();
                    v
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => vec![],
                Err(e) => return Err(SinkError::io(&self.root, "list", 0, e)),
            },
        };
        let mut out = Vec::new();
        for v in vms {
            out.extend(self.file(&v)?.load()?);
        }
        Ok(out)
    }

    /// Forgets a job the receiver has recorded.
    pub fn remove(&self, vm: &str, id: &str) -> Result<(), SinkError> {
        let f = self.file(vm)?;
        if !f.path().exists() {
            return Ok(());
        }
        f.remove(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::JobNow;
    use vdrep_proto::wire::JobKind;

    #[test]
    fn pending_jobs_are_kept_per_vm_until_removed() {
        let d = tempfile::tempdir().unwrap();
        let p = PendingJobs::new(d.path());
        assert!(p.list(None).unwrap().is_empty());
        let mut j = Job::start(JobKind::EnableProtection, "vm1");
        j.fail("os.vhdx: cannot open", false);
        p.save(&j).unwrap();
        p.save(&Job::start(JobKind::EnableProtection, "vm2"))
            .unwrap();
        assert_eq!(p.list(None).unwrap().len(), 2);
        assert_eq!(p.list(Some("vm1")).unwrap(), vec![j.clone()]);
        assert!(d.path().join("pending/vm1/jobs.json").is_file());
        p.remove("vm1", &j.id).unwrap();
        assert!(p.list(Some("vm1")).unwrap().is_empty());
        p.remove("vm3", "nothing").unwrap();
        assert!(p
            .save(&Job::start(JobKind::EnableProtection, "../x"))
            .is_err());
    }
}
