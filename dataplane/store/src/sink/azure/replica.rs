//! The [`ReplicaDisk`] operations of an [`AzureDisk`]: writes (coalesced into Put Pages),
//! clears, checkpoints and commits as snapshots, reads of the blob and of its snapshots.

use bytes::Bytes;
use vdrep_proto::RangeSet;

use super::disk::AzureDisk;
use super::rest_err;
use crate::layout::{random_guid, replica_footer, replica_virtual_size, vhd_timestamp};
use crate::sink::lifecycle::{self, CycleCommit, CycleStart};
use crate::sink::{DiskKey, DiskState, RecoveryPoint, ReplicaDisk, Room, SinkError};

impl ReplicaDisk for AzureDisk {
    fn key(&self) -> &DiskKey {
        &self.key
    }

    fn state(&self) -> DiskState {
        self.lock().st.clone()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), SinkError> {
        {
            let mut inner = self.lock();
            let len = data.len() as u64;
            lifecycle::write_target(&self.url(), "write", &inner.st, offset, len)?;
            // Forget zero-knowledge first: a concurrent clear must not skip this range.
            inner.fresh.remove(offset, offset + len);
        }
        if data.is_empty() {
            return Ok(());
        }
        // Buffered: joined with adjacent writes into Put Pages of up to 4 MiB; durable by
        // the next checkpoint (which sends whatever is pending before recording progress).
        self.buffered_write(offset, data)
    }

    fn room(&self, len: usize) -> Room<'_> {
        self.keep_room(len)
    }

    fn clear(&self, offset: u64, len: u64) -> Result<(), SinkError> {
        let gaps = {
            let inner = self.lock();
            lifecycle::write_target(&self.url(), "clear", &inner.st, offset, len)?;
            // Ranges of a fresh blob are zero already: send nothing for them.
            inner.fresh.gaps_in(offset, offset + len)
        };
        self.lease_check()?;
        // Buffered writes of this range go first: the clear must land after them.
        self.flush_range(offset..offset + len)?;
        for g in gaps {
            let _p = self.permits.take();
            self.leased(|| {
                self.c
                    .clear_pages(&self.blob, g.start, g.end - g.start, Some(&self.lease))
            })
            .map_err(rest_err)?;
        }
        Ok(())
    }

    fn checkpoint(&self, durable: &RangeSet) -> Result<(), SinkError> {
        // A Put Page that returned is durable: send what is buffered, then record progress.
        self.flush_all()?;
        self.none_pending_in(durable)?;
        self.record_progress(durable)
    }

    fn checkpoint_acknowledged(&self, written: &RangeSet) -> Result<bool, SinkError> {
        // Only what the service acknowledged; the rest is recorded by a later checkpoint.
        let acked = self.acknowledged(written)?;
        self.record_progress(&acked)?;
        Ok(acked == *written)
    }

    fn commit_initial(&self, point: &RecoveryPoint) -> Result<(), SinkError> {
        self.flush_all()?;
        self.none_pending_in(&RangeSet::from_range(0, u64::MAX))?;
        let inner = self.lock();
        let st = inner.st.clone();
        let next = lifecycle::commit_initial(&self.url(), &st, point)?;
        let vs = st.virtual_size;
        let footer = replica_footer(vs, st.copy_id, vhd_timestamp(crate::clock::system_time()));
        let at = replica_virtual_size(vs);
        drop(inner);
        // Data, footer and point first; the state records the commit last (a takeover
        // rolls a snapshot of the copy forward).
        self.put_page_raw(at, &footer)?;
        self.snapshot(point, st.copy_id)?;
        let mut inner = self.lock();
        self.persist(&mut inner, next.clone())?;
        inner.fresh = RangeSet::new();
        drop(inner);
        // Older generations' points go once the new one is recorded.
        for s in self.list_snaps()? {
            if s.replica != next.replica_id {
                self.c
                    .delete_snapshot(&self.blob, &s.id)
                    .map_err(rest_err)?;
            }
        }
        Ok(())
    }

    fn read(&self, offset: u64, len: usize) -> Result<Bytes, SinkError> {
        let st = self.lock().st.clone();
        lifecycle::check_range(&self.url(), "read", offset, len as u64, &st, false)?;
        // The working image includes what is buffered.
        self.flush_range(offset..offset + len as u64)?;
        if len == 0 {
            return Ok(Bytes::new());
        }
        let data = self
            .c
            .get_range(&self.blob, None, offset, len as u64)
            .map_err(rest_err)?;
        Ok(Bytes::from(data))
    }

    fn read_committed(&self, offset: u64, len: usize) -> Result<Bytes, SinkError> {
        let st = self.lock().st.clone();
        lifecycle::check_range(&self.url(), "read", offset, len as u64, &st, false)?;
        lifecycle::check_committed(&self.url(), &st, offset)?;
        let newest = self
            .committed_snaps(&st)?
            .pop()
            .ok_or_else(|| lifecycle::no_point(&self.url(), None, st.committed_cycle))?;
        self.read_snapshot(&newest.id, offset, len)
    }

    fn begin_initial(&self) -> Result<(), SinkError> {
        // Buffered writes belong to the copy being discarded.
        self.discard_pending();
        let mut inner = self.lock();
        // Record the new generation with nothing claimed, then recreate the blob: the
        // committed points are snapshots and stay untouched.
        let next = lifecycle::begin_initial(&inner.st, random_guid());
        self.persist(&mut inner, next)?;
        self.recreate_blob(&mut inner)
    }

    fn begin_cycle(&self, cycle: u64) -> Result<RangeSet, SinkError> {
        self.flush_all()?;
        let mut inner = self.lock();
        match lifecycle::begin_cycle(&self.url(), &inner.st, cycle)? {
            CycleStart::Resume(progress) => Ok(progress),
            CycleStart::Open(next) => {
                self.persist(&mut inner, next)?;
                Ok(RangeSet::new())
            }
        }
    }

    fn commit_cycle(&self, point: &RecoveryPoint) -> Result<(), SinkError> {
        // The snapshot must hold every page of the cycle: send what is buffered first.
        self.flush_all()?;
        self.none_pending_in(&RangeSet::from_range(0, u64::MAX))?;
        let st = self.lock().st.clone();
        let next = match lifecycle::commit_cycle(&self.url(), &st, point)? {
            CycleCommit::Resent => return Ok(()),
            CycleCommit::Commit(next) => next,
        };
        // The point first; the state records the commit last (a takeover rolls a snapshot
        // of the open cycle forward).
        self.snapshot(point, st.replica_id)?;
        let mut inner = self.lock();
        self.persist(&mut inner, next)
    }

    fn points(&self) -> Result<Vec<RecoveryPoint>, SinkError> {
        let st = self.lock().st.clone();
        Ok(self
            .committed_snaps(&st)?
            .into_iter()
            .map(|s| s.point)
            .collect())
    }

    fn prune_points(&self, older_than_unix: u64) -> Result<Vec<u64>, SinkError> {
        let st = self.lock().st.clone();
        let snaps = self.committed_snaps(&st)?;
        let points: Vec<RecoveryPoint> = snaps.iter().map(|s| s.point.clone()).collect();
        let doomed = lifecycle::prune(&points, older_than_unix);
        let mut dropped = Vec::new();
        for s in &snaps[..doomed] {
            self.c
                .delete_snapshot(&self.blob, &s.id)
                .map_err(rest_err)?;
            dropped.push(s.point.cycle);
        }
        Ok(dropped)
    }

    fn read_point(&self, cycle: u64, offset: u64, len: usize) -> Result<Bytes, SinkError> {
        let st = self.lock().st.clone();
        lifecycle::check_range(&self.url(), "read", offset, len as u64, &st, false)?;
        let snap = self.find_point(&st, cycle)?;
        self.read_snapshot(&snap.id, offset, len)
    }

    fn path_hint(&self) -> String {
        self.c.url(&self.blob)
    }

    /// The page blob `VM/NAME.hidx` beside the replica, under the replica's lease id
    /// (`sink/azure/hidx.rs`). If it cannot be taken, the receiver keeps the index in memory
    /// only and rehashes the working blob at each resync (logged with this reason).
    fn resync_index(&self) -> Result<Box<dyn crate::resync::index::IndexFile>, String> {
        let f = super::hidx::AzureIndexFile::open(
            self.c.clone(),
            super::hidx_name(&self.key),
            self.lease.clone(),
            self.lease_secs,
        )?;
        Ok(Box::new(f))
    }
}

impl AzureDisk {
    /// Records `durable` as the progress of the copy or cycle in progress (the lifecycle
    /// decides whether that is allowed and whether anything changes).
    fn record_progress(&self, durable: &RangeSet) -> Result<(), SinkError> {
        let mut inner = self.lock();
        if let Some(next) = lifecycle::checkpoint(&self.url(), &inner.st, durable)? {
            self.persist(&mut inner, next)?;
        }
        Ok(())
    }
}
