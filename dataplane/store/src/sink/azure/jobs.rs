//! Jobs on Azure: the blob `VM/jobs.json` (the local store's job file format), changed by
//! read–modify–write with `If-Match` on its ETag (`If-None-Match: *` when creating), so two
//! writers (a receiver and `vdrep failover --test`) never lose each other's jobs: the loser
//! of a race reads again and retries.

use std::path::PathBuf;

use super::blob::Container;
use super::rest_err;
use crate::jobs::{Job, MAX_JOBS_PER_VM};
use crate::sink::job_file as file;
use crate::sink::{validate_name, SinkError};

/// Attempts of one read–modify–write against concurrent writers.
const RACE_ATTEMPTS: usize = 20;

fn blob(vm: &str) -> String {
    format!("{vm}/{}", file::JOBS_FILE)
}

/// Records `job` in its VM's job blob.
pub fn record(c: &Container, job: &Job) -> Result<(), SinkError> {
    validate_name("VM name", &job.vm)?;
    let name = blob(&job.vm);
    for _ in 0..RACE_ATTEMPTS {
        let (mut jobs, etag) = match c.get_blob(&name).map_err(rest_err)? {
            Some((bytes, etag)) => (
                file::decode(&bytes, &PathBuf::from(c.url(&name)))?,
                Some(etag),
            ),
            None => (Vec::new(), None),
        };
        file::upsert(&mut jobs, job);
        file::bound(&mut jobs, MAX_JOBS_PER_VM);
        match c.put_block_blob(&name, &file::encode(jobs), etag.as_deref()) {
            Ok(_) => return Ok(()),
            // Another writer changed (or created) the blob meanwhile: read it again.
            Err(e) if e.status == Some(412) || e.status == Some(409) => continue,
            Err(e) => return Err(rest_err(e)),
        }
    }
    Err(SinkError::Locked {
        path: PathBuf::from(c.url(&name)),
    })
}

/// The jobs of one VM or of all, oldest first within a VM.
pub fn list(c: &Container, vm: Option<&str>) -> Result<Vec<Job>, SinkError> {
    let names: Vec<String> = match vm {
        Some(v) => {
            validate_name("VM name", v)?;
            vec![blob(v)]
        }
        None => {
            let mut v: Vec<String> = c
                .list("", false)
                .map_err(rest_err)?
                .into_iter()
                .map(|i| i.name)
                .filter(|n| {
                    n.split_once('/').is_some_and(|(vm, rest)| {
                        rest == file::JOBS_FILE && validate_name("VM name", vm).is_ok()
                    })
                })
                .collect();
            v.sort();
            v
        }
    };
    let mut out = Vec::new();
    for n in names {
        if let Some((bytes, _)) = c.get_blob(&n).map_err(rest_err)? {
            out.extend(file::decode(&bytes, &PathBuf::from(c.url(&n)))?);
        }
    }
    Ok(out)
}

/// Removes a VM's job blob (absent is fine).
pub fn remove(c: &Container, vm: &str) -> Result<(), SinkError> {
    validate_name("VM name", vm)?;
    c.delete_blob(&blob(vm), None).map_err(rest_err)
}
