//! Read-only access to a local disk's recovery points without its lock, so that `points` and
//! test failover run while a receiver replicates the disk (DESIGN §1: test failover does not
//! disturb replication).
//!
//! ## Why every read is exact
//! A read takes the state record (replaced atomically by rename, so it is always one whole
//! record), reads the replica and the undo logs it names, then takes the record again. The
//! receiver writes a range of the replica only after persisting a record whose undo length
//! (of the newest point) covers that range's pre-image (LAYOUT.md, "undo first"), never
//! changes the first `undo_len` bytes of an undo log, and removes or recreates undo logs
//! only after a record that no longer names them. So if the two records agree on
//! everything a point read depends on ([`View`]), every byte read from the replica that the
//! open cycle had already changed is under an undo record the first record names: the
//! result is exactly the point. Otherwise the read is retried with the newer record (the
//! point itself never changes, only where its bytes are). A read that failed because a
//! file vanished under it is retried the same way; one that fails against an unchanged
//! record is a real error.
//!
//! A new full copy (resynchronisation) replaces the replica and drops its points: the
//! reader is pinned to the replica it was opened on and then fails with `NotFound`.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use vdrep_proto::Guid;

use super::files::{corrupt, io_err};
use super::fs::{DataFile, StoreFs};
use super::points::{load_undo, no_point, read_point_from, UndoIndex};
use super::state::{self, Record};
use super::DiskPaths;
use crate::sink::{DiskKey, PointReader, RecoveryPoint, SinkError};

/// Attempts of one read before giving up (each retry follows a commit or prune that raced
/// it; commits come at most every second or so, a chunk read takes milliseconds).
const ATTEMPTS: u32 = 50;
/// Undo logs kept open per reader.
const CACHE_FILES: usize = 32;

/// What a point read depends on in the state record.
#[derive(Debug, PartialEq, Eq)]
struct View {
    replica_id: Guid,
    committed_cycle: u64,
    /// `(cycle, undo_len)` of each point, oldest first: pairs of a cycle and a length,
    /// not byte ranges.
    points: Vec<(u64, u64)>,
}

impl View {
    fn of(rec: &Record) -> View {
        View {
            replica_id: rec.disk.replica_id,
            committed_cycle: rec.disk.committed_cycle,
            points: rec
                .points
                .iter()
                .map(|l| (l.point.cycle, l.undo_len))
                .collect(),
        }
    }
}

#[derive(Default)]
struct Cache {
    replica: Option<Arc<dyn DataFile>>,
    /// (point, undo_len) → index; the first `undo_len` bytes of an undo log never change
    /// while the replica is the same (the reader is pinned to it), the open cycle only
    /// appends.
    undo: Vec<((u64, u64), Arc<UndoIndex>)>,
}

/// A [`PointReader`] on a disk of the local store.
pub struct LocalPointReader {
    fs: Arc<dyn StoreFs>,
    paths: DiskPaths,
    key: DiskKey,
    virtual_size: u64,
    /// The committed replica this view belongs to ([`Guid::NIL`]: none yet).
    replica_id: Guid,
    cache: Mutex<Cache>,
}

impl LocalPointReader {
    /// Opens the view; `NotFound` if the disk has no state record.
    pub(super) fn open(
        fs: Arc<dyn StoreFs>,
        paths: DiskPaths,
        key: DiskKey,
    ) -> Result<LocalPointReader, SinkError> {
        let rec = load_record(fs.as_ref(), &paths, &key)?;
        Ok(LocalPointReader {
            fs,
            paths,
            key,
            virtual_size: rec.disk.virtual_size,
            replica_id: if rec.disk.initial_committed {
                rec.disk.replica_id
            } else {
                Guid::NIL
            },
            cache: Mutex::new(Cache::default()),
        })
    }

    fn cache(&self) -> MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current record, checked against the pinned replica.
    fn record(&self) -> Result<Record, SinkError> {
        let rec = load_record(self.fs.as_ref(), &self.paths, &self.key)?;
        if !rec.disk.initial_committed {
            return Ok(Record {
                points: Vec::new(),
                ..rec
            });
        }
        if rec.disk.replica_id != self.replica_id {
            return Err(SinkError::NotFound {
                path: self.paths.vhd.clone(),
                problem: format!(
                    "the replica of {} was replaced by a new full copy (resynchronisation) \
                     while it was being read: the recovery points it had are gone; run the \
                     command again",
                    self.key
                ),
            });
        }
        Ok(rec)
    }

    fn replica(&self) -> Result<Arc<dyn DataFile>, SinkError> {
        if let Some(r) = &self.cache().replica {
            return Ok(r.clone());
        }
        let path = &self.paths.vhd;
        let f = self.fs.open_read(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => corrupt(path, 0, "the committed replica is missing"),
            _ => SinkError::io(path, "open", 0, e),
        })?;
        self.cache().replica = Some(f.clone());
        Ok(f)
    }

    fn undo(&self, point: u64, len: u64, end: u64) -> Result<Arc<UndoIndex>, SinkError> {
        if let Some((_, i)) = self.cache().undo.iter().find(|(k, _)| *k == (point, len)) {
            return Ok(i.clone());
        }
        let idx = Arc::new(load_undo(
            self.fs.as_ref(),
            &self.paths,
            point,
            len,
            end,
            true,
        )?);
        let mut c = self.cache();
        if c.undo.len() >= CACHE_FILES {
            c.undo.remove(0);
        }
        c.undo.push(((point, len), idx.clone()));
        Ok(idx)
    }

    fn read_once(
        &self,
        rec: &Record,
        cycle: u64,
        offset: u64,
        len: usize,
    ) -> Result<Bytes, SinkError> {
        let replica = self.replica()?;
        let end = rec.disk.writable_end();
        read_point_from(
            &self.paths,
            rec,
            replica.as_ref(),
            cycle,
            offset,
            len,
            |p, l| self.undo(p, l, end),
        )
    }
}

/// Reads and decodes the state record of `key`; `NotFound` if there is none.
fn load_record(fs: &dyn StoreFs, paths: &DiskPaths, key: &DiskKey) -> Result<Record, SinkError> {
    let raw = fs
        .read_file(&paths.state)
        .map_err(io_err(&paths.state, "read", 0))?;
    let Some(bytes) = raw else {
        return Err(SinkError::NotFound {
            path: paths.state.clone(),
            problem: format!("no replica of disk {key} in this store (no state record)"),
        });
    };
    state::decode(&bytes).map_err(|(o, p)| corrupt(&paths.state, o, p))
}

impl PointReader for LocalPointReader {
    fn key(&self) -> &DiskKey {
        &self.key
    }

    fn virtual_size(&self) -> u64 {
        self.virtual_size
    }

    fn points(&self) -> Result<Vec<RecoveryPoint>, SinkError> {
        Ok(self.record()?.points.into_iter().map(|l| l.point).collect())
    }

    fn read_point(&self, cycle: u64, offset: u64, len: usize) -> Result<Bytes, SinkError> {
        let mut rec = self.record()?;
        for attempt in 0..ATTEMPTS {
            if !rec.points.iter().any(|l| l.point.cycle == cycle) {
                return Err(no_point(&self.paths.vhd, &rec.points, cycle));
            }
            let got = self.read_once(&rec, cycle, offset, len);
            let after = self.record()?;
            if View::of(&after) == View::of(&rec) {
                return got;
            }
            if let Err(e) = &got {
                tracing::debug!(disk = %self.key, attempt, error = %e,
                    "a commit or prune raced a recovery-point read; retrying");
            }
            rec = after;
            if attempt > 2 {
                std::thread::sleep(Duration::from_millis(10 * attempt as u64));
            }
        }
        Err(SinkError::io(
            &self.paths.state,
            "read a consistent recovery point",
            offset,
            std::io::Error::new(
                std::io::ErrorKind::WouldBlock,
                format!("the state changed during each of {ATTEMPTS} attempts"),
            ),
        ))
    }

    fn describe(&self) -> String {
        self.paths.vhd.display().to_string()
    }
}
