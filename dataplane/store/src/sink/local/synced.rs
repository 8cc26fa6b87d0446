//! fdatasync of a disk's data files, and what its failure means.
//!
//! After a failed fdatasync Linux marks the pages it could not write clean and drops them;
//! a retried fdatasync then succeeds without writing them (PostgreSQL's "fsyncgate"). So a
//! failure is final for the handle: nothing written since the last good sync may be counted
//! as durable, every later call that writes, records progress or commits is refused with the
//! recoverable [`SinkError::SyncLost`], and the disk is opened again: its state record names
//! only what the last good sync made durable, and the copy resumes from there.

use std::path::Path;

use super::files::io_err;
use super::fs::DataFile;
use super::LocalDisk;
use crate::sink::SinkError;

impl LocalDisk {
    /// fdatasync of one of this disk's data files (working image, replica, undo log). A
    /// failure is remembered: Linux drops the pages it failed to write and a retried sync
    /// then succeeds, so after it no call on this handle may record progress or commit
    /// ([`LocalDisk::usable`]); the disk is opened again and resumes from the state record,
    /// which names only what the last good sync made durable.
    pub(super) fn sync(&self, f: &dyn DataFile, path: &Path, offset: u64) -> Result<(), SinkError> {
        self.usable("fdatasync")?;
        f.sync_data().map_err(|e| {
            let err = io_err(path, "fdatasync", offset)(e);
            let mut lost = self.sync_lost.lock().unwrap_or_else(|p| p.into_inner());
            lost.get_or_insert_with(|| (path.to_path_buf(), err.to_string()));
            tracing::error!(disk = %crate::sink::ReplicaDisk::key(self), error = %err,
                "fdatasync failed: nothing written since the last good sync counts as durable; \
                 the disk must be reopened");
            err
        })
    }

    /// Refuses `op` once a sync of this disk failed on this handle ([`SinkError::SyncLost`]).
    pub(super) fn usable(&self, op: &'static str) -> Result<(), SinkError> {
        let lost = self.sync_lost.lock().unwrap_or_else(|p| p.into_inner());
        match &*lost {
            None => Ok(()),
            Some((path, first)) => Err(SinkError::SyncLost {
                path: path.clone(),
                op,
                first: first.clone(),
            }),
        }
    }
}
