//! One open disk of the local store: range checks, write/clear/read, and the ordered,
//! crash-safe steps of checkpoint, commit and a new full copy.

use std::path::PathBuf;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use vdrep_proto::{Guid, RangeSet};

use super::files::{
    check_len, check_range, committed_state, corrupt, create_partial, footer_id, io_err, persist,
    remove_partial,
};
use super::fs::{DataFile, LockGuard, StoreFs};
use super::state::{self, STATE_VERSION};
use super::DiskPaths;
use crate::layout::{
    random_guid, replica_file_size, replica_footer, replica_virtual_size, vhd_timestamp, MAX_BLOB,
};
use crate::sink::{DiskKey, DiskState, RecoveryPoint, ReplicaDisk, SinkError};

/// The mutable part of a disk: its durable state and the open images.
struct Inner {
    state: DiskState,
    /// Where writes go: the partial copy while one is in progress, else the replica. `None`
    /// after a new copy's file could not be created (e.g. disk full): the next call that
    /// needs it creates it again.
    working: Option<Arc<dyn DataFile>>,
    working_path: PathBuf,
    /// The committed replica, if any.
    committed: Option<Arc<dyn DataFile>>,
}

/// A disk of the [`super::LocalStore`]; holds the disk's lock until dropped.
pub struct LocalDisk {
    key: DiskKey,
    fs: Arc<dyn StoreFs>,
    paths: DiskPaths,
    inner: RwLock<Inner>,
    _lock: LockGuard,
}

impl LocalDisk {
    /// Locks the disk, reads or creates its state, finishes an interrupted commit, and
    /// opens its images. See `LAYOUT.md` for the recovery rules.
    pub(super) fn open(
        fs: Arc<dyn StoreFs>,
        key: DiskKey,
        paths: DiskPaths,
        virtual_size: u64,
        source_id: Guid,
    ) -> Result<LocalDisk, SinkError> {
        let lock = fs
            .try_lock(&paths.lock)
            .map_err(io_err(&paths.lock, "lock", 0))?
            .ok_or_else(|| SinkError::Locked {
                path: paths.lock.clone(),
            })?;
        let file_size = replica_file_size(virtual_size);
        let raw = fs
            .read_file(&paths.state)
            .map_err(io_err(&paths.state, "read", 0))?;
        let mut disk_state = match raw {
            None => {
                if virtual_size == 0 || file_size > MAX_BLOB {
                    return Err(SinkError::Unsupported {
                        path: paths.vhd.clone(),
                        offset: virtual_size,
                        problem: format!(
                            "disk size {virtual_size} bytes: replicas hold 1 byte up to {} bytes \
                             (the 8 TiB page blob limit, footer included)",
                            MAX_BLOB - replica_file_size(0)
                        ),
                    });
                }
                if fs
                    .exists(&paths.vhd)
                    .map_err(io_err(&paths.vhd, "stat", 0))?
                {
                    return Err(corrupt(
                        &paths.state,
                        0,
                        format!("missing, but the replica {} exists", paths.vhd.display()),
                    ));
                }
                None
            }
            Some(bytes) => {
                let s = state::decode(&bytes).map_err(|(o, p)| corrupt(&paths.state, o, p))?;
                if s.virtual_size != virtual_size {
                    return Err(SinkError::SizeMismatch {
                        path: paths.state.clone(),
                        recorded: s.virtual_size,
                        requested: virtual_size,
                    });
                }
                if s.source_id != source_id {
                    return Err(SinkError::IdentityMismatch {
                        path: paths.state.clone(),
                        recorded: s.source_id,
                        requested: source_id,
                    });
                }
                Some(s)
            }
        };
        let new_disk = disk_state.is_none();
        let mut st = disk_state.take().unwrap_or(DiskState {
            format_version: STATE_VERSION,
            virtual_size,
            source_id,
            initial_committed: false,
            committed_cycle: 0,
            progress: RangeSet::new(),
            generation: 1,
            initial_in_progress: true,
            replica_id: Guid::NIL,
            copy_id: random_guid(),
        });
        let mut partial = None;
        if new_disk {
            partial = Some(create_partial(fs.as_ref(), &paths, file_size)?);
            persist(fs.as_ref(), &paths, &st)?;
        } else if st.initial_in_progress {
            if st.progress.is_empty() {
                // Nothing is claimed: start from a fresh sparse file, whatever is there.
                partial = Some(create_partial(fs.as_ref(), &paths, file_size)?);
            } else if fs
                .exists(&paths.partial)
                .map_err(io_err(&paths.partial, "stat", 0))?
            {
                let f = fs.open_data(&paths.partial, None).map_err(io_err(
                    &paths.partial,
                    "open",
                    0,
                ))?;
                check_len(f.as_ref(), &paths.partial, file_size)?;
                partial = Some(f);
            } else if footer_id(fs.as_ref(), &paths.vhd, virtual_size)? == Some(st.copy_id) {
                // The commit published the copy (rename) but crashed before recording it.
                st = committed_state(&st);
                persist(fs.as_ref(), &paths, &st)?;
            } else {
                tracing::warn!(
                    partial = %paths.partial.display(),
                    "the in-progress copy is missing; restarting it from zero"
                );
                // Forget the claims before making the new (empty) file, never after.
                st.progress = RangeSet::new();
                persist(fs.as_ref(), &paths, &st)?;
                partial = Some(create_partial(fs.as_ref(), &paths, file_size)?);
            }
        } else {
            // A partial without a copy in progress is the leftover of an interrupted
            // begin_initial: it was never recorded, so it holds nothing anyone relies on.
            remove_partial(fs.as_ref(), &paths)?;
        }
        let committed = if st.initial_committed {
            match footer_id(fs.as_ref(), &paths.vhd, virtual_size)? {
                Some(id) if id == st.replica_id => {}
                Some(id) => {
                    return Err(corrupt(
                        &paths.vhd,
                        replica_virtual_size(virtual_size),
                        format!(
                            "footer unique id {id} differs from the recorded replica {}",
                            st.replica_id
                        ),
                    ))
                }
                None => {
                    return Err(corrupt(
                        &paths.vhd,
                        0,
                        "the committed replica is missing or has no valid footer",
                    ))
                }
            }
            Some(
                fs.open_data(&paths.vhd, None)
                    .map_err(io_err(&paths.vhd, "open", 0))?,
            )
        } else {
            None
        };
        let (working, working_path) = match (partial, &committed) {
            (Some(p), _) => (p, paths.partial.clone()),
            (None, Some(c)) => (c.clone(), paths.vhd.clone()),
            (None, None) => {
                return Err(corrupt(
                    &paths.state,
                    0,
                    "no replica and no copy in progress",
                ))
            }
        };
        Ok(LocalDisk {
            key,
            fs,
            paths,
            inner: RwLock::new(Inner {
                state: st,
                working: Some(working),
                working_path,
                committed,
            }),
            _lock: lock,
        })
    }

    /// The files of this disk.
    pub fn paths(&self) -> &DiskPaths {
        &self.paths
    }

    fn read_inner(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }
    fn write_inner(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes sure the working image exists (see [`Inner::working`]).
    fn ensure_working(&self, inner: &mut Inner) -> Result<Arc<dyn DataFile>, SinkError> {
        if let Some(w) = &inner.working {
            return Ok(w.clone());
        }
        if !inner.state.initial_in_progress {
            if let Some(c) = &inner.committed {
                inner.working = Some(c.clone());
                inner.working_path = self.paths.vhd.clone();
                return Ok(c.clone());
            }
        }
        if !inner.state.progress.is_empty() {
            // A fresh file holds none of the claimed data: forget the claims first.
            let next = DiskState {
                progress: RangeSet::new(),
                ..inner.state.clone()
            };
            self.persist(&next)?;
            inner.state = next;
        }
        let size = replica_file_size(inner.state.virtual_size);
        let f = create_partial(self.fs.as_ref(), &self.paths, size)?;
        inner.working = Some(f.clone());
        inner.working_path = self.paths.partial.clone();
        Ok(f)
    }

    /// The working image and the state, under the read lock (creating the image if needed).
    fn working(&self) -> Result<(RwLockReadGuard<'_, Inner>, Arc<dyn DataFile>), SinkError> {
        {
            let g = self.read_inner();
            if let Some(w) = g.working.clone() {
                return Ok((g, w));
            }
        }
        self.ensure_working(&mut self.write_inner())?;
        let g = self.read_inner();
        let w = g.working.clone().ok_or_else(|| SinkError::InvalidState {
            path: self.paths.partial.clone(),
            offset: 0,
            problem: "the in-progress copy vanished".into(),
        })?;
        Ok((g, w))
    }

    fn persist(&self, st: &DiskState) -> Result<(), SinkError> {
        persist(self.fs.as_ref(), &self.paths, st)
    }
}

impl ReplicaDisk for LocalDisk {
    fn key(&self) -> &DiskKey {
        &self.key
    }

    fn state(&self) -> DiskState {
        self.read_inner().state.clone()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), SinkError> {
        let (inner, w) = self.working()?;
        check_range(
            &inner.working_path,
            "write",
            offset,
            data.len() as u64,
            &inner.state,
            true,
        )?;
        w.write_at(offset, data)
            .map_err(io_err(&inner.working_path, "write", offset))
    }

    fn clear(&self, offset: u64, len: u64) -> Result<(), SinkError> {
        let (inner, w) = self.working()?;
        check_range(
            &inner.working_path,
            "clear",
            offset,
            len,
            &inner.state,
            true,
        )?;
        w.zero_range(offset, len)
            .map_err(io_err(&inner.working_path, "clear", offset))
    }

    fn checkpoint(&self, durable: &RangeSet) -> Result<(), SinkError> {
        let mut inner = self.write_inner();
        let path = inner.working_path.clone();
        if let Some(b) = durable.bounds() {
            check_range(
                &path,
                "checkpoint",
                b.start,
                b.end - b.start,
                &inner.state,
                false,
            )?;
        }
        if !inner.state.initial_in_progress && !durable.is_empty() {
            return Err(SinkError::InvalidState {
                path,
                offset: durable.bounds().map(|b| b.start).unwrap_or(0),
                problem: "checkpoint with progress, but no initial copy is in progress".into(),
            });
        }
        let w = self.ensure_working(&mut inner)?;
        w.sync_data().map_err(io_err(&path, "fdatasync", 0))?;
        if inner.state.initial_in_progress && inner.state.progress != *durable {
            let next = DiskState {
                progress: durable.clone(),
                ..inner.state.clone()
            };
            self.persist(&next)?;
            inner.state = next;
        }
        Ok(())
    }

    fn commit_initial(&self, _point: &RecoveryPoint) -> Result<(), SinkError> {
        let mut inner = self.write_inner();
        let st = inner.state.clone();
        let p = &self.paths;
        if !st.initial_in_progress {
            return Err(SinkError::InvalidState {
                path: p.vhd.clone(),
                offset: 0,
                problem: "commit_initial without an initial copy in progress".into(),
            });
        }
        if let Some(gap) = st.progress.gaps_in(0, st.writable_end()).first() {
            return Err(SinkError::InvalidState {
                path: p.partial.clone(),
                offset: gap.start,
                problem: format!(
                    "the initial copy is incomplete: {} bytes not checkpointed, first gap \
                     [{}, {})",
                    st.remaining(),
                    gap.start,
                    gap.end
                ),
            });
        }
        let at = replica_virtual_size(st.virtual_size);
        let footer = replica_footer(
            st.virtual_size,
            st.copy_id,
            vhd_timestamp(SystemTime::now()),
        );
        let f = self.ensure_working(&mut inner)?;
        let published = !self
            .fs
            .exists(&p.partial)
            .map_err(io_err(&p.partial, "stat", 0))?
            && footer_id(self.fs.as_ref(), &p.vhd, st.virtual_size)? == Some(st.copy_id);
        if !published {
            // (A retried commit whose rename already happened skips straight to the state.)
            f.sync_data().map_err(io_err(&p.partial, "fdatasync", 0))?;
            f.write_at(at, &footer)
                .map_err(io_err(&p.partial, "write footer", at))?;
            f.sync_data().map_err(io_err(&p.partial, "fdatasync", at))?;
            self.fs.rename(&p.partial, &p.vhd).map_err(io_err(
                &p.vhd,
                "rename copy to replica",
                0,
            ))?;
            self.fs
                .sync_dir(&p.dir)
                .map_err(io_err(&p.dir, "fsync directory", 0))?;
        }
        let next = committed_state(&st);
        self.persist(&next)?;
        inner.state = next;
        inner.committed = Some(f);
        inner.working_path = p.vhd.clone();
        Ok(())
    }

    fn read(&self, offset: u64, len: usize) -> Result<Bytes, SinkError> {
        let (inner, w) = self.working()?;
        check_range(
            &inner.working_path,
            "read",
            offset,
            len as u64,
            &inner.state,
            false,
        )?;
        let mut buf = BytesMut::zeroed(len);
        w.read_at(offset, &mut buf)
            .map_err(io_err(&inner.working_path, "read", offset))?;
        Ok(buf.freeze())
    }

    fn read_committed(&self, offset: u64, len: usize) -> Result<Bytes, SinkError> {
        let inner = self.read_inner();
        let path = &self.paths.vhd;
        check_range(path, "read", offset, len as u64, &inner.state, false)?;
        let Some(c) = &inner.committed else {
            return Err(SinkError::InvalidState {
                path: path.clone(),
                offset,
                problem: "no initial copy has been committed yet".into(),
            });
        };
        let mut buf = BytesMut::zeroed(len);
        c.read_at(offset, &mut buf)
            .map_err(io_err(path, "read", offset))?;
        Ok(buf.freeze())
    }

    fn begin_initial(&self) -> Result<(), SinkError> {
        let mut inner = self.write_inner();
        let st = inner.state.clone();
        let size = replica_file_size(st.virtual_size);
        // Order: drop the old copy, record the new generation with nothing claimed, then
        // create its file. A crash anywhere leaves claims only about durable data, and the
        // committed replica is not touched.
        if st.initial_in_progress {
            inner.working = None;
        }
        remove_partial(self.fs.as_ref(), &self.paths)?;
        let next = DiskState {
            progress: RangeSet::new(),
            generation: st.generation.saturating_add(1),
            initial_in_progress: true,
            copy_id: random_guid(),
            ..st
        };
        self.persist(&next)?;
        inner.state = next;
        // From here writes must never reach the committed replica.
        inner.working = None;
        inner.working_path = self.paths.partial.clone();
        let f = create_partial(self.fs.as_ref(), &self.paths, size)?;
        inner.working = Some(f);
        Ok(())
    }

    fn begin_cycle(&self, _cycle: u64) -> Result<RangeSet, SinkError> {
        Ok(RangeSet::new()) // TEMPORARY stub on branch azure: the store worker implements it
    }
    fn points(&self) -> Result<Vec<RecoveryPoint>, SinkError> {
        Ok(Vec::new()) // TEMPORARY stub on branch azure
    }
    fn prune_points(&self, _older_than_unix: u64) -> Result<Vec<u64>, SinkError> {
        Ok(Vec::new()) // TEMPORARY stub on branch azure
    }
    fn read_point(&self, _cycle: u64, offset: u64, len: usize) -> Result<Bytes, SinkError> {
        self.read_committed(offset, len) // TEMPORARY stub on branch azure
    }
    fn commit_cycle(&self, point: &RecoveryPoint) -> Result<(), SinkError> {
        let cycle = point.cycle;
        let mut inner = self.write_inner();
        let st = inner.state.clone();
        let path = self.paths.vhd.clone();
        let problem = if st.initial_in_progress || !st.initial_committed {
            Some("cycles apply to a committed replica with no initial copy in progress".to_string())
        } else if cycle < st.committed_cycle || cycle == 0 {
            Some(format!(
                "cycle {cycle} is not after the committed cycle {}",
                st.committed_cycle
            ))
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(SinkError::InvalidState {
                path,
                offset: 0,
                problem,
            });
        }
        if cycle == st.committed_cycle {
            return Ok(()); // a resent commit: already durable
        }
        let w = self.ensure_working(&mut inner)?;
        w.sync_data().map_err(io_err(&path, "fdatasync", 0))?;
        let next = DiskState {
            committed_cycle: cycle,
            ..st
        };
        self.persist(&next)?;
        inner.state = next;
        Ok(())
    }

    fn path_hint(&self) -> String {
        let inner = self.read_inner();
        inner.working_path.display().to_string()
    }
}
