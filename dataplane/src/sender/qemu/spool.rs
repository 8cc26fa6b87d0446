//! A cycle's dirty extents drained from its view into a local file, so that the view can go
//! before the cycle ships. Off unless `VDREP_QEMU_SPOOL=1` (`super::cycle::SPOOL_ENV`: what
//! it costs the cycle is there).
//!
//! Why: while a view lives, the guest's first write to each 64 KiB block waits for qemu's
//! copy-before-write (125–170 µs against ~50 µs), and a view that lives while its cycle
//! ships — 9–17 s for 1 GiB on a 2-core host shared by the guest, qemu and both vdrep ends —
//! makes most blocks of a busy region wait once per cycle: the guest's p99 write latency
//! was 3.2× unprotected (`bench/results/ANALYSIS.md`, session 11, Q18L). Draining reads the
//! view as fast as NBD goes (16 reads in flight), giving each block back to qemu as soon as
//! it is read ([`NbdView::drain`]), and the view is removed right after
//! (`QemuVm::drop_view`); shipping then reads the file.
//!
//! What stays as it was: the cycle's bitmap is kept until the cycle commits (a sender
//! killed after the view went and before the commit finds it at restart, merges the newer
//! bitmap back into it and ships the writes again), and the digest hashes the pieces as
//! they are drained (the tee), so it reads nothing from the view afterwards.
//!
//! Bounds: the file holds the dirty bytes (packed, in extent order), in
//! `STATE/qemu/VM/spool/`, whose filesystem must have room for them (else the cycle reads
//! the view as before); memory is the drain's reads in flight. The file goes when the
//! cycle's shipping drops it (committed or failed), and a restart removes what a killed
//! run left ([`remove_leftovers`]).

use std::fs::{File, OpenOptions};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::digest::PieceTee;
use super::view::NbdView;
use crate::disk::{DiskError, DiskInfo, Extent, ExtentKind, VirtualDisk};

/// The spool folder of a VM's state folder.
pub fn dir(state: &Path) -> PathBuf {
    state.join("spool")
}

/// Removes the spool files a killed run left in `state`'s spool folder.
pub fn remove_leftovers(state: &Path) -> std::io::Result<usize> {
    let d = dir(state);
    let entries = match std::fs::read_dir(&d) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut n = 0;
    for e in entries {
        std::fs::remove_file(e?.path())?;
        n += 1;
    }
    Ok(n)
}

/// A cycle's dirty extents, drained from its view.
pub struct Spool {
    info: DiskInfo,
    file: File,
    path: PathBuf,
    /// Per extent, in order: its start and end on the disk, and its offset in the file.
    index: Vec<(u64, u64, u64)>,
}

impl Spool {
    /// Drains `extents` (sorted, disjoint) of `view` into `dir/NAME.spool`, hashing every
    /// whole piece into `tee` and giving each read block back to qemu. On error the file
    /// is removed; the view may have lost blocks (a new view reads them).
    pub fn fill(
        view: &NbdView,
        extents: &[Range<u64>],
        dir: &Path,
        name: &str,
        tee: &PieceTee,
    ) -> Result<Spool, DiskError> {
        let path = dir.join(format!("{name}.spool"));
        let io = |e| DiskError::io(&path, 0, e);
        std::fs::create_dir_all(dir).map_err(io)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(io)?;
        let mut index = Vec::with_capacity(extents.len());
        let mut at = 0;
        for e in extents {
            index.push((e.start, e.end, at));
            at += e.end - e.start;
        }
        let mut info = view.info().clone();
        info.path = path.clone();
        let spool = Spool {
            info,
            file,
            path,
            index,
        };
        view.drain(extents, &mut |offset, data| {
            spool.write(offset, data)?;
            tee.record(offset, data);
            Ok(())
        })?;
        Ok(spool)
    }

    /// The file position of disk offset `offset` and the bytes of its extent from there.
    fn locate(&self, offset: u64) -> Option<(u64, u64)> {
        let k = self.index.partition_point(|x| x.1 <= offset);
        let &(start, end, at) = self.index.get(k)?;
        (start <= offset).then(|| (at + offset - start, end - offset))
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), DiskError> {
        self.pieces(offset, data.len(), |at, r| {
            self.file.write_all_at(&data[r], at)
        })
    }

    /// Runs `io` on each piece of `[offset, offset + len)` that lies in one extent, with the
    /// piece's file position and its range relative to `offset`: an extent's bytes are
    /// contiguous in the file, two extents' bytes are not.
    fn pieces(
        &self,
        offset: u64,
        len: usize,
        mut io: impl FnMut(u64, Range<usize>) -> std::io::Result<()>,
    ) -> Result<(), DiskError> {
        let mut done = 0usize;
        while done < len {
            let off = offset + done as u64;
            let Some((at, left)) = self.locate(off) else {
                return Err(self.outside(off, len - done));
            };
            let n = (left as usize).min(len - done);
            io(at, done..done + n).map_err(|e| DiskError::io(&self.path, at, e))?;
            done += n;
        }
        Ok(())
    }

    fn outside(&self, offset: u64, len: usize) -> DiskError {
        DiskError::io(
            &self.path,
            offset,
            std::io::Error::other(format!(
                "{offset}+{len} is not in this cycle's dirty extents"
            )),
        )
    }

    /// The bytes the file holds.
    pub fn len(&self) -> u64 {
        self.index.last().map_or(0, |x| x.2 + x.1 - x.0)
    }

    /// True when the spool holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl VirtualDisk for Spool {
    fn info(&self) -> &DiskInfo {
        &self.info
    }

    /// Everything is data: a cycle's extents are read whole, zeros included.
    fn extents_in(&self, start: u64, end: u64) -> Result<Vec<Extent>, DiskError> {
        let end = end.min(self.info.virtual_size);
        Ok(if start < end {
            vec![Extent {
                offset: start,
                length: end - start,
                kind: ExtentKind::Data,
            }]
        } else {
            Vec::new()
        })
    }

    fn read_into(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        self.pieces(offset, buf.len(), |at, r| {
            self.file.read_exact_at(&mut buf[r], at)
        })
    }
}
