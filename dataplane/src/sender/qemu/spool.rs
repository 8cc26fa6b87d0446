//! A cycle's dirty extents drained from its view into a local file, so that the view goes
//! long before the cycle has shipped. On by default (`super::cycle::SPOOL_ENV`=0 turns it
//! off).
//!
//! Why: while a view lives, the guest's first write to each 64 KiB block waits for qemu's
//! copy-before-write (125–170 µs against ~50 µs), and a view that lives while its cycle
//! ships — 9–17 s for 1 GiB on a 2-core host shared by the guest, qemu and both vdrep ends —
//! makes most blocks of a busy region wait once per cycle: the guest's p99 write latency
//! was 3.2× unprotected (`bench/results/ANALYSIS.md`, session 11, Q18L). Draining reads the
//! view as fast as NBD goes, giving each block back to qemu as soon as it is read
//! ([`NbdView::drain`]), and the view is removed right after (`QemuVm::drop_view`).
//!
//! The cycle ships while the drain runs (session 13, Q18P): each read of the spool waits
//! until the drain has written its bytes, so the cycle takes about the longer of the two,
//! not their sum (drained first, then shipped from the file, a GiB took 2.3× as long as
//! from the view). The drain runs at the process's priority while the shipping yields to
//! the guests (`crate::sender::priority`): the view stays short on a busy host.
//!
//! What stays as it was: the cycle's bitmap is kept until the cycle commits (a sender
//! killed after the view went and before the commit finds it at restart, merges the newer
//! bitmap back into it and ships the writes again), and the digest hashes the pieces as
//! they are drained (the tee), so it reads nothing from the view afterwards. The last
//! byte becomes readable only once the view is gone, so no cycle commits with its view
//! still in place.
//!
//! Memory first (`super::spool_mem`): the drain's reads are kept in buffers the process
//! reuses, up to a process-wide bound, and only what does not fit is written to the file —
//! on a host that takes freed memory back, a GiB of new page cache per cycle cost the drain
//! more CPU than reading the view. A kept buffer goes back to the pool once read.
//!
//! Bounds: the file holds the dirty bytes (packed, in extent order), in
//! `STATE/qemu/VM/spool/`, whose filesystem must have room for them (else the cycle reads
//! the view as before); memory is the drain's reads in flight. The file goes when both the
//! cycle's shipping (committed or failed) and the drain let go of it, and a restart removes
//! what a killed run left ([`remove_leftovers`]).

use std::fs::{File, OpenOptions};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use super::digest::PieceTee;
use super::spool_mem::Slots;
use super::view::NbdView;
use crate::codec::is_zero;
use crate::disk::{DiskError, DiskInfo, Extent, ExtentKind, VirtualDisk};

/// The most bytes the drain writes into the spool file in one `pwrite` (session 15, P:
/// the drain's 1 MiB writes into the page cache were a tenth of what a waking guest
/// thread waited for while a cycle shipped).
const WRITE_PIECE: usize = 128 << 10;

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

/// How far the drain got.
#[derive(Default)]
struct Drained {
    /// The file holds every byte before this position.
    upto: u64,
    /// The drain ended and its `then` ran (the view is gone): the last byte is readable.
    done: bool,
    /// Why the drain stopped short, as the error kind the cycle's reads fail with.
    failed: Option<(std::io::ErrorKind, String)>,
}

/// What the spool and its drain thread share; the file goes with the last of them.
struct Shared {
    file: File,
    path: PathBuf,
    /// Per extent, in order: its start and end on the disk, and its offset in the file.
    index: Vec<(u64, u64, u64)>,
    /// Where each drain read's bytes are: kept in memory or written to the file
    /// (`super::spool_mem`).
    slots: Slots,
    /// Bytes the drain wrote to the file: what did not fit in the process's buffers.
    in_file: AtomicU64,
    /// File bytes the shipping read whole and that are not yet freed: freed together once
    /// contiguous and at least [`RELEASE_RUN`] long.
    released: Mutex<Range<u64>>,
    drained: Mutex<Drained>,
    moved: Condvar,
    /// Set when the spool is dropped: the drain stops at its next read.
    cancel: AtomicBool,
}

/// The file bytes freed together (see [`Shared::release`]).
const RELEASE_RUN: u64 = 4 << 20;

impl Shared {
    /// Frees the pages of file bytes the shipping read whole (`FALLOC_FL_PUNCH_HOLE`: dirty
    /// pages go without being written back), in contiguous runs of [`RELEASE_RUN`]. Why:
    /// the drain runs ahead of the shipping, and every byte it writes into the file is a
    /// page of new page cache; freed as soon as read, the same pages serve the drain's
    /// next writes while the host still backs them, instead of a fresh page per byte (on
    /// a virtual machine each costs a hypervisor fault: `bench/results/ANALYSIS.md`,
    /// session 17). The slots refuse a second read of what was released (a new view reads
    /// it), so no one reads the hole. A hint: a failed punch leaves the bytes in place.
    fn release(&self, pos: u64, len: u64) {
        let Ok(mut r) = self.released.lock() else {
            return;
        };
        if r.end != pos {
            let run = std::mem::replace(&mut *r, pos..pos);
            self.punch(run);
        }
        r.end = pos + len;
        if r.end - r.start >= RELEASE_RUN {
            let end = r.end;
            let run = std::mem::replace(&mut *r, end..end);
            self.punch(run);
        }
    }

    fn punch(&self, run: Range<u64>) {
        const PAGE: u64 = 4096;
        let start = run.start.next_multiple_of(PAGE);
        let end = run.end / PAGE * PAGE;
        if start >= end {
            return;
        }
        // SAFETY: fallocate on a descriptor this struct owns; no memory is passed.
        unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                start as libc::off_t,
                (end - start) as libc::off_t,
            );
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A cycle's dirty extents, drained from its view by a thread of their own while the cycle
/// ships them: a read waits until the drain has passed its bytes (the drain goes in extent
/// order, as the shipping reads), so the cycle takes about the longer of the drain and the
/// shipping, not their sum.
pub struct Spool {
    info: DiskInfo,
    shared: Arc<Shared>,
}

/// What the drain thread runs once every extent is in the file, before the last byte
/// becomes readable (removing the view: a cycle never commits while its view lives on).
pub type Then = Box<dyn FnOnce(&Spool) + Send + 'static>;

impl Spool {
    /// Starts draining `extents` (sorted, disjoint) of `view` into `dir/NAME.spool` on a
    /// thread at the process's priority (`crate::sender::priority::spawn_unniced`: the
    /// view lives until the drain ends), hashing every whole piece into `tee` and giving
    /// each read block back to qemu; runs `then` once it drained everything. A failed
    /// drain fails the reads of what it did not reach (the view may have lost blocks: a new
    /// view reads them).
    pub fn start(
        view: Arc<NbdView>,
        extents: &[Range<u64>],
        dir: &Path,
        name: &str,
        tee: Arc<PieceTee>,
        then: Then,
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
            shared: Arc::new(Shared {
                file,
                path,
                index,
                slots: Slots::default(),
                in_file: AtomicU64::new(0),
                released: Mutex::new(0..0),
                drained: Mutex::new(Drained::default()),
                moved: Condvar::new(),
                cancel: AtomicBool::new(false),
            }),
        };
        let mine = Spool {
            info: spool.info.clone(),
            shared: spool.shared.clone(),
        };
        let extents = extents.to_vec();
        let run = move || {
            crate::sender::priority::lengthen_own_slice();
            let sp = &mine;
            let r = view.drain(&extents, &mut |offset, data| {
                if sp.shared.cancel.load(Ordering::Relaxed) {
                    return Err(sp.failure("the cycle stopped shipping"));
                }
                tee.record(offset, data);
                // A read of the drain lies in one extent: its bytes are contiguous in the
                // file from `at`, kept in memory when the pool allows.
                let Some((at, _)) = sp.locate(offset) else {
                    return Err(sp.outside(offset, data.len()));
                };
                let len = data.len() as u64;
                if is_zero(data) {
                    // Neither memory nor the file: the shipping reads zeros (and sends a
                    // clear, as it would have after reading them).
                    sp.shared.slots.zeros(at, len);
                } else if !sp.shared.slots.keep(at, data) {
                    sp.write(offset, data)?;
                    sp.shared.slots.in_file(at, len);
                    sp.shared.in_file.fetch_add(len, Ordering::Relaxed);
                }
                sp.advance(|d| d.upto = d.upto.max(at + len));
                Ok(())
            });
            // A spool dropped meanwhile belongs to a cycle that stopped shipping: its round
            // ends (or ended) and removes the view itself, maybe already taking the next.
            let stopped = sp.shared.cancel.load(Ordering::Relaxed);
            match r {
                Ok(()) if !stopped => {
                    then(sp);
                    sp.advance(|d| d.done = true);
                }
                Ok(()) => sp.advance(|d| {
                    d.failed = Some((std::io::ErrorKind::Interrupted, "the cycle stopped".into()))
                }),
                // Transient, as a drain that failed before shipping started always was: the
                // round is retried from a new view (the bitmap is kept until a commit).
                Err(e) => sp
                    .advance(|d| d.failed = Some((std::io::ErrorKind::Interrupted, e.to_string()))),
            }
        };
        crate::sender::priority::spawn_unniced(&format!("vdrep-drain-{name}"), run)
            .map_err(|e| DiskError::io(&spool.shared.path, 0, e))?;
        Ok(spool)
    }

    fn advance(&self, f: impl FnOnce(&mut Drained)) {
        if let Ok(mut d) = self.shared.drained.lock() {
            f(&mut d);
        }
        self.shared.moved.notify_all();
    }

    /// Waits until the file holds every byte before `end` (the last one: until the drain
    /// ended).
    fn wait_for(&self, end: u64) -> std::io::Result<()> {
        let total = self.len();
        let poisoned = || std::io::Error::other("the drain's lock is poisoned");
        let mut d = self.shared.drained.lock().map_err(|_| poisoned())?;
        loop {
            if d.upto >= end && (end < total || d.done) {
                return Ok(());
            }
            if let Some((kind, why)) = &d.failed {
                let why = format!("the drain from the view failed: {why}");
                return Err(std::io::Error::new(*kind, why));
            }
            d = self.shared.moved.wait(d).map_err(|_| poisoned())?;
        }
    }

    fn failure(&self, what: &str) -> DiskError {
        let e = std::io::Error::new(std::io::ErrorKind::Interrupted, what.to_string());
        DiskError::io(&self.shared.path, 0, e)
    }

    /// Whether the drain ended with every extent in the file.
    pub fn drained(&self) -> bool {
        self.shared.drained.lock().is_ok_and(|d| d.done)
    }

    /// The file position of disk offset `offset` and the bytes of its extent from there.
    fn locate(&self, offset: u64) -> Option<(u64, u64)> {
        let k = self.shared.index.partition_point(|x| x.1 <= offset);
        let &(start, end, at) = self.shared.index.get(k)?;
        (start <= offset).then(|| (at + offset - start, end - offset))
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), DiskError> {
        self.pieces(offset, data.len(), |at, r| {
            // In pieces of WRITE_PIECE: each `pwrite` is a kernel section Linux without
            // kernel preemption does not interrupt for a waking guest thread.
            let mut at = at;
            for c in data[r].chunks(WRITE_PIECE) {
                self.shared.file.write_all_at(c, at)?;
                at += c.len() as u64;
            }
            Ok(())
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
            io(at, done..done + n).map_err(|e| DiskError::io(&self.shared.path, at, e))?;
            done += n;
        }
        Ok(())
    }

    fn outside(&self, offset: u64, len: usize) -> DiskError {
        DiskError::io(
            &self.shared.path,
            offset,
            std::io::Error::other(format!(
                "{offset}+{len} is not in this cycle's dirty extents"
            )),
        )
    }

    /// The bytes the file holds.
    pub fn len(&self) -> u64 {
        self.shared.index.last().map_or(0, |x| x.2 + x.1 - x.0)
    }

    /// The bytes the drain wrote to the file so far, the rest of [`Spool::len`] having been
    /// kept in the process's buffers (`super::spool_mem`).
    pub fn file_bytes(&self) -> u64 {
        self.shared.in_file.load(Ordering::Relaxed)
    }

    /// True when the spool holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Spool {
    /// Stops the drain at its next read (when the cycle stops shipping first); the file
    /// goes once the drain thread let go of it too.
    fn drop(&mut self) {
        // The drain thread's own copy drops last without stopping anything: it is done.
        if Arc::strong_count(&self.shared) > 1 {
            self.shared.cancel.store(true, Ordering::Relaxed);
        }
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
            self.wait_for(at + r.len() as u64)?;
            let file = &self.shared.file;
            self.shared.slots.read(
                at,
                &mut buf[r],
                |pos, b| file.read_exact_at(b, pos),
                |pos, len| self.shared.release(pos, len),
            )
        })
    }
}
