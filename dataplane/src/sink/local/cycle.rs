//! Delta cycles of the local store: the redo log of an open cycle, and the ordered steps
//! that commit it atomically as the next recovery point (see `LAYOUT.md`, "Cycles").
//!
//! While cycle N is open the replica still *is* point N-1: writes go to `NAME.cN.redo`.
//! Commit: sync the redo log; save the replica's bytes under every range the cycle touches
//! in `NAME.p(N-1).undo` and sync it; record "applying N" durably; apply the redo log to the
//! replica and sync; record "committed N"; delete the redo log. A crash before the
//! "applying" record leaves the cycle open (its durable progress intact) and point N-1
//! untouched; a crash after it is finished at open by applying the redo log again (every
//! record is absolute, so replay is idempotent).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use vdrep_proto::RangeSet;

use super::disk::{Inner, LocalDisk};
use super::files::{check_range, corrupt, create_log, invalid, io_err};
use super::fs::{DataFile, StoreFs};
use super::log::{self, LogKind, LogRec, LogWriter, CHUNK, FILE_HEADER};
use super::state::{CyclePhase, Listed, Record};
use super::DiskPaths;
use crate::sink::{RecoveryPoint, SinkError, SECTOR};

/// The redo log of the open cycle, indexed in memory.
pub(super) struct Redo {
    file: Arc<dyn DataFile>,
    path: PathBuf,
    /// Where the next record goes (everything before it was written completely).
    end: u64,
    /// The records in log order (later ones win where they overlap).
    recs: Vec<LogRec>,
    /// The union of the ranges the cycle wrote or cleared.
    touched: RangeSet,
}

impl Redo {
    /// A new, empty redo log for `cycle` (durable before the state names it).
    fn create(fs: &dyn StoreFs, paths: &DiskPaths, cycle: u64) -> Result<Redo, SinkError> {
        let path = paths.redo(cycle);
        let file = create_log(
            fs,
            &paths.dir,
            &path,
            &log::file_header(LogKind::Redo, cycle),
        )?;
        Ok(Redo {
            file,
            path,
            end: FILE_HEADER,
            recs: Vec::new(),
            touched: RangeSet::new(),
        })
    }

    /// The redo log of `cycle` as far as the state says it is durable; `None` if the file is
    /// missing. Bytes beyond `len` (writes after the last checkpoint) are ignored and will be
    /// overwritten by the next append.
    fn load(
        fs: &dyn StoreFs,
        paths: &DiskPaths,
        cycle: u64,
        len: u64,
        disk_end: u64,
    ) -> Result<Option<Redo>, SinkError> {
        let path = paths.redo(cycle);
        if !fs.exists(&path).map_err(io_err(&path, "stat", 0))? {
            return Ok(None);
        }
        let file = fs
            .open_data(&path, None)
            .map_err(io_err(&path, "open", 0))?;
        let size = file.size().map_err(io_err(&path, "stat", 0))?;
        if size < len {
            return Err(corrupt(
                &path,
                size,
                format!("redo log is {size} bytes, the state says {len} are durable"),
            ));
        }
        log::check_file_header(file.as_ref(), LogKind::Redo, cycle)
            .map_err(|(o, p)| corrupt(&path, o, p))?;
        let recs =
            log::scan(file.as_ref(), len, disk_end).map_err(|(o, p)| corrupt(&path, o, p))?;
        let touched = recs.iter().map(|r| r.offset..r.end()).collect();
        Ok(Some(Redo {
            file,
            path,
            end: len,
            recs,
            touched,
        }))
    }

    /// Appends one write (`data`) or clear (`None`, `len` zeros).
    fn append(&mut self, offset: u64, len: u64, data: Option<&[u8]>) -> Result<(), SinkError> {
        if len == 0 {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(log::REC_HEADER as usize + data.map_or(0, |d| d.len()));
        let header = log::rec_header(offset, len, data);
        buf.extend_from_slice(&header);
        if let Some(d) = data {
            buf.extend_from_slice(d);
        }
        self.file.write_at(self.end, &buf).map_err(io_err(
            &self.path,
            "append to redo log",
            self.end,
        ))?;
        let rec = LogRec {
            offset,
            len,
            data: data.is_some(),
            pos: self.end + log::REC_HEADER,
            dcrc: u32::from_le_bytes([header[20], header[21], header[22], header[23]]),
        };
        self.end += rec.stored();
        self.recs.push(rec);
        self.touched.insert(offset, offset + len);
        Ok(())
    }

    /// Lays the cycle's writes over `buf` (bytes of the replica at `off`).
    fn overlay(&self, off: u64, buf: &mut [u8]) -> Result<(), SinkError> {
        let end = off + buf.len() as u64;
        for r in self.recs.iter().filter(|r| r.offset < end && r.end() > off) {
            log::overlay(self.file.as_ref(), r, off, buf).map_err(io_err(
                &self.path,
                "read redo log",
                r.pos,
            ))?;
        }
        Ok(())
    }

    /// Replays the log onto `replica` in order, checking every data record's CRC.
    fn apply(&self, replica: &dyn DataFile, replica_path: &Path) -> Result<(), SinkError> {
        let mut buf = vec![0u8; CHUNK];
        for r in &self.recs {
            if !r.data {
                replica.zero_range(r.offset, r.len).map_err(io_err(
                    replica_path,
                    "apply clear",
                    r.offset,
                ))?;
                continue;
            }
            let hdr_at = r.pos - log::REC_HEADER;
            let mut crc = 0u32;
            let mut done = 0u64;
            while done < r.len {
                let n = (r.len - done).min(CHUNK as u64) as usize;
                let b = &mut buf[..n];
                self.file.read_at(r.pos + done, b).map_err(io_err(
                    &self.path,
                    "read redo log",
                    r.pos + done,
                ))?;
                crc = crc32c::crc32c_append(crc, b);
                replica.write_at(r.offset + done, b).map_err(io_err(
                    replica_path,
                    "apply write",
                    r.offset + done,
                ))?;
                done += n as u64;
            }
            if crc != r.dcrc {
                return Err(corrupt(
                    &self.path,
                    hdr_at,
                    format!(
                        "data of the record for [{}, {}) fails its checksum",
                        r.offset,
                        r.end()
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Writes the replica's current bytes under `touched` as undo log `path` for `point`; zero
/// runs (at sector granularity) are stored as zero records, without bytes. Returns its length.
fn write_undo(
    fs: &dyn StoreFs,
    paths: &DiskPaths,
    point: u64,
    replica: &dyn DataFile,
    touched: &RangeSet,
) -> Result<u64, SinkError> {
    let path = paths.undo(point);
    let file = create_log(
        fs,
        &paths.dir,
        &path,
        &log::file_header(LogKind::Undo, point),
    )?;
    let mut w = LogWriter::new(file.as_ref(), FILE_HEADER);
    let mut buf = vec![0u8; CHUNK];
    let werr = |at| io_err(&path, "write undo log", at);
    for r in touched.iter() {
        let mut pos = r.start;
        while pos < r.end {
            let n = (r.end - pos).min(CHUNK as u64) as usize;
            let b = &mut buf[..n];
            replica
                .read_at(pos, b)
                .map_err(io_err(&paths.vhd, "read pre-image", pos))?;
            // Runs of all-zero or non-zero sectors (the last piece may be shorter).
            let mut i = 0;
            while i < n {
                let sector = |k: usize| &b[k..(k + SECTOR as usize).min(n)];
                let zero = sector(i).iter().all(|&x| x == 0);
                let mut j = i;
                while j < n && sector(j).iter().all(|&x| x == 0) == zero {
                    j = (j + SECTOR as usize).min(n);
                }
                let at = pos + i as u64;
                let data = (!zero).then(|| &b[i..j]);
                w.push(at, (j - i) as u64, data).map_err(werr(at))?;
                i = j;
            }
            pos += n as u64;
        }
    }
    let len = w.flush().map_err(werr(0))?;
    file.sync_data().map_err(io_err(&path, "fdatasync", 0))?;
    Ok(len)
}

impl LocalDisk {
    /// The open cycle's redo log, if a cycle is open.
    fn redo<'a>(&self, inner: &'a Inner) -> Option<MutexGuard<'a, Redo>> {
        inner
            .redo
            .as_ref()
            .map(|m| m.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Routes a write or clear to the open cycle. `None` when the disk takes the write
    /// directly (an initial copy is in progress).
    pub(super) fn cycle_write(
        &self,
        op: &'static str,
        offset: u64,
        len: u64,
        data: Option<&[u8]>,
    ) -> Option<Result<(), SinkError>> {
        let inner = self.read_inner();
        let st = &inner.rec.disk;
        if st.initial_in_progress || !st.initial_committed {
            return None;
        }
        let vhd = &self.paths.vhd;
        let result = match (inner.rec.phase, self.redo(&inner)) {
            (CyclePhase::Open, Some(mut redo)) => {
                check_range(&redo.path, op, offset, len, st, true)
                    .and_then(|()| redo.append(offset, len, data))
            }
            (CyclePhase::Applying, _) => Err(invalid(
                vhd,
                offset,
                format!(
                    "cycle {} is being committed: call commit_cycle again before writing",
                    st.committed_cycle + 1
                ),
            )),
            _ => Err(invalid(
                vhd,
                offset,
                format!(
                    "{op} with no delta cycle open: the replica is recovery point {}; call \
                     begin_cycle({}) first",
                    st.committed_cycle,
                    st.committed_cycle + 1
                ),
            )),
        };
        Some(result)
    }

    /// Lays the open cycle's writes over bytes read from the replica.
    pub(super) fn cycle_overlay(
        &self,
        inner: &Inner,
        off: u64,
        buf: &mut [u8],
    ) -> Result<(), SinkError> {
        match self.redo(inner) {
            Some(redo) => redo.overlay(off, buf),
            None => Ok(()),
        }
    }

    /// Syncs the open cycle's log and records `durable` as its progress. `false` if no cycle
    /// is open.
    pub(super) fn cycle_checkpoint(
        &self,
        inner: &mut Inner,
        durable: &RangeSet,
    ) -> Result<bool, SinkError> {
        if inner.rec.phase != CyclePhase::Open {
            return Ok(false);
        }
        let end = match self.redo(inner) {
            Some(redo) => {
                redo.file
                    .sync_data()
                    .map_err(io_err(&redo.path, "fdatasync", 0))?;
                redo.end
            }
            None => return Ok(false),
        };
        if inner.rec.disk.progress != *durable || inner.rec.redo_len != end {
            let mut next = inner.rec.clone();
            next.disk.progress = durable.clone();
            next.redo_len = end;
            self.persist(&next)?;
            inner.rec = next;
        }
        Ok(true)
    }

    fn require_replica(&self, inner: &Inner, what: &str) -> Result<Arc<dyn DataFile>, SinkError> {
        let st = &inner.rec.disk;
        match &inner.committed {
            Some(c) if st.initial_committed && !st.initial_in_progress => Ok(c.clone()),
            _ => Err(invalid(
                &self.paths.vhd,
                0,
                format!(
                    "{what}: delta cycles apply to a committed replica with no full copy in \
                     progress"
                ),
            )),
        }
    }

    /// See [`crate::sink::ReplicaDisk::begin_cycle`].
    pub(super) fn begin_cycle_impl(&self, cycle: u64) -> Result<RangeSet, SinkError> {
        let mut inner = self.write_inner();
        self.require_replica(&inner, "begin_cycle")?;
        if inner.rec.phase == CyclePhase::Applying {
            // An earlier commit failed half-way (e.g. disk full): finish it first.
            self.finish_apply(&mut inner)?;
        }
        let st = inner.rec.disk.clone();
        let next_cycle = st.committed_cycle + 1;
        if inner.rec.phase == CyclePhase::Open && st.open_cycle == Some(cycle) {
            return Ok(st.progress);
        }
        if cycle != next_cycle || inner.rec.phase != CyclePhase::Idle {
            let problem = match st.open_cycle {
                Some(open) => format!("cycle {open} is open; cycle {cycle} cannot begin"),
                None if cycle <= st.committed_cycle => {
                    format!(
                        "cycle {cycle} is already committed (newest point {})",
                        st.committed_cycle
                    )
                }
                None => format!("cycle {cycle} cannot begin: the next cycle is {next_cycle}"),
            };
            return Err(invalid(&self.paths.vhd, 0, problem));
        }
        let redo = Redo::create(self.fs.as_ref(), &self.paths, cycle)?;
        let mut next = inner.rec.clone();
        next.phase = CyclePhase::Open;
        next.disk.open_cycle = Some(cycle);
        next.disk.progress = RangeSet::new();
        next.redo_len = redo.end;
        self.persist(&next)?;
        inner.rec = next;
        inner.redo = Some(Mutex::new(redo));
        Ok(RangeSet::new())
    }

    /// See [`crate::sink::ReplicaDisk::commit_cycle`].
    pub(super) fn commit_cycle_impl(&self, point: &RecoveryPoint) -> Result<(), SinkError> {
        let mut inner = self.write_inner();
        let replica = self.require_replica(&inner, "commit_cycle")?;
        let st = inner.rec.disk.clone();
        if point.cycle <= st.committed_cycle && point.cycle > 0 {
            return Ok(()); // a resent commit: already durable
        }
        if st.open_cycle != Some(point.cycle) {
            return Err(invalid(
                &self.paths.vhd,
                0,
                match st.open_cycle {
                    Some(open) => {
                        format!("commit of cycle {} while cycle {open} is open", point.cycle)
                    }
                    None => format!(
                        "commit of cycle {} but no cycle is open (begin_cycle first)",
                        point.cycle
                    ),
                },
            ));
        }
        if inner.rec.phase == CyclePhase::Open {
            let (end, touched) = {
                let redo = self.redo(&inner).ok_or_else(|| {
                    invalid(
                        &self.paths.vhd,
                        0,
                        "the open cycle's redo log is not loaded",
                    )
                })?;
                redo.file
                    .sync_data()
                    .map_err(io_err(&redo.path, "fdatasync", 0))?;
                (redo.end, redo.touched.clone())
            };
            let prev = st.committed_cycle;
            let undo_len = if touched.is_empty() {
                0
            } else {
                write_undo(
                    self.fs.as_ref(),
                    &self.paths,
                    prev,
                    replica.as_ref(),
                    &touched,
                )?
            };
            let mut next = inner.rec.clone();
            next.phase = CyclePhase::Applying;
            next.redo_len = end;
            next.pending = Some(point.clone());
            if let Some(last) = next.points.last_mut() {
                last.undo_len = undo_len;
            }
            self.persist(&next)?;
            inner.rec = next;
            self.forget_undo(prev);
        }
        self.finish_apply(&mut inner)
    }

    /// Applies the redo log of the cycle being committed, syncs the replica, records the
    /// cycle as the newest point and deletes the redo log.
    pub(super) fn finish_apply(&self, inner: &mut Inner) -> Result<(), SinkError> {
        let replica = self.require_replica(inner, "commit_cycle")?;
        let point = inner.rec.pending.clone().ok_or_else(|| {
            invalid(
                &self.paths.vhd,
                0,
                "a cycle is being applied without its point",
            )
        })?;
        let redo_path = {
            let redo = self.redo(inner).ok_or_else(|| {
                invalid(
                    &self.paths.vhd,
                    0,
                    "the applying cycle's redo log is not loaded",
                )
            })?;
            redo.apply(replica.as_ref(), &self.paths.vhd)?;
            redo.path.clone()
        };
        replica
            .sync_data()
            .map_err(io_err(&self.paths.vhd, "fdatasync", 0))?;
        let mut next = inner.rec.clone();
        next.phase = CyclePhase::Idle;
        next.disk.committed_cycle = point.cycle;
        next.disk.open_cycle = None;
        next.disk.progress = RangeSet::new();
        next.redo_len = 0;
        next.pending = None;
        next.points.push(Listed { point, undo_len: 0 });
        self.persist(&next)?;
        inner.rec = next;
        inner.redo = None;
        // Left over after a failure here, the log is an orphan that the next open removes.
        if let Err(e) = self
            .fs
            .remove_file(&redo_path)
            .and_then(|()| self.fs.sync_dir(&self.paths.dir))
        {
            tracing::warn!(path = %redo_path.display(), error = %e, "cannot remove a committed redo log");
        }
        Ok(())
    }

    /// Drops the open cycle (a new full copy replaces everything it would have written).
    pub(super) fn discard_cycle(&self, inner: &mut Inner) -> Result<(), SinkError> {
        if inner.rec.phase == CyclePhase::Applying {
            self.finish_apply(inner)?;
        }
        if inner.rec.phase == CyclePhase::Open {
            let mut next = inner.rec.clone();
            next.phase = CyclePhase::Idle;
            next.disk.open_cycle = None;
            next.disk.progress = RangeSet::new();
            next.redo_len = 0;
            self.persist(&next)?;
            inner.rec = next;
            inner.redo = None;
        }
        Ok(())
    }

    /// At open: loads the open cycle's redo log, or finishes a commit a crash interrupted.
    pub(super) fn recover_cycle(&self) -> Result<(), SinkError> {
        let mut inner = self.write_inner();
        let rec: Record = inner.rec.clone();
        let Some(cycle) = rec.disk.open_cycle else {
            return Ok(());
        };
        let end = rec.disk.writable_end();
        let loaded = Redo::load(self.fs.as_ref(), &self.paths, cycle, rec.redo_len, end)?;
        match (rec.phase, loaded) {
            (_, Some(redo)) => inner.redo = Some(Mutex::new(redo)),
            (CyclePhase::Applying, None) => {
                return Err(corrupt(
                    &self.paths.redo(cycle),
                    0,
                    format!("cycle {cycle} was being applied but its redo log is missing"),
                ))
            }
            (_, None) => {
                tracing::warn!(
                    redo = %self.paths.redo(cycle).display(),
                    "the open cycle's redo log is missing; the cycle restarts from nothing"
                );
                let redo = Redo::create(self.fs.as_ref(), &self.paths, cycle)?;
                let mut next = rec.clone();
                next.disk.progress = RangeSet::new();
                next.redo_len = redo.end;
                self.persist(&next)?;
                inner.rec = next;
                inner.redo = Some(Mutex::new(redo));
            }
        }
        if inner.rec.phase == CyclePhase::Applying {
            self.finish_apply(&mut inner)?;
        }
        Ok(())
    }
}
