//! A qemu disk's cycle as a [`CycleSource`]: the previous bitmap's dirty extents, read from
//! the view taken by the switch that stopped that bitmap; its digest is the disk at that
//! view ([`super::digest`]).

use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tracing::{info, warn};

use super::ctl::QemuVm;
use super::digest::PieceTee;
use super::view::{HashingView, NbdView, Uncounted};
use crate::sender::source::{CycleChanges, CycleSource, Opening, SourceError};

/// One disk's cycle at one switch.
pub struct ViewCycle {
    /// The VM.
    pub vm: Arc<QemuVm>,
    /// The disk's index in the VM.
    pub index: usize,
    /// The cycle number this switch ships as.
    pub cycle: u64,
    /// The view (exported with the previous bitmap).
    pub view: Arc<NbdView>,
    /// The bitmap the switch started: it holds the disk's unshipped writes once this cycle
    /// commits.
    pub new_bitmap: String,
    /// Bytes read from the view before this cycle (a resumed copy reads it too).
    pub read_before: u64,
    /// The extents of the cycle, once opened (its digest re-reads the pieces they touch and
    /// the shipping did not hash).
    pub extents: Mutex<Vec<Range<u64>>>,
    /// Hashes the pieces the cycle's shipping reads (`None` before `open`, or when the
    /// digest state cannot be opened: the digest then reads them again).
    pub tee: Mutex<Option<Arc<PieceTee>>>,
}

impl CycleSource for ViewCycle {
    fn pending(&self) -> Result<Vec<u64>, SourceError> {
        Ok(vec![self.cycle])
    }

    fn open(&self, _cycle: u64) -> Result<Opening, SourceError> {
        let extents = self
            .view
            .dirty_extents()
            .map_err(|e| SourceError::Transient(e.to_string()))?;
        let dirty: u64 = extents.iter().map(|e| e.end - e.start).sum();
        if let Ok(mut x) = self.extents.lock() {
            x.clone_from(&extents);
        }
        self.vm.counters[self.index]
            .dirty
            .fetch_add(dirty, Ordering::Relaxed);
        let tee = match self.vm.with_digest(self.index, |d| d.tee()) {
            Ok(t) => Some(Arc::new(t)),
            Err(e) => {
                warn!(vm = %self.vm.name, disk = %self.vm.disks[self.index].name, error = %e,
                      "the cycle's digest will read the view again");
                None
            }
        };
        let view: Arc<dyn crate::disk::VirtualDisk> = match &tee {
            Some(t) => Arc::new(HashingView {
                view: self.view.clone(),
                tee: t.clone(),
            }),
            None => self.view.clone(),
        };
        if let Ok(mut g) = self.tee.lock() {
            *g = tee;
        }
        Ok(Opening::Ship(CycleChanges {
            extents,
            view,
            check: None,
        }))
    }

    fn digest(&self, cycle: u64) -> Option<[u8; 32]> {
        let extents = self.extents.lock().map(|x| x.clone()).unwrap_or_default();
        let hashed = self
            .tee
            .lock()
            .ok()
            .and_then(|t| t.as_ref().map(|t| t.hashed()))
            .unwrap_or_default();
        let view = Uncounted(&self.view);
        let r = self.vm.with_digest(self.index, |d| {
            let before = d.read;
            // A table made stale (a copy or resync that did not finish hashing) is computed
            // again from this view: a full read, once.
            let digest = if d.complete() {
                d.refresh(&view, &extents, &hashed, cycle)?
            } else {
                Some(d.compute_all(&view, cycle)?)
            };
            Ok((digest, d.read - before))
        });
        let name = &self.vm.disks[self.index].name;
        match r {
            Ok((digest, read)) => {
                self.vm.counters[self.index]
                    .digest_read
                    .fetch_add(read, Ordering::Relaxed);
                digest
            }
            Err(e) => {
                warn!(vm = %self.vm.name, disk = %name, cycle, error = %e,
                      "no digest for this cycle (failover cannot verify it)");
                None
            }
        }
    }

    fn committed(&self, cycle: u64) -> Result<(), SourceError> {
        self.vm
            .advance(self.index, &self.new_bitmap)
            .map_err(|e| SourceError::Transient(e.to_string()))?;
        let c = &self.vm.counters[self.index];
        let read = c.read.load(Ordering::Relaxed) + self.view.read_bytes() - self.read_before;
        info!(vm = %self.vm.name, disk = %self.vm.disks[self.index].name, cycle,
              dirty_bytes_total = c.dirty.load(Ordering::Relaxed),
              view_read_bytes_total = read,
              digest_read_bytes_total = c.digest_read.load(Ordering::Relaxed),
              "qemu cycle: bytes read from views against dirty bytes (bitmap granularity)");
        Ok(())
    }

    fn mark_resync(&self, reason: &str) {
        let name = &self.vm.disks[self.index].name;
        if let Err(e) = self.vm.state.mark_resync(name, reason) {
            warn!(error = %e, "cannot record the resync mark");
        }
    }
}
