//! The [MS-HRL] change source: a disk's closed change logs (`D.NNNNNNNN.hrl`) are its
//! cycles; a log's coalesced extents are what it wrote, and the log itself, seen as a disk
//! ([`LogImage`]), is the view that holds their bytes.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tracing::warn;
use vdrep_proto::Guid;

use super::{CycleChanges, CycleSource, Opening, SourceError};
use crate::hrl::coalesce_log;
use crate::sender::logimage::LogImage;
use crate::sender::protect::Protected;
use crate::tracking::{Tracker, TrackingError};

/// One protected disk's change logs.
pub struct HrlCycles {
    disk: Arc<Mutex<Protected>>,
    tracker: Tracker,
    /// The log of the cycle being shipped: its id becomes the chain's "last shipped" once
    /// the receiver commits it.
    open: Mutex<Option<(u64, Guid, PathBuf)>>,
}

impl HrlCycles {
    /// The cycles of `disk`.
    pub fn new(disk: &Arc<Mutex<Protected>>) -> Option<HrlCycles> {
        let tracker = disk.lock().ok()?.tracker.clone();
        Some(HrlCycles {
            disk: disk.clone(),
            tracker,
            open: Mutex::new(None),
        })
    }

    fn log_path(&self, cycle: u64) -> Result<PathBuf, SourceError> {
        self.tracker
            .pending()
            .map_err(failed)?
            .into_iter()
            .find(|(c, _)| *c == cycle)
            .map(|(_, p)| p)
            .ok_or_else(|| SourceError::Failed(format!("closed log of cycle {cycle} is gone")))
    }
}

fn failed(e: TrackingError) -> SourceError {
    SourceError::Failed(e.to_string())
}

/// A log error either leaves a gap in the history (resync) or is worth retrying.
fn classify(e: TrackingError) -> SourceError {
    if e.needs_resync() {
        SourceError::Gap(e.to_string())
    } else {
        failed(e)
    }
}

impl CycleSource for HrlCycles {
    fn pending(&self) -> Result<Vec<u64>, SourceError> {
        Ok(self
            .tracker
            .pending()
            .map_err(failed)?
            .into_iter()
            .map(|(c, _)| c)
            .collect())
    }

    fn open(&self, cycle: u64) -> Result<Opening, SourceError> {
        let path = self.log_path(cycle)?;
        let (committed, info) = {
            let g = self
                .disk
                .lock()
                .map_err(|_| SourceError::Failed("lock poisoned".into()))?;
            (g.committed_cycle.unwrap_or(0), g.job.disk.info().clone())
        };
        // The structure now; the data checksums (a read of the whole log) while it ships.
        let log = self
            .tracker
            .open_closed_with(&path, false)
            .map_err(classify)?;
        let id = log.header().unique_id;
        if cycle <= committed {
            // Committed before a crash deleted the log: record the chain and drop it.
            let _ = self.tracker.set_shipped_id(id);
            let _ = self.tracker.remove_shipped(&path);
            return Ok(Opening::AlreadyCommitted);
        }
        let expected = self.tracker.shipped_id().unwrap_or(Guid::NIL);
        if log.header().previous_unique_id != expected {
            return Err(SourceError::Gap(format!(
                "log {} follows {} but the last shipped log is {expected}: a log is missing",
                path.display(),
                log.header().previous_unique_id
            )));
        }
        let coalesced = coalesce_log(&log);
        let extents = coalesced.iter().map(|e| e.offset..e.end()).collect();
        let view = Arc::new(LogImage::new(log, coalesced, info));
        let (t, p) = (self.tracker.clone(), path.clone());
        let check: super::CycleCheck =
            Box::new(move || t.open_closed(&p).map(|_| ()).map_err(classify));
        if let Ok(mut o) = self.open.lock() {
            *o = Some((cycle, id, path));
        }
        Ok(Opening::Ship(CycleChanges {
            extents,
            view,
            check: Some(check),
        }))
    }

    fn digest(&self, cycle: u64) -> Option<[u8; 32]> {
        // The switch's digest was computed while the cycle shipped.
        let task = self.disk.lock().ok().and_then(|mut g| g.digest_task.take());
        if let Some(t) = task {
            if let Err(e) = tokio::runtime::Handle::current().block_on(t) {
                warn!(error = %e, "the cycle digest task failed");
            }
        }
        // Recorded at the switch; none when the table was not ready then.
        self.tracker.cycle_digest(cycle)
    }

    fn committed(&self, cycle: u64) -> Result<(), SourceError> {
        let open = self.open.lock().ok().and_then(|mut o| o.take());
        let Some((c, id, path)) = open.filter(|(c, _, _)| *c == cycle) else {
            return Err(SourceError::Failed(format!(
                "cycle {cycle} committed but its log was not the one open"
            )));
        };
        debug_assert_eq!(c, cycle);
        self.tracker.set_shipped_id(id).map_err(failed)?;
        self.tracker.remove_shipped(&path).map_err(failed)?;
        if let Ok(mut g) = self.disk.lock() {
            g.committed_cycle = Some(cycle);
        }
        Ok(())
    }

    /// A closed log never changes: what the receiver holds of it stays right.
    fn same_bytes_as_before(&self, _cycle: u64) -> bool {
        true
    }

    fn mark_resync(&self, reason: &str) {
        if let Err(e) = self.tracker.mark_resync(reason) {
            warn!(error = %e, "cannot record the resync mark");
        }
    }
}
