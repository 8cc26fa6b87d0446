//! A fleecing view read over NBD as a [`VirtualDisk`], so the initial copy, a cycle and a
//! resync of a qemu disk run through the same pipeline as a file's.
//!
//! The pipeline reads with several streams at once; an NBD client serves one request at a
//! time, so the view holds a small pool of connections to the same export. The pipeline's
//! read-ahead stage keeps its reads in flight on one more connection
//! ([`VirtualDisk::read_queue`], [`vdrep_qemu::nbd::ReadQueue`]): a cycle's scattered
//! 64 KiB dirty blocks no longer wait qemu's round trip one by one. Every byte read is
//! counted ([`NbdView::read_bytes`]): a cycle must read only its dirty extents.
//!
//! While a view lives, the guest's first write to each 64 KiB block waits for qemu to copy
//! the old block into the scratch image (125–170 µs against ~50 µs). A cycle gives back
//! what it will not read (`NBD_CMD_TRIM`), which ends that wait for those blocks: the blocks
//! clean in the cycle's bitmap right after the switch ([`NbdView::discard`]), and each whole
//! block the read-ahead has read, once the bytes are in hand ([`NbdView::discard_as_read`]).
//! A discarded range can no longer be read: every read and block-status query is checked
//! against the discarded set first and refused without asking qemu (counted,
//! [`NbdView::refused_reads`]: a cycle that counts any has a bug), as a transient error, so
//! that whatever would re-read it (a resend of extents the receiver refused) takes a new
//! view in the next round.

use std::ops::Range;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use tracing::warn;
use vdrep_proto::RangeSet;
use vdrep_qemu::fleece::View;
use vdrep_qemu::nbd::{self, wire, NbdClient, NbdError};

use crate::disk::{DiskError, DiskFormat, DiskInfo, Extent, ExtentKind, ReadQueue, VirtualDisk};
use crate::memory::PooledBuf;

/// How long one NBD request may take before the view counts as broken.
pub const NBD_TIMEOUT: Duration = Duration::from_secs(60);

/// Reads the read-ahead stage keeps in flight on a view: qemu's NBD server handles up to 16
/// requests of a client at once (`NBD_MAX_REQUESTS`); more would only wait in its socket.
pub const VIEW_READ_AHEAD: usize = 16;

/// The drain's reads in flight and their size: [`VIEW_READ_AHEAD`] of 1 MiB, or
/// `VDREP_QEMU_DRAIN_DEPTH` (1–16) and `VDREP_QEMU_DRAIN_READ_KIB` (64–1024, whole 64 KiB
/// digest pieces). Experiment knobs (session 16, P): 256 KiB reads made qemu-storage-daemon
/// stop faulting in a new buffer per read, but did not shorten the views nor lower the
/// guest's slow writes inside them (`bench/results/ANALYSIS.md`).
fn drain_shape() -> (usize, u64) {
    let env = |k: &str| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    let depth = env("VDREP_QEMU_DRAIN_DEPTH").map_or(VIEW_READ_AHEAD, |d| d.clamp(1, 16) as usize);
    let read =
        env("VDREP_QEMU_DRAIN_READ_KIB").map_or(1 << 20, |k| (k.clamp(64, 1024) / 64 * 64) << 10);
    (depth, read)
}

/// Where [`NbdView::drain`] hands each read's bytes, with their disk offset. The sink may
/// take the buffer (`std::mem::take` or a swap with one of its own): the drain reads its
/// next request into whatever it leaves there.
pub type Sink<'a> = dyn FnMut(u64, &mut Vec<u8>) -> Result<(), DiskError> + 'a;

/// The unit of qemu's copy-before-write (`block-copy`'s cluster: 64 KiB unless the scratch
/// image's clusters are larger; qemu rounds a discard inward to it): only whole blocks of
/// it are discarded.
pub const DISCARD_BLOCK: u64 = 64 << 10;

/// A view of one disk at one switch.
pub struct NbdView {
    info: DiskInfo,
    view: View,
    pool: Vec<Mutex<NbdClient<UnixStream>>>,
    /// The read-ahead stage's connection between two passes (opened by the first).
    ahead: Mutex<Option<NbdClient<UnixStream>>>,
    next: AtomicUsize,
    read: AtomicU64,
    dirty_context: Option<String>,
    /// The ranges given back to qemu (sent as trims): never read again.
    discarded: Mutex<RangeSet>,
    /// Discard each whole block the read-ahead reads ([`NbdView::discard_as_read`]).
    discard_read: AtomicBool,
    /// Bytes discarded.
    discarded_bytes: AtomicU64,
    /// Reads and block-status queries refused because they touched a discarded range.
    refused: AtomicU64,
    /// Trims qemu failed (their ranges stay refused all the same).
    trim_failures: AtomicU64,
    /// A copy's file, read directly (`None`: over NBD): it is local, and NBD costs
    /// qemu-storage-daemon a read, a socket copy and CPU per byte on the guest's cores.
    local: Option<std::fs::File>,
}

/// A view read that failed because qemu went away (its NBD connection lost, the export
/// gone) is transient (`NotConnected`: a retry reads a new view); anything else is not.
fn nbd_err(path: &std::path::Path, offset: u64, e: NbdError) -> DiskError {
    let kind = if e.is_transient() || e.is_export_missing() {
        std::io::ErrorKind::NotConnected
    } else {
        std::io::ErrorKind::Other
    };
    DiskError::io(path, offset, std::io::Error::new(kind, e.to_string()))
}

impl NbdView {
    /// Opens `connections` connections to the view's export. `name` is the disk's store
    /// name (shown in errors as the path `qemu:NODE`).
    pub fn open(view: &View, connections: usize) -> Result<NbdView, NbdError> {
        let mut pool = Vec::new();
        for _ in 0..connections.max(1) {
            pool.push(Mutex::new(view.connect(NBD_TIMEOUT)?));
        }
        Ok(NbdView {
            info: DiskInfo {
                path: PathBuf::from(format!("qemu:{}@{}", view.node, view.export())),
                // The export is the guest's bytes, whatever the image's format.
                format: DiskFormat::Raw,
                virtual_size: view.size,
                logical_sector_size: 512,
                physical_sector_size: 512,
                block_size: None,
                parent: None,
                identity: None,
                disk_id: None,
            },
            view: view.clone(),
            pool,
            ahead: Mutex::new(None),
            next: AtomicUsize::new(0),
            read: AtomicU64::new(0),
            dirty_context: view.dirty_context(),
            discarded: Mutex::new(RangeSet::new()),
            discard_read: AtomicBool::new(false),
            discarded_bytes: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            trim_failures: AtomicU64::new(0),
            local: view.copied.then(|| open_copy(view)).flatten(),
        })
    }

    /// True when the view's export takes trims (a view of this vdrep: writable for them).
    pub fn can_trim(&self) -> bool {
        self.client().can_trim()
    }

    /// True when the view is qemu's copy of the cycle's dirty blocks
    /// (`vdrep_qemu::fleece::View::copied`): nothing outside them may be read.
    pub fn is_copy(&self) -> bool {
        self.view.copied
    }

    /// True when a copy is read from its file, not over NBD.
    pub fn reads_file(&self) -> bool {
        self.local.is_some()
    }

    /// Fences `ranges` (sorted, disjoint; each rounded inward to whole [`DISCARD_BLOCK`]s)
    /// off without telling qemu: a read or block-status query touching them is refused as a
    /// discarded one is. For a copy's clean blocks, which hold zeros, not the disk.
    pub fn fence(&self, ranges: &[Range<u64>]) {
        if let Ok(mut d) = self.discarded.lock() {
            for b in ranges.iter().filter_map(whole_blocks) {
                d.insert(b.start, b.end);
            }
        }
    }

    /// Bytes given back to qemu so far.
    pub fn discarded_bytes(&self) -> u64 {
        self.discarded_bytes.load(Ordering::Relaxed)
    }

    /// Reads and block-status queries refused because they touched a discarded range.
    pub fn refused_reads(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// From now on, each whole [`DISCARD_BLOCK`] the read-ahead stage reads is given back to
    /// qemu once its bytes are in hand. Only for a reader that will not read those blocks
    /// again: a cycle whose digest takes their hashes from the shipping's reads
    /// (`super::digest::PieceTee`), never a copy or resync, nor a digest computed whole.
    pub fn discard_as_read(&self, on: bool) {
        self.discard_read.store(on, Ordering::Relaxed);
    }

    /// Gives `ranges` (sorted, disjoint) back to qemu, each rounded inward to whole
    /// [`DISCARD_BLOCK`]s; returns the bytes asked. The trims are kept in flight on one
    /// connection. The ranges count as discarded from the moment they are sent, whatever
    /// qemu answers.
    pub fn discard(&self, ranges: &[Range<u64>]) -> Result<u64, NbdError> {
        let blocks: Vec<Range<u64>> = ranges.iter().filter_map(whole_blocks).collect();
        if blocks.is_empty() {
            return Ok(0);
        }
        let client = self.ahead_client()?;
        let mut q: nbd::ReadQueue<UnixStream, Vec<u8>> =
            nbd::ReadQueue::new(client, VIEW_READ_AHEAD);
        let mut asked = 0;
        let mut result = Ok(());
        for b in &blocks {
            self.mark_discarded(b.start, b.end);
            asked += b.end - b.start;
            result = q.start_trim(b.start, b.end - b.start);
            if result.is_err() {
                break;
            }
        }
        if result.is_ok() {
            result = q.settle_trims();
        }
        self.note_trim_failures(q.take_trim_failures());
        self.keep_ahead(q.into_client());
        result.map(|()| asked)
    }

    /// Reads `extents` (sorted, disjoint) in order, up to [`VIEW_READ_AHEAD`] reads of at
    /// most 1 MiB in flight, hands each read's bytes to `sink` in disk order, and gives each
    /// whole block read back to qemu (`super::spool`: the view goes right after). Memory:
    /// the reads in flight.
    pub fn drain(&self, extents: &[Range<u64>], sink: &mut Sink<'_>) -> Result<(), DiskError> {
        let path = &self.info.path;
        let client = self.ahead_client().map_err(|e| nbd_err(path, 0, e))?;
        let (depth, read) = drain_shape();
        let mut q: nbd::ReadQueue<UnixStream, Vec<u8>> = nbd::ReadQueue::new(client, depth);
        let step = (q.max_read() as u64).min(read);
        let trim = q.can_trim();
        let mut pieces = extents.iter().flat_map(|e| {
            (e.start..e.end)
                .step_by(step as usize)
                .map(move |s| (s, (e.end - s).min(step)))
        });
        let mut flight: std::collections::VecDeque<(u64, u64)> = Default::default();
        let mut free: Vec<Vec<u8>> = Vec::new();
        let mut untrimmed = Untrimmed::default();
        let r = (|| -> Result<(), DiskError> {
            loop {
                while flight.len() < q.depth() {
                    let Some((off, len)) = pieces.next() else {
                        break;
                    };
                    self.check_kept("read", off, off + len)?;
                    let mut buf = free.pop().unwrap_or_default();
                    buf.resize(len as usize, 0);
                    let t = q.start(off, buf).map_err(|e| nbd_err(path, off, e))?;
                    flight.push_back((t, off));
                }
                let Some((t, off)) = flight.pop_front() else {
                    break;
                };
                let mut buf = q.finish(t).map_err(|e| nbd_err(path, off, e))?;
                let len = buf.len() as u64;
                self.read.fetch_add(len, Ordering::Relaxed);
                sink(off, &mut buf)?;
                free.push(buf);
                if trim {
                    if let Some(r) = untrimmed.read(off..off + len) {
                        self.trim_read(&mut q, r);
                    }
                }
            }
            if let Some(r) = untrimmed.rest() {
                self.trim_read(&mut q, r);
            }
            q.settle_trims().map_err(|e| nbd_err(path, 0, e))
        })();
        self.note_trim_failures(q.take_trim_failures());
        self.keep_ahead(q.into_client());
        r
    }

    /// Gives back to qemu the whole blocks of `r`, which the drain has read up to its end
    /// (the rest of it is clean: discarded at the cycle's opening, never read).
    fn trim_read(&self, q: &mut nbd::ReadQueue<UnixStream, Vec<u8>>, r: Range<u64>) {
        if let Some(b) = whole_blocks(&r) {
            self.mark_discarded(b.start, b.end);
            if q.start_trim(b.start, b.end - b.start).is_err() {
                self.trim_failures.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The connection kept for the read-ahead stage, trims and drains (one at a time), or a
    /// new one when none is kept.
    fn ahead_client(&self) -> Result<NbdClient<UnixStream>, NbdError> {
        match self.ahead.lock().ok().and_then(|mut a| a.take()) {
            Some(c) => Ok(c),
            None => self.view.connect(NBD_TIMEOUT),
        }
    }

    /// Keeps a connection a queue gave back (it does so only when the connection is sound,
    /// with nothing left in flight) for the next user of [`NbdView::ahead_client`].
    fn keep_ahead(&self, client: Option<NbdClient<UnixStream>>) {
        if let (Some(c), Ok(mut a)) = (client, self.ahead.lock()) {
            *a = Some(c);
        }
    }

    /// Counts `[start, end)` as discarded; the byte count grows by what was not already
    /// (a drain's trim spans clean blocks the cycle's opening discarded).
    fn mark_discarded(&self, start: u64, end: u64) {
        let mut new = end - start;
        if let Ok(mut d) = self.discarded.lock() {
            new -= d.clipped(start, end).covered_len();
            d.insert(start, end);
        }
        self.discarded_bytes.fetch_add(new, Ordering::Relaxed);
    }

    fn note_trim_failures(&self, failures: Vec<NbdError>) {
        if let Some(first) = failures.first() {
            let before = self
                .trim_failures
                .fetch_add(failures.len() as u64, Ordering::Relaxed);
            if before == 0 {
                warn!(view = %self.info.path.display(), error = %first,
                      "qemu refused to discard a range of the view: the guest's first writes there keep waiting for their copy");
            }
        }
    }

    /// Refuses (counting it) an access to `[start, end)` that touches a discarded range.
    fn check_kept(&self, what: &str, start: u64, end: u64) -> Result<(), DiskError> {
        let touched = self
            .discarded
            .lock()
            .map(|d| !d.clipped(start, end).is_empty())
            .unwrap_or(true);
        if !touched {
            return Ok(());
        }
        self.refused.fetch_add(1, Ordering::Relaxed);
        Err(DiskError::io(
            &self.info.path,
            start,
            std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                format!(
                    "{what} {start}..{end} touches a range this cycle gave back to qemu (discarded after it was read, or clean); a new view reads it"
                ),
            ),
        ))
    }

    /// Bytes read from the view so far.
    pub fn read_bytes(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }

    /// The extents the view's previous bitmap marks dirty (the writes between the previous
    /// switch and this one), as `offset..end`; empty without a previous bitmap.
    pub fn dirty_extents(&self) -> Result<Vec<std::ops::Range<u64>>, DiskError> {
        let Some(ctx) = &self.dirty_context else {
            return Ok(Vec::new());
        };
        let bitmap = ctx.trim_start_matches(wire::DIRTY_BITMAP_PREFIX);
        // qemu answers every negotiated context, `base:allocation` included, which fails
        // over a discarded range: the extents are listed before anything is discarded.
        self.check_kept("block status", 0, self.info.virtual_size)?;
        let mut c = self.client();
        let ext = c
            .dirty_extents(bitmap)
            .map_err(|e| nbd_err(&self.info.path, 0, e))?;
        Ok(ext.iter().map(|e| e.offset..e.end()).collect())
    }

    fn client(&self) -> std::sync::MutexGuard<'_, NbdClient<UnixStream>> {
        // A free connection if there is one, else wait for the next in turn.
        for m in &self.pool {
            if let Ok(g) = m.try_lock() {
                return g;
            }
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.pool.len();
        match self.pool[i].lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Closes the connections (the export can then go without `mode: hard` cutting reads).
    pub fn close(self) {
        if let Ok(Some(c)) = self.ahead.into_inner() {
            c.disconnect();
        }
        for m in self.pool {
            if let Ok(c) = m.into_inner() {
                c.disconnect();
            }
        }
    }
}

impl VirtualDisk for NbdView {
    fn info(&self) -> &DiskInfo {
        &self.info
    }

    /// `base:allocation`: holes that read as zeros are [`ExtentKind::Zero`] (nothing to
    /// read), everything else data.
    fn extents_in(&self, start: u64, end: u64) -> Result<Vec<Extent>, DiskError> {
        let end = end.min(self.info.virtual_size);
        if start >= end {
            return Ok(Vec::new());
        }
        self.check_kept("block status", start, end)?;
        let mut c = self.client();
        let ext = c
            .block_status(wire::BASE_ALLOCATION, start, end - start)
            .map_err(|e| nbd_err(&self.info.path, start, e))?;
        drop(c);
        let mut out: Vec<Extent> = Vec::new();
        for e in ext {
            let kind = if e.flags & wire::STATE_ZERO != 0 {
                ExtentKind::Zero
            } else {
                ExtentKind::Data
            };
            match out.last_mut() {
                Some(l) if l.kind == kind && l.offset + l.length == e.offset => {
                    l.length += e.length
                }
                _ => out.push(Extent {
                    offset: e.offset,
                    length: e.length,
                    kind,
                }),
            }
        }
        Ok(out)
    }

    fn read_into(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        self.read_uncounted(offset, buf)?;
        self.read.fetch_add(buf.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// The read-ahead stage's queue on its own connection (kept for the next pass), its
    /// reads counted. `None` when no connection can be had: the CPU threads then read as
    /// before, and report what failed.
    fn read_queue(&self) -> Option<Box<dyn ReadQueue + '_>> {
        if self.local.is_some() {
            return None; // Page-cache reads: nothing to keep in flight.
        }
        let client = self.ahead_client().ok()?;
        Some(Box::new(ViewQueue {
            view: self,
            q: Some(nbd::ReadQueue::new(client, VIEW_READ_AHEAD)),
            started: Vec::new(),
        }))
    }
}

/// Opens a copy's file for reading, `None` (read over NBD) when vdrep may not: qemu made it,
/// under its own user, and its size must be the disk's.
fn open_copy(view: &View) -> Option<std::fs::File> {
    let f = std::fs::File::open(&view.scratch_path);
    match f.and_then(|f| Ok((f.metadata()?.len(), f))) {
        Ok((len, f)) if len == view.size => Some(f),
        Ok((len, _)) => {
            warn!(file = %view.scratch_path.display(), len, size = view.size,
                  "qemu's copy is not the disk's size; reading it over NBD");
            None
        }
        Err(e) => {
            warn!(file = %view.scratch_path.display(), error = %e,
                  "cannot open qemu's copy; reading it over NBD");
            None
        }
    }
}

/// The whole [`DISCARD_BLOCK`]s inside `r`.
fn whole_blocks(r: &Range<u64>) -> Option<Range<u64>> {
    let start = r.start.div_ceil(DISCARD_BLOCK) * DISCARD_BLOCK;
    let end = r.end - r.end % DISCARD_BLOCK;
    (start < end).then_some(start..end)
}

/// Reads a drain gives back together: at most this many ...
const TRIM_READS: usize = 32;
/// ... or this many bytes read.
const TRIM_BYTES: u64 = 8 << 20;

/// The drain's reads not yet given back to qemu, as one range: from the first one's start
/// to the last one's end. The drain reads its extents in order, so everything in that range
/// is either read or clean (discarded when the cycle opened, and never read): one trim
/// covers a run of reads instead of one trim each (16,384 scattered 64 KiB blocks were
/// 16,384 trims, about as many requests for qemu as the reads themselves).
#[derive(Default)]
struct Untrimmed {
    range: Option<Range<u64>>,
    reads: usize,
    bytes: u64,
}

impl Untrimmed {
    /// Adds a read; returns the range to give back when it is due.
    fn read(&mut self, r: Range<u64>) -> Option<Range<u64>> {
        let start = self.range.as_ref().map_or(r.start, |u| u.start);
        self.range = Some(start..r.end);
        self.reads += 1;
        self.bytes += r.end - r.start;
        (self.reads >= TRIM_READS || self.bytes >= TRIM_BYTES)
            .then(|| self.rest())
            .flatten()
    }

    /// The range not given back yet, emptied.
    fn rest(&mut self) -> Option<Range<u64>> {
        self.reads = 0;
        self.bytes = 0;
        self.range.take()
    }
}

/// The whole [`DISCARD_BLOCK`]s of a disk of `size` bytes that no extent of `dirty`
/// (sorted, disjoint) touches: what a cycle never reads.
pub fn clean_blocks(dirty: &[Range<u64>], size: u64) -> Vec<Range<u64>> {
    let mut out = Vec::new();
    let mut at = 0;
    for d in dirty.iter().chain(std::iter::once(&(size..size))) {
        if let Some(b) = whole_blocks(&(at..d.start.max(at))) {
            out.push(b);
        }
        at = at.max(d.end);
    }
    out
}

/// Reads in flight on a view ([`NbdView::read_queue`]).
struct ViewQueue<'a> {
    view: &'a NbdView,
    /// `None` only while being dropped.
    q: Option<nbd::ReadQueue<UnixStream, PooledBuf>>,
    /// The reads in flight: ticket, offset, length (to discard what they read).
    started: Vec<(u64, u64, usize)>,
}

impl Drop for ViewQueue<'_> {
    fn drop(&mut self) {
        // Reads and trims still in flight are collected; a sound connection is kept.
        let client = self.q.take().and_then(|mut q| {
            let _ = q.settle_trims();
            self.view.note_trim_failures(q.take_trim_failures());
            q.into_client()
        });
        self.view.keep_ahead(client);
    }
}

impl ReadQueue for ViewQueue<'_> {
    fn depth(&self) -> usize {
        self.q.as_ref().map_or(1, |q| q.depth())
    }

    fn start(&mut self, offset: u64, len: usize) -> Option<u64> {
        let q = self.q.as_mut()?;
        if len > q.max_read() {
            return None;
        }
        // A discarded range is read by nobody: the CPU thread's read reports it.
        self.view
            .check_kept("read", offset, offset + len as u64)
            .ok()?;
        let ticket = q.start(offset, PooledBuf::for_overwrite(len)).ok()?;
        self.started.push((ticket, offset, len));
        Some(ticket)
    }

    fn finish(&mut self, ticket: u64) -> Option<Bytes> {
        let at = self.started.iter().position(|s| s.0 == ticket);
        let (_, offset, len) = at.map(|i| self.started.swap_remove(i))?;
        let q = self.q.as_mut()?;
        let buf = q.finish(ticket).ok()?;
        self.view
            .read
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        if self.view.discard_read.load(Ordering::Relaxed) && q.can_trim() {
            // The bytes are in hand: the blocks they cover whole are given back now, the
            // reply taken whenever it comes.
            if let Some(b) = whole_blocks(&(offset..offset + len as u64)) {
                self.view.mark_discarded(b.start, b.end);
                if q.start_trim(b.start, b.end - b.start).is_err() {
                    // The range counts as discarded all the same; the connection's state
                    // shows at the next read.
                    self.view.trim_failures.fetch_add(1, Ordering::Relaxed);
                }
                self.view.note_trim_failures(q.take_trim_failures());
            }
        }
        Some(buf.freeze())
    }
}

impl NbdView {
    fn read_uncounted(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        let len = buf.len() as u64;
        if offset
            .checked_add(len)
            .is_none_or(|e| e > self.info.virtual_size)
        {
            return Err(DiskError::OutOfRange {
                path: self.info.path.clone(),
                offset,
                len,
                size: self.info.virtual_size,
            });
        }
        self.check_kept("read", offset, offset + len)?;
        if let Some(f) = &self.local {
            use std::os::unix::fs::FileExt;
            // Gone or cut short under us: the view is broken; a retry takes a new one.
            return f.read_exact_at(buf, offset).map_err(|e| {
                let kind = std::io::ErrorKind::NotConnected;
                DiskError::io(
                    &self.view.scratch_path,
                    offset,
                    std::io::Error::new(kind, e),
                )
            });
        }
        self.client()
            .read(offset, buf)
            .map_err(|e| nbd_err(&self.info.path, offset, e))
    }
}

#[path = "view_disks.rs"]
mod disks;
pub use disks::{HashingView, QemuDisk, Uncounted};

#[cfg(test)]
#[path = "view_tests.rs"]
mod tests;
