//! A qemu disk's cycle as a [`CycleSource`]: the previous bitmap's dirty extents, read from
//! the view taken by the switch that stopped that bitmap.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tracing::{info, warn};

use super::ctl::QemuVm;
use super::view::NbdView;
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
        self.vm.counters[self.index]
            .dirty
            .fetch_add(dirty, Ordering::Relaxed);
        Ok(Opening::Ship(CycleChanges {
            extents,
            view: self.view.clone(),
            check: None,
        }))
    }

    fn digest(&self, _cycle: u64) -> Option<[u8; 32]> {
        // No block-hash table is kept for qemu disks yet: the point carries no digest and
        // failover does not verify it.
        None
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
