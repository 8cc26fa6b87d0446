//! A fleecing view read over NBD as a [`VirtualDisk`], so the initial copy, a cycle and a
//! resync of a qemu disk run through the same pipeline as a file's.
//!
//! The pipeline reads with several streams at once; an NBD client serves one request at a
//! time, so the view holds a small pool of connections to the same export. The pipeline's
//! read-ahead stage keeps its reads in flight on one more connection
//! ([`VirtualDisk::read_queue`], [`vdrep_qemu::nbd::ReadQueue`]): a cycle's scattered
//! 64 KiB dirty blocks no longer wait qemu's round trip one by one. Every byte read is
//! counted ([`NbdView::read_bytes`]): a cycle must read only its dirty extents.

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use vdrep_qemu::fleece::View;
use vdrep_qemu::nbd::{self, wire, NbdClient, NbdError};

use super::digest::PieceTee;
use crate::disk::{DiskError, DiskFormat, DiskInfo, Extent, ExtentKind, ReadQueue, VirtualDisk};
use crate::memory::PooledBuf;

/// How long one NBD request may take before the view counts as broken.
pub const NBD_TIMEOUT: Duration = Duration::from_secs(60);

/// Reads the read-ahead stage keeps in flight on a view: qemu's NBD server handles up to 16
/// requests of a client at once (`NBD_MAX_REQUESTS`); more would only wait in its socket.
pub const VIEW_READ_AHEAD: usize = 16;

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
        })
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
        let kept = self.ahead.lock().ok().and_then(|mut a| a.take());
        let client = match kept {
            Some(c) => c,
            None => self.view.connect(NBD_TIMEOUT).ok()?,
        };
        Some(Box::new(ViewQueue {
            view: self,
            q: Some(nbd::ReadQueue::new(client, VIEW_READ_AHEAD)),
        }))
    }
}

/// Reads in flight on a view ([`NbdView::read_queue`]).
struct ViewQueue<'a> {
    view: &'a NbdView,
    /// `None` only while being dropped.
    q: Option<nbd::ReadQueue<UnixStream, PooledBuf>>,
}

impl Drop for ViewQueue<'_> {
    fn drop(&mut self) {
        // Reads still in flight are collected and dropped; a sound connection is kept.
        let client = self.q.take().and_then(|q| q.into_client());
        if let (Some(c), Ok(mut a)) = (client, self.view.ahead.lock()) {
            *a = Some(c);
        }
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
        q.start(offset, PooledBuf::for_overwrite(len)).ok()
    }

    fn finish(&mut self, ticket: u64) -> Option<Bytes> {
        let buf = self.q.as_mut()?.finish(ticket).ok()?;
        self.view
            .read
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        Some(buf.freeze())
    }
}

/// The same view read for a cycle's digest: its reads are not the cycle's
/// ([`NbdView::read_bytes`] counts what shipping read, against the dirty bytes).
pub struct Uncounted<'a>(pub &'a NbdView);

impl VirtualDisk for Uncounted<'_> {
    fn info(&self) -> &DiskInfo {
        self.0.info()
    }

    fn extents_in(&self, start: u64, end: u64) -> Result<Vec<Extent>, DiskError> {
        self.0.extents_in(start, end)
    }

    fn read_into(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        self.0.read_uncounted(offset, buf)
    }
}

/// A cycle's view whose reads also feed the cycle's digest ([`PieceTee`]): the pipeline
/// reads each dirty piece once, for shipping and hashing both.
pub struct HashingView {
    /// The view.
    pub view: std::sync::Arc<NbdView>,
    /// Where the pieces' chaining values go.
    pub tee: std::sync::Arc<PieceTee>,
}

impl VirtualDisk for HashingView {
    fn info(&self) -> &DiskInfo {
        self.view.info()
    }

    fn extents_in(&self, start: u64, end: u64) -> Result<Vec<Extent>, DiskError> {
        self.view.extents_in(start, end)
    }

    fn read_into(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        self.view.read_into(offset, buf)?;
        self.tee.record(offset, buf);
        Ok(())
    }

    fn read_queue(&self) -> Option<Box<dyn ReadQueue + '_>> {
        self.view.read_queue()
    }

    fn read_ahead_taken(&self, offset: u64, data: &[u8]) {
        self.tee.record(offset, data);
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
        self.client()
            .read(offset, buf)
            .map_err(|e| nbd_err(&self.info.path, offset, e))
    }
}

/// A qemu disk between switches: its size and name are known (status, jobs, health show
/// them), its bytes are read only through a switch's view ([`NbdView`]).
pub struct QemuDisk {
    info: DiskInfo,
}

impl QemuDisk {
    /// Disk `node` of `size` bytes, image `file`.
    pub fn new(node: &str, file: &str, size: u64) -> QemuDisk {
        QemuDisk {
            info: DiskInfo {
                path: PathBuf::from(format!("qemu:{node} ({file})")),
                format: DiskFormat::Raw,
                virtual_size: size,
                logical_sector_size: 512,
                physical_sector_size: 512,
                block_size: None,
                parent: None,
                identity: None,
                disk_id: None,
            },
        }
    }

    fn no_view(&self) -> DiskError {
        DiskError::Unsupported {
            path: self.info.path.clone(),
            what: "a running qemu disk is read through a fleecing view of a switch".into(),
        }
    }
}

impl VirtualDisk for QemuDisk {
    fn info(&self) -> &DiskInfo {
        &self.info
    }

    fn extents_in(&self, _start: u64, _end: u64) -> Result<Vec<Extent>, DiskError> {
        Err(self.no_view())
    }

    fn read_into(&self, _offset: u64, _buf: &mut [u8]) -> Result<(), DiskError> {
        Err(self.no_view())
    }
}
