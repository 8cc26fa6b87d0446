//! One disk of the Azure store: the leased page blob, its state blob and its snapshots.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use bytes::Bytes;
use vdrep_proto::{Guid, RangeSet};

use super::blob::Container;
use super::pipe::{leased, Pipe, Target};
use super::points::download_snapshot;
use super::points::{committed_snaps, list_snaps, renew_loop, Snap};
use super::rest::RestError;
use super::rest_err;
use super::state::{self, AZURE_STATE_VERSION};
use super::writes::Permits;
use crate::layout::{random_guid, replica_file_size};
use crate::sink::{lifecycle, DiskKey, DiskState, RecoveryPoint, SinkError};

pub(super) struct Inner {
    pub(super) st: DiskState,
    /// ETag of the state blob as last written by us.
    pub(super) etag: Option<String>,
    /// Ranges of the base blob known to be zero (fresh blob, not written since).
    pub(super) fresh: RangeSet,
}

/// A disk of the [`super::AzureStore`]; holds the blob's lease until dropped.
pub struct AzureDisk {
    pub(super) key: DiskKey,
    pub(super) c: Arc<Container>,
    pub(super) blob: String,
    pub(super) state_blob: String,
    pub(super) lease: String,
    pub(super) lease_secs: u32,
    pub(super) inner: Mutex<Inner>,
    pub(super) permits: Permits,
    /// Writes waiting to be sent as Put Pages of up to 4 MiB (see [`super::coalesce`]) and
    /// the threads sending them ([`super::pipe`]).
    pub(super) pipe: Arc<Pipe>,
    pub(super) stop: Arc<(Mutex<bool>, Condvar)>,
    pub(super) lease_lost: Arc<AtomicBool>,
    pub(super) renewer: Mutex<Option<JoinHandle<()>>>,
}

impl AzureDisk {
    pub(super) fn open(
        c: Arc<Container>,
        key: DiskKey,
        virtual_size: u64,
        source_id: Guid,
        lease_secs: u32,
        max_parallel: usize,
        max_pending: usize,
    ) -> Result<AzureDisk, SinkError> {
        let blob = format!("{}/{}.vhd", key.vm, key.disk);
        let state_blob = format!("{}/{}.state", key.vm, key.disk);
        // Before any arithmetic on a size that came from the wire.
        lifecycle::check_size(Path::new(&c.url(&blob)), virtual_size)?;
        let file_size = replica_file_size(virtual_size);
        // The lease needs the blob: create it if absent (nobody writes before leasing).
        if c.blob_size(&blob).map_err(rest_err)?.is_none() {
            c.create_page_blob(&blob, file_size, None)
                .map_err(rest_err)?;
        }
        let lease = random_guid().to_string();
        if let Err(e) = c.acquire_lease(&blob, &lease, lease_secs) {
            if e.status == Some(409) {
                return Err(SinkError::Locked {
                    path: c.url(&blob).into(),
                });
            }
            return Err(rest_err(e));
        }
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let lease_lost = Arc::new(AtomicBool::new(false));
        let renewer = {
            let (c, blob, lease, stop, lost) = (
                c.clone(),
                blob.clone(),
                lease.clone(),
                stop.clone(),
                lease_lost.clone(),
            );
            std::thread::Builder::new()
                .name("vdrep-lease".into())
                .spawn(move || renew_loop(&c, &blob, &lease, lease_secs, &stop, &lost))
                .ok()
        };
        let target = Target {
            c: c.clone(),
            blob: blob.clone(),
            lease: lease.clone(),
            lease_secs,
            lease_lost: lease_lost.clone(),
            virtual_size,
        };
        let pipe = Pipe::new(target, max_parallel, max_pending);
        let mut d = AzureDisk {
            key,
            c,
            blob,
            state_blob,
            lease,
            lease_secs,
            inner: Mutex::new(Inner {
                st: lifecycle::new_replica(
                    AZURE_STATE_VERSION,
                    virtual_size,
                    source_id,
                    random_guid(),
                ),
                etag: None,
                fresh: RangeSet::new(),
            }),
            permits: Permits {
                free: Mutex::new(max_parallel),
                cv: Condvar::new(),
            },
            pipe,
            stop,
            lease_lost,
            renewer: Mutex::new(renewer),
        };
        d.recover(virtual_size, source_id)?;
        Ok(d)
    }

    /// Reads the state (or starts a new disk) and rolls interrupted commits forward.
    pub(super) fn recover(&mut self, virtual_size: u64, source_id: Guid) -> Result<(), SinkError> {
        let spath: PathBuf = self.c.url(&self.state_blob).into();
        let raw = self.c.get_blob(&self.state_blob).map_err(rest_err)?;
        let file_size = replica_file_size(virtual_size);
        let mut inner = self.lock();
        let Some((bytes, etag)) = raw else {
            // New disk (or a blob without state: nothing claims anything about it).
            self.recreate_blob(&mut inner)?;
            let st = inner.st.clone();
            self.persist(&mut inner, st)?;
            return Ok(());
        };
        let mut st = state::decode(&bytes).map_err(|problem| SinkError::CorruptState {
            path: spath.clone(),
            offset: 0,
            problem,
        })?;
        inner.etag = Some(etag);
        lifecycle::check_reopen(&spath, &st, virtual_size, source_id)?;
        let size = self.c.blob_size(&self.blob).map_err(rest_err)?;
        if size != Some(file_size) {
            return Err(SinkError::CorruptState {
                path: self.c.url(&self.blob).into(),
                offset: 0,
                problem: format!("page blob size {size:?} differs from the expected {file_size}"),
            });
        }
        let snaps = self.list_snaps()?;
        // A commit whose snapshot exists but was not recorded: roll it forward (the
        // lifecycle's takeover rule).
        let d = &st;
        let mut changed = false;
        if d.initial_in_progress {
            if snaps
                .iter()
                .any(|s| s.replica == d.copy_id && s.point.cycle == 0)
            {
                st = lifecycle::committed_after_initial(&st);
                changed = true;
            }
        } else if let Some(open) = d.open_cycle {
            if snaps
                .iter()
                .any(|s| s.replica == d.replica_id && s.point.cycle == open)
            {
                st = lifecycle::committed_cycle(&st, open);
                changed = true;
            }
        }
        inner.st = st.clone();
        if st.initial_in_progress && st.progress.is_empty() {
            // Nothing claimed: start the copy from a fresh all-zero blob.
            self.recreate_blob(&mut inner)?;
        }
        if changed {
            self.persist(&mut inner, st)?;
        }
        Ok(())
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn url(&self) -> PathBuf {
        self.c.url(&self.blob).into()
    }

    /// Replaces the base blob by an all-zero one (snapshots stay) under our lease.
    pub(super) fn recreate_blob(&self, inner: &mut Inner) -> Result<(), SinkError> {
        let size = replica_file_size(inner.st.virtual_size);
        self.leased(|| self.c.create_page_blob(&self.blob, size, Some(&self.lease)))
            .map_err(rest_err)?;
        inner.fresh = RangeSet::from_range(0, inner.st.writable_end());
        Ok(())
    }

    /// Writes the state blob (If-Match on our last ETag).
    pub(super) fn persist(&self, inner: &mut Inner, next: DiskState) -> Result<(), SinkError> {
        let body = state::encode(&next);
        let etag = self
            .c
            .put_block_blob(&self.state_blob, &body, inner.etag.as_deref())
            .map_err(|e| {
                if e.status == Some(412) || e.status == Some(409) {
                    SinkError::Azure {
                        url: e.url,
                        op: "write state blob",
                        offset: 0,
                        status: e.status,
                        code: "LeaseLostStateChanged".into(),
                        problem: "the state blob was changed by another receiver".into(),
                        recoverable: true,
                    }
                } else {
                    rest_err(e)
                }
            })?;
        inner.etag = Some(etag);
        inner.st = next;
        Ok(())
    }

    /// The snapshots of the blob (any generation), oldest first.
    pub(super) fn list_snaps(&self) -> Result<Vec<Snap>, SinkError> {
        list_snaps(&self.c, &self.blob)
    }

    /// The snapshots of the committed generation up to the committed cycle.
    pub(super) fn committed_snaps(&self, st: &DiskState) -> Result<Vec<Snap>, SinkError> {
        committed_snaps(&self.c, &self.blob, st)
    }
}

impl AzureDisk {
    pub(super) fn snapshot(
        &self,
        point: &RecoveryPoint,
        replica: Guid,
    ) -> Result<String, SinkError> {
        let mut m = BTreeMap::new();
        m.insert("vdrepcycle".to_string(), point.cycle.to_string());
        m.insert("vdrepcreated".to_string(), point.created_unix.to_string());
        m.insert("vdrepbytes".to_string(), point.bytes.to_string());
        m.insert("vdrepdigest".to_string(), hex::encode(point.digest));
        m.insert("vdrepreplica".to_string(), replica.to_string());
        self.leased(|| self.c.snapshot(&self.blob, &m, Some(&self.lease)))
            .map_err(rest_err)
    }

    pub(super) fn lease_check(&self) -> Result<(), SinkError> {
        self.pipe.target.lease_check()
    }

    /// Runs `f` under the lease, re-acquiring an expired one ([`leased`]).
    pub(super) fn leased<T>(&self, f: impl Fn() -> Result<T, RestError>) -> Result<T, RestError> {
        leased(
            &self.c,
            &self.blob,
            &self.lease,
            self.lease_secs,
            &self.lease_lost,
            f,
        )
    }

    /// Downloads recovery point `cycle` into a local fixed VHD at `out` (see
    /// [`download_snapshot`]). Returns the bytes downloaded.
    pub fn download_point(&self, cycle: u64, out: &Path) -> Result<u64, SinkError> {
        let st = self.lock().st.clone();
        let snap = self.find_point(&st, cycle)?;
        download_snapshot(
            &self.c,
            &self.blob,
            &snap.id,
            replica_file_size(st.virtual_size),
            out,
        )
    }

    pub(super) fn find_point(&self, st: &DiskState, cycle: u64) -> Result<Snap, SinkError> {
        let snaps = self.committed_snaps(st)?;
        let kept = snaps.first().zip(snaps.last());
        let kept = kept.map(|(a, b)| (a.point.cycle, b.point.cycle));
        snaps
            .into_iter()
            .find(|s| s.point.cycle == cycle)
            .ok_or_else(|| lifecycle::no_point(&self.url(), kept, cycle))
    }

    pub(super) fn read_snapshot(
        &self,
        snap: &str,
        offset: u64,
        len: usize,
    ) -> Result<Bytes, SinkError> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        let data = self
            .c
            .get_range(&self.blob, Some(snap), offset, len as u64)
            .map_err(rest_err)?;
        Ok(Bytes::from(data))
    }
}

impl Drop for AzureDisk {
    fn drop(&mut self) {
        self.pipe.stats.taken(self.pipe.lock().take_counts());
        self.pipe.stats.report(&self.blob, true);
        // Senders first: no Put Page of ours may follow the lease's release.
        self.pipe.shutdown(std::time::Duration::from_secs(10));
        *self.stop.0.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.stop.1.notify_all();
        if let Some(h) = self
            .renewer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = h.join();
        }
    }
}
