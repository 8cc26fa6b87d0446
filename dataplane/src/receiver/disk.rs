//! One replica open for writing by one connection, with its checkpointing (when: the
//! session's checkpoint timer, `vdrep_proto::session::receiver`, driven by `control.rs`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use vdrep_proto::ranges::RangeSet;

use crate::parts::Parts;
use crate::resync::index::{full_node_hashes_parts, Index};
use crate::resync::leaves::Pieces;
use crate::sink::{retention, RecoveryPoint, ReplicaDisk, SinkError};

/// A replica being written.
pub struct DiskSession {
    /// The replica.
    pub replica: Arc<dyn ReplicaDisk>,
    /// Copy generation the sender must name.
    pub generation: u64,
    /// Virtual size of the source.
    pub virtual_size: u64,
    /// Ranges written (not necessarily durable) in this generation.
    written: Mutex<RangeSet>,
    dirty: AtomicBool,
    /// Serialises checkpoints and commits.
    sync: tokio::sync::Mutex<()>,
    /// Whether a resync comparison started in this session (its first hash request
    /// rehashes the index's dirty nodes, as does every level-0 request).
    compared: Arc<AtomicBool>,
    /// The durable resync index ([`crate::resync::index`]). Its lock also serialises the
    /// disk's writes, so an index persisted as clean reflects exactly the writes made.
    index: Arc<Mutex<Index>>,
    /// Bytes of the working image read to hash it during this session.
    hash_read: AtomicU64,
}

/// The working image of a replica as a resync [`crate::resync::Source`].
struct ReplicaSource(Arc<dyn ReplicaDisk>, u64);

impl crate::resync::Source for ReplicaSource {
    fn size(&self) -> u64 {
        self.1
    }
    fn read(&self, off: u64, len: usize) -> Result<bytes::Bytes, String> {
        self.0.read(off, len).map_err(|e| e.to_string())
    }
}

impl DiskSession {
    /// Wraps an opened replica; `progress` is what is already durable.
    pub fn new(
        replica: Arc<dyn ReplicaDisk>,
        generation: u64,
        virtual_size: u64,
        progress: RangeSet,
        index: Index,
    ) -> Self {
        DiskSession {
            replica,
            generation,
            virtual_size,
            written: Mutex::new(progress),
            dirty: AtomicBool::new(false),
            sync: tokio::sync::Mutex::new(()),
            compared: Default::default(),
            index: Arc::new(Mutex::new(index)),
            hash_read: AtomicU64::new(0),
        }
    }

    /// Applies a write (`data`) or clear (`None`) of `[off, off+len)`: as
    /// [`DiskSession::apply_write_parts`], the bytes in one slice and their page hashes not
    /// known.
    pub fn apply_write(&self, off: u64, len: u64, data: Option<&[u8]>) -> Result<(), SinkError> {
        let one = data.map(|d| [d]);
        self.apply_write_parts(off, len, one.as_ref().map(|o| Parts::new(o)), None)
    }

    /// Applies a write (`data`, its bytes in one slice or several: a received frame's chunks
    /// are written with one vectored write, never joined) or a clear (`None`) of
    /// `[off, off+len)` to the working image and keeps the resync index in step: the index
    /// stops claiming to be clean (durably) before the bytes reach the replica, and learns
    /// the new hashes of the whole nodes written — from `pieces`, the page hashes the
    /// receiver computed to verify the bytes (protocol version 6), instead of hashing them a
    /// second time. Writes of one disk are serialised here.
    pub fn apply_write_parts(
        &self,
        off: u64,
        len: u64,
        data: Option<Parts<'_>>,
        pieces: Option<&Pieces>,
    ) -> Result<(), SinkError> {
        let full = full_node_hashes_parts(self.virtual_size, off, len, data, pieces);
        let mut ix = self.index.lock().map_err(|_| self.index_poisoned())?;
        ix.before_write()
            .map_err(|e| SinkError::io(ix.describe(), "mark the resync index unclean", 0, e))?;
        let r = match data {
            Some(d) => self.replica.write_parts(off, d),
            None => self.replica.clear(off, len),
        };
        let recorded = ix.after_write_data(off, len, data, &full, r.is_ok());
        r?;
        recorded.map_err(|e| {
            SinkError::io(
                ix.describe(),
                "update the resync index",
                off,
                std::io::Error::other(e),
            )
        })?;
        self.mark_written(off, off + len);
        Ok(())
    }

    fn index_poisoned(&self) -> SinkError {
        SinkError::io(
            self.replica.path_hint(),
            "lock the resync index",
            0,
            std::io::Error::other("lock poisoned"),
        )
    }

    /// The final checkpoint when the connection ends: the written ranges are made durable
    /// and, with writes held off, the resync index is persisted as clean.
    pub async fn close(self: &Arc<Self>) -> Result<(), SinkError> {
        let _g = self.sync.lock().await;
        let s = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut ix = s.index.lock().map_err(|_| s.index_poisoned())?;
            if s.dirty.swap(false, Ordering::AcqRel) {
                let snap = s.written.lock().map(|w| w.clone()).unwrap_or_default();
                s.replica.checkpoint(&snap)?;
            }
            ix.persist_clean()
                .map_err(|e| SinkError::io(ix.describe(), "persist the resync index", 0, e))
        })
        .await
        .map_err(|e| task_failed(self, "close", e))?
    }

    /// Records a completed write.
    pub fn mark_written(&self, start: u64, end: u64) {
        if let Ok(mut w) = self.written.lock() {
            w.insert(start, end);
        }
        self.dirty.store(true, Ordering::Release);
    }

    /// Records written ranges as progress (no-op when nothing changed). `force` (commits,
    /// the end of a connection) makes every written range durable first; the periodic
    /// checkpoint records only what is durable already and does not wait for the rest
    /// ([`ReplicaDisk::checkpoint_acknowledged`]: the Azure sink's Put Pages keep flowing),
    /// leaving the session dirty until a later one records it.
    pub async fn checkpoint(&self, force: bool) -> Result<(), SinkError> {
        let _g = self.sync.lock().await;
        if !force && !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        self.dirty.store(false, Ordering::Release);
        // Snapshot *before* syncing: everything in the snapshot was written before the sync.
        let snap = self.written.lock().map(|w| w.clone()).unwrap_or_default();
        let r = self.replica.clone();
        let all = tokio::task::spawn_blocking(move || {
            if force {
                r.checkpoint(&snap).map(|()| true)
            } else {
                r.checkpoint_acknowledged(&snap)
            }
        })
        .await
        .map_err(|e| task_failed(self, "checkpoint", e))?;
        if !matches!(all, Ok(true)) {
            self.dirty.store(true, Ordering::Release);
        }
        all.map(|_| ())
    }

    /// Checkpoints, then commits the initial copy. The sender asks for the commit only after
    /// every extent it planned was acknowledged; ranges it never sent are those a fresh
    /// working image already holds (zeros), so the whole disk is recorded as done.
    pub async fn commit_initial(&self) -> Result<(), SinkError> {
        self.mark_written(0, self.virtual_size.div_ceil(512) * 512);
        self.checkpoint(true).await?;
        let _g = self.sync.lock().await;
        let r = self.replica.clone();
        // Digests are wired later: an all-zero digest means "none sent".
        let point = RecoveryPoint {
            cycle: 0,
            created_unix: unix_now(),
            bytes: self.virtual_size,
            digest: [0; 32],
        };
        let index = self.index.clone();
        tokio::task::spawn_blocking(move || {
            let mut ix = index.lock().map_err(|_| lock_err(&r))?;
            r.commit_initial(&point)?;
            ix.persist_clean()
                .map_err(|e| SinkError::io(ix.describe(), "persist the resync index", 0, e))
        })
        .await
        .map_err(|e| task_failed(self, "commit", e))?
    }
}

/// The receiver's wall clock in Unix seconds (with the test-only offset, `crate::clock`).
pub fn unix_now() -> u64 {
    use crate::clock::Clock;
    crate::clock::process().now_utc().as_second().max(0) as u64
}

/// A blocking task that panicked or was cancelled, as a sink error of its disk.
fn task_failed(s: &DiskSession, op: &'static str, e: tokio::task::JoinError) -> SinkError {
    SinkError::Io {
        path: s.replica.path_hint().into(),
        op,
        offset: 0,
        source: std::io::Error::other(format!("{op} task failed: {e}")),
    }
}

fn lock_err(r: &Arc<dyn ReplicaDisk>) -> SinkError {
    SinkError::io(
        r.path_hint(),
        "lock the resync index",
        0,
        std::io::Error::other("lock poisoned"),
    )
}

impl DiskSession {
    /// Opens delta cycle `cycle` at the store; the ranges already durable of it become the
    /// session's written set.
    pub async fn begin_cycle(&self, cycle: u64) -> Result<RangeSet, SinkError> {
        let _g = self.sync.lock().await;
        let r = self.replica.clone();
        let progress = tokio::task::spawn_blocking(move || r.begin_cycle(cycle))
            .await
            .map_err(|e| task_failed(self, "begin cycle", e))??;
        if let Ok(mut w) = self.written.lock() {
            *w = progress.clone();
        }
        self.dirty.store(false, Ordering::Release);
        Ok(progress)
    }

    /// Checkpoints the cycle's writes, commits it as `point`, then prunes the points older
    /// than `retention_secs` on the store's timeline (never the newest; `sink::retention`).
    /// `point`'s time is stamped here, never before the newest point's. Returns the pruned
    /// cycles.
    pub async fn commit_cycle(
        &self,
        mut point: RecoveryPoint,
        retention_secs: u64,
    ) -> Result<Vec<u64>, SinkError> {
        self.checkpoint(true).await?;
        let _g = self.sync.lock().await;
        let r = self.replica.clone();
        let index = self.index.clone();
        let pruned = tokio::task::spawn_blocking(move || {
            let before = r.points()?;
            point.created_unix = retention::stamp(point.created_unix, before.last());
            {
                let mut ix = index.lock().map_err(|_| lock_err(&r))?;
                r.commit_cycle(&point)?;
                ix.persist_clean()
                    .map_err(|e| SinkError::io(ix.describe(), "persist the resync index", 0, e))?;
            }
            let cutoff = retention::prune_cutoff(&r.points()?, retention_secs);
            if cutoff == 0 {
                return Ok(Vec::new());
            }
            r.prune_points(cutoff)
        })
        .await
        .map_err(|e| task_failed(self, "commit cycle", e))??;
        if let Ok(mut w) = self.written.lock() {
            *w = RangeSet::new();
        }
        Ok(pruned)
    }

    /// Exports the disk's recovery points (count, and the newest's age as RPO).
    pub async fn export_points(&self) {
        let r = self.replica.clone();
        if let Ok(Ok(points)) = tokio::task::spawn_blocking(move || r.points()).await {
            let k = self.replica.key();
            crate::metrics::events::recovery_points(&k.vm, &k.disk, points.len());
            if let Some(newest) = points.iter().map(|p| p.created_unix).max() {
                crate::metrics::events::recovery_point(&k.vm, &k.disk, newest);
            }
        }
    }

    /// Ranges written so far (durable or about to be).
    pub fn progress_snapshot(&self) -> RangeSet {
        self.written.lock().map(|w| w.clone()).unwrap_or_default()
    }
}

impl DiskSession {
    /// Answers a resync hash request. At level 0 (a comparison starts) the index's dirty
    /// nodes are rehashed from the working image — every node with `verify` — and the
    /// answers come from the index itself, paged from its file ([`crate::resync::index`]).
    pub async fn hashes(
        &self,
        level: u8,
        parents: Vec<u64>,
        verify: bool,
    ) -> Result<Vec<u64>, String> {
        let src = ReplicaSource(self.replica.clone(), self.virtual_size);
        let compared = self.compared.clone();
        let index = self.index.clone();
        let key = self.replica.key().to_string();
        let (out, read) = tokio::task::spawn_blocking(move || {
            // The index's lock also holds writes off while hashes are answered, so the
            // page hashes read below may be remembered (see `Index::remember_pages`).
            let mut ix = index
                .lock()
                .map_err(|_| "index lock poisoned".to_string())?;
            let mut read = 0;
            if level == 0 || !compared.load(Ordering::Acquire) {
                let dirty = ix.dirty_count()?;
                let reason = ix.stale_reason().map(str::to_string);
                read = ix.rehash(&src, verify, build_threads())?;
                ix.forget_pages();
                compared.store(true, Ordering::Release);
                tracing::info!(disk = %key, verify, dirty_nodes = dirty, read_bytes = read,
                               stale = reason.as_deref().unwrap_or("no"),
                               "resync index rehashed");
            }
            let size = src.1;
            let out = if level == crate::resync::PAGE_LEVEL {
                // The resync's pages written next set their nodes' hashes without a reread.
                let mut out = Vec::with_capacity(parents.len() * 64);
                for (&p, pages) in parents
                    .iter()
                    .zip(crate::resync::answer_pages(size, &src, &parents)?)
                {
                    out.extend(pages.iter().map(crate::resync::trunc));
                    ix.remember_pages(p, pages);
                }
                // Page hashes are computed by reading their 256 KiB parents.
                read += parents
                    .iter()
                    .map(|&p| {
                        let (a, b) = crate::resync::node_range(size, crate::resync::KEPT, p);
                        b - a
                    })
                    .sum::<u64>();
                out
            } else {
                crate::resync::answer(&mut *ix, &src, level, &parents)?
            };
            Ok::<_, String>((out, read))
        })
        .await
        .map_err(|e| format!("hash task failed: {e}"))??;
        self.hash_read.fetch_add(read, Ordering::Relaxed);
        Ok(out)
    }

    /// The full-strength root of the working image now: the nodes written since the
    /// comparison (dirty in the index) are read again first.
    pub async fn root(&self) -> Result<[u8; 32], String> {
        let src = ReplicaSource(self.replica.clone(), self.virtual_size);
        let index = self.index.clone();
        let (root, read) = tokio::task::spawn_blocking(move || {
            let mut ix = index
                .lock()
                .map_err(|_| "index lock poisoned".to_string())?;
            let read = ix.rehash(&src, false, build_threads())?;
            Ok::<_, String>((ix.root()?, read))
        })
        .await
        .map_err(|e| format!("root task failed: {e}"))??;
        let total = self.hash_read.fetch_add(read, Ordering::Relaxed) + read;
        tracing::info!(disk = %self.replica.key(), hash_read_bytes = total,
                       "resync root answered (hash_read_bytes: working-image bytes read to hash it in this session)");
        Ok(root)
    }
}

fn build_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
}
