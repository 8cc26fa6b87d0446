//! A qemu disk's cycle as a [`CycleSource`]: the previous bitmap's dirty extents, read from
//! the view taken by the switch that stopped that bitmap; its digest is the disk at that
//! view ([`super::digest`]).
//!
//! A cycle gives back to qemu what it will not read ([`super::view::NbdView::discard`]),
//! so that the guest's first writes there stop waiting for copy-before-write: at opening,
//! the blocks clean in the bitmap; while shipping, each block once read. Only when nothing
//! reads those blocks again: the digest table must be complete (an incomplete one is
//! computed from the whole view) and the shipping's reads must feed the digest (the tee);
//! otherwise the cycle discards nothing. What else could re-read a range (a resend of
//! extents the receiver refused) is refused by the view as a transient error, and the
//! next round reads it from a new view.

use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tracing::{info, warn};

use super::ctl::QemuVm;
use super::digest::{PieceTee, PIECE};
use super::spool::{self, Spool};
use super::view::{clean_blocks, HashingView, NbdView, Uncounted};
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

impl ViewCycle {
    /// Gives back to qemu the blocks clean in the cycle's bitmap and, when `tee` (the
    /// shipping's reads feed the digest), turns on discarding each block once read (see
    /// the top of this file); says whether it did. A failure only costs the guest the
    /// waits.
    fn discard_unread(&self, extents: &[Range<u64>], tee: bool) -> bool {
        let name = &self.vm.disks[self.index].name;
        let complete = self
            .vm
            .with_digest(self.index, |d| Ok(d.complete()))
            .unwrap_or(false);
        if !complete || !self.view.can_trim() {
            return false;
        }
        let size = self.vm.disks[self.index].size;
        let clean = clean_blocks(extents, size);
        // On a thread of its own: a disk with its dirty blocks scattered has as many clean
        // runs (12,300 trims for 16,384 scattered blocks of 4 GiB: 0.17 s), which the
        // shipping need not wait for; it never reads them.
        let (view, vm, disk, cycle) = (
            self.view.clone(),
            self.vm.name.clone(),
            name.clone(),
            self.cycle,
        );
        let job = move || {
            let t0 = crate::clock::std_now();
            match view.discard(&clean) {
                Ok(bytes) => info!(%vm, %disk, cycle, bytes, seconds = t0.elapsed().as_secs_f64(),
                                   "qemu cycle: the blocks clean in its bitmap given back to qemu"),
                Err(e) => warn!(%vm, %disk, error = %e,
                                "cannot discard the clean blocks of the view: the guest's first writes there wait for their copy"),
            }
        };
        let job = std::sync::Arc::new(std::sync::Mutex::new(Some(job)));
        let run = {
            let job = job.clone();
            move || {
                if let Some(j) = job.lock().ok().and_then(|mut j| j.take()) {
                    j();
                }
            }
        };
        // At the process's priority: the guest's writes to those blocks wait until then.
        if crate::sender::priority::spawn_unniced("vdrep-discard", run).is_err() {
            // No thread: discard here.
            if let Some(j) = job.lock().ok().and_then(|mut j| j.take()) {
                j();
            }
        }
        self.view.discard_as_read(tee);
        tee
    }

    /// Starts draining the cycle's extents from the view into a spool file, which the
    /// cycle then ships while the drain goes on; the view is removed once drained
    /// (`super::spool`). Only when turned on ([`spool_on`]), every extent is made of whole
    /// digest pieces (the digest then reads nothing from the view) and the spool's
    /// filesystem has room for the dirty bytes beside what the scratch image may still
    /// take. `None`: the cycle reads the view.
    fn spool(
        &self,
        extents: &[Range<u64>],
        tee: &Arc<PieceTee>,
    ) -> Result<Option<Spool>, SourceError> {
        let disk = &self.vm.disks[self.index];
        let whole = |x: u64| x.is_multiple_of(PIECE) || x == disk.size;
        if !spool_on() || extents.iter().any(|e| !whole(e.start) || !whole(e.end)) {
            return Ok(None);
        }
        let dir = spool::dir(self.vm.state.path());
        let dirty: u64 = extents.iter().map(|e| e.end - e.start).sum();
        let need = dirty.saturating_add(vdrep_qemu::fleece::scratch_need(disk.size));
        let room = std::fs::create_dir_all(&dir)
            .ok()
            .and_then(|()| vdrep_qemu::fleece::free_bytes(&dir).ok());
        if room.is_none_or(|free| free < need) {
            info!(vm = %self.vm.name, disk = %disk.name, need, free = ?room,
                  "no room to spool the cycle: it ships from the view");
            return Ok(None);
        }
        let t0 = crate::clock::std_now();
        let (vm, index, cycle) = (self.vm.clone(), self.index, self.cycle);
        let then: spool::Then = Box::new(move |sp: &Spool| {
            let drained = t0.elapsed().as_secs_f64();
            let name = &vm.disks[index].name;
            if let Err(e) = vm.drop_view(index) {
                warn!(vm = %vm.name, disk = %name, error = %e,
                      "cannot remove the drained view; it goes at the round's end");
            }
            info!(vm = %vm.name, disk = %name, cycle, bytes = sp.len(),
                  file_bytes = sp.file_bytes(), drain_seconds = drained, seconds = t0.elapsed().as_secs_f64(),
                  "qemu cycle: dirty extents drained from the view into the spool, view removed");
            super::test_hook::after_spool();
        });
        let sp = Spool::start(
            self.view.clone(),
            extents,
            &dir,
            &disk.name,
            tee.clone(),
            then,
        )
        .map_err(|e| SourceError::Transient(format!("starting the cycle's spool: {e}")))?;
        Ok(Some(sp))
    }
}

/// The environment variable that turns the spool off (`0`): on by default. It shortens
/// the views (1–3 s instead of 5–14 s per GiB) and halves the guest's slow writes
/// (`bench/results/ANALYSIS.md`, session 12, Q18V); shipped while it drains, the cycle
/// takes as long as from the view (session 13, Q18P). A process that honours it says so
/// in its log.
pub const SPOOL_ENV: &str = "VDREP_QEMU_SPOOL";

/// Whether cycles drain into a spool and remove their view early (`super::spool`;
/// [`SPOOL_ENV`]).
pub fn spool_on() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        let off = std::env::var(SPOOL_ENV).is_ok_and(|v| v.trim() == "0");
        if off {
            warn!("{SPOOL_ENV}=0: qemu cycles read their views while they ship (no spool)");
        }
        !off
    })
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
        if self.view.is_copy() {
            // qemu's copy holds the dirty blocks only (`vdrep_qemu::fleece`'s `copy.rs`):
            // what lies outside them reads as zeros there, so it is refused instead. Its
            // export is read-only: nothing is discarded, and nothing is spooled (the copy
            // is qemu's spool; the guest no longer waits for it).
            self.view
                .fence(&clean_blocks(&extents, self.vm.disks[self.index].size));
            info!(vm = %self.vm.name, disk = %self.vm.disks[self.index].name, cycle = self.cycle,
                  dirty_bytes = dirty, from_file = self.view.reads_file(),
                  "qemu cycle: read from qemu's copy of its dirty blocks");
        }
        let discarding = self.discard_unread(&extents, tee.is_some());
        let spooled = match (&tee, discarding) {
            (Some(t), true) => self.spool(&extents, t)?,
            _ => None,
        };
        let view: Arc<dyn crate::disk::VirtualDisk> = match (spooled, &tee) {
            (Some(sp), _) => Arc::new(sp),
            (None, Some(t)) => Arc::new(HashingView {
                view: self.view.clone(),
                tee: t.clone(),
            }),
            (None, None) => self.view.clone(),
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
              discarded_bytes_total = c.discarded.load(Ordering::Relaxed) + self.view.discarded_bytes(),
              refused_reads_total = c.refused.load(Ordering::Relaxed) + self.view.refused_reads(),
              "qemu cycle: bytes read from views against dirty bytes (bitmap granularity)");
        Ok(())
    }

    /// Never: a `ViewCycle` is one switch's view, opened once, and every round takes a new
    /// one. What the receiver holds of an open cycle came from an earlier view (a killed
    /// sender, a failed round: their bitmaps were merged back into this cycle's), and the
    /// guest may have written there since.
    fn same_bytes_as_before(&self, _cycle: u64) -> bool {
        false
    }

    fn mark_resync(&self, reason: &str) {
        let name = &self.vm.disks[self.index].name;
        if let Err(e) = self.vm.state.mark_resync(name, reason) {
            warn!(error = %e, "cannot record the resync mark");
        }
    }
}
