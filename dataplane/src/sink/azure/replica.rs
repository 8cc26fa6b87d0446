//! The [`ReplicaDisk`] operations of an [`AzureDisk`]: writes (coalesced into Put Pages),
//! clears, checkpoints and commits as snapshots, reads of the blob and of its snapshots.

use bytes::Bytes;
use vdrep_proto::RangeSet;

use super::disk::{committed_after_initial, AzureDisk};
use super::rest_err;
use super::state::AzState;
use crate::layout::{random_guid, replica_footer, replica_virtual_size, vhd_timestamp};
use crate::sink::{DiskKey, DiskState, RecoveryPoint, ReplicaDisk, SinkError};

impl ReplicaDisk for AzureDisk {
    fn key(&self) -> &DiskKey {
        &self.key
    }

    fn state(&self) -> DiskState {
        let inner = self.lock();
        let mut d = inner.st.disk.clone();
        // The trait reports an open cycle's progress in `progress` (the Azure state keeps
        // the two apart because an initial copy and a cycle never overlap).
        d.open_cycle = inner.st.open_cycle;
        if inner.st.open_cycle.is_some() {
            d.progress = inner.st.cycle_progress.clone();
        }
        d
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), SinkError> {
        {
            let mut inner = self.lock();
            self.check("write", offset, data.len() as u64, &inner.st.disk, true)?;
            // Forget zero-knowledge first: a concurrent clear must not skip this range.
            inner.fresh.remove(offset, offset + data.len() as u64);
        }
        if data.is_empty() {
            return Ok(());
        }
        // Buffered: joined with adjacent writes into Put Pages of up to 4 MiB; durable by
        // the next checkpoint (which sends whatever is pending before recording progress).
        self.buffered_write(offset, data)
    }

    fn clear(&self, offset: u64, len: u64) -> Result<(), SinkError> {
        let gaps = {
            let inner = self.lock();
            self.check("clear", offset, len, &inner.st.disk, true)?;
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
        if !st.disk.initial_in_progress {
            return Err(SinkError::InvalidState {
                path: self.url(),
                offset: 0,
                problem: "commit_initial without an initial copy in progress".into(),
            });
        }
        if let Some(gap) = st.disk.progress.gaps_in(0, st.disk.writable_end()).first() {
            return Err(SinkError::InvalidState {
                path: self.url(),
                offset: gap.start,
                problem: format!(
                    "the initial copy is incomplete: {} bytes not checkpointed, first gap [{}, {})",
                    st.disk.remaining(),
                    gap.start,
                    gap.end
                ),
            });
        }
        let vs = st.disk.virtual_size;
        let footer = replica_footer(
            vs,
            st.disk.copy_id,
            vhd_timestamp(crate::clock::system_time()),
        );
        let at = replica_virtual_size(vs);
        drop(inner);
        self.put_page_raw(at, &footer)?;
        let point0 = RecoveryPoint {
            cycle: 0,
            ..point.clone()
        };
        self.snapshot(&point0, st.disk.copy_id)?;
        let mut inner = self.lock();
        let next = committed_after_initial(&st, 0);
        self.persist(&mut inner, next.clone())?;
        inner.fresh = RangeSet::new();
        drop(inner);
        // Older generations' points go once the new one is recorded.
        for s in self.list_snaps()? {
            if s.replica != next.disk.replica_id {
                self.c
                    .delete_snapshot(&self.blob, &s.id)
                    .map_err(rest_err)?;
            }
        }
        Ok(())
    }

    fn read(&self, offset: u64, len: usize) -> Result<Bytes, SinkError> {
        self.check("read", offset, len as u64, &self.lock().st.disk, false)?;
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
        self.check("read", offset, len as u64, &st.disk, false)?;
        let newest = self
            .committed_snaps(&st)?
            .pop()
            .ok_or_else(|| SinkError::InvalidState {
                path: self.url(),
                offset,
                problem: "no initial copy has been committed yet".into(),
            })?;
        self.read_snapshot(&newest.id, offset, len)
    }

    fn begin_initial(&self) -> Result<(), SinkError> {
        // Buffered writes belong to the copy being discarded.
        self.discard_pending();
        let mut inner = self.lock();
        let st = inner.st.clone();
        // Record the new generation with nothing claimed, then recreate the blob: the
        // committed points are snapshots and stay untouched.
        let next = AzState {
            disk: DiskState {
                progress: RangeSet::new(),
                generation: st.disk.generation.saturating_add(1),
                initial_in_progress: true,
                copy_id: random_guid(),
                ..st.disk.clone()
            },
            open_cycle: None,
            cycle_progress: RangeSet::new(),
        };
        self.persist(&mut inner, next)?;
        self.recreate_blob(&mut inner)
    }

    fn begin_cycle(&self, cycle: u64) -> Result<RangeSet, SinkError> {
        self.flush_all()?;
        let mut inner = self.lock();
        let st = inner.st.clone();
        let problem = if st.disk.initial_in_progress || !st.disk.initial_committed {
            Some("cycles apply to a committed replica with no initial copy in progress".to_string())
        } else if cycle != st.disk.committed_cycle + 1 {
            Some(format!(
                "cycle {cycle} does not follow the committed cycle {}",
                st.disk.committed_cycle
            ))
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(SinkError::InvalidState {
                path: self.url(),
                offset: 0,
                problem,
            });
        }
        if st.open_cycle == Some(cycle) {
            return Ok(st.cycle_progress);
        }
        let next = AzState {
            open_cycle: Some(cycle),
            cycle_progress: RangeSet::new(),
            ..st
        };
        self.persist(&mut inner, next)?;
        Ok(RangeSet::new())
    }

    fn commit_cycle(&self, point: &RecoveryPoint) -> Result<(), SinkError> {
        // The snapshot must hold every page of the cycle: send what is buffered first.
        self.flush_all()?;
        self.none_pending_in(&RangeSet::from_range(0, u64::MAX))?;
        let st = self.lock().st.clone();
        let cycle = point.cycle;
        if st.disk.initial_committed
            && !st.disk.initial_in_progress
            && cycle == st.disk.committed_cycle
            && cycle > 0
        {
            return Ok(()); // a resent commit
        }
        let problem = if st.disk.initial_in_progress || !st.disk.initial_committed {
            Some("cycles apply to a committed replica with no initial copy in progress".to_string())
        } else if cycle != st.disk.committed_cycle + 1 || st.open_cycle.is_some_and(|o| o != cycle)
        {
            Some(format!(
                "cycle {cycle} is not the open cycle after the committed cycle {}",
                st.disk.committed_cycle
            ))
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(SinkError::InvalidState {
                path: self.url(),
                offset: 0,
                problem,
            });
        }
        self.snapshot(point, st.disk.replica_id)?;
        let mut inner = self.lock();
        let next = AzState {
            disk: DiskState {
                committed_cycle: cycle,
                ..inner.st.disk.clone()
            },
            open_cycle: None,
            cycle_progress: RangeSet::new(),
        };
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
        let mut snaps = self.committed_snaps(&st)?;
        snaps.pop(); // never the newest
        let mut dropped = Vec::new();
        for s in snaps {
            if s.point.created_unix < older_than_unix {
                self.c
                    .delete_snapshot(&self.blob, &s.id)
                    .map_err(rest_err)?;
                dropped.push(s.point.cycle);
            }
        }
        Ok(dropped)
    }

    fn read_point(&self, cycle: u64, offset: u64, len: usize) -> Result<Bytes, SinkError> {
        let st = self.lock().st.clone();
        self.check("read", offset, len as u64, &st.disk, false)?;
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
    /// Records `durable` as the progress of the copy or cycle in progress.
    fn record_progress(&self, durable: &RangeSet) -> Result<(), SinkError> {
        let mut inner = self.lock();
        let st = inner.st.clone();
        if let Some(b) = durable.bounds() {
            self.check("checkpoint", b.start, b.end - b.start, &st.disk, false)?;
        }
        let mut next = st.clone();
        if st.disk.initial_in_progress {
            next.disk.progress = durable.clone();
        } else if st.open_cycle.is_some() {
            next.cycle_progress = durable.clone();
        } else if !durable.is_empty() {
            return Err(SinkError::InvalidState {
                path: self.url(),
                offset: durable.bounds().map(|b| b.start).unwrap_or(0),
                problem: "checkpoint with progress, but neither a copy nor a cycle is open".into(),
            });
        }
        if next != st {
            self.persist(&mut inner, next)?;
        }
        Ok(())
    }
}
