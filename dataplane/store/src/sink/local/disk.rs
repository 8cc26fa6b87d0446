//! One open disk of the local store: range checks, write/clear/read, and the ordered,
//! crash-safe steps of checkpoint, commit and a new full copy.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard};

use bytes::{Bytes, BytesMut};
use vdrep_proto::{Guid, RangeSet};

use super::cycle::OpenCycle;
use super::files::{
    check_len, check_range, committed_record, corrupt, create_partial, footer_id, invalid, io_err,
    now_unix, persist, remove_partial,
};
use super::fs::{DataFile, LockGuard, StoreFs};
use super::points::UndoCache;
use super::state::{self, Record, STATE_VERSION};
use super::DiskPaths;
use crate::layout::{
    random_guid, replica_file_size, replica_footer, replica_virtual_size, vhd_timestamp,
};
use crate::parts::Parts;
use crate::sink::{lifecycle, DiskKey, DiskState, RecoveryPoint, ReplicaDisk, SinkError};

/// The mutable part of a disk: its durable state and the open images.
pub(super) struct Inner {
    /// The durable state record, as last persisted.
    pub(super) rec: Record,
    /// Where writes go: the partial copy while one is in progress, else the replica. `None`
    /// after a new copy's file could not be created (e.g. disk full): the next call that
    /// needs it creates it again.
    working: Option<Arc<dyn DataFile>>,
    pub(super) working_path: PathBuf,
    /// The committed replica (the newest recovery point), if any.
    pub(super) committed: Option<Arc<dyn DataFile>>,
    /// The open delta cycle: the newest point's undo log and the buffered writes.
    pub(super) cycle: Option<OpenCycle>,
}

/// What a checkpoint's unlocked sync relies on staying the same: the same image file of
/// the same copy generation, in the same copy or cycle. If any of it changed (a commit, a
/// new copy) the sync may not have covered what `durable` names, so the checkpoint is done
/// again under the lock.
#[derive(PartialEq, Eq)]
struct Era {
    same_file: bool,
    generation: u64,
    copying: bool,
    cycle: Option<u64>,
    committed_cycle: u64,
}

impl Era {
    fn of(inner: &Inner, file: &Arc<dyn DataFile>) -> Era {
        let st = &inner.rec.disk;
        let now = if st.open_cycle.is_some() {
            inner.committed.as_ref()
        } else {
            inner.working.as_ref()
        };
        Era {
            // The file the checkpoint synced must still be the one writes go to.
            same_file: now.is_some_and(|f| Arc::ptr_eq(f, file)),
            generation: st.generation,
            copying: st.initial_in_progress,
            cycle: st.open_cycle,
            committed_cycle: st.committed_cycle,
        }
    }
}

/// A disk of the [`super::LocalStore`]; holds the disk's lock until dropped.
pub struct LocalDisk {
    key: DiskKey,
    pub(super) fs: Arc<dyn StoreFs>,
    pub(super) paths: DiskPaths,
    /// See `locks.rs`: `records` before `inner`.
    pub(super) inner: RwLock<Inner>,
    pub(super) records: Mutex<()>,
    undo: Mutex<UndoCache>,
    /// Bytes an open cycle buffers before writing them into the replica.
    pub(super) cycle_buffer: usize,
    /// The first failed fdatasync of this disk's files on this handle (path, message). Set
    /// once, never cleared: see [`SinkError::SyncLost`].
    pub(super) sync_lost: Mutex<Option<(PathBuf, String)>>,
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
        cycle_buffer: usize,
    ) -> Result<LocalDisk, SinkError> {
        let lock = fs
            .try_lock(&paths.lock)
            .map_err(io_err(&paths.lock, "lock", 0))?
            .ok_or_else(|| SinkError::Locked {
                path: paths.lock.clone(),
            })?;
        // Before any arithmetic on a size that came from the wire.
        lifecycle::check_size(&paths.vhd, virtual_size)?;
        let file_size = replica_file_size(virtual_size);
        let raw = fs
            .read_file(&paths.state)
            .map_err(io_err(&paths.state, "read", 0))?;
        let mut disk_state = match raw {
            None => {
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
                lifecycle::check_reopen(&paths.state, &s.disk, virtual_size, source_id)?;
                Some(s)
            }
        };
        let new_disk = disk_state.is_none();
        let mut st = disk_state.take().unwrap_or_else(|| Record {
            disk: lifecycle::new_replica(STATE_VERSION, virtual_size, source_id, random_guid()),
            pending: None,
            points: Vec::new(),
        });
        let mut partial = None;
        if new_disk {
            partial = Some(create_partial(fs.as_ref(), &paths, file_size)?);
            persist(fs.as_ref(), &paths, &st)?;
        } else if st.disk.initial_in_progress {
            if st.disk.progress.is_empty() {
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
            } else if footer_id(fs.as_ref(), &paths.vhd, virtual_size)? == Some(st.disk.copy_id) {
                // The commit published the copy (rename) but crashed before recording it;
                // the point was recorded before the rename.
                let point = st.pending.clone().unwrap_or(RecoveryPoint {
                    cycle: 0,
                    created_unix: now_unix(),
                    bytes: virtual_size,
                    digest: [0; 32],
                });
                st = committed_record(&st, &point);
                persist(fs.as_ref(), &paths, &st)?;
            } else {
                tracing::warn!(
                    partial = %paths.partial.display(),
                    "the in-progress copy is missing; restarting it from zero"
                );
                // Forget the claims before making the new (empty) file, never after.
                st.disk.progress = RangeSet::new();
                persist(fs.as_ref(), &paths, &st)?;
                partial = Some(create_partial(fs.as_ref(), &paths, file_size)?);
            }
        } else {
            // A partial without a copy in progress is the leftover of an interrupted
            // begin_initial: it was never recorded, so it holds nothing anyone relies on.
            remove_partial(fs.as_ref(), &paths)?;
        }
        let committed = if st.disk.initial_committed {
            match footer_id(fs.as_ref(), &paths.vhd, virtual_size)? {
                Some(id) if id == st.disk.replica_id => {}
                Some(id) => {
                    return Err(corrupt(
                        &paths.vhd,
                        replica_virtual_size(virtual_size),
                        format!(
                            "footer unique id {id} differs from the recorded replica {}",
                            st.disk.replica_id
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
        let disk = LocalDisk {
            key,
            fs,
            paths,
            records: Mutex::new(()),
            inner: RwLock::new(Inner {
                rec: st,
                working: Some(working),
                working_path,
                committed,
                cycle: None,
            }),
            undo: Mutex::new(UndoCache::default()),
            cycle_buffer,
            sync_lost: Mutex::new(None),
            _lock: lock,
        };
        disk.recover_cycle()?;
        disk.remove_orphans(&disk.read_inner())?;
        Ok(disk)
    }

    /// The files of this disk.
    pub fn paths(&self) -> &DiskPaths {
        &self.paths
    }

    pub(super) fn undo_cache(&self) -> MutexGuard<'_, UndoCache> {
        self.undo.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes sure the working image exists (see [`Inner::working`]).
    fn ensure_working(&self, inner: &mut Inner) -> Result<Arc<dyn DataFile>, SinkError> {
        if let Some(w) = &inner.working {
            return Ok(w.clone());
        }
        if !inner.rec.disk.initial_in_progress {
            if let Some(c) = &inner.committed {
                inner.working = Some(c.clone());
                inner.working_path = self.paths.vhd.clone();
                return Ok(c.clone());
            }
        }
        if !inner.rec.disk.progress.is_empty() {
            // A fresh file holds none of the claimed data: forget the claims first.
            let mut next = inner.rec.clone();
            next.disk.progress = RangeSet::new();
            self.persist(&next)?;
            inner.rec = next;
        }
        let size = replica_file_size(inner.rec.disk.virtual_size);
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

    /// [`ReplicaDisk::checkpoint`] wholly under the write lock: the fallback when the
    /// disk's state changed while the unlocked sync ran.
    fn checkpoint_locked(&self, inner: &mut Inner, durable: &RangeSet) -> Result<(), SinkError> {
        let path = inner.working_path.clone();
        let next = lifecycle::checkpoint(&path, &inner.rec.disk, durable)?;
        // Data first, then the progress that claims it.
        if inner.rec.disk.open_cycle.is_some() {
            self.cycle_sync(inner)?;
            if let Ok(r) = self.require_replica(inner, "checkpoint") {
                r.drop_cache();
            }
        } else {
            let w = self.ensure_working(inner)?;
            self.sync(w.as_ref(), &path, 0)?;
            w.drop_cache();
        }
        if let Some(disk) = next {
            let next = Record {
                disk,
                ..inner.rec.clone()
            };
            self.persist(&next)?;
            inner.rec = next;
        }
        Ok(())
    }

    pub(super) fn persist(&self, rec: &Record) -> Result<(), SinkError> {
        persist(self.fs.as_ref(), &self.paths, rec)
    }
}

impl ReplicaDisk for LocalDisk {
    fn key(&self) -> &DiskKey {
        &self.key
    }

    fn state(&self) -> DiskState {
        self.read_inner().rec.disk.clone()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), SinkError> {
        self.usable("write")?;
        if let Some(r) = self.cycle_write("write", offset, data.len() as u64, Some(&[data])) {
            return r;
        }
        let (inner, w) = self.working()?;
        check_range(
            &inner.working_path,
            "write",
            offset,
            data.len() as u64,
            &inner.rec.disk,
            true,
        )?;
        w.write_at(offset, data)
            .map_err(io_err(&inner.working_path, "write", offset))
    }

    fn write_parts(&self, offset: u64, data: Parts<'_>) -> Result<(), SinkError> {
        // Only the initial copy's writes go straight to the file (`write` above); a cycle
        // keeps its own copy of the bytes, joined into it from the parts.
        if let [one] = data.slices() {
            return self.write(offset, one);
        }
        self.usable("write")?;
        let (inner, w) = self.working()?;
        if !inner.rec.disk.initial_in_progress {
            drop(inner);
            let len = data.len() as u64;
            if let Some(r) = self.cycle_write("write", offset, len, Some(data.slices())) {
                return r;
            }
            return self.write(offset, &data.to_vec());
        }
        let len = data.len() as u64;
        check_range(
            &inner.working_path,
            "write",
            offset,
            len,
            &inner.rec.disk,
            true,
        )?;
        w.write_parts_at(offset, data.slices()).map_err(io_err(
            &inner.working_path,
            "write",
            offset,
        ))
    }

    fn clear(&self, offset: u64, len: u64) -> Result<(), SinkError> {
        self.usable("clear")?;
        if let Some(r) = self.cycle_write("clear", offset, len, None) {
            return r;
        }
        let (inner, w) = self.working()?;
        check_range(
            &inner.working_path,
            "clear",
            offset,
            len,
            &inner.rec.disk,
            true,
        )?;
        w.zero_range(offset, len)
            .map_err(io_err(&inner.working_path, "clear", offset))
    }

    fn checkpoint(&self, durable: &RangeSet) -> Result<(), SinkError> {
        self.usable("checkpoint")?;
        // Under the lock only briefly: validate, move an open cycle's buffer into the replica
        // (undo first, `cycle.rs`) and pick the file to sync.
        let (file, path, era) = {
            let mut inner = self.write_inner();
            let path = inner.working_path.clone();
            lifecycle::checkpoint(&path, &inner.rec.disk, durable)?;
            let file = if inner.rec.disk.open_cycle.is_some() {
                self.flush_cycle(&mut inner)?;
                self.require_replica(&inner, "checkpoint")?
            } else {
                self.ensure_working(&mut inner)?
            };
            let era = Era::of(&inner, &file);
            (file, path, era)
        };
        // The sync runs without the lock, so the disk's writes go on meanwhile (an fdatasync
        // takes tens of milliseconds, at every checkpoint). `durable` names only writes that
        // completed before this call (the caller's snapshot), so they are in the page cache
        // or were just flushed into it, and this sync makes them durable; writes made during
        // it may or may not be, and `durable` does not claim them.
        self.sync(file.as_ref(), &path, 0)?;
        // Clean now: the pages written before the sync can go (dirty ones stay), in a copy
        // and in a cycle alike. A cycle's replica pages were kept until session 17: 1 GiB of
        // scattered 64 KiB writes then grew the page cache by a GiB of fresh pages, 1.3
        // CPU-s of the receiver's 4.3 (`bench/results/ANALYSIS.md`, session 17). A later
        // cycle reads its pre-images from the disk instead of the cache, as a receiver into
        // Azure does.
        file.drop_cache();
        // The record's writers wait from here on; the data path's writes do not, while the
        // new record is made durable (two journal commits, `locks.rs`).
        let records = self.records();
        let inner = self.read_inner();
        if Era::of(&inner, &file) != era {
            // A commit or a new copy ran meanwhile (not the receiver's order: it serialises
            // them with checkpoints): do it all again under the lock.
            drop(inner);
            return self.checkpoint_locked(&mut self.write_inner_holding(records), durable);
        }
        // Data first, then the progress that claims it.
        let Some(disk) = lifecycle::checkpoint(&path, &inner.rec.disk, durable)? else {
            return Ok(());
        };
        let next = Record {
            disk,
            ..inner.rec.clone()
        };
        drop(inner);
        self.persist(&next)?;
        self.write_inner_holding(records).rec = next;
        Ok(())
    }

    fn commit_initial(&self, point: &RecoveryPoint) -> Result<(), SinkError> {
        self.usable("commit")?;
        let mut inner = self.write_inner();
        let rec = inner.rec.clone();
        let st = &rec.disk;
        let p = &self.paths;
        lifecycle::commit_initial(&inner.working_path, st, point)?;
        let at = replica_virtual_size(st.virtual_size);
        let footer = replica_footer(
            st.virtual_size,
            st.copy_id,
            vhd_timestamp(crate::clock::system_time()),
        );
        let f = self.ensure_working(&mut inner)?;
        let published = !self
            .fs
            .exists(&p.partial)
            .map_err(io_err(&p.partial, "stat", 0))?
            && footer_id(self.fs.as_ref(), &p.vhd, st.virtual_size)? == Some(st.copy_id);
        if !published {
            // The point is recorded first, so that recovery can finish a commit whose rename
            // happened with the right point. (A retried commit whose rename already
            // happened skips straight to the state.)
            if inner.rec.pending.as_ref() != Some(point) {
                let mut next = inner.rec.clone();
                next.pending = Some(point.clone());
                self.persist(&next)?;
                inner.rec = next;
            }
            self.sync(f.as_ref(), &p.partial, 0)?;
            f.write_at(at, &footer)
                .map_err(io_err(&p.partial, "write footer", at))?;
            self.sync(f.as_ref(), &p.partial, at)?;
            self.fs.rename(&p.partial, &p.vhd).map_err(io_err(
                &p.vhd,
                "rename copy to replica",
                0,
            ))?;
            self.fs
                .sync_dir(&p.dir)
                .map_err(io_err(&p.dir, "fsync directory", 0))?;
        }
        let point = inner.rec.pending.clone().unwrap_or_else(|| point.clone());
        let next = committed_record(&inner.rec, &point);
        self.persist(&next)?;
        inner.rec = next;
        inner.committed = Some(f);
        inner.working_path = p.vhd.clone();
        inner.cycle = None;
        // The previous generation's points are gone with its replica: drop their logs.
        self.forget_all_undo();
        self.remove_orphans(&inner)?;
        Ok(())
    }

    fn read(&self, offset: u64, len: usize) -> Result<Bytes, SinkError> {
        let (inner, w) = self.working()?;
        check_range(
            &inner.working_path,
            "read",
            offset,
            len as u64,
            &inner.rec.disk,
            false,
        )?;
        let mut buf = BytesMut::zeroed(len);
        w.read_at(offset, &mut buf)
            .map_err(io_err(&inner.working_path, "read", offset))?;
        if !inner.rec.disk.initial_in_progress {
            self.cycle_overlay(&inner, offset, &mut buf);
        }
        Ok(buf.freeze())
    }

    fn read_committed(&self, offset: u64, len: usize) -> Result<Bytes, SinkError> {
        let inner = self.read_inner();
        let path = &self.paths.vhd;
        check_range(path, "read", offset, len as u64, &inner.rec.disk, false)?;
        lifecycle::check_committed(path, &inner.rec.disk, offset)?;
        if inner.committed.is_none() {
            return Err(invalid(path, offset, "the committed replica is not open"));
        }
        let newest = inner.rec.disk.committed_cycle;
        self.read_point_locked(&inner, newest, offset, len)
    }

    fn begin_initial(&self) -> Result<(), SinkError> {
        self.usable("begin a copy")?;
        let mut inner = self.write_inner();
        let rec = inner.rec.clone();
        let size = replica_file_size(rec.disk.virtual_size);
        // Order: drop the old copy, record the new generation with nothing claimed, then
        // create its file. A crash anywhere leaves claims only about durable data, and the
        // committed replica is not touched.
        if rec.disk.initial_in_progress {
            inner.working = None;
        }
        remove_partial(self.fs.as_ref(), &self.paths)?;
        // An open cycle is dropped (the new copy supersedes it): its buffered writes never
        // reached the replica, and the newest point keeps its undo log over what did, so
        // the committed generation's points stay exact until the new copy commits.
        let next = Record {
            disk: lifecycle::begin_initial(&rec.disk, random_guid()),
            pending: None,
            ..rec
        };
        self.persist(&next)?;
        inner.rec = next;
        inner.cycle = None;
        // From here writes must never reach the committed replica.
        inner.working = None;
        inner.working_path = self.paths.partial.clone();
        self.remove_orphans(&inner)?;
        let f = create_partial(self.fs.as_ref(), &self.paths, size)?;
        inner.working = Some(f);
        Ok(())
    }

    fn begin_cycle(&self, cycle: u64) -> Result<RangeSet, SinkError> {
        self.usable("begin a cycle")?;
        self.begin_cycle_impl(cycle)
    }

    fn commit_cycle(&self, point: &RecoveryPoint) -> Result<(), SinkError> {
        self.usable("commit a cycle")?;
        self.commit_cycle_impl(point)
    }

    fn points(&self) -> Result<Vec<RecoveryPoint>, SinkError> {
        Ok(self.points_impl())
    }

    fn prune_points(&self, older_than_unix: u64) -> Result<Vec<u64>, SinkError> {
        self.prune_impl(older_than_unix)
    }

    fn read_point(&self, cycle: u64, offset: u64, len: usize) -> Result<Bytes, SinkError> {
        self.read_point_impl(cycle, offset, len)
    }

    fn path_hint(&self) -> String {
        let inner = self.read_inner();
        inner.working_path.display().to_string()
    }

    fn resync_index(&self) -> Result<Box<dyn crate::resync::index::IndexFile>, String> {
        Ok(Box::new(super::files::IndexFile::new(
            self.fs.clone(),
            &self.paths,
        )))
    }
}
