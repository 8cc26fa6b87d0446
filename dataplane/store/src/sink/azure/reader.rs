//! Read-only access to an Azure disk's recovery points without its lease, and removal of a
//! disk. Points are blob snapshots, which the service never changes: a read of a snapshot is
//! always exactly its point; the only race is a prune (or a new full copy) deleting the
//! snapshot, which surfaces as `NotFound`.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use vdrep_proto::{Guid, RangeSet};

use super::blob::Container;
use super::points::{committed_snaps, Snap};
use super::rest_err;
use super::state;
use crate::sink::{lifecycle, DiskKey, DiskState, PointReader, RecoveryPoint, SinkError};

/// A [`PointReader`] on a disk of the Azure store.
pub struct AzurePointReader {
    c: Arc<Container>,
    key: DiskKey,
    blob: String,
    state_blob: String,
    virtual_size: u64,
    /// The committed replica (footer id) the view is pinned to; NIL before the first commit.
    replica_id: Guid,
    snaps: Mutex<Vec<Snap>>,
}

fn names(key: &DiskKey) -> (String, String) {
    (
        format!("{}/{}.vhd", key.vm, key.disk),
        format!("{}/{}.state", key.vm, key.disk),
    )
}

/// Reads the state blob of `key`; `NotFound` when there is none.
fn load_state(c: &Container, key: &DiskKey) -> Result<DiskState, SinkError> {
    let (_, sblob) = names(key);
    let Some((bytes, _)) = c.get_blob(&sblob).map_err(rest_err)? else {
        return Err(SinkError::NotFound {
            path: c.url(&sblob).into(),
            problem: format!("no replica of disk {key} in this container (no state blob)"),
        });
    };
    state::decode(&bytes).map_err(|problem| SinkError::CorruptState {
        path: c.url(&sblob).into(),
        offset: 0,
        problem,
    })
}

impl AzurePointReader {
    pub(super) fn open(c: Arc<Container>, key: DiskKey) -> Result<AzurePointReader, SinkError> {
        let st = load_state(&c, &key)?;
        let (blob, state_blob) = names(&key);
        Ok(AzurePointReader {
            c,
            key,
            blob,
            state_blob,
            virtual_size: st.virtual_size,
            replica_id: if st.initial_committed {
                st.replica_id
            } else {
                Guid::NIL
            },
            snaps: Mutex::new(Vec::new()),
        })
    }

    /// Lists the snapshots of the pinned replica afresh.
    fn refresh(&self) -> Result<Vec<Snap>, SinkError> {
        let st = load_state(&self.c, &self.key)?;
        if !st.initial_committed {
            return Ok(Vec::new());
        }
        if st.replica_id != self.replica_id {
            return Err(SinkError::NotFound {
                path: self.c.url(&self.state_blob).into(),
                problem: format!(
                    "the replica of {} was replaced by a new full copy (resynchronisation) \
                     while it was being read: the recovery points it had are gone; run the \
                     command again",
                    self.key
                ),
            });
        }
        let snaps = committed_snaps(&self.c, &self.blob, &st)?;
        *self.snaps.lock().unwrap_or_else(|p| p.into_inner()) = snaps.clone();
        Ok(snaps)
    }

    /// The snapshot of point `cycle`, from the cached listing or a fresh one.
    fn snap(&self, cycle: u64, fresh: bool) -> Result<Snap, SinkError> {
        let cached = (!fresh)
            .then(|| {
                self.snaps
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .find(|s| s.point.cycle == cycle)
                    .cloned()
            })
            .flatten();
        if let Some(s) = cached {
            return Ok(s);
        }
        let snaps = self.refresh()?;
        snaps
            .iter()
            .find(|s| s.point.cycle == cycle)
            .cloned()
            .ok_or_else(|| self.no_point(&snaps, cycle))
    }

    fn no_point(&self, snaps: &[Snap], cycle: u64) -> SinkError {
        let kept = snaps.first().zip(snaps.last());
        let kept = kept.map(|(a, b)| (a.point.cycle, b.point.cycle));
        lifecycle::no_point(std::path::Path::new(&self.c.url(&self.blob)), kept, cycle)
    }
}

impl PointReader for AzurePointReader {
    fn key(&self) -> &DiskKey {
        &self.key
    }

    fn virtual_size(&self) -> u64 {
        self.virtual_size
    }

    fn points(&self) -> Result<Vec<RecoveryPoint>, SinkError> {
        Ok(self.refresh()?.into_iter().map(|s| s.point).collect())
    }

    fn read_point(&self, cycle: u64, offset: u64, len: usize) -> Result<Bytes, SinkError> {
        let url = self.c.url(&self.blob);
        let path = std::path::Path::new(&url);
        lifecycle::check_range_of(path, "read", offset, len as u64, self.virtual_size, false)?;
        if len == 0 {
            self.snap(cycle, false)?;
            return Ok(Bytes::new());
        }
        let mut fresh = false;
        loop {
            let snap = self.snap(cycle, fresh)?;
            match self
                .c
                .get_range(&self.blob, Some(&snap.id), offset, len as u64)
            {
                Ok(data) if data.len() == len => return Ok(Bytes::from(data)),
                Ok(data) => {
                    return Err(SinkError::CorruptState {
                        path: self.c.url(&self.blob).into(),
                        offset,
                        problem: format!(
                            "snapshot {} answered {} bytes for a read of {len}",
                            snap.id,
                            data.len()
                        ),
                    })
                }
                // Pruned (or dropped with its generation) since the listing: list again,
                // which names what is left.
                Err(e) if e.status == Some(404) && !fresh => fresh = true,
                Err(e) => return Err(rest_err(e)),
            }
        }
    }

    fn allocated(&self, cycle: u64) -> Result<Option<RangeSet>, SinkError> {
        let snap = self.snap(cycle, false)?;
        let set = self
            .c
            .page_ranges(&self.blob, Some(&snap.id))
            .map_err(rest_err)?;
        Ok(Some(set))
    }

    fn describe(&self) -> String {
        self.c.url(&self.blob)
    }
}

/// Deletes a disk's page blob (with its snapshots, the recovery points), its resync index
/// and its state blob, the state last. Refused while a receiver holds the blob's lease.
pub(super) fn remove_disk(c: &Container, key: &DiskKey) -> Result<(), SinkError> {
    let (blob, sblob) = names(key);
    if c.blob_size(&blob).map_err(rest_err)?.is_some() {
        let lease = c.lease_state(&blob).map_err(rest_err)?;
        if matches!(lease.as_str(), "leased" | "breaking") {
            return Err(SinkError::Locked {
                path: c.url(&blob).into(),
            });
        }
        // A receiver that leased the blob since the check makes this fail (lease id
        // missing): nothing is deleted under a live receiver.
        c.delete_blob(&blob, None).map_err(rest_err)?;
    }
    super::hidx::remove(c, &super::hidx_name(key)).map_err(rest_err)?;
    c.delete_blob(&sblob, None).map_err(rest_err)?;
    Ok(())
}
