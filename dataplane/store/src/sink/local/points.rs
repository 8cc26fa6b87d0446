//! Recovery points of the local store: reading the disk as it was at a point, pruning old
//! points, and removing log files no state record names.
//!
//! The replica is always the newest point. Point K is the replica with the undo logs of
//! points K, K+1, …, newest-1 laid over it, newest first, so that for every byte the oldest
//! pre-image at or after K wins: that is the byte as it was when K was committed (cycle K+1
//! saved it before overwriting it; later cycles saved later values).

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::disk::{Inner, LocalDisk};
use super::files::{check_range, corrupt, invalid, io_err};
use super::fs::{DataFile, StoreFs};
use super::log::{self, LogKind, LogRec};
use super::state::{Listed, Record};
use super::DiskPaths;
use crate::sink::{lifecycle, RecoveryPoint, SinkError};

/// Most undo logs kept open with their index (each holds a descriptor and its record list).
const CACHE_FILES: usize = 32;

/// An undo log, opened and indexed: records sorted by offset, disjoint.
pub(super) struct UndoIndex {
    pub(super) file: Arc<dyn DataFile>,
    pub(super) recs: Vec<LogRec>,
}

/// Recently used undo logs, by point and durable length (the open cycle's grows), most
/// recent last.
#[derive(Default)]
pub(super) struct UndoCache {
    entries: Vec<((u64, u64), Arc<UndoIndex>)>,
}

impl LocalDisk {
    /// Forgets the cached index of `point`'s undo log (it was rewritten or removed).
    pub(super) fn forget_all_undo(&self) {
        self.undo_cache().entries.clear();
    }

    /// The index of `point`'s undo log of `len` bytes, loading it on first use.
    fn undo_index(&self, point: u64, len: u64, end: u64) -> Result<Arc<UndoIndex>, SinkError> {
        {
            let mut c = self.undo_cache();
            if let Some(i) = c.entries.iter().position(|(k, _)| *k == (point, len)) {
                let e = c.entries.remove(i);
                let idx = e.1.clone();
                c.entries.push(e);
                return Ok(idx);
            }
        }
        let idx = Arc::new(load_undo(
            self.fs.as_ref(),
            &self.paths,
            point,
            len,
            end,
            false,
        )?);
        let mut c = self.undo_cache();
        c.entries.retain(|((p, _), _)| *p != point);
        if c.entries.len() >= CACHE_FILES {
            c.entries.remove(0);
        }
        c.entries.push(((point, len), idx.clone()));
        Ok(idx)
    }

    /// See [`crate::sink::ReplicaDisk::read_point`].
    pub(super) fn read_point_impl(
        &self,
        cycle: u64,
        offset: u64,
        len: usize,
    ) -> Result<Bytes, SinkError> {
        let inner = self.read_inner();
        self.read_point_locked(&inner, cycle, offset, len)
    }

    pub(super) fn read_point_locked(
        &self,
        inner: &Inner,
        cycle: u64,
        offset: u64,
        len: usize,
    ) -> Result<Bytes, SinkError> {
        let Some(replica) = &inner.committed else {
            return Err(invalid(
                &self.paths.vhd,
                offset,
                "the committed replica is not open",
            ));
        };
        let end = inner.rec.disk.writable_end();
        read_point_from(
            &self.paths,
            &inner.rec,
            replica.as_ref(),
            cycle,
            offset,
            len,
            |point, len| self.undo_index(point, len, end),
        )
    }

    /// See [`crate::sink::ReplicaDisk::points`].
    pub(super) fn points_impl(&self) -> Vec<RecoveryPoint> {
        let inner = self.read_inner();
        inner.rec.points.iter().map(|l| l.point.clone()).collect()
    }

    /// See [`crate::sink::ReplicaDisk::prune_points`]. Drops the oldest points while they
    /// are older than `older_than_unix`, never the newest: only a prefix can go, because
    /// reading a point needs the undo logs of every later one.
    pub(super) fn prune_impl(&self, older_than_unix: u64) -> Result<Vec<u64>, SinkError> {
        let mut inner = self.write_inner();
        let listed: Vec<RecoveryPoint> = inner.rec.points.iter().map(|l| l.point.clone()).collect();
        let keep_from = lifecycle::prune(&listed, older_than_unix);
        if keep_from == 0 {
            return Ok(Vec::new());
        }
        let mut next = inner.rec.clone();
        let dropped: Vec<u64> = next
            .points
            .drain(..keep_from)
            .map(|l| l.point.cycle)
            .collect();
        self.persist(&next)?;
        inner.rec = next;
        self.forget_all_undo();
        self.remove_orphans(&inner)?;
        Ok(dropped)
    }

    /// Removes this disk's undo logs that the state does not name (left by a crash, a
    /// prune or a new full copy), and redo logs (no cycle uses them since store version 3).
    pub(super) fn remove_orphans(&self, inner: &Inner) -> Result<(), SinkError> {
        let dir = &self.paths.dir;
        let rec = &inner.rec;
        let mut undo: BTreeSet<u64> = rec
            .points
            .iter()
            .filter(|l| l.undo_len > 0)
            .map(|l| l.point.cycle)
            .collect();
        // The open cycle's undo log may hold records no state names yet (before its first
        // flush): it is in use, not an orphan.
        undo.extend(inner.cycle.as_ref().map(|c| c.point));
        let names = self.fs.list_dir(dir).map_err(io_err(dir, "list", 0))?;
        let mut removed = false;
        for n in names {
            let keep = match self.paths.parse_log(&n) {
                None => true,
                Some((true, _)) => false,
                Some((false, p)) => undo.contains(&p),
            };
            if !keep {
                let p = dir.join(&n);
                self.fs.remove_file(&p).map_err(io_err(&p, "remove", 0))?;
                removed = true;
            }
        }
        if removed {
            self.fs
                .sync_dir(dir)
                .map_err(io_err(dir, "fsync directory", 0))?;
            self.forget_all_undo();
        }
        Ok(())
    }
}

/// Opens and indexes `point`'s undo log, which the state records as `len` bytes (`end`: the
/// disk's writable end). `read_only` opens it without write access (failover).
pub(super) fn load_undo(
    fs: &dyn StoreFs,
    paths: &DiskPaths,
    point: u64,
    len: u64,
    end: u64,
    read_only: bool,
) -> Result<UndoIndex, SinkError> {
    let path = paths.undo(point);
    let opened = if read_only {
        fs.open_read(&path)
    } else {
        fs.open_data(&path, None)
    };
    let file = opened.map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => corrupt(
            &path,
            0,
            format!("the undo log of recovery point {point} is missing"),
        ),
        _ => SinkError::io(&path, "open", 0, e),
    })?;
    // Longer is fine: the open cycle appends beyond the durable length, and a crash may
    // leave a torn tail that the next append overwrites.
    let size = file.size().map_err(io_err(&path, "stat", 0))?;
    if size < len {
        return Err(corrupt(
            &path,
            size,
            format!("undo log is {size} bytes, the state records {len} as durable"),
        ));
    }
    log::check_file_header(file.as_ref(), LogKind::Undo, point)
        .map_err(|(o, p)| corrupt(&path, o, p))?;
    // Records are written in the order writes arrived; they are disjoint.
    let mut recs = log::scan(file.as_ref(), len, end).map_err(|(o, p)| corrupt(&path, o, p))?;
    recs.sort_unstable_by_key(|r| r.offset);
    if let Some(w) = recs.windows(2).find(|w| w[0].end() > w[1].offset) {
        return Err(corrupt(
            &path,
            w[1].pos - log::REC_HEADER,
            format!(
                "undo records [{}, {}) and [{}, {}) overlap",
                w[0].offset,
                w[0].end(),
                w[1].offset,
                w[1].end()
            ),
        ));
    }
    Ok(UndoIndex { file, recs })
}

/// Reads `len` bytes at `offset` of point `cycle` as `rec` describes the disk: the
/// `replica`'s bytes with the undo logs of `cycle` and every later point laid over them,
/// newest first, so older pre-images overwrite newer ones. While a cycle is open the newest
/// point's undo log (as far as it is durable) is laid over too: it covers every byte the
/// cycle has written into the replica. `undo` yields the index of a point's undo log of
/// the given length.
pub(super) fn read_point_from(
    paths: &DiskPaths,
    rec: &Record,
    replica: &dyn DataFile,
    cycle: u64,
    offset: u64,
    len: usize,
    mut undo: impl FnMut(u64, u64) -> Result<Arc<UndoIndex>, SinkError>,
) -> Result<Bytes, SinkError> {
    let path = &paths.vhd;
    check_range(path, "read", offset, len as u64, &rec.disk, false)?;
    let points = &rec.points;
    let Some(at) = points.iter().position(|l| l.point.cycle == cycle) else {
        return Err(no_point(path, points, cycle));
    };
    let mut buf = BytesMut::zeroed(len);
    replica
        .read_at(offset, &mut buf)
        .map_err(io_err(path, "read", offset))?;
    let end = offset + len as u64;
    for l in points[at..].iter().rev().filter(|l| l.undo_len > 0) {
        let idx = undo(l.point.cycle, l.undo_len)?;
        let first = idx.recs.partition_point(|r| r.end() <= offset);
        for r in idx.recs[first..].iter().take_while(|r| r.offset < end) {
            log::overlay(idx.file.as_ref(), r, offset, &mut buf).map_err(io_err(
                &paths.undo(l.point.cycle),
                "read",
                r.pos,
            ))?;
        }
    }
    Ok(buf.freeze())
}

/// The error for a point that is not (or no longer) kept.
pub(super) fn no_point(path: &std::path::Path, points: &[Listed], cycle: u64) -> SinkError {
    let kept = points.first().zip(points.last());
    lifecycle::no_point(
        path,
        kept.map(|(a, b)| (a.point.cycle, b.point.cycle)),
        cycle,
    )
}
