//! Delta cycles of the local store: writes go into the replica itself, behind an undo log
//! of the newest point, so a cycle costs about one write of its bytes, done while they
//! arrive (see `LAYOUT.md`, "Cycles").
//!
//! While cycle N is open, point K = N-1 is the replica with `NAME.pK.undo` laid over it.
//! The undo-first rule keeps that exact at every instant, and after a crash: a write saves
//! the replica's bytes under every range no undo record covers yet (appending records), and
//! is buffered in memory; the buffer reaches the replica only after the undo log is synced
//! and a state record naming its new length is durable. So every replica byte that differs
//! from point K lies under a durable undo record the durable state names, whatever a crash
//! keeps of the unsynced writes. Commit: flush the buffer that way, fdatasync the replica,
//! persist "committed N" (point K keeps its undo log, N is the newest point).

use std::path::PathBuf;
use std::sync::Arc;

use vdrep_proto::RangeSet;

use super::cycle_bufs::Bufs;
use super::disk::{Inner, LocalDisk};
use super::files::{corrupt, create_log, invalid, io_err};
use super::fs::{DataFile, StoreFs};
use super::log::{self, LogKind, CHUNK, FILE_HEADER};
use super::state::{Listed, Record};
use super::DiskPaths;
use crate::sink::lifecycle::{self, CycleCommit, CycleStart, Target};
use crate::sink::{RecoveryPoint, SinkError, SECTOR};

/// Default bound on the bytes of writes an open cycle holds in memory before they go to the
/// replica (per disk). Each flush costs an undo-log sync and a state record, so it is large
/// enough to make those few per gigabyte, small enough to bound a receiver's memory.
pub const CYCLE_BUFFER: usize = 32 << 20;
/// Most buffered operations (clears carry no bytes but are counted here).
const MAX_OPS: usize = 1 << 16;
/// Bytes of undo records gathered before they are written to the log.
const UNDO_WRITE: usize = 1 << 20;
/// Writes larger than this are copied into the cycle's buffer before the disk's lock is
/// taken (smaller copies cost less than taking the lock twice).
const COPY_UNLOCKED: usize = 16 << 10;

/// A write or clear of the open cycle not yet in the replica.
struct Pending {
    offset: u64,
    len: u64,
    /// `None`: a clear.
    data: Option<Vec<u8>>,
}

/// The open cycle: its undo log (of the newest point) and its buffered writes.
pub(super) struct OpenCycle {
    /// The point whose undo log this is (the newest committed cycle).
    pub(super) point: u64,
    path: PathBuf,
    /// Created at the first write that needs a pre-image (an empty cycle has none).
    undo: Option<Arc<dyn DataFile>>,
    /// Where the next undo record goes; the state names the durable prefix.
    end: u64,
    /// Records appended but not yet written to the file: they end at `end`. Written when
    /// [`UNDO_WRITE`] bytes gather, and always before the log is synced (a flush), so a
    /// cycle of small writes costs one write of its pre-images per megabyte, not one each.
    tail: Vec<u8>,
    /// Ranges whose pre-image is in the undo log (durable or not yet).
    covered: RangeSet,
    /// Writes and clears not yet in the replica, in arrival order (later ones win).
    ops: Vec<Pending>,
    /// Data bytes in `ops`.
    buffered: usize,
    /// The last `next_hole` answer of the replica, `(asked at, hole)`: the replica held
    /// data over `[asked at, hole)`, so a later pre-image there needs no new `SEEK_HOLE`.
    /// See [`OpenCycle::hole_after`].
    hole_hint: Option<(u64, u64)>,
}

impl OpenCycle {
    fn new(paths: &DiskPaths, point: u64) -> OpenCycle {
        OpenCycle {
            point,
            path: paths.undo(point),
            undo: None,
            end: 0,
            tail: Vec::new(),
            covered: RangeSet::new(),
            ops: Vec::new(),
            buffered: 0,
            hole_hint: None,
        }
    }

    /// The first hole of `replica` at or after `pos`, which lies in data (its
    /// `next_data` said so), asking the file only when the last answer does not cover
    /// `pos`.
    ///
    /// Why: every write of a cycle saves its pre-image, and each asked `SEEK_HOLE` from its
    /// own offset. tmpfs answers that by visiting every cached page up to the hole, in one
    /// RCU section the kernel cannot preempt: over a replica whose first GiB is data, a
    /// cycle of a few thousand scattered writes spent seconds there, milliseconds at a time,
    /// and a guest thread that woke on that core waited for it (`bench/results/ANALYSIS.md`,
    /// session 15, P). An answer stays usable: writes only turn holes into data (the hole
    /// then lies later than the hint says, and the next read past it asks again), and a
    /// hole punched since makes the hint later than the real hole, which
    /// [`DataFile::next_hole`] allows (the bytes read there are zeros).
    fn hole_after(&mut self, replica: &dyn DataFile, pos: u64) -> std::io::Result<u64> {
        if let Some((from, hole)) = self.hole_hint {
            if from <= pos && pos < hole {
                return Ok(hole);
            }
        }
        let hole = replica.next_hole(pos)?;
        self.hole_hint = Some((pos, hole));
        Ok(hole)
    }

    /// The open cycle as a crash left it: the undo log's first `len` bytes (0: none) are
    /// durable; bytes after them are a torn tail the next append overwrites.
    fn load(
        fs: &dyn StoreFs,
        paths: &DiskPaths,
        point: u64,
        len: u64,
        disk_end: u64,
    ) -> Result<OpenCycle, SinkError> {
        let mut c = OpenCycle::new(paths, point);
        if len == 0 {
            return Ok(c);
        }
        let idx = super::points::load_undo(fs, paths, point, len, disk_end, false)?;
        c.covered = idx.recs.iter().map(|r| r.offset..r.end()).collect();
        c.undo = Some(idx.file);
        c.end = len;
        Ok(c)
    }

    /// Saves the replica's bytes under the parts of `[offset, offset + len)` not yet covered
    /// (zero runs at sector granularity as zero records), appending to the undo log. Where
    /// the replica holds a hole ([`DataFile::next_data`]) the pre-image is a zero record
    /// made without reading: a cycle's writes into space the guest never used before cost
    /// a seek each, not a read of zero pages.
    fn save_pre_image(
        &mut self,
        fs: &dyn StoreFs,
        paths: &DiskPaths,
        replica: &dyn DataFile,
        offset: u64,
        len: u64,
    ) -> Result<(), SinkError> {
        let gaps = self.covered.gaps_in(offset, offset + len);
        if gaps.is_empty() {
            return Ok(());
        }
        let file = match &self.undo {
            Some(f) => f.clone(),
            None => {
                let header = log::file_header(LogKind::Undo, self.point);
                let f = create_log(fs, &paths.dir, &self.path, &header)?;
                self.end = FILE_HEADER;
                self.undo = Some(f.clone());
                f
            }
        };
        let mut buf = Vec::new();
        let mut out = Vec::new();
        for g in gaps {
            let mut pos = g.start;
            while pos < g.end {
                let data_at = replica
                    .next_data(pos)
                    .map_err(io_err(&paths.vhd, "find data", pos))?
                    .map_or(g.end, |d| d.clamp(pos, g.end));
                let n = if data_at > pos {
                    out.clear();
                    out.extend_from_slice(&log::rec_header(pos, data_at - pos, None));
                    data_at - pos
                } else {
                    let hole_at = self.hole_after(replica, pos).map_err(io_err(
                        &paths.vhd,
                        "find data",
                        pos,
                    ))?;
                    let upto = if hole_at > pos {
                        hole_at.min(g.end)
                    } else {
                        g.end
                    };
                    let n = (upto - pos).min(CHUNK as u64) as usize;
                    buf.resize(n, 0);
                    let b = &mut buf[..n];
                    replica
                        .read_at(pos, b)
                        .map_err(io_err(&paths.vhd, "read pre-image", pos))?;
                    encode_pre_image(pos, b, &mut out);
                    n as u64
                };
                self.tail.extend_from_slice(&out);
                self.end += out.len() as u64;
                self.covered.insert(pos, pos + n);
                pos += n;
                if self.tail.len() >= UNDO_WRITE {
                    self.write_tail(file.as_ref())?;
                }
            }
        }
        Ok(())
    }

    /// Writes the gathered undo records to the log (not synced). On an error they stay
    /// gathered, for the next attempt.
    fn write_tail(&mut self, file: &dyn DataFile) -> Result<(), SinkError> {
        if self.tail.is_empty() {
            return Ok(());
        }
        let at = self.end - self.tail.len() as u64;
        file.write_at(at, &self.tail)
            .map_err(io_err(&self.path, "append to undo log", at))?;
        self.tail.clear();
        Ok(())
    }

    /// Lays the buffered writes over `buf` (bytes of the replica at `off`).
    fn overlay(&self, off: u64, buf: &mut [u8]) {
        let end = off + buf.len() as u64;
        for p in self
            .ops
            .iter()
            .filter(|p| p.offset < end && p.offset + p.len > off)
        {
            let s = p.offset.max(off);
            let e = (p.offset + p.len).min(end);
            let out = &mut buf[(s - off) as usize..(e - off) as usize];
            match &p.data {
                Some(d) => {
                    out.copy_from_slice(&d[(s - p.offset) as usize..(e - p.offset) as usize])
                }
                None => out.fill(0),
            }
        }
    }
}

/// Appends to `out` the undo records of `b`, the replica's bytes at `pos`: runs of all-zero
/// sectors as zero records, the rest as data records.
fn encode_pre_image(pos: u64, b: &[u8], out: &mut Vec<u8>) {
    out.clear();
    let n = b.len();
    let step = SECTOR as usize;
    // An OR over the sector, without an early exit: the compiler vectorises it (a
    // byte-by-byte `all` ran at 2 GB/s, 19 % of a receiver's cycle).
    let zero = |k: usize| b[k..(k + step).min(n)].iter().fold(0u8, |a, &x| a | x) == 0;
    let mut i = 0;
    while i < n {
        let z = zero(i);
        let mut j = (i + step).min(n);
        while j < n && zero(j) == z {
            j = (j + step).min(n);
        }
        let data = (!z).then(|| &b[i..j]);
        out.extend_from_slice(&log::rec_header(pos + i as u64, (j - i) as u64, data));
        if let Some(d) = data {
            out.extend_from_slice(d);
        }
        i = j;
    }
}

impl LocalDisk {
    /// Routes a write or clear as the lifecycle says ([`lifecycle::write_target`]): to the
    /// open cycle (done here), or `None` when the disk takes it directly (an initial copy is
    /// in progress).
    /// `data`: the write's bytes, in one slice or several (a frame's chunks), or `None` for
    /// a clear.
    pub(super) fn cycle_write(
        &self,
        op: &'static str,
        offset: u64,
        len: u64,
        data: Option<&[&[u8]]>,
    ) -> Option<Result<(), SinkError>> {
        // A copy's write is told so under the read lock: the write lock would wait for a
        // checkpoint that is making its state record durable (`locks.rs`).
        {
            let inner = self.read_inner();
            let target =
                lifecycle::write_target(&inner.working_path, op, &inner.rec.disk, offset, len);
            if matches!(target, Ok(Target::Copy)) {
                return None;
            }
        }
        // The cycle's own copy of the bytes is made without the disk's lock, which
        // serialises every write of the cycle: the lock is taken again after the copy and
        // the target checked anew. The copy goes into a reused buffer (`super::cycle_bufs`).
        let bufs = Bufs::global();
        let mut owned: Option<Vec<u8>> = None;
        loop {
            let mut inner = self.write_inner();
            match lifecycle::write_target(&inner.working_path, op, &inner.rec.disk, offset, len) {
                Ok(Target::Copy) => {
                    if let Some(b) = owned {
                        bufs.give_back(b);
                    }
                    return None;
                }
                Ok(Target::Cycle(_)) => match (data, owned.take()) {
                    (Some(d), None) if len as usize > COPY_UNLOCKED => {
                        drop(inner);
                        owned = Some(bufs.copy_of(d));
                    }
                    (d, o) => {
                        let bytes = o.or_else(|| d.map(|d| bufs.copy_of(d)));
                        return Some(self.cycle_write_locked(&mut inner, op, offset, len, bytes));
                    }
                },
                Err(e) => return Some(Err(e)),
            }
        }
    }

    fn cycle_write_locked(
        &self,
        inner: &mut Inner,
        op: &'static str,
        offset: u64,
        len: u64,
        data: Option<Vec<u8>>,
    ) -> Result<(), SinkError> {
        if inner.cycle.is_none() {
            return Err(invalid(
                &self.paths.vhd,
                offset,
                "the open cycle is not loaded",
            ));
        }
        if len == 0 {
            return Ok(());
        }
        let replica = self.require_replica(inner, op)?;
        let limit = self.cycle_buffer;
        let full = {
            let Some(c) = inner.cycle.as_mut() else {
                return Ok(());
            };
            c.save_pre_image(self.fs.as_ref(), &self.paths, replica.as_ref(), offset, len)?;
            c.buffered += data.as_ref().map_or(0, Vec::len);
            c.ops.push(Pending { offset, len, data });
            c.buffered >= limit || c.ops.len() >= MAX_OPS
        };
        if full {
            self.flush_cycle(inner)?;
        }
        Ok(())
    }

    /// Moves the buffered writes into the replica, undo first: fdatasync the undo log,
    /// persist its length in the state record, then write the replica (not synced here).
    /// On an error the buffer is kept, so a retry replays it whole, in order.
    pub(super) fn flush_cycle(&self, inner: &mut Inner) -> Result<(), SinkError> {
        let replica = self.require_replica(inner, "flush")?;
        let Some(c) = inner.cycle.as_mut() else {
            return Ok(());
        };
        let durable = inner.rec.points.last().map_or(0, |l| l.undo_len);
        if c.end > durable {
            if let Some(f) = c.undo.clone() {
                c.write_tail(f.as_ref())?;
                self.sync(f.as_ref(), &c.path, 0)?;
                // The undo log is read back only to roll a point back: its clean pages go,
                // as the replica's do at a checkpoint (`DataFile::drop_cache`).
                f.drop_cache();
            }
            let mut next = inner.rec.clone();
            if let Some(last) = next.points.last_mut() {
                last.undo_len = c.end;
            }
            self.persist(&next)?;
            inner.rec = next;
        }
        let Some(c) = inner.cycle.as_mut() else {
            return Ok(());
        };
        let vhd = &self.paths.vhd;
        for p in &c.ops {
            match &p.data {
                Some(d) => replica
                    .write_at(p.offset, d)
                    .map_err(io_err(vhd, "write", p.offset))?,
                None => replica
                    .zero_range(p.offset, p.len)
                    .map_err(io_err(vhd, "clear", p.offset))?,
            }
        }
        let bufs = Bufs::global();
        for p in c.ops.drain(..) {
            if let Some(d) = p.data {
                bufs.give_back(d);
            }
        }
        c.buffered = 0;
        Ok(())
    }

    /// Lays the open cycle's buffered writes over bytes read from the replica.
    pub(super) fn cycle_overlay(&self, inner: &Inner, off: u64, buf: &mut [u8]) {
        if let Some(c) = &inner.cycle {
            c.overlay(off, buf);
        }
    }

    /// Makes the open cycle's writes durable: flushes its buffer into the replica (undo
    /// first) and syncs the replica. The checkpoint then records the progress.
    pub(super) fn cycle_sync(&self, inner: &mut Inner) -> Result<(), SinkError> {
        self.flush_cycle(inner)?;
        let replica = self.require_replica(inner, "checkpoint")?;
        self.sync(replica.as_ref(), &self.paths.vhd, 0)
    }

    pub(super) fn require_replica(
        &self,
        inner: &Inner,
        what: &str,
    ) -> Result<Arc<dyn DataFile>, SinkError> {
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

    /// See [`crate::sink::ReplicaDisk::begin_cycle`]. Only the state changes: the undo log
    /// is made by the first write, so an empty cycle costs two state records.
    pub(super) fn begin_cycle_impl(&self, cycle: u64) -> Result<RangeSet, SinkError> {
        let mut inner = self.write_inner();
        self.require_replica(&inner, "begin_cycle")?;
        let next = match lifecycle::begin_cycle(&self.paths.vhd, &inner.rec.disk, cycle)? {
            CycleStart::Resume(progress) => return Ok(progress),
            CycleStart::Open(disk) => Record {
                disk,
                ..inner.rec.clone()
            },
        };
        let point = inner.rec.disk.committed_cycle;
        self.persist(&next)?;
        inner.rec = next;
        inner.cycle = Some(OpenCycle::new(&self.paths, point));
        Ok(RangeSet::new())
    }

    /// See [`crate::sink::ReplicaDisk::commit_cycle`]: the buffer goes into the replica,
    /// the replica is synced, then one state record commits the cycle (the newest point's
    /// undo log stays with it).
    pub(super) fn commit_cycle_impl(&self, point: &RecoveryPoint) -> Result<(), SinkError> {
        let mut inner = self.write_inner();
        let replica = self.require_replica(&inner, "commit_cycle")?;
        let disk = match lifecycle::commit_cycle(&self.paths.vhd, &inner.rec.disk, point)? {
            CycleCommit::Resent => return Ok(()), // already durable
            CycleCommit::Commit(disk) => disk,
        };
        if inner.cycle.is_none() {
            return Err(invalid(&self.paths.vhd, 0, "the open cycle is not loaded"));
        }
        self.flush_cycle(&mut inner)?;
        self.sync(replica.as_ref(), &self.paths.vhd, 0)?;
        let mut next = Record {
            disk,
            ..inner.rec.clone()
        };
        next.points.push(Listed {
            point: point.clone(),
            undo_len: 0,
        });
        self.persist(&next)?;
        inner.rec = next;
        inner.cycle = None;
        Ok(())
    }

    /// At open: loads the open cycle's undo log as far as the state says it is durable.
    /// Ranges it covers may hold the cycle's bytes or the point's (a crash keeps any subset
    /// of unsynced writes); the sender resends everything outside the progress, and every
    /// resent write falls in covered ranges, so nothing else changes before the commit.
    pub(super) fn recover_cycle(&self) -> Result<(), SinkError> {
        let mut inner = self.write_inner();
        if inner.rec.disk.open_cycle.is_none() {
            return Ok(());
        }
        let Some(last) = inner.rec.points.last() else {
            return Err(corrupt(
                &self.paths.state,
                0,
                "a cycle is open without points",
            ));
        };
        let end = inner.rec.disk.writable_end();
        let c = OpenCycle::load(
            self.fs.as_ref(),
            &self.paths,
            last.point.cycle,
            last.undo_len,
            end,
        )?;
        inner.cycle = Some(c);
        Ok(())
    }
}

#[cfg(test)]
#[path = "cycle_tests.rs"]
mod tests;
